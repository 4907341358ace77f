#!/usr/bin/env bash
# The test command (README, "Developing"): installs what the integration tests call, then runs
# the whole suite. On a fresh Debian 12 machine with Rust and Python 3:
#   bash tests/run.sh              # install (root, or sudo) and `cargo test --locked`
#   bash tests/run.sh --deps-only  # install only (.ci/run does this before linting)
# Once the dependencies are in place, `cargo test` is the inner loop. Extra arguments go to
# `cargo test` (e.g. `bash tests/run.sh --test reload`).
#
# What the tests call, and why:
#   curl             tests/alpn.rs: a real HTTP/1.1 and HTTP/2 client through the proxy;
#                    tests/passthrough_sniff.rs: a real client passed through
#   openssl          tests/trust_cmd.rs: fingerprints as `openssl x509 -fingerprint` prints them;
#                    tests/passthrough_sniff.rs: `openssl s_client` passed through
#   golang-go        tests/passthrough_sniff.rs: Go's crypto/tls passed through (tests/real/hello.go)
#   util-linux       tests/faults.rs: prlimit, to exhaust file descriptors; tests/upstream_proxy.rs:
#                    unshare, so tinyproxy resolves the master's name from a hosts file of its own
#   bsdutils         tests/untrusted_text.rs: script, a terminal for `trust`'s question
#   squid, tinyproxy tests/upstream_proxy.rs, tests/upstream_proxy_credentials.rs, tests/reload.rs: real HTTP CONNECT proxies
#   systemd          tests/systemd.rs: systemd-analyze verify, systemd-socket-activate
#   iproute2         tests/identity_tcp.rs: `ip netns` and a veth pair, a client in another
#                    network namespace (util-linux's setpriv runs the identity tests' clients
#                    as another user)
#   python3-yaml     deploy/validate.sh (tests/deploy.rs): the compose file
#   podman, runc, containernetworking-plugins  tests/container_api.rs, tests/identity_container.rs:
#                    real containers on bridge networks and the Docker-compatible API
#                    (`podman system service`)
#   prometheus       tests/prometheus_rules.rs: promtool checks and unit-tests deploy/prometheus;
#                    tests/prometheus_live.rs: a real Prometheus evaluates the alerts
#   prometheus-client (PyPI)  tests/admin.rs, tests/reload.rs: parse /metrics as Prometheus does
#   kubernetes-validate (PyPI) deploy/validate.sh (tests/deploy.rs): the Kubernetes manifests
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

deps_only=0
if [ "${1:-}" = "--deps-only" ]; then
  deps_only=1
  shift
fi

as_root() {
  if [ "$(id -u)" -eq 0 ]; then
    "$@"
  elif command -v sudo >/dev/null 2>&1; then
    sudo "$@"
  else
    echo "tests/run.sh: need root (or sudo) to run: $*" >&2
    exit 1
  fi
}

apt_need=()
for pkg in \
    curl \
    openssl \
    ca-certificates \
    util-linux \
    bsdutils \
    systemd \
    iproute2 \
    python3-yaml \
    squid \
    tinyproxy \
    golang-go \
    podman \
    runc \
    containernetworking-plugins \
    prometheus \
    ; do
  dpkg -s "$pkg" >/dev/null 2>&1 || apt_need+=("$pkg")
done
if [ "${#apt_need[@]}" -gt 0 ]; then
  echo "== apt-get install ${apt_need[*]}"
  as_root env DEBIAN_FRONTEND=noninteractive apt-get update -qq
  as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${apt_need[@]}" >/dev/null
fi

py_need=()
python3 -c 'import prometheus_client' 2>/dev/null || py_need+=(prometheus-client)
command -v kubernetes-validate >/dev/null 2>&1 || py_need+=(kubernetes-validate)
python3 -c 'import yaml' 2>/dev/null || py_need+=(pyyaml)
if [ "${#py_need[@]}" -gt 0 ]; then
  echo "== pip install ${py_need[*]}"
  # A system Python that refuses pip (PEP 668) gets the packages in the user's site instead.
  python3 -m pip install -q "${py_need[@]}" 2>/dev/null ||
    python3 -m pip install -q --user --break-system-packages "${py_need[@]}"
  hash -r
  if ! command -v kubernetes-validate >/dev/null 2>&1 && [ -x "$HOME/.local/bin/kubernetes-validate" ]; then
    export PATH="$HOME/.local/bin:$PATH"
  fi
fi

[ "$deps_only" -eq 1 ] && exit 0
echo "== cargo test --locked $*"
exec cargo test --locked "$@"
