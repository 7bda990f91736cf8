import { assertEquals } from "../../tests/assert.ts";
import { ADAPTER_PATH, buildSpec, hasSwapAccounting, mergeEnv } from "./spec.ts";

const BASE = {
  cgroupsPath: "/faasd/fn/faasd-test",
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

Deno.test("buildSpec() mounts the root read-only with a bounded /tmp unless the root is writable", () => {
  // deno-lint-ignore no-explicit-any
  const spec = buildSpec({ ...BASE, limits: { scratchBytes: 8 << 20 } }) as any;
  assertEquals(spec.root, { path: "rootfs", readonly: true });
  // deno-lint-ignore no-explicit-any
  const tmp = spec.mounts.find((m: any) => m.destination === "/tmp");
  assertEquals(tmp.type, "tmpfs");
  assertEquals(tmp.options.includes(`size=${8 << 20}`), true);
  // deno-lint-ignore no-explicit-any
  const writable = buildSpec({ ...BASE, rootfs: "writable" }) as any;
  assertEquals(writable.root.readonly, false);
  // deno-lint-ignore no-explicit-any
  assertEquals(writable.mounts.some((m: any) => m.destination === "/tmp"), false);
});

Deno.test("buildSpec() sets a CFS quota for the CPU limit, the cgroup path and the seccomp profile", () => {
  // deno-lint-ignore no-explicit-any
  const spec = buildSpec({ ...BASE, limits: { cpus: 0.5 }, seccomp: { defaultAction: "SCMP_ACT_ERRNO" } }) as any;
  assertEquals(spec.linux.resources.cpu, { quota: 50_000, period: 100_000 });
  assertEquals(spec.linux.cgroupsPath, "/faasd/fn/faasd-test");
  assertEquals(spec.linux.seccomp, { defaultAction: "SCMP_ACT_ERRNO" });
  // deno-lint-ignore no-explicit-any
  const none = buildSpec(BASE) as any;
  assertEquals([none.linux.resources.cpu, none.linux.seccomp], [undefined, undefined]);
});

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

Deno.test("buildSpec() in adapter mode runs the adapter before the image's command and mounts it read-only", () => {
  // deno-lint-ignore no-explicit-any
  const spec = buildSpec({ ...BASE, adapter: { path: "/opt/faasd-adapter", port: 8080, readyTimeoutMs: 2500 } }) as any;
  assertEquals(spec.process.args, [
    ADAPTER_PATH,
    "--port",
    "8080",
    "--ready-timeout-ms",
    "2500",
    "--",
    "/handler",
    "hello",
  ]);
  // deno-lint-ignore no-explicit-any
  const mount = spec.mounts.find((m: any) => m.destination === ADAPTER_PATH);
  assertEquals(mount.source, "/opt/faasd-adapter");
  assertEquals(mount.options.includes("ro"), true);
});

Deno.test("buildSpec() puts the function's env over the image's and mounts secrets read-only", () => {
  const process = { ...BASE.process, env: ["PATH=/bin", "GREETING=hello", "KEEP=1"] };
  const spec = buildSpec({
    ...BASE,
    process,
    env: { GREETING: "hi", NEW: "x" },
    secrets: [{ name: "db", path: "/var/lib/faasd/secrets/db" }],
    // deno-lint-ignore no-explicit-any
  }) as any;
  assertEquals(spec.process.env, ["PATH=/bin", "KEEP=1", "GREETING=hi", "NEW=x"]);
  // deno-lint-ignore no-explicit-any
  const secret = spec.mounts.find((m: any) => m.destination === "/run/secrets/db");
  assertEquals(secret.source, "/var/lib/faasd/secrets/db");
  assertEquals(["bind", "ro", "nosuid", "nodev", "noexec"].every((o) => secret.options.includes(o)), true);
  assertEquals(mergeEnv(["A=1", "B"], { B: "2" }), ["A=1", "B=2"]);
});
