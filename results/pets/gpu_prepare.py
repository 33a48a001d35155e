"""Step 1 of the GPU-scale pets run (results/pets/gpu.sh), here on the CPU: everything that travels.

    python results/pets/gpu_prepare.py --pets ../shared/data/pets --work runs/pets-gpu [--dry-run]

Writes WORK/prepared/ (git-ignored under runs/; the device call carries it):
  data/jpeg/        128x128 canonical JPEG bytes as BPE-320 token shards (prep + tokenizer train + prep)
  photos/           the training photos at 128x128 as JPEG q75 files, the same names as the originals:
                    the VQ tokenizer trains on them and the VQ and pixel shards are cut from them there
  palette.npz       the pixel system's palette, fitted here on the original photos
  test/             copies of the first N held-out photos (sorted, as `jpeglm eval` takes them), so
                    prompts there are those the scoring here rebuilds from ../shared/data/pets/test
  plan.json         the sizes (gpu_plan.py) and the sources
and prints what travels, failing when it would not fit the device call's 64 MiB.
"""

from __future__ import annotations

import argparse
import functools
import io
import json
import shutil
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
import gpu_plan

ROOT = HERE.parents[1]
TRAVEL_LIMIT = 64 * 2**20
CODE_ALLOWANCE = 4 * 2**20  # the working tree's own files (2.4 MiB today)


def folder_bytes(p: Path) -> int:
    return sum(f.stat().st_size for f in p.rglob("*") if f.is_file()) if p.exists() else 0


def prep_jpeg(train_dir: Path, work: Path, out: Path, p: dict, workers: int, log) -> dict:
    from jpeglm.data_prep.bpe import BpeSettings, train_from_shards
    from jpeglm.data_prep.pipeline import PrepSettings, prep
    from jpeglm.data_prep.sources import open_source

    settings = PrepSettings(val_fraction=p["val_fraction"], workers=workers, progress=False, limit=p["train_limit"], min_side=16)
    factory = functools.partial(gpu_plan.jpeg_codec, p["size"])
    raw = work / "jpeg-bytes"
    prep(open_source(str(train_dir)), factory, raw, settings, log=log)
    tok, stats = train_from_shards(raw, BpeSettings(vocab_size=p["bpe_vocab"]))
    tok.save_pretrained(work / "tokenizer-bpe")
    log(f"BPE-{p['bpe_vocab']}: {stats['bytes_per_token']:.2f} bytes/token, {stats['tokens_per_item']:.0f} tokens per photo")
    prep(open_source(str(train_dir)), factory, out, settings, tokenizer=tok, log=log)
    return stats


def write_photos(train_dir: Path, out: Path, p: dict, log) -> int:
    """Each training photo at the run's size (the canonical crop + resize), as a JPEG q75 file."""
    from jpeglm.eval.fid import list_image_files
    from jpeglm.media import MediaError, open_image, prepare_image

    out.mkdir(parents=True, exist_ok=True)
    n = 0
    for f in list_image_files(train_dir):
        if p["train_limit"] is not None and n >= p["train_limit"]:
            break
        try:
            im = prepare_image(open_image(f), p["photo_size"])
        except MediaError as e:
            log(f"skipped {f}: {e}")
            continue
        buf = io.BytesIO()
        im.save(buf, "JPEG", quality=p["photo_quality"], subsampling=2)
        rel = f.relative_to(train_dir).with_suffix(".jpg")
        (out / rel).parent.mkdir(parents=True, exist_ok=True)
        (out / rel).write_bytes(buf.getvalue())
        n += 1
    return n


def fit_palette(train_dir: Path, out: Path, p: dict) -> None:
    from jpeglm.baselines.pixel_fit import PaletteSettings, collect_pixels, fit_palette, save_palette

    s = PaletteSettings(colors=p["pixel_colors"], size=p["pixel_grid"], max_images=p["train_limit"] or 0)
    pixels, n_images, _ = collect_pixels(str(train_dir), s)
    save_palette(out, fit_palette(pixels, s), s.size, num_images=n_images, num_pixels=len(pixels), seed=s.seed)


def copy_test(test_dir: Path, out: Path, n: int) -> list[str]:
    """The first n readable test photos, as the eval harness picks them, copied under their own names."""
    from jpeglm.eval.fid import list_image_files
    from jpeglm.media import MediaError, open_image

    out.mkdir(parents=True, exist_ok=True)
    names = []
    for f in list_image_files(test_dir):
        if len(names) >= n:
            break
        try:
            open_image(f)
        except MediaError:
            continue
        rel = f.relative_to(test_dir)
        (out / rel).parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(f, out / rel)
        names.append(str(rel))
    return names


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--pets", default=str(ROOT.parent / "shared" / "data" / "pets"),
                    help="the pets folder (train/ and test/ of photos)")
    ap.add_argument("--work", default=None, help="run folder (default runs/pets-gpu, runs/pets-gpu-dry with --dry-run)")
    ap.add_argument("--dry-run", action="store_true", help="tiny sizes (gpu_plan.DRY): the whole path in seconds on a CPU")
    ap.add_argument("--workers", type=int, default=1, help="prep processes")
    ap.add_argument("--wheels", default=str(ROOT / ".whl"), help="wheel folder that travels too (counted in the size check)")
    args = ap.parse_args(argv)
    p = gpu_plan.plan(args.dry_run)
    pets = Path(args.pets)
    work = Path(args.work or ROOT / "runs" / ("pets-gpu-dry" if args.dry_run else "pets-gpu"))
    for sub in ("train", "test"):
        if not (pets / sub).is_dir():
            print(f"gpu_prepare: error: {pets / sub} is not a folder of photos (--pets)", file=sys.stderr)
            return 2
    prepared = work / "prepared"
    if prepared.exists():
        shutil.rmtree(prepared)  # one writer: a rerun starts over
    scratch = work / "prepare-work"
    shutil.rmtree(scratch, ignore_errors=True)
    prepared.mkdir(parents=True)
    timings = {}
    t = time.perf_counter()
    bpe = prep_jpeg(pets / "train", scratch, prepared / "data" / "jpeg", p, args.workers, log=print)
    timings["jpeg_prep_s"] = time.perf_counter() - t
    t = time.perf_counter()
    n_photos = write_photos(pets / "train", prepared / "photos", p, log=print)
    timings["photos_s"] = time.perf_counter() - t
    t = time.perf_counter()
    fit_palette(pets / "train", prepared / "palette.npz", p)
    timings["palette_s"] = time.perf_counter() - t
    test = copy_test(pets / "test", prepared / "test", p["num_test"])
    sizes = {k: folder_bytes(prepared / k) for k in ("data", "photos", "test")}
    sizes["wheels"] = folder_bytes(Path(args.wheels))
    total = sum(sizes.values()) + CODE_ALLOWANCE
    info = {"plan": p, "dry_run": args.dry_run, "pets": str(pets), "photos": n_photos, "test": test,
            "bpe": bpe, "bytes": sizes, "timings": timings}
    (prepared / "plan.json").write_text(json.dumps(info, indent=1, default=str) + "\n")
    mib = {k: round(v / 2**20, 2) for k, v in sizes.items()}
    print(f"prepared {prepared}: {n_photos} photos, {len(test)} test prompts; MiB {mib}, "
          f"with ~{CODE_ALLOWANCE >> 20} MiB of code {total / 2**20:.1f} of {TRAVEL_LIMIT >> 20}")
    if total > TRAVEL_LIMIT:
        print(f"gpu_prepare: error: {total / 2**20:.1f} MiB would travel; the device call carries at most 64 MiB "
              "(lower photo_quality in gpu_plan.py)", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
