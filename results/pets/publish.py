"""Copy what `results/pets/run.sh` measured into results/pets/ (the files that are committed).

    python results/pets/publish.py [--run runs/pets-cpu] [--dest results/pets]
    python results/pets/publish.py --conditional          # run_conditional.sh -> results/pets-cond

From the eval folder: report.md (+ a training table), fid_vs_ratio.png, the completion strips
(small PNGs), the eval config; results.json = report.json plus, per system, the training budget
and curve read from its run folder (log.jsonl, config.yaml, the exported checkpoint).
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))  # eval/ is a top-level package of the repository


def _params(checkpoint: Path) -> dict:
    """Parameter counts of an exported Llama, read from the safetensors header only."""
    from safetensors import safe_open

    total = embed = 0
    with safe_open(str(checkpoint / "model.safetensors"), "pt") as f:
        for name in f.keys():
            n = 1
            for d in f.get_slice(name).get_shape():
                n *= d
            total += n
            if name.endswith(("embed_tokens.weight", "lm_head.weight")):
                embed += n
    return {"params": total, "params_without_embeddings": total - embed}


def training_summary(run: Path) -> dict:
    cfg = yaml.safe_load((run / "config.yaml").read_text())
    log = [json.loads(x) for x in (run / "log.jsonl").read_text().splitlines() if x.strip()]
    last = log[-1]
    vals = [r for r in log if "val_bpb" in r]
    tokens_per_step = last["tokens"]
    steps = last["step"]
    seconds = sum(cfg["log_interval"] * r["tokens"] / r["tokens_per_s"] for r in log if r.get("tokens_per_s"))
    ckpt = run / "checkpoints" / (run / "checkpoints" / "latest").read_text().strip()
    return {
        "model": cfg["model"], "steps": steps, "tokens_per_step": tokens_per_step,
        "tokens_seen": steps * tokens_per_step, "seq_len": cfg["data"]["seq_len"], "lr": cfg["optim"]["lr"],
        "final_train_loss": round(last["loss"], 4),
        "val_loss": round(vals[-1]["val_loss"], 4) if vals else None,
        "val_bits_per_byte": round(vals[-1]["val_bpb"], 4) if vals else None,
        "val_bits_per_pixel": round(vals[-1]["val_bpp"], 4) if vals else None,
        "train_seconds_approx": round(seconds), "checkpoint": str(ckpt.relative_to(ROOT) if ckpt.is_relative_to(ROOT) else ckpt),
        "curve": [{k: r[k] for k in ("step", "loss", "val_loss", "val_bpb") if k in r} for r in log],
        **_params(ckpt),
    }


def training_table(results: dict) -> list[str]:
    lines = ["## Training: the same Llama, the same tokens", "",
             "| system | params (non-embedding) | steps x tokens | tokens seen | final train loss (nats/token) "
             "| val bits/byte | val bits/pixel | train time (s, approx.) |", "|---|---:|---:|---:|---:|---:|---:|---:|"]
    for s in results["systems"]:
        t = s.get("training")
        if not t:
            continue
        val = [f"{t[k]:.3f}" if t[k] is not None else "n/a*" for k in ("val_bits_per_byte", "val_bits_per_pixel")]
        lines.append(f"| {s['name']} | {t['params'] / 1e6:.2f}M ({t['params_without_embeddings'] / 1e6:.2f}M) | "
                     f"{t['steps']} x {t['tokens_per_step']} | {t['tokens_seen'] / 1e6:.2f}M | {t['final_train_loss']:.3f} | "
                     f"{val[0]} | {val[1]} | {t['train_seconds_approx']} |")
    lines += ["", "Bits per byte count the *source* bytes of each representation (JPEG file bytes; VQ/pixel codes "
              "at their bits per code), bits per pixel the 64x64 RGB pixels each sequence describes: the one "
              "likelihood all three systems share. The bits/byte column of the FID table is the same measure on the "
              "held-out test prompts, computed by `jpeglm eval` for every system.", ""]
    if any(s.get("training") and s["training"]["val_bits_per_byte"] is None for s in results["systems"]):
        lines += ["\\* no validation figure in this run's training log: its val records (1026 tokens) were longer "
                  "than the 1024-token training chunks and validation then left them out (fixed since: validation "
                  "now scores whole records up to the model's context).", ""]
    return lines


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--run", default=str(ROOT / "runs" / "pets-cpu"), help="the run folder of results/pets/run.sh")
    ap.add_argument("--strips", default="ratio=0.5,unconditional",
                    help="settings whose completion strips are published (comma-separated)")
    ap.add_argument("--dest", default=str(ROOT / "results" / "pets"), help="where the published files go")
    ap.add_argument("--conditional", action="store_true",
                    help="publish results/pets/run_conditional.sh's run (runs/pets-cpu-cond -> results/pets-cond)")
    args = ap.parse_args(argv)
    if args.conditional:
        args.run, args.dest = str(ROOT / "runs" / "pets-cpu-cond"), str(ROOT / "results" / "pets-cond")
        args.strips = "ratio=0.5,unconditional,classes cfg=1,classes cfg=3"  # eval/conditional.py names them `classes cfg=S`
    run, dest = Path(args.run), Path(args.dest)
    ev = run / "eval"
    results = json.loads((ev / "report.json").read_text())
    for s in results["systems"]:
        train_dir = run / "train" / Path(s["checkpoint"]).name
        if (train_dir / "log.jsonl").is_file():
            s["training"] = training_summary(train_dir)
    dest.mkdir(parents=True, exist_ok=True)
    (dest / "strips").mkdir(exist_ok=True)
    keep = set(args.strips.split(","))
    for s in results["systems"]:
        s["strips"] = [st for st in s.get("strips", []) if st["setting"] in keep]
        for st in s["strips"]:
            shutil.copyfile(ev / st["path"], dest / st["path"])
    for plot in ("fid_vs_ratio.png", "fid_vs_cfg.png"):
        if (ev / plot).is_file():
            shutil.copyfile(ev / plot, dest / plot)
    shutil.copyfile(ev / "config.yaml", dest / "eval-config.yaml")
    results.pop("report_files", None)
    (dest / "results.json").write_text(json.dumps(results, indent=1, default=str) + "\n")
    from jpeglm.eval.report import render_markdown  # the eval's own renderer: only the strips copied here are linked

    md = render_markdown(results, dest).split("\n")
    at = md.index("## Details") if "## Details" in md else len(md)
    command = ("bash results/pets/run_conditional.sh && python results/pets/publish.py --conditional" if args.conditional
               else "bash results/pets/run.sh && python results/pets/publish.py")
    repro = ["## Reproduce", "", "From the repository root, with `../shared/data/pets` present (~1 h on 2 CPU cores):", "",
             f"    {command}", "",
             "Configs: `configs/train/pets-cpu.yaml` (budget), `configs/model/1m.yaml` (the Llama), "
             "`configs/vq/tiny.yaml` (the LFQ tokenizer), `eval-config.yaml` here (= `configs/eval/"
             + ("pets-cpu-cond" if args.conditional else "pets-cpu") + ".yaml`).", ""]
    note = ["**CPU scale** (64x64, a ~1M-parameter Llama, 2.46M training tokens per system, 100 test prompts per "
            "setting, one seed): compare the rows with each other, not with published numbers. What the numbers "
            "say and what they cannot: the Results section of the [README](../../README.md).", ""]
    md = md[:2] + note + md[2:at] + training_table(results) + md[at:] + repro
    (dest / "report.md").write_text("\n".join(md))
    print(f"published {run} -> {dest}")


if __name__ == "__main__":
    main()
