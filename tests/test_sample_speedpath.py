"""The sampler's fast path: the preallocated KV cache (slab layers) and the CPU decode attention.

They must change only the speed: the same logits as transformers' `DynamicCache` + SDPA (float
rounding aside), greedy equal to `model.generate()` also with grouped KV heads and left padding,
the model's attention setting restored afterwards, and the cache rows dropped correctly.
"""

from __future__ import annotations

import pytest
import torch

from jpeglm.codecs.jpeg import JpegCodec, JpegParams
from jpeglm.sample import SamplerConfig, generate
from jpeglm.sample.kv_cache import decode_attention_on as _decode_attention_on
from jpeglm.sample.kv_cache import model_inputs
from jpeglm.sample.kv_cache import slab_cache as _slab_cache
from jpeglm.tokenizer import ByteTokenizer

pytestmark = pytest.mark.usefixtures("one_thread")


def gqa_llama(vocab: int, kv_heads: int = 2, seed: int = 0):
    """4 query heads over `kv_heads` KV heads: the decode attention groups query heads per KV head."""
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(seed)
    cfg = LlamaConfig(vocab_size=vocab, hidden_size=64, intermediate_size=96, num_hidden_layers=2, num_attention_heads=4,
                      num_key_value_heads=kv_heads, max_position_embeddings=1024, bos_token_id=1, eos_token_id=2, pad_token_id=3)
    return LlamaForCausalLM(cfg).eval()


@torch.inference_mode()
def _step_logits(model, cache, ids, attn, steps, device="cpu"):
    """Prefill `ids` (left-padded, `attn` its mask) then feed `steps` fixed tokens; the logits of each step."""
    pos = (attn.cumsum(-1) - 1).clamp(min=0)
    out = model(input_ids=ids, attention_mask=attn, position_ids=pos, **model_inputs(model, cache), use_cache=True, logits_to_keep=1)
    logits = [out.logits[:, -1]]
    nxt = pos[:, -1:] + 1
    for t in range(steps):
        attn = torch.cat([attn, attn.new_ones((attn.shape[0], 1))], 1)
        tok = torch.full((ids.shape[0], 1), 10 + t)
        out = model(input_ids=tok, attention_mask=attn, position_ids=nxt, **model_inputs(model, cache), use_cache=True)
        logits.append(out.logits[:, -1])
        nxt = nxt + 1
    return torch.stack(logits)


@pytest.mark.parametrize("kv_heads", [4, 2, 1])
def test_slab_cache_and_decode_attention_match_dynamic_cache(kv_heads):
    from transformers import DynamicCache

    model = gqa_llama(300, kv_heads)
    g = torch.Generator().manual_seed(0)
    ids = torch.randint(4, 300, (3, 40), generator=g)
    attn = torch.ones_like(ids)
    attn[1, :7] = 0  # left padding on two rows
    attn[2, :15] = 0
    ref = _step_logits(model, DynamicCache(), ids, attn, 12)
    with _decode_attention_on(model, "cpu"):
        assert model.config._attn_implementation != "sdpa"
        ours = _step_logits(model, _slab_cache(model, 40 + 12), ids, attn, 12)
    assert model.config._attn_implementation == "sdpa"  # restored
    torch.testing.assert_close(ours, ref, atol=1e-5, rtol=1e-5)


def test_slab_cache_drops_rows_like_dynamic_cache():
    from transformers import DynamicCache

    model = gqa_llama(300, 2)
    ids = torch.randint(4, 300, (4, 20), generator=torch.Generator().manual_seed(1))
    caches = [DynamicCache(), _slab_cache(model, 30)]
    with torch.inference_mode():
        for c in caches:
            model(input_ids=ids, **model_inputs(model, c), use_cache=True, logits_to_keep=1)
            c.batch_select_indices(torch.tensor([3, 1]))
        outs = [model(input_ids=torch.tensor([[5], [6]]), position_ids=torch.tensor([[20], [20]]), **model_inputs(model, c), use_cache=True).logits
                for c in caches]
    assert caches[1].get_seq_length() == 21
    torch.testing.assert_close(outs[1], outs[0], atol=1e-5, rtol=1e-5)


def test_slab_cache_overflow_is_an_error():
    model = gqa_llama(300, 2)
    with torch.inference_mode(), pytest.raises(RuntimeError, match="overflow"):
        model(input_ids=torch.randint(4, 300, (1, 12)), **model_inputs(model, _slab_cache(model, 8)), use_cache=True)


def _greedy_stop(ref: list[int], tok, budget: int) -> tuple[list[int], str]:
    """The ids and finish our sampler must give for generate()'s greedy ids `ref`: up to EOS (not
    kept), through the token that completes FF D9 (kept), else the whole budget."""
    prev = b""
    for i, t in enumerate(ref):
        if t == tok.eos_id:
            return ref[:i], "eos"
        b = tok.token_bytes(t) or b""
        if b"\xff\xd9" in prev + b:
            return ref[: i + 1], "eoi"
        prev = b[-1:] or prev
    assert len(ref) == budget
    return ref, "max_new_tokens"


@pytest.mark.parametrize("kv_heads", [2, 1])
def test_greedy_matches_generate_with_grouped_kv_heads_and_padding(kv_heads):
    """Two prompts of different lengths in one batch (left padding, rows finishing apart)."""
    tok = ByteTokenizer()
    codec = JpegCodec(JpegParams(size=64))
    model = gqa_llama(tok.vocab_size, kv_heads, seed=3)
    import numpy as np

    rng = np.random.default_rng(0)
    stream = codec.encode(rng.integers(0, 256, (64, 64, 3), dtype=np.uint8))
    prompts = [codec.prompt(stream, 0.25), codec.prompt(stream, 0.5)]
    ours = generate(model, tok, codec, prompts, 1, SamplerConfig(top_k=1, max_new_tokens=30, constrain=False, batch_size=2))
    assert model.config._attn_implementation == "sdpa"
    assert len(ours) == len(prompts)
    for p, s in zip(prompts, ours):
        ids = torch.tensor([tok.encode(p, bos=True, eos=False)])
        ref = model.generate(ids, attention_mask=torch.ones_like(ids), do_sample=False, max_new_tokens=30,
                             eos_token_id=tok.eos_id, pad_token_id=tok.pad_id)[0, ids.shape[1]:]
        ref = ref.tolist()
        # ours stops at EOS (not kept) or at a JPEG EOI; generate() only at EOS, then pads: where
        # ours must stop is read off generate()'s tokens (a prefix check alone passed on [])
        assert (s.new_token_ids, s.finish) == _greedy_stop(ref, tok, 30)


def test_attention_setting_restored_on_error_and_left_alone_elsewhere():
    model = gqa_llama(300, 2)
    with pytest.raises(KeyError), _decode_attention_on(model, "cpu"):
        raise KeyError("boom")
    assert model.config._attn_implementation == "sdpa"
    with _decode_attention_on(model, "meta"):  # not CPU: the model's own attention
        assert model.config._attn_implementation == "sdpa"
    model.config._attn_implementation = "eager"
    with _decode_attention_on(model, "cpu"):  # a model set to another attention keeps it
        assert model.config._attn_implementation == "eager"
