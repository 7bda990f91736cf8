import assert from "node:assert/strict";
import { Poller } from "./epoll.ts";
import { TcpListener } from "./socket.ts";

function connect(listener: TcpListener): Promise<Deno.TcpConn> {
  return Deno.connect({ hostname: listener.address.ip, port: listener.address.port });
}

/** Resolves with the value `promise` settled with, or `"pending"` if it has not settled after a few turns. */
async function peek<T>(promise: Promise<T>): Promise<T | "pending"> {
  return await Promise.race([promise, new Promise<"pending">((resolve) => setTimeout(() => resolve("pending"), 20))]);
}

Deno.test("Poller.wait() resolves ready once a descriptor becomes readable", async () => {
  await using poller = new Poller();
  using listener = TcpListener.bind("127.0.0.1", 0);
  const ready = poller.wait(listener.fd, "read");
  assert.equal(await peek(ready), "pending");
  using _client = await connect(listener);
  assert.equal(await ready, "ready");
  listener.accept()?.close();
});

Deno.test("Poller.wait() resolves timeout after timeoutMs and then allows a new wait", async () => {
  await using poller = new Poller();
  using listener = TcpListener.bind("127.0.0.1", 0);
  assert.equal(await poller.wait(listener.fd, "read", { timeoutMs: 5 }), "timeout");
  assert.equal(await poller.wait(listener.fd, "read", { timeoutMs: 0 }), "timeout");
  using _client = await connect(listener);
  assert.equal(await poller.wait(listener.fd, "read", { timeoutMs: 10_000 }), "ready");
  listener.accept()?.close();
});

Deno.test("Poller.wait() rejects with the signal's reason on abort", async () => {
  await using poller = new Poller();
  using listener = TcpListener.bind("127.0.0.1", 0);
  const reason = new Error("stop");
  await assert.rejects(poller.wait(listener.fd, "read", { signal: AbortSignal.abort(reason) }), (e) => e === reason);
  const controller = new AbortController();
  const waiting = poller.wait(listener.fd, "read", { signal: controller.signal, timeoutMs: 60_000 });
  assert.equal(await peek(waiting), "pending");
  controller.abort(reason);
  await assert.rejects(waiting, (e) => e === reason);
  // The registration is gone: the descriptor can be waited on again.
  assert.equal(await poller.wait(listener.fd, "read", { timeoutMs: 1 }), "timeout");
});

Deno.test("Poller.wait() serves concurrent waits on different descriptors", async () => {
  await using poller = new Poller();
  const listeners = [0, 1, 2].map((i) => TcpListener.bind(`127.10.0.${20 + i}`, 0));
  try {
    const waits = listeners.map((listener) => poller.wait(listener.fd, "read", { timeoutMs: 10_000 }));
    await assert.rejects(poller.wait(listeners[0].fd, "read"), Deno.errors.AlreadyExists);
    assert.throws(() => poller.watch(listeners[0].fd, () => {}), Deno.errors.AlreadyExists);
    const clients: Deno.TcpConn[] = [];
    for (const [i, listener] of [...listeners.entries()].reverse()) {
      clients.push(await connect(listener));
      assert.equal(await waits[i], "ready");
      if (i > 0) assert.equal(await peek(waits[i - 1]), "pending");
    }
    for (const client of clients) client.close();
  } finally {
    for (const listener of listeners) listener.close();
  }
});

Deno.test("Poller.wait() reports write readiness", async () => {
  await using poller = new Poller();
  using listener = TcpListener.bind("127.0.0.1", 0);
  using client = await connect(listener);
  using conn = listener.accept()!;
  assert.equal(await poller.wait(conn.fd, "write", { timeoutMs: 10_000 }), "ready");
  assert.equal(await poller.wait(conn.fd, "read", { timeoutMs: 1 }), "timeout");
  client.closeWrite();
  assert.equal(await poller.wait(conn.fd, "read", { timeoutMs: 10_000 }), "ready");
});

Deno.test("Poller.wait() rejects invalid arguments", async () => {
  await using poller = new Poller();
  await assert.rejects(poller.wait(-1, "read"), RangeError);
  await assert.rejects(poller.wait(0, "read", { timeoutMs: -1 }), RangeError);
  await assert.rejects(poller.wait(0, "read", { timeoutMs: NaN }), RangeError);
  // deno-lint-ignore no-explicit-any
  await assert.rejects(poller.wait(0, "both" as any), TypeError);
});

Deno.test("Poller.watch() calls back on every readiness until unwatch()", async () => {
  await using poller = new Poller();
  using listener = TcpListener.bind("127.0.0.1", 0);
  let calls = 0;
  let next = Promise.withResolvers<void>();
  poller.watch(listener.fd, () => {
    for (let conn; (conn = listener.accept()) !== null;) conn.close();
    calls++;
    next.resolve();
  });
  for (let i = 0; i < 3; i++) {
    using _client = await connect(listener);
    await next.promise;
    next = Promise.withResolvers<void>();
  }
  assert.equal(calls, 3);
  poller.unwatch(listener.fd);
  poller.unwatch(listener.fd);
  using _client = await connect(listener);
  assert.equal(await peek(next.promise), "pending");
  assert.equal(calls, 3);
  listener.accept()!.close();
});

Deno.test("Poller.watch() keeps dispatching after a callback throws", async () => {
  await using poller = new Poller();
  using listener = TcpListener.bind("127.0.0.1", 0);
  const logged: unknown[][] = [];
  const originalError = console.error;
  console.error = (...args: unknown[]) => void logged.push(args);
  try {
    let calls = 0;
    const called = Promise.withResolvers<void>();
    poller.watch(listener.fd, () => {
      calls++;
      if (calls === 1) throw new Error("boom"); // leaves the connection pending: level-triggered, so called again
      listener.accept()?.close();
      called.resolve();
    });
    using _client = await connect(listener);
    await called.promise;
    assert.equal(calls, 2);
    assert.equal(logged.length, 1);
    assert.match(String(logged[0][0]), /callback for fd \d+ threw/);
    poller.unwatch(listener.fd);
  } finally {
    console.error = originalError;
  }
});

Deno.test("Poller.close() rejects pending waits, stops watches and is idempotent", async () => {
  const poller = new Poller();
  using listener = TcpListener.bind("127.0.0.1", 0);
  using other = TcpListener.bind("127.0.0.1", 0);
  const waiting = poller.wait(listener.fd, "read", { timeoutMs: 60_000 });
  poller.watch(other.fd, () => assert.fail("watch called after close"));
  poller.close();
  poller.close();
  assert.equal(poller.closed, true);
  await assert.rejects(waiting, Deno.errors.BadResource);
  await assert.rejects(poller.wait(listener.fd, "read"), Deno.errors.BadResource);
  assert.throws(() => poller.watch(listener.fd, () => {}), Deno.errors.BadResource);
  using _client = await connect(other);
  await poller[Symbol.asyncDispose]();
  assert.ok(other.accept());
});

/** Runs `code` in a fresh `deno` process and returns its exit code and output; kills it after 20 s. */
async function runDeno(code: string): Promise<{ code: number; stdout: string; stderr: string }> {
  const url = new URL("./", import.meta.url).href;
  const child = new Deno.Command(Deno.execPath(), {
    args: ["eval", "--quiet", code.replaceAll("FFI/", url)],
    stdout: "piped",
    stderr: "piped",
  }).spawn();
  const timer = setTimeout(() => child.kill("SIGKILL"), 20_000);
  try {
    const output = await child.output();
    const decode = (bytes: Uint8Array) => new TextDecoder().decode(bytes);
    return { code: output.code, stdout: decode(output.stdout), stderr: decode(output.stderr) };
  } finally {
    clearTimeout(timer);
  }
}

Deno.test("Poller lets the process exit once it is idle, even without close()", async () => {
  const result = await runDeno(`
    import { Poller } from "FFI/epoll.ts";
    import { TcpListener } from "FFI/socket.ts";
    const poller = new Poller();
    const listener = TcpListener.bind("127.0.0.1", 0);
    poller.watch(listener.fd, () => {});
    await new Promise((resolve) => setTimeout(resolve, 50)); // let the epoll_wait start
    poller.unwatch(listener.fd);
    console.log(await poller.wait(listener.fd, "read", { timeoutMs: 10 }));
  `);
  assert.equal(result.stderr, "");
  assert.equal(result.stdout, "timeout\n");
  assert.equal(result.code, 0);
});

Deno.test("Poller.close() lets the process exit while descriptors are still watched", async () => {
  const result = await runDeno(`
    import { Poller } from "FFI/epoll.ts";
    import { TcpListener } from "FFI/socket.ts";
    const poller = new Poller();
    const listener = TcpListener.bind("127.0.0.1", 0);
    poller.watch(listener.fd, () => {});
    await new Promise((resolve) => setTimeout(resolve, 50));
    poller.close();
    console.log("closed");
  `);
  assert.equal(result.stderr, "");
  assert.equal(result.stdout, "closed\n");
  assert.equal(result.code, 0);
});

Deno.test("Poller keeps the process alive while something is watched", async () => {
  // The control for the two tests above: a watch that is never removed holds the process until killed.
  const result = await runDeno(`
    import { Poller } from "FFI/epoll.ts";
    import { TcpListener } from "FFI/socket.ts";
    const poller = new Poller();
    const listener = TcpListener.bind("127.0.0.1", 0);
    poller.watch(listener.fd, () => {});
    // An unref'd timer does not itself keep the process alive.
    Deno.unrefTimer(setTimeout(() => { console.log("still alive"); Deno.exit(3); }, 300));
  `);
  assert.equal(result.stdout, "still alive\n");
  assert.equal(result.code, 3);
});
