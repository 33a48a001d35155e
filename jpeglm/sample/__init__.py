"""Sampling: prompts -> token ids -> symbols -> media, with the codec's grammar as a constraint.

sampler.py (the batched KV-cache loop: `generate`, `SamplerConfig`, `Sample`) and constrain.py
(a byte grammar as a mask over token ids). The `jpeglm sample` command is jpeglm/cli/sample.py.
"""

from jpeglm.sample.sampler import CacheTooLargeError, PromptTooLongError, Sample, SamplerConfig, filter_logits, generate

__all__ = ["CacheTooLargeError", "PromptTooLongError", "Sample", "SamplerConfig", "filter_logits", "generate"]
