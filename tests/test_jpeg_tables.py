"""The JPEG scan grammar's lookup tables (jpeglm/codecs/jpeg_tables.py) against the per-bit rules they
are built from (`JpegScanGrammar._step`): nibble by nibble, byte by byte through the whole outer
automaton (stuffing, markers, EOI), and whole token masks for byte and BPE vocabularies, along random
walks that also follow real scans."""

from __future__ import annotations

import numpy as np
import pytest

from jpeglm.codecs.jpeg import JpegCodec, JpegParams, header_length
from jpeglm.codecs.jpeg_grammar import (
    DONE,
    END,
    HEADER,
    MARK_CODE,
    MARK_FF,
    SCAN,
    STUFF,
    JpegScanGrammar,
)
from jpeglm.codecs.jpeg_tables import DEAD, ENDB, PAD, DecoderTables, TokenProgram
from jpeglm.sample.constrain import constraint_for
from jpeglm.tokenizer import BpeTokenizer, ByteTokenizer


@pytest.fixture(scope="module", params=[1, 2], ids=["rmb1", "rmb2"])
def codec(request):
    return JpegCodec(JpegParams(size=64, restart_marker_blocks=request.param))


@pytest.fixture(scope="module")
def streams(codec, photos):
    return [codec.encode(p) for p in photos]


def _bits(g, d: tuple, value: int, n: int) -> tuple | None:
    for j in range(n - 1, -1, -1):
        if d is None:
            return None
        d = g._step(d, (value >> j) & 1)
    return d


def ref_step(g: JpegScanGrammar, state: tuple, byte: int) -> tuple | None:
    """`JpegScanGrammar.step` spelled out with eight per-bit `_step`s on decoded tuples (no table)."""
    stage, n, d = state
    t = g.tables
    if stage == SCAN:
        nxt = _bits(g, t.decode(d), byte, 8)
        if nxt is None:
            return None
        nd = END if nxt[1] == 4 else t.encode(nxt)
        if byte == 0xFF:
            return (STUFF, n, nd)
        return (MARK_FF, n + 1, 0) if nd == END else (SCAN, n, nd)
    if stage == STUFF:
        return None if byte else ((MARK_FF, n + 1, 0) if d == END else (SCAN, n, d))
    if stage == MARK_FF:
        return (MARK_CODE, n, 0) if byte == 0xFF else None
    if stage == MARK_CODE:
        if n == g.num_intervals:
            return (DONE, n, 0) if byte == 0xD9 else None
        return (SCAN, n, g._d_start) if byte == 0xD0 + (n - 1) % 8 else None
    if stage == HEADER:
        return g.step(state, byte)
    return None


def test_nibble_tables_equal_the_bit_rules_over_a_random_walk(codec):
    """Every state a random bit walk meets: its id round-trips, and the high / low nibble tables give
    what four `_step`s give (low: an interval ending exactly at the byte boundary is ENDB)."""
    g = JpegScanGrammar(codec)
    t = DecoderTables(g)
    rng = np.random.default_rng(0)
    start = (0, 0, 0, 0, g.mcus_per_interval)
    d, seen = start, set()
    for _ in range(20_000):
        i = t.encode(d)
        assert t.decode(i) == d
        if i not in seen:
            seen.add(i)
            for v in range(16):
                want = _bits(g, d, v, 4)
                assert t.hi[i, v] == t.encode(want), (d, v)
                assert t.lo[i, v] == (ENDB if want is not None and want[1] == 4 else t.encode(want)), (d, v)
        nxt = [s for s in (g._step(d, b) for b in rng.permutation(2)) if s is not None]
        d = start if not nxt or nxt[0][1] == 4 else nxt[0]
    assert len(seen) > 2000
    assert t.hi[PAD, 15] == PAD and t.lo[PAD, 15] == ENDB and t.hi[PAD, 7] == DEAD  # padding: 1-bits only


def test_table_step_equals_the_bit_level_grammar_on_random_walks(codec, streams):
    """`step` and `allowed_bytes` (tables) == `ref_step` (eight per-bit steps) for all 256 bytes, along
    walks through real scans (markers, stuffing, EOI) and random allowed bytes."""
    g = JpegScanGrammar(codec)
    rng = np.random.default_rng(1)
    n_states = 0
    for s in streams[:2] + [b""] * 3:
        st = g.start_state()
        data = s[header_length(s):] if s else b""
        for pos in range(6000):
            want = [ref_step(g, st, b) for b in range(256)]
            assert [g.step(st, b) for b in range(256)] == want
            assert np.array_equal(g.allowed_bytes(st), [w is not None for w in want])
            n_states += 1
            if g.is_complete(st):
                break
            if pos < len(data) and rng.random() < 0.9:
                b = data[pos]
            else:
                data = b""
                b = int(rng.choice(np.flatnonzero([w is not None for w in want])))
            st = want[b]
            assert st is not None
    assert n_states > 3000


@pytest.mark.parametrize("tail", [0, 16, 10**9], ids=["vector", "default", "python"])
@pytest.mark.parametrize("kind", ["byte", "bpe"])
def test_token_masks_equal_the_bit_level_grammar(codec, streams, kind, tail, monkeypatch):
    """The table walk's token mask (`walk_trie` from every kind of state, cached per key by
    `pick_mask`) == each token checked by `ref_step` byte by byte, for a byte and a BPE vocabulary with
    extra tokens across stuffing and markers; the columns after the first byte all in numpy, the
    default split, or all in Python (`TokenProgram.TAIL`)."""
    monkeypatch.setattr(TokenProgram, "TAIL", tail)
    tok = ByteTokenizer() if kind == "byte" else BpeTokenizer.train(streams, vocab_size=300)
    c = constraint_for(codec, tok)
    if kind == "bpe":  # tokens that cross an FF 00, a marker and an interval's end, and EOI
        extra = [b"\xff\x00", b"\xff\x00\x12", b"\x00\xff\xd0", b"\xff\xd0", b"\xff\xd1\x85", b"\xff\xd9",
                 b"\xff\xff", b"\xfe\xff\x00\xff", b"\xff\x00\xff\xd0"]
        c = type(c)(c.grammar, c.token_bytes + extra, c.eos_id, c.structural)
    g = c.grammar

    def ref_mask(st):
        m = np.zeros(c.vocab_size, bool)
        for t, tb in enumerate(c.token_bytes):
            s = st[0]
            for b in tb or b"":
                s = ref_step(g, s, b)
                if s is None:
                    break
            m[t] = bool(tb) and s is not None
        m[c.eos_id] |= c.may_end(st) or not m.any()
        return m

    rng = np.random.default_rng(2)
    n_masks = 0
    for s in streams[:2]:
        st, data = c.start_state(), s[header_length(s):]
        while not c.is_complete(st) and n_masks < 1500:
            got = c.pick_mask(st)
            assert np.array_equal(got, ref_mask(st)), st
            n_masks += 1
            follow = [t for t in np.flatnonzero(got) if c.token_bytes[t] and data.startswith(c.token_bytes[t])]
            if follow and rng.random() < 0.8:
                t = int(max(follow, key=lambda t: len(c.token_bytes[t])))
            else:
                t = int(rng.choice(np.flatnonzero(got)))
            if t == c.eos_id:
                break
            data = data[len(c.token_bytes[t]):] if data.startswith(c.token_bytes[t]) else b""
            st = c.advance(st, t)
    assert n_masks > 300


@pytest.mark.parametrize("tail", [16, 10**9], ids=["default", "python"])
def test_token_masks_across_an_interval_end(codec, streams, tail, monkeypatch):
    """Every byte followed by FF, FF 00, FF RSTn, FF EOI, 00 as a token: where the byte ends the
    restart interval (ENDB in the tables) only the marker may follow, elsewhere only the stuffing;
    the table walk's mask == `ref_step` byte by byte, along a walk through a real scan."""
    monkeypatch.setattr(TokenProgram, "TAIL", tail)
    tok = ByteTokenizer()
    c = constraint_for(codec, tok)
    suffixes = [b"\xff", b"\xff\x00", b"\xff\x00\xff", b"\xff\xd0", b"\xff\xd1", b"\xff\xd9", b"\x00"]
    n0 = len(c.token_bytes)
    table = c.token_bytes + [bytes([b]) + s for b in range(256) for s in suffixes]
    c = type(c)(c.grammar, table, c.eos_id, c.structural)
    g, t = c.grammar, c.grammar.tables
    byte_id = {tb[0]: i for i, tb in enumerate(table[:n0]) if tb}
    n_end = 0
    st, data = c.start_state(), streams[0][header_length(streams[0]):]
    for pos in range(300):
        if st[0][0] == SCAN:
            n_end += sum(t.byte(st[0][2], b) == ENDB for b in range(256))
        got = c.pick_mask(st)
        for tid in np.flatnonzero(got != c.trie.walk(g, st[0])).tolist():
            raise AssertionError((pos, st, table[tid]))
        for tid, tb in enumerate(table[n0:], n0):
            s = st[0]
            for b in tb:
                s = ref_step(g, s, b) if s is not None else None
            assert got[tid] == (s is not None), (pos, st, tb)
        st = c.advance(st, byte_id[data[pos]])
    assert n_end > 20  # interval ends were met
