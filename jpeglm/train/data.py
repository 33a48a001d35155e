"""Token shards -> training sequences: concat or pad packing, and a resumable, rank-split order.

- `ConcatSequences`: every record of a split (each already BOS ... EOS) joined end to end and cut
  into `seq_len` chunks, as in the paper; the last partial chunk is dropped. Built on the shard
  offsets alone, so nothing is concatenated in memory.
- `PaddedSequences`: one record per sequence, padded to `seq_len` with pad_id (labels -100,
  attention mask 0). Longer records are truncated or skipped (`long_records`), and counted.
- `BatchOrder`: which sequences make which batch. Epoch e visits the sequences in the permutation
  seeded by (seed, e); a step takes the next `global_batch` of them and data-parallel rank r,
  micro-step k takes the slice [(k*world + r)*micro, +micro). Its whole state is (epoch, position),
  saved in every checkpoint, so a resumed run sees exactly the batches of an uninterrupted one.
- `ClassDropout`: labelled datasets; the class token after a record's BOS becomes the null class
  with probability `rate`, decided per (seed, epoch, record), so a resumed run drops the same ones.
- `val_records`: whole records for validation, with n_bytes / n_pixels for bits per byte / pixel.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from jpeglm.shards import ShardError, ShardSet

IGNORE = -100  # the label HF's causal-LM loss skips


class ConcatSequences:
    """Chunk i = tokens [i*seq_len, (i+1)*seq_len) of the concatenated split."""

    def __init__(self, shards: ShardSet, seq_len: int):
        self.shards, self.seq_len = shards, seq_len
        lengths = shards.lengths
        self.starts = np.concatenate([[0], np.cumsum(lengths, dtype=np.int64)])
        self.num_chunks = int(self.starts[-1] // seq_len)
        self.dropped_tokens = int(self.starts[-1] - self.num_chunks * seq_len)

    def __len__(self) -> int:
        return self.num_chunks

    def __getitem__(self, i: int) -> dict:
        lo, hi = i * self.seq_len, (i + 1) * self.seq_len
        r = int(np.searchsorted(self.starts, lo, side="right")) - 1
        parts = []
        while lo < hi:
            rec = self.shards[r]
            a = lo - int(self.starts[r])
            take = rec[a : a + (hi - lo)]
            parts.append(np.asarray(take, dtype=np.int64))
            lo += len(take)
            r += 1
        ids = torch.from_numpy(np.concatenate(parts))
        return {"input_ids": ids, "labels": ids.clone(), "attention_mask": torch.ones_like(ids)}


class PaddedSequences:
    """One record per sequence; `long_records` = "truncate" keeps the first seq_len tokens
    (EOS lost), "skip" leaves the record out. `num_long` counts them either way."""

    def __init__(self, shards: ShardSet, seq_len: int, pad_id: int, long_records: str = "skip"):
        self.shards, self.seq_len, self.pad_id, self.long_records = shards, seq_len, pad_id, long_records
        lengths = shards.lengths
        long = lengths > seq_len
        self.num_long = int(long.sum())
        self.index = np.flatnonzero(~long) if long_records == "skip" else np.arange(len(lengths))

    def __len__(self) -> int:
        return len(self.index)

    def __getitem__(self, i: int) -> dict:
        rec = np.asarray(self.shards[int(self.index[i])][: self.seq_len], dtype=np.int64)
        return pad_record(rec, self.seq_len, self.pad_id)


def pad_record(rec: np.ndarray, seq_len: int, pad_id: int) -> dict:
    n = len(rec)
    ids = torch.full((seq_len,), pad_id, dtype=torch.long)
    ids[:n] = torch.from_numpy(np.asarray(rec, dtype=np.int64))
    labels = torch.full((seq_len,), IGNORE, dtype=torch.long)
    labels[:n] = ids[:n]
    mask = torch.zeros(seq_len, dtype=torch.long)
    mask[:n] = 1
    return {"input_ids": ids, "labels": labels, "attention_mask": mask}


def build_sequences(shards: ShardSet, packing: str, seq_len: int, pad_id: int, long_records: str = "skip"):
    """The training sequences of a split; raises ShardError when packing leaves none."""
    if packing == "concat":
        seqs = ConcatSequences(shards, seq_len)
        if len(seqs) == 0:
            raise ShardError(f"{shards.root}/{shards.split}: {shards.num_tokens} tokens make no full sequence of seq_len={seq_len}")
    elif packing == "pad":
        seqs = PaddedSequences(shards, seq_len, pad_id, long_records)
        if len(seqs) == 0:
            longest = int(shards.lengths.max()) if len(shards) else 0
            raise ShardError(
                f"{shards.root}/{shards.split}: no record fits seq_len={seq_len} with pad packing "
                f"(longest record {longest} tokens); raise data.seq_len or set data.long_records=truncate"
            )
    else:
        raise ValueError(f"unknown packing {packing!r}")
    return seqs


@dataclass
class BatchOrder:
    """The resumable order of sequences. `state_dict()` = {"epoch", "position"} (global counts)."""

    num_sequences: int
    micro_batch: int
    grad_accum: int
    world_size: int
    seed: int
    epoch: int = 0
    position: int = 0  # sequences of this epoch's permutation already consumed (by all ranks)

    def __post_init__(self):
        self._perm_epoch = None
        self._perm = None

    @property
    def global_batch(self) -> int:
        return self.micro_batch * self.grad_accum * self.world_size

    def _permutation(self, epoch: int) -> np.ndarray:
        if self._perm_epoch != epoch:
            self._perm = np.random.default_rng([self.seed, epoch]).permutation(self.num_sequences)
            self._perm_epoch = epoch
        return self._perm

    def _take(self, n: int) -> list[int]:
        out: list[int] = []
        while len(out) < n:
            perm = self._permutation(self.epoch)
            k = min(n - len(out), self.num_sequences - self.position)
            out.extend(perm[self.position : self.position + k].tolist())
            self.position += k
            if self.position == self.num_sequences:
                self.epoch, self.position = self.epoch + 1, 0
        return out

    def next_step(self, rank: int) -> list[list[int]]:
        """Sequence indices of the next optimizer step for `rank`: one list per micro-step.
        Every rank calls this every step, so all ranks advance the same shared position."""
        ids = self._take(self.global_batch)
        mb, w = self.micro_batch, self.world_size
        return [ids[(k * w + rank) * mb : (k * w + rank + 1) * mb] for k in range(self.grad_accum)]

    def state_dict(self) -> dict:
        return {"epoch": self.epoch, "position": self.position, "num_sequences": self.num_sequences, "seed": self.seed}

    def load_state_dict(self, state: dict) -> None:
        if state.get("num_sequences") != self.num_sequences or state.get("seed") != self.seed:
            raise ValueError(
                f"the checkpoint's data order was over {state.get('num_sequences')} sequences with seed "
                f"{state.get('seed')}; this run has {self.num_sequences} with seed {self.seed} (different data?)"
            )
        self.epoch, self.position = int(state["epoch"]), int(state["position"])


DEFAULT_CLASS_DROPOUT = 0.1  # the classifier-free guidance papers' rate (LlamaGen, VAR use 0.1)


class ClassDropout:
    """Sequences of a labelled dataset with class tokens dropped to the null class at `rate`.

    Record r's class token (the token after its BOS) is dropped in epoch e when
    the r-th draw of `default_rng([seed, e, C]).random(num_records)` is below `rate` (made for the
    whole split at once); the training loop sets `epoch` from the data order before each step, so
    the choice depends on (seed, epoch, record) only: an exact resume sees the same drops."""

    def __init__(self, seqs, shards: ShardSet, tokenizer, rate: float, seed: int):
        if not tokenizer.num_classes:
            raise ValueError("class dropout needs a labelled dataset (jpeglm prep --labels)")
        self.seqs, self.rate, self.seed, self.epoch = seqs, float(rate), int(seed), 0
        self.first, self.null = tokenizer.class_offset, tokenizer.null_class_id
        starts = np.concatenate([[0], np.cumsum(shards.lengths, dtype=np.int64)])
        self.class_pos = starts[:-1] + 1  # where each record's class token sits in the concatenated split
        self._drops_epoch, self._drops = None, None

    def __len__(self) -> int:
        return len(self.seqs)

    def drops(self, epoch: int) -> np.ndarray:
        """Which records lose their class token in `epoch` (bool per record)."""
        if self._drops_epoch != epoch:
            rng = np.random.default_rng([self.seed, epoch, 0xC1A55])  # a stream of its own, not the order's
            self._drops, self._drops_epoch = rng.random(len(self.class_pos)) < self.rate, epoch
        return self._drops

    def __getitem__(self, i: int) -> dict:
        item = self.seqs[i]
        drops = self.drops(self.epoch)
        if isinstance(self.seqs, ConcatSequences):
            lo = i * self.seqs.seq_len
            a, b = np.searchsorted(self.class_pos, [lo, lo + self.seqs.seq_len], side="left")
            records, where = np.arange(a, b), self.class_pos[a:b] - lo
        else:  # one record per sequence, its class token at 1
            records, where = np.array([int(self.seqs.index[i])]), np.array([1])
        where = where[drops[records] & (where < len(item["input_ids"]))]
        if where.size:
            ids, pos = item["input_ids"], torch.from_numpy(where)
            is_class = (ids[pos] >= self.first) & (ids[pos] < self.null)
            pos = pos[is_class]
            ids[pos] = self.null
            item["labels"][pos] = self.null
        return item


def collate(items: list[dict]) -> dict:
    return {k: torch.stack([it[k] for it in items]) for k in items[0]}


@dataclass
class ValRecord:
    ids: np.ndarray
    n_bytes: float
    n_pixels: float


def val_records(shards: ShardSet, max_len: int, max_records: int) -> tuple[list[ValRecord], int]:
    """Up to `max_records` whole val records of at most `max_len` tokens (bits per byte needs
    whole records: a concat chunk would mix records and cut them); returns (records, number too long)."""
    out, too_long = [], 0
    lengths = shards.lengths
    for i in range(len(shards)):
        if len(out) >= max_records:
            break
        if lengths[i] > max_len:
            too_long += 1
            continue
        meta = shards.meta(i)
        out.append(ValRecord(np.asarray(shards[i], dtype=np.int64), float(meta["n_bytes"]), float(meta.get("n_pixels") or 0)))
    return out, too_long
