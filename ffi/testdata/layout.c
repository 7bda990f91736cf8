/* Prints, as JSON, the struct offsets the FFI bindings hard-code, taken from the C headers. */
#include <linux/tcp.h>
#include <stddef.h>
#include <stdio.h>

int main(void) {
  printf("{\"tcpi_notsent_bytes\": %zu, \"tcpi_bytes_sent\": %zu, \"sizeof_tcp_info\": %zu}\n",
         offsetof(struct tcp_info, tcpi_notsent_bytes), offsetof(struct tcp_info, tcpi_bytes_sent),
         sizeof(struct tcp_info));
  return 0;
}
