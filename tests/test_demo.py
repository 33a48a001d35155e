"""The README's first command, `jpeglm demo`, end to end at a reduced step count: every system gets a
FID in every setting and every sample decodes.

A real regression this catches: the demo trained at tiny-cpu's 256-token context, the sampling budget
is the trained context, and the 0.5 / 0.75 prompts of a 64x64 JPEG (320-340 BPE tokens) no longer
fitted: those settings failed with PromptTooLongError and the table showed n/a for JPEG-LM.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

pytest.importorskip("skimage")


def test_demo_scores_every_system_in_every_setting(tmp_path):
    out = tmp_path / "demo"
    # A fresh process as a user starts it: earlier in-process tests leave the rendezvous variables of
    # their (still open) process group in os.environ, and a MASTER_PORT inherited from them is taken.
    rendezvous = {"RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT"}
    env = {**{k: v for k, v in os.environ.items() if k not in rendezvous}, "OMP_NUM_THREADS": "1"}
    run = subprocess.run([sys.executable, "-m", "jpeglm", "demo", "--out", str(out), "--steps", "60", "--vq-steps", "40"],
                         cwd=tmp_path, env=env, capture_output=True, text=True, timeout=900)
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-3000:]
    report = json.loads((out / "eval" / "report.json").read_text())
    assert [s["name"] for s in report["systems"]] == ["jpeg", "vq", "pixel"]
    for s in report["systems"]:
        settings = [r["setting"] for r in s["rows"]]
        assert settings == ["ratio=0.25", "ratio=0.5", "ratio=0.75", "unconditional"], (s["name"], settings)
        for r in s["rows"]:
            where = f"{s['name']} {r['setting']}: {r.get('traceback') or r.get('fid_reason')}"
            assert r["traceback"] is None and r["fid"] is not None, where
            assert r["n_samples"] > 0 and r["failure_rate"] == 0.0, where
    assert (out / "eval" / "report.html").is_file()
