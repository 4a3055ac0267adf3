#!/usr/bin/env bash
# Runs setup, then every test through ctest, then the lock-annotation check
# (scripts/thread_safety.sh: clang -Wthread-safety -Werror, compile only);
# fails on any failure.
# SAE_FULL_CHECKS=1 adds the sanitizer builds and their tests
# (scripts/sanitizers.sh: ASan+UBSan, TSan) and a short fuzz pass
# (scripts/fuzz.sh, SAE_FUZZ_SECONDS per target, default 20).
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup.sh
(cd build && ctest --output-on-failure -j"$(nproc)" "$@")
scripts/thread_safety.sh
if [ "${SAE_FULL_CHECKS:-0}" = 1 ]; then
  scripts/sanitizers.sh
  scripts/fuzz.sh "${SAE_FUZZ_SECONDS:-20}"
fi
