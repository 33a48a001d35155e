"""Tokenizer tests: exact round trips, the id layout, BPE training, the HF loading path users take
(AutoTokenizer), the released JPEG-LM tokenizer format, and `jpeglm tokenizer train` on shards."""

from __future__ import annotations

import io
import json
import random
from pathlib import Path

import numpy as np
import pytest

from jpeglm.tokenizer import (
    BYTE_CHAR_OFFSET,
    BpeTokenizer,
    ByteTokenizer,
    CodeTokenizer,
    TokenizerError,
    bytes_to_text,
    load_tokenizer,
    text_to_bytes,
    tokenizer_from_config,
)


def jpeg_bytes(im, size=256, box=None) -> bytes:
    """Canonical-style JPEG-LM bytes: square crop, resize, q25 4:2:0, RST after every MCU, no tables."""
    from PIL import Image

    w, h = im.size
    s = min(w, h)
    box = box or ((w - s) // 2, (h - s) // 2, (w - s) // 2 + s, (h - s) // 2 + s)
    im = im.crop(box).resize((size, size), Image.BILINEAR, reducing_gap=None)
    f = io.BytesIO()
    im.save(f, "JPEG", quality=25, subsampling="4:2:0", streamtype=2, restart_marker_blocks=1)
    return f.getvalue()


@pytest.fixture(scope="module")
def jpegs(photos):
    """Train set: several crops of the first five photos; held out: the last photo."""
    train = []
    for im in photos[:-1]:
        w, h = im.size
        s = min(w, h) * 3 // 4
        for x, y in [(0, 0), (w - s, 0), (0, h - s), (w - s, h - s), ((w - s) // 2, (h - s) // 2)]:
            train.append(jpeg_bytes(im, box=(x, y, x + s, y + s)))
    return train, [jpeg_bytes(photos[-1]), jpeg_bytes(photos[-1], size=128)]


@pytest.fixture(scope="module")
def bpe(jpegs) -> BpeTokenizer:
    return BpeTokenizer.train(jpegs[0], vocab_size=320)


def random_byte_strings(seed=0):
    rng = random.Random(seed)
    out = [b"", bytes(range(256)), bytes(range(255, -1, -1)) * 3, b"\xff" * 1000, b"\x00", b"\xff\xd8\xff\xd9"]
    for n in (1, 2, 3, 17, 255, 4096, 100_000):
        out.append(bytes(rng.randrange(256) for _ in range(n)))
        # low-entropy strings exercise long merges
        out.append(bytes(rng.choice([0, 0xFF, 0xD0, 0x12]) for _ in range(n)))
    return out


# --- text mapping -------------------------------------------------------------------------------


def test_text_mapping_is_the_released_one():
    data = bytes(range(256))
    text = bytes_to_text(data)
    assert text == "".join(chr(b + 0x2800) for b in data)
    assert text_to_bytes(text) == data
    # a sentencepiece dummy prefix or decode spaces carry no bytes
    assert text_to_bytes("\u2581" + text[:3] + " ") == data[:3]


# --- byte tokenizer -----------------------------------------------------------------------------


def test_byte_ids_layout_and_round_trip():
    tok = ByteTokenizer()
    assert (tok.unk_id, tok.bos_id, tok.eos_id, tok.pad_id) == (0, 1, 2, 3)
    assert tok.vocab_size == 4 + 256 + 16 and tok.kind == "byte"
    assert tok.encode(b"\x00\xff") == [1, 4, 259, 2]
    assert tok.encode(b"\x00\xff", bos=False, eos=False) == [4, 259]
    assert tok.special_id("<extra_0>") == 260 and tok.special_id("extra_15") == 275 and tok.special_id(2) == 262
    with pytest.raises(KeyError):
        tok.special_id("<extra_16>")
    for data in random_byte_strings():
        ids = tok.encode(data)
        assert ids[0] == 1 and ids[-1] == 2 and len(ids) == len(data) + 2
        assert tok.decode(ids) == data
        assert tok.decode(np.asarray(ids, dtype=np.uint16)) == data  # shard records are uint16 arrays


def test_byte_decode_drops_specials_extras_and_unknown_ids():
    tok = ByteTokenizer(num_extra=4)
    ids = [1, 4 + 65, 260, 3, -7, 10**9, 0, 4 + 66, 263, 2]
    assert tok.decode(ids) == b"AB"
    assert tok.decode([]) == b""
    with pytest.raises(TypeError):
        tok.encode("not bytes")


def test_byte_token_bytes_table_matches_decode():
    tok = ByteTokenizer()
    table = tok.token_bytes_table()
    assert len(table) == tok.vocab_size and table is tok.token_bytes_table()  # cached
    rng = np.random.default_rng(0)
    ids = rng.integers(0, tok.vocab_size, 2000).tolist()
    assert b"".join(table[i] for i in ids if table[i] is not None) == tok.decode(ids)
    assert tok.token_bytes(1) is None and tok.token_bytes(4 + 0xD8) == b"\xd8" and tok.token_bytes(99999) is None


# --- code tokenizer -----------------------------------------------------------------------------


def test_code_tokenizer_2_18_codes_round_trip():
    tok = CodeTokenizer(2**18)
    assert tok.vocab_size == 4 + 2**18 + 16 and tok.special_id("<extra_0>") == 4 + 2**18
    codes = np.random.default_rng(0).integers(0, 2**18, 4096)
    codes[:2] = [0, 2**18 - 1]
    ids = tok.encode(codes)
    assert ids[0] == 1 and ids[-1] == 2 and ids[1] == 4 and ids[2] == 4 + 2**18 - 1
    out = tok.decode(ids + [tok.special_id(3), -1, 10**9])
    assert out.dtype == np.int64 and np.array_equal(out, codes)
    assert tok.decode(np.asarray(ids, dtype=np.uint32)).tolist() == codes.tolist()
    assert tok.encode(np.zeros(0, np.int64)) == [1, 2]
    with pytest.raises(ValueError):
        tok.encode(np.array([2**18]))
    with pytest.raises(ValueError):
        tok.encode(np.array([-1]))
    assert tok.token_bytes(5) is None


# --- BPE --------------------------------------------------------------------------------------


def test_bpe_specials_and_exact_round_trip_on_every_byte_string(bpe):
    assert (bpe.unk_id, bpe.bos_id, bpe.eos_id, bpe.pad_id) == (0, 1, 2, 3)
    assert bpe.vocab_size == 320 + 16 and bpe.special_id("<extra_0>") == 320
    assert not bpe.add_dummy_prefix
    for data in random_byte_strings(1):
        ids = bpe.encode(data)
        assert ids[0] == bpe.bos_id and ids[-1] == bpe.eos_id
        assert bpe.decode(ids) == data
        assert bpe.unk_id not in ids[1:-1]


def test_bpe_round_trip_on_bytes_never_seen_in_training():
    # trained on a corpus that only uses 4 byte values: the other 252 must still round-trip
    rng = random.Random(0)
    corpus = [bytes(rng.choice(b"\x00\x01\xfe\xff") for _ in range(3000)) for _ in range(10)]
    tok = BpeTokenizer.train(corpus, vocab_size=300, num_extra=0)
    for data in (bytes(range(256)), bytes(rng.randrange(256) for _ in range(5000))):
        ids = tok.encode(data, bos=False, eos=False)
        assert tok.unk_id not in ids and tok.decode(ids) == data


def test_bpe_round_trips_and_compresses_held_out_jpegs(bpe, jpegs):
    train, held_out = jpegs
    for data in train + held_out:
        ids = bpe.encode(data)
        assert bpe.decode(ids) == data
    for data in held_out:
        n = len(bpe.encode(data, bos=False, eos=False))
        assert n < 0.98 * len(data), f"BPE-320 gave {n} tokens for {len(data)} bytes"


def test_bpe_token_bytes_table_consistent_with_decode(bpe, jpegs):
    table = bpe.token_bytes_table()
    assert len(table) == bpe.vocab_size
    assert all(table[i] is None for i in (0, 1, 2, 3)) and all(t is None for t in table[320:])
    assert all(table[i] for i in range(4, 320))  # every piece stands for >= 1 byte
    assert sorted(t for t in table if t is not None and len(t) == 1) == [bytes([b]) for b in range(256)]
    ids = bpe.encode(jpegs[1][0])
    assert b"".join(bpe.token_bytes(i) or b"" for i in ids) == jpegs[1][0]
    rng = np.random.default_rng(1)
    rand = rng.integers(-5, bpe.vocab_size + 5, 3000).tolist()
    assert bpe.decode(rand) == b"".join(table[i] for i in rand if 0 <= i < len(table) and table[i])


def test_bpe_training_is_deterministic_and_bounded(jpegs):
    a = BpeTokenizer.train(jpegs[0], vocab_size=400)
    b = BpeTokenizer.train(list(jpegs[0]), vocab_size=400)
    assert a.model_proto == b.model_proto
    assert a.train_info["items_used"] == len(jpegs[0])
    # reservoir sampling: bounded, seeded, deterministic
    c = BpeTokenizer.train(iter(jpegs[0]), vocab_size=300, max_sentences=5, seed=3)
    d = BpeTokenizer.train(iter(jpegs[0]), vocab_size=300, max_sentences=5, seed=3)
    assert c.train_info["items_used"] == 5 and c.model_proto == d.model_proto
    with pytest.raises(TokenizerError, match="no non-empty training data"):
        BpeTokenizer.train([b"", b""], vocab_size=320)
    with pytest.raises(TokenizerError, match="vocab_size must be > 260"):
        BpeTokenizer.train(jpegs[0], vocab_size=200)
    with pytest.raises(TokenizerError, match="training failed"):  # more merges than the corpus has
        BpeTokenizer.train([b"abc" * 20], vocab_size=4096)


def test_bpe_larger_vocab_compresses_more(bpe, jpegs):
    big = BpeTokenizer.train(jpegs[0], vocab_size=1024)
    data = jpegs[1][0]
    assert big.decode(big.encode(data)) == data
    assert len(big.encode(data)) < len(bpe.encode(data)) < len(data) + 2


# --- save / load / AutoTokenizer ------------------------------------------------------------------


def _auto(path):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(str(path))


def _check_hf_same_ids(tok, path, samples):
    hf = _auto(path)
    assert len(hf) == tok.vocab_size
    assert (hf.bos_token_id, hf.eos_token_id, hf.unk_token_id) == (tok.bos_id, tok.eos_id, tok.unk_id)
    for s in samples:
        text = tok.to_text(s)
        ids = hf(text)["input_ids"]
        assert ids == tok.encode(s, bos=True, eos=False)  # HF follows Llama: BOS, no EOS
        assert hf(text, add_special_tokens=False)["input_ids"] == tok.encode(s, bos=False, eos=False)
        assert hf.decode(tok.encode(s), skip_special_tokens=True).strip() == text
    if tok.num_extra:
        assert hf.convert_tokens_to_ids("<extra_3>") == tok.special_id("<extra_3>")
    return hf


def test_byte_save_load_and_autotokenizer(tmp_path, jpegs):
    tok = ByteTokenizer(num_extra=8)
    tok.save_pretrained(tmp_path / "tok")
    back = load_tokenizer(tmp_path / "tok")
    assert isinstance(back, ByteTokenizer) and back.to_config() == tok.to_config()
    assert json.loads((tmp_path / "tok" / "tokenizer_config.json").read_text())["jpeglm_tokenizer"] == "byte"
    _check_hf_same_ids(tok, tmp_path / "tok", [b"", bytes(range(256)), b"\n\r \t", jpegs[1][0]])


def test_code_save_load_and_autotokenizer(tmp_path):
    tok = CodeTokenizer(2**18, num_extra=4)
    tok.save_pretrained(tmp_path / "tok")
    back = load_tokenizer(tmp_path / "tok")
    assert isinstance(back, CodeTokenizer) and back.num_codes == 2**18 and back.vocab_size == tok.vocab_size
    codes = np.random.default_rng(2).integers(0, 2**18, 1000)
    _check_hf_same_ids(tok, tmp_path / "tok", [codes, np.array([0, 2**18 - 1])])


def test_bpe_save_load_and_autotokenizer(tmp_path, bpe, jpegs):
    d = tmp_path / "tok"
    bpe.save_pretrained(d)
    assert {"tokenizer.model", "tokenizer.json", "tokenizer_config.json", "jpeglm_tokenizer.json"} <= {
        p.name for p in d.iterdir()}
    back = load_tokenizer(d)
    assert isinstance(back, BpeTokenizer) and back.model_proto == bpe.model_proto and not back.released
    samples = [bytes(range(256)), b"\x00" * 50, jpegs[1][0], jpegs[1][1]] + random_byte_strings(2)[6:12]
    hf = _check_hf_same_ids(bpe, d, samples)
    assert type(hf).__name__ in ("LlamaTokenizer", "LlamaTokenizerFast")
    # without tokenizer.json transformers converts tokenizer.model itself: still the same ids
    (d / "tokenizer.json").unlink()
    _check_hf_same_ids(bpe, d, samples[:4])


def _released_dir(tmp_path, corpus) -> Path:
    """A tokenizer directory in the released JPEG-LM format, trained with Llama's sentencepiece
    defaults (dummy prefix on, byte fallback, no pad piece): tokenizer.model + tokenizer_config.json."""
    import sentencepiece as spm

    model = io.BytesIO()
    spm.SentencePieceTrainer.train(
        sentence_iterator=iter(bytes_to_text(b) for b in corpus), model_writer=model, model_type="bpe",
        vocab_size=640, character_coverage=1.0, byte_fallback=True, split_digits=True, add_dummy_prefix=True,
        normalization_rule_name="identity", remove_extra_whitespaces=False, max_sentence_length=100_000,
        required_chars="".join(chr(BYTE_CHAR_OFFSET + b) for b in range(256)), minloglevel=2)
    d = tmp_path / "released"
    d.mkdir()
    (d / "tokenizer.model").write_bytes(model.getvalue())
    (d / "tokenizer_config.json").write_text(json.dumps({
        "tokenizer_class": "LlamaTokenizer", "add_bos_token": True, "add_eos_token": False,
        "bos_token": "<s>", "eos_token": "</s>", "unk_token": "<unk>"}))
    return d


def test_released_jpeglm_format_loads_and_round_trips(tmp_path, jpegs):
    d = _released_dir(tmp_path, jpegs[0])
    tok = load_tokenizer(d)
    assert isinstance(tok, BpeTokenizer) and tok.released and tok.add_dummy_prefix and tok.num_extra == 0
    assert (tok.bos_id, tok.eos_id, tok.unk_id) == (1, 2, 0) and tok.pad_id == tok.unk_id
    hf = _auto(d)
    for data in [jpegs[1][0], bytes(range(256)), b"\xff\xd8"]:
        ids = tok.encode(data, eos=False)
        # what the release's inference does: tokenizer(text), BOS first, "▁" dummy prefix included
        assert hf(bytes_to_text(data))["input_ids"] == ids
        assert ids[0] == tok.bos_id and tok.sp.id_to_piece(ids[1]).startswith("\u2581")
        assert tok.decode(ids) == data and tok.decode(tok.encode(data)) == data
        assert b"".join(tok.token_bytes(i) or b"" for i in ids) == data
    # a re-save is ours (meta file) and keeps the released behaviour, for us and for AutoTokenizer
    tok.save_pretrained(tmp_path / "resaved")
    again = load_tokenizer(tmp_path / "resaved")
    assert again.released and again.encode(jpegs[1][0]) == tok.encode(jpegs[1][0])
    assert _auto(tmp_path / "resaved")(bytes_to_text(jpegs[1][0]))["input_ids"] == tok.encode(jpegs[1][0], eos=False)


def test_load_tokenizer_bad_input_gives_clear_errors(tmp_path):
    with pytest.raises(TokenizerError, match="does not exist"):
        load_tokenizer(tmp_path / "nope")
    (tmp_path / "empty").mkdir()
    with pytest.raises(TokenizerError, match="neither"):
        load_tokenizer(tmp_path / "empty")
    bad = tmp_path / "bad"
    bad.mkdir()
    (bad / "tokenizer.model").write_bytes(b"this is not a sentencepiece model")
    with pytest.raises(TokenizerError, match="not a sentencepiece model"):
        load_tokenizer(bad)
    ByteTokenizer().save_pretrained(tmp_path / "k")
    (tmp_path / "k" / "jpeglm_tokenizer.json").write_text(json.dumps({"kind": "morse"}))
    with pytest.raises(TokenizerError, match="unknown tokenizer kind"):
        load_tokenizer(tmp_path / "k")


def test_config_round_trip(bpe, tmp_path):
    for tok in (ByteTokenizer(num_extra=3), CodeTokenizer(512, num_extra=0)):
        again = tokenizer_from_config(tok.to_config())
        assert type(again) is type(tok) and again.to_config() == tok.to_config()
    bpe.save_pretrained(tmp_path / "tokenizer")
    again = tokenizer_from_config({**bpe.to_config(), "path": "tokenizer"}, base_dir=tmp_path)
    assert again.model_proto == bpe.model_proto
    with pytest.raises(TokenizerError, match="needs a 'path'"):
        tokenizer_from_config(bpe.to_config())


# --- jpeglm tokenizer train -------------------------------------------------------------------------


def write_contract_shards(root: Path, records: list[bytes]) -> None:
    """A dataset in the CONTRACTS.md shard format, written by hand (byte tokenizer, one shard)."""
    tok = ByteTokenizer()
    tok.save_pretrained(root / "tokenizer")
    ids = [np.asarray(tok.encode(r), dtype=np.uint16) for r in records]
    (root / "train").mkdir(parents=True)
    np.concatenate(ids).tofile(root / "train" / "shard-00000.bin")
    offsets = np.concatenate([[0], np.cumsum([len(x) for x in ids])]).astype(np.int64)
    with open(root / "train" / "shard-00000.idx", "wb") as f:
        np.save(f, offsets)
    (root / "train" / "shard-00000.jsonl").write_text("".join(
        json.dumps({"key": f"k{i}", "n_tokens": len(x), "n_symbols": len(r), "n_bytes": len(r), "n_pixels": 65536}) + "\n"
        for i, (x, r) in enumerate(zip(ids, records))))
    manifest = {"format": "jpeglm-shards", "version": 1, "codec": {"name": "jpeg", "params": {}},
                "tokenizer": {**tok.to_config(), "path": "tokenizer"}, "dtype": "uint16", "num_records": len(records),
                "splits": {"train": {"num_records": len(records), "num_tokens": int(offsets[-1]),
                                     "shards": [{"name": "shard-00000", "num_records": len(records)}]},
                           "val": {"num_records": 0, "num_tokens": 0, "shards": []}}}
    (root / "manifest.json").write_text(json.dumps(manifest))


def test_tokenizer_train_cli_on_shards(tmp_path, jpegs, capsys):
    pytest.importorskip("jpeglm.shards")
    from jpeglm.cli import main

    write_contract_shards(tmp_path / "data", jpegs[0])
    rc = main(["tokenizer", "train", "--data", str(tmp_path / "data"), "--vocab-size", "320", "--out", str(tmp_path / "bpe")])
    assert rc == 0, capsys.readouterr().err
    tok = load_tokenizer(tmp_path / "bpe")
    assert isinstance(tok, BpeTokenizer) and tok.vocab_size == 336
    # trained on the records' bytes (BOS/EOS stripped): identical to training on the bytes directly
    assert tok.model_proto == BpeTokenizer.train(jpegs[0], vocab_size=320).model_proto
    assert tok.decode(tok.encode(jpegs[1][0])) == jpegs[1][0]
    assert "bytes/token" in capsys.readouterr().out
    # a directory that is not a dataset: a clear message and a non-zero exit code, no output
    rc = main(["tokenizer", "train", "--data", str(tmp_path / "nothing"), "--vocab-size", "320", "--out", str(tmp_path / "x")])
    assert rc == 2 and "manifest" in capsys.readouterr().err and not (tmp_path / "x").exists()  # the CLI's user-error code
