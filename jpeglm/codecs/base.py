"""The codec contract shared by every representation (JPEG, H.264, VQ codes, pixels).

A codec turns media into symbols and back:
- `encode(media) -> symbols`: bytes for byte codecs (jpeg, avc), a 1-D int array for code codecs.
- `decode(symbols) -> (media, DecodeReport)`: never raises on model output; returns the best
  picture it can (uint8 HxWx3 for images, uint8 TxHxWx3 for videos) and says what happened.
- `prompt(symbols, ratio) -> symbols`: the prefix that shows the top `ratio` of the picture
  (first frames for video), in `prompt_steps()` equal steps.
and it answers everything else that is representation-specific, so that prep, training, sampling
and eval never ask which codec they hold: the file a sample is written as (`file_suffix`,
`to_file`, `check_file`), what an unconditional sample starts from (`start_symbols`), how many
symbols make one item (`symbols_per_item`), the pixels it is judged on (`pixels_per_item`), its
size in bytes (`stream_bytes`), the files it carries (`bundle`), the settings `jpeglm prep` builds
it from (`options_type`, `from_options`) and its grammar, a constraint over bytes or none.
Parameters are a frozen dataclass; `to_config()` / `codec_from_config()` store and restore them
with every dataset and checkpoint, so a checkpoint always knows how to decode what it writes.
New codecs: one file in jpeglm/codecs/ and `register_codec(name, "module:Class")` (or an entry
point in the group `jpeglm.codecs`). No torch here.
"""

from __future__ import annotations

import dataclasses
import functools
import importlib
import io
from dataclasses import dataclass
from typing import Any, ClassVar, Literal

import numpy as np

from jpeglm.errors import UserError

Status = Literal["ok", "repaired", "failed"]


@dataclass(frozen=True)
class DecodeReport:
    """What decoding a symbol stream gave: `ok` (as written), `repaired` (fixed up, e.g. a
    truncated stream padded to its end), or `failed` (nothing usable; the media is a blank
    placeholder of the right shape). `reason` says why when not ok."""

    status: Status
    reason: str = ""
    details: dict = dataclasses.field(default_factory=dict)

    @property
    def ok(self) -> bool:
        return self.status == "ok"

    def to_dict(self) -> dict:
        return {"status": self.status, "reason": self.reason, **({"details": self.details} if self.details else {})}


class CodecError(UserError, ValueError):
    """A clear, one-line error a codec raises for input it cannot use (unreadable media, a missing or
    broken codec file). Callers show the message as it is and skip the item; any other exception
    from a codec is a bug and is reported with its type."""


class Codec:
    """Base class: subclasses set the class attributes below and implement encode / decode /
    prompt / prepare; everything else has a default that fits most codecs.

    Nothing outside jpeglm/codecs/ asks which codec it holds: prep, training, sampling and eval use
    only this contract, so a new representation is one new file here (plus `register_codec`).
    """

    name: ClassVar[str]
    params_class: ClassVar[type]
    symbol_kind: ClassVar[Literal["bytes", "codes"]]  # bytes: a `bytes` stream; codes: ints < num_codes
    media_kind: ClassVar[Literal["image", "video"]] = "image"
    file_suffix: ClassVar[str] = ".png"  # the file `to_file` writes for a sample
    # Bytes after which a stream may hold nothing more (JPEG's EOI): unconstrained sampling of a
    # byte codec stops a row there. None: no such marker (the stream ends with EOS).
    stream_end: ClassVar[bytes | None] = None
    description: ClassVar[str] = ""  # one line for `jpeglm prep --help`
    # The cuts `prompt` knows (`--prompt-cut`); the first is the default.
    prompt_rules: ClassVar[tuple[str, ...]] = ("rows",)
    # The settings `jpeglm prep` builds the codec from (a dataclass whose fields become flags; see
    # jpeglm/cli/flags.py). None: the params dataclass itself. Fields may be paths to files the
    # codec loads (a VQ model, a palette); `from_options` turns them into a codec.
    options_class: ClassVar[type | None] = None

    def __init__(self, params=None):
        self.params = params if params is not None else self.params_class()

    # --- construction -----------------------------------------------------------------------
    @classmethod
    def options_type(cls) -> type:
        return cls.options_class or cls.params_class

    @classmethod
    def from_options(cls, options) -> "Codec":
        """The codec from its `options_type()` dataclass (what `jpeglm prep` flags give)."""
        return cls(options)

    @classmethod
    def from_config(cls, cfg: dict, base_dir=None) -> "Codec":
        """Rebuild from `to_config()` output. Codecs whose params name files (relative to the dataset
        or checkpoint dir `base_dir`) override this to find them."""
        from jpeglm.config import from_dict

        return cls(from_dict(cls.params_class, cfg.get("params", {})))

    def bundle(self, dest_dir) -> "Codec":
        """Copy the files this codec needs (e.g. a VQ model's weights) into `dest_dir` and return a
        codec whose `to_config()` names those copies relative to it, so that a dataset or a checkpoint
        is self-contained. Codecs without files return themselves."""
        return self

    # --- the contract ---------------------------------------------------------------------
    def prepare(self, media) -> Any:  # pragma: no cover - interface
        """Any media this codec takes -> the canonical picture (or clip) it encodes."""
        raise NotImplementedError

    def encode(self, media) -> Any:  # pragma: no cover - interface
        raise NotImplementedError

    def decode(self, symbols) -> tuple[Any, DecodeReport]:  # pragma: no cover - interface
        raise NotImplementedError

    def prompt(self, symbols, ratio: float, rule: str | None = None) -> Any:  # pragma: no cover - interface
        """The prefix of `symbols` that shows the top `ratio` of the picture (first frames of a clip),
        cut by `rule` (one of `prompt_rules`; None: the first, the codec's default)."""
        raise NotImplementedError

    def prompt_steps(self, rule: str | None = None) -> int:
        """How many equal steps `prompt` cuts a picture into under `rule` (MCU rows or half rows, rows
        of codes, frames): `prompt(symbols, k / prompt_steps(rule), rule)` shows exactly k of them."""
        raise NotImplementedError

    def prompt_rule(self, rule: str | None = None) -> str:
        """The name of the cut `rule` selects (None: the default, `prompt_rules[0]`); an unknown
        name is a ValueError that lists the known ones."""
        if rule is None:
            return self.prompt_rules[0]
        if rule not in self.prompt_rules:
            raise ValueError(f"the {self.name} codec cuts prompts by {', '.join(self.prompt_rules)}, not {rule!r}")
        return rule

    def prompt_region(self, ratio: float, rule: str | None = None) -> dict:
        """What a prompt cut at `ratio` shows, for manifests and reports: the rule, the steps shown
        (`round(ratio * steps)`, the rows-of-codes rounding; codecs that round otherwise override)
        and the share of the picture they cover."""
        rule = self.prompt_rule(rule)
        # codecs with one rule may define prompt_steps() without the argument
        total = self.prompt_steps() if len(self.prompt_rules) == 1 else self.prompt_steps(rule)
        shown = int(round(ratio * total))
        return {"rule": rule, "ratio": ratio, "steps": shown, "of_steps": total, "fraction": shown / total}

    def prompt_mask(self, ratio: float, shape: tuple[int, ...], rule: str | None = None) -> np.ndarray:
        """Where a prompt cut at `ratio` shows the media, as a bool array of `shape` ((H, W) of a
        picture, (T, H, W) of a clip, at any size): what strips and the app shade, so they show
        exactly the prompt. Default: the first `steps / of_steps` of the first axis (rows of codes,
        frames), from `prompt_region`; codecs whose cut ends inside a row override."""
        region = self.prompt_region(ratio, rule)
        mask = np.zeros(tuple(shape), bool)
        mask[: round(shape[0] * region["steps"] / region["of_steps"])] = True
        return mask

    def start_symbols(self) -> Any:
        """The symbols every item begins with, fixed by the settings alone (a JPEG header); a
        constrained unconditional sample starts from them. Default: none."""
        return b"" if self.symbol_kind == "bytes" else np.zeros(0, np.int64)

    def grammar(self) -> Any:
        """The byte grammar constrained sampling keeps this codec's streams in (the protocol of
        jpeglm/codecs/grammar.py; a fresh one per call, its caches its own), or None: no grammar
        (code codecs are held to their code tokens instead)."""
        return None

    def structure_grammar(self) -> Any:
        """A cheap grammar run beside `grammar()` that bounds the shortest completion for end
        steering (`n_rst` restart intervals, states with `intervals_closed`), or None."""
        return None

    def symbols_per_item(self) -> int | None:
        """The number of symbols in one whole item when it is fixed (a grid of codes), else None
        (byte streams vary). A sampler stops after that many."""
        return None

    def pixels_per_item(self) -> int:
        """Pixels of one item at the size it is judged at (H*W, T*H*W for a clip): the unit of
        bits per pixel."""
        raise NotImplementedError

    def to_file(self, symbols, media=None) -> bytes:
        """The bytes of the file a user opens for these symbols (`file_suffix`): by default a PNG of
        the decoded picture (`media`, when the caller has it already, saves decoding again)."""
        from PIL import Image

        if media is None:
            media = self.decode(symbols)[0]
        buf = io.BytesIO()
        Image.fromarray(np.asarray(media, dtype=np.uint8)).save(buf, "PNG")
        return buf.getvalue()

    def repair(self, symbols) -> tuple[Any, list[str]]:
        """The symbols `to_file` writes for `symbols` and what it fixed to get them (JPEG: cut after
        the first EOI, EOI appended; a manifest records the list). Default: nothing to fix."""
        return symbols, []

    def check_file(self, data: bytes) -> dict:
        """Facts about a written file for a sample manifest (e.g. whether a standard decoder opens it
        strictly). Default: none."""
        return {}

    def stream_bytes(self, symbols) -> float:
        """Size of a symbol stream in bytes: its length for byte codecs, n * bits / 8 for codes (the
        unit of bits per byte)."""
        if self.symbol_kind == "bytes":
            return float(len(symbols))
        return len(symbols) * float(self.bits_per_symbol()) / 8.0

    def versions(self) -> dict:
        """Versions of the libraries the bytes depend on, for manifests (e.g. the H.264 encoder)."""
        return {}

    # --- shared helpers ---------------------------------------------------------------------
    @property
    def num_codes(self) -> int:
        """Alphabet size of the symbols: 256 for byte codecs, the codebook/palette size otherwise."""
        return 256

    def bits_per_symbol(self) -> float:
        """Information capacity of one symbol, so sizes compare across codecs (8 for bytes)."""
        return 8.0

    def to_config(self) -> dict:
        return {"name": self.name, "params": dataclasses.asdict(self.params)}

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.params!r})"


# name -> "module:Class"; imported lazily so that e.g. the JPEG path never imports torch (vq does).
CODECS = {
    "jpeg": "jpeglm.codecs.jpeg:JpegCodec",
    "avc": "jpeglm.codecs.avc:AvcCodec",
    "vq": "jpeglm.codecs.vq:VqCodec",
    "pixel": "jpeglm.codecs.pixel:PixelCodec",
}
# The codec of a released JPEG-LM checkpoint (an HF Llama + tokenizer with no jpeglm.yaml).
RELEASED_FORMAT_CODEC = {"name": "jpeg", "params": {}}
ENTRY_POINT_GROUP = "jpeglm.codecs"  # other packages add codecs under this entry-point group


def register_codec(name: str, target: str | type) -> None:
    """Make a codec known by `name`: a class, or "module:Class" (imported when first used).
    Packages can also declare `[project.entry-points."jpeglm.codecs"] NAME = "module:Class"`."""
    if not name or not isinstance(name, str):
        raise ValueError("a codec needs a non-empty name")
    CODECS[name] = target


def codec_names() -> list[str]:
    """Every known codec: the built-in ones, registered ones and installed plugins."""
    _load_entry_points()
    return list(CODECS)


@functools.cache
def _load_entry_points() -> None:
    from importlib.metadata import entry_points

    for ep in entry_points(group=ENTRY_POINT_GROUP):
        CODECS.setdefault(ep.name, ep.value)


def codec_class(name: str) -> type[Codec]:
    if name not in CODECS:
        _load_entry_points()
    if name not in CODECS:
        raise ValueError(f"unknown codec {name!r}; known: {', '.join(CODECS)}")
    target = CODECS[name]
    if isinstance(target, str):
        module, cls = target.split(":")
        target = getattr(importlib.import_module(module), cls)
    return target


def codec_from_config(cfg: dict, base_dir=None) -> Codec:
    """Rebuild a codec from `Codec.to_config()` output (as stored in manifests and checkpoints).

    `base_dir` is the dataset or checkpoint directory the config came from: codecs that carry
    files (the VQ model's weights) store their paths relative to it.
    """
    return codec_class(cfg["name"]).from_config(cfg, base_dir=base_dir)
