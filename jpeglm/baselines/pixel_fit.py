"""`jpeglm pixel fit`: fit the k-means colour palette of the pixel baseline. No torch.

Pixels of the training images, prepared at the codec's size (jpeglm.media: centre crop +
antialiased resize, as PixelCodec.encode does), are subsampled with a fixed seed and clustered
by scipy's k-means (`kmeans2` from a seeded k-means++ init: the same images give the same
palette). The palette is sorted by luminance (so nearby tokens are similar colours; it changes
nothing else) and written atomically as an .npz: `palette` uint8 (K, 3), `size`, `colors`,
`num_images`, `num_pixels`, `seed`. `PixelCodec.from_palette(FILE)` reads it. The settings of a fit
are `PaletteSettings` (its fields are the `jpeglm pixel fit` flags).
"""

from __future__ import annotations

import io
import logging
import os
import warnings
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from jpeglm.media import DEFAULT_MAX_FILE_BYTES

log = logging.getLogger("jpeglm.baselines.pixel_fit")


def _s(default, text: str, **meta):
    return field(default=default, metadata={"help": text, **meta})


@dataclass(frozen=True)
class PaletteSettings:
    """The settings of one palette fit, declared once: `jpeglm pixel fit` flags and the arguments of
    `collect_pixels` / `fit_palette`."""

    colors: int = _s(512, "palette size K (512 = 9-bit tokens, as in ImageGPT)")
    size: int = _s(32, "pixel grid side the codec will use (32 or 64); pixels are sampled at this size")
    max_pixels: int = _s(1_000_000, "k-means on at most this many pixels (a seeded random subset)")
    max_images: int = _s(0, "read at most this many images (0 = all)")
    max_file_bytes: int = _s(DEFAULT_MAX_FILE_BYTES, "skip image files larger than this many bytes without reading "
                             "them (as prep does)")
    iters: int = _s(20, "k-means iterations")
    seed: int = _s(0, "seed of the pixel subset and the k-means++ init")

    def __post_init__(self):
        if self.colors < 2:
            raise ValueError(f"colors must be >= 2, got {self.colors}")
        if self.size < 1 or self.max_pixels < 1 or self.iters < 1 or self.max_images < 0:
            raise ValueError("size, max_pixels and iters must be >= 1 and max_images >= 0")


def collect_pixels(spec: str, settings: PaletteSettings, split: str | None = None) -> tuple[np.ndarray, int, list[dict]]:
    """All pixels (N, 3) uint8 of the usable images of a source at `settings.size` (at most
    `settings.max_images` images), the image count and the skipped items with reasons."""
    from tqdm.auto import tqdm

    from jpeglm.data_prep.sources import fetch_image, open_source
    from jpeglm.media import MediaError, open_image, prepare_image

    size = settings.size
    source = open_source(spec, "image", split=split)
    items = source.items()
    if settings.max_images:
        items = items[: settings.max_images]
    chunks, skipped = [], []
    for item in tqdm(items, desc="reading images", unit="img", leave=False):
        try:
            src = fetch_image(source, item, settings.max_file_bytes)
            chunks.append(np.asarray(prepare_image(open_image(src), size)).reshape(-1, 3))
        except (MediaError, OSError) as e:
            skipped.append({"path": item.key, "reason": str(e)})
    if not chunks:
        raise ValueError(f"no usable images in {spec} ({len(skipped)} skipped)")
    return np.concatenate(chunks), len(chunks), skipped


def kmeans_pp_init(data: np.ndarray, k: int, rng: np.random.Generator) -> np.ndarray:
    """k-means++ seeding (Arthur & Vassilvitskii 2007) in O(k N): scipy's own `minit="++"`
    recomputes every distance for every new centre, O(k^2 N), minutes for 512 colours."""
    centres = np.empty((k, data.shape[1]))
    centres[0] = data[rng.integers(len(data))]
    d2 = ((data - centres[0]) ** 2).sum(1)
    for i in range(1, k):
        total = d2.sum()
        j = rng.choice(len(data), p=d2 / total) if total > 0 else rng.integers(len(data))
        centres[i] = data[j]
        d2 = np.minimum(d2, ((data - centres[i]) ** 2).sum(1))
    return centres


def fit_palette(pixels: np.ndarray, settings: PaletteSettings = PaletteSettings()) -> np.ndarray:
    """k-means on (N, 3) uint8 pixels -> uint8 (settings.colors, 3) palette sorted by luminance."""
    from scipy.cluster.vq import kmeans2

    colors, max_pixels = settings.colors, settings.max_pixels
    rng = np.random.default_rng(settings.seed)
    data = pixels.reshape(-1, 3)
    if len(data) > max_pixels:
        data = data[np.sort(rng.choice(len(data), max_pixels, replace=False))]
    data = data.astype(np.float64)
    if len(np.unique(data, axis=0)) <= colors:
        # fewer distinct colours than slots: every colour is its own centre, the rest repeat
        uniq = np.unique(data, axis=0)
        centres = np.concatenate([uniq, np.repeat(uniq[-1:], colors - len(uniq), 0)])
    else:
        init = kmeans_pp_init(data, colors, rng)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # "One of the clusters is empty": kmeans2 keeps the old centre
            centres, _ = kmeans2(data, init, iter=settings.iters, minit="matrix")
    palette = np.clip(np.rint(centres), 0, 255).astype(np.uint8)
    luma = palette.astype(np.float64) @ np.array([0.299, 0.587, 0.114])
    order = np.lexsort((palette[:, 2], palette[:, 1], palette[:, 0], luma))
    return palette[order]


def save_palette(path: str | os.PathLike, palette: np.ndarray, size: int, **info) -> Path:
    """Atomically write the .npz read by PixelCodec.from_palette."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    buf = io.BytesIO()
    np.savez(buf, palette=palette.astype(np.uint8), size=np.int64(size), colors=np.int64(len(palette)), **{k: np.asarray(v) for k, v in info.items()})
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_bytes(buf.getvalue())
    os.replace(tmp, path)
    return path
