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
import queue
import sys
import threading
from collections import deque
from concurrent.futures import ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from typing import Callable

from jpeglm.data_prep.writer import PrepError

POLL_S = 0.5  # how often the driver refreshes the progress bar while it waits
_START_TICK_S = 0.002  # how often the local engine's driver looks for workers that became ready (each then waits at
# most this for its first unit); once all are, it sleeps until a result comes (or POLL_S passes)
_SWITCH_S = 0.0005  # the GIL switch interval while the local engine runs (see LocalEngine.run)
_QUEUED = 2  # units handed to each ready pool worker at a time: one running, the rest queued
_KEEP_ALIVE: list = []
RAY_RETRIES = 3
_RESUME = "the chunks finished so far are kept: run the same command again to resume"


PRELOAD = ("__main__", "jpeglm.data_prep.pipeline", "jpeglm.data_prep.sources", "jpeglm.media", "jpeglm.tokenizer",
           "jpeglm.data_prep.preload")  # the last one warms what a worker's first item would (Pillow's plugins)


def mp_context(preload: tuple[str, ...] = ()):
    # Not fork: by the time workers start, the parent has threads (the HF tokenizers pool used to
    # save the tokenizer, torch's pools for vq, BLAS), and a fork can copy a lock another thread
    # holds -> a worker that never starts. A fork server is a clean single-threaded process that
    # forks the workers; it is started once per parent and has our modules preloaded, so workers
    # start in a fraction of a second (spawn would re-import everything in every worker).
    # `preload` adds modules (the codec's: jpeglm.codecs.jpeg took 15 ms to import in every worker);
    # "__main__" is the script, which every worker would otherwise run again (multiprocessing's
    # rule); the preload list counts when the fork server starts (the first pool of a process).
    if sys.platform == "linux":
        ctx = mp.get_context("forkserver")
        ctx.set_forkserver_preload(list(dict.fromkeys([*PRELOAD, *preload])))
        return ctx
    return mp.get_context("spawn")


class LocalEngine:
    """`workers` processes on this machine (this process itself when there is one, or one unit)."""

    def __init__(self, workers: int, init: Callable, setup, task: Callable, preload: tuple[str, ...] = ()):
        """`init(setup, counter=None)` sets a worker up and returns None, or a one-line error (it does not
        raise: the task then fails with it); `task(unit)` does a unit; `preload`: modules the workers need."""
        self.slots, self.init, self.setup, self.task, self.preload = workers, init, setup, task, tuple(preload)
        self._pool = None
        self._starting: threading.Thread | None = None
        self._shared = None  # (context, items counter, ready counter), made once in this thread

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self._close(ok=False)  # a pool started and not run (nothing to do, or the prep stopped first)
        return False

    def start(self, max_units: int) -> None:
        """Start the worker processes now, for a run of at most `max_units` units, so that they start
        while this process does something else (the prep's checks and bookkeeping: 10-20 ms, about what
        a worker takes to start). Nothing to start for one worker or one unit."""
        if self._pool is None and self._starting is None and self.slots > 1 and max_units > 1:
            # in a thread: starting a process is a round trip to the fork server (5-15 ms) this process need not wait for
            self._make_shared()
            self._starting = threading.Thread(target=self._start, args=(min(self.slots, max_units) - 1,), daemon=True)
            self._starting.start()

    def _make_shared(self) -> None:
        """The shared counters, made here (not in the starting thread): run() sets this process up with the
        items counter and starts encoding before the pool is up."""
        if self._shared is None:
            ctx = mp_context(self.preload)
            # items finished, counted by the workers (progress between units); workers that have started and built their codec
            self._shared = (ctx, ctx.Value("q", 0), ctx.Value("i", 0))
            # A worker still starting when run() returns (it is not waited for) unpickles these
            # then; kept alive until the next run, else their semaphores are gone and it crashes.
            _KEEP_ALIVE[:] = list(self._shared[1:])

    def _started(self) -> None:
        """Wait for a start() under way."""
        if self._starting is not None:
            self._starting.join()
            self._starting = None

    def _start(self, size: int) -> None:
        ctx, self._counter, self._ready = self._shared
        self._size = size
        self._pool = ProcessPoolExecutor(size, mp_context=ctx, initializer=_pool_init,
                                         initargs=(self.init, self.setup, self._counter, self._ready))
        # the first task starts the workers; it answers once one has set up (with its error, if any)
        self._probe = self._pool.submit(_setup_error)

    def _close(self, ok: bool) -> None:
        self._started()
        pool, self._pool = self._pool, None
        if pool is None:
            return
        # No public way to stop running workers before Python 3.14's terminate_workers().
        procs = list((getattr(pool, "_processes", None) or {}).values()) if not ok else []
        # on success every result is in: idle workers exit on their own (waiting for them took ~10 ms)
        pool.shutdown(wait=False, cancel_futures=True)
        for p in procs:
            if p.is_alive():
                p.terminate()
        for p in procs:
            p.join(5)

    def run(self, units: list, on_result: Callable, on_progress: Callable) -> None:
        """Run `task(unit)` for every unit; `on_result(result)` in this process as each finishes,
        `on_progress(items_finished)` now and then."""
        if self.slots <= 1 or len(units) <= 1:
            self._close(ok=False)  # started for more work than there turned out to be
            self.init(self.setup)
            done = 0
            for unit in units:
                on_result(self.task(unit))
                done += len(unit.items)
                on_progress(done)
            return
        # This process is one of the workers: a thread here encodes units while the other workers
        # start (a worker takes 50-100 ms to start on 2 loaded cores, a third of a 500-photo prep),
        # so --workers N starts N - 1 processes. Pillow, PyAV and torch release the GIL while they
        # code, so this thread keeps the pool fed meanwhile. A worker is handed units only once it
        # is ready (but for one small unit, below): a unit queued for a worker still starting is one the others may end up waiting for.
        self._make_shared()
        counter, ready = self._shared[1], self._shared[2]
        todo = deque(units)
        pending: set = set()
        # Everything the driver waits for arrives here, as it happens: a pool task done, the probe
        # answered, a result of the thread here, its end. The driver sleeps on this queue: it wakes
        # the moment there is something to do (polling every 10 ms had left a worker idle for up
        # to 10 ms at its start and the last merge waiting as long; ~5% of a 500-photo prep).
        events: queue.SimpleQueue = queue.SimpleQueue()
        stop = threading.Event()
        ok = False

        def submit(unit) -> None:
            fut = pool.submit(self.task, unit)
            pending.add(fut)
            fut.add_done_callback(lambda f: events.put(("done", f)))

        switch = sys.getswitchinterval()
        try:
            # The thread here starts encoding first, before the pool is (still) being started: it does not need it.
            self.init(self.setup, counter)
            local = threading.Thread(target=self._encode_here, args=(todo, events, stop), daemon=True)
            local.start()
            # Every result of a pool worker passes three threads of this process (the pool's manager thread,
            # the driver here, the queue's feeder thread that sends the next unit), each waiting for the GIL
            # that the encoding thread holds between its C calls: at the default 5 ms switch interval that had
            # left the pool worker idle, without a queued unit, for 5-20 ms several times a run.
            sys.setswitchinterval(_SWITCH_S)
            self._started()
            if self._pool is None:
                self._start(min(self.slots, len(units)) - 1)
            pool, probe, size = self._pool, self._probe, self._size
            probe.add_done_callback(lambda f: events.put(("probe", f)))
            # Each pool worker gets one of the last (smallest, MIN_UNIT items) units queued before it is
            # ready: it starts on it the moment it has set up (the driver only sees `ready` 1-5 ms later,
            # and its next units take that long to reach it), and a small unit queued for a worker that is
            # slow to start holds back little. The chunk's pieces are merged in order whatever order they come in.
            for _ in range(size):
                if len(todo) > 1:
                    submit(todo.pop())
            local_done = False
            while not local_done or pending:
                while todo and len(pending) < _QUEUED * ready.value:  # running and queued per ready worker
                    try:
                        submit(todo.popleft())
                    except IndexError:  # the thread here took the last one
                        break
                # while workers start, look at `ready` often (a ready worker waits for its first unit)
                starting = bool(todo) and ready.value < size
                try:
                    event = events.get(timeout=_START_TICK_S if starting else POLL_S)
                except queue.Empty:
                    event = None
                while event is not None:
                    kind, value = event
                    if kind == "done":
                        pending.discard(value)
                        on_result(_result(value))
                    elif kind == "probe":
                        if _result(value) is not None:
                            raise PrepError(_result(value))
                    elif kind == "error":
                        raise value
                    elif kind == "end":
                        local_done = True
                    else:
                        on_result(value)
                    try:
                        event = events.get_nowait()
                    except queue.Empty:
                        event = None
                on_progress(counter.value)
            if _result(probe) is not None:  # a worker that cannot set up stops the prep, whoever did the work
                raise PrepError(_result(probe))
            ok = True
        finally:
            sys.setswitchinterval(switch)
            stop.set()  # the thread here ends after its unit
            self._close(ok)

    def _encode_here(self, todo: deque, out: queue.SimpleQueue, stop: threading.Event) -> None:
        try:
            while not stop.is_set():
                try:
                    unit = todo.popleft()
                except IndexError:
                    break
                out.put(("result", self.task(unit)))
        except BaseException as e:  # handed to the driver, which stops the prep with it
            out.put(("error", e))
        out.put(("end", None))


_SETUP_ERROR: list = [None]  # in a pool worker: what its `init` returned (an error message, or None)


def _pool_init(init: Callable, setup, counter, ready) -> None:
    _SETUP_ERROR[0] = init(setup, counter)
    with ready.get_lock():
        ready.value += 1


def _setup_error() -> str | None:
    return _SETUP_ERROR[0]


def _result(fut):
    try:
        return fut.result()
    except BrokenProcessPool:
        raise PrepError("a prep worker process died unexpectedly (killed by a signal? the out-of-memory killer? "
                        f"fewer --workers need less memory); {_RESUME}") from None


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

    def start(self, max_units: int) -> None:
        """Nothing to start ahead: Ray's workers are up once the cluster is."""

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


def make_engine(name: str, address: str | None, workers: int, init: Callable, setup, task: Callable,
                preload: tuple[str, ...] = ()):
    if name == "ray":
        return RayEngine(address, workers, init, setup, task)
    if address:
        raise PrepError("--address is for --engine ray")
    return LocalEngine(workers, init, setup, task, preload)
