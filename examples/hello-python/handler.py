"""A faasd handler in Python: the example from the faasd design document, as written.

faasd starts a fresh container for every TCP connection; the handler connects to /control.sock, receives the
client's TCP socket by SCM_RIGHTS, answers on it and exits. This one answers without reading the request and without
a Content-Length; faasd keeps the connection open until the container exits, so the client still gets the whole
response and a clean end of stream.
"""

import array
import socket

# Connect to control socket
control_sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
control_sock.connect('/control.sock')

# Receive TCP socket FD
fds = array.array('i')
msg, ancdata, flags, addr = control_sock.recvmsg(
    1024,
    socket.CMSG_SPACE(array.array('i', [0]).itemsize)
)

for level, type, data in ancdata:
    if level == socket.SOL_SOCKET and type == socket.SCM_RIGHTS:
        fds.frombytes(data)

tcp_fd = fds[0]
client_sock = socket.fromfd(tcp_fd, socket.AF_INET, socket.SOCK_STREAM)

# Handle HTTP request
response = b"HTTP/1.1 200 OK\r\n\r\nHello World!"
client_sock.sendall(response)
client_sock.close()
