import { assertEquals, assertThrows } from "../tests/assert.ts";
import { daemonHelp, parseDaemonConfig, parseDuration, parseSize, resolveMaxContainers } from "./config.ts";

Deno.test("parseDaemonConfig() uses the documented defaults", () => {
  const c = parseDaemonConfig([], () => undefined);
  if (c === "help") throw new Error("unexpected help");
  assertEquals(c.api, { hostname: "127.0.0.1", port: 8080 });
  assertEquals(c.stateDir, "/var/lib/faasd");
  assertEquals(c.ipPool.cidr, "127.10.0.0/24");
  assertEquals(c.port, 80);
  assertEquals(c.containerd, "/run/containerd/containerd.sock");
  assertEquals(c.namespace, "faasd");
  assertEquals(c.connectTimeoutMs, 5000);
  assertEquals(c.runtime, "auto");
  assertEquals(c.apiToken, null);
  assertEquals(c.limits, {
    memoryBytes: 512 * 1024 ** 2,
    pids: 256,
    cpus: 1,
    scratchBytes: 64 << 20,
    timeoutMs: 60000,
    poolMax: 64,
  });
  assertEquals(c.totals, { memoryBytes: "auto", cpus: "auto", pids: "auto" });
  assertEquals([c.seccomp, c.socketGuard], ["default", "nftables"]);
  assertEquals(c.maxConcurrency, 32);
  assertEquals(c.pool, {
    idleMs: 300_000,
    max: 64,
    maxAgeMs: 600_000,
    maxStarting: 4,
    queueTimeoutMs: 10_000,
    maxQueue: 256,
    headerTimeoutMs: 10_000,
    shimGroupSize: 64,
    maxContainers: "auto",
  });
});

Deno.test("parseDaemonConfig() reads the pool's flags and env, and --pool-max bounds settings too", () => {
  const env: Record<string, string> = { FAASD_POOL_MAX: "10", FAASD_MAX_QUEUE: "0" };
  const c = parseDaemonConfig([
    "--pool-idle",
    "30s",
    "--pool-max-age",
    "1h",
    "--max-starting",
    "2",
    "--queue-timeout",
    "500ms",
    "--header-timeout",
    "2s",
    "--max-containers",
    "100",
    "--shim-group-size",
    "0",
  ], (n) => env[n]);
  if (c === "help") throw new Error("unexpected help");
  assertEquals(c.pool, {
    idleMs: 30_000,
    max: 10,
    maxAgeMs: 3_600_000,
    maxStarting: 2,
    queueTimeoutMs: 500,
    maxQueue: 0,
    headerTimeoutMs: 2000,
    maxContainers: 100,
    shimGroupSize: 0,
  });
  assertEquals(c.limits.poolMax, 10);
  const none = parseDaemonConfig(["--pool-max", "0"], () => undefined);
  if (none === "help") throw new Error("unexpected help");
  assertEquals([none.pool.max, none.limits.poolMax], [0, 0]);
});

Deno.test("parseDaemonConfig() refuses bad values of the pool's flags, naming the flag", () => {
  const cases: [string[], string][] = [
    [["--pool-max=-1"], 'invalid --pool-max: "-1" (a whole number ≥ 0)'],
    [["--pool-max", "1.5"], "invalid --pool-max"],
    [["--pool-max", "x"], "invalid --pool-max"],
    [["--max-queue", "lots"], "invalid --max-queue"],
    [["--max-starting", "0"], 'invalid --max-starting: "0" (a whole number ≥ 1)'],
    [["--max-containers", "0"], "invalid --max-containers"],
    [["--max-containers", "some"], "invalid --max-containers"],
    [["--pool-idle", "soon"], 'invalid duration for --pool-idle: "soon"'],
    [["--pool-max-age", "0"], 'invalid duration for --pool-max-age: "0" (must be above 0)'],
    [["--queue-timeout", "0s"], "invalid duration for --queue-timeout"],
    [["--header-timeout=-1s"], "invalid duration for --header-timeout"],
  ];
  for (const [args, message] of cases) assertThrows(() => parseDaemonConfig(args, () => undefined), TypeError, message);
});

Deno.test("resolveMaxContainers() keeps a number, and sizes auto at 64MiB of host memory each, 16 to 1024", () => {
  const GiB = 1024 ** 3;
  assertEquals(resolveMaxContainers(100, 1 * GiB), 100);
  assertEquals(resolveMaxContainers("auto", 8 * GiB), 128);
  assertEquals(resolveMaxContainers("auto", 8 * GiB + 63 * 1024 ** 2), 128);
  assertEquals(resolveMaxContainers("auto", 512 * 1024 ** 2), 16);
  assertEquals(resolveMaxContainers("auto", 256 * GiB), 1024);
  const fromHost = resolveMaxContainers("auto");
  assertEquals(fromHost >= 16 && fromHost <= 1024, true);
});

Deno.test("daemonHelp() lists the pool's flags with their defaults", () => {
  const help = daemonHelp();
  for (
    const line of [
      "--pool-idle",
      "--pool-max ",
      "--pool-max-age",
      "--max-starting",
      "--queue-timeout",
      "--max-queue",
      "--header-timeout",
      "--max-containers",
      "(env FAASD_MAX_CONTAINERS, default auto)",
      "past it connections wait in the queue",
    ]
  ) {
    assertEquals(help.includes(line), true, line);
  }
});

Deno.test("parseDaemonConfig() takes 0 as no limit and refuses a memory limit no container can start in", () => {
  const c = parseDaemonConfig(["--memory-limit", "0", "--pids-limit", "0", "--cpu-limit", "0"], () => undefined);
  if (c === "help") throw new Error("unexpected help");
  assertEquals([c.limits.memoryBytes, c.limits.pids, c.limits.cpus], [0, 0, 0]);
  assertThrows(() => parseDaemonConfig(["--cpu-limit", "lots"], () => undefined), TypeError, "CPUs");
  assertThrows(() => parseDaemonConfig(["--socket-guard", "maybe"], () => undefined), TypeError, "nftables or off");
  assertThrows(() => parseDaemonConfig(["--total-memory", "2MiB"], () => undefined), TypeError, "--total-memory");
  assertThrows(() => parseDaemonConfig(["--memory-limit", "1MiB"], () => undefined), TypeError, "at least 4MiB");
  assertThrows(() => parseDaemonConfig(["--pids-limit", "-1"], () => undefined), TypeError);
});

Deno.test("parseDaemonConfig() prefers flags over FAASD_* env over defaults", () => {
  const env: Record<string, string> = { FAASD_IP_POOL: "10.0.0.0/24", FAASD_PORT: "8081", FAASD_API: "0.0.0.0:9000" };
  const c = parseDaemonConfig(["--port", "9090", "--request-timeout", "2s"], (n) => env[n]);
  if (c === "help") throw new Error("unexpected help");
  assertEquals(c.ipPool.cidr, "10.0.0.0/24");
  assertEquals(c.port, 9090);
  assertEquals(c.api, { hostname: "0.0.0.0", port: 9000 });
  assertEquals(c.limits.timeoutMs, 2000);
});

Deno.test("parseDaemonConfig() reads the API token from FAASD_API_TOKEN and refuses a weak one", () => {
  const token = "0123456789abcdef0123";
  const c = parseDaemonConfig([], (n) => n === "FAASD_API_TOKEN" ? token : undefined);
  if (c === "help") throw new Error("unexpected help");
  assertEquals(c.apiToken, token);
  assertThrows(() => parseDaemonConfig(["--api-token", "short"], () => undefined), TypeError, "16 visible");
  assertThrows(() => parseDaemonConfig(["--api-token", "has a space in it ok"], () => undefined), TypeError);
});

Deno.test("parseDaemonConfig() rejects unknown flags and bad values", () => {
  assertThrows(() => parseDaemonConfig(["--nope"], () => undefined));
  assertThrows(() => parseDaemonConfig(["--port", "70000"], () => undefined), TypeError, "port");
  assertThrows(() => parseDaemonConfig(["--api", "nohost"], () => undefined), TypeError, "HOST:PORT");
  assertThrows(() => parseDaemonConfig(["--ip-pool", "10.0.0.0/30"], () => undefined), RangeError);
  assertEquals(parseDaemonConfig(["--help"], () => undefined), "help");
});

Deno.test("parseDuration() and parseSize() read human units", () => {
  assertEquals(parseDuration("500ms", "x"), 500);
  assertEquals(parseDuration("2m", "x"), 120000);
  assertEquals(parseDuration("3", "x"), 3000);
  assertEquals(parseSize("2GiB", "x"), 2 * 1024 ** 3);
  assertEquals(parseSize("10MB", "x"), 10_000_000);
  assertThrows(() => parseSize("lots", "x"), TypeError);
});

Deno.test("parseDaemonConfig() reads --log-format and --log-level, refusing others", () => {
  const c = parseDaemonConfig(["--log-format", "text", "--log-level", "warn"], () => undefined);
  if (c === "help") throw new Error("unexpected help");
  assertEquals([c.logFormat, c.logLevel], ["text", "warn"]);
  const d = parseDaemonConfig([], () => undefined);
  if (d === "help") throw new Error("unexpected help");
  assertEquals([d.logFormat, d.logLevel], ["auto", "info"]);
  assertThrows(() => parseDaemonConfig(["--log-format", "xml"], () => undefined), TypeError, "--log-format");
  assertThrows(() => parseDaemonConfig(["--log-level", "loud"], () => undefined), TypeError, "--log-level");
});

Deno.test("parseDaemonConfig() reads cluster mode's flags, and is a single host without --cluster", () => {
  const single = parseDaemonConfig([], () => undefined);
  if (single === "help") throw new Error("help");
  assertEquals(single.cluster, null);
  const c = parseDaemonConfig([
    "--cluster",
    "etcd://192.0.2.1:2379,192.0.2.2:2379",
    "--registry",
    "http://192.0.2.1:5000/",
    "--host-name",
    "host1",
    "--host-ttl",
    "4s",
    "--bird-config",
    "/etc/faasd/bird.conf",
  ], () => undefined);
  if (c === "help") throw new Error("help");
  assertEquals(c.cluster, {
    etcd: ["http://192.0.2.1:2379", "http://192.0.2.2:2379"],
    registry: "http://192.0.2.1:5000",
    host: "host1",
    hostTtlSeconds: 4,
    birdConfig: "/etc/faasd/bird.conf",
  });
  const fromEnv = parseDaemonConfig(
    [],
    (n) => ({ FAASD_CLUSTER: "etcd://192.0.2.1:2379", FAASD_REGISTRY: "http://192.0.2.1:5000" })[n],
  );
  if (fromEnv === "help") throw new Error("help");
  assertEquals(fromEnv.cluster?.host, Deno.hostname());
  assertEquals(fromEnv.cluster?.birdConfig, null);
});

Deno.test("parseDaemonConfig() refuses a malformed cluster configuration, naming the flag", () => {
  const parse = (...args: string[]) => () => parseDaemonConfig(args, () => undefined);
  assertThrows(parse("--registry", "http://192.0.2.1:5000"), TypeError, "need --cluster");
  assertThrows(parse("--cluster", "http://192.0.2.1:2379", "--registry", "http://x:1"), TypeError, "--cluster");
  assertThrows(parse("--cluster", "etcd://192.0.2.1", "--registry", "http://x:1"), TypeError, "--cluster endpoint");
  assertThrows(parse("--cluster", "etcd://192.0.2.1:2379"), TypeError, "--cluster needs --registry");
  assertThrows(parse("--cluster", "etcd://192.0.2.1:2379", "--registry", "ftp://x"), TypeError, "--registry");
  assertThrows(
    parse("--cluster", "etcd://192.0.2.1:2379", "--registry", "http://x:1", "--host-name", "a b"),
    TypeError,
    "--host-name",
  );
});
