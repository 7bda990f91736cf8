/**
 * Function IPs announced by BGP, for real: `tools/cluster.sh up 2` (dry: no faasd) builds the router and two hosts as
 * network namespaces, and a {@linkcode BirdAnnouncer} in each host (tests/harness/cluster_announcer.ts, run with
 * `ip netns exec`) announces 198.51.100.10 to the router's BIRD, which puts it in its kernel table as one multipath
 * route. Then: a withdraw, a SIGKILL of the process owning a BirdAnnouncer, `cluster.sh add`, `kill` and `down`.
 *
 * Needs root, bird2, etcd, docker-registry and containerd. Uses the machine-wide names faasd-router, faasd-hostI and
 * faasd-cl0, so it refuses to run while a cluster is up.
 *
 * @module
 */

import { assert, assertEquals, assertStringIncludes } from "./assert.ts";
import { readClusterEnv } from "./harness/cluster_env.ts";
import { waitUntil } from "./harness/wait.ts";

const ROOT = new URL("..", import.meta.url).pathname;
const SCRIPT = `${ROOT}tools/cluster.sh`;
const ANNOUNCER = `${ROOT}tests/harness/cluster_announcer.ts`;
const ROUTER_NS = "faasd-router";
const FUNCTION_IP = "198.51.100.10";
/** Generous: a SIGKILLed BIRD's socket is closed at once; a silent peer is dropped after the 3 s hold time. */
const ROUTE_TIMEOUT_MS = 15_000;

async function run(cmd: string, args: string[], env: Record<string, string> = {}): Promise<string> {
  const out = await new Deno.Command(cmd, { args, env, stdout: "piped", stderr: "piped" }).output();
  const decoder = new TextDecoder();
  const text = decoder.decode(out.stdout);
  if (!out.success) throw new Error(`${cmd} ${args.join(" ")} failed:\n${text}\n${decoder.decode(out.stderr)}`);
  return text;
}

/** The next hops the router's kernel has for `ip`, sorted. */
async function nextHops(ip = FUNCTION_IP): Promise<string[]> {
  const text = await run("ip", ["-n", ROUTER_NS, "route", "show", ip]);
  return [...text.matchAll(/via (\S+)/g)].map((m) => m[1]!).sort();
}

async function netnsNames(): Promise<string[]> {
  return (await run("ip", ["netns", "list"])).split("\n").map((line) => line.split(" ")[0]!).filter(Boolean);
}

function pidAlive(pid: number): boolean {
  try {
    const stat = Deno.readTextFileSync(`/proc/${pid}/stat`);
    return !stat.slice(stat.lastIndexOf(")") + 2).startsWith("Z");
  } catch {
    return false;
  }
}

/** Pids of live processes whose command line mentions `text`. */
function processesMentioning(text: string): number[] {
  const pids: number[] = [];
  for (const entry of Deno.readDirSync("/proc")) {
    const pid = Number(entry.name);
    if (!Number.isInteger(pid) || pid === Deno.pid) continue;
    try {
      if (Deno.readTextFileSync(`/proc/${pid}/cmdline`).includes(text) && pidAlive(pid)) pids.push(pid);
    } catch {
      // exited while we looked
    }
  }
  return pids;
}

/** tests/harness/cluster_announcer.ts running in host `i`'s netns, driven line by line. */
class Announcer {
  readonly child: Deno.ChildProcess;
  birdPid = 0;
  readonly #stdin: WritableStreamDefaultWriter<Uint8Array>;
  readonly #lines: AsyncIterator<string>;
  readonly #stderr: Promise<string>;

  constructor(ns: string, fragment: string, stateDir: string) {
    this.child = new Deno.Command("ip", {
      args: ["netns", "exec", ns, Deno.execPath(), "run", "--allow-all", ANNOUNCER, fragment, stateDir],
      cwd: ROOT,
      stdin: "piped",
      stdout: "piped",
      stderr: "piped",
    }).spawn();
    this.#stdin = this.child.stdin.getWriter();
    this.#lines = lines(this.child.stdout)[Symbol.asyncIterator]();
    this.#stderr = new Response(this.child.stderr).text();
  }

  async ready(): Promise<void> {
    const line = await this.#next();
    const match = /^ready (\d+)$/.exec(line);
    if (!match) throw new Error(`announcer did not start: ${line}\n${await this.log()}`);
    this.birdPid = Number(match[1]);
  }

  async announce(ips: string[]): Promise<void> {
    await this.#stdin.write(new TextEncoder().encode(`${JSON.stringify(ips)}\n`));
    const line = await this.#next();
    if (line !== "ok") throw new Error(`announce ${JSON.stringify(ips)}: ${line}`);
  }

  /** Its stderr (BIRD's log included), once it has exited. */
  log(): Promise<string> {
    return this.#stderr;
  }

  kill(): void {
    try {
      this.child.kill("SIGKILL");
    } catch {
      // exited already
    }
  }

  /** Kills it (if it still runs) and releases its pipes. */
  async dispose(): Promise<void> {
    this.kill();
    await this.child.status;
    await this.#stdin.close().catch(() => {});
    await this.#lines.return?.();
    await this.#stderr;
  }

  async #next(): Promise<string> {
    const next = await this.#lines.next();
    if (next.done) throw new Error(`announcer exited: ${JSON.stringify(await this.child.status)}\n${await this.log()}`);
    return next.value;
  }
}

async function* lines(stream: ReadableStream<Uint8Array>): AsyncGenerator<string> {
  let partial = "";
  for await (const chunk of stream.pipeThrough(new TextDecoderStream())) {
    const parts = (partial + chunk).split("\n");
    partial = parts.pop()!;
    yield* parts;
  }
}

Deno.test("BirdAnnouncer on cluster.sh hosts: ECMP across hosts, withdraw, SIGKILL, add, kill; down leaves nothing", async () => {
  const stale = (await netnsNames()).filter((ns) => ns.startsWith("faasd-"));
  assertEquals(stale, [], "a faasd cluster (or its leftovers) exists: tools/cluster.sh down first");
  const dir = await Deno.makeTempDir({ prefix: "faasd-bgp-" });
  const env = { FAASD_CLUSTER_DIR: dir, FAASD_CLUSTER_DRY: "1" };
  const sh = (...args: string[]) => run(SCRIPT, args, env);
  const announcers: Announcer[] = [];
  let isDown = false;
  const ms = (since: number) => `${Math.round(performance.now() - since)} ms`;
  try {
    let t = performance.now();
    await sh("up", "2");
    console.error(`bgp: cluster.sh up 2 (router, 2 hosts, BGP sessions established): ${ms(t)}`);
    const cluster = await readClusterEnv(dir);
    const net = cluster.net;
    const hop = (i: number) => `${net}.${10 + i}`;
    assertEquals(cluster.routerNetns, ROUTER_NS);
    assertEquals(cluster.hosts.map((h) => [h.name, h.api, h.ip]), [
      ["host1", `http://${hop(1)}:8080`, hop(1)],
      ["host2", `http://${hop(2)}:8080`, hop(2)],
    ]);
    assertEquals(await nextHops(), []);

    // Replace each host's dry-mode BIRD by a BirdAnnouncer with the same operator fragment.
    for (const i of [1, 2]) {
      const pid = Number(await Deno.readTextFile(`${dir}/host${i}/bird.pid`));
      Deno.kill(pid, "SIGTERM");
      assert(await waitUntil(() => !pidAlive(pid), 10_000), `host${i}'s dry-mode BIRD did not stop`);
      const announcer = new Announcer(`faasd-host${i}`, `${dir}/host${i}/bird-operator.conf`, `${dir}/host${i}/faasd`);
      announcers.push(announcer);
      await announcer.ready();
    }
    const [one, two] = announcers as [Announcer, Announcer];

    t = performance.now();
    await Promise.all([one.announce([FUNCTION_IP]), two.announce([FUNCTION_IP])]);
    assert(
      await waitUntil(async () => (await nextHops()).length === 2, ROUTE_TIMEOUT_MS),
      `no multipath route: ${await run("ip", ["-n", ROUTER_NS, "route"])}`,
    );
    console.error(`bgp: new BIRDs started to multipath route in the router's kernel: ${ms(t)}`);
    assertEquals(await nextHops(), [hop(1), hop(2)]);

    t = performance.now();
    await one.announce([]);
    assert(await waitUntil(async () => (await nextHops()).length === 1, ROUTE_TIMEOUT_MS), "host1's withdraw");
    console.error(`bgp: withdraw by host1 to one next hop: ${ms(t)}`);
    assertEquals(await nextHops(), [hop(2)]);

    await one.announce([FUNCTION_IP, "198.51.100.11"]);
    assert(await waitUntil(async () => (await nextHops()).length === 2, ROUTE_TIMEOUT_MS), "host1's re-announce");
    assertEquals(await nextHops("198.51.100.11"), [hop(1)]);

    // The process owning host2's BirdAnnouncer dies the hard way: its BIRD must die with it, and the route with that.
    t = performance.now();
    two.kill();
    assert(await waitUntil(() => !pidAlive(two.birdPid), 5_000), "host2's BIRD outlived its owner's SIGKILL");
    assert(await waitUntil(async () => (await nextHops()).length === 1, ROUTE_TIMEOUT_MS), "host2's route stays");
    console.error(`bgp: SIGKILL of host2's announcer to its path gone from the router: ${ms(t)}`);
    assertEquals(await nextHops(), [hop(1)]);

    // A host joining later gets its session (cluster.sh add waits for it).
    t = performance.now();
    assertEquals((await sh("add")).trim(), `http://${hop(3)}:8080`);
    console.error(`bgp: cluster.sh add (containerd, BIRD, session established): ${ms(t)}`);
    const status = await sh("status");
    assertStringIncludes(status, "host3      BGP");
    assert(/host3\s+BGP\s+\S+\s+up\s+\S+\s+Established/.test(status), status);
    assertEquals((await readClusterEnv(dir)).hosts.map((h) => h.index), [1, 2, 3]);

    // cluster.sh kill 1: everything in host1's netns is SIGKILLed and the netns goes.
    t = performance.now();
    await sh("kill", "1");
    console.error(`bgp: cluster.sh kill 1 took ${ms(t)}`);
    assert(!(await netnsNames()).includes("faasd-host1"));
    assertEquals((await readClusterEnv(dir)).hosts.map((h) => h.index), [2, 3]);
    assert(!pidAlive(one.birdPid), "host1's BIRD survived cluster.sh kill");
    assert(await waitUntil(async () => (await nextHops()).length === 0, ROUTE_TIMEOUT_MS), "host1's route stays");
    console.error(`bgp: cluster.sh kill 1 to its route gone: ${ms(t)}`);
    assertEquals(await nextHops("198.51.100.11"), []);

    await sh("down");
    isDown = true;
    assertEquals((await netnsNames()).filter((ns) => ns.startsWith("faasd-")), []);
    assertEquals((await run("ip", ["-o", "link", "show"])).includes("faasd-cl0"), false);
    assertEquals((await run("ip", ["route", "show", "198.51.100.0/24"])).trim(), "");
    assertEquals((await run("ip", ["route", "show", `${net}.0/24`])).trim(), "");
    assertEquals(processesMentioning(dir), []);
    assertEquals(await Deno.stat(dir).then(() => true, () => false), false);
    await sh("down"); // idempotent
  } catch (e) {
    for (const announcer of announcers) announcer.kill();
    for (const [i, announcer] of announcers.entries()) console.error(`announcer ${i + 1}:\n${await announcer.log()}`);
    throw e;
  } finally {
    for (const announcer of announcers) await announcer.dispose();
    if (!isDown) await sh("down").catch((e) => console.error(e));
    await Deno.remove(dir, { recursive: true }).catch(() => {});
  }
});
