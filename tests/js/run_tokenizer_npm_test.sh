#!/usr/bin/env bash
# ctest lm_tokenizer_json_npm: builds tokenizer.json fixtures with the npm
# tokenizers in tests/js/node_modules (installed by scripts/setup.sh) and
# compares saeforge's ids with theirs (test_lm --gtest_filter=TokenizerJsonNpm.*).
# Usage: run_tokenizer_npm_test.sh SOURCE_DIR TEST_LM_BINARY
set -euo pipefail
src=$1
bin=$2
if [ ! -d "$src/tests/js/node_modules/@huggingface/tokenizers" ]; then
  echo "error: $src/tests/js/node_modules is missing: run scripts/setup.sh (or: cd tests/js && npm ci)" >&2
  exit 1
fi
data=${SAE_DATA_DIR:-$src/../shared/data}
out=$(mktemp -d "${TEST_TMPDIR:-/tmp}/tokjson.XXXXXX")
trap 'rm -rf "$out"' EXIT
node "$src/tests/js/make_tokenizer_fixtures.mjs" "$out" "$data/stories260K/tinystories_sample.txt"
SAE_TOKENIZER_FIXTURES=$out "$bin" --gtest_filter='TokenizerJsonNpm.*'
