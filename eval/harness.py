"""`jpeglm eval --config configs/eval/X.yaml [--set key=value ...]`: one protocol for every system.

For each system (a checkpoint; the codec comes from the checkpoint) and each setting (prompt
ratios, then unconditional, then for class-conditional systems one class-balanced setting per
`cfg_scales` entry, eval/conditional.py) on the same held-out images with the same seeds and sample counts:
samples are drawn, written as PNGs + samples.npz (the ADM evaluator's input: arr_0, uint8 N,H,W,3) +
manifest.json, and scored:
- FID of the decoded samples against the held-out reals or `reference` statistics (eval/fid.py;
  samples whose decode *failed* are left out of FID and counted in the decode-failure rate;
  repaired ones count), and improved precision / recall (k=3) against the held-out reals;
- decode-failure rate, tokens per image, sampling seconds per image;
- bits per byte / per pixel of the held-out images under the model (non-overlapping windows of
  the model's context when a sequence is longer than it), beside JPEG XL's lossless recompression
  of the same files (eval/classical.py) for systems whose files are JPEGs;
- for every codec (of the systems, plus `floor_codecs`) the reconstruction floor: PSNR and rFID of
  encode -> decode of the held-out set.
Video systems (codec.media_kind == "video") are scored on frames: FID over all decoded frames
against the real clips' frames, and the decodable-frame rate; FVD only with I3D weights.

The per-system work goes through `System` objects (sample / nll / codec), so tests can drive the
harness with stand-ins; `ModelSystem` is the real one over jpeglm.checkpoint + jpeglm.sample.
A system that fails to load or sample still gets its rows with the reason - never a crash.

Many processes (torchrun / deepspeed, eval/parallel.py) split each setting's jobs; every sample is
written with its seed and features as it finishes (eval/store.py), so a killed run resumes where it
stopped, and scoring (eval/setting.py, rank 0) reads them back in index order with running sums:
the same report for any number of processes, in memory that does not grow with the sample count.
What is written is typed: report.json is an `EvalResults`, each setting's manifest.json a
`SamplesManifest` (eval/records.py documents every key).
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import math
import time
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from jpeglm.eval.classical import jxl_reason, jxl_recompressed_bytes
from jpeglm.eval.conditional import class_plans
from jpeglm.eval.conditional import setting_name as class_setting
from jpeglm.eval.config import EvalConfig
from jpeglm.eval.featstats import load_reference
from jpeglm.eval.fid import FID, NUM_FEATURES
from jpeglm.eval.parallel import Ranks, chunked
from jpeglm.eval.records import (
    EvalResults,
    FloorResult,
    SamplesManifest,
    StripRef,
    SystemResult,
)
from jpeglm.eval.report import make_strip, write_report
from jpeglm.eval.setting import (
    FeatureSet,
    as_media,
    draw,
    feature_set,
    fid_between,
    frames_of,
    plan_for,
    score,
    setting_name,
)
from jpeglm.eval.store import FeatureWriter, SampleStore
from PIL import Image

from jpeglm.config import atomic_write_bytes, atomic_write_text, save_config

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


class HeldOut:
    """The held-out images, by file: each is opened and prepared when asked for (a few kept), so the
    50k validation images of the published protocol never sit in memory at once."""

    def __init__(self, paths: list[str], size: int, skipped: list[dict]):
        self.paths, self.size, self.skipped = paths, size, skipped
        self._cache: dict[int, np.ndarray] = {}

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, i: int) -> np.ndarray:
        if i < 0 or i >= len(self.paths):
            raise IndexError(i)
        if i not in self._cache:
            from jpeglm.media import open_image, prepare_image

            if len(self._cache) >= 64:
                self._cache.pop(next(iter(self._cache)))
            self._cache[i] = np.asarray(prepare_image(open_image(self.paths[i]), self.size))
        return self._cache[i]

    def key(self) -> str:
        from jpeglm.eval.fid import files_key

        return f"{files_key(self.paths)}-{self.size}"


def heldout_images(folder: str, n: int, size: int) -> HeldOut:
    """The first `n` readable images of `folder` (sorted), prepared at size x size when read."""
    from jpeglm.eval.fid import list_image_files

    from jpeglm.media import MediaError, open_image, prepare_image

    paths, skipped = [], []
    for p in list_image_files(folder):
        if len(paths) >= n:
            break
        try:
            prepare_image(open_image(p), size)
            paths.append(str(p))
        except MediaError as e:
            skipped.append({"path": str(p), "reason": str(e)})
    if len(paths) < 2:
        raise ValueError(f"held-out folder {folder}: {len(paths)} usable images; need at least 2")
    return HeldOut(paths, size, skipped)


def load_heldout_images(folder: str, n: int, size: int) -> tuple[list[np.ndarray], list[str], list[dict]]:
    """The first `n` readable images of `folder` (sorted), prepared at size x size, in memory."""
    held = heldout_images(folder, n, size)
    return [held[i] for i in range(len(held))], list(held.paths), held.skipped


class Clips(list):
    """Held-out clips in memory (video evals are small), with the cache key of their files."""

    def __init__(self, clips, names, codec):
        super().__init__(clips)
        self.names, self.codec_cfg = names, json.dumps(codec.to_config(), sort_keys=True, default=str)

    def key(self) -> str:
        from jpeglm.eval.fid import files_key

        return hashlib.sha256(f"{files_key(self.names)}{self.codec_cfg}".encode()).hexdigest()


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


def real_features(fid: FID, reals, cache: Path, label: str) -> FeatureSet:
    """Features of the held-out items (all frames for video), computed once in batches and kept in
    OUT/cache (keyed by the files, the size and the network), then read back as a FeatureSet."""
    key = hashlib.sha256(f"{reals.key()}\0{fid.backend}\0{fid.network_sha256}".encode()).hexdigest()[:32]
    path = cache / f"{label}-{key}.npy"
    if not path.is_file():
        fw = FeatureWriter(path, NUM_FEATURES)
        batch: list[np.ndarray] = []
        for i in range(len(reals)):
            batch.extend(frames_of([np.asarray(reals[i])]))
            if len(batch) >= fid.batch_size or i == len(reals) - 1:
                fw.add(fid.features(batch))
                batch = []
        fw.close()
    return feature_set(path)


# ------------------------------------------------------------------------------------------------
# whole-system numbers


def _bpb_item(system, r: np.ndarray, jxl: bool) -> dict:
    symbols = system.codec.encode(as_media(r))
    ids = system.token_ids(symbols)
    item = {"nll": system.nll(ids), "bytes": system.codec.stream_bytes(symbols), "tokens": len(ids),
            "pixels": float(np.prod(np.asarray(system.codec.decode(symbols)[0]).shape[:-1]))}
    if jxl:
        item["jxl_bytes"] = jxl_recompressed_bytes(system.codec.to_file(symbols))
    return item


def _combine_bpb(items: list[dict]) -> dict:
    nll = sum(x["nll"] for x in items)
    nbytes = sum(x["bytes"] for x in items)
    npix = sum(x["pixels"] for x in items)
    bits = nll / math.log(2)
    out = {"bpb": bits / nbytes if nbytes else None, "bpp": bits / npix if npix else None,
           "nll_per_item": nll / len(items), "tokens_per_image": float(np.mean([x["tokens"] for x in items]))}
    if items and "jxl_bytes" in items[0]:
        jx = sum(x["jxl_bytes"] for x in items)
        out.update(jxl_bpb=8.0 * jx / nbytes if nbytes else None, jxl_bytes_per_image=jx / len(items))
    return out


def bits_per_byte(system, reals) -> dict:
    """bpb and bpp of the held-out items under the model, and their full token counts. Pixels are
    those of the codec's decoded picture (its own size), so bpp compares across image sizes."""
    return _combine_bpb([_bpb_item(system, reals[i], False) for i in range(len(reals))])


def _bpb_cached(system, r, jxl: bool, path: Path | None) -> dict:
    """One item's numbers, kept in `path` (JSON) so a resumed run does not run the model over it again."""
    if path is not None and path.is_file():
        item = json.loads(path.read_text())
        if not jxl or "jxl_bytes" in item:
            return item
    item = _bpb_item(system, r, jxl)
    if path is not None:
        atomic_write_bytes(path, json.dumps(item).encode(), sync=False)
    return item


def bits_per_byte_parallel(system, reals, ranks, jxl: bool, cache: Path | None = None) -> dict | str | None:
    """`bits_per_byte` with the items split across ranks; summed on rank 0 in item order (the same
    number for any number of processes). Each item's numbers are kept in `cache`/NNNNN.json. On rank
    0 the numbers, or the error text when an item failed on any rank; None on the other ranks."""
    try:
        mine = [(i, _bpb_cached(system, reals[i], jxl, cache / f"{i:05d}.json" if cache else None))
                for i in range(ranks.rank, len(reals), ranks.world_size)]
    except Exception as e:  # every rank still joins the gather, so one failure cannot hang the others
        mine = f"{type(e).__name__}: {e}"
    parts = ranks.gather(mine, "gathering bits per byte")
    if parts is None:
        return None
    errors = [p for p in parts if isinstance(p, str)]
    if errors:
        return errors[0]
    return _combine_bpb([x for _, x in sorted((p for part in parts for p in part), key=lambda t: t[0])])


def reconstruction_floor(codec, reals, fid: FID, real: FeatureSet, label: str, cache: Path) -> FloorResult:
    """PSNR and rFID of encode -> decode on the held-out set: the best any model on this codec can do.
    Reconstructions are scored in batches (features on disk), never all held at once."""
    psnrs, failed, nbytes, batch = [], 0, [], []
    fw = FeatureWriter(cache / f"floor-{hashlib.sha256(label.encode()).hexdigest()[:16]}.npy", NUM_FEATURES)
    for i in range(len(reals)):
        r = np.asarray(reals[i])
        symbols = codec.encode(as_media(r))
        nbytes.append(codec.stream_bytes(symbols))
        media, rep = codec.decode(symbols)
        media = np.asarray(media)
        if rep.status == "failed":
            failed += 1
        else:
            ref = r if media.shape == r.shape else np.asarray(Image.fromarray(r).resize(media.shape[1::-1], Image.BILINEAR))
            mse = float(np.mean((media.astype(np.float64) - ref.astype(np.float64)) ** 2))
            psnrs.append(10 * math.log10(255.0**2 / mse) if mse > 0 else float("inf"))
            batch.extend(frames_of([media]))
        if batch and (len(batch) >= fid.batch_size or i == len(reals) - 1):
            fw.add(fid.features(batch))
            batch = []
    recs = feature_set(fw.close())
    res = fid_between(fid, real, recs) if recs.n >= 2 else \
        fid.result(None, real.n, recs.n, reason="fewer than 2 reconstructions decoded")
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


def evaluate(cfg: EvalConfig, systems: dict | None = None, ranks: Ranks | None = None) -> dict:
    """Run the protocol over cfg.systems and write the report. `systems` maps a system name to a
    ready object (name, codec, sample, nll, token_ids) used instead of loading its checkpoint -
    that is how tests run stand-ins. Under a launcher (RANK / WORLD_SIZE set) every process draws
    its share and rank 0 scores and writes the report. Returns the JSON form of the results
    (OUT/report.json's content, an `EvalResults`) plus `report_files`, the paths written; on the
    other ranks {"rank": r, "report_files": None}."""
    for what, folder in (("images", cfg.images), ("videos", cfg.videos)):
        if folder and not Path(folder).is_dir():
            raise ValueError(f"held-out {what} folder {folder} does not exist")
    if not cfg.images and not cfg.videos:
        raise ValueError("no held-out data: set images (a folder of images) and/or videos")
    if not cfg.systems:
        raise ValueError("no systems to evaluate: set systems: [{name, checkpoint}, ...]")
    own = ranks is None
    ranks = ranks or Ranks.from_env(cfg.dist_timeout_s)
    try:
        return _evaluate(cfg, systems or {}, ranks)
    finally:
        if own:
            ranks.close()


def protocol_record(cfg: EvalConfig, fid: FID) -> dict:
    """What the samples in OUT depend on: a rerun with other values would mix two protocols."""
    keep = ("images", "videos", "num_images", "image_size", "prompt_ratios", "unconditional", "num_samples",
            "num_unconditional", "seed", "cfg_scales", "samples_per_class")
    return {**{k: getattr(cfg, k) for k in keep}, "sampler": cfg.sampler_record(),
            "fid": {"backend": fid.backend, "network_sha256": fid.network_sha256, "resize": fid.resize}}


def _check_same(path: Path, record: dict, what: str) -> None:
    if not path.is_file():
        return
    old = json.loads(path.read_text())
    diff = sorted(k for k in set(old) | set(record) if old.get(k) != record.get(k))
    if diff:
        what_changed = ", ".join(f"{k}: {old.get(k)!r} there, {record.get(k)!r} now" for k in diff)
        raise ValueError(f"{path.parent} holds samples of another {what} ({what_changed}); "
                         "use another out folder or the same settings")


def _evaluate(cfg: EvalConfig, overrides: dict, ranks: Ranks) -> dict:
    out = Path(cfg.out)
    out.mkdir(parents=True, exist_ok=True)
    fs = cfg.fid_settings
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the small-N warning goes into the report instead of 100 lines
        fid = FID(backend=fs.backend, device=ranks.device(fs.device), batch_size=fs.batch_size, cache_dir=out / "cache",
                  network_path=fs.weights, warn_small_n=False)
    protocol = json.loads(json.dumps(protocol_record(cfg, fid), default=str))
    _check_same(out / "protocol.json", protocol, "protocol")
    ref = load_reference(cfg.reference, fid.network_sha256, fid.resize) if cfg.reference else None
    if ref and ref["image_size"] and ref["image_size"] != cfg.image_size:
        raise ValueError(f"{cfg.reference} holds images prepared at {ref['image_size']}x{ref['image_size']}, this eval's "
                         f"image_size is {cfg.image_size}")
    ranks.barrier("checking the output folder")
    if ranks.is_main:
        save_config(cfg, out / "config.yaml")
        atomic_write_text(out / "protocol.json", json.dumps(protocol, indent=2) + "\n")
    device = str(fid.device)
    results = EvalResults(title=cfg.title, created=time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime()),
                          fid=fid.settings())
    held: dict[str, Any] = {}
    drawn_systems = []
    for sc in cfg.systems:
        entry = SystemResult(name=sc.name, checkpoint=sc.checkpoint)
        results.systems.append(entry)
        system = reals = None
        try:
            system = overrides[sc.name] if sc.name in overrides else ModelSystem(sc.name, sc.checkpoint, cfg.sampler, device)
        except Exception as e:
            entry.error = f"could not load: {type(e).__name__}: {e}"
        if system is not None:
            codec = system.codec
            entry.update(codec=codec.to_config(), media_kind=codec.media_kind)
            reals = _reals_for(cfg, entry, codec, held, results)
        failed_ranks = ranks.agree(reals is not None, f"loading system {sc.name}")
        if failed_ranks:  # every rank skips it together, or the others would wait for it in a collective
            entry.error = entry.error or f"could not load on rank(s) {failed_ranks} (see their output)"
            continue
        sys_dir = out / "systems" / sc.name
        sys_dir.mkdir(parents=True, exist_ok=True)
        mine = {"checkpoint": sc.checkpoint, "codec": json.loads(json.dumps(codec.to_config(), default=str))}
        _check_same(sys_dir / "system.json", mine, "system")
        if ranks.is_main:
            atomic_write_text(sys_dir / "system.json", json.dumps(mine, indent=2) + "\n")
        settings = [(r, k) for k, r in enumerate(cfg.prompt_ratios)] + \
            ([(None, len(cfg.prompt_ratios))] if cfg.unconditional else [])
        plans = [plan_for(r, k, len(reals), cfg, SETTING_SEED_STRIDE) for r, k in settings]
        plans += class_plans(system, cfg, len(settings), SETTING_SEED_STRIDE)  # class-conditional: per cfg scale
        plans = [(p, SampleStore(sys_dir / p.folder)) for p in plans]
        total = sum(len(ranks.mine(chunked(p.n, cfg.sampler.batch_size))) for p, _ in plans)
        with ranks.progress_bar(total, f"{sc.name}: sampling") as bar:
            for plan, store in plans:
                store.dir.mkdir(parents=True, exist_ok=True)
                draw(system, reals, plan, store, fid, ranks, cfg.sampler.batch_size, bar)
        if cfg.bpb and hasattr(system, "nll"):
            jxl_why = jxl_reason(codec.file_suffix)
            entry.jxl_reason = jxl_why
            mine_bpb = bits_per_byte_parallel(system, reals, ranks, jxl=not jxl_why, cache=sys_dir / "bpb")
            if ranks.is_main:
                if isinstance(mine_bpb, str):
                    entry.bpb_error = mine_bpb
                else:
                    entry.update(**mine_bpb)
        del system  # the model is not needed to score: one on the device at a time
        drawn_systems.append((entry, codec, reals, plans))
    ranks.barrier("waiting for every process to finish sampling")
    if not ranks.is_main:
        return {"rank": ranks.rank, "report_files": None}
    return _score_all(cfg, out, fid, ref, results, drawn_systems, held)


def _reals_for(cfg, entry: SystemResult, codec, held: dict, results: EvalResults):
    """The held-out items for a system's media kind (loaded once per kind), or None with entry.error set."""
    if entry.media_kind == "video":
        if "videos" not in held:
            if not cfg.videos:
                entry.error = "a video system needs a held-out video folder (videos: ...)"
                return None
            clips, names, skipped = load_heldout_videos(cfg.videos, cfg.num_images, codec)
            held["videos"] = Clips(clips, names, codec)
            results.skipped_inputs += skipped
        reals = held["videos"]
    else:
        if "images" not in held:
            if not cfg.images:
                raise ValueError("no held-out image folder given (images: ...)")
            held["images"] = heldout_images(cfg.images, cfg.num_images, cfg.image_size)
            results.skipped_inputs += held["images"].skipped
        reals = held["images"]
    if len(reals) < 2:
        entry.error = "fewer than 2 held-out items"
        return None
    return reals


def _score_all(cfg, out: Path, fid: FID, ref: dict | None, results: EvalResults, drawn_systems, held) -> dict:
    shared = SamplesManifest(fid=fid.settings(), code=code_version(), sampler=cfg.sampler_record(), base_seed=cfg.seed)
    codecs_seen: dict[str, Any] = {}
    ref_set = FeatureSet(None, ref["mu"], ref["sigma"], ref["count"] or 0) if ref else None
    for entry, codec, reals, plans in drawn_systems:
        heldout = real_features(fid, reals, out / "cache", "reals")
        real = ref_set or heldout
        results.fid.setdefault("n_real", real.n)
        codecs_seen.setdefault(json.dumps(codec.to_config(), sort_keys=True, default=str), (entry.name, codec, reals, real))
        mine = dataclasses.replace(shared, system=entry.name, codec=codec.to_config())
        for plan, store in plans:
            row, strip_rows = score(store, plan, cfg, fid, real, heldout, mine, codec.media_kind == "video", reals,
                                    prompt_cut=_prompt_cut(codec, plan.ratio),
                                    prompt_shown=_prompt_shown(codec, plan.ratio, reals))
            if strip_rows:
                p = out / "strips" / f"{entry.name}-{plan.folder}.png"
                p.parent.mkdir(parents=True, exist_ok=True)
                Image.fromarray(make_strip(strip_rows)).save(p)
                entry.strips.append(StripRef(setting=row.setting, path=str(p.relative_to(out))))
            entry.rows.append(row)
    _floors(cfg, out, results, codecs_seen, fid, held)
    _summarise(results, cfg)
    results.settings = {"held-out images": cfg.images, "held-out videos": cfg.videos, "items": cfg.num_images,
                        "image size": cfg.image_size, "prompt ratios": cfg.prompt_ratios,
                        "samples per prompt": cfg.num_samples, "base seed": cfg.seed, "sampler": cfg.sampler_record(),
                        "reference statistics": ({"file": cfg.reference, "count": ref["count"]} if ref else None),
                        "code": code_version()}
    files = write_report(results, out)
    return {**results.to_json(), "report_files": {k: str(v) for k, v in files.items()}}


def _prompt_shown(codec, ratio: float | None, reals) -> np.ndarray | None:
    """Where the codec's prompts at `ratio` show the held-out items (codec.prompt_mask at their shape), for
    the strips; None as `_prompt_cut`."""
    if ratio is None or not len(reals):
        return None
    try:
        return codec.prompt_mask(ratio, np.shape(reals[0])[:-1])
    except ValueError:
        return None


def _prompt_cut(codec, ratio: float | None) -> dict | None:
    """The codec's prompt cut at `ratio` (its rule and the region the prompts show); None unconditional or
    when the codec cannot say (sampling then failed with the reason, which the row carries)."""
    if ratio is None:
        return None
    try:
        return codec.prompt_region(ratio)
    except ValueError:
        return None


def _floors(cfg, out: Path, results, codecs_seen, fid, held) -> None:
    from jpeglm.codecs.base import codec_from_config

    for name, codec, reals, real in codecs_seen.values():
        try:
            results.floors.append(reconstruction_floor(codec, reals, fid, real, f"{codec.name} ({name})", out / "cache"))
        except Exception as e:
            results.floors.append(FloorResult(codec=f"{codec.name} ({name})", rfid_reason=f"{type(e).__name__}: {e}"))
    for fc in cfg.floor_codecs:
        try:
            codec = codec_from_config(fc)
            if "images" not in held:
                held["images"] = heldout_images(cfg.images, cfg.num_images, cfg.image_size)
            reals = held["images"]
            real = real_features(fid, reals, out / "cache", "reals")
            results.floors.append(reconstruction_floor(codec, reals, fid, real, codec.name, out / "cache"))
        except Exception as e:
            results.floors.append(FloorResult(codec=fc.get("name", "?"), rfid_reason=f"{type(e).__name__}: {e}"))


def _summarise(results: EvalResults, cfg: EvalConfig) -> None:
    rows = [r for s in results.systems for r in s.rows]
    n = min([r.fid_n or 0 for r in rows if r.fid is not None] or [0])
    results.fid["n_note"] = f"N={n} per setting"
    best = []
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
        "Precision / recall: improved precision and recall (Kynkaanniemi et al. 2019), k=3 nearest neighbours on the "
        "same pool3 features, against the held-out images.",
        "JPEG XL bits/byte: cjxl --lossless_jpeg=1 of each held-out item's JPEG file, 8 * bytes / modelled bytes "
        "(the file's container and tables included), the classical model the LM's bits/byte stands beside.",
    ]
