"""Cost of the canonical JPEG codec and of the JPEG scan grammar per byte and per token.

Run: python bench/bench_jpeg_grammar.py [--images N]
Prints a Markdown table (paste into bench/results/jpeg.md). Uses scikit-image's bundled photos
(offline) and the pets set when it is present; runs in well under a minute on 2 CPU cores.
"""

from __future__ import annotations

import argparse
import platform
import time
from pathlib import Path

import numpy as np
from PIL import Image

from jpeglm.codecs.jpeg import JpegCodec, header_length
from jpeglm.codecs.jpeg_grammar import JpegScanGrammar, TokenTrie

PETS = Path(__file__).resolve().parents[2] / "shared" / "data" / "pets" / "test"


def load_images(n: int) -> list[Image.Image]:
    import skimage.data

    root = Path(skimage.data.__file__).parent
    names = ["astronaut.png", "chelsea.png", "coffee.png", "rocket.jpg", "ihc.png", "motorcycle_left.png"]
    ims = [Image.open(root / x).convert("RGB") for x in names]
    if PETS.is_dir():
        ims += [Image.open(p).convert("RGB") for p in sorted(PETS.glob("*.jpg"))[: max(0, n - len(ims))]]
    return ims[:n]


def bpe_like_vocab(streams: list[bytes], size: int, rng) -> list[bytes | None]:
    """4 specials, the 256 single bytes, then frequent 2..8-byte chunks of real scans: a stand-in
    for a trained BPE vocabulary (the grammar's cost depends on the trie, not on how it was made)."""
    from collections import Counter

    counts: Counter = Counter()
    for s in streams:
        hl = header_length(s)
        for n in range(2, 9):
            for i in range(hl, len(s) - n, 3):
                counts[s[i : i + n]] += 1
    extra = [t for t, _ in counts.most_common(size - 260)]
    return [None] * 4 + [bytes([b]) for b in range(256)] + extra


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--images", type=int, default=40, help="number of photos to encode and walk")
    args = ap.parse_args()
    rng = np.random.default_rng(0)
    codec = JpegCodec()
    ims = load_images(args.images)

    t = time.perf_counter()
    streams = [codec.encode(im) for im in ims]
    enc = (time.perf_counter() - t) / len(ims)
    t = time.perf_counter()
    for s in streams:
        codec.decode(s)
    dec = (time.perf_counter() - t) / len(ims)
    nbytes = sum(len(s) for s in streams)

    rows = [("encode (prepare + Pillow save), per image", f"{enc * 1e3:.2f} ms"),
            ("decode (tables spliced + strict Pillow load), per image", f"{dec * 1e3:.2f} ms"),
            ("mean modelled bytes per 256x256 image", f"{nbytes / len(streams):.0f}")]

    for label, warm in (("cold grammar (first pass)", False), ("warm grammar (second pass)", True)):
        if not warm:
            g = JpegScanGrammar(codec)  # the warm pass reuses this grammar's caches
        t = time.perf_counter()
        for s in streams:
            st = g.initial_state()
            for b in s:
                g.allowed_bytes(st)
                st = g.advance(st, b)
        per = (time.perf_counter() - t) / nbytes
        rows.append((f"allowed_bytes + advance per byte, {label}", f"{per * 1e6:.2f} us"))
    rows.append(("decoder states interned after the passes", f"{len(g._states)}"))

    for vocab in (320, 4096, 32000):
        toks = bpe_like_vocab(streams, vocab, rng)
        trie = TokenTrie(toks)
        # greedy longest-match tokenisation of the streams gives realistic token boundaries
        lookup = _lookup(toks)
        for label in ("new states (mask cache empty)", "the same states again (cache hits)"):
            if label.startswith("new"):
                g._mask_caches.clear()
            n_tok, t = 0, time.perf_counter()
            for s in streams[:3]:  # ~2-3k tokens per stream; enough for a stable figure
                st, i = g.initial_state(), 0
                while i < len(s):
                    mask = g.allowed_token_mask(st, trie)
                    # greedy longest match: realistic token boundaries without training BPE here
                    longest = min(trie.max_len, len(s) - i)
                    n = next(n for n in range(longest, 0, -1) if s[i : i + n] in lookup.get(n, {}))
                    assert mask[lookup[n][s[i : i + n]]]
                    for b in s[i : i + n]:
                        st = g.advance(st, b)
                    i += n
                    n_tok += 1
            per = (time.perf_counter() - t) / n_tok
            rows.append((f"allowed_token_mask per token, vocab {len(toks)}, {label}", f"{per * 1e3:.3f} ms"))
        # worst case: a fresh grammar (no rows cached) along a random walk over allowed tokens
        fresh, st, n_tok = JpegScanGrammar(codec), None, 0
        st = fresh.start_state()
        t = time.perf_counter()
        while not fresh.is_complete(st) and n_tok < 1000:
            mask = fresh.allowed_token_mask(st, trie)
            tid = int(rng.choice(np.flatnonzero(mask)))
            for b in toks[tid]:
                st = fresh.advance(st, b)
            n_tok += 1
        rows.append((f"allowed_token_mask per token, vocab {len(toks)}, fresh grammar, random walk",
                     f"{(time.perf_counter() - t) / n_tok * 1e3:.3f} ms"))
        t = time.perf_counter()
        checks = 0
        for s in streams[:3]:
            st = g.start_state()
            for i in range(header_length(s), len(s)):
                for tid in rng.integers(0, len(toks), 50):  # a top-k=50 candidate set
                    g.token_allowed(st, toks[tid])
                checks += 1
                st = g.advance(st, s[i])
        rows.append((f"token_allowed on 50 candidates (top-k), vocab {len(toks)}, per step",
                     f"{(time.perf_counter() - t) / checks * 1e3:.3f} ms"))

    print(f"Machine: {platform.processor() or platform.machine()}, shared 2-core CPU, no GPU; "
          f"Python {platform.python_version()}; {len(ims)} images\n")
    print("| measure | value |\n|---|---|")
    for k, v in rows:
        print(f"| {k} | {v} |")


def _lookup(toks) -> dict[int, dict[bytes, int]]:
    table: dict[int, dict[bytes, int]] = {}
    for tid, tb in enumerate(toks):
        if tb:
            table.setdefault(len(tb), {})[tb] = tid
    return table


if __name__ == "__main__":
    main()
