"""Training throughput: tokens/s and peak memory of the tiny and ~25M models on this CPU.

    python bench/bench_train.py [--models tiny 25m] [--seq-len 256] [--steps 8] [--out bench/results/train.md]

Each model trains in its own subprocess (`python -m jpeglm.train`, ZeRO-2, fp32 and bf16, concat packing)
on a synthetic byte-token dataset; tokens/s is the median of the logged steps after the first
(warm-up), peak memory the child's max RSS (os.wait4). The GPU figures (350m / 1b at 12288 tokens, MFU) need
a GPU: see the command printed into the results file.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(REPO), str(REPO / "tests")]  # run from anywhere, no install needed


def bench(model: str, seq_len: int, steps: int, micro_batch: int, precision: str, work: Path, data: Path,
          threads: int | None = None) -> dict:
    out = work / f"run-{model}"
    cmd = [sys.executable, "-m", "jpeglm.train", "--data", str(data), "--out", str(out), "--max-steps", str(steps),
           f"model={model}", f"data.seq_len={seq_len}", f"optim.micro_batch={micro_batch}", "deepspeed=zero2",
           f"precision={precision}", "log_interval=1", f"ckpt_interval={steps}", "eval.interval=0", "eval.max_records=4"]
    t0 = time.time()
    out.mkdir(parents=True, exist_ok=True)
    with open(work / f"{model}.stdout", "w") as so, open(work / f"{model}.stderr", "w") as se:
        env = {**os.environ, **({"OMP_NUM_THREADS": str(threads)} if threads else {})}
        proc = subprocess.Popen(cmd, cwd=REPO, stdout=so, stderr=se, env=env)
        _, status, usage = os.wait4(proc.pid, 0)  # this child's own rusage: its peak RSS
        proc.returncode = os.waitstatus_to_exitcode(status)
    if proc.returncode:
        raise SystemExit((work / f"{model}.stderr").read_text()[-3000:])
    peak_kb = usage.ru_maxrss
    log = [json.loads(x) for x in (out / "log.jsonl").read_text().splitlines()]
    tps = statistics.median(r["tokens_per_s"] for r in log[1:])
    from jpeglm.config import config_root
    from jpeglm.train.config import ModelConfig
    from jpeglm.config import load_config

    n = load_config(ModelConfig, config_root() / "model" / f"{model}.yaml").num_params(276)
    return {"model": model, "precision": precision, "params_M": n / 1e6, "seq_len": seq_len, "micro_batch": micro_batch, "steps": steps,
            "tokens_per_s": tps, "peak_rss_MiB": peak_kb / 1024, "wall_s": time.time() - t0,
            "final_loss": log[-1]["loss"]}


GPU_COMMAND = """\
# one H100/H200: 350m and 1b at 12288 tokens, bf16, ZeRO-2, without / with activation checkpointing
for m in 350m 1b; do for ac in false true; do
  jpeglm train --config configs/train/$m.yaml --data DATA --out runs/bench-$m-ac$ac --max-steps 30 \\
    activation_checkpointing=$ac log_interval=1 ckpt_interval=1000000 eval.interval=0 optim.grad_accum=1
  python bench/bench_train.py --mfu runs/bench-$m-ac$ac --peak-tflops 989   # H100 SXM / H200 bf16 dense
done; done
"""


def mfu(run_dir: Path, peak_tflops: float) -> dict:
    """MFU of a finished run from its log.jsonl: FLOPs/token = 6*N + 6*L*H*S (the causal attention
    term: 12*L*H*S halved because half the score matrix is masked), times tokens/s, over peak."""
    from jpeglm.config import load_config
    from jpeglm.train.config import TrainConfig, resolve_model_config

    cfg = load_config(TrainConfig, run_dir / "config.yaml")
    m = resolve_model_config(cfg)
    vocab = json.loads((run_dir / "checkpoints" / (run_dir / "checkpoints" / "latest").read_text().strip() / "config.json").read_text())["vocab_size"] \
        if (run_dir / "checkpoints" / "latest").is_file() else 276
    n = m.num_params(vocab)
    per_token = 6 * n + 6 * m.num_hidden_layers * m.hidden_size * cfg.data.seq_len
    log = [json.loads(x) for x in (run_dir / "log.jsonl").read_text().splitlines()]
    tps = statistics.median(r["tokens_per_s"] for r in log[min(5, len(log) - 1):])  # skip warm-up steps
    return {"run": str(run_dir), "params_M": n / 1e6, "seq_len": cfg.data.seq_len, "tokens_per_s": tps,
            "activation_checkpointing": cfg.activation_checkpointing,
            "mfu": per_token * tps / (peak_tflops * 1e12)}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--models", nargs="+", default=["tiny", "25m"], help="model configs to time")
    ap.add_argument("--seq-len", type=int, default=256, help="tokens per sequence (short: this is a CPU)")
    ap.add_argument("--steps", type=int, default=8, help="optimizer steps per model (the first is warm-up)")
    ap.add_argument("--precision", nargs="+", default=["fp32", "bf16"], help="precisions to time (bf16 is emulated on CPUs without bf16 units)")
    ap.add_argument("--micro-batch", type=int, default=4, help="sequences per step")
    ap.add_argument("--out", default=str(REPO / "bench" / "results" / "train.md"), help="markdown file for the figures")
    ap.add_argument("--threads", type=int, default=None, help="OMP_NUM_THREADS for the training process (default: torch's choice)")
    ap.add_argument("--mfu", metavar="RUN_DIR", help="instead of benchmarking: print the MFU of a finished (GPU) run")
    ap.add_argument("--peak-tflops", type=float, default=989.0, help="peak dense bf16 TFLOP/s of one GPU, for --mfu")
    args = ap.parse_args(argv)
    if args.mfu:
        # log.jsonl tokens_per_s sums all ranks: this is the MFU of a one-GPU run (divide by N for N GPUs)
        print(json.dumps(mfu(Path(args.mfu), args.peak_tflops)))
        return 0
    from test_train import make_dataset

    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        data = make_dataset(Path(tmp) / "data", n_train=400, n_val=4, lo=100, hi=400)
        for m in args.models:
            for prec in args.precision:
                rows.append(bench(m, args.seq_len, args.steps, args.micro_batch, prec, Path(tmp) / prec, data, args.threads))
                print(json.dumps(rows[-1]))
    import torch

    lines = [
        "# Training throughput (bench/bench_train.py)", "",
        f"Machine: {platform.processor() or platform.machine()}, {os.cpu_count()} shared CPU cores "
        f"({args.threads or torch.get_num_threads()} torch threads in the training process), "
        f"no GPU; torch {torch.__version__}; load average {os.getloadavg()[0]:.1f} at the end. The CPU is shared with other jobs, so figures are indicative only.", "",
        f"Command: `python bench/bench_train.py --models {' '.join(args.models)} --seq-len {args.seq_len} --steps {args.steps} "
        f"--micro-batch {args.micro_batch} --precision {' '.join(args.precision)}"
        + (f" --threads {args.threads}" if args.threads else "") + "` (ZeRO-2, one process, gloo).", "",
        "| model | params | precision | seq len | micro batch | tokens/s (median) | peak RSS | wall (incl. start) |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        lines.append(f"| {r['model']} | {r['params_M']:.2f}M | {r['precision']} | {r['seq_len']} | {r['micro_batch']} | {r['tokens_per_s']:.0f} | "
                     f"{r['peak_rss_MiB']:.0f} MiB | {r['wall_s']:.0f} s |")
    lines += ["", "## GPU (not measured: no GPU was lent to this session)", "", "```bash", GPU_COMMAND.rstrip(), "```", ""]
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text("\n".join(lines))
    return 0


if __name__ == "__main__":
    sys.exit(main())
