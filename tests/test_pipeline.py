"""Every representation through the same pipeline: prep -> train -> sample, with the real CLI.

This is the contract DESIGN.md promises: JPEG, H.264, VQ codes and palette pixels differ only in
the codec; `jpeglm train` and `jpeglm sample` are the same commands for all of them.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from jpeglm.cli import main as cli
from jpeglm.config import load_config
from jpeglm.shards import ShardSet
from jpeglm.train.loop import train
from jpeglm.train.config import TrainConfig


@pytest.fixture(autouse=True)
def one_thread():
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def _train(data: Path, out: Path, steps: int = 4) -> None:
    cfg = load_config(TrainConfig, None, [
        "model=tiny", "data.seq_len=128", "optim.micro_batch=2", "optim.warmup_steps=1", "eval.interval=0",
        "log_interval=1", "precision=fp32", "deepspeed=zero1", f"max_steps={steps}", f"ckpt_interval={steps}"])
    train(cfg, data, out)
    losses = [json.loads(line)["loss"] for line in (out / "log.jsonl").read_text().splitlines() if "loss" in line]
    assert len(losses) == steps and all(np.isfinite(losses))


def _prep(codec: str, src: Path, out: Path, *extra: str, records: int) -> None:
    assert cli(["prep", "--codec", codec, "--input", str(src), "--out", str(out), "--val-fraction", "0",
                "--no-progress", *extra]) == 0
    assert len(ShardSet(out, "train")) == records  # every input item, none dropped (val fraction 0)


def _sample(run: Path, out: Path, prompt: Path, *extra: str) -> dict:
    assert cli(["sample", "--model", str(run), "--prompt", str(prompt), "--num", "2", "--batch-size", "2",
                "--seed", "3", "--out", str(out), *extra]) == 0
    return json.loads((out / "manifest.json").read_text())


@pytest.mark.parametrize("codec", ["jpeg", "vq", "pixel"])
def test_image_codecs_share_one_pipeline(tmp_path, photo_dir, codec):
    extra: list[str] = []
    if codec == "jpeg":
        extra = ["--size", "64"]
    elif codec == "vq":
        assert cli(["vq", "train", "--input", str(photo_dir), "--out", str(tmp_path / "vq"), "--config",
                    "configs/vq/tiny.yaml", "--max-steps", "3"]) == 0
        extra = ["--vq-model", str(tmp_path / "vq")]
    else:
        assert cli(["pixel", "fit", "--input", str(photo_dir), "--out", str(tmp_path / "palette.npz"),
                    "--colors", "16", "--size", "16"]) == 0
        extra = ["--palette", str(tmp_path / "palette.npz")]
    _prep(codec, photo_dir, tmp_path / "data", *extra, records=len(list(photo_dir.iterdir())))
    _train(tmp_path / "data", tmp_path / "run")
    budget = ["--max-new-tokens", "700"] if codec == "jpeg" else []
    manifest = _sample(tmp_path / "run", tmp_path / "samples", photo_dir / "photo_00.png", "--prompt-ratio", "0.5", *budget)

    files = sorted(p for p in (tmp_path / "samples").iterdir() if p.suffix in (".jpg", ".png") and "sheet" not in p.name)
    suffix = ".jpg" if codec == "jpeg" else ".png"
    assert [p.name for p in files] == [f"p000_s000{suffix}", f"p000_s001{suffix}"], [p.name for p in (tmp_path / "samples").iterdir()]
    # the size the codec decodes a training record to (64 JPEG, 64 VQ, 256 pixel at eval size)
    shards = ShardSet(tmp_path / "data", "train")
    side = shards.codec().decode(shards.tokenizer().decode(shards[0].tolist()))[0].shape[0]
    for f in files:
        with Image.open(f) as im:
            im.load()  # strict: no LOAD_TRUNCATED_IMAGES anywhere in the process
            assert im.size == (side, side)
    # the manifest describes those files: constrained samples are whole pictures that decode as written
    assert [x["file"] for x in manifest["files"]] == [p.name for p in files]
    assert manifest["decode_status"] == {"ok": 2, "repaired": 0, "failed": 0}, manifest["files"]
    assert all(x["report"]["status"] == "ok" and x["n_new_tokens"] > 0 for x in manifest["files"])
    assert manifest["codec"]["name"] == codec and manifest["sampler"]["seed"] == 3


def test_video_pipeline_writes_playable_mp4_with_the_prompt_frames(tmp_path):
    import av

    from jpeglm.codecs.avc import AvcCodec
    from jpeglm.video import builtin_clip, read_frames, write_video

    videos = tmp_path / "videos"
    videos.mkdir()
    clip = builtin_clip(frames=30)
    write_video(clip, videos / "a.mp4", fps=10)
    write_video(clip[::-1].copy(), videos / "b.mp4", fps=10)
    _prep("avc", videos, tmp_path / "data", records=2)  # 3 s at 10 fps: one 15-frame clip per video
    _train(tmp_path / "data", tmp_path / "run", steps=3)
    manifest = _sample(tmp_path / "run", tmp_path / "samples", videos / "a.mp4", "--prompt-frames", "3",
                       "--max-new-tokens", "64")

    codec = AvcCodec()
    prompt_frames, _ = codec.decode(codec.prompt_frames(codec.encode(videos / "a.mp4"), 3))
    mp4s = sorted((tmp_path / "samples").glob("*.mp4"))
    assert len(mp4s) == 2, manifest
    decoded = {x["file"]: x["report"]["details"]["decoded_frames"] for x in manifest["files"]}
    assert sorted(decoded) == [f.name for f in mp4s]
    for f in mp4s:
        with av.open(str(f)) as c:
            assert c.streams.video[0].codec_context.name == "h264"
        frames = read_frames(f)
        assert len(frames) == decoded[f.name] >= 3  # only frames that decode are muxed; the prompt frames always do
        np.testing.assert_array_equal(frames[:3], prompt_frames[:3])  # the prompt frames are intact
