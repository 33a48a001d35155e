"""`jpeglm tokenizer train`: train a sentencepiece BPE tokenizer on the bytes of prepared shards.

Each record of `DIR/train` is decoded with the dataset's own tokenizer (DIR/tokenizer, usually the
byte tokenizer) back to the codec's bytes; the BPE is trained on those bytes and saved with
`save_pretrained`, ready for `jpeglm prep --tokenizer OUT`. No torch.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--data", required=True, type=Path,
                        help="a prepared dataset directory (from `jpeglm prep`) whose records are bytes (jpeg or avc codec)")
    parser.add_argument("--vocab-size", type=int, default=320,
                        help="sentencepiece vocabulary size: 4 specials + 256 byte pieces + merges (the paper uses 320)")
    parser.add_argument("--out", required=True, type=Path, help="directory to save the trained tokenizer into")
    parser.add_argument("--split", default="train", choices=["train", "val"], help="which split of --data to train on")
    parser.add_argument("--max-items", type=int, default=20000,
                        help="at most this many records are used (seeded reservoir sample), bounding memory and time")
    parser.add_argument("--num-extra", type=int, default=16,
                        help="number of <extra_i> tokens after the BPE vocabulary (modality / class tokens)")
    parser.add_argument("--max-piece-length", type=int, default=16, help="longest BPE piece, in bytes")
    parser.add_argument("--seed", type=int, default=0, help="seed of the record sample (training is deterministic given it)")
    parser.add_argument("--threads", type=int, default=1, help="sentencepiece trainer threads; 1 (the default) is bit-reproducible, more threads may break ties between merges differently from run to run")


def run(args: argparse.Namespace) -> int:
    from jpeglm.data_prep.bpe import train_from_shards
    from jpeglm.shards import ShardError
    from jpeglm.tokenizer import TokenizerError

    try:
        tok, stats = train_from_shards(args.data, vocab_size=args.vocab_size, split=args.split, max_items=args.max_items,
                                       num_extra=args.num_extra, max_piece_length=args.max_piece_length,
                                       seed=args.seed, threads=args.threads)
    except (ShardError, TokenizerError, OSError) as e:
        print(f"jpeglm tokenizer train: {e}", file=sys.stderr)
        return 2
    tok.save_pretrained(args.out)
    print(json.dumps(stats, indent=None))
    print(f"saved {tok!r} to {args.out}: {stats['bytes_per_token']:.2f} bytes/token "
          f"({stats['tokens_per_item']:.0f} tokens per item instead of {stats['bytes_per_item']:.0f})")
    return 0
