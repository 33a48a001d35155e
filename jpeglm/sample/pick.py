"""The constrained token choice without a whole mask: one Gumbel-noise draw per row and step, then
the best *allowed* candidate in order of noisy score.

Sampling from softmax(masked logits / T) (top-k applied after the mask, as `filter_logits` does) is
the same as taking argmax(logits / T + G) over the allowed tokens of the top-k-of-allowed set, with
G i.i.d. standard Gumbel noise (the Gumbel-max trick). So the candidates are visited in order of
noisy score and the first one the grammar allows (and that is in the top-k of the allowed tokens)
is the pick: the *same token* the whole mask would give for the same noise, found with a few
grammar steps (`TokenConstraint.allows`) instead of a mask over the vocabulary. Membership in the
top-k of the allowed tokens is free for a candidate inside the top-k of all tokens; below it the
exact threshold (the k-th largest allowed logit) is found once per step by walking the tokens in
order of logit. `reference_pick` is the mask-first computation, for the tests.

Each row draws its noise from its own generator, so a sample does not depend on the batch.
"""

from __future__ import annotations

import numpy as np
import torch

NEG_INF = float("-inf")
CANDIDATES = 8  # noisy-score candidates taken per row at once (more only when all are refused)


def gumbel(vocab: int, gen: torch.Generator) -> torch.Tensor:
    """Standard Gumbel noise, float32[vocab], from `gen` (CPU): -log(Exp(1))."""
    return torch.empty(vocab).exponential_(generator=gen).log_().neg_()


def pick_allowed(scaled: torch.Tensor, noise: torch.Tensor, allows, top_k: int, cached_mask=None) -> int | None:
    """argmax over {allowed tokens in the top-k of the allowed tokens} of scaled + noise.

    `scaled`: float[V] logits already divided by the temperature (-inf: never), `noise`: float[V],
    `allows(token) -> bool`; `cached_mask() -> bool[V] | None`: the whole mask when it costs nothing
    (it then gives the top-k threshold). None when no token is allowed. (numpy inside: on a few
    hundred values its calls cost a fraction of torch's.)"""
    s = scaled.detach().cpu().numpy().astype(np.float64, copy=False)
    vocab = s.shape[0]
    k = top_k if 0 < top_k < vocab else 0
    noisy = s + noise.detach().cpu().numpy()
    seen: dict[int, bool] = {}

    def ok(t: int) -> bool:
        v = seen.get(t)
        if v is None:
            v = seen[t] = bool(allows(t))
        return v

    kth_all = float(np.partition(s, vocab - k)[vocab - k]) if k else NEG_INF
    thr: list[float] = []  # the k-th largest allowed logit, once needed

    def in_top_k(t: int) -> bool:
        logit = float(s[t])
        if not k or logit >= kth_all:
            return True  # fewer than k tokens of any kind are above it
        if not thr:
            m = cached_mask() if cached_mask is not None else None
            if m is not None:
                allowed = s[m.numpy()]
                thr.append(float(np.partition(allowed, len(allowed) - k)[len(allowed) - k]) if len(allowed) >= k else NEG_INF)
            else:
                thr.append(NEG_INF)
                order = np.argsort(-s, kind="stable")
                n = 0
                for tok in order.tolist():
                    if s[tok] == NEG_INF:
                        break
                    if ok(tok):
                        n += 1
                        if n == k:
                            thr[0] = float(s[tok])
                            break
        return logit >= thr[0]

    n_cand = min(CANDIDATES, vocab)
    first = np.argpartition(-noisy, n_cand - 1)[:n_cand] if n_cand < vocab else np.arange(vocab)
    first = first[np.argsort(-noisy[first], kind="stable")]
    for order in (first, None):
        if order is None:  # every candidate refused: all tokens in noisy order (the first n_cand already seen)
            if n_cand == vocab:
                return None
            order = np.argsort(-noisy, kind="stable")[n_cand:]
        for t in order.tolist():
            if noisy[t] == NEG_INF:
                return None
            if ok(t) and in_top_k(t):
                return t
    return None


def reference_pick(scaled: torch.Tensor, noise: torch.Tensor, mask: torch.Tensor, top_k: int) -> int:
    """The mask-first computation `pick_allowed` equals: mask, top-k, argmax of the noisy scores."""
    from jpeglm.sample.batch import filter_logits

    masked = filter_logits(scaled.masked_fill(~mask, NEG_INF)[None], 1.0, top_k, 1.0)[0]
    return int(torch.argmax(masked + noise))


__all__ = ["CANDIDATES", "gumbel", "pick_allowed", "reference_pick"]
