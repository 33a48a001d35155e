"""The clip rule, mp4 muxing, contact sheets and the built-in clip (jpeglm/video.py)."""

from __future__ import annotations

import wave

import av
import numpy as np
import pytest

from jpeglm.codecs.avc import AvcCodec
from jpeglm.video import (
    ClipRule,
    VideoError,
    builtin_clip,
    contact_sheet,
    fit_frame,
    frame_to_rgb,
    iter_clips,
    read_frames,
    write_mp4,
    write_video,
)

BITS = 8  # frame i of a counting video shows i in binary: 8 vertical stripes, white = bit set


def counting_video(path, n, fps, size=(96, 160)):
    """A video whose frame i shows i as black/white stripes, so a decoded frame says its index."""
    h, w = size
    frames = np.zeros((n, h, w, 3), np.uint8)
    for i in range(n):
        for b in range(BITS):
            if i >> b & 1:
                frames[i, :, b * w // BITS : (b + 1) * w // BITS] = 255
    write_video(frames, path, fps=fps)
    return path


def indices(clip: np.ndarray) -> list[int]:
    w = clip.shape[2]
    centres = [(2 * b + 1) * w // (2 * BITS) for b in range(BITS)]
    return [sum(1 << b for b, x in enumerate(centres) if f[:, x].mean() > 128) for f in clip]


@pytest.fixture(scope="module")
def video30(tmp_path_factory):
    """70 frames at 30 fps = 2.333 s."""
    return counting_video(tmp_path_factory.mktemp("v") / "c30.mp4", 70, 30)


# --- the clip rule ----------------------------------------------------------------------------------
def test_resampling_picks_the_frame_on_screen(video30):
    rule = ClipRule(start_s=0.0, stride_s=0.5, frames=5, fps=10, max_clips_per_video=3)
    clips = list(iter_clips(video30, rule, 64, 36))
    assert [k for k, _ in clips] == ["clip000@0.000s", "clip001@0.500s", "clip002@1.000s"]
    assert indices(clips[0][1]) == [0, 3, 6, 9, 12]  # 30 fps -> 10 fps: every third frame
    assert indices(clips[1][1]) == [15, 18, 21, 24, 27]
    assert indices(clips[2][1]) == [30, 33, 36, 39, 42]
    assert all(c.shape == (5, 36, 64, 3) and c.dtype == np.uint8 for _, c in clips)


def test_slow_source_repeats_frames_and_start_offset(tmp_path):
    path = counting_video(tmp_path / "c5.mkv", 20, 5)  # 5 fps, 4 s, mkv container
    (key, clip), = list(iter_clips(path, ClipRule(start_s=1.0, frames=6, fps=10, max_clips_per_video=1), 64, 36))
    assert key == "clip000@1.000s"
    assert indices(clip) == [5, 5, 6, 6, 7, 7]


def test_clip_count_limits_and_skipped_tail(video30):
    skipped = []
    rule = ClipRule(stride_s=0.5, frames=15, fps=10, max_clips_per_video=0)
    keys = [k for k, _ in iter_clips(video30, rule, 64, 36, on_skip=lambda k, r: skipped.append((k, r)))]
    # 2.333 s long; clips of 1.5 s (last sample at +1.4 s) start at 0, 0.5 -> fit; 1.0 and later do not
    assert keys == ["clip000@0.000s", "clip001@0.500s"]
    assert [k for k, _ in skipped] == ["clip002@1.000s", "clip003@1.500s", "clip004@2.000s"]
    assert "ends at 2.333s" in skipped[0][1]
    limited = list(iter_clips(video30, ClipRule(stride_s=0.1, frames=3, fps=10, max_clips_per_video=4), 64, 36))
    assert len(limited) == 4


def test_short_video_skipped_or_padded(tmp_path):
    path = counting_video(tmp_path / "short.mp4", 12, 10)  # 1.2 s
    with pytest.raises(VideoError, match="1.200s long"):
        list(iter_clips(path, ClipRule(frames=15, fps=10), 64, 36))
    (_, clip), = list(iter_clips(path, ClipRule(frames=15, fps=10, min_frames=10, max_clips_per_video=1), 64, 36))
    assert indices(clip) == list(range(12)) + [11, 11, 11]  # padded by repeating the last frame


def test_bad_files_raise_video_error(tmp_path, video30):
    empty = tmp_path / "empty.mp4"
    empty.write_bytes(b"")
    text = tmp_path / "text.mp4"
    text.write_text("this is not a video\n" * 50)
    cut = tmp_path / "cut.mp4"
    cut.write_bytes(video30.read_bytes()[:600])
    audio = tmp_path / "audio.wav"
    with wave.open(str(audio), "wb") as w:
        w.setnchannels(1), w.setsampwidth(2), w.setframerate(8000)
        w.writeframes(b"\x00\x01" * 8000)
    tiny = counting_video(tmp_path / "tiny.mp4", 30, 10, size=(32, 32))
    for path, why in [(empty, "readable"), (text, "readable"), (cut, "readable"), (audio, "no video stream"),
                      (tiny, "minimum side"), (tmp_path / "missing.mp4", "no such file")]:
        with pytest.raises(VideoError, match=why):
            list(iter_clips(path, ClipRule(), 256, 144))


def test_fit_frame_centre_crops_to_aspect():
    wide = np.zeros((100, 400, 3), np.uint8)
    wide[:, 111:289] = 255  # the centre 16:9 window of a 100x400 frame is 177.8 px wide
    out = fit_frame(wide, 64, 36)
    assert out.shape == (36, 64, 3) and out[:, 2:-2].min() == 255
    tall = np.zeros((400, 160, 3), np.uint8)
    tall[155:245] = 200  # the centre 90 rows = the 16:9 window of a 160-wide frame
    assert fit_frame(tall, 64, 36)[1:-1].min() == 200
    # a decoded yuv420p frame (cropped in YUV) and its RGB picture (cropped in RGB) agree
    yy, xx = np.mgrid[0:120, 0:160]
    rgb = np.stack([xx, yy * 2, 255 - xx], -1).astype(np.uint8)
    yuv = av.VideoFrame.from_ndarray(rgb, format="rgb24").reformat(format="yuv420p")
    via_yuv, via_rgb = fit_frame(yuv, 64, 36), fit_frame(frame_to_rgb(yuv), 64, 36)
    assert via_yuv.shape == (36, 64, 3) and np.abs(via_yuv.astype(int) - via_rgb).mean() < 2
    via_rgb_frame = fit_frame(yuv.reformat(format="rgb24"), 64, 36)  # a non-yuv420p video frame
    assert np.abs(via_rgb_frame.astype(int) - via_rgb).mean() < 2


def test_truncated_streamable_file_keeps_the_clips_before_the_cut(tmp_path):
    path = counting_video(tmp_path / "c.mkv", 60, 10)  # 6 s; mkv is readable without its end
    data = path.read_bytes()
    cut = tmp_path / "cut.mkv"
    cut.write_bytes(data[: len(data) * 2 // 3])
    rule = ClipRule(stride_s=2.0, frames=10, fps=10, max_clips_per_video=0)
    skipped = []
    clips = list(iter_clips(cut, rule, 64, 36, on_skip=lambda k, r: skipped.append(k)))
    # the cut falls near frame 40: the clips at 0 s and 2 s lie wholly before it and are kept, each
    # with its own frames; the one at 4 s is reported as skipped, if it started before the cut at all
    assert [(k, indices(c)) for k, c in clips] == [("clip000@0.000s", list(range(10))), ("clip001@2.000s", list(range(20, 30)))]
    assert skipped in ([], ["clip002@4.000s"])


# --- mp4 --------------------------------------------------------------------------------------------
def test_write_mp4_round_trip(tmp_path):
    codec = AvcCodec()
    data = codec.encode(builtin_clip())
    expected, _ = codec.decode(data)
    path = tmp_path / "out" / "clip.mp4"
    assert write_mp4(codec.to_stream(data), path, fps=10) == 15
    with av.open(str(path)) as c:
        s = c.streams.video[0]
        assert c.format.name.startswith("mov,mp4") and s.codec_context.name == "h264"
        assert (s.width, s.height, s.average_rate) == (256, 144, 10)
        frames = list(c.decode(s))
        assert [round(f.time, 3) for f in frames] == [round(i / 10, 3) for i in range(15)]
        got = np.stack([frame_to_rgb(f) for f in frames])
    assert np.array_equal(got, expected)  # no re-encoding: the very same pictures
    assert [p.name for p in path.parent.iterdir()] == ["clip.mp4"]  # no temp file left behind
    # a prompt-length stream muxes its frames only; junk is refused and leaves no file
    assert write_mp4(codec.to_stream(codec.prompt_frames(data, 4)), tmp_path / "p.mp4", fps=10) == 4
    assert read_frames(tmp_path / "p.mp4").shape == (4, 144, 256, 3)
    # a generated stream with a damaged tail: the pictures that decode are muxed, and the mp4 plays
    rng = np.random.default_rng(0)
    for cut in (500, len(data) * 2 // 3):
        damaged = data[:cut] + b"\x00\x00\x01" + rng.bytes(300)
        n = write_mp4(codec.to_stream(damaged), tmp_path / "d.mp4", fps=10)
        assert n == codec.decode(damaged)[1].details["decoded_frames"] >= 1
        assert read_frames(tmp_path / "d.mp4").shape == (n, 144, 256, 3)
    with pytest.raises(VideoError, match="not an H.264 stream"):
        write_mp4(b"\x00" * 100, tmp_path / "junk.mp4")
    assert not (tmp_path / "junk.mp4").exists()
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".")] == []


# --- pictures -----------------------------------------------------------------------------------------
def test_contact_sheet_layout():
    frames = np.stack([np.full((10, 20, 3), 20 * i, np.uint8) for i in range(7)])
    sheet = contact_sheet(frames, cols=3, pad=2)
    assert sheet.size == (3 * 20 + 4 * 2, 3 * 10 + 4 * 2)
    a = np.asarray(sheet)
    assert (a[2:12, 2 + 22 : 22 + 22] == 20).all()  # frame 1: row 0, column 1
    assert (a[2 + 24 : 12 + 24, 2:22] == 120).all()  # frame 6: row 2, column 0
    with pytest.raises(ValueError, match="no frames"):
        contact_sheet([])


def test_builtin_clip_is_deterministic_and_moves():
    a, b = builtin_clip(), builtin_clip()
    assert a.shape == (15, 144, 256, 3) and a.dtype == np.uint8 and np.array_equal(a, b)
    diffs = [np.abs(a[i + 1].astype(int) - a[i]).mean() for i in range(14)]
    assert min(diffs) > 1.0  # every frame moves
