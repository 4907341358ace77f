#!/usr/bin/env bash
# benches/soak.sh — MINUTES of mixed traffic through det-tls-proxy (not run in CI).
#
#   benches/soak.sh [MINUTES] [--interval SECONDS] [--keep]      (default 10 minutes, 5 s)
#
# Starts tlssink and det-tls-proxy (access log off, admin endpoint on) on loopback ports, then
# until the time is up runs, side by side and each in a loop: new connections (connect, echo,
# close), transfers (64 MiB up, down, and 8 connections mixed), 64-byte ping-pong latency runs,
# 200 connections held idle throughout, and 100 more opened and released every minute.
# Every few seconds it prints the proxy's RSS, PSS, open fds, threads, CPU seconds, active
# connections (from /metrics) and the failures so far. At the end it stops the load, waits for
# the proxy to go idle and compares with the start: exit 1 if any workload failed, the proxy
# died, or its fds did not come back to where they started (a leak).
set -euo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$ROOT"
MINUTES=10 INTERVAL=5 KEEP=0
while [ $# -gt 0 ]; do
  case "$1" in
    --interval) INTERVAL=$2; shift ;;
    --keep) KEEP=1 ;;
    -h|--help) sed -n '2,14p' "$0" | sed 's/^# \{0,1\}//'; exit 0 ;;
    [0-9]*) MINUTES=$1 ;;
    *) echo "soak.sh: unknown argument $1" >&2; exit 2 ;;
  esac
  shift
done

cargo build --release --bins --examples --quiet
WORK=$(mktemp -d /tmp/det-tls-soak.XXXXXX)
# Run copies, so a rebuild in the work tree during the soak cannot swap binaries under it.
mkdir -p "$WORK/bin"
cp "$ROOT/target/release/det-tls-proxy" "$ROOT/target/release/examples/loadgen" "$ROOT/target/release/examples/tlssink" "$WORK/bin/"
PROXY=$WORK/bin/det-tls-proxy
LG=$WORK/bin/loadgen
SINK=$WORK/bin/tlssink
STARTED=()
tree_pids() {
  ps -e -o pid=,ppid= | awk -v root="$1" '
    { kids[$2] = kids[$2] " " $1; alive[$1] = 1 }
    END { if (!(root in alive)) exit; n = 1; q[1] = root
          for (i = 1; i <= n; i++) { print q[i]; m = split(kids[q[i]], k, " "); for (j = 1; j <= m; j++) q[++n] = k[j] } }'
}
kill_tree() {
  local root=$1 pids i
  pids=$(tree_pids "$root")
  [ -n "$pids" ] || return 0
  kill -TERM $pids 2>/dev/null || true
  for ((i = 0; i < 100; i++)); do kill -0 "$root" 2>/dev/null || break; sleep 0.1; done
  for p in $pids; do kill -KILL "$p" 2>/dev/null || true; done
  wait "$root" 2>/dev/null || true
}
cleanup() {
  local rc=$?
  set +e
  for ((i = ${#STARTED[@]} - 1; i >= 0; i--)); do kill_tree "${STARTED[$i]}"; done
  if [ "$KEEP" = 1 ]; then echo "soak.sh: work directory kept: $WORK" >&2; else rm -rf "$WORK"; fi
  exit $rc
}
trap cleanup EXIT
trap 'exit 130' INT TERM
ulimit -n "$(ulimit -Hn)" 2>/dev/null || true

"$SINK" --gen "$WORK/pki" --gen-only
"$SINK" --cert "$WORK/pki/cert.pem" --key "$WORK/pki/key.pem" --listen 127.0.0.1:0 --stats-listen 127.0.0.1:0 \
  >"$WORK/sink.out" 2>"$WORK/sink.err" &
STARTED+=($!)
for ((i = 0; i < 100; i++)); do [ -s "$WORK/sink.out" ] && break; sleep 0.1; done
read -r MP LP AP < <(python3 -c '
import json, socket, sys
d = json.loads(open(sys.argv[1]).readline())
s1 = socket.socket(); s1.bind(("127.0.0.1", 0)); s2 = socket.socket(); s2.bind(("127.0.0.1", 0))
print(d["listen"].rsplit(":", 1)[1], s1.getsockname()[1], s2.getsockname()[1])' "$WORK/sink.out")
cat >"$WORK/proxy.yaml" <<EOF
master_host: 127.0.0.1
master_port: $MP
security:
  tls:
    master_cert: $WORK/pki/ca.pem
    master_cert_name: bench-master
listeners:
  - name: soak
    listen: 127.0.0.1:$LP
admin:
  listen: 127.0.0.1:$AP
log: {access: false, level: warn}
EOF
"$PROXY" run --config "$WORK/proxy.yaml" >"$WORK/proxy.log" 2>&1 &
PID=$!
STARTED+=($PID)
for ((i = 0; i < 150; i++)); do ss -Hltn "sport = :$LP" | grep -q . && break; sleep 0.1; done
ss -Hltn "sport = :$LP" | grep -q . || { echo "soak.sh: det-tls-proxy did not start: $(cat "$WORK/proxy.log")" >&2; exit 1; }

START=$(date +%s)
END=$((START + MINUTES * 60))
FAILS=$WORK/failures
: >"$FAILS"
L=("$LG" --addr "127.0.0.1:$LP")
metric() { # NAME: sum of a Prometheus metric's samples from /metrics
  timeout 3 bash -c "exec 5<>/dev/tcp/127.0.0.1/$AP && printf 'GET /metrics HTTP/1.0\r\nHost: x\r\n\r\n' >&5 && cat <&5" 2>/dev/null |
    awk -v m="$1" '$1 == m || index($1, m "{") == 1 { s += $NF; f = 1 } END { if (f) printf "%d", s; else print "-" }'
}
CLK=$(getconf CLK_TCK)
sample() {
  local rss pss fds thr cpu
  kill -0 "$PID" 2>/dev/null || { echo "soak.sh: det-tls-proxy (PID $PID) died: $(tail -5 "$WORK/proxy.log")" >&2; return 1; }
  rss=$(awk '/^VmRSS:/ {print $2}' "/proc/$PID/status")
  pss=$(awk '/^Pss:/ {print $2}' "/proc/$PID/smaps_rollup")
  thr=$(awk '/^Threads:/ {print $2}' "/proc/$PID/status")
  fds=$(ls "/proc/$PID/fd" | wc -l)
  cpu=$(sed 's/.*) //' "/proc/$PID/stat" | awk -v c="$CLK" '{printf "%.1f", ($12 + $13) / c}')
  printf '%7s %10s %10s %6s %5s %8s %7s %9s\n' "$(( $(date +%s) - START ))s" "$rss" "$pss" "$fds" "$thr" "$cpu" \
    "$(metric det_tls_proxy_active_connections)" "$(wc -l <"$FAILS")"
  echo "$rss $pss $fds" >>"$WORK/samples"
}
printf '%7s %10s %10s %6s %5s %8s %7s %9s\n' elapsed "RSS KiB" "PSS KiB" fds thr "CPU s" active failures
sample
read -r _ _ FD0 <"$WORK/samples"
loop() { # NAME LIMIT_SECONDS workload...: run until END, each run bounded
  local name=$1 limit=$2 out
  shift 2
  while [ "$(date +%s)" -lt "$END" ]; do
    if ! out=$(timeout "$limit" "${L[@]}" "$@" 2>>"$WORK/loadgen.err"); then
      echo "$(( $(date +%s) - START ))s $name: ${out:-timed out}" >>"$FAILS"
      sleep 1
    fi
  done
}
loop connrate 120 connrate --duration 10 --concurrency 8 &
STARTED+=($!)
( while [ "$(date +%s)" -lt "$END" ]; do
    for w in "up --bytes 67108864" "down --bytes 67108864" "multi --conns 8 --bytes 67108864"; do
      [ "$(date +%s)" -lt "$END" ] || break
      # shellcheck disable=SC2086
      out=$(timeout 300 "${L[@]}" $w 2>>"$WORK/loadgen.err") || echo "$(( $(date +%s) - START ))s ${w%% *}: ${out:-timed out}" >>"$FAILS"
      sleep 2
    done
  done ) &
STARTED+=($!)
loop latency 120 latency --count 5000 --warmup 100 &
STARTED+=($!)

hold() { # N SECONDS: hold N idle connections for SECONDS (bounded by END)
  local n=$1 secs=$2 fifo out pid fd i
  fifo=$WORK/hold.$BASHPID.$RANDOM
  mkfifo "$fifo"
  "${L[@]}" hold --conns "$n" --max-hold $((MINUTES * 60 + 60)) <"$fifo" >"$fifo.out" 2>>"$WORK/loadgen.err" &
  pid=$!
  exec {fd}>"$fifo"
  for ((i = 0; i < secs && $(date +%s) < END; i++)); do sleep 1; done
  exec {fd}>&-
  for ((i = 0; i < 100; i++)); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
  kill -KILL "$pid" 2>/dev/null || true
  wait "$pid" 2>/dev/null || true
  grep -q '"error"' "$fifo.out" && echo "$(( $(date +%s) - START ))s hold $n: $(tail -1 "$fifo.out")" >>"$FAILS"
  rm -f "$fifo" "$fifo.out"
}
hold 200 $((MINUTES * 60)) &
STARTED+=($!)
( while [ "$(date +%s)" -lt "$END" ]; do hold 100 30; sleep 30; done ) &
STARTED+=($!)

while [ "$(date +%s)" -lt "$END" ]; do
  sleep "$INTERVAL"
  sample || exit 1
done
echo "-- load stopped; waiting for the proxy to go idle" >&2
for p in "${STARTED[@]:2}"; do kill_tree "$p"; done
STARTED=("${STARTED[@]:0:2}")
for ((i = 0; i < 60; i++)); do
  [ "$(metric det_tls_proxy_active_connections)" = 0 ] && break
  sleep 1
done
sample || exit 1
read -r _ _ FD1 < <(tail -1 "$WORK/samples")
awk '{ if ($1 > r) r = $1; if ($3 > f) f = $3 } END { printf "max RSS %d KiB, max fds %d\n", r, f }' "$WORK/samples"
echo "fds at start $FD0, at the end $FD1; failures $(wc -l <"$FAILS")"
[ -s "$FAILS" ] && { echo "failures:"; head -20 "$FAILS"; }
[ ! -s "$FAILS" ] && [ "$FD1" -le $((FD0 + 2)) ]
