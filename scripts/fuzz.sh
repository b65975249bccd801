#!/usr/bin/env bash
# Builds and runs every cargo-fuzz target for a bounded time each:
#
#   bash scripts/fuzz.sh [SECONDS_PER_TARGET]      (default: $FUZZ_SECONDS, else 60)
#
# Targets: fuzz/ (wire decoders, join payload, filter grammar, JWT verification) and
# wal/fuzz/ (pgoutput decoder). Each run starts from the committed seed corpus
# (fuzz/corpus/<target>/, read-only) and writes what it finds to a scratch directory.
# One line per target:
#
#   fuzz: frame_v1 ok (1234567 runs in 60 s, cpu 59.8 s)
#   fuzz: jwt FAILED (crash: fuzz/artifacts/jwt/crash-…)
#
# Exit status is non-zero if any target failed to build or crashed; a crashing input is
# kept under <crate>/artifacts/<target>/ and printed as hex.
#
# Targets are built optimized with debug assertions and overflow checks on (cargo-fuzz's
# default), under AddressSanitizer.
#
# Needs only rustup's stable toolchain and a C++ compiler (libFuzzer is C++): the
# sanitizer flags are nightly-only, so RUSTC_BOOTSTRAP=1 lets stable accept them, and
# cargo-fuzz is installed with `cargo install cargo-fuzz --locked` if missing.
#
# Env:
#   FUZZ_TARGETS     space-separated subset of targets to run (default: all)
#   FUZZ_SANITIZER   address (default) or none
#   FUZZ_CORPUS_DIR  keep the grown corpora here (<dir>/<target>) instead of a temp dir,
#                    so that repeated runs build on each other
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"

SECONDS_PER_TARGET="${1:-${FUZZ_SECONDS:-60}}"
if ! [[ "$SECONDS_PER_TARGET" =~ ^[0-9]+$ ]] || [[ "$SECONDS_PER_TARGET" -lt 1 ]]; then
  echo "usage: $0 [SECONDS_PER_TARGET]  (a positive integer)" >&2
  exit 2
fi
SANITIZER="${FUZZ_SANITIZER:-address}"
export RUSTC_BOOTSTRAP=1
TRIPLE="$(rustc -vV | sed -n 's/^host: //p')"

# crate directory : targets
CRATES=(
  "fuzz:frame_v1 frame_v2_text frame_v2_binary join filter jwt"
  "wal/fuzz:pgoutput"
)

WORK="$(mktemp -d "${TMPDIR:-/tmp}/realtime-fuzz.XXXXXX")"
trap 'rm -rf "$WORK"' EXIT

# ---------------------------------------------------------------- cargo-fuzz
if ! cargo fuzz --version >/dev/null 2>&1; then
  if [[ -x "${CARGO_HOME:-$HOME/.cargo}/bin/cargo-fuzz" ]]; then
    export PATH="${CARGO_HOME:-$HOME/.cargo}/bin:$PATH"
  else
    echo "==> cargo install cargo-fuzz --locked"
    cargo install cargo-fuzz --locked
    export PATH="${CARGO_HOME:-$HOME/.cargo}/bin:$PATH"
  fi
fi

wanted() {
  [[ -z "${FUZZ_TARGETS:-}" ]] && return 0
  [[ " $FUZZ_TARGETS " == *" $1 "* ]]
}

FAILED=0
SUMMARY=()

for entry in "${CRATES[@]}"; do
  dir="${entry%%:*}"
  targets=()
  for t in ${entry#*:}; do
    wanted "$t" && targets+=("$t")
  done
  [[ ${#targets[@]} -eq 0 ]] && continue

  echo "==> building ${targets[*]} in $dir (sanitizer: $SANITIZER)"
  built=1
  for t in "${targets[@]}"; do
    if ! (cd "$dir" && cargo fuzz build -s "$SANITIZER" "$t"); then
      built=0
      break
    fi
  done
  if [[ $built -eq 0 ]]; then
    for t in "${targets[@]}"; do
      SUMMARY+=("fuzz: $t FAILED (build)")
    done
    FAILED=1
    continue
  fi

  for t in "${targets[@]}"; do
    bin="$dir/target/$TRIPLE/release/$t"
    if [[ -n "${FUZZ_CORPUS_DIR:-}" ]]; then
      scratch="$FUZZ_CORPUS_DIR/$t"
    else
      scratch="$WORK/corpus/$t"
    fi
    artifacts="$dir/artifacts/$t"
    mkdir -p "$scratch" "$artifacts"
    seeds=()
    [[ -d "$dir/corpus/$t" ]] && seeds+=("$dir/corpus/$t")
    log="$WORK/$t.log"
    echo "==> fuzzing $t for ${SECONDS_PER_TARGET} s"
    rc=0
    TIMEFORMAT='%U %S'
    { time "$bin" -max_total_time="$SECONDS_PER_TARGET" -timeout=10 -print_final_stats=1 \
        -artifact_prefix="$artifacts/" "$scratch" "${seeds[@]}" >"$log" 2>&1; } 2>"$WORK/$t.time" || rc=$?
    cpu="$(awk '{ printf "%.1f", $1 + $2 }' "$WORK/$t.time" 2>/dev/null || echo "?")"
    # "Done 123456 runs in 60 second(s)"
    done_line="$(grep -E '^Done [0-9]+ runs in [0-9]+ second' "$log" | tail -n 1 || true)"
    if [[ $rc -eq 0 && -n "$done_line" ]]; then
      runs="$(awk '{ print $2 }' <<<"$done_line")"
      secs="$(awk '{ print $5 }' <<<"$done_line")"
      SUMMARY+=("fuzz: $t ok ($runs runs in $secs s, cpu $cpu s)")
    else
      FAILED=1
      tail -n 60 "$log"
      crash="$(sed -n 's/.*Test unit written to \(.*\)$/\1/p' "$log" | tail -n 1)"
      if [[ -n "$crash" && -f "$crash" ]]; then
        echo "--- crashing input ($crash), hex:"
        od -An -tx1 -v "$crash" | head -n 64
        SUMMARY+=("fuzz: $t FAILED (crash: $crash, cpu $cpu s)")
      else
        SUMMARY+=("fuzz: $t FAILED (exit $rc)")
      fi
    fi
  done
done

echo
printf '%s\n' "${SUMMARY[@]}"
exit "$FAILED"
