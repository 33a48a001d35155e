"""The parallel, resumable prep: source items -> codec symbols -> token ids -> shards + manifest.

`prep(...)` is what `jpeglm prep` runs and what tests call directly. How it stays deterministic:
- the items are listed once in a fixed order and cut into chunks of `records_per_shard` items;
  chunk c always becomes shard c, whatever the number of workers or restarts;
- train/val is decided per input item by hashing its key with the seed (not by position), so
  adding, removing or skipping an item never moves the others, and all clips of one video share
  a split;
- a task is a unit of consecutive items of one chunk (units.py), a few per worker whatever the
  input size; a worker (each builds its codec and tokenizer once) encodes the unit's items and
  writes them itself: a whole chunk with `writer.write_chunk` (files atomically, the done marker
  last), a smaller unit as a piece that the driver appends to its chunk's files as it comes
  (the chunk's last piece finishes the chunk). What travels back is a marker, or a piece as a
  few byte strings (its token ids and .jsonl lines, ready to concatenate), never per-record
  objects (pickling every record's tokens to one writer process had cost ~0.5 ms per image:
  1.06x; BENCHMARKS.md), and the bytes are the same for any number of workers and unit size;
- the units run on an engine (engines.py): this process, local processes (this one among them),
  or a Ray cluster; the output folder may be a local or shared path or an fsspec URL (store.py).
  A killed run redoes only the chunks without a marker (keeping finished pieces) and ends
  byte-identical; a dead worker stops the prep with a clear error instead of a hang.
Bad items (empty, truncated, not an image, bombs, too small, unreadable videos) are skipped with
a reason; nothing but a bug in this code can stop a prep half way.
"""

from __future__ import annotations

import hashlib
import io
import os
import re
import shutil
import sys
import tempfile
import time
import uuid
from collections import Counter
from contextlib import ExitStack
from concurrent.futures import Future, ThreadPoolExecutor, wait
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Callable, Literal

import numpy as np

from jpeglm.data_prep import units as unitlib
from jpeglm.data_prep.engines import make_engine
from jpeglm.data_prep.sources import Item, Source, fetch_image
from jpeglm.data_prep.store import Store
from jpeglm.data_prep.writer import (SETTINGS_PATH, ChunkResult, PrepError, Record, claim_output, marker_name, read_done, save_tokenizer,
                                     write_chunk, write_manifest)
from jpeglm.media import DEFAULT_MAX_FILE_BYTES
from jpeglm.shards import FORMAT, PARTS_DIR, SPLITS, TOKENIZER_DIR, VERSION, dtype_for_vocab, shard_name

DEFAULT_RECORDS_PER_SHARD = 1000


@dataclass
class PrepResult:
    out: Path | str  # a URL when the output went to one
    manifest: dict | None  # None: a --part run that left chunks to other parts
    seconds: float
    items_done_now: int

    @property
    def num_records(self) -> int:
        return self.manifest["num_records"]

    @property
    def skipped(self) -> list[dict]:
        return self.manifest["skipped"]


def _s(default, text: str, **meta):
    return field(default=default, metadata={"help": text, **meta})


@dataclass(frozen=True)
class PrepSettings:
    """The settings of one prep, declared once: `jpeglm prep` flags, `prep(**overrides)` keywords and
    the `settings` of the manifest. The codec's own settings are the codec's (its params)."""

    workers: int = _s(1, "encoding processes (--engine local), or the CPUs of the local Ray instance that --engine ray "
                      "starts when no --address is given")
    engine: Literal["local", "ray"] = _s("local", "where the work runs: local (processes on this machine) or ray (tasks on "
                                        "a Ray cluster: pip install 'jpeglm[ray]'); the same bytes either way")
    address: str | None = _s(None, "--engine ray: the cluster to join (auto: the one this machine is part of; "
                             "ray://HOST:10001 a remote one); default: start a local Ray", metavar="ADDR")
    items_per_task: int | None = _s(None, "input items per task (default: a few tasks per worker, at most a chunk); "
                                    "the shards are the same for any value", metavar="N")
    val_fraction: float = _s(0.05, "fraction of records in the val split, decided by hashing each record's key with --seed")
    seed: int = _s(0, "seed of the train/val hash split")
    records_per_shard: int = _s(DEFAULT_RECORDS_PER_SHARD, "input items per chunk; chunk c becomes shard c of each split "
                                "and is the unit of resume (workers share a chunk when there are few)", metavar="K")
    limit: int | None = _s(None, "use only the first N input items (in sorted order)", metavar="N")
    min_side: int = _s(64, "skip images (and videos) whose shorter side is below this many pixels, rather than upscale them")
    max_file_bytes: int = _s(DEFAULT_MAX_FILE_BYTES, "skip image files larger than this many bytes without reading them (a huge or "
                             "sparse file is never read whole into memory); videos are streamed and not limited", metavar="N")
    part: str | None = _s(None, "encode only chunks c with c %% N == I (0-based), so N machines sharing --out split one "
                          "prep; the last part to finish writes the manifest. Same bytes as one run", metavar="I/N")
    overwrite: bool = _s(False, "delete a previous prep in --out (e.g. one made with other settings) and start over")
    progress: bool = _s(True, "show a progress bar (the summary line is printed either way)")
    labels: str | None = _s(None, "class labels for a class-conditional dataset: folders (the first sub-folder of "
                            "--input is the class), column:NAME (a dataset column; ClassLabel names kept) or "
                            "file:PATH (a CSV with columns file,label); unlabelled items are skipped with the reason",
                            metavar="SPEC")

    def __post_init__(self):
        if not 0.0 <= self.val_fraction < 1.0:
            raise PrepError(f"--val-fraction must be in [0, 1), got {self.val_fraction}")
        if self.records_per_shard < 1:
            raise PrepError(f"--records-per-shard must be >= 1, got {self.records_per_shard}")
        if self.workers < 1:
            raise PrepError(f"--workers must be >= 1, got {self.workers}")
        if self.items_per_task is not None and self.items_per_task < 1:
            raise PrepError(f"--items-per-task must be >= 1, got {self.items_per_task}")
        if self.address and self.engine != "ray":
            raise PrepError("--address is for --engine ray")
        if self.part is not None and self.overwrite:
            raise PrepError("--overwrite cannot be combined with --part (other parts may be writing there)")
        self.part_index  # noqa: B018 - validates the I/N text
        if self.labels is not None:
            from jpeglm.data_prep.labels import parse_spec

            try:
                parse_spec(self.labels)
            except ValueError as e:
                raise PrepError(str(e)) from None

    @property
    def part_index(self) -> tuple[int, int] | None:
        """(I, N) of `part`, None without one."""
        if self.part is None:
            return None
        try:
            i, n = (int(x) for x in str(self.part).split("/"))
        except ValueError:
            raise PrepError(f"--part must look like I/N (e.g. 0/4), got {self.part!r}") from None
        if not 0 <= i < n:
            raise PrepError(f"--part must be I/N with 0 <= I < N, got {self.part}")
        return i, n


def is_val(key: str, seed: int, val_fraction: float) -> bool:
    """Deterministic split: sha256(seed, key) as a number in [0, 1) below val_fraction -> val."""
    if val_fraction <= 0:
        return False
    h = hashlib.sha256(f"{seed}\0{key}".encode("utf-8", "surrogatepass")).digest()  # any str key hashes
    return int.from_bytes(h[:8], "big") / 2.0**64 < val_fraction


def reason_kind(reason: str) -> str:
    """A skip reason without its numbers and details, for the counts in the summary line."""
    text = re.sub(r"\(.*", "", reason)  # details in parentheses
    text = re.sub(r"\d+(x\d+)*", "N", text)
    return text.strip(" :") or reason


# --- the per-item work (runs in workers, or in-process with one worker) ---------------------------
_W: dict = {}


@dataclass
class _Setup:
    """What every worker needs to encode and write chunks (picklable: it travels to the workers)."""

    codec_factory: Callable
    tokenizer_files: dict  # the saved tokenizer's files (name -> bytes): workers on any machine load it
    source: Source
    dtype: str
    clip_rule: object
    out: str  # the output folder (a path or a URL)
    settings: PrepSettings
    labels: dict | None = None  # item key -> class id (prep --labels), None: unconditional
    why_unlabelled: str = ""  # the skip reason of an item without a label
    token: str = field(default_factory=lambda: uuid.uuid4().hex)  # tells a reused Ray worker a new prep from an old one


def _load_tokenizer_files(files: dict):
    from jpeglm.tokenizer import load_tokenizer

    d = tempfile.mkdtemp(dir=_scratch(), prefix="jpeglm-tokenizer.")
    try:
        for name, data in files.items():
            path = Path(d, name)
            if Path(d).resolve() not in path.resolve().parents:
                raise ValueError(f"tokenizer file name {name!r} leaves its folder")
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_bytes(data)
        return load_tokenizer(d)  # reads its files into memory
    finally:
        shutil.rmtree(d, ignore_errors=True)


def _init_worker(setup: _Setup, counter=None) -> str | None:
    _W.clear()
    # what _process_unit needs to split and write a unit; `counter` (a shared integer) counts
    # finished items for the main process's progress bar
    s = setup.settings
    _W.update(out=Store(setup.out), seed=s.seed, val_fraction=s.val_fraction, counter=counter)
    try:
        tok, codec = _load_tokenizer_files(setup.tokenizer_files), setup.codec_factory()
    except Exception as e:
        # Raising here would break the pool with a message that does not say why (and made
        # multiprocessing.Pool restart the worker forever); instead the engine reports it and
        # every task raises it, which stops the prep in the main process with this message.
        _W["init_error"] = f"worker setup failed: {type(e).__name__}: {e}"
        return _W["init_error"]
    _W.update(
        labels=setup.labels, why_unlabelled=setup.why_unlabelled,
        codec=codec, tokenizer=tok, source=setup.source,
        dtype=np.dtype(setup.dtype), min_side=s.min_side, max_file_bytes=s.max_file_bytes, clip_rule=setup.clip_rule, byte_table=None, checked=False,
    )
    if tok.kind == "byte":
        # A byte-level tokenizer maps each byte to one id: a 256-entry table taken from the
        # tokenizer itself turns a 5 kB stream into ids without a Python list (a third of the
        # per-image cost otherwise). _record checks it against tok.encode on the first record.
        table = np.asarray(tok.encode(bytes(range(256)), bos=False, eos=False), dtype=np.int64)
        ends = np.array([tok.bos_id, tok.eos_id], dtype=np.int64)
        if table.shape == (256,) and _fits(table, _W["dtype"]) and _fits(ends, _W["dtype"]):
            # already in the shard dtype: ids come out of one gather, with no range check per record
            _W["byte_table"] = table.astype(_W["dtype"])
    return None


def _skip_reason(e: Exception, src) -> str:
    """A one-line reason for the manifest. MediaError (VideoError) / CodecError / OSError carry a clear message
    (without the path they start with: the manifest has it as `path`); anything else gets its type
    named, so a bug shows up in the manifest instead of silently skipping everything."""
    from jpeglm.codecs.base import CodecError
    from jpeglm.media import MediaError

    known = isinstance(e, (MediaError, CodecError, OSError))
    return _strip_path(str(e) if known else f"{type(e).__name__}: {e}", src) or type(e).__name__


def _strip_path(msg: str, src) -> str:
    """Drop the absolute input path from a message (the manifest names the item by its key), so
    the manifest does not depend on where the input folder happens to live."""
    if isinstance(src, str) and src:
        if msg.startswith(src):
            msg = msg[len(src) :].lstrip(": ")
        msg = msg.replace(src, os.path.basename(src))
    return msg


def _fits(ids: np.ndarray, dtype: np.dtype) -> bool:
    return not ids.size or (ids.min() >= 0 and ids.max() <= np.iinfo(dtype).max)


def _record(key: str, symbols, n_pixels: int, label: int | None = None) -> Record:
    codec, tok, table, dtype = _W["codec"], _W["tokenizer"], _W["byte_table"], _W["dtype"]
    if table is not None and isinstance(symbols, (bytes, bytearray)):
        head = tok.prefix(label)  # BOS (+ the class token of a labelled dataset)
        ids = np.empty(len(symbols) + len(head) + 1, dtype)
        ids[: len(head)], ids[-1] = head, tok.eos_id
        np.take(table, np.frombuffer(symbols, np.uint8), out=ids[len(head) : -1])
        if not _W["checked"]:
            if not np.array_equal(ids, tok.encode(symbols, bos=True, eos=True, label=label)):
                raise RuntimeError(f"{type(tok).__name__} is not one id per byte; the byte table cannot be used")
            _W["checked"] = True
    else:
        ids = np.asarray(tok.encode(symbols, bos=True, eos=True, label=label), dtype=np.int64)
        if not _fits(ids, dtype):
            raise ValueError(f"token id out of range for {dtype}")  # cannot happen with dtype_for_vocab
        ids = ids.astype(dtype)
    return Record(key, ids, len(symbols), codec.stream_bytes(symbols), int(n_pixels), label)


def _encode_image(item: Item, src, label: int | None = None):
    from jpeglm.media import open_image

    codec = _W["codec"]
    # Opening here (not inside the codec) gives every codec the same checks and skip reasons;
    # the codec then crops and resizes the opened picture as its own parameters say.
    img = open_image(src, min_side=_W["min_side"])
    symbols = codec.encode(img)
    # bits per pixel are counted at the size a system is judged at (pixel codec: eval_size, not its grid)
    return [_record(item.key, symbols, codec.pixels_per_item(), label)]


def _encode_video(item: Item, src, label: int | None = None):
    codec = _W["codec"]
    tmp = None
    if isinstance(src, (bytes, bytearray)):  # a dataset cell: PyAV wants a file it can seek in
        tmp = tempfile.NamedTemporaryFile(suffix=".mp4")
        tmp.write(src)
        tmp.flush()
        src = tmp.name
    out = []

    def on_skip(clip_key: str, reason: str) -> None:  # clips dropped after others were cut
        out.append((f"{item.key}#{clip_key}", _strip_path(reason, src)))

    try:
        for clip_key, frames in codec.clips(src, _W["clip_rule"], on_skip=on_skip):
            key = f"{item.key}#{clip_key}"
            try:
                symbols = codec.encode(frames)
            except Exception as e:  # one bad clip must not drop the good ones before/after it
                out.append((key, _skip_reason(e, src)))
                continue
            out.append(_record(key, symbols, int(np.prod(frames.shape[:3])), label))
    except Exception as e:
        if not any(isinstance(r, Record) for r in out):
            raise  # nothing came out of this file: the caller skips it with the reason
        out.append((item.key, _skip_reason(e, src)))  # keep the clips cut before the error
    finally:
        if tmp is not None:
            tmp.close()
    return out


def _process(item: Item) -> list:
    """Encode one item -> a list of Records (one per image, one per clip) and (key, reason) skips."""
    if "init_error" in _W:
        raise PrepError(_W["init_error"])
    src, label = None, None
    if _W["labels"] is not None:
        label = _W["labels"].get(item.key)
        if label is None:  # a labelled dataset has no unconditional records (class dropout makes those)
            return [(item.key, _W["why_unlabelled"])]
    try:
        if _W["codec"].media_kind == "video":  # videos are streamed: not size-limited
            src, encode = _W["source"].fetch(item), _encode_video
        else:  # size-checked before it is read whole (a huge file or tar member is never read)
            src, encode = fetch_image(_W["source"], item, _W["max_file_bytes"]), _encode_image
        results = encode(item, src, label)
        if not results:
            return [(item.key, "no complete clip under the clip rule (video too short?)")]
        return results
    except Exception as e:  # never a crash on bad input: the item is skipped with its reason
        return [(item.key, _skip_reason(e, src))]


def _process_unit(unit: unitlib.Unit) -> dict:
    """Encode one unit's items in order and write them: a whole chunk ({"marker": its done marker}),
    or a piece of one ({"piece": (chunk, start, end), "data": the piece}: its bytes travel back, so the
    driver merges from memory)."""
    chunk = ChunkResult(unit.chunk, len(unit.items))
    counter = _W.get("counter")
    for item in unit.items:
        for res in _process(item):
            if isinstance(res, Record):
                # by the item's key: all clips of one video land in the same split (no leak)
                split = "val" if is_val(item.key, _W["seed"], _W["val_fraction"]) else "train"
                chunk.records[split].append(res)
            else:
                chunk.skipped.append({"path": res[0], "reason": res[1]})
        if counter is not None:
            with counter.get_lock():
                counter.value += 1
    if unit.whole:
        return {"marker": write_chunk(_W["out"], chunk, _W["dtype"])}
    return {"piece": (unit.chunk, unit.start, unit.end), "data": unitlib.write_piece(_W["out"], unit, chunk, _W["dtype"])}


# --- the driver --------------------------------------------------------------------------------
def _versions(codec) -> dict:
    import PIL

    import jpeglm

    v = {"jpeglm": jpeglm.__version__, "python": sys.version.split()[0], "numpy": np.__version__, "pillow": PIL.__version__}
    return {**v, **codec.versions()}


def _stats(lengths: np.ndarray) -> dict:
    if lengths.size == 0:
        return {"mean": 0.0, "min": 0, "max": 0, "p50": 0.0, "p95": 0.0}
    return {
        "mean": round(float(lengths.mean()), 3), "min": int(lengths.min()), "max": int(lengths.max()),
        "p50": float(np.percentile(lengths, 50)), "p95": float(np.percentile(lengths, 95)),
    }


def prep(source: Source, codec_factory: Callable, out: str | Path, settings: PrepSettings | None = None, *,
         tokenizer=None, clip_rule=None, log=print, **overrides) -> PrepResult:
    """Prepare `source` into shards under `out` (resuming a killed run with the same settings).

    `codec_factory` is a picklable zero-argument callable returning the codec (each worker calls
    it once); `tokenizer` defaults to ByteTokenizer for byte codecs, CodeTokenizer for code codecs;
    `clip_rule` (jpeglm.video.ClipRule) cuts videos into clips. `settings` (PrepSettings), with any
    of its fields overridden by keyword (`prep(src, factory, out, workers=2)`). `out` is a folder,
    or an fsspec URL (s3://bucket/prefix). A `part` (I/N) encodes only the chunks c with
    c % N == I, so N machines sharing `out` split one prep; whichever run finds every chunk done
    writes the manifest (`result.manifest` is None until then). The bytes do not depend on how
    the work was split, on the engine, or on the number of workers.
    Raises PrepError when the output folder holds another prep, a worker died, or no record could
    be written.
    """
    t0 = time.time()
    s = replace(settings or PrepSettings(), **overrides)
    store = Store(out)
    if store.local is None:  # an object store has no locks: one writer per URL is up to the caller
        return _prep(source, codec_factory, store, s, t0, tokenizer, clip_rule, log)
    from jpeglm.lock import OutputLock

    # one prep per folder (the parts of one prep share it); the kernel drops it if this run dies
    with OutputLock(store.local, "jpeglm prep" if s.part is None else f"jpeglm prep --part {s.part}", shared=s.part is not None,
                    remove_if_unused=s.part is None):  # a prep refused before writing leaves no folder
        return _prep(source, codec_factory, store, s, t0, tokenizer, clip_rule, log)


def _prep(source: Source, codec_factory: Callable, store: Store, s: PrepSettings, t0: float, tokenizer, clip_rule,
          log) -> PrepResult:
    preload = (getattr(codec_factory, "__module__", None) or type(codec_factory).__module__,)  # the codec's module
    with ExitStack() as stack:
        started: list = []

        def start_workers(setup: _Setup, num_items: int) -> None:
            # Local workers start as soon as their setup is known: they start (10-50 ms each) while this
            # process claims the output and saves its bookkeeping. Ray starts only when there is work.
            if s.engine == "local" and s.workers > 1:
                started.append(stack.enter_context(make_engine("local", None, s.workers, _init_worker, setup, _process_unit,
                                                               preload)))
                started[0].start(-(-num_items // (s.items_per_task or unitlib.MIN_UNIT)))  # at most this many units

        plan = _plan(source, codec_factory, store, s, tokenizer, clip_rule, log, on_setup=start_workers)
        return _finish(plan, store, s, t0, log, started[0] if started else None, preload)


def _finish(plan: _Plan, store: Store, s: PrepSettings, t0: float, log, engine, preload) -> PrepResult:
    """Encode what is left of `plan` (on `engine`, or one made here), then write the manifest."""
    try:
        todo = [c for c in range(len(plan.chunks)) if c not in plan.done and _in_part(c, s.part_index)]
        todo_items = sum(len(plan.chunks[c]) for c in todo)
        if todo:
            with engine or make_engine(s.engine, s.address, s.workers, _init_worker, plan.setup, _process_unit, preload) as e:
                _run_units(plan, store, e, todo, todo_items, s)
        plan.files_saved.result()  # the tokenizer's and codec's files are in place (or their error is raised)
        done = plan.done
        listed = set(store.listdir(PARTS_DIR))  # one listing: chunks other parts finished meanwhile
        done.update({c: m for c in range(len(plan.chunks)) if c not in done and Path(marker_name(c)).name in listed
                     and (m := read_done(store, c, plan.dtype)) is not None})
        shown = store.local if store.local is not None else str(store)
        if len(done) < len(plan.chunks):  # other parts are still running (or have not started)
            i, n = s.part_index
            if log:
                log(f"prep: part {i}/{n} done ({todo_items} items this run); {len(plan.chunks) - len(done)} of "
                    f"{len(plan.chunks)} chunks are left to other parts: the last one to finish (or a run without --part) "
                    f"writes {store.path('manifest.json')}")
            return PrepResult(shown, None, time.time() - t0, todo_items)
        manifest = _manifest(store, plan)
        write_manifest(store, manifest)
        result = PrepResult(shown, manifest, time.time() - t0, todo_items)
        if log:
            log(summary_line(result))
        return result
    finally:
        wait([plan.files_saved])  # before the output lock is let go; its error (if any) is raised by manifest_codec


@dataclass
class _Plan:
    """A prep after its checks: the chunks, what is done already, and what the workers get."""

    codec: object
    tokenizer: object
    dtype: np.dtype
    chunks: list
    settings: dict  # the resume-relevant settings (a rerun with others is refused)
    files_saved: Future  # the tokenizer's and codec's files being saved into `out`: the manifest's codec config
    done: dict
    setup: _Setup
    labels: object = None  # data_prep.labels.Labels of a --labels prep

    @property
    def manifest_codec(self) -> dict:
        """The codec config the manifest records (its files bundled into `out`), once they are saved."""
        return self.files_saved.result()


def _plan(source: Source, codec_factory: Callable, store: Store, s: PrepSettings, tokenizer, clip_rule,
          log=None, on_setup: Callable | None = None) -> _Plan:
    """The prep's checks and bookkeeping; `on_setup(setup, num_items)` is called once the workers' setup
    is known, before anything is written (_prep starts the workers there)."""
    from jpeglm.tokenizer import ByteTokenizer, CodeTokenizer

    codec = codec_factory()
    if tokenizer is None:
        tokenizer = ByteTokenizer() if codec.symbol_kind == "bytes" else CodeTokenizer(codec.num_codes)
    items = source.items()
    if s.limit is not None:
        items = items[: s.limit]
    if not items:
        raise PrepError(f"input {source.describe().get('input')}: no {source.media_kind} files found")
    labels = _labels(s, source, items, log)
    if labels is not None:
        tokenizer = _labelled_tokenizer(tokenizer, labels.names)
    dtype = dtype_for_vocab(tokenizer.vocab_size)
    chunks = [items[i : i + s.records_per_shard] for i in range(0, len(items), s.records_per_shard)]
    tok_files = tokenizer_files(tokenizer)
    settings = {
        "codec": codec.to_config(), "tokenizer": tokenizer_fingerprint(tokenizer, tok_files), "source": source.describe(),
        "val_fraction": s.val_fraction, "seed": s.seed, "records_per_shard": s.records_per_shard, "limit": s.limit,
        "min_side": s.min_side, "clip_rule": _plain(clip_rule), "num_items": len(items), "dtype": dtype.name,
    }
    if labels is not None:  # only then: an unconditional prep resumes with the settings it always had
        settings["labels"] = labels.fingerprint()
    if s.max_file_bytes != PrepSettings.max_file_bytes:  # recorded when it differs: older preps resume as they were
        settings["max_file_bytes"] = s.max_file_bytes
    setup = _Setup(codec_factory, tok_files, source, dtype.name, clip_rule, str(store), s,
                   labels.of_key if labels is not None else None, labels.why_missing if labels is not None else "")
    if on_setup is not None:
        on_setup(setup, len(items))
    # settings.json is written here (a concurrent part or a rerun reads it) and fsync'd by the thread
    # below (2-4 ms before the first unit otherwise), which is done before the manifest is written.
    claim_output(store, settings, s.overwrite, shared=s.part is not None, sync=False)
    # The tokenizer's and the codec's files are only read after the prep (workers get the tokenizer's
    # bytes in their setup): written by a thread meanwhile, as the units run (fsyncs, 5-10 ms of a
    # 500-photo prep's start otherwise); _prep waits for it before the manifest.
    io_pool = ThreadPoolExecutor(1, thread_name_prefix="jpeglm-prep-io")
    io_done = io_pool.submit(lambda: (store.sync(SETTINGS_PATH), save_tokenizer(store, tok_files), _bundle(codec, store))[2])
    io_pool.shutdown(wait=False)  # the thread ends after this one task
    listed = set(store.listdir(PARTS_DIR))  # one listing, then only the markers that are there are read
    done = {c: m for c in range(len(chunks))
            if Path(marker_name(c)).name in listed and (m := read_done(store, c, dtype)) is not None}
    return _Plan(codec, tokenizer, dtype, chunks, settings, io_done, done, setup, labels)


def _labels(s: PrepSettings, source: Source, items: list, log):
    """The Labels of a `--labels` prep (None without); label-file rows naming no item are reported."""
    if s.labels is None:
        return None
    from jpeglm.data_prep.labels import resolve_labels

    try:
        labels = resolve_labels(s.labels, source, items)
    except ValueError as e:
        raise PrepError(str(e)) from None
    if labels.unmatched and log:
        shown = ", ".join(labels.unmatched[:5]) + (", ..." if len(labels.unmatched) > 5 else "")
        log(f"prep: {len(labels.unmatched)} rows of the label file name no input item, or a file name several share ({shown}); "
            "listed in manifest.json classes.unmatched_rows; the other items are prepared")
    return labels


def _labelled_tokenizer(tokenizer, names):
    """The tokenizer with one class token per name (a given labelled tokenizer must have these classes)."""
    if tokenizer.num_classes:
        if tuple(tokenizer.class_names) != tuple(names):
            raise PrepError(f"--tokenizer has the classes {list(tokenizer.class_names)[:8]}, --labels gives "
                            f"{list(names)[:8]}; use a tokenizer without classes (they are added) or the same ones")
        return tokenizer
    return tokenizer.with_classes(names)


def _bundle(codec, store: Store) -> dict:
    """The codec's files (VQ weights) copied into the output; returns the config naming the copies."""
    if store.local is not None:
        return codec.bundle(store.local).to_config()
    with tempfile.TemporaryDirectory() as d:  # a URL: bundled here, then put beside the shards
        config = codec.bundle(d).to_config()
        for f in sorted(Path(d).rglob("*")):
            rel = f.relative_to(d).as_posix()
            if f.is_file() and store.size(rel) != f.stat().st_size:
                store.write_bytes(rel, f.read_bytes())
    return config


def _in_part(chunk: int, part: tuple[int, int] | None) -> bool:
    return part is None or chunk % part[1] == part[0]


def _run_units(plan: _Plan, store: Store, engine, todo: list[int], todo_items: int, s: PrepSettings) -> None:
    """Encode and write chunks `todo` as units on `engine`, merging split chunks as their pieces
    come in, filling `plan.done` with their markers, with a progress bar over items."""
    from tqdm import tqdm

    dtype = plan.dtype
    size = unitlib.UnitSizes(s.records_per_shard, engine.slots, s.items_per_task)
    units, have = unitlib.plan_units(plan.chunks, todo, size, unitlib.list_pieces(store),
                                     valid=lambda c, a, b: unitlib.read_piece(store, c, a, b, dtype) is not None)
    reused = sum(b - a for ranges in have.values() for a, b in ranges)
    part = s.part_index
    bar = tqdm(total=todo_items, initial=reused, unit="item", file=sys.stderr, dynamic_ncols=True, disable=not s.progress,
               desc="prep" if part is None else f"prep part {part[0]}/{part[1]}")

    # split chunks are written as their pieces come back (in item order), the last piece finishing the chunk
    mergers = {c: unitlib.ChunkMerger(store, c, len(plan.chunks[c]), have[c], dtype) for c in todo}

    def on_result(result: dict) -> None:
        if "marker" in result:
            plan.done[result["marker"]["chunk"]] = result["marker"]
            return
        c, a, b = result["piece"]
        marker = mergers[c].add(a, b, result.get("data"))
        if marker is not None:  # the chunk's last piece: the chunk is written (the same bytes as one unit would)
            plan.done[c] = marker
            del mergers[c]

    for c in todo:  # chunks whose pieces were all there already (a run killed before its merge)
        if sum(b - a for a, b in have[c]) == len(plan.chunks[c]):
            plan.done[c] = unitlib.merge_chunk(store, c, len(plan.chunks[c]), have[c], dtype)
            del mergers[c]
    try:
        engine.run(units, on_result, lambda n: bar.update(reused + n - bar.n))
    finally:
        bar.close()
        for merger in mergers.values():  # chunks not finished: their pieces stay, to resume from
            merger.abort()



def _scratch() -> str | None:
    """A folder for throwaway files: tmpfs where there is one, else the default temporary folder."""
    return "/dev/shm" if os.path.isdir("/dev/shm") and os.access("/dev/shm", os.W_OK) else None


def tokenizer_files(tokenizer) -> dict[str, bytes]:
    """What `tokenizer.save_pretrained` writes (name -> bytes). Saved into tmpfs where there is one:
    these copies are read back and thrown away, and fsync, 4-7 ms a file on a loaded disk, is free there."""
    with tempfile.TemporaryDirectory(dir=_scratch(), prefix="jpeglm-tokenizer.") as d:
        tokenizer.save_pretrained(d)
        return {f.relative_to(d).as_posix(): f.read_bytes() for f in sorted(Path(d).rglob("*")) if f.is_file()}


def tokenizer_fingerprint(tokenizer, files: dict[str, bytes] | None = None) -> dict:
    """to_config() plus a hash of the saved files: two BPE models of one vocab size differ here."""
    h = hashlib.sha256()
    for name, data in sorted((files if files is not None else tokenizer_files(tokenizer)).items()):
        h.update(name.encode() + b"\0" + data)
    return {**tokenizer.to_config(), "files_sha256": h.hexdigest()}


def _plain(obj):
    import dataclasses

    if obj is None:
        return None
    return dataclasses.asdict(obj) if dataclasses.is_dataclass(obj) else obj


def _manifest(store: Store, plan: _Plan) -> dict:
    chunks, done, settings, tokenizer = plan.chunks, plan.done, plan.settings, plan.tokenizer
    splits = {}
    all_lengths = []
    for split in SPLITS:
        shards, totals = [], Counter()
        for c in range(len(chunks)):
            s = done[c]["splits"][split]
            shards.append({"name": shard_name(c), "num_records": s["num_records"], "num_tokens": s["num_tokens"],
                           **({"max_id": s["max_id"]} if "max_id" in s else {})})  # markers of older preps lack it
            for k in ("num_records", "num_tokens", "num_symbols", "num_bytes", "num_pixels"):
                totals[k] += s[k]
            if s["num_records"]:
                idx = store.read_bytes(f"{split}/{shard_name(c)}.idx")
                all_lengths.append(np.diff(np.load(io.BytesIO(idx), allow_pickle=False)))
        splits[split] = {**{k: totals[k] for k in ("num_records", "num_tokens", "num_symbols", "num_bytes", "num_pixels")},
                         "shards": shards}
    lengths = np.concatenate(all_lengths) if all_lengths else np.zeros(0, np.int64)
    skipped = [s for c in range(len(chunks)) for s in done[c]["skipped"]]
    return {
        "format": FORMAT, "version": VERSION, "codec": plan.manifest_codec,
        "tokenizer": {**tokenizer.to_config(), "path": TOKENIZER_DIR},
        "dtype": plan.dtype.name, "source": settings["source"], "splits": splits,
        "num_records": int(lengths.size), "num_tokens": int(lengths.sum()), "num_items": settings["num_items"],
        "num_chunks": len(chunks), "tokens_per_item": _stats(lengths), "skipped": skipped,
        "skipped_by_reason": dict(sorted(Counter(reason_kind(s["reason"]) for s in skipped).items())),
        "settings": {k: settings[k] for k in ("val_fraction", "seed", "records_per_shard", "limit", "min_side", "clip_rule")},
        "versions": _versions(plan.codec),
        **({"classes": _classes(plan, done)} if plan.labels is not None else {}),
    }


def _classes(plan: _Plan, done: dict) -> dict:
    """manifest.json `classes`: names in id order, records per class (all and per split), where the
    labels came from, and the label-file rows that named no input item."""
    names = plan.labels.names
    per_split = {}
    for split in SPLITS:
        counts = [0] * len(names)
        for m in done.values():
            for k, n in m["splits"][split].get("class_counts", {}).items():
                counts[int(k)] += int(n)
        per_split[split] = counts
    return {"names": list(names), "counts": [sum(c) for c in zip(*per_split.values())], "counts_by_split": per_split,
            "null_class": True, "labels": plan.labels.spec, "unmatched_rows": list(plan.labels.unmatched)}


def summary_line(result: PrepResult) -> str:
    m = result.manifest
    sk = m["skipped_by_reason"]
    skipped = f"skipped {len(m['skipped'])}" + (f" ({', '.join(f'{k}: {v}' for k, v in sk.items())})" if sk else "")
    rate = result.items_done_now / result.seconds if result.seconds > 0 else 0.0
    classes = f" in {len(m['classes']['names'])} classes" if "classes" in m else ""
    return (
        f"prep: {m['num_records']} records{classes} (train {m['splits']['train']['num_records']}, val {m['splits']['val']['num_records']}), "
        f"{m['num_tokens']} tokens ({m['tokens_per_item']['mean']:.0f}/record), {skipped}, "
        f"{result.seconds:.1f} s ({rate:.1f} items/s this run) -> {result.out}"
    )
