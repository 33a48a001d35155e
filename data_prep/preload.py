"""Imported once by the local engine's fork server (engines.PRELOAD), so that every worker it forks
starts warm: what a worker's first item would otherwise do lazily, each prep, in every worker.

Pillow imports its common format plugins (BMP, GIF, JPEG, PPM, PNG) on the first `Image.open` of a
process (`Image.preinit`): 12 ms of CPU in a fresh worker, against ~0.6 ms for an item after it, on
the critical path of a 500-photo prep with --workers 2 (~0.1 s on 2 cores).
"""

from PIL import Image

Image.preinit()
