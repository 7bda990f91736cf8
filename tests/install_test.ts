/**
 * `tools/install.sh` end to end, into a temporary root (`FAASD_INSTALL_ROOT`) so that the host's /etc, /usr/local/bin,
 * /opt, /var/lib and systemd are never touched: the copy it installs starts offline, the unit file passes
 * `systemd-analyze verify` and its command line starts faasd, the settings file is private and survives a second
 * install, `faas` works from any directory, `--uninstall` keeps settings and state and `--purge` removes them. Also
 * `deno task compile`, in the installed copy: one line and exit 1 where Deno's runtime cannot be downloaded.
 *
 * The Debian packages are only installed when missing (tools/setup.sh), and the copy's Deno comes from this checkout's
 * `.tools/`: on a host set up for the other tests this needs no network.
 */

import { assert, assertEquals, assertMatch, assertStringIncludes } from "./assert.ts";

const PROJECT = new URL("..", import.meta.url).pathname.replace(/\/$/, "");
const INSTALL = `${PROJECT}/tools/install.sh`;

interface Output {
  code: number;
  stdout: string;
  stderr: string;
}

async function run(cmd: string, args: string[], opts: { cwd?: string; env?: Record<string, string> } = {}) {
  const out = await new Deno.Command(cmd, { args, cwd: opts.cwd, env: opts.env, stdout: "piped", stderr: "piped" })
    .output();
  const decode = (b: Uint8Array) => new TextDecoder().decode(b);
  return { code: out.code, stdout: decode(out.stdout), stderr: decode(out.stderr) } satisfies Output;
}

function explain(out: Output): string {
  return `exit ${out.code}\n--- stdout\n${out.stdout}--- stderr\n${out.stderr}`;
}

async function exists(path: string): Promise<boolean> {
  return await Deno.lstat(path).then(() => true, () => false);
}

async function tempDir(prefix: string): Promise<{ path: string } & AsyncDisposable> {
  const path = await Deno.makeTempDir({ prefix });
  return { path, [Symbol.asyncDispose]: () => Deno.remove(path, { recursive: true }).catch(() => {}) };
}

/** `KEY=VALUE` split at the first `=`. */
function keyValue(line: string): [string, string] {
  const at = line.indexOf("=");
  return [line.slice(0, at), line.slice(at + 1)];
}

const escapeRegExp = (text: string) => text.replace(/[.*+?^${}()|[\]\\]/g, "\\$&");

/** `Key=value` lines of a unit file's sections, in order (a key may repeat). */
function unitEntries(text: string): Array<[string, string]> {
  return text.split("\n").filter((l) => /^[A-Za-z]+=/.test(l)).map(keyValue);
}

function unitValue(entries: Array<[string, string]>, key: string): string {
  const found = entries.filter(([k]) => k === key);
  assertEquals(found.length, 1, `one ${key}= in the unit`);
  return found[0][1];
}

/** Symbolic links under `dir` whose target is outside it. */
async function linksOutside(dir: string, at = dir): Promise<string[]> {
  const outside: string[] = [];
  for await (const entry of Deno.readDir(at)) {
    const path = `${at}/${entry.name}`;
    if (entry.isSymlink) {
      const target = await Deno.realPath(path).catch(() => "(dangling)");
      if (!target.startsWith(`${dir}/`)) outside.push(`${path} -> ${target}`);
    } else if (entry.isDirectory) {
      outside.push(...await linksOutside(dir, path));
    }
  }
  return outside;
}

Deno.test("install.sh installs faasd as a service, reinstalls without touching settings, and uninstalls", async (t) => {
  await using tmp = await tempDir("faasd-install-");
  const root = tmp.path;
  const prefix = `${root}/opt/faasd`;
  const unit = `${root}/etc/systemd/system/faasd.service`;
  const wants = `${root}/etc/systemd/system/multi-user.target.wants/faasd.service`;
  const envFile = `${root}/etc/faasd/env`;
  const state = `${root}/var/lib/faasd`;
  const faas = `${root}/usr/local/bin/faas`;
  const env = { FAASD_INSTALL_ROOT: root };

  await t.step("installs a copy that needs nothing outside it", async () => {
    const out = await run("bash", [INSTALL, "--prefix", prefix], { env });
    assertEquals(out.code, 0, explain(out));
    for (const line of out.stdout.trimEnd().split("\n")) assertMatch(line, /^install: \w/);
    for (
      const file of ["main.ts", "cli.ts", "deno.json", "proto/gen", "node_modules", ".tools/node_modules/.bin/deno"]
    ) {
      assert(await exists(`${prefix}/${file}`), `${file} installed`);
    }
    for (const program of ["faasd-shim", "faasd-runc", "faasd-adapter"]) {
      const mode = (await Deno.stat(`${prefix}/.tools/bin/${program}`)).mode ?? 0;
      assert(mode & 0o111, `${program} built, executable`);
    }
    for (const left of [".git", ".state", ".exp", "bench/out", "dist"]) {
      assert(!await exists(`${prefix}/${left}`), `${left} not copied`);
    }
    assertEquals(await linksOutside(prefix), [], "no link out of the installed copy");
    assert(!await exists(`${prefix}.new`) && !await exists(`${prefix}.old`), "no staging left beside it");
  });

  const entries = unitEntries(await Deno.readTextFile(unit));
  const deno = `${prefix}/.tools/node_modules/.bin/deno`;

  // verify loads the unit as systemd would: it fails on an ExecStart binary that is missing or not executable and
  // on a Requires= unit that does not exist, and warns (exit 0) on unknown keys and bad values: hence the empty
  // stderr. The install names real paths (the temporary prefix exists on this host), so no --root is needed.
  const analyze = await run("systemd-analyze", ["--version"]).catch(() => null);
  await t.step({
    name: "the unit passes systemd-analyze verify, and a broken one would not",
    ignore: analyze?.code !== 0,
    fn: async () => {
      const out = await run("systemd-analyze", ["verify", unit]);
      assertEquals([out.code, out.stderr, out.stdout], [0, "", ""], explain(out));

      await using bad = await tempDir("faasd-unit-");
      const broken = (await Deno.readTextFile(unit)).replaceAll(deno, `${root}/missing/deno`);
      await Deno.writeTextFile(`${bad.path}/faasd.service`, broken);
      const refused = await run("systemd-analyze", ["verify", `${bad.path}/faasd.service`]);
      assert(refused.code !== 0, `verify refuses a missing ExecStart binary: ${explain(refused)}`);
    },
  });

  await t.step("the unit says what the service needs, and is enabled", async () => {
    assertEquals(unitValue(entries, "WorkingDirectory"), prefix);
    assertEquals(unitValue(entries, "EnvironmentFile"), envFile);
    assertMatch(
      unitValue(entries, "ExecStart"),
      new RegExp(`^${escapeRegExp(deno)} run .*--allow-all ${escapeRegExp(`${prefix}/main.ts`)}$`),
    );
    assertEquals(unitValue(entries, "Requires"), "containerd.service");
    assertStringIncludes(unitValue(entries, "After"), "containerd.service");
    assertEquals(unitValue(entries, "KillSignal"), "SIGTERM");
    assertEquals(unitValue(entries, "Restart"), "on-failure");
    const stopSeconds = Number(unitValue(entries, "TimeoutStopSec"));
    assert(stopSeconds > 10, `TimeoutStopSec ${stopSeconds} is above the default --shutdown-grace (10s)`);
    assertEquals(unitValue(entries, "WantedBy"), "multi-user.target");
    assertEquals(await Deno.readLink(wants), "/etc/systemd/system/faasd.service", "enabled (systemctl --root)");
  });

  await t.step("the unit's command line starts faasd, with the settings file's names", async () => {
    // What systemd would run, without systemd: ExecStart with --help, in WorkingDirectory, with the unit's
    // Environment= and the EnvironmentFile's settings, and nothing else from this process's environment.
    const settings = Object.fromEntries(
      (await Deno.readTextFile(envFile)).split("\n").filter((l) => /^FAASD_\w+=/.test(l)).map(keyValue),
    );
    const unitEnv = Object.fromEntries(unitValue(entries, "Environment").split(" ").map(keyValue));
    const [cmd, ...args] = unitValue(entries, "ExecStart").split(" ");
    const out = await new Deno.Command(cmd, {
      args: [...args, "--help"],
      cwd: unitValue(entries, "WorkingDirectory"),
      clearEnv: true,
      env: { PATH: "/usr/sbin:/usr/bin:/sbin:/bin", ...unitEnv, ...settings },
      stdout: "piped",
      stderr: "piped",
    }).output();
    const help = new TextDecoder().decode(out.stdout);
    assertEquals(out.code, 0, new TextDecoder().decode(out.stderr));
    assertStringIncludes(help, "Runs the faasd daemon.");
    const named = [...(await Deno.readTextFile(envFile)).matchAll(/^#?(FAASD_\w+)=/gm)].map((m) => m[1]);
    assert(named.includes("FAASD_API_TOKEN") && named.includes("FAASD_IP_POOL") && named.includes("FAASD_API"));
    for (const name of named) assertStringIncludes(help, `env ${name},`, `faasd --help knows ${name}`);
  });

  await t.step("the settings file is private, the state directory made", async () => {
    assertEquals((await Deno.stat(envFile)).mode! & 0o777, 0o600);
    const text = await Deno.readTextFile(envFile);
    assertStringIncludes(text, `\nFAASD_STATE_DIR=${state}\n`);
    assertMatch(text, /^#FAASD_API_TOKEN=$/m);
    assertEquals((await Deno.stat(state)).mode! & 0o777, 0o700);
  });

  await using work = await tempDir("faasd-cwd-");
  await t.step("faas runs from any directory, with the caller's relative paths", async () => {
    const help = await run(faas, ["--help"], { cwd: work.path });
    assertEquals(help.code, 0, explain(help));
    assertStringIncludes(help.stdout, "Usage: faas ");

    const init = await run(faas, ["init", "c", "myfn"], { cwd: work.path });
    assertEquals(init.code, 0, explain(init));
    assert(await exists(`${work.path}/myfn/handler.c`), "faas init wrote into the caller's directory");

    // --tar is read from the caller's directory: an existing file gets as far as connecting (port 1 on loopback
    // refuses at once), a missing one is named.
    await Deno.writeTextFile(`${work.path}/x.tar`, "not a tarball");
    const url = ["--url", "http://127.0.0.1:1"];
    const upload = await run(faas, [...url, "new", "--tar", "./x.tar", "--name", "x"], { cwd: work.path });
    assertEquals(upload.code, 1);
    assertStringIncludes(upload.stderr, "cannot reach faasd at http://127.0.0.1:1");
    const missing = await run(faas, [...url, "new", "--tar", "./nope.tar", "--name", "x"], { cwd: work.path });
    assertStringIncludes(missing.stderr, "cannot read ./nope.tar");
  });

  await t.step("faas takes its URL from the settings file's FAASD_API, unless FAAS_URL is set", async () => {
    await Deno.writeTextFile(envFile, 'FAASD_API="0.0.0.0:1"\n', { append: true });
    const fromSettings = await run(faas, ["list"], { cwd: work.path });
    assertStringIncludes(fromSettings.stderr, "cannot reach faasd at http://127.0.0.1:1", explain(fromSettings));
    const fromEnv = await run(faas, ["list"], { cwd: work.path, env: { FAAS_URL: "http://127.0.0.2:1" } });
    assertStringIncludes(fromEnv.stderr, "cannot reach faasd at http://127.0.0.2:1", explain(fromEnv));
  });

  await t.step("a second install replaces the copy and keeps the operator's settings", async () => {
    const before = await Deno.readTextFile(envFile);
    await Deno.writeTextFile(`${prefix}/stray`, "");
    const out = await run("bash", [INSTALL, "--prefix", prefix], { env });
    assertEquals(out.code, 0, explain(out));
    assertStringIncludes(out.stdout, `settings: kept ${envFile}`);
    assertEquals(await Deno.readTextFile(envFile), before);
    assertEquals((await Deno.stat(envFile)).mode! & 0o777, 0o600);
    assert(!await exists(`${prefix}/stray`), "the copy was replaced whole");
    assert(await exists(`${prefix}/main.ts`) && await exists(wants));
  });

  await t.step(
    "deno task compile says in one line that it cannot build here, or builds binaries that run",
    async () => {
      const out = await run(deno, ["task", "-q", "compile"], { cwd: prefix });
      if (out.code === 0) {
        for (const binary of ["faasd", "faas"]) {
          const help = await run(`${prefix}/dist/${binary}`, ["--help"]);
          assertEquals(help.code, 0, explain(help));
        }
        return;
      }
      assertEquals(out.code, 1, explain(out));
      const lines = out.stderr.trimEnd().split("\n");
      assertEquals(lines.length, 1, explain(out));
      assertMatch(
        lines[0],
        /^compile: deno compile needs to download Deno's runtime \(denort [\d.]+\) from dl\.deno\.land/,
      );
      assert(!await exists(`${prefix}/dist`), "no empty dist/ left");
    },
  );

  await t.step("--uninstall removes the service, faas and the copy, and keeps settings and state", async () => {
    const out = await run("bash", [INSTALL, "--uninstall"], { env }); // the prefix is read from the unit
    assertEquals(out.code, 0, explain(out));
    for (const gone of [unit, wants, faas, prefix]) assert(!await exists(gone), `${gone} removed`);
    assert(await exists(envFile) && await exists(state), "settings and state kept");
  });

  await t.step("--uninstall --purge removes settings and state too", async () => {
    const out = await run("bash", [INSTALL, "--uninstall", "--purge", "--prefix", prefix], { env });
    assertEquals(out.code, 0, explain(out));
    assert(!await exists(`${root}/etc/faasd`) && !await exists(state), "settings and state removed");
  });
});
