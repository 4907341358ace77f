#!/usr/bin/env bash
# Validates the deployment files; run from anywhere (CI: `bash deploy/validate.sh`).
#   systemd/*.service, *.socket   systemd-analyze verify (any warning about them fails)
#   deploy/kubernetes/*.yaml      kubernetes-validate --strict (unknown fields fail)
#   deploy/compose.yaml           parsed as YAML (python3 + PyYAML), services checked
#   deploy/fluent-bit/*.conf      fluent-bit --dry-run, when fluent-bit is installed
# Installs nothing. Needs: systemd (systemd-analyze), python3 with PyYAML,
# kubernetes-validate (pip install kubernetes-validate). A missing tool is a failure.
# Exit status: 0 all valid, 1 something failed.
set -uo pipefail

here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
root=$(cd "$here/.." && pwd)
failures=0
fail() { echo "FAIL: $*" >&2; failures=$((failures + 1)); }
pass() { echo "ok: $*"; }

need() {
    if ! command -v "$1" >/dev/null 2>&1; then
        fail "$1 not found ($2)"
        return 1
    fi
}

tmp=$(mktemp -d "${TMPDIR:-/tmp}/det-tls-proxy-validate.XXXXXX")
trap 'rm -rf "$tmp"' EXIT

# === systemd units ===
# verify insists that ExecStart's binary exists and is executable. The shipped unit keeps
# /usr/local/bin/det-tls-proxy; a copy in a temporary directory points at a stand-in.
# verify also exits 0 on an unknown key (it only warns), so any line it prints about our
# units counts as a failure.
if need systemd-analyze "Debian package systemd"; then
    units=("$root"/systemd/*.service "$root"/systemd/*.socket)
    if [ ! -e "${units[0]}" ]; then
        fail "no units in $root/systemd"
    else
        mkdir -p "$tmp/units" "$tmp/bin"
        printf '#!/bin/sh\nexit 0\n' >"$tmp/bin/det-tls-proxy"
        chmod 0755 "$tmp/bin/det-tls-proxy"
        copies=()
        for u in "${units[@]}"; do
            sed "s|/usr/local/bin/det-tls-proxy|$tmp/bin/det-tls-proxy|g" "$u" >"$tmp/units/$(basename "$u")"
            copies+=("$tmp/units/$(basename "$u")")
        done
        out=$(cd "$tmp/units" && SYSTEMD_LOG_COLOR=0 systemd-analyze verify --man=no "${copies[@]}" 2>&1)
        rc=$?
        ours=$(printf '%s\n' "$out" | grep -E "$tmp/units|det-tls-proxy" || true)
        if [ $rc -ne 0 ] || [ -n "$ours" ]; then
            fail "systemd-analyze verify (exit $rc):"
            printf '%s\n' "$out" | sed "s|$tmp/units/|systemd/|g" >&2
        else
            [ -n "$out" ] && printf 'note: systemd-analyze, about other units:\n%s\n' "$out"
            pass "systemd-analyze verify: $(cd "$root" && echo systemd/*.service systemd/*.socket)"
        fi
    fi
fi

# === Kubernetes manifests ===
if need kubernetes-validate "pip install kubernetes-validate"; then
    manifests=("$here"/kubernetes/*.yaml)
    if [ ! -e "${manifests[0]}" ]; then
        fail "no manifests in $here/kubernetes"
    elif kubernetes-validate --strict --quiet "${manifests[@]}"; then
        pass "kubernetes-validate --strict: ${#manifests[@]} manifests"
    else
        fail "kubernetes-validate --strict"
    fi
fi

# === compose ===
if need python3 "Debian package python3"; then
    if python3 - "$here/compose.yaml" <<'PY'
import sys
try:
    import yaml
except ImportError:
    sys.exit("PyYAML is missing (Debian python3-yaml, or pip install pyyaml)")
path = sys.argv[1]
try:
    with open(path) as f:
        doc = yaml.safe_load(f)
except (OSError, yaml.YAMLError) as e:
    sys.exit(f"{path}: {e}")
if not isinstance(doc, dict) or not isinstance(doc.get("services"), dict) or not doc["services"]:
    sys.exit(f"{path}: no services")
names = set(doc["services"])
for name, svc in doc["services"].items():
    if not isinstance(svc, dict) or not (svc.get("image") or svc.get("build")):
        sys.exit(f"{path}: service {name}: needs image or build")
    mode = svc.get("network_mode", "")
    if mode.startswith("service:") and mode.split(":", 1)[1] not in names:
        sys.exit(f"{path}: service {name}: network_mode names an unknown service: {mode}")
    for dep in (svc.get("depends_on") or {}):
        if dep not in names:
            sys.exit(f"{path}: service {name}: depends_on names an unknown service: {dep}")
if not any(str(s.get("network_mode", "")).startswith("service:") for s in doc["services"].values()):
    sys.exit(f"{path}: no service shares another's network namespace (network_mode: service:NAME)")
PY
    then
        pass "compose.yaml parses"
    else
        fail "deploy/compose.yaml"
    fi
fi
if command -v docker >/dev/null 2>&1 && docker compose version >/dev/null 2>&1; then
    if (cd "$here" && DET_MASTER_HOST=validate docker compose -f compose.yaml config --quiet --no-interpolate); then
        pass "docker compose config"
    else
        fail "docker compose config"
    fi
fi

# === Fluent Bit ===
if command -v fluent-bit >/dev/null 2>&1; then
    for conf in "$here"/fluent-bit/*.conf; do
        if fluent-bit --dry-run -c "$conf" >/dev/null 2>&1; then
            pass "fluent-bit --dry-run $(basename "$conf")"
        else
            fail "fluent-bit --dry-run $conf"
        fi
    done
fi

if [ "$failures" -ne 0 ]; then
    echo "$failures check(s) failed" >&2
    exit 1
fi
echo "deploy files valid"
