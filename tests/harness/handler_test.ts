/**
 * Host-side tests of the test handler (tests/fixtures/handler.c), without containerd: the compiled binary runs
 * directly, with `FAASD_CONTROL_SOCK` pointing at a Unix socket served by tests/fixtures/fdpass_peer.py, which plays
 * faasd's part (accept a TCP client, pass its fd with SCM_RIGHTS, wait for the handler, drain, close). The client
 * is plain Deno TCP. These tests pin down each mode's behaviour so the integration tests can rely on it.
 *
 * @module
 */

import { join } from "node:path";
import { compileHandler, FIXTURES_DIR } from "./images.ts";
import { assert, assertEquals } from "../assert.ts";

interface PeerEvent {
  event: string;
  drained?: number;
}

interface HandlerRun {
  /** Everything the client received before EOF. */
  response: Uint8Array;
  /** The error that ended the client's read instead of EOF (e.g. a reset), if any. */
  readError?: unknown;
  /** fdpass_peer.py's events in order, e.g. ["accepted", "connected", "sent", "handler-closed", "done"]. */
  events: string[];
  /** Handler exit code; null when it had to be killed. */
  code: number | null;
  stdout: string;
  stderr: string;
}

interface RunOptions {
  args?: string[];
  env?: Record<string, string>;
  /** Bytes the client sends right after connecting. */
  request?: string | Uint8Array;
  /** Seconds the peer waits for the handler to connect, then to exit. */
  wait?: number;
  cwd?: string;
  /** The mode never exits by itself: check it is still running, then kill it. */
  runsForever?: boolean;
}

const encoder = new TextEncoder();
const decoder = new TextDecoder();

/** Runs the handler in `mode` for one client connection and collects what everybody saw. */
async function runHandler(mode: string, opts: RunOptions = {}): Promise<HandlerRun> {
  const binary = await compileHandler();
  const dir = await Deno.makeTempDir({ prefix: "faasd-handler-test-" });
  const controlSock = join(dir, "control.sock");
  const peer = new Deno.Command("python3", {
    args: [join(FIXTURES_DIR, "fdpass_peer.py"), controlSock, String(opts.wait ?? 10)],
    stdin: "null",
    stdout: "piped",
    stderr: "inherit",
  }).spawn();
  const lines = readLines(peer.stdout);
  let handler: Deno.ChildProcess | undefined;
  let conn: Deno.TcpConn | undefined;
  try {
    const first = await lines.next();
    if (first.done) throw new Error("fdpass_peer.py exited before listening");
    const { port } = JSON.parse(first.value) as { port: number };

    conn = await Deno.connect({ hostname: "127.0.0.1", port });
    if (opts.request !== undefined) {
      const bytes = typeof opts.request === "string" ? encoder.encode(opts.request) : opts.request;
      for (let off = 0; off < bytes.length;) off += await conn.write(bytes.subarray(off));
    }
    handler = new Deno.Command(binary, {
      args: [mode, ...(opts.args ?? [])],
      env: { FAASD_CONTROL_SOCK: controlSock, ...opts.env },
      cwd: opts.cwd ?? dir,
      stdin: "null",
      stdout: "piped",
      stderr: "piped",
    }).spawn();

    const events: string[] = [];
    const collectEvents = (async () => {
      for await (const line of lines) events.push((JSON.parse(line) as PeerEvent).event);
    })();
    let readError: unknown;
    const response = await new Response(conn.readable).bytes().catch((err) => {
      readError = err;
      return new Uint8Array();
    });
    conn = undefined; // reading to the end closed it
    await collectEvents;
    await peer.status;

    // hang/noconnect never exit on their own (the peer has given up on them by now); the others exit at once.
    const grace = opts.runsForever ? 100 : 10_000;
    const exited = await Promise.race([handler.status.then(() => true), delay(grace).then(() => false)]);
    if (!exited) handler.kill("SIGKILL");
    const out = await handler.output();
    handler = undefined;
    return {
      response,
      readError,
      events,
      code: exited ? out.code : null,
      stdout: decoder.decode(out.stdout),
      stderr: decoder.decode(out.stderr),
    };
  } finally {
    conn?.close();
    if (handler) {
      handler.kill("SIGKILL");
      await handler.output();
    }
    try {
      peer.kill("SIGKILL");
    } catch {
      // already exited
    }
    await peer.status;
    await Deno.remove(dir, { recursive: true });
  }
}

async function* readLines(stream: ReadableStream<Uint8Array>): AsyncGenerator<string> {
  let buffered = "";
  for await (const chunk of stream.pipeThrough(new TextDecoderStream())) {
    buffered += chunk;
    let nl;
    while ((nl = buffered.indexOf("\n")) >= 0) {
      yield buffered.slice(0, nl);
      buffered = buffered.slice(nl + 1);
    }
  }
  if (buffered) yield buffered;
}

function delay(ms: number): Promise<void> {
  return new Promise((resolve) => {
    const id = setTimeout(resolve, ms);
    Deno.unrefTimer(id);
  });
}

interface ParsedResponse {
  status: number;
  headers: Map<string, string>;
  body: Uint8Array;
}

function parseResponse(raw: Uint8Array): ParsedResponse {
  const text = decoder.decode(raw);
  const end = text.indexOf("\r\n\r\n");
  assert(end >= 0, `no end of head in ${JSON.stringify(text.slice(0, 200))}`);
  const [statusLine, ...headerLines] = text.slice(0, end).split("\r\n");
  const match = /^HTTP\/1\.1 (\d{3}) /.exec(statusLine);
  assert(match, `bad status line ${JSON.stringify(statusLine)}`);
  const headers = new Map<string, string>();
  for (const line of headerLines) {
    const colon = line.indexOf(":");
    headers.set(line.slice(0, colon).trim().toLowerCase(), line.slice(colon + 1).trim());
  }
  // The head is ASCII, so its byte length equals its character length.
  const body = raw.subarray(end + 4);
  const length = headers.get("content-length");
  if (length !== undefined) assertEquals(body.length, Number(length), "body length vs Content-Length");
  return { status: Number(match[1]), headers, body };
}

const GET = "GET / HTTP/1.1\r\nHost: test\r\n\r\n";
const SERVED = ["accepted", "connected", "sent", "handler-closed", "done"];

Deno.test("handler hello answers 200 with Content-Length and exits 0", async () => {
  const run = await runHandler("hello", { request: GET });
  assertEquals(run.readError, undefined, "read error");
  const res = parseResponse(run.response);
  assertEquals(res.status, 200, "status");
  assertEquals(decoder.decode(res.body), "hello from faasd\n", "body");
  assert(/^mode=hello pid=\d+ host=/.test(res.headers.get("x-handler") ?? ""), "X-Handler header");
  assertEquals(run.code, 0, "exit code");
  assertEquals(run.events, SERVED, "peer events");
  assert(run.stdout.includes('served "GET / HTTP/1.1"'), `stdout ${run.stdout}`);
});

Deno.test("handler noread answers the seed's bytes without reading the request", async () => {
  const request = "POST / HTTP/1.1\r\nHost: test\r\nContent-Length: 5000\r\n\r\n" + "x".repeat(5000);
  const run = await runHandler("noread", { request });
  assertEquals(run.readError, undefined, "read error");
  assertEquals(decoder.decode(run.response), "HTTP/1.1 200 OK\r\n\r\nHello World!", "response");
  assertEquals(run.code, 0, "exit code");
  // The peer drained what the handler left unread: proof that it really did not read.
  assertEquals(run.events, SERVED, "peer events");
});

Deno.test("handler crash receives the fd and exits 1 without writing", async () => {
  const run = await runHandler("crash", { request: GET });
  assertEquals(run.response.length, 0, "response length");
  assertEquals(run.code, 1, "exit code");
  assertEquals(run.events, SERVED, "peer events");
});

Deno.test("handler exit exits 3 without connecting", async () => {
  const run = await runHandler("exit", { request: GET, wait: 1 });
  assertEquals(run.response.length, 0, "response length");
  assertEquals(run.code, 3, "exit code");
  assertEquals(run.events, ["accepted", "noconnect", "done"], "peer events");
});

Deno.test("handler noconnect never connects and keeps running", async () => {
  const run = await runHandler("noconnect", { request: GET, wait: 1, runsForever: true });
  assertEquals(run.events, ["accepted", "noconnect", "done"], "peer events");
  assertEquals(run.code, null, "still running when killed");
});

Deno.test("handler hang receives the fd and never answers", async () => {
  const run = await runHandler("hang", { request: GET, wait: 1, runsForever: true });
  assertEquals(run.response.length, 0, "response length");
  assertEquals(run.events, ["accepted", "connected", "sent", "timeout", "done"], "peer events");
  assertEquals(run.code, null, "still running when killed");
});

Deno.test("handler marker answers fresh, then seen once the marker file exists", async () => {
  const dir = await Deno.makeTempDir({ prefix: "faasd-marker-test-" });
  try {
    const env = { FAASD_MARKER: join(dir, "marker") };
    const bodies = [];
    for (let i = 0; i < 2; i++) {
      const res = parseResponse((await runHandler("marker", { request: GET, env })).response);
      assertEquals(res.headers.get("x-marker-write"), "ok", "X-Marker-Write");
      bodies.push(decoder.decode(res.body));
    }
    assertEquals(bodies, ["fresh", "seen"], "bodies");
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
});

Deno.test("handler netprobe reports connected or the errno of a refused connection", async () => {
  const listener = Deno.listen({ hostname: "127.0.0.1", port: 0 });
  const accepting = (async () => {
    for await (const c of listener) c.close();
  })();
  const { port } = listener.addr;
  try {
    const res = parseResponse(
      (await runHandler("netprobe", { request: GET, env: { PROBE_ADDR: `127.0.0.1:${port}` } }))
        .response,
    );
    assertEquals(decoder.decode(res.body), "connected", "body");
    assert((res.headers.get("x-interfaces") ?? "").split(",").includes("lo"), "X-Interfaces lists lo");
  } finally {
    listener.close();
    await accepting.catch(() => {});
  }
  // The port is closed now: nothing listens there any more.
  const res = parseResponse(
    (await runHandler("netprobe", { request: GET, env: { PROBE_ADDR: `127.0.0.1:${port}` } }))
      .response,
  );
  assertEquals(decoder.decode(res.body), "blocked: ECONNREFUSED", "body");
  const unset = parseResponse((await runHandler("netprobe", { request: GET })).response);
  assertEquals(decoder.decode(unset.body), "error: PROBE_ADDR not set", "body without PROBE_ADDR");
});

Deno.test("handler echo-env answers argv, cwd and env as JSON", async () => {
  const cwd = await Deno.makeTempDir({ prefix: "faasd-echo-env-test-" });
  try {
    const run = await runHandler("echo-env", {
      request: GET,
      args: ["extra"],
      env: { GREETING: 'a "quoted"\tvalue' },
      cwd,
    });
    const res = parseResponse(run.response);
    assertEquals(res.headers.get("content-type"), "application/json", "Content-Type");
    const info = JSON.parse(decoder.decode(res.body));
    assertEquals(info.argv.slice(1), ["echo-env", "extra"], "argv");
    assertEquals(info.cwd, await Deno.realPath(cwd), "cwd");
    assertEquals(info.env.GREETING, 'a "quoted"\tvalue', "env.GREETING");
    assert(typeof info.pid === "number" && typeof info.hostname === "string", "pid and hostname");
  } finally {
    await Deno.remove(cwd, { recursive: true });
  }
});

Deno.test("handler big delivers a 1 MiB body completely", async () => {
  const run = await runHandler("big", { request: GET });
  assertEquals(run.readError, undefined, "read error");
  const res = parseResponse(run.response);
  assertEquals(res.body.length, 1024 * 1024, "body length");
  for (let i = 0; i < res.body.length; i++) {
    if (res.body[i] !== 97 + i % 26) throw new Error(`body byte ${i} is ${res.body[i]}`);
  }
  const small = parseResponse((await runHandler("big", { request: GET, args: ["10"] })).response);
  assertEquals(decoder.decode(small.body), "abcdefghij", "body of big 10");
});

Deno.test("handler echo answers the request head and body verbatim", async () => {
  const body = "0123456789".repeat(20_000);
  const request = `POST /upload HTTP/1.1\r\nHost: test\r\ncontent-length: ${body.length}\r\n\r\n${body}`;
  const run = await runHandler("echo", { request });
  const res = parseResponse(run.response);
  assertEquals(res.body.length, request.length, "echoed length");
  assert(decoder.decode(res.body) === request, "echoed bytes differ from the request");
  assertEquals(run.events, SERVED, "peer events");
});

Deno.test("handler sleep answers after the given delay", async () => {
  const res = parseResponse((await runHandler("sleep", { request: GET, args: ["20"] })).response);
  assertEquals(decoder.decode(res.body), "slept\n", "body");
});

Deno.test("handler exits 2 for an unknown mode", async () => {
  const run = await runHandler("no-such-mode", { wait: 1 });
  assertEquals(run.code, 2, "exit code");
  assert(run.stderr.includes("unknown mode"), `stderr ${run.stderr}`);
});
