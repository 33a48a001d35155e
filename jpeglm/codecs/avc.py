"""Canonical H.264 (AVC-LM): a video clip <-> the bytes of a raw Annex-B stream. No torch.

Every encoder setting that changes the bytes is fixed in `AvcParams` (a frozen dataclass saved
with every dataset and checkpoint), so the same clip gives the same bytes on every machine that
runs the same PyAV wheel (PyAV bundles its own libx264; its build is `AvcCodec.encoder_version()`).

The modelled byte stream (what `encode` returns and the LM learns) is the x264 output with
- the parameter sets (SPS, PPS) left out: they depend only on `AvcParams`, never on the clip, so
  they are handled like the JPEG tables: derived in memory by encoding a blank clip with the same
  settings, checked to be identical for every clip, and spliced back in front by `to_stream`;
- x264's SEI user-data NAL removed: it holds the encoder's version and option string, which
  varies across x264 builds and carries nothing a decoder needs;
- everything else kept as written: one Annex-B start code + one slice NAL per frame (one IDR frame
  then P frames; `slices=1`), so the stream's frame boundaries are its start codes.

Colour: RGB <-> yuv420p (BT.601, limited range) by swscale with its BITEXACT flag, so the YUV
samples x264 codes are the same on every CPU (`jpeglm.video.rgb_to_yuv_frame` / `frame_to_rgb`).

Clips: `encode` takes a uint8 TxHxWx3 array or a path. Arrays of another size are centre-cropped
to 16:9 and resized (`jpeglm.video.fit_frame`); a path goes through the clip rule of
`jpeglm.video` (first `frames` frames from t=0, resampled to `fps`). Clips with fewer than
`frames` frames are refused (`VideoError`): padding would teach the model frozen video.

`decode` never raises: it decodes whatever frames decode (counted in the report's details),
pads missing frames by repeating the last decoded one (status repaired) or with gray when none
decoded (status failed). `prompt` cuts at NAL-unit boundaries after the first frames.
"""

from __future__ import annotations

import functools
import math
from dataclasses import dataclass, field
from fractions import Fraction
from typing import ClassVar

import numpy as np

from jpeglm.codecs.base import Codec, DecodeReport

# NAL unit types (H.264 Table 7-1) that matter here.
NAL_SLICE = 1  # non-IDR coded slice (our P frames)
NAL_IDR = 5  # IDR coded slice (our first frame)
NAL_SEI = 6
NAL_SPS = 7
NAL_PPS = 8
VCL_TYPES = frozenset(range(1, 6))  # coded slice NALs: the ones that carry picture data
PROFILES = ("baseline", "main", "high")
GRAY = 128  # fill value of frames that could not be decoded at all


def _p(default, text: str, **meta):
    return field(default=default, metadata={"help": text, **meta})


@dataclass(frozen=True)
class AvcParams:
    """Canonical H.264 settings. Every field changes the bytes; none may depend on the machine."""

    width: int = _p(256, "frame width in pixels (the paper's 256x144, 16:9; both sides multiples of 16 = whole MBs)")
    height: int = _p(144, "frame height in pixels")
    frames: int = _p(15, "frames per clip (1.5 s at 10 fps); shorter clips are refused, longer ones cut")
    fps: int = _p(10, "frame rate clips are resampled to: 10 fps keeps 1.5 s of motion in 15 frames (the SPS's VUI "
                      "timing is derived from it)")
    profile: str = _p("baseline", "H.264 profile; baseline = CAVLC entropy coding (variable-length codes the LM can learn, "
                                  "no arithmetic-coder state), no B-frames, no 8x8 transform: the simplest stream",
                      choices=list(PROFILES))
    preset: str = _p("medium", "x264 preset (motion search and mode decision effort); fixed because it changes the bytes")
    qp: int = _p(30, "constant quantiser (x264 --qp; I frames get x264's fixed ipratio offset): no rate control loop, "
                     "no lookahead, so the bytes depend on the clip alone; 30 keeps most clips under 12288 bytes")
    gop: int = _p(15, "keyframe interval (keyint = min-keyint); with gop >= frames every clip is one IDR frame then P "
                      "frames only (scenecut detection is off, so content cannot insert extra I frames)")
    bframes: int = _p(0, "B-frames: none, so decode order = display order and a prefix of the stream is a prefix of "
                         "the clip (what `prompt` relies on)")
    ref: int = _p(1, "reference frames for P frames (1: each P frame predicts from the previous frame only)")
    slices: int = _p(1, "slices per frame (1: each frame is exactly one NAL unit)")
    thread_count: int = _p(1, "encoder threads: 1, since x264's frame threading changes the bytes with the thread "
                              "count (and its default follows the machine's core count)", cli=False)

    def __post_init__(self):
        if self.width <= 0 or self.height <= 0 or self.width % 2 or self.height % 2:
            raise ValueError(f"width/height must be positive and even (4:2:0), got {self.width}x{self.height}")
        if self.frames < 1:
            raise ValueError(f"frames must be >= 1, got {self.frames}")
        if self.fps < 1:
            raise ValueError(f"fps must be a positive integer, got {self.fps}")
        if self.profile not in PROFILES:
            raise ValueError(f"profile must be one of {PROFILES}, got {self.profile!r}")
        if not 0 <= self.qp <= 51:
            raise ValueError(f"qp must be in 0..51, got {self.qp}")
        if self.gop < 1 or self.ref < 1 or self.slices < 1:
            raise ValueError("gop, ref and slices must be >= 1")
        if self.bframes < 0 or (self.profile == "baseline" and self.bframes):
            raise ValueError("bframes must be >= 0, and 0 with the baseline profile")
        if self.thread_count != 1:
            raise ValueError("thread_count must be 1: x264's output changes with its thread count")

    def x264_params(self) -> str:
        """The x264-params string: every option the preset or the machine could otherwise vary."""
        return ":".join(
            [
                f"keyint={self.gop}",
                f"min-keyint={self.gop}",
                "scenecut=0",  # content must not decide where I frames go
                f"bframes={self.bframes}",
                f"ref={self.ref}",
                f"slices={self.slices}",
                f"threads={self.thread_count}",
                "lookahead-threads=1",
                "sliced-threads=0",
                "deterministic=1",
                "aud=0",  # no access-unit delimiters: start codes already mark frames
            ]
        )


# --- Annex-B parsing -----------------------------------------------------------------------------
def split_nals(data: bytes) -> list[tuple[int, int, int | None]]:
    """Annex-B bytes -> [(start, end, nal_type)], `start` at the start code (a 4-byte code's
    leading zero included), `end` = next unit's start. Bytes before the first start code form
    one unit of type None; a start code with no header byte after it also has type None."""
    units: list[tuple[int, int, int | None]] = []
    starts: list[int] = []
    i = data.find(b"\x00\x00\x01")
    while i != -1:
        starts.append(i - 1 if i > 0 and data[i - 1] == 0 else i)
        i = data.find(b"\x00\x00\x01", i + 3)
    if not starts:
        return [(0, len(data), None)] if data else []
    if starts[0] > 0:
        units.append((0, starts[0], None))
    for k, s in enumerate(starts):
        e = starts[k + 1] if k + 1 < len(starts) else len(data)
        h = data.find(b"\x00\x00\x01", s) + 3
        units.append((s, e, data[h] & 0x1F if h < e else None))
    return units


def _is_frame_start(data: bytes, unit: tuple[int, int, int | None]) -> bool:
    """A coded slice whose first_mb_in_slice is 0 starts a new picture. first_mb_in_slice is the
    first ue(v) after the 1-byte NAL header; ue(v) == 0 is the single bit '1'."""
    s, e, t = unit
    if t not in VCL_TYPES:
        return False
    h = data.find(b"\x00\x00\x01", s) + 3
    return h + 1 < e and bool(data[h + 1] & 0x80)


def frame_spans(data: bytes) -> list[tuple[int, int]]:
    """Byte spans of the coded pictures in an Annex-B stream: each from its first slice NAL to
    the end of its last slice NAL (non-picture units in between belong to no span)."""
    units = split_nals(data)
    spans: list[list[int]] = []
    for u in units:
        if u[2] in VCL_TYPES:
            if _is_frame_start(data, u) or not spans:
                spans.append([u[0], u[1]])
            else:
                spans[-1][1] = u[1]
    return [(s, e) for s, e in spans]


# --- encoding -------------------------------------------------------------------------------------
def _x264_encode(params: AvcParams, frames: np.ndarray) -> bytes:
    import av

    from jpeglm.video import rgb_to_yuv_frame

    ctx = av.CodecContext.create("libx264", "w")
    ctx.width, ctx.height, ctx.pix_fmt = params.width, params.height, "yuv420p"
    ctx.time_base = Fraction(1, params.fps)
    ctx.framerate = Fraction(params.fps)
    ctx.thread_count = params.thread_count  # FFmpeg's default (0 = auto) would follow the core count
    ctx.options = {
        "profile": params.profile,
        "preset": params.preset,
        "qp": str(params.qp),
        "x264-params": params.x264_params(),
    }
    out = []
    for i, f in enumerate(frames):
        # RGB -> yuv420p by swscale with BITEXACT: the YUV samples are what x264 codes, so they
        # must not depend on which SIMD path the CPU takes.
        vf = rgb_to_yuv_frame(f)
        vf.pts = i
        out.extend(bytes(p) for p in ctx.encode(vf))
    out.extend(bytes(p) for p in ctx.encode(None))
    return b"".join(out)


def _split_headers(params: AvcParams, raw: bytes) -> tuple[bytes, bytes, bytes]:
    """x264 output -> (SPS+PPS bytes, SEI bytes, the modelled bytes: everything else in order)."""
    header, sei, body = [], [], []
    for s, e, t in split_nals(raw):
        (header if t in (NAL_SPS, NAL_PPS) else sei if t == NAL_SEI else body).append(raw[s:e])
    return b"".join(header), b"".join(sei), b"".join(body)


@functools.lru_cache(maxsize=8)
def _canonical_headers(params: AvcParams) -> tuple[bytes, bytes]:
    """(SPS+PPS, SEI) of these settings, from encoding a blank clip in memory (never a file)."""
    blank = np.full((params.frames, params.height, params.width, 3), GRAY, np.uint8)
    header, sei, _ = _split_headers(params, _x264_encode(params, blank))
    if not header:
        raise RuntimeError("libx264 wrote no SPS/PPS; cannot build the canonical parameter sets")
    return header, sei


class AvcCodec(Codec):
    """Canonical H.264 clips as raw Annex-B bytes, parameter sets left out (see module doc)."""

    name: ClassVar[str] = "avc"
    params_class: ClassVar[type] = AvcParams
    symbol_kind: ClassVar[str] = "bytes"
    media_kind: ClassVar[str] = "video"
    prompt_rules: ClassVar[tuple[str, ...]] = ("frames",)
    file_suffix: ClassVar[str] = ".mp4"
    description: ClassVar[str] = "canonical H.264 bytes (AVC-LM)"

    # --- the stream's fixed parts ---------------------------------------------------------
    @property
    def headers(self) -> bytes:
        """The canonical SPS+PPS (Annex-B) that `to_stream` puts in front of the modelled bytes."""
        return _canonical_headers(self.params)[0]

    def versions(self) -> dict:
        import av

        return {"av": av.__version__, "x264": self.encoder_version()}

    def to_file(self, data: bytes, media=None) -> bytes:
        """An .mp4 of the stream (parameter sets spliced back, no re-encoding; pictures the decoder
        rejects are left out). Raises VideoError when not one picture can be muxed."""
        from jpeglm.video import mp4_bytes

        return mp4_bytes(self.to_stream(data), self.params.fps)[0]

    def pixels_per_item(self) -> int:
        p = self.params
        return p.frames * p.height * p.width

    def grammar(self):
        """The NAL-unit grammar (jpeglm/codecs/avc_grammar.py; one per settings)."""
        from jpeglm.codecs.avc_grammar import grammar_for

        return grammar_for(self.params)

    def prompt_steps(self, rule: str | None = None) -> int:
        """Prompts keep whole frames."""
        return self.params.frames

    def prompt_region(self, ratio: float, rule: str | None = None) -> dict:
        """The frames a prompt cut at `ratio` keeps (half rounds up, at least 1; see `prompt`)."""
        n = self.params.frames
        shown = min(n, max(1, math.floor(ratio * n + 0.5)))
        return {"rule": self.prompt_rule(rule), "ratio": ratio, "steps": shown, "of_steps": n, "fraction": shown / n}

    def encoder_version(self) -> str:
        """x264's self-description (core number and options) from its SEI, for manifests: the
        bytes are reproducible on machines with the same x264 build."""
        sei = _canonical_headers(self.params)[1]
        i = sei.find(b"x264 - core")
        return sei[i : sei.find(b" - ", i + 11)].decode("ascii", "replace") if i >= 0 else "unknown"

    # --- encode -------------------------------------------------------------------------------
    def prepare(self, video) -> np.ndarray:
        """A path or a uint8 TxHxWx3 array -> the canonical uint8 (frames, height, width, 3) clip."""
        from jpeglm.video import ClipRule, VideoError, fit_frame, iter_clips

        p = self.params
        if isinstance(video, np.ndarray):
            if video.dtype != np.uint8 or video.ndim != 4 or video.shape[-1] != 3:
                raise VideoError(f"a video array must be uint8 TxHxWx3, got {video.dtype} {video.shape}")
            if video.shape[0] < p.frames:
                raise VideoError(f"clip has {video.shape[0]} frames, the codec needs {p.frames}")
            clip = video[: p.frames]
            if clip.shape[1:3] != (p.height, p.width):
                clip = np.stack([fit_frame(f, p.width, p.height) for f in clip])
            return np.ascontiguousarray(clip)
        rule = ClipRule(start_s=0.0, frames=p.frames, fps=p.fps, max_clips_per_video=1)
        for _key, clip in iter_clips(video, rule, p.width, p.height):
            return clip
        raise VideoError(f"{video}: no complete clip of {p.frames} frames at {p.fps} fps")  # pragma: no cover

    def clip_rule(self, **fields):
        """A jpeglm.video.ClipRule at this codec's frame count and rate (`fields`: the rest)."""
        from jpeglm.video import ClipRule

        return ClipRule(frames=self.params.frames, fps=float(self.params.fps), **fields)

    def clips(self, video, rule, on_skip=None):
        """Yield (clip key, canonical clip) for every clip `rule` (jpeglm.video.ClipRule) cuts from
        the video file `video`, at this codec's frame size (what data prep encodes)."""
        from jpeglm.video import iter_clips

        yield from iter_clips(video, rule, self.params.width, self.params.height, on_skip=on_skip)

    def encode(self, video) -> bytes:
        """A clip (path or uint8 TxHxWx3) -> the modelled bytes: slice NALs only (see module doc)."""
        clip = self.prepare(video)
        header, _sei, body = _split_headers(self.params, _x264_encode(self.params, clip))
        if header != self.headers:
            # Would mean the parameter sets depend on content: the stream could not be rebuilt.
            raise RuntimeError("libx264 wrote parameter sets that differ from the canonical ones")
        return body

    def to_stream(self, data: bytes) -> bytes:
        """Modelled bytes -> a complete Annex-B stream (canonical SPS/PPS spliced in front). A
        stream that already starts with its own SPS is returned unchanged."""
        data = bytes(data)
        units = split_nals(data)
        if units and units[0][2] == NAL_SPS:
            return data
        return self.headers + data

    # --- decode -------------------------------------------------------------------------------
    def decode(self, data) -> tuple[np.ndarray, DecodeReport]:
        """Bytes -> (uint8 (frames, height, width, 3), report). Never raises."""
        p = self.params
        shape = (p.frames, p.height, p.width, 3)
        try:
            frames, notes, corrupt = self._decode_frames(bytes(data))
        except Exception as e:  # noqa: BLE001 - model output can break a decoder in any way
            frames, notes, corrupt = [], [f"decoder error: {type(e).__name__}: {e}"], 0
        n = len(frames)
        details = {"decoded_frames": n, "corrupt_frames": corrupt, "expected_frames": p.frames}
        if n == 0:
            reason = "; ".join(["no frame decoded"] + notes)
            return np.full(shape, GRAY, np.uint8), DecodeReport("failed", reason, details)
        reasons = list(notes)
        if n > p.frames:
            reasons.append(f"{n - p.frames} extra frames dropped")
            frames = frames[: p.frames]
        if n < p.frames:
            reasons.append(f"{p.frames - n} missing frames filled with the last decoded frame")
            frames = frames + [frames[-1]] * (p.frames - n)
        if corrupt:
            reasons.append(f"{corrupt} frames had decode errors (concealed)")
        video = np.stack(frames)
        return video, DecodeReport("repaired" if reasons else "ok", "; ".join(reasons), details)

    def _decode_frames(self, data: bytes) -> tuple[list[np.ndarray], list[str], int]:
        """Feed one packet per coded picture to FFmpeg's H.264 decoder; keep every frame it gives."""
        import av

        from jpeglm.video import frame_to_rgb

        p = self.params
        stream = self.to_stream(data)
        spans = frame_spans(stream)
        notes: list[str] = []
        if not spans:
            return [], ["no coded picture (slice NAL unit) in the stream"], 0
        # Packet k = everything from the end of picture k-1 to the end of picture k, so parameter
        # sets and other units before a picture travel with it; trailing units are dropped.
        packets, prev = [], 0
        for _s, e in spans:
            packets.append(stream[prev:e])
            prev = e
        ctx = av.CodecContext.create("h264", "r")
        ctx.thread_count = 1  # frame threading would delay output; one clip is tiny anyway
        out: list[np.ndarray] = []
        corrupt = errors = 0

        def take(frames):
            nonlocal corrupt
            for f in frames:
                if f.width != p.width or f.height != p.height:
                    notes.append(f"frame of {f.width}x{f.height} resized")
                    f = f.reformat(p.width, p.height)
                corrupt += bool(f.is_corrupt)
                out.append(frame_to_rgb(f))

        for pk in packets:
            if len(out) > 4 * p.frames:  # model output with many tiny pictures: enough is enough
                notes.append("stream holds far more pictures than a clip; rest ignored")
                break
            try:
                take(ctx.decode(av.Packet(pk)))
            except av.FFmpegError:
                errors += 1
        try:
            take(ctx.decode(None))
        except av.FFmpegError:
            errors += 1
        if errors:
            notes.append(f"{errors} packets rejected by the decoder")
        return out, notes, corrupt

    # --- prompts --------------------------------------------------------------------------------
    def prompt_frames(self, data: bytes, n: int) -> bytes:
        """The prefix of the modelled bytes holding the first `n` coded pictures (at least 1), cut at
        the NAL-unit boundary right after the n-th picture's last slice."""
        data = bytes(data)
        spans = frame_spans(data)
        n = max(1, int(n))
        if n >= len(spans):
            return data
        return data[: spans[n - 1][1]]

    def prompt(self, data: bytes, ratio: float, rule: str | None = None) -> bytes:
        """The first round(ratio * frames) pictures (half rounds up; at least 1)."""
        if not 0.0 <= ratio <= 1.0:
            raise ValueError(f"ratio must be in [0, 1], got {ratio}")
        self.prompt_rule(rule)  # one rule; an unknown name is a ValueError
        return self.prompt_frames(data, max(1, math.floor(ratio * self.params.frames + 0.5)))
