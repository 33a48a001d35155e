"""`jpeglm vq train`: the flags of training the VQ/LFQ image tokenizer (jpeglm.baselines.vq_train).

Every field of `VqConfig` is a flag by its own name, generated from the field and its help: the
network's (`--channels`, `--codebook-bits`; config section `model`) and the training's
(`--max-steps`, `--device`, `--threads`, `--lr`; section `train`); the two sections share no name.
Order of precedence: the dataclass default, the `--config` file, positional `key=value` overrides,
the flags.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys

from jpeglm.cli import flags
from jpeglm.config import load_config, resolve_config, to_dict

log = logging.getLogger("jpeglm.baselines.vq_train")


def _config_type():
    from jpeglm.baselines.vq_train import VqConfig  # torch: imported only when this command runs

    return VqConfig


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--input", required=True, help="images: a folder (recursive), a file, builtin:skimage, a saved HF dataset, parquet, imagefolder:DIR or hf:NAME[:SPLIT] (as for `jpeglm prep`)")
    parser.add_argument("--out", required=True, help="output dir: model.safetensors, vq_config.yaml, metrics.json, log.jsonl")
    parser.add_argument("--config", default=None, help="YAML with `model:` and `train:` sections: a file, or a shipped name (tiny, lfq_256, vq_256)")
    parser.add_argument("--split", default=None, help="dataset split for HF inputs")
    parser.add_argument("--resume", action="store_true", help="continue from OUT's last checkpoint (train_state.safetensors: no pickle) with the same config")
    parser.add_argument("overrides", nargs="*", metavar="KEY=VALUE", help="dotted config overrides, e.g. model.channels=32 train.lr=3e-4")
    flags.add_config_fields(parser, _config_type(), flat=("model", "train"))


def run(args: argparse.Namespace) -> int:
    from jpeglm.baselines.vq_train import load_images, train
    from jpeglm.errors import UserError

    VqConfig = _config_type()
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    overrides = [*(args.overrides or []), *flags.config_overrides(VqConfig, args)]
    try:
        cfg = load_config(VqConfig, resolve_config(args.config, "vq") if args.config else None, overrides)
        keys, images, skipped = load_images(args.input, cfg.model.image_size, split=args.split,
                                             max_file_bytes=cfg.train.max_file_bytes)
    except (UserError, ValueError, OSError) as e:
        print(f"jpeglm vq train: error: {e}", file=sys.stderr)
        return 2
    for s in skipped:
        log.warning("skipped %s: %s", s["path"], s["reason"])
    log.info("%d images (%d skipped); model %s", len(keys), len(skipped), to_dict(cfg.model))
    try:
        result = train(cfg, images, keys, out_dir=args.out, resume=args.resume)
    except (UserError, ValueError) as e:
        print(f"jpeglm vq train: error: {e}", file=sys.stderr)
        return 2
    print(json.dumps(result["metrics"]))
    return 0
