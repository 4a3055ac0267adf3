#!/usr/bin/env bash
# Runs setup, then every test through ctest, then the lock-annotation check
# (scripts/thread_safety.sh: clang -Wthread-safety -Werror, compile only), the
# NCCL backend against CUDA's toolkit where one is installed
# (scripts/nccl_check.sh: build-nccl, no GPU needed) and the formatting check
# (scripts/format.sh --check, .clang-format); fails on any failure.
# SAE_FULL_CHECKS=1 adds the sanitizer builds and their tests
# (scripts/sanitizers.sh: ASan+UBSan, TSan) and a short fuzz pass
# (scripts/fuzz.sh, SAE_FUZZ_SECONDS per target, default 20).
# SAE_FULL_CHECKS=ci adds the subset CI runs (.ci/run sets it; sized to keep
# .ci/run well under an hour on 2 cores, docs/reliability.md "What CI runs"):
# ASan+UBSan of the unit tests without LibTorch (and the gloo and MPI ranks
# of test_comm), of the LM, interpretability and worker unit tests and of
# the LM, interpretability and serve CLI tests, TSan of test_base, test_coordinator and test_comm (with its
# gloo and MPI ranks; not test_service), and the same fuzz pass.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup.sh
(cd build && ctest --output-on-failure -j"$(nproc)" "$@")
scripts/thread_safety.sh
scripts/nccl_check.sh
scripts/format.sh --check
case "${SAE_FULL_CHECKS:-0}" in
  0) ;;
  1)
    scripts/sanitizers.sh
    scripts/fuzz.sh "${SAE_FUZZ_SECONDS:-20}"
    ;;
  ci)
    # The LibTorch side (test_sae_step to test_e2e_serve) adds about 1800 CPU-s
    # of build and 9 minutes of tests (docs/reliability.md, "What CI runs").
    SAE_ASAN_TARGETS="test_base test_data test_coordinator test_telemetry test_report test_comm test_sae_step test_k_schedule test_trainer test_checkpoint test_int8_screen test_lm test_interp test_worker_units test_lm_cli test_interp_cli test_serve test_e2e_serve" \
      SAE_ASAN_TESTS='^(test_base|test_data|test_coordinator|test_telemetry|test_report|test_comm|test_comm_gloo|test_comm_mpi|test_sae_step|test_k_schedule|test_trainer|test_checkpoint|test_int8_screen|test_lm|lm_tokenizer_json_npm|test_interp|test_worker_units|test_lm_cli.*|test_interp_cli|test_serve|test_e2e_serve)$' \
      scripts/sanitizers.sh asan
    SAE_TSAN_SERVICE=0 scripts/sanitizers.sh tsan
    scripts/fuzz.sh "${SAE_FUZZ_SECONDS:-20}"
    ;;
  *) echo "test.sh: SAE_FULL_CHECKS=${SAE_FULL_CHECKS} (0, 1 or ci)"; exit 2 ;;
esac
