import { assert, assertEquals, assertRejects, assertStringIncludes } from "../tests/assert.ts";
import {
  conditionHolds,
  DEFAULT_SECCOMP_PATH,
  loadSeccompProfile,
  SECCOMP_DENIED,
  type SeccompProfile,
  SeccompProfileError,
  type SeccompRule,
} from "./seccomp.ts";
import { CAPABILITIES } from "./serve/spec.ts";

const OPTS = { capabilities: CAPABILITIES, arch: "x86_64" };

const hasBase = await Deno.stat(DEFAULT_SECCOMP_PATH).then(() => true, () => false);
const ignore = !hasBase;
const why = hasBase ? "" : ` (ignored: no ${DEFAULT_SECCOMP_PATH}; install golang-github-containers-common)`;

async function defaultProfile(): Promise<SeccompProfile> {
  const p = await loadSeccompProfile("default", OPTS);
  assert(p);
  return p;
}

const ALLOWED = "SCMP_ACT_ALLOW";
const EPERM = "SCMP_ACT_ERRNO(1)";
const ENOSYS = "SCMP_ACT_ERRNO(38)";

/** What a rule answers, as runc installs it (ERRNO without a number is EPERM). */
function answer(action: string, errnoRet?: number): string {
  return action === "SCMP_ACT_ERRNO" ? `${action}(${errnoRet ?? 1})` : action;
}

/** Whether a rule's conditions hold, the way runc adds them: ANDed, unless two share an index (then ORed). */
function matches(rule: SeccompRule, args: bigint[]): boolean {
  const conds = rule.args ?? [];
  if (conds.length === 0) return true;
  const test = (c: NonNullable<SeccompRule["args"]>[number]) => conditionHolds(c, args[c.index] ?? 0n);
  const shared = new Set(conds.map((c) => c.index)).size < conds.length;
  return shared ? conds.some(test) : conds.every(test);
}

/**
 * What the profile answers to `name(args)`. Throws when rules of different answers match, since then the answer
 * would depend on libseccomp's precedence.
 */
function decide(p: SeccompProfile, name: string, args: bigint[] = []): string {
  const hits = new Set(
    p.syscalls.filter((r) => r.names.includes(name) && matches(r, args)).map((r) => answer(r.action, r.errnoRet)),
  );
  if (hits.size > 1) throw new Error(`${name}(${args.map((a) => a.toString(16))}): overlapping ${[...hits]}`);
  return hits.size ? [...hits][0] : answer(p.defaultAction, p.defaultErrnoRet);
}

async function withFile<T>(content: string, fn: (path: string) => Promise<T>): Promise<T> {
  const path = await Deno.makeTempFile({ suffix: ".json" });
  try {
    await Deno.writeTextFile(path, content);
    return await fn(path);
  } finally {
    await Deno.remove(path);
  }
}

Deno.test({
  name: `loadSeccompProfile() "default" allows none of SECCOMP_DENIED and answers them EPERM${why}`,
  ignore,
  fn: async () => {
    const p = await defaultProfile();
    const allowing = p.syscalls.filter((r) => r.action !== "SCMP_ACT_ERRNO");
    for (const name of SECCOMP_DENIED) {
      assertEquals(allowing.filter((r) => r.names.includes(name)), [], `${name} is allowed by a rule`);
      assertEquals(decide(p, name), EPERM, name);
    }
    // The base allowed these unconditionally.
    for (const name of ["mount", "unshare", "setns", "keyctl", "ptrace", "pivot_root", "adjtimex", "syslog"]) {
      assertEquals(decide(p, name), EPERM, name);
    }
  },
});

Deno.test({
  name: `loadSeccompProfile() "default" allows clone only without namespace flags, and clone3 answers ENOSYS${why}`,
  ignore,
  fn: async () => {
    const p = await defaultProfile();
    // glibc's fork() and pthread_create().
    assertEquals(decide(p, "clone", [0x01200011n]), ALLOWED);
    assertEquals(decide(p, "clone", [0x003d0f00n]), ALLOWED);
    for (const flag of [0x00020000n, 0x02000000n, 0x04000000n, 0x08000000n, 0x10000000n, 0x20000000n, 0x40000000n]) {
      assertEquals(decide(p, "clone", [flag | 0x11n]), EPERM, flag.toString(16));
    }
    assertEquals(decide(p, "clone3"), ENOSYS);
    assertEquals(p.syscalls.filter((r) => r.names.includes("clone") && !r.args?.length), []);
  },
});

Deno.test({
  name: `loadSeccompProfile() "default" denies sockios and wireless ioctls and allows every other${why}`,
  ignore,
  fn: async () => {
    const p = await defaultProfile();
    assertEquals(p.syscalls.filter((r) => r.names.includes("ioctl") && !r.args?.length), []);
    // SIOCGIFCONF, SIOCGSKNS, SIOCGIWNAME, SIOCGIFCONF with garbage above the 32 bits the kernel reads,
    // FIOSETOWN and SIOCGSTAMP (in the range too: fcntl(F_SETOWN) and SO_TIMESTAMP are the portable forms).
    for (const req of [0x8912n, 0x894Cn, 0x8B01n, 0xFFFFFFFF00008912n, 0x8901n, 0x8906n]) {
      assertEquals(decide(p, "ioctl", [3n, req]), EPERM, req.toString(16));
    }
    // TCGETS, FIONREAD, FIONBIO, FIOCLEX, TIOCGWINSZ, BLKGETSIZE64, 0x8A00 and 0x8800 (neighbours of the range).
    for (const req of [0x5401n, 0x541Bn, 0x5421n, 0x5451n, 0x5413n, 0x80081272n, 0x8A00n, 0x88FFn, 0xFFFF5401n]) {
      assertEquals(decide(p, "ioctl", [3n, req]), ALLOWED, req.toString(16));
    }
    // Every low 16-bit pattern, under random upper bits: exactly one answer, EPERM for 0x89xx and 0x8Bxx.
    for (let low = 0; low < 0x10000; low++) {
      const req = (BigInt(Math.floor(Math.random() * 2 ** 32)) << 32n) | BigInt(low);
      const byte = low >> 8;
      assertEquals(decide(p, "ioctl", [0n, req]), byte === 0x89 || byte === 0x8B ? EPERM : ALLOWED, low.toString(16));
    }
  },
});

Deno.test({
  name: `loadSeccompProfile() "default" denies AF_VSOCK sockets, with or without CAP_AUDIT_WRITE${why}`,
  ignore,
  fn: async () => {
    const p = await defaultProfile();
    assertEquals(decide(p, "socket", [40n, 1n, 0n]), EPERM);
    assertEquals(decide(p, "socket", [2n, 1n, 0n]), ALLOWED);
    assertEquals(decide(p, "socket", [16n, 3n, 9n]), ALLOWED); // NETLINK_AUDIT: we keep CAP_AUDIT_WRITE
    // Without it the base answers audit sockets EINVAL through rules that test the family; still no overlap.
    const noAudit = await loadSeccompProfile("default", {
      ...OPTS,
      capabilities: CAPABILITIES.filter((c) => c !== "CAP_AUDIT_WRITE"),
    });
    assert(noAudit);
    assertEquals(decide(noAudit, "socket", [40n, 1n, 0n]), EPERM);
    assertEquals(decide(noAudit, "socket", [2n, 1n, 0n]), ALLOWED);
    assertEquals(decide(noAudit, "socket", [16n, 3n, 9n]), "SCMP_ACT_ERRNO(22)");
  },
});

Deno.test({
  name: `loadSeccompProfile() "default" keeps personality to the base's conditional rules${why}`,
  ignore,
  fn: async () => {
    const p = await defaultProfile();
    const rules = p.syscalls.filter((r) => r.names.includes("personality"));
    assert(rules.length > 0 && rules.every((r) => r.args?.length), "personality has an unconditional rule");
    assertEquals(decide(p, "personality", [0n]), ALLOWED);
    assertEquals(decide(p, "personality", [0x0040000n]), answer(p.defaultAction, p.defaultErrnoRet)); // ADDR_NO_RANDOMIZE
    // What a handler needs still runs.
    for (const name of ["read", "write", "execve", "socket", "accept4", "futex", "mmap", "openat", "fork"]) {
      assertEquals(decide(p, name), ALLOWED, name);
    }
  },
});

Deno.test({
  name: `loadSeccompProfile() a path converts the profile as it is, without faasd's tightening${why}`,
  ignore,
  fn: async () => {
    const p = await loadSeccompProfile(DEFAULT_SECCOMP_PATH, OPTS);
    assert(p);
    assertEquals(decide(p, "mount"), ALLOWED);
    assertEquals(decide(p, "ioctl", [3n, 0x8912n]), ALLOWED);
    assertEquals(decide(p, "clone", [0x10000000n]), ALLOWED);
    assertEquals(decide(p, "chroot"), EPERM); // allowed only for CAP_SYS_CHROOT, which containers do not keep
    assertEquals(decide(p, "bpf"), EPERM); // excluded for CAP_SYS_ADMIN, which we lack
    assertEquals([p.defaultAction, p.defaultErrnoRet], ["SCMP_ACT_ERRNO", 38]);
  },
});

Deno.test("loadSeccompProfile() resolves includes and excludes by caps, arch and kernel", async () => {
  const doc = {
    defaultAction: "SCMP_ACT_ERRNO",
    archMap: [{ architecture: "SCMP_ARCH_X86_64", subArchitectures: ["SCMP_ARCH_X86", "SCMP_ARCH_X32"] }],
    syscalls: [
      { names: ["read"], action: "SCMP_ACT_ALLOW", args: [], comment: "dropped" },
      { names: ["bpf"], action: "SCMP_ACT_ALLOW", includes: { caps: ["CAP_SYS_ADMIN"] } },
      { names: ["bpf"], action: "SCMP_ACT_ERRNO", errnoRet: 1, excludes: { caps: ["CAP_SYS_ADMIN"] } },
      { names: ["chroot"], action: "SCMP_ACT_ALLOW", includes: { caps: ["CAP_SYS_CHROOT"] } },
      { names: ["arch_prctl"], action: "SCMP_ACT_ALLOW", includes: { arches: ["amd64", "x32"] } },
      { names: ["set_tls"], action: "SCMP_ACT_ALLOW", includes: { arches: ["arm", "arm64"] } },
      { names: ["ptrace"], action: "SCMP_ACT_ALLOW", includes: { minKernel: "4.8" } },
      { names: ["future"], action: "SCMP_ACT_ALLOW", includes: { minKernel: "99.1" } },
      { names: ["modify_ldt"], action: "SCMP_ACT_ALLOW", excludes: { arches: ["amd64"] } },
      { name: "personality", action: "SCMP_ACT_ALLOW", args: [{ index: 0, value: 8, valueTwo: 0, op: "SCMP_CMP_EQ" }] },
    ],
  };
  await withFile(JSON.stringify(doc), async (path) => {
    const p = await loadSeccompProfile(path, { ...OPTS, kernelRelease: "6.1.0-18-amd64" });
    assertEquals(p, {
      defaultAction: "SCMP_ACT_ERRNO",
      architectures: ["SCMP_ARCH_X86_64", "SCMP_ARCH_X86", "SCMP_ARCH_X32"],
      syscalls: [
        { names: ["read"], action: "SCMP_ACT_ALLOW" },
        { names: ["bpf"], action: "SCMP_ACT_ERRNO", errnoRet: 1 },
        { names: ["arch_prctl"], action: "SCMP_ACT_ALLOW" },
        { names: ["ptrace"], action: "SCMP_ACT_ALLOW" },
        {
          names: ["personality"],
          action: "SCMP_ACT_ALLOW",
          args: [{ index: 0, value: 8, valueTwo: 0, op: "SCMP_CMP_EQ" }],
        },
      ],
    });
    const old = await loadSeccompProfile(path, { ...OPTS, kernelRelease: "4.4.0" });
    assert(!old?.syscalls.some((r) => r.names.includes("ptrace")));
  });
});

Deno.test({
  name: `loadSeccompProfile() takes our arch from archMap, and the default keeps the native ABI only${why}`,
  ignore,
  fn: async () => {
    const x86 = await loadSeccompProfile("default", { ...OPTS, arch: "x86_64" });
    assertEquals(x86?.architectures, ["SCMP_ARCH_X86_64"]);
    const arm = await loadSeccompProfile("default", { ...OPTS, arch: "aarch64" });
    assertEquals(arm?.architectures, ["SCMP_ARCH_AARCH64"]);
    assert(
      arm?.syscalls.some((r) => r.names.includes("set_tls")) &&
        !arm.syscalls.some((r) => r.names.includes("arch_prctl")),
    );
    await assertRejects(
      () => loadSeccompProfile("default", { ...OPTS, arch: "riscv64" }),
      SeccompProfileError,
      "riscv64",
    );
  },
});

Deno.test('loadSeccompProfile() "unconfined" is no profile', async () => {
  assertEquals(await loadSeccompProfile("unconfined", OPTS), null);
});

Deno.test("loadSeccompProfile() rejects a missing, non-JSON or misshapen file with SeccompProfileError", async () => {
  const missing = await assertRejects(
    () => loadSeccompProfile("default", { ...OPTS, basePath: "/nonexistent/seccomp.json" }),
    SeccompProfileError,
    "there is no seccomp profile at /nonexistent/seccomp.json",
  );
  assertStringIncludes(missing.message, "install Debian's golang-github-containers-common");
  assertStringIncludes(missing.message, "--seccomp PATH|unconfined");
  assert(missing.cause instanceof Deno.errors.NotFound);
  await assertRejects(() => loadSeccompProfile("/nonexistent/p.json", OPTS), SeccompProfileError, "no seccomp profile");

  await withFile("{ not json", async (path) => {
    const e = await assertRejects(() => loadSeccompProfile(path, OPTS), SeccompProfileError, "is not JSON");
    assert(e.cause instanceof SyntaxError);
    await assertRejects(
      () => loadSeccompProfile("default", { ...OPTS, basePath: path }),
      SeccompProfileError,
      "golang-github-containers-common",
    );
  });
  const shapes: [unknown, string][] = [
    [[], "not a JSON object"],
    [{ defaultAction: "ALLOW", syscalls: [] }, "defaultAction"],
    [{ defaultAction: "SCMP_ACT_ERRNO", syscalls: {} }, "syscalls must be a list"],
    [{ defaultAction: "SCMP_ACT_ERRNO", syscalls: [{ names: "read", action: "SCMP_ACT_ALLOW" }] }, "syscalls[0].names"],
    [{ defaultAction: "SCMP_ACT_ERRNO", syscalls: [{ names: ["read"], action: "allow" }] }, "syscalls[0].action"],
    [{
      defaultAction: "SCMP_ACT_ERRNO",
      syscalls: [{
        names: ["ioctl"],
        action: "SCMP_ACT_ALLOW",
        args: [{ index: 1, value: 2 ** 60, op: "SCMP_CMP_EQ" }],
      }],
    }, "syscalls[0].args[0].value"],
    [{
      defaultAction: "SCMP_ACT_ERRNO",
      syscalls: [{ names: ["ioctl"], action: "SCMP_ACT_ALLOW", args: [{ index: 6, value: 1, op: "SCMP_CMP_EQ" }] }],
    }, "syscalls[0].args[0].index"],
  ];
  for (const [doc, part] of shapes) {
    await withFile(
      JSON.stringify(doc),
      (path) => assertRejects(() => loadSeccompProfile(path, OPTS), SeccompProfileError, part),
    );
  }
});

Deno.test('loadSeccompProfile() refuses to build "default" on a base that allows unlisted syscalls', async () => {
  const doc = { defaultAction: "SCMP_ACT_ALLOW", syscalls: [{ names: ["mount"], action: "SCMP_ACT_ERRNO" }] };
  await withFile(JSON.stringify(doc), async (path) => {
    await assertRejects(
      () => loadSeccompProfile("default", { ...OPTS, basePath: path }),
      SeccompProfileError,
      "lets unlisted syscalls run",
    );
    // As a path it is the operator's choice.
    assertEquals((await loadSeccompProfile(path, OPTS))?.defaultAction, "SCMP_ACT_ALLOW");
  });
});

Deno.test("loadSeccompProfile() throws TypeError for an empty setting or missing capabilities", async () => {
  await assertRejects(() => loadSeccompProfile("", OPTS), TypeError);
  // deno-lint-ignore no-explicit-any
  await assertRejects(() => loadSeccompProfile("default", {} as any), TypeError);
});

Deno.test({
  name: `loadSeccompProfile() "default" refuses binding a socket to an interface, and only that setsockopt${why}`,
  ignore,
  fn: async () => {
    const p = await defaultProfile();
    const SOL_SOCKET = 1n;
    for (const opt of [25n, 62n]) {
      assertEquals(decide(p, "setsockopt", [3n, SOL_SOCKET, opt]), EPERM);
      // The kernel reads ints: garbage in the upper half of the register changes nothing.
      assertEquals(decide(p, "setsockopt", [3n, SOL_SOCKET | 0xdead_0000_0000n, opt | 0xbeef_0000_0000n]), EPERM);
    }
    for (
      const [level, opt] of [[SOL_SOCKET, 9n], [SOL_SOCKET, 2n], [6n, 25n], [0n, 62n], [41n, 26n], [SOL_SOCKET, 63n]]
    ) {
      assertEquals(decide(p, "setsockopt", [3n, level!, opt!]), ALLOWED, `${level} ${opt}`);
    }
  },
});
