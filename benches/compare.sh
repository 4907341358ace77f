#!/usr/bin/env bash
# benches/compare.sh — det-tls-proxy side by side with stunnel4, HAProxy, nginx (stream) and
# socat on this machine. Every proxy relays plaintext clients to the same rustls
# server (benches/tlssink.rs), verifying the same certificate, with the same cipher suite, and
# faces the same load generator (benches/loadgen.rs). The det-connect row is det-tls-proxy
# reaching the sink through squid as its egress proxy (one HTTP CONNECT tunnel per connection,
# TLS inside it); its CPU and memory figures are det-tls-proxy's own, squid's not counted.
# The det-id row is det-tls-proxy identifying every client (listeners[].allowed_peers naming
# the bench user's uid: one NETLINK_SOCK_DIAG lookup and cgroup path per connection); `det`
# identifies nobody (no selector, access log off). `--only det,det-id` measures what peer
# identity costs a new connection.
#
#   benches/compare.sh            full run (2 GiB transfers, R=7): writes benches/results.{md,svg,json}
#   benches/compare.sh --quick    CI mode (a few MiB, a few hundred connections, R=1): proves the
#                                 harness works; writes target/bench-quick/results.{md,svg,json}
#
# Options: --reps N   --out DIR   --only det,det-id,det-log,det-connect,stunnel,haproxy,nginx,socat,direct,openssl
#          --keep (keep the work directory with configs and logs)   --no-install
#          --debug-build (use the dev profile: in CI it reuses what the tests built; with --quick
#          only, since such figures mean nothing)
# Environment overrides: BENCH_BYTES, BENCH_CONN_SECS, BENCH_CONN_COUNT, BENCH_CONCURRENCY,
#          BENCH_LAT_COUNT, BENCH_HOLD, BENCH_REPS, BENCH_QUIET_WAIT (full mode: before each
#          proxy's repetition wait up to this many seconds, default 180, for the CPUs to be
#          ≥ 90 % idle, so other work on a shared machine does not land in one proxy's figures;
#          BENCH_QUIET_BUDGET bounds the total wait, default 300 s), BENCH_DET_BIN (a
#          det-tls-proxy binary to measure instead of this tree's, e.g. an earlier commit's).
# Exit status: 0 when every workload through every proxy completed with every byte right.
#
# All traffic stays on 127.0.0.1; every wait is bounded; every process started here is stopped
# on exit, by its PID.
set -euo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$ROOT"

QUICK=0 REPS_OPT= OUT= ONLY= KEEP=0 INSTALL=1 PROFILE=release
usage() { sed -n '2,23p' "$0" | sed 's/^# \{0,1\}//'; }
while [ $# -gt 0 ]; do
  case "$1" in
    --quick) QUICK=1 ;;
    --reps) REPS_OPT=$2; shift ;;
    --out) OUT=$2; shift ;;
    --only) ONLY=$2; shift ;;
    --keep) KEEP=1 ;;
    --no-install) INSTALL=0 ;;
    --debug-build) PROFILE=debug ;;
    -h|--help) usage; exit 0 ;;
    *) echo "compare.sh: unknown argument $1" >&2; usage >&2; exit 2 ;;
  esac
  shift
done

if [ "$QUICK" = 1 ]; then
  BYTES=${BENCH_BYTES:-$((8 * 1024 * 1024))}
  CONN_SECS=${BENCH_CONN_SECS:-5}
  CONN_COUNT=${BENCH_CONN_COUNT:-300}
  LAT_COUNT=${BENCH_LAT_COUNT:-500}; LAT_WARMUP=50
  HOLD=${BENCH_HOLD:-50}
  REPS=${REPS_OPT:-${BENCH_REPS:-1}}
  SPEED_SECS=1
  QUIET_WAIT=${BENCH_QUIET_WAIT:-0}
  OUT=${OUT:-$ROOT/target/bench-quick}
else
  BYTES=${BENCH_BYTES:-$((2 * 1024 * 1024 * 1024))}
  CONN_SECS=${BENCH_CONN_SECS:-5}
  CONN_COUNT=${BENCH_CONN_COUNT:-}
  LAT_COUNT=${BENCH_LAT_COUNT:-20000}; LAT_WARMUP=1000
  HOLD=${BENCH_HOLD:-1000}
  REPS=${REPS_OPT:-${BENCH_REPS:-7}}
  SPEED_SECS=3
  QUIET_WAIT=${BENCH_QUIET_WAIT:-180}
  OUT=${OUT:-$ROOT/benches}
fi
CONC=${BENCH_CONCURRENCY:-32}
MULTI_CONNS=32
ROWS_ALL="det det-id det-log det-connect stunnel haproxy nginx socat direct openssl"
ROWS=${ONLY:+${ONLY//,/ }}
ROWS=${ROWS:-$ROWS_ALL}
for r in $ROWS; do
  case " $ROWS_ALL " in *" $r "*) ;; *) echo "compare.sh: unknown row $r (rows: $ROWS_ALL)" >&2; exit 2 ;; esac
done
want() { case " $ROWS " in *" $1 "*) return 0 ;; *) return 1 ;; esac; }

T_START=$(date +%s)
log() { printf '[%4ss] %s\n' "$(( $(date +%s) - T_START ))" "$*" >&2; }
FAILS=0
fail() { FAILS=$((FAILS + 1)); echo "compare.sh: FAILED: $*" >&2; }

# --- peers -----------------------------------------------------------------------------------
need_peers() {
  local missing=()
  command -v stunnel4 >/dev/null || missing+=(stunnel4)
  command -v haproxy >/dev/null || missing+=(haproxy)
  command -v nginx >/dev/null || missing+=(nginx)
  [ -e /usr/lib/nginx/modules/ngx_stream_module.so ] || missing+=(libnginx-mod-stream)
  command -v socat >/dev/null || missing+=(socat)
  command -v openssl >/dev/null || missing+=(openssl)
  command -v squid >/dev/null || missing+=(squid)
  command -v ss >/dev/null || missing+=(iproute2)
  command -v ps >/dev/null || missing+=(procps)
  echo "${missing[@]}"
}
if want stunnel || want haproxy || want nginx || want socat || want openssl || want det-connect; then
  missing=$(need_peers)
  if [ -n "$missing" ]; then
    [ "$INSTALL" = 1 ] || { echo "compare.sh: missing $missing (and --no-install)" >&2; exit 1; }
    log "installing $missing"
    # shellcheck disable=SC2086
    DEBIAN_FRONTEND=noninteractive apt-get install -y stunnel4 haproxy nginx libnginx-mod-stream socat openssl squid >/dev/null 2>&1 \
      || { apt-get update >/dev/null 2>&1 && DEBIAN_FRONTEND=noninteractive apt-get install -y stunnel4 haproxy nginx libnginx-mod-stream socat openssl squid >/dev/null; }
    missing=$(need_peers)
    [ -z "$missing" ] || { echo "compare.sh: could not install $missing" >&2; exit 1; }
  fi
fi
command -v python3 >/dev/null || { echo "compare.sh: python3 is needed for the report" >&2; exit 1; }

# --- build -----------------------------------------------------------------------------------
if [ "$PROFILE" = release ]; then
  log "cargo build --release --bins --examples"
  cargo build --release --bins --examples --quiet
else
  [ "$QUICK" = 1 ] || { echo "compare.sh: --debug-build only with --quick" >&2; exit 2; }
  log "cargo build --bins --examples (dev profile)"
  cargo build --bins --examples --quiet
fi

# --- work directory, cleanup -------------------------------------------------------------------
WORK=$(mktemp -d /tmp/det-tls-bench.XXXXXX)
# Run copies, so a rebuild in the work tree during a long run cannot mix two versions.
mkdir -p "$WORK/bin"
cp "$ROOT/target/$PROFILE/det-tls-proxy" "$ROOT/target/$PROFILE/examples/loadgen" "$ROOT/target/$PROFILE/examples/tlssink" "$WORK/bin/"
# BENCH_DET_BIN: measure another det-tls-proxy binary (an earlier commit's, for a before/after
# comparison) with this tree's load generator and sink.
if [ -n "${BENCH_DET_BIN:-}" ]; then
  cp "$BENCH_DET_BIN" "$WORK/bin/det-tls-proxy"
fi
PROXY=$WORK/bin/det-tls-proxy
LG=$WORK/bin/loadgen
SINK=$WORK/bin/tlssink
RAW=$WORK/raw.jsonl
: >"$RAW"
STARTED=()        # PIDs of every process tree started here
HOLD_FDS=()

tree_pids() { # ROOT_PID: the process and all its descendants
  ps -e -o pid=,ppid= | awk -v root="$1" '
    { kids[$2] = kids[$2] " " $1; alive[$1] = 1 }
    END {
      if (!(root in alive)) exit
      n = 1; q[1] = root
      for (i = 1; i <= n; i++) {
        print q[i]
        m = split(kids[q[i]], k, " ")
        for (j = 1; j <= m; j++) q[++n] = k[j]
      }
    }'
}

kill_tree() { # PID [grace seconds]
  local root=$1 grace=${2:-10} pids i
  pids=$(tree_pids "$root")
  [ -n "$pids" ] || return 0
  kill -TERM "$root" 2>/dev/null || true
  for ((i = 0; i < grace * 10; i++)); do
    kill -0 "$root" 2>/dev/null || break
    sleep 0.1
  done
  for p in $pids; do kill -KILL "$p" 2>/dev/null || true; done
  wait "$root" 2>/dev/null || true
}

cleanup() {
  local rc=$?
  set +e
  for fd in "${HOLD_FDS[@]}"; do eval "exec $fd>&-" 2>/dev/null; done
  for ((i = ${#STARTED[@]} - 1; i >= 0; i--)); do kill_tree "${STARTED[$i]}" 5; done
  if [ "$KEEP" = 1 ]; then echo "compare.sh: work directory kept: $WORK" >&2; else rm -rf "$WORK"; fi
  exit $rc
}
trap cleanup EXIT
trap 'exit 130' INT TERM

ulimit -n "$(ulimit -Hn)" 2>/dev/null || true

free_ports() { # N: N distinct free loopback TCP ports
  python3 - "$1" <<'EOF'
import socket, sys
socks = []
for _ in range(int(sys.argv[1])):
    s = socket.socket(); s.bind(("127.0.0.1", 0)); socks.append(s)
print(" ".join(str(s.getsockname()[1]) for s in socks))
EOF
}

wait_listen() { # PORT PID: bounded wait until something listens on 127.0.0.1:PORT
  local i
  for ((i = 0; i < 150; i++)); do
    if ss -Hltn "sport = :$1" 2>/dev/null | grep -q .; then return 0; fi
    kill -0 "$2" 2>/dev/null || return 1
    sleep 0.1
  done
  return 1
}

CLK_TCK=$(getconf CLK_TCK)
cpu_ticks() { # ROOT_PID: utime+stime (+ reaped children's) of the whole tree
  local sum=0 p t
  for p in $(tree_pids "$1"); do
    t=$(sed 's/.*) //' "/proc/$p/stat" 2>/dev/null | awk '{print $12 + $13 + $14 + $15}') || t=0
    sum=$((sum + ${t:-0}))
  done
  echo "$sum"
}
pss_kib() { # ROOT_PID: PSS of the whole tree, KiB
  local sum=0 p k
  for p in $(tree_pids "$1"); do
    k=$(awk '/^Pss:/ {print $2; exit}' "/proc/$p/smaps_rollup" 2>/dev/null) || k=0
    sum=$((sum + ${k:-0}))
  done
  echo "$sum"
}
nprocs() { tree_pids "$1" | wc -l; }
forget() { # PID: no longer ours to stop
  local keep=() p
  for p in "${STARTED[@]}"; do [ "$p" = "$1" ] || keep+=("$p"); done
  STARTED=("${keep[@]}")
}

QUIET_SPENT=0
QUIET_BUDGET=${BENCH_QUIET_BUDGET:-$((QUIET_WAIT > 0 ? 300 : 0))}
cpu_idle_pct() { # percentage of CPU time idle over the next second, whole machine
  local a b
  a=$(awk '/^cpu / {print $5 + $6, $2 + $3 + $4 + $5 + $6 + $7 + $8 + $9}' /proc/stat)
  sleep 1
  b=$(awk '/^cpu / {print $5 + $6, $2 + $3 + $4 + $5 + $6 + $7 + $8 + $9}' /proc/stat)
  awk -v a="$a" -v b="$b" 'BEGIN { split(a, x, " "); split(b, y, " "); d = y[2] - x[2]; printf "%d", (d > 0 ? 100 * (y[1] - x[1]) / d : 100) }'
}
quiet_gate() { # ROW REP: bounded wait for the machine to be quiet; records what it saw
  local idle waited=0 t0
  t0=$(date +%s)
  idle=$(cpu_idle_pct)
  while [ "$idle" -lt 90 ] && [ $(( $(date +%s) - t0 )) -lt "$QUIET_WAIT" ] && [ "$QUIET_SPENT" -lt "$QUIET_BUDGET" ]; do
    [ "$waited" = 1 ] || log "CPUs only ${idle}% idle (other work on this machine): waiting up to ${QUIET_WAIT}s"
    waited=1
    sleep 4
    idle=$(cpu_idle_pct)
    QUIET_SPENT=$((QUIET_SPENT + 5))
  done
  record "$1" "$2" "" "{\"workload\":\"quiet\",\"idle_pct\":$idle,\"waited_secs\":$(( $(date +%s) - t0 )),\"loadavg\":\"$(cut -d' ' -f1-3 /proc/loadavg)\"}"
}

record() { # ROW REP VARIANT JSON
  printf '{"row":"%s","rep":%s,"variant":"%s","data":%s}\n' "$1" "$2" "$3" "$4" >>"$RAW"
}

# --- certificates and the sink -----------------------------------------------------------------
PKI=$WORK/pki
"$SINK" --gen "$PKI" --gen-only
CA=$PKI/ca.pem
"$SINK" --cert "$PKI/cert.pem" --key "$PKI/key.pem" --listen 127.0.0.1:0 --listen-no-resume 127.0.0.1:0 \
  --stats-listen 127.0.0.1:0 >"$WORK/sink.out" 2>"$WORK/sink.err" &
SINK_PID=$!
STARTED+=("$SINK_PID")
for ((i = 0; i < 100; i++)); do [ -s "$WORK/sink.out" ] && break; sleep 0.1; done
read -r M_RESUME M_NORESUME M_STATS < <(python3 -c '
import json, sys
d = json.loads(open(sys.argv[1]).readline())
print(*(d[k].rsplit(":", 1)[1] for k in ("listen", "listen_no_resume", "stats")))' "$WORK/sink.out") \
  || { echo "compare.sh: tlssink did not start: $(cat "$WORK/sink.err")" >&2; exit 1; }
log "tlssink: resume :$M_RESUME, no-resume :$M_NORESUME, stats :$M_STATS"

sink_stats() { # one JSON line of counters since the last call (read-and-clear)
  timeout 5 bash -c "exec 5<>/dev/tcp/127.0.0.1/$M_STATS && cat <&5" 2>/dev/null || echo '{}'
}
sink_active() {
  sink_stats | python3 -c 'import json,sys; d=json.load(sys.stdin); print(sum(v.get("active",0) for v in d.values()))' 2>/dev/null || echo 0
}

# --- proxies -----------------------------------------------------------------------------------
PROXY_PID=
LISTEN=
start_squid() { # sets SQUID_PORT and SQUID_PID: squid resolving bench-master to 127.0.0.1
  local dir=$WORK/squid
  mkdir -p "$dir"
  chmod 755 "$WORK"
  chmod 777 "$dir"
  SQUID_PORT=$(free_ports 1)
  printf '127.0.0.1 localhost\n127.0.0.1 bench-master\n' >"$dir/hosts"
  cat >"$dir/squid.conf" <<EOF
http_port 127.0.0.1:$SQUID_PORT
pid_filename $dir/squid.pid
cache deny all
cache_mem 8 MB
access_log none
cache_log $dir/cache.log
cache_store_log none
hosts_file $dir/hosts
dns_nameservers 127.0.0.1
max_filedescriptors 16384
http_access allow localhost
http_access deny all
shutdown_lifetime 0 seconds
EOF
  squid -N -f "$dir/squid.conf" >>"$WORK/squid.log" 2>&1 &
  SQUID_PID=$!
  STARTED+=("$SQUID_PID")
  wait_listen "$SQUID_PORT" "$SQUID_PID"
}

start_proxy() { # ROW MASTER_PORT
  local row=$1 mp=$2 cfg
  LISTEN=$(free_ports 1)
  case "$row" in
    det-connect)
      start_squid || { fail "squid did not start: $(tail -5 "$WORK/squid/cache.log" 2>/dev/null)"; return 1; }
      cfg=$WORK/$row.yaml
      cat >"$cfg" <<EOF
master_host: bench-master
master_port: $mp
upstream_proxy: http://127.0.0.1:$SQUID_PORT
security:
  tls:
    master_cert: $CA
listeners:
  - name: bench
    listen: 127.0.0.1:$LISTEN
log: {access: false, level: warn}
EOF
      "$PROXY" run --config "$cfg" >>"$WORK/$row.log" 2>&1 &
      ;;
    det|det-id|det-log)
      cfg=$WORK/$row.yaml
      local logcfg='{access: false, level: warn}' peers=
      [ "$row" = det-log ] && logcfg='{access: true, level: info}'
      [ "$row" = det-id ] && peers="    allowed_peers: [{uid: $(id -u)}]"
      cat >"$cfg" <<EOF
master_host: 127.0.0.1
master_port: $mp
security:
  tls:
    master_cert: $CA
    master_cert_name: bench-master
listeners:
  - name: bench
    listen: 127.0.0.1:$LISTEN
$peers
log: $logcfg
EOF
      "$PROXY" run --config "$cfg" >>"$WORK/$row.log" 2>&1 &
      ;;
    stunnel)
      cfg=$WORK/stunnel.conf
      cat >"$cfg" <<EOF
foreground = yes
pid =
debug = err
[bench]
client = yes
accept = 127.0.0.1:$LISTEN
connect = 127.0.0.1:$mp
CAfile = $CA
verifyChain = yes
checkHost = bench-master
sni = bench-master
sslVersionMin = TLSv1.2
ciphersuites = TLS_AES_128_GCM_SHA256
sessionCacheSize = 1000
sessionCacheTimeout = 300
socket = l:TCP_NODELAY=1
socket = r:TCP_NODELAY=1
TIMEOUTconnect = 10
TIMEOUTidle = 3600
TIMEOUTclose = 60
EOF
      stunnel4 "$cfg" >>"$WORK/stunnel.log" 2>&1 &
      ;;
    haproxy)
      cfg=$WORK/haproxy.cfg
      cat >"$cfg" <<EOF
global
    maxconn 8000
    nbthread 2
defaults
    mode tcp
    maxconn 8000
    timeout connect 10s
    timeout client 1h
    timeout server 1h
    timeout client-fin 60s
    timeout server-fin 60s
frontend bench
    bind 127.0.0.1:$LISTEN
    default_backend master
backend master
    server m 127.0.0.1:$mp ssl verify required ca-file $CA sni str(bench-master) verifyhost bench-master ssl-min-ver TLSv1.2 ciphersuites TLS_AES_128_GCM_SHA256
EOF
      haproxy -db -f "$cfg" >>"$WORK/haproxy.log" 2>&1 &
      ;;
    nginx)
      cfg=$WORK/nginx.conf
      mkdir -p "$WORK/nginx"
      cat >"$cfg" <<EOF
load_module /usr/lib/nginx/modules/ngx_stream_module.so;
daemon off;
worker_processes 2;
worker_rlimit_nofile 20000;
pid $WORK/nginx/nginx.pid;
error_log $WORK/nginx/error.log warn;
events { worker_connections 8192; }
stream {
    access_log off;
    server {
        listen 127.0.0.1:$LISTEN;
        proxy_pass 127.0.0.1:$mp;
        proxy_ssl on;
        proxy_ssl_verify on;
        proxy_ssl_trusted_certificate $CA;
        proxy_ssl_name bench-master;
        proxy_ssl_server_name on;
        proxy_ssl_session_reuse on;
        proxy_ssl_protocols TLSv1.2 TLSv1.3;
        proxy_ssl_conf_command Ciphersuites TLS_AES_128_GCM_SHA256;
        proxy_connect_timeout 10s;
        proxy_timeout 1h;
        proxy_half_close on;
        tcp_nodelay on;
    }
}
EOF
      nginx -p "$WORK/nginx" -e "$WORK/nginx/error.log" -c "$cfg" >>"$WORK/nginx.log" 2>&1 &
      ;;
    socat)
      # -T: idle timeout as the others (1 h); -t: how long the other direction may go on after a
      # half-close (det-tls-proxy's timeouts.close, 60 s).
      socat -T 3600 -t 60 \
        "TCP-LISTEN:$LISTEN,bind=127.0.0.1,reuseaddr,fork,nodelay,backlog=4096" \
        "OPENSSL:127.0.0.1:$mp,cafile=$CA,commonname=bench-master,snihost=bench-master,verify=1,min-version=TLS1.2,nodelay" \
        >>"$WORK/socat.log" 2>&1 &
      ;;
  esac
  PROXY_PID=$!
  STARTED+=("$PROXY_PID")
  if ! wait_listen "$LISTEN" "$PROXY_PID"; then
    fail "$row did not start listening on 127.0.0.1:$LISTEN; its log:"
    tail -20 "$WORK/$row.log" "$WORK"/nginx/error.log 2>/dev/null >&2 || true
    return 1
  fi
}

stop_proxy() {
  [ -n "$PROXY_PID" ] || return 0
  if ! kill -0 "$PROXY_PID" 2>/dev/null; then
    local rc=0
    wait "$PROXY_PID" || rc=$?
    fail "$1 exited by itself (status $rc) before it was stopped; its log: $(tail -5 "$WORK/$1.log" 2>/dev/null)"
  fi
  kill_tree "$PROXY_PID" 15
  forget "$PROXY_PID"
  PROXY_PID=
  if [ -n "${SQUID_PID:-}" ]; then
    kill_tree "$SQUID_PID" 5
    forget "$SQUID_PID"
    SQUID_PID=
  fi
}

# --- workloads ---------------------------------------------------------------------------------
LGARGS=()
lg() { # ROW REP VARIANT LIMIT_SECONDS workload args...: run loadgen, record its JSON
  local row=$1 rep=$2 variant=$3 limit=$4 out rc=0
  shift 4
  local wl=$1
  out=$(timeout "$limit" "$LG" "${LGARGS[@]}" "$@" 2>>"$WORK/loadgen.err") || rc=$?
  out=$(printf '%s\n' "$out" | tail -1)
  [ -n "$out" ] || out="{\"error\":\"loadgen produced nothing (exit $rc)\",\"workload\":\"$wl\"}"
  record "$row" "$rep" "$variant" "$out"
  if [ "$rc" != 0 ]; then
    fail "$row rep $rep: loadgen $* (exit $rc): $out"
    return 1
  fi
  log "$row #$rep $variant $(printf '%s' "$out" | cut -c1-150)"
}

machine_busy() { # non-idle CPU ticks of the whole machine so far (every process, every core)
  awk '/^cpu / {print $2 + $3 + $4 + $7 + $8 + $9}' /proc/stat
}
throughput() { # ROW REP: each workload also records the whole machine's CPU (load generator, sink, proxy)
  local w m0 args
  for w in up down multi; do
    args=("$w" --bytes "$BYTES")
    [ "$w" = multi ] && args+=(--conns "$MULTI_CONNS")
    m0=$(machine_busy)
    lg "$1" "$2" "" 900 "${args[@]}" || true
    record "$1" "$2" "" "{\"workload\":\"machine_cpu\",\"of\":\"$w\",\"ticks\":$(($(machine_busy) - m0)),\"clk_tck\":$CLK_TCK,\"bytes\":$BYTES}"
  done
}

connrate() { # ROW REP VARIANT
  local mode
  if [ -n "$CONN_COUNT" ]; then mode=(--count "$CONN_COUNT"); else mode=(--duration "$CONN_SECS"); fi
  sink_stats >/dev/null
  lg "$1" "$2" "$3" $((CONN_SECS * 20 + 120)) connrate "${mode[@]}" --concurrency "$CONC" || true
  record "$1" "$2" "$3" "{\"workload\":\"sinkstats\",\"stats\":$(sink_stats)}"
}

latency() { lg "$1" "$2" "" 600 latency --count "$LAT_COUNT" --warmup "$LAT_WARMUP" || true; }

hold_start() { # NAME: starts loadgen hold in the background; sets HOLD_PID and HOLD_FD
  local name=$1 i
  mkfifo "$WORK/$name.fifo"
  "$LG" "${LGARGS[@]}" hold --conns "$HOLD" --max-hold 900 <"$WORK/$name.fifo" >"$WORK/$name.out" 2>>"$WORK/loadgen.err" &
  HOLD_PID=$!
  STARTED+=("$HOLD_PID")
  exec {HOLD_FD}>"$WORK/$name.fifo"
  HOLD_FDS+=("$HOLD_FD")
  for ((i = 0; i < 1800; i++)); do
    grep -q '^HELD' "$WORK/$name.out" 2>/dev/null && return 0
    kill -0 "$HOLD_PID" 2>/dev/null || break
    sleep 0.1
  done
  return 1
}
hold_release() { # NAME PID FD: closes the loadgen's stdin, waits for its JSON
  local name=$1 pid=$2 fd=$3 i
  eval "exec $fd>&-"
  for ((i = 0; i < 300; i++)); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
  kill -KILL "$pid" 2>/dev/null || true
  wait "$pid" 2>/dev/null || true
  forget "$pid"
  rm -f "$WORK/$name.fifo"
}
settle() { # wait (bounded) until the sink has no connection open and the proxy's process count is back
  local base=$1 i
  for ((i = 0; i < 300; i++)); do
    [ "$(sink_active)" = 0 ] && [ "$(nprocs "$PROXY_PID")" -le "$base" ] && return 0
    sleep 0.1
  done
}

memory() { # ROW REP
  local row=$1 rep=$2 base pss0 pss1 pss2 held_a held_b pa fa pb fb ok=1
  base=$(nprocs "$PROXY_PID")
  pss0=$(pss_kib "$PROXY_PID")
  if hold_start "$row-hold-a-$rep"; then
    pa=$HOLD_PID fa=$HOLD_FD
    sleep 1
    pss1=$(pss_kib "$PROXY_PID")
    if hold_start "$row-hold-b-$rep"; then
      pb=$HOLD_PID fb=$HOLD_FD
      sleep 1
      pss2=$(pss_kib "$PROXY_PID")
    else
      pb=$HOLD_PID fb=$HOLD_FD ok=0
    fi
    held_a=$(awk '/^HELD/ {print $2}' "$WORK/$row-hold-a-$rep.out")
    held_b=$(awk '/^HELD/ {print $2}' "$WORK/$row-hold-b-$rep.out" 2>/dev/null)
    hold_release "$row-hold-b-$rep" "$pb" "$fb"
    hold_release "$row-hold-a-$rep" "$pa" "$fa"
  else
    hold_release "$row-hold-a-$rep" "$HOLD_PID" "$HOLD_FD"
    ok=0
  fi
  if [ "$ok" = 1 ] && [ "${held_a:-0}" = "$HOLD" ] && [ "${held_b:-0}" = "$HOLD" ]; then
    local kib
    kib=$(awk -v a="$pss1" -v b="$pss2" -v n="$HOLD" 'BEGIN {printf "%.2f", (b - a) / n}')
    record "$row" "$rep" "" "{\"workload\":\"memory\",\"conns\":$HOLD,\"pss0_kib\":$pss0,\"pss1_kib\":$pss1,\"pss2_kib\":$pss2,\"kib_per_conn\":$kib}"
    log "$row #$rep memory: PSS ${pss0} -> ${pss1} -> ${pss2} KiB; $kib KiB per idle connection"
  else
    record "$row" "$rep" "" "{\"workload\":\"memory\",\"error\":\"held ${held_a:-?} and ${held_b:-?} of $HOLD\"}"
    fail "$row rep $rep: memory: held ${held_a:-?} and ${held_b:-?} of $HOLD connections: $(cat "$WORK"/$row-hold-*-"$rep".out 2>/dev/null | tail -2)"
  fi
  settle "$base"
}

bench_proxy() { # ROW REP: one repetition of every workload through one proxy, freshly started
  local row=$1 rep=$2 c0 c1
  log "=== $row, repetition $rep of $REPS"
  start_proxy "$row" "$M_RESUME" || { stop_proxy "$row"; return; }
  LGARGS=(--addr "127.0.0.1:$LISTEN")
  c0=$(cpu_ticks "$PROXY_PID")
  throughput "$row" "$rep"
  c1=$(cpu_ticks "$PROXY_PID")
  record "$row" "$rep" "" "{\"workload\":\"cpu\",\"ticks\":$((c1 - c0)),\"clk_tck\":$CLK_TCK,\"bytes\":$((3 * BYTES))}"
  latency "$row" "$rep"
  connrate "$row" "$rep" resume
  memory "$row" "$rep"
  stop_proxy "$row"
  # The same proxy in front of the sink's listener that refuses resumption: full handshakes only.
  start_proxy "$row" "$M_NORESUME" || { stop_proxy "$row"; return; }
  LGARGS=(--addr "127.0.0.1:$LISTEN")
  connrate "$row" "$rep" no_resume
  stop_proxy "$row"
}

bench_direct() { # REP
  local rep=$1
  log "=== direct TLS to the sink (baseline), repetition $rep of $REPS"
  LGARGS=(--addr "127.0.0.1:$M_RESUME" --tls --ca "$CA" --sni bench-master)
  throughput direct "$rep"
  latency direct "$rep"
  connrate direct "$rep" resume
  LGARGS=(--addr "127.0.0.1:$M_NORESUME" --tls --ca "$CA" --sni bench-master)
  connrate direct "$rep" no_resume
}

bench_openssl() {
  local rep out k
  log "=== openssl speed -evp aes-128-gcm (16384-byte blocks, one core)"
  for ((rep = 1; rep <= REPS; rep++)); do
    out=$(timeout 120 openssl speed -evp aes-128-gcm -bytes 16384 -seconds "$SPEED_SECS" 2>/dev/null | tail -1) || true
    k=$(printf '%s\n' "$out" | awk '{v=$NF; sub(/k$/, "", v); print v}')
    if [[ "$k" =~ ^[0-9.]+$ ]]; then
      record openssl "$rep" "" "{\"workload\":\"speed\",\"mb_per_s\":$(awk -v k="$k" 'BEGIN {printf "%.1f", k / 1000}'),\"line\":\"$out\"}"
    else
      fail "openssl speed: unexpected output: $out"
    fi
  done
}

# --- run ---------------------------------------------------------------------------------------
META=$WORK/meta.json
python3 - "$META" <<EOF
import json, os, platform, subprocess, sys, time
def first(cmd):
    try:
        r = subprocess.run(cmd, shell=True, capture_output=True, text=True, timeout=20)
        return ((r.stdout or "") + (r.stderr or "")).strip().splitlines()[0]
    except Exception:
        return ""
cpu = {}
for line in open("/proc/cpuinfo"):
    if ":" in line:
        k, v = line.split(":", 1)
        cpu.setdefault(k.strip(), v.strip())
mem_kib = int(next(l.split()[1] for l in open("/proc/meminfo") if l.startswith("MemTotal")))
meta = {
    "date": time.strftime("%Y-%m-%d %H:%M:%S %Z"),
    "cpu_model": cpu.get("model name", "?"),
    "cpus": os.cpu_count(),
    "cpu_flags_aes": "aes" in cpu.get("flags", "").split(),
    "cpu_flags_vaes": "vaes" in cpu.get("flags", "").split(),
    "mem_gib": round(mem_kib / 1024 / 1024, 1),
    "kernel": platform.release(),
    "os": first(". /etc/os-release && echo \$PRETTY_NAME"),
    "loadavg_start": open("/proc/loadavg").read().split()[:3],
    "quick": $QUICK == 1,
    "reps": $REPS,
    "bytes": $BYTES,
    "multi_conns": $MULTI_CONNS,
    "conn_secs": ${CONN_SECS:-0},
    "conn_count": ${CONN_COUNT:-0},
    "concurrency": $CONC,
    "lat_count": $LAT_COUNT,
    "hold": $HOLD,
    "quiet_wait": $QUIET_WAIT,
    "versions": {
        "det-tls-proxy": first("$PROXY --version") + (" (binary ${BENCH_DET_BIN:-})" if "${BENCH_DET_BIN:-}" else " (git " + first("git -C $ROOT describe --always --dirty") + ")"),
        "stunnel": first("stunnel4 -version 2>&1 | grep -m1 '^stunnel' | cut -d' ' -f1-2"),
        "haproxy": first("haproxy -v | head -1 | cut -d' ' -f1,3"),
        "nginx": first("nginx -v 2>&1 | sed 's/^nginx version: //; s,/, ,'"),
        "socat": first("socat -V | grep -m1 'socat version' | cut -d' ' -f1,3"),
        "openssl": first("openssl version | cut -d' ' -f1-2"),
        "rustc": first("rustc --version"),
    },
}
json.dump(meta, open(sys.argv[1], "w"), indent=1)
EOF

# Repetitions go round the proxies (rather than one proxy's repetitions in a row), so a slow
# spell on this shared machine lands on every proxy's spread instead of on one proxy's median.
for ((REP = 1; REP <= REPS; REP++)); do
  for row in det det-id det-log det-connect stunnel haproxy nginx socat; do
    want "$row" || continue
    quiet_gate "$row" "$REP"
    bench_proxy "$row" "$REP"
  done
  want direct && { quiet_gate direct "$REP"; bench_direct "$REP"; }
done
want openssl && bench_openssl

ELAPSED=$(( $(date +%s) - T_START ))
python3 - "$META" "$ELAPSED" "$FAILS" <<'EOF'
import json, sys
m = json.load(open(sys.argv[1]))
m["elapsed_secs"] = int(sys.argv[2]); m["failures"] = int(sys.argv[3])
m["loadavg_end"] = open("/proc/loadavg").read().split()[:3]
json.dump(m, open(sys.argv[1], "w"), indent=1)
EOF
mkdir -p "$OUT"
python3 "$ROOT/benches/chart.py" --meta "$META" --raw "$RAW" \
  --md "$OUT/results.md" --svg "$OUT/results.svg" --json "$OUT/results.json"
if grep -q . "$WORK/sink.err"; then log "tlssink said: $(head -5 "$WORK/sink.err")"; fi
log "done in ${ELAPSED}s with $FAILS failure(s): $OUT/results.md, $OUT/results.svg"
[ "$FAILS" = 0 ]
