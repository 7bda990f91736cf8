"""Peers for tests/adapter_test.ts: small TCP servers the adapter starts, and a client that resets.

    peers.py serve MODE PORT [ARG]   listen on 127.0.0.1:PORT, one thread per connection
    peers.py reset-client PORT HOW   connect to 127.0.0.1:PORT, then abort the connection (SO_LINGER 0)

Server modes (every one ignores connections that end before sending anything: the adapter's readiness probes):
    sha256     read until EOF, answer the hex SHA-256 of what was read and "\\n"
    download   read one line, answer "<hex sha256>\\n" then ARG bytes (blocks of urandom, each numbered)
    echo       echo every line back as soon as it is complete; close at EOF
    halfclose  read until EOF, then answer "got N bytes, sha256 X\\n" and 1 MiB of '.'
    slow       read until EOF, then sleep ARG seconds before answering; ignores SIGTERM
    early      read one line, answer "early answer\n" and close, leaving the rest unread (so the kernel resets)

Reset clients (HOW): "download" reads 1 MiB of a download then aborts; "upload" sends 8 MiB then aborts;
"idle" sends a line, shuts down its write side, waits 0.3 s, then aborts.
"""

import hashlib
import os
import signal
import socket
import struct
import sys
import threading
import time

BLOCK = 1 << 20


def read_until_eof(conn, digest):
    buf = bytearray(BLOCK)
    view = memoryview(buf)
    total = 0
    while True:
        n = conn.recv_into(buf)
        if n == 0:
            return total
        digest.update(view[:n])
        total += n


def read_line(conn):
    line = b""
    while not line.endswith(b"\n"):
        chunk = conn.recv(1)
        if not chunk:
            return None
        line += chunk
    return line


def download_stream(size):
    """Deterministic for one run: the same urandom block, numbered, so a reordered or repeated block shows."""
    base = os.urandom(BLOCK)
    blocks = (size + BLOCK - 1) // BLOCK

    def chunks():
        for i in range(blocks):
            block = struct.pack(">Q", i) + base[8:]
            yield block[: min(BLOCK, size - i * BLOCK)]

    digest = hashlib.sha256()
    if size <= 1 << 30:
        for chunk in chunks():
            digest.update(chunk)
    return digest.hexdigest(), chunks


def serve(mode, port, arg):
    if mode == "download":
        hexdigest, chunks = download_stream(int(arg))
    if mode == "slow":
        signal.signal(signal.SIGTERM, signal.SIG_IGN)

    def handle(conn):
        with conn:
            if mode == "sha256":
                digest = hashlib.sha256()
                if read_until_eof(conn, digest) > 0:
                    conn.sendall(digest.hexdigest().encode() + b"\n")
            elif mode == "download":
                if read_line(conn) is not None:
                    conn.sendall(hexdigest.encode() + b"\n")
                    for chunk in chunks():
                        conn.sendall(chunk)
            elif mode == "echo":
                while (line := read_line(conn)) is not None:
                    conn.sendall(line)
            elif mode == "halfclose":
                digest = hashlib.sha256()
                n = read_until_eof(conn, digest)
                if n > 0:
                    conn.sendall(f"got {n} bytes, sha256 {digest.hexdigest()}\n".encode() + b"." * BLOCK)
            elif mode == "early":
                if read_line(conn) is not None:
                    conn.sendall(b"early answer\n")
            elif mode == "slow":
                if read_until_eof(conn, hashlib.sha256()) > 0:
                    time.sleep(float(arg))
                    conn.sendall(b"slept\n")

    def guarded(conn):
        try:
            handle(conn)
        except OSError:
            pass  # the peer went away: nothing to report

    listener = socket.socket()
    listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    listener.bind(("127.0.0.1", port))
    listener.listen(64)
    while True:
        conn, _ = listener.accept()
        threading.Thread(target=guarded, args=(conn,), daemon=True).start()


def reset_client(port, how):
    conn = socket.create_connection(("127.0.0.1", port))
    if how == "download":
        conn.sendall(b"GET\n")
        got = 0
        while got < BLOCK:
            chunk = conn.recv(BLOCK)
            if not chunk:
                sys.exit(f"end of stream after {got} bytes")
            got += len(chunk)
    elif how == "upload":
        conn.sendall(b"u" * (8 * BLOCK))
    elif how == "idle":
        conn.sendall(b"request\n")
        conn.shutdown(socket.SHUT_WR)
        time.sleep(0.3)
    conn.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    conn.close()
    print("reset", flush=True)


if __name__ == "__main__":
    if sys.argv[1] == "serve":
        serve(sys.argv[2], int(sys.argv[3]), sys.argv[4] if len(sys.argv) > 4 else None)
    elif sys.argv[1] == "reset-client":
        reset_client(int(sys.argv[2]), sys.argv[3])
    else:
        sys.exit(f"unknown command {sys.argv[1]}")
