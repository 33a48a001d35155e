"""Typed config of `jpeglm eval`: the systems, the held-out set, the protocol and the FID settings.

Loaded from configs/eval/*.yaml with `jpeglm.config.load_config(EvalConfig, path, overrides)`;
unknown keys are an error, `--set a.b=value` overrides any field, and the resolved config is saved
as OUT/config.yaml beside the report. One protocol for every system: the same held-out images,
prompt ratios, seeds and sample counts.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from jpeglm.config import from_dict


@dataclass
class SystemConfig:
    """One system to evaluate: a checkpoint; its codec comes from the checkpoint itself."""

    name: str = field(metadata={"help": "label in the report (unique)"})
    checkpoint: str = field(metadata={"help": "export dir or run dir (its latest export), or a released JPEG-LM dir"})

    def __post_init__(self):
        if not self.name or "/" in self.name or self.name.startswith("."):
            raise ValueError(f"system name {self.name!r} must be non-empty and usable as a folder name")


@dataclass
class SamplingConfig:
    """Sampler settings shared by every system (jpeglm.sample.SamplerConfig minus the seed)."""

    temperature: float = 1.0
    top_k: int = 50
    top_p: float = 1.0
    max_new_tokens: int | None = None
    batch_size: int = 8
    constrain: bool = True


@dataclass
class EvalConfig:
    systems: list = field(default_factory=list, metadata={"help": "list of {name, checkpoint}"})
    images: str | None = field(default=None, metadata={"help": "held-out image folder (recursive)"})
    videos: str | None = field(default=None, metadata={"help": "held-out video folder for video systems"})
    out: str = field(default="runs/eval", metadata={"help": "output directory (report + samples)"})
    num_images: int = field(default=16, metadata={"help": "held-out items used (prompts, reals, bpb); first N sorted"})
    image_size: int = field(default=256, metadata={"help": "side the held-out images are prepared at (crop + resize)"})
    prompt_ratios: list = field(default_factory=lambda: [0.25, 0.5, 0.75], metadata={"help": "top share of the picture given"})
    unconditional: bool = field(default=True, metadata={"help": "also sample without a prompt"})
    num_samples: int = field(default=2, metadata={"help": "samples per prompt"})
    num_unconditional: int | None = field(default=None, metadata={"help": "unconditional samples (default num_images * num_samples)"})
    seed: int = field(default=0, metadata={"help": "base seed; setting k uses seed + 100000 * k, sample i adds i"})
    sampler: SamplingConfig = field(default_factory=SamplingConfig)
    floor_codecs: list = field(default_factory=list, metadata={"help": "extra codec configs {name, params} for reconstruction floors"})
    bpb: bool = field(default=True, metadata={"help": "compute bits per byte / per pixel on the held-out set"})
    fid_backend: str = field(default="fid-helper", metadata={"help": "fid-helper or torch-fidelity"})
    fid_batch_size: int = field(default=32, metadata={"help": "images per Inception forward pass"})
    fid_bootstrap: int = field(default=0, metadata={"help": "bootstrap resamples per FID for its standard deviation (0 = off)"})
    device: str | None = field(default=None, metadata={"help": "torch device (default cuda when available)"})
    strip_prompts: int = field(default=3, metadata={"help": "prompts shown per completion strip"})
    strip_samples: int = field(default=4, metadata={"help": "samples shown per prompt in a strip"})
    i3d_weights: str | None = field(default=None, metadata={"help": "TorchScript I3D file (e.g. StyleGAN-V's i3d_torchscript.pt) for FVD of video systems; FVD is skipped without it"})
    title: str = field(default="jpeglm: which representation makes the better generator?")

    def __post_init__(self):
        self.systems = [s if isinstance(s, SystemConfig) else from_dict(SystemConfig, s, "systems[].") for s in self.systems]
        if isinstance(self.sampler, dict):
            self.sampler = from_dict(SamplingConfig, self.sampler, "sampler.")
        names = [s.name for s in self.systems]
        if len(set(names)) != len(names):
            raise ValueError(f"system names must be unique, got {names}")
        self.prompt_ratios = [float(r) for r in self.prompt_ratios]
        for r in self.prompt_ratios:
            if not 0.0 < r < 1.0:
                raise ValueError(f"prompt ratios must be in (0, 1), got {r}")
        if self.num_images < 2:
            raise ValueError("num_images must be >= 2 (FID needs two images per set)")
        if self.num_samples < 1:
            raise ValueError("num_samples must be >= 1")
        if self.fid_backend not in ("fid-helper", "torch-fidelity"):
            raise ValueError(f"fid_backend must be fid-helper or torch-fidelity, got {self.fid_backend!r}")
        for fc in self.floor_codecs:
            if not isinstance(fc, dict) or "name" not in fc:
                raise ValueError(f"floor_codecs entries are codec configs {{name, params}}, got {fc!r}")
