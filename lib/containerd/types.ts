/**
 * Plain domain types of the containerd client. Nothing here depends on generated code: callers never see protobuf
 * messages, bigints or `Any`.
 *
 * @module
 */

/** An OCI content descriptor. Sizes are plain numbers (exact up to 2^53 bytes). */
export interface Descriptor {
  mediaType: string;
  digest: string;
  size: number;
  annotations?: Record<string, string>;
}

/** A mount as containerd describes it (`mount(8)` type, source and options). */
export interface Mount {
  type: string;
  source: string;
  target?: string;
  options: string[];
}

/** `containerd --version` as the daemon reports it. */
export interface VersionInfo {
  version: string;
  revision: string;
}

/** A lease: a set of resources that garbage collection keeps while the lease exists. */
export interface LeaseInfo {
  id: string;
  labels: Record<string, string>;
  createdAt?: Date;
}

/** A resource held by a lease, e.g. `{ type: "snapshots/overlayfs", id: "sha256:…" }` or `{ type: "content", … }`. */
export interface LeaseResource {
  id: string;
  type: string;
}

/** A committed blob of the content store. */
export interface ContentInfo {
  digest: string;
  size: number;
  labels: Record<string, string>;
  createdAt?: Date;
  updatedAt?: Date;
}

/** An ingest: a blob being written and not committed yet. */
export interface IngestStatus {
  ref: string;
  offset: number;
  total: number;
  expected: string;
  startedAt?: Date;
  updatedAt?: Date;
}

/** What `Containerd.writeBlob()` committed. */
export interface WrittenBlob {
  digest: string;
  size: number;
}

/** An image record: a name pointing at a manifest (or index) descriptor. */
export interface ImageInfo {
  name: string;
  labels: Record<string, string>;
  target: Descriptor;
  createdAt?: Date;
  updatedAt?: Date;
}

/** The kind of a snapshot. */
export type SnapshotKind = "unknown" | "view" | "active" | "committed";

/** A snapshot of a snapshotter. `parent` is `""` for a base snapshot. */
export interface SnapshotInfo {
  name: string;
  parent: string;
  kind: SnapshotKind;
  labels: Record<string, string>;
  createdAt?: Date;
  updatedAt?: Date;
}

/** The runtime a container runs with. */
export interface RuntimeOptions {
  /** The shim, e.g. `io.containerd.runc.v2`. */
  name: string;
  /** The OCI runtime binary the shim calls (runc options `BinaryName`), e.g. `runc`. Default: the shim's. */
  binaryName?: string;
  /** The OCI runtime's state directory (runc options `Root`). Default: the shim's. */
  root?: string;
}

/** What `Containerd.createContainer()` takes. */
export interface ContainerSpec {
  id: string;
  image?: string;
  labels?: Record<string, string>;
  /** The OCI runtime spec (`config.json`), sent as JSON. */
  spec: object;
  snapshotter: string;
  snapshotKey: string;
  runtime: RuntimeOptions;
}

/** A container record (metadata only; what runs is its task). */
export interface ContainerInfo {
  id: string;
  image: string;
  labels: Record<string, string>;
  snapshotter: string;
  snapshotKey: string;
  runtime: { name: string };
  createdAt?: Date;
  updatedAt?: Date;
}

/** What `Containerd.createTask()` takes. */
export interface TaskSpec {
  containerId: string;
  /** The root filesystem mounts, usually what `prepareSnapshot()` returned. */
  rootfs: Mount[];
  /** Where the process's stdout goes: a FIFO path or a `file://` / `binary://` URI; empty discards it. */
  stdout?: string;
  /** Like `stdout`. */
  stderr?: string;
  /** Like `stdout`, for stdin. */
  stdin?: string;
}

/** The state of a task. */
export type TaskStatus = "unknown" | "created" | "running" | "stopped" | "paused" | "pausing";

/** A task: the running (or exited) process of a container. */
export interface TaskInfo {
  containerId: string;
  pid: number;
  status: TaskStatus;
  exitStatus: number;
  exitedAt?: Date;
}

/** How a task's process ended. */
export interface ExitStatus {
  exitStatus: number;
  exitedAt?: Date;
}
