/**
 * What the benchmarks share: percentiles, running a command, one HTTP request on a new connection, and the
 * `ctr run --rm` baseline.
 *
 * @module
 */

import type { ContainerdInstance } from "../tests/harness/containerd.ts";
import type { Daemon } from "../tests/harness/platform.ts";

/** Exit code of the handler's `exit` mode. */
const EXIT_MODE_CODE = 3;
const REQUEST_TIMEOUT_MS = 30_000;

/** Nearest-rank percentile. */
export function percentile(xs: number[], p: number): number {
  if (!xs.length) return NaN;
  const s = [...xs].sort((a, b) => a - b);
  return s[Math.min(s.length - 1, Math.max(0, Math.ceil((p / 100) * s.length) - 1))]!;
}

/** Runs a command to completion; throws with its stderr when it fails. Returns stdout. */
export async function run(cmd: string, args: string[]): Promise<string> {
  const out = await new Deno.Command(cmd, { args, stdin: "null", stdout: "piped", stderr: "piped" }).output();
  const text = (b: Uint8Array) => new TextDecoder().decode(b);
  if (!out.success) throw new Error(`${cmd} ${args.join(" ")} exited ${out.code}: ${text(out.stderr)}`);
  return text(out.stdout);
}

/** One request's outcome: its time, and what went wrong (null when correct). */
export interface Sample {
  ms: number;
  error: string | null;
}

/** One request on a new connection, read to EOF; checks the status and body. */
export async function httpGet(hostname: string, port: number, expectedBody: string, path = "/"): Promise<Sample> {
  const start = performance.now();
  let conn: Deno.TcpConn | null = null;
  let timedOut = false;
  const timer = setTimeout(() => {
    timedOut = true;
    try {
      conn?.close();
    } catch { /* already closed */ }
  }, REQUEST_TIMEOUT_MS);
  const chunks: Uint8Array[] = [];
  try {
    conn = await Deno.connect({ hostname, port });
    const request = new TextEncoder().encode(`GET ${path} HTTP/1.1\r\nHost: bench\r\nConnection: close\r\n\r\n`);
    for (let off = 0; off < request.length;) off += await conn.write(request.subarray(off));
    const buf = new Uint8Array(16 * 1024);
    for (;;) {
      const n = await conn.read(buf);
      if (n === null) break;
      chunks.push(buf.slice(0, n));
    }
  } catch (e) {
    return {
      ms: performance.now() - start,
      error: timedOut ? "timeout" : `${(e as Error).name}: ${(e as Error).message}`,
    };
  } finally {
    clearTimeout(timer);
    try {
      conn?.close();
    } catch { /* closed by the timer */ }
  }
  const ms = performance.now() - start;
  const text = new TextDecoder().decode(new Uint8Array(chunks.flatMap((c) => [...c])));
  const cut = text.indexOf("\r\n\r\n");
  const status = Number(text.split(" ", 2)[1]);
  const body = cut < 0 ? "" : text.slice(cut + 4);
  if (status !== 200 || body !== expectedBody) {
    return { ms, error: `status ${status || "none"}, body ${JSON.stringify(body.slice(0, 200))}` };
  }
  return { ms, error: null };
}

let ctrSeq = 0;

/** `ctr run --rm [extraArgs] IMAGE ID /handler exit`: start and reap one container; exit code 3 is success. */
export async function ctrRun(
  ctd: ContainerdInstance,
  namespace: string,
  image: string,
  extraArgs: string[] = [],
): Promise<Sample> {
  const id = `bench-${Deno.pid}-${ctrSeq++}`;
  const start = performance.now();
  const out = await new Deno.Command("ctr", {
    args: ["-a", ctd.socket, "-n", namespace, "run", "--rm", ...extraArgs, image, id, "/handler", "exit"],
    stdin: "null",
    stdout: "null",
    stderr: "piped",
  }).output();
  const ms = performance.now() - start;
  if (out.code === EXIT_MODE_CODE) return { ms, error: null };
  return { ms, error: `ctr run exited ${out.code}: ${new TextDecoder().decode(out.stderr).trim()}` };
}

/** Deploys `tarball` as function `name` to `daemon` with the query string `query` (without `?`); returns its IP. */
export async function deploy(daemon: Daemon, name: string, tarball: string, query = ""): Promise<string> {
  const res = await fetch(`${daemon.url}/api/new${query ? `?${query}` : ""}`, {
    method: "POST",
    headers: { "x-image-name": name },
    body: (await Deno.open(tarball)).readable,
  });
  const body = await res.json();
  if (!res.ok) throw new Error(`deploy ${name}: ${res.status} ${JSON.stringify(body)}`);
  return body.ip;
}
