"""Typed configs: dataclasses loaded from YAML, unknown keys rejected, dotted CLI overrides.

Every config in the project is a dataclass whose fields carry a docstring-like `help` in
`field(metadata={"help": ...})` and whose checks sit in `__post_init__`. This module turns YAML
and `a.b=value` overrides into those dataclasses and back, with no torch.
"""

from __future__ import annotations

import dataclasses
import importlib.resources
import os
import tempfile
import types
import typing
from pathlib import Path
from typing import Any, TypeVar

import yaml

from jpeglm.errors import UserError

T = TypeVar("T")


class ConfigError(UserError, ValueError):
    """A config file or override that does not fit its dataclass."""


def _field_types(cls) -> dict[str, Any]:
    hints = typing.get_type_hints(cls)
    return {f.name: hints[f.name] for f in dataclasses.fields(cls)}


def unwrap_optional(tp):
    """`X | None` (or Optional[X]) -> X; any other type as it is."""
    origin = typing.get_origin(tp)
    if origin in (typing.Union, types.UnionType):
        args = [a for a in typing.get_args(tp) if a is not type(None)]
        if len(args) == 1:
            return args[0]
    return tp


def from_dict(cls: type[T], data: dict | None, where: str = "") -> T:
    """Build dataclass `cls` from a plain dict, recursing into nested dataclasses.

    Unknown keys raise ConfigError naming the full dotted path, so a typo never goes silent.
    """
    data = dict(data or {})
    types_ = _field_types(cls)
    unknown = sorted(set(data) - set(types_))
    if unknown:
        known = ", ".join(sorted(types_))
        raise ConfigError(f"unknown key(s) {', '.join(where + k for k in unknown)} for {cls.__name__} (known: {known})")
    kwargs = {}
    for name, value in data.items():
        tp = unwrap_optional(types_[name])
        if dataclasses.is_dataclass(tp) and isinstance(value, dict):
            value = from_dict(tp, value, where=f"{where}{name}.")
        elif tp is float and isinstance(value, (int, str)) and not isinstance(value, bool):
            # YAML 1.1 reads `1e-3` (no dot) as a string: accept any number spelling for a float field.
            try:
                value = float(value)
            except ValueError:
                raise ConfigError(f"{where}{name}: expected a number, got {value!r}") from None
        elif tp is tuple or typing.get_origin(tp) is tuple:
            value = tuple(value)
        kwargs[name] = value
    try:
        return cls(**kwargs)
    except (TypeError, ValueError) as e:
        raise ConfigError(f"{where or cls.__name__}: {e}") from e


def to_dict(cfg) -> dict:
    """The plain-dict form of a config dataclass (tuples become lists so YAML stays readable)."""

    def clean(v):
        if isinstance(v, tuple):
            return [clean(x) for x in v]
        if isinstance(v, list):
            return [clean(x) for x in v]
        if isinstance(v, dict):
            return {k: clean(x) for k, x in v.items()}
        return v

    return clean(dataclasses.asdict(cfg))


def apply_overrides(data: dict, overrides: list[str] | None) -> dict:
    """Apply `a.b.c=value` overrides to a nested dict; values are parsed as YAML scalars."""
    data = dict(data)
    for item in overrides or []:
        if "=" not in item:
            raise ConfigError(f"override {item!r} is not of the form key.path=value")
        key, raw = item.split("=", 1)
        value = yaml.safe_load(raw) if raw != "" else ""
        node = data
        parts = key.strip().split(".")
        for p in parts[:-1]:
            child = node.get(p)
            child = dict(child) if isinstance(child, dict) else {}
            node[p] = child
            node = child
        node[parts[-1]] = value
    return data


def load_yaml(path: str | os.PathLike) -> dict:
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"config file {path} does not exist")
    with open(path) as f:
        data = yaml.safe_load(f) or {}
    if not isinstance(data, dict):
        raise ConfigError(f"config file {path} must hold a mapping at the top level")
    return data


def load_config(cls: type[T], path: str | os.PathLike | None = None, overrides: list[str] | None = None) -> T:
    """YAML file (optional) + dotted overrides -> dataclass `cls`, with unknown keys rejected."""
    data = load_yaml(path) if path else {}
    return from_dict(cls, apply_overrides(data, overrides))


# --- named configs ---------------------------------------------------------------------------------
# The configs/ folder of the repository is installed as the package `jpeglm.configs`, so a name
# resolves the same from a checkout, an editable install and a wheel, whatever the working folder.
CONFIG_KINDS = {"model": (".yaml", ".yml"), "train": (".yaml", ".yml"), "deepspeed": (".json",),
                "vq": (".yaml", ".yml"), "eval": (".yaml", ".yml")}


def config_root() -> Path:
    """The folder of the shipped named configs (model/, train/, deepspeed/, vq/, eval/)."""
    return Path(str(importlib.resources.files("jpeglm.configs")))


def named_configs(kind: str) -> list[str]:
    """The names of the shipped configs of one kind, sorted."""
    folder = config_root() / kind
    return sorted(f.stem for f in folder.glob("*") if f.suffix in CONFIG_KINDS[kind])


def resolve_config(value: str | os.PathLike, kind: str, base: Path | None = None) -> Path:
    """A config reference -> a file: an existing path (absolute, or relative to the working folder or
    to `base`, the folder of the config that names it), else a shipped name of that kind
    (`tiny-cpu`, `zero2`, ...). A ConfigError lists the names when nothing matches."""
    if kind not in CONFIG_KINDS:
        raise ValueError(f"unknown config kind {kind!r}; known: {', '.join(CONFIG_KINDS)}")
    p = Path(value)
    candidates = [p] + ([base / p] if base is not None and not p.is_absolute() else [])
    candidates += [config_root() / kind / f"{value}{s}" for s in CONFIG_KINDS[kind]]
    for c in candidates:
        if c.is_file():
            return c
    raise ConfigError(f"{kind} config {str(value)!r} not found (a file, or one of: {', '.join(named_configs(kind))})")


def current_umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


# mkstemp makes 0600 files; outputs are meant to be shared like any other file the user writes.
_FILE_MODE = 0o666 & ~current_umask()


def atomic_write_bytes(path: str | os.PathLike, data: bytes, sync: bool = True) -> None:
    """Write a file so that readers see the old file or the new one, never half of one: a temporary
    file in the same folder, fsync'd (unless `sync=False`), then renamed over `path`."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            os.fchmod(f.fileno(), _FILE_MODE)
            f.write(data)
            if sync:
                f.flush()
                os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def atomic_write_text(path: str | os.PathLike, text: str) -> None:
    """`atomic_write_bytes` for text (UTF-8)."""
    atomic_write_bytes(path, text.encode("utf-8"))


def save_config(cfg, path: str | os.PathLike) -> None:
    """Save the resolved config beside an output, atomically."""
    atomic_write_text(path, yaml.safe_dump(to_dict(cfg), sort_keys=False))
