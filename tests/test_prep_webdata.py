"""`jpeglm prep` on data where it lives: WebDataset tar shards, parquet files, fsspec URLs (in and out)."""

from __future__ import annotations

import io
import json
import tarfile
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from jpeglm.cli import main as cli_main
from jpeglm.codecs.jpeg import JpegCodec
from jpeglm.data_prep import webdata
from jpeglm.data_prep.pipeline import prep
from jpeglm.data_prep.sources import SourceError, open_source
from jpeglm.shards import ShardSet


def prep_cli(*argv) -> int:
    return cli_main(["prep", "--no-progress", *map(str, argv)])


def tree(d: Path) -> dict[str, bytes]:
    return {p.relative_to(d).as_posix(): p.read_bytes() for p in sorted(d.rglob("*")) if p.is_file() and p.name != ".jpeglm.lock"}  # the lock file is no output


def records(out) -> dict[str, bytes]:
    """key -> token bytes of every record of a prepared folder."""
    got = {}
    for split in ("train", "val"):
        s = ShardSet(out, split)
        for i in range(len(s)):
            got[s.meta(i)["key"]] = s[i].tobytes()
    return got


def photo_bytes(n: int, seed: int = 0, fmt: str = "JPEG") -> list[bytes]:
    """n distinct small photo-like images (gradients + noise) as encoded files."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:90, 0:120]
    out = []
    for i in range(n):
        base = np.stack([(xx * (i + 2) + yy) % 256, (yy * 3 + 17 * i) % 256, (xx + yy * (i % 4)) % 256], -1)
        buf = io.BytesIO()
        Image.fromarray(np.clip(base + rng.normal(0, 6, base.shape), 0, 255).astype(np.uint8)).save(buf, fmt)
        out.append(buf.getvalue())
    return out


def write_tar(path: Path, members: list[tuple[str, bytes]]) -> bytes:
    path.parent.mkdir(parents=True, exist_ok=True)
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.USTAR_FORMAT) as tf:
        for name, data in members:
            info = tarfile.TarInfo(name)
            info.size, info.mtime = len(data), 0
            tf.addfile(info, io.BytesIO(data))
    path.write_bytes(buf.getvalue())
    return buf.getvalue()


def webdataset_shards(d: Path, images: list[bytes], per_shard: int) -> list[str]:
    """img2dataset-style shards: per sample KEY.jpg + KEY.json + KEY.txt; returns the keys."""
    keys = []
    for s in range(0, len(images), per_shard):
        members = []
        for i in range(s, min(s + per_shard, len(images))):
            key = f"{i:09d}"
            members += [(f"{key}.jpg", images[i]), (f"{key}.json", json.dumps({"i": i}).encode()), (f"{key}.txt", b"a cat")]
            keys.append(f"{s // per_shard:05d}.tar/{key}")
        write_tar(d / f"{s // per_shard:05d}.tar", members)
    return keys


# --- WebDataset tars ---------------------------------------------------------------------------------
def test_webdataset_brace_pattern_gives_the_images_records(tmp_path):
    images = photo_bytes(7)
    keys = webdataset_shards(tmp_path / "shards", images, per_shard=3)  # 3 shards: 3 + 3 + 1 samples
    loose = tmp_path / "loose"
    loose.mkdir()
    for k, data in zip(keys, images):
        (loose / f"{k.replace('/', '_')}.jpg").write_bytes(data)
    pattern = str(tmp_path / "shards" / "{00000..00002}.tar")
    a, b = tmp_path / "a", tmp_path / "b"
    assert prep_cli("--codec", "jpeg", "--input", pattern, "--out", a, "--val-fraction", 0.3, "--records-per-shard", 4) == 0
    assert prep_cli("--codec", "jpeg", "--input", pattern, "--out", b, "--val-fraction", 0.3, "--records-per-shard", 4,
                    "--workers", 2, "--items-per-task", 1) == 0
    assert tree(a) == tree(b)  # any worker count, any unit size: the same bytes
    got = records(a)
    assert sorted(got) == sorted(keys)
    assert ShardSet(a, "val").manifest["source"]["kind"] == "webdataset"
    # each record is exactly what the same picture gives as a loose file
    ref = tmp_path / "ref"
    assert prep_cli("--codec", "jpeg", "--input", loose, "--out", ref, "--val-fraction", 0) == 0
    want = {k.replace(".jpg", "").replace("_", "/", 1): v for k, v in records(ref).items()}
    assert got == want
    # the folder of shards and a glob name the same samples
    assert [it.key for it in open_source(str(tmp_path / "shards")).items()] == keys
    assert [it.key for it in open_source(str(tmp_path / "shards" / "*.tar")).items()] == keys


def test_webdataset_bad_samples_are_skipped_with_reasons(tmp_path, monkeypatch):
    good = photo_bytes(4)
    d = tmp_path / "shards"
    write_tar(d / "00000.tar", [
        ("a/s1.jpg", good[0]), ("a/s1.txt", b"x"),
        ("a/s2.jpg", b"this is not a picture\n" * 10),     # an image member that is no image
        ("a/s3.json", b"{}"), ("a/s3.txt", b"no image"),    # a sample without an image member
        ("a/s4.seg.png", good[1]), ("a/s4.png", good[2]),   # the png member, not the compound one
    ])
    full = write_tar(d / "00001.tar", [("t1.jpg", good[3]), ("t2.jpg", good[0]), ("t3.jpg", good[1])])
    (d / "00001.tar").write_bytes(full[: 2048 + len(good[3]) + 100])  # cut inside t2's data
    (d / "00002.tar").write_bytes(b"<html>403 Forbidden</html>" * 30)  # what a failed download leaves
    out = tmp_path / "out"
    assert prep_cli("--codec", "jpeg", "--input", d / "{00000..00002}.tar", "--out", out, "--val-fraction", 0,
                    "--min-side", 32) == 0
    m = json.loads((out / "manifest.json").read_text())
    skipped = {s["path"]: s["reason"] for s in m["skipped"]}
    assert "identify" in skipped["00000.tar/a/s2"]
    assert "no jpg/jpeg/png/webp member" in skipped["00000.tar/a/s3"] and "json, txt" in skipped["00000.tar/a/s3"]
    assert "truncated" in skipped["00001.tar/t2"]
    assert "tar unreadable at its start" in skipped["00002.tar/"]
    assert set(skipped) == {"00000.tar/a/s2", "00000.tar/a/s3", "00001.tar/t2", "00002.tar/"}
    got = records(out)
    assert sorted(got) == ["00000.tar/a/s1", "00000.tar/a/s4", "00001.tar/t1"]  # nothing good lost
    tok = ShardSet(out, "train").tokenizer()
    assert tok.decode(list(np.frombuffer(got["00000.tar/a/s4"], np.uint16))) == JpegCodec().encode(good[2])
    # a remote shard is read once as a stream instead of seeking over members: the same items
    seeking = open_source(str(d / "{00000..00002}.tar")).items()
    monkeypatch.setattr(webdata, "_SEEKS_CHEAPLY", ())
    assert open_source(str(d / "{00000..00002}.tar")).items() == seeking


# --- parquet -------------------------------------------------------------------------------------------
def test_parquet_binary_and_struct_columns_streamed_by_row_group(tmp_path):
    pa = pytest.importorskip("pyarrow")
    pq = pytest.importorskip("pyarrow.parquet")
    images = photo_bytes(6, seed=1, fmt="PNG")
    cells = [images[0], images[1], b"", images[2], None, images[3], images[4], images[5]]
    d = tmp_path / "pq"
    d.mkdir()
    # img2dataset's layout: key, caption and the image as a binary `jpg` column; small row groups
    table = pa.table({"key": [f"{i:09d}" for i in range(8)], "caption": ["a pet"] * 8,
                      "jpg": pa.array(cells, pa.binary())})
    pq.write_table(table, d / "00000.parquet", row_group_size=3)
    pq.write_table(table.slice(5), d / "00001.parquet")
    (d / "00002.parquet").write_bytes((d / "00001.parquet").read_bytes()[:200])  # a cut download
    a, b = tmp_path / "a", tmp_path / "b"
    assert prep_cli("--codec", "jpeg", "--input", d, "--out", a, "--val-fraction", 0, "--min-side", 32) == 0
    assert prep_cli("--codec", "jpeg", "--input", d / "*.parquet", "--out", b, "--val-fraction", 0, "--min-side", 32,
                    "--workers", 2, "--items-per-task", 2) == 0
    assert {k: v for k, v in tree(a).items() if "settings" not in k and "manifest" not in k} == \
        {k: v for k, v in tree(b).items() if "settings" not in k and "manifest" not in k}
    m = json.loads((a / "manifest.json").read_text())
    skipped = {s["path"]: s["reason"] for s in m["skipped"]}
    assert "not a readable parquet file" in skipped.pop("00002.parquet/")
    assert skipped == {"00000.parquet/00000002": "empty image bytes in column 'jpg'",
                       "00000.parquet/00000004": "no image in column 'jpg' (null)"}
    got = records(a)
    assert len(got) == 9 and got["00001.parquet/00000002"] == got["00000.parquet/00000007"]
    tok = ShardSet(a, "train").tokenizer()
    assert tok.decode(list(np.frombuffer(got["00000.parquet/00000007"], np.uint16))) == JpegCodec().encode(images[5])
    # an HF export: the image as a struct {bytes, path}
    hf = pa.table({"label": [0, 1], "image": [{"bytes": b, "path": None} for b in images[:2]]})
    pq.write_table(hf, tmp_path / "hf.parquet")
    assert prep_cli("--codec", "jpeg", "--input", tmp_path / "hf.parquet", "--out", tmp_path / "hf", "--val-fraction", 0,
                    "--min-side", 32) == 0
    assert records(tmp_path / "hf") == {"hf.parquet/00000000": got["00000.parquet/00000000"],
                                        "hf.parquet/00000001": got["00000.parquet/00000001"]}
    # --image-column names the column; a column that holds no bytes is refused before any work
    one = d / "00000.parquet"
    assert open_source(str(one), column="jpg").items()[7].key == "00000.parquet/00000007"
    with pytest.raises(SourceError, match="'caption' holds string, not image bytes"):
        open_source(str(one), column="caption").items()
    assert prep_cli("--codec", "jpeg", "--input", one, "--image-column", "nope", "--out", tmp_path / "c") == 2
    assert not (tmp_path / "c").exists()


# --- fsspec URLs ------------------------------------------------------------------------------------------
def test_memory_url_in_and_out(tmp_path):
    fsspec = pytest.importorskip("fsspec")
    fs = fsspec.filesystem("memory")
    images = photo_bytes(5, seed=2)
    local = tmp_path / "shards"
    keys = webdataset_shards(local, images, per_shard=3)
    for f in local.iterdir():
        fs.pipe_file(f"/bucket/shards/{f.name}", f.read_bytes())
    try:
        res = prep(open_source("memory://bucket/shards/{00000..00001}.tar"), JpegCodec, "memory://bucket/out",
                   val_fraction=0.3, records_per_shard=2, progress=False, log=None)
        assert res.num_records == 5
        # the same files as a local prep of the same shards (the source's spelling aside)
        ref = tmp_path / "ref"
        prep(open_source(str(local / "{00000..00001}.tar")), JpegCodec, ref, val_fraction=0.3, records_per_shard=2,
             progress=False, log=None)
        down = tmp_path / "down"
        for p in fs.find("/bucket/out"):
            rel = p[len("/bucket/out/"):]
            (down / rel).parent.mkdir(parents=True, exist_ok=True)
            (down / rel).write_bytes(fs.cat_file(p))
        mine, theirs = tree(down), tree(ref)
        assert mine.keys() == theirs.keys()
        assert [k for k in mine if mine[k] != theirs[k]] == ["manifest.json", "parts/settings.json"]
        assert json.loads(mine["manifest.json"])["source"]["input"].startswith("memory://")
        assert sorted(records(down)) == sorted(keys)  # what was written there is a valid dataset
        # a rerun resumes from the URL's markers: nothing to do, nothing changes
        again = prep(open_source("memory://bucket/shards/{00000..00001}.tar"), JpegCodec, "memory://bucket/out",
                     val_fraction=0.3, records_per_shard=2, progress=False, log=None)
        assert again.items_done_now == 0 and fs.cat_file("/bucket/out/manifest.json") == mine["manifest.json"]
    finally:
        fs.rm("/bucket", recursive=True)


def test_unreachable_input_is_a_clear_error_before_any_work(tmp_path, capsys):
    out = tmp_path / "out"
    assert prep_cli("--codec", "jpeg", "--input", "memory://nowhere/{00000..00001}.tar", "--out", out) == 2
    err = capsys.readouterr().err
    assert "cannot read" in err and "00000.tar" in err and "Traceback" not in err
    assert prep_cli("--codec", "jpeg", "--input", f"file://{tmp_path}/missing.parquet", "--out", out) == 2
    assert "cannot read" in capsys.readouterr().err
    assert prep_cli("--codec", "jpeg", "--input", "nosuchproto://bucket/x.tar", "--out", out) == 2
    assert "nosuchproto" in capsys.readouterr().err
    assert not out.exists()  # no work started, no folder made


def test_fsspec_output_with_rename_is_the_same_as_a_path(tmp_path):
    """An fsspec file system that is no object store (here fsspec's own local one, `local://`):
    temporary name + fs.mv per file, written by two worker processes; the same bytes as a plain path."""
    images = photo_bytes(6, seed=3)
    keys = webdataset_shards(tmp_path / "shards", images, per_shard=4)
    src = str(tmp_path / "shards" / "{00000..00001}.tar")
    ref = tmp_path / "ref"
    prep(open_source(src), JpegCodec, ref, val_fraction=0.3, records_per_shard=4, progress=False, log=None)
    res = prep(open_source(src), JpegCodec, f"local://{tmp_path}/viafs", val_fraction=0.3, records_per_shard=4,
               workers=2, items_per_task=1, progress=False, log=None)
    assert res.out == f"local://{tmp_path}/viafs" and tree(tmp_path / "viafs") == tree(ref)  # no temporary left
    assert sorted(records(ref)) == sorted(keys)
