/**
 * One request's container, through containerd: a fresh snapshot on the function's image, a container whose only
 * way out is the control socket bind-mounted at `/control.sock`, its task started, and — once it connects — the
 * client's socket handed over with `SCM_RIGHTS`. Preparing a container (up to its connection on the control socket)
 * and handing it a connection are separate steps: the pool (pool.ts) prepares them ahead of demand; the shim groups
 * (shim_groups.ts) start them; the OCI spec comes from spec.ts.
 *
 * Every container, snapshot and lease carries the labels in {@link OWNED_LABELS} (keys: labels.ts); reap.ts finds
 * and removes what a crashed faasd left behind.
 *
 * @module
 */

import { errorText, log } from "../log.ts";
import type { Containerd } from "../containerd/client.ts";
import { answers, untilContainerdAnswers } from "../containerd/availability.ts";
import { isAlreadyExists, isNotFound } from "../containerd/errors.ts";
import type { ExitStatus, Mount } from "../containerd/types.ts";
import type { Poller } from "../../ffi/epoll.ts";
import { type UnixConn, UnixListener } from "../../ffi/socket.ts";
import { PidFd } from "../../ffi/pidfd.ts";
import type { FunctionRecord } from "../registry.ts";
import { buildSpec } from "./spec.ts";
import type { DaemonLimits } from "../config.ts";
import { DEFAULT_READY_TIMEOUT_MS, effectiveLimits } from "../settings.ts";
import { Scratch, writableRootfs } from "../scratch.ts";
import type { ContainerOutput, Logs } from "../logs.ts";
import { randomHex } from "../random.ts";
import { LABELS } from "../labels.ts";
import { withoutHostPaths } from "../images/errors.ts";
import { type ContainerUsage, readUsage } from "../usage.ts";
import { tracedRoot } from "../trace.ts";

/** Labels on every per-request container, snapshot and lease. */
export const OWNED_LABELS = { [LABELS.kind]: "request" } as const;

/** How one container is started. */
export interface StartOptions {
  signal?: AbortSignal;
  /** The runc shim group the task joins (annotation `io.containerd.runc.v2.group`); absent: a shim of its own. */
  shimGroup?: string;
  /** Settles when the task may be created (its shim group's anchor holds the shim); a rejection fails the start. */
  taskAfter?: Promise<unknown>;
  /** Create the task but never start it: the anchor that keeps a shim group's shim alive (shim_groups.ts). */
  anchor?: boolean;
  /** Called once the container is removed (also after a failed start). */
  onRemoved?: () => void;
}

/** What starting and removing containers needs, handed in by the composition root. */
export interface ContainerDeps {
  containerd: Containerd;
  poller: Poller;
  stateDir: string;
  snapshotter: string;
  /** OCI runtime binary used by the runc v2 shim. */
  runtime: string;
  /** containerd's runtime name of the shim (shim.ts): the runc v2 shim, or the path of faasd's. */
  shim: string;
  /** Where container output goes (through a FIFO per container, read by faasd). */
  logs: Logs;
  /** What each container may use, unless its function's settings lower it. */
  limits: DaemonLimits;
  /** Whether the host accounts swap per cgroup (then memory limits cover swap). */
  swapAccounting: boolean;
  /** The cgroup every request container goes under, as `<parent>/<function>/<id>`, e.g. `/faasd`. */
  cgroupParent: string;
  /** The OCI seccomp profile of every container; null: unconfined. */
  seccomp: Record<string, unknown> | null;
  /** Host path of faasd's adapter (adapter.ts), mounted into adapter-mode containers; null: not built. */
  adapter: string | null;
  /** Host path of secret `name`, mounted at `/run/secrets/NAME` (secrets.ts). */
  secretPath: (name: string) => string;
  /** What a started container used (read from its cgroup at removal); `served`: it was handed a client. */
  onUsage?: (fn: string, id: string, usage: ContainerUsage, served: boolean) => void;
}

/** What an adapter-mode container has, past its server's ready timeout, to connect to its control socket. */
const ADAPTER_CONNECT_MARGIN_MS = 5000;

/** Deletes of a task tried before its container record is kept for the next start's reaping. */
const TASK_DELETE_ATTEMPTS = 5;
const TASK_DELETE_RETRY_MS = 1000;

/** How long a task's exit is waited for again while containerd is unreachable (restarting). */
const WAIT_RECONNECT_MS = 60_000;

/** Directory of the per-request control sockets. */
export function socketDir(stateDir: string): string {
  return `${stateDir}/run`;
}

/** How waiting for the container's connection ended. */
export type ConnectOutcome = "connected" | "exited" | "timeout";

/**
 * A container created for one request. Use {@link RequestContainer.start}, then {@link waitConnected}, then
 * {@link handoff}; {@link remove} always, on every path (it is idempotent and never throws).
 */
export class RequestContainer {
  readonly id: string;
  readonly function: string;
  readonly #deps: ContainerDeps;
  readonly #listener: UnixListener;
  #control: UnixConn | null = null;
  #lease: string | null = null;
  #scratch: Scratch | null = null;
  #output: ContainerOutput | null = null;
  /** How long this container may serve its request (the function's timeout setting, or the daemon's). */
  timeoutMs = 0;
  /** When its start began and when it connected (epoch ms): a connection's trace shows the start it waited for. */
  readonly startedAt: number = Date.now();
  connectedAt: number | undefined;
  /**
   * How long it may take to connect to its control socket, when longer than the daemon's: an adapter-mode container
   * connects only once its server listens, within the function's ready timeout.
   */
  connectTimeoutMs: number | undefined;
  #created = false;
  #taskCreated = false;
  /** containerd's word on the exit: what removal waits for (the task can be deleted only once containerd knows). */
  #exited: Promise<ExitStatus> | null = null;
  /** The earliest word on the exit: the kernel's (a pidfd on the epoll loop) or containerd's, whichever comes first. */
  #ended: Promise<void> | null = null;
  #pidfd: PidFd | null = null;
  #hasExited = false;
  /**
   * The kernel reported the container's init gone (its pidfd): the rest of its pid namespace went with it, so there is
   * nothing to kill (a `runc kill` costs a process start), although containerd may not have reported the exit yet.
   */
  #initGone = false;
  #removed: Promise<void> | null = null;
  /** The cgroup of a started container (its usage is read at removal); null: never started. */
  #cgroupsPath: string | null = null;
  #served = false;
  #onRemoved: (() => void) | null = null;

  private constructor(deps: ContainerDeps, fn: string, id: string, listener: UnixListener) {
    this.#deps = deps;
    this.function = fn;
    this.id = id;
    this.#listener = listener;
  }

  /**
   * Creates and starts a container for `fn`. On failure everything created so far is removed before it throws.
   *
   * @throws {TypeError} when the function has no image or the image cannot be run (no command, named user).
   * @throws {ContainerdError} when containerd refuses a step.
   */
  static async start(deps: ContainerDeps, fn: FunctionRecord, options: StartOptions = {}): Promise<RequestContainer> {
    if (!fn.image) throw new TypeError(`function ${fn.name} has no image deployed`);
    options.signal?.throwIfAborted();
    const id = `faasd-${randomHex(10)}`;
    const listener = UnixListener.bind(`${socketDir(deps.stateDir)}/${id}.sock`);
    const c = new RequestContainer(deps, fn.name, id, listener);
    c.#onRemoved = options.onRemoved ?? null;
    try {
      // A trace of its own: a pooled start serves no connection yet (a connection's trace shows the start it waited for).
      await tracedRoot(
        options.anchor ? "shim_anchor.start" : "container.start",
        { function: fn.name, container: id },
        () => c.#create(fn, options),
      );
      return c;
    } catch (e) {
      // The user reads the function's log, not faasd's: say there why (containerd's host paths left out).
      c.#output?.note(`failed to start: ${withoutHostPaths((e as Error).message)}`);
      await c.remove();
      throw e;
    }
  }

  async #create(fn: FunctionRecord, options: StartOptions): Promise<void> {
    const { containerd, snapshotter, runtime, stateDir } = this.#deps;
    const image = fn.image!;
    const labels: Record<string, string> = {
      ...OWNED_LABELS,
      [LABELS.function]: fn.name,
      ...(options.anchor ? { [LABELS.role]: "shim-anchor" } : {}),
    };
    const limits = effectiveLimits(fn.settings, this.#deps.limits);
    const scratchBytes = this.#deps.limits.scratchBytes;
    const cgroupsPath = `${this.#deps.cgroupParent}/${fn.name}/${this.id}`;
    const spec = buildSpec({
      hostname: fn.name,
      process: image.config,
      controlSocket: this.#listener.path,
      cgroupsPath,
      limits: { ...limits, scratchBytes, swapAccounting: this.#deps.swapAccounting },
      rootfs: limits.rootfs,
      seccomp: this.#deps.seccomp,
      shimGroup: options.shimGroup,
      env: fn.settings.env,
      adapter: this.#adapterOf(fn),
      secrets: (fn.settings.secrets ?? []).map((name) => ({ name, path: this.#deps.secretPath(name) })),
    });
    const writable = limits.rootfs === "writable";
    this.timeoutMs = limits.timeoutMs;
    // The lease keeps the new snapshot from being collected before the container references it.
    this.#lease = await containerd.createLease({ labels, expireAfterSeconds: 24 * 3600 });
    const lease = this.#lease;
    // Independent steps run together (they are on the request's critical path); all settle before any failure is
    // thrown, so that remove() knows exactly what exists.
    // A writable root is bounded by faasd (scratch.ts): a read-only view under an upper layer on a sized tmpfs.
    const snapshot = writable
      ? this.#writableRoot(image.chainId, labels, lease, scratchBytes)
      : containerd.prepareSnapshot(snapshotter, this.id, image.chainId, { labels, lease });
    const [prepared, created] = await Promise.allSettled([
      snapshot,
      containerd.createContainer({
        id: this.id,
        image: image.containerdName,
        labels,
        spec,
        snapshotter,
        snapshotKey: this.id,
        runtime: { name: this.#deps.shim, binaryName: runtime },
      }, { lease }),
    ]);
    // A create that failed with the connection (containerd dying mid-call) may still have made the record: removal
    // then tries the delete anyway (NotFound counts as done). Only an id taken by someone else is surely not ours.
    this.#created = created.status === "fulfilled" || !isAlreadyExists(created.reason);
    for (const r of [prepared, created]) if (r.status === "rejected") throw r.reason;
    const rootfs = (prepared as PromiseFulfilledResult<Mount[]>).value;
    // Output goes through a FIFO faasd reads, so the log's cap holds while the container writes (logs.ts).
    this.#output = this.#deps.logs.open(fn.name, this.id, `${socketDir(stateDir)}/${this.id}.log`);
    const out = this.#output.path;
    // Counted as created before the call: a connection reset (containerd dying mid-call) can leave the task created,
    // with its shim and runc init running, although the call failed. Removal must then delete it, and never the
    // container record before it (a task without its container can no longer be deleted through containerd).
    // A shim group's members join its shim only once its anchor holds it (shim_groups.ts).
    await options.taskAfter;
    this.#taskCreated = true;
    await containerd.createTask({ containerId: this.id, rootfs, stdout: out, stderr: out });
    this.#exited = this.#waitForExit();
    this.#exited.then(() => this.#hasExited = true, () => {});
    this.#ended = this.#exited.then(() => {}, () => {});
    if (options.anchor) return; // created, never started: runc's init waits, holding the shim, and runs nothing
    const pid = await containerd.startTask(this.id);
    this.#cgroupsPath = cgroupsPath;
    this.#ended = this.#watchExit(pid);
  }

  /** Adapter mode's options, or undefined for a function under the handler contract. */
  #adapterOf(fn: FunctionRecord): { path: string; port: number; readyTimeoutMs: number } | undefined {
    const port = fn.settings.httpPort;
    if (port === undefined) return undefined;
    if (!this.#deps.adapter) {
      throw new TypeError(
        `function ${fn.name} wants adapter mode, but faasd-adapter is not built here (deno task gen)`,
      );
    }
    const readyTimeoutMs = fn.settings.readyTimeoutMs ?? DEFAULT_READY_TIMEOUT_MS;
    // The container connects once its server listens: the daemon's connect timeout counts from then on.
    this.connectTimeoutMs = readyTimeoutMs + ADAPTER_CONNECT_MARGIN_MS;
    return { path: this.#deps.adapter, port, readyTimeoutMs };
  }

  /** The rootfs of a writable root: a view of the image under an upper layer on a sized tmpfs (scratch.ts). */
  async #writableRoot(chainId: string, labels: Record<string, string>, lease: string, bytes: number): Promise<Mount[]> {
    const { containerd, snapshotter, stateDir } = this.#deps;
    // Both settle before either failure is thrown, so that remove() knows of a scratch mount that was made.
    const [view, scratch] = await Promise.allSettled([
      containerd.viewSnapshot(snapshotter, this.id, chainId, { labels, lease }),
      Scratch.create(stateDir, this.id, bytes),
    ]);
    if (scratch.status === "fulfilled") this.#scratch = scratch.value;
    if (view.status === "rejected") throw view.reason;
    if (scratch.status === "rejected") throw scratch.reason;
    return [writableRootfs(view.value, scratch.value.upper, scratch.value.work)];
  }

  /**
   * Waits for the task's exit. A containerd restart breaks the wait without the task having exited (the shim keeps
   * it running, and containerd finds it again), so an unavailable containerd means: reconnect and wait again.
   */
  async #waitForExit(): Promise<ExitStatus> {
    const deadline = Date.now() + WAIT_RECONNECT_MS;
    while (true) {
      try {
        return await this.#deps.containerd.waitTask(this.id);
      } catch (e) {
        if (isNotFound(e)) return { exitStatus: 255 }; // the task is gone: it exited, status unknown
        if (Date.now() > deadline) throw e;
        await untilContainerdAnswers(this.#deps.containerd, deadline);
      }
    }
  }

  /**
   * Resolves as soon as the kernel reports the container's process gone (a pidfd readable on the epoll loop), or
   * containerd does, whichever is first: the client's end of stream need not wait for containerd's exit event.
   */
  async #watchExit(pid: number): Promise<void> {
    const exited = this.#exited!.then(() => {}, () => {});
    let pidfd: PidFd | null = null;
    try {
      pidfd = PidFd.open(pid);
    } catch { /* no pidfds here: containerd's word only */ }
    if (!pidfd) return await exited;
    this.#pidfd = pidfd;
    const done = new AbortController();
    const seen = this.#deps.poller.wait(pidfd.fd, "read", { signal: done.signal })
      .then((r) => r === "ready" && (this.#initGone = true), () => {});
    try {
      await Promise.race([exited, seen]);
    } finally {
      done.abort();
    }
  }

  /** Resolves when the container's process has exited, as soon as that is known; never rejects. */
  get exited(): Promise<void> {
    return this.#ended ?? Promise.reject(new Error("container not started"));
  }

  /**
   * Waits until the container connects to its control socket, exits, or `timeoutMs` passes.
   */
  async waitConnected(timeoutMs: number, signal?: AbortSignal): Promise<ConnectOutcome> {
    signal?.throwIfAborted();
    const deadline = Date.now() + timeoutMs;
    const exited = this.exited.then(() => "exited" as const, () => "exited" as const);
    while (true) {
      const conn = this.#listener.accept();
      if (conn) {
        this.#control = conn;
        this.connectedAt = Date.now();
        return "connected";
      }
      const left = deadline - Date.now();
      if (left <= 0) return "timeout";
      // The wait ends with this round, whichever way it ends (the caller's abort included).
      const done = new AbortController();
      const stop = signal ? AbortSignal.any([signal, done.signal]) : done.signal;
      try {
        // Aborting a wait rejects it; that rejection is expected once the race is decided, so it maps to a value.
        const ready = this.#deps.poller.wait(this.#listener.fd, "read", { timeoutMs: left, signal: stop })
          .then((r) => r === "ready" ? "again" as const : "timeout" as const, () => "aborted" as const);
        const outcome = await Promise.race([ready, exited]);
        if (outcome === "aborted") throw signal?.reason ?? new Error("aborted");
        // A connection still queued from a process that has exited could not take the socket anyway.
        if (outcome === "exited") return "exited";
        if (outcome === "timeout") return "timeout";
      } finally {
        done.abort();
      }
    }
  }

  /**
   * Settles when the connected container hung up its control connection (or wrote to it, which the handler contract
   * has no use for) or exited; or when `signal` aborts. Never rejects. A ready container watched this way is never
   * handed a client once lost.
   */
  async lost(signal: AbortSignal): Promise<void> {
    if (!this.#control) return;
    // The watch on the control socket ends with this call, whichever way it ends: an exit first must not leave it
    // registered on a descriptor that removal closes (and the kernel hands out again).
    const done = new AbortController();
    const exited = this.exited.then(() => {}, () => {});
    const hungUp = this.#deps.poller.wait(this.#control.fd, "read", { signal: AbortSignal.any([signal, done.signal]) })
      .then(() => {}, () => {});
    try {
      await Promise.race([exited, hungUp]);
    } finally {
      done.abort();
    }
  }

  /**
   * Hands the client socket `fd` to the connected container (`SCM_RIGHTS`, data `SOCKET`). faasd keeps its own
   * reference to the socket; the caller closes it after the container exits.
   *
   * @throws {ErrnoError} when the container hung up before receiving it.
   */
  handoff(fd: number): void {
    if (!this.#control) throw new Error("handoff() before the container connected");
    this.#control.sendFd(fd);
    this.#served = true;
    // The container has what it needs; nothing more travels on the control socket.
    this.#control.close();
    this.#listener.close();
  }

  /** Kills the container's processes (SIGKILL); harmless when already gone. */
  async kill(): Promise<void> {
    if (!this.#taskCreated || this.#hasExited || this.#initGone) return;
    try {
      await this.#deps.containerd.killTask(this.id, 9, { all: true });
    } catch (e) {
      if (!isNotFound(e)) throw e;
    }
  }

  /**
   * Removes the task, container, snapshot, lease and control socket. Idempotent; logs and swallows failures so
   * that one broken step does not keep the others from running.
   */
  remove(): Promise<void> {
    return this.#removed ??= this.#remove().finally(() => this.#onRemoved?.());
  }

  /** Removes it: `await using c = await RequestContainer.start(…)` removes `c` on every path out of the scope. */
  [Symbol.asyncDispose](): Promise<void> {
    return this.remove();
  }

  async #reportUsage(cgroupsPath: string, onUsage: NonNullable<ContainerDeps["onUsage"]>): Promise<void> {
    try {
      const usage = await readUsage(cgroupsPath);
      if (usage) onUsage(this.function, this.id, usage, this.#served);
    } catch (e) {
      log.error("reading usage failed", { function: this.function, container: this.id, error: errorText(e) });
    }
  }

  async #remove(): Promise<void> {
    const { containerd, snapshotter } = this.#deps;
    // Each step is retried while containerd is restarting; an error containerd itself gives is final.
    const deadline = Date.now() + WAIT_RECONNECT_MS;
    /** Runs one step; false when it failed for good (logged). */
    const step = async (what: string, fn: () => Promise<unknown>): Promise<boolean> => {
      while (true) {
        try {
          await fn();
          return true;
        } catch (e) {
          if (isNotFound(e)) return true;
          if (Date.now() < deadline && !(await answers(containerd))) {
            await untilContainerdAnswers(containerd, deadline);
            continue;
          }
          log.error(`cleanup: ${what} failed`, { function: this.function, container: this.id, error: errorText(e) });
          return false;
        }
      }
    };
    await step("close control socket", () => {
      this.#control?.close();
      this.#listener.close();
      return Promise.resolve();
    });
    let taskGone = !this.#taskCreated;
    if (this.#taskCreated) {
      if (!this.#hasExited) {
        await step("kill task", () => this.kill());
        // Without a wait of our own (the create call failed), containerd's word on the exit is asked now.
        await step("wait task", () => this.#exited ?? containerd.waitTask(this.id));
      }
      // The task's cgroup goes with it: what the container used is read first, its processes gone by now.
      if (this.#cgroupsPath && this.#deps.onUsage) await this.#reportUsage(this.#cgroupsPath, this.#deps.onUsage);
      // Around a containerd restart a delete can fail while the task is still being cleaned up after its shim:
      // asked again a few times, so that the container record is not kept for a task that is gone by then.
      for (let attempt = 0; attempt < TASK_DELETE_ATTEMPTS && !taskGone; attempt++) {
        if (attempt > 0) await new Promise((r) => setTimeout(r, TASK_DELETE_RETRY_MS));
        taskGone = await step("delete task", () => containerd.deleteTask(this.id)) ||
          await containerd.getTask(this.id).then((t) => t === null, () => false);
      }
      await step("close pidfd", () => Promise.resolve(this.#pidfd?.close()));
    }
    // A task that could not be deleted keeps its container record, so that the next start's reaping can delete both.
    if (this.#created && taskGone) await step("delete container", () => containerd.deleteContainer(this.id));
    await step("close output", () => this.#output?.close() ?? Promise.resolve());
    await step("unmount scratch", () => this.#scratch?.remove() ?? Promise.resolve());
    if (this.#lease) {
      await step("remove snapshot", () => containerd.removeSnapshot(snapshotter, this.id));
      await step("delete lease", () => containerd.deleteLease(this.#lease!, { sync: false }));
    }
  }
}
