#!/usr/bin/env bash
# The dead-latent study (docs/dead-latents.md), reproducible by anyone:
# harvests stories260K's residual stream after block 2 (d = 64) once, submits
# the whole grid
#     dead_remedy  none | auxk | ghost_grads
#   × k_schedule   none | linear | cosine | exponential from k_start 64·k, and
#                  linear from k_start = d (64), each over the first 25%
#                  (SCHEDULES: another list)
#   × setting      1: LATENTS (4096) latents at LR for TOKENS training tokens
#                  (the issue's setting) | 2: LATENTS_LARGE (4096) latents at
#                  LR_LARGE (0.01) for TOKENS_LARGE (2M): one where constant k
#                  leaves many latents dead | 3: LATENTS_SECOND (8192) latents
#                  at LR_SECOND (the default) for TOKENS_SECOND (2M): the
#                  second dictionary size; each with a dead window of a tenth
#                  of its training (sweep `together:`)
# as ONE sweep to a local sae-coordinator with $WORKERS workers, waits,
# evaluates every SAE spliced into the model (`sae eval`: CE loss recovered,
# dense ratios) and writes docs/dead-latents.md (table) with
# docs/dead-latents.svg (dead ratio over tokens per remedy). A second, small
# sweep per setting runs the reference: the behaviour before issue 12 (AuxK
# as published; the schedule with the loss at its current k alone).
# SETTINGS="3" (a list of 1 2 3) submits only those settings into an existing
# DIR: the other settings' runs stay, and the page is written from all
# finished runs in DIR (each sweep's wall time from its own files:
# study.yaml / submit.log for all three, study-3.yaml / submit-3.log, ...).
#
# Usage: scripts/study-dead-latents.sh [--out DIR] [--tokens N] [--quick]
#   --out DIR     work directory (default runs/study-dead-latents): acts/,
#                 coordinator.db, the sweep's outputs, eval JSON
#   --tokens N    training tokens per run of the first setting (default 2000000)
#   --quick       a smoke run: 2 schedules, 60k / 20k tokens, 512 / 1024 latents
#                 (minutes); writes DIR/dead-latents.md, not docs/
#   --report-only evaluate the finished runs in DIR (those without eval.json)
#                 and rewrite the page and the plot; no harvest, no sweep
# Environment: SAE_MODEL_DIR (default ../shared/data/stories260K), SAE_BIN
# (the directory with sae, sae-coordinator, sae-worker; default build/bin:
# copy them elsewhere to rebuild while the grid runs), WORKERS (default 2),
# NICE (default 10), LATENTS (4096), LR (0 = the default learning rate),
# LATENTS_LARGE (4096), TOKENS_LARGE (2000000), LR_LARGE (0.01), K (8),
# LATENTS_SECOND (8192), LR_SECOND (0), TOKENS_SECOND (2000000), SETTINGS
# (1 2 3: the settings to submit; see above),
# ROWS (harvested rows, 1000000), ACTS (an existing shard directory to reuse),
# SCHEDULES (the k_schedule list, YAML flow: a part of the grid; like --quick,
# the page then goes to DIR/dead-latents.md, docs/ is left alone),
# REFERENCE (the settings that also get the reference runs; default all
# submitted ones, "" none), EVAL_WINDOWS (32 windows of 128 tokens).
set -euo pipefail
cd "$(dirname "$0")/.."
root=$(pwd)

out=runs/study-dead-latents
tokens=2000000
quick=0
report_only=0
while [ $# -gt 0 ]; do
  case "$1" in
    --out) out="$2"; shift 2 ;;
    --tokens) tokens="$2"; shift 2 ;;
    --quick) quick=1; shift ;;
    --report-only) report_only=1; shift ;;
    -h|--help) sed -n '2,46p' "$0"; exit 0 ;;
    *) echo "study-dead-latents: unknown argument $1" >&2; exit 2 ;;
  esac
done
model="${SAE_MODEL_DIR:-../shared/data/stories260K}"
workers="${WORKERS:-2}"
nice_n="${NICE:-10}"
latents="${LATENTS:-4096}"
latents_large="${LATENTS_LARGE:-4096}"
tokens_large="${TOKENS_LARGE:-2000000}"
lr_large="${LR_LARGE:-0.01}"
latents_second="${LATENTS_SECOND:-8192}"
tokens_second="${TOKENS_SECOND:-2000000}"
lr_second="${LR_SECOND:-0}"
settings_sel="${SETTINGS:-1 2 3}"
bin="${SAE_BIN:-build/bin}"
k="${K:-8}"
lr="${LR:-0}"
rows="${ROWS:-1000000}"
eval_windows="${EVAL_WINDOWS:-32}"
schedules="[null, {start: $((64 * k)), fraction: 0.25, shape: linear}, {start: $((64 * k)), fraction: 0.25, shape: cosine}, {start: $((64 * k)), fraction: 0.25, shape: exponential}, {start: 64, fraction: 0.25, shape: linear}]"
[ -n "${SCHEDULES:-}" ] && schedules="$SCHEDULES"
if [ "$quick" = 1 ]; then
  tokens=60000
  latents=512
  latents_large=1024
  tokens_large=20000
  latents_second=1024
  tokens_second=20000
  rows=65536
  eval_windows=4
  schedules="[null, {start: $((64 * k)), fraction: 0.25, shape: linear}]"
fi
window=$((tokens / 10))   # the dead window: a tenth of training (2M tokens / 200k in issue 12)
window_large=$((tokens_large / 10))
window_second=$((tokens_second / 10))
# The settings, n:latents:tokens:window:lr; SETTINGS picks which ones to submit.
setting_all=("1:$latents:$tokens:$window:$lr" "2:$latents_large:$tokens_large:$window_large:$lr_large"
             "3:$latents_second:$tokens_second:$window_second:$lr_second")
sel=()
for n in $settings_sel; do
  case "$n" in 1|2|3) sel+=("${setting_all[$((n - 1))]}") ;;
    *) echo "study-dead-latents: SETTINGS: $n is not a setting (1, 2 or 3)" >&2; exit 2 ;; esac
done
[ "${#sel[@]}" -gt 0 ] || { echo "study-dead-latents: SETTINGS is empty" >&2; exit 2; }
ref_sel="${REFERENCE-$settings_sel}"
# This invocation's sweep files: study.yaml / submit.log when it submits all
# three settings, study-2-3.yaml / submit-2-3.log for SETTINGS="2 3".
tag=""
[ "$(echo $settings_sel)" = "1 2 3" ] || tag="-$(echo $settings_sel | tr ' ' '-')"

for b in sae sae-coordinator sae-worker; do
  [ -x "$bin/$b" ] || { echo "study-dead-latents: $bin/$b missing; build first (README)" >&2; exit 1; }
done
[ -f "$model/stories260K.bin" ] || { echo "study-dead-latents: no stories260K at $model (set SAE_MODEL_DIR)" >&2; exit 1; }
mkdir -p "$out"
out=$(cd "$out" && pwd)
acts="${ACTS:-$out/acts}"   # ACTS: reuse an existing harvest

# 1. The activations, harvested once and reused.
if [ "$report_only" = 0 ] && [ ! -f "$acts/manifest.json" ]; then
  rm -rf "$acts"
  echo "study: harvesting $rows rows of stories260K layer 2 into $acts"
  nice -n "$nice_n" "$bin"/sae harvest --model "$model" --layer 2 --corpus generate --seed 7 \
    --tokens "$rows" --context 256 --out "$acts"
fi

db="$out/coordinator.db"
runs="$out/runs"
if [ "$report_only" = 0 ]; then
# 2. A local coordinator and workers (loopback, free ports).
rm -f "$db" "$db-wal" "$db-shm" "$out/ready.json"  # (a stale ready file names a dead coordinator)
# Only the submitted settings' runs are removed (a child's directory ends
# with its `together:` values); the other settings' finished runs stay.
together_lines=""
for size in "${sel[@]}"; do
  IFS=: read -r n_set n_lat n_tok n_win n_lr <<< "$size"
  rm -rf "$runs"/*"_together-${n_lat}_${n_lr}_${n_tok}_${n_win}_${n_tok}"
  together_lines+="  - {latents: $n_lat, train.lr: $n_lr, train.tokens: $n_tok, dead_window_tokens: $n_win, train.checkpoint_every_tokens: $n_tok}"$'\n'
done
pids=()
cleanup() { for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done; wait 2>/dev/null || true; }
trap cleanup EXIT
nice -n "$nice_n" "$bin"/sae-coordinator --listen 127.0.0.1:0 --metrics-listen "" --db "$db" \
  --ready-file "$out/ready.json" > "$out/coordinator.log" 2>&1 &
pids+=($!)
for _ in $(seq 100); do [ -s "$out/ready.json" ] && break; sleep 0.1; done
listen=$(python3 -c 'import json,sys; print(json.load(open(sys.argv[1]))["listen"])' "$out/ready.json")
export SAE_COORDINATOR="$listen"
for w in $(seq "$workers"); do
  nice -n "$nice_n" "$bin"/sae-worker --coordinator "$listen" --worker-id "study-w$w" \
    > "$out/worker-$w.log" 2>&1 &
  pids+=($!)
done

# 3. The grid as one sweep.
IFS=: read -r _ b_lat b_tok b_win b_lr <<< "${sel[0]}"
cat > "$out/study$tag.yaml" <<JOB
# Written by scripts/study-dead-latents.sh: the dead-latent grid (docs/dead-latents.md).
name: dead-latents
data: {kind: shards, path: $acts, shuffle_buffer_rows: 65536}
sae:
  latents: $b_lat
  k: $k
  dead_window_tokens: $b_win
  dead_remedy: [none, auxk, ghost_grads]
  k_schedule: $schedules
train:
  tokens: $b_tok
  batch_tokens: 4096
  lr: $b_lr
  seed: 0
  threads: 1
  checkpoint_every_tokens: $b_tok
  log_every_steps: 5
together:
${together_lines}output: $runs
JOB
# The coordinator answers once it serves (a loaded machine can take seconds).
for _ in $(seq 60); do "$bin"/sae jobs > /dev/null 2>&1 && break; sleep 1; done
# sae submit --wait, again when the connection failed before anything was
# submitted (on a loaded machine the handshake can miss the client's deadline).
submit() {
  local file=$1 log=$2
  for _ in 1 2 3 4 5; do
    "$bin"/sae submit "$file" --wait > "$log" 2>&1 && return 0
    grep -q '^job-' "$log" && return 1
    grep -q 'unavailable: failed to connect' "$log" || return 1
    sleep 2
  done
  return 1
}
echo "study: submitting $out/study$tag.yaml to $listen ($workers workers)"
t0=$(date +%s)
submit "$out/study$tag.yaml" "$out/submit$tag.log" &
grid_pid=$!
sleep 2  # the grid is queued first; the reference runs after it

# 3b. The reference, the behaviour before issue 12, for the settings in
# REFERENCE (default: the submitted ones): constant k with AuxK as published
# (auxk_scale: none), and the study's schedule with the loss at its current k
# alone (k_schedule.loss: current_k, no remedy). One small sweep per setting
# (`together:` pairs the fields).
ref_pids=()
ref_sizes=()
for n in $ref_sel; do
  case "$n" in 1|2|3) ref_sizes+=("${setting_all[$((n - 1))]}") ;;
    *) echo "study-dead-latents: REFERENCE: $n is not a setting (1, 2 or 3)" >&2; exit 2 ;; esac
done
for size in "${ref_sizes[@]}"; do
  IFS=: read -r n_set n_lat n_tok n_win n_lr <<< "$size"
  rm -rf "$runs-reference/setting-$n_set"
  cat > "$out/reference-$n_set.yaml" <<JOB
# Written by scripts/study-dead-latents.sh: the reference runs (docs/dead-latents.md).
name: dead-latents-reference-$n_set
data: {kind: shards, path: $acts, shuffle_buffer_rows: 65536}
sae: {latents: $n_lat, k: $k, dead_window_tokens: $n_win}
train: {tokens: $n_tok, batch_tokens: 4096, lr: $n_lr, seed: 0, threads: 1, checkpoint_every_tokens: $n_tok, log_every_steps: 5}
together:
  - {dead_remedy: auxk, auxk_scale: none}
  - {dead_remedy: none, k_schedule: {start: $((64 * k)), fraction: 0.25, shape: linear, loss: current_k}}
output: $runs-reference/setting-$n_set
JOB
  submit "$out/reference-$n_set.yaml" "$out/submit-reference-$n_set.log" &
  ref_pids+=($!)
done
wait "$grid_pid" || {
  echo "study-dead-latents: the sweep did not succeed; see $out/submit$tag.log and $out/worker-*.log" >&2
  tail -20 "$out/submit$tag.log" >&2
  exit 1
}
t1=$(date +%s)
echo "study: the sweep took $((t1 - t0)) s"
for p in ${ref_pids[@]+"${ref_pids[@]}"}; do
  wait "$p" || { echo "study-dead-latents: a reference sweep did not succeed; see $out/submit-reference-*.log" >&2; exit 1; }
done
fi

# 4. Every SAE spliced into the model (held-out windows: another seed).
for run in "$runs"/*/ "$runs-reference"/*/*/; do
  run=${run%/}
  [ -f "$run/summary.json" ] || continue
  [ -s "$run/eval.json" ] && continue
  nice -n "$nice_n" "$bin"/sae eval --model "$model" --sae "$run" --layer 2 --corpus generate --seed 1000 \
    --context 128 --windows "$eval_windows" --json > "$run/eval.json.tmp"
  mv "$run/eval.json.tmp" "$run/eval.json"
done

# 5. The table and the plot.
# A partial grid (--quick, SCHEDULES) writes its page into DIR, not docs/.
docs_dir="$root/docs"
if [ "$quick" = 1 ] || [ -n "${SCHEDULES:-}" ]; then docs_dir="$out"; fi
python3 - "$out" "$docs_dir" "$k" "$rows" "$eval_windows" <<'PY'
import glob, json, os, re, sys, math
def job_lr(path):
    # train.lr of the child job.yaml the coordinator wrote (block style; no YAML library needed)
    m = re.search(r"^train:\n(?:[ ].*\n)*?[ ]+lr: (\S+)$", open(path).read(), re.M)
    return float(m.group(1)) if m else 0.0
out, docs, k, rows, eval_windows = sys.argv[1:]
def sweeps():
    # Each sweep: its job file's write (the start) to its --wait log's last write (the end).
    found = []
    for y in sorted(glob.glob(os.path.join(out, "study*.yaml")), key=os.path.getmtime):  # in the order they ran
        tag = os.path.basename(y)[len("study"):-len(".yaml")]
        log = os.path.join(out, f"submit{tag}.log")
        if not os.path.isfile(log):
            continue
        m = re.search(r"SUCCEEDED: (\d+) of (\d+) variants", open(log).read())
        if m:
            found.append((int(m.group(1)), int(os.stat(log).st_mtime - os.stat(y).st_mtime)))
    return found
def load(pattern):
    found = []
    for d in sorted(glob.glob(pattern)):
        if not os.path.isfile(os.path.join(d, "summary.json")):
            continue
        s = json.load(open(os.path.join(d, "summary.json")))
        e = json.load(open(os.path.join(d, "eval.json")))
        cfg = json.load(open(os.path.join(d, "cfg.json")))["saeforge"]
        lr_run = job_lr(os.path.join(d, "job.yaml"))
        ks = cfg["k_schedule"]
        const = ks["shape"] == "constant" or ks["start"] == ks["end"]
        sched = "none" if const else f'{ks["shape"]} {ks["start"]}→{ks["end"]}'
        curve = []
        for line in open(os.path.join(d, "metrics.jsonl")):
            m = json.loads(line)
            curve.append((m["tokens"], m["dead_ratio"], m["k"]))
        found.append(dict(dir=os.path.basename(d), remedy=cfg["dead_remedy"], sched=sched, shape=ks["shape"],
                          start=ks["start"], loss=ks.get("loss", "current_k"), auxk_scale=cfg.get("auxk_scale", "fit"),
                          latents=s["latents"], lr=lr_run, set=(s["latents"], lr_run),
                          tokens=s["tokens"], window=cfg["dead_window_tokens"],
                          s=s, e=e, curve=curve))
    return found
runs = load(os.path.join(out, "runs", "*"))
reference = load(os.path.join(out, "runs-reference", "*", "*"))
if not runs:
    sys.exit("study: no finished runs")
# A setting: (dictionary size, learning rate); the default lr (0) first.
settings = sorted({r["set"] for r in runs}, key=lambda n: (n[1], n[0]))
info = {n: next(r for r in runs if r["set"] == n) for n in settings}
def setting_name(n):
    return f"{n[0]} latents" + (f", lr {n[1]:g}" if n[1] else "")
remedies = ["none", "auxk", "ghost_grads"]
sched_order = []
for r in runs:
    if r["sched"] not in sched_order:
        sched_order.append(r["sched"])
shape_rank = {"linear": 0, "cosine": 1, "exponential": 2}
def sched_key(name):
    r = next(r for r in runs if r["sched"] == name)
    return (name != "none", -r["start"], shape_rank.get(r["shape"], 9))
sched_order.sort(key=sched_key)
base = {n: next(r for r in runs if r["set"] == n and r["remedy"] == "none" and r["sched"] == "none") for n in settings}

def fmt_pct(x): return f"{100 * x:.2f}%"
def verdict(r, b):
    s = r["s"]
    fewer = s["dead_latents"] < b["s"]["dead_latents"]
    fvu_ok = s["fvu"] <= 1.02 * b["s"]["fvu"]
    same = s["dead_latents"] == b["s"]["dead_latents"]
    if r is b:
        return "baseline"
    if fewer and fvu_ok:
        return "✓"
    if same and fvu_ok:
        return "= dead"
    return "✗ fvu" if fewer else ("✗ dead" if fvu_ok else "✗ both")
rows_md = []
for n in settings:
    b = base[n]
    for sched in sched_order:
        for rem in remedies:
            r = next((r for r in runs if r["set"] == n and r["sched"] == sched and r["remedy"] == rem), None)
            if r is None:
                continue
            s, e = r["s"], r["e"]
            rows_md.append(f'| {setting_name(n)} | {sched} | {rem} | {s["dead_latents"]} ({fmt_pct(s["dead_ratio"])}) | '
                           f'{fmt_pct(e["dense_1pct_ratio"])} / {fmt_pct(e["dense_10pct_ratio"])} | {s["fvu"]:.4f} | '
                           f'{s["fvu"] / b["s"]["fvu"]:.3f} | {e["fvu"]:.4f} | {s["l0"]:.2f} | '
                           f'{e["ce_loss_recovered"]:.4f} | {verdict(r, b)} |')

# The plot: dead ratio over tokens, one panel per remedy (rows: dictionaries), one line per schedule.
W, H, pw, ph, ml, mt = 1080, 300 * len(settings) + 60, 300, 220, 70, 40
colors = ["#222222", "#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd"]
svg = [f'<svg xmlns="http://www.w3.org/2000/svg" width="{W}" height="{H}" font-family="sans-serif" font-size="12">',
       f'<rect width="{W}" height="{H}" fill="white"/>']
for si, n in enumerate(settings):
    tmax = max(t for r in runs if r["set"] == n for t, _, _ in r["curve"])
    ymax = max(0.05, max(d for r in runs if r["set"] == n for _, d, _ in r["curve"]))
    ymax = math.ceil(ymax * 20) / 20
    for ci, rem in enumerate(remedies):
        x0, y0 = ml + ci * (pw + 50), mt + si * (ph + 80)
        svg.append(f'<rect x="{x0}" y="{y0}" width="{pw}" height="{ph}" fill="none" stroke="#999"/>')
        svg.append(f'<text x="{x0 + pw / 2}" y="{y0 - 8}" text-anchor="middle" font-weight="bold">{rem}, {setting_name(n)}</text>')
        for j in range(5):
            yv = ymax * j / 4
            yy = y0 + ph - ph * j / 4
            svg.append(f'<line x1="{x0}" y1="{yy:.1f}" x2="{x0 + pw}" y2="{yy:.1f}" stroke="#eee"/>')
            svg.append(f'<text x="{x0 - 4}" y="{yy + 4:.1f}" text-anchor="end">{100 * yv:.0f}%</text>')
        for j in range(5):
            xv = tmax * j / 4
            xx = x0 + pw * j / 4
            svg.append(f'<text x="{xx:.1f}" y="{y0 + ph + 14}" text-anchor="middle">{xv / 1e6:.2g}M</text>')
        for li, sched in enumerate(sched_order):
            r = next((r for r in runs if r["set"] == n and r["sched"] == sched and r["remedy"] == rem), None)
            if r is None:
                continue
            pts = " ".join(f'{x0 + pw * t / tmax:.1f},{y0 + ph - ph * min(d, ymax) / ymax:.1f}' for t, d, _ in r["curve"])
            svg.append(f'<polyline points="{pts}" fill="none" stroke="{colors[li % len(colors)]}" stroke-width="1.5"/>')
for li, sched in enumerate(sched_order):
    lx, ly = ml + li * 200, H - 16
    svg.append(f'<line x1="{lx}" y1="{ly - 4}" x2="{lx + 24}" y2="{ly - 4}" stroke="{colors[li % len(colors)]}" stroke-width="2"/>')
    svg.append(f'<text x="{lx + 30}" y="{ly}">k schedule: {sched}</text>')
svg.append(f'<text x="{W / 2}" y="{H - 36}" text-anchor="middle">tokens; y: dead-latent ratio (dead at the target k = {k}, window a tenth of training)</text>')
svg.append("</svg>")
open(os.path.join(docs, "dead-latents.svg"), "w").write("\n".join(svg) + "\n")

ref_md = []
for r in sorted(reference, key=lambda r: (r["lr"], r["latents"], r["sched"] != "none")):
    s, e, b = r["s"], r["e"], base.get(r["set"])
    if r["sched"] == "none":
        what = "constant k, AuxK as published (α = 1)" if r["auxk_scale"] == "none" else f'constant k, {r["remedy"]}'
    else:
        what = f'k schedule {r["sched"]}, loss at the current k alone (no Multi-TopK), {r["remedy"]}'
    rel = f'{s["fvu"] / b["s"]["fvu"]:.3f}' if b else "–"
    ref_md.append(f'| {setting_name(r["set"])} | {what} | {s["dead_latents"]} ({fmt_pct(s["dead_ratio"])}) | '
                  f'{fmt_pct(e["dense_1pct_ratio"])} / {fmt_pct(e["dense_10pct_ratio"])} | {s["fvu"]:.4f} | {rel} | '
                  f'{e["fvu"]:.4f} | {e["ce_loss_recovered"]:.4f} | {verdict(r, b) if b else "–"} |')
ref_table = "\n".join(ref_md)
table = "\n".join(rows_md)
def lr_name(n):
    return "the default lr (2e-4 / sqrt(latents / 2^14))" if n[1] == 0 else f"lr {n[1]:g}"
sizes = "; ".join(f'{n[0]} latents at {lr_name(n)}: {info[n]["tokens"]:,} training tokens ({info[n]["tokens"] // 4096} steps), '
                  f'dead window {info[n]["window"]:,} tokens' for n in settings)
sw = sweeps()
if len(sw) == 1 and sw[0][0] == len(runs):
    sweep_text = f"{len(runs)} runs as one sweep, {sw[0][1]} s wall time"
elif sw:
    sweep_text = (f"{len(runs)} runs in {len(sw)} sweeps (" +
                  ", ".join(f"{n} runs in {t} s" for n, t in sw) + " wall time)")
else:
    sweep_text = f"{len(runs)} runs"
doc_path = os.path.join(docs, "dead-latents.md")
text = open(doc_path).read() if os.path.exists(doc_path) else "<!-- study:begin -->\n<!-- study:end -->\n"
block = f"""<!-- study:begin (written by scripts/study-dead-latents.sh; do not edit by hand) -->
Grid: k = {k}, batch 4096, on {int(rows):,} harvested rows of stories260K's residual
stream after block 2 (d = 64); {sizes}. {sweep_text}
with the machine shared. "dead" is the trainer's count at the end (latents that did not fire
within the target k in the last window); fvu and L0 are the training metrics of the last steps
("× base": fvu over constant k without remedy of the same setting);
"eval" columns come from `sae eval` on {eval_windows} held-out windows of 128 generated tokens
(dense: latents firing on more than 1% / 10% of those tokens; CE recovered as in ALGORITHMS.md §7).
The schedules use the default `k_schedule.loss: multi_topk` (docs/algorithms.md).
Verdict: ✓ when the run ends with fewer dead latents than constant k without remedy of its
setting at an fvu no worse than 1.02× that run's.

| setting | k schedule | remedy | dead | dense >1% / >10% | fvu | × base | eval fvu | L0 | CE recovered | verdict |
|---|---|---|---|---|---|---|---|---|---|---|
{table}

Reference (the behaviour before issue 12), same settings:

| setting | run | dead | dense >1% / >10% | fvu | × base | eval fvu | CE recovered | verdict |
|---|---|---|---|---|---|---|---|---|
{ref_table}

![dead ratio over tokens per remedy](dead-latents.svg)
<!-- study:end -->"""
b0 = text.find("<!-- study:begin")
b1 = text.find("<!-- study:end -->")
if b0 < 0 or b1 < 0:
    text = text.rstrip() + "\n\n" + block + "\n"
else:
    text = text[:b0] + block + text[b1 + len("<!-- study:end -->"):]
open(doc_path, "w").write(text)
print(f"study: wrote {doc_path} and {os.path.join(docs, 'dead-latents.svg')} ({len(runs)} runs)")
PY
