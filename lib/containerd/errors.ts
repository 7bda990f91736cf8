/**
 * Errors of the containerd client: one class carrying the gRPC status of the failed call, and predicates for the
 * statuses callers branch on.
 *
 * @module
 */

import { Code, ConnectError } from "@connectrpc/connect";

export { Code };

/** A containerd call failed; `code` is its gRPC status, the message names the call: `containerd Service.Method: …`. */
export class ContainerdError extends Error {
  /** The gRPC status code of the failure. */
  readonly code: Code;
  /** `Code` as a name, e.g. `NotFound`. */
  readonly codeName: string;
  /** The call that failed, e.g. `Content.Write`. */
  readonly call: string;

  constructor(call: string, code: Code, message: string, options?: ErrorOptions) {
    super(`containerd ${call}: ${message}`, options);
    this.name = "ContainerdError";
    this.call = call;
    this.code = code;
    this.codeName = Code[code] ?? String(code);
  }

  /** Wraps whatever a call threw; a `ContainerdError` passes through unchanged. */
  static from(call: string, err: unknown): ContainerdError {
    if (err instanceof ContainerdError) return err;
    const connect = ConnectError.from(err);
    // Connect reports a socket that refuses or vanished as Internal/Unknown; callers need to tell it apart.
    const code = connectionFailed(err) ? Code.Unavailable : connect.code;
    return new ContainerdError(call, code, connect.rawMessage || connect.message, { cause: err });
  }
}

const CONNECTION_ERRORS = new Set([
  "ENOENT",
  "ECONNREFUSED",
  "ECONNRESET",
  "EPIPE",
  "ENOTCONN",
  "ERR_HTTP2_INVALID_SESSION",
]);

/** Whether a Node system error about the socket is somewhere in the cause chain. */
function connectionFailed(err: unknown): boolean {
  for (let e = err, depth = 0; e instanceof Error && depth < 5; e = e.cause, depth++) {
    const code = (e as { code?: unknown }).code;
    if (typeof code === "string" && CONNECTION_ERRORS.has(code)) return true;
  }
  return false;
}

/** Whether `err` is a containerd `NotFound` status. */
export function isNotFound(err: unknown): boolean {
  return err instanceof ContainerdError && err.code === Code.NotFound;
}

/** Whether `err` is a containerd `AlreadyExists` status. */
export function isAlreadyExists(err: unknown): boolean {
  return err instanceof ContainerdError && err.code === Code.AlreadyExists;
}

/** Whether `err` says containerd could not be reached (not running, restarting, socket gone). */
export function isUnavailable(err: unknown): boolean {
  return err instanceof ContainerdError && err.code === Code.Unavailable;
}
