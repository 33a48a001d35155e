"""Benchmark: Inception feature extraction images/s (batch 16 and 32) and the Fréchet step.

    python bench/bench_fid.py [--images 64] [--device cpu]

Images are 256x256 crops of scikit-image's bundled photos (offline). Each batch size runs one
warm-up batch, then all images; the figure is images / wall second for `FID.features` (resize to
299 + TF-Inception forward). The Fréchet step is timed for N=64 vs 64 with and without the span
projection (the full path is one 2048x2048 eigen-solve).
"""

from __future__ import annotations

import argparse
import os
import platform
import sys
import time
import warnings
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from jpeglm.eval.fid import FID, frechet_distance  # noqa: E402


def images(n: int) -> list[np.ndarray]:
    import skimage.data

    srcs = [skimage.data.astronaut(), skimage.data.chelsea(), skimage.data.coffee(), skimage.data.rocket()]
    rng = np.random.default_rng(0)
    out = []
    for i in range(n):
        a = srcs[i % len(srcs)]
        y, x = rng.integers(0, a.shape[0] - 256 + 1), rng.integers(0, a.shape[1] - 256 + 1)
        out.append(np.ascontiguousarray(a[y : y + 256, x : x + 256]))
    return out


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--images", type=int, default=64, help="images per measurement")
    ap.add_argument("--device", default=None, help="torch device (default: cuda when available)")
    ap.add_argument("--batch-sizes", default="16,32", help="comma-separated batch sizes")
    args = ap.parse_args()
    imgs = images(args.images)
    print(f"machine: {platform.processor() or platform.machine()}, {os.cpu_count()} cores, torch threads "
          f"{torch.get_num_threads()}, cuda {torch.cuda.is_available()}, load avg {os.getloadavg()[0]:.1f}")
    feats = None
    for bs in [int(x) for x in args.batch_sizes.split(",")]:
        eng = FID(device=args.device, batch_size=bs, warn_small_n=False)
        eng.features(imgs[:bs])  # warm-up
        t = time.perf_counter()
        feats = eng.features(imgs)
        dt = time.perf_counter() - t
        print(f"features  batch {bs:3d}: {len(imgs) / dt:7.2f} images/s ({dt:.1f} s for {len(imgs)}) on {eng.device}")
    half = len(feats) // 2
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        frechet_distance(feats[:3], feats[3:6])  # warm-up: the first call pays torchmetrics' import
        for project in (True, False):
            t = time.perf_counter()
            v = frechet_distance(feats[:half], feats[half:], project=project)
            print(f"frechet   N={half} vs {half}, projection {'on ' if project else 'off'}: {time.perf_counter() - t:6.2f} s (FID {v:.4f})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
