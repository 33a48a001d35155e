"""Checkpoints in Hugging Face format: the export written during training, and loading one back.

An export `OUT/checkpoints/step-NNNNNNN/` is a plain `save_pretrained` directory (config.json,
model.safetensors, generation_config.json) + the dataset's tokenizer (`save_pretrained`) + a
`jpeglm.yaml` holding the codec config (from the dataset manifest), the tokenizer config, the train
and model configs and the data dir. Exports are written into a hidden temp dir and renamed into
place; `OUT/checkpoints/latest` (a text file naming the newest export) is replaced atomically
last, so a crash mid-export leaves the previous good export and `latest` untouched.

`load_for_inference(path)` takes an export dir or a run dir (then its latest export); a dir with
config.json and a tokenizer but no jpeglm.yaml is the released JPEG-LM format (canonical JPEG
assumed, with a warning).
"""

from __future__ import annotations

import os
import shutil
import tempfile
import warnings
from dataclasses import dataclass, field
from pathlib import Path

import yaml

from jpeglm.config import atomic_write_text
from jpeglm.errors import UserError, disk_full_hint
from jpeglm.safepath import inside

META_FILE = "jpeglm.yaml"
LATEST = "latest"
FORMAT = "jpeglm-checkpoint"
TOKENIZER_FILES = ("tokenizer.json", "tokenizer.model", "tokenizer_config.json")


class CheckpointError(UserError, ValueError):
    """A path that is not a loadable checkpoint, or an export that could not be written."""


@dataclass
class Loaded:
    model: object
    tokenizer: object
    codec: object
    meta: dict = field(default_factory=dict)


def export_name(step: int) -> str:
    return f"step-{step:07d}"


def _versions() -> dict:
    import deepspeed
    import torch
    import transformers

    return {"torch": str(torch.__version__), "transformers": str(transformers.__version__), "deepspeed": str(deepspeed.__version__)}


def export_hf(run_dir: str | os.PathLike, step: int, config, state_dict: dict, tokenizer, meta: dict, keep_last: int) -> Path:
    """Write the HF export of `state_dict` (full, unwrapped) for `step`; rank 0 only.

    The weights go through a LlamaForCausalLM built on the meta device (no second copy of the
    weights) so `save_pretrained` writes exactly what `from_pretrained` expects."""
    import torch
    from transformers import LlamaForCausalLM

    ck = Path(run_dir) / "checkpoints"
    ck.mkdir(parents=True, exist_ok=True)
    name = export_name(step)
    final = ck / name
    remove_stale_exports(ck)
    tmp = Path(tempfile.mkdtemp(dir=ck, prefix=f".{name}.", suffix=".tmp"))
    try:
        with torch.device("meta"):
            model = LlamaForCausalLM(config)
        dtypes = {v.dtype for v in state_dict.values() if v.is_floating_point()}
        model.load_state_dict(state_dict, strict=True, assign=True)
        if len(dtypes) == 1:
            model.config.dtype = next(iter(dtypes))
        model.save_pretrained(tmp, safe_serialization=True)
        tokenizer.save_pretrained(tmp)
        meta = _bundle_codec(meta, tmp)
        body = {"format": FORMAT, "version": 1, "step": step, **meta, "versions": _versions()}
        atomic_write_text(tmp / META_FILE, yaml.safe_dump(body, sort_keys=False))
        missing = [f for f in ("config.json", META_FILE) if not (tmp / f).is_file()]
        if missing or not list(tmp.glob("*.safetensors")):
            raise CheckpointError(f"export {tmp} is incomplete (missing {missing or 'safetensors'})")
        if final.exists():  # the same step exported before (a resumed run): swap, never half-replace
            old = Path(tempfile.mkdtemp(dir=ck, prefix=f".{name}.", suffix=".old"))
            os.replace(final, old / name)
            os.replace(tmp, final)
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.replace(tmp, final)
    except OSError as e:
        shutil.rmtree(tmp, ignore_errors=True)
        raise CheckpointError(f"could not write the export {final}: {e}{disk_full_hint(e)}; the previous export "
                              f"{_latest_name(ck) or '(none)'} and checkpoints/latest are untouched") from e
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    atomic_write_text(ck / LATEST, name + "\n")
    prune(ck, keep_last, protect=name)
    return final


def remove_stale_exports(ck: Path) -> list[str]:
    """Delete the temporary folders of exports a killed run left (`.step-N.*.tmp` / `.old`, GBs at
    7B); the run's lock (jpeglm.lock) makes this process the only writer of `ck`."""
    removed = []
    for p in ck.glob(".step-*"):
        if p.is_dir() and p.name.endswith((".tmp", ".old")):
            shutil.rmtree(p, ignore_errors=True)
            removed.append(p.name)
    return removed


def _latest_name(ck: Path) -> str | None:
    try:
        return (ck / LATEST).read_text().strip() or None
    except OSError:
        return None


def _bundle_codec(meta: dict, dest: Path) -> dict:
    """The meta with its codec rebuilt from the dataset and bundled into the export: codecs that
    carry files (the VQ model) get their own copy there, so the export decodes with nothing else
    at hand."""
    from jpeglm.codecs.base import CodecError

    if not meta.get("codec"):
        return meta
    try:
        codec = _codec(meta["codec"], Path(meta["data"]) if meta.get("data") else None)
    except CodecError as e:
        raise CheckpointError(f"the codec's files are missing from the dataset ({e})") from e
    return {**meta, "codec": codec.bundle(dest).to_config()}


def prune(folder: Path, keep_last: int, protect: str | None = None) -> list[str]:
    """Delete all but the newest `keep_last` step-* dirs (never `protect`)."""
    steps = sorted(p for p in folder.glob("step-*") if p.is_dir())
    removed = []
    for p in steps[: max(0, len(steps) - keep_last)]:
        if p.name != protect:
            shutil.rmtree(p, ignore_errors=True)
            removed.append(p.name)
    return removed


def resolve_export(path: str | os.PathLike) -> Path:
    """An export dir, or a run dir -> the export its checkpoints/latest names; a hub id
    `ORG/NAME[@REVISION]` that is no local path -> its snapshot in the HF cache (jpeglm.hub)."""
    if not Path(path).exists():
        from jpeglm.hub import HubError, parse_hub_id, resolve_model

        if parse_hub_id(str(path)) is None:
            raise CheckpointError(f"{path}: no such checkpoint or run directory, and not a hub id (ORG/NAME[@REVISION])")
        try:
            path = resolve_model(path)
        except HubError as e:
            raise CheckpointError(str(e)) from e
    path = Path(path)
    ck = path / "checkpoints"
    if ck.is_dir() and not (path / "config.json").is_file():
        latest = ck / LATEST
        if not latest.is_file():
            raise CheckpointError(f"{path}: a run directory without a finished export (no checkpoints/latest)")
        path = inside(ck, latest.read_text(errors="replace").strip(), what=f"the export named by {latest}")
        if not path.is_dir():
            raise CheckpointError(f"{latest} names {path.name}, which does not exist")
    return path


def load_for_inference(path: str | os.PathLike, device: str = "cpu", dtype=None) -> Loaded:
    """Model (eval mode, on `device`), tokenizer, codec and the jpeglm.yaml meta of a checkpoint."""
    from transformers import AutoModelForCausalLM

    from jpeglm.tokenizer import load_tokenizer

    path = resolve_export(path)
    if not (path / "config.json").is_file():
        raise CheckpointError(
            f"{path}: not a checkpoint (no config.json); expected a jpeglm export, a jpeglm run dir, "
            "or a released JPEG-LM dir (HF Llama + tokenizer)"
        )
    meta_path = path / META_FILE
    if meta_path.is_file():
        try:
            meta = yaml.safe_load(meta_path.read_text()) or {}
        except (OSError, UnicodeDecodeError, yaml.YAMLError) as e:
            raise CheckpointError(f"{meta_path}: malformed ({type(e).__name__}: {str(e).splitlines()[0]}); "
                                  "restore it from the run, or export the checkpoint again") from None
        if not isinstance(meta, dict) or meta.get("format") != FORMAT or "codec" not in meta:
            raise CheckpointError(f"{meta_path}: not a jpeglm checkpoint description (format/codec missing)")
        codec = _codec(meta["codec"], path)
    else:
        if not any((path / f).is_file() for f in TOKENIZER_FILES):
            raise CheckpointError(f"{path}: config.json but no tokenizer and no {META_FILE}: not a loadable checkpoint")
        from jpeglm.codecs.base import RELEASED_FORMAT_CODEC, codec_from_config

        warnings.warn(
            f"{path} has no {META_FILE}: treating it as a released JPEG-LM checkpoint and assuming the canonical "
            "JPEG settings (256x256, quality 25, 4:2:0, restart marker every MCU, tables stripped)",
            stacklevel=2,
        )
        meta, codec = {"format": "released-jpeg-lm"}, codec_from_config(RELEASED_FORMAT_CODEC)
    try:
        tokenizer = load_tokenizer(path)
    except (OSError, ValueError, RuntimeError, KeyError, TypeError) as e:  # json, sentencepiece, HF files
        raise CheckpointError(f"{path}: its tokenizer files are unreadable ({type(e).__name__}: {e}); "
                              "copy them again from the run's export") from e
    kwargs = {"dtype": dtype} if dtype is not None else {}
    from safetensors import SafetensorError

    try:
        model = _load_weights(AutoModelForCausalLM, path, kwargs)
    except CheckpointError:
        raise
    except (OSError, ValueError, SafetensorError) as e:  # a cut-short safetensors file, a bad config.json
        raise CheckpointError(f"{path}: the model files cannot be loaded ({type(e).__name__}: {str(e)[:200]}); "
                              "the checkpoint is truncated or damaged: use an earlier step or copy it again") from e
    model = model.to(device).eval()
    # sample within the context it was trained at, not max_position_embeddings (jpeglm.sample.budget)
    from jpeglm.sample.budget import CONTEXT_ATTR, trained_context

    setattr(model.config, CONTEXT_ATTR, trained_context(meta, int(model.config.max_position_embeddings)))
    return Loaded(model=model, tokenizer=tokenizer, codec=codec, meta=meta)


def _load_weights(auto_cls, path: Path, kwargs: dict):
    """from_pretrained, safetensors first; a pickled pytorch_model.bin (the released JPEG-LM's one
    file) only with weights_only=True, so a pickle that would run code is refused, never run."""
    import pickle

    if any(path.glob("*.safetensors")):
        return auto_cls.from_pretrained(path, use_safetensors=True, **kwargs)
    if not any(path.glob("pytorch_model*.bin")):
        raise CheckpointError(f"{path}: no weights (neither *.safetensors nor pytorch_model.bin)")
    try:
        return auto_cls.from_pretrained(path, use_safetensors=False, weights_only=True, **kwargs)
    except pickle.UnpicklingError as e:
        raise CheckpointError(
            f"{path}: pytorch_model.bin holds more than tensors, refused (loaded with weights_only=True; {e})".splitlines()[0]
        ) from e


def _codec(cfg: dict, base_dir: Path):
    from jpeglm.codecs.base import codec_from_config

    return codec_from_config(cfg, base_dir=base_dir)
