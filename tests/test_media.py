"""jpeglm.media: every Pillow mode to RGB, EXIF, animation, bad input, crop + resize."""

from __future__ import annotations

import io

import numpy as np
import pytest
from PIL import Image

from jpeglm.media import MediaError, open_image, prepare_image


def _png(im: Image.Image, fmt="PNG", **kw) -> bytes:
    f = io.BytesIO()
    im.save(f, fmt, **kw)
    return f.getvalue()


def test_rgb_photo_roundtrips_unchanged(photos):
    im = photos[0]
    out = open_image(_png(im))
    assert out.mode == "RGB" and out.size == im.size
    assert np.array_equal(np.asarray(out), np.asarray(im))


def test_gray_and_palette_modes():
    g = Image.linear_gradient("L").resize((100, 80))
    out = open_image(_png(g))
    a = np.asarray(out)
    assert out.mode == "RGB" and a.shape == (80, 100, 3)
    assert np.array_equal(a[..., 0], np.asarray(g)) and np.array_equal(a[..., 1], a[..., 2])
    p = g.convert("P")
    assert np.array_equal(np.asarray(open_image(_png(p)))[..., 0], np.asarray(p.convert("L")))
    one = g.convert("1")  # 1-bit: black and white pixels where Pillow's dither put them (a subset check passed all black)
    assert np.array_equal(np.asarray(open_image(_png(one)))[..., 0], np.asarray(one.convert("L")))


def test_alpha_composited_on_white():
    rgba = Image.new("RGBA", (70, 70), (255, 0, 0, 0))  # fully transparent red
    rgba.paste((0, 0, 255, 255), (0, 0, 35, 70))  # opaque blue left half
    a = np.asarray(open_image(_png(rgba)))
    assert (a[:, 40:] == 255).all(), "transparent pixels must become white"
    assert (a[:, :30] == (0, 0, 255)).all()
    la = Image.new("LA", (70, 70), (0, 0))
    assert (np.asarray(open_image(_png(la))) == 255).all()
    half = np.asarray(open_image(_png(Image.new("RGBA", (70, 70), (0, 0, 0, 128)))))
    assert 120 <= half.mean() <= 135


def test_palette_with_transparency_index():
    p = Image.new("P", (64, 64), 0)
    p.putpalette([0, 0, 0, 255, 0, 0] + [0] * 762)
    p.paste(1, (0, 0, 32, 64))
    p.info["transparency"] = 0
    a = np.asarray(open_image(_png(p, transparency=0)))
    assert (a[:, :32] == (255, 0, 0)).all() and (a[:, 40:] == 255).all()


def test_cmyk_jpeg():
    cmyk = Image.new("CMYK", (80, 80), (0, 255, 255, 0))  # red in CMYK
    a = np.asarray(open_image(_png(cmyk, "JPEG", quality=95)))
    assert a.shape == (80, 80, 3)
    assert a[..., 0].mean() > 200 and a[..., 1].mean() < 60 and a[..., 2].mean() < 60


def test_sixteen_bit_is_scaled_not_clipped():
    ramp = (np.linspace(0, 65535, 96 * 96).reshape(96, 96)).astype(np.uint16)
    im16 = Image.fromarray(ramp)
    assert im16.mode == "I;16"
    a = np.asarray(open_image(_png(im16)))[..., 0].astype(int)
    assert a.min() == 0 and a.max() == 255
    assert np.abs(a - np.rint(ramp / 257.0)).max() <= 1
    i32 = Image.fromarray(ramp.astype(np.int32))
    assert i32.mode == "I"
    b = np.asarray(open_image(i32))[..., 0].astype(int)
    assert np.abs(b - a).max() <= 1


def test_float_mode():
    f = Image.fromarray(np.linspace(0, 1, 80 * 80, dtype=np.float32).reshape(80, 80), "F")
    a = np.asarray(open_image(f))[..., 0]
    assert a.min() == 0 and a.max() == 255


def test_exif_orientation_applied():
    im = Image.new("RGB", (120, 80), (0, 0, 0))
    im.paste((255, 255, 255), (0, 0, 60, 80))  # white left half
    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90 CW to display
    out = open_image(_png(im, "JPEG", quality=95, exif=exif.tobytes()))
    assert out.size == (80, 120)
    a = np.asarray(out).mean(axis=(1, 2))
    assert a[:50].mean() > 200 and a[-50:].mean() < 50  # the white half is now on top


def test_animated_gif_first_frame():
    frames = [Image.new("RGB", (64, 64), c) for c in [(255, 0, 0), (0, 255, 0), (0, 0, 255)]]
    f = io.BytesIO()
    frames[0].save(f, "GIF", save_all=True, append_images=frames[1:], duration=50, loop=0)
    a = np.asarray(open_image(f.getvalue()))
    assert (a == (255, 0, 0)).all()


@pytest.mark.parametrize(
    "data, why",
    [
        (b"", "empty"),
        (b"this is not a picture at all\n" * 20, "identify"),
        (bytes(np.random.default_rng(0).integers(0, 256, 5000, dtype=np.uint8)), "identify"),
    ],
)
def test_bad_bytes(data, why):
    with pytest.raises(MediaError, match=why):
        open_image(data)


def test_bad_files(tmp_path, photos):
    empty = tmp_path / "empty.jpg"
    empty.write_bytes(b"")
    text = tmp_path / "notes.jpg"
    text.write_text("hello, I am text\n")
    good = _png(photos[1], "JPEG", quality=90)
    cut_header = tmp_path / "cut_header.jpg"
    cut_header.write_bytes(good[:40])
    cut_data = tmp_path / "cut_data.jpg"
    cut_data.write_bytes(good[: len(good) // 2])
    cut_png = tmp_path / "cut.png"
    cut_png.write_bytes(_png(photos[1])[:3000])
    for path in [empty, text, cut_header, cut_data, cut_png, tmp_path / "missing.png"]:
        with pytest.raises(MediaError) as e:
            open_image(path)
        assert str(path) in str(e.value)
    assert isinstance(MediaError("x"), ValueError)


def test_decompression_bomb_rejected_before_decoding():
    # A 20000x20000 PNG of zeros compresses to ~0.5 MB; the limit fires from the header alone.
    big = Image.new("L", (20000, 20000))
    data = _png(big, optimize=False, compress_level=9)
    with pytest.raises(MediaError, match="bomb"):
        open_image(data)
    with pytest.raises(MediaError, match="bomb"):
        open_image(_png(Image.new("L", (2000, 2000))), max_pixels=1_000_000)


def test_min_side_policy():
    with pytest.raises(MediaError, match="minimum side"):
        open_image(_png(Image.new("RGB", (300, 40))))
    assert open_image(_png(Image.new("RGB", (300, 40))), min_side=32).size == (300, 40)


def test_prepare_image_centre_crop_and_resize():
    im = Image.new("RGB", (300, 200), (0, 0, 0))
    im.paste((255, 255, 255), (50, 0, 250, 200))  # the centre square is white, the sides black
    out = prepare_image(im, 64)
    assert out.size == (64, 64) and out.mode == "RGB"
    assert (np.asarray(out) == 255).all()
    ref = im.crop((50, 0, 250, 200)).resize((64, 64), Image.BILINEAR, reducing_gap=None)
    assert np.array_equal(np.asarray(out), np.asarray(ref))
    tall = prepare_image(Image.new("RGB", (100, 301)), 32)
    assert tall.size == (32, 32)


def test_prepare_image_antialiased_and_deterministic(photos):
    im = photos[0]  # 512x512 astronaut
    a = np.asarray(prepare_image(im, 256))
    assert np.array_equal(a, np.asarray(prepare_image(im.copy(), 256)))
    # Antialiased: a 2x bilinear downscale averages 4x4 neighbourhoods, so it is smoother than
    # plain subsampling of every second pixel.
    sub = np.asarray(im)[::2, ::2].astype(float)
    assert np.abs(np.diff(a.astype(float), axis=1)).mean() < np.abs(np.diff(sub, axis=1)).mean()
    same = prepare_image(Image.fromarray(a), 256)
    assert np.array_equal(np.asarray(same), a)
