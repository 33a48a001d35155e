"""The codec contract shared by every representation (JPEG, H.264, VQ codes, pixels).

A codec turns media into symbols and back:
- `encode(media) -> symbols`: bytes for byte codecs (jpeg, avc), a 1-D int array for code codecs.
- `decode(symbols) -> (media, DecodeReport)`: never raises on model output; returns the best
  picture it can (uint8 HxWx3 for images, uint8 TxHxWx3 for videos) and says what happened.
- `prompt(symbols, ratio) -> symbols`: the prefix that shows the top `ratio` of the picture
  (first frames for video).
Parameters are a frozen dataclass; `to_config()` / `codec_from_config()` store and restore them
with every dataset and checkpoint, so a checkpoint always knows how to decode what it writes.
No torch here.
"""

from __future__ import annotations

import dataclasses
import importlib
from dataclasses import dataclass
from typing import Any, ClassVar, Literal

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


class Codec:
    """Base class: subclasses set `name`, `params_class`, `symbol_kind` and implement the contract."""

    name: ClassVar[str]
    params_class: ClassVar[type]
    symbol_kind: ClassVar[Literal["bytes", "codes"]]  # bytes: a `bytes` stream; codes: ints < num_codes
    media_kind: ClassVar[Literal["image", "video"]] = "image"

    def __init__(self, params=None):
        self.params = params if params is not None else self.params_class()

    # --- the contract ---------------------------------------------------------------------
    def encode(self, media) -> Any:  # pragma: no cover - interface
        raise NotImplementedError

    def decode(self, symbols) -> tuple[Any, DecodeReport]:  # pragma: no cover - interface
        raise NotImplementedError

    def prompt(self, symbols, ratio: float) -> Any:  # pragma: no cover - interface
        raise NotImplementedError

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


def codec_class(name: str) -> type[Codec]:
    if name not in CODECS:
        raise ValueError(f"unknown codec {name!r}; known: {', '.join(CODECS)}")
    module, cls = CODECS[name].split(":")
    return getattr(importlib.import_module(module), cls)


def codec_from_config(cfg: dict, base_dir=None) -> Codec:
    """Rebuild a codec from `Codec.to_config()` output (as stored in manifests and checkpoints).

    `base_dir` is the dataset or checkpoint directory the config came from: codecs that carry
    files (the VQ model's weights) store their paths relative to it.
    """
    from jpeglm.config import from_dict

    cls = codec_class(cfg["name"])
    if hasattr(cls, "from_config"):
        return cls.from_config(cfg, base_dir=base_dir)
    return cls(from_dict(cls.params_class, cfg.get("params", {})))
