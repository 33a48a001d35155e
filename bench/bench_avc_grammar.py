"""Decodable-frame rate of sampled H.264 clips with and without the NAL-unit grammar constraint.

A tiny Llama is trained for a few steps on byte tokens of a few canonical clips (the pipeline of
tests/test_pipeline.py: `jpeglm prep --codec avc` on written videos, then `jpeglm.train.loop.train`),
then N clips are sampled from the first 3 frames of the built-in clip, three ways: unconstrained,
constrained (NAL grammar, end steering on: missing frames become x264 all-skip slices), and
constrained without steering. Reported: FFmpeg's decoded frames / 15 (and how many of them were
flagged corrupt, i.e. concealed), NAL structure validity (an independent check), tokens/s.

    python bench/bench_avc_grammar.py --num 8 --max-new-tokens 3000 --out bench/results/avc_grammar.md

"""

from __future__ import annotations

import argparse
import json
import platform
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from jpeglm.codecs.avc import NAL_IDR, NAL_SLICE, AvcCodec, split_nals  # noqa: E402


def nal_structure_ok(data: bytes, frames: int = 15) -> bool:
    """Independent of the grammar: `frames` units, IDR then non-IDR slices, no forbidden 3-byte
    sequences in any payload, no payload ending in 00."""
    units = split_nals(data)
    if [t for *_, t in units] != [NAL_IDR] + [NAL_SLICE] * (frames - 1):
        return False
    for s, e, _t in units:
        payload = data[data.find(b"\x00\x00\x01", s) + 4 : e]
        if not payload or payload[-1] == 0 or any(x in payload for x in (b"\x00\x00\x00", b"\x00\x00\x01", b"\x00\x00\x02")):
            return False
    return True


def train_tiny(work: Path, steps: int) -> Path:
    from jpeglm.cli import main as cli
    from jpeglm.config import load_config
    from jpeglm.train.loop import train
    from jpeglm.train.config import TrainConfig
    from jpeglm.video import builtin_clip, write_video

    videos = work / "videos"
    videos.mkdir()
    clip = builtin_clip(frames=30)
    for i, c in enumerate([clip, clip[::-1].copy(), clip[:, :, ::-1].copy(), clip[:, ::-1].copy()]):
        write_video(c, videos / f"v{i}.mp4", fps=10)
    assert cli(["prep", "--codec", "avc", "--input", str(videos), "--out", str(work / "data"), "--val-fraction", "0", "--no-progress"]) == 0
    cfg = load_config(TrainConfig, None, [
        "model=tiny", "data.seq_len=512", "optim.micro_batch=4", "optim.warmup_steps=2", "eval.interval=0",
        "log_interval=10", "precision=fp32", "deepspeed=zero1", f"max_steps={steps}", f"ckpt_interval={steps}"])
    train(cfg, work / "data", work / "run")
    return work / "run"


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--num", type=int, default=8, help="clips sampled per condition")
    ap.add_argument("--max-new-tokens", type=int, default=3000, help="token budget per clip after the prompt")
    ap.add_argument("--train-steps", type=int, default=40, help="training steps of the tiny model")
    ap.add_argument("--prompt-frames", type=int, default=3, help="frames of the built-in clip used as the prompt")
    ap.add_argument("--out", type=Path, default=None, help="write the results table (markdown) here")
    args = ap.parse_args(argv)
    torch.set_num_threads(1)

    from jpeglm.checkpoint import load_for_inference
    from jpeglm.codecs.avc_grammar import grammar_for
    from jpeglm.sample.constrain import constraint_for
    from jpeglm.sample import SamplerConfig, generate
    from jpeglm.video import builtin_clip

    codec = AvcCodec()
    with tempfile.TemporaryDirectory() as tmp:
        t0 = time.perf_counter()
        run = train_tiny(Path(tmp), args.train_steps)
        train_s = time.perf_counter() - t0
        loaded = load_for_inference(run)
        model, tok = loaded.model, loaded.tokenizer
        prompt = codec.prompt_frames(codec.encode(builtin_clip()), args.prompt_frames)
        rows = []
        for name, constrain, steer in [("unconstrained", False, False), ("NAL grammar + steering", True, True),
                                       ("NAL grammar, no steering", True, False)]:
            cfg = SamplerConfig(constrain=constrain, steer=steer, max_new_tokens=args.max_new_tokens, seed=0, batch_size=args.num)
            t = time.perf_counter()
            samples = generate(model, tok, codec, [prompt], args.num, cfg)
            secs = time.perf_counter() - t
            dec = [s.report.details["decoded_frames"] for s in samples]
            bad = [s.report.details["corrupt_frames"] for s in samples]
            ntok = sum(s.n_new_tokens for s in samples)
            rows.append({
                "condition": name,
                "decoded_frames": float(np.mean([min(d, 15) / 15 for d in dec])),
                "clean_frames": float(np.mean([max(0, min(d, 15) - b) / 15 for d, b in zip(dec, bad)])),
                "structure_ok": sum(nal_structure_ok(bytes(s.symbols)) for s in samples) / len(samples),
                "units": float(np.mean([len(split_nals(bytes(s.symbols))) for s in samples])),
                "steered": sum(s.steered for s in samples),
                "tokens_per_s": ntok / secs,
                "new_tokens": ntok / len(samples),
            })
            print(json.dumps(rows[-1]), flush=True)
        # grammar-only cost: one mask + advance per byte over a real stream (byte tokenizer)
        c = constraint_for(codec, tok, int(model.config.vocab_size))
        data = codec.encode(builtin_clip())
        ids = tok.encode(data, bos=False, eos=False)
        st, t = c.start_state(), time.perf_counter()
        for i in ids:
            c.mask(st)
            st = c.advance(st, i)
        us_per_tok = (time.perf_counter() - t) / len(ids) * 1e6
        grammar_build_s = (lambda t1: (grammar_for.cache_clear(), grammar_for(codec.params), time.perf_counter() - t1)[2])(time.perf_counter())

    lines = [
        "# H.264 NAL-unit grammar constraint: decodable-frame rate",
        "",
        f"Machine: {platform.machine()} CPU, 2 shared cores, 1 torch thread, no GPU. Short run (shared CPU).",
        f"Command: `python bench/bench_avc_grammar.py --num {args.num} --max-new-tokens {args.max_new_tokens} "
        f"--train-steps {args.train_steps} --prompt-frames {args.prompt_frames}`",
        "",
        f"Model: tiny Llama (2 layers, hidden 64, byte tokens) trained {args.train_steps} steps on 4 variants of the "
        f"built-in clip ({train_s:.0f} s incl. prep). Prompt: first {args.prompt_frames} frames of the built-in clip "
        f"({len(prompt)} bytes); {args.num} samples per condition, top-k 50, T=1, budget {args.max_new_tokens} tokens.",
        "",
        "| condition | decoded frames / 15 | of them not flagged corrupt | NAL structure valid | NAL units (mean) | steered | new tokens / clip | tokens/s (batch) |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        lines.append(f"| {r['condition']} | {r['decoded_frames']:.2f} | {r['clean_frames']:.2f} | {r['structure_ok']:.2f} | "
                     f"{r['units']:.1f} | {r['steered']}/{args.num} | {r['new_tokens']:.0f} | {r['tokens_per_s']:.0f} |")
    lines += [
        "",
        f"Grammar cost alone: {us_per_tok:.1f} us per token (mask + advance, byte tokens, cached per state) over a real "
        f"{len(data)}-byte stream; building the grammar (parse SPS/PPS, encode a blank clip): {grammar_build_s * 1e3:.0f} ms.",
        "",
        "Reading: the grammar guarantees NAL structure (15 slices, start codes, NAL types, slice-header prefix, "
        "emulation prevention), not decodable slice data. Frames FFmpeg outputs from a broken slice are concealed "
        "(flagged corrupt); with steering, frames the budget did not reach are x264 all-skip slices (repeat the last frame). The tiny model here is barely trained (final loss ~5.5 nats/byte, near uniform ln 256 = 5.55): it never writes a start code by itself, so these figures show what the grammar and steering guarantee, not what a trained AVC-LM gains.",
    ]
    text = "\n".join(lines) + "\n"
    print(text)
    if args.out:
        from jpeglm.config import atomic_write_text

        atomic_write_text(args.out, text)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
