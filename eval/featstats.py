"""Feature statistics in bounded memory: running mean / covariance, FID from them, reference `.npz`
files, and improved precision / recall over features kept on disk.

- `RunningStats`: features arrive in batches; the mean and the centred sum of outer products are
  merged batch by batch in float64 (Chan et al.'s pairwise update), so 50k samples cost one 2048 x
  2048 matrix, not 50k rows. The same batches in the same order give the same bits.
- `frechet_from_stats(mu1, s1, mu2, s2)`: the Fréchet distance from means and covariances, from
  symmetric eigen-solves and one SVD (not torchmetrics' general eigvals of s1 @ s2: 26 s at 2048-d
  here, and noisy when the covariances are singular: on 24 + 24 vectors it is 1.3e-6 off, relative,
  where these agree with the exact low-rank value to 1e-13); `frechet_from_features` is the same
  number from small feature sets without any D x D matrix.
- Reference statistics (`save_reference` / `load_reference`): mu, sigma, count, the feature
  network's sha256 and the resize, as a plain `.npz` (read with allow_pickle=False: nothing in it
  runs). A file from another network or resize is refused with both values named.
- `precision_recall(real, fake, k=3)`: Kynkäänniemi et al. 2019 ("Improved precision and recall
  metric for assessing generative models"), on the same pool3 features: precision = share of fakes
  inside some real's k-NN ball, recall = share of reals inside some fake's k-NN ball. Rows are read
  in blocks from `.npy` files (`FeatureFile`, plain reads, no mmap) or arrays, so memory is a few
  blocks whatever N.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np

REF_FORMAT = "jpeglm-fid-stats"


class StatsError(ValueError):
    """A reference statistics file that cannot be used here (other network or resize, not a stats file)."""


class RunningStats:
    """Mean and covariance of feature vectors added in batches (float64, order-deterministic)."""

    def __init__(self, dim: int):
        self.dim = dim
        self.n = 0
        self.mean = np.zeros(dim, np.float64)
        self.m2 = np.zeros((dim, dim), np.float64)

    def add(self, x: np.ndarray) -> None:
        x = np.asarray(x, np.float64).reshape(-1, self.dim)
        nb = len(x)
        if nb == 0:
            return
        mb = x.mean(0)
        xc = x - mb
        n = self.n + nb
        delta = mb - self.mean
        self.m2 += xc.T @ xc + np.outer(delta, delta) * (self.n * nb / n)
        self.mean = self.mean + delta * (nb / n)
        self.n = n

    @property
    def sigma(self) -> np.ndarray:
        """Unbiased covariance (n - 1), as torchmetrics, the ADM evaluator and pytorch-fid use."""
        if self.n < 2:
            raise ValueError(f"a covariance needs at least 2 feature vectors, got {self.n}")
        return self.m2 / (self.n - 1)


def _factor(m: np.ndarray, rel_tol: float) -> np.ndarray:
    """L with L @ L.T = m for a PSD m, without the eigenvalues that are rounding noise of zero."""
    w, v = np.linalg.eigh((m + m.T) / 2)
    keep = w > max(w.max(initial=0.0), 0.0) * rel_tol
    return v[:, keep] * np.sqrt(w[keep])


def frechet_from_stats(mu1, sigma1, mu2, sigma2, rel_tol: float = 1e-12) -> float:
    """||mu1 - mu2||^2 + tr(s1) + tr(s2) - 2 tr sqrt(s1 s2), in float64.

    With s1 = L1 L1^T and s2 = L2 L2^T, the eigenvalues of sqrt(s1 s2) are the singular values of
    L1^T L2, so the trace is its nuclear norm: symmetric eigen-solves and one SVD, accurate to
    rounding in absolute terms (square roots of the rounding noise of zero eigenvalues, which a
    sqrt of eigvals(s1 @ s2) adds up at ~1e-8 of the largest each, never enter). Singular
    covariances (fewer images than dimensions) are first rotated into the span of s1 + s2 + dd^T,
    which holds every difference between the two Gaussians (exact; the stats form of
    fid.span_projection), so the solves are small."""
    mu1, mu2 = np.asarray(mu1, np.float64), np.asarray(mu2, np.float64)
    s1, s2 = np.asarray(sigma1, np.float64), np.asarray(sigma2, np.float64)
    if mu1.shape != mu2.shape or s1.shape != s2.shape or s1.shape != (mu1.size, mu1.size):
        raise ValueError(f"statistics of different shapes: mu {mu1.shape} / {mu2.shape}, sigma {s1.shape} / {s2.shape}")
    d = mu1 - mu2
    span = _factor(s1 + s2 + np.outer(d, d), rel_tol)
    if 0 < span.shape[1] < len(d):
        basis = span / np.linalg.norm(span, axis=0)
        s1, s2 = basis.T @ s1 @ basis, basis.T @ s2 @ basis
    cross = _factor(s1, rel_tol).T @ _factor(s2, rel_tol)
    nuclear = np.linalg.svd(cross, compute_uv=False).sum() if cross.size else 0.0
    return float(d @ d + np.trace(s1) + np.trace(s2) - 2.0 * nuclear)


def frechet_from_features(real: np.ndarray, fake: np.ndarray) -> float:
    """The same distance from two small feature sets, exactly: with L = centred rows / sqrt(n - 1),
    sigma = L^T L and tr sqrt(s1 s2) is the nuclear norm of the n1 x n2 matrix L1 L2^T (no D x D
    matrix at all). For n1 + n2 up to a few thousand; `frechet_from_stats` beyond."""
    real, fake = np.asarray(real, np.float64), np.asarray(fake, np.float64)
    l1 = (real - real.mean(0)) / np.sqrt(len(real) - 1)
    l2 = (fake - fake.mean(0)) / np.sqrt(len(fake) - 1)
    d = real.mean(0) - fake.mean(0)
    nuclear = np.linalg.svd(l1 @ l2.T, compute_uv=False).sum()
    return float(d @ d + (l1 * l1).sum() + (l2 * l2).sum() - 2.0 * nuclear)


# ------------------------------------------------------------------------------------------------
# reference statistics files


def save_reference(path: str | os.PathLike, stats: RunningStats, network_sha256: str, resize: str, network: str = "",
                   backend: str = "", image_size: int = 0) -> dict:
    """Write mu, sigma, count, the network's sha256 and the resize as an `.npz` (atomically);
    `image_size`: the side the images were prepared at first (0: used as they are)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp.npz")
    meta = {"format": REF_FORMAT, "network_sha256": network_sha256, "resize": resize, "network": network,
            "backend": backend}
    np.savez(tmp, mu=stats.mean, sigma=stats.sigma, count=np.int64(stats.n), image_size=np.int64(image_size),
             **{k: np.array(v) for k, v in meta.items()})
    os.replace(tmp, path)
    return {**meta, "count": stats.n, "image_size": image_size}


def load_reference(path: str | os.PathLike, network_sha256: str | None = None, resize: str | None = None) -> dict:
    """mu, sigma, count and the recorded settings of a reference file; with `network_sha256` /
    `resize` given, a file made with other ones is a StatsError naming both values."""
    try:
        with np.load(path, allow_pickle=False) as z:
            data = {k: z[k] for k in z.files}
    except (OSError, ValueError) as e:
        raise StatsError(f"{path}: not a readable .npz ({type(e).__name__}: {e})") from e
    missing = [k for k in ("mu", "sigma", "network_sha256", "resize") if k not in data]
    if missing:
        raise StatsError(f"{path}: not a jpeglm reference statistics file (no {', '.join(missing)}; "
                         "write one with jpeglm fid --save-stats)")
    out = {"mu": np.asarray(data["mu"], np.float64), "sigma": np.asarray(data["sigma"], np.float64),
           "count": int(data["count"]) if "count" in data else None,
           "image_size": int(data["image_size"]) if "image_size" in data else 0,
           **{k: str(data[k]) for k in ("network_sha256", "resize", "network", "backend") if k in data}}
    if out["sigma"].shape != (out["mu"].size, out["mu"].size):
        raise StatsError(f"{path}: mu {out['mu'].shape} and sigma {out['sigma'].shape} do not match")
    if network_sha256 is not None and out["network_sha256"] != network_sha256:
        raise StatsError(f"{path} was made with another feature network: its sha256 {out['network_sha256']}, "
                         f"this one's {network_sha256}")
    if resize is not None and out["resize"] != resize:
        raise StatsError(f"{path} was made with another resize: {out['resize']!r}, here {resize!r}")
    return out


def folder_stats(engine, folder, image_size: int | None = None) -> tuple[RunningStats, list[tuple[str, str]]]:
    """Running stats of the features of every image in `folder` (recursive, sorted), read
    `engine.batch_size` files at a time (the batches `FID.features` makes of a one-size folder),
    and the (path, reason) of unreadable files. With `image_size`, each image is first prepared as
    `jpeglm eval` prepares its held-out images (centre square crop, antialiased resize)."""
    from jpeglm.eval.fid import NUM_FEATURES, list_image_files
    from jpeglm.media import MediaError, open_image, prepare_image

    stats, skipped, window = RunningStats(NUM_FEATURES), [], []
    files = list_image_files(folder)
    for k, p in enumerate(files):
        try:
            im = open_image(p, min_side=1) if image_size is None else prepare_image(open_image(p), image_size)
            window.append(np.asarray(im))
        except MediaError as e:
            skipped.append((str(p), str(e)))
        if window and (len(window) == engine.batch_size or k == len(files) - 1):
            stats.add(engine.features(window))
            window = []
    return stats, skipped


# ------------------------------------------------------------------------------------------------
# features on disk and precision / recall


class FeatureFile:
    """Rows of a 2-D `.npy` file read by plain file reads (no mmap, so nothing stays resident)."""

    def __init__(self, path: str | os.PathLike):
        self.path = Path(path)
        with open(self.path, "rb") as f:
            version = np.lib.format.read_magic(f)
            read = np.lib.format.read_array_header_1_0 if version == (1, 0) else np.lib.format.read_array_header_2_0
            shape, fortran, dtype = read(f)
            self.offset = f.tell()
        if fortran or len(shape) != 2:
            raise ValueError(f"{path}: expected a C-order 2-D array, got shape {shape}")
        self.shape, self.dtype = shape, np.dtype(dtype)

    def __len__(self) -> int:
        return self.shape[0]

    def __getitem__(self, s: slice) -> np.ndarray:
        a, b, _ = s.indices(len(self))
        row = self.shape[1] * self.dtype.itemsize
        with open(self.path, "rb") as f:
            f.seek(self.offset + a * row)
            return np.fromfile(f, dtype=self.dtype, count=max(0, b - a) * self.shape[1]).reshape(-1, self.shape[1])


def _blocks(x, size: int):
    for s in range(0, len(x), size):
        yield s, np.asarray(x[s : s + size], np.float32)


def _kth_radii(x, k: int, block: int, device) -> np.ndarray:
    """Distance of every row of x to its k-th nearest other row."""
    import torch

    radii = np.zeros(len(x), np.float64)
    for s, a in _blocks(x, block):
        ta = torch.from_numpy(a).to(device)
        best = torch.full((len(a), k + 1), float("inf"), device=device, dtype=torch.float32)
        for _, b in _blocks(x, block):
            d = torch.cdist(ta, torch.from_numpy(b).to(device))
            best = torch.topk(torch.cat([best, d], 1), k + 1, dim=1, largest=False).values
        radii[s : s + len(a)] = best[:, k].double().cpu().numpy()  # column 0 is the row itself (distance 0)
    return radii


def _covered(points, centres, radii: np.ndarray, block: int, device) -> int:
    """How many rows of `points` lie within radii[j] of some centre j."""
    import torch

    n = 0
    for _, a in _blocks(points, block):
        ta = torch.from_numpy(a).to(device)
        hit = torch.zeros(len(a), dtype=torch.bool, device=device)
        for s, b in _blocks(centres, block):
            d = torch.cdist(ta, torch.from_numpy(b).to(device))
            r = torch.from_numpy(radii[s : s + len(b)].astype(np.float32)).to(device)
            hit |= (d <= r[None]).any(1)
        n += int(hit.sum())
    return n


def precision_recall(real, fake, k: int = 3, block: int = 1024, device="cpu") -> tuple[float, float]:
    """Improved precision and recall (k-NN manifolds, Kynkäänniemi et al. 2019) of `fake` against `real`.
    `real` / `fake`: (N, D) arrays or `FeatureFile`s (anything with len() and row slices)."""
    if len(real) <= k or len(fake) <= k:
        raise ValueError(f"precision/recall with k={k} needs more than {k} vectors per set, got {len(real)} and {len(fake)}")
    r_real = _kth_radii(real, k, block, device)
    r_fake = _kth_radii(fake, k, block, device)
    precision = _covered(fake, real, r_real, block, device) / len(fake)
    recall = _covered(real, fake, r_fake, block, device) / len(real)
    return precision, recall
