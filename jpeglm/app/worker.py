"""The generation worker behind the page: one model, one job at a time, a live view of the bytes.

`Worker.stream(job_id, picture, prompt_ratio, num_samples, sampler, classes)` cuts the prompt, runs
`jpeglm.sample.generate` in a thread with an `on_step` hook (and, for a class-conditional checkpoint,
the class ids `class_ids(name)` resolves exactly as `jpeglm sample --class NAME` does), and yields `Progress` snapshots: every sample's partial stream decoded (the
rows written so far, grey below: the codec's own decode of a cut stream), tokens/s and counts; the
last snapshot carries the finished files (exactly `codec.to_file` of what the model wrote) and their
decode reports. A job stops early when `stop(job_id)` is called, when the consumer of `stream` goes
away (the generator is closed, or it is not pulled for `watchdog_s`: a closed browser tab), or on
the sampler's own ends. No gradio here.
"""

from __future__ import annotations

import tempfile
import threading
import time
from collections import OrderedDict
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from jpeglm.app.pictures import InputError, cut_steps, side_by_side, snap, still


@dataclass
class Progress:
    """One snapshot of a job, for the page."""

    previews: list  # uint8 pictures, one per sample: what its bytes decode to so far
    tokens: list[int]  # new tokens per sample so far
    done: list[bool]
    seconds: float
    status: str = "running"  # running | finished | stopped | error
    message: str = ""
    files: list[str] = field(default_factory=list)  # finished files (paths), at the end
    reports: list[dict] = field(default_factory=list)
    prompt_view: np.ndarray | None = None  # the prompt's pixels beside the original picture

    @property
    def tokens_per_s(self) -> float:
        return sum(self.tokens) / self.seconds if self.seconds > 0 else 0.0

    def summary(self) -> str:
        n_done = sum(self.done)
        line = f"{self.status}: {n_done}/{len(self.done)} samples done, {sum(self.tokens)} tokens, {self.tokens_per_s:.0f} tokens/s"
        return f"{line}. {self.message}" if self.message else line


class Worker:
    """Owns the loaded checkpoint; `stream` runs one job at a time (a lock, besides the page's queue)."""

    def __init__(self, loaded, device: str = "cpu", max_samples: int = 8, max_new_tokens: int | None = None,
                 preview_every: int = 32, min_interval_s: float = 0.2, watchdog_s: float = 20.0, out_dir=None,
                 prompt_cut: str | None = None):
        self.model, self.tokenizer, self.codec = loaded.model, loaded.tokenizer, loaded.codec
        self.meta = dict(getattr(loaded, "meta", None) or {})
        # the prompt cut rule (`--prompt-cut`; None: the codec's default); a name it does not know is refused here
        self.prompt_cut = None if prompt_cut is None else self.codec.prompt_rule(prompt_cut)
        self.device, self.max_samples, self.max_new_tokens = device, max_samples, max_new_tokens
        self.preview_every, self.min_interval_s, self.watchdog_s = preview_every, min_interval_s, watchdog_s
        self.out_dir = Path(out_dir or tempfile.mkdtemp(prefix="jpeglm-app-"))
        self.lock = threading.Lock()
        self._stops: OrderedDict[str, threading.Event] = OrderedDict()  # job id -> its stop flag
        self._guard = threading.Lock()

    # --- stop flags, by job id (a Stop may come before its job has left the queue) -------------------
    def _flag(self, job_id: str) -> threading.Event:
        with self._guard:
            ev = self._stops.get(job_id)
            if ev is None:
                ev = self._stops[job_id] = threading.Event()
                while len(self._stops) > 256:
                    self._stops.popitem(last=False)
            return ev

    def stop(self, job_id: str | None) -> None:
        if job_id:
            self._flag(job_id).set()

    # --- the prompt ----------------------------------------------------------------------------------
    def prompt(self, picture: np.ndarray, ratio: float):
        """(prompt symbols, kept fraction) for the canonical `picture`; InputError when nothing is left to
        generate or the picture cannot be encoded."""
        k, fraction = snap(self.codec, ratio, self.prompt_cut)
        if k >= cut_steps(self.codec, self.prompt_cut):
            raise InputError("the prompt keeps the whole picture: lower the prompt slider to leave something to generate")
        try:
            symbols = self.codec.encode(picture)
            rule = {} if self.prompt_cut is None else {"rule": self.prompt_cut}  # plug-in codecs may take no rule
            return self.codec.prompt(symbols, fraction, **rule), fraction
        except ValueError as e:
            raise InputError(f"cannot encode this picture: {e}") from e

    def sampler(self, num_samples: int, **settings):
        """The SamplerConfig of one job (`settings`: its fields, e.g. temperature, top_k, seed); InputError
        for settings it refuses. All samples of a job run as one batch, so they preview together."""
        from jpeglm.sample import SamplerConfig

        if not 1 <= int(num_samples) <= self.max_samples:
            raise InputError(f"number of samples must be 1..{self.max_samples}")
        try:
            return SamplerConfig(**settings, batch_size=int(num_samples), max_new_tokens=self.max_new_tokens)
        except ValueError as e:
            raise InputError(str(e)) from e

    # --- classes -----------------------------------------------------------------------------------
    @property
    def class_names(self) -> tuple[str, ...]:
        """The checkpoint's classes, in id order (its tokenizer's class tokens, what `jpeglm sample --class`
        reads); () for an unconditional checkpoint."""
        return tuple(self.tokenizer.class_names)

    def class_ids(self, name: str | None) -> list[int] | None:
        """The class ids of one job for class `name` (None / "": unconditional, a labelled model's null
        class), resolved by `jpeglm sample`'s own `class_ids`; InputError for an unknown class."""
        from jpeglm.cli.sample import SampleError, class_ids

        try:
            return class_ids(self.tokenizer, [name] if name else [], None)
        except SampleError as e:
            raise InputError(str(e).removeprefix("--class: ")) from None

    # --- one job -------------------------------------------------------------------------------------
    def stream(self, job_id: str, picture: np.ndarray, prompt_ratio: float, num_samples: int, cfg,
               classes: list[int] | None = None):
        """Yield `Progress` snapshots of one job (`cfg`: its SamplerConfig, see `sampler`; `classes`: the
        class ids of a class-conditional checkpoint, see `class_ids`, guided by `cfg.cfg_scale`); the last
        has status finished, stopped or error."""
        from jpeglm.sample import generate
        from jpeglm.sample.sampler import check_classes

        stop = self._flag(job_id or f"anon-{time.monotonic_ns()}")
        n = int(num_samples)
        if not 1 <= n <= self.max_samples:
            raise InputError(f"number of samples must be 1..{self.max_samples}")
        try:
            classes = check_classes(self.tokenizer, classes, cfg.cfg_scale)
        except ValueError as e:
            raise InputError(str(e)) from None
        prompt, fraction = self.prompt(picture, prompt_ratio)
        prompt_pixels = still(self.codec.decode(prompt)[0])
        state = {"step": None, "pulled": time.monotonic(), "result": None, "error": None}
        changed = threading.Event()

        def on_step(step) -> bool:
            state["step"] = step
            changed.set()
            idle = time.monotonic() - state["pulled"]
            return not (stop.is_set() or idle > self.watchdog_s)

        def work():
            try:
                state["result"] = generate(self.model, self.tokenizer, self.codec, [prompt], n, cfg, self.device,
                                           on_step=on_step, classes=classes)
            except Exception as e:  # noqa: BLE001 - shown on the page; the app keeps serving
                state["error"] = f"{type(e).__name__}: {e}"
            finally:
                changed.set()

        if stop.is_set():
            yield self._empty(n, prompt_pixels, "stopped", "stopped before it started")
            return
        with self.lock:
            t0 = time.monotonic()
            thread = threading.Thread(target=work, name=f"jpeglm-app-{job_id}", daemon=True)
            thread.start()
            shown, last = [0] * n, 0.0
            try:
                yield self._empty(n, prompt_pixels, "running", "prefill")
                while thread.is_alive():
                    state["pulled"] = time.monotonic()
                    changed.wait(0.1)
                    changed.clear()
                    step = state["step"]
                    now = time.monotonic()
                    if step is None or now - last < self.min_interval_s:
                        continue
                    counts = [len(ids) for ids in step.new_ids]
                    if max(c - s for c, s in zip(counts, shown)) < self.preview_every and now - last < 1.0:
                        continue
                    shown, last = counts, now
                    yield self._partial(step, counts, prompt_pixels, now - t0)
                thread.join()
            finally:
                stop.set()  # the consumer left (closed tab, Stop, error): end the sampler now
                thread.join()
            if state["error"]:
                yield self._empty(n, prompt_pixels, "error", state["error"])
                return
            yield self._final(job_id, state["result"], prompt, fraction, picture, time.monotonic() - t0)

    def _empty(self, n, prompt_pixels, status, message) -> Progress:
        return Progress([prompt_pixels] * n, [0] * n, [False] * n, 0.0, status, message)

    def _partial(self, step, counts, prompt_pixels, seconds) -> Progress:
        previews = []
        for ids, new, c in zip(step.prompt_ids, step.new_ids, counts):
            media, _ = self.codec.decode(self.tokenizer.decode(list(ids) + list(new[:c])))
            previews.append(still(media))
        return Progress(previews, counts, list(step.done), seconds)

    def _final(self, job_id, samples, prompt, fraction, picture, seconds) -> Progress:
        folder = Path(tempfile.mkdtemp(prefix=f"{job_id or 'job'}-", dir=self.out_dir))
        files, reports, stopped = [], [], False
        for s in samples:
            data = self.codec.to_file(s.symbols, s.media)
            path = folder / f"sample_seed{s.seed}{self.codec.file_suffix}"
            path.write_bytes(data)
            files.append(str(path))
            stopped |= s.finish == "stopped"
            reports.append({
                "file": path.name, "seed": s.seed,
                **({"class": self.class_names[s.label]} if s.label is not None else {}), "status": s.report.status, "reason": s.report.reason,
                **self.codec.check_file(data), "finish": s.finish, "steered": s.steered,
                "prompt_tokens": s.n_prompt_tokens, "new_tokens": s.n_new_tokens, "bytes": len(data),
                "seconds": round(s.seconds, 2),
            })
        view = side_by_side(still(self.codec.decode(prompt)[0]), still(picture))
        status = "stopped" if stopped else "finished"
        message = f"prompt keeps {fraction:.0%} of the picture"
        return Progress([still(s.media) for s in samples], [s.n_new_tokens for s in samples], [True] * len(samples),
                        seconds, status, message, files, reports, view)


__all__ = ["Progress", "Worker"]
