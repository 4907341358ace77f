#!/usr/bin/env python3
"""A plaintext client of the proxy for tests/real/*.sh (stdlib only).

    client.py echo ADDR [--timeout S]
        one round trip through the proxy to the echo master; prints the seconds it took.
    client.py hold ADDR --ready FILE --go FILE [--timeout S]
        one round trip, then creates FILE --ready and waits (no traffic) until --go exists,
        then a second round trip on the same connection and a clean close.
ADDR is HOST:PORT or unix:PATH. Exit status 0 when every round trip came back intact,
1 otherwise (the reason on stderr).
"""
import argparse
import os
import socket
import sys
import time


def connect(addr: str, timeout: float) -> socket.socket:
    if addr.startswith("unix:"):
        s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        s.settimeout(timeout)
        s.connect(addr[5:])
        return s
    host, port = addr.rsplit(":", 1)
    return socket.create_connection((host.strip("[]"), int(port)), timeout=timeout)


def round_trip(s: socket.socket, tag: str) -> None:
    msg = f"det-tls-proxy {tag} {os.getpid()} {time.time_ns()}\n".encode()
    s.sendall(msg)
    got = b""
    while len(got) < len(msg):
        chunk = s.recv(len(msg) - len(got))
        if not chunk:
            raise OSError(f"connection closed after {len(got)} of {len(msg)} echoed bytes")
        got += chunk
    if got != msg:
        raise OSError(f"echo mismatch: sent {msg!r}, got {got!r}")


def main() -> int:
    p = argparse.ArgumentParser()
    p.add_argument("mode", choices=["echo", "hold"])
    p.add_argument("addr")
    p.add_argument("--timeout", type=float, default=15.0)
    p.add_argument("--ready")
    p.add_argument("--go")
    a = p.parse_args()
    start = time.monotonic()
    try:
        s = connect(a.addr, a.timeout)
        round_trip(s, "first")
        if a.mode == "hold":
            open(a.ready, "w").close()
            deadline = time.monotonic() + a.timeout
            while not os.path.exists(a.go):
                if time.monotonic() > deadline:
                    raise OSError(f"{a.go} did not appear within {a.timeout}s")
                time.sleep(0.05)
            round_trip(s, "second")
        s.shutdown(socket.SHUT_WR)
        s.settimeout(a.timeout)
        rest = s.recv(1)
        if rest:
            raise OSError(f"unexpected bytes after close: {rest!r}")
        s.close()
    except OSError as e:
        print(f"client {a.mode} {a.addr}: {e}", file=sys.stderr)
        return 1
    print(f"{time.monotonic() - start:.3f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
