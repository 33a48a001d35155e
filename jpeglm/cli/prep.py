"""`jpeglm prep`: encode images or videos canonically and write token shards.

A thin layer over `jpeglm.data_prep.pipeline.prep`. Its flags come from the settings dataclasses
(jpeglm/cli/flags.py): `PrepSettings` for the prep, each codec's own options (`--codec NAME` picks
the codec; e.g. JPEG's `--size --quality`, the VQ codec's `--vq-model`), the clip rule for video
codecs. Exit codes: 0 when at least one record was written, 1 when none was (every item skipped),
2 for a usage problem (bad input path, output folder holding another prep).
"""

from __future__ import annotations

import argparse
import functools
import sys

from jpeglm.cli import flags
from jpeglm.codecs.base import codec_class, codec_names
from jpeglm.data_prep.pipeline import PrepSettings
from jpeglm.data_prep.sources import SourceOptions
from jpeglm.video import ClipRule


def add_arguments(parser: argparse.ArgumentParser) -> None:
    names = codec_names()
    parser.add_argument("--codec", required=True, choices=names,
                        help="representation: " + "; ".join(f"{n} ({codec_class(n).description})" for n in names))
    parser.add_argument("--input", default="builtin:skimage",
                        help="image/video file or folder (recursive), a datasets.save_to_disk folder, WebDataset .tar "
                             "shards or .parquet files (a file, a folder of them, a brace pattern shards/{00000..00127}.tar "
                             "or a glob; local or an fsspec URL: s3://, gs://, hf://, https://; streamed), "
                             "imagefolder:DIR, hf:NAME[:SPLIT] (hub, needs the network), or builtin:skimage "
                             "(the photos shipped in scikit-image)")
    parser.add_argument("--out", required=True, help="output folder for shards + manifest.json (resumed if it holds "
                        "an unfinished prep with the same settings); a local or shared path, or an fsspec URL")
    parser.add_argument("--tokenizer", default=None, metavar="DIR",
                        help="tokenizer folder (jpeglm tokenizer train, or a released JPEG-LM tokenizer); default: "
                             "byte-level for byte codecs, one id per code for code codecs")
    flags.add_fields(parser, PrepSettings)

    flags.add_fields(parser.add_argument_group("datasets and parquet"), SourceOptions)

    for name in names:  # each codec's own settings, in a group of their own
        cls = codec_class(name)
        group = parser.add_argument_group(f"--codec {name}", cls.description)
        flags.add_fields(group, cls.options_type(), optional=True)
    clips = parser.add_argument_group("video codecs: clips", "clip k samples frames at start + k*stride + j/fps, j < frames")
    flags.add_fields(clips, ClipRule)


def _codec_options(args: argparse.Namespace):
    """The chosen codec's options from the flags; a flag that only other codecs take is an error."""
    cls = codec_class(args.codec)
    own = {f.name for f in flags.cli_fields(cls.options_type())} | {f.name for f in flags.cli_fields(PrepSettings)}
    for other in codec_names():
        if other == args.codec:
            continue
        for f in flags.cli_fields(codec_class(other).options_type()):
            if f.name not in own and getattr(args, f.name, None) is not None:
                raise ValueError(f"{flags.flag_of(f)} is a setting of --codec {other}, not of --codec {args.codec}")
    return cls, flags.build(cls.options_type(), args, only_given=True)


def _build(cls, options):
    return cls.from_options(options)


def run(args: argparse.Namespace) -> int:
    from jpeglm.data_prep.pipeline import prep
    from jpeglm.data_prep.sources import SourceError, open_source
    from jpeglm.data_prep.writer import PrepError

    try:
        settings = flags.build(PrepSettings, args)
        cls, options = _codec_options(args)
        codec_factory = functools.partial(_build, cls, options)  # picklable: workers rebuild the codec
        tokenizer = None
        if args.tokenizer:
            from jpeglm.tokenizer import load_tokenizer

            tokenizer = load_tokenizer(args.tokenizer)
        clip_rule = None
        if cls.media_kind == "video":  # the clips are cut at the codec's frame count and rate
            clip_rule = codec_factory().clip_rule(**{f.name: getattr(args, f.name) for f in flags.cli_fields(ClipRule)},
                                        min_side=settings.min_side)
        so = flags.build(SourceOptions, args)
        source = open_source(args.input, cls.media_kind, split=so.split, column=so.column)
        result = prep(source, codec_factory, args.out, settings, tokenizer=tokenizer, clip_rule=clip_rule)
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
