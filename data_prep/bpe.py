"""Training a sentencepiece BPE tokenizer on the bytes of prepared shards (`jpeglm tokenizer train`).

Each record of `DIR/train` is decoded with the dataset's own tokenizer (DIR/tokenizer, usually the
byte tokenizer) back to the codec's bytes; the BPE is trained on those bytes, ready to be saved
with `save_pretrained` and used by `jpeglm prep --tokenizer OUT`. The settings of a training are
`BpeSettings` (its fields are the `jpeglm tokenizer train` flags). No torch.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np


def _s(default, text: str, **meta):
    return field(default=default, metadata={"help": text, **meta})


@dataclass(frozen=True)
class BpeSettings:
    """The settings of one BPE training on shards, declared once: `jpeglm tokenizer train` flags
    and the argument of `train_from_shards`."""

    vocab_size: int = _s(320, "sentencepiece vocabulary size: 4 specials + 256 byte pieces + merges (the paper uses 320)")
    split: str = _s("train", "which split of --data to train on", choices=["train", "val"])
    max_items: int = _s(20000, "at most this many records are used (seeded reservoir sample), bounding memory and time")
    num_extra: int = _s(16, "number of <extra_i> tokens after the BPE vocabulary (modality / class tokens)")
    max_piece_length: int = _s(16, "longest BPE piece, in bytes")
    seed: int = _s(0, "seed of the record sample (training is deterministic given it)")
    threads: int = _s(1, "sentencepiece trainer threads; 1 (the default) is bit-reproducible, more threads may break "
                      "ties between merges differently from run to run")

    def __post_init__(self):
        if self.max_items < 1 or self.threads < 1 or self.max_piece_length < 1 or self.num_extra < 0:
            raise ValueError("max_items, threads and max_piece_length must be >= 1 and num_extra >= 0")


def iter_record_bytes(shards, tokenizer) -> Iterator[bytes]:
    """The symbol bytes of every record: the dataset tokenizer's decode drops BOS/EOS/extras."""
    for ids in shards:
        yield tokenizer.decode(np.asarray(ids, dtype=np.int64))


def train_from_shards(data: Path, settings: BpeSettings = BpeSettings()):
    """Train a BpeTokenizer on a prepared dataset; returns (tokenizer, stats dict)."""
    from jpeglm.shards import ShardSet
    from jpeglm.tokenizer import BpeTokenizer, TokenizerError

    s, split = settings, settings.split
    shards = ShardSet(data, split)
    if len(shards) == 0:
        raise TokenizerError(f"{data}/{split} has no records to train on")
    source = shards.tokenizer()
    if source.kind == "code":
        raise TokenizerError(f"{data} holds code tokens ({source!r}); BPE is trained over byte streams (jpeg/avc)")
    t0 = time.perf_counter()
    tok = BpeTokenizer.train(iter_record_bytes(shards, source), vocab_size=s.vocab_size, num_extra=s.num_extra,
                             max_sentences=s.max_items, max_piece_length=s.max_piece_length, seed=s.seed,
                             num_threads=s.threads)
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
