"""WebDataset tar shards and parquet files as prep inputs: local, or behind any fsspec URL, streamed.

Spellings (`open_webdata`): a `.tar` / `.parquet` path or URL (s3://, gs://, hf://, https://,
memory://, file://), a brace pattern as webdataset writes it (`shards/{00000..00127}.tar`, expanded
with `braceexpand`), a glob (`s3://bucket/shards/*.tar`), or a local folder that holds such files
and no loose images.

Why tarfile over fsspec rather than the `webdataset` package: webdataset's pipeline is a stream
that starts at a shard's first byte, while prep needs the item list up front (the chunks and the
train/val split are fixed before any work) and random access (a unit starts anywhere inside a
shard; a rerun resumes inside one). So listing reads each tar's headers once (seeking over the
members where seeking is cheap, reading the shard once as a stream elsewhere; no local copy) and
keeps every sample's offset and size; a worker then reads exactly one sample's bytes with a ranged
read, and a run of consecutive samples is one sequential read through fsspec's read-ahead cache.
Samples are grouped as webdataset groups them: consecutive members that share the name before the
first dot of their basename (`__key__`); the image is the jpg / jpeg / png / webp member.

Parquet (img2dataset's layout, or an HF export): pyarrow reads only the footers to list the rows;
the image column is a struct with a `bytes` field, or a binary column. A worker reads one row group
in batches of `_BATCH` rows, so a unit of consecutive rows streams each row group once.

Keys are `<shard>/<__key__>` and `<file>/<row>`, a file named by its path relative to the folder
common to all files: keys, and with them the split and resume, do not depend on where the data
lives. A sample without an image member, a member cut off by a truncated tar, a tar that stops
parsing, an empty or null parquet cell: each becomes a skipped item with its reason; a file that
cannot be reached at all stops the prep before any work.
"""

from __future__ import annotations

import glob as globlib
import os
import posixpath
import tarfile
from collections import OrderedDict
from concurrent.futures import ThreadPoolExecutor

from jpeglm.data_prep.sources import Item, Source, SourceError
from jpeglm.data_prep.store import url_fs

IMAGE_MEMBERS = ("jpg", "jpeg", "png", "webp")  # in order of preference when a sample has several
VIDEO_MEMBERS = ("mp4", "webm", "mkv", "mov", "avi")
IMAGE_COLUMNS = ("jpg", "jpeg", "png", "webp", "image", "img")
VIDEO_COLUMNS = ("mp4", "video")
_BATCH = 64  # parquet rows decoded at a time: bounded memory (64 photos), few calls
_OPEN_FILES = 4  # open shard files a worker keeps (a unit reads one or two)
_LIST_THREADS = 16  # shards listed at once: listing is I/O (remote reads), threads overlap it
_SEEKS_CHEAPLY = ("file", "local", "memory")


def claims(spec: str) -> bool:
    """Whether `spec` names tar shards or parquet files (so this module opens it)."""
    if "://" in spec or "{" in spec:
        return True
    base = spec.rstrip("/").lower()
    if base.endswith((".tar", ".parquet")):
        return True
    return os.path.isdir(spec) and _folder_kind(spec) is not None


def _folder_kind(d: str) -> str | None:
    """".tar" or ".parquet" for a local folder holding only such files (no loose media)."""
    from jpeglm.data_prep.sources import IMAGE_EXTS, VIDEO_EXTS

    exts = set()
    for _dirpath, dirnames, filenames in os.walk(d):
        dirnames[:] = [x for x in dirnames if not x.startswith(".")]
        exts |= {os.path.splitext(n)[1].lower() for n in filenames if not n.startswith(".")}
        if exts & (IMAGE_EXTS | VIDEO_EXTS):
            return None  # a media folder (stops at its first picture: no second walk of a big folder)
    kinds = exts & {".tar", ".parquet"}
    return kinds.pop() if len(kinds) == 1 else None


def expand(spec: str) -> list[str]:
    """The files a spelling names, in its order (brace patterns) or sorted (globs, folders)."""
    from braceexpand import braceexpand

    if "://" not in spec and os.path.isdir(spec):
        kind = _folder_kind(spec)
        return sorted(globlib.glob(os.path.join(spec, "**", f"*{kind}"), recursive=True)) if kind else []
    out = []
    for one in braceexpand(spec):
        if any(c in one for c in "*?["):
            fs, path = url_fs(one) if "://" in one else url_fs(os.path.abspath(one))
            proto = one.split("://", 1)[0] + "://" if "://" in one else ""
            out += sorted(proto + p if proto and not p.startswith(proto) else p for p in fs.glob(path))
        else:
            out.append(one)
    if len(set(out)) != len(out):
        raise SourceError(f"input {spec}: names a file twice")
    return out


def _rel_names(files: list[str]) -> list[str]:
    """Each file's path relative to the folder common to all (its basename when there is one)."""
    paths = [f.split("://", 1)[-1] for f in files]
    if len(paths) == 1:
        return [posixpath.basename(paths[0])]
    common = posixpath.commonpath(paths)
    return [posixpath.relpath(p, common) for p in paths]


def _error(label: str, f: str, e: Exception) -> SourceError:
    return SourceError(f"input {label}: cannot read {f} ({type(e).__name__}: {e})")


class _Files:
    """Open fsspec files of one source, kept per process (not pickled) and reused across items."""

    def __init__(self):
        self._open: OrderedDict = OrderedDict()
        self.batches: dict = {}  # parquet: (file, row group) -> the batch being read and its first row

    def get(self, url: str, opener):
        f = self._open.get(url)
        if f is None:
            fs, path = url_fs(url)
            f = opener(fs, path)
            self._open[url] = f
            while len(self._open) > _OPEN_FILES:
                self._open.popitem(last=False)[1].close()
        self._open.move_to_end(url)
        return f


class _ShardSource(Source):
    """What tar and parquet sources share: the files, their relative names, the worker's open files."""

    kind = ""

    def __init__(self, label: str, files: list[str], media_kind: str):
        self.label, self.files, self.media_kind = label, files, media_kind
        self.rels = _rel_names(files)
        self._files = _Files()

    def __getstate__(self):
        state = dict(self.__dict__)
        state["_files"] = None  # a worker opens its own
        return state

    def __setstate__(self, state):
        self.__dict__.update(state)
        self._files = _Files()

    def items(self) -> list[Item]:
        return self._list(range(len(self.files)))

    def _list(self, indices) -> list[Item]:
        indices = list(indices)
        if not indices:
            return []
        with ThreadPoolExecutor(min(_LIST_THREADS, len(indices))) as pool:
            listed = list(pool.map(self._list_one, indices))  # map keeps the files' order
        return [item for items in listed for item in items]

    def _list_one(self, index: int) -> list[Item]:  # pragma: no cover - interface
        raise NotImplementedError

    def describe(self) -> dict:
        return {"kind": self.kind, "input": self.label, "files": len(self.files), "media": self.media_kind}


def _sample_name(member: str) -> tuple[str, str] | None:
    """(key, extension) as webdataset splits a member name: the key ends at the basename's first dot."""
    head, _, base = member.rpartition("/")
    dot = base.find(".")
    if dot <= 0:
        return None  # no extension (or a dot file): not part of any sample, as in webdataset
    return (f"{head}/" if head else "") + base[:dot], base[dot + 1 :].lower()


class TarSource(_ShardSource):
    """WebDataset shards: one item per sample, its image member read with one ranged read."""

    kind = "webdataset"

    def _list_one(self, index: int) -> list[Item]:
        url, rel = self.files[index], self.rels[index]
        try:
            fs, path = url_fs(url)
            size = int(fs.size(path))
            f = fs.open(path, "rb")
        except Exception as e:  # not found, no permission, no network, no fsspec backend
            raise _error(self.label, url, e) from None
        members, unsafe, error = [], [], None
        protocols = {fs.protocol} if isinstance(fs.protocol, str) else set(fs.protocol)
        mode = "r:" if protocols & set(_SEEKS_CHEAPLY) else "r|"  # seek over members, or stream the shard once
        try:
            with f, tarfile.open(fileobj=f, mode=mode) as tf:
                for m in tf:
                    if m.isfile():
                        members.append((m.name, m.offset_data, m.size))
                    elif m.issym() or m.islnk():  # a link names another member: never followed
                        unsafe.append((m.name, "a link, not a file"))
        except (tarfile.TarError, EOFError, OSError) as e:
            error = e
        wanted = VIDEO_MEMBERS if self.media_kind == "video" else IMAGE_MEMBERS
        items, samples = [], OrderedDict()  # key -> {ext: (offset, size)}, consecutive members grouped
        prev = None
        for name, offset, n in members:
            if name.startswith("/") or ".." in name.split("/"):  # keys never leave their shard
                unsafe.append((name, "an absolute path or `..`"))
                continue
            parsed = _sample_name(name)
            if parsed is None:
                continue
            key, ext = parsed
            if key != prev:
                samples[(key, len(samples))] = {}  # a key that comes back later is a new sample, as in webdataset
                prev = key
            samples[next(reversed(samples))][ext] = (offset, n)
        for (key, _), exts in samples.items():
            k = f"{rel}/{key}"
            ext = next((e for e in wanted if e in exts), None)
            if ext is None:
                items.append(Item(k, ("skip", f"no {'/'.join(wanted)} member in the sample (has: {', '.join(sorted(exts))})")))
            elif exts[ext][0] + exts[ext][1] > size:
                items.append(Item(k, ("skip", f"truncated tar: the {ext} member ends past the end of the file")))
            else:
                items.append(Item(k, ("tar", index, exts[ext][0], exts[ext][1], ext)))
        items += [Item(f"{rel}/{name}", ("skip", f"unsafe tar member name ({why}): skipped")) for name, why in unsafe]
        truncated_last = members and members[-1][1] + members[-1][2] > size
        if error is not None and not truncated_last:  # the samples before the damage are kept
            what = f"after {len(samples)} samples" if samples else "at its start (not a tar file?)"
            items.append(Item(f"{rel}/", ("skip", f"tar unreadable {what}: {type(error).__name__}: {error}")))
        return items

    def size_of(self, item: Item) -> int | None:
        return item.ref[3] if item.ref[0] == "tar" else None

    def fetch(self, item: Item):
        from jpeglm.media import MediaError

        if item.ref[0] == "skip":
            raise MediaError(item.ref[1])
        _, index, offset, size, ext = item.ref
        f = self._files.get(self.files[index], lambda fs, path: fs.open(path, "rb"))
        f.seek(offset)
        data = f.read(size)
        if len(data) != size:
            raise MediaError(f"truncated tar: the {ext} member has {len(data)} of {size} bytes")
        return data


def _image_type(tp) -> bool:
    import pyarrow as pa

    binary = (pa.types.is_binary, pa.types.is_large_binary, getattr(pa.types, "is_binary_view", lambda t: False))
    if any(check(tp) for check in binary):
        return True
    if pa.types.is_struct(tp):
        i = tp.get_field_index("bytes")
        return i >= 0 and any(check(tp.field(i).type) for check in binary)
    return False


class ParquetSource(_ShardSource):
    """Rows of parquet files: one item per row, the image bytes from `column`."""

    kind = "parquet"

    def __init__(self, label: str, files: list[str], media_kind: str, column: str | None):
        super().__init__(label, files, media_kind)
        self.column = column

    def items(self) -> list[Item]:
        # the first readable file picks the column (when none was given) before the rest are listed in parallel
        first = []
        for i in range(len(self.files)):
            first += self._list_one(i)
            if self.column is not None:
                return first + self._list(range(i + 1, len(self.files)))
        return first

    def _list_one(self, index: int) -> list[Item]:
        import pyarrow.parquet as pq

        url, rel = self.files[index], self.rels[index]
        try:
            fs, path = url_fs(url)
            f = fs.open(path, "rb")
        except Exception as e:  # not found, no permission, no network, no fsspec backend
            raise _error(self.label, url, e) from None
        try:
            with f:
                pf = pq.ParquetFile(f)
                schema, meta = pf.schema_arrow, pf.metadata
        except Exception as e:  # there, but not parquet (a cut download): its rows are lost, the others' not
            return [Item(f"{rel}/", ("skip", f"not a readable parquet file: {type(e).__name__}: {e}"))]
        column = self._pick_column(schema, url)
        if self.column is None:
            self.column = column
        elif column != self.column:  # pragma: no cover - _pick_column returns the given one or fails
            raise SourceError(f"input {self.label}: {url} has no column {self.column!r}")
        items, row = [], 0
        for g in range(meta.num_row_groups):
            for r in range(meta.row_group(g).num_rows):
                items.append(Item(f"{rel}/{row:08d}", ("pq", index, g, r)))
                row += 1
        return items

    def _pick_column(self, schema, url: str) -> str:
        if self.column is not None:
            if self.column not in schema.names:
                raise SourceError(f"input {self.label}: {url} has no column {self.column!r} (has {', '.join(schema.names)})")
            tp = schema.field(self.column).type
            if not _image_type(tp):
                raise SourceError(f"input {self.label}: column {self.column!r} holds {tp}, not image bytes "
                                  "(a binary column, or a struct with a `bytes` field)")
            return self.column
        names = VIDEO_COLUMNS if self.media_kind == "video" else IMAGE_COLUMNS
        usable = [n for n in schema.names if _image_type(schema.field(n).type)]
        for n in (*[n for n in names if n in usable], *usable):
            return n
        raise SourceError(f"input {self.label}: no column of image bytes in {url} (columns: {', '.join(schema.names)}); "
                          "pass --image-column")

    def fetch(self, item: Item):
        import pyarrow.parquet as pq

        from jpeglm.media import MediaError

        if item.ref[0] == "skip":
            raise MediaError(item.ref[1])
        _, index, group, row = item.ref
        pf = self._files.get(self.files[index], lambda fs, path: pq.ParquetFile(fs.open(path, "rb")))
        state = self._files.batches
        cur = state.get((index, group))
        if cur is None or row < cur["start"]:  # a new row group, or going back: read it from its start
            state.clear()  # one row group's batch per process is enough memory
            batches = pf.iter_batches(batch_size=_BATCH, row_groups=[group], columns=[self.column])
            cur = state[(index, group)] = {"it": batches, "start": 0, "batch": next(batches)}
        while row >= cur["start"] + cur["batch"].num_rows:
            cur["start"] += cur["batch"].num_rows
            cur["batch"] = next(cur["it"])
        value = cur["batch"].column(0)[row - cur["start"]].as_py()
        if isinstance(value, dict):
            if not value.get("bytes") and value.get("path"):  # paths are not followed: they name files elsewhere
                raise MediaError(f"no image bytes in column {self.column!r}, only a path ({value['path']})")
            value = value.get("bytes")
        if not value:
            raise MediaError(f"empty image bytes in column {self.column!r}" if value is not None
                             else f"no image in column {self.column!r} (null)")
        return bytes(value)

    def describe(self) -> dict:
        return {**super().describe(), "column": self.column}


def open_webdata(spec: str, media_kind: str, column: str | None = None) -> Source:
    """A TarSource or ParquetSource for `spec` (see `claims`); SourceError when it names no files."""
    files = expand(spec)
    if not files:
        raise SourceError(f"input {spec}: no .tar or .parquet files found")
    kinds = {os.path.splitext(f.split("?", 1)[0])[1].lower() for f in files}
    if kinds == {".tar"}:
        if column is not None:
            raise SourceError("--image-column is for parquet inputs (a tar sample's image is its jpg/jpeg/png/webp member)")
        return TarSource(spec, files, media_kind)
    if kinds == {".parquet"}:
        return ParquetSource(spec, files, media_kind, column)
    raise SourceError(f"input {spec}: URL and pattern inputs are WebDataset .tar shards or .parquet files, "
                      f"not {', '.join(sorted(k or '(no extension)' for k in kinds))}")
