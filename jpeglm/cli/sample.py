"""`jpeglm sample`: sample files from a checkpoint, with or without prompts, and write them down.

Output directory (written into a temporary directory beside `--out` and renamed at the end, so a
failed run leaves nothing half-written):
    p000_s000.jpg ...     one file per sample: .jpg for JPEG (tables spliced back), .png for vq /
                          pixel, .mp4 for H.264 (plus p000_s000_frames.png, a contact sheet of frames);
                          unconditional samples are named u_s000...; class-conditional ones
                          p000_c001_s000 / u_c001_s000 (class id 1: its name is in the manifest)
    sheet_p000.png        per prompt: prompt | samples | the prompt's full original (images);
                          sheet_unconditional.png without prompts
    manifest.json         settings, seeds, token counts, times, per-file decode report, what the
                          codec repaired to write the file (`file_repairs`: JPEG cut after its
                          first EOI, EOI appended), sampled tokens that stood for no byte
                          (`dropped_tokens`) and, for JPEG, whether Pillow opens the file
                          strictly (no LOAD_TRUNCATED_IMAGES); `prompt_cut`: the cut rule and region

Under `torchrun --nproc_per_node N --no-python jpeglm sample ...` (or deepspeed) the jobs (prompt x
seed) are split across the processes (jpeglm.eval.parallel), one device each; every sample keeps
its own seed, so the files are the same for any N, and rank 0 gathers them and writes --out.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from jpeglm.errors import UserError


class SampleError(UserError):
    """A user error with a one-line message (bad prompt file, bad checkpoint, bad settings)."""


def add_arguments(p: argparse.ArgumentParser) -> None:
    from jpeglm.cli import flags
    from jpeglm.sample.config import SamplerConfig

    p.add_argument("--model", required=True, help="checkpoint: an HF export dir with jpeglm.yaml, a training run dir (its latest export), a released JPEG-LM dir, or "
                   "a hub id ORG/NAME[@REVISION] (e.g. uwnlp/jpeg-lm-reimplementation): fetched into the Hugging Face cache like "
                   "from_pretrained, read from it offline (HF_HUB_OFFLINE=1)")
    p.add_argument("--prompt", nargs="+", action="extend", default=[], metavar="FILE", help="prompt image(s) or video(s); each is encoded canonically and its top part kept. Without: unconditional samples")
    p.add_argument("--prompt-ratio", type=float, default=0.5, help="fraction of the picture (top MCU / code / pixel rows, first frames) kept from each prompt")
    p.add_argument("--prompt-cut", default=None, metavar="RULE", help="how prompts are cut (default: the codec's first rule). "
                   "JPEG: half_rows = int(2 * R * ratio) half MCU rows, the released run.py's cut (0.6 -> 152 of 256 MCUs), or "
                   "rows = round(R * ratio) whole MCU rows (0.6 -> 160); vq / pixel: rows; video: frames")
    p.add_argument("--prompt-frames", type=int, default=None, help="video only: number of leading frames kept from the prompt video (overrides --prompt-ratio)")
    p.add_argument("--num", type=int, default=4, help="samples per prompt (or unconditional samples without --prompt)")
    p.add_argument("--class", dest="class_names", action="append", default=[], metavar="NAME",
                   help="class-conditional models: sample --num of this class (repeatable); without it a labelled "
                        "model samples unconditionally (its null class)")
    p.add_argument("--classes", choices=["all"], default=None,
                   help="all: --num samples of every class the model knows (class-balanced)")
    flags.add_fields(p.add_argument_group("sampling"), SamplerConfig)
    p.add_argument("--device", default=None, help="torch device (default: cuda when available, else cpu)")
    p.add_argument("--backend", choices=["torch", "vllm"], default="torch", help="torch: our batched KV-cache sampler; vllm: vLLM on a GPU (optional extra, no grammar constraint)")
    p.add_argument("--overwrite", action="store_true", help="replace --out when it already holds files")
    p.add_argument("--out", required=True, help="output directory (created; must be empty or absent unless --overwrite)")


def run(args) -> int:
    from jpeglm.eval.parallel import ParallelError

    try:
        manifest = sample_to_dir(args)
    except UserError as e:  # SampleError, a folder another run holds, ...: one line (also when called directly)
        print(f"jpeglm sample: error: {e}", file=sys.stderr)
        return 2
    except ParallelError as e:
        print(f"jpeglm sample: error: {e}", file=sys.stderr)
        return 3
    if manifest is None:  # another rank than 0: rank 0 wrote the files
        return 0
    n = len(manifest["files"])
    line = f"wrote {n} samples to {args.out} in {manifest['seconds']:.1f}s"
    if manifest.get("strict_decodable_rate") is not None:
        line += f"; strictly decodable: {manifest['strict_decodable_rate']:.0%}"
    print(line)
    return 0


def _load(model_path: str, device: str):
    """load_for_inference with its errors turned into one-line SampleErrors."""
    from jpeglm.checkpoint import CheckpointError, load_for_inference

    try:
        return load_for_inference(model_path, device=device)
    except CheckpointError as e:
        raise SampleError(f"--model {model_path}: {e}") from e
    except (OSError, ValueError) as e:
        raise SampleError(f"--model {model_path}: not a loadable checkpoint ({type(e).__name__}: {e})") from e


def _encode_prompts(codec, files: list[str], ratio: float, frames: int | None, rule: str | None = None):
    if frames is not None:
        if codec.media_kind != "video":
            raise SampleError("--prompt-frames applies to video checkpoints only")
        total = codec.prompt_steps()  # a video codec's prompts keep whole frames
        if not 0 < frames < total:
            raise SampleError(f"--prompt-frames must be in 1..{total - 1} (the codec's clips have {total} frames)")
        ratio = frames / total
    if not 0.0 <= ratio < 1.0:
        raise SampleError(f"--prompt-ratio must be in [0, 1), got {ratio}: a prompt of the whole picture leaves nothing to sample")
    try:
        codec.prompt_region(ratio, rule)  # an unknown rule, or a ratio that shows nothing
    except ValueError as e:
        raise SampleError(f"--prompt-cut / --prompt-ratio: {e}") from e
    full, cut = [], []
    for f in files:
        if not Path(f).is_file():
            raise SampleError(f"prompt {f}: no such file")
        try:
            symbols = codec.encode(f)
        except Exception as e:  # noqa: BLE001 - codecs raise MediaError/ValueError/OSError for bad input
            raise SampleError(f"prompt {f}: cannot be used as a {codec.media_kind} ({type(e).__name__}: {e})") from e
        try:
            cut.append(codec.prompt(symbols, ratio, rule) if rule is not None else codec.prompt(symbols, ratio))
        except ValueError as e:
            raise SampleError(f"prompt {f}: {e}") from e
        full.append(symbols)
    return full, cut


def _default_device() -> str:
    import torch

    return "cuda" if torch.cuda.is_available() else "cpu"


def _prepare_out(out: Path, overwrite: bool) -> Path:
    _check_out(out, overwrite)
    out.parent.mkdir(parents=True, exist_ok=True)
    _remove_leftovers(out)
    return Path(tempfile.mkdtemp(dir=out.parent, prefix=f".{out.name}.tmp-"))


def _remove_leftovers(out: Path) -> None:
    """Temporary folders a killed `jpeglm sample` into the same --out left beside it (.OUT.tmp-*,
    .OUT.old-*), unless their process is still running (the pid is in .old names; .tmp ones are
    removed once older than an hour, so a run sampling now keeps its own)."""
    from jpeglm.lock import pid_alive

    for p in out.parent.glob(f".{out.name}.*"):
        rest = p.name[len(out.name) + 2 :]
        if rest.startswith("tmp-") and time.time() - p.stat().st_mtime > 3600:
            shutil.rmtree(p, ignore_errors=True)
        elif rest.startswith("old-") and rest[4:].isdigit() and not pid_alive(int(rest[4:])):
            shutil.rmtree(p, ignore_errors=True) if p.is_dir() else p.unlink(missing_ok=True)


def _publish(tmp: Path, out: Path) -> None:
    old = None
    if out.exists():
        old = out.parent / f".{out.name}.old-{os.getpid()}"
        os.replace(out, old)
    os.replace(tmp, out)
    if old is not None:
        shutil.rmtree(old, ignore_errors=True) if old.is_dir() else old.unlink()


def sample_to_dir(args) -> dict | None:
    """The whole command as a function tests call: returns the manifest it wrote (None on ranks > 0)."""
    from jpeglm.eval.parallel import Ranks
    from jpeglm.sample import SamplerConfig

    out = Path(args.out)
    from jpeglm.cli import flags

    try:
        cfg = flags.build(SamplerConfig, args)
    except ValueError as e:
        raise SampleError(str(e)) from e
    if args.num < 1:
        raise SampleError("--num must be >= 1")
    ranks = Ranks.from_env()
    if ranks.world_size > 1 and args.backend == "vllm":
        raise SampleError("--backend vllm runs in one process (vLLM shards the model itself); start it without torchrun")
    _check_out(out, args.overwrite)  # before the lock: nothing is created in a folder that is refused
    import contextlib

    from jpeglm.lock import OutputLock

    # one run per --out: a second sample or eval into it is refused naming this one (rank 0 holds it
    # for all ranks of a data-parallel run: it is the one that writes)
    with OutputLock(out, f"jpeglm sample --model {args.model}", remove_if_unused=True) if ranks.rank == 0 \
            else contextlib.nullcontext():
        return _sample_locked(args, out, cfg, ranks)


def _check_out(out: Path, overwrite: bool) -> None:
    from jpeglm.lock import LOCK_NAME

    if out.exists() and (not out.is_dir() or any(p.name != LOCK_NAME for p in out.iterdir())) and not overwrite:
        raise SampleError(f"--out {out} exists and is not an empty directory (use --overwrite to replace it)")


def _sample_locked(args, out: Path, cfg, ranks) -> dict | None:
    from jpeglm.sample import CacheTooLargeError, PromptTooLongError
    from jpeglm.sample.budget import sampling_context

    device = ranks.device(args.device) or _default_device()
    loaded = _load(args.model, device)
    codec, tokenizer = loaded.codec, loaded.tokenizer
    rule = getattr(args, "prompt_cut", None)
    full, prompts = _encode_prompts(codec, list(args.prompt), args.prompt_ratio, args.prompt_frames, rule) if args.prompt else ([], None)
    classes = class_ids(tokenizer, list(getattr(args, "class_names", []) or []), getattr(args, "classes", None))
    from jpeglm.sample.sampler import check_classes

    try:
        check_classes(tokenizer, classes, cfg.cfg_scale)
    except ValueError as e:
        raise SampleError(str(e).replace("cfg_scale=", "--cfg-scale ")) from e
    if classes is not None and args.backend == "vllm":
        raise SampleError("--class / --classes need --backend torch")

    t0 = time.perf_counter()
    try:
        if args.backend == "vllm":
            from jpeglm.sample.vllm_backend import generate_vllm

            samples = generate_vllm(_export_dir(loaded, args.model), tokenizer, codec, prompts, args.num, cfg,
                                    context=sampling_context(loaded.model, cfg.max_new_tokens, codec.symbols_per_item() is not None))
        else:
            samples = _generate_split(loaded.model, tokenizer, codec, prompts, args.num, cfg, device, ranks, classes)
    except (PromptTooLongError, CacheTooLargeError) as e:
        raise SampleError(str(e)) from e
    except ImportError as e:
        raise SampleError(str(e)) from e
    seconds = time.perf_counter() - t0
    if samples is None:
        return None

    tmp = _prepare_out(out, args.overwrite)
    try:
        manifest = _write_all(tmp, args, cfg, codec, tokenizer, samples, full, prompts, seconds, loaded)
        _publish(tmp, out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return manifest


def _generate_split(model, tokenizer, codec, prompts, num: int, cfg, device, ranks, classes=None):
    """`generate` with the jobs (prompt x class x seed, in generate's order) cut into batch-sized chunks
    and dealt to the ranks; chunk [a, b) samples with seeds seed + a .. seed + b - 1, as one call would.
    Rank 0 gets every sample in order, the other ranks None.

    A chunk is one `generate` call with one job per entry (`num_samples=1`, its class and prompt
    repeated), so its batch is the single call's batch; only prompts *and* classes together cannot be
    said per job in one call: then every chunk runs per prompt, for any number of ranks (one rank
    included), so the files stay the same whatever N is."""
    import dataclasses

    from jpeglm.eval.parallel import chunked
    from jpeglm.sample import generate

    both = prompts is not None and classes is not None
    if ranks.world_size == 1 and not both:
        return generate(model, tokenizer, codec, prompts, num, cfg, device, classes=classes)
    per_prompt = num * (len(classes) if classes is not None else 1)
    n = per_prompt * (len(prompts) if prompts is not None else 1)

    def label(i):
        return classes[(i // num) % len(classes)]

    mine = []
    for run in ranks.mine(chunked(n, cfg.batch_size)):
        if prompts is None:
            sub = dataclasses.replace(cfg, seed=cfg.seed + run[0])
            labels = None if classes is None else [label(i) for i in run]
            got = generate(model, tokenizer, codec, None, 1 if labels else len(run), sub, device, classes=labels)
        elif classes is None:
            sub = dataclasses.replace(cfg, seed=cfg.seed + run[0])
            got = generate(model, tokenizer, codec, [prompts[i // num] for i in run], 1, sub, device)
        else:
            got = []
            for p in sorted({i // per_prompt for i in run}):
                seg = [i for i in run if i // per_prompt == p]
                sub = dataclasses.replace(cfg, seed=cfg.seed + seg[0])
                got += generate(model, tokenizer, codec, [prompts[p]], 1, sub, device,
                                classes=[label(i) for i in seg])
        if prompts is not None:
            got = [dataclasses.replace(x, prompt_index=i // per_prompt) for x, i in zip(got, run)]
        mine.extend(zip(run, got))
    parts = ranks.gather(mine, "gathering the samples")
    if parts is None:
        return None
    return [x for _, x in sorted((p for part in parts for p in part), key=lambda t: t[0])]


def class_ids(tokenizer, names: list[str], which: str | None) -> list[int] | None:
    """--class NAME ... / --classes all -> class ids (None: unconditional); unknown names list the known."""
    if names and which:
        raise SampleError("give --class NAME or --classes all, not both")
    if not names and not which:
        return None
    if not tokenizer.num_classes:
        raise SampleError("--class / --classes need a class-conditional model (trained on data prepared with --labels); "
                          "this one has no classes")
    if which == "all":
        return list(range(tokenizer.num_classes))
    try:
        return [tokenizer.class_index(n) for n in names]
    except KeyError as e:
        raise SampleError(f"--class: {e.args[0]}") from None


def _export_dir(loaded, model_arg: str) -> str:
    """The HF export dir vLLM loads (a run dir resolves to its latest export)."""
    from jpeglm.checkpoint import resolve_export

    return str(resolve_export(model_arg))


def _write_media(path: Path, codec, sample) -> dict:
    """Write one sample as the codec's file; returns the extra manifest fields for it (what the
    codec repaired to write it: `file_repairs`, e.g. a JPEG's EOI appended)."""
    extra: dict = {}
    try:
        extra["file_repairs"] = codec.repair(sample.symbols)[1]
        data = codec.to_file(sample.symbols, sample.media)
    except Exception as e:  # noqa: BLE001 - a broken generated stream is a result, not a crash
        extra["file_error"] = f"{type(e).__name__}: {e}"
    else:
        path.write_bytes(data)
        extra.update(codec.check_file(data))
    frames = np.asarray(sample.media)
    if codec.media_kind == "video" and frames.ndim == 4 and len(frames):
        from jpeglm import video

        video.contact_sheet(frames, min(len(frames), 8)).save(path.with_name(path.stem + "_frames.png"))
        extra["frames"] = int(len(frames))
    return extra


def _still(codec, media) -> np.ndarray:
    """An image for contact sheets: the media itself, or a video's last frame."""
    a = np.asarray(media, dtype=np.uint8)
    return a[-1] if a.ndim == 4 else a


def contact_sheet(images: list[np.ndarray], gap: int = 4):
    """One row of images (uint8 HxWx3, same height), white gaps between them, as a PIL image."""
    from PIL import Image

    h = max(im.shape[0] for im in images)
    w = sum(im.shape[1] for im in images) + gap * (len(images) - 1)
    sheet = Image.new("RGB", (w, h), (255, 255, 255))
    x = 0
    for im in images:
        sheet.paste(Image.fromarray(im), (x, 0))
        x += im.shape[1] + gap
    return sheet


def _write_all(tmp: Path, args, cfg, codec, tokenizer, samples, full, prompts, seconds, loaded) -> dict:
    import dataclasses

    from jpeglm.config import atomic_write_text

    files = []
    per_prompt: dict = {}
    counters: dict = {}
    for s in samples:
        stem = "u" if s.prompt_index is None else f"p{s.prompt_index:03d}"
        if s.label is not None:
            stem += f"_c{s.label:03d}"
        k = counters.get(stem, 0)
        counters[stem] = k + 1
        name = f"{stem}_s{k:03d}{codec.file_suffix}"
        extra = _write_media(tmp / name, codec, s)
        per_prompt.setdefault(s.prompt_index, []).append(_still(codec, s.media))
        files.append({
            "file": name,
            **({"label": s.label, "class": tokenizer.class_names[s.label]} if s.label is not None else {}),
            "prompt": None if s.prompt_index is None else str(args.prompt[s.prompt_index]),
            "prompt_index": s.prompt_index,
            "seed": s.seed,
            "n_prompt_tokens": s.n_prompt_tokens,
            "n_new_tokens": s.n_new_tokens,
            "seconds": round(s.seconds, 4),
            "finish": s.finish,
            "steered": s.steered,
            # sampled tokens that stand for no symbol (e.g. sentencepiece's lone "▁"): dropped
            "dropped_tokens": tokenizer.dropped_count(s.new_token_ids or []),
            "report": s.report.to_dict(),
            **extra,
        })
    for pi, stills in per_prompt.items():
        if pi is None:
            contact_sheet(stills).save(tmp / "sheet_unconditional.png")
        else:
            prompt_img = _still(codec, codec.decode(prompts[pi])[0])
            original = _still(codec, codec.decode(full[pi])[0])
            contact_sheet([prompt_img, *stills, original]).save(tmp / f"sheet_p{pi:03d}.png")
    strict = [f["strict_decodable"] for f in files if "strict_decodable" in f]
    new_tokens = sum(f["n_new_tokens"] for f in files)
    manifest = {
        "format": "jpeglm-samples",
        "version": 1,
        "model": str(args.model),
        "backend": args.backend,
        "device": str(args.device or _default_device()),
        "prompts": [str(p) for p in args.prompt],
        "prompt_ratio": args.prompt_ratio if args.prompt else None,
        "prompt_frames": args.prompt_frames,
        # the cut rule and the picture region each prompt shows (codec.prompt_region)
        "prompt_cut": _prompt_region(codec, args) if args.prompt else None,
        "num_per_prompt": args.num,
        "classes": [tokenizer.class_names[c] for c in sorted({s.label for s in samples if s.label is not None})] or None,
        "sampler": dataclasses.asdict(cfg),
        "codec": codec.to_config(),
        "tokenizer_kind": getattr(tokenizer, "kind", type(tokenizer).__name__),
        "seconds": round(seconds, 3),
        "new_tokens": new_tokens,
        "tokens_per_s": round(new_tokens / seconds, 2) if seconds > 0 else None,
        "decode_status": {k: sum(f["report"]["status"] == k for f in files) for k in ("ok", "repaired", "failed")},
        "strict_decodable_rate": (sum(strict) / len(strict)) if strict else None,
        "files_repaired": sum(bool(f.get("file_repairs")) for f in files),
        "dropped_tokens": sum(f["dropped_tokens"] for f in files),
        "files": files,
        "versions": _versions(),
    }
    atomic_write_text(tmp / "manifest.json", json.dumps(manifest, indent=2))
    return manifest


def _prompt_region(codec, args) -> dict:
    ratio = args.prompt_ratio if args.prompt_frames is None else args.prompt_frames / codec.prompt_steps()
    return codec.prompt_region(ratio, getattr(args, "prompt_cut", None))


def _versions() -> dict:
    import PIL
    import torch
    import transformers

    import jpeglm

    return {"jpeglm": jpeglm.__version__, "torch": torch.__version__, "transformers": transformers.__version__, "pillow": PIL.__version__}
