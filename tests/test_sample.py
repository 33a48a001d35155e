"""Sampling: the batched KV-cache sampler, the JPEG grammar constraint and `jpeglm sample`.

Tiny random Llamas built here with the tokenizer's vocabulary; 64x64 JPEGs (16 MCUs) keep the
streams short, and end steering finishes every constrained sample inside its token budget.
"""

from __future__ import annotations

import argparse
import io
import json
import random
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from _models import tiny_llama
from PIL import Image

from jpeglm.codecs.jpeg import JpegCodec, JpegParams, header_length
from jpeglm.codecs.jpeg_grammar import RestartGrammar, scan_grammar_for
from jpeglm.sample import PromptTooLongError, SamplerConfig, filter_logits, generate
from jpeglm.sample.constrain import constraint_for
from jpeglm.tokenizer import BpeTokenizer, ByteTokenizer

SIZE = 64

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def codec():
    return JpegCodec(JpegParams(size=SIZE))


@pytest.fixture(scope="module")
def streams(codec, photos):
    return [codec.encode(p) for p in photos]


@pytest.fixture(scope="module")
def byte_tok():
    return ByteTokenizer()


@pytest.fixture(scope="module")
def bpe_tok(streams):
    return BpeTokenizer.train(streams, vocab_size=300)


@pytest.fixture(scope="module", params=["byte", "bpe"])
def tok(request, byte_tok, bpe_tok):
    return byte_tok if request.param == "byte" else bpe_tok


def _strict(codec, sample) -> bool:
    return codec.is_strictly_decodable(codec.to_file(sample.symbols))


# --- the constraint --------------------------------------------------------------------------------
def test_restart_grammar_accepts_real_scans_and_completion_is_valid(codec, streams):
    g = RestartGrammar.for_codec(codec)
    for data in streams:
        s = g.start_state()
        for b in data[header_length(data):]:
            assert g.allowed_bytes(s)[b]
            s = g.advance(s, b)
        assert g.is_complete(s)
    # the shortest completion from a mid-scan state is itself grammatical and decodes strictly
    data = streams[0]
    cut = codec.prompt(data, 0.5) + b"\x12\xff"
    s = g.start_state()
    for b in cut[header_length(cut):]:
        s = g.advance(s, b)
    comp = g.completion(s)
    assert len(comp) == g.completion_length(s)
    for b in comp:
        s = g.advance(s, b)
    assert g.is_complete(s)
    assert codec.is_strictly_decodable(codec.to_file(cut + comp))


def test_constraint_never_masks_every_token(codec, streams, tok):
    """A random walk over allowed tokens, from many prompt cuts: every mask allows something,
    EOS only once the scan is complete, and every walk's bytes stay a valid scan."""
    c = constraint_for(codec, tok)
    rng = random.Random(0)
    eos = tok.eos_id
    for walk in range(16):
        data = streams[walk % len(streams)]
        p = codec.prompt(data, rng.choice([0.0, 0.25, 0.5, 0.75]))
        state = c.advance_bytes(c.start_state(), p[header_length(p):])
        out = bytearray(p)
        for _ in range(400):
            m = c.mask(state)
            assert m.any()
            assert bool(m[eos]) == c.is_complete(state)
            for sid in (tok.bos_id, tok.pad_id, tok.unk_id):
                assert not m[sid]
            if c.is_complete(state):
                break
            allowed = torch.nonzero(m).flatten().tolist()
            # bias towards FF-containing tokens so markers, stuffing and EOI get exercised
            ff = [t for t in allowed if t != eos and b"\xff" in (c.token_bytes[t] or b"")]
            t = rng.choice(ff) if ff and rng.random() < 0.3 else rng.choice(allowed)
            out += c.token_bytes[t]
            state = c.advance(state, t)
        g = RestartGrammar.for_codec(codec)
        s = g.start_state()
        for b in bytes(out)[header_length(bytes(out)):]:
            assert g.allowed_bytes(s)[b], "walk left the grammar"
            s = g.advance(s, b)


def test_constraint_on_bpe_uses_multibyte_tokens(codec, bpe_tok):
    c = constraint_for(codec, bpe_tok)
    start = c.start_state()
    m = c.mask(start)
    multi = [t for t in torch.nonzero(m).flatten().tolist() if len(c.token_bytes[t] or b"") > 1]
    assert multi, "no multi-byte BPE token allowed at a scan start"
    # after a lone FF only tokens starting with 00 or the next RST are allowed
    s = c.advance_bytes(start, b"\x10\xff")
    after_ff = [c.token_bytes[t] for t in torch.nonzero(c.mask(s)).flatten().tolist()]
    assert b"\x00" in after_ff  # the stuffing byte itself is always allowed (an empty list passed before)
    for tb in after_ff:
        assert tb[0] in (0x00, 0xD0)


def test_end_steering_completions_decode_strictly(codec, streams, byte_tok):
    """From random cuts anywhere in real scans (mid-MCU, inside stuffing or a marker) the forced
    completion is grammatical, fits the cheap bound that triggers it, and decodes strictly."""
    c = constraint_for(codec, byte_tok)
    rng = random.Random(1)
    for _ in range(40):
        data = rng.choice(streams)
        hl = header_length(data)
        cut = rng.randrange(hl, len(data) - 1)
        st = c.advance_bytes(c.start_state(), data[hl:cut])
        comp = c.completion(st)
        assert len(comp) <= c.completion_length(st)
        assert c.is_complete(c.advance_bytes(st, comp))
        assert codec.is_strictly_decodable(codec.to_file(data[:cut] + comp))


def test_scan_grammar_for_returns_a_grammar(codec, streams):
    g = scan_grammar_for(codec)
    s = g.start_state()
    data = streams[1]
    for b in data[header_length(data):]:
        assert g.allowed_bytes(s)[b]
        s = g.advance(s, b)
    assert g.is_complete(s)


# --- the sampler -------------------------------------------------------------------------------------
def test_constrained_samples_all_decode_strictly(codec, streams, tok):
    model = tiny_llama(tok.vocab_size)
    prompts = [codec.prompt(streams[0], 0.5), codec.prompt(streams[2], 0.25)]
    cfg = SamplerConfig(max_new_tokens=160, batch_size=4, seed=3)
    samples = generate(model, tok, codec, prompts, 3, cfg)
    assert len(samples) == 6 and [s.prompt_index for s in samples] == [0, 0, 0, 1, 1, 1]
    for s in samples:
        assert _strict(codec, s), s.report
        assert s.report.status == "ok"
        assert s.media.shape == (SIZE, SIZE, 3)
        assert s.finish == "eoi" and 0 < s.n_new_tokens <= 160
        assert bytes(s.symbols).startswith(prompts[s.prompt_index])


def test_unconditional_constrained_samples_decode(codec, byte_tok):
    model = tiny_llama(byte_tok.vocab_size)
    samples = generate(model, byte_tok, codec, None, 2, SamplerConfig(max_new_tokens=120, seed=1))
    assert len(samples) == 2  # `all()` of an empty list passed before
    assert all(_strict(codec, s) and s.prompt_index is None for s in samples)
    assert all(s.report.status == "ok" and s.finish == "eoi" and s.media.shape == (SIZE, SIZE, 3) for s in samples)


def test_prompt_region_is_kept(codec, streams, byte_tok):
    model = tiny_llama(byte_tok.vocab_size)
    prompt = codec.prompt(streams[3], 0.5)
    prompt_pixels, _ = codec.decode(prompt)
    rows = SIZE // 2
    samples = generate(model, byte_tok, codec, [prompt], 3, SamplerConfig(max_new_tokens=120, batch_size=3))
    assert len(samples) == 3  # the loop below checked nothing when no sample came back
    for s in samples:
        # the last pixel row of the region blends with the next chroma row (libjpeg's fancy
        # upsampling), so it is left out
        np.testing.assert_array_equal(s.media[: rows - 1], prompt_pixels[: rows - 1])


def test_same_seed_same_files_any_batch_size(codec, streams, byte_tok):
    model = tiny_llama(byte_tok.vocab_size)
    prompts = [codec.prompt(streams[1], 0.5)]
    run = lambda bs, seed: [bytes(s.symbols) for s in generate(model, byte_tok, codec, prompts, 4, SamplerConfig(max_new_tokens=100, batch_size=bs, seed=seed))]
    a = run(4, 7)
    assert a == run(4, 7)
    assert a == run(1, 7)  # per-sample generators: the batch does not change a sample
    assert a != run(4, 8)
    assert len(set(a)) == 4


def test_greedy_matches_hf_generate(codec, streams, tok):
    model = tiny_llama(tok.vocab_size, seed=1)
    prompt = codec.prompt(streams[0], 0.25)
    ids = torch.tensor([tok.encode(prompt, bos=True, eos=False)])
    ref = model.generate(ids, attention_mask=torch.ones_like(ids), do_sample=False, max_new_tokens=40,
                         eos_token_id=tok.eos_id, pad_token_id=tok.pad_id)[0, ids.shape[1]:].tolist()
    [s] = generate(model, tok, codec, [prompt], 1, SamplerConfig(top_k=1, max_new_tokens=40, constrain=False))
    assert s.n_new_tokens == 40 and s.new_token_ids == ref


def test_greedy_matches_hf_generate_with_left_padding(codec, streams, byte_tok):
    """A batch of prompts of different lengths (left padding) gives each prompt's own greedy output."""
    model = tiny_llama(byte_tok.vocab_size, seed=2)
    prompts = [codec.prompt(streams[0], 0.25), codec.prompt(streams[4], 0.5)]
    batched = generate(model, byte_tok, codec, prompts, 1, SamplerConfig(top_k=1, max_new_tokens=30, constrain=False, batch_size=2))
    assert len(batched) == len(prompts)  # zip() over fewer samples checked fewer prompts
    for p, s in zip(prompts, batched):
        ids = torch.tensor([byte_tok.encode(p, bos=True, eos=False)])
        ref = model.generate(ids, attention_mask=torch.ones_like(ids), do_sample=False, max_new_tokens=30,
                             eos_token_id=2, pad_token_id=3)[0, ids.shape[1]:]
        assert s.new_token_ids == ref.tolist()


def test_filter_logits_matches_hf_warpers():
    from transformers.generation.logits_process import TemperatureLogitsWarper, TopKLogitsWarper, TopPLogitsWarper

    torch.manual_seed(0)
    logits = torch.randn(5, 300) * 3
    ref = TopPLogitsWarper(0.8)(None, TopKLogitsWarper(50)(None, TemperatureLogitsWarper(0.7)(None, logits.clone())))
    ours = filter_logits(logits, 0.7, 50, 0.8)
    assert torch.equal(torch.isinf(ours), torch.isinf(ref))
    torch.testing.assert_close(ours[~torch.isinf(ours)], ref[~torch.isinf(ref)])


def test_unconstrained_runs_and_reports(codec, streams, byte_tok):
    model = tiny_llama(byte_tok.vocab_size)
    samples = generate(model, byte_tok, codec, [codec.prompt(streams[0], 0.5)], 2, SamplerConfig(max_new_tokens=50, constrain=False))
    assert len(samples) == 2
    prompt_pixels, _ = codec.decode(codec.prompt(streams[0], 0.5))
    for s in samples:
        # 50 free bytes cannot finish the 8 MCUs after the prompt: the budget ends the sample
        # (or EOS, before it), and decode reports the cut stream it repaired
        assert (s.finish, s.n_new_tokens) == ("max_new_tokens", 50) or (s.finish == "eos" and s.n_new_tokens < 50)
        assert s.report.status == "repaired" and "truncated" in s.report.reason, s.report
        assert s.media.shape == (SIZE, SIZE, 3)
        np.testing.assert_array_equal(s.media[: SIZE // 2 - 1], prompt_pixels[: SIZE // 2 - 1])  # the prompt's rows


def test_prompt_longer_than_context(codec, streams, byte_tok):
    model = tiny_llama(byte_tok.vocab_size, ctx=128)
    with pytest.raises(PromptTooLongError, match="context"):
        generate(model, byte_tok, codec, [codec.prompt(streams[0], 0.5)], 1, SamplerConfig())


@pytest.mark.gpu
def test_vllm_backend_matches_file_contract(tmp_path, codec, streams, byte_tok):
    """GPU only, and only where vLLM is installed: the vLLM backend writes decodable samples."""
    pytest.importorskip("vllm")
    from jpeglm.sample.vllm_backend import generate_vllm

    d = tmp_path / "m"
    tiny_llama(byte_tok.vocab_size).save_pretrained(d)
    samples = generate_vllm(d, byte_tok, codec, [codec.prompt(streams[0], 0.5)], 2, SamplerConfig(max_new_tokens=64))
    assert len(samples) == 2 and all(bytes(s.symbols).startswith(codec.prompt(streams[0], 0.5)) for s in samples)


def test_bad_sampler_settings():
    with pytest.raises(ValueError, match="top_p"):
        SamplerConfig(top_p=0.0)
    with pytest.raises(ValueError, match="temperature"):
        SamplerConfig(temperature=-1)


# --- the CLI --------------------------------------------------------------------------------------------
def _args(tmp_path, **kw):
    base = dict(model="ckpt", prompt=[], prompt_ratio=0.5, prompt_frames=None, num=2, temperature=1.0, top_k=50,
                top_p=1.0, seed=0, batch_size=4, max_new_tokens=120, constrain=True, device="cpu", backend="torch",
                overwrite=False, out=str(tmp_path / "out"))
    base.update(kw)
    return argparse.Namespace(**base)


@pytest.fixture()
def fake_ckpt(monkeypatch, codec, byte_tok):
    """`_load` returning a tiny model (checkpoint loading has its own tests)."""
    import jpeglm.cli.sample as cli

    loaded = SimpleNamespace(model=tiny_llama(byte_tok.vocab_size), tokenizer=byte_tok, codec=codec, meta={})
    monkeypatch.setattr(cli, "_load", lambda path, device: loaded)
    return loaded


def test_cli_writes_files_sheets_and_manifest(tmp_path, photo_dir, fake_ckpt, codec):
    from jpeglm.cli.sample import run

    files = sorted(str(p) for p in photo_dir.iterdir())[:2]
    args = _args(tmp_path, prompt=files)
    assert run(args) == 0
    out = tmp_path / "out"
    names = sorted(p.name for p in out.iterdir())
    assert names == ["manifest.json", "p000_s000.jpg", "p000_s001.jpg", "p001_s000.jpg", "p001_s001.jpg", "sheet_p000.png", "sheet_p001.png"]
    for n in names:
        if n.endswith(".jpg"):
            with Image.open(out / n) as im:  # strictly: no LOAD_TRUNCATED_IMAGES anywhere
                im.load()
                assert im.size == (SIZE, SIZE)
    with Image.open(out / "sheet_p000.png") as im:
        assert im.size[0] > 3 * SIZE  # prompt | 2 samples | original
    m = json.loads((out / "manifest.json").read_text())
    assert m["strict_decodable_rate"] == 1.0 and len(m["files"]) == 4
    assert [f["seed"] for f in m["files"]] == [0, 1, 2, 3]
    assert all(f["report"]["status"] == "ok" and f["n_new_tokens"] > 0 for f in m["files"])
    assert m["sampler"]["top_k"] == 50 and m["codec"]["params"]["size"] == SIZE
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".out.tmp")]


def test_cli_same_seed_same_files(tmp_path, photo_dir, fake_ckpt):
    from jpeglm.cli.sample import run

    f = [str(sorted(photo_dir.iterdir())[0])]
    assert run(_args(tmp_path, prompt=f, out=str(tmp_path / "a"))) == 0
    assert run(_args(tmp_path, prompt=f, out=str(tmp_path / "b"), batch_size=1)) == 0
    for n in ("p000_s000.jpg", "p000_s001.jpg"):
        assert (tmp_path / "a" / n).read_bytes() == (tmp_path / "b" / n).read_bytes()


def test_cli_bad_prompt_leaves_nothing(tmp_path, fake_ckpt, capsys):
    from jpeglm.cli.sample import run

    bad = tmp_path / "not_an_image.jpg"
    bad.write_text("hello, I am text")
    assert run(_args(tmp_path, prompt=[str(bad)])) == 2
    assert "not_an_image.jpg" in capsys.readouterr().err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["not_an_image.jpg"]


def test_cli_prompt_too_long(tmp_path, photo_dir, monkeypatch, codec, byte_tok, capsys):
    import jpeglm.cli.sample as cli

    loaded = SimpleNamespace(model=tiny_llama(byte_tok.vocab_size, ctx=64), tokenizer=byte_tok, codec=codec, meta={})
    monkeypatch.setattr(cli, "_load", lambda path, device: loaded)
    assert cli.run(_args(tmp_path, prompt=[str(sorted(photo_dir.iterdir())[0])])) == 2
    assert "context" in capsys.readouterr().err
    assert not (tmp_path / "out").exists()


def test_cli_refuses_non_empty_out(tmp_path, fake_ckpt, capsys):
    from jpeglm.cli.sample import run

    (tmp_path / "out").mkdir()
    (tmp_path / "out" / "keep.txt").write_text("mine")
    assert run(_args(tmp_path)) == 2
    assert "not an empty directory" in capsys.readouterr().err  # refused for that reason, not another
    assert (tmp_path / "out" / "keep.txt").read_text() == "mine"


def test_cli_not_a_checkpoint(tmp_path, capsys):
    pytest.importorskip("jpeglm.checkpoint")
    from jpeglm.cli.sample import run

    d = tmp_path / "empty_ckpt"
    d.mkdir()
    (d / "README.txt").write_text("not a model")
    assert run(_args(tmp_path, model=str(d))) == 2
    assert "empty_ckpt" in capsys.readouterr().err
    assert not (tmp_path / "out").exists()


# --- other codecs and the released JPEG-LM format ---------------------------------------------------
def test_cli_pixel_codec_writes_pngs(tmp_path, photo_dir, monkeypatch):
    import jpeglm.cli.sample as cli
    from jpeglm.codecs.pixel import PixelCodec, PixelParams
    from jpeglm.tokenizer import CodeTokenizer

    codec = PixelCodec(PixelParams(size=8, eval_size=32))
    tok = CodeTokenizer(codec.num_codes)
    loaded = SimpleNamespace(model=tiny_llama(tok.vocab_size), tokenizer=tok, codec=codec, meta={})
    monkeypatch.setattr(cli, "_load", lambda path, device: loaded)
    f = str(sorted(photo_dir.iterdir())[0])
    assert cli.run(_args(tmp_path, prompt=[f], max_new_tokens=None)) == 0
    m = json.loads((tmp_path / "out" / "manifest.json").read_text())
    assert [x["file"] for x in m["files"]] == ["p000_s000.png", "p000_s001.png"]
    for x in m["files"]:
        # constrained code sampling: only code tokens, stopped at a whole 8x8 picture
        assert x["finish"] == "complete" and x["n_new_tokens"] == 64 - 32 and x["report"]["status"] == "ok"
        with Image.open(tmp_path / "out" / x["file"]) as im:
            assert im.size == (32, 32)
    assert (tmp_path / "out" / "sheet_p000.png").is_file()


@pytest.mark.parametrize("constrain", [True, False])
def test_code_pictures_are_whole_even_when_the_model_prefers_eos(photos, constrain):
    """A pixel/VQ picture has a fixed number of codes: constrained sampling never stops early."""
    from jpeglm.codecs.pixel import PixelCodec, PixelParams
    from jpeglm.tokenizer import CodeTokenizer

    codec = PixelCodec(PixelParams(size=8, eval_size=32))
    tok = CodeTokenizer(codec.num_codes)
    model = tiny_llama(tok.vocab_size)

    def eos_first(module, args, out):  # a model that would end every picture at once
        out = out.clone()
        out[..., tok.eos_id] += 100.0
        return out

    model.lm_head.register_forward_hook(eos_first)
    prompt = codec.prompt(codec.encode(photos[0]), 0.5)
    cfg = SamplerConfig(constrain=constrain, max_new_tokens=None if constrain else 64)
    samples = generate(model, tok, codec, [prompt], 2, cfg)
    assert len(samples) == 2
    for s in samples:
        if constrain:
            assert s.finish == "complete" and s.n_new_tokens == 64 - len(prompt) and len(s.symbols) == 64
        else:
            assert s.finish == "eos" and s.n_new_tokens == 0  # what the constraint prevents


def test_cli_video_writes_mp4(tmp_path, monkeypatch):
    import av

    import jpeglm.cli.sample as cli
    from jpeglm.codecs.avc import AvcCodec, AvcParams
    from jpeglm.video import builtin_clip, write_video

    params = AvcParams(width=64, height=48, frames=4, gop=4)
    codec = AvcCodec(params)
    clip = tmp_path / "clip.mp4"
    write_video(builtin_clip(frames=4, width=128, height=96), clip, fps=params.fps)
    tok = ByteTokenizer()
    loaded = SimpleNamespace(model=tiny_llama(tok.vocab_size, ctx=8192), tokenizer=tok, codec=codec, meta={})
    monkeypatch.setattr(cli, "_load", lambda path, device: loaded)
    assert cli.run(_args(tmp_path, prompt=[str(clip)], prompt_frames=2, max_new_tokens=40, num=1)) == 0
    out = tmp_path / "out"
    m = json.loads((out / "manifest.json").read_text())
    [x] = m["files"]
    assert x["file"] == "p000_s000.mp4" and m["prompt_frames"] == 2
    assert (out / "p000_s000_frames.png").is_file() and (out / "sheet_p000.png").is_file()
    with av.open(str(out / "p000_s000.mp4")) as c:  # the prompt's pictures play, and only pictures that decode
        played = sum(1 for _ in c.decode(video=0))
    assert played == x["report"]["details"]["decoded_frames"] >= 2


def _released_checkpoint(d, streams):
    """A tiny checkpoint in the released JPEG-LM layout: HF Llama + a Llama sentencepiece
    tokenizer.model over chr(b + 0x2800) text + tokenizer_config.json, no tokenizer.json,
    no jpeglm.yaml."""
    import sentencepiece as spm

    text = ["".join(chr(b + 0x2800) for b in s) for s in streams]
    model_file = io.BytesIO()
    spm.SentencePieceTrainer.train(
        sentence_iterator=iter(text), model_writer=model_file, model_type="bpe", vocab_size=300,
        character_coverage=1.0, required_chars="".join(chr(b + 0x2800) for b in range(256)),
        max_sentence_length=100_000, split_by_unicode_script=False, minloglevel=2,
    )  # Llama's defaults otherwise: unk 0, <s> 1, </s> 2, no pad, a dummy prefix
    d.mkdir()
    (d / "tokenizer.model").write_bytes(model_file.getvalue())
    (d / "tokenizer_config.json").write_text(json.dumps({
        "tokenizer_class": "LlamaTokenizer", "bos_token": "<s>", "eos_token": "</s>", "unk_token": "<unk>",
        "add_bos_token": True, "add_eos_token": False}))
    sp = spm.SentencePieceProcessor(model_proto=model_file.getvalue())
    tiny_llama(sp.get_piece_size(), ctx=8192).save_pretrained(d)


def test_released_format_samples_jpegs(tmp_path, photos, photo_dir):
    pytest.importorskip("jpeglm.checkpoint")
    from jpeglm.checkpoint import load_for_inference
    from jpeglm.cli.sample import run

    canonical = JpegCodec()
    ckpt = tmp_path / "jpeg-lm"
    _released_checkpoint(ckpt, [canonical.encode(p) for p in photos])
    with pytest.warns(UserWarning, match="canonical"):
        loaded = load_for_inference(ckpt)
    assert loaded.codec.params == JpegParams()
    # 15 of 16 MCU rows as the prompt: the random model writes the last row, end steering closes it
    prompt = canonical.prompt(canonical.encode(photos[0]), 15 / 16)
    samples = generate(loaded.model, loaded.tokenizer, loaded.codec, [prompt], 2, SamplerConfig(max_new_tokens=200))
    assert len(samples) == 2
    for s in samples:
        assert canonical.is_strictly_decodable(canonical.to_file(s.symbols)) and s.media.shape == (256, 256, 3)
        assert bytes(s.symbols).startswith(prompt)
    # and through the command line
    with pytest.warns(UserWarning, match="canonical"):
        rc = run(_args(tmp_path, model=str(ckpt), prompt=[str(sorted(photo_dir.iterdir())[1])], prompt_ratio=15 / 16, num=1, max_new_tokens=200))
    assert rc == 0
    m = json.loads((tmp_path / "out" / "manifest.json").read_text())
    assert m["strict_decodable_rate"] == 1.0 and m["files"][0]["file"] == "p000_s000.jpg"
