"""Grammar-constrained decoding: a byte-level grammar turned into a mask over token ids.

The sampler (jpeglm/sample/batch.py) keeps one constraint state per sequence. Before each step it
asks `TokenConstraint.mask(state)` for the tokens allowed next and after sampling it calls
`advance(state, token)`. A token is allowed when *every* byte it stands for keeps the stream valid
(BPE tokens through the tokenizer's byte table, walked on the shared `TokenTrie`); the
end-of-sequence token only when the stream may end (`grammar.is_complete`); every other special
token never. A row is finished (`TokenConstraint.is_complete`) when the stream is complete and the
grammar allows no byte after it (JPEG after EOI; an H.264 stream may always go on, so EOS or the
budget ends it).

Grammars follow the protocol of `jpeglm.codecs.grammar` (start_state, step, allowed_bytes,
is_complete, completion, start_offset); states are hashable, so masks are cached per state and a
step costs a dict lookup for the small state spaces of a structural grammar.

End steering: a sequence close to its token budget is steered to a complete file. When the
remaining budget is no larger than a bound on the bytes of the shortest completion, the constraint
switches to forcing that completion (for JPEG: close the current restart interval, then `FF RSTn`
for every missing interval — libjpeg decodes an empty interval as flat gray, without an error —
and `FF D9`). The grammar's `completion(state)` gives the bytes; a structural grammar running
beside (the codec's `structure_grammar()`, e.g. one counting closed restart intervals) gives the bound, which only moves when
an interval closes (see `TokenConstraint.completion_length`), so steering is never too late.
Forced bytes the main grammar refuses stop the steering and sampling goes on under the mask (the
decode report then says what happened).
"""

from __future__ import annotations

import math
import warnings

import numpy as np
import torch

from jpeglm.codecs.grammar import TokenTrie


# --- token-level constraint ------------------------------------------------------------------------
class TokenConstraint:
    """A byte grammar as a mask over token ids (see module docstring).

    `token_bytes[i]` is the byte string of token i, None for specials. States handed out here are
    pairs (grammar state, structural state) so that end steering always knows a bound on the
    completion; `structural` is None for grammars without one.
    """

    # Slack over the minimal remaining intervals: finishing the current block from any state
    # (<= 16 code bits + 11 extra bits + padding) with every byte possibly FF-stuffed.
    SLACK = 24

    def __init__(self, grammar, token_bytes: list[bytes | None], eos_id: int, structural=None):
        self.grammar = grammar
        self.eos_id = int(eos_id)
        self.vocab_size = len(token_bytes)
        # where EOS goes in a mask: nowhere when the id is outside the vocabulary (a tokenizer whose EOS
        # no model can sample, as the throughput benchmarks use), instead of an IndexError
        self._eos_slot = self.eos_id if 0 <= self.eos_id < self.vocab_size else slice(0, 0)
        self.token_bytes = token_bytes
        self.structural = structural
        self.trie = TokenTrie(token_bytes)
        self._per_interval: float | None = None
        self._cache: dict[int, tuple] = {}  # id(numpy mask) -> (mask, tensor, tensor with EOS)
        single = [(t, tb[0]) for t, tb in enumerate(token_bytes) if tb and len(tb) == 1]
        multi = [(t, tb[0]) for t, tb in enumerate(token_bytes) if tb and len(tb) > 1]
        self._single_ids, self._single_bytes = (np.array([x[i] for x in single], np.int64) for i in (0, 1))
        self._multi_ids, self._multi_first = (np.array([x[i] for x in multi], np.int64) for i in (0, 1))
        self._hinted: set = set()  # token keys `pick_hint` answered without a whole mask once
        self._pick_masks: dict = {}  # token_key -> [mask, mask with EOS (once needed), any token allowed]: `pick_mask`
        self._plans: dict = {}  # state -> the rest of the completion being forced (end steering)
        self._forced_next = None  # (state, token, state after it) of the last forced token
        # the grammar builds a whole token mask cheaply (JPEG's table walk): always the whole mask, no partial one
        self.fast_masks = bool(getattr(grammar, "fast_token_masks", False))
        self.cache_hits = 0
        self.cache_misses = 0
        self.steer_failures = 0

    # states ------------------------------------------------------------------------------------
    def start_state(self):
        return (self.grammar.start_state(), self.structural.start_state() if self.structural else None)

    def prompt_offset(self, data: bytes) -> int:
        """Where the grammar starts in a prompt's bytes (JPEG: after the header; H.264: at 0)."""
        return self.grammar.start_offset(data)

    def advance_bytes(self, state, data: bytes):
        """Advance over raw bytes (e.g. the prompt's scan). Raises ValueError on a byte the grammar
        refuses: a prompt that is not a valid scan prefix."""
        g, s = state
        step, sstep = self.grammar.step, self.structural.step if self.structural is not None else None
        for i, b in enumerate(data):
            nxt = step(g, b)
            if nxt is None:
                raise ValueError(f"byte {i} (0x{b:02X}) of the prompt's scan breaks the codec's grammar")
            g = nxt
            if s is not None:
                s = sstep(s, b) or s  # the structural grammar only counts; it never refuses here
        return (g, s)

    def advance(self, state, token_id: int):
        if token_id == self.eos_id:
            return state
        memo = self._forced_next
        if memo is not None and memo[0] is state and memo[1] == token_id:
            return memo[2]
        bs = self.token_bytes[token_id]
        if bs is None:  # a special token under --no-constrain-like use: no bytes
            return state
        return self.advance_bytes(state, bs)

    def may_end(self, state) -> bool:
        """The stream may end here: EOS is allowed."""
        return bool(self.grammar.is_complete(state[0]))

    def is_complete(self, state) -> bool:
        """The stream is finished: complete, and the grammar allows no byte after it."""
        g = state[0]
        return bool(self.grammar.is_complete(g)) and not self.grammar.allowed_bytes(g).any()

    # one token at a time (the sampler's candidate path: no whole mask) -------------------------
    def allows(self, state, token_id: int) -> bool:
        """mask(state)[token_id] without building the mask: a few grammar steps. (The one case
        where they differ, a state that allows no token where the mask allows EOS, the sampler
        reaches only after every token was refused.)"""
        if token_id == self.eos_id:
            return self.may_end(state)
        tb = self.token_bytes[token_id]
        if not tb:
            return False
        g, step = state[0], self.grammar.step
        for b in tb:
            g = step(g, b)
            if g is None:
                return False
        return True

    def only_token(self, state) -> int | None:
        """The token when the grammar leaves exactly one (a restart marker's bytes, the stuffing
        00 after FF, EOI on a byte tokenizer), else None: appended without a model choice."""
        g = state[0]
        b = self.grammar.forced_byte(g)
        if b is None or self.grammar.is_complete(g):
            return None
        node = self.trie.index[0].get(b)  # forced: the one token of that byte, if no longer token starts with it
        if node is None or self.trie.children[node] or len(self.trie.ends[node]) != 1:
            return None
        return self.trie.ends[node][0]

    def pick_mask(self, state, build: bool = True) -> np.ndarray | None:
        """`mask(state)` as a read-only numpy array, for the candidate path (jpeglm/sample/pick.py):
        cached per `grammar.token_key`, and computed without the trie walk's whole rows: the
        one-byte tokens from `allowed_bytes` at once, longer ones by grammar steps down the trie
        below each allowed first byte (JPEG: its table walk). `build=False`: None unless cached."""
        g = state[0]
        key = self.grammar.token_key(g, self.trie.max_len)
        hit = self._pick_masks.get(key)
        if hit is None:
            if not build:  # only a cached one
                return None
            if self.fast_masks:  # the grammar's own walk is cheap (JPEG: table lookups): a fresh array, no trie cache
                m = np.asarray(self.grammar.walk_trie(g, self.trie), bool)
            else:
                arr = self.trie.cached(self.grammar, g)
                m = np.array(arr, bool) if arr is not None else self._steps_mask(g)
            m.flags.writeable = False
            if len(self._pick_masks) > 200_000:  # bound memory on very long runs
                self._pick_masks.clear()
            hit = self._pick_masks[key] = [m, None, bool(m.any())]
        if hit[2] and not self.grammar.is_complete(g):
            return hit[0]
        if hit[1] is None:  # with EOS: built the first time it is needed
            hit[1] = hit[0].copy()
            hit[1][self._eos_slot] = True
            hit[1].flags.writeable = False
        return hit[1]

    def pick_hint(self, state):
        """What the candidate path (jpeglm/sample/pick.py) needs to know about the allowed tokens,
        at the least cost: the whole mask (`pick_mask`) when it is cached, when the vocabulary has
        one-byte tokens only (then it is `allowed_bytes` itself), or when this state's key comes
        back a second time (then it is built and cached); else the pair (tokens known allowed: the
        one-byte ones from `allowed_bytes`; ids of the longer tokens whose first byte is allowed,
        which `allows` decides one by one when needed). Every other token is refused. A grammar
        with `fast_token_masks` (JPEG) always gets the whole mask."""
        g = state[0]
        if not self._multi_ids.size or self.fast_masks:
            return self.pick_mask(state)
        key = self.grammar.token_key(g, self.trie.max_len)
        if key in self._pick_masks or key in self._hinted or self.trie.cached(self.grammar, g) is not None:
            return self.pick_mask(state)
        if len(self._hinted) > 200_000:
            self._hinted.clear()
        self._hinted.add(key)
        ab = self.grammar.allowed_bytes(g)
        lower = np.zeros(self.vocab_size, bool)
        lower[self._single_ids] = ab[self._single_bytes]
        if self.grammar.is_complete(g):
            lower[self._eos_slot] = True
        return lower, self._multi_ids[ab[self._multi_first]]

    def _steps_mask(self, g) -> np.ndarray:
        """bool[vocab]: the tokens whose bytes the grammar takes in sequence from `g` (== the trie
        mask, EOS not included)."""
        trie, step = self.trie, self.grammar.step
        m = np.zeros(self.vocab_size, bool)
        ab = self.grammar.allowed_bytes(g)
        if not trie.levels:
            return m
        _, byte, end_pos, end_tid = trie.levels[0]
        m[end_tid] = ab[byte[end_pos]]
        if not self._multi_ids.size:  # one-byte tokens only: done
            return m
        children, ends = trie.children, trie.ends
        stack = [(child, step(g, b)) for b, child in children[0] if children[child] and ab[b]]
        while stack:
            node, st = stack.pop()
            for b, child in children[node]:
                nxt = step(st, b)
                if nxt is None:
                    continue
                if ends[child]:
                    m[ends[child]] = True
                if children[child]:
                    stack.append((child, nxt))
        return m

    # masks -------------------------------------------------------------------------------------
    def cached_mask(self, state) -> torch.Tensor | None:
        """`mask(state)` when the grammar state's mask is already cached, else None (no walk)."""
        arr = self.trie.cached(self.grammar, state[0])
        return None if arr is None else self._tensor(state[0], arr)

    def mask(self, state) -> torch.Tensor:
        """bool[vocab]: the tokens allowed next. Never all False: a state the grammar leaves no
        byte in (should not happen) allows EOS so the sequence ends instead of the sampler dying."""
        g = state[0]
        return self._tensor(g, self.trie.mask(self.grammar, g))  # the same array object per cache key

    def _tensor(self, g, arr: np.ndarray) -> torch.Tensor:
        hit = self._cache.get(id(arr))
        if hit is None or hit[0] is not arr:
            self.cache_misses += 1
            t = torch.from_numpy(np.array(arr, dtype=bool))
            with_eos = t.clone()
            with_eos[self._eos_slot] = True
            if len(self._cache) > 100_000:
                self._cache.clear()
            hit = self._cache[id(arr)] = (arr, t, with_eos, bool(t.any()))  # `arr` kept: its id stays unique
        else:
            self.cache_hits += 1
        return hit[2] if (not hit[3] or self.grammar.is_complete(g)) else hit[1]

    # end steering --------------------------------------------------------------------------------
    def completion(self, state) -> bytes | None:
        plan = self._plans.get(state)  # the rest of a completion already being forced
        return plan if plan is not None else bytes(self.grammar.completion(state[0]))

    def completion_length(self, state) -> int | None:
        """An upper bound on len(completion(state)) that changes only when a restart interval
        closes. Steering starts when the token budget left falls to this bound; an *exact*
        length would be too late, since one freely sampled token can lengthen the shortest
        completion by several bytes (e.g. by starting a long Huffman code)."""
        g, s = state
        if self.grammar.is_complete(g):
            return 0
        if s is None:
            return len(self.grammar.completion(g)) + self.SLACK
        if self._per_interval is None:  # bytes of one minimal interval + its marker
            start = self.grammar.start_state()
            self._per_interval = len(self.grammar.completion(start)) / (self.structural.n_rst + 1)
        left = self.structural.n_rst + 1 - s.intervals_closed
        return math.ceil(left * self._per_interval) + self.SLACK

    def _longest_token(self, data: bytes) -> int | None:
        """The longest token whose bytes start `data` (of equal byte strings the last id, as
        `TokenTrie.longest_prefix` takes), whether or not the grammar allows it."""
        index, ends, node, best = self.trie.index, self.trie.ends, 0, None
        for b in data:
            node = index[node].get(b)
            if node is None:
                break
            if ends[node]:
                best = ends[node][-1]
        return best

    def forced_token(self, state) -> int | None:
        """The token that starts the shortest completion (the longest token whose bytes are a
        prefix of it and that the grammar allows), or None when there is none."""
        comp = self.completion(state)
        if not comp:
            return None if comp is None else self.eos_id
        best = self._longest_token(comp)  # the completion's bytes are grammatical: one check, usually
        if best is None or not self.allows(state, best):
            best = self.trie.longest_prefix(comp, lambda t: self.allows(state, t))
        if best is not None and best != self.eos_id:
            # the next state's completion is the rest of this one: computed once per steered row
            if len(self._plans) > 10_000:
                self._plans.clear()
            nxt = self.advance(state, best)
            self._forced_next = (state, best, nxt)  # the sampler's advance over this token next: no second walk
            self._plans[nxt] = comp[len(self.token_bytes[best]):]
        if best is None:
            self.steer_failures += 1
            if self.steer_failures == 1:
                warnings.warn("end steering: the grammar refuses the completion bytes; sampling on under the mask")
        return best


def constraint_for(codec, tokenizer, vocab_size: int | None = None, skip=()) -> TokenConstraint | None:
    """The token constraint for a codec + tokenizer: the codec's own `grammar()` (and its
    `structure_grammar()` for end steering) over the tokenizer's byte table, or None when the codec
    has none (code codecs get `code_only_mask` instead) or its name is in `skip` (e.g. to sample one
    codec unconstrained while the others keep their grammars)."""
    if getattr(tokenizer, "kind", "byte") == "code" or getattr(codec, "name", None) in set(skip):
        return None
    grammar = codec.grammar() if hasattr(codec, "grammar") else None
    if grammar is None:
        return None
    structural = codec.structure_grammar() if hasattr(codec, "structure_grammar") else None
    return TokenConstraint(grammar, token_bytes_table(tokenizer, vocab_size), tokenizer.eos_id, structural)


def token_bytes_table(tokenizer, vocab_size: int | None = None) -> list[bytes | None]:
    """bytes of every token id (None for specials), from the tokenizer's own table when it has one,
    padded with None up to the model's `vocab_size` (embedding rows beyond the tokenizer are never
    sampled under the constraint)."""
    if hasattr(tokenizer, "token_bytes_table"):
        table = list(tokenizer.token_bytes_table())
    else:
        table = [tokenizer.token_bytes(i) for i in range(tokenizer.vocab_size)]
    if vocab_size is not None and vocab_size > len(table):
        table += [None] * (vocab_size - len(table))
    return table


def code_only_mask(tokenizer, codec, vocab_size: int | None = None) -> torch.Tensor | None:
    """For code codecs (vq, pixel): allow the code tokens only - not BOS/pad/extras, and not EOS:
    a picture has a fixed number of codes and the sampler ends it after the last one, so an EOS
    before that could only cut the picture short (the decoder would then fill the rest)."""
    if getattr(tokenizer, "kind", None) != "code":
        return None
    m = torch.zeros(max(vocab_size or 0, tokenizer.vocab_size), dtype=torch.bool)
    first = 4  # CONTRACTS.md: code ids start after the four specials
    m[first : first + codec.num_codes] = True
    return m


__all__ = ["TokenConstraint", "code_only_mask", "constraint_for", "token_bytes_table"]
