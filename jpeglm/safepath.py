"""Paths read from files (manifests, configs, checkpoints) stay inside the folder they came from.

A dataset manifest, a `jpeglm.yaml` or a `latest` pointer may be hostile: `"model_dir": "../../x"`,
an absolute path or a symlink inside the dataset would make a load or an export read (and copy)
whatever it names. `inside(base, rel)` is the one check: a relative path without `..`, whose real
location (symlinks resolved) is under the real `base`; anything else raises `UnsafePathError`
naming the path. `copy_file_inside` copies a file found that way without following a symlink out.
No torch.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path, PurePosixPath, PureWindowsPath

from jpeglm.errors import UserError


class UnsafePathError(UserError, ValueError):
    """A path from a file that would leave its own folder."""


def inside(base: str | os.PathLike, rel: str | os.PathLike, what: str = "path") -> Path:
    """`base / rel`, refused unless `rel` is relative, has no `..` and resolves (symlinks followed)
    to a place under the resolved `base`."""
    text = os.fspath(rel)
    if not isinstance(text, str) or not text or "\0" in text:
        raise UnsafePathError(f"{what} {text!r} (in {base}) is not a usable relative path")
    parts = PurePosixPath(text.replace("\\", "/")).parts
    if PurePosixPath(text).is_absolute() or PureWindowsPath(text).is_absolute() or PureWindowsPath(text).drive:
        raise UnsafePathError(f"{what} {text!r} is an absolute path; paths read from {base} must stay inside it")
    if ".." in parts:
        raise UnsafePathError(f"{what} {text!r} leaves its folder {base} (`..`); refused")
    root = Path(base).resolve()
    full = Path(base) / text
    real = full.resolve()
    if real != root and root not in real.parents:
        raise UnsafePathError(f"{what} {text!r} in {base} is a symlink to {real}, outside {base}; refused")
    return full


def check_tree_inside(base: str | os.PathLike, rel: str | os.PathLike = ".", what: str = "folder") -> Path:
    """`inside(base, rel)` for a folder and for everything under it (no symlink in it points out)."""
    top = inside(base, rel, what) if os.fspath(rel) != "." else Path(base)
    root = Path(base).resolve()
    for dirpath, dirnames, filenames in os.walk(top):
        for name in (*dirnames, *filenames):
            real = Path(dirpath, name).resolve()
            if real != root and root not in real.parents:
                raise UnsafePathError(f"{Path(dirpath, name)} is a symlink to {real}, outside {base}; refused")
    return top


def copy_file_inside(base: str | os.PathLike, rel: str, dest: str | os.PathLike) -> None:
    """Copy `base/rel` to `dest` (atomically: temp + rename) after `inside(base, rel)`."""
    src = inside(base, rel, what="file")
    dest = Path(dest)
    tmp = dest.with_name(f".{dest.name}.tmp")
    shutil.copyfile(src, tmp)
    os.replace(tmp, dest)
