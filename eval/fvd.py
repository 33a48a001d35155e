"""FVD (Fréchet Video Distance) for video systems, from an I3D network the user supplies by path.

This file owns the project's FVD. No I3D weights ship with any PyPI package and nothing here is
ever downloaded, so FVD is computed only when `i3d_weights` names a local file; otherwise the
harness records a clear skip reason (see `fvd_or_reason`).

The network: the TorchScript I3D of StyleGAN-V / "fvd-comparison" (`i3d_torchscript.pt`, sha256
bec6519f...a5e2, a port of the Kinetics-400 I3D behind the original TF FVD). That file and the
common PyTorch FVD code call it as

    features = model(videos, rescale=False, resize=False, return_features=True)

on float32 videos (N, 3, T, 224, 224) with values in [-1, 1], and get (N, 400): the logits before
the softmax, used as features. `I3DFeatures` uses exactly that call, so any TorchScript module
with the same signature works (the tests use a tiny stand-in). `rescale`/`resize` are False
because the input is prepared here, the same way for every set:

1. Clips arrive as uint8 (N, T, H, W, 3).
2. Frames: FVD's I3D is used with 16-frame clips. Our canonical clips have 15 (1.5 s at 10 fps),
   so a clip with T < 16 is padded by repeating its last frame up to 16, and a longer clip keeps
   its first 16 frames. The padding and the frame count go into `FvdResult.frames`. (Repeating
   one frame adds a 1/16 still segment to every clip, real and generated alike.)
3. Every frame is resized on its own to 224x224 with bilinear interpolation
   (`torch.nn.functional.interpolate(mode="bilinear", align_corners=False, antialias=False)` on
   float values); non-square frames (ours are 256x144) are stretched, not cropped, so nothing
   of the picture is thrown away. Real and generated clips go through the same resize.
4. Values v in 0..255 become v / 127.5 - 1, i.e. [-1, 1].
5. The Fréchet distance of the two (N, 400) feature sets is `jpeglm.eval.fid.frechet_distance` (the same
   torchmetrics computation as FID).

FVD, like FID, is biased upwards at small N (the usual protocol uses 2048 clips); compare systems
only at equal N.
"""

from __future__ import annotations

import os
import warnings
from dataclasses import asdict, dataclass
from functools import lru_cache
from pathlib import Path
from typing import Sequence

import numpy as np
import torch

from jpeglm.errors import UserError
from jpeglm.eval.fid import FidError, file_sha256, frechet_distance

INPUT_SIZE = 224
FVD_FRAMES = 16  # the clip length FVD's I3D is used with (StyleGAN-V, TATS, the TF original)
CALL_KWARGS = {"rescale": False, "resize": False, "return_features": True}
RESIZE_METHOD = ("bilinear (torch interpolate, align_corners=False, no antialias) per frame to 224x224 on float, "
                 "non-square frames stretched; values v/127.5 - 1")
NETWORK_NAME = "I3D (Kinetics-400) TorchScript, called as model(x, rescale=False, resize=False, return_features=True)"


class FvdError(UserError, RuntimeError):
    """FVD cannot be computed as asked (weights file missing, not TorchScript, wrong call signature)."""


@dataclass(frozen=True)
class FvdResult:
    """One FVD number and how it was made. `value` is None when it could not be computed; then
    `reason` says why (e.g. fewer than 2 decoded clips)."""

    value: float | None
    n_real: int
    n_fake: int
    network: str
    network_sha256: str
    resize: str
    frames: str
    reason: str = ""

    def to_dict(self) -> dict:
        return asdict(self)


class I3DFeatures:
    """A TorchScript I3D from a local file: `features(clips)` -> float64 (N, D) (D = 400 for
    StyleGAN-V's `i3d_torchscript.pt`). Raises `FvdError` when the file is missing or unusable."""

    def __init__(self, path: str | os.PathLike, device: str | torch.device = "cpu"):
        p = Path(path).expanduser()
        if not p.is_file():
            raise FvdError(f"I3D weights file {p} does not exist (FVD needs a local TorchScript I3D, "
                           "e.g. StyleGAN-V's i3d_torchscript.pt; nothing is downloaded)")
        self.device = torch.device(device)
        try:
            with warnings.catch_warnings():  # torch >= 2.9 marks jit deprecated; the weights only exist as TorchScript
                warnings.simplefilter("ignore", DeprecationWarning)
                self.model = torch.jit.load(str(p), map_location=self.device).eval()
        except Exception as e:  # a state dict, a truncated file, a pickle: all unusable here
            raise FvdError(f"I3D weights file {p} is not a loadable TorchScript module ({type(e).__name__}: {e}); "
                           "FVD needs the TorchScript I3D such as StyleGAN-V's i3d_torchscript.pt") from e
        self.path = str(p)
        self.sha256 = file_sha256(str(p))

    def features(self, clips: Sequence[np.ndarray], batch_size: int = 8) -> np.ndarray:
        """uint8 (T, H, W, 3) clips -> (N, D) features, `batch_size` clips per forward pass."""
        out = []
        with torch.inference_mode():
            for s in range(0, len(clips), batch_size):
                x = preprocess(clips[s : s + batch_size]).to(self.device)
                try:
                    y = self.model(x, **CALL_KWARGS)
                except Exception as e:
                    raise FvdError(f"I3D network {self.path} failed on a ({', '.join(map(str, x.shape))}) batch "
                                   f"called with {CALL_KWARGS}: {type(e).__name__}: {e}") from e
                if not isinstance(y, torch.Tensor) or y.ndim != 2 or y.shape[0] != x.shape[0]:
                    raise FvdError(f"I3D network {self.path} must return (N, D) features, got "
                                   f"{getattr(y, 'shape', type(y).__name__)}")
                out.append(y.double().cpu().numpy())
        return np.concatenate(out, axis=0)


@lru_cache(maxsize=2)
def load_i3d(path: str, device: str = "cpu") -> I3DFeatures:
    """One loaded network per (path, device) for the whole run (every setting reuses it)."""
    return I3DFeatures(path, device)


def pad_frames(clip: np.ndarray, frames: int = FVD_FRAMES) -> np.ndarray:
    """A (T, H, W, 3) clip at exactly `frames` frames: the last frame repeated, or the first kept."""
    clip = np.asarray(clip)
    if clip.ndim != 4 or clip.shape[-1] != 3 or clip.shape[0] < 1:
        raise ValueError(f"a clip must be uint8 (T, H, W, 3) with T >= 1, got shape {clip.shape}")
    if clip.shape[0] >= frames:
        return clip[:frames]
    return np.concatenate([clip, np.repeat(clip[-1:], frames - clip.shape[0], axis=0)], axis=0)


def frames_note(clips: Sequence[np.ndarray], frames: int = FVD_FRAMES) -> str:
    lengths = sorted({int(np.asarray(c).shape[0]) for c in clips}) or [0]
    return (f"{frames} frames per clip (input clips of {'/'.join(map(str, lengths))} frames: shorter ones padded by "
            f"repeating the last frame, longer ones cut to the first {frames})")


def preprocess(clips: Sequence[np.ndarray], frames: int = FVD_FRAMES) -> torch.Tensor:
    """uint8 (T, H, W, 3) clips -> float32 (N, 3, frames, 224, 224) in [-1, 1] (see the module doc)."""
    batch = []
    for c in clips:
        x = torch.from_numpy(np.ascontiguousarray(pad_frames(c, frames))).float()  # T,H,W,3
        x = x.permute(0, 3, 1, 2)  # frames as the batch of a 2-D resize: T,3,H,W
        if x.shape[-2:] != (INPUT_SIZE, INPUT_SIZE):
            x = torch.nn.functional.interpolate(x, size=(INPUT_SIZE, INPUT_SIZE), mode="bilinear",
                                                align_corners=False, antialias=False)
        batch.append(x.permute(1, 0, 2, 3))  # 3,T,224,224
    # clamp: float rounding of 255 / 127.5 - 1 may land a hair above 1.0
    return (torch.stack(batch) / 127.5 - 1.0).clamp_(-1.0, 1.0)


def compute_fvd(real_videos: Sequence[np.ndarray], fake_videos: Sequence[np.ndarray], net: I3DFeatures,
                batch_size: int = 8) -> FvdResult:
    """FVD between two sets of uint8 (T, H, W, 3) clips. With fewer than 2 clips in either set the
    value is None and `reason` says so (no exception); an unusable network raises `FvdError`."""
    real, fake = list(real_videos), list(fake_videos)

    def result(value, reason=""):
        return FvdResult(value, len(real), len(fake), NETWORK_NAME, net.sha256, RESIZE_METHOD,
                         frames_note(real + fake), reason)

    if len(real) < 2 or len(fake) < 2:
        return result(None, f"FVD needs at least 2 clips per set, got {len(real)} real and {len(fake)} generated")
    value = frechet_distance(net.features(real, batch_size), net.features(fake, batch_size))
    return result(value)


def fvd_or_reason(weights: str | None, real_videos: Sequence[np.ndarray], fake_videos: Sequence[np.ndarray],
                  device: str | torch.device = "cpu", batch_size: int = 8) -> tuple[float | None, str]:
    """(value, "") or (None, why): what the eval harness stores in a video row. Never raises."""
    if not weights:
        return None, "I3D weights not supplied (set i3d_weights); FVD skipped"
    try:
        res = compute_fvd(real_videos, fake_videos, load_i3d(str(weights), str(device)), batch_size)
    except Exception as e:  # a row gets the reason, the run goes on (FvdError for a bad network file)
        why = str(e) if isinstance(e, (FvdError, FidError)) else f"{type(e).__name__}: {e}"
        return None, f"FVD failed: {why}"
    return res.value, res.reason
