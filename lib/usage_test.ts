/**
 * readUsage on fake cgroup trees (v1, v2, missing files, a cgroup gone) and on a real cgroup of this host: a short
 * busy process, then one past its memory limit.
 */

import { assert, assertEquals, assertRejects } from "../tests/assert.ts";
import { type CgroupLayout, detectLayout } from "./cgroups.ts";
import { randomHex } from "./random.ts";
import { readUsage } from "./usage.ts";

const CONTAINER = "/faasd/hello/faasd-0a1b2c";

/** A temporary directory tree holding `files` (path → content). */
async function fakeTree(files: Record<string, string>): Promise<string & AsyncDisposable> {
  const root = await Deno.makeTempDir({ prefix: "faasd-usage-test-" });
  for (const [path, text] of Object.entries(files)) {
    await Deno.mkdir(`${root}${path.replace(/\/[^/]*$/, "")}`, { recursive: true });
    await Deno.writeTextFile(`${root}${path}`, text);
  }
  return Object.assign(root, { [Symbol.asyncDispose]: () => Deno.remove(root, { recursive: true }) });
}

Deno.test("v2: cpu.stat usage_usec, memory.peak, memory.events oom_kill", async () => {
  await using root = await fakeTree({
    [`${CONTAINER}/cpu.stat`]: "usage_usec 123456\nuser_usec 100000\nsystem_usec 23456\n",
    [`${CONTAINER}/memory.peak`]: "35651584\n",
    [`${CONTAINER}/memory.current`]: "1048576\n",
    [`${CONTAINER}/memory.events`]: "low 0\nhigh 0\nmax 4\noom 1\noom_kill 1\noom_group_kill 0\n",
  });
  assertEquals(await readUsage(CONTAINER, { version: 2, root: `${root}` }), {
    cpuSeconds: 0.123456,
    peakMemoryBytes: 35651584,
    oomKilled: true,
    oomKills: 1,
    memorySource: "memory.peak",
  });
});

Deno.test("v2 before Linux 5.19: memory.current stands in for memory.peak, and says so", async () => {
  await using root = await fakeTree({
    [`${CONTAINER}/cpu.stat`]: "usage_usec 5000\n",
    [`${CONTAINER}/memory.current`]: "1048576\n",
    [`${CONTAINER}/memory.events`]: "oom 0\noom_kill 0\n",
  });
  assertEquals(await readUsage(CONTAINER, { version: 2, root: `${root}` }), {
    cpuSeconds: 0.005,
    peakMemoryBytes: 1048576,
    oomKilled: false,
    oomKills: 0,
    memorySource: "memory.current",
  });
});

Deno.test("v2 without the memory controller: CPU only", async () => {
  await using root = await fakeTree({ [`${CONTAINER}/cpu.stat`]: "usage_usec 7\n" });
  assertEquals(await readUsage(`${CONTAINER}/`, { version: 2, root: `${root}` }), {
    cpuSeconds: 0.000007,
    peakMemoryBytes: 0,
    oomKilled: false,
    oomKills: 0,
    memorySource: null,
  });
});

Deno.test("v1: cpuacct.usage (ns), memory.max_usage_in_bytes, memory.oom_control oom_kill", async () => {
  await using root = await fakeTree({
    [`/cpuacct${CONTAINER}/cpuacct.usage`]: "2500000000\n",
    [`/memory${CONTAINER}/memory.max_usage_in_bytes`]: "67108864\n",
    [`/memory${CONTAINER}/memory.oom_control`]: "oom_kill_disable 0\nunder_oom 0\noom_kill 2\n",
    [`/memory${CONTAINER}/memory.failcnt`]: "17\n",
  });
  assertEquals(await readUsage(CONTAINER, { version: 1, root: `${root}` }), {
    cpuSeconds: 2.5,
    peakMemoryBytes: 67108864,
    oomKilled: true,
    oomKills: 2,
    memorySource: "memory.max_usage_in_bytes",
  });
});

Deno.test("v1: cpuacct mounted with cpu as cpu,cpuacct; a kernel without oom_kill counts none", async () => {
  await using root = await fakeTree({
    [`/cpu,cpuacct${CONTAINER}/cpuacct.usage`]: "1000\n",
    [`/memory${CONTAINER}/memory.max_usage_in_bytes`]: "4096\n",
    [`/memory${CONTAINER}/memory.oom_control`]: "oom_kill_disable 0\nunder_oom 0\n",
  });
  assertEquals(await readUsage(CONTAINER, { version: 1, root: `${root}` }), {
    cpuSeconds: 0.000001,
    peakMemoryBytes: 4096,
    oomKilled: false,
    oomKills: 0,
    memorySource: "memory.max_usage_in_bytes",
  });
});

Deno.test("a cgroup that is gone (or never was) reads as null, on v1 and v2", async () => {
  await using root = await fakeTree({ "/memory/faasd/other/x/memory.max_usage_in_bytes": "1\n" });
  assertEquals(await readUsage(CONTAINER, { version: 1, root: `${root}` }), null);
  assertEquals(await readUsage(CONTAINER, { version: 2, root: `${root}` }), null);
  assertEquals(await readUsage(CONTAINER, { version: 2, root: "/nonexistent" }), null);
});

Deno.test("garbled files count as 0 rather than failing", async () => {
  await using root = await fakeTree({
    [`${CONTAINER}/cpu.stat`]: "usage_usec\n",
    [`${CONTAINER}/memory.peak`]: "max\n",
    [`${CONTAINER}/memory.events`]: "",
  });
  const usage = await readUsage(CONTAINER, { version: 2, root: `${root}` });
  assertEquals(usage, {
    cpuSeconds: 0,
    peakMemoryBytes: 0,
    oomKilled: false,
    oomKills: 0,
    memorySource: "memory.peak",
  });
});

Deno.test("a path that is not absolute or climbs out of the root is refused", async () => {
  const layout: CgroupLayout = { version: 2, root: "/nonexistent" };
  for (const bad of ["faasd/x", "/faasd/../etc", "/faasd/./x"]) {
    await assertRejects(() => readUsage(bad, layout), TypeError, "invalid cgroup path");
  }
});

/**
 * A cgroup of this host for one test: created in the memory and cpuacct hierarchies (v1) or in the unified one (v2,
 * its memory and cpu controllers enabled), removed at the end.
 */
async function realCgroup(memoryLimitBytes?: number) {
  const layout = await detectLayout();
  const path = `/faasd-usage-test-${randomHex(4)}`;
  const dirs = layout.version === 2
    ? [`${layout.root}${path}`]
    : [`${layout.root}/memory${path}`, `${layout.root}/cpuacct${path}`];
  if (layout.version === 2) {
    await Deno.writeTextFile(`${layout.root}/cgroup.subtree_control`, "+memory +cpu").catch(() => {});
  }
  for (const d of dirs) await Deno.mkdir(d);
  if (memoryLimitBytes) {
    const limit = String(memoryLimitBytes);
    if (layout.version === 2) {
      await Deno.writeTextFile(`${dirs[0]}/memory.max`, limit);
      await Deno.writeTextFile(`${dirs[0]}/memory.swap.max`, "0").catch(() => {});
    } else {
      await Deno.writeTextFile(`${dirs[0]}/memory.limit_in_bytes`, limit);
      // With swap accounting, swap must be held to the same limit (else the process swaps instead of dying).
      await Deno.writeTextFile(`${dirs[0]}/memory.memsw.limit_in_bytes`, limit).catch(() => {});
    }
  }
  return {
    layout,
    path,
    /** Runs `dd` with a `blockBytes` buffer (allocated and touched) in the cgroup; its exit status. */
    async run(blockBytes: number, count: number): Promise<Deno.CommandStatus> {
      // The shell moves itself into the cgroup before exec: dd's memory and CPU are charged there from its start.
      const script = 'for f; do echo $$ > "$f"; done; exec dd if=/dev/zero of=/dev/null bs=$BS count=$COUNT';
      return await new Deno.Command("sh", {
        args: ["-c", script, "sh", ...dirs.map((d) => `${d}/cgroup.procs`)],
        env: { BS: String(blockBytes), COUNT: String(count) },
        stdout: "null",
        stderr: "null",
      }).output();
    },
    async [Symbol.asyncDispose]() {
      for (const d of dirs) {
        // The exited process's charges move to the parent; a busy cgroup is retried briefly.
        for (let i = 0; i < 50; i++) {
          try {
            await Deno.remove(d);
            break;
          } catch (e) {
            if (e instanceof Deno.errors.NotFound) break;
            await new Promise((r) => setTimeout(r, 20));
          }
        }
      }
    },
  };
}

const root = Deno.uid() === 0;
const MiB = 1024 ** 2;

Deno.test({
  name: "a real cgroup: a busy process's CPU time and peak memory; null once the cgroup is removed",
  ignore: !root,
  async fn() {
    let path: string;
    let layout: CgroupLayout;
    {
      await using cg = await realCgroup();
      ({ path, layout } = cg);
      const status = await cg.run(16 * MiB, 64);
      assert(status.success, `dd exited with ${status.code}`);
      const usage = await readUsage(path, layout);
      assert(usage, "usage of an existing cgroup");
      assert(usage.cpuSeconds > 0, `cpu ${usage.cpuSeconds}`);
      assert(usage.peakMemoryBytes >= 16 * MiB, `peak ${usage.peakMemoryBytes}`);
      assertEquals([usage.oomKilled, usage.oomKills], [false, 0]);
      assert(usage.memorySource === "memory.peak" || usage.memorySource === "memory.max_usage_in_bytes");
    }
    assertEquals(await readUsage(path, layout), null);
  },
});

Deno.test({
  name: "a real cgroup: a process past its memory limit is counted as OOM-killed",
  ignore: !root,
  async fn() {
    await using cg = await realCgroup(8 * MiB);
    const status = await cg.run(64 * MiB, 1);
    assertEquals(status.signal, "SIGKILL");
    const usage = await readUsage(cg.path, cg.layout);
    assert(usage, "usage of an existing cgroup");
    assertEquals([usage.oomKilled, usage.oomKills], [true, 1]);
    assert(usage.peakMemoryBytes > 0 && usage.peakMemoryBytes <= 8 * MiB, `peak ${usage.peakMemoryBytes}`);
  },
});
