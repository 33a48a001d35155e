"""The grammar constraint's cost per generated token, over whole constrained 256x256 samples.

Constraint work = the CPU time (this thread's, `time.thread_time`: wall time would count the waits
on a loaded machine) the decode loop spends in constraint code (end steering checks, forced tokens,
the candidate checks or the masks, the grammar advance and the end test; counted by
`Batch.constraint_s`), divided by the tokens generated. Measured for the byte and a BPE-320
tokenizer, a random tiny Llama (the worst case: flat logits, so the noisy winner is often a token
the grammar refuses or outside the top-k) and the same shape briefly trained on real scans, both ways the
sampler can choose: the candidate path (the default: Gumbel noise, best allowed candidate) and the
whole mask (mask -> top-k -> sample, what the loop did before). Goal (issue 14): <= 50 us/token.

    python bench/bench_constraint.py --write bench/results/constraint.md   # quiet machine, ~15-25 min
    python bench/bench_constraint.py --quick                                 # smoke run, ~1 min
"""

from __future__ import annotations

import argparse
import hashlib
import platform
import time
from pathlib import Path

import numpy as np
import torch

from jpeglm.codecs.jpeg import JpegCodec, JpegParams
from jpeglm.sample import SamplerConfig
from jpeglm.sample.batch import Batch, Run
from jpeglm.sample.constrain import constraint_for
from jpeglm.sample.sampler import _prompt_jobs
from jpeglm.tokenizer import BpeTokenizer, ByteTokenizer


def photos():
    import skimage.data

    names = ["astronaut", "chelsea", "coffee", "rocket", "cat", "immunohistochemistry", "hubble_deep_field", "retina"]
    return [getattr(skimage.data, n)() for n in names if hasattr(skimage.data, n)]


def tiny_llama(vocab: int, ctx: int):
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    cfg = LlamaConfig(vocab_size=vocab, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                      num_attention_heads=4, num_key_value_heads=4, max_position_embeddings=ctx,
                      bos_token_id=1, eos_token_id=2, pad_token_id=3)
    return LlamaForCausalLM(cfg).eval()


def train_briefly(model, tok, streams: list[bytes], steps: int, seq: int = 256, batch: int = 8):
    """A few hundred AdamW steps on random windows of the real scans: enough for the logits to
    prefer grammatical bytes (loss well below uniform), which is what changes the constraint's cost."""
    ids = [torch.tensor(tok.encode(s, bos=True, eos=True)) for s in streams]
    rng = np.random.default_rng(0)
    opt = torch.optim.AdamW(model.parameters(), lr=3e-3)
    model.train()
    loss = None
    for _ in range(steps):
        rows = []
        for _ in range(batch):
            x = ids[int(rng.integers(len(ids)))]
            i = int(rng.integers(0, max(1, len(x) - seq - 1)))
            rows.append(x[i : i + seq + 1])
        n = min(len(r) for r in rows)
        x = torch.stack([r[:n] for r in rows])
        loss = model(input_ids=x, labels=x).loss
        opt.zero_grad()
        loss.backward()
        opt.step()
    model.eval()
    return float(loss) if loss is not None else float("nan")


class _MaskBatch(Batch):
    """The same loop choosing through whole masks (mask -> top-k -> multinomial)."""

    def _choose_candidates(self, logits):
        return self._choose_masked(logits)


def measure(model, tok, codec, n: int, budget: int, batch: int, mode: str) -> dict:
    cfg = SamplerConfig(max_new_tokens=budget, batch_size=batch, seed=0)
    vocab = int(model.config.vocab_size)
    constraint = constraint_for(codec, tok, vocab)
    jobs = _prompt_jobs(tok, codec, None, n, cfg, constraint)
    run = Run(model, tok, codec, cfg, "cpu", int(model.config.max_position_embeddings), constraint)
    cls = Batch if mode == "candidates" else _MaskBatch
    cs, ntok, strict, t = 0.0, 0, 0, time.perf_counter()
    ids = hashlib.sha256()  # fingerprint of every sample's tokens: a change to the sampling shows here
    with torch.inference_mode():
        for start in range(0, len(jobs), batch):
            b = cls(run, jobs[start : start + batch])
            samples = b.run()
            cs += b.constraint_s
            ntok += sum(s.n_new_tokens for s in samples)
            for s in samples:
                ids.update(np.asarray(s.new_token_ids, np.int64).tobytes() + b"|")
            strict += sum(codec.is_strictly_decodable(codec.to_file(s.symbols)) for s in samples)
    secs = time.perf_counter() - t
    return {"us_per_token": cs / max(ntok, 1) * 1e6, "tokens": ntok, "tok_s": ntok / secs, "strict": strict, "n": n,
            "ids_sha": ids.hexdigest()[:12]}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--quick", action="store_true", help="smoke run: 64x64, few tokens, few training steps")
    ap.add_argument("--num", type=int, default=4, help="samples per condition")
    ap.add_argument("--budget", type=int, default=3000, help="token budget per sample (steering finishes the picture)")
    ap.add_argument("--batch", type=int, default=4, help="batch size")
    ap.add_argument("--train-steps", type=int, default=300, help="training steps of the 'trained' model (0: skip it)")
    ap.add_argument("--threads", type=int, default=1, help="torch intra-op threads")
    ap.add_argument("--write", type=Path, default=None, help="write the results (markdown) here")
    ap.add_argument("--only", default=None,
                    help="comma-separated rows to run, each 'tokenizer:model:choice' with '*' for any "
                         "(e.g. 'bpe-320:random:candidates'); model is 'random' or 'trained'")
    ap.add_argument("--profile", type=Path, default=None, help="write a cProfile of the measured rows here")
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)
    size = 64 if args.quick else 256
    if args.quick:
        args.num, args.budget, args.batch, args.train_steps = 2, 300, 2, min(args.train_steps, 20)
    codec = JpegCodec(JpegParams(size=size))
    streams = [codec.encode(p) for p in photos()]
    toks = {"byte": ByteTokenizer(), "bpe-320": BpeTokenizer.train(streams, vocab_size=320)}
    only = [tuple(x.split(":")) for x in args.only.split(",")] if args.only else None

    def wanted(*row) -> bool:
        return only is None or any(all("*" in (w, v) or w == v.split(" ")[0] for w, v in zip(o, row)) for o in only)

    prof = None
    if args.profile:
        import cProfile

        prof = cProfile.Profile()
    ctx = args.budget + 1024  # header + budget
    rows = []
    for tname, tok in toks.items():
        if not wanted(tname, "*", "*"):
            continue
        models = [("random", tiny_llama(tok.vocab_size, ctx), None)]
        if args.train_steps and wanted(tname, "trained", "*"):
            m = tiny_llama(tok.vocab_size, ctx)
            loss = train_briefly(m, tok, streams, args.train_steps)
            models.append((f"trained {args.train_steps} steps", m, loss))
        for mname, model, loss in models:
            for mode in ("candidates", "mask"):
                if not wanted(tname, mname, mode):
                    continue
                if prof is not None:
                    prof.enable()
                r = measure(model, tok, codec, args.num, args.budget, args.batch, mode)
                if prof is not None:
                    prof.disable()
                r.update(tokenizer=tname, model=mname, mode=mode, loss=loss)
                rows.append(r)
                print({k: (round(v, 2) if isinstance(v, float) else v) for k, v in r.items()}, flush=True)

    cmd = "python bench/bench_constraint.py" + (" --quick" if args.quick else
                                                f" --num {args.num} --budget {args.budget} --batch {args.batch} --train-steps {args.train_steps}")
    lines = [
        "# Constraint cost per token (jpeglm/sample/pick.py, jpeglm/sample/constrain.py)",
        "",
        f"Machine: {platform.machine()} CPU, {args.threads} torch thread(s), no GPU. Command: `{cmd} --write bench/results/constraint.md`",
        "",
        (f"{args.num} unconditional constrained {size}x{size} samples per row (a JPEG each, end steering finishes it within "
        f"{args.budget} tokens), batch {args.batch}, top-k 50, T 1; tiny Llama (2 layers, hidden 64), random or trained "
        "briefly on the scans of a few photos. Constraint work = CPU time of the sampling thread "
        "(`time.thread_time`, not wall time: the machine may be shared) in constraint code / generated tokens "
        "(`Batch.constraint_s`). Goal: <= 50 us/token. `ids` fingerprints every sample's tokens (the same "
        "fingerprint: the same samples)."),
        "",
        "| tokenizer | model | choice | constraint us / token | tokens | tokens/s (whole loop) | strictly decodable | ids |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        model = r["model"] + (f" (loss {r['loss']:.2f})" if r["loss"] is not None else "")
        lines.append(f"| {r['tokenizer']} | {model} | {r['mode']} | {r['us_per_token']:.1f} | {r['tokens']} | "
                     f"{r['tok_s']:.0f} | {r['strict']}/{r['n']} | {r['ids_sha']} |")
    lines += [
        "",
        ("`candidates`: one Gumbel draw per row and step, the best allowed candidate in noisy order (top-k of the "
        "allowed tokens exact): the noisy winner by one check when it is allowed and in the top-k, else from the "
        "state's whole mask (JPEG: cached per grammar state, a new state's mask one numpy walk over the decoder "
        "tables, jpeglm/codecs/jpeg_tables.py); forced tokens without a draw; the default whenever top-p is off and "
        "T > 0. `mask`: "
        "the whole token mask per row and step (cached per grammar state), then top-k and a multinomial draw; kept "
        "for greedy decoding and top-p. Both sample the same distribution."),
    ]
    text = "\n".join(lines) + "\n"
    if prof is not None:
        prof.dump_stats(str(args.profile))
    print(text)
    if args.write:
        from jpeglm.config import atomic_write_text

        atomic_write_text(args.write, text)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
