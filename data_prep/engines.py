"""Where the units of a prep run: this process, a local process pool, or a Ray cluster.

Every engine runs the same task function on the same units and hands each result to the driver
as it comes (in any order); what is written does not depend on the engine, so `--engine ray` and
`--engine local` give the same bytes. A worker builds its codec and tokenizer once (`init`).

Dead workers stop the prep instead of hanging it: multiprocessing.Pool silently replaces a
worker killed by a signal (the OOM killer) and waits forever for its task, so the local engine
uses concurrent.futures.ProcessPoolExecutor, which notices a worker that died and fails every
pending task (BrokenProcessPool); the prep then stops with one clear line, and a rerun resumes
from the chunks and pieces already written. Ray retries a task whose worker died (or that raised
OSError, e.g. a storage hiccup) up to `RAY_RETRIES` times, then fails the same way.
"""

from __future__ import annotations

import multiprocessing as mp
import sys
from concurrent.futures import FIRST_COMPLETED, ProcessPoolExecutor, wait
from concurrent.futures.process import BrokenProcessPool
from typing import Callable

from jpeglm.data_prep.writer import PrepError

POLL_S = 0.5  # how often the driver refreshes the progress bar while it waits
RAY_RETRIES = 3
_RESUME = "the chunks finished so far are kept: run the same command again to resume"


def mp_context():
    # Not fork: by the time workers start, the parent has threads (the HF tokenizers pool used to
    # save the tokenizer, torch's pools for vq, BLAS), and a fork can copy a lock another thread
    # holds -> a worker that never starts. A fork server is a clean single-threaded process that
    # forks the workers; it is started once per parent and has our modules preloaded, so workers
    # start in a fraction of a second (spawn would re-import everything in every worker).
    if sys.platform == "linux":
        ctx = mp.get_context("forkserver")
        ctx.set_forkserver_preload(["jpeglm.data_prep.pipeline", "jpeglm.data_prep.sources", "jpeglm.media", "jpeglm.tokenizer"])
        return ctx
    return mp.get_context("spawn")


class LocalEngine:
    """`workers` processes on this machine (this process itself when there is one, or one unit)."""

    def __init__(self, workers: int, init: Callable, setup, task: Callable):
        self.slots, self.init, self.setup, self.task = workers, init, setup, task

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        return False

    def run(self, units: list, on_result: Callable, on_progress: Callable) -> None:
        """Run `task(unit)` for every unit; `on_result(result)` in this process as each finishes,
        `on_progress(items_finished)` now and then."""
        if self.slots <= 1 or len(units) <= 1:
            self.init(self.setup)
            done = 0
            for unit in units:
                on_result(self.task(unit))
                done += len(unit.items)
                on_progress(done)
            return
        ctx = mp_context()
        counter = ctx.Value("q", 0)  # items finished, counted by the workers (progress between units)
        pool = ProcessPoolExecutor(min(self.slots, len(units)), mp_context=ctx, initializer=self.init,
                                   initargs=(self.setup, counter))
        ok = False
        try:
            pending = {pool.submit(self.task, u) for u in units}
            while pending:
                finished, pending = wait(pending, timeout=POLL_S, return_when=FIRST_COMPLETED)
                on_progress(counter.value)
                for fut in finished:
                    try:
                        result = fut.result()
                    except BrokenProcessPool:
                        raise PrepError("a prep worker process died (killed by a signal: the out-of-memory killer? "
                                        f"fewer --workers need less memory); {_RESUME}") from None
                    on_result(result)
            ok = True
        finally:
            # No public way to stop running workers before Python 3.14's terminate_workers().
            procs = list((getattr(pool, "_processes", None) or {}).values()) if not ok else []
            pool.shutdown(wait=ok, cancel_futures=True)
            for p in procs:
                if p.is_alive():
                    p.terminate()
            for p in procs:
                p.join(5)


def _ray_module():
    try:
        import ray
    except ImportError:
        raise PrepError("--engine ray needs Ray: pip install 'jpeglm[ray]'") from None
    return ray


_RAY_WORKER: dict = {}  # what this Ray worker process was set up for (a process runs many tasks)


def _ray_call(init: Callable, task: Callable, setup, unit):
    if _RAY_WORKER.get("token") != setup.token:
        init(setup)
        _RAY_WORKER["token"] = setup.token
    return task(unit)


class RayEngine:
    """Units as Ray tasks (one CPU each) on the cluster at `address`, or on a local Ray started
    with `workers` CPUs (and stopped again) when there is none."""

    def __init__(self, address: str | None, workers: int, init: Callable, setup, task: Callable):
        self.ray = _ray_module()
        self.init, self.setup, self.task = init, setup, task
        self.started = False
        if not self.ray.is_initialized():
            kwargs = {"address": address} if address else {"num_cpus": workers, "include_dashboard": False}
            try:
                self.ray.init(log_to_driver=False, **kwargs)
            except Exception as e:  # ConnectionError, a bad address, ...
                raise PrepError(f"--engine ray: could not connect to a Ray cluster at {address or 'a new local instance'}: "
                                f"{type(e).__name__}: {e}") from None
            self.started = True
        self.slots = max(1, int(self.ray.cluster_resources().get("CPU", 1)))

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        if self.started:
            self.ray.shutdown()
        return False

    def run(self, units: list, on_result: Callable, on_progress: Callable) -> None:
        ray = self.ray
        call = ray.remote(num_cpus=1, max_retries=RAY_RETRIES, retry_exceptions=[OSError])(_ray_call)
        setup_ref = ray.put(self.setup)
        window = 2 * self.slots + 2  # tasks in flight: every CPU busy, the queue (and memory) bounded
        todo = list(reversed(units))
        pending: dict = {}
        done_items = 0
        try:
            while todo or pending:
                while todo and len(pending) < window:
                    unit = todo.pop()
                    pending[call.remote(self.init, self.task, setup_ref, unit)] = unit
                finished, _ = ray.wait(list(pending), num_returns=1, timeout=POLL_S)
                for ref in finished:
                    unit = pending.pop(ref)
                    try:
                        result = ray.get(ref)
                    except ray.exceptions.RayTaskError as e:  # the task itself raised
                        cause = getattr(e, "cause", None)
                        if isinstance(cause, PrepError):
                            raise PrepError(str(cause)) from None
                        raise PrepError(f"a Ray prep task failed on chunk {unit.chunk}: {type(cause or e).__name__}: "
                                        f"{cause or e}; {_RESUME}") from None
                    except ray.exceptions.RayError as e:  # its worker or node died, RAY_RETRIES times
                        raise PrepError(f"a Ray prep task failed on chunk {unit.chunk} after {RAY_RETRIES} retries "
                                        f"({type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}); {_RESUME}") from None
                    on_result(result)
                    done_items += len(unit.items)
                on_progress(done_items)
        finally:
            for ref in pending:
                ray.cancel(ref, force=True)


def make_engine(name: str, address: str | None, workers: int, init: Callable, setup, task: Callable):
    if name == "ray":
        return RayEngine(address, workers, init, setup, task)
    if address:
        raise PrepError("--address is for --engine ray")
    return LocalEngine(workers, init, setup, task)
