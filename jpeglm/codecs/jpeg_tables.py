"""Dense lookup tables for the bit-level JPEG scan decoder (jpeglm/codecs/jpeg_grammar.py). No torch.

The decoder state inside a restart interval, d = (block, phase, x, k, mcus_left), lives in a small
finite space; here every possible value gets a dense integer id (`encode` / `decode`), and the
transitions of all of them are computed at once with numpy (`_bit_table`: the same rules as
`JpegScanGrammar._step`, vectorised), then composed into two nibble tables: `hi[s, v]` the state
after the four bits v (the high half of a byte), `lo[s, v]` the same for the low half, which also
marks the end of an interval at the byte boundary (ENDB). A byte is `lo[hi[s, b >> 4], b & 15]`:
two lookups instead of eight Python bit steps, and a whole token mask is a few vectorised lookups
per nibble over all tokens at once (`TokenProgram`).

Ids: PAD (0: the interval is done, only 1-bits until the byte ends; == the grammar's END at a byte
boundary), DEAD (1: refused, absorbing), then the states used only by the token walk: ENDB (2: the
interval ended at this byte boundary, a marker must follow), ENDF0 / ENDF1 (3, 4: the first / both
nibbles of the marker's FF seen), ESC (5: past a marker, the walk cannot tell: decided byte by byte
by the grammar); decoder states from FIRST on. Extra columns of the tables, for token programs:
MARK (16: a marker's second byte follows: ESC after ENDF1, DEAD elsewhere: an entropy-coded FF must
be followed by 00), STUFF (17: a stuffing 00 follows an FF: DEAD after ENDF1, where a marker code
must come, else no change) and KEEP (18: padding, no change).
"""

from __future__ import annotations

import numpy as np

PAD, DEAD, ENDB, ENDF0, ENDF1, ESC = range(6)
FIRST = 6
MARK, STUFF, KEEP = 16, 17, 18
COLS = 19
KS = 65  # coefficient index 0..64


class DecoderTables:
    """The dense ids and nibble tables of one grammar's decoder (see the module docstring)."""

    def __init__(self, grammar):
        blocks = grammar.blocks
        self.nb = nb = len(blocks)
        self.rmb = rmb = grammar.mcus_per_interval
        self.ndc = ndc = max(len(dc.child) for dc, _ in blocks)
        self.nac = nac = max(len(ac.child) for _, ac in blocks)
        self._o1, self._o2 = ndc, ndc + 16
        self._o3 = ndc + 16 + nac * KS
        self.S = S = self._o3 + 16 * KS  # local ids per (mcus_left, block)
        self.n = n = FIRST + rmb * nb * S
        bits = _bit_table(self, grammar)
        self.both = both = np.empty((2, n, COLS), np.int32)  # [half, state, column]: the token walk's lookup
        hi, lo = both[0], both[1]
        for v in range(16):
            s = np.arange(n)
            for j in (3, 2, 1, 0):
                s = bits[s, (v >> j) & 1]
            hi[:, v] = s
        lo[:, :16] = np.where(hi[:, :16] == PAD, ENDB, hi[:, :16])
        ids = np.arange(n, dtype=np.int32)
        for t in (hi, lo):
            t[:, MARK] = DEAD
            t[:, STUFF] = ids
            t[:, KEEP] = ids
            t[ENDB, :16] = DEAD
            t[ENDF0, :16] = DEAD
            t[ENDF1, :16] = DEAD
            t[ENDF1, MARK], t[ENDF1, STUFF] = ESC, DEAD
            t[ESC, :] = ESC
            t[DEAD, :] = DEAD
        hi[ENDB, 15] = ENDF0  # after the interval's end only the marker's FF
        lo[ENDF0, 15] = ENDF1
        self.hi, self.lo = hi, lo
        # the same, each next id premultiplied by COLS (`TokenProgram.walk`: one add, one take per column)
        self.flat_x = both.reshape(-1) * COLS
        self.lo_x = self.flat_x[n * COLS :].reshape(n, COLS)
        self.flat_x_mv = memoryview(self.flat_x)
        # flat views for scalar steps: indexing a memoryview gives a Python int, ~3x faster than numpy
        self.hi_flat = memoryview(hi.reshape(-1))
        self.lo_flat = memoryview(lo.reshape(-1))
        # which of the 16 low nibbles each state takes (allowed bytes: 16 rows of one state's mids)
        self.lo_ok = lo[:, :16] != DEAD

    # ids <-> tuples -------------------------------------------------------------------------------
    def encode(self, d: tuple | None) -> int:
        if d is None:
            return DEAD
        b, ph, x, k, r = d
        if ph == 4:
            return PAD
        local = x if ph == 0 else self._o1 + x if ph == 1 else self._o2 + x * KS + k if ph == 2 else self._o3 + x * KS + k
        return FIRST + ((r - 1) * self.nb + b) * self.S + local

    def decode(self, i: int) -> tuple | None:
        if i == PAD or i == ENDB:
            return (-1, 4, 0, 0, 0)
        if i < FIRST:
            return None
        rb, local = divmod(i - FIRST, self.S)
        r, b = rb // self.nb + 1, rb % self.nb
        if local < self._o1:
            return (b, 0, local, 0, r)
        if local < self._o2:
            return (b, 1, local - self._o1, 0, r)
        if local < self._o3:
            x, k = divmod(local - self._o2, KS)
            return (b, 2, x, k, r)
        x, k = divmod(local - self._o3, KS)
        return (b, 3, x, k, r)

    # scalar and vector steps ----------------------------------------------------------------------
    def byte(self, d: int, byte: int) -> int:
        """The state id after a whole byte from decoder state `d`: DEAD (refused), ENDB (the interval
        ended at this byte boundary) or a decoder state."""
        return self.lo_flat[self.hi_flat[d * COLS + (byte >> 4)] * COLS + (byte & 15)]

    def byte_mask(self, d: int) -> np.ndarray:
        """bool[256]: the bytes decoder state `d` takes."""
        return self.lo_ok[self.hi[d, :16]].reshape(256)


def _bit_table(t: DecoderTables, grammar) -> np.ndarray:
    """int32[n, 2]: the id after one bit from every id (the rules of `JpegScanGrammar._step`)."""
    nb, S, n = t.nb, t.S, t.n
    out = np.full((n, 2), DEAD, np.int64)
    out[PAD, 1] = PAD
    local = np.arange(S)
    ph = np.select([local < t._o1, local < t._o2, local < t._o3], [0, 1, 2], 3)
    x = np.select([ph == 0, ph == 1, ph == 2], [local, local - t._o1, (local - t._o2) // KS], (local - t._o3) // KS)
    k = np.where(ph >= 2, (local - np.where(ph == 2, t._o2, t._o3)) % KS, 0)
    # per-block tables, padded to the largest
    dcc = np.full((nb, t.ndc, 2), -1, np.int64)
    dclive = np.zeros((nb, t.ndc), bool)
    acc = np.full((nb, t.nac, 2), -1, np.int64)
    acok = np.zeros((nb, t.nac, KS), bool)
    kk = np.arange(KS)
    for bi, (dc, ac) in enumerate(grammar.blocks):
        dcc[bi, : len(dc.child)] = dc.child
        dclive[bi, : len(dc.child)] = grammar._dc_live[bi]
        acc[bi, : len(ac.child)] = ac.child
        for node, (eob, zrl, run) in enumerate(grammar._ac_info[bi]):
            acok[bi, node] = eob | (zrl & (kk <= 47)) | (kk + run <= 63)

    def enc(b, ph_, x_, k_, r):
        loc = np.select([ph_ == 0, ph_ == 1, ph_ == 2], [x_, t._o1 + x_, t._o2 + x_ * KS + k_], t._o3 + x_ * KS + k_)
        return FIRST + ((r - 1) * nb + b) * S + loc

    def end_block(b, r):
        nxt_b = np.where(b + 1 < nb, b + 1, 0)
        nxt_r = np.where(b + 1 < nb, r, r - 1)
        return np.where(nxt_r >= 1, enc(nxt_b, np.zeros_like(b), np.zeros_like(b), np.zeros_like(b), np.maximum(nxt_r, 1)), PAD)

    for r in range(1, t.rmb + 1):
        for b in range(nb):
            ids = FIRST + ((r - 1) * nb + b) * S + local
            bb, rr = np.full(S, b), np.full(S, r)
            zero = np.zeros(S, np.int64)
            for bit in (0, 1):
                res = np.full(S, DEAD, np.int64)
                # phase 0: DC code
                m = ph == 0
                c = dcc[b, np.minimum(x, t.ndc - 1), bit]
                inner = m & (c >= 0)
                live = dclive[b, np.clip(c, 0, t.ndc - 1)]
                res = np.where(inner & live, enc(bb, zero, np.maximum(c, 0), zero, rr), res)
                s = -2 - c
                leaf = m & (c < -1) & (s <= 11)
                res = np.where(leaf & (s > 0), enc(bb, zero + 1, np.maximum(s, 0), zero, rr), res)
                res = np.where(leaf & (s == 0), enc(bb, zero + 2, zero, zero + 1, rr), res)
                # phase 1: DC extra bits
                m = ph == 1
                res = np.where(m & (x > 1), enc(bb, zero + 1, x - 1, zero, rr), res)
                res = np.where(m & (x == 1), enc(bb, zero + 2, zero, zero + 1, rr), res)
                # phase 2: AC code
                m = ph == 2
                c = acc[b, np.minimum(x, t.nac - 1), bit]
                inner = m & (c >= 0)
                ok = acok[b, np.clip(c, 0, t.nac - 1), k]
                res = np.where(inner & ok, enc(bb, zero + 2, np.maximum(c, 0), k, rr), res)
                sym = -2 - c
                run, size = sym >> 4, sym & 15
                leaf = m & (c < -1)
                res = np.where(leaf & (size == 0) & (run == 0), end_block(bb, rr), res)  # EOB
                res = np.where(leaf & (sym == 0xF0) & (k + 16 <= 63), enc(bb, zero + 2, zero, k + 16, rr), res)  # ZRL
                coef = leaf & (size > 0) & (size <= 10) & (k + run <= 63)
                res = np.where(coef, enc(bb, zero + 3, np.clip(size, 0, 15), np.clip(k + run + 1, 0, KS - 1), rr), res)
                # phase 3: AC extra bits
                m = ph == 3
                res = np.where(m & (x > 1), enc(bb, zero + 3, np.maximum(x - 1, 0), k, rr), res)
                res = np.where(m & (x == 1) & (k == 64), end_block(bb, rr), res)
                res = np.where(m & (x == 1) & (k < 64), enc(bb, zero + 2, zero, k, rr), res)
                out[ids, bit] = res
    return out


class TokenProgram:
    """The table lookups that walk every token's bytes from a decoder state at a byte boundary (see
    the module docstring), all tokens at once: each token's first byte (read off the state's row),
    then one lookup per further column. An FF then 00 is the FF's two nibbles then STUFF (the 00
    moves no decoder state); an FF then any other byte is the FF's nibbles then MARK, and the rest
    is left to the grammar (ESC). A special token (None / b"") is a byte then MARK: refused."""

    def __init__(self, tables: DecoderTables, token_bytes: list[bytes | None]):
        progs = []
        for tb in token_bytes:
            if not tb:
                progs.append([(0, 0), (1, 0), (0, MARK)])
                continue
            prog, i = [], 0
            while i < len(tb):
                b = tb[i]
                prog += [(0, b >> 4), (1, b & 15)]
                if b == 0xFF and i + 1 < len(tb):
                    if tb[i + 1] == 0:
                        prog.append((0, STUFF))
                        i += 2
                        continue
                    prog.append((0, MARK))
                    break
                i += 1
            progs.append(prog)
        width = max(len(p) for p in progs)
        half = np.zeros((len(progs), width), np.int64)
        col = np.full((len(progs), width), KEEP, np.int64)
        for r, p in enumerate(progs):
            for j, (h, c) in enumerate(p):
                half[r, j], col[r, j] = h, c
        self.first = col[:, 0] * 16 + col[:, 1]  # the first byte
        # per later column, each token's offset into `tables.flat_x` (+ its current id x COLS)
        offs = half * (tables.n * COLS) + col
        # Columns that only a few long tokens still use cost a numpy call each all the same: from the
        # first column with fewer than TAIL tokens on, those tokens go on in Python (`tail`).
        active = (col != KEEP).sum(0)
        vec = next((j for j in range(2, width) if active[j] < self.TAIL), width)
        self.offsets = [np.ascontiguousarray(offs[:, j]) for j in range(2, vec)]
        self.tail = [(t, [int(o) for o, c in zip(offs[t, vec:], col[t, vec:]) if c != KEEP])
                     for t in range(len(progs)) if (col[t, vec:] != KEEP).any()]
        self.tables = tables

    TAIL = 16

    def walk(self, d: int) -> np.ndarray:
        """Every token's end id x COLS from decoder state `d`: DEAD_X refused, ESC_X undecided (ask
        the grammar), any other value allowed."""
        t = self.tables
        cur = t.lo_x[t.hi[d, :16], :16].reshape(256)[self.first]  # the state's row, then each first byte
        flat = t.flat_x
        for off in self.offsets:
            cur = flat[cur + off]
        if self.tail:
            mv = t.flat_x_mv
            for tok, offs in self.tail:
                x = int(cur[tok])
                if x != DEAD_X and x != ESC_X:  # both absorbing: nothing to walk
                    for off in offs:
                        x = mv[x + off]
                    cur[tok] = x
        return cur


DEAD_X, ESC_X = DEAD * COLS, ESC * COLS

__all__ = ["COLS", "DEAD", "DEAD_X", "ENDB", "ESC", "ESC_X", "FIRST", "PAD", "DecoderTables", "TokenProgram"]
