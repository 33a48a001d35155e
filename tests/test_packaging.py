"""The package as installed: configs are package data of `jpeglm.configs`, found from any folder, and
the sampler talks to the installed transformers without deprecated keywords (issue 13, items 4-5).

The wheel itself (built, installed in a fresh virtual environment, run from an empty folder) is
checked by `.ci/wheel_check`, which takes minutes; these are the fast parts of it.
"""

from __future__ import annotations

import importlib.resources
import warnings
from pathlib import Path

import pytest
import torch

from jpeglm.config import (
    CONFIG_KINDS,
    ConfigError,
    config_root,
    named_configs,
    resolve_config,
)
from jpeglm.sample import SamplerConfig, generate
from jpeglm.sample.kv_cache import model_inputs
from jpeglm.tokenizer import ByteTokenizer

REPO = Path(__file__).resolve().parents[1]


# --- configs as package data ------------------------------------------------------------------------
def test_named_configs_resolve_from_the_package_in_any_folder(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # nothing named configs/ here
    root = Path(str(importlib.resources.files("jpeglm.configs")))
    assert config_root() == root
    for kind in CONFIG_KINDS:
        assert named_configs(kind), f"no shipped {kind} configs"
    path = resolve_config("tiny-cpu", "train")
    assert path == root / "train" / "tiny-cpu.yaml" and path.is_file()
    assert resolve_config("zero1", "deepspeed") == root / "deepspeed" / "zero1.json"
    with pytest.raises(ConfigError, match="tiny-cpu"):  # the error lists the shipped names
        resolve_config("no-such-config", "train")


def test_package_data_globs_cover_every_config_file():
    """Every file under configs/ is shipped in the wheel: pyproject's package-data globs match it."""
    tomllib = pytest.importorskip("tomllib")
    if not (REPO / "pyproject.toml").is_file():
        pytest.skip("not a checkout")
    setuptools = tomllib.loads((REPO / "pyproject.toml").read_text())["tool"]["setuptools"]
    assert setuptools["package-dir"]["jpeglm.configs"] == "configs"
    globs = setuptools["package-data"]["jpeglm.configs"]
    files = [p.relative_to(REPO / "configs") for p in (REPO / "configs").rglob("*")
             if p.is_file() and p.suffix != ".py" and "__pycache__" not in p.parts]
    assert files
    missing = [str(f) for f in files if not any(f.match(g) for g in globs)]
    assert not missing, f"config files the wheel would not ship: {missing}"


def test_every_package_folder_is_in_the_wheel():
    """pyproject lists the packages by name: a new subpackage left out would be missing from the wheel
    (and every non-Python file in the package folders must be package data)."""
    tomllib = pytest.importorskip("tomllib")
    if not (REPO / "pyproject.toml").is_file():
        pytest.skip("not a checkout")
    setuptools = tomllib.loads((REPO / "pyproject.toml").read_text())["tool"]["setuptools"]
    dirs = {name: REPO / path for name, path in setuptools["package-dir"].items()}
    found = set()
    for name, folder in dirs.items():
        for init in folder.rglob("__init__.py"):
            sub = init.parent.relative_to(folder).parts
            found.add(".".join((name, *sub)))
    assert set(setuptools["packages"]) == found, "pyproject's [tool.setuptools] packages and the package folders differ"
    data = setuptools.get("package-data", {})
    for name in found:
        top = max((d for d in dirs if name == d or name.startswith(d + ".")), key=len)
        folder = dirs[top].joinpath(*name.split(".")[len(top.split(".")):])
        others = [p.name for p in folder.iterdir() if p.is_file() and p.suffix not in (".py", ".pyc")]
        assert not others or name in data, f"{name} has non-Python files {others} but no package-data entry"


# --- the sampler and transformers' cache keyword ------------------------------------------------------
def test_cache_keyword_follows_the_forward_signature():
    class NewModel:  # transformers >= 5.24: `cache`; `past_key_values` deprecated (removed in 5.40)
        def forward(self, input_ids=None, cache=None, use_cache=None, **kwargs): ...

    class OldModel:  # transformers < 5.24
        def forward(self, input_ids=None, past_key_values=None, use_cache=None, **kwargs): ...

    cache = object()
    assert model_inputs(NewModel(), cache) == {"cache": cache}
    assert model_inputs(OldModel(), cache) == {"past_key_values": cache}


def _from_transformers(w: warnings.WarningMessage) -> bool:
    # transformers' deprecation warnings point at the caller (torch's Module.__call__), so the
    # message is what names them.
    text = str(w.message)
    return "transformers" in w.filename or "past_key_values" in text or "transformers" in text


def test_sampling_uses_no_deprecated_transformers_keyword():
    from transformers import LlamaConfig, LlamaForCausalLM

    from jpeglm.codecs.jpeg import JpegCodec, JpegParams

    tok = ByteTokenizer()
    torch.manual_seed(0)
    cfg = LlamaConfig(vocab_size=tok.vocab_size, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                      num_attention_heads=2, num_key_value_heads=2, max_position_embeddings=256,
                      bos_token_id=1, eos_token_id=2, pad_token_id=3)
    model = LlamaForCausalLM(cfg).eval()
    codec = JpegCodec(JpegParams(size=16))
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        samples = generate(model, tok, codec, None, 2, SamplerConfig(max_new_tokens=6, constrain=False))
    assert len(samples) == 2 and all(1 <= s.n_new_tokens <= 6 for s in samples)
    bad = [f"{w.category.__name__}: {w.message}" for w in caught
           if issubclass(w.category, (FutureWarning, DeprecationWarning)) and _from_transformers(w)]
    assert not bad, bad
