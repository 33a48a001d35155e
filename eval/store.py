"""One setting's samples on disk, written as they finish, read back in index order.

    <setting>/NNNNN.png          the sample (the first frame of a video)
    <setting>/NNNNN.json         its sidecar: seed, prompt index, decode report, tokens, seconds;
                                 written last, atomically: a sample is finished when it exists
    <setting>/features/NNNNN.npy its Inception pool3 features, float32 (frames, 2048) (0 rows: failed)
    <setting>/media/NNNNN.npy    video only: the whole decoded clip (uint8 T,H,W,3)
    <setting>/features.npy       all decoded samples' features in index order (for precision/recall)
    <setting>/samples.npz        the ADM evaluator's input: key arr_0, uint8 (N,H,W,3) (N,T,H,W,3 video)
    <setting>/manifest.json      SamplesManifest
    <setting>/error-chunk-C.txt  why chunk C could not be sampled (removed when it is retried)

A rerun skips every index whose sidecar exists, so finished samples are neither redrawn nor rewritten
and their features are reused; only the files after the last sidecar (the aggregates) are rebuilt,
from the per-sample files, in index order: the same bytes whatever the number of processes.
Before they are, `remove_stale` clears what does not belong to this run: per-sample files past its
sample count (an earlier eval into the folder drew more) and the temporaries of killed writers. The
protocol check (eval/harness.py, OUT/protocol.json) makes sure the samples kept are of this protocol.
"""

from __future__ import annotations

import json
import os
import zipfile
from pathlib import Path

import numpy as np
from PIL import Image

from jpeglm.config import atomic_write_bytes, atomic_write_text


def _atomic_npy(path: Path, a: np.ndarray) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    with open(tmp, "wb") as f:
        np.save(f, a)
    os.replace(tmp, path)


class SampleStore:
    def __init__(self, folder: str | os.PathLike):
        self.dir = Path(folder)

    def name(self, i: int) -> str:
        return f"{i:05d}"

    def done(self, i: int) -> bool:
        return (self.dir / f"{self.name(i)}.json").is_file()

    def write(self, i: int, media: np.ndarray, sidecar: dict, features: np.ndarray | None) -> None:
        """Write sample i: picture, features (and clip), then the sidecar that marks it finished."""
        import io

        media = np.asarray(media, dtype=np.uint8)
        frame = media[0] if media.ndim == 4 else media
        buf = io.BytesIO()
        Image.fromarray(frame).save(buf, "PNG")
        atomic_write_bytes(self.dir / f"{self.name(i)}.png", buf.getvalue(), sync=False)
        feats = np.zeros((0, 0), np.float32) if features is None else np.asarray(features, np.float32)
        _atomic_npy(self.dir / "features" / f"{self.name(i)}.npy", feats)
        if media.ndim == 4:
            _atomic_npy(self.dir / "media" / f"{self.name(i)}.npy", media)
        # renamed into place last (no fsync: a killed process leaves the old state or the new, and a
        # sample whose sidecar is missing is simply drawn again)
        atomic_write_bytes(self.dir / f"{self.name(i)}.json",
                           (json.dumps(sidecar, sort_keys=True, default=str) + "\n").encode(), sync=False)

    def sidecar(self, i: int) -> dict:
        return json.loads((self.dir / f"{self.name(i)}.json").read_text())

    def features(self, i: int) -> np.ndarray:
        return np.load(self.dir / "features" / f"{self.name(i)}.npy", allow_pickle=False)

    def media(self, i: int) -> np.ndarray:
        clip = self.dir / "media" / f"{self.name(i)}.npy"
        if clip.is_file():
            return np.load(clip, allow_pickle=False)
        with Image.open(self.dir / f"{self.name(i)}.png") as im:
            return np.asarray(im.convert("RGB"))

    # -- errors of chunks that could not be sampled ----------------------------------------------
    def set_error(self, chunk: int, text: str) -> None:
        atomic_write_text(self.dir / f"error-chunk-{chunk}.txt", text)

    def clear_error(self, chunk: int) -> None:
        (self.dir / f"error-chunk-{chunk}.txt").unlink(missing_ok=True)

    def errors(self) -> list[str]:
        return [p.read_text() for p in sorted(self.dir.glob("error-chunk-*.txt"))]

    # -- aggregates (rank 0) ---------------------------------------------------------------------
    def remove_stale(self, n: int) -> list[str]:
        """Remove NNNNN.{png,json} and features/ media/ NNNNN.npy with an index >= n, and hidden
        temporaries (.X.tmp, .X.rows, .X.tmp.npz) a killed writer left; returns the names removed.
        Rank 0 only, once every rank has finished writing (a live writer's temporary would go too)."""
        gone = []
        for folder in (self.dir, self.dir / "features", self.dir / "media"):
            if not folder.is_dir():
                continue
            for p in folder.iterdir():
                stem, _, ext = p.name.partition(".")
                past = ext in ("png", "json", "npy") and len(stem) == 5 and stem.isdigit() and int(stem) >= n
                if (ext == "npy") != (folder != self.dir):
                    past = False  # .npy only in the sub-folders, png/json only at the top
                temp = p.name.startswith(".") and p.name.endswith((".tmp", ".rows", ".tmp.npz"))
                if (past or temp) and p.is_file():
                    p.unlink(missing_ok=True)
                    gone.append(str(p.relative_to(self.dir)))
        return sorted(gone)

    def write_npz(self, n: int, keep=None) -> int:
        """samples.npz (key arr_0) streamed from the per-sample files, one sample in memory at a time.
        Returns the count written; nothing is written when the samples differ in shape."""
        idx = [i for i in range(n) if keep is None or keep(i)]
        if not idx:
            return 0
        first = self.media(idx[0])
        shapes = {first.shape} | {self._shape(i) for i in idx[1:]}
        if len(shapes) != 1:
            return 0
        tmp = self.dir / ".samples.npz.tmp"
        header = {"descr": np.lib.format.dtype_to_descr(np.dtype(np.uint8)), "fortran_order": False,
                  "shape": (len(idx), *first.shape)}
        with zipfile.ZipFile(tmp, "w", compression=zipfile.ZIP_DEFLATED, compresslevel=1, allowZip64=True) as z, \
                z.open("arr_0.npy", "w", force_zip64=True) as f:
            np.lib.format.write_array_header_2_0(f, header)
            for i in idx:
                f.write(np.ascontiguousarray(self.media(i), dtype=np.uint8).tobytes())
        os.replace(tmp, self.dir / "samples.npz")
        return len(idx)

    def _shape(self, i: int) -> tuple:
        clip = self.dir / "media" / f"{self.name(i)}.npy"
        if clip.is_file():
            with open(clip, "rb") as f:
                v = np.lib.format.read_magic(f)
                read = np.lib.format.read_array_header_1_0 if v == (1, 0) else np.lib.format.read_array_header_2_0
                return tuple(read(f)[0])
        with Image.open(self.dir / f"{self.name(i)}.png") as im:
            return (im.size[1], im.size[0], 3)


class FeatureWriter:
    """A 2-D float32 `.npy` written block by block: rows go to a raw file, the header (with the final
    row count) and the rows are joined into the `.npy` at `close`, which renames it into place."""

    def __init__(self, path: str | os.PathLike, dim: int):
        self.path, self.dim, self.n = Path(path), dim, 0
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.raw = self.path.with_name(f".{self.path.name}.rows")
        self.f = open(self.raw, "wb")  # noqa: SIM115 - stays open across add() calls, closed in close()

    def add(self, rows: np.ndarray) -> None:
        rows = np.asarray(rows, "<f4").reshape(-1, self.dim)
        self.f.write(rows.tobytes())
        self.n += len(rows)

    def close(self) -> Path:
        import shutil

        self.f.close()
        tmp = self.path.with_name(f".{self.path.name}.tmp")
        with open(tmp, "wb") as out, open(self.raw, "rb") as rows:
            np.lib.format.write_array_header_1_0(out, {"descr": "<f4", "fortran_order": False, "shape": (self.n, self.dim)})
            shutil.copyfileobj(rows, out, 1 << 20)
        os.replace(tmp, self.path)
        self.raw.unlink()
        return self.path
