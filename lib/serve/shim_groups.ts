/**
 * Shim groups: a function's containers share one containerd runc shim process instead of starting one each.
 *
 * containerd's runc v2 shim serves every task whose spec carries the same `io.containerd.runc.v2.group` annotation
 * from one process: the first task of a group starts the shim, later ones join it. A shim exits when a task of its
 * group is deleted and no other task remains in it — also when a new member has already been handed the shim's
 * address but not yet created its task, which would then fail. So each group is held by an **anchor**: a container
 * of the function whose task is created but never started (runc's init waits for the start that never comes and runs
 * no code of the function). Members create their tasks only once the anchor's exists, and the anchor is removed only
 * when the group takes no more members and none is left: then the shim exits with it.
 *
 * A group takes `size` members, then the next start opens a fresh group (a shim's lifetime and what one crash takes
 * down stay bounded); a group without members for `lingerMs` closes, so an idle function keeps no shim and no anchor.
 * A group whose anchor exits (killed from outside, its shim crashed) takes no more members.
 *
 * The runc v2 shim creates one task at a time (its service holds one lock through `runc create`, and a task's start
 * waits behind the creates queued before it), so one shared shim leaves the host's other cores idle while a burst
 * starts containers. A function therefore keeps up to `parallel` groups open, and a start goes to the open group with
 * the fewest starts in flight (a fresh group only when each open one has a start in flight).
 *
 * @module
 */

import type { FunctionRecord } from "../registry.ts";
import { randomHex } from "../random.ts";
import type { StartOptions } from "./container.ts";

/** What a group needs of a container. */
export interface GroupContainer {
  /** Settles when the container's process has exited (for an anchor: its waiting init). */
  readonly exited: Promise<unknown>;
  remove(): Promise<void>;
}

/** Starts one container with the given options (container.ts's RequestContainer.start in production). */
export type StartWithOptions<C extends GroupContainer> = (record: FunctionRecord, options: StartOptions) => Promise<C>;

/** How groups are sized. */
export interface ShimGroupOptions {
  /** Members per group before a fresh group is opened; below 2, every container has a shim of its own. */
  size: number;
  /** How long a group without members stays open for the next one. */
  lingerMs: number;
  /** Groups of one function open at once, so that starts need not queue in one shim (default 1). */
  parallel?: number;
}

interface Group<C extends GroupContainer> {
  readonly id: string;
  readonly fn: string;
  /** The anchor, once its task exists; rejects when it could not be made. */
  readonly anchor: Promise<C>;
  /** Members started and not yet removed. */
  members: number;
  /** Members whose start is in flight. */
  starting: number;
  /** Members ever started. */
  joined: number;
  /** Whether it takes new members. */
  open: boolean;
  linger: ReturnType<typeof setTimeout> | undefined;
  removed: Promise<void> | null;
}

/** Every function's shim groups. */
export class ShimGroups<C extends GroupContainer> {
  readonly #start: StartWithOptions<C>;
  readonly #opts: ShimGroupOptions;
  /** The open groups of each function. */
  readonly #open = new Map<string, Group<C>[]>();
  /** Every group with an anchor that is not removed yet. */
  readonly #groups = new Set<Group<C>>();
  #closed = false;

  constructor(start: StartWithOptions<C>, opts: ShimGroupOptions) {
    this.#start = start;
    this.#opts = opts;
  }

  /** Groups whose anchor is not removed yet (one shim each). */
  get size(): number {
    return this.#groups.size;
  }

  /**
   * Starts a container of `record` in the function's open shim group (opening one, with its anchor, if needed).
   *
   * @throws whatever the start throws; also when the group's anchor could not be made (the same causes: containerd
   * refusing, an image that cannot run).
   */
  start(record: FunctionRecord, signal: AbortSignal): Promise<C> {
    if (this.#opts.size < 2 || this.#closed) return this.#start(record, { signal });
    const group = this.#groupFor(record);
    group.members++;
    group.joined++;
    group.starting++;
    clearTimeout(group.linger);
    if (group.joined >= this.#opts.size) this.#closeToMembers(group);
    let left = false;
    const leave = () => {
      if (left) return;
      left = true;
      group.members--;
      this.#afterLeaving(group);
    };
    return this.#start(record, { signal, shimGroup: group.id, taskAfter: group.anchor, onRemoved: leave })
      .catch((e) => {
        leave(); // a start that failed before its container existed never calls onRemoved
        throw e;
      })
      .finally(() => group.starting--);
  }

  /** `name` is no longer served: its open groups take no more members and each goes with its last one. */
  retire(name: string): void {
    for (const group of [...this.#open.get(name) ?? []]) this.#closeToMembers(group);
  }

  /** Takes no more members and removes every anchor (their shims exit once their last member is gone). */
  async close(): Promise<void> {
    this.#closed = true;
    for (const g of [...this.#groups]) {
      this.#closeToMembers(g);
      this.#removeAnchor(g);
    }
    await Promise.all([...this.#groups].map((g) => g.removed));
  }

  #groupFor(record: FunctionRecord): Group<C> {
    const open = this.#open.get(record.name) ?? [];
    let least: Group<C> | undefined;
    for (const g of open) if (!least || g.starting < least.starting) least = g;
    if (least && (least.starting === 0 || open.length >= (this.#opts.parallel ?? 1))) return least;
    const id = `faasd.${record.name}.${randomHex(6)}`;
    const anchor = this.#start(record, { shimGroup: id, anchor: true });
    const group: Group<C> = {
      id,
      fn: record.name,
      anchor,
      members: 0,
      starting: 0,
      joined: 0,
      open: true,
      linger: undefined,
      removed: null,
    };
    this.#open.set(record.name, [...open, group]);
    this.#groups.add(group);
    anchor.then(
      (c) => c.exited.then(() => this.#closeToMembers(group)),
      () => {
        // Nothing to remove (a failed start removed what it made); the members waiting on it fail with it.
        this.#closeToMembers(group);
        group.removed = Promise.resolve();
        this.#groups.delete(group);
      },
    );
    return group;
  }

  /** The group takes no more members; its anchor goes once its last member has. */
  #closeToMembers(group: Group<C>): void {
    if (!group.open) return;
    group.open = false;
    const open = (this.#open.get(group.fn) ?? []).filter((g) => g !== group);
    if (open.length) this.#open.set(group.fn, open);
    else this.#open.delete(group.fn);
    this.#afterLeaving(group);
  }

  #afterLeaving(group: Group<C>): void {
    if (group.members > 0) return;
    if (!group.open) {
      this.#removeAnchor(group);
      return;
    }
    clearTimeout(group.linger);
    group.linger = setTimeout(() => this.#closeToMembers(group), this.#opts.lingerMs);
  }

  #removeAnchor(group: Group<C>): void {
    clearTimeout(group.linger);
    group.removed ??= group.anchor.then((c) => c.remove(), () => {}).finally(() => this.#groups.delete(group));
  }
}
