"""Does guidance steer the class? A linear probe on the FID network's features, applied to the samples
of `results/pets/run_conditional.sh`'s class-balanced settings.

    python results/pets/class_agreement.py [--eval runs/pets-cpu-cond/eval] [--write results/pets-cond/class_agreement.md]

FID says how close the sample distribution is to the photos; it does not say whether a "dog" sample
looks like a dog. This measures that, with the same pool3 features FID uses (eval/fid.py):
1. a logistic-regression probe (torch, L2-regularised, full-batch L-BFGS) fitted on the features of
   `--train-n` labelled train photos prepared exactly as the eval prepares its held-out photos (centre
   crop, resize to the eval's image_size); its accuracy on the labelled test photos is reported: the
   ceiling a perfect generator would reach with these (noisy, machine-made) labels;
2. per system and `classes cfg=S` setting: the share of decoded samples the probe assigns to the class
   they were sampled for (chance = 50% for two balanced classes), with a binomial standard error.
Every number is read from files: the eval's per-sample features (`features/NNNNN.npy`, written by
`jpeglm eval`) and its manifest's class index per sample.
"""

from __future__ import annotations

import argparse
import csv
import json
import sys
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))


def labelled_photos(pets: Path, split: str, names: list[str], limit: int) -> tuple[list[Path], np.ndarray]:
    """The first `limit` photos of `split` (sorted by file name) whose label is one of `names`."""
    with open(pets / "labels.csv", newline="") as f:
        rows = sorted((r["file"], r["label"]) for r in csv.DictReader(f) if r["split"] == split and r["label"] in names)
    rows = [(pets / split / f, names.index(lab)) for f, lab in rows if (pets / split / f).is_file()][:limit]
    return [p for p, _ in rows], np.array([y for _, y in rows])


def photo_features(fid, paths: list[Path], size: int) -> np.ndarray:
    """Features of the photos prepared as the eval prepares its held-out ones, cached by file list and size."""
    from jpeglm.eval.fid import files_key
    from jpeglm.media import open_image, prepare_image

    return fid.features([np.asarray(prepare_image(open_image(p), size)) for p in paths],
                        cache_key=f"probe-{size}-{files_key(paths)}")


def fit_probe(x: np.ndarray, y: np.ndarray, classes: int, l2: float = 1e-3):
    """Standardised features -> logistic regression; returns a function features -> predicted class."""
    mu, sd = x.mean(0), x.std(0) + 1e-6
    xt = torch.tensor((x - mu) / sd, dtype=torch.float64)
    yt = torch.tensor(y)
    w = torch.zeros(x.shape[1], classes, dtype=torch.float64, requires_grad=True)
    b = torch.zeros(classes, dtype=torch.float64, requires_grad=True)
    opt = torch.optim.LBFGS([w, b], max_iter=200, line_search_fn="strong_wolfe")

    def closure():
        opt.zero_grad()
        loss = torch.nn.functional.cross_entropy(xt @ w + b, yt) + l2 * (w * w).sum()
        loss.backward()
        return loss

    opt.step(closure)

    def predict(f: np.ndarray) -> np.ndarray:
        with torch.no_grad():
            return (torch.tensor((f - mu) / sd, dtype=torch.float64) @ w + b).argmax(1).numpy()

    return predict


def setting_samples(eval_dir: Path, system: str, row: dict) -> tuple[np.ndarray, np.ndarray]:
    """(features, intended class) of the decoded samples of one class-balanced setting."""
    folder = Path(row["samples_dir"])
    folder = folder if folder.is_absolute() else ROOT / folder
    manifest = json.loads((folder / "manifest.json").read_text())
    feats, want = [], []
    for i, s in enumerate(manifest["samples"]):
        f = folder / "features" / f"{i:05d}.npy"
        a = np.load(f) if f.is_file() else np.zeros((0, 2048))
        if len(a):  # 0 rows: the sample did not decode (counted by the eval's decode-failure column)
            feats.append(a[0])
            want.append(s["class_index"])
    return np.array(feats), np.array(want)


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--eval", default=str(ROOT / "runs" / "pets-cpu-cond" / "eval"), help="the conditional run's eval folder")
    ap.add_argument("--pets", default=str(ROOT.parent / "shared" / "data" / "pets"), help="the pets folder (labels.csv, train/, test/)")
    ap.add_argument("--train-n", type=int, default=2000, help="labelled train photos the probe is fitted on")
    ap.add_argument("--write", default=None, help="write the table (markdown) here; also printed")
    args = ap.parse_args(argv)
    from jpeglm.eval.fid import FID

    ev, pets = Path(args.eval), Path(args.pets)
    report = json.loads((ev / "report.json").read_text())
    size = int(report["settings"].get("image size") or 64)
    rows = [(s["name"], r) for s in report["systems"] for r in s.get("rows", []) if r.get("classes")]
    if not rows:
        sys.exit(f"{ev}/report.json has no class-balanced settings")
    names = list(rows[0][1]["classes"])
    fid = FID(batch_size=32, warn_small_n=False, cache_dir=ev / "probe-features")
    train_p, train_y = labelled_photos(pets, "train", names, args.train_n)
    test_p, test_y = labelled_photos(pets, "test", names, 10**9)
    predict = fit_probe(photo_features(fid, train_p, size), train_y, len(names))
    test_acc = float((predict(photo_features(fid, test_p, size)) == test_y).mean())
    counts = {n: int((test_y == i).sum()) for i, n in enumerate(names)}
    out = [f"# Class agreement of the class-conditional pets samples ({' / '.join(names)})", "",
           f"Probe: logistic regression on TF-Inception pool3 features of {len(train_p)} labelled train photos at "
           f"{size}x{size}; accuracy on the {len(test_p)} labelled test photos ({counts}): **{test_acc:.1%}** "
           "(the ceiling with these machine labels). Chance for balanced samples: 50%.", "",
           "Command: `python results/pets/class_agreement.py --write results/pets-cond/class_agreement.md`", "",
           "| system | cfg scale | decoded samples | probe agrees with the sampled class | " + " | ".join(f"{n} samples called {n}" for n in names) + " |",
           "|---|---:|---:|---:|" + "---:|" * len(names)]
    table = []
    for system, row in rows:
        f, want = setting_samples(ev, system, row)
        if not len(f):
            out.append(f"| {system} | {row['cfg_scale']:g} | 0 | n/a |" + " n/a |" * len(names))
            continue
        hit = predict(f) == want
        acc, se = float(hit.mean()), float(np.sqrt(hit.mean() * (1 - hit.mean()) / len(hit)))
        per = [f"{hit[want == i].mean():.0%}" if (want == i).any() else "n/a" for i in range(len(names))]
        out.append(f"| {system} | {row['cfg_scale']:g} | {len(hit)} | {acc:.1%} ± {se:.1%} | " + " | ".join(per) + " |")
        table.append({"system": system, "cfg_scale": row["cfg_scale"], "n": len(hit), "agreement": acc, "se": se})
    text = "\n".join(out) + "\n"
    print(text)
    if args.write:
        Path(args.write).parent.mkdir(parents=True, exist_ok=True)
        Path(args.write).write_text(text)
        Path(args.write).with_suffix(".json").write_text(json.dumps(
            {"probe_test_accuracy": test_acc, "probe_train_photos": len(train_p), "rows": table}, indent=1) + "\n")


if __name__ == "__main__":
    main()
