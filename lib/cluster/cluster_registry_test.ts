import { assert, assertEquals, assertRejects } from "../../tests/assert.ts";
import { startEtcd } from "../../tests/harness/etcd.ts";
import { waitUntil } from "../../tests/harness/wait.ts";
import { IpPool, PoolExhaustedError } from "../ipam.ts";
import type { DeployedImage } from "../registry.ts";
import { ClusterRegistry } from "./cluster_registry.ts";
import { Etcd, EtcdUnavailableError } from "./etcd.ts";
import { Membership } from "./membership.ts";

function image(digest: string): DeployedImage {
  return {
    imageRef: "localhost/hello:latest",
    containerdName: `faasd.local/functions/x:${digest}`,
    manifestDigest: `sha256:${digest.padEnd(64, "0")}`,
    chainId: `sha256:${"c".repeat(64)}`,
    config: { args: ["/hello"], env: [], cwd: "/", user: "" } as unknown as DeployedImage["config"],
  };
}

Deno.test("ClusterRegistry.deploy() from two hosts at once never hands out one address twice", async () => {
  await using etcd = await startEtcd();
  using a = new Etcd({ endpoints: [etcd.endpoint] });
  using b = new Etcd({ endpoints: [etcd.endpoint] });
  const one = await ClusterRegistry.open(a);
  const two = await ClusterRegistry.open(b);
  try {
    const pool = new IpPool("198.51.100.0/27"); // .10 to .30: 21 addresses
    const deploys = Array.from({ length: 20 }, (_, i) => (i % 2 ? one : two).deploy(`f${i}`, image("a"), pool));
    const results = await Promise.all(deploys);
    const ips = results.map((r) => r.record.ip);
    assertEquals(new Set(ips).size, 20, `addresses handed out twice: ${ips.join(" ")}`);
    assert(results.every((r) => r.created));
    // Each copy learns what the other wrote.
    assert(await waitUntil(() => one.list().length === 20 && two.list().length === 20, 10_000));
    assertEquals(one.list().map((f) => f.ip).sort(), two.list().map((f) => f.ip).sort());
    await one.deploy("last", image("a"), pool);
    await assertRejects(() => two.deploy("full", image("a"), pool), PoolExhaustedError);
  } finally {
    await one.close();
    await two.close();
  }
});

Deno.test("ClusterRegistry.deploy() of an existing name keeps its address and settings; remove() frees it", async () => {
  await using etcd = await startEtcd();
  using client = new Etcd({ endpoints: [etcd.endpoint] });
  const registry = await ClusterRegistry.open(client);
  try {
    const pool = new IpPool("198.51.100.0/24");
    const first = await registry.deploy("hello", image("a"), pool, { minReady: 1 });
    const again = await registry.deploy("hello", image("b"), pool);
    assertEquals(again.created, false);
    assertEquals(again.record.ip, first.record.ip);
    assertEquals(again.record.image?.manifestDigest, image("b").manifestDigest);
    assertEquals(again.record.settings.minReady, 1);
    const updated = await registry.updateSettings("hello", { maxReady: 2 });
    assertEquals(updated?.settings, { minReady: 1, maxReady: 2 });
    assertEquals(await registry.updateSettings("nobody", { maxReady: 2 }), null);
    const removed = await registry.remove("hello");
    assertEquals(removed?.ip, first.record.ip);
    assertEquals(registry.get("hello"), null);
    assertEquals(await registry.remove("hello"), null);
    // The address is free again.
    assertEquals((await registry.deploy("other", image("a"), pool)).record.ip, first.record.ip);
  } finally {
    await registry.close();
  }
});

Deno.test("ClusterRegistry keeps answering from its copy while etcd is down; writes fail with EtcdUnavailableError", async () => {
  await using etcd = await startEtcd();
  using client = new Etcd({ endpoints: [etcd.endpoint], timeoutMs: 2000 });
  using other = new Etcd({ endpoints: [etcd.endpoint] });
  const registry = await ClusterRegistry.open(client);
  try {
    const pool = new IpPool("198.51.100.0/24");
    await registry.deploy("kept", image("a"), pool);
    await etcd.stop();
    assertEquals(registry.list().map((f) => f.name), ["kept"]);
    await assertRejects(() => registry.deploy("new", image("a"), pool), EtcdUnavailableError);
    await etcd.start();
    // A write by someone else after etcd came back reaches the copy: the watch resumed.
    const writer = await ClusterRegistry.open(other);
    await writer.deploy("later", image("a"), pool);
    await writer.close();
    assert(await waitUntil(() => registry.get("later") !== null, 15_000), "the watch did not resume");
  } finally {
    await registry.close();
  }
});

Deno.test("Membership lists the host and what it serves until it leaves", async () => {
  await using etcd = await startEtcd();
  using client = new Etcd({ endpoints: [etcd.endpoint] });
  const registry = await ClusterRegistry.open(client);
  const member = await Membership.join(client, { host: "host1", api: "http://192.0.2.11:8080", ttlSeconds: 5 });
  try {
    assert(await waitUntil(() => registry.hosts().some((h) => h.host === "host1"), 10_000));
    member.setServing("hello", "sha256:abc");
    assert(await waitUntil(() => registry.placements("hello").length === 1, 10_000));
    assertEquals(registry.placements("hello")[0]!.digest, "sha256:abc");
    member.setServing("hello", null);
    assert(await waitUntil(() => registry.placements("hello").length === 0, 10_000));
    member.setServing("hello", "sha256:def");
    assert(await waitUntil(() => registry.placements("hello").length === 1, 10_000));
    await member.close();
    assert(await waitUntil(() => registry.hosts().length === 0 && registry.placements("hello").length === 0, 10_000));
  } finally {
    await member.close();
    await registry.close();
  }
});
