#!/usr/bin/env bash
# The demo: setup, then train an SAE on the default job (a synthetic planted
# dictionary: no model needed) and print the summary table.
# Usage: scripts/demo.sh [JOB.yaml]
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup.sh
job="${1:-examples/demo.yaml}"
out=$(sed -n 's/^output:[[:space:]]*//p' "$job" | head -1)
if [ -n "$out" ] && [ -d "$out" ] && [ "$job" = examples/demo.yaml ]; then
  echo "demo: removing the previous demo run $out"
  rm -rf "$out"
fi
rm -rf "${out}.partial" 2>/dev/null || true
build/bin/sae train "$job"
echo
echo "outputs in $out: sae.safetensors, cfg.json, metrics.jsonl, summary.json, checkpoints/"
if [ -n "$out" ]; then
  build/bin/sae report "$out"   # prints where the HTML report is
fi
