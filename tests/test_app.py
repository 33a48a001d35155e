"""`jpeglm app`: the sampler's on_step hook, the generation worker, the page's /complete API through
gradio_client, and the page itself in headless Chromium (skipped where there is none).

A tiny random Llama over 64x64 JPEGs (4 MCU rows, so 4 cut positions) keeps every run short; end
steering finishes each constrained sample inside its budget.
"""

from __future__ import annotations

import dataclasses
import io
import os
import socket
import time
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
from _models import tiny_llama
from PIL import Image

from jpeglm.app.pictures import (
    InputError,
    canonical_media,
    prompt_mask,
    snap,
    with_cut_line,
)
from jpeglm.app.worker import Worker
from jpeglm.codecs.jpeg import JpegCodec, JpegParams
from jpeglm.sample import SamplerConfig, generate
from jpeglm.tokenizer import ByteTokenizer

SIZE = 64

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def codec():
    return JpegCodec(JpegParams(size=SIZE))


@pytest.fixture(scope="module")
def loaded(codec):
    tok = ByteTokenizer()
    return SimpleNamespace(model=tiny_llama(tok.vocab_size), tokenizer=tok, codec=codec, meta={})


@pytest.fixture(scope="module")
def photo_file(tmp_path_factory, photos):
    path = tmp_path_factory.mktemp("app") / "photo.tiff"  # a format browsers cannot show: Pillow opens it
    photos[1].save(path)
    return path


def _worker(loaded, **kw):
    return Worker(loaded, "cpu", max_new_tokens=200, min_interval_s=0.0, preview_every=16, **kw)


# --- the sampler's per-step hook -----------------------------------------------------------------
def test_on_step_sees_every_token_and_false_stops_the_run(codec, loaded, photos):
    prompt = codec.prompt(codec.encode(photos[0]), 0.5)
    seen = []

    def on_step(step):
        seen.append([len(ids) for ids in step.new_ids])
        assert step.samples == [0, 1] and all(len(p) > 10 for p in step.prompt_ids)
        return len(seen) < 7

    cfg = SamplerConfig(max_new_tokens=200, seed=5, batch_size=2)
    samples = generate(loaded.model, loaded.tokenizer, codec, [prompt] * 2, 1, cfg, on_step=on_step)
    assert seen == [[i, i] for i in range(1, 8)]
    assert [s.finish for s in samples] == ["stopped"] * 2 and [s.n_new_tokens for s in samples] == [7, 7]
    assert all(bytes(s.symbols).startswith(prompt) for s in samples)
    # later batches are not run once a run is stopped
    cfg1 = SamplerConfig(max_new_tokens=200, seed=5, batch_size=1)
    assert len(generate(loaded.model, loaded.tokenizer, codec, [prompt] * 3, 1, cfg1, on_step=lambda s: False)) == 1


def test_on_step_none_changes_nothing(codec, loaded, photos):
    prompt = codec.prompt(codec.encode(photos[2]), 0.25)
    cfg = SamplerConfig(max_new_tokens=150, seed=2, batch_size=2)
    a = generate(loaded.model, loaded.tokenizer, codec, [prompt], 2, cfg)
    b = generate(loaded.model, loaded.tokenizer, codec, [prompt], 2, cfg, on_step=lambda s: None)
    assert [bytes(s.symbols) for s in a] == [bytes(s.symbols) for s in b]


# --- pictures and the worker ---------------------------------------------------------------------
def test_cut_snaps_to_codec_steps_and_line_is_drawn(codec, photo_file):
    picture = canonical_media(codec, photo_file)
    assert picture.shape == (SIZE, SIZE, 3)
    # JPEG cuts in half MCU rows (the release's rule): 8 steps at 64x64
    assert codec.prompt_steps() == 8 and snap(codec, 0.6) == (5, 0.625) and snap(codec, 0.05) == (0, 0.0)
    shown = with_cut_line(picture, prompt_mask(codec, picture, 0.5))
    assert (shown[: SIZE // 2 - 1] == picture[: SIZE // 2 - 1]).all()  # the prompt is shown as it is
    assert (shown[SIZE // 2] == (255, 48, 48)).all()  # the cut line
    assert not (shown[SIZE // 2 + 2 :] == picture[SIZE // 2 + 2 :]).all()  # below it: dimmed


def test_cut_line_follows_the_codecs_region_where_a_half_row_ends(codec, photo_file):
    picture = canonical_media(codec, photo_file)
    # 0.6 snaps to 5 of 8 half rows: 2 whole MCU rows (32 px) and the left half (32 px) of the third
    mask = prompt_mask(codec, picture, 0.6)
    assert codec.prompt_region(0.625)["mcus"] == 10 and mask.sum() == 32 * SIZE + 16 * 32
    assert mask[:32].all() and mask[32:48, :32].all() and not mask[32:48, 32:].any() and not mask[48:].any()
    shown = with_cut_line(picture, mask)
    red = (shown == (255, 48, 48)).all(-1)
    assert red[47:49, 2:30].all() and red[31:33, 34:62].all()  # a step: below the half row, then one row up
    assert red[34:46, 31:33].all()  # and the riser where the half row ends
    assert (shown[:31] == picture[:31]).all() and (shown[33:46, :30] == picture[33:46, :30]).all()
    assert (shown[34:48, 34:] != picture[34:48, 34:]).any(-1).all()  # right of the half row: dimmed
    # whole rows: the slider snaps to 4 steps and the line is straight at the kept row
    assert snap(codec, 0.6, "rows") == (2, 0.5)
    rows = prompt_mask(codec, picture, 0.6, "rows")
    assert rows[:32].all() and not rows[32:].any()



def test_worker_cuts_by_the_rule_in_use(codec, loaded, photo_file):
    picture = canonical_media(codec, photo_file)
    symbols = codec.encode(picture)
    assert _worker(loaded).prompt(picture, 0.6) == (codec.prompt(symbols, 0.625), 0.625)  # half rows, the default
    rows = _worker(loaded, prompt_cut="rows")
    assert rows.prompt(picture, 0.6) == (codec.prompt(symbols, 0.5, "rows"), 0.5)
    with pytest.raises(InputError, match="whole picture"):
        rows.prompt(picture, 0.9)  # 0.9 snaps to all 4 rows
    with pytest.raises(ValueError, match="half_rows, rows"):
        _worker(loaded, prompt_cut="thirds")


def test_bad_uploads_give_one_line_messages(codec, tmp_path, monkeypatch):
    (tmp_path / "notes.txt").write_text("not a picture")
    with pytest.raises(InputError, match="not an image"):
        canonical_media(codec, tmp_path / "notes.txt")
    Image.new("RGB", (400, 300)).save(tmp_path / "big.png")
    monkeypatch.setattr("jpeglm.app.pictures.MAX_UPLOAD_PIXELS", 100_000)
    with pytest.raises(InputError, match="400x300"):
        canonical_media(codec, tmp_path / "big.png")
    data = io.BytesIO()
    Image.new("RGB", (200, 200), (9, 99, 199)).save(data, "JPEG")
    (tmp_path / "cut.jpg").write_bytes(data.getvalue()[:300])  # a truncated file
    with pytest.raises(InputError):
        canonical_media(codec, tmp_path / "cut.jpg")


def test_worker_streams_previews_then_byte_exact_files(codec, loaded, photo_file):
    worker = _worker(loaded)
    picture = canonical_media(codec, photo_file)
    snaps = list(worker.stream("job1", picture, 0.5, 2, worker.sampler(2, seed=3)))
    running, final = snaps[:-1], snaps[-1]
    assert final.status == "finished" and len(final.files) == 2 and all(final.done)
    counts = [sum(p.tokens) for p in running]
    assert counts == sorted(counts) and len({c for c in counts if c > 0}) >= 2  # the previews move
    prompt = codec.prompt(codec.encode(picture), 0.5)
    prompt_pixels = codec.decode(prompt)[0]
    for path, report in zip(final.files, final.reports):
        data = Path(path).read_bytes()
        assert report["strict_decodable"] and report["status"] == "ok" and report["bytes"] == len(data)
        assert data.startswith(codec.to_file(prompt)[:-2])  # the prompt's bytes, kept exactly (to_file ends the cut stream with EOI)
        with Image.open(io.BytesIO(data)) as im:
            pixels = np.asarray(im.convert("RGB"))
        np.testing.assert_array_equal(pixels[: SIZE // 2 - 1], prompt_pixels[: SIZE // 2 - 1])
    assert final.prompt_view.shape == (SIZE, 2 * SIZE + 6, 3)


def test_worker_stop_and_bad_settings(codec, loaded, photo_file):
    worker = _worker(loaded)
    picture = canonical_media(codec, photo_file)
    one = worker.sampler(1)
    with pytest.raises(InputError, match="whole picture"):
        next(worker.stream("j", picture, 1.0, 1, one))
    with pytest.raises(InputError, match="number of samples"):
        worker.sampler(99)
    with pytest.raises(InputError, match="temperature"):
        worker.sampler(1, temperature=-1.0)
    worker.stop("queued")  # Stop pressed while the job waited in the queue
    assert [p.status for p in worker.stream("queued", picture, 0.5, 1, one)] == ["stopped"]
    gen = worker.stream("live", picture, 0.5, 1, one)
    next(gen)
    worker.stop("live")
    last = list(gen)[-1]
    assert last.status == "stopped" and last.reports[0]["finish"] == "stopped"
    gen = worker.stream("closed", picture, 0.5, 1, one)
    next(gen)
    gen.close()  # the page went away: the sampler thread is stopped and the model freed
    assert worker.lock.acquire(timeout=5)
    worker.lock.release()


def test_video_checkpoint_shows_frames_and_gives_mp4():
    import av

    from jpeglm.app.pictures import BUILTIN_CLIP, builtin_media, builtin_names
    from jpeglm.codecs.avc import AvcCodec, AvcParams

    codec = AvcCodec(AvcParams(width=64, height=48, frames=4, gop=4))
    tok = ByteTokenizer()
    loaded = SimpleNamespace(model=tiny_llama(tok.vocab_size, ctx=8192), tokenizer=tok, codec=codec, meta={})
    assert builtin_names(codec) == [BUILTIN_CLIP]
    clip = builtin_media(codec, BUILTIN_CLIP)
    assert clip.shape == (4, 48, 64, 3)
    sheet = with_cut_line(clip, prompt_mask(codec, clip, 0.5))  # the four frames in a row, the last two dimmed
    assert sheet.shape == (48, 4 * 64 + 3 * 3, 3) and (sheet[:, :64] == clip[0]).all()
    assert (sheet[:, 2 * 67 : 2 * 67 + 2] == (255, 48, 48)).all()
    worker = Worker(loaded, "cpu", max_new_tokens=40, min_interval_s=0.0, preview_every=8)
    final = list(worker.stream("v", clip, 0.5, 1, worker.sampler(1)))[-1]
    assert final.status == "finished" and final.files[0].endswith(".mp4")
    with av.open(final.files[0]) as c:  # the prompt's frames play
        assert sum(1 for _ in c.decode(video=0)) >= 2


# --- class-conditional checkpoints -------------------------------------------------------------
@pytest.fixture(scope="module")
def class_loaded(codec, tmp_path_factory):
    """A tiny random class-conditional JPEG checkpoint (classes cat, dog), saved and loaded as `jpeglm app` does."""
    import yaml

    from jpeglm.checkpoint import FORMAT, META_FILE, load_for_inference

    tok = ByteTokenizer().with_classes(["cat", "dog"])
    folder = tmp_path_factory.mktemp("classes") / "export"
    tiny_llama(tok.vocab_size, seed=1).save_pretrained(folder)
    tok.save_pretrained(folder)
    (folder / META_FILE).write_text(yaml.safe_dump({"format": FORMAT, "version": 1, "codec": codec.to_config()}))
    return load_for_inference(folder)


def test_worker_samples_a_class_with_guidance_as_generate_does(codec, class_loaded, photo_file):
    worker = _worker(class_loaded)
    assert worker.class_names == ("cat", "dog") and worker.class_ids("dog") == [1] and worker.class_ids("") is None
    picture = canonical_media(codec, photo_file)
    cfg = worker.sampler(2, seed=4, cfg_scale=2.0)
    final = list(worker.stream("cls", picture, 0.5, 2, cfg, worker.class_ids("dog")))[-1]
    assert final.status == "finished" and len(final.files) == 2
    prompt = codec.prompt(codec.encode(picture), 0.5)
    m, tok = class_loaded.model, class_loaded.tokenizer
    direct = generate(m, tok, codec, [prompt], 2, cfg, classes=[1])
    files = [Path(f).read_bytes() for f in final.files]
    assert files == [codec.to_file(s.symbols, s.media) for s in direct]  # the same seed: the same bytes
    assert all(codec.is_strictly_decodable(d) and d.startswith(codec.to_file(prompt)[:-2]) for d in files)
    assert [r["class"] for r in final.reports] == ["dog", "dog"] and all(r["strict_decodable"] for r in final.reports)
    unguided = generate(m, tok, codec, [prompt], 2, dataclasses.replace(cfg, cfg_scale=1.0), classes=[1])
    assert files != [codec.to_file(s.symbols, s.media) for s in unguided]  # the guidance scale reached the sampler


def test_unknown_class_is_a_message_on_the_page_and_it_keeps_serving(codec, class_loaded, photo_file):
    pytest.importorskip("gradio")
    from jpeglm.app.page import build

    worker = _worker(class_loaded)
    with pytest.raises(InputError, match=r"unknown class 'fox' \(known: cat, dog\)"):
        worker.class_ids("fox")
    page = build(worker)
    run = next(f.fn for f in page.fns.values() if getattr(f.fn, "__name__", "") == "run")  # Generate's handler
    picture = canonical_media(codec, photo_file)
    shown = list(run(picture, 0.5, 0, 1, 1.0, 50, "fox-job", "fox", 2.0))
    assert len(shown) == 1 and shown[0][0] == "**unknown class 'fox' (known: cat, dog)**" and shown[0][1] is None
    last = list(run(picture, 0.5, 3, 1, 1.0, 50, "cat-job", "cat", 2.0))[-1]
    assert last[0].startswith("finished") and last[4][0]["class"] == "cat" and last[4][0]["strict_decodable"]
    last = list(run(picture, 0.5, 3, 1, 1.0, 50, "none-job", "", 2.0))[-1]  # no class: unconditional, unguided
    assert last[0].startswith("finished") and "class" not in last[4][0]


# --- the served app ------------------------------------------------------------------------------
def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def served(loaded):
    pytest.importorskip("gradio", reason='the app is an optional extra: pip install "jpeglm[app]"')
    pytest.importorskip("gradio_client")
    from jpeglm.app.page import build

    port = _free_port()
    worker = Worker(loaded, "cpu", max_new_tokens=200, preview_every=8, min_interval_s=0.15)
    page = build(worker)
    page.launch(server_name="127.0.0.1", server_port=port, prevent_thread_lock=True, quiet=True)
    yield SimpleNamespace(url=f"http://127.0.0.1:{port}/", worker=worker)
    page.close()


def test_complete_api_returns_strict_jpegs_with_the_prompt(served, codec, photo_file):
    from gradio_client import Client, handle_file

    client = Client(served.url, verbose=False)
    files = client.predict(handle_file(str(photo_file)), 0.5, 7, 2, 1.0, 50, api_name="/complete")
    assert len(files) == 2
    prompt = codec.prompt(codec.encode(canonical_media(codec, photo_file)), 0.5)
    for f in files:
        data = Path(f if isinstance(f, str) else f["path"]).read_bytes()
        assert codec.is_strictly_decodable(data) and data.startswith(codec.to_file(prompt)[:-2])  # less to_file's EOI
    # bad input: an error for the caller, and the app keeps serving
    with pytest.raises(Exception, match="whole picture"):
        client.predict(handle_file(str(photo_file)), 1.0, 7, 1, 1.0, 50, api_name="/complete")
    assert len(client.predict(handle_file(str(photo_file)), 0.25, 1, 1, 1.0, 50, api_name="/complete")) == 1


def test_class_controls_only_for_class_checkpoints(loaded, class_loaded):
    pytest.importorskip("gradio")
    from jpeglm.app.page import build

    labels = lambda page: {getattr(b, "label", None) for b in page.blocks.values()}
    assert "Class" not in labels(build(Worker(loaded)))
    unlabelled_meta = SimpleNamespace(**{**vars(loaded), "meta": {"classes": ["cat", "dog"]}})
    assert "Class" not in labels(build(Worker(unlabelled_meta)))  # the tokenizer's class tokens decide, as in sample
    assert {"Class", "Guidance"} <= labels(build(Worker(class_loaded)))


def test_everything_that_runs_the_model_shares_one_queue_slot(loaded):
    pytest.importorskip("gradio")
    from jpeglm.app.page import MODEL, build

    page = build(Worker(loaded))
    model_fns = [f for f in page.fns.values() if f.concurrency_id == MODEL]
    assert {f.api_name for f in model_fns} >= {"complete"} and len(model_fns) == 2  # the API and Generate
    assert all(f.concurrency_limit == 1 and f.queue for f in model_fns)


def test_cli_app_bad_checkpoint_is_one_line(tmp_path, capsys):
    pytest.importorskip("gradio")
    from jpeglm.cli import main

    assert main(["app", "--model", str(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert err.startswith("jpeglm app: error: --model") and "Traceback" not in err
    assert main(["app", "--model", "no-such-owner/no-such-model"]) == 2  # offline here: not on the hub either
    err = capsys.readouterr().err  # jpeglm.hub's one line, as `jpeglm sample` says it
    assert "not in the Hugging Face cache" in err and "hf download no-such-owner/no-such-model" in err
    assert err.count("\n") == 1 and "Traceback" not in err


def test_cli_app_without_gradio_says_how_to_install(monkeypatch, capsys):
    import builtins

    from jpeglm.cli import main

    real_import = builtins.__import__

    def no_gradio(name, *a, **kw):
        if name == "gradio" or name.startswith("gradio."):
            raise ImportError("No module named 'gradio'")
        return real_import(name, *a, **kw)

    monkeypatch.setattr(builtins, "__import__", no_gradio)
    assert main(["app", "--model", "nowhere"]) == 2
    assert 'pip install "jpeglm[app]"' in capsys.readouterr().err


def test_page_in_headless_chromium(served, codec, photo_file, tmp_path):
    from _cdp import Browser, BrowserUnavailable

    try:
        browser = Browser.start(tmp_path)
    except BrowserUnavailable as e:
        pytest.skip(f"no headless browser: {e}")
    slow = served.worker.model.register_forward_hook(lambda *a: time.sleep(0.01))  # bytes arrive visibly
    try:
        page = browser.open(served.url)
        page.wait_for("document.querySelector('#generate') !== null", 60)
        (tmp_path / "notes.txt").write_text("not a picture")
        page.upload("#upload input[type=file]", str(tmp_path / "notes.txt"))
        page.wait_for("document.querySelector('#status').innerText.includes('not an image')", 30)
        page.click("#upload button[aria-label='Clear']")
        page.upload("#upload input[type=file]", str(photo_file))
        page.wait_for("document.querySelector('#cut img') !== null", 30)
        page.click("#generate")
        seen, final = [], None
        deadline = time.time() + 90
        while time.time() < deadline:
            src = page.eval("Array.from(document.querySelectorAll('#preview img')).map(i => i.src).join('|')")
            if src and (not seen or seen[-1] != src):
                seen.append(src)
            status = page.eval("document.querySelector('#status').innerText")
            if status.startswith("finished"):
                final = page.eval("document.querySelectorAll('#files a').length")
                break
            time.sleep(0.05)
        assert status.startswith("finished"), status
        assert len(seen) >= 3, f"the preview changed only {len(seen)} times"  # at least twice before the end
        assert final == 2
        page.wait_for("document.querySelector('#view img') !== null", 10)
        shot = page.screenshot()
        assert shot[:8] == b"\x89PNG\r\n\x1a\n"
        (tmp_path / "app.png").write_bytes(shot)
        if os.environ.get("JPEGLM_APP_SCREENSHOT"):  # how docs/app.png is made
            Path(os.environ["JPEGLM_APP_SCREENSHOT"]).write_bytes(shot)
        page.close()

        # a closed tab cancels its job: the model is free again soon after, long before the job would end
        slow.remove()
        slow = served.worker.model.register_forward_hook(lambda *a: time.sleep(0.05))  # ~10 s a job
        page = browser.open(served.url)
        page.wait_for("document.querySelector('#cut img') !== null", 60)
        page.click("#generate")
        page.wait_for("document.querySelector('#status').innerText.startsWith('running')", 30)
        assert served.worker.lock.locked()
        page.close()
        t0 = time.time()
        assert served.worker.lock.acquire(timeout=8), "the job of a closed tab kept running"
        served.worker.lock.release()
        assert time.time() - t0 < 8
    finally:
        slow.remove()
        browser.close()
