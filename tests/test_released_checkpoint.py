"""The released JPEG-LM checkpoint, as its users have it (issue 12, items 2-5): its file layout
(one pickled pytorch_model.bin, max_position_embeddings 65,536, vocab 320, a sentencepiece
tokenizer.model, special_tokens_map.json with pad = unk = 0, no generation_config.json), a hub id
read from the HF cache offline, a context of 12,288 with a KV cache that fits, and files that end
with EOI. The stand-in below is that layout at a tiny size."""

from __future__ import annotations

import argparse
import io
import json
import shutil
from pathlib import Path

import pytest
import torch
from torch.utils._python_dispatch import TorchDispatchMode

from jpeglm.codecs.jpeg import EOI, JpegCodec
from jpeglm.sample import SamplerConfig, generate

REPO, COMMIT = "uwnlp/jpeg-lm-reimplementation", "0123456789abcdef0123456789abcdef01234567"

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def released(tmp_path_factory, photos):
    """A tiny checkpoint in exactly the released layout."""
    import sentencepiece as spm
    from transformers import LlamaConfig, LlamaForCausalLM

    codec = JpegCodec()
    text = ["".join(chr(b + 0x2800) for b in codec.encode(p)) for p in photos[:4]]
    proto = io.BytesIO()
    spm.SentencePieceTrainer.train(
        sentence_iterator=iter(text), model_writer=proto, model_type="bpe", vocab_size=320, character_coverage=1.0,
        required_chars="".join(chr(b + 0x2800) for b in range(256)), max_sentence_length=100_000,
        split_by_unicode_script=False, minloglevel=2, num_threads=1,
    )  # Llama's defaults otherwise: unk 0, <s> 1, </s> 2, no pad piece, a "▁" dummy prefix
    d = tmp_path_factory.mktemp("released") / "jpeg-lm"
    d.mkdir()
    (d / "tokenizer.model").write_bytes(proto.getvalue())
    (d / "tokenizer_config.json").write_text(json.dumps({
        "tokenizer_class": "LlamaTokenizer", "bos_token": "<s>", "eos_token": "</s>", "unk_token": "<unk>",
        "pad_token": "<unk>", "add_bos_token": True, "add_eos_token": False}))
    (d / "special_tokens_map.json").write_text(json.dumps(
        {"bos_token": "<s>", "eos_token": "</s>", "unk_token": "<unk>", "pad_token": "<unk>"}))
    torch.manual_seed(0)
    cfg = LlamaConfig(vocab_size=320, hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=2,
                      num_key_value_heads=2, max_position_embeddings=65536, bos_token_id=1, eos_token_id=2, pad_token_id=0)
    model = LlamaForCausalLM(cfg)
    cfg.save_pretrained(d)  # config.json only: no generation_config.json, no safetensors
    torch.save(model.state_dict(), d / "pytorch_model.bin")
    assert sorted(p.name for p in d.iterdir()) == ["config.json", "pytorch_model.bin", "special_tokens_map.json",
                                                   "tokenizer.model", "tokenizer_config.json"]
    return d


def _load(path):
    from jpeglm.checkpoint import load_for_inference

    with pytest.warns(UserWarning, match="canonical"):
        return load_for_inference(path)


def test_the_layout_loads_with_weights_only(released, monkeypatch):
    from jpeglm.sample.budget import context_length

    calls = []
    real_load = torch.load

    def spy(*a, **kw):
        calls.append(kw.get("weights_only"))
        return real_load(*a, **kw)

    monkeypatch.setattr(torch, "load", spy)
    loaded = _load(released)
    assert calls and all(w is True for w in calls)  # never a full unpickle
    saved = real_load(released / "pytorch_model.bin", weights_only=True)
    for k, v in loaded.model.state_dict().items():
        assert torch.equal(v, saved[k]), k
    tok = loaded.tokenizer
    assert (tok.pad_id, tok.unk_id, tok.bos_id, tok.eos_id, tok.vocab_size) == (0, 0, 1, 2, 320)
    assert loaded.model.config.max_position_embeddings == 65536 and context_length(loaded.model) == 12288


class _RunsCode:
    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return (Path.touch, (self.marker,))


def test_a_pickle_that_would_run_code_is_refused(released, tmp_path):
    from jpeglm.checkpoint import CheckpointError, load_for_inference

    hostile = tmp_path / "hostile"
    shutil.copytree(released, hostile)
    marker = tmp_path / "ran"
    torch.save({"model.embed_tokens.weight": _RunsCode(marker)}, hostile / "pytorch_model.bin")
    with pytest.raises(CheckpointError, match="weights_only"), pytest.warns(UserWarning):
        load_for_inference(hostile)
    assert not marker.exists()


def test_safetensors_win_over_the_bin(released, tmp_path):
    from safetensors.torch import save_file

    both = tmp_path / "both"
    shutil.copytree(released, both)
    state = {k: v + 1.0 for k, v in torch.load(released / "pytorch_model.bin", weights_only=True).items()}
    save_file(state, str(both / "model.safetensors"), metadata={"format": "pt"})
    loaded = _load(both)
    for k, v in loaded.model.state_dict().items():
        assert torch.equal(v, state[k]), k


class _Shapes(TorchDispatchMode):
    """The largest dimension of any tensor an op creates."""

    def __init__(self):
        super().__init__()
        self.largest = 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        for t in out if isinstance(out, (tuple, list)) else [out]:
            if isinstance(t, torch.Tensor) and t.dim():
                self.largest = max(self.largest, *t.shape)
        return out


def _eos_at_once(model, eos_id):
    def hook(module, args, out):
        out = out.clone()
        out[..., eos_id] += 1000.0
        return out

    return model.lm_head.register_forward_hook(hook)


def test_the_default_budget_is_the_trained_context(released, photos):
    loaded = _load(released)
    codec = loaded.codec
    prompt = codec.prompt(codec.encode(photos[0]), 0.6)
    handle = _eos_at_once(loaded.model, loaded.tokenizer.eos_id)
    try:
        with _Shapes() as seen:
            [s] = generate(loaded.model, loaded.tokenizer, codec, [prompt], 1, SamplerConfig(constrain=False))
    finally:
        handle.remove()
    assert s.finish == "eos"
    assert seen.largest == 12288  # the cache slab: prompt + budget = the trained context, not 65,536
    # a budget asked for may go past the trained context (never past max_position_embeddings)
    handle = _eos_at_once(loaded.model, loaded.tokenizer.eos_id)
    try:
        with _Shapes() as seen:
            generate(loaded.model, loaded.tokenizer, codec, [prompt], 1, SamplerConfig(constrain=False, max_new_tokens=20000))
    finally:
        handle.remove()
    assert seen.largest == s.n_prompt_tokens + 20000


def test_trained_context_of_our_checkpoints():
    from jpeglm.sample.budget import trained_context

    assert trained_context({"train": {"data": {"seq_len": 4096}}}, 65536) == 4096
    assert trained_context({"train": {"data": {"seq_len": 4096}}}, 2048) == 2048  # never past the positions
    assert trained_context({"format": "released-jpeg-lm"}, 65536) == 12288
    assert trained_context({}, 1024) == 1024


def test_sampling_context_rules():
    from types import SimpleNamespace

    from jpeglm.sample.budget import context_length, sampling_context

    model = SimpleNamespace(config=SimpleNamespace(max_position_embeddings=65536, jpeglm_context=256))
    assert context_length(model) == 256 == sampling_context(model, None)  # the trained context by default
    assert sampling_context(model, 1000) == 65536  # a budget asked for may go past it
    assert sampling_context(model, None, fixed_length=True) == 65536  # a grid of codes ends after its last code
    assert context_length(SimpleNamespace(config=SimpleNamespace(max_position_embeddings=2048))) == 2048


def test_a_cache_that_cannot_fit_is_refused_before_allocating(released, photos, monkeypatch):
    from jpeglm.sample import CacheTooLargeError, budget

    loaded = _load(released)
    codec = loaded.codec
    prompt = codec.prompt(codec.encode(photos[0]), 0.6)
    need = budget.cache_bytes(loaded.model, 4, 12288)
    assert need == 2 * 2 * 4 * 2 * 12288 * 16 * 4  # K and V x layers x rows x kv heads x positions x head dim x fp32
    monkeypatch.setattr(budget, "free_bytes", lambda device: need // 2)
    with pytest.raises(CacheTooLargeError, match=r"needs .* GiB.*--batch-size \(now 4\).*--max-new-tokens"):
        generate(loaded.model, loaded.tokenizer, codec, [prompt], 4, SamplerConfig(batch_size=4))


# --- hub ids ----------------------------------------------------------------------------------------
@pytest.fixture()
def hf_cache(released, tmp_path, monkeypatch):
    """The released stand-in in a temporary HF cache, offline."""
    from huggingface_hub import constants

    cache = tmp_path / "hf"
    repo = cache / ("models--" + REPO.replace("/", "--"))
    shutil.copytree(released, repo / "snapshots" / COMMIT)
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text(COMMIT)
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(cache))
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.chdir(tmp_path)  # a relative "uwnlp/..." folder does not exist here
    return cache


def test_hub_ids_resolve_from_the_cache_offline(hf_cache):
    from jpeglm.checkpoint import CheckpointError
    from jpeglm.hub import resolve_model

    snap = hf_cache / ("models--" + REPO.replace("/", "--")) / "snapshots" / COMMIT
    assert resolve_model(REPO) == snap and resolve_model(f"{REPO}@{COMMIT}") == snap
    loaded = _load(REPO)
    assert loaded.tokenizer.vocab_size == 320
    with pytest.raises(CheckpointError, match="uwnlp/not-there.*not in the Hugging Face cache"):
        from jpeglm.checkpoint import load_for_inference

        load_for_inference("uwnlp/not-there")
    with pytest.raises(CheckpointError, match="not a hub id"):
        load_for_inference("no/such/folder")


def _cli(argv):
    from jpeglm.cli import sample

    p = argparse.ArgumentParser()
    sample.add_arguments(p)
    return sample.run(p.parse_args(argv))


def test_cli_samples_a_hub_id_as_the_issue_asks(hf_cache, tmp_path, photo_dir, capsys):
    cat = str(min(photo_dir.iterdir()))
    out = tmp_path / "out"
    with pytest.warns(UserWarning, match="canonical"):
        rc = _cli(["--model", REPO, "--prompt", cat, "--prompt-ratio", "0.6", "--num", "4", "--max-new-tokens", "16",
                   "--device", "cpu", "--out", str(out)])
    assert rc == 0, capsys.readouterr().err
    m = json.loads((out / "manifest.json").read_text())
    assert m["prompt_cut"]["rule"] == "half_rows" and m["prompt_cut"]["mcus"] == 152
    assert [f["file"] for f in m["files"]] == [f"p000_s00{i}.jpg" for i in range(4)]
    for f in m["files"]:  # 16 tokens do not finish 104 MCUs: each file still ends with (one) EOI
        data = (out / f["file"]).read_bytes()
        assert data.endswith(EOI) and data.count(EOI) == 1 and f["file_repairs"] == ["EOI appended"]
    assert _cli(["--model", "uwnlp/not-there", "--prompt", cat, "--out", str(tmp_path / "o2")]) == 2
    assert "uwnlp/not-there" in capsys.readouterr().err


def test_sample_help_says_what_a_hub_id_is_and_the_default_budget(capsys):
    from jpeglm.cli import sample

    p = argparse.ArgumentParser(prog="jpeglm sample")
    sample.add_arguments(p)
    text = " ".join(p.format_help().split())
    assert "hub id ORG/NAME[@REVISION]" in text and "12,288" in text and "half_rows" in text


# --- files as run.py writes them -----------------------------------------------------------------
def test_repair_cuts_after_the_first_eoi_and_appends_a_missing_one(photos):
    from PIL import Image

    codec = JpegCodec()
    d = codec.encode(photos[0])
    assert codec.repair(d) == (d, []) and codec.to_file(d).endswith(EOI)
    assert codec.repair(d + b"\x12\x34" + EOI) == (d, ["4 bytes after the first EOI dropped"])
    cut = codec.prompt(d, 0.6)
    assert codec.repair(cut) == (cut + EOI, ["EOI appended"])
    assert codec.repair(cut[2:]) == (cut + EOI, ["SOI put in front", "EOI appended"])
    f = codec.to_file(cut)
    assert f.endswith(EOI) and f.count(EOI) == 1
    with Image.open(io.BytesIO(f)) as im:
        assert im.size == (256, 256)
    # decode still says what it had to do with a cut stream
    assert codec.decode(cut)[1].status == "repaired"


def test_tokens_that_stand_for_no_byte_are_dropped_and_counted(hf_cache, tmp_path, photo_dir, monkeypatch):
    """Unconstrained sampling that writes sentencepiece's lone "▁": no crash, every token counted,
    and the file still ends with EOI."""
    import jpeglm.cli.sample as cli

    real_load = cli._load
    space = {}

    def load(path, device):
        loaded = real_load(path, device)
        space["id"] = loaded.tokenizer.sp.piece_to_id("\u2581")
        assert space["id"] != loaded.tokenizer.unk_id and loaded.tokenizer.token_bytes(space["id"]) == b""

        def hook(module, args, out):
            out = out.clone()
            out[..., space["id"]] += 1000.0
            return out

        loaded.model.lm_head.register_forward_hook(hook)
        return loaded

    monkeypatch.setattr(cli, "_load", load)
    out = tmp_path / "out"
    with pytest.warns(UserWarning, match="canonical"):
        rc = _cli(["--model", REPO, "--prompt", str(min(photo_dir.iterdir())), "--prompt-ratio", "0.5", "--num", "2",
                   "--max-new-tokens", "7", "--no-constrain", "--device", "cpu", "--out", str(out)])
    assert rc == 0
    m = json.loads((out / "manifest.json").read_text())
    assert m["dropped_tokens"] == 14 and m["files_repaired"] == 2
    for f in m["files"]:
        assert f["dropped_tokens"] == 7 and f["n_new_tokens"] == 7 and f["file_repairs"] == ["EOI appended"]
        assert (out / f["file"]).read_bytes().endswith(EOI)
