"""Classifier-free guidance (Ho & Salimans 2022), as LlamaGen and VAR apply it to token logits.

A guided batch of n samples runs 2n rows through the model in one forward pass: rows 0..n-1 are
the conditional rows (BOS, class token, prompt), rows n..2n-1 their unconditional twins (BOS, the
null class token, the same prompt), which are fed the same sampled token at every step. Per step
`guide` turns the (2n, V) logits into n rows of `uncond + scale * (cond - uncond)`; then come the
code mask / grammar constraint, temperature / top-k / top-p and the draw, exactly as without
guidance. scale 1 is the conditional model itself (no twins are run), scale 0 the unconditional one.
"""

from __future__ import annotations

import torch


def guide(logits: torch.Tensor, scale: float) -> torch.Tensor:
    """(2n, V) logits, conditional rows first -> (n, V) guided logits."""
    n = logits.shape[0] // 2
    if logits.shape[0] != 2 * n:
        raise ValueError(f"guided logits need an even number of rows (conditional + unconditional), got {logits.shape[0]}")
    cond, uncond = logits[:n], logits[n:]
    return torch.lerp(uncond, cond, scale) if scale != 1.0 else cond  # uncond + scale * (cond - uncond)


def twin_rows(rows: list[int], n: int) -> list[int]:
    """Model rows to keep when the sample rows `rows` of n survive: each and its unconditional twin."""
    return list(rows) + [r + n for r in rows]


def unconditional_twin(ids: list[int], tokenizer) -> list[int]:
    """The prompt ids with the class token (after BOS) replaced by the null class."""
    if len(ids) < 2 or tokenizer.label_of(ids) is None:
        raise ValueError("a guided prompt must start with BOS and a class token")
    return [ids[0], tokenizer.null_class_id, *ids[2:]]


__all__ = ["guide", "twin_rows", "unconditional_twin"]
