#!/usr/bin/env bash
# Builds the libFuzzer targets (build-fuzz/, clang, ASan + UBSan) if needed
# and runs each for SECONDS, one after another; prints executions and
# coverage per target (libFuzzer's final stats) and fails on any crash, leak,
# timeout (a hang: one input over 30 s) or out-of-memory (2 GB).
# Usage: scripts/fuzz.sh SECONDS [TARGET...]   (targets: tests/fuzz/*.cc, default all)
#        scripts/fuzz.sh --seeds               (rewrites tests/fuzz/corpus/ from make_seeds.py
#                                                and the coordinator fuzzer's scenarios)
# Each run starts from the seed corpus tests/fuzz/corpus/TARGET (regression
# inputs included, so every past crash is replayed first) plus what earlier
# runs found (build-fuzz/fuzz-corpus/TARGET, not committed). A crashing input
# is saved as build-fuzz/fuzz-artifacts/TARGET/crash-*; reproduce it with
# build-fuzz/fuzz/fuzz_TARGET FILE. Leaks are checked after every input,
# except for the coordinator target (at exit only; see below). Environment: SAE_FUZZ_NICE (niceness,
# default 0), SAE_FUZZ_JOBS (build jobs, default nproc), SAE_FUZZ_BUILD=0
# (run the targets already built, do not build).
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$PWD
B=$ROOT/build-fuzz

build() {
  if [ ! -f "$B/CMakeCache.txt" ]; then
    command -v clang++ >/dev/null || { echo "fuzz: clang++ is missing (apt-get install clang libclang-rt-dev)"; exit 1; }
    generator=()
    command -v ninja >/dev/null && generator=(-G Ninja)
    launcher=()
    command -v ccache >/dev/null && launcher=(-DCMAKE_CXX_COMPILER_LAUNCHER=ccache)
    cmake -S . -B "$B" "${generator[@]}" "${launcher[@]}" -DCMAKE_BUILD_TYPE=RelWithDebInfo \
      -DCMAKE_CXX_COMPILER=clang++ -DSAE_FUZZ=ON -DSAE_BUILD_TESTS=OFF -DSAE_BUILD_BENCHMARKS=OFF >/dev/null
  fi
  cmake --build "$B" -j"${SAE_FUZZ_JOBS:-$(nproc)}" --target fuzzers
}

all_targets() {
  for f in "$ROOT"/tests/fuzz/*.cc; do basename "$f" .cc; done
}

if [ "${1:-}" = "--seeds" ]; then
  build
  python3 tests/fuzz/make_seeds.py
  rm -rf tests/fuzz/corpus/coordinator/seed-*
  mkdir -p tests/fuzz/corpus/coordinator
  tmp=$(mktemp -d)
  SAE_FUZZ_WRITE_SEEDS=$tmp "$B/fuzz/fuzz_coordinator"
  for f in "$tmp"/*; do cp "$f" "tests/fuzz/corpus/coordinator/seed-$(basename "$f")"; done
  rm -rf "$tmp"
  du -sh tests/fuzz/corpus
  exit 0
fi

SECONDS_EACH=${1:?usage: scripts/fuzz.sh SECONDS [TARGET...]}
shift
targets=("$@")
((${#targets[@]})) || mapfile -t targets < <(all_targets)

[ "${SAE_FUZZ_BUILD:-1}" = 0 ] || build

export ASAN_OPTIONS=${ASAN_OPTIONS:-detect_leaks=1:abort_on_error=1}
export UBSAN_OPTIONS=${UBSAN_OPTIONS:-print_stacktrace=1:halt_on_error=1}
export LSAN_OPTIONS=${LSAN_OPTIONS:-suppressions=$ROOT/tests/fuzz/lsan.supp:print_suppressions=0}
export SAE_LOG_LEVEL=${SAE_LOG_LEVEL:-error}

summary=()
failed=0
for t in "${targets[@]}"; do
  bin=$B/fuzz/fuzz_$t
  [ -x "$bin" ] || { echo "fuzz: no target $t"; exit 1; }
  work=$B/fuzz-corpus/$t
  art=$B/fuzz-artifacts/$t
  log=$B/fuzz-logs/$t.log
  mkdir -p "$work" "$art" "$(dirname "$log")"
  # The coordinator target runs a gRPC server whose threads are still
  # finishing the last StreamShard call when an input returns. libFuzzer's
  # check after each input (__lsan_do_recoverable_leak_check, taken while
  # those threads run) then reports objects of that call as leaked about once
  # in 100,000 inputs (google/sanitizers#757; docs/reliability.md, Fuzzing).
  # That target is leak-checked once, at exit, instead: memory really lost
  # during the run is still lost then and fails the run.
  leaks=()
  [ "$t" = coordinator ] && leaks=(-detect_leaks=0)
  echo "== fuzz_$t: ${SECONDS_EACH}s"
  set +e
  nice -n "${SAE_FUZZ_NICE:-0}" "$bin" -max_total_time="$SECONDS_EACH" -print_final_stats=1 -timeout=30 \
    -rss_limit_mb=2048 -artifact_prefix="$art/" -close_fd_mask=1 "${leaks[@]}" \
    "$work" "$ROOT/tests/fuzz/corpus/$t" >"$log" 2>&1
  rc=$?
  set -e
  execs=$(sed -n 's/^stat::number_of_executed_units: *//p' "$log" | tail -1)
  rss=$(sed -n 's/^stat::peak_rss_mb: *//p' "$log" | tail -1)
  cov=$(grep -Eo 'cov: [0-9]+ ft: [0-9]+ corp: [0-9]+' "$log" | tail -1)
  if [ $rc -eq 0 ]; then
    result=ok
  else
    result="FAILED (exit $rc, see $log and $art/)"
    failed=1
    grep -E 'ERROR: (AddressSanitizer|LeakSanitizer|libFuzzer)|runtime error|fuzz check failed|==ERROR|SUMMARY' "$log" | head -5 || true
  fi
  summary+=("$(printf '%-18s %6ss %10s execs  %-28s rss %5s MB  %s' "$t" "$SECONDS_EACH" "${execs:-?}" "${cov:-?}" "${rss:-?}" "$result")")
done
echo
echo "fuzz summary (cov = edges covered, ft = features, corp = corpus inputs):"
printf '%s\n' "${summary[@]}"
exit $failed
