"""`jpeglm pixel fit`: the flags of fitting the pixel baseline's palette (jpeglm.baselines.pixel_fit)."""

from __future__ import annotations

import argparse
import json
import logging
from pathlib import Path

import numpy as np

from jpeglm.baselines.pixel_fit import collect_pixels, fit_palette, save_palette

log = logging.getLogger("jpeglm.baselines.pixel_fit")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--input", required=True, help="training images: a folder (recursive), a file, builtin:skimage, a saved HF dataset, parquet, imagefolder:DIR or hf:NAME[:SPLIT] (as for `jpeglm prep`)")
    parser.add_argument("--out", required=True, help="palette file to write (.npz; read by `jpeglm prep --codec pixel --palette FILE`)")
    parser.add_argument("--colors", type=int, default=512, help="palette size K (512 = 9-bit tokens, as in ImageGPT)")
    parser.add_argument("--size", type=int, default=32, help="pixel grid side the codec will use (32 or 64); pixels are sampled at this size")
    parser.add_argument("--max-pixels", type=int, default=1_000_000, help="k-means on at most this many pixels (a seeded random subset)")
    parser.add_argument("--max-images", type=int, default=0, help="read at most this many images (0 = all)")
    parser.add_argument("--iters", type=int, default=20, help="k-means iterations")
    parser.add_argument("--seed", type=int, default=0, help="seed of the pixel subset and the k-means++ init")
    parser.add_argument("--split", default=None, help="dataset split for HF inputs")


def run(args: argparse.Namespace) -> int:
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    out = Path(args.out)
    if out.suffix != ".npz":
        print(f"jpeglm pixel fit: error: --out must end in .npz, got {out}")
        return 2
    try:
        pixels, n_images, skipped = collect_pixels(args.input, args.size, split=args.split, max_images=args.max_images)
        palette = fit_palette(pixels, args.colors, seed=args.seed, max_pixels=args.max_pixels, iters=args.iters)
    except (ValueError, OSError) as e:
        print(f"jpeglm pixel fit: error: {e}")
        return 2
    for s in skipped:
        log.warning("skipped %s: %s", s["path"], s["reason"])
    save_palette(out, palette, args.size, num_images=n_images, num_pixels=len(pixels), seed=args.seed)
    print(json.dumps({"out": str(out), "colors": len(palette), "distinct": int(len(np.unique(palette, axis=0))), "size": args.size, "images": n_images, "skipped": len(skipped)}))
    return 0
