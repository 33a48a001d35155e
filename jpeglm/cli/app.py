"""`jpeglm app`: serve the web page (jpeglm/app/) for one checkpoint: complete a photo, watch its file
being written, download the files; `/complete` is its API for `gradio_client` and scripts."""

from __future__ import annotations

import argparse
import sys


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--model", required=True, help="checkpoint: an export dir, a training run dir, a released JPEG-LM dir, or a hub id ORG/NAME[@REVISION] "
                   "(downloaded once into the Hugging Face cache; offline, HF_HUB_OFFLINE=1, found there)")
    p.add_argument("--device", default=None, help="torch device (default: cuda when available, else cpu)")
    p.add_argument("--port", type=int, default=7860, help="local port to serve on")
    p.add_argument("--host", default="127.0.0.1", help="address to listen on (0.0.0.0 to serve the network)")
    p.add_argument("--share", action="store_true", help="also open a temporary public gradio.live link")
    p.add_argument("--max-samples", type=int, default=8, help="most samples one Generate may ask for")
    p.add_argument("--prompt-cut", default=None, metavar="RULE", help="how prompts are cut, as in `jpeglm sample` "
                   "(default: the codec's first rule; JPEG: half_rows, the released run.py's cut, or rows); the slider moves in its steps")
    p.add_argument("--max-new-tokens", type=int, default=None, help="token budget per sample (default: the model's context minus the prompt)")


def run(args) -> int:
    from jpeglm.app import AppUnavailable, build_app, require_gradio
    from jpeglm.checkpoint import CheckpointError, load_for_inference

    try:
        require_gradio()
    except AppUnavailable as e:
        print(f"jpeglm app: error: {e}", file=sys.stderr)
        return 2
    if args.max_samples < 1 or (args.max_new_tokens is not None and args.max_new_tokens < 1):
        print("jpeglm app: error: --max-samples and --max-new-tokens must be >= 1", file=sys.stderr)
        return 2
    import torch

    device = args.device or ("cuda" if torch.cuda.is_available() else "cpu")
    try:
        loaded = load_for_inference(args.model, device=device)  # a hub id resolves through jpeglm.hub
    except (CheckpointError, OSError, ValueError) as e:
        print(f"jpeglm app: error: --model {args.model}: {e}", file=sys.stderr)
        return 2
    if args.prompt_cut is not None:
        try:
            loaded.codec.prompt_rule(args.prompt_cut)
        except ValueError as e:  # a cut rule this checkpoint's codec does not know
            print(f"jpeglm app: error: --prompt-cut: {e}", file=sys.stderr)
            return 2
    page = build_app(loaded, device, max_samples=args.max_samples, max_new_tokens=args.max_new_tokens,
                     prompt_cut=args.prompt_cut)
    from jpeglm.app.pictures import MAX_UPLOAD_BYTES

    page.launch(server_name=args.host, server_port=args.port, share=args.share, show_error=True,
                max_file_size=MAX_UPLOAD_BYTES)
    return 0
