"""`jpeglm vq train`: the flags of training the VQ/LFQ image tokenizer (jpeglm.baselines.vq_train)."""

from __future__ import annotations

import argparse
import json
import logging

from jpeglm.config import load_config, resolve_config, to_dict

log = logging.getLogger("jpeglm.baselines.vq_train")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--input", required=True, help="images: a folder (recursive), a file, builtin:skimage, a saved HF dataset, parquet, imagefolder:DIR or hf:NAME[:SPLIT] (as for `jpeglm prep`)")
    parser.add_argument("--out", required=True, help="output dir: model.safetensors, vq_config.yaml, metrics.json, log.jsonl")
    parser.add_argument("--config", default=None, help="YAML with `model:` and `train:` sections: a file, or a shipped name (tiny, lfq_256, vq_256)")
    parser.add_argument("--max-steps", type=int, default=None, help="override train.max_steps")
    parser.add_argument("--split", default=None, help="dataset split for HF inputs")
    parser.add_argument("--device", default=None, help="override train.device ('auto', 'cpu', 'cuda')")
    parser.add_argument("--resume", action="store_true", help="continue from OUT's last checkpoint (train_state.pt) with the same config")
    parser.add_argument("--threads", type=int, default=0, help="torch CPU threads (0 = torch's default; 1 is often fastest on a busy shared CPU)")
    parser.add_argument("overrides", nargs="*", metavar="KEY=VALUE", help="dotted config overrides, e.g. model.channels=32 train.lr=3e-4")


def run(args: argparse.Namespace) -> int:
    import torch

    from jpeglm.baselines.vq_train import VqConfig, load_images, train
    from jpeglm.config import ConfigError

    logging.basicConfig(level=logging.INFO, format="%(message)s")
    if getattr(args, "threads", 0):
        torch.set_num_threads(args.threads)
    overrides = list(args.overrides or [])
    if args.max_steps is not None:
        overrides.append(f"train.max_steps={args.max_steps}")
    if args.device:
        overrides.append(f"train.device={args.device}")
    try:
        cfg = load_config(VqConfig, resolve_config(args.config, "vq") if args.config else None, overrides)
        keys, images, skipped = load_images(args.input, cfg.model.image_size, split=args.split)
    except (ConfigError, ValueError, OSError) as e:
        print(f"jpeglm vq train: error: {e}")
        return 2
    for s in skipped:
        log.warning("skipped %s: %s", s["path"], s["reason"])
    log.info("%d images (%d skipped); model %s", len(keys), len(skipped), to_dict(cfg.model))
    try:
        result = train(cfg, images, keys, out_dir=args.out, resume=getattr(args, "resume", False))
    except ValueError as e:
        print(f"jpeglm vq train: error: {e}")
        return 2
    print(json.dumps(result["metrics"]))
    return 0
