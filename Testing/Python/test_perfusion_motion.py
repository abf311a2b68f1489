"""Breathing motion in perfusion series: each frame moved back onto the mask (motion.py), against the
phantom's exact shifts and MBF, and the QPerf must-shows of issue 9 (blood-like pixels, medians)."""
import numpy as np
import pytest

from CardiacAISegLib import motion
from CardiacAISegLib.analysis import Analysis
from CardiacAISegLib.errors import CardiacInputError
from CardiacAISegLib.labels import LV, MYO
from CardiacAISegLib.phantom import make_perfusion_phantom

PIXEL_MM = (1.8, 1.8)      # the phantom's pixel size


def _segment_errors(analysis, truth):
    return np.array([abs(s["mbf_ml_min_g"] - truth["mbf_per_segment"][s["id"]]) / truth["mbf_per_segment"][s["id"]]
                     for s in analysis.perfusion["segments"]])


@pytest.fixture(scope="module")
def breathing():
    return make_perfusion_phantom(seed=0, noise=0.01, motion=True)


def test_shifts_match_the_phantoms_breathing(breathing):
    study, truth = breathing
    # the phantom moves frame n's content by (row, col) = (shift[n, 1], shift[n, 0]) from the labels' frame 0
    true = truth["motion_shift_px"][:, ::-1]
    assert np.abs(true).max() > 2.5                    # the motion is real: more than a pixel
    for k in range(study.n_slices):
        found, note = motion.estimate_shifts(study.images[:, k], study.labels[0][k], PIXEL_MM)
        assert note["registered"]
        with_contrast = np.abs(study.aif) > 0.05 * study.aif.max()    # frames before the bolus are all noise
        err = np.abs(found - true)[with_contrast]
        assert err.max() < 0.5, (k, err.max())


def test_a_still_series_is_left_exactly_as_it_was():
    study, _ = make_perfusion_phantom(seed=1, noise=0.01, motion=False)
    out, record = motion.correct(study.images, study.labels[0], PIXEL_MM)
    assert out is study.images and record["corrected_slices"] == []
    assert max(record["max_shift_px"]) < 0.1


def test_correction_brings_segment_mbf_back(breathing, monkeypatch):
    study, truth = breathing
    corrected = Analysis(study, study.labels).run()
    record = study.provenance["motion"]
    assert record["corrected_slices"] == [0, 1, 2] and len(record["shifts_px"][0]) == study.n_frames
    monkeypatch.setattr(motion, "correct", lambda images, labels, *a, **k: (images, {"corrected_slices": []}))
    study2, _ = make_perfusion_phantom(seed=0, noise=0.01, motion=True)
    uncorrected = Analysis(study2, study2.labels).run()
    on, off = _segment_errors(corrected, truth), _segment_errors(uncorrected, truth)
    # measured (seed 0): median 7.2 % vs 19.1 %. What remains is the phantom's own bilinear shifting,
    # which mixes blood into edge pixels for good: over seeds 0-3 the found shifts and the true ones
    # both give a median of 10.8 %
    assert np.median(on) < 0.6 * np.median(off), (np.median(on), np.median(off))
    assert np.median(on) < 0.12


def test_mismatched_mask_is_refused():
    with pytest.raises(CardiacInputError, match="motion"):
        motion.correct(np.zeros((10, 2, 8, 8)), np.zeros((3, 8, 8), np.uint8))


# --- QPerf must-shows ----------------------------------------------------------------------------
# Blood-like: a myocardial pixel whose enhancement at the LV pool's peak frame is at least 25 % of
# the pool's peak enhancement. Tissue is still rising then (it peaks a few seconds later): well-
# perfused stress myocardium reads 6 % (QPerf median) to ~15 % (phantom) of the pool there, while a
# pixel holding a quarter blood or more in partial volume, or blood moved in by breathing, reads
# 25 % or more.
BLOOD_LIKE_FRACTION_OF_POOL = 0.25


def blood_like_fraction(images, aif, labels):
    from CardiacAISegLib.models.perfusion_refine import enhancement_frames

    e = enhancement_frames(images, aif)
    pool = e[:, labels == LV].mean(1)
    peak = int(np.argmax(pool))
    return float((e[peak, labels == MYO] >= BLOOD_LIKE_FRACTION_OF_POOL * pool[peak]).mean())


def test_qperf_network_masks_hold_little_blood_and_medians_match_the_authors(shared_data):
    from CardiacAISegLib.pipeline import segment
    from CardiacAISegLib.readers import load_study

    authors = {"rest": 0.94, "stress": 3.25}    # medians of the QPerf authors' BTEX maps
    analyses = {}
    for series in ("rest", "stress"):
        study = load_study(shared_data / "qperf", series=series)
        labels, _ = segment(study)
        analyses[series] = a = Analysis(study, labels, rest=analyses.get("rest")).run()
        images = a._curves[0][:, 0]                  # the frames the MBF fit saw (motion-corrected)
        fraction = blood_like_fraction(images, study.aif, labels[0][0])
        assert fraction <= 0.10, (series, fraction)
        glob = a.perfusion["global_mbf_ml_min_g"]
        assert abs(glob - authors[series]) / authors[series] <= 0.10, (series, glob)
        assert study.provenance["motion"]["slices"][0]["registered"]


def test_bolus_check_keeps_the_wall_under_breathing(breathing):
    # Without motion correction the blood-likeness test sees the cavity move over the endocardial
    # wall in some frames and cuts it. The check aligns the frames at their median position (the
    # mask under test may be wrong, so it is not trusted to say where the heart is); the mask it
    # is given here is the truth moved there, as a network that sees all frames places it.
    # Measured (seed 0): wall Dice 0.92-0.93 with the alignment, 0.75-0.79 without.
    from scipy import ndimage

    from CardiacAISegLib.models.perfusion_refine import refine_slice

    study, truth = breathing
    true_shift = truth["motion_shift_px"][:, ::-1]
    with_contrast = np.abs(study.aif) > 0.05 * study.aif.max()
    median_position = np.median(true_shift[with_contrast], axis=0)
    for k in range(study.n_slices):
        labels = ndimage.shift(study.labels[0][k], np.round(median_position), order=0)
        wall = labels == MYO
        dice = {}
        for on in (True, False):
            out, report = refine_slice(study.images[:, k], study.aif, labels, motion=on, pixel_mm=PIXEL_MM)
            mine = out == MYO
            dice[on] = 2 * (mine & wall).sum() / (mine.sum() + wall.sum())
            assert (report["motion_max_shift_px"] > 1.0) == on
        assert dice[True] > 0.9 and dice[False] < dice[True] - 0.1, (k, dice)
