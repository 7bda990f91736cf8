import { assert, assertEquals, assertRejects } from "../../tests/assert.ts";
import { BREAKER_FAILURES, type PoolContainer, type PoolOptions, Pools, PoolUnavailableError } from "./pool.ts";
import type { FunctionRecord } from "../registry.ts";
import { deployedImage } from "../../tests/fixtures/deployed.ts";

/** A stand-in container: its start, connection and loss are driven by the test. */
class Fake implements PoolContainer {
  static made: Fake[] = [];
  readonly id: string;
  readonly timeoutMs = 1000;
  readonly image: string;
  removed = false;
  readonly #lost = Promise.withResolvers<void>();
  constructor(readonly record: FunctionRecord, readonly connects: "connected" | "exited" | "timeout") {
    this.id = `c${Fake.made.length}`;
    this.image = record.image!.containerdName;
    Fake.made.push(this);
  }
  waitConnected(): Promise<"connected" | "exited" | "timeout"> {
    return Promise.resolve(this.connects);
  }
  lost(signal: AbortSignal): Promise<void> {
    signal.addEventListener("abort", () => this.#lost.resolve(), { once: true });
    return this.#lost.promise;
  }
  /** The container dies while ready. */
  die(): void {
    this.#lost.resolve();
  }
  remove(): Promise<void> {
    this.removed = true;
    return Promise.resolve();
  }
}

function record(name: string, image = "img:1", settings = {}): FunctionRecord {
  return {
    name,
    ip: "127.0.0.1",
    status: "active",
    imageRef: image,
    image: deployedImage(image, image),
    settings,
    createdAt: "",
    updatedAt: "",
  };
}

const OPTIONS: PoolOptions = {
  connectTimeoutMs: 1000,
  maxConcurrency: 2,
  maxStarting: 4,
  poolMax: 64,
  maxContainers: 100,
  idleMs: 60_000,
  maxAgeMs: 600_000,
  queueTimeoutMs: 200,
  maxQueue: 3,
};

/** Pools whose starts make Fakes; `behaviour` decides how each one's connection ends. */
function pools(opts: Partial<PoolOptions> = {}, behaviour: () => Fake["connects"] = () => "connected") {
  Fake.made = [];
  return new Pools<Fake>((r) => Promise.resolve(new Fake(r, behaviour())), { ...OPTIONS, ...opts });
}

const tick = () => new Promise((r) => setTimeout(r, 0));

/** Why `promise` was refused. */
async function refusal(promise: () => Promise<unknown>): Promise<string> {
  return ((await assertRejects(promise, PoolUnavailableError)) as PoolUnavailableError).reason;
}

Deno.test("Pools keeps min_ready containers ready and hands them out once each, oldest first", async () => {
  const p = pools();
  try {
    p.serve(record("f"), { minReady: 2, maxReady: 4 });
    await tick();
    assertEquals(p.ready("f"), 2);
    const a = await p.acquire("f");
    const b = await p.acquire("f");
    assertEquals([a.container.id, b.container.id], ["c0", "c1"]);
    a.release();
    b.release();
    await tick();
    assert(a.container.removed && b.container.removed, "a used container is removed, never reused");
    assertEquals(p.ready("f"), 2); // refilled
  } finally {
    await p.close();
  }
});

Deno.test("Pools.acquire() queues connections in arrival order within the concurrency limit", async () => {
  const p = pools({ maxConcurrency: 1, queueTimeoutMs: 5000 });
  try {
    p.serve(record("f"), { minReady: 0, maxReady: 4 });
    const order: number[] = [];
    const first = await p.acquire("f");
    const waiting = [1, 2].map((n) => p.acquire("f").then((l) => (order.push(n), l)));
    await tick();
    assertEquals([p.serving("f"), p.waiting("f")], [1, 2]);
    first.release();
    const second = await waiting[0]!;
    second.release();
    (await waiting[1]!).release();
    assertEquals(order, [1, 2]);
  } finally {
    await p.close();
  }
});

Deno.test("Pools.acquire() refuses with 503 reasons: queue full, queue timeout, not served", async () => {
  const p = pools({ maxConcurrency: 1, maxQueue: 1, queueTimeoutMs: 50 });
  try {
    p.serve(record("f"), { minReady: 0, maxReady: 1 });
    const held = await p.acquire("f");
    const waiting = p.acquire("f");
    assertEquals(await refusal(() => p.acquire("f")), "queue-full");
    assertEquals(await refusal(() => waiting), "queue-timeout");
    held.release();
    assertEquals(await refusal(() => p.acquire("nope")), "stopped");
  } finally {
    await p.close();
  }
});

Deno.test("Pools replaces a ready container that dies, never handing it out", async () => {
  const p = pools();
  try {
    p.serve(record("f"), { minReady: 1, maxReady: 1 });
    await tick();
    const dead = Fake.made[0]!;
    dead.die();
    await tick();
    await tick();
    assert(dead.removed);
    const lease = await p.acquire("f");
    assert(lease.container !== dead, "the dead one was handed out");
    lease.release();
  } finally {
    await p.close();
  }
});

Deno.test("Pools opens the breaker after failures before the handoff, refuses fast, and a redeploy closes it", async () => {
  let behaviour: Fake["connects"] = "exited";
  const p = pools({ queueTimeoutMs: 5000 }, () => behaviour);
  try {
    p.serve(record("f"), { minReady: 0, maxReady: 2 });
    assertEquals(await refusal(() => p.acquire("f")), "breaker");
    assert(Fake.made.length >= BREAKER_FAILURES, `${Fake.made.length} starts`);
    assertEquals(p.status("f"), "failing");
    const tried = Fake.made.length;
    assertEquals(await refusal(() => p.acquire("f")), "breaker");
    assertEquals(Fake.made.length, tried, "no start while the breaker is open");
    assert(Fake.made.every((c) => c.removed), "every failed start is removed");
    behaviour = "connected";
    p.serve(record("f", "img:2"), { minReady: 0, maxReady: 2 });
    assertEquals(p.status("f"), null);
    (await p.acquire("f")).release();
  } finally {
    await p.close();
  }
});

Deno.test("Pools.serve() with a new image drains the ready containers: none of the old image is handed out", async () => {
  const p = pools();
  try {
    p.serve(record("f", "img:1"), { minReady: 2, maxReady: 2 });
    await tick();
    const old = [...Fake.made];
    p.serve(record("f", "img:2"), { minReady: 2, maxReady: 2 });
    assert(old.every((c) => c.removed));
    for (let i = 0; i < 3; i++) {
      const lease = await p.acquire("f");
      assertEquals((lease.container as Fake).image, "img:2");
      lease.release();
    }
  } finally {
    await p.close();
  }
});

Deno.test("Pools starts at most max_starting at once and keeps at most pool_max ready across functions", async () => {
  let inFlight = 0;
  let peak = 0;
  Fake.made = [];
  const gate = Promise.withResolvers<void>();
  const p = new Pools<Fake>(async (r) => {
    inFlight++;
    peak = Math.max(peak, inFlight);
    await gate.promise;
    inFlight--;
    return new Fake(r, "connected");
  }, { ...OPTIONS, maxStarting: 2, poolMax: 3 });
  try {
    p.serve(record("f"), { minReady: 4, maxReady: 4 });
    p.serve(record("g"), { minReady: 4, maxReady: 4 });
    await tick();
    assertEquals(peak, 2);
    gate.resolve();
    for (let i = 0; i < 20; i++) await tick();
    assertEquals(p.ready("f") + p.ready("g"), 3);
  } finally {
    await p.close();
  }
});

Deno.test("Pools.stop() removes the ready containers and refuses the waiting connections", async () => {
  const p = pools({ maxConcurrency: 1, queueTimeoutMs: 5000 });
  try {
    p.serve(record("f"), { minReady: 1, maxReady: 2 });
    await tick();
    const held = await p.acquire("f");
    const waiting = p.acquire("f");
    p.stop("f");
    assertEquals(await refusal(() => waiting), "stopped");
    held.release();
    await tick();
    assert(Fake.made.every((c) => c.removed));
    assertEquals(p.containers, 0);
  } finally {
    await p.close();
  }
});

Deno.test("Pools: a container slow to connect (a server not yet listening) holds no start slot", async () => {
  Fake.made = [];
  const never = Promise.withResolvers<"connected" | "exited" | "timeout">();
  const p = new Pools<Fake>((r) => {
    const c = new Fake(r, "connected");
    // Function "slow" is an adapter-mode server that never listens: its containers wait to connect until timed out.
    if (r.name === "slow") c.waitConnected = () => never.promise;
    return Promise.resolve(c);
  }, { ...OPTIONS, maxStarting: 1, queueTimeoutMs: 1000 });
  try {
    p.serve(record("slow"), { minReady: 2, maxReady: 2 });
    p.serve(record("ok"), { minReady: 0, maxReady: 2 });
    await tick();
    const lease = await p.acquire("ok"); // would wait for ever if the slow starts held the only slot
    assertEquals(lease.container.record.name, "ok");
    lease.release();
  } finally {
    never.resolve("timeout");
    await p.close();
  }
});
