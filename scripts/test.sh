#!/usr/bin/env bash
# Runs setup, then every test through ctest; fails on any failure.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup.sh
cd build
ctest --output-on-failure -j"$(nproc)" "$@"
