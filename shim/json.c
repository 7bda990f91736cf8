/* See json.h. */
#define _GNU_SOURCE
#include "json.h"

#include <errno.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define MAX_DEPTH 64

struct parser {
  const char *p, *end;
  char *err;
  size_t err_len;
};

/* A bump allocator: the tree of a 40 KiB config is thousands of small pieces, all freed at exit. */
static void *xcalloc(size_t n, size_t size) {
  static char *chunk;
  static size_t left;
  size_t bytes = (n ? n : 1) * size;
  bytes = (bytes + 15) & ~(size_t)15;
  if (bytes > left) {
    size_t want = bytes > 256 * 1024 ? bytes : 256 * 1024;
    chunk = calloc(1, want);
    if (!chunk) {
      fprintf(stderr, "faasd-runc: out of memory\n");
      exit(1);
    }
    left = want;
  }
  void *m = chunk;
  chunk += bytes;
  left -= bytes;
  return m;
}

static int fail(struct parser *ps, const char *what) {
  snprintf(ps->err, ps->err_len, "%s", what);
  return 0;
}

static void skip_space(struct parser *ps) {
  while (ps->p < ps->end && (*ps->p == ' ' || *ps->p == '\n' || *ps->p == '\r' || *ps->p == '\t')) ps->p++;
}

static int hex4(const char *s, unsigned *out) {
  unsigned v = 0;
  for (int i = 0; i < 4; i++) {
    char c = s[i];
    v <<= 4;
    if (c >= '0' && c <= '9') v |= (unsigned)(c - '0');
    else if (c >= 'a' && c <= 'f') v |= (unsigned)(c - 'a' + 10);
    else if (c >= 'A' && c <= 'F') v |= (unsigned)(c - 'A' + 10);
    else return 0;
  }
  *out = v;
  return 1;
}

/* Parses a string at ps->p (on its opening quote) into a fresh NUL-terminated buffer. */
static char *parse_string(struct parser *ps) {
  ps->p++;
  const char *start = ps->p;
  while (ps->p < ps->end && *ps->p != '"') ps->p += *ps->p == '\\' ? 2 : 1;
  if (ps->p >= ps->end) {
    fail(ps, "unterminated string");
    return NULL;
  }
  /* The decoded text is never longer than the escaped one. */
  char *out = xcalloc((size_t)(ps->p - start) + 1, 1), *o = out;
  for (const char *s = start; s < ps->p;) {
    unsigned char c = (unsigned char)*s;
    if (c < 0x20) {
      fail(ps, "control character in string");
      return NULL;
    }
    if (c != '\\') {
      *o++ = (char)c;
      s++;
      continue;
    }
    s++;
    switch (*s++) {
    case '"': *o++ = '"'; break;
    case '\\': *o++ = '\\'; break;
    case '/': *o++ = '/'; break;
    case 'b': *o++ = '\b'; break;
    case 'f': *o++ = '\f'; break;
    case 'n': *o++ = '\n'; break;
    case 'r': *o++ = '\r'; break;
    case 't': *o++ = '\t'; break;
    case 'u': {
      unsigned cp;
      if (ps->p - s < 4 || !hex4(s, &cp)) {
        fail(ps, "bad \\u escape");
        return NULL;
      }
      s += 4;
      if (cp >= 0xd800 && cp < 0xdc00) {
        unsigned lo;
        if (ps->p - s < 6 || s[0] != '\\' || s[1] != 'u' || !hex4(s + 2, &lo) || lo < 0xdc00 || lo > 0xdfff) {
          fail(ps, "bad surrogate pair");
          return NULL;
        }
        s += 6;
        cp = 0x10000 + ((cp - 0xd800) << 10) + (lo - 0xdc00);
      }
      if (cp == 0) {
        fail(ps, "NUL in string");
        return NULL;
      }
      /* Up to 4 UTF-8 bytes from at least 6 escaped ones: still within the buffer. */
      if (cp < 0x80) *o++ = (char)cp;
      else if (cp < 0x800) {
        *o++ = (char)(0xc0 | (cp >> 6));
        *o++ = (char)(0x80 | (cp & 0x3f));
      } else if (cp < 0x10000) {
        *o++ = (char)(0xe0 | (cp >> 12));
        *o++ = (char)(0x80 | ((cp >> 6) & 0x3f));
        *o++ = (char)(0x80 | (cp & 0x3f));
      } else {
        *o++ = (char)(0xf0 | (cp >> 18));
        *o++ = (char)(0x80 | ((cp >> 12) & 0x3f));
        *o++ = (char)(0x80 | ((cp >> 6) & 0x3f));
        *o++ = (char)(0x80 | (cp & 0x3f));
      }
      break;
    }
    default:
      fail(ps, "bad escape");
      return NULL;
    }
  }
  *o = 0;
  ps->p++;
  return out;
}

static int parse_value(struct parser *ps, struct json *v, int depth);

/* Parses the items of an array or object (ps->p past its opening bracket) into v. */
static int parse_items(struct parser *ps, struct json *v, int depth, char close) {
  size_t cap = 0;
  skip_space(ps);
  if (ps->p < ps->end && *ps->p == close) {
    ps->p++;
    return 1;
  }
  for (;;) {
    if (v->count == cap) {
      cap = cap ? cap * 2 : 8;
      struct json *items = xcalloc(cap, sizeof *items);
      char **keys = xcalloc(cap, sizeof *keys);
      if (v->count) {
        memcpy(items, v->items, v->count * sizeof *items);
        memcpy(keys, v->keys, v->count * sizeof *keys);
      }
      v->items = items;
      v->keys = keys;
    }
    skip_space(ps);
    if (close == '}') {
      if (ps->p >= ps->end || *ps->p != '"') return fail(ps, "expected a member name");
      if (!(v->keys[v->count] = parse_string(ps))) return 0;
      /* Readers differ on a repeated member (Go's takes the last): refused, so that no two readers differ. */
      for (size_t k = 0; k < v->count; k++)
        if (strcmp(v->keys[k], v->keys[v->count]) == 0) return fail(ps, "repeated member");
      skip_space(ps);
      if (ps->p >= ps->end || *ps->p != ':') return fail(ps, "expected ':'");
      ps->p++;
    }
    if (!parse_value(ps, &v->items[v->count], depth + 1)) return 0;
    v->count++;
    skip_space(ps);
    if (ps->p < ps->end && *ps->p == ',') {
      ps->p++;
      continue;
    }
    if (ps->p < ps->end && *ps->p == close) {
      ps->p++;
      return 1;
    }
    return fail(ps, "expected ',' or a closing bracket");
  }
}

static int parse_value(struct parser *ps, struct json *v, int depth) {
  if (depth > MAX_DEPTH) return fail(ps, "nested too deeply");
  skip_space(ps);
  if (ps->p >= ps->end) return fail(ps, "unexpected end");
  const char *start = ps->p;
  char c = *ps->p;
  int ok = 1;
  if (c == '{' || c == '[') {
    v->type = c == '{' ? JSON_OBJECT : JSON_ARRAY;
    ps->p++;
    ok = parse_items(ps, v, depth, c == '{' ? '}' : ']');
  } else if (c == '"') {
    v->type = JSON_STRING;
    ok = (v->text = parse_string(ps)) != NULL;
  } else if ((size_t)(ps->end - ps->p) >= 4 && memcmp(ps->p, "true", 4) == 0) {
    v->type = JSON_BOOL;
    v->boolean = 1;
    ps->p += 4;
  } else if ((size_t)(ps->end - ps->p) >= 5 && memcmp(ps->p, "false", 5) == 0) {
    v->type = JSON_BOOL;
    ps->p += 5;
  } else if ((size_t)(ps->end - ps->p) >= 4 && memcmp(ps->p, "null", 4) == 0) {
    v->type = JSON_NULL;
    ps->p += 4;
  } else if (c == '-' || (c >= '0' && c <= '9')) {
    v->type = JSON_NUMBER;
    while (ps->p < ps->end && *ps->p && strchr("+-0123456789.eE", *ps->p)) ps->p++;
    v->text = xcalloc((size_t)(ps->p - start) + 1, 1);
    memcpy(v->text, start, (size_t)(ps->p - start));
  } else {
    return fail(ps, "unexpected character");
  }
  v->source = start;
  v->source_len = (size_t)(ps->p - start);
  return ok;
}

struct json *json_parse(const char *text, size_t len, char *err, size_t err_len) {
  struct parser ps = {.p = text, .end = text + len, .err = err, .err_len = err_len};
  struct json *v = xcalloc(1, sizeof *v);
  if (!parse_value(&ps, v, 0)) return NULL;
  skip_space(&ps);
  if (ps.p != ps.end) {
    fail(&ps, "trailing text");
    return NULL;
  }
  return v;
}

const struct json *json_get(const struct json *v, const char *key) {
  if (!v || v->type != JSON_OBJECT) return NULL;
  for (size_t i = 0; i < v->count; i++)
    if (strcmp(v->keys[i], key) == 0) return &v->items[i];
  return NULL;
}

unsigned long long json_u64(const struct json *v, int *ok) {
  *ok = 0;
  if (!v || v->type != JSON_NUMBER || v->text[0] == '-' || strpbrk(v->text, ".eE+")) return 0;
  errno = 0;
  char *end;
  unsigned long long n = strtoull(v->text, &end, 10);
  if (errno || *end) return 0;
  *ok = 1;
  return n;
}

long long json_i64(const struct json *v, int *ok) {
  *ok = 0;
  if (!v || v->type != JSON_NUMBER || strpbrk(v->text, ".eE+")) return 0;
  errno = 0;
  char *end;
  long long n = strtoll(v->text, &end, 10);
  if (errno || *end) return 0;
  *ok = 1;
  return n;
}
