#!/usr/bin/env bash
# Installs every Debian package saeforge needs (idempotent: apt-get runs only
# when something is missing), then configures (Release) into build/ and builds.
# Usage: scripts/setup.sh [extra cmake args...]
set -euo pipefail
cd "$(dirname "$0")/.."

mapfile -t pkgs < <(grep -v '^\s*#' scripts/packages.txt | sed '/^\s*$/d')
missing=()
for p in "${pkgs[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if ((${#missing[@]})); then
  echo "setup: installing ${missing[*]}"
  SUDO=""
  if [ "$(id -u)" -ne 0 ]; then SUDO="sudo"; fi
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends "${missing[@]}"
fi

# LibTorch must use OpenBLAS, not the reference BLAS (about 40x slower).
if [ -e /usr/lib/x86_64-linux-gnu/openblas-pthread/libblas.so.3 ]; then
  cur=$(readlink -f /usr/lib/x86_64-linux-gnu/libblas.so.3 || true)
  case "$cur" in
    *openblas*) ;;
    *) echo "setup: selecting OpenBLAS for libblas.so.3"
       ${SUDO:-} update-alternatives --set libblas.so.3-x86_64-linux-gnu \
         /usr/lib/x86_64-linux-gnu/openblas-pthread/libblas.so.3 || true ;;
  esac
fi

# Independent JavaScript tokenizers for the tokenizer.json comparison test
# (ctest lm_tokenizer_json_npm), pinned by tests/js/package-lock.json.
# Debian's nodejs comes without npm (the NodeSource build bundles it).
if ! command -v npm >/dev/null && command -v apt-get >/dev/null; then
  SUDO=""
  if [ "$(id -u)" -ne 0 ]; then SUDO="sudo"; fi
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends npm || true
fi
if command -v npm >/dev/null; then
  if [ ! -d tests/js/node_modules/@huggingface/tokenizers ] || [ tests/js/package-lock.json -nt tests/js/node_modules ]; then
    echo "setup: installing the npm test tokenizers into tests/js/node_modules"
    (cd tests/js && npm ci --no-audit --no-fund --loglevel=error) ||
      echo "setup: npm ci failed; ctest lm_tokenizer_json_npm will fail until tests/js/node_modules exists" >&2
  fi
else
  echo "setup: npm not found (Debian: nodejs + npm); ctest lm_tokenizer_json_npm needs it" >&2
fi
# The browser test of `sae serve` drives Debian's chromium with playwright-core
# (npm; no browser download). Skipped without node/npm: the test then skips.
if command -v npm >/dev/null && [ ! -f tests/e2e/node_modules/playwright-core/package.json ]; then
  echo "setup: npm install playwright-core (tests/e2e)"
  (cd tests/e2e && PLAYWRIGHT_SKIP_BROWSER_DOWNLOAD=1 npm install --no-audit --no-fund --silent) ||
    echo "setup: npm install failed; the browser test will be skipped"
fi

generator=()
command -v ninja >/dev/null && generator=(-G Ninja)
# A configure that failed (a missing package) leaves CMakeCache.txt but no
# build files: configure again then.
if [ ! -f build/CMakeCache.txt ] || { [ ! -f build/build.ninja ] && [ ! -f build/Makefile ]; }; then
  cmake -S . -B build "${generator[@]}" -DCMAKE_BUILD_TYPE=Release "$@"
elif [ $# -gt 0 ]; then
  cmake -S . -B build "$@"
fi
cmake --build build -j"$(nproc)"
