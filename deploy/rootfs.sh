#!/bin/sh
# The container image's whole root file system, gathered from a built binary:
#   deploy/rootfs.sh BINARY OUT
# writes into OUT exactly what det-tls-proxy needs on a `FROM scratch` image:
#   /usr/local/bin/det-tls-proxy
#   its shared libraries and their loader, at the paths the binary asks for (ldd):
#     glibc (libc, libm), libgcc_s, ld-linux; nothing when the binary is static
#   /etc/ssl/certs/ca-certificates.crt   system roots, for a master_cert-less configuration
#   /etc/passwd, /etc/group              root and nonroot (65532), the user the image runs as
#   /etc/nsswitch.conf                   hosts: files dns
#   /etc/determined/                     where the configuration is mounted
#   /tmp                                 1777 (mount a tmpfs there with a read-only root)
# Run by deploy/Dockerfile's build stage, and by CI (tests/real/container.sh) on a binary it
# built already. Needs ldd (libc-bin) and the build machine's ca-certificates.
set -eu
[ $# -eq 2 ] || { echo "usage: $0 BINARY OUT" >&2; exit 2; }
bin=$1
out=$2
cacerts=${CA_CERTIFICATES:-/etc/ssl/certs/ca-certificates.crt}
[ -x "$bin" ] || { echo "$0: $bin: not an executable" >&2; exit 1; }
[ -s "$cacerts" ] || { echo "$0: $cacerts missing (install ca-certificates)" >&2; exit 1; }

mkdir -p "$out"
install -D -m 0755 "$bin" "$out/usr/local/bin/det-tls-proxy"

# "libc.so.6 => /lib/x86_64-linux-gnu/libc.so.6 (0x...)" and "/lib64/ld-linux-x86-64.so.2 (0x...)".
# A static binary: ldd says "not a dynamic executable" (or "statically linked"), no libraries.
libs=$(ldd "$bin" 2>/dev/null | awk '$2 == "=>" && $3 ~ /^\// { print $3 } $1 ~ /^\// { print $1 }') || true
for lib in $libs; do
    install -D -m 0755 "$(readlink -f "$lib")" "$out$lib"
done

install -D -m 0644 "$cacerts" "$out/etc/ssl/certs/ca-certificates.crt"
printf '%s\n' 'root:x:0:0:root:/root:/sbin/nologin' 'nonroot:x:65532:65532:nonroot:/home/nonroot:/sbin/nologin' >"$out/etc/passwd"
printf '%s\n' 'root:x:0:' 'nonroot:x:65532:' >"$out/etc/group"
printf '%s\n' 'hosts: files dns' >"$out/etc/nsswitch.conf"
chmod 0644 "$out/etc/passwd" "$out/etc/group" "$out/etc/nsswitch.conf"
mkdir -p "$out/etc/determined" "$out/home/nonroot" "$out/tmp"
chmod 0755 "$out/etc/determined"
chown 65532:65532 "$out/home/nonroot" 2>/dev/null || true
chmod 1777 "$out/tmp"
# Proof it runs with nothing but these files (skipped when cross-building).
if command -v chroot >/dev/null 2>&1 && [ "$(id -u)" -eq 0 ]; then
    chroot "$out" /usr/local/bin/det-tls-proxy --version
fi
