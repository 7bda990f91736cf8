/*
 * Test handler following faasd's handler contract: connect to the Unix socket given as argv[1], receive one
 * descriptor by SCM_RIGHTS with the data "SOCKET", write the response (argv[2], default below) on it without
 * reading the request, and exit. argv[2] == "-" writes nothing, like a handler that crashed.
 */
#include <stdio.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <unistd.h>

int main(int argc, char **argv) {
  if (argc < 2) {
    fprintf(stderr, "usage: %s SOCKET_PATH [RESPONSE|-]\n", argv[0]);
    return 2;
  }
  int control = socket(AF_UNIX, SOCK_STREAM, 0);
  struct sockaddr_un address = {.sun_family = AF_UNIX};
  strncpy(address.sun_path, argv[1], sizeof address.sun_path - 1);
  if (control < 0 || connect(control, (struct sockaddr *)&address, sizeof address) < 0) {
    perror("connect");
    return 1;
  }

  char data[16];
  union {
    struct cmsghdr header;
    char bytes[CMSG_SPACE(sizeof(int))];
  } ancillary;
  struct iovec iov = {.iov_base = data, .iov_len = sizeof data};
  struct msghdr message = {
      .msg_iov = &iov,
      .msg_iovlen = 1,
      .msg_control = ancillary.bytes,
      .msg_controllen = sizeof ancillary.bytes,
  };
  ssize_t received = recvmsg(control, &message, 0);
  if (received < 0) {
    perror("recvmsg");
    return 1;
  }
  struct cmsghdr *cmsg = CMSG_FIRSTHDR(&message);
  if (received != 6 || memcmp(data, "SOCKET", 6) != 0 || cmsg == NULL || cmsg->cmsg_level != SOL_SOCKET ||
      cmsg->cmsg_type != SCM_RIGHTS) {
    fprintf(stderr, "expected \"SOCKET\" with one SCM_RIGHTS descriptor\n");
    return 1;
  }
  int fd;
  memcpy(&fd, CMSG_DATA(cmsg), sizeof fd);
  close(control);

  const char *response = argc > 2 ? argv[2] : "HTTP/1.1 200 OK\r\n\r\nHello World!";
  if (strcmp(response, "-") != 0) {
    size_t length = strlen(response);
    for (size_t sent = 0; sent < length;) {
      ssize_t n = write(fd, response + sent, length - sent);
      if (n < 0) {
        perror("write");
        return 1;
      }
      sent += (size_t)n;
    }
  }
  close(fd);
  return 0;
}
