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
    tiny = {"image_size": 32, "channels": 4, "channel_mult": (1, 2), "num_res_blocks": 1, "codebook_bits": 4,
            "entropy_group_bits": 4}

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


# ------------------------------------------------------------------------------------------
# 2. no path read from a file leaves its folder
# ------------------------------------------------------------------------------------------
def _vq_model(path: Path) -> Path:
    from jpeglm.baselines.vq_train import VqConfig, save_checkpoint
    from jpeglm.codecs.vq_model import VqAutoencoder, VqModelConfig

    mc = VqModelConfig(image_size=32, channels=4, channel_mult=(1, 2), num_res_blocks=1, codebook_bits=4, entropy_group_bits=4)
    return save_checkpoint(VqAutoencoder(mc), VqConfig(model=mc), path)


def test_safepath_refuses_dotdot_absolute_and_symlinks_out(tmp_path):
    from jpeglm.safepath import UnsafePathError, inside

    base = tmp_path / "ds"
    (base / "sub").mkdir(parents=True)
    (tmp_path / "secret").mkdir()
    os.symlink(tmp_path / "secret", base / "link")
    os.symlink(base / "sub", base / "ok_link")
    assert inside(base, "sub") == base / "sub" and inside(base, "ok_link") == base / "ok_link"
    for bad, why in (("../secret", r"\.\."), ("sub/../../secret", r"\.\."), (str(tmp_path / "secret"), "absolute"),
                     ("link", "symlink"), ("link/x", "symlink"), ("", "usable")):
        with pytest.raises(UnsafePathError, match=why):
            inside(base, bad)


def test_manifest_and_checkpoint_paths_stay_inside(tmp_path, small_data):
    import shutil

    from jpeglm.checkpoint import resolve_export
    from jpeglm.codecs.base import codec_from_config
    from jpeglm.codecs.vq import VqCodec
    from jpeglm.safepath import UnsafePathError
    from jpeglm.shards import ShardSet
    from jpeglm.train.loop import prepare

    outside = _vq_model(tmp_path / "outside_model")
    ds = tmp_path / "ds"
    ds.mkdir()
    cfg = VqCodec.from_pretrained(outside).to_config()
    for model_dir in ("../outside_model", str(outside)):
        with pytest.raises(UnsafePathError, match="outside_model"):
            codec_from_config({**cfg, "params": {**cfg["params"], "model_dir": model_dir}}, base_dir=ds)
    os.symlink(outside, ds / "vq_model")  # a symlink inside the dataset
    with pytest.raises(UnsafePathError, match="symlink"):
        codec_from_config({**cfg, "params": {**cfg["params"], "model_dir": "vq_model"}}, base_dir=ds)
    (ds / "vq_model").unlink()
    (ds / "vq_model").mkdir()
    shutil.copy(outside / "vq_config.yaml", ds / "vq_model")
    os.symlink(outside / "model.safetensors", ds / "vq_model" / "model.safetensors")  # one file links out
    with pytest.raises(UnsafePathError, match="model.safetensors"):
        codec_from_config({**cfg, "params": {**cfg["params"], "model_dir": "vq_model"}}, base_dir=ds)
    # copying a codec's files (prep, export) never copies a symlink's target from outside
    codec = VqCodec.from_pretrained(outside)
    os.replace(outside / "vq_config.yaml", tmp_path / "cfg.yaml")
    os.symlink(tmp_path / "cfg.yaml", outside / "vq_config.yaml")
    with pytest.raises(UnsafePathError, match="vq_config.yaml"):
        codec.bundle(tmp_path / "export")

    # a dataset whose manifest names a shard or a tokenizer outside it; a codec that cannot rebuild
    data = tmp_path / "data"
    shutil.copytree(small_data, data)
    m = json.loads((data / "manifest.json").read_text())
    bad = json.loads(json.dumps(m))
    bad["splits"]["train"]["shards"][0]["name"] = "../../x"
    (data / "manifest.json").write_text(json.dumps(bad))
    with pytest.raises(UserError, match=r"\.\./\.\./x"):
        ShardSet(data, "train")
    bad = {**m, "tokenizer": {**m["tokenizer"], "path": "../../tok"}}
    (data / "manifest.json").write_text(json.dumps(bad))
    with pytest.raises(UserError, match=r"\.\./\.\./tok"):
        ShardSet(data, "train").tokenizer()
    bad = {**m, "codec": {**cfg, "params": {**cfg["params"], "model_dir": "../outside_model"}}}
    (data / "manifest.json").write_text(json.dumps(bad))
    from tests.test_train import tiny_cfg

    with pytest.raises(UserError, match="outside_model"):
        prepare(tiny_cfg(), data, tmp_path / "run")
    (data / "manifest.json").write_text(json.dumps({**m, "codec": {"name": "no-such-codec", "params": {}}}))
    with pytest.raises(UserError, match="no-such-codec"):
        prepare(tiny_cfg(), data, tmp_path / "run")
    # checkpoints/latest naming a folder outside the run
    run = tmp_path / "run2"
    (run / "checkpoints").mkdir(parents=True)
    (run / "checkpoints" / "latest").write_text("../../outside_model\n")
    with pytest.raises(UserError, match=r"\.\./\.\./outside_model"):
        resolve_export(run)


# ------------------------------------------------------------------------------------------
# 3. nothing hangs or floods memory; 4. one bad name never stops a prep
# ------------------------------------------------------------------------------------------
def _small_jpeg(path: Path, seed: int = 0) -> Path:
    from PIL import Image

    rng = np.random.default_rng(seed)
    Image.fromarray(rng.integers(0, 255, (64, 64, 3), dtype=np.uint8)).save(path, quality=50)
    return path


def _prep(src: Path, out: Path, **kw):
    from jpeglm.data_prep.pipeline import prep
    from jpeglm.data_prep.sources import open_source

    from jpeglm.codecs.jpeg import JpegCodec

    return prep(open_source(str(src)), JpegCodec, out, progress=False, log=None, **kw)


def test_dead_prep_worker_detection_has_a_test():
    text = (Path(__file__).parent / "test_prep_engines.py").read_text()
    assert "worker process died" in text  # landed with data_prep/engines.py (issue 19, item 3)


def test_symlink_loops_are_walked_once(tmp_path):
    from jpeglm.data_prep.sources import open_source

    src = tmp_path / "in"
    (src / "sub").mkdir(parents=True)
    (tmp_path / "elsewhere").mkdir()
    _small_jpeg(src / "a.jpg")
    _small_jpeg(src / "sub" / "b.jpg", 1)
    _small_jpeg(tmp_path / "elsewhere" / "c.jpg", 2)
    os.symlink("..", src / "sub" / "loop")  # a loop back to the root
    os.symlink(src / "sub", src / "again")  # a second name for a folder inside the tree
    os.symlink(tmp_path / "elsewhere", src / "ext1")  # a folder outside, linked twice
    os.symlink(tmp_path / "elsewhere", src / "sub" / "ext2")
    keys = [it.key for it in open_source(str(src)).items()]
    assert keys == ["a.jpg", "ext1/c.jpg", "sub/b.jpg"]


def test_huge_sparse_file_is_skipped_unread(tmp_path, monkeypatch):
    src = tmp_path / "in"
    src.mkdir()
    _small_jpeg(src / "ok.jpg")
    with open(src / "huge.jpg", "wb") as f:  # 1 GB, sparse: costs no disk
        f.truncate(1 << 30)
    read = []
    real = Path.read_bytes
    monkeypatch.setattr(Path, "read_bytes", lambda self: read.append(self.name) or real(self))
    res = _prep(src, tmp_path / "out", val_fraction=0.0)
    assert res.num_records == 1 and "huge.jpg" not in read
    (skip,) = res.skipped
    assert skip["path"] == "huge.jpg" and "max_file_bytes" in skip["reason"]
    settings = json.loads((tmp_path / "out" / "parts" / "settings.json").read_text())
    assert "max_file_bytes" not in settings  # the default: a prep started before the setting resumes


def test_undecodable_names_and_unreadable_folders_are_skip_records(tmp_path, monkeypatch):
    src = tmp_path / "in"
    (src / "locked").mkdir(parents=True)
    _small_jpeg(src / "ok.jpg")
    bad = os.fsdecode(b"caf\xe9.jpg")  # latin-1 bytes: not UTF-8
    _small_jpeg(src / bad, 3)
    _small_jpeg(src / "locked" / "x.jpg")
    real_scandir = os.scandir

    def scandir(path="."):  # as root, chmod 000 does not stop reading: refuse as the OS would
        if isinstance(path, str) and path.endswith("locked"):
            raise PermissionError(13, "Permission denied", os.fspath(path))
        return real_scandir(path)

    monkeypatch.setattr(os, "scandir", scandir)
    res = _prep(src, tmp_path / "out", val_fraction=0.5)
    manifest = json.loads((tmp_path / "out" / "manifest.json").read_text(encoding="utf-8"))
    keys = sorted(json.loads(line)["key"] for split in ("train", "val")
                  for f in (tmp_path / "out" / split).glob("*.jsonl") for line in f.read_text().splitlines())
    assert keys == ["caf\\xe9.jpg", "ok.jpg"] and res.num_records == 2
    assert manifest["skipped"] == [{"path": "locked/", "reason": "unreadable folder: Permission denied"}]


# ------------------------------------------------------------------------------------------
# 5. one writer per output folder
# ------------------------------------------------------------------------------------------
def test_lock_refuses_a_second_writer_and_takes_over_a_stale_lock(tmp_path):
    import socket

    from jpeglm.lock import LOCK_NAME, LockError, OutputLock

    out = tmp_path / "out"
    with OutputLock(out, "jpeglm train"):
        holder = json.loads((out / LOCK_NAME).read_text())
        assert holder["pid"] == os.getpid() and holder["host"] == socket.gethostname()
        with pytest.raises(LockError, match=rf"being written by jpeglm train \(pid {os.getpid()} on "):
            OutputLock(out, "jpeglm prep").acquire()
    # a dead run's lock file (kill -9: the kernel dropped its flock) is stale and is taken over
    (out / LOCK_NAME).write_text(json.dumps({"what": "jpeglm train", "pid": 999999999, "host": "h", "started": 0}))
    with OutputLock(out, "jpeglm train") as lock:
        assert lock.stale["pid"] == 999999999
    # parts of one prep share the folder; a plain prep is refused while they run
    with OutputLock(out, "part 0", shared=True), OutputLock(out, "part 1", shared=True):
        with pytest.raises(LockError):
            OutputLock(out, "jpeglm prep").acquire()


def test_train_and_prep_refuse_a_folder_another_run_holds(tmp_path, small_data):
    from jpeglm.lock import LockError, OutputLock
    from jpeglm.train.loop import train
    from tests.test_train import tiny_cfg

    src = tmp_path / "in"
    src.mkdir()
    _small_jpeg(src / "a.jpg")
    with OutputLock(tmp_path / "run", "jpeglm train"):
        with pytest.raises(LockError, match=rf"{tmp_path / 'run'} is being written by jpeglm train \(pid {os.getpid()}"):
            train(tiny_cfg(max_steps=1), small_data, tmp_path / "run", resume=True)
    with OutputLock(tmp_path / "prep", "jpeglm prep"):
        with pytest.raises(LockError, match="jpeglm prep"):
            _prep(src, tmp_path / "prep")
    res = _prep(src, tmp_path / "prep", val_fraction=0.0)  # the lock file does not make the folder foreign
    assert res.num_records == 1


# ------------------------------------------------------------------------------------------
# 6. early, one-line errors instead of late crashes
# ------------------------------------------------------------------------------------------
def _cli(argv, capsys) -> tuple[int, str]:
    from jpeglm.cli import main

    rc = main(argv)
    err = capsys.readouterr().err
    return rc, err


def test_token_ids_beyond_the_vocabulary_are_found_as_shards_open(tmp_path, small_data):
    import shutil

    from jpeglm.shards import ShardError, ShardSet
    from jpeglm.train.loop import prepare
    from tests.test_train import tiny_cfg

    data = tmp_path / "data"
    shutil.copytree(small_data, data)
    bin_path = data / "val" / "shard-00000.bin"  # not train record 0: the last val record
    ids = np.fromfile(bin_path, np.uint16)
    ids[-2] = 9999
    ids.tofile(bin_path)
    with pytest.raises(ShardError, match=r"val/shard-00000.bin: token id 9999 is outside the tokenizer's 276 ids"):
        prepare(tiny_cfg(), data, tmp_path / "run")
    m = json.loads((data / "manifest.json").read_text())
    m["splits"]["val"]["shards"][0]["max_id"] = 9999  # recorded by prep: no scan needed
    (data / "manifest.json").write_text(json.dumps(m))
    ids[-2] = 5
    ids.tofile(bin_path)
    with pytest.raises(ShardError, match="token id 9999"):
        ShardSet(data, "val").check_ids(276)
    # prep records the largest id of every shard
    src = tmp_path / "in"
    src.mkdir()
    _small_jpeg(src / "a.jpg")
    res = _prep(src, tmp_path / "prepped", val_fraction=0.0)
    (entry,) = res.manifest["splits"]["train"]["shards"]
    assert entry["max_id"] == int(ShardSet(tmp_path / "prepped", "train")[0].max())


def test_corrupt_tokenizer_is_one_line_and_exit_2(tmp_path, small_data, capsys):
    import shutil

    data = tmp_path / "data"
    shutil.copytree(small_data, data)
    for f in (data / "tokenizer").iterdir():
        f.write_text("{ not json")
    rc, err = _cli(["train", "--config", "tiny-cpu", "--data", str(data), "--out", str(tmp_path / "run")], capsys)
    assert rc == 2 and "Traceback" not in err and len(err.strip().splitlines()) == 1
    assert "tokenizer is unreadable" in err and str(data / "tokenizer") in err


def test_broken_checkpoint_files_are_one_line_errors(tmp_path, finished_run, capsys):
    import shutil

    from jpeglm.checkpoint import CheckpointError, load_for_inference

    good = finished_run / "checkpoints" / "step-0000002"
    cut = shutil.copytree(good, tmp_path / "cut")
    weights = cut / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[: weights.stat().st_size // 2])
    with pytest.raises(CheckpointError, match="model.safetensors|truncated"):
        load_for_inference(cut)
    bad_yaml = shutil.copytree(good, tmp_path / "yaml")
    (bad_yaml / "jpeglm.yaml").write_text("codec: [unclosed\n  - : :")
    with pytest.raises(CheckpointError, match="jpeglm.yaml: malformed"):
        load_for_inference(bad_yaml)
    for broken in (cut, bad_yaml):
        rc, err = _cli(["sample", "--model", str(broken), "--num", "1", "--out", str(tmp_path / "s")], capsys)
        assert rc == 2 and "Traceback" not in err and len(err.strip().splitlines()) == 1 and str(broken) in err


def test_torn_last_log_line_is_dropped_on_resume(tmp_path):
    from jpeglm.train.loop import _truncate_log

    log = tmp_path / "log.jsonl"
    log.write_text('{"step": 1, "loss": 2.0}\n{"step": 2, "loss": 1.5}\n{"step": 3, "lo')
    _truncate_log(log, 2)
    assert [json.loads(x)["step"] for x in log.read_text().splitlines()] == [1, 2]


def test_full_disk_during_an_export_keeps_the_previous_one(tmp_path, finished_run, monkeypatch):
    import errno

    import yaml
    from safetensors.torch import load_file
    from transformers import LlamaConfig

    import jpeglm.checkpoint as ck
    from jpeglm.tokenizer import load_tokenizer

    run = _copy_run(finished_run, tmp_path / "run")
    good = run / "checkpoints" / "step-0000002"
    before = {p.name: p.read_bytes() for p in good.iterdir() if p.is_file()}
    meta = yaml.safe_load((good / "jpeglm.yaml").read_text())
    meta = {k: meta[k] for k in ("codec", "tokenizer", "train", "model", "data")}

    def full(*a, **k):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(ck, "atomic_write_text", full)
    with pytest.raises(ck.CheckpointError, match=r"step-0000003: .*No space left.*free some space.*step-0000002"):
        ck.export_hf(run, 3, LlamaConfig.from_pretrained(good), load_file(str(good / "model.safetensors")),
                     load_tokenizer(good), meta, keep_last=1)
    assert (run / "checkpoints" / "latest").read_text().strip() == "step-0000002"
    assert {p.name: p.read_bytes() for p in good.iterdir() if p.is_file()} == before
    assert sorted(p.name for p in (run / "checkpoints").iterdir()) == ["latest", "step-0000002"]


# ------------------------------------------------------------------------------------------
# 7. leftovers of killed runs are removed or reused
# ------------------------------------------------------------------------------------------
def test_resume_makes_the_missing_export_and_removes_stale_temporaries(tmp_path, finished_run, small_data):
    import shutil

    import torch

    from jpeglm.checkpoint import load_for_inference
    from jpeglm.train.loop import train

    run = _copy_run(finished_run, tmp_path / "run")
    ck = run / "checkpoints"
    want = (ck / "step-0000002" / "model.safetensors").read_bytes()
    shutil.rmtree(ck / "step-0000002")  # killed after the DeepSpeed save, before the export
    (ck / "latest").unlink()
    (ck / ".step-0000002.x1y2.tmp").mkdir()  # a half-written export of that kill
    (ck / ".step-0000002.x1y2.tmp" / "model.safetensors").write_bytes(b"half")
    (ck / ".step-0000001.zz.old").mkdir()
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        res = train(_cfg(), small_data, run, resume=True)  # nothing left to train: only the export
    finally:
        torch.set_num_threads(threads)
    assert res.start_step == 2 and res.losses == {}
    assert sorted(p.name for p in ck.iterdir()) == ["latest", "step-0000002"]
    assert (ck / "step-0000002" / "model.safetensors").read_bytes() == want
    assert load_for_inference(run).meta["step"] == 2


def test_sample_and_eval_leftovers_are_removed(tmp_path):
    from jpeglm.cli.sample import _prepare_out
    from jpeglm.eval.store import SampleStore

    out = tmp_path / "samples"
    old_tmp = tmp_path / ".samples.tmp-abc"
    old_tmp.mkdir()
    os.utime(old_tmp, (0, 0))  # a killed run's, long ago
    dead_old = tmp_path / ".samples.old-999999999"
    dead_old.mkdir()
    mine = _prepare_out(out, overwrite=False)
    assert not old_tmp.exists() and not dead_old.exists() and mine.is_dir()

    # an eval setting's folder (eval/store.py) that an earlier eval drew 3 samples into, and killed writers'
    # temporaries: this run has 2 samples, sample 0 finished before a kill (its sidecar is there) and is kept
    folder = tmp_path / "eval" / "setting"
    (folder / "features").mkdir(parents=True)
    for name in ("00001.png", "00002.png", "00002.json", "features/00002.npy", ".00003.png.tmp", ".samples.tmp.npz",
                 ".00001.json.x1y2.tmp", "features/.00004.npy.tmp", ".features.npy.rows", "samples.npz"):
        (folder / name).write_bytes(b"old")
    store = SampleStore(folder)
    store.write(0, np.zeros((8, 8, 3), np.uint8), {"seed": 0}, np.zeros((1, 4), np.float32))
    kept = (folder / "00000.png").stat().st_mtime_ns, (folder / "00000.json").read_bytes()
    assert not store.done(1)  # a picture without its sidecar is not a finished sample: it is drawn again
    store.write(1, np.full((8, 8, 3), 9, np.uint8), {"seed": 1}, np.zeros((1, 4), np.float32))
    assert store.remove_stale(2) == [".00001.json.x1y2.tmp", ".00003.png.tmp", ".features.npy.rows",
                                     ".samples.tmp.npz", "00002.json", "00002.png", "features/.00004.npy.tmp",
                                     "features/00002.npy"]
    assert store.write_npz(2) == 2
    assert sorted(p.name for p in folder.iterdir()) == ["00000.json", "00000.png", "00001.json", "00001.png",
                                                        "features", "samples.npz"]
    assert sorted(p.name for p in (folder / "features").iterdir()) == ["00000.npy", "00001.npy"]
    assert ((folder / "00000.png").stat().st_mtime_ns, (folder / "00000.json").read_bytes()) == kept
    assert np.load(folder / "samples.npz")["arr_0"].shape == (2, 8, 8, 3)


def test_full_disk_during_the_deepspeed_save_is_a_train_error(tmp_path):
    import errno
    from types import SimpleNamespace

    from jpeglm.train.loop import TrainError, save_checkpoint
    from tests.test_train import tiny_cfg

    class FullEngine:
        def save_checkpoint(self, *a, **k):
            raise OSError(errno.ENOSPC, "No space left on device")

    (tmp_path / "ds").mkdir()
    (tmp_path / "ds" / "latest").write_text("step-0000002\n")
    order = SimpleNamespace(state_dict=dict)
    with pytest.raises(TrainError, match=r"ds/step-0000004: .*No space left.*previous checkpoint is kept"):
        save_checkpoint(FullEngine(), tmp_path, 4, order, tiny_cfg(), None, None, {}, SimpleNamespace(is_main=True))
    assert (tmp_path / "ds" / "latest").read_text() == "step-0000002\n"
