"""Class-conditional systems in `jpeglm eval`: class-balanced samples at each guidance scale.

A system whose model has class tokens (trained on `jpeglm prep --labels` data; `system.class_names`
non-empty) gets, besides the prompt-ratio and unconditional settings, one setting per
`cfg_scales` entry, named `classes cfg=S`: `samples_per_class` samples of every class (never
random classes: the same count per class, class by class in id order, so FID compares the whole
class distribution), sampled with classifier-free guidance scale S (1 = the conditional model
alone). Each is scored like any other setting (FID against the held-out reals, decode failures),
its row carries `cfg_scale` and `classes`, and `plot_fid_vs_cfg` draws FID against the scale
(OUT/fid_vs_cfg.png). The setting seeds continue the harness's: setting k uses seed + 100000 k.
"""

from __future__ import annotations

import os
from pathlib import Path


def setting_name(scale: float) -> str:
    return f"classes cfg={scale:g}"


def class_names(system) -> tuple[str, ...]:
    """The classes a system can be sampled with (stand-in systems without the attribute have none)."""
    return tuple(getattr(system, "class_names", ()) or ())


class GuidedSystem:
    """A class-conditional system seen as an unconditional one by `run_setting`: `sample(None, n,
    seed)` draws `per_class` samples of every class with guidance `scale` (n is not used)."""

    def __init__(self, system, scale: float, per_class: int):
        self.system, self.scale, self.per_class = system, float(scale), int(per_class)
        self.codec = system.codec
        self.name = system.name
        self.setting = setting_name(scale)
        self.classes = list(class_names(system))

    def sample(self, prompts, num_samples: int, seed: int):
        if prompts is not None:
            raise ValueError("class-balanced settings sample without prompts")
        return self.system.sample(None, self.per_class, seed, classes=list(range(len(self.classes))),
                                  cfg_scale=self.scale)

    def label_row(self, row) -> None:
        row.update(setting=self.setting, cfg_scale=self.scale, classes=self.classes)


def class_settings(system, cfg, first_k: int) -> list[tuple[GuidedSystem, int]]:
    """(guided system, setting index k) for every guidance scale; none for an unconditional system."""
    if not class_names(system):
        return []
    return [(GuidedSystem(system, s, cfg.samples_per_class), first_k + j) for j, s in enumerate(cfg.cfg_scales)]


def plot_fid_vs_cfg(results, path: Path) -> Path | None:
    """FID against the guidance scale, one line per class-conditional system; None without any."""
    lines = []
    for s in results.systems:
        pts = sorted((r.cfg_scale, r.fid) for r in s.rows if r.cfg_scale is not None and r.fid is not None)
        if pts:
            lines.append((s.name, pts))
    if not lines:
        return None
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4.2), dpi=110)
    for name, pts in lines:
        xs, ys = zip(*pts)
        ax.plot(xs, ys, marker="o", label=name)
    ax.set_xlabel("classifier-free guidance scale (1 = no guidance)")
    ax.set_ylabel("FID (lower is better)")
    n = results.fid.get("n_note", "")
    ax.set_title("Class-balanced FID against guidance scale" + (f" ({n})" if n else ""))
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp.png")
    fig.savefig(tmp)
    plt.close(fig)
    os.replace(tmp, path)
    return path


__all__ = ["GuidedSystem", "class_names", "class_settings", "plot_fid_vs_cfg", "setting_name"]
