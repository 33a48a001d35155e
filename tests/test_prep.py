"""`jpeglm prep`: determinism, resume after kill -9, bad input, exit codes, splits, video, uint32."""

from __future__ import annotations

import io
import json
import os
import re
import signal
import struct
import subprocess
import sys
import time
import zlib
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from jpeglm.data_prep.pipeline import is_val, prep, reason_kind
from jpeglm.data_prep.sources import open_source
from jpeglm.cli import main as cli_main
from jpeglm.codecs.jpeg import JpegCodec
from jpeglm.media import open_image, prepare_image
from jpeglm.shards import ShardSet
from jpeglm.tokenizer import ByteTokenizer

ROOT = Path(__file__).resolve().parents[1]


def tree(d: Path) -> dict[str, bytes]:
    """Every file under d (relative path -> bytes), for byte-for-byte comparisons."""
    return {p.relative_to(d).as_posix(): p.read_bytes() for p in sorted(d.rglob("*")) if p.is_file()}


def keys(out: Path) -> list[str]:
    return [s.meta(i)["key"] for split in ("train", "val") for s in [ShardSet(out, split)] for i in range(len(s))]


def make_images(d: Path, n: int, side=(200, 150), quality=90, seed=0) -> list[str]:
    """n distinct photo-like images (smooth gradients + noise), saved as JPEG in sub-folders."""
    rng = np.random.default_rng(seed)
    d.mkdir(parents=True, exist_ok=True)
    w, h = side
    yy, xx = np.mgrid[0:h, 0:w]
    names = []
    for i in range(n):
        base = np.stack([(xx * (i + 1) + yy) % 256, (yy * 3 + i * 17) % 256, (xx + yy * (i % 5)) % 256], -1)
        arr = np.clip(base + rng.normal(0, 8, base.shape), 0, 255).astype(np.uint8)
        name = f"{'ab'[i % 2]}/img_{i:03d}.jpg"
        (d / name).parent.mkdir(exist_ok=True)
        Image.fromarray(arr).save(d / name, quality=quality)
        names.append(name)
    return names


def prep_cli(*argv) -> int:
    return cli_main(["prep", "--no-progress", *map(str, argv)])


# --- determinism -----------------------------------------------------------------------------
def test_deterministic_and_worker_count_independent(tmp_path, photo_dir):
    make_images(photo_dir / "gen", 6)
    a, b = tmp_path / "a", tmp_path / "b"
    assert prep_cli("--codec", "jpeg", "--input", photo_dir, "--out", a, "--records-per-shard", 3, "--val-fraction", 0.3) == 0
    assert prep_cli("--codec", "jpeg", "--input", photo_dir, "--out", b, "--records-per-shard", 3, "--val-fraction", 0.3,
                    "--workers", 2) == 0
    ta, tb = tree(a), tree(b)
    assert ta.keys() == tb.keys() and all(ta[k] == tb[k] for k in ta), [k for k in ta if ta[k] != tb.get(k)]
    assert sorted(keys(a)) == sorted(p.relative_to(photo_dir).as_posix() for p in photo_dir.rglob("*.*"))
    # running again on a finished prep changes nothing
    assert prep_cli("--codec", "jpeg", "--input", photo_dir, "--out", a, "--records-per-shard", 3, "--val-fraction", 0.3) == 0
    assert tree(a) == ta


# --- resume after kill -9 ----------------------------------------------------------------------
def test_resume_after_kill_is_byte_identical(tmp_path):
    src = tmp_path / "src"
    # big enough (1024x768) that the run takes seconds, so the kill lands in the middle
    names = make_images(src, 60, side=(1024, 768))
    args = ["--codec", "jpeg", "--input", str(src), "--records-per-shard", "4", "--val-fraction", "0.2", "--no-progress"]
    killed = tmp_path / "killed"
    env = {**os.environ, "PYTHONPATH": str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", "")}
    proc = subprocess.Popen([sys.executable, "-m", "jpeglm.cli", "prep", *args, "--out", str(killed)], cwd=ROOT, env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    first = killed / "parts" / "part-00000.json"
    deadline = time.time() + 120
    while not first.exists() and proc.poll() is None and time.time() < deadline:
        time.sleep(0.005)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert first.exists(), proc.stderr.read().decode()
    done = len(list((killed / "parts").glob("part-*.json")))
    assert not (killed / "manifest.json").exists() and done < 15, "the run finished before it was killed"
    # a half-written shard of an unfinished chunk must be overwritten, not kept
    (killed / "train" / "shard-00014.bin").write_bytes(b"\x00garbage")
    assert prep_cli(*args, "--out", killed) == 0
    clean = tmp_path / "clean"
    assert prep_cli(*args, "--out", clean) == 0
    tk, tc = tree(killed), tree(clean)
    assert tk.keys() == tc.keys() and all(tk[k] == tc[k] for k in tk), [k for k in tk if tk[k] != tc.get(k)]
    got = keys(killed)
    assert len(got) == len(set(got)) == 60 and sorted(got) == sorted(names)  # no duplicate, none missing


# --- bad input -----------------------------------------------------------------------------------
def _png_claiming(width: int, height: int) -> bytes:
    """A tiny PNG whose header claims width x height pixels: a decompression bomb's calling card."""
    buf = io.BytesIO()
    Image.new("L", (8, 8)).save(buf, "PNG")
    data = bytearray(buf.getvalue())
    ihdr = 8  # signature, then the IHDR chunk: length(4) type(4) width(4) height(4) ...
    data[ihdr + 8 : ihdr + 16] = struct.pack(">II", width, height)
    crc = zlib.crc32(bytes(data[ihdr + 4 : ihdr + 8 + 13]))
    data[ihdr + 8 + 13 : ihdr + 8 + 17] = struct.pack(">I", crc)
    return bytes(data)


def make_bad_corpus(d: Path) -> dict[str, str]:
    """name -> a pattern the skip reason must contain (re.search)."""
    d.mkdir(parents=True, exist_ok=True)
    good = io.BytesIO()
    Image.fromarray(np.random.default_rng(0).integers(0, 255, (120, 160, 3), np.uint8)).save(good, "JPEG", quality=90)
    (d / "empty.jpg").write_bytes(b"")
    (d / "truncated.jpg").write_bytes(good.getvalue()[:300])  # cut inside the header/first scan
    (d / "random.png").write_bytes(np.random.default_rng(1).integers(0, 256, 5000, np.uint8).tobytes())
    (d / "text.jpg").write_text("this is not a picture\n" * 20)
    (d / "bomb.png").write_bytes(_png_claiming(30000, 30000))
    Image.new("RGB", (20, 20), "red").save(d / "tiny.png")
    return {"empty.jpg": "empty", "truncated.jpg": "unreadable image|identify", "random.png": "identify", "text.jpg": "identify",
            "bomb.png": "bomb", "tiny.png": "smaller"}


def test_bad_input_skipped_with_reasons(tmp_path, photo_dir):
    bad = make_bad_corpus(photo_dir / "bad")
    out = tmp_path / "out"
    # several chunks, so the two workers really share the work (one chunk is done in-process)
    assert prep_cli("--codec", "jpeg", "--input", photo_dir, "--out", out, "--workers", 2, "--records-per-shard", 3) == 0
    m = json.loads((out / "manifest.json").read_text())
    skipped = {s["path"]: s["reason"] for s in m["skipped"]}
    assert set(skipped) == {f"bad/{n}" for n in bad}
    for name, word in bad.items():
        assert re.search(word, skipped[f"bad/{name}"]), skipped  # (truncated.jpg had "", true of any reason)
        assert str(photo_dir) not in skipped[f"bad/{name}"]  # the path is in `path`, not repeated
    assert sum(m["skipped_by_reason"].values()) == len(bad)
    good = sorted(p.name for p in photo_dir.glob("*.png"))
    assert sorted(keys(out)) == good and m["num_records"] == len(good)


def test_exit_codes_and_mixing(tmp_path, photo_dir, capsys):
    bad_dir = tmp_path / "only_bad"
    make_bad_corpus(bad_dir)
    assert prep_cli("--codec", "jpeg", "--input", bad_dir, "--out", tmp_path / "none") == 1
    assert "no record written" in capsys.readouterr().err
    assert prep_cli("--codec", "jpeg", "--input", tmp_path / "missing", "--out", tmp_path / "x") == 2
    assert "no such file" in capsys.readouterr().err
    out = tmp_path / "out"
    assert prep_cli("--codec", "jpeg", "--input", photo_dir, "--out", out) == 0
    assert prep_cli("--codec", "jpeg", "--input", photo_dir, "--out", out, "--size", 128) == 2
    err = capsys.readouterr().err
    assert "different settings" in err and "codec" in err
    assert ShardSet(out, "train").codec().params.size == 256  # untouched
    assert prep_cli("--codec", "jpeg", "--input", photo_dir, "--out", out, "--size", 128, "--overwrite") == 0
    assert ShardSet(out, "train").codec().params.size == 128
    (tmp_path / "foreign").mkdir()
    (tmp_path / "foreign" / "notes.txt").write_text("mine")
    assert prep_cli("--codec", "jpeg", "--input", photo_dir, "--out", tmp_path / "foreign") == 2
    assert (tmp_path / "foreign" / "notes.txt").read_text() == "mine"


# --- splits, sources ------------------------------------------------------------------------------
def test_val_split_by_key_hash(tmp_path):
    src = tmp_path / "src"
    make_images(src, 24, side=(96, 96))
    out = tmp_path / "out"
    res = prep(open_source(str(src)), JpegCodec, out, val_fraction=0.25, seed=3, records_per_shard=5, progress=False, log=None)
    val = ShardSet(out, "val")
    assert 0 < len(val) < 24 and res.manifest["splits"]["val"]["num_records"] == len(val)
    for split in ("train", "val"):
        s = ShardSet(out, split)
        assert all(is_val(s.meta(i)["key"], 3, 0.25) == (split == "val") for i in range(len(s)))
    # another seed gives another split of the same records
    other = {k for k in keys(out) if is_val(k, 4, 0.25)}
    assert other != {ShardSet(out, "val").meta(i)["key"] for i in range(len(val))}


def test_builtin_skimage_lists_color_and_gray_photos():
    items = [it.key for it in open_source("builtin:skimage").items()]
    assert "astronaut.png" in items and "camera.png" in items and "rocket.jpg" in items
    assert items == sorted(items)


def test_hf_saved_dataset_source(tmp_path, photos):
    datasets = pytest.importorskip("datasets")
    paths = []
    for i, im in enumerate(photos[:3]):
        paths.append(str(tmp_path / f"p{i}.png"))
        im.save(paths[-1])
    ds = datasets.Dataset.from_dict({"image": paths, "label": [0, 1, 2]}).cast_column("image", datasets.Image())
    ds.save_to_disk(str(tmp_path / "hfds"))
    out = tmp_path / "out"
    assert prep_cli("--codec", "jpeg", "--input", tmp_path / "hfds", "--out", out, "--val-fraction", 0) == 0
    s = ShardSet(out, "train")
    assert [s.meta(i)["key"] for i in range(len(s))] == [f"hfds/{i:08d}" for i in range(3)]
    expected = JpegCodec().encode(prepare_image(open_image(paths[1]), 256))
    assert s.tokenizer().decode(s[1].tolist()) == expected


def test_uint32_when_vocab_is_big(tmp_path, photo_dir):
    tok_dir = tmp_path / "bigtok"
    ByteTokenizer(num_extra=65_300).save_pretrained(tok_dir)  # vocab 65560 > 65536
    out = tmp_path / "out"
    assert prep_cli("--codec", "jpeg", "--input", photo_dir, "--out", out, "--tokenizer", tok_dir, "--limit", 2,
                    "--val-fraction", 0) == 0
    s = ShardSet(out, "train")
    assert s.manifest["dtype"] == "uint32" and s[0].dtype == np.uint32 and len(s) == 2
    assert (out / "train" / "shard-00000.bin").stat().st_size == 4 * s.num_tokens
    assert s.tokenizer().decode(s[0].tolist()) == JpegCodec().encode(prepare_image(open_image(photo_dir / "photo_00.png"), 256))


def test_reason_kind_groups_numbers():
    assert reason_kind("20x20 is smaller than the minimum side 64") == reason_kind("30x12 is smaller than the minimum side 64")
    assert reason_kind("unreadable image (OSError: broken data stream)") == "unreadable image"


# --- video ----------------------------------------------------------------------------------------
def test_avc_prep_on_generated_videos(tmp_path):
    from jpeglm.codecs.avc import AvcCodec
    from jpeglm.video import ClipRule, iter_clips, write_video

    src = tmp_path / "videos"
    src.mkdir()
    t = np.arange(32)[:, None, None]
    yy, xx = np.mgrid[0:96, 0:160]
    for v in range(2):  # 3.2 s at 10 fps: clips at 0 s and 1.5 s fit, the one at 3 s runs past the end
        frames = np.stack([(xx + 4 * t + 40 * v) % 256, (yy + 2 * t) % 256, (xx + yy + t + 8 * v) % 256], -1)
        write_video(frames.astype(np.uint8), src / f"v{v}.mp4")
    (src / "broken.mp4").write_bytes(b"\x00\x00\x00\x18ftypmp42" + bytes(range(256)) * 4)
    out = tmp_path / "out"
    assert prep_cli("--codec", "avc", "--input", src, "--out", out, "--clip-stride", 1.5, "--val-fraction", 0,
                    "--workers", 2, "--records-per-shard", 1) == 0
    s = ShardSet(out, "train")
    m = s.manifest
    got = [s.meta(i)["key"] for i in range(len(s))]
    assert got == ["v0.mp4#clip000@0.000s", "v0.mp4#clip001@1.500s", "v1.mp4#clip000@0.000s", "v1.mp4#clip001@1.500s"]
    skipped = {x["path"] for x in m["skipped"]}
    assert "broken.mp4" in skipped and {"v0.mp4#clip002@3.000s", "v1.mp4#clip002@3.000s"} <= skipped
    assert all(x["reason"] and str(src) not in x["reason"] for x in m["skipped"]), m["skipped"]
    codec = AvcCodec()
    rule = ClipRule(stride_s=1.5)
    clips = dict(iter_clips(str(src / "v1.mp4"), rule, 256, 144))
    assert s.tokenizer().decode(s[3].tolist()) == codec.encode(clips["clip001@1.500s"])
    assert s.meta(3)["n_pixels"] == 15 * 144 * 256 and m["codec"]["name"] == "avc"


# --- code codecs (baselines) ------------------------------------------------------------------------
def test_pixel_prep(tmp_path, photo_dir):
    from jpeglm.codecs.pixel import PixelCodec

    palette = tmp_path / "palette.npy"
    np.save(palette, np.array([[r, g, b] for r in (0, 128, 255) for g in (0, 255) for b in (0, 255)], np.uint8))
    out = tmp_path / "out"
    assert prep_cli("--codec", "pixel", "--palette", palette, "--input", photo_dir, "--out", out, "--val-fraction", 0) == 0
    s = ShardSet(out, "train")
    codec = PixelCodec.from_palette(palette)
    tok = s.tokenizer()
    assert tok.kind == "code" and s.manifest["dtype"] == "uint16" and s.manifest["codec"]["name"] == "pixel"
    assert np.array_equal(tok.decode(s[0].tolist()), codec.encode(open_image(photo_dir / "photo_00.png")))
    m = s.meta(0)
    assert m["n_symbols"] == 32 * 32 and m["n_pixels"] == 256 * 256  # judged at eval size
    assert m["n_bytes"] == pytest.approx(32 * 32 * np.log2(12) / 8)
    assert isinstance(s.codec(), PixelCodec) and np.array_equal(s.codec().palette, codec.palette)  # the palette travels along


def test_vq_prep_with_workers(tmp_path, photo_dir):
    """VQ codes through the same prep; torch is loaded in the parent, workers come from the fork server."""
    pytest.importorskip("torch")
    from jpeglm.codecs.vq import VqCodec
    from jpeglm.codecs.vq_model import VqAutoencoder, VqModelConfig
    from jpeglm.baselines.vq_train import VqConfig, save_checkpoint

    cfg = VqConfig(model=VqModelConfig(image_size=32, channels=8, channel_mult=(1, 2), num_res_blocks=0,
                                       codebook_bits=4, entropy_group_bits=4))
    model_dir = save_checkpoint(VqAutoencoder(cfg.model), cfg, tmp_path / "vq")  # untrained is enough here
    a, b = tmp_path / "a", tmp_path / "b"
    common = ["--codec", "vq", "--vq-model", model_dir, "--input", photo_dir, "--records-per-shard", 2]
    assert prep_cli(*common, "--out", a) == 0
    assert prep_cli(*common, "--out", b, "--workers", 2) == 0
    assert tree(a) == tree(b)
    before = tree(a)
    assert prep_cli(*common, "--out", a) == 0 and tree(a) == before  # a finished VQ prep reruns as a no-op
    s = ShardSet(a, "train")
    # the dataset carries its own weights: the very bytes of the model it was prepared with
    assert (a / "vq_model" / "model.safetensors").read_bytes() == (Path(model_dir) / "model.safetensors").read_bytes()
    codec = s.codec()
    assert isinstance(codec, VqCodec) and codec.num_codes == 16
    key = s.meta(0)["key"]
    expected = VqCodec.from_pretrained(model_dir).encode(open_image(photo_dir / key))
    assert np.array_equal(s.tokenizer().decode(s[0].tolist()), expected)


class _CodecFailingInWorkers:
    """Builds a codec in the main process only (a model file that vanished, as workers see it)."""

    def __init__(self, pid: int):
        self.pid = pid

    def __call__(self):
        if os.getpid() != self.pid:
            raise RuntimeError("model file vanished")
        return JpegCodec()


def test_worker_setup_failure_stops_the_prep(tmp_path, photo_dir):
    from jpeglm.data_prep.writer import PrepError

    # multiprocessing.Pool restarts workers whose initializer raises, forever: this must not hang
    with pytest.raises(PrepError, match="worker setup failed: RuntimeError: model file vanished"):
        prep(open_source(str(photo_dir)), _CodecFailingInWorkers(os.getpid()), tmp_path / "out", workers=2,
             records_per_shard=2, progress=False, log=None)
    assert not (tmp_path / "out" / "manifest.json").exists()


def test_parts_split_one_prep(tmp_path, photo_dir):
    """Two --part runs into one folder (as two machines would) give the bytes of a single run."""
    make_images(photo_dir / "gen", 5)
    common = ["--codec", "jpeg", "--input", photo_dir, "--records-per-shard", 2, "--val-fraction", 0.3]
    split, single = tmp_path / "split", tmp_path / "single"
    assert prep_cli(*common, "--out", split, "--part", "1/2") == 0
    assert not (split / "manifest.json").exists()
    assert sorted(p.name for p in (split / "parts").glob("part-*")) == ["part-00001.json", "part-00003.json", "part-00005.json"]  # 11 items, 6 chunks
    assert prep_cli(*common, "--out", split, "--part", "0/2") == 0
    assert prep_cli(*common, "--out", single) == 0
    assert tree(split) == tree(single)
    assert prep_cli(*common, "--out", tmp_path / "bad", "--part", "2/2") == 2
