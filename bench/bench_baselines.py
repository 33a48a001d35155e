"""Benchmark of the baselines: tokens per image, reconstruction PSNR and encode/decode speed.

For each representation (canonical JPEG q25 bytes, VQ codes at f16/f8, pixel palettes at 32/64):
symbols per image, bits per image, and the reconstruction PSNR of encode -> decode against the
canonical image; VQ/LFQ encode+decode images/s on CPU at random init (speed only depends on the
shape) and of a trained tokenizer when `--vq-model` is given (its PSNR is labelled with its size
and training). Writes a Markdown table (default bench/results/baselines.md).

    python bench/bench_baselines.py --images ../shared/data/pets/test --n 32 \
        --palette-fit ../shared/data/pets/train --vq-model runs/vq-tiny --threads 1
"""

from __future__ import annotations

import argparse
import os
import platform
import sys
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from jpeglm.config import atomic_write_text  # noqa: E402
from jpeglm.media import open_image, prepare_image  # noqa: E402


def psnr(a: np.ndarray, b: np.ndarray) -> float:
    mse = float(((a.astype(np.float64) - b.astype(np.float64)) ** 2).mean())
    return 10 * np.log10(255.0**2 / max(mse, 1e-10))


def list_images(spec: str, n: int) -> list[Path]:
    exts = {".jpg", ".jpeg", ".png"}
    files = sorted(p for p in Path(spec).rglob("*") if p.suffix.lower() in exts)
    return files[:n]


def timed(fn, reps: int = 1) -> float:
    t = time.perf_counter()
    for _ in range(reps):
        fn()
    return (time.perf_counter() - t) / reps


def bench_jpeg(imgs256, size: int = 256) -> dict:
    from jpeglm.codecs.jpeg import JpegCodec, JpegParams

    codec = JpegCodec(JpegParams(size=size))
    imgs256 = [prepare_image(im, size) for im in imgs256]
    sizes, ps = [], []
    t = time.perf_counter()
    for im in imgs256:
        data = codec.encode(im)
        rec, rep = codec.decode(data)
        sizes.append(len(data))
        ps.append(psnr(rec, np.asarray(im)))
    dt = time.perf_counter() - t
    return {"name": f"JPEG q25 canonical bytes ({size}px)", "symbols": float(np.mean(sizes)), "bits_per_symbol": 8.0,
            "psnr": float(np.mean(ps)), "ips": len(imgs256) / dt}


def bench_pixel(imgs256, palette_file: str | None, size: int, upsample: str) -> dict:
    from jpeglm.codecs.pixel import PixelCodec, PixelParams

    if palette_file:
        codec = PixelCodec.from_palette(palette_file, size=size, upsample=upsample)
        which = "k-means palette"
    else:
        codec = PixelCodec(PixelParams(size=size, upsample=upsample))
        which = "uniform 8x8x8 palette"
    ps = []
    t = time.perf_counter()
    for im in imgs256:
        rec, _ = codec.decode(codec.encode(im))
        ps.append(psnr(rec, np.asarray(im)))
    dt = time.perf_counter() - t
    return {"name": f"pixel {size}x{size}, {which} {codec.num_codes}, {upsample} to 256", "symbols": float(size * size),
            "bits_per_symbol": codec.bits_per_symbol(), "psnr": float(np.mean(ps)), "ips": len(imgs256) / dt}


def bench_vq_speed(config: str, overrides: list[str], batch: int, reps: int) -> dict:
    from jpeglm.config import load_config
    from jpeglm.codecs.vq_model import VqAutoencoder
    from jpeglm.baselines.vq_train import VqConfig

    cfg = load_config(VqConfig, config, overrides).model
    model = VqAutoencoder(cfg).eval()
    x = torch.rand(batch, 3, cfg.image_size, cfg.image_size) * 2 - 1
    with torch.no_grad():
        idx = model.encode_indices(x)  # warm-up
        model.decode_indices(idx)
        enc = timed(lambda: model.encode_indices(x), reps)
        dec = timed(lambda: model.decode_indices(idx), reps)
    nparams = sum(p.numel() for p in model.parameters())
    return {"name": f"{Path(config).stem} {' '.join(overrides)}".strip(), "size": cfg.image_size, "grid": cfg.grid,
            "codes": cfg.num_codes, "params_m": nparams / 1e6, "enc_ips": batch / enc, "dec_ips": batch / dec}


def bench_vq_trained(model_dir: str, files: list[Path]) -> dict:
    from jpeglm.codecs.vq import VqCodec

    codec = VqCodec.from_pretrained(model_dir)
    s = codec.params.size
    ims = [prepare_image(open_image(f), s) for f in files]
    t = time.perf_counter()
    codes = codec.encode_batch(ims)
    t_enc = time.perf_counter() - t
    ps = []
    t = time.perf_counter()
    for im, c in zip(ims, codes):
        rec, _ = codec.decode(c)
        ps.append(psnr(rec, np.asarray(im)))
    t_dec = time.perf_counter() - t
    return {"name": f"VQ {codec.params.quantizer} trained ({Path(model_dir).name}), {s}px, {codec.params.grid}x{codec.params.grid} codes",
            "symbols": float(codec.params.grid**2), "bits_per_symbol": codec.bits_per_symbol(), "psnr": float(np.mean(ps)),
            "ips": len(ims) / (t_enc + t_dec), "size": s}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--images", default=str(Path(__file__).resolve().parents[2] / "shared/data/pets/test"), help="folder of evaluation images")
    ap.add_argument("--n", type=int, default=32, help="number of evaluation images")
    ap.add_argument("--palette", default=None, help="pixel palette .npz (jpeglm pixel fit); default: the uniform palette")
    ap.add_argument("--palette64", default=None, help="palette fitted at size 64 (default: --palette)")
    ap.add_argument("--vq-model", default=None, help="a trained VQ checkpoint dir to measure PSNR with")
    ap.add_argument("--threads", type=int, default=1, help="torch intra-op threads (1 is fastest on a busy shared CPU)")
    ap.add_argument("--batch", type=int, default=8, help="batch for VQ speed")
    ap.add_argument("--reps", type=int, default=2, help="timed repetitions for VQ speed")
    ap.add_argument("--out", default=str(Path(__file__).resolve().parent / "results" / "baselines.md"), help="Markdown output")
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)
    root = Path(__file__).resolve().parents[1]
    files = list_images(args.images, args.n)
    if not files:
        print(f"no images under {args.images}")
        return 2
    imgs256 = [prepare_image(open_image(f), 256) for f in files]

    rows = [bench_jpeg(imgs256)]
    for size, pal in ((32, args.palette), (64, args.palette64 or args.palette)):
        for up in ("nearest", "bilinear"):
            rows.append(bench_pixel(imgs256, pal, size, up))
    vq_note = []
    if args.vq_model:
        import json

        import yaml

        vq_row = bench_vq_trained(args.vq_model, files)
        m = json.loads((Path(args.vq_model) / "metrics.json").read_text())
        t = yaml.safe_load((Path(args.vq_model) / "vq_config.yaml").read_text())
        vq_note = [
            f"Trained VQ: `{args.vq_model}`: {t['model']['quantizer']}, {t['train']['max_steps']} steps of batch {t['train']['batch_size']}"
            f" on {m.get('train_images')} images; its own held-out split ({m.get('heldout_images')} images): PSNR {m['psnr']:.2f} dB,"
            f" {m['codes_used']} of {m['num_codes']} codes used, perplexity {m['perplexity']:.0f}.",
        ]
        rows.append(bench_jpeg(imgs256, size=vq_row["size"]))  # same size, for scale
        rows.append(vq_row)
    for bits, grid in ((14, 16), (14, 32), (18, 16)):
        rows.append({"name": f"VQ/LFQ 256px f{256 // grid}, 2^{bits} codes (token count only)", "symbols": float(grid * grid), "bits_per_symbol": float(bits), "psnr": None, "ips": None})

    speed = [
        bench_vq_speed(str(root / "configs/vq/tiny.yaml"), [], args.batch, args.reps),
        bench_vq_speed(str(root / "configs/vq/lfq_256.yaml"), [], args.batch, args.reps),
        bench_vq_speed(str(root / "configs/vq/lfq_256.yaml"), ["model.channel_mult=[1,2,2,4]"], args.batch, args.reps),
        bench_vq_speed(str(root / "configs/vq/vq_256.yaml"), [], args.batch, args.reps),
    ]

    cmd = "python bench/bench_baselines.py " + " ".join(argv if argv is not None else sys.argv[1:])
    lines = [
        "# Baselines: tokens per image, reconstruction PSNR, VQ speed",
        "",
        f"Machine: {platform.processor() or platform.machine()}, {os.cpu_count()} CPU cores shared with other jobs, no GPU; torch {torch.__version__}, {args.threads} thread(s).",
        f"Images: the first {len(files)} of `{args.images}` (centre crop + antialiased resize to 256). Command:",
        "",
        f"    {cmd}",
        "",
        "## Tokens per image and reconstruction PSNR (encode -> decode vs the canonical image)",
        "",
        "| representation | symbols / image | bits / symbol | bits / image | PSNR dB | images/s (enc+dec, CPU) |",
        "|---|---:|---:|---:|---:|---:|",
    ]
    for r in rows:
        p = "-" if r["psnr"] is None else f"{r['psnr']:.2f}"
        s = "-" if r["ips"] is None else f"{r['ips']:.1f}"
        lines.append(f"| {r['name']} | {r['symbols']:.0f} | {r['bits_per_symbol']:.2f} | {r['symbols'] * r['bits_per_symbol']:.0f} | {p} | {s} |")
    lines += [
        "",
        "JPEG symbols are the modelled bytes (tables left out, restart markers in). The trained VQ row is",
        "measured at its own size against the image prepared at that size (not comparable to 256px rows).",
        "",
        *vq_note,
        "",
        f"## VQ/LFQ autoencoder speed on CPU (random init; batch {args.batch}, {args.threads} thread(s))",
        "",
        "| config | image | codes | codebook | params (M) | encode img/s | decode img/s |",
        "|---|---:|---:|---:|---:|---:|---:|",
    ]
    for r in speed:
        lines.append(f"| {r['name']} | {r['size']} | {r['grid']}x{r['grid']} | {r['codes']} | {r['params_m']:.1f} | {r['enc_ips']:.2f} | {r['dec_ips']:.2f} |")
    lines += ["", "Timings on a shared 2-core CPU vary with the other jobs' load (x2 or more between runs)."]
    out = Path(args.out)
    atomic_write_text(out, "\n".join(lines) + "\n")
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    sys.exit(main())
