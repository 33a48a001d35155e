"""The sampler's KV cache and its decode-step attention (both plugged into an unmodified HF Llama).

- `slab_cache(model, capacity)`: a `transformers` Cache whose layers write into K/V slabs allocated
  once for the longest row's prompt + budget; `DynamicCache` re-copies the whole cache with
  `torch.cat` every step, the largest cost at batch 8 with long prompts (bench/results/sample.md).
- `decode_attention_on(model, device)`: on CPU, run the single-query decode steps with a plain
  matmul-softmax-matmul attention (faster there than torch's fused SDPA kernel); the prefill and
  every other device keep the model's own attention.
"""

from __future__ import annotations

import contextlib
import functools
import inspect

import torch

NEG_INF = float("-inf")


def model_inputs(model, cache) -> dict:
    """`cache` under the keyword the model's forward takes: `cache` from transformers 5.24 (where
    `past_key_values` is deprecated, to be removed in 5.40), `past_key_values` before."""
    return {_cache_kwarg(type(model)): cache}


@functools.cache
def _cache_kwarg(model_class) -> str:
    # `inspect.signature` follows the `functools.wraps` of transformers' decorators to the real forward.
    params = inspect.signature(model_class.forward).parameters
    return "cache" if "cache" in params else "past_key_values"


def slab_cache(model, capacity: int):
    """A `transformers` Cache whose layers write into preallocated slabs (`SlabLayer` below)."""
    from transformers.cache_utils import Cache

    layer = _slab_layer_class()
    return Cache(layers=[layer(capacity) for _ in range(model.config.num_hidden_layers)])


@functools.cache
def _slab_layer_class():
    # Defined lazily so that importing jpeglm.sample does not import transformers.
    from transformers.cache_utils import DynamicLayer

    class SlabLayer(DynamicLayer):
        """One layer's K/V in (B, H, capacity, D) tensors allocated once: `update` copies the new
        positions into their columns and returns views of the filled part, where `DynamicLayer`
        concatenates (a copy of the whole cache per step and layer). Mask sizes come from
        `DynamicLayer` via `get_seq_length`."""

        is_croppable = False
        _layer_type = None  # never registered as transformers' layer class for any config

        def __init__(self, capacity: int):
            super().__init__()
            # Set here as well: the lazy-init contract (`update` allocates on first call) is the same in
            # every transformers release with `DynamicLayer`, the base class's attributes are not.
            self.keys = self.values = None
            self.is_initialized = False
            self.capacity = capacity
            self.length = 0

        def lazy_initialization(self, key_states, value_states):
            self.dtype, self.device = key_states.dtype, key_states.device
            b, h, _, d = key_states.shape
            self.kslab = key_states.new_empty((b, h, self.capacity, d))
            self.vslab = value_states.new_empty((b, value_states.shape[1], self.capacity, value_states.shape[-1]))
            self.is_initialized = True

        def update(self, key_states, value_states, *args, **kwargs):
            if not self.is_initialized:
                self.lazy_initialization(key_states, value_states)
            end = self.length + key_states.shape[-2]
            if end > self.capacity:  # the sampler sizes the slab for prompt + budget: a bug if hit
                raise RuntimeError(f"KV slab overflow: {end} positions, capacity {self.capacity}")
            self.kslab[:, :, self.length : end] = key_states
            self.vslab[:, :, self.length : end] = value_states
            self.length = end
            self.keys, self.values = self.kslab[:, :, :end], self.vslab[:, :, :end]
            return self.keys, self.values

        def get_seq_length(self) -> int:
            return self.length

        def batch_select_indices(self, indices):
            # A new slab of the kept rows; only the filled columns are copied.
            if not self.is_initialized:
                return
            for name in ("kslab", "vslab"):
                old = getattr(self, name)
                new = old.new_empty((len(indices),) + tuple(old.shape[1:]))
                new[:, :, : self.length] = old[indices, :, : self.length]
                setattr(self, name, new)
            self.keys, self.values = self.kslab[:, :, : self.length], self.vslab[:, :, : self.length]

    return SlabLayer


DECODE_ATTENTION = "jpeglm_decode"


@functools.cache
def register_decode_attention() -> str:
    """Register (once) the attention the decoding steps run with: for one query token per row it is
    plain matmul -> softmax -> matmul over the cache view, with the query heads grouped by their
    KV head (no repeat_kv copy); anything longer (the prefill) goes to transformers' SDPA path.
    On CPU, torch's fused SDPA kernel is built for long queries: with a single query over a
    ~1.5k-token cache it was 1.1-2x slower than the three plain ops (head dim 16-64,
    bench/results/sample.md). The mask is SDPA's (boolean, or none)."""
    from transformers import AttentionInterface
    from transformers.integrations.sdpa_attention import sdpa_attention_forward
    from transformers.masking_utils import AttentionMaskInterface, sdpa_mask

    def decode_attention(module, query, key, value, attention_mask, scaling=None, dropout=0.0, **kwargs):
        b, hq, q_len, d = query.shape
        if q_len != 1 or dropout:
            return sdpa_attention_forward(module, query, key, value, attention_mask, scaling=scaling, dropout=dropout, **kwargs)
        hkv = key.shape[1]
        q = query.reshape(b, hkv, hq // hkv, d)  # q head h reads kv head h // groups (repeat_kv's order)
        scores = torch.matmul(q, key.transpose(-1, -2)) * (d**-0.5 if scaling is None else scaling)
        if attention_mask is not None:  # (B, 1, 1, L): True / 0.0 where attended
            m = attention_mask[:, :, :, : key.shape[-2]]
            scores = scores.masked_fill(~m, NEG_INF) if m.dtype == torch.bool else scores + m
        probs = torch.softmax(scores, dim=-1, dtype=torch.float32).to(value.dtype)
        return torch.matmul(probs, value).reshape(b, 1, hq, d), None

    AttentionInterface.register(DECODE_ATTENTION, decode_attention)
    AttentionMaskInterface.register(DECODE_ATTENTION, sdpa_mask)
    return DECODE_ATTENTION



@contextlib.contextmanager
def decode_attention_on(model, device):
    """On CPU, run a model that uses SDPA with the decode attention (see
    `register_decode_attention`) for this call only; the model's own setting is restored after.
    GPUs and other attention implementations are left as they are."""
    config = model.config
    before = getattr(config, "_attn_implementation", None)
    if torch.device(device).type != "cpu" or before != "sdpa":
        yield
        return
    config._attn_implementation = register_decode_attention()
    try:
        yield
    finally:
        config._attn_implementation = before


__all__ = ["DECODE_ATTENTION", "decode_attention_on", "model_inputs", "register_decode_attention", "slab_cache"]
