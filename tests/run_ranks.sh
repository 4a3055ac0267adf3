#!/usr/bin/env bash
# Runs N copies of a command as the ranks of a gloo world on loopback:
# SAE_RANK, SAE_WORLD_SIZE and SAE_RENDEZVOUS are set for each; fails if any
# rank fails. Usage: run_ranks.sh N command [args...]
set -u
n=$1; shift
port=$((20000 + RANDOM % 30000))
pids=()
for ((r = 0; r < n; r++)); do
  SAE_RANK=$r SAE_WORLD_SIZE=$n SAE_RENDEZVOUS=127.0.0.1:$port "$@" &
  pids+=($!)
done
rc=0
for p in "${pids[@]}"; do wait "$p" || rc=1; done
exit $rc
