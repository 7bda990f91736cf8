/**
 * Many hosts (issue 10), end to end: `tools/cluster.sh` builds a router namespace (BIRD with ECMP, etcd, the OCI
 * registry) and hosts as namespaces, each with its own containerd, faasd and BIRD; the test talks to the hosts' APIs
 * and to function addresses through the router, as a client on the machine would.
 *
 * @module
 */

import { assert, assertEquals, assertStringIncludes } from "./assert.ts";
import { curl } from "./curl.ts";
import { buildHandlerImage } from "./harness/images.ts";
import { waitUntil } from "./harness/wait.ts";
import { Cluster, run } from "./harness/faasd_cluster.ts";

/** Sends `n` requests through the router, `parallel` at a time; returns how many were answered 200 "hello". */
async function hit(ip: string, n: number, parallel = 4): Promise<number> {
  let ok = 0;
  let next = 0;
  await Promise.all(Array.from({ length: parallel }, async () => {
    while (next < n) {
      next++;
      const res = await curl(`http://${ip}/`, { timeoutS: 30 });
      if (res.status === 200 && res.body.includes("hello")) ok++;
    }
  }));
  return ok;
}

Deno.test({
  name: "a cluster serves one function set from every host, through etcd, the registry and BGP",
  sanitizeResources: false,
  sanitizeOps: false,
}, async (t) => {
  const hello = await buildHandlerImage("hello");
  const other = await buildHandlerImage("hello", { env: { VARIANT: "other" } });
  await using cluster = await Cluster.up(2);

  let ip = "";
  let digest = "";
  await t.step("a deploy on host 1 is served by both hosts, and connections spread across them", async () => {
    const res = await cluster.deploy(1, "hello", hello);
    assertEquals(res.status, 201, await res.clone().text());
    ip = (await res.json()).ip;
    digest = (await cluster.list(1)).hello!.digest;
    assert(
      await waitUntil(async () => {
        const f = (await cluster.list(2)).hello;
        return f?.hosts.length === 2 && f.hosts.every((h) => h.digest === digest);
      }, 60_000),
      "host 2 did not pull and serve the function",
    );
    assert(
      await waitUntil(async () => (await cluster.nextHops(ip)).length === 2, 30_000),
      `the router has no two next hops for ${ip}: ${await cluster.nextHops(ip)}`,
    );
    assertEquals(await hit(ip, 100), 100);
    // A request is counted once its container is removed, which may come a moment after the client's answer.
    let [one, two] = [0, 0];
    await waitUntil(async () => {
      [one, two] = [await cluster.requests(1, "hello"), await cluster.requests(2, "hello")];
      return one + two >= 100;
    }, 10_000);
    assertEquals(one + two, 100);
    assert(one > 0 && two > 0, `requests per host: ${one} and ${two}`);
  });

  await t.step(
    "a redeploy on host 2 reaches host 1: each host serves the new image once it has pulled it",
    async () => {
      const res = await cluster.deploy(2, "hello", other);
      assertEquals(res.status, 200, await res.clone().text());
      const fresh = (await cluster.list(2)).hello!.digest;
      assert(fresh !== digest, "the redeploy did not change the digest");
      assert(
        await waitUntil(async () => {
          const f = (await cluster.list(1)).hello;
          return f?.hosts.length === 2 && f.hosts.every((h) => h.digest === fresh);
        }, 60_000),
        "host 1 did not move to the new image",
      );
      assert(await waitUntil(async () => (await cluster.nextHops(ip)).length === 2, 30_000));
      assertEquals(await hit(ip, 10), 10);
      digest = fresh;
    },
  );

  await t.step("two deploys at once on two hosts never share an address", async () => {
    const names = ["a1", "a2", "a3", "b1", "b2", "b3"];
    const answers = await Promise.all(names.map((name, i) => cluster.deploy(1 + (i % 2), name, other)));
    const ips = [];
    for (const res of answers) {
      assertEquals(res.status, 201, await res.clone().text());
      ips.push((await res.json()).ip);
    }
    assertEquals(new Set([...ips, ip]).size, names.length + 1, `addresses: ${ips.join(" ")}`);
  });

  await t.step("a delete on host 2 takes effect on both", async () => {
    for (const name of ["a1", "a2", "a3", "b1", "b2"]) {
      assertEquals((await cluster.request(2, "DELETE", `/api/functions/${name}`)).status, 200);
    }
    assert(await waitUntil(async () => Object.keys(await cluster.list(1)).sort().join() === "b3,hello", 30_000));
    const b3 = (await cluster.list(1)).b3!;
    assert(
      await waitUntil(async () => b3.ip !== "" && (await cluster.nextHops(b3.ip)).length === 2, 30_000),
      "b3 is not announced by both hosts",
    );
    const gone = await cluster.list(2);
    assertEquals(Object.keys(gone).sort(), ["b3", "hello"]);
  });

  await t.step("a secret created on one host is there on every host, for deploys anywhere", async () => {
    const created = await cluster.request(2, "POST", "/api/secrets/token", { body: "s3cret" });
    assertEquals(created.status, 201, await created.clone().text());
    assert(
      await waitUntil(async () => (await (await cluster.request(1, "GET", "/api/secrets")).json()).length === 1),
      "host 1 does not list the secret",
    );
    assertEquals((await cluster.request(1, "POST", "/api/secrets/token", { body: "other" })).status, 409);
    const res = await cluster.request(1, "POST", "/api/new?secret=token", {
      headers: { "x-image-name": "withsecret" },
      body: await Deno.readFile(hello),
    });
    assertEquals(res.status, 201, await res.clone().text());
    assertEquals((await cluster.request(2, "DELETE", "/api/secrets/token")).status, 409); // in use
    assertEquals((await cluster.request(2, "DELETE", "/api/functions/withsecret")).status, 200);
    assert(
      await waitUntil(async () => (await cluster.request(1, "DELETE", "/api/secrets/token")).status === 200),
      "the secret could not be deleted once unused",
    );
    assert(
      await waitUntil(async () => (await (await cluster.request(2, "GET", "/api/secrets")).json()).length === 0),
      "host 2 still lists the deleted secret",
    );
  });

  await t.step("a host added later pulls every image before it announces anything", async () => {
    await cluster.sh("add");
    // Whenever host 3 shows up as a next hop, it must already serve every function.
    let announced = false;
    assert(
      await waitUntil(async () => {
        const hops = [...await cluster.nextHops(ip), ...await cluster.nextHops((await cluster.list(1)).b3!.ip)];
        if (!hops.includes(cluster.hop(3))) return false;
        const list = await cluster.list(3);
        for (const f of Object.values(list)) {
          assert(f.hosts.some((h) => h.host === "host3"), `host 3 announced before serving ${JSON.stringify(f)}`);
        }
        announced = true;
        return true;
      }, 90_000),
      "host 3 never announced",
    );
    assert(announced);
    assert(await waitUntil(async () => (await cluster.nextHops(ip)).length === 3, 30_000));
  });

  await t.step("host 2's containerd killed: host 2 withdraws until containerd answers again", async () => {
    await cluster.kill(2, "containerd");
    assert(
      await waitUntil(async () => !(await cluster.nextHops(ip)).includes(cluster.hop(2)), 30_000),
      "host 2 still announces while its containerd is gone",
    );
    assertEquals(await hit(ip, 10), 10);
    await cluster.sh("up", "3"); // starts what is missing: host 2's containerd
    assert(
      await waitUntil(async () => (await cluster.nextHops(ip)).includes(cluster.hop(2)), 30_000),
      "host 2 did not announce again once its containerd was back",
    );
  });

  await t.step("host 3's faasd killed with SIGKILL: its BIRD goes with it; restarted, it serves again", async () => {
    await cluster.kill(3, "faasd");
    assert(
      await waitUntil(async () => !(await cluster.nextHops(ip)).includes(cluster.hop(3)), 30_000),
      "the router still routes to host 3 after its faasd was killed",
    );
    assertEquals(await hit(ip, 10), 10);
    await cluster.sh("up", "3");
    assert(
      await waitUntil(async () => (await cluster.nextHops(ip)).includes(cluster.hop(3)), 60_000),
      "host 3 did not announce again after its faasd restarted",
    );
    assertEquals(await hit(ip, 10), 10);
  });

  await t.step("etcd down: serving goes on, deploys get 503; once it is back, everything converges", async () => {
    await cluster.sh("etcd", "stop");
    try {
      assertEquals(await hit(ip, 10), 10);
      const res = await cluster.deploy(1, "late", other);
      assertEquals(res.status, 503);
      assertStringIncludes(await res.text(), "etcd is unreachable");
    } finally {
      await cluster.sh("etcd", "start");
    }
    assert(
      await waitUntil(async () => (await cluster.deploy(2, "late", other)).status === 201, 60_000),
      "deploys do not work again after etcd came back",
    );
    assert(
      await waitUntil(async () => ((await cluster.list(1)).late?.hosts.length ?? 0) === 3, 60_000),
      "the function deployed after etcd came back is not served by every host",
    );
  });

  await t.step("host 1 killed: its routes go, its lease expires, the function keeps answering", async () => {
    await cluster.sh("kill", "1");
    assert(
      await waitUntil(async () => !(await cluster.nextHops(ip)).includes(cluster.hop(1)), 30_000),
      "the router still routes to host 1",
    );
    assertEquals(await hit(ip, 20), 20);
    assert(
      await waitUntil(async () => {
        const f = (await cluster.list(2)).hello!;
        return !f.hosts.some((h) => h.host === "host1");
      }, 60_000),
      "host 1 is still listed as serving after its lease should have expired",
    );
  });

  await t.step("cluster.sh down leaves no namespace, process, route, mount or cgroup behind", async () => {
    await cluster.sh("down", "--keep");
    const netns = await run(["ip", "netns", "list"]);
    assert(!/faasd-(router|host)/.test(netns), `namespaces left: ${netns}`);
    const routes = await run(["ip", "route", "show", "198.51.100.0/24"]);
    assertEquals(routes.trim(), "");
    const processes = [];
    for await (const entry of Deno.readDir("/proc")) {
      if (!/^\d+$/.test(entry.name)) continue;
      const cmdline = await Deno.readTextFile(`/proc/${entry.name}/cmdline`).catch(() => "");
      if (cmdline.includes(cluster.dir)) processes.push(cmdline.replaceAll("\0", " "));
    }
    assertEquals(processes, []);
    const mounts = await Deno.readTextFile("/proc/self/mountinfo");
    assert(!mounts.includes(cluster.dir), "mounts under the cluster dir are left");
    for (const controller of ["memory", "pids", "cpu", "unified"]) {
      for (const i of [1, 2, 3]) {
        const path = `/sys/fs/cgroup/${controller}/faasd-host${i}`;
        assert(!(await Deno.stat(path).then(() => true, () => false)), `cgroup left: ${path}`);
      }
    }
  });
});
