"""Typed configs of pretraining: the model shape, data packing, optimiser, precision, schedule.

`TrainConfig` is what `configs/train/*.yaml` holds; `ModelConfig` what `configs/model/*.yaml`
holds. Both load through jpeglm.config (unknown keys rejected, dotted overrides). A train config
names its model and DeepSpeed configs by name (`tiny`, `zero2`) or by path; `resolve_*` finds them.
No torch here, so configs validate quickly and in any process.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

from jpeglm.config import ConfigError, from_dict, load_yaml, resolve_config

PRECISIONS = ("bf16", "fp32")
ATTENTION = ("auto", "sdpa", "eager", "flash_attention_2")


def _as_floats(obj, names: tuple[str, ...]) -> None:
    """YAML 1.1 reads `1e-3` (no dot) as a string; accept it as the float everyone means."""
    for name in names:
        value = getattr(obj, name)
        if isinstance(value, str):
            try:
                setattr(obj, name, float(value))
            except ValueError:
                raise ValueError(f"{name} must be a number, got {value!r}") from None


def _help(text: str, default=None, factory=None, **meta):
    """A field with its help text (the `jpeglm train` flag, the YAML key's documentation) and any
    other flag metadata (jpeglm/cli/flags.py: choices, cli=False, ...)."""
    if factory is not None:
        return field(default_factory=factory, metadata={"help": text, **meta})
    return field(default=default, metadata={"help": text, **meta})


@dataclass
class ModelConfig:
    """A LlamaConfig's shape. `vocab_size` stays None: it comes from the dataset's tokenizer."""

    hidden_size: int = _help("width of the residual stream", 64)
    intermediate_size: int = _help("width of the SwiGLU MLP", 128)
    num_hidden_layers: int = _help("number of transformer blocks", 2)
    num_attention_heads: int = _help("query heads", 4)
    num_key_value_heads: int | None = _help("key/value heads (None = num_attention_heads, i.e. no GQA)", None)
    max_position_embeddings: int = _help("longest context the RoPE tables are built for", 12288)
    rope_theta: float = _help("RoPE base frequency", 10000.0)
    rms_norm_eps: float = _help("RMSNorm epsilon", 1e-5)
    initializer_range: float = _help("std of the normal weight init", 0.02)
    tie_word_embeddings: bool = _help("share input and output embeddings (Llama-2 does not)", False)
    vocab_size: int | None = _help("leave unset: taken from the tokenizer; if set it must match it", None)

    def __post_init__(self):
        _as_floats(self, ("rope_theta", "rms_norm_eps", "initializer_range"))
        for name in ("hidden_size", "intermediate_size", "num_hidden_layers", "num_attention_heads", "max_position_embeddings"):
            if int(getattr(self, name)) <= 0:
                raise ValueError(f"{name} must be positive")
        if self.hidden_size % self.num_attention_heads:
            raise ValueError(f"hidden_size {self.hidden_size} is not divisible by num_attention_heads {self.num_attention_heads}")
        kv = self.num_key_value_heads or self.num_attention_heads
        if self.num_attention_heads % kv:
            raise ValueError(f"num_attention_heads {self.num_attention_heads} is not a multiple of num_key_value_heads {kv}")

    def num_params(self, vocab_size: int) -> int:
        """Parameter count of the LlamaForCausalLM this shape builds (for MFU and sanity checks)."""
        h, f, n = self.hidden_size, self.intermediate_size, self.num_hidden_layers
        kv = (self.num_key_value_heads or self.num_attention_heads) * (h // self.num_attention_heads)
        per_layer = h * h * 2 + h * kv * 2 + 3 * h * f + 2 * h  # q,o + k,v + gate/up/down + 2 norms
        emb = vocab_size * h * (1 if self.tie_word_embeddings else 2)
        return n * per_layer + emb + h


@dataclass
class DataConfig:
    """How shards become training sequences (the `data:` section)."""

    packing: str = _help("'concat': records joined and cut into seq_len chunks (the paper); 'pad': one record per sequence", "concat",
                         choices=["concat", "pad"])
    seq_len: int = _help("tokens per training sequence (<= the model's max_position_embeddings)", 12288)
    long_records: str = _help("pad packing only: 'truncate' records longer than seq_len or 'skip' them (counted in the log)", "skip",
                              choices=["truncate", "skip"])
    class_dropout: float | None = _help(
        "labelled datasets (prep --labels): the rate at which a record's class token becomes the null class, so one "
        "model learns the conditional and the unconditional distribution (classifier-free guidance); default 0.1 for "
        "labelled data, 0 otherwise", None)

    def __post_init__(self):
        if self.class_dropout is not None:
            self.class_dropout = float(self.class_dropout)
            if not 0.0 <= self.class_dropout <= 1.0:
                raise ValueError(f"data.class_dropout must be in [0, 1], got {self.class_dropout}")
        if self.packing not in ("concat", "pad"):
            raise ValueError(f"data.packing must be 'concat' or 'pad', got {self.packing!r}")
        if self.long_records not in ("truncate", "skip"):
            raise ValueError(f"data.long_records must be 'truncate' or 'skip', got {self.long_records!r}")
        if self.seq_len < 2:
            raise ValueError("data.seq_len must be at least 2")


@dataclass
class OptimConfig:
    """Optimiser, schedule and batch (the `optim:` section)."""

    lr: float = _help("peak learning rate of AdamW", 3e-4)
    min_lr_ratio: float = _help("the cosine decays to lr * min_lr_ratio at max_steps", 0.1)
    betas: tuple[float, float] = _help("AdamW betas", (0.9, 0.95))
    eps: float = _help("AdamW epsilon", 1e-8)
    weight_decay: float = _help("AdamW decoupled weight decay (not on norms and biases)", 0.1)
    warmup_steps: int = _help("linear warmup steps, then cosine decay", 100)
    grad_clip: float = _help("clip the global gradient norm to this (0 = off)", 1.0)
    grad_accum: int = _help("micro-batches accumulated per optimizer step", 1)
    micro_batch: int = _help("sequences per micro-batch per process", 1)

    def __post_init__(self):
        _as_floats(self, ("lr", "min_lr_ratio", "eps", "weight_decay", "grad_clip"))
        if len(tuple(self.betas)) != 2:
            raise ValueError("optim.betas needs two values")
        self.betas = tuple(float(b) for b in self.betas)
        if self.lr <= 0 or not 0 <= self.min_lr_ratio <= 1:
            raise ValueError("optim.lr must be > 0 and optim.min_lr_ratio in [0, 1]")
        if self.grad_accum < 1 or self.micro_batch < 1 or self.warmup_steps < 0 or self.grad_clip < 0:
            raise ValueError("optim.grad_accum and micro_batch must be >= 1, warmup_steps and grad_clip >= 0")


@dataclass
class ValidationConfig:
    """Periodic validation during training (the `eval:` section of a train config; `jpeglm eval`,
    the FID harness, is jpeglm.eval.config.EvalConfig)."""

    interval: int = _help("validate every this many steps (0 = only at the end)", 500)
    max_records: int = _help("val records scored per validation (whole records, for bits per byte)", 256)
    batch_size: int = _help("records per validation forward pass per process", 4)

    def __post_init__(self):
        if self.interval < 0 or self.max_records < 1 or self.batch_size < 1:
            raise ValueError("eval.interval must be >= 0, eval.max_records and eval.batch_size >= 1")


@dataclass
class TrainConfig:
    """One pretraining run (configs/train/*.yaml). Every field is also a `jpeglm train` flag
    (`--max-steps`, `--optim.lr`, ...; jpeglm/cli/train.py)."""

    model: str = _help("model shape: a name in configs/model (tiny, 100m, ...) or a YAML path", "tiny")
    model_overrides: dict = _help("ModelConfig fields to change on top of the named model (YAML or --set "
                                  "model_overrides.hidden_size=128)", None, factory=dict, cli=False)
    deepspeed: str = _help("DeepSpeed config: a name in configs/deepspeed (zero1, zero2, zero3, zero3_offload) or a JSON path", "zero2")
    data: DataConfig = _help("how shards become sequences", None, factory=DataConfig)
    optim: OptimConfig = _help("optimiser and batch", None, factory=OptimConfig)
    eval: ValidationConfig = _help("periodic validation on the val split during training", None,
                                   factory=ValidationConfig)
    precision: str = _help("'bf16' (GPU and CPU) or 'fp32'; fp16 is not offered", "bf16")
    activation_checkpointing: bool = _help("recompute activations in backward to save memory", False)
    attn_implementation: str = _help("'auto' = flash_attention_2 when flash_attn is installed and on GPU, else sdpa", "auto",
                                     choices=list(ATTENTION))
    max_steps: int = _help("optimizer steps to train to; not compared on --resume, so a finished run trains on", 1000)
    log_interval: int = _help("write a log.jsonl line every this many steps", 10)
    ckpt_interval: int = _help("DeepSpeed state + HF export every this many steps (and at the end)", 500)
    keep_last: int = _help("keep this many HF exports and DeepSpeed states", 3)
    seed: int = _help("seed of the weight init and of the data order", 0)
    deterministic: bool = _help("torch deterministic algorithms (exact resume on CPU; slower on GPU)", False)

    def __post_init__(self):
        if self.precision not in PRECISIONS:
            hint = " (fp16 is refused: it needs loss scaling and does not run on CPU; use bf16)" if self.precision == "fp16" else ""
            raise ValueError(f"precision must be one of {', '.join(PRECISIONS)}, got {self.precision!r}{hint}")
        if self.attn_implementation not in ATTENTION:
            raise ValueError(f"attn_implementation must be one of {', '.join(ATTENTION)}")
        if self.max_steps < 1 or self.log_interval < 1 or self.ckpt_interval < 1 or self.keep_last < 1:
            raise ValueError("max_steps, log_interval, ckpt_interval and keep_last must be >= 1")


def resolve_model_config(cfg: TrainConfig, base: Path | None = None) -> ModelConfig:
    """The ModelConfig a train config names, with its `model_overrides` applied."""
    data = load_yaml(resolve_config(cfg.model, "model", base))
    data.update(cfg.model_overrides or {})
    return from_dict(ModelConfig, data, where="model.")


def resolve_deepspeed_config(cfg: TrainConfig, base: Path | None = None) -> dict:
    """The DeepSpeed JSON a train config names, as a dict (its "auto" values still unfilled)."""
    path = resolve_config(cfg.deepspeed, "deepspeed", base)
    try:
        ds = json.loads(path.read_text())
    except json.JSONDecodeError as e:
        raise ConfigError(f"{path}: not valid JSON ({e})") from e
    if not isinstance(ds, dict):
        raise ConfigError(f"{path}: a DeepSpeed config must be a JSON object")
    stage = ds.get("zero_optimization", {}).get("stage", 0)
    if stage not in (0, 1, 2, 3):
        raise ConfigError(f"{path}: zero_optimization.stage must be 0..3, got {stage!r}")
    for key in ("fp16",):
        if ds.get(key, {}).get("enabled") is True:
            raise ConfigError(f"{path}: fp16 is not supported; set precision: bf16 in the train config")
    return ds
