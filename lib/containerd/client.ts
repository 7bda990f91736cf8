/**
 * A typed containerd client over gRPC (Connect) on containerd's Unix socket. This is the only module that imports the
 * generated code in `proto/gen/`: everything it exposes is a plain domain type from `./types.ts`, and every failure is
 * a {@linkcode ContainerdError}.
 *
 * Every call carries the client's namespace in the `containerd-namespace` header; calls that take `lease` carry it in
 * `containerd-lease`, so that what they create is held by that lease until it is deleted.
 *
 * The HTTP/2 connection is opened lazily and reopened after it broke (containerd restarted), so one client lives as
 * long as the daemon does.
 *
 * @module
 */

import * as net from "node:net";
import { createHash } from "node:crypto";
import { type CallOptions, type Client, Code, createClient, type Transport } from "@connectrpc/connect";
import { createGrpcTransport, Http2SessionManager } from "@connectrpc/connect-node";
import { create, type MessageInitShape, toBinary } from "@bufbuild/protobuf";
import { AnySchema, type Timestamp, timestampDate } from "@bufbuild/protobuf/wkt";

import { Version } from "../../proto/gen/github.com/containerd/containerd/api/services/version/v1/version_pb.ts";
import {
  Content,
  type Info as PbContentInfo,
  type Status as PbStatus,
  WriteAction,
  type WriteContentRequestSchema,
  type WriteContentResponse,
} from "../../proto/gen/github.com/containerd/containerd/api/services/content/v1/content_pb.ts";
import {
  type Image as PbImage,
  Images,
  type ImageSchema,
} from "../../proto/gen/github.com/containerd/containerd/api/services/images/v1/images_pb.ts";
import {
  type Lease as PbLease,
  Leases,
} from "../../proto/gen/github.com/containerd/containerd/api/services/leases/v1/leases_pb.ts";
import {
  type Info as PbSnapshotInfo,
  Kind,
  Snapshots,
} from "../../proto/gen/github.com/containerd/containerd/api/services/snapshots/v1/snapshots_pb.ts";
import { Diff } from "../../proto/gen/github.com/containerd/containerd/api/services/diff/v1/diff_pb.ts";
import {
  type Container as PbContainer,
  Containers,
} from "../../proto/gen/github.com/containerd/containerd/api/services/containers/v1/containers_pb.ts";
import { Tasks } from "../../proto/gen/github.com/containerd/containerd/api/services/tasks/v1/tasks_pb.ts";
import {
  type Process as PbProcess,
  Status as PbTaskStatus,
} from "../../proto/gen/github.com/containerd/containerd/api/types/task/task_pb.ts";
import type {
  Descriptor as PbDescriptor,
  DescriptorSchema,
} from "../../proto/gen/github.com/containerd/containerd/api/types/descriptor_pb.ts";
import type {
  Mount as PbMount,
  MountSchema,
} from "../../proto/gen/github.com/containerd/containerd/api/types/mount_pb.ts";
import { OptionsSchema as RuncOptionsSchema } from "../../proto/gen/github.com/containerd/containerd/runtime/v2/runc/options/oci_pb.ts";

import { concatBytes } from "../bytes.ts";
import { ContainerdError, isAlreadyExists, isNotFound } from "./errors.ts";
import type {
  ContainerInfo,
  ContainerSpec,
  ContentInfo,
  Descriptor,
  ExitStatus,
  ImageInfo,
  IngestStatus,
  LeaseInfo,
  LeaseResource,
  Mount,
  SnapshotInfo,
  SnapshotKind,
  TaskInfo,
  TaskSpec,
  TaskStatus,
  VersionInfo,
  WrittenBlob,
} from "./types.ts";
import { randomHex } from "../random.ts";

export * from "./types.ts";
export { Code, ContainerdError, isAlreadyExists, isNotFound, isUnavailable } from "./errors.ts";

/** Type URL under which containerd expects the OCI runtime spec (JSON). */
const SPEC_TYPE_URL = "types.containerd.io/opencontainers/runtime-spec/1/Spec";
/** Type URL of runc shim options; containerd resolves it by message name, not `type.googleapis.com/…`. */
const RUNC_OPTIONS_TYPE_URL = "containerd.runc.v1.Options";
/** Label that makes containerd's GC drop a lease after this time (RFC 3339). */
const LEASE_EXPIRE_LABEL = "containerd.io/gc.expire";

/** Bytes per `Content.Write` message; containerd accepts up to 16 MiB per message. */
const WRITE_CHUNK = 1 << 20;
/** Write messages sent before waiting for their acknowledgement: bounds memory, keeps the pipe full. */
const WRITE_WINDOW = 4;

/** Handed from `withNamespace()` to the constructor, so that the connection sharing stays out of the public API. */
let sharedSession: Http2SessionManager | undefined;

/** How a {@linkcode Containerd} client connects. */
export interface ContainerdOptions {
  /** Path of containerd's gRPC Unix socket, e.g. `/run/containerd/containerd.sock`. */
  address: string;
  /** The namespace every call works in. */
  namespace: string;
}

/** Options of calls that create resources which must survive until the caller is done with them. */
export interface LeaseOption {
  /** Lease id sent as `containerd-lease`: what the call creates is held by that lease. */
  lease?: string;
}

/** Options of `writeBlob()`. */
export interface WriteBlobOptions extends LeaseOption {
  /** Ingest reference: unique per concurrent write; names the ingest to abort on failure. */
  ref: string;
  /** Expected digest: containerd verifies it on commit (and answers early when the blob exists). */
  expected?: string;
  /** Expected size in bytes: containerd verifies it on commit. */
  total?: number;
  /** Labels of the committed blob. */
  labels?: Record<string, string>;
  /** Cancels the write (the ingest is aborted). */
  signal?: AbortSignal;
}

/** A typed client of one containerd namespace. */
export class Containerd {
  /** The socket path the client connects to. */
  readonly address: string;
  /** The namespace of every call. */
  readonly namespace: string;

  readonly #session: Http2SessionManager;
  readonly #owner: boolean;
  readonly #version: Client<typeof Version>;
  readonly #content: Client<typeof Content>;
  readonly #images: Client<typeof Images>;
  readonly #leases: Client<typeof Leases>;
  readonly #snapshots: Client<typeof Snapshots>;
  readonly #diff: Client<typeof Diff>;
  readonly #containers: Client<typeof Containers>;
  readonly #tasks: Client<typeof Tasks>;

  /**
   * Creates a client; nothing connects until the first call.
   *
   * @throws {TypeError} when `address` or `namespace` is empty.
   */
  constructor(options: ContainerdOptions) {
    if (!options.address) throw new TypeError("containerd address must not be empty");
    if (!options.namespace) throw new TypeError("containerd namespace must not be empty");
    this.address = options.address;
    this.namespace = options.namespace;
    const shared = sharedSession;
    sharedSession = undefined;
    this.#owner = shared === undefined;
    const socket = options.address;
    this.#session = shared ?? new Http2SessionManager("http://localhost", { idleConnectionTimeoutMs: 60_000 }, {
      createConnection: () => net.connect(socket),
    });
    const transport: Transport = createGrpcTransport({
      baseUrl: "http://localhost",
      sessionManager: this.#session,
      interceptors: [(next) => (req) => {
        req.header.set("containerd-namespace", options.namespace);
        return next(req);
      }],
    });
    this.#version = createClient(Version, transport);
    this.#content = createClient(Content, transport);
    this.#images = createClient(Images, transport);
    this.#leases = createClient(Leases, transport);
    this.#snapshots = createClient(Snapshots, transport);
    this.#diff = createClient(Diff, transport);
    this.#containers = createClient(Containers, transport);
    this.#tasks = createClient(Tasks, transport);
  }

  /** A client of another namespace sharing this client's connection (closing it does not close the connection). */
  withNamespace(namespace: string): Containerd {
    sharedSession = this.#session;
    try {
      return new Containerd({ address: this.address, namespace });
    } finally {
      sharedSession = undefined;
    }
  }

  /** Closes the connection (and any call in flight). Idempotent; a later call reconnects. */
  close(): void {
    if (this.#owner) this.#session.abort();
  }

  [Symbol.dispose](): void {
    this.close();
  }

  // --- version ---

  /**
   * The daemon's version; also a cheap readiness probe.
   *
   * @throws {ContainerdError} `Unavailable` when containerd cannot be reached.
   */
  async version(): Promise<VersionInfo> {
    const res = await call("Version.Version", () => this.#version.version({}));
    return { version: res.version, revision: res.revision };
  }

  // --- leases ---

  /**
   * Creates a lease and returns its id.
   *
   * @param options.id the lease id; default a random `faasd-…` id.
   * @param options.expireAfterSeconds lets containerd's GC drop the lease after this long, should its owner die.
   * @throws {ContainerdError} e.g. `AlreadyExists` for a taken id.
   */
  async createLease(
    options: { id?: string; labels?: Record<string, string>; expireAfterSeconds?: number } = {},
  ): Promise<string> {
    const labels = { ...options.labels };
    if (options.expireAfterSeconds !== undefined) {
      if (!(options.expireAfterSeconds > 0)) throw new RangeError("expireAfterSeconds must be positive");
      const at = new Date(Date.now() + options.expireAfterSeconds * 1000);
      labels[LEASE_EXPIRE_LABEL] = at.toISOString().replace(/\.\d+Z$/, "Z");
    }
    const id = options.id ?? `faasd-${randomHex(8)}`;
    const res = await call("Leases.Create", () => this.#leases.create({ id, labels }));
    return res.lease?.id ?? id;
  }

  /**
   * Deletes a lease. With `sync`, returns only after the garbage collection it triggers has run, so that what only
   * the lease held is gone.
   *
   * @throws {ContainerdError} `NotFound` when there is no such lease.
   */
  async deleteLease(id: string, options: { sync?: boolean } = {}): Promise<void> {
    await call("Leases.Delete", () => this.#leases.delete({ id, sync: options.sync ?? false }));
  }

  /** Leases of the namespace, optionally filtered (containerd filter syntax, e.g. `labels."faasd.lease"==import`). */
  async listLeases(...filters: string[]): Promise<LeaseInfo[]> {
    const res = await call("Leases.List", () => this.#leases.list({ filters }));
    return res.leases.map(toLeaseInfo);
  }

  /**
   * Adds an existing resource to a lease, e.g. a committed snapshot found to exist already.
   *
   * @throws {ContainerdError} `NotFound` for an unknown lease.
   */
  async addLeaseResource(id: string, resource: LeaseResource): Promise<void> {
    await call("Leases.AddResource", () => this.#leases.addResource({ id, resource }));
  }

  /** Resources held by a lease. */
  async listLeaseResources(id: string): Promise<LeaseResource[]> {
    const res = await call("Leases.ListResources", () => this.#leases.listResources({ id }));
    return res.resources.map((r) => ({ id: r.id, type: r.type }));
  }

  // --- content ---

  /**
   * Streams `source` into the content store and commits it. The source is read at the pace containerd acknowledges
   * (a few MiB in flight at most), never buffered whole. On any failure — of the source, containerd, a digest or size
   * mismatch — the ingest is aborted before the error is thrown.
   *
   * The digest is computed here as the data flows and checked against what containerd committed. When the blob
   * exists already it is added to `lease` and returned; when `expected` was given, containerd says so on the first
   * message and the write stops early without reading the rest of `source` (the caller owns draining it).
   *
   * @returns the committed digest and size.
   * @throws {ContainerdError} from containerd (`FailedPrecondition` for a digest or size mismatch); whatever the
   *   source threw, unchanged.
   */
  async writeBlob(
    source: AsyncIterable<Uint8Array> | Iterable<Uint8Array> | ReadableStream<Uint8Array>,
    options: WriteBlobOptions,
  ): Promise<WrittenBlob> {
    const { ref, lease } = options;
    if (!ref) throw new TypeError("writeBlob: ref must not be empty");
    const total = BigInt(options.total ?? 0);
    const expected = options.expected ?? "";
    const labels = options.labels ?? {};
    const abort = new AbortController();
    const onAbort = () => abort.abort(options.signal?.reason);
    options.signal?.addEventListener("abort", onAbort, { once: true });
    const requests = new Channel<MessageInitShape<typeof WriteContentRequestSchema>>();
    const responses = this.#content.write(requests, {
      headers: leaseHeaders(lease),
      signal: abort.signal,
    })[Symbol.asyncIterator]();
    let inFlight = 0;
    const acknowledge = async (): Promise<WriteContentResponse> => {
      let next: IteratorResult<WriteContentResponse>;
      try {
        next = await responses.next();
      } catch (err) {
        throw ContainerdError.from("Content.Write", err);
      }
      if (next.done) throw new ContainerdError("Content.Write", Code.Internal, "stream ended before the commit");
      inFlight--;
      return next.value;
    };
    const hash = createHash("sha256");
    let offset = 0n;
    let complete = false;
    try {
      let first = true;
      for await (const data of rechunk(source, WRITE_CHUNK)) {
        options.signal?.throwIfAborted();
        hash.update(data);
        requests.push({ action: WriteAction.WRITE, ref, offset, data, ...(first ? { total, expected } : {}) });
        first = false;
        offset += BigInt(data.length);
        inFlight++;
        while (inFlight >= WRITE_WINDOW) await acknowledge();
      }
      complete = true;
      requests.push({ action: WriteAction.COMMIT, ref, offset, total, expected, labels });
      inFlight++;
      let last: WriteContentResponse | undefined;
      while (inFlight > 0) last = await acknowledge();
      requests.close();
      // containerd repeats the last response once the request stream ends; read to the end to finish the call.
      for (;;) {
        const next = await responses.next().catch((err) => {
          throw ContainerdError.from("Content.Write", err);
        });
        if (next.done) break;
      }
      const digest = `sha256:${hash.digest("hex")}`;
      if (last!.digest !== digest) {
        throw new ContainerdError("Content.Write", Code.DataLoss, `committed ${last!.digest}, but sent ${digest}`);
      }
      return { digest, size: Number(last!.offset) };
    } catch (err) {
      requests.close();
      abort.abort();
      // Reading on (rather than return()) settles the call inside Connect, which would otherwise reject unobserved.
      try {
        while (!(await responses.next()).done);
      } catch {
        // the cancellation we just caused, or the error being handled
      }
      if (isAlreadyExists(err)) {
        // The blob is there already (containerd answers so on the first message when `expected` is known, else on
        // commit). Hold it in the lease too: until our own references exist, nothing else may keep it from GC. The
        // lease comes first: a collection of whatever used the blob may be under way until the lease holds it.
        const digest = complete ? `sha256:${hash.digest("hex")}` : expected;
        if (digest && lease) await this.addLeaseResource(lease, { type: "content", id: digest });
        const info = digest ? await this.contentInfo(digest) : null;
        if (info) return { digest: info.digest, size: info.size };
      }
      await this.abortIngest(ref).catch(() => {});
      throw err;
    } finally {
      options.signal?.removeEventListener("abort", onAbort);
    }
  }

  /**
   * Reads a whole blob into memory; meant for manifests and configs.
   *
   * @throws {RangeError} when the blob is larger than `maxBytes` (default 16 MiB).
   * @throws {ContainerdError} `NotFound` for an unknown digest.
   */
  async readBlob(digest: string, options: { maxBytes?: number } = {}): Promise<Uint8Array> {
    const maxBytes = options.maxBytes ?? 16 << 20;
    const chunks: Uint8Array[] = [];
    let size = 0;
    await call("Content.Read", async () => {
      for await (const res of this.#content.read({ digest })) {
        size += res.data.length;
        if (size > maxBytes) throw new RangeError(`blob ${digest} is larger than ${maxBytes} bytes`);
        chunks.push(res.data);
      }
    });
    return concatBytes(chunks, size);
  }

  /**
   * Streams a blob out of the content store at the pace it is read (containerd sends it in pieces of up to 1 MiB),
   * never holding it whole; meant for layers. The call starts at the first read; cancelling the stream ends it.
   *
   * The stream errors with a {@linkcode ContainerdError}: `NotFound` for an unknown digest, `Canceled` once `signal`
   * aborts.
   */
  readBlobStream(digest: string, options: { signal?: AbortSignal } = {}): ReadableStream<Uint8Array> {
    const cancelled = new AbortController();
    const signal = options.signal ? AbortSignal.any([options.signal, cancelled.signal]) : cancelled.signal;
    let responses: AsyncIterator<{ data: Uint8Array }> | undefined;
    return new ReadableStream<Uint8Array>({
      pull: async (controller) => {
        responses ??= this.#content.read({ digest }, { signal })[Symbol.asyncIterator]();
        try {
          for (;;) {
            const next = await responses.next();
            if (next.done) return controller.close();
            if (next.value.data.length > 0) return controller.enqueue(next.value.data);
          }
        } catch (err) {
          throw ContainerdError.from("Content.Read", err);
        }
      },
      cancel: async () => {
        cancelled.abort();
        await responses?.return?.().catch(() => {});
      },
    }, { highWaterMark: 0 });
  }

  /** A committed blob's info, or null when there is none. */
  async contentInfo(digest: string): Promise<ContentInfo | null> {
    try {
      const res = await call("Content.Info", () => this.#content.info({ digest }));
      return res.info ? toContentInfo(res.info) : null;
    } catch (err) {
      if (isNotFound(err)) return null;
      throw err;
    }
  }

  /**
   * Sets labels of a committed blob, leaving its other labels alone; an empty value removes a label.
   *
   * @throws {ContainerdError} `NotFound` for an unknown digest.
   */
  async updateContentLabels(digest: string, labels: Record<string, string>): Promise<ContentInfo> {
    const paths = Object.keys(labels).map((k) => `labels.${k}`);
    const res = await call("Content.Update", () =>
      this.#content.update({
        info: { digest, labels: dropEmpty(labels) },
        updateMask: { paths },
      }));
    return toContentInfo(res.info!);
  }

  /**
   * Deletes a blob.
   *
   * @throws {ContainerdError} `NotFound` for an unknown digest.
   */
  async deleteContent(digest: string): Promise<void> {
    await call("Content.Delete", () => this.#content.delete({ digest }));
  }

  /** Committed blobs, optionally filtered (e.g. `labels."io.faasd.function"==hello`). */
  async listContent(...filters: string[]): Promise<ContentInfo[]> {
    const out: ContentInfo[] = [];
    await call("Content.List", async () => {
      for await (const res of this.#content.list({ filters })) out.push(...res.info.map(toContentInfo));
    });
    return out;
  }

  /** Ingests in progress (or left behind), optionally filtered (e.g. `ref~=^faasd-`). */
  async listIngests(...filters: string[]): Promise<IngestStatus[]> {
    const res = await call("Content.ListStatuses", () => this.#content.listStatuses({ filters }));
    return res.statuses.map(toIngestStatus);
  }

  /**
   * Aborts an ingest, dropping what was written to it.
   *
   * @throws {ContainerdError} `NotFound` when there is no such ingest.
   */
  async abortIngest(ref: string): Promise<void> {
    await call("Content.Abort", () => this.#content.abort({ ref }));
  }

  // --- images ---

  /**
   * Creates an image record.
   *
   * @throws {ContainerdError} `AlreadyExists` when the name is taken.
   */
  async createImage(image: { name: string; target: Descriptor; labels?: Record<string, string> }): Promise<ImageInfo> {
    const res = await call("Images.Create", () => this.#images.create({ image: toPbImage(image) }));
    return toImageInfo(res.image!);
  }

  /**
   * Replaces an image record's target and labels.
   *
   * @throws {ContainerdError} `NotFound` when there is no such image.
   */
  async updateImage(image: { name: string; target: Descriptor; labels?: Record<string, string> }): Promise<ImageInfo> {
    const res = await call("Images.Update", () => this.#images.update({ image: toPbImage(image) }));
    return toImageInfo(res.image!);
  }

  /** An image record, or null when there is none. */
  async getImage(name: string): Promise<ImageInfo | null> {
    try {
      const res = await call("Images.Get", () => this.#images.get({ name }));
      return res.image ? toImageInfo(res.image) : null;
    } catch (err) {
      if (isNotFound(err)) return null;
      throw err;
    }
  }

  /**
   * Deletes an image record. With `sync`, returns after the garbage collection it triggers has run.
   *
   * @throws {ContainerdError} `NotFound` when there is no such image.
   */
  async deleteImage(name: string, options: { sync?: boolean } = {}): Promise<void> {
    await call("Images.Delete", () => this.#images.delete({ name, sync: options.sync ?? false }));
  }

  /** Image records, optionally filtered (e.g. `name~=^faasd.local/`). */
  async listImages(...filters: string[]): Promise<ImageInfo[]> {
    const res = await call("Images.List", () => this.#images.list({ filters }));
    return res.images.map(toImageInfo);
  }

  // --- snapshots ---

  /**
   * Prepares an active (writable) snapshot `key` on `parent` (`""` for none) and returns its mounts.
   *
   * @throws {ContainerdError} `AlreadyExists` for a taken key, `NotFound` for an unknown parent.
   */
  prepareSnapshot(
    snapshotter: string,
    key: string,
    parent: string,
    options: { labels?: Record<string, string> } & LeaseOption = {},
  ): Promise<Mount[]> {
    return this.#newSnapshot("prepare", snapshotter, key, parent, options);
  }

  /**
   * Creates a read-only view `key` of `parent` and returns its mounts.
   *
   * @throws {ContainerdError} `AlreadyExists` for a taken key, `NotFound` for an unknown parent.
   */
  viewSnapshot(
    snapshotter: string,
    key: string,
    parent: string,
    options: { labels?: Record<string, string> } & LeaseOption = {},
  ): Promise<Mount[]> {
    return this.#newSnapshot("view", snapshotter, key, parent, options);
  }

  async #newSnapshot(
    kind: "prepare" | "view",
    snapshotter: string,
    key: string,
    parent: string,
    options: { labels?: Record<string, string> } & LeaseOption,
  ): Promise<Mount[]> {
    const request = { snapshotter, key, parent, labels: options.labels ?? {} };
    const headers = { headers: leaseHeaders(options.lease) };
    const { mounts } = kind === "prepare"
      ? await call("Snapshots.Prepare", () => this.#snapshots.prepare(request, headers))
      : await call("Snapshots.View", () => this.#snapshots.view(request, headers));
    return mounts.map(toMount);
  }

  /**
   * Mounts of an active snapshot or view.
   *
   * @throws {ContainerdError} `NotFound` for an unknown key.
   */
  async snapshotMounts(snapshotter: string, key: string): Promise<Mount[]> {
    const res = await call("Snapshots.Mounts", () => this.#snapshots.mounts({ snapshotter, key }));
    return res.mounts.map(toMount);
  }

  /**
   * Commits active snapshot `key` as the committed snapshot `name` (the active one is gone afterwards).
   *
   * @throws {ContainerdError} `AlreadyExists` when `name` exists, `NotFound` for an unknown key.
   */
  async commitSnapshot(
    snapshotter: string,
    name: string,
    key: string,
    options: { labels?: Record<string, string> } & LeaseOption = {},
  ): Promise<void> {
    await call(
      "Snapshots.Commit",
      () =>
        this.#snapshots.commit({ snapshotter, name, key, labels: options.labels ?? {} }, {
          headers: leaseHeaders(options.lease),
        }),
    );
  }

  /** A snapshot's info, or null when there is none. */
  async statSnapshot(snapshotter: string, key: string): Promise<SnapshotInfo | null> {
    try {
      const res = await call("Snapshots.Stat", () => this.#snapshots.stat({ snapshotter, key }));
      return res.info ? toSnapshotInfo(res.info) : null;
    } catch (err) {
      if (isNotFound(err)) return null;
      throw err;
    }
  }

  /**
   * Removes a snapshot.
   *
   * @throws {ContainerdError} `NotFound` for an unknown key, `FailedPrecondition` when it has children.
   */
  async removeSnapshot(snapshotter: string, key: string): Promise<void> {
    await call("Snapshots.Remove", () => this.#snapshots.remove({ snapshotter, key }));
  }

  /** Snapshots of a snapshotter, optionally filtered (e.g. `labels."io.faasd.function"==hello`). */
  async listSnapshots(snapshotter: string, ...filters: string[]): Promise<SnapshotInfo[]> {
    const out: SnapshotInfo[] = [];
    await call("Snapshots.List", async () => {
      for await (const res of this.#snapshots.list({ snapshotter, filters })) out.push(...res.info.map(toSnapshotInfo));
    });
    return out;
  }

  // --- diff ---

  /**
   * Applies the layer blob `diff` onto `mounts` (an active snapshot) and returns the descriptor of what was applied:
   * its digest is the layer's uncompressed digest (diff id).
   *
   * @throws {ContainerdError} e.g. `NotFound` for a blob not in the content store, `NotImplemented` for a media type
   *   containerd cannot apply.
   */
  async applyDiff(diff: Descriptor, mounts: Mount[], options: LeaseOption = {}): Promise<Descriptor> {
    const res = await call(
      "Diff.Apply",
      () =>
        this.#diff.apply({ diff: toPbDescriptor(diff), mounts: mounts.map(toPbMount) }, {
          headers: leaseHeaders(options.lease),
        }),
    );
    return toDescriptor(res.applied!);
  }

  // --- containers ---

  /**
   * Creates a container record.
   *
   * @throws {ContainerdError} `AlreadyExists` for a taken id.
   */
  async createContainer(spec: ContainerSpec, options: LeaseOption = {}): Promise<ContainerInfo> {
    const runtimeOptions = spec.runtime.binaryName || spec.runtime.root
      ? create(AnySchema, {
        typeUrl: RUNC_OPTIONS_TYPE_URL,
        value: toBinary(
          RuncOptionsSchema,
          create(RuncOptionsSchema, { binaryName: spec.runtime.binaryName ?? "", root: spec.runtime.root ?? "" }),
        ),
      })
      : undefined;
    const res = await call("Containers.Create", () =>
      this.#containers.create({
        container: {
          id: spec.id,
          image: spec.image ?? "",
          labels: spec.labels ?? {},
          snapshotter: spec.snapshotter,
          snapshotKey: spec.snapshotKey,
          runtime: { name: spec.runtime.name, options: runtimeOptions },
          spec: { typeUrl: SPEC_TYPE_URL, value: new TextEncoder().encode(JSON.stringify(spec.spec)) },
        },
      }, { headers: leaseHeaders(options.lease) }));
    return toContainerInfo(res.container!);
  }

  /** A container record, or null when there is none. */
  async getContainer(id: string): Promise<ContainerInfo | null> {
    try {
      const res = await call("Containers.Get", () => this.#containers.get({ id }));
      return res.container ? toContainerInfo(res.container) : null;
    } catch (err) {
      if (isNotFound(err)) return null;
      throw err;
    }
  }

  /**
   * Deletes a container record (its task must be gone).
   *
   * @throws {ContainerdError} `NotFound` for an unknown id.
   */
  async deleteContainer(id: string): Promise<void> {
    await call("Containers.Delete", () => this.#containers.delete({ id }));
  }

  /** Container records, optionally filtered (e.g. `labels."io.faasd.function"==hello`). */
  async listContainers(...filters: string[]): Promise<ContainerInfo[]> {
    const res = await call("Containers.List", () => this.#containers.list({ filters }));
    return res.containers.map(toContainerInfo);
  }

  // --- tasks ---

  /**
   * Creates the task of a container (shim + runtime create; the process does not run yet) and returns its pid.
   *
   * @throws {TypeError} when only one of stdout and stderr is given and it is a URI (the 1.6 shim crashes on it).
   * @throws {ContainerdError} e.g. `NotFound` for an unknown container, `AlreadyExists` when it has a task.
   */
  async createTask(spec: TaskSpec): Promise<number> {
    const isUri = (s: string | undefined) => s !== undefined && s.includes("://");
    if ((isUri(spec.stdout) || isUri(spec.stderr)) && !(spec.stdout && spec.stderr)) {
      // containerd 1.6's runc shim dereferences the missing one and crashes.
      throw new TypeError("createTask: with a file:// or binary:// URI, give both stdout and stderr");
    }
    const res = await call("Tasks.Create", () =>
      this.#tasks.create({
        containerId: spec.containerId,
        rootfs: spec.rootfs.map(toPbMount),
        stdin: spec.stdin ?? "",
        stdout: spec.stdout ?? "",
        stderr: spec.stderr ?? "",
      }));
    return res.pid;
  }

  /**
   * Starts a created task's process and returns its pid.
   *
   * @throws {ContainerdError} `NotFound` for an unknown task.
   */
  async startTask(containerId: string): Promise<number> {
    const res = await call("Tasks.Start", () => this.#tasks.start({ containerId }));
    return res.pid;
  }

  /**
   * Waits for a task's process to exit.
   *
   * @throws {ContainerdError} `NotFound` for an unknown task, `Canceled` when `signal` aborts the wait.
   */
  async waitTask(containerId: string, options: { signal?: AbortSignal } = {}): Promise<ExitStatus> {
    const res = await call("Tasks.Wait", () => this.#tasks.wait({ containerId }, { signal: options.signal }));
    return { exitStatus: res.exitStatus, exitedAt: optDate(res.exitedAt) };
  }

  /**
   * Sends `signal` (a number, e.g. 9) to the task's process, or with `all` to every process of the container.
   *
   * @throws {ContainerdError} `NotFound` for an unknown (or already gone) task.
   */
  async killTask(containerId: string, signal: number, options: { all?: boolean } = {}): Promise<void> {
    await call("Tasks.Kill", () => this.#tasks.kill({ containerId, signal, all: options.all ?? false }));
  }

  /**
   * Deletes an exited (or created) task, tearing down its shim, and returns how it ended.
   *
   * @throws {ContainerdError} `NotFound` for an unknown task, `FailedPrecondition` while it runs.
   */
  async deleteTask(containerId: string): Promise<ExitStatus> {
    const res = await call("Tasks.Delete", () => this.#tasks.delete({ containerId }));
    return { exitStatus: res.exitStatus, exitedAt: optDate(res.exitedAt) };
  }

  /** A task's state, or null when the container has no task. */
  async getTask(containerId: string): Promise<TaskInfo | null> {
    try {
      const res = await call("Tasks.Get", () => this.#tasks.get({ containerId }));
      return res.process ? toTaskInfo(res.process) : null;
    } catch (err) {
      if (isNotFound(err)) return null;
      throw err;
    }
  }

  /** Tasks of the namespace. */
  async listTasks(): Promise<TaskInfo[]> {
    const res = await call("Tasks.List", () => this.#tasks.list({}));
    return res.tasks.map(toTaskInfo);
  }
}

// --- helpers ---

async function call<T>(name: string, fn: () => Promise<T>): Promise<T> {
  try {
    return await fn();
  } catch (err) {
    if (err instanceof RangeError) throw err;
    throw ContainerdError.from(name, err);
  }
}

function leaseHeaders(lease: string | undefined): CallOptions["headers"] {
  return lease ? { "containerd-lease": lease } : undefined;
}

function dropEmpty(labels: Record<string, string>): Record<string, string> {
  return Object.fromEntries(Object.entries(labels).filter(([, v]) => v !== ""));
}

/** Regroups a byte stream into copies of exactly `size` bytes (the last may be shorter; empty chunks vanish). */
async function* rechunk(
  source: AsyncIterable<Uint8Array> | Iterable<Uint8Array> | ReadableStream<Uint8Array>,
  size: number,
): AsyncGenerator<Uint8Array> {
  let buf = new Uint8Array(size);
  let fill = 0;
  for await (const chunk of source as AsyncIterable<Uint8Array>) {
    let at = 0;
    while (at < chunk.length) {
      const n = Math.min(size - fill, chunk.length - at);
      buf.set(chunk.subarray(at, at + n), fill);
      fill += n;
      at += n;
      if (fill === size) {
        yield buf;
        buf = new Uint8Array(size);
        fill = 0;
      }
    }
  }
  if (fill > 0) yield buf.subarray(0, fill);
}

/** A minimal unbounded async queue; the writer bounds it by waiting for acknowledgements. */
class Channel<T> implements AsyncIterable<T> {
  #items: T[] = [];
  #closed = false;
  #wake: (() => void) | undefined;

  push(item: T): void {
    if (this.#closed) return;
    this.#items.push(item);
    this.#wake?.();
  }

  close(): void {
    this.#closed = true;
    this.#wake?.();
  }

  async *[Symbol.asyncIterator](): AsyncIterator<T> {
    for (;;) {
      const item = this.#items.shift();
      if (item !== undefined) {
        yield item;
        continue;
      }
      if (this.#closed) return;
      await new Promise<void>((resolve) => this.#wake = resolve);
      this.#wake = undefined;
    }
  }
}

function optDate(ts: Timestamp | undefined): Date | undefined {
  return ts ? timestampDate(ts) : undefined;
}

function toDescriptor(d: PbDescriptor): Descriptor {
  const out: Descriptor = { mediaType: d.mediaType, digest: d.digest, size: Number(d.size) };
  if (Object.keys(d.annotations).length > 0) out.annotations = { ...d.annotations };
  return out;
}

function toPbDescriptor(d: Descriptor): MessageInitShape<typeof DescriptorSchema> {
  return { mediaType: d.mediaType, digest: d.digest, size: BigInt(d.size), annotations: d.annotations ?? {} };
}

function toMount(m: PbMount): Mount {
  const out: Mount = { type: m.type, source: m.source, options: [...m.options] };
  if (m.target) out.target = m.target;
  return out;
}

function toPbMount(m: Mount): MessageInitShape<typeof MountSchema> {
  return { type: m.type, source: m.source, target: m.target ?? "", options: m.options };
}

function toLeaseInfo(l: PbLease): LeaseInfo {
  return { id: l.id, labels: { ...l.labels }, createdAt: optDate(l.createdAt) };
}

function toContentInfo(i: PbContentInfo): ContentInfo {
  return {
    digest: i.digest,
    size: Number(i.size),
    labels: { ...i.labels },
    createdAt: optDate(i.createdAt),
    updatedAt: optDate(i.updatedAt),
  };
}

function toIngestStatus(s: PbStatus): IngestStatus {
  return {
    ref: s.ref,
    offset: Number(s.offset),
    total: Number(s.total),
    expected: s.expected,
    startedAt: optDate(s.startedAt),
    updatedAt: optDate(s.updatedAt),
  };
}

function toPbImage(
  image: { name: string; target: Descriptor; labels?: Record<string, string> },
): MessageInitShape<typeof ImageSchema> {
  return { name: image.name, labels: image.labels ?? {}, target: toPbDescriptor(image.target) };
}

function toImageInfo(i: PbImage): ImageInfo {
  return {
    name: i.name,
    labels: { ...i.labels },
    target: toDescriptor(i.target!),
    createdAt: optDate(i.createdAt),
    updatedAt: optDate(i.updatedAt),
  };
}

const SNAPSHOT_KINDS: Record<Kind, SnapshotKind> = {
  [Kind.UNKNOWN]: "unknown",
  [Kind.VIEW]: "view",
  [Kind.ACTIVE]: "active",
  [Kind.COMMITTED]: "committed",
};

function toSnapshotInfo(i: PbSnapshotInfo): SnapshotInfo {
  return {
    name: i.name,
    parent: i.parent,
    kind: SNAPSHOT_KINDS[i.kind] ?? "unknown",
    labels: { ...i.labels },
    createdAt: optDate(i.createdAt),
    updatedAt: optDate(i.updatedAt),
  };
}

function toContainerInfo(c: PbContainer): ContainerInfo {
  return {
    id: c.id,
    image: c.image,
    labels: { ...c.labels },
    snapshotter: c.snapshotter,
    snapshotKey: c.snapshotKey,
    runtime: { name: c.runtime?.name ?? "" },
    createdAt: optDate(c.createdAt),
    updatedAt: optDate(c.updatedAt),
  };
}

const TASK_STATUSES: Record<PbTaskStatus, TaskStatus> = {
  [PbTaskStatus.UNKNOWN]: "unknown",
  [PbTaskStatus.CREATED]: "created",
  [PbTaskStatus.RUNNING]: "running",
  [PbTaskStatus.STOPPED]: "stopped",
  [PbTaskStatus.PAUSED]: "paused",
  [PbTaskStatus.PAUSING]: "pausing",
};

function toTaskInfo(p: PbProcess): TaskInfo {
  return {
    containerId: p.containerId || p.id,
    pid: p.pid,
    status: TASK_STATUSES[p.status] ?? "unknown",
    exitStatus: p.exitStatus,
    exitedAt: optDate(p.exitedAt),
  };
}
