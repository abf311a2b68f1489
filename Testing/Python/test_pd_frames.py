"""Proton-density reference images at the start of a perfusion series (readers/pd_frames.py):
left out of the images, the times and the baseline as scanners write them, with a warning; never
taken from a series that has none."""
import json

import numpy as np
import pytest
from dicom_factory import write_aif_series, write_perfusion_series
from phantom_truth import segment_errors

from CardiacAISegLib import cli
from CardiacAISegLib.analysis import Analysis
from CardiacAISegLib.phantoms.phantom_perfusion import make_perfusion_phantom
from CardiacAISegLib.readers import load_study
from CardiacAISegLib.readers.pd_frames import MAX_PD_FRAMES, leading_pd_frames
from CardiacAISegLib.study import Study

AIF_EXAMPLES = "qperf/aif_detection"


@pytest.fixture(scope="module")
def phantom():
    return make_perfusion_phantom(seed=3, n_frames=60, noise=0.005)


def _signal(study, baseline=100.0, scale=400.0):
    return (baseline + scale * np.maximum(study.images, 0)).astype(np.float32)


@pytest.mark.parametrize("vendor", ["siemens", "ge", "philips"])
def test_pd_frames_are_left_out_and_mbf_matches_truth(tmp_path, phantom, vendor):
    study, truth = phantom
    times, _ = write_perfusion_series(tmp_path / vendor, study, vendor=vendor, pd_frames=3)
    s = load_study(tmp_path / vendor)
    assert s.kind == "perfusion" and s.images.shape == study.images.shape   # the 60 dynamics
    np.testing.assert_allclose(s.frame_times_s, times, atol=1e-3)
    assert s.provenance["pd_frames"]["dropped"] == 3
    warning = next(w for w in s.provenance["warnings"] if "proton-density" in w)
    # 5.0x: the factory writes them at 5x the pre-contrast signal (4.6x when the level took in the bolus)
    assert "frames 1-3" in warning and "FlipAngle 5°" in warning and "5.0x" in warning
    # the first dynamic is the first image kept: the factory's pre-contrast signal
    lv = study.labels[0][1] == 1
    assert abs(s.images[0, 1][lv].mean() - 100) < 5
    a = Analysis(s, study.labels).run()
    assert np.max(np.abs(segment_errors(a, truth))) < 0.06
    # nothing to review but the AIF taken from the LV's signal (no AIF series was written)
    assert {f["code"] for f in a.qc["flags"] if f["severity"] == "review"} == {"AIF_FROM_LV"}, a.qc


def test_without_the_fix_pd_frames_would_spoil_the_fit(phantom):
    """The failure the module prevents: the same images with 3 PD frames kept give every pixel a
    poor fit (QC review) and a global MBF 20 % off; checked on the arrays directly."""
    from copy import copy

    study, truth = phantom
    signal = _signal(study)
    kept = copy(study)
    kept.images = np.concatenate([np.repeat(5 * signal[:1], 3, axis=0), signal])
    kept.frame_times_s = np.arange(kept.images.shape[0]) * 0.5
    kept.aif = np.r_[np.full(3, 5 * study.aif[0]), study.aif]
    kept.units, kept.provenance = "signal", {}
    a = Analysis(kept, study.labels).run()
    assert a.qc["status"] == "review"
    truth_global = np.median(list(truth["mbf_per_segment"].values()))
    assert abs(a.perfusion["global_mbf_ml_min_g"] - truth_global) > 0.1 * truth_global
    assert leading_pd_frames(kept.images)[0] == 3


def test_no_frames_dropped_from_series_without_pd(phantom, shared_data):
    study, _ = phantom
    assert leading_pd_frames(_signal(study)) == (0, "")
    # a tight crop around the enhancing heart: later frames brighter, the start darker, no PD
    crop = _signal(study)[:, :, 30:66, 30:66]
    assert leading_pd_frames(crop)[0] == 0
    # real dual-sequence AIF series (signal intensity) have none
    for i in (1, 2, 3):
        images = np.load(shared_data / AIF_EXAMPLES / f"example{i}_images.npy").transpose(2, 0, 1)
        assert leading_pd_frames(images) == (0, ""), i


def test_flip_angle_alone_marks_the_frames_and_at_most_five():
    rng = np.random.default_rng(1)
    images = 100 + rng.normal(0, 2, (40, 1, 16, 16))
    flips = np.r_[np.full(2, 8.0), np.full(38, 12.0)]
    n, reason = leading_pd_frames(images, flips)
    assert n == 2 and reason == "FlipAngle 8° against the dynamics' 12°"
    # flip angles that vary along the series say nothing
    assert leading_pd_frames(images, np.r_[8.0, 8.0, rng.uniform(10, 14, 38)])[0] == 0
    bright = images.copy()
    bright[:8] *= 5   # eight bright leading frames are no reference images a protocol writes:
    assert leading_pd_frames(bright)[0] == 0   # no run of at most MAX_PD_FRAMES drops to the baseline
    bright[:8] /= 5
    bright[:3] *= 5
    assert leading_pd_frames(bright)[0] == 3 <= MAX_PD_FRAMES
    assert leading_pd_frames(images[:10])[0] == 0   # too short to leave a series


@pytest.mark.parametrize("factor", [1.4, 1.6])
def test_reference_frames_at_the_dynamics_flip_angle_and_a_fraction_brighter_are_left_out(tmp_path, phantom, factor):
    """Two leading reference images only 1.4-1.6x the pre-contrast signal, written with the
    dynamics' own FlipAngle (GE): the level they were compared with took in the bolus, so they
    stayed in and MBF read 12-21 % high with QC pass (probe 44). Now left out: every segment's
    MBF within 6 % of truth (the AIF from the LV, as without the reference images)."""
    import pydicom

    study, truth = phantom
    _, paths = write_perfusion_series(tmp_path, study, vendor="ge", pd_frames=2, pd_factor=factor)
    flip = pydicom.dcmread(paths[-1], stop_before_pixels=True).FlipAngle
    for p in paths:
        ds = pydicom.dcmread(p)
        ds.FlipAngle = flip
        ds.save_as(p)
    s = load_study(tmp_path)
    assert s.provenance["pd_frames"]["dropped"] == 2 and s.images.shape == study.images.shape
    assert "FlipAngle" not in s.provenance["pd_frames"]["reason"]
    a = Analysis(s, study.labels).run()
    assert np.max(np.abs(segment_errors(a, truth))) < 0.06
    # a start 1.2x brighter is within what the rule leaves (MBF +2 % in probe 44)
    signal = _signal(study)
    assert leading_pd_frames(np.concatenate([1.2 * signal[:2], signal]))[0] == 0


def test_reference_frames_on_a_tight_crop_are_told_from_a_series_that_starts_at_the_bolus(phantom):
    """On a crop around the heart the bolus lifts the whole field: against the later frames'
    median, reference frames 1.5x the baseline with the bolus two frames after them stayed in
    (MBF +284 %), and against a low percentile a crop starting two frames before the AIF's
    peak lost five of its bolus frames as reference images (probes 44, 45). A run counts when it
    drops at once to the series' low end."""
    study, _ = phantom
    signal = _signal(study)[:, :, 30:66, 30:66]
    foot = int(np.argmax(study.aif > 0.1 * study.aif.max()))
    peak = int(np.argmax(study.aif))
    early = signal[foot - 2:]
    assert leading_pd_frames(np.concatenate([1.5 * early[:1], 1.5 * early[:1], early]))[0] == 2
    assert leading_pd_frames(early)[0] == 0
    assert leading_pd_frames(signal[peak - 2:])[0] == 0


def test_a_given_aif_of_the_whole_series_is_trimmed_too(tmp_path, phantom):
    study, truth = phantom
    write_perfusion_series(tmp_path / "s", study, vendor="siemens", pd_frames=2)
    aif = np.r_[np.full(2, 5 * (100 + 400 * study.aif[0])), 100 + 400 * study.aif]
    np.savetxt(tmp_path / "aif.txt", aif)
    s = load_study(tmp_path / "s", aif=tmp_path / "aif.txt")
    assert s.n_frames == study.n_frames and len(s.aif) == study.n_frames
    np.testing.assert_allclose(s.aif, 100 + 400 * study.aif, rtol=1e-6)


def test_dual_sequence_series_both_with_pd_frames(tmp_path, phantom):
    study, truth = phantom
    write_perfusion_series(tmp_path / "d", study, vendor="siemens", pd_frames=3)
    write_aif_series(tmp_path / "d", study, pd_frames=3)
    s = load_study(tmp_path / "d")
    assert "dual-sequence" in s.provenance["aif_source"] and s.n_frames == study.n_frames
    assert sum("left out as proton-density" in w for w in s.provenance["warnings"]) == 2   # main and AIF series
    # the series is named (a folder may hold stress and rest): probe 33 read only the folder's name
    assert any(w.startswith("frames 1-3 of series #1 'Perfusion_stress' in d left out") for w in s.provenance["warnings"])
    a = Analysis(s, study.labels).run()
    assert np.max(np.abs(segment_errors(a, truth))) < 0.08


def test_cli_end_to_end_with_pd_frames_and_no_aif(tmp_path, phantom):
    study, truth = phantom
    write_perfusion_series(tmp_path / "ge", study, vendor="ge", pd_frames=2)
    out = tmp_path / "out"
    assert cli.main(["analyze", str(tmp_path / "ge"), "--out", str(out), "--quiet"]) == 0
    doc = json.loads((out / "results.json").read_text())
    assert any("proton-density" in w for w in doc["warnings"])
    glob = doc["perfusion"]["global_mbf_ml_min_g"]
    assert abs(glob - np.median(list(truth["mbf_per_segment"].values()))) < 0.1 * glob
    assert "MBF_FIT_POOR" not in {f["code"] for f in doc["qc"]["flags"]}


def test_logic_shows_the_series_it_analyses(tmp_path, phantom):
    """A Slicer sequence with the PD frames: the Logic adds the dynamics it analyses as the input."""
    from CardiacAISegLib import scene as sc
    from CardiacAISegLib.logic import CardiacAISegLogic

    study, _ = phantom
    written = Study(images=np.concatenate([np.repeat(5 * _signal(study)[:1], 3, axis=0), _signal(study)]),
                    ijk_to_ras=study.ijk_to_ras, kind="perfusion", frame_times_s=np.arange(study.n_frames + 3) * 0.5)
    logic = CardiacAISegLogic(sc.new_scene())
    nodes = sc.add_study(logic.context, written)
    logic.setParameter("kind", "perfusion")
    s = logic.studyFromNode(nodes.sequence)
    assert s.n_frames == study.n_frames and s.provenance["pd_frames"]["dropped"] == 3
    shown = logic.getNodeParameter("inputNodeID")
    assert shown is not nodes.sequence and shown.GetNumberOfDataNodes() == study.n_frames


def test_logic_shows_a_rescaled_dynamic_scaled_back(phantom):
    """A Slicer sequence with one dynamic 1.3x as a whole: the input the Logic shows is the
    series it analyses, that frame scaled back, so a value probed on it is the curve's."""
    from CardiacAISegLib import scene as sc
    from CardiacAISegLib.logic import CardiacAISegLogic

    study, _ = phantom
    images = _signal(study)
    images[8] *= 1.3
    written = Study(images=images, ijk_to_ras=study.ijk_to_ras, kind="perfusion", frame_times_s=study.frame_times_s)
    logic = CardiacAISegLogic(sc.new_scene())
    nodes = sc.add_study(logic.context, written)
    logic.setParameter("kind", "perfusion")
    s = logic.studyFromNode(nodes.sequence)
    assert list(s.provenance["rescaled_frames"]) == ["8"]
    import slicer.util

    shown = logic.getNodeParameter("inputNodeID")
    assert shown is not nodes.sequence and shown.GetNumberOfDataNodes() == study.n_frames
    np.testing.assert_allclose(slicer.util.arrayFromVolume(shown.GetNthDataNode(8)), _signal(study)[8], rtol=1e-3)


def test_blank_dynamics_are_found_but_a_noise_only_gd_baseline_is_not_blank():
    from CardiacAISegLib.readers.pd_frames import blank_frames

    rng = np.random.default_rng(0)
    t = np.arange(40)
    bolus = np.clip(t - 10, 0, None) * np.exp(-np.clip(t - 10, 0, None) / 6.0)   # Gd: zero before frame 10
    images = bolus[:, None, None, None] * np.ones((40, 3, 32, 32)) + np.abs(rng.normal(0, 0.05, (40, 3, 32, 32)))
    blank, on = blank_frames(images)
    assert not blank.any(), "pre-contrast Gd frames are noise, not dropped dynamics"
    assert not blank_frames(bolus[:, None, None, None] * np.ones((40, 3, 32, 32)))[0].any(), \
        "a noise-free Gd baseline (exactly zero until the bolus) is no lost dynamic either"
    images[17] = 0.0            # lost on every slice
    images[25, 1] = 0.0         # lost on the middle slice only
    blank, on = blank_frames(images)
    assert list(np.flatnonzero(blank)) == [17, 25]
    assert on == {17: [0, 1, 2], 25: [1]}


def test_the_last_frames_before_a_steep_gd_bolus_are_not_blank():
    from CardiacAISegLib.readers.pd_frames import blank_frames

    rng = np.random.default_rng(1)
    curve = np.r_[np.zeros(8), np.full(32, 3.0)]      # noise-only baseline, then a sudden rise 300x the noise
    images = curve[:, None, None, None] + np.abs(rng.normal(0, 0.01, (40, 3, 32, 32)))
    assert not blank_frames(images)[0].any()
    images[20:22] = 0.0                                 # two dynamics lost in a row
    assert list(np.flatnonzero(blank_frames(images)[0])) == [20, 21]


def test_a_series_stored_with_a_negative_offset_has_no_blank_frames():
    """Full images whose values lie below zero (a baseline subtracted, an offset) are not lost
    dynamics: only a flat image is (the first criterion, a low 99th percentile, refused such a
    series as '7 of 30 frames blank')."""
    from CardiacAISegLib.readers.pd_frames import blank_frames

    rng = np.random.default_rng(2)
    t = np.arange(30)
    bolus = np.clip(t - 8, 0, None) * np.exp(-np.clip(t - 8, 0, None) / 5.0)
    anatomy = rng.random((3, 32, 32))
    images = anatomy[None] * (1 + bolus[:, None, None, None]) - 1.0 + rng.normal(0, 0.01, (30, 3, 32, 32))
    assert not blank_frames(images)[0].any()
    images[15] = -1.0                 # a lost dynamic written as the offset alone
    assert list(np.flatnonzero(blank_frames(images)[0])) == [15]


@pytest.mark.parametrize("frame", [2, 8, 15])   # on the baseline, the AIF's upslope, the tissue's peak
def test_a_dynamic_rescaled_as_a_whole_is_scaled_back(tmp_path, phantom, frame):
    """One dynamic whose every pixel is 1.3x (a receiver scale or surface-coil intensity
    correction that changed for that image): read as enhancement, it gave MBF 7 % high on the
    upslope and a QC flag blaming the AIF's timing. It is divided back, named in a warning,
    and MBF matches the truth."""
    import pydicom

    study, truth = phantom
    _, paths = write_perfusion_series(tmp_path / "s", study, vendor="siemens")
    for p in paths:
        ds = pydicom.dcmread(p)
        if (int(ds.InstanceNumber) - 1) % study.n_frames == frame:
            ds.PixelData = np.rint(ds.pixel_array * 1.3).astype(np.uint16).tobytes()
            ds.save_as(p)
    s = load_study(tmp_path / "s")
    assert s.provenance["rescaled_frames"] == {str(frame): pytest.approx(1.3, abs=0.01)}
    assert any(f"frame {frame + 1} (x1.30)" in w and "scaled back" in w for w in s.provenance["warnings"])
    a = Analysis(s, study.labels).run()
    assert np.max(np.abs(segment_errors(a, truth))) < 0.08
    assert "AIF_LATE" not in {f["code"] for f in a.qc["flags"]}


def test_real_series_have_no_rescaled_frames(shared_data):
    """The three real dual-sequence AIF series (noisy, low resolution) and the phantoms: nothing
    taken for a rescale; one real frame made 1.3x is found."""
    from CardiacAISegLib.readers.pd_frames import rescaled_frames

    folder = shared_data / "qperf" / "aif_detection"
    if not folder.is_dir():
        pytest.skip(f"{folder} not found")
    for n in (1, 2, 3):
        images = np.moveaxis(np.load(folder / f"example{n}_images.npy"), 2, 0)[:, None].astype(float)
        assert np.all(rescaled_frames(images) == 1.0), n
        images[20] *= 1.3
        assert np.flatnonzero(rescaled_frames(images) != 1.0).tolist() == [20], n
    for seed in range(3):
        study, _ = make_perfusion_phantom(seed=seed, n_frames=60)
        assert np.all(rescaled_frames(100 + 400 * np.maximum(study.images, 0)) == 1.0)


def test_dynamics_lost_at_the_end_of_a_series_are_left_out(tmp_path):
    """The last 5 dynamics of a series exported blank (zeros): with nothing after them to compare
    with, they were kept, and the LV pool's AIF fell to zero with them: MBF 40 % low, flagged
    only as the approximate AIF every series without one has (1.67 for 2.76 on the CLI's
    phantom). Now a run of blank frames to the series' end is left out as a lost dynamic is; the
    tail of a bolus that has all but washed out is not blank."""
    import nibabel as nib

    from CardiacAISegLib.phantoms.phantom import write_phantom
    from CardiacAISegLib.pipeline import compute_analysis
    from CardiacAISegLib.readers.pd_frames import blank_frames

    t = np.arange(40)
    bolus = np.clip(t - 8, 0, None) * np.exp(-np.clip(t - 8, 0, None) / 4.0)   # down to 0.03 of its peak by the end
    images = 100.0 + 50 * bolus[:, None, None, None] * np.ones((40, 2, 32, 32))
    images[:, :, :8] = 0.0   # background rows
    images += np.abs(np.random.default_rng(3).normal(0, 1.0, images.shape))
    assert not blank_frames(images)[0].any()
    images[-4:] = 0.0
    images[-6:, 1] = 0.0   # the second slice lost two more
    blank, on = blank_frames(images)
    assert list(np.flatnonzero(blank)) == list(range(34, 40)) and on[34] == [1] and on[39] == [0, 1]

    write_phantom("perfusion", tmp_path / "p", seed=3)
    source = nib.load(str(tmp_path / "p" / "perfusion.nii.gz"))
    data = np.asarray(source.dataobj).astype(np.float32)
    data[..., -5:] = 0.0
    nib.save(nib.Nifti1Image(data, source.affine, source.header), str(tmp_path / "lost_tail.nii.gz"))
    intact = compute_analysis(load_study(tmp_path / "p" / "perfusion.nii.gz"))
    study = load_study(tmp_path / "lost_tail.nii.gz")
    assert study.n_frames == data.shape[-1] - 5
    assert any("left out: blank on every slice" in w for w in study.provenance["warnings"])
    lost = compute_analysis(study)
    assert lost.perfusion["global_mbf_ml_min_g"] == pytest.approx(intact.perfusion["global_mbf_ml_min_g"], rel=0.03)


@pytest.mark.parametrize("first, factor", [(14, 1.25), (30, 1.25), (40, 0.8)])
def test_a_scale_that_changes_part_way_through_a_series_is_undone_and_flagged(tmp_path, first, factor):
    """Every dynamic from one on written with another RescaleSlope (a gain changed part-way, a
    series joined from two exports): no frame differs from its neighbours, so the single-frame
    check passed it, and the step read as contrast: the phantom's MBF -4.5, -22 and -28 % with
    only AIF_FROM_LV said (probe 52's "scale inside the window"). The step is found in the
    body's signal, scaled back (MBF within 8 % of the intact series') and said as
    FRAMES_SCALE_STEP, since the factor is an estimate."""
    import pydicom

    study, _ = make_perfusion_phantom(seed=3, n_frames=60, noise=0.005)
    for name in ("intact", "step"):
        _, paths = write_perfusion_series(tmp_path / name, study, vendor="siemens")
        by_slice = {}
        for path in paths:
            ds = pydicom.dcmread(path)
            by_slice.setdefault(round(float(ds.ImagePositionPatient[2]), 1), []).append((float(ds.AcquisitionTime), path, ds))
        for items in by_slice.values():
            for frame, (_, path, ds) in enumerate(sorted(items, key=lambda item: item[0])):
                if name == "step" and frame >= first:
                    ds.RescaleSlope = factor
                    ds.save_as(path)
    intact = Analysis(load_study(tmp_path / "intact"), study.labels).run()
    stepped = load_study(tmp_path / "step")
    assert stepped.provenance["scale_steps"][0]["frames"] == [first, study.n_frames - 1]
    assert stepped.provenance["scale_steps"][0]["factor"] == pytest.approx(factor, rel=0.015)
    a = Analysis(stepped, study.labels).run()
    assert "FRAMES_SCALE_STEP" in {f["code"] for f in a.qc["flags"]}
    assert "FRAMES_SCALE_STEP" not in {f["code"] for f in intact.qc["flags"]}
    assert a.perfusion["global_mbf_ml_min_g"] == pytest.approx(intact.perfusion["global_mbf_ml_min_g"], rel=0.08)


@pytest.mark.parametrize("at_end", [False, True])
def test_reference_images_at_another_matrix_are_left_out_not_refused(tmp_path, phantom, at_end):
    """PD reference images acquired at a coarser matrix than the dynamics (half the rows and
    columns, twice the pixel size, FlipAngle 5°): the series was refused as one that "mixes pixel
    sizes", unnamed as what they are (probe 97 F6). Now they are left out with a warning naming
    them, and the dynamics are analysed."""
    import pydicom

    study, truth = phantom
    _, paths = write_perfusion_series(tmp_path, study, vendor="siemens", pd_frames=2, pd_at_end=at_end)
    pd = [p for p in paths if float(pydicom.dcmread(p, stop_before_pixels=True).FlipAngle) == 5.0]
    assert len(pd) == 2 * study.images.shape[1]
    for p in pd:
        _coarsen_file(p)
    s = load_study(tmp_path)
    assert s.kind == "perfusion" and s.images.shape == study.images.shape
    warning = next(w for w in s.provenance["warnings"] if "proton-density" in w)
    assert f"{len(pd)} image(s)" in warning and "FlipAngle 5°" in warning and "50°" in warning, warning
    a = Analysis(s, study.labels).run()
    assert np.max(np.abs(segment_errors(a, truth))) < 0.06


def _coarsen_file(path, step=2):
    """One DICOM image rewritten at 1/step of its matrix, step x its pixel size (another acquisition's)."""
    import pydicom

    ds = pydicom.dcmread(path)
    a = ds.pixel_array[::step, ::step].copy()
    ds.Rows, ds.Columns = a.shape
    ds.PixelSpacing = [step * float(v) for v in ds.PixelSpacing]
    ds.PixelData = a.tobytes()
    ds.save_as(path)


def _coarsen_pd_images(paths, step=2, wobble=0.0):
    """The factory's PD images (FlipAngle 5) rewritten at 1/step of the matrix, step x the pixel
    size; the dynamics' positions moved by up to ``wobble`` mm (an export's rounding)."""
    import pydicom

    rng = np.random.default_rng(1)
    for p in paths:
        ds = pydicom.dcmread(p)
        if float(ds.FlipAngle) == 5.0:
            _coarsen_file(p, step)
        elif wobble:
            ds.ImagePositionPatient = [round(float(v) + rng.uniform(-wobble, wobble), 4) for v in ds.ImagePositionPatient]
            ds.save_as(p)


@pytest.mark.parametrize("step", [2, 3])
def test_reference_images_at_another_matrix_beside_a_dual_sequence_aif_series(tmp_path, phantom, step):
    """Series are told apart by their first image: coarse PD images first in the perfusion series
    made it look like a low-resolution AIF series beside the real one (1/2 matrix: refused as two
    series to choose from; 1/3: the AIF series read as the perfusion, the perfusion as its AIF;
    review of session 45). The perfusion is read, its PD images left out, the AIF series used."""
    study, _ = phantom
    _, paths = write_perfusion_series(tmp_path, study, vendor="siemens", pd_frames=2)
    _coarsen_pd_images(paths, step)
    write_aif_series(tmp_path, study)
    s = load_study(tmp_path)
    assert s.images.shape == study.images.shape
    assert str(s.provenance["aif_source"]).startswith("dual-sequence AIF series")
    assert any("proton-density reference images" in w for w in s.provenance["warnings"])


def test_reference_images_at_another_matrix_beside_dynamics_whose_positions_wobble(tmp_path, phantom):
    """Positions rounded to 0.1 mm split a slice whose dynamics wobble by hundredths of a mm into
    groups too small to be dynamics: the series was refused as one that mixes pixel sizes
    (review of session 45). Slices are found along the normal, as the stack reader finds them."""
    study, _ = phantom
    _, paths = write_perfusion_series(tmp_path, study, vendor="siemens", pd_frames=2)
    _coarsen_pd_images(paths, 2, wobble=0.06)
    s = load_study(tmp_path)
    assert s.images.shape == study.images.shape
    assert any("proton-density reference images" in w for w in s.provenance["warnings"])


def test_images_of_another_matrix_at_the_dynamics_flip_angle_are_still_refused(tmp_path, phantom):
    """Only a different flip angle marks reference images: a few images at another matrix and
    the dynamics' flip angle (a slice re-acquired, a crop) are refused as before, named."""
    from CardiacAISegLib.errors import CardiacInputError

    study, _ = phantom
    _, paths = write_perfusion_series(tmp_path, study, vendor="siemens")
    for p in paths[:2]:
        _coarsen_file(p)
    with pytest.raises(CardiacInputError, match="PixelSpacing|image sizes"):
        load_study(tmp_path)
