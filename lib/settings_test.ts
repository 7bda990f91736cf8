import { assertEquals, assertThrows } from "../tests/assert.ts";
import type { DaemonLimits } from "./config.ts";
import {
  effectiveLimits,
  formatDuration,
  formatSize,
  type FunctionSettings,
  mergeSettings,
  parseSettings,
  poolSizing,
  SETTING_KEYS,
  SettingsError,
  settingsJson,
  type SettingsPatch,
} from "./settings.ts";

const MiB = 1024 ** 2;
const daemon: DaemonLimits = {
  memoryBytes: 512 * MiB,
  pids: 256,
  cpus: 1,
  scratchBytes: 64 * MiB,
  timeoutMs: 60_000,
  poolMax: 64,
};
const unlimited: DaemonLimits = { memoryBytes: 0, pids: 0, cpus: 0, scratchBytes: 64 * MiB, timeoutMs: 0, poolMax: 64 };

Deno.test("parseSettings() reads text (query parameters) and JSON numbers alike", () => {
  const fromText = { memory: "256MiB", cpu: "0.5", pids: "64", timeout: "30s", rootfs: "writable" };
  const fromJson = { memory: 256 * MiB, cpu: 0.5, pids: 64, timeout: 30_000, rootfs: "writable" };
  const expected = { memoryBytes: 256 * MiB, cpus: 0.5, pids: 64, timeoutMs: 30_000, rootfs: "writable" as const };
  assertEquals(parseSettings(fromText, daemon), expected);
  assertEquals(parseSettings(fromJson, daemon), expected);
  assertEquals(parseSettings({ timeout: "500ms", rootfs: "readonly" }, daemon), { timeoutMs: 500, rootfs: "readonly" });
  assertEquals(parseSettings({}, daemon), {});
});

Deno.test("parseSettings() keeps null as a return to the daemon's default", () => {
  assertEquals(parseSettings({ memory: null, timeout: null, cpu: 0.25 }, daemon), {
    memoryBytes: null,
    timeoutMs: null,
    cpus: 0.25,
  });
});

Deno.test("parseSettings() refuses an unknown key, naming it and the known ones", () => {
  assertThrows(
    () => parseSettings({ memroy: "1MiB" }, daemon),
    TypeError,
    'unknown setting "memroy": known are memory, cpu, pids, timeout, rootfs, min_ready, max_ready',
  );
  // Keys of Object.prototype are not settings either.
  assertThrows(() => parseSettings({ constructor: 1 }, daemon), TypeError, 'unknown setting "constructor"');
  assertEquals(SETTING_KEYS, [
    "memory",
    "cpu",
    "pids",
    "timeout",
    "rootfs",
    "min_ready",
    "max_ready",
    "http_port",
    "ready_timeout",
    "env",
    "secrets",
  ]);
});

Deno.test("parseSettings() refuses values above the daemon's limits, naming the flag", () => {
  const cases: [Record<string, unknown>, string][] = [
    [{ memory: "1GiB" }, "memory 1GiB is above the daemon's --memory-limit of 512MiB"],
    [{ memory: 1024 * MiB }, "memory 1GiB is above the daemon's --memory-limit of 512MiB"],
    [{ cpu: 2 }, "cpu 2 is above the daemon's --cpu-limit of 1"],
    [{ pids: "1000" }, "pids 1000 is above the daemon's --pids-limit of 256"],
    [{ timeout: "5m" }, "timeout 5m is above the daemon's --request-timeout of 1m"],
  ];
  for (const [fields, message] of cases) assertThrows(() => parseSettings(fields, daemon), TypeError, message);
  // Exactly the daemon's limit is allowed.
  assertEquals(parseSettings({ memory: "512MiB", cpu: 1, pids: 256, timeout: "60s" }, daemon), {
    memoryBytes: 512 * MiB,
    cpus: 1,
    pids: 256,
    timeoutMs: 60_000,
  });
});

Deno.test("parseSettings() has no ceiling where the daemon has no limit (0)", () => {
  assertEquals(parseSettings({ memory: "64GiB", cpu: 64, pids: 100_000, timeout: "24h" }, unlimited), {
    memoryBytes: 64 * 1024 * MiB,
    cpus: 64,
    pids: 100_000,
    timeoutMs: 86_400_000,
  });
});

Deno.test("parseSettings() refuses 0 (no limit) and values below the minimum", () => {
  for (const key of ["memory", "cpu", "pids", "timeout"]) {
    for (const d of [daemon, unlimited]) {
      assertThrows(() => parseSettings({ [key]: 0 }, d), TypeError, `${key} 0 (no limit) cannot be set for a function`);
      assertThrows(() => parseSettings({ [key]: "0" }, d), TypeError, `set null for the daemon's --`);
    }
  }
  assertThrows(() => parseSettings({ memory: "1MiB" }, daemon), TypeError, "memory 1MiB is below the minimum of 4MiB");
  assertThrows(() => parseSettings({ cpu: "0.001" }, daemon), TypeError, "cpu 0.001 is below the minimum of 0.01");
  assertThrows(() => parseSettings({ timeout: 0.2 }, daemon), TypeError, "timeout 0 (no limit)");
  assertEquals(parseSettings({ memory: "4MiB", cpu: "0.01", pids: 1, timeout: 1 }, daemon), {
    memoryBytes: 4 * MiB,
    cpus: 0.01,
    pids: 1,
    timeoutMs: 1,
  });
});

Deno.test("parseSettings() refuses malformed values with a message naming the key", () => {
  const cases: [Record<string, unknown>, string][] = [
    [{ memory: "lots" }, 'invalid size for memory: "lots"'],
    [{ memory: true }, "invalid memory true"],
    [{ memory: -1 }, "invalid memory -1"],
    [{ memory: 1.5 }, "invalid memory 1.5"],
    [{ cpu: "half" }, 'invalid cpu "half"'],
    [{ cpu: -1 }, "invalid cpu -1"],
    [{ cpu: {} }, "invalid cpu {}"],
    [{ pids: 1.5 }, "invalid pids 1.5"],
    [{ pids: "12abc" }, 'invalid pids "12abc"'],
    [{ timeout: "soon" }, 'invalid duration for timeout: "soon"'],
    [{ timeout: [] }, "invalid timeout []"],
    [{ rootfs: "rw" }, 'invalid rootfs "rw": readonly or writable'],
    [{ rootfs: 1 }, "invalid rootfs 1"],
  ];
  for (const [fields, message] of cases) assertThrows(() => parseSettings(fields, daemon), TypeError, message);
});

Deno.test("parseSettings() throws SettingsError (the API's 400) for every refusal, those of parseSize too", () => {
  for (const fields of [{ memroy: 1 }, { memory: "lots" }, { timeout: "soon" }, { cpu: 2 }, { min_ready: -1 }]) {
    assertThrows(() => parseSettings(fields, daemon), SettingsError);
  }
});

Deno.test("parseSettings() reads min_ready and max_ready as whole numbers from 0 to the daemon's --pool-max", () => {
  assertEquals(parseSettings({ min_ready: "1", max_ready: "4" }, daemon), { minReady: 1, maxReady: 4 });
  assertEquals(parseSettings({ min_ready: 0, max_ready: 0 }, daemon), { minReady: 0, maxReady: 0 });
  assertEquals(parseSettings({ min_ready: 64, max_ready: "64" }, daemon), { minReady: 64, maxReady: 64 });
  assertEquals(parseSettings({ min_ready: null, max_ready: null }, daemon), { minReady: null, maxReady: null });
  const cases: [Record<string, unknown>, string][] = [
    [{ min_ready: -1 }, "invalid min_ready -1: a whole number of containers, 0 or more"],
    [{ max_ready: "-1" }, 'invalid max_ready "-1": a whole number of containers, 0 or more'],
    [{ min_ready: 1.5 }, "invalid min_ready 1.5"],
    [{ max_ready: "1.5" }, 'invalid max_ready "1.5"'],
    [{ min_ready: "x" }, 'invalid min_ready "x"'],
    [{ max_ready: true }, "invalid max_ready true"],
    [{ max_ready: 1e300 }, "invalid max_ready 1e+300"],
    [{ min_ready: 65 }, "min_ready 65 is above the daemon's --pool-max of 64"],
    [{ max_ready: "100" }, "max_ready 100 is above the daemon's --pool-max of 64"],
  ];
  for (const [fields, message] of cases) assertThrows(() => parseSettings(fields, daemon), SettingsError, message);
  // With --pool-max 0 no function may keep ready containers.
  assertThrows(() => parseSettings({ max_ready: 1 }, { ...daemon, poolMax: 0 }), SettingsError, "--pool-max of 0");
});

Deno.test("mergeSettings() refuses min_ready above max_ready, saying where each value came from", () => {
  assertEquals(mergeSettings({}, { minReady: 2, maxReady: 2 }), { minReady: 2, maxReady: 2 });
  assertEquals(mergeSettings({ maxReady: 4 }, { minReady: 4 }), { maxReady: 4, minReady: 4 });
  const cases: [FunctionSettings, SettingsPatch, string][] = [
    [{}, { minReady: 5, maxReady: 3 }, "min_ready 5 is above max_ready 3: min_ready must be at most max_ready"],
    [{}, { minReady: 9 }, "min_ready 9 is above max_ready 8 (the default)"],
    [{ maxReady: 2 }, { minReady: 3 }, "min_ready 3 is above max_ready 2 (set before)"],
    [{ minReady: 3 }, { maxReady: 2 }, "min_ready 3 (set before) is above max_ready 2"],
    [
      { minReady: 10, maxReady: 10 },
      { maxReady: null },
      "min_ready 10 (set before) is above max_ready 8 (the default)",
    ],
  ];
  for (const [settings, patch, message] of cases) {
    assertThrows(() => mergeSettings(settings, patch), SettingsError, message);
  }
});

Deno.test("mergeSettings() sets given fields, drops null ones and keeps the rest", () => {
  const settings = { memoryBytes: 256 * MiB, cpus: 0.5, rootfs: "writable" as const };
  assertEquals(mergeSettings(settings, { cpus: null, pids: 64, memoryBytes: undefined }), {
    memoryBytes: 256 * MiB,
    rootfs: "writable",
    pids: 64,
  });
  assertEquals(settings, { memoryBytes: 256 * MiB, cpus: 0.5, rootfs: "writable" });
  assertEquals(mergeSettings({}, { timeoutMs: null }), {});
});

Deno.test("effectiveLimits() takes the daemon's limits where unset, and rootfs readonly", () => {
  assertEquals(effectiveLimits({}, daemon), {
    memoryBytes: 512 * MiB,
    cpus: 1,
    pids: 256,
    timeoutMs: 60_000,
    rootfs: "readonly",
  });
  assertEquals(
    effectiveLimits({ memoryBytes: 64 * MiB, cpus: 0.5, pids: 8, timeoutMs: 500, rootfs: "writable" }, daemon),
    {
      memoryBytes: 64 * MiB,
      cpus: 0.5,
      pids: 8,
      timeoutMs: 500,
      rootfs: "writable",
    },
  );
});

Deno.test("effectiveLimits() lowers settings above the daemon's limits, and keeps them where it has none", () => {
  // Set under a daemon with higher flags, then restarted with these.
  const settings = { memoryBytes: 1024 * MiB, cpus: 4, pids: 1000, timeoutMs: 300_000 };
  assertEquals(effectiveLimits(settings, daemon), {
    memoryBytes: 512 * MiB,
    cpus: 1,
    pids: 256,
    timeoutMs: 60_000,
    rootfs: "readonly",
  });
  assertEquals(effectiveLimits(settings, unlimited), { ...settings, rootfs: "readonly" });
  assertEquals(effectiveLimits({}, unlimited), { memoryBytes: 0, cpus: 0, pids: 0, timeoutMs: 0, rootfs: "readonly" });
});

Deno.test("poolSizing() fills in the defaults and lowers both to the daemon's --pool-max", () => {
  assertEquals(poolSizing({}, daemon), { minReady: 0, maxReady: 8 });
  assertEquals(poolSizing({ minReady: 2 }, daemon), { minReady: 2, maxReady: 8 });
  assertEquals(poolSizing({ minReady: 1, maxReady: 40 }, daemon), { minReady: 1, maxReady: 40 });
  // Set under a daemon with a higher --pool-max, then restarted with this one.
  assertEquals(poolSizing({ minReady: 6, maxReady: 40 }, { poolMax: 4 }), { minReady: 4, maxReady: 4 });
  assertEquals(poolSizing({}, { poolMax: 4 }), { minReady: 0, maxReady: 4 });
  assertEquals(poolSizing({ minReady: 3 }, { poolMax: 0 }), { minReady: 0, maxReady: 0 });
});

Deno.test("settingsJson() shows only what was set, in input form that parseSettings reads back", () => {
  const settings = {
    memoryBytes: 256 * MiB,
    cpus: 0.5,
    pids: 64,
    timeoutMs: 30_000,
    rootfs: "writable" as const,
    minReady: 1,
    maxReady: 4,
  };
  const shown = settingsJson(settings);
  assertEquals(shown, {
    memory: "256MiB",
    cpu: 0.5,
    pids: 64,
    timeout: "30s",
    rootfs: "writable",
    min_ready: 1,
    max_ready: 4,
  });
  assertEquals(parseSettings(shown, daemon), settings);
  assertEquals(settingsJson({ timeoutMs: 1500 }), { timeout: "1500ms" });
  assertEquals(settingsJson({}), {});
});

Deno.test("formatSize() and formatDuration() use the largest unit that divides exactly", () => {
  assertEquals([formatSize(512 * MiB), formatSize(2 * 1024 * MiB), formatSize(1536 * MiB)], [
    "512MiB",
    "2GiB",
    "1536MiB",
  ]);
  assertEquals([formatSize(4096), formatSize(1000), formatSize(0)], ["4KiB", "1000B", "0B"]);
  assertEquals([formatDuration(60_000), formatDuration(90_000), formatDuration(7_200_000)], ["1m", "90s", "2h"]);
  assertEquals([formatDuration(1500), formatDuration(0)], ["1500ms", "0ms"]);
});

Deno.test("parseSettings() reads adapter mode's http_port and ready_timeout, bounded", () => {
  assertEquals(parseSettings({ http_port: "8080", ready_timeout: "2s" }, daemon), {
    httpPort: 8080,
    readyTimeoutMs: 2000,
  });
  assertEquals(parseSettings({ http_port: 65535, ready_timeout: 500 }, daemon), {
    httpPort: 65535,
    readyTimeoutMs: 500,
  });
  for (const port of ["0", "65536", "70000", "80.5", "http", -1]) {
    assertThrows(() => parseSettings({ http_port: port }, daemon), SettingsError, "http_port");
  }
  assertThrows(() => parseSettings({ ready_timeout: "11m" }, daemon), SettingsError, "ready_timeout");
  assertThrows(() => parseSettings({ ready_timeout: "soon" }, daemon), SettingsError, "ready_timeout");
});

Deno.test("parseSettings() reads env as KEY=VALUE entries or an object, and refuses bad names or missing =", () => {
  assertEquals(parseSettings({ env: ["A=1", "B=x=y", "EMPTY="] }, daemon), { env: { A: "1", B: "x=y", EMPTY: "" } });
  assertEquals(parseSettings({ env: { GREETING: "hi" } }, daemon), { env: { GREETING: "hi" } });
  assertThrows(() => parseSettings({ env: ["NOEQUALS"] }, daemon), SettingsError, "KEY=VALUE");
  assertThrows(() => parseSettings({ env: ["1A=x"] }, daemon), SettingsError, "env name");
  assertThrows(() => parseSettings({ env: { A: 1 } }, daemon), SettingsError, "value of env A");
  assertThrows(() => parseSettings({ env: "A=1" }, daemon), SettingsError, "invalid env");
});

Deno.test("parseSettings() reads secrets as a list of valid names, once each", () => {
  assertEquals(parseSettings({ secrets: ["db-password", "api.key", "db-password"] }, daemon), {
    secrets: ["db-password", "api.key"],
  });
  for (const bad of ["../x", ".hidden", "a/b", "", "x".repeat(65)]) {
    assertThrows(() => parseSettings({ secrets: [bad] }, daemon), SettingsError, "secret name");
  }
  assertThrows(() => parseSettings({ secrets: "db" }, daemon), SettingsError, "list of secret names");
});

Deno.test("settingsJson() shows env and secret names back in input form", () => {
  const settings = mergeSettings({}, parseSettings({ env: ["A=1"], secrets: ["db"], http_port: "8080" }, daemon));
  const shown = settingsJson(settings);
  assertEquals(shown, { http_port: 8080, env: { A: "1" }, secrets: ["db"] });
  assertEquals(parseSettings(shown, daemon), { httpPort: 8080, env: { A: "1" }, secrets: ["db"] });
});

Deno.test("mergeSettings() takes ready_timeout only with http_port, and drops it when adapter mode is left", () => {
  assertThrows(() => mergeSettings({}, { readyTimeoutMs: 1000 }), SettingsError, "only in adapter mode");
  const adapter = mergeSettings({}, { httpPort: 8080, readyTimeoutMs: 1000 });
  assertEquals(mergeSettings(adapter, { httpPort: null }), {});
  assertThrows(() => mergeSettings(adapter, { httpPort: null, readyTimeoutMs: 5 }), SettingsError, "adapter mode");
});
