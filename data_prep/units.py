"""Work units: parallelism that does not depend on the shard size.

A chunk (`records_per_shard` items, which becomes shard c) is the unit of the output; a unit of
work is a run of consecutive items of one chunk, sized so that every worker gets several whatever
the input size, and smaller towards the end ("guided" scheduling, `UnitSizes`), so the workers
run out of work within a few items of each other. A unit that is a whole chunk is written as the
chunk itself; a smaller one is written as a *piece* (parts/pieces/chunk-C.START-END.piece) and
also sent back to the driver, whose `ChunkMerger` appends each piece that continues the chunk to
its shard files as it comes (the last one finishes the chunk) through the very `writer.ShardStream`
that `write_chunk` uses: so the shard files are the same bytes for any worker count and any unit
size. Pieces are resume points too: a rerun keeps the pieces a killed run finished (even of
another unit size) and encodes only the gaps.

A piece file is one atomic write: 8 magic bytes, the header length (8 bytes, little-endian), a
JSON header (chunk, item range, skipped items, per split the records' lengths and the sums the
done marker counts (writer.ShardPart), a CRC-32 of the body), then the body: the token ids of the
train and of the val records in the shard dtype, then their .jsonl lines, as the shard files hold
them. Merging is concatenation (no per-record work in the driver, whose time is the serial tail
of a prep). JSON and raw bytes only: loading a piece runs no code. Pieces live for seconds (until
their chunk is written, with fsync), so they are not fsync'd: the CRC catches one that a crash
left half on disk (an fsync per piece cost ~1.5 ms, as much as encoding three photos).
"""

from __future__ import annotations

import json
import math
import re
import struct
import zlib
from dataclasses import dataclass

import numpy as np

from jpeglm.data_prep.store import Store
from jpeglm.data_prep.writer import PIECES_DIR, ChunkResult, PrepError, ShardPart, ShardStream, shard_part
from jpeglm.shards import SPLITS

UNITS_PER_SLOT = 4  # a unit is at most 1/(4 x workers) of the work left when it is cut: so units
# shrink geometrically towards the end of a run, and the workers finish within MIN_UNIT items of each other
MIN_UNIT = 4  # items: below this the per-task cost (a piece file, a merge, ~0.3 ms) is no longer small
_MAGIC = b"JPLMPC2\n"  # 2: the header holds ShardPart sums, the body also the .jsonl bytes
_NAME = re.compile(r"chunk-(\d+)\.(\d+)-(\d+)\.piece")


@dataclass
class Unit:
    """Items [start, end) of chunk `chunk` (which has `chunk_items` items)."""

    chunk: int
    start: int
    end: int
    chunk_items: int
    items: list

    @property
    def whole(self) -> bool:
        return self.start == 0 and self.end == self.chunk_items


@dataclass(frozen=True)
class UnitSizes:
    """How many items the next unit takes, given how many are left to cut: `fixed` if given, whole
    chunks for one worker, else guided (a share of what is left, at most a chunk, at least MIN_UNIT)."""

    records_per_shard: int
    slots: int
    fixed: int | None = None

    def __call__(self, remaining: int) -> int:
        if self.fixed is not None:
            return max(1, min(self.fixed, self.records_per_shard))
        if self.slots <= 1:
            return self.records_per_shard
        share = math.ceil(remaining / (self.slots * UNITS_PER_SLOT))
        return max(1, min(self.records_per_shard, max(MIN_UNIT, share)))


def piece_name(chunk: int, start: int, end: int) -> str:
    return f"{PIECES_DIR}/chunk-{chunk:05d}.{start:06d}-{end:06d}.piece"


def list_pieces(store: Store) -> dict[int, list[tuple[int, int]]]:
    """The pieces on disk, chunk -> [(start, end)] sorted (one listing of the folder)."""
    found: dict[int, list[tuple[int, int]]] = {}
    for name in store.listdir(PIECES_DIR):
        m = _NAME.fullmatch(name)
        if m:
            found.setdefault(int(m[1]), []).append((int(m[2]), int(m[3])))
    return {c: sorted(v) for c, v in found.items()}


def plan_units(chunks: list[list], todo: list[int], size, pieces: dict[int, list[tuple[int, int]]],
               valid=lambda c, a, b: True) -> tuple[list[Unit], dict[int, list[tuple[int, int]]]]:
    """The units that encode chunks `todo`, reusing the `pieces` a previous run left (those `valid`
    says are whole); `size(remaining)` is the next unit's size (an int: always that).
    Returns (units in chunk order, the pieces kept per chunk)."""
    gaps, kept = [], {}  # (chunk, start, end) still to encode
    for c in todo:
        n = len(chunks[c])
        pos, mine = 0, []
        for a, b in pieces.get(c, []):
            if a < pos or b > n or a >= b or not valid(c, a, b):
                continue  # overlaps one already kept, or from another layout: redone, deleted at merge
            gaps += [(c, pos, a)] if a > pos else []
            mine.append((a, b))
            pos = b
        gaps += [(c, pos, n)] if n > pos else []
        kept[c] = mine
    remaining = sum(b - a for _, a, b in gaps)
    units = []
    for c, a, end in gaps:
        while a < end:
            b = min(end, a + (size if isinstance(size, int) else size(remaining)))
            units.append(Unit(c, a, b, len(chunks[c]), chunks[c][a:b]))
            remaining -= b - a
            a = b
    return units, kept


def write_piece(store: Store, unit: Unit, part: ChunkResult, dtype: np.dtype) -> dict:
    """Write the encoded items of a unit that is not a whole chunk as one piece file; returns the
    piece as `read_piece` would ({"skipped", "parts"}), for the driver to merge without reading it."""
    parts = {s: shard_part(part.records[s], dtype) for s in SPLITS}
    body = b"".join([*(parts[s].tokens for s in SPLITS), *(parts[s].jsonl for s in SPLITS)])
    header = {"chunk": unit.chunk, "start": unit.start, "end": unit.end, "skipped": part.skipped, "crc32": zlib.crc32(body),
              "splits": {s: parts[s].header() for s in SPLITS}}
    head = json.dumps(header, sort_keys=True).encode()
    store.write_bytes(piece_name(unit.chunk, unit.start, unit.end), _MAGIC + struct.pack("<Q", len(head)) + head + body,
                      sync=False)
    return {"skipped": part.skipped, "parts": parts}


def read_piece(store: Store, chunk: int, start: int, end: int, dtype: np.dtype) -> dict | None:
    """A piece's {"skipped", "parts": {split: ShardPart}}, None if it is not whole."""
    try:
        data = store.read_bytes(piece_name(chunk, start, end))
        if data[:8] != _MAGIC:
            return None  # not a piece, or one of an older layout: redone
        (n,) = struct.unpack("<Q", data[8:16])
        header = json.loads(data[16 : 16 + n])
        body = memoryview(data)[16 + n :]
        if (header["chunk"], header["start"], header["end"]) != (chunk, start, end) or zlib.crc32(body) != header["crc32"]:
            return None
        heads = header["splits"]
        sizes = [sum(heads[s]["lengths"]) * dtype.itemsize for s in SPLITS] + [heads[s]["jsonl_bytes"] for s in SPLITS]
        if sum(sizes) != len(body) or any(len(heads[s]["lengths"]) != len(heads[s]["n_bytes"]) for s in SPLITS):
            return None
        blobs, pos = [], 0
        for k in sizes:
            blobs.append(bytes(body[pos : pos + k]))
            pos += k
        parts = {s: ShardPart.from_header(heads[s], blobs[i], blobs[len(SPLITS) + i]) for i, s in enumerate(SPLITS)}
        return {"skipped": header["skipped"], "parts": parts}
    except (OSError, ValueError, KeyError, TypeError, struct.error):
        return None


class ChunkMerger:
    """Writes a chunk split into pieces while they come in: each piece that continues the items
    written so far goes straight into the chunk's shard files (writer.ShardStream), so that when
    the last piece comes only it, the index files, the fsync and the marker are left. That end is
    the serial tail of a one-chunk prep (writing all of a 500-photo chunk there took 15-30 ms).
    `ranges` are the pieces to use (start, end), those of a previous run among them; `add` one as
    it comes (with its data, or None to read it). The bytes are those one unit of the whole chunk
    writes; the pieces are deleted once the chunk is done."""

    def __init__(self, store: Store, chunk: int, num_items: int, ranges: list[tuple[int, int]], dtype: np.dtype):
        self.store, self.chunk, self.num_items, self.dtype = store, chunk, num_items, dtype
        self.ends = dict(ranges)  # start -> end of each piece to use
        self.loaded: dict = {}  # (start, end) -> a piece that came back, until it is written
        self.pos, self.skipped, self.stream = 0, [], None

    def add(self, start: int, end: int, piece: dict | None) -> dict | None:
        """A piece is done (`piece`: its data, None to read it); returns the chunk's marker once the chunk is written."""
        self.ends[start] = end
        if piece is not None:
            self.loaded[(start, end)] = piece
        return self.advance()

    def advance(self) -> dict | None:
        """Write the pieces that continue the chunk; the marker if that completed it, else None."""
        while self.pos in self.ends and self.pos < self.num_items:
            a, b = self.pos, self.ends[self.pos]
            piece = self.loaded.pop((a, b), None) or read_piece(self.store, self.chunk, a, b, self.dtype)
            if piece is None:
                raise PrepError(f"piece {piece_name(self.chunk, a, b)} of chunk {self.chunk} is missing or damaged "
                                "(was the output folder changed during the prep?); rerun to redo it")
            if self.stream is None:
                self.stream = ShardStream(self.store, self.chunk)
            self.stream.append(piece["parts"])
            self.skipped.extend(piece["skipped"])
            self.pos = b
        if self.pos != self.num_items:
            return None
        marker = self.stream.finish(self.num_items, self.skipped)
        for a, b in list_pieces(self.store).get(self.chunk, []):  # also those of another layout that were not used
            self.store.remove(piece_name(self.chunk, a, b))
        return marker

    def abort(self) -> None:
        """Drop the shard files written so far (a chunk not finished; its pieces stay, to resume from)."""
        if self.stream is not None:
            self.stream.abort()


def merge_chunk(store: Store, chunk: int, num_items: int, ranges: list[tuple[int, int]], dtype: np.dtype) -> dict:
    """Write chunk `chunk` from its pieces on disk (which cover it, in order) and delete its pieces."""
    merger = ChunkMerger(store, chunk, num_items, ranges, dtype)
    try:
        marker = merger.advance()
    finally:
        merger.abort()  # nothing to drop once the chunk is written
    if marker is None:
        raise PrepError(f"the pieces of chunk {chunk} cover {merger.pos} of its {num_items} items")
    return marker
