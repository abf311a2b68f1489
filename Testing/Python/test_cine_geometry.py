"""Cine measures, RV insertion points, AHA sectors and agreement metrics against exact truth."""
import copy
import time
from pathlib import Path

import numpy as np
import pytest

from CardiacAISegLib.agreement import (angle_error_deg, bland_altman, boundary_distances_mm, dice,
                                       insertion_angle_error_deg, overlap_metrics, segmentation_agreement)
from CardiacAISegLib.cine import MEASURE_KEYS, cine_measures, ed_es_from_curve, volume_curve
from CardiacAISegLib.errors import CardiacInputError
from CardiacAISegLib.geometry import (SectorState, aha_segment_map, rv_insertion_points, slice_levels,
                                      study_insertion_points, update_insertion_point)
from CardiacAISegLib.labels import LV, MYO, RV
from CardiacAISegLib.phantoms.phantom_cine import make_cine_phantom
from CardiacAISegLib.study import Study

ACDC = Path("/work/shared/data/acdc")
ANT_IDS, SEPTAL_IDS, INF_IDS = {1, 7, 13}, {2, 3, 8, 9, 14}, {4, 10, 15}


@pytest.fixture(scope="module")
def cine():
    return make_cine_phantom(seed=0)


@pytest.fixture(scope="module")
def ed_phantoms():
    # ED-only phantoms over seeds: different pixel sizes, rotations, slice directions.
    return [make_cine_phantom(seed=s, n_frames=2) for s in range(1, 7)]


def _truth_points(study, truth):
    """Truth insertion points as hand-placed dicts (ijk), as a user's handles would be."""
    out = []
    for p in truth["insertion_points"]:
        ant, inf = study.ras_to_ijk_points([p["anterior_ras"], p["inferior_ras"]])
        out.append({"slice": p["slice"], "anterior_ijk": tuple(ant), "inferior_ijk": tuple(inf)})
    return out


# --- cine measures --------------------------------------------------------------------------
def test_phantom_volumes_exact(cine):
    study, truth = cine
    curve = volume_curve(study)
    for t in range(study.n_frames):
        assert curve[t]["lv"] == truth["voxel_lv_ml"][t]
        assert curve[t]["myo"] == truth["voxel_myo_ml"][t]
        assert curve[t]["rv"] == truth["voxel_rv_ml"][t]
    # Voxel counts follow the closed-form volume (disc summation at 8-10 mm slices).
    lv, analytic = np.array(truth["voxel_lv_ml"]), np.array(truth["analytic_lv_ml"])
    assert np.all(np.abs(lv - analytic) / analytic < 0.06)
    assert np.allclose(truth["disc_sum_lv_ml"], lv, rtol=0.02)


def test_ed_es_from_curve(cine):
    study, truth = cine
    assert study.ed_frame is None and study.es_frame is None
    m = cine_measures(study)
    assert set(m) == set(MEASURE_KEYS) | {"warnings"}
    assert (m["ed_frame"], m["es_frame"]) == (truth["ed_frame"], truth["es_frame"])
    assert m["es_frame"] == round(0.35 * study.n_frames)
    assert m["lv_edv_ml"] == truth["voxel_lv_ml"][0]
    assert m["lv_mass_g"] == pytest.approx(1.05 * truth["voxel_myo_ml"][0])
    assert m["lv_ef_pct"] == pytest.approx(100 * (1 - truth["voxel_lv_ml"][m["es_frame"]] / truth["voxel_lv_ml"][0]))
    assert len(m["lv_volume_curve_ml"]) == study.n_frames and m["warnings"] == []
    # A curve whose maximum sits mid-cycle still gives argmax/argmin, with a warning.
    rolled = np.roll(truth["voxel_lv_ml"], 8)
    ed, es, warnings = ed_es_from_curve(list(rolled))
    assert (ed, es) == (8, (truth["es_frame"] + 8) % study.n_frames)
    assert warnings and "frame 9" in warnings[0]   # counted from 1


@pytest.mark.skipif(not (ACDC / "patient001").is_dir(), reason="ACDC data not available")
def test_acdc_patient001():
    from CardiacAISegLib.readers.acdc import load_acdc_patient
    study = load_acdc_patient(ACDC / "patient001")
    m = cine_measures(study)
    assert m["lv_edv_ml"] == pytest.approx(295.5, abs=0.1)
    assert m["lv_esv_ml"] == pytest.approx(225.6, abs=0.1)
    assert m["lv_mass_g"] == pytest.approx(1.05 * 164.26, abs=0.1)
    assert m["lv_ef_pct"] == pytest.approx(100 * (295.51 - 225.61) / 295.51, abs=0.05)
    if study.n_frames == len(study.labels):          # this copy holds the ED and ES frames only
        assert m["lv_volume_curve_ml"] == [m["lv_edv_ml"], m["lv_esv_ml"]]
    else:
        assert m["lv_volume_curve_ml"] is None
    # Sectors on real masks: every myocardial pixel of a level slice gets an id.
    lab = study.labels[study.ed_frame]
    pts = study_insertion_points(study, lab, fill_missing=True)
    levels = slice_levels(lab, study)
    seg = aha_segment_map(lab, pts, levels, study.spacing)
    for k in levels:
        assert np.all(seg[k][lab[k] == MYO] > 0)


# --- insertion points -----------------------------------------------------------------------
def test_insertion_angle_error_on_phantoms(ed_phantoms):
    errors = []
    for study, truth in ed_phantoms:
        auto = {p["slice"]: p for p in study_insertion_points(study, study.labels[0])}
        assert set(auto) == {p["slice"] for p in truth["insertion_points"]}
        for t in truth["insertion_points"]:
            a = auto[t["slice"]]
            assert a["source"] == "contact" and a["method"] == "affine"
            for which in ("anterior", "inferior"):
                errors.append(insertion_angle_error_deg(a[which + "_ras"], a["centre_ras"],
                                                        t[which + "_ras"], t["centre_ras"]))
    assert max(errors) < 5.0, f"max insertion angle error {max(errors):.2f} deg"
    assert np.mean(errors) < 2.0


def test_screen_rule_matches_affine_rule():
    # Without orientation the anterior point is the CCW start of the arc on screen; for a
    # stack whose e_i x e_j points to the base, that is what the affine says too.
    study, _ = make_cine_phantom(seed=2, n_frames=1, mirrored=False)
    k = len(study.labels[0]) // 2
    sp = (study.spacing[1], study.spacing[0])
    with_affine = study_insertion_points(study, study.labels[0])
    plain = copy.copy(study)
    plain.ijk_to_ras = np.diag([study.spacing[0], study.spacing[1], study.spacing[2], 1.0])
    plain.orientation_known = False
    screen = {p["slice"]: p for p in study_insertion_points(plain, study.labels[0])}
    for p in with_affine:
        assert screen[p["slice"]]["method"] == "screen"
        assert np.allclose(screen[p["slice"]]["anterior_ijk"], p["anterior_ijk"])
    # A mirrored image swaps them (the documented limitation of the screen rule).
    res = rv_insertion_points(study.labels[0][k][:, ::-1], sp)
    ref = rv_insertion_points(study.labels[0][k], sp)
    n_cols = study.labels[0].shape[2]
    assert res["anterior_ij"][0] == pytest.approx(n_cols - 1 - ref["inferior_ij"][0], abs=1e-3)


# --- levels and sectors ---------------------------------------------------------------------
def _slice_height(study, truth, k):
    centre = study.ijk_to_ras_points([[0, 0, k]])[0]
    return float(np.dot(centre, truth["apex_to_base"]))


def test_slice_levels_base_to_apex(ed_phantoms):
    for study, truth in ed_phantoms:
        levels = slice_levels(study.labels[0], study)
        rank = {"basal": 0, "mid": 1, "apical": 2}
        ordered = sorted(levels, key=lambda k: -_slice_height(study, truth, k))   # base first
        assert [rank[levels[k]] for k in ordered] == sorted(rank[levels[k]] for k in ordered)
        assert set(levels.values()) == set(rank)
        plain = copy.copy(study)
        plain.orientation_known = False                                        # area rule
        assert slice_levels(study.labels[0], plain) == levels


def test_aha_map_coverage_and_sides(ed_phantoms):
    study, truth = ed_phantoms[0]
    lab = study.labels[0]
    pts = study_insertion_points(study, lab, fill_missing=True)
    levels = slice_levels(lab, study)
    seg = aha_segment_map(lab, pts, levels, study.spacing, ijk_to_ras=study.ijk_to_ras)
    ring = {"basal": set(range(1, 7)), "mid": set(range(7, 13)), "apical": set(range(13, 17))}
    for k in range(lab.shape[0]):
        myo = lab[k] == MYO
        assert np.all(seg[k][~myo] == 0)
        if k in levels:
            assert np.all(seg[k][myo] > 0)
            assert set(np.unique(seg[k][myo])) == ring[levels[k]]
        else:
            assert not seg[k].any()
    # Anterior sectors lie on the anterior side (a x s), septal ones toward the RV.
    a = np.asarray(truth["apex_to_base"])
    for t in truth["insertion_points"]:
        k, c = t["slice"], np.asarray(t["centre_ras"])
        if k not in levels:
            continue
        s = np.asarray(t["anterior_ras"]) + np.asarray(t["inferior_ras"]) - 2 * c
        s /= np.linalg.norm(s)
        u_ant = np.cross(a, s)
        jj, ii = np.nonzero(lab[k] == MYO)
        rel = study.ijk_to_ras_points(np.c_[ii, jj, np.full(ii.size, k)]) - c
        ids = seg[k][jj, ii]
        assert np.mean(rel[np.isin(ids, list(ANT_IDS))] @ u_ant) > 5
        assert np.mean(rel[np.isin(ids, list(INF_IDS))] @ u_ant) < -5
        assert np.mean(rel[np.isin(ids, list(SEPTAL_IDS))] @ s) > 5
    # Auto points give nearly the sectors of the true points.
    seg_true = aha_segment_map(lab, _truth_points(study, truth), levels, study.spacing)
    myo = (lab == MYO) & (seg_true > 0)
    assert np.mean(seg[myo] == seg_true[myo]) > 0.97


def test_bai_variant_agrees_on_symmetric_120(ed_phantoms):
    study, truth = ed_phantoms[1]
    assert truth["septal_arc_deg"] == 120.0
    lab = study.labels[0]
    levels = slice_levels(lab, study)
    pts = _truth_points(study, truth)
    aha = aha_segment_map(lab, pts, levels, study.spacing, method="aha")
    bai = aha_segment_map(lab, pts, levels, study.spacing, method="bai")
    myo = aha > 0
    assert myo.sum() > 1000 and np.mean(aha[myo] == bai[myo]) > 0.999
    # With an asymmetric arc they differ: the Bai septum follows the points.
    skew, skew_truth = make_cine_phantom(seed=3, n_frames=1, septal_arc_deg=100, septal_offset_deg=20)
    lab = skew.labels[0]
    lv = slice_levels(lab, skew)
    pts = _truth_points(skew, skew_truth)
    a2 = aha_segment_map(lab, pts, lv, skew.spacing, method="aha")
    b2 = aha_segment_map(lab, pts, lv, skew.spacing, method="bai")
    assert np.mean(a2[a2 > 0] == b2[a2 > 0]) < 0.95


def test_moving_a_point_updates_one_slice(ed_phantoms):
    study, truth = ed_phantoms[2]
    lab = study.labels[0]
    pts = study_insertion_points(study, lab, fill_missing=True)
    state = SectorState(lab, pts, slice_levels(lab, study), study.spacing, method="bai",
                        ijk_to_ras=study.ijk_to_ras)
    k = sorted(state.slices)[len(state.slices) // 2]
    p = next(q for q in pts if q["slice"] == k)
    c, a = np.asarray(p["centre_ras"]), np.asarray(truth["apex_to_base"])

    def rotated(deg):
        v, r = np.asarray(p["anterior_ras"]) - c, np.radians(deg)
        return c + v * np.cos(r) + np.cross(a, v) * np.sin(r) + a * (a @ v) * (1 - np.cos(r))

    before = state.segment_map.copy()
    assert update_insertion_point(state, k, "anterior", rotated(25)) == [k]
    changed = np.nonzero((state.segment_map != before).any(axis=(1, 2)))[0]
    assert list(changed) == [k]
    assert np.allclose(state.points(k)["anterior_ras"], rotated(25), atol=1e-6)
    # Moving it back restores the original map exactly (points taken as given, no re-fit).
    state.move(k, "anterior", new_ijk=p["anterior_ijk"])
    assert np.array_equal(state.segment_map, before)
    t0 = time.perf_counter()
    for i in range(50):
        state.move(k, "inferior", new_ras=rotated(10 * np.sin(i)))
    assert (time.perf_counter() - t0) / 50 < 0.02


def test_move_is_fast_on_256_slice():
    study, _ = make_cine_phantom(seed=4, n_frames=1, size=256, pixel_mm=0.8)
    lab = study.labels[0]
    state = SectorState(lab, study_insertion_points(study, lab, fill_missing=True),
                        slice_levels(lab, study), study.spacing, ijk_to_ras=study.ijk_to_ras)
    k = max(state.slices, key=lambda s: state.slices[s].flat.size)
    ant = np.asarray(state.points(k)["anterior_ijk"])
    t0 = time.perf_counter()
    for i in range(100):
        state.move(k, "anterior", new_ijk=ant + [3 * np.sin(i), 3 * np.cos(i), 0])
    assert (time.perf_counter() - t0) / 100 < 0.02


# --- agreement ------------------------------------------------------------------------------
def _disc(shape, centre, radius):
    yy, xx = np.mgrid[:shape[0], :shape[1]]
    return (xx - centre[0]) ** 2 + (yy - centre[1]) ** 2 <= radius ** 2


def test_agreement_on_discs():
    r, d = 40.0, 18.0
    a, m = _disc((200, 200), (80, 100), r), _disc((200, 200), (80 + d, 100), r)
    lens = 2 * r * r * np.arccos(d / (2 * r)) - d / 2 * np.sqrt(4 * r * r - d * d)
    assert dice(a, m) == pytest.approx(lens / (np.pi * r * r), rel=0.01)
    o = overlap_metrics(a, m)
    assert o["fp"] == pytest.approx(1 - o["precision"]) and o["fn"] == pytest.approx(1 - o["recall"])
    spacing_rc = (1.5, 1.25)                       # (row, col) mm
    assert boundary_distances_mm(a, m, spacing_rc)["hausdorff_mm"] == pytest.approx(d * 1.25)
    down = _disc((200, 200), (80, 100 + 6), r)
    assert boundary_distances_mm(a, down, spacing_rc)["hausdorff_mm"] == pytest.approx(6 * 1.5)
    assert boundary_distances_mm(a, a, spacing_rc)["mean_mm"] == 0.0
    # 3D label maps: per-structure summary, endo/epi contours, Study.spacing order.
    lab_a = np.zeros((2, 200, 200), np.uint8)
    lab_a[:, _disc((200, 200), (100, 100), 40)] = MYO
    lab_a[:, _disc((200, 200), (100, 100), 30)] = LV
    lab_m = np.roll(lab_a, 2, axis=2)
    res = segmentation_agreement(lab_a, lab_m, (1.25, 1.5, 10.0))
    assert res["endo"]["hausdorff_mm"] == pytest.approx(2 * 1.25)
    assert res["epi"]["hausdorff_mm"] == pytest.approx(2 * 1.25)
    assert np.isnan(res["rv"]["dice"]) and "empty" in res["rv"]["undefined"]["dice"]
    assert angle_error_deg([1, 0, 0], [1, 1, 0]) == pytest.approx(45.0)
    ba = bland_altman([1.0, 2.0, 3.0, np.nan], [0.9, 2.2, 2.9, 1.0])
    assert ba["n"] == 3 and ba["bias"] == pytest.approx(np.mean([0.1, -0.2, 0.1]))
    assert ba["upper"] - ba["bias"] == pytest.approx(1.96 * ba["sd"])


# --- bad inputs -----------------------------------------------------------------------------
def test_bad_inputs(cine):
    empty = np.zeros((20, 20), bool)
    with pytest.raises(CardiacInputError, match="both masks are empty"):
        dice(empty, empty)
    with pytest.raises(CardiacInputError, match="automatic mask is empty"):
        boundary_distances_mm(empty, _disc((20, 20), (10, 10), 5), (1, 1))
    with pytest.raises(CardiacInputError, match="at least 2"):
        bland_altman([1.0], [1.0])
    study, _ = cine
    es_missing = copy.copy(study)
    es_missing.labels = {0: study.labels[0]}
    es_missing.ed_frame, es_missing.es_frame = 0, 7
    with pytest.raises(CardiacInputError, match="no labels for the ES frame"):
        cine_measures(es_missing)
    es_missing.es_frame = None
    with pytest.raises(CardiacInputError, match="ES frame unknown"):
        cine_measures(es_missing)
    no_rv = study.labels[0].copy()
    no_rv[no_rv == RV] = 0
    with pytest.raises(CardiacInputError, match="no slice has LV blood pool, myocardium and RV"):
        study_insertion_points(study, no_rv)
    with pytest.raises(CardiacInputError, match="no LV blood pool labelled at ED"):
        flat = Study(images=np.zeros((2, 3, 8, 8)), ijk_to_ras=np.eye(4), labels={0: np.zeros((3, 8, 8), np.uint8),
                     1: np.zeros((3, 8, 8), np.uint8)}, ed_frame=0, es_frame=1, source="flat.nii")
        cine_measures(flat)


def test_points_of_a_touch_of_rv_are_the_neighbours(shared_data):
    """A slice whose RV touches the epicardium in a voxel or two (a stray voxel in expert labels,
    an open LVOT at the base) gave both insertion points one direction (ACDC patient029, slice
    0: 1° apart), which mis-sorted its myocardium into segments; it takes its neighbour's
    directions, as a slice with no contact does, and QC has nothing to flag."""
    from CardiacAISegLib.analysis import Analysis
    from CardiacAISegLib.readers.acdc import load_acdc_patient

    folder = shared_data / "acdc" / "patient029"
    if not folder.is_dir():
        pytest.skip(f"{folder} not found")
    study = load_acdc_patient(folder)
    points = {p["slice"]: p for p in study_insertion_points(study, study.labels[study.ed_frame], fill_missing=True)}
    assert points[0]["source"] == "neighbour"
    for p in points.values():
        arc = p["septal_arc_deg"] % 360
        assert min(arc, 360 - arc) >= 12, p
    a = Analysis(study, study.labels).run()
    assert "INSERTION_POINTS_IMPLAUSIBLE" not in {f["code"] for f in a.qc["flags"]}


def test_only_handles_placed_by_hand_are_judged_against_the_rv_label():
    """The engine's own points may lie far from the RV label by design: a slice given its
    neighbour's points, the textbook arc, perfusion points found from the bolus where the
    network's RV label is wrong (ACDC patient037 and QPerf were flagged; review of session 43).
    A handle the user placed there is (probe 93)."""
    from CardiacAISegLib.phantoms.phantom_cine import make_cine_phantom

    study, _ = make_cine_phantom(seed=2)
    lab = study.labels[sorted(study.labels)[0]]
    points = study_insertion_points(study, lab)
    levels = slice_levels(lab, study)
    k = next(p["slice"] for p in points if levels.get(p["slice"]) == "mid")
    p = next(q for q in points if q["slice"] == k)
    cx, cy = p["centre_ijk"][:2]
    ax, ay = p["anterior_ijk"][:2]
    # the anterior point turned 90 degrees about the centre: on the epicardium, away from the RV
    far = (cx - (ay - cy), cy + (ax - cx), float(k))
    given = [dict(q, anterior_ijk=far) if q["slice"] == k else q for q in points]
    state = SectorState(lab, given, levels, study.spacing, ijk_to_ras=study.ijk_to_ras)
    assert not [m for m in state.point_problems() if "from the RV" in m]
    state.move(k, "anterior", new_ijk=far)
    assert any(f"slice {k}: the anterior point is" in m and "from the RV" in m for m in state.point_problems()), \
        state.point_problems()
