"""Training state (optimizers, RNG states, counters) saved without pickle: one safetensors file.

`torch.save`/`torch.load(weights_only=False)` unpickle, so a crafted state file runs code on
`--resume`. Here the tensors go into a safetensors file and everything else (nested dicts, lists,
tuples, numbers, strings, None, dict keys of any of those types) into a JSON text kept in that
file's metadata, so one file is written atomically and loading it never runs code.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

from jpeglm.errors import UserError

META_KEY = "jpeglm_state"


class StateFileError(UserError, ValueError):
    """A state file that is not one this module wrote (unreadable, truncated, or malformed)."""


def _pack(obj, tensors: dict):
    import torch

    if isinstance(obj, torch.Tensor):
        name = f"t{len(tensors)}"
        tensors[name] = obj.detach().cpu().contiguous().clone()
        return {"__tensor__": name}
    if isinstance(obj, dict):
        if all(isinstance(k, str) and not k.startswith("__") for k in obj):
            return {k: _pack(v, tensors) for k, v in obj.items()}
        return {"__items__": [[_pack(k, tensors), _pack(v, tensors)] for k, v in obj.items()]}
    if isinstance(obj, tuple):
        return {"__tuple__": [_pack(v, tensors) for v in obj]}
    if isinstance(obj, list):
        return [_pack(v, tensors) for v in obj]
    if obj is None or isinstance(obj, (bool, int, float, str)):
        return obj
    raise TypeError(f"cannot save a {type(obj).__name__} in a state file")


def _unpack(obj, tensors: dict):
    if isinstance(obj, list):
        return [_unpack(v, tensors) for v in obj]
    if isinstance(obj, dict):
        if "__tensor__" in obj:
            return tensors[obj["__tensor__"]]
        if "__tuple__" in obj:
            return tuple(_unpack(v, tensors) for v in obj["__tuple__"])
        if "__items__" in obj:
            return {_unpack(k, tensors): _unpack(v, tensors) for k, v in obj["__items__"]}
        return {k: _unpack(v, tensors) for k, v in obj.items()}
    return obj


def save_state(path: str | os.PathLike, state) -> None:
    """Write `state` (nested containers of tensors and plain values) to `path`, atomically."""
    from safetensors.torch import save_file

    path = Path(path)
    tensors: dict = {}
    body = json.dumps(_pack(state, tensors))
    tmp = path.with_name(f".{path.name}.tmp")
    save_file(tensors, str(tmp), metadata={META_KEY: body})
    os.replace(tmp, path)


def load_state(path: str | os.PathLike):
    """Read a file written by `save_state`; raises StateFileError naming it when it is not one."""
    from safetensors import safe_open

    path = Path(path)
    try:
        with safe_open(str(path), framework="pt", device="cpu") as f:
            meta = f.metadata() or {}
            tensors = {k: f.get_tensor(k) for k in f.keys()}  # noqa: SIM118 - safe_open is not a dict
        if META_KEY not in meta:
            raise StateFileError(f"{path}: not a jpeglm state file (no {META_KEY} metadata)")
        return _unpack(json.loads(meta[META_KEY]), tensors)
    except StateFileError:
        raise
    except Exception as e:  # safetensors raises its own SafetensorError, OSError, ValueError...
        raise StateFileError(f"{path}: unreadable state file ({type(e).__name__}: {e}); "
                             "it is cut short or not one jpeglm wrote") from e
