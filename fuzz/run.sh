#!/usr/bin/env bash
# Runs every cargo-fuzz target for a bounded time: FUZZ_SECONDS each (default 30).
#   fuzz/run.sh                 # all targets
#   fuzz/run.sh pem_load        # some targets
# Needs cargo-fuzz (`cargo install cargo-fuzz`). On a stable toolchain, RUSTC_BOOTSTRAP=1
# lets cargo-fuzz pass its -Z flags; the sanitizer defaults to none (SANITIZER=address to
# try ASan: the targets are safe Rust, so none loses little). Seeds are made at run time
# from the repository's example and fixture configs and a freshly generated certificate:
# nothing secret is checked in. A crash leaves its input in fuzz/artifacts/TARGET/ and
# makes this script exit non-zero.
set -euo pipefail
cd "$(dirname "$0")"
SECS=${FUZZ_SECONDS:-30}
SANITIZER=${SANITIZER:-none}
export RUSTC_BOOTSTRAP=1

if ! cargo fuzz --version >/dev/null 2>&1; then
  echo "run.sh: cargo-fuzz is not installed (cargo install cargo-fuzz)" >&2
  exit 2
fi

targets=("$@")
if [ ${#targets[@]} -eq 0 ]; then
  mapfile -t targets < <(cargo fuzz list)
fi

seed() { # TARGET: fill corpus/TARGET with starting inputs
  local t=$1 dir=corpus/$1
  mkdir -p "$dir"
  case $t in
    config_parse)
      for f in ../deploy/*.yaml ../deploy/*/*.yaml ../tests/config/invalid/*.yaml; do
        [ -f "$f" ] && cp "$f" "$dir/$(echo "$f" | tr '/.' '__')"
      done
      printf 'master_host: det-master\nlisteners: [{name: main, listen: "127.0.0.1:0"}]\n' >"$dir/minimal"
      ;;
    pem_load | cert_summary)
      if command -v openssl >/dev/null; then
        local tmp
        tmp=$(mktemp -d)
        openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -days 30 \
          -subj /CN=det-master -addext subjectAltName=DNS:det-master,IP:10.0.0.5 \
          -keyout "$tmp/key.pem" -out "$tmp/cert.pem" 2>/dev/null
        if [ "$t" = pem_load ]; then
          cp "$tmp/cert.pem" "$dir/cert.pem"
          cat "$tmp/cert.pem" "$tmp/cert.pem" >"$dir/bundle.pem"
        else
          openssl x509 -in "$tmp/cert.pem" -outform DER -out "$dir/cert.der"
        fi
        rm -rf "$tmp"
      fi
      ;;
    fingerprint)
      printf 'SHA256 Fingerprint=%s\n' "$(printf 'AB:%.0s' $(seq 31))AB" >"$dir/openssl"
      printf '%s' "$(printf 'ab%.0s' $(seq 32))" >"$dir/bare"
      ;;
    first_bytes)
      printf 'PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n' >"$dir/preface"
      printf 'GET / HTTP/1.1\r\n' >"$dir/http1"
      printf '\026\003\001\000\055\001\000\000\051' >"$dir/client_hello"
      printf '\026\003\003\100\000\001\000\100\000' >"$dir/client_hello_fragment"
      ;;
  esac
}

failed=()
for t in "${targets[@]}"; do
  seed "$t"
  echo "== $t: ${SECS}s (sanitizer $SANITIZER)"
  if ! cargo fuzz run "$t" --sanitizer "$SANITIZER" "corpus/$t" -- \
      -max_total_time="$SECS" -rss_limit_mb=2048 -timeout=10 -print_final_stats=1; then
    failed+=("$t")
  fi
done
if [ ${#failed[@]} -gt 0 ]; then
  echo "run.sh: crashes in: ${failed[*]} (inputs in fuzz/artifacts/)" >&2
  exit 1
fi
echo "run.sh: ${#targets[@]} target(s), ${SECS}s each, no crash"
