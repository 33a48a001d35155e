"""Tiny random models the sampling and app tests share (import as `from _models import tiny_llama`)."""

from __future__ import annotations

import torch


def tiny_llama(vocab_size: int, ctx: int = 2048, seed: int = 0):
    """A 2-layer, 32-wide random Llama over `vocab_size` tokens (bos 1, eos 2, pad 3), in eval mode."""
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(seed)
    cfg = LlamaConfig(vocab_size=vocab_size, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                      num_attention_heads=2, num_key_value_heads=2, max_position_embeddings=ctx,
                      bos_token_id=1, eos_token_id=2, pad_token_id=3)
    return LlamaForCausalLM(cfg).eval()
