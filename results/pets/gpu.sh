#!/usr/bin/env bash
# The GPU-scale pets comparison (issue 20): JPEG-LM vs VQ-LM vs pixel-LM at 128x128 with the same ~100M
# Llama (configs/model/100m.yaml) and the same training tokens (configs/train/pets-gpu.yaml), judged by
# `jpeglm eval`'s harness (configs/eval/pets-gpu.yaml). Three steps; run from anywhere:
#
#   bash results/pets/gpu.sh prepare [--pets DIR]    here, CPU (~3 min idle): what travels -> runs/pets-gpu/prepared
#   bash results/pets/gpu.sh run --out $OUT          one H100/H200, <= 7 min (device tool: carry
#                                                    runs/pets-gpu/prepared and .whl, timeout_s 480)
#   bash results/pets/gpu.sh score --gpu-out DIR     here: FID etc. -> results/pets-gpu/
#   bash results/pets/gpu.sh --dry-run [--pets DIR]  all three on this CPU at tiny sizes (results/pets/gpu_plan.py DRY)
#
# What travels (gpu_prepare.py checks it fits the device call's 64 MiB): the JPEG shards, 6,895 photos
# x 1,481 BPE-320 tokens (1,595 JPEG bytes, measured) x 2 bytes ~ 20 MiB; the training photos at
# 128x128 as JPEG q75 (~3.7 kB each) ~ 25 MiB, from which the LFQ tokenizer trains and the VQ and pixel shards are cut there; the palette;
# the first 200 test photos ~ 4 MiB; the wheels of bench/gpu/make_wheels.sh (deepspeed and its needs) ~ 5 MiB.
#
# The 7-minute arithmetic (H200: 790 TFLOP/s bf16 dense, 4.3 TB/s HBM):
#   setup       wheels + imports + three DeepSpeed inits                          ~  25 s
#   LFQ         2,000 steps x 64 images at 128x128 (2.4M params), assumed 60 steps/s ~ 35 s + 7 s to load photos
#   shards      VQ codes + palette pixels of 6,895 photos, 8 CPU workers           ~  20 s
#   Llama x 3   360 steps x 8 x 4,096 = 11.8M tokens each; ~0.86 GFLOP/token (6N, N = 99M non-embedding,
#               + attention at 4,096 context); assumed 200k tokens/s = 22% MFU  -> 59 s each, 177 s
#               (= 1.2 epochs of JPEG tokens, 1.7 of pixels, 6.9 of VQ codes: the same tokens for all)
#   likelihood  200 held-out photos x 3 systems, one forward each                 ~   3 s
#   sampling    200 rows per batch, bf16, top-k 50, JPEG constrained. Decode steps per system over
#               ratios 0.25/0.5/0.75 + unconditional: JPEG 1.48k x (0.75+0.5+0.25+1) = 3,700, VQ 256 x 2.5
#               = 640, pixel 1,024 x 2.5 = 2,560. Assumed 8 ms per step (weights + KV reads + launch
#               overhead) + 10 ms of grammar work for JPEG's 200 rows (50 us per row, issue 14's target):
#               JPEG 67 s, VQ 5 s, pixel 20 s                                      ~  92 s
#   total                                                                           ~ 360 s of 420
# No new sampling starts after 400 s (gpu_plan.py deadline_s), settings are drawn in the order 0.5, 0.25,
# 0.75, unconditional across all three systems, and every pack is rewritten after each setting: a slow
# constraint (today ~0.7 ms per row and token: 140 ms per JPEG step) leaves settings out, not the run.
# Back from $OUT (at most 8 files): samples-{jpeg,vq,pixel}.npz, train-logs.json, timings.json, log.txt.
set -euo pipefail
cd "$(dirname "$0")/../.."
PY=${PYTHON:-python3}
WORK=${WORK:-runs/pets-gpu}
PETS=${PETS:-../shared/data/pets}
sub=${1:-}
[ $# -gt 0 ] && shift

case "$sub" in
  prepare)
    dry=""; for a in "$@"; do [ "$a" = --dry-run ] && dry=1; done
    [ -z "$dry" ] && [ ! -d .whl ] && bash bench/gpu/make_wheels.sh
    exec "$PY" results/pets/gpu_prepare.py --pets "$PETS" --work "$WORK" "$@" ;;
  run)
    out=""; dry=""; args=("$@")
    while [ $# -gt 0 ]; do case "$1" in --out) out=$2; shift 2 ;; --dry-run) dry=1; shift ;; *) shift ;; esac; done
    [ -n "$out" ] || { echo "gpu.sh run: --out DIR is required" >&2; exit 2; }
    mkdir -p "$out"
    if [ -z "$dry" ]; then  # the GPU machine: no network, no deepspeed, no jpeglm installed
      source bench/gpu/site.sh
    fi
    # one thread per process: the VQ-coding prep workers would otherwise each spin up every core
    export PYTHONUNBUFFERED=1 OMP_NUM_THREADS=${OMP_NUM_THREADS:-1}
    set -o pipefail
    "$PY" results/pets/gpu_run.py --prepared "$WORK/prepared" "${args[@]}" 2>&1 | tee "$out/log.txt" ;;
  score)
    exec "$PY" results/pets/gpu_score.py --pets "$PETS" --work "$WORK" "$@" ;;
  --dry-run)
    WORK=${WORK/%pets-gpu/pets-gpu-dry}
    export WORK PETS
    bash "$0" prepare --dry-run "$@"
    bash "$0" run --dry-run --out "$WORK/gpu-out"
    bash "$0" score --dry-run --gpu-out "$WORK/gpu-out" ;;
  *)
    sed -n '2,12p' "$0"; exit 2 ;;
esac
