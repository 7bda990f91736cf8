/**
 * The server's answers without containerd: a real {@linkcode Server} on a loopback address, its containers stand-ins
 * that receive the client socket the way a container does (`SCM_RIGHTS` over a Unix socket) and then answer through
 * it, stay silent, hang, or are found dead at the handoff.
 *
 * @module
 */

import { assert, assertEquals, assertStringIncludes } from "../../tests/assert.ts";
import { deployedImage } from "../../tests/fixtures/deployed.ts";
import { waitUntil, within } from "../../tests/harness/wait.ts";
import { Poller } from "../../ffi/epoll.ts";
import { TcpConn, UnixConn, UnixListener } from "../../ffi/socket.ts";
import { configureLog } from "../log.ts";
import { Metrics } from "../metrics.ts";
import type { FunctionRecord } from "../registry.ts";
import { BREAKER_FAILURES } from "./pool.ts";
import { type Outcome, type ServedContainer, Server, type ServerOptions } from "./server.ts";

/** What a stand-in's handler does with the client socket it received; it "exits" when this settles. */
type Behaviour = (client: TcpConn, stand: Stand) => unknown;

const encoder = new TextEncoder();

/**
 * A random loopback address in the range tests/harness/platform.ts's `loopbackPool()` draws from, so that tests never
 * share one. (Not imported from there: that module pulls in the whole platform, which a unit test does not need.)
 */
function loopbackAddress(): string {
  const [a, b] = crypto.getRandomValues(new Uint8Array(2));
  return `127.${100 + (a! % 150)}.${b}.10`;
}

/** A TCP port free on `ip` a moment ago. */
function freePort(ip: string): number {
  const l = Deno.listen({ hostname: ip, port: 0 });
  const port = (l.addr as Deno.NetAddr).port;
  l.close();
  return port;
}

/** A handler that answers 200 with `body`. */
function answers(body: string): Behaviour {
  return (client) => {
    client.write(
      encoder.encode(`HTTP/1.1 200 OK\r\nContent-Length: ${body.length}\r\nConnection: close\r\n\r\n${body}`),
    );
  };
}

/** A handler that exits without writing a byte. */
const silent: Behaviour = () => {};

/** A handler that runs until it is killed. */
const hangs: Behaviour = (_client, stand) => stand.exited;

/**
 * A stand-in container. Its control connection is a real Unix socket pair, so the handoff is the production one
 * (`sendFd`, EPIPE once the container's end is gone), and the handler side writes to the received descriptor.
 */
class Stand implements ServedContainer {
  readonly id: string;
  readonly function: string;
  readonly timeoutMs: number;
  killed = false;
  removed = false;
  readonly #behaviour: Behaviour;
  readonly #exited = Promise.withResolvers<void>();
  readonly #connected = Promise.withResolvers<void>();
  readonly #listener: UnixListener;
  /** faasd's end of the control connection. */
  readonly #control: UnixConn;
  /** The container's end. */
  readonly #inside: UnixConn;
  #client: TcpConn | null = null;

  constructor(dir: string, fn: string, n: number, timeoutMs: number, behaviour: Behaviour) {
    this.id = `c${n}`;
    this.function = fn;
    this.timeoutMs = timeoutMs;
    this.#behaviour = behaviour;
    this.#listener = UnixListener.bind(`${dir}/${this.id}.sock`);
    this.#inside = UnixConn.connect(this.#listener.path);
    this.#control = this.#listener.accept()!;
  }

  /** Settles when its handler has exited (or it was killed or removed). */
  get exited(): Promise<void> {
    return this.#exited.promise;
  }

  /** Lets {@linkcode waitConnected} answer "connected". */
  connect(): void {
    this.#connected.resolve();
  }

  /** Its process died unnoticed: the next handoff fails with EPIPE. */
  breakControl(): void {
    this.#inside.close();
  }

  waitConnected(_timeoutMs: number, signal?: AbortSignal): Promise<"connected"> {
    const aborted = new Promise<never>((_, reject) => {
      if (signal?.aborted) reject(signal.reason);
      signal?.addEventListener("abort", () => reject(signal.reason), { once: true });
    });
    return Promise.race([this.#connected.promise.then(() => "connected" as const), aborted]);
  }

  lost(signal: AbortSignal): Promise<void> {
    const stopped = new Promise<void>((resolve) => signal.addEventListener("abort", () => resolve(), { once: true }));
    return Promise.race([this.exited, stopped]);
  }

  handoff(fd: number): void {
    this.#control.sendFd(fd);
    const received = this.#inside.recvFd();
    assert(received, "the handed-over socket arrives with the message");
    this.#client = new TcpConn(received.fd);
    this.#control.close();
    const client = this.#client;
    Promise.resolve().then(() => this.#behaviour(client, this)).finally(() => this.#exit());
  }

  kill(): Promise<void> {
    this.killed = true;
    this.#exit();
    return Promise.resolve();
  }

  remove(): Promise<void> {
    this.removed = true;
    this.#exit();
    this.#control.close();
    this.#inside.close();
    this.#listener.close();
    return Promise.resolve();
  }

  #exit(): void {
    this.#client?.close();
    this.#exited.resolve();
  }
}

/** What a test server is built with. */
interface Setup {
  pool?: Partial<ServerOptions["pool"]>;
  minReady?: number;
  /** The handler of the n-th container started. */
  behaviour?: (n: number) => Behaviour;
  /** How long each container may serve. */
  timeoutMs?: number;
  /** Whether containers connect as soon as started (else the test calls `connect()`). */
  autoConnect?: boolean;
  /** Whether the n-th container's control connection is already gone when it is handed a client. */
  broken?: (n: number) => boolean;
  /** Whether starts fail from the beginning (see {@linkcode TestServer.failStarts}). */
  failStarts?: boolean;
}

const POOL: ServerOptions["pool"] = {
  connectTimeoutMs: 5000,
  maxConcurrency: 8,
  maxStarting: 4,
  poolMax: 16,
  maxContainers: 32,
  idleMs: 60_000,
  maxAgeMs: 600_000,
  queueTimeoutMs: 5000,
  maxQueue: 16,
  headerTimeoutMs: 5000,
  shimGroupSize: 0,
};

/** A client's view of one exchange: the status (0: closed without an answer) and the body. */
interface Reply {
  status: number;
  body: string;
}

/**
 * What each open descriptor of this process refers to (`fd → socket:[inode]`, …). FFI sockets are no Deno
 * resources, so the test sanitizers do not see them; comparing these before and after a test does. (The process runs
 * one test at a time: `deno test` without `--parallel`.)
 */
function openFds(): Set<string> {
  const fds = new Set<string>();
  for (const entry of Deno.readDirSync("/proc/self/fd")) {
    try {
      fds.add(`${entry.name} → ${Deno.readLinkSync(`/proc/self/fd/${entry.name}`)}`);
    } catch {
      // closed meanwhile (the directory listing's own descriptor, for one)
    }
  }
  return fds;
}

/** A Server for function `f` on a fresh loopback address, with stand-in containers. */
class TestServer implements AsyncDisposable {
  readonly server: Server;
  readonly stands: Stand[] = [];
  readonly outcomes: Outcome[] = [];
  /** While set, every start fails as an image that cannot run would. */
  failStarts: boolean;
  /** Starts that failed so far. */
  failedStarts = 0;
  readonly record: FunctionRecord;
  readonly port: number;
  readonly #poller: Poller;
  readonly #dir: string;
  readonly #restoreLog: () => void;
  /** Descriptors open before the server and its poller were made. */
  readonly #fdsBefore: Set<string>;
  #closed: Promise<void> | null = null;

  constructor(dir: string, setup: Setup) {
    this.#fdsBefore = openFds();
    this.#dir = dir;
    this.#poller = new Poller();
    this.failStarts = setup.failStarts ?? false;
    this.#restoreLog = configureLog({ format: "json", level: "error", write: () => {} });
    const ip = loopbackAddress();
    this.port = freePort(ip);
    this.record = {
      name: "f",
      ip,
      status: "active",
      imageRef: "img:1",
      image: deployedImage("img:1"),
      settings: {},
      createdAt: "",
      updatedAt: "",
    };
    const start = (record: FunctionRecord, signal: AbortSignal): Promise<Stand> => {
      signal.throwIfAborted();
      if (this.failStarts) {
        this.failedStarts++;
        return Promise.reject(new Error("the image cannot run"));
      }
      const n = this.stands.length;
      const stand = new Stand(dir, record.name, n, setup.timeoutMs ?? 5000, setup.behaviour?.(n) ?? answers(`c${n}`));
      this.stands.push(stand);
      if (setup.broken?.(n)) stand.breakControl();
      if (setup.autoConnect ?? true) stand.connect();
      return Promise.resolve(stand);
    };
    this.server = new Server({
      poller: this.#poller,
      metrics: new Metrics(),
      port: this.port,
      pool: { ...POOL, ...setup.pool },
      sizing: () => ({ minReady: setup.minReady ?? 0, maxReady: 8 }),
      socketMark: null,
      start,
      onRequest: (_fn, outcome) => this.outcomes.push(outcome),
    });
    this.server.serve(this.record);
  }

  static async create(setup: Setup = {}): Promise<TestServer> {
    return new TestServer(await Deno.makeTempDir({ prefix: "faasd-server-test-" }), setup);
  }

  /** Connects, sends `request` (nothing when empty), reads until the server closes, and closes. */
  async request(request = "GET / HTTP/1.1\r\nHost: f\r\n\r\n"): Promise<Reply> {
    const conn = await Deno.connect({ hostname: this.record.ip, port: this.port });
    try {
      if (request) await conn.write(encoder.encode(request));
      const chunks: Uint8Array[] = [];
      const buffer = new Uint8Array(4096);
      for (let n; (n = await within(10_000, "the answer", conn.read(buffer))) !== null;) {
        chunks.push(buffer.slice(0, n));
      }
      const text = new TextDecoder().decode(new Uint8Array(chunks.flatMap((c) => [...c])));
      const status = Number(/^HTTP\/1\.1 (\d{3}) /.exec(text)?.[1] ?? 0);
      return { status, body: text.slice(text.indexOf("\r\n\r\n") + 4).trim() };
    } finally {
      conn.close();
    }
  }

  /** Stops the server (waiting `graceMs` for connections in progress); idempotent. */
  close(graceMs = 0): Promise<void> {
    return this.#closed ??= this.server.close(graceMs);
  }

  async [Symbol.asyncDispose](): Promise<void> {
    try {
      await this.close();
      for (const s of this.stands) await s.remove();
      await this.#poller[Symbol.asyncDispose]();
      assertEquals([...openFds()].filter((fd) => !this.#fdsBefore.has(fd)), [], "every descriptor is closed");
    } finally {
      this.#restoreLog();
      await Deno.remove(this.#dir, { recursive: true });
    }
  }
}

/** A gate handlers wait behind until the test opens it. */
function gate(): { open: () => void; handler: Behaviour } {
  const opened = Promise.withResolvers<void>();
  const answer = answers("late");
  return {
    open: () => opened.resolve(),
    handler: async (client, stand) => {
      await opened.promise;
      answer(client, stand);
    },
  };
}

Deno.test("Server answers through the container that got the connection, and removes it after", async () => {
  await using t = await TestServer.create();
  assertEquals(await t.request(), { status: 200, body: "c0" });
  assertEquals(t.outcomes, ["ok"]);
  assert(await waitUntil(() => t.stands[0]!.removed, 5000), "a served container is removed, never reused");
});

Deno.test("Server answers 502 when the container exits having sent nothing", async () => {
  await using t = await TestServer.create({ behaviour: () => silent });
  const reply = await t.request();
  assertEquals(reply.status, 502);
  assertStringIncludes(reply.body, "function f exited without answering");
  assertEquals(t.outcomes, ["empty"]);
});

Deno.test("Server answers 504 and kills the container when it overruns the request timeout", async () => {
  await using t = await TestServer.create({ behaviour: () => hangs, timeoutMs: 100 });
  const reply = await t.request();
  assertEquals(reply.status, 504);
  assertStringIncludes(reply.body, "it ran past its 100 ms");
  assert(t.stands[0]!.killed, "the overrunning container is killed");
  assertEquals(t.outcomes, ["request-timeout"]);
});

Deno.test("Server answers 503 when a connection waited the queue timeout", async () => {
  const held = gate();
  await using t = await TestServer.create({
    pool: { maxConcurrency: 1, queueTimeoutMs: 100 },
    behaviour: () => held.handler,
  });
  const first = t.request();
  assert(await waitUntil(() => t.server.serving("f") === 1, 5000));
  const second = await t.request();
  assertEquals(second.status, 503);
  assertStringIncludes(second.body, "had no container free within 100 ms");
  held.open();
  assertEquals((await first).status, 200);
  assertEquals(t.outcomes, ["overloaded", "ok"]);
});

Deno.test("Server answers 503 at once when the queue is full", async () => {
  const held = gate();
  await using t = await TestServer.create({
    pool: { maxConcurrency: 1, maxQueue: 1 },
    behaviour: () => held.handler,
  });
  const first = t.request();
  assert(await waitUntil(() => t.server.serving("f") === 1, 5000));
  const second = t.request();
  assert(await waitUntil(() => t.server.waiting("f") === 1, 5000));
  const third = await t.request();
  assertEquals(third.status, 503);
  assertStringIncludes(third.body, "function f has 1 connections waiting already");
  held.open();
  assertEquals([(await first).status, (await second).status], [200, 200]);
  assertEquals(t.outcomes.sort(), ["ok", "ok", "overloaded"]);
});

Deno.test("Server answers 503 with the reason while the breaker is open, and serves again once it closes", async () => {
  // The pool keeps one container ready: its failing starts open the breaker before any connection arrives.
  await using t = await TestServer.create({ minReady: 1, failStarts: true });
  assert(await waitUntil(() => t.server.status("f") === "failing", 5000), "the breaker opens");
  assert(t.failedStarts >= BREAKER_FAILURES, `${t.failedStarts} failed starts`);
  const refused = await t.request();
  assertEquals(refused.status, 503);
  assertStringIncludes(refused.body, "function f is failing: its containers keep failing");
  assertEquals(t.stands.length, 0);
  t.failStarts = false;
  // After the first back-off (1 s) one start is tried again; it succeeds and closes the breaker.
  assert(await waitUntil(() => t.server.status("f") === null, 10_000), "the breaker closes");
  assertEquals(await t.request(), { status: 200, body: "c0" });
  assertEquals(t.outcomes, ["failing", "ok"]);
});

Deno.test("Server serves waiting connections in arrival order as containers become ready", async () => {
  await using t = await TestServer.create({ autoConnect: false });
  const replies: Promise<Reply>[] = [];
  for (let i = 1; i <= 3; i++) {
    replies.push(t.request());
    assert(await waitUntil(() => t.server.waiting("f") === i, 5000), `connection ${i} waits`);
  }
  assert(await waitUntil(() => t.stands.length >= 3, 5000), "a start per waiting connection");
  // Ready in another order than started: the oldest connection takes whichever is ready first.
  for (const n of [2, 0, 1]) {
    t.stands[n]!.connect();
    assert(await waitUntil(() => t.stands[n]!.removed, 5000), `c${n} served and removed`);
  }
  assertEquals((await Promise.all(replies)).map((r) => r.body), ["c2", "c0", "c1"]);
});

Deno.test("Server closes a connection that sends nothing within the header timeout, without a container", async () => {
  await using t = await TestServer.create({ pool: { headerTimeoutMs: 100 } });
  assertEquals(await t.request(""), { status: 0, body: "" });
  assertEquals(t.outcomes, ["idle"]);
  assertEquals(t.stands.length, 0, "no container started for it");
  // The same server starts a container for a connection that does send.
  assertEquals((await t.request()).status, 200);
  assertEquals(t.stands.length, 1);
});

Deno.test("Server hands the connection to the next container when the handoff fails with EPIPE", async () => {
  await using t = await TestServer.create({ broken: (n) => n === 0 });
  assertEquals(await t.request(), { status: 200, body: "c1" });
  assert(t.stands[0]!.removed, "the dead container is removed");
  assertEquals(t.outcomes, ["ok"]);
});

Deno.test("Server answers 502 when every handoff attempt finds its container dead", async () => {
  await using t = await TestServer.create({ broken: () => true });
  const reply = await t.request();
  assertEquals(reply.status, 502);
  assertStringIncludes(reply.body, "function f exited without handling the request");
  assertEquals(t.stands.length, 3, "a bounded number of attempts");
  assertEquals(t.outcomes, ["exited-early"]);
});

Deno.test("Server.close() answers the connection being served and the ones waiting", async () => {
  await using t = await TestServer.create({ pool: { maxConcurrency: 1 }, behaviour: () => hangs, timeoutMs: 60_000 });
  const served = t.request();
  assert(await waitUntil(() => t.server.serving("f") === 1, 5000));
  const waiting = t.request();
  assert(await waitUntil(() => t.server.waiting("f") === 1, 5000));
  await t.close(50);
  const [a, b] = [await served, await waiting];
  assertEquals([a.status, b.status], [504, 503]);
  assertStringIncludes(a.body, "faasd is stopping");
  assertStringIncludes(b.body, "function f is no longer served");
  assert(t.stands[0]!.killed, "the container being served is killed");
  assertEquals(t.outcomes.sort(), ["overloaded", "request-timeout"]);
});
