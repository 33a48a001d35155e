#!/usr/bin/env bash
# The wheels the GPU machine lacks, made here (it has CUDA torch, transformers, accelerate, sentencepiece,
# tensorboard, ninja, psutil, py-cpuinfo, msgpack, einops, nvidia-ml-py, but no deepspeed and no network):
# deepspeed (built here without its C++ ops: DS_BUILD_OPS=0, pure Python; its JIT ops are not used by
# ZeRO-2 with torch's AdamW) and the needs of deepspeed the machine lacks, for Python 3.12 x86-64.
# Into .whl/ (git-ignored; named in the device call's `carry`), checked to stay under 16 MiB.
#   bash bench/gpu/make_wheels.sh [DEST]
set -euo pipefail
cd "$(dirname "$0")/../.."
DEST=${1:-.whl}
PY=${PYTHON:-python3}
DS=${DEEPSPEED_VERSION:-$("$PY" -c 'from importlib.metadata import version; print(version("deepspeed"))' 2>/dev/null || echo 0.19.8)}
mkdir -p "$DEST"
PLAT="--only-binary=:all: --python-version 3.12 --implementation cp --platform manylinux_2_28_x86_64 \
  --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64"
"$PY" -m pip download -q --no-deps $PLAT -d "$DEST" hjson "pydantic>=2,<3" annotated-types typing-inspection
# pydantic pins its core exactly: fetch that version
core=$(unzip -p "$DEST"/pydantic-2*.whl '*/METADATA' | sed -n 's/^Requires-Dist: pydantic-core *(\?==\([0-9.]*\)).*/\1/p;s/^Requires-Dist: pydantic-core==\([0-9.]*\).*/\1/p' | head -1)
"$PY" -m pip download -q --no-deps $PLAT -d "$DEST" "pydantic-core${core:+==$core}"
if ! ls "$DEST"/deepspeed-*.whl >/dev/null 2>&1; then
  DS_BUILD_OPS=0 "$PY" -m pip wheel -q --no-deps --no-build-isolation -w "$DEST" "deepspeed==$DS"
fi
ls -la "$DEST"
size=$(du -sb "$DEST" | cut -f1)
echo "wheels: $((size / 1024)) KiB in $DEST"
[ "$size" -le $((16 * 1024 * 1024)) ] || { echo "make_wheels.sh: $DEST is over 16 MiB" >&2; exit 1; }
