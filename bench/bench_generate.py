"""Tokens/s of our sampler against `transformers` generate() at its strongest (issue 14.2), on this CPU.

    python bench/bench_generate.py --write bench/results/generate.md   # the full table (23 min beside other jobs, load ~4)
    python bench/bench_generate.py --shape tiny --batches 1 2 --new 8 --reps 1 --no-compile   # smoke run

One random Llama of the 25M shape (configs/model/25m.yaml; byte vocabulary, 276; weights do not change the
speed), one intra-op thread, fp32, sampling with top-k 50, top-p 1, T 1, the prompt = the top 4/16 MCU
rows of a canonical 256x256 JPEG of an astronaut (bytes -> byte tokens). At batch 1 / 8 / 32:
  ours (constraint on)   jpeglm.sample.generate with the JPEG grammar, every row running the whole
                         budget (an EOS the model cannot sample; the grammar keeps EOI out of reach)
  ours (constraint off)  the same, unconstrained
  generate() static      cache_implementation="static", min_new_tokens = max_new_tokens
  generate() dynamic     its default DynamicCache
each without and (unless --no-compile) with `torch.compile` of the decode step's forward (ours and
generate() dynamic: automatic dynamic shapes, as the cache grows and the batch changes; generate()
static: transformers' own compiled decode step, fixed shapes). Compiling is left out of the timings:
short untimed warm-up calls before each batch compile what the timed calls run, and the graphs Dynamo
compiles during the timed calls are counted (0 in a sound run: no recompiles per step). Runs of one
batch are interleaved, medians over `--reps`; batches >= `--large-from` (32) run `--new-large` tokens
`--reps-large` times (generate()'s prefill of 32 x 1.5k tokens alone takes ~1 min here).
Decode rate: the new tokens of a call's decode steps over their time, timed inside that call (ours:
its `on_step` hook; generate(): a logits processor), so the prefill is excluded without a second
call; end to end: all new tokens over the whole call.
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


class StepClock:
    """Timestamps of the decode steps inside one call: ours ticks in its `on_step` hook (after each
    token is chosen), generate() in a logits processor (before each token is chosen). Both tick once per
    new token, so from the first tick to the last lie new - 1 steps of every row: the decode alone, the
    prefill (and the first token, which comes from the prefill's logits) before it."""

    def __init__(self, device="cpu"):
        self.device, self.ticks = device, []

    def tick(self) -> None:
        _sync(self.device)
        self.ticks.append(time.perf_counter())

    def __call__(self, *args):  # as an `on_step` hook: None lets the run go on; as a logits processor: the scores
        self.tick()
        return args[-1] if len(args) == 2 else None

    def result(self, start: float, end: float, rows: int, new_tokens: int) -> dict:
        """One call's figures: the whole call, and its decode steps (first tick -> last tick)."""
        decode_s = self.ticks[-1] - self.ticks[0] if len(self.ticks) > 1 else float("nan")
        return {"call_s": end - start, "new_tokens": new_tokens, "decode_s": decode_s,
                "decode_tokens": new_tokens - rows if len(self.ticks) > 1 else 0}


def call_ours(model, tok, codec, prompt, batch: int, new: int, constrain: bool, device="cpu") -> dict:
    """One call of jpeglm's sampler (see StepClock.result)."""
    from jpeglm.sample import SamplerConfig, generate

    cfg = SamplerConfig(max_new_tokens=new, batch_size=batch, constrain=constrain, steer=False)
    clock = StepClock(device)
    _sync(device)
    t = time.perf_counter()
    samples = generate(model, NoEos(tok), codec, [prompt], batch, cfg, device, on_step=clock)
    _sync(device)
    return clock.result(t, time.perf_counter(), batch, sum(s.n_new_tokens for s in samples))


def generate_kwargs(cache: str, compile_: bool = False) -> dict:
    """generate()'s cache settings. Static + compile is transformers' own path: with a static cache
    generate() compiles the decode step's forward (`get_compiled_call`, the prefill stays eager) on
    GPUs, and on any device with `CompileConfig._compile_all_devices` (the flag transformers sets for
    this on CPU). Its `dynamic=False`: the fixed shapes of the static cache."""
    if cache == "dynamic":
        return {}
    if not compile_:
        return {"cache_implementation": "static", "disable_compile": True}
    from transformers import CompileConfig

    cc = CompileConfig(dynamic=False, fullgraph=True, mode="default")
    cc._compile_all_devices = True
    return {"cache_implementation": "static", "compile_config": cc}


def call_generate(model, tok, prompt, batch: int, new: int, cache: str, device="cpu", compile_: bool = False,
                  cache_len: int | None = None) -> dict:
    """One generate() call (see StepClock.result); cache is 'static' or 'dynamic'. A static cache holds
    the prompt + new - 1 positions generate() sizes it to, or `cache_len` (a warm-up with a short prompt
    compiles the timed call's shapes)."""
    from transformers import LogitsProcessorList

    ids = torch.tensor([tok.encode(prompt, bos=True, eos=False)] * batch, device=device)
    kw = generate_kwargs(cache, compile_)
    if cache == "static":
        kw["max_cache_len"] = cache_len or ids.shape[1] + new - 1
        # generate() keeps its static caches as long as the longest call's so far: size each call to its own
        model.__dict__.pop("_previous_max_cache_length", None)
    clock = StepClock(device)
    _sync(device)
    t = time.perf_counter()
    with torch.inference_mode():
        out = model.generate(ids, attention_mask=torch.ones_like(ids), do_sample=True, top_k=50, top_p=1.0,
                             temperature=1.0, max_new_tokens=new, min_new_tokens=new, eos_token_id=tok.eos_id,
                             pad_token_id=tok.pad_id, logits_processor=LogitsProcessorList([clock]),
                             **kw)
    _sync(device)
    return clock.result(t, time.perf_counter(), batch, int(out.shape[0] * (out.shape[1] - ids.shape[1])))


VARIANTS = ("ours constrained", "ours unconstrained", "generate() static", "generate() dynamic")
COMPILE = " + compile"


def call_variant(variant: str, model, tok, codec, prompt, batch: int, new: int, device="cpu", warm_up: int = 0) -> dict:
    """One call of a variant; a name ending in COMPILE takes the model from `compiled_models`. `warm_up`
    > 0: a short call of that many new tokens that compiles what the timed call of `new` tokens runs
    (generate(): 16 prompt tokens, its static cache sized for the whole prompt + `new`; ours: the whole
    prompt, prefilled once for the batch)."""
    compile_ = variant.endswith(COMPILE)
    base = variant.removesuffix(COMPILE)
    if base.startswith("ours"):
        m = compiled_models(model)["ours"] if compile_ else model
        return call_ours(m, tok, codec, prompt, batch, warm_up or new, base == "ours constrained", device)
    cache = base.split()[-1]
    m = compiled_models(model)[cache] if compile_ else model
    if warm_up:
        return call_generate(m, tok, prompt[:15], batch, warm_up, cache, device, compile_, cache_len=len(prompt) + new)
    return call_generate(m, tok, prompt, batch, new, cache, device, compile_)


def run_variant(variant: str, model, tok, codec, prompt, batch: int, new: int, device="cpu") -> tuple[float, int]:
    """Seconds and new tokens of one whole call (bench/gpu/bench.py times these)."""
    r = call_variant(variant, model, tok, codec, prompt, batch, new, device)
    return r["call_s"], r["new_tokens"]


def decode_compiled(model, dynamic=None):
    """A shallow copy of `model` (the weights are shared) whose single-token forward calls (the decode
    steps) run through torch.compile; longer ones (the prefill) stay eager, as in generate()'s own
    compile path. dynamic=None: torch's automatic dynamic shapes (the cache grows every step: one
    recompile marks its length dynamic)."""
    import copy

    m = copy.copy(model)
    fast = torch.compile(model.forward, dynamic=dynamic)

    def forward(*args, **kw):
        ids = kw.get("input_ids", args[0] if args else None)
        return fast(*args, **kw) if ids is not None and ids.shape[-1] == 1 else model.forward(*args, **kw)

    m.forward = forward
    return m


_COMPILED: dict = {}


def compiled_models(model) -> dict:
    """The compiled wrappers of `model`, made once: ours (its decode step), generate() dynamic (the
    same), generate() static (a copy, so that transformers' compiled call it caches on the model
    stays off the eager variants)."""
    import copy

    if id(model) not in _COMPILED:
        _COMPILED[id(model)] = {"ours": decode_compiled(model), "dynamic": decode_compiled(model),
                                "static": copy.copy(model)}
    return _COMPILED[id(model)]


def dynamo_counts() -> dict:
    """Dynamo's running totals: graphs compiled (each recompile is one) and graph breaks."""
    from torch._dynamo.utils import counters

    return {"graphs": int(counters["stats"]["unique_graphs"]), "breaks": int(sum(counters["graph_break"].values()))}


def measure(model, tok, codec, prompt, plan, variants, device="cpu", log=print, done=None) -> list[dict]:
    """For each (batch, new tokens, reps) of `plan` and each variant: medians over `reps` interleaved
    calls of the whole call's new tokens/s (prefill included) and of the decode rate (StepClock).
    Untimed first: at the first batch a short call of each eager variant (one-time costs); before
    every batch short warm-up calls of the compiled variants (`call_variant(warm_up=4)`, then 6:
    two budgets so the cache's length is a dynamic dimension from the start) that compile what the timed
    calls run. Graphs compiled during the timed calls are counted per variant (`recompiles`: should
    be 0). `done(rows)` is called after each batch (the results so far)."""
    rows = []
    for i, (b, new, reps) in enumerate(plan):
        whole, decode, recompiles = ({v: [] for v in variants} for _ in range(3))
        for v in variants:
            t = time.perf_counter()
            if v.endswith(COMPILE):
                for n in (4, 6):  # two budgets: ours' slab capacity is dynamic from then on
                    call_variant(v, model, tok, codec, prompt, b, new, device, warm_up=n)
            elif i == 0:  # one-time costs (allocations, first calls)
                call_variant(v, model, tok, codec, prompt, b, new, device, warm_up=4)
            log(f"batch {b}: warm-up {v}: {time.perf_counter() - t:.1f} s, dynamo {dynamo_counts()}")
        for _ in range(reps):
            for v in variants:
                before = dynamo_counts()["graphs"]
                r = call_variant(v, model, tok, codec, prompt, b, new, device)
                recompiles[v].append(dynamo_counts()["graphs"] - before)
                whole[v].append(r["new_tokens"] / r["call_s"])
                decode[v].append(r["decode_tokens"] / r["decode_s"] if r["decode_tokens"] else float("nan"))
        for v in variants:
            base = v.removesuffix(COMPILE)
            rows.append({"batch": b, "new": new, "reps": reps, "variant": base, "compile": v.endswith(COMPILE),
                         "decode_tokens_per_s": statistics.median(decode[v]), "tokens_per_s": statistics.median(whole[v]),
                         "decode_runs": decode[v], "runs": whole[v], "recompiles": sum(recompiles[v])})
            log(json.dumps(rows[-1]))
        if done is not None:
            done(rows)
    return rows


def table(rows: list[dict], key: str = "decode_tokens_per_s") -> list[str]:
    """Rows: batch x (eager, compile); columns: the variants, then ours constrained over the best
    generate() at that batch (eager or compiled, whichever is faster)."""
    variants = list(dict.fromkeys(r["variant"] for r in rows))
    lines = ["| batch | new | torch.compile | " + " | ".join(variants) + " | ours constrained / best generate() |",
             "|---:|---:|---|" + "---:|" * (len(variants) + 1)]
    for b in sorted({r["batch"] for r in rows}):
        at = [r for r in rows if r["batch"] == b]
        best = max((r[key] for r in at if r["variant"].startswith("generate()")), default=None)
        for comp in sorted({r["compile"] for r in at}):
            got = {r["variant"]: r[key] for r in at if r["compile"] == comp}
            ours = got.get("ours constrained")
            ratio = f"{ours / best:.2f}x" if best and ours else "n/a"
            new = next(r["new"] for r in at)
            lines.append(f"| {b} | {new} | {'yes' if comp else 'no'} | "
                         + " | ".join(f"{got.get(v, float('nan')):.1f}" for v in variants) + f" | {ratio} |")
    return lines


def summary(rows: list[dict], batch: int = 8) -> str:
    """The issue's figure: ours constrained against the best generate() configuration at `batch`."""
    at = [r for r in rows if r["batch"] == batch]
    if not at:
        return ""
    out = []
    for key, what in (("tokens_per_s", "end to end (prefill included)"), ("decode_tokens_per_s", "decode-only")):
        gen = max((r for r in at if r["variant"].startswith("generate()")), key=lambda r: r[key])
        ours = max((r for r in at if r["variant"] == "ours constrained"), key=lambda r: r[key])
        name = lambda r: r["variant"] + (" + compile" if r["compile"] else "")
        out.append(f"{what}: {name(ours)} {ours[key]:.1f} tokens/s vs {name(gen)} {gen[key]:.1f}, "
                   f"{ours[key] / gen[key]:.2f}x")
    return f"At batch {batch} (goal 1.5x): " + "; ".join(out) + "."


def compile_note(rows: list[dict]) -> str:
    comp = [r for r in rows if r["compile"]]
    if not comp:
        return ""
    n = sum(r["recompiles"] for r in comp)
    return (f"torch.compile: graphs compiled during the timed calls (after the untimed warm-ups "
            f"of each batch): {n}" + (" (0: no recompiles per step)" if n == 0 else
            " (" + ", ".join(f"{r['variant']} batch {r['batch']}: {r['recompiles']}" for r in comp if r["recompiles"]) + ")")
            + ".")


def plan(batches, new: int, reps: int, large_from: int, new_large: int, reps_large: int) -> list[tuple[int, int, int]]:
    """(batch, new tokens, reps) per batch: batches >= large_from run new_large tokens, reps_large times."""
    return [(b, new_large, reps_large) if b >= large_from else (b, new, reps) for b in batches]


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--shape", default="25m", help="model shape (configs/model name or tiny)")
    ap.add_argument("--batches", type=int, nargs="+", default=[1, 8, 32])
    ap.add_argument("--new", type=int, default=128, help="new tokens per row")
    ap.add_argument("--reps", type=int, default=3, help="interleaved repetitions per batch (medians)")
    ap.add_argument("--large-from", type=int, default=32, help="batches from this size on use --new-large / --reps-large")
    ap.add_argument("--new-large", type=int, default=32, help="new tokens per row at the large batches")
    ap.add_argument("--reps-large", type=int, default=1, help="repetitions at the large batches")
    ap.add_argument("--threads", type=int, default=1, help="torch intra-op threads")
    ap.add_argument("--no-compile", action="store_true", help="skip the torch.compile rows")
    ap.add_argument("--image-size", type=int, default=256, help="side of the JPEG the prompt comes from")
    ap.add_argument("--write", default=None, metavar="MD", help="write the results as markdown (bench/results/generate.md)")
    ap.add_argument("--rows-from", default=None, metavar="MD", help="keep the rows of the other batches from this "
                    "earlier --write (complete a table one batch at a time)")
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)
    torch._dynamo.config.recompile_limit = 64  # the compiled wrappers share forward's code object
    from jpeglm.tokenizer import ByteTokenizer

    t0 = time.perf_counter()
    tok = ByteTokenizer()
    prompt, codec = jpeg_prompt(args.image_size)
    model = random_llama(args.shape, tok.vocab_size)
    variants = list(VARIANTS) + ([] if args.no_compile else [v + COMPILE for v in VARIANTS])
    todo = plan(args.batches, args.new, args.reps, args.large_from, args.new_large, args.reps_large)

    def report(rows: list[dict]) -> None:
        minutes = (time.perf_counter() - t0) / 60
        rows = earlier + rows
        lines = ["Decode tokens/s (prefill excluded):", ""] + table(rows) \
            + ["", "End to end tokens/s (new tokens / whole call, prefill included):", ""] + table(rows, "tokens_per_s")
        notes = [x for x in (summary(rows), compile_note(rows)) if x]
        print("\n".join(lines + [""] + notes), flush=True)
        if not args.write:
            return
        import transformers

        sizes = ", ".join(f"batch {b}: {n} new tokens per row, {r} run(s)" for b, n, r in
                          sorted({(r["batch"], r["new"], r["reps"]) for r in rows} | set(todo)))
        missing = sorted(set(args.batches) - {r["batch"] for r in rows})
        head = ["# Sampler vs generate() (bench/bench_generate.py)", "",
                (f"Machine: {platform.processor() or platform.machine()}, {args.threads} thread(s), torch {torch.__version__}, "
                 f"transformers {transformers.__version__}. Random Llama, shape `{args.shape}`, byte vocabulary, fp32, "
                 f"sampling with top-k 50; prompt = top 4/16 MCU rows of a {args.image_size}x{args.image_size} JPEG "
                 f"({len(prompt)} bytes); {sizes} (medians; the variants interleaved). Decode tokens/s = the tokens of "
                 "a call's decode steps over their time, timed inside the call (ours: its `on_step` hook; generate(): "
                 "a logits processor): from the first new token to the last. End to end = all new tokens over the "
                 "whole call, prefill included (ours prefills a prompt shared by the batch once; generate() once per row). "
                 "torch.compile: the single-token forward of the decode steps (ours, generate() dynamic: "
                 "`torch.compile(model.forward)`, automatic dynamic shapes; generate() static: transformers' own "
                 "compiled decode step, `compile_config`), compiled by short untimed warm-up calls before each batch; "
                 "a short untimed call of every eager variant first."), "",
                f"Command: `OMP_NUM_THREADS=1 python bench/bench_generate.py {' '.join(sys.argv[1:] if argv is None else argv)}` "
                + (f"(batches {sorted({r['batch'] for r in earlier})} from the earlier run of `--rows-from`) " if earlier else "")
                + f"({time.strftime('%Y-%m-%d')}, {minutes:.1f} min"
                + (f"; batches {missing} not reached yet" if missing else "") + ")", ""]
        Path(args.write).write_text("\n".join(head + notes + [""] + lines + ["", "Raw: `" + json.dumps(rows) + "`", ""]))

    earlier = []  # --rows-from: an earlier run's rows of the batches this run does not measure
    if args.rows_from:
        text = Path(args.rows_from).read_text()
        earlier = [r for r in json.loads(text[text.index("Raw: `") + 6 :].split("`")[0]) if r["batch"] not in args.batches]
    measure(model, tok, codec, prompt, todo, variants, done=report)
    return 0


if __name__ == "__main__":
    sys.exit(main())
