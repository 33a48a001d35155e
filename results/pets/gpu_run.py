"""Step 2 of the GPU-scale pets run (results/pets/gpu.sh), on the GPU machine: train, sample, pack.

    python results/pets/gpu_run.py --prepared runs/pets-gpu/prepared --out $OUT [--dry-run]

From the prepared folder (gpu_prepare.py): trains the LFQ tokenizer on the photos and cuts the VQ and
pixel shards from them, trains the same Llama on the JPEG, VQ and pixel shards for the same number of
tokens, then draws the eval's samples (the prompts of the first N test photos at each ratio, and N
unconditional) with the harness's seeds, and scores the held-out photos' likelihood for bits per byte.
OUT gets at most 8 files (what the device call brings back): samples-{jpeg,vq,pixel}.npz (symbols,
seeds, timings, the codec's and the tokenizer's files, the likelihoods), train-logs.json, timings.json
(+ the log gpu.sh tees). Each pack is rewritten after every setting, and after `deadline_s` no new
setting starts, so a run cut short still brings back what it drew. Checkpoints stay in --work.
"""

from __future__ import annotations

import argparse
import dataclasses
import functools
import hashlib
import io
import json
import os
import shutil
import sys
import time
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
import gpu_plan

T0 = time.perf_counter()


def log(msg: str) -> None:
    print(f"[{time.perf_counter() - T0:7.1f}s] {msg}", flush=True)


def ids_key(ids) -> str:
    return hashlib.sha256(np.asarray(ids, dtype=np.int64).tobytes()).hexdigest()


def write_json(path: Path, obj) -> None:
    from jpeglm.config import atomic_write_text

    atomic_write_text(path, json.dumps(obj, indent=1, default=str) + "\n")


# ------------------------------------------------------------------------------------------------
# stages


def train_vq(prepared: Path, work: Path, p: dict) -> Path:
    from jpeglm.baselines.vq_train import VqConfig, load_images, train
    from jpeglm.config import load_config, resolve_config

    cfg = load_config(VqConfig, resolve_config(p["vq_config"], "vq"), list(p["vq_overrides"]))
    if cfg.model.image_size != p["size"]:
        raise SystemExit(f"vq config {p['vq_config']} is {cfg.model.image_size}px, the run {p['size']}px")
    keys, images, _ = load_images(str(prepared / "photos"), cfg.model.image_size)
    out = work / "vq-model"
    res = train(cfg, images, keys, out_dir=out, progress=False)
    log(f"vq: {len(keys)} photos, metrics {res['metrics']}")
    return out


def prep_codes(prepared: Path, work: Path, vq_dir: Path, p: dict, workers: int) -> None:
    from jpeglm.data_prep.pipeline import PrepSettings, prep
    from jpeglm.data_prep.sources import open_source

    s = PrepSettings(val_fraction=p["val_fraction"], workers=workers, progress=False, min_side=16, overwrite=True)
    src = str(prepared / "photos")
    prep(open_source(src), functools.partial(gpu_plan.vq_codec, str(vq_dir)), work / "data" / "vq", s, log=log)
    prep(open_source(src), functools.partial(gpu_plan.pixel_codec, str(prepared / "palette.npz"), p["size"]),
         work / "data" / "pixel", s, log=log)


def train_lm(data: Path, out: Path, p: dict) -> dict:
    from jpeglm.cli.train import load_train_config
    from jpeglm.train.loop import train

    cfg, base = load_train_config(p["train_config"], list(p["train_overrides"]))
    shutil.rmtree(out, ignore_errors=True)
    t = time.perf_counter()
    train(cfg, str(data), str(out), config_base=base)
    seconds = time.perf_counter() - t
    lines = [json.loads(x) for x in (out / "log.jsonl").read_text().splitlines() if x.strip()]
    return {"seconds": seconds, "config_yaml": (out / "config.yaml").read_text(), "log": lines}


# ------------------------------------------------------------------------------------------------
# sampling and the pack


class Pack:
    """One system's samples-NAME.npz: arrays per setting k (s{k}_*), the files a decode needs
    (f_<escaped path>) and a JSON `meta`; rewritten atomically after every setting."""

    def __init__(self, path: Path, name: str, loaded, run_dir: Path, device: str):
        self.path, self.arrays = path, {}
        files = work_files = {}
        tmp = run_dir / "pack-files"
        shutil.rmtree(tmp, ignore_errors=True)
        codec = loaded.codec.bundle(tmp / "codec")
        loaded.tokenizer.save_pretrained(tmp / "tokenizer")
        for f in sorted(x for x in tmp.rglob("*") if x.is_file()):
            rel = f.relative_to(tmp).as_posix()
            work_files["f_" + rel.replace("/", "__")] = np.frombuffer(f.read_bytes(), dtype=np.uint8)
        self.arrays.update(files)
        m = loaded.model
        n_embed = sum(x.numel() for n, x in m.named_parameters() if n.endswith(("embed_tokens.weight", "lm_head.weight")))
        self.meta = {"system": name, "codec": codec.to_config(), "symbol_kind": codec.symbol_kind,
                     "tokenizer": loaded.tokenizer.to_config(), "params": sum(x.numel() for x in m.parameters()),
                     "params_embed": n_embed, "device": device, "settings": [], "nll": {}, "nll_order": []}

    def add_setting(self, k: int, ratio, samples, seconds: float) -> None:
        kind = self.meta["symbol_kind"]
        chunks = [np.frombuffer(bytes(s.symbols), dtype=np.uint8) if kind == "bytes" else np.asarray(s.symbols, np.int32)
                  for s in samples]
        offs = np.cumsum([0] + [len(c) for c in chunks]).astype(np.int64)
        self.arrays.update({
            f"s{k}_symbols": np.concatenate(chunks) if chunks else np.zeros(0, np.uint8), f"s{k}_offsets": offs,
            f"s{k}_seed": np.array([s.seed for s in samples], np.int64),
            f"s{k}_prompt_index": np.array([-1 if s.prompt_index is None else s.prompt_index for s in samples], np.int64),
            f"s{k}_n_tokens": np.array([s.n_prompt_tokens + s.n_new_tokens for s in samples], np.int64),
            f"s{k}_n_new": np.array([s.n_new_tokens for s in samples], np.int64)})
        finish = {}
        for s in samples:
            finish[s.finish] = finish.get(s.finish, 0) + 1
        self.meta["settings"].append({"k": k, "ratio": ratio, "n": len(samples), "seconds": seconds,
                                      "new_tokens": int(sum(s.n_new_tokens for s in samples)), "finish": finish})
        self.write()

    def write(self) -> None:
        meta = np.frombuffer(json.dumps(self.meta, default=str).encode(), dtype=np.uint8)
        buf = io.BytesIO()
        np.savez(buf, meta=meta, **self.arrays)
        tmp = self.path.with_name(f".{self.path.name}.tmp")
        tmp.write_bytes(buf.getvalue())
        os.replace(tmp, self.path)


def nll_of(model, ids: list[int], device) -> float:
    """Summed NLL (nats) of ids[1:], in windows of the model's context (as the eval harness does)."""
    import torch

    ctx = int(getattr(model.config, "max_position_embeddings", 0) or len(ids))
    total = 0.0
    with torch.inference_mode():
        for start in range(0, len(ids) - 1, ctx - 1):
            chunk = torch.tensor([ids[start : start + ctx]], device=device)
            if chunk.shape[1] < 2:
                break
            lp = torch.log_softmax(model(chunk).logits.float()[0, :-1], dim=-1)
            total -= float(lp.gather(1, chunk[0, 1:, None]).sum())
    return total


def sample_all(prepared: Path, work: Path, out: Path, p: dict, device: str, timings: dict) -> None:
    import torch

    from jpeglm.checkpoint import load_for_inference
    from jpeglm.eval.harness import as_media, load_heldout_images
    from jpeglm.sample import generate
    from jpeglm.sample.config import SamplerConfig

    reals, _, _ = load_heldout_images(str(prepared / "test"), p["num_test"], p["size"])
    dtype = torch.bfloat16 if device.startswith("cuda") else None
    systems = {}
    for name in gpu_plan.SYSTEMS:
        loaded = load_for_inference(work / "train" / name, device=device, dtype=dtype)
        pack = Pack(out / f"samples-{name}.npz", name, loaded, work / "train" / name, device)
        t = time.perf_counter()
        for r in reals:  # bits per byte of the held-out photos: their summed NLL, keyed by their token ids
            ids = loaded.tokenizer.encode(loaded.codec.encode(as_media(r)), bos=True, eos=True)
            nats = nll_of(loaded.model, ids, device)
            pack.meta["nll"][ids_key(ids)] = nats
            pack.meta["nll_order"].append(nats)
        timings.setdefault("nll_s", {})[name] = time.perf_counter() - t
        pack.write()
        systems[name] = (loaded, pack)
    cfg = SamplerConfig(temperature=1.0, top_k=50, top_p=1.0, batch_size=p["sample_batch"], constrain=True,
                        max_new_tokens=p["max_new_tokens"])
    # setting by setting across the systems: a run cut short by the deadline is still comparable
    order = sorted(range(len(gpu_plan.SETTINGS)), key=lambda k: (gpu_plan.SETTINGS[k] is None, gpu_plan.SETTINGS[k] != 0.5))
    for k in order:
        ratio = gpu_plan.SETTINGS[k]
        for name, (loaded, pack) in systems.items():
            if time.perf_counter() - T0 > p["deadline_s"]:
                log(f"deadline: {name} setting {ratio} not sampled")
                timings.setdefault("skipped", []).append([name, ratio])
                continue
            c = dataclasses.replace(cfg, seed=gpu_plan.SEED_STRIDE * k)  # the eval's base seed is 0
            prompts = None if ratio is None else [loaded.codec.prompt(loaded.codec.encode(as_media(r)), ratio) for r in reals]
            t = time.perf_counter()
            samples = generate(loaded.model, loaded.tokenizer, loaded.codec, prompts, 1 if prompts else p["num_test"], c, device)
            if device.startswith("cuda"):
                torch.cuda.synchronize()
            dt = time.perf_counter() - t
            pack.add_setting(k, ratio, samples, dt)
            new = sum(s.n_new_tokens for s in samples)
            timings.setdefault("sample_s", {}).setdefault(name, {})[str(ratio)] = dt
            log(f"sampled {name} {'uncond' if ratio is None else ratio}: {len(samples)} in {dt:.1f}s ({new / dt:.0f} new tokens/s)")
            write_json(out / "timings.json", timings)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--prepared", required=True, help="the folder gpu_prepare.py wrote")
    ap.add_argument("--out", required=True, help="what comes back (at most 8 files)")
    ap.add_argument("--work", default=None, help="checkpoints and shards (default: a folder beside --prepared)")
    ap.add_argument("--dry-run", action="store_true", help="tiny sizes on the CPU (gpu_plan.DRY)")
    ap.add_argument("--workers", type=int, default=min(8, os.cpu_count() or 1), help="prep processes")
    args = ap.parse_args(argv)
    p = gpu_plan.plan(args.dry_run)
    prepared, out = Path(args.prepared), Path(args.out)
    work = Path(args.work) if args.work else prepared.parent / "gpu-work"
    if not (prepared / "plan.json").is_file():
        print(f"gpu_run: error: {prepared} holds no plan.json (run gpu_prepare.py first)", file=sys.stderr)
        return 2
    import torch

    device = "cuda" if torch.cuda.is_available() else "cpu"
    if not args.dry_run and device != "cuda":
        print("gpu_run: error: no CUDA device (use --dry-run on a CPU)", file=sys.stderr)
        return 2
    out.mkdir(parents=True, exist_ok=True)
    work.mkdir(parents=True, exist_ok=True)
    timings = {"dry_run": args.dry_run, "device": torch.cuda.get_device_name(0) if device == "cuda" else "cpu",
               "torch": torch.__version__, "plan": p}
    t = time.perf_counter()
    vq_dir = train_vq(prepared, work, p)
    timings["vq_train_s"] = time.perf_counter() - t
    t = time.perf_counter()
    prep_codes(prepared, work, vq_dir, p, args.workers)
    timings["vq_pixel_prep_s"] = time.perf_counter() - t
    write_json(out / "timings.json", timings)
    logs = {}
    datas = {"jpeg": prepared / "data" / "jpeg", "vq": work / "data" / "vq", "pixel": work / "data" / "pixel"}
    for name in gpu_plan.SYSTEMS:
        logs[name] = train_lm(datas[name], work / "train" / name, p)
        last = logs[name]["log"][-1]
        timings.setdefault("train_s", {})[name] = logs[name]["seconds"]
        log(f"trained {name}: {logs[name]['seconds']:.1f}s, step {last['step']}, loss {last['loss']:.3f}, "
            f"{last.get('tokens_per_s', 0):.0f} tokens/s")
        write_json(out / "train-logs.json", logs)
        write_json(out / "timings.json", timings)
    sample_all(prepared, work, out, p, device, timings)
    timings["total_s"] = time.perf_counter() - T0
    write_json(out / "timings.json", timings)
    log(f"done: {sorted(x.name for x in out.iterdir())}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
