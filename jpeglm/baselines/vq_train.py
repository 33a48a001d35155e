"""`jpeglm vq train`: train the VQ/LFQ image tokenizer of the VQ baseline.

Owns the training config (`VqConfig` = model + train), the loop (L1 + L2 + quantizer terms,
optional LPIPS-like perceptual and PatchGAN hinge terms), held-out evaluation (PSNR, codebook
usage, perplexity) and the checkpoint format read by `jpeglm.codecs.vq`:
    OUT/model.safetensors  OUT/vq_config.yaml  OUT/metrics.json  OUT/log.jsonl
    OUT/train_state.safetensors  (optimizers + RNG states for `--resume`, no pickle: jpeglm.safestate;
                                  not needed by the codec)
Images come from the same `--input` spellings as `jpeglm prep` (data_prep.sources), are opened
by jpeglm.media (bad files skipped and logged) and held in memory as uint8 at the model's size.
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
import os
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from jpeglm.codecs.vq_model import PatchDiscriminator, VggPerceptual, VqAutoencoder, VqModelConfig, hinge_d_loss
from jpeglm.config import atomic_write_text, save_config, to_dict
from jpeglm.errors import UserError
from jpeglm.media import DEFAULT_MAX_FILE_BYTES

log = logging.getLogger("jpeglm.baselines.vq_train")


@dataclass
class VqTrainConfig:
    """Optimisation, losses, data and bookkeeping of one tokenizer run."""

    batch_size: int = field(default=8, metadata={"help": "images per step"})
    lr: float = field(default=1e-4, metadata={"help": "AdamW learning rate (constant after warmup)"})
    warmup_steps: int = field(default=0, metadata={"help": "linear learning-rate warmup steps"})
    betas: tuple[float, float] = field(default=(0.5, 0.9), metadata={"help": "AdamW betas (VQGAN's values)"})
    weight_decay: float = field(default=0.0, metadata={"help": "AdamW weight decay"})
    grad_clip: float = field(default=1.0, metadata={"help": "max gradient norm (0 = off)"})
    max_steps: int = field(default=10000, metadata={"help": "optimizer steps"})
    l1_weight: float = field(default=1.0, metadata={"help": "weight of the L1 reconstruction loss"})
    l2_weight: float = field(default=1.0, metadata={"help": "weight of the L2 reconstruction loss"})
    commitment_weight: float = field(default=0.25, metadata={"help": "weight of the commitment loss ||z - sg(q)||^2"})
    codebook_weight: float = field(default=1.0, metadata={"help": "VQ (gradient mode): weight of ||sg(z) - e||^2"})
    entropy_weight: float = field(default=0.1, metadata={"help": "LFQ: weight of the entropy penalty"})
    codebook_entropy_weight: float = field(default=1.0, metadata={"help": "LFQ: gamma, weight of the codebook entropy inside the penalty"})
    perceptual_weights: str = field(default="", metadata={"help": "path to torchvision vgg16 weights; empty = no perceptual loss"})
    perceptual_lin_weights: str = field(default="", metadata={"help": "optional path to LPIPS vgg linear-layer weights"})
    perceptual_weight: float = field(default=1.0, metadata={"help": "weight of the perceptual loss when enabled"})
    adv_weight: float = field(default=0.1, metadata={"help": "weight of the generator's hinge GAN loss"})
    adv_start_step: int = field(default=-1, metadata={"help": "step at which the PatchGAN starts (-1 = never)"})
    disc_channels: int = field(default=64, metadata={"help": "PatchGAN base channels"})
    disc_lr: float = field(default=1e-4, metadata={"help": "PatchGAN learning rate"})
    restart_every: int = field(default=200, metadata={"help": "VQ: revive dead codes every N steps (0 = never)"})
    restart_threshold: float = field(default=1.0, metadata={"help": "VQ: a code used fewer times than this since the last restart is dead"})
    holdout: int = field(default=16, metadata={"help": "held-out images for PSNR/usage (chosen by a hash of the item key)"})
    max_images: int = field(default=0, metadata={"help": "use at most this many training images (0 = all)"})
    max_file_bytes: int = field(default=DEFAULT_MAX_FILE_BYTES, metadata={
        "help": "skip image files larger than this many bytes without reading them (as prep does)"})
    flip: bool = field(default=True, metadata={"help": "random horizontal flips"})
    seed: int = field(default=0, metadata={"help": "seed of init, batches and restarts"})
    log_every: int = field(default=10, metadata={"help": "log a JSONL line every N steps"})
    eval_every: int = field(default=500, metadata={"help": "evaluate on the held-out images every N steps (and at the end)"})
    save_every: int = field(default=1000, metadata={"help": "write the checkpoint every N steps (and at the end)"})
    device: str = field(default="auto", metadata={"help": "'auto' (cuda if present), 'cpu' or 'cuda[:N]'"})
    precision: str = field(default="fp32", metadata={"help": "'fp32' or 'bf16' (autocast; CUDA only)", "choices": ["fp32", "bf16"]})
    threads: int = field(default=0, metadata={"help": "torch CPU threads while training (0 = torch's default; 1 is often "
                                              "fastest on a busy shared CPU); does not change the result"})

    def __post_init__(self):
        self.betas = tuple(float(b) for b in self.betas)
        if self.batch_size < 1 or self.max_steps < 0 or self.lr <= 0:
            raise ValueError("batch_size >= 1, max_steps >= 0 and lr > 0 are required")
        if self.precision not in ("fp32", "bf16"):
            raise ValueError(f"precision must be fp32 or bf16, got {self.precision!r}")
        if self.holdout < 0:
            raise ValueError("holdout must be >= 0")
        if self.threads < 0:
            raise ValueError("threads must be >= 0 (0 = torch's default)")


@dataclass
class VqConfig:
    """The file `vq_config.yaml`: the network (`model`) and how it was trained (`train`). Every field
    is also a `jpeglm vq train` flag by its own name (`--max-steps`, `--channels`; jpeglm/cli/vq.py)."""

    model: VqModelConfig = field(default_factory=VqModelConfig, metadata={"help": "tokenizer network"})
    train: VqTrainConfig = field(default_factory=VqTrainConfig, metadata={"help": "training settings"})


# --- data ---------------------------------------------------------------------------------------
def load_images(spec: str, size: int, split: str | None = None,
                max_file_bytes: int = DEFAULT_MAX_FILE_BYTES) -> tuple[list[str], np.ndarray, list[dict]]:
    """All usable images of a source at `size` -> (keys, uint8 (N, size, size, 3), skipped); a file
    over `max_file_bytes` is skipped unread."""
    from tqdm.auto import tqdm

    from jpeglm.data_prep.sources import fetch_image, open_source
    from jpeglm.media import MediaError, open_image, prepare_image

    source = open_source(spec, "image", split=split)
    keys, arrays, skipped = [], [], []
    for item in tqdm(source.items(), desc="loading images", unit="img", leave=False):
        try:
            src = fetch_image(source, item, max_file_bytes)
            arrays.append(np.asarray(prepare_image(open_image(src), size)))
            keys.append(item.key)
        except (MediaError, OSError) as e:
            skipped.append({"path": item.key, "reason": str(e)})
    if not arrays:
        raise ValueError(f"no usable images in {spec} ({len(skipped)} skipped)")
    return keys, np.stack(arrays), skipped


def holdout_split(keys: list[str], n_holdout: int) -> tuple[np.ndarray, np.ndarray]:
    """Indices (train, held-out): the held-out images are those whose key hashes lowest, so the
    split does not depend on listing order and adding images rarely moves old ones."""
    n_holdout = min(n_holdout, max(len(keys) - 1, 0))
    order = sorted(range(len(keys)), key=lambda i: hashlib.sha1(keys[i].encode()).hexdigest())
    held = np.array(sorted(order[:n_holdout]), dtype=np.int64)
    train = np.array(sorted(order[n_holdout:]), dtype=np.int64)
    return train, held


def to_tensor(batch: np.ndarray, device) -> torch.Tensor:
    return torch.from_numpy(batch).to(device).permute(0, 3, 1, 2).float().div(127.5).sub(1.0)


# --- evaluation ---------------------------------------------------------------------------------
@torch.no_grad()
def evaluate(model: VqAutoencoder, images: np.ndarray, batch_size: int = 16, device="cpu") -> dict:
    """PSNR of uint8 reconstructions, and codebook usage (fraction of codes used, perplexity)."""
    was_training = model.training
    model.eval()
    psnrs, counts = [], torch.zeros(model.cfg.num_codes, dtype=torch.float64)
    for i in range(0, len(images), batch_size):
        x = to_tensor(images[i : i + batch_size], device)
        idx = model.encode_indices(x)
        rec = model.decode_indices(idx)
        rec8 = ((rec.clamp(-1, 1) + 1) * 127.5).round()
        ref = torch.from_numpy(images[i : i + batch_size]).to(device).permute(0, 3, 1, 2).float()
        mse = ((rec8 - ref) ** 2).flatten(1).mean(1).cpu()
        psnrs += (10 * torch.log10(255.0**2 / mse.clamp_min(1e-10))).tolist()
        counts += torch.bincount(idx.flatten().cpu(), minlength=model.cfg.num_codes).double()
    model.train(was_training)
    p = counts / counts.sum().clamp_min(1)
    ent = float(-(p[p > 0] * p[p > 0].log()).sum())
    used = int((counts > 0).sum())
    return {
        "psnr": float(np.mean(psnrs)) if psnrs else float("nan"),
        "codes_used": used,
        "usage_fraction": used / model.cfg.num_codes,
        "perplexity": math.exp(ent),
        "num_images": int(len(images)),
        "num_codes": model.cfg.num_codes,
    }


# --- checkpoint ---------------------------------------------------------------------------------
def save_checkpoint(model: VqAutoencoder, cfg: VqConfig, out_dir: str | os.PathLike, metrics: dict | None = None) -> Path:
    """Write OUT/model.safetensors, OUT/vq_config.yaml (+ metrics.json), each atomically."""
    from safetensors.torch import save_file

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    state = {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}
    tmp = out / ".model.safetensors.tmp"
    save_file(state, str(tmp), metadata={"format": "jpeglm-vq", "quantizer": cfg.model.quantizer})
    os.replace(tmp, out / "model.safetensors")
    save_config(cfg, out / "vq_config.yaml")
    if metrics is not None:
        atomic_write_text(out / "metrics.json", json.dumps(metrics, indent=2) + "\n")
    return out


# --- resuming ------------------------------------------------------------------------------------
STATE_NAME = "train_state.safetensors"
LEGACY_STATE_NAME = "train_state.pt"  # older jpeglm: a torch pickle, loaded only with weights_only=True


class VqResumeError(UserError, ValueError):
    """`--resume` of a folder whose training state is missing, foreign, or made with another config."""


def _save_state(out: Path, step: int, cfg: VqConfig, model, opt, disc, d_opt, rng, gen) -> None:
    """Everything besides the weights that the next step depends on: optimizers, every RNG, and
    the VQ usage counts since the last restart. Written after the weights, atomically, without
    pickle (tensors in safetensors, the rest as JSON: jpeglm.safestate)."""
    from jpeglm.safestate import save_state

    q = model.quantizer
    state = {
        "step": step, "model_config": to_dict(cfg.model), "opt": opt.state_dict(),
        "disc": disc.state_dict() if disc is not None else None, "d_opt": d_opt.state_dict() if d_opt is not None else None,
        "np_rng": rng.bit_generator.state, "torch_rng": torch.get_rng_state(), "gen": gen.get_state(),
        "usage": getattr(q, "usage", None), "recent": getattr(q, "_recent", None),
    }
    save_state(out / STATE_NAME, state)


def _read_state(out: Path) -> dict:
    from jpeglm.safestate import load_state

    if (out / STATE_NAME).is_file():
        return load_state(out / STATE_NAME)
    legacy = out / LEGACY_STATE_NAME
    try:  # weights_only=True: tensors and plain containers only, a crafted pickle is refused unrun
        return torch.load(legacy, map_location="cpu", weights_only=True)
    except Exception as e:  # torch raises UnpicklingError, RuntimeError, EOFError... for a bad file
        raise VqResumeError(f"{legacy}: not loadable as plain tensors ({type(e).__name__}); resume only "
                            "runs you made, or start a new --out") from e


def _load_state(out: Path, cfg: VqConfig, model, opt, disc, d_opt, rng, gen) -> int:
    from safetensors.torch import load_file

    state = _read_state(out)
    if state["model_config"] != to_dict(cfg.model):
        raise VqResumeError(f"cannot resume {out}: its model config differs from this one")
    weights = load_file(str(out / "model.safetensors"))
    model.load_state_dict({k: v.to(next(model.parameters()).device) for k, v in weights.items()})
    opt.load_state_dict(state["opt"])
    if disc is not None and state["disc"] is not None:
        disc.load_state_dict(state["disc"])
        d_opt.load_state_dict(state["d_opt"])
    rng.bit_generator.state = state["np_rng"]
    torch.set_rng_state(state["torch_rng"])
    gen.set_state(state["gen"])
    if state["usage"] is not None:
        model.quantizer.usage.copy_(state["usage"])
        model.quantizer._recent = state["recent"]
    return int(state["step"])


# --- training -----------------------------------------------------------------------------------
def _device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(name)


def train(cfg: VqConfig, images: np.ndarray, keys: list[str], out_dir: str | os.PathLike | None = None, progress: bool = True, resume: bool = False) -> dict:
    """Train on uint8 images (N, S, S, 3); returns {"model", "history", "metrics"}.
    With `out_dir`, writes the checkpoint, log.jsonl, metrics.json and train_state.safetensors there;
    `resume=True` continues from out_dir's last checkpoint exactly (same batches, same result)."""
    threads = torch.get_num_threads()
    if cfg.train.threads:
        torch.set_num_threads(cfg.train.threads)
    try:
        return _train(cfg, images, keys, out_dir, progress, resume)
    finally:
        torch.set_num_threads(threads)


def _train(cfg: VqConfig, images: np.ndarray, keys: list[str], out_dir, progress: bool, resume: bool) -> dict:
    from tqdm.auto import tqdm

    tc, mc = cfg.train, cfg.model
    if images.shape[1:] != (mc.image_size, mc.image_size, 3):
        raise ValueError(f"images are {images.shape[1:]}, the model wants {mc.image_size}x{mc.image_size}x3")
    torch.manual_seed(tc.seed)
    rng = np.random.default_rng(tc.seed)
    gen = torch.Generator().manual_seed(tc.seed)
    device = _device(tc.device)
    train_idx, held_idx = holdout_split(keys, tc.holdout)
    if tc.max_images:
        train_idx = train_idx[: tc.max_images]
    model = VqAutoencoder(mc).to(device).train()
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=tc.lr, betas=tc.betas, weight_decay=tc.weight_decay)
    perceptual = None
    if tc.perceptual_weights:
        perceptual = VggPerceptual(tc.perceptual_weights, tc.perceptual_lin_weights or None).to(device)
    else:
        log.info("perceptual loss off (no perceptual_weights path given; nothing is downloaded)")
    disc = d_opt = None
    if tc.adv_start_step >= 0:
        disc = PatchDiscriminator(tc.disc_channels).to(device).train()
        d_opt = torch.optim.AdamW(disc.parameters(), lr=tc.disc_lr, betas=tc.betas)
    out = Path(out_dir) if out_dir else None
    start = 0
    if resume:
        if out is None or not any((out / n).is_file() for n in (STATE_NAME, LEGACY_STATE_NAME)):
            raise VqResumeError(f"nothing to resume: {out}/{STATE_NAME} does not exist")
        start = _load_state(out, cfg, model, opt, disc, d_opt, rng, gen)
        log.info("resumed from step %d", start)
    if out:
        out.mkdir(parents=True, exist_ok=True)
        save_config(cfg, out / "vq_config.yaml")
        log_f = open(out / "log.jsonl", "a")
    autocast = torch.autocast("cuda", dtype=torch.bfloat16, enabled=tc.precision == "bf16" and device.type == "cuda")
    history: list[dict] = []
    metrics: dict = {}
    t0, seen = time.time(), 0
    bar = tqdm(range(start, tc.max_steps), desc="vq train", disable=not progress, initial=start, total=tc.max_steps)
    for step in bar:
        lr = tc.lr * min(1.0, (step + 1) / tc.warmup_steps) if tc.warmup_steps else tc.lr
        for g in opt.param_groups:
            g["lr"] = lr
        batch = images[train_idx[rng.integers(len(train_idx), size=tc.batch_size)]]
        x = to_tensor(batch, device)
        if tc.flip:
            flip = torch.from_numpy(rng.random(tc.batch_size) < 0.5).to(device)
            x = torch.where(flip.view(-1, 1, 1, 1), x.flip(3), x)
        with autocast:
            rec, _, aux = model(x)
        rec = rec.float()
        terms = {"l1": (rec - x).abs().mean(), "l2": ((rec - x) ** 2).mean(), "commitment": aux["commitment"]}
        loss = tc.l1_weight * terms["l1"] + tc.l2_weight * terms["l2"] + tc.commitment_weight * aux["commitment"]
        if "codebook" in aux:
            terms["codebook"] = aux["codebook"]
            loss = loss + tc.codebook_weight * aux["codebook"]
        if "per_sample_entropy" in aux:
            terms["per_sample_entropy"], terms["codebook_entropy"] = aux["per_sample_entropy"], aux["codebook_entropy"]
            loss = loss + tc.entropy_weight * (aux["per_sample_entropy"] - tc.codebook_entropy_weight * aux["codebook_entropy"])
        if perceptual is not None:
            terms["perceptual"] = perceptual(rec, x)
            loss = loss + tc.perceptual_weight * terms["perceptual"]
        adv_on = disc is not None and step >= tc.adv_start_step
        if adv_on:
            terms["g_adv"] = -disc(rec).mean()
            loss = loss + tc.adv_weight * terms["g_adv"]
        opt.zero_grad(set_to_none=True)
        loss.backward()
        if tc.grad_clip:
            torch.nn.utils.clip_grad_norm_(model.parameters(), tc.grad_clip)
        opt.step()
        if adv_on:
            d_loss = hinge_d_loss(disc(x), disc(rec.detach()))
            d_opt.zero_grad(set_to_none=True)
            d_loss.backward()
            d_opt.step()
            terms["d_loss"] = d_loss
        if mc.quantizer == "vq" and tc.restart_every and (step + 1) % tc.restart_every == 0:
            terms["restarted"] = torch.tensor(float(model.quantizer.restart_dead_codes(tc.restart_threshold, gen)))
        seen += tc.batch_size
        row = {"step": step + 1, "loss": float(loss.detach()), **{k: float(v.detach()) for k, v in terms.items()}, "lr": lr}
        history.append(row)
        last = step + 1 == tc.max_steps
        if (step + 1) % tc.log_every == 0 or last:
            row["images_per_s"] = seen / max(time.time() - t0, 1e-9)
            bar.set_postfix(loss=f"{row['loss']:.4f}", l1=f"{row['l1']:.4f}")
            if out:
                log_f.write(json.dumps(row) + "\n")
                log_f.flush()
        if len(held_idx) and ((step + 1) % tc.eval_every == 0 or last):
            metrics = {"step": step + 1, **evaluate(model, images[held_idx], device=device)}
            log.info("step %d held-out: %s", step + 1, metrics)
            if out:
                log_f.write(json.dumps({"step": step + 1, "eval": metrics}) + "\n")
                log_f.flush()
        if out and ((step + 1) % tc.save_every == 0 or last):
            save_checkpoint(model, cfg, out, {**metrics, "train_images": int(len(train_idx)), "heldout_images": int(len(held_idx))})
            _save_state(out, step + 1, cfg, model, opt, disc, d_opt, rng, gen)
    if out:
        log_f.close()
    return {"model": model.eval(), "history": history, "metrics": metrics}
