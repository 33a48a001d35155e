"""Class-conditional generation with classifier-free guidance, end to end on a set the test makes.

Two classes of clearly different colour (`red/`, `blue/`: 4x4 pixel-codec pictures whose pixels are
the class colour, or with probability NOISE a random colour) are prepared with `--labels folders`,
a tiny Llama is trained on them briefly (30 steps: longer and it memorises the 24 pictures, and guidance
then has little to sharpen) with class dropout, and then: conditional samples are
closer to their own class's colour than to the other's, more so with guidance; the null class is
the unconditional path (cfg_scale 0 gives the very tokens of a null-class sample); the labels
survive prep (and its resume), training and export (AutoTokenizer sees the class tokens).
"""

from __future__ import annotations

import csv
import dataclasses
import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from jpeglm.codecs.pixel import PixelCodec, PixelParams
from jpeglm.config import load_config
from jpeglm.data_prep.pipeline import PrepError, prep
from jpeglm.data_prep.sources import open_source
from jpeglm.shards import ShardSet
from jpeglm.tokenizer import NULL_CLASS, BpeTokenizer, ByteTokenizer, CodeTokenizer, load_tokenizer
from jpeglm.train.config import TrainConfig

COLOURS = {"blue": (20, 40, 230), "red": (230, 30, 20)}  # class ids in sorted order: blue 0, red 1
NOISE = 0.35  # share of pixels of a random colour: the conditional model stays uncertain, guidance sharpens it
PER_CLASS = 12


def _codec() -> PixelCodec:
    return PixelCodec(PixelParams(size=4, eval_size=16))


def _make_folder(root: Path) -> Path:
    rng = np.random.default_rng(0)
    for name, colour in COLOURS.items():
        (root / name).mkdir(parents=True)
        for i in range(PER_CLASS):
            img = np.empty((4, 4, 3), np.uint8)
            img[:] = colour
            noisy = rng.random((4, 4)) < NOISE
            img[noisy] = rng.integers(0, 256, (int(noisy.sum()), 3))
            Image.fromarray(img).resize((64, 64), Image.NEAREST).save(root / name / f"{i:02d}.png")
    Image.fromarray(np.zeros((64, 64, 3), np.uint8)).save(root / "loose.png")  # in no class folder
    return root


def _prep(src: Path, out: Path, labels: str, **over):
    return prep(open_source(str(src)), _codec, out, labels=labels, val_fraction=0.0, min_side=16, progress=False,
                log=None, **over)


@pytest.fixture(scope="module")
def labelled(tmp_path_factory):
    root = tmp_path_factory.mktemp("cond")
    src = _make_folder(root / "images")
    return src, _prep(src, root / "data", "folders")


@pytest.fixture(scope="module")
def trained(labelled, tmp_path_factory):
    import torch

    from jpeglm.checkpoint import load_for_inference
    from jpeglm.train.loop import train

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    _, result = labelled
    out = tmp_path_factory.mktemp("run") / "run"
    cfg = load_config(TrainConfig, None, [
        "model=tiny", "deepspeed=zero1", "precision=fp32", "deterministic=true", "data.packing=pad", "data.seq_len=20",
        "data.class_dropout=0.25", "optim.micro_batch=8", "optim.lr=1e-2", "optim.warmup_steps=5",
        "optim.weight_decay=0", "eval.interval=0", "log_interval=50", "max_steps=30", "ckpt_interval=30"])
    train(cfg, result.out, out)
    torch.set_num_threads(threads)
    return out, load_for_inference(out)


# --- tokenizers ---------------------------------------------------------------------------------------
def _bpe() -> BpeTokenizer:
    rng = np.random.default_rng(0)
    return BpeTokenizer.train([rng.integers(0, 8, 200, dtype=np.uint8).tobytes() for _ in range(20)], vocab_size=300)


@pytest.mark.parametrize("kind", ["byte", "bpe", "code"])
def test_class_tokens_follow_every_id_and_autotokenizer_loads_them(tmp_path, kind):
    from transformers import AutoTokenizer

    plain = {"byte": ByteTokenizer, "bpe": _bpe, "code": lambda: CodeTokenizer(512)}[kind]()
    symbols = np.array([1, 7, 511]) if kind == "code" else b"\x00\x01\x07\xff"
    names = [f"class {i}" for i in range(1200)]  # ImageNet's 1000 and more
    tok = plain.with_classes(names)
    assert tok.class_offset == plain.vocab_size and tok.vocab_size == plain.vocab_size + 1201
    assert tok.null_class_id == tok.vocab_size - 1
    assert plain.encode(symbols) == tok.encode(symbols)[:1] + tok.encode(symbols)[2:]  # other ids unchanged
    assert tok.encode(symbols, label=1199)[:2] == [tok.bos_id, tok.class_offset + 1199]
    assert tok.encode(symbols)[1] == tok.null_class_id  # no label: the null class (the unconditional path)
    assert tok.label_of(tok.encode(symbols, label=3)) == 3 and tok.label_of(tok.encode(symbols)) == NULL_CLASS
    np.testing.assert_array_equal(np.asarray(tok.decode(tok.encode(symbols, label=5))), np.asarray(symbols))
    assert "class_names" not in plain.to_config()  # unconditional configs (and dataset fingerprints) as before
    tok.save_pretrained(tmp_path)
    back = load_tokenizer(tmp_path)
    assert back.class_names == tuple(names) and back.vocab_size == tok.vocab_size
    hf = AutoTokenizer.from_pretrained(tmp_path)
    assert len(hf) == tok.vocab_size
    for label in (0, 1199, None):
        assert hf(tok.class_text(label) + tok.to_text(symbols))["input_ids"] == tok.encode(symbols, eos=False, label=label)
    with pytest.raises(KeyError, match="known: class 0, class 1"):
        tok.class_index("dog")


# --- prep -----------------------------------------------------------------------------------------------
def test_labels_survive_prep_and_its_resume(labelled, tmp_path):
    src, result = labelled
    m = result.manifest
    assert m["classes"]["names"] == ["blue", "red"] and m["classes"]["counts"] == [PER_CLASS, PER_CLASS]
    assert m["skipped"] == [{"path": "loose.png", "reason": "no label (not inside a class sub-folder)"}]
    shards = ShardSet(result.out, "train")
    tok = shards.tokenizer()
    assert tok.class_names == ("blue", "red")
    for i in range(len(shards)):
        meta, ids = shards.meta(i), shards[i]
        assert meta["label"] == ("blue", "red").index(meta["key"].split("/")[0])
        assert ids[0] == tok.bos_id and ids[1] == tok.class_offset + meta["label"] and len(ids) == 16 + 3
    # a rerun resumes (nothing redone, same manifest); other labels for the same folder are refused
    again = _prep(src, result.out, "folders")
    assert again.items_done_now == 0 and again.manifest == m
    csv_path = tmp_path / "labels.csv"
    csv_path.write_text("file,label\nred/00.png,warm\n")
    with pytest.raises(PrepError, match="different settings"):
        _prep(src, result.out, f"file:{csv_path}")
    # an unconditional prep of the same folder keeps the plain records (no class token)
    plain = prep(open_source(str(src)), _codec, tmp_path / "plain", val_fraction=0.0, min_side=16, progress=False, log=None)
    assert "classes" not in plain.manifest and "label" not in ShardSet(plain.out, "train").meta(0)
    assert ShardSet(plain.out, "train")[0][1] != tok.class_offset  # straight into the codes


def test_label_file_rows_naming_missing_images_are_reported(labelled, tmp_path, capsys):
    src, _ = labelled
    path = tmp_path / "labels.csv"
    with open(path, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["file", "split", "label", "p_dog"])
        w.writerows([["red/00.png", "train", "warm", 0.1], ["blue/03.png", "train", "cold", 0.2],
                     ["gone.png", "test", "cold", 0.3], ["loose.png", "train", "warm", 0.4]])
    result = prep(open_source(str(src)), _codec, tmp_path / "out", labels=f"file:{path}", val_fraction=0.0, min_side=16,
                  progress=False)
    c = result.manifest["classes"]
    assert c["names"] == ["cold", "warm"] and c["counts"] == [1, 2] and c["unmatched_rows"] == ["gone.png"]
    assert "1 rows of the label file name no input item" in capsys.readouterr().out
    assert result.num_records == 3 and len(result.skipped) == 2 * PER_CLASS - 2
    with pytest.raises(PrepError, match="columns file and label"):
        path.write_text("name,class\nx,y\n")
        prep(open_source(str(src)), _codec, tmp_path / "out2", labels=f"file:{path}", progress=False, log=None)
    with pytest.raises(PrepError, match="--labels must be"):
        prep(open_source(str(src)), _codec, tmp_path / "out3", labels="classes", progress=False, log=None)


# --- training ------------------------------------------------------------------------------------------
def test_class_dropout_is_deterministic_per_epoch_and_near_its_rate(labelled):
    from jpeglm.train.data import ClassDropout, build_sequences

    _, result = labelled
    shards = ShardSet(result.out, "train")
    tok = shards.tokenizer()
    for packing in ("pad", "concat"):
        seqs = build_sequences(shards, packing, 20 if packing == "pad" else 38, tok.pad_id)
        a, b = ClassDropout(seqs, shards, tok, 0.5, seed=3), ClassDropout(seqs, shards, tok, 0.5, seed=3)
        nulls = []
        for epoch in range(4):
            a.epoch = b.epoch = epoch
            got = [int((a[i]["input_ids"] == tok.null_class_id).sum()) for i in range(len(a))]
            assert got == [int((b[i]["input_ids"] == tok.null_class_id).sum()) for i in range(len(b))]  # a resumed run
            nulls.append(got)
            assert sum(got) == int(a.drops(epoch).sum())  # every dropped record's class token, once
        assert nulls[0] != nulls[1]  # a new draw per epoch
        assert 0.25 < np.mean([sum(n) for n in nulls]) / len(shards) < 0.75
    with pytest.raises(ValueError, match="labelled dataset"):
        ClassDropout(seqs, shards, CodeTokenizer(512), 0.1, 0)


def test_class_dropout_resumes_exactly_with_the_data_order(labelled):
    """What the training loop does each step (epoch from the order, then the order's next batch), straight
    through and resumed from the order's saved state at step 7 (mid-epoch, after two epoch boundaries)."""
    from jpeglm.train.data import BatchOrder, ClassDropout, build_sequences

    _, result = labelled
    shards = ShardSet(result.out, "train")
    tok = shards.tokenizer()
    seqs = build_sequences(shards, "pad", 20, tok.pad_id)

    def steps(order, dropout, n):
        out = []
        for _ in range(n):
            dropout.epoch = order.epoch
            out.append([dropout[i]["input_ids"].tolist() for ids in order.next_step(0) for i in ids])
        return out

    def fresh():
        return BatchOrder(len(seqs), 5, 1, 1, seed=4), ClassDropout(seqs, shards, tok, 0.3, seed=4)

    straight = steps(*fresh(), 12)
    order, dropout = fresh()
    first = steps(order, dropout, 7)
    state = order.state_dict()
    order, dropout = fresh()  # a new process: nothing but the saved order state
    order.load_state_dict(state)
    assert first + steps(order, dropout, 5) == straight
    assert any(row[1] == tok.null_class_id for batch in straight for row in batch)


# --- sampling ------------------------------------------------------------------------------------------
def _own_colour_margin(samples, label: int) -> float:
    """Mean over samples of (distance to the other class's colour - distance to its own) of the mean colour."""
    own, other = (np.array(COLOURS[n], float) for n in (("blue", "red") if label == 0 else ("red", "blue")))
    means = [np.asarray(s.media, float).reshape(-1, 3).mean(0) for s in samples]
    return float(np.mean([np.linalg.norm(m - other) - np.linalg.norm(m - own) for m in means]))


def test_conditional_samples_have_their_class_colour_more_so_with_guidance(trained):
    from jpeglm.sample import SamplerConfig, generate

    _, loaded = trained
    assert loaded.tokenizer.class_names == ("blue", "red")
    cfg = SamplerConfig(top_k=0, batch_size=16, seed=0)
    margins = {}
    for scale in (1.0, 3.0):
        samples = generate(loaded.model, loaded.tokenizer, loaded.codec, None, 16, dataclasses.replace(cfg, cfg_scale=scale),
                           classes=[0, 1])
        assert [s.label for s in samples] == [0] * 16 + [1] * 16
        margins[scale] = [_own_colour_margin(samples[:16], 0), _own_colour_margin(samples[16:], 1)]
    assert min(margins[1.0]) > 30, margins  # closer to their own class (colours ~300 apart)
    assert min(np.subtract(margins[3.0], margins[1.0])) > 3, margins  # and more so with guidance


def test_null_class_is_the_unconditional_path_and_batches_do_not_matter(trained):
    from jpeglm.sample import SamplerConfig, generate

    _, loaded = trained
    m, tok, codec = loaded.model, loaded.tokenizer, loaded.codec
    cfg = SamplerConfig(top_k=0, batch_size=4, seed=11)
    null = generate(m, tok, codec, None, 6, cfg)  # no class: BOS, <class_null>
    scale0 = generate(m, tok, codec, None, 6, dataclasses.replace(cfg, cfg_scale=0.0), classes=[1])
    assert [s.new_token_ids for s in null] == [s.new_token_ids for s in scale0]
    guided = [generate(m, tok, codec, None, 3, dataclasses.replace(cfg, cfg_scale=2.0, batch_size=b), classes=[0, 1])
              for b in (1, 4, 8)]
    assert [s.new_token_ids for s in guided[0]] == [s.new_token_ids for s in guided[1]] == [s.new_token_ids for s in guided[2]]
    # with a prompt: the top code rows of a red picture, completed as "blue" with guidance
    prompt = codec.prompt(codec.encode(np.full((64, 64, 3), COLOURS["red"], np.uint8)), 0.5)
    done = generate(m, tok, codec, [prompt], 2, dataclasses.replace(cfg, cfg_scale=2.0), classes=[0])
    assert all(len(s.symbols) == 16 and np.array_equal(s.symbols[:8], prompt) for s in done)
    assert all(s.n_prompt_tokens == 2 + len(prompt) for s in done)


def test_sample_split_across_ranks_keeps_every_class_seed_and_prompt(trained):
    """`jpeglm sample` under 2 processes (ranks faked in one process): chunks of class-conditional jobs, with and
    without prompts, give the samples of one generate call (tokens, seeds, classes, prompt indices)."""
    from jpeglm.cli.sample import _generate_split
    from jpeglm.sample import SamplerConfig, generate

    _, loaded = trained
    m, tok, codec = loaded.model, loaded.tokenizer, loaded.codec
    prompt = codec.prompt(codec.encode(np.full((64, 64, 3), COLOURS["red"], np.uint8)), 0.5)
    parts: list = []

    class Rank:
        world_size = 2

        def __init__(self, r):
            self.r = r

        def mine(self, chunks):
            return chunks[self.r :: 2]

        def gather(self, value, what):
            parts.append(value)
            return list(parts) if self.r == 0 else None

    def key(samples):
        return [(s.new_token_ids, s.seed, s.label, s.prompt_index) for s in samples]

    for prompts, num, batch in ((None, 3, 4), ([prompt, prompt[:4]], 2, 3)):
        cfg = SamplerConfig(top_k=0, batch_size=batch, seed=5, cfg_scale=2.0)
        parts.clear()
        assert _generate_split(m, tok, codec, prompts, num, cfg, "cpu", Rank(1), [1, 0]) is None
        split = _generate_split(m, tok, codec, prompts, num, cfg, "cpu", Rank(0), [1, 0])
        one = generate(m, tok, codec, prompts, num, cfg, classes=[1, 0])
        assert key(split) == key(one) and len(one) == num * 2 * (len(prompts) if prompts else 1)


def test_sample_cli_classes_and_clear_errors(trained, tmp_path, capsys):
    from jpeglm.cli import main as cli

    run, _ = trained
    assert cli(["sample", "--model", str(run), "--class", "dog", "--out", str(tmp_path / "a")]) == 2
    assert "unknown class 'dog' (known: blue, red)" in capsys.readouterr().err
    assert cli(["sample", "--model", str(run), "--cfg-scale", "2", "--out", str(tmp_path / "b")]) == 2
    assert "name one (--class NAME, --classes all)" in capsys.readouterr().err
    assert cli(["sample", "--model", str(run), "--classes", "all", "--num", "2", "--cfg-scale", "2", "--top-k", "0",
                "--out", str(tmp_path / "c")]) == 0
    m = json.loads((tmp_path / "c" / "manifest.json").read_text())
    assert m["classes"] == ["blue", "red"] and m["sampler"]["cfg_scale"] == 2.0
    assert [(f["file"], f["class"]) for f in m["files"]] == [
        ("u_c000_s000.png", "blue"), ("u_c000_s001.png", "blue"), ("u_c001_s000.png", "red"), ("u_c001_s001.png", "red")]


def test_cfg_scale_on_a_model_without_classes_is_a_clear_error():
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    from jpeglm.cli.sample import SampleError, class_ids
    from jpeglm.sample import SamplerConfig, generate

    tok = CodeTokenizer(512)
    model = LlamaForCausalLM(LlamaConfig(vocab_size=tok.vocab_size, hidden_size=16, intermediate_size=32,
                                         num_hidden_layers=1, num_attention_heads=2, max_position_embeddings=32))
    with torch.no_grad(), pytest.raises(ValueError, match="needs a class-conditional model"):
        generate(model, tok, _codec(), None, 1, SamplerConfig(cfg_scale=2.0))
    with pytest.raises(SampleError, match="need a class-conditional model"):
        class_ids(tok, ["red"], None)


def test_labels_survive_export(trained):
    from transformers import AutoTokenizer

    run, loaded = trained
    export = run / "checkpoints" / (run / "checkpoints" / "latest").read_text().strip()
    hf = AutoTokenizer.from_pretrained(export)
    tok = loaded.tokenizer
    assert hf.convert_tokens_to_ids(["<class_0>", "<class_1>", "<class_null>"]) == [tok.class_offset, tok.class_offset + 1,
                                                                                   tok.null_class_id]
    assert loaded.model.config.vocab_size == tok.vocab_size
    assert load_tokenizer(export).class_names == ("blue", "red")


# --- eval ----------------------------------------------------------------------------------------------
class _StandIn:
    """A class-conditional stand-in: images nearer the held-out reals the larger the guidance scale."""

    class_names = ("blue", "red")

    def __init__(self, reals):
        from jpeglm.codecs.jpeg import JpegCodec, JpegParams

        self.name, self.codec, self.reals, self.asked = "cond", JpegCodec(JpegParams(size=32)), reals, []

    def sample(self, prompts, num_samples, seed, classes=None, cfg_scale=None):
        """`num_samples` of each of `classes`, in order, sample k with seed `seed + k` (generate's contract)."""
        from jpeglm.eval.harness import Drawn

        self.asked.append((list(classes), num_samples, cfg_scale))
        out = []
        for k in range(num_samples * len(classes)):
            rng = np.random.default_rng(seed + k)
            noisy = self.reals[(seed + k) % len(self.reals)] + rng.normal(0, 80 / cfg_scale, self.reals[0].shape)
            out.append(Drawn(np.clip(noisy, 0, 255).astype(np.uint8), "ok", "", seed + k, None, 10, {}))
        return out


def test_eval_is_class_balanced_per_guidance_scale_with_a_plot(tmp_path):
    from jpeglm.eval.config import EvalConfig
    from jpeglm.eval.harness import evaluate

    rng = np.random.default_rng(0)
    (tmp_path / "real").mkdir()
    for i in range(6):
        Image.fromarray(rng.integers(0, 256, (64, 64, 3), dtype=np.uint8)).save(tmp_path / "real" / f"{i}.png")
    cfg = EvalConfig(systems=[{"name": "cond", "checkpoint": "-"}], images=str(tmp_path / "real"), out=str(tmp_path / "out"),
                     num_images=6, image_size=32, prompt_ratios=[], unconditional=False, cfg_scales=[1.0, 4.0],
                     samples_per_class=3, bpb=False, sampler={"batch_size": 4})
    from jpeglm.eval.harness import load_heldout_images

    stand_in = _StandIn(load_heldout_images(str(tmp_path / "real"), 6, 32)[0])
    res = evaluate(cfg, systems={"cond": stand_in})
    # the same count of every class per scale, through the chunked path: chunks of the sampler's batch
    # size, one job each (class ids in id order), consecutive seeds; scale k's seeds start at 100000 k
    assert stand_in.asked == [([0, 0, 0, 1], 1, 1.0), ([1, 1], 1, 1.0), ([0, 0, 0, 1], 1, 4.0), ([1, 1], 1, 4.0)]
    rows = res["systems"][0]["rows"]
    assert [(r["setting"], r["cfg_scale"], r["n_samples"], r["classes"], r["seed"]) for r in rows] == [
        ("classes cfg=1", 1.0, 6, ["blue", "red"], 0), ("classes cfg=4", 4.0, 6, ["blue", "red"], 100_000)]
    assert rows[1]["fid"] < rows[0]["fid"]
    assert all(r["precision"] is not None and r["recall"] is not None for r in rows)  # like every setting
    out = Path(cfg.out)
    d = out / "systems" / "cond" / "classes_cfg_4"
    m = json.loads((d / "manifest.json").read_text())
    assert [(e["seed"], e["class_index"]) for e in m["samples"]] == [(100_000 + i, i // 3) for i in range(6)]
    assert np.load(d / "samples.npz")["arr_0"].shape == (6, 32, 32, 3)
    assert res["files"]["cfg_plot"] == "fid_vs_cfg.png" and (out / "fid_vs_cfg.png").is_file()
    assert "![FID against cfg_scale](fid_vs_cfg.png)" in (out / "report.md").read_text()
    # resumable like every setting: the rerun draws nothing and reports the same numbers
    (d / "00005.json").unlink()  # ... but for a sample whose sidecar a kill prevented
    (d / "00099.png").write_bytes(b"an earlier eval's")  # past this run's samples: removed (issue 19)
    again = evaluate(cfg, systems={"cond": stand_in})
    assert not (d / "00099.png").exists()
    assert stand_in.asked[4:] == [([1], 1, 4.0)]
    assert [(r["fid"], r["precision"]) for r in again["systems"][0]["rows"]] == [(r["fid"], r["precision"]) for r in rows]


def test_prep_cli_labels_from_a_dataset_column(tmp_path):
    """`jpeglm prep --labels column:NAME` on a saved dataset keeps its ClassLabel names and ids."""
    import datasets

    from jpeglm.cli import main as cli

    imgs = [Image.fromarray(np.full((64, 64, 3), c, np.uint8)) for c in ((0, 0, 250), (250, 0, 0), (250, 0, 0))]
    features = datasets.Features({"image": datasets.Image(), "kind": datasets.ClassLabel(names=["sky", "fire", "grass"])})
    datasets.Dataset.from_dict({"image": imgs, "kind": [0, 1, 1]}, features=features).save_to_disk(tmp_path / "ds")
    out = tmp_path / "out"
    assert cli(["prep", "--codec", "jpeg", "--size", "16", "--input", str(tmp_path / "ds"), "--labels", "column:kind",
                "--out", str(out), "--val-fraction", "0", "--no-progress"]) == 0
    classes = json.loads((out / "manifest.json").read_text())["classes"]
    assert classes["names"] == ["sky", "fire", "grass"] and classes["counts"] == [1, 2, 0]
    shards = ShardSet(out, "train")
    assert [shards.meta(i)["label"] for i in range(3)] == [0, 1, 1]
    assert cli(["prep", "--codec", "jpeg", "--input", str(tmp_path / "ds"), "--labels", "column:nope",
                "--out", str(tmp_path / "out2"), "--no-progress"]) == 2
