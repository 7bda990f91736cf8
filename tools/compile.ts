/**
 * `deno task compile`: builds the single binaries `dist/faasd` (the daemon, with `deno task faasd`'s `--allow-all`)
 * and `dist/faas` (the CLI, with the `faas` task's permissions, and `templates/` embedded for `faas init`) with
 * `deno compile`. Like the tasks, it does not type-check: `deno task check` does.
 *
 * `deno compile` needs Deno's runtime, `denort`, of this Deno's version: it downloads it from dl.deno.land, or takes
 * the file that `DENORT_BIN` names. Where neither works (as here), the task says so in one line and exits 1;
 * `tools/install.sh` runs faasd with the Deno it installs instead.
 *
 * A compiled faasd is not yet a whole faasd. Its C helpers, `.tools/bin/faasd-shim`, `faasd-runc` and `faasd-adapter`
 * (built by `deno task gen`), are found beside the code through `import.meta.url` (lib/shim.ts, lib/adapter.ts), which
 * in a compiled binary points into the binary's own file system: they are not there, and containerd could not run
 * them from there if they were. So the compiled daemon is given their paths: `--shim /path/to/faasd-shim` (else it
 * uses the runc v2 shim), `--runtime /path/to/faasd-runc` (else runc) and `--adapter /path/to/faasd-adapter` (else
 * adapter mode, `--http-port`, is refused). The compiled `faas` needs nothing beside it.
 *
 * @module
 */

/** One binary `deno compile` builds. */
export interface Target {
  /** File name under `dist/`. */
  binary: string;
  /** Entry module, relative to the project root. */
  entry: string;
  /** Permission flags baked into the binary: those of the task that runs the entry. */
  permissions: readonly string[];
  /** Files or folders, relative to the project root, embedded for reading at run time. */
  include: readonly string[];
}

/** The binaries `deno task compile` builds. */
export const TARGETS: readonly Target[] = [
  { binary: "faasd", entry: "main.ts", permissions: ["--allow-all"], include: [] },
  {
    binary: "faas",
    entry: "cli.ts",
    permissions: ["--allow-net", "--allow-read", "--allow-write", "--allow-env", "--allow-run"],
    include: ["templates/"],
  },
];

/** What the compiled binaries lack, said after a build. */
export const LIMITS = "dist/faasd finds no faasd-shim, faasd-runc or faasd-adapter inside itself: run it with --shim " +
  "/path/to/.tools/bin/faasd-shim (else it uses the runc v2 shim), --runtime /path/to/.tools/bin/faasd-runc (else " +
  "runc) and --adapter /path/to/.tools/bin/faasd-adapter (else --http-port is refused)";

/** The arguments of `deno` that build `target` into `dist/`. */
export function compileArgs(target: Target): string[] {
  return [
    "compile",
    "--no-check",
    ...target.permissions,
    ...target.include.flatMap((path) => ["--include", path]),
    "--output",
    `dist/${target.binary}`,
    target.entry,
  ];
}

/**
 * The one line that says `deno compile` could not get its runtime, from its error output; null when it failed for
 * another reason (a missing `DENORT_BIN` file, a module that does not resolve…), whose own output says more.
 */
export function runtimeUnreachable(stderr: string, version: string = Deno.version.deno): string | null {
  if (!stderr.includes("dl.deno.land")) return null;
  return `deno compile needs to download Deno's runtime (denort ${version}) from dl.deno.land, which this host ` +
    "cannot reach (or set DENORT_BIN to a local denort of that version); tools/install.sh runs faasd with the Deno " +
    "it installs instead";
}

async function main(): Promise<number> {
  const root = new URL("..", import.meta.url).pathname;
  for (const target of TARGETS) {
    const { code, stderr } = await new Deno.Command(Deno.execPath(), {
      args: compileArgs(target),
      cwd: root,
      env: { NO_COLOR: "1" },
      stdout: "null",
      stderr: "piped",
    }).output();
    if (code !== 0) {
      // Leave no empty dist/ behind a build that made nothing.
      await Deno.remove(`${root}dist`).catch(() => {});
      const text = new TextDecoder().decode(stderr).trimEnd();
      console.error(`compile: ${runtimeUnreachable(text) ?? `deno compile ${target.entry} failed:\n${text}`}`);
      return 1;
    }
    console.log(`compile: dist/${target.binary} (${target.entry}, ${target.permissions.join(" ")})`);
  }
  console.log(`compile: ${LIMITS}`);
  return 0;
}

if (import.meta.main) Deno.exit(await main());
