"""A new representation is one codec class: registered, it goes through the real `jpeglm prep`,
`jpeglm train` and `jpeglm sample` with no other module touched (DESIGN.md's codec contract).

The toy codec here is a 4x4 grid of grey levels (a code codec: 16 symbols a picture), with its own
option (`--levels`) that the prep command picks up from the codec's options dataclass.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field

import numpy as np
import pytest
from PIL import Image

from jpeglm.cli import main as cli
from jpeglm.codecs.base import CODECS, Codec, DecodeReport, codec_names, register_codec
from jpeglm.config import load_config
from jpeglm.media import open_image, prepare_image
from jpeglm.train.config import TrainConfig
from jpeglm.train.loop import train

GRID, SHOWN = 4, 32  # codes per side; side of the decoded picture


@dataclass(frozen=True)
class GreyParams:
    levels: int = field(default=8, metadata={"help": "toy-grey: grey levels (the number of codes)"})


class GreyGridCodec(Codec):
    """Pictures as a 4x4 grid of grey levels, row-major."""

    name = "toy-grey"
    params_class = GreyParams
    symbol_kind = "codes"
    description = "a 4x4 grid of grey levels (a test codec)"

    @property
    def num_codes(self) -> int:
        return self.params.levels

    def bits_per_symbol(self) -> float:
        return float(np.log2(self.params.levels))

    def prepare(self, media) -> np.ndarray:
        if isinstance(media, np.ndarray):
            media = Image.fromarray(media)
        return np.asarray(prepare_image(open_image(media), GRID))

    def encode(self, media) -> np.ndarray:
        grey = self.prepare(media).astype(np.float64).mean(-1)
        return np.minimum((grey / 256 * self.params.levels).astype(np.int64), self.params.levels - 1).reshape(-1)

    def decode(self, symbols):
        codes = np.clip(np.asarray(symbols, np.int64).reshape(-1)[: GRID * GRID], 0, self.params.levels - 1)
        status = "ok" if codes.size == GRID * GRID else "repaired"
        codes = np.concatenate([codes, np.zeros(GRID * GRID - codes.size, np.int64)])
        grey = ((codes.reshape(GRID, GRID) + 0.5) * 256 / self.params.levels).astype(np.uint8)
        img = np.repeat(np.repeat(grey, SHOWN // GRID, 0), SHOWN // GRID, 1)
        return np.stack([img] * 3, -1), DecodeReport(status)

    def prompt(self, symbols, ratio: float):
        return np.asarray(symbols, np.int64)[: int(round(ratio * GRID)) * GRID]

    def prompt_steps(self) -> int:
        return GRID

    def symbols_per_item(self) -> int:
        return GRID * GRID

    def pixels_per_item(self) -> int:
        return SHOWN * SHOWN


@pytest.fixture
def toy_codec():
    register_codec(GreyGridCodec.name, GreyGridCodec)
    yield GreyGridCodec
    CODECS.pop(GreyGridCodec.name)


def test_a_registered_codec_runs_prep_train_and_sample(tmp_path, photo_dir, toy_codec):
    assert "toy-grey" in codec_names()
    data, run, samples = tmp_path / "data", tmp_path / "run", tmp_path / "samples"
    assert cli(["prep", "--codec", "toy-grey", "--levels", "16", "--input", str(photo_dir), "--out", str(data),
                "--val-fraction", "0", "--no-progress"]) == 0
    manifest = json.loads((data / "manifest.json").read_text())
    assert manifest["codec"] == {"name": "toy-grey", "params": {"levels": 16}}
    assert manifest["tokens_per_item"]["min"] == manifest["tokens_per_item"]["max"] == GRID * GRID + 2  # BOS + codes + EOS
    assert manifest["splits"]["train"]["num_pixels"] == manifest["num_records"] * SHOWN * SHOWN

    cfg = load_config(TrainConfig, None, [
        "model=tiny", "data.seq_len=36", "optim.micro_batch=2", "optim.warmup_steps=1", "eval.interval=0",
        "log_interval=1", "precision=fp32", "deepspeed=zero1", "max_steps=3", "ckpt_interval=3"])
    train(cfg, data, run)
    prompt = photo_dir / "photo_00.png"
    assert cli(["sample", "--model", str(run), "--prompt", str(prompt), "--prompt-ratio", "0.5", "--num", "2",
                "--seed", "1", "--out", str(samples)]) == 0
    out = json.loads((samples / "manifest.json").read_text())
    assert [f["file"] for f in out["files"]] == ["p000_s000.png", "p000_s001.png"]
    codec = GreyGridCodec(GreyParams(levels=16))
    top = codec.decode(codec.prompt(codec.encode(prompt), 0.5))[0][: SHOWN // 2]
    for f in out["files"]:
        assert f["finish"] == "complete" and f["n_new_tokens"] == GRID * GRID // 2  # stops after the last code
        with Image.open(samples / f["file"]) as im:
            pixels = np.asarray(im.convert("RGB"))
        assert pixels.shape == (SHOWN, SHOWN, 3)
        np.testing.assert_array_equal(pixels[: SHOWN // 2], top)  # the prompt's two rows of codes, as given


def test_a_codec_option_belongs_to_its_codec(tmp_path, photo_dir, toy_codec, capsys):
    assert cli(["prep", "--codec", "jpeg", "--levels", "4", "--input", str(photo_dir), "--out", str(tmp_path / "x")]) == 2
    assert "--levels is a setting of --codec toy-grey, not of --codec jpeg" in capsys.readouterr().err
