"""{{name}}: a faasd handler in Python.

faasd starts a fresh container for every TCP connection to the function's IP. The handler connects to /control.sock,
receives the client's TCP socket by SCM_RIGHTS (message data "SOCKET"), reads the request, writes one HTTP/1.1 answer
with a Content-Length, and exits. The container has no network of its own: the received socket is its only way out.
With faasd's warm pool the process may start long before its connection arrives, so do slow set-up (imports, loading
data) before recvmsg.
"""

import array
import socket
import sys

FUNCTION_NAME = "{{name}}"
MAX_HEAD = 64 * 1024

# Connect to the control socket
control_sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
control_sock.connect("/control.sock")

# Receive the client's TCP socket fd
fds = array.array("i")
msg, ancdata, flags, addr = control_sock.recvmsg(16, socket.CMSG_SPACE(fds.itemsize))
for level, type_, data in ancdata:
    if level == socket.SOL_SOCKET and type_ == socket.SCM_RIGHTS:
        fds.frombytes(data[: len(data) - len(data) % fds.itemsize])
if not fds:
    sys.exit("no socket received on /control.sock")
client_sock = socket.socket(fileno=fds[0])

# Read the request head, up to the blank line
head = b""
while b"\r\n\r\n" not in head and len(head) < MAX_HEAD:
    chunk = client_sock.recv(4096)
    if not chunk:
        break
    head += chunk
request_line = head.split(b"\r\n", 1)[0].decode("latin-1")
print(request_line)  # goes to the function's log: faas logs {{name}}
parts = request_line.split(" ")

# Handle the HTTP request: your code goes here
if len(parts) == 3 and parts[2].startswith("HTTP/"):
    method, path, _version = parts
    status, body = "200 OK", f"hello from {FUNCTION_NAME}\n".encode()
else:
    status, body = "400 Bad Request", b"bad request\n"

response = (
    f"HTTP/1.1 {status}\r\n"
    "Content-Type: text/plain; charset=utf-8\r\n"
    f"Content-Length: {len(body)}\r\n"
    "Connection: close\r\n"
    "\r\n"
).encode() + body
client_sock.sendall(response)
client_sock.close()
