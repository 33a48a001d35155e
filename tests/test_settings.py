"""Each setting declared once: every config dataclass field has help, the commands' flags are
generated from those fields (and set what they name), and eval's records are what report.json holds."""

from __future__ import annotations

import dataclasses
import importlib
import json
import pkgutil
import re
import typing
from pathlib import Path

import pytest

import jpeglm
from jpeglm.cli import build_parser, flags
from jpeglm.config import ConfigError, load_config, save_config

REPO = Path(__file__).resolve().parents[1]
CONFIG_NAME = re.compile(r"(Config|Settings|Params|Options|Rule)$")


def _project_dataclasses() -> dict[str, type]:
    """Every dataclass defined in the project's modules (jpeglm, jpeglm.eval, jpeglm.data_prep), by qualified name."""
    import jpeglm.data_prep
    import jpeglm.eval

    found = {}
    for pkg in (jpeglm, jpeglm.eval, jpeglm.data_prep):
        names = [pkg.__name__] + [m.name for m in pkgutil.walk_packages(pkg.__path__, pkg.__name__ + ".")]
        for name in names:
            if name.endswith("__main__"):
                continue  # running them is their whole point
            module = importlib.import_module(name)
            for obj in vars(module).values():
                if isinstance(obj, type) and dataclasses.is_dataclass(obj) and obj.__module__ == module.__name__:
                    found[f"{obj.__module__}.{obj.__qualname__}"] = obj
    return found


def _config_dataclasses() -> dict[str, type]:
    """The settings and records: dataclasses named *Config / *Settings / *Params / *Options / *Rule,
    every codec's params and options types, eval's records, and the dataclasses nested in them."""
    from jpeglm.codecs.base import codec_class, codec_names
    from jpeglm.eval.records import RECORDS

    roots = [c for c in _project_dataclasses().values() if CONFIG_NAME.search(c.__name__)]
    for name in codec_names():
        cls = codec_class(name)
        roots += [cls.params_class, cls.options_type()]
    roots += list(RECORDS)
    seen: dict[str, type] = {}
    todo = list(roots)
    while todo:
        cls = todo.pop()
        key = f"{cls.__module__}.{cls.__qualname__}"
        if key in seen:
            continue
        seen[key] = cls
        hints = typing.get_type_hints(cls)
        for f in dataclasses.fields(cls):
            tp = flags.unwrap_optional(hints[f.name])
            item = typing.get_args(tp)[0] if typing.get_origin(tp) is list and typing.get_args(tp) else None
            todo += [t for t in (tp, item) if isinstance(t, type) and dataclasses.is_dataclass(t)]
    return seen


def test_every_config_dataclass_field_has_help():
    configs = _config_dataclasses()
    names = {c.__name__ for c in configs.values()}
    # the walk finds the project's settings (a rename that hides one from it fails here, not silently)
    assert {"TrainConfig", "ModelConfig", "DataConfig", "OptimConfig", "ValidationConfig", "VqConfig", "VqTrainConfig",
            "VqModelConfig", "EvalConfig", "SystemConfig", "FidSettings", "SamplerConfig", "PrepSettings", "ClipRule",
            "PaletteSettings", "BpeSettings", "JpegParams", "AvcParams", "SettingRow", "EvalResults"} <= names, names
    missing = [f"{key}.{f.name}" for key, cls in sorted(configs.items()) for f in dataclasses.fields(cls)
               if not str(f.metadata.get("help", "")).strip()]
    assert not missing, f"fields without help text (metadata={{'help': ...}}): {missing}"


def test_one_name_one_thing():
    """The training's validation section and `jpeglm eval`'s config are two classes with two names,
    and eval samples with the sampler's own settings class."""
    from jpeglm.eval.config import EvalConfig
    from jpeglm.sample.config import SamplerConfig
    from jpeglm.train.config import TrainConfig, ValidationConfig

    by_name: dict[str, set] = {}
    for key, cls in _project_dataclasses().items():
        by_name.setdefault(cls.__name__, set()).add(key)
    assert {k: v for k, v in by_name.items() if len(v) > 1} == {}
    hints = typing.get_type_hints
    assert hints(TrainConfig)["eval"] is ValidationConfig and hints(EvalConfig)["sampler"] is SamplerConfig


@pytest.mark.parametrize("argv", [["prep"], ["tokenizer", "train"], ["train"], ["sample"], ["vq", "train"], ["pixel", "fit"],
                                  ["eval"], ["fid"], ["demo"]])
def test_every_command_builds_its_help(argv):
    parser = build_parser(argv)
    with pytest.raises(SystemExit) as e:
        parser.parse_args([*argv, "--help"])
    assert e.value.code == 0


def _parse(argv):
    return build_parser(argv).parse_args(argv)


def test_train_flags_are_the_config_fields():
    from jpeglm.cli.train import build_parser as train_parser
    from jpeglm.cli.train import config_of
    from jpeglm.train.config import TrainConfig

    paths = [p for p, *_ in flags.config_fields(TrainConfig)]
    assert "max_steps" in paths and "optim.lr" in paths and "model_overrides" not in paths  # a dict: YAML / --set only
    help_text = train_parser().format_help()
    for p in paths:
        flag = "--" + p.replace("_", "-")
        assert flag in help_text, flag
    args = _parse(["train", "--config", "tiny-cpu", "--data", "d", "--out", "o", "--set", "optim.lr=0.5", "--optim.lr", "1e-3",
                   "--data.seq-len", "64", "--eval.interval", "7", "--optim.betas", "0.8", "0.9", "--deterministic",
                   "--precision", "fp32", "--max-steps", "11"])
    cfg, _ = config_of(args)
    assert cfg.optim.lr == 1e-3  # the flag beats --set, which beats the file
    assert cfg.data.seq_len == 64 and cfg.eval.interval == 7 and cfg.optim.betas == (0.8, 0.9)
    assert cfg.deterministic is True and cfg.precision == "fp32" and cfg.max_steps == 11
    base, _ = config_of(_parse(["train", "--config", "tiny-cpu", "--data", "d", "--out", "o"]))
    assert base == load_config(TrainConfig, REPO / "configs" / "train" / "tiny-cpu.yaml")  # no flag given: the file
    with pytest.raises(ConfigError, match="packing"):
        config_of(_parse(["train", "--data", "d", "--out", "o", "--set", "data.packing=zip"]))


def test_vq_flags_keep_their_names_and_set_their_fields():
    from jpeglm.baselines.vq_train import VqConfig

    args = _parse(["vq", "train", "--input", "x", "--out", "y", "--config", "tiny", "--max-steps", "3", "--device", "cpu",
                   "--threads", "1", "--channels", "8", "--channel-mult", "1", "2", "--quantizer", "vq", "model.code_dim=4"])
    overrides = [*args.overrides, *flags.config_overrides(VqConfig, args)]
    from jpeglm.config import resolve_config

    cfg = load_config(VqConfig, resolve_config("tiny", "vq"), overrides)
    assert (cfg.train.max_steps, cfg.train.device, cfg.train.threads) == (3, "cpu", 1)
    assert cfg.model.channels == 8 and cfg.model.channel_mult == (1, 2) and cfg.model.quantizer == "vq"
    assert cfg.model.code_dim == 4


def test_a_flag_clash_is_an_error_when_the_parser_is_built():
    import argparse

    from jpeglm.baselines.vq_train import VqConfig

    p = argparse.ArgumentParser()
    p.add_argument("--seed")
    with pytest.raises(TypeError, match="--seed .*train.seed"):
        flags.add_config_fields(p, VqConfig, flat=("model", "train"))


def test_pixel_and_tokenizer_flags_build_their_settings():
    from jpeglm.baselines.pixel_fit import PaletteSettings
    from jpeglm.data_prep.bpe import BpeSettings

    a = _parse(["pixel", "fit", "--input", "x", "--out", "p.npz", "--colors", "16", "--iters", "3"])
    assert flags.build(PaletteSettings, a) == PaletteSettings(colors=16, iters=3)
    b = _parse(["tokenizer", "train", "--data", "d", "--out", "o", "--vocab-size", "300", "--split", "val"])
    assert flags.build(BpeSettings, b) == BpeSettings(vocab_size=300, split="val")
    with pytest.raises(ValueError, match="colors"):
        PaletteSettings(colors=1)


def test_eval_flags_and_the_sampler_seed(tmp_path):
    from jpeglm.eval.config import EvalConfig
    from jpeglm.sample.config import SamplerConfig

    args = _parse(["eval", "--config", "tiny", "--sampler.top-k", "0", "--num-samples", "3", "--out", str(tmp_path / "o"),
                   "--no-sampler.constrain", "--prompt-ratios", "0.5", "--fid-backend", "torch-fidelity"])
    from jpeglm.config import resolve_config

    cfg = load_config(EvalConfig, resolve_config("tiny", "eval"), flags.config_overrides(EvalConfig, args))
    assert cfg.sampler.top_k == 0 and cfg.sampler.constrain is False and cfg.num_samples == 3
    assert cfg.prompt_ratios == [0.5] and cfg.out == str(tmp_path / "o") and cfg.fid_settings.backend == "torch-fidelity"
    assert cfg.sampler.max_new_tokens == 2048  # from the file: flags change only what they name
    # the harness seeds every sample itself: no flag, and a config that sets one is refused with the reason
    with pytest.raises(SystemExit):
        _parse(["eval", "--config", "tiny", "--sampler.seed", "5"])
    with pytest.raises(ConfigError, match="sampler.seed is not an eval setting.*seed"):
        load_config(EvalConfig, None, ["sampler.seed=5"])
    with pytest.raises(ValueError, match="sampler.seed"):
        EvalConfig(sampler=SamplerConfig(seed=3))
    # the resolved config the harness saves beside the report loads again
    save_config(cfg, tmp_path / "config.yaml")
    assert load_config(EvalConfig, tmp_path / "config.yaml") == cfg
    with pytest.raises(ConfigError, match="fid backend"):
        load_config(EvalConfig, None, ["fid_backend=pytorch-fid"])


@pytest.mark.parametrize("published_dir", ["pets", "pets-cond"])
def test_report_records_are_what_report_json_holds(tmp_path, published_dir):
    """The published pets results (real report.json files + publish.py's `training`; pets-cond: the
    class-balanced rows with cfg_scale and classes) read back into the records with no key left over,
    and a record written out has exactly its fields."""
    from jpeglm.eval.records import EvalResults, FloorResult, SettingRow, SystemResult
    from jpeglm.eval.report import write_report

    published = json.loads((REPO / "results" / published_dir / "results.json").read_text())
    fields = lambda cls: {f.name for f in dataclasses.fields(cls)}  # noqa: E731
    assert set(published) - {"report_files"} <= fields(EvalResults)
    for s in published["systems"]:
        assert set(s) - {"training"} <= fields(SystemResult)  # `training`: added by results/pets/publish.py
        for r in s["rows"]:
            assert set(r) <= fields(SettingRow)
    for f in published["floors"]:
        assert set(f) <= fields(FloorResult)
    assert "bytes_per_image" in fields(FloorResult) and "tokens_per_image" not in fields(FloorResult)

    back = EvalResults.from_json(published)
    assert back.systems[0].rows[0].fid == published["systems"][0]["rows"][0]["fid"]
    files = write_report(back, tmp_path)
    written = json.loads(files["json"].read_text())
    assert set(written) == fields(EvalResults) and set(written["systems"][0]) == fields(SystemResult)
    assert set(written["systems"][0]["rows"][0]) == fields(SettingRow) and set(written["floors"][0]) == fields(FloorResult)
    assert EvalResults.from_json(written) == back
    with pytest.raises(TypeError, match="no field"):
        back.systems[0].update(bpb=1.0, bytes_per_pixel=2.0)  # a misspelt key cannot be written
