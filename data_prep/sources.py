"""Input sources for `jpeglm prep`: what the items are, in which order, and how to fetch one.

A source lists its items once, in the main process, in a deterministic order (sorted relative
paths, or dataset row order); every item has a stable `key` (relative path, or `name/split/index`)
that names it in the shards, in the train/val hash split and in the `skipped` list. Workers get
the (picklable) source and call `fetch(item)`, which returns what the media layer opens: a file
path, the bytes of a dataset cell, or a PIL image. Decoding, and rejecting bad input, happen in
the pipeline, so one unreadable item never stops the listing.

Spellings of `--input`:
- a file, or a folder (searched recursively for image or video extensions, by codec);
- `builtin:skimage`: the photos that ship inside scikit-image (the offline default);
- a folder written by `datasets.Dataset.save_to_disk` (or a DatasetDict: pick `--split`);
- WebDataset `.tar` shards and `.parquet` files (img2dataset's layouts), local or as fsspec URLs
  (s3://, gs://, hf://, https://, ...), one file, a brace pattern `{00000..00127}`, a glob, or a
  folder holding only such files: streamed, see webdata.py;
- `imagefolder:DIR` (`datasets.load_dataset("imagefolder")`, e.g. to keep its label column);
- `hf:NAME[:SPLIT]`: a dataset on the Hugging Face hub (needs the network or a warm HF cache).
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path

from jpeglm.errors import UserError

IMAGE_EXTS = frozenset(
    ".jpg .jpeg .jpe .jfif .png .bmp .gif .tif .tiff .webp .ppm .pgm .pbm .pnm .tga .ico .jp2 .avif .heic".split()
)
VIDEO_EXTS = frozenset(".mp4 .m4v .mov .mkv .webm .avi .mpg .mpeg .ts .flv .wmv .3gp .ogv .y4m".split())
BUILTIN_SKIMAGE = "builtin:skimage"
_SKIMAGE_EXTS = (".png", ".jpg")
_MEDIA_COLUMNS = ("image", "img", "video", "frames", "picture", "photo")


class SourceError(UserError, ValueError):
    """An --input that cannot be listed at all (missing path, offline hub, no media column)."""


@dataclass(frozen=True)
class SourceOptions:
    """How to read an --input that is a dataset or parquet files (the `jpeglm prep` flags)."""

    split: str | None = field(default=None, metadata={"help": "dataset split to read (default: the one in hf:NAME:SPLIT, "
                                                               "else train)"})
    column: str | None = field(default=None, metadata={
        "help": "dataset or parquet column holding the images/videos (default: the first Image/Video feature, else a "
                "column named image/img/video; parquet: jpg/jpeg/png/webp/image/img, else the first column of bytes)",
        "aliases": ("--image-column",)})


@dataclass(frozen=True)
class Item:
    """One input item: `key` names it everywhere; `ref` is what `Source.fetch` needs (a path
    relative to the source root, or a row index)."""

    key: str
    ref: str | int


class Source:
    """Base: `items()` in deterministic order, `fetch(item)` -> path | bytes | PIL image."""

    media_kind: str = "image"

    def items(self) -> list[Item]:  # pragma: no cover - interface
        raise NotImplementedError

    def fetch(self, item: Item):  # pragma: no cover - interface
        raise NotImplementedError

    def size_of(self, item: Item) -> int | None:
        """The bytes `fetch` would read into memory, when known without reading (a tar member's
        header), else None."""
        return None

    def describe(self) -> dict:
        """What the manifest records as `source` (no absolute paths of the machine: the same
        input gives the same manifest wherever the output goes)."""
        raise NotImplementedError  # pragma: no cover - interface


def fetch_image(source: Source, item: Item, max_file_bytes: int):
    """`source.fetch(item)` for an image, refused with a MediaError when over `max_file_bytes`
    before it is read: by the size the source knows up front (a tar member) or the file's size."""
    from jpeglm.media import check_file_size

    known = source.size_of(item)
    if known is not None:
        check_file_size(known, max_file_bytes)
    src = source.fetch(item)
    check_file_size(src, max_file_bytes)
    return src


class FileSource(Source):
    """A single file or a folder searched recursively; keys are POSIX paths relative to the root."""

    def __init__(self, path: str | os.PathLike, media_kind: str, label: str | None = None, exts=None):
        self.root = Path(path)
        self.media_kind = media_kind
        self.label = label or str(path)
        self.exts = frozenset(exts) if exts is not None else (VIDEO_EXTS if media_kind == "video" else IMAGE_EXTS)

    def items(self) -> list[Item]:
        """Every media file under the root, each real folder walked once: a symlink to a folder inside
        the tree is not followed (the folder itself is listed), one to a folder outside is followed
        once, so a loop (`sub/loop -> ..`) neither repeats files nor never ends. A file name that is
        not UTF-8 gets a key with its bad bytes escaped (`\\xff`); a folder that cannot be read
        becomes an item that is skipped with the reason."""
        if self.root.is_file():
            return [Item(self.root.name, "")]
        if not self.root.is_dir():
            raise SourceError(f"input {self.label}: no such file or folder")
        found: list[tuple[str, str]] = []
        root = os.fspath(self.root)
        real_root = os.path.realpath(root)
        seen: set[tuple[int, int]] = set()

        def unreadable(e: OSError) -> None:
            rel = os.path.relpath(e.filename, root) if e.filename else "."
            if rel == ".":
                raise SourceError(f"input {self.label}: cannot read the folder ({e.strerror or e})")
            found.append((_key(rel.replace(os.sep, "/") + "/"), f"{UNREADABLE}{e.strerror or e}"))

        for dirpath, dirnames, filenames in os.walk(root, followlinks=True, onerror=unreadable):
            st = os.stat(dirpath)
            if (st.st_dev, st.st_ino) in seen:  # a second way into a folder walked already
                dirnames[:] = []
                continue
            seen.add((st.st_dev, st.st_ino))
            dirnames[:] = [d for d in dirnames if not d.startswith(".")  # skip .git, .cache, ...
                           and not _links_within(os.path.join(dirpath, d), real_root)]
            rel_dir = os.path.relpath(dirpath, root)
            prefix = "" if rel_dir == "." else rel_dir.replace(os.sep, "/") + "/"
            for name in filenames:  # plain string ops: pathlib costs seconds on 100k-file folders
                if not name.startswith(".") and os.path.splitext(name)[1].lower() in self.exts:
                    found.append((_key(prefix + name), prefix + name))
        found.sort()  # by key: the order (and so the shards) never depends on the file system
        return [Item(key, rel) for key, rel in found]

    def fetch(self, item: Item):
        if isinstance(item.ref, str) and item.ref.startswith(UNREADABLE):
            raise OSError(f"unreadable folder: {item.ref[len(UNREADABLE):]}")
        return str(self.root / item.ref) if item.ref else str(self.root)

    def describe(self) -> dict:
        return {"kind": "files", "input": self.label, "media": self.media_kind, "extensions": sorted(self.exts)}


UNREADABLE = "\0unreadable\0"  # the ref of an item standing for a folder that could not be listed


def _key(rel: str) -> str:
    """A record key that is valid UTF-8 (JSON-safe): undecodable bytes of a name escaped as \\xNN."""
    try:
        rel.encode("utf-8")
        return rel
    except UnicodeEncodeError:
        return os.fsencode(rel).decode("utf-8", "backslashreplace")


def _links_within(path: str, real_root: str) -> bool:
    """A symlink to a folder inside the tree (walked anyway, by its own name)."""
    if not os.path.islink(path):
        return False
    real = os.path.realpath(path)
    return real == real_root or real.startswith(real_root + os.sep)


def skimage_dir() -> Path:
    """The folder of sample photos inside the installed scikit-image."""
    try:
        import skimage.data
    except ImportError as e:  # pragma: no cover - scikit-image is a dependency
        raise SourceError("builtin:skimage needs scikit-image (pip install scikit-image)") from e
    return Path(skimage.data.__file__).parent


class HFSource(Source):
    """Rows of a Hugging Face dataset; the media column is read undecoded (bytes or a path) so
    that our own opener applies its checks (bombs, truncation) and gives the skip reasons."""

    def __init__(self, kind: str, where: str, split: str | None, column: str | None, media_kind: str, label: str):
        self.kind, self.where, self.split, self.column = kind, where, split, column
        self.media_kind = media_kind
        self.label = label
        self._ds = None
        self._all = None  # every column (read_column reads labels from it)
        self.name = Path(where).name if kind != "hub" else where

    def __getstate__(self):
        state = dict(self.__dict__)
        state["_ds"] = state["_all"] = None  # workers reopen the (memory-mapped) dataset instead of pickling it
        return state

    def _load(self):
        if self._ds is not None:
            return self._ds
        try:
            import datasets
        except ImportError as e:  # pragma: no cover - datasets is a dependency
            raise SourceError("dataset inputs need the `datasets` package") from e
        try:
            if self.kind == "disk":
                ds = datasets.load_from_disk(self.where)
            elif self.kind == "imagefolder":
                ds = datasets.load_dataset("imagefolder", data_dir=self.where)
            else:
                ds = datasets.load_dataset(self.where, split=self.split) if self.split else datasets.load_dataset(self.where)
        except Exception as e:  # datasets raises many types (ConnectionError, FileNotFoundError, ...)
            hint = " (offline? hub datasets need the network or a warm HF cache)" if self.kind == "hub" else ""
            raise SourceError(f"input {self.label}: could not load the dataset{hint}: {type(e).__name__}: {e}") from e
        if isinstance(ds, datasets.DatasetDict):
            split = self.split or ("train" if "train" in ds else sorted(ds)[0])
            if split not in ds:
                raise SourceError(f"input {self.label}: no split {split!r} (has {', '.join(ds)})")
            self.split = split
            ds = ds[split]
        if self.column is None:
            self.column = self._guess_column(ds)
        elif self.column not in ds.column_names:
            raise SourceError(f"input {self.label}: no column {self.column!r} (has {', '.join(ds.column_names)})")
        feature = ds.features[self.column]
        if isinstance(feature, (datasets.Image, getattr(datasets, "Video", ()))):
            ds = ds.cast_column(self.column, type(feature)(decode=False))
        self._all = ds
        self._ds = ds.select_columns([self.column])
        return self._ds

    def read_column(self, name: str) -> tuple[list, list[str] | None]:
        """All values of column `name` in row order, and its class names when it is a ClassLabel
        (`jpeglm prep --labels column:NAME`)."""
        import datasets

        self._load()
        ds = self._all
        if name not in ds.column_names:
            raise SourceError(f"input {self.label}: no column {name!r} (has {', '.join(ds.column_names)})")
        feature = ds.features[name]
        names = list(feature.names) if isinstance(feature, datasets.ClassLabel) else None
        return list(ds[name]), names

    def _guess_column(self, ds) -> str:
        import datasets

        wanted = (datasets.Video,) if self.media_kind == "video" and hasattr(datasets, "Video") else (datasets.Image,)
        for name, feature in ds.features.items():
            if isinstance(feature, wanted):
                return name
        for name in _MEDIA_COLUMNS:
            if name in ds.column_names:
                return name
        raise SourceError(
            f"input {self.label}: no {self.media_kind} column found (columns: {', '.join(ds.column_names)}); pass --column"
        )

    def items(self) -> list[Item]:
        ds = self._load()
        tag = f"{self.name}/{self.split}" if self.split else self.name
        return [Item(f"{tag}/{i:08d}", i) for i in range(len(ds))]

    def fetch(self, item: Item):
        value = self._load()[int(item.ref)][self.column]
        if isinstance(value, dict):  # an undecoded Image/Video cell: {"bytes": ..., "path": ...}
            if value.get("bytes"):
                return bytes(value["bytes"])
            if value.get("path"):
                path = Path(value["path"])
                if not path.is_absolute() and self.kind != "hub":
                    path = Path(self.where) / path
                return str(path)
            raise ValueError("empty dataset cell (no bytes and no path)")
        if isinstance(value, (bytes, bytearray)):
            return bytes(value)
        if value is None:
            raise ValueError("empty dataset cell")
        return value  # a PIL image, a path string or an array: the opener decides

    def describe(self) -> dict:
        return {"kind": f"dataset:{self.kind}", "input": self.label, "split": self.split, "column": self.column}


def _is_saved_dataset(p: Path) -> bool:
    return (p / "dataset_info.json").is_file() or (p / "state.json").is_file() or (p / "dataset_dict.json").is_file()


def open_source(spec: str, media_kind: str = "image", split: str | None = None, column: str | None = None) -> Source:
    """Turn an --input string into a Source (see the module docstring for the spellings)."""
    if media_kind not in ("image", "video"):
        raise ValueError(f"media_kind must be image or video, got {media_kind!r}")
    if spec.startswith("file://"):
        spec = spec[len("file://") :]
    if spec == BUILTIN_SKIMAGE:
        if media_kind != "image":
            raise SourceError("builtin:skimage holds photos; pass a video file or folder for --codec avc")
        return FileSource(skimage_dir(), "image", label=spec, exts=_SKIMAGE_EXTS)
    if spec.startswith("builtin:"):
        raise SourceError(f"unknown built-in source {spec!r}; known: {BUILTIN_SKIMAGE}")
    from jpeglm.data_prep import webdata

    if "://" in spec:  # fsspec URLs (hf://... is a file on the hub; hf:NAME a hub dataset)
        return webdata.open_webdata(spec, media_kind, column)
    if spec.startswith("hf:"):
        name, _, hub_split = spec[3:].partition(":")
        if not name:
            raise SourceError("hf: needs a dataset name, e.g. hf:cifar10:train")
        return HFSource("hub", name, hub_split or split, column, media_kind, spec)
    if spec.startswith("imagefolder:"):
        where = spec[len("imagefolder:") :]
        if not Path(where).is_dir():
            raise SourceError(f"input {spec}: no such folder")
        return HFSource("imagefolder", where, split, column, media_kind, spec)
    p = Path(spec)
    if p.is_dir() and _is_saved_dataset(p):
        return HFSource("disk", spec, split, column, media_kind, spec)
    if webdata.claims(spec):
        return webdata.open_webdata(spec, media_kind, column)
    if not p.exists():
        raise SourceError(f"input {spec}: no such file or folder (or use builtin:skimage, hf:NAME)")
    return FileSource(p, media_kind, label=spec)
