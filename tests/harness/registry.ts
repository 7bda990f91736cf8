/**
 * A private OCI registry for integration tests: Debian's `docker-registry` (CNCF distribution 2.8) serving plain HTTP
 * on 127.0.0.1 at a random free port, storing blobs in a temp dir, without auth. Everything goes when it stops.
 *
 * Its log (the access log in combined format included) is kept, so that a test can tell which requests a client
 * made ({@linkcode RegistryInstance.requests}).
 *
 * @module
 */

/** A registry the tests can talk to. */
export interface RegistryInstance extends AsyncDisposable {
  /** Base URL, e.g. `http://127.0.0.1:40123`. */
  url: string;
  /** The filesystem driver's root directory (blobs are under `docker/registry/v2/blobs/sha256/<2 hex>/<hex>/data`). */
  storage: string;
  /** The path of a blob's data file in {@linkcode storage}. */
  blobPath(digest: string): string;
  /** The requests the registry served so far, from its access log, in order. */
  requests(): Promise<RegistryRequest[]>;
  /** Stops the registry and removes its temp dir. Idempotent. */
  stop(): Promise<void>;
}

/** One request of the access log. */
export interface RegistryRequest {
  method: string;
  /** Path and query, e.g. `/v2/fn/blobs/sha256:…`. */
  path: string;
  status: number;
}

const BINARY = "/usr/bin/docker-registry";
const READY_TIMEOUT_MS = 15_000;
const STOP_TIMEOUT_MS = 5_000;
/** A port that was free when picked may be taken by the time the registry binds it: pick another this many times. */
const START_ATTEMPTS = 3;

/**
 * Starts a registry and waits until `GET /v2/` answers 200.
 *
 * @throws {Error} when it exits or does not answer in time; the message carries its log.
 */
export async function startRegistry(): Promise<RegistryInstance> {
  const dir = await Deno.makeTempDir({ prefix: "faasd-registry-" });
  let last: unknown;
  for (let attempt = 1; attempt <= START_ATTEMPTS; attempt++) {
    const registry = new PrivateRegistry(dir, freePort());
    try {
      await registry.start();
      return registry;
    } catch (err) {
      last = err;
      await registry.halt();
      if (!/address already in use/.test(String(err))) break;
    }
  }
  await Deno.remove(dir, { recursive: true }).catch(() => {});
  throw last;
}

/** A TCP port of 127.0.0.1 that was free a moment ago. */
function freePort(): number {
  using listener = Deno.listen({ hostname: "127.0.0.1", port: 0 });
  return listener.addr.port;
}

class PrivateRegistry implements RegistryInstance {
  readonly url: string;
  readonly storage: string;
  readonly #dir: string;
  readonly #port: number;
  readonly #config: string;
  readonly #log: string;
  #child: Deno.ChildProcess | undefined;
  #stopped = false;
  readonly #onUnload = () => this.#stopSync();

  constructor(dir: string, port: number) {
    this.#dir = dir;
    this.#port = port;
    this.url = `http://127.0.0.1:${port}`;
    this.storage = `${dir}/storage`;
    this.#config = `${dir}/config.yml`;
    this.#log = `${dir}/registry.log`;
  }

  blobPath(digest: string): string {
    const hex = digest.replace(/^sha256:/, "");
    return `${this.storage}/docker/registry/v2/blobs/sha256/${hex.slice(0, 2)}/${hex}/data`;
  }

  async start(): Promise<void> {
    await Deno.writeTextFile(this.#config, this.#configText());
    await Deno.writeTextFile(this.#log, "");
    globalThis.addEventListener("unload", this.#onUnload);
    // `exec` keeps the pid, so that killing the child kills the registry itself; its output goes to the log file.
    this.#child = new Deno.Command("sh", {
      args: ["-c", 'exec "$1" serve "$2" >>"$3" 2>&1', "sh", BINARY, this.#config, this.#log],
      stdin: "null",
      stdout: "null",
      stderr: "null",
    }).spawn();
    const exited = this.#child.status;
    const deadline = Date.now() + READY_TIMEOUT_MS;
    for (;;) {
      const outcome = await Promise.race([this.#probe(), exited.then(() => "exited" as const)]);
      if (outcome === "ready") return;
      if (outcome === "exited" || Date.now() > deadline) {
        const log = await Deno.readTextFile(this.#log).catch(() => "");
        throw new Error(`docker-registry did not become ready (${outcome}); log:\n${log.slice(-4000)}`);
      }
      await new Promise((r) => setTimeout(r, 50));
    }
  }

  async #probe(): Promise<"ready" | "retry"> {
    try {
      const res = await fetch(`${this.url}/v2/`, { signal: AbortSignal.timeout(1000) });
      await res.body?.cancel();
      return res.status === 200 ? "ready" : "retry";
    } catch {
      return "retry"; // not listening yet
    }
  }

  async requests(): Promise<RegistryRequest[]> {
    const out: RegistryRequest[] = [];
    // Combined log format: 127.0.0.1 - - [date] "PUT /v2/… HTTP/1.1" 201 0 "referer" "agent"
    for (const match of (await Deno.readTextFile(this.#log)).matchAll(/"([A-Z]+) (\S+) HTTP\/[\d.]+" (\d{3}) /g)) {
      out.push({ method: match[1]!, path: match[2]!, status: Number(match[3]) });
    }
    return out;
  }

  /** Stops the process only (the temp dir stays, for another attempt). */
  async halt(): Promise<void> {
    globalThis.removeEventListener("unload", this.#onUnload);
    const child = this.#child;
    if (!child) return;
    this.#child = undefined;
    kill(child, "SIGTERM");
    const timer = setTimeout(() => kill(child, "SIGKILL"), STOP_TIMEOUT_MS);
    await child.status;
    clearTimeout(timer);
  }

  async stop(): Promise<void> {
    if (this.#stopped) return;
    this.#stopped = true;
    await this.halt();
    await Deno.remove(this.#dir, { recursive: true });
  }

  [Symbol.asyncDispose](): Promise<void> {
    return this.stop();
  }

  /** Last-resort cleanup at process exit: synchronous, best effort. */
  #stopSync(): void {
    if (this.#stopped) return;
    this.#stopped = true;
    if (this.#child) kill(this.#child, "SIGKILL");
    try {
      Deno.removeSync(this.#dir, { recursive: true });
    } catch {
      // nothing more to do at exit
    }
  }

  #configText(): string {
    const q = JSON.stringify;
    const secret = Array.from(crypto.getRandomValues(new Uint8Array(16)), (b) => b.toString(16).padStart(2, "0"))
      .join("");
    // JSON strings are YAML scalars.
    return [
      "version: 0.1",
      "log:",
      "  level: warn",
      "  accesslog:",
      "    disabled: false",
      "storage:",
      "  filesystem:",
      `    rootdirectory: ${q(this.storage)}`,
      "  delete:",
      "    enabled: true",
      "  maintenance:",
      "    uploadpurging:",
      "      enabled: false",
      "http:",
      `  addr: ${q(`127.0.0.1:${this.#port}`)}`,
      `  secret: ${q(secret)}`,
      "",
    ].join("\n");
  }
}

function kill(child: Deno.ChildProcess, signal: Deno.Signal): void {
  try {
    child.kill(signal);
  } catch {
    // already exited
  }
}
