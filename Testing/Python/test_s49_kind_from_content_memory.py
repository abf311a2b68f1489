"""The series kind from the images (``series_kind._from_content``) reads one slice's frames, a
strided sample of each frame and each frame's brightest pixels: it copies those, measured from the
series' floor, never the whole 4D series (a shifted full-field series, 60 x 4 x 224 x 208 float32,
was copied whole to be measured from its floor, and copied again to find its brightest pixels)."""
import tracemalloc

import numpy as np
import pytest

from CardiacAISegLib.phantoms.phantom_cine import make_cine_phantom
from CardiacAISegLib.readers.series_kind import _from_content, _signal_floor
from CardiacAISegLib.study import CINE, Study


@pytest.fixture(scope="module")
def shifted_cine():
    """A z-scored cine (its floor below zero) of 45 MB: the phantom's 16 slices four times over,
    so that one slice, and the floor's pixel sample, are small beside the series."""
    study, _ = make_cine_phantom(seed=3, n_frames=20, n_slices=16, size=96)
    images = np.tile(study.images.astype(np.float32), (1, 4, 1, 1))
    images = ((images - images.mean()) / images.std()).astype(np.float32)
    return Study(images, study.ijk_to_ras)


def test_the_kind_from_the_images_copies_no_whole_series(shifted_cine):
    assert _signal_floor(shifted_cine.images) < 0      # measured from its floor, not from zero
    tracemalloc.start()
    try:
        kind, reason = _from_content(shifted_cine)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert kind == CINE and "stay as bright" in reason, reason
    assert peak < 0.5 * shifted_cine.images.nbytes, f"{peak / 2**20:.1f} MiB for a {shifted_cine.images.nbytes / 2**20:.0f} MiB series"
