import assert from "node:assert/strict";
import { Poller } from "./epoll.ts";
import { ErrnoError } from "./errno.ts";
import {
  TcpConn,
  TCPI_BYTES_SENT_OFFSET,
  TCPI_NOTSENT_BYTES_OFFSET,
  TcpListener,
  UnixConn,
  UnixListener,
} from "./socket.ts";
import { compileHandler } from "../tests/harness/images.ts";

const encoder = new TextEncoder();
const decoder = new TextDecoder();
const REQUEST = encoder.encode("GET / HTTP/1.1\r\nHost: test\r\nUser-Agent: faasd-test\r\n\r\n");
/** What the test handler's `noread` mode writes (the seed's example answer). */
const RESPONSE = "HTTP/1.1 200 OK\r\n\r\nHello World!";

/** Reads until end of stream; a reset surfaces as the thrown Deno.errors.ConnectionReset. */
async function readAll(conn: Deno.Conn): Promise<string> {
  const chunks: Uint8Array[] = [];
  const buffer = new Uint8Array(4096);
  for (;;) {
    const n = await conn.read(buffer);
    if (n === null) break;
    chunks.push(buffer.slice(0, n));
  }
  return decoder.decode(new Uint8Array(chunks.flatMap((chunk) => [...chunk])));
}

/** Waits until `listener` has a pending connection and accepts it. */
async function acceptOne(poller: Poller, listener: TcpListener): Promise<TcpConn> {
  assert.equal(await poller.wait(listener.fd, "read", { timeoutMs: 10_000 }), "ready");
  const conn = listener.accept();
  assert.ok(conn);
  return conn;
}

/** Compiles `ffi/testdata/<name>.c` (a struct-layout probe) into `dir` and returns the executable's path. */
async function compile(name: string, dir: string): Promise<string> {
  const output = `${dir}/${name}`;
  const source = new URL(`./testdata/${name}.c`, import.meta.url).pathname;
  const result = await new Deno.Command("gcc", { args: ["-O1", "-Wall", "-Werror", "-o", output, source] }).output();
  assert.equal(result.code, 0, decoder.decode(result.stderr));
  return output;
}

Deno.test("TcpListener.bind() reports the kernel-chosen port and accept() returns a connected client", async () => {
  await using poller = new Poller();
  using listener = TcpListener.bind("127.10.0.5", 0);
  assert.equal(listener.address.ip, "127.10.0.5");
  assert.ok(listener.address.port > 0);
  using client = await Deno.connect({ hostname: "127.10.0.5", port: listener.address.port });
  using conn = await acceptOne(poller, listener);
  assert.deepEqual(conn.peer, { ip: "127.0.0.1", port: (client.localAddr as Deno.NetAddr).port });
  assert.equal(conn.write(encoder.encode("hi")), 2);
  conn.close();
  assert.equal(await readAll(client), "hi");
});

Deno.test("TcpListener.accept() returns null when nothing is pending", () => {
  using listener = TcpListener.bind("127.0.0.1", 0);
  assert.equal(listener.accept(), null);
  assert.equal(listener.accept(), null);
});

Deno.test("TcpListener.bind() throws ErrnoError EADDRINUSE for an address in use", () => {
  using first = TcpListener.bind("127.10.0.6", 0);
  assert.throws(() => TcpListener.bind("127.10.0.6", first.address.port), (error) => {
    assert.ok(error instanceof ErrnoError);
    assert.equal(error.name, "ErrnoError");
    assert.equal(error.code, "EADDRINUSE");
    assert.equal(error.errno, 98);
    assert.equal(error.syscall, "bind");
    assert.match(error.message, /^bind 127\.10\.0\.6:\d+: .+ \(EADDRINUSE\)$/);
    return true;
  });
});

Deno.test("TcpListener.bind() throws ErrnoError EADDRNOTAVAIL for an address no interface has", () => {
  // TEST-NET-1: never assigned here. Binding is purely local; nothing is sent.
  assert.throws(() => TcpListener.bind("192.0.2.1", 0), (error) => {
    assert.ok(error instanceof ErrnoError);
    assert.equal(error.code, "EADDRNOTAVAIL");
    return true;
  });
});

Deno.test("TcpListener.bind() throws TypeError and RangeError for invalid arguments", () => {
  for (const ip of ["", "localhost", "1.2.3", "256.0.0.1", "01.2.3.4", "::1", " 127.0.0.1"]) {
    assert.throws(() => TcpListener.bind(ip, 0), TypeError, ip);
  }
  for (const port of [-1, 65536, 1.5, NaN]) assert.throws(() => TcpListener.bind("127.0.0.1", port), RangeError);
  assert.throws(() => TcpListener.bind("127.0.0.1", 0, 0), RangeError);
});

Deno.test("Fd.close() is idempotent and later calls fail with EBADF", () => {
  const listener = TcpListener.bind("127.0.0.1", 0);
  assert.ok(listener.fd >= 0);
  assert.equal(listener.closed, false);
  listener.close();
  listener.close();
  listener[Symbol.dispose]();
  assert.equal(listener.closed, true);
  assert.equal(listener.fd, -1);
  assert.throws(() => listener.accept(), (error) => error instanceof ErrnoError && error.code === "EBADF");
  assert.throws(() => new TcpConn(-1), RangeError);
});

Deno.test("TcpConn read()/write() exchange bytes without blocking", async () => {
  await using poller = new Poller();
  using listener = TcpListener.bind("127.0.0.1", 0);
  using client = await Deno.connect({ hostname: "127.0.0.1", port: listener.address.port });
  using server = await acceptOne(poller, listener);
  const buffer = new Uint8Array(8);
  assert.equal(server.read(buffer), null);
  await client.write(encoder.encode("ping"));
  assert.equal(await poller.wait(server.fd, "read", { timeoutMs: 10_000 }), "ready");
  assert.equal(server.read(buffer), 4);
  assert.equal(decoder.decode(buffer.subarray(0, 4)), "ping");
  assert.equal(server.write(encoder.encode("pong")), 4);
  assert.equal(await client.read(buffer), 4);
  assert.equal(decoder.decode(buffer.subarray(0, 4)), "pong");
  await client.closeWrite();
  assert.equal(await poller.wait(server.fd, "read", { timeoutMs: 10_000 }), "ready");
  assert.equal(server.read(buffer), 0);
});

Deno.test("TcpConn.shutdown() ignores ENOTCONN", async () => {
  await using poller = new Poller();
  using listener = TcpListener.bind("127.0.0.1", 0);
  using client = await Deno.connect({ hostname: "127.0.0.1", port: listener.address.port });
  using conn = await acceptOne(poller, listener);
  conn.shutdown("both");
  client.close();
  conn.shutdown("write"); // may be ENOTCONN now
  conn.shutdown("both");
});

Deno.test("TCPI offsets used by TcpConn.bytesSent() match <linux/tcp.h>", async () => {
  const dir = await Deno.makeTempDir();
  try {
    const output = await new Deno.Command(await compile("layout", dir)).output();
    const layout = JSON.parse(decoder.decode(output.stdout));
    assert.equal(layout.tcpi_bytes_sent, TCPI_BYTES_SENT_OFFSET);
    assert.equal(layout.tcpi_notsent_bytes, TCPI_NOTSENT_BYTES_OFFSET);
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
});

Deno.test("UnixListener.bind() makes a world-connectable socket and close() removes it", async () => {
  const dir = await Deno.makeTempDir();
  try {
    const path = `${dir}/control.sock`;
    const listener = UnixListener.bind(path);
    assert.equal(listener.path, path);
    const info = Deno.statSync(path);
    assert.equal(info.isSocket, true);
    assert.equal(info.mode! & 0o777, 0o777);
    assert.equal(listener.accept(), null);
    using client = UnixConn.connect(path);
    using server = listener.accept();
    assert.ok(server);
    assert.ok(client.fd >= 0);
    listener.close();
    listener.close();
    assert.throws(() => Deno.statSync(path), Deno.errors.NotFound);
    assert.throws(() => UnixConn.connect(path), (error) => error instanceof ErrnoError && error.code === "ENOENT");
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
});

Deno.test("UnixListener.bind() leaves an existing file alone and throws EADDRINUSE", async () => {
  const dir = await Deno.makeTempDir();
  try {
    const path = `${dir}/taken`;
    await Deno.writeTextFile(path, "mine");
    assert.throws(() => UnixListener.bind(path), (error) => error instanceof ErrnoError && error.code === "EADDRINUSE");
    assert.equal(await Deno.readTextFile(path), "mine");
    assert.throws(() => UnixListener.bind(`${dir}/${"x".repeat(120)}`), RangeError);
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
});

Deno.test("UnixConn.sendFd() hands a TCP connection to a receiver that answers the client", async () => {
  const dir = await Deno.makeTempDir();
  try {
    await using poller = new Poller();
    using listener = TcpListener.bind("127.10.0.7", 0);
    using control = UnixListener.bind(`${dir}/control.sock`);
    using client = await Deno.connect({ hostname: "127.10.0.7", port: listener.address.port });
    await client.write(REQUEST);
    using conn = await acceptOne(poller, listener);

    using handlerSide = UnixConn.connect(control.path);
    using faasdSide = control.accept();
    assert.ok(faasdSide);
    assert.equal(handlerSide.recvFd(), null);
    faasdSide.sendFd(conn.fd);
    assert.equal(await poller.wait(handlerSide.fd, "read", { timeoutMs: 10_000 }), "ready");
    const received = handlerSide.recvFd();
    assert.ok(received);
    assert.equal(received.data, "SOCKET");
    assert.notEqual(received.fd, conn.fd);

    assert.equal(conn.bytesSent(), 0n);
    {
      using handlerConn = new TcpConn(received.fd);
      assert.deepEqual(handlerConn.peer, conn.peer);
      assert.equal(handlerConn.write(encoder.encode(RESPONSE)), RESPONSE.length);
    }
    assert.equal(conn.bytesSent(), BigInt(RESPONSE.length));
    assert.equal(conn.drain(), "again");
    conn.shutdown("write");
    conn.close();
    assert.equal(await readAll(client), RESPONSE);
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
});

Deno.test("UnixConn.recvFd() throws UnexpectedEof when the sender closes without a descriptor", async () => {
  const dir = await Deno.makeTempDir();
  try {
    await using poller = new Poller();
    using control = UnixListener.bind(`${dir}/control.sock`);
    using receiver = UnixConn.connect(control.path);
    control.accept()!.close();
    assert.equal(await poller.wait(receiver.fd, "read", { timeoutMs: 10_000 }), "ready");
    assert.throws(() => receiver.recvFd(), Deno.errors.UnexpectedEof);
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
});

Deno.test("UnixConn.sendFd() throws EPIPE when the receiver is gone", async () => {
  const dir = await Deno.makeTempDir();
  try {
    using control = UnixListener.bind(`${dir}/control.sock`);
    UnixConn.connect(control.path).close();
    using sender = control.accept();
    assert.ok(sender);
    using listener = TcpListener.bind("127.0.0.1", 0);
    assert.throws(() => sender.sendFd(listener.fd), (error) => {
      assert.ok(error instanceof ErrnoError);
      assert.ok(["EPIPE", "ECONNRESET"].includes(error.code), error.code);
      return true;
    });
    assert.throws(() => sender.sendFd(-1), RangeError);
    assert.throws(() => sender.sendFd(listener.fd, ""), RangeError);
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
});

/**
 * The faasd handoff in miniature, with a real handler process: the client sends a request, faasd accepts and
 * passes the socket, the handler answers without reading and exits; faasd then sees bytes were sent, drains,
 * shuts down and closes. The client must get the whole response and a clean end of stream.
 */
async function handOff(mode: "noread" | "crash"): Promise<{ bytesSent: bigint; clientRead: string; code: number }> {
  const dir = await Deno.makeTempDir();
  try {
    const handler = await compileHandler();
    await using poller = new Poller();
    using listener = TcpListener.bind("127.10.0.8", 0);
    using control = UnixListener.bind(`${dir}/control.sock`);
    using client = await Deno.connect({ hostname: "127.10.0.8", port: listener.address.port });
    await client.write(REQUEST);
    using conn = await acceptOne(poller, listener);

    const child = new Deno.Command(handler, {
      args: [mode],
      env: { FAASD_CONTROL_SOCK: control.path },
      stdout: "null",
      stderr: "null",
    }).spawn();
    assert.equal(await poller.wait(control.fd, "read", { timeoutMs: 10_000 }), "ready");
    {
      using handlerConn = control.accept();
      assert.ok(handlerConn);
      handlerConn.sendFd(conn.fd);
    }
    const { code } = await child.status;

    const bytesSent = conn.bytesSent();
    // The request was sent before the handoff, so it is all here; nobody read it.
    assert.equal(await poller.wait(conn.fd, "read", { timeoutMs: 10_000 }), "ready");
    assert.equal(conn.drain(), "again");
    conn.shutdown("write");
    conn.close();
    return { bytesSent, clientRead: await readAll(client), code };
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
}

Deno.test("TcpConn.bytesSent() counts what a handler process wrote on its copy of the socket", async () => {
  const { bytesSent, clientRead, code } = await handOff("noread");
  assert.equal(code, 0);
  assert.equal(bytesSent, BigInt(RESPONSE.length));
  assert.equal(clientRead, RESPONSE);
});

Deno.test("TcpConn.bytesSent() stays 0 when a handler process wrote nothing", async () => {
  const { bytesSent, clientRead, code } = await handOff("crash");
  assert.equal(code, 1);
  assert.equal(bytesSent, 0n);
  assert.equal(clientRead, "");
});

/** Client sends a request nobody reads, server answers and closes; returns what the client saw. */
async function answerWithoutReading(drainFirst: boolean): Promise<string | Error> {
  await using poller = new Poller();
  using listener = TcpListener.bind("127.0.0.1", 0);
  using client = await Deno.connect({ hostname: "127.0.0.1", port: listener.address.port });
  await client.write(REQUEST);
  using conn = await acceptOne(poller, listener);
  assert.equal(await poller.wait(conn.fd, "read", { timeoutMs: 10_000 }), "ready");
  assert.equal(conn.write(encoder.encode(RESPONSE)), RESPONSE.length);
  if (drainFirst) {
    assert.equal(conn.drain(), "again");
    conn.shutdown("write");
  }
  conn.close();
  return await readAll(client).catch((error) => error);
}

Deno.test("TcpConn.drain() before shutdown and close gives the client a clean end instead of a reset", async () => {
  assert.equal(await answerWithoutReading(true), RESPONSE);
  // The control: without draining, the kernel resets the connection.
  assert.ok(await answerWithoutReading(false) instanceof Deno.errors.ConnectionReset);
});

Deno.test("TcpConn.drain() reports eof once the peer finished sending", async () => {
  await using poller = new Poller();
  using listener = TcpListener.bind("127.0.0.1", 0);
  using client = await Deno.connect({ hostname: "127.0.0.1", port: listener.address.port });
  // More than the socket buffers hold, so the reader has to drain repeatedly.
  const writing = (async () => {
    for (let data = new Uint8Array(4_000_000); data.byteLength > 0;) data = data.subarray(await client.write(data));
    await client.closeWrite();
  })();
  using conn = await acceptOne(poller, listener);
  let result: "again" | "eof" = "again";
  while (result === "again") {
    assert.equal(await poller.wait(conn.fd, "read", { timeoutMs: 10_000 }), "ready");
    result = conn.drain();
  }
  await writing;
  assert.equal(result, "eof");
});

function openDescriptors(): number {
  return [...Deno.readDirSync("/proc/self/fd")].length;
}

Deno.test("sockets, pollers and failed binds leave no descriptor open", async () => {
  const dir = await Deno.makeTempDir();
  try {
    const before = openDescriptors();
    for (let i = 0; i < 20; i++) {
      await using poller = new Poller();
      using listener = TcpListener.bind("127.10.0.9", 0);
      assert.throws(() => TcpListener.bind("127.10.0.9", listener.address.port), ErrnoError);
      assert.throws(() => TcpListener.bind("192.0.2.1", 0), ErrnoError);
      using _client = await Deno.connect({ hostname: "127.10.0.9", port: listener.address.port });
      using server = await acceptOne(poller, listener);
      using control = UnixListener.bind(`${dir}/c${i}.sock`);
      using handlerSide = UnixConn.connect(control.path);
      using faasdSide = control.accept()!;
      faasdSide.sendFd(server.fd);
      await poller.wait(handlerSide.fd, "read", { timeoutMs: 10_000 });
      new TcpConn(handlerSide.recvFd()!.fd).close();
    }
    assert.equal(openDescriptors(), before);
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
});
