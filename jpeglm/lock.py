"""One writer per output folder: an advisory lock file `OUT/.jpeglm.lock`.

`jpeglm train` and `jpeglm prep` hold it while they write OUT; a second writer is refused with a
message naming the first (its command, pid, host and start time, written into the file). The lock
is an `fcntl.flock` on that file, so the kernel drops it when its holder dies (kill -9, OOM): a lock
file left behind by a dead run is stale, is taken over, and says so. Where the file system has no
flock (some network mounts), the pid and host in the file decide: a live pid on this host, or any
other host, holds it. Parts of one prep (`--part I/N`, several machines by design) share the lock
among themselves and exclude a plain run. No torch.
"""

from __future__ import annotations

import contextlib
import errno
import json
import logging
import os
import socket
import time
from pathlib import Path

from jpeglm.errors import UserError

LOCK_NAME = ".jpeglm.lock"


class LockError(UserError, RuntimeError):
    """The output folder is being written by another run."""


def pid_alive(pid: int) -> bool:
    """Whether process `pid` runs on this host (one we may not signal counts as running)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _describe(holder: dict) -> str:
    when = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(holder.get("started", 0)))
    return f"{holder.get('what', 'another jpeglm run')} (pid {holder.get('pid', '?')} on {holder.get('host', '?')}, since {when})"


class OutputLock:
    """`with OutputLock(out, "jpeglm train"):` holds OUT for this process; LockError if another holds it."""

    def __init__(self, folder: str | os.PathLike, what: str, shared: bool = False, remove_if_unused: bool = False):
        """`remove_if_unused`: a folder this lock created that holds nothing but the lock file at
        release (the run failed before writing) is removed, so a refused run leaves no folder."""
        self.folder = Path(folder)
        self.remove_if_unused = remove_if_unused
        self._created = False
        self.path = self.folder / LOCK_NAME
        self.what = what
        self.shared = shared
        self.stale: dict | None = None  # the holder of a stale lock that was taken over
        self._fd: int | None = None

    def _read(self, fd: int) -> dict:
        try:
            data = os.pread(fd, 65536, 0)
            return json.loads(data) if data.strip() else {}
        except (OSError, ValueError):
            return {}

    def acquire(self) -> OutputLock:
        import fcntl

        if self.folder.exists() and not self.folder.is_dir():
            raise LockError(f"{self.folder} is a file, not a folder")
        self._created = not self.folder.exists()
        self.folder.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            try:
                fcntl.flock(fd, (fcntl.LOCK_SH if self.shared else fcntl.LOCK_EX) | fcntl.LOCK_NB)
                flocked = True
            except BlockingIOError:
                holder = self._read(fd)
                raise LockError(f"{self.folder} is being written by {_describe(holder)}; wait for it to finish, "
                                "or choose another folder") from None
            except OSError as e:
                if e.errno not in (errno.ENOLCK, errno.EOPNOTSUPP, errno.ENOSYS):
                    raise
                flocked = False
            previous = self._read(fd)
            if previous and not self.shared:
                mine = previous.get("host") == socket.gethostname()
                alive = not mine or pid_alive(int(previous.get("pid", 0)))
                if not flocked and alive and previous.get("pid") != os.getpid():
                    raise LockError(f"{self.folder} is being written by {_describe(previous)} (no flock on this file "
                                    f"system: delete {self.path} if that run is gone)")
                self.stale = previous
                if previous.get("pid") != os.getpid():
                    logging.getLogger("jpeglm.lock").warning("%s: taking over the stale lock of %s (that run is gone)",
                                                             self.folder, _describe(previous))
            if not self.shared:
                body = {"what": self.what, "pid": os.getpid(), "host": socket.gethostname(), "started": time.time()}
                os.ftruncate(fd, 0)
                os.pwrite(fd, (json.dumps(body) + "\n").encode(), 0)
        except BaseException:
            os.close(fd)
            raise
        self._fd = fd
        return self

    def release(self) -> None:
        if self._fd is None:
            return
        with contextlib.suppress(OSError):
            if not self.shared:
                os.ftruncate(self._fd, 0)  # an empty file: nobody holds it (never unlinked: flock races)
            if self.remove_if_unused and self._created and os.listdir(self.folder) == [LOCK_NAME]:
                self.path.unlink()  # still held: a run that opened it meanwhile was refused
                self.folder.rmdir()
        os.close(self._fd)  # closing drops the flock
        self._fd = None

    def __enter__(self) -> OutputLock:
        return self.acquire()

    def __exit__(self, *exc) -> None:
        self.release()
