"""Grammar-constrained decoding: a byte-level grammar turned into a mask over token ids.

The sampler (jpeglm/sample/sampler.py) keeps one grammar state per sequence. Before each step it asks
`TokenConstraint.mask(state)` for the tokens allowed next and after sampling it calls
`advance(state, token)`. A token is allowed when *every* byte it stands for keeps the stream valid
(BPE tokens through the tokenizer's byte table); the end-of-sequence token only when the stream is
complete; every other special token never.

Grammars: any object with `start_state()`, `allowed_bytes(state) -> bool[256]`,
`advance(state, byte) -> state` and `is_complete(state)` (the contract of
`jpeglm.codecs.jpeg_grammar.JpegScanGrammar`). States must be immutable values; when they are
hashable, masks are cached per state, so a step costs a dict lookup for the small state spaces of
a structural grammar. This module also holds `RestartGrammar`, the structural JPEG scan grammar
(byte stuffing, restart markers in order, EOI only after the last MCU) used when the Huffman-level
grammar is not available, and which always knows the shortest way to finish a scan.

End steering: a sequence close to its token budget is steered to a complete file. When the
remaining budget is no larger than the bytes of the shortest completion, the constraint switches to
forcing that completion (for JPEG: close the current restart interval, then `FF RSTn` for every
missing interval — libjpeg decodes an empty interval as flat gray, without an error — and `FF D9`).
The grammar's own `completion(state) -> bytes` gives the bytes (JpegScanGrammar: EOB codes and
1-bit padding before the marker); without one, the structural `RestartGrammar` that runs beside it
supplies them. Steering starts at a bound that only moves when an interval closes (see
`TokenConstraint.completion_length`), so it is never too late. Forced bytes the main grammar refuses stop the steering and sampling goes on under the
mask (the decode report then says what happened).
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass

import numpy as np
import torch

RST0, EOI_BYTE = 0xD0, 0xD9


# --- the structural JPEG scan grammar ------------------------------------------------------------
@dataclass(frozen=True)
class RestartState:
    intervals_closed: int  # restart markers seen so far
    after_ff: bool  # the previous scan byte was FF (a stuffed 00 or a marker must follow)
    complete: bool = False  # EOI seen


class RestartGrammar:
    """Valid baseline-JPEG scan *structure* under the canonical settings (no Huffman state):
    FF is followed by 00 (stuffing) or by the next restart marker RST(k mod 8), k counting from 0;
    EOI (FF D9) only after all `num_restart_markers`; nothing after EOI. FF FF fill bytes are
    refused (legal in JPEG, never written by libjpeg, so never seen in training)."""

    def __init__(self, num_restart_markers: int):
        if num_restart_markers < 0:
            raise ValueError("num_restart_markers must be >= 0")
        self.n_rst = int(num_restart_markers)
        self._masks: dict[RestartState, np.ndarray] = {}

    @classmethod
    def for_codec(cls, codec) -> "RestartGrammar":
        return cls(codec.num_restart_markers)

    def start_state(self) -> RestartState:
        return RestartState(0, False)

    def allowed_bytes(self, s: RestartState) -> np.ndarray:
        m = self._masks.get(s)
        if m is None:
            m = np.zeros(256, bool)
            if s.complete:
                pass
            elif not s.after_ff:
                m[:] = True  # any byte; FF opens a marker or stuffing
            else:
                m[0x00] = True
                if s.intervals_closed < self.n_rst:
                    m[RST0 + s.intervals_closed % 8] = True
                else:
                    m[EOI_BYTE] = True
            self._masks[s] = m
        return m

    def advance(self, s: RestartState, b: int) -> RestartState:
        if not self.allowed_bytes(s)[b]:
            raise ValueError(f"byte {b:02X} not allowed in state {s}")
        if not s.after_ff:
            return RestartState(s.intervals_closed, b == 0xFF)
        if b == 0x00:
            return RestartState(s.intervals_closed, False)
        if b == EOI_BYTE:
            return RestartState(s.intervals_closed, False, True)
        return RestartState(s.intervals_closed + 1, False)

    def is_complete(self, s: RestartState) -> bool:
        return s.complete

    def completion(self, s: RestartState) -> bytes:
        """The shortest byte string that completes the scan from `s`."""
        if s.complete:
            return b""
        out = bytearray() if s.after_ff else bytearray(b"\xff")
        for k in range(s.intervals_closed, self.n_rst):
            out += bytes([RST0 + k % 8, 0xFF])
        out.append(EOI_BYTE)
        return bytes(out)

    def completion_length(self, s: RestartState) -> int:
        if s.complete:
            return 0
        return (0 if s.after_ff else 1) + 2 * (self.n_rst - s.intervals_closed) + 1


def scan_grammar_for(codec):
    """The best grammar for a JPEG codec: the Huffman-level `JpegScanGrammar` when its module is
    there, else the structural `RestartGrammar`."""
    try:
        from jpeglm.codecs.jpeg_grammar import JpegScanGrammar
    except ImportError:
        return RestartGrammar.for_codec(codec)
    return JpegScanGrammar(codec)


# --- token-level constraint ------------------------------------------------------------------------
class _Trie:
    __slots__ = ("children", "token")

    def __init__(self):
        self.children: dict[int, _Trie] = {}
        self.token: int | None = None


class TokenConstraint:
    """A byte grammar as a mask over token ids (see module docstring).

    `token_bytes[i]` is the byte string of token i, None for specials. States handed out here are
    pairs (grammar state, structural state) so that end steering always knows the completion.
    """

    def __init__(self, grammar, token_bytes: list[bytes | None], eos_id: int, structural: RestartGrammar | None = None):
        self.grammar = grammar
        self.eos_id = int(eos_id)
        self.vocab_size = len(token_bytes)
        self.token_bytes = token_bytes
        # The structural grammar always runs beside: it counts closed restart intervals, which
        # gives a cheap, safe bound on the completion length (see completion_length).
        self.completer = grammar if hasattr(grammar, "completion") else None
        self.structural = structural
        self._per_interval: float | None = None
        self.trie = _Trie()
        for tid, bs in enumerate(token_bytes):
            if not bs:
                continue
            node = self.trie
            for b in bs:
                node = node.children.setdefault(b, _Trie())
            node.token = tid
        # Byte tokenizers: a token mask is the byte mask scattered to the byte tokens' ids.
        self.single_byte = all(bs is None or len(bs) <= 1 for bs in token_bytes)
        byte_ids = np.full(256, -1, np.int64)
        for tid, bs in enumerate(token_bytes):
            if bs is not None and len(bs) == 1 and byte_ids[bs[0]] < 0:
                byte_ids[bs[0]] = tid
        self.single_byte = self.single_byte and bool((byte_ids >= 0).all())
        self._byte_ids = torch.from_numpy(byte_ids)
        self._cache: dict = {}
        self.cache_hits = 0
        self.cache_misses = 0
        self.steer_failures = 0

    # states ------------------------------------------------------------------------------------
    def start_state(self):
        return (self.grammar.start_state(), self.structural.start_state() if self.structural else None)

    def advance_bytes(self, state, data: bytes):
        """Advance over raw bytes (e.g. the prompt's scan). Raises ValueError on a byte the grammar
        refuses: a prompt that is not a valid scan prefix."""
        g, s = state
        for i, b in enumerate(data):
            if not self.grammar.allowed_bytes(g)[b]:
                raise ValueError(f"byte {i} (0x{b:02X}) of the prompt's scan breaks the codec's grammar")
            g = self.grammar.advance(g, b)
            if s is not None:
                s = self.structural.advance(s, b) if self.structural.allowed_bytes(s)[b] else s
        return (g, s)

    def prompt_offset(self, data: bytes) -> int:
        """Where the grammar starts in a prompt's bytes: JPEG grammars start after the header."""
        from jpeglm.codecs.jpeg import header_length

        return header_length(data)

    def advance(self, state, token_id: int):
        if token_id == self.eos_id:
            return state
        bs = self.token_bytes[token_id]
        if bs is None:  # a special token under --no-constrain-like use: no bytes
            return state
        return self.advance_bytes(state, bs)

    def is_complete(self, state) -> bool:
        return bool(self.grammar.is_complete(state[0]))

    # masks -------------------------------------------------------------------------------------
    def mask(self, state) -> torch.Tensor:
        """bool[vocab]: the tokens allowed next. Never all False: a state the grammar leaves no
        byte in (should not happen) allows EOS so the sequence ends instead of the sampler dying."""
        g = state[0]
        if self.single_byte:
            return self._byte_mask(g)
        if hasattr(self.grammar, "allowed_token_mask"):
            return self._grammar_mask(g)
        try:
            cached = self._cache.get(g)
        except TypeError:  # unhashable grammar state: no caching
            cached = None
            hashable = False
        else:
            hashable = True
        if cached is not None:
            self.cache_hits += 1
            return cached
        self.cache_misses += 1
        m = np.zeros(self.vocab_size, bool)
        if self.grammar.is_complete(g):
            m[self.eos_id] = True
        self._walk(self.trie, g, m)
        if not m.any():
            m[self.eos_id] = True
        t = torch.from_numpy(m)
        if hashable:
            self._cache[g] = t
        return t

    def _byte_mask(self, g) -> torch.Tensor:
        allowed = self.grammar.allowed_bytes(g)
        try:  # grammars hand out cached arrays (by identity) or states we can hash
            key = ("b", id(allowed)) if not allowed.flags.writeable else ("s", g)
            hit = self._cache.get(key)
        except TypeError:
            key, hit = None, None
        if hit is not None and hit[0] is allowed:
            self.cache_hits += 1
            t = hit[1]
        else:
            self.cache_misses += 1
            t = torch.zeros(self.vocab_size, dtype=torch.bool)
            t[self._byte_ids[torch.from_numpy(np.array(allowed, dtype=bool))]] = True
            if key is not None:
                if len(self._cache) > 100_000:
                    self._cache.clear()
                self._cache[key] = (allowed, t)
        if self.grammar.is_complete(g) or not bool(t.any()):
            t = t.clone()
            t[self.eos_id] = True
        return t

    def _grammar_mask(self, g) -> torch.Tensor:
        # The grammar's own token mask caches per (compressed) state and returns the same array
        # object for the same key, so its torch copy is cached by the array's identity.
        arr = self.grammar.allowed_token_mask(g, self.token_bytes)
        hit = self._cache.get(id(arr))
        if hit is not None and hit[0] is arr:
            self.cache_hits += 1
            t = hit[1]
        else:
            self.cache_misses += 1
            t = torch.from_numpy(np.array(arr, dtype=bool))
            if len(self._cache) > 100_000:
                self._cache.clear()
            self._cache[id(arr)] = (arr, t)  # keeping `arr` alive keeps its id unique
        if self.grammar.is_complete(g) or not bool(t.any()):
            t = t.clone()
            t[self.eos_id] = True
        return t

    def _walk(self, node: _Trie, g, m: np.ndarray) -> None:
        # Depth-first over the token trie: a subtree is cut as soon as one byte is refused, so
        # each state costs (allowed prefixes) grammar calls, not (vocab x token length).
        allowed = self.grammar.allowed_bytes(g)
        for b, child in node.children.items():
            if not allowed[b]:
                continue
            if child.token is not None:
                m[child.token] = True
            if child.children:
                self._walk(child, self.grammar.advance(g, b), m)

    # end steering --------------------------------------------------------------------------------
    def completion(self, state) -> bytes | None:
        g, s = state
        if self.completer is not None:
            return bytes(self.completer.completion(g))
        if s is not None:
            return self.structural.completion(s)
        return None

    # Slack over the minimal remaining intervals: finishing the current block from any state
    # (<= 16 code bits + 11 extra bits + padding) with every byte possibly FF-stuffed.
    SLACK = 24

    def completion_length(self, state) -> int | None:
        """An upper bound on len(completion(state)) that changes only when a restart interval
        closes. Steering starts when the token budget left falls to this bound; an *exact*
        length would be too late, since one freely sampled token can lengthen the shortest
        completion by several bytes (e.g. by starting a long Huffman code)."""
        g, s = state
        if self.grammar.is_complete(g):
            return 0
        if self.completer is None:
            return None if s is None else self.structural.completion_length(s)
        if s is None:
            return len(self.completer.completion(g)) + self.SLACK
        if self._per_interval is None:  # bytes of one minimal interval + its marker
            start = self.grammar.start_state()
            self._per_interval = len(self.completer.completion(start)) / (self.structural.n_rst + 1)
        left = self.structural.n_rst + 1 - s.intervals_closed
        return int(np.ceil(left * self._per_interval)) + self.SLACK

    def forced_token(self, state) -> int | None:
        """The token that starts the shortest completion (the longest token whose bytes are a
        prefix of it and that the grammar allows), or None when there is none."""
        comp = self.completion(state)
        if not comp:
            return None if comp is None else self.eos_id
        allowed = self.mask(state)
        node, best = self.trie, None
        for b in comp:
            node = node.children.get(b)
            if node is None:
                break
            if node.token is not None and bool(allowed[node.token]):
                best = node.token
        if best is None:
            self.steer_failures += 1
            if self.steer_failures == 1:
                warnings.warn("end steering: the grammar refuses the completion bytes; sampling on under the mask")
        return best


class AvcTokenConstraint(TokenConstraint):
    """The H.264 NAL grammar (`jpeglm.codecs.avc_grammar`) as a token mask. The last slice has no
    terminator, so the grammar is "complete" after every byte where the stream may end: that only
    allows EOS here, it never stops a row (EOS or the token budget does). The modelled bytes have
    no header, so a prompt's bytes are fed to the grammar from their first byte."""

    def is_complete(self, state) -> bool:
        return False

    def prompt_offset(self, data: bytes) -> int:
        return 0


def constraint_for(codec, tokenizer, vocab_size: int | None = None, avc: bool = True) -> TokenConstraint | None:
    """The token constraint for a codec + tokenizer, or None when the codec has no grammar
    (code codecs get `code_only_mask` instead). JPEG gets the Huffman-level scan grammar, H.264
    the NAL-unit grammar (`avc=False` turns the latter off alone)."""
    if getattr(tokenizer, "kind", "byte") == "code":
        return None
    if getattr(codec, "name", None) == "avc":
        if not avc:
            return None
        from jpeglm.codecs.avc_grammar import grammar_for

        return AvcTokenConstraint(grammar_for(codec.params), token_bytes_table(tokenizer, vocab_size), tokenizer.eos_id)
    if getattr(codec, "name", None) != "jpeg":
        return None
    table = token_bytes_table(tokenizer, vocab_size)
    return TokenConstraint(scan_grammar_for(codec), table, tokenizer.eos_id, RestartGrammar.for_codec(codec))


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


__all__ = ["AvcTokenConstraint", "RestartGrammar", "RestartState", "TokenConstraint", "constraint_for", "scan_grammar_for", "token_bytes_table", "code_only_mask"]
