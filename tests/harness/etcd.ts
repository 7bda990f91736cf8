/**
 * A private etcd for tests: one member with its data dir in a temp dir, client and peer URLs on free random ports of
 * 127.0.0.1. It can be stopped and started again on the same data dir and ports (to test what a restart does to
 * clients), and is stopped and removed by `await using` or `stop()`, and at process exit should a test forget.
 *
 * Readiness is probed over etcd's HTTP `/health` endpoint, not through `lib/cluster/etcd.ts`, so that the harness does
 * not depend on the client it tests.
 *
 * @module
 */

/** An etcd the tests can talk to. */
export interface EtcdInstance extends AsyncDisposable {
  /** The client URL, e.g. `http://127.0.0.1:43121`. */
  endpoint: string;
  /** The data dir (kept across `stop()`/`start()`, removed by `dispose`). */
  dataDir: string;
  /** Stops the etcd process (SIGTERM, SIGKILL after 10 s); the data dir stays. Idempotent. */
  stop(): Promise<void>;
  /**
   * Starts etcd again on the same data dir and ports and waits until it is healthy; a no-op while it runs.
   *
   * @throws {Error} when etcd exits or is not healthy in time (the message carries its log), or after dispose.
   */
  start(): Promise<void>;
}

const READY_TIMEOUT_MS = 15_000;
const STOP_TIMEOUT_MS = 10_000;

/**
 * Starts a private single-member etcd and waits until it reports healthy.
 *
 * @throws {Error} when etcd cannot be started or does not become healthy in time; the message carries its log.
 */
export async function startEtcd(): Promise<EtcdInstance> {
  const dir = await Deno.makeTempDir({ prefix: "faasd-etcd-" });
  const clientPort = freePort();
  let peerPort = freePort();
  while (peerPort === clientPort) peerPort = freePort();
  const instance = new PrivateEtcd(dir, clientPort, peerPort);
  try {
    await instance.start();
    return instance;
  } catch (err) {
    await instance[Symbol.asyncDispose]();
    throw err;
  }
}

/** A port nothing listens on right now (the kernel's pick; another process could take it before etcd binds it). */
function freePort(): number {
  const listener = Deno.listen({ hostname: "127.0.0.1", port: 0 });
  const { port } = listener.addr as Deno.NetAddr;
  listener.close();
  return port;
}

class PrivateEtcd implements EtcdInstance {
  readonly endpoint: string;
  readonly dataDir: string;
  readonly #dir: string;
  readonly #peer: string;
  readonly #log: string;
  #child: Deno.ChildProcess | undefined;
  #disposed = false;
  readonly #onUnload = () => this.#disposeSync();

  constructor(dir: string, clientPort: number, peerPort: number) {
    this.#dir = dir;
    this.dataDir = `${dir}/data`;
    this.#log = `${dir}/etcd.log`;
    this.endpoint = `http://127.0.0.1:${clientPort}`;
    this.#peer = `http://127.0.0.1:${peerPort}`;
    globalThis.addEventListener("unload", this.#onUnload);
  }

  async start(): Promise<void> {
    if (this.#disposed) throw new Error("etcd instance was disposed");
    if (this.#child) return;
    const args = [
      "--name=test",
      `--data-dir=${this.dataDir}`,
      `--listen-client-urls=${this.endpoint}`,
      `--advertise-client-urls=${this.endpoint}`,
      `--listen-peer-urls=${this.#peer}`,
      `--initial-advertise-peer-urls=${this.#peer}`,
      `--initial-cluster=test=${this.#peer}`,
      "--initial-cluster-state=new",
      "--logger=zap",
      "--log-level=warn",
    ];
    // `exec` keeps the pid, so that killing the child kills etcd itself; its output goes to a log file.
    const child = new Deno.Command("sh", {
      args: ["-c", 'log="$1"; shift; exec etcd "$@" >>"$log" 2>&1', "sh", this.#log, ...args],
      stdin: "null",
      stdout: "null",
      stderr: "null",
    }).spawn();
    this.#child = child;
    const exited = child.status.then(() => "exited" as const);
    const deadline = Date.now() + READY_TIMEOUT_MS;
    for (;;) {
      const outcome = await Promise.race([this.#healthy(), exited]);
      if (outcome === true) return;
      if (outcome === "exited" || Date.now() > deadline) {
        if (outcome !== "exited") this.#kill(child, "SIGKILL");
        await child.status;
        this.#child = undefined;
        const log = await Deno.readTextFile(this.#log).catch(() => "");
        throw new Error(`etcd did not become healthy (${outcome}); log:\n${log.slice(-4000)}`);
      }
      await new Promise((r) => setTimeout(r, 50));
    }
  }

  async #healthy(): Promise<boolean> {
    try {
      const res = await fetch(`${this.endpoint}/health`, { signal: AbortSignal.timeout(1000) });
      const body = await res.json() as { health?: string };
      return res.ok && body.health === "true";
    } catch {
      return false;
    }
  }

  async stop(): Promise<void> {
    const child = this.#child;
    if (!child) return;
    this.#kill(child, "SIGTERM");
    const timer = setTimeout(() => this.#kill(child, "SIGKILL"), STOP_TIMEOUT_MS);
    await child.status;
    clearTimeout(timer);
    this.#child = undefined;
  }

  async [Symbol.asyncDispose](): Promise<void> {
    if (this.#disposed) return;
    this.#disposed = true;
    globalThis.removeEventListener("unload", this.#onUnload);
    await this.stop();
    await Deno.remove(this.#dir, { recursive: true });
  }

  #kill(child: Deno.ChildProcess, signal: Deno.Signal): void {
    try {
      child.kill(signal);
    } catch {
      // already exited
    }
  }

  /** Last-resort cleanup at process exit: synchronous, best effort. */
  #disposeSync(): void {
    if (this.#disposed) return;
    this.#disposed = true;
    if (this.#child) this.#kill(this.#child, "SIGKILL");
    try {
      Deno.removeSync(this.#dir, { recursive: true });
    } catch {
      // etcd may still be writing; nothing more to do at exit
    }
  }
}
