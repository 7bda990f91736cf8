import { assertEquals, assertRejects } from "../../tests/assert.ts";
import { upload } from "./upload.ts";

/** A server that hashes what it receives and reports the framing it saw. */
function serve(handler?: (req: Request) => Promise<Response>) {
  const server = Deno.serve(
    { hostname: "127.0.0.1", port: 0, onListen() {} },
    handler ?? (async (req) => {
      const bytes = new Uint8Array(await req.arrayBuffer());
      const digest = new Uint8Array(await crypto.subtle.digest("SHA-256", bytes));
      return Response.json({
        length: bytes.length,
        sha: Array.from(digest.slice(0, 4)).join(","),
        chunked: req.headers.get("transfer-encoding"),
        name: req.headers.get("x-image-name"),
      });
    }),
  );
  return { url: `http://127.0.0.1:${server.addr.port}/api/new`, server };
}

function stream(bytes: Uint8Array, piece: number): ReadableStream<Uint8Array> {
  let at = 0;
  return new ReadableStream({
    pull(c) {
      if (at >= bytes.length) return c.close();
      c.enqueue(bytes.slice(at, at += piece));
    },
  });
}

const data = new Uint8Array(3 * 1024 * 1024 + 17);
for (let i = 0; i < data.length; i += 65536) crypto.getRandomValues(data.subarray(i, i + 65536));
const expectedSha = Array.from(new Uint8Array(await crypto.subtle.digest("SHA-256", data)).slice(0, 4)).join(",");

Deno.test("upload() sends a body of known size with Content-Length, intact", async () => {
  const { url, server } = serve();
  const answer = await upload(url, { "x-image-name": "a" }, stream(data, 1000), data.length);
  assertEquals(answer.status, 200);
  assertEquals(JSON.parse(answer.body), { length: data.length, sha: expectedSha, chunked: null, name: "a" });
  await server.shutdown();
});

Deno.test("upload() sends a body of unknown size chunked, intact", async () => {
  const { url, server } = serve();
  const answer = await upload(url, { "x-image-name": "b" }, stream(data, 7777));
  assertEquals(JSON.parse(answer.body), { length: data.length, sha: expectedSha, chunked: "chunked", name: "b" });
  await server.shutdown();
});

Deno.test("upload() returns an early refusal even while the body is still being sent", async () => {
  const { url, server } = serve((req) => {
    req.body?.cancel();
    return Promise.resolve(Response.json({ error: "too large" }, { status: 413 }));
  });
  const big = new Uint8Array(64 * 1024 * 1024);
  const answer = await upload(url, {}, stream(big, 1 << 20), big.length);
  assertEquals(answer.status, 413);
  assertEquals(JSON.parse(answer.body), { error: "too large" });
  await server.shutdown();
});

Deno.test("upload() refuses header values with line breaks (no header injection)", async () => {
  await assertRejects(
    () => upload("http://127.0.0.1:1/", { "x-image-name": "a\r\nX-Evil: 1" }, stream(data, 1000)),
    TypeError,
    "line break",
  );
});

Deno.test("upload() rethrows a failing body and fails on a refused connection", async () => {
  const { url, server } = serve();
  const failing = new ReadableStream<Uint8Array>({
    start(c) {
      c.enqueue(new Uint8Array(10));
      c.error(new RangeError("export failed"));
    },
  });
  await assertRejects(() => upload(url, {}, failing), RangeError, "export failed");
  await server.shutdown();
  let cancelled: unknown = null;
  const source = new ReadableStream<Uint8Array>({ cancel: (reason) => void (cancelled = reason) });
  await assertRejects(() => upload(url, {}, source, data.length), Deno.errors.ConnectionRefused);
  // The body's source is told to stop: `faas new` must not leave a `docker save` running.
  assertEquals(cancelled instanceof Deno.errors.ConnectionRefused, true);
});
