"""Tokens per 256x256 image: byte-level vs sentencepiece BPE (320 / 1024 / 4096) on canonical JPEG bytes.

BPE is trained on N pets train images and measured on N held-out pets test images (and on its own
training images); also BPE training time and encode/decode speed. CPU only, no torch.

    python bench/bench_tokenizer.py --pets /work/shared/data/pets --num 200 --vocab 320 1024 4096
"""

from __future__ import annotations

import argparse
import io
import platform
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from jpeglm.tokenizer import BpeTokenizer, ByteTokenizer  # noqa: E402


def canonical_jpeg_bytes(path: Path) -> bytes:
    """The project's JpegCodec when present, else the same Pillow settings directly."""
    try:
        from jpeglm.codecs.jpeg import JpegCodec

        return JpegCodec().encode(path)
    except ImportError:
        from PIL import Image

        im = Image.open(path).convert("RGB")
        w, h = im.size
        s = min(w, h)
        im = im.crop(((w - s) // 2, (h - s) // 2, (w - s) // 2 + s, (h - s) // 2 + s)).resize((256, 256), Image.BILINEAR)
        f = io.BytesIO()
        im.save(f, "JPEG", quality=25, subsampling="4:2:0", streamtype=2, restart_marker_blocks=1)
        return f.getvalue()


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--pets", type=Path, default=Path("/work/shared/data/pets"), help="pets dir with train/ and test/")
    ap.add_argument("--num", type=int, default=200, help="images for training BPE, and as many held out for measuring")
    ap.add_argument("--vocab", type=int, nargs="+", default=[320, 1024, 4096], help="BPE vocabulary sizes to compare")
    args = ap.parse_args()

    train_files = sorted((args.pets / "train").glob("*.jpg"))[: args.num]
    test_files = sorted((args.pets / "test").glob("*.jpg"))[: args.num]
    t0 = time.perf_counter()
    train = [canonical_jpeg_bytes(p) for p in train_files]
    test = [canonical_jpeg_bytes(p) for p in test_files]
    print(f"encoded {len(train)} + {len(test)} images to canonical JPEG bytes in {time.perf_counter() - t0:.1f}s")

    rows = []
    byte = ByteTokenizer()
    n_bytes = [len(b) for b in test]
    rows.append(("byte", byte.vocab_size, "-", statistics.mean(len(byte.encode(b)) for b in test),
                 statistics.mean(len(byte.encode(b)) for b in train), 1.0, "-", "-"))
    for v in args.vocab:
        t0 = time.perf_counter()
        tok = BpeTokenizer.train(train, vocab_size=v)
        train_s = time.perf_counter() - t0
        t0 = time.perf_counter()
        ids = [tok.encode(b) for b in test]
        enc_s = time.perf_counter() - t0
        t0 = time.perf_counter()
        assert all(tok.decode(i) == b for i, b in zip(ids, test)), "round trip failed"
        dec_s = time.perf_counter() - t0
        mean_test = statistics.mean(len(i) for i in ids)
        mean_train = statistics.mean(len(tok.encode(b)) for b in train)
        rows.append((f"bpe-{v}", tok.vocab_size, f"{train_s:.1f}", mean_test, mean_train,
                     statistics.mean(n_bytes) / (mean_test - 2), f"{len(test) / enc_s:.0f}", f"{len(test) / dec_s:.0f}"))

    print(f"\nmachine: {platform.processor() or platform.machine()}, shared 2-core CPU, no GPU; "
          f"{len(test)} held-out pets test images (mean {statistics.mean(n_bytes):.0f} bytes), BPE trained on {len(train)} train images")
    print("| tokenizer | vocab (ids) | train s | tokens/image held-out | tokens/image train | bytes/token (held-out) | encode img/s | decode img/s |")
    print("|---|---|---|---|---|---|---|---|")
    for r in rows:
        print(f"| {r[0]} | {r[1]} | {r[2]} | {r[3]:.0f} | {r[4]:.0f} | {r[5]:.3f} | {r[6]} | {r[7]} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
