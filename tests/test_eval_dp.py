"""Eval across processes and across a kill: the same files and numbers for 1 and 2 processes (gloo on
CPU, launched by torchrun), a run killed with -9 resumes without redrawing, a rank that dies stops
the others with a clear error. The systems and the feature network are stand-ins
(tests/eval_standins.py) so each run takes seconds; the harness, sampling plan, stores, FID,
precision/recall and report are the real ones."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import yaml

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

from eval_standins import StandIn, feature_net

SIZE = 32


def _env():
    env = dict(os.environ, OMP_NUM_THREADS="1", HF_HUB_OFFLINE="1", PYTHONWARNINGS="ignore")
    for k in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT"):
        env.pop(k, None)
    return env


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def setup(tmp_path_factory, photos):
    d = tmp_path_factory.mktemp("dp")
    held = d / "heldout"
    held.mkdir()
    for i, im in enumerate(photos[:6]):
        im.save(held / f"img_{i:02d}.png")
    net = feature_net(d / "net.pt")

    def config(name: str, **extra) -> Path:
        cfg = {"systems": [{"name": "a", "checkpoint": "-"}, {"name": "b", "checkpoint": "-"}], "images": str(held),
               "out": str(d / name), "num_images": 6, "image_size": SIZE, "prompt_ratios": [0.5], "unconditional": True,
               "num_samples": 2, "num_unconditional": 7, "sampler": {"batch_size": 2}, "device": "cpu",
               "fid_weights": net, "strip_prompts": 2, "strip_samples": 2, **extra}
        p = d / f"{name}.yaml"
        p.write_text(yaml.safe_dump(cfg))
        return p

    return d, config


def _run_inprocess(cfg_path: Path, **kw) -> dict:
    from jpeglm.eval.config import EvalConfig
    from jpeglm.eval.harness import evaluate

    from jpeglm.config import load_config

    cfg = load_config(EvalConfig, cfg_path)
    systems = {s.name: StandIn(cfg.images, cfg.image_size, noise=20.0 + 30 * i, **kw) for i, s in enumerate(cfg.systems)}
    return evaluate(cfg, systems=systems)


def _numbers(report: dict, out: Path) -> str:
    """report.json without what may differ between equal runs: the start time, timings, the folder."""
    r = json.loads(json.dumps(report))
    r.pop("created", None)
    r.pop("report_files", None)
    for s in r["systems"]:
        for row in s["rows"]:
            row.pop("seconds_per_image")
    return json.dumps(r, sort_keys=True).replace(str(out), "OUT")


def _files(out: Path) -> dict[str, bytes]:
    """Every sample file of a run; sidecars without their timing."""
    got = {}
    for p in sorted((out / "systems").rglob("*")):
        if p.is_file() and not p.name.startswith("."):
            data = p.read_bytes()
            if p.suffix == ".json" and p.stem.isdigit():
                side = json.loads(data)
                side.pop("seconds", None)
                data = json.dumps(side, sort_keys=True).encode()
            got[str(p.relative_to(out))] = data
    return got


@pytest.fixture(scope="module")
def one(setup):
    d, config = setup
    rep = _run_inprocess(config("one"))
    return rep, d / "one"


def test_one_process_writes_samples_features_and_the_adm_npz(one):
    rep, out = one
    a = {r["setting"]: r for r in rep["systems"][0]["rows"]}
    assert a["ratio=0.5"]["n_samples"] == 12 and a["unconditional"]["n_samples"] == 7
    assert a["ratio=0.5"]["fid"] > 0 and 0 <= a["ratio=0.5"]["precision"] <= 1 and 0 <= a["ratio=0.5"]["recall"] <= 1
    d = out / "systems" / "a" / "ratio_0.5"
    arr = np.load(d / "samples.npz")["arr_0"]
    assert arr.shape == (12, SIZE, SIZE, 3) and arr.dtype == np.uint8
    from PIL import Image

    assert (np.asarray(Image.open(d / "00003.png")) == arr[3]).all()
    side = json.loads((d / "00003.json").read_text())
    assert side["seed"] == 3 and side["prompt_index"] == 1 and side["status"] in ("ok", "repaired")
    assert np.load(d / "features" / "00003.npy").shape == (1, 2048)
    m = json.loads((d / "manifest.json").read_text())
    assert [s["seed"] for s in m["samples"]] == list(range(12))
    assert len(m["fid"]["network_sha256"]) == 64


def test_two_processes_give_the_same_files_and_report(setup, one):
    rep1, out1 = one
    d, config = setup
    cfg2 = config("two")
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_addr", "127.0.0.1",
           "--master_port", str(_free_port()), str(HERE / "eval_standins.py"), "run", str(cfg2)]
    proc = subprocess.run(cmd, env=_env(), capture_output=True, text=True, timeout=600, check=False)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert '"rank": "1", "report": null' in proc.stdout and '"rank": "0", "report": {' in proc.stdout
    out2 = d / "two"
    rep2 = json.loads((out2 / "report.json").read_text())
    # the chunks of a setting alternate between the ranks: the same bytes as one process wrote
    assert _files(out1) == _files(out2)
    assert _numbers(rep1, out1) == _numbers(rep2, out2)
    assert rep1["systems"][0]["rows"][0]["fid"] == rep2["systems"][0]["rows"][0]["fid"]


def test_killed_run_resumes_without_redrawing(setup, one):
    rep1, out1 = one
    d, config = setup
    cfg = config("killed")
    log = d / "killed-seeds.txt"
    cmd = [sys.executable, str(HERE / "eval_standins.py"), "run", str(cfg), "--sleep", "0.4", "--log", str(log)]
    proc = subprocess.Popen(cmd, env=_env(), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    out = d / "killed"
    deadline = time.time() + 240
    try:
        while time.time() < deadline and len(list((out / "systems").rglob("0*.json"))) < 5:
            time.sleep(0.2)
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait()
    done = sorted((out / "systems").rglob("0*.json"))
    assert 5 <= len(done) < 2 * (12 + 7), "kill it mid-run"
    before = {p: (p.stat().st_mtime_ns, p.with_suffix(".png").stat().st_mtime_ns) for p in done}
    first = log.read_text().split()
    log.unlink()
    rep = _run_inprocess(cfg, log=str(log))
    again = log.read_text().split()
    # every unfinished sample is drawn once more, no finished one, and no finished file is rewritten
    assert len(again) == 2 * (12 + 7) - len(done) and len(first) >= len(done)
    assert before == {p: (p.stat().st_mtime_ns, p.with_suffix(".png").stat().st_mtime_ns) for p in done}
    assert _files(out) == _files(out1)
    assert _numbers(rep, out) == _numbers(rep1, out1)


def test_a_rank_that_dies_stops_the_other_with_a_clear_error(tmp_path):
    env = dict(_env(), WORLD_SIZE="2", MASTER_ADDR="127.0.0.1", MASTER_PORT=str(_free_port()), DIE_TIMEOUT="15")
    procs = [subprocess.Popen([sys.executable, str(HERE / "eval_standins.py"), "die"], env=dict(env, RANK=str(r)),
                              stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True) for r in (0, 1)]
    outs = [p.communicate(timeout=120)[0] for p in procs]
    assert procs[1].returncode == 3
    assert procs[0].returncode == 4, outs[0][-2000:]
    assert "another process stopped or timed out" in outs[0] and "rerun the same command to resume" in outs[0]


def test_other_protocol_in_the_same_folder_is_refused(setup, one):
    _, config = setup
    cfg = config("one", num_samples=3)
    with pytest.raises(ValueError, match="another protocol.*num_samples"):
        _run_inprocess(cfg)


@pytest.mark.slow
def test_jpeglm_sample_two_processes_write_the_same_files(tmp_path, photo_dir):
    prompts = [str(p) for p in sorted(photo_dir.iterdir())[:2]]
    script = [str(HERE / "eval_standins.py"), "sample"]
    one = subprocess.run([sys.executable, *script, str(tmp_path / "one"), "--prompt", *prompts], env=_env(),
                         capture_output=True, text=True, timeout=300, check=False)
    assert one.returncode == 0, one.stderr[-2000:]
    two = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_addr",
                          "127.0.0.1", "--master_port", str(_free_port()), *script, str(tmp_path / "two"), "--prompt",
                          *prompts], env=_env(), capture_output=True, text=True, timeout=300, check=False)
    assert two.returncode == 0, two.stderr[-3000:]
    names = sorted(p.name for p in (tmp_path / "one").glob("*.jpg"))
    assert names == ["p000_s000.jpg", "p000_s001.jpg", "p001_s000.jpg", "p001_s001.jpg"]
    for n in names:
        assert (tmp_path / "one" / n).read_bytes() == (tmp_path / "two" / n).read_bytes(), n
    m1, m2 = (json.loads((tmp_path / d / "manifest.json").read_text()) for d in ("one", "two"))
    assert [(f["seed"], f["prompt_index"]) for f in m1["files"]] == [(f["seed"], f["prompt_index"]) for f in m2["files"]]
