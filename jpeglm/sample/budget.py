"""How many positions a sample may use, and whether its KV cache fits the device.

- The context: a model trained on `data.seq_len`-token sequences is sampled within that many
  positions, never more than `max_position_embeddings`. `load_for_inference` works it out
  (`trained_context`: our checkpoints' `jpeglm.yaml` train config; 12,288 for the released JPEG-LM,
  whose config says 65,536 but which was trained on 12,288-token chunks, run.py's
  MAX_MODEL_SEQ_LEN) and records it on the model's config as `jpeglm_context`; `context_length(model)`
  reads it back (a model without it: `max_position_embeddings`). The default token budget of a
  sample is that context minus its prompt; an explicit `max_new_tokens` may go past it, never past
  `max_position_embeddings` (`sampling_context`).
- The cache: `check_cache_fits` estimates the KV cache of a batch before anything is allocated
  (2 x layers x rows x KV heads x positions x head dim x bytes per element) and refuses, saying how
  much it needs and what to lower, when the device does not have that much free (CUDA:
  `torch.cuda.mem_get_info`; CPU: available RAM).
"""

from __future__ import annotations

import os

from jpeglm.errors import UserError

RELEASED_TRAINED_CONTEXT = 12288  # the released JPEG-LM's training chunks (run.py: MAX_MODEL_SEQ_LEN)
CONTEXT_ATTR = "jpeglm_context"  # set on model.config by load_for_inference
HEADROOM = 0.9  # share of the free memory the cache may take (activations and logits need the rest)
GIB = 1024**3


class CacheTooLargeError(UserError, ValueError):
    """A batch whose KV cache cannot fit the device; the message says what to lower."""


def trained_context(meta: dict, max_positions: int) -> int:
    """The context a checkpoint was trained at, capped by its `max_position_embeddings`: the train
    config's `data.seq_len` (jpeglm exports), 12,288 for a released-format checkpoint (no jpeglm.yaml),
    else `max_positions`."""
    seq_len = ((meta.get("train") or {}).get("data") or {}).get("seq_len")
    if seq_len is None and meta.get("format") == "released-jpeg-lm":
        seq_len = RELEASED_TRAINED_CONTEXT
    return min(int(seq_len), max_positions) if seq_len else max_positions


def max_positions(model) -> int:
    """`max_position_embeddings`: the hard limit, whatever budget is asked for."""
    return int(getattr(model.config, "max_position_embeddings", 0) or 1 << 30)


def context_length(model) -> int:
    """Positions a sample of `model` uses by default: its recorded trained context, at most
    `max_position_embeddings`."""
    ctx = getattr(model.config, CONTEXT_ATTR, None)
    return min(int(ctx), max_positions(model)) if ctx else max_positions(model)


def sampling_context(model, max_new_tokens: int | None, fixed_length: bool = False) -> int:
    """The positions a `generate` call may fill: the trained context by default; an explicit
    budget may go past it (a user's choice, e.g. a model trained on short chunks), never past
    `max_position_embeddings`, and so may items of a fixed length (`fixed_length`: a grid of codes
    ends after its last code whatever the context it was trained in)."""
    return context_length(model) if max_new_tokens is None and not fixed_length else max_positions(model)


def cache_bytes(model, rows: int, positions: int) -> int:
    """Bytes of the sampler's K and V slabs for `rows` sequences of `positions` each."""
    cfg = model.config
    heads = int(cfg.num_attention_heads)
    kv_heads = int(getattr(cfg, "num_key_value_heads", None) or heads)
    head_dim = int(getattr(cfg, "head_dim", None) or cfg.hidden_size // heads)
    itemsize = next(model.parameters()).element_size()
    return 2 * int(cfg.num_hidden_layers) * rows * kv_heads * positions * head_dim * itemsize


def free_bytes(device) -> int | None:
    """Memory free for new tensors on `device` (None when unknown: other accelerators)."""
    import torch

    dev = torch.device(device)
    if dev.type == "cuda":
        return int(torch.cuda.mem_get_info(dev)[0])
    if dev.type == "cpu":
        try:
            import psutil

            return int(psutil.virtual_memory().available)
        except ImportError:
            try:
                return int(os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE"))
            except (ValueError, OSError, AttributeError):
                return None
    return None


def check_cache_fits(model, rows: int, positions: int, device, max_new_tokens: int | None = None,
                     batch_size: int | None = None) -> int:
    """The KV cache estimate in bytes for `rows` cache rows (`batch_size` samples: fewer than rows
    under guidance, whose twins need rows too); a CacheTooLargeError when it cannot fit `device`."""
    need = cache_bytes(model, rows, positions)
    free = free_bytes(device)
    if free is not None and need > HEADROOM * free:
        budget = f"--max-new-tokens (now {max_new_tokens})" if max_new_tokens else \
            f"--max-new-tokens (now the context: {context_length(model)} positions minus the prompt)"
        raise CacheTooLargeError(
            f"the KV cache of {rows} sequence(s) x {positions} positions needs {need / GIB:.2f} GiB, but {device} has "
            f"{free / GIB:.2f} GiB free: lower --batch-size (now {batch_size or rows}) or {budget}"
        )
    return need


__all__ = ["CONTEXT_ATTR", "RELEASED_TRAINED_CONTEXT", "CacheTooLargeError", "cache_bytes", "check_cache_fits",
           "context_length", "free_bytes", "max_positions", "sampling_context", "trained_context"]
