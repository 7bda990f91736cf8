/**
 * Tests of the etcd client against a real etcd 3.4 started per test (`tests/harness/etcd.ts`).
 *
 * @module
 */

import { assert, assertEquals, assertRejects } from "../../tests/assert.ts";
import { startEtcd } from "../../tests/harness/etcd.ts";
import { waitUntil, within } from "../../tests/harness/wait.ts";
import { Etcd, EtcdCompactedError, EtcdError, EtcdUnavailableError, type WatchEvent } from "./etcd.ts";

/** A URL on which nothing listens (a port just released by the kernel). */
function deadEndpoint(): string {
  const listener = Deno.listen({ hostname: "127.0.0.1", port: 0 });
  const { port } = listener.addr as Deno.NetAddr;
  listener.close();
  return `http://127.0.0.1:${port}`;
}

/** Collects `count` events of `events` (or fails after 20 s). */
async function take(events: AsyncIterator<WatchEvent>, count: number): Promise<WatchEvent[]> {
  const out: WatchEvent[] = [];
  while (out.length < count) {
    const next = await within(20_000, `watch event ${out.length + 1} of ${count}`, events.next());
    if (next.done) throw new Error(`watch ended after ${out.length} events`);
    out.push(next.value);
  }
  return out;
}

const brief = (e: WatchEvent) => `${e.type} ${e.kv.key}=${e.kv.value}`;

Deno.test("get(), put(), delete() and the prefix calls read and write keys", async () => {
  await using etcd = await startEtcd();
  using client = new Etcd({ endpoints: [etcd.endpoint] });

  assertEquals(await client.get("fn/a"), null);
  const rev = await client.put("fn/a", "1");
  await client.put("fn/b", "2");
  await client.put("fn0", "outside");
  const again = await client.put("fn/a", "é3");

  const a = await client.get("fn/a");
  assertEquals(a, { key: "fn/a", value: "é3", createRevision: rev, modRevision: again, version: 2, lease: 0n });

  const listed = await client.getPrefix("fn/");
  assertEquals(listed.kvs.map((kv) => [kv.key, kv.value]), [["fn/a", "é3"], ["fn/b", "2"]]);
  assertEquals(listed.revision, again);
  assertEquals((await client.getPrefix("")).kvs.length, 3);

  assertEquals(await client.delete("fn/a"), true);
  assertEquals(await client.delete("fn/a"), false);
  await client.put("fn/c", "3");
  assertEquals(await client.deletePrefix("fn/"), 2);
  assertEquals((await client.getPrefix("fn")).kvs.map((kv) => kv.key), ["fn0"]);
  await assertRejects(() => client.deletePrefix(""), RangeError);
});

Deno.test("create() makes a key only if absent; of two concurrent creates one loses", async () => {
  await using etcd = await startEtcd();
  using one = new Etcd({ endpoints: [etcd.endpoint] });
  using two = new Etcd({ endpoints: [etcd.endpoint] });

  const outcomes = await Promise.all([one.create("lock", "one"), two.create("lock", "two")]);
  assertEquals(outcomes.filter((won) => won).length, 1);
  const winner = outcomes[0] ? "one" : "two";
  assertEquals((await one.get("lock"))?.value, winner);
  assertEquals(await two.create("lock", "three"), false);
  assertEquals((await one.get("lock"))?.version, 1);
});

Deno.test("putIfModRevision() swaps only while the key is unchanged", async () => {
  await using etcd = await startEtcd();
  using client = new Etcd({ endpoints: [etcd.endpoint] });

  assertEquals(await client.putIfModRevision("cfg", "v0", 0), true, "0 means absent");
  const seen = (await client.get("cfg"))!;
  await client.put("cfg", "changed by someone else");
  assertEquals(await client.putIfModRevision("cfg", "v1", seen.modRevision), false);
  assertEquals((await client.get("cfg"))?.value, "changed by someone else");

  const current = (await client.get("cfg"))!;
  assertEquals(await client.putIfModRevision("cfg", "v2", current.modRevision), true);
  assertEquals((await client.get("cfg"))?.value, "v2");
});

Deno.test("putIfAbsent() puts an IP's key and the record atomically, or nothing when the IP is taken", async () => {
  await using etcd = await startEtcd();
  using client = new Etcd({ endpoints: [etcd.endpoint] });

  const claim = (fn: string) =>
    client.putIfAbsent("ips/192.0.2.10", [
      { key: "ips/192.0.2.10", value: fn },
      { key: `functions/${fn}`, value: JSON.stringify({ ip: "192.0.2.10" }) },
    ]);
  assertEquals(await claim("hello"), true);
  assertEquals(await claim("other"), false);
  assertEquals((await client.get("ips/192.0.2.10"))?.value, "hello");
  assertEquals(await client.get("functions/other"), null);
  const ip = (await client.get("ips/192.0.2.10"))!;
  assertEquals((await client.get("functions/hello"))?.modRevision, ip.modRevision, "one revision: one transaction");
});

Deno.test("deleteIfModRevision() deletes several keys only while the guard key is unchanged", async () => {
  await using etcd = await startEtcd();
  using client = new Etcd({ endpoints: [etcd.endpoint] });

  await client.put("functions/hello", "record");
  await client.put("ips/192.0.2.10", "hello");
  const record = (await client.get("functions/hello"))!;
  await client.put("functions/hello", "record v2");
  const keys = ["functions/hello", "ips/192.0.2.10"];
  assertEquals(await client.deleteIfModRevision("functions/hello", record.modRevision, keys), false);
  assertEquals((await client.getPrefix("")).kvs.length, 2);

  const current = (await client.get("functions/hello"))!;
  assertEquals(await client.deleteIfModRevision("functions/hello", current.modRevision, keys), true);
  assertEquals((await client.getPrefix("")).kvs.length, 0);
});

Deno.test("txn() runs the failure branch when a compare fails and reports each op's result", async () => {
  await using etcd = await startEtcd();
  using client = new Etcd({ endpoints: [etcd.endpoint] });

  await client.put("a/1", "x");
  await client.put("a/2", "y");
  const lost = await client.txn({
    compare: [{ key: "a/1", target: "value", op: "==", value: "not x" }],
    success: [{ type: "delete", key: "a/", prefix: true }],
    failure: [{ type: "get", key: "a/", prefix: true }, { type: "put", key: "b", value: "z" }],
  });
  assertEquals(lost.succeeded, false);
  assertEquals(lost.results.length, 2);
  assert(lost.results[0].type === "get");
  assertEquals(lost.results[0].kvs.map((kv) => kv.value), ["x", "y"]);
  assertEquals(lost.results[1], { type: "put" });

  const won = await client.txn({
    compare: [{ key: "a/1", target: "version", op: ">", value: 0 }, {
      key: "b",
      target: "value",
      op: "==",
      value: "z",
    }],
    success: [{ type: "delete", key: "a/", prefix: true }],
  });
  assertEquals(won.succeeded, true);
  assertEquals(won.results, [{ type: "delete", deleted: 2 }]);
  assertEquals((await client.get("b"))?.modRevision, lost.revision);
  await assertRejects(
    () =>
      client.txn({
        compare: [],
        success: [{ type: "put", key: "k", value: "1" }, { type: "put", key: "k", value: "2" }],
      }),
    EtcdError,
    "duplicate key",
  );
});

Deno.test("a leased key goes when its lease expires, and stays while keepAlive() renews it", async () => {
  await using etcd = await startEtcd();
  using client = new Etcd({ endpoints: [etcd.endpoint] });

  // 1 s is below etcd 3.4's minimum (about 2 s with default heartbeats): etcd grants its minimum.
  const lapsing = await client.grantLease(1);
  const kept = await client.grantLease(1);
  await client.put("lapsing", "x", { lease: lapsing });
  await client.put("kept", "y", { lease: kept });
  assertEquals((await client.get("lapsing"))?.lease, lapsing);

  const stop = new AbortController();
  const ended = client.keepAlive(kept, stop.signal);
  assert(await waitUntil(async () => (await client.get("lapsing")) === null, 15_000), "leased key was not removed");
  // Another few seconds: well past the kept lease's TTL.
  await new Promise((r) => setTimeout(r, 3_000));
  assertEquals((await client.get("kept"))?.value, "y");

  stop.abort();
  assertEquals(await ended, { reason: "aborted" });
  await client.revokeLease(kept);
  assertEquals(await client.get("kept"), null);
  await client.revokeLease(kept); // already gone: no error
});

Deno.test("keepAlive() reports a lease revoked elsewhere as expired", async () => {
  await using etcd = await startEtcd();
  using client = new Etcd({ endpoints: [etcd.endpoint] });

  const lease = await client.grantLease(3);
  const ended = client.keepAlive(lease, new AbortController().signal);
  await client.revokeLease(lease);
  assertEquals(await within(10_000, "keepAlive end", ended), { reason: "expired" });
});

Deno.test("watchPrefix() reports puts and deletes in revision order from a given revision", async () => {
  await using etcd = await startEtcd();
  using client = new Etcd({ endpoints: [etcd.endpoint] });

  await client.put("w/a", "before");
  const { revision } = await client.getPrefix("w/");
  await client.put("w/a", "1"); // after the read, before the watch starts: must still be seen
  const stop = new AbortController();
  const events = client.watchPrefix("w/", { fromRevision: revision + 1, signal: stop.signal })[Symbol.asyncIterator]();
  const first = events.next();
  await client.put("other", "ignored");
  await client.put("w/b", "2");
  await client.delete("w/a");
  await client.put("w/a", "3");

  const seen = [(await within(20_000, "first event", first)).value as WatchEvent, ...await take(events, 3)];
  assertEquals(seen.map(brief), ["put w/a=1", "put w/b=2", "delete w/a=", "put w/a=3"]);
  const revisions = seen.map((e) => e.revision);
  assertEquals(revisions, [...revisions].sort((x, y) => x - y));
  assertEquals(revisions[0], revision + 1);
  assertEquals(seen[2].kv.modRevision, seen[2].revision);

  stop.abort();
  assertEquals((await within(5_000, "end of watch", events.next())).done, true);
});

Deno.test("watchPrefix() resumes across an etcd restart without losing or repeating events", async () => {
  await using etcd = await startEtcd();
  using writer = new Etcd({ endpoints: [etcd.endpoint] });
  using watcher = new Etcd({ endpoints: [etcd.endpoint] });

  const start = await writer.put("r/probe", "0");
  const stop = new AbortController();
  const events = watcher.watchPrefix("r/", { fromRevision: start + 1, signal: stop.signal })[Symbol.asyncIterator]();
  const first = events.next();
  await writer.put("r/probe", "1");
  assertEquals(brief((await within(20_000, "first event", first)).value as WatchEvent), "put r/probe=1");

  // First while the watch is reading when its stream breaks (it reconnects as soon as etcd listens again)...
  const pending = events.next();
  await etcd.stop();
  await etcd.start();
  await writer.put("r/x", "after restart");
  assertEquals(
    brief((await within(20_000, "event after restart", pending)).value as WatchEvent),
    "put r/x=after restart",
  );

  // ...then while it is not: the break is found only after the writes, so they must come from the resumed revision.
  await etcd.stop();
  await etcd.start();
  await writer.put("r/y", "while away");
  await writer.delete("r/probe");
  assertEquals((await take(events, 2)).map(brief), ["put r/y=while away", "delete r/probe="]);
  stop.abort();
  assertEquals((await within(5_000, "end of watch", events.next())).done, true);
});

Deno.test("watchPrefix() ends with EtcdCompactedError from a compacted revision", async () => {
  await using etcd = await startEtcd();
  using client = new Etcd({ endpoints: [etcd.endpoint] });

  const first = await client.put("c/k", "1");
  await client.put("c/k", "2");
  const last = await client.put("c/k", "3");
  await client.compact(last);
  const err = await assertRejects(async () => {
    for await (const _ of client.watchPrefix("c/", { fromRevision: first })) {
      // the watch must fail before any event
    }
  }, EtcdCompactedError);
  assertEquals((err as EtcdCompactedError).compactRevision, last);
});

Deno.test("calls fail with EtcdUnavailableError when etcd is stopped, and keepAlive() reports the lease lost", async () => {
  await using etcd = await startEtcd();
  using client = new Etcd({ endpoints: [etcd.endpoint], timeoutMs: 1_000 });

  const lease = await client.grantLease(2);
  await etcd.stop();
  const ended = client.keepAlive(lease, new AbortController().signal);
  const err = await assertRejects(() => client.get("k"), EtcdUnavailableError);
  assert(err.cause !== undefined, "the error carries its cause");
  await assertRejects(() => client.create("k", "v"), EtcdUnavailableError);
  await assertRejects(
    async () => {
      for await (const _ of client.watchPrefix("", { resumeTimeoutMs: 500 })) {
        // no event can come
      }
    },
    EtcdUnavailableError,
  );
  const end = await within(15_000, "keepAlive end", ended);
  assertEquals(end.reason, "failed");
  assert(end.reason === "failed" && end.error instanceof EtcdUnavailableError);

  await etcd.start();
  assertEquals(await client.get("k"), null, "the same client works again once etcd is back");
});

Deno.test("Etcd moves on to the next endpoint when one is unreachable", async () => {
  await using etcd = await startEtcd();
  using client = new Etcd({ endpoints: [deadEndpoint(), etcd.endpoint] });

  assertEquals(await client.create("k", "v"), true, "a transaction moves on when the first endpoint refused");
  assertEquals((await client.get("k"))?.value, "v");
  const stop = new AbortController();
  const from = await client.put("k", "w");
  const events = client.watchPrefix("k", { fromRevision: from, signal: stop.signal })[Symbol.asyncIterator]();
  const next = events.next();
  assertEquals((await within(20_000, "watch event", next)).value?.kv.value, "w");
  stop.abort();
  await events.return?.();
});

Deno.test("close() is idempotent, ends watches and makes later calls fail", async () => {
  await using etcd = await startEtcd();
  const client = new Etcd({ endpoints: [etcd.endpoint] });
  await client.put("k", "v");
  const events = client.watchPrefix("k")[Symbol.asyncIterator]();
  const next = events.next();
  await new Promise((r) => setTimeout(r, 200));
  client.close();
  client.close();
  assertEquals((await within(5_000, "end of watch", next)).done, true);
  const err = await assertRejects(() => client.get("k"), EtcdError);
  assertEquals((err as EtcdError).codeName, "Canceled");
});

Deno.test("new Etcd() rejects missing or malformed endpoints", () => {
  for (const endpoints of [[], ["127.0.0.1:2379"], ["https://127.0.0.1:2379"], ["http://127.0.0.1"]]) {
    let thrown: unknown;
    try {
      new Etcd({ endpoints });
    } catch (e) {
      thrown = e;
    }
    assert(thrown instanceof TypeError, `endpoints ${JSON.stringify(endpoints)}`);
  }
});
