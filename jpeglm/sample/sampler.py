"""The batched KV-cache sampler: prompts -> token ids -> symbols -> media (+ decode reports).

`generate(model, tokenizer, codec, prompts, num_samples, cfg, device)` runs its own decoding loop
over a plain `transformers.LlamaForCausalLM` (no `model.generate()`):

- Prefill: the batch's prompts left-padded, with an attention mask and position ids counted from
  each row's first real token, logits only for the last position (`logits_to_keep=1`).
- Steps: one token per row against a preallocated KV cache (`kv_cache.slab_cache`: one (B, H, capacity,
  D) slab per layer, sized for the longest row's prompt + budget, each step writes its column in
  place and attention reads a view of the filled part; `DynamicCache` re-copies the whole cache
  with `torch.cat` every step, the largest cost at batch 8 with long prompts). Rows that finish
  (EOS, or EOI for JPEG) are dropped from the batch and from the cache, so the batch only shrinks.
  When no row has padding the attention mask is left out (no mask to build or read); otherwise
  the mask is a view of one preallocated (B, capacity) tensor. On CPU the steps run a plain
  matmul-softmax-matmul attention for their single query (`kv_cache.register_decode_attention`; torch's
  fused SDPA kernel is slower there), the prefill keeps SDPA; the model's setting is restored.
- Sampling: constraint mask -> temperature -> top-k -> top-p (the order and semantics of HF's
  logits processors and warpers), then one draw per row from that row's own `torch.Generator`
  seeded with `cfg.seed + i` for global sample index i, so a sample depends on its seed only, not
  on the batch it ran in (up to float rounding differences between batch shapes).
- JPEG: the grammar constraint (jpeglm/sample/constrain.py) is on by default; its state starts at the end
  of the header and runs over the prompt's scan bytes first. Without a prompt the constrained
  sampler starts from the canonical header (fixed by the codec's settings). Rows near their
  token budget are steered to a complete file (see constrain.py).

- Classes (a model trained on `prep --labels` data): `classes` (class ids) gives `num_samples` samples
  of each class for each prompt, the class token right after BOS; without `classes` a labelled
  model samples from its null class (unconditionally). `cfg.cfg_scale` != 1 adds classifier-free
  guidance (guidance.py): every sample's unconditional twin row runs in the same forward pass.

Each finished sequence is decoded with `tokenizer.decode` -> symbols -> `codec.decode`.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch

from jpeglm.errors import UserError
from jpeglm.sample import guidance
from jpeglm.sample.batch import Batch, Run, filter_logits
from jpeglm.sample.budget import CacheTooLargeError, check_cache_fits, sampling_context
from jpeglm.sample.config import SamplerConfig
from jpeglm.sample.constrain import code_only_mask, constraint_for, token_bytes_table
from jpeglm.sample.kv_cache import decode_attention_on


class PromptTooLongError(UserError, ValueError):
    """A prompt that leaves no room to generate within the model's context."""


@dataclass
class Sample:
    symbols: Any  # bytes (jpeg/avc) or np.ndarray of codes (vq/pixel), prompt included
    media: Any  # uint8 HxWx3 (image) or TxHxWx3 (video)
    report: Any  # DecodeReport
    prompt_index: int | None  # index into `prompts`, None when unconditional
    seed: int
    n_prompt_tokens: int
    n_new_tokens: int
    seconds: float  # from the start of its batch to its last token
    finish: str = ""  # "eos", "eoi" (JPEG), "complete" (all codes of a vq/pixel picture), "max_new_tokens", "context", "stopped"
    steered: bool = False  # end steering forced its last bytes
    new_token_ids: list[int] | None = None  # the sampled ids (EOS not included)
    label: int | None = None  # the class sampled (class-conditional models), None: unconditional




@dataclass
class _Job:
    index: int  # global sample index
    prompt_index: int | None
    seed: int
    ids: list[int]  # prompt token ids (BOS first)
    state: Any = None  # grammar state at the end of the prompt
    max_new: int | None = None  # code codecs: the codes still missing from a whole picture
    label: int | None = None  # class id (class-conditional models)
    uncond_ids: list[int] | None = None  # guided sampling: the ids of the unconditional twin


def _prompt_jobs(tokenizer, codec, prompts, num_samples, cfg, constraint, classes=None) -> list[_Job]:
    jobs: list[_Job] = []
    total_codes = codec.symbols_per_item()  # code codecs: a picture ends after its last code
    sources = [(None, None)] if prompts is None else list(enumerate(prompts))
    i = 0
    for pi, symbols in sources:
        if symbols is None and constraint is not None:
            # constrained unconditional samples start from what every stream starts with (a JPEG
            # header), which the model would otherwise have to write
            symbols = codec.start_symbols()
        body = tokenizer.encode(symbols, bos=False, eos=False) if symbols is not None else []
        state = None
        if constraint is not None:
            data = bytes(symbols)
            try:
                hl = constraint.prompt_offset(data)
            except ValueError as e:
                raise ValueError(f"prompt {pi}: not a stream the grammar can start from ({e})") from e
            state = constraint.advance_bytes(constraint.start_state(), data[hl:])
            if constraint.is_complete(state):
                raise ValueError(f"prompt {pi}: already a complete image (prompt ratio 1?), nothing to generate")
        max_new = None
        if total_codes is not None:
            max_new = total_codes - (0 if symbols is None else len(symbols))
            if max_new < 1:
                raise ValueError(f"prompt {pi}: already a whole picture ({total_codes} codes), nothing to generate")
        for label in classes if classes is not None else [None]:
            ids = tokenizer.prefix(label) + body  # BOS (+ the class token of a class-conditional model)
            twin = guidance.unconditional_twin(ids, tokenizer) if cfg.cfg_scale != 1.0 else None
            for _ in range(num_samples):
                jobs.append(_Job(i, pi, cfg.seed + i, list(ids), state, max_new, label, twin))
                i += 1
    return jobs


def check_classes(tokenizer, classes, cfg_scale: float) -> list[int] | None:
    """The class ids to sample (None: unconditional), with clear errors for a model without classes."""
    if classes is not None:
        if not tokenizer.num_classes:
            raise ValueError("classes were asked for, but this model was trained without classes (no class tokens)")
        classes = [int(c) for c in classes]
        bad = [c for c in classes if not 0 <= c < tokenizer.num_classes]
        if bad or not classes:
            raise ValueError(f"class ids must lie in 0..{tokenizer.num_classes - 1}, got {bad or 'none'}")
    if cfg_scale != 1.0:
        if not tokenizer.num_classes:
            raise ValueError(f"cfg_scale={cfg_scale} needs a class-conditional model (trained on data prepared with "
                             "--labels); this one has no class tokens")
        if classes is None:
            raise ValueError(f"cfg_scale={cfg_scale} guides towards a class: name one (--class NAME, --classes all)")
    return classes


def _check_cache(model, jobs, cfg, ctx, device) -> None:
    """Refuse, before allocating, a batch whose KV cache cannot fit the device (the slabs batch.py
    allocates: the longest prompt + the largest budget, for each batch of jobs)."""
    worst = (0, 0)
    for start in range(0, len(jobs), cfg.batch_size):
        chunk = jobs[start : start + cfg.batch_size]
        longest = max(len(j.ids) for j in chunk)
        budget = max(min(cfg.max_new_tokens or ctx, ctx - len(j.ids)) for j in chunk)
        worst = max(worst, (len(chunk) * (longest + budget), len(chunk)))
    rows = worst[1]
    twins = 2 if cfg.cfg_scale != 1.0 else 1  # guidance runs an unconditional twin of every row
    check_cache_fits(model, rows * twins, worst[0] // rows, device, cfg.max_new_tokens, batch_size=rows)


@torch.inference_mode()
def generate(model, tokenizer, codec, prompts, num_samples: int, cfg: SamplerConfig | None = None, device="cpu",
             on_step=None, classes: list[int] | None = None) -> list[Sample]:
    """Sample `num_samples` completions of each prompt (symbols as `codec.encode` gives them, already
    cut with `codec.prompt`), or `num_samples` unconditional samples when `prompts` is None; with
    `classes` (class ids of a class-conditional model) `num_samples` of each class for each prompt.
    Returns the samples in order: prompt 0's samples first (class by class).

    `on_step(step: batch.Step)`, when given, is called after every decode step (a live preview, a
    progress bar); when it returns False the run stops there: the batch's unfinished samples come back
    as they are (`finish == "stopped"`) and later batches are not run."""
    cfg = cfg or SamplerConfig()
    if num_samples < 1:
        raise ValueError("num_samples must be >= 1")
    model.eval()
    vocab = int(model.config.vocab_size)
    if tokenizer.vocab_size > vocab:
        raise ValueError(f"the tokenizer has {tokenizer.vocab_size} tokens but the model only {vocab}: mismatched checkpoint")
    constraint = constraint_for(codec, tokenizer, vocab) if cfg.constrain else None
    code_mask = code_only_mask(tokenizer, codec, vocab) if cfg.constrain else None
    classes = check_classes(tokenizer, classes, cfg.cfg_scale)
    jobs = _prompt_jobs(tokenizer, codec, prompts, num_samples, cfg, constraint, classes)
    # the trained context, unless a budget is given or an item has a fixed length (a grid of codes)
    ctx = sampling_context(model, cfg.max_new_tokens, fixed_length=codec.symbols_per_item() is not None)
    for j in jobs:
        if len(j.ids) >= ctx:
            raise PromptTooLongError(
                f"prompt {j.prompt_index} is {len(j.ids)} tokens; the model's context is {ctx}: nothing left to generate"
            )
    stream_end = None  # unconstrained byte streams still stop at the codec's end marker (JPEG's EOI)
    if constraint is None and codec.stream_end:
        stream_end = (codec.stream_end, token_bytes_table(tokenizer, vocab))
    _check_cache(model, jobs, cfg, ctx, device)
    run = Run(model, tokenizer, codec, cfg, device, ctx, constraint, code_mask, stream_end, on_step=on_step,
              cfg_scale=cfg.cfg_scale)
    out: list[Sample] = []
    with decode_attention_on(model, device):
        for start in range(0, len(jobs), cfg.batch_size):
            out.extend(Batch(run, jobs[start : start + cfg.batch_size]).run())
            if run.stopped:
                break
    for s, j in zip(out, jobs):
        s.label = j.label
    return out


__all__ = ["SamplerConfig", "Sample", "check_classes", "generate", "filter_logits", "PromptTooLongError",
           "CacheTooLargeError"]
