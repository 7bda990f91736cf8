/**
 * The CLI's upload of an image tarball: one HTTP/1.1 POST over a plain TCP connection, written here rather than
 * with `fetch` because Deno's HTTP clients frame a streamed body in small chunks on a socket without `TCP_NODELAY`,
 * which stalls on delayed ACKs whenever faasd applies back-pressure (measured: ~6× slower than curl for 100 MiB).
 * Here each chunk goes out in one write, and with `TCP_NODELAY`. A body of known size is sent with
 * `Content-Length`, an export stream of unknown size with chunked encoding.
 *
 * @module
 */

/** faasd's answer: status and body text. */
export interface UploadAnswer {
  status: number;
  body: string;
}

import { concatBytes } from "../bytes.ts";

const encoder = new TextEncoder();

/** Coalesces a byte stream into chunks of at least `min` bytes (the last may be smaller). */
async function* coalesce(source: ReadableStream<Uint8Array>, min: number): AsyncGenerator<Uint8Array> {
  let parts: Uint8Array[] = [];
  let size = 0;
  for await (const chunk of source) {
    parts.push(chunk);
    size += chunk.length;
    if (size >= min) {
      yield concatBytes(parts, size);
      parts = [];
      size = 0;
    }
  }
  if (size > 0) yield concatBytes(parts, size);
}

async function writeAll(conn: Deno.Conn, bytes: Uint8Array): Promise<void> {
  for (let at = 0; at < bytes.length;) at += await conn.write(bytes.subarray(at));
}

/** Index of the blank line ending the head (`\r\n\r\n`), or -1. */
function headEnd(bytes: Uint8Array): number {
  for (let i = 3; i < bytes.length; i++) {
    if (bytes[i] === 10 && bytes[i - 1] === 13 && bytes[i - 2] === 10 && bytes[i - 3] === 13) return i + 1;
  }
  return -1;
}

/** Reads the answer: status line, headers, and a body of `Content-Length` bytes (or up to the end of stream). */
async function readAnswer(conn: Deno.Conn): Promise<UploadAnswer> {
  const chunks: Uint8Array[] = [];
  let size = 0;
  let bodyStart = -1;
  let length = -1;
  const buf = new Uint8Array(16 * 1024);
  while (bodyStart < 0 || length < 0 || size - bodyStart < length) {
    const n = await conn.read(buf);
    if (n === null) break;
    chunks.push(buf.slice(0, n));
    size += n;
    if (bodyStart < 0) {
      const bytes = concatBytes(chunks, size);
      bodyStart = headEnd(bytes);
      if (bodyStart >= 0) {
        const head = new TextDecoder().decode(bytes.subarray(0, bodyStart));
        length = Number(/\r\ncontent-length:\s*(\d+)/i.exec(head)?.[1] ?? -1);
      }
    }
  }
  const all = concatBytes(chunks, size);
  const status = Number(/^HTTP\/1\.[01] (\d{3}) /.exec(new TextDecoder().decode(all.subarray(0, 16)))?.[1]);
  if (bodyStart < 0 || Number.isNaN(status)) throw new Error("faasd closed the connection without a valid answer");
  return { status, body: new TextDecoder().decode(all.subarray(bodyStart, length >= 0 ? bodyStart + length : size)) };
}

/**
 * POSTs `body` to `url` (an `http://` URL) with `headers`; `size`, when known, is sent as `Content-Length`.
 *
 * @throws {TypeError} for a URL that is not plain http, or a header with a line break.
 * @throws {Deno.errors.ConnectionRefused} and other connection errors when faasd cannot be reached.
 * @throws whatever `body` errors with (e.g. a failed `docker save`), after closing the connection. When the upload
 *   cannot start, `body` is cancelled.
 */
export async function upload(
  url: string,
  headers: Record<string, string>,
  body: ReadableStream<Uint8Array>,
  size?: number,
): Promise<UploadAnswer> {
  let conn: Deno.TcpConn;
  let u: URL;
  try {
    for (const [k, v] of Object.entries(headers)) {
      if (/[\r\n]/.test(k + v)) throw new TypeError(`header ${JSON.stringify(k)} must not contain a line break`);
    }
    u = new URL(url);
    if (u.protocol !== "http:") throw new TypeError(`only http:// URLs are supported for uploads, got ${u.protocol}`);
    conn = await Deno.connect({ hostname: u.hostname, port: Number(u.port || 80) });
  } catch (e) {
    // Nothing will read the body now: cancelling it stops its source (e.g. ends a `docker save`).
    await body.cancel(e).catch(() => {});
    throw e;
  }
  try {
    conn.setNoDelay(true);
    const head = [`POST ${u.pathname}${u.search} HTTP/1.1`, `Host: ${u.host}`, "Connection: close"];
    for (const [k, v] of Object.entries(headers)) head.push(`${k}: ${v}`);
    head.push(size === undefined ? "Transfer-Encoding: chunked" : `Content-Length: ${size}`);
    // The answer may come early (a refusal before the body is read); read it concurrently so it is not lost.
    const answer = readAnswer(conn);
    answer.catch(() => {});
    await writeAll(conn, encoder.encode(head.join("\r\n") + "\r\n\r\n"));
    try {
      for await (const chunk of coalesce(body, 256 * 1024)) {
        if (size !== undefined) await writeAll(conn, chunk);
        else {
          const prefix = encoder.encode(`${chunk.length.toString(16)}\r\n`);
          await writeAll(conn, concatBytes([prefix, chunk, encoder.encode("\r\n")], prefix.length + chunk.length + 2));
        }
      }
      if (size === undefined) await writeAll(conn, encoder.encode("0\r\n\r\n"));
    } catch (e) {
      // faasd may have answered and closed early (e.g. 413); that answer is what the user needs to see.
      if (e instanceof Deno.errors.BrokenPipe || e instanceof Deno.errors.ConnectionReset) return await answer;
      throw e;
    }
    return await answer;
  } finally {
    try {
      conn.close();
    } catch { /* closed already */ }
  }
}
