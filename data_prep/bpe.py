"""Training a sentencepiece BPE tokenizer on the bytes of prepared shards (`jpeglm tokenizer train`).

Each record of `DIR/train` is decoded with the dataset's own tokenizer (DIR/tokenizer, usually the
byte tokenizer) back to the codec's bytes; the BPE is trained on those bytes, ready to be saved
with `save_pretrained` and used by `jpeglm prep --tokenizer OUT`. No torch.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path

import numpy as np


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
