"""Every file under configs/model, configs/train and configs/deepspeed validates and builds."""

from __future__ import annotations

import json

import pytest

from jpeglm.config import ConfigError, load_config
from jpeglm.config import config_root
from jpeglm.train.config import ModelConfig, TrainConfig, resolve_deepspeed_config, resolve_model_config

CONFIG_ROOT = config_root()

MODELS = sorted((CONFIG_ROOT / "model").glob("*.yaml"))
TRAINS = sorted((CONFIG_ROOT / "train").glob("*.yaml"))
DEEPSPEEDS = sorted((CONFIG_ROOT / "deepspeed").glob("*.json"))
# the size a model file's name promises, in parameters (embeddings of a ~300-token vocabulary included)
NOMINAL = {"25m": 25e6, "100m": 100e6, "350m": 350e6, "1b": 1e9, "7b": 6.7e9}


def test_the_promised_configs_exist():
    assert {"tiny", "25m", "100m", "350m", "1b", "7b"} <= {p.stem for p in MODELS}
    assert {"zero1", "zero2", "zero3", "zero3_offload"} <= {p.stem for p in DEEPSPEEDS}
    assert {"tiny-cpu", "350m", "1b", "7b"} <= {p.stem for p in TRAINS}  # the ones README.md names (was: any)


@pytest.mark.parametrize("path", MODELS, ids=lambda p: p.stem)
def test_model_config_builds_a_llama_config(path):
    from transformers import LlamaConfig

    m = load_config(ModelConfig, path)
    assert m.vocab_size is None, "vocab_size comes from the dataset's tokenizer"
    assert m.max_position_embeddings >= 12288
    cfg = LlamaConfig(vocab_size=320, **{k: v for k, v in vars(m).items() if k != "vocab_size"})
    assert cfg.hidden_size // cfg.num_attention_heads in (16, 64, 128)
    if path.stem in NOMINAL:
        assert 0.85 < m.num_params(320) / NOMINAL[path.stem] < 1.15


@pytest.mark.parametrize("name", ["tiny", "25m"])
def test_parameter_count_formula_matches_the_real_model(name):
    from transformers import LlamaConfig, LlamaForCausalLM

    m = load_config(ModelConfig, CONFIG_ROOT / "model" / f"{name}.yaml")
    model = LlamaForCausalLM(LlamaConfig(vocab_size=276, **{k: v for k, v in vars(m).items() if k != "vocab_size"}))
    assert m.num_params(276) == sum(p.numel() for p in model.parameters())


def test_7b_is_the_llama2_7b_shape():
    m = load_config(ModelConfig, CONFIG_ROOT / "model" / "7b.yaml")
    assert (m.hidden_size, m.intermediate_size, m.num_hidden_layers, m.num_attention_heads) == (4096, 11008, 32, 32)


@pytest.mark.parametrize("path", TRAINS, ids=lambda p: p.stem)
def test_train_config_validates_and_resolves(path):
    cfg = load_config(TrainConfig, path)
    model = resolve_model_config(cfg, path.parent)
    assert cfg.data.seq_len <= model.max_position_embeddings
    ds = resolve_deepspeed_config(cfg, path.parent)
    assert ds["zero_optimization"]["stage"] in (1, 2, 3)


@pytest.mark.parametrize("path", DEEPSPEEDS, ids=lambda p: p.stem)
def test_deepspeed_config_fills_from_the_train_config(path):
    from jpeglm.train.distributed import fill_deepspeed_config

    raw = json.loads(path.read_text())
    ds = fill_deepspeed_config(raw, micro_batch=2, grad_accum=4, grad_clip=1.0, precision="bf16")
    assert ds["train_micro_batch_size_per_gpu"] == 2 and ds["gradient_accumulation_steps"] == 4
    assert ds["gradient_clipping"] == 1.0 and ds["bf16"]["enabled"] is True and "fp16" not in ds
    assert "auto" not in json.dumps(ds)
    fp32 = fill_deepspeed_config(raw, micro_batch=1, grad_accum=1, grad_clip=0.0, precision="fp32")
    assert fp32["bf16"]["enabled"] is False


def test_overrides_and_unknown_keys():
    cfg = load_config(TrainConfig, CONFIG_ROOT / "train" / "tiny-cpu.yaml", ["optim.lr=1e-3", "data.packing=pad"])
    assert cfg.optim.lr == 1e-3 and isinstance(cfg.optim.lr, float) and cfg.data.packing == "pad"
    with pytest.raises(ConfigError, match="unknown key"):
        load_config(TrainConfig, None, ["optim.lrr=1"])
    with pytest.raises(ConfigError, match="packing"):
        load_config(TrainConfig, None, ["data.packing=zip"])
    with pytest.raises(ConfigError, match="not found"):
        resolve_model_config(load_config(TrainConfig, None, ["model=13b"]))
    with pytest.raises(ConfigError, match="divisible"):
        load_config(ModelConfig, None, ["hidden_size=65"])


def test_deepspeed_config_disagreeing_with_the_train_config_is_refused(tmp_path):
    from jpeglm.train.distributed import fill_deepspeed_config

    with pytest.raises(ValueError, match="gradient_accumulation_steps"):
        fill_deepspeed_config({"gradient_accumulation_steps": 2}, micro_batch=1, grad_accum=4, grad_clip=1.0,
                              precision="bf16")
    bad = tmp_path / "fp16.json"
    bad.write_text(json.dumps({"fp16": {"enabled": True}, "zero_optimization": {"stage": 2}}))
    with pytest.raises(ConfigError, match="fp16"):
        resolve_deepspeed_config(load_config(TrainConfig, None, [f"deepspeed={bad}"]))


def test_cli_config_lookup_by_name_and_max_steps_flag():
    from jpeglm.cli.train import build_parser, config_of, load_train_config

    args = build_parser().parse_args(["--config", "tiny-cpu", "--data", "d", "--out", "o", "--set", "optim.micro_batch=8",
                                      "--max-steps", "7"])
    cfg, base = config_of(args)
    assert cfg.max_steps == 7 and cfg.optim.micro_batch == 8 and base == CONFIG_ROOT / "train"
    with pytest.raises(ConfigError, match="not found"):
        load_train_config("no-such-config", [])
