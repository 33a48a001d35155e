#!/usr/bin/env bash
# Issue 14's GPU figures in one command on one H100/H200 (<= 4 minutes; it shares a lease with the pets run):
# sampler tokens/s vs generate() (static cache) for the 1B and 7B shapes at batch 1/8/64, constraint on
# and off, against the HBM roofline at batch 1; training tokens/s and MFU for 350M and 1B at 12,288
# tokens (bf16, ZeRO-2, SDPA). Output: DIR/bench.json + DIR/log.txt. See bench/gpu/bench.py.
#
#   bash bench/gpu/make_wheels.sh                 # here, once: deepspeed & co into .whl/
#   bash bench/gpu/run.sh --out $OUT              # device tool: carry [".whl"], timeout_s 300
#   bash bench/gpu/run.sh --dry-run --out DIR     # the same on this CPU at tiny sizes
# Time budget (H200): setup ~15 s; 1B ~ 9 calls x 3 batches at ~5-15 ms/step x 64 steps + model init ~20 s;
# 7B ~ 9 x 3 at ~10-40 ms/step + 13 GB of random init ~50 s; training 2 x (init ~15 s + 12 steps of
# 12,288 tokens, ~0.2 s each) ~40 s: ~2.5 min.
set -euo pipefail
cd "$(dirname "$0")/../.."
PY=${PYTHON:-python3}
out=""; dry=""; args=("$@")
while [ $# -gt 0 ]; do case "$1" in --out) out=$2; shift 2 ;; --dry-run) dry=1; shift ;; *) shift ;; esac; done
[ -n "$out" ] || { echo "bench/gpu/run.sh: --out DIR is required" >&2; exit 2; }
mkdir -p "$out"
if [ -z "$dry" ]; then  # the GPU machine: no network, no deepspeed, no jpeglm installed
  source bench/gpu/site.sh
fi
export PYTHONUNBUFFERED=1
"$PY" bench/gpu/bench.py "${args[@]}" 2>&1 | tee "$out/log.txt"
