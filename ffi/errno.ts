/**
 * {@linkcode ErrnoError}, the one error type the libc bindings throw for a failed system call, and
 * {@linkcode lastError}, the one place that reads `errno`.
 *
 * `errno` is thread-local: it is only meaningful when read on the JS thread right after a synchronous FFI call
 * returned -1, before any other libc call. Calls made with `nonblocking: true` run on a worker thread, so their
 * errno cannot be read at all.
 *
 * @module
 */

import { libc } from "./libc.ts";

/** Linux errno numbers (asm-generic, same on x86_64 and aarch64) and their symbolic names. */
const NAMES: Readonly<Record<number, string>> = {
  1: "EPERM",
  2: "ENOENT",
  3: "ESRCH",
  4: "EINTR",
  5: "EIO",
  6: "ENXIO",
  7: "E2BIG",
  8: "ENOEXEC",
  9: "EBADF",
  10: "ECHILD",
  11: "EAGAIN",
  12: "ENOMEM",
  13: "EACCES",
  14: "EFAULT",
  15: "ENOTBLK",
  16: "EBUSY",
  17: "EEXIST",
  18: "EXDEV",
  19: "ENODEV",
  20: "ENOTDIR",
  21: "EISDIR",
  22: "EINVAL",
  23: "ENFILE",
  24: "EMFILE",
  25: "ENOTTY",
  26: "ETXTBSY",
  27: "EFBIG",
  28: "ENOSPC",
  29: "ESPIPE",
  30: "EROFS",
  31: "EMLINK",
  32: "EPIPE",
  33: "EDOM",
  34: "ERANGE",
  35: "EDEADLK",
  36: "ENAMETOOLONG",
  37: "ENOLCK",
  38: "ENOSYS",
  39: "ENOTEMPTY",
  40: "ELOOP",
  61: "ENODATA",
  62: "ETIME",
  64: "ENONET",
  71: "EPROTO",
  75: "EOVERFLOW",
  88: "ENOTSOCK",
  89: "EDESTADDRREQ",
  90: "EMSGSIZE",
  91: "EPROTOTYPE",
  92: "ENOPROTOOPT",
  93: "EPROTONOSUPPORT",
  94: "ESOCKTNOSUPPORT",
  95: "EOPNOTSUPP",
  96: "EPFNOSUPPORT",
  97: "EAFNOSUPPORT",
  98: "EADDRINUSE",
  99: "EADDRNOTAVAIL",
  100: "ENETDOWN",
  101: "ENETUNREACH",
  102: "ENETRESET",
  103: "ECONNABORTED",
  104: "ECONNRESET",
  105: "ENOBUFS",
  106: "EISCONN",
  107: "ENOTCONN",
  108: "ESHUTDOWN",
  109: "ETOOMANYREFS",
  110: "ETIMEDOUT",
  111: "ECONNREFUSED",
  112: "EHOSTDOWN",
  113: "EHOSTUNREACH",
  114: "EALREADY",
  115: "EINPROGRESS",
  116: "ESTALE",
  122: "EDQUOT",
  125: "ECANCELED",
};

/** The errno values the bindings branch on. */
export const EINTR = 4;
export const ENOENT = 2;
export const EBADF = 9;
export const EAGAIN = 11;
export const ESRCH = 3;
export const ENOTCONN = 107;

/** Returns the symbolic name of an errno value, e.g. `"EAGAIN"`, or `"E<n>"` for one not in the table. */
export function errnoName(errno: number): string {
  return NAMES[errno] ?? `E${errno}`;
}

/** A failed system call: which call, the errno value and its symbolic name. */
export class ErrnoError extends Error {
  /** The errno value, e.g. 99. */
  readonly errno: number;
  /** The symbolic errno name, e.g. `"EADDRNOTAVAIL"`. */
  readonly code: string;
  /** The libc function that failed, e.g. `"bind"`. */
  readonly syscall: string;

  /**
   * @param errno the errno value.
   * @param syscall the libc function that failed.
   * @param detail what the call was about, e.g. `"127.0.0.1:80"`; goes into the message.
   */
  constructor(errno: number, syscall: string, detail?: string, options?: ErrorOptions) {
    const code = errnoName(errno);
    super(`${syscall}${detail ? ` ${detail}` : ""}: ${describe(errno)} (${code})`, options);
    this.name = "ErrnoError";
    this.errno = errno;
    this.code = code;
    this.syscall = syscall;
  }
}

function describe(errno: number): string {
  try {
    const text = libc().strerror(errno);
    return text === null ? `errno ${errno}` : Deno.UnsafePointerView.getCString(text);
  } catch {
    return `errno ${errno}`;
  }
}

/**
 * Reads the calling thread's `errno`. Call it right after a synchronous libc call returned -1; any libc call in
 * between may overwrite it.
 */
export function errno(): number {
  const location = libc().__errno_location();
  if (location === null) throw new Error("__errno_location() returned NULL");
  return new Deno.UnsafePointerView(location).getInt32();
}

/**
 * Builds the {@linkcode ErrnoError} for a synchronous libc call that just returned -1.
 *
 * @param syscall the libc function that failed.
 * @param detail what the call was about, for the message.
 */
export function lastError(syscall: string, detail?: string): ErrnoError {
  return new ErrnoError(errno(), syscall, detail);
}

/**
 * Returns `result` when it is not -1; otherwise throws the call's {@linkcode ErrnoError}.
 *
 * @throws {ErrnoError} when `result` is -1.
 */
export function check(result: number, syscall: string, detail?: string): number {
  if (result === -1) throw lastError(syscall, detail);
  return result;
}
