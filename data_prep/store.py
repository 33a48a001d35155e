"""The output folder of a prep: a local (or network-mounted) path, or any fsspec URL (s3://, gs://, ...).

The writer asks this for a handful of operations (write a file atomically, read one, its size,
list a folder, delete) and each maps onto what the file system can guarantee:
- a local path: a temporary file in the same folder, fsync'd, then `os.replace`d over the name
  (atomic on POSIX, also on NFS for one writer); folders are renamed into place the same way;
- an object store (s3, gs, az, memory, hf): one PUT per file, and a PUT is atomic per object
  (readers see the whole object or none; S3 and GCS give read-after-write consistency). There is
  no rename, so nothing is atomic across objects: the writer puts a chunk's data objects first and
  its done marker last, so a marker still means its chunk is complete, and a killed run can leave
  data objects of unfinished chunks, which the resumed run overwrites;
- any other fsspec file system (sftp, smb, ...): a temporary name, then `fs.mv` (as atomic as that
  file system's rename).
fsspec is the library for reaching object stores; this file only decides which of its calls give
an atomic write on each.
"""

from __future__ import annotations

import os
import shutil
import tempfile
import uuid
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from jpeglm.config import atomic_write_bytes, current_umask

_FILE_MODE = 0o666 & ~current_umask()  # mkstemp makes 0600 files; outputs are shared like any other file

# file systems whose single-object writes are atomic (and which have no real rename)
_OBJECT_STORES = frozenset({"s3", "s3a", "gs", "gcs", "az", "abfs", "abfss", "adl", "memory", "hf", "oss", "r2"})


def is_url(spec) -> bool:
    return isinstance(spec, str) and "://" in spec and not spec.startswith("file://")


def url_fs(url: str):
    """(fsspec file system, path) of a URL, with a one-line error when its fsspec backend is missing."""
    import fsspec.core

    try:
        return fsspec.core.url_to_fs(url)
    except ImportError as e:  # fsspec names the package: "Install s3fs to access S3"
        raise OSError(f"{url}: {e}") from None
    except ValueError as e:  # an unknown protocol
        raise OSError(f"{url}: {e}") from None


class Store:
    """A folder to write a prep into; file names are POSIX paths relative to it."""

    def __init__(self, root: str | os.PathLike):
        spec = os.fspath(root)
        if isinstance(spec, str) and spec.startswith("file://"):
            spec = spec[len("file://") :]
        self.spec = spec
        if is_url(spec):
            self.fs, self.root = url_fs(spec)
            self.root = self.root.rstrip("/")
            protocols = {self.fs.protocol} if isinstance(self.fs.protocol, str) else set(self.fs.protocol)
            self.object_store = bool(protocols & _OBJECT_STORES)
            self.local = None
        else:
            self.fs, self.root, self.object_store = None, spec, False
            self.local = Path(spec)

    @classmethod
    def of(cls, root) -> "Store":
        return root if isinstance(root, Store) else cls(root)

    def __str__(self) -> str:
        return self.spec

    def __reduce__(self):  # workers rebuild it from the spelling (credentials come from their environment)
        return (Store, (self.spec,))

    def path(self, rel: str = "") -> str:
        if self.local is not None:
            return str(self.local / rel) if rel else str(self.local)
        return f"{self.root}/{rel}" if rel else self.root

    # --- files ----------------------------------------------------------------------------------
    def write_bytes(self, rel: str, data: bytes, sync: bool = True) -> None:
        """Readers see the old file or the new one, never half of one (see the module docstring);
        `sync=False` skips the fsync (the file may not survive a power cut whole)."""
        if self.local is not None:
            atomic_write_bytes(self.local / rel, data, sync=sync)
        elif self.object_store:
            self.fs.pipe_file(self.path(rel), data)
        else:
            parent, _, name = rel.rpartition("/")
            tmp = f"{parent + '/' if parent else ''}.{name}.{uuid.uuid4().hex[:8]}.tmp"
            self.fs.makedirs(self.path(parent), exist_ok=True)
            self.fs.pipe_file(self.path(tmp), data)
            self.fs.mv(self.path(tmp), self.path(rel))

    def sync(self, rel: str) -> None:
        """fsync a file written with `sync=False` (locally; at a URL a written file is there already)."""
        if self.local is not None:
            fd = os.open(self.local / rel, os.O_RDONLY)
            try:
                os.fsync(fd)
            finally:
                os.close(fd)

    def write_files(self, files: dict[str, bytes]) -> None:
        """`write_bytes` for several files, all on disk when it returns (see `Staged`)."""
        if self.local is None or len(files) < 2:
            for rel, data in files.items():
                self.write_bytes(rel, data)
            return
        self.staged().commit(files)

    def staged(self) -> Staged:
        """Files written bit by bit (`append`), then all put in place at once (`commit`)."""
        return Staged(self)

    def read_bytes(self, rel: str) -> bytes:
        if self.local is not None:
            return (self.local / rel).read_bytes()
        return self.fs.cat_file(self.path(rel))

    def size(self, rel: str) -> int | None:
        """Size in bytes, None when there is no such file."""
        try:
            if self.local is not None:
                p = self.local / rel
                return p.stat().st_size if p.is_file() else None
            return int(self.fs.size(self.path(rel)))
        except (FileNotFoundError, NotADirectoryError):
            return None

    def is_file(self, rel: str) -> bool:
        if self.local is not None:
            return (self.local / rel).is_file()
        return self.fs.isfile(self.path(rel))

    def is_dir(self, rel: str = "") -> bool:
        if self.local is not None:
            return (self.local / rel).is_dir()
        return self.fs.isdir(self.path(rel))

    def exists(self, rel: str = "") -> bool:
        if self.local is not None:
            return (self.local / rel).exists()
        return self.fs.exists(self.path(rel))

    def listdir(self, rel: str = "") -> list[str]:
        """Names in folder `rel` (empty when it does not exist)."""
        if self.local is not None:
            d = self.local / rel
            return sorted(p.name for p in d.iterdir()) if d.is_dir() else []
        try:
            return sorted(p.rstrip("/").rsplit("/", 1)[-1] for p in self.fs.ls(self.path(rel), detail=False))
        except FileNotFoundError:
            return []

    def remove(self, rel: str) -> None:
        """Delete a file or a folder tree; nothing happens when it is not there."""
        if self.local is not None:
            p = self.local / rel
            if p.is_dir() and not p.is_symlink():
                shutil.rmtree(p)
            else:
                p.unlink(missing_ok=True)
        elif self.fs.exists(self.path(rel)):
            self.fs.rm(self.path(rel), recursive=True)

    def makedirs(self, rel: str = "") -> None:
        if self.local is not None:
            (self.local / rel).mkdir(parents=True, exist_ok=True)
        else:
            self.fs.makedirs(self.path(rel), exist_ok=True)


_SYNC_THREADS: list = []


def _sync_threads() -> ThreadPoolExecutor:
    """The threads that fsync for `Staged`, made once per process: a pool per commit started up to six
    threads in the serial tail of every prep (each start waits for the new thread to run: 0.1-2 ms)."""
    if not _SYNC_THREADS:
        _SYNC_THREADS.append(ThreadPoolExecutor(8, thread_name_prefix="jpeglm-fsync"))
    return _SYNC_THREADS[0]


class Staged:
    """Files that grow as their data come (`append`) and are put in place together (`commit`): locally
    each is a temporary file beside its name, so a chunk's shard files can be written while its
    pieces still arrive and only the fsync and the renames are left for the end. The fsyncs run in
    parallel threads: on ext4 six concurrent fsyncs took 1-13 ms where six in a row took 16-39 ms
    (the journal commits them together), and a chunk is six files. While a file grows, every
    SYNC_EVERY bytes appended to it are handed to the disk by a background fdatasync, so that the
    fsync of `commit` (the serial tail of a prep) finds little left to write. At a URL the data wait
    in memory and `commit` writes each file as `Store.write_bytes` does. `abort` (or a failed commit)
    deletes the temporary files: nothing half-written is ever under a real name."""

    SYNC_EVERY = 1 << 18  # commit of a 2.8 MB chunk on a busy disk: 4-7 ms without, ~2 ms with (1 MB: 2-5 ms)

    def __init__(self, store: Store):
        self.store = store
        self._files: dict[str, tuple[int, str]] = {}  # rel -> (fd, temporary path), local only
        self._data: dict[str, list[bytes]] = {}  # rel -> data, at a URL
        self._unsynced: dict[str, int] = {}  # rel -> bytes appended since its last background sync
        self._syncing: dict = {}  # rel -> the Future of its background fdatasync

    def append(self, rel: str, data: bytes) -> None:
        if self.store.local is None:
            self._data.setdefault(rel, []).append(data)
            return
        if rel not in self._files:
            path = self.store.local / rel
            path.parent.mkdir(parents=True, exist_ok=True)
            fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
            self._files[rel] = (fd, tmp)
            os.fchmod(fd, _FILE_MODE)
        fd = self._files[rel][0]
        view = memoryview(data)
        while view:  # os.write may write less than it was given
            view = view[os.write(fd, view) :]
        self._unsynced[rel] = self._unsynced.get(rel, 0) + len(data)
        if self._unsynced[rel] >= self.SYNC_EVERY and (rel not in self._syncing or self._syncing[rel].done()):
            self._syncing[rel] = _sync_threads().submit(os.fdatasync, fd)  # waits for the disk, not for the GIL
            self._unsynced[rel] = 0

    def commit(self, more: dict[str, bytes] | None = None) -> None:
        """Append `more` (name -> data), then put every file in place, all on disk when this returns."""
        try:
            for rel, data in (more or {}).items():
                self.append(rel, data)
            if self.store.local is None:
                for rel, parts in self._data.items():
                    self.store.write_bytes(rel, b"".join(parts))
                self._data.clear()
                return
            fds = [fd for fd, _ in self._files.values()]
            if len(fds) > 1:
                list(_sync_threads().map(os.fsync, fds))  # fsync waits for the disk, not for the GIL
            else:
                for fd in fds:
                    os.fsync(fd)
            for fut in self._syncing.values():  # an error of the disk is raised here
                fut.result()
            for rel, (_, tmp) in self._files.items():
                os.replace(tmp, self.store.local / rel)
        finally:
            self.abort()

    def abort(self) -> None:
        """Close and delete what was not put in place (nothing after a commit)."""
        files, self._files = self._files, {}
        self._data.clear()
        for fut in self._syncing.values():  # their fds are closed below: no sync may still be using one
            fut.exception()  # waits; an error no longer matters
        self._syncing.clear()
        self._unsynced.clear()
        for fd, tmp in files.values():
            os.close(fd)
            if os.path.exists(tmp):
                os.unlink(tmp)
