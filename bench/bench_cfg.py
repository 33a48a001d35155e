"""The cost of classifier-free guidance over plain class-conditional sampling (goal: <= 2.1x at batch 8).

Guidance runs every sample's unconditional twin in the same batched forward (2 x batch rows), so
its cost is one forward of twice the rows per step, plus the guidance arithmetic; at small batch
sizes a forward is not twice as slow for twice the rows, so the ratio can sit below 2.

Random Llamas of the configs/model/{tiny,25m}.yaml shapes with a byte tokenizer that has 1000 class
tokens (vocab 1277), unconstrained sampling, top-k 50, T 1; every row runs the whole token budget
(an EOS id no model samples); the same class and seeds for both; interleaved plain / guided runs,
medians. Two settings: unconditional start (BOS, class) and a prompt (the top 4/16 MCU rows of a
canonical 256x256 JPEG: the prefill matters then).

    python bench/bench_cfg.py [--quick] [--threads 1] [--reps 3] [--shapes tiny 25m] [--device cpu|cuda]
                              [--write bench/results/cfg.md]

Run it on an idle machine for figures you compare (then `python bench/make_benchmarks_md.py`).
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_sample import SHAPES, llama, photos  # the sampling benchmark's models and photos

from jpeglm.codecs.jpeg import JpegCodec
from jpeglm.sample import SamplerConfig, generate
from jpeglm.tokenizer import ByteTokenizer

NUM_CLASSES = 1000  # ImageNet's: the vocabulary of a class-conditional model compared with LlamaGen / VAR


class _NoEos:
    """The tokenizer with an EOS id no model samples: every row runs its whole budget."""

    def __init__(self, tok):
        self._tok = tok
        self.eos_id = 1 << 30

    def __getattr__(self, name):
        return getattr(self._tok, name)


def _once(model, tok, codec, prompt, batch: int, new: int, scale: float, device: str = "cpu") -> float:
    cfg = SamplerConfig(max_new_tokens=new, batch_size=batch, constrain=False, cfg_scale=scale)
    _sync(device)
    t = time.perf_counter()
    samples = generate(model, _NoEos(tok), codec, None if prompt is None else [prompt], batch, cfg, device, classes=[7])
    _sync(device)
    secs = time.perf_counter() - t
    return sum(s.n_new_tokens for s in samples) / secs


def _sync(device: str) -> None:
    if str(device).startswith("cuda"):
        torch.cuda.synchronize()


def measure(model, tok, codec, prompt, batch: int, new: int, reps: int, device: str = "cpu") -> tuple[float, float, float]:
    """Median tokens/s plain and guided, and the median per-pair time ratio guided / plain."""
    pairs = []
    for _ in range(reps):
        plain = _once(model, tok, codec, prompt, batch, new, 1.0, device)
        guided = _once(model, tok, codec, prompt, batch, new, 2.0, device)
        pairs.append((plain, guided))
    return (statistics.median(p for p, _ in pairs), statistics.median(g for _, g in pairs),
            statistics.median(p / g for p, g in pairs))


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="few tokens, one rep, tiny only (a smoke run)")
    ap.add_argument("--threads", type=int, default=1, help="torch intra-op threads")
    ap.add_argument("--reps", type=int, default=3, help="interleaved plain/guided pairs per row (medians)")
    ap.add_argument("--shapes", nargs="+", default=["tiny", "25m"], choices=sorted(SHAPES), help="model shapes")
    ap.add_argument("--device", default="cpu", help="torch device (cpu, cuda)")
    ap.add_argument("--write", type=Path, default=None, help="also write the results as markdown (bench/results/cfg.md)")
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)
    new, reps, shapes = (16, 1, ["tiny"]) if args.quick else (256, args.reps, args.shapes)
    tok = ByteTokenizer().with_classes([f"class_{i}" for i in range(NUM_CLASSES)])
    codec = JpegCodec()
    prompt = codec.prompt(codec.encode(photos()[0]), 0.25)
    device = args.device
    lines = [
        "# Classifier-free guidance: cost over plain class-conditional sampling (bench/bench_cfg.py)", "",
        f"Machine: {torch.get_num_threads()} torch thread(s) on {device}, torch {torch.__version__}. Random Llamas, "
        f"byte tokenizer with {NUM_CLASSES} classes (vocab {tok.vocab_size}), unconstrained, top-k 50, T 1, {new} new "
        f"tokens per sample, every row the whole budget; guided = `--cfg-scale 2` (a conditional and an unconditional "
        f"row per sample in one forward). {reps} interleaved pairs, medians. Goal: at most 2.1x at batch 8.", "",
        f"Command: `python bench/bench_cfg.py{' --quick' if args.quick else ''}{' --write ' + str(args.write) if args.write else ''}`",
        "", "| model | start | batch | plain tok/s | guided tok/s | guided time / plain time |", "|---|---|---|---|---|---|",
    ]
    print("\n".join(lines), flush=True)
    rows = []
    for shape in shapes:
        model = llama(shape, tok.vocab_size).to(device)
        _once(model, tok, codec, None, 2, 4, 2.0, device)  # warm-up
        for start, p in (("BOS + class", None), (f"prompt ({len(prompt)} bytes)", prompt)):
            for batch in (1, 8):
                plain, guided, ratio = measure(model, tok, codec, p, batch, new, reps, device)
                row = f"| {shape} | {start} | {batch} | {plain:.0f} | {guided:.0f} | {'**' if batch == 8 else ''}{ratio:.2f}x{'**' if batch == 8 else ''} |"
                rows.append(row)
                print(row, flush=True)
    if args.write:
        args.write.parent.mkdir(parents=True, exist_ok=True)
        args.write.write_text("\n".join(lines + rows) + "\n")


if __name__ == "__main__":
    main()
