"""Pretraining: data packing and order, DeepSpeed ZeRO 1/2/3 on CPU, the launcher with 2
processes, loss that falls, exact resume after kill -9, and clear errors on bad input."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from jpeglm.config import ConfigError, load_config
from jpeglm.shards import ShardError, ShardSet
from jpeglm.train.config import TrainConfig

REPO = Path(__file__).resolve().parents[1]


# ------------------------------------------------------------------------------------------
# a small dataset in the CONTRACTS shard format, written with numpy (no prep needed)
# ------------------------------------------------------------------------------------------
def _payloads(n: int, seed: int, lo: int = 20, hi: int = 60) -> list[bytes]:
    """Byte strings with structure a model can learn: a header, then a repeated motif + noise."""
    rng = np.random.default_rng(seed)
    out = []
    for _ in range(n):
        motif = rng.integers(0, 256, size=4, dtype=np.uint8)
        body = np.tile(motif, 32)[: int(rng.integers(lo, hi))]
        noise = rng.random(len(body)) < 0.1
        body[noise] = rng.integers(0, 256, size=int(noise.sum()), dtype=np.uint8)
        out.append(b"\xff\xd8" + body.tobytes() + b"\xff\xd9")
    return out


def write_split(root: Path, split: str, records: list[list[int]], payloads: list[bytes], per_shard: int, dtype) -> dict:
    (root / split).mkdir(parents=True, exist_ok=True)
    shards = []
    for s in range(0, max(len(records), 1), per_shard):
        chunk, pl = records[s : s + per_shard], payloads[s : s + per_shard]
        name = f"shard-{s // per_shard:05d}"
        flat = np.concatenate([np.asarray(r, dtype) for r in chunk]) if chunk else np.zeros(0, dtype)
        flat.tofile(root / split / f"{name}.bin")
        offsets = np.concatenate([[0], np.cumsum([len(r) for r in chunk])]).astype(np.int64)
        with open(root / split / f"{name}.idx", "wb") as f:
            np.save(f, offsets)
        lines = [json.dumps({"key": f"{split}-{s + i}", "n_tokens": len(r), "n_symbols": len(p), "n_bytes": len(p),
                             "n_pixels": 16 * 16}) for i, (r, p) in enumerate(zip(chunk, pl))]
        (root / split / f"{name}.jsonl").write_text("".join(x + "\n" for x in lines))
        shards.append({"name": name, "num_records": len(chunk)})
    return {"num_records": len(records), "num_tokens": int(sum(len(r) for r in records)), "shards": shards}


def make_dataset(root: Path, n_train: int = 48, n_val: int = 8, seed: int = 0, per_shard: int = 20, lo: int = 20, hi: int = 60) -> Path:
    from jpeglm.tokenizer import ByteTokenizer

    tok = ByteTokenizer()
    root.mkdir(parents=True, exist_ok=True)
    tok.save_pretrained(root / "tokenizer")
    splits = {}
    for split, n, s in (("train", n_train, seed), ("val", n_val, seed + 1000)):
        pl = _payloads(n, s, lo, hi)
        splits[split] = write_split(root, split, [tok.encode(p) for p in pl], pl, per_shard, np.uint16)
    manifest = {
        "format": "jpeglm-shards", "version": 1,
        "codec": {"name": "jpeg", "params": {}},
        "tokenizer": {**tok.to_config(), "path": "tokenizer"},
        "dtype": "uint16", "source": "test", "splits": splits,
        "num_records": n_train + n_val, "tokens_per_item": {}, "skipped": [], "settings": {}, "versions": {},
    }
    (root / "manifest.json").write_text(json.dumps(manifest))
    return root


@pytest.fixture(autouse=True)
def one_thread():
    """One torch thread in-process and in children: on a shared 2-core CI box two threads per
    process oversubscribe and run several times slower; equal thread counts in the straight and
    the resumed run also keep their float reductions in the same order."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="module")
def dataset(tmp_path_factory) -> Path:
    return make_dataset(tmp_path_factory.mktemp("data") / "ds")


def tiny_cfg(**over) -> TrainConfig:
    base = ["model=tiny", "data.seq_len=64", "optim.micro_batch=2", "optim.warmup_steps=2", "optim.lr=3e-3",
            "eval.interval=0", "eval.max_records=8", "log_interval=1", "deterministic=true", "precision=fp32"]
    return load_config(TrainConfig, None, base + [f"{k}={v}" for k, v in over.items()])


def _child_env() -> dict:
    """The environment for a training subprocess: without the rendezvous variables that an
    in-process run in this pytest process set (the child must pick its own free port)."""
    drop = {"RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT", "LOCAL_WORLD_SIZE"}
    return {**{k: v for k, v in os.environ.items() if k not in drop}, "OMP_NUM_THREADS": "1"}


def _ds_free_port() -> int:
    from jpeglm.train.distributed import _free_port

    return _free_port()


# ------------------------------------------------------------------------------------------
# data: packing and order
# ------------------------------------------------------------------------------------------
def test_concat_chunks_are_the_concatenation(dataset):
    from jpeglm.train.data import ConcatSequences

    shards = ShardSet(dataset, "train")
    whole = np.concatenate([np.asarray(r, np.int64) for r in shards])
    seqs = ConcatSequences(shards, 37)  # a length that cuts records in odd places
    assert len(seqs) == len(whole) // 37 and seqs.dropped_tokens == len(whole) % 37
    got = np.concatenate([seqs[i]["input_ids"].numpy() for i in range(len(seqs))])
    np.testing.assert_array_equal(got, whole[: len(seqs) * 37])
    assert (seqs[3]["labels"] == seqs[3]["input_ids"]).all() and int(seqs[3]["attention_mask"].sum()) == 37


def test_pad_packing_pads_with_ignored_labels_and_counts_long_records(tmp_path):
    from jpeglm.train.data import IGNORE, PaddedSequences

    root = make_dataset(tmp_path / "ds", n_train=30, n_val=2, lo=10, hi=60)
    shards = ShardSet(root, "train")
    lengths = shards.lengths
    seq_len = int(np.median(lengths))
    n_long = int((lengths > seq_len).sum())
    assert 0 < n_long < len(lengths)
    skip = PaddedSequences(shards, seq_len, pad_id=3, long_records="skip")
    trunc = PaddedSequences(shards, seq_len, pad_id=3, long_records="truncate")
    assert skip.num_long == trunc.num_long == n_long
    assert len(skip) == len(lengths) - n_long and len(trunc) == len(lengths)
    short = int(np.flatnonzero(lengths < seq_len)[0])
    item = trunc[short]
    n = int(lengths[short])
    np.testing.assert_array_equal(item["input_ids"][:n].numpy(), np.asarray(shards[short], np.int64))
    assert (item["input_ids"][n:] == 3).all() and (item["labels"][n:] == IGNORE).all()
    assert int(item["attention_mask"].sum()) == n and item["input_ids"][0] == 1 and item["input_ids"][n - 1] == 2


def test_batch_order_is_disjoint_across_ranks_covers_an_epoch_and_resumes():
    from jpeglm.train.data import BatchOrder

    def order(world):
        return BatchOrder(num_sequences=24, micro_batch=2, grad_accum=3, world_size=world, seed=7)

    ranks = [order(2) for _ in range(2)]
    seen = []
    for _ in range(2):  # 2 steps x 12 sequences = one epoch of 24
        per_rank = [sum(o.next_step(r), []) for r, o in enumerate(ranks)]
        assert not set(per_rank[0]) & set(per_rank[1])
        seen += per_rank[0] + per_rank[1]
    assert sorted(seen) == list(range(24))
    # resuming from a saved position gives the batches the uninterrupted order gives
    a, b = order(2), order(2)
    for _ in range(3):
        a.next_step(0)
    b.load_state_dict(a.state_dict())
    assert [a.next_step(0) for _ in range(4)] == [b.next_step(0) for _ in range(4)]
    with pytest.raises(ValueError, match="different data"):
        BatchOrder(25, 2, 3, 2, 7).load_state_dict(a.state_dict())
    # a new epoch is a different permutation
    c = order(1)
    e0 = sum([sum(c.next_step(0), []) for _ in range(4)], [])
    e1 = sum([sum(c.next_step(0), []) for _ in range(4)], [])
    assert sorted(e0) == sorted(e1) == list(range(24)) and e0 != e1


# ------------------------------------------------------------------------------------------
# bad input: clear errors before any model is built
# ------------------------------------------------------------------------------------------
def test_bad_input_is_refused_before_training(tmp_path, dataset):
    import shutil

    from jpeglm.cli.train import main
    from jpeglm.train.loop import TrainError, prepare

    cfg = tiny_cfg()
    with pytest.raises(ShardError, match="no such dataset"):
        prepare(cfg, tmp_path / "nowhere", tmp_path / "o1")
    broken = tmp_path / "broken"
    shutil.copytree(dataset, broken)
    bin_ = broken / "train" / "shard-00001.bin"
    bin_.write_bytes(bin_.read_bytes()[:-10])
    with pytest.raises(ShardError, match="truncated"):
        prepare(cfg, broken, tmp_path / "o2")
    with pytest.raises(TrainError, match="pins vocab_size=300"):
        prepare(tiny_cfg(**{"model_overrides": "{vocab_size: 300}"}), dataset, tmp_path / "o3")
    with pytest.raises(TrainError, match="exceeds the model's max_position_embeddings"):
        prepare(tiny_cfg(**{"model_overrides": "{max_position_embeddings: 32}"}), dataset, tmp_path / "o4")
    with pytest.raises(ConfigError, match="fp16 is refused"):
        tiny_cfg(precision="fp16")
    with pytest.raises(ConfigError, match="unknown key"):
        tiny_cfg(**{"optim.learning_rate": 1})
    # a context too short for pad packing: every record is longer than seq_len
    from jpeglm.train.data import build_sequences

    with pytest.raises(ShardError, match="no record fits seq_len=8"):
        build_sequences(ShardSet(dataset, "train"), "pad", 8, 3, "skip")
    # an output dir that holds another run
    out = tmp_path / "run"
    out.mkdir()
    (out / "config.yaml").write_text("model: tiny\noptim: {lr: 0.5}\n")
    with pytest.raises(TrainError, match="different run.*optim.lr"):
        prepare(cfg, dataset, out)
    with pytest.raises(TrainError, match="cannot --resume"):
        prepare(cfg, dataset, out, resume=True)
    from jpeglm.config import save_config

    save_config(cfg, out / "config.yaml")
    with pytest.raises(TrainError, match="pass --resume"):
        prepare(cfg, dataset, out)
    assert prepare(tiny_cfg(max_steps=99), dataset, out, resume=True).resume_from is None  # longer is fine
    # the CLI turns these into exit code 2 and one line on stderr
    assert main(["--data", str(tmp_path / "nowhere"), "--out", str(tmp_path / "o5"), "model=tiny"]) == 2


# ------------------------------------------------------------------------------------------
# DeepSpeed on CPU
# ------------------------------------------------------------------------------------------
# zero3_offload: optimizer state and parameters in CPU memory, stepped by DeepSpeed's CPU Adam
# (compiled with g++ on first use: a few minutes, once, cached in TORCH_EXTENSIONS_DIR).
@pytest.mark.parametrize("stage", [1, 2, 3, "3_offload"])
def test_zero_stage_trains_and_export_gives_the_training_models_logits(tmp_path, dataset, stage):
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from jpeglm.train.loop import train

    steps = 3 if stage in (1, 2) else 2  # ZeRO-3 is slow on CPU (per-parameter gathers)
    # bf16 matmuls are emulated (slow) on CPUs without bf16 units: one stage covers bf16
    precision = "bf16" if stage == 2 else "fp32"
    cfg = tiny_cfg(max_steps=steps, ckpt_interval=steps, deepspeed=f"zero{stage}", precision=precision,
                   **{"eval.interval": steps})
    out = tmp_path / "run"
    result = train(cfg, dataset, out)
    log = [json.loads(x) for x in (out / "log.jsonl").read_text().splitlines()]
    assert [r["step"] for r in log] == list(range(1, steps + 1))
    assert all(np.isfinite(r["loss"]) and r["tokens_per_s"] > 0 and r["lr"] > 0 for r in log)
    assert log[-1]["val_bpb"] > 0 and log[-1]["val_bpp"] > 0  # (both recomputed exactly below)
    if stage == "3_offload":
        from deepspeed.ops.adam import DeepSpeedCPUAdam

        assert isinstance(result.engine.basic_optimizer, DeepSpeedCPUAdam)
        assert result.engine.zero_offload_param() and result.engine.zero_cpu_offload()
    export = out / "checkpoints" / (out / "checkpoints" / "latest").read_text().strip()
    assert export.name == f"step-{steps:07d}"
    model = AutoModelForCausalLM.from_pretrained(export).eval()
    tok = AutoTokenizer.from_pretrained(export)
    assert len(tok) == 276 and model.config.vocab_size == 276
    payload = _payloads(1, 99)[0]
    from jpeglm.tokenizer import load_tokenizer

    ours = load_tokenizer(export)
    ids = torch.tensor([ours.encode(payload)])
    assert tok(ours.to_text(payload))["input_ids"] + [tok.eos_token_id] == ids[0].tolist()  # HF adds BOS only
    with torch.no_grad():
        result.engine.eval()
        want = result.engine(input_ids=ids).logits.float()
        got = model(input_ids=ids).logits.float()
    torch.testing.assert_close(got, want, rtol=0, atol=0)
    # validation is bits per *source byte*: sum NLL / ln 2 / n_bytes, recomputed here from the export
    shards = ShardSet(dataset, "val")
    nll = n_bytes = n_pixels = 0.0
    with torch.no_grad():
        for i in range(len(shards)):
            x = torch.tensor(np.asarray(shards[i], np.int64))[None]
            logp = torch.log_softmax(model(input_ids=x).logits[0, :-1].float(), -1)
            nll -= float(logp.gather(-1, x[0, 1:, None]).sum())
            n_bytes += shards.meta(i)["n_bytes"]
            n_pixels += shards.meta(i)["n_pixels"]
    assert log[-1]["val_bpb"] == pytest.approx(nll / np.log(2) / n_bytes, rel=1e-3)
    assert log[-1]["val_bpp"] == pytest.approx(nll / np.log(2) / n_pixels, rel=1e-3)  # was only "> 0"


def test_val_records_longer_than_seq_len_are_still_validated(tmp_path):
    """Validation scores whole records up to the model's context: records of 86-126 tokens with
    64-token training chunks (like 32x32 pixel records, 1026 tokens, with seq_len 1024)."""
    from jpeglm.train.loop import train

    data = make_dataset(tmp_path / "long", n_train=16, n_val=4, lo=80, hi=120)
    assert min(ShardSet(data, "val").lengths) > 64
    out = tmp_path / "run"
    train(tiny_cfg(max_steps=2, ckpt_interval=2, deepspeed="zero1", **{"eval.interval": 2}), data, out)
    last = json.loads((out / "log.jsonl").read_text().splitlines()[-1])
    assert last["val_records"] == 4
    # scored whole: the bits of every token of the 4 records under the exported model ("> 0"
    # held as well for records cut to 64 tokens, or for none)
    import torch
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(out / "checkpoints" / "step-0000002").eval()
    shards = ShardSet(data, "val")
    nll = n_bytes = 0.0
    with torch.no_grad():
        for i in range(len(shards)):
            x = torch.tensor(np.asarray(shards[i], np.int64))[None]
            logp = torch.log_softmax(model(input_ids=x).logits[0, :-1].float(), -1)
            nll -= float(logp.gather(-1, x[0, 1:, None]).sum())
            n_bytes += shards.meta(i)["n_bytes"]
    assert last["val_bpb"] == pytest.approx(nll / np.log(2) / n_bytes, rel=1e-3)


def test_loss_falls_on_a_fixed_batch(tmp_path):
    from jpeglm.train.loop import train

    # pad packing over 2 records with micro_batch 2: every step sees the same batch
    root = make_dataset(tmp_path / "ds", n_train=2, n_val=1)
    cfg = tiny_cfg(max_steps=25, ckpt_interval=25, deepspeed="zero1", **{
        "data.packing": "pad", "data.seq_len": 64, "optim.lr": "1e-2", "optim.warmup_steps": 1, "optim.weight_decay": 0})
    result = train(cfg, root, tmp_path / "run")
    losses = [result.losses[s] for s in sorted(result.losses)]
    assert losses[-1] < 0.5 * losses[0], losses


def _write_cfg(path: Path, **over) -> Path:
    from jpeglm.config import save_config

    save_config(tiny_cfg(**over), path)
    return path


def test_two_processes_through_the_deepspeed_launcher(tmp_path, dataset):
    out = tmp_path / "run"
    cfg = _write_cfg(tmp_path / "c.yaml", ckpt_interval=3, deepspeed="zero2", **{"eval.interval": 3})
    cmd = ["deepspeed", "--num_gpus", "2", "--master_port", str(_ds_free_port()), "--module", "jpeglm.train",
           "--config", str(cfg), "--data", str(dataset), "--out", str(out), "--max-steps", "3"]
    proc = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=300, env=_child_env())
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    log = [json.loads(x) for x in (out / "log.jsonl").read_text().splitlines()]
    assert [r["step"] for r in log] == [1, 2, 3]
    assert all(r["tokens"] == 2 * 2 * 64 for r in log)  # 2 ranks x micro_batch 2 x seq_len 64
    assert "world 2" in proc.stdout + proc.stderr
    assert (out / "checkpoints" / "step-0000003" / "model.safetensors").is_file()


def test_resume_after_kill_9_gives_the_uninterrupted_losses(tmp_path, dataset):
    from jpeglm.train.loop import train

    n = 12
    over = dict(ckpt_interval=4, deepspeed="zero2", precision="fp32", **{"eval.interval": 6})
    straight = train(tiny_cfg(max_steps=n, **over), dataset, tmp_path / "straight")
    cfg = _write_cfg(tmp_path / "c.yaml", **over)
    out = tmp_path / "killed"
    cmd = [sys.executable, "-m", "jpeglm.train", "--config", str(cfg), "--data", str(dataset), "--out", str(out),
           "--max-steps", str(n)]
    proc = subprocess.Popen(cmd, cwd=REPO, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, env=_child_env())
    latest = out / "checkpoints" / "latest"
    deadline = time.time() + 240
    while not latest.is_file() and proc.poll() is None and time.time() < deadline:
        time.sleep(0.02)
    alive = proc.poll() is None
    if alive:
        os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    assert alive, "the run ended before it could be killed: " + proc.stderr.read().decode()[-2000:]
    assert proc.returncode == -signal.SIGKILL
    done = latest.read_text().strip()
    assert done != f"step-{n:07d}"
    resumed = subprocess.run(cmd + ["--resume"], cwd=REPO, capture_output=True, text=True, timeout=300, env=_child_env())
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert "resumed at step 4" in resumed.stdout + resumed.stderr or "resumed at step 8" in resumed.stdout + resumed.stderr
    log = [json.loads(x) for x in (out / "log.jsonl").read_text().splitlines()]
    assert [r["step"] for r in log] == list(range(1, n + 1))
    assert [r["loss"] for r in log] == [straight.losses[s] for s in range(1, n + 1)]
    want_val = json.loads((tmp_path / "straight" / "log.jsonl").read_text().splitlines()[-1])["val_loss"]
    assert log[-1]["val_loss"] == want_val
    assert (out / "checkpoints" / "latest").read_text().strip() == f"step-{n:07d}"


def test_end_to_end_on_real_jpeg_shards_from_prep(tmp_path):
    """`jpeglm prep` (canonical JPEG bytes of real photos) -> train -> load_for_inference."""
    pytest.importorskip("jpeglm.cli.prep")
    from jpeglm.checkpoint import load_for_inference
    from jpeglm.cli import main as cli
    from jpeglm.train.loop import train

    data = tmp_path / "prep"
    assert cli(["prep", "--codec", "jpeg", "--input", "builtin:skimage", "--out", str(data), "--size", "64",
                "--val-fraction", "0.3", "--no-progress"]) == 0
    cfg = tiny_cfg(max_steps=3, ckpt_interval=3, deepspeed="zero1", **{
        "data.packing": "pad", "data.seq_len": 1024, "eval.interval": 3, "eval.max_records": 64})
    train(cfg, data, tmp_path / "run")
    last = json.loads((tmp_path / "run" / "log.jsonl").read_text().splitlines()[-1])
    n_val = len(ShardSet(data, "val"))
    assert last["val_records"] == n_val > 0 and 0 < last["val_bpb"] < 16 and 0 < last["val_bpp"]
    loaded = load_for_inference(tmp_path / "run")
    assert loaded.codec.to_config() == ShardSet(data, "train").codec().to_config()
    assert loaded.codec.params.size == 64 and loaded.meta["data"] == str(data.resolve())
