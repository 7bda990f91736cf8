import { assert, assertEquals, assertRejects } from "../../tests/assert.ts";
import { type GroupContainer, ShimGroups } from "./shim_groups.ts";
import type { FunctionRecord } from "../registry.ts";
import type { StartOptions } from "./container.ts";
import { deployedImage } from "../../tests/fixtures/deployed.ts";

/** A stand-in container: started with its options recorded; its exit is driven by the test. */
class Fake implements GroupContainer {
  removed = 0;
  readonly #exit = Promise.withResolvers<void>();
  readonly exited = this.#exit.promise;
  constructor(readonly fn: string, readonly options: StartOptions) {}
  exit(): void {
    this.#exit.resolve();
  }
  remove(): Promise<void> {
    this.removed++;
    this.exit();
    this.options.onRemoved?.();
    return Promise.resolve();
  }
}

function record(name: string): FunctionRecord {
  return {
    name,
    ip: "127.0.0.1",
    status: "active",
    imageRef: "img:1",
    image: deployedImage("img:1", "img:1"),
    settings: {},
    createdAt: "",
    updatedAt: "",
  };
}

/** Groups over fakes; `failAnchors` makes every anchor's start fail. */
function groups(size = 3, lingerMs = 30, failAnchors = false, parallel = 1, hold?: Promise<void>) {
  const made: Fake[] = [];
  const g = new ShimGroups<Fake>(async (r, options) => {
    await options.taskAfter; // as RequestContainer.start does before creating the task
    if (!options.anchor) await hold;
    if (options.anchor && failAnchors) throw new Error("cannot create the anchor");
    const c = new Fake(r.name, options);
    made.push(c);
    return c;
  }, { size, lingerMs, parallel });
  const anchors = () => made.filter((c) => c.options.anchor);
  const members = () => made.filter((c) => !c.options.anchor);
  return { g, made, anchors, members };
}

const signal = new AbortController().signal;
const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));

Deno.test("ShimGroups.start() puts a function's containers in one shim group, held by an anchor started first", async () => {
  const { g, anchors, members } = groups(10);
  const a = await g.start(record("f"), signal);
  const b = await g.start(record("f"), signal);
  const other = await g.start(record("other"), signal);
  assertEquals(anchors().length, 2);
  assertEquals(members().length, 3);
  const group = anchors()[0]!.options.shimGroup!;
  assert(group.startsWith("faasd.f."), group);
  assertEquals([a.options.shimGroup, b.options.shimGroup], [group, group]);
  assert(other.options.shimGroup !== group, "another function, another group");
  assertEquals(g.size, 2);
  await g.close();
});

Deno.test("ShimGroups.start() opens a fresh group after `size` members; the old anchor goes with its last member", async () => {
  const { g, anchors } = groups(2);
  const first = [await g.start(record("f"), signal), await g.start(record("f"), signal)];
  const third = await g.start(record("f"), signal);
  assertEquals(anchors().length, 2);
  assert(third.options.shimGroup !== first[0]!.options.shimGroup, "a new group");
  await first[0]!.remove();
  assertEquals(anchors()[0]!.removed, 0, "a member is left: the anchor stays");
  await first[1]!.remove();
  assertEquals(anchors()[0]!.removed, 1);
  assertEquals(anchors()[1]!.removed, 0);
  await g.close();
});

Deno.test("ShimGroups closes a group without members after lingerMs, and keeps it for a member arriving sooner", async () => {
  const { g, anchors } = groups(10, 50);
  await (await g.start(record("f"), signal)).remove();
  await sleep(10);
  const again = await g.start(record("f"), signal); // within the linger: same group
  assertEquals(anchors().length, 1);
  await again.remove();
  await sleep(120);
  assertEquals(anchors()[0]!.removed, 1, "idle: the anchor (and with it the shim) is gone");
  assertEquals(g.size, 0);
  await g.start(record("f"), signal);
  assertEquals(anchors().length, 2, "the next start opens a fresh group");
  await g.close();
});

Deno.test("ShimGroups.start() fails when the anchor cannot be made, and the next start tries a fresh group", async () => {
  const { g, made } = groups(10, 30, true);
  await assertRejects(() => g.start(record("f"), signal), Error, "cannot create the anchor");
  assertEquals(made.length, 0, "no member started without its anchor");
  await assertRejects(() => g.start(record("f"), signal), Error, "cannot create the anchor");
  assertEquals(g.size, 0);
});

Deno.test("ShimGroups: an anchor that exits closes its group to new members", async () => {
  const { g, anchors } = groups(10);
  const a = await g.start(record("f"), signal);
  anchors()[0]!.exit();
  await sleep(0);
  const b = await g.start(record("f"), signal);
  assert(a.options.shimGroup !== b.options.shimGroup, "a fresh group");
  await a.remove();
  assertEquals(anchors()[0]!.removed, 1, "the dead anchor is removed with its last member");
  await g.close();
});

Deno.test("ShimGroups.retire() lets a function's group go with its last member", async () => {
  const { g, anchors } = groups(10, 60_000);
  const a = await g.start(record("f"), signal);
  g.retire("f");
  assertEquals(anchors()[0]!.removed, 0);
  await a.remove();
  assertEquals(anchors()[0]!.removed, 1, "removed at once, not after the linger");
});

Deno.test("ShimGroups with a size below 2 gives every container a shim of its own", async () => {
  const { g, anchors, members } = groups(1);
  const a = await g.start(record("f"), signal);
  assertEquals([anchors().length, members().length, a.options.shimGroup], [0, 1, undefined]);
});

Deno.test("ShimGroups.close() removes every anchor and starts no more groups", async () => {
  const { g, anchors } = groups(10, 60_000);
  const a = await g.start(record("f"), signal);
  await g.start(record("h"), signal);
  await g.close();
  assertEquals(anchors().map((c) => c.removed), [1, 1]);
  assertEquals(g.size, 0);
  const late = await g.start(record("f"), signal);
  assertEquals(late.options.shimGroup, undefined);
  await a.remove();
});

Deno.test("ShimGroups.start() spreads starts in flight over up to `parallel` open groups, and reuses them after", async () => {
  let release = () => {};
  const hold = new Promise<void>((r) => release = r);
  const { g, anchors } = groups(10, 60_000, false, 2, hold);
  const inFlight = [g.start(record("f"), signal), g.start(record("f"), signal), g.start(record("f"), signal)];
  await sleep(0);
  assertEquals(anchors().length, 2, "a second group for the second start in flight; no third past `parallel`");
  release();
  const started = await Promise.all(inFlight);
  const ids = new Set(started.map((c) => c.options.shimGroup));
  assertEquals(ids.size, 2);
  const later = await g.start(record("f"), signal);
  assert(ids.has(later.options.shimGroup), "no start in flight: an open group takes it");
  assertEquals(anchors().length, 2);
  g.retire("f");
  for (const c of [...started, later]) await c.remove();
  assertEquals(anchors().map((a) => a.removed), [1, 1], "retire() closes every open group of the function");
  await g.close();
});
