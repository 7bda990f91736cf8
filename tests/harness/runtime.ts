/**
 * Driving an OCI runtime binary the way the runc v2 shim does (go-runc's global flags), with a `runc` on PATH that
 * records each call before running the real one: what tests/runtime_test.ts and tests/runtime_create_test.ts share.
 *
 * @module
 */

/** Debian's runc. */
export const REAL_RUNC = "/usr/sbin/runc";

/** Where a runtime keeps its state and log, and the directory whose recording `runc` comes first on PATH. */
export interface RuntimeDirs {
  root: string;
  log: string;
  bin: string;
}

/** What one runtime command printed. */
export interface RuntimeResult {
  code: number;
  stdout: string;
  stderr: string;
}

/** Runs `binary ARGS` with go-runc's global flags; a `create` gets no pipes (the container would keep them open). */
export async function goRunc(binary: string, dirs: RuntimeDirs, ...args: string[]): Promise<RuntimeResult> {
  const piped = args[0] !== "create";
  const out = await new Deno.Command(binary, {
    args: ["--root", dirs.root, "--log", dirs.log, "--log-format", "json", ...args],
    env: { PATH: `${dirs.bin}:/usr/sbin:/usr/bin:/sbin:/bin` },
    clearEnv: true,
    stdin: "null",
    stdout: piped ? "piped" : "null",
    stderr: piped ? "piped" : "null",
  }).output();
  const text = (b: Uint8Array) => new TextDecoder().decode(b);
  return { code: out.code, stdout: piped ? text(out.stdout) : "", stderr: piped ? text(out.stderr) : "" };
}

/**
 * Writes `bin/runc`, which appends its arguments to `calls` and execs the real runc; returns a function giving
 * runc's commands so far (the words after the global flags), which then forgets them.
 */
export async function recordingRunc(bin: string, calls: string): Promise<() => Promise<string[]>> {
  await Deno.writeTextFile(`${bin}/runc`, `#!/bin/sh\necho "$*" >> ${calls}\nexec ${REAL_RUNC} "$@"\n`);
  await Deno.chmod(`${bin}/runc`, 0o755);
  return async () => {
    const lines = (await Deno.readTextFile(calls).catch(() => "")).split("\n").filter(Boolean);
    await Deno.remove(calls).catch(() => {});
    return lines.map((l) => l.split(" ").slice(6).join(" "));
  };
}

/** Whether pid is gone or a zombie (runc's "stopped"). */
export async function stopped(pid: number): Promise<boolean> {
  const stat = await Deno.readTextFile(`/proc/${pid}/stat`).catch(() => null);
  return stat === null || / [ZX] /.test(stat.slice(stat.lastIndexOf(")")));
}
