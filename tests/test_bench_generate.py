"""bench/bench_generate.py at a tiny shape: the in-call decode timing counts every row's decode steps
(new - 1 per row: the first token comes from the prefill) for ours and for generate(), and the whole
bench writes a table with a row per batch, eager (the compiled rows take minutes: not here)."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "bench"))

import bench_generate as bg

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def setup():
    from jpeglm.tokenizer import ByteTokenizer

    tok = ByteTokenizer()
    prompt, codec = bg.jpeg_prompt(64)
    return bg.random_llama("tiny", tok.vocab_size), tok, codec, prompt


@pytest.mark.parametrize("variant", bg.VARIANTS)
def test_one_call_times_the_decode_steps_of_every_row(setup, variant):
    model, tok, codec, prompt = setup
    r = bg.call_variant(variant, model, tok, codec, prompt, 3, 5)
    assert r["new_tokens"] == 3 * 5
    assert r["decode_tokens"] == 3 * 4
    assert 0 < r["decode_s"] < r["call_s"]


def test_static_cache_is_sized_per_call(setup):
    model, tok, codec, prompt = setup
    bg.call_variant("generate() static", model, tok, codec, prompt, 1, 9)
    bg.call_variant("generate() static", model, tok, codec, prompt, 1, 3)
    # generate() would keep the longer call's cache; the bench sizes each call to its own prompt + budget
    assert model._previous_max_cache_length == len(prompt) + 1 + 3 - 1


def test_main_writes_a_row_per_batch(tmp_path):
    out = tmp_path / "generate.md"
    assert bg.main(["--shape", "tiny", "--image-size", "64", "--batches", "1", "8", "--new", "4", "--reps", "1",
                    "--large-from", "8", "--new-large", "3", "--no-compile", "--write", str(out)]) == 0
    text = out.read_text()
    assert "| 1 | 4 | no |" in text and "| 8 | 3 | no |" in text
    assert "At batch 8 (goal 1.5x): end to end" in text and "decode-only" in text
    assert "not reached yet" not in text


def test_rows_from_completes_a_table_one_batch_at_a_time(tmp_path):
    out = tmp_path / "generate.md"
    common = ["--shape", "tiny", "--image-size", "64", "--new", "3", "--reps", "1", "--no-compile", "--write", str(out)]
    assert bg.main(common + ["--batches", "1", "2"]) == 0
    first = out.read_text()
    assert bg.main(common + ["--batches", "2", "--rows-from", str(out)]) == 0
    text = out.read_text()
    assert "| 1 | 3 | no |" in text and "| 2 | 3 | no |" in text and "from the earlier run" in text
    keep = [line for line in first.split("\n") if line.startswith("| 1 | 3 | no |")]
    assert keep and all(line in text for line in keep)  # batch 1's rows kept as they were measured
