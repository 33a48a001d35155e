"""`jpeglm tokenizer train`: train a sentencepiece BPE tokenizer on the bytes of prepared shards.

Each record of `DIR/train` is decoded with the dataset's own tokenizer (DIR/tokenizer, usually the
byte tokenizer) back to the codec's bytes; the BPE is trained on those bytes and saved with
`save_pretrained`, ready for `jpeglm prep --tokenizer OUT`. No torch.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import numpy as np


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


def iter_record_bytes(shards, tokenizer) -> Iterator[bytes]:
    """The symbol bytes of every record: the dataset tokenizer's decode drops BOS/EOS/extras."""
    for ids in shards:
        yield tokenizer.decode(np.asarray(ids, dtype=np.int64))


def train_from_shards(data: Path, vocab_size: int = 320, split: str = "train", max_items: int = 20000,
                      num_extra: int = 16, max_piece_length: int = 16, seed: int = 0, threads: int = 1):
    """Train a BpeTokenizer on a prepared dataset; returns (tokenizer, stats dict)."""
    from jpeglm.shards import ShardSet
    from jpeglm.tokenizer import BpeTokenizer, TokenizerError

    shards = ShardSet(data, split)
    if len(shards) == 0:
        raise TokenizerError(f"{data}/{split} has no records to train on")
    source = shards.tokenizer()
    if source.kind == "code":
        raise TokenizerError(f"{data} holds code tokens ({source!r}); BPE is trained over byte streams (jpeg/avc)")
    t0 = time.perf_counter()
    tok = BpeTokenizer.train(iter_record_bytes(shards, source), vocab_size=vocab_size, num_extra=num_extra,
                             max_sentences=max_items, max_piece_length=max_piece_length, seed=seed, num_threads=threads)
    seconds = time.perf_counter() - t0
    # compression on (up to) 200 records: tokens per item before and after, BOS/EOS excluded
    n = min(len(shards), 200)
    n_bytes = n_tokens = 0
    for i in range(n):
        data_bytes = source.decode(np.asarray(shards[i], dtype=np.int64))
        n_bytes += len(data_bytes)
        n_tokens += len(tok.encode(data_bytes, bos=False, eos=False))
    stats = {"records": len(shards), **getattr(tok, "train_info", {}), "vocab_size": tok.vocab_size,
             "train_seconds": round(seconds, 2), "bytes_per_item": n_bytes / n, "tokens_per_item": n_tokens / n,
             "bytes_per_token": n_bytes / max(n_tokens, 1)}
    return tok, stats


def run(args: argparse.Namespace) -> int:
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
