"""FVD (eval/fvd.py) with a stand-in I3D: no real I3D weights exist offline, so each test saves a
tiny TorchScript module with the real network's call signature - `model(x, rescale=False,
resize=False, return_features=True)` on (N, 3, T, 224, 224) in [-1, 1] -> (N, 400) - whose
features are a fixed random projection of the pooled video. Checked: FVD of a set with itself is
~0, different sets score > 0 (more so the more they differ), too few clips give None and a
reason, bad weight files give FvdError, and the eval harness records a numeric FVD for a video system.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from jpeglm.eval.config import EvalConfig
from jpeglm.eval.fvd import FVD_FRAMES, INPUT_SIZE, FvdError, I3DFeatures, compute_fvd, fvd_or_reason, pad_frames, preprocess
from jpeglm.eval.harness import Drawn, evaluate
from jpeglm.tokenizer import ByteTokenizer

# torch >= 2.9 marks TorchScript deprecated; the real I3D weights exist only in that format
pytestmark = pytest.mark.filterwarnings("ignore:`torch.jit:DeprecationWarning")


class StandInI3D(torch.nn.Module):
    """Same call signature and output shape as StyleGAN-V's i3d_torchscript.pt; checks its input
    is what the real network expects (so a preprocessing slip fails the test)."""

    def __init__(self):
        super().__init__()
        g = torch.Generator().manual_seed(0)
        self.register_buffer("proj", torch.randn(3 * 4 * 4 * 4, 400, generator=g))

    def forward(self, x: torch.Tensor, rescale: bool = False, resize: bool = False,
                return_features: bool = False) -> torch.Tensor:
        if rescale or resize:
            raise RuntimeError("the stand-in expects prepared input (rescale=False, resize=False)")
        if x.dim() != 5 or x.shape[1] != 3 or x.shape[2] != 16 or x.shape[3] != 224 or x.shape[4] != 224:
            raise RuntimeError("expected (N, 3, 16, 224, 224)")
        if bool(x.min() < -1.0) or bool(x.max() > 1.0):
            raise RuntimeError("expected values in [-1, 1]")
        pooled = torch.nn.functional.adaptive_avg_pool3d(x, [4, 4, 4]).flatten(1)
        logits = torch.tanh(pooled @ self.proj)
        return logits if return_features else torch.softmax(logits, dim=1)


@pytest.fixture(scope="module")
def weights(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("i3d") / "i3d_standin.pt"
    torch.jit.save(torch.jit.script(StandInI3D()), str(path))
    return path


def clips(n: int, seed: int, shift: float = 0.0, frames: int = 15, h: int = 36, w: int = 64) -> list[np.ndarray]:
    """Smooth random clips (blocky colour fields that drift over time), brightened by `shift`."""
    rng = np.random.default_rng(seed)
    out = []
    for _ in range(n):
        base = rng.uniform(0, 200, (4, 4, 3))
        drift = rng.uniform(-3, 3, (4, 4, 3))
        c = np.stack([np.kron(base + t * drift, np.ones((h // 4, w // 4, 1))) for t in range(frames)]) + shift
        out.append(np.clip(c, 0, 255).astype(np.uint8))
    return out


def test_preprocess_pads_to_16_frames_and_224(weights):
    c = clips(1, 0)[0]
    padded = pad_frames(c)
    assert padded.shape[0] == FVD_FRAMES and (padded[15] == c[14]).all() and (padded[:15] == c).all()
    assert (pad_frames(np.concatenate([c, c])) == np.concatenate([c, c[:1]])).all()  # longer clips: first 16 kept
    x = preprocess([c, c])
    assert x.shape == (2, 3, FVD_FRAMES, INPUT_SIZE, INPUT_SIZE) and x.dtype == torch.float32
    assert -1.0 <= float(x.min()) and float(x.max()) <= 1.0
    flat = np.full((15, 8, 8, 3), 255, np.uint8)
    assert torch.allclose(preprocess([flat]), torch.ones(1))  # 255 -> 1.0 exactly


def test_fvd_of_a_set_with_itself_is_zero_and_differs_otherwise(weights):
    net = I3DFeatures(weights)
    assert len(net.sha256) == 64
    real = clips(6, 1)
    same = compute_fvd(real, real, net, batch_size=4)
    assert same.value == pytest.approx(0.0, abs=1e-6)
    assert same.n_real == same.n_fake == 6 and same.reason == ""
    assert "16 frames" in same.frames and "15 frames" in same.frames and "224x224" in same.resize
    near = compute_fvd(real, clips(6, 2), net).value  # another draw of the same distribution
    far = compute_fvd(real, clips(6, 2, shift=50.0), net).value  # the same draw, much brighter
    assert 0 < near < far


def test_too_few_clips_give_none_with_reason(weights):
    net = I3DFeatures(weights)
    res = compute_fvd(clips(3, 0), clips(1, 1), net)
    assert res.value is None and "at least 2 clips" in res.reason and res.n_fake == 1
    assert fvd_or_reason(str(weights), clips(3, 0), []) == (None, res.reason.replace("1 generated", "0 generated"))


def test_missing_or_bad_weights_are_a_clear_error(tmp_path):
    with pytest.raises(FvdError, match="does not exist"):
        I3DFeatures(tmp_path / "nope.pt")
    state_dict = tmp_path / "i3d_pretrained_400.pt"
    torch.save({"w": torch.zeros(3)}, state_dict)  # a plain state dict, not TorchScript
    with pytest.raises(FvdError, match="TorchScript"):
        I3DFeatures(state_dict)
    value, reason = fvd_or_reason(str(tmp_path / "nope.pt"), clips(2, 0), clips(2, 1))
    assert value is None and "does not exist" in reason
    skipped = (None, "I3D weights not supplied (set i3d_weights); FVD skipped")
    assert fvd_or_reason(None, clips(2, 0), clips(2, 1)) == skipped


def test_wrong_call_signature_is_a_clear_error(tmp_path):
    class NoKwargs(torch.nn.Module):
        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return x.flatten(1)[:, :400]

    path = tmp_path / "other.pt"
    torch.jit.save(torch.jit.script(NoKwargs()), str(path))
    with pytest.raises(FvdError, match="failed on a"):
        I3DFeatures(path).features(clips(2, 0))


def test_harness_records_fvd_for_a_video_system(tmp_path, weights):
    """The video stand-in of tests/test_eval.py, with i3d_weights set: a system that answers with the
    held-out clips themselves scores FVD ~0; one that answers with darkened clips scores > 0."""
    from jpeglm.codecs.avc import AvcCodec
    from jpeglm.video import builtin_clip, write_video

    vids = tmp_path / "videos"
    vids.mkdir()
    clip = builtin_clip()
    write_video(clip, vids / "a.mp4")
    write_video(clip[:, ::-1].copy(), vids / "b.mp4")
    codec = AvcCodec()

    class FakeVideo:
        def __init__(self, darken: int):
            self.codec, self.darken = codec, darken

        def sample(self, prompts, num_samples, seed):
            reals = [codec.prepare(vids / "a.mp4"), codec.prepare(vids / "b.mp4")]
            return [Drawn((reals[i % 2] // self.darken).astype(np.uint8), "ok", "", seed + i, i, 50,
                          {"decoded_frames": 15, "expected_frames": 15}) for i in range(len(prompts) * num_samples)]

        def token_ids(self, symbols):
            return ByteTokenizer().encode(symbols)

        def nll(self, ids):
            return float(len(ids))

    cfg = EvalConfig(systems=[{"name": "same", "checkpoint": "-"}, {"name": "dark", "checkpoint": "-"}],
                     videos=str(vids), out=str(tmp_path / "out"), num_images=2, prompt_ratios=[0.5],
                     unconditional=False, num_samples=1, device="cpu", strip_prompts=1, strip_samples=1,
                     i3d_weights=str(weights), bpb=False)
    res = evaluate(cfg, systems={"same": FakeVideo(1), "dark": FakeVideo(2)})
    rows = {s["name"]: s["rows"][0] for s in res["systems"]}
    assert rows["same"]["fvd_reason"] == "" and rows["same"]["fvd"] == pytest.approx(0.0, abs=1e-6)
    assert rows["dark"]["fvd_reason"] == "" and rows["dark"]["fvd"] > 1e-3
