/**
 * The `faas` CLI end to end against the real daemon process: deploy from a tarball and from an engine's
 * `save` stream, ip, list, logs, delete, and one-line errors with a non-zero exit. Limits and pool sizing
 * (`new --memory… --min-ready…`, `scale`, list's READY column) are driven against the real control API over
 * stand-ins for containerd and the pool, so that test needs neither root nor containerd.
 */

import { Secrets } from "../lib/secrets.ts";
import { assert, assertEquals, assertMatch, assertStringIncludes } from "./assert.ts";
import { startContainerd } from "./harness/containerd.ts";
import { buildHandlerImage, cacheDir } from "./harness/images.ts";
import { startDaemon, taskPermissions } from "./harness/platform.ts";
import { curl } from "./curl.ts";
import { createApi } from "../lib/api/router.ts";
import { Functions } from "../lib/functions.ts";
import { IpPool } from "../lib/ipam.ts";
import { Metrics } from "../lib/metrics.ts";
import { Registry } from "../lib/registry.ts";
import { deployedImage } from "./fixtures/deployed.ts";

const CLI = new URL("../cli.ts", import.meta.url).pathname;

async function faas(url: string, args: string[], env: Record<string, string> = {}, stdin?: string) {
  const child = new Deno.Command(Deno.execPath(), {
    args: ["run", ...taskPermissions("faas"), CLI, "--url", url, ...args],
    env,
    stdin: stdin === undefined ? "null" : "piped",
    stdout: "piped",
    stderr: "piped",
  }).spawn();
  if (stdin !== undefined) {
    const w = child.stdin.getWriter();
    await w.write(new TextEncoder().encode(stdin));
    await w.close();
  }
  const out = await child.output();
  return {
    code: out.code,
    stdout: new TextDecoder().decode(out.stdout),
    stderr: new TextDecoder().decode(out.stderr),
  };
}

Deno.test("faas drives a running faasd end to end", async (t) => {
  await using ctd = await startContainerd();
  await using d = await startDaemon(ctd);
  const tarball = await buildHandlerImage("hello", { tag: "localhost/cli-hello:1" });
  const base = d.pool.replace(/0\/24$/, "");

  await t.step("new --tar uploads a tarball and prints the IP", async () => {
    const r = await faas(d.url, ["new", "--tar", tarball, "--name", "hello"]);
    assertEquals(r.code, 0, r.stderr);
    assertEquals(r.stdout, `${base}10\n`);
    assertEquals((await curl(`http://${base}10:${d.port}/`)).body, "hello from faasd\n");
  });

  await t.step("new IMAGE streams `podman save` straight into the upload", async () => {
    // A private podman storage holding the image, behind a wrapper the CLI runs as its engine.
    const dir = await Deno.makeTempDir({ prefix: "faasd-engine-" });
    try {
      const podman = `podman --root ${dir}/root --runroot ${dir}/runroot --storage-driver vfs --events-backend none`;
      await Deno.writeTextFile(`${dir}/engine`, `#!/bin/sh\nexec ${podman} "$@"\n`, { mode: 0o755 });
      const load = await new Deno.Command(`${dir}/engine`, { args: ["load", "-q", "-i", tarball] }).output();
      assertEquals(load.code, 0, new TextDecoder().decode(load.stderr));
      const r = await faas(d.url, ["new", "localhost/cli-hello:1"], { FAAS_ENGINE: `${dir}/engine` });
      assertEquals(r.code, 0, r.stderr);
      assertEquals(r.stdout, `${base}11\n`);
      const missing = await faas(d.url, ["new", "localhost/not-there:1"], { FAAS_ENGINE: `${dir}/engine` });
      assertEquals(missing.code, 1);
      assertEquals(missing.stderr.trim().split("\n").length, 1, missing.stderr);
      assertStringIncludes(missing.stderr, "faas: ");
    } finally {
      await new Deno.Command("sh", {
        args: ["-c", `podman --root ${dir}/root --runroot ${dir}/runroot --storage-driver vfs rmi -af >/dev/null 2>&1`],
      }).output();
      await Deno.remove(dir, { recursive: true });
    }
  });

  await t.step("new shows upload progress on a terminal", async () => {
    // `script` gives the CLI a pseudo-terminal, as a user's shell would.
    const cmd = `${Deno.execPath()} run -A ${CLI} --url ${d.url} new --tar ${tarball} --name progress`;
    const out = await new Deno.Command("script", { args: ["-qec", cmd, "/dev/null"], stdout: "piped" }).output();
    const text = new TextDecoder().decode(out.stdout);
    assertEquals(out.code, 0, text);
    assertMatch(text, /uploading [\d.]+ (KiB|MiB) \(100%\)/);
    assertStringIncludes(text, `${base}12`);
    assertEquals((await faas(d.url, ["delete", "progress"])).code, 0);
  });

  await t.step("ip, list and list --json show the functions", async () => {
    assertEquals((await faas(d.url, ["ip", "cli-hello"])).stdout, `${base}11\n`);
    const table = (await faas(d.url, ["list"])).stdout.trim().split("\n");
    assertMatch(table[0]!, /^IMAGE\s+IP\s+STATUS\s+READY$/);
    assertMatch(table[1]!, new RegExp(`^cli-hello\\s+${base.replaceAll(".", "\\.")}11\\s+active\\s+\\d+/0-8$`));
    assertMatch(table[2]!, /^hello\s+\S+\s+active\s+\d+\/0-8$/);
    const json = JSON.parse((await faas(d.url, ["list", "--json"])).stdout);
    assertEquals(json.hello.image_ref, "localhost/cli-hello:1");
  });

  await t.step("logs prints the container output", async () => {
    const r = await faas(d.url, ["logs", "hello"]);
    assertEquals(r.code, 0, r.stderr);
    assertStringIncludes(r.stdout, "handler hello");
  });

  await t.step("logs -f follows new output until stopped", async () => {
    const child = new Deno.Command(Deno.execPath(), {
      args: ["run", ...taskPermissions("faas"), CLI, "--url", d.url, "logs", "hello", "-f"],
      stdout: "piped",
      stderr: "null",
    }).spawn();
    const lines = child.stdout.pipeThrough(new TextDecoderStream()).getReader();
    // Should the line never come, the follow is stopped rather than left to hang the suite.
    const giveUp = setTimeout(() => child.kill(), 30_000);
    let seen = "";
    const before = (await faas(d.url, ["logs", "hello"])).stdout.split("\n").filter((l) => l.includes("served")).length;
    await curl(`http://${base}10:${d.port}/`);
    while (seen.split("\n").filter((l) => l.includes("served")).length <= before) {
      const { value, done } = await lines.read();
      if (done) break;
      seen += value;
    }
    clearTimeout(giveUp);
    assert(seen.split("\n").filter((l) => l.includes("served")).length > before, seen);
    child.kill();
    await lines.cancel();
    await child.status;
  });

  await t.step("delete removes a function; later calls fail with one line", async () => {
    assertEquals((await faas(d.url, ["delete", "hello"])).stdout, "deleted hello\n");
    const r = await faas(d.url, ["ip", "hello"]);
    assertEquals(r.code, 1);
    assertEquals(r.stderr, 'faas: no function named "hello" (HTTP 404)\n');
  });

  await t.step("bad usage and an unreachable faasd fail with one line and exit 1", async () => {
    for (
      const args of [["nope"], [], ["new"], ["new", "--tar", `${cacheDir()}/does-not-exist.tar`], ["ip"]]
    ) {
      const r = await faas(d.url, args);
      assertEquals(r.code, 1, args.join(" "));
      assertEquals(r.stderr.trim().split("\n").length, 1, r.stderr);
    }
    const down = await faas("http://127.0.0.1:1", ["list"]);
    assertEquals(down.code, 1);
    assertStringIncludes(down.stderr, "cannot reach faasd at http://127.0.0.1:1");
  });

  await t.step("a refused upload and a failing export each fail with one line that says why", async () => {
    const dir = await Deno.makeTempDir({ prefix: "faasd-cli-" });
    try {
      await Deno.writeFile(`${dir}/junk.tar`, new Uint8Array(10_000).fill(7));
      const refused = await faas(d.url, ["new", "--tar", `${dir}/junk.tar`, "--name", "junk"]);
      assertEquals(refused.code, 1);
      assertMatch(refused.stderr, /^faas: .+ \(HTTP 400\)\n$/);
      // An engine that has the image but dies halfway through the export.
      await Deno.writeTextFile(
        `${dir}/engine`,
        `#!/bin/sh\n[ "$1" = image ] && exit 0\nhead -c 100000 /dev/zero; echo "disk on fire" >&2; exit 1\n`,
        { mode: 0o755 },
      );
      const broken = await faas(d.url, ["new", "localhost/x:1", "--name", "broken"], { FAAS_ENGINE: `${dir}/engine` });
      assertEquals(broken.code, 1);
      assertEquals(broken.stderr, `faas: ${dir}/engine save localhost/x:1 failed: disk on fire\n`);
      assertEquals((await faas(d.url, ["ip", "broken"])).code, 1);
    } finally {
      await Deno.remove(dir, { recursive: true });
    }
  });

  await t.step("--help works for faas and each command", async () => {
    for (const args of [["--help"], ["new", "--help"], ["list", "--help"], ["logs", "--help"]]) {
      const r = await faas(d.url, args);
      assertEquals(r.code, 0);
      assertStringIncludes(r.stdout, "Usage: faas");
    }
  });
});

Deno.test("with --api-token, faasd answers only requests that carry it, and faas sends FAAS_TOKEN", async (t) => {
  await using ctd = await startContainerd();
  const token = "t0ken-".padEnd(40, "x");
  await using d = await startDaemon(ctd, { flags: ["--api-token", token] });
  const tarball = await buildHandlerImage("hello");

  await t.step("without the token the API answers 401, and an upload is not imported", async () => {
    const list = await fetch(`${d.url}/api/list`);
    assertEquals(list.status, 401);
    assertEquals(list.headers.get("www-authenticate"), 'Bearer realm="faasd"');
    assertStringIncludes((await list.json()).error, "API token");
    const wrong = await fetch(`${d.url}/api/list`, { headers: { authorization: `Bearer ${token}y` } });
    assertEquals(wrong.status, 401);
    await wrong.body?.cancel();
    const r = await faas(d.url, ["new", "--tar", tarball, "--name", "intruder"]);
    assertEquals(r.code, 1);
    assertStringIncludes(r.stderr, "(HTTP 401)");
    assertEquals(r.stderr.trim().split("\n").length, 1, r.stderr);
    const health = await fetch(`${d.url}/healthz`);
    assertEquals(health.status, 200);
    await health.body?.cancel();
  });

  await t.step("with FAAS_TOKEN the CLI deploys, lists and deletes", async () => {
    const env = { FAAS_TOKEN: token };
    const deployed = await faas(d.url, ["new", "--tar", tarball, "--name", "guarded"], env);
    assertEquals(deployed.code, 0, deployed.stderr);
    assertEquals((await curl(`http://${deployed.stdout.trim()}:${d.port}/`)).status, 200);
    const list = await faas(d.url, ["list", "--json"], env);
    assertEquals(Object.keys(JSON.parse(list.stdout)), ["guarded"]);
    assertEquals((await faas(d.url, ["--token", token, "delete", "guarded"])).code, 0);
  });

  await t.step("nothing was imported for the refused upload", async () => {
    using client = ctd.client(d.namespace);
    assertEquals(await client.listImages(), []);
  });
});

/**
 * The real control API on a port, over an in-memory registry and stand-ins that accept any upload; the pool stand-in
 * reports the ready containers set in `ready`.
 */
function standInApi(): { url: string; ready: Map<string, number> } & AsyncDisposable {
  const ready = new Map<string, number>();
  const registry = new Registry(":memory:");
  const functions = new Functions({
    registry,
    pool: new IpPool("127.77.0.0/24"),
    images: {
      import: async (name, body) => {
        await new Response(body).arrayBuffer();
        return deployedImage(`localhost/${name}:1`, `faasd.local/functions/${name}:1`);
      },
      remove: () => Promise.resolve(),
    },
    serving: { serve: () => {}, stop: () => {} },
    addresses: { ensure: () => Promise.resolve(false), release: () => Promise.resolve() },
  });
  const secretsDir = Deno.makeTempDirSync({ prefix: "faasd-cli-test-" });
  const api = createApi({
    functions,
    metrics: new Metrics(),
    maxImageBytes: 1 << 30,
    limits: { memoryBytes: 512 << 20, pids: 256, cpus: 1, scratchBytes: 64 << 20, timeoutMs: 60_000, poolMax: 16 },
    logPath: () => "/nonexistent",
    probe: () => Promise.resolve({}),
    pool: { ready: (name) => ready.get(name) ?? 0, status: () => null },
    secrets: Secrets.open(secretsDir),
  });
  const server = Deno.serve({ hostname: "127.0.0.1", port: 0, onListen: () => {} }, api);
  return {
    url: `http://127.0.0.1:${server.addr.port}`,
    ready,
    [Symbol.asyncDispose]: async () => {
      await server.shutdown();
      registry.close();
      Deno.removeSync(secretsDir, { recursive: true });
    },
  };
}

Deno.test("faas new --memory… and faas scale set a function's limits; list --json shows them", async (t) => {
  await using api = standInApi();
  const dir = await Deno.makeTempDir({ prefix: "faasd-cli-" });
  try {
    await Deno.writeFile(`${dir}/hello.tar`, new Uint8Array(10_000));

    await t.step("new passes the limits given", async () => {
      const r = await faas(api.url, ["new", "--tar", `${dir}/hello.tar`, "--name", "hello", "--memory", "256MiB"]);
      assertEquals(r.code, 0, r.stderr);
      assertEquals(r.stdout, "127.77.0.10\n");
      const json = JSON.parse((await faas(api.url, ["list", "--json"])).stdout);
      assertEquals(json.hello.settings, { memory: "256MiB" });
    });

    await t.step("scale changes them and prints what each request's container gets", async () => {
      const r = await faas(api.url, ["scale", "hello", "--cpu", "0.5", "--timeout", "30s", "--default", "memory"]);
      assertEquals(r.code, 0, r.stderr);
      assertEquals(
        r.stdout,
        "hello: memory 512MiB (default), cpu 0.5, pids 256 (default), timeout 30s, rootfs readonly (default), " +
          "min_ready 0 (default), max_ready 8 (default)\n",
      );
    });

    await t.step("list --json shows the effective limits and the settings", async () => {
      const json = JSON.parse((await faas(api.url, ["list", "--json"])).stdout);
      assertEquals(json.hello.settings, { cpu: 0.5, timeout: "30s" });
      assertEquals([json.hello.memory_bytes, json.hello.cpus, json.hello.timeout_ms], [512 << 20, 0.5, 30_000]);
    });

    await t.step("a value past faasd's flag, or no change at all, fails with one line that says why", async () => {
      const above = await faas(api.url, ["scale", "hello", "--memory", "1GiB"]);
      assertEquals(above.code, 1);
      assertEquals(above.stderr, "faas: memory 1GiB is above the daemon's --memory-limit of 512MiB (HTTP 400)\n");
      const refused = await faas(api.url, ["new", "--tar", `${dir}/hello.tar`, "--name", "other", "--cpu", "2"]);
      assertEquals(refused.code, 1);
      assertEquals(refused.stderr, "faas: cpu 2 is above the daemon's --cpu-limit of 1 (HTTP 400)\n");
      for (
        const args of [["scale", "hello"], ["scale", "hello", "--default", "colour"], ["scale", "nope", "--pids", "8"]]
      ) {
        const r = await faas(api.url, args);
        assertEquals(r.code, 1, args.join(" "));
        assertEquals(r.stderr.trim().split("\n").length, 1, r.stderr);
      }
      const json = JSON.parse((await faas(api.url, ["list", "--json"])).stdout);
      assertEquals(Object.keys(json), ["hello"]);
      assertEquals(json.hello.settings, { cpu: 0.5, timeout: "30s" });
    });

    await t.step("scale --help describes the limits", async () => {
      const r = await faas(api.url, ["scale", "--help"]);
      assertEquals(r.code, 0);
      assertStringIncludes(r.stdout, "Usage: faas scale NAME");
      assertStringIncludes(r.stdout, "--default KEY");
      assertStringIncludes(r.stdout, "--min-ready N");
    });
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
});

Deno.test("faas new --min-ready/--max-ready and faas scale size a function's pool; list shows READY", async (t) => {
  await using api = standInApi();
  const dir = await Deno.makeTempDir({ prefix: "faasd-cli-" });
  try {
    await Deno.writeFile(`${dir}/hello.tar`, new Uint8Array(10_000));

    await t.step("new passes --min-ready and --max-ready", async () => {
      const r = await faas(api.url, ["new", "--tar", `${dir}/hello.tar`, "--name", "hello", "--min-ready", "1"]);
      assertEquals(r.code, 0, r.stderr);
      const other = await faas(api.url, ["new", "--tar", `${dir}/hello.tar`, "--name", "other", "--max-ready", "2"]);
      assertEquals(other.code, 0, other.stderr);
      const json = JSON.parse((await faas(api.url, ["list", "--json"])).stdout);
      assertEquals(json.hello.settings, { min_ready: 1 });
      assertEquals([json.hello.min_ready, json.hello.max_ready, json.hello.ready], [1, 8, 0]);
      assertEquals(json.other.settings, { max_ready: 2 });
    });

    await t.step("list shows READY as ready/min-max after IMAGE IP STATUS", async () => {
      api.ready.set("hello", 2);
      const r = await faas(api.url, ["list"]);
      assertEquals(r.code, 0, r.stderr);
      assertEquals(r.stdout.trimEnd().split("\n"), [
        "IMAGE  IP           STATUS  READY",
        "hello  127.77.0.10  active  2/1-8",
        "other  127.77.0.11  active  0/0-2",
      ]);
      assertEquals(JSON.parse((await faas(api.url, ["list", "--json"])).stdout).hello.ready, 2);
    });

    await t.step("scale changes them with the limits, and --default takes either spelling", async () => {
      const r = await faas(api.url, ["scale", "hello", "--max-ready", "4", "--pids", "64"]);
      assertEquals(r.code, 0, r.stderr);
      assertStringIncludes(
        r.stdout,
        "pids 64, timeout 1m (default), rootfs readonly (default), min_ready 1, max_ready 4\n",
      );
      const back = await faas(api.url, ["scale", "hello", "--default", "min-ready", "--default", "max_ready"]);
      assertEquals(back.code, 0, back.stderr);
      assertStringIncludes(back.stdout, "min_ready 0 (default), max_ready 8 (default)\n");
      const json = JSON.parse((await faas(api.url, ["list", "--json"])).stdout);
      assertEquals(json.hello.settings, { pids: 64 });
    });

    await t.step(
      "min above max, a value past --pool-max or a malformed one fails with one line that says why",
      async () => {
        const cases: [string[], string][] = [
          [
            ["scale", "other", "--min-ready", "3"],
            "faas: min_ready 3 is above max_ready 2 (set before): " +
            "min_ready must be at most max_ready (HTTP 400)\n",
          ],
          [
            ["scale", "hello", "--max-ready", "17"],
            "faas: max_ready 17 is above the daemon's --pool-max of 16 (HTTP 400)\n",
          ],
          [
            ["scale", "hello", "--min-ready", "1.5"],
            'faas: invalid min_ready "1.5": a whole number of containers, 0 or more (HTTP 400)\n',
          ],
          [
            ["scale", "hello", "--min-ready", "x"],
            'faas: invalid min_ready "x": a whole number of containers, 0 or more (HTTP 400)\n',
          ],
          [
            ["new", "--tar", `${dir}/hello.tar`, "--name", "third", "--min-ready", "5", "--max-ready", "4"],
            "faas: min_ready 5 is above max_ready 4: min_ready must be at most max_ready (HTTP 400)\n",
          ],
          [
            ["scale", "hello", "--min-ready", "2", "--default", "min-ready"],
            "faas: --min-ready and --default min-ready contradict each other\n",
          ],
        ];
        for (const [args, stderr] of cases) {
          const r = await faas(api.url, args);
          assertEquals([r.code, r.stderr], [1, stderr], args.join(" "));
        }
        const json = JSON.parse((await faas(api.url, ["list", "--json"])).stdout);
        assertEquals(Object.keys(json), ["hello", "other"]);
        assertEquals([json.hello.settings, json.other.settings], [{ pids: 64 }, { max_ready: 2 }]);
      },
    );
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
});

Deno.test("faas secret create/list/delete and faas new --env/--secret/--http-port", async (t) => {
  await using api = standInApi();
  const dir = await Deno.makeTempDir({ prefix: "faasd-cli-" });
  try {
    await Deno.writeFile(`${dir}/hello.tar`, new Uint8Array(10_000));
    await Deno.writeTextFile(`${dir}/pw`, "s3cret");

    await t.step("secret create reads the value from a file or stdin; list shows names only", async () => {
      const fromFile = await faas(api.url, ["secret", "create", "db-password", "--from-file", `${dir}/pw`]);
      assertEquals([fromFile.code, fromFile.stdout], [0, "created secret db-password\n"], fromFile.stderr);
      const fromStdin = await faas(api.url, ["secret", "create", "api-key"], {}, "k3y");
      assertEquals(fromStdin.code, 0, fromStdin.stderr);
      const list = await faas(api.url, ["secret", "list"]);
      assertEquals(list.stdout.split("\n").map((l) => l.split(/\s+/)[0]), ["NAME", "api-key", "db-password", ""]);
      assertEquals(list.stdout.includes("s3cret") || list.stdout.includes("k3y"), false);
      const again = await faas(api.url, ["secret", "create", "db-password", "--from-file", `${dir}/pw`]);
      assertEquals([again.code, again.stderr], [1, 'faas: secret "db-password" exists already (HTTP 409)\n']);
    });

    await t.step("new sends --env, --secret and --http-port; list --json shows them, secrets by name", async () => {
      const r = await faas(api.url, [
        ...["new", "--tar", `${dir}/hello.tar`, "--name", "web", "--http-port", "8080", "--ready-timeout", "5s"],
        ...["--env", "GREETING=hi", "--env", "MODE=test", "--secret", "db-password"],
      ]);
      assertEquals(r.code, 0, r.stderr);
      const json = JSON.parse((await faas(api.url, ["list", "--json"])).stdout);
      assertEquals(json.web.settings, {
        http_port: 8080,
        ready_timeout: "5s",
        env: { GREETING: "hi", MODE: "test" },
        secrets: ["db-password"],
      });
      const bad = await faas(api.url, ["new", "--tar", `${dir}/hello.tar`, "--name", "x", "--env", "NOEQUALS"]);
      assertEquals([bad.code, bad.stderr], [1, 'faas: invalid --env "NOEQUALS": expected KEY=VALUE\n']);
      const missing = await faas(api.url, ["new", "--tar", `${dir}/hello.tar`, "--name", "x", "--secret", "nope"]);
      assertEquals(missing.code, 1);
      assertStringIncludes(missing.stderr, 'secret "nope" does not exist');
    });

    await t.step("secret delete refuses a secret in use, then deletes it", async () => {
      const inUse = await faas(api.url, ["secret", "delete", "db-password"]);
      assertEquals(inUse.code, 1);
      assertStringIncludes(inUse.stderr, "used by web");
      assertEquals((await faas(api.url, ["delete", "web"])).code, 0);
      const r = await faas(api.url, ["secret", "delete", "db-password"]);
      assertEquals([r.code, r.stdout], [0, "deleted secret db-password\n"], r.stderr);
    });
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
});

Deno.test("faas init writes a template where the user is, and refuses an unknown language or an existing folder", async () => {
  const dir = await Deno.makeTempDir({ prefix: "faasd-cli-init-" });
  try {
    // As `deno task faas` runs it: in the project's folder, with INIT_CWD naming where the user typed the command.
    const r = await faas("http://127.0.0.1:9", ["init", "http", "web"], { INIT_CWD: dir });
    assertEquals(r.code, 0, r.stderr);
    assertStringIncludes(r.stdout, `wrote ${dir}/web/`);
    assertStringIncludes(r.stdout, "--http-port 8080");
    assert((await Deno.stat(`${dir}/web/build.sh`)).isFile);
    const again = await faas("http://127.0.0.1:9", ["init", "http", "web"], { INIT_CWD: dir });
    assertEquals(again.code, 1);
    assertStringIncludes(again.stderr, "already exists");
    const unknown = await faas("http://127.0.0.1:9", ["init", "cobol", "x"], { INIT_CWD: dir });
    assertEquals(unknown.code, 1);
    assertStringIncludes(unknown.stderr, "c, go, http, python");
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
});
