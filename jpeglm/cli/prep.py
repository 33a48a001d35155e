"""`jpeglm prep`: encode images or videos canonically and write token shards.

A thin layer over `jpeglm.data_prep.pipeline.prep`: parse flags, build the codec (`build_codec`, the one
place that knows how each codec is constructed from flags), the tokenizer and the source, run,
print the one-line summary. Exit codes: 0 when at least one record was written, 1 when none was
(every item skipped), 2 for a usage problem (bad input path, output folder holding another prep).
"""

from __future__ import annotations

import argparse
import functools
import sys

from jpeglm.data_prep.pipeline import DEFAULT_RECORDS_PER_SHARD

CODEC_NAMES = ("jpeg", "avc", "vq", "pixel")
# The flags build_codec reads; only these travel to worker processes.
_CODEC_FLAGS = ("codec", "size", "quality", "min_side", "vq_model", "palette", "frames", "fps")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--codec", required=True, choices=CODEC_NAMES,
                        help="representation: jpeg (canonical JPEG bytes), avc (canonical H.264 bytes), "
                             "vq (learned VQ/LFQ codes, needs --vq-model), pixel (palette pixels, needs --palette)")
    parser.add_argument("--input", default="builtin:skimage",
                        help="image/video file or folder (recursive), a datasets.save_to_disk folder, a .parquet file "
                             "or folder, imagefolder:DIR, hf:NAME[:SPLIT] (hub, needs the network), or builtin:skimage "
                             "(the photos shipped in scikit-image)")
    parser.add_argument("--out", required=True, help="output folder for shards + manifest.json (resumed if it holds "
                        "an unfinished prep with the same settings)")
    parser.add_argument("--tokenizer", default=None, metavar="DIR",
                        help="tokenizer folder (jpeglm tokenizer train, or a released JPEG-LM tokenizer); default: "
                             "byte-level for jpeg/avc, one id per code for vq/pixel")
    parser.add_argument("--workers", type=int, default=1, help="encoding processes; each takes whole chunks (see --records-per-shard), encodes and writes them")
    parser.add_argument("--val-fraction", type=float, default=0.05,
                        help="fraction of records in the val split, decided by hashing each record's key with --seed")
    parser.add_argument("--seed", type=int, default=0, help="seed of the train/val hash split")
    parser.add_argument("--records-per-shard", type=int, default=DEFAULT_RECORDS_PER_SHARD, metavar="K",
                        help="input items per chunk; chunk c becomes shard c of each split and is the unit of resume and of "
                             "parallel work (use at least a few chunks per worker)")
    parser.add_argument("--limit", type=int, default=None, help="use only the first N input items (in sorted order)")
    parser.add_argument("--part", default=None, metavar="I/N",
                        help="encode only chunks c with c %% N == I (0-based), so N machines sharing --out split one "
                             "prep; the last part to finish writes the manifest. Same bytes as one run")
    parser.add_argument("--overwrite", action="store_true",
                        help="delete a previous prep in --out (e.g. one made with other settings) and start over")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar (the summary line is still printed)")

    img = parser.add_argument_group("images")
    img.add_argument("--size", type=int, default=256, help="jpeg: side of the square canonical image (multiple of 16); "
                     "vq/pixel take theirs from the model / palette")
    img.add_argument("--quality", type=int, default=25, help="jpeg: Pillow JPEG quality (JPEG-LM uses 25)")
    img.add_argument("--min-side", type=int, default=64,
                     help="skip images (and videos) whose shorter side is below this many pixels, rather than upscale them")
    img.add_argument("--vq-model", default=None, metavar="DIR", help="vq: checkpoint folder written by `jpeglm vq train`")
    img.add_argument("--palette", default=None, metavar="FILE", help="pixel: palette file written by `jpeglm pixel fit`")

    ds = parser.add_argument_group("datasets")
    ds.add_argument("--split", default=None, help="dataset split to read (default: the one in hf:NAME:SPLIT, else train)")
    ds.add_argument("--column", default=None, help="dataset column holding the images/videos (default: the first "
                    "Image/Video feature, else a column named image/img/video)")

    vid = parser.add_argument_group("videos (avc)", "clip k samples frames at start + k*stride + j/fps, j < frames")
    vid.add_argument("--frames", type=int, default=15, help="frames per clip")
    vid.add_argument("--fps", type=int, default=10, help="frame rate clips are resampled to")
    vid.add_argument("--clip-start", type=float, default=0.0, help="start of the first clip, seconds")
    vid.add_argument("--clip-stride", type=float, default=3.0, help="seconds between clip starts")
    vid.add_argument("--clips-per-video", type=int, default=8, help="at most this many clips per video (0 = no limit)")
    vid.add_argument("--clip-min-frames", type=int, default=None,
                     help="keep a clip that runs past the end if it has at least this many real frames (its last "
                          "frame is repeated); default: only complete clips")


def build_codec(args: argparse.Namespace):
    """The codec the flags ask for. Called once in the main process and once in every worker."""
    if args.codec == "jpeg":
        from jpeglm.codecs.jpeg import JpegCodec, JpegParams

        return JpegCodec(JpegParams(size=args.size, quality=args.quality, min_side=args.min_side))
    if args.codec == "avc":
        from jpeglm.codecs.avc import AvcCodec, AvcParams

        return AvcCodec(AvcParams(frames=args.frames, fps=args.fps))
    if args.codec == "vq":
        if not args.vq_model:
            raise ValueError("--codec vq needs --vq-model DIR (a checkpoint from `jpeglm vq train`)")
        from jpeglm.codecs.vq import VqCodec

        return VqCodec.from_pretrained(args.vq_model)
    if args.codec == "pixel":
        if not args.palette:
            raise ValueError("--codec pixel needs --palette FILE (from `jpeglm pixel fit`)")
        from jpeglm.codecs.pixel import PixelCodec

        return PixelCodec.from_palette(args.palette)
    raise ValueError(f"unknown codec {args.codec!r}")


def build_clip_rule(args: argparse.Namespace):
    from jpeglm.video import ClipRule

    return ClipRule(start_s=args.clip_start, stride_s=args.clip_stride, frames=args.frames, fps=float(args.fps),
                    max_clips_per_video=args.clips_per_video, min_frames=args.clip_min_frames, min_side=args.min_side)


def _parse_part(text: str | None) -> tuple[int, int] | None:
    if text is None:
        return None
    try:
        i, n = (int(x) for x in text.split("/"))
    except ValueError:
        raise ValueError(f"--part must look like I/N (e.g. 0/4), got {text!r}") from None
    return i, n


def run(args: argparse.Namespace) -> int:
    from jpeglm.data_prep.pipeline import prep
    from jpeglm.data_prep.sources import SourceError, open_source
    from jpeglm.data_prep.writer import PrepError

    codec_args = argparse.Namespace(**{k: getattr(args, k) for k in _CODEC_FLAGS})
    try:
        codec_factory = functools.partial(build_codec, codec_args)  # picklable: workers rebuild the codec
        media_kind = "video" if args.codec == "avc" else "image"
        tokenizer = None
        if args.tokenizer:
            from jpeglm.tokenizer import load_tokenizer

            tokenizer = load_tokenizer(args.tokenizer)
        source = open_source(args.input, media_kind, split=args.split, column=args.column)
        result = prep(
            source, codec_factory, args.out, tokenizer=tokenizer, workers=args.workers,
            val_fraction=args.val_fraction, seed=args.seed, records_per_shard=args.records_per_shard,
            limit=args.limit, min_side=args.min_side,
            clip_rule=build_clip_rule(args) if media_kind == "video" else None,
            overwrite=args.overwrite, progress=not args.no_progress, part=_parse_part(args.part),
        )
    except (SourceError, PrepError, ValueError, OSError) as e:
        print(f"jpeglm prep: error: {e}", file=sys.stderr)
        return 2
    if result.manifest is None:
        return 0  # a --part run; the summary comes with the manifest
    if result.num_records == 0:
        print(f"jpeglm prep: error: no record written: all {len(result.skipped)} input items were skipped "
              f"(reasons in {result.out}/manifest.json)", file=sys.stderr)
        return 1
    return 0
