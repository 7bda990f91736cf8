/**
 * A typed etcd v3 client over gRPC (Connect, HTTP/2 without TLS) for faasd's cluster state. This is the only module
 * that imports the generated etcd code in `proto/gen/etcd/`: it exposes plain domain types (string keys and values,
 * revisions as numbers, lease ids as bigints), and every failure is an {@linkcode EtcdError}.
 *
 * Endpoints: calls go to the endpoint that answered last. When it is unreachable the next one is tried, for every
 * call that is safe to send twice (reads, puts, deletes, lease calls); a transaction moves on only when its request
 * surely never reached etcd (connection refused, "no leader"), since a transaction applied twice could answer "lost"
 * for a key it created itself. When no endpoint answers, or a call overruns its deadline, the error is an
 * {@linkcode EtcdUnavailableError} (callers map it to 503).
 *
 * Watches resume: when the stream breaks, `watchPrefix()` opens a new one (on the next endpoint) from the revision
 * after the last one it delivered, so no event is lost or repeated; it gives up with an `EtcdUnavailableError` only
 * after no endpoint accepted it for `resumeTimeoutMs`, and ends with an {@linkcode EtcdCompactedError} when the
 * revision it needs was compacted away.
 *
 * Revisions and versions are numbers (etcd's int64 counters stay far below 2^53); lease ids are random 64-bit values
 * and so bigints.
 *
 * @module
 */

import { type CallOptions, type Client, Code, ConnectError, createClient, type Transport } from "@connectrpc/connect";
import { createGrpcTransport, Http2SessionManager } from "@connectrpc/connect-node";
import { create, type MessageInitShape } from "@bufbuild/protobuf";

import {
  Compare_CompareResult,
  Compare_CompareTarget,
  type CompareSchema,
  KV,
  Lease,
  type LeaseKeepAliveRequestSchema,
  type RequestOpSchema,
  type ResponseOp as PbResponseOp,
  Watch,
  type WatchRequest,
  WatchRequestSchema,
} from "../../proto/gen/etcd/etcdserver/etcdserverpb/rpc_pb.ts";
import { Event_EventType, type KeyValue as PbKeyValue } from "../../proto/gen/etcd/mvcc/mvccpb/kv_pb.ts";

export { Code };

// --- domain types ---

/** A key as etcd holds it. */
export interface KeyValue {
  key: string;
  /** The value, decoded as UTF-8. */
  value: string;
  /** Revision of the put that created the key (0 for a deleted key in a watch event). */
  createRevision: number;
  /** Revision of the last change of the key. */
  modRevision: number;
  /** Number of puts since the key was created (0 for a deleted key in a watch event). */
  version: number;
  /** Id of the lease the key is attached to, `0n` for none. */
  lease: bigint;
}

/** A change seen by {@linkcode Etcd.watchPrefix}. */
export interface WatchEvent {
  type: "put" | "delete";
  /** The key after a put; after a delete only `key` and `modRevision` are set. */
  kv: KeyValue;
  /** The revision of the change (= `kv.modRevision`). */
  revision: number;
}

/** How a compare tests its target. */
export type CompareOp = "==" | "!=" | "<" | ">";

/**
 * One condition of a transaction. A missing key has version, createRevision and modRevision 0, so
 * `{ target: "createRevision", op: "==", value: 0 }` means "absent".
 */
export type Compare =
  | { key: string; target: "version" | "createRevision" | "modRevision"; op: CompareOp; value: number }
  | { key: string; target: "value"; op: CompareOp; value: string }
  | { key: string; target: "lease"; op: CompareOp; value: bigint };

/** One operation of a transaction; `prefix` makes it cover every key starting with `key`. */
export type TxnOp =
  | { type: "put"; key: string; value: string; lease?: bigint }
  | { type: "delete"; key: string; prefix?: boolean }
  | { type: "get"; key: string; prefix?: boolean };

/** What one {@linkcode TxnOp} did, in the order of the branch that ran. */
export type TxnOpResult =
  | { type: "put" }
  | { type: "delete"; deleted: number }
  | { type: "get"; kvs: KeyValue[] };

/** A transaction to run: `success` if every compare holds, else `failure`. */
export interface Txn {
  compare: Compare[];
  success?: TxnOp[];
  failure?: TxnOp[];
}

/** The outcome of a transaction. */
export interface TxnResult {
  /** Whether every compare held (and so `success` ran). */
  succeeded: boolean;
  /** The store's revision after the transaction: the modRevision of what it wrote, if it wrote. */
  revision: number;
  results: TxnOpResult[];
}

/** A put inside a multi-key helper. */
export interface PutOp {
  key: string;
  value: string;
  lease?: bigint;
}

/** Why {@linkcode Etcd.keepAlive} stopped renewing. */
export type LeaseEnd =
  /** The caller's signal aborted (or the client was closed): renewals stopped, the lease runs out on its own. */
  | { reason: "aborted" }
  /** etcd says the lease no longer exists (it expired or was revoked): its keys are gone. */
  | { reason: "expired" }
  /** No renewal succeeded before the lease's TTL ran out (etcd unreachable), or etcd refused one: treat as lost. */
  | { reason: "failed"; error: EtcdError };

/** How an {@linkcode Etcd} client connects. */
export interface EtcdOptions {
  /** Client URLs of the cluster's members, `http://HOST:PORT`; tried in order, the last one that answered first. */
  endpoints: string[];
  /** Deadline of each call on one endpoint (and of connecting to it), in ms. Default 5000. */
  timeoutMs?: number;
}

/** Options of {@linkcode Etcd.watchPrefix}. */
export interface WatchOptions {
  /** First revision to report (inclusive); default: changes after the watch is established. */
  fromRevision?: number;
  /** Stops the watch: the iteration then ends without error. */
  signal?: AbortSignal;
  /** How long a broken watch keeps trying to resume before it throws `EtcdUnavailableError`, in ms. Default 30 000. */
  resumeTimeoutMs?: number;
}

// --- errors ---

/** An etcd call failed; `code` is its gRPC status, the message names the call: `etcd Range: …`. */
export class EtcdError extends Error {
  /** The gRPC status code of the failure. */
  readonly code: Code;
  /** `code` as a name, e.g. `InvalidArgument`. */
  readonly codeName: string;
  /** The call that failed, e.g. `Txn`. */
  readonly call: string;

  constructor(call: string, code: Code, message: string, options?: ErrorOptions) {
    super(`etcd ${call}: ${message}`, options);
    this.name = "EtcdError";
    this.call = call;
    this.code = code;
    this.codeName = Code[code] ?? String(code);
  }
}

/** No endpoint could be reached, or the call overran its deadline: the outcome of a write is unknown. */
export class EtcdUnavailableError extends EtcdError {
  constructor(call: string, code: Code, message: string, options?: ErrorOptions) {
    super(call, code, message, options);
    this.name = "EtcdUnavailableError";
  }
}

/** A watch or read needed a revision that etcd has compacted away; start again from a fresh read. */
export class EtcdCompactedError extends EtcdError {
  /** The oldest revision etcd still has. */
  readonly compactRevision: number;

  constructor(call: string, compactRevision: number, options?: ErrorOptions) {
    super(call, Code.OutOfRange, `revision compacted (oldest kept: ${compactRevision})`, options);
    this.name = "EtcdCompactedError";
    this.compactRevision = compactRevision;
  }
}

/** Node errors meaning the request never left this host or never reached a listening etcd. */
const NOT_SENT_ERRORS = new Set(["ECONNREFUSED", "EHOSTUNREACH", "ENETUNREACH", "EADDRNOTAVAIL", "ENOTFOUND"]);
/** Node errors meaning the connection failed (possibly mid-call): etcd is unavailable. */
const CONNECTION_ERRORS = new Set([
  ...NOT_SENT_ERRORS,
  "ECONNRESET",
  "EPIPE",
  "ENOTCONN",
  "ETIMEDOUT",
  "ERR_HTTP2_INVALID_SESSION",
  "ERR_HTTP2_GOAWAY_SESSION",
  "ERR_HTTP2_STREAM_CANCEL",
  "ERR_HTTP2_SESSION_ERROR",
  "ERR_STREAM_PREMATURE_CLOSE",
]);

function causeCodes(err: unknown): string[] {
  const codes: string[] = [];
  for (let e = err, depth = 0; e instanceof Error && depth < 6; e = e.cause, depth++) {
    const code = (e as { code?: unknown }).code;
    if (typeof code === "string") codes.push(code);
  }
  return codes;
}

/** Whether `err` proves the request was not applied, so that even a transaction may be sent elsewhere. */
function surelyNotSent(err: unknown): boolean {
  if (causeCodes(err).some((c) => NOT_SENT_ERRORS.has(c))) return true;
  const connect = err instanceof ConnectError ? err : undefined;
  return connect?.code === Code.Unavailable && connect.rawMessage.includes("etcdserver: no leader");
}

/** Wraps whatever a call threw; an `EtcdError` passes through unchanged. */
function toEtcdError(call: string, err: unknown): EtcdError {
  if (err instanceof EtcdError) return err;
  const connect = ConnectError.from(err);
  const message = connect.rawMessage || connect.message;
  // Canceled: the client's own cancellations never get here (callers check their signals first), so it is etcd
  // resetting the stream, as it does to every open stream when it shuts down.
  if (
    connect.code === Code.Unavailable || connect.code === Code.DeadlineExceeded || connect.code === Code.Canceled ||
    causeCodes(err).some((c) => CONNECTION_ERRORS.has(c))
  ) {
    const code = connect.code === Code.DeadlineExceeded ? Code.DeadlineExceeded : Code.Unavailable;
    return new EtcdUnavailableError(call, code, message, { cause: err });
  }
  return new EtcdError(call, connect.code, message, { cause: err });
}

// --- the client ---

/** One member's client URL and its connection. */
interface Endpoint {
  url: string;
  session: Http2SessionManager;
  kv: Client<typeof KV>;
  lease: Client<typeof Lease>;
  watch: Client<typeof Watch>;
}

const DEFAULT_TIMEOUT_MS = 5_000;
const DEFAULT_RESUME_TIMEOUT_MS = 30_000;
/** Pause between attempts to renew a lease or resume a watch after a failure, growing to the max. */
const RETRY_MIN_MS = 100;
const RETRY_MAX_MS = 2_000;
/** HTTP/2 PINGs on connections with open streams (watches): a silently dead etcd breaks the stream. etcd refuses
 * PINGs more often than every 5 s (`--grpc-keepalive-min-time`). */
const PING_INTERVAL_MS = 30_000;

const encoder = new TextEncoder();
const decoder = new TextDecoder();

/** A typed etcd v3 client of one cluster. */
export class Etcd {
  /** The endpoints, as given. */
  readonly endpoints: readonly string[];
  readonly #timeoutMs: number;
  readonly #members: Endpoint[];
  /** Index of the member that answered last: calls start there. */
  #current = 0;
  readonly #closer = new AbortController();

  /**
   * Creates a client; nothing connects until the first call.
   *
   * @throws {TypeError} when `endpoints` is empty or an endpoint is not an `http://HOST:PORT` URL.
   * @throws {RangeError} when `timeoutMs` is not positive.
   */
  constructor(options: EtcdOptions) {
    if (options.endpoints.length === 0) throw new TypeError("etcd endpoints must not be empty");
    const timeoutMs = options.timeoutMs ?? DEFAULT_TIMEOUT_MS;
    if (!(timeoutMs > 0)) throw new RangeError("etcd timeoutMs must be positive");
    this.#timeoutMs = timeoutMs;
    this.endpoints = [...options.endpoints];
    this.#members = options.endpoints.map((url) => {
      let parsed: URL;
      try {
        parsed = new URL(url);
      } catch (e) {
        throw new TypeError(`etcd endpoint ${JSON.stringify(url)} is not a URL`, { cause: e });
      }
      if (parsed.protocol !== "http:" || !parsed.port || parsed.pathname !== "/") {
        throw new TypeError(`etcd endpoint ${JSON.stringify(url)} is not http://HOST:PORT`);
      }
      const session = new Http2SessionManager(parsed.origin, {
        pingIntervalMs: PING_INTERVAL_MS,
        pingTimeoutMs: timeoutMs,
        connectTimeoutMs: timeoutMs,
      });
      const transport: Transport = createGrpcTransport({ baseUrl: parsed.origin, sessionManager: session });
      return {
        url,
        session,
        kv: createClient(KV, transport),
        lease: createClient(Lease, transport),
        watch: createClient(Watch, transport),
      };
    });
  }

  /** Closes the connections; calls in flight fail, watches end, keep-alives stop. Idempotent; later calls fail. */
  close(): void {
    if (this.#closer.signal.aborted) return;
    this.#closer.abort();
    for (const member of this.#members) member.session.abort();
  }

  [Symbol.dispose](): void {
    this.close();
  }

  // --- keys ---

  /**
   * The key, or null when it does not exist.
   *
   * @throws {EtcdUnavailableError} when no endpoint answers in time.
   * @throws {EtcdError} for other failures.
   */
  async get(key: string): Promise<KeyValue | null> {
    const res = await this.#call("Range", true, (m, o) => m.kv.range({ key: encoder.encode(key) }, o));
    return res.kvs.length > 0 ? toKeyValue(res.kvs[0]) : null;
  }

  /**
   * Every key starting with `prefix` (all keys for `""`), sorted by key, and the store's revision at the read: watch
   * from `revision + 1` to follow on without a gap.
   *
   * @throws {EtcdUnavailableError} when no endpoint answers in time.
   * @throws {EtcdError} for other failures.
   */
  async getPrefix(prefix: string): Promise<{ kvs: KeyValue[]; revision: number }> {
    const range = prefixRange(prefix);
    const res = await this.#call("Range", true, (m, o) => m.kv.range(range, o));
    return { kvs: res.kvs.map(toKeyValue), revision: toNumber(res.header?.revision ?? 0n) };
  }

  /**
   * Sets `key` to `value`, attached to `lease` if given; returns the new revision.
   *
   * @throws {EtcdUnavailableError} when no endpoint answers in time (the put may or may not have happened).
   * @throws {EtcdError} e.g. `NotFound` for an unknown lease.
   */
  async put(key: string, value: string, options: { lease?: bigint } = {}): Promise<number> {
    const req = { key: encoder.encode(key), value: encoder.encode(value), lease: options.lease ?? 0n };
    const res = await this.#call("Put", true, (m, o) => m.kv.put(req, o));
    return toNumber(res.header?.revision ?? 0n);
  }

  /**
   * Deletes `key`; returns whether it existed.
   *
   * @throws {EtcdUnavailableError} when no endpoint answers in time.
   * @throws {EtcdError} for other failures.
   */
  async delete(key: string): Promise<boolean> {
    const res = await this.#call("DeleteRange", true, (m, o) => m.kv.deleteRange({ key: encoder.encode(key) }, o));
    return res.deleted > 0n;
  }

  /**
   * Deletes every key starting with `prefix`; returns how many there were.
   *
   * @throws {RangeError} for an empty prefix (that would be every key).
   * @throws {EtcdUnavailableError} when no endpoint answers in time.
   * @throws {EtcdError} for other failures.
   */
  async deletePrefix(prefix: string): Promise<number> {
    if (prefix === "") throw new RangeError("deletePrefix() needs a non-empty prefix");
    const range = prefixRange(prefix);
    const res = await this.#call("DeleteRange", true, (m, o) => m.kv.deleteRange(range, o));
    return Number(res.deleted);
  }

  /**
   * Compacts the history up to `revision`: watches and reads of older revisions then fail.
   *
   * @throws {EtcdError} `OutOfRange` when `revision` is already compacted or in the future.
   */
  async compact(revision: number): Promise<void> {
    await this.#call("Compact", true, (m, o) => m.kv.compact({ revision: toInt64(revision, "revision") }, o));
  }

  // --- transactions ---

  /**
   * Runs a transaction: if every compare holds, the `success` ops, else the `failure` ops, atomically.
   *
   * @throws {RangeError} for a numeric compare value that is not a safe integer.
   * @throws {EtcdUnavailableError} when no endpoint answers in time (whether it ran is then unknown).
   * @throws {EtcdError} e.g. `InvalidArgument` for a key put twice in one branch.
   */
  async txn(txn: Txn): Promise<TxnResult> {
    const req = {
      compare: txn.compare.map(toPbCompare),
      success: (txn.success ?? []).map(toPbOp),
      failure: (txn.failure ?? []).map(toPbOp),
    };
    const res = await this.#call("Txn", false, (m, o) => m.kv.txn(req, o));
    return {
      succeeded: res.succeeded,
      revision: toNumber(res.header?.revision ?? 0n),
      results: res.responses.map(fromPbResponse),
    };
  }

  /**
   * Creates `key` only if it does not exist; returns false (and changes nothing) when it does.
   *
   * @throws {EtcdUnavailableError} when no endpoint answers in time (whether it was created is then unknown).
   * @throws {EtcdError} for other failures.
   */
  create(key: string, value: string, options: { lease?: bigint } = {}): Promise<boolean> {
    return this.putIfAbsent(key, [{ key, value, lease: options.lease }]);
  }

  /**
   * Puts every entry of `puts` atomically if `absentKey` does not exist (e.g. an IP's key and the record naming it);
   * returns false, changing nothing, when it exists.
   *
   * @throws {EtcdUnavailableError} when no endpoint answers in time (whether they were put is then unknown).
   * @throws {EtcdError} e.g. `InvalidArgument` for a key given twice.
   */
  async putIfAbsent(absentKey: string, puts: PutOp[]): Promise<boolean> {
    const res = await this.txn({
      compare: [{ key: absentKey, target: "createRevision", op: "==", value: 0 }],
      success: puts.map((p) => ({ type: "put", ...p })),
    });
    return res.succeeded;
  }

  /**
   * Compare-and-swap: puts `key` only if its modRevision is still `modRevision` (0: only if it does not exist);
   * returns false, changing nothing, when it changed since.
   *
   * @throws {EtcdUnavailableError} when no endpoint answers in time (whether it was put is then unknown).
   * @throws {EtcdError} for other failures.
   */
  async putIfModRevision(
    key: string,
    value: string,
    modRevision: number,
    options: { lease?: bigint } = {},
  ): Promise<boolean> {
    const res = await this.txn({
      compare: [{ key, target: "modRevision", op: "==", value: modRevision }],
      success: [{ type: "put", key, value, lease: options.lease }],
    });
    return res.succeeded;
  }

  /**
   * Deletes every key of `keys` atomically if `guardKey`'s modRevision is still `modRevision`; returns false,
   * changing nothing, when it changed since. `guardKey` may be one of `keys`.
   *
   * @throws {EtcdUnavailableError} when no endpoint answers in time (whether they were deleted is then unknown).
   * @throws {EtcdError} for other failures.
   */
  async deleteIfModRevision(guardKey: string, modRevision: number, keys: string[]): Promise<boolean> {
    const res = await this.txn({
      compare: [{ key: guardKey, target: "modRevision", op: "==", value: modRevision }],
      success: keys.map((key) => ({ type: "delete", key })),
    });
    return res.succeeded;
  }

  // --- leases ---

  /**
   * Grants a lease of `ttlSeconds` (etcd may raise it to its minimum, about 2 s by default) and returns its id.
   *
   * @throws {RangeError} when `ttlSeconds` is not a positive integer.
   * @throws {EtcdUnavailableError} when no endpoint answers in time.
   * @throws {EtcdError} for other failures.
   */
  async grantLease(ttlSeconds: number): Promise<bigint> {
    if (!Number.isSafeInteger(ttlSeconds) || ttlSeconds <= 0) {
      throw new RangeError(`lease TTL must be a positive integer, got ${ttlSeconds}`);
    }
    // Retrying on another endpoint is harmless: a lease granted twice leaves one unused lease that expires.
    const res = await this.#call("LeaseGrant", true, (m, o) => m.lease.leaseGrant({ TTL: BigInt(ttlSeconds) }, o));
    if (res.error) throw new EtcdError("LeaseGrant", Code.Unknown, res.error);
    return res.ID;
  }

  /**
   * Revokes a lease, deleting the keys attached to it. A lease that is already gone is no error.
   *
   * @throws {EtcdUnavailableError} when no endpoint answers in time.
   * @throws {EtcdError} for other failures.
   */
  async revokeLease(id: bigint): Promise<void> {
    try {
      await this.#call("LeaseRevoke", true, (m, o) => m.lease.leaseRevoke({ ID: id }, o));
    } catch (err) {
      if (err instanceof EtcdError && err.code === Code.NotFound) return;
      throw err;
    }
  }

  /**
   * Keeps a lease alive until `signal` aborts: renews it at once, then every third of its TTL. A renewal that fails
   * because etcd is unreachable is retried until the TTL of the last successful renewal has run out. Resolves (never
   * rejects) with why it stopped: `aborted`, `expired` (etcd no longer knows the lease) or `failed` (no renewal in
   * time, or etcd refused one); in the last two cases the caller no longer holds what the lease held.
   */
  async keepAlive(id: bigint, signal: AbortSignal): Promise<LeaseEnd> {
    const stop = AbortSignal.any([signal, this.#closer.signal]);
    // Before the first renewal the TTL is unknown: give it one call deadline.
    let expiresAt = Date.now() + this.#timeoutMs;
    let failures = 0;
    while (!stop.aborted) {
      const sentAt = Date.now();
      let ttl: number;
      try {
        ttl = await this.#renew(id, stop);
      } catch (err) {
        if (stop.aborted) break;
        const error = toEtcdError("LeaseKeepAlive", err);
        if (!(error instanceof EtcdUnavailableError) || Date.now() >= expiresAt) return { reason: "failed", error };
        await delay(Math.min(backoff(failures++), Math.max(0, expiresAt - Date.now())), stop);
        continue;
      }
      if (ttl <= 0) return { reason: "expired" };
      failures = 0;
      expiresAt = sentAt + ttl * 1000;
      await delay(ttl * 1000 / 3, stop);
    }
    return { reason: "aborted" };
  }

  /** One renewal: a LeaseKeepAlive stream carrying one request, closed after its answer; returns the new TTL. */
  #renew(id: bigint, signal: AbortSignal): Promise<number> {
    return this.#call("LeaseKeepAlive", true, async (m, o) => {
      async function* one(): AsyncGenerator<MessageInitShape<typeof LeaseKeepAliveRequestSchema>> {
        yield { ID: id };
      }
      for await (const res of m.lease.leaseKeepAlive(one(), o)) return toNumber(res.TTL);
      throw new EtcdUnavailableError("LeaseKeepAlive", Code.Unavailable, "stream ended without an answer");
    }, signal);
  }

  // --- watches ---

  /**
   * Reports every change of a key starting with `prefix`, in revision order, from `fromRevision` (default: changes
   * after the watch is established). The iteration ends without error when `signal` aborts, the client is closed or
   * the caller stops iterating. A broken stream is resumed from the revision after the last one delivered.
   *
   * @throws {EtcdCompactedError} (from the iteration) when a revision the watch needs was compacted.
   * @throws {EtcdUnavailableError} (from the iteration) when no endpoint accepted the watch for `resumeTimeoutMs`.
   * @throws {EtcdError} (from the iteration) when etcd cancels the watch for another reason.
   */
  async *watchPrefix(prefix: string, options: WatchOptions = {}): AsyncGenerator<WatchEvent, void, undefined> {
    const stop = options.signal ? AbortSignal.any([options.signal, this.#closer.signal]) : this.#closer.signal;
    const resumeTimeoutMs = options.resumeTimeoutMs ?? DEFAULT_RESUME_TIMEOUT_MS;
    const range = prefixRange(prefix);
    /** The first revision not yet delivered; 0 until known (a watch "from now" not yet established). */
    let next = options.fromRevision === undefined ? 0 : toNumber(toInt64(options.fromRevision, "fromRevision"));
    let brokenSince: number | undefined;
    let failures = 0;
    while (!stop.aborted) {
      const member = this.#members[this.#current];
      const call = new AbortController();
      const callSignal = AbortSignal.any([stop, call.signal]);
      try {
        const responses = member.watch.watch(holdOpen(watchCreateRequest(range, next), callSignal), {
          signal: callSignal,
        });
        for await (const res of responses) {
          if (res.compactRevision > 0n) throw new EtcdCompactedError("Watch", toNumber(res.compactRevision));
          if (res.canceled) {
            throw new EtcdError("Watch", Code.Aborted, res.cancelReason || "watch canceled by etcd");
          }
          const revision = toNumber(res.header?.revision ?? 0n);
          if (res.created) {
            // Established: from here on a break is resumed, and "from now" means after this revision.
            brokenSince = undefined;
            failures = 0;
            if (next === 0) next = revision + 1;
            continue;
          }
          for (const ev of res.events) {
            if (!ev.kv) continue;
            const kv = toKeyValue(ev.kv);
            next = kv.modRevision + 1;
            yield { type: ev.type === Event_EventType.DELETE ? "delete" : "put", kv, revision: kv.modRevision };
          }
          // A response without events is a progress report: everything up to its revision was delivered.
          if (res.events.length === 0 && revision >= next) next = revision + 1;
        }
        // etcd never ends a watch stream we keep open: an end without status is a break like any other.
        throw new EtcdUnavailableError("Watch", Code.Unavailable, "stream ended");
      } catch (err) {
        if (stop.aborted) return;
        const error = toEtcdError("Watch", err);
        if (!(error instanceof EtcdUnavailableError)) throw error;
        brokenSince ??= Date.now();
        if (Date.now() - brokenSince >= resumeTimeoutMs) throw error;
        this.#current = (this.#current + 1) % this.#members.length;
        await delay(backoff(failures++), stop);
      } finally {
        call.abort();
      }
    }
  }

  // --- plumbing ---

  /**
   * Runs `fn` against the members, starting with the one that answered last, moving on while one is unavailable and
   * a retry is safe (`repeatable`, or the request surely never reached etcd).
   */
  async #call<T>(
    name: string,
    repeatable: boolean,
    fn: (member: Endpoint, options: CallOptions) => Promise<T>,
    signal?: AbortSignal,
  ): Promise<T> {
    if (this.#closer.signal.aborted) throw new EtcdError(name, Code.Canceled, "client closed");
    const callSignal = signal ? AbortSignal.any([signal, this.#closer.signal]) : this.#closer.signal;
    const options: CallOptions = { timeoutMs: this.#timeoutMs, signal: callSignal };
    let last: EtcdError | undefined;
    for (let i = 0; i < this.#members.length; i++) {
      const index = (this.#current + i) % this.#members.length;
      try {
        const result = await fn(this.#members[index], options);
        this.#current = index;
        return result;
      } catch (err) {
        if (err instanceof RangeError) throw err;
        if (this.#closer.signal.aborted) throw new EtcdError(name, Code.Canceled, "client closed", { cause: err });
        const error = toEtcdError(name, err);
        if (!(error instanceof EtcdUnavailableError) || (!repeatable && !surelyNotSent(err))) throw error;
        last = error;
      }
    }
    throw last!;
  }
}

// --- conversions ---

/** The range of keys starting with `prefix`: etcd's `range_end` is the prefix with its last byte incremented. */
function prefixRange(prefix: string): { key: Uint8Array; rangeEnd: Uint8Array } {
  const key = encoder.encode(prefix);
  // "\0" as both key and range end means every key.
  if (key.length === 0) return { key: new Uint8Array([0]), rangeEnd: new Uint8Array([0]) };
  let end = key.length;
  while (end > 0 && key[end - 1] === 0xff) end--;
  if (end === 0) return { key, rangeEnd: new Uint8Array([0]) };
  const rangeEnd = key.slice(0, end);
  rangeEnd[end - 1]++;
  return { key, rangeEnd };
}

function toKeyValue(kv: PbKeyValue): KeyValue {
  return {
    key: decoder.decode(kv.key),
    value: decoder.decode(kv.value),
    createRevision: toNumber(kv.createRevision),
    modRevision: toNumber(kv.modRevision),
    version: toNumber(kv.version),
    lease: kv.lease,
  };
}

function toNumber(n: bigint): number {
  return Number(n);
}

function toInt64(n: number, what: string): bigint {
  if (!Number.isSafeInteger(n) || n < 0) throw new RangeError(`${what} must be a non-negative integer, got ${n}`);
  return BigInt(n);
}

const COMPARE_RESULT: Record<CompareOp, Compare_CompareResult> = {
  "==": Compare_CompareResult.EQUAL,
  "!=": Compare_CompareResult.NOT_EQUAL,
  "<": Compare_CompareResult.LESS,
  ">": Compare_CompareResult.GREATER,
};

function toPbCompare(c: Compare): MessageInitShape<typeof CompareSchema> {
  const base = { key: encoder.encode(c.key), result: COMPARE_RESULT[c.op] };
  switch (c.target) {
    case "version":
      return {
        ...base,
        target: Compare_CompareTarget.VERSION,
        targetUnion: { case: "version", value: toInt64(c.value, "version") },
      };
    case "createRevision":
      return {
        ...base,
        target: Compare_CompareTarget.CREATE,
        targetUnion: { case: "createRevision", value: toInt64(c.value, "createRevision") },
      };
    case "modRevision":
      return {
        ...base,
        target: Compare_CompareTarget.MOD,
        targetUnion: { case: "modRevision", value: toInt64(c.value, "modRevision") },
      };
    case "value":
      return {
        ...base,
        target: Compare_CompareTarget.VALUE,
        targetUnion: { case: "value", value: encoder.encode(c.value) },
      };
    case "lease":
      return { ...base, target: Compare_CompareTarget.LEASE, targetUnion: { case: "lease", value: c.value } };
  }
}

function toPbOp(op: TxnOp): MessageInitShape<typeof RequestOpSchema> {
  switch (op.type) {
    case "put": {
      const value = { key: encoder.encode(op.key), value: encoder.encode(op.value), lease: op.lease ?? 0n };
      return { request: { case: "requestPut", value } };
    }
    case "delete": {
      const value = op.prefix ? prefixRange(op.key) : { key: encoder.encode(op.key) };
      return { request: { case: "requestDeleteRange", value } };
    }
    case "get": {
      const value = op.prefix ? prefixRange(op.key) : { key: encoder.encode(op.key) };
      return { request: { case: "requestRange", value } };
    }
  }
}

function fromPbResponse(res: PbResponseOp): TxnOpResult {
  switch (res.response.case) {
    case "responsePut":
      return { type: "put" };
    case "responseDeleteRange":
      return { type: "delete", deleted: Number(res.response.value.deleted) };
    case "responseRange":
      return { type: "get", kvs: res.response.value.kvs.map(toKeyValue) };
    default:
      throw new EtcdError("Txn", Code.Internal, `unexpected response ${res.response.case}`);
  }
}

function watchCreateRequest(range: { key: Uint8Array; rangeEnd: Uint8Array }, from: number): WatchRequest {
  return create(WatchRequestSchema, {
    requestUnion: {
      case: "createRequest",
      value: { ...range, startRevision: BigInt(from), progressNotify: true },
    },
  });
}

/** The request side of a watch stream: the create request, then open until `signal` aborts. */
async function* holdOpen(first: WatchRequest, signal: AbortSignal): AsyncGenerator<WatchRequest> {
  yield first;
  await delay(Infinity, signal);
}

// --- timing ---

/** Pause before the attempt after `failures` failed ones. */
function backoff(failures: number): number {
  return Math.min(RETRY_MAX_MS, RETRY_MIN_MS * 2 ** failures);
}

/** Resolves after `ms` (never for Infinity), or at once when `signal` aborts; leaves no timer behind. */
function delay(ms: number, signal: AbortSignal): Promise<void> {
  if (signal.aborted) return Promise.resolve();
  return new Promise((resolve) => {
    const done = () => {
      clearTimeout(timer);
      signal.removeEventListener("abort", done);
      resolve();
    };
    const timer = Number.isFinite(ms) ? setTimeout(done, ms) : undefined;
    signal.addEventListener("abort", done, { once: true });
  });
}
