"""The Gradio page: pick or upload a photo, cut it where the codec can cut it, and watch the file
being written; and the `/complete` API beside it.

Every event that touches the model shares one concurrency group ("model", limit 1): the page's
Generate and the API wait in Gradio's queue, their place shown. Stop sets the job's flag (the job
id lives in the browser session's state, so one person's Stop never ends another's job, and a
Stop pressed while queued ends the job as soon as it starts); a closed tab leaves the queue, and
a running job whose page is gone is stopped by the worker (see worker.py).
"""

from __future__ import annotations

import uuid

from jpeglm.app.pictures import (
    InputError,
    builtin_media,
    builtin_names,
    canonical_media,
    cut_steps,
    for_display,
    prompt_mask,
    snap,
    with_cut_line,
)
from jpeglm.app.worker import Worker

MODEL = "model"  # the concurrency group of everything that runs the model

INTRO = """# Complete a photo with a codec language model
The model writes the **file**: each byte it adds is more of the picture. Choose a photo, keep its top part
(above the red line: the codec can only cut at these steps), and press Generate to watch the bytes arrive.
"""
INTRO_VIDEO = """# Complete a clip with a codec language model
The model writes the **file**: each byte it adds is more of the clip. Choose a clip, keep its first frames
and press Generate to watch the frames arrive; the finished clips are .mp4 files.
"""


def build(worker: Worker, title: str = "jpeglm app"):
    import gradio as gr

    codec = worker.codec
    rule = worker.prompt_cut  # the slider moves in the codec's steps for the cut in use
    steps = cut_steps(codec, rule)
    names = builtin_names(codec)
    video = codec.media_kind == "video"
    thing = "clip" if video else "photo"
    classes = list(worker.class_names)  # from the checkpoint's tokenizer, as `jpeglm sample --class` finds them
    _, start_ratio = snap(codec, 0.5, rule)

    def picked(media, ratio):
        return media, for_display(with_cut_line(media, prompt_mask(codec, media, ratio, rule))), ""

    def load(path, ratio):
        try:
            return picked(canonical_media(codec, path), ratio)
        except InputError as e:
            return gr.update(), gr.update(), f"**Cannot use this file:** {e}"

    def load_builtin(name, ratio):
        if not name:
            return gr.update(), gr.update(), ""
        try:
            return picked(builtin_media(codec, name), ratio)
        except InputError as e:
            return gr.update(), gr.update(), f"**{e}**"

    def load_upload(path, ratio):
        if path is None:
            return gr.update(), gr.update(), "", gr.update()
        shown = load(path, ratio)
        return shown + (gr.update() if shown[2] else None,)  # an upload in use: no built-in photo chosen

    def draw_cut(picture, ratio):
        return gr.update() if picture is None else for_display(with_cut_line(picture, prompt_mask(codec, picture, ratio, rule)))

    def new_job():
        return uuid.uuid4().hex[:12]

    def run(picture, ratio, seed, num, temperature, top_k, job_id, label=None, guidance=None):
        clear = (None, None, None, None)
        if picture is None:
            yield (f"**Choose or upload a {thing} first.**",) + clear
            return
        try:
            ids = worker.class_ids(label)  # no class: unconditional (guidance needs a class to guide towards)
            cfg = worker.sampler(int(num or 1), temperature=float(temperature), top_k=int(top_k or 0), seed=int(seed or 0),
                                 cfg_scale=float(guidance) if ids else 1.0)
            job = worker.stream(job_id, picture, float(ratio), int(num or 1), cfg, ids)
            try:
                for p in job:
                    gallery = [(img, f"seed {cfg.seed + i} · {t} tokens") for i, (img, t) in enumerate(zip(p.previews, p.tokens))]
                    view = None if p.prompt_view is None else for_display(p.prompt_view)
                    yield p.summary(), gallery, p.files or None, view, p.reports or None
            finally:
                job.close()  # Gradio closes this generator when the tab goes away: stop the sampler with it
        except InputError as e:
            yield (f"**{e}**",) + clear

    def complete(image, prompt_ratio, seed, num_samples, temperature, top_k):
        """API: complete `image` (a file) keeping `prompt_ratio` of it; returns the files written."""
        if image is None:
            raise gr.Error("no image given")
        try:
            picture = canonical_media(codec, image)
            cfg = worker.sampler(int(num_samples), temperature=float(temperature), top_k=int(top_k), seed=int(seed))
            last = None
            for last in worker.stream(new_job(), picture, float(prompt_ratio), int(num_samples), cfg):
                pass
        except InputError as e:
            raise gr.Error(str(e)) from None
        if last is None or last.status == "error":
            raise gr.Error(last.message if last else "nothing was generated")
        return last.files

    with gr.Blocks(title=title) as page:
        gr.Markdown(INTRO_VIDEO if video else INTRO)
        job = gr.State("")
        picture = gr.State(None)
        with gr.Row():
            with gr.Column(scale=2):
                builtin = gr.Radio(names, value=names[0] if names else None, label=f"Built-in {thing}", elem_id="builtin")
                any_format = "any video PyAV opens" if video else "any format Pillow opens"
                upload = gr.File(label=f"...or upload a {thing} ({any_format})", type="filepath", elem_id="upload")
                cut_label = "the frames before the red edge (later frames dimmed)" if video else "the part above the red line"
                cut = gr.Image(label=f"Prompt: {cut_label}", interactive=False, type="numpy", elem_id="cut", format="png")
                unit = "frames" if video else "cut positions"
                ratio = gr.Slider(0, 1, value=start_ratio, step=1 / steps, elem_id="ratio",
                                  label=f"Prompt: fraction of the {thing} kept ({steps} {unit})")
                with gr.Row():
                    temperature = gr.Slider(0, 2, value=1.0, step=0.05, label="Temperature")
                    top_k = gr.Number(value=50, precision=0, minimum=0, label="Top-k (0 = off)")
                with gr.Row():
                    seed = gr.Number(value=0, precision=0, label="Seed")
                    num = gr.Slider(1, worker.max_samples, value=min(2, worker.max_samples), step=1, label="Samples")
                extra = []
                if classes:
                    with gr.Row():
                        extra = [gr.Dropdown([("(none: unconditional)", "")] + [(c, c) for c in classes], value="", label="Class",
                                             elem_id="class"),
                                 gr.Slider(1, 10, value=3, step=0.5, label="Guidance", elem_id="guidance",
                                           info="classifier-free guidance scale towards the class (1 = off)")]
                with gr.Row():
                    go = gr.Button("Generate", variant="primary", elem_id="generate")
                    halt = gr.Button("Stop", variant="stop", elem_id="stop")
            with gr.Column(scale=3):
                status = gr.Markdown(elem_id="status")
                gallery = gr.Gallery(label="Samples, as their bytes arrive", columns=4, elem_id="preview",
                                     format="png", height="auto")
                files = gr.File(label="Finished files (byte-exact what the model wrote)", file_count="multiple",
                                interactive=False, elem_id="files")
                view = gr.Image(label="Prompt | original", interactive=False, format="png", elem_id="view")
                report = gr.JSON(label="Decode report", elem_id="report")

        # the API: (image, prompt_ratio, seed, num_samples, temperature, top_k) -> files
        with gr.Row(visible=False):
            api_in = [gr.File(type="filepath"), gr.Number(), gr.Number(precision=0), gr.Number(precision=0),
                      gr.Number(), gr.Number(precision=0)]
            api_out = gr.File(file_count="multiple")
            api_go = gr.Button()
        api_go.click(complete, api_in, api_out, api_name="complete", concurrency_limit=1, concurrency_id=MODEL)

        media_outs = [picture, cut, status]
        builtin.change(load_builtin, [builtin, ratio], media_outs, queue=False, api_visibility="private")
        upload.upload(load_upload, [upload, ratio], media_outs + [builtin], queue=False, api_visibility="private")
        ratio.change(draw_cut, [picture, ratio], cut, queue=False, api_visibility="private")
        page.load(load_builtin, [builtin, ratio], media_outs, queue=False, api_visibility="private")
        go.click(new_job, None, job, queue=False, api_visibility="private").then(
            run, [picture, ratio, seed, num, temperature, top_k, job] + extra, [status, gallery, files, view, report],
            concurrency_limit=1, concurrency_id=MODEL, api_visibility="private",
        )
        halt.click(worker.stop, job, None, queue=False, api_visibility="private")
    page.queue(default_concurrency_limit=1)
    return page


__all__ = ["build"]
