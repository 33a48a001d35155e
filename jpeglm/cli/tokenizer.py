"""`jpeglm tokenizer train`: train a sentencepiece BPE tokenizer on the bytes of prepared shards.

Each record of `DIR/train` is decoded with the dataset's own tokenizer (DIR/tokenizer, usually the
byte tokenizer) back to the codec's bytes; the BPE is trained on those bytes and saved with
`save_pretrained`, ready for `jpeglm prep --tokenizer OUT`. The flags are the fields of
`BpeSettings` (jpeglm/data_prep/bpe.py). No torch.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from jpeglm.cli import flags
from jpeglm.data_prep.bpe import BpeSettings


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--data", required=True, type=Path,
                        help="a prepared dataset directory (from `jpeglm prep`) whose records are bytes (jpeg or avc codec)")
    parser.add_argument("--out", required=True, type=Path, help="directory to save the trained tokenizer into")
    flags.add_fields(parser, BpeSettings)


def run(args: argparse.Namespace) -> int:
    from jpeglm.data_prep.bpe import train_from_shards
    from jpeglm.shards import ShardError
    from jpeglm.tokenizer import TokenizerError

    try:
        tok, stats = train_from_shards(args.data, flags.build(BpeSettings, args))
    except (ShardError, TokenizerError, ValueError, OSError) as e:
        print(f"jpeglm tokenizer train: error: {e}", file=sys.stderr)
        return 2
    tok.save_pretrained(args.out)
    print(json.dumps(stats, indent=None))
    print(f"saved {tok!r} to {args.out}: {stats['bytes_per_token']:.2f} bytes/token "
          f"({stats['tokens_per_item']:.0f} tokens per item instead of {stats['bytes_per_item']:.0f})")
    return 0
