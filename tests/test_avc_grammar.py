"""The H.264 NAL-unit grammar: accepts real canonical streams, refuses broken structure at the right
byte, and every stream it lets a sampler write has the right NAL structure (checked by an
independent parser, not by the grammar itself)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from jpeglm.codecs.avc import NAL_IDR, NAL_SLICE, AvcCodec, split_nals
from jpeglm.codecs.avc_grammar import AvcNalGrammar, grammar_for
from jpeglm.sample.constrain import TokenConstraint, constraint_for
from jpeglm.tokenizer import BpeTokenizer, ByteTokenizer
from jpeglm.video import builtin_clip


@pytest.fixture(scope="module")
def codec():
    return AvcCodec()


@pytest.fixture(scope="module")
def grammar(codec):
    return grammar_for(codec.params)


def _clips():
    rng = np.random.default_rng(7)
    t = np.arange(15)[:, None, None]
    x = np.arange(256)[None, None, :]
    y = np.arange(144)[None, :, None]
    grad = np.stack([(x * 2 + t * 9) % 256 + 0 * y, (y * 3 - t * 5) % 256 + 0 * x, (x + y + t * 17) % 256], -1)
    clip = builtin_clip()
    return {
        "builtin": clip,
        "reversed": clip[::-1].copy(),
        "noise": rng.integers(0, 256, (15, 144, 256, 3), dtype=np.uint8),
        "gradient": grad.astype(np.uint8),
        "black": np.zeros((15, 144, 256, 3), np.uint8),
    }


@pytest.fixture(scope="module")
def streams(codec):
    return {name: codec.encode(clip) for name, clip in _clips().items()}


def check_structure(data: bytes, frames: int = 15) -> list[str]:
    """Independent check of the NAL structure: the problems found (empty = valid)."""
    problems = []
    units = split_nals(data)
    if len(units) != frames:
        return [f"{len(units)} units"]
    for k, (s, e, t) in enumerate(units):
        sc = b"\x00\x00\x01" if k == 0 else b"\x00\x00\x00\x01"
        if data[s : s + len(sc)] != sc:
            problems.append(f"unit {k}: start code {data[s:s + 4].hex()}")
        if t != (NAL_IDR if k == 0 else NAL_SLICE):
            problems.append(f"unit {k}: type {t}")
        payload = data[s + len(sc) + 1 : e]
        for bad in (b"\x00\x00\x00", b"\x00\x00\x01", b"\x00\x00\x02"):
            if bad in payload:
                problems.append(f"unit {k}: {bad.hex()} in payload")
        i = payload.find(b"\x00\x00\x03")
        while i >= 0:
            if i + 3 >= len(payload) or payload[i + 3] > 3:
                problems.append(f"unit {k}: bad byte after 00 00 03")
            i = payload.find(b"\x00\x00\x03", i + 3)
        if not payload or payload[-1] == 0:
            problems.append(f"unit {k}: payload ends in 00 or is empty")
    return problems


def test_accepts_real_streams_byte_by_byte(grammar, streams):
    for name, data in streams.items():
        assert check_structure(data) == [], name
        s = grammar.start_state()
        for i, b in enumerate(data):
            assert grammar.allowed_bytes(s)[b], (name, i)
            s = grammar.step(s, b)
        assert grammar.is_complete(s), name
        assert grammar.completion(s) == b""


def _unit_starts(data):
    return [s for s, _e, _t in split_nals(data)]


def test_refuses_broken_structure_at_the_right_byte(grammar, streams):
    d = streams["builtin"]
    starts = _unit_starts(d)
    s2 = starts[2]
    fe = grammar.first_error
    assert fe(b"\x00\x00\x00\x01" + d[3:]) == 2  # a 4-byte start code where x264 writes 3 bytes
    assert fe(d[:3] + b"\x41" + d[4:]) == 3  # unit 0 must be the IDR slice
    assert fe(d[:s2 + 4] + b"\x65" + d[s2 + 5 :]) == s2 + 4  # unit 2 must be a non-IDR slice
    assert fe(d[:s2] + d[s2 + 1 :]) == s2 + 2  # a short start code between slices
    assert fe(d[:s2 + 5] + bytes([d[s2 + 5] ^ 1]) + d[s2 + 6 :]) == s2 + 5  # frame_num's top bit
    # 00 00 01 inside a payload, after a byte that cannot be an emulation-prevention 03
    i = next(j for j in range(s2 + 20, starts[3]) if d[j - 1] >= 4)
    assert fe(d[:i] + b"\x00\x00\x01" + d[i:]) == i + 2
    assert fe(d[:i] + b"\x00\x00\x02" + d[i:]) == i + 2
    assert fe(d[:i] + b"\x00\x00\x03\x04" + d[i:]) == i + 3  # after 00 00 03 only 00..03
    assert fe(d[:i] + b"\x00\x00\x03\x01" + d[i:]) == len(d) + 4  # a real emulation-prevention byte
    # a 16th unit: the third zero of its start code is refused
    last = d[starts[-1] :]
    assert fe(d + last) == len(d) + 2
    # a payload that ends with an emulation-prevention byte or in 00 cannot be followed by a unit
    assert fe(d[: starts[3]] + b"\x00\x00\x03" + d[starts[3] :]) == starts[3] + 5
    # early ends are not complete
    for cut in (starts[-1], starts[5] + 9, starts[-1] + 5):  # last unit missing / unit 5 / its header
        assert not grammar.accepts(d[:cut])
    assert not grammar.accepts(d + b"\x00")
    assert grammar.accepts(d + b"\x80")  # the last payload may go on: it has no terminator


def test_completion_finishes_any_prefix_into_a_decodable_stream(grammar, codec, streams):
    d = streams["builtin"]
    prompt = codec.prompt_frames(d, 3)
    tail = grammar.completion(grammar.state_after(prompt))
    assert grammar.accepts(prompt + tail)
    video, report = codec.decode(prompt + tail)
    assert report.details["decoded_frames"] == 15 and report.details["corrupt_frames"] == 0
    ref, _ = codec.decode(prompt)
    np.testing.assert_array_equal(video[3:], np.repeat(ref[2:3], 12, 0))  # all-skip slices repeat
    for cut in range(0, len(d), 37):  # every kind of state: inside start codes, headers, payloads
        s = grammar.state_after(d[:cut])
        assert grammar.accepts(d[:cut] + grammar.completion(s)), cut


def _walk(grammar, rng, steps):
    """Random bytes under the grammar, zeros favoured so that zero runs, emulation-prevention
    bytes and new start codes all occur; then the grammar's completion."""
    s, out = grammar.start_state(), bytearray()
    for _ in range(steps):
        allowed = np.flatnonzero(grammar.allowed_bytes(s))
        assert len(allowed), s
        small = allowed[allowed <= 3]
        b = int(rng.choice(small) if len(small) and rng.random() < 0.45 else rng.choice(allowed))
        out.append(b)
        s = grammar.step(s, b)
    return bytes(out), bytes(out) + grammar.completion(s)


def test_random_walks_have_valid_nal_structure(grammar, codec):
    rng = np.random.default_rng(0)
    reached = []
    for _ in range(30):
        free, data = _walk(grammar, rng, int(rng.integers(10, 3000)))
        assert grammar.accepts(data)
        assert check_structure(data) == [], data[:64].hex()
        reached.append(len(split_nals(free)))
        _video, report = codec.decode(data)  # never raises; counts what decodes
        n = report.details["decoded_frames"]
        assert 0 <= n <= 15 and (report.status == "failed") == (n == 0), report  # the status says what decoded
        assert report.status != "ok" or (n == 15 and report.details["corrupt_frames"] == 0), report
    assert max(reached) >= 5  # the walks open new units themselves, not only by completion


def test_constraint_gate_and_jpeg_untouched(codec, photos):
    from jpeglm.codecs.jpeg import JpegCodec, JpegParams, header_length

    tok = ByteTokenizer()
    assert constraint_for(codec, tok, skip={"avc"}) is None  # the H.264 grammar alone can be turned off
    c = constraint_for(codec, tok)  # on by default, like the JPEG grammar
    assert isinstance(c, TokenConstraint) and c.prompt_offset(b"\x00\x00\x01\x65") == 0
    # ... and the gate leaves JPEG alone: with skip={"avc"} a JPEG codec still gets its scan grammar,
    # which a real scan completes (the name promised this; the body never looked at JPEG)
    jpeg = JpegCodec(JpegParams(size=64))
    jc = constraint_for(jpeg, tok, skip={"avc"})
    scan = jpeg.encode(photos[0])
    assert jc is not None and jc.is_complete(jc.advance_bytes(jc.start_state(), scan[header_length(scan):]))


def _token_walk(c, rng, steps):
    st, ids = c.start_state(), []
    for _ in range(steps):
        m = c.mask(st)
        assert bool(m.any())
        assert bool(m[c.eos_id]) == bool(c.grammar.is_complete(st[0]))
        choices = torch.nonzero(m).flatten().tolist()
        tid = int(rng.choice(choices))
        if tid == c.eos_id:
            break
        st = c.advance(st, tid)
        ids.append(tid)
    return st, ids


@pytest.mark.parametrize("kind", ["byte", "bpe"])
def test_token_constraint_never_masks_everything(codec, streams, kind):
    if kind == "byte":
        tok = ByteTokenizer()
    else:
        tok = BpeTokenizer.train(list(streams.values()), vocab_size=300)
    c = constraint_for(codec, tok, tok.vocab_size + 3)
    assert not c.is_complete(c.advance_bytes(c.start_state(), streams["builtin"]))  # never stops a row
    rng = np.random.default_rng(1)
    for _ in range(3):
        st, ids = _token_walk(c, rng, 800)
        data = tok.decode(ids) + c.completion(st)
        assert c.grammar.accepts(data) and check_structure(data) == []
    # the real stream, tokenized, passes the mask token by token
    st = c.start_state()
    for tid in tok.encode(streams["gradient"], bos=False, eos=False):
        assert bool(c.mask(st)[tid])
        st = c.advance(st, tid)
    assert bool(c.mask(st)[c.eos_id])


def test_other_settings_get_their_own_grammar():
    from jpeglm.codecs.avc import AvcParams

    g = AvcNalGrammar(AvcCodec(AvcParams(width=64, height=48, frames=20, gop=20, fps=10)))
    d = g.codec.encode(builtin_clip(frames=20, width=64, height=48))
    assert g.accepts(d) and check_structure(d, 20) == []
    assert g.accepts(g.completion(g.start_state()))
