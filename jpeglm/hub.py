"""Hugging Face hub ids as checkpoints: `ORG/NAME[@REVISION]` -> a local snapshot folder. No torch.

`resolve_model(spec)` is what `from_pretrained` does with a repo id, through `huggingface_hub`:
a spec that names an existing local path is that path; otherwise an id `ORG/NAME` (optionally
`@REVISION`: a branch, tag or commit) is downloaded with `snapshot_download` into the standard HF
cache, or, offline (`HF_HUB_OFFLINE=1`) or when the hub cannot be reached, found in that cache
(`models--ORG--NAME/snapshots/<commit>`, the commit a `refs/<revision>` file names). A spec that is
neither a local path nor an id, and an id that is neither cached nor downloadable, is a `HubError`
naming it. Only the files a checkpoint needs are fetched (no TF / Flax / ONNX weights).
"""

from __future__ import annotations

import os
import re
from pathlib import Path

from jpeglm.errors import UserError

# ORG/NAME as the hub spells repo ids (letters, digits, - _ .), an optional @REVISION
HUB_ID = re.compile(r"^(?P<repo>[A-Za-z0-9][\w.-]{0,95}/[A-Za-z0-9][\w.-]{0,95})(?:@(?P<rev>[\w./-]{1,200}))?$")
IGNORE = ["*.h5", "*.msgpack", "*.ot", "*.onnx", "*.tflite", "flax_model*", "tf_model*", "rust_model*", "coreml/*"]


class HubError(UserError, ValueError):
    """A model spec that is neither a local folder nor a hub id that can be found."""


def parse_hub_id(spec: str) -> tuple[str, str | None] | None:
    """(repo_id, revision or None) when `spec` has the form of a hub id, else None."""
    m = HUB_ID.match(str(spec))
    if not m or ".." in m.group("repo"):
        return None
    return m.group("repo"), m.group("rev")


def _offline() -> bool:
    from huggingface_hub import constants

    env = os.environ.get("HF_HUB_OFFLINE") or os.environ.get("TRANSFORMERS_OFFLINE") or ""
    return constants.is_offline_mode() or env.strip().lower() in ("1", "true", "yes", "on")


def resolve_model(spec: str | os.PathLike, cache_dir: str | os.PathLike | None = None) -> Path:
    """A local path as it is; a hub id -> its snapshot folder in the HF cache (see module doc)."""
    path = Path(spec)
    if path.exists():
        return path
    parsed = parse_hub_id(str(spec))
    if parsed is None:
        raise HubError(f"{spec}: no such file or directory, and not a hub id (ORG/NAME[@REVISION])")
    repo, rev = parsed
    from huggingface_hub import snapshot_download
    from huggingface_hub.errors import (
        HfHubHTTPError,
        LocalEntryNotFoundError,
        RepositoryNotFoundError,
        RevisionNotFoundError,
    )

    offline = _offline()
    try:
        folder = snapshot_download(repo, revision=rev, cache_dir=cache_dir, local_files_only=offline, ignore_patterns=IGNORE)
    except RevisionNotFoundError as e:
        raise HubError(f"{spec}: the hub repo {repo} has no revision {rev!r}") from e
    except RepositoryNotFoundError as e:
        raise HubError(f"{spec}: no such model on the hub (or it is private / gated: log in with `hf auth login`)") from e
    except LocalEntryNotFoundError as e:
        where = "offline (HF_HUB_OFFLINE=1)" if offline else "the hub could not be reached"
        raise HubError(
            f"{spec}: not a local folder, and not in the Hugging Face cache ({where}); "
            f"download it first (e.g. `hf download {repo}`) or give a local path"
        ) from e
    except (HfHubHTTPError, OSError) as e:
        raise HubError(f"{spec}: could not fetch it from the hub ({type(e).__name__}: {e})") from e
    return Path(folder)


__all__ = ["HubError", "parse_hub_id", "resolve_model"]
