"""JpegCodec: byte identity with Pillow, tables, to_file, decode that never raises, prompts."""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from jpeglm.codecs import codec_from_config
from jpeglm.codecs.jpeg import JpegCodec, JpegParams, header_length, restart_marker_ends
from jpeglm.media import MediaError, prepare_image


def pillow_save(im: Image.Image, streamtype: int, **kw) -> bytes:
    f = io.BytesIO()
    opts = dict(quality=25, subsampling="4:2:0", restart_marker_blocks=1)
    opts.update(kw)
    im.save(f, "JPEG", streamtype=streamtype, **opts)
    return f.getvalue()


@pytest.fixture(scope="module")
def codec():
    return JpegCodec()


@pytest.fixture(scope="module")
def squares(photos):
    return [prepare_image(p, 256) for p in photos]


def test_encode_is_byte_identical_to_pillow(codec, squares):
    for im in squares:
        assert codec.encode(im) == pillow_save(im, 2)


def test_encode_byte_identical_on_pets(codec, pets_dir):
    files = sorted((pets_dir / "train").glob("*.jpg"))[:20]
    assert files
    for path in files:
        im = Image.open(path).convert("RGB")
        assert im.size == (256, 256)
        im.info = {}  # these files carry a JPEG comment, which Pillow's writer would copy over
        assert codec.encode(path) == pillow_save(im, 2)


def test_encode_accepts_paths_arrays_and_prepares(codec, photos, photo_dir):
    path = sorted(photo_dir.iterdir())[0]
    expected = pillow_save(prepare_image(photos[0], 256), 2)
    assert codec.encode(path) == expected
    assert codec.encode(str(path)) == expected
    assert codec.encode(path.read_bytes()) == expected
    assert codec.encode(np.asarray(photos[0])) == expected
    assert codec.canonicalize(path) == expected
    with pytest.raises(MediaError):
        codec.encode(np.zeros((10, 10), np.float32))


def test_encode_ignores_image_info(codec, squares):
    im = squares[0].copy()
    im.info["comment"] = b"a comment Pillow would otherwise write"
    assert codec.encode(im) == codec.encode(squares[0])
    assert im.info["comment"] == b"a comment Pillow would otherwise write"  # the caller's picture is untouched


def test_stream_layout(codec, squares):
    d = codec.encode(squares[1])
    hl = header_length(d)
    assert d[:hl] == codec.header() and d[-2:] == b"\xff\xd9"
    ends = restart_marker_ends(d, hl)
    assert len(ends) == 255 == codec.num_restart_markers
    assert [d[e - 1] for e in ends] == [0xD0 + i % 8 for i in range(255)]
    assert codec.mcu_layout() == (16, 16, {"Y": (2, 2), "Cb": (1, 1), "Cr": (1, 1)})


def test_tables_and_to_file(codec, squares):
    t = codec.tables()
    assert t == pillow_save(squares[0], 1)[2:-2]
    assert t is codec.tables()  # cached (`or t == codec.tables()` made this always true)
    markers = [t[i + 1] for i in range(len(t) - 1) if t[i] == 0xFF and t[i + 1] in (0xDB, 0xC4)]
    assert markers.count(0xDB) == 2 and markers.count(0xC4) == 4
    for im in squares:
        f = codec.to_file(codec.encode(im))
        assert codec.is_strictly_decodable(f)
        with Image.open(io.BytesIO(f)) as got:
            got.load()
            assert got.size == (256, 256) and got.mode == "RGB"
            ref = Image.open(io.BytesIO(pillow_save(im, 0)))
            assert np.array_equal(np.asarray(got), np.asarray(ref))


def test_decode_ok(codec, squares):
    d = codec.encode(squares[2])
    arr, rep = codec.decode(d)
    assert rep.status == "ok" and arr.dtype == np.uint8 and arr.shape == (256, 256, 3)
    assert np.array_equal(arr, np.asarray(Image.open(io.BytesIO(pillow_save(squares[2], 0)))))


def test_decode_never_raises(codec, squares):
    rng = np.random.default_rng(0)
    d = codec.encode(squares[0])
    hl = header_length(d)
    cases = {"empty": b"", "random": rng.bytes(3000), "text": b"hello" * 100, "soi only": b"\xff\xd8"}
    for k, cut in enumerate(np.linspace(1, len(d) - 1, 40).astype(int)):
        cases[f"cut{k}@{cut}"] = d[:cut]
    for k in range(30):
        b = bytearray(d)
        for pos in rng.integers(0, len(d), size=1 + k % 4):
            b[pos] ^= 1 << int(rng.integers(0, 8))
        cases[f"flip{k}"] = bytes(b)
    cases["not bytes"] = 12345
    statuses = {}
    for name, data in cases.items():
        arr, rep = codec.decode(data)
        assert arr.shape == (256, 256, 3) and arr.dtype == np.uint8, name
        assert rep.status in ("ok", "repaired", "failed"), name
        assert rep.status == "ok" or rep.reason, name
        statuses[name] = rep.status
    for name in ("empty", "random", "text", "not bytes"):
        assert statuses[name] == "failed"
    assert statuses["soi only"] == "repaired"  # SOI: the canonical header goes in, EOI after it
    for name, data in cases.items():
        if name.startswith("cut"):  # a cut stream is never "ok": repaired once it has its SOI
            assert statuses[name] == ("failed" if len(data) < 2 else "repaired"), name
        elif name.startswith("flip"):  # a flipped bit behind an intact SOI still gives a picture
            assert statuses[name] in ("ok", "repaired"), name
    # Cut inside the scan: repaired, with every whole MCU row before the cut kept.
    full, _ = codec.decode(d)
    ends = restart_marker_ends(d, hl)
    cut = ends[16 * 5 - 1] + 7  # a few bytes into the sixth MCU row
    arr, rep = codec.decode(d[:cut])
    assert rep.status == "repaired" and "EOI" in rep.reason
    # The last pixel row of an MCU row also depends on the next row's chroma (libjpeg's fancy
    # upsampling interpolates 4:2:0 chroma vertically), so compare all rows above it.
    assert np.array_equal(arr[: 16 * 5 - 1], full[: 16 * 5 - 1])


def test_decode_repairs_broken_header(codec, squares):
    d = codec.encode(squares[3])
    hl = header_length(d)
    full, _ = codec.decode(d)
    sof = d.find(b"\xff\xc0")
    for broken in [
        d[:4] + b"\x00\x30" + d[6:],  # APP0 with a bad length: the header no longer parses
        d[: sof + 5] + b"\x00\x40\x00\x40" + d[sof + 9 :],  # SOF says 64x64
        d[:2] + d[hl - 14 :],  # SOI straight into SOS (no APP0/SOF/DRI)
    ]:
        arr, rep = codec.decode(broken)
        assert rep.status == "repaired" and "header" in rep.reason
        assert np.array_equal(arr, full)


def test_decode_huge_claimed_size_is_cheap(codec, squares):
    d = codec.encode(squares[0])
    sof = d.find(b"\xff\xc0")
    huge = d[: sof + 5] + b"\xff\xf0\xff\xf0" + d[sof + 9 :]  # SOF claims 65520x65520
    arr, rep = codec.decode(huge)
    assert rep.status == "repaired" and "header" in rep.reason and arr.shape == (256, 256, 3)


def test_decode_wrong_size_is_resized(codec, squares):
    small = JpegCodec(JpegParams(size=128))
    d128 = small.encode(squares[0])
    arr, rep = codec.decode(small.to_file(d128)[:2] + d128[2:])  # a valid 128x128 stream
    assert arr.shape == (256, 256, 3)
    assert rep.status == "repaired" and "resized" in rep.reason, rep
    # the picture the stream shows, resized (not its scan re-read behind the 256x256 header)
    pic, _ = small.decode(d128)
    np.testing.assert_array_equal(arr, np.asarray(Image.fromarray(pic).resize((256, 256), Image.BILINEAR)))


@pytest.mark.parametrize("ratio", [0.25, 0.5, 0.75])
@pytest.mark.parametrize("rule", ["half_rows", "rows"])
def test_prompt_shows_top_rows(codec, squares, ratio, rule):
    for im in squares[:3]:
        d = codec.encode(im)
        p = codec.prompt(d, ratio, rule)  # the two rules agree at these ratios
        assert d.startswith(p) and p[-2] == 0xFF and 0xD0 <= p[-1] <= 0xD7
        rows = round(ratio * 16)
        assert len(restart_marker_ends(p, header_length(p))) == rows * 16
        full, _ = codec.decode(d)
        part, rep = codec.decode(p)
        assert rep.status == "repaired"
        assert np.array_equal(part[: rows * 16 - 1], full[: rows * 16 - 1])  # see test_decode_never_raises
        assert not np.array_equal(part[rows * 16 :], full[rows * 16 :])


def test_prompt_edges(codec, squares):
    d = codec.encode(squares[0])
    assert codec.prompt(d, 0.0) == d[: header_length(d)] == codec.header()
    assert codec.prompt(d, 1.0) == d
    for rule in ("half_rows", "rows"):  # a ratio that shows no MCU is an error, not the whole picture
        with pytest.raises(ValueError, match="shows no MCU"):
            codec.prompt(d, 0.01, rule)
    with pytest.raises(ValueError, match="ratio"):
        codec.prompt(d, 1.5)
    with pytest.raises(ValueError, match="restart markers"):
        codec.prompt(d[:200], 0.5)


def test_other_sizes_and_params(squares):
    for params in [JpegParams(size=128), JpegParams(size=64, subsampling="4:4:4", restart_marker_blocks=2)]:
        c = JpegCodec(params)
        d = c.encode(squares[0])
        im = prepare_image(squares[0], params.size)
        rmb = params.restart_marker_blocks
        assert d == pillow_save(im, 2, subsampling=params.subsampling, restart_marker_blocks=rmb)
        arr, rep = c.decode(d)
        assert rep.ok and arr.shape == (params.size, params.size, 3)
        assert len(restart_marker_ends(d, header_length(d))) == c.num_restart_markers
        half = c.prompt(d, 0.5)
        mx, my, _ = c.mcu_layout()
        assert len(restart_marker_ends(half, header_length(half))) == (my // 2) * mx // params.restart_marker_blocks


@pytest.mark.parametrize(
    "kw",
    [dict(size=100), dict(size=0), dict(quality=0), dict(quality=101), dict(subsampling="4:1:1"),
     dict(restart_marker_blocks=0), dict(restart_marker_blocks=3), dict(min_side=0)],
)
def test_params_validation(kw):
    with pytest.raises(ValueError, match=next(iter(kw))):  # refused for the field given, not another
        JpegParams(**kw)


def test_config_roundtrip():
    c = JpegCodec(JpegParams(size=128, quality=30))
    again = codec_from_config(c.to_config())
    assert isinstance(again, JpegCodec) and again.params == c.params


def test_codec_module_imports_no_torch():
    import subprocess
    import sys

    code = "import sys, jpeglm.codecs.jpeg, jpeglm.media; assert 'torch' not in sys.modules"
    subprocess.run([sys.executable, "-c", code], check=True, cwd=Path(__file__).resolve().parents[1])
