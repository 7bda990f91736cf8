/**
 * Announcing function IPs by BGP through BIRD 2: faasd never speaks BGP itself. It runs its own BIRD and tells it
 * which /32s to announce.
 *
 * The operator writes a BIRD 2 fragment (`--bird-config`) with the router id, `protocol device`, and the BGP sessions
 * to the upstream router(s), whose export filter announces the routes of the static protocol faasd owns,
 * `faasd_functions`:
 *
 *     router id 192.0.2.11;
 *     protocol device {}
 *     protocol bgp upstream {
 *       local 192.0.2.11 as 64501;
 *       neighbor 192.0.2.1 as 64500;
 *       ipv4 { import none; export where proto = "faasd_functions"; };
 *     }
 *
 * faasd writes `<stateDir>/bird/bird.conf`: `log stderr all;` (BIRD's log goes to faasd's), the fragment included,
 * and `faasd_functions` with one blackhole route per function IP (the kernel never sees these, BIRD only announces
 * them; the addresses themselves are local to the host). It starts `bird` as its child, and a change is a rewrite of
 * that file and `birdc configure`, which BIRD applies without touching the BGP sessions.
 *
 * BIRD dies with faasd, even on SIGKILL (`setpriv --pdeathsig KILL`): then its BGP sessions drop and the router
 * withdraws this host's routes at once, instead of sending connections to a host that no longer serves them. The
 * signal comes when the *thread* that spawned BIRD ends, so start it from the main thread (as `Deno.Command` does on
 * the main isolate), not from a Worker that may end before faasd.
 *
 * @module
 */

import { isAbsolute, resolve } from "node:path";

/** The name of the static protocol faasd owns; the operator's export filter selects its routes by it. */
export const STATIC_PROTOCOL = "faasd_functions";

const READY_TIMEOUT_MS = 10_000;
const COMMAND_TIMEOUT_MS = 10_000;
const STOP_TIMEOUT_MS = 5_000;
const POLL_MS = 25;
/** How many of BIRD's last log lines an error carries. */
const OUTPUT_LINES = 40;
/** sockaddr_un's sun_path holds 108 bytes with the terminating NUL. */
const MAX_SOCKET_PATH_BYTES = 107;
/** `birdc -v` reply codes of an accepted `configure`: done, in progress, queued behind one in progress. */
const CONFIGURE_ACCEPTED = /^000[345] /m;
/** `birdc -v show status` reply code of "Daemon is up and running". */
const STATUS_UP = /^0013 /m;

/** BIRD could not be started, refused a configuration, or exited; `output` is what bird or birdc said. */
export class BirdError extends Error {
  /** The output of the failed birdc call, or BIRD's last log lines. */
  readonly output: string;

  constructor(message: string, options?: ErrorOptions & { output?: string }) {
    const output = options?.output?.trim() ?? "";
    super(output ? `${message}:\n${output}` : message, options);
    this.name = "BirdError";
    this.output = output;
  }
}

/** What {@linkcode BirdAnnouncer.start} needs. */
export interface BirdAnnouncerOptions {
  /** The operator's BIRD 2 fragment: router id, `protocol device`, BGP sessions exporting `faasd_functions`. */
  operatorConfig: string;
  /** faasd's state dir: BIRD's config, control socket and pid file go to `<stateDir>/bird/`. */
  stateDir: string;
  /** The `bird` binary (default `bird`, from `PATH`). */
  birdPath?: string;
  /** The `birdc` binary (default `birdc`, from `PATH`). */
  birdcPath?: string;
  /** Receives each line BIRD logs (its stderr), e.g. to pass into faasd's log. */
  onLog?: (line: string) => void;
}

/**
 * The text of faasd's BIRD config: `log stderr all;`, the operator's fragment included, and the static protocol
 * `faasd_functions` with one `/32 blackhole` route per address, in numeric order, each once. With no address the
 * protocol is empty, which BIRD accepts.
 *
 * @throws {TypeError} when `operatorConfig` is not an absolute path (BIRD resolves relative includes against the
 *   including file's directory) or contains `"`, `\` or a line break, or when an address is not a dotted-quad IPv4
 *   address.
 */
export function birdConfigText(operatorConfig: string, ips: Iterable<string>): string {
  if (!isAbsolute(operatorConfig)) {
    throw new TypeError(`the BIRD config fragment path must be absolute: ${JSON.stringify(operatorConfig)}`);
  }
  if (/["\\\n\r]/.test(operatorConfig)) {
    throw new TypeError(`the BIRD config fragment path cannot hold ", \\ or a line break: ${operatorConfig}`);
  }
  return [
    "# Written by faasd (lib/cluster/bird.ts), rewritten at every change of its function IPs: edit the included file.",
    "log stderr all;",
    `include "${operatorConfig}";`,
    "",
    `protocol static ${STATIC_PROTOCOL} {`,
    "  ipv4;",
    ...sortedIps(ips).map((ip) => `  route ${ip}/32 blackhole;`),
    "}",
    "",
  ].join("\n");
}

/** `ips` validated, without duplicates, in numeric order. */
function sortedIps(ips: Iterable<string>): string[] {
  const numbers = new Map<number, string>();
  for (const ip of ips) numbers.set(ipv4Number(ip), ip);
  return [...numbers.keys()].sort((a, b) => a - b).map((n) => numbers.get(n)!);
}

const OCTET = "(25[0-5]|2[0-4][0-9]|1[0-9][0-9]|[1-9]?[0-9])";
const IPV4 = new RegExp(`^${OCTET}\\.${OCTET}\\.${OCTET}\\.${OCTET}$`);

function ipv4Number(ip: string): number {
  if (typeof ip !== "string" || !IPV4.test(ip)) throw new TypeError(`not an IPv4 address: ${JSON.stringify(ip)}`);
  return ip.split(".").reduce((n, octet) => n * 256 + Number(octet), 0);
}

/**
 * A BIRD run by faasd that announces the function IPs it is given. Changes are serialized and coalesced: a burst of
 * {@linkcode announce} calls makes at most one reconfiguration in flight plus one pending, and that pending one
 * applies the set of the latest call. Dispose with `await using` or {@linkcode close}.
 */
export class BirdAnnouncer implements AsyncDisposable {
  /** `<stateDir>/bird/bird.conf`, the file BIRD runs (faasd's part and the operator's include). */
  readonly configPath: string;
  /** BIRD's control socket, for `birdc -s`. */
  readonly socketPath: string;
  /** BIRD's pid. */
  readonly pid: number;
  /**
   * Resolves when BIRD exits by itself (it crashed, or someone killed it), with an error that says how and carries
   * its last log lines; stays pending when {@linkcode close} stops it. Every {@linkcode announce} fails from then on.
   */
  readonly died: Promise<BirdError>;

  readonly #operatorConfig: string;
  readonly #pidFile: string;
  readonly #birdcPath: string;
  readonly #child: Deno.ChildProcess;
  readonly #log: string[] = [];
  readonly #exited: Promise<Deno.CommandStatus>;
  #exitError: BirdError | undefined;
  #announced: readonly string[] = [];
  #wanted: string[] = [];
  /** The reconfiguration in flight. */
  #current: Promise<void> | undefined;
  /** The one after it, shared by every call made meanwhile. */
  #next: Promise<void> | undefined;
  #closing: Promise<void> | undefined;

  private constructor(
    paths: { config: string; socket: string; pidFile: string; operatorConfig: string; birdc: string },
    child: Deno.ChildProcess,
    onLog: ((line: string) => void) | undefined,
  ) {
    this.configPath = paths.config;
    this.socketPath = paths.socket;
    this.#pidFile = paths.pidFile;
    this.#operatorConfig = paths.operatorConfig;
    this.#birdcPath = paths.birdc;
    this.#child = child;
    this.pid = child.pid;
    const logged = this.#readLog(child.stderr, onLog);
    this.#exited = child.status.then(async (status) => {
      await logged;
      this.#exitError = new BirdError(`bird exited (${describeStatus(status)})`, { output: this.#output() });
      return status;
    });
    this.died = this.#exited.then(() => this.#closing ? new Promise<never>(() => {}) : this.#exitError!);
  }

  /**
   * Writes `<stateDir>/bird/bird.conf` with nothing announced, starts BIRD (bound to die with this process), and
   * waits until it answers on its control socket. A BIRD left running from an earlier faasd with the same state dir
   * (found by its pid file) is killed first.
   *
   * @throws {TypeError} for a bad `operatorConfig` path (see {@linkcode birdConfigText}).
   * @throws {RangeError} when the control socket path would be too long for a Unix socket.
   * @throws {BirdError} when BIRD cannot be started, exits (e.g. on an error in the fragment: the message carries
   *   BIRD's), or does not answer within 10 s.
   */
  static async start(options: BirdAnnouncerOptions): Promise<BirdAnnouncer> {
    const operatorConfig = resolve(options.operatorConfig);
    const dir = resolve(options.stateDir, "bird");
    const paths = {
      config: `${dir}/bird.conf`,
      socket: `${dir}/bird.ctl`,
      pidFile: `${dir}/bird.pid`,
      operatorConfig,
      birdc: options.birdcPath ?? "birdc",
    };
    if (new TextEncoder().encode(paths.socket).length > MAX_SOCKET_PATH_BYTES) {
      throw new RangeError(`BIRD's control socket path is too long for a Unix socket: ${paths.socket}`);
    }
    const text = birdConfigText(operatorConfig, []);
    await Deno.mkdir(dir, { recursive: true });
    await killLeftover(paths.pidFile, paths.config);
    await writeAtomically(paths.config, text);
    // A stale socket would let the readiness probe reach nothing (or an old BIRD); BIRD binds a fresh one.
    await Deno.remove(paths.socket).catch(() => {});

    const bird = options.birdPath ?? "bird";
    let child: Deno.ChildProcess;
    try {
      child = new Deno.Command("setpriv", {
        args: ["--pdeathsig", "KILL", "--", bird, "-f", "-c", paths.config, "-s", paths.socket],
        stdin: "null",
        stdout: "null",
        stderr: "piped",
      }).spawn();
    } catch (e) {
      throw new BirdError(`cannot start ${bird} through setpriv (util-linux)`, { cause: e });
    }
    const announcer = new BirdAnnouncer(paths, child, options.onLog);
    try {
      await Deno.writeTextFile(paths.pidFile, `${child.pid}\n`);
      await announcer.#waitReady();
    } catch (e) {
      await announcer.close();
      throw e;
    }
    return announcer;
  }

  /** The addresses BIRD was last configured with successfully, in numeric order. */
  get announced(): readonly string[] {
    return this.#announced;
  }

  /**
   * Makes BIRD announce exactly `ips` (dotted-quad IPv4 addresses, each as a /32): rewrites the config atomically and
   * runs `birdc configure`. Resolves once BIRD accepted that set or a later one given meanwhile.
   *
   * @throws {TypeError} when an address is not a dotted-quad IPv4 address.
   * @throws {BirdError} when BIRD refuses the configuration (the message carries birdc's answer; BIRD keeps the
   *   previous one), birdc fails or times out (10 s), BIRD is not running, or the announcer is closed.
   */
  announce(ips: Iterable<string>): Promise<void> {
    let wanted: string[];
    try {
      wanted = sortedIps(ips);
    } catch (e) {
      return Promise.reject(e);
    }
    if (this.#closing) return Promise.reject(new BirdError("the BIRD announcer is closed"));
    this.#wanted = wanted;
    this.#next ??= this.#nextRound();
    return this.#next;
  }

  /**
   * Announces nothing (BGP withdraws every function route of this host).
   *
   * @throws {BirdError} as {@linkcode announce}.
   */
  withdrawAll(): Promise<void> {
    return this.announce([]);
  }

  /**
   * Lets a reconfiguration in flight finish, then stops BIRD (SIGTERM: it closes its BGP sessions, which withdraws
   * the routes; SIGKILL after 5 s). Idempotent.
   */
  close(): Promise<void> {
    this.#closing ??= this.#stop();
    return this.#closing;
  }

  [Symbol.asyncDispose](): Promise<void> {
    return this.close();
  }

  #nextRound(): Promise<void> {
    const previous = this.#current ?? Promise.resolve();
    const round: Promise<void> = previous.catch(() => {}).then(() => {
      // Calls from here on wait for the round after this one.
      this.#next = undefined;
      this.#current = round;
      return this.#configure(this.#wanted);
    }).finally(() => {
      if (this.#current === round) this.#current = undefined;
    });
    return round;
  }

  async #configure(ips: string[]): Promise<void> {
    if (this.#closing) throw new BirdError("the BIRD announcer is closed");
    if (this.#exitError) throw new BirdError("bird is not running", { cause: this.#exitError });
    await writeAtomically(this.configPath, birdConfigText(this.#operatorConfig, ips));
    const answer = await this.#birdc("configure");
    if (!CONFIGURE_ACCEPTED.test(answer.text)) {
      throw new BirdError("bird refused its new configuration", { output: answer.text });
    }
    this.#announced = Object.freeze(ips);
  }

  async #waitReady(): Promise<void> {
    const deadline = Date.now() + READY_TIMEOUT_MS;
    let last = "";
    for (;;) {
      const exited = this.#exitError;
      if (exited) throw new BirdError(`bird exited while starting`, { output: exited.output, cause: exited });
      last = (await this.#birdc("show", "status")).text;
      if (STATUS_UP.test(last)) return;
      if (Date.now() > deadline) {
        throw new BirdError(`bird did not answer on ${this.socketPath} within ${READY_TIMEOUT_MS} ms`, {
          output: `${last}\n${this.#output()}`,
        });
      }
      await Promise.race([new Promise((r) => setTimeout(r, POLL_MS)), this.#exited]);
    }
  }

  /** Runs `birdc -v -s SOCKET ...args` (numbered reply lines); a failed command is in the text, not thrown. */
  async #birdc(...args: string[]): Promise<{ success: boolean; text: string }> {
    let out: Deno.CommandOutput;
    try {
      out = await new Deno.Command(this.#birdcPath, {
        args: ["-v", "-s", this.socketPath, ...args],
        stdin: "null",
        stdout: "piped",
        stderr: "piped",
        signal: AbortSignal.timeout(COMMAND_TIMEOUT_MS),
      }).output();
    } catch (e) {
      throw new BirdError(`cannot run ${this.#birdcPath} ${args.join(" ")}`, { cause: e });
    }
    const decoder = new TextDecoder();
    const text = `${decoder.decode(out.stdout)}${decoder.decode(out.stderr)}`;
    if (out.signal) {
      throw new BirdError(`${this.#birdcPath} ${args.join(" ")} was killed (${out.signal}, timeout?)`, {
        output: text,
      });
    }
    return { success: out.success, text };
  }

  async #stop(): Promise<void> {
    await this.#current?.catch(() => {});
    if (!this.#exitError) {
      signal(this.#child, "SIGTERM");
      const timer = setTimeout(() => signal(this.#child, "SIGKILL"), STOP_TIMEOUT_MS);
      await this.#exited;
      clearTimeout(timer);
    } else {
      await this.#exited;
    }
    await Deno.remove(this.#pidFile).catch(() => {});
  }

  async #readLog(stream: ReadableStream<Uint8Array>, onLog: ((line: string) => void) | undefined): Promise<void> {
    let partial = "";
    const take = (line: string) => {
      this.#log.push(line);
      if (this.#log.length > OUTPUT_LINES) this.#log.shift();
      try {
        onLog?.(line);
      } catch {
        // a failing log sink must not stop the reading, or BIRD would block on a full pipe
      }
    };
    try {
      for await (const chunk of stream.pipeThrough(new TextDecoderStream())) {
        const lines = (partial + chunk).split("\n");
        partial = lines.pop()!;
        for (const line of lines) take(line);
      }
    } catch {
      // the pipe broke: BIRD is gone, which the exit status reports
    }
    if (partial) take(partial);
  }

  #output(): string {
    return this.#log.join("\n");
  }
}

function describeStatus(status: Deno.CommandStatus): string {
  return status.signal ? `signal ${status.signal}` : `code ${status.code}`;
}

function signal(child: Deno.ChildProcess, sig: Deno.Signal): void {
  try {
    child.kill(sig);
  } catch {
    // exited already
  }
}

/** Writes `path` through a temp file and a rename, so that BIRD never reads half a file. */
async function writeAtomically(path: string, text: string): Promise<void> {
  const temp = `${path}.tmp`;
  await Deno.writeTextFile(temp, text);
  await Deno.rename(temp, path);
}

/**
 * Kills the BIRD that an earlier faasd with this state dir left (its pid file names it, and its command line names
 * `config`: a pid reused by another process is left alone), and waits until it is gone.
 */
async function killLeftover(pidFile: string, config: string): Promise<void> {
  const pid = Number((await Deno.readTextFile(pidFile).catch(() => "")).trim());
  if (!Number.isInteger(pid) || pid <= 1) return;
  const runsConfig = async () =>
    (await Deno.readTextFile(`/proc/${pid}/cmdline`).catch(() => "")).split("\0").includes(config);
  if (!await runsConfig()) return;
  try {
    Deno.kill(pid, "SIGKILL");
  } catch {
    return;
  }
  // Not our child, so no status to await: a zombie's cmdline is empty, which counts as gone.
  const deadline = Date.now() + STOP_TIMEOUT_MS;
  while (await runsConfig()) {
    if (Date.now() > deadline) throw new BirdError(`a BIRD left by an earlier run (pid ${pid}) survives SIGKILL`);
    await new Promise((r) => setTimeout(r, POLL_MS));
  }
}
