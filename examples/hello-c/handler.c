/*
 * A minimal faasd handler in C.
 *
 * faasd starts a fresh container for every TCP connection to the function's IP. The handler:
 *   1. connects to the Unix socket /control.sock,
 *   2. receives the client's TCP socket as a file descriptor (SCM_RIGHTS; the message data is "SOCKET"),
 *   3. reads the request and writes an HTTP/1.1 response on that descriptor,
 *   4. exits.
 * The container has no network of its own: the received socket is its only way out.
 *
 * Build: gcc -static -O2 -o handler handler.c   (static, so it runs in a FROM scratch image)
 */
#define _GNU_SOURCE
#include <errno.h>
#include <signal.h>
#include <stdio.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <unistd.h>

#ifndef CONTROL_SOCK
#define CONTROL_SOCK "/control.sock" /* fixed by the contract; overridable at compile time for local tests */
#endif

/* Receives the client socket from faasd, or returns -1. */
static int receive_client(void) {
  int ctl = socket(AF_UNIX, SOCK_STREAM, 0);
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
  do n = recvmsg(ctl, &msg, 0);
  while (n < 0 && errno == EINTR);
  struct cmsghdr *c = n > 0 ? CMSG_FIRSTHDR(&msg) : NULL;
  if (c == NULL || c->cmsg_level != SOL_SOCKET || c->cmsg_type != SCM_RIGHTS) {
    fprintf(stderr, "no socket received\n");
    return -1;
  }
  int fd;
  memcpy(&fd, CMSG_DATA(c), sizeof fd);
  return fd; /* ctl stays open until we exit; faasd takes its closing as "done" */
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

int main(void) {
  signal(SIGPIPE, SIG_IGN);
  int fd = receive_client();
  if (fd < 0) return 1;

  /* Read the request head (up to the blank line). A real handler would parse it. */
  char req[8192];
  size_t len = 0;
  while (len < sizeof req - 1) {
    ssize_t r = read(fd, req + len, sizeof req - 1 - len);
    if (r < 0 && errno == EINTR) continue;
    if (r <= 0) break;
    len += (size_t)r;
    req[len] = '\0';
    if (strstr(req, "\r\n\r\n") != NULL) break;
  }

  static const char response[] = "HTTP/1.1 200 OK\r\n"
                                 "Content-Type: text/plain\r\n"
                                 "Content-Length: 17\r\n"
                                 "Connection: close\r\n"
                                 "\r\n"
                                 "hello from faasd\n";
  if (write_all(fd, response, sizeof response - 1) != 0) {
    perror("write");
    return 1;
  }
  close(fd);
  return 0;
}
