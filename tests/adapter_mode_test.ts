/**
 * Adapter mode end to end (real containerd, podman images, loopback traffic): a plain HTTP server image (the test
 * handler's `server` mode, which never touches /control.sock) deployed with `http_port` is served through faasd's
 * adapter: small answers, 100 MB each way, a long bidirectional exchange with half-closes, a slow start hidden by the
 * pool, servers that never listen (or not on the port given) refused with a reason in the log, `env` over the image's
 * ENV, secrets mounted at /run/secrets, and bad settings refused. Every test ends with nothing left in containerd.
 *
 * The adapter is built by `deno task gen` (.tools/bin/faasd-adapter); this file compiles nothing but the handler.
 */

import { waitUntil, within } from "./harness/wait.ts";
import { createHash } from "node:crypto";
import { assert, assertEquals, assertMatch, assertStringIncludes } from "./assert.ts";
import { startContainerd } from "./harness/containerd.ts";
import { buildHandlerImage, type HandlerImageOptions } from "./harness/images.ts";
import { leftovers, NONE, startTestPlatform, type TestPlatform } from "./harness/platform.ts";
import { curl } from "./curl.ts";
import { BUILT_ADAPTER } from "../lib/adapter.ts";

const MIB = 1 << 20;
const BIG = 100 * MIB;
const HELLO = "hello from a server\n";
/** The port the `server` images listen on inside their container. */
const SERVER_PORT = "8080";
const encoder = new TextEncoder();
const decoder = new TextDecoder();

function adapterBuilt(): void {
  try {
    Deno.statSync(BUILT_ADAPTER);
  } catch (e) {
    throw new Error(`${BUILT_ADAPTER} is missing: run deno task gen`, { cause: e });
  }
}

/** Deploys the `server` image built with `opts` as `name`; returns its address. */
async function deploy(
  p: TestPlatform,
  name: string,
  query: string,
  opts: HandlerImageOptions = { args: [SERVER_PORT] },
): Promise<{ ip: string; url: string }> {
  const res = await deployResponse(p, name, query, await buildHandlerImage("server", opts));
  const body = await res.json();
  if (res.status !== 201 && res.status !== 200) {
    throw new Error(`deploy ${name}: ${res.status} ${JSON.stringify(body)}`);
  }
  return { ip: body.ip, url: `http://${body.ip}:${p.port}` };
}

/** `POST /api/new?<query>` with `tarball` as the body, as it answered. */
async function deployResponse(p: TestPlatform, name: string, query: string, tarball: string): Promise<Response> {
  return await p.request("POST", `/api/new?${query}`, {
    headers: { "x-image-name": name },
    body: (await Deno.open(tarball)).readable,
  });
}

/** The function's log as `GET /api/logs/NAME` gives it. */
async function logsOf(p: TestPlatform, name: string): Promise<string> {
  const res = await p.request("GET", `/api/logs/${name}`);
  assertEquals(res.status, 200);
  return await res.text();
}

/** Waits until the function's log has `part`; fails showing the log when it never does. */
async function assertLogs(p: TestPlatform, name: string, part: string): Promise<void> {
  let text = "";
  const found = await waitUntil(async () => (text = await logsOf(p, name)).includes(part), 10_000);
  assert(found, `the log of ${name} never said ${JSON.stringify(part)}; it has:\n${text}`);
}

/** Scales `name` to no ready container, waits until faasd holds nothing, and checks containerd holds nothing. */
async function assertNothingLeft(p: TestPlatform, names: string[], how: "scale" | "delete" = "scale"): Promise<void> {
  for (const name of names) {
    const res = how === "scale"
      ? await p.request("PATCH", `/api/functions/${name}`, { body: JSON.stringify({ min_ready: 0 }) })
      : await p.request("DELETE", `/api/functions/${name}`);
    assertEquals(res.status, 200, `${how} ${name}: ${await res.text()}`);
  }
  assert(await waitUntil(() => p.platform.server.outstanding === 0, 30_000), "every container removed");
  assertEquals(await leftovers(p.client), NONE);
}

/** curl with files for bodies: `upload` is POSTed, the answer's body goes to `out`. */
async function curlFile(
  url: string,
  opts: { upload?: string; out: string },
): Promise<{ exit: number; status: number; stderr: string; seconds: number }> {
  const args = ["-sS", "-m", "120", "-o", opts.out, "-w", "%{http_code} %{time_total}"];
  if (opts.upload) args.push("--data-binary", `@${opts.upload}`, "-H", "content-type: application/octet-stream");
  const out = await new Deno.Command("curl", { args: [...args, url], stdin: "null", stdout: "piped", stderr: "piped" })
    .output();
  const [status, seconds] = decoder.decode(out.stdout).split(" ").map(Number);
  return { exit: out.code, status: status!, seconds: seconds!, stderr: decoder.decode(out.stderr) };
}

/** SHA-256 of a file, read in chunks. */
async function sha256File(path: string): Promise<string> {
  const hash = createHash("sha256");
  using file = await Deno.open(path);
  for await (const chunk of file.readable) hash.update(chunk);
  return hash.digest("hex");
}

/** SHA-256 of what `GET /big/N` should send: byte i is 'a' + i % 26. */
function patternSha256(size: number): string {
  const block = new Uint8Array(26 * 40_000);
  for (let i = 0; i < block.length; i++) block[i] = 97 + i % 26;
  const hash = createHash("sha256");
  for (let left = size; left > 0; left -= block.length) hash.update(block.subarray(0, Math.min(left, block.length)));
  return hash.digest("hex");
}

/** Writes `size` random bytes to `path`. */
async function writeRandomFile(path: string, size: number): Promise<void> {
  using file = await Deno.open(path, { create: true, write: true, truncate: true });
  const chunk = new Uint8Array(MIB);
  for (let written = 0; written < size; written += chunk.length) {
    for (let off = 0; off < chunk.length; off += 65536) crypto.getRandomValues(chunk.subarray(off, off + 65536));
    for (let off = 0; off < chunk.length;) off += await file.write(chunk.subarray(off));
  }
}

async function writeAll(conn: Deno.Conn, bytes: Uint8Array): Promise<void> {
  for (let off = 0; off < bytes.length;) off += await conn.write(bytes.subarray(off));
}

/** A connection's bytes as they arrive, read up to a marker or to the end. */
class Reader {
  #got = new Uint8Array(0);
  readonly #buffer = new Uint8Array(64 * 1024);
  constructor(readonly conn: Deno.Conn) {}

  /** Everything up to and including the first `marker`, reading more as needed. */
  async until(marker: string): Promise<string> {
    const want = encoder.encode(marker);
    for (;;) {
      const at = indexOf(this.#got, want);
      if (at >= 0) {
        const part = this.#got.subarray(0, at + want.length);
        this.#got = this.#got.slice(at + want.length);
        return decoder.decode(part);
      }
      if (!await this.#more()) {
        throw new Error(
          `end of stream before ${JSON.stringify(marker)}; got ${JSON.stringify(decoder.decode(this.#got))}`,
        );
      }
    }
  }

  /** Everything left, to the end of the stream. */
  async rest(): Promise<string> {
    while (await this.#more()) { /* keep reading */ }
    const all = decoder.decode(this.#got);
    this.#got = new Uint8Array(0);
    return all;
  }

  async #more(): Promise<boolean> {
    const n = await this.conn.read(this.#buffer);
    if (n === null) return false;
    const joined = new Uint8Array(this.#got.length + n);
    joined.set(this.#got);
    joined.set(this.#buffer.subarray(0, n), this.#got.length);
    this.#got = joined;
    return true;
  }
}

function indexOf(haystack: Uint8Array, needle: Uint8Array): number {
  outer: for (let i = 0; i + needle.length <= haystack.length; i++) {
    for (let j = 0; j < needle.length; j++) if (haystack[i + j] !== needle[j]) continue outer;
    return i;
  }
  return -1;
}

Deno.test("a server image behind the adapter: answers, 100 MB each way, and a long exchange with half-closes", async (t) => {
  adapterBuilt();
  await using ctd = await startContainerd();
  await using p = await startTestPlatform(ctd);
  const { ip, url } = await deploy(p, "web", `http_port=${SERVER_PORT}`);
  const dir = await Deno.makeTempDir({ prefix: "faasd-adapter-mode-" });
  try {
    await t.step("GET / is the server's own answer, relayed", async () => {
      const r = await curl(`${url}/`, { args: ["-D", "/dev/stderr"] });
      assertEquals([r.exit, r.status, r.body], [0, 200, HELLO]);
      assertMatch(r.stderr, /^X-Handler: mode=server pid=\d+/m);
      // The server is not PID 1: the adapter is, and it started the server, whose child served this connection.
      assert(!/^X-Handler: mode=server pid=1 /m.test(r.stderr), r.stderr);
    });

    await t.step("a 100 MB upload to /echo comes back intact (sent and read at once)", async () => {
      const sent = `${dir}/upload.bin`;
      const back = `${dir}/echo.bin`;
      await writeRandomFile(sent, BIG);
      const r = await curlFile(`${url}/echo`, { upload: sent, out: back });
      assertEquals([r.exit, r.status], [0, 200], r.stderr);
      assertEquals((await Deno.stat(back)).size, BIG);
      assertEquals(await sha256File(back), await sha256File(sent));
      console.log(`    100 MiB echoed in ${r.seconds.toFixed(2)} s (${(200 / r.seconds).toFixed(0)} MiB/s both ways)`);
    });

    await t.step("a 100 MB download of /big comes through intact", async () => {
      const got = `${dir}/big.bin`;
      const r = await curlFile(`${url}/big/${BIG}`, { out: got });
      assertEquals([r.exit, r.status], [0, 200], r.stderr);
      assertEquals((await Deno.stat(got)).size, BIG);
      assertEquals(await sha256File(got), patternSha256(BIG));
      console.log(`    100 MiB downloaded in ${r.seconds.toFixed(2)} s (${(100 / r.seconds).toFixed(0)} MiB/s)`);
    });

    await t.step("/lines: 100 lines, each sent once the previous one came back, then a half-close", async () => {
      using conn = await Deno.connect({ hostname: ip, port: p.port });
      const reader = new Reader(conn);
      await within(
        60_000,
        "the /lines exchange",
        (async () => {
          await writeAll(conn, encoder.encode("POST /lines HTTP/1.1\r\nHost: faasd.test\r\n\r\n"));
          const head = await reader.until("\r\n\r\n");
          assertMatch(head, /^HTTP\/1\.1 200 /);
          assert(!/^content-length:/im.test(head), `a streamed answer has no length: ${head}`);
          assertMatch(head, /^Connection: close\r$/m);
          for (let i = 0; i < 100; i++) {
            const line = `line ${i} ${"x".repeat(i * 7)}\n`;
            await writeAll(conn, encoder.encode(line));
            assertEquals(await reader.until("\n"), line, `line ${i}`);
          }
          // An unfinished last line, then our half-close: the server sees EOF, answers the rest, and closes.
          await writeAll(conn, encoder.encode("no newline"));
          await conn.closeWrite();
          assertEquals(await reader.rest(), "no newline");
        })(),
      );
    });

    await t.step("scaled to min_ready 0, nothing is left", async () => {
      await assertNothingLeft(p, ["web"]);
    });
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
});

Deno.test("a server that takes 2 s to listen: its ready container is waited for, then a request is fast", async () => {
  adapterBuilt();
  await using ctd = await startContainerd();
  // A connect timeout below the server's start: only the function's ready timeout may bound an adapter's start.
  await using p = await startTestPlatform(ctd, { flags: ["--connect-timeout", "1s"] });
  const deployed = performance.now();
  const { url } = await deploy(p, "slow", `http_port=${SERVER_PORT}&min_ready=1`, { args: [SERVER_PORT, "2000"] });
  assert(await waitUntil(() => p.platform.server.ready("slow") === 1, 30_000), "a ready container");
  const readyAfter = performance.now() - deployed;
  assert(readyAfter >= 2000, `ready after ${readyAfter} ms, before its server could listen`);

  const began = performance.now();
  const pooled = await curl(`${url}/`);
  const pooledMs = performance.now() - began;
  assertEquals([pooled.exit, pooled.status, pooled.body], [0, 200, HELLO]);

  // With no ready container the connection waits for a whole start, and still gets its answer.
  const res = await p.request("PATCH", "/api/functions/slow", { body: JSON.stringify({ min_ready: 0 }) });
  assertEquals(res.status, 200);
  assert(await waitUntil(() => p.platform.server.ready("slow") === 0, 30_000), "no ready container");
  const coldBegan = performance.now();
  const cold = await curl(`${url}/`, { timeoutS: 60 });
  const coldMs = performance.now() - coldBegan;
  assertEquals([cold.exit, cold.status, cold.body], [0, 200, HELLO]);
  console.log(
    `    ready ${(readyAfter / 1000).toFixed(1)} s after the deploy; pooled request ${pooledMs.toFixed(0)} ms, ` +
      `cold request ${coldMs.toFixed(0)} ms`,
  );
  await assertNothingLeft(p, ["slow"]);
});

Deno.test("servers that never listen, or not on http_port, fail to start: 503 or 502, never a hang; the log says why", async () => {
  adapterBuilt();
  await using ctd = await startContainerd();
  await using p = await startTestPlatform(ctd);
  const quitter = await deploy(p, "quitter", `http_port=${SERVER_PORT}`, { args: [SERVER_PORT, "0", "exit"] });
  const wrong = await deploy(p, "wrongport", "http_port=9090&ready_timeout=1s", { args: [SERVER_PORT] });
  const [q, w] = await Promise.all([
    curl(`${quitter.url}/`, { timeoutS: 60 }),
    curl(`${wrong.url}/`, { timeoutS: 60 }),
  ]);

  assertEquals(q.exit, 0, `curl ended cleanly: ${q.stderr}`);
  assert([502, 503].includes(q.status), `quitter answered ${q.status} ${q.body}`);
  await assertLogs(p, "quitter", "faasd-adapter: the server exited with status 3 before listening on 127.0.0.1:8080");
  await assertLogs(p, "quitter", "exiting 3 before listening on port 8080");

  assertEquals([w.exit, w.status], [0, 503], `wrongport: ${w.stderr} ${w.body}`);
  await assertLogs(p, "wrongport", "faasd-adapter: the server did not listen on 127.0.0.1:9090 within 1000 ms");

  // The answers came from the breaker, opened by repeated failed starts; later ones are refused without 5 more starts
  // (while the breaker is open at once, after its back-off by one trial start).
  for (const [name, url, first] of [["quitter", quitter.url, q], ["wrongport", wrong.url, w]] as const) {
    if (first.status === 503) assertStringIncludes(first.body, "failing");
    const metrics = await (await p.request("GET", "/metrics")).text();
    assertStringIncludes(metrics, `faasd_breaker_open{function="${name}"} 1`);
    const began = performance.now();
    const again = await curl(`${url}/`, { timeoutS: 30 });
    assertEquals([again.exit, again.status], [0, 503], name);
    assertStringIncludes(again.body, "failing");
    assert(performance.now() - began < 5000, `${name}: refused without waiting for repeated starts`);
  }
  await assertNothingLeft(p, ["quitter", "wrongport"], "delete");
});

Deno.test("env overrides the image's ENV, and a secret is mounted at /run/secrets/NAME", async (t) => {
  adapterBuilt();
  await using ctd = await startContainerd();
  await using p = await startTestPlatform(ctd);
  const image = { args: [SERVER_PORT], env: { GREETING: "from the image", KEPT: "image value" } };
  const secret = "correct horse battery staple";

  await t.step("env=KEY=VALUE is the process's environment, over the image's", async () => {
    const { url } = await deploy(
      p,
      "envy",
      `http_port=${SERVER_PORT}&env=GREETING=hi&env=EXTRA=a=b&min_ready=1`,
      image,
    );
    for (
      const [name, value] of [["GREETING", "hi"], ["KEPT", "image value"], ["EXTRA", "a=b"]]
    ) {
      const r = await curl(`${url}/env/${name}`);
      assertEquals([r.exit, r.status, r.body], [0, 200, value], name);
    }
    assertEquals((await curl(`${url}/env/NOT_SET`)).status, 404);
    const list = await (await p.request("GET", "/api/list")).json();
    assertEquals(list.envy.settings.env, { GREETING: "hi", EXTRA: "a=b" });
    assertEquals(list.envy.settings.http_port, 8080);

    // A change of env drains the ready containers started with the old one: the next request sees the new value.
    assert(await waitUntil(() => p.platform.server.ready("envy") === 1), "a ready container");
    const res = await p.request("PATCH", "/api/functions/envy", {
      body: JSON.stringify({ env: ["GREETING=patched"] }),
    });
    assertEquals(res.status, 200, await res.text());
    const r = await curl(`${url}/env/GREETING`);
    assertEquals([r.status, r.body], [200, "patched"]);
    assertEquals((await curl(`${url}/env/EXTRA`)).status, 404, "env is replaced as a whole");
  });

  await t.step("a secret is created, listed by name only, and mounted where the function reads it", async () => {
    const created = await p.request("POST", "/api/secrets/db-password", { body: secret });
    assertEquals(created.status, 201, await created.text());
    const listed = await p.request("GET", "/api/secrets");
    assertEquals(listed.status, 200);
    const text = await listed.text();
    assert(!text.includes(secret), `the list shows a value: ${text}`);
    const secrets = JSON.parse(text) as { name: string }[];
    assertEquals(secrets.map((s) => s.name), ["db-password"]);
    assertEquals(Object.keys(secrets[0]!).sort(), ["created_at", "name"]);

    const { url } = await deploy(p, "vault", `http_port=${SERVER_PORT}&secret=db-password`, image);
    const r = await curl(`${url}/file/run/secrets/db-password`);
    assertEquals([r.exit, r.status, r.body], [0, 200, secret]);
    assertEquals((await curl(`${url}/file/run/secrets/other`)).status, 404);
  });

  await t.step("a secret in use cannot be deleted (409); a deploy naming a missing one is refused (400)", async () => {
    const used = await p.request("DELETE", "/api/secrets/db-password");
    assertEquals(used.status, 409);
    assertStringIncludes((await used.json()).error, "vault");
    const missing = await deployResponse(
      p,
      "lost",
      `http_port=${SERVER_PORT}&secret=no-such-secret`,
      await buildHandlerImage("server", image),
    );
    assertEquals(missing.status, 400);
    assertStringIncludes((await missing.json()).error, "no-such-secret");
    assertEquals((await p.request("GET", "/api/ip/lost")).status, 404, "nothing was deployed");
  });

  await t.step("once no function uses it, the secret can be deleted; nothing is left", async () => {
    await assertNothingLeft(p, ["envy", "vault"], "delete");
    const res = await p.request("DELETE", "/api/secrets/db-password");
    assertEquals(res.status, 200, await res.text());
    assertEquals(await (await p.request("GET", "/api/secrets")).json(), []);
  });
});

Deno.test("bad adapter-mode settings are refused with a 400 that says what is wrong", async () => {
  adapterBuilt();
  await using ctd = await startContainerd();
  await using p = await startTestPlatform(ctd);
  const tarball = await buildHandlerImage("server", { args: [SERVER_PORT] });
  const cases: [string, string][] = [
    ["http_port=0", "http_port"],
    ["http_port=70000", "http_port"],
    ["http_port=8080&ready_timeout=0s", "ready_timeout"],
    ["env=NOEQUALS", "NOEQUALS"],
    ["env=1BAD=x", "env name"],
    ["secret=../x", "../x"],
  ];
  for (const [query, says] of cases) {
    const res = await deployResponse(p, "bad", query, tarball);
    const body = await res.json();
    assertEquals(res.status, 400, `${query}: ${JSON.stringify(body)}`);
    assertStringIncludes(body.error, says, query);
  }
  // The same checks guard a change of settings.
  const { url } = await deploy(p, "good", `http_port=${SERVER_PORT}`);
  for (const patch of [{ http_port: 0 }, { env: ["NOEQUALS"] }, { secrets: ["../x"] }, { secrets: ["absent"] }]) {
    const res = await p.request("PATCH", "/api/functions/good", { body: JSON.stringify(patch) });
    assertEquals(res.status, 400, `${JSON.stringify(patch)}: ${await res.text()}`);
  }
  assertEquals((await p.request("GET", "/api/ip/bad")).status, 404, "no refused deploy left a function");
  assertEquals((await curl(`${url}/`)).body, HELLO, "the refused changes left the function as it was");
  await assertNothingLeft(p, ["good"], "delete");
});
