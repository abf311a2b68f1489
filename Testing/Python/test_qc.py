"""Plausibility checks (qc.py): each flag raised by a phantom made wrong in one known way, and
never raised by the clean phantom; the flags reach results.json, results.csv and --strict."""
import json

import numpy as np
import pytest

from CardiacAISegLib import cli
from CardiacAISegLib.analysis import Analysis
from CardiacAISegLib.labels import LV, MYO, RV
from CardiacAISegLib.phantom_cine import make_cine_phantom
from CardiacAISegLib.phantom_perfusion import make_perfusion_phantom


def codes(analysis, severity="review"):
    return {f["code"] for f in analysis.qc["flags"] if f["severity"] == severity}


@pytest.fixture(scope="module")
def cine():
    study, truth = make_cine_phantom(seed=2, n_frames=12, n_slices=10, size=96)
    return study, truth


@pytest.fixture(scope="module")
def perfusion():
    return make_perfusion_phantom(seed=4, n_frames=50, noise=0.005)


def _cine_analysis(study, labels=None, **changes):
    from copy import copy

    st = copy(study)
    st.provenance = dict(study.provenance)
    for k, v in changes.items():
        setattr(st, k, v)
    return Analysis(st, labels if labels is not None else study.labels).run()


def test_clean_phantoms_pass(cine, perfusion):
    study, _ = cine
    a = _cine_analysis(study)
    assert a.qc["status"] == "pass" and codes(a) == set()
    p = Analysis(perfusion[0], perfusion[0].labels).run()
    assert p.qc["status"] == "pass" and codes(p) == set()


def test_ed_es_swapped(cine):
    study, truth = cine
    a = _cine_analysis(study, ed_frame=truth["es_frame"], es_frame=truth["ed_frame"])   # as a swapped Info.cfg says
    assert "ED_ES_SWAPPED" in codes(a) and a.cine["lv_ef_pct"] < 0
    assert "LV_EF_RANGE" not in codes(a)   # one cause, one flag


def test_lost_spacing_gives_volume_and_mass_flags(cine):
    study, _ = cine
    m = study.ijk_to_ras.copy()
    m[:3, :3] /= np.linalg.norm(m[:3, :3], axis=0)   # 1 mm voxels: what a header without spacing gives
    a = _cine_analysis(study, ijk_to_ras=m)
    assert {"LV_EDV_RANGE", "LV_MASS_RANGE"} <= codes(a)
    assert a.qc["status"] == "review"


def test_huge_spacing_gives_edv_flag(cine):
    study, _ = cine
    m = study.ijk_to_ras.copy()
    m[:3, :3] *= 3.0
    assert "LV_EDV_RANGE" in codes(_cine_analysis(study, ijk_to_ras=m))


def test_rv_missing_at_es(cine):
    study, truth = cine
    labels = {t: m.copy() for t, m in study.labels.items()}
    es = truth["es_frame"]
    labels[es][labels[es] == RV] = 0
    a = _cine_analysis(study, labels)
    assert "RV_MISSING_MID_ES" in codes(a)
    assert "RV_EF_RANGE" in codes(a)          # RV EF near 100 % is the consequence


def test_single_slice_is_not_a_volume(cine):
    study, truth = cine
    k = int(np.argmax((study.labels[truth["ed_frame"]] == LV).sum(axis=(1, 2))))
    labels = {t: m.copy() for t, m in study.labels.items()}
    for m in labels.values():
        keep = m[k].copy()
        m[:] = 0
        m[k] = keep
    a = _cine_analysis(study, labels)
    assert "COVERAGE_SHORT" in codes(a)


def test_rv_away_from_lv_still_gives_volumes(cine):
    """The RV never touches the LV: volumes, EF and mass still come; insertion points are estimated
    (a textbook arc towards the RV) and flagged for review."""
    study, _ = cine
    labels = {}
    for t, m in study.labels.items():
        m = m.copy()
        rv = m == RV
        m[rv] = 0
        m[:, :4, :4] = RV              # a lone RV blob in a corner: never within 10 mm of the LV
        labels[t] = m
    a = _cine_analysis(study, labels)
    assert "INSERTION_POINTS_ESTIMATED" in codes(a)
    assert a.cine["lv_edv_ml"] > 0 and a.cine["lv_mass_g"] > 0
    # a 120-degree arc centred on the RV: segments exist, and the handles can be dragged
    assert a.sectors is not None and len(a.segment_values) == 16
    assert all(abs(p["septal_arc_deg"] - 120) < 1 for p in a.insertion if p.get("warning"))


def test_no_rv_at_all_still_gives_volumes(cine):
    study, _ = cine
    labels = {t: np.where(m == RV, 0, m).astype(np.uint8) for t, m in study.labels.items()}
    a = _cine_analysis(study, labels)
    assert a.cine["lv_edv_ml"] > 0 and a.cine["rv_edv_ml"] == 0 and a.sectors is None
    assert "RV_MISSING_MID_ED" in codes(a)


def test_mbf_range_from_aif_in_wrong_units(perfusion):
    study, _ = perfusion
    from copy import copy

    st = copy(study)
    st.aif = study.aif * 1000.0   # µmol/L given as mmol/L
    a = Analysis(st, study.labels).run()
    assert {"MBF_RANGE", "AIF_UNITS"} <= codes(a)
    assert a.perfusion["global_mbf_ml_min_g"] < 0.2


def test_aif_spike(perfusion):
    study, _ = perfusion
    from copy import copy

    st = copy(study)
    spike = np.full_like(study.aif, float(np.median(study.aif[:5])))
    spike[25] = study.aif.max()
    st.aif = spike
    assert "AIF_SPIKE" in codes(Analysis(st, study.labels).run())


def test_aif_late(perfusion):
    study, _ = perfusion
    from copy import copy

    st = copy(study)
    st.aif = np.r_[np.full(15, study.aif[0]), study.aif[:-15]]   # AIF 15 frames late
    assert "AIF_LATE" in codes(Analysis(st, study.labels).run())


def test_rest_flags_carry_into_stress(perfusion):
    study, _ = perfusion
    from copy import copy

    rest = copy(study)
    rest.aif = study.aif * 1000.0
    rest_a = Analysis(rest, study.labels).run()
    stress_a = Analysis(study, study.labels, rest=rest_a).run()
    assert "REST_MBF_RANGE" in codes(stress_a) and stress_a.qc["status"] == "review"


def test_flags_in_outputs_and_strict_exit(tmp_path, capsys):
    """A cine phantom whose ES labels lost the RV: flags in results.json/csv, exit 3 only with --strict."""
    import nibabel as nib

    from CardiacAISegLib.phantom import write_phantom

    ph = tmp_path / "ph"
    write_phantom("cine", ph, seed=1)
    lab_img = nib.load(str(ph / "cine_labels.nii.gz"))
    lab = np.asarray(lab_img.dataobj).copy()
    truth = json.loads((ph / "truth.json").read_text())
    es = truth["es_frame"]
    lab[..., es][lab[..., es] == 1] = 0      # ACDC convention: 1 = RV
    nib.save(nib.Nifti1Image(lab, lab_img.affine, lab_img.header), str(ph / "broken_labels.nii.gz"))
    args = ["analyze", str(ph / "cine.nii.gz"), "--labels", str(ph / "broken_labels.nii.gz"), "--quiet"]
    assert cli.main(args + ["--out", str(tmp_path / "a")]) == 0
    doc = json.loads((tmp_path / "a" / "results.json").read_text())
    assert doc["qc"]["status"] == "review"
    assert "RV_MISSING_MID_ES" in {f["code"] for f in doc["qc"]["flags"]}
    csv_text = (tmp_path / "a" / "results.csv").read_text()
    assert "QC status: review" in csv_text and "QC RV_MISSING_MID_ES" in csv_text
    capsys.readouterr()
    assert cli.main(args + ["--out", str(tmp_path / "b"), "--strict"]) == 3
    err = capsys.readouterr().err
    assert "--strict" in err and "RV_MISSING_MID_ES" in err
    assert (tmp_path / "b" / "results.json").is_file()     # written for review


def test_manual_acdc_labels_pass_qc(shared_data):
    """No false alarms on expert labels of diseased hearts (2 patients per ACDC group): the ranges
    flag the implausible, not the abnormal."""
    from CardiacAISegLib.readers import load_study

    names = ["patient001", "patient002", "patient021", "patient023", "patient041", "patient043",
             "patient061", "patient062", "patient081", "patient083"]
    for name in names:
        folder = shared_data / "acdc" / name
        if not folder.is_dir():
            pytest.skip(f"{folder} not found")
        st = load_study(folder)
        a = Analysis(st, st.labels).run()
        assert a.qc["status"] == "pass", (name, a.qc["flags"])
