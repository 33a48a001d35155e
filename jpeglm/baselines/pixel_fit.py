"""`jpeglm pixel fit`: fit the k-means colour palette of the pixel baseline. No torch.

Pixels of the training images, prepared at the codec's size (jpeglm.media: centre crop +
antialiased resize, as PixelCodec.encode does), are subsampled with a fixed seed and clustered
by scipy's k-means (`kmeans2` from a seeded k-means++ init: the same images give the same
palette). The palette is sorted by luminance (so nearby tokens are similar colours; it changes
nothing else) and written atomically as an .npz: `palette` uint8 (K, 3), `size`, `colors`,
`num_images`, `num_pixels`, `seed`. `PixelCodec.from_palette(FILE)` reads it.
"""

from __future__ import annotations

import io
import logging
import os
import warnings
from pathlib import Path

import numpy as np

log = logging.getLogger("jpeglm.baselines.pixel_fit")


def collect_pixels(spec: str, size: int, split: str | None = None, max_images: int = 0) -> tuple[np.ndarray, int, list[dict]]:
    """All pixels (N, 3) uint8 of the usable images of a source at `size`, the image count and
    the skipped items with reasons."""
    from tqdm.auto import tqdm

    from jpeglm.data_prep.sources import open_source
    from jpeglm.media import MediaError, open_image, prepare_image

    source = open_source(spec, "image", split=split)
    items = source.items()
    if max_images:
        items = items[:max_images]
    chunks, skipped = [], []
    for item in tqdm(items, desc="reading images", unit="img", leave=False):
        try:
            chunks.append(np.asarray(prepare_image(open_image(source.fetch(item)), size)).reshape(-1, 3))
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


def fit_palette(pixels: np.ndarray, colors: int = 512, seed: int = 0, max_pixels: int = 1_000_000, iters: int = 20) -> np.ndarray:
    """k-means on (N, 3) uint8 pixels -> uint8 (colors, 3) palette sorted by luminance."""
    from scipy.cluster.vq import kmeans2

    if colors < 2:
        raise ValueError(f"colors must be >= 2, got {colors}")
    rng = np.random.default_rng(seed)
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
            centres, _ = kmeans2(data, init, iter=iters, minit="matrix")
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
