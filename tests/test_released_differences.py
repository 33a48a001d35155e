"""The README's "Differences from the released run.py": the claims that had no test elsewhere
(alpha on white, EXIF orientation and 16-bit rescaling are tests/test_media.py's)."""

from __future__ import annotations

import io

import numpy as np
from PIL import Image

from jpeglm.codecs.jpeg import JpegCodec
from jpeglm.media import prepare_image


def test_a_source_files_comment_never_reaches_the_bytes(tmp_path, photos):
    """run.py would carry a JPEG file's COM segment through the resize into the modelled bytes."""
    src = tmp_path / "with_comment.jpg"
    photos[0].save(src, "JPEG", quality=90, comment=b"shot on a phone")
    with Image.open(src) as im:
        assert im.info.get("comment") == b"shot on a phone"
        pixels = im.convert("RGB")
    codec = JpegCodec()
    data = codec.encode(src)
    assert b"\xff\xfe" not in data and b"shot on a phone" not in data
    assert data == codec.encode(pixels)
    # what run.py's pipeline does with the same file: the comment is in its bytes
    with Image.open(src) as im:
        rgb = im.convert("RGB").resize((256, 256))
        f = io.BytesIO()
        rgb.save(f, "JPEG", quality=25, subsampling="4:2:0", streamtype=2, restart_marker_blocks=1)
    assert b"shot on a phone" in f.getvalue()


def test_sides_one_pixel_apart_get_the_centre_crop_every_time():
    """run.py's RandomResizedCrop picks a random one-pixel offset here; jpeglm's crop is fixed."""
    rng = np.random.default_rng(0)
    im = Image.fromarray(rng.integers(0, 256, (256, 257, 3), dtype=np.uint8))
    outs = [np.asarray(prepare_image(im, 128)) for _ in range(3)]
    ref = im.crop((0, 0, 256, 256)).resize((128, 128), Image.BILINEAR, reducing_gap=None)
    assert all(np.array_equal(o, np.asarray(ref)) for o in outs)
