"""`jpeglm fid DIR_A DIR_B`: FID between two folders of images, and how it was computed.

    jpeglm fid --save-stats ref.npz DIR    mu, sigma, count, the network's sha256 and the resize of DIR
    jpeglm fid ref.npz DIR                 FID of DIR against those statistics (the same number as
                                           against the folder they came from); a file made with
                                           another network or resize is refused, both values named

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
from pathlib import Path

from jpeglm.cli import flags
from jpeglm.config import atomic_write_text
from jpeglm.eval.config import FidSettings


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("dir_a", metavar="DIR_A", help="folder of reference (real) images, searched recursively, or "
                        "a reference statistics .npz written by --save-stats")
    parser.add_argument("dir_b", metavar="DIR_B", nargs="?", default=None,
                        help="folder of generated images, searched recursively (not with --save-stats)")
    parser.add_argument("--save-stats", default=None, metavar="FILE.npz",
                        help="write the reference statistics of DIR_A (mu, sigma, count, network sha256, resize) and stop")
    parser.add_argument("--image-size", type=int, default=None, metavar="N",
                        help="with --save-stats: prepare each image as jpeglm eval does (centre square crop, "
                        "antialiased resize to NxN) first, for an eval config's `reference:` (its image_size)")
    flags.add_fields(parser, FidSettings)
    parser.add_argument("--json", default=None, metavar="FILE", help="also write the full result as JSON to FILE")


def _engine(fs):
    from jpeglm.eval.fid import FID

    return FID(backend=fs.backend, device=fs.device, batch_size=fs.batch_size, cache_dir=fs.cache_dir,
               network_path=fs.weights, warn_small_n=False)


def run(args: argparse.Namespace) -> int:
    from jpeglm.errors import UserError
    from jpeglm.eval.featstats import (
        folder_stats,
        frechet_from_stats,
        load_reference,
        save_reference,
    )
    from jpeglm.eval.fid import FidError, fid_folders, result_json

    try:
        fs = flags.build(FidSettings, args)
        if args.save_stats and args.dir_b is not None:
            raise ValueError("--save-stats takes one folder (DIR_A); leave DIR_B out")
        if args.image_size is not None and not args.save_stats:
            raise ValueError("--image-size applies to --save-stats")
        if not args.save_stats and args.dir_b is None:
            raise ValueError("give two folders (DIR_A DIR_B), a statistics file and a folder, or --save-stats FILE DIR")
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # the small-N warning is printed below, once
            if args.save_stats:
                engine = _engine(fs)
                stats, skipped = folder_stats(engine, args.dir_a, args.image_size)
                if stats.n < 2:
                    raise FidError(f"{args.dir_a}: {stats.n} readable images; statistics need at least 2")
                meta = save_reference(args.save_stats, stats, engine.network_sha256, engine.resize, engine.network,
                                      engine.backend, args.image_size or 0)
                for path, reason in skipped:
                    print(f"skipped {path}: {reason}", file=sys.stderr)
                print(f"wrote {args.save_stats}: {meta['count']} images, network sha256 {meta['network_sha256']}, "
                      f"resize {meta['resize']}")
                return 0
            if Path(args.dir_a).is_file():
                engine = _engine(fs)
                ref = load_reference(args.dir_a, engine.network_sha256, engine.resize)
                stats, skipped = folder_stats(engine, args.dir_b)
                if stats.n < 2:
                    raise FidError(f"{args.dir_b}: {stats.n} readable images; FID needs at least 2")
                value = frechet_from_stats(ref["mu"], ref["sigma"], stats.mean, stats.sigma)
                res = engine.result(value, ref["count"] or 0, stats.n)
            else:
                res, skipped = fid_folders(
                    args.dir_a, args.dir_b, backend=fs.backend, device=fs.device,
                    batch_size=fs.batch_size, cache_dir=fs.cache_dir, network_path=fs.weights,
                )
    except (UserError, ValueError) as e:  # FidError and the other UserErrors
        print(f"jpeglm fid: error: {e}", file=sys.stderr)
        return 2
    for path, reason in skipped:
        print(f"skipped {path}: {reason}", file=sys.stderr)
    print(res.describe())
    print("  every image is resized on its own, the same way, whatever its size")
    if args.json:
        atomic_write_text(args.json, result_json(res) + "\n")
    return 0 if res.value is not None else 1
