"""`SamplerConfig`: the sampling settings, declared once (the `jpeglm sample` flags, the `sampler:`
section of an eval config and the Python API all come from these fields). No torch."""

from __future__ import annotations

from dataclasses import dataclass, field


def _s(default, text: str, **meta):
    return field(default=default, metadata={"help": text, **meta})


@dataclass
class SamplerConfig:
    """Sampling settings. Defaults are those of the JPEG-LM release (temperature 1, top-k 50)."""

    temperature: float = _s(1.0, "softmax temperature; 0 = greedy (JPEG-LM release: 1.0)")
    top_k: int = _s(50, "sample among the k most likely tokens; 0 = off (JPEG-LM release: 50)")
    top_p: float = _s(1.0, "nucleus sampling mass; 1.0 = off (JPEG-LM release: 1.0)")
    max_new_tokens: int | None = _s(
        None, "token budget per sample (default: the context the model was trained at minus the prompt: the "
        "checkpoint's data.seq_len, 12,288 for the released JPEG-LM, never more than max_position_embeddings; the KV "
        "cache is sized by it); a budget given may go past the trained context, up to max_position_embeddings; "
        "constrained samples are steered to a complete file before it runs out")
    seed: int = _s(0, "sample i (counting over all prompts) uses seed + i, whatever the batch size")
    batch_size: int = _s(8, "sequences sampled together")
    constrain: bool = _s(True, "constrain sampling to the codec's grammar (JPEG scan, H.264 NAL units) and code "
                         "tokens to code ids; --no-constrain samples freely")
    steer: bool = _s(True, "steer rows near their token budget to a complete file (constrained sampling only)")
    cfg_scale: float = _s(1.0, "classifier-free guidance scale S for class-conditional models: logits = uncond + "
                          "S x (cond - uncond) at every step; 1 = off (the conditional model alone), 0 = unconditional")

    def __post_init__(self):
        if self.temperature < 0:
            raise ValueError(f"temperature must be >= 0, got {self.temperature}")
        if self.top_k < 0:
            raise ValueError(f"top_k must be >= 0, got {self.top_k}")
        if not 0.0 < self.top_p <= 1.0:
            raise ValueError(f"top_p must be in (0, 1], got {self.top_p}")
        if self.max_new_tokens is not None and self.max_new_tokens < 1:
            raise ValueError(f"max_new_tokens must be >= 1, got {self.max_new_tokens}")
        if not 0.0 <= self.cfg_scale < float("inf"):
            raise ValueError(f"cfg_scale must be a finite number >= 0, got {self.cfg_scale}")
        if self.batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {self.batch_size}")


__all__ = ["SamplerConfig"]
