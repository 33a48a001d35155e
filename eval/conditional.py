"""Class-conditional systems in `jpeglm eval`: class-balanced samples at each guidance scale.

A system whose model has class tokens (trained on `jpeglm prep --labels` data; `system.class_names`
non-empty) gets, besides the prompt-ratio and unconditional settings, one setting per
`cfg_scales` entry, named `classes cfg=S`: `samples_per_class` samples of every class (never
random classes: the same count per class, class by class in id order, so FID compares the whole
class distribution), sampled with classifier-free guidance scale S (1 = the conditional model
alone). Each is drawn and scored like any other setting (chunks split across processes, resumed
from its per-sample files; FID, precision / recall against the held-out reals, decode failures),
its row carries `cfg_scale` and `classes`, and `plot_fid_vs_cfg` draws FID against the scale
(OUT/fid_vs_cfg.png). The setting seeds continue the harness's: setting k uses seed + 100000 k.
"""

from __future__ import annotations

from pathlib import Path


def setting_name(scale: float) -> str:
    return f"classes cfg={scale:g}"


def class_names(system) -> tuple[str, ...]:
    """The classes a system can be sampled with (stand-in systems without the attribute have none)."""
    return tuple(getattr(system, "class_names", ()) or ())


def class_plans(system, cfg, first_k: int, seed_stride: int) -> list:
    """One `SettingPlan` (eval/setting.py) per guidance scale, setting index first_k + j; none for an
    unconditional system. Sample i is of class i // samples_per_class: the jobs go through the same
    chunked, resumable, many-process path as every setting, and are scored the same way (FID,
    precision / recall)."""
    from jpeglm.eval.setting import SettingPlan

    names = class_names(system)
    if not names:
        return []
    per = int(cfg.samples_per_class)
    return [SettingPlan(None, cfg.seed + seed_stride * (first_k + j), per * len(names), per, cfg_scale=float(s),
                        classes=names, per_class=per) for j, s in enumerate(cfg.cfg_scales)]


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
    from jpeglm.eval.report import save_fid_plot

    fig, ax = plt.subplots(figsize=(7, 4.2), dpi=110)
    for name, pts in lines:
        xs, ys = zip(*pts)
        ax.plot(xs, ys, marker="o", label=name)
    return save_fid_plot(results, fig, ax, path, "classifier-free guidance scale (1 = no guidance)",
                         "Class-balanced FID against guidance scale")


__all__ = ["class_names", "class_plans", "plot_fid_vs_cfg", "setting_name"]
