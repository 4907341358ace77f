#!/usr/bin/env bash
# Soak run before a release (not in CI): N minutes of mixed traffic through a release build
# of det-tls-proxy, sampling its RSS, descriptors, threads and CPU every few seconds.
#
#   tests/soak/soak.sh [MINUTES]        # default 30
#   SAMPLE=5 HOLD=500 OUT=/tmp/soak tests/soak/soak.sh 120
#
# Traffic, over loopback, to the benchmark harness's TLS server (benches/tlssink.rs) through
# the proxy, driven by its load generator (benches/loadgen.rs), which checks every byte:
#   - HOLD idle connections held open for the whole run (agents' long-lived connections);
#   - in a loop until time is up: a burst of short connections (connrate), bulk transfers
#     both ways on 16 connections (multi), request/response ping-pong (latency), and
#     single-connection uploads and downloads.
# Writes OUT/samples.csv (elapsed_s,rss_kib,fds,threads,cpu_s,active), OUT/loadgen.jsonl
# (one JSON result per workload run) and OUT/proxy.log, prints a summary, and exits non-zero
# when a workload failed, the proxy died, or after the load the proxy's descriptors or memory
# did not come back near the idle baseline taken after warm-up.
set -euo pipefail
ROOT=$(cd "$(dirname "$0")/../.." && pwd)
MINUTES=${1:-30}
SAMPLE=${SAMPLE:-5}
HOLD=${HOLD:-500}
OUT=${OUT:-$(mktemp -d /tmp/det-tls-proxy-soak.XXXXXX)}
RSS_SLACK_KIB=${RSS_SLACK_KIB:-16384}
mkdir -p "$OUT"
ulimit -n "$(ulimit -Hn)" 2>/dev/null || true

log() { printf '%s soak: %s\n' "$(date +%T)" "$*" >&2; }
PIDS=()
cleanup() {
  for p in "${PIDS[@]}"; do kill "$p" 2>/dev/null || true; done
  wait 2>/dev/null || true
}
trap cleanup EXIT

log "building the release binary and the harness (cargo build --release --bin det-tls-proxy --examples)"
(cd "$ROOT" && cargo build --release --quiet --bin det-tls-proxy --examples)
BIN=$ROOT/target/release/det-tls-proxy
LG=$ROOT/target/release/examples/loadgen
SINK=$ROOT/target/release/examples/tlssink

# --- the master stand-in ---
"$SINK" --gen "$OUT/pki" --gen-only
"$SINK" --cert "$OUT/pki/cert.pem" --key "$OUT/pki/key.pem" --listen 127.0.0.1:0 \
  >"$OUT/sink.out" 2>"$OUT/sink.err" &
PIDS+=($!)
for _ in $(seq 100); do [ -s "$OUT/sink.out" ] && break; sleep 0.1; done
SINK_PORT=$(sed -n 's/.*"listen":"[^"]*:\([0-9]*\)".*/\1/p' "$OUT/sink.out" | head -1)
[ -n "$SINK_PORT" ] || { log "tlssink did not start: $(cat "$OUT/sink.err")"; exit 1; }

# --- the proxy ---
cat >"$OUT/proxy.yaml" <<YAML
master_host: 127.0.0.1
master_port: $SINK_PORT
security:
  tls:
    master_cert: $OUT/pki/ca.pem
    master_cert_name: bench-master
listeners:
  - {name: main, listen: "127.0.0.1:0"}
admin: {listen: "127.0.0.1:0"}
log: {format: json, level: info, access: false}
YAML
env -u RUST_LOG "$BIN" run --config "$OUT/proxy.yaml" 2>"$OUT/proxy.log" &
PROXY=$!
PIDS+=("$PROXY")
for _ in $(seq 150); do grep -q '"message":"ready"' "$OUT/proxy.log" 2>/dev/null && break; sleep 0.1; done
addr_of() { grep '"message":"listening"' "$OUT/proxy.log" | grep "\"listener\":\"$1\"" | sed 's/.*"addr":"\([^"]*\)".*/\1/' | head -1; }
ADDR=$(addr_of main)
ADMIN=$(addr_of admin)
[ -n "$ADDR" ] && [ -n "$ADMIN" ] || { log "the proxy did not start:"; cat "$OUT/proxy.log" >&2; exit 1; }
log "proxy pid $PROXY on $ADDR (admin $ADMIN), tlssink :$SINK_PORT, output in $OUT"

# --- sampling ---
active() {
  timeout 5 bash -c "exec 5<>/dev/tcp/${ADMIN%:*}/${ADMIN##*:}; printf 'GET /metrics HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n' >&5; cat <&5" 2>/dev/null |
    awk '/^det_tls_proxy_active_connections\{/ {s += $2} END {print s + 0}'
}
sample() { # one CSV row for the proxy
  local st cpu
  [ -d "/proc/$PROXY" ] || return 1
  st=$(sed 's/.*) //' "/proc/$PROXY/stat")
  cpu=$(echo "$st" | awk '{printf "%.2f", ($12 + $13) / 100}')
  printf '%s,%s,%s,%s,%s,%s\n' "$SECONDS" \
    "$(awk '/^VmRSS:/ {print $2}' "/proc/$PROXY/status")" \
    "$(ls "/proc/$PROXY/fd" | wc -l)" \
    "$(awk '/^Threads:/ {print $2}' "/proc/$PROXY/status")" \
    "$cpu" "$(active)"
}
SECONDS=0
echo "elapsed_s,rss_kib,fds,threads,cpu_s,active" >"$OUT/samples.csv"
(while sample >>"$OUT/samples.csv"; do sleep "$SAMPLE"; done) &
PIDS+=($!)

# --- load ---
FAILS=0
RUNS=0
lg() { # loadgen WORKLOAD ARGS...: one run, its JSON appended to loadgen.jsonl
  local out rc=0
  out=$(timeout 600 "$LG" --addr "$ADDR" --timeout 30 "$@" 2>>"$OUT/loadgen.err") || rc=$?
  RUNS=$((RUNS + 1))
  echo "${out:-{\"error\":\"no output\",\"args\":\"$*\"}}" >>"$OUT/loadgen.jsonl"
  if [ "$rc" != 0 ]; then
    FAILS=$((FAILS + 1))
    log "loadgen $* failed (exit $rc): $out"
  fi
}

log "warm-up"
lg connrate --duration 10 --concurrency 16 --size 100
sleep "$SAMPLE"
sleep 2
BASE=$(sample)
log "idle baseline after warm-up: $BASE"

END=$((SECONDS + MINUTES * 60))
"$LG" --addr "$ADDR" --timeout 30 hold --conns "$HOLD" --max-hold $((MINUTES * 60 + 60)) \
  < <(sleep $((MINUTES * 60 + 120))) >"$OUT/hold.out" 2>>"$OUT/loadgen.err" &
HOLD_PID=$!
PIDS+=("$HOLD_PID")
round=0
while [ "$SECONDS" -lt "$END" ]; do
  round=$((round + 1))
  case $((round % 5)) in
    1) lg connrate --duration 30 --concurrency 32 --size 100 ;;
    2) lg multi --conns 16 --bytes 1073741824 --dir mixed ;;
    3) lg latency --count 20000 --warmup 500 --size 64 ;;
    4) lg up --bytes 536870912 ;;
    0) lg down --bytes 536870912 ;;
  esac
  kill -0 "$PROXY" 2>/dev/null || { log "the proxy died"; FAILS=$((FAILS + 1)); break; }
done
LOAD_END=$SECONDS
kill "$HOLD_PID" 2>/dev/null || true
wait "$HOLD_PID" 2>/dev/null || true

log "load over after ${LOAD_END}s ($RUNS runs, $FAILS failed); settling"
for _ in $(seq 60); do
  [ "$(active)" = 0 ] && break
  sleep 1
done
sleep "$SAMPLE"
FINAL=$(sample || echo "0,0,0,0,0,0")

# --- summary ---
IFS=, read -r _ b_rss b_fds b_thr _ _ <<<"$BASE"
IFS=, read -r _ f_rss f_fds f_thr f_cpu f_act <<<"$FINAL"
read -r max_rss max_fds max_thr < <(awk -F, 'NR > 1 { if ($2 > r) r = $2; if ($3 > f) f = $3; if ($4 > t) t = $4 } END { print r, f, t }' "$OUT/samples.csv")
# A slow leak shows as a rising trend: compare the peak of the first and the last third.
read -r early late < <(awk -F, -v s="$(echo "$BASE" | cut -d, -f1)" -v e="$LOAD_END" '
  NR > 1 && $1 > s && $1 <= e { n++; t[n] = $1; r[n] = $2 }
  END { a = 0; b = 0; for (i = 1; i <= n; i++) { if (i <= n / 3 && r[i] > a) a = r[i]; if (i > 2 * n / 3 && r[i] > b) b = r[i] } print a + 0, b + 0 }' "$OUT/samples.csv")
cat <<SUMMARY
det-tls-proxy soak: ${MINUTES} min, ${RUNS} workload runs (${FAILS} failed), ${HOLD} idle connections held throughout
               rss_kib    fds   threads
idle baseline  $b_rss   $b_fds   $b_thr
peak           $max_rss   $max_fds   $max_thr
after load     $f_rss   $f_fds   $f_thr      (active $f_act, cpu ${f_cpu}s)
rss peak, first third of the run: $early KiB; last third: $late KiB
samples: $OUT/samples.csv  workloads: $OUT/loadgen.jsonl
SUMMARY
status=0
[ "$FAILS" = 0 ] || { log "FAIL: $FAILS workload run(s) failed"; status=1; }
[ "$f_fds" -le $((b_fds + 2)) ] || { log "FAIL: descriptors $b_fds at rest before, $f_fds after"; status=1; }
[ "$f_rss" -le $((b_rss + RSS_SLACK_KIB)) ] || { log "FAIL: RSS ${b_rss} KiB at rest before, ${f_rss} KiB after (slack ${RSS_SLACK_KIB})"; status=1; }
if [ "$early" -gt 0 ] && [ "$late" -gt $((early + early / 4 + RSS_SLACK_KIB)) ]; then
  log "FAIL: RSS trend: peak $early KiB early, $late KiB late"
  status=1
fi
[ "$status" = 0 ] && log "PASS"
exit "$status"
