/**
 * faasd's libc bindings: sockets that can be handed to other processes, an epoll loop, and errno errors.
 *
 * @module
 */

export { type EpollEvents, Poller, type WaitOptions } from "./epoll.ts";
export { ErrnoError } from "./errno.ts";
export { detach, type MountSpec, ReadOnlyMount } from "./mount.ts";
export { type DrainResult, Fd, type InetAddress, TcpConn, TcpListener, UnixConn, UnixListener } from "./socket.ts";
