"""`jpeglm train` / `python -m jpeglm.train`: the flags of training; the loop is jpeglm.train.loop.

Launch it plainly (one process), or with `deepspeed [--hostfile H] [--num_gpus N] --module jpeglm.train`
or `torchrun --nproc_per_node N -m jpeglm.train`.

Every field of `TrainConfig` (jpeglm/train/config.py) is a flag, generated from the field and its
help: top-level fields by name (`--max-steps`, `--precision`), the fields of a section by their
YAML path (`--optim.lr`, `--data.seq-len`, `--eval.interval`). Order of precedence: the dataclass
default, the `--config` file, `--set` / positional `key=value` overrides, the flags.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from jpeglm.cli import flags
from jpeglm.config import load_config, resolve_config
from jpeglm.train.config import TrainConfig


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--config", help="train config: a YAML path or a name in configs/train (e.g. tiny-cpu)")
    parser.add_argument("--data", required=True, help="dataset directory written by `jpeglm prep` (manifest.json, train/, val/, tokenizer/)")
    parser.add_argument("--out", required=True, help="run directory: config.yaml, log.jsonl, tensorboard/, ds/, checkpoints/")
    parser.add_argument("--resume", action="store_true", help="continue the run in --out from its last DeepSpeed checkpoint (same config required). "
                        "DeepSpeed's state is pickled and loading it can run code: resume only runs you made. jpeglm "
                        "refuses a ds/latest naming a folder outside the run and files that differ from what the run "
                        "recorded at save")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="override a config field, e.g. --set optim.lr=1e-3 (repeatable)")
    parser.add_argument("overrides", nargs="*", metavar="KEY=VALUE", help="more overrides, as positional key.path=value")
    # the deepspeed launcher appends --local_rank=N; the rank is read from the environment instead
    parser.add_argument("--local_rank", "--local-rank", type=int, default=None, help=argparse.SUPPRESS)
    flags.add_config_fields(parser, TrainConfig)


def load_train_config(config: str | None, overrides: list[str]) -> tuple[TrainConfig, Path | None]:
    """The train config a `--config` reference names, with dotted overrides; and the folder it is in
    (model and DeepSpeed config paths in it are relative to that folder)."""
    path = resolve_config(config, "train") if config else None
    return load_config(TrainConfig, path, list(overrides)), (path.parent if path else None)


def config_of(args: argparse.Namespace) -> tuple[TrainConfig, Path | None]:
    """The train config of parsed `jpeglm train` arguments: file, then --set / positional overrides, then flags."""
    overrides = [*args.set, *args.overrides, *flags.config_overrides(TrainConfig, args)]
    return load_train_config(args.config, overrides)


def run(args: argparse.Namespace) -> int:
    from jpeglm.errors import UserError

    try:
        cfg, base = config_of(args)
        from jpeglm.train.loop import train

        train(cfg, args.data, args.out, resume=args.resume, config_base=base)
    except UserError as e:  # also under `deepspeed --module jpeglm.train`, which bypasses the jpeglm script
        print(f"jpeglm train: error: {e}", file=sys.stderr)
        return 2
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m jpeglm.train", description=__doc__.splitlines()[0],
                                     formatter_class=flags.HelpFormatter)
    add_arguments(parser)
    return parser


def main(argv: list[str] | None = None) -> int:
    return run(build_parser().parse_args(argv))


if __name__ == "__main__":
    sys.exit(main())
