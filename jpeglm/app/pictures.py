"""The pictures the page shows: built-in photos (a clip for video codecs), uploads checked before they
are decoded, the cut line of a prompt, and one still of whatever a codec decodes (a picture, or a
clip's frames as a sheet).

No gradio and no torch here; the codec is only asked through its contract (`prepare`,
`prompt_steps`, `prompt_mask`, `decode`).
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


BUILTIN_CLIP = "camera pan"  # video codecs: jpeglm.video.builtin_clip (a camera move over the cat photo)


def builtin_names(codec) -> list[str]:
    """The built-in media the page offers for `codec`: photos for image codecs, one clip for video."""
    if _skimage_data() is None:
        return []
    return [BUILTIN_CLIP] if codec.media_kind == "video" else list(BUILTIN)


def _skimage_data() -> Path | None:
    spec = importlib.util.find_spec("skimage")  # finds the folder without importing scikit-image
    if spec is None or not spec.submodule_search_locations:
        return None
    root = Path(next(iter(spec.submodule_search_locations))) / "data"
    return root if root.is_dir() else None


def builtin_media(codec, name: str) -> np.ndarray:
    """The canonical picture (or clip) of the built-in `name`."""
    if name not in builtin_names(codec):
        raise InputError(f"no built-in {name!r} (choose one of {', '.join(builtin_names(codec)) or 'none'})")
    if codec.media_kind == "video":
        from jpeglm.video import builtin_clip

        return _checked(codec, codec.prepare(builtin_clip(frames=codec.prompt_steps())))
    return canonical_media(codec, _skimage_data() / BUILTIN[name])


def canonical_media(codec, path: str | os.PathLike) -> np.ndarray:
    """What `codec` would encode from the file at `path`: uint8 HxWx3 (TxHxWx3 for a video codec);
    InputError (one line) for anything it cannot use: not an image (video), too big, too small, truncated."""
    path = Path(path)
    try:
        size = path.stat().st_size
    except OSError as e:
        raise InputError(f"cannot read the uploaded file ({e.strerror or e})") from e
    if size > MAX_UPLOAD_BYTES:
        raise InputError(f"the file is {size / 2**20:.0f} MiB; the limit is {MAX_UPLOAD_BYTES // 2**20} MiB")
    what = "video" if codec.media_kind == "video" else "image"
    if what == "image":
        try:
            with Image.open(io.BytesIO(path.read_bytes())) as im:
                w, h = im.size
        except Exception as e:
            raise InputError(f"{path.name or 'the file'} is not an image Pillow can open") from e
        if w * h > MAX_UPLOAD_PIXELS:
            raise InputError(f"the image is {w}x{h} ({w * h / 1e6:.0f} Mpx); the limit is {MAX_UPLOAD_PIXELS / 1e6:.0f} Mpx")
    try:
        media = codec.prepare(str(path))
    except ValueError as e:  # MediaError, VideoError and CodecError are ValueErrors with a one-line message
        raise InputError(str(e).replace(str(path), path.name)) from e
    except Exception as e:
        raise InputError(f"the {what} could not be decoded ({type(e).__name__}: {e})") from e
    return _checked(codec, media)


def _checked(codec, media) -> np.ndarray:
    arr = np.asarray(media)
    ndim = 4 if codec.media_kind == "video" else 3
    if arr.dtype != np.uint8 or arr.ndim != ndim or arr.shape[-1] < 3:
        raise InputError(f"this checkpoint's codec gave {arr.dtype} {arr.shape}, not a picture or clip the page can show")
    return np.ascontiguousarray(arr[..., :3])


def cut_steps(codec, rule: str | None = None) -> int:
    """The codec's prompt steps under `rule` (None: its default cut)."""
    return codec.prompt_steps() if rule is None else codec.prompt_steps(rule)


def snap(codec, ratio: float, rule: str | None = None) -> tuple[int, float]:
    """The codec's cut position nearest `ratio` under `rule`: (k steps kept, k / steps)."""
    n = cut_steps(codec, rule)
    k = round(min(max(float(ratio), 0.0), 1.0) * n)
    return k, k / n


def prompt_mask(codec, media: np.ndarray, ratio: float, rule: str | None = None) -> np.ndarray:
    """Where the prompt cut nearest `ratio` shows `media`: the codec's own region (`prompt_mask`), so a
    cut that ends inside a row (JPEG's half rows) is a step, not a straight line."""
    fraction = snap(codec, ratio, rule)[1]
    shape = np.shape(media)[:-1]
    if fraction == 0:
        return np.zeros(shape, bool)
    return codec.prompt_mask(fraction, shape, rule)


def with_cut_line(media: np.ndarray, shown: np.ndarray) -> np.ndarray:
    """One picture of `media` with what the model writes dimmed and a line where the prompt ends.
    `shown`: the bool mask of what the prompt shows (`prompt_mask`): a line along its edge in a
    picture (a step where a half row ends), or the left edge of the first frame to write in a clip."""
    out = media.copy()
    shown = np.asarray(shown, bool)
    if shown.shape != out.shape[:-1]:
        raise ValueError(f"cut mask {shown.shape} does not match the media {out.shape[:-1]}")
    if out.ndim == 4:
        k = int(shown.reshape(len(shown), -1).all(1).sum())  # frames kept whole
        out[k:] = _dim(out[k:])
        if k < out.shape[0]:
            out[k, :, : max(2, out.shape[2] // 64)] = CUT_COLOUR  # the left edge of the first frame to write
        return still(out)
    out[~shown] = _dim(out[~shown])
    thick = max(1, out.shape[0] // 128)
    line = _grow(shown, thick) & _grow(~shown, thick)  # within `thick` of the edge, on either side
    out[line] = CUT_COLOUR
    return out


def _grow(mask: np.ndarray, r: int) -> np.ndarray:
    """`mask` widened by `r` pixels along both axes (a box, no wrap-around)."""
    out = mask.copy()
    for axis in (0, 1):
        grown = out.copy()
        for d in range(1, r + 1):
            lo = [slice(None)] * 2
            hi = [slice(None)] * 2
            lo[axis], hi[axis] = slice(d, None), slice(None, -d)
            grown[tuple(lo)] |= out[tuple(hi)]
            grown[tuple(hi)] |= out[tuple(lo)]
        out = grown
    return out


def _dim(a: np.ndarray) -> np.ndarray:
    return (a.astype(np.uint16) * 2 // 5 + 77).astype(np.uint8)


def still(media, columns: int = 5) -> np.ndarray:
    """One picture for decoded media: the picture itself, or a clip's frames in rows of `columns`."""
    arr = np.asarray(media)
    if arr.ndim != 4:
        return arr
    t, h, w, _ = arr.shape
    rows = -(-t // columns)
    cols = min(t, columns)
    gap = 3
    sheet = np.full((rows * (h + gap) - gap, cols * (w + gap) - gap, 3), 255, np.uint8)
    for i, frame in enumerate(arr):
        r, c = divmod(i, columns)
        sheet[r * (h + gap) : r * (h + gap) + h, c * (w + gap) : c * (w + gap) + w] = frame
    return sheet


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
    "BUILTIN", "BUILTIN_CLIP", "InputError", "builtin_media", "builtin_names", "canonical_media", "cut_steps",
    "for_display", "prompt_mask", "side_by_side", "snap", "still", "with_cut_line",
]
