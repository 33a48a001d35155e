"""Benchmark: peak memory of `jpeglm eval` against the number of samples (it should be flat).

    python bench/bench_eval_memory.py --write bench/results/eval_memory.md     # 2k and 10k samples
    python bench/bench_eval_memory.py --samples 200,400 --size 64              # a smoke run

Each sample count runs in a fresh process (peak RSS = that process's ru_maxrss): the real harness
(`jpeglm.eval.harness.evaluate`: per-sample files, features, running sums, samples.npz, precision /
recall, the report) over a stand-in system that draws images instantly (smooth random pictures
seeded per sample), one unconditional setting of N samples against a fixed held-out folder. The
feature network is a TorchScript stand-in (an 8x8 average pool and a fixed 192 -> 2048 projection,
the same interface as the Inception file) unless `--inception`: the Inception network costs the same
memory at any N, and ~0.3 s per image on a CPU. So the figures measure what grows with N: the
harness's own bookkeeping. Before this harness every sample sat in memory until its setting ended
(256x256x3 bytes each: 2k = 0.4 GB, 10k = 2 GB, 50k = 9.8 GB, plus all features).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "tests"))


def picture(rng: np.random.Generator, size: int) -> np.ndarray:
    """A smooth random picture (cheap to write as PNG, unlike noise)."""
    coarse = rng.integers(0, 256, (4, 4, 3), dtype=np.uint8)
    from PIL import Image

    return np.asarray(Image.fromarray(coarse).resize((size, size), Image.BILINEAR))


class Instant:
    """A system that answers at once: picture i is drawn from seed i."""

    def __init__(self, size: int):
        from jpeglm.codecs.jpeg import JpegCodec, JpegParams

        self.codec = JpegCodec(JpegParams(size=size))
        self.size = size

    def sample(self, prompts, num_samples, seed):
        from jpeglm.eval.harness import Drawn

        n = num_samples * (len(prompts) if prompts is not None else 1)
        return [Drawn(picture(np.random.default_rng(seed + k), self.size), "ok", "", seed + k,
                      None if prompts is None else k // num_samples, 1000, {}) for k in range(n)]


def child(n: int, work: Path, size: int, inception: bool, heldout: int) -> dict:
    from PIL import Image

    from jpeglm.eval.config import EvalConfig
    from jpeglm.eval.harness import evaluate

    held = work / "heldout"
    if not held.is_dir():
        held.mkdir(parents=True)
        rng = np.random.default_rng(12345)
        for i in range(heldout):
            Image.fromarray(picture(rng, max(size, 256))).save(held / f"{i:05d}.png")  # prepared down to size
    weights = None
    if not inception:
        from eval_standins import feature_net

        weights = feature_net(work / "standin-net.pt")
    cfg = EvalConfig(systems=[{"name": "instant", "checkpoint": "-"}], images=str(held), out=str(work / f"out-{n}"),
                     num_images=heldout, image_size=size, prompt_ratios=[], unconditional=True, num_unconditional=n,
                     sampler={"batch_size": 32}, device="cpu", bpb=False, fid_weights=weights, fid_batch_size=32)
    t = time.perf_counter()
    res = evaluate(cfg, systems={"instant": Instant(size)})
    wall = time.perf_counter() - t
    row = res["systems"][0]["rows"][0]
    return {"n": n, "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, "wall_s": wall,
            "fid": row["fid"], "precision": row["precision"], "n_samples": row["n_samples"]}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--samples", default="2000,10000", help="comma-separated sample counts, one fresh process each")
    ap.add_argument("--size", type=int, default=256, help="picture side")
    ap.add_argument("--heldout", type=int, default=100, help="held-out images (the same for every count)")
    ap.add_argument("--inception", action="store_true", help="use the real Inception network (slow on CPU)")
    ap.add_argument("--workdir", default=None, help="keep the runs here (default: a temporary folder, removed)")
    ap.add_argument("--write", default=None, help="also write the markdown to this file")
    ap.add_argument("--child", type=int, default=None, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child is not None:
        print(json.dumps(child(args.child, Path(args.workdir), args.size, args.inception, args.heldout)))
        return 0
    tmp = tempfile.TemporaryDirectory(prefix="jpeglm-evalmem-") if args.workdir is None else None
    work = Path(args.workdir or tmp.name)
    rows = []
    for n in [int(x) for x in args.samples.split(",")]:
        cmd = [sys.executable, __file__, "--child", str(n), "--workdir", str(work), "--size", str(args.size),
               "--heldout", str(args.heldout)] + (["--inception"] if args.inception else [])
        proc = subprocess.run(cmd, capture_output=True, text=True, check=False,
                              env=dict(os.environ, OMP_NUM_THREADS=os.environ.get("OMP_NUM_THREADS", "1")))
        if proc.returncode != 0:
            print(proc.stderr[-3000:], file=sys.stderr)
            return 1
        rows.append(json.loads(proc.stdout.strip().splitlines()[-1]))
        print(rows[-1], flush=True)
    cmd = " ".join(["python bench/bench_eval_memory.py", *sys.argv[1:]])
    lines = ["# Evaluation memory (`bench/bench_eval_memory.py`)", "",
             f"Machine: {platform.machine()}, {os.cpu_count()} cores (load average {os.getloadavg()[0]:.1f} at the end), "
             f"{'Inception' if args.inception else 'stand-in'} feature network, {args.size}x{args.size} samples, "
             f"{args.heldout} held-out images, one unconditional setting, a system that draws instantly.",
             f"Command: `{cmd}`", "",
             "| samples | peak RSS | wall | s / sample (harness only) |", "|---|---|---|---|"]
    lines += [f"| {r['n']} | {r['peak_rss_mb']:.0f} MB | {r['wall_s']:.0f} s | {r['wall_s'] / r['n']:.4f} |" for r in rows]
    if len(rows) >= 2:
        a, b = rows[0], rows[-1]
        slope = (b["peak_rss_mb"] - a["peak_rss_mb"]) / max(1, b["n"] - a["n"]) * 1000
        lines += ["", f"Growth: {slope:.1f} MB per 1000 samples between {a['n']} and {b['n']} "
                  f"(held in memory, 1000 samples of {args.size}x{args.size}x3 would be "
                  f"{1000 * args.size * args.size * 3 / 2**20:.0f} MB)."]
    text = "\n".join(lines) + "\n"
    print(text)
    if args.write:
        Path(args.write).write_text(text)
    if tmp is not None:
        tmp.cleanup()
    return 0


if __name__ == "__main__":
    sys.exit(main())
