"""A cine given as the rest series is refused in one sentence, whether its reader refuses it (its
frame interval) or, read with a frame interval, its analysis does: the reader said "it is no
first-pass perfusion series: ...", the analysis "... [read as perfusion for its role (the rest
series), though ...]", two wordings of one refusal."""
import numpy as np
import pytest

from CardiacAISegLib.errors import CardiacInputError
from CardiacAISegLib.pipeline import compute_analysis
from CardiacAISegLib.readers import load_rest_series
from nifti_files import write_nifti

AFFINE = np.diag([1.5, 1.5, 8.0, 1.0])
CYCLE = "nifti time axis: 12 frames over 0.8 s (one cardiac cycle)"
SENTENCE = (f"it is no first-pass perfusion series: {CYCLE}, which is a cine series; give the rest perfusion "
            "acquisition")


@pytest.fixture
def cine(tmp_path):
    """A cine NIfTI of 12 phases 0.07 s apart (one cycle), and its label map (LV, myocardium, RV)."""
    images = np.random.default_rng(3).uniform(100, 200, (24, 24, 3, 12))
    x, y = np.mgrid[0:24, 0:24]
    r = np.hypot(x - 11.5, y - 11.5)
    labels = np.zeros((24, 24), np.uint8)
    labels[(r > 8) & (r <= 10.5) & (x < 8)] = 1
    labels[r <= 8] = 2
    labels[r <= 5] = 3
    return (write_nifti(tmp_path / "cine.nii.gz", images, AFFINE, frame_s=0.07),
            write_nifti(tmp_path / "cine_labels.nii.gz", np.repeat(labels[:, :, None], 3, 2), AFFINE, dtype=np.uint8))


def test_the_reader_and_the_analysis_refuse_a_cine_given_as_the_rest_in_one_sentence(cine):
    path, labels = cine
    with pytest.raises(CardiacInputError) as read:
        load_rest_series(path)                       # 0.07 s frames: refused as it is read
    rest = load_rest_series(path, dt=0.5, labels=labels)   # read with a frame interval ...
    with pytest.raises(CardiacInputError) as analysed:
        compute_analysis(rest, labels=rest.labels)   # ... and refused in its analysis
    assert read.value.problem.startswith(f"{SENTENCE} (read as one: frame interval 0.07 s"), read.value.problem
    assert analysed.value.problem.startswith(f"{SENTENCE} (analysed as one: "), analysed.value.problem
    assert "--kind" not in read.value.problem + analysed.value.problem
