"""Shared fixtures: small real photos that ship with scikit-image, and the pets set when present."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

PETS = Path(__file__).resolve().parents[2] / "shared" / "data" / "pets"
SKIMAGE_RGB = ["astronaut.png", "chelsea.png", "coffee.png", "rocket.jpg", "ihc.png", "motorcycle_left.png"]


def pytest_collection_modifyitems(config, items):
    try:
        import torch

        has_gpu = torch.cuda.is_available()
    except Exception:
        has_gpu = False
    if not has_gpu:
        skip = pytest.mark.skip(reason="needs a CUDA GPU")
        for item in items:
            if item.get_closest_marker("gpu"):  # the marker, not any node named gpu (a folder, a module)
                item.add_marker(skip)


@pytest.fixture(scope="session")
def pets_dir() -> Path:
    if not (PETS / "train").is_dir():
        pytest.skip("../shared/data/pets is not here (it is only on the developers' machines)")
    return PETS


@pytest.fixture(scope="session")
def photos():
    """Real RGB photos of different sizes from scikit-image's bundled data (offline)."""
    from PIL import Image
    import skimage.data

    root = Path(skimage.data.__file__).parent
    return [Image.open(root / name).convert("RGB") for name in SKIMAGE_RGB]


@pytest.fixture()
def photo_dir(tmp_path, photos) -> Path:
    d = tmp_path / "photos"
    d.mkdir()
    for i, im in enumerate(photos):
        im.save(d / f"photo_{i:02d}.png")
    return d


@pytest.fixture(scope="module")
def one_thread():
    """One intra-op torch thread for a module (`pytestmark = pytest.mark.usefixtures("one_thread")`):
    its models are tiny, and on a shared 2-core machine two spinning OpenMP threads per process made
    a step 20x slower, not faster."""
    import torch

    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)
