"""The constrained choice without whole masks (jpeglm/sample/pick.py): for the same noise it picks the
token mask -> top-k -> argmax(noisy) picks, it samples softmax over the allowed top-k, forced tokens
skip the draw, and a sample does not depend on the batch size."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from jpeglm.codecs.jpeg import JpegCodec, JpegParams, header_length
from jpeglm.sample import SamplerConfig, filter_logits, generate
from jpeglm.sample.constrain import TokenConstraint, constraint_for
from jpeglm.sample.pick import gumbel, pick_allowed, reference_pick
from jpeglm.tokenizer import BpeTokenizer, ByteTokenizer


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


@pytest.mark.parametrize("top_k", [0, 1, 3, 20, 50])
def test_same_token_as_mask_first_for_fixed_noise(top_k):
    g = torch.Generator().manual_seed(top_k)
    for trial in range(300):
        vocab = int(torch.randint(5, 120, (1,), generator=g))
        scaled = torch.randn(vocab, generator=g) * float(torch.rand(1, generator=g) * 4)
        if trial % 5 == 0:
            scaled[torch.randint(0, vocab, (3,), generator=g)] = float("-inf")  # e.g. a code mask
        frac = float(torch.rand(1, generator=g))
        mask = torch.rand(vocab, generator=g) < frac
        mask[int(torch.randint(0, vocab, (1,), generator=g))] = True
        if not torch.isfinite(scaled[mask]).any():
            continue
        noise = gumbel(vocab, g)
        want = reference_pick(scaled, noise, mask, top_k)
        calls: list[int] = []
        allowed = mask.tolist()

        def allows(t, calls=calls, allowed=allowed):
            calls.append(t)
            return allowed[t]

        assert pick_allowed(scaled, noise, allows, top_k) == want
        assert len(set(calls)) == len(calls)  # each token checked at most once per pick
        assert pick_allowed(scaled, noise, allows, top_k, lambda m=mask: m) == want  # threshold from a cached mask
        assert pick_allowed(scaled, noise, None, top_k, mask=mask.numpy()) == want  # the whole mask up front
    # nothing allowed: None (the sampler then ends the row)
    assert pick_allowed(torch.zeros(4), gumbel(4, g), lambda t: False, 2) is None


@pytest.mark.parametrize("top_k", [0, 1, 3, 20, 50])
def test_same_token_from_a_partial_mask(top_k):
    """A partial mask (tokens known allowed + ids `allows` decides; the BPE hint of a fresh state)
    gives the mask-first token too."""
    g = torch.Generator().manual_seed(100 + top_k)
    for _ in range(300):
        vocab = int(torch.randint(5, 120, (1,), generator=g))
        scaled = torch.randn(vocab, generator=g) * float(torch.rand(1, generator=g) * 4)
        mask = torch.rand(vocab, generator=g) < float(torch.rand(1, generator=g))
        mask[int(torch.randint(0, vocab, (1,), generator=g))] = True
        known = mask & (torch.rand(vocab, generator=g) < 0.5)
        unknown = torch.nonzero((~known) & ((torch.rand(vocab, generator=g) < 0.7) | mask)).flatten()
        noise = gumbel(vocab, g)
        want = reference_pick(scaled, noise, mask, top_k)
        allowed = mask.tolist()
        calls: list[int] = []

        def allows(t, calls=calls, allowed=allowed):
            calls.append(t)
            return allowed[t]

        hint = (known.numpy(), unknown.numpy())
        assert pick_allowed(scaled, noise, allows, top_k, lambda h=hint: h) == want
        assert len(set(calls)) == len(calls)


def test_samples_the_constrained_distribution():
    """Empirical frequencies over 20k draws match softmax over the allowed top-k (chi-square)."""
    logits = torch.tensor([2.0, 1.5, 0.2, -0.3, 1.0, 0.0, -1.0])
    mask = torch.tensor([False, True, True, False, True, True, True])
    top_k, temperature, n = 3, 0.8, 20000
    want = filter_logits(logits.masked_fill(~mask, float("-inf"))[None], temperature, top_k, 1.0).softmax(-1)[0]
    g = torch.Generator().manual_seed(0)
    scaled = logits / temperature
    counts = np.zeros(len(logits))
    for _ in range(n):
        counts[pick_allowed(scaled, gumbel(len(logits), g), lambda t: bool(mask[t]), top_k)] += 1
    expected = want.numpy() * n
    assert counts[expected == 0].sum() == 0  # never a refused or cut token
    chi2 = float((((counts - expected) ** 2)[expected > 0] / expected[expected > 0]).sum())
    assert chi2 < 16.3  # 3 cells -> 2 dof; p = 0.0003


@pytest.fixture(scope="module")
def codec():
    return JpegCodec(JpegParams(size=64))


@pytest.fixture(scope="module")
def streams(codec, photos):
    return [codec.encode(p) for p in photos]


def tiny_llama(vocab_size: int, seed: int = 0):
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(seed)
    cfg = LlamaConfig(vocab_size=vocab_size, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                      num_attention_heads=2, num_key_value_heads=2, max_position_embeddings=1024,
                      bos_token_id=1, eos_token_id=2, pad_token_id=3)
    return LlamaForCausalLM(cfg).eval()


def test_forced_tokens(codec, streams):
    byte = ByteTokenizer()
    c = constraint_for(codec, byte)
    st = c.advance_bytes(c.start_state(), b"\x10\xff")  # after an entropy-coded FF only the stuffing 00
    assert c.only_token(st) == byte.encode(b"\x00", bos=False, eos=False)[0]
    assert c.only_token(c.start_state()) is None  # entropy-coded data: a real choice
    data = streams[0]
    hl = header_length(data)
    end = c.advance_bytes(c.start_state(), data[hl:-1])  # inside EOI: D9 is the only byte
    assert c.only_token(end) == byte.encode(b"\xd9", bos=False, eos=False)[0]
    # a BPE vocabulary with tokens that start with 00 leaves a choice after FF: not forced
    bpe = BpeTokenizer.train(streams, vocab_size=300)
    cb = constraint_for(codec, bpe)
    starts_00 = [t for t, tb in enumerate(cb.token_bytes) if tb and len(tb) > 1 and tb[0] == 0]
    sb = cb.advance_bytes(cb.start_state(), b"\x10\xff")
    assert cb.only_token(sb) is None if starts_00 else cb.only_token(sb) is not None


def test_forced_tokens_skip_the_draw(codec, streams, monkeypatch):
    """In the loop a token the grammar forces is appended without a draw; every other (not
    steered) token is drawn once. The prompt stops right before the last restart marker, whose two
    bytes are then forced."""
    from jpeglm.sample import batch

    data = streams[1]
    last_rst = max(i for i in range(header_length(data), len(data) - 1)
                   if data[i] == 0xFF and 0xD0 <= data[i + 1] <= 0xD7)

    byte = ByteTokenizer()
    drawn, forced = [], []
    real_pick, real_only = batch.pick_allowed, TokenConstraint.only_token
    monkeypatch.setattr(batch, "pick_allowed", lambda *a, **k: drawn.append(1) or real_pick(*a, **k))
    def only_token(self, st):
        t = real_only(self, st)
        forced.append(t)
        return t

    monkeypatch.setattr(TokenConstraint, "only_token", only_token)
    model = tiny_llama(byte.vocab_size)
    samples = generate(model, byte, codec, [data[:last_rst]], 2, SamplerConfig(max_new_tokens=120, batch_size=2, seed=4))
    n_forced = sum(t is not None for t in forced)
    assert forced[:4] == [0xFF + 4, 0xFF + 4, data[last_rst + 1] + 4, data[last_rst + 1] + 4]  # FF RSTn, both rows
    assert n_forced >= 4
    assert len(drawn) == len(forced) - n_forced  # a draw exactly where the grammar forced nothing
    assert len(forced) <= sum(s.n_new_tokens for s in samples)  # steered tokens ask neither
    for s in samples:
        assert codec.is_strictly_decodable(codec.to_file(s.symbols)) and s.finish == "eoi"


def test_same_seed_same_file_at_batch_1_and_3(codec, streams):
    bpe = BpeTokenizer.train(streams, vocab_size=300)
    model = tiny_llama(bpe.vocab_size, seed=2)
    prompts = [codec.prompt(streams[2], 0.25)]
    run = lambda bs: [bytes(s.symbols) for s in generate(model, bpe, codec, prompts, 3, SamplerConfig(max_new_tokens=120, batch_size=bs, seed=11))]
    a = run(1)
    assert a == run(3)
    assert len(set(a)) == 3
    assert all(codec.is_strictly_decodable(codec.to_file(x)) for x in a)


@pytest.mark.parametrize("kind", ["byte", "bpe"])
def test_pick_mask_equals_the_fresh_mask_over_a_random_walk(codec, streams, kind):
    """The candidate path's per-state mask cache (`pick_mask`: one-byte tokens from `allowed_bytes`,
    longer ones by grammar steps) equals the whole trie mask computed afresh (the vectorised walk over whole rows, uncached), before and after it is
    cached, along a random walk through real and random bytes (markers, stuffing and the end too)."""
    tok = ByteTokenizer() if kind == "byte" else BpeTokenizer.train(streams, vocab_size=300)
    c = constraint_for(codec, tok)
    rng = np.random.default_rng(0)
    st, n, visited, tokens = c.start_state(), 0, [], []
    data = streams[0][header_length(streams[0]):]
    while not c.is_complete(st) and n < 400:
        want = np.array(c.grammar.walk_trie(st[0], c.trie), bool)  # uncached (JPEG: the table walk)
        assert np.array_equal(want, c.trie.walk(c.grammar, st[0]))  # == the generic depth-first walk by `step`
        want[c.eos_id] |= c.may_end(st) or not want.any()
        got = c.pick_mask(st)
        assert np.array_equal(got, want), n
        assert np.array_equal(c.pick_mask(st), want) and not got.flags.writeable  # cached, read only
        assert np.array_equal(got, c.mask(st).numpy())  # the mask path agrees
        visited.append(st)
        allowed = np.flatnonzero(got)
        if n < 200 and rng.random() < 0.5:  # follow the real scan a while (its markers and stuffing)
            nxt = [t for t in allowed if c.token_bytes[t] and data.startswith(c.token_bytes[t])]
            t = int(nxt[-1]) if nxt else int(rng.choice(allowed))
        else:
            t = int(rng.choice(allowed))
        if c.token_bytes[t] and data.startswith(c.token_bytes[t]):
            data = data[len(c.token_bytes[t]):]
        else:
            data = b""
        tokens.append(t)
        st = c.advance(st, t)
        n += 1
    assert len(visited) > 50
    if kind == "bpe":  # a fresh constraint's hints along the same walk: known <= mask <= known + unknown
        c2 = constraint_for(codec, tok)
        c2.fast_masks = False  # the partial hints, for grammars without a cheap whole mask (JPEG has one)
        assert c.pick_hint(visited[-1]) is c.pick_mask(visited[-1])  # with it: always the whole mask
        st2, n_partial = c2.start_state(), 0
        for st, t in zip(visited, tokens):
            hint = c2.pick_hint(st2)
            want = c.pick_mask(st)
            if isinstance(hint, tuple):
                n_partial += 1
                possible = hint[0].copy()
                possible[hint[1]] = True
                assert not (hint[0] & ~want).any() and not (want & ~possible).any()
            else:
                assert np.array_equal(hint, want)
            assert isinstance(c2.pick_hint(st2), np.ndarray)  # the key's second visit: the whole mask
            st2 = c2.advance(st2, t)
        assert n_partial > 20
    for st in visited[::7]:  # still equal once everything is cached
        want = np.array(c.grammar.walk_trie(st[0], c.trie), bool)  # uncached, whole rows
        want[c.eos_id] |= c.may_end(st) or not want.any()
        assert np.array_equal(c.pick_mask(st), want)


def test_jpeg_byte_mask_without_the_row_equals_the_row(codec, streams):
    """`JpegScanGrammar.allowed_bytes` in the entropy-coded data (from the nibble tables) equals
    what `step` accepts."""
    from jpeglm.codecs.jpeg_grammar import SCAN, JpegScanGrammar

    g = JpegScanGrammar(codec)
    rng = np.random.default_rng(1)
    st = g.start_state()
    for _ in range(300):
        m = g.allowed_bytes(st)
        assert np.array_equal(m, [g.step(st, b) is not None for b in range(256)])
        if st[0] == SCAN:  # the tables' own byte mask says the same
            assert np.array_equal(g.tables.byte_mask(st[2]), m)
        allowed = np.flatnonzero(m)
        if not len(allowed):
            break
        st = g.step(st, int(rng.choice(allowed)))


@pytest.mark.parametrize("kind", ["byte", "bpe"])
def test_an_eos_id_outside_the_vocabulary_runs_the_budget(codec, streams, kind):
    """A tokenizer whose EOS no model can sample (the throughput benchmarks' NoEos) is a valid input:
    the constraint's masks leave EOS out instead of raising IndexError, and every row runs its budget."""

    class NoEos:
        def __init__(self, tok):
            self._tok, self.eos_id = tok, 1 << 30

        def __getattr__(self, name):
            return getattr(self._tok, name)

    tok = ByteTokenizer() if kind == "byte" else BpeTokenizer.train(streams, vocab_size=300)
    model = tiny_llama(tok.vocab_size, seed=3)
    samples = generate(model, NoEos(tok), codec, [codec.prompt(streams[0], 0.25)], 2,
                       SamplerConfig(max_new_tokens=40, batch_size=2, seed=5))
    assert [s.n_new_tokens for s in samples] == [40, 40]
