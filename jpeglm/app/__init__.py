"""`jpeglm app`: a web page where a person completes a photo and watches the file being written.

pictures.py (built-in photos, upload checks, the cut line; no gradio), worker.py (one model, one job at
a time, live previews of the partial stream, the finished files; no gradio), page.py (the Gradio
page and the `/complete` API). Gradio is an optional extra: `pip install "jpeglm[app]"`.
"""

from __future__ import annotations

INSTALL_HINT = 'the web app needs Gradio: pip install "jpeglm[app]" (gradio and gradio_client)'


class AppUnavailable(ImportError):
    """Gradio is not installed."""


def require_gradio():
    """The gradio module, or AppUnavailable with the install line."""
    try:
        import gradio
    except ImportError as e:
        raise AppUnavailable(INSTALL_HINT) from e
    return gradio


def build_app(loaded, device: str = "cpu", **worker_options):
    """The Gradio Blocks of the page for a loaded checkpoint (`jpeglm.checkpoint.load_for_inference`)."""
    require_gradio()
    from jpeglm.app.page import build
    from jpeglm.app.worker import Worker

    return build(Worker(loaded, device, **worker_options))


__all__ = ["INSTALL_HINT", "AppUnavailable", "build_app", "require_gradio"]
