"""What the cine and the perfusion QC say alike, from one place: FIELD_OF_VIEW_LARGE and
PIXEL_SPACING_DEFAULT (one sentence each, the consequence per series), the ceiling an
IMAGE_CLIPPED and the AIF series' LV curve read (perfusion.bolus.CEILING_TOLERANCE), and the
perfusion overlay check's in-plane copies of a label map (moved once, not slice by slice)."""
from copy import copy
from types import SimpleNamespace

import numpy as np
import pytest

from CardiacAISegLib import qc
from CardiacAISegLib.analysis import Analysis
from CardiacAISegLib.labels import MYO
from CardiacAISegLib.perfusion import bolus
from CardiacAISegLib.phantoms.phantom_cine import make_cine_phantom
from CardiacAISegLib.phantoms.phantom_perfusion import make_perfusion_phantom
from CardiacAISegLib.readers import aif_series
from CardiacAISegLib.readers.labelmap import _moved_copies


@pytest.fixture(scope="module")
def cine():
    return make_cine_phantom(seed=3, n_frames=8, n_slices=6, size=64, pixel_mm=1.6, slice_mm=8.0)[0]


@pytest.fixture(scope="module")
def perfusion():
    return make_perfusion_phantom(seed=4, n_frames=40, noise=0.005)[0]


def as_read(study, pixel_mm):
    """``study`` as a NIfTI file would give it with ``pixel_mm`` pixels."""
    read = copy(study)
    read.provenance = dict(study.provenance or {}, reader="nifti")
    read.ijk_to_ras = study.ijk_to_ras @ np.diag([pixel_mm / study.spacing[0], pixel_mm / study.spacing[1], 1.0, 1.0])
    return read


def flag_of(study, code):
    return next((f for f in Analysis(study, study.labels).run().qc["flags"] if f["code"] == code), None)


def test_the_cine_and_the_perfusion_field_of_view_flags_say_one_sentence_with_their_own_consequence(cine, perfusion):
    """Both series' images written 9 mm a pixel (576 mm across 64 pixels, 864 mm across 96): one
    sentence naming the span, then what a pixel size too large does to what each measures."""
    cine_flag = flag_of(as_read(cine, 9.0), "FIELD_OF_VIEW_LARGE")
    perfusion_flag = flag_of(as_read(perfusion, 9.0), "FIELD_OF_VIEW_LARGE")
    assert cine_flag["severity"] == perfusion_flag["severity"] == "review"
    assert (cine_flag["value"], perfusion_flag["value"]) == pytest.approx((576.0, 864.0))
    shared = "mm, wider than an MR scanner's field of view (at most 500-550 mm): the pixel size in the file is larger " \
             "than the scanner's (an image resized and saved with its old header?); "
    assert cine_flag["message"] == "the images span 576 x 576 " + shared + \
        "volumes and mass grow with its square; check the spacing"
    assert perfusion_flag["message"] == "the images span 864 x 864 " + shared + \
        f"{qc._PIXEL_SIZE_IN_PERFUSION}; check the spacing and the contours"
    assert flag_of(as_read(cine, 1.6), "FIELD_OF_VIEW_LARGE") is None
    assert flag_of(as_read(perfusion, 1.8), "FIELD_OF_VIEW_LARGE") is None


def test_the_cine_and_the_perfusion_placeholder_pixel_flags_open_with_one_sentence(cine, perfusion, monkeypatch):
    """1.0 x 1.0 mm in a file other than DICOM: both messages open with the one sentence that
    names the file's 1.0 x 1.0 mm and the series' usual pixel size, then say their consequence."""
    said = {}
    opening = qc._placeholder_pixels_said

    def recorded(usual):
        said[usual] = opening(usual)
        return said[usual]

    monkeypatch.setattr(qc, "_placeholder_pixels_said", recorded)
    cine_flag = flag_of(as_read(cine, 1.0), "PIXEL_SPACING_DEFAULT")
    perfusion_flag = flag_of(as_read(perfusion, 1.0), "PIXEL_SPACING_DEFAULT")
    assert set(said) == {"cine pixels are usually 1.2-2 mm", "perfusion pixels are usually 1.4-3 mm"}
    for flag, usual in ((cine_flag, "cine"), (perfusion_flag, "perfusion")):
        sentence = said[f"{usual} pixels are usually {'1.2-2' if usual == 'cine' else '1.4-3'} mm"]
        assert flag["message"].startswith(sentence) and flag["value"] == 1.0
        assert sentence.startswith("the file gives the pixels as exactly 1.0 x 1.0 mm, the value tools write when")
    assert cine_flag["severity"] == "review" and "volumes and mass scale with the pixel area" in cine_flag["message"]
    # labels given: the mask does not rest on the 1 mm, a note
    assert perfusion_flag["severity"] == "info" and "MBF per gram does not depend on the pixel size" in perfusion_flag["message"]
    dicom = as_read(perfusion, 1.0)
    dicom.provenance["reader"] = "dicom"   # a DICOM file's PixelSpacing is the scanner's own
    assert flag_of(dicom, "PIXEL_SPACING_DEFAULT") is None


def test_qc_and_the_aif_series_read_the_series_ceiling_with_one_tolerance():
    """A value counts as at the ceiling within CEILING_TOLERANCE of the range below it, in qc's
    perfusion IMAGE_CLIPPED (the myocardium) and in the AIF series' LV curve alike."""
    tolerance = bolus.CEILING_TOLERANCE
    assert qc.CEILING_TOLERANCE is tolerance and not hasattr(aif_series, "CEILING_TOLERANCE")

    times = np.arange(30) * 1.0
    lv = 100 + 900 * np.exp(-0.5 * ((times - 12) / 3.0) ** 2)
    ceiling = float(lv.max()) + 1.0
    span = ceiling - float(lv.min())
    lv[[10, 15]] = ceiling - 0.5 * tolerance * span   # two frames just under the ceiling, not a plateau
    assert aif_series.lv_clipped_frames(lv, times, ceiling).sum() == 2
    lv[[10, 15]] = ceiling - 2.0 * tolerance * span
    assert not aif_series.lv_clipped_frames(lv, times, ceiling).any()

    myo = np.zeros((1, 16, 16), bool)
    myo[0, 4:12, 4:12] = True
    rng = np.random.default_rng(0)
    images = rng.uniform(0.0, 0.5, (20, 1, 16, 16))   # many grey levels
    images[0, 0, 0, 0], images[0, 0, 0, 1] = 0.0, 1.0   # the series' range: 0 to 1, outside the myocardium

    def clipped(just_under):
        cut = images.copy()
        cut[5][myo] = 1.0 - just_under * tolerance   # every myocardial pixel in one frame
        analysis = SimpleNamespace(study=SimpleNamespace(images=cut), labels={0: np.where(myo, MYO, 0)}, reference_frame=0)
        return [f["code"] for f in qc._perfusion_values_flags(analysis)]

    assert clipped(0.5) == ["IMAGE_CLIPPED"]
    assert clipped(2.0) == []


def _per_slice_copies(lab, pixel_mm):
    """The overlay check's copies as they were made before: each slice moved alone."""
    per_slice = [_moved_copies(lab[k:k + 1], pixel_mm) for k in range(lab.shape[0])]
    return {name: np.concatenate([copies[name] for copies in per_slice]) for name in per_slice[0]}


@pytest.mark.parametrize("case", ["perfusion phantom", "3 slices", "4 slices", "1 slice"])
def test_the_in_plane_copies_are_each_slice_moved_alone_and_made_in_one_pass(case, monkeypatch):
    """Moving the whole map once gives each slice's own mirrored and in-plane shifted copies
    (identical arrays, the same names in the same order), without the copies moved along the
    stack, and ``_moved_copies`` runs once, not once a slice."""
    import CardiacAISegLib.readers.labelmap as labelmap

    rng = np.random.default_rng(7)
    lab, pixel_mm = {"perfusion phantom": (make_perfusion_phantom(seed=1, n_frames=20)[0].labels[0], 1.8),
                     "3 slices": (rng.integers(0, 4, (3, 21, 17)), 2.5),
                     "4 slices": (rng.integers(0, 4, (4, 16, 30)), 1.3),
                     "1 slice": (rng.integers(0, 4, (1, 12, 12)), 3.0)}[case]
    expected = _per_slice_copies(lab, pixel_mm)
    calls = []
    monkeypatch.setattr(labelmap, "_moved_copies", lambda *args: calls.append(1) or _moved_copies(*args))
    copies = qc._in_plane_copies(lab, pixel_mm)
    assert len(calls) == 1
    assert list(copies) == list(expected) == list(_moved_copies(lab[:1], pixel_mm))   # a single slice has no stack
    assert not [name for name in copies if "stack" in name]
    for name in expected:
        assert copies[name].dtype == expected[name].dtype and np.array_equal(copies[name], expected[name]), name
    if lab.shape[0] >= 3:
        assert any("along the stack" in name for name in _moved_copies(lab, pixel_mm))
