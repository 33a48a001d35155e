"""Where the time of one `jpeglm prep` goes: a phase breakdown of the driver and every worker.

    python bench/profile_prep.py --workers 2            # 500 pets photos (or --input FOLDER), 5 runs
    python bench/profile_prep.py --workers 1 --runs 3 --timeline

Prints, per run: the start (prep called -> each worker's first unit), each worker's busy time
(wall and CPU of its units) and idle gaps between units, how late the driver received each result,
and the tail (last unit done -> chunk written -> manifest -> prep returned). The driver's phases are
timed by wrapping pipeline/engine functions; the workers' units by wrapping `_process_unit` (the
wrappers live in this script, which the fork server preloads as __main__). Wall times are only
meaningful on an idle machine; CPU times are per thread.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from jpeglm.data_prep import engines, pipeline, units, writer
from jpeglm.data_prep.sources import open_source

from jpeglm.codecs.jpeg import JpegCodec

PETS = ROOT.parent / "shared" / "data" / "pets" / "train"
EVENTS: list = []  # driver: (name, thread, start, end, thread CPU)
_ORIG_UNIT, _ORIG_INIT = pipeline._process_unit, pipeline._init_worker
_INIT: dict = {}


def _wrap(owner, name: str) -> None:
    f = getattr(owner, name)

    def timed(*a, **k):
        t0, c0 = time.perf_counter(), time.thread_time()
        try:
            return f(*a, **k)
        finally:
            EVENTS.append((name, threading.current_thread().name, t0, time.perf_counter(), time.thread_time() - c0))

    setattr(owner, name, timed)


def traced_init(setup, counter=None):
    t0 = time.perf_counter()
    err = _ORIG_INIT(setup, counter)
    _INIT.update(pid=os.getpid(), t0=t0, t1=time.perf_counter())
    return err


def traced_unit(unit):
    t0, c0 = time.perf_counter(), time.thread_time()
    result = dict(_ORIG_UNIT(unit))
    result["_trace"] = (os.getpid(), threading.current_thread().name, t0, time.perf_counter(), time.thread_time() - c0,
                        len(unit.items), dict(_INIT))
    return result


def profile(source, workers: int, n: int, timeline: bool) -> dict:
    got: list = []
    run = engines.LocalEngine.run

    def traced_run(self, todo, on_result, on_progress):
        def on(result):
            if "_trace" in result:
                got.append((result["_trace"], time.perf_counter()))
            return on_result(result)
        return run(self, todo, on, on_progress)

    engines.LocalEngine.run = traced_run
    EVENTS.clear()
    try:
        with tempfile.TemporaryDirectory() as d:
            t0, c0 = time.perf_counter(), time.process_time()
            pipeline.prep(source, JpegCodec, Path(d) / "out", workers=workers, val_fraction=0.0, progress=False, log=None, limit=n)
            t_end, cpu = time.perf_counter(), time.process_time() - c0
    finally:
        engines.LocalEngine.run = run
    ms = lambda t: 1e3 * (t - t0)
    by_worker: dict = {}
    for (pid, thread, a, b, c, k, init), received in sorted(got, key=lambda g: g[0][2]):
        w = by_worker.setdefault(f"{'driver' if pid == os.getpid() else 'pool'} {pid}", dict(  # noqa: C408
            first=a, last=b, busy=0.0, cpu=0.0, items=0, units=0, gaps=0.0, late=0.0, init=init))
        w["gaps"] += max(0.0, a - w["last"]) if w["units"] else 0.0
        w.update(last=b, busy=w["busy"] + b - a, cpu=w["cpu"] + c, items=w["items"] + k, units=w["units"] + 1)
        w["late"] += received - b
        if timeline:
            print(f"    unit {k:3d} items  {thread[:12]:12s} pid {pid}  {ms(a):6.1f} -> {ms(b):6.1f} ms  cpu {1e3 * c:5.1f}  "
                  f"received {1e3 * (received - b):4.1f} ms later")
    phases = {}
    for name, thread, a, b, c in EVENTS:
        p = phases.setdefault(name, [a, b, 0.0, 0.0])
        p[0], p[1], p[2], p[3] = min(p[0], a), max(p[1], b), p[2] + b - a, p[3] + c
    last_unit = max(w["last"] for w in by_worker.values())
    finish = phases.get("finish", [last_unit, last_unit])
    print(f"  {workers} worker(s), {n} items: {ms(t_end):.1f} ms wall, driver process CPU {1e3 * cpu:.1f} ms")
    for name, w in by_worker.items():
        init = w["init"]
        ready = f", set up {ms(init['t0']):.1f} -> {ms(init['t1']):.1f}" if init.get("pid") == int(name.split()[1]) else ""
        print(f"    {name}: {w['items']} items in {w['units']} units{ready}, first unit at {ms(w['first']):.1f}, last done at "
              f"{ms(w['last']):.1f}; busy {1e3 * w['busy']:.1f} ms (CPU {1e3 * w['cpu']:.1f}), idle between units "
              f"{1e3 * w['gaps']:.1f} ms, results received {1e3 * w['late']:.1f} ms late in all")
    for name in ("_plan", "claim_output", "_start", "run", "add", "finish", "_close", "_manifest", "write_manifest", "save_tokenizer"):
        if name in phases:
            a, b, wall, c = phases[name]
            print(f"    {name:15s} {ms(a):6.1f} -> {ms(b):6.1f} ms, {1e3 * wall:5.1f} ms wall, {1e3 * c:5.1f} ms CPU (summed over calls)")
    print(f"    tail: last unit done at {ms(last_unit):.1f}, chunk written {ms(finish[1]):.1f}, prep returned {ms(t_end):.1f} "
          f"({1e3 * (t_end - last_unit):.1f} ms after the last unit)")
    return {"wall": t_end - t0, "tail": t_end - last_unit, "start": min(w["first"] for w in by_worker.values()) - t0}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--input", default=None, help="image folder (default: ../shared/data/pets/train)")
    ap.add_argument("--n", type=int, default=500)
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--runs", type=int, default=5)
    ap.add_argument("--timeline", action="store_true", help="also print every unit")
    args = ap.parse_args()
    pipeline._process_unit, pipeline._init_worker = traced_unit, traced_init
    for owner, name in [(pipeline, "_plan"), (pipeline, "claim_output"), (pipeline, "_manifest"), (pipeline, "write_manifest"),
                        (pipeline, "save_tokenizer"), (engines.LocalEngine, "_start"), (engines.LocalEngine, "_close"),
                        (units.ChunkMerger, "add"), (writer.ShardStream, "finish")]:
        _wrap(owner, name)
    listed = open_source(args.input or str(PETS))
    folder = Path(tempfile.mkdtemp(prefix="profile_prep_"))  # exactly these n files (as bench_prep.py does)
    for it in listed.items()[: args.n]:
        (folder / it.key).parent.mkdir(parents=True, exist_ok=True)
        (folder / it.key).write_bytes(Path(listed.fetch(it)).read_bytes())
    source = open_source(str(folder))
    with tempfile.TemporaryDirectory() as d:  # starts the fork server, outside the runs
        pipeline.prep(source, JpegCodec, Path(d) / "out", workers=args.workers, val_fraction=0.0, progress=False, log=None, limit=16)
    for i in range(args.runs):
        print(f"run {i + 1}:")
        profile(source, args.workers, args.n, args.timeline)
    return 0


if __name__ == "__main__":
    sys.exit(main())
