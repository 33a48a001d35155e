"""Command-line flags generated from config dataclasses, so that a setting is declared once.

Every setting is a dataclass field with `metadata={"help": ...}` (as in HF's `HfArgumentParser`):
the field's name, type, default and help become the flag, the YAML key and the documentation at
once, and they cannot drift apart. `add_fields(parser, cls)` adds one flag per field;
`build(cls, args)` makes the dataclass back from the parsed namespace. Commands that read a YAML
config (`--config`) use `add_config_fields(parser, cls)`: a flag per field of the config and its
sections, each overriding its key of the file (`config_overrides(cls, args)`).

Field metadata read here:
- `help` (required: a flag without help is a defect),
- `flag`: the flag's name when it is not `--field-name` (e.g. `--clip-start` for `start_s`),
- `cli`: False to keep a field out of the command line (YAML / Python only),
- `choices`, `metavar`, `aliases` (more spellings of the flag).
Types: int, float, str (and `X | None`), bool (`--x` / `--no-x`), tuples and lists (`nargs`), and
`Literal[...]` (choices). No torch here.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import types
import typing
from typing import Any, Literal, TypeVar

from jpeglm.config import unwrap_optional

T = TypeVar("T")
UNSET = None  # a flag left at None by the user: the dataclass default applies


class HelpFormatter(argparse.ArgumentDefaultsHelpFormatter):
    """argparse's "(default: X)" after every help text, except where there is no default to show."""

    def _get_help_string(self, action):
        if action.default in (None, "") or action.required:
            return action.help
        return super()._get_help_string(action)


def cli_fields(cls) -> list[dataclasses.Field]:
    """The fields of `cls` that have a flag."""
    return [f for f in dataclasses.fields(cls) if f.metadata.get("cli", True)]


def flag_of(f: dataclasses.Field) -> str:
    return f.metadata.get("flag") or "--" + f.name.replace("_", "-")


def _base_type(tp):
    """(the scalar type, nargs, choices) of a field annotation."""
    origin = typing.get_origin(tp)
    if origin in (typing.Union, types.UnionType):
        args = [a for a in typing.get_args(tp) if a is not type(None)]
        if len(args) == 1:
            return _base_type(args[0])
    if origin is Literal:
        values = typing.get_args(tp)
        return type(values[0]), None, list(values)
    if origin in (tuple, list) or tp in (tuple, list):
        args = [a for a in typing.get_args(tp) if a is not Ellipsis]
        return (args[0] if args else str), "+", None
    return tp, None, None


def add_fields(parser, cls, *, optional: bool = False, skip: tuple[str, ...] = (), help_suffix: str = "") -> list[str]:
    """Add a flag for every CLI field of dataclass `cls` to `parser` (a parser or an argument group).

    optional=True: a flag not given leaves no attribute in the namespace, and `build(...,
    only_given=True)` leaves the dataclass's own default in place (for options that apply to one choice only, such as one
    codec's settings); the field's default is still shown in the help. A flag the parser already
    has (the same setting shared by two dataclasses, e.g. `--frames` of the clip rule and of the
    H.264 codec) is not added twice. Returns the dests of the fields handled.
    """
    hints = typing.get_type_hints(cls)
    dests = []
    for f in cli_fields(cls):
        if f.name in skip:
            continue
        dests.append(f.name)
        if _parser_has(parser, f.name):
            continue
        _add_flag(parser, cls, f, hints[f.name], f.name, flag_of(f), optional, help_suffix)
    return dests


def _default_of(f: dataclasses.Field):
    if f.default is not dataclasses.MISSING:
        return f.default
    return f.default_factory() if f.default_factory is not dataclasses.MISSING else None


def _add_flag(parser, cls, f: dataclasses.Field, hint, dest: str, flag: str, optional: bool, help_suffix: str) -> None:
    text = f.metadata.get("help")
    if not text:
        raise TypeError(f"{cls.__name__}.{f.name} has no help text (metadata={{'help': ...}})")
    default = _default_of(f)
    tp, nargs, choices = _base_type(hint)
    choices = f.metadata.get("choices", choices)
    kwargs: dict[str, Any] = {"dest": dest, "help": text + help_suffix}
    if optional:  # absent from the namespace unless given: the dataclass's own default applies
        kwargs["help"] += f" (default: {_shown(default)})" if default not in (None, "") else ""
        kwargs["default"] = argparse.SUPPRESS
    else:
        kwargs["default"] = default
    if tp is bool:
        kwargs["action"] = argparse.BooleanOptionalAction
    else:
        kwargs["type"] = tp if tp in (int, float, str) else str
        if nargs:
            kwargs["nargs"] = nargs
        if choices:
            kwargs["choices"] = choices
        if not choices:
            kwargs["metavar"] = f.metadata.get("metavar", flag.lstrip("-").rpartition(".")[2].upper().replace("-", "_"))
    parser.add_argument(flag, *f.metadata.get("aliases", ()), **kwargs)


def _shown(default) -> str:
    return " ".join(map(str, default)) if isinstance(default, (tuple, list)) else str(default)


# --- commands that read a YAML config ---------------------------------------------------------------
def config_fields(cls, prefix: str = ""):
    """(dotted path, field, annotation, section help) of every CLI field of config dataclass `cls`,
    recursing into fields whose type is a dataclass (the config's sections, e.g. `optim.lr`)."""
    hints = typing.get_type_hints(cls)
    for f in cli_fields(cls):
        tp = unwrap_optional(hints[f.name])
        if dataclasses.is_dataclass(tp):
            for path, sub, hint, _ in config_fields(tp, prefix + f.name + "."):
                yield path, sub, hint, f.metadata.get("help", "")
        else:
            yield prefix + f.name, f, hints[f.name], None


def add_config_fields(parser, cls, *, flat: tuple[str, ...] = (), skip: tuple[str, ...] = ()) -> None:
    """One flag per field of config dataclass `cls`, for commands that also read a `--config` YAML.

    The flag of a section's field is the field's dotted YAML path (`--optim.lr`, `--data.seq-len`);
    top-level fields and the fields of the sections named in `flat` drop the prefix (`--max-steps`
    for `train.max_steps` of a VQ config). A flag that would clash with one the parser already has
    is a TypeError at parser build time (fix the names, never shadow a flag). Flags not given are
    absent from the namespace; `config_overrides` turns the given ones into dotted overrides
    applied after the YAML file. `skip` names dotted paths that get no flag. The dest of every flag
    is its dotted path.
    """
    note = "each flag overrides its key of the --config file; a default shown is the value when neither sets it"
    groups: dict[str, Any] = {}
    for path, f, hint, section_help in config_fields(cls):
        if path in skip:
            continue
        section = path.rpartition(".")[0]
        name = f.name if (not section or section in flat) else path
        flag = f.metadata.get("flag") or "--" + name.replace("_", "-")
        clash = {flag, *f.metadata.get("aliases", ())} & _option_strings(parser)
        if clash:
            raise TypeError(f"flag {', '.join(sorted(clash))} of config field {path} clashes with a flag the command already has")
        if section not in groups:  # the first group says how flags and file combine
            text = "; ".join(t for t in (section_help, "" if groups else note) if t)
            groups[section] = parser.add_argument_group(f"config section {section}" if section else "config", text or None)
        _add_flag(groups[section], cls, f, hint, path, flag, True, f" [config key {path}]" if name != path else "")


def config_overrides(cls, args: argparse.Namespace) -> list[str]:
    """`path=value` overrides (for jpeglm.config.load_config) of the config flags given in `args`.
    Values are written as JSON, a subset of YAML, so a string stays a string."""
    given = vars(args)
    out = []
    for path, _, _, _ in config_fields(cls):
        value = given.get(path, UNSET)
        if value is UNSET:
            continue
        out.append(f"{path}={json.dumps(list(value) if isinstance(value, tuple) else value)}")
    return out


def _option_strings(parser) -> set[str]:
    container = getattr(parser, "_container", None) or parser
    return {s for a in container._actions for s in a.option_strings}


def _parser_has(parser, dest: str) -> bool:
    container = getattr(parser, "_container", None)  # an argument group: look at its parser
    actions = (container or parser)._actions
    return any(a.dest == dest for a in actions)


def build(cls: type[T], args: argparse.Namespace, only_given: bool = False, **extra) -> T:
    """The dataclass `cls` from parsed flags (+ `extra` fields). only_given=True skips flags left
    at None (see `add_fields(optional=True)`), so the dataclass defaults apply to them."""
    kwargs = {}
    for f in cli_fields(cls):
        if hasattr(args, f.name):
            value = getattr(args, f.name)
            if only_given and value is UNSET:
                continue
            kwargs[f.name] = tuple(value) if isinstance(value, list) and _is_tuple(cls, f.name) else value
    kwargs.update(extra)
    return cls(**kwargs)


def given(cls, args: argparse.Namespace) -> list[str]:
    """The flags of `cls`'s fields that were given (not None) on the command line."""
    return [flag_of(f) for f in cli_fields(cls) if getattr(args, f.name, UNSET) is not UNSET]


def _is_tuple(cls, name: str) -> bool:
    tp = typing.get_type_hints(cls)[name]
    return tp is tuple or typing.get_origin(tp) is tuple


__all__ = ["add_config_fields", "add_fields", "build", "cli_fields", "config_fields", "config_overrides", "flag_of", "given"]
