"""JpegScanGrammar: accepts every real canonical scan, rejects broken ones, and every stream it
allows decodes strictly with Pillow."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from jpeglm.codecs.jpeg import JpegCodec, JpegParams, header_length, restart_marker_ends
from jpeglm.codecs.jpeg_grammar import GrammarError, JpegScanGrammar, TokenTrie, parse_tables
from jpeglm.media import prepare_image


@pytest.fixture(scope="module")
def codec():
    return JpegCodec()


@pytest.fixture(scope="module")
def grammar(codec):
    return JpegScanGrammar(codec)


@pytest.fixture(scope="module")
def streams(codec, photos):
    # the photos, their mirror images and a few quality-independent synthetic pictures
    out = [codec.encode(p) for p in photos]
    out += [codec.encode(prepare_image(p, 256).transpose(Image.FLIP_LEFT_RIGHT)) for p in photos]
    rng = np.random.default_rng(0)
    out.append(codec.encode(rng.integers(0, 256, (256, 256, 3), dtype=np.uint8)))  # noise: long AC runs
    out.append(codec.encode(np.zeros((256, 256, 3), np.uint8)))
    out.append(codec.encode(np.full((256, 256, 3), 255, np.uint8)))
    return out


def random_walk(grammar, rng, state=None, limit=10**6):
    state = grammar.initial_state() if state is None else state
    out = bytearray()
    while not grammar.is_complete(state):
        allowed = np.flatnonzero(grammar.allowed_bytes(state))
        assert allowed.size, f"dead end after {len(out)} bytes in state {state}"
        b = int(rng.choice(allowed))
        out.append(b)
        state = grammar.advance(state, b)
        assert len(out) < limit
    return bytes(out)


def test_huffman_tables_parsed_from_the_file(codec):
    tables = parse_tables(codec.tables())
    assert set(tables) == {(0, 0), (0, 1), (1, 0), (1, 1)}
    # Pillow/libjpeg use the Annex K tables at this setting: DC luma category 0 is '00',
    # AC luma EOB is '1010' and ZRL is '11111111001'.
    assert tables[(0, 0)].codes[0] == (0b00, 2)
    assert tables[(1, 0)].codes[0x00] == (0b1010, 4)
    assert tables[(1, 0)].codes[0xF0] == (0b11111111001, 11)
    assert len(tables[(1, 0)].codes) == 162 and len(tables[(0, 1)].codes) == 12


def test_accepts_every_real_stream(grammar, streams):
    for d in streams:
        assert grammar.first_error(d) == len(d)
        assert grammar.is_complete(grammar.state_after(d))
        # and from the prompt's state on, as a sampler uses it
        hl = header_length(d)
        assert grammar.accepts(d[hl:], grammar.start_state())


def test_accepts_pets(grammar, codec, pets_dir):
    for path in sorted((pets_dir / "train").glob("*.jpg"))[:30]:
        assert grammar.accepts(codec.encode(path)), path


def test_structural_errors_rejected_at_the_byte(grammar, streams):
    d = streams[0]
    hl = header_length(d)
    ends = restart_marker_ends(d, hl)
    rst = ends[10] - 1  # the code byte of the 11th restart marker (RST2)
    cases = {
        "wrong RST number": (d[:rst] + bytes([0xD5]) + d[rst + 1 :], rst),
        "EOI instead of RST": (d[:rst] + b"\xd9" + d[rst + 1 :], rst),
        "RST missing": (d[: rst - 1] + d[rst + 1 :], rst - 1),
        "byte after EOI": (d + b"\x00", len(d)),
        "header changed": (d[:30] + bytes([d[30] ^ 1]) + d[31:], 30),
    }
    for name, (bad, pos) in cases.items():
        assert grammar.first_error(bad) == pos, name
    # FF in entropy data must be followed by 00
    stuffed = [i for i in range(hl, len(d) - 1) if d[i] == 0xFF and d[i + 1] == 0x00]
    assert stuffed, "expected some stuffed FF bytes"
    i = stuffed[0]
    assert grammar.first_error(d[: i + 1] + b"\x01" + d[i + 2 :]) == i + 1
    with pytest.raises(GrammarError):
        grammar.state_after(d[: i + 1] + b"\xd0")
    # cut streams are never complete
    for cut in (hl, len(d) // 2, len(d) - 1):
        assert not grammar.accepts(d[:cut])


def test_random_corruptions(grammar, codec, streams):
    """A changed byte is never rejected before its position; most are caught; a corrupted stream
    the grammar still accepts (a changed coefficient value) decodes strictly."""
    rng = np.random.default_rng(1)
    rejected = 0
    trials = 150
    for t in range(trials):
        d = bytearray(streams[t % len(streams)])
        hl = header_length(bytes(d))
        pos = int(rng.integers(hl, len(d)))
        d[pos] = (d[pos] + int(rng.integers(1, 256))) % 256
        d = bytes(d)
        err = grammar.first_error(d)
        assert err >= pos
        if err < len(d) or not grammar.accepts(d):
            rejected += 1
        else:
            assert codec.is_strictly_decodable(codec.to_file(d))
    assert rejected >= 0.5 * trials


def test_random_walks_always_decode_strictly(grammar, codec):
    """The key property: whatever a sampler picks among the allowed bytes, the stream ends (no dead
    ends, bounded length) and the file opens strictly with Pillow at 256x256."""
    rng = np.random.default_rng(2)
    for _ in range(3):
        data = random_walk(grammar, rng)
        assert data.startswith(codec.header())
        assert codec.is_strictly_decodable(codec.to_file(data))
        arr, rep = codec.decode(data)
        assert rep.status == "ok" and arr.shape == (256, 256, 3)
        assert len(restart_marker_ends(data, header_length(data))) == 255


def test_random_walks_from_prompts(grammar, codec, streams):
    rng = np.random.default_rng(3)
    for d in streams[:2]:
        p = codec.prompt(d, 0.5)
        tail = random_walk(grammar, rng, grammar.state_after(p))
        assert codec.is_strictly_decodable(codec.to_file(p + tail))
        full, _ = codec.decode(d)
        got, _ = codec.decode(p + tail)
        assert np.array_equal(got[:127], full[:127])  # the prompt's rows are kept


def test_biased_walks_towards_ff_and_long_blocks(grammar, codec):
    """Walks that prefer FF bytes and all-ones prefixes probe stuffing and padding corners."""
    rng = np.random.default_rng(4)
    for bias in (0xFF, 0x00):
        state, out = grammar.initial_state(), bytearray()
        while not grammar.is_complete(state):
            allowed = np.flatnonzero(grammar.allowed_bytes(state))
            assert allowed.size
            b = bias if grammar.allowed_bytes(state)[bias] and rng.random() < 0.7 else int(rng.choice(allowed))
            out.append(b)
            state = grammar.advance(state, b)
        assert codec.is_strictly_decodable(codec.to_file(bytes(out)))


@pytest.mark.parametrize(
    "params",
    [JpegParams(size=64), JpegParams(size=64, subsampling="4:4:4", restart_marker_blocks=2),
     JpegParams(size=128, quality=75, subsampling="4:2:2", restart_marker_blocks=4)],
)
def test_other_settings(params, photos):
    codec = JpegCodec(params)
    grammar = JpegScanGrammar(codec)
    for p in photos[:3]:
        assert grammar.accepts(codec.encode(p))
    rng = np.random.default_rng(5)
    for _ in range(3):
        data = random_walk(grammar, rng)
        assert codec.is_strictly_decodable(codec.to_file(data))


def test_allowed_token_mask_matches_brute_force(grammar, streams):
    rng = np.random.default_rng(6)
    d = streams[1]
    # tokens: every single byte, real chunks of scans (with FF 00 and RST markers), junk
    toks: list[bytes | None] = [None, b""] + [bytes([b]) for b in range(256)]
    for _ in range(300):
        s = streams[int(rng.integers(len(streams)))]
        i = int(rng.integers(header_length(s), len(s) - 1))
        toks.append(s[i : i + int(rng.integers(2, 7))])
    toks += [b"\xff\x00", b"\xff\xd0", b"\xff\xd9", b"\x00\xff", rng.bytes(5)]
    trie = TokenTrie(toks)
    states = [grammar.initial_state(), grammar.start_state()]
    state = grammar.initial_state()
    for i, byte in enumerate(d):
        state = grammar.advance(state, byte)
        if i % 97 == 0 or i > len(d) - 6 or d[i] == 0xFF:
            states.append(state)
    for st in states:
        mask = grammar.allowed_token_mask(st, toks)
        assert grammar.allowed_token_mask(st, toks) is mask  # cached
        assert np.array_equal(mask, grammar.allowed_token_mask(st, trie))
        for tid, tb in enumerate(toks):
            ok = bool(tb)
            s = st
            for byte in tb or b"":
                s = grammar.step(s, byte)
                if s is None:
                    ok = False
                    break
            assert mask[tid] == ok, (st, tb)
        single = grammar.allowed_bytes(st)
        assert np.array_equal(mask[2:258], single)


def test_token_walks_decode_strictly(streams):
    """Sampling only tokens the mask allows (a BPE-like vocabulary of real scan chunks, shared by
    two grammars whose caches must not mix) always ends in a complete, strictly decodable file."""
    rng = np.random.default_rng(7)
    toks: list[bytes | None] = [None] * 4 + [bytes([b]) for b in range(256)]
    for _ in range(700):
        s = streams[int(rng.integers(len(streams)))]
        i = int(rng.integers(header_length(s), len(s) - 1))
        toks.append(s[i : i + int(rng.integers(2, 9))])
    trie = TokenTrie(toks)
    small = JpegCodec(JpegParams(size=128))  # a quarter of the MCUs keeps the test quick
    for seed in range(2):
        g = JpegScanGrammar(small)  # a fresh grammar: its state ids differ from any other's
        state, out = g.initial_state(), bytearray()
        while not g.is_complete(state):
            mask = g.allowed_token_mask(state, trie)
            assert mask.any()
            tb = toks[int(rng.choice(np.flatnonzero(mask)))]
            assert g.token_allowed(state, tb)
            out += tb
            state = g.state_after(tb, state)
        assert g.accepts(bytes(out))
        assert small.is_strictly_decodable(small.to_file(bytes(out)))


def test_completion_finishes_any_state(grammar, codec, streams):
    """completion(state) closes the stream from anywhere (header, mid-code, after a stuffed FF,
    inside a marker) and the finished file decodes strictly; from the start it is the smallest
    picture: every interval minimal."""
    d = streams[0]
    full = grammar.completion(grammar.initial_state())
    assert grammar.accepts(full) and codec.is_strictly_decodable(codec.to_file(full))
    assert len(full) < len(d) // 2
    state = grammar.initial_state()
    checked = 0
    for i, byte in enumerate(d):
        if i % 53 == 0 or d[i - 1] == 0xFF or i < 70:
            tail = grammar.completion(state)
            assert grammar.is_complete(grammar.state_after(tail, state)), i
            if checked % 10 == 0:
                assert codec.is_strictly_decodable(codec.to_file(d[:i] + tail))
            checked += 1
        state = grammar.advance(state, byte)
    assert grammar.completion(state) == b""
