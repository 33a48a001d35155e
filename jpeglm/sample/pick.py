"""The constrained token choice without a whole mask: one Gumbel-noise draw per row and step, then
the best *allowed* candidate in order of noisy score.

Sampling from softmax(masked logits / T) (top-k applied after the mask, as `filter_logits` does) is
the same as taking argmax(logits / T + G) over the allowed tokens of the top-k-of-allowed set, with
G i.i.d. standard Gumbel noise (the Gumbel-max trick). So the candidates are visited in order of
noisy score and the first one the grammar allows (and that is in the top-k of the allowed tokens)
is the pick: the *same token* the whole mask would give for the same noise. The noisy winner is
taken at once when the grammar allows it (`TokenConstraint.allows`, a few grammar steps) and it lies
in the top-k of all tokens (then it is in the top-k of the allowed ones too); otherwise the state's
token mask (`TokenConstraint.pick_mask`, cached per grammar state) gives the exact top-k-of-allowed
threshold and the pick in a few vectorised numpy calls. Without a mask, candidates are visited in
noisy order and the threshold is found by walking the tokens in order of logit.
`reference_pick` is the mask-first computation, for the tests.

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


def pick_allowed(scaled, noise, allows, top_k: int, cached_mask=None, mask=None) -> int | None:
    """argmax over {allowed tokens in the top-k of the allowed tokens} of scaled + noise.

    `scaled`: float[V] logits already divided by the temperature (-inf: never), `noise`: float[V]
    (tensors or arrays), `allows(token) -> bool`; `cached_mask() -> bool[V] | None`: the whole mask
    (numpy or torch), or None when it would cost a walk; `mask`: the whole bool[V] numpy mask given
    up front (a grammar whose masks are cheap: JPEG), then neither `allows` nor `cached_mask` is
    asked. None when no token is allowed.

    The noisy winner is the pick when the grammar allows it and fewer than k tokens of any kind
    score above its logit (one check, the usual case for a trained model). Otherwise, with the mask,
    everything is vectorised: the k-th largest allowed logit, then the best allowed noisy score at
    or above it. Without a mask: candidates in noisy order, the threshold found by a walk in order
    of logit. (numpy inside: on a few hundred values its calls cost a fraction of torch's; float32
    like the mask-first computation, so the sum is rounded the same way.)"""
    s = _np(scaled)
    vocab = s.shape[0]
    k = top_k if 0 < top_k < vocab else 0
    noisy = s + _np(noise)
    if mask is not None:
        best = int(noisy.argmax())
        if noisy[best] == NEG_INF:
            return None
        if mask[best] and (not k or np.count_nonzero(s > s[best]) < k):
            return best
        return _pick_in_mask(s, noisy, mask, k)
    seen: dict[int, bool] = {}

    def ok(t: int) -> bool:
        v = seen.get(t)
        if v is None:
            v = seen[t] = bool(allows(t))
        return v

    best = int(noisy.argmax())
    if noisy[best] == NEG_INF:
        return None
    if (not k or np.count_nonzero(s > s[best]) < k) and ok(best):
        return best  # allowed, and in the top-k of all tokens, so in the top-k of the allowed ones
    m = cached_mask() if cached_mask is not None else None
    if isinstance(m, tuple):
        return _pick_with_unknowns(s, noisy, ok, k, _np(m[0]).astype(bool, copy=False), np.asarray(m[1], np.int64))
    if m is not None:
        return _pick_in_mask(s, noisy, _np(m).astype(bool, copy=False), k)
    return _pick_by_candidates(s, noisy, ok, k)


def _pick_in_mask(s: np.ndarray, noisy: np.ndarray, m: np.ndarray, k: int) -> int | None:
    """The pick from the whole mask, vectorised: the k-th largest allowed logit (refused tokens at
    -inf, so it is the k-th largest of all), then the best allowed noisy score at or above it."""
    keep = m
    if k:
        sm = np.where(m, s, NEG_INF)
        thr = np.partition(sm, len(sm) - k)[len(sm) - k]
        if thr != NEG_INF:  # else fewer than k allowed (finite) tokens: all allowed ones stay
            keep = sm >= thr
    score = np.where(keep, noisy, NEG_INF)
    t = int(score.argmax())
    return None if score[t] == NEG_INF else t


def _np(x) -> np.ndarray:
    """A float / bool vector as numpy without a copy when it is one already (CPU tensors: a view)."""
    if isinstance(x, np.ndarray):
        return x
    if isinstance(x, torch.Tensor):
        try:
            return x.numpy()  # a CPU tensor outside autograd: a view, ~1 us
        except (RuntimeError, TypeError):
            return x.detach().cpu().numpy()
    return np.asarray(x)


def _pick_with_unknowns(s, noisy, ok, k: int, lower: np.ndarray, unknown: np.ndarray) -> int | None:
    """The pick from a partial mask: `lower` the tokens known allowed, `unknown` the ids `ok`
    decides, every other token refused. Candidates in noisy order among the possible tokens; a
    candidate is in the top-k of the allowed tokens when fewer than k allowed ones score above its
    logit: counted from `lower`, and from the unknown tokens above it (asked only while the count
    is undecided)."""
    possible = lower.copy()
    possible[unknown] = True
    score = np.where(possible, noisy, NEG_INF)
    unknown = unknown[np.argsort(-s[unknown], kind="stable")]  # by logit, descending
    unk_s = s[unknown]
    while True:
        t = int(score.argmax())
        if score[t] == NEG_INF:
            return None
        score[t] = NEG_INF
        if not (lower[t] or ok(t)):
            continue
        if not k:
            return t
        logit = s[t]
        n = int(np.count_nonzero(lower & (s > logit)))
        above = unknown[: int(np.count_nonzero(unk_s > logit))]
        if n + len(above) < k:
            return t
        if n >= k:
            continue
        for u in above.tolist():
            if ok(u):
                n += 1
                if n >= k:
                    break
        if n < k:
            return t


def _pick_by_candidates(s: np.ndarray, noisy: np.ndarray, ok, k: int) -> int | None:
    """The maskless path: candidates in noisy order, the first allowed one in the top-k of the
    allowed tokens; that threshold (the k-th largest allowed logit) found once by walking the
    tokens in order of logit."""
    vocab = s.shape[0]
    kth_all = float(np.partition(s, vocab - k)[vocab - k]) if k else NEG_INF
    thr: list[float] = []  # the k-th largest allowed logit, once needed

    def in_top_k(t: int) -> bool:
        logit = float(s[t])
        if not k or logit >= kth_all:
            return True  # fewer than k tokens of any kind are above it
        if not thr:
            thr.append(NEG_INF)
            n = 0
            for tok in np.argsort(-s, kind="stable").tolist():
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
