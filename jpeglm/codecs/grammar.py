"""The byte-grammar protocol every codec grammar implements, and the one token trie they share. No torch.

A grammar is a deterministic automaton over the bytes of a codec's modelled stream:
- `start_state()`: the state at `start_offset(data)` of a stream (JPEG: after the header;
  H.264: its first byte); `initial_state()` the state before the stream's first byte;
- `step(state, byte) -> state | None`: the next state, None when the byte is refused;
- `allowed_bytes(state) -> bool[256]`: what `step` accepts (a cached read-only array);
- `is_complete(state)`: the stream may end here (a sampler then allows EOS);
- `completion(state) -> bytes`: a short byte string after which the stream is complete;
- `forced_byte(state) -> int | None`: the only byte allowed, when cheap to know (else None).
States are immutable, hashable values (tuples, frozen dataclasses): masks are cached per state.

`Grammar` (an ABC) gives every implementation the shared mechanics on top of `step`: `advance`
(raises `GrammarError`), `state_after`, `first_error`, `accepts`, `token_allowed`, a default
per-state `allowed_bytes`, and token masks through `TokenTrie`.

`TokenTrie` is the one trie over a vocabulary's byte strings (BPE tokens of any length, byte
tokens, None for specials). `trie.mask(grammar, state)` is the bool mask of the tokens whose every
byte the grammar accepts in sequence from `state`, cached per (grammar, `grammar.token_key(state)`);
a grammar may replace the depth-first walk with a vectorised one (`walk_trie`, see JpegScanGrammar),
over the same trie's level arrays. `trie.longest_prefix(data, allowed)` is the longest allowed token
that starts `data` (end steering).
"""

from __future__ import annotations

import weakref
from abc import ABC, abstractmethod
from typing import Any, ClassVar, Protocol, runtime_checkable

import numpy as np

State = Any  # hashable and immutable; each grammar's own kind


class GrammarError(ValueError):
    """A byte the grammar does not allow in this state."""


@runtime_checkable
class ByteGrammar(Protocol):
    """What a sampler needs from a grammar (see the module docstring)."""

    def start_state(self) -> State: ...

    def step(self, state: State, byte: int) -> State | None: ...

    def allowed_bytes(self, state: State) -> np.ndarray: ...

    def is_complete(self, state: State) -> bool: ...

    def completion(self, state: State) -> bytes: ...

    def forced_byte(self, state: State) -> int | None: ...

    def start_offset(self, data: bytes) -> int: ...


class Grammar(ABC):
    """Base class of the codec grammars: implement `start_state`, `step`, `is_complete` and
    `completion`; the rest follows from them (override `allowed_bytes`, `token_key` or `walk_trie`
    where a grammar knows a faster way)."""

    @abstractmethod
    def start_state(self) -> State: ...

    @abstractmethod
    def step(self, state: State, byte: int) -> State | None: ...

    @abstractmethod
    def is_complete(self, state: State) -> bool: ...

    @abstractmethod
    def completion(self, state: State) -> bytes: ...

    def initial_state(self) -> State:
        """The state before the first byte of a whole modelled stream."""
        return self.start_state()

    def start_offset(self, data: bytes) -> int:
        """Where `start_state()` applies in the modelled stream `data` (raises ValueError on a
        stream the grammar cannot start from)."""
        return 0

    def allowed_bytes(self, state: State) -> np.ndarray:
        """bool[256]: which bytes may come next (cached per state; read-only, callers may key on
        the array's identity)."""
        cache = self.__dict__.setdefault("_allowed_cache", {})
        m = cache.get(state)
        if m is None:
            m = np.array([self.step(state, b) is not None for b in range(256)], bool)
            m.flags.writeable = False
            cache[state] = m
        return m

    def forced_byte(self, state: State) -> int | None:
        """The only byte allowed in `state` when the grammar knows it cheaply, else None (always a
        correct answer: a sampler then just does not skip the draw)."""
        allowed = self.allowed_bytes(state)
        idx = np.flatnonzero(allowed)
        return int(idx[0]) if len(idx) == 1 else None

    def advance(self, state: State, byte: int) -> State:
        """The state after `byte`; raises GrammarError when the byte is not allowed."""
        nxt = self.step(state, byte)
        if nxt is None:
            raise GrammarError(f"byte {byte:02X} is not allowed in state {state}")
        return nxt

    def state_after(self, data: bytes, state: State | None = None) -> State:
        """The state after feeding `data` from `state` (default: initial_state). Raises
        GrammarError at the first byte that is not allowed."""
        s = self.initial_state() if state is None else state
        for i, byte in enumerate(data):
            nxt = self.step(s, byte)
            if nxt is None:
                raise GrammarError(f"byte {i} (0x{byte:02X}) is not allowed in state {s}")
            s = nxt
        return s

    def first_error(self, data: bytes, state: State | None = None) -> int:
        """Index of the first byte of `data` the grammar rejects, len(data) if none is rejected."""
        s = self.initial_state() if state is None else state
        for i, byte in enumerate(data):
            s = self.step(s, byte)
            if s is None:
                return i
        return len(data)

    def accepts(self, data: bytes, state: State | None = None) -> bool:
        """True when `data` (a whole modelled stream by default) is a complete grammatical stream."""
        s = self.initial_state() if state is None else state
        for byte in data:
            s = self.step(s, byte)
            if s is None:
                return False
        return bool(self.is_complete(s))

    def token_allowed(self, state: State, token: bytes | None) -> bool:
        """True when all bytes of `token` are allowed in sequence from `state` (False for specials)."""
        if not token:
            return False
        for byte in token:
            state = self.step(state, byte)
            if state is None:
                return False
        return True

    # --- tokens -----------------------------------------------------------------------------------
    def allowed_token_mask(self, state: State, tokens: list[bytes | None] | TokenTrie) -> np.ndarray:
        """bool[len(tokens)]: the tokens whose bytes are all allowed in sequence from `state`
        (None / b"" never: a sampler allows EOS itself when `is_complete`). Pass the same list
        object (or a TokenTrie) every call: its trie is built once. Cached: the same read-only
        array object per `token_key`."""
        return TokenTrie.of(tokens).mask(self, state)

    def token_key(self, state: State, max_len: int) -> Any:
        """The part of `state` that decides which tokens of at most `max_len` bytes are allowed
        (the mask cache's key; a grammar with a counter that only matters near its end can drop it)."""
        return state

    def walk_trie(self, state: State, trie: TokenTrie) -> np.ndarray:
        """bool[trie.num_tokens], uncached: depth first, a subtree cut at its first refused byte."""
        return trie.walk(self, state)


class TokenTrie:
    """The trie over token byte strings: children[node] = [(byte, child)], ends[node] = the token
    ids ending there, index[node] = {byte: child}. `levels` holds, per depth, the arrays a
    vectorised walk needs: for the nodes at depth L, the index of each node's parent among the
    nodes at depth L-1, its byte, and (position, token id) of the tokens ending there."""

    _recent: ClassVar[list] = []  # (token list, trie): `of` builds one trie per list object

    def __init__(self, token_bytes: list[bytes | None]):
        self.num_tokens = len(token_bytes)
        self.children: list[list[tuple[int, int]]] = [[]]
        self.ends: list[list[int]] = [[]]
        self.index: list[dict[int, int]] = [{}]
        self.max_len = 1
        for tid, tb in enumerate(token_bytes):
            if not tb:
                continue
            node = 0
            for byte in tb:
                nxt = self.index[node].get(byte)
                if nxt is None:
                    nxt = self.index[node][byte] = len(self.children)
                    self.children.append([])
                    self.ends.append([])
                    self.index.append({})
                    self.children[node].append((byte, nxt))
                node = nxt
            self.ends[node].append(tid)
            self.max_len = max(self.max_len, len(tb))
        self.levels: list[tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]] = []
        frontier = [0]
        while True:
            parent, byte, nodes = [], [], []
            for pi, node in enumerate(frontier):
                for b, child in self.children[node]:
                    parent.append(pi)
                    byte.append(b)
                    nodes.append(child)
            if not nodes:
                break
            end_pos = [i for i, c in enumerate(nodes) for _ in self.ends[c]]
            end_tid = [t for c in nodes for t in self.ends[c]]
            self.levels.append(tuple(np.array(x, np.int64) for x in (parent, byte, end_pos, end_tid)))
            frontier = nodes
        self._masks: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()  # grammar -> {key: mask}

    @classmethod
    def of(cls, tokens: list[bytes | None] | TokenTrie) -> TokenTrie:
        """`tokens` itself when it is a trie, else the trie of that list object (the last few kept)."""
        if isinstance(tokens, TokenTrie):
            return tokens
        for obj, trie in cls._recent:
            if obj is tokens:
                return trie
        trie = cls(tokens)
        cls._recent = (cls._recent + [(tokens, trie)])[-4:]
        return trie

    def mask(self, grammar: Grammar, state: State) -> np.ndarray:
        """The tokens `grammar` allows from `state` (read-only; the same object per cache key)."""
        cache = self._masks.get(grammar)
        if cache is None:
            cache = self._masks[grammar] = {}
        key = grammar.token_key(state, self.max_len)
        m = cache.get(key)
        if m is None:
            m = grammar.walk_trie(state, self)
            m.flags.writeable = False
            if len(cache) > 200_000:  # bound memory on very long runs
                cache.clear()
            cache[key] = m
        return m

    def cached(self, grammar: Grammar, state: State) -> np.ndarray | None:
        """`mask(grammar, state)` when it is already cached, else None (nothing computed)."""
        cache = self._masks.get(grammar)
        return None if cache is None else cache.get(grammar.token_key(state, self.max_len))

    def walk(self, grammar: ByteGrammar, state: State) -> np.ndarray:
        """The generic walk behind `mask`: each node visited costs one `allowed_bytes` call."""
        mask = np.zeros(self.num_tokens, bool)
        stack = [(0, state)]
        children, ends = self.children, self.ends
        while stack:
            node, st = stack.pop()
            allowed = grammar.allowed_bytes(st)
            for b, child in children[node]:
                if not allowed[b]:
                    continue
                if ends[child]:
                    mask[ends[child]] = True
                if children[child]:
                    stack.append((child, grammar.step(st, b)))
        return mask

    def longest_prefix(self, data: bytes, allowed) -> int | None:
        """The longest token whose bytes start `data` and for which `allowed(token)` holds."""
        node, best = 0, None
        for b in data:
            node = self.index[node].get(b)
            if node is None:
                break
            for t in reversed(self.ends[node]):  # of equal byte strings the last id, as before
                if allowed(t):
                    best = t
                    break
        return best


__all__ = ["ByteGrammar", "Grammar", "GrammarError", "State", "TokenTrie"]
