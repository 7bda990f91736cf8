/**
 * Sockets over libc for what Deno cannot do itself: listen on many addresses in one epoll loop, hand a connected
 * TCP socket to another process with `SCM_RIGHTS`, and read the kernel's per-socket byte counter.
 *
 * Every descriptor is created close-on-exec, so a spawned process never inherits one by accident. Listening and
 * Unix sockets are non-blocking. Accepted TCP connections are deliberately left in blocking mode: `O_NONBLOCK`
 * belongs to the open file description that is shared with the handler receiving the descriptor, and a handler
 * expects a plain accepted socket. faasd's own reads and writes on them still never block: they pass
 * `MSG_DONTWAIT` per call.
 *
 * Struct layouts are those of 64-bit Linux (x86_64, aarch64).
 *
 * @example Accept a connection and hand it to a handler
 * ```ts ignore
 * using listener = TcpListener.bind("127.10.0.10", 80);
 * using control = UnixListener.bind("/run/faasd/abc.sock");
 * const conn = listener.accept(); // null until a client connected
 * const handler = control.accept(); // null until the handler connected
 * handler?.sendFd(conn!.fd);
 * ```
 *
 * @module
 */

import { check, EAGAIN, EINTR, ENOTCONN, lastError } from "./errno.ts";
import {
  AF_INET,
  AF_UNIX,
  IPPROTO_TCP,
  libc,
  MSG_CMSG_CLOEXEC,
  MSG_CTRUNC,
  MSG_DONTWAIT,
  MSG_NOSIGNAL,
  MSG_PEEK,
  SCM_RIGHTS,
  SHUT_RDWR,
  SHUT_WR,
  SO_MARK,
  SO_REUSEADDR,
  SOCK_CLOEXEC,
  SOCK_NONBLOCK,
  SOCK_STREAM,
  SOL_SOCKET,
  TCP_INFO,
} from "./libc.ts";

/** An IPv4 address and port. */
export interface InetAddress {
  /** Dotted-quad IPv4 address, e.g. `"127.10.0.10"`. */
  ip: string;
  /** TCP port, 0–65535. */
  port: number;
}

/** An owned file descriptor, closed exactly once. */
export abstract class Fd implements Disposable {
  #fd: number;

  /**
   * Takes ownership of `fd`: {@linkcode Fd.close} will close it.
   *
   * @throws {RangeError} when `fd` is not a non-negative integer.
   */
  constructor(fd: number) {
    if (!Number.isInteger(fd) || fd < 0) throw new RangeError(`Invalid file descriptor: ${fd}`);
    this.#fd = fd;
  }

  /**
   * The descriptor number, or -1 once closed. -1 makes any later system call fail with EBADF instead of acting on
   * whatever descriptor reused the number.
   */
  get fd(): number {
    return this.#fd;
  }

  /** Whether {@linkcode Fd.close} was called. */
  get closed(): boolean {
    return this.#fd === -1;
  }

  /**
   * Closes the descriptor; later calls do nothing. Never throws: on Linux the descriptor is released even when
   * `close(2)` reports an error, so there is nothing to retry.
   */
  close(): void {
    if (this.#fd === -1) return;
    const fd = this.#fd;
    this.#fd = -1;
    libc().close(fd);
  }

  /** Same as {@linkcode Fd.close}. */
  [Symbol.dispose](): void {
    this.close();
  }
}

/** A listening IPv4 TCP socket (non-blocking, `SO_REUSEADDR`). */
export class TcpListener extends Fd {
  /** The bound address; the port is the kernel's choice when 0 was asked for. */
  readonly address: InetAddress;

  private constructor(fd: number, address: InetAddress) {
    super(fd);
    this.address = address;
  }

  /**
   * Creates a socket listening on `ip:port`.
   *
   * @param ip IPv4 address to bind; it must be assigned to a local interface (all of 127.0.0.0/8 is, on `lo`).
   * @param port TCP port; 0 lets the kernel choose (see {@linkcode TcpListener.address}).
   * @param backlog length of the queue of connections not yet accepted.
   * @throws {TypeError} when `ip` is not a dotted-quad IPv4 address.
   * @throws {RangeError} when `port` or `backlog` is out of range.
   * @throws {ErrnoError} from `bind` (`EADDRNOTAVAIL`: no interface has `ip`; `EADDRINUSE`; `EACCES` for ports
   * below 1024 without privilege), `socket`, `setsockopt` or `listen`.
   */
  static override bind(ip: string, port: number, backlog = 511): TcpListener {
    // (`override` because a class's static side inherits Function.prototype.bind, which this shadows on purpose.)
    const address = encodeInet(ip, port);
    checkBacklog(backlog);
    const c = libc();
    const fd = check(c.socket(AF_INET, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0), "socket");
    try {
      const one = new Int32Array([1]);
      check(c.setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, one, 4), "setsockopt", "SO_REUSEADDR");
      check(c.bind(fd, address, address.byteLength), "bind", `${ip}:${port}`);
      check(c.listen(fd, backlog), "listen", `${ip}:${port}`);
      return new TcpListener(fd, socketName(fd, "getsockname"));
    } catch (error) {
      c.close(fd);
      throw error;
    }
  }

  /**
   * Accepts one pending connection.
   *
   * @returns the connection (in blocking mode, close-on-exec), or `null` when none is pending.
   * @throws {ErrnoError} from `accept4`, e.g. `EMFILE`/`ENFILE` (out of descriptors) or `ECONNABORTED` (the client
   * gave up while queued; just accept again).
   */
  accept(): TcpConn | null {
    // No SOCK_NONBLOCK: see the module doc. The peer's address is looked up only if someone asks for it.
    const fd = libc().accept4(this.fd, null, null, SOCK_CLOEXEC);
    if (fd === -1) {
      const error = lastError("accept4");
      if (error.errno === EAGAIN) return null;
      throw error;
    }
    return new TcpConn(fd);
  }
}

/** What {@linkcode TcpConn.drain} found at the end. */
export type DrainResult = "eof" | "again";

let scratch: Uint8Array | undefined;

/** A connected IPv4 TCP socket. All I/O through this object is non-blocking (`MSG_DONTWAIT`). */
export class TcpConn extends Fd {
  #peer: InetAddress | undefined;

  /**
   * Takes ownership of a connected TCP socket.
   *
   * @param fd the socket.
   * @throws {RangeError} when `fd` is not a non-negative integer.
   */
  constructor(fd: number) {
    super(fd);
  }

  /**
   * The remote address, looked up on first use.
   *
   * @throws {ErrnoError} from `getpeername` when the socket is no longer connected.
   */
  get peer(): InetAddress {
    return this.#peer ??= socketName(this.fd, "getpeername");
  }

  /**
   * Writes as much of `bytes` as the send buffer takes now.
   *
   * @returns the number of bytes written; 0 when the send buffer is full.
   * @throws {ErrnoError} from `send`, e.g. `EPIPE` or `ECONNRESET`. No SIGPIPE is raised.
   */
  write(bytes: Uint8Array): number {
    if (bytes.byteLength === 0) return 0;
    for (;;) {
      const n = Number(libc().send(this.fd, bytes, BigInt(bytes.byteLength), MSG_DONTWAIT | MSG_NOSIGNAL));
      if (n >= 0) return n;
      const error = lastError("send");
      if (error.errno === EAGAIN) return 0;
      if (error.errno !== EINTR) throw error;
    }
  }

  /**
   * Reads what is available now into `buffer`.
   *
   * @returns the number of bytes read; 0 at end of stream; `null` when nothing is available yet.
   * @throws {ErrnoError} from `recv`, e.g. `ECONNRESET`.
   */
  read(buffer: Uint8Array): number | null {
    if (buffer.byteLength === 0) return 0;
    for (;;) {
      const n = Number(libc().recv(this.fd, buffer, BigInt(buffer.byteLength), MSG_DONTWAIT));
      if (n >= 0) return n;
      const error = lastError("recv");
      if (error.errno === EAGAIN) return null;
      if (error.errno !== EINTR) throw error;
    }
  }

  /**
   * Whether the peer closed its sending side without sending anything more: looks at the next byte without taking
   * it (`MSG_PEEK`), so the bytes stay for whoever reads the socket later.
   *
   * @throws {ErrnoError} from `recv`, e.g. `ECONNRESET`.
   */
  peekEof(): boolean {
    const one = new Uint8Array(1);
    for (;;) {
      const n = Number(libc().recv(this.fd, one, 1n, MSG_DONTWAIT | MSG_PEEK));
      if (n >= 0) return n === 0;
      const error = lastError("recv");
      if (error.errno === EAGAIN) return false;
      if (error.errno !== EINTR) throw error;
    }
  }

  /**
   * Reads and discards everything readable now. Closing a socket with unread received data makes the kernel send
   * a reset instead of a normal end, which can destroy a response the client has not read yet; draining first
   * prevents that.
   *
   * @returns `"eof"` when the peer finished sending, `"again"` when more may arrive later.
   * @throws {ErrnoError} from `recv`, e.g. `ECONNRESET`.
   */
  drain(): DrainResult {
    scratch ??= new Uint8Array(64 * 1024);
    for (;;) {
      const n = this.read(scratch);
      if (n === null) return "again";
      if (n === 0) return "eof";
    }
  }

  /**
   * Shuts down the sending direction (`"write"`: the peer reads end of stream after the data already sent) or
   * both. A socket that is not connected (any more) is left as is.
   *
   * @throws {ErrnoError} from `shutdown`, except `ENOTCONN`.
   */
  shutdown(how: "write" | "both"): void {
    if (libc().shutdown(this.fd, how === "write" ? SHUT_WR : SHUT_RDWR) === -1) {
      const error = lastError("shutdown");
      if (error.errno !== ENOTCONN) throw error;
    }
  }

  /**
   * Sets the socket's mark (`SO_MARK`): every packet it sends carries it, so a firewall rule can tell this socket's
   * packets apart. Only a process with CAP_NET_ADMIN in the socket's network namespace can change it again.
   *
   * @throws {ErrnoError} from `setsockopt`, e.g. `EPERM` without CAP_NET_ADMIN.
   */
  setMark(mark: number): void {
    const value = new Uint32Array([mark]);
    check(libc().setsockopt(this.fd, SOL_SOCKET, SO_MARK, new Uint8Array(value.buffer), 4), "setsockopt", "SO_MARK");
  }

  /**
   * Bytes handed to the kernel for sending on this socket, by any process holding a descriptor of it: the
   * kernel's `tcpi_bytes_sent` (data octets transmitted, retransmissions included) plus `tcpi_notsent_bytes`
   * (written but not transmitted yet, e.g. held by a zero window or `TCP_CORK`). It is 0 exactly when nobody wrote
   * anything. Needs Linux 4.19 or newer.
   *
   * `struct tcp_info` (`<linux/tcp.h>`) offsets used, checked by a test against the C headers:
   * `tcpi_notsent_bytes` __u32 at 144, `tcpi_bytes_sent` __u64 at 200 (208 bytes needed).
   *
   * @throws {ErrnoError} from `getsockopt`.
   * @throws {Error} when the kernel's `struct tcp_info` is too short to contain `tcpi_bytes_sent`.
   */
  bytesSent(): bigint {
    const info = new Uint8Array(TCP_INFO_BUFFER_SIZE);
    const length = new Uint32Array([info.byteLength]);
    check(libc().getsockopt(this.fd, IPPROTO_TCP, TCP_INFO, info, length), "getsockopt", "TCP_INFO");
    if (length[0] < TCPI_BYTES_SENT_OFFSET + 8) {
      throw new Error(`struct tcp_info is ${length[0]} bytes; tcpi_bytes_sent needs Linux 4.19 or newer`);
    }
    const view = new DataView(info.buffer);
    return view.getBigUint64(TCPI_BYTES_SENT_OFFSET, true) + BigInt(view.getUint32(TCPI_NOTSENT_BYTES_OFFSET, true));
  }
}

/** Offsets in `struct tcp_info` (see {@linkcode TcpConn.bytesSent}). */
export const TCPI_NOTSENT_BYTES_OFFSET = 144;
export const TCPI_BYTES_SENT_OFFSET = 200;
const TCP_INFO_BUFFER_SIZE = 256;

/**
 * A listening Unix stream socket (non-blocking) at a filesystem path, world-connectable (mode 0777) so that a
 * handler running as a non-root user can connect. {@linkcode UnixListener.close} removes the path.
 */
export class UnixListener extends Fd {
  /** The socket's filesystem path. */
  readonly path: string;

  private constructor(fd: number, path: string) {
    super(fd);
    this.path = path;
  }

  /**
   * Creates a socket listening at `path`. An existing file at `path` is not removed: binding then fails with
   * `EADDRINUSE`.
   *
   * @throws {RangeError} when `path` is empty, contains NUL or is longer than 107 bytes.
   * @throws {ErrnoError} from `socket`, `bind` or `listen`.
   * @throws {Deno.errors.NotCapable} without write permission for `path` (needed to chmod it).
   */
  static override bind(path: string, backlog = 16): UnixListener {
    // (`override`: see TcpListener.bind.)
    const address = encodeUnix(path);
    checkBacklog(backlog);
    const c = libc();
    const fd = check(c.socket(AF_UNIX, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0), "socket");
    let bound = false;
    try {
      check(c.bind(fd, address, address.byteLength), "bind", path);
      bound = true;
      Deno.chmodSync(path, 0o777);
      check(c.listen(fd, backlog), "listen", path);
      return new UnixListener(fd, path);
    } catch (error) {
      c.close(fd);
      if (bound) removeIfPresent(path);
      throw error;
    }
  }

  /**
   * Accepts one pending connection.
   *
   * @returns the connection (non-blocking, close-on-exec), or `null` when none is pending.
   * @throws {ErrnoError} from `accept4`.
   */
  accept(): UnixConn | null {
    const fd = libc().accept4(this.fd, null, null, SOCK_NONBLOCK | SOCK_CLOEXEC);
    if (fd === -1) {
      const error = lastError("accept4", this.path);
      if (error.errno === EAGAIN) return null;
      throw error;
    }
    return new UnixConn(fd);
  }

  /**
   * Closes the socket and removes its path; later calls do nothing.
   *
   * @throws {Deno.errors.PermissionDenied} (or another filesystem error except NotFound) when the path cannot be
   * removed; the socket is closed regardless.
   */
  override close(): void {
    if (this.closed) return;
    super.close();
    removeIfPresent(this.path);
  }
}

/** A connected Unix stream socket (non-blocking), used to pass descriptors. */
export class UnixConn extends Fd {
  /**
   * Connects to the Unix socket at `path`.
   *
   * @throws {RangeError} when `path` is empty, contains NUL or is longer than 107 bytes.
   * @throws {ErrnoError} from `connect`, e.g. `ENOENT`, `ECONNREFUSED`, or `EAGAIN` when the listener's backlog is
   * full.
   */
  static connect(path: string): UnixConn {
    const address = encodeUnix(path);
    const c = libc();
    const conn = new UnixConn(check(c.socket(AF_UNIX, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0), "socket"));
    if (c.connect(conn.fd, address, address.byteLength) === -1) {
      const error = lastError("connect", path);
      conn.close();
      throw error;
    }
    return conn;
  }

  /**
   * Sends a duplicate of descriptor `fd` to the peer (one `SCM_RIGHTS` message) along with `data`. The caller
   * keeps its own `fd` open.
   *
   * @param data the message's bytes, at least one (the descriptor rides on them); faasd's contract is `"SOCKET"`.
   * @throws {RangeError} when `fd` is not a non-negative integer or `data` is empty.
   * @throws {ErrnoError} from `sendmsg`, e.g. `EPIPE` when the peer went away (no SIGPIPE is raised), or `EAGAIN`
   * when the socket's send buffer is full.
   */
  sendFd(fd: number, data = "SOCKET"): void {
    if (!Number.isInteger(fd) || fd < 0) throw new RangeError(`Invalid file descriptor: ${fd}`);
    const payload = new TextEncoder().encode(data);
    if (payload.byteLength === 0) throw new RangeError("sendFd() needs at least one byte of data");
    const control = new Uint8Array(cmsgSpace(4));
    const cmsg = new DataView(control.buffer);
    cmsg.setBigUint64(0, BigInt(CMSG_HEADER_SIZE + 4), true); // cmsg_len = CMSG_LEN(sizeof(int))
    cmsg.setInt32(8, SOL_SOCKET, true); // cmsg_level
    cmsg.setInt32(12, SCM_RIGHTS, true); // cmsg_type
    cmsg.setInt32(CMSG_HEADER_SIZE, fd, true);
    const message = msghdr(payload, control);
    for (;;) {
      if (Number(libc().sendmsg(this.fd, message.header, MSG_NOSIGNAL | MSG_DONTWAIT)) >= 0) return;
      const error = lastError("sendmsg");
      if (error.errno !== EINTR) throw error;
    }
  }

  /**
   * Receives one descriptor sent with `SCM_RIGHTS` (the handler's side of {@linkcode UnixConn.sendFd}). The
   * received descriptor is close-on-exec and owned by the caller. Extra descriptors in the same message are closed.
   *
   * @returns the descriptor and the data that came with it, or `null` when no message is available yet.
   * @throws {ErrnoError} from `recvmsg`.
   * @throws {Deno.errors.UnexpectedEof} when the peer closed without sending.
   * @throws {Error} when a message arrived without a descriptor.
   */
  recvFd(): { fd: number; data: string } | null {
    const payload = new Uint8Array(256);
    const control = new Uint8Array(cmsgSpace(4 * 8));
    const message = msghdr(payload, control);
    let n: number;
    for (;;) {
      n = Number(libc().recvmsg(this.fd, message.header, MSG_DONTWAIT | MSG_CMSG_CLOEXEC));
      if (n >= 0) break;
      const error = lastError("recvmsg");
      if (error.errno === EAGAIN) return null;
      if (error.errno !== EINTR) throw error;
    }
    const fds = receivedFds(message.view, control);
    const data = new TextDecoder().decode(payload.subarray(0, n));
    for (const extra of fds.slice(1)) libc().close(extra);
    if (fds.length === 0) {
      if (n === 0) throw new Deno.errors.UnexpectedEof("peer closed the Unix socket without sending a descriptor");
      const truncated = (message.view.getInt32(MSGHDR_FLAGS_OFFSET, true) & MSG_CTRUNC) !== 0;
      throw new Error(`received ${JSON.stringify(data)} without a descriptor${truncated ? " (truncated)" : ""}`);
    }
    return { fd: fds[0], data };
  }
}

// struct sockaddr_in { sa_family_t sin_family; in_port_t sin_port (big endian); struct in_addr sin_addr; zero[8] }
const SOCKADDR_IN_SIZE = 16;
// struct sockaddr_un { sa_family_t sun_family; char sun_path[108]; }
const SUN_PATH_SIZE = 108;
// struct cmsghdr { size_t cmsg_len; int cmsg_level; int cmsg_type; } then data, 8-byte aligned.
const CMSG_HEADER_SIZE = 16;
// struct msghdr { void *msg_name; socklen_t msg_namelen; struct iovec *msg_iov; size_t msg_iovlen;
//                 void *msg_control; size_t msg_controllen; int msg_flags; } = 56 bytes on LP64
const MSGHDR_SIZE = 56;
const MSGHDR_FLAGS_OFFSET = 48;

function cmsgSpace(dataLength: number): number {
  return CMSG_HEADER_SIZE + Math.ceil(dataLength / 8) * 8;
}

function pointerValue(buffer: Uint8Array): bigint {
  return BigInt(Deno.UnsafePointer.value(Deno.UnsafePointer.of(buffer)));
}

/**
 * Builds a `struct msghdr` with one iovec over `payload` and `control` as the ancillary buffer. The returned
 * object keeps every referenced buffer alive for as long as the caller holds it.
 */
function msghdr(payload: Uint8Array, control: Uint8Array) {
  // struct iovec { void *iov_base; size_t iov_len; }
  const iov = new Uint8Array(16);
  const iovView = new DataView(iov.buffer);
  iovView.setBigUint64(0, pointerValue(payload), true);
  iovView.setBigUint64(8, BigInt(payload.byteLength), true);
  const header = new Uint8Array(MSGHDR_SIZE);
  const view = new DataView(header.buffer);
  view.setBigUint64(16, pointerValue(iov), true); // msg_iov
  view.setBigUint64(24, 1n, true); // msg_iovlen
  view.setBigUint64(32, pointerValue(control), true); // msg_control
  view.setBigUint64(40, BigInt(control.byteLength), true); // msg_controllen
  return { header, view, iov, payload, control };
}

/** The descriptors of every SCM_RIGHTS message in a received control buffer. */
function receivedFds(header: DataView, control: Uint8Array): number[] {
  const length = Number(header.getBigUint64(40, true)); // msg_controllen, as filled in by the kernel
  const view = new DataView(control.buffer);
  const fds: number[] = [];
  for (let offset = 0; offset + CMSG_HEADER_SIZE <= length;) {
    const cmsgLength = Number(view.getBigUint64(offset, true));
    if (cmsgLength < CMSG_HEADER_SIZE) break;
    if (view.getInt32(offset + 8, true) === SOL_SOCKET && view.getInt32(offset + 12, true) === SCM_RIGHTS) {
      for (let at = offset + CMSG_HEADER_SIZE; at + 4 <= offset + cmsgLength; at += 4) {
        fds.push(view.getInt32(at, true));
      }
    }
    offset += cmsgSpace(cmsgLength - CMSG_HEADER_SIZE);
  }
  return fds;
}

const IPV4 = /^(25[0-5]|2[0-4]\d|1\d\d|[1-9]?\d)(\.(25[0-5]|2[0-4]\d|1\d\d|[1-9]?\d)){3}$/;

function encodeInet(ip: string, port: number): Uint8Array {
  if (!IPV4.test(ip)) throw new TypeError(`Not an IPv4 address: ${JSON.stringify(ip)}`);
  if (!Number.isInteger(port) || port < 0 || port > 65535) throw new RangeError(`Invalid port: ${port}`);
  const address = new Uint8Array(SOCKADDR_IN_SIZE);
  const view = new DataView(address.buffer);
  view.setUint16(0, AF_INET, true);
  view.setUint16(2, port, false);
  address.set(ip.split(".").map(Number), 4);
  return address;
}

function decodeInet(address: Uint8Array): InetAddress {
  const view = new DataView(address.buffer, address.byteOffset, address.byteLength);
  return { ip: Array.from(address.subarray(4, 8)).join("."), port: view.getUint16(2, false) };
}

function encodeUnix(path: string): Uint8Array {
  const bytes = new TextEncoder().encode(path);
  if (bytes.byteLength === 0 || bytes.byteLength >= SUN_PATH_SIZE || bytes.includes(0)) {
    throw new RangeError(`Unix socket path must be 1 to ${SUN_PATH_SIZE - 1} bytes without NUL: ${path}`);
  }
  const address = new Uint8Array(2 + bytes.byteLength + 1); // family, path, NUL
  new DataView(address.buffer).setUint16(0, AF_UNIX, true);
  address.set(bytes, 2);
  return address;
}

function socketName(fd: number, call: "getsockname" | "getpeername"): InetAddress {
  const address = new Uint8Array(SOCKADDR_IN_SIZE);
  const length = new Uint32Array([SOCKADDR_IN_SIZE]);
  check(libc()[call](fd, address, length), call);
  return decodeInet(address);
}

function checkBacklog(backlog: number): void {
  if (!Number.isInteger(backlog) || backlog < 1) throw new RangeError(`Invalid backlog: ${backlog}`);
}

function removeIfPresent(path: string): void {
  try {
    Deno.removeSync(path);
  } catch (error) {
    if (!(error instanceof Deno.errors.NotFound)) throw error;
  }
}
