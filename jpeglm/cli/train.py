"""`jpeglm train` / `python -m jpeglm.train`: the flags of training; the loop is jpeglm.train.loop.

Launch it plainly (one process), or with `deepspeed [--hostfile H] [--num_gpus N] --module jpeglm.train`
or `torchrun --nproc_per_node N -m jpeglm.train`.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from jpeglm.config import ConfigError, load_config, resolve_config
from jpeglm.train.config import TrainConfig


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--config", help="train config: a YAML path or a name in configs/train (e.g. tiny-cpu)")
    parser.add_argument("--data", required=True, help="dataset directory written by `jpeglm prep` (manifest.json, train/, val/, tokenizer/)")
    parser.add_argument("--out", required=True, help="run directory: config.yaml, log.jsonl, tensorboard/, ds/, checkpoints/")
    parser.add_argument("--max-steps", type=int, help="optimizer steps to train to (overrides max_steps in the config)")
    parser.add_argument("--resume", action="store_true", help="continue the run in --out from its last DeepSpeed checkpoint (same config required)")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="override a config field, e.g. --set optim.lr=1e-3 (repeatable)")
    parser.add_argument("overrides", nargs="*", metavar="KEY=VALUE", help="more overrides, as positional key.path=value")
    # the deepspeed launcher appends --local_rank=N; the rank is read from the environment instead
    parser.add_argument("--local_rank", "--local-rank", type=int, default=None, help=argparse.SUPPRESS)


def load_train_config(config: str | None, overrides: list[str], max_steps: int | None) -> tuple[TrainConfig, Path | None]:
    path = resolve_config(config, "train") if config else None
    overrides = list(overrides) + ([f"max_steps={max_steps}"] if max_steps is not None else [])
    return load_config(TrainConfig, path, overrides), (path.parent if path else None)


def run(args: argparse.Namespace) -> int:
    from jpeglm.checkpoint import CheckpointError
    from jpeglm.shards import ShardError

    try:
        cfg, base = load_train_config(args.config, list(args.set) + list(args.overrides), args.max_steps)
        from jpeglm.train.loop import TrainError, train

        train(cfg, args.data, args.out, resume=args.resume, config_base=base)
    except (ConfigError, ShardError, TrainError, CheckpointError) as e:
        print(f"jpeglm train: error: {e}", file=sys.stderr)
        return 2
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m jpeglm.train", description=__doc__.splitlines()[0],
                                     formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    add_arguments(parser)
    return run(parser.parse_args(argv))


if __name__ == "__main__":
    sys.exit(main())
