"""Reference statistics, running sums, precision / recall and the JPEG XL column.

The feature network is the TorchScript stand-in of tests/eval_standins.py (milliseconds per image);
the statistics, the Fréchet distance, the files and the CLI are the real ones."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
from PIL import Image

sys.path.insert(0, str(Path(__file__).resolve().parent))

from eval_standins import StandIn, feature_net
from jpeglm.eval import featstats as S
from jpeglm.eval.fid import FID, frechet_distance


@pytest.fixture(scope="module")
def net(tmp_path_factory):
    d = tmp_path_factory.mktemp("net")
    return feature_net(d / "a.pt"), feature_net(d / "b.pt", seed=1)


@pytest.fixture(scope="module")
def folders(tmp_path_factory, photos):
    """Two folders of 64x64 squares (the eval prepares them unchanged): crops of the photos, and the same under noise."""
    d = tmp_path_factory.mktemp("fidstats")
    rng = np.random.default_rng(0)
    for name, noise in (("real", 0), ("fake", 60)):
        (d / name).mkdir()
        for i in range(24):
            a = np.asarray(photos[i % len(photos)].resize((96, 96)))[i % 3 * 8 : i % 3 * 8 + 64, 16:80]
            a = np.clip(a + rng.normal(0, noise, a.shape), 0, 255).astype(np.uint8) if noise else a
            Image.fromarray(np.ascontiguousarray(a)).save(d / name / f"{i:03d}.png")
    return d


def test_running_stats_and_frechet_from_stats_match_the_feature_path():
    rng = np.random.default_rng(0)
    a, b = rng.normal(size=(300, 40)), rng.normal(0.3, 1.2, size=(200, 40))
    st = S.RunningStats(40)
    for s in range(0, 300, 37):
        st.add(a[s : s + 37])
    np.testing.assert_allclose(st.mean, a.mean(0), rtol=0, atol=1e-12)
    np.testing.assert_allclose(st.sigma, np.cov(a, rowvar=False), rtol=0, atol=1e-12)
    sb = S.RunningStats(40)
    sb.add(b)
    got = S.frechet_from_stats(st.mean, st.sigma, sb.mean, sb.sigma)
    assert got == pytest.approx(frechet_distance(a, b, project=False), rel=1e-9)
    # singular covariances (fewer vectors than dimensions): the stats-space projection is exact
    a, b = rng.normal(size=(12, 300)), rng.normal(0.2, 1.0, size=(9, 300))
    sa, sb = S.RunningStats(300), S.RunningStats(300)
    sa.add(a)
    sb.add(b)
    assert S.frechet_from_stats(sa.mean, sa.sigma, sb.mean, sb.sigma) == pytest.approx(frechet_distance(a, b), rel=1e-7)
    assert S.frechet_from_stats(sa.mean, sa.sigma, sa.mean, sa.sigma) == pytest.approx(0, abs=1e-8)
    exact = S.frechet_from_features(a, b)
    assert S.frechet_from_stats(sa.mean, sa.sigma, sb.mean, sb.sigma) == pytest.approx(exact, rel=1e-11)


def test_precision_recall_against_brute_force(tmp_path):
    rng = np.random.default_rng(1)
    real, fake = rng.normal(size=(60, 8)), rng.normal(0.8, 1.0, size=(50, 8))

    def brute(x, y, k=3):
        dxx = np.linalg.norm(x[:, None] - x[None], axis=-1)
        r = np.sort(dxx, 1)[:, k]
        dyx = np.linalg.norm(y[:, None] - x[None], axis=-1)
        return float(np.mean((dyx <= r[None]).any(1)))

    p, r = S.precision_recall(real, fake, k=3, block=16)
    assert p == pytest.approx(brute(real, fake)) and r == pytest.approx(brute(fake, real))
    assert 0 < p < 1 and 0 < r < 1
    # from .npy files read in blocks: the same numbers
    np.save(tmp_path / "r.npy", real.astype(np.float32))
    np.save(tmp_path / "f.npy", fake.astype(np.float32))
    assert S.precision_recall(S.FeatureFile(tmp_path / "r.npy"), S.FeatureFile(tmp_path / "f.npy"), block=7) == (p, r)
    assert S.precision_recall(real, real)[0] == 1.0


def _fid_cli(*argv):
    import argparse

    from jpeglm.cli import fid as cli

    p = argparse.ArgumentParser()
    cli.add_arguments(p)
    return cli.run(p.parse_args([str(a) for a in argv]))


def test_save_stats_then_fid_against_them_equals_fid_of_the_folder(tmp_path, folders, net, capsys):
    a, b = net
    ref = tmp_path / "ref.npz"
    assert _fid_cli("--save-stats", ref, folders / "real", "--weights", a, "--device", "cpu") == 0
    with np.load(ref, allow_pickle=False) as z:
        assert z["mu"].shape == (2048,) and z["sigma"].shape == (2048, 2048) and int(z["count"]) == 24
        assert str(z["network_sha256"]) == FID(device="cpu", network_path=a).network_sha256
        assert "tf1-bilinear" in str(z["resize"])
    capsys.readouterr()
    js1, js2 = tmp_path / "1.json", tmp_path / "2.json"
    assert _fid_cli(folders / "real", folders / "fake", "--weights", a, "--device", "cpu", "--json", js1) == 0
    assert _fid_cli(ref, folders / "fake", "--weights", a, "--device", "cpu", "--json", js2) == 0
    f1, f2 = json.loads(js1.read_text()), json.loads(js2.read_text())
    assert f1["value"] > 1 and abs(f1["value"] - f2["value"]) <= 1e-6 * f1["value"]
    assert f2["n_real"] == 24 and f2["n_fake"] == 24
    # another network: refused, both sha256 named
    capsys.readouterr()
    assert _fid_cli(ref, folders / "fake", "--weights", b, "--device", "cpu") == 2
    err = capsys.readouterr().err
    sha_a, sha_b = (FID(device="cpu", network_path=w).network_sha256 for w in (a, b))
    assert sha_a in err and sha_b in err and "another feature network" in err
    # another resize: refused, both named
    with np.load(ref, allow_pickle=False) as z:
        data = {k: z[k] for k in z.files}
    data["resize"] = np.array("pil-bicubic to 299x299")
    np.savez(tmp_path / "other.npz", **data)
    assert _fid_cli(tmp_path / "other.npz", folders / "fake", "--weights", a, "--device", "cpu") == 2
    err = capsys.readouterr().err
    assert "pil-bicubic" in err and "tf1-bilinear" in err
    assert _fid_cli(tmp_path / "1.json", folders / "fake", "--weights", a) == 2  # not an .npz: one line
    assert "not a readable .npz" in capsys.readouterr().err


def test_eval_reference_stats_give_the_folder_fid(tmp_path, folders, net):
    from jpeglm.eval.config import EvalConfig
    from jpeglm.eval.harness import evaluate

    a, _ = net
    ref = tmp_path / "ref.npz"
    assert _fid_cli("--save-stats", ref, folders / "real", "--weights", a, "--device", "cpu", "--image-size", 64) == 0
    rows = {}
    for name, reference in (("plain", None), ("ref", str(ref))):
        cfg = EvalConfig(systems=[{"name": "s", "checkpoint": "-"}], images=str(folders / "real"), out=str(tmp_path / name),
                         num_images=24, image_size=64, prompt_ratios=[0.5], unconditional=False, num_samples=1,
                         device="cpu", fid_weights=a, reference=reference, bpb=False)
        res = evaluate(cfg, systems={"s": StandIn(str(folders / "real"), 64)})
        rows[name] = res["systems"][0]["rows"][0]
        assert rows[name]["precision"] is not None  # against the held-out features in both
    assert abs(rows["plain"]["fid"] - rows["ref"]["fid"]) <= 1e-9 * rows["plain"]["fid"]  # both exact
    assert rows["plain"]["precision"] == rows["ref"]["precision"]
    assert json.loads((tmp_path / "ref" / "report.json").read_text())["settings"]["reference statistics"]["count"] == 24


def test_jxl_column(monkeypatch, tmp_path):
    from jpeglm.eval import classical
    from jpeglm.eval.harness import _bpb_item, _combine_bpb

    from jpeglm.codecs.jpeg import JpegCodec, JpegParams

    codec = JpegCodec(JpegParams(size=64))
    monkeypatch.setenv("JPEGLM_CJXL", str(tmp_path / "no-such-cjxl"))
    assert classical.jxl_reason(".jpg").startswith("not measured: cjxl not found")
    assert classical.jxl_reason(".png").startswith("not measured: the samples are not JPEG")
    monkeypatch.delenv("JPEGLM_CJXL")
    if classical.cjxl_path() is None:
        pytest.skip("cjxl (libjxl-tools) not installed")
    system = SimpleNamespace(codec=codec, token_ids=lambda s: [1] + list(s) + [2], nll=lambda ids: float(len(ids)))
    rng = np.random.default_rng(0)
    pics = [np.asarray(Image.fromarray(rng.integers(0, 255, (4, 4, 3), dtype=np.uint8)).resize((64, 64), Image.BILINEAR))
            for _ in range(2)]
    out = _combine_bpb([_bpb_item(system, p, jxl=True) for p in pics])
    files = [codec.to_file(codec.encode(Image.fromarray(p))) for p in pics]
    jxl = [classical.jxl_recompressed_bytes(f) for f in files]
    assert out["jxl_bytes_per_image"] == pytest.approx(np.mean(jxl)) and 0 < min(jxl)
    modelled = sum(codec.stream_bytes(codec.encode(Image.fromarray(p))) for p in pics)
    assert out["jxl_bpb"] == pytest.approx(8 * sum(jxl) / modelled)  # a 64x64 file is mostly container: > 8 here
