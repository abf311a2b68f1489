"""RV insertion points and AHA sectors on the perfusion phantom (true masks) against its exact truth."""
import numpy as np
import pytest

from CardiacAISegLib.agreement import insertion_angle_error_deg
from CardiacAISegLib.analysis import Analysis
from CardiacAISegLib.geometry import perfusion_insertion_points, rv_at_peak, study_insertion_points
from CardiacAISegLib.labels import LV, RV
from CardiacAISegLib.phantoms.phantom import make_perfusion_phantom


@pytest.mark.parametrize("seed", [0, 1, 2, 3])
def test_insertion_angle_error_under_5_degrees(seed):
    study, truth = make_perfusion_phantom(seed=seed, noise=0.003)
    mask = next(iter(study.labels.values()))
    found = {p["slice"]: p for p in study_insertion_points(study, mask)}
    m = study.ijk_to_ras
    errors = []
    for k, (ant_ijk, inf_ijk) in enumerate(truth["insertion_points"]):
        c = study.ijk_to_ras_points(truth["lv_centre_ijk"][k])[0]
        p = found[k]
        for which, true_ijk in (("anterior", ant_ijk), ("inferior", inf_ijk)):
            true_ras = (m[:3, :3] @ np.asarray(true_ijk, float) + m[:3, 3])
            errors.append(insertion_angle_error_deg(p[f"{which}_ras"], c, true_ras, c))
    assert max(errors) < 5.0, errors


def test_sector_map_matches_truth_and_mbf_within_3_percent():
    study, truth = make_perfusion_phantom(seed=5, noise=0.003)
    a = Analysis(study, study.labels).run()
    seg, true_seg = a.segment_map, truth["segment_map"]
    myo = true_seg > 0
    assert (seg[myo] == true_seg[myo]).mean() > 0.95
    for s in a.perfusion["segments"]:
        true = truth["mbf_per_segment"][s["id"]]
        assert abs(s["mbf_ml_min_g"] - true) / true < 0.03, (s, true)


# --- insertion points from the RV at its peak enhancement (issue 9) ---------------------------
def _arc_and_rv_inside(p, rv_mask, spacing_rc):
    """(septal arc in degrees walked anterior -> inferior in the slice's sense, True if the RV
    direction lies on that arc): the handles are 'crossed' when the RV is not between them."""
    sy, sx = spacing_rc
    cx, cy = p["centre_ijk"][:2]
    ang = lambda i, j: np.arctan2((j - cy) * sy, (i - cx) * sx)
    sigma = p["sense"]
    ant, inf = ang(*p["anterior_ijk"][:2]), ang(*p["inferior_ijk"][:2])
    rr, cc = np.nonzero(rv_mask)
    rv = np.arctan2(np.sin(ang(cc, rr)).mean(), np.cos(ang(cc, rr)).mean())
    arc = np.degrees(np.mod(sigma * (ant - inf), 2 * np.pi))
    to_rv = np.degrees(np.mod(sigma * (ant - rv), 2 * np.pi))
    return arc, to_rv < arc


@pytest.mark.parametrize("seed", [0, 3])
def test_a_sliver_of_labelled_rv_still_gives_the_true_arc_from_the_bolus(seed):
    # the QPerf failure: the network labels a corner of the RV only, a contact arc of 10-13 degrees
    study, truth = make_perfusion_phantom(seed=seed, noise=0.01)
    mask = next(iter(study.labels.values())).copy()
    for k in range(mask.shape[0]):
        rows, cols = np.nonzero(mask[k] == RV)
        far = np.hypot(rows - rows.mean(), cols - cols.mean()) > 4      # keep a patch of radius 4 px
        mask[k][rows[far], cols[far]] = 0
    found = {p["slice"]: p for p in study_insertion_points(study, mask)}
    m = study.ijk_to_ras
    for k, (ant_ijk, inf_ijk) in enumerate(truth["insertion_points"]):
        p = found[k]
        assert p["source"] == "rv_at_peak" and p["rv_source"] == "bolus" and p["warning"] is None
        c = study.ijk_to_ras_points(truth["lv_centre_ijk"][k])[0]
        for which, true_ijk in (("anterior", ant_ijk), ("inferior", inf_ijk)):
            err = insertion_angle_error_deg(p[f"{which}_ras"], c, m[:3, :3] @ np.asarray(true_ijk, float) + m[:3, 3], c)
            assert err < 5.0, (k, which, err)


def test_a_mask_without_rv_still_gets_insertion_points_from_the_bolus():
    """A network mask with no RV label (a key image after the RV washed out) still gets AHA
    segments: the RV is found from the bolus, and the points are those of the full mask."""
    study, _ = make_perfusion_phantom(seed=4, n_frames=50, noise=0.005)
    no_rv = {t: np.where(m == RV, 0, m).astype(np.uint8) for t, m in study.labels.items()}
    without, with_rv = Analysis(study, no_rv).run(), Analysis(study, study.labels).run()
    assert without.sectors is not None and len(without.insertion) == study.n_slices
    for p, q in zip(without.insertion, with_rv.insertion):
        np.testing.assert_allclose(p["anterior_ras"], q["anterior_ras"], atol=1e-6)
        np.testing.assert_allclose(p["inferior_ras"], q["inferior_ras"], atol=1e-6)
    assert not any(f["code"].startswith("INSERTION_POINTS") for f in without.qc["flags"])


def test_no_bolus_rv_and_a_sliver_falls_back_to_120_degrees_on_the_rv_and_warns():
    # a labelled RV of a few pixels and no blood peaking before the LV (RV curve = LV curve)
    study, truth = make_perfusion_phantom(seed=2, noise=0.01)
    lab = next(iter(study.labels.values())).copy()
    images = study.images.copy()
    lv_curve = images[:, 1][:, lab[1] == LV].mean(1)
    for k in range(3):
        images[:, k][:, lab[k] == RV] = lv_curve[:, None] * 0.2
    rows, cols = np.nonzero(lab[1] == RV)
    centre = np.hypot(rows - rows.mean(), cols - cols.mean()) <= 2.5
    sliver = np.zeros_like(lab[1], bool)
    sliver[rows[centre], cols[centre]] = True
    lab[1][(lab[1] == RV) & ~sliver] = 0
    p = perfusion_insertion_points(lab[1], images[:, 1], (1.8, 1.8), normal=truth["apex_to_base"],
                                   ijk_to_ras=study.ijk_to_ras, k=1, dt_s=0.5)
    assert p["rv_source"] == "labels" and "120 degree" in p["warning"]
    arc, rv_inside = _arc_and_rv_inside({**p, "anterior_ijk": p["anterior_ij"], "inferior_ijk": p["inferior_ij"],
                                         "centre_ijk": p["centre_ij"]}, sliver, (1.8, 1.8))
    assert abs(arc - 120.0) < 1.0 and rv_inside


def test_qperf_handles_span_a_plausible_arc_around_the_rv(shared_data):
    from CardiacAISegLib.pipeline import segment
    from CardiacAISegLib.readers import load_study

    for series in ("rest", "stress"):
        study = load_study(shared_data / "qperf", series=series)
        labels, _ = segment(study)
        a = Analysis(study, labels).run()
        (p,) = a.insertion
        rv, how = rv_at_peak(study.images[:, 0], labels[0][0], (study.spacing[1], study.spacing[0]), 0.5)
        arc, rv_inside = _arc_and_rv_inside(p, rv, (study.spacing[1], study.spacing[0]))
        # before: 10-13 degree arcs from a contact with a sliver of labelled RV
        assert 60.0 <= arc <= 200.0 and rv_inside, (series, arc, rv_inside, how)
        assert how == "bolus"
        if series == "rest":
            assert p["source"] == "rv_at_peak"
        else:
            # the stress crop shows little RV: its contact arc sits at the 60-degree edge (61.5
            # with unmirrored networks, 59 with the shipped mirrored ones), where the textbook
            # arc centred on the RV takes over, flagged for review
            assert p["source"] in ("rv_at_peak", "fallback_arc")
            if p["source"] == "fallback_arc":
                assert "INSERTION_POINTS_ESTIMATED" in {f["code"] for f in a.qc["flags"]}


def test_rv_at_peak_on_a_whole_field_of_view_is_the_rv_of_the_heart_window():
    """The RV search reads only a window around the labelled heart (40 mm beyond it): the same
    slice inside a chest 3x wider, with a bright enhancing body, gives the same RV pixels."""
    study, _ = make_perfusion_phantom(seed=2, n_frames=50, noise=0.01)
    frames, lab = study.images[:, 1], study.labels[0][1]
    spacing = (study.spacing[1], study.spacing[0])
    rv, how = rv_at_peak(frames, lab, spacing, 0.5)
    pad = 96
    rng = np.random.default_rng(0)
    chest = np.pad(frames, ((0, 0), (pad, pad), (pad, pad)))
    chest[:, : pad // 2] += 0.3 * np.linspace(0, 1, frames.shape[0])[:, None, None] + 0.01 * rng.standard_normal((frames.shape[0], pad // 2, chest.shape[2]))
    wide_rv, wide_how = rv_at_peak(chest, np.pad(lab, pad), spacing, 0.5)
    assert how == wide_how == "bolus" and rv.sum() > 50
    np.testing.assert_array_equal(wide_rv[pad:-pad, pad:-pad], rv)
    assert not wide_rv[:pad].any() and not wide_rv[-pad:].any()


def _slices_of(study, keep):
    """The series with only the slices ``keep`` (consecutive), its geometry moved with them."""
    from copy import copy

    part = copy(study)
    part.images = np.ascontiguousarray(study.images[:, keep])
    part.labels = {t: np.ascontiguousarray(m[keep]) for t, m in study.labels.items()}
    part.ijk_to_ras = study.ijk_to_ras.copy()
    part.ijk_to_ras[:3, 3] += keep[0] * study.ijk_to_ras[:3, 2]
    part.provenance = {}
    return part


@pytest.mark.parametrize("stress_keep, rest_keep", [([1, 2], [0, 1, 2]), ([0, 1], [1, 2]), ([1, 2], [0, 1])])
def test_stress_and_rest_slices_take_the_levels_of_their_shared_positions(stress_keep, rest_keep):
    """Two stress slices at the rest's mid and apical positions were called basal and mid by
    their count: stress segments 7-12 read the apical values, MPR 35-84 % off with QC "pass"; a
    stress at the basal and mid positions beside a rest at the mid and apical ones had the rest
    called basal and mid (probe 53). Read together, every slice takes the level of its place."""
    from CardiacAISegLib.aha import AHA_BY_ID

    stress, truth_s = make_perfusion_phantom(seed=5, noise=0.005)
    rest, truth_r = make_perfusion_phantom(seed=5, stress=False, noise=0.005)
    whole = Analysis(stress, stress.labels).run()
    level_at = [whole.acquired_levels[k] for k in range(stress.n_slices)]   # basal, mid, apical by place
    s_part, r_part = _slices_of(stress, stress_keep), _slices_of(rest, rest_keep)
    rest_a = Analysis(r_part, r_part.labels).run()
    a = Analysis(s_part, s_part.labels, rest=rest_a).run()
    assert [a.acquired_levels[k] for k in range(len(stress_keep))] == [level_at[k] for k in stress_keep]
    assert [rest_a.acquired_levels[k] for k in range(len(rest_keep))] == [level_at[k] for k in rest_keep]
    both = {level_at[k] for k in stress_keep} & {level_at[k] for k in rest_keep}
    # read by their positions, the 2-slice series' levels are no guess: not flagged as one
    codes = {f["code"] for f in a.qc["flags"]} | {f["code"] for f in rest_a.qc["flags"]}
    assert not codes & {"PERFUSION_LEVELS_BY_COUNT", "REST_PERFUSION_LEVELS_BY_COUNT"}, codes
    for seg in a.perfusion["segments"]:
        if AHA_BY_ID[seg["id"]]["level"] in {level_at[k] for k in stress_keep}:
            assert seg["mbf_ml_min_g"] == pytest.approx(truth_s["mbf_per_segment"][seg["id"]], rel=0.15), seg
    for seg in a.perfusion["mpr"]["segments"]:
        if AHA_BY_ID[seg["id"]]["level"] in both:
            expected = truth_s["mbf_per_segment"][seg["id"]] / truth_r["mbf_per_segment"][seg["id"]]
            assert seg["mpr"] == pytest.approx(expected, rel=0.15), seg

def _without_slices(study, keep):
    """The series with only the slices ``keep`` (evenly spaced), as a reader gives a series whose
    other slices' files are missing: positions from the header, the slice step widened."""
    from copy import copy

    part = copy(study)
    part.images = np.ascontiguousarray(study.images[:, keep])
    part.labels = {t: np.ascontiguousarray(m[keep]) for t, m in study.labels.items()}
    step = study.ijk_to_ras[:3, 2]
    part.ijk_to_ras = study.ijk_to_ras.copy()
    part.ijk_to_ras[:3, 3] += keep[0] * step
    part.ijk_to_ras[:3, 2] = (keep[1] - keep[0]) * step
    part.provenance = {"slice_positions_mm": [float(k * np.linalg.norm(step)) for k in keep]}
    return part


def test_levels_a_missing_slice_may_have_shifted_are_flagged():
    """Probe 82: one series of 3 slices whose mid slice's files were missing reported the apex as
    mid segments 7-12; one whose basal slice was missing shifted every level; QC said nothing of
    slices or levels. Levels from the count of 2 slices, or after a gap of a missing slice, are
    flagged for review; 3 evenly spaced slices are not."""
    stress, _ = make_perfusion_phantom(seed=5, noise=0.005)

    def codes(st):
        a = Analysis(st, st.labels).run()
        return {f["code"]: f for f in a.qc["flags"]}

    assert not {"PERFUSION_LEVELS_BY_COUNT", "PERFUSION_SLICE_GAP"} & set(codes(stress))
    two = codes(_without_slices(stress, [0, 2]))
    assert "PERFUSION_LEVELS_BY_COUNT" in two and "2 slices (40 mm apart)" in two["PERFUSION_LEVELS_BY_COUNT"]["message"]
    # four slices planned, one lost: 3 left with a double gap
    four, _ = make_perfusion_phantom(seed=5, noise=0.005, slice_mm=15.0)
    gap = _without_slices(four, [0, 1, 2])
    gap.provenance = {"slice_positions_mm": [0.0, 15.0, 45.0]}
    flags = codes(gap)
    assert "PERFUSION_SLICE_GAP" in flags and "30 mm between the slices at 15 and 45 mm" in flags["PERFUSION_SLICE_GAP"]["message"]
    # a rest at the same two positions confirms nothing: both still named by their count (review)
    rest, _ = make_perfusion_phantom(seed=5, stress=False, noise=0.005)
    s_two, r_two = _slices_of(stress, [1, 2]), _slices_of(rest, [1, 2])
    rest_a = Analysis(r_two, r_two.labels).run()
    a = Analysis(s_two, s_two.labels, rest=rest_a).run()
    paired = {f["code"] for f in a.qc["flags"]}
    assert {"PERFUSION_LEVELS_BY_COUNT", "REST_PERFUSION_LEVELS_BY_COUNT"} <= paired, paired
    # and a stress measured again alone after its rest is unpaired reads by its count again
    three = Analysis(_slices_of(rest, [0, 1, 2]), _slices_of(rest, [0, 1, 2]).labels).run()
    a = Analysis(s_two, s_two.labels, rest=three).run()
    assert "PERFUSION_LEVELS_BY_COUNT" not in {f["code"] for f in a.qc["flags"]}
    a.rest = None
    a.run()
    assert "PERFUSION_LEVELS_BY_COUNT" in {f["code"] for f in a.qc["flags"]}


def test_a_rest_series_of_fewer_slices_takes_the_levels_at_its_positions():
    """Two rest slices at the stress mid and apical positions were called basal and mid by their
    count: rest segments 1-12 came from the wrong slices (MPR 2.21 for 2.92, QC pass; probe
    round 17). They take the stress slices' levels at their positions."""
    stress, truth_s = make_perfusion_phantom(seed=5, noise=0.005)
    rest, truth_r = make_perfusion_phantom(seed=5, stress=False, noise=0.005)
    keep = [1, 2]
    two = _slices_of(rest, keep)
    rest_a = Analysis(two, two.labels).run()
    a = Analysis(stress, stress.labels, rest=rest_a).run()
    assert [rest_a.acquired_levels[k] for k in range(2)] == [a.acquired_levels[k] for k in keep]
    assert any("take the levels of their positions among the stress series' slices" in w for w in a.warnings)
    got = {s["id"]: s["mpr"] for s in a.perfusion["mpr"]["segments"]}
    levels_shown = {a.acquired_levels[k] for k in keep}
    from CardiacAISegLib.aha import AHA_BY_ID
    for sid, value in got.items():
        if AHA_BY_ID[sid]["level"] in levels_shown:
            expected = truth_s["mbf_per_segment"][sid] / truth_r["mbf_per_segment"][sid]
            assert value == pytest.approx(expected, rel=0.1), (sid, value, expected)
        else:
            assert value is None or np.isnan(value), (sid, value)
