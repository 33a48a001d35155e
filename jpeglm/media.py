"""Opening any image Pillow reads and turning it into the canonical RGB square. No torch.

Two steps, used by every image codec and by data prep:
- `open_image(src)`: file path, bytes, file object or PIL image -> an RGB `PIL.Image` with EXIF
  orientation applied, transparency composited on white, 16-bit and float samples scaled to 8 bit,
  the first frame of animated files. Anything unusable raises `MediaError` (a `ValueError`) with a
  one-line reason that data prep writes into its manifest's `skipped` list.
- `prepare_image(img, size)`: centre square crop + antialiased bilinear resize to `size x size`.

Policy (say it once, here):
- A picture whose shorter side is below `min_side` pixels (default 64) is rejected: upscaling
  thumbnails to 256 would teach the model blur, not photos.
- A picture with more than `max_pixels` pixels (default 64 Mpx, below Pillow's own 89 Mpx warning
  level) is rejected as a possible decompression bomb *before* its pixels are decoded.
"""

from __future__ import annotations

import io
import os
from pathlib import Path
from typing import BinaryIO, Union

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from jpeglm.errors import UserError

DEFAULT_MIN_SIDE = 64
DEFAULT_MAX_PIXELS = 64_000_000  # under Pillow's MAX_IMAGE_PIXELS (89 Mpx), so our check fires first
DEFAULT_MAX_FILE_BYTES = 256 << 20  # a huge (or sparse) file is refused before it is read whole

ImageSource = Union[str, os.PathLike, bytes, bytearray, memoryview, BinaryIO, Image.Image]


class MediaError(UserError, ValueError):
    """An input that is not a usable image (empty, truncated, not an image, a bomb, too small)."""


def _describe(src) -> str:
    if isinstance(src, (str, os.PathLike)):
        return str(src)
    if isinstance(src, (bytes, bytearray, memoryview)):
        return f"<{len(src)} bytes>"
    return type(src).__name__


def _to_8bit_gray(im: Image.Image) -> Image.Image:
    """Modes I;16*, I and F hold more than 8 bits; Pillow's convert('L'/'RGB') clips them at 255
    (a 16-bit photo becomes nearly white), so scale by the value range the mode implies."""
    a = np.asarray(im)
    if a.dtype.kind == "f":
        a = np.nan_to_num(a.astype(np.float64), nan=0.0, posinf=0.0, neginf=0.0)
        hi = float(a.max()) if a.size else 0.0
        lo = float(a.min()) if a.size else 0.0
        if lo >= 0.0 and hi <= 1.0:  # normalised floats
            a = a * 255.0
        elif lo < 0.0 or hi > 255.0:  # arbitrary range: stretch min..max
            a = (a - lo) * (255.0 / max(hi - lo, 1e-12))
    else:
        a = a.astype(np.int64)
        hi = int(a.max()) if a.size else 0
        lo = int(a.min()) if a.size else 0
        if im.mode.startswith("I;16") or (lo >= 0 and 255 < hi <= 65535):
            a = a / 257.0  # 0..65535 -> 0..255 exactly at both ends
        elif lo < 0 or hi > 65535:
            a = (a - lo) * (255.0 / max(hi - lo, 1))
        # else: 32-bit ints that already hold 0..255 stay as they are
    return Image.fromarray(np.clip(np.rint(a), 0, 255).astype(np.uint8), "L")


def to_rgb(im: Image.Image) -> Image.Image:
    """Any Pillow mode -> RGB. Transparency (alpha channel, palette or `transparency` info) is
    composited on white so transparent pixels do not turn black."""
    if im.mode.startswith("I;16") or im.mode in ("I", "F"):
        return _to_8bit_gray(im).convert("RGB")
    has_alpha = im.mode in ("RGBA", "LA", "PA", "La", "RGBa") or "transparency" in im.info
    if has_alpha:
        rgba = im.convert("RGBA")
        white = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        return Image.alpha_composite(white, rgba).convert("RGB")
    if im.mode == "RGB":
        return im
    return im.convert("RGB")


def check_file_size(src, limit: int = DEFAULT_MAX_FILE_BYTES) -> None:
    """Refuse a file (or dataset cell, or a size in bytes known from a header) over `limit` bytes with a
    MediaError, before anything reads it whole: the one size check of every image loader (prep, vq
    train, pixel fit; data_prep.sources.fetch_image)."""
    if isinstance(src, int):
        size = src
    else:
        size = os.stat(src).st_size if isinstance(src, (str, os.PathLike)) else len(src) if isinstance(src, (bytes, bytearray)) else 0
    if size > limit:
        raise MediaError(f"file too large: {size} bytes, over max_file_bytes {limit} (not read)")


def open_image(
    src: ImageSource, min_side: int = DEFAULT_MIN_SIDE, max_pixels: int = DEFAULT_MAX_PIXELS
) -> Image.Image:
    """Open `src` (path, bytes, binary file object or PIL image) as a loaded RGB `PIL.Image`.

    EXIF orientation is applied, animated files give their first frame. Raises `MediaError` for
    empty/truncated/unidentifiable data, more than `max_pixels` pixels (checked from the header,
    before decoding), or a shorter side below `min_side` (after EXIF rotation).
    """
    what = _describe(src)
    try:
        if isinstance(src, Image.Image):
            im = src
        else:
            if isinstance(src, (str, os.PathLike)):
                path = Path(src)
                if not path.is_file():
                    raise MediaError(f"{what}: not a file")
                if path.stat().st_size == 0:
                    raise MediaError(f"{what}: empty file")
                fp = io.BytesIO(path.read_bytes())  # read once; no open handle outlives the call
            elif isinstance(src, (bytes, bytearray, memoryview)):
                if len(src) == 0:
                    raise MediaError("empty data")
                fp = io.BytesIO(bytes(src))
            else:
                fp = src
            im = Image.open(fp)
        w, h = im.size
        if w * h > max_pixels:
            raise MediaError(
                f"{what}: {w}x{h} = {w * h} pixels is over the limit of {max_pixels} (decompression bomb?)"
            )
        if getattr(im, "is_animated", False):
            im.seek(0)  # first frame
        im.load()
        if im is src:
            im = ImageOps.exif_transpose(im)  # a copy: never change the caller's picture
        else:
            ImageOps.exif_transpose(im, in_place=True)  # our own object: skip a full-size copy
        if min(im.size) < min_side:
            raise MediaError(f"{what}: {im.size[0]}x{im.size[1]} is smaller than the minimum side {min_side}")
        rgb = to_rgb(im)
        if rgb is src:
            rgb = rgb.copy()  # never hand back (and let callers mutate) the caller's own object
        return rgb
    except MediaError:
        raise
    except Image.DecompressionBombError as e:
        raise MediaError(f"{what}: decompression bomb ({e})") from e
    except UnidentifiedImageError as e:
        raise MediaError(f"{what}: not an image Pillow can identify") from e
    except (OSError, SyntaxError, ValueError, EOFError, TypeError, IndexError, MemoryError) as e:
        # Pillow reports truncated/corrupt files through all of these, depending on the plugin.
        raise MediaError(f"{what}: unreadable image ({type(e).__name__}: {e})") from e


def prepare_image(img: Image.Image, size: int) -> Image.Image:
    """Centre square crop, then an antialiased bilinear resize to `size x size` RGB.

    Pillow's BILINEAR resize widens its filter support when downscaling (it is antialiased), and
    `reducing_gap=None` keeps it a single exact resampling pass, so the result depends only on the
    pixels: the same input gives the same bytes everywhere. A canonical image is returned as a copy.
    The result carries no metadata (`info` is empty).
    """
    if size <= 0:
        raise ValueError(f"size must be positive, got {size}")
    im = img if img.mode == "RGB" else to_rgb(img)
    w, h = im.size
    if (w, h) == (size, size):
        out = im.copy()
    else:
        s = min(w, h)
        left, top = (w - s) // 2, (h - s) // 2
        square = im.crop((left, top, left + s, top + s))
        out = square.resize((size, size), Image.BILINEAR, reducing_gap=None)
    # Metadata (EXIF, ICC, a JPEG comment) is not part of the canonical picture, and Pillow's JPEG
    # writer copies e.g. info["comment"] into the file, so drop it.
    out.info = {}
    return out
