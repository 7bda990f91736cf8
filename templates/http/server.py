"""{{name}}: a plain HTTP server, run as a faasd function in adapter mode.

It knows nothing of faasd: it listens on 0.0.0.0:8080 (env PORT) like any containerised server. Deployed with
`--http-port 8080`, faasd runs its adapter as the container's process; the adapter starts this server, waits until
the port accepts connections, receives the client's socket from faasd and relays it to the server. Each client
connection still gets a fresh container, so the server serves one connection and is then stopped.
"""

import os
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

FUNCTION_NAME = "{{name}}"
PORT = int(os.environ.get("PORT", "8080"))


class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    # Your code goes here: one method per HTTP method.
    def do_GET(self):
        self.answer(200, f"hello from {FUNCTION_NAME}\n".encode())

    def do_POST(self):
        length = int(self.headers.get("Content-Length") or 0)
        self.rfile.read(length)
        self.answer(200, f"hello from {FUNCTION_NAME}\n".encode())

    def answer(self, status, body):
        self.send_response(status)
        self.send_header("Content-Type", "text/plain; charset=utf-8")
        self.send_header("Content-Length", str(len(body)))
        self.send_header("Connection", "close")
        self.end_headers()
        self.wfile.write(body)


if __name__ == "__main__":
    # Inside the container only lo exists; 0.0.0.0 also serves the same image run elsewhere (podman run -p 8080:8080).
    ThreadingHTTPServer(("0.0.0.0", PORT), Handler).serve_forever()
