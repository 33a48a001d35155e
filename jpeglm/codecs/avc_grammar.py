"""The NAL-unit-level byte grammar of a canonical H.264 clip, for constrained sampling. No torch.

`AvcNalGrammar(codec)` accepts exactly the byte strings with the NAL structure of the codec's
modelled bytes (`AvcCodec.encode` output: slice NAL units only, one per frame):
- exactly `frames` NAL units; unit k starts with the start code and NAL header byte that the
  canonical encoder writes for frame k (read from x264's own encoding of a blank clip, never
  assumed: at the defaults `00 00 01 65` for the IDR slice - x264 writes the short start code
  there because SPS/PPS precede it in the access unit - and `00 00 00 01 41` for the P slices);
- the first bits of every slice header are fixed: first_mb_in_slice = 0, slice_type (x264's, read
  from the blank clip), pic_parameter_set_id (from the PPS), frame_num = k mod MaxFrameNum
  (log2_max_frame_num from the SPS), and idr_pic_id = 0 for the IDR slice. These are parsed from
  the canonical SPS/PPS in `codec.headers` and cross-checked against the blank clip's slices;
- emulation prevention inside every payload (H.264 7.4.1): never `00 00 00`, `00 00 01`,
  `00 00 02`; `00 00 03` is an emulation-prevention byte and the byte after it must be 00..03;
- a payload ends only where rbsp_trailing_bits can: its last byte is a real (not an
  emulation-prevention) nonzero byte whose stop bit lies after the fixed slice-header bits. The next
  unit's start code follows directly (no trailing_zero_8bits: x264 writes none), so inside a
  payload `00 00` + `00` is the start of the next unit, and only where the payload could end;
- after the last unit's payload has reached a valid end the stream is complete (EOS allowed; the
  stream may also go on, since the last payload has no terminator).

What it does NOT check: the slice data (macroblock layer, CAVLC codes) and the slice-header
fields after idr_pic_id / frame_num. An accepted stream has the right NAL structure and
slice-header prefix, but a slice may still fail to decode; that would need a CAVLC-level grammar.

A state is a small hashable tuple; per-state byte masks and token masks (the shared `TokenTrie`,
jpeglm/codecs/grammar.py) are cached, and the state space is tiny (a few hundred states at the defaults). `completion(state)` gives a short ending:
close the current payload (a stop byte) and append x264's own slices of a blank clip for the
missing frames - at the defaults 10-byte all-P_Skip slices that decode (they repeat the previous
frame), which the absolutely shortest ending (a bare slice-header prefix) would not.
"""

from __future__ import annotations

import functools

import numpy as np

from jpeglm.codecs.avc import NAL_IDR, NAL_PPS, NAL_SLICE, NAL_SPS, AvcCodec, split_nals
from jpeglm.codecs.grammar import Grammar, GrammarError

# phases of a state (phase, k, pos, z, epb, ok)
PREFIX, PAYLOAD = 0, 1
# PREFIX: inside unit k's fixed prefix (start code + NAL header + slice-header bytes), at byte pos.
# PAYLOAD: inside unit k's free payload. z = trailing 00 bytes (0..2), epb = the last byte was an
# emulation-prevention 03, ok = the payload could end right before the trailing zeros.
HIGH_PROFILES = {100, 110, 122, 244, 44, 83, 86, 118, 128, 138, 139, 134, 135}


# --- RBSP bit reading (for the canonical SPS/PPS and slice headers) -----------------------------
def unescape(payload: bytes) -> bytes:
    """NAL payload -> RBSP: drop every emulation-prevention 03 that follows 00 00."""
    out, z = bytearray(), 0
    for b in payload:
        if z >= 2 and b == 3:
            z = 0
            continue
        out.append(b)
        z = z + 1 if b == 0 else 0
    return bytes(out)


class BitReader:
    def __init__(self, data: bytes):
        self.data, self.pos = data, 0

    def u(self, n: int) -> int:
        v = 0
        for _ in range(n):
            byte = self.data[self.pos >> 3] if (self.pos >> 3) < len(self.data) else 0
            v = (v << 1) | ((byte >> (7 - (self.pos & 7))) & 1)
            self.pos += 1
        return v

    def ue(self) -> int:
        zeros = 0
        while self.u(1) == 0:
            zeros += 1
            if zeros > 31:
                raise ValueError("bad exp-Golomb code")
        return (1 << zeros) - 1 + self.u(zeros)

    def se(self) -> int:
        k = self.ue()
        return (k + 1) // 2 if k % 2 else -(k // 2)


def ue_bits(v: int) -> str:
    """Exp-Golomb code of v as a bit string."""
    b = bin(v + 1)[2:]
    return "0" * (len(b) - 1) + b


def _units(data: bytes) -> list[tuple[bytes, int, bytes]]:
    """Annex-B bytes -> [(start code, NAL header byte, payload)]."""
    out = []
    for s, e, t in split_nals(data):
        if t is None:
            raise ValueError("bytes outside a NAL unit")
        h = data.find(b"\x00\x00\x01", s) + 3
        out.append((data[s:h], data[h], data[h + 1 : e]))
    return out


def parse_sps(rbsp: bytes) -> dict:
    """The SPS fields the slice-header prefix depends on."""
    r = BitReader(rbsp)
    profile = r.u(8)
    r.u(16)  # constraint flags + level
    sps = {"sps_id": r.ue(), "separate_colour_plane": 0}
    if profile in HIGH_PROFILES:
        if r.ue() == 3:  # chroma_format_idc
            sps["separate_colour_plane"] = r.u(1)
        r.ue(), r.ue(), r.u(1)  # bit depths, qpprime_y_zero_transform_bypass
        if r.u(1):
            raise ValueError("SPS scaling matrices are not supported")
    sps["log2_max_frame_num"] = r.ue() + 4
    poc = r.ue()
    if poc == 0:
        r.ue()
    elif poc == 1:
        r.u(1), r.se(), r.se()
        for _ in range(r.ue()):
            r.se()
    r.ue(), r.u(1)  # max_num_ref_frames, gaps_in_frame_num_allowed
    sps["mbs"] = (r.ue() + 1) * (r.ue() + 1)
    sps["frame_mbs_only"] = r.u(1)
    return sps


def slice_prefix_bits(slice_type: int, pps_id: int, frame_num: int, log2_max_frame_num: int, idr: bool) -> str:
    """The fixed first bits of a slice header (7.3.3) at first_mb_in_slice = 0."""
    bits = ue_bits(0) + ue_bits(slice_type) + ue_bits(pps_id) + format(frame_num, f"0{log2_max_frame_num}b")
    return bits + (ue_bits(0) if idr else "")  # idr_pic_id = 0 (frame_mbs_only, so no field flags)


def _bits_to_masks(bits: str) -> list[tuple[int, int]]:
    """A bit string -> per-byte (value, mask) constraints (the last byte partly free)."""
    out = []
    for i in range(0, len(bits), 8):
        chunk = bits[i : i + 8]
        n = len(chunk)
        out.append((int(chunk, 2) << (8 - n), (0xFF << (8 - n)) & 0xFF))
    return out


class AvcNalGrammar(Grammar):
    """See module docstring. States: (phase, k, pos, z, epb, ok) tuples."""

    def __init__(self, codec: AvcCodec | None = None, slice_header: bool = True):
        self.codec = codec or AvcCodec()
        p = self.codec.params
        if p.slices != 1:
            raise ValueError("the NAL grammar needs one slice per frame (slices=1)")
        self.frames = p.frames
        heads = {h & 0x1F: pl for _sc, h, pl in _units(self.codec.headers)}
        if NAL_SPS not in heads or NAL_PPS not in heads:
            raise ValueError("codec headers hold no SPS/PPS")
        sps = parse_sps(unescape(heads[NAL_SPS]))
        pps_id = BitReader(unescape(heads[NAL_PPS])).ue()
        if sps["separate_colour_plane"] or not sps["frame_mbs_only"]:
            raise ValueError("only frame-coded streams without separate colour planes are supported")
        # x264's own slices of a blank clip: the exact start codes, header bytes and slice types,
        # and the decodable all-skip slices `completion` appends.
        blank = self.codec.encode(np.full((p.frames, p.height, p.width, 3), 128, np.uint8))
        units = _units(blank)
        if len(units) != self.frames:
            raise ValueError(f"the blank clip has {len(units)} NAL units, expected {self.frames}")
        self.prefixes: list[list[tuple[int, int]]] = []  # per unit: (value, mask) per prefix byte
        self.n_fixed: list[int] = []  # start code + header bytes (no emulation rule on them)
        self.fillers: list[bytes] = []
        for k, (sc, head, payload) in enumerate(units):
            idr = (head & 0x1F) == NAL_IDR
            if (head & 0x1F) != (NAL_IDR if k == 0 else NAL_SLICE):
                raise ValueError(f"unit {k} of the blank clip has NAL type {head & 0x1F}")
            prefix = [(b, 0xFF) for b in sc + bytes([head])]
            self.n_fixed.append(len(prefix))
            if slice_header:
                r = BitReader(unescape(payload))
                first_mb, slice_type, pid, fn = r.ue(), r.ue(), r.ue(), r.u(sps["log2_max_frame_num"])
                expect = k % (1 << sps["log2_max_frame_num"])
                if (first_mb, pid, fn) != (0, pps_id, expect) or (idr and r.ue() != 0):
                    raise ValueError(f"blank clip slice {k}: header differs from the SPS/PPS derivation")
                bits = slice_prefix_bits(slice_type, pps_id, expect, sps["log2_max_frame_num"], idr)
                prefix += _bits_to_masks(bits)
            self.prefixes.append(prefix)
            self.fillers.append(sc + bytes([head]) + payload)
        for k in range(self.frames):  # the filler slices must be grammatical themselves
            s = self.state_after(self.fillers[k], (PREFIX, k, 0, 0, False, False))
            if not self._end_ok(s):
                raise ValueError(f"blank slice {k} is not accepted by the grammar")

    # --- states -------------------------------------------------------------------------------
    def start_state(self) -> tuple:
        return (PREFIX, 0, 0, 0, False, False)

    @functools.cache  # noqa: B019 - few states; the grammar lives as long as its codec
    def step(self, state: tuple, byte: int) -> tuple | None:
        """The state after `byte`, or None when the grammar refuses it."""
        phase, k, pos, z, epb, ok = state
        b = int(byte)
        if phase == PREFIX:
            value, mask = self.prefixes[k][pos]
            if b & mask != value:
                return None
            last = pos + 1 == len(self.prefixes[k])
            if pos < self.n_fixed[k]:  # start code / header byte: not payload
                return (PAYLOAD, k, 0, 0, False, False) if last else (PREFIX, k, pos + 1, 0, False, False)
            nxt = self._payload(k, z, epb, ok, b)
            if nxt is None or nxt[0] != PAYLOAD or nxt[4]:
                return None  # fixed header bits never need an emulation-prevention byte here
            z2 = nxt[3]
            if not last:
                return (PREFIX, k, pos + 1, z2, False, False)
            # The stop bit must come after the fixed bits: ending is ok only with a 1 among the
            # byte's free bits.
            return (PAYLOAD, k, 0, z2, False, bool(b & ~mask & 0xFF))
        return self._payload(k, z, epb, ok, b)

    def _payload(self, k: int, z: int, epb: bool, ok: bool, b: int) -> tuple | None:
        if epb:  # after 00 00 03 only 00..03 may follow (7.4.1)
            if b > 3:
                return None
            return (PAYLOAD, k, 0, 1, False, False) if b == 0 else (PAYLOAD, k, 0, 0, False, True)
        if z == 2:
            if b == 0:  # 00 00 00: the payload ended before the zeros, the next start code began
                if ok and k + 1 < self.frames and self.prefixes[k + 1][:3] == [(0, 0xFF)] * 3:
                    return (PREFIX, k + 1, 3, 0, False, False)
                return None
            if b in (1, 2):  # 00 00 01 (a short start code: never written between our slices) / 00 00 02
                return None
            if b == 3:
                return (PAYLOAD, k, 0, 0, True, False)
            return (PAYLOAD, k, 0, 0, False, True)
        if b == 0:
            return (PAYLOAD, k, 0, z + 1, False, ok)
        return (PAYLOAD, k, 0, 0, False, True)

    def _end_ok(self, state: tuple) -> bool:
        phase, _k, _pos, z, epb, ok = state
        return phase == PAYLOAD and z == 0 and not epb and ok

    def is_complete(self, state: tuple) -> bool:
        """The stream may end here (all units present, the last payload at a valid end)."""
        return state[1] == self.frames - 1 and self._end_ok(state)

    # --- endings ------------------------------------------------------------------------------
    def completion(self, state: tuple) -> bytes:
        """A short byte string that completes the stream from `state` (see module docstring)."""
        phase, k, pos, z, epb, ok = state
        if self.is_complete(state):
            return b""
        out = bytearray()
        if phase == PREFIX:
            prefix = self.prefixes[k]
            if pos < self.n_fixed[k]:  # still in start code / header: the filler slice from here
                out += self.fillers[k][pos:]
            else:
                s = state
                for value, mask in prefix[pos:-1]:
                    b = value if self.step(s, value) is not None else value | (~mask & 0xFF)
                    out.append(b)
                    s = self.advance(s, b)
                value, mask = prefix[-1]
                free = ~mask & 0xFF
                if free:  # stop bit right after the fixed bits
                    out.append(value | (free + 1) >> 1)
                else:
                    out += bytes([value, 0x80])
        elif z and ok and k + 1 < self.frames:  # the zeros can begin the next start code
            out += self.fillers[k + 1][z:]
            k += 1
        elif not self._end_ok(state):
            out.append(0x01 if epb else 0x80)  # a stop byte (after 00 00 03 only 00..03 may follow)
        for j in range(k + 1, self.frames):
            out += self.fillers[j]
        return bytes(out)


@functools.lru_cache(maxsize=8)
def grammar_for(params) -> AvcNalGrammar:
    """One grammar per settings (building it encodes a blank clip)."""
    return AvcNalGrammar(AvcCodec(params))


__all__ = ["AvcNalGrammar", "GrammarError", "grammar_for", "parse_sps", "slice_prefix_bits", "unescape"]
