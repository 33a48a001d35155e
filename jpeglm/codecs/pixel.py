"""PixelCodec: ImageGPT-style pixels as tokens (the pixel baseline). numpy + Pillow, no torch.

An image is prepared at the codec's small size (32x32 or 64x64: jpeglm.media's centre crop +
antialiased resize), every pixel becomes the index of its nearest palette colour (squared RGB
distance; ties go to the lower index), and the codes are the pixels in row-major order. Decoding
looks the colours up and upsamples to `eval_size` (default 256, the size every system is judged
at) with `upsample`: "nearest" (default: shows exactly what the model wrote, blocky) or
"bilinear" (Pillow, smoother; what ImageGPT-style samples are usually shown with).

The palette (512 colours = 9-bit tokens, as in ImageGPT) is fitted by `jpeglm pixel fit`
(k-means, jpeglm/baselines/pixel_fit.py) and stored *inside* the params, so a dataset or checkpoint
rebuilds the codec from its config alone. Without a fitted palette the codec uses the uniform
8x8x8 RGB cube (also 512 colours).
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from PIL import Image

from jpeglm.codecs.base import Codec, CodecError, DecodeReport
from jpeglm.config import from_dict
from jpeglm.media import open_image, prepare_image

UPSAMPLE = {"nearest": Image.NEAREST, "bilinear": Image.BILINEAR}


class PaletteError(CodecError):
    """A palette file or value that is not a (K, 3) table of 0..255 colours."""


def uniform_palette() -> np.ndarray:
    """The 8x8x8 RGB cube at level centres (16, 48, ..., 240): 512 colours, index = r*64 + g*8 + b."""
    levels = np.arange(8, dtype=np.int64) * 32 + 16
    r, g, b = np.meshgrid(levels, levels, levels, indexing="ij")
    return np.stack([r.ravel(), g.ravel(), b.ravel()], 1).astype(np.uint8)


def check_palette(palette, where: str = "palette") -> np.ndarray:
    """Validate and return a uint8 (K, 3) palette with 2 <= K <= 65536."""
    try:
        a = np.asarray(palette)
    except (TypeError, ValueError) as e:
        raise PaletteError(f"{where}: not an array of colours ({e})") from e
    if a.ndim != 2 or a.shape[1] != 3:
        raise PaletteError(f"{where}: a palette must have shape (K, 3) (RGB rows), got {a.shape}")
    if not 2 <= a.shape[0] <= 65536:
        raise PaletteError(f"{where}: a palette needs 2..65536 colours, got {a.shape[0]}")
    if a.dtype.kind not in "ui" or a.min() < 0 or a.max() > 255:
        raise PaletteError(f"{where}: colours must be integers in 0..255 (got dtype {a.dtype})")
    return a.astype(np.uint8)


def fit_code_grid(codes: np.ndarray, side: int) -> np.ndarray:
    """Truncate or pad a row-major code stream to side*side codes. Padding repeats the last code
    to the end of its (partial) row, then repeats the row above: a cut-off sample shows its last
    line stretched down, not a block of one arbitrary colour. Shared by the VQ codec."""
    n = side * side
    codes = np.asarray(codes, np.int64).reshape(-1)
    if codes.size >= n:
        return codes[:n].copy()
    full = np.empty(n, np.int64)
    k = codes.size
    full[:k] = codes
    row_end = min(-(-k // side) * side, n)  # end of the partial row k falls in
    full[k:row_end] = codes[-1]
    for i in range(row_end, n, side):
        full[i : i + side] = full[i - side : i]
    return full


@dataclass(frozen=True)
class PixelParams:
    size: int = field(default=32, metadata={"help": "side of the pixel grid the model writes (32 or 64 in ImageGPT)"})
    eval_size: int = field(default=256, metadata={"help": "side of decoded images (what every system is judged at)"})
    upsample: str = field(default="nearest", metadata={"help": "decode upsampling: 'nearest' or 'bilinear'"})
    palette: tuple = field(default=(), metadata={"help": "K rows of (r, g, b); empty = the uniform 8x8x8 cube"})

    def __post_init__(self):
        if self.size < 1 or self.eval_size < 1:
            raise ValueError(f"size and eval_size must be positive, got {self.size}, {self.eval_size}")
        if self.upsample not in UPSAMPLE:
            raise ValueError(f"upsample must be one of {sorted(UPSAMPLE)}, got {self.upsample!r}")
        if len(self.palette):
            rows = tuple(tuple(int(c) for c in row) for row in check_palette(np.asarray(self.palette)).tolist())
            object.__setattr__(self, "palette", rows)  # hashable and JSON/YAML friendly


@dataclass(frozen=True)
class PixelOptions:
    """What `jpeglm prep --codec pixel` builds the codec from."""

    palette: str = field(default="", metadata={"help": "pixel: palette file written by `jpeglm pixel fit`", "metavar": "FILE"})


class PixelCodec(Codec):
    """Images <-> (size*size,) int64 palette indices, row-major."""

    name = "pixel"
    params_class = PixelParams
    symbol_kind = "codes"
    description = "palette pixels, ImageGPT-style (the pixel-LM baseline; needs --palette)"
    options_class = PixelOptions

    def __init__(self, params: PixelParams | None = None):
        super().__init__(params)
        self._palette = np.asarray(self.params.palette, np.uint8) if self.params.palette else uniform_palette()
        self._pal_i = self._palette.astype(np.int32)
        self._pal_sq = (self._pal_i**2).sum(1)

    @classmethod
    def from_palette(cls, path: str | os.PathLike, size: int | None = None, eval_size: int = 256, upsample: str = "nearest") -> "PixelCodec":
        """Load a palette written by `jpeglm pixel fit` (.npz with `palette` and `size`) or a bare
        (K, 3) .npy. `size` defaults to the size stored in the .npz (else 32)."""
        p = Path(path)
        if not p.is_file():
            raise PaletteError(f"palette file {p} does not exist")
        try:
            data = np.load(p, allow_pickle=False)
        except (OSError, ValueError) as e:
            raise PaletteError(f"{p}: not a .npy/.npz palette ({e})") from e
        stored_size = None
        if isinstance(data, np.lib.npyio.NpzFile):
            with data:
                if "palette" not in data.files:
                    raise PaletteError(f"{p}: .npz has no 'palette' array (has {data.files})")
                palette = data["palette"]
                stored_size = int(data["size"]) if "size" in data.files else None
        else:
            palette = data
        palette = check_palette(palette, str(p))
        size = size if size is not None else (stored_size or 32)
        return cls(PixelParams(size=size, eval_size=eval_size, upsample=upsample, palette=tuple(map(tuple, palette.tolist()))))

    @classmethod
    def from_options(cls, options: PixelOptions) -> "PixelCodec":
        if not options.palette:
            raise PaletteError("--codec pixel needs --palette FILE (from `jpeglm pixel fit`)")
        return cls.from_palette(options.palette)

    @classmethod
    def from_config(cls, cfg: dict, base_dir=None) -> "PixelCodec":
        """Rebuild from to_config() output; the palette is inside, so base_dir is not needed."""
        return cls(from_dict(PixelParams, cfg.get("params", {})))

    # --- the contract ---------------------------------------------------------------------------
    @property
    def palette(self) -> np.ndarray:
        return self._palette.copy()

    @property
    def image_size(self) -> int:
        """Side of decoded images (`params.size` is the side of the pixel grid the model writes)."""
        return self.params.eval_size

    @property
    def num_codes(self) -> int:
        return len(self._palette)

    def bits_per_symbol(self) -> float:
        return float(np.log2(self.num_codes))

    def symbols_per_item(self) -> int:
        return self.params.size**2

    def prompt_steps(self, rule: str | None = None) -> int:
        """Prompts keep whole rows of pixels."""
        return self.params.size

    def pixels_per_item(self) -> int:
        """Judged at `eval_size`, not at the pixel grid the model writes."""
        return self.params.eval_size**2

    def prepare(self, media) -> np.ndarray:
        """Any image media -> uint8 (size, size, 3) at the codec's pixel size. Unusable images raise
        jpeglm.media.MediaError (the same policy as the JPEG codec: data prep skips them)."""
        if isinstance(media, np.ndarray):
            if media.ndim != 3 or media.shape[2] != 3 or media.dtype != np.uint8:
                raise ValueError(f"expected a uint8 HxWx3 array, got {media.dtype} {media.shape}")
            if media.shape[:2] == (self.params.size, self.params.size):
                return media  # already canonical at the pixel size
            media = Image.fromarray(media, "RGB")
        return np.asarray(prepare_image(open_image(media), self.params.size))

    def quantize(self, pixels: np.ndarray) -> np.ndarray:
        """(..., 3) uint8 -> (...) int64 index of the nearest palette colour."""
        flat = pixels.reshape(-1, 3).astype(np.int32)
        # ||p - c||^2 = ||p||^2 - 2 p.c + ||c||^2; ||p||^2 is the same for every c, so drop it.
        d = self._pal_sq[None, :] - 2 * flat @ self._pal_i.T
        return d.argmin(1).astype(np.int64).reshape(pixels.shape[:-1])

    def encode(self, media) -> np.ndarray:
        return self.quantize(self.prepare(media)).reshape(-1)

    def decode(self, symbols) -> tuple[np.ndarray, DecodeReport]:
        """Never raises: wrong lengths are truncated or padded (rest of a row with its last pixel,
        later rows with the row above), out-of-range codes clamped -> `repaired`; none -> gray `failed`."""
        s, n = self.params.size, self.params.size**2
        gray = np.full((self.params.eval_size, self.params.eval_size, 3), 128, np.uint8)
        try:
            codes = np.asarray(symbols if symbols is not None else [], dtype=np.int64).reshape(-1)
        except (TypeError, ValueError, OverflowError) as e:
            return gray, DecodeReport("failed", f"symbols are not integers ({type(e).__name__})")
        if codes.size == 0:
            return gray, DecodeReport("failed", "no codes")
        reasons, n_in = [], int(codes.size)
        if codes.size != n:
            reasons.append(f"{codes.size} codes for a {s}x{s} image")
            codes = fit_code_grid(codes, s)
        bad = (codes < 0) | (codes >= self.num_codes)
        if bad.any():
            reasons.append(f"{int(bad.sum())} code(s) outside 0..{self.num_codes - 1} clamped")
            codes = np.clip(codes, 0, self.num_codes - 1)
        small = self._palette[codes].reshape(s, s, 3)
        img = self.upsample(small)
        if reasons:
            return img, DecodeReport("repaired", "; ".join(reasons), {"n_codes": n_in})
        return img, DecodeReport("ok")

    def upsample(self, small: np.ndarray) -> np.ndarray:
        e = self.params.eval_size
        if small.shape[:2] == (e, e):
            return small.copy()
        return np.asarray(Image.fromarray(small, "RGB").resize((e, e), UPSAMPLE[self.params.upsample]))

    def prompt(self, symbols, ratio: float, rule: str | None = None) -> np.ndarray:
        """The first round(ratio * size) full rows of pixels."""
        if not 0.0 <= ratio <= 1.0:
            raise ValueError(f"prompt ratio must be in [0, 1], got {ratio}")
        self.prompt_rule(rule)  # one rule; an unknown name is a ValueError
        rows = int(round(ratio * self.params.size))
        return np.asarray(symbols, dtype=np.int64).reshape(-1)[: rows * self.params.size].copy()
