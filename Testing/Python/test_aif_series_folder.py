"""The dual-sequence AIF series given as a folder (`--aif FOLDER`) and the images' LV it is scaled
onto: a folder that holds the images themselves, and images whose LV blood is clipped at a
12-bit ceiling (probe 106)."""
from types import SimpleNamespace

import numpy as np
import pytest
from dicom_factory import write_aif_series, write_perfusion_series
from phantom_truth import segment_errors

from CardiacAISegLib.analysis import Analysis
from CardiacAISegLib.errors import CardiacInputError
from CardiacAISegLib.labels import LV
from CardiacAISegLib.phantoms.phantom_perfusion import make_perfusion_phantom
from CardiacAISegLib.readers import load_study

IMAGES_UID = "1.2.826.0.1.3680043.10.7"      # write_perfusion_series' default
AIF_SERIES_UID = "1.2.826.0.1.3680043.10.8"  # write_aif_series' default


@pytest.fixture(scope="module")
def phantom():
    return make_perfusion_phantom(seed=3, n_frames=60, noise=0.005)


def _signal_images(study, signal):
    """``study`` with its (T, S, R, C) Gd images replaced by stored ``signal`` values (written
    with scale 1 and baseline 0)."""
    return SimpleNamespace(images=signal, frame_times_s=study.frame_times_s, ijk_to_ras=study.ijk_to_ras)


def _global_error(analysis, truth):
    return analysis.perfusion["global_mbf_ml_min_g"] / np.median(list(truth["mbf_per_segment"].values())) - 1


def _saturating_exam(folder, study):
    """The images as a saturation-recovery read-out writes them, 100 + 1200 g0 (1 - exp(-Gd / g0))
    with g0 the LV's peak Gd (its blood 37 % below linear at the bolus peak), beside their
    linear dual-sequence AIF series."""
    g0 = float(np.max(study.images[:, study.labels[0] == LV].mean(1)))
    signal = 100.0 + 1200.0 * g0 * -np.expm1(-np.maximum(study.images, 0) / g0)
    write_perfusion_series(folder, _signal_images(study, signal), vendor="siemens", scale=1.0, baseline=0.0,
                           description="Perfusion_stress")
    write_aif_series(folder, study)


def test_the_exam_folder_given_as_the_aif_folder_reads_its_aif_series(tmp_path, phantom):
    """`--aif EXAM` where EXAM holds the perfusion images beside their dual-sequence AIF series
    (the input folder itself): the AIF's reader took the images as "the AIF series", their own
    saturated LV scaled by 1 (MBF +10 % with the LV 19 % below linear at the peak, +61 % with
    more saturation; the AIF_FROM_LV review flag gone). It now reads the AIF series there, as
    the same folder read without --aif does."""
    study, truth = phantom
    exam = tmp_path / "exam"
    _saturating_exam(exam, study)
    found_beside = load_study(exam)
    given = load_study(exam, aif=exam)
    assert given.provenance["aif_detection"]["series"] == AIF_SERIES_UID
    assert any(f"AIF from the dual-sequence AIF series {AIF_SERIES_UID}, scaled" in w for w in given.provenance["warnings"])
    np.testing.assert_allclose(given.aif, found_beside.aif, rtol=1e-6)
    a = Analysis(given, study.labels).run()
    assert abs(_global_error(a, truth)) < 0.08


def test_the_input_folder_given_as_its_own_aif_folder_is_refused(tmp_path, phantom):
    """The images alone (a GE exam: no AIF series) and `--aif` given the input folder itself: the
    images were read as their own "dual-sequence AIF series", scaled by 1, and the AIF_FROM_LV
    review flag that says the LV's saturation biases MBF was gone. Refused, naming the folder and
    what to give instead."""
    study, _ = phantom
    folder = tmp_path / "ge"
    write_perfusion_series(folder, study, vendor="ge", description="FGRE PERF")
    with pytest.raises(CardiacInputError, match=rf"given with --aif, it holds the images themselves \(series {IMAGES_UID}, "
                                                r"'FGRE PERF'\) and no dual-sequence AIF series that pairs with them: give "
                                                r"the AIF series' folder, or leave --aif out") as e:
        load_study(folder, aif=folder)
    assert str(folder) in str(e.value)


def _clipped_exam(folder, study, clip_at, ceiling=4095.0):
    """Linear images whose LV bolus peak lies at ``ceiling / clip_at`` (None: the gain of 0.7,
    unclipped), stored cut at a 12-bit ``ceiling``, beside their (unclipped) AIF series."""
    lv = study.labels[0] == LV
    lv_peak = 100.0 + 1200.0 * float(np.max(study.images[:, lv].mean(1)))
    gain = ceiling / (clip_at or 0.7) / lv_peak
    signal = gain * (100.0 + 1200.0 * np.maximum(study.images, 0))
    if clip_at:
        signal = np.minimum(signal, ceiling)
    write_perfusion_series(folder, _signal_images(study, signal), vendor="siemens", scale=1.0, baseline=0.0,
                           description="Perfusion_stress")
    write_aif_series(folder, study)
    return gain


@pytest.fixture(scope="module")
def unclipped(phantom, tmp_path_factory):
    """(the AIF series' scale onto the images per unit of the images' gain, the global MBF error)
    of the unclipped images."""
    study, truth = phantom
    folder = tmp_path_factory.mktemp("unclipped")
    gain = _clipped_exam(folder, study, None)
    s = load_study(folder)
    assert "main_lv_clipped_frames" not in s.provenance["aif_detection"]
    assert not any("clipped" in w for w in s.provenance["warnings"])
    return s.provenance["aif_detection"]["scale_to_main"] / gain, _global_error(Analysis(s, study.labels).run(), truth)


@pytest.mark.parametrize("clip_at", [0.7, 0.9])
def test_lv_clipped_at_a_ceiling_is_left_out_of_the_aif_series_scale(tmp_path, phantom, unclipped, clip_at):
    """The images' LV blood cut at a 12-bit ceiling over the bolus peak (a 12-bit store, an
    export's window) beside an unclipped AIF series: the saturation curve the AIF series is
    scaled by was fitted to the hard plateau, the AIF scaled by 1.8 for 1.49 and the clip called
    "38 % below linear": MBF 18 % low (up to 29 %) at 0.7 of the peak, 13 % at 0.8 (probe 106).
    The clipped frames are now left out of the scaling, and the warning says so."""
    study, truth = phantom
    gain = _clipped_exam(tmp_path / "d", study, clip_at)
    s = load_study(tmp_path / "d")
    detection = s.provenance["aif_detection"]
    scale_per_gain, unclipped_error = unclipped
    assert detection["scale_to_main"] / gain == pytest.approx(scale_per_gain, rel=0.03)
    assert detection["main_lv_clip_level"] == 4095.0 and len(detection["main_lv_clipped_frames"]) >= 2
    assert any("the images' LV signal is clipped at 4095" in w and "those frames were left out of the scaling" in w
               for w in s.provenance["warnings"])
    if clip_at == 0.7:
        a = Analysis(s, study.labels).run()
        assert _global_error(a, truth) == pytest.approx(unclipped_error, abs=0.04)


def test_clipped_frames_of_the_lv_curve():
    """A rounded bolus peak, or one frame at the series' highest value, is no clip; a plateau
    (AIF_CLIPPED's rule) or two frames at the series' ceiling are."""
    from CardiacAISegLib.readers.aif_series import lv_clipped_frames

    times = np.arange(40) * 0.7
    bolus = 100.0 + 3000.0 * np.exp(-0.5 * ((times - 10.0) / 2.0) ** 2)
    assert not lv_clipped_frames(bolus, times, ceiling=float(bolus.max())).any()      # its peak alone is the maximum
    assert not lv_clipped_frames(bolus, times, ceiling=5000.0).any()
    cut = np.minimum(bolus, 2500.0)
    np.testing.assert_array_equal(np.flatnonzero(lv_clipped_frames(cut, times, ceiling=2500.0)), np.flatnonzero(bolus >= 2500))
    # flat below the series' highest value (a saturated receiver; the RV brighter): the plateau rule
    np.testing.assert_array_equal(np.flatnonzero(lv_clipped_frames(cut, times, ceiling=4095.0)), np.flatnonzero(bolus >= 2500))
    two = np.minimum(bolus, np.sort(bolus)[-2])   # two frames at the ceiling, under AIF_CLIPPED's three
    assert lv_clipped_frames(two, times, ceiling=float(two.max())).sum() == 2
    assert not lv_clipped_frames(two, times, ceiling=4095.0).any()
