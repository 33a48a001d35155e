"""HF exports: atomic writes, keep-last-K, load_for_inference (also the released JPEG-LM layout)."""

from __future__ import annotations

import shutil
import warnings

import pytest
import torch

from jpeglm.checkpoint import CheckpointError, export_hf, load_for_inference, resolve_export
from jpeglm.tokenizer import ByteTokenizer

META = {"codec": {"name": "jpeg", "params": {}}, "tokenizer": ByteTokenizer().to_config(), "train": {}, "model": {}, "data": "/x"}


def _model(seed=0):
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(seed)
    cfg = LlamaConfig(vocab_size=276, hidden_size=32, intermediate_size=64, num_hidden_layers=1,
                      num_attention_heads=2, max_position_embeddings=128, bos_token_id=1, eos_token_id=2, pad_token_id=3)
    return LlamaForCausalLM(cfg).eval()


def _export(run, step, model, tok=None, keep=3):
    sd = {k: v.detach().clone() for k, v in model.state_dict().items()}
    return export_hf(run, step, model.config, sd, tok or ByteTokenizer(), META, keep_last=keep)


def test_run_dir_loads_latest_export_with_same_logits_codec_and_tokenizer(tmp_path):
    from jpeglm.codecs.jpeg import JpegCodec

    run = tmp_path / "run"
    _export(run, 1, _model(1))
    m = _model(2)
    _export(run, 2, m)
    loaded = load_for_inference(run)
    assert loaded.meta["step"] == 2 and isinstance(loaded.codec, JpegCodec)
    ids = torch.tensor([loaded.tokenizer.encode(b"\xff\xd8\x00\x10\xff\xd9")])
    with torch.no_grad():
        torch.testing.assert_close(loaded.model(ids).logits, m(ids).logits, rtol=0, atol=0)
    assert resolve_export(run / "checkpoints" / "step-0000001").name == "step-0000001"


def test_keep_last_k_and_no_temp_dirs_left(tmp_path):
    run = tmp_path / "run"
    m = _model()
    for step in range(1, 5):
        _export(run, step, m, keep=2)
    names = sorted(p.name for p in (run / "checkpoints").iterdir())
    assert names == ["latest", "step-0000003", "step-0000004"]


def test_a_failing_export_leaves_the_good_one_and_latest(tmp_path):
    run = tmp_path / "run"
    good = _model(1)
    _export(run, 1, good)
    before = (run / "checkpoints" / "step-0000001" / "model.safetensors").read_bytes()

    class Broken(ByteTokenizer):
        def save_pretrained(self, directory):
            raise OSError("disk full")

    with pytest.raises(CheckpointError, match="disk full"):
        _export(run, 2, _model(2), tok=Broken())
    with pytest.raises(CheckpointError, match="disk full"):  # the same step again must not clobber it either
        _export(run, 1, _model(3), tok=Broken())
    assert sorted(p.name for p in (run / "checkpoints").iterdir()) == ["latest", "step-0000001"]
    assert (run / "checkpoints" / "latest").read_text().strip() == "step-0000001"
    assert (run / "checkpoints" / "step-0000001" / "model.safetensors").read_bytes() == before


def test_released_jpeg_lm_layout_assumes_canonical_jpeg_with_a_warning(tmp_path):
    from jpeglm.codecs.jpeg import JpegCodec

    run = tmp_path / "run"
    export = _export(run, 1, _model())
    released = tmp_path / "released"
    shutil.copytree(export, released)
    (released / "jpeglm.yaml").unlink()
    with pytest.warns(UserWarning, match="canonical JPEG"):
        loaded = load_for_inference(released)
    assert isinstance(loaded.codec, JpegCodec) and loaded.codec.params == JpegCodec().params
    assert loaded.meta["format"] == "released-jpeg-lm"


def test_not_a_checkpoint_is_a_clear_error(tmp_path):
    with pytest.raises(CheckpointError, match="no such"):
        load_for_inference(tmp_path / "missing")
    (tmp_path / "empty").mkdir()
    with pytest.raises(CheckpointError, match="not a checkpoint"):
        load_for_inference(tmp_path / "empty")
    (tmp_path / "run" / "checkpoints").mkdir(parents=True)
    with pytest.raises(CheckpointError, match="without a finished export"):
        load_for_inference(tmp_path / "run")
    (tmp_path / "half").mkdir()
    (tmp_path / "half" / "config.json").write_text("{}")
    with warnings.catch_warnings(), pytest.raises(CheckpointError, match="no tokenizer"):
        load_for_inference(tmp_path / "half")
