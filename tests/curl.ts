/**
 * curl as the test client of functions: a real, independent HTTP client whose exit code tells a clean end of stream
 * (0) from a reset (56), and which keeps no connection (or fd) in the test process.
 *
 * @module
 */

/** What curl saw. */
export interface CurlResult {
  /** curl's exit code: 0 for a complete answer and a clean close, 56 for a reset, 28 for a timeout. */
  exit: number;
  status: number;
  body: string;
  stderr: string;
}

/** Fetches `url` with curl; `data` makes it a POST with that body. */
export async function curl(url: string, opts: { data?: string; timeoutS?: number; args?: string[] } = {}): Promise<
  CurlResult
> {
  const args = ["-sS", "-m", String(opts.timeoutS ?? 30), "-o", "-", "-w", "\n%{http_code}", ...(opts.args ?? [])];
  if (opts.data !== undefined) args.push("--data-binary", "@-");
  const child = new Deno.Command("curl", {
    args: [...args, url],
    stdin: opts.data !== undefined ? "piped" : "null",
    stdout: "piped",
    stderr: "piped",
  }).spawn();
  if (opts.data !== undefined) {
    const w = child.stdin.getWriter();
    await w.write(new TextEncoder().encode(opts.data));
    await w.close();
  }
  const out = await child.output();
  const text = new TextDecoder().decode(out.stdout);
  const cut = text.lastIndexOf("\n");
  return {
    exit: out.code,
    status: Number(text.slice(cut + 1)),
    body: text.slice(0, cut),
    stderr: new TextDecoder().decode(out.stderr),
  };
}
