"""The series kind from the images alone (``series_kind._from_content``) on intensities that are
not magnitude values from zero: z-scored (mean 0, SD 1, as preprocessing tools export a series),
stored with a negative offset (int16 minus 32000), or padded outside the field. A cine saved that
way without frame times was read as a first pass and refused ("rises from near zero",
"brighten inf-fold"); with 45 ms frames it was measured but warned "series kind uncertain ...
inf-fold" (probe 107 D3)."""
import numpy as np
import pytest

from CardiacAISegLib.errors import CardiacInputError
from CardiacAISegLib.phantoms.phantom_cine import make_cine_phantom
from CardiacAISegLib.phantoms.phantom_perfusion import make_perfusion_phantom
from CardiacAISegLib.readers import load_study
from CardiacAISegLib.readers.series_kind import decide_kind
from CardiacAISegLib.study import Study
from nifti_files import write_nifti


def _z_scored(images):
    return (images - images.mean()) / images.std()


def _write_nifti(path, frames_tsrc, affine, dtype=np.float32, frame_s=None):
    """A 4D NIfTI of (T, S, R, C) frames (``nifti_files.write_nifti``)."""
    return write_nifti(path, np.transpose(np.asarray(frames_tsrc), (3, 2, 1, 0)), affine, frame_s, dtype)


def _said(study):
    """Everything the kind decision wrote: its reason, its evidence and the warnings."""
    decision = study.provenance["kind"]
    return " | ".join([decision["decided_by"], *(e["reason"] for e in decision["evidence"]),
                       *study.provenance.get("warnings", [])])


def _decided(images, affine=None):
    """(kind, what was said) when only the images can tell: no frame times, no flags."""
    study = Study(np.asarray(images, np.float32), np.diag([1.8, 1.8, 8.0, 1.0]) if affine is None else affine)
    decide_kind(study)
    return study.kind, _said(study)


@pytest.fixture(scope="module")
def cine():
    study, _ = make_cine_phantom(seed=3, n_frames=20, n_slices=10, size=96, pixel_mm=1.6, slice_mm=8.0)
    return study.images * 1000, study.ijk_to_ras


@pytest.fixture(scope="module")
def perfusion():
    study, _ = make_perfusion_phantom(seed=3, n_frames=60, noise=0.005)
    return study


@pytest.mark.parametrize("stored", ["z-scored", "int16 minus 32000"])
def test_an_untimed_cine_shifted_below_zero_is_still_a_cine(tmp_path, cine, stored):
    images, affine = cine
    if stored == "z-scored":
        path = _write_nifti(tmp_path / "cine.nii.gz", _z_scored(images), affine)
    else:
        path = _write_nifti(tmp_path / "cine.nii.gz", np.rint(images - 32000), affine, np.int16)
    study = load_study(path)
    said = _said(study)
    assert study.kind == "cine", said
    evidence = study.provenance["kind"]["evidence"]
    assert evidence and all(e["kind"] == "cine" for e in evidence), said   # the images say so, not a default
    assert "inf-fold" not in said and "near zero" not in said, said


def test_an_offset_cine_with_frame_times_is_read_without_doubt(tmp_path, cine):
    images, affine = cine
    study = load_study(_write_nifti(tmp_path / "cine.nii.gz", np.rint(images - 32000), affine, np.int16, frame_s=0.045))
    assert study.kind == "cine"
    assert not any("uncertain" in w for w in study.provenance["warnings"]), study.provenance["warnings"]
    assert "inf-fold" not in _said(study)


@pytest.mark.parametrize("stored", ["as is", "z-scored", "minus 32000", "padded with -1024"])
def test_a_shifted_first_pass_is_still_perfusion(perfusion, stored):
    """The perfusion phantom as signal (100 + 400 x Gd): shifted, its rises are measured from its
    floor; a padding value outside the field is no floor (subtracted, it would flatten the pools'
    14.9-fold rise to about 2-fold, a cine's, leaving only the brightest pixels to say first pass)."""
    signal = 100 + 400 * np.maximum(perfusion.images, 0)
    if stored == "z-scored":
        signal = _z_scored(signal)
    elif stored == "minus 32000":
        signal = signal - 32000
    elif stored == "padded with -1024":
        signal = signal.copy()
        signal[..., :, :12] = signal[..., :, -12:] = -1024
    kind, said = _decided(signal, perfusion.ijk_to_ras)
    assert kind == "perfusion" and "a contrast first pass on the middle slice" in said, said
    assert "inf-fold" not in said, said


def test_a_map_in_gd_units_rises_from_near_zero(perfusion):
    """Gd maps sit at zero before the bolus, their noise a little below it: no shift, a first pass."""
    kind, said = _decided(perfusion.images, perfusion.ijk_to_ras)
    assert kind == "perfusion" and "rises from near zero" in said, said


@pytest.mark.parametrize("where, sd", [("whole image", 1.0), ("air only", 1.0), ("air only", 3.0)])
def test_a_gd_map_whose_noise_is_centred_on_zero_is_not_taken_as_shifted(perfusion, where, sd):
    """A map in Gd units with strong zero-centred noise (noisy air around the body, or everywhere):
    its tail dips far below zero, but its bulk (air, pre-contrast tissue) sits at zero. Measured
    from the tail's 1st percentile, its pools rose under 3-fold and it was taken as a cine
    (review 1 of session 48); only a series whose bulk lies below zero is shifted."""
    rng = np.random.default_rng(0)
    t, s, r, c = perfusion.images.shape
    rows, cols = np.mgrid[:r, :c]
    body = np.hypot(rows - r / 2, cols - c / 2) < r * 0.42
    noise = rng.normal(0, sd, perfusion.images.shape)
    images = perfusion.images + noise if where == "whole image" else np.where(body, perfusion.images, noise)
    kind, said = _decided(images, perfusion.ijk_to_ras)
    assert kind == "perfusion", said


def test_a_real_cine_stored_minus_32000_is_a_cine(tmp_path, shared_data):
    folder = shared_data / "cine-metaimage" / "ExampleSequence"
    if not folder.exists():
        pytest.skip(f"{folder} not found")
    cine = load_study(folder)
    study = load_study(_write_nifti(tmp_path / "cine.nii.gz", cine.images - 32000, cine.ijk_to_ras, np.int16))
    evidence = study.provenance["kind"]["evidence"]
    assert study.kind == "cine" and evidence and all(e["kind"] == "cine" for e in evidence), _said(study)


@pytest.mark.parametrize("example", [1, 3])
def test_a_real_z_scored_first_pass_gives_its_pools_real_rises(tmp_path, shared_data, example):
    """The real AIF-sequence series brighten 6.7-11.5-fold; z-scored they 'rose from near zero'."""
    path = shared_data / "qperf" / "aif_detection" / f"example{example}_images.npy"
    if not path.is_file():
        pytest.skip(f"{path} not found")
    frames = np.load(path).transpose(2, 0, 1)[:, None]
    with pytest.raises(CardiacInputError, match=r"read as a first-pass perfusion series: a contrast first pass on "
                                                r"the middle slice: one blood pool brightens [0-9.]+-fold, then the "
                                                r"one beside it brightens [0-9.]+-fold") as e:
        load_study(_write_nifti(tmp_path / "perf.nii.gz", _z_scored(frames), np.diag([2.0, 2.0, 8.0, 1.0])))
    assert "near zero" not in e.value.problem
