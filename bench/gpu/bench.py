"""What one H100/H200 should measure for issue 14 (bench/gpu/run.sh runs this; <= 4 minutes).

    python bench/gpu/bench.py --out DIR [--dry-run]

1. Sampling, random bf16 Llamas of the 1B and 7B shapes (configs/model/{1b,7b}.yaml, byte vocabulary),
   prompt = the top 2/16 MCU rows of a 256x256 JPEG: new tokens/s of ours with the JPEG constraint on and
   off and of `generate()` with cache_implementation="static" (its auto-compile off: compile time would
   not fit; bench/bench_generate.py has the compiled rows) at batch 1 / 8 / 64. Decode rate = the extra
   tokens of a `--new`-token call over a 1-token call (so prefill is not counted), per variant.
   At batch 1 against the HBM roofline: each step reads every weight and the KV cache once, so
   tokens/s <= bandwidth / (2 bytes x params + KV bytes); bandwidth measured here by a device copy.
2. Training, 350M and 1B at 12,288 tokens per sequence (bf16, ZeRO-2, SDPA, micro-batch 1), on a
   synthetic byte dataset through jpeglm.train: tokens/s (median after warm-up) and MFU
   (6N + 6 L H S FLOPs per token over the bf16 peak: nominal 989 TFLOP/s, and the peak measured here
   by an 8192^3 matmul).
Writes DIR/bench.json (everything) and prints a short log (run.sh tees it into DIR/log.txt).
`--dry-run`: the same code on a CPU with the tiny shape, a few tokens and steps.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parents[2]
sys.path[:0] = [str(REPO / "bench"), str(REPO / "tests")]
import bench_generate as bg

T0 = time.perf_counter()
NOMINAL_TFLOPS = 989.0  # H100 SXM / H200 dense bf16
PLANS = {
    "full": {"shapes": ["1b", "7b"], "batches": [1, 8, 64], "new": 64, "image": 256, "ratio": 0.125,
             "train": ["350m", "1b"], "seq_len": 12288, "steps": 12, "dtype": "bf16", "n_train": 64},
    "dry": {"shapes": ["tiny"], "batches": [1, 2], "new": 4, "image": 64, "ratio": 0.25,
            "train": ["tiny"], "seq_len": 64, "steps": 3, "dtype": "fp32", "n_train": 16},
}


def log(msg: str) -> None:
    print(f"[{time.perf_counter() - T0:6.1f}s] {msg}", flush=True)


def bandwidth(device) -> float | None:
    """Bytes/s of a device-to-device copy (read + write counted)."""
    if not str(device).startswith("cuda"):
        return None
    x = torch.empty(2 << 30, dtype=torch.uint8, device=device)
    y = torch.empty_like(x)
    for _ in range(3):
        y.copy_(x)
    torch.cuda.synchronize()
    t = time.perf_counter()
    for _ in range(10):
        y.copy_(x)
    torch.cuda.synchronize()
    bw = 2 * x.numel() * 10 / (time.perf_counter() - t)
    del x, y
    return bw


def matmul_tflops(device) -> float | None:
    if not str(device).startswith("cuda"):
        return None
    a = torch.randn(8192, 8192, device=device, dtype=torch.bfloat16)
    b = torch.randn_like(a)
    for _ in range(3):
        a @ b
    torch.cuda.synchronize()
    t = time.perf_counter()
    for _ in range(10):
        a @ b
    torch.cuda.synchronize()
    return 2 * 8192**3 * 10 / (time.perf_counter() - t) / 1e12


def decode_rate(variant, model, tok, codec, prompt, batch, new, device) -> dict:
    bg.run_variant(variant, model, tok, codec, prompt, batch, 2, device)  # warm-up
    t1, n1 = bg.run_variant(variant, model, tok, codec, prompt, batch, 1, device)
    tn, nn = bg.run_variant(variant, model, tok, codec, prompt, batch, new, device)
    rate = (nn - n1) / (tn - t1) if tn > t1 and nn > n1 else None
    return {"variant": variant, "batch": batch, "decode_tokens_per_s": rate, "call_s": tn, "prefill_call_s": t1,
            "new_tokens": nn, "ms_per_step": 1000 * (tn - t1) / max(1, (nn - n1) / batch)}


def sampling(p: dict, device, bw: float | None) -> list[dict]:
    from jpeglm.tokenizer import ByteTokenizer

    tok = ByteTokenizer()
    prompt, codec = bg.jpeg_prompt(p["image"], p["ratio"])
    dtype = torch.bfloat16 if p["dtype"] == "bf16" else torch.float32
    rows = []
    for name in p["shapes"]:
        model = bg.random_llama(name, tok.vocab_size, dtype=dtype, device=device, context=4096)
        n_params = sum(x.numel() for x in model.parameters())
        c = model.config
        kv_per_token = 2 * c.num_hidden_layers * (c.num_key_value_heads or c.num_attention_heads) * \
            (c.hidden_size // c.num_attention_heads) * (2 if dtype == torch.bfloat16 else 4)
        n_prompt = len(tok.encode(prompt, bos=True, eos=False))
        log(f"{name}: {n_params / 1e9:.2f}B params, prompt {n_prompt} tokens")
        for b in p["batches"]:
            for v in ("ours constrained", "ours unconstrained", "generate() static"):
                r = decode_rate(v, model, tok, codec, prompt, b, p["new"], device)
                r.update(shape=name, params=n_params, prompt_tokens=n_prompt)
                if b == 1 and bw:
                    step_bytes = n_params * dtype.itemsize + kv_per_token * (n_prompt + p["new"] / 2)
                    r["roofline_tokens_per_s"] = bw / step_bytes
                    r["of_roofline"] = (r["decode_tokens_per_s"] or 0) / r["roofline_tokens_per_s"]
                rows.append(r)
                log(json.dumps({k: (round(x, 3) if isinstance(x, float) else x) for k, x in r.items()}))
        del model
        if str(device).startswith("cuda"):
            torch.cuda.empty_cache()
    return rows


def training(p: dict, work: Path, peak: float | None) -> list[dict]:
    from jpeglm.config import config_root, load_config
    from jpeglm.train.config import ModelConfig, TrainConfig
    from jpeglm.train.loop import train
    from test_train import make_dataset

    data = make_dataset(work / "data", n_train=p["n_train"], n_val=2, lo=p["seq_len"] // 2, hi=p["seq_len"] * 2)
    rows = []
    for name in p["train"]:
        out = work / f"train-{name}"
        cfg = load_config(TrainConfig, None, [f"model={name}", f"data.seq_len={p['seq_len']}", "optim.micro_batch=1",
                                              "deepspeed=zero2", f"precision={p['dtype']}", "attn_implementation=sdpa",
                                              f"max_steps={p['steps']}", "log_interval=1", f"ckpt_interval={10**9}",
                                              "eval.interval=0", "eval.max_records=1", "optim.warmup_steps=1"])
        t = time.perf_counter()
        train(cfg, str(data), str(out))
        wall = time.perf_counter() - t
        lines = [json.loads(x) for x in (out / "log.jsonl").read_text().splitlines() if x.strip()]
        tps = statistics.median(r["tokens_per_s"] for r in lines[min(2, len(lines) - 1):])
        m = load_config(ModelConfig, config_root() / "model" / f"{name}.yaml")
        n = m.num_params(276)
        per_token = 6 * n + 6 * m.num_hidden_layers * m.hidden_size * p["seq_len"]
        r = {"model": name, "params": n, "seq_len": p["seq_len"], "steps": p["steps"], "tokens_per_s": tps, "wall_s": wall,
             "flops_per_token": per_token, "mfu_nominal": per_token * tps / (NOMINAL_TFLOPS * 1e12),
             "mfu_measured_peak": per_token * tps / (peak * 1e12) if peak else None,
             "peak_memory_GiB": torch.cuda.max_memory_allocated() / 2**30 if torch.cuda.is_available() else None,
             "final_loss": lines[-1]["loss"]}
        rows.append(r)
        log(json.dumps(r))
    return rows


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", required=True, help="output folder: bench.json")
    ap.add_argument("--work", default="/tmp/jpeglm-gpu-bench", help="scratch folder (datasets, runs)")
    ap.add_argument("--dry-run", action="store_true", help="tiny sizes on a CPU")
    ap.add_argument("--skip", nargs="*", default=[], choices=["sampling", "training"], help="parts to leave out")
    args = ap.parse_args(argv)
    p = PLANS["dry" if args.dry_run else "full"]
    device = "cuda" if torch.cuda.is_available() else "cpu"
    if not args.dry_run and device != "cuda":
        print("bench/gpu/bench.py: error: no CUDA device (use --dry-run on a CPU)", file=sys.stderr)
        return 2
    out, work = Path(args.out), Path(args.work)
    out.mkdir(parents=True, exist_ok=True)
    work.mkdir(parents=True, exist_ok=True)
    import transformers

    res = {"dry_run": args.dry_run, "device": torch.cuda.get_device_name(0) if device == "cuda" else "cpu",
           "torch": torch.__version__, "transformers": transformers.__version__, "plan": p}
    res["hbm_bytes_per_s"] = bandwidth(device)
    res["matmul_tflops"] = matmul_tflops(device)
    log(f"device {res['device']}: copy {res['hbm_bytes_per_s'] or 0:.3g} B/s, matmul {res['matmul_tflops'] or 0:.0f} TFLOP/s")

    def save():
        (out / "bench.json").write_text(json.dumps(res, indent=1) + "\n")

    save()
    if "sampling" not in args.skip:
        res["sampling"] = sampling(p, device, res["hbm_bytes_per_s"])
        save()
    if "training" not in args.skip:
        res["training"] = training(p, work, res["matmul_tflops"])
    res["total_s"] = time.perf_counter() - T0
    save()
    log(f"done in {res['total_s']:.0f}s -> {out / 'bench.json'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
