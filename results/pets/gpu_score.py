"""Step 3 of the GPU-scale pets run (results/pets/gpu.sh), back here: score what the GPU drew.

    python results/pets/gpu_score.py --gpu-out DIR [--pets ../shared/data/pets] [--dest results/pets-gpu] [--dry-run]

DIR is what the device call brought back (gpu_run.py's --out). Each system's pack is unpacked (its
codec's and tokenizer's files, checked by name) and replayed through `jpeglm eval`'s own harness
(`jpeglm.eval.harness.evaluate` with stand-in systems), so the samples are decoded, written and scored
exactly as `jpeglm eval --config configs/eval/pets-gpu.yaml` would: FID +- bootstrap, decode failures,
reconstruction floors, and bits per byte from the likelihoods computed there. Every sample must begin
with its prompt as rebuilt here from the test photos (else the run is refused: the two sides disagree).
Sampling seconds per image are the GPU's. Publishes DEST: report.md (+ training and timing tables and the
commands), results.json, fid_vs_ratio.png, strips/, eval-config.yaml, commands.txt.
"""

from __future__ import annotations

import argparse
import json
import re
import shutil
import sys
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
import gpu_plan

ROOT = HERE.parents[1]
sys.path.insert(0, str(ROOT))
SAFE = re.compile(r"^[A-Za-z0-9._-]+$")

COMMANDS = """\
# here (CPU): prepare what travels (~3 min on an idle 2-core machine), and the wheels the GPU machine lacks
bash results/pets/gpu.sh prepare
# on one H100/H200 (device tool: carry runs/pets-gpu/prepared and .whl; <= 7 min)
bash results/pets/gpu.sh run --out $OUT
# here: score the samples that came back and publish results/pets-gpu/
bash results/pets/gpu.sh score --gpu-out DIR_THAT_CAME_BACK
"""


class PackError(ValueError):
    """A pack that is not what gpu_run.py writes."""


def unpack(pack_path: Path, dest: Path) -> tuple[dict, dict]:
    """meta and arrays of one samples-NAME.npz; its files written under dest (names checked)."""
    with np.load(pack_path, allow_pickle=False) as z:
        arrays = {k: z[k] for k in z.files}
    if "meta" not in arrays:
        raise PackError(f"{pack_path}: no meta")
    meta = json.loads(arrays.pop("meta").tobytes().decode())
    shutil.rmtree(dest, ignore_errors=True)
    for k in [k for k in arrays if k.startswith("f_")]:
        parts = k[2:].split("__")
        if not all(SAFE.match(x) and x not in (".", "..") for x in parts):
            raise PackError(f"{pack_path}: file name {k!r} is not a plain relative path")
        f = dest.joinpath(*parts)
        f.parent.mkdir(parents=True, exist_ok=True)
        f.write_bytes(arrays.pop(k).tobytes())
    return meta, arrays


def _ints(symbols) -> np.ndarray:
    return np.frombuffer(symbols, np.uint8).astype(np.int64) if isinstance(symbols, bytes) else np.asarray(symbols, np.int64)


class ReplaySystem:
    """A system of the eval harness whose samples and likelihoods were computed on the GPU."""

    def __init__(self, name: str, meta: dict, arrays: dict, files: Path, base_seed: int):
        from jpeglm.codecs.base import codec_from_config
        from jpeglm.tokenizer import load_tokenizer

        self.name, self.meta, self.arrays, self.base_seed = name, meta, arrays, base_seed
        self.codec = codec_from_config(meta["codec"], base_dir=files / "codec")
        self.tokenizer = load_tokenizer(files / "tokenizer")
        self.gpu_seconds = {s["k"]: s["seconds"] / max(1, s["n"]) for s in meta["settings"]}
        self.prompt_mismatches: dict[int, int] = {}
        self.nll_calls = self.nll_by_order = 0

    def sample(self, prompts, num_samples: int, seed: int):
        from jpeglm.eval.harness import Drawn

        k = (seed - self.base_seed) // gpu_plan.SEED_STRIDE
        if f"s{k}_offsets" not in self.arrays:
            raise RuntimeError(f"setting {k} was not sampled on the GPU (deadline reached)")
        a = {n: self.arrays[f"s{k}_{n}"] for n in ("symbols", "offsets", "seed", "prompt_index", "n_tokens")}
        n = len(a["seed"])
        want = num_samples * (len(prompts) if prompts is not None else 1)
        if n != want:
            raise RuntimeError(f"{n} samples on the GPU for setting {k}, the eval wants {want}")
        out, mismatched = [], 0
        for i in range(n):
            chunk = a["symbols"][a["offsets"][i] : a["offsets"][i + 1]]
            symbols = chunk.tobytes() if self.meta["symbol_kind"] == "bytes" else chunk.astype(np.int64)
            pi = int(a["prompt_index"][i])
            if prompts is not None:
                got, want_prefix = _ints(symbols), _ints(prompts[pi])
                if len(got) < len(want_prefix) or not np.array_equal(got[: len(want_prefix)], want_prefix):
                    mismatched += 1
            media, rep = self.codec.decode(symbols)
            out.append(Drawn(np.asarray(media), rep.status, rep.reason, int(a["seed"][i]), None if pi < 0 else pi,
                             int(a["n_tokens"][i]), dict(rep.details or {})))
        # a few prompts may differ by encoder details between the machines (Pillow's libjpeg, float
        # kernels of the VQ encoder); most differing means the two sides disagree on what was asked
        self.prompt_mismatches[k] = mismatched
        if prompts is not None and mismatched > max(1, n // 10):
            raise PackError(f"{self.name}: {mismatched} of {n} samples of setting {k} do not start with their prompt "
                            "as rebuilt here: the GPU side sampled other prompts")
        return out

    def token_ids(self, symbols) -> list[int]:
        return self.tokenizer.encode(symbols, bos=True, eos=True)

    def nll(self, ids) -> float:
        """The GPU's NLL of this held-out photo: found by its token ids, else (its tokens differ there,
        see prompt_mismatches) the one at the same place in the held-out order, counted in nll_by_order."""
        from gpu_run import ids_key

        i, self.nll_calls = self.nll_calls, self.nll_calls + 1
        key = ids_key(ids)
        if key in self.meta["nll"]:
            return float(self.meta["nll"][key])
        order = self.meta.get("nll_order", [])
        if i >= len(order):
            raise KeyError("no likelihood from the GPU for this held-out photo")
        self.nll_by_order += 1
        return float(order[i])


def training_rows(logs: dict, packs: dict) -> list[str]:
    lines = ["## Training: the same Llama, the same tokens", "",
             ("| system | params (non-embedding) | steps x tokens | tokens seen | final train loss (nats/token) "
              "| val bits/byte | val bits/pixel | train s | tokens/s |"), "|---|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for name, t in logs.items():
        last, vals = t["log"][-1], [r for r in t["log"] if "val_bpb" in r]
        m = packs[name]
        v = [f"{vals[-1][k]:.3f}" if vals and vals[-1].get(k) is not None else "n/a" for k in ("val_bpb", "val_bpp")]
        tps = [r["tokens_per_s"] for r in t["log"] if r.get("tokens_per_s")]
        lines.append(f"| {gpu_plan.REPORT_NAMES[name]} | {m['params'] / 1e6:.1f}M ({(m['params'] - m['params_embed']) / 1e6:.1f}M) "
                     f"| {last['step']} x {last['tokens']} | {last['step'] * last['tokens'] / 1e6:.2f}M | {last['loss']:.3f} "
                     f"| {v[0]} | {v[1]} | {t['seconds']:.0f} | {np.median(tps) if tps else 0:.0f} |")
    return lines + [""]


def timing_rows(timings: dict) -> list[str]:
    lines = ["## Where the GPU's minutes went", "", f"Device: {timings.get('device')}, torch {timings.get('torch')}.", "",
             "| stage | seconds |", "|---|---:|",
             f"| LFQ tokenizer training | {timings.get('vq_train_s', 0):.1f} |",
             f"| VQ + pixel shards | {timings.get('vq_pixel_prep_s', 0):.1f} |"]
    lines += [f"| train {k} | {v:.1f} |" for k, v in timings.get("train_s", {}).items()]
    lines += [f"| likelihood of the held-out photos, {k} | {v:.1f} |" for k, v in timings.get("nll_s", {}).items()]
    for k, d in timings.get("sample_s", {}).items():
        lines += [f"| sample {k}, {'unconditional' if r == 'None' else 'ratio ' + r} | {v:.1f} |" for r, v in d.items()]
    lines += [f"| **total** | {timings.get('total_s', 0):.1f} |", ""]
    if timings.get("skipped"):
        lines += [f"Not sampled (deadline): {timings['skipped']}.", ""]
    return lines


def main(argv=None) -> int:
    from jpeglm.config import load_config, resolve_config
    from jpeglm.eval import harness
    from jpeglm.eval.config import EvalConfig
    from jpeglm.eval.report import render_markdown, write_report

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--gpu-out", required=True, help="the folder the device call brought back")
    ap.add_argument("--pets", default=str(ROOT.parent / "shared" / "data" / "pets"), help="the pets folder (test/)")
    ap.add_argument("--work", default=None, help="run folder (default runs/pets-gpu, runs/pets-gpu-dry with --dry-run)")
    ap.add_argument("--dest", default=None, help="published folder (default results/pets-gpu; WORK/published with --dry-run)")
    ap.add_argument("--dry-run", action="store_true", help="tiny sizes (gpu_plan.DRY)")
    args = ap.parse_args(argv)
    p = gpu_plan.plan(args.dry_run)
    gpu_out = Path(args.gpu_out)
    work = Path(args.work or ROOT / "runs" / ("pets-gpu-dry" if args.dry_run else "pets-gpu"))
    dest = Path(args.dest or (work / "published" if args.dry_run else ROOT / "results" / "pets-gpu"))
    cfg = load_config(EvalConfig, resolve_config("pets-gpu", "eval"), [])
    cfg.images, cfg.out = str(Path(args.pets) / "test"), str(work / "eval")
    cfg.num_images, cfg.image_size, cfg.num_unconditional = p["num_test"], p["size"], p["num_test"]
    cfg.fid_bootstrap = p["fid_bootstrap"]
    cfg.floor_codecs = [{"name": "jpeg", "params": {"size": p["size"], "quality": 25}}]
    if [*cfg.prompt_ratios, None] != list(gpu_plan.SETTINGS) or not cfg.unconditional or cfg.seed != 0 \
            or harness.SETTING_SEED_STRIDE != gpu_plan.SEED_STRIDE or cfg.num_samples != 1:
        print("gpu_score: error: configs/eval/pets-gpu.yaml no longer matches the settings gpu_run.py sampled", file=sys.stderr)
        return 2
    try:
        timings = json.loads((gpu_out / "timings.json").read_text())
        logs = json.loads((gpu_out / "train-logs.json").read_text())
        systems, metas = {}, {}
        for name in gpu_plan.SYSTEMS:
            meta, arrays = unpack(gpu_out / f"samples-{name}.npz", work / "replay" / name)
            metas[name] = meta
            systems[gpu_plan.REPORT_NAMES[name]] = ReplaySystem(gpu_plan.REPORT_NAMES[name], meta, arrays,
                                                                work / "replay" / name, cfg.seed)
    except (OSError, ValueError, KeyError) as e:
        print(f"gpu_score: error: {gpu_out} is not what gpu_run.py writes: {type(e).__name__}: {e}", file=sys.stderr)
        return 2
    results = harness.evaluate(cfg, systems=systems)
    results.pop("report_files", None)
    for s in results["systems"]:  # the seconds per image of the GPU, not of the replay
        rs = systems[s["name"]]
        for k, row in enumerate(s["rows"]):
            row["seconds_per_image"] = rs.gpu_seconds.get(k)
        key = next(n for n, r in gpu_plan.REPORT_NAMES.items() if r == s["name"])
        s["training"] = {k: v for k, v in logs[key].items() if k != "config_yaml"}
        s["params"] = metas[key]["params"]
        s["replay"] = {"prompt_mismatches": rs.prompt_mismatches, "nll_by_order": rs.nll_by_order}
        if any(rs.prompt_mismatches.values()) or rs.nll_by_order:
            results.setdefault("notes", []).append(
                f"{s['name']}: prompts rebuilt here differ from the GPU's for {sum(rs.prompt_mismatches.values())} samples "
                f"and {rs.nll_by_order} held-out photos' tokens differ (encoder details between the machines).")
    results["gpu_timings"] = timings
    ev = Path(cfg.out)
    write_report(results, ev)
    dest.mkdir(parents=True, exist_ok=True)
    (dest / "strips").mkdir(exist_ok=True)
    for s in results["systems"]:
        s["strips"] = [st for st in s.get("strips", []) if st["setting"] in ("ratio=0.5", "unconditional")]
        for st in s["strips"]:
            shutil.copyfile(ev / st["path"], dest / st["path"])
    if (ev / "fid_vs_ratio.png").is_file():
        shutil.copyfile(ev / "fid_vs_ratio.png", dest / "fid_vs_ratio.png")
    shutil.copyfile(ev / "config.yaml", dest / "eval-config.yaml")
    (dest / "results.json").write_text(json.dumps(results, indent=1, default=str) + "\n")
    (dest / "commands.txt").write_text(COMMANDS)
    md = render_markdown(results, dest).split("\n")
    at = md.index("## Details") if "## Details" in md else len(md)
    scale = "DRY RUN (tiny sizes on a CPU: the numbers mean nothing)" if timings.get("dry_run") else \
        f"GPU scale ({p['size']}x{p['size']}, the ~100M Llama, {p['num_test']} test prompts per setting, one seed)"
    note = [(f"**{scale}.** Samples drawn on {timings.get('device')} by results/pets/gpu_run.py, scored here by "
             "results/pets/gpu_score.py through `jpeglm eval`'s harness."), ""]
    repro = ["## Reproduce", "", "```", COMMANDS.rstrip(), "```", ""]
    md = md[:2] + note + md[2:at] + training_rows(logs, metas) + timing_rows(timings) + md[at:] + repro
    (dest / "report.md").write_text("\n".join(md))
    print(f"scored {gpu_out} -> {dest}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
