"""Writing shards atomically, and the bookkeeping that makes a killed prep resumable.

Input items are cut into chunks of `records_per_shard` consecutive items; chunk c becomes
`train/shard-c` and `val/shard-c` (either may be empty) and then `parts/part-c.json`, its done
marker. Every file goes to a temporary name first and is renamed into place (os.replace is atomic
on POSIX), and the marker is renamed last, after the data files were flushed to disk: a marker on
disk means the chunk is complete. A restart redoes exactly the chunks without a marker and
overwrites whatever half-written files they left, so a run killed at any instant and started again
ends with the same bytes as a run that was never interrupted.

`parts/settings.json` holds everything that decides the bytes (codec, tokenizer, source, split
settings); a directory started with other settings is refused instead of being mixed.
The folder may be an fsspec URL (store.py says what "atomic" means on an object store).
"""

from __future__ import annotations

import io
import json
import os
import shutil
import tempfile
from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np
from jpeglm.data_prep.store import Store
from jpeglm.lock import LOCK_NAME

from jpeglm.config import current_umask
from jpeglm.errors import UserError
from jpeglm.shards import MANIFEST, PARTS_DIR, SPLITS, TOKENIZER_DIR, shard_name

SETTINGS = "settings.json"
SETTINGS_PATH = f"{PARTS_DIR}/{SETTINGS}"


class PrepError(UserError, RuntimeError):
    """A prep that cannot start or finish (mixed settings, nothing written, bad output dir)."""


@dataclass
class Record:
    """One encoded item: its token ids and the sizes that give bits per byte / per pixel later."""

    key: str
    tokens: np.ndarray
    n_symbols: int
    n_bytes: float
    n_pixels: int
    label: int | None = None  # class id (prep --labels); None: an unconditional dataset

    def meta(self) -> dict:
        meta = {"key": self.key, "n_tokens": int(len(self.tokens)), "n_symbols": int(self.n_symbols),
                "n_bytes": self.n_bytes, "n_pixels": int(self.n_pixels)}
        if self.label is not None:  # only then: unconditional records stay as they were
            meta["label"] = int(self.label)
        return meta


@dataclass
class ChunkResult:
    """What one chunk produced, split by split, plus the items it skipped (with reasons)."""

    index: int
    num_items: int
    records: dict[str, list[Record]] = field(default_factory=lambda: {s: [] for s in SPLITS})
    skipped: list[dict] = field(default_factory=list)


def _json_bytes(obj) -> bytes:
    # sort_keys + fixed separators: the same content always gives the same bytes.
    return (json.dumps(obj, sort_keys=True, indent=1) + "\n").encode()


def marker_name(index: int) -> str:
    return f"{PARTS_DIR}/part-{index:05d}.json"


def shard_files(split: str, index: int) -> tuple[str, str, str]:
    """(.bin, .idx, .jsonl) names of one shard, relative to the output folder."""
    base = f"{split}/{shard_name(index)}"
    return f"{base}.bin", f"{base}.idx", f"{base}.jsonl"


@dataclass
class ShardPart:
    """The bytes and sums of consecutive records of one split, ready to be written: token ids in the
    shard dtype, their .jsonl lines, and what the done marker counts. Parts of consecutive records
    join (`join_parts`) into exactly what `shard_part` gives for all of them at once, so a chunk
    merged from pieces is the same bytes as one written whole."""

    tokens: bytes = b""
    jsonl: bytes = b""
    lengths: list[int] = field(default_factory=list)  # tokens per record
    n_bytes: list = field(default_factory=list)  # per record: summed in record order (float sums are order-sensitive)
    num_symbols: int = 0
    num_pixels: int = 0
    max_id: int = -1
    class_counts: dict[int, int] = field(default_factory=dict)

    def header(self) -> dict:
        """Everything but the bytes, as JSON (a piece file's header)."""
        return {"lengths": self.lengths, "n_bytes": self.n_bytes, "num_symbols": self.num_symbols,
                "num_pixels": self.num_pixels, "max_id": self.max_id, "jsonl_bytes": len(self.jsonl),
                "class_counts": {str(k): v for k, v in self.class_counts.items()}}

    @classmethod
    def from_header(cls, header: dict, tokens: bytes, jsonl: bytes) -> ShardPart:
        return cls(tokens, jsonl, [int(n) for n in header["lengths"]], list(header["n_bytes"]), int(header["num_symbols"]),
                   int(header["num_pixels"]), int(header["max_id"]), {int(k): int(v) for k, v in header["class_counts"].items()})


def shard_part(records: list[Record], dtype: np.dtype) -> ShardPart:
    """The ShardPart of `records` (in order)."""
    arrays = [np.asarray(r.tokens, dtype=dtype) for r in records]
    counts: dict[int, int] = {}
    for r in records:
        if r.label is not None:
            counts[int(r.label)] = counts.get(int(r.label), 0) + 1
    return ShardPart(
        tokens=np.concatenate(arrays).tobytes() if arrays else b"",
        jsonl="".join(json.dumps(r.meta(), sort_keys=True) + "\n" for r in records).encode(),
        lengths=[int(a.size) for a in arrays], n_bytes=[r.n_bytes for r in records],
        num_symbols=int(sum(int(r.n_symbols) for r in records)), num_pixels=int(sum(int(r.n_pixels) for r in records)),
        max_id=max((int(a.max()) for a in arrays if a.size), default=-1), class_counts=counts)


def join_parts(parts: list[ShardPart]) -> ShardPart:
    """Consecutive parts as one (the same as `shard_part` of all their records)."""
    counts: dict[int, int] = {}
    for p in parts:
        for k, v in p.class_counts.items():
            counts[k] = counts.get(k, 0) + v
    return ShardPart(b"".join(p.tokens for p in parts), b"".join(p.jsonl for p in parts),
                     [n for p in parts for n in p.lengths], [b for p in parts for b in p.n_bytes],
                     sum(p.num_symbols for p in parts), sum(p.num_pixels for p in parts),
                     max((p.max_id for p in parts), default=-1), counts)


def write_chunk(root, chunk: ChunkResult, dtype: np.dtype) -> dict:
    """Write both splits' shard files of one chunk, then its done marker; return the marker."""
    return write_shards(root, chunk.index, chunk.num_items, chunk.skipped,
                        {split: shard_part(chunk.records[split], dtype) for split in SPLITS})


def write_shards(root, index: int, num_items: int, skipped: list[dict], parts: dict[str, ShardPart]) -> dict:
    """Write chunk `index` (its ShardPart per split) as shard files, then its done marker; return the marker."""
    stream = ShardStream(root, index)
    stream.append(parts)
    return stream.finish(num_items, skipped)


class ShardStream:
    """Chunk `index`'s shard files, written part by part as consecutive parts come (`append`, in
    record order), then put in place with their index files and the done marker (`finish`); the
    same bytes as one `write_shards` of all the parts. `abort` drops what was written."""

    def __init__(self, root, index: int):
        self.store, self.index = Store.of(root), index
        self.files = self.store.staged()
        self.parts: dict[str, list[ShardPart]] = {s: [] for s in SPLITS}  # without their bytes (written already)

    def append(self, parts: dict[str, ShardPart]) -> None:
        for split in SPLITS:
            part = parts[split]
            bin_path, _, jsonl_path = shard_files(split, self.index)
            self.files.append(bin_path, part.tokens)
            self.files.append(jsonl_path, part.jsonl)
            self.parts[split].append(replace(part, tokens=b"", jsonl=b""))

    def finish(self, num_items: int, skipped: list[dict]) -> dict:
        marker = {"chunk": self.index, "num_items": num_items, "splits": {}, "skipped": skipped}
        indexes = {}
        for split in SPLITS:
            part = join_parts(self.parts[split])
            _, idx_path, _ = shard_files(split, self.index)
            offsets = np.zeros(len(part.lengths) + 1, dtype=np.int64)
            np.cumsum(np.asarray(part.lengths, dtype=np.int64), out=offsets[1:])
            idx = io.BytesIO()
            np.save(idx, offsets, allow_pickle=False)
            indexes[idx_path] = idx.getvalue()
            marker["splits"][split] = {
                "num_records": len(part.lengths),
                "num_tokens": int(offsets[-1]),
                "num_symbols": part.num_symbols,
                "num_bytes": float(sum(part.n_bytes)),
                "num_pixels": part.num_pixels,
                # the largest token id: training checks it against the vocabulary as the shard opens
                "max_id": part.max_id,
            }
            if part.class_counts:  # records per class id (labelled preps only)
                marker["splits"][split]["class_counts"] = {str(k): part.class_counts[k] for k in sorted(part.class_counts)}
        self.files.commit(indexes)  # fsync'd: on disk before the marker can be
        # Last: the chunk is done. Not fsync'd (~3 ms, all of it in the serial tail of a one-chunk prep):
        # the data are on disk already, so a power cut can only lose the marker or leave it empty or
        # torn, and read_done then redoes the chunk; it can never make a marker point at missing data.
        self.store.write_bytes(marker_name(self.index), _json_bytes(marker), sync=False)
        return marker

    def abort(self) -> None:
        self.files.abort()


def read_done(root, index: int, dtype: np.dtype) -> dict | None:
    """The marker of chunk `index` if the chunk is complete on disk, else None (redo it).

    A marker whose shard files are missing or of the wrong size (someone deleted or truncated
    them) does not count: the chunk is simply written again."""
    store = Store.of(root)
    try:
        marker = json.loads(store.read_bytes(marker_name(index)))
        for split in SPLITS:
            bin_path, idx_path, jsonl_path = shard_files(split, index)
            n_tok = marker["splits"][split]["num_tokens"]
            if not store.is_file(jsonl_path) or store.size(bin_path) != n_tok * dtype.itemsize:
                return None
            offsets = np.load(io.BytesIO(store.read_bytes(idx_path)), allow_pickle=False)
            if len(offsets) != marker["splits"][split]["num_records"] + 1 or int(offsets[-1]) != n_tok:
                return None
    except (OSError, ValueError, KeyError, TypeError):
        return None
    return marker


def remove_stale_temporaries(root) -> None:
    """Temporary files of a killed run are never renamed into place; delete them."""
    store = Store.of(root)
    for name in store.listdir():
        if _is_our_temporary(name):
            store.remove(name)
    for sub in (*SPLITS, PARTS_DIR, PIECES_DIR):
        for name in store.listdir(sub):
            if name.startswith(".") and name.endswith(".tmp"):
                store.remove(f"{sub}/{name}")


def _is_our_temporary(name: str) -> bool:
    return name.startswith(".tokenizer.") or (name.startswith(f".{MANIFEST}.") and name.endswith(".tmp"))


# Copies of files a codec needs, made beside the shards (VqCodec.copy_model writes vq_model/).
CODEC_FILE_DIRS = ("vq_model",)
PIECES_DIR = f"{PARTS_DIR}/pieces"  # pieces of chunks split over several workers (units.py)


def _our_entries() -> set[str]:
    return {MANIFEST, TOKENIZER_DIR, PARTS_DIR, *SPLITS, *CODEC_FILE_DIRS}


def clear_output(root) -> None:
    """--overwrite: delete what a previous prep wrote here (and nothing else)."""
    store = Store.of(root)
    for name in sorted(_our_entries()):
        store.remove(name)


def claim_output(root, settings: dict, overwrite: bool, shared: bool = False, sync: bool = True) -> None:
    """Make `root` ours for a prep with `settings`: new, resumable, or refused.

    Refuses (PrepError) a folder holding other files, or a prep made with other settings, unless
    `overwrite`, which deletes the previous prep's files first. `shared`: other processes (parts
    of the same prep on other machines) may be writing here now, so their temporaries stay.
    `sync=False`: the settings file is not fsync'd here (the caller does it: `Store.sync(SETTINGS_PATH)`)."""
    root = Store.of(root)
    settings = json.loads(_json_bytes(settings))  # as read back (tuples become lists), or a rerun never matches
    settings_path = SETTINGS_PATH
    if root.exists() and not root.is_dir():
        raise PrepError(f"--out {root} is a file, not a folder")
    if root.is_dir():
        foreign = [n for n in root.listdir() if n not in _our_entries() and not _is_our_temporary(n) and n != LOCK_NAME]
        if foreign:
            raise PrepError(
                f"--out {root} holds files that are not a jpeglm prep ({', '.join(foreign[:5])}); choose an empty or new folder"
            )
        previous = None
        if root.is_file(settings_path):
            try:
                previous = json.loads(root.read_bytes(settings_path))
            except (OSError, ValueError):
                previous = {"unreadable": True}
        elif any(root.exists(n) for n in (MANIFEST, *SPLITS)):
            previous = {"unknown": True}  # shards without our bookkeeping: not resumable
        if previous is not None and previous != settings:
            if not overwrite:
                diff = sorted(k for k in set(previous) | set(settings) if previous.get(k) != settings.get(k))
                raise PrepError(
                    f"--out {root} holds a prep with different settings (differs in: {', '.join(diff)}); "
                    "use another folder, or --overwrite to delete it and start over"
                )
            clear_output(root)
        elif overwrite:
            clear_output(root)
    root.makedirs()
    if not shared:
        remove_stale_temporaries(root)
    if not root.is_file(settings_path):
        root.write_bytes(settings_path, _json_bytes(settings), sync=sync)


def save_tokenizer(root, files: dict[str, bytes]) -> None:
    """Save the tokenizer's files (name -> bytes, as its save_pretrained wrote them) beside the
    shards, once: locally via a temporary folder renamed into place; at a URL each file that is
    not there whole already."""
    store = Store.of(root)
    if store.local is None:
        store.write_files({f"{TOKENIZER_DIR}/{name}": data for name, data in files.items()
                           if store.size(f"{TOKENIZER_DIR}/{name}") != len(data)})
        return
    target = store.local / TOKENIZER_DIR
    if target.is_dir():
        return
    tmp = Path(tempfile.mkdtemp(dir=store.local, prefix=".tokenizer."))
    try:
        Store(tmp).write_files(files)
        os.chmod(tmp, 0o777 & ~current_umask())
        os.replace(tmp, target)
    except OSError:
        shutil.rmtree(tmp, ignore_errors=True)
        if not target.is_dir():  # not "another part saved it first"
            raise
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def write_manifest(root, manifest: dict) -> None:
    Store.of(root).write_bytes(MANIFEST, _json_bytes(manifest))
