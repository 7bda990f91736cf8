/**
 * faasd-adapter (adapter/faasd-adapter.c) on the host, without containerd: each test starts the adapter with a real
 * server command (Python, see adapter/testdata/peers.py), plays faasd's part (a Unix listener as the control socket,
 * a real client TCP socket handed over by SCM_RIGHTS through ffi/socket.ts), and checks what reaches the client,
 * what the adapter says on failure, and that the server is gone afterwards.
 *
 * The binary is built by `deno task gen` (.tools/bin/faasd-adapter); this file compiles nothing.
 */

import { untilListening, within } from "./harness/wait.ts";
import { createHash } from "node:crypto";
import { assert, assertEquals, assertMatch, assertStringIncludes } from "./assert.ts";
import { Poller } from "../ffi/epoll.ts";
import { TcpListener, UnixConn, UnixListener } from "../ffi/socket.ts";

const ROOT = new URL("..", import.meta.url).pathname;
const ADAPTER = `${ROOT}.tools/bin/faasd-adapter`;
const PEERS = `${ROOT}adapter/testdata/peers.py`;
const MIB = 1 << 20;
const BIG = 100 * MIB;
const encoder = new TextEncoder();
const decoder = new TextDecoder();
/** The interpreter itself: a version manager's shim would add ~0.3 s to every start. */
const PYTHON = await realPython();

async function realPython(): Promise<string> {
  const { code, stdout } = await new Deno.Command("python3", { args: ["-c", "import sys; print(sys.executable)"] })
    .output();
  assertEquals(code, 0, "python3 is needed");
  return decoder.decode(stdout).trim();
}

function adapterBuilt(): void {
  try {
    Deno.statSync(ADAPTER);
  } catch (e) {
    throw new Error(`${ADAPTER} is missing: run deno task gen`, { cause: e });
  }
}

/** A TCP port that was free a moment ago. */
function freePort(): number {
  using l = TcpListener.bind("127.0.0.1", 0);
  return l.address.port;
}

function processExists(pid: number): boolean {
  try {
    // A zombie has a status file too; it counts as gone (nothing runs).
    return !/^State:\s+Z/m.test(Deno.readTextFileSync(`/proc/${pid}/status`));
  } catch (e) {
    if (e instanceof Deno.errors.NotFound) return false;
    throw e;
  }
}

/** The adapter's peak resident memory in KiB (VmHWM), or undefined once it is gone. */
function peakRssKiB(pid: number): number | undefined {
  try {
    const match = /^VmHWM:\s+(\d+) kB/m.exec(Deno.readTextFileSync(`/proc/${pid}/status`));
    return match ? Number(match[1]) : undefined;
  } catch {
    return undefined;
  }
}

/** What the adapter did, once it exited. */
interface Outcome {
  code: number;
  stdout: string;
  stderr: string;
  /** Milliseconds from start to exit. */
  elapsedMs: number;
}

/** One adapter process with its control socket and server; disposing stops whatever still runs. */
class AdapterRun implements AsyncDisposable {
  readonly dir: string;
  readonly control: UnixListener;
  readonly poller = new Poller();
  readonly child: Deno.ChildProcess;
  readonly started = performance.now();
  readonly #output: Promise<Deno.CommandOutput>;
  #outcome: Outcome | undefined;

  constructor(args: string[]) {
    adapterBuilt();
    this.dir = Deno.makeTempDirSync({ prefix: "faasd-adapter-test-" });
    this.control = UnixListener.bind(`${this.dir}/control.sock`);
    this.child = new Deno.Command(ADAPTER, {
      args: ["--control", this.control.path, ...args],
      env: { PIDFILE: `${this.dir}/server.pid` },
      stdin: "null",
      stdout: "piped",
      stderr: "piped",
    }).spawn();
    this.#output = this.child.output();
  }

  /** The server's pid (written by the shell that execs it: read it once the server ran). */
  serverPid(): number {
    return Number(Deno.readTextFileSync(`${this.dir}/server.pid`));
  }

  /** Waits for the adapter's control connection (it comes once the server listens). */
  async controlConnection(timeoutMs = 10_000): Promise<UnixConn> {
    assertEquals(await this.poller.wait(this.control.fd, "read", { timeoutMs }), "ready", "no control connection");
    const conn = this.control.accept();
    assert(conn, "control connection vanished");
    return conn;
  }

  /** Plays faasd: accepts `client`'s connection on `listener` and hands it to the adapter, keeping no copy. */
  async handOff(listener: TcpListener): Promise<void> {
    using control = await this.controlConnection();
    assertEquals(await this.poller.wait(listener.fd, "read", { timeoutMs: 10_000 }), "ready", "client never came");
    using accepted = listener.accept();
    assert(accepted);
    control.sendFd(accepted.fd);
  }

  /** A client connection, already handed to the adapter. */
  async connectClient(): Promise<Deno.TcpConn> {
    using listener = TcpListener.bind("127.0.0.1", 0);
    const client = await Deno.connect({ hostname: "127.0.0.1", port: listener.address.port });
    try {
      await this.handOff(listener);
    } catch (e) {
      client.close();
      throw e;
    }
    return client;
  }

  async exited(timeoutMs = 10_000): Promise<Outcome> {
    if (this.#outcome) return this.#outcome;
    const { code, stdout, stderr } = await within(timeoutMs, "adapter exit", this.#output);
    const elapsedMs = performance.now() - this.started;
    this.#outcome = { code, stdout: decoder.decode(stdout), stderr: decoder.decode(stderr), elapsedMs };
    return this.#outcome;
  }

  async [Symbol.asyncDispose](): Promise<void> {
    if (!this.#outcome) {
      // SIGTERM first: the adapter then stops its server itself.
      try {
        this.child.kill("SIGTERM");
        await within(3000, "adapter exit after SIGTERM", this.child.status);
      } catch {
        this.child.kill("SIGKILL");
      }
    }
    try {
      const pid = this.serverPid();
      if (processExists(pid)) Deno.kill(pid, "SIGKILL");
    } catch {
      // no pid file (the server never started), or it is gone
    }
    await this.#output;
    await this.poller.close();
    this.control.close();
    Deno.removeSync(this.dir, { recursive: true });
  }
}

/**
 * Starts the adapter with `server` as its command, run through a shell that records the server's pid and sends its
 * output to a file: a server the adapter failed to stop must not hold the adapter's output pipes open.
 */
function startAdapter(port: number, server: string[], readyTimeoutMs = 30_000): AdapterRun {
  const recordPid = ["sh", "-c", 'echo $$ > "$PIDFILE" && exec "$@" > "$PIDFILE.log" 2>&1', "sh"];
  return new AdapterRun([
    "--port",
    `${port}`,
    "--ready-timeout-ms",
    `${readyTimeoutMs}`,
    "--",
    ...recordPid,
    ...server,
  ]);
}

function peer(mode: string, port: number, arg?: string): string[] {
  return [PYTHON, PEERS, "serve", mode, `${port}`, ...(arg === undefined ? [] : [arg])];
}

/** Runs a peers.py server directly, for baselines. */
async function startDirect(mode: string, arg?: string): Promise<AsyncDisposable & { port: number }> {
  const port = freePort();
  const [command, ...args] = peer(mode, port, arg);
  const child = new Deno.Command(command!, { args, stdin: "null" }).spawn();
  await untilListening(port);
  return {
    port,
    async [Symbol.asyncDispose]() {
      child.kill("SIGKILL");
      await child.status;
    },
  };
}

async function writeAll(conn: Deno.Conn, bytes: Uint8Array): Promise<void> {
  for (let off = 0; off < bytes.length;) off += await conn.write(bytes.subarray(off));
}

async function readAll(conn: Deno.Conn): Promise<Uint8Array> {
  const chunks: Uint8Array[] = [];
  const buffer = new Uint8Array(64 * 1024);
  for (;;) {
    const n = await conn.read(buffer);
    if (n === null) break;
    chunks.push(buffer.slice(0, n));
  }
  const all = new Uint8Array(chunks.reduce((sum, c) => sum + c.length, 0));
  let off = 0;
  for (const c of chunks) {
    all.set(c, off);
    off += c.length;
  }
  return all;
}

/** Reads one "\n"-terminated line (bytes after it in the same read are returned as `rest`). */
async function readLine(conn: Deno.Conn, buffer: Uint8Array): Promise<{ line: string; rest: Uint8Array }> {
  let got = new Uint8Array(0);
  for (;;) {
    const newline = got.indexOf(10);
    if (newline >= 0) return { line: decoder.decode(got.subarray(0, newline)), rest: got.slice(newline + 1) };
    const n = await conn.read(buffer);
    if (n === null) throw new Error(`end of stream before a line; got ${JSON.stringify(decoder.decode(got))}`);
    const joined = new Uint8Array(got.length + n);
    joined.set(got);
    joined.set(buffer.subarray(0, n), got.length);
    got = joined;
  }
}

/** Uploads `size` bytes of numbered random blocks to a sha256 server, returns [our digest, its answer, MB/s]. */
async function upload(conn: Deno.TcpConn, size: number): Promise<[string, string, number]> {
  const block = new Uint8Array(MIB);
  for (let off = 0; off < MIB; off += 65536) crypto.getRandomValues(block.subarray(off, off + 65536));
  const hash = createHash("sha256");
  const t0 = performance.now();
  for (let i = 0; i < size / MIB; i++) {
    new DataView(block.buffer).setUint32(0, i);
    hash.update(block);
    await writeAll(conn, block);
  }
  await conn.closeWrite();
  const { line } = await readLine(conn, new Uint8Array(256));
  const rate = size / MIB / ((performance.now() - t0) / 1000);
  assertEquals(await conn.read(new Uint8Array(1)), null, "the server closes after answering");
  return [hash.digest("hex"), line, rate];
}

/** Downloads from a download server: returns [its announced digest, ours, bytes, MB/s]. */
async function download(conn: Deno.TcpConn): Promise<[string, string, number, number]> {
  const t0 = performance.now();
  await writeAll(conn, encoder.encode("GET\n"));
  const buffer = new Uint8Array(MIB);
  const { line, rest } = await readLine(conn, buffer);
  const hash = createHash("sha256").update(rest);
  let bytes = rest.length;
  for (;;) {
    const n = await conn.read(buffer);
    if (n === null) break;
    hash.update(buffer.subarray(0, n));
    bytes += n;
  }
  return [line, hash.digest("hex"), bytes, bytes / MIB / ((performance.now() - t0) / 1000)];
}

Deno.test("adapter: a GET through python3 -m http.server answers 200 with the file", async () => {
  const port = freePort();
  const site = Deno.makeTempDirSync({ prefix: "faasd-adapter-site-" });
  try {
    Deno.writeTextFileSync(`${site}/hello.txt`, "hello through the adapter\n");
    await using run = startAdapter(port, [
      PYTHON,
      "-m",
      "http.server",
      `${port}`,
      "--bind",
      "127.0.0.1",
      "--directory",
      site,
    ]);
    using client = await run.connectClient();
    await writeAll(client, encoder.encode("GET /hello.txt HTTP/1.1\r\nHost: fn\r\nConnection: close\r\n\r\n"));
    const response = decoder.decode(await within(10_000, "response", readAll(client)));
    assertMatch(response, /^HTTP\/1\.[01] 200 OK\r\n/);
    assert(response.endsWith("\r\n\r\nhello through the adapter\n"), response);
    client.close();
    const outcome = await run.exited();
    assertEquals(outcome.code, 0, outcome.stderr);
  } finally {
    Deno.removeSync(site, { recursive: true });
  }
});

Deno.test("adapter: a 100 MB upload arrives intact, with the adapter's memory bounded", async () => {
  let direct: number;
  {
    await using server = await startDirect("sha256");
    using conn = await Deno.connect({ hostname: "127.0.0.1", port: server.port });
    const [ours, theirs, rate] = await within(30_000, "direct upload", upload(conn, BIG));
    assertEquals(theirs, ours);
    direct = rate;
  }
  const port = freePort();
  await using run = startAdapter(port, peer("sha256", port));
  using client = await run.connectClient();
  let peakKiB = 0;
  const sampler = setInterval(() => peakKiB = Math.max(peakKiB, peakRssKiB(run.child.pid) ?? 0), 20);
  try {
    const [ours, theirs, rate] = await within(30_000, "upload through the adapter", upload(client, BIG));
    peakKiB = Math.max(peakKiB, peakRssKiB(run.child.pid) ?? 0);
    assertEquals(theirs, ours, "digest at the server");
    console.log(
      `upload 100 MB: relayed ${rate.toFixed(0)} MB/s, direct ${direct.toFixed(0)} MB/s; peak RSS ${peakKiB} KiB`,
    );
  } finally {
    clearInterval(sampler);
  }
  assert(peakKiB > 0, "VmHWM never read");
  assert(peakKiB < 16 * 1024, `adapter VmHWM ${peakKiB} KiB`);
  client.close();
  const outcome = await run.exited();
  assertEquals(outcome.code, 0, outcome.stderr);
});

Deno.test("adapter: a 100 MB download arrives intact", async () => {
  let direct: number;
  {
    await using server = await startDirect("download", `${BIG}`);
    using conn = await Deno.connect({ hostname: "127.0.0.1", port: server.port });
    const [announced, ours, bytes, rate] = await within(30_000, "direct download", download(conn));
    assertEquals([bytes, ours], [BIG, announced]);
    direct = rate;
  }
  const port = freePort();
  await using run = startAdapter(port, peer("download", port, `${BIG}`));
  using client = await run.connectClient();
  const [announced, ours, bytes, rate] = await within(30_000, "download through the adapter", download(client));
  assertEquals([bytes, ours], [BIG, announced]);
  console.log(`download 100 MB: relayed ${rate.toFixed(0)} MB/s, direct ${direct.toFixed(0)} MB/s`);
  client.close();
  const outcome = await run.exited();
  assertEquals(outcome.code, 0, outcome.stderr);
});

Deno.test("adapter: a half-close reaches the server, and its answer after EOF reaches the client", async () => {
  const port = freePort();
  await using run = startAdapter(port, peer("halfclose", port));
  using client = await run.connectClient();
  const request = encoder.encode("a request the server reads to its end\n".repeat(5000));
  await writeAll(client, request);
  await client.closeWrite();
  const answer = await within(10_000, "answer after half-close", readAll(client));
  const newline = answer.indexOf(10);
  const digest = createHash("sha256").update(request).digest("hex");
  assertEquals(decoder.decode(answer.subarray(0, newline)), `got ${request.length} bytes, sha256 ${digest}`);
  assertEquals(answer.length - newline - 1, MIB);
  assert(answer.subarray(newline + 1).every((b) => b === 46), "body is all dots");
  const outcome = await run.exited();
  assertEquals(outcome.code, 0, outcome.stderr);
});

Deno.test("adapter: 200 round trips of a line echoed back, then a clean end", async () => {
  const port = freePort();
  await using run = startAdapter(port, peer("echo", port));
  using client = await run.connectClient();
  const buffer = new Uint8Array(4096);
  const t0 = performance.now();
  for (let i = 0; i < 200; i++) {
    const line = `message ${i} ${"x".repeat(i * 7)}`;
    await writeAll(client, encoder.encode(`${line}\n`));
    const echoed = await within(5000, `echo ${i}`, readLine(client, buffer));
    assertEquals([echoed.line, echoed.rest.length], [line, 0]);
  }
  console.log(`echo: 200 round trips through the adapter in ${(performance.now() - t0).toFixed(0)} ms`);
  await client.closeWrite();
  assertEquals(await within(5000, "end of stream", client.read(buffer)), null);
  const outcome = await run.exited();
  assertEquals(outcome.code, 0, outcome.stderr);
});

/** The adapter's children and whether each is a zombie. */
function childrenOf(pid: number): { pid: number; zombie: boolean }[] {
  const text = Deno.readTextFileSync(`/proc/${pid}/task/${pid}/children`).trim();
  return text === "" ? [] : text.split(" ").map(Number).map((child) => ({ pid: child, zombie: !processExists(child) }));
}

Deno.test("adapter: orphans the server leaves behind are reaped while the relay runs", async () => {
  const port = freePort();
  // The double fork orphans the waiting loop: it comes to the adapter (PID 1 in a container, a subreaper here).
  const orphan = ["sh", "-c", '( (until [ -e "$PIDFILE.go" ]; do sleep 0.02; done) & ); exec "$@"', "sh"];
  await using run = startAdapter(port, [...orphan, ...peer("echo", port)]);
  using client = await run.connectClient();
  const server = run.serverPid();
  const before = childrenOf(run.child.pid);
  assertEquals(before.length, 2, `children ${JSON.stringify(before)}`);
  assert(before.every((c) => !c.zombie) && before.some((c) => c.pid === server), JSON.stringify(before));
  Deno.writeTextFileSync(`${run.dir}/server.pid.go`, "");
  let after = before;
  for (let i = 0; i < 150 && after.length > 1; i++) {
    await new Promise((r) => setTimeout(r, 20));
    after = childrenOf(run.child.pid);
  }
  assertEquals(after, [{ pid: server, zombie: false }], "the orphan was not reaped");
  await writeAll(client, encoder.encode("still relaying\n"));
  assertEquals((await within(5000, "echo", readLine(client, new Uint8Array(64)))).line, "still relaying");
  await client.closeWrite();
  assertEquals(await within(5000, "end of stream", client.read(new Uint8Array(1))), null);
  assertEquals((await run.exited()).code, 0);
});

Deno.test("adapter: a server that exits before listening fails fast, without touching the control socket", async () => {
  const port = freePort();
  {
    // Without the pid-recording shell, to see the server's output come out of the adapter's.
    await using run = new AdapterRun(["--port", `${port}`, "--", "sh", "-c", "echo starting; echo oops >&2; exit 3"]);
    const outcome = await run.exited();
    assertEquals([outcome.code, outcome.stdout], [1, "starting\n"]);
    assertStringIncludes(outcome.stderr, "oops\n");
    assertStringIncludes(
      outcome.stderr,
      `faasd-adapter: the server exited with status 3 before listening on 127.0.0.1:${port}\n`,
    );
    assert(outcome.elapsedMs < 5000, `took ${outcome.elapsedMs} ms with a 30 s ready timeout`);
    assertEquals(run.control.accept(), null, "the adapter connected to the control socket");
  }
  {
    // Without the pid-recording shell: the adapter's own execvp fails.
    await using run = new AdapterRun(["--port", `${port}`, "--", "/nonexistent/server"]);
    const outcome = await run.exited();
    assertEquals(outcome.code, 1);
    assertStringIncludes(outcome.stderr, "cannot run /nonexistent/server: No such file or directory");
    assertStringIncludes(outcome.stderr, "the server exited with status 127 before listening");
    assertEquals(run.control.accept(), null);
  }
});

Deno.test("adapter: a server listening on the wrong port fails after the ready timeout and is stopped", async () => {
  const port = freePort();
  await using run = startAdapter(port, peer("echo", freePort()), 500);
  const outcome = await run.exited();
  assertEquals(outcome.code, 1);
  assertStringIncludes(outcome.stderr, `faasd-adapter: the server did not listen on 127.0.0.1:${port} within 500 ms\n`);
  assert(outcome.elapsedMs >= 500, `gave up after ${outcome.elapsedMs} ms`);
  assertEquals(run.control.accept(), null, "the adapter connected to the control socket");
  assert(!processExists(run.serverPid()), "the server still runs");
});

for (const how of ["download", "upload", "idle"] as const) {
  const detail = {
    download: "while the server streams to it",
    upload: "while it uploads",
    idle: "after a half-close, while a server that ignores SIGTERM thinks",
  }[how];
  Deno.test(`adapter: a client that resets ${detail} ends the relay promptly and the server is gone`, async () => {
    const port = freePort();
    const server = {
      download: peer("download", port, `${2 ** 40}`),
      upload: peer("sha256", port),
      idle: peer("slow", port, "30"),
    }[how];
    await using run = startAdapter(port, server);
    using listener = TcpListener.bind("127.0.0.1", 0);
    const client = new Deno.Command(PYTHON, {
      args: [PEERS, "reset-client", `${listener.address.port}`, how],
      stdout: "piped",
    }).output();
    await run.handOff(listener);
    const { code, stdout } = await within(10_000, "reset client", client);
    assertEquals([code, decoder.decode(stdout)], [0, "reset\n"]);
    const reset = performance.now();
    const outcome = await run.exited(5000);
    const afterReset = performance.now() - reset;
    assert(afterReset < 3000, `adapter exited ${afterReset.toFixed(0)} ms after the reset`);
    assertEquals(outcome.code, 1, outcome.stderr);
    // A reset after the client's FIN reads as EPIPE: the kernel reports it so in CLOSE_WAIT.
    assertMatch(outcome.stderr, /^faasd-adapter: relay: .*client.*: (Connection reset by peer|Broken pipe)\n/m);
    assert(!processExists(run.serverPid()), "the server still runs");
  });
}

Deno.test("adapter: a server that answers and closes without reading the upload still gets its answer out", async () => {
  const port = freePort();
  await using run = startAdapter(port, peer("early", port));
  using client = await run.connectClient();
  // The upload outlasts the server's interest: the adapter's writes to it fail, and it stops reading the client.
  const uploading = writeAll(client, new Uint8Array(16 * MIB).fill(10)).then(() => "done", (e) => e.name);
  const received: number[] = [];
  const buffer = new Uint8Array(4096);
  const ended = await within(
    10_000,
    "answer",
    (async () => {
      for (;;) {
        const n = await client.read(buffer).catch((e) => e.name as string);
        if (typeof n === "string" || n === null) return n ?? "eof";
        received.push(...buffer.subarray(0, n));
      }
    })(),
  );
  assertEquals(decoder.decode(new Uint8Array(received)), "early answer\n", `then ${ended}`);
  const outcome = await run.exited();
  assertMatch(outcome.stderr, /faasd-adapter: relay: .*server/, "the failed write to the server is reported");
  assertEquals(outcome.code, 1);
  client.close();
  // However the pending upload ends: written, refused by the peer, or cut short by our own close (Interrupted).
  const upload = await uploading;
  assert(["done", "ConnectionReset", "BrokenPipe", "BadResource", "Interrupted"].includes(upload), upload);
});

Deno.test("adapter: a control socket that hangs up without a descriptor stops the server, exit 1", async () => {
  const port = freePort();
  await using run = startAdapter(port, peer("echo", port));
  (await run.controlConnection()).close();
  const outcome = await run.exited();
  assertEquals(outcome.code, 1);
  assertStringIncludes(outcome.stderr, "faasd-adapter: the control socket closed without passing a client socket\n");
  assert(!processExists(run.serverPid()), "the server still runs");
});

Deno.test("adapter: a server that dies while waiting for a connection hangs up the control socket", async () => {
  const port = freePort();
  const script = `import socket,time; s=socket.socket(); s.bind(("127.0.0.1",${port})); s.listen(); time.sleep(0.3)`;
  await using run = startAdapter(port, [PYTHON, "-c", script]);
  using control = await run.controlConnection();
  const outcome = await run.exited();
  assertEquals(outcome.code, 1);
  assertStringIncludes(outcome.stderr, "faasd-adapter: the server exited with status 0 before a connection arrived\n");
  assertEquals(await run.poller.wait(control.fd, "read", { timeoutMs: 1000 }), "ready", "control not hung up");
});

Deno.test("adapter: SIGTERM while waiting stops the server and exits 143", async () => {
  const port = freePort();
  await using run = startAdapter(port, peer("slow", port, "30"));
  using _control = await run.controlConnection();
  run.child.kill("SIGTERM");
  const outcome = await run.exited();
  assertEquals(outcome.code, 143, outcome.stderr);
  assert(!processExists(run.serverPid()), "the server (which ignores SIGTERM) still runs");
});

Deno.test("adapter: usage errors exit 2", async () => {
  adapterBuilt();
  const cases = [
    [],
    ["--port"],
    ["--", "true"],
    ["--port", "0", "--", "true"],
    ["--port", "65536", "--", "true"],
    ["--port", "80x", "--", "true"],
    ["--port", "8080"],
    ["--port", "8080", "--"],
    ["--port", "8080", "--ready-timeout-ms", "0", "--", "true"],
    ["--port", "8080", "--verbose", "1", "--", "true"],
    ["--help"],
  ];
  for (const args of cases) {
    const { code, stderr } = await new Deno.Command(ADAPTER, { args, stdin: "null", stdout: "null" }).output();
    const message = decoder.decode(stderr);
    assertEquals(code, 2, `${JSON.stringify(args)}: ${message}`);
    assertMatch(message, /^faasd-adapter: .+\nusage: faasd-adapter --port PORT/, JSON.stringify(args));
  }
});
