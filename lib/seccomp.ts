/**
 * The seccomp profile of request containers, in the OCI runtime spec's `linux.seccomp` form.
 *
 * `default` is faasd's profile: Debian's containers-common profile (docker/moby format, read at run time, not copied
 * into the repo) resolved for our capabilities and architecture, then tightened past Docker's and Podman's defaults:
 * the {@link SECCOMP_DENIED} syscalls answer EPERM, clone may not create namespaces, clone3 answers ENOSYS (libc then
 * falls back to clone, whose flags seccomp can see), socket may not open AF_VSOCK, and ioctl may not ask the host's
 * network stack about itself through the TCP socket the handler is handed (that socket lives in the host's network
 * namespace). Any other path is a profile in the same format, converted as it is; `unconfined` is no profile.
 *
 * @module
 */

/** Where Debian's golang-github-containers-common (a dependency of podman) installs its profile. */
export const DEFAULT_SECCOMP_PATH = "/usr/share/containers/seccomp.json";

/** One argument condition of a rule; for `SCMP_CMP_MASKED_EQ`, `value` is the mask and `valueTwo` the expected. */
export type SeccompArg = { index: number; value: number; valueTwo?: number; op: string };

/** One rule: the conditions of one rule are ANDed when their indexes differ, and rules for one syscall are ORed. */
export type SeccompRule = { names: string[]; action: string; errnoRet?: number; args?: SeccompArg[] };

/** A profile as runc takes it in `linux.seccomp`. */
export type SeccompProfile = {
  defaultAction: string;
  defaultErrnoRet?: number;
  architectures: string[];
  flags?: string[];
  syscalls: SeccompRule[];
};

/** Options of {@link loadSeccompProfile}. */
export interface SeccompOptions {
  /** The capabilities containers keep: rules included only for others are dropped. */
  capabilities: readonly string[];
  /** `Deno.build.arch` of the host (the default). */
  arch?: string;
  /** The containers-common profile `default` is built from; default {@link DEFAULT_SECCOMP_PATH}. */
  basePath?: string;
  /** Kernel release that `minKernel` rules are compared with; default `Deno.osRelease()`. */
  kernelRelease?: string;
}

/** The profile file is missing, unreadable, or not a seccomp profile we understand. */
export class SeccompProfileError extends Error {
  constructor(message: string, options?: ErrorOptions) {
    super(message, options);
    this.name = "SeccompProfileError";
  }
}

/**
 * Syscalls no request handler may make: namespaces and mounts, the (not namespaced) keyring, other processes' memory,
 * io_uring (its own syscall surface, unseen by seccomp), userfaultfd and perf (exploit helpers), host logs, file
 * handles, modules, swap, reboot, host identity, NUMA memory policy (Docker requires CAP_SYS_NICE for it) and the
 * clock. adjtimex and clock_adjtime are denied too: their only use without CAP_SYS_TIME is reading the host's clock
 * discipline, and glibc and musl route adjtimex() and ntp_gettime() through clock_adjtime, so keeping only the
 * adjtimex syscall would not help them anyway.
 */
export const SECCOMP_DENIED: readonly string[] = [
  "mount",
  "umount",
  "umount2",
  "pivot_root",
  "chroot",
  "setns",
  "unshare",
  "keyctl",
  "add_key",
  "request_key",
  "ptrace",
  "process_vm_readv",
  "process_vm_writev",
  "kcmp",
  "pidfd_getfd",
  "io_uring_setup",
  "io_uring_enter",
  "io_uring_register",
  "userfaultfd",
  "perf_event_open",
  "bpf",
  "fsopen",
  "fsconfig",
  "fsmount",
  "fspick",
  "open_tree",
  "move_mount",
  "mount_setattr",
  "syslog",
  "name_to_handle_at",
  "open_by_handle_at",
  "quotactl",
  "quotactl_fd",
  "lookup_dcookie",
  "acct",
  "swapon",
  "swapoff",
  "reboot",
  "kexec_load",
  "kexec_file_load",
  "init_module",
  "finit_module",
  "delete_module",
  "setdomainname",
  "sethostname",
  "clock_settime",
  "clock_settime64",
  "settimeofday",
  "stime",
  "adjtimex",
  "clock_adjtime",
  "clock_adjtime64",
  "vhangup",
  "iopl",
  "ioperm",
  "get_mempolicy",
  "set_mempolicy",
  "set_mempolicy_home_node",
  "mbind",
  "migrate_pages",
  "move_pages",
];

/**
 * socket()'s address family answered EPERM, as in Docker: vsock is not network-namespaced, so from a container with
 * no network it would still reach the host's (or hypervisor's) vsock services.
 */
export const AF_VSOCK = 40;

/** CLONE_NEWNS | CLONE_NEWCGROUP | CLONE_NEWUTS | CLONE_NEWIPC | CLONE_NEWUSER | CLONE_NEWPID | CLONE_NEWNET. */
export const CLONE_NAMESPACE_FLAGS = 0x7E020000;

/**
 * ioctl requests answered EPERM: `(request & IOCTL_DENIED_MASK) == IOCTL_DENIED_VALUE`, i.e. bits 15..8 are 0x89
 * (sockios: interfaces, routes, ARP, SIOCGSKNS — an fd of the host's network namespace — but also FIOSETOWN,
 * SIOCATMARK and SIOCGSTAMP, whose portable forms are fcntl(F_SETOWN), recv(MSG_OOB) and SO_TIMESTAMP) or 0x8B
 * (wireless extensions). 0x89 and 0x8B differ only in bit 9, which the mask leaves out.
 */
export const IOCTL_DENIED_MASK = 0xFD00;
/** See {@link IOCTL_DENIED_MASK}. */
export const IOCTL_DENIED_VALUE = 0x8900;

const EPERM = 1;
const SOL_SOCKET = 1;
const SO_BINDTODEVICE = 25;
const SO_BINDTOIFINDEX = 62;
const LOW_32 = 0xFFFF_FFFF;
const ENOSYS = 38;
const ALLOW = "SCMP_ACT_ALLOW";
const ERRNO = "SCMP_ACT_ERRNO";
const MASKED_EQ = "SCMP_CMP_MASKED_EQ";
/** Actions that never let the syscall run; any other (ALLOW, LOG, TRACE, NOTIFY) may. */
const DENYING = new Set([
  "SCMP_ACT_ERRNO",
  "SCMP_ACT_KILL",
  "SCMP_ACT_KILL_THREAD",
  "SCMP_ACT_KILL_PROCESS",
  "SCMP_ACT_TRAP",
]);
const OPS = new Set([
  "SCMP_CMP_NE",
  "SCMP_CMP_LT",
  "SCMP_CMP_LE",
  "SCMP_CMP_EQ",
  "SCMP_CMP_GE",
  "SCMP_CMP_GT",
  MASKED_EQ,
]);

/** Deno's arch → docker's name of it (in `includes.arches`), libseccomp's, and clone's flags argument (1 on s390). */
const ARCHES: Record<string, { docker: string; scmp: string; cloneFlags: number }> = {
  x86_64: { docker: "amd64", scmp: "SCMP_ARCH_X86_64", cloneFlags: 0 },
  aarch64: { docker: "arm64", scmp: "SCMP_ARCH_AARCH64", cloneFlags: 0 },
};

const INSTALL_HINT =
  "install Debian's golang-github-containers-common (it comes with podman) or pass --seccomp PATH|unconfined";

/**
 * The profile for `setting`: `unconfined` → null; `default` → faasd's profile, built from `opts.basePath`; any
 * other value → the docker/containers-format profile at that path, resolved for `opts` without faasd's tightening.
 *
 * @throws {TypeError} `setting` is empty or `opts.capabilities` is not a list of strings.
 * @throws {SeccompProfileError} the file is missing, unreadable, not JSON or not a profile; the arch is unknown;
 *   the base of `default` allows unlisted syscalls.
 */
export async function loadSeccompProfile(setting: string, opts: SeccompOptions): Promise<SeccompProfile | null> {
  if (typeof setting !== "string" || setting === "") throw new TypeError("seccomp setting must be a non-empty string");
  if (!Array.isArray(opts?.capabilities) || !opts.capabilities.every((c) => typeof c === "string")) {
    throw new TypeError("capabilities must be a list of strings");
  }
  if (setting === "unconfined") return null;
  const isDefault = setting === "default";
  const path = isDefault ? opts.basePath ?? DEFAULT_SECCOMP_PATH : setting;
  const hint = isDefault ? `; ${INSTALL_HINT}` : "";
  const archName = opts.arch ?? Deno.build.arch;
  const arch = ARCHES[archName];
  if (!arch) throw new SeccompProfileError(`no seccomp architecture known for ${archName}; pass --seccomp unconfined`);

  let text: string;
  try {
    text = await Deno.readTextFile(path);
  } catch (e) {
    const why = e instanceof Deno.errors.NotFound ? "there is no seccomp profile at" : "cannot read seccomp profile";
    throw new SeccompProfileError(`${why} ${path}${hint}`, { cause: e });
  }
  let doc: unknown;
  try {
    doc = JSON.parse(text);
  } catch (e) {
    throw new SeccompProfileError(`seccomp profile ${path} is not JSON: ${(e as Error).message}${hint}`, { cause: e });
  }
  try {
    let kernel: number[] | undefined;
    const resolved = resolve(doc, {
      caps: new Set(opts.capabilities.map((c) => c.toUpperCase())),
      arch,
      // Read only when a rule asks: Deno.osRelease() needs --allow-sys.
      kernel: () => kernel ??= version(opts.kernelRelease ?? Deno.osRelease()),
    });
    return isDefault ? tighten(resolved, arch.cloneFlags) : resolved;
  } catch (e) {
    if (!(e instanceof ShapeError)) throw e;
    throw new SeccompProfileError(`seccomp profile ${path}: ${e.message}${hint}`, { cause: e });
  }
}

/** A profile is not of the shape we understand; rethrown with its path. */
class ShapeError extends Error {}

interface Context {
  caps: Set<string>;
  arch: { docker: string; scmp: string };
  kernel: () => number[];
}

/** Keeps the rules whose includes match us and whose excludes do not, as docker and podman do. */
function resolve(doc: unknown, ctx: Context): SeccompProfile {
  if (!isObject(doc)) throw new ShapeError("not a JSON object");
  const defaultAction = doc.defaultAction;
  if (typeof defaultAction !== "string" || !defaultAction.startsWith("SCMP_ACT_")) {
    throw new ShapeError("defaultAction must be an SCMP_ACT_* name");
  }
  if (!Array.isArray(doc.syscalls)) throw new ShapeError("syscalls must be a list");
  const profile: SeccompProfile = { defaultAction, architectures: architectures(doc, ctx.arch.scmp), syscalls: [] };
  const defaultErrnoRet = optionalErrno(doc.defaultErrnoRet, "defaultErrnoRet");
  if (defaultErrnoRet !== undefined) profile.defaultErrnoRet = defaultErrnoRet;
  if (doc.flags != null) profile.flags = stringList(doc.flags, "flags");
  doc.syscalls.forEach((raw, i) => {
    const rule = parseRule(raw, `syscalls[${i}]`);
    if (rule && applies(raw as Record<string, unknown>, ctx, `syscalls[${i}]`)) profile.syscalls.push(rule);
  });
  return profile;
}

/** Our arch and its sub-architectures from `archMap` (docker format), or `architectures` as given (OCI format). */
function architectures(doc: Record<string, unknown>, scmp: string): string[] {
  if (doc.archMap != null) {
    if (!Array.isArray(doc.archMap)) throw new ShapeError("archMap must be a list");
    const entry = doc.archMap.find((e) => isObject(e) && e.architecture === scmp) as
      | Record<string, unknown>
      | undefined;
    if (!entry) return []; // runc then filters the native arch only, as docker does
    return [scmp, ...(entry.subArchitectures == null ? [] : stringList(entry.subArchitectures, "subArchitectures"))];
  }
  return doc.architectures == null ? [] : stringList(doc.architectures, "architectures");
}

/** The rule in OCI form; null when it names no syscall. */
function parseRule(raw: unknown, where: string): SeccompRule | null {
  if (!isObject(raw)) throw new ShapeError(`${where} must be an object`);
  // Older docker profiles name one syscall per rule.
  const names = raw.names != null ? stringList(raw.names, `${where}.names`) : raw.name != null ? [raw.name] : [];
  if (!names.every((n) => typeof n === "string" && n !== "")) throw new ShapeError(`${where} names an empty syscall`);
  if (typeof raw.action !== "string" || !raw.action.startsWith("SCMP_ACT_")) {
    throw new ShapeError(`${where}.action must be an SCMP_ACT_* name`);
  }
  if (names.length === 0) return null;
  const rule: SeccompRule = { names: names as string[], action: raw.action };
  const errnoRet = optionalErrno(raw.errnoRet, `${where}.errnoRet`);
  if (errnoRet !== undefined) rule.errnoRet = errnoRet;
  if (raw.args != null) {
    if (!Array.isArray(raw.args)) throw new ShapeError(`${where}.args must be a list`);
    const args = raw.args.map((a, j) => parseArg(a, `${where}.args[${j}]`));
    if (args.length) rule.args = args;
  }
  return rule;
}

function parseArg(raw: unknown, where: string): SeccompArg {
  if (!isObject(raw)) throw new ShapeError(`${where} must be an object`);
  const { index, value, valueTwo, op } = raw;
  if (!Number.isInteger(index) || (index as number) < 0 || (index as number) > 5) {
    throw new ShapeError(`${where}.index must be 0 to 5`);
  }
  if (typeof op !== "string" || !OPS.has(op)) throw new ShapeError(`${where}.op must be an SCMP_CMP_* name`);
  // JSON.parse rounds integers past 2^53; a rounded mask or value would silently change the rule.
  const exact = (v: unknown) => Number.isSafeInteger(v) && (v as number) >= 0;
  if (!exact(value)) throw new ShapeError(`${where}.value must be an integer from 0 to 2^53-1`);
  if (valueTwo != null && !exact(valueTwo)) {
    throw new ShapeError(`${where}.valueTwo must be an integer from 0 to 2^53-1`);
  }
  return { index: index as number, value: value as number, valueTwo: (valueTwo ?? 0) as number, op };
}

/** Whether a docker-format rule's `includes` match us and its `excludes` do not. */
function applies(raw: Record<string, unknown>, ctx: Context, where: string): boolean {
  const includes = raw.includes ?? {};
  const excludes = raw.excludes ?? {};
  if (!isObject(includes) || !isObject(excludes)) throw new ShapeError(`${where} includes/excludes must be objects`);
  const list = (v: unknown, key: string) => v == null ? [] : stringList(v, `${where}.${key}`);
  if (!list(includes.caps, "includes.caps").every((c) => ctx.caps.has(c.toUpperCase()))) return false;
  const arches = list(includes.arches, "includes.arches");
  if (arches.length && !arches.includes(ctx.arch.docker)) return false;
  if (includes.minKernel != null) {
    if (typeof includes.minKernel !== "string" || !/^\d+\.\d+/.test(includes.minKernel)) {
      throw new ShapeError(`${where}.includes.minKernel must be like "4.8"`);
    }
    if (compareVersions(ctx.kernel(), version(includes.minKernel)) < 0) return false;
  }
  if (list(excludes.caps, "excludes.caps").some((c) => ctx.caps.has(c.toUpperCase()))) return false;
  if (list(excludes.arches, "excludes.arches").includes(ctx.arch.docker)) return false;
  return true;
}

/** faasd's tightening of a resolved base profile (see the module doc). */
function tighten(base: SeccompProfile, cloneFlags: number): SeccompProfile {
  // Removing names from allow rules tightens only a profile that denies what it does not list.
  if (!DENYING.has(base.defaultAction)) {
    throw new ShapeError(`defaultAction ${base.defaultAction} lets unlisted syscalls run`);
  }
  const denied = new Set(SECCOMP_DENIED);
  // Every base rule on these goes: ours must not overlap with one of another action.
  const replaced = new Set(["clone", "clone3", "ioctl", "setsockopt"]);
  const syscalls: SeccompRule[] = [];
  for (const rule of base.syscalls) {
    const allows = !DENYING.has(rule.action);
    const names = rule.names.filter((n) =>
      !replaced.has(n) && !(allows && denied.has(n)) && !(allows && n === "personality" && !rule.args?.length)
    );
    if (allows && names.includes("socket")) {
      const others = names.filter((n) => n !== "socket");
      if (others.length) syscalls.push({ ...rule, names: others });
      const args = withoutVsock(rule.args ?? []);
      if (args) syscalls.push({ ...rule, names: ["socket"], args });
    } else if (names.length) syscalls.push({ ...rule, names });
  }
  // A denied syscall answers EPERM, as in Docker, unless a base rule already denies it (a second
  // unconditional rule for one syscall would meet libseccomp's precedence).
  const named = new Set(syscalls.flatMap((r) => r.names));
  const eperm = SECCOMP_DENIED.filter((n) => !named.has(n));
  if (eperm.length) syscalls.push({ names: eperm, action: ERRNO, errnoRet: EPERM });

  // Each deny rule below is disjoint from every allow rule of its syscall: libseccomp's precedence never matters.
  syscalls.push(
    ...maskedEq("clone", ALLOW, cloneFlags, CLONE_NAMESPACE_FLAGS, 0),
    ...maskedNe("clone", ERRNO, cloneFlags, CLONE_NAMESPACE_FLAGS, 0, EPERM),
    { names: ["clone3"], action: ERRNO, errnoRet: ENOSYS },
    rule("socket", ERRNO, [{ index: 0, value: AF_VSOCK, valueTwo: 0, op: "SCMP_CMP_EQ" }], EPERM),
    // ioctl's request is an unsigned int but seccomp sees the whole 64-bit register; these masks look only at
    // bits 8..15, so whatever the upper bits hold changes nothing.
    ...maskedNe("ioctl", ALLOW, 1, IOCTL_DENIED_MASK, IOCTL_DENIED_VALUE),
    ...maskedEq("ioctl", ERRNO, 1, IOCTL_DENIED_MASK, IOCTL_DENIED_VALUE, EPERM),
    // Binding the handed-over socket to an interface needs no capability while it is unbound, and reading the name
    // back (SO_BINDTODEVICE) would list the host's interfaces one index at a time. libseccomp lets an unconditional
    // allow win over a conditional deny (tested), so setsockopt is allowed exactly where the level is not SOL_SOCKET
    // or the option is neither of the two, and denied there: disjoint rules again.
    ...except("setsockopt", 1, [SOL_SOCKET]),
    ...except("setsockopt", 2, [SO_BINDTODEVICE, SO_BINDTOIFINDEX]),
    ...[SO_BINDTODEVICE, SO_BINDTOIFINDEX].map((opt) =>
      rule("setsockopt", ERRNO, [
        { index: 1, value: LOW_32, valueTwo: SOL_SOCKET, op: MASKED_EQ },
        { index: 2, value: LOW_32, valueTwo: opt, op: MASKED_EQ },
      ], EPERM)
    ),
  );
  // The native ABI only: a 32-bit (x86, x32) system call fails. No handler built for this host needs them, the x86
  // socketcall multiplexer would pass socket(AF_VSOCK) by the socket rule, and a filter for one architecture is
  // compiled faster at every container start (about 9 of runc's 25 ms, measured).
  return { ...base, architectures: base.architectures.slice(0, 1), syscalls };
}

/**
 * An allowing socket rule's conditions narrowed to families other than AF_VSOCK, or null to drop the rule. runc ORs
 * conditions that share an index, so a rule already testing the family is kept only if that test rejects AF_VSOCK
 * (no second test can be ANDed to it): failing closed.
 */
function withoutVsock(args: SeccompArg[]): SeccompArg[] | null {
  if (new Set(args.map((a) => a.index)).size < args.length) return null;
  const family = args.find((a) => a.index === 0);
  if (!family) return [...args, { index: 0, value: AF_VSOCK, valueTwo: 0, op: "SCMP_CMP_NE" }];
  return conditionHolds(family, BigInt(AF_VSOCK)) ? null : args;
}

/** Whether the argument value `arg` satisfies the condition, as libseccomp compares (unsigned 64-bit). */
export function conditionHolds(c: SeccompArg, arg: bigint): boolean {
  const a = BigInt.asUintN(64, arg), v = BigInt(c.value), v2 = BigInt(c.valueTwo ?? 0);
  switch (c.op) {
    case "SCMP_CMP_EQ":
      return a === v;
    case "SCMP_CMP_NE":
      return a !== v;
    case "SCMP_CMP_LT":
      return a < v;
    case "SCMP_CMP_LE":
      return a <= v;
    case "SCMP_CMP_GT":
      return a > v;
    case "SCMP_CMP_GE":
      return a >= v;
    default: // SCMP_CMP_MASKED_EQ, the only other op parseArg lets through
      return (a & v) === v2;
  }
}

/** The rule matching `(arg & mask) == value`. */
function maskedEq(name: string, action: string, index: number, mask: number, value: number, errnoRet?: number) {
  return [rule(name, action, [{ index, value: mask, valueTwo: value, op: MASKED_EQ }], errnoRet)];
}

/**
 * Rules matching `(arg & mask) != value`: one per bit of the mask, matching when that bit differs from `value`'s.
 * Separate rules of one syscall are ORed; one rule with same-index conditions would rely on runc splitting it.
 */
function maskedNe(name: string, action: string, index: number, mask: number, value: number, errnoRet?: number) {
  const rules: SeccompRule[] = [];
  for (let bit = 1; bit <= mask; bit *= 2) {
    if (Math.floor(mask / bit) % 2 === 0) continue; // not a mask bit (no `&`: masks may pass 32 bits)
    const set = Math.floor(value / bit) % 2 === 1;
    rules.push(rule(name, action, [{ index, value: bit, valueTwo: set ? 0 : bit, op: MASKED_EQ }], errnoRet));
  }
  return rules;
}

/**
 * ALLOW rules for `name` matching every call whose argument `index` (its low 32 bits, as the kernel reads an int)
 * is none of `values`: the complement of those points as prefix blocks, one masked comparison each.
 */
function except(name: string, index: number, values: number[]): SeccompRule[] {
  const rules: SeccompRule[] = [];
  const walk = (depth: number, prefix: number, points: number[]) => {
    if (points.length === 0) {
      const mask = depth === 0 ? 0 : (LOW_32 - (2 ** (32 - depth) - 1));
      rules.push(rule(name, ALLOW, [{ index, value: mask, valueTwo: prefix, op: MASKED_EQ }]));
      return;
    }
    if (depth === 32) return; // one of the excepted values
    const bit = 2 ** (31 - depth);
    walk(depth + 1, prefix, points.filter((p) => Math.floor(p / bit) % 2 === 0));
    walk(depth + 1, prefix + bit, points.filter((p) => Math.floor(p / bit) % 2 === 1));
  };
  walk(0, 0, values);
  return rules;
}

function rule(name: string, action: string, args: SeccompArg[], errnoRet?: number): SeccompRule {
  return errnoRet === undefined ? { names: [name], action, args } : { names: [name], action, errnoRet, args };
}

function isObject(v: unknown): v is Record<string, unknown> {
  return typeof v === "object" && v !== null && !Array.isArray(v);
}

function stringList(v: unknown, where: string): string[] {
  if (!Array.isArray(v) || !v.every((s) => typeof s === "string")) {
    throw new ShapeError(`${where} must be a list of strings`);
  }
  return v;
}

function optionalErrno(v: unknown, where: string): number | undefined {
  if (v == null) return undefined;
  if (!Number.isInteger(v) || (v as number) < 0 || (v as number) > 4095) {
    throw new ShapeError(`${where} must be an errno`);
  }
  return v as number;
}

/** "6.1.0-18-amd64" → [6, 1, 0]. */
function version(release: string): number[] {
  return (release.match(/^\d+(\.\d+)*/)?.[0] ?? "0").split(".").map(Number);
}

function compareVersions(a: number[], b: number[]): number {
  for (let i = 0; i < Math.max(a.length, b.length); i++) {
    const d = (a[i] ?? 0) - (b[i] ?? 0);
    if (d) return d;
  }
  return 0;
}
