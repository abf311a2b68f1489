"""End to end: `cardiacaiseg phantom` -> `cardiacaiseg analyze ... --labels` -> every output.

With the true label maps the pipeline must reproduce the voxel-count truth of the phantoms
exactly, the published ACDC reference volumes, and MBF per AHA segment within 3 %; the
outputs (results.json / .csv, segmentation.seg.nrrd, scene.mrb with --scene, report.png) must load back
with the same content. ``cli.main`` runs in-process (importing slicer once); one test runs
the installed console script in a subprocess.
"""
import csv
import json
import os
import shutil
import subprocess
import sys

import numpy as np
import pytest

from CardiacAISegLib import cli
from CardiacAISegLib.labels import SEGMENTS, normalise_labels

TOP_KEYS = {"schema_version", "kind", "input", "source", "model", "cine", "perfusion", "bullseye", "rv_insertion", "warnings", "qc",
            "timing_s"}
CINE_KEYS = {"ed_frame", "es_frame", "lv_edv_ml", "lv_esv_ml", "lv_sv_ml", "lv_ef_pct", "lv_mass_g",
             "rv_edv_ml", "rv_esv_ml", "rv_sv_ml", "rv_ef_pct", "lv_volume_curve_ml",
             "ed_es_certainty",   # None unless every frame of a cycle is labelled
             "ed_es_check",       # None unless ED/ES were fixed by the reader or taken from a few labelled frames of 6+
             "ed_es_timing",      # None unless a DICOM export of under 6 phases has trigger delays
             "density_g_ml",      # the density the mass was computed with
             "segments"}          # [{id, name, wall_thickness_ed_mm}] per AHA segment
# each segment's share of unreliable fits, and whether over 30 % (qc MBF_SEGMENT_UNRELIABLE)
SEGMENT_KEYS = {"id", "name", "territory", "mbf_ml_min_g", "n_pixels", "unreliable_fraction", "fit_unreliable",
                "pixel_spread"}
SEGMENT_NAMES = list(SEGMENTS)          # "LV blood pool", "LV myocardium", "RV"
MYOCARDIAL_DENSITY = 1.05


def _cli(*argv):
    rc = cli.main([str(a) for a in argv])
    assert rc == 0, f"cardiacaiseg {' '.join(map(str, argv))} exited with {rc}"


def _read_nifti_labels(path):
    """(T, S, R, C) internal labels and the affine of an ACDC-convention NIfTI label map."""
    import nibabel as nib

    img = nib.load(str(path))
    data = np.asarray(img.dataobj)
    if data.ndim == 3:
        data = data[..., None]
    return normalise_labels(data.transpose(3, 2, 1, 0), "acdc"), np.asarray(img.affine, float)


def _csv_rows(path):
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


# ------------------------------------------------------------------------------------ cine
@pytest.fixture(scope="module")
def cine(tmp_path_factory):
    root = tmp_path_factory.mktemp("cine")
    ph, out = root / "phantom", root / "out"
    _cli("phantom", "--kind", "cine", "--out", ph)
    _cli("analyze", ph / "cine.nii.gz", "--labels", ph / "cine_labels.nii.gz", "--out", out, "--quiet", "--scene")
    meta = json.loads((ph / "truth.json").read_text())
    return {"phantom": ph, "out": out, "truth": meta["truth"], "meta": meta,
            "results": json.loads((out / "results.json").read_text())}


def test_cine_outputs_and_schema(cine):
    out, r = cine["out"], cine["results"]
    assert sorted(os.listdir(out)) == ["report.png", "results.csv", "results.json", "scene.mrb",
                                       "segmentation.seg.nrrd", "segmentation_es.seg.nrrd"]
    assert set(r) == TOP_KEYS
    assert r["kind"] == "cine" and r["model"] is None and r["perfusion"] is None
    assert r["input"] == str(cine["phantom"] / "cine.nii.gz")
    assert set(r["cine"]) == CINE_KEYS
    assert r["warnings"] == []
    assert r["qc"]["status"] == "pass" and r["qc"]["flags"] == []   # a clean phantom raises no flag
    assert {"load", "measures", "writing"} <= set(r["timing_s"]) and all(v >= 0 for v in r["timing_s"].values())
    assert len(r["rv_insertion"]) >= 3
    for p in r["rv_insertion"]:
        assert set(p) == {"slice", "anterior_ras", "inferior_ras"}
        assert len(p["anterior_ras"]) == 3 and len(p["inferior_ras"]) == 3


def test_cine_volumes_equal_voxel_truth(cine):
    c, truth = cine["results"]["cine"], cine["truth"]
    ed, es = truth["ed_frame"], truth["es_frame"]
    assert (c["ed_frame"], c["es_frame"]) == (ed, es)
    # truth.json holds the phantom's voxel counts x its voxel volume; the NIfTI header keeps
    # the spacing in float32, hence 1e-6 rather than bit equality.
    for key, expect in (("lv_edv_ml", truth["voxel_lv_ml"][ed]), ("lv_esv_ml", truth["voxel_lv_ml"][es]),
                        ("rv_edv_ml", truth["voxel_rv_ml"][ed]), ("rv_esv_ml", truth["voxel_rv_ml"][es]),
                        ("lv_mass_g", MYOCARDIAL_DENSITY * truth["voxel_myo_ml"][ed])):
        assert c[key] == pytest.approx(expect, rel=1e-6, abs=0), key
    np.testing.assert_allclose(c["lv_volume_curve_ml"], truth["voxel_lv_ml"], rtol=1e-6)
    # ... and to the last bit: voxel counts of the label file x the voxel volume of its affine.
    labels, affine = _read_nifti_labels(cine["phantom"] / "cine_labels.nii.gz")
    vv = abs(np.linalg.det(affine[:3, :3])) / 1000.0
    count = lambda t, v: int((labels[t] == v).sum())  # noqa: E731
    assert c["lv_edv_ml"] == pytest.approx(count(ed, 1) * vv, rel=1e-12)
    assert c["lv_esv_ml"] == pytest.approx(count(es, 1) * vv, rel=1e-12)
    assert c["rv_edv_ml"] == pytest.approx(count(ed, 3) * vv, rel=1e-12)
    assert c["lv_mass_g"] == pytest.approx(MYOCARDIAL_DENSITY * count(ed, 2) * vv, rel=1e-12)
    assert c["lv_sv_ml"] == pytest.approx(c["lv_edv_ml"] - c["lv_esv_ml"])
    assert c["lv_ef_pct"] == pytest.approx(100 * c["lv_sv_ml"] / c["lv_edv_ml"])
    assert c["rv_ef_pct"] == pytest.approx(100 * (c["rv_edv_ml"] - c["rv_esv_ml"]) / c["rv_edv_ml"])


def test_cine_results_csv(cine):
    rows = _csv_rows(cine["out"] / "results.csv")
    by_name = {r["measure"]: r for r in rows}
    c = cine["results"]["cine"]
    for measure, key, unit in (("LV EDV", "lv_edv_ml", "mL"), ("LV ESV", "lv_esv_ml", "mL"), ("LV SV", "lv_sv_ml", "mL"),
                               ("LV EF", "lv_ef_pct", "%"), ("LV mass", "lv_mass_g", "g"), ("RV EDV", "rv_edv_ml", "mL"),
                               ("RV ESV", "rv_esv_ml", "mL"), ("RV SV", "rv_sv_ml", "mL"), ("RV EF", "rv_ef_pct", "%")):
        assert by_name[measure]["unit"] == unit
        assert float(by_name[measure]["value"]) == pytest.approx(c[key], rel=1e-5)
    assert int(by_name["ED frame (0-based)"]["value"]) == c["ed_frame"]
    assert int(by_name["ES frame (0-based)"]["value"]) == c["es_frame"]
    thickness = [r for r in rows if r["measure"].startswith("Wall thickness ED, segment")]
    assert len(thickness) == 16 and all(r["unit"] == "mm" and 3 < float(r["value"]) < 20 for r in thickness)
    # results.json holds them too, and the density the mass was computed with (probe round 14)
    assert [s["id"] for s in c["segments"]] == list(range(1, 17))
    for r, s in zip(thickness, c["segments"]):
        assert f"segment {s['id']} ({s['name']})" in r["measure"]
        assert float(r["value"]) == pytest.approx(s["wall_thickness_ed_mm"], abs=0.05)
    assert float(by_name["Tissue density"]["value"]) == c["density_g_ml"] == MYOCARDIAL_DENSITY
    assert by_name["QC status: pass"]["value"] == "0"    # flags to review
    assert len(rows) == len(by_name) == 11 + 1 + 16 + 1


def test_segmentation_files_round_trip(cine):
    from CardiacAISegLib import scene

    labels, affine = _read_nifti_labels(cine["phantom"] / "cine_labels.nii.gz")
    c = cine["results"]["cine"]
    for name, frame in (("segmentation.seg.nrrd", c["ed_frame"]), ("segmentation_es.seg.nrrd", c["es_frame"])):
        lab, ijk_to_ras, names = scene.read_segmentation(str(cine["out"] / name))
        assert names == SEGMENT_NAMES
        np.testing.assert_array_equal(lab, labels[frame])
        np.testing.assert_allclose(ijk_to_ras, affine, atol=1e-4)


def test_scene_mrb_round_trip(cine):
    import slicer.util

    from CardiacAISegLib import scene

    r, n_frames = cine["results"], cine["results"]["cine"]["lv_volume_curve_ml"].__len__()
    ctx = scene.read_mrb(str(cine["out"] / "scene.mrb"))
    labels, affine = _read_nifti_labels(cine["phantom"] / "cine_labels.nii.gz")

    sequences = scene.nodes_by_class(ctx, "vtkMRMLSequenceNode")
    (seq,) = [s for s in sequences if not s.GetHideFromEditors()]
    # the run's own labels of the frames shown for editing, kept to tell an edit from the run
    (run,) = [s for s in sequences if s.GetName().endswith(" run labels")]
    assert run.GetHideFromEditors() and run.GetNumberOfDataNodes() == 2
    assert seq.GetNumberOfDataNodes() == n_frames == 20
    # every frame's labels too (the whole cycle was segmented), kept out of the editors' lists
    (frame_labels,) = [s for s in sequences if scene.FRAME_LABELS_NAME in s.GetName()]
    assert frame_labels.GetNumberOfDataNodes() == 20 and frame_labels.GetHideFromEditors()
    np.testing.assert_allclose(scene.volume_ijk_to_ras(seq.GetNthDataNode(0)), affine, atol=1e-4)
    import nibabel as nib

    images = np.asarray(nib.load(str(cine["phantom"] / "cine.nii.gz")).dataobj).transpose(3, 2, 1, 0)
    np.testing.assert_array_equal(slicer.util.arrayFromVolume(seq.GetNthDataNode(3)), images[3])

    segs = scene.nodes_by_class(ctx, "vtkMRMLSegmentationNode")
    assert 1 <= len(segs) <= 2
    by_name = {s.GetName(): s for s in segs}
    ed_node = next(s for n, s in by_name.items() if n.endswith("ED"))
    for s in segs:
        seg = s.GetSegmentation()
        assert [seg.GetNthSegment(i).GetName() for i in range(seg.GetNumberOfSegments())] == SEGMENT_NAMES
    np.testing.assert_array_equal(scene.labelmap_from_segmentation(ed_node, affine, labels.shape[1:]),
                                  labels[r["cine"]["ed_frame"]])

    markups = [n for n in scene.nodes_by_class(ctx, "vtkMRMLMarkupsFiducialNode") if n.GetName().endswith("RV insertion")]
    assert len(markups) == 1
    points = scene.insertion_points_from_markups(markups[0])
    assert [p["slice"] for p in points] == [p["slice"] for p in r["rv_insertion"]]
    for got, want in zip(points, r["rv_insertion"]):
        for side in ("anterior_ras", "inferior_ras"):
            np.testing.assert_allclose(got[side], want[side], atol=1e-4)

    (table,) = scene.nodes_by_class(ctx, "vtkMRMLTableNode")
    rows = scene.table_rows(table)
    csv_rows = _csv_rows(cine["out"] / "results.csv")
    assert [(t["measure"], t["unit"]) for t in rows] == [(c["measure"], c["unit"]) for c in csv_rows]
    for t, c in zip(rows, csv_rows):
        assert t["value"] == pytest.approx(float(c["value"]), rel=1e-5), t["measure"]
    # Slicer stores table values as text with 6 significant digits, like results.csv.
    assert rows[2]["measure"] == "LV EDV" and rows[2]["value"] == pytest.approx(r["cine"]["lv_edv_ml"], rel=1e-5)


def test_report_png_opens(cine):
    from PIL import Image

    with Image.open(cine["out"] / "report.png") as im:
        im.verify()
    with Image.open(cine["out"] / "report.png") as im:
        assert im.format == "PNG" and min(im.size) >= 300
        a = np.asarray(im.convert("RGB"))
    assert a.std() > 10                                         # not a blank canvas


def test_console_script_subprocess(cine, tmp_path):
    """The installed `cardiacaiseg` entry point (a real process) gives the same results."""
    exe = shutil.which("cardiacaiseg")
    cmd = [exe] if exe else [sys.executable, "-m", "CardiacAISegLib.cli"]
    ph = cine["phantom"]
    proc = subprocess.run(cmd + ["analyze", str(ph / "cine.nii.gz"), "--labels", str(ph / "cine_labels.nii.gz"),
                                 "--out", str(tmp_path / "out"), "--quiet"],
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert "LV EDV" in proc.stdout and f"wrote {tmp_path / 'out' / 'results.json'}" in proc.stdout
    again = json.loads((tmp_path / "out" / "results.json").read_text())
    assert again["cine"] == cine["results"]["cine"] and again["rv_insertion"] == cine["results"]["rv_insertion"]
    # and it fails with a message and a non-zero code, not a traceback
    bad = subprocess.run(cmd + ["analyze", str(tmp_path / "none.nii.gz"), "--out", str(tmp_path / "o2")],
                         capture_output=True, text=True, timeout=120)
    assert bad.returncode == 2 and "none.nii.gz: file or folder not found" in bad.stderr
    assert "Traceback" not in bad.stderr and not (tmp_path / "o2").exists()


# ------------------------------------------------------------------------------------ ACDC
def test_acdc_patient001_reference_volumes(shared_data, tmp_path):
    """ACDC patient001 (Bernard et al. 2018), ground-truth labels: LV EDV 295.5 mL, ESV 225.6 mL."""
    _cli("analyze", shared_data / "acdc" / "patient001", "--labels", "study", "--out", tmp_path, "--quiet")
    r = json.loads((tmp_path / "results.json").read_text())
    c = r["cine"]
    assert (c["ed_frame"], c["es_frame"]) == (0, 1)
    assert c["lv_edv_ml"] == pytest.approx(295.5, abs=0.1)
    assert c["lv_esv_ml"] == pytest.approx(225.6, abs=0.1)
    assert c["lv_ef_pct"] == pytest.approx(23.7, abs=0.1)
    assert r["model"] is None and r["perfusion"] is None and c["lv_volume_curve_ml"] == [c["lv_edv_ml"], c["lv_esv_ml"]]


# ------------------------------------------------------------------------------- perfusion
NOISE = 0.003   # mmol/L: small but non-zero (the default 0.02 scatters pixel maps, see test_mbf)


@pytest.fixture(scope="module")
def perfusion(tmp_path_factory):
    from CardiacAISegLib.phantoms.phantom import write_phantom

    root = tmp_path_factory.mktemp("perfusion")
    stress, rest, out = root / "stress", root / "rest", root / "out"
    _cli("phantom", "--kind", "perfusion", "--seed", "3", "--noise", NOISE, "--out", stress)
    # The CLI makes stress phantoms; the rest study comes from the library (another seed).
    write_phantom("perfusion", rest, seed=8, stress=False, noise=NOISE)
    meta_s = json.loads((stress / "truth.json").read_text())
    meta_r = json.loads((rest / "truth.json").read_text())
    assert meta_s["dt_s"] == meta_r["dt_s"]
    _cli("analyze", stress / "perfusion.nii.gz", "--kind", "perfusion", "--labels", stress / "perfusion_labels.nii.gz",
         "--aif", stress / "aif.csv", "--dt", meta_s["dt_s"],
         "--rest", rest / "perfusion.nii.gz", "--rest-labels", rest / "perfusion_labels.nii.gz", "--rest-aif", rest / "aif.csv",
         "--out", out, "--quiet")
    return {"out": out, "stress": stress, "truth_stress": meta_s["truth"], "truth_rest": meta_r["truth"],
            "truth_dt_s": meta_s["dt_s"], "results": json.loads((out / "results.json").read_text())}


def test_perfusion_schema(perfusion):
    r = perfusion["results"]
    # with a rest series: the network that drew its mask (none here: given; probe 93)
    assert set(r) == TOP_KEYS | {"rest_model"} and r["rest_model"] is None
    assert r["kind"] == "perfusion" and r["cine"] is None and r["model"] is None
    p = r["perfusion"]
    assert {"global_mbf_ml_min_g", "density_g_ml", "segments"} <= set(p)
    assert p["density_g_ml"] == 1.05
    assert [s["id"] for s in p["segments"]] == list(range(1, 17))
    for s in p["segments"]:
        assert set(s) == SEGMENT_KEYS
        assert s["territory"] in ("LAD", "RCA", "LCx") and s["n_pixels"] > 40
    assert p["segments"][1]["name"] == "basal anteroseptal" and p["segments"][1]["territory"] == "LAD"
    assert [i["slice"] for i in r["rv_insertion"]] == [0, 1, 2]
    assert {"load", "mbf_map", "measures", "writing"} <= set(r["timing_s"])
    # no --scene: no scene.mrb (and no slicer-core in the run)
    assert sorted(os.listdir(perfusion["out"])) == ["report.png", "rest_segmentation.seg.nrrd", "results.csv", "results.json",
                                                    "segmentation.seg.nrrd"]


def test_the_rest_mask_is_written_and_measures_the_same_given_back(perfusion, tmp_path):
    """Probe 94: without --scene the rest series' mask was written nowhere, so rest MBF, MPR and
    MPRI could not be checked or measured again. Given back with --rest-labels it reproduces them."""
    stress, rest, out = perfusion["stress"], perfusion["stress"].parent / "rest", tmp_path / "again"
    _cli("analyze", stress / "perfusion.nii.gz", "--kind", "perfusion", "--labels", stress / "perfusion_labels.nii.gz",
         "--aif", stress / "aif.csv", "--dt", perfusion["truth_dt_s"],
         "--rest", rest / "perfusion.nii.gz", "--rest-labels", perfusion["out"] / "rest_segmentation.seg.nrrd",
         "--rest-aif", rest / "aif.csv", "--out", out, "--quiet")
    again = json.loads((out / "results.json").read_text())["perfusion"]
    first = perfusion["results"]["perfusion"]
    assert again["rest"]["global_mbf_ml_min_g"] == pytest.approx(first["rest"]["global_mbf_ml_min_g"], rel=1e-9)
    assert again["mpr"]["global"] == pytest.approx(first["mpr"]["global"], rel=1e-9)


def test_perfusion_segment_mbf_within_3_percent(perfusion):
    truth = perfusion["truth_stress"]["mbf_per_segment"]          # JSON: keys are strings
    p = perfusion["results"]["perfusion"]
    errors = {s["id"]: s["mbf_ml_min_g"] / truth[str(s["id"])] - 1 for s in p["segments"]}
    assert max(abs(e) for e in errors.values()) < 0.03, errors
    true_values = [truth[str(s["id"])] for s in p["segments"]]
    assert min(true_values) * 0.97 < p["global_mbf_ml_min_g"] < max(true_values) * 1.03


def test_perfusion_csv_and_segmentation(perfusion):
    from CardiacAISegLib import scene

    rows = {r["measure"]: r for r in _csv_rows(perfusion["out"] / "results.csv")}
    p = perfusion["results"]["perfusion"]
    assert float(rows["Global MBF"]["value"]) == pytest.approx(p["global_mbf_ml_min_g"], rel=1e-5)
    assert rows["Global MBF"]["unit"] == "mL/min/g" and rows["Tissue density"]["unit"] == "g/mL"
    seg_rows = [r for r in rows.values() if r["measure"].startswith("MBF segment")]
    assert len(seg_rows) == 16 and all(r["unit"] == "mL/min/g" for r in seg_rows)
    assert float(rows["Global MPR"]["value"]) == pytest.approx(p["mpr"]["global"], rel=1e-5)
    labels, affine = _read_nifti_labels(perfusion["stress"] / "perfusion_labels.nii.gz")
    lab, ijk_to_ras, names = scene.read_segmentation(str(perfusion["out"] / "segmentation.seg.nrrd"))
    np.testing.assert_array_equal(lab, labels[0])
    np.testing.assert_allclose(ijk_to_ras, affine, atol=1e-4)


def test_mpr_matches_truth(perfusion):
    ts, tr = perfusion["truth_stress"]["mbf_per_segment"], perfusion["truth_rest"]["mbf_per_segment"]
    mpr = perfusion["results"]["perfusion"]["mpr"]
    assert [s["id"] for s in mpr["segments"]] == list(range(1, 17))
    for s in mpr["segments"]:
        assert s["mpr"] == pytest.approx(ts[str(s["id"])] / tr[str(s["id"])], rel=0.05), s
    ratios = [ts[k] / tr[k] for k in ts]
    assert min(ratios) * 0.95 < mpr["global"] < max(ratios) * 1.05
    assert set(mpr["territories"]) == {"LAD", "RCA", "LCx"}


def test_rest_values_and_reserve_in_every_output(perfusion, tmp_path):
    """With a rest series, its own MBF stands beside the reserve made from it (results.json had
    only the ratio; results.csv had global MPR and MPRI alone), and results.csv holds every
    per-segment and territory value of results.json; the report names them under its title."""
    from CardiacAISegLib import analyze
    from CardiacAISegLib.report import summary_lines

    tr = perfusion["truth_rest"]["mbf_per_segment"]
    p = perfusion["results"]["perfusion"]
    rest = p["rest"]
    assert [s["id"] for s in rest["segments"]] == list(range(1, 17))
    errors = {s["id"]: s["mbf_ml_min_g"] / tr[str(s["id"])] - 1 for s in rest["segments"]}
    assert max(abs(e) for e in errors.values()) < 0.05, errors     # issue 9's per-segment bound
    assert p["mpr"]["global"] == pytest.approx(p["global_mbf_ml_min_g"] / rest["global_mbf_ml_min_g"], rel=1e-6)
    # the bullseye is the stress series' (its title said "MBF" beside stress and rest values; probe 73)
    assert perfusion["results"]["bullseye"] == {"measure": "mbf", "label": "Stress MBF (mL/min/g)"}

    rows = {r["key"]: r for r in _csv_rows(perfusion["out"] / "results.csv")}
    assert float(rows["rest_global_mbf_ml_min_g"]["value"]) == pytest.approx(rest["global_mbf_ml_min_g"], rel=1e-5)
    for s, r, m in zip(p["segments"], rest["segments"], p["mpr"]["segments"]):
        assert float(rows[f"rest_mbf_ml_min_g_seg{s['id']}"]["value"]) == pytest.approx(r["mbf_ml_min_g"], rel=1e-5)
        assert float(rows[f"mpr_seg{s['id']}"]["value"]) == pytest.approx(m["mpr"], rel=1e-5)
    for t in ("LAD", "RCA", "LCx"):
        assert float(rows[f"mbf_ml_min_g_{t}"]["value"]) == pytest.approx(p["territories"][t]["mbf_ml_min_g"], rel=1e-5)
        assert float(rows[f"rest_mbf_ml_min_g_{t}"]["value"]) == pytest.approx(rest["territories"][t]["mbf_ml_min_g"], rel=1e-5)
        assert float(rows[f"mpr_{t}"]["value"]) == pytest.approx(p["mpr"]["territories"][t], rel=1e-5)
    sq = p["semiquantitative"]["segments"]
    assert sq and all(float(rows[f"time_to_peak_s_seg{s['id']}"]["value"]) == pytest.approx(s["time_to_peak_s"], rel=1e-5)
                      and float(rows[f"upslope_seg{s['id']}"]["value"]) == pytest.approx(s["upslope"], rel=1e-5)
                      for s in sq)
    for sid, v in p["mpri"]["segments"].items():
        assert float(rows[f"mpri_seg{sid}"]["value"]) == pytest.approx(v, rel=1e-5)
    for key in ("upslope", "relative_upslope", "peak_enhancement", "time_to_peak_s"):
        assert float(rows[f"rest_{key}_global"]["value"]) == pytest.approx(rest["semiquantitative"]["global"][key], rel=1e-5)
        # per segment too: the CSV held the MPRI per segment, not the rest values it is made from (probe 69)
        for s in rest["semiquantitative"]["segments"]:
            assert float(rows[f"rest_{key}_seg{s['id']}"]["value"]) == pytest.approx(s[key], rel=1e-5, abs=1e-9)

    # the same run in-process, its bullseye on relative upslope: the choice is recorded
    st, rs = perfusion["stress"], perfusion["stress"].parent / "rest"
    a, _ = analyze.run(st / "perfusion.nii.gz", tmp_path / "out", kind="perfusion", labels=st / "perfusion_labels.nii.gz",
                       aif=st / "aif.csv", dt=perfusion["truth_dt_s"], rest=rs / "perfusion.nii.gz",
                       rest_labels=rs / "perfusion_labels.nii.gz", rest_aif=rs / "aif.csv", bullseye="relative_upslope",
                       reports="none")
    assert json.loads((tmp_path / "out" / "results.json").read_text())["bullseye"]["measure"] == "relative_upslope"
    assert a.bullseye_format == "{:.3f}"     # the table's precision of relative upslope (the report drew 2)
    lines = summary_lines(a)
    assert lines[0].startswith(f"stress MBF {p['global_mbf_ml_min_g']:.2f} mL/min/g (LAD "), lines
    assert f"rest MBF {rest['global_mbf_ml_min_g']:.2f} mL/min/g" in lines[1] and f"MPR {p['mpr']['global']:.2f}" in lines[1]


def test_relative_upslope_is_read_against_the_images_lv_blood_not_the_given_aifs_scale(perfusion, tmp_path):
    """Relative upslope (and MPRI) divided the wall's upslope by the given AIF's: an AIF file 1.3
    times the LV blood read them 23 % low with QC pass (probe 69). They are read against the LV
    blood pool of the same images, whatever AIF the MBF fit is given."""
    from CardiacAISegLib import analyze

    st = perfusion["stress"]
    aif = np.loadtxt(st / "aif.csv", delimiter=",", skiprows=1, ndmin=2)
    scaled = tmp_path / "aif_x1.3.csv"
    header = (st / "aif.csv").read_text().splitlines()[0]
    np.savetxt(scaled, np.column_stack([aif[:, 0], 1.3 * aif[:, 1]]) if aif.shape[1] > 1 else 1.3 * aif,
               delimiter=",", header=header, comments="")
    sq = {}
    for name, given in (("as given", st / "aif.csv"), ("x1.3", scaled)):
        a, _ = analyze.run(st / "perfusion.nii.gz", tmp_path / name, kind="perfusion", labels=st / "perfusion_labels.nii.gz",
                           aif=given, dt=perfusion["truth_dt_s"], reports="none")
        sq[name] = a.perfusion["semiquantitative"]
    assert sq["x1.3"]["reference"] == "LV blood pool of the images"
    assert sq["x1.3"]["global"]["relative_upslope"] == pytest.approx(sq["as given"]["global"]["relative_upslope"], rel=1e-9)
    assert [s["relative_upslope"] for s in sq["x1.3"]["segments"]] == \
        pytest.approx([s["relative_upslope"] for s in sq["as given"]["segments"]], rel=1e-9)


def test_no_mpri_from_relative_upslopes_read_against_two_references(perfusion, tmp_path):
    """Stress with its LV pool labelled, rest without one: the rest's relative upslope is read
    against its AIF, the stress's against its LV blood, and their ratio carried the AIF's scale;
    MPRI is left out and said (the review of probe 69's change)."""
    import nibabel as nib

    from CardiacAISegLib import analyze

    st, rs = perfusion["stress"], perfusion["stress"].parent / "rest"
    img = nib.load(str(rs / "perfusion_labels.nii.gz"))
    data = np.asarray(img.dataobj).copy()
    data[data == 3] = 0   # ACDC's LV blood pool gone: myocardium (and RV) only
    nib.save(nib.Nifti1Image(data, img.affine, img.header), str(tmp_path / "rest_no_lv.nii.gz"))
    a, _ = analyze.run(st / "perfusion.nii.gz", tmp_path / "out", kind="perfusion", labels=st / "perfusion_labels.nii.gz",
                       aif=st / "aif.csv", dt=perfusion["truth_dt_s"], rest=rs / "perfusion.nii.gz",
                       rest_labels=tmp_path / "rest_no_lv.nii.gz", rest_aif=rs / "aif.csv", reports="none")
    assert a.rest.perfusion["semiquantitative"]["reference"].startswith("the AIF")
    assert "mpri" not in a.perfusion and any("MPRI not given" in w for w in a.warnings), a.warnings


@pytest.fixture(scope="module")
def stress_and_rest_at_two_heart_rates(tmp_path_factory):
    """A stress series at 0.6 s per frame (its NIfTI says so) and a rest series at 0.9 s whose
    file has no time unit (a converter's 4D file: the step is no frame time)."""
    import nibabel as nib

    from CardiacAISegLib.phantoms.phantom import write_phantom

    root = tmp_path_factory.mktemp("two-rates")
    _, _, truth_s = write_phantom("perfusion", root / "stress", seed=3, dt=0.6, noise=NOISE)
    _, _, truth_r = write_phantom("perfusion", root / "rest", seed=8, dt=0.9, stress=False, noise=NOISE)
    untimed = nib.load(str(root / "rest" / "perfusion.nii.gz"))
    untimed.header.set_xyzt_units("mm")          # time unit unknown
    nib.save(untimed, str(root / "rest" / "untimed.nii.gz"))
    mpr = {str(k): truth_s["mbf_per_segment"][k] / truth_r["mbf_per_segment"][k] for k in truth_s["mbf_per_segment"]}
    return root, mpr


def _stress_with_rest(root, out, rest_name, *flags):
    return cli.main([str(a) for a in (
        "analyze", root / "stress" / "perfusion.nii.gz", "--kind", "perfusion", "--labels",
        root / "stress" / "perfusion_labels.nii.gz", "--aif", root / "stress" / "aif.csv",
        "--rest", root / "rest" / rest_name, "--rest-labels", root / "rest" / "perfusion_labels.nii.gz",
        "--rest-aif", root / "rest" / "aif.csv", "--out", out, "--quiet", *flags)])


def test_rest_series_has_its_own_frame_interval(stress_and_rest_at_two_heart_rates, tmp_path, capsys):
    """Stress and rest are acquired at two heart rates: the stress --dt is not the rest's. Given
    to both, a rest series at 0.9 s read at 0.6 s had its MBF x1.5 and the MPR x0.67, QC pass."""
    root, true_mpr = stress_and_rest_at_two_heart_rates
    # the rest file has no frame times: refused, naming the rest's own flag, even with --dt given
    rc = _stress_with_rest(root, tmp_path / "refused", "untimed.nii.gz", "--dt", "0.6")
    err = capsys.readouterr().err
    assert rc == 2 and "untimed.nii.gz" in err and "--rest-dt" in err, err
    assert not (tmp_path / "refused" / "results.json").exists()
    # each series with its own interval: the rest's from --rest-dt, or from its file
    for name, flags in (("given", ("--dt", "0.6", "--rest-dt", "0.9")), ("from-file", ("--dt", "0.6"))):
        rest_file = "untimed.nii.gz" if name == "given" else "perfusion.nii.gz"
        assert _stress_with_rest(root, tmp_path / name, rest_file, *flags) == 0
        r = json.loads((tmp_path / name / "results.json").read_text())
        mpr = {str(s["id"]): s["mpr"] for s in r["perfusion"]["mpr"]["segments"]}
        assert all(mpr[k] == pytest.approx(true_mpr[k], rel=0.05) for k in true_mpr), (name, mpr, true_mpr)
        assert not any("differs from the frame interval" in w for w in r["warnings"]), r["warnings"]


def test_rest_flags_need_a_rest_series(tmp_path, capsys):
    rc = cli.main(["analyze", str(tmp_path), "--rest-dt", "0.9", "--out", str(tmp_path / "out"), "--quiet"])
    err = capsys.readouterr().err
    assert rc == 2 and "--rest-dt" in err and "--rest" in err, err
    # --rest-series likewise (it was ignored without --rest, probe 34), and it chooses in a folder only
    rc = cli.main(["analyze", str(tmp_path), "--rest-series", "1101", "--out", str(tmp_path / "out"), "--quiet"])
    err = capsys.readouterr().err
    assert rc == 2 and "--rest-series: goes with --rest" in err, err
    (tmp_path / "rest.nii.gz").write_bytes(b"")
    rc = cli.main(["analyze", str(tmp_path), "--rest", str(tmp_path / "rest.nii.gz"), "--rest-series", "1101",
                   "--out", str(tmp_path / "out"), "--quiet"])
    err = capsys.readouterr().err
    assert rc == 2 and "--rest-series: chooses a series in a DICOM folder" in err, err

def test_same_input_gives_the_same_bytes(cine, tmp_path):
    """Determinism: two `cardiacaiseg analyze` processes write byte-identical outputs (results.json
    differs only in timing). Within one process Slicer numbers subject-hierarchy items globally,
    so scene.mrb is compared across processes, as users and cohort workers run it."""
    import subprocess
    import sys

    runs = []
    for name in ("first", "second"):
        out = tmp_path / name
        subprocess.run([sys.executable, "-m", "CardiacAISegLib.cli", "analyze", str(cine["phantom"] / "cine.nii.gz"),
                        "--labels", str(cine["phantom"] / "cine_labels.nii.gz"), "--out", str(out), "--quiet", "--scene"],
                       check=True, capture_output=True)
        runs.append(out)
    for name in ("segmentation.seg.nrrd", "segmentation_es.seg.nrrd", "report.png", "results.csv", "scene.mrb"):
        assert (runs[0] / name).read_bytes() == (runs[1] / name).read_bytes(), name
    first, second = (json.loads((d / "results.json").read_text()) for d in runs)
    first.pop("timing_s"), second.pop("timing_s")
    assert first == second


@pytest.mark.parametrize("kind", ["cine", "perfusion"])
def test_saved_scene_reopens_as_the_live_analysis(tmp_path, kind):
    """scene.mrb holds the parameter node and what the images cannot say (kind, AIF, units): a
    fresh Logic on the reopened scene rebuilds the same measures and stays editable."""
    from CardiacAISegLib import scene
    from CardiacAISegLib.logic import CardiacAISegLogic
    from CardiacAISegLib.phantoms.phantom import write_phantom

    ph, out = tmp_path / "ph", tmp_path / "out"
    write_phantom(kind, ph, seed=4, **({"n_frames": 40} if kind == "perfusion" else {}))
    if kind == "cine":
        _cli("analyze", ph / "cine.nii.gz", "--labels", ph / "cine_labels.nii.gz", "--out", out, "--quiet", "--scene")
    else:
        _cli("analyze", ph / "perfusion.nii.gz", "--aif", ph / "aif.csv", "--labels", ph / "perfusion_labels.nii.gz",
             "--out", out, "--quiet", "--scene")
    saved = json.loads((out / "results.json").read_text())
    logic = CardiacAISegLogic(scene.read_mrb(out / "scene.mrb"))
    a = logic.restoreFromParameterNode()
    assert a is not None and a.kind == kind
    if kind == "cine":
        for key in ("lv_edv_ml", "lv_esv_ml", "lv_mass_g", "rv_edv_ml"):
            assert a.cine[key] == pytest.approx(saved["cine"][key], rel=1e-4), key
    else:
        assert a.perfusion["global_mbf_ml_min_g"] == pytest.approx(saved["perfusion"]["global_mbf_ml_min_g"], rel=1e-3)
    assert a.qc["status"] == saved["qc"]["status"]
    # live: an edit recomputes what depends on it
    lab = a.labels[a.reference_frame].copy()
    rows, cols, slices = np.nonzero(np.moveaxis(lab == 2, 0, -1))
    lab[slices[:40], rows[:40], cols[:40]] = 0   # 40 myocardial pixels erased
    before = a.cine["lv_mass_g"] if kind == "cine" else a.perfusion["n_pixels"]
    a.set_labels(a.reference_frame, lab)
    after = a.cine["lv_mass_g"] if kind == "cine" else a.perfusion["n_pixels"]
    assert after < before


@pytest.mark.parametrize("kind", ["cine", "perfusion"])
def test_cli_logic_and_web_session_give_the_same_numbers(tmp_path, kind):
    """One pipeline: the same study through `cardiacaiseg analyze`, the Slicer Logic and the web
    GUI's Session gives the same results.json numbers (measures, segments, QC)."""
    from CardiacAISegLib import scene
    from CardiacAISegLib.logic import CardiacAISegLogic
    from CardiacAISegLib.phantoms.phantom import write_phantom
    from CardiacAISegLib.results import results_document
    from CardiacAISegLib.webgui.session import LABELS_CHOICE, Session

    ph = tmp_path / "ph"
    write_phantom(kind, ph, seed=6, **({"n_frames": 40} if kind == "perfusion" else {}))
    image = ph / ("cine.nii.gz" if kind == "cine" else "perfusion.nii.gz")
    labels = ph / ("cine_labels.nii.gz" if kind == "cine" else "perfusion_labels.nii.gz")
    extra = {} if kind == "cine" else {"aif": ph / "aif.csv"}
    _cli("analyze", image, "--labels", labels, "--out", tmp_path / "cli", "--quiet",
         *[x for k, v in extra.items() for x in (f"--{k}", v)])
    cli_doc = json.loads((tmp_path / "cli" / "results.json").read_text())

    logic = CardiacAISegLogic(scene.new_scene())
    logic.loadStudy(image, labels=labels, **extra)
    logic_doc = results_document(logic.runSegmentation(useExistingLabels=True), image)

    session = Session(ph)
    session.open_path(image.name, labels=labels.name, aif=extra["aif"].name if extra else None)
    web_doc = results_document(session.run(LABELS_CHOICE), image)

    def numbers(doc):
        return {key: doc[key] for key in ("kind", "cine", "perfusion", "rv_insertion", "qc")}

    want = numbers(cli_doc)
    for doc in (logic_doc, web_doc):
        assert _close(json.loads(json.dumps(numbers(doc))), want)


def _close(a, b, rel=1e-6):
    """Nested equality with a relative tolerance on floats (JSON round trips keep 17 digits)."""
    if isinstance(a, dict):
        assert set(a) == set(b), (sorted(a), sorted(b))
        return all(_close(a[k], b[k], rel) for k in a)
    if isinstance(a, list):
        assert len(a) == len(b)
        return all(_close(x, y, rel) for x, y in zip(a, b))
    if isinstance(a, float) and isinstance(b, float):
        assert a == pytest.approx(b, rel=rel, abs=1e-9)
        return True
    assert a == b, (a, b)
    return True


def test_perfusion_labels_that_differ_between_frames_say_which_are_not_used():
    """A 4D perfusion label map edited on one frame only: one mask serves every frame, and the
    edit was left out without a word (probe round 13)."""
    from CardiacAISegLib.labels import MYO
    from CardiacAISegLib.phantoms.phantom_perfusion import make_perfusion_phantom
    from CardiacAISegLib.pipeline import compute_analysis

    study, _ = make_perfusion_phantom(seed=1, noise=NOISE)
    mask = study.labels[0]
    edited = mask.copy()
    edited[1][edited[1] == MYO] = 0
    same = compute_analysis(study, labels={0: mask, 40: mask.copy()})
    assert not any("one mask" in w for w in same.warnings)
    a = compute_analysis(study, labels={0: mask, 40: edited})
    assert any("frame(s) 40, which are not used" in w for w in a.warnings), a.warnings
    assert a.results()["perfusion"]["global_mbf_ml_min_g"] == pytest.approx(
        same.results()["perfusion"]["global_mbf_ml_min_g"], rel=1e-9)


def test_reopened_scene_of_an_unoriented_study_keeps_its_aha_levels(tmp_path):
    """An ACDC folder (a NIfTI without a real patient direction: base and apex from the anatomy):
    reopened from scene.mrb, its affine was taken as real, the AHA levels came out upside down
    and the table's per-segment wall thickness no longer matched results.csv (probe round 14)."""
    from bad_corpus import acdc_folder, make_base

    from CardiacAISegLib import scene
    from CardiacAISegLib.logic import CardiacAISegLogic

    base = make_base(tmp_path / "base")
    folder = acdc_folder(base, tmp_path / "patient001", "ED: 1\nES: 2\nNbFrame: 2\n")
    out = tmp_path / "out"
    _cli("analyze", folder, "--labels", "study", "--out", out, "--quiet", "--scene")
    saved = {r["measure"]: r["value"] for r in _csv_rows(out / "results.csv")}
    logic = CardiacAISegLogic(scene.read_mrb(out / "scene.mrb"))
    assert logic.restoreFromParameterNode() is not None and not logic.study.orientation_known
    live = {r["measure"]: r["value"] for r in scene.table_rows(logic.getNodeParameter("tableID"))}
    thickness = [m for m in saved if m.startswith("Wall thickness")]
    assert len(thickness) >= 12
    for m in thickness:
        assert live[m] == pytest.approx(float(saved[m]), rel=1e-6, nan_ok=True), m


def test_the_rest_series_reports_its_progress(perfusion, tmp_path):
    """Probe 94: the rest series' reading and measuring reported nothing, so the bar appeared only
    when the stress began (a large DICOM rest series sat without one)."""
    from CardiacAISegLib import analyze

    stress, rest = perfusion["stress"], perfusion["stress"].parent / "rest"
    said = []
    analyze.run(stress / "perfusion.nii.gz", tmp_path / "out", labels=stress / "perfusion_labels.nii.gz",
                aif=stress / "aif.csv", dt=perfusion["truth_dt_s"], rest=rest / "perfusion.nii.gz",
                rest_labels=rest / "perfusion_labels.nii.gz", rest_aif=rest / "aif.csv",
                progress=lambda done, total, message="": said.append(message))
    rest_said = [m for m in said if m.startswith("rest series: ")]
    assert rest_said and said.index(rest_said[0]) < min(i for i, m in enumerate(said) if not m.startswith("rest series: ")
                                                         and "measuring" in m), said


def test_a_rest_mask_drawn_by_the_network_is_named_and_written(perfusion, tmp_path):
    """Stress labels given, the rest segmented by the network: results.json said "model": null and
    nothing named the network that drew the rest's mask (probe 93); the mask is written too."""
    from CardiacAISegLib import analyze
    from CardiacAISegLib.models import registry

    if not registry.list_models("perfusion"):
        pytest.skip("no perfusion network installed")
    stress, rest = perfusion["stress"], perfusion["stress"].parent / "rest"
    analyze.run(stress / "perfusion.nii.gz", tmp_path / "out", labels=stress / "perfusion_labels.nii.gz",
                aif=stress / "aif.csv", dt=perfusion["truth_dt_s"], rest=rest / "perfusion.nii.gz", rest_aif=rest / "aif.csv")
    doc = json.loads((tmp_path / "out" / "results.json").read_text())
    assert doc["model"] is None and doc["rest_model"]["name"] in {c["name"] for c in registry.list_models("perfusion")}
    assert (tmp_path / "out" / "rest_segmentation.seg.nrrd").is_file()
