"""The canonical JPEG codec of JPEG-LM: images <-> the bytes of a baseline JPEG file. No torch.

The modelled bytes are exactly what Pillow writes for
`im.save(f, "JPEG", quality=25, subsampling="4:2:0", streamtype=2, restart_marker_blocks=1)` on the
256x256 RGB image: SOI, APP0 (JFIF), SOF0, DRI, SOS, the entropy-coded scan with a restart marker
after every MCU but the last, EOI. The tables (DQT/DHT) are left out (`streamtype=2`); they depend
only on quality and subsampling, so `to_file` splices the ones from an in-memory `streamtype=1`
save back in after SOI.

Layout at the defaults: 256x256 with 4:2:0 gives 16x16 MCUs of 16x16 pixels (4 Y + Cb + Cr blocks),
256 MCUs and 255 restart markers RST0..RST7 cycling, one MCU row = 16 MCUs. `prompt` cuts after a
restart marker: by default after int(2 * R * ratio) half MCU rows, which at 256x256 is the
release's cut (after the int(32 * ratio)-th `FF D7`, one every 8 MCUs); `rule="rows"` keeps
round(R * ratio) whole rows, the area the VQ and pixel codecs' prompts show.
"""

from __future__ import annotations

import functools
import io
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from PIL import Image

from jpeglm.codecs.base import Codec, DecodeReport
from jpeglm.media import DEFAULT_MIN_SIDE, MediaError, open_image, prepare_image

SOI, EOI, SOS, SOF0, DRI = b"\xff\xd8", b"\xff\xd9", 0xDA, 0xC0, 0xDD
RST0 = 0xD0
SUBSAMPLINGS = {"4:4:4": (1, 1), "4:2:2": (2, 1), "4:2:0": (2, 2)}  # luma sampling factors (h, v)


@dataclass(frozen=True)
class JpegParams:
    """The canonical JPEG settings. Saved with every dataset and checkpoint."""

    size: int = field(default=256, metadata={"help": "side of the square image in pixels (a multiple of 16)"})
    quality: int = field(default=25, metadata={"help": "Pillow JPEG quality 1..100 (JPEG-LM: 25)"})
    subsampling: str = field(default="4:2:0", metadata={"help": "chroma subsampling", "choices": list(SUBSAMPLINGS)})
    restart_marker_blocks: int = field(
        default=1, metadata={"help": "MCUs per restart interval; must divide the MCUs of one row (JPEG-LM: 1)"}
    )
    min_side: int = field(
        default=DEFAULT_MIN_SIDE, metadata={"help": "inputs whose shorter side is below this are rejected"}
    )

    def __post_init__(self):
        if not isinstance(self.size, int) or self.size <= 0 or self.size % 16:
            raise ValueError(f"size must be a positive multiple of 16 (whole MCUs), got {self.size!r}")
        if not isinstance(self.quality, int) or not 1 <= self.quality <= 100:
            raise ValueError(f"quality must be an int in 1..100, got {self.quality!r}")
        if self.subsampling not in SUBSAMPLINGS:
            raise ValueError(f"subsampling must be one of {', '.join(SUBSAMPLINGS)}, got {self.subsampling!r}")
        mcus_x = self.size // (8 * SUBSAMPLINGS[self.subsampling][0])
        rmb = self.restart_marker_blocks
        if not isinstance(rmb, int) or rmb < 1 or mcus_x % rmb:
            raise ValueError(f"restart_marker_blocks must be >= 1 and divide the {mcus_x} MCUs of a row, got {rmb!r}")
        if not isinstance(self.min_side, int) or self.min_side < 1:
            raise ValueError(f"min_side must be a positive int, got {self.min_side!r}")


def _save_kwargs(p: JpegParams) -> dict:
    return dict(quality=p.quality, subsampling=p.subsampling, restart_marker_blocks=p.restart_marker_blocks)


def iter_segments(data: bytes):
    """Yield (marker, start, end) for the marker segments from SOI up to and including SOS, where
    data[start:end] is the whole segment (marker + length + payload). Raises ValueError when the
    header is malformed."""
    if data[:2] != SOI:
        raise ValueError("does not start with SOI (FF D8)")
    yield 0xD8, 0, 2
    i = 2
    while True:
        if i + 4 > len(data) or data[i] != 0xFF:
            raise ValueError(f"bad or cut marker segment at byte {i}")
        marker = data[i + 1]
        if marker in (0xD9,) or RST0 <= marker <= 0xD7:
            raise ValueError(f"unexpected marker FF {marker:02X} in the header at byte {i}")
        length = int.from_bytes(data[i + 2 : i + 4], "big")
        end = i + 2 + length
        if length < 2 or end > len(data):
            raise ValueError(f"segment FF {marker:02X} at byte {i} has a bad length {length}")
        yield marker, i, end
        if marker == SOS:
            return
        i = end


def header_length(data: bytes) -> int:
    """Number of bytes before the entropy-coded data (SOI .. end of the SOS header).
    Raises ValueError for a malformed header."""
    end = -1
    for marker, _, end in iter_segments(data):
        pass
    if marker != SOS:  # pragma: no cover - iter_segments only returns after SOS
        raise ValueError("no SOS segment")
    return end


class JpegCodec(Codec):
    """Canonical baseline JPEG (see module docstring). Symbols are the file bytes without tables."""

    name = "jpeg"
    params_class = JpegParams
    symbol_kind = "bytes"
    media_kind = "image"
    file_suffix = ".jpg"
    stream_end = EOI
    prompt_rules = ("half_rows", "rows")  # half_rows: the release's cut (see `prompt`)
    description = "canonical JPEG bytes (JPEG-LM)"

    # --- layout ----------------------------------------------------------------------------
    def mcu_layout(self) -> tuple[int, int, dict[str, tuple[int, int]]]:
        """(mcus_x, mcus_y, blocks) where blocks maps component name -> (h, v) blocks per MCU,
        e.g. (16, 16, {"Y": (2, 2), "Cb": (1, 1), "Cr": (1, 1)}) at the defaults."""
        h, v = SUBSAMPLINGS[self.params.subsampling]
        s = self.params.size
        return s // (8 * h), s // (8 * v), {"Y": (h, v), "Cb": (1, 1), "Cr": (1, 1)}

    @property
    def num_mcus(self) -> int:
        mx, my, _ = self.mcu_layout()
        return mx * my

    @property
    def num_restart_markers(self) -> int:
        """Restart markers in a complete scan: one after every restart interval but the last."""
        return self.num_mcus // self.params.restart_marker_blocks - 1

    # --- tables and header (derived in memory, cached per parameter set) -----------------------
    def tables(self) -> bytes:
        """The DQT + DHT segments (no SOI/EOI) Pillow writes for these settings (`streamtype=1`)."""
        return _tables(self.params)

    def header(self) -> bytes:
        """The modelled header (SOI .. SOS) every canonical stream starts with."""
        return _header(self.params)

    # --- the contract ----------------------------------------------------------------------
    def prepare(self, media) -> Image.Image:
        """Any image source (path, bytes, PIL image, uint8 HxWx3 / HxW array) -> canonical RGB square."""
        if isinstance(media, np.ndarray):
            bad_shape = media.ndim not in (2, 3) or (media.ndim == 3 and media.shape[2] not in (3, 4))
            if media.dtype != np.uint8 or bad_shape:
                raise MediaError(f"expected a uint8 HxW, HxWx3 or HxWx4 array, got {media.dtype} {media.shape}")
            media = Image.fromarray(media)
        im = open_image(media, min_side=self.params.min_side) if not _is_canonical(media, self.params.size) else media
        return prepare_image(im, self.params.size)

    def encode(self, media) -> bytes:
        """The modelled bytes (tables left out) of the canonical JPEG of `media`."""
        # An image already canonical (RGB, size x size: what data prep hands over) is saved as it
        # is, without prepare()'s defensive copy (~10% of the per-image cost). Pillow's JPEG writer
        # reads only `comment` from im.info (EXIF/ICC/XMP come from save() arguments), so an
        # explicit empty comment keeps the picture's metadata out of the bytes either way.
        im = media if _is_canonical(media, self.params.size) else self.prepare(media)
        f = io.BytesIO()
        im.save(f, "JPEG", streamtype=2, comment=b"", **_save_kwargs(self.params))
        return f.getvalue()

    def canonicalize(self, src) -> bytes:
        """encode(prepare_image(open_image(src))): the convenience data prep uses."""
        return self.encode(src)

    def to_file(self, data: bytes, media=None) -> bytes:
        """The .jpg a user opens, as run.py writes it: `repair` (cut after the first EOI, EOI
        appended when missing, SOI in front when missing), then the tables spliced in after SOI."""
        return self._splice(self.repair(data)[0])

    def repair(self, data: bytes) -> tuple[bytes, list[str]]:
        """The stream `to_file` writes and what was fixed to get it: a file ends at its first EOI
        (bytes after it dropped), ends with EOI (appended to a stream cut by the token budget, or
        sampled without the grammar, or by vLLM) and starts with SOI (put in front when missing,
        as run.py's clean_image_string does). The scan itself is left as the model wrote it."""
        data, fixes = bytes(data), []
        if not data.startswith(SOI):
            data = SOI + data
            fixes.append("SOI put in front")
        try:
            start = header_length(data)  # an FF D9 inside a header segment is no EOI
        except ValueError:
            start = len(SOI)
        end = data.find(EOI, start)
        if end >= 0 and end + len(EOI) < len(data):
            fixes.append(f"{len(data) - end - len(EOI)} bytes after the first EOI dropped")
            data = data[: end + len(EOI)]
        elif end < 0:
            data += EOI
            fixes.append("EOI appended")
        return data, fixes

    def _splice(self, data: bytes) -> bytes:
        """The stream as it is with the tables spliced in right after SOI."""
        data = bytes(data)
        if data[:2] == SOI:
            return SOI + self.tables() + data[2:]
        return SOI + self.tables() + data  # a headless stream stays headless; decode repairs it

    def check_file(self, file_bytes: bytes) -> dict:
        """Whether Pillow opens the written file strictly (no LOAD_TRUNCATED_IMAGES)."""
        return {"strict_decodable": bool(self.is_strictly_decodable(file_bytes))}

    def start_symbols(self) -> bytes:
        """The canonical header (SOI .. SOS): fixed by the settings, the same in every file."""
        return self.header()

    def pixels_per_item(self) -> int:
        return self.params.size * self.params.size

    def grammar(self):
        """The Huffman-level scan grammar (jpeglm/codecs/jpeg_grammar.py)."""
        from jpeglm.codecs.jpeg_grammar import JpegScanGrammar

        return JpegScanGrammar(self)

    def structure_grammar(self):
        """The restart-marker grammar: counts closed intervals, a cheap bound on the ending."""
        from jpeglm.codecs.jpeg_grammar import RestartGrammar

        return RestartGrammar.for_codec(self)

    def prompt_steps(self, rule: str | None = None) -> int:
        """Half MCU rows (the default cut) or whole MCU rows ("rows"); see `prompt`."""
        my = self.mcu_layout()[1]
        return my if self.prompt_rule(rule) == "rows" else 2 * my

    def versions(self) -> dict:
        from PIL import __version__ as pillow, features

        return {"pillow": pillow, "libjpeg": features.version("jpg") or "unknown"}

    def is_strictly_decodable(self, file_bytes: bytes) -> bool:
        """True when Pillow opens and fully loads the complete file without LOAD_TRUNCATED_IMAGES
        and it is size x size."""
        return _strict_decode(bytes(file_bytes), self.params.size)[0] is not None

    def decode(self, data) -> tuple[np.ndarray, DecodeReport]:
        """Modelled bytes -> (uint8 size x size x 3, report). Never raises.

        ok: the file decodes as written. repaired: it decoded after a fix (an EOI appended to a
        cut stream — libjpeg fills the missing MCUs with gray; the canonical header put in front
        of a stream whose header is broken; a picture of the wrong size resized). failed: a gray
        placeholder and the reason.
        """
        size = self.params.size
        try:
            data = bytes(data)
        except Exception as e:  # noqa: BLE001 - anything that is not bytes-like
            return _placeholder(size), DecodeReport("failed", f"not bytes: {type(data).__name__} ({e})")
        if not data:
            return _placeholder(size), DecodeReport("failed", "empty stream")
        try:
            return self._decode(data)
        except Exception as e:  # noqa: BLE001 - the contract: never raise on model output
            return _placeholder(size), DecodeReport("failed", f"unexpected error: {type(e).__name__}: {e}")

    def _decode(self, data: bytes) -> tuple[np.ndarray, DecodeReport]:
        size = self.params.size
        arr, err = _strict_decode(self._splice(data), size)
        if arr is not None:
            return arr, DecodeReport("ok")
        first_error = err
        attempts: list[tuple[str, bytes]] = []
        if not data.endswith(EOI):
            attempts.append(("truncated stream: EOI appended", data + EOI))
        try:
            hl = header_length(data)
            scan = data[hl:]
        except ValueError:
            hl, scan = -1, None
        foreign = data[:2] == SOI and hl >= 0 and data[:hl] != self.header()
        if foreign and len(restart_marker_ends(data, hl)) != self.num_restart_markers:
            # A whole JPEG of another geometry (size, subsampling, restart interval): its own header
            # describes its scan, so the picture it shows, resized, is the best one; its scan behind
            # our header would be re-read as other MCUs. (A scan with our number of restart markers
            # is ours under a broken header: the header is replaced below.)
            arr = _loose_decode(self._splice(data), size)
            if arr is not None:
                return arr, DecodeReport("repaired", "wrong size or mode, resized (as written)", {"error": first_error})
        if data[:2] == SOI and (hl < 0 or data[:hl] != self.header()):
            # A JPEG stream whose header is broken or foreign: keep what follows it (or everything
            # after SOI) as scan data behind the canonical header. Streams without SOI are not
            # repaired: that would call any random bytes a picture.
            if scan is None:
                # In entropy-coded data FF is followed only by 00 or a marker, so the first FF DA
                # is the SOS marker; its length field says where the scan starts.
                sos = data.find(b"\xff\xda")
                if sos >= 0 and sos + 4 <= len(data):
                    scan = data[sos + 2 + int.from_bytes(data[sos + 2 : sos + 4], "big") :]
                else:
                    scan = data[len(SOI) :]
            fixed = self.header() + scan
            attempts.append(("canonical header put in place", fixed))
            if not fixed.endswith(EOI):
                attempts.append(("canonical header put in place, EOI appended", fixed + EOI))
        for reason, candidate in attempts:
            arr, _ = _strict_decode(self._splice(candidate), size)
            if arr is not None:
                return arr, DecodeReport("repaired", reason, {"error": first_error})
        # Last resort: a file that decodes but at another size / mode.
        for reason, candidate in [("as written", data)] + attempts:
            arr = _loose_decode(self._splice(candidate), size)
            if arr is not None:
                return arr, DecodeReport("repaired", f"wrong size or mode, resized ({reason})", {"error": first_error})
        return _placeholder(size), DecodeReport("failed", first_error or "undecodable")

    def prompt_cut(self, ratio: float, rule: str | None = None) -> int:
        """The number of MCUs a prompt cut at `ratio` keeps (see `prompt`); 0 for ratio 0."""
        if not 0.0 <= ratio <= 1.0:
            raise ValueError(f"ratio must be in [0, 1], got {ratio}")
        rule = self.prompt_rule(rule)
        mx, my, _ = self.mcu_layout()
        if rule == "rows":
            mcus = int(round(ratio * my)) * mx
        else:
            # The release's int(32 * ratio) at 256x256, as half rows; the tiny epsilon keeps
            # k / prompt_steps() from landing just below k (e.g. 7 / 24 * 24 = 6.999...).
            halves = int(2 * my * ratio + 1e-9)
            mcus = (halves // 2) * mx + (halves % 2) * (mx // 2)
        rmb = self.params.restart_marker_blocks
        mcus = mcus // rmb * rmb  # a cut falls on a restart marker
        if ratio > 0 and mcus == 0:
            steps = self.prompt_steps(rule)
            raise ValueError(
                f"prompt ratio {ratio:g} shows no MCU under the {rule!r} cut (one step is 1/{steps} of the "
                f"picture); use a ratio of at least {1 / steps:.4g}, or 0 for an unconditional sample"
            )
        return mcus

    def prompt_region(self, ratio: float, rule: str | None = None) -> dict:
        """What a prompt cut at `ratio` shows: the rule, the MCUs kept (of all of them), the share of
        the picture, and the pixels: whole rows from the top, then the left part of the next row."""
        rule = self.prompt_rule(rule)
        mcus = self.prompt_cut(ratio, rule)
        mx, my, blocks = self.mcu_layout()
        mw, mh = 8 * blocks["Y"][0], 8 * blocks["Y"][1]
        rows, extra = divmod(mcus, mx)
        return {"rule": rule, "ratio": ratio, "mcus": mcus, "of_mcus": mx * my, "fraction": mcus / (mx * my),
                "whole_rows_px": rows * mh, "partial_row_px": [rows * mh, (rows + 1) * mh, extra * mw] if extra else None}

    def prompt_mask(self, ratio: float, shape: tuple[int, ...], rule: str | None = None) -> np.ndarray:
        """The MCUs a prompt cut at `ratio` keeps, over an (H, W) picture (scaled from size x size):
        the whole rows, then the left part of the next row where a half row ends (see `prompt_region`)."""
        mcus = self.prompt_cut(ratio, rule)
        mx, my, _ = self.mcu_layout()
        h, w = shape
        ys = np.arange(h) * my // h  # the MCU row and column of each pixel
        xs = np.arange(w) * mx // w
        return ys[:, None] * mx + xs[None, :] < mcus

    def prompt(self, data: bytes, ratio: float, rule: str | None = None) -> bytes:
        """The prefix of `data` that shows the top `ratio` of the picture, cut after a restart marker.

        `rule` "half_rows" (the default) is the release's cut generalised: keep int(2 * R * ratio)
        half MCU rows (R = MCU rows; the middle of a row with an odd number of MCUs rounds down),
        which at 256x256 is exactly run.py's "up to and including the int(32 * ratio)-th FF D7"
        (0.6 -> 19 half rows = 152 MCUs). "rows": round(R * ratio) whole rows (0.6 -> 10 rows).
        ratio 0 -> the header only (SOI..SOS, no scan bytes); a cut of every MCU (ratio 1.0) ->
        `data` unchanged (with its EOI: nothing is left to generate). A ratio > 0 that shows no MCU
        and a stream with too few restart markers are ValueErrors.
        """
        mcus = self.prompt_cut(ratio, rule)
        data = bytes(data)
        hl = header_length(data)
        if mcus == 0:
            return data[:hl]
        if mcus >= self.num_mcus:
            return data
        need = mcus // self.params.restart_marker_blocks  # restart markers up to the cut
        pos = restart_marker_ends(data, hl, need)
        if len(pos) < need:
            raise ValueError(f"stream has only {len(pos)} restart markers, {need} needed for {mcus} MCUs")
        return data[: pos[need - 1]]


def restart_marker_ends(data: bytes, start: int, limit: int | None = None) -> list[int]:
    """Offsets just past each restart marker (FF D0..D7) in data[start:], at most `limit`.
    Stuffed FF 00 bytes never match, so this is exact on a well-formed scan."""
    out = []
    i = data.find(b"\xff", start)
    while i != -1 and i + 1 < len(data) and (limit is None or len(out) < limit):
        if RST0 <= data[i + 1] <= RST0 + 7:
            out.append(i + 2)
        i = data.find(b"\xff", i + 2 if data[i + 1] != 0xFF else i + 1)
    return out


# --- helpers -------------------------------------------------------------------------------------
def _is_canonical(media, size: int) -> bool:
    return isinstance(media, Image.Image) and media.mode == "RGB" and media.size == (size, size)


def _placeholder(size: int) -> np.ndarray:
    return np.full((size, size, 3), 128, np.uint8)  # mid gray: what an all-zero-coefficient JPEG shows


@functools.lru_cache(maxsize=None)
def _tables(p: JpegParams) -> bytes:
    f = io.BytesIO()
    Image.new("RGB", (p.size, p.size), (128, 128, 128)).save(f, "JPEG", streamtype=1, **_save_kwargs(p))
    t = f.getvalue()
    assert t[:2] == SOI and t[-2:] == EOI, "Pillow's tables-only stream changed shape"
    return t[2:-2]


@functools.lru_cache(maxsize=None)
def _header(p: JpegParams) -> bytes:
    f = io.BytesIO()
    Image.new("RGB", (p.size, p.size), (128, 128, 128)).save(f, "JPEG", streamtype=2, **_save_kwargs(p))
    d = f.getvalue()
    return d[: header_length(d)]


def _strict_decode(file_bytes: bytes, size: int) -> tuple[np.ndarray | None, str]:
    """Pillow decode without LOAD_TRUNCATED_IMAGES (we never touch that global): (array, "") when
    it is an RGB size x size picture, else (None, why)."""
    try:
        with Image.open(io.BytesIO(file_bytes)) as im:
            if im.format != "JPEG":
                return None, f"not a JPEG ({im.format})"
            # checked from the header, before load: a model-written SOF can claim 65535x65535
            if im.size != (size, size):
                return None, f"decodes to {im.size[0]}x{im.size[1]}, not {size}x{size}"
            if im.mode != "RGB":
                return None, f"decodes to mode {im.mode}, not RGB"
            im.load()
            return np.array(im, dtype=np.uint8), ""
    except Image.UnidentifiedImageError:
        return None, "not a JPEG file Pillow can identify"
    except Exception as e:  # noqa: BLE001 - Pillow raises OSError, SyntaxError, ValueError, ...
        return None, f"{type(e).__name__}: {e}"


def _loose_decode(file_bytes: bytes, size: int) -> np.ndarray | None:
    try:
        with Image.open(io.BytesIO(file_bytes)) as im:
            if im.format != "JPEG" or im.size[0] * im.size[1] > 64 * size * size:
                return None
            im.load()
            return np.array(im.convert("RGB").resize((size, size), Image.BILINEAR), dtype=np.uint8)
    except Exception:  # noqa: BLE001
        return None


def params_from_dict(d: dict[str, Any]) -> JpegParams:
    """JpegParams from a plain dict, unknown keys rejected (see jpeglm.config.from_dict)."""
    from jpeglm.config import from_dict

    return from_dict(JpegParams, d)


__all__ = ["JpegCodec", "JpegParams", "header_length", "iter_segments", "restart_marker_ends", "params_from_dict"]
