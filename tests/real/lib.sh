# shellcheck shell=bash
# Shared by tests/real/systemd.sh and tests/real/container.sh: named checks with an ok/FAIL
# summary, waiting on conditions with deadlines, certificates made with openssl at test time.

REAL_DIR=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
# shellcheck disable=SC2034 # used by the scripts that source this file
ROOT=$(cd "$REAL_DIR/../.." && pwd)
# Exit status of a script that cannot run here at all (.ci/run turns it into a failure).
EXIT_SKIP=77

# The real interpreter (a pyenv shim would fork, and the pid we kill would not be the server).
# shellcheck disable=SC2034 # used by the scripts that source this file
PY=$(python3 -c 'import sys; print(sys.executable)' 2>/dev/null || echo python3)

_results=()
_failed=0
_t0=$(date +%s)

say() { printf '[%4ds] %s\n' "$(($(date +%s) - _t0))" "$*" >&2; }
# err MESSAGE: the reason a check fails (the check then returns 1).
err() { printf '    error: %s\n' "$*" >&2; }

# run_check NAME: runs the function NAME; records ok/FAIL. Checks return non-zero on failure.
run_check() {
    local name=$1 start rc
    start=$(date +%s)
    say "== $name"
    "$name"
    rc=$?
    if [ "$rc" -eq 0 ]; then
        _results+=("ok    $name ($(($(date +%s) - start))s)")
    else
        _results+=("FAIL  $name ($(($(date +%s) - start))s)")
        _failed=$((_failed + 1))
        say "FAIL: $name"
    fi
    return 0
}

# summary TITLE: prints every check with ok/FAIL; returns 1 when one failed.
summary() {
    echo
    echo "== $1: $((${#_results[@]} - _failed))/${#_results[@]} checks passed in $(($(date +%s) - _t0))s"
    printf '  %s\n' "${_results[@]}"
    [ "$_failed" -eq 0 ]
}

skip() {
    echo "SKIP: $*" >&2
    exit "$EXIT_SKIP"
}

# wait_until SECONDS DESCRIPTION CMD...: polls CMD every 0.1 s until it succeeds or the
# deadline passes (then says what it waited for and returns 1).
wait_until() {
    local secs=$1 what=$2 deadline
    shift 2
    deadline=$(($(date +%s%N) + secs * 1000000000))
    until "$@" >/dev/null 2>&1; do
        if [ "$(date +%s%N)" -gt "$deadline" ]; then
            err "timed out after ${secs}s waiting for: $what"
            return 1
        fi
        sleep 0.1
    done
}

# poll_until SECONDS CMD...: the same, silent (for a condition that may rightly not come).
poll_until() {
    local secs=$1 deadline
    shift
    deadline=$(($(date +%s%N) + secs * 1000000000))
    until "$@" >/dev/null 2>&1; do
        [ "$(date +%s%N)" -gt "$deadline" ] && return 1
        sleep 0.1
    done
}

now_ms() { echo $(($(date +%s%N) / 1000000)); }

# make_certs DIR: ca.crt/ca.key (the master's and the agent's CA), master.crt/master.key
# (valid only for the DNS name det-master.example.com), agent.crt/agent.key (client auth).
make_certs() {
    local d=$1
    mkdir -p "$d"
    (
        set -e
        cd "$d"
        openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes \
            -keyout ca.key -out ca.crt -days 60 -subj "/CN=det-tls-proxy test CA" \
            -addext "basicConstraints=critical,CA:TRUE" -addext "keyUsage=critical,keyCertSign,cRLSign"
        for who in master agent; do
            openssl req -new -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes \
                -keyout "$who.key" -out "$who.csr" -subj "/CN=$who"
        done
        printf '%s\n' "basicConstraints=CA:FALSE" "keyUsage=critical,digitalSignature" \
            "extendedKeyUsage=serverAuth" "subjectAltName=DNS:det-master.example.com" >master.ext
        printf '%s\n' "basicConstraints=CA:FALSE" "keyUsage=critical,digitalSignature" \
            "extendedKeyUsage=clientAuth" >agent.ext
        for who in master agent; do
            openssl x509 -req -in "$who.csr" -CA ca.crt -CAkey ca.key -CAcreateserial \
                -days 60 -out "$who.crt" -extfile "$who.ext"
        done
        rm -f ./*.csr ./*.ext ca.srl
    ) >"$d/openssl.log" 2>&1 || { err "openssl failed: $(cat "$d/openssl.log")"; return 1; }
}
