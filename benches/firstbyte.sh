#!/usr/bin/env bash
# benches/firstbyte.sh — time from a client's connect to the first byte of the master's answer,
# through det-tls-proxy without and with upstream.preconnect, nginx (stream) and HAProxy, to a
# master (benches/tlssink.rs) behind an added round trip of 0, 10 and 50 ms. The delay is made
# by benches/delay.rs, a user-space TCP relay in front of the sink (this kernel has no netem):
# half the round trip each way, and one full round trip before a new connection's first bytes
# are delivered, as a TCP handshake would cost. Each client (loadgen firstbyte) connects, sends
# 64 bytes, and times the first byte of the echo; clients come one after another, 3 round trips
# + 20 ms apart (a CLI or a task's short requests, not a burst).
#
#   benches/firstbyte.sh            full run (0, 10, 50 ms; 150 clients each): writes
#                                   benches/firstbyte.{md,svg,json}, ~6 minutes
#   benches/firstbyte.sh --quick    CI mode (0 and 10 ms, 8 clients): proves the harness in
#                                   seconds; writes target/bench-quick/firstbyte.{md,svg,json}
#
# Options: --out DIR  --only det,det-preconnect,nginx,haproxy  --rtts "0 10 50"  --count N
#          --debug-build (dev profile, with --quick only)  --keep (keep the work directory)
# Exit status: 0 when every client of every row got its whole echo back.
#
# All traffic stays on 127.0.0.1; every process started here is stopped on exit, by its PID.
set -euo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$ROOT"

QUICK=0 OUT= ONLY= RTTS= COUNT= PROFILE=release KEEP=0
usage() { sed -n '2,19p' "$0" | sed 's/^# \{0,1\}//'; }
while [ $# -gt 0 ]; do
  case "$1" in
    --quick) QUICK=1 ;;
    --out) OUT=$2; shift ;;
    --only) ONLY=$2; shift ;;
    --rtts) RTTS=$2; shift ;;
    --count) COUNT=$2; shift ;;
    --debug-build) PROFILE=debug ;;
    --keep) KEEP=1 ;;
    -h|--help) usage; exit 0 ;;
    *) echo "firstbyte.sh: unknown argument $1" >&2; usage >&2; exit 2 ;;
  esac
  shift
done
if [ "$QUICK" = 1 ]; then
  RTTS=${RTTS:-0 10}; COUNT=${COUNT:-8}; WARMUP=2; OUT=${OUT:-$ROOT/target/bench-quick}
else
  [ "$PROFILE" = release ] || { echo "firstbyte.sh: --debug-build only with --quick" >&2; exit 2; }
  RTTS=${RTTS:-0 10 50}; COUNT=${COUNT:-150}; WARMUP=5; OUT=${OUT:-$ROOT/benches}
fi
PRECONNECT=2
ROWS_ALL="det det-preconnect nginx haproxy"
ROWS=${ONLY:+${ONLY//,/ }}
ROWS=${ROWS:-$ROWS_ALL}
for r in $ROWS; do
  case " $ROWS_ALL " in *" $r "*) ;; *) echo "firstbyte.sh: unknown row $r (rows: $ROWS_ALL)" >&2; exit 2 ;; esac
done
mkdir -p "$OUT"

T_START=$(date +%s)
log() { printf '[%4ss] %s\n' "$(( $(date +%s) - T_START ))" "$*" >&2; }
FAILS=0
fail() { FAILS=$((FAILS + 1)); echo "firstbyte.sh: FAILED: $*" >&2; }

if [ "$PROFILE" = release ]; then
  log "cargo build --release --bins --examples"
  cargo build --release --bins --examples --quiet
else
  log "cargo build --bins --examples (dev profile)"
  cargo build --bins --examples --quiet
fi
TARGET=${CARGO_TARGET_DIR:-$ROOT/target}
WORK=$(mktemp -d /tmp/det-tls-firstbyte.XXXXXX)
mkdir -p "$WORK/bin"
cp "$TARGET/$PROFILE/det-tls-proxy" "$TARGET/$PROFILE/examples/loadgen" \
  "$TARGET/$PROFILE/examples/tlssink" "$TARGET/$PROFILE/examples/delay" "$WORK/bin/"
B=$WORK/bin
RAW=$WORK/raw.jsonl
: >"$RAW"
STARTED=()

stop_pid() { # PID: TERM, then KILL after 5 s
  local pid=$1 i
  kill -TERM "$pid" 2>/dev/null || return 0
  for ((i = 0; i < 50; i++)); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
  kill -KILL "$pid" 2>/dev/null || true
  wait "$pid" 2>/dev/null || true
}
cleanup() {
  local rc=$? i
  set +e
  for ((i = ${#STARTED[@]} - 1; i >= 0; i--)); do stop_pid "${STARTED[$i]}"; done
  if [ "$KEEP" = 1 ]; then echo "firstbyte.sh: work directory kept: $WORK" >&2; else rm -rf "$WORK"; fi
  exit $rc
}
trap cleanup EXIT
trap 'exit 130' INT TERM

free_port() {
  python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'
}
wait_listen() { # PORT PID
  local i
  for ((i = 0; i < 150; i++)); do
    if (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; then return 0; fi
    kill -0 "$2" 2>/dev/null || return 1
    sleep 0.1
  done
  return 1
}
json_port() { # FILE KEY: the port of the address under KEY in the first JSON line of FILE
  local i
  for ((i = 0; i < 100; i++)); do [ -s "$1" ] && break; sleep 0.1; done
  python3 -c 'import json, sys; print(json.loads(open(sys.argv[1]).readline())[sys.argv[2]].rsplit(":", 1)[1])' "$1" "$2"
}

# --- the sink --------------------------------------------------------------------------------
PKI=$WORK/pki
"$B/tlssink" --gen "$PKI" --gen-only
CA=$PKI/ca.pem
"$B/tlssink" --cert "$PKI/cert.pem" --key "$PKI/key.pem" --listen 127.0.0.1:0 \
  --listen-no-resume 127.0.0.1:0 --stats-listen 127.0.0.1:0 >"$WORK/sink.out" 2>"$WORK/sink.err" &
STARTED+=($!)
SINK_PORT=$(json_port "$WORK/sink.out" listen) || { echo "firstbyte.sh: tlssink did not start" >&2; exit 1; }

# --- proxies ---------------------------------------------------------------------------------
PROXY_PID=
start_proxy() { # ROW MASTER_PORT LISTEN_PORT
  local row=$1 mp=$2 lp=$3 cfg
  case "$row" in
    det|det-preconnect)
      cfg=$WORK/$row.yaml
      cat >"$cfg" <<EOF
master_host: 127.0.0.1
master_port: $mp
security:
  tls:
    master_cert: $CA
    master_cert_name: bench-master
listeners:
  - name: bench
    listen: 127.0.0.1:$lp
log: {access: false, level: warn}
EOF
      [ "$row" = det-preconnect ] && echo "upstream: {preconnect: $PRECONNECT}" >>"$cfg"
      "$B/det-tls-proxy" run --config "$cfg" >>"$WORK/$row.log" 2>&1 &
      ;;
    haproxy)
      cfg=$WORK/haproxy.cfg
      cat >"$cfg" <<EOF
global
    maxconn 1000
defaults
    mode tcp
    timeout connect 10s
    timeout client 1h
    timeout server 1h
frontend bench
    bind 127.0.0.1:$lp
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
worker_processes 1;
pid $WORK/nginx/nginx.pid;
error_log $WORK/nginx/error.log warn;
events { worker_connections 1024; }
stream {
    access_log off;
    server {
        listen 127.0.0.1:$lp;
        proxy_pass 127.0.0.1:$mp;
        proxy_ssl on;
        proxy_ssl_verify on;
        proxy_ssl_trusted_certificate $CA;
        proxy_ssl_name bench-master;
        proxy_ssl_server_name on;
        proxy_ssl_session_reuse on;
        proxy_ssl_protocols TLSv1.2 TLSv1.3;
        proxy_ssl_conf_command Ciphersuites TLS_AES_128_GCM_SHA256;
        tcp_nodelay on;
    }
}
EOF
      nginx -p "$WORK/nginx" -e "$WORK/nginx/error.log" -c "$cfg" >>"$WORK/nginx.log" 2>&1 &
      ;;
  esac
  PROXY_PID=$!
  STARTED+=("$PROXY_PID")
  wait_listen "$lp" "$PROXY_PID"
}
available() { # ROW: whether its program is installed
  case "$1" in
    nginx) command -v nginx >/dev/null && [ -e /usr/lib/nginx/modules/ngx_stream_module.so ] ;;
    haproxy) command -v haproxy >/dev/null ;;
    *) return 0 ;;
  esac
}

# --- run -------------------------------------------------------------------------------------
for rtt in $RTTS; do
  "$B/delay" --to "127.0.0.1:$SINK_PORT" --rtt-ms "$rtt" >"$WORK/delay-$rtt.out" 2>>"$WORK/delay.err" &
  DELAY_PID=$!
  STARTED+=("$DELAY_PID")
  MP=$(json_port "$WORK/delay-$rtt.out" listen) || { echo "firstbyte.sh: delay did not start" >&2; exit 1; }
  GAP=$((3 * rtt + 20))
  for row in $ROWS; do
    if ! available "$row"; then
      log "$row: not installed, skipped"
      continue
    fi
    LP=$(free_port)
    if ! start_proxy "$row" "$MP" "$LP"; then
      fail "$row did not start listening; its log: $(tail -5 "$WORK/$row.log" 2>/dev/null)"
      continue
    fi
    log "$row, RTT $rtt ms: $COUNT clients ($WARMUP warm-up), $GAP ms apart"
    out=$("$B/loadgen" --addr "127.0.0.1:$LP" --label "$row" firstbyte --count "$COUNT" \
      --warmup "$WARMUP" --gap-ms "$GAP" 2>>"$WORK/loadgen.err") || fail "$row at $rtt ms: $out"
    python3 -c 'import json, sys; d = json.loads(sys.argv[1]); d["row"] = sys.argv[2]; d["rtt_ms"] = int(sys.argv[3]); print(json.dumps(d))' \
      "$out" "$row" "$rtt" >>"$RAW"
    stop_pid "$PROXY_PID"
    PROXY_PID=
  done
  stop_pid "$DELAY_PID"
done

python3 "$ROOT/benches/firstbyte.py" --raw "$RAW" --md "$OUT/firstbyte.md" --svg "$OUT/firstbyte.svg" \
  --json "$OUT/firstbyte.json" --count "$COUNT" --preconnect "$PRECONNECT" --quick "$QUICK" \
  --load "$(cut -d' ' -f1-3 /proc/loadavg)"
# results.md shows these figures beside compare.sh's: render it again from its own data.
if [ -f "$OUT/results.json" ]; then
  python3 "$ROOT/benches/chart.py" --from "$OUT/results.json" --md "$OUT/results.md" --svg "$OUT/results.svg"
fi
log "done with $FAILS failure(s): $OUT/firstbyte.md, $OUT/firstbyte.svg"
[ "$FAILS" = 0 ]
