"""Hostile and broken inputs, the rest of issue 19: user errors of every command are one line on
stderr and exit 2; sample and eval take the output-folder lock; every image loader skips a huge
file unread; web-dataset tar members cannot leave their folder or flood memory."""

from __future__ import annotations

import os
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest

from jpeglm.errors import UserError


def _cli(argv, capsys) -> tuple[int, str, str]:
    from jpeglm.cli import main

    rc = main([str(a) for a in argv])
    cap = capsys.readouterr()
    return rc, cap.out, cap.err


def _one_line(rc: int, err: str, *needles: str) -> None:
    lines = [x for x in err.splitlines() if x.strip() and "img/s]" not in x]  # tqdm's bar is not an error line
    assert rc == 2 and "Traceback" not in err, err
    assert len(lines) == 1, err
    for n in needles:
        assert n in lines[0], lines[0]


def _small_image(path: Path, seed: int = 0) -> Path:
    from PIL import Image

    rng = np.random.default_rng(seed)
    Image.fromarray(rng.integers(0, 255, (72, 72, 3), dtype=np.uint8)).save(path)
    return path


# ------------------------------------------------------------------------------------------
# 1. every user-caused error of eval, fid, sample, vq and pixel is a UserError: one line, exit 2
# ------------------------------------------------------------------------------------------
def test_eval_fid_sample_errors_are_user_errors():
    from jpeglm.eval.fid import FidError
    from jpeglm.eval.fvd import FvdError

    from jpeglm.cli.sample import SampleError
    from jpeglm.hub import HubError
    from jpeglm.sample import PromptTooLongError
    from jpeglm.sample.budget import CacheTooLargeError

    for cls in (FidError, FvdError, SampleError, PromptTooLongError, HubError, CacheTooLargeError):
        assert issubclass(cls, UserError), cls


def test_fid_and_eval_cli_errors_are_one_line_on_stderr(tmp_path, capsys, monkeypatch):
    rc, out, err = _cli(["fid", tmp_path / "missing_a", tmp_path / "missing_b"], capsys)
    _one_line(rc, err, "jpeglm fid: error:", "missing_a")
    held = tmp_path / "held"
    held.mkdir()
    for i in range(2):
        _small_image(held / f"{i}.png", i)
    cfg = tmp_path / "e.yaml"
    cfg.write_text(f"systems: [{{name: a, checkpoint: {tmp_path}/none}}]\nimages: {tmp_path}/nowhere\n"
                   f"out: {tmp_path}/out\n")
    rc, out, err = _cli(["eval", "--config", cfg], capsys)
    _one_line(rc, err, "jpeglm eval: error:", "nowhere", "does not exist")
    assert "error" not in out
    # the FID network cannot be had (a FidError raised deep in the harness): one line, not a traceback
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch_home"))
    monkeypatch.delenv("JPEGLM_FIDELITY_WEIGHTS", raising=False)
    rc, out, err = _cli(["eval", "--config", cfg, "--images", held, "--fid-backend", "torch-fidelity",
                         "--device", "cpu"], capsys)
    _one_line(rc, err, "jpeglm eval: error:", "torch-fidelity")


def test_sample_cli_errors_are_one_line_on_stderr(tmp_path, capsys, monkeypatch):
    import jpeglm.cli.sample as cli
    from jpeglm.codecs.jpeg import JpegCodec, JpegParams
    from jpeglm.tokenizer import ByteTokenizer

    rc, _, err = _cli(["sample", "--model", tmp_path / "no_model", "--out", tmp_path / "s"], capsys)
    _one_line(rc, err, "jpeglm sample: error:", "no_model")
    loaded = SimpleNamespace(model=None, tokenizer=ByteTokenizer(), codec=JpegCodec(JpegParams(size=32)), meta={})
    monkeypatch.setattr(cli, "_load", lambda path, device: loaded)
    bad = tmp_path / "corrupt.jpg"
    bad.write_bytes(b"\xff\xd8\xff\xe0 this is not a JPEG")
    rc, _, err = _cli(["sample", "--model", "m", "--prompt", bad, "--device", "cpu", "--out", tmp_path / "s"], capsys)
    _one_line(rc, err, "jpeglm sample: error:", "corrupt.jpg")
    assert not (tmp_path / "s").exists()


def test_vq_and_pixel_cli_errors_are_one_line_on_stderr(tmp_path, capsys):
    empty = tmp_path / "empty"
    empty.mkdir()
    rc, out, err = _cli(["vq", "train", "--input", empty, "--out", tmp_path / "vq"], capsys)
    _one_line(rc, err, "jpeglm vq train: error:", "no usable images")
    assert "error" not in out
    rc, out, err = _cli(["pixel", "fit", "--input", empty, "--out", tmp_path / "palette.txt"], capsys)
    _one_line(rc, err, "jpeglm pixel fit: error:", ".npz")
    assert "error" not in out


# ------------------------------------------------------------------------------------------
# 2. sample and eval hold their --out like train and prep
# ------------------------------------------------------------------------------------------
def test_sample_and_eval_refuse_a_folder_another_run_holds(tmp_path, capsys, monkeypatch):
    import jpeglm.cli.sample as cli
    from jpeglm.lock import LOCK_NAME, OutputLock

    out = tmp_path / "out"
    monkeypatch.setattr(cli, "_load", lambda path, device: pytest.fail("sampled into a folder another run holds"))
    with OutputLock(out, "jpeglm eval --out x"):
        rc, _, err = _cli(["sample", "--model", "m", "--device", "cpu", "--out", out], capsys)
        _one_line(rc, err, f"{out} is being written by jpeglm eval --out x (pid {os.getpid()} on ")
    assert sorted(p.name for p in out.iterdir()) == [LOCK_NAME]  # the holder's folder is left as it was
    held = tmp_path / "held"
    held.mkdir()
    cfg = tmp_path / "e.yaml"
    cfg.write_text(f"systems: [{{name: a, checkpoint: {tmp_path}/none}}]\nimages: {held}\nout: {out}\n")
    with OutputLock(out, "jpeglm sample --model m"):
        rc, _, err = _cli(["eval", "--config", cfg], capsys)
        _one_line(rc, err, f"{out} is being written by jpeglm sample --model m (pid {os.getpid()} on ")
        # ranks > 0 of a data-parallel eval take no lock (rank 0 holds it for them)
        monkeypatch.setenv("RANK", "1")
        cfg.write_text(f"systems: [{{name: a, checkpoint: {tmp_path}/none}}]\nimages: {tmp_path}/nowhere\nout: {out}\n")
        rc, _, err = _cli(["eval", "--config", cfg], capsys)
        _one_line(rc, err, "nowhere", "does not exist")


def test_a_refused_or_failed_sample_leaves_no_folder_and_a_finished_one_no_lock_file(tmp_path, capsys, monkeypatch):
    import jpeglm.cli.sample as cli
    from jpeglm.codecs.jpeg import JpegCodec, JpegParams
    from jpeglm.lock import LOCK_NAME, OutputLock
    from jpeglm.tokenizer import ByteTokenizer
    from tests.test_sample import tiny_llama

    tok = ByteTokenizer()
    loaded = SimpleNamespace(model=tiny_llama(tok.vocab_size), tokenizer=tok, codec=JpegCodec(JpegParams(size=16)), meta={})
    monkeypatch.setattr(cli, "_load", lambda path, device: loaded)
    bad = tmp_path / "bad.jpg"
    bad.write_text("text")
    out = tmp_path / "s"
    rc, _, err = _cli(["sample", "--model", "m", "--prompt", bad, "--device", "cpu", "--out", out], capsys)
    assert rc == 2 and not out.exists()
    argv = ["sample", "--model", "m", "--num", "1", "--max-new-tokens", "8", "--device", "cpu", "--out", out]
    rc, _, err = _cli(argv, capsys)
    assert rc == 0, err
    assert LOCK_NAME not in os.listdir(out) and (out / "manifest.json").is_file()
    with OutputLock(out, "jpeglm sample --model other"):  # --overwrite does not override another run
        rc, _, err = _cli([*argv, "--overwrite"], capsys)
        _one_line(rc, err, "being written by jpeglm sample --model other")
    assert _cli([*argv, "--overwrite"], capsys)[0] == 0


# ------------------------------------------------------------------------------------------
# 3. vq train and pixel fit size-check files before reading them, as prep does
# ------------------------------------------------------------------------------------------
def test_vq_and_pixel_image_loading_skip_huge_files_unread(tmp_path, monkeypatch):
    import PIL.Image

    from jpeglm.baselines.pixel_fit import PaletteSettings, collect_pixels
    from jpeglm.baselines.vq_train import VqTrainConfig, load_images
    from jpeglm.media import DEFAULT_MAX_FILE_BYTES

    src = tmp_path / "in"
    src.mkdir()
    _small_image(src / "ok.png")
    with open(src / "huge.png", "wb") as f:  # 1 GB, sparse: costs no disk
        f.truncate(1 << 30)
    opened = []
    real_open = PIL.Image.open
    monkeypatch.setattr(PIL.Image, "open", lambda fp, *a, **k: opened.append(str(fp)) or real_open(fp, *a, **k))
    keys, images, skipped = load_images(str(src), 16)
    assert keys == ["ok.png"] and images.shape == (1, 16, 16, 3)
    assert [s["path"] for s in skipped] == ["huge.png"] and "max_file_bytes" in skipped[0]["reason"]
    _, n, skipped = collect_pixels(str(src), PaletteSettings(size=8))
    assert n == 1 and [s["path"] for s in skipped] == ["huge.png"] and "max_file_bytes" in skipped[0]["reason"]
    assert not [p for p in opened if p.endswith("huge.png")]
    assert VqTrainConfig().max_file_bytes == PaletteSettings().max_file_bytes == DEFAULT_MAX_FILE_BYTES
    with pytest.raises(ValueError, match=r"no usable images .* \(2 skipped\)"):  # the limit is the caller's
        load_images(str(src), 16, max_file_bytes=10)


# ------------------------------------------------------------------------------------------
# 4. web inputs: a tar member cannot leave its shard's keys, a huge member is never read
# ------------------------------------------------------------------------------------------
def test_tar_members_with_unsafe_names_links_or_huge_sizes_are_skipped_unread(tmp_path, monkeypatch):
    import io
    import tarfile

    from jpeglm.data_prep import webdata
    from jpeglm.data_prep.pipeline import prep
    from jpeglm.data_prep.sources import open_source

    from jpeglm.codecs.jpeg import JpegCodec
    from tests.test_prep_webdata import photo_bytes

    small, big = photo_bytes(2)
    big = big + b"\0" * 4000  # still a JPEG (bytes after EOI), and over the limit below
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w") as tf:
        for name, data in (("000.jpg", small), ("../../evil.jpg", small), ("/abs/x.jpg", small), ("001.jpg", big)):
            info = tarfile.TarInfo(name)
            info.size, info.mtime = len(data), 0
            tf.addfile(info, io.BytesIO(data))
        link = tarfile.TarInfo("002.jpg")
        link.type, link.linkname = tarfile.SYMTYPE, "/etc/passwd"
        tf.addfile(link)
    (tmp_path / "shards").mkdir()
    (tmp_path / "shards" / "s.tar").write_bytes(buf.getvalue())
    read = []
    real_fetch = webdata.TarSource.fetch
    monkeypatch.setattr(webdata.TarSource, "fetch", lambda self, item: read.append(item.key) or real_fetch(self, item))
    limit = len(small) + 100
    res = prep(open_source(str(tmp_path / "shards" / "s.tar")), JpegCodec, tmp_path / "out", val_fraction=0.0,
               max_file_bytes=limit, progress=False, log=None)
    assert res.num_records == 1
    reasons = {s["path"]: s["reason"] for s in res.skipped}
    assert set(reasons) == {"s.tar/001", "s.tar/../../evil.jpg", "s.tar//abs/x.jpg", "s.tar/002.jpg"}, reasons
    assert "max_file_bytes" in reasons["s.tar/001"] and "s.tar/001" not in read  # refused from its header
    assert "unsafe tar member name" in reasons["s.tar/../../evil.jpg"] and "a link" in reasons["s.tar/002.jpg"]
