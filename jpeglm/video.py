"""Video files <-> clips of frames: the clip rule, mp4 muxing, contact sheets, a built-in clip. No torch.

The clip rule (say it once, here). For a video and a `ClipRule(start_s, stride_s, frames, fps,
max_clips_per_video, min_frames)`:
- Time 0 is the video's first frame. Clip k starts at `t_k = start_s + k * stride_s` and samples the
  video at `t_k + j / fps` for j = 0..frames-1 (frame-rate resampling to `fps`).
- The frame for a sample time t is the one on screen at t: the last frame whose timestamp is <= t
  (frames are repeated when the source is slower than `fps`, skipped when faster). The video ends
  one frame duration after its last frame.
- Each chosen frame is centre-cropped to the target aspect (16:9 for 256x144) on even pixels, then
  resized and converted to RGB by swscale (bilinear, antialiased when shrinking, BITEXACT so every
  CPU gives the same pixels). Pixel aspect ratio and rotation metadata are ignored (the crop is on
  the stored pixels).
- Clips are emitted in order until `max_clips_per_video` are done or the video ends. A clip that runs
  past the end is skipped (the honest default: padding would teach frozen video); with
  `min_frames < frames`, a clip with at least `min_frames` real frames is padded by repeating its
  last frame instead. A video that yields no clip raises `VideoError` with the reason.
- Decoding is sequential from the start (no seeking), so clips are exact and deterministic;
  decoding stops as soon as the last wanted clip is complete.
Clip keys are `clip{k:03d}@{t_k:.3f}s`; data prep joins them to the file's own key.

Also here: `write_mp4` wraps an Annex-B H.264 stream into an .mp4 without re-encoding,
`write_video` encodes frames into a (high-quality) video file for tests and demos,
`contact_sheet` tiles frames into one image, `builtin_clip` is a deterministic demo clip.
"""

from __future__ import annotations

import functools
import io
import math
import os
import tempfile
import threading
from dataclasses import dataclass, field
from fractions import Fraction
from pathlib import Path
from typing import Callable, Iterator

import numpy as np
from PIL import Image

from jpeglm.media import MediaError

DEFAULT_MIN_SIDE = 64  # as for images: upscaling thumbnails teaches blur
DEFAULT_MAX_PIXELS = 36_000_000  # per frame (8K is 33 Mpx); larger is refused before decoding
_EPS = 1e-6  # timestamp slack: float seconds from integer pts can land a hair off


class VideoError(MediaError):
    """A video that cannot give a clip (unreadable, no video stream, too small, too short), with a
    one-line reason that data prep writes into its manifest's `skipped` list."""


@dataclass(frozen=True)
class ClipRule:
    """How clips are cut from a video (see the module docstring for the full rule). `frames` and
    `fps` are the codec's (AvcParams), `min_side` is prep's: `jpeglm prep` fills them in."""

    start_s: float = field(default=0.0, metadata={"help": "start of the first clip, seconds from the first frame",
                                                  "flag": "--clip-start"})
    stride_s: float = field(default=3.0, metadata={
        "help": "seconds between clip starts (3 s: one 1.5 s clip every 3 s, so neighbours are not near-copies)",
        "flag": "--clip-stride"})
    frames: int = field(default=15, metadata={"help": "frames per clip (the codec's)", "cli": False})
    fps: float = field(default=10.0, metadata={"help": "frame rate within a clip (the codec's)", "cli": False})
    max_clips_per_video: int = field(default=8, metadata={
        "help": "at most this many clips per video (0 = no limit), so one long film cannot fill a dataset",
        "flag": "--clips-per-video"})
    min_frames: int | None = field(default=None, metadata={
        "help": "keep a clip that runs past the end if it has at least this many real frames (its last frame is "
                "repeated); default: only complete clips", "flag": "--clip-min-frames"})
    min_side: int = field(default=DEFAULT_MIN_SIDE, metadata={"help": "videos whose shorter side is below this are refused",
                                                              "cli": False})

    def __post_init__(self):
        if self.frames < 1 or self.fps <= 0 or self.stride_s <= 0 or self.start_s < 0:
            raise ValueError("need frames >= 1, fps > 0, stride_s > 0, start_s >= 0")
        if self.max_clips_per_video < 0:
            raise ValueError("max_clips_per_video must be >= 0 (0 = no limit)")
        if self.min_frames is not None and not 1 <= self.min_frames <= self.frames:
            raise ValueError(f"min_frames must be in 1..frames, got {self.min_frames}")

    @property
    def needed_frames(self) -> int:
        return self.frames if self.min_frames is None else self.min_frames

    def clip_start(self, k: int) -> float:
        return self.start_s + k * self.stride_s

    def sample_times(self, k: int) -> list[float]:
        t0 = self.clip_start(k)
        return [t0 + j / self.fps for j in range(self.frames)]

    @staticmethod
    def clip_key(k: int, t0: float) -> str:
        return f"clip{k:03d}@{t0:.3f}s"


def crop_box(w: int, h: int, width: int, height: int) -> tuple[int, int, int, int]:
    """The centre crop (x0, y0, cw, ch) of a w x h frame with the aspect width:height, on even
    pixels (so 4:2:0 chroma planes crop with it): the larger side is cut, the other kept whole."""
    if w * height > h * width:  # too wide: crop the sides
        cw, ch = min(w, 2 * round(h * width / height / 2)), h
    else:  # too tall: crop top and bottom
        cw, ch = w, min(h, 2 * round(w * height / width / 2))
    return 2 * ((w - cw) // 4), 2 * ((h - ch) // 4), cw, ch


def fit_frame(frame, width: int, height: int) -> np.ndarray:
    """One frame (uint8 HxWx3 array, PIL image or decoded `av.VideoFrame`) -> centre crop to
    width:height (`crop_box`), then swscale's bilinear resize (antialiased: its filter widens with
    the scale factor; bit-exact) -> uint8 (height, width, 3) RGB.

    yuv420p video frames are cropped in YUV and converted to RGB at the target size in the same
    swscale call, so a 1080p frame is never converted to RGB at full size."""
    import av

    if isinstance(frame, av.VideoFrame):
        w, h = frame.width, frame.height
        if frame.format.name != "yuv420p" or w % 2 or h % 2:
            return fit_frame(frame_to_rgb(frame), width, height)
        x0, y0, cw, ch = crop_box(w, h, width, height)
        if (cw, ch) != (w, h):
            planes = frame.to_ndarray()  # (h*3/2, w): Y rows, then U, then V (each h/2 x w/2)
            y = planes[:h, :]
            uv = planes[h:].reshape(2, h // 2, w // 2)
            cropped = np.concatenate(
                [
                    y[y0 : y0 + ch, x0 : x0 + cw].reshape(-1),
                    uv[:, y0 // 2 : (y0 + ch) // 2, x0 // 2 : (x0 + cw) // 2].reshape(-1),
                ]
            ).reshape(ch * 3 // 2, cw)
            new = av.VideoFrame.from_ndarray(cropped, format="yuv420p")
            new.colorspace, new.color_range = frame.colorspace, frame.color_range
            frame = new
        return _scale(frame, width, height)
    a = np.asarray(frame.convert("RGB") if isinstance(frame, Image.Image) else frame, np.uint8)
    if a.ndim != 3 or a.shape[2] != 3:
        raise ValueError(f"a frame must be HxWx3, got {a.shape}")
    x0, y0, cw, ch = crop_box(a.shape[1], a.shape[0], width, height)
    a = a[y0 : y0 + ch, x0 : x0 + cw]
    if a.shape[:2] == (height, width):
        return np.ascontiguousarray(a)
    return _scale(av.VideoFrame.from_ndarray(np.ascontiguousarray(a), format="rgb24"), width, height)


def _scale(frame, width: int, height: int) -> np.ndarray:
    return _reformatter("scale").reformat(frame, width, height, "rgb24", interpolation=_sws_flags()).to_ndarray()


@functools.lru_cache(maxsize=1)
def _sws_flags():
    """swscale flags for every RGB <-> YUV conversion here: BITEXACT, because swscale's default SIMD
    paths may round differently per CPU and the YUV samples are what x264 codes into the bytes."""
    from av.video.reformatter import Interpolation

    return Interpolation.BILINEAR | Interpolation.BITEXACT


_local = threading.local()


def _reformatter(direction: str):
    """One swscale context per thread and direction, reused while frame sizes stay the same: `frame.to_ndarray`
    builds a fresh context per frame, which costs more than the conversion itself."""
    found = getattr(_local, direction, None)
    if found is None:
        from av.video.reformatter import VideoReformatter

        found = VideoReformatter()
        setattr(_local, direction, found)
    return found


def frame_to_rgb(frame) -> np.ndarray:
    """A decoded `av.VideoFrame` -> uint8 HxWx3 RGB (swscale, bit-exact; BT.601 for YUV sources)."""
    return _reformatter("to_rgb").reformat(frame, format="rgb24", interpolation=_sws_flags()).to_ndarray()


def rgb_to_yuv_frame(rgb: np.ndarray):
    """uint8 HxWx3 RGB (even sides) -> a yuv420p `av.VideoFrame` (swscale, bit-exact, BT.601
    limited range: what players assume for SD H.264 without colour information)."""
    import av

    frame = av.VideoFrame.from_ndarray(np.ascontiguousarray(rgb, np.uint8), format="rgb24")
    return _reformatter("to_yuv").reformat(frame, format="yuv420p", interpolation=_sws_flags())


def _open(path):
    import av

    if isinstance(path, (str, os.PathLike)) and not os.path.isfile(path):
        raise VideoError(f"{path}: no such file")
    try:
        container = av.open(os.fspath(path) if isinstance(path, (str, os.PathLike)) else path, "r")
    except Exception as e:  # noqa: BLE001 - FFmpeg raises many kinds for junk input
        raise VideoError(f"{path}: not a readable video ({type(e).__name__}: {e})") from None
    if not container.streams.video:
        container.close()
        raise VideoError(f"{path}: no video stream")
    return container


def iter_clips(
    path,
    rule: ClipRule,
    width: int = 256,
    height: int = 144,
    on_skip: Callable[[str, str], None] | None = None,
) -> Iterator[tuple[str, np.ndarray]]:
    """Yield (clip_key, uint8 (frames, height, width, 3)) for the clips `rule` cuts from `path`.

    Raises `VideoError` when the file yields no clip at all (unreadable, no video stream, too small,
    too short, undecodable). Clips skipped after others were yielded (the last one running past the
    end, a decode error part-way) are reported through `on_skip(clip_key, reason)` when given.
    """
    container = _open(path)
    yielded = 0
    try:
        stream = container.streams.video[0]
        w, h = stream.codec_context.width, stream.codec_context.height
        if w and h and (min(w, h) < rule.min_side):
            raise VideoError(f"{path}: {w}x{h} is below the minimum side of {rule.min_side} px")
        if w * h > DEFAULT_MAX_PIXELS:
            raise VideoError(f"{path}: {w}x{h} frames exceed {DEFAULT_MAX_PIXELS} pixels")
        stream.thread_count = 1  # one worker = one core; data prep parallelises across files
        rate = stream.average_rate or stream.guessed_rate or Fraction(25)
        default_dur = 1.0 / float(rate)
        state = {"why": "no clip"}  # _clips writes the concrete reason there on its way out
        for key, clip in _clips(container, stream, rule, width, height, default_dur, on_skip, state):
            yielded += 1
            yield key, clip
    finally:
        container.close()
    if not yielded:
        raise VideoError(f"{path}: {state['why']}")


def _clips(container, stream, rule, width, height, default_dur, on_skip, state):
    """The clip rule over a decoded frame sequence (streaming; memory = the clips in progress)."""
    import av

    limit = rule.max_clips_per_video or math.inf
    active: list[list] = []  # [k, times, collected frames]
    next_k = 0
    first_t = None
    prev = None  # (time, av frame, cached fitted array or None)
    n_frames = 0
    last_t = 0.0

    def fitted(entry):
        if entry[2] is None:
            entry[2] = fit_frame(entry[1], width, height)
        return entry[2]

    def assign(entry, until):
        """Give frame `entry` to every sample time in [entry time, until) of the active clips."""
        for clip in active:
            k, times, got = clip
            while len(got) < len(times) and times[len(got)] < until - _EPS and times[len(got)] >= entry[0] - _EPS:
                got.append(fitted(entry))

    def activate(upto):
        nonlocal next_k
        while next_k < limit and rule.clip_start(next_k) < upto - _EPS:
            active.append([next_k, rule.sample_times(next_k), []])
            next_k += 1

    error = None
    try:
        for frame in container.decode(stream):
            t = frame.time
            if t is None:
                t = n_frames * default_dur
            if first_t is None:
                first_t = t
            t -= first_t
            n_frames += 1
            if prev is not None and t <= prev[0] + _EPS:
                continue  # duplicate or backwards timestamp: keep the frame already on screen
            if prev is not None:
                activate(t)
                assign(prev, t)
                for clip in [c for c in active if len(c[2]) == rule.frames]:
                    active.remove(clip)
                    yield rule.clip_key(clip[0], rule.clip_start(clip[0])), np.stack(clip[2])
                if next_k >= limit and not active:
                    return
            prev = [t, frame, None]
            last_t = t
    except av.FFmpegError as e:
        error = f"decode error after {n_frames} frames ({type(e).__name__}: {e})"
    if prev is None:
        state["why"] = error or "no frame decoded"
        return
    dur = prev[1].duration * float(prev[1].time_base) if prev[1].duration and prev[1].time_base else default_dur
    end = last_t + dur
    if error is None:
        activate(end)
        assign(prev, end)
    for clip in active:
        k, times, got = clip
        key = rule.clip_key(k, rule.clip_start(k))
        if len(got) >= rule.needed_frames and error is None:
            yield key, np.stack(got + [got[-1]] * (rule.frames - len(got)))
            continue
        reason = error or f"video ends at {end:.3f}s: clip has {len(got)} of {rule.frames} frames"
        if on_skip is not None:
            on_skip(key, reason)
    need = (rule.needed_frames - 1) / rule.fps
    state["why"] = error or (
        f"video is {end:.3f}s long; a clip from {rule.start_s:g}s needs {need + 1 / rule.fps:.3f}s "
        f"({rule.needed_frames} frames at {rule.fps:g} fps)"
    )


# --- writing --------------------------------------------------------------------------------
def _atomic_target(path) -> tuple[str, Path]:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp" + path.suffix, dir=path.parent)
    os.close(fd)
    return tmp, path


def write_mp4(annexb: bytes, path, fps: float = 10) -> int:
    """Wrap a complete Annex-B H.264 stream (SPS/PPS included, e.g. `AvcCodec.to_stream(...)`) into
    an .mp4 without re-encoding; timestamps frame i at i/fps. Returns the number of frames muxed.

    Generated streams can hold damaged pictures: each packet is test-decoded first and only those
    that give a picture are muxed (a concealed picture counts), so players see no broken samples.
    Written atomically. Raises `VideoError` when the stream holds no muxable picture."""
    from jpeglm.config import atomic_write_bytes

    data, n = mp4_bytes(annexb, fps)
    atomic_write_bytes(path, data)
    return n


def mp4_bytes(annexb: bytes, fps: float = 10) -> tuple[bytes, int]:
    """`write_mp4` in memory: (the .mp4 file's bytes, the number of frames muxed)."""
    import av

    buf = io.BytesIO()
    rate = Fraction(fps).limit_denominator(1001)
    n = 0
    try:
        inp = av.open(io.BytesIO(bytes(annexb)), "r", format="h264")
    except Exception as e:  # noqa: BLE001
        raise VideoError(f"not an H.264 stream: {type(e).__name__}: {e}") from None
    try:
        if not inp.streams.video:
            raise VideoError("not an H.264 stream: no video found")
        src = inp.streams.video[0]
        check = av.CodecContext.create("h264", "r")
        check.thread_count = 1
        with av.open(buf, "w", format="mp4") as out:
            dst = out.add_stream_from_template(src)
            dst.time_base = 1 / rate
            try:
                for pkt in inp.demux(src):
                    if pkt.size == 0:
                        continue
                    try:
                        if not check.decode(pkt):
                            continue  # no picture in it (junk units)
                    except av.FFmpegError:
                        continue  # the decoder rejects it: a player would too
                    pkt.pts = pkt.dts = n
                    pkt.duration = 1
                    pkt.time_base = 1 / rate
                    pkt.stream = dst
                    out.mux(pkt)
                    n += 1
            except av.FFmpegError:
                pass  # keep what was muxed: a damaged tail of generated bytes
            if n == 0:
                raise VideoError("no picture could be muxed from the H.264 stream")
    finally:
        inp.close()
    return buf.getvalue(), n


def write_video(frames: np.ndarray, path, fps: float = 10, crf: int = 12) -> None:
    """Encode uint8 TxHxWx3 frames into a video file (container from the suffix; H.264 high
    quality, yuv420p). For tests and demos that need a real video file; not the canonical codec."""
    import av

    frames = np.asarray(frames, np.uint8)
    t, h, w = frames.shape[:3]
    if h % 2 or w % 2:
        raise ValueError(f"4:2:0 needs even sides, got {w}x{h}")
    tmp, path = _atomic_target(path)
    try:
        with av.open(tmp, "w", format=None if path.suffix else "mp4") as out:
            s = out.add_stream("libx264", rate=Fraction(fps).limit_denominator(1001))
            s.width, s.height, s.pix_fmt = w, h, "yuv420p"
            s.codec_context.thread_count = 1
            s.codec_context.options = {"crf": str(crf), "preset": "veryfast", "x264-params": "threads=1"}
            for i in range(t):
                vf = rgb_to_yuv_frame(frames[i])
                vf.pts = i
                for p in s.encode(vf):
                    out.mux(p)
            for p in s.encode(None):
                out.mux(p)
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def read_frames(path) -> np.ndarray:
    """Every frame of a video file as uint8 TxHxWx3 (for checks and small files only)."""
    container = _open(path)
    try:
        return np.stack([frame_to_rgb(f) for f in container.decode(video=0)])
    finally:
        container.close()


# --- pictures of videos ---------------------------------------------------------------------
def contact_sheet(frames, cols: int = 5, pad: int = 2, background=(255, 255, 255)) -> Image.Image:
    """Tile uint8 TxHxWx3 frames (or a list of them) row by row, `cols` per row, `pad` px apart."""
    frames = [np.asarray(f, np.uint8) for f in frames]
    if not frames:
        raise ValueError("no frames to tile")
    h, w = frames[0].shape[:2]
    cols = max(1, min(int(cols), len(frames)))
    rows = math.ceil(len(frames) / cols)
    sheet = Image.new("RGB", (cols * w + (cols + 1) * pad, rows * h + (rows + 1) * pad), background)
    for i, f in enumerate(frames):
        r, c = divmod(i, cols)
        sheet.paste(Image.fromarray(f[:, :, :3]).resize((w, h)), (pad + c * (w + pad), pad + r * (h + pad)))
    return sheet


def builtin_clip(frames: int = 15, width: int = 256, height: int = 144) -> np.ndarray:
    """A deterministic demo clip, uint8 (frames, height, width, 3): a virtual camera move (pan right
    and slow zoom in) over scikit-image's bundled `chelsea.png` (a photo of a cat, 451x300, shipped
    inside the scikit-image wheel, so it needs no network). Sub-pixel crop boxes keep motion smooth."""
    import skimage.data

    src = Image.open(Path(skimage.data.__file__).parent / "chelsea.png").convert("RGB")
    sw, sh = src.size
    out = []
    for i in range(frames):
        a = i / max(frames - 1, 1)
        cw = sw * (0.85 - 0.25 * a)  # zoom in from 85% to 60% of the width
        ch = cw * height / width
        x0 = (sw - cw) * (0.15 + 0.6 * a)  # pan left to right
        y0 = (sh - ch) * 0.4
        out.append(np.asarray(src.resize((width, height), Image.BILINEAR, box=(x0, y0, x0 + cw, y0 + ch))))
    return np.stack(out)
