"""Pixel baseline: palette codec round trips, repairs, prompts, palette files and `jpeglm pixel fit`."""

from __future__ import annotations

import argparse
import json

import numpy as np
import pytest

from jpeglm.codecs.base import codec_from_config
from jpeglm.codecs.pixel import PaletteError, PixelCodec, PixelParams, uniform_palette
from jpeglm.media import MediaError
from jpeglm.baselines.pixel_fit import PaletteSettings, fit_palette, save_palette


def _palette_image(palette: np.ndarray, size: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    idx = np.random.default_rng(seed).integers(len(palette), size=(size, size))
    return palette[idx], idx


def test_uniform_palette_is_the_rgb_cube():
    p = uniform_palette()
    assert p.shape == (512, 3) and p.dtype == np.uint8
    assert len(np.unique(p, axis=0)) == 512
    assert PixelCodec().num_codes == 512 and PixelCodec().bits_per_symbol() == 9.0
    assert PixelCodec().image_size == 256 and PixelCodec().params.size == 32


def test_round_trip_exact_on_palette_colours():
    codec = PixelCodec(PixelParams(size=32, eval_size=32))
    img, idx = _palette_image(codec.palette, 32)
    codes = codec.encode(img)
    assert codes.dtype == np.int64 and codes.shape == (1024,)
    np.testing.assert_array_equal(codes, idx.reshape(-1))
    out, report = codec.decode(codes)
    assert report.status == "ok"
    np.testing.assert_array_equal(out, img)


def test_nearest_upsampling_repeats_each_pixel_into_a_block():
    codec = PixelCodec(PixelParams(size=32, eval_size=256, upsample="nearest"))
    img, _ = _palette_image(codec.palette, 32, seed=1)
    out, report = codec.decode(codec.encode(img))
    assert report.ok and out.shape == (256, 256, 3)
    np.testing.assert_array_equal(out, np.repeat(np.repeat(img, 8, 0), 8, 1))
    smooth, _ = PixelCodec(PixelParams(size=32, upsample="bilinear")).decode(codec.encode(img))
    assert smooth.shape == (256, 256, 3) and not np.array_equal(smooth, out)


def test_encode_picks_the_nearest_colour():
    pal = np.array([[0, 0, 0], [255, 255, 255], [255, 0, 0]], np.uint8)
    codec = PixelCodec(PixelParams(size=2, eval_size=2, palette=tuple(map(tuple, pal.tolist()))))
    img = np.array([[[10, 10, 10], [250, 240, 245]], [[200, 30, 20], [100, 100, 100]]], np.uint8)
    np.testing.assert_array_equal(codec.encode(img), [0, 1, 2, 0])


def test_fitted_palette_file_round_trip_and_config(tmp_path, photos):
    pixels = np.concatenate([np.asarray(p.resize((16, 16))).reshape(-1, 3) for p in photos])
    palette = fit_palette(pixels, PaletteSettings(colors=16, seed=0))
    assert palette.shape == (16, 3)
    np.testing.assert_array_equal(palette, fit_palette(pixels, PaletteSettings(colors=16, seed=0)))  # deterministic
    path = save_palette(tmp_path / "pal.npz", palette, size=16)
    codec = PixelCodec.from_palette(path)
    assert codec.params.size == 16 and codec.num_codes == 16 and codec.bits_per_symbol() == 4.0
    cfg = json.loads(json.dumps(codec.to_config()))  # what a manifest stores
    again = codec_from_config(cfg)
    np.testing.assert_array_equal(again.palette, palette)
    img, idx = _palette_image(palette, 16)
    # duplicates after rounding could make argmin pick another index with the same colour
    out, report = again.decode(again.encode(img))
    assert report.ok and out.shape == (256, 256, 3)
    np.testing.assert_array_equal(out[::16, ::16], img)
    # a photo: the palette keeps it recognisable (PSNR well above a flat gray guess)
    photo = np.asarray(photos[0].resize((16, 16)))
    rec = again.palette[again.encode(photo)].reshape(16, 16, 3).astype(float)
    psnr = 10 * np.log10(255**2 / ((rec - photo) ** 2).mean())
    assert psnr > 20


def test_fit_recovers_clear_clusters():
    centres = np.array([[20, 30, 40], [200, 10, 10], [10, 220, 30], [240, 240, 240]], float)
    rng = np.random.default_rng(0)
    pts = np.clip(centres[rng.integers(4, size=4000)] + rng.normal(0, 3, (4000, 3)), 0, 255).astype(np.uint8)
    pal = fit_palette(pts, PaletteSettings(colors=4, seed=0)).astype(float)
    dist = np.abs(pal[:, None] - centres[None]).max(-1).min(0)
    assert (dist < 4).all(), pal


@pytest.mark.parametrize(
    "bad, match",
    [
        (np.zeros((512, 4), np.uint8), r"shape \(K, 3\)"),
        (np.zeros((512,), np.uint8), r"shape \(K, 3\)"),
        (np.full((8, 3), 300, np.int64), "0..255"),
        (np.zeros((1, 3), np.uint8), "2..65536"),
        (np.zeros((8, 3), np.float32), "integers"),
    ],
)
def test_wrong_palette_files_are_clear_errors(tmp_path, bad, match):
    np.save(tmp_path / "bad.npy", bad)
    with pytest.raises(PaletteError, match=match):
        PixelCodec.from_palette(tmp_path / "bad.npy")


def test_palette_file_problems(tmp_path):
    with pytest.raises(PaletteError, match="does not exist"):
        PixelCodec.from_palette(tmp_path / "missing.npz")
    np.savez(tmp_path / "nokey.npz", colours=uniform_palette())
    with pytest.raises(PaletteError, match="no 'palette'"):
        PixelCodec.from_palette(tmp_path / "nokey.npz")
    (tmp_path / "junk.npy").write_bytes(b"not numpy at all")
    with pytest.raises(PaletteError, match="not a .npy/.npz palette"):
        PixelCodec.from_palette(tmp_path / "junk.npy")
    np.save(tmp_path / "ok.npy", uniform_palette())
    assert PixelCodec.from_palette(tmp_path / "ok.npy", size=64).params.size == 64


def test_decode_never_raises_on_garbage():
    codec = PixelCodec()
    for garbage in ([], None, "abc", [[1, 2], [3]], [object()]):
        img, report = codec.decode(garbage)
        assert report.status == "failed" and img.shape == (256, 256, 3), garbage
    img, report = codec.decode(np.arange(100))
    assert report.status == "repaired" and "100 codes" in report.reason and img.shape == (256, 256, 3)
    img, report = codec.decode(np.full(1024 + 7, 3))
    assert report.status == "repaired" and "1031 codes" in report.reason
    np.testing.assert_array_equal(img, codec.decode(np.full(1024, 3))[0])  # the 7 extra codes are dropped
    img, report = codec.decode(np.array([-5, 9999] * 512))
    assert report.status == "repaired" and "clamped" in report.reason
    np.testing.assert_array_equal(img[0, 0], codec.palette[0])
    np.testing.assert_array_equal(img[0, 8], codec.palette[511])


def test_prompt_keeps_top_rows():
    codec = PixelCodec(PixelParams(size=32, eval_size=32))
    img, _ = _palette_image(codec.palette, 32, seed=3)
    codes = codec.encode(img)
    for ratio, rows in [(0.0, 0), (0.25, 8), (0.5, 16), (0.75, 24), (1.0, 32)]:
        p = codec.prompt(codes, ratio)
        assert len(p) == rows * 32
        np.testing.assert_array_equal(p, codes[: rows * 32])
    out, report = codec.decode(codec.prompt(codes, 0.5))
    assert report.status == "repaired"
    np.testing.assert_array_equal(out[:16], img[:16])
    np.testing.assert_array_equal(out[16:], np.repeat(img[15:16], 16, 0))  # padded with the row above
    with pytest.raises(ValueError, match="ratio"):
        codec.prompt(codes, 1.5)


def test_images_too_small_are_media_errors(photos):
    codec = PixelCodec()
    with pytest.raises(MediaError, match="smaller than the minimum"):
        codec.encode(photos[0].resize((40, 40)))
    assert codec.encode(photos[0]).shape == (1024,)  # any real photo is cropped and resized
    with pytest.raises(ValueError, match="HxWx3"):
        codec.encode(np.zeros((10, 10), np.uint8))


def test_pixel_fit_cli(tmp_path, photo_dir):
    from jpeglm.cli import pixel as pixel_fit

    outs = []
    for i in range(2):
        out = tmp_path / f"pal{i}.npz"
        args = argparse.Namespace(input=str(photo_dir), out=str(out), colors=8, size=16, max_pixels=2000, max_images=0, iters=5, seed=0, split=None)
        assert pixel_fit.run(args) == 0
        outs.append(PixelCodec.from_palette(out))
    assert outs[0].params.size == 16 and outs[0].num_codes == 8
    np.testing.assert_array_equal(outs[0].palette, outs[1].palette)
    bad = argparse.Namespace(input=str(tmp_path / "nothing"), out=str(tmp_path / "x.npz"), colors=8, size=16, max_pixels=2000, max_images=0, iters=5, seed=0, split=None)
    assert pixel_fit.run(bad) == 2


def test_fit_code_grid_pads_partial_rows_then_repeats_rows():
    from jpeglm.codecs.pixel import fit_code_grid

    np.testing.assert_array_equal(fit_code_grid([1, 2, 3, 4, 5], 3), [1, 2, 3, 4, 5, 5, 4, 5, 5])
    np.testing.assert_array_equal(fit_code_grid([1, 2, 3], 3), [1, 2, 3] * 3)
    np.testing.assert_array_equal(fit_code_grid(list(range(12)), 3), list(range(9)))
