"""`jpeglm eval --config configs/eval/X.yaml [--set key=value ...]`: one protocol for every system.

For each system (a checkpoint; the codec comes from the checkpoint) and each setting (prompt
ratios, then unconditional) on the same held-out images with the same seeds and sample counts:
samples are drawn, written as PNGs + samples.npz (uint8 N,H,W,3) + manifest.json, and scored:
- FID of the decoded samples against the held-out reals (eval/fid.py; samples whose decode
  *failed* are left out of FID and counted in the decode-failure rate; repaired ones count);
- decode-failure rate, tokens per image, sampling seconds per image;
- bits per byte / per pixel of the held-out images under the model (non-overlapping windows of
  the model's context when a sequence is longer than it);
- for every codec (of the systems, plus `floor_codecs`) the reconstruction floor: PSNR and rFID of
  encode -> decode of the held-out set.
Video systems (codec.media_kind == "video") are scored on frames: FID over all decoded frames
against the real clips' frames, and the decodable-frame rate; FVD only with I3D weights.

The per-system work goes through `System` objects (sample / nll / codec), so tests can drive the
harness with stand-ins; `ModelSystem` is the real one over jpeglm.checkpoint + jpeglm.sample.
A system that fails to load or sample still gets its rows with the reason - never a crash.
What is written is typed: report.json is an `EvalResults`, each setting's manifest.json a
`SamplesManifest` (eval/records.py documents every key).
"""

from __future__ import annotations

import dataclasses
import json
import math
import time
import traceback
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from jpeglm.eval.config import EvalConfig
from jpeglm.eval.fid import FID, bootstrap_fid_std, images_key
from jpeglm.eval.fvd import fvd_or_reason
from jpeglm.eval.records import (DecodeFailure, EvalResults, FloorResult, SampleEntry, SamplesManifest, SettingRow, StripRef,
                                 SystemResult)
from jpeglm.eval.report import UNCOND, make_strip, prompt_view, write_report
from jpeglm.config import atomic_write_text, save_config

SETTING_SEED_STRIDE = 100_000  # setting k samples with seeds seed + 100000 k + i: disjoint, equal for all systems


# ------------------------------------------------------------------------------------------------
# systems


@dataclass
class Drawn:
    """One sample as the harness needs it (a subset of jpeglm.sample.Sample)."""

    media: np.ndarray
    status: str  # ok | repaired | failed
    reason: str
    seed: int
    prompt_index: int | None
    n_tokens: int  # prompt + new tokens
    details: dict


class ModelSystem:
    """A checkpoint: `load_for_inference` gives model, tokenizer and codec; sampling is
    `jpeglm.sample.generate` with the eval's `SamplerConfig` (its seed set per call), likelihood a
    plain forward pass of the Llama."""

    def __init__(self, name: str, checkpoint: str, sampler, device: str):
        from jpeglm.checkpoint import load_for_inference

        self.name = name
        self.device = device
        self.sampler = sampler
        loaded = load_for_inference(checkpoint, device=device)
        self.model, self.tokenizer, self.codec, self.meta = loaded.model, loaded.tokenizer, loaded.codec, loaded.meta

    @property
    def class_names(self) -> tuple[str, ...]:
        """The model's classes (empty: not class-conditional); see eval/conditional.py."""
        return tuple(self.tokenizer.class_names)

    def sample(self, prompts: list | None, num_samples: int, seed: int, classes: list[int] | None = None,
               cfg_scale: float | None = None) -> list[Drawn]:
        from jpeglm.sample import generate

        cfg = dataclasses.replace(self.sampler, seed=seed)
        if cfg_scale is not None:
            cfg = dataclasses.replace(cfg, cfg_scale=cfg_scale)
        out = generate(self.model, self.tokenizer, self.codec, prompts, num_samples, cfg, self.device, classes=classes)
        return [Drawn(np.asarray(x.media), x.report.status, x.report.reason, x.seed, x.prompt_index,
                      int(x.n_prompt_tokens + x.n_new_tokens), dict(x.report.details or {})) for x in out]

    def token_ids(self, symbols) -> list[int]:
        return self.tokenizer.encode(symbols, bos=True, eos=True)

    def nll(self, ids: list[int]) -> float:
        """Summed NLL (nats) of ids[1:] given their prefix, in windows of the model's context."""
        import torch

        ctx = int(getattr(self.model.config, "max_position_embeddings", 0) or len(ids))
        total = 0.0
        with torch.inference_mode():
            for start in range(0, len(ids) - 1, ctx - 1):
                chunk = torch.tensor([ids[start : start + ctx]], device=self.device)
                if chunk.shape[1] < 2:
                    break
                logits = self.model(chunk).logits.float()
                lp = torch.log_softmax(logits[0, :-1], dim=-1)
                total -= float(lp.gather(1, chunk[0, 1:, None]).sum())
        return total


# ------------------------------------------------------------------------------------------------
# held-out data


def load_heldout_images(folder: str, n: int, size: int) -> tuple[list[np.ndarray], list[str], list[dict]]:
    """The first `n` readable images of `folder` (sorted), prepared at size x size."""
    from jpeglm.eval.fid import list_image_files
    from jpeglm.media import MediaError, open_image, prepare_image

    files = list_image_files(folder)
    images, names, skipped = [], [], []
    for p in files:
        if len(images) >= n:
            break
        try:
            images.append(np.asarray(prepare_image(open_image(p), size)))
            names.append(str(p))
        except MediaError as e:
            skipped.append({"path": str(p), "reason": str(e)})
    if len(images) < 2:
        raise ValueError(f"held-out folder {folder}: {len(images)} usable images; need at least 2")
    return images, names, skipped


def load_heldout_videos(folder: str, n: int, codec) -> tuple[list[np.ndarray], list[str], list[dict]]:
    """The first `n` videos of `folder` as the codec's canonical clips (codec.prepare)."""
    clips, names, skipped = [], [], []
    for p in sorted(x for x in Path(folder).rglob("*") if x.is_file()):
        if len(clips) >= n:
            break
        try:
            clips.append(np.asarray(codec.prepare(p)))
            names.append(str(p))
        except Exception as e:  # any unreadable video is skipped with its reason
            skipped.append({"path": str(p), "reason": f"{type(e).__name__}: {e}"})
    return clips, names, skipped


def as_media(a: np.ndarray):
    """What a codec's encode gets: a PIL image for pictures (codecs take an RGB image of their own
    size as canonical, without re-checking the minimum-side policy), the array for clips."""
    return Image.fromarray(a) if a.ndim == 3 else a


def frames_of(media: list[np.ndarray]) -> list[np.ndarray]:
    """Images as they are; videos (T,H,W,3) flattened to their frames for FID."""
    out = []
    for m in media:
        out.extend(list(m) if m.ndim == 4 else [m])
    return out


# ------------------------------------------------------------------------------------------------
# one setting of one system


def setting_name(ratio: float | None) -> str:
    return UNCOND if ratio is None else f"ratio={ratio:g}"


def run_setting(system, reals: list[np.ndarray], ratio: float | None, k: int, cfg: EvalConfig, out_dir: Path,
                fid: FID, real_feats: np.ndarray, manifest: SamplesManifest) -> tuple[SettingRow, list[dict]]:
    """Sample one setting, write its files (`manifest` holds what every setting of the system
    shares), score it; returns the row and the completion strip's rows. Exceptions become a row
    with the reason."""
    seed = cfg.seed + SETTING_SEED_STRIDE * k
    row = SettingRow(setting=setting_name(ratio), prompt_ratio=ratio, seed=seed, samples_dir=str(out_dir))
    video = system.codec.media_kind == "video"
    t0 = time.perf_counter()
    try:
        if ratio is None:
            n_unc = cfg.num_unconditional or len(reals) * cfg.num_samples
            drawn = system.sample(None, n_unc, seed)
        else:
            row.prompt_cut = system.codec.prompt_region(ratio)  # the rule and what the prompts show
            prompts = [system.codec.prompt(system.codec.encode(as_media(r)), ratio) for r in reals]
            drawn = system.sample(prompts, cfg.num_samples, seed)
    except Exception as e:  # a broken system gets its row, with the reason
        row.update(fid_reason=f"sampling failed: {type(e).__name__}: {e}", failure_rate=1.0,
                   traceback=traceback.format_exc(limit=5))
        return row, []
    elapsed = time.perf_counter() - t0
    n = len(drawn)
    failed = [d.status == "failed" for d in drawn]
    row.update(n_samples=n, failure_rate=(sum(failed) / n) if n else 1.0,
               repaired_rate=(sum(d.status == "repaired" for d in drawn) / n) if n else 0.0,
               tokens_per_image=float(np.mean([d.n_tokens for d in drawn])) if n else None,
               seconds_per_image=elapsed / n if n else None)
    if video:
        got = [d.details.get("decoded_frames", 0) for d in drawn]
        want = [d.details.get("expected_frames", 0) for d in drawn]
        row.decoded_frame_rate = float(sum(got) / max(1, sum(want)))
        # FVD of the decoded (not failed) clips against the real clips; a clear reason without weights
        decoded_clips = [d.media for d, f in zip(drawn, failed) if not f]
        row.fvd, row.fvd_reason = fvd_or_reason(cfg.i3d_weights, reals, decoded_clips, device=fid.device)
    _write_samples(out_dir, drawn, dataclasses.replace(manifest, prompt_ratio=ratio, prompt_cut=row.prompt_cut))
    good = [d.media for d, f in zip(drawn, failed) if not f]
    fake_feats = fid.features(frames_of(good)) if len(frames_of(good)) >= 2 else None
    res = fid.compute_from_features(real_feats, fake_feats) if fake_feats is not None else \
        fid.result(None, len(real_feats), len(frames_of(good)), reason=f"{len(good)} of {n} samples decoded; FID needs >= 2")
    row.update(fid=res.value, fid_reason=res.reason, fid_n=res.n_fake)
    if cfg.fid_bootstrap and res.value is not None:
        row.fid_std = bootstrap_fid_std(real_feats, fake_feats, reps=cfg.fid_bootstrap, seed=seed)
    return row, _strip_rows(drawn, reals, ratio, cfg)


def _write_samples(out_dir: Path, drawn: list[Drawn], manifest: SamplesManifest) -> None:
    out_dir.mkdir(parents=True, exist_ok=True)
    for i, d in enumerate(drawn):
        frame = d.media[0] if d.media.ndim == 4 else d.media
        tmp = out_dir / f".{i:05d}.png.tmp"
        Image.fromarray(np.asarray(frame, dtype=np.uint8)).save(tmp, "PNG")
        tmp.replace(out_dir / f"{i:05d}.png")
    shapes = {d.media.shape for d in drawn}
    if drawn and len(shapes) == 1:
        tmp = out_dir / ".samples.tmp.npz"
        np.savez_compressed(tmp, samples=np.stack([d.media for d in drawn]).astype(np.uint8))
        tmp.replace(out_dir / "samples.npz")
    else:
        (out_dir / "samples.npz").unlink(missing_ok=True)  # an earlier eval's, of other samples
    _remove_stale_samples(out_dir, len(drawn))
    manifest = dataclasses.replace(
        manifest, num_samples=len(drawn),
        samples=[SampleEntry(file=f"{i:05d}.png", seed=d.seed, prompt_index=d.prompt_index, status=d.status,
                             reason=d.reason, n_tokens=d.n_tokens) for i, d in enumerate(drawn)],
        decode_failures=[DecodeFailure(index=i, reason=d.reason) for i, d in enumerate(drawn) if d.status == "failed"])
    atomic_write_text(out_dir / "manifest.json", json.dumps(manifest.to_json(), indent=2, default=str) + "\n")


def _remove_stale_samples(out_dir: Path, n: int) -> None:
    """Files an earlier eval into this folder left: NNNNN.png past this run's `n` samples, and the
    temporaries of a killed one (a folder must show this run's samples only)."""
    for p in out_dir.iterdir():
        stem = p.name[: -len(".png")] if p.name.endswith(".png") else None
        if (stem is not None and stem.isdigit() and len(stem) == 5 and int(stem) >= n) or (
                p.name.startswith(".") and p.name.endswith((".png.tmp", ".tmp.npz"))):
            p.unlink(missing_ok=True)


def _strip_rows(drawn: list[Drawn], reals, ratio, cfg: EvalConfig) -> list[dict]:
    def pic(m):
        return m[len(m) // 2] if m.ndim == 4 else m  # video: the middle frame

    rows = []
    if ratio is None:
        chunk = drawn[: cfg.strip_samples * cfg.strip_prompts]
        for s in range(0, len(chunk), cfg.strip_samples):
            part = chunk[s : s + cfg.strip_samples]
            rows.append({"prompt": np.full_like(pic(part[0].media), 128), "samples": [pic(d.media) for d in part],
                         "real": None, "failed": [d.status == "failed" for d in part]})
        return rows
    for pi in range(min(cfg.strip_prompts, len(reals))):
        mine = [d for d in drawn if d.prompt_index == pi][: cfg.strip_samples]
        real = pic(reals[pi])
        rows.append({"prompt": prompt_view(real, ratio), "samples": [pic(d.media) for d in mine], "real": real,
                     "failed": [d.status == "failed" for d in mine]})
    return rows


# ------------------------------------------------------------------------------------------------
# whole-system numbers


def bits_per_byte(system, reals: list[np.ndarray]) -> dict:
    """bpb and bpp of the held-out items under the model, and their full token counts. Pixels are
    those of the codec's decoded picture (its own size), so bpp compares across image sizes."""
    nll = nbytes = npix = 0.0
    ntok = []
    for r in reals:
        symbols = system.codec.encode(as_media(r))
        ids = system.token_ids(symbols)
        ntok.append(len(ids))
        nll += system.nll(ids)
        nbytes += system.codec.stream_bytes(symbols)
        npix += float(np.prod(np.asarray(system.codec.decode(symbols)[0]).shape[:-1]))
    bits = nll / math.log(2)
    return {"bpb": bits / nbytes if nbytes else None, "bpp": bits / npix if npix else None,
            "nll_per_item": nll / len(reals), "tokens_per_image": float(np.mean(ntok))}


def reconstruction_floor(codec, reals: list[np.ndarray], fid: FID, real_feats: np.ndarray, label: str) -> FloorResult:
    """PSNR and rFID of encode -> decode on the held-out set: the best any model on this codec can do."""
    recs, psnrs, failed, nbytes = [], [], 0, []
    for r in reals:
        symbols = codec.encode(as_media(r))
        nbytes.append(codec.stream_bytes(symbols))
        media, rep = codec.decode(symbols)
        media = np.asarray(media)
        if rep.status == "failed":
            failed += 1
            continue
        ref = r if media.shape == r.shape else np.asarray(Image.fromarray(r).resize(media.shape[1::-1], Image.BILINEAR))
        mse = float(np.mean((media.astype(np.float64) - ref.astype(np.float64)) ** 2))
        psnrs.append(10 * math.log10(255.0**2 / mse) if mse > 0 else float("inf"))
        recs.append(media)
    frames = frames_of(recs)
    res = fid.compute_from_features(real_feats, fid.features(frames)) if len(frames) >= 2 else \
        fid.result(None, len(real_feats), len(frames), reason="fewer than 2 reconstructions decoded")
    return FloorResult(codec=label, config=codec.to_config(), psnr=float(np.mean(psnrs)) if psnrs else None,
                       rfid=res.value, rfid_reason=res.reason, n=len(reals), decode_failures=failed,
                       bytes_per_image=float(np.mean(nbytes)))


def code_version() -> dict:
    """jpeglm's version and, when run from a git checkout, the commit (read from .git, no git call)."""
    import jpeglm

    out = {"jpeglm": getattr(jpeglm, "__version__", "?")}
    git = Path(__file__).resolve().parents[1] / ".git"
    try:
        head = (git / "HEAD").read_text().strip()
        if head.startswith("ref: "):
            ref = git / head[5:]
            head = ref.read_text().strip() if ref.is_file() else head
        out["commit"] = head
    except OSError:
        pass
    return out


# ------------------------------------------------------------------------------------------------
# the run


def evaluate(cfg: EvalConfig, systems: dict | None = None) -> dict:
    """Run the protocol over cfg.systems and write the report. `systems` maps a system name to a
    ready object (name, codec, sample, nll, token_ids) used instead of loading its checkpoint -
    that is how tests run stand-ins. Returns the JSON form of the results (OUT/report.json's
    content, an `EvalResults`) plus `report_files`, the paths written."""
    for what, folder in (("images", cfg.images), ("videos", cfg.videos)):
        if folder and not Path(folder).is_dir():
            raise ValueError(f"held-out {what} folder {folder} does not exist")
    if not cfg.images and not cfg.videos:
        raise ValueError("no held-out data: set images (a folder of images) and/or videos")
    if not cfg.systems:
        raise ValueError("no systems to evaluate: set systems: [{name, checkpoint}, ...]")
    out = Path(cfg.out)
    out.mkdir(parents=True, exist_ok=True)
    save_config(cfg, out / "config.yaml")
    fs = cfg.fid_settings
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the small-N warning goes into the report instead of 100 lines
        fid = FID(backend=fs.backend, device=fs.device, batch_size=fs.batch_size, cache_dir=out / "cache",
                  warn_small_n=False)
    device = str(fid.device)
    shared = SamplesManifest(fid=fid.settings(), code=code_version(), sampler=cfg.sampler_record(), base_seed=cfg.seed)
    overrides = systems or {}
    images = videos = None
    results = EvalResults(title=cfg.title, created=time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime()),
                          fid=fid.settings())
    codecs_seen: dict[str, Any] = {}
    for sc in cfg.systems:
        name = sc.name
        entry = SystemResult(name=name, checkpoint=sc.checkpoint)
        results.systems.append(entry)
        try:
            system = overrides[name] if name in overrides else ModelSystem(name, sc.checkpoint, cfg.sampler, device)
        except Exception as e:
            entry.error = f"could not load: {type(e).__name__}: {e}"
            continue
        codec = system.codec
        entry.update(codec=codec.to_config(), media_kind=codec.media_kind)
        if entry.media_kind == "video":
            if videos is None:
                if not cfg.videos:
                    entry.error = "a video system needs a held-out video folder (videos: ...)"
                    continue
                videos = load_heldout_videos(cfg.videos, cfg.num_images, codec)
                results.skipped_inputs += videos[2]
            reals = videos[0]
        else:
            if images is None:
                if not cfg.images:
                    raise ValueError("no held-out image folder given (images: ...)")
                images = load_heldout_images(cfg.images, cfg.num_images, cfg.image_size)
                results.skipped_inputs += images[2]
            reals = images[0]
        if len(reals) < 2:
            entry.error = "fewer than 2 held-out items"
            continue
        real_frames = frames_of(reals)
        real_feats = fid.features(real_frames, cache_key=images_key(real_frames))
        results.fid.setdefault("n_real", len(real_feats))
        codecs_seen.setdefault(json.dumps(codec.to_config(), sort_keys=True, default=str), (name, codec, reals, real_feats))
        mine = dataclasses.replace(shared, system=name, codec=codec.to_config())
        plan = [(r, k) for k, r in enumerate(cfg.prompt_ratios)] + ([(None, len(cfg.prompt_ratios))] if cfg.unconditional else [])
        for ratio, k in plan:
            d = out / "systems" / name / setting_name(ratio).replace("=", "_")
            row, strip_rows = run_setting(system, reals, ratio, k, cfg, d, fid, real_feats, mine)
            if strip_rows:
                p = out / "strips" / f"{name}-{setting_name(ratio).replace('=', '_')}.png"
                p.parent.mkdir(parents=True, exist_ok=True)
                Image.fromarray(make_strip(strip_rows)).save(p)
                entry.strips.append(StripRef(setting=row.setting, path=str(p.relative_to(out))))
            entry.rows.append(row)
        from jpeglm.eval.conditional import class_settings

        for guided, k in class_settings(system, cfg, len(plan)):  # class-conditional: class-balanced, per scale
            row, strip_rows = run_setting(guided, reals, None, k, cfg, out / "systems" / name / guided.setting.replace(
                "=", "_").replace(" ", "_"), fid, real_feats, mine)
            guided.label_row(row)
            if strip_rows:
                p = out / "strips" / f"{name}-{guided.setting.replace('=', '_').replace(' ', '_')}.png"
                p.parent.mkdir(parents=True, exist_ok=True)
                Image.fromarray(make_strip(strip_rows)).save(p)
                entry.strips.append(StripRef(setting=row.setting, path=str(p.relative_to(out))))
            entry.rows.append(row)
        if cfg.bpb and hasattr(system, "nll"):
            try:
                entry.update(**bits_per_byte(system, reals))
            except Exception as e:
                entry.bpb_error = f"{type(e).__name__}: {e}"
    _floors(cfg, results, codecs_seen, fid, images)
    _summarise(results, cfg)
    results.settings = {"held-out images": cfg.images, "held-out videos": cfg.videos, "items": cfg.num_images,
                        "image size": cfg.image_size, "prompt ratios": cfg.prompt_ratios,
                        "samples per prompt": cfg.num_samples, "base seed": cfg.seed, "sampler": cfg.sampler_record(),
                        "code": code_version()}
    files = write_report(results, out)
    return {**results.to_json(), "report_files": {k: str(v) for k, v in files.items()}}


def _floors(cfg, results, codecs_seen, fid, images) -> None:
    from jpeglm.codecs.base import codec_from_config

    for _, (name, codec, reals, feats) in codecs_seen.items():
        try:
            results.floors.append(reconstruction_floor(codec, reals, fid, feats, f"{codec.name} ({name})"))
        except Exception as e:
            results.floors.append(FloorResult(codec=f"{codec.name} ({name})", rfid_reason=f"{type(e).__name__}: {e}"))
    for fc in cfg.floor_codecs:
        try:
            codec = codec_from_config(fc)
            if images is None:
                images = load_heldout_images(cfg.images, cfg.num_images, cfg.image_size)
            frames = frames_of(images[0])
            feats = fid.features(frames, cache_key=images_key(frames))
            results.floors.append(reconstruction_floor(codec, images[0], fid, feats, codec.name))
        except Exception as e:
            results.floors.append(FloorResult(codec=fc.get("name", "?"), rfid_reason=f"{type(e).__name__}: {e}"))


def _summarise(results: EvalResults, cfg: EvalConfig) -> None:
    rows = [r for s in results.systems for r in s.rows]
    n = min([r.fid_n or 0 for r in rows if r.fid is not None] or [0])
    results.fid["n_note"] = f"N={n} per setting"
    best = []
    from jpeglm.eval.conditional import setting_name as class_setting

    for key in [*map(setting_name, [*cfg.prompt_ratios, None]), *map(class_setting, cfg.cfg_scales)]:
        cands = [(r.fid, s.name) for s in results.systems for r in s.rows
                 if r.setting == key and r.fid is not None]
        if cands:
            v, who = min(cands)
            best.append(f"{key}: {who} ({v:.1f})")
    results.summary = ("Lowest FID - " + "; ".join(best) + ".") if best else "No FID could be computed."
    results.notes += [
        f"FID on N={n} samples per setting against {results.fid.get('n_real', 'the')} held-out images: "
        "biased upwards at N < 10000; compare systems only at equal N, as here.",
        "Every image (samples of every system and the reals) is resized the same way to 299x299 for FID: "
        + results.fid["resize"] + ".",
        "Samples whose decode failed are left out of FID and counted in the failure rate; repaired ones are kept.",
    ]
