#!/usr/bin/env bash
# Sanitizer builds and their tests (gcc, each in a build dir of its own):
#   build-asan: ASan + UBSan (SAE_SANITIZE=ON), every unit and integration test;
#   build-tsan: TSan (SAE_TSAN=ON), test_base (the lock wrapper of
#               core/base/mutex.h), the coordinator and communicator tests
#               and test_service (the worker agent: TSan-built
#               sae-coordinator and sae-worker processes); SAE_TSAN_SERVICE=0
#               leaves test_service out (what CI runs).
# Usage: scripts/sanitizers.sh [asan|tsan]...   (default: both)
# A subset (what CI runs, scripts/test.sh SAE_FULL_CHECKS=ci):
#   SAE_ASAN_TARGETS="t1 t2 ..." builds only those targets in build-asan,
#   SAE_ASAN_TESTS=REGEX runs only the ctest names matching it.
# Reports are fatal (halt_on_error); third-party noise is suppressed only
# through tests/sanitizers/*.supp, each entry with its reason, and for TSan
# ignore_noninstrumented_modules (below).
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$PWD
kinds=("$@")
((${#kinds[@]})) || kinds=(asan tsan)
generator=()
command -v ninja >/dev/null && generator=(-G Ninja)
launcher=()
command -v ccache >/dev/null && launcher=(-DCMAKE_CXX_COMPILER_LAUNCHER=ccache)
jobs=${SAE_SANITIZER_JOBS:-$(nproc)}
S=$ROOT/tests/sanitizers

# The TSan subset: ctest names (regex) and the targets they need.
# The project's locks are sae::Mutex (core/base/mutex.h), which tells TSan
# about each lock, unlock and wait: Debian's absl is not TSan-instrumented,
# so a bare absl::Mutex would be invisible to it.
TSAN_TESTS='^(test_base|test_coordinator|test_comm|test_comm_gloo|test_comm_mpi)$'
TSAN_TARGETS=(test_base test_coordinator test_comm)
if [ "${SAE_TSAN_SERVICE:-1}" = 1 ]; then
  TSAN_TESTS='^(test_base|test_coordinator|test_comm|test_comm_gloo|test_comm_mpi|test_service)$'
  TSAN_TARGETS+=(test_service sae sae-worker sae-coordinator)
fi

for kind in "${kinds[@]}"; do
  B=$ROOT/build-$kind
  start=$(date +%s)
  case $kind in
    asan)
      [ -f "$B/CMakeCache.txt" ] || cmake -S . -B "$B" "${generator[@]}" "${launcher[@]}" \
        -DCMAKE_BUILD_TYPE=Release -DSAE_SANITIZE=ON -DSAE_BUILD_BENCHMARKS=OFF >/dev/null
      if [ -n "${SAE_ASAN_TARGETS:-}" ]; then
        read -r -a asan_targets <<<"$SAE_ASAN_TARGETS"
        cmake --build "$B" -j"$jobs" --target "${asan_targets[@]}"
      else
        cmake --build "$B" -j"$jobs"
      fi
      ;;
    tsan)
      [ -f "$B/CMakeCache.txt" ] || cmake -S . -B "$B" "${generator[@]}" "${launcher[@]}" \
        -DCMAKE_BUILD_TYPE=Release -DSAE_TSAN=ON -DSAE_BUILD_BENCHMARKS=OFF >/dev/null
      cmake --build "$B" -j"$jobs" --target "${TSAN_TARGETS[@]}"
      ;;
    *) echo "sanitizers: unknown kind $kind (asan or tsan)"; exit 2 ;;
  esac
  built=$(date +%s)
  export UBSAN_OPTIONS="print_stacktrace=1:halt_on_error=1:suppressions=$S/ubsan.supp"
  export ASAN_OPTIONS="detect_leaks=1:abort_on_error=1:detect_stack_use_after_return=0"
  export LSAN_OPTIONS="suppressions=$S/lsan.supp:print_suppressions=0"
  # ignore_noninstrumented_modules: an interceptor called from an
  # uninstrumented library (LibTorch, Gloo, glibc, glog: a free, memcpy,
  # writev or pthread_cond_destroy made by their code) is not checked as a
  # memory access, while its locks still count for ordering; races between
  # accesses of project code (instrumented) are all still reported. See
  # docs/reliability.md (Sanitizers) for the reports this removes.
  export TSAN_OPTIONS="halt_on_error=1:second_deadlock_stack=1:report_signal_unsafe=0:ignore_noninstrumented_modules=1:suppressions=$S/tsan.supp"
  # (Sanitized code runs 2-15x slower: sae_add_test triples timeouts in these builds.)
  if [ "$kind" = asan ]; then
    select=()
    [ -n "${SAE_ASAN_TESTS:-}" ] && select=(-R "$SAE_ASAN_TESTS")
    # Open MPI frees (or not) its plugins' allocations after dlclose-ing them,
    # so LeakSanitizer can neither name nor suppress them (the reports' frames
    # are "<unknown module>" or whatever library was mapped there since): the
    # tests that run MPI ranks (test_comm_mpi, and test_mpi's mpirun'd
    # sae-worker) run with ASan and UBSan but without leak checking.
    noleak='^(test_comm_mpi|test_mpi)$'
    ctest --test-dir "$B" --output-on-failure -j"${SAE_TEST_JOBS:-$(nproc)}" "${select[@]}" -E "$noleak" || rc=$?
    mpi_tests=()
    for t in test_comm_mpi test_mpi; do
      if { [ -z "${SAE_ASAN_TESTS:-}" ] || [[ $t =~ $SAE_ASAN_TESTS ]]; } &&
         [ -n "$(ctest --test-dir "$B" -N -R "^$t\$" | grep 'Test *#')" ]; then
        mpi_tests+=("$t")
      fi
    done
    if ((${#mpi_tests[@]})); then
      ASAN_OPTIONS="$ASAN_OPTIONS:detect_leaks=0" ctest --test-dir "$B" --output-on-failure \
        -R "^($(IFS='|'; echo "${mpi_tests[*]}"))\$" || rc=$?
    fi
  else
    ctest --test-dir "$B" --output-on-failure -j"${SAE_TEST_JOBS:-$(nproc)}" -R "$TSAN_TESTS" || rc=$?
  fi
  end=$(date +%s)
  echo "sanitizers: $kind build $((built - start)) s, tests $((end - built)) s"
  if [ "${rc:-0}" -ne 0 ]; then
    echo "sanitizers: $kind tests FAILED"
    exit 1
  fi
done
