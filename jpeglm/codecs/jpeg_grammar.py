"""The byte-level grammar of a canonical baseline JPEG scan, for constrained sampling. No torch.

`JpegScanGrammar(codec)` accepts exactly the byte strings that continue the codec's modelled
stream (`JpegCodec.encode` output) into a complete, strictly valid baseline scan:
- every MCU (4:2:0: 4 Y blocks, Cb, Cr) decodes with the file's own Huffman tables (parsed from
  `codec.tables()`, never assumed): per block a DC category code (0..11) + its extra bits, then AC
  run/size codes + extra bits until EOB or coefficient 63; a run never passes coefficient 63, and a
  ZRL (16 zeros) only where a nonzero coefficient can still follow it (encoders never write others);
- at the end of each restart interval the partial byte is padded with 1-bits (what the encoder
  writes), then the restart marker RSTn comes, n = 0..7 cycling; after the last interval, EOI;
- byte stuffing: an entropy-coded FF byte is followed by 00.
Huffman prefixes that can no longer end in a symbol valid at the current coefficient index are
rejected at once, so every allowed byte leaves at least one way to finish: a sampler that only
picks allowed bytes never gets stuck and always ends with a decodable file.

Termination is structural, no forcing needed: a block holds at most 63 AC symbols (each moves the
coefficient index forward by >= 1), each symbol is at most 16 + 11 bits, and a scan has a fixed
number of blocks, so every grammatical scan is at most ~1700 bits per block long.

Speed: the decoder state inside an interval is small and finite (block, phase, Huffman node,
pending extra bits, coefficient index, MCUs left in the interval); every possible one has a dense
int id and its transitions are precomputed at once with numpy (jpeglm/codecs/jpeg_tables.py, ~0.1 s
for the default codec): a byte is two table lookups. A token mask from an entropy-coded state is
a few vectorised lookups per nibble over all multi-byte tokens at once (tokens past a marker asked
byte by byte); from the other states the shared `TokenTrie` (jpeglm/codecs/grammar.py) is walked one
level (byte) at a time with numpy. Masks are cached per `token_key`.
A grammar state is a plain tuple `(stage, count, d)` — copyable and hashable, one per sequence.
`completion(state)` gives a shortest way to finish from any state (for samplers on a token budget).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from jpeglm.codecs import jpeg_tables
from jpeglm.codecs.grammar import Grammar, GrammarError, TokenTrie
from jpeglm.codecs.jpeg import SOF0, SOS, JpegCodec, header_length, iter_segments
from jpeglm.codecs.jpeg_tables import DecoderTables, TokenProgram

DEAD, ENDB = jpeg_tables.DEAD, jpeg_tables.ENDB
DEAD_X, ESC_X = jpeg_tables.DEAD_X, jpeg_tables.ESC_X
# stages of the outer (byte) automaton; a state is (stage, count, d)
HEADER, SCAN, STUFF, MARK_FF, MARK_CODE, DONE = range(6)
# HEADER: count = bytes of the canonical header already written (d unused)
# SCAN: count = restart intervals finished, d = decoder state id at the byte boundary
# STUFF: an entropy FF was written, 00 must follow; d = the state after it (END: interval finished)
# MARK_FF / MARK_CODE: inside the RSTn / EOI marker after `count` finished intervals
END = 0  # decoder state id: the interval (and its 1-padding) ended exactly at this byte boundary
_PAD = (-1, 4, 0, 0, 0)  # decoder state: the interval is done, the rest of the byte must be 1s


class HuffmanTable:
    """One DHT table as a binary trie: child[node][bit] = node id (>= 0), -1 (no code), or
    -2 - symbol for a leaf."""

    def __init__(self, counts: list[int], symbols: list[int]):
        self.child: list[list[int]] = [[-1, -1]]
        self.codes: dict[int, tuple[int, int]] = {}
        code, i = 0, 0
        for length in range(1, 17):
            for _ in range(counts[length - 1]):
                self._insert(code, length, symbols[i])
                self.codes[symbols[i]] = (code, length)
                code += 1
                i += 1
            code <<= 1
        # leaves below each node, for pruning prefixes with no usable symbol left
        self.below: list[list[int]] = [[] for _ in self.child]
        for sym, (code, length) in self.codes.items():
            node = 0
            self.below[0].append(sym)
            for j in range(length - 1, 0, -1):
                node = self.child[node][(code >> j) & 1]
                self.below[node].append(sym)

    def _insert(self, code: int, length: int, symbol: int) -> None:
        node = 0
        for j in range(length - 1, -1, -1):
            bit = (code >> j) & 1
            if j == 0:
                if self.child[node][bit] != -1:
                    raise ValueError("DHT table is not a prefix code")
                self.child[node][bit] = -2 - symbol
            else:
                nxt = self.child[node][bit]
                if nxt < -1:
                    raise ValueError("DHT table is not a prefix code")
                if nxt == -1:
                    nxt = len(self.child)
                    self.child.append([-1, -1])
                    self.child[node][bit] = nxt
                node = nxt


def parse_tables(tables: bytes) -> dict[tuple[int, int], HuffmanTable]:
    """DHT segments in `tables` (DQT/DHT segments without SOI) -> {(class, id): table};
    class 0 = DC, 1 = AC."""
    out, i = {}, 0
    while i + 4 <= len(tables):
        if tables[i] != 0xFF:
            raise ValueError(f"bad marker at byte {i} of the tables")
        marker, length = tables[i + 1], int.from_bytes(tables[i + 2 : i + 4], "big")
        seg = tables[i + 4 : i + 2 + length]
        if marker == 0xC4:
            j = 0
            while j < len(seg):
                tc, th = seg[j] >> 4, seg[j] & 15
                counts = list(seg[j + 1 : j + 17])
                n = sum(counts)
                out[(tc, th)] = HuffmanTable(counts, list(seg[j + 17 : j + 17 + n]))
                j += 17 + n
        i += 2 + length
    return out


class JpegScanGrammar(Grammar):
    """Constrains generation to canonical baseline scans of `codec` (a JpegCodec)."""

    def __init__(self, codec: JpegCodec | None = None):
        self.codec = codec or JpegCodec()
        self.header = self.codec.header()
        tables = parse_tables(self.codec.tables())
        comps, sampling = {}, {}
        for marker, s, e in iter_segments(self.header):
            seg = self.header[s + 4 : e]
            if marker == SOF0:
                for c in range(seg[5]):
                    cid, hv = seg[6 + 3 * c], seg[7 + 3 * c]
                    sampling[cid] = (hv >> 4) * (hv & 15)
            elif marker == SOS:
                for c in range(seg[0]):
                    cid, td_ta = seg[1 + 2 * c], seg[2 + 2 * c]
                    comps[cid] = (td_ta >> 4, td_ta & 15)
        # one (dc table, ac table) per block of an MCU, in scan order
        self.blocks: list[tuple[HuffmanTable, HuffmanTable]] = []
        for cid, (td, ta) in comps.items():
            self.blocks += [(tables[(0, td)], tables[(1, ta)])] * sampling[cid]
        self.mcus_per_interval = self.codec.params.restart_marker_blocks
        self.num_intervals = self.codec.num_mcus // self.mcus_per_interval
        # Liveness of Huffman prefixes: DC needs a category <= 11; AC at coefficient index k needs
        # EOB, a ZRL with room for a coefficient after it (k <= 47), or a run r with k + r <= 63.
        self._dc_live = [[any(s <= 11 for s in below) for below in dc.below] for dc, _ in self.blocks]
        self._ac_info = []
        for _, ac in self.blocks:
            info = []
            for below in ac.below:
                runs = [s >> 4 for s in below if 1 <= (s & 15) <= 10]
                info.append((0x00 in below, 0xF0 in below, min(runs) if runs else 99))
            self._ac_info.append(info)
        self.tables = DecoderTables(self)  # dense decoder-state ids (END == PAD == 0) and their transitions
        self._hi, self._lo = self.tables.hi_flat, self.tables.lo_flat
        self._d_start = self.tables.encode((0, 0, 0, 0, self.mcus_per_interval))
        self._byte_masks: dict[int, np.ndarray] = {}  # decoder state id -> allowed_bytes
        self._programs: dict[int, tuple] = {}  # id(trie) -> (trie, its token programs): `_scan_token_mask`
        self._only = [_only(b) for b in range(256)]
        self._none = _readonly(np.zeros(256, bool))
        self._finish_cache: dict[tuple, bytes] = {}
        self._bits_cache: dict[tuple, tuple] = {}
        self._min_interval: bytes | None = None
        self._markers_cache: dict[int, bytes] = {}
        self._header_np = np.frombuffer(self.header, np.uint8).astype(np.int64)

    # --- the bit-level decoder (one interval): the rules the tables are built from -----------------
    def _end_block(self, b: int, r: int) -> tuple:
        if b + 1 < len(self.blocks):
            return (b + 1, 0, 0, 0, r)
        return (0, 0, 0, 0, r - 1) if r > 1 else _PAD

    def _step(self, d: tuple, bit: int) -> tuple | None:
        """The decoder state after one more bit, or None if no valid scan continues that way.
        d = (block, phase, x, k, mcus_left): phase 0 DC code (x = trie node), 1 DC extra bits
        (x = bits left), 2 AC code (x = node, k = next coefficient), 3 AC extra bits (x = bits
        left, k = index after this coefficient), 4 padding (1-bits only)."""
        b, ph, x, k, r = d
        if ph == 4:
            return d if bit else None
        if ph == 0:
            dc = self.blocks[b][0]
            c = dc.child[x][bit]
            if c == -1:
                return None
            if c >= 0:
                return (b, 0, c, 0, r) if self._dc_live[b][c] else None
            s = -2 - c
            if s > 11:
                return None
            return (b, 1, s, 0, r) if s else (b, 2, 0, 1, r)
        if ph == 1:
            return (b, 1, x - 1, 0, r) if x > 1 else (b, 2, 0, 1, r)
        if ph == 2:
            c = self.blocks[b][1].child[x][bit]
            if c == -1:
                return None
            if c >= 0:
                eob, zrl, run = self._ac_info[b][c]
                return (b, 2, c, k, r) if (eob or (zrl and k <= 47) or k + run <= 63) else None
            sym = -2 - c
            run, size = sym >> 4, sym & 15
            if size == 0:
                if run == 0:
                    return self._end_block(b, r)  # EOB
                if run == 15 and k + 16 <= 63:
                    return (b, 2, 0, k + 16, r)  # ZRL
                return None
            if size > 10 or k + run > 63:
                return None
            return (b, 3, size, k + run + 1, r)
        # ph == 3: extra bits of an AC coefficient
        if x > 1:
            return (b, 3, x - 1, k, r)
        return self._end_block(b, r) if k == 64 else (b, 2, 0, k, r)

    # --- the public automaton -------------------------------------------------------------------
    def initial_state(self) -> tuple:
        """State before the first byte of the modelled stream: the canonical header is forced."""
        return (HEADER, 0, 0)

    def start_state(self) -> tuple:
        """State after the header (SOI..SOS), at the first entropy-coded byte."""
        return (SCAN, 0, self._d_start)

    def start_offset(self, data: bytes) -> int:
        """The scan starts after the header (SOI..SOS) of the modelled stream."""
        return header_length(data)

    def step(self, state: tuple, byte: int) -> tuple | None:
        """The state after `byte`, or None when the byte is not allowed (no exception: fast path)."""
        stage, n, d = state
        if stage == SCAN:
            nd = self._lo[self._hi[d * 19 + (byte >> 4)] * 19 + (byte & 15)]  # DecoderTables.byte, inlined
            if nd == DEAD:
                return None
            if nd == ENDB:
                nd = END
            if byte == 0xFF:
                return (STUFF, n, nd)
            return (MARK_FF, n + 1, 0) if nd == END else (SCAN, n, nd)
        if stage == STUFF:
            if byte:
                return None
            return (MARK_FF, n + 1, 0) if d == END else (SCAN, n, d)
        if stage == MARK_FF:
            return (MARK_CODE, n, 0) if byte == 0xFF else None
        if stage == MARK_CODE:
            if n == self.num_intervals:
                return (DONE, n, 0) if byte == 0xD9 else None
            return (SCAN, n, self._d_start) if byte == 0xD0 + (n - 1) % 8 else None
        if stage == HEADER:
            if byte != self.header[n]:
                return None
            return (SCAN, 0, self._d_start) if n + 1 == len(self.header) else (HEADER, n + 1, 0)
        return None  # DONE: nothing may follow EOI

    def allowed_bytes(self, state: tuple) -> np.ndarray:
        """bool[256]: which bytes may come next (a cached read-only array; copy to modify)."""
        stage, n, d = state
        if stage == SCAN:
            m = self._byte_masks.get(d)
            if m is None:
                if len(self._byte_masks) > 200_000:
                    self._byte_masks.clear()
                m = self._byte_masks[d] = _readonly(self.tables.byte_mask(d))
            return m
        if stage == STUFF:
            return self._only[0x00]
        if stage == MARK_FF:
            return self._only[0xFF]
        if stage == MARK_CODE:
            return self._only[0xD9 if n == self.num_intervals else 0xD0 + (n - 1) % 8]
        if stage == HEADER:
            return self._only[self.header[n]]
        return self._none

    def forced_byte(self, state: tuple) -> int | None:
        """The stuffing 00, the marker bytes and the header are forced; inside the entropy-coded
        data the answer is None without building the state's row."""
        stage = state[0]
        if stage == SCAN or stage == DONE:
            return None
        return int(np.flatnonzero(self.allowed_bytes(state))[0])

    def is_complete(self, state: tuple) -> bool:
        """True once EOI was written after the last MCU."""
        return state[0] == DONE

    def completion(self, state: tuple) -> bytes:
        """A shortest way to finish the stream from `state`: the fewest bits that close the
        current restart interval (in practice: the current coefficient's bits, EOB, then DC 0 +
        EOB for the blocks left), 1-padding and stuffing, the marker, then the shortest possible
        interval for every interval left, then EOI. `state_after(completion(s), s)` is complete.
        For samplers that must end within a token budget."""
        stage, n, d = state
        if stage == DONE:
            return b""
        if stage == HEADER:
            return self.header[n:] + self.completion(self.start_state())
        if stage == SCAN:
            return self._finish_interval(self.tables.decode(d)) + self._markers_from(n + 1)
        if stage == STUFF:
            rest = b"" if d == END else self._finish_interval(self.tables.decode(d))
            return b"\x00" + rest + self._markers_from(n + 1)
        if stage == MARK_FF:
            return self._markers_from(n)
        return self._markers_from(n)[1:]  # MARK_CODE: the FF is already written

    def _markers_from(self, n: int) -> bytes:
        """The marker after finished interval n (1-based), then minimal intervals and markers."""
        hit = self._markers_cache.get(n)
        if hit is not None:
            return hit
        if self._min_interval is None:
            self._min_interval = self._finish_interval(self.tables.decode(self._d_start))
        out = bytearray()
        for i in range(n, self.num_intervals + 1):
            if i > n:
                out += self._min_interval
            out += bytes([0xFF, 0xD9 if i == self.num_intervals else 0xD0 + (i - 1) % 8])
        if len(self._markers_cache) > 64:  # long strings (a few bytes per interval left): keep the few in use
            self._markers_cache.clear()
        self._markers_cache[n] = out = bytes(out)  # end steering asks for the same count again and again
        return out

    def _finish_interval(self, st: tuple) -> bytes:
        """Fewest bits from bit-level state `st` (at a byte boundary) to the end of its interval,
        1-padded to whole bytes, FF-stuffed."""
        hit = self._finish_cache.get(st)
        if hit is not None:
            return hit
        bits = list(self._bits_to_end(st))
        bits += [1] * (-len(bits) % 8)
        out = bytearray()
        for i in range(0, len(bits), 8):
            byte = int("".join(map(str, bits[i : i + 8])), 2)
            out.append(byte)
            if byte == 0xFF:
                out.append(0x00)
        if len(self._finish_cache) > 100_000:
            self._finish_cache.clear()
        self._finish_cache[st] = bytes(out)
        return bytes(out)

    def _bits_to_end(self, st: tuple) -> tuple:
        """Fewest bits from `st` to the end of its interval. Every path leaves the current block
        through the one state `_end_block` gives, so this is the shortest way to finish the block
        (breadth-first, within one block: small) + the cached answer from the next block's start."""
        if st == _PAD:
            return ()
        hit = self._bits_cache.get(st)
        if hit is not None:
            return hit
        target = self._end_block(st[0], st[4])
        prev: dict[tuple, tuple | None] = {st: None}
        frontier = [st]
        while target not in prev:
            nxt_frontier = []
            for cur in frontier:
                for bit in (1, 0):
                    nxt = self._step(cur, bit)
                    if nxt is not None and nxt not in prev:
                        prev[nxt] = (cur, bit)
                        nxt_frontier.append(nxt)
            if not nxt_frontier:  # the liveness pruning guarantees this never happens
                raise GrammarError(f"no way to finish the interval from {st}")
            frontier = nxt_frontier
        bits, cur = [], target
        while prev[cur] is not None:
            cur, bit = prev[cur]
            bits.append(bit)
        bits.reverse()
        out = tuple(bits) + self._bits_to_end(target)  # recursion depth: the blocks left in the interval
        if len(self._bits_cache) > 100_000:
            self._bits_cache.clear()
        self._bits_cache[st] = out
        return out

    # --- tokens ---------------------------------------------------------------------------------
    fast_token_masks = True  # `walk_trie` is cheap enough to build a whole mask per new state

    def walk_trie(self, state: tuple, trie: TokenTrie) -> np.ndarray:
        """Advance `state` through the trie one level (= one byte) at a time, all nodes of a level
        at once with numpy: the same transitions as `step`, vectorised. From an entropy-coded state
        (the usual case) `_scan_token_mask` instead."""
        if state[0] == SCAN:
            return self._scan_token_mask(state, trie)
        mask = np.zeros(trie.num_tokens, bool)
        stage = np.array([state[0]], np.int64)
        count = np.array([state[1]], np.int64)
        d = np.array([state[2]], np.int64)
        alive = np.ones(1, bool)
        hlen, n_int = len(self.header), self.num_intervals
        for parent, byte, end_pos, end_tid in trie.levels:
            ok = alive[parent]
            st, n, dd = stage[parent], count[parent], d[parent]
            new_st = np.full(len(parent), DONE, np.int64)
            new_n, new_d = n.copy(), np.zeros(len(parent), np.int64)
            valid = np.zeros(len(parent), bool)
            # SCAN: the cached rows; compute the missing ones first (the only Python loop)
            sel = ok & (st == SCAN)
            if sel.any():
                ds, bs = dd[sel], byte[sel]
                nd = self.tables.lo[self.tables.hi[ds, bs >> 4], bs & 15].astype(np.int64)
                v = nd != DEAD
                nd = np.where(nd == ENDB, END, nd)
                ff = byte[sel] == 0xFF
                valid[sel] = v
                new_d[sel] = nd
                new_st[sel] = np.where(ff, STUFF, np.where(nd == END, MARK_FF, SCAN))
                new_n[sel] = n[sel] + ((nd == END) & ~ff)
            sel = ok & (st == STUFF)
            if sel.any():
                valid[sel] = byte[sel] == 0
                end = dd[sel] == END
                new_st[sel] = np.where(end, MARK_FF, SCAN)
                new_n[sel] = n[sel] + end
                new_d[sel] = dd[sel]
            sel = ok & (st == MARK_FF)
            if sel.any():
                valid[sel] = byte[sel] == 0xFF
                new_st[sel] = MARK_CODE
            sel = ok & (st == MARK_CODE)
            if sel.any():
                last = n[sel] == n_int
                valid[sel] = byte[sel] == np.where(last, 0xD9, 0xD0 + (n[sel] - 1) % 8)
                new_st[sel] = np.where(last, DONE, SCAN)
                new_d[sel] = np.where(last, 0, self._d_start)
            sel = ok & (st == HEADER)
            if sel.any():
                pos = n[sel]
                valid[sel] = byte[sel] == self._header_np[np.minimum(pos, hlen - 1)]
                done = pos + 1 == hlen
                new_st[sel] = np.where(done, SCAN, HEADER)
                new_n[sel] = np.where(done, 0, pos + 1)
                new_d[sel] = np.where(done, self._d_start, 0)
            alive = ok & valid
            if not alive.any():
                break
            mask[end_tid] = alive[end_pos]
            stage, count, d = new_st, new_n, new_d
        return mask

    def _scan_token_mask(self, state: tuple, trie: TokenTrie) -> np.ndarray:
        """`walk_trie` from a SCAN state: every token by its table program (jpeg_tables.TokenProgram)
        at once; the few that reach past a marker (ESC) by `step`, byte by byte."""
        prog = self._programs.get(id(trie))
        if prog is None or prog[0] is not trie:
            tb = _trie_token_bytes(trie)
            prog = self._programs[id(trie)] = (trie, TokenProgram(self.tables, tb), tb)
        _, program, token_bytes = prog
        end = program.walk(state[2])
        esc = end == ESC_X
        mask = (end != DEAD_X) & ~esc
        if esc.any():
            for t in np.flatnonzero(esc).tolist():
                mask[t] = self.token_allowed(state, token_bytes[t])
        return mask

    def token_key(self, state: tuple, max_len: int) -> tuple:
        # Within one token of at most max_len bytes, the finished-interval count matters only
        # through the next RST number and through how close the last interval is.
        stage, n, d = state
        if stage == HEADER:
            return state
        return (stage, n % 8, min(self.num_intervals - n, max_len + 1), d)


def _trie_token_bytes(trie: TokenTrie) -> list[bytes | None]:
    """Each token id's bytes, read back from the trie (None: a special)."""
    token_bytes: list[bytes | None] = [None] * trie.num_tokens
    stack = [(0, b"")]
    while stack:
        node, prefix = stack.pop()
        for b, child in trie.children[node]:
            tb = prefix + bytes([b])
            for t in trie.ends[child]:
                token_bytes[t] = tb
            stack.append((child, tb))
    return token_bytes


def _only(byte: int) -> np.ndarray:
    m = np.zeros(256, bool)
    m[byte] = True
    return _readonly(m)


def _readonly(a: np.ndarray) -> np.ndarray:
    a.flags.writeable = False
    return a


# --- the structural scan grammar ------------------------------------------------------------------
RST0, EOI_BYTE = 0xD0, 0xD9


@dataclass(frozen=True)
class RestartState:
    intervals_closed: int  # restart markers seen so far
    after_ff: bool  # the previous scan byte was FF (a stuffed 00 or a marker must follow)
    complete: bool = False  # EOI seen


class RestartGrammar(Grammar):
    """Valid baseline-JPEG scan *structure* under the canonical settings (no Huffman state):
    FF is followed by 00 (stuffing) or by the next restart marker RST(k mod 8), k counting from 0;
    EOI (FF D9) only after all `num_restart_markers`; nothing after EOI. FF FF fill bytes are
    refused (legal in JPEG, never written by libjpeg, so never seen in training). A sampler runs it
    beside the Huffman-level grammar: it counts closed intervals, a cheap bound on the ending."""

    def __init__(self, num_restart_markers: int):
        if num_restart_markers < 0:
            raise ValueError("num_restart_markers must be >= 0")
        self.n_rst = int(num_restart_markers)
        self._masks: dict[RestartState, np.ndarray] = {}

    @classmethod
    def for_codec(cls, codec) -> RestartGrammar:
        return cls(codec.num_restart_markers)

    def start_state(self) -> RestartState:
        return RestartState(0, False)

    def start_offset(self, data: bytes) -> int:
        return header_length(data)

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
            self._masks[s] = _readonly(m)
        return m

    def step(self, s: RestartState, b: int) -> RestartState | None:
        if not s.after_ff and not s.complete:  # the common case: no hashing, no new object but after FF
            return s if b != 0xFF else RestartState(s.intervals_closed, True)
        if not self.allowed_bytes(s)[b]:
            return None
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


def scan_grammar_for(codec) -> JpegScanGrammar:
    """The grammar a JPEG codec's samples are constrained by: the Huffman-level scan grammar."""
    return JpegScanGrammar(codec)


__all__ = ["GrammarError", "HuffmanTable", "JpegScanGrammar", "RestartGrammar", "RestartState", "TokenTrie",
           "parse_tables", "scan_grammar_for"]
