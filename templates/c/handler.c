/*
 * {{name}}: a faasd handler in C.
 *
 * faasd starts a fresh container for every TCP connection to the function's IP. The handler:
 *   1. connects to the Unix socket /control.sock,
 *   2. receives the client's TCP socket as a file descriptor (SCM_RIGHTS; the message data is "SOCKET"),
 *   3. reads the request and writes one HTTP/1.1 response on that descriptor,
 *   4. exits.
 * The container has no network of its own: the received socket is its only way out. With faasd's warm pool the
 * process may start long before its connection arrives, so do slow set-up work before step 1 returns.
 *
 * Build: gcc -static -O2 -s -o handler handler.c   (static, so it runs in a FROM scratch image)
 */
#define _GNU_SOURCE
#include <errno.h>
#include <signal.h>
#include <stdio.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <unistd.h>

#define FUNCTION_NAME "{{name}}"
#define CONTROL_SOCK "/control.sock"

/* Receives the client socket from faasd, or returns -1. The control connection stays open until the process exits. */
static int receive_client(void) {
  int ctl = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
  struct sockaddr_un addr = {.sun_family = AF_UNIX, .sun_path = CONTROL_SOCK};
  if (ctl < 0 || connect(ctl, (struct sockaddr *)&addr, sizeof addr) != 0) {
    perror("connect " CONTROL_SOCK);
    return -1;
  }
  char data[16];
  union {
    struct cmsghdr align;
    char space[CMSG_SPACE(sizeof(int))];
  } control;
  struct iovec iov = {.iov_base = data, .iov_len = sizeof data};
  struct msghdr msg = {.msg_iov = &iov, .msg_iovlen = 1, .msg_control = control.space,
                       .msg_controllen = sizeof control.space};
  ssize_t n;
  do n = recvmsg(ctl, &msg, MSG_CMSG_CLOEXEC);
  while (n < 0 && errno == EINTR);
  struct cmsghdr *c = n > 0 ? CMSG_FIRSTHDR(&msg) : NULL;
  if (c == NULL || c->cmsg_level != SOL_SOCKET || c->cmsg_type != SCM_RIGHTS) {
    fprintf(stderr, "no socket received on " CONTROL_SOCK "\n");
    return -1;
  }
  int fd;
  memcpy(&fd, CMSG_DATA(c), sizeof fd);
  return fd;
}

/* Writes everything, continuing after short writes and signals. */
static int write_all(int fd, const char *p, size_t n) {
  while (n > 0) {
    ssize_t w = write(fd, p, n);
    if (w < 0 && errno == EINTR) continue;
    if (w < 0) return -1;
    p += w;
    n -= (size_t)w;
  }
  return 0;
}

/* Reads the request head (up to the blank line) into buf; returns its length, or -1 when none came. */
static ssize_t read_head(int fd, char *buf, size_t size) {
  size_t len = 0;
  buf[0] = '\0';
  while (len < size - 1) {
    ssize_t r = read(fd, buf + len, size - 1 - len);
    if (r < 0 && errno == EINTR) continue;
    if (r <= 0) break;
    len += (size_t)r;
    buf[len] = '\0';
    if (strstr(buf, "\r\n\r\n") != NULL) return (ssize_t)len;
  }
  return len > 0 ? (ssize_t)len : -1;
}

int main(void) {
  signal(SIGPIPE, SIG_IGN); /* a client that hung up is a write error, not a silent death */
  int fd = receive_client();
  if (fd < 0) return 1;

  char head[8192];
  if (read_head(fd, head, sizeof head) < 0) {
    fprintf(stderr, "the client sent no request\n");
    return 1;
  }
  /* The request line, e.g. "GET /path HTTP/1.1", goes to the function's log (`faas logs NAME`). */
  printf("%.*s\n", (int)strcspn(head, "\r\n"), head);
  fflush(stdout);

  /* Your code goes here: parse the head, read a body of Content-Length bytes, build the answer. */
  static const char body[] = "hello from " FUNCTION_NAME "\n";
  char response[512];
  int n = snprintf(response, sizeof response,
                   "HTTP/1.1 200 OK\r\n"
                   "Content-Type: text/plain; charset=utf-8\r\n"
                   "Content-Length: %zu\r\n"
                   "Connection: close\r\n"
                   "\r\n"
                   "%s",
                   sizeof body - 1, body);
  if (n < 0 || (size_t)n >= sizeof response || write_all(fd, response, (size_t)n) != 0) {
    perror("write");
    return 1;
  }
  close(fd);
  return 0;
}
