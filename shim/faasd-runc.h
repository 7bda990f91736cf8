/* What faasd-runc's parts share (faasd-runc.c: commands and runc's containers; create.c and own.c: its own). */
#ifndef FAASD_RUNC_H
#define FAASD_RUNC_H
#include "json.h"

/* The global flags, as the shim's go-runc writes them. */
struct globals {
  const char *root;
  const char *log;
  int json_log;
};

/* The name of the state file of containers faasd-runc created itself (runc's is state.json). */
#define OWN_STATE "faasd-state.json"

/* Reports an error as runc does (a JSON line in the --log file, and stderr) and exits 1. */
_Noreturn void die(const struct globals *g, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
/* 1 running (the pid has that start time and is no zombie), 0 gone, -1 cannot tell. */
int init_running(long long pid, long long start);
/* The start time (field 22 of /proc/PID/stat) of pid; -1 when unknown. */
long long process_start(long long pid);
/* Whether s is a container id as runc accepts it (^[\w+-.]+$, not "." or ".."): safe as one path element. */
int plain_id(const char *s);
/* Writes value to the file dir/name (a cgroup file: one write); -1 with errno on error. */
int write_file(const char *dir, const char *name, const char *value);
/* Removes a cgroup directory (gone already is fine); -1 with errno when it does not go. */
int remove_cgroup(const char *path);
/* Reads a whole file (at most max bytes) into a NUL-terminated buffer; NULL on error or when larger. */
char *read_file_at(int dir, const char *name, size_t max, size_t *len);

/*
 * create: builds the container itself when its config is one faasd-runc knows in full (create.c, top); returns only
 * when runc must do it.
 */
void create(const struct globals *g, int argc, char **argv);
/* start, kill, delete, state and ps of a container faasd-runc created (own.c); never returns. */
_Noreturn void own_command(const struct globals *g, int root, const char *command, int argc, char **argv);

#endif
