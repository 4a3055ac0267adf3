#!/usr/bin/env bash
# The demo. With a real model (llama2.c's stories260K, found in $SAE_MODEL_DIR
# or ../shared/data/stories260K): harvest its residual stream at a middle
# layer, train an SAE on it with a k schedule and Ghost Grads, evaluate it
# spliced back into the model and print fvu, L0, dead ratio and CE loss
# recovered. Without a model: say where to put one and train on the synthetic
# planted dictionary instead (examples/demo.yaml).
# Usage: scripts/demo.sh [JOB.yaml]   (a job file forces the synthetic/job path)
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup.sh

model_dir="${SAE_MODEL_DIR:-../shared/data/stories260K}"
if [ $# -eq 0 ] && [ -f "$model_dir/stories260K.bin" ]; then
  run=runs/demo-lm
  layer=2            # of 5 blocks
  tokens=200000
  echo "demo: model $model_dir (stories260K), layer $layer"
  rm -rf "$run" "$run.partial"
  mkdir -p "$run"
  build/bin/sae harvest --model "$model_dir" --layer "$layer" --corpus generate --seed 1 \
    --tokens "$tokens" --context 128 --out "$run/acts"
  cat > "$run/job.yaml" <<JOB
# Written by scripts/demo.sh: an SAE on stories260K's residual stream after block $layer.
name: demo-lm
data: {kind: shards, path: $run/acts, shuffle_buffer_rows: 65536}
sae:
  latents: 512
  k: 16
  k_schedule: {start: 64, end: 16, fraction: 0.25, shape: linear}
  dead_window_tokens: 100000
  dead_remedy: ghost_grads
train: {tokens: $tokens, batch_tokens: 2048, lr: 3e-3, checkpoint_every_tokens: 200000}
output: $run/sae
JOB
  build/bin/sae train "$run/job.yaml"
  echo
  # Held-out text: the TinyStories sample if present, else fresh model samples.
  corpus=generate
  [ -f "$model_dir/tinystories_sample.txt" ] && corpus="$model_dir/tinystories_sample.txt"
  build/bin/sae eval --model "$model_dir" --sae "$run/sae" --layer "$layer" --corpus "$corpus" --context 128 \
    --windows 64 --json > "$run/eval.json"
  python3 - "$run/eval.json" <<'PY' 2>/dev/null || cat "$run/eval.json"
import json, sys
e = json.load(open(sys.argv[1]))
print(f"eval on {e['tokens']} held-out tokens ({e['corpus'].split('/')[-1]}), layer {e['layer']}:")
for k, name in [("fvu", "fvu"), ("l0", "L0"), ("dead_ratio", "dead ratio"),
                ("ce_loss_recovered", "CE loss recovered"), ("kl_score", "KL score")]:
    print(f"  {name:<18} {e[k]:.4f}")
print(f"  CE clean / SAE / zero: {e['ce_clean']:.3f} / {e['ce_sae']:.3f} / {e['ce_zero']:.3f}")
PY
  echo "outputs in $run: acts/ (shards), sae/ (sae.safetensors, cfg.json, metrics.jsonl, summary.json), eval.json"
  build/bin/sae report "$run/sae"   # prints where the HTML report is
  echo
  # Feature dashboards of every latent in one pass over held-out model text.
  build/bin/sae features build --model "$model_dir" --sae "$run/sae" --tokens 100000 --context 128
  echo
  echo "look inside the SAE:"
  echo "  build/bin/sae features show $run/sae 0          # one latent's dashboard"
  echo "  build/bin/sae features search $run/sae ' ball'  # latents whose top contexts hold a text"
  echo "  build/bin/sae generate --model $model_dir --sae $run/sae --steer 0:4 --compare -i 'Once upon a time' -s 1"
  echo "  build/bin/sae serve --model $model_dir --sae $run/sae   # then open http://127.0.0.1:8080/"
  exit 0
fi

if [ $# -eq 0 ]; then
  echo "demo: no language model found at $model_dir/stories260K.bin."
  echo "      Put llama2.c's stories260K (stories260K.bin, tok512.bin) there or set SAE_MODEL_DIR"
  echo "      to its directory for the real-model demo; training on synthetic data instead."
fi
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
