import { assert, assertEquals } from "../../tests/assert.ts";
import { startEtcd } from "../../tests/harness/etcd.ts";
import { waitUntil } from "../../tests/harness/wait.ts";
import { IpPool } from "../ipam.ts";
import type { DeployedImage, FunctionRecord } from "../registry.ts";
import { ClusterRegistry } from "./cluster_registry.ts";
import { type ClusterImages, Converger } from "./converger.ts";
import { Etcd } from "./etcd.ts";
import { Membership } from "./membership.ts";

function image(tag: string): DeployedImage {
  return {
    imageRef: `localhost/${tag}:latest`,
    containerdName: `faasd.local/functions/x:${tag}`,
    manifestDigest: `sha256:${tag.padEnd(64, "0")}`,
    chainId: `sha256:${"c".repeat(64)}`,
    config: { args: ["/hello"], env: [], cwd: "/", user: "" } as unknown as DeployedImage["config"],
  };
}

/** Records, in order, what the converger asked of this host's images, server, addresses and router. */
class Host implements ClusterImages {
  readonly events: string[] = [];
  readonly local = new Set<string>();
  failPulls = 0;
  announced: string[] = [];
  has(i: DeployedImage): Promise<boolean> {
    return Promise.resolve(this.local.has(i.manifestDigest));
  }
  async pull(record: FunctionRecord): Promise<void> {
    await new Promise((r) => setTimeout(r, 50));
    if (this.failPulls > 0) {
      this.failPulls--;
      this.events.push(`pull-failed ${record.name}`);
      throw new Error("registry down");
    }
    this.local.add(record.image!.manifestDigest);
    this.events.push(`pull ${record.name} ${record.image!.imageRef}`);
  }
  remove(name: string, i: DeployedImage): Promise<void> {
    this.local.delete(i.manifestDigest);
    this.events.push(`remove-image ${name} ${i.imageRef}`);
    return Promise.resolve();
  }
  readonly server = {
    serve: (r: FunctionRecord) => void this.events.push(`serve ${r.name} ${r.image!.imageRef}`),
    stop: (name: string) => void this.events.push(`stop ${name}`),
  };
  readonly addresses = {
    ensure: (ip: string) => (this.events.push(`ensure ${ip}`), Promise.resolve(true)),
    release: (ip: string) => (this.events.push(`release ${ip}`), Promise.resolve()),
  };
  readonly announcer = {
    announce: (ips: Iterable<string>) => {
      this.announced = [...ips].sort();
      this.events.push(`announce ${this.announced.join(",")}`);
      return Promise.resolve();
    },
  };
}

Deno.test("Converger pulls every image before it announces anything, then follows deploys and deletes", async () => {
  await using etcd = await startEtcd();
  using writerClient = new Etcd({ endpoints: [etcd.endpoint] });
  using hostClient = new Etcd({ endpoints: [etcd.endpoint] });
  const writer = await ClusterRegistry.open(writerClient);
  const registry = await ClusterRegistry.open(hostClient);
  const membership = await Membership.join(hostClient, { host: "h", api: "http://192.0.2.9:8080", ttlSeconds: 5 });
  const host = new Host();
  const converger = new Converger({
    registry,
    membership,
    images: host,
    server: host.server,
    addresses: host.addresses,
    announcer: host.announcer,
  });
  const pool = new IpPool("198.51.100.0/24");
  try {
    const a = (await writer.deploy("a", image("a1"), pool)).record;
    const b = (await writer.deploy("b", image("b1"), pool)).record;
    assert(await waitUntil(() => registry.list().length === 2, 10_000));
    host.failPulls = 2; // the first pulls fail (registry down): start() tries again before it announces anything
    await converger.start();
    assertEquals(host.events.filter((e) => e.startsWith("pull-failed")).length, 2);
    const firstAnnounce = host.events.findIndex((e) => e.startsWith("announce"));
    const lastPull = host.events.findLastIndex((e) => e.startsWith("pull "));
    assert(firstAnnounce > lastPull, `announced before every image was pulled: ${host.events.join("; ")}`);
    assertEquals(host.announced, [a.ip, b.ip].sort());
    assert(await waitUntil(() => registry.placements("a").length === 1, 10_000), "serving not recorded in etcd");

    // A new image of a: withdrawn (stopped) before the pull, served after it, the old image removed.
    host.events.length = 0;
    await writer.deploy("a", image("a2"), pool);
    assert(await waitUntil(() => host.events.includes("remove-image a localhost/a1:latest"), 10_000));
    const order = host.events.filter((e) => /^(stop a|pull a|serve a)/.test(e));
    assertEquals(order, ["stop a", "pull a localhost/a2:latest", "serve a localhost/a2:latest"]);
    assert(await waitUntil(() => registry.placements("a")[0]?.digest === image("a2").manifestDigest, 10_000));

    // A delete elsewhere: stopped, address released, image removed, no longer announced or listed as served.
    host.events.length = 0;
    await writer.remove("b");
    assert(await waitUntil(() => host.announced.join() === a.ip, 10_000), host.events.join("; "));
    for (const e of ["stop b", `release ${b.ip}`, "remove-image b localhost/b1:latest"]) {
      assert(host.events.includes(e), `${e} missing from ${host.events.join("; ")}`);
    }
    assert(await waitUntil(() => registry.placements("b").length === 0, 10_000));

    // Closing withdraws everything.
    await converger.close();
    assertEquals(host.announced, []);
  } finally {
    await converger.close();
    await membership.close();
    await registry.close();
    await writer.close();
  }
});
