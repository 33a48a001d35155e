"""The pictures the page shows: built-in photos, uploads checked before they are decoded, the cut
line of a prompt, and still frames of whatever a codec decodes (a picture, or a clip as a strip).

No gradio and no torch here; the codec is only asked through its contract (`prepare`,
`prompt_steps`, `decode`).
"""

from __future__ import annotations

import importlib.util
import io
import os
from pathlib import Path

import numpy as np
from PIL import Image

# Photos bundled with scikit-image (a dependency already; the demo and the tests use them too):
# public-domain / CC0 pictures, so the page has something to complete with no upload.
BUILTIN = {"astronaut": "astronaut.png", "cat": "chelsea.png", "coffee": "coffee.png"}
MAX_UPLOAD_BYTES = 40 * 1024 * 1024
MAX_UPLOAD_PIXELS = 40_000_000  # checked from the header, before any pixel is decoded
CUT_COLOUR = (255, 48, 48)


class InputError(ValueError):
    """Input the page cannot use; its message is shown on the page as it is."""


def builtin_names() -> list[str]:
    return list(BUILTIN) if _skimage_data() is not None else []


def _skimage_data() -> Path | None:
    spec = importlib.util.find_spec("skimage")  # finds the folder without importing scikit-image
    if spec is None or not spec.submodule_search_locations:
        return None
    root = Path(next(iter(spec.submodule_search_locations))) / "data"
    return root if root.is_dir() else None


def builtin_path(name: str) -> Path:
    root = _skimage_data()
    if name not in BUILTIN or root is None:
        raise InputError(f"no built-in photo {name!r} (choose one of {', '.join(builtin_names()) or 'none'})")
    return root / BUILTIN[name]


def canonical_picture(codec, path: str | os.PathLike) -> np.ndarray:
    """The picture `codec` would encode from the file at `path`, as uint8 HxWx3; InputError (one line)
    for anything that is not a usable image: not an image, too big, too small, truncated."""
    path = Path(path)
    try:
        size = path.stat().st_size
    except OSError as e:
        raise InputError(f"cannot read the uploaded file ({e.strerror or e})") from e
    if size > MAX_UPLOAD_BYTES:
        raise InputError(f"the file is {size / 2**20:.0f} MiB; the limit is {MAX_UPLOAD_BYTES // 2**20} MiB")
    data = path.read_bytes()
    try:
        with Image.open(io.BytesIO(data)) as im:
            w, h = im.size
    except Exception as e:
        raise InputError(f"{path.name or 'the file'} is not an image Pillow can open") from e
    if w * h > MAX_UPLOAD_PIXELS:
        raise InputError(f"the image is {w}x{h} ({w * h / 1e6:.0f} Mpx); the limit is {MAX_UPLOAD_PIXELS / 1e6:.0f} Mpx")
    try:
        picture = codec.prepare(str(path))
    except ValueError as e:  # MediaError and CodecError are ValueErrors with a one-line message
        raise InputError(str(e).replace(str(path), path.name)) from e
    except Exception as e:
        raise InputError(f"the image could not be decoded ({type(e).__name__}: {e})") from e
    arr = np.asarray(picture)
    if arr.dtype != np.uint8 or arr.ndim != 3:
        raise InputError("this checkpoint's codec does not take still pictures")
    return np.ascontiguousarray(arr[..., :3])


def snap(codec, ratio: float) -> tuple[int, float]:
    """The codec's cut position nearest `ratio`: (k steps kept, k / prompt_steps())."""
    steps = codec.prompt_steps()
    k = round(min(max(float(ratio), 0.0), 1.0) * steps)
    return k, k / steps


def with_cut_line(picture: np.ndarray, fraction: float) -> np.ndarray:
    """`picture` with the part below the cut dimmed and a line where the prompt ends."""
    out = picture.copy()
    h = out.shape[0]
    y = round(fraction * h)
    out[y:] = (out[y:].astype(np.uint16) * 2 // 5 + 77).astype(np.uint8)  # dimmed: what the model writes
    thick = max(1, h // 128)
    lo, hi = max(0, y - thick), min(h, y + thick)
    if hi > lo:
        out[lo:hi] = CUT_COLOUR
    return out


def still(media) -> np.ndarray:
    """One picture for decoded media: the picture itself, or a clip's frames side by side (at most 8)."""
    arr = np.asarray(media)
    if arr.ndim == 4:
        frames = list(arr[: 8])
        gap = np.full((arr.shape[1], 2, 3), 255, np.uint8)
        parts = []
        for f in frames:
            parts += [f, gap]
        return np.concatenate(parts[:-1], axis=1)
    return arr


def for_display(picture: np.ndarray, min_side: int = 256) -> np.ndarray:
    """Small pictures (a 64x64 test codec) enlarged by whole pixels, so the page shows them at a usable size."""
    f = -(-min_side // max(1, min(picture.shape[:2])))
    return picture if f <= 1 else np.repeat(np.repeat(picture, f, axis=0), f, axis=1)


def side_by_side(left: np.ndarray, right: np.ndarray, gap: int = 6) -> np.ndarray:
    h = max(left.shape[0], right.shape[0])

    def pad(a):
        return np.pad(a, ((0, h - a.shape[0]), (0, 0), (0, 0)), constant_values=255)

    return np.concatenate([pad(left), np.full((h, gap, 3), 255, np.uint8), pad(right)], axis=1)


__all__ = [
    "BUILTIN", "InputError", "builtin_names", "builtin_path", "canonical_picture", "for_display", "side_by_side", "snap", "still",
    "with_cut_line",
]
