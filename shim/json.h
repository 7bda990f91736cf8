/*
 * A small JSON reader for faasd-runc: parses one document (an OCI config or faasd-runc's own state) into a tree.
 * Nothing is freed: faasd-runc is a short-lived process.
 */
#ifndef FAASD_JSON_H
#define FAASD_JSON_H
#include <stddef.h>

enum json_type { JSON_NULL, JSON_BOOL, JSON_NUMBER, JSON_STRING, JSON_ARRAY, JSON_OBJECT };

struct json {
  enum json_type type;
  int boolean;
  /* A string's decoded text (NUL-terminated; a string holding NUL is refused), or a number's text. */
  char *text;
  /* Items of an array or values of an object; keys[i] names values[i] in an object. */
  size_t count;
  struct json *items;
  char **keys;
  /* Where the value's text lies in the document (for a byte-exact comparison of a sub-document). */
  const char *source;
  size_t source_len;
};

/* Parses text (len bytes); NULL with a message in err when it is not one JSON value (nesting is bounded). */
struct json *json_parse(const char *text, size_t len, char *err, size_t err_len);
/* The member key of an object; NULL when v is not an object or has no such member. */
const struct json *json_get(const struct json *v, const char *key);
/* The value as an unsigned or a signed integer; 0 when it is not an integral number in range (ok tells). */
unsigned long long json_u64(const struct json *v, int *ok);
long long json_i64(const struct json *v, int *ok);

#endif
