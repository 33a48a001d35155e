"""VQ baseline: LFQ bits and entropy terms, cosine VQ usage/restarts, a tiny training run that
learns, the checkpoint format and the VqCodec contract (repairs, prompts, config round trip)."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch

from jpeglm.codecs.base import codec_from_config
from jpeglm.codecs.vq import VqCheckpointError, VqCodec
from jpeglm.media import MediaError
from jpeglm.codecs.vq_model import LFQ, CosineVQ, VqAutoencoder, VqModelConfig, lfq_bits_to_indices, lfq_indices_to_bits
from jpeglm.baselines.vq_train import VqConfig, VqTrainConfig, evaluate, train

TINY = dict(image_size=64, channels=8, channel_mult=(1, 2, 2), num_res_blocks=1, codebook_bits=8, entropy_group_bits=4)


@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    # On a shared 2-core CI box two intra-op threads fight other jobs and run 10x slower than one.
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


# --- LFQ ----------------------------------------------------------------------------------------
def test_lfq_index_bits_round_trip():
    idx = torch.arange(2**10)
    bits = lfq_indices_to_bits(idx, 10)
    assert bits.shape == (1024, 10) and bits.dtype == torch.bool
    assert torch.equal(lfq_bits_to_indices(bits), idx)
    assert bits[5].tolist()[:3] == [True, False, True]  # bit i = dimension i (little-endian)
    big = torch.randint(0, 2**18, (1000,))
    assert torch.equal(lfq_bits_to_indices(lfq_indices_to_bits(big, 18)), big)


def test_lfq_forward_signs_indices_and_straight_through():
    q = LFQ(bits=6, group_bits=3, temperature=0.1)
    z = torch.randn(2, 6, 4, 4, requires_grad=True)
    out, idx, aux = q(z)
    assert torch.equal(out.detach(), torch.where(z > 0, 1.0, -1.0))
    assert torch.equal(q.indices_to_latent(idx), out.detach())
    assert idx.shape == (2, 4, 4) and int(idx.max()) < 64
    out.sum().backward()
    assert torch.allclose(z.grad, torch.ones_like(z))  # straight-through: identity gradient
    assert aux["commitment"] > 0


def test_lfq_entropy_terms_range_and_meaning():
    q = LFQ(bits=8, group_bits=4, temperature=0.05)
    log_k = 8 * math.log(2)
    torch.manual_seed(0)
    # confident and diverse: random signs far from 0
    diverse = torch.sign(torch.randn(4096, 8)) * 3
    ps, cb = q.entropy_terms(diverse)
    assert 0 <= ps < 0.01 * log_k and log_k * 0.97 < cb <= log_k + 1e-4
    # confident but collapsed: every sample the same code
    collapsed = torch.ones(4096, 8) * 3
    ps2, cb2 = q.entropy_terms(collapsed)
    assert ps2 < 0.01 * log_k and cb2 < 0.01 * log_k
    # undecided: z = 0 is equally far from every code
    ps3, cb3 = q.entropy_terms(torch.zeros(16, 8))
    assert abs(ps3 - log_k) < 1e-4 and abs(cb3 - log_k) < 1e-4
    # the penalty (per-sample - codebook) prefers confident, diverse codes
    assert (ps - cb) < (ps2 - cb2) and (ps - cb) < (ps3 - cb3)
    # 2^18 codes, factorised into three sub-codebooks of 2^6 for the entropy terms
    big = LFQ(bits=18, group_bits=6, temperature=0.01)
    out, idx, aux = big(torch.randn(2, 18, 8, 8))
    assert int(idx.max()) < 2**18 and torch.equal(big.indices_to_latent(idx), out)
    assert 0 <= aux["per_sample_entropy"] <= 18 * math.log(2) and aux["codebook_entropy"] <= 18 * math.log(2) + 1e-4


def test_lfq_entropy_penalty_gradient_spreads_a_collapsed_code():
    q = LFQ(bits=6, group_bits=3, temperature=0.5)
    torch.manual_seed(0)
    z = (torch.ones(512, 6) + 0.3 * torch.randn(512, 6)).requires_grad_(True)
    opt = torch.optim.Adam([z], lr=0.05)
    ps0, cb0 = q.entropy_terms(z.detach())
    for _ in range(40):
        ps, cb = q.entropy_terms(z)
        opt.zero_grad()
        (ps - cb).backward()
        opt.step()
    ps1, cb1 = q.entropy_terms(z.detach())
    used = len(torch.unique(lfq_bits_to_indices(z.detach() > 0)))
    # codebook entropy up (towards log 64 = 4.16), per-sample entropy down, many codes in use
    assert cb1 > cb0 + 1.5 and ps1 < ps0 and used > 16


# --- cosine VQ ----------------------------------------------------------------------------------
def _clustered(n=2048, dim=4, k=8, seed=0):
    g = torch.Generator().manual_seed(seed)
    centres = torch.nn.functional.normalize(torch.randn(k, dim, generator=g), dim=1)
    pts = centres[torch.randint(k, (n,), generator=g)] + 0.05 * torch.randn(n, dim, generator=g)
    return pts.T.reshape(1, dim, n // 32, 32)  # (1, dim, H, W)


def test_vq_usage_counts_and_restart_revives_dead_codes():
    torch.manual_seed(0)
    vq = CosineVQ(num_codes=64, dim=4).train()
    z = _clustered()
    with torch.no_grad():  # codes 1..61 duplicate code 0: argmax takes the first of equals, so they are dead
        vq.embed.data[1:62] = vq.embed.data[0]
    _, idx, _ = vq(z)
    assert vq.usage.sum() == z.shape[2] * z.shape[3]
    used_before = len(torch.unique(idx))
    dead = int((vq.usage < 1).sum())
    assert used_before <= 3 and dead >= 61
    revived = vq.restart_dead_codes(threshold=1.0, generator=torch.Generator().manual_seed(0))
    assert revived == dead and vq.usage.sum() == 0
    _, idx2, _ = vq(z)
    assert len(torch.unique(idx2)) > used_before + 10
    # revived codes sit near the data: the mean cosine to the assigned code rises
    flat = torch.nn.functional.normalize(z.flatten(2)[0].T, dim=1)
    cos_before = (flat * vq.codebook()[idx.flatten()].detach()).sum(1).mean()
    assert (flat * vq.codebook()[idx2.flatten()].detach()).sum(1).mean() > max(0.95, cos_before)


def test_vq_ema_moves_codes_to_the_data_and_gradient_mode_has_codebook_loss():
    torch.manual_seed(0)
    z = _clustered(k=4, seed=1)  # not seed 0: that would draw the same centres as the init
    ema = CosineVQ(num_codes=16, dim=4, ema=True, decay=0.8).train()
    assert not ema.embed.requires_grad
    _, _, aux0 = ema(z)
    for _ in range(20):
        _, _, aux = ema(z)
    assert "codebook" not in aux and aux["commitment"] < 0.5 * aux0["commitment"]
    grad = CosineVQ(num_codes=16, dim=4).train()
    _, _, aux = grad(z)
    aux["codebook"].backward()
    assert grad.embed.grad is not None and grad.embed.grad.abs().sum() > 0


# --- model, training, checkpoints ----------------------------------------------------------------
def test_model_config_checks_and_shapes():
    cfg = VqModelConfig(**TINY)
    assert cfg.downsample == 4 and cfg.grid == 16 and cfg.num_codes == 256
    m = VqAutoencoder(cfg)
    x = torch.rand(2, 3, 64, 64) * 2 - 1
    rec, idx, _ = m(x)
    assert rec.shape == x.shape and idx.shape == (2, 16, 16)
    assert VqModelConfig(channel_mult=(1, 1, 2, 2, 4)).grid == 16 and VqModelConfig(channel_mult=(1, 2, 2, 4)).grid == 32
    with pytest.raises(ValueError, match="divide"):
        VqModelConfig(codebook_bits=14, entropy_group_bits=5)
    with pytest.raises(ValueError, match="quantizer"):
        VqModelConfig(quantizer="fsq")
    with pytest.raises(ValueError, match="1..18"):
        VqModelConfig(codebook_bits=20, entropy_group_bits=5)


def test_config_files_load():
    from pathlib import Path

    from jpeglm.config import load_config

    files = sorted((Path(__file__).resolve().parents[1] / "configs" / "vq").glob("*.yaml"))
    assert {f.name for f in files} >= {"tiny.yaml", "lfq_256.yaml", "vq_256.yaml"}
    for f in files:
        cfg = load_config(VqConfig, f)
        assert cfg.model.image_size % cfg.model.downsample == 0


def _photos_at(photos, size):
    from jpeglm.media import prepare_image

    return np.stack([np.asarray(prepare_image(p, size)) for p in photos])


@pytest.fixture(scope="module")
def trained(tmp_path_factory, photos):
    """A tiny LFQ tokenizer trained for a few dozen steps on real photos (shared by the tests)."""
    images = _photos_at(photos, 64)
    keys = [f"p{i}" for i in range(len(images))]
    cfg = VqConfig(
        model=VqModelConfig(**TINY),
        train=VqTrainConfig(batch_size=4, lr=2e-3, max_steps=80, holdout=1, eval_every=80, save_every=80, log_every=5, device="cpu", entropy_weight=0.02),
    )
    out = tmp_path_factory.mktemp("vq") / "run"
    result = train(cfg, images, keys, out_dir=out, progress=False)
    return out, result, images, keys


def test_tiny_training_lowers_reconstruction_loss(trained):
    out, result, images, keys = trained
    h = result["history"]
    rec = [r["l1"] + r["l2"] for r in h]
    assert np.mean(rec[-8:]) < 0.7 * np.mean(rec[:4])
    m = result["metrics"]
    assert m["step"] == 80 and m["psnr"] > 10 and 0 < m["usage_fraction"] <= 1 and m["perplexity"] >= 1
    # the trained net beats its own random init (over all six photos: the held-out one, ihc.png,
    # is a pale microscope slide that a gray guess already matches fairly well)
    fresh = evaluate(VqAutoencoder(VqModelConfig(**TINY)), images)
    now = evaluate(result["model"], images)
    assert now["psnr"] > 15 and now["psnr"] > fresh["psnr"] + 3
    lines = [json.loads(line) for line in (out / "log.jsonl").read_text().splitlines()]
    assert any("eval" in line for line in lines) and lines[0]["step"] == 5
    assert json.loads((out / "metrics.json").read_text())["psnr"] == pytest.approx(m["psnr"])


def test_codec_from_pretrained_encode_decode(trained, photos):
    out, result, images, _ = trained
    codec = VqCodec.from_pretrained(out)
    assert codec.num_codes == 256 and codec.bits_per_symbol() == 8.0 and codec.params.grid == 16 and codec.image_size == 64
    codes = codec.encode(photos[1])
    assert codes.dtype == np.int64 and codes.shape == (256,) and codes.max() < 256
    np.testing.assert_array_equal(codes, codec.encode(photos[1]))  # deterministic
    np.testing.assert_array_equal(codes, codec.encode_batch([photos[1], photos[2]])[0])
    img, report = codec.decode(codes)
    assert report.ok and img.shape == (64, 64, 3) and img.dtype == np.uint8
    with pytest.raises(MediaError, match="smaller than the minimum"):  # same policy as the JPEG codec
        codec.encode(photos[1].resize((40, 40)))
    ref = images[1].astype(float)
    psnr = 10 * np.log10(255**2 / ((img - ref) ** 2).mean())
    assert psnr > 12


def test_codec_decode_never_raises_and_prompt_keeps_rows(trained):
    codec = VqCodec.from_pretrained(trained[0])
    codes = codec.encode(trained[2][0])
    for garbage in ([], None, "zz", [[1], [2, 3]]):
        img, report = codec.decode(garbage)
        assert report.status == "failed" and img.shape == (64, 64, 3)
    img, report = codec.decode(codes[:40])
    assert report.status == "repaired" and "40 codes" in report.reason
    img, report = codec.decode(np.concatenate([codes, codes]))
    assert report.status == "repaired" and "512 codes" in report.reason
    np.testing.assert_array_equal(img, codec.decode(codes)[0])  # the extra codes are dropped, the picture kept
    img, report = codec.decode(np.where(np.arange(256) % 2, -3, 10**9))
    assert report.status == "repaired" and "clamped" in report.reason and img.shape == (64, 64, 3)
    p = codec.prompt(codes, 0.25)
    np.testing.assert_array_equal(p, codes[: 4 * 16])
    assert len(codec.prompt(codes, 0.5)) == 8 * 16 and len(codec.prompt(codes, 1.0)) == 256


def test_codec_config_round_trip_with_a_copied_model(trained, tmp_path):
    codec = VqCodec.from_pretrained(trained[0])
    assert Path(codec.to_config()["params"]["model_dir"]).is_absolute()
    assert codec_from_config(codec.to_config()).params == codec.params  # absolute path: no base_dir needed
    dataset = tmp_path / "dataset"
    copied = codec.copy_model(dataset)
    cfg = json.loads(json.dumps(copied.to_config()))
    assert cfg["name"] == "vq" and cfg["params"]["model_dir"] == "vq_model" and len(cfg["params"]["sha256"]) == 64
    with pytest.raises(VqCheckpointError, match="base_dir"):
        codec_from_config(cfg)  # a relative path needs the dataset dir
    again = VqCodec.from_config(cfg, base_dir=dataset)
    x = trained[2][0]
    np.testing.assert_array_equal(again.encode(x), codec.encode(x))
    assert again.to_config() == cfg
    # weights replaced under the same path: refused
    (dataset / "vq_model" / "model.safetensors").write_bytes((trained[0] / "model.safetensors").read_bytes()[:-4] + b"\0\0\0\0")
    with pytest.raises(VqCheckpointError, match="sha256"):
        VqCodec.from_config(cfg, base_dir=dataset)


def test_checkpoint_that_does_not_match_its_config_is_a_clear_error(trained, tmp_path):
    import shutil

    import yaml

    bad = tmp_path / "bad"
    shutil.copytree(trained[0], bad)
    data = yaml.safe_load((bad / "vq_config.yaml").read_text())
    data["model"]["channels"] = 16
    (bad / "vq_config.yaml").write_text(yaml.safe_dump(data))
    with pytest.raises(VqCheckpointError, match="does not match"):
        VqCodec.from_pretrained(bad)
    data["model"]["channels"] = 8
    data["model"]["quantizer"] = "vq"
    (bad / "vq_config.yaml").write_text(yaml.safe_dump(data))
    with pytest.raises(VqCheckpointError, match="does not match"):
        VqCodec.from_pretrained(bad)
    with pytest.raises(VqCheckpointError, match="not a VQ checkpoint"):
        VqCodec.from_pretrained(tmp_path / "nowhere")
    with pytest.raises(VqCheckpointError, match="from_pretrained"):
        VqCodec()


def test_vq_quantizer_trains_with_restarts(photos):
    images = _photos_at(photos, 64)
    cfg = VqConfig(
        model=VqModelConfig(**{**TINY, "quantizer": "vq", "codebook_size": 1024, "code_dim": 4}),
        train=VqTrainConfig(batch_size=4, lr=2e-3, max_steps=12, holdout=1, eval_every=12, restart_every=4, device="cpu"),
    )
    result = train(cfg, images, [f"p{i}" for i in range(len(images))], progress=False)
    restarted = [r["restarted"] for r in result["history"] if "restarted" in r]
    assert len(restarted) == 3 and restarted[0] > 0  # a fresh codebook has dead codes to revive
    assert result["metrics"]["codes_used"] > 1


def test_vq_train_cli(tmp_path, photo_dir):
    from jpeglm.cli import vq as vq_train

    out = tmp_path / "run"
    from jpeglm.cli import build_parser

    argv = ["vq", "train", "--input", str(photo_dir), "--out", str(out), "--max-steps", "3", "--device", "cpu",
            "model.image_size=64", "model.channels=8", "model.channel_mult=[1,2]", "model.num_res_blocks=1",
            "model.codebook_bits=6", "model.entropy_group_bits=3", "train.batch_size=2", "train.holdout=1"]
    args = build_parser(argv).parse_args(argv)
    assert vq_train.run(args) == 0
    assert {p.name for p in out.iterdir()} >= {"model.safetensors", "vq_config.yaml", "metrics.json", "log.jsonl"}
    assert VqCodec.from_pretrained(out).params.grid == 32
    args.overrides = ["model.no_such_key=1"]
    assert vq_train.run(args) == 2


def _random_vgg_file(path):
    """A torchvision-layout vgg16 `features` state dict with random weights (the real ones cannot
    be downloaded here; the loss plumbing is what is tested)."""
    from jpeglm.codecs.vq_model import _VGG16

    sd, cin, i = {}, 3, 0
    g = torch.Generator().manual_seed(0)
    for v in _VGG16:
        if v == "M":
            i += 1
            continue
        sd[f"features.{i}.weight"] = torch.randn(v, cin, 3, 3, generator=g) * (2 / (9 * cin)) ** 0.5
        sd[f"features.{i}.bias"] = torch.zeros(v)
        cin, i = v, i + 2
    torch.save(sd, path)
    return path


def test_adversarial_and_perceptual_terms(photos, tmp_path):
    from jpeglm.codecs.vq_model import VggPerceptual

    images = _photos_at(photos, 64)
    vgg = _random_vgg_file(tmp_path / "vgg16.pth")
    perc = VggPerceptual(str(vgg))
    x = torch.rand(2, 3, 64, 64) * 2 - 1
    assert float(perc(x, x)) == pytest.approx(0.0, abs=1e-6) and float(perc(x, -x)) > 0
    cfg = VqConfig(
        model=VqModelConfig(**TINY),
        train=VqTrainConfig(batch_size=2, max_steps=4, holdout=1, adv_start_step=2, disc_channels=8, perceptual_weights=str(vgg), device="cpu"),
    )
    h = train(cfg, images, [f"p{i}" for i in range(len(images))], progress=False)["history"]
    assert all("perceptual" in r for r in h)
    assert [("g_adv" in r, "d_loss" in r) for r in h] == [(False, False)] * 2 + [(True, True)] * 2
    bad = tmp_path / "bad.pth"
    torch.save({"classifier.0.weight": torch.zeros(1)}, bad)
    with pytest.raises(ValueError, match="vgg16"):
        VggPerceptual(str(bad))


def test_resume_matches_an_uninterrupted_run(photos, tmp_path):
    from safetensors.torch import load_file

    images = _photos_at(photos, 64)
    keys = [f"p{i}" for i in range(len(images))]

    def cfg(steps):
        return VqConfig(
            model=VqModelConfig(**{**TINY, "quantizer": "vq", "codebook_size": 256, "code_dim": 4}),
            train=VqTrainConfig(batch_size=2, max_steps=steps, holdout=1, save_every=3, eval_every=100, restart_every=2, device="cpu"),
        )

    train(cfg(6), images, keys, out_dir=tmp_path / "straight", progress=False)
    train(cfg(3), images, keys, out_dir=tmp_path / "split", progress=False)
    h = train(cfg(6), images, keys, out_dir=tmp_path / "split", progress=False, resume=True)["history"]
    assert [r["step"] for r in h] == [4, 5, 6]
    a, b = load_file(str(tmp_path / "straight" / "model.safetensors")), load_file(str(tmp_path / "split" / "model.safetensors"))
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    with pytest.raises(ValueError, match="nothing to resume"):
        train(cfg(6), images, keys, out_dir=tmp_path / "fresh", progress=False, resume=True)
    other = cfg(6)
    other.model.code_dim = 8
    with pytest.raises(ValueError, match="model config differs"):
        train(other, images, keys, out_dir=tmp_path / "split", progress=False, resume=True)
