"""One system under one setting: draw its samples (this rank's chunks, resumable), then score them (rank 0).

Jobs: sample i of a setting (prompted: prompt i // num_samples; unconditional: none; class-balanced,
eval/conditional.py: class i // samples_per_class) has the seed `setting seed + i`, whatever process
draws it. The jobs are cut into chunks of the sampler's batch
size; each rank draws its chunks (eval/parallel.py) and writes every sample as soon as its chunk is
done, with its features (eval/store.py). Scoring reads the per-sample files in index order and
accumulates features as running sums (eval/featstats.py), so neither images nor all features of
50k samples sit in memory, and a killed run that is started again only draws what is missing.
"""

from __future__ import annotations

import dataclasses
import json
import os
import traceback
from dataclasses import dataclass

import numpy as np
from jpeglm.eval.conditional import setting_name as class_setting_name
from jpeglm.eval.featstats import (
    FeatureFile,
    RunningStats,
    frechet_from_features,
    frechet_from_stats,
    precision_recall,
)
from jpeglm.eval.fid import NUM_FEATURES, bootstrap_fid_std
from jpeglm.eval.parallel import chunked
from jpeglm.eval.records import DecodeFailure, SampleEntry, SamplesManifest, SettingRow
from jpeglm.eval.report import UNCOND, prompt_view
from jpeglm.eval.store import FeatureWriter, SampleStore


STATS_BLOCK = 512  # samples per running-sum update (one 2048x2048 product each)
PR_K = 3  # k of the k-NN balls of improved precision / recall (Kynkäänniemi et al. 2019)


def setting_name(ratio: float | None) -> str:
    return UNCOND if ratio is None else f"ratio={ratio:g}"


def as_media(a: np.ndarray):
    """What a codec's encode gets: a PIL image for pictures (codecs take an RGB image of their own
    size as canonical, without re-checking the minimum-side policy), the array for clips."""
    from PIL import Image

    return Image.fromarray(a) if a.ndim == 3 else a


def frames_of(media) -> list[np.ndarray]:
    """Images as they are; videos (T,H,W,3) flattened to their frames for FID."""
    out = []
    for m in media:
        out.extend(list(m) if m.ndim == 4 else [m])
    return out


@dataclass
class SettingPlan:
    """The jobs of one setting."""

    ratio: float | None
    seed: int
    n: int
    per_prompt: int  # samples per prompt (prompted settings)
    cfg_scale: float | None = None  # class-balanced settings (eval/conditional.py): the guidance scale
    classes: tuple[str, ...] = ()  # ... the class names, sampled in id order
    per_class: int = 0  # ... samples of each class

    @property
    def name(self) -> str:
        return class_setting_name(self.cfg_scale) if self.cfg_scale is not None else setting_name(self.ratio)

    @property
    def folder(self) -> str:
        return self.name.replace("=", "_").replace(" ", "_")

    def prompt_index(self, i: int) -> int | None:
        return None if self.ratio is None else i // self.per_prompt

    def class_index(self, i: int) -> int | None:
        return i // self.per_class if self.classes else None


def plan_for(ratio: float | None, k: int, n_items: int, cfg, seed_stride: int) -> SettingPlan:
    seed = cfg.seed + seed_stride * k
    if ratio is None:
        return SettingPlan(None, seed, cfg.num_unconditional or n_items * cfg.num_samples, cfg.num_samples)
    return SettingPlan(ratio, seed, n_items * cfg.num_samples, cfg.num_samples)


def _runs(idx: list[int]) -> list[list[int]]:
    """Consecutive runs of sorted indices: each is one sampling call with consecutive seeds."""
    out: list[list[int]] = []
    for i in idx:
        if out and out[-1][-1] == i - 1:
            out[-1].append(i)
        else:
            out.append([i])
    return out


def draw(system, reals, plan: SettingPlan, store: SampleStore, fid, ranks, chunk_size: int, bar=None) -> None:
    """Draw this rank's unfinished samples of the setting and write each as its chunk finishes."""
    codec = system.codec
    for ci, chunk in ranks.mine(list(enumerate(chunked(plan.n, chunk_size)))):
        todo = [i for i in chunk if not store.done(i)]
        if bar is not None:
            bar.update(1)
        if not todo:
            continue
        store.clear_error(ci)
        try:
            for run in _runs(todo):
                prompts = None
                if plan.ratio is not None:
                    cache: dict[int, object] = {}
                    for i in run:
                        pi = plan.prompt_index(i)
                        if pi not in cache:
                            cache[pi] = codec.prompt(codec.encode(as_media(reals[pi])), plan.ratio)
                    prompts = [cache[plan.prompt_index(i)] for i in run]
                import time

                t0 = time.perf_counter()
                if plan.classes:  # one job each: sample(classes=[c]) draws num_samples of each class, in order
                    drawn = system.sample(None, 1, plan.seed + run[0], classes=[plan.class_index(i) for i in run],
                                          cfg_scale=plan.cfg_scale)
                elif prompts is not None:
                    drawn = system.sample(prompts, 1, plan.seed + run[0])
                else:
                    drawn = system.sample(None, len(run), plan.seed + run[0])
                seconds = (time.perf_counter() - t0) / max(1, len(run))
                if len(drawn) != len(run):
                    raise RuntimeError(f"the system returned {len(drawn)} samples for {len(run)} jobs")
                _write_drawn(store, run, drawn, plan, fid, seconds)
        except Exception as e:  # noqa: BLE001 - a broken system gets its row with the reason, never a crash
            store.set_error(ci, f"sampling failed: {type(e).__name__}: {e}\n{traceback.format_exc(limit=5)}")
            return


def _write_drawn(store, run, drawn, plan, fid, seconds) -> None:
    good = [d.status != "failed" for d in drawn]
    frames = [frames_of([np.asarray(d.media)]) for d in drawn]
    flat = [f for fs, g in zip(frames, good) if g for f in fs]
    feats = fid.features(flat).astype(np.float32) if flat else np.zeros((0, NUM_FEATURES), np.float32)
    at = 0
    for i, d, fs, g in zip(run, drawn, frames, good):
        mine = feats[at : at + len(fs)] if g else np.zeros((0, NUM_FEATURES), np.float32)
        at += len(fs) if g else 0
        side = {"seed": plan.seed + i, "prompt_index": plan.prompt_index(i), "class_index": plan.class_index(i),
                "status": d.status, "reason": d.reason,
                "n_tokens": int(d.n_tokens), "details": dict(d.details or {}), "seconds": seconds}
        store.write(i, np.asarray(d.media), side, mine)


# ------------------------------------------------------------------------------------------------
# scoring (rank 0)


@dataclass
class FeatureSet:
    """Features of a set of images on disk (for precision / recall and small-N FID) and their stats.
    `file` is None for reference statistics loaded from a file (FID only)."""

    file: FeatureFile | None
    mu: np.ndarray
    sigma: np.ndarray
    n: int


def feature_set(path, stats: RunningStats | None = None, block: int = 4096) -> FeatureSet:
    ff = FeatureFile(path)
    if stats is None:
        stats = RunningStats(ff.shape[1])
        for s in range(0, len(ff), block):
            stats.add(ff[s : s + block])
    sigma = stats.sigma if stats.n >= 2 else np.zeros((ff.shape[1],) * 2)
    return FeatureSet(ff, stats.mean, sigma, stats.n)


def fid_between(fid, real: FeatureSet, fake: FeatureSet):
    """FidResult of fake against real, exact in either form (eval/featstats.py): small sets
    (n_real + n_fake <= 2048, their features a few MB) from the features, larger ones or reference
    statistics without features from the running mean and covariance."""
    if real.n < 2 or fake.n < 2:
        return fid.result(None, real.n, fake.n, reason=f"FID needs >= 2 images per set ({real.n} real, {fake.n} generated)")
    if real.file is not None and real.n + fake.n <= NUM_FEATURES:
        return fid.result(frechet_from_features(real.file[:], fake.file[:]), real.n, fake.n)
    return fid.result(frechet_from_stats(real.mu, real.sigma, fake.mu, fake.sigma), real.n, fake.n)


def pr_or_reason(real: FeatureSet | None, fake: FeatureSet, device) -> tuple[float | None, float | None, str]:
    if real is None or real.file is None:
        return None, None, "needs the held-out features (reference statistics alone have none)"
    if real.n <= PR_K or fake.n <= PR_K:
        return None, None, f"needs more than {PR_K} images per set ({real.n} real, {fake.n} generated)"
    p, r = precision_recall(real.file, fake.file, k=PR_K, device=device)
    return p, r, ""


def score(store: SampleStore, plan: SettingPlan, cfg, fid, real: FeatureSet, pr_real: FeatureSet | None,
          manifest: SamplesManifest, video: bool, reals, prompt_cut: dict | None = None,
          prompt_shown: np.ndarray | None = None) -> tuple[SettingRow, list[dict]]:
    """The setting's row from its files, plus the aggregates (features.npy, samples.npz, manifest.json).
    `prompt_cut`: the codec's prompt region at the setting's ratio, recorded in the row and manifest;
    `prompt_shown`: that region as a mask over an item (codec.prompt_mask), shaded in the strip."""
    row = SettingRow(setting=plan.name, prompt_ratio=plan.ratio, prompt_cut=prompt_cut, seed=plan.seed,
                     samples_dir=str(store.dir))
    if plan.cfg_scale is not None:
        row.update(cfg_scale=plan.cfg_scale, classes=list(plan.classes))
    errors = store.errors()
    missing = [i for i in range(plan.n) if not store.done(i)]
    if errors or missing:
        head = errors[0].split("\n", 1) if errors else [f"{len(missing)} of {plan.n} samples were not drawn", ""]
        row.update(fid_reason=head[0], failure_rate=1.0, traceback=head[1] if len(head) > 1 and head[1] else None)
        return row, []
    n = plan.n
    failed = np.zeros(n, bool)  # one pass over the sidecars, keeping only sums and one flag per sample
    repaired = tokens = seconds = got = want = 0
    for i in range(n):
        s = store.sidecar(i)
        failed[i] = s["status"] == "failed"
        repaired += s["status"] == "repaired"
        tokens += s["n_tokens"]
        seconds += s["seconds"]
        got += s["details"].get("decoded_frames", 0)
        want += s["details"].get("expected_frames", 0)
    row.update(n_samples=n, failure_rate=float(failed.mean()), repaired_rate=repaired / n, tokens_per_image=tokens / n,
               seconds_per_image=seconds / n)
    stats = RunningStats(NUM_FEATURES)
    fw = FeatureWriter(store.dir / "features.npy", NUM_FEATURES)
    block: list[np.ndarray] = []
    for i in range(n):  # blocks of STATS_BLOCK samples by index: the same sums for any number of processes
        f = store.features(i)
        if len(f):
            block.append(f)
            fw.add(f)
        if block and ((i + 1) % STATS_BLOCK == 0 or i == n - 1):
            stats.add(np.concatenate(block))
            block = []
    fake = feature_set(fw.close(), stats)
    if video:
        row.decoded_frame_rate = float(got / max(1, want))
        from jpeglm.eval.fvd import fvd_or_reason

        clips = [store.media(i) for i in range(n) if not failed[i]]
        row.fvd, row.fvd_reason = fvd_or_reason(cfg.i3d_weights, list(reals), clips, device=fid.device)
    store.remove_stale(n)  # an earlier eval's files past this run's samples, killed runs' temporaries
    if not store.write_npz(n):
        (store.dir / "samples.npz").unlink(missing_ok=True)  # samples of different shapes: no ADM input
    _write_manifest(store, n, dataclasses.replace(manifest, prompt_ratio=plan.ratio, prompt_cut=prompt_cut))
    n_good = n - sum(failed)
    if fake.n >= 2:
        res = fid_between(fid, real, fake)
    else:
        res = fid.result(None, real.n, fake.n, reason=f"{n_good} of {n} samples decoded; FID needs >= 2")
    row.update(fid=res.value, fid_reason=res.reason, fid_n=res.n_fake)
    row.precision, row.recall, row.pr_reason = pr_or_reason(pr_real, fake, fid.device)
    if cfg.fid_bootstrap and res.value is not None and real.file is not None:
        row.fid_std = bootstrap_fid_std(real.file[:], fake.file[:], reps=cfg.fid_bootstrap, seed=plan.seed)
    return row, _strip_rows(store, failed, plan, reals, cfg, prompt_shown)


def _write_manifest(store: SampleStore, n: int, manifest: SamplesManifest) -> None:
    """manifest.json, its `samples` streamed from the sidecars one at a time (50k entries never sit in
    memory as records); `decode_failures` are the failed ones."""
    head = dataclasses.replace(manifest, num_samples=n, samples=[], decode_failures=[]).to_json()
    failures = []
    tmp = store.dir / ".manifest.json.tmp"
    with open(tmp, "w") as f:
        for k, (key, value) in enumerate(head.items()):
            f.write(("{\n  " if k == 0 else ",\n  ") + json.dumps(key) + ": ")
            if key == "samples":
                f.write("[")
                for i in range(n):
                    s = store.sidecar(i)
                    entry = SampleEntry(file=f"{store.name(i)}.png", seed=s["seed"], prompt_index=s["prompt_index"],
                                        class_index=s.get("class_index"), status=s["status"], reason=s["reason"],
                                        n_tokens=s["n_tokens"])
                    f.write(("\n    " if i == 0 else ",\n    ") + json.dumps(entry.to_json(), default=str))
                    if s["status"] == "failed":
                        failures.append(DecodeFailure(index=i, reason=s["reason"]).to_json())
                f.write("\n  ]" if n else "]")
            elif key == "decode_failures":
                f.write(json.dumps(failures, default=str))
            else:
                f.write(json.dumps(value, default=str))
        f.write("\n}\n")
    os.replace(tmp, store.dir / "manifest.json")


def _strip_rows(store: SampleStore, failed: np.ndarray, plan: SettingPlan, reals, cfg, shown=None) -> list[dict]:
    def pic(m):
        return m[len(m) // 2] if m.ndim == 4 else m  # video: the middle frame

    rows = []
    if plan.classes:  # a row per class: its first samples
        for c in range(min(cfg.strip_prompts, len(plan.classes))):
            part = list(range(c * plan.per_class, min(plan.n, c * plan.per_class + cfg.strip_samples)))
            media = [pic(store.media(i)) for i in part]
            rows.append({"prompt": np.full_like(media[0], 128), "samples": media, "real": None,
                         "failed": [bool(failed[i]) for i in part]})
        return rows
    if plan.ratio is None:
        idx = list(range(min(plan.n, cfg.strip_samples * cfg.strip_prompts)))
        for s in range(0, len(idx), cfg.strip_samples):
            part = idx[s : s + cfg.strip_samples]
            media = [pic(store.media(i)) for i in part]
            rows.append({"prompt": np.full_like(media[0], 128), "samples": media, "real": None,
                         "failed": [bool(failed[i]) for i in part]})
        return rows
    if shown is not None and shown.ndim == 3:
        shown = shown[len(shown) // 2]  # video: the middle frame, as `pic`
    for pi in range(min(cfg.strip_prompts, len(reals))):
        part = [i for i in range(pi * plan.per_prompt, min(plan.n, (pi + 1) * plan.per_prompt))][: cfg.strip_samples]
        real = pic(np.asarray(reals[pi]))
        rows.append({"prompt": prompt_view(real, plan.ratio, shown), "samples": [pic(store.media(i)) for i in part],
                     "real": real, "failed": [bool(failed[i]) for i in part]})
    return rows
