"""One grammar protocol, one token trie: the JPEG scan grammar, the structural restart grammar and
the H.264 NAL grammar all implement `jpeglm.codecs.grammar`, and one `TokenTrie` gives each of them
token masks equal to a brute-force byte-by-byte check."""

from __future__ import annotations

import numpy as np
import pytest

from jpeglm.codecs.avc import AvcCodec, AvcParams
from jpeglm.codecs.avc_grammar import AvcNalGrammar
from jpeglm.codecs.grammar import ByteGrammar, Grammar, GrammarError, TokenTrie
from jpeglm.codecs.jpeg import JpegCodec, JpegParams
from jpeglm.codecs.jpeg_grammar import JpegScanGrammar, RestartGrammar
from jpeglm.sample.constrain import TokenConstraint


@pytest.fixture(scope="module")
def jpeg():
    return JpegCodec(JpegParams(size=64))


@pytest.fixture(scope="module")
def avc():
    return AvcCodec(AvcParams(width=64, height=48, frames=3, gop=3, fps=10))


@pytest.fixture(scope="module")
def grammars(jpeg, avc):
    return {"jpeg": JpegScanGrammar(jpeg), "restart": RestartGrammar.for_codec(jpeg), "avc": AvcNalGrammar(avc)}


@pytest.fixture(scope="module")
def streams(jpeg, avc, photos):
    j = jpeg.encode(photos[0])
    clip = np.stack([np.asarray(photos[1])[:48, :64]] * 3)
    return {"jpeg": j, "restart": j, "avc": avc.encode(clip)}


def _vocab(streams) -> list[bytes | None]:
    """Specials, every byte, and multi-byte chunks of both kinds of stream (BPE-like)."""
    rng = np.random.default_rng(0)
    toks: list[bytes | None] = [None] * 4 + [bytes([b]) for b in range(256)]
    for data in (streams["jpeg"], streams["avc"]):
        for _ in range(150):
            i = int(rng.integers(0, len(data) - 8))
            toks.append(data[i : i + int(rng.integers(2, 7))])
    toks += [b"\xff\x00", b"\xff\xd0", b"\xff\xd9", b"\x00\x00\x00\x01", b"\x00\x00\x03\x01"]
    return toks


def _brute(g, state, toks) -> np.ndarray:
    out = np.zeros(len(toks), bool)
    for tid, tb in enumerate(toks):
        if not tb:
            continue
        s = state
        for b in tb:
            s = g.step(s, b)
            if s is None:
                break
        out[tid] = s is not None
    return out


@pytest.mark.parametrize("name", ["jpeg", "restart", "avc"])
def test_every_grammar_follows_the_protocol(grammars, streams, name):
    g = grammars[name]
    assert isinstance(g, Grammar) and isinstance(g, ByteGrammar)
    data = streams[name]
    scan = data[g.start_offset(data):]
    assert (g.start_offset(data) > 0) == (name != "avc")  # JPEG grammars start after the header
    s = g.start_state()
    for b in scan:
        assert g.allowed_bytes(s)[b]
        s = g.advance(s, b)
    assert g.is_complete(s)
    # a cut mid-stream: completion() finishes it; a refused byte raises the shared GrammarError
    cut = g.state_after(scan[: len(scan) // 2], g.start_state())
    assert not g.is_complete(cut)
    assert g.is_complete(g.state_after(g.completion(cut), cut))
    refused = int(np.flatnonzero(~g.allowed_bytes(cut))[0]) if (~g.allowed_bytes(cut)).any() else None
    if refused is not None:
        with pytest.raises(GrammarError):
            g.advance(cut, refused)


def test_one_trie_serves_every_grammar(grammars, streams):
    """The same TokenTrie object gives every grammar its token masks (the JPEG grammar walks it
    vectorised, the others depth first), each equal to a brute-force check, and cached per grammar."""
    toks = _vocab(streams)
    trie = TokenTrie(toks)
    for name, g in grammars.items():
        data = streams[name]
        scan = data[g.start_offset(data):]
        s, checked = g.start_state(), 0
        for i, b in enumerate(scan):
            if i % max(1, len(scan) // 12) == 0 or i > len(scan) - 4:
                m = trie.mask(g, s)
                assert np.array_equal(m, _brute(g, s, toks)), (name, i)
                assert trie.mask(g, s) is m and g.allowed_token_mask(s, trie) is m  # one cache
                assert m.any()
                checked += 1
            s = g.advance(s, b)
        assert checked >= 10
    # caches of different grammars do not mix: same trie, different answers at their starts
    starts = {n: trie.mask(g, g.start_state()) for n, g in grammars.items()}
    assert not np.array_equal(starts["jpeg"], starts["avc"])


@pytest.mark.parametrize("name", ["jpeg", "avc"])
def test_constraint_runs_any_grammar(grammars, streams, name):
    """TokenConstraint knows no codec: the tokens of a real stream pass its mask one by one, EOS is
    allowed exactly where the grammar may end, and a row is finished only when nothing may follow
    (after JPEG's EOI; an H.264 stream may go on)."""
    toks = _vocab(streams)
    eos = 2
    g = grammars[name]
    structural = grammars["restart"] if name == "jpeg" else None
    c = TokenConstraint(g, toks, eos, structural)
    data = streams[name]
    scan = data[c.prompt_offset(data):]
    st = c.start_state()
    for b in scan:  # byte tokens: ids 4..259
        m = c.mask(st)
        assert bool(m[4 + b]) and bool(m[eos]) == c.may_end(st)
        st = c.advance(st, 4 + b)
    assert c.may_end(st) and bool(c.mask(st)[eos])
    assert c.is_complete(st) == (name == "jpeg")
    # end steering: the forced token starts the completion from a mid-stream state
    mid = c.advance_bytes(c.start_state(), scan[: len(scan) // 3])
    comp = c.completion(mid)
    tok = c.forced_token(mid)
    assert tok is not None and comp.startswith(toks[tok]) and bool(c.mask(mid)[tok])
    assert c.may_end(c.advance_bytes(mid, comp))
