"""`jpeglm eval --config configs/eval/X.yaml [--set key=value ...] [--FIELD value ...]`: the flags of
the eval harness (jpeglm.eval.harness). The same command runs under
`torchrun --nproc_per_node N --no-python jpeglm eval ...` (or `deepspeed --no_python`): the processes
split the samples, rank 0 prints and writes the report; a rerun of a killed run resumes.

Every field of `EvalConfig` but the lists of systems and floor codecs is a flag, generated from the
field and its help: top-level fields by name (`--out`, `--device`, `--num-samples`), the sampler's
by their YAML path (`--sampler.top-k`; no `--sampler.seed`: the harness sets the seeds). Order of
precedence: the dataclass default, the `--config` file, `--set` overrides, the flags.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from jpeglm.cli import flags
from jpeglm.config import load_config, resolve_config
from jpeglm.eval.config import EvalConfig


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--config", required=True, help="eval config: a YAML file, or a shipped name (tiny, pets, pets-cpu)")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                        help="override a config field, e.g. --set num_samples=4 --set sampler.top_k=0 (repeatable)")
    flags.add_config_fields(parser, EvalConfig, skip=("sampler.seed",))


def _out_lock(out: str):
    """OUT's lock (jpeglm.lock): a second eval or sample into OUT is refused naming this run. Taken by
    the single process or rank 0 of a data-parallel eval (torchrun sets RANK); other ranks hold none."""
    import contextlib
    import os

    from jpeglm.lock import OutputLock

    if int(os.environ.get("RANK", "0")) != 0:
        return contextlib.nullcontext()
    return OutputLock(out, f"jpeglm eval --out {out}", remove_if_unused=True)


def run(args: argparse.Namespace) -> int:
    from jpeglm.errors import UserError
    from jpeglm.eval.parallel import ParallelError

    overrides = [*args.set, *flags.config_overrides(EvalConfig, args)]
    try:
        cfg = load_config(EvalConfig, resolve_config(args.config, "eval"), overrides)
        from jpeglm.eval.harness import evaluate

        with _out_lock(cfg.out):
            results = evaluate(cfg)
    except (UserError, ValueError, FileNotFoundError) as e:  # a bad config or folder, no FID network, ...
        print(f"jpeglm eval: error: {e}", file=sys.stderr)
        return 2
    except ParallelError as e:
        print(f"jpeglm eval: error: {e}")
        return 3
    if results.get("report_files") is None:  # a rank other than 0 under torchrun/deepspeed: rank 0 reports
        return 0
    print(Path(results["report_files"]["md"]).read_text().split("## Details")[0].strip())
    print(f"\nreport: {results['report_files']['html']}")
    for s in results["systems"]:
        if s["error"]:
            print(f"system {s['name']}: {s['error']}")
    if not any(r["fid"] is not None for s in results["systems"] for r in s["rows"]):
        print("jpeglm eval: no system produced a FID (see the reasons above and in the report)")
        return 1
    return 0
