/**
 * {@linkcode PidFd}: a process file descriptor (`pidfd_open`). It becomes readable when the process exits, so an
 * exit can be watched on the epoll loop without being the process's parent and without a round trip to whoever is.
 *
 * @module
 */

import { ESRCH, lastError } from "./errno.ts";
import { libc } from "./libc.ts";
import { Fd } from "./socket.ts";

/** A pidfd, closed exactly once. Poll it for reading: readable means the process has exited. */
export class PidFd extends Fd {
  /**
   * Opens a pidfd for `pid`.
   *
   * @returns null when no such process exists (any more).
   * @throws {RangeError} when `pid` is not a positive integer.
   * @throws {ErrnoError} from `pidfd_open`, e.g. `ENOSYS` on a kernel older than 5.3.
   */
  static open(pid: number): PidFd | null {
    if (!Number.isInteger(pid) || pid <= 0) throw new RangeError(`Invalid pid: ${pid}`);
    const fd = libc().pidfd_open(pid, 0);
    if (fd === -1) {
      const error = lastError("pidfd_open", String(pid));
      if (error.errno === ESRCH) return null;
      throw error;
    }
    return new PidFd(fd);
  }
}
