"""`jpeglm demo`: the whole story on built-in photos, on a laptop CPU, in minutes.

Prep scikit-image's bundled photos as canonical JPEG bytes, train a BPE tokenizer on them, fit the
two baselines' tokenizers (an LFQ autoencoder and a 512-colour palette), pretrain the same tiny
Llama on each representation, sample completions from the same prompts and seeds, and print the
FID table with the path of the report. Every step is a `jpeglm` subcommand, so the demo doubles as
a worked example of the CLI; `--only` stops after a stage.
"""

from __future__ import annotations

import argparse
import shlex
import time
from pathlib import Path

import yaml

STAGES = ("prep", "tokenizer", "baselines", "train", "eval")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--out", default="runs/demo", help="directory for everything the demo writes")
    parser.add_argument("--input", default="builtin:skimage",
                        help="image source: a folder, an HF dataset, or builtin:skimage (photos bundled with scikit-image)")
    parser.add_argument("--size", type=int, default=64,
                        help="image side in pixels for every representation (the paper uses 256; 64 keeps the CPU demo to minutes)")
    parser.add_argument("--steps", type=int, default=600, help="Llama training steps per system")
    parser.add_argument("--vq-steps", type=int, default=300, help="training steps of the tiny LFQ autoencoder")
    parser.add_argument("--vocab-size", type=int, default=320, help="BPE vocabulary for the JPEG system (paper: 320 at 256x256)")
    parser.add_argument("--samples", type=int, default=2, help="completions per held-out prompt and prompt ratio")
    parser.add_argument("--systems", default="jpeg,vq,pixel", help="comma-separated systems to train and compare")
    parser.add_argument("--only", choices=STAGES, default=None, help="stop after this stage (prep, tokenizer, baselines, train, eval)")
    parser.add_argument("--workers", type=int, default=1, help="prep worker processes")
    parser.add_argument("--video", action="store_true",
                        help="the AVC-LM path instead: a built-in clip -> H.264 shards -> tiny Llama -> .mp4 completions")


def split_photos(source: str, out: Path, size: int, heldout_every: int = 4, augment: bool = True) -> tuple[Path, Path, int]:
    """Write the source's photos as PNGs of `size` into out/train and out/heldout.

    Every `heldout_every`-th photo (in the source's sorted order) is held out: it is the FID
    reference and the prompts, and no model or tokenizer sees it. The built-in set is small (about
    two dozen photos), so each training photo also gives a mirror image and four corner crops.
    """
    from jpeglm.data_prep.sources import open_source
    from jpeglm.media import MediaError, open_image, prepare_image

    train_dir, held_dir = out / "train", out / "heldout"
    train_dir.mkdir(parents=True, exist_ok=True)
    held_dir.mkdir(parents=True, exist_ok=True)
    src = open_source(source, "image")
    kept = 0
    for item in src.items():
        try:
            img = open_image(src.fetch(item))
        except (MediaError, OSError) as e:
            print(f"   skipped {item.key}: {e}")
            continue
        stem = f"{kept:04d}"
        if kept % heldout_every == heldout_every - 1:
            prepare_image(img, size).save(held_dir / f"{stem}.png")
        else:
            variants = [img]
            if augment:
                from PIL import ImageOps

                w, h = img.size
                cw, ch = int(w * 0.75), int(h * 0.75)
                variants += [ImageOps.mirror(img)] + [img.crop((x, y, x + cw, y + ch)) for x in (0, w - cw) for y in (0, h - ch)]
            for j, v in enumerate(variants):
                prepare_image(v, size).save(train_dir / f"{stem}_{j}.png")
        kept += 1
    n_held = len(list(held_dir.glob("*.png")))
    if n_held < 2:
        raise SystemExit(f"demo: {source} gave {kept} usable photos; at least {2 * heldout_every} are needed")
    return train_dir, held_dir, n_held


def _step(title: str, argv: list[str]) -> None:
    from jpeglm.cli import main as cli_main

    print(f"\n== {title}\n$ jpeglm {shlex.join(argv)}", flush=True)
    t0 = time.time()
    code = cli_main(argv)
    if code != 0:
        raise SystemExit(f"demo: step '{title}' failed with exit code {code}")
    print(f"   ({time.time() - t0:.1f} s)", flush=True)


def run_video(out: Path, steps: int) -> int:
    """AVC-LM on a laptop: camera moves over a photo bundled with scikit-image become canonical
    H.264 clips (256x144, 15 frames), a tiny Llama learns their bytes, and sampling completes the
    first frames of a clip into .mp4 files that ordinary players open."""
    from jpeglm.video import builtin_clip, write_video

    videos = out / "videos"
    videos.mkdir(parents=True, exist_ok=True)
    clip = builtin_clip(frames=15)
    variants = {"pan": clip, "pan-back": clip[::-1], "mirror": clip[:, :, ::-1], "mirror-back": clip[::-1, :, ::-1]}
    for name, frames in variants.items():
        write_video(frames.copy(), videos / f"{name}.mp4", fps=10)
    print(f"== videos: {len(variants)} built-in clips in {videos}", flush=True)
    _step("prep: canonical H.264 bytes", ["prep", "--codec", "avc", "--input", str(videos), "--out", str(out / "data/avc"),
                                          "--val-fraction", "0", "--no-progress"])
    _step("train: tiny Llama on H.264 bytes", ["train", "--config", "tiny-cpu", "--data", str(out / "data/avc"),
                                               "--out", str(out / "train/avc"), "--max-steps", str(steps)])
    _step("sample: complete the first 5 frames", ["sample", "--model", str(out / "train/avc"), "--prompt", str(videos / "pan.mp4"),
                                                  "--prompt-frames", "5", "--num", "2", "--max-new-tokens", "4000",
                                                  "--out", str(out / "samples"), "--overwrite"])
    print(f"\nvideos: {out / 'samples'} (.mp4 files and contact sheets of their frames)")
    return 0


def run(args: argparse.Namespace) -> int:
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    if args.video:
        return run_video(out / "video", args.steps)
    systems = [s.strip() for s in args.systems.split(",") if s.strip()]
    size = str(args.size)
    print(f"== photos: {args.input} -> {out / 'photos'} (held-out photos are never trained on)", flush=True)
    train_dir, held_dir, n_held = split_photos(args.input, out / "photos", args.size)
    photos = str(train_dir)
    common = ["--input", photos, "--workers", str(args.workers), "--val-fraction", "0.1", "--no-progress"]
    jpeg_size = ["--size", size]  # a JPEG setting: prep refuses it for the VQ and pixel codecs (their size is their model's)

    # 1. canonical JPEG bytes with the byte-level tokenizer
    _step("prep: canonical JPEG bytes, byte tokens", ["prep", "--codec", "jpeg", "--out", str(out / "data/jpeg-bytes"), *jpeg_size, *common])
    if args.only == "prep":
        return 0
    # 2. BPE over those bytes (chr(b + 0x2800) text, as the released JPEG-LM tokenizer), then re-tokenize
    _step("tokenizer: sentencepiece BPE over the JPEG bytes",
          ["tokenizer", "train", "--data", str(out / "data/jpeg-bytes"), "--vocab-size", str(args.vocab_size),
           "--out", str(out / "tokenizer-bpe")])
    _step("prep: canonical JPEG bytes, BPE tokens",
          ["prep", "--codec", "jpeg", "--tokenizer", str(out / "tokenizer-bpe"), "--out", str(out / "data/jpeg"), *jpeg_size, *common])
    if args.only == "tokenizer":
        return 0
    # 3. the baselines' own tokenizers, fitted on the same photos
    if "vq" in systems:
        _step("vq train: a tiny LFQ autoencoder", ["vq", "train", "--input", photos, "--out", str(out / "vq-model"),
                                                   "--config", "tiny", "--max-steps", str(args.vq_steps)])
        _step("prep: LFQ codes", ["prep", "--codec", "vq", "--vq-model", str(out / "vq-model"), "--out", str(out / "data/vq"), *common])
    if "pixel" in systems:
        _step("pixel fit: a 512-colour palette", ["pixel", "fit", "--input", photos, "--out", str(out / "palette.npz")])
        _step("prep: palette pixels", ["prep", "--codec", "pixel", "--palette", str(out / "palette.npz"), "--out", str(out / "data/pixel"), *common])
    if args.only == "baselines":
        return 0
    # 4. the same tiny Llama, the same budget, on each representation. A 1024-token context (1 x 1024
    # tokens a step, the same tokens per step as tiny-cpu's 4 x 256): a whole 64x64 JPEG (~400 BPE
    # tokens) fits, as in the paper; at tiny-cpu's 256 the sampling budget (= the trained context) was
    # shorter than the 0.5 and 0.75 prompts and those settings failed with PromptTooLongError.
    for name in systems:
        _step(f"train: tiny Llama on {name}", ["train", "--config", "tiny-cpu", "--data", str(out / "data" / name),
                                             "--out", str(out / "train" / name), "--max-steps", str(args.steps),
                                             "--set", "data.seq_len=1024", "--set", "optim.micro_batch=1"])
    if args.only == "train":
        return 0
    # 5. the same prompts and seeds for every system; FID against the held-out photos
    eval_cfg = {
        "out": str(out / "eval"),
        "systems": [{"name": name, "checkpoint": str(out / "train" / name)} for name in systems],
        "images": str(held_dir),
        "num_images": n_held,
        "image_size": args.size,
        "num_samples": args.samples,
    }
    cfg_path = out / "eval.yaml"
    cfg_path.write_text(yaml.safe_dump(eval_cfg, sort_keys=False))
    _step("eval: FID table and report", ["eval", "--config", str(cfg_path)])
    print(f"\nreport: {out / 'eval' / 'report.html'}")
    return 0
