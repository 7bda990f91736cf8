/*
 * faasd-runc: runc, without the Go program starts that runc costs on every container.
 *
 * faasd names this program as the OCI runtime binary of its containers (the runc v2 shim's option BinaryName). It
 * builds a container itself when its config is one it knows in full (create.c; own.c then answers for it), and
 * answers two commands on runc's containers when it can tell exactly what runc would do; every other command, and
 * these whenever anything is unusual, is runc itself (`runc` from PATH, exec'd with the same arguments).
 *
 * "start ID" on a runc container: runc opens the container's exec FIFO for reading (which lets the waiting `runc
 * init` write a byte and exec the process), reads that byte and removes the FIFO. Done here the same way, when the
 * state file names a live init process (pid and start time as in /proc) and the FIFO is there; an init that dies
 * meanwhile is runc's "container process is already dead".
 *
 * "delete ID" (without --force) on a runc container: for a stopped container runc removes its cgroups and its state
 * directory. Done here when the init is gone (no such pid, another process's start time, or a zombie), the FIFO is
 * gone (never-started containers are runc's: they need a kill), the container had its own pid namespace (so nothing
 * of it can still run), it has no poststop hooks and no Intel RDT group, every cgroup path lies under /sys/fs/cgroup,
 * and each cgroup directory goes with one rmdir. Anything else: runc, which tries harder (it retries, and kills what
 * is left).
 *
 * Global flags are taken only in the shape the shim's go-runc writes them: --root DIR, --log FILE, --log-format F.
 */
#define _GNU_SOURCE
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <poll.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include "faasd-runc.h"

#define REAL_RUNTIME "runc"
/* runc's state files are tens of KiB (the whole converted config); larger ones go to runc. */
#define STATE_MAX (1024 * 1024)
#define CGROUP_ROOT "/sys/fs/cgroup/"

static char **real_argv;

static void exec_runtime(void) {
  real_argv[0] = REAL_RUNTIME;
  execvp(REAL_RUNTIME, real_argv);
  fprintf(stderr, "faasd-runc: cannot run %s: %s\n", REAL_RUNTIME, strerror(errno));
  exit(127);
}

/* A container id as runc accepts it (^[\w+-\.]+$, not "." or ".."): safe as one path element. */
int plain_id(const char *s) {
  if (!*s || strlen(s) > 1024 || strcmp(s, ".") == 0 || strcmp(s, "..") == 0) return 0;
  for (; *s; s++)
    if (!((*s >= 'a' && *s <= 'z') || (*s >= 'A' && *s <= 'Z') || (*s >= '0' && *s <= '9') || strchr("_+-.", *s)))
      return 0;
  return 1;
}

char *read_file_at(int dir, const char *name, size_t max, size_t *len) {
  int fd = openat(dir, name, O_RDONLY | O_CLOEXEC);
  if (fd < 0) return NULL;
  char *buf = malloc(max + 1);
  size_t n = 0;
  while (buf && n < max) {
    ssize_t r = read(fd, buf + n, max - n);
    if (r < 0 && errno == EINTR) continue;
    if (r < 0) n = max; /* unreadable: treated as too large */
    if (r <= 0) break;
    n += (size_t)r;
  }
  close(fd);
  if (!buf || n >= max) {
    free(buf);
    return NULL;
  }
  buf[n] = 0;
  if (len) *len = n;
  return buf;
}

/* Reads runc's state file of the container in dir; NULL when missing or too large. */
static char *read_state(int dir) { return read_file_at(dir, "state.json", STATE_MAX, NULL); }

int write_file(const char *dir, const char *name, const char *value) {
  char path[4096];
  if (snprintf(path, sizeof path, "%s/%s", dir, name) >= (int)sizeof path) return -1;
  int fd = open(path, O_WRONLY | O_CLOEXEC);
  if (fd < 0) return -1;
  ssize_t n = write(fd, value, strlen(value));
  int saved = errno;
  close(fd);
  errno = saved;
  return n == (ssize_t)strlen(value) ? 0 : -1;
}

int remove_cgroup(const char *path) {
  /* A cgroup may stay busy for a moment after its last process exited: retried for up to a second. */
  for (int tries = 0; rmdir(path) != 0; tries++) {
    if (errno == ENOENT) return 0;
    if (errno != EBUSY || tries == 100) return -1;
    usleep(10000);
  }
  return 0;
}

_Noreturn void die(const struct globals *g, const char *fmt, ...) {
  char msg[2048];
  va_list ap;
  va_start(ap, fmt);
  vsnprintf(msg, sizeof msg, fmt, ap);
  va_end(ap);
  fprintf(stderr, "%s\n", msg);
  /* The shim reports the last error line of the --log file (runc's JSON log). */
  FILE *f = g && g->log ? fopen(g->log, "ae") : NULL;
  if (f) {
    char now[32];
    time_t t = time(NULL);
    strftime(now, sizeof now, "%Y-%m-%dT%H:%M:%SZ", gmtime(&t));
    if (g->json_log) {
      fprintf(f, "{\"level\":\"error\",\"msg\":\"");
      for (const char *s = msg; *s; s++) {
        if (*s == '"' || *s == '\\') fprintf(f, "\\%c", *s);
        else if ((unsigned char)*s < 0x20) fprintf(f, "\\u%04x", *s);
        else fputc(*s, f);
      }
      fprintf(f, "\",\"time\":\"%s\"}\n", now);
    } else {
      fprintf(f, "time=\"%s\" level=error msg=\"%s\"\n", now, msg);
    }
    fclose(f);
  }
  exit(1);
}

/* The unsigned integer after "key": in the state, or -1. */
static long long state_number(const char *state, const char *key) {
  const char *p = strstr(state, key);
  if (!p) return -1;
  p += strlen(key);
  if (*p < '0' || *p > '9') return -1;
  long long v = 0;
  for (; *p >= '0' && *p <= '9'; p++) {
    if (v > (1LL << 60)) return -1;
    v = v * 10 + (*p - '0');
  }
  return v;
}

/* The state letter and start time (fields 3 and 22 of /proc/PID/stat); 0 gone, -1 cannot tell, 1 read. */
static int stat_of(long long pid, char *state, long long *started) {
  if (pid <= 0) return -1;
  char path[64], stat[1024];
  snprintf(path, sizeof path, "/proc/%lld/stat", pid);
  int fd = open(path, O_RDONLY | O_CLOEXEC);
  if (fd < 0) return errno == ENOENT ? 0 : -1;
  ssize_t n = read(fd, stat, sizeof stat - 1);
  close(fd);
  if (n <= 0) return n == 0 ? 0 : (errno == ESRCH ? 0 : -1);
  stat[n] = 0;
  /* "pid (comm) S ppid ... starttime": comm may hold anything, so fields count from the last ')'. */
  char *p = strrchr(stat, ')');
  if (!p || p[1] != ' ') return -1;
  *state = p[2];
  p += 2;
  for (int field = 3; field < 22; field++) { /* starttime is field 22 */
    p = strchr(p, ' ');
    if (!p) return -1;
    p++;
  }
  *started = strtoll(p, NULL, 10);
  return 1;
}

long long process_start(long long pid) {
  char state;
  long long started;
  return stat_of(pid, &state, &started) == 1 ? started : -1;
}

int init_running(long long pid, long long start) {
  if (pid <= 0 || start < 0) return -1;
  char state;
  long long started;
  int r = stat_of(pid, &state, &started);
  if (r != 1) return r;
  if (started != start || state == 'Z' || state == 'X' || state == 'x') return 0;
  return 1;
}

/* start ID: releases the init's exec (see the top). Returns only when runc must answer. */
static void start(int root, const char *id) {
  int dir = openat(root, id, O_RDONLY | O_DIRECTORY | O_CLOEXEC);
  if (dir < 0) return;
  char *state = read_state(dir);
  if (!state) return;
  long long pid = state_number(state, "\"init_process_pid\":");
  long long started = state_number(state, "\"init_process_start\":");
  int hookless = strstr(state, "\"Hooks\":null") || strstr(state, "\"poststart\":null");
  free(state);
  if (!hookless || init_running(pid, started) != 1) return;
  /* Non-blocking, so that an init that dies before it opens its end cannot hang this open; poll waits instead. */
  int fifo = openat(dir, "exec.fifo", O_RDONLY | O_NONBLOCK | O_CLOEXEC);
  if (fifo < 0) return;
  for (;;) {
    struct pollfd p = {.fd = fifo, .events = POLLIN};
    int ready = poll(&p, 1, 100);
    if (ready < 0 && errno != EINTR) return;
    if (ready > 0) {
      char byte[16];
      ssize_t n = read(fifo, byte, sizeof byte);
      if (n < 0 && (errno == EAGAIN || errno == EINTR)) continue;
      if (n <= 0) {
        fprintf(stderr, "cannot start an already running container\n");
        exit(1);
      }
      break;
    }
    int running = init_running(pid, started);
    if (running == 0) {
      fprintf(stderr, "container process is already dead\n");
      exit(1);
    }
    if (running < 0) return;
  }
  close(fifo);
  if (unlinkat(dir, "exec.fifo", 0) != 0 && errno != ENOENT) {
    fprintf(stderr, "faasd-runc: remove exec fifo: %s\n", strerror(errno));
    exit(1);
  }
  exit(0);
}

/* Removes each cgroup directory named in the state's "cgroup_paths"; 0 when one is not plain or does not go. */
static int remove_cgroups(const char *state) {
  const char *p = strstr(state, "\"cgroup_paths\":{");
  if (!p) return 0;
  p += strlen("\"cgroup_paths\":{");
  const char *end = strchr(p, '}');
  if (!end || memchr(p, '\\', (size_t)(end - p))) return 0;
  while (p < end) {
    /* "key":"value" pairs, comma separated; the key is a controller name, the value an absolute path. */
    if (*p != '"') return 0;
    const char *key_end = memchr(p + 1, '"', (size_t)(end - p - 1));
    if (!key_end || key_end[1] != ':' || key_end[2] != '"') return 0;
    const char *value = key_end + 3, *value_end = memchr(value, '"', (size_t)(end - value));
    if (!value_end) return 0;
    char path[4096];
    size_t len = (size_t)(value_end - value);
    if (len >= sizeof path) return 0;
    memcpy(path, value, len);
    path[len] = 0;
    if (strncmp(path, CGROUP_ROOT, strlen(CGROUP_ROOT)) != 0 || strstr(path, "/..") || strstr(path, "/./")) return 0;
    if (rmdir(path) != 0 && errno != ENOENT) return 0;
    p = value_end + 1;
    if (*p == ',') p++;
  }
  return 1;
}

/* Removes the (flat) state directory; 0 when it holds a directory or a file does not go. */
static int remove_state_dir(int root, const char *id) {
  int fd = openat(root, id, O_RDONLY | O_DIRECTORY | O_CLOEXEC);
  if (fd < 0) return errno == ENOENT;
  DIR *d = fdopendir(fd);
  if (!d) {
    close(fd);
    return 0;
  }
  int ok = 1;
  for (struct dirent *e; ok && (e = readdir(d));) {
    if (strcmp(e->d_name, ".") == 0 || strcmp(e->d_name, "..") == 0) continue;
    if (unlinkat(dirfd(d), e->d_name, 0) != 0 && errno != ENOENT) ok = 0;
  }
  closedir(d);
  return ok && (unlinkat(root, id, AT_REMOVEDIR) == 0 || errno == ENOENT);
}

/* delete ID: a stopped container's clean-up (see the top). Returns only when runc must answer. */
static void delete(int root, const char *id) {
  int dir = openat(root, id, O_RDONLY | O_DIRECTORY | O_CLOEXEC);
  if (dir < 0) return;
  char *state = read_state(dir);
  struct stat fifo;
  int created = fstatat(dir, "exec.fifo", &fifo, AT_SYMLINK_NOFOLLOW) == 0 || errno != ENOENT;
  close(dir);
  if (!state) return;
  int ok = !created && (strstr(state, "\"Hooks\":null") || strstr(state, "\"poststop\":null")) &&
           strstr(state, "{\"type\":\"NEWPID\",\"path\":\"\"}") && !strstr(state, "\"intel_rdt_path\":\"/") &&
           init_running(state_number(state, "\"init_process_pid\":"),
                        state_number(state, "\"init_process_start\":")) == 0 &&
           remove_cgroups(state);
  free(state);
  /* What is left (a cgroup that did not go) is runc's, which also removes the state directory. */
  if (!ok || !remove_state_dir(root, id)) return;
  exit(0);
}

/* Whether the container id in root is one create.c made. */
static int own_container(int root, const char *id) {
  char path[2048];
  if (!plain_id(id) || snprintf(path, sizeof path, "%s/%s", id, OWN_STATE) >= (int)sizeof path) return 0;
  return faccessat(root, path, F_OK, 0) == 0;
}

int main(int argc, char **argv) {
  real_argv = argv;
  struct globals g = {0};
  int i = 1;
  for (; i + 1 < argc; i += 2) {
    if (strcmp(argv[i], "--root") == 0) g.root = argv[i + 1];
    else if (strcmp(argv[i], "--log") == 0) g.log = argv[i + 1];
    else if (strcmp(argv[i], "--log-format") == 0) g.json_log = strcmp(argv[i + 1], "json") == 0;
    else break;
  }
  if (!g.root || *g.root != '/' || i >= argc) exec_runtime();
  if (strcmp(argv[i], "create") == 0) create(&g, argc - i, argv + i);
  int root = open(g.root, O_RDONLY | O_DIRECTORY | O_CLOEXEC);
  /* A container of faasd-runc's own, named anywhere among the command's words: never runc's to read. */
  for (int a = i + 1; root >= 0 && a < argc; a++)
    if (own_container(root, argv[a])) own_command(&g, root, argv[i], argc - i - 1, argv + i + 1);
  /* Exactly "start ID" or "delete ID" after the flags. */
  if (root >= 0 && i + 2 == argc && plain_id(argv[i + 1])) {
    if (strcmp(argv[i], "start") == 0) start(root, argv[i + 1]);
    if (strcmp(argv[i], "delete") == 0) delete(root, argv[i + 1]);
  }
  exec_runtime();
}
