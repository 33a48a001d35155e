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

Each finished sequence is decoded with `tokenizer.decode` -> symbols -> `codec.decode`.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any

import torch

from jpeglm.sample.constrain import TokenConstraint, code_only_mask, constraint_for
from jpeglm.sample.kv_cache import decode_attention_on, slab_cache

NEG_INF = float("-inf")


class PromptTooLongError(ValueError):
    """A prompt that leaves no room to generate within the model's context."""


@dataclass
class SamplerConfig:
    """Sampling settings. Defaults are those of the JPEG-LM release."""

    temperature: float = 1.0  # 0 means greedy
    top_k: int = 50  # 0 disables top-k
    top_p: float = 1.0  # 1.0 disables nucleus sampling
    max_new_tokens: int | None = None  # None: the model's context minus the prompt
    seed: int = 0  # sample i uses seed + i
    batch_size: int = 8
    constrain: bool = True  # JPEG grammar constraint (code-token-only mask for vq/pixel)
    steer: bool = True  # steer rows near max_new_tokens to a complete file (constrained JPEG only)

    def __post_init__(self):
        if self.temperature < 0:
            raise ValueError(f"temperature must be >= 0, got {self.temperature}")
        if self.top_k < 0:
            raise ValueError(f"top_k must be >= 0, got {self.top_k}")
        if not 0.0 < self.top_p <= 1.0:
            raise ValueError(f"top_p must be in (0, 1], got {self.top_p}")
        if self.max_new_tokens is not None and self.max_new_tokens < 1:
            raise ValueError(f"max_new_tokens must be >= 1, got {self.max_new_tokens}")
        if self.batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {self.batch_size}")


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
    finish: str = ""  # "eos", "eoi" (JPEG), "complete" (all codes of a vq/pixel picture), "max_new_tokens", "context"
    steered: bool = False  # end steering forced its last bytes
    new_token_ids: list[int] | None = None  # the sampled ids (EOS not included)


def filter_logits(logits: torch.Tensor, temperature: float, top_k: int, top_p: float) -> torch.Tensor:
    """Temperature, top-k and top-p on float logits (B, V), as HF's warpers do them: removed
    entries become -inf. temperature 0 is handled by the caller (argmax)."""
    if temperature != 1.0:
        logits = logits / temperature
    if top_k and top_k < logits.shape[-1]:
        kth = torch.topk(logits, top_k, dim=-1).values[..., -1:]
        logits = logits.masked_fill(logits < kth, NEG_INF)
    if top_p < 1.0:
        # Same as transformers' TopPLogitsWarper: drop the low tail whose mass is <= 1 - top_p,
        # always keeping the most likely token.
        sorted_logits, sorted_idx = torch.sort(logits, descending=False, dim=-1)
        cum = sorted_logits.softmax(dim=-1).cumsum(dim=-1)
        remove_sorted = cum <= (1 - top_p)
        remove_sorted[..., -1:] = False
        remove = remove_sorted.scatter(-1, sorted_idx, remove_sorted)
        logits = logits.masked_fill(remove, NEG_INF)
    return logits


def _codes_per_item(codec) -> int:
    """Codes in one whole picture of a code codec (vq, pixel): sampling stops there, the rows
    of a picture being fixed. Measured once on a gray canonical image, so no codec needs to
    expose it."""
    import numpy as np

    size = max(256, getattr(codec.params, "eval_size", 0) or 0, getattr(codec.params, "size", 0) or 0)
    return int(len(codec.encode(np.full((size, size, 3), 128, np.uint8))))


def _context_length(model) -> int:
    return int(getattr(model.config, "max_position_embeddings", 0) or 1 << 30)


@dataclass
class _Job:
    index: int  # global sample index
    prompt_index: int | None
    seed: int
    ids: list[int]  # prompt token ids (BOS first)
    state: Any = None  # grammar state at the end of the prompt
    max_new: int | None = None  # code codecs: the codes still missing from a whole picture


def _prompt_jobs(tokenizer, codec, prompts, num_samples, cfg, constraint) -> list[_Job]:
    jobs: list[_Job] = []
    total_codes = _codes_per_item(codec) if getattr(codec, "symbol_kind", "") == "codes" else None
    sources = [(None, None)] if prompts is None else list(enumerate(prompts))
    i = 0
    for pi, symbols in sources:
        if symbols is None and constraint is not None:
            # the JPEG grammar starts after the header, which the model would otherwise have to write;
            # an H.264 stream has no header in the modelled bytes (SPS/PPS are spliced at decode)
            symbols = codec.header() if hasattr(codec, "header") else b""
        ids = tokenizer.encode(symbols, bos=True, eos=False) if symbols is not None else [tokenizer.bos_id]
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
        for _ in range(num_samples):
            jobs.append(_Job(i, pi, cfg.seed + i, list(ids), state, max_new))
            i += 1
    return jobs


@torch.inference_mode()
def generate(model, tokenizer, codec, prompts, num_samples: int, cfg: SamplerConfig | None = None, device="cpu") -> list[Sample]:
    """Sample `num_samples` completions of each prompt (symbols as `codec.encode` gives them, already
    cut with `codec.prompt`), or `num_samples` unconditional samples when `prompts` is None.
    Returns the samples in order: prompt 0's samples first."""
    cfg = cfg or SamplerConfig()
    if num_samples < 1:
        raise ValueError("num_samples must be >= 1")
    model.eval()
    vocab = int(model.config.vocab_size)
    if tokenizer.vocab_size > vocab:
        raise ValueError(f"the tokenizer has {tokenizer.vocab_size} tokens but the model only {vocab}: mismatched checkpoint")
    constraint = constraint_for(codec, tokenizer, vocab) if cfg.constrain else None
    code_mask = code_only_mask(tokenizer, codec, vocab) if cfg.constrain else None
    jobs = _prompt_jobs(tokenizer, codec, prompts, num_samples, cfg, constraint)
    ctx = _context_length(model)
    for j in jobs:
        if len(j.ids) >= ctx:
            raise PromptTooLongError(
                f"prompt {j.prompt_index} is {len(j.ids)} tokens; the model's context is {ctx}: nothing left to generate"
            )
    token_bytes = constraint.token_bytes if constraint is not None else None
    if token_bytes is None and getattr(codec, "name", None) == "jpeg" and getattr(tokenizer, "kind", "") != "code":
        from jpeglm.sample.constrain import token_bytes_table

        token_bytes = token_bytes_table(tokenizer, vocab)
    out: list[Sample] = []
    with decode_attention_on(model, device):
        for start in range(0, len(jobs), cfg.batch_size):
            out.extend(_run_batch(model, tokenizer, codec, jobs[start : start + cfg.batch_size], cfg, device, ctx, constraint, code_mask, token_bytes))
    return out


def _run_batch(model, tokenizer, codec, jobs, cfg, device, ctx, constraint: TokenConstraint | None, code_mask, token_bytes):
    t0 = time.perf_counter()
    B = len(jobs)
    lens = [len(j.ids) for j in jobs]
    # Samples of the same prompt share one prefill: the unique prompts are prefilled, then the
    # cache rows are repeated (num_samples x less prefill work, the bulk of it for long prompts).
    uniq: dict[tuple, int] = {}
    row_of = [uniq.setdefault(tuple(j.ids), len(uniq)) for j in jobs]
    prompts_u = list(uniq)
    L = max(lens)
    pad = tokenizer.pad_id
    input_ids = torch.full((len(prompts_u), L), pad, dtype=torch.long)
    attn = torch.zeros((len(prompts_u), L), dtype=torch.long)
    for r, ids in enumerate(prompts_u):
        input_ids[r, L - len(ids) :] = torch.tensor(ids)
        attn[r, L - len(ids) :] = 1
    positions = (attn.cumsum(-1) - 1).clamp(min=0)
    padded = bool((attn == 0).any())
    input_ids, attn, positions = input_ids.to(device), attn.to(device), positions.to(device)

    gens = [torch.Generator(device="cpu").manual_seed(j.seed) for j in jobs]
    budgets = [min(cfg.max_new_tokens or ctx, ctx - n) for n in lens]
    if cfg.constrain:  # code codecs: a picture has a fixed number of codes
        budgets = [b if j.max_new is None else min(b, j.max_new) for b, j in zip(budgets, jobs)]
    states = [j.state for j in jobs]
    new_ids: list[list[int]] = [[] for _ in jobs]
    last_byte = [b"" for _ in jobs]  # last byte emitted (prompts end after a marker), for the EOI check
    steered = [False] * B
    finished: dict[int, tuple[str, float]] = {}
    alive = list(range(B))  # batch row -> job index
    eos = tokenizer.eos_id
    is_jpeg = token_bytes is not None
    if code_mask is not None:
        code_mask = code_mask.to(device)

    # Room for every position any row can reach: the longest prompt (left-padded to L) plus the
    # largest budget; at most the model's context.
    capacity = L + max(budgets)
    cache = slab_cache(model, capacity)
    if padded:  # the mask only ever grows by ones: preallocate it, hand the model a view
        mask_slab = torch.ones((len(prompts_u), capacity), dtype=torch.long, device=device)
        mask_slab[:, :L] = attn
        attn = mask_slab
    n_pos = L  # columns filled in the cache (and the mask)
    out = model(
        input_ids=input_ids,
        attention_mask=attn[:, :n_pos] if padded else None,
        position_ids=positions,
        past_key_values=cache,
        use_cache=True,
        logits_to_keep=1,
    )
    expand = torch.tensor(row_of, device=device)
    if len(prompts_u) < B or row_of != list(range(B)):
        cache.batch_select_indices(expand)
        out.logits = out.logits[expand]
    attn, positions = attn[expand], positions[expand]
    next_pos = positions[:, -1:] + 1
    while alive:
        logits = out.logits[:, -1, :].float()
        if code_mask is not None:
            logits = logits.masked_fill(~code_mask, NEG_INF)
        forced: dict[int, int] = {}
        if constraint is not None:
            masks = []
            for r, ji in enumerate(alive):
                masks.append(constraint.mask(states[ji]))
                if cfg.steer:
                    left = budgets[ji] - len(new_ids[ji])
                    need = constraint.completion_length(states[ji])
                    if need is not None and left <= need:
                        tok = constraint.forced_token(states[ji])
                        if tok is not None:
                            forced[r] = tok
            logits = logits.masked_fill(~torch.stack(masks).to(logits.device), NEG_INF)
        if cfg.temperature == 0 or cfg.top_k == 1:
            picks = logits.argmax(dim=-1).cpu().tolist()
        else:
            probs = filter_logits(logits, cfg.temperature, cfg.top_k, cfg.top_p).softmax(dim=-1).cpu()
            picks = [int(torch.multinomial(probs[r], 1, generator=gens[ji])) for r, ji in enumerate(alive)]
        keep = []
        now = time.perf_counter() - t0
        for r, ji in enumerate(alive):
            tok = forced.get(r, picks[r])
            steered[ji] |= r in forced
            reason = None
            if tok == eos:
                reason = "eos"
            else:
                new_ids[ji].append(tok)
                if constraint is not None:
                    states[ji] = constraint.advance(states[ji], tok)
                    if constraint.is_complete(states[ji]):
                        reason = "eoi"
                elif is_jpeg:
                    bs = token_bytes[tok] or b""
                    if b"\xff\xd9" in last_byte[ji] + bs:
                        reason = "eoi"
                    last_byte[ji] = bs[-1:] if bs else last_byte[ji]
                if reason is None and len(new_ids[ji]) >= budgets[ji]:
                    if jobs[ji].max_new is not None and len(new_ids[ji]) >= jobs[ji].max_new:
                        reason = "complete"
                    else:
                        reason = "max_new_tokens" if budgets[ji] < ctx - lens[ji] else "context"
            if reason is None:
                keep.append(r)
            else:
                finished[ji] = (reason, now)
        if not keep:
            break
        next_tokens = torch.tensor([new_ids[alive[r]][-1] for r in keep], dtype=torch.long, device=device)[:, None]
        if len(keep) < len(alive):
            # Drop finished rows from everything the next step touches, the KV cache included.
            idx = torch.tensor(keep, device=device)
            cache.batch_select_indices(idx)
            attn, next_pos = attn[idx], next_pos[idx]
            if padded:
                padded = bool((attn[:, :n_pos] == 0).any())
            alive = [alive[r] for r in keep]
        n_pos += 1
        out = model(
            input_ids=next_tokens,
            attention_mask=attn[:, :n_pos] if padded else None,
            position_ids=next_pos,
            past_key_values=cache,
            use_cache=True,
        )
        next_pos = next_pos + 1

    samples = []
    for ji, j in enumerate(jobs):
        symbols = tokenizer.decode(j.ids + new_ids[ji])
        media, report = codec.decode(symbols)
        reason, secs = finished[ji]
        samples.append(
            Sample(symbols, media, report, j.prompt_index, j.seed, len(j.ids), len(new_ids[ji]), secs, reason, steered[ji], new_ids[ji])
        )
    return samples


__all__ = ["SamplerConfig", "Sample", "generate", "filter_logits", "PromptTooLongError"]
