"""ED and ES taken as the largest and smallest LV of a few labelled frames of a whole cine (the
M&Ms layout: a 4D label map with ED and ES labelled, the other frames 0) are checked against the
images' own blood-pool curve (``cine.blood_pool_curve``), as ED/ES fixed by Info.cfg are.

Probe 107 (D2): ES labelled on a diastolic frame (11 of 20) gave EF 15.6 % for 56.7 % with QC
pass and nothing said, while the images' pool was smallest at frame 8 and put the labelled ES at
77 % of its range. The right frames, an ES one frame off, a whole labelled cycle, a study whose
ED/ES a file fixes (ACDC, Sunnybrook's contours) say nothing new."""
import json
from copy import copy

import numpy as np
import pytest

from CardiacAISegLib import cli
from CardiacAISegLib.analysis import Analysis
from CardiacAISegLib.phantoms.phantom_cine import make_cine_phantom

OFF = "not where the images put"          # the warning for labelled frames the images doubt
GIVEN_OFF = "may not be ED and ES"         # the one for frames a file (Info.cfg) fixed


@pytest.fixture(scope="module")
def cine():
    """The probe's phantom: 20 frames, ED frame 0, ES frame 7 (counted from 0), EF 56.7 %."""
    study, truth = make_cine_phantom(seed=3, n_frames=20, n_slices=10, size=96, pixel_mm=1.6, slice_mm=8.0)
    assert (truth["ed_frame"], truth["es_frame"]) == (0, 7)
    return study, truth


def _labelled(study, frames, **changes):
    """The study measured with only ``frames`` labelled (ED/ES not fixed unless ``changes`` say so)."""
    st = copy(study)
    st.provenance = dict(study.provenance)
    for key, value in changes.items():
        setattr(st, key, value)
    return Analysis(st, {t: study.labels[t] for t in frames}).run()


def _said(analysis, words=OFF):
    return [w for w in analysis.warnings if words in w]


def test_es_labelled_on_a_diastolic_frame_is_said_with_the_frames(cine):
    study, truth = cine
    a = _labelled(study, (0, 10))
    assert a.cine["es_frame"] == 10 and a.cine["lv_ef_pct"] < 20      # the number is still the labels'
    check = a.cine["ed_es_check"]
    assert check["disagree"] and check["smallest"] == truth["es_frame"] and check["es_position"] > 0.7
    said = _said(a)
    assert len(said) == 1, a.warnings
    assert said[0].startswith("the labelled ES (frame 11) is not where the images put it")
    assert "2 labelled frames (1, 11) of this 20-frame cine" in said[0]
    assert "largest and smallest at frames 1 and 8" in said[0] and "77 %" in said[0]
    assert not _said(a, GIVEN_OFF)   # not worded as a file's ED/ES


def test_ed_labelled_on_a_systolic_frame_is_named(cine):
    """Two systolic frames labelled: the larger of them taken as ED is the one the images doubt."""
    study, _ = cine
    a = _labelled(study, (4, 7))
    assert a.cine["ed_frame"] == 4
    said = _said(a)
    assert len(said) == 1 and said[0].startswith("the labelled ED (frame 5) is not where the images put it"), a.warnings


def test_m_and_ms_4d_label_map_with_a_diastolic_es_warns_end_to_end(cine, tmp_path):
    """The probe's layout through the CLI: a 4D NIfTI cine and a 4D map of the same 20 frames with
    every frame but ED and the labelled ES 0 (M&Ms); results.json carries the warning."""
    import nibabel as nib

    from CardiacAISegLib.labels import to_convention

    study, _ = cine

    def save(path, tsrc, dtype):
        data = np.asarray(tsrc).transpose(3, 2, 1, 0).astype(dtype)   # (T, S, R, C) -> (x, y, z, t)
        image = nib.Nifti1Image(data, study.ijk_to_ras, dtype=data.dtype)
        image.header.set_xyzt_units("mm", "sec")
        zooms = list(image.header.get_zooms())
        zooms[3] = 0.045
        image.header.set_zooms(zooms)
        nib.save(image, str(path))
        return path

    labels = np.stack([to_convention(study.labels[t], "acdc") if t in (0, 10) else np.zeros_like(study.labels[t])
                       for t in range(study.n_frames)])
    images = save(tmp_path / "cine.nii.gz", study.images * 1000, np.float32)
    label_file = save(tmp_path / "labels.nii.gz", labels, np.uint8)
    assert cli.main(["analyze", str(images), "--labels", str(label_file), "--out", str(tmp_path / "out"), "--quiet"]) == 0
    doc = json.loads((tmp_path / "out" / "results.json").read_text())
    assert (doc["cine"]["ed_frame"], doc["cine"]["es_frame"]) == (0, 10)
    said = [w for w in doc["warnings"] if w.startswith("the labelled ES (frame 11) is not where the images put it")]
    assert said and doc["cine"]["ed_es_check"]["disagree"], doc["warnings"]


@pytest.mark.parametrize("es", [6, 7, 8], ids=["es_one_early", "true_es", "es_one_late"])
def test_true_es_or_one_frame_off_says_nothing(cine, es):
    """The right ES and a frame either side (on this phantom's sharp ES, 4 % and 31 % of the range)."""
    study, truth = cine
    a = _labelled(study, (0, es))
    check = a.cine["ed_es_check"]
    assert check is not None and not check["disagree"] and check["es_position"] < 0.5   # the lower half of the range
    assert not _said(a) and not _said(a, GIVEN_OFF), a.warnings
    if es == truth["es_frame"]:
        assert a.cine["lv_ef_pct"] == pytest.approx(100 * (1 - truth["voxel_lv_ml"][es] / truth["voxel_lv_ml"][0]))


def test_a_few_frames_labelled_around_the_cycle_say_nothing(cine):
    """Every fourth frame labelled: ED and ES the labelled frames nearest the cycle's (frames 1, 9)."""
    study, _ = cine
    a = _labelled(study, range(0, study.n_frames, 4))
    assert (a.cine["ed_frame"], a.cine["es_frame"]) == (0, 8)
    assert not a.cine["ed_es_check"]["disagree"] and not _said(a), a.warnings


def test_a_whole_labelled_cycle_is_not_checked_against_the_images(cine):
    study, _ = cine
    a = _labelled(study, range(study.n_frames))
    assert a.cine["ed_es_check"] is None and a.warnings == [] and a.qc["status"] == "pass"


def test_ed_es_a_file_fixes_keep_their_own_warning(cine):
    """Info.cfg naming a diastolic ES (the earlier path): its wording, not the labelled frames'."""
    study, _ = cine
    a = _labelled(study, (0, 10), ed_frame=0, es_frame=10)
    assert len(_said(a, GIVEN_OFF)) == 1 and not _said(a), a.warnings
    assert _said(a, GIVEN_OFF)[0].endswith("check the ED/ES frames (Info.cfg)")


def test_real_cine_sunnybrook_contours_as_labelled_frames(shared_data):
    """Sunnybrook SC-HF-I-1 (a failing heart, EF 26 %) with its experts' contours, ED/ES not taken
    from them: the experts' frames say nothing (98 % and 1 % of the pool's range); their ES
    contours moved to a diastolic frame are doubted on the real images."""
    from CardiacAISegLib.readers import load_study

    study = load_study(shared_data / "sunnybrook" / "SC-HF-I-1_dicom",
                       labels=shared_data / "sunnybrook" / "SC-HF-I-1_contours")
    ed, es = study.ed_frame, study.es_frame
    assert (ed, es) == (18, 7)
    experts = Analysis(study, dict(study.labels)).run()
    assert not _said(experts) and not _said(experts, GIVEN_OFF), experts.warnings
    unfixed = copy(study)
    unfixed.provenance = {k: v for k, v in study.provenance.items() if k != "ed_es_from"}
    unfixed.ed_frame = unfixed.es_frame = None
    right = Analysis(unfixed, dict(study.labels)).run()
    assert (right.cine["ed_frame"], right.cine["es_frame"]) == (ed, es)
    assert right.cine["lv_ef_pct"] == pytest.approx(experts.cine["lv_ef_pct"])
    assert not _said(right), right.warnings
    diastole = 15   # frame 16 of 20, in diastasis
    wrong = Analysis(unfixed, {ed: study.labels[ed], diastole: study.labels[es]}).run()
    said = _said(wrong)
    assert len(said) == 1 and said[0].startswith(f"the labelled ES (frame {diastole + 1}) is not where"), wrong.warnings


def test_acdc_ed_and_es_only_is_unchanged(shared_data):
    """ACDC (Info.cfg, ED and ES frames only): too few frames for a cycle, nothing to check."""
    from CardiacAISegLib.readers import load_study

    study = load_study(shared_data / "acdc" / "patient001")   # its _gt maps come with it
    assert (study.n_frames, sorted(study.labels)) == (2, [0, 1])
    a = Analysis(study, study.labels).run()
    assert a.cine["ed_es_check"] is None and not _said(a) and not _said(a, GIVEN_OFF)
    assert a.cine["lv_ef_pct"] == pytest.approx(23.65, abs=0.01)


def test_ed_es_kept_by_an_edit_or_one_given_frame_are_not_said_as_taken_from_the_labels(cine):
    """ED/ES an edit kept (``kept_ed_es``), or an ES the study gives beside an ED the labels
    decide, on a diastolic frame: doubted by the images, but not "taken as the largest and
    smallest LV of the labelled frames", which they were not (review 1 of session 48)."""
    from CardiacAISegLib.cine import cine_measures

    study, _ = cine
    labels = {t: study.labels[t] for t in (0, 10)}
    kept = cine_measures(study, labels, kept_ed_es=(0, 10))
    said = [w for w in kept["warnings"] if GIVEN_OFF in w]
    assert len(said) == 1 and "frames kept at the frames shown when the segmentation was first edited (1, 11" in said[0]
    assert not [w for w in kept["warnings"] if OFF in w]
    st = copy(study)
    st.provenance, st.ed_frame, st.es_frame = dict(study.provenance), None, 10
    one = Analysis(st, labels).run()
    said = _said(one, GIVEN_OFF)
    assert len(said) == 1 and said[0].startswith("the ED and ES frames used (1, 11"), one.warnings
    assert not _said(one)
