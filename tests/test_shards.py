"""The shard reader: records read back exactly as written, and corrupt datasets fail loudly."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest

from jpeglm.data_prep.pipeline import prep
from jpeglm.data_prep.sources import open_source
from jpeglm.codecs.jpeg import JpegCodec, JpegParams
from jpeglm.media import open_image, prepare_image
from jpeglm.shards import ShardError, ShardSet, dtype_for_vocab, read_manifest


@pytest.fixture(scope="module")
def dataset(tmp_path_factory, photos):
    src = tmp_path_factory.mktemp("src")
    for i, im in enumerate(photos):
        im.save(src / f"photo_{i:02d}.png")
    out = tmp_path_factory.mktemp("ds") / "jpeg"
    prep(open_source(str(src)), JpegCodec, out, val_fraction=0.3, seed=1, records_per_shard=2, progress=False, log=None)
    return src, out


def _copy(dataset, tmp_path):
    dst = tmp_path / "copy"
    shutil.copytree(dataset[1], dst)
    return dst


def test_round_trip_bytes(dataset):
    src, out = dataset
    codec = JpegCodec()
    seen = []
    for split in ("train", "val"):
        ds = ShardSet(out, split)
        tok = ds.tokenizer()
        for i in range(len(ds)):
            rec = ds[i]
            meta = ds.meta(i)
            assert rec.dtype == np.uint16 and rec[0] == tok.bos_id and rec[-1] == tok.eos_id
            expected = codec.encode(prepare_image(open_image(src / meta["key"]), 256))
            assert tok.decode(rec.tolist()) == expected
            assert meta["n_tokens"] == len(rec) == len(expected) + 2
            assert meta["n_bytes"] == meta["n_symbols"] == len(expected) and meta["n_pixels"] == 256 * 256
            seen.append(meta["key"])
    assert sorted(seen) == sorted(p.name for p in src.iterdir())


def test_shardset_api(dataset):
    _, out = dataset
    train, val = ShardSet(out, "train"), ShardSet(out, "val")
    m = train.manifest
    assert len(train) + len(val) == m["num_records"] == 6 and len(val) >= 1 and len(train) >= 1
    assert train.num_tokens + val.num_tokens == m["num_tokens"]
    assert train.num_tokens == int(train.lengths.sum()) == sum(len(r) for r in train)
    assert np.array_equal(train[-1], train[len(train) - 1])
    assert all(np.array_equal(a, train[i]) for i, a in enumerate(train))
    # memory-mapped: a record is a view into the shard's map, not a copy of the data set
    assert isinstance(train[0].base, np.memmap) or isinstance(train[0], np.memmap)
    with pytest.raises(IndexError):
        train[len(train)]
    codec = train.codec()
    assert isinstance(codec, JpegCodec) and codec.params == JpegParams()
    assert train.tokenizer().vocab_size == m["tokenizer"]["vocab_size"]


def test_dtype_for_vocab():
    assert dtype_for_vocab(320) == np.uint16
    assert dtype_for_vocab(65536) == np.uint16  # ids 0..65535
    assert dtype_for_vocab(65537) == np.uint32
    with pytest.raises(ValueError, match="positive"):
        dtype_for_vocab(0)


def test_truncated_bin_is_an_error(dataset, tmp_path):
    out = _copy(dataset, tmp_path)
    bin_path = out / "train" / "shard-00000.bin"
    bin_path.write_bytes(bin_path.read_bytes()[:-2])
    with pytest.raises(ShardError, match="truncated or mismatched"):
        ShardSet(out, "train")
    ShardSet(out, "val")  # the other split is intact


def test_missing_and_mismatched_index(dataset, tmp_path):
    out = _copy(dataset, tmp_path)
    (out / "train" / "shard-00001.idx").unlink()
    with pytest.raises(ShardError, match="missing shard file"):
        ShardSet(out, "train")
    out2 = _copy(dataset, tmp_path / "b")
    idx = out2 / "train" / "shard-00000.idx"
    offsets = np.load(idx)
    with open(idx, "wb") as f:  # (np.save on a path would append .npy)
        np.save(f, offsets[:-1])  # one record fewer than the manifest says (and the .bin is too long)
    with pytest.raises(ShardError, match="shard-00000.idx: .* records, the manifest says"):
        ShardSet(out2, "train")


def test_bad_manifests(dataset, tmp_path):
    out = _copy(dataset, tmp_path)
    man = out / "manifest.json"
    good = json.loads(man.read_text())
    with pytest.raises(ShardError, match="no manifest"):
        ShardSet(tmp_path / "nowhere", "train")
    man.write_text("{not json")
    with pytest.raises(ShardError, match="unreadable manifest"):
        read_manifest(out)
    man.write_text(json.dumps({**good, "format": "something-else"}))
    with pytest.raises(ShardError, match="format"):
        ShardSet(out, "train")
    man.write_text(json.dumps({k: v for k, v in good.items() if k != "dtype"}))
    with pytest.raises(ShardError, match="lacks key"):
        ShardSet(out, "train")
    man.write_text(json.dumps(good))
    with pytest.raises(ShardError, match="split must be"):
        ShardSet(out, "test")
    (out / "manifest.json").unlink()
    with pytest.raises(ShardError, match="resume"):  # parts/ is there: an unfinished prep
        ShardSet(out, "train")
