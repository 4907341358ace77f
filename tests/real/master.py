#!/usr/bin/env python3
"""A stand-in Determined master for tests/real/*.sh: a TLS echo server (stdlib only).

    master.py --cert master.pem --key master.key [--client-ca ca.pem [--client-cert-optional]]
              --port-file FILE [--host 127.0.0.1] [--port 0] [--log FILE]

Every byte a client sends comes back unchanged. With --client-ca the master requires a
client certificate signed by that CA (Determined's resource_manager.require_authentication),
and logs the subject's CN of each client to --log ("client CN=agent"); with
--client-cert-optional it asks for one but serves clients without ("client without
certificate"), so a test can tell who was given the certificate.
The port it listens on is written to --port-file once it accepts (write-then-rename).
Runs until killed (SIGTERM).
"""
import argparse
import os
import socket
import ssl
import sys
import threading


def serve(conn: ssl.SSLSocket, log) -> None:
    try:
        cert = conn.getpeercert()
        if cert and log:
            subject = dict(x[0] for x in cert.get("subject", ()))
            log(f"client CN={subject.get('commonName', '?')}")
        elif log:
            log("client without certificate")
        while True:
            data = conn.recv(65536)
            if not data:
                break
            conn.sendall(data)
        try:
            conn.unwrap()
        except (OSError, ssl.SSLError):
            pass
    except (OSError, ssl.SSLError) as e:
        if log:
            log(f"connection error: {e}")
    finally:
        conn.close()


def main() -> int:
    p = argparse.ArgumentParser()
    p.add_argument("--cert", required=True)
    p.add_argument("--key", required=True)
    p.add_argument("--client-ca")
    p.add_argument("--client-cert-optional", action="store_true")
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, default=0)
    p.add_argument("--port-file", required=True)
    p.add_argument("--log")
    a = p.parse_args()

    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    ctx.load_cert_chain(a.cert, a.key)
    ctx.set_alpn_protocols(["h2", "http/1.1"])
    if a.client_ca:
        ctx.verify_mode = ssl.CERT_OPTIONAL if a.client_cert_optional else ssl.CERT_REQUIRED
        ctx.load_verify_locations(a.client_ca)

    lock = threading.Lock()

    def log(line: str) -> None:
        if not a.log:
            return
        with lock, open(a.log, "a") as f:
            f.write(line + "\n")

    srv = socket.create_server((a.host, a.port), reuse_port=False, backlog=128)
    tmp = a.port_file + ".tmp"
    with open(tmp, "w") as f:
        f.write(str(srv.getsockname()[1]))
    os.rename(tmp, a.port_file)
    while True:
        raw, _ = srv.accept()
        try:
            raw.settimeout(30)
            conn = ctx.wrap_socket(raw, server_side=True)
            conn.settimeout(None)
        except (OSError, ssl.SSLError) as e:
            log(f"handshake failed: {e}")
            raw.close()
            continue
        threading.Thread(target=serve, args=(conn, log), daemon=True).start()


if __name__ == "__main__":
    sys.exit(main())
