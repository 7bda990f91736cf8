/*
 * faasd-shim: containerd's runc v2 shim, without its redundant clean-up call.
 *
 * containerd 1.6 runs "<shim> ... -id ID -bundle B delete" after every task delete, not only after a shim died: its
 * ttrpc client's on-close hook calls the dead-shim clean-up, which execs the shim binary, which execs
 * "runc delete --force". Two Go programs start for nothing on every container (about 60 ms of CPU on a small host).
 *
 * faasd names this program as its containers' runtime (containerd accepts an absolute path). For "delete", when runc
 * no longer knows the container (its state directory is gone) and the bundle's rootfs is not mounted, there is nothing
 * to clean up: it answers what the real shim would (the init pid, exit status 128 + SIGKILL, the time) without
 * starting anything. Every other call, and a delete with anything left to clean, is the real shim
 * (containerd-shim-runc-v2 from PATH, exec'd with the same arguments).
 *
 * Assumes runc's default state root, /run/containerd/runc (faasd sets no other in the runc options).
 */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#define REAL_SHIM "containerd-shim-runc-v2"
#define RUNC_ROOT "/run/containerd/runc"

/* A name as containerd uses it for namespaces and ids: no path separators, no dot-only names. */
static int plain_name(const char *s) {
  if (!s || !*s || strchr(s, '/') || strcmp(s, ".") == 0 || strcmp(s, "..") == 0) return 0;
  return 1;
}

/* Whether "rootfs" under the working directory (the bundle) is a mount point: a device other than its parent's. */
static int rootfs_mounted(void) {
  struct stat here, rootfs;
  if (stat(".", &here) != 0) return 1; /* cannot tell: let the real shim look */
  if (stat("rootfs", &rootfs) != 0) return errno != ENOENT;
  return here.st_dev != rootfs.st_dev;
}

static size_t put_varint(uint8_t *p, uint64_t v) {
  size_t n = 0;
  do {
    uint8_t b = v & 0x7f;
    v >>= 7;
    p[n++] = b | (v ? 0x80 : 0);
  } while (v);
  return n;
}

/* containerd.task.v2.DeleteResponse{pid, exit_status, exited_at} in protobuf wire format. */
static size_t delete_response(uint8_t *out, uint32_t pid, uint32_t status, const struct timespec *at) {
  uint8_t ts[24];
  size_t t = 0, n = 0;
  ts[t++] = 0x08; /* seconds */
  t += put_varint(ts + t, (uint64_t)at->tv_sec);
  if (at->tv_nsec) {
    ts[t++] = 0x10; /* nanos */
    t += put_varint(ts + t, (uint64_t)at->tv_nsec);
  }
  if (pid) {
    out[n++] = 0x08;
    n += put_varint(out + n, pid);
  }
  out[n++] = 0x10;
  n += put_varint(out + n, status);
  out[n++] = 0x1a;
  out[n++] = (uint8_t)t;
  memcpy(out + n, ts, t);
  return n + t;
}

static uint32_t init_pid(void) {
  char buf[32] = {0};
  int fd = open("init.pid", O_RDONLY | O_CLOEXEC);
  if (fd < 0) return 0;
  ssize_t r = read(fd, buf, sizeof buf - 1);
  close(fd);
  if (r <= 0) return 0;
  long v = strtol(buf, NULL, 10);
  return v > 0 && v < 0x7fffffff ? (uint32_t)v : 0;
}

/* Handles a delete with nothing left to clean; returns only when the real shim must do it. */
static void delete_if_nothing_left(const char *ns, const char *id) {
  if (!plain_name(ns) || !plain_name(id)) return;
  char state[4096];
  if (snprintf(state, sizeof state, "%s/%s/%s", RUNC_ROOT, ns, id) >= (int)sizeof state) return;
  struct stat st;
  if (stat(state, &st) == 0 || errno != ENOENT) return; /* runc still knows it, or cannot tell */
  if (rootfs_mounted()) return;
  struct timespec now;
  clock_gettime(CLOCK_REALTIME, &now);
  uint8_t out[64];
  size_t n = delete_response(out, init_pid(), 128 + 9, &now);
  for (size_t off = 0; off < n;) {
    ssize_t w = write(1, out + off, n - off);
    if (w < 0 && errno == EINTR) continue;
    if (w <= 0) exit(1);
    off += (size_t)w;
  }
  exit(0);
}

int main(int argc, char **argv) {
  const char *ns = NULL, *id = NULL;
  for (int i = 1; i + 1 < argc; i++) {
    if (strcmp(argv[i], "-namespace") == 0) ns = argv[i + 1];
    if (strcmp(argv[i], "-id") == 0) id = argv[i + 1];
  }
  if (argc > 1 && strcmp(argv[argc - 1], "delete") == 0) delete_if_nothing_left(ns, id);
  argv[0] = REAL_SHIM;
  execvp(REAL_SHIM, argv);
  fprintf(stderr, "faasd-shim: cannot run %s: %s\n", REAL_SHIM, strerror(errno));
  return 127;
}
