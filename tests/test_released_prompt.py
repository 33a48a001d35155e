"""Prompts cut as the released JPEG-LM's run.py cuts them (issue 12, item 1).

run.py keeps the text of the bytes up to and including the n-th FF D7 (n = int(32 * ratio) at
256x256; a marker every 8 MCUs, half an MCU row) with a regex; `release_cut` below is that rule
reimplemented on bytes, so jpeglm's default cut is checked against it on a 0.05 grid of ratios."""

from __future__ import annotations

import re

import numpy as np
import pytest

from jpeglm.codecs.jpeg import JpegCodec, JpegParams, header_length, restart_marker_ends


def release_cut(data: bytes, ratio: float) -> bytes:
    """run.py's build_prompt cut, on bytes: its regex over the braille text keeps everything up to
    and including the n-th FF D7 (n = int(32 * ratio)); with fewer markers, or n < 1 (a `{-1}`
    that is no quantifier), nothing matches and the whole stream comes back. (The regex itself
    backtracks for seconds when it cannot match, so the search is written as a loop.)"""
    n = int(32 * ratio)
    end, found = 0, 0
    while n >= 1 and found < n:
        i = data.find(b"\xff\xd7", end)
        if i < 0:
            return data
        end, found = i + 2, found + 1
    return data[:end] if n >= 1 else data


@pytest.fixture(scope="module")
def streams(photos):
    codec = JpegCodec()
    return [codec.encode(p) for p in photos[:3]]


GRID = [round(0.05 * k, 2) for k in range(1, 21)]


@pytest.mark.parametrize("ratio", GRID)
def test_default_cut_is_the_release_cut(streams, ratio):
    codec = JpegCodec()
    for d in streams:
        assert codec.prompt(d, ratio) == release_cut(d, ratio)


def test_the_loop_is_the_release_regex(streams):
    """run.py's own regex (where it matches quickly: enough markers) agrees with `release_cut`."""
    text = "".join(chr(b + 10240) for b in streams[0])
    for ratio in (0.05, 0.6, 0.95):
        rst7 = re.escape("\u28ff\u28d7")
        m = re.compile("(" + rst7 + "(?:.*?" + rst7 + "){" + str(int(32 * ratio) - 1) + "})").search(text)
        assert bytes(ord(c) - 10240 for c in text[: m.end()]) == release_cut(streams[0], ratio)


def test_at_0_6_the_release_shows_152_mcus_whole_rows_160(streams):
    codec = JpegCodec()
    d = streams[0]
    half, rows = codec.prompt(d, 0.6), codec.prompt(d, 0.6, "rows")
    assert len(restart_marker_ends(half, header_length(half))) == 152
    assert len(restart_marker_ends(rows, header_length(rows))) == 160
    region = codec.prompt_region(0.6)
    assert region["rule"] == "half_rows" and region["mcus"] == 152 and region["of_mcus"] == 256
    assert region["whole_rows_px"] == 144 and region["partial_row_px"] == [144, 160, 128]
    assert codec.prompt_region(0.6, "rows")["mcus"] == 160 and codec.prompt_region(0.6, "rows")["partial_row_px"] is None
    # the decoded prompt shows the top 9 rows and the left half of the 10th, nothing else
    full, _ = codec.decode(d)
    part, _ = codec.decode(half)
    assert np.array_equal(part[:143], full[:143]) and np.array_equal(part[144:159, :127], full[144:159, :127])
    assert not np.array_equal(part[144:160, 128:], full[144:160, 128:])


def test_below_one_half_row_is_an_error_not_the_whole_image(streams):
    codec = JpegCodec()
    assert release_cut(streams[0], 0.03) == streams[0]  # the release quietly keeps everything
    with pytest.raises(ValueError, match="shows no MCU"):
        codec.prompt(streams[0], 0.03)
    assert codec.prompt(streams[0], 1 / 32) == release_cut(streams[0], 1 / 32)


def test_half_rows_at_other_sizes(photos):
    small = JpegCodec(JpegParams(size=64))  # 4x4 MCUs: 0.25 / 0.5 / 0.75 are whole rows still
    d = small.encode(photos[0])
    for ratio, mcus in [(0.25, 4), (0.5, 8), (0.75, 12), (0.6, 8), (0.65, 10)]:
        p = small.prompt(d, ratio)
        assert len(restart_marker_ends(p, header_length(p))) == mcus == small.prompt_region(ratio)["mcus"], ratio
    odd = JpegCodec(JpegParams(size=48))  # 3 MCUs a row: the middle of a row rounds down to 1 MCU
    d = odd.encode(photos[0])
    assert odd.prompt_steps() == 6 and odd.prompt_steps("rows") == 3
    for k, mcus in [(1, 1), (2, 3), (3, 4), (5, 7)]:
        p = odd.prompt(d, k / odd.prompt_steps())
        assert len(restart_marker_ends(p, header_length(p))) == mcus, k


def test_an_unknown_rule_is_refused(streams):
    with pytest.raises(ValueError, match="half_rows, rows"):
        JpegCodec().prompt(streams[0], 0.5, "thirds")


def _mcus_shown(codec, prompt, full):
    """Per MCU: does the decoded prompt show it (its inside, one pixel clear of chroma upsampling
    across its edges, as the complete file decodes it)?"""
    mx, my, blocks = codec.mcu_layout()
    mw, mh = 8 * blocks["Y"][0], 8 * blocks["Y"][1]
    part, _ = codec.decode(prompt)
    same = np.zeros((my, mx), bool)
    for r in range(my):
        for c in range(mx):
            ys, xs = slice(r * mh + 1, (r + 1) * mh - 1), slice(c * mw + 1, (c + 1) * mw - 1)
            same[r, c] = np.array_equal(part[ys, xs], full[ys, xs])
    return same


@pytest.mark.parametrize("size,rule", [(256, None), (256, "rows"), (48, None)])
def test_prompt_mask_is_what_the_decoded_prompt_shows(photos, size, rule):
    """The mask strips and the app shade (codec.prompt_mask) is, MCU for MCU, what decoding the
    prompt shows, on the 0.05 grid: at 256x256 and 0.6, 9 rows and the left half of the 10th."""
    codec = JpegCodec(JpegParams(size=size))
    d = codec.encode(photos[0])
    full, _ = codec.decode(d)
    mx, my, blocks = codec.mcu_layout()
    mw, mh = 8 * blocks["Y"][0], 8 * blocks["Y"][1]
    for ratio in GRID[:-1] if size == 256 else [1 / 6, 1 / 3, 0.5, 5 / 6]:
        mask = codec.prompt_mask(ratio, (size, size), rule)
        assert mask.sum() == codec.prompt_region(ratio, rule)["mcus"] * mw * mh, ratio
        per_mcu = mask[::mh, ::mw]
        assert (mask == np.repeat(np.repeat(per_mcu, mh, 0), mw, 1)).all()  # whole MCUs only
        assert np.array_equal(_mcus_shown(codec, codec.prompt(d, ratio, rule), full), per_mcu), ratio
    if size == 256 and rule is None:
        m = codec.prompt_mask(0.6, (256, 256))
        assert m[:144].all() and m[144:160, :128].all() and not m[144:, 128:].any() and not m[160:].any()
        half = codec.prompt_mask(0.6, (128, 128))  # any size: the same region, scaled
        assert half.sum() * 4 == m.sum() and half[72:80, :64].all() and not half[72:80, 64:].any()
