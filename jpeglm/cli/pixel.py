"""`jpeglm pixel fit`: the flags of fitting the pixel baseline's palette (jpeglm.baselines.pixel_fit).

The fit's settings are the fields of `PaletteSettings` (flags generated from them); `--input`,
`--out` and `--split` say what to read and where to write.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
from pathlib import Path

import numpy as np

from jpeglm.baselines.pixel_fit import PaletteSettings, collect_pixels, fit_palette, save_palette
from jpeglm.cli import flags

log = logging.getLogger("jpeglm.baselines.pixel_fit")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--input", required=True, help="training images: a folder (recursive), a file, builtin:skimage, a saved HF dataset, parquet, imagefolder:DIR or hf:NAME[:SPLIT] (as for `jpeglm prep`)")
    parser.add_argument("--out", required=True, help="palette file to write (.npz; read by `jpeglm prep --codec pixel --palette FILE`)")
    parser.add_argument("--split", default=None, help="dataset split for HF inputs")
    flags.add_fields(parser, PaletteSettings)


def run(args: argparse.Namespace) -> int:
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    out = Path(args.out)
    if out.suffix != ".npz":
        print(f"jpeglm pixel fit: error: --out must end in .npz, got {out}", file=sys.stderr)
        return 2
    try:
        settings = flags.build(PaletteSettings, args)
        pixels, n_images, skipped = collect_pixels(args.input, settings, split=args.split)
        palette = fit_palette(pixels, settings)
    except (ValueError, OSError) as e:
        print(f"jpeglm pixel fit: error: {e}", file=sys.stderr)
        return 2
    for s in skipped:
        log.warning("skipped %s: %s", s["path"], s["reason"])
    save_palette(out, palette, settings.size, num_images=n_images, num_pixels=len(pixels), seed=settings.seed)
    print(json.dumps({"out": str(out), "colors": len(palette), "distinct": int(len(np.unique(palette, axis=0))),
                      "size": settings.size, "images": n_images, "skipped": len(skipped)}))
    return 0
