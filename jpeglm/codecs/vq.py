"""VqCodec: images <-> a row-major grid of learned VQ/LFQ codes (the VQ baseline). Uses torch.

A VQ checkpoint is a directory written by `jpeglm vq train`:
    DIR/model.safetensors   the autoencoder's weights
    DIR/vq_config.yaml      {model: VqModelConfig, train: ...}; only `model` is needed here
    DIR/metrics.json        held-out PSNR / codebook usage (informative)

The codec's params store the directory (`model_dir`) and the weights' sha256, so a dataset or LM
checkpoint notices if the weights under that path change. Datasets and checkpoints should carry
their own copy: `codec.copy_model(dest_dir)` copies the two files to `dest_dir/vq_model/` and
returns a codec whose `model_dir` is the relative path "vq_model"; `VqCodec.from_config(cfg,
base_dir=dest_dir)` (or `codec_from_config(cfg, base_dir=...)`) resolves it again.
"""

from __future__ import annotations

import hashlib
import os
from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np
import torch
import yaml
from PIL import Image

from jpeglm.codecs.base import Codec, CodecError, DecodeReport
from jpeglm.codecs.pixel import fit_code_grid
from jpeglm.codecs.vq_model import VqAutoencoder, VqModelConfig
from jpeglm.config import from_dict
from jpeglm.media import open_image, prepare_image
from jpeglm.safepath import check_tree_inside, copy_file_inside

WEIGHTS_NAME = "model.safetensors"
CONFIG_NAME = "vq_config.yaml"
MODEL_SUBDIR = "vq_model"


class VqCheckpointError(CodecError):
    """A VQ checkpoint directory that is missing, incomplete, or whose weights do not fit its config."""


@dataclass(frozen=True)
class VqParams:
    """What a dataset/checkpoint stores to rebuild the codec (see the module docstring)."""

    model_dir: str = field(default="", metadata={"help": "VQ checkpoint dir; relative paths resolve against the caller's base_dir"})
    sha256: str = field(default="", metadata={"help": "sha256 of model.safetensors; checked on load when set"})
    size: int = field(default=256, metadata={"help": "image side the tokenizer encodes and decodes (from the model config)"})
    grid: int = field(default=16, metadata={"help": "codes per side (size / downsampling)"})
    codes: int = field(default=16384, metadata={"help": "codebook size (number of distinct codes)"})
    quantizer: str = field(default="lfq", metadata={"help": "'lfq' or 'vq' (informative)"})


@dataclass(frozen=True)
class VqOptions:
    """What `jpeglm prep --codec vq` builds the codec from."""

    vq_model: str = field(default="", metadata={"help": "vq: checkpoint folder written by `jpeglm vq train`", "metavar": "DIR"})


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def load_vq_model(model_dir: str | os.PathLike, map_location: str = "cpu") -> tuple[VqAutoencoder, VqModelConfig]:
    """Read DIR/vq_config.yaml + DIR/model.safetensors; a mismatch raises VqCheckpointError."""
    from safetensors.torch import load_file

    d = Path(model_dir)
    if not (d / CONFIG_NAME).is_file() or not (d / WEIGHTS_NAME).is_file():
        raise VqCheckpointError(f"{d} is not a VQ checkpoint: it needs {CONFIG_NAME} and {WEIGHTS_NAME} (written by `jpeglm vq train`)")
    data = yaml.safe_load((d / CONFIG_NAME).read_text()) or {}
    if not isinstance(data, dict) or "model" not in data:
        raise VqCheckpointError(f"{d / CONFIG_NAME} has no 'model' section")
    cfg = from_dict(VqModelConfig, data["model"], where="model.")
    model = VqAutoencoder(cfg)
    state = load_file(str(d / WEIGHTS_NAME), device=map_location)
    own = model.state_dict()
    missing = sorted(set(own) - set(state))
    unexpected = sorted(set(state) - set(own))
    wrong = sorted(k for k in set(own) & set(state) if own[k].shape != state[k].shape)
    if missing or unexpected or wrong:
        parts = []
        if wrong:
            parts.append("shape mismatch: " + ", ".join(f"{k} {tuple(state[k].shape)} vs config {tuple(own[k].shape)}" for k in wrong[:3]))
        if missing:
            parts.append(f"missing {len(missing)} tensor(s), e.g. {missing[0]}")
        if unexpected:
            parts.append(f"{len(unexpected)} unexpected tensor(s), e.g. {unexpected[0]}")
        raise VqCheckpointError(f"{d}: {WEIGHTS_NAME} does not match {CONFIG_NAME} ({'; '.join(parts)})")
    model.load_state_dict(state)
    model.eval()
    return model, cfg


class VqCodec(Codec):
    """Images <-> (grid*grid,) int64 codes of a trained VQ/LFQ tokenizer, row-major."""

    name = "vq"
    params_class = VqParams
    symbol_kind = "codes"
    description = "codes of a learned VQ/LFQ image tokenizer (the VQ-LM baseline; needs --vq-model)"
    options_class = VqOptions

    def __init__(self, params: VqParams | None = None, model: VqAutoencoder | None = None, device: str = "cpu"):
        """Normally built with `from_pretrained` / `from_config`; `model` lets tests and the trainer
        wrap an in-memory network (then `params.model_dir` may be empty)."""
        super().__init__(params)
        self.device = torch.device(device)
        if model is None:
            if not self.params.model_dir:
                raise VqCheckpointError("VqCodec needs a trained model: use VqCodec.from_pretrained(DIR)")
            model, _ = load_vq_model(self.params.model_dir, map_location="cpu")
        self.model = model.to(self.device).eval()
        cfg = model.cfg
        self.params = replace(self.params, size=cfg.image_size, grid=cfg.grid, codes=cfg.num_codes, quantizer=cfg.quantizer)
        # where the weights are (params.model_dir may be relative to a dataset or checkpoint dir)
        self.source_dir = Path(self.params.model_dir).resolve() if self.params.model_dir else None

    # --- construction -------------------------------------------------------------------------
    @classmethod
    def from_pretrained(cls, model_dir: str | os.PathLike, device: str = "cpu") -> "VqCodec":
        """Load DIR/model.safetensors + DIR/vq_config.yaml. The absolute path goes into the params
        (use `copy_model` to make a dataset or checkpoint self-contained)."""
        d = Path(model_dir).resolve()
        model, _ = load_vq_model(d)
        return cls(VqParams(model_dir=str(d), sha256=_sha256(d / WEIGHTS_NAME)), model=model, device=device)

    @classmethod
    def from_options(cls, options: VqOptions) -> "VqCodec":
        if not options.vq_model:
            raise VqCheckpointError("--codec vq needs --vq-model DIR (a checkpoint from `jpeglm vq train`)")
        return cls.from_pretrained(options.vq_model)

    @classmethod
    def from_config(cls, cfg: dict, base_dir: str | os.PathLike | None = None, device: str = "cpu") -> "VqCodec":
        params = from_dict(VqParams, cfg.get("params", {}))
        d = Path(params.model_dir)
        if base_dir is not None:  # a config read from a dataset or checkpoint: its files stay inside it
            d = check_tree_inside(base_dir, params.model_dir, what="VQ model_dir")
        if not d.is_dir():
            hint = "" if base_dir is not None else " (a relative model_dir needs base_dir: the dataset or checkpoint dir)"
            raise VqCheckpointError(f"VQ model dir {d} does not exist{hint}")
        if params.sha256 and _sha256(d / WEIGHTS_NAME) != params.sha256:
            raise VqCheckpointError(f"{d / WEIGHTS_NAME} is not the model this config was made with (sha256 differs)")
        codec = cls.from_pretrained(d, device=device)
        codec.params = replace(codec.params, model_dir=params.model_dir)  # keep the stored (relative) path
        codec.source_dir = d.resolve()  # where the weights really are, for copy_model
        return codec

    def copy_model(self, dest_dir: str | os.PathLike, subdir: str = MODEL_SUBDIR) -> "VqCodec":
        """Copy the weights + config into dest_dir/subdir (atomically per file) and return a codec
        whose to_config() names that copy by the relative path `subdir`."""
        if not self.params.model_dir:
            raise VqCheckpointError("this codec wraps an in-memory model; save it with jpeglm.baselines.vq_train.save_checkpoint first")
        src = self.source_dir
        dst = Path(dest_dir) / subdir
        dst.mkdir(parents=True, exist_ok=True)
        if src.resolve() != dst.resolve():
            for name in (WEIGHTS_NAME, CONFIG_NAME):  # never a symlink's target outside the model dir
                copy_file_inside(src, name, dst / name)
        out = VqCodec(replace(self.params, model_dir=subdir), model=self.model, device=str(self.device))
        out.source_dir = dst.resolve()
        return out

    def bundle(self, dest_dir) -> "VqCodec":
        """The dataset or checkpoint carries its own copy of the weights (`copy_model`)."""
        return self.copy_model(dest_dir)

    # --- the contract --------------------------------------------------------------------------
    def symbols_per_item(self) -> int:
        return self.params.grid**2

    def prompt_steps(self, rule: str | None = None) -> int:
        """Prompts keep whole rows of codes."""
        return self.params.grid

    def pixels_per_item(self) -> int:
        return self.params.size**2

    def prepare(self, media) -> np.ndarray:
        """Any image media -> uint8 (size, size, 3), the tokenizer's input."""
        if isinstance(media, np.ndarray):
            if media.ndim != 3 or media.shape[2] != 3 or media.dtype != np.uint8:
                raise ValueError(f"expected a uint8 HxWx3 array, got {media.dtype} {media.shape}")
            media = Image.fromarray(media, "RGB")
        return np.asarray(prepare_image(open_image(media), self.params.size))

    @property
    def image_size(self) -> int:
        """Side of decoded images (the tokenizer's training size)."""
        return self.params.size

    @property
    def num_codes(self) -> int:
        return self.params.codes

    def bits_per_symbol(self) -> float:
        return float(np.log2(self.params.codes))

    def _to_tensor(self, media) -> torch.Tensor:
        a = self.prepare(media).astype(np.float32) / 127.5 - 1.0
        return torch.from_numpy(a).permute(2, 0, 1)

    def encode(self, media) -> np.ndarray:
        return self.encode_batch([media])[0]

    def encode_batch(self, media_list: list, batch_size: int = 16) -> list[np.ndarray]:
        """Encode many images in batches (what data prep should call). Bad images raise MediaError."""
        tensors = [self._to_tensor(m) for m in media_list]
        out: list[np.ndarray] = []
        for i in range(0, len(tensors), batch_size):
            x = torch.stack(tensors[i : i + batch_size]).to(self.device)
            idx = self.model.encode_indices(x).cpu().numpy().astype(np.int64)
            out += [row.reshape(-1) for row in idx]
        return out

    def _gray(self) -> np.ndarray:
        return np.full((self.params.size, self.params.size, 3), 128, np.uint8)

    def decode(self, symbols) -> tuple[np.ndarray, DecodeReport]:
        """Never raises: wrong lengths are padded (with the last row repeated) or truncated,
        out-of-range codes clamped, both reported as `repaired`; nothing usable -> gray `failed`."""
        n = self.params.grid**2
        try:
            codes = np.asarray(symbols if symbols is not None else [], dtype=np.int64).reshape(-1)
        except (TypeError, ValueError, OverflowError) as e:
            return self._gray(), DecodeReport("failed", f"symbols are not integers ({type(e).__name__})")
        if codes.size == 0:
            return self._gray(), DecodeReport("failed", "no codes")
        reasons, details = [], {"n_codes": int(codes.size)}
        if codes.size != n:
            reasons.append(f"{codes.size} codes for a {self.params.grid}x{self.params.grid} grid")
            codes = fit_code_grid(codes, self.params.grid)
        bad = (codes < 0) | (codes >= self.num_codes)
        if bad.any():
            reasons.append(f"{int(bad.sum())} code(s) outside 0..{self.num_codes - 1} clamped")
            codes = np.clip(codes, 0, self.num_codes - 1)
        try:
            idx = torch.from_numpy(codes.reshape(1, self.params.grid, self.params.grid)).to(self.device)
            x = self.model.decode_indices(idx)[0].float().cpu()
            img = ((x.clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8).permute(1, 2, 0).numpy()
        except Exception as e:  # never raise on model output; say why instead
            return self._gray(), DecodeReport("failed", f"decoder error: {type(e).__name__}: {e}")
        if reasons:
            return img, DecodeReport("repaired", "; ".join(reasons), details)
        return img, DecodeReport("ok")

    def prompt(self, symbols, ratio: float, rule: str | None = None) -> np.ndarray:
        """The first round(ratio * grid) full rows of codes (the same picture area as JPEG's MCU rows)."""
        if not 0.0 <= ratio <= 1.0:
            raise ValueError(f"prompt ratio must be in [0, 1], got {ratio}")
        self.prompt_rule(rule)  # one rule; an unknown name is a ValueError
        rows = int(round(ratio * self.params.grid))
        return np.asarray(symbols, dtype=np.int64).reshape(-1)[: rows * self.params.grid].copy()
