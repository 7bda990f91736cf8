import { assert, assertEquals, assertMatch, assertRejects, assertThrows } from "../../tests/assert.ts";
import { configureLog } from "../log.ts";
import { Poller } from "../../ffi/epoll.ts";
import { ErrnoError } from "../../ffi/errno.ts";
import type { TcpConn } from "../../ffi/socket.ts";
import { Listeners } from "./listeners.ts";

/** Collects accepted connections and lets a test await the next ones. */
class Inbox {
  readonly received: Array<{ name: string; conn: TcpConn }> = [];
  #waiters: Array<() => void> = [];

  readonly onConnection = (name: string, conn: TcpConn): void => {
    this.received.push({ name, conn });
    for (const wake of this.#waiters.splice(0)) wake();
  };

  async until(count: number): Promise<void> {
    while (this.received.length < count) await new Promise<void>((resolve) => this.#waiters.push(resolve));
  }

  [Symbol.dispose](): void {
    for (const { conn } of this.received) conn.close();
  }
}

function connect(listeners: Listeners, name: string): Promise<Deno.TcpConn> {
  const address = listeners.address(name)!;
  return Deno.connect({ hostname: address.ip, port: address.port });
}

Deno.test("Listeners.add() accepts connections on several IPs at once", async () => {
  await using poller = new Poller();
  using inbox = new Inbox();
  using listeners = new Listeners(poller, inbox.onConnection);
  const ips = { a: "127.0.0.1", b: "127.10.0.30", c: "127.10.0.31" };
  for (const [name, ip] of Object.entries(ips)) listeners.add(name, ip, 0);
  assertEquals(listeners.names(), ["a", "b", "c"]);
  assertEquals(listeners.has("b"), true);
  assertEquals(listeners.has("z"), false);
  assertEquals(listeners.address("b")!.ip, "127.10.0.30");
  assert(listeners.address("b")!.port > 0);
  assertEquals(listeners.address("z"), undefined);

  const clients = [];
  for (const name of ["c", "a", "b", "c"]) clients.push(await connect(listeners, name));
  await inbox.until(4);
  assertEquals(inbox.received.map(({ name }) => name).sort(), ["a", "b", "c", "c"]);
  for (const { conn } of inbox.received) {
    const clientPorts = clients.map((client) => (client.localAddr as Deno.NetAddr).port);
    assert(clientPorts.includes(conn.peer.port));
  }
  for (const client of clients) client.close();
});

Deno.test("Listeners accepts every pending connection of a burst", async () => {
  await using poller = new Poller();
  using inbox = new Inbox();
  using listeners = new Listeners(poller, inbox.onConnection);
  listeners.add("burst", "127.10.0.32", 0);
  const clients = await Promise.all(Array.from({ length: 100 }, () => connect(listeners, "burst")));
  await inbox.until(100);
  assertEquals(inbox.received.length, 100);
  for (const client of clients) client.close();
});

Deno.test("Listeners.remove() stops accepting, closes the socket and is idempotent", async () => {
  await using poller = new Poller();
  using inbox = new Inbox();
  using listeners = new Listeners(poller, inbox.onConnection);
  listeners.add("gone", "127.10.0.33", 0);
  listeners.add("kept", "127.10.0.34", 0);
  const gone = listeners.address("gone")!;
  listeners.remove("gone");
  listeners.remove("gone");
  listeners.remove("never-added");
  assertEquals(listeners.names(), ["kept"]);
  await assertRejects(() => Deno.connect({ hostname: gone.ip, port: gone.port }), Deno.errors.ConnectionRefused);
  using _client = await connect(listeners, "kept");
  await inbox.until(1);
  assertEquals(inbox.received[0].name, "kept");
  // The name can be used again, on the same address.
  listeners.add("gone", gone.ip, gone.port);
  using _again = await Deno.connect({ hostname: gone.ip, port: gone.port });
  await inbox.until(2);
  assertEquals(inbox.received[1].name, "gone");
});

Deno.test("Listeners.add() throws bind errors and duplicate names without registering anything", async () => {
  await using poller = new Poller();
  using listeners = new Listeners(poller, (_name, conn) => conn.close());
  listeners.add("one", "127.10.0.35", 0);
  const taken = listeners.address("one")!;
  assertThrows(() => listeners.add("one", "127.10.0.36", 0), Deno.errors.AlreadyExists);
  const inUse = assertThrows(() => listeners.add("two", taken.ip, taken.port), ErrnoError) as ErrnoError;
  assertEquals(inUse.code, "EADDRINUSE");
  // Binding is local: nothing is sent to this address.
  const notLocal = assertThrows(() => listeners.add("three", "192.0.2.1", 0), ErrnoError) as ErrnoError;
  assertEquals(notLocal.code, "EADDRNOTAVAIL");
  assertThrows(() => listeners.add("four", "not-an-ip", 0), TypeError);
  assertEquals(listeners.names(), ["one"]);
});

Deno.test("Listeners keeps accepting after onConnection throws, and closes that connection", async () => {
  await using poller = new Poller();
  const logged: string[] = [];
  const restore = configureLog({ format: "text", level: "info", write: (line) => void logged.push(line) });
  try {
    using inbox = new Inbox();
    let first = true;
    using listeners = new Listeners(poller, (name, conn) => {
      if (first) {
        first = false;
        throw new Error("handler bug");
      }
      inbox.onConnection(name, conn);
    });
    listeners.add("flaky", "127.10.0.37", 0);
    using failed = await connect(listeners, "flaky");
    // The failed connection is closed by Listeners: the client reads end of stream.
    assertEquals(await failed.read(new Uint8Array(1)), null);
    using _ok = await connect(listeners, "flaky");
    await inbox.until(1);
    assertEquals(logged.length, 1);
    assertMatch(logged[0]!, /connection handler threw function=flaky error="handler bug"/);
  } finally {
    restore();
  }
});

Deno.test("Listeners.close() removes every listener and refuses new ones", async () => {
  await using poller = new Poller();
  const listeners = new Listeners(poller, (_name, conn) => conn.close());
  listeners.add("x", "127.10.0.38", 0);
  listeners.add("y", "127.10.0.39", 0);
  const x = listeners.address("x")!;
  listeners.close();
  listeners.close();
  assertEquals(listeners.names(), []);
  assertThrows(() => listeners.add("z", "127.10.0.40", 0), Deno.errors.BadResource);
  await assertRejects(() => Deno.connect({ hostname: x.ip, port: x.port }), Deno.errors.ConnectionRefused);
});

Deno.test("Listeners backs off instead of spinning while accept() fails with EMFILE", async () => {
  // A child process with a low descriptor limit uses up its descriptors, then gets a connection it cannot accept.
  const ffi = new URL("../../ffi/", import.meta.url).href;
  const lib = new URL("../", import.meta.url).href;
  const serve = new URL("./", import.meta.url).href;
  const code = `
    import { Poller } from "${ffi}epoll.ts";
    import { Listeners } from "${serve}listeners.ts";
    import { configureLog } from "${lib}log.ts";
    const poller = new Poller();
    let errors = 0;
    const hog = [];
    configureLog({ format: "text", level: "info", write: (line) => {
      if (errors++ === 0) {
        console.log(JSON.stringify({ first: line }));
        setTimeout(() => hog.splice(0).forEach((file) => file.close()), 500);
      }
    } });
    const listeners = new Listeners(poller, (_name, conn) => {
      conn.close();
      console.log(JSON.stringify({ errors }));
      listeners.close();
      poller.close();
    });
    listeners.add("x", "127.0.0.1", 0);
    // Deno sets up its signal machinery lazily and panics if that happens without a free descriptor: do it now.
    const ignore = () => {};
    Deno.addSignalListener("SIGUSR2", ignore);
    Deno.removeSignalListener("SIGUSR2", ignore);
    try { for (;;) hog.push(Deno.openSync("/dev/null")); } catch { /* EMFILE */ }
    console.log(JSON.stringify(listeners.address("x")));
  `;
  const child = new Deno.Command("prlimit", {
    args: ["--nofile=256", Deno.execPath(), "eval", "--quiet", code],
    stdout: "piped",
    stderr: "inherit",
  }).spawn();
  const timer = setTimeout(() => child.kill("SIGKILL"), 20_000);
  try {
    const lines = child.stdout.pipeThrough(new TextDecoderStream()).values();
    let buffered = "";
    const nextLine = async (): Promise<string> => {
      while (!buffered.includes("\n")) {
        const { value, done } = await lines.next();
        if (done) throw new Error(`child ended early: ${JSON.stringify(buffered)}`);
        buffered += value;
      }
      const line = buffered.slice(0, buffered.indexOf("\n"));
      buffered = buffered.slice(line.length + 1);
      return line;
    };
    const address = JSON.parse(await nextLine());
    using client = await Deno.connect({ hostname: address.ip, port: address.port });
    assertMatch(JSON.parse(await nextLine()).first, /EMFILE/);
    const { errors } = JSON.parse(await nextLine());
    // About 5 with a 100 ms back-off over 500 ms; a listener spinning on EMFILE would log thousands of times.
    assert(errors >= 1 && errors < 100, `accept errors logged: ${errors}`);
    assertEquals(await client.read(new Uint8Array(1)), null);
    assertEquals((await child.status).code, 0);
  } finally {
    clearTimeout(timer);
  }
});
