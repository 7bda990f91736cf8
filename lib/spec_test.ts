import { assertEquals } from "../tests/assert.ts";
import { buildSpec, hasSwapAccounting } from "./spec.ts";

const BASE = {
  id: "faasd-test",
  hostname: "fn",
  process: {
    entrypoint: ["/handler"],
    cmd: ["hello"],
    env: [],
    workingDir: "",
    user: "",
    resolvedUser: { uid: 0, gid: 0, additionalGids: [] },
  },
  controlSocket: "/run/faasd/x.sock",
};

// deno-lint-ignore no-explicit-any
const resources = (spec: any) => spec.linux.resources;

Deno.test("buildSpec() sets memory (with swap when accounted) and pids limits, and none for 0", () => {
  const limited = resources(buildSpec({ ...BASE, limits: { memoryBytes: 64 << 20, pids: 32, swapAccounting: true } }));
  assertEquals(limited.memory, { limit: 64 << 20, swap: 64 << 20 });
  assertEquals(limited.pids, { limit: 32 });
  const noSwap = resources(buildSpec({ ...BASE, limits: { memoryBytes: 64 << 20, pids: 0 } }));
  assertEquals([noSwap.memory, noSwap.pids], [{ limit: 64 << 20 }, undefined]);
  const none = resources(buildSpec(BASE));
  assertEquals([none.memory, none.pids], [undefined, undefined]);
});

Deno.test("buildSpec() runs the resolved user, with its supplementary groups", () => {
  const process = { ...BASE.process, user: "app", resolvedUser: { uid: 1000, gid: 1000, additionalGids: [50] } };
  // deno-lint-ignore no-explicit-any
  const spec = buildSpec({ ...BASE, process }) as any;
  assertEquals(spec.process.user, { uid: 1000, gid: 1000, additionalGids: [50] });
});

Deno.test("hasSwapAccounting() tells cgroup v1 with and without memsw, and v2", async () => {
  const root = await Deno.makeTempDir();
  try {
    assertEquals(await hasSwapAccounting(root), false);
    await Deno.mkdir(`${root}/memory`);
    assertEquals(await hasSwapAccounting(root), false);
    await Deno.writeTextFile(`${root}/memory/memory.memsw.limit_in_bytes`, "");
    assertEquals(await hasSwapAccounting(root), true);
    await Deno.remove(`${root}/memory`, { recursive: true });
    await Deno.writeTextFile(`${root}/cgroup.controllers`, "cpuset cpu io memory pids\n");
    assertEquals(await hasSwapAccounting(root), true);
  } finally {
    await Deno.remove(root, { recursive: true });
  }
});
