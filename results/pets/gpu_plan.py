"""The sizes of the GPU-scale pets run (results/pets/gpu.sh), full and dry, in one place.

Every step of the run (gpu_prepare.py here, gpu_run.py on the GPU machine, gpu_score.py here) reads
its sizes from `plan(dry)`, so the dry run exercises the same code path as the real one, only smaller.
The 7-minute arithmetic behind the full sizes is in gpu.sh's header.
"""

from __future__ import annotations

SYSTEMS = ("jpeg", "vq", "pixel")  # folder names; the report's names are in configs/eval/pets-gpu.yaml
REPORT_NAMES = {"jpeg": "jpeg-bpe", "vq": "vq-lfq", "pixel": "pixel"}
SETTINGS = (0.25, 0.5, 0.75, None)  # None = unconditional; the order of the eval harness's seeds
SEED_STRIDE = 100_000  # = jpeglm.eval.harness.SETTING_SEED_STRIDE (checked by gpu_score.py)

FULL = {
    "size": 128,                 # pixels a side, for every system
    "photo_quality": 75,
    "photo_size": 128,           # side of those photos (the dry run keeps 64: images below 64 px are refused)         # JPEG quality of the 128x128 photos that travel for the VQ and pixel systems
    "bpe_vocab": 320,            # the paper's BPE vocabulary
    "pixel_grid": 32, "pixel_colors": 512,
    "train_limit": None,         # all 6,895 training photos
    "num_test": 200,             # test prompts per setting; also the unconditional count
    "vq_config": "lfq_128", "vq_overrides": [],
    "train_config": "pets-gpu", "train_overrides": [],
    "sample_batch": 200,
    "max_new_tokens": None,      # the sampler's default: the rest of the picture
    "deadline_s": 400,           # gpu_run.py starts no new sampling after this many seconds
    "fid_bootstrap": 30,
    "val_fraction": 0.02,
}

DRY = {
    **FULL,
    "size": 64, "photo_size": 64, "bpe_vocab": 262, "pixel_grid": 8, "pixel_colors": 16,
    "train_limit": 12, "num_test": 2, "sample_batch": 4, "max_new_tokens": 64, "deadline_s": 600, "fid_bootstrap": 2, "val_fraction": 0.25,
    "vq_config": "tiny",
    "vq_overrides": ["train.max_steps=2", "train.batch_size=4", "train.holdout=2",
                     "train.eval_every=2", "train.save_every=2", "train.log_every=1", "train.device=cpu",
                     "train.precision=fp32"],
    "train_config": "tiny-cpu",
    "train_overrides": ["max_steps=2", "data.seq_len=64", "optim.micro_batch=2", "optim.warmup_steps=1",
                        "eval.interval=0", "eval.max_records=2", "eval.batch_size=2", "log_interval=1",
                        "ckpt_interval=2", "keep_last=1", "precision=fp32"],
}


def plan(dry: bool) -> dict:
    return dict(DRY if dry else FULL)


# ------------------------------------------------------------------------------------------------
# codec factories (module-level, so prep's worker processes can pickle them)


def jpeg_codec(size: int):
    from jpeglm.codecs.jpeg import JpegCodec, JpegParams

    return JpegCodec(JpegParams(size=size))


def pixel_codec(palette: str, size: int):
    """The pixel codec of the fitted palette, judged at the run's size (not the codec's default 256)."""
    from jpeglm.codecs.pixel import PixelCodec

    return PixelCodec.from_palette(palette, eval_size=size)


def vq_codec(model_dir: str):
    from jpeglm.codecs.vq import VqCodec

    return VqCodec.from_pretrained(model_dir)
