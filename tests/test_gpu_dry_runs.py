"""The prepared GPU runs work before a GPU is ever lent: the dry runs of results/pets/gpu.sh (issue 20)
and bench/gpu/run.sh (issue 14.3) on this CPU at tiny sizes, in this process (imports and DeepSpeed's
start-up paid once), with their outputs checked: the files exist, parse and decode. The same steps on a
GPU, at the dry sizes, carry the `gpu` marker."""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

ROOT = Path(__file__).resolve().parents[1]


def _load(path: Path, name: str):
    spec = importlib.util.spec_from_file_location(name, path)
    mod = importlib.util.module_from_spec(spec)
    sys.modules[name] = mod
    spec.loader.exec_module(mod)
    return mod


def _pets_modules():
    sys.path.insert(0, str(ROOT / "results" / "pets"))
    return [_load(ROOT / "results" / "pets" / f"{n}.py", n) for n in ("gpu_prepare", "gpu_run", "gpu_score")]


@pytest.fixture(scope="module")
def pets_like(photos, tmp_path_factory) -> Path:
    """../shared/data/pets when it is here, else a stand-in of its layout from scikit-image's photos
    (so the dry run runs in CI too): train/ = the 6 photos and their mirror images, test/ = 3 crops.
    JPEGLM_TEST_NO_PETS=1 takes the stand-in even where the pets are."""
    from conftest import PETS
    from PIL import ImageOps

    if os.environ.get("JPEGLM_TEST_NO_PETS") is None and (PETS / "train").is_dir() and (PETS / "test").is_dir():
        return PETS
    root = tmp_path_factory.mktemp("pets-like")
    (root / "train").mkdir()
    (root / "test").mkdir()
    for i, im in enumerate(photos):
        im.save(root / "train" / f"{i:02d}.png")
        ImageOps.mirror(im).save(root / "train" / f"{i:02d}m.png")
    for i, im in enumerate(photos[:3]):
        w, h = im.size
        im.crop((w // 4, h // 4, w, h)).save(root / "test" / f"{i:02d}.png")
    return root


@pytest.fixture(scope="module")
def pets_dry(pets_like, tmp_path_factory):
    pets_dir = pets_like
    prepare, run, score = _pets_modules()
    work = tmp_path_factory.mktemp("pets-gpu-dry")
    assert prepare.main(["--dry-run", "--pets", str(pets_dir), "--work", str(work), "--wheels", str(work / "none")]) == 0
    assert run.main(["--dry-run", "--prepared", str(work / "prepared"), "--out", str(work / "gpu-out"), "--workers", "1"]) == 0
    assert score.main(["--dry-run", "--pets", str(pets_dir), "--work", str(work), "--gpu-out", str(work / "gpu-out")]) == 0
    return work


def test_pets_dry_run_prepares_what_travels(pets_dry):
    plan = json.loads((pets_dry / "prepared" / "plan.json").read_text())
    assert plan["dry_run"] and plan["photos"] == plan["plan"]["train_limit"] and len(plan["test"]) == plan["plan"]["num_test"]
    assert (pets_dry / "prepared" / "data" / "jpeg" / "manifest.json").is_file()
    assert (pets_dry / "prepared" / "data" / "jpeg" / "tokenizer").is_dir()
    assert (pets_dry / "prepared" / "palette.npz").is_file()


def test_pets_dry_run_brings_back_at_most_8_small_files(pets_dry):
    files = sorted(p.name for p in (pets_dry / "gpu-out").iterdir())
    assert files == ["samples-jpeg.npz", "samples-pixel.npz", "samples-vq.npz", "timings.json", "train-logs.json"]
    assert all((pets_dry / "gpu-out" / f).stat().st_size < 16 * 2**20 for f in files)
    t = json.loads((pets_dry / "gpu-out" / "timings.json").read_text())
    assert {"vq_train_s", "vq_pixel_prep_s", "train_s", "nll_s", "sample_s", "total_s"} <= set(t)
    assert set(t["train_s"]) == {"jpeg", "vq", "pixel"} and not t.get("skipped")
    logs = json.loads((pets_dry / "gpu-out" / "train-logs.json").read_text())
    assert {k: v["log"][-1]["step"] for k, v in logs.items()} == {"jpeg": 2, "vq": 2, "pixel": 2}


def test_pets_dry_run_samples_decode_and_are_scored(pets_dry):
    score = sys.modules["gpu_score"]
    meta, arrays = score.unpack(pets_dry / "gpu-out" / "samples-jpeg.npz", pets_dry / "check")
    assert meta["symbol_kind"] == "bytes" and [s["k"] for s in sorted(meta["settings"], key=lambda s: s["k"])] == [0, 1, 2, 3]
    sys_ = score.ReplaySystem("jpeg-bpe", meta, arrays, pets_dry / "check", 0)
    drawn = sys_.sample(None, 2, 3 * 100_000)  # the unconditional setting
    assert len(drawn) == 2 and all(d.media.shape == (64, 64, 3) for d in drawn)
    pub = pets_dry / "published"
    res = json.loads((pub / "results.json").read_text())
    assert [s["name"] for s in res["systems"]] == ["jpeg-bpe", "vq-lfq", "pixel"]
    for s in res["systems"]:
        assert [r["setting"] for r in s["rows"]] == ["ratio=0.25", "ratio=0.5", "ratio=0.75", "unconditional"]
        assert all(r["n_samples"] == 2 and r["seconds_per_image"] is not None for r in s["rows"]), s["rows"]
        assert s["bpb"] is not None and s["training"]["log"]
    assert any(r["fid"] is not None for s in res["systems"] for r in s["rows"])
    md = (pub / "report.md").read_text()
    assert "DRY RUN" in md and "## Training" in md and "## Where the GPU's minutes went" in md
    assert (pub / "commands.txt").is_file() and (pub / "eval-config.yaml").is_file()


def test_pets_score_refuses_a_pack_with_an_escaping_file_name(pets_dry, tmp_path):
    score = sys.modules["gpu_score"]
    bad = tmp_path / "samples-x.npz"
    np.savez(bad, meta=np.frombuffer(b"{}", np.uint8), **{"f_..__evil": np.zeros(1, np.uint8)})
    with pytest.raises(score.PackError, match="plain relative path"):
        score.unpack(bad, tmp_path / "x")


def test_gpu_scripts_parse_and_say_what_they_need():
    for s in ("results/pets/gpu.sh", "bench/gpu/run.sh", "bench/gpu/make_wheels.sh", "bench/gpu/site.sh"):
        subprocess.run(["bash", "-n", str(ROOT / s)], check=True)
    r = subprocess.run(["bash", str(ROOT / "bench/gpu/run.sh")], capture_output=True, text=True, check=False)
    assert r.returncode == 2 and "--out DIR is required" in r.stderr


@pytest.fixture(scope="module")
def bench_dry(tmp_path_factory):
    bench = _load(ROOT / "bench" / "gpu" / "bench.py", "gpu_bench")
    out = tmp_path_factory.mktemp("gpu-bench")
    assert bench.main(["--dry-run", "--out", str(out), "--work", str(out / "work")]) == 0
    return json.loads((out / "bench.json").read_text())


def test_bench_dry_run_writes_the_figures(bench_dry):
    assert bench_dry["dry_run"] and {"sampling", "training", "total_s"} <= set(bench_dry)
    variants = {(r["variant"], r["batch"]) for r in bench_dry["sampling"]}
    assert variants == {(v, b) for v in ("ours constrained", "ours unconstrained", "generate() static") for b in (1, 2)}
    assert all(r["new_tokens"] == 4 * r["batch"] for r in bench_dry["sampling"])
    (t,) = bench_dry["training"]
    assert t["tokens_per_s"] > 0 and t["mfu_nominal"] > 0 and t["steps"] == 3


@pytest.mark.gpu
def test_bench_on_a_gpu_measures_bandwidth_and_roofline(tmp_path):
    bench = _load(ROOT / "bench" / "gpu" / "bench.py", "gpu_bench")
    p = dict(bench.PLANS["dry"], dtype="bf16")
    bw = bench.bandwidth("cuda")
    rows = bench.sampling(p, "cuda", bw)
    assert bw > 1e11 and all(r.get("roofline_tokens_per_s") for r in rows if r["batch"] == 1)


def test_pets_replay_tolerates_one_odd_prompt_and_refuses_other_prompts(pets_dry):
    from jpeglm.eval.harness import as_media, load_heldout_images

    score = sys.modules["gpu_score"]
    meta, arrays = score.unpack(pets_dry / "gpu-out" / "samples-vq.npz", pets_dry / "check-vq")
    rs = score.ReplaySystem("vq-lfq", meta, arrays, pets_dry / "check-vq", 0)
    reals, _, _ = load_heldout_images(str(pets_dry / "prepared" / "test"), 2, 64)
    prompts = [rs.codec.prompt(rs.codec.encode(as_media(r)), 0.5) for r in reals]
    assert len(rs.sample(prompts, 1, 100_000)) == 2 and rs.prompt_mismatches[1] == 0
    odd = [prompts[0], (prompts[1] + 1) % rs.codec.num_codes]
    assert len(rs.sample(odd, 1, 100_000)) == 2 and rs.prompt_mismatches[1] == 1
    with pytest.raises(score.PackError, match="other prompts"):
        rs.sample(prompts[::-1], 1, 100_000)
