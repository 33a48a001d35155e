"""One batch of sampling jobs through prefill and decode steps (the loop behind `generate`).

`Batch(...).run()` does, in order (see jpeglm/sample/sampler.py for the whole story):
- `_prefill`: the unique prompts left-padded and run once, their cache rows then repeated for the
  samples that share a prompt (num_samples x less prefill work);
- per step, `_choose`: end steering, then, under a constraint with top-p off, one Gumbel draw per
  row (that row's own generator) and the best allowed candidate (jpeglm/sample/pick.py; a token the
  grammar forces is appended without a draw); otherwise the constraint mask -> temperature / top-k /
  top-p -> one draw per row; `_advance`: append, move the grammar state on, end
  rows (EOS, a complete stream, a whole picture, the budget); `_forward`: drop finished rows from
  the batch and the KV cache, run the next step;
- classifier-free guidance (`Run.cfg_scale` != 1): each job also runs an unconditional twin row
  (guidance.py); the steps above see the guided logits of the job rows only;
- `_samples`: decode every job's ids with the tokenizer and the codec.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch

from jpeglm.sample import guidance
from jpeglm.sample.kv_cache import model_inputs, slab_cache
from jpeglm.sample.pick import gumbel, pick_allowed

NEG_INF = float("-inf")
# Constraint work is timed in this thread's CPU time, not wall time: on a loaded machine wall time
# counts the waits for the CPU too (bench/bench_constraint.py reads `Batch.constraint_s`).
_cpu = time.thread_time


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


@dataclass
class Step:
    """What an `on_step` callback sees after each decode step: the jobs of the running batch. The
    lists are the sampler's own (they grow as it goes): read them, copy what you keep."""

    samples: list[int]  # global sample index of each job
    prompt_ids: list[list[int]]  # each job's prompt token ids (BOS first)
    new_ids: list[list[int]]  # the tokens each job has sampled so far (EOS not included)
    done: list[bool]  # whether each job has finished


@dataclass
class Run:
    """What every batch of one `generate` call shares."""

    model: Any
    tokenizer: Any
    codec: Any
    cfg: Any  # SamplerConfig
    device: Any
    ctx: int  # the model's context
    constraint: Any = None  # TokenConstraint, or None
    code_mask: torch.Tensor | None = None  # code codecs: the code tokens only
    # unconstrained byte streams: (the bytes that end a stream, e.g. JPEG's EOI; token id -> bytes)
    stream_end: tuple | None = None
    # called with a `Step` after every decode step; returning False stops the whole run (see `generate`)
    on_step: Callable[[Step], bool | None] | None = None
    stopped: bool = False  # set when on_step asked to stop
    cfg_scale: float = 1.0  # classifier-free guidance; != 1: jobs carry `uncond_ids`, twins run beside them


class Batch:
    """The state of one batch: `alive` maps batch rows to job indices, and only shrinks."""

    def __init__(self, run: Run, jobs: list):
        self.model, self.tokenizer, self.codec, self.jobs = run.model, run.tokenizer, run.codec, jobs
        self.cfg, self.device, self.ctx = run.cfg, run.device, run.ctx
        self.constraint = run.constraint
        self.code_mask = run.code_mask.to(self.device) if run.code_mask is not None else None
        self.stream_end = run.stream_end
        self.run_state, self.on_step = run, run.on_step
        self.cfg_scale, self.guided = run.cfg_scale, run.cfg_scale != 1.0
        cfg, ctx = self.cfg, self.ctx
        self.t0 = time.perf_counter()
        self.lens = [len(j.ids) for j in jobs]
        self.budgets = [min(cfg.max_new_tokens or ctx, ctx - n) for n in self.lens]
        if cfg.constrain:  # code codecs: a picture has a fixed number of codes
            self.budgets = [b if j.max_new is None else min(b, j.max_new) for b, j in zip(self.budgets, jobs)]
        self.gens = [torch.Generator(device="cpu").manual_seed(j.seed) for j in jobs]
        self.states = [j.state for j in jobs]
        self.new_ids: list[list[int]] = [[] for _ in jobs]
        self.tail = [b"" for _ in jobs]  # last bytes emitted, for a stream end split across tokens
        self.steered = [False] * len(jobs)
        self.finished: dict[int, tuple[str, float]] = {}
        self.alive = list(range(len(jobs)))
        self.constraint_s = 0.0  # CPU seconds (this thread) inside constraint work (masks, candidates, advance): bench/bench_constraint.py

    def run(self) -> list:
        out = self._prefill()
        while self.alive:
            logits = out.logits[:, -1, :].float()
            if self.guided:  # the job rows' guided logits from them and their unconditional twins
                logits = guidance.guide(logits, self.cfg_scale)
            tokens, forced = self._choose(logits)
            more = self._advance(tokens, forced)
            if self.on_step is not None and self._report_step() is False:
                break
            if not more:
                break
            out = self._forward()
        return self._samples()

    def _report_step(self) -> bool:
        """Hand the progress to `on_step`; when it returns False, end every unfinished job ("stopped")."""
        done = [ji in self.finished for ji in range(len(self.jobs))]
        step = Step([j.index for j in self.jobs], [j.ids for j in self.jobs], self.new_ids, done)
        if self.on_step(step) is not False:
            return True
        now = time.perf_counter() - self.t0
        for ji in range(len(self.jobs)):
            self.finished.setdefault(ji, ("stopped", now))
        self.run_state.stopped = True
        return False

    # --- prefill --------------------------------------------------------------------------------
    def _prefill(self):
        uniq: dict[tuple, int] = {}
        rows = [j.ids for j in self.jobs] + ([j.uncond_ids for j in self.jobs] if self.guided else [])
        row_of = [uniq.setdefault(tuple(ids), len(uniq)) for ids in rows]
        prompts = list(uniq)
        L = max(self.lens)
        input_ids = torch.full((len(prompts), L), self.tokenizer.pad_id, dtype=torch.long)
        attn = torch.zeros((len(prompts), L), dtype=torch.long)
        for r, ids in enumerate(prompts):
            input_ids[r, L - len(ids) :] = torch.tensor(ids)
            attn[r, L - len(ids) :] = 1
        positions = (attn.cumsum(-1) - 1).clamp(min=0)
        self.padded = bool((attn == 0).any())
        input_ids, attn, positions = input_ids.to(self.device), attn.to(self.device), positions.to(self.device)
        # Room for every position any row can reach: the longest prompt (left-padded to L) plus the
        # largest budget; at most the model's context.
        capacity = L + max(self.budgets)
        self.cache = slab_cache(self.model, capacity)
        if self.padded:  # the mask only ever grows by ones: preallocate it, hand the model a view
            mask_slab = torch.ones((len(prompts), capacity), dtype=torch.long, device=self.device)
            mask_slab[:, :L] = attn
            attn = mask_slab
        self.n_pos = L  # columns filled in the cache (and the mask)
        out = self.model(
            input_ids=input_ids, attention_mask=attn[:, : self.n_pos] if self.padded else None,
            position_ids=positions, use_cache=True, logits_to_keep=1, **model_inputs(self.model, self.cache),
        )
        expand = torch.tensor(row_of, device=self.device)
        if len(prompts) < len(rows) or row_of != list(range(len(rows))):
            self.cache.batch_select_indices(expand)
            out.logits = out.logits[expand]
        self.attn, positions = attn[expand], positions[expand]
        self.next_pos = positions[:, -1:] + 1
        return out

    # --- one step ---------------------------------------------------------------------------------
    def _choose(self, logits: torch.Tensor) -> tuple[list[int], set[int]]:
        """The next token of every alive row, and the rows whose token end steering forced."""
        cfg, c = self.cfg, self.constraint
        if self.code_mask is not None:
            logits = logits.masked_fill(~self.code_mask, NEG_INF)
        if c is not None and cfg.temperature > 0 and cfg.top_k != 1 and cfg.top_p == 1.0:
            return self._choose_candidates(logits)
        return self._choose_masked(logits)

    def _choose_masked(self, logits: torch.Tensor) -> tuple[list[int], set[int]]:
        """Whole masks (cached per grammar state) -> temperature / top-k / top-p -> one draw per row."""
        cfg, c = self.cfg, self.constraint
        forced: dict[int, int] = {}
        if c is not None:
            t0 = _cpu()
            masks = []
            for r, ji in enumerate(self.alive):
                masks.append(c.mask(self.states[ji]))
                tok = self._steer(ji)
                if tok is not None:
                    forced[r] = tok
            logits = logits.masked_fill(~torch.stack(masks).to(logits.device), NEG_INF)
            self.constraint_s += _cpu() - t0
        if cfg.temperature == 0 or cfg.top_k == 1:
            picks = logits.argmax(dim=-1).cpu().tolist()
        else:
            probs = filter_logits(logits, cfg.temperature, cfg.top_k, cfg.top_p).softmax(dim=-1).cpu()
            picks = [int(torch.multinomial(probs[r], 1, generator=self.gens[ji])) for r, ji in enumerate(self.alive)]
        return [forced.get(r, p) for r, p in enumerate(picks)], set(forced)

    def _steer(self, ji: int) -> int | None:
        """The token end steering forces on job `ji` now, or None."""
        if not self.cfg.steer:
            return None
        c = self.constraint
        need = c.completion_length(self.states[ji])
        if need is not None and self.budgets[ji] - len(self.new_ids[ji]) <= need:
            return c.forced_token(self.states[ji])
        return None

    def _choose_candidates(self, logits: torch.Tensor) -> tuple[list[int], set[int]]:
        """Sampling under the constraint by Gumbel noise (jpeglm/sample/pick.py): a token the
        grammar forces is appended without a draw; every other row draws its Gumbel noise and takes
        the best allowed candidate: from the state's whole mask when it is cached; else the noisy
        winner by one check when it is in the top-k, and otherwise the whole mask (`fast_masks`:
        cheap to build, JPEG) or a partial one (`pick_hint`). Same distribution as mask -> top-k
        -> sample."""
        c, cfg = self.constraint, self.cfg
        scaled = (logits / cfg.temperature if cfg.temperature != 1.0 else logits).detach().cpu().numpy()  # rows: numpy views
        tokens, forced, draw = [0] * len(self.alive), set(), []
        t0 = _cpu()
        for r, ji in enumerate(self.alive):  # end steering and forced tokens: no draw
            tok = self._steer(ji)
            if tok is not None:
                forced.add(r)
            else:
                tok = c.only_token(self.states[ji])
            if tok is None:
                draw.append(r)
            else:
                tokens[r] = tok
        self.constraint_s += _cpu() - t0
        # each row draws from its own generator, so drawing them all here (untimed) changes no sample
        noise = {r: gumbel(scaled.shape[-1], self.gens[self.alive[r]]) for r in draw}
        t0 = _cpu()
        fast = getattr(c, "fast_masks", False)
        for r in draw:
            st = self.states[self.alive[r]]
            m = c.pick_mask(st, build=False) if fast else None
            if m is not None:  # the state's whole mask is cached: one dict hit
                tok = pick_allowed(scaled[r], noise[r], None, cfg.top_k, mask=m)
            elif fast:  # a new state: the noisy winner by one check when it is in the top-k, else the mask (one table walk)
                tok = pick_allowed(scaled[r], noise[r], lambda t, st=st: c.allows(st, t), cfg.top_k,
                                   lambda st=st: c.pick_mask(st))
            else:
                tok = pick_allowed(scaled[r], noise[r], lambda t, st=st: c.allows(st, t), cfg.top_k,
                                   lambda st=st: c.pick_hint(st))
            tokens[r] = self.tokenizer.eos_id if tok is None else tok  # nothing allowed (should not happen): end the row
        self.constraint_s += _cpu() - t0
        return tokens, forced

    def _advance(self, tokens: list[int], forced: set[int]) -> bool:
        """Append each row's token and end the rows that are done; False when none is left."""
        keep = []
        now = time.perf_counter() - self.t0
        for r, ji in enumerate(self.alive):
            self.steered[ji] |= r in forced
            reason = self._append(ji, tokens[r])
            if reason is None:
                keep.append(r)
            else:
                self.finished[ji] = (reason, now)
        if not keep:
            return False
        self._next = torch.tensor([self.new_ids[self.alive[r]][-1] for r in keep], dtype=torch.long, device=self.device)[:, None]
        if self.guided:  # the twins are fed the token their job drew
            self._next = self._next.repeat(2, 1)
        if len(keep) < len(self.alive):
            # Drop finished rows from everything the next step touches, the KV cache included.
            rows = guidance.twin_rows(keep, len(self.alive)) if self.guided else keep
            idx = torch.tensor(rows, device=self.device)
            self.cache.batch_select_indices(idx)
            self.attn, self.next_pos = self.attn[idx], self.next_pos[idx]
            if self.padded:
                self.padded = bool((self.attn[:, : self.n_pos] == 0).any())
            self.alive = [self.alive[r] for r in keep]
        return True

    def _append(self, ji: int, tok: int) -> str | None:
        """Add `tok` to job `ji`; the reason the job ends now, or None."""
        if tok == self.tokenizer.eos_id:
            return "eos"
        self.new_ids[ji].append(tok)
        reason = None
        if self.constraint is not None:
            t0 = _cpu()
            self.states[ji] = self.constraint.advance(self.states[ji], tok)
            if self.constraint.is_complete(self.states[ji]):
                reason = "eoi"
            self.constraint_s += _cpu() - t0
        elif self.stream_end is not None:
            end, token_bytes = self.stream_end
            bs = token_bytes[tok] or b""
            if end in self.tail[ji] + bs:
                reason = "eoi"
            self.tail[ji] = (self.tail[ji] + bs)[-(len(end) - 1) :] if bs else self.tail[ji]
        if reason is None and len(self.new_ids[ji]) >= self.budgets[ji]:
            job = self.jobs[ji]
            if job.max_new is not None and len(self.new_ids[ji]) >= job.max_new:
                reason = "complete"
            else:
                reason = "max_new_tokens" if self.budgets[ji] < self.ctx - self.lens[ji] else "context"
        return reason

    def _forward(self):
        self.n_pos += 1
        out = self.model(
            input_ids=self._next, attention_mask=self.attn[:, : self.n_pos] if self.padded else None,
            position_ids=self.next_pos, use_cache=True, **model_inputs(self.model, self.cache),
        )
        self.next_pos = self.next_pos + 1
        return out

    # --- results ------------------------------------------------------------------------------------
    def _samples(self) -> list:
        from jpeglm.sample.sampler import Sample

        samples = []
        for ji, j in enumerate(self.jobs):
            symbols = self.tokenizer.decode(j.ids + self.new_ids[ji])
            media, report = self.codec.decode(symbols)
            reason, secs = self.finished[ji]
            samples.append(Sample(symbols, media, report, j.prompt_index, j.seed, len(j.ids), len(self.new_ids[ji]),
                                  secs, reason, self.steered[ji], self.new_ids[ji]))
        return samples


__all__ = ["Batch", "Run", "Step", "filter_logits"]
