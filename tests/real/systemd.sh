#!/usr/bin/env bash
# The systemd units under a real systemd 252: boots a minimal Debian 12 (debootstrap, cached)
# with systemd-nspawn, installs the binary, the units and the example configuration exactly
# as README.md "### systemd" says, and checks from outside what each unit directive is for.
#
#   tests/real/systemd.sh [BINARY]        (default: $DET_TLS_PROXY_BIN, else target/debug/det-tls-proxy)
#
# Needs root, debootstrap, systemd-container (systemd-nspawn), util-linux (nsenter),
# openssl, curl, python3, and the Debian mirror once (the root file system is cached in
# $DTP_REAL_CACHE, default /var/cache/det-tls-proxy-real). The container has a private
# network namespace (only lo): the test master, the clients and curl run on the host
# inside that namespace (nsenter --net), so nothing here collides with the host's ports.
# Exit status: 0 every check passed, 1 a check failed, 77 cannot run on this machine (skip).
set -uo pipefail
# shellcheck source=tests/real/lib.sh
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

BIN=${1:-${DET_TLS_PROXY_BIN:-$ROOT/target/debug/det-tls-proxy}}
CACHE=${DTP_REAL_CACHE:-/var/cache/det-tls-proxy-real}
MIRROR=${DTP_DEBIAN_MIRROR:-http://deb.debian.org/debian}
# The guest: what debootstrap installs. Changing the list changes the cache's name.
GUEST_PACKAGES=systemd,systemd-sysv,dbus
ROOTFS_CACHE=$CACHE/rootfs-bookworm-minbase-${GUEST_PACKAGES//,/-}
SVC=det-tls-proxy.service
SOCK=det-tls-proxy.socket
TSOCK=det-tls-proxy-tasks.socket
ADMIN=http://127.0.0.1:9090
SHUTDOWN_TIMEOUT=30   # timeouts.shutdown, the default
WATCHDOG=30           # WatchdogSec= in the unit
RESTART_SEC=2         # RestartSec= in the unit

# === Prerequisites (a missing one is a skip; .ci/run makes a skip fail) ===
[ "$(id -u)" -eq 0 ] || skip "needs root (debootstrap, systemd-nspawn, nsenter)"
for tool in debootstrap systemd-nspawn nsenter openssl curl python3; do
    command -v "$tool" >/dev/null 2>&1 || skip "$tool not found (apt-get install debootstrap systemd-container util-linux openssl curl python3)"
done
[ -x "$BIN" ] || { echo "FAIL: binary $BIN not found or not executable (build it first: cargo test --locked --no-run)" >&2; exit 1; }
BIN=$(readlink -f "$BIN")

work=$(mktemp -d /var/tmp/det-tls-proxy-systemd.XXXXXX)
guest_root=$work/root
NSPAWN_PID=
MASTER_PID=
L=  # the container's PID 1, as the host sees it
AGENT_CG=  # the cgroup the agent's clients run in (agent_cgroup)

cleanup() {
    local rc=$?
    if [ -n "$L" ] && [ -d "/proc/$L" ]; then
        g journalctl --no-pager -o short-monotonic >"$work/journal.txt" 2>&1
    fi
    [ -n "$MASTER_PID" ] && kill "$MASTER_PID" 2>/dev/null
    # The agent's clients have exited: their cgroups go before the guest's tree does.
    [ -n "${AGENT_CG:-}" ] && rmdir "$AGENT_CG" "${AGENT_CG%/*}" 2>/dev/null
    if [ -n "$NSPAWN_PID" ] && kill -0 "$NSPAWN_PID" 2>/dev/null; then
        # SIGTERM: nspawn asks the container's systemd to power off.
        kill -TERM "$NSPAWN_PID" 2>/dev/null
        wait_until 30 "the container to power off" bash -c "! kill -0 $NSPAWN_PID" ||
            kill -KILL "$NSPAWN_PID" 2>/dev/null
        wait "$NSPAWN_PID" 2>/dev/null
    fi
    if [ "$rc" -eq 0 ] && [ -z "${DTP_KEEP:-}" ]; then
        rm -rf "$work"
    else
        echo "kept for inspection: $work (journal.txt: the guest's journal; console.log; master.log)" >&2
    fi
    exit "$rc"
}
trap cleanup EXIT

# g CMD...: run CMD inside the container (every namespace), with a clean environment.
g() { nsenter -t "$L" -a env -i PATH=/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin SYSTEMD_COLORS=0 SYSTEMD_PAGER= "$@"; }
# inns CMD...: run a host program in the container's network namespace only.
inns() { nsenter --net="/proc/$L/ns/net" "$@"; }
prop() { g systemctl show -P "$2" "$1"; }
# has PATTERN: grep that reads all of its input (grep -q would SIGPIPE the writer, and
# pipefail would turn a match into a failure).
has() { grep "$@" >/dev/null; }
state() { prop "$SVC" ActiveState; }
is_state() { [ "$(state)" = "$1" ]; }
# relay ADDR [ARGS]: an echo client on the host, in the container's network namespace, run as
# the agent: inside a cgroup named determined-agent.service in the guest's cgroup tree (see
# agent_cgroup), so the example's present_client_cert: [{unit: determined-agent.service}]
# gives it the agent's certificate.
relay() { inns sh -c 'echo $$ > "$0/cgroup.procs" && exec "$@"' "$AGENT_CG" "$PY" "$REAL_DIR/client.py" echo "$@"; }
# relay_other ADDR [ARGS]: the same client as any other process of the host.
relay_other() { inns "$PY" "$REAL_DIR/client.py" echo "$@"; }
http_code() { inns curl -s -o /dev/null -w '%{http_code}' --max-time 5 "$ADMIN$1"; }
metric() { inns curl -sf --max-time 5 "$ADMIN/metrics" | awk -v m="$1" '$1 == m { print $2 }'; }
metric_is() { [ "$(metric "$1")" = "$2" ]; }
metric_at_least() { local v; v=$(metric "$1"); [ -n "$v" ] && awk -v v="$v" -v w="$2" 'BEGIN { exit !(v >= w) }'; }
cursor() { g journalctl -n 0 --show-cursor -q | sed -n 's/^-- cursor: //p'; }
journal_since() { g journalctl --no-pager -o cat -u "$SVC" --after-cursor="$1"; }
# The host's pid of a pid in the container's pid namespace.
hostpid() {
    local want=$1 f p
    for f in /proc/[0-9]*/status; do
        p=${f#/proc/}
        p=${p%/status}
        if awk -v w="$want" '$1 == "NSpid:" && NF == 3 && $3 == w { found = 1 } END { exit !found }' "$f" 2>/dev/null &&
            [ "$(readlink "/proc/$p/ns/pid")" = "$(readlink "/proc/$L/ns/pid")" ]; then
            echo "$p"
            return 0
        fi
    done
    return 1
}
proxy_hostpid() { hostpid "$(prop "$SVC" MainPID)"; }

# Configuration variants, written into the guest's /etc/determined/tls-proxy.yaml.
EXAMPLE=$ROOT/deploy/examples/agent-host.yaml
config_readme() { install -m 0644 "$EXAMPLE" "$guest_root/etc/determined/tls-proxy.yaml"; }
config_append() { printf '%s\n' "$@" >>"$guest_root/etc/determined/tls-proxy.yaml"; }
dropin() { # dropin NAME CONTENT...: a drop-in for the service under /run (gone at reboot).
    local name=$1
    shift
    g mkdir -p "/run/systemd/system/$SVC.d"
    printf '%s\n' "[Service]" "$@" | g sh -c "cat > /run/systemd/system/$SVC.d/$name.conf"
    g systemctl daemon-reload
}
dropin_remove() { g rm -f "/run/systemd/system/$SVC.d/$1.conf" && g systemctl daemon-reload; }
# Slow start: the same ExecStart, two seconds later. Readiness must wait for it.
SLOW=("ExecStart=" "ExecStart=/bin/sh -c 'sleep 2; exec /usr/local/bin/det-tls-proxy run --config /etc/determined/tls-proxy.yaml'")

restart_clean() { # a running service in a known state
    g systemctl reset-failed "$SVC" 2>/dev/null
    g systemctl restart "$SVC" && is_state active
}

# === Setup: the guest root file system, booted ===
setup() {
    if [ ! -x "$ROOTFS_CACHE/usr/lib/systemd/systemd" ]; then
        say "debootstrap --variant=minbase --include=$GUEST_PACKAGES bookworm (cached in $ROOTFS_CACHE)"
        mkdir -p "$CACHE"
        rm -rf "$ROOTFS_CACHE.tmp"
        if ! debootstrap --variant=minbase --include="$GUEST_PACKAGES" bookworm "$ROOTFS_CACHE.tmp" "$MIRROR" >"$work/debootstrap.log" 2>&1; then
            tail -5 "$work/debootstrap.log" >&2
            skip "debootstrap of Debian bookworm from $MIRROR failed (log: $work/debootstrap.log)"
        fi
        mv "$ROOTFS_CACHE.tmp" "$ROOTFS_CACHE"
    fi
    cp -a --reflink=auto "$ROOTFS_CACHE" "$guest_root" || { echo "FAIL: copy the root file system" >&2; exit 1; }
    # Markers the sandbox must hide, and a modules directory ProtectKernelModules= must hide.
    echo marker >"$guest_root/root/dtp-marker"
    mkdir -p "$guest_root/home/someone" "$guest_root/usr/lib/modules/dtp-test"
    echo marker >"$guest_root/home/someone/dtp-marker"
    echo marker >"$guest_root/usr/lib/modules/dtp-test/dtp-marker"
    install -D -m 0644 "$REAL_DIR/probe.pl" "$guest_root/usr/local/lib/det-tls-proxy-test/probe.pl"
    # A stand-in for the Determined agent: records the proxy's state when it starts.
    cat >"$guest_root/etc/systemd/system/determined-agent.service" <<'EOF'
[Unit]
Description=stand-in for the Determined agent (tests/real/systemd.sh)
[Service]
Type=oneshot
RemainAfterExit=yes
ExecStart=/bin/sh -c 'systemctl show -P ActiveState det-tls-proxy.service > /run/agent-saw-proxy'
EOF

    say "boot: systemd-nspawn --boot --private-network"
    systemd-nspawn -D "$guest_root" --boot --register=no --keep-unit --private-network \
        --console=passive --machine="dtp-real-$$" >"$work/console.log" 2>&1 &
    NSPAWN_PID=$!
    wait_until 30 "systemd-nspawn to start the container's init" \
        bash -c "pgrep -P $NSPAWN_PID >/dev/null" || skip "systemd-nspawn did not start ($(tail -3 "$work/console.log"))"
    L=$(pgrep -P "$NSPAWN_PID" | head -1)
    local booted
    wait_until 60 "systemd's private bus in the container" test -S "/proc/$L/root/run/systemd/private" ||
        skip "systemd in the container did not start ($(tail -3 "$work/console.log"))"
    booted=$(timeout 90 nsenter -t "$L" -a systemctl is-system-running --wait 2>&1)
    case "$booted" in
        running | degraded) say "guest: systemd $(g systemctl --version | awk 'NR==1 {print $2}') $booted" ;;
        *) tail -20 "$work/console.log" >&2; skip "systemd in the container did not boot: $booted" ;;
    esac
    [ "$booted" = degraded ] && g systemctl --failed --no-legend >&2

    agent_cgroup
    make_certs "$work/certs" || exit 1
    # nsenter itself, not the inns function: $! must be the server's pid (it execs).
    nsenter --net="/proc/$L/ns/net" "$PY" "$REAL_DIR/master.py" --cert "$work/certs/master.crt" --key "$work/certs/master.key" \
        --client-ca "$work/certs/ca.crt" --client-cert-optional --port-file "$work/master.port" --log "$work/master.log" \
        2>"$work/master.err" &
    MASTER_PID=$!
    wait_until 10 "the test master to listen" test -s "$work/master.port" || exit 1
    MASTER_PORT=$(cat "$work/master.port")
    say "test master (mutual TLS) on 127.0.0.1:$MASTER_PORT in the container's network namespace"
}

# The agent as the proxy in the guest sees it: a cgroup named determined-agent.service under
# the guest's own cgroup tree (the root of its cgroup namespace), made from the host beside the
# guest systemd's slices (dtp-test.slice, which its units never use). The proxy finds a TCP
# client's cgroup through the socket tables (NETLINK_SOCK_DIAG) and walks its /sys/fs/cgroup.
agent_cgroup() {
    local mnt guest
    mnt=$(awk '{ for (i = 1; i <= NF; i++) if ($i == "-") { if ($(i + 1) == "cgroup2" && $4 == "/") print $5; break } }' /proc/self/mountinfo | head -1)
    [ -n "$mnt" ] || skip "no cgroup2 hierarchy on the host: the agent's clients cannot be placed in the guest's tree"
    guest=$(awk -F: '$1 == "0" { print $3 }' "/proc/$L/cgroup")
    guest=${guest%/init.scope}
    AGENT_CG=$mnt${guest%/}/dtp-test.slice/determined-agent.service
    mkdir -p "$AGENT_CG" || { echo "FAIL: cannot make $AGENT_CG" >&2; exit 1; }
    say "the agent's clients run in cgroup $AGENT_CG (the guest's ${guest:-/})"
}

# === The README's installation, verbatim ===
readme_install() {
    # Files the service reads as its transient user: 0644. The client key: root-only, 0600.
    install -d -m 0755 "$guest_root/etc/determined"
    sed -e 's/^master_host: .*/master_host: 127.0.0.1/' -e "s/^master_port: .*/master_port: $MASTER_PORT/" \
        "$ROOT/deploy/examples/agent.tls.yaml" >"$guest_root/etc/determined/agent.tls.yaml"
    chmod 0644 "$guest_root/etc/determined/agent.tls.yaml"
    install -m 0644 "$work/certs/ca.crt" "$guest_root/etc/determined/master.crt"
    install -m 0644 "$work/certs/agent.crt" "$guest_root/etc/determined/agent.crt"
    install -m 0600 "$work/certs/agent.key" "$guest_root/etc/determined/agent.key"
    # README "### Install" and "### systemd":
    install -m 0755 "$BIN" "$guest_root/usr/local/bin/det-tls-proxy"
    (cd "$ROOT" && install -m 0644 systemd/det-tls-proxy.service systemd/det-tls-proxy.socket systemd/det-tls-proxy-tasks.socket "$guest_root/etc/systemd/system/")
    install -m 0644 "$EXAMPLE" "$guest_root/etc/determined/tls-proxy.yaml"
    g sh -c 'systemctl daemon-reload && systemctl enable --now det-tls-proxy' >"$work/enable.log" 2>&1
}

# === Checks ===

check_guest_lacks_bin_kill() {
    # The point of the ExecReload= fix: a minimal Debian has no /bin/kill (procps).
    if g test -e /bin/kill || g test -e /usr/bin/kill; then
        err "the guest has /bin/kill: this run would not show that reload works without it"
        return 1
    fi
    g sh -c 'command -v kill' | has -x kill || { err "dash has no kill builtin?"; return 1; }
}

check_readme_install_enable_now() {
    readme_install || { err "README install failed: $(cat "$work/enable.log")"; return 1; }
    is_state active || { err "after enable --now: $(state)"; return 1; }
    [ "$(g systemctl is-enabled "$SVC")" = enabled ] || { err "not enabled"; return 1; }
    # WantedBy=multi-user.target
    g test -L "/etc/systemd/system/multi-user.target.wants/$SVC" || { err "no multi-user.target.wants link"; return 1; }
    g systemctl show -P Wants multi-user.target | tr ' ' '\n' | has -x "$SVC" || { err "multi-user.target does not want $SVC"; return 1; }
    # Also=: enabling the service enables both sockets; Requires=: starting it started them.
    local u
    for u in "$SOCK" "$TSOCK"; do
        [ "$(g systemctl is-enabled "$u")" = enabled ] || { err "$u not enabled with the service (Also=)"; return 1; }
        [ "$(prop "$u" ActiveState)" = active ] || { err "$u not started with the service (Requires=)"; return 1; }
    done
}

check_type_notify_active_only_once_bound() {
    # With a start-up made two seconds slower, `systemctl start` must block until READY=1,
    # and every listener must accept the moment it returns (no retry, no wait).
    g systemctl stop "$SVC"
    dropin slow "${SLOW[@]}"
    local t0 t1 rc=0
    t0=$(now_ms)
    g systemctl start "$SVC" || { err "systemctl start failed"; rc=1; }
    t1=$(now_ms)
    if [ "$rc" -eq 0 ]; then
        relay 127.0.0.1:8080 --timeout 2 >/dev/null || { err "agent listener not serving when start returned"; rc=1; }
        [ "$(http_code /healthz)" = 200 ] || { err "admin /healthz not answering when start returned"; rc=1; }
        g test -S /run/det-tls-proxy/logs.sock || { err "unix listener not bound when start returned"; rc=1; }
        [ $((t1 - t0)) -ge 2000 ] || { err "systemctl start returned after $((t1 - t0)) ms, before the proxy could be ready (Type=notify?)"; rc=1; }
        say "systemctl start (2 s slow start) returned after $((t1 - t0)) ms; listeners were bound"
        prop "$SVC" StatusText | has 'ready' || { err "no STATUS= text: $(prop "$SVC" StatusText)"; rc=1; }
    fi
    dropin_remove slow
    restart_clean || { err "restart without the slow start failed"; return 1; }
    return "$rc"
}

check_before_determined_agent() {
    # The stand-in agent records the proxy's state when it starts; with both start jobs
    # queued, Before= makes the agent's wait for the proxy's READY=1.
    g systemctl stop "$SVC" determined-agent.service
    g rm -f /run/agent-saw-proxy
    dropin slow "${SLOW[@]}"
    # Both start jobs queued (as at boot); the proxy takes two seconds to become ready.
    g systemctl start --no-block "$SVC"
    g systemctl start determined-agent.service
    local saw
    saw=$(g cat /run/agent-saw-proxy 2>/dev/null)
    dropin_remove slow
    g systemctl stop determined-agent.service
    restart_clean || return 1
    [ "$saw" = active ] || { err "the agent started while the proxy was '$saw' (Before=determined-agent.service)"; return 1; }
}

check_relay_mutual_tls_key_through_loadcredential() {
    local rc=0 before pid env
    before=$(grep -c 'client CN=agent' "$work/master.log" 2>/dev/null)
    relay 127.0.0.1:8080 >/dev/null || { err "relay through the agent listener (TCP)"; rc=1; }
    [ "$(grep -c 'client CN=agent' "$work/master.log")" -ge $((before + 1)) ] || { err "the master saw no client certificate CN=agent from the agent's unit"; rc=1; }
    # The agent's identity is the agent's alone (AF_NETLINK: the socket tables say whose a
    # client is): another process on the agent listener, and the log shippers' unix socket,
    # are relayed without it.
    before=$(grep -c 'client CN=agent' "$work/master.log")
    relay_other 127.0.0.1:8080 >/dev/null || { err "relay of another process through the agent listener"; rc=1; }
    relay "unix:/proc/$L/root/run/det-tls-proxy/logs.sock" >/dev/null || { err "relay through the unix listener in RuntimeDirectory"; rc=1; }
    [ "$(grep -c 'client CN=agent' "$work/master.log")" -eq "$before" ] || { err "a client other than the agent's unit was given the agent's certificate"; rc=1; }
    # The key on disk is root-only; the service reads systemd's private copy.
    [ "$(stat -c '%a %U' "$guest_root/etc/determined/agent.key")" = "600 root" ] || { err "agent.key is not 0600 root"; rc=1; }
    pid=$(proxy_hostpid) || { err "no proxy process"; return 1; }
    env=$(tr '\0' '\n' <"/proc/$pid/environ" | grep '^DET_SECURITY_TLS_CLIENT_KEY=')
    [ "$env" = "DET_SECURITY_TLS_CLIENT_KEY=/run/credentials/$SVC/client.key" ] || { err "environment: '$env'"; rc=1; }
    [ -r "/proc/$pid/root/run/credentials/$SVC/client.key" ] || { err "no credential in the service's namespace"; rc=1; }
    [ "$(http_code /readyz)" = 200 ] || { err "/readyz: $(http_code /readyz)"; rc=1; }
    return "$rc"
}

check_dynamic_user_reads_0644_files() {
    local pid uid rc=0 f
    pid=$(proxy_hostpid) || { err "no proxy process"; return 1; }
    uid=$(awk '/^Uid:/ {print $2}' "/proc/$pid/status")
    # systemd's dynamic range, as the guest sees it (the container has no user namespace).
    { [ "$uid" -ge 61184 ] && [ "$uid" -le 65519 ]; } || { err "uid $uid is not a dynamic user"; rc=1; }
    for f in tls-proxy.yaml agent.tls.yaml master.crt agent.crt; do
        [ "$(stat -c '%a %U' "$guest_root/etc/determined/$f")" = "644 root" ] || { err "$f is not 0644 root"; rc=1; }
    done
    say "proxy runs as uid $uid ($(prop "$SVC" User 2>/dev/null)); reads 0644 files, the key via LoadCredential"
    return "$rc"
}

# ns_sees PID PATH: the path exists in the mount namespace of host pid PID.
ns_sees() { [ -e "/proc/$1/root$2" ]; }
# mount_opts PID PATH: the options and line of the mount at exactly PATH (the last one).
mount_opts() { awk -v p="$2" '$5 == p { o = $6 " " $0 } END { print o }' "/proc/$1/mountinfo"; }
# mount_covering PID PATH: the same for the mount PATH lives on.
mount_covering() {
    awk -v p="$2" '{ m = $5; if ((p == m || index(p, m == "/" ? "/" : m "/") == 1) && length(m) >= best) { best = length(m); o = $6 " " $0 } } END { print o }' "/proc/$1/mountinfo"
}

check_sandbox_seen_from_proc() {
    local pid rc=0 st
    pid=$(proxy_hostpid) || { err "no proxy process"; return 1; }
    st=/proc/$pid/status
    [ "$(awk '/^CapBnd:/ {print $2}' "$st")" = 0000000000000000 ] || { err "CapabilityBoundingSet: $(grep CapBnd "$st")"; rc=1; }
    [ "$(awk '/^CapAmb:/ {print $2}' "$st")" = 0000000000000000 ] || { err "AmbientCapabilities: $(grep CapAmb "$st")"; rc=1; }
    [ "$(awk '/^NoNewPrivs:/ {print $2}' "$st")" = 1 ] || { err "NoNewPrivileges: $(grep NoNewPrivs "$st")"; rc=1; }
    [ "$(awk '/^Seccomp:/ {print $2}' "$st")" = 2 ] || { err "no seccomp filter: $(grep Seccomp "$st")"; rc=1; }
    [ "$(awk '/^Umask:/ {print $2}' "$st")" = 0077 ] || { err "UMask: $(grep Umask "$st")"; rc=1; }
    # LimitNOFILE=65536, or the container's hard limit when that is lower (systemd cannot
    # raise it; without the directive the soft limit would be 1024).
    local hard want
    hard=$(awk '/^Max open files/ { print $5 }' "/proc/$L/limits")
    want=$((hard < 65536 ? hard : 65536))
    grep -Eq "^Max open files +$want +$want " "/proc/$pid/limits" || { err "LimitNOFILE: $(grep 'open files' "/proc/$pid/limits"), expected $want"; rc=1; }
    [ "$want" -lt 65536 ] && say "note: the container's hard limit on open files is $hard: LimitNOFILE=65536 is capped to it here"
    # ProtectSystem=strict, ReadOnlyPaths=/etc/determined, RuntimeDirectory= writable.
    mount_opts "$pid" / | has -E '^ro[, ]' || { err "/ is not read-only: $(mount_opts "$pid" /)"; rc=1; }
    mount_covering "$pid" /etc/determined | has -E '^ro[, ]' || { err "/etc/determined is not read-only: $(mount_covering "$pid" /etc/determined)"; rc=1; }
    mount_opts "$pid" /run/det-tls-proxy | has -E '^rw[, ]' || { err "/run/det-tls-proxy is not writable: $(mount_opts "$pid" /run/det-tls-proxy)"; rc=1; }
    [ "$(g stat -c %a /run/det-tls-proxy)" = 755 ] || { err "RuntimeDirectoryMode: $(g stat -c %a /run/det-tls-proxy)"; rc=1; }
    # ProtectHome=yes: not merely read-only (DynamicUser= alone), hidden.
    ns_sees "$pid" /root/dtp-marker && { err "ProtectHome: /root visible"; rc=1; }
    ns_sees "$pid" /home/someone/dtp-marker && { err "ProtectHome: /home visible"; rc=1; }
    # PrivateTmp=yes
    g sh -c 'echo x > /tmp/dtp-marker'
    ns_sees "$pid" /tmp/dtp-marker && { err "PrivateTmp: the guest's /tmp is visible"; rc=1; }
    # PrivateDevices=yes: the container's /dev has console and net/tun; a private /dev has not.
    g test -e /dev/console || { err "guest has no /dev/console to compare with"; rc=1; }
    ns_sees "$pid" /dev/console && { err "PrivateDevices: /dev/console visible"; rc=1; }
    ns_sees "$pid" /dev/null || { err "PrivateDevices: no /dev/null"; rc=1; }
    # ProtectKernelModules=yes
    ns_sees "$pid" /usr/lib/modules/dtp-test/dtp-marker && { err "ProtectKernelModules: /usr/lib/modules visible"; rc=1; }
    # ProtectControlGroups=yes
    mount_opts "$pid" /sys/fs/cgroup | has -E '^ro[, ]' || { err "/sys/fs/cgroup not read-only: $(mount_opts "$pid" /sys/fs/cgroup)"; rc=1; }
    # ProtectProc=default (a unix client's /proc/<pid>/cgroup must be readable), ProcSubset=pid
    mount_opts "$pid" /proc | has 'hidepid=' && { err "ProtectProc: other users' processes hidden: $(mount_opts "$pid" /proc)"; rc=1; }
    mount_opts "$pid" /proc | has 'subset=pid' || { err "ProcSubset: $(mount_opts "$pid" /proc)"; rc=1; }
    # ProtectHostname=yes: a UTS namespace of its own.
    [ "$(readlink "/proc/$pid/ns/uts")" != "$(readlink "/proc/$L/ns/uts")" ] || { err "ProtectHostname: shares the UTS namespace"; rc=1; }
    # ProtectKernelLogs=yes hides /proc/kmsg; ProtectKernelTunables=yes makes /proc/sys read-only:
    # both are moot under ProcSubset=pid, which removes them; checked as loaded properties.
    return "$rc"
}

check_sandbox_probe_under_the_unit() {
    # The probe runs as ExecStartPost= of the unit, so with exactly its sandbox; the
    # baseline runs it in a transient service as an ordinary unprivileged user (nobody).
    local c out base rc=0 name want got b
    c=$(cursor)
    dropin probe "ExecStartPost=/usr/bin/perl /usr/local/lib/det-tls-proxy-test/probe.pl"
    g systemctl restart "$SVC" || { err "restart with the probe failed"; rc=1; }
    out=$(journal_since "$c" | grep '^dtp-probe ')
    dropin_remove probe
    base=$(g systemd-run --wait --pipe --quiet -p User=nobody -p RuntimeDirectory=dtp-probe \
        /usr/bin/perl /usr/local/lib/det-tls-proxy-test/probe.pl 2>&1)
    printf '    %-8s %-22s %s\n' probe "under the unit" "baseline (User=nobody)" >&2
    for name in netlink:allowed vsock:blocked:EAFNOSUPPORT userns:blocked:EPERM suid:blocked:EPERM persona:blocked:EPERM wx:blocked:EPERM ptrace:blocked:EPERM; do
        want=${name#*:}
        name=${name%%:*}
        got=$(awk -v n="$name" '$2 == n { print $3 }' <<<"$out")
        b=$(awk -v n="$name" '$2 == n { print $3 }' <<<"$base")
        printf '    %-8s %-22s %s\n' "$name" "${got:-(none)}" "${b:-(none)}" >&2
        [ "$got" = "$want" ] || { err "probe $name: ${got:-no result} under the unit, expected $want"; rc=1; }
        [ "$b" = allowed ] || say "note: probe $name is not allowed in the baseline either ($b): not discriminating on this host"
    done
    restart_clean || { err "restart after the probe"; return 1; }
    relay 127.0.0.1:8080 >/dev/null || { err "relay after the probe"; rc=1; }
    return "$rc"
}

# Every directive of both units: what systemd loaded (systemctl show), as the file says.
# A misspelt directive, or one this systemd does not know, is dropped with a warning at
# load and fails here.
check_loaded_unit_properties() {
    local rc=0 line unit p want got
    while IFS='|' read -r unit p want; do
        [ -z "$unit" ] && continue
        got=$(prop "$unit" "$p")
        if [ "$got" != "$want" ]; then
            err "$unit $p: loaded '$got', expected '$want'"
            rc=1
        fi
    done <<EOF
$SVC|Description|det-tls-proxy: TLS origination to the Determined master for the agent, log shippers and tasks
$SVC|Type|notify
$SVC|NotifyAccess|main
$SVC|Restart|on-failure
$SVC|RestartUSec|2s
$SVC|RestartPreventExitStatus|2
$SVC|WatchdogUSec|30s
$SVC|TimeoutStopUSec|45s
$SVC|LimitNOFILE|65536
$SVC|LimitNOFILESoft|65536
$SVC|Environment|DET_SECURITY_TLS_CLIENT_KEY=/run/credentials/$SVC/client.key
$SVC|DynamicUser|yes
$SVC|ProtectSystem|strict
$SVC|ProtectHome|yes
$SVC|PrivateTmp|yes
$SVC|PrivateDevices|yes
$SVC|NoNewPrivileges|yes
$SVC|CapabilityBoundingSet|
$SVC|AmbientCapabilities|
$SVC|RestrictAddressFamilies|AF_INET AF_INET6 AF_NETLINK AF_UNIX
$SVC|RestrictNamespaces|yes
$SVC|RestrictRealtime|yes
$SVC|RestrictSUIDSGID|yes
$SVC|LockPersonality|yes
$SVC|MemoryDenyWriteExecute|yes
$SVC|ProtectKernelTunables|yes
$SVC|ProtectKernelModules|yes
$SVC|ProtectKernelLogs|yes
$SVC|ProtectControlGroups|yes
$SVC|ProtectClock|yes
$SVC|ProtectHostname|yes
$SVC|ProtectProc|default
$SVC|ProcSubset|pid
$SVC|SystemCallArchitectures|native
$SVC|SystemCallErrorNumber|1
$SVC|UMask|0077
$SVC|ReadOnlyPaths|/etc/determined
$SVC|RuntimeDirectory|det-tls-proxy
$SVC|RuntimeDirectoryMode|0755
$SOCK|Description|det-tls-proxy agent listener (socket activation)
$SOCK|Listen|127.0.0.1:8080 (Stream)
$SOCK|FileDescriptorName|agent
$SOCK|Triggers|$SVC
$SOCK|NoDelay|yes
$SOCK|Backlog|1024
$SOCK|FreeBind|yes
$TSOCK|Description|det-tls-proxy tasks listener on the Docker bridge (socket activation)
$TSOCK|Listen|172.17.0.1:8080 (Stream)
$TSOCK|FileDescriptorName|tasks
$TSOCK|Triggers|$SVC
$TSOCK|NoDelay|yes
$TSOCK|Backlog|1024
$TSOCK|FreeBind|yes
EOF
    # Lists: the entries the units add (systemd adds its own defaults beside them).
    for line in "$SVC|Wants|network-online.target" "$SVC|After|network-online.target" \
        "$SVC|Before|determined-agent.service" "$SOCK|Before|determined-agent.service" \
        "$TSOCK|Before|determined-agent.service" "$SVC|Requires|$SOCK" "$SVC|Requires|$TSOCK" \
        "$SVC|After|$SOCK" "$SVC|After|$TSOCK" \
        "$SVC|WantedBy|multi-user.target"; do
        IFS='|' read -r unit p want <<<"$line"
        prop "$unit" "$p" | tr ' ' '\n' | has -x "$want" || { err "$unit $p: '$(prop "$unit" "$p")' lacks $want"; rc=1; }
    done
    # ExecStart/ExecReload as loaded.
    prop "$SVC" ExecStart | has 'argv\[\]=/usr/local/bin/det-tls-proxy run --config /etc/determined/tls-proxy.yaml ;' ||
        { err "ExecStart: $(prop "$SVC" ExecStart)"; rc=1; }
    prop "$SVC" ExecReload | has -F "argv[]=/bin/sh -c kill -HUP \"\$MAINPID\" ;" ||
        { err "ExecReload: $(prop "$SVC" ExecReload)"; rc=1; }
    # @system-service, as systemd expanded it: in the set, and not.
    local filter
    filter=" $(prop "$SVC" SystemCallFilter) "
    for want in read write epoll_wait accept4 sendmsg rt_sigaction; do
        [[ "$filter" == *" $want "* ]] || { err "SystemCallFilter lacks $want"; rc=1; }
    done
    for want in ptrace mount reboot init_module kexec_load swapon; do
        [[ "$filter" == *" $want "* ]] && { err "SystemCallFilter allows $want"; rc=1; }
    done
    # The load produced no warnings about the units (unknown keys are warnings only).
    if g journalctl --no-pager -o cat -b | grep -E "det-tls-proxy\.(service|socket):[0-9]+:" >&2; then
        err "systemd warned about a unit line (above)"
        rc=1
    fi
    return "$rc"
}

check_reload_applies_without_bin_kill() {
    local rc=0 pid n c
    pid=$(prop "$SVC" MainPID)
    # 1. Nothing changed on disk: only the SIGHUP from ExecReload= can cause this reload.
    n=$(metric 'det_tls_proxy_config_reloads_total{result="success"}')
    n=${n:-0}
    c=$(cursor)
    g systemctl reload "$SVC" || { err "systemctl reload failed: $(g systemctl status "$SVC" --no-pager -n 5)"; return 1; }
    wait_until 10 "reloads_total{success} to reach $((n + 1))" metric_is 'det_tls_proxy_config_reloads_total{result="success"}' $((n + 1)) || rc=1
    journal_since "$c" | grep 'configuration reloaded' | has SIGHUP || { err "no 'configuration reloaded' (SIGHUP) in the journal"; rc=1; }
    journal_since "$c" | grep -E 'Control process exited|203/EXEC|Failed' >&2 && { err "the reload command failed"; rc=1; }
    # 2. A change on disk (a new listener), applied by systemctl reload.
    python3 - "$guest_root/etc/determined/tls-proxy.yaml" <<'PY' || { err "edit config"; return 1; }
import sys
p = sys.argv[1]
text = open(p).read()
assert "\nadmin:" in text
text = text.replace("\nadmin:", "\n  - name: reloaded\n    listen: 127.0.0.1:8082\n\nadmin:", 1)
open(p, "w").write(text)
PY
    g systemctl reload "$SVC" || { err "systemctl reload (changed config) failed"; rc=1; }
    wait_until 10 "the new listener 127.0.0.1:8082 to relay" relay 127.0.0.1:8082 --timeout 2 || rc=1
    relay 127.0.0.1:8080 >/dev/null || { err "the agent listener stopped relaying after reload"; rc=1; }
    # 3. A bad configuration: refused, the old one stays, no restart.
    n=$(metric 'det_tls_proxy_config_reloads_total{result="error"}')
    n=${n:-0}
    config_append "no_such_key: 1"
    g systemctl reload "$SVC"
    # At least one: the file watcher (2 s poll) may refuse the change before SIGHUP does too.
    wait_until 10 "reloads_total{error} to reach $((n + 1))" metric_at_least 'det_tls_proxy_config_reloads_total{result="error"}' $((n + 1)) || rc=1
    relay 127.0.0.1:8082 >/dev/null || { err "a refused reload broke relaying"; rc=1; }
    is_state active || { err "after a refused reload: $(state)"; rc=1; }
    [ "$(prop "$SVC" MainPID)" = "$pid" ] || { err "the process was replaced during reloads"; rc=1; }
    config_readme
    g systemctl reload "$SVC"
    wait_until 10 "the 8082 listener to close after restoring the config" bash -c "! nsenter --net=/proc/$L/ns/net $PY $REAL_DIR/client.py echo 127.0.0.1:8082 --timeout 1" || rc=1
    return "$rc"
}

check_stop_drains_open_connection() {
    restart_clean || return 1
    local rc=0 holder t0 t1
    rm -f "$work/ready" "$work/go"
    inns "$PY" "$REAL_DIR/client.py" hold 127.0.0.1:8080 --ready "$work/ready" --go "$work/go" --timeout 60 >/dev/null &
    holder=$!
    wait_until 10 "the held connection's first round trip" test -e "$work/ready" || rc=1
    t0=$(now_ms)
    g systemctl stop --no-block "$SVC"
    wait_until 10 "deactivating" is_state deactivating || rc=1
    # The TCP addresses are systemd's: a client there would wait in the backlog and start the
    # service again once it stopped. The unix listener is the proxy's own: it closes.
    wait_until 5 "the proxy's own listener to close (new clients refused)" \
        bash -c "! nsenter --net=/proc/$L/ns/net $PY $REAL_DIR/client.py echo unix:/proc/$L/root/run/det-tls-proxy/logs.sock --timeout 1" || rc=1
    touch "$work/go"
    wait "$holder" || { err "the held connection broke during the drain"; rc=1; }
    wait_until 10 "inactive once the last connection ended" is_state inactive || rc=1
    t1=$(now_ms)
    [ "$(prop "$SVC" Result)" = success ] || { err "Result=$(prop "$SVC" Result)"; rc=1; }
    [ "$(prop "$SVC" ExecMainStatus)" = 0 ] || { err "exit status $(prop "$SVC" ExecMainStatus)"; rc=1; }
    [ $((t1 - t0)) -lt $((SHUTDOWN_TIMEOUT * 1000)) ] || { err "stop took $((t1 - t0)) ms: it waited for the timeout, not the connection"; rc=1; }
    say "stop with one open connection: drained in $((t1 - t0)) ms"
    g systemctl start "$SVC" || rc=1
    return "$rc"
}

check_stop_deadline_within_timeoutstopsec() {
    # A client that never finishes: the proxy gives up at timeouts.shutdown (30 s) and
    # exits 0; TimeoutStopSec=45s leaves it that room (no SIGKILL, Result=success).
    restart_clean || return 1
    local rc=0 holder t0 t1 c
    rm -f "$work/ready" "$work/go"
    inns "$PY" "$REAL_DIR/client.py" hold 127.0.0.1:8080 --ready "$work/ready" --go "$work/go" --timeout 90 >/dev/null 2>&1 &
    holder=$!
    wait_until 10 "the held connection's first round trip" test -e "$work/ready" || rc=1
    c=$(cursor)
    t0=$(now_ms)
    g systemctl stop "$SVC"
    t1=$(now_ms)
    touch "$work/go"
    wait "$holder"
    [ "$(prop "$SVC" Result)" = success ] || { err "Result=$(prop "$SVC" Result) (killed by TimeoutStopSec?)"; rc=1; }
    [ "$(prop "$SVC" ExecMainStatus)" = 0 ] || { err "exit status $(prop "$SVC" ExecMainStatus)"; rc=1; }
    { [ $((t1 - t0)) -ge $(((SHUTDOWN_TIMEOUT - 1) * 1000)) ] && [ $((t1 - t0)) -lt 45000 ]; } ||
        { err "stop took $((t1 - t0)) ms; expected about ${SHUTDOWN_TIMEOUT}s"; rc=1; }
    journal_since "$c" | has 'timeouts.shutdown passed' || { err "no 'timeouts.shutdown passed' in the journal"; rc=1; }
    say "stop with a connection that never ends: exited 0 after $((t1 - t0)) ms"
    g systemctl start "$SVC" || rc=1
    return "$rc"
}

check_invalid_config_fails_exit_2_no_restart() {
    local rc=0 c t0
    g systemctl stop "$SVC"
    config_readme
    config_append "no_such_key: 1"
    c=$(cursor)
    g systemctl start "$SVC" 2>/dev/null && { err "systemctl start succeeded with an invalid configuration"; rc=1; }
    t0=$(now_ms)
    wait_until 10 "failed" is_state failed || rc=1
    [ "$(prop "$SVC" ExecMainStatus)" = 2 ] || { err "exit status $(prop "$SVC" ExecMainStatus), expected 2"; rc=1; }
    [ "$(prop "$SVC" Result)" = exit-code ] || { err "Result=$(prop "$SVC" Result)"; rc=1; }
    # No restart: a restart would come RestartSec=2s after the failure. Give it 2.5 times that.
    while [ $(($(now_ms) - t0)) -lt $((RESTART_SEC * 2500)) ]; do
        { [ "$(prop "$SVC" NRestarts)" = 0 ] && is_state failed; } || { err "restarted: NRestarts=$(prop "$SVC" NRestarts), $(state)"; rc=1; break; }
        sleep 0.2
    done
    journal_since "$c" | has 'no_such_key' || { err "the journal does not name the bad key"; rc=1; }
    say "journal: $(journal_since "$c" | grep -m1 'no_such_key' | cut -c1-160)"
    config_readme
    restart_clean || { err "could not start again with the good configuration"; rc=1; }
    return "$rc"
}

check_socket_activation_holds_first_client() {
    local rc=0 took
    g systemctl stop "$SVC"
    config_readme
    g systemctl enable --now "$SOCK" "$TSOCK" || { err "enable --now $SOCK $TSOCK"; return 1; }
    # WantedBy=sockets.target
    local u
    for u in "$SOCK" "$TSOCK"; do
        g systemctl show -P Wants sockets.target | tr ' ' '\n' | has -x "$u" || { err "sockets.target does not want $u"; rc=1; }
    done
    is_state inactive || { err "service $(state) before the first client"; rc=1; }
    # The proxy takes two seconds to come up: the first client must wait, not be refused.
    dropin slow "${SLOW[@]}"
    took=$(relay 127.0.0.1:8080 --timeout 15) || { err "the first client was not served"; rc=1; }
    say "first client through the socket: served after ${took}s (proxy start-up: 2 s + its own)"
    awk -v t="${took:-0}" 'BEGIN { exit !(t >= 2.0) }' || { err "served after ${took}s: the client did not wait for the proxy?"; rc=1; }
    is_state active || { err "the first client did not start the service: $(state)"; rc=1; }
    dropin_remove slow
    # The proxy serves on the inherited socket (not one of its own).
    prop "$SVC" TriggeredBy | has "$SOCK" || { err "TriggeredBy: $(prop "$SVC" TriggeredBy)"; rc=1; }
    prop "$SVC" TriggeredBy | has "$TSOCK" || { err "TriggeredBy: $(prop "$SVC" TriggeredBy)"; rc=1; }
    # Sockets=: the tasks socket (another unit's name) was passed and adopted as systemd:tasks,
    # on the bridge address no interface of the container has (FreeBind=yes).
    g journalctl --no-pager -o cat -u "$SVC" | grep '"message":"listening"' | grep '"listener":"tasks"' |
        has -F 'systemd:tasks (172.17.0.1:8080)' || { err "the tasks listener did not adopt det-tls-proxy-tasks.socket"; rc=1; }
    # Backlog=1024: the listening socket's queue limit (ss shows it as Send-Q).
    inns ss -Hltn 'sport = :8080' | awk '{ print $3 }' | has -x 1024 || { err "backlog: $(inns ss -Hltn 'sport = :8080')"; rc=1; }
    return "$rc"
}

check_addresses_held_while_the_proxy_is_down() {
    # With the service stopped, an ordinary user (nobody) cannot bind either TCP listener's
    # address, not even with IP_FREEBIND: the socket units hold them. Then the first client
    # starts the proxy again.
    local rc=0 out
    g systemctl stop "$SVC"
    is_state inactive || { err "service $(state) after stop"; rc=1; }
    out=$(g systemd-run --wait --pipe --quiet -p User=nobody /usr/bin/perl -MSocket -e '
        for my $a ("127.0.0.1", "172.17.0.1") {
            socket(my $s, PF_INET, SOCK_STREAM, 0) or die "socket: $!";
            setsockopt($s, 0, 15, 1) or die "IP_FREEBIND: $!";  # IPPROTO_IP, IP_FREEBIND
            if (bind($s, pack_sockaddr_in(8080, inet_aton($a)))) { print "bound $a\n" } else { print "refused $a: $!\n" }
        }' 2>&1)
    say "as nobody while the proxy is down: $(tr '\n' ';' <<<"$out")"
    for a in 127.0.0.1 172.17.0.1; do
        has -x "refused $a: Address already in use" <<<"$out" || { err "nobody could bind $a:8080 while the proxy was down: $out"; rc=1; }
    done
    relay 127.0.0.1:8080 --timeout 15 >/dev/null || { err "the first client after the stop was not served"; rc=1; }
    is_state active || { err "the first client did not start the service: $(state)"; rc=1; }
    return "$rc"
}

check_usr2_upgrade_moves_mainpid_and_keeps_the_socket() {
    # SIGUSR2 to the main process: a new process takes the sockets, systemd hears MAINPID= from
    # the old main process, the held connection finishes on the old one, nothing restarts,
    # and the new main process keeps the watchdog fed. Then again on sockets systemd started
    # before the service, leaving them active as the previous check did.
    local rc=0 pid hpid new n holder c
    g systemctl stop "$SVC" "$SOCK"
    config_readme
    restart_clean || return 1
    n=$(prop "$SVC" NRestarts)
    pid=$(prop "$SVC" MainPID)
    hpid=$(hostpid "$pid") || { err "no proxy process"; return 1; }
    rm -f "$work/ready" "$work/go"
    inns "$PY" "$REAL_DIR/client.py" hold 127.0.0.1:8080 --ready "$work/ready" --go "$work/go" --timeout 60 >/dev/null &
    holder=$!
    wait_until 10 "the held connection's first round trip" test -e "$work/ready" || rc=1
    c=$(cursor)
    g systemctl kill --signal=SIGUSR2 --kill-who=main "$SVC" || { err "systemctl kill -s USR2"; rc=1; }
    wait_until 20 "a new main process" bash -c "[ \"\$(nsenter -t $L -a systemctl show -P MainPID $SVC)\" != $pid ]" || rc=1
    new=$(prop "$SVC" MainPID)
    relay 127.0.0.1:8080 >/dev/null || { err "a new client after the upgrade was not served"; rc=1; }
    touch "$work/go"
    wait "$holder" || { err "the connection open during the upgrade broke"; rc=1; }
    wait_until 10 "the old process to exit once drained" bash -c "! kill -0 $hpid 2>/dev/null" || rc=1
    is_state active || { err "after the upgrade: $(state)"; rc=1; }
    journal_since "$c" | has "upgrade: the new process serves" || { err "no upgrade line in the journal"; rc=1; }
    journal_since "$c" | grep -E "reception only permitted for main PID|Failed" >&2 && { err "systemd refused a notification, or the unit failed"; rc=1; }
    # ExecReload signals $MAINPID: the new process.
    g systemctl reload "$SVC" || { err "reload after the upgrade"; rc=1; }
    wait_until 10 "the new process to reload" bash -c "nsenter -t $L -a journalctl --no-pager -o cat -u $SVC --after-cursor='$c' | grep 'configuration reloaded' | grep -q SIGHUP" || rc=1
    # The watchdog is the new process's: no kill after WatchdogSec.
    sleep $((WATCHDOG + 3))
    [ "$(prop "$SVC" MainPID)" = "$new" ] && [ "$(prop "$SVC" NRestarts)" = "$n" ] ||
        { err "after WatchdogSec: MainPID $(prop "$SVC" MainPID) (was $new), NRestarts $(prop "$SVC" NRestarts) (was $n)"; rc=1; }
    say "USR2: main pid $pid -> $new, held connection finished on the old one, watchdog fed by the new one"
    # Socket activation: the systemd socket is passed on too.
    g systemctl stop "$SVC"
    config_readme
    g systemctl start "$SOCK" "$TSOCK" "$SVC" || { err "start $SOCK, $TSOCK and $SVC"; return 1; }
    pid=$(prop "$SVC" MainPID)
    g systemctl kill --signal=SIGUSR2 --kill-who=main "$SVC"
    wait_until 20 "a new main process (socket activation)" bash -c "[ \"\$(nsenter -t $L -a systemctl show -P MainPID $SVC)\" != $pid ]" || rc=1
    relay 127.0.0.1:8080 >/dev/null || { err "the systemd socket did not serve after the upgrade"; rc=1; }
    prop "$SVC" TriggeredBy | has "$SOCK" || { err "TriggeredBy: $(prop "$SVC" TriggeredBy)"; rc=1; }
    return "$rc"
}

check_watchdog_kills_stopped_proxy_and_restarts() {
    # SIGSTOP: the proxy stops pinging. WatchdogSec=30s: systemd kills it (SIGABRT) and
    # Restart=on-failure starts it again after RestartSec=2s; meanwhile the socket holds
    # a client, which the new process serves.
    local rc=0 pid hpid n c t0 t1 took fail_ts start_ts
    is_state active || restart_clean || return 1
    pid=$(prop "$SVC" MainPID)
    hpid=$(hostpid "$pid") || { err "no proxy process"; return 1; }
    n=$(prop "$SVC" NRestarts)
    c=$(cursor)
    t0=$(now_ms)
    kill -STOP "$hpid"
    wait_until $((WATCHDOG + 10)) "the watchdog to fire" bash -c "[ \"\$(nsenter -t $L -a systemctl show -P Result $SVC)\" = watchdog ] || [ \"\$(nsenter -t $L -a systemctl show -P NRestarts $SVC)\" != $n ]" || rc=1
    t1=$(now_ms)
    took=$(relay 127.0.0.1:8080 --timeout 20) || { err "a client during the restart was not served"; rc=1; }
    wait_until 20 "a new main process" bash -c "[ \"\$(nsenter -t $L -a systemctl show -P ActiveState $SVC)\" = active ] && [ \"\$(nsenter -t $L -a systemctl show -P MainPID $SVC)\" != $pid ]" || rc=1
    [ "$(prop "$SVC" NRestarts)" = $((n + 1)) ] || { err "NRestarts $(prop "$SVC" NRestarts), expected $((n + 1))"; rc=1; }
    [ $((t1 - t0)) -le $(((WATCHDOG + 3) * 1000)) ] || { err "the watchdog fired after $((t1 - t0)) ms"; rc=1; }
    [ "$(prop "$SVC" Result)" = success ] || { err "Result=$(prop "$SVC" Result) after the restart"; rc=1; }
    journal_since "$c" | has "Failed with result 'watchdog'" || { err "no \"Failed with result 'watchdog'\" in the journal"; rc=1; }
    # RestartSec=2s: from the failure to the next start.
    fail_ts=$(g journalctl --no-pager -o short-monotonic -u "$SVC" --after-cursor="$c" | grep -m1 "Failed with result 'watchdog'" | sed 's/^\[ *\([0-9.]*\)\].*/\1/')
    start_ts=$(g journalctl --no-pager -o short-monotonic -u "$SVC" --after-cursor="$c" | grep -m1 'Starting det-tls-proxy' | sed 's/^\[ *\([0-9.]*\)\].*/\1/')
    awk -v f="${fail_ts:-0}" -v s="${start_ts:-0}" 'BEGIN { exit !(f > 0 && s - f >= 1.9) }' ||
        { err "restart came $(awk -v f="${fail_ts:-0}" -v s="${start_ts:-0}" 'BEGIN{print s-f}')s after the failure (RestartSec=2s)"; rc=1; }
    say "watchdog fired $((t1 - t0)) ms after SIGSTOP; restart after RestartSec; held client served in ${took}s"
    return "$rc"
}

# Which check covers which directive. Every directive of both units must be listed:
# a new directive without a check fails check_every_directive_has_a_check.
declare -A COVER=(
    [Unit/Description]="loaded_unit_properties"
    [Unit/Wants]="loaded_unit_properties"
    [Unit/After]="loaded_unit_properties"
    [Unit/Before]="before_determined_agent loaded_unit_properties"
    [Unit/Requires]="readme_install_enable_now addresses_held_while_the_proxy_is_down loaded_unit_properties"
    [Service/Type]="type_notify_active_only_once_bound"
    [Service/NotifyAccess]="loaded_unit_properties (the default for Type=notify)"
    [Service/ExecStart]="readme_install_enable_now relay_mutual_tls_key_through_loadcredential"
    [Service/Sockets]="socket_activation_holds_first_client (the tasks socket adopted as systemd:tasks)"
    [Service/ExecReload]="reload_applies_without_bin_kill guest_lacks_bin_kill"
    [Service/Restart]="watchdog_kills_stopped_proxy_and_restarts"
    [Service/RestartSec]="watchdog_kills_stopped_proxy_and_restarts"
    [Service/RestartPreventExitStatus]="invalid_config_fails_exit_2_no_restart"
    [Service/WatchdogSec]="watchdog_kills_stopped_proxy_and_restarts"
    [Service/TimeoutStopSec]="stop_deadline_within_timeoutstopsec loaded_unit_properties"
    [Service/LimitNOFILE]="sandbox_seen_from_proc"
    [Service/LoadCredential]="relay_mutual_tls_key_through_loadcredential"
    [Service/Environment]="relay_mutual_tls_key_through_loadcredential"
    [Service/DynamicUser]="dynamic_user_reads_0644_files"
    [Service/ProtectSystem]="sandbox_seen_from_proc (also implied by DynamicUser)"
    [Service/ProtectHome]="sandbox_seen_from_proc"
    [Service/PrivateTmp]="sandbox_seen_from_proc (also implied by DynamicUser)"
    [Service/PrivateDevices]="sandbox_seen_from_proc"
    [Service/NoNewPrivileges]="sandbox_seen_from_proc (also implied by the seccomp options)"
    [Service/CapabilityBoundingSet]="sandbox_seen_from_proc"
    [Service/AmbientCapabilities]="sandbox_seen_from_proc (empty is the default)"
    [Service/RestrictAddressFamilies]="sandbox_probe_under_the_unit relay_mutual_tls_key_through_loadcredential"
    [Service/RestrictNamespaces]="sandbox_probe_under_the_unit"
    [Service/RestrictRealtime]="loaded_unit_properties (an unprivileged process cannot get realtime anyway)"
    [Service/RestrictSUIDSGID]="sandbox_probe_under_the_unit (also implied by DynamicUser)"
    [Service/LockPersonality]="sandbox_probe_under_the_unit"
    [Service/MemoryDenyWriteExecute]="sandbox_probe_under_the_unit"
    [Service/ProtectKernelTunables]="loaded_unit_properties (/proc/sys is gone under ProcSubset=pid)"
    [Service/ProtectKernelModules]="sandbox_seen_from_proc"
    [Service/ProtectKernelLogs]="loaded_unit_properties (/proc/kmsg is gone under ProcSubset=pid)"
    [Service/ProtectControlGroups]="sandbox_seen_from_proc"
    [Service/ProtectClock]="loaded_unit_properties (no CAP_SYS_TIME anyway)"
    [Service/ProtectHostname]="sandbox_seen_from_proc"
    [Service/ProtectProc]="sandbox_seen_from_proc"
    [Service/ProcSubset]="sandbox_seen_from_proc"
    [Service/SystemCallArchitectures]="loaded_unit_properties"
    [Service/SystemCallFilter]="sandbox_probe_under_the_unit loaded_unit_properties"
    [Service/SystemCallErrorNumber]="sandbox_probe_under_the_unit"
    [Service/UMask]="sandbox_seen_from_proc"
    [Service/ReadOnlyPaths]="sandbox_seen_from_proc, loaded_unit_properties (already read-only under ProtectSystem=strict)"
    [Service/RuntimeDirectory]="relay_mutual_tls_key_through_loadcredential sandbox_seen_from_proc"
    [Service/RuntimeDirectoryMode]="sandbox_seen_from_proc (0755 is the default)"
    [Install/WantedBy]="readme_install_enable_now socket_activation_holds_first_client"
    [Install/Also]="readme_install_enable_now"
    [Socket/ListenStream]="socket_activation_holds_first_client addresses_held_while_the_proxy_is_down"
    [Socket/FileDescriptorName]="socket_activation_holds_first_client (listen: systemd:agent)"
    [Socket/Service]="socket_activation_holds_first_client loaded_unit_properties"
    [Socket/NoDelay]="loaded_unit_properties"
    [Socket/Backlog]="socket_activation_holds_first_client"
    [Socket/FreeBind]="socket_activation_holds_first_client (172.17.0.1 is on no interface) loaded_unit_properties"
)

check_every_directive_has_a_check() {
    local rc=0 f section key
    for f in "$ROOT"/systemd/det-tls-proxy.service "$ROOT"/systemd/det-tls-proxy.socket "$ROOT"/systemd/det-tls-proxy-tasks.socket; do
        while read -r section key; do
            [ -n "${COVER[$section/$key]:-}" ] || { err "$(basename "$f"): [$section] $key= has no check in tests/real/systemd.sh"; rc=1; }
        done < <(awk '/^\[/ { s = substr($0, 2, length($0) - 2); next } /^[A-Za-z]+=/ { split($0, a, "="); print s, a[1] }' "$f" | sort -u)
    done
    return "$rc"
}

print_coverage() {
    local k
    echo "== directive -> check(s)"
    for k in $(printf '%s\n' "${!COVER[@]}" | sort); do
        printf '  %-32s %s\n' "$k" "${COVER[$k]}"
    done
}

# === Run ===
setup
run_check check_every_directive_has_a_check
run_check check_guest_lacks_bin_kill
run_check check_readme_install_enable_now
run_check check_loaded_unit_properties
run_check check_type_notify_active_only_once_bound
run_check check_before_determined_agent
run_check check_relay_mutual_tls_key_through_loadcredential
run_check check_dynamic_user_reads_0644_files
run_check check_sandbox_seen_from_proc
run_check check_sandbox_probe_under_the_unit
run_check check_reload_applies_without_bin_kill
run_check check_stop_drains_open_connection
run_check check_stop_deadline_within_timeoutstopsec
run_check check_invalid_config_fails_exit_2_no_restart
run_check check_socket_activation_holds_first_client
run_check check_addresses_held_while_the_proxy_is_down
run_check check_usr2_upgrade_moves_mainpid_and_keeps_the_socket
run_check check_watchdog_kills_stopped_proxy_and_restarts
[ -n "${DTP_VERBOSE:-}" ] && print_coverage
summary "tests/real/systemd.sh (systemd $(g systemctl --version | awk 'NR==1 {print $2}'), $(basename "$BIN"))" || {
    echo "--- last lines of the service's journal:" >&2
    g journalctl --no-pager -o short-monotonic -u "$SVC" -n 40 >&2
    exit 1
}
