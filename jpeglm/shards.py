"""The on-disk token shard format: its constants, and `ShardSet`, the reader. No torch.

Layout of a prepared dataset (written by `data_prep/`, see docs/CONTRACTS.md "Shards"):

    DIR/manifest.json                  what is in here; written atomically, last
    DIR/tokenizer/                     the tokenizer the ids belong to (save_pretrained)
    DIR/{train,val}/shard-NNNNN.bin    flat token ids, uint16 if vocab_size <= 65536 else uint32
    DIR/{train,val}/shard-NNNNN.idx    int64 .npy offsets into .bin, length n_records + 1
    DIR/{train,val}/shard-NNNNN.jsonl  one JSON line per record: key, n_tokens, n_symbols, n_bytes, n_pixels
    DIR/parts/                         resume bookkeeping of the writer (one done marker per chunk)

Each record is `tokenizer.encode(symbols, bos=True, eos=True)`. Shard NNNNN of both splits holds
the records of input chunk NNNNN, so a shard may be empty (a chunk with no val records).

`ShardSet(dir, split)` memory-maps the .bin files (nothing is copied until a record is sliced)
and checks the index against the data before anyone trains on it: a .bin whose size does not
match its .idx, an index that is not monotone, or a manifest that is missing or malformed raises
`ShardError` with the file it concerns, so a training run fails at start, not after hours.
"""

from __future__ import annotations

import bisect
import json
import os
from pathlib import Path

import numpy as np

from jpeglm.errors import UserError
from jpeglm.safepath import check_tree_inside, inside

FORMAT = "jpeglm-shards"
VERSION = 1
SPLITS = ("train", "val")
MANIFEST = "manifest.json"
TOKENIZER_DIR = "tokenizer"
PARTS_DIR = "parts"
UINT16_MAX_VOCAB = 65536  # ids 0..65535 fit uint16; a bigger vocabulary needs uint32

REQUIRED_KEYS = ("format", "version", "codec", "tokenizer", "dtype", "splits", "num_records")


class ShardError(UserError, ValueError):
    """A dataset directory that is missing, incomplete or corrupt."""


def dtype_for_vocab(vocab_size: int) -> np.dtype:
    """The token dtype for a vocabulary: uint16 halves disk and page cache for every vocab we ship."""
    if vocab_size <= 0:
        raise ValueError(f"vocab_size must be positive, got {vocab_size}")
    return np.dtype(np.uint16 if vocab_size <= UINT16_MAX_VOCAB else np.uint32)


def shard_name(index: int) -> str:
    """File stem of the shard that holds input chunk `index`."""
    return f"shard-{index:05d}"


def shard_paths(root: str | os.PathLike, split: str, index_or_name) -> tuple[Path, Path, Path]:
    """(.bin, .idx, .jsonl) paths of one shard."""
    name = shard_name(index_or_name) if isinstance(index_or_name, int) else str(index_or_name)
    base = Path(root) / split / name
    return base.with_suffix(".bin"), base.with_suffix(".idx"), base.with_suffix(".jsonl")


def read_manifest(root: str | os.PathLike) -> dict:
    """Load and check DIR/manifest.json; raises ShardError naming what is wrong."""
    path = Path(root) / MANIFEST
    if not path.is_file():
        hint = " (a prep was started here but has not finished: run `jpeglm prep` again to resume)" if (
            Path(root) / PARTS_DIR
        ).is_dir() else ""
        raise ShardError(f"{path}: no manifest; not a finished jpeglm shard directory{hint}")
    try:
        manifest = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise ShardError(f"{path}: unreadable manifest ({type(e).__name__}: {e})") from e
    if not isinstance(manifest, dict):
        raise ShardError(f"{path}: the manifest must be a JSON object")
    missing = [k for k in REQUIRED_KEYS if k not in manifest]
    if missing:
        raise ShardError(f"{path}: manifest lacks key(s) {', '.join(missing)}")
    if manifest["format"] != FORMAT:
        raise ShardError(f"{path}: format is {manifest['format']!r}, expected {FORMAT!r}")
    if manifest["version"] != VERSION:
        raise ShardError(f"{path}: format version {manifest['version']} is not supported (this code reads {VERSION})")
    if manifest["dtype"] not in ("uint16", "uint32"):
        raise ShardError(f"{path}: dtype {manifest['dtype']!r} is not uint16 or uint32")
    if not isinstance(manifest["splits"], dict):
        raise ShardError(f"{path}: 'splits' must be an object")
    return manifest


class _Shard:
    """One shard: its offsets in memory, its tokens memory-mapped on first use."""

    def __init__(self, root: Path, split: str, entry: dict, dtype: np.dtype):
        try:
            self.name = str(entry["name"])
            expected = int(entry["num_records"])
        except (KeyError, TypeError, ValueError) as e:
            raise ShardError(f"{root / MANIFEST}: bad shard entry {entry!r} in split {split!r}") from e
        if "/" in self.name or "\\" in self.name:
            raise ShardError(f"{root / MANIFEST}: shard name {self.name!r} is not a plain file name; refused")
        inside(root, f"{split}/{self.name}.bin", what="shard")  # no `..`, no symlink out of the dataset
        self.bin, self.idx_path, self.jsonl = shard_paths(root, split, self.name)
        self.dtype = dtype
        for p in (self.bin, self.idx_path):
            if not p.is_file():
                raise ShardError(f"{p}: missing shard file (the dataset is incomplete)")
        try:
            offsets = np.load(self.idx_path, allow_pickle=False)
        except (OSError, ValueError, EOFError) as e:
            raise ShardError(f"{self.idx_path}: unreadable index ({type(e).__name__}: {e})") from e
        if offsets.ndim != 1 or offsets.dtype != np.int64 or len(offsets) < 1 or offsets[0] != 0:
            raise ShardError(f"{self.idx_path}: not an int64 offsets array starting at 0")
        if len(offsets) > 1 and np.any(np.diff(offsets) <= 0):
            raise ShardError(f"{self.idx_path}: offsets are not strictly increasing (empty or reordered records)")
        if len(offsets) - 1 != expected:
            raise ShardError(f"{self.idx_path}: {len(offsets) - 1} records, the manifest says {expected}")
        size = self.bin.stat().st_size
        if size != int(offsets[-1]) * dtype.itemsize:
            raise ShardError(
                f"{self.bin}: {size} bytes but its index needs {int(offsets[-1])} {dtype.name} tokens "
                f"= {int(offsets[-1]) * dtype.itemsize} bytes (truncated or mismatched shard)"
            )
        self.offsets = offsets
        self.max_id = entry.get("max_id")  # largest token id (prep writes it); None: not recorded
        self._tokens: np.ndarray | None = None
        self._meta: list[dict] | None = None

    def __len__(self) -> int:
        return len(self.offsets) - 1

    @property
    def tokens(self) -> np.ndarray:
        if self._tokens is None:
            n = int(self.offsets[-1])
            # np.memmap refuses empty files; an empty shard has no records to slice anyway.
            self._tokens = np.memmap(self.bin, dtype=self.dtype, mode="r", shape=(n,)) if n else np.empty(0, self.dtype)
        return self._tokens

    def record(self, j: int) -> np.ndarray:
        return self.tokens[int(self.offsets[j]) : int(self.offsets[j + 1])]

    def meta(self, j: int) -> dict:
        if self._meta is None:
            if not self.jsonl.is_file():
                raise ShardError(f"{self.jsonl}: missing record metadata file")
            try:
                lines = [json.loads(line) for line in self.jsonl.read_text().splitlines() if line.strip()]
            except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
                raise ShardError(f"{self.jsonl}: unreadable ({type(e).__name__}: {e})") from e
            if len(lines) != len(self):
                raise ShardError(f"{self.jsonl}: {len(lines)} lines for {len(self)} records")
            self._meta = lines
        return dict(self._meta[j])


class ShardSet:
    """The records of one split of a prepared dataset, indexable like a list of token arrays.

    `ShardSet(dir, "train")[i]` is a 1-D array (uint16/uint32, BOS ... EOS) backed by a memory map;
    `meta(i)` its JSON line (key, n_tokens, n_symbols, n_bytes, n_pixels); `lengths` all record
    lengths without touching the token files; `codec()` / `tokenizer()` rebuild what made them.
    """

    def __init__(self, root: str | os.PathLike, split: str = "train"):
        self.root = Path(root)
        if split not in SPLITS:
            raise ShardError(f"split must be one of {', '.join(SPLITS)}, got {split!r}")
        self.split = split
        self.manifest = read_manifest(self.root)
        self.dtype = np.dtype(self.manifest["dtype"])
        info = self.manifest["splits"].get(split)
        if not isinstance(info, dict) or not isinstance(info.get("shards"), list):
            raise ShardError(f"{self.root / MANIFEST}: no shard list for split {split!r}")
        self._shards = [_Shard(self.root, split, entry, self.dtype) for entry in info["shards"]]
        counts = [len(s) for s in self._shards]
        self._starts = np.concatenate([[0], np.cumsum(counts, dtype=np.int64)]).tolist()
        if self._starts[-1] != int(info.get("num_records", -1)):
            raise ShardError(
                f"{self.root / MANIFEST}: split {split!r} says {info.get('num_records')} records, its shards hold {self._starts[-1]}"
            )
        self.num_tokens = int(sum(int(s.offsets[-1]) for s in self._shards))

    def __len__(self) -> int:
        return self._starts[-1]

    def _locate(self, i: int) -> tuple[_Shard, int]:
        n = len(self)
        if not isinstance(i, (int, np.integer)):
            raise TypeError(f"ShardSet indices must be integers, not {type(i).__name__}")
        i = int(i)
        if i < 0:
            i += n
        if not 0 <= i < n:
            raise IndexError(f"record {i} out of range for {n} records in {self.root}/{self.split}")
        s = bisect.bisect_right(self._starts, i) - 1
        return self._shards[s], i - self._starts[s]

    def __getitem__(self, i: int) -> np.ndarray:
        shard, j = self._locate(i)
        return shard.record(j)

    def __iter__(self):
        for shard in self._shards:
            for j in range(len(shard)):
                yield shard.record(j)

    def meta(self, i: int) -> dict:
        shard, j = self._locate(i)
        return shard.meta(j)

    @property
    def lengths(self) -> np.ndarray:
        """Token count of every record, in order (int64), from the indexes alone."""
        if not self._shards:
            return np.zeros(0, np.int64)
        return np.concatenate([np.diff(s.offsets) for s in self._shards])

    def check_ids(self, vocab_size: int) -> None:
        """Raise ShardError if any token id is >= `vocab_size` (it would crash training at some late
        step, a device assert on GPU). Uses each shard's recorded `max_id`; shards of older preps
        without one are scanned once (a memory-mapped max)."""
        for shard in self._shards:
            if len(shard) == 0:
                continue
            top = shard.max_id
            if top is None:
                top = int(shard.tokens.max())
            if int(top) >= vocab_size:
                raise ShardError(f"{shard.bin}: token id {int(top)} is outside the tokenizer's {vocab_size} ids (a dataset "
                                 "made with another tokenizer?); re-run `jpeglm prep` with the tokenizer you train with")

    def codec(self):
        """The codec that wrote these records (`codec_from_config` of the manifest). Codecs whose
        parameters reference files (vq weights, pixel palette) get this directory as `base_dir`."""
        from jpeglm.codecs.base import codec_from_config

        return codec_from_config(self.manifest["codec"], base_dir=self.root)

    def tokenizer(self):
        """The tokenizer saved beside the shards (`load_tokenizer(dir/tokenizer)`)."""
        from jpeglm.tokenizer import load_tokenizer

        path = check_tree_inside(self.root, self.manifest["tokenizer"].get("path", TOKENIZER_DIR), what="tokenizer path")
        if not path.is_dir():
            raise ShardError(f"{path}: the dataset's tokenizer directory is missing")
        try:
            return load_tokenizer(path)
        except (OSError, ValueError, RuntimeError, KeyError, TypeError) as e:  # json, sentencepiece, HF files
            raise ShardError(f"{path}: the dataset's tokenizer is unreadable ({type(e).__name__}: {e}); "
                             "re-run `jpeglm prep` to write it again") from e

    def __repr__(self) -> str:
        return f"ShardSet({str(self.root)!r}, {self.split!r}: {len(self)} records, {self.num_tokens} tokens)"
