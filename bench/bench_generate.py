"""Tokens/s of our sampler against `transformers` generate() at its strongest (issue 14.2), on this CPU.

    python bench/bench_generate.py --write bench/results/generate.md        # the full table (~15-25 min, idle machine)
    python bench/bench_generate.py --shape tiny --batches 1 2 --new 8 --reps 1 --no-compile   # smoke run

One random Llama of the 25M shape (configs/model/25m.yaml; byte vocabulary, 276; weights do not change the
speed), one intra-op thread, fp32, sampling with top-k 50, top-p 1, T 1, the prompt = the top 4/16 MCU
rows of a canonical 256x256 JPEG of an astronaut (bytes -> byte tokens). At batch 1 / 8 / 32:
  ours (constraint on)   jpeglm.sample.generate with the JPEG grammar, every row running the whole
                         budget (an EOS the model cannot sample; the grammar keeps EOI out of reach)
  ours (constraint off)  the same, unconstrained
  generate() static      cache_implementation="static", min_new_tokens = max_new_tokens
  generate() dynamic     its default DynamicCache
each without and (unless --no-compile) with `torch.compile` of the model's forward (ours: dynamic
shapes, as the prompt and batch change; generate() static: the fixed shapes of its cache), a warm-up
call first so compile time is not counted. Runs of one batch are interleaved, `--reps` times, medians.
The table's figure is the decode rate: new tokens/s of a `--new`-token call beyond a 1-token call of
the same variant (the prompt's prefill cancels out); the whole call's tokens/s is in the raw JSON.
The functions are also what bench/gpu/bench.py times on a GPU.
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import sys
import time
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parents[1]
SHAPES = {  # configs/model/{tiny,25m,1b,7b}.yaml without the context (set below)
    "tiny": {"hidden_size": 64, "intermediate_size": 128, "num_hidden_layers": 2, "num_attention_heads": 4},
}


def shape(name: str) -> dict:
    """A model shape: one of SHAPES or a configs/model name."""
    if name in SHAPES:
        return dict(SHAPES[name])
    from jpeglm.config import config_root, load_config
    from jpeglm.train.config import ModelConfig

    m = load_config(ModelConfig, config_root() / "model" / f"{name}.yaml")
    return {k: v for k, v in vars(m).items() if k not in ("vocab_size", "max_position_embeddings", "initializer_range")}


def random_llama(name: str, vocab: int, dtype=torch.float32, device="cpu", context: int = 4096):
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    cfg = LlamaConfig(vocab_size=vocab, max_position_embeddings=context, bos_token_id=1, eos_token_id=2,
                      pad_token_id=3, **shape(name))
    cfg._attn_implementation = "sdpa"
    prev = torch.get_default_dtype()
    torch.set_default_dtype(dtype)
    try:
        with torch.device(device):
            model = LlamaForCausalLM(cfg)
    finally:
        torch.set_default_dtype(prev)
    return model.eval()


def jpeg_prompt(size: int = 256, ratio: float = 0.25) -> tuple[bytes, object]:
    import skimage.data
    from PIL import Image

    from jpeglm.codecs.jpeg import JpegCodec, JpegParams

    codec = JpegCodec(JpegParams(size=size))
    return codec.prompt(codec.encode(Image.fromarray(skimage.data.astronaut())), ratio), codec


class NoEos:
    """The tokenizer with an EOS id no model samples: every row of ours runs its whole budget."""

    def __init__(self, tok):
        self._tok = tok
        self.eos_id = 1 << 30

    def __getattr__(self, name):
        return getattr(self._tok, name)


def _sync(device) -> None:
    if str(device).startswith("cuda"):
        torch.cuda.synchronize()


def time_ours(model, tok, codec, prompt, batch: int, new: int, constrain: bool, device="cpu") -> tuple[float, int]:
    """Seconds and new tokens of one call of jpeglm's sampler."""
    from jpeglm.sample import SamplerConfig, generate

    cfg = SamplerConfig(max_new_tokens=new, batch_size=batch, constrain=constrain, steer=False)
    _sync(device)
    t = time.perf_counter()
    samples = generate(model, NoEos(tok), codec, [prompt], batch, cfg, device)
    _sync(device)
    return time.perf_counter() - t, sum(s.n_new_tokens for s in samples)


def time_generate(model, tok, prompt, batch: int, new: int, cache: str, device="cpu") -> tuple[float, int]:
    """Seconds and new tokens of one generate() call; cache is 'static' or 'dynamic'."""
    ids = torch.tensor([tok.encode(prompt, bos=True, eos=False)] * batch, device=device)
    kw = {"cache_implementation": "static", "disable_compile": True} if cache == "static" else {}
    _sync(device)
    t = time.perf_counter()
    with torch.inference_mode():
        out = model.generate(ids, attention_mask=torch.ones_like(ids), do_sample=True, top_k=50, top_p=1.0,
                             temperature=1.0, max_new_tokens=new, min_new_tokens=new, eos_token_id=tok.eos_id,
                             pad_token_id=tok.pad_id, **kw)
    _sync(device)
    return time.perf_counter() - t, int(out.shape[0] * (out.shape[1] - ids.shape[1]))


VARIANTS = ("ours constrained", "ours unconstrained", "generate() static", "generate() dynamic")


def run_variant(variant: str, model, tok, codec, prompt, batch: int, new: int, device="cpu") -> tuple[float, int]:
    if variant.startswith("ours"):
        return time_ours(model, tok, codec, prompt, batch, new, variant == "ours constrained", device)
    return time_generate(model, tok, prompt, batch, new, variant.split()[-1], device)


def compiled(model, dynamic: bool):
    """The model with its forward wrapped by torch.compile (a new wrapper; the weights are shared)."""
    import copy

    m = copy.copy(model)
    m.forward = torch.compile(model.forward, dynamic=dynamic)
    return m


def measure(model, tok, codec, prompt, batches, new: int, reps: int, variants=VARIANTS, device="cpu", log=print) -> list[dict]:
    """Per batch and variant: the medians over `reps` interleaved repetitions of the whole call's new
    tokens/s (prefill included) and of the decode rate (the extra tokens of the `new`-token call over a
    1-token call, per extra second: prefill cancels out)."""
    rows = []
    for b in batches:
        whole, decode = {v: [] for v in variants}, {v: [] for v in variants}
        for v in variants:
            run_variant(v, model, tok, codec, prompt, b, min(new, 4), device)  # warm-up (and compile)
        for _ in range(reps):
            for v in variants:
                t1, n1 = run_variant(v, model, tok, codec, prompt, b, 1, device)
                secs, n = run_variant(v, model, tok, codec, prompt, b, new, device)
                whole[v].append(n / secs)
                decode[v].append((n - n1) / (secs - t1) if secs > t1 and n > n1 else float("nan"))
        for v in variants:
            rows.append({"batch": b, "variant": v, "decode_tokens_per_s": statistics.median(decode[v]),
                         "tokens_per_s": statistics.median(whole[v]), "runs": decode[v]})
            log(json.dumps(rows[-1]))
    return rows


def table(rows: list[dict]) -> list[str]:
    variants = list(dict.fromkeys(r["variant"] for r in rows))
    lines = ["| batch | " + " | ".join(variants) + " | ours constrained / best generate() |",
             "|---|" + "---:|" * (len(variants) + 1)]
    for b in sorted({r["batch"] for r in rows}):
        got = {r["variant"]: r["decode_tokens_per_s"] for r in rows if r["batch"] == b}
        gens = [v for k, v in got.items() if k.startswith("generate()")]
        ours = next((v for k, v in got.items() if k.startswith("ours constrained")), None)
        ratio = f"{ours / max(gens):.2f}x" if gens and ours else "n/a"
        lines.append(f"| {b} | " + " | ".join(f"{got.get(v, float('nan')):.1f}" for v in variants) + f" | {ratio} |")
    return lines


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--shape", default="25m", help="model shape (configs/model name or tiny)")
    ap.add_argument("--batches", type=int, nargs="+", default=[1, 8, 32])
    ap.add_argument("--new", type=int, default=128, help="new tokens per row")
    ap.add_argument("--reps", type=int, default=3, help="interleaved repetitions per batch (medians)")
    ap.add_argument("--threads", type=int, default=1, help="torch intra-op threads")
    ap.add_argument("--no-compile", action="store_true", help="skip the torch.compile rows")
    ap.add_argument("--image-size", type=int, default=256, help="side of the JPEG the prompt comes from")
    ap.add_argument("--write", default=None, metavar="MD", help="write the results as markdown (bench/results/generate.md)")
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)
    from jpeglm.tokenizer import ByteTokenizer

    tok = ByteTokenizer()
    prompt, codec = jpeg_prompt(args.image_size)
    model = random_llama(args.shape, tok.vocab_size)
    rows = [dict(r, compile=False) for r in measure(model, tok, codec, prompt, args.batches, args.new, args.reps)]
    if not args.no_compile:
        # ours: dynamic shapes (its cache grows, rows finish); generate() static: fixed shapes by design
        for variants, dyn in (((VARIANTS[0],), True), ((VARIANTS[2],), False)):
            m = compiled(model, dyn)
            rows += [dict(r, variant=r["variant"] + " + compile", compile=True)
                     for r in measure(m, tok, codec, prompt, args.batches, args.new, args.reps, variants)]
    lines = table(rows)
    print("\n".join(lines))
    if args.write:
        import transformers

        head = ["# Sampler vs generate() (bench/bench_generate.py)", "",
                (f"Machine: {platform.processor() or platform.machine()}, {args.threads} thread(s), torch {torch.__version__}, "
                f"transformers {transformers.__version__}. Random Llama, shape `{args.shape}`, byte vocabulary, fp32; "
                f"prompt = top 4/16 MCU rows of a {args.image_size}x{args.image_size} JPEG ({len(prompt)} bytes), "
                f"{args.new} new tokens per row, medians of {args.reps} interleaved runs; decode tokens/s "
                 "(a call's new tokens beyond a 1-token call's, per extra second: prefill excluded)."), "",
                f"Command: `python bench/bench_generate.py --write {args.write}`", ""]
        Path(args.write).write_text("\n".join(head + lines + ["", "Raw: `" + json.dumps(rows) + "`", ""]))
    return 0


if __name__ == "__main__":
    sys.exit(main())
