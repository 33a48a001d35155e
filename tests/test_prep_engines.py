"""Where prep runs: units of any size, a worker killed mid-run (local: a clear error, then resume; Ray: retried),
and `--engine ray` byte-identical to `--engine local`."""

from __future__ import annotations

import os
import signal
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from jpeglm.codecs.jpeg import JpegCodec
from jpeglm.data_prep import units as unitlib
from jpeglm.data_prep.pipeline import prep
from jpeglm.data_prep.sources import open_source
from jpeglm.data_prep.writer import PrepError

HERE = Path(__file__).resolve().parent


def tree(d: Path) -> dict[str, bytes]:
    return {p.relative_to(d).as_posix(): p.read_bytes() for p in sorted(d.rglob("*")) if p.is_file()}


def make_images(d: Path, n: int, side=(120, 90)) -> Path:
    rng = np.random.default_rng(0)
    d.mkdir(parents=True, exist_ok=True)
    yy, xx = np.mgrid[0 : side[1], 0 : side[0]]
    for i in range(n):
        base = np.stack([(xx * (i + 1) + yy) % 256, (yy * 3 + i * 17) % 256, (xx + yy * (i % 5)) % 256], -1)
        Image.fromarray(np.clip(base + rng.normal(0, 8, base.shape), 0, 255).astype(np.uint8)).save(d / f"i{i:02d}.png")
    return d


def run(src: Path, out: Path, **kw):
    kw = {"val_fraction": 0.3, "records_per_shard": 4, "min_side": 32, "progress": False, "log": None, **kw}
    return prep(open_source(str(src)), kw.pop("codec", JpegCodec), out, **kw)


class KillOnce(JpegCodec):
    """A JPEG codec whose first encode in a worker (not in the test's process, which encodes too)
    SIGKILLs that worker, as the OOM killer would; `flag` records that it happened, so the next
    process to try encodes normally."""

    def __init__(self, flag: str, spare: int):
        super().__init__()
        self.flag, self.spare = flag, spare

    def encode(self, media):
        if os.getpid() == self.spare:
            time.sleep(0.05)  # slow here, so that the workers get their share of the units
            return super().encode(media)
        try:
            os.close(os.open(self.flag, os.O_CREAT | os.O_EXCL | os.O_WRONLY))
        except FileExistsError:
            return super().encode(media)
        os.kill(os.getpid(), signal.SIGKILL)


class CountingFactory:
    """JPEG codecs that append a line to `log` for every picture they encode."""

    def __init__(self, log):
        self.log = str(log)

    def __call__(self):
        log = self.log

        class Counting(JpegCodec):
            def encode(self, media):
                with open(log, "a") as f:
                    f.write("x\n")
                return super().encode(media)

        return Counting()


class KillOnceFactory:
    def __init__(self, flag):
        self.flag, self.spare = str(flag), os.getpid()

    def __call__(self):
        return KillOnce(self.flag, self.spare)


def test_units_of_any_size_give_the_same_shards(tmp_path):
    src = make_images(tmp_path / "src", 11)  # 3 chunks of 4, 4, 3 items
    ref = tmp_path / "ref"
    run(src, ref)  # one worker: whole chunks, no pieces
    for i, kw in enumerate([{"workers": 2}, {"workers": 2, "items_per_task": 1}, {"workers": 2, "items_per_task": 3}]):
        out = tmp_path / f"o{i}"
        run(src, out, **kw)
        assert tree(out) == tree(ref), kw  # no piece left behind either
    # a labelled prep (class counts in the markers) merged from pieces: the same bytes too
    classes = tmp_path / "classes"
    make_images(classes / "cat", 5)
    make_images(classes / "dog", 4)
    run(classes, tmp_path / "lref", labels="folders")
    run(classes, tmp_path / "lpieces", labels="folders", workers=2, items_per_task=1)
    assert tree(tmp_path / "lpieces") == tree(tmp_path / "lref")
    # 500 items, 2 workers, chunks of 1000: units shrink from 1/8 of the work to MIN_UNIT items at the end
    units, _ = unitlib.plan_units([list(range(500))], [0], unitlib.UnitSizes(1000, 2), {})
    sizes = [u.end - u.start for u in units]
    assert sizes[0] == 63 and sizes == sorted(sizes, reverse=True) and sizes[-1] <= unitlib.MIN_UNIT
    assert sum(sizes) == 500 and [u.start for u in units[1:]] == [u.end for u in units[:-1]]
    assert unitlib.UnitSizes(1000, 1)(500) == 1000  # one worker: whole chunks
    assert unitlib.UnitSizes(1000, 16)(23_000_000) == 1000  # at scale a unit is a chunk: no pieces to merge


def test_resume_reuses_pieces_of_another_unit_size(tmp_path):
    src = make_images(tmp_path / "src", 9)
    ref = tmp_path / "ref"
    run(src, ref, records_per_shard=9)
    out = tmp_path / "out"
    # pieces a killed run left: items 0-2 and 5-6 of the one chunk (units of another size than the rerun's)
    gaps, _ = unitlib.plan_units([list(range(9))], [0], 2, {0: [(0, 3), (5, 7)]})
    assert [(u.start, u.end) for u in gaps] == [(3, 5), (7, 9)]  # only the gaps are encoded
    # make those pieces for real by running units by hand, then let prep finish the chunk
    from jpeglm.data_prep import pipeline
    from jpeglm.data_prep.store import Store

    plan = pipeline._plan(open_source(str(src)), JpegCodec, Store(out), pipeline.PrepSettings(
        val_fraction=0.3, records_per_shard=9, min_side=32), None, None)
    pipeline._init_worker(plan.setup)
    for a, b in [(0, 3), (5, 7), (4, 6)]:  # (4, 6) overlaps: not used, deleted at the merge
        assert "piece" in pipeline._process_unit(unitlib.Unit(0, a, b, 9, plan.chunks[0][a:b]))
    log = tmp_path / "encoded"
    run(src, out, records_per_shard=9, workers=1, items_per_task=2, codec=CountingFactory(log))
    assert len(log.read_text().splitlines()) == 4  # items 3, 4, 7, 8: the pieces' items were not encoded again
    assert tree(out) == tree(ref)


@pytest.mark.timeout(180)
def test_killed_worker_stops_the_prep_and_the_rerun_resumes(tmp_path):
    """A pool worker SIGKILLed mid-run: multiprocessing.Pool would wait forever; this stops with a clear error."""
    src = make_images(tmp_path / "src", 16)
    out, ref = tmp_path / "out", tmp_path / "ref"
    t0 = time.time()
    with pytest.raises(PrepError, match="worker process died.*run the same command again to resume"):
        run(src, out, workers=2, items_per_task=1, codec=KillOnceFactory(tmp_path / "killed"))
    assert (tmp_path / "killed").exists() and time.time() - t0 < 60
    assert not (out / "manifest.json").exists()
    run(src, out, workers=2, items_per_task=3, codec=KillOnceFactory(tmp_path / "killed"))  # the flag is set: no kill
    run(src, ref)
    assert tree(out) == tree(ref)


def test_a_refused_prep_stops_the_workers_it_started(tmp_path):
    """Workers start before the output is claimed; a prep refused there (another folder's files) stops them."""
    import multiprocessing as mp

    src = make_images(tmp_path / "src", 12)
    out = tmp_path / "out"
    out.mkdir()
    (out / "notes.txt").write_text("not a prep")
    before = set(mp.active_children())
    with pytest.raises(PrepError, match="not a jpeglm prep"):
        run(src, out, workers=2)
    assert not [p for p in mp.active_children() if p not in before and p.is_alive()]
    assert not (out / "parts").exists()  # nothing of a prep written there


def test_ray_missing_is_a_clear_error(tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "ray", None)  # as if not installed
    with pytest.raises(PrepError, match=r"pip install 'jpeglm\[ray\]'"):
        run(make_images(tmp_path / "src", 2), tmp_path / "out", engine="ray")
    with pytest.raises(PrepError, match="--address is for --engine ray"):
        run(tmp_path / "src", tmp_path / "out2", address="auto")


@pytest.fixture(scope="module")
def local_ray():
    ray = pytest.importorskip("ray", reason="Ray is an optional extra (pip install 'jpeglm[ray]')")
    # the test module's codecs must import in Ray's workers
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False, object_store_memory=80 * 2**20,
             runtime_env={"env_vars": {"PYTHONPATH": os.pathsep.join([str(HERE), os.environ.get("PYTHONPATH", "")])}})
    yield ray
    ray.shutdown()


@pytest.mark.timeout(300)
def test_ray_engine_is_byte_identical_and_retries_a_killed_task(tmp_path, local_ray):
    src = make_images(tmp_path / "src", 7)
    ref = tmp_path / "ref"
    run(src, ref)
    out = tmp_path / "ray"
    res = run(src, out, engine="ray")  # 2 CPUs: chunks split into units, merged by the driver
    assert tree(out) == tree(ref) and res.num_records == 7
    # a Ray worker killed by SIGKILL: Ray runs the task again elsewhere, the prep finishes, same bytes
    killed = tmp_path / "ray_killed"
    run(src, killed, engine="ray", items_per_task=1, codec=KillOnceFactory(tmp_path / "flag"))
    assert (tmp_path / "flag").exists() and tree(killed) == tree(ref)


def test_staged_files_synced_while_they_grow_commit_and_abort_cleanly(tmp_path, monkeypatch):
    # The background fdatasyncs (every SYNC_EVERY bytes) must not change what is committed, and an
    # abort while they run must leave no temporary file behind (nor close an fd a sync still uses).
    from jpeglm.data_prep.store import Staged, Store

    monkeypatch.setattr(Staged, "SYNC_EVERY", 1000)
    rng = np.random.default_rng(0)
    blobs = [rng.integers(0, 256, int(n), dtype=np.uint8).tobytes() for n in rng.integers(1, 5000, 40)]
    staged = Store(tmp_path / "a").staged()
    for b in blobs:
        staged.append("train/x.bin", b)
        staged.append("train/x.jsonl", b[:7])
    assert staged._syncing, "no background sync was started"
    staged.commit({"train/x.idx": b"idx"})
    assert (tmp_path / "a/train/x.bin").read_bytes() == b"".join(blobs)
    assert (tmp_path / "a/train/x.jsonl").read_bytes() == b"".join(b[:7] for b in blobs)
    assert sorted(p.name for p in (tmp_path / "a/train").iterdir()) == ["x.bin", "x.idx", "x.jsonl"]
    staged = Store(tmp_path / "b").staged()
    for b in blobs:
        staged.append("train/y.bin", b)
    staged.abort()
    assert list((tmp_path / "b/train").iterdir()) == []


def test_fork_server_preload_warms_pillow(tmp_path):
    # engines.PRELOAD names the module that runs Image.preinit in the fork server, so workers start
    # with Pillow's plugins imported (12 ms of their first item otherwise); it must stay importable.
    import subprocess

    from jpeglm.data_prep.engines import PRELOAD

    assert "jpeglm.data_prep.preload" in PRELOAD
    code = ("import sys; from PIL import Image; import jpeglm.data_prep.preload; "
            "sys.exit(0 if 'PIL.JpegImagePlugin' in sys.modules and 'PIL.PngImagePlugin' in sys.modules else 1)")
    assert subprocess.run([sys.executable, "-c", code], check=False).returncode == 0
