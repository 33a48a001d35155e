"""Sampling speed and validity: our batched KV-cache sampler against `model.generate()`.

Measures, on random Llamas of the shapes in configs/model/{tiny,25m}.yaml (vocab of the byte
tokenizer; weights do not change the speed):
  1. new tokens/s at batch 1 and 8, ours vs HF generate() with the same settings (sampling,
     top-k 50, top-p 1, temperature 1, no constraint, same prompt, both running the whole token
     budget: min_new_tokens for generate(), an unreachable EOS for ours), interleaved runs, medians;
  2. images/min of complete constrained 64x64 JPEGs (unconditional);
  3. the JPEG constraint's cost per token (mask + advance), byte and BPE tokenizers;
  4. the strict-decode rate (Pillow, no LOAD_TRUNCATED_IMAGES) with and without the constraint.

    python bench/bench_sample.py [--quick] [--threads 1] [--reps 3] [--shapes tiny 25m] [--speed-only]

Run it on an idle machine for figures you compare; on the shared 2-core box they are noisy.
"""

from __future__ import annotations

import argparse
import random
import time

import torch

from jpeglm.codecs.jpeg import JpegCodec, JpegParams, header_length
from jpeglm.sample.constrain import constraint_for
from jpeglm.sample import SamplerConfig, generate
from jpeglm.tokenizer import BpeTokenizer, ByteTokenizer

SHAPES = {
    "tiny": dict(hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4),
    "25m": dict(hidden_size=384, intermediate_size=1280, num_hidden_layers=12, num_attention_heads=6),
}


def llama(shape: str, vocab: int):
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    cfg = LlamaConfig(vocab_size=vocab, max_position_embeddings=12288, bos_token_id=1, eos_token_id=2, pad_token_id=3, **SHAPES[shape])
    return LlamaForCausalLM(cfg).eval()


def photos():
    import skimage.data

    return [skimage.data.astronaut(), skimage.data.chelsea(), skimage.data.coffee(), skimage.data.rocket()]


class _NoEos:
    """The tokenizer with an EOS id no model samples: for the speed comparison every row of ours
    runs its whole budget, as generate() does with min_new_tokens = max_new_tokens."""

    def __init__(self, tok):
        self._tok = tok
        self.eos_id = 1 << 30

    def __getattr__(self, name):
        return getattr(self._tok, name)


def speed(model, tok, prompt: bytes, batch: int, new: int, reps: int = 3) -> tuple[float, float, float]:
    """`reps` interleaved pairs of runs (ours, then generate()) on the shared machine: the median
    tokens/s of each and the median of the per-pair speed-ups."""
    import statistics

    runs = [_speed_once(model, tok, prompt, batch, new) for _ in range(reps)]
    return (statistics.median(r[0] for r in runs), statistics.median(r[1] for r in runs),
            statistics.median(r[0] / r[1] for r in runs))


def _speed_once(model, tok, prompt: bytes, batch: int, new: int) -> tuple[float, float]:
    """Both make `batch` x `new` tokens from the same prompt with top-k 50, top-p 1, T 1, sampling,
    the model as it is (dtype, attention setting) and each its own cache defaults."""
    codec = JpegCodec()
    cfg = SamplerConfig(max_new_tokens=new, batch_size=batch, constrain=False)
    t = time.perf_counter()
    samples = generate(model, _NoEos(tok), codec, [prompt], batch, cfg)
    secs = time.perf_counter() - t
    ours_new = sum(s.n_new_tokens for s in samples)
    ids = torch.tensor([tok.encode(prompt, bos=True, eos=False)] * batch)
    t = time.perf_counter()
    with torch.inference_mode():
        out = model.generate(ids, attention_mask=torch.ones_like(ids), do_sample=True, top_k=50, top_p=1.0,
                             temperature=1.0, max_new_tokens=new, min_new_tokens=new,
                             eos_token_id=tok.eos_id, pad_token_id=tok.pad_id)
    ref_secs = time.perf_counter() - t
    gen_new = int(out.shape[0] * (out.shape[1] - ids.shape[1]))
    # ours can only stop early on a sampled FF D9 (EOI), rare on random weights: say so when it does
    if ours_new != gen_new:
        print(f"  (note: ours made {ours_new} tokens, generate() {gen_new})")
    return ours_new / secs, gen_new / ref_secs


def constraint_cost(codec, tok, data: bytes, steps: int) -> float:
    """Microseconds per token for mask + advance along a random constrained walk."""
    c = constraint_for(codec, tok)
    rng = random.Random(0)
    hl = header_length(data)
    st = c.advance_bytes(c.start_state(), codec.prompt(data, 0.25)[hl:])
    start = st
    t = time.perf_counter()
    for _ in range(steps):
        m = c.mask(st)
        if c.is_complete(st):
            st = start
            continue
        allowed = torch.nonzero(m).flatten().tolist()
        st = c.advance(st, rng.choice(allowed))
    return (time.perf_counter() - t) / steps * 1e6


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="fewer tokens and samples (a smoke run)")
    ap.add_argument("--threads", type=int, default=1, help="torch intra-op threads (1: fair on a shared machine)")
    ap.add_argument("--reps", type=int, default=3, help="interleaved ours/generate() run pairs per setting (medians reported)")
    ap.add_argument("--shapes", nargs="+", default=["tiny", "25m"], choices=sorted(SHAPES), help="model shapes to time")
    ap.add_argument("--speed-only", action="store_true", help="only the tokens/s comparison with generate()")
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)
    new = 64 if args.quick else 256
    byte = ByteTokenizer()
    canonical = JpegCodec()
    streams = [canonical.encode(p) for p in photos()]
    prompt = canonical.prompt(streams[0], 0.25)  # 4 of 16 MCU rows: the prefill is realistic

    print(f"threads={args.threads}  prompt={len(prompt)} bytes  new tokens per sample={new}")
    print("\n| model | batch | ours tok/s | generate() tok/s | speed-up (median of pairs) |\n|---|---|---|---|---|")
    for shape in args.shapes:
        model = llama(shape, byte.vocab_size)
        speed(model, byte, prompt, 1, 8, reps=1)  # warm-up
        for batch in (1, 8):
            ours, ref, ratio = speed(model, byte, prompt, batch, new, args.reps)
            print(f"| {shape} | {batch} | {ours:.0f} | {ref:.0f} | {ratio:.2f}x |", flush=True)
    if args.speed_only:
        return

    small = JpegCodec(JpegParams(size=64))
    bpe = BpeTokenizer.train(streams, vocab_size=320)
    print("\n| tokenizer | grammar | constraint cost per token (us) |\n|---|---|---|")
    for name, tok in (("byte", byte), ("bpe-320", bpe)):
        for codec_name, codec in (("256x256", canonical), ("64x64", small)):
            us = constraint_cost(codec, tok, codec.encode(photos()[1]), 500 if args.quick else 3000)
            print(f"| {name} | {codec_name} | {us:.0f} |", flush=True)

    n = 4 if args.quick else 16
    print(f"\n| model | constrain | images | strict-decodable | images/min | mean new tokens |\n|---|---|---|---|---|---|")
    for shape in ("tiny", "25m"):
        model = llama(shape, byte.vocab_size)
        for constrain in (True, False):
            cfg = SamplerConfig(max_new_tokens=400, batch_size=8, constrain=constrain, seed=0)
            prompts = None if constrain else [small.header()]  # both start after the header
            t = time.perf_counter()
            samples = generate(model, byte, small, prompts, n, cfg)
            secs = time.perf_counter() - t
            ok = sum(small.is_strictly_decodable(small.to_file(s.symbols)) for s in samples)
            mean_new = sum(s.n_new_tokens for s in samples) / len(samples)
            print(f"| {shape} | {constrain} | {len(samples)} | {ok}/{len(samples)} | {len(samples) / secs * 60:.1f} | {mean_new:.0f} |", flush=True)


if __name__ == "__main__":
    main()
