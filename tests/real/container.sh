#!/usr/bin/env bash
# The container image, built and run for real, offline: deploy/rootfs.sh gathers the root
# file system of a binary built already, buildah builds deploy/Dockerfile on it (FROM
# scratch, nothing pulled), and podman runs it as the Kubernetes manifests do: user 65532,
# read-only root file system (no tmpfs either), no capabilities, no new privileges, host
# network, configuration and certificates mounted read-only in the layout of a Kubernetes
# Secret/ConfigMap volume (..data symlink).
#
#   tests/real/container.sh [BINARY]      (default: $DET_TLS_PROXY_BIN, else target/debug/det-tls-proxy)
#
# Needs root, podman, buildah, runc, openssl, curl, python3. Images live in a private store
# under a temporary directory (vfs driver), removed at the end. Prints the image's size.
# Exit status: 0 every check passed, 1 a check failed, 77 cannot run on this machine (skip).
set -uo pipefail
# shellcheck source=tests/real/lib.sh
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

BIN=${1:-${DET_TLS_PROXY_BIN:-$ROOT/target/debug/det-tls-proxy}}
IMAGE=localhost/det-tls-proxy:ci-test
ROOTFS_IMAGE=localhost/det-tls-proxy-rootfs:ci-test
NAME=det-tls-proxy-ci-$$

[ "$(id -u)" -eq 0 ] || skip "needs root (podman with runc and host networking)"
for tool in podman buildah runc openssl curl python3; do
    command -v "$tool" >/dev/null 2>&1 || skip "$tool not found (apt-get install podman buildah runc openssl curl python3)"
done
[ -x "$BIN" ] || { echo "FAIL: binary $BIN not found or not executable (build it first: cargo test --locked --no-run)" >&2; exit 1; }
BIN=$(readlink -f "$BIN")

work=$(mktemp -d /var/tmp/det-tls-proxy-container.XXXXXX)
MASTERS=()
# A private image store. vfs: no overlay mounts needed; runc: crun refuses hybrid cgroups;
# cgroupfs and file events: the host need not run systemd.
STORE=(--root "$work/storage" --runroot "$work/runroot" --storage-driver vfs)
pm() { podman "${STORE[@]}" --runtime runc --cgroup-manager cgroupfs --events-backend file "$@"; }
bh() { buildah "${STORE[@]}" "$@"; }
# podman's default limits (nofile 1048576, nproc max) cannot be set without
# CAP_SYS_RESOURCE; ask for what this shell has.
hard_nofile=$(ulimit -Hn)
[ "$hard_nofile" = unlimited ] && hard_nofile=65536
NOFILE=$((hard_nofile < 65536 ? hard_nofile : 65536))
# As the manifests run it: securityContext runAsUser 65532, readOnlyRootFilesystem,
# capabilities drop ALL, allowPrivilegeEscalation false; hostNetwork (daemonset.yaml).
RUN_AS_K8S=(--user 65532:65532 --read-only --read-only-tmpfs=false --cap-drop=ALL
    --security-opt no-new-privileges --network host
    --ulimit "nofile=$NOFILE:$NOFILE" --ulimit nproc=4096:4096)

cleanup() {
    local rc=$?
    pm rm -f -t 0 "$NAME" >/dev/null 2>&1
    local m
    for m in "${MASTERS[@]}"; do kill "$m" 2>/dev/null; done
    pm rmi -a -f >/dev/null 2>&1
    if [ "$rc" -eq 0 ] && [ -z "${DTP_KEEP:-}" ]; then
        rm -rf "$work"
    else
        echo "kept for inspection: $work (proxy.log, master*.log)" >&2
    fi
    exit "$rc"
}
trap cleanup EXIT

free_port() { "$PY" -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'; }
LISTEN_PORT=$(free_port)
ADMIN_PORT=$(free_port)
ADMIN=http://127.0.0.1:$ADMIN_PORT
relay() { "$PY" "$REAL_DIR/client.py" echo "$@"; }
http_code() { curl -s -o /dev/null -w '%{http_code}' --max-time 5 "$ADMIN$1"; }
http_is() { [ "$(http_code "$1")" = "$2" ]; }
metric() { curl -sf --max-time 5 "$ADMIN/metrics" | awk -v m="$1" '$1 == m { print $2 }'; }
metric_is() { [ "$(metric "$1")" = "$2" ]; }
has() { grep "$@" >/dev/null; }
lines() { if [ -e "$1" ]; then wc -l <"$1"; else echo 0; fi; }
not_running() { [ "$(pm inspect --format '{{.State.Running}}' "$NAME" 2>/dev/null)" != true ]; }

# start_master N: a TLS echo master with its own CA (certs in $work/caN), no client auth.
start_master() {
    local n=$1
    make_certs "$work/ca$n" || return 1
    "$PY" "$REAL_DIR/master.py" --cert "$work/ca$n/master.crt" --key "$work/ca$n/master.key" \
        --port-file "$work/master$n.port" --log "$work/master$n.log" 2>"$work/master$n.err" &
    MASTERS+=($!)
    wait_until 10 "master $n to listen" test -s "$work/master$n.port"
}

# generation N: a Kubernetes-style volume generation ..genN with tls-proxy.yaml (master N)
# and master.crt (CA N). publish N: swap ..data to it atomically, as the kubelet does.
generation() {
    local n=$1 d=$work/etc/..gen$1
    mkdir -p "$d"
    cat >"$d/tls-proxy.yaml" <<EOF
# tests/real/container.sh, generation $n
master_host: 127.0.0.1
master_port: $(cat "$work/master$n.port")
security:
  tls:
    enabled: true
    master_cert: /etc/determined/master.crt
    master_cert_name: det-master.example.com
listeners:
  - name: task
    listen: 127.0.0.1:$LISTEN_PORT
    present_client_cert: false
admin:
  listen: 127.0.0.1:$ADMIN_PORT
log:
  format: json
EOF
    install -m 0644 "$work/ca$n/ca.crt" "$d/master.crt"
    chmod 0755 "$d"
    chmod 0644 "$d/tls-proxy.yaml"
}
publish() {
    ln -sfn "..gen$1" "$work/etc/..data_tmp"
    mv -T "$work/etc/..data_tmp" "$work/etc/..data"
    ln -sfn ..data/tls-proxy.yaml "$work/etc/tls-proxy.yaml"
    ln -sfn ..data/master.crt "$work/etc/master.crt"
}

setup() {
    start_master 1 || exit 1
    start_master 2 || exit 1
    mkdir -p "$work/etc"
    chmod 0755 "$work/etc"
    generation 1
    generation 2
    publish 1
    say "masters on 127.0.0.1:$(cat "$work/master1.port") (CA 1) and :$(cat "$work/master2.port") (CA 2); proxy on :$LISTEN_PORT, admin :$ADMIN_PORT"
}

# === Checks ===

check_image_builds_from_scratch_offline() {
    local rc=0 ctr files
    sh "$ROOT/deploy/rootfs.sh" "$BIN" "$work/rootfs" >"$work/rootfs.log" 2>&1 || { err "deploy/rootfs.sh: $(cat "$work/rootfs.log")"; return 1; }
    ctr=$(bh from scratch) || return 1
    bh copy "$ctr" "$work/rootfs" /out >/dev/null || rc=1
    bh commit -q "$ctr" "$ROOTFS_IMAGE" >/dev/null || rc=1
    bh rm "$ctr" >/dev/null
    [ "$rc" -eq 0 ] || { err "could not make $ROOTFS_IMAGE"; return 1; }
    # --pull=never: a base image that is not local fails at once instead of reaching out.
    if ! (cd "$ROOT" && bh build --pull=never --layers=false --ignorefile deploy/Dockerfile.dockerignore \
        --build-arg BINARY_FROM="$ROOTFS_IMAGE" -f deploy/Dockerfile -t "$IMAGE" .) >"$work/build.log" 2>&1; then
        tail -20 "$work/build.log" >&2
        err "buildah build failed"
        return 1
    fi
    [ "$(pm image inspect --format '{{.Config.User}}' "$IMAGE")" = 65532:65532 ] || { err "User: $(pm image inspect --format '{{.Config.User}}' "$IMAGE")"; rc=1; }
    pm image inspect --format '{{.Config.Entrypoint}} {{.Config.Cmd}}' "$IMAGE" |
        has -x '\[/usr/local/bin/det-tls-proxy\] \[run --config /etc/determined/tls-proxy.yaml\]' ||
        { err "Entrypoint/Cmd: $(pm image inspect --format '{{.Config.Entrypoint}} {{.Config.Cmd}}' "$IMAGE")"; rc=1; }
    # Exactly what rootfs.sh gathered plus the default configuration: no shell, nothing else.
    pm create --name "$NAME-files" "$IMAGE" >/dev/null || return 1
    files=$(pm export "$NAME-files" | tar -t | sed 's|/$||' | sort)
    pm rm "$NAME-files" >/dev/null
    printf '%s\n' "$files" >"$work/image-files.txt"
    for f in usr/local/bin/det-tls-proxy etc/ssl/certs/ca-certificates.crt etc/passwd etc/determined/tls-proxy.yaml tmp; do
        printf '%s\n' "$files" | has -x "$f" || { err "the image lacks /$f"; rc=1; }
    done
    printf '%s\n' "$files" | has -E '^(usr/)?bin/(sh|bash|dash|busybox)$' && { err "the image has a shell"; rc=1; }
    IMAGE_BYTES=$(pm image inspect --format '{{.Size}}' "$IMAGE")
    say "image $IMAGE: $((IMAGE_BYTES / 1000000)) MB ($IMAGE_BYTES bytes), $(printf '%s\n' "$files" | wc -l) paths; binary $((($(stat -c %s "$BIN") + 500000) / 1000000)) MB"
    return "$rc"
}

check_demo_read_only_non_root() {
    # `demo` writes its stand-in master's certificate to /tmp: a tmpfs there (podman's
    # --read-only default), as an emptyDir would be in Kubernetes. Everything else as K8s.
    local out rc=0
    out=$(pm run --rm --user 65532:65532 --read-only --cap-drop=ALL --security-opt no-new-privileges \
        --network host --ulimit "nofile=$NOFILE:$NOFILE" --ulimit nproc=4096:4096 "$IMAGE" demo 2>&1) ||
        { err "demo exited non-zero"; rc=1; }
    printf '%s\n' "$out" >"$work/demo.log"
    for kind in HTTP/1.1 WebSocket HTTP/2; do
        printf '%s\n' "$out" | has -E "^$kind +ok " || { err "demo: no '$kind ok' line"; rc=1; }
    done
    [ "$rc" -eq 0 ] || printf '%s\n' "$out" | tail -15 >&2
    return "$rc"
}

check_run_against_host_master() {
    local rc=0 pid st before
    pm run -d --name "$NAME" "${RUN_AS_K8S[@]}" -v "$work/etc:/etc/determined:ro" "$IMAGE" >/dev/null ||
        { err "podman run failed"; return 1; }
    pm logs -f "$NAME" >"$work/proxy.log" 2>&1 &
    wait_until 20 "/readyz 200" http_is /readyz 200 || { tail -5 "$work/proxy.log" >&2; return 1; }
    before=$(lines "$work/master1.log")
    relay "127.0.0.1:$LISTEN_PORT" >/dev/null || { err "relay to master 1"; rc=1; }
    [ "$(lines "$work/master1.log")" -gt "$before" ] || { err "master 1 saw no connection"; rc=1; }
    # As the kubelet would run it, seen from /proc.
    pid=$(pm inspect --format '{{.State.Pid}}' "$NAME")
    st=/proc/$pid/status
    [ "$(awk '/^Uid:/ {print $2 $3}' "$st")" = 6553265532 ] || { err "$(grep Uid "$st")"; rc=1; }
    [ "$(awk '/^CapEff:/ {print $2}' "$st")" = 0000000000000000 ] || { err "$(grep CapEff "$st")"; rc=1; }
    [ "$(awk '/^CapBnd:/ {print $2}' "$st")" = 0000000000000000 ] || { err "$(grep CapBnd "$st")"; rc=1; }
    [ "$(awk '/^NoNewPrivs:/ {print $2}' "$st")" = 1 ] || { err "$(grep NoNewPrivs "$st")"; rc=1; }
    awk '$5 == "/" { print $6 }' "/proc/$pid/mountinfo" | tail -1 | has -E '^ro(,|$)' || { err "root file system not read-only"; rc=1; }
    awk '$5 == "/etc/determined" { print $6 }' "/proc/$pid/mountinfo" | tail -1 | has -E '^ro(,|$)' || { err "/etc/determined not mounted read-only"; rc=1; }
    awk '$5 == "/tmp" { print }' "/proc/$pid/mountinfo" | has . && { err "a tmpfs on /tmp (the run must not need one)"; rc=1; }
    [ "$(http_code /healthz)" = 200 ] || { err "/healthz: $(http_code /healthz)"; rc=1; }
    return "$rc"
}

check_reload_on_secret_symlink_swap() {
    # The kubelet's update of a Secret/ConfigMap volume: a new ..genN directory, then
    # ..data swapped to it with one rename. Here generation 2 names another master with
    # another CA: only a reload of both files lets connections through.
    local rc=0 n pid before
    pid=$(pm inspect --format '{{.State.Pid}}' "$NAME")
    n=$(metric 'det_tls_proxy_config_reloads_total{result="success"}')
    n=${n:-0}
    publish 2
    wait_until 15 "a reload after the ..data swap" metric_is 'det_tls_proxy_config_reloads_total{result="success"}' $((n + 1)) || rc=1
    before=$(lines "$work/master2.log")
    relay "127.0.0.1:$LISTEN_PORT" >/dev/null || { err "relay after the swap"; rc=1; }
    [ "$(lines "$work/master2.log")" -gt "$before" ] || { err "master 2 (the new generation) saw no connection"; rc=1; }
    [ "$(pm inspect --format '{{.State.Pid}}' "$NAME")" = "$pid" ] || { err "the container restarted"; rc=1; }
    wait_until 20 "/readyz 200 against master 2" http_is /readyz 200 || rc=1
    return "$rc"
}

check_sigterm_drains_then_exits_0() {
    local rc=0 holder t0 t1 code
    rm -f "$work/ready" "$work/go"
    "$PY" "$REAL_DIR/client.py" hold "127.0.0.1:$LISTEN_PORT" --ready "$work/ready" --go "$work/go" --timeout 60 >/dev/null &
    holder=$!
    wait_until 10 "the held connection's first round trip" test -e "$work/ready" || rc=1
    t0=$(now_ms)
    pm kill --signal TERM "$NAME" >/dev/null || { err "podman kill --signal TERM"; rc=1; }
    wait_until 5 "the listener to close" bash -c "! $PY $REAL_DIR/client.py echo 127.0.0.1:$LISTEN_PORT --timeout 1" || rc=1
    # /readyz: 503 from the first SIGTERM (docs/interface.md), /healthz stays 200.
    if poll_until 3 http_is /readyz 503; then
        READYZ_WHILE_DRAINING=503
    else
        READYZ_WHILE_DRAINING=$(http_code /readyz)
    fi
    [ "$(http_code /healthz)" = 200 ] || { err "/healthz while draining: $(http_code /healthz)"; rc=1; }
    not_running && { err "exited with a connection open"; rc=1; }
    touch "$work/go"
    wait "$holder" || { err "the held connection broke during the drain"; rc=1; }
    wait_until 10 "the container to exit" not_running || rc=1
    t1=$(now_ms)
    code=$(pm inspect --format '{{.State.ExitCode}}' "$NAME")
    [ "$code" = 0 ] || { err "exit code $code"; rc=1; }
    [ $((t1 - t0)) -lt 30000 ] || { err "drain took $((t1 - t0)) ms (it waited for timeouts.shutdown)"; rc=1; }
    say "SIGTERM with one open connection: drained and exited $code in $((t1 - t0)) ms"
    return "$rc"
}

check_readyz_503_while_draining() {
    # Measured during check_sigterm_drains_then_exits_0.
    [ "${READYZ_WHILE_DRAINING:-unmeasured}" = 503 ] || { err "/readyz answered ${READYZ_WHILE_DRAINING:-nothing} after SIGTERM; it must answer 503 while draining"; return 1; }
}

setup
IMAGE_BYTES=
run_check check_image_builds_from_scratch_offline
run_check check_demo_read_only_non_root
run_check check_run_against_host_master
run_check check_reload_on_secret_symlink_swap
run_check check_sigterm_drains_then_exits_0
run_check check_readyz_503_while_draining
summary "tests/real/container.sh (podman $(podman --version | awk '{print $3}'), image ${IMAGE_BYTES:+$((IMAGE_BYTES / 1000000)) MB}, $(basename "$BIN"))" || exit 1
