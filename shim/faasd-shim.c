/*
 * faasd-shim: containerd's runc v2 shim, without the Go process starts containerd 1.6 makes for nothing.
 *
 * faasd names this program as its containers' runtime (containerd accepts an absolute path). It answers two calls
 * itself when it can tell exactly what the real shim would answer; every other call, and these whenever anything is
 * unusual, is the real shim (containerd-shim-runc-v2 from PATH, exec'd with the same arguments).
 *
 * "delete": containerd 1.6 runs "<shim> ... -id ID -bundle B delete" after every task delete, not only after a shim
 * died: its ttrpc client's on-close hook calls the dead-shim clean-up, which execs the shim binary, which execs
 * "runc delete --force". Two Go programs start for nothing on every container (about 60 ms of CPU on a small host).
 * When runc no longer knows the container (its state directory is gone) and the bundle's rootfs is not mounted, there
 * is nothing to clean up: it answers what the real shim would (the init pid, exit status 128 + SIGKILL, the time).
 *
 * "start": containerd execs "<shim> -namespace NS -address ADDR -publish-binary BIN -id ID start" for every task,
 * in the bundle. faasd's containers of one function share a shim (OCI annotation io.containerd.runc.v2.group), and
 * for a task joining a group the real shim only works out the group's socket, sees a shim listening there, writes
 * the bundle's "address" file and prints the address. It does the same: the group is the first of the annotations
 * io.containerd.runc.v2.group, io.kubernetes.cri.sandbox-id in config.json; the socket is
 * /run/containerd/s/<hex sha256 of ADDR/NS/GROUP>; when a connect() to it succeeds, "address" is written atomically
 * (".address" created exclusively and synced, then renamed) and "unix://<socket>" printed. A spec that is not plain
 * JSON, an escaped or non-ASCII group, a path Go's filepath.Join would clean, a socket that does not answer: the real
 * shim (which starts a new shim when that is what is needed). FAASD_SHIM_NO_FAST_START=1 in the environment (it
 * inherits containerd's) turns this off, to compare.
 *
 * Assumes containerd's default state directory /run/containerd (shim sockets under /run/containerd/s) and runc's
 * default state root /run/containerd/runc (faasd sets no other in the runc options).
 */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <time.h>
#include <unistd.h>

#define REAL_SHIM "containerd-shim-runc-v2"
#define RUNC_ROOT "/run/containerd/runc"
#define SOCKET_DIR "/run/containerd/s"
/* Larger specs go to the real shim; faasd's are a few KiB. */
#define CONFIG_MAX (256 * 1024)
/* Deeper JSON goes to the real shim; an OCI spec nests about 5 levels. */
#define JSON_MAX_DEPTH 64

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

/* ---- SHA-256 (FIPS 180-4), one-shot ---- */

static const uint32_t sha256_k[64] = {
    0x428a2f98, 0x71374491, 0xb5c0fbcf, 0xe9b5dba5, 0x3956c25b, 0x59f111f1, 0x923f82a4, 0xab1c5ed5,
    0xd807aa98, 0x12835b01, 0x243185be, 0x550c7dc3, 0x72be5d74, 0x80deb1fe, 0x9bdc06a7, 0xc19bf174,
    0xe49b69c1, 0xefbe4786, 0x0fc19dc6, 0x240ca1cc, 0x2de92c6f, 0x4a7484aa, 0x5cb0a9dc, 0x76f988da,
    0x983e5152, 0xa831c66d, 0xb00327c8, 0xbf597fc7, 0xc6e00bf3, 0xd5a79147, 0x06ca6351, 0x14292967,
    0x27b70a85, 0x2e1b2138, 0x4d2c6dfc, 0x53380d13, 0x650a7354, 0x766a0abb, 0x81c2c92e, 0x92722c85,
    0xa2bfe8a1, 0xa81a664b, 0xc24b8b70, 0xc76c51a3, 0xd192e819, 0xd6990624, 0xf40e3585, 0x106aa070,
    0x19a4c116, 0x1e376c08, 0x2748774c, 0x34b0bcb5, 0x391c0cb3, 0x4ed8aa4a, 0x5b9cca4f, 0x682e6ff3,
    0x748f82ee, 0x78a5636f, 0x84c87814, 0x8cc70208, 0x90befffa, 0xa4506ceb, 0xbef9a3f7, 0xc67178f2,
};

static uint32_t ror(uint32_t x, int n) { return x >> n | x << (32 - n); }

static void sha256_block(uint32_t h[8], const uint8_t *b) {
  uint32_t w[64];
  for (int i = 0; i < 16; i++)
    w[i] = (uint32_t)b[4 * i] << 24 | (uint32_t)b[4 * i + 1] << 16 | (uint32_t)b[4 * i + 2] << 8 | b[4 * i + 3];
  for (int i = 16; i < 64; i++) {
    uint32_t s0 = ror(w[i - 15], 7) ^ ror(w[i - 15], 18) ^ w[i - 15] >> 3;
    uint32_t s1 = ror(w[i - 2], 17) ^ ror(w[i - 2], 19) ^ w[i - 2] >> 10;
    w[i] = w[i - 16] + s0 + w[i - 7] + s1;
  }
  uint32_t a = h[0], bb = h[1], c = h[2], d = h[3], e = h[4], f = h[5], g = h[6], hh = h[7];
  for (int i = 0; i < 64; i++) {
    uint32_t t1 = hh + (ror(e, 6) ^ ror(e, 11) ^ ror(e, 25)) + ((e & f) ^ (~e & g)) + sha256_k[i] + w[i];
    uint32_t t2 = (ror(a, 2) ^ ror(a, 13) ^ ror(a, 22)) + ((a & bb) ^ (a & c) ^ (bb & c));
    hh = g, g = f, f = e, e = d + t1, d = c, c = bb, bb = a, a = t1 + t2;
  }
  h[0] += a, h[1] += bb, h[2] += c, h[3] += d, h[4] += e, h[5] += f, h[6] += g, h[7] += hh;
}

/* The digest of data[0..n) as 64 lower-case hex digits and a NUL, as Go's fmt "%x" prints it. */
static void sha256_hex(const void *data, size_t n, char hex[65]) {
  uint32_t h[8] = {0x6a09e667, 0xbb67ae85, 0x3c6ef372, 0xa54ff53a, 0x510e527f, 0x9b05688c, 0x1f83d9ab, 0x5be0cd19};
  const uint8_t *p = data;
  size_t done = 0;
  for (; n - done >= 64; done += 64) sha256_block(h, p + done);
  /* The rest, 0x80, zeros, and the length in bits (big-endian) fill one or two last blocks. */
  uint8_t tail[128] = {0};
  size_t rest = n - done, last = rest + 1 + 8 <= 64 ? 64 : 128;
  memcpy(tail, p + done, rest);
  tail[rest] = 0x80;
  for (int i = 0; i < 8; i++) tail[last - 1 - i] = (uint8_t)((uint64_t)n * 8 >> 8 * i);
  for (size_t off = 0; off < last; off += 64) sha256_block(h, tail + off);
  for (int i = 0; i < 32; i++) {
    uint8_t byte = (uint8_t)(h[i / 4] >> (24 - 8 * (i % 4)));
    hex[2 * i] = "0123456789abcdef"[byte >> 4];
    hex[2 * i + 1] = "0123456789abcdef"[byte & 15];
  }
  hex[64] = 0;
}

/* ---- JSON, just enough to find the group annotation; each function returns 0 for "ask the real shim" ---- */

struct json {
  const char *p, *end;
};

/* One string token; *s and *n give its bytes between the quotes as written, *escaped whether any is an escape. */
struct token {
  const char *s;
  size_t n;
  int escaped;
};

static void json_space(struct json *j) {
  while (j->p < j->end && (*j->p == ' ' || *j->p == '\t' || *j->p == '\n' || *j->p == '\r')) j->p++;
}

static int json_peek(struct json *j, char c) {
  json_space(j);
  return j->p < j->end && *j->p == c;
}

static int json_string(struct json *j, struct token *t) {
  if (!json_peek(j, '"')) return 0;
  t->s = ++j->p;
  t->escaped = 0;
  for (; j->p < j->end; j->p++) {
    unsigned char c = (unsigned char)*j->p;
    if (c == '"') {
      t->n = (size_t)(j->p++ - t->s);
      return 1;
    }
    if (c < 0x20) return 0;
    if (c != '\\') continue;
    t->escaped = 1;
    if (++j->p == j->end) return 0;
    if (*j->p == 'u') {
      for (int i = 0; i < 4; i++)
        if (++j->p == j->end || !strchr("0123456789abcdefABCDEF", *j->p) || !*j->p) return 0;
    } else if (!*j->p || !strchr("\"\\/bfnrt", *j->p)) {
      return 0;
    }
  }
  return 0;
}

static int json_digits(struct json *j) {
  const char *from = j->p;
  while (j->p < j->end && *j->p >= '0' && *j->p <= '9') j->p++;
  return j->p > from;
}

static int json_number(struct json *j) {
  if (j->p < j->end && *j->p == '-') j->p++;
  if (j->p < j->end && *j->p == '0') j->p++;
  else if (!json_digits(j)) return 0;
  if (j->p < j->end && *j->p == '.' && (j->p++, !json_digits(j))) return 0;
  if (j->p < j->end && (*j->p == 'e' || *j->p == 'E')) {
    j->p++;
    if (j->p < j->end && (*j->p == '+' || *j->p == '-')) j->p++;
    if (!json_digits(j)) return 0;
  }
  return 1;
}

static int json_word(struct json *j, const char *word) {
  size_t n = strlen(word);
  if ((size_t)(j->end - j->p) < n || memcmp(j->p, word, n) != 0) return 0;
  j->p += n;
  return 1;
}

/* Called with j after a member's colon; consumes the member's value. */
typedef int json_member(struct json *j, const struct token *key, int depth, void *ctx);

static int json_value(struct json *j, int depth);

/* An object's members, each passed to member(); j is at its '{'. */
static int json_object(struct json *j, int depth, json_member *member, void *ctx) {
  if (depth > JSON_MAX_DEPTH || !json_peek(j, '{')) return 0;
  j->p++;
  if (json_peek(j, '}')) return j->p++, 1;
  for (;;) {
    struct token key;
    if (!json_string(j, &key) || !json_peek(j, ':')) return 0;
    j->p++;
    if (!member(j, &key, depth, ctx)) return 0;
    if (json_peek(j, '}')) return j->p++, 1;
    if (!json_peek(j, ',')) return 0;
    j->p++;
  }
}

static int json_skip_member(struct json *j, const struct token *key, int depth, void *ctx) {
  (void)key, (void)ctx;
  return json_value(j, depth + 1);
}

static int json_value(struct json *j, int depth) {
  struct token t;
  if (depth > JSON_MAX_DEPTH) return 0;
  json_space(j);
  if (j->p == j->end) return 0;
  switch (*j->p) {
  case '{':
    return json_object(j, depth, json_skip_member, NULL);
  case '[':
    j->p++;
    if (json_peek(j, ']')) return j->p++, 1;
    for (;;) {
      if (!json_value(j, depth + 1)) return 0;
      if (json_peek(j, ']')) return j->p++, 1;
      if (!json_peek(j, ',')) return 0;
      j->p++;
    }
  case '"':
    return json_string(j, &t);
  case 't':
    return json_word(j, "true");
  case 'f':
    return json_word(j, "false");
  case 'n':
    return json_word(j, "null");
  default:
    return json_number(j);
  }
}

/* The annotations containerd's runc shim groups by, in the order it looks for them (manager_linux.go groupLabels). */
static const char *const group_labels[] = {"io.containerd.runc.v2.group", "io.kubernetes.cri.sandbox-id"};
#define GROUP_LABELS (sizeof group_labels / sizeof group_labels[0])

struct spec {
  int annotations; /* seen */
  int found[GROUP_LABELS];
  struct token label[GROUP_LABELS];
};

static int token_is(const struct token *t, const char *s) { return t->n == strlen(s) && memcmp(t->s, s, t->n) == 0; }

/* A member of "annotations": Go decodes them into map[string]string, so any value but a string fails the spec. */
static int annotation_member(struct json *j, const struct token *key, int depth, void *ctx) {
  (void)depth;
  struct spec *spec = ctx;
  struct token value;
  if (key->escaped || !json_string(j, &value)) return 0; /* an escaped key might spell a label */
  for (size_t i = 0; i < GROUP_LABELS; i++) {
    if (!token_is(key, group_labels[i])) continue;
    if (spec->found[i]) return 0; /* duplicate: Go keeps the last; not worth following */
    spec->found[i] = 1;
    spec->label[i] = value;
  }
  return 1;
}

/* A top-level member. Go matches "annotations" case-insensitively (Unicode folding too): anything like it but not it
 * is left to the real shim, and so is a repeated one (Go would merge them). */
static int spec_member(struct json *j, const struct token *key, int depth, void *ctx) {
  struct spec *spec = ctx;
  if (key->escaped) return 0;
  for (size_t i = 0; i < key->n; i++)
    if ((unsigned char)key->s[i] >= 0x80) return 0;
  if (key->n != strlen("annotations") || strncasecmp(key->s, "annotations", key->n) != 0)
    return json_value(j, depth + 1);
  if (!token_is(key, "annotations") || spec->annotations) return 0;
  spec->annotations = 1;
  return json_object(j, depth + 1, annotation_member, spec); /* null (no annotations) is the real shim's too */
}

/* Reads the bundle's config.json and copies its group annotation into group (NUL-terminated); 0 when there is none,
 * or it is not plain printable ASCII, or the file is not what Go would read the same way. */
static int spec_group(char *group, size_t size) {
  static char buf[CONFIG_MAX];
  int fd = open("config.json", O_RDONLY | O_CLOEXEC);
  if (fd < 0) return 0;
  size_t n = 0;
  for (;;) {
    ssize_t r = read(fd, buf + n, sizeof buf - n);
    if (r < 0 && errno == EINTR) continue;
    if (r <= 0) {
      close(fd);
      if (r < 0) return 0;
      break;
    }
    n += (size_t)r;
    if (n == sizeof buf) { /* too big to be faasd's */
      close(fd);
      return 0;
    }
  }
  struct json j = {buf, buf + n};
  struct spec spec = {0};
  if (!json_object(&j, 0, spec_member, &spec)) return 0;
  json_space(&j);
  if (j.p != j.end) return 0;
  for (size_t i = 0; i < GROUP_LABELS; i++) {
    if (!spec.found[i]) continue;
    const struct token *t = &spec.label[i];
    if (t->escaped || t->n >= size) return 0;
    for (size_t k = 0; k < t->n; k++)
      if ((unsigned char)t->s[k] < 0x20 || (unsigned char)t->s[k] > 0x7e) return 0;
    memcpy(group, t->s, t->n);
    group[t->n] = 0;
    return 1;
  }
  return 0;
}

/* containerd's identifiers.Validate: [A-Za-z0-9]+ joined by single '.', '_' or '-', at most 76 characters. */
static int identifier(const char *s) {
  size_t n = strlen(s);
  if (n == 0 || n > 76) return 0;
  for (size_t i = 0; i < n; i++) {
    int alnum = (s[i] >= 'a' && s[i] <= 'z') || (s[i] >= 'A' && s[i] <= 'Z') || (s[i] >= '0' && s[i] <= '9');
    if (alnum) continue;
    if (!strchr("._-", s[i]) || i == 0 || i == n - 1 || strchr("._-", s[i + 1])) return 0;
  }
  return 1;
}

/* Whether Go's filepath.Clean would leave the absolute path s as it is: no empty, "." or ".." element, no trailing
 * slash. Then filepath.Join of its (non-empty) parts is the parts joined with '/'. */
static int clean_absolute(const char *s) {
  if (*s != '/') return 0;
  for (const char *e = s + 1;; e = strchr(e, '/') + 1) {
    size_t len = strcspn(e, "/");
    if (len == 0 || (len == 1 && e[0] == '.') || (len == 2 && e[0] == '.' && e[1] == '.')) return 0;
    if (!e[len]) return 1;
  }
}

/* Whether a shim accepts connections at path now (shim.CanConnect; a full backlog counts as no, as there). */
static int can_connect(const char *path) {
  struct sockaddr_un sa = {.sun_family = AF_UNIX};
  if (strlen(path) >= sizeof sa.sun_path) return 0;
  strcpy(sa.sun_path, path);
  int fd = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC | SOCK_NONBLOCK, 0);
  if (fd < 0) return 0;
  int r;
  do r = connect(fd, (struct sockaddr *)&sa, sizeof sa);
  while (r < 0 && errno == EINTR);
  close(fd);
  return r == 0;
}

/* shim.WriteAddress: ".address" created exclusively, written with O_SYNC, renamed over "address". */
static int write_address(const char *address) {
  int fd = open(".address", O_RDWR | O_CREAT | O_EXCL | O_SYNC | O_CLOEXEC, 0666);
  if (fd < 0) return 0;
  size_t n = strlen(address), off = 0;
  while (off < n) {
    ssize_t w = write(fd, address + off, n - off);
    if (w < 0 && errno == EINTR) continue;
    if (w <= 0) break;
    off += (size_t)w;
  }
  if (close(fd) != 0 || off < n || rename(".address", "address") != 0) {
    unlink(".address"); /* else the real shim's own attempt would fail on it */
    return 0;
  }
  return 1;
}

/* Answers a start that joins a running group shim; returns only when the real shim must answer. Takes only the
 * argument shape containerd uses: flags with their values, "-debug", then "start". */
static void start_in_group(int argc, char **argv) {
  const char *skip = getenv("FAASD_SHIM_NO_FAST_START");
  if (skip && *skip) return;
  const char *ns = NULL, *address = NULL, *id = NULL;
  for (int i = 1; i < argc - 1; i++) {
    const char *flag = argv[i], *value = i + 2 < argc ? argv[i + 1] : NULL;
    if (strcmp(flag, "-debug") == 0) continue;
    if (!value) return;
    if (strcmp(flag, "-namespace") == 0) ns = value;
    else if (strcmp(flag, "-address") == 0) address = value;
    else if (strcmp(flag, "-id") == 0) id = value;
    else if (strcmp(flag, "-publish-binary") != 0 && strcmp(flag, "-bundle") != 0) return;
    i++;
  }
  if (!ns || !address || !id || !identifier(ns)) return;
  char group[1024], joined[4096], hex[65], socket_path[sizeof SOCKET_DIR + 65], out[sizeof socket_path + 7];
  if (!spec_group(group, sizeof group)) return;
  int n = snprintf(joined, sizeof joined, "%s/%s/%s", address, ns, group);
  if (n < 0 || n >= (int)sizeof joined || !clean_absolute(joined)) return;
  sha256_hex(joined, (size_t)n, hex);
  snprintf(socket_path, sizeof socket_path, "%s/%s", SOCKET_DIR, hex);
  snprintf(out, sizeof out, "unix://%s", socket_path);
  if (!can_connect(socket_path) || !write_address(out)) return;
  /* containerd reads the address from the combined output, trimmed; the real shim prints it without a newline. */
  size_t len = strlen(out), off = 0;
  while (off < len) {
    ssize_t w = write(1, out + off, len - off);
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
  if (argc > 1 && strcmp(argv[argc - 1], "start") == 0) start_in_group(argc, argv);
  argv[0] = REAL_SHIM;
  execvp(REAL_SHIM, argv);
  fprintf(stderr, "faasd-shim: cannot run %s: %s\n", REAL_SHIM, strerror(errno));
  return 127;
}
