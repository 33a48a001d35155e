"""Assemble BENCHMARKS.md from bench/results/*.md (each written by one bench script's --write).

    python bench/make_benchmarks_md.py
"""

from __future__ import annotations

from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "bench" / "results"
# the order a reader follows the pipeline in; files not listed here come last, alphabetically
ORDER = ["prep", "tokenizer", "jpeg", "video", "train", "sample", "constraint", "generate", "baselines", "eval", "eval_memory",
         "avc_grammar"]
TITLES = {"avc_grammar": "H.264 grammar"}
HEADER = """# Benchmarks

Every figure below comes from a script in `bench/`, run with the command shown beside it. Unless a
section says otherwise: a 2-core x86-64 CPU shared with other jobs (load average 3-9 while these ran, so
wall-clock figures are pessimistic and ratios were measured in the same run, interleaved), no GPU.

**No GPU was lent to the sessions that wrote these.** The GPU benchmarks the issues ask for (training MFU
at 350M/1B and sequence length 12288; sampling against vLLM and the memory-bandwidth roofline; VQ and
FID feature extraction on GPU) are not measured; each section gives the command to run on one.
"""


def _demote_headings(text: str) -> str:
    out, fenced = [], False
    for line in text.split("\n"):
        if line.startswith("```"):
            fenced = not fenced
        elif not fenced and line.startswith("#"):
            line = "#" + line
        out.append(line)
    return "\n".join(out)


def main() -> None:
    names = [p.stem for p in sorted(RESULTS.glob("*.md"))]
    names = [n for n in ORDER if n in names] + [n for n in names if n not in ORDER]
    parts = [HEADER, "", "Contents: " + ", ".join(f"[{TITLES.get(n, n)}](#{n})" for n in names) + ".", ""]
    for n in names:
        text = (RESULTS / f"{n}.md").read_text().rstrip("\n")
        if text.startswith("# "):  # each file's title is a section here: every heading one level down
            text = _demote_headings(text)
        parts += [f'<a id="{n}"></a>', "", text, ""]
    (ROOT / "BENCHMARKS.md").write_text("\n".join(parts))


if __name__ == "__main__":
    main()
