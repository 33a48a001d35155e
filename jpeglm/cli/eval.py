"""`jpeglm eval --config configs/eval/X.yaml [--set key=value ...]`: the flags of the eval harness
(jpeglm.eval.harness)."""

from __future__ import annotations

import argparse
from pathlib import Path

from jpeglm.config import load_config, resolve_config
from jpeglm.eval.config import EvalConfig



def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--config", required=True, help="eval config: a YAML file, or a shipped name (tiny, pets, pets-cpu)")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                        help="override a config field, e.g. --set num_samples=4 --set sampler.top_k=0 (repeatable)")
    parser.add_argument("--out", default=None, help="output directory (overrides `out` in the config)")
    parser.add_argument("--device", default=None, help="torch device for models and FID (default: cuda when available)")


def run(args: argparse.Namespace) -> int:
    from jpeglm.config import ConfigError

    overrides = list(args.set)
    if args.out:
        overrides.append(f"out={args.out}")
    if args.device:
        overrides.append(f"device={args.device}")
    try:
        cfg = load_config(EvalConfig, resolve_config(args.config, "eval"), overrides)
        from jpeglm.eval.harness import evaluate

        results = evaluate(cfg)
    except (ConfigError, ValueError, FileNotFoundError) as e:
        print(f"jpeglm eval: error: {e}")
        return 2
    print(Path(results["report_files"]["md"]).read_text().split("## Details")[0].strip())
    print(f"\nreport: {results['report_files']['html']}")
    for s in results["systems"]:
        if s.get("error"):
            print(f"system {s['name']}: {s['error']}")
    if not any(r.get("fid") is not None for s in results["systems"] for r in s["rows"]):
        print("jpeglm eval: no system produced a FID (see the reasons above and in the report)")
        return 1
    return 0
