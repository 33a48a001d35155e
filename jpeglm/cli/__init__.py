"""The `jpeglm` console script: one entry point, one subcommand per stage.

Each subcommand lives in its own module here, jpeglm/cli/<command>.py, exposing `add_arguments(parser)` and `run(args) -> int`.
Only the chosen subcommand's module is imported, so `jpeglm --help` does not pay for torch.
"""

from __future__ import annotations

import argparse
import importlib
import sys

# name -> (module, one-line help) or name -> {subname: (module, help)} for grouped commands.
COMMANDS: dict[str, object] = {
    "demo": ("jpeglm.cli.demo", "run the whole pipeline on built-in photos: prep, tokenizer, train, sample, FID"),
    "prep": ("jpeglm.cli.prep", "encode images or videos canonically and write token shards"),
    "tokenizer": {
        "train": ("jpeglm.cli.tokenizer", "train a sentencepiece BPE tokenizer on prepared shards"),
    },
    "train": ("jpeglm.cli.train", "pretrain an unmodified Llama on token shards (DeepSpeed ZeRO)"),
    "sample": ("jpeglm.cli.sample", "sample JPEG/PNG/MP4 files from a checkpoint, with or without prompts"),
    "vq": {
        "train": ("jpeglm.cli.vq", "train the VQ/LFQ image tokenizer used by the VQ baseline"),
    },
    "pixel": {
        "fit": ("jpeglm.cli.pixel", "fit the k-means colour palette used by the pixel baseline"),
    },
    "eval": ("jpeglm.cli.eval", "compare systems by FID on the same prompts and seeds; write the report"),
    "fid": ("jpeglm.cli.fid", "FID between two folders of images"),
    "app": ("jpeglm.cli.app", "a web page (Gradio) to complete a photo and watch its file being written"),
}


def _help_of(entry) -> str:
    if isinstance(entry, tuple):
        return entry[1]
    return "; ".join(f"{k}: {v[1]}" for k, v in entry.items())


def build_parser(argv: list[str]) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="jpeglm",
        description="Canonical-codec language models: images and videos as JPEG / H.264 bytes for a plain Llama.",
    )
    from jpeglm import __version__

    parser.add_argument("--version", action="version", version=f"jpeglm {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    chosen = argv[0] if argv else None
    for name, entry in COMMANDS.items():
        p = sub.add_parser(name, help=_help_of(entry), description=_help_of(entry))
        if name != chosen:
            continue  # only the chosen command imports its module
        if isinstance(entry, tuple):
            _attach(p, entry[0])
        else:
            inner = p.add_subparsers(dest="subcommand", metavar="SUBCOMMAND", required=True)
            sub_chosen = argv[1] if len(argv) > 1 else None
            for sname, (module, text) in entry.items():
                sp = inner.add_parser(sname, help=text, description=text)
                if sname == sub_chosen:
                    _attach(sp, module)
    return parser


def _attach(parser: argparse.ArgumentParser, module_name: str) -> None:
    module = importlib.import_module(module_name)
    from jpeglm.cli.flags import HelpFormatter

    parser.formatter_class = HelpFormatter
    module.add_arguments(parser)
    parser.set_defaults(_run=module.run)


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    parser = build_parser(argv)
    args = parser.parse_args(argv)
    if not hasattr(args, "_run"):
        parser.print_help()
        return 2
    from jpeglm.errors import EXIT_USER_ERROR, UserError

    try:
        return int(args._run(args) or 0)
    except UserError as e:  # bad input or a broken file: one line (what, which file, what to do); bugs keep their traceback
        name = " ".join(x for x in (args.command, getattr(args, "subcommand", None)) if x)
        print(f"jpeglm {name}: error: {e}", file=sys.stderr)
        return EXIT_USER_ERROR


if __name__ == "__main__":
    sys.exit(main())
