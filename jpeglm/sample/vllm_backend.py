"""`jpeglm sample --backend vllm`: the same job on vLLM (GPU, optional extra `pip install vllm`)."""

from __future__ import annotations

import time

from jpeglm.sample.sampler import Sample, SamplerConfig, _prompt_jobs


def generate_vllm(model_dir, tokenizer, codec, prompts, num_samples: int, cfg: SamplerConfig | None = None,
                  context: int | None = None) -> list[Sample]:
    """The same job on vLLM (GPU, optional extra `pip install vllm`): the checkpoint is a plain
    Llama, so vLLM serves it as is; we hand it token ids, never text. No grammar constraint (vLLM's
    logits-processor API differs between its versions): the decode reports say what came out.
    UNTESTED here (no GPU in the development sessions); see bench/results/sample.md. `context`: the
    positions vLLM sizes its cache for (jpeglm.sample.budget.context_length; None: the model's own)."""
    cfg = cfg or SamplerConfig()
    try:
        from vllm import LLM, SamplingParams
        from vllm.inputs import TokensPrompt
    except ImportError as e:
        raise ImportError("--backend vllm needs vLLM on a CUDA machine: pip install vllm") from e
    jobs = _prompt_jobs(tokenizer, codec, prompts, num_samples, cfg, None)
    llm = LLM(model=str(model_dir), skip_tokenizer_init=True, seed=cfg.seed, **({"max_model_len": context} if context else {}))
    params = [
        SamplingParams(
            temperature=cfg.temperature, top_k=cfg.top_k if cfg.top_k > 0 else -1, top_p=cfg.top_p,
            max_tokens=cfg.max_new_tokens or (_context_length_vllm(llm) - len(j.ids)), seed=j.seed,
            stop_token_ids=[tokenizer.eos_id], detokenize=False,
        )
        for j in jobs
    ]
    t0 = time.perf_counter()
    results = llm.generate([TokensPrompt(prompt_token_ids=j.ids) for j in jobs], params)
    secs = time.perf_counter() - t0
    samples = []
    for j, res in zip(jobs, results):
        new = [t for t in res.outputs[0].token_ids if t != tokenizer.eos_id]
        symbols = tokenizer.decode(j.ids + new)
        media, report = codec.decode(symbols)
        finish = "eos" if res.outputs[0].finish_reason == "stop" else "max_new_tokens"
        samples.append(Sample(symbols, media, report, j.prompt_index, j.seed, len(j.ids), len(new), secs, finish,
                              new_token_ids=new))
    return samples


def _context_length_vllm(llm) -> int:
    return int(llm.llm_engine.model_config.max_model_len)


__all__ = ["generate_vllm"]
