"""`jpeglm fid DIR_A DIR_B`: FID between two folders of images, and how it was computed.

The tool people otherwise reach for pytorch-fid for. Folders are read recursively (png, jpg,
jpeg, bmp, webp, tif, gif); unreadable files are listed and skipped. Images of any size, also
sizes that differ between or inside the folders, are each resized the same way (TF1 bilinear to
299x299, see eval/fid.py), so the number does not depend on which folder is which size. The flags
are the fields of `FidSettings` (eval/config.py), whose backend and batch size an eval config shares.
"""

from __future__ import annotations

import argparse
import sys
import warnings

from jpeglm.cli import flags
from jpeglm.config import atomic_write_text
from jpeglm.eval.config import FidSettings


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("dir_a", metavar="DIR_A", help="folder of reference (real) images, searched recursively")
    parser.add_argument("dir_b", metavar="DIR_B", help="folder of generated images, searched recursively")
    flags.add_fields(parser, FidSettings)
    parser.add_argument("--json", default=None, metavar="FILE", help="also write the full result as JSON to FILE")


def run(args: argparse.Namespace) -> int:
    from jpeglm.eval.fid import FidError, fid_folders, result_json

    try:
        fs = flags.build(FidSettings, args)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # the small-N warning is printed below, once
            res, skipped = fid_folders(
                args.dir_a, args.dir_b, backend=fs.backend, device=fs.device,
                batch_size=fs.batch_size, cache_dir=fs.cache_dir, network_path=fs.weights,
            )
    except (FidError, ValueError) as e:
        print(f"jpeglm fid: error: {e}", file=sys.stderr)
        return 2
    for path, reason in skipped:
        print(f"skipped {path}: {reason}", file=sys.stderr)
    print(res.describe())
    print("  every image is resized on its own, the same way, whatever its size")
    if args.json:
        atomic_write_text(args.json, result_json(res) + "\n")
    return 0 if res.value is not None else 1
