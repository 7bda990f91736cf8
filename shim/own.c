/*
 * The commands of a container faasd-runc created itself (create.c), which runc cannot read: its state is
 * OWN_STATE (pid, start time, bundle, rootfs, creation time, cgroup directories), not runc's state.json.
 *
 *   start ID                  releases the init through the exec FIFO, as for runc's containers (faasd-runc.c)
 *   kill [--all] ID SIGNAL    signals the init ("container not running" when it is gone, which the shim expects);
 *                             with --all every process of its cgroup (SIGKILL to the init of a pid namespace is that)
 *   delete [--force] ID       a stopped container: cgroups and state directory removed; a created one (never
 *                             started) and, with --force, a running one too, after SIGKILL and its end
 *   state ID, ps [--format json|table] ID   what runc prints for them
 *
 * Anything else on these containers is refused with a clear message.
 */
#define _GNU_SOURCE
#include "faasd-runc.h"

#include <errno.h>
#include <fcntl.h>
#include <poll.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <limits.h>
#include <string.h>
#include <sys/syscall.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

struct own {
  const char *id;
  int dir;
  long long pid, start;
  const struct json *state;
};

static const char *status_of(const struct own *c) {
  int running = init_running(c->pid, c->start);
  if (running == 0) return "stopped";
  struct stat st;
  return fstatat(c->dir, "exec.fifo", &st, AT_SYMLINK_NOFOLLOW) == 0 ? "created" : "running";
}

static int signal_number(const char *s) {
  static const struct {
    const char *name;
    int sig;
  } names[] = {{"KILL", SIGKILL}, {"TERM", SIGTERM}, {"INT", SIGINT}, {"HUP", SIGHUP}, {"QUIT", SIGQUIT},
               {"USR1", SIGUSR1}, {"USR2", SIGUSR2}, {"STOP", SIGSTOP}, {"CONT", SIGCONT}};
  char *end;
  long n = strtol(s, &end, 10);
  if (*s && !*end) return n > 0 && n < NSIG ? (int)n : -1;
  if (strncmp(s, "SIG", 3) == 0) s += 3;
  for (size_t i = 0; i < sizeof names / sizeof *names; i++)
    if (strcmp(names[i].name, s) == 0) return names[i].sig;
  return -1;
}

/*
 * Signals the init through a pidfd opened while its start time still matches (so a reused pid is never signalled);
 * -1 when it is not running.
 */
static int signal_init(const struct own *c, int sig) {
  int fd = (int)syscall(SYS_pidfd_open, (pid_t)c->pid, 0);
  if (fd < 0) return -1;
  int ok = init_running(c->pid, c->start) == 1 && syscall(SYS_pidfd_send_signal, fd, sig, NULL, 0) == 0;
  close(fd);
  return ok ? 0 : -1;
}

/* The container's directory in the cgroup hierarchy whose path starts with prefix; NULL when it has none. */
static const char *cgroup_dir(const struct own *c, const char *prefix) {
  const struct json *cgroups = json_get(c->state, "cgroups");
  for (size_t i = 0; cgroups && i < cgroups->count; i++) {
    const char *path = cgroups->items[i].type == JSON_STRING ? cgroups->items[i].text : "";
    if (strncmp(path, prefix, strlen(prefix)) == 0) return path;
  }
  return NULL;
}

/* The cgroup directory whose cgroup.procs lists the container's processes (its pids hierarchy, else the first). */
static const char *procs_dir(const struct own *c) {
  const struct json *cgroups = json_get(c->state, "cgroups");
  const char *pids = cgroup_dir(c, "/sys/fs/cgroup/pids/");
  return pids ? pids : cgroups && cgroups->count && cgroups->items[0].type == JSON_STRING ? cgroups->items[0].text : NULL;
}

/* kill --all with a signal other than SIGKILL: every process but the init, frozen meanwhile (as runc does, so that
 * none forks past the signal), then the init. */
static void signal_all(const struct own *c, int sig) {
  const char *dir = procs_dir(c), *freezer = cgroup_dir(c, "/sys/fs/cgroup/freezer/");
  char path[4096];
  if (!dir || snprintf(path, sizeof path, "%s/cgroup.procs", dir) >= (int)sizeof path) return;
  int frozen = freezer && write_file(freezer, "freezer.state", "FROZEN") == 0;
  FILE *f = fopen(path, "re");
  long long pid;
  while (f && fscanf(f, "%lld", &pid) == 1)
    if (pid != c->pid) kill((pid_t)pid, sig);
  if (f) fclose(f);
  if (frozen) write_file(freezer, "freezer.state", "THAWED");
}

/* Removes the cgroup directories and then the state directory; 0 when a cgroup does not go (the state, which names
 * them, is then kept for another try). */
static int remove_all(int root, const struct own *c) {
  const struct json *cgroups = json_get(c->state, "cgroups");
  int ok = 1;
  for (size_t i = 0; cgroups && i < cgroups->count; i++) {
    const char *path = cgroups->items[i].type == JSON_STRING ? cgroups->items[i].text : "";
    if (strncmp(path, "/sys/fs/cgroup/", 15) != 0 || strstr(path, "/..")) continue;
    if (remove_cgroup(path) != 0) ok = 0;
  }
  if (!ok) return 0;
  unlinkat(c->dir, "exec.fifo", 0);
  unlinkat(c->dir, OWN_STATE, 0);
  return unlinkat(root, c->id, AT_REMOVEDIR) == 0;
}

static void print_state(const struct own *c) {
  const struct json *bundle = json_get(c->state, "bundle"), *rootfs = json_get(c->state, "rootfs");
  const struct json *created = json_get(c->state, "created");
  const char *status = status_of(c);
  /* The strings were written by create.c, JSON-escaped; printed back as their source text. */
  printf("{\n  \"ociVersion\": \"1.0.2-dev\",\n  \"id\": \"%s\",\n  \"pid\": %lld,\n  \"status\": \"%s\",\n", c->id,
         strcmp(status, "stopped") == 0 ? 0 : c->pid, status);
  printf("  \"bundle\": %.*s,\n  \"rootfs\": %.*s,\n  \"created\": %.*s,\n  \"owner\": \"\"\n}\n",
         (int)bundle->source_len, bundle->source, (int)rootfs->source_len, rootfs->source, (int)created->source_len,
         created->source);
}

_Noreturn void own_command(const struct globals *g, int root, const char *command, int argc, char **argv) {
  /* argv: the command's words after the command; the id is the first that is not a flag. */
  int force = 0, all = 0, table = 1;
  const char *id = NULL, *sig = NULL;
  for (int i = 0; i < argc; i++) {
    if (strcmp(argv[i], "--force") == 0 || strcmp(argv[i], "-f") == 0) force = 1;
    else if (strcmp(argv[i], "--all") == 0 || strcmp(argv[i], "-a") == 0) all = 1;
    else if (strcmp(argv[i], "--format") == 0 && i + 1 < argc) table = strcmp(argv[++i], "json") != 0;
    else if (!id) id = argv[i];
    else if (!sig) sig = argv[i];
    else die(g, "faasd-runc: %s: unexpected argument %s", command, argv[i]);
  }
  struct own c = {.id = id, .dir = openat(root, id, O_RDONLY | O_DIRECTORY | O_CLOEXEC)};
  size_t len;
  char *text = c.dir >= 0 ? read_file_at(c.dir, OWN_STATE, 1 << 20, &len) : NULL, err[256];
  int ok1, ok2;
  if (!text || !(c.state = json_parse(text, len, err, sizeof err))) die(g, "container does not exist: %s", id);
  c.pid = json_i64(json_get(c.state, "pid"), &ok1);
  c.start = json_i64(json_get(c.state, "start"), &ok2);
  if (!ok1 || !ok2 || c.pid <= 0 || c.pid > INT_MAX || c.start < 0 || !json_get(c.state, "bundle") || !json_get(c.state, "rootfs") || !json_get(c.state, "created"))
    die(g, "faasd-runc: state of %s is damaged", id);

  if (strcmp(command, "start") == 0) {
    const char *status = status_of(&c);
    if (strcmp(status, "created") != 0)
      die(g, strcmp(status, "stopped") == 0 ? "container process is already dead"
                                            : "cannot start an already running container");
    int fifo = openat(c.dir, "exec.fifo", O_RDONLY | O_NONBLOCK | O_CLOEXEC);
    if (fifo < 0) die(g, "open exec fifo: %s", strerror(errno));
    for (;;) {
      struct pollfd p = {.fd = fifo, .events = POLLIN};
      int ready = poll(&p, 1, 100);
      if (ready < 0 && errno != EINTR) die(g, "poll exec fifo: %s", strerror(errno));
      if (ready > 0) {
        char byte[16];
        ssize_t n = read(fifo, byte, sizeof byte);
        if (n < 0 && (errno == EAGAIN || errno == EINTR)) continue;
        if (n <= 0) die(g, "cannot start an already running container");
        break;
      }
      if (init_running(c.pid, c.start) == 0) die(g, "container process is already dead");
    }
    close(fifo);
    if (unlinkat(c.dir, "exec.fifo", 0) != 0 && errno != ENOENT) die(g, "remove exec fifo: %s", strerror(errno));
    exit(0);
  }
  if (strcmp(command, "kill") == 0) {
    int s = signal_number(sig ? sig : "TERM");
    if (s < 0) die(g, "unknown signal %s", sig);
    if (init_running(c.pid, c.start) != 1) die(g, "container not running");
    if (all && s != SIGKILL) signal_all(&c, s);
    if (signal_init(&c, s) != 0) die(g, "container not running");
    exit(0);
  }
  if (strcmp(command, "delete") == 0) {
    int running = init_running(c.pid, c.start);
    if (running < 0) die(g, "cannot tell whether container %s still runs", id);
    if (running) {
      /* As runc: a created container (never started) is killed and removed; a running one only with --force. */
      const char *status = status_of(&c);
      if (!force && strcmp(status, "created") != 0)
        die(g, "cannot delete container %s that is not stopped: %s", id, status);
      signal_init(&c, SIGKILL);
      for (int tries = 0; init_running(c.pid, c.start) != 0; tries++) {
        if (tries == 1000) die(g, "container %s did not stop after SIGKILL", id);
        usleep(10000);
      }
    }
    if (!remove_all(root, &c)) die(g, "remove container %s: %s", id, strerror(errno));
    exit(0);
  }
  if (strcmp(command, "state") == 0) {
    print_state(&c);
    exit(0);
  }
  if (strcmp(command, "ps") == 0) {
    const char *dir = procs_dir(&c);
    char path[4096];
    snprintf(path, sizeof path, "%s/cgroup.procs", dir ? dir : "");
    FILE *f = fopen(path, "re");
    long long pid;
    printf(table ? "PID\n" : "[");
    for (int n = 0; f && fscanf(f, "%lld", &pid) == 1; n++) printf(table ? "%lld\n" : n ? ",%lld" : "%lld", pid);
    if (!table) printf("]\n");
    if (f) fclose(f);
    exit(0);
  }
  die(g, "faasd-runc: %s is not supported for the containers it creates", command);
}
