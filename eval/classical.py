"""The best classical model of the same bytes: JPEG XL's lossless JPEG recompression.

`cjxl --lossless_jpeg=1 in.jpg out.jxl` (Debian/Ubuntu package libjxl-tools) re-codes a JPEG file's
DCT coefficients with JPEG XL's context modelling and gives back the identical file on `djxl`: a
lossless model of the JPEG, the bar a byte-level language model of JPEG has to clear to have learned
more than Huffman coding. The harness reports 8 * (JPEG XL bytes) / (modelled bytes) beside the
model's bits per byte for systems whose sample file is a JPEG (the container and tables are in
cjxl's count, not in the modelled stream, so the comparison is conservative for the model), and
"not measured" with the reason when cjxl is absent.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import tempfile

CJXL = "cjxl"
JPEG_SUFFIXES = (".jpg", ".jpeg")


def cjxl_path() -> str | None:
    return shutil.which(os.environ.get("JPEGLM_CJXL", CJXL))


def jxl_reason(file_suffix: str) -> str:
    """Why the JPEG XL column cannot be filled for files of this suffix ("" when it can)."""
    if file_suffix.lower() not in JPEG_SUFFIXES:
        return "not measured: the samples are not JPEG files (cjxl --lossless_jpeg recompresses JPEG only)"
    if cjxl_path() is None:
        return "not measured: cjxl not found (apt-get install libjxl-tools)"
    return ""


def jxl_recompressed_bytes(jpeg_file: bytes, timeout_s: float = 120.0) -> int:
    """Size of `cjxl --lossless_jpeg=1` of one JPEG file (bytes)."""
    exe = cjxl_path()
    if exe is None:
        raise FileNotFoundError("cjxl not found (apt-get install libjxl-tools)")
    with tempfile.TemporaryDirectory(prefix="jpeglm-jxl-") as d:
        src, dst = os.path.join(d, "in.jpg"), os.path.join(d, "out.jxl")
        with open(src, "wb") as f:
            f.write(jpeg_file)
        proc = subprocess.run([exe, "--lossless_jpeg=1", "--quiet", src, dst], capture_output=True, timeout=timeout_s,
                              check=False)
        if proc.returncode != 0 or not os.path.isfile(dst):
            msg = (proc.stderr or proc.stdout).decode("utf-8", "replace").strip().splitlines()
            raise RuntimeError(f"cjxl failed ({proc.returncode}): {msg[-1] if msg else 'no output'}")
        return os.path.getsize(dst)
