/*
 * faasd-runc create: the container, built without runc's two Go program starts (runc create and runc init, about
 * half of a container's CPU on a small host) and without compiling the seccomp filter on every start.
 *
 * Only a config that faasd-runc knows in full takes this path: every member is one it handles (the shape faasd's
 * lib/serve/spec.ts writes: new pid, mount, network, ipc and uts namespaces; proc, tmpfs, devpts, mqueue, sysfs and
 * bind mounts; masked and read-only paths; capabilities, rlimits, no new privileges; memory, pids, cpu and device
 * limits; a seccomp profile), on cgroup v1 controllers (v1, or hybrid, where runc's cgroupfs driver joins the v2
 * mount and sets nothing there, as here). Anything else, and a mount destination in the image that passes through a
 * symlink, is runc's: this program then execs runc with the same arguments, having left nothing behind.
 *
 * What it does is what runc does for such a config, in the same order: state directory and exec FIFO; cgroups made
 * and limited (runc's default device rules); a child cloned into the new namespaces inside the cgroups; in it,
 * loopback up, the rootfs bound onto itself, the mounts (each destination resolved in the rootfs without following
 * symlinks), the device nodes and /dev links, pivot_root, read-only and masked paths, a read-only root, the hostname,
 * a fresh session keyring, rlimits, HOME when the env has none, the bounding set, groups and ids, capabilities, no
 * new privileges; it then reports to its parent and blocks opening the exec FIFO (what `runc start`, or faasd-runc's,
 * releases), loads the seccomp filter and execs the process. The parent writes the pid file and its state (OWN_STATE)
 * and exits; the child is the shim's.
 *
 * The seccomp filter is compiled with libseccomp with runc's rule semantics, once per profile: the BPF is kept in
 * SECCOMP_CACHE, keyed by the profile's exact text and what compiled it. Unlike runc, syscalls
 * newer than the profile get its default action, not ENOSYS.
 */
#define _GNU_SOURCE
#include "faasd-runc.h"

#include <errno.h>
#include <fcntl.h>
#include <grp.h>
#include <limits.h>
#include <linux/close_range.h>
#include <linux/filter.h>
#include <linux/seccomp.h>
#include <poll.h>
#include <sched.h>
#include <seccomp.h>
#include <signal.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <linux/capability.h>
#include <net/if.h>
#include <sys/ioctl.h>
#include <sys/mman.h>
#include <sys/mount.h>
#include <sys/prctl.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <linux/magic.h>
#include <linux/openat2.h>
#include <sys/statfs.h>
#include <sys/statvfs.h>
#include <sys/syscall.h>
#include <sys/sysmacros.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#define CONFIG_MAX (4 * 1024 * 1024)
#define MAX_CGROUPS 32
#define FALLBACK "\x01" "fallback"
/* How long the init may take to build the container (an image can make that hang; runc has no bound at all). */
#define SETUP_TIMEOUT_MS 30000

/* ---- what the config asks for, once checked ---- */

struct mount_entry {
  const char *destination, *type, *source;
  unsigned long flags, remount_flags; /* remount_flags: of a bind mount, applied by a second (remount) call */
  char data[1024];
  int bind;
};

struct plan {
  const char *bundle, *id, *pid_file;
  char rootfs[PATH_MAX];
  int readonly_root, new_keyring;
  const struct json *args, *env, *masked, *readonly;
  const char *cwd, *hostname;
  unsigned uid, gid;
  gid_t groups[64];
  size_t ngroups;
  uint64_t caps_bounding, caps_effective, caps_permitted;
  struct rlimit rlimits[RLIM_NLIMITS];
  int rlimit_set[RLIM_NLIMITS];
  struct mount_entry mounts[64];
  size_t nmounts;
  const char *cgroups_path;
  long long memory, swap, pids, cpu_quota, cpu_period;
  const struct json *seccomp;
  unsigned seccomp_flags;
  struct sock_fprog filter;
  char cgroups[MAX_CGROUPS][PATH_MAX];
  /* This program's file: the container's process may never be it (it is reachable as /proc/self/exe). */
  dev_t self_dev;
  ino_t self_ino;
  /* This process's own cgroups, in the same order: it joins the container's to clone the init inside them. */
  char origin[MAX_CGROUPS][PATH_MAX];
  size_t ncgroups;
};

static const char *const CAP_NAMES[] = {
    "CAP_CHOWN", "CAP_DAC_OVERRIDE", "CAP_DAC_READ_SEARCH", "CAP_FOWNER", "CAP_FSETID", "CAP_KILL", "CAP_SETGID",
    "CAP_SETUID", "CAP_SETPCAP", "CAP_LINUX_IMMUTABLE", "CAP_NET_BIND_SERVICE", "CAP_NET_BROADCAST",
    "CAP_NET_ADMIN", "CAP_NET_RAW", "CAP_IPC_LOCK", "CAP_IPC_OWNER", "CAP_SYS_MODULE", "CAP_SYS_RAWIO",
    "CAP_SYS_CHROOT", "CAP_SYS_PTRACE", "CAP_SYS_PACCT", "CAP_SYS_ADMIN", "CAP_SYS_BOOT", "CAP_SYS_NICE",
    "CAP_SYS_RESOURCE", "CAP_SYS_TIME", "CAP_SYS_TTY_CONFIG", "CAP_MKNOD", "CAP_LEASE", "CAP_AUDIT_WRITE",
    "CAP_AUDIT_CONTROL", "CAP_SETFCAP", "CAP_MAC_OVERRIDE", "CAP_MAC_ADMIN", "CAP_SYSLOG", "CAP_WAKE_ALARM",
    "CAP_BLOCK_SUSPEND", "CAP_AUDIT_READ", "CAP_PERFMON", "CAP_BPF", "CAP_CHECKPOINT_RESTORE",
};
#define NCAPS (sizeof CAP_NAMES / sizeof *CAP_NAMES)

static const char *const RLIMIT_NAMES[RLIM_NLIMITS] = {
    [RLIMIT_CPU] = "RLIMIT_CPU",         [RLIMIT_FSIZE] = "RLIMIT_FSIZE",   [RLIMIT_DATA] = "RLIMIT_DATA",
    [RLIMIT_STACK] = "RLIMIT_STACK",     [RLIMIT_CORE] = "RLIMIT_CORE",     [RLIMIT_RSS] = "RLIMIT_RSS",
    [RLIMIT_NPROC] = "RLIMIT_NPROC",     [RLIMIT_NOFILE] = "RLIMIT_NOFILE", [RLIMIT_MEMLOCK] = "RLIMIT_MEMLOCK",
    [RLIMIT_AS] = "RLIMIT_AS",           [RLIMIT_LOCKS] = "RLIMIT_LOCKS",   [RLIMIT_SIGPENDING] = "RLIMIT_SIGPENDING",
    [RLIMIT_MSGQUEUE] = "RLIMIT_MSGQUEUE", [RLIMIT_NICE] = "RLIMIT_NICE", [RLIMIT_RTPRIO] = "RLIMIT_RTPRIO",
    [RLIMIT_RTTIME] = "RLIMIT_RTTIME",
};

/* ---- checking the config: 0 means "runc's" ---- */

/* Whether every member of object v is named in the NULL-terminated list. */
static int only_members(const struct json *v, const char *const *names) {
  if (!v || v->type != JSON_OBJECT) return 0;
  for (size_t i = 0; i < v->count; i++) {
    const char *const *n = names;
    while (*n && strcmp(*n, v->keys[i]) != 0) n++;
    if (!*n) return 0;
  }
  return 1;
}

static int is_string_array(const struct json *v) {
  if (!v || v->type != JSON_ARRAY) return 0;
  for (size_t i = 0; i < v->count; i++)
    if (v->items[i].type != JSON_STRING) return 0;
  return 1;
}

static const char *string_of(const struct json *v) { return v && v->type == JSON_STRING ? v->text : NULL; }

static int caps_of(const struct json *v, uint64_t *out) {
  *out = 0;
  if (!v) return 1;
  if (!is_string_array(v)) return 0;
  for (size_t i = 0; i < v->count; i++) {
    size_t c = 0;
    while (c < NCAPS && strcmp(CAP_NAMES[c], v->items[i].text) != 0) c++;
    if (c == NCAPS) return 0;
    *out |= 1ULL << c;
  }
  return 1;
}

/* A clean absolute path: no "." or ".." element, no empty element, no trailing slash. */
static int clean_absolute(const char *p) {
  if (!p || p[0] != '/' || strlen(p) >= PATH_MAX) return 0;
  if (strcmp(p, "/") == 0) return 1;
  for (const char *s = p; *s;) {
    s++;
    const char *e = strchrnul(s, '/');
    size_t n = (size_t)(e - s);
    if (n == 0 || (n == 1 && s[0] == '.') || (n == 2 && s[0] == '.' && s[1] == '.')) return 0;
    s = e;
  }
  return 1;
}

static int mount_options(const struct json *options, struct mount_entry *m) {
  static const struct {
    const char *name;
    unsigned long set, clear;
  } flags[] = {
      {"ro", MS_RDONLY, 0},          {"rw", 0, MS_RDONLY},        {"nosuid", MS_NOSUID, 0},
      {"suid", 0, MS_NOSUID},        {"nodev", MS_NODEV, 0},      {"dev", 0, MS_NODEV},
      {"noexec", MS_NOEXEC, 0},      {"exec", 0, MS_NOEXEC},      {"sync", MS_SYNCHRONOUS, 0},
      {"async", 0, MS_SYNCHRONOUS},  {"noatime", MS_NOATIME, 0},  {"atime", 0, MS_NOATIME},
      {"nodiratime", MS_NODIRATIME, 0}, {"diratime", 0, MS_NODIRATIME}, {"relatime", MS_RELATIME, 0},
      {"norelatime", 0, MS_RELATIME}, {"strictatime", MS_STRICTATIME, 0}, {"nostrictatime", 0, MS_STRICTATIME},
  };
  if (options && !is_string_array(options)) return 0;
  size_t used = 0;
  for (size_t i = 0; options && i < options->count; i++) {
    const char *o = options->items[i].text;
    if (strcmp(o, "bind") == 0 || strcmp(o, "rbind") == 0) {
      m->bind = o[0] == 'r' ? 2 : 1;
      continue;
    }
    size_t f = 0;
    while (f < sizeof flags / sizeof *flags && strcmp(flags[f].name, o) != 0) f++;
    if (f < sizeof flags / sizeof *flags) {
      m->flags = (m->flags | flags[f].set) & ~flags[f].clear;
      continue;
    }
    /* Propagation and other flag words runc knows are not handled here; anything with "=" or a plain word the
     * filesystem takes (newinstance) is data. */
    if (!strchr(o, '=') && strcmp(o, "newinstance") != 0) return 0;
    size_t n = strlen(o);
    if (used + n + 2 > sizeof m->data || strchr(o, ',')) return 0;
    if (used) m->data[used++] = ',';
    memcpy(m->data + used, o, n + 1);
    used += n;
  }
  if (m->bind) {
    m->remount_flags = m->flags;
    m->flags = MS_BIND | (m->bind == 2 ? MS_REC : 0);
    if (used) return 0;
  }
  return 1;
}

static int plan_mounts(const struct json *mounts, struct plan *p) {
  static const char *const keys[] = {"destination", "type", "source", "options", NULL};
  static const char *const types[] = {"proc", "tmpfs", "devpts", "mqueue", "sysfs", "bind", NULL};
  if (!mounts) return 1;
  if (mounts->type != JSON_ARRAY || mounts->count > sizeof p->mounts / sizeof *p->mounts) return 0;
  int proc = 0;
  for (size_t i = 0; i < mounts->count; i++) {
    const struct json *m = &mounts->items[i];
    struct mount_entry *e = &p->mounts[p->nmounts++];
    if (!only_members(m, keys)) return 0;
    e->destination = string_of(json_get(m, "destination"));
    e->type = string_of(json_get(m, "type"));
    e->source = string_of(json_get(m, "source"));
    if (!clean_absolute(e->destination) || strcmp(e->destination, "/") == 0 || !e->type || !e->source) return 0;
    const char *const *t = types;
    while (*t && strcmp(*t, e->type) != 0) t++;
    if (!*t || !mount_options(json_get(m, "options"), e)) return 0;
    if ((strcmp(e->type, "bind") == 0) != (e->bind != 0)) return 0;
    if (e->bind && !clean_absolute(e->source)) return 0;
    if (strcmp(e->destination, "/proc") == 0 && strcmp(e->type, "proc") == 0) proc = 1;
  }
  /* The exec FIFO is reopened through /proc/self/fd in the container. */
  return proc;
}

static int plan_resources(const struct json *r, struct plan *p) {
  static const char *const keys[] = {"devices", "memory", "pids", "cpu", NULL};
  static const char *const device_keys[] = {"allow", "access", NULL};
  static const char *const memory_keys[] = {"limit", "swap", NULL};
  static const char *const pids_keys[] = {"limit", NULL};
  static const char *const cpu_keys[] = {"quota", "period", NULL};
  int ok = 1;
  p->memory = p->swap = p->pids = p->cpu_quota = p->cpu_period = -1;
  if (!r) return 1;
  if (!only_members(r, keys)) return 0;
  const struct json *devices = json_get(r, "devices");
  /* Only "deny everything" (to which runc adds its default rules, as here). */
  if (devices) {
    if (devices->type != JSON_ARRAY) return 0;
    for (size_t i = 0; i < devices->count; i++) {
      const struct json *d = &devices->items[i];
      const struct json *allow = json_get(d, "allow");
      const char *access = string_of(json_get(d, "access"));
      if (!only_members(d, device_keys) || !allow || allow->type != JSON_BOOL || allow->boolean || !access ||
          strcmp(access, "rwm") != 0)
        return 0;
    }
  }
  const struct json *memory = json_get(r, "memory"), *pids = json_get(r, "pids"), *cpu = json_get(r, "cpu");
  if (memory) {
    if (!only_members(memory, memory_keys)) return 0;
    if (json_get(memory, "limit")) p->memory = json_i64(json_get(memory, "limit"), &ok);
    if (!ok || (json_get(memory, "swap") && (p->swap = json_i64(json_get(memory, "swap"), &ok), !ok))) return 0;
  }
  if (pids && (!only_members(pids, pids_keys) || (p->pids = json_i64(json_get(pids, "limit"), &ok), !ok))) return 0;
  if (cpu) {
    if (!only_members(cpu, cpu_keys)) return 0;
    if (json_get(cpu, "quota") && (p->cpu_quota = json_i64(json_get(cpu, "quota"), &ok), !ok)) return 0;
    if (json_get(cpu, "period") && (p->cpu_period = json_i64(json_get(cpu, "period"), &ok), !ok)) return 0;
  }
  return 1;
}

static int plan_process(const struct json *process, struct plan *p) {
  static const char *const keys[] = {"terminal", "user", "args", "env", "cwd", "capabilities", "rlimits",
                                     "noNewPrivileges", NULL};
  static const char *const user_keys[] = {"uid", "gid", "additionalGids", NULL};
  static const char *const cap_keys[] = {"bounding", "effective", "permitted", "inheritable", "ambient", NULL};
  static const char *const rlimit_keys[] = {"type", "hard", "soft", NULL};
  int ok;
  if (!only_members(process, keys)) return 0;
  const struct json *terminal = json_get(process, "terminal"), *nnp = json_get(process, "noNewPrivileges");
  if (terminal && (terminal->type != JSON_BOOL || terminal->boolean)) return 0;
  /* The filter is loaded unprivileged after the ids change, as runc does with noNewPrivileges. */
  if (!nnp || nnp->type != JSON_BOOL || !nnp->boolean) return 0;
  p->args = json_get(process, "args");
  p->env = json_get(process, "env");
  p->cwd = string_of(json_get(process, "cwd"));
  if (!is_string_array(p->args) || p->args->count == 0 || (p->env && !is_string_array(p->env))) return 0;
  if (!p->cwd || p->cwd[0] != '/') return 0;
  const struct json *user = json_get(process, "user");
  if (!only_members(user, user_keys)) return 0;
  p->uid = (unsigned)json_u64(json_get(user, "uid"), &ok);
  if (!ok || p->uid > 0xfffffffe) return 0;
  p->gid = (unsigned)json_u64(json_get(user, "gid"), &ok);
  if (!ok || p->gid > 0xfffffffe) return 0;
  const struct json *groups = json_get(user, "additionalGids");
  if (groups) {
    if (groups->type != JSON_ARRAY || groups->count > sizeof p->groups / sizeof *p->groups) return 0;
    for (size_t i = 0; i < groups->count; i++) {
      unsigned long long g = json_u64(&groups->items[i], &ok);
      if (!ok || g > 0xfffffffe) return 0;
      p->groups[p->ngroups++] = (gid_t)g;
    }
  }
  const struct json *caps = json_get(process, "capabilities");
  uint64_t none;
  if (caps && (!only_members(caps, cap_keys) || !caps_of(json_get(caps, "bounding"), &p->caps_bounding) ||
               !caps_of(json_get(caps, "effective"), &p->caps_effective) ||
               !caps_of(json_get(caps, "permitted"), &p->caps_permitted) ||
               !caps_of(json_get(caps, "inheritable"), &none) || none || !caps_of(json_get(caps, "ambient"), &none) ||
               none))
    return 0;
  const struct json *rlimits = json_get(process, "rlimits");
  for (size_t i = 0; rlimits && i < rlimits->count; i++) {
    const struct json *r = &rlimits->items[i];
    const char *type = string_of(json_get(r, "type"));
    if (!only_members(r, rlimit_keys) || !type) return 0;
    int t = 0;
    while (t < RLIM_NLIMITS && (!RLIMIT_NAMES[t] || strcmp(RLIMIT_NAMES[t], type) != 0)) t++;
    if (t == RLIM_NLIMITS) return 0;
    p->rlimits[t].rlim_max = json_u64(json_get(r, "hard"), &ok);
    if (!ok) return 0;
    p->rlimits[t].rlim_cur = json_u64(json_get(r, "soft"), &ok);
    if (!ok) return 0;
    p->rlimit_set[t] = 1;
  }
  if (rlimits && rlimits->type != JSON_ARRAY) return 0;
  return 1;
}

static int plan_linux(const struct json *lx, struct plan *p) {
  static const char *const keys[] = {"namespaces", "cgroupsPath", "resources", "seccomp", "maskedPaths",
                                     "readonlyPaths", NULL};
  static const char *const ns_keys[] = {"type", NULL};
  static const char *const ns_types[] = {"pid", "mount", "network", "ipc", "uts"};
  if (!only_members(lx, keys)) return 0;
  /* Exactly the five namespaces, new (no path): what the clone below makes. */
  const struct json *ns = json_get(lx, "namespaces");
  if (!ns || ns->type != JSON_ARRAY || ns->count != 5) return 0;
  for (size_t t = 0; t < 5; t++) {
    int found = 0;
    for (size_t i = 0; i < ns->count; i++) {
      if (!only_members(&ns->items[i], ns_keys)) return 0;
      const char *type = string_of(json_get(&ns->items[i], "type"));
      found += type && strcmp(type, ns_types[t]) == 0;
    }
    if (found != 1) return 0;
  }
  p->cgroups_path = string_of(json_get(lx, "cgroupsPath"));
  if (!clean_absolute(p->cgroups_path) || strcmp(p->cgroups_path, "/") == 0) return 0;
  p->masked = json_get(lx, "maskedPaths");
  p->readonly = json_get(lx, "readonlyPaths");
  for (const struct json *const *l = (const struct json *const[]){p->masked, p->readonly, NULL}; *l; l++) {
    if (!is_string_array(*l)) return 0;
    for (size_t i = 0; i < (*l)->count; i++)
      if (!clean_absolute((*l)->items[i].text)) return 0;
  }
  p->seccomp = json_get(lx, "seccomp");
  return plan_resources(json_get(lx, "resources"), p);
}

/* Whether the config is one this program builds in full (see the top); fills the plan. */
static int plan_config(const struct json *config, struct plan *p) {
  static const char *const keys[] = {"ociVersion", "process", "root", "hostname", "annotations", "mounts", "linux",
                                     NULL};
  static const char *const root_keys[] = {"path", "readonly", NULL};
  if (!only_members(config, keys) || !plan_process(json_get(config, "process"), p)) return 0;
  const struct json *root = json_get(config, "root"), *readonly = json_get(root, "readonly");
  const char *path = string_of(json_get(root, "path"));
  if (!only_members(root, root_keys) || !path || (readonly && readonly->type != JSON_BOOL)) return 0;
  p->readonly_root = readonly && readonly->boolean;
  int n = path[0] == '/' ? snprintf(p->rootfs, sizeof p->rootfs, "%s", path)
                         : snprintf(p->rootfs, sizeof p->rootfs, "%s/%s", p->bundle, path);
  if (n < 0 || (size_t)n >= sizeof p->rootfs) return 0;
  p->hostname = string_of(json_get(config, "hostname"));
  if (json_get(config, "hostname") && !p->hostname) return 0;
  const struct json *annotations = json_get(config, "annotations");
  if (annotations && annotations->type != JSON_OBJECT) return 0;
  return plan_mounts(json_get(config, "mounts"), p) && plan_linux(json_get(config, "linux"), p);
}

/* ---- cgroups ---- */

/*
 * The cgroup directories of the container: cgroupsPath under the mount of each hierarchy this process is in (from
 * /proc/self/cgroup: /sys/fs/cgroup/NAME for a v1 hierarchy, /sys/fs/cgroup/unified for v2), when the memory, pids,
 * cpu and devices controllers are v1 hierarchies (v1, or hybrid: runc's cgroupfs driver then joins the v2 mount and
 * sets nothing there, as here); 0 on any other layout, and when a hierarchy is not mounted there (runc's).
 */
static int plan_cgroups(struct plan *p) {
  struct statfs fs;
  if (statfs("/sys/fs/cgroup", &fs) != 0 || fs.f_type == CGROUP2_SUPER_MAGIC) return 0;
  FILE *f = fopen("/proc/self/cgroup", "re");
  if (!f) return 0;
  char line[4096];
  int ok = 1, needed = 0;
  while (ok && fgets(line, sizeof line, f)) {
    /* "ID:CONTROLLERS:PATH"; CONTROLLERS is empty for v2, "name=N" for a named v1 hierarchy. */
    char *controllers = strchr(line, ':'), *end = controllers ? strchr(controllers + 1, ':') : NULL;
    if (!end) continue;
    *end = 0;
    controllers++;
    char dir[PATH_MAX];
    int v2 = !*controllers;
    const char *name = v2 ? "unified" : strncmp(controllers, "name=", 5) == 0 ? controllers + 5 : controllers;
    if (!*name || strchr(name, '/') || snprintf(dir, sizeof dir, "/sys/fs/cgroup/%s", name) >= (int)sizeof dir) {
      ok = 0;
      break;
    }
    if (statfs(dir, &fs) != 0 || fs.f_type != (v2 ? CGROUP2_SUPER_MAGIC : CGROUP_SUPER_MAGIC)) {
      if (v2) continue; /* no v2 mount beside the v1 ones: nothing to join */
      ok = 0;
      break;
    }
    for (char *c = v2 ? NULL : controllers, *next; c; c = next) {
      next = strchr(c, ',');
      if (next) *next++ = 0;
      for (int k = 0; k < 4; k++)
        if (strcmp(c, (const char *const[]){"memory", "pids", "cpu", "devices"}[k]) == 0) needed |= 1 << k;
    }
    char *own = end + 1;
    own[strcspn(own, "\n")] = 0;
    if (p->ncgroups == MAX_CGROUPS || snprintf(p->origin[p->ncgroups], PATH_MAX, "%s%s", dir, own) >= PATH_MAX ||
        snprintf(p->cgroups[p->ncgroups++], PATH_MAX, "%s%s", dir, p->cgroups_path) >= PATH_MAX)
      ok = 0;
  }
  fclose(f);
  return ok && needed == 15;
}

/* mkdir -p of a cgroup directory; a new cpuset directory gets its parent's cpus and mems (else nothing can join). */
static int make_cgroup(const char *path) {
  char partial[PATH_MAX];
  size_t base = strlen("/sys/fs/cgroup/");
  const char *s = strchr(path + base, '/');
  int cpuset = strncmp(path + base, "cpuset/", 7) == 0;
  while (s) {
    const char *e = strchr(s + 1, '/');
    size_t n = e ? (size_t)(e - path) : strlen(path);
    memcpy(partial, path, n);
    partial[n] = 0;
    if (mkdir(partial, 0755) != 0 && errno != EEXIST) return -1;
    if (cpuset) {
      for (const char *const *file = (const char *const[]){"cpuset.cpus", "cpuset.mems", NULL}; *file; file++) {
        char own[PATH_MAX + 32], parent[PATH_MAX + 32], value[4096];
        snprintf(own, sizeof own, "%s/%s", partial, *file);
        FILE *f = fopen(own, "re");
        int empty = !f || !fgets(value, sizeof value, f) || value[0] == '\n';
        if (f) fclose(f);
        if (!empty) continue;
        snprintf(parent, sizeof parent, "%.*s/%s", (int)(strrchr(partial, '/') - partial), partial, *file);
        f = fopen(parent, "re");
        int got = f && fgets(value, sizeof value, f);
        if (f) fclose(f);
        if (!got || write_file(partial, *file, value) != 0) return -1;
      }
    }
    s = e;
  }
  return 0;
}

/* runc 1.1's default device rules (what it adds to a config's "deny all"). */
static const char *const DEVICE_RULES[] = {"c *:* m",   "b *:* m",   "c 1:3 rwm",   "c 1:8 rwm", "c 1:7 rwm",   "c 5:0 rwm",
                                           "c 1:5 rwm", "c 1:9 rwm", "c 136:* rwm", "c 5:2 rwm", "c 10:200 rwm"};

/* Makes and limits the cgroups; on error, a message in err. */
static int setup_cgroups(struct plan *p, char *err, size_t err_len) {
  for (size_t i = 0; i < p->ncgroups; i++) {
    const char *dir = p->cgroups[i], *hier = dir + strlen("/sys/fs/cgroup/");
    char value[64];
    int failed = make_cgroup(dir) != 0;
#define IN(name) (strncmp(hier, name "/", strlen(name) + 1) == 0)
    if (!failed && IN("memory") && p->memory > 0) {
      snprintf(value, sizeof value, "%lld", p->memory);
      failed = write_file(dir, "memory.limit_in_bytes", value) != 0;
      if (!failed && p->swap > 0) {
        snprintf(value, sizeof value, "%lld", p->swap);
        failed = write_file(dir, "memory.memsw.limit_in_bytes", value) != 0;
      }
    }
    if (!failed && IN("pids") && p->pids > 0) {
      snprintf(value, sizeof value, "%lld", p->pids);
      failed = write_file(dir, "pids.max", value) != 0;
    }
    if (!failed && IN("cpu") && p->cpu_period > 0) {
      snprintf(value, sizeof value, "%lld", p->cpu_period);
      failed = write_file(dir, "cpu.cfs_period_us", value) != 0;
    }
    if (!failed && IN("cpu") && p->cpu_quota != -1) {
      snprintf(value, sizeof value, "%lld", p->cpu_quota);
      failed = write_file(dir, "cpu.cfs_quota_us", value) != 0;
    }
    if (!failed && IN("devices")) {
      failed = write_file(dir, "devices.deny", "a") != 0;
      for (size_t r = 0; !failed && r < sizeof DEVICE_RULES / sizeof *DEVICE_RULES; r++)
        failed = write_file(dir, "devices.allow", DEVICE_RULES[r]) != 0;
    }
#undef IN
    if (failed) {
      snprintf(err, err_len, "cgroup %s: %s", dir, strerror(errno));
      return -1;
    }
  }
  return 0;
}

/* ---- seccomp ---- */

static int seccomp_action(const char *name, const struct json *errno_ret, uint32_t *out) {
  int ok = 1;
  unsigned long long ret = errno_ret ? json_u64(errno_ret, &ok) : 1; /* EPERM, runc's default */
  if (!ok || ret > 4095) return 0;
  if (strcmp(name, "SCMP_ACT_ALLOW") == 0) *out = SCMP_ACT_ALLOW;
  else if (strcmp(name, "SCMP_ACT_ERRNO") == 0) *out = SCMP_ACT_ERRNO((uint32_t)ret);
  else if (strcmp(name, "SCMP_ACT_KILL") == 0 || strcmp(name, "SCMP_ACT_KILL_THREAD") == 0) *out = SCMP_ACT_KILL;
  else if (strcmp(name, "SCMP_ACT_KILL_PROCESS") == 0) *out = SCMP_ACT_KILL_PROCESS;
  else if (strcmp(name, "SCMP_ACT_TRAP") == 0) *out = SCMP_ACT_TRAP;
  else if (strcmp(name, "SCMP_ACT_TRACE") == 0) *out = SCMP_ACT_TRACE((uint32_t)ret);
  else if (strcmp(name, "SCMP_ACT_LOG") == 0) *out = SCMP_ACT_LOG;
  else return 0;
  return 1;
}

static int seccomp_op(const char *name, enum scmp_compare *out) {
  static const struct {
    const char *name;
    enum scmp_compare op;
  } ops[] = {{"SCMP_CMP_NE", SCMP_CMP_NE}, {"SCMP_CMP_LT", SCMP_CMP_LT}, {"SCMP_CMP_LE", SCMP_CMP_LE},
             {"SCMP_CMP_EQ", SCMP_CMP_EQ}, {"SCMP_CMP_GE", SCMP_CMP_GE}, {"SCMP_CMP_GT", SCMP_CMP_GT},
             {"SCMP_CMP_MASKED_EQ", SCMP_CMP_MASKED_EQ}};
  for (size_t i = 0; i < sizeof ops / sizeof *ops; i++)
    if (strcmp(ops[i].name, name) == 0) return *out = ops[i].op, 1;
  return 0;
}

/* Compiles the profile to BPF (a malloc'd program); 0 when it has something not handled here. */
static int compile_seccomp(const struct json *profile, struct sock_fprog *prog, unsigned *flags) {
  static const char *const keys[] = {"defaultAction", "defaultErrnoRet", "architectures", "flags", "syscalls", NULL};
  static const char *const rule_keys[] = {"names", "action", "errnoRet", "args", NULL};
  static const char *const arg_keys[] = {"index", "value", "valueTwo", "op", NULL};
  uint32_t fallback;
  if (!only_members(profile, keys) ||
      !seccomp_action(string_of(json_get(profile, "defaultAction")) ?: "", json_get(profile, "defaultErrnoRet"),
                      &fallback))
    return 0;
  const struct json *archs = json_get(profile, "architectures"), *fl = json_get(profile, "flags");
  const struct json *rules = json_get(profile, "syscalls");
  if ((archs && !is_string_array(archs)) || (fl && !is_string_array(fl)) || (rules && rules->type != JSON_ARRAY))
    return 0;
  *flags = 0;
  for (size_t i = 0; fl && i < fl->count; i++) {
    if (strcmp(fl->items[i].text, "SECCOMP_FILTER_FLAG_TSYNC") == 0) *flags |= SECCOMP_FILTER_FLAG_TSYNC;
    else if (strcmp(fl->items[i].text, "SECCOMP_FILTER_FLAG_LOG") == 0) *flags |= SECCOMP_FILTER_FLAG_LOG;
    else if (strcmp(fl->items[i].text, "SECCOMP_FILTER_FLAG_SPEC_ALLOW") == 0) *flags |= SECCOMP_FILTER_FLAG_SPEC_ALLOW;
    else return 0;
  }
  scmp_filter_ctx ctx = seccomp_init(fallback);
  if (!ctx) return 0;
  int ok = 1;
  for (size_t i = 0; ok && archs && i < archs->count; i++) {
    const char *a = archs->items[i].text;
    char lower[32];
    if (strncmp(a, "SCMP_ARCH_", 10) != 0 || strlen(a + 10) >= sizeof lower) ok = 0;
    for (size_t c = 0; ok && c <= strlen(a + 10); c++) lower[c] = (char)(a[10 + c] >= 'A' && a[10 + c] <= 'Z' ? a[10 + c] + 32 : a[10 + c]);
    uint32_t arch = ok ? seccomp_arch_resolve_name(lower) : 0;
    if (!arch) ok = 0;
    else {
      int r = seccomp_arch_add(ctx, arch);
      if (r != 0 && r != -EEXIST) ok = 0;
    }
  }
  for (size_t i = 0; ok && rules && i < rules->count; i++) {
    const struct json *rule = &rules->items[i], *names = json_get(rule, "names"), *args = json_get(rule, "args");
    uint32_t action;
    if (!only_members(rule, rule_keys) || !is_string_array(names) || (args && (args->type != JSON_ARRAY || args->count > 24)) ||
        !seccomp_action(string_of(json_get(rule, "action")) ?: "", json_get(rule, "errnoRet"), &action)) {
      ok = 0;
      break;
    }
    if (action == fallback) continue; /* libseccomp refuses it; a no-op (as runc skips it) */
    struct scmp_arg_cmp conditions[24];
    size_t nconditions = 0, per_index[6] = {0};
    int repeated = 0;
    for (size_t a = 0; ok && args && a < args->count; a++) {
      const struct json *arg = &args->items[a];
      int k1, k2 = 1, k3;
      unsigned long long index = json_u64(json_get(arg, "index"), &k1);
      unsigned long long value = json_u64(json_get(arg, "value"), &k3);
      unsigned long long two = json_get(arg, "valueTwo") ? json_u64(json_get(arg, "valueTwo"), &k2) : 0;
      enum scmp_compare op;
      if (!only_members(arg, arg_keys) || !k1 || index > 5 || !k2 || !k3 ||
          !seccomp_op(string_of(json_get(arg, "op")) ?: "", &op)) {
        ok = 0;
        break;
      }
      repeated |= ++per_index[index] > 1;
      conditions[nconditions++] = (struct scmp_arg_cmp){.arg = (unsigned)index, .op = op, .datum_a = value, .datum_b = two};
    }
    for (size_t n = 0; ok && n < names->count; n++) {
      int nr = seccomp_syscall_resolve_name(names->items[n].text);
      if (nr == __NR_SCMP_ERROR) continue; /* unknown to libseccomp: skipped, as runc does */
      /* runc: when one argument index has several conditions, every condition is a rule of its own (ORed);
       * otherwise they are ANDed in one rule. */
      if (repeated) {
        for (size_t a = 0; ok && a < nconditions; a++)
          if (seccomp_rule_add_array(ctx, action, nr, 1, &conditions[a]) != 0) ok = 0;
      } else if (seccomp_rule_add_array(ctx, action, nr, (unsigned)nconditions, conditions) != 0) {
        ok = 0;
      }
    }
  }
  int fd = ok ? memfd_create("seccomp-bpf", MFD_CLOEXEC) : -1;
  if (fd < 0 || seccomp_export_bpf(ctx, fd) != 0) ok = 0;
  seccomp_release(ctx);
  off_t size = ok ? lseek(fd, 0, SEEK_END) : 0;
  if (size <= 0 || size % (off_t)sizeof(struct sock_filter) || size > BPF_MAXINSNS * (off_t)sizeof(struct sock_filter))
    ok = 0;
  if (ok) {
    prog->filter = malloc((size_t)size);
    prog->len = (unsigned short)(size / (off_t)sizeof(struct sock_filter));
    if (!prog->filter || pread(fd, prog->filter, (size_t)size, 0) != size) ok = 0;
  }
  if (fd >= 0) close(fd);
  return ok;
}

static uint64_t fnv1a(const char *s, size_t n) {
  uint64_t h = 0xcbf29ce484222325ULL;
  for (size_t i = 0; i < n; i++) h = (h ^ (unsigned char)s[i]) * 0x100000001b3ULL;
  return h;
}

/* Where compiled filters are kept: one machine-wide directory (on tmpfs), whatever the state root. */
#define SECCOMP_CACHE "/run/faasd-runc"

/*
 * The filter of the profile: from the cache file SECCOMP_CACHE/seccomp-HASH when it holds exactly this profile's
 * text, else compiled and then cached (when the cache cannot be written, compiled every time). 0: runc's.
 */
static int prepare_seccomp(struct plan *p) {
  const struct json *s = p->seccomp;
  if (!s || s->type == JSON_NULL) return 1;
  char name[64];
  if (mkdir(SECCOMP_CACHE, 0700) != 0 && errno != EEXIST) return compile_seccomp(s, &p->filter, &p->seccomp_flags);
  int cache = open(SECCOMP_CACHE, O_RDONLY | O_DIRECTORY | O_CLOEXEC);
  struct stat st;
  /* Only a directory that root alone can write is trusted with filters. */
  if (cache >= 0 && (fstat(cache, &st) != 0 || st.st_uid != 0 || (st.st_mode & 022))) {
    close(cache);
    cache = -1;
  }
  if (cache < 0) return compile_seccomp(s, &p->filter, &p->seccomp_flags);
  /*
   * A cache file is its key, then the filter: the key is what made the filter (this format and libseccomp's version),
   * the profile's length (8 bytes) and its text; the filter is the flags (4 bytes) and the BPF program.
   */
  const struct scmp_version *v = seccomp_version();
  char made[96];
  int made_len = snprintf(made, sizeof made, "faasd-runc seccomp cache 2, libseccomp %u.%u.%u\n", v->major, v->minor,
                          v->micro);
  uint64_t text_len = s->source_len;
  size_t key_len = (size_t)made_len + 8 + text_len;
  char *key = malloc(key_len);
  if (!key) return close(cache), 0;
  memcpy(key, made, (size_t)made_len);
  memcpy(key + made_len, &text_len, 8);
  memcpy(key + made_len + 8, s->source, text_len);
  snprintf(name, sizeof name, "seccomp-%016llx", (unsigned long long)fnv1a(key, key_len));
  size_t len;
  char *cached = read_file_at(cache, name, 8 * 1024 * 1024, &len);
  size_t program = cached && len > key_len + 4 ? (len - key_len - 4) / sizeof(struct sock_filter) : 0;
  if (program > 0 && program <= BPF_MAXINSNS && len == key_len + 4 + program * sizeof(struct sock_filter) &&
      memcmp(cached, key, key_len) == 0) {
    memcpy(&p->seccomp_flags, cached + key_len, 4);
    p->filter.len = (unsigned short)program;
    p->filter.filter = (struct sock_filter *)(void *)(cached + key_len + 4);
    close(cache);
    return 1;
  }
  free(cached);
  if (!compile_seccomp(s, &p->filter, &p->seccomp_flags)) return close(cache), 0;
  char tmp[96];
  snprintf(tmp, sizeof tmp, "%s.%d", name, getpid());
  int fd = openat(cache, tmp, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0600);
  if (fd < 0) return close(cache), 1; /* not cached: compiled again next time */
  size_t bpf = p->filter.len * sizeof(struct sock_filter);
  int ok = write(fd, key, key_len) == (ssize_t)key_len && write(fd, &p->seccomp_flags, 4) == 4 &&
           write(fd, p->filter.filter, bpf) == (ssize_t)bpf;
  close(fd);
  if (!ok || renameat(cache, tmp, cache, name) != 0) unlinkat(cache, tmp, 0);
  close(cache);
  return 1;
}

/* ---- the child: namespaces, rootfs, process ---- */

/* Result of a step in the child: 0 done, -1 error (message set), -2 runc's (a symlink on a mount's way). */
struct child {
  const struct plan *p;
  int sync;
  char err[1024];
  /* HOME for an env without one, as runc sets it: the user's home in the image's /etc/passwd, else "/". */
  char home[PATH_MAX];
  /* The working directory, opened (O_PATH) in the container. */
  int cwd;
};

/*
 * Opens path in the container (after pivot_root) without following magic links (/proc/self/exe, /proc/self/fd/N…):
 * those are the ways out of the container's root that an image could name as its cwd, its executable or a PATH entry.
 */
static int open_in_container(const char *path, int flags) {
  struct open_how how = {.flags = (uint64_t)(flags | O_CLOEXEC), .resolve = RESOLVE_NO_MAGICLINKS};
  return (int)syscall(SYS_openat2, AT_FDCWD, path, &how, sizeof how);
}

static int child_fail(struct child *c, const char *what, const char *path) {
  snprintf(c->err, sizeof c->err, "%s %s: %s", what, path, strerror(errno));
  return -1;
}

/*
 * Opens (O_PATH) dest under the rootfs (dir fd root), making what is missing (directories; the last element a
 * directory or, with file, an empty file), without following any symlink: -2 when a symlink is on the way.
 */
static int open_in_root(struct child *c, int root, const char *dest, int file) {
  int dir = fcntl(root, F_DUPFD_CLOEXEC, 3);
  for (const char *s = dest + 1; dir >= 0 && *s;) {
    const char *e = strchrnul(s, '/');
    char name[NAME_MAX + 1];
    size_t n = (size_t)(e - s);
    if (n > NAME_MAX) return close(dir), errno = ENAMETOOLONG, child_fail(c, "mount destination", dest);
    memcpy(name, s, n);
    name[n] = 0;
    int last = !*e;
    struct stat st;
    if (fstatat(dir, name, &st, AT_SYMLINK_NOFOLLOW) != 0) {
      if (errno != ENOENT) return close(dir), child_fail(c, "mount destination", dest);
      if (last && file) {
        int f = openat(dir, name, O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC | O_NOFOLLOW, 0644);
        if (f < 0) return close(dir), child_fail(c, "create mount destination", dest);
        close(f);
      } else if (mkdirat(dir, name, 0755) != 0 && errno != EEXIST) {
        return close(dir), child_fail(c, "create mount destination", dest);
      }
    } else if (S_ISLNK(st.st_mode)) {
      close(dir);
      return -2;
    }
    int next = openat(dir, name, O_PATH | O_NOFOLLOW | O_CLOEXEC | (last ? 0 : O_DIRECTORY));
    close(dir);
    if (next < 0) return child_fail(c, "open mount destination", dest);
    dir = next;
    s = *e ? e + 1 : e;
  }
  return dir;
}

static int do_mounts(struct child *c, int root) {
  const struct plan *p = c->p;
  for (size_t i = 0; i < p->nmounts; i++) {
    const struct mount_entry *m = &p->mounts[i];
    struct stat st;
    if (m->bind && stat(m->source, &st) != 0) return child_fail(c, "bind source", m->source);
    int file = m->bind && !S_ISDIR(st.st_mode);
    int dest = open_in_root(c, root, m->destination, file);
    if (dest < 0) return dest;
    char at[64];
    snprintf(at, sizeof at, "/proc/self/fd/%d", dest);
    int r = mount(m->source, at, m->bind ? NULL : m->type, m->flags, m->bind ? NULL : m->data);
    /* A bind mount takes its flags from a remount of the new mount (now on top of the path). */
    if (r == 0 && m->bind && m->remount_flags) {
      int top = open_in_root(c, root, m->destination, file);
      if (top < 0) return close(dest), top;
      snprintf(at, sizeof at, "/proc/self/fd/%d", top);
      r = mount(NULL, at, NULL, MS_BIND | MS_REMOUNT | m->remount_flags, NULL);
      close(top);
    }
    close(dest);
    if (r != 0) return child_fail(c, "mount", m->destination);
  }
  return 0;
}

/* runc's default device nodes and /dev links, in the container's /dev (when it is a tmpfs of the config). */
static int make_devices(struct child *c, int root) {
  static const struct {
    const char *name;
    unsigned major, minor;
  } nodes[] = {{"null", 1, 3}, {"zero", 1, 5}, {"full", 1, 7}, {"random", 1, 8}, {"urandom", 1, 9}, {"tty", 5, 0}};
  static const char *const links[][2] = {{"/proc/self/fd", "fd"},      {"/proc/self/fd/0", "stdin"},
                                         {"/proc/self/fd/1", "stdout"}, {"/proc/self/fd/2", "stderr"},
                                         {"pts/ptmx", "ptmx"}};
  int dev = open_in_root(c, root, "/dev", 0);
  if (dev < 0) return dev;
  char path[64];
  snprintf(path, sizeof path, "/proc/self/fd/%d", dev);
  int d = open(path, O_RDONLY | O_DIRECTORY | O_CLOEXEC);
  close(dev);
  if (d < 0) return child_fail(c, "open", "/dev");
  for (size_t i = 0; i < sizeof nodes / sizeof *nodes; i++) {
    unlinkat(d, nodes[i].name, 0);
    if (mknodat(d, nodes[i].name, S_IFCHR | 0666, makedev(nodes[i].major, nodes[i].minor)) != 0)
      return close(d), child_fail(c, "mknod /dev/", nodes[i].name);
  }
  for (size_t i = 0; i < sizeof links / sizeof *links; i++)
    if (symlinkat(links[i][0], d, links[i][1]) != 0 && errno != EEXIST)
      return close(d), child_fail(c, "symlink /dev/", links[i][1]);
  close(d);
  return 0;
}

/* Remounts the mount at path read-only, keeping its other flags. */
static int remount_readonly(const char *path, int bind_first) {
  if (bind_first && mount(path, path, NULL, MS_BIND | MS_REC, NULL) != 0) return -1;
  struct statvfs sv;
  if (statvfs(path, &sv) != 0) return -1;
  unsigned long keep = (sv.f_flag & ST_NOSUID ? MS_NOSUID : 0) | (sv.f_flag & ST_NODEV ? MS_NODEV : 0) |
                       (sv.f_flag & ST_NOEXEC ? MS_NOEXEC : 0) | (sv.f_flag & ST_NOATIME ? MS_NOATIME : 0) |
                       (sv.f_flag & ST_NODIRATIME ? MS_NODIRATIME : 0) | (sv.f_flag & ST_RELATIME ? MS_RELATIME : 0);
  return mount(NULL, path, NULL, MS_BIND | MS_REMOUNT | MS_RDONLY | keep, NULL);
}

static int paths_after_pivot(struct child *c) {
  const struct plan *p = c->p;
  for (size_t i = 0; p->readonly && i < p->readonly->count; i++) {
    const char *path = p->readonly->items[i].text;
    if (access(path, F_OK) != 0) continue;
    if (remount_readonly(path, 1) != 0) return child_fail(c, "read-only path", path);
  }
  for (size_t i = 0; p->masked && i < p->masked->count; i++) {
    const char *path = p->masked->items[i].text;
    struct stat st;
    if (stat(path, &st) != 0) continue;
    int r = S_ISDIR(st.st_mode) ? mount("tmpfs", path, "tmpfs", MS_RDONLY, NULL)
                                : mount("/dev/null", path, NULL, MS_BIND, NULL);
    if (r != 0) return child_fail(c, "mask", path);
  }
  if (p->readonly_root && remount_readonly("/", 0) != 0) return child_fail(c, "read-only root", "/");
  return 0;
}

static void find_home(struct child *c) {
  snprintf(c->home, sizeof c->home, "/");
  /* Non-blocking and a regular file only: an image's /etc/passwd may be a FIFO or /dev/zero. */
  int fd = open_in_container("/etc/passwd", O_RDONLY | O_NONBLOCK);
  struct stat st;
  if (fd < 0) return;
  if (fstat(fd, &st) != 0 || !S_ISREG(st.st_mode)) {
    close(fd);
    return;
  }
  static char text[1024 * 1024 + 1];
  size_t len = 0;
  for (ssize_t r; len < sizeof text - 1 && (r = read(fd, text + len, sizeof text - 1 - len)) > 0;) len += (size_t)r;
  close(fd);
  text[len] = 0;
  for (char *line = text, *next; line && *line; line = next) {
    next = strchr(line, '\n');
    if (next) *next++ = 0;
    /* name:password:uid:gid:gecos:home:shell */
    char *field[7] = {line}, *s = line;
    int n = 1;
    while (n < 7 && (s = strchr(s, ':'))) *s++ = 0, field[n++] = s;
    char *end;
    if (n < 7 || !*field[2] || strtoul(field[2], &end, 10) != c->p->uid || *end) continue;
    if (*field[5]) snprintf(c->home, sizeof c->home, "%s", field[5]);
    break;
  }
}

/* Whether path (in the container) is a file the process may be: executable, and not this program. */
static int runnable(const struct child *c, const char *path) {
  int fd = open_in_container(path, O_PATH);
  struct stat st;
  int ok = fd >= 0 && fstat(fd, &st) == 0 && S_ISREG(st.st_mode) && (st.st_mode & 0111) &&
           !(st.st_dev == c->p->self_dev && st.st_ino == c->p->self_ino);
  if (fd >= 0) close(fd);
  return ok;
}

/*
 * The executable args[0] names, looked up on the config's PATH as runc does (in the container, as root, relative
 * names from the working directory); never through a magic link, never this program.
 */
static int look_path(struct child *c, char *out, size_t out_len) {
  const char *name = c->p->args->items[0].text, *path = "";
  if (strchr(name, '/')) {
    snprintf(out, out_len, "%s", name);
    if (runnable(c, out)) return 0;
    return child_fail(c, "exec", name);
  }
  for (size_t i = 0; c->p->env && i < c->p->env->count; i++)
    if (strncmp(c->p->env->items[i].text, "PATH=", 5) == 0) path = c->p->env->items[i].text + 5;
  for (const char *s = path;;) {
    const char *e = strchrnul(s, ':');
    int n = (int)(e - s);
    snprintf(out, out_len, "%.*s/%s", n ? n : 1, n ? s : ".", name);
    if (runnable(c, out)) return 0;
    if (!*e) break;
    s = e + 1;
  }
  snprintf(c->err, sizeof c->err, "exec: \"%s\": executable file not found in $PATH", name);
  return -1;
}

/* Opens the working directory (c->cwd), making it first when missing, as runc does, before the root goes read-only. */
static int open_cwd(struct child *c) {
  c->cwd = open_in_container(c->p->cwd, O_PATH | O_DIRECTORY);
  if (c->cwd < 0 && errno == ENOENT) {
    int root = open("/", O_RDONLY | O_DIRECTORY | O_CLOEXEC);
    int made = root >= 0 ? open_in_root(c, root, c->p->cwd, 0) : -1;
    if (root >= 0) close(root);
    if (made < 0) return made == -2 ? -2 : child_fail(c, "create cwd", c->p->cwd);
    close(made);
    c->cwd = open_in_container(c->p->cwd, O_PATH | O_DIRECTORY);
  }
  return c->cwd < 0 ? child_fail(c, "cwd", c->p->cwd) : 0;
}

static int set_identity(struct child *c) {
  const struct plan *p = c->p;
  for (unsigned cap = 0; cap <= 63; cap++)
    if (!(p->caps_bounding & (1ULL << cap)) && prctl(PR_CAPBSET_DROP, cap, 0, 0, 0) != 0 && errno != EINVAL)
      return child_fail(c, "drop capability", cap < NCAPS ? CAP_NAMES[cap] : "?");
  if (prctl(PR_SET_KEEPCAPS, 1, 0, 0, 0) != 0) return child_fail(c, "prctl", "keepcaps");
  if (setgroups(p->ngroups, p->groups) != 0) return child_fail(c, "setgroups", "");
  if (setresgid(p->gid, p->gid, p->gid) != 0) return child_fail(c, "setgid", "");
  if (setresuid(p->uid, p->uid, p->uid) != 0) return child_fail(c, "setuid", "");
  if (prctl(PR_SET_KEEPCAPS, 0, 0, 0, 0) != 0) return child_fail(c, "prctl", "keepcaps");
  struct __user_cap_header_struct header = {.version = _LINUX_CAPABILITY_VERSION_3, .pid = 0};
  struct __user_cap_data_struct data[2] = {
      {.effective = (uint32_t)p->caps_effective, .permitted = (uint32_t)p->caps_permitted, .inheritable = 0},
      {.effective = (uint32_t)(p->caps_effective >> 32), .permitted = (uint32_t)(p->caps_permitted >> 32),
       .inheritable = 0}};
  if (syscall(SYS_capset, &header, data) != 0) return child_fail(c, "capset", "");
  if (prctl(PR_CAP_AMBIENT, PR_CAP_AMBIENT_CLEAR_ALL, 0, 0, 0) != 0) return child_fail(c, "prctl", "ambient");
  if (prctl(PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) != 0) return child_fail(c, "prctl", "no_new_privs");
  return 0;
}

/* Brings up the loopback interface of the new network namespace, as runc does for one without a path. */
static int loopback_up(struct child *c) {
  int fd = socket(AF_INET, SOCK_DGRAM | SOCK_CLOEXEC, 0);
  struct ifreq ifr = {0};
  snprintf(ifr.ifr_name, sizeof ifr.ifr_name, "lo");
  int ok = fd >= 0 && ioctl(fd, SIOCGIFFLAGS, &ifr) == 0;
  if (ok) {
    ifr.ifr_flags |= IFF_UP;
    ok = ioctl(fd, SIOCSIFFLAGS, &ifr) == 0;
  }
  if (fd >= 0) close(fd);
  return ok ? 0 : child_fail(c, "bring up", "lo");
}

/* Builds the container in the child; returns the step result (see struct child). */
static int setup_child(struct child *c, char *exe, size_t exe_len) {
  const struct plan *p = c->p;
  if (loopback_up(c) != 0) return -1;
  if (mount(NULL, "/", NULL, MS_REC | MS_SLAVE, NULL) != 0) return child_fail(c, "make / slave", "");
  if (mount(p->rootfs, p->rootfs, NULL, MS_BIND | MS_REC, NULL) != 0) return child_fail(c, "bind rootfs", p->rootfs);
  int root = open(p->rootfs, O_RDONLY | O_DIRECTORY | O_CLOEXEC);
  if (root < 0) return child_fail(c, "open rootfs", p->rootfs);
  int r = do_mounts(c, root);
  if (r == 0) r = make_devices(c, root);
  if (r != 0) return r;
  int old = open("/", O_RDONLY | O_DIRECTORY | O_CLOEXEC);
  if (old < 0 || fchdir(root) != 0 || syscall(SYS_pivot_root, ".", ".") != 0)
    return child_fail(c, "pivot_root", p->rootfs);
  /* The old root is now stacked on "."; detach it without telling the host. */
  if (fchdir(old) != 0 || mount(NULL, ".", NULL, MS_SLAVE | MS_REC, NULL) != 0 || umount2(".", MNT_DETACH) != 0 || chdir("/") != 0)
    return child_fail(c, "detach old root", "");
  close(old);
  close(root);
  if ((r = open_cwd(c)) != 0) return r;
  if ((r = paths_after_pivot(c)) != 0) return r;
  if (p->hostname && sethostname(p->hostname, strlen(p->hostname)) != 0) return child_fail(c, "sethostname", "");
  if (p->new_keyring && syscall(SYS_keyctl, 1 /* KEYCTL_JOIN_SESSION_KEYRING */, NULL) < 0)
    return child_fail(c, "join session keyring", "");
  for (int i = 0; i < RLIM_NLIMITS; i++)
    if (p->rlimit_set[i] && setrlimit(i, &p->rlimits[i]) != 0) return child_fail(c, "setrlimit", RLIMIT_NAMES[i]);
  if (fchdir(c->cwd) != 0) return child_fail(c, "chdir", p->cwd);
  close(c->cwd);
  find_home(c);
  if ((r = look_path(c, exe, exe_len)) != 0) return r;
  return set_identity(c);
}

/* Closes every descriptor from first up, with close_range or, on kernels without it, one by one. */
static void close_from(int first) {
  if (syscall(SYS_close_range, (unsigned)first, ~0U, 0) == 0) return;
  struct rlimit r;
  int last = getrlimit(RLIMIT_NOFILE, &r) == 0 && r.rlim_cur < 1 << 20 ? (int)r.rlim_cur : 1 << 20;
  for (int fd = first; fd < last; fd++) close(fd);
}

_Noreturn static void child_main(struct child *c, int fifo) {
  const struct plan *p = c->p;
  /* Only stdio, the report socket and the exec FIFO stay: the state root and directory this program opened are host
   * directories that the image could reach through /proc/self/fd (runc's CVE-2024-21626). */
  int a = fcntl(c->sync, F_DUPFD_CLOEXEC, 10), b = fcntl(fifo, F_DUPFD_CLOEXEC, 10);
  if (a < 0 || b < 0 || dup3(a, 3, O_CLOEXEC) != 3 || dup3(b, 4, O_CLOEXEC) != 4) _exit(1);
  close_from(5);
  c->sync = 3;
  fifo = 4;
  sigset_t all;
  sigemptyset(&all);
  sigprocmask(SIG_SETMASK, &all, NULL);
  for (int s = 1; s < NSIG; s++)
    if (s != SIGKILL && s != SIGSTOP) signal(s, SIG_DFL);
  umask(0);
  char exe[PATH_MAX];
  int r = setup_child(c, exe, sizeof exe);
  umask(022);
  const char *msg = r == -2 ? FALLBACK : r != 0 ? c->err : "";
  if (send(c->sync, msg, strlen(msg) + 1, MSG_NOSIGNAL) < 0 || r != 0) _exit(1);
  close(c->sync);
  /* Blocks until `start` opens the other end. */
  char at[64];
  snprintf(at, sizeof at, "/proc/self/fd/%d", fifo);
  int w = open(at, O_WRONLY | O_CLOEXEC);
  if (w < 0 || write(w, "0", 1) != 1) _exit(1);
  close(w);
  close(fifo);
  if (p->filter.filter && syscall(SYS_seccomp, SECCOMP_SET_MODE_FILTER, p->seccomp_flags, &p->filter) != 0) {
    fprintf(stderr, "faasd-runc: load seccomp filter: %s\n", strerror(errno));
    _exit(1);
  }
  size_t nenv = p->env ? p->env->count : 0, home = 0;
  char **argv = calloc(p->args->count + 1, sizeof *argv), **envp = calloc(nenv + 2, sizeof *envp);
  if (!argv || !envp) _exit(1);
  for (size_t i = 0; i < p->args->count; i++) argv[i] = p->args->items[i].text;
  for (size_t i = 0; i < nenv; i++) {
    envp[i] = p->env->items[i].text;
    home |= strncmp(envp[i], "HOME=", 5) == 0;
  }
  char home_entry[PATH_MAX + 8];
  snprintf(home_entry, sizeof home_entry, "HOME=%s", c->home);
  if (!home) envp[nenv] = home_entry;
  execve(exe, argv, envp);
  fprintf(stderr, "faasd-runc: exec %s: %s\n", exe, strerror(errno));
  _exit(127);
}

/* ---- the parent ---- */

static void json_string(FILE *f, const char *s) {
  fputc('"', f);
  for (; *s; s++) {
    unsigned char ch = (unsigned char)*s;
    if (ch == '"' || ch == '\\') fprintf(f, "\\%c", ch);
    else if (ch < 0x20) fprintf(f, "\\u%04x", ch);
    else fputc(ch, f);
  }
  fputc('"', f);
}

static int write_state(int dir, const struct plan *p, pid_t pid, long long start) {
  FILE *f;
  int fd = openat(dir, OWN_STATE ".tmp", O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0600);
  if (fd < 0 || !(f = fdopen(fd, "w"))) return -1;
  char created[64];
  struct timespec now;
  clock_gettime(CLOCK_REALTIME, &now);
  strftime(created, sizeof created, "%Y-%m-%dT%H:%M:%S", gmtime(&now.tv_sec));
  fprintf(f, "{\"id\":");
  json_string(f, p->id);
  fprintf(f, ",\"pid\":%d,\"start\":%lld,\"bundle\":", pid, start);
  json_string(f, p->bundle);
  fprintf(f, ",\"rootfs\":");
  json_string(f, p->rootfs);
  fprintf(f, ",\"created\":\"%s.%09ldZ\",\"cgroups\":[", created, now.tv_nsec);
  for (size_t i = 0; i < p->ncgroups; i++) {
    if (i) fputc(',', f);
    json_string(f, p->cgroups[i]);
  }
  fprintf(f, "]}\n");
  int ok = fflush(f) == 0;
  ok = fclose(f) == 0 && ok;
  return ok && renameat(dir, OWN_STATE ".tmp", dir, OWN_STATE) == 0 ? 0 : -1;
}

static int write_pid_file(const char *path, pid_t pid) {
  char tmp[PATH_MAX];
  if (snprintf(tmp, sizeof tmp, "%s.tmp", path) >= (int)sizeof tmp) return -1;
  int fd = open(tmp, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
  if (fd < 0) return -1;
  char text[32];
  int n = snprintf(text, sizeof text, "%d", pid);
  int ok = write(fd, text, (size_t)n) == n;
  ok = close(fd) == 0 && ok;
  return ok && rename(tmp, path) == 0 ? 0 : -1;
}

/* Moves this process into the cgroup directories dirs; on error, a message in err. */
static int join(const struct plan *p, char (*dirs)[PATH_MAX], char *err, size_t err_len) {
  char pid[32];
  snprintf(pid, sizeof pid, "%d", getpid());
  for (size_t k = 0; k < p->ncgroups; k++) {
    if (write_file(dirs[k], "cgroup.procs", pid) != 0) {
      snprintf(err, err_len, "join cgroup %s: %s", dirs[k], strerror(errno));
      return -1;
    }
  }
  return 0;
}

/* Undoes a create that failed: this process back in its own cgroups, the child, the cgroups, the state directory. */
static void undo(int root, struct plan *p, pid_t child) {
  char ignored[256];
  join(p, p->origin, ignored, sizeof ignored);
  if (child > 0) {
    kill(child, SIGKILL);
    waitpid(child, NULL, 0);
  }
  for (size_t i = 0; i < p->ncgroups; i++) remove_cgroup(p->cgroups[i]);
  int dir = openat(root, p->id, O_RDONLY | O_DIRECTORY | O_CLOEXEC);
  if (dir >= 0) {
    unlinkat(dir, "exec.fifo", 0);
    unlinkat(dir, OWN_STATE, 0);
    unlinkat(dir, OWN_STATE ".tmp", 0);
    close(dir);
  }
  unlinkat(root, p->id, AT_REMOVEDIR);
}

void create(const struct globals *g, int argc, char **argv) {
  static struct plan plan;
  struct plan *p = &plan;
  p->new_keyring = 1;
  /* create --bundle B --pid-file P [--no-new-keyring] ID, flags in any order; anything else is runc's. */
  int i = 1;
  for (; i < argc - 1; i++) {
    if (strcmp(argv[i], "--bundle") == 0 && i + 1 < argc - 1) p->bundle = argv[++i];
    else if (strcmp(argv[i], "--pid-file") == 0 && i + 1 < argc - 1) p->pid_file = argv[++i];
    else if (strcmp(argv[i], "--no-new-keyring") == 0) p->new_keyring = 0;
    else return;
  }
  p->id = argv[argc - 1];
  struct stat self;
  if (stat("/proc/self/exe", &self) != 0) return;
  p->self_dev = self.st_dev;
  p->self_ino = self.st_ino;
  if (!plain_id(p->id) || i != argc - 1 || !p->bundle || !p->pid_file || p->bundle[0] != '/' || p->pid_file[0] != '/') return;
  int bundle = open(p->bundle, O_RDONLY | O_DIRECTORY | O_CLOEXEC);
  if (bundle < 0) return;
  size_t len;
  char *text = read_file_at(bundle, "config.json", CONFIG_MAX, &len), err[1024];
  close(bundle);
  struct json *config = text ? json_parse(text, len, err, sizeof err) : NULL;
  if (!config || !plan_config(config, p) || !plan_cgroups(p)) return;
  if (mkdir(g->root, 0700) != 0 && errno != EEXIST) return;
  int root = open(g->root, O_RDONLY | O_DIRECTORY | O_CLOEXEC);
  if (root < 0 || !prepare_seccomp(p)) return;

  /* From here on the container is this program's: errors are reported, not handed to runc. */
  if (mkdirat(root, p->id, 0711) != 0) {
    if (errno == EEXIST) die(g, "container with id exists: %s", p->id);
    die(g, "create state directory: %s", strerror(errno));
  }
  int dir = openat(root, p->id, O_RDONLY | O_DIRECTORY | O_CLOEXEC), fifo = -1, sync[2] = {-1, -1};
  pid_t child = -1;
  const char *failure = NULL;
  /* 0622 whatever the umask: the init opens it for writing after it has taken the process's ids. */
  if (dir < 0 || mkfifoat(dir, "exec.fifo", 0622) != 0 || fchmodat(dir, "exec.fifo", 0622, 0) != 0)
    failure = "exec fifo";
  else if ((fifo = openat(dir, "exec.fifo", O_PATH | O_CLOEXEC)) < 0) failure = "open exec fifo";
  else if (setup_cgroups(p, err, sizeof err) != 0) failure = err;
  else if (socketpair(AF_UNIX, SOCK_SEQPACKET | SOCK_CLOEXEC, 0, sync) != 0) failure = "socketpair";
  /* The init is cloned inside the container's cgroups, so that its creation counts against their limits (a full
   * pids cgroup refuses it, as it refuses runc's init); moving a process in is not limited. */
  else if (join(p, p->cgroups, err, sizeof err) != 0) failure = err;
  if (failure) {
    int saved = errno;
    undo(root, p, -1);
    if (failure == err) die(g, "%s", err);
    die(g, "%s: %s", failure, strerror(saved));
  }
  child = (pid_t)syscall(SYS_clone, CLONE_NEWPID | CLONE_NEWNS | CLONE_NEWNET | CLONE_NEWIPC | CLONE_NEWUTS | SIGCHLD,
                         NULL, NULL, NULL, NULL);
  if (child < 0) {
    int saved = errno;
    undo(root, p, -1);
    die(g, "clone: %s", strerror(saved));
  }
  if (child == 0) {
    close(sync[0]);
    struct child c = {.p = p, .sync = sync[1]};
    child_main(&c, fifo);
  }
  close(sync[1]);
  /* The state first: should this program be killed while the init sets up, `delete --force` finds and ends it. */
  long long start = process_start(child);
  if (start < 0 || write_state(dir, p, child, start) != 0) {
    int saved = errno;
    undo(root, p, child);
    die(g, "write state: %s", strerror(saved));
  }
  char msg[1024 + 1] = "";
  struct pollfd report = {.fd = sync[0], .events = POLLIN};
  int ready;
  while ((ready = poll(&report, 1, SETUP_TIMEOUT_MS)) < 0 && errno == EINTR) {}
  ssize_t n = ready > 0 ? recv(sync[0], msg, sizeof msg - 1, 0) : -1;
  if (ready == 0) {
    undo(root, p, child);
    die(g, "runc create failed: the container's init did not finish its setup within %d s", SETUP_TIMEOUT_MS / 1000);
  }
  if (n > 0 && strcmp(msg, FALLBACK) == 0) {
    /* A symlink on a mount's way: runc resolves those in the rootfs; nothing of this attempt is left. */
    undo(root, p, child);
    return;
  }
  if (n <= 0 || msg[0]) {
    undo(root, p, child);
    die(g, "runc create failed: unable to start container process: %s",
        n > 0 ? msg : "the container's init exited during setup");
  }
  if (write_pid_file(p->pid_file, child) != 0) {
    int saved = errno;
    undo(root, p, child);
    die(g, "write state: %s", strerror(saved));
  }
  exit(0);
}
