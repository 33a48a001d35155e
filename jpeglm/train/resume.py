"""The trust boundary of `train --resume`: which DeepSpeed state a run will load.

DeepSpeed's loader unpickles its files (`torch.load(weights_only=False)`), so resuming runs code
from OUT/ds: resume only runs you made. What jpeglm checks before DeepSpeed reads anything:
- `ds/latest` must name a plain folder `step-NNNNNNN` directly inside OUT/ds (never `../x`, an
  absolute path, or a symlink out of the run);
- that folder's files and sizes must equal the list the run recorded when it saved it
  (`ds/step-N/jpeglm_files.json`), so a truncated, swapped or extended checkpoint is refused.
Saving writes the DeepSpeed files, then that record, then `ds/latest` (atomically), so `latest`
never names a checkpoint whose record is missing. No torch here.
"""

from __future__ import annotations

import json
import os
import re
from pathlib import Path

from jpeglm.config import atomic_write_text
from jpeglm.errors import UserError
from jpeglm.safepath import inside

LATEST = "latest"
RECORD = "jpeglm_files.json"
_TAG = re.compile(r"step-\d{7,}")


class ResumeStateError(UserError, ValueError):
    """OUT/ds is not a checkpoint this run saved (foreign tag, changed files, missing record)."""


def _files(folder: Path) -> dict[str, int]:
    out = {}
    for dirpath, _dirs, names in os.walk(folder):  # os.walk does not follow symlinked folders
        for name in names:
            p = Path(dirpath, name)
            rel = p.relative_to(folder).as_posix()
            if rel != RECORD:
                out[rel] = -1 if p.is_symlink() else p.stat().st_size
    return dict(sorted(out.items()))


def record_files(ds_dir: str | os.PathLike, tag: str) -> None:
    """After a DeepSpeed save of `tag`: write what it consists of (names and sizes)."""
    folder = Path(ds_dir) / tag
    atomic_write_text(folder / RECORD, json.dumps({"tag": tag, "files": _files(folder)}, indent=1) + "\n")


def write_latest(ds_dir: str | os.PathLike, tag: str) -> None:
    atomic_write_text(Path(ds_dir) / LATEST, tag + "\n")


def checked_tag(ds_dir: str | os.PathLike) -> str:
    """The tag `ds/latest` names, after the checks in the module docstring; ResumeStateError otherwise."""
    ds_dir = Path(ds_dir)
    hint = "resume only runs you made; start a new --out otherwise"
    tag = (ds_dir / LATEST).read_text(errors="replace").strip()
    if not _TAG.fullmatch(tag):
        raise ResumeStateError(f"{ds_dir / LATEST} names {tag!r}, not a checkpoint folder step-NNNNNNN of this run; {hint}")
    folder = inside(ds_dir, tag, what=f"the DeepSpeed checkpoint named by {ds_dir / LATEST}")
    if not folder.is_dir():
        raise ResumeStateError(f"{ds_dir / LATEST} names {tag}, which is not a folder in {ds_dir}; {hint}")
    rec_path = folder / RECORD
    try:
        rec = json.loads(rec_path.read_text())
        recorded = {str(k): int(v) for k, v in rec["files"].items()}
    except (OSError, ValueError, KeyError, TypeError, AttributeError):
        raise ResumeStateError(f"{rec_path}: missing or unreadable, so {folder} is not known to be this run's own "
                               f"checkpoint; {hint}") from None
    found = _files(folder)
    if found != recorded:
        diff = sorted(k for k in set(found) | set(recorded) if found.get(k) != recorded.get(k))
        what = ", ".join(f"{k} ({recorded.get(k, 'absent')} bytes at save, {found.get(k, 'absent')} now)" for k in diff[:3])
        raise ResumeStateError(f"{folder} is not what this run saved: {what}; {hint}")
    return tag
