"""Hostile and broken inputs (issue 19): nothing loaded runs code, no path leaves its folder,
nothing hangs, one bad name never stops a prep, one writer per folder, early clear errors."""

from __future__ import annotations

import json
import os
import pickle
from pathlib import Path

import numpy as np
import pytest

from jpeglm.errors import UserError


class _Boom:
    """A pickle that, when loaded, creates a file: proof that loading ran code."""

    def __init__(self, flag: str):
        self.flag = flag

    def __reduce__(self):
        return (open, (self.flag, "w"))


# ------------------------------------------------------------------------------------------
# 1. nothing loaded runs code
# ------------------------------------------------------------------------------------------
def test_safestate_round_trips_optimizer_and_rng_state(tmp_path):
    import torch

    from jpeglm.safestate import load_state, save_state

    p = torch.nn.Parameter(torch.randn(3, 2))
    opt = torch.optim.AdamW([p], lr=1e-3, betas=(0.5, 0.9))
    p.grad = torch.ones_like(p)
    opt.step()
    rng = np.random.default_rng(7)
    state = {"opt": opt.state_dict(), "np_rng": rng.bit_generator.state, "torch_rng": torch.get_rng_state(),
             "usage": None, "step": 3, "t": (1, "a")}
    save_state(tmp_path / "s.safetensors", state)
    back = load_state(tmp_path / "s.safetensors")
    assert back["step"] == 3 and back["t"] == (1, "a") and back["usage"] is None
    assert back["np_rng"] == state["np_rng"] and torch.equal(back["torch_rng"], state["torch_rng"])
    assert set(back["opt"]["state"]) == {0} and back["opt"]["param_groups"][0]["betas"] == (0.5, 0.9)
    assert torch.equal(back["opt"]["state"][0]["exp_avg"], state["opt"]["state"][0]["exp_avg"])
    opt.load_state_dict(back["opt"])
    (tmp_path / "bad.safetensors").write_bytes(b"\x10\x00\x00\x00\x00\x00\x00\x00{}garbage")
    with pytest.raises(UserError, match="bad.safetensors"):
        load_state(tmp_path / "bad.safetensors")


def test_vq_resume_never_unpickles_a_crafted_state(photos, tmp_path):
    from jpeglm.baselines.vq_train import STATE_NAME, VqConfig, VqTrainConfig, train
    from jpeglm.codecs.vq_model import VqModelConfig
    from jpeglm.media import prepare_image

    images = np.stack([np.asarray(prepare_image(p, 32)) for p in photos[:4]])
    keys = [f"p{i}" for i in range(len(images))]
    tiny = dict(image_size=32, channels=4, channel_mult=(1, 2), num_res_blocks=1, codebook_bits=4, entropy_group_bits=4)

    def cfg(steps):
        return VqConfig(model=VqModelConfig(**tiny), train=VqTrainConfig(batch_size=2, max_steps=steps, holdout=1,
                                                                          save_every=1, eval_every=100, device="cpu"))

    out = tmp_path / "run"
    train(cfg(1), images, keys, out_dir=out, progress=False)
    assert (out / STATE_NAME).is_file() and not (out / "train_state.pt").exists()
    h = train(cfg(2), images, keys, out_dir=out, progress=False, resume=True)["history"]
    assert [r["step"] for r in h] == [2]
    # an older run's pickle, crafted: loading it must not run its code
    flag = tmp_path / "pwned"
    (out / STATE_NAME).unlink()
    (out / "train_state.pt").write_bytes(pickle.dumps(_Boom(str(flag))))
    with pytest.raises(UserError, match="train_state.pt"):
        train(cfg(3), images, keys, out_dir=out, progress=False, resume=True)
    assert not flag.exists()


# ------------------------------------------------------------------------------------------
# one tiny DeepSpeed run, shared by the tests of the run directory (module scope: seconds)
# ------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def small_data(tmp_path_factory) -> Path:
    from tests.test_train import make_dataset

    return make_dataset(tmp_path_factory.mktemp("hdata") / "ds", n_train=8, n_val=2)


def _cfg(**over):
    from tests.test_train import tiny_cfg

    return tiny_cfg(**{"max_steps": 2, "ckpt_interval": 2, "deepspeed": "zero1", **over})


@pytest.fixture(scope="module")
def finished_run(tmp_path_factory, small_data) -> Path:
    import torch

    from jpeglm.train.loop import train

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        out = tmp_path_factory.mktemp("hrun") / "run"
        train(_cfg(), small_data, out)
    finally:
        torch.set_num_threads(threads)
    return out


def _copy_run(run: Path, dest: Path) -> Path:
    import shutil

    shutil.copytree(run, dest, symlinks=True)
    return dest


def test_resume_refuses_deepspeed_state_it_did_not_save(finished_run, small_data, tmp_path):
    from jpeglm.train.loop import prepare

    ds = finished_run / "ds"
    assert (ds / "latest").read_text().strip() == "step-0000002"
    assert (ds / "step-0000002" / "jpeglm_files.json").is_file()
    assert prepare(_cfg(), small_data, finished_run, resume=True).resume_from == ds / "step-0000002"

    run = _copy_run(finished_run, tmp_path / "outside")
    (tmp_path / "evil").mkdir()
    (run / "ds" / "latest").write_text("../../evil\n")
    with pytest.raises(UserError, match=r"ds/latest names '\.\./\.\./evil'"):
        prepare(_cfg(), small_data, run, resume=True)
    (run / "ds" / "latest").write_text("step-0000009\n")
    os.symlink(tmp_path / "evil", run / "ds" / "step-0000009")
    with pytest.raises(UserError, match="outside"):
        prepare(_cfg(), small_data, run, resume=True)

    run = _copy_run(finished_run, tmp_path / "changed")
    victim = max((p for p in (run / "ds" / "step-0000002").rglob("*.pt")), key=lambda p: p.stat().st_size)
    with open(victim, "ab") as f:
        f.write(b"extra")
    with pytest.raises(UserError, match=f"not what this run saved: {victim.name}"):
        prepare(_cfg(), small_data, run, resume=True)
    run = _copy_run(finished_run, tmp_path / "norecord")
    (run / "ds" / "step-0000002" / "jpeglm_files.json").unlink()
    with pytest.raises(UserError, match="jpeglm_files.json: missing"):
        prepare(_cfg(), small_data, run, resume=True)
