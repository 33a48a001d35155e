"""Feature statistics in bounded memory: running mean / covariance, FID from them, reference `.npz`
files, and improved precision / recall over features kept on disk.

- `RunningStats`: features arrive in batches; the mean and the centred sum of outer products are
  merged batch by batch in float64 (Chan et al.'s pairwise update), so 50k samples cost one 2048 x
  2048 matrix, not 50k rows. The same batches in the same order give the same bits.
- `frechet_from_stats(mu1, s1, mu2, s2)`: the Fréchet distance from means and covariances. When the
  covariances are singular (fewer images than dimensions) it first rotates into the span of
  s1 + s2 + dd^T, which holds every difference between the two Gaussians (the stats form of
  fid.span_projection, exact), then takes tr sqrt(s1 s2) as the trace of sqrt(s1^1/2 s2 s1^1/2) from
  symmetric eigen-solves (eigh, not torchmetrics' general eigvals of s1 @ s2: 26 s at 2048-d here).
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


def _sqrt_psd(m: np.ndarray) -> np.ndarray:
    w, v = np.linalg.eigh((m + m.T) / 2)
    return (v * np.sqrt(np.clip(w, 0, None))) @ v.T


def frechet_from_stats(mu1, sigma1, mu2, sigma2, rel_tol: float = 1e-10) -> float:
    """||mu1 - mu2||^2 + tr(s1) + tr(s2) - 2 tr sqrt(s1 s2), in float64 (see the module docstring)."""
    mu1, mu2 = np.asarray(mu1, np.float64), np.asarray(mu2, np.float64)
    s1, s2 = np.asarray(sigma1, np.float64), np.asarray(sigma2, np.float64)
    if mu1.shape != mu2.shape or s1.shape != s2.shape or s1.shape != (mu1.size, mu1.size):
        raise ValueError(f"statistics of different shapes: mu {mu1.shape} / {mu2.shape}, sigma {s1.shape} / {s2.shape}")
    d = mu1 - mu2
    w, v = np.linalg.eigh(s1 + s2 + np.outer(d, d))
    keep = w > max(w.max(), 0.0) * rel_tol
    if 0 < keep.sum() < len(w):  # singular covariances: rotate into the span that holds all the variation
        v = v[:, keep]
        p1, p2 = v.T @ s1 @ v, v.T @ s2 @ v
    else:
        p1, p2 = s1, s2
    r1 = _sqrt_psd(p1)
    inner = np.linalg.eigvalsh(((r1 @ p2 @ r1) + (r1 @ p2 @ r1).T) / 2)
    return float(d @ d + np.trace(s1) + np.trace(s2) - 2.0 * np.sqrt(np.clip(inner, 0, None)).sum())


# ------------------------------------------------------------------------------------------------
# reference statistics files


def save_reference(path: str | os.PathLike, stats: RunningStats, network_sha256: str, resize: str, network: str = "",
                   backend: str = "") -> dict:
    """Write mu, sigma, count, the network's sha256 and the resize as an `.npz` (atomically)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp.npz")
    meta = {"format": REF_FORMAT, "network_sha256": network_sha256, "resize": resize, "network": network,
            "backend": backend}
    np.savez(tmp, mu=stats.mean, sigma=stats.sigma, count=np.int64(stats.n),
             **{k: np.array(v) for k, v in meta.items()})
    os.replace(tmp, path)
    return {**meta, "count": stats.n}


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
           **{k: str(data[k]) for k in ("network_sha256", "resize", "network", "backend") if k in data}}
    if out["sigma"].shape != (out["mu"].size, out["mu"].size):
        raise StatsError(f"{path}: mu {out['mu'].shape} and sigma {out['sigma'].shape} do not match")
    if network_sha256 is not None and out["network_sha256"] != network_sha256:
        raise StatsError(f"{path} was made with another feature network: its sha256 {out['network_sha256']}, "
                         f"this one's {network_sha256}")
    if resize is not None and out["resize"] != resize:
        raise StatsError(f"{path} was made with another resize: {out['resize']!r}, here {resize!r}")
    return out


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


def precision_recall(real, fake, k: int = 3, block: int = 4096, device="cpu") -> tuple[float, float]:
    """Improved precision and recall (k-NN manifolds, Kynkäänniemi et al. 2019) of `fake` against `real`.
    `real` / `fake`: (N, D) arrays or `FeatureFile`s (anything with len() and row slices)."""
    if len(real) <= k or len(fake) <= k:
        raise ValueError(f"precision/recall with k={k} needs more than {k} vectors per set, got {len(real)} and {len(fake)}")
    r_real = _kth_radii(real, k, block, device)
    r_fake = _kth_radii(fake, k, block, device)
    precision = _covered(fake, real, r_real, block, device) / len(fake)
    recall = _covered(real, fake, r_fake, block, device) / len(real)
    return precision, recall
