"""Slices stored in the other order than the affine says (re-stacked by a converter that kept the
affine): the affine decides which end is the base, so the apical ring was measured as the basal AHA
segments and the basal ring as the apical ones, with no flag (probe 108: a stress perfusion's
segments 1/3/5/14 off by +28/+25/-20/-23 %, the rest's MPR up to +46 %).
``geometry.slice_order_contradicts_affine`` weighs the ring sizes against the affine's base: the
LV narrows toward the apex, so a supposed basal third far smaller than the supposed apical third
contradicts it. The affine stays the decision; the evidence is for QC to show."""
import dataclasses

import nibabel as nib
import numpy as np
import pytest

from CardiacAISegLib import geometry
from CardiacAISegLib.phantoms.phantom import make_perfusion_phantom, write_phantom
from CardiacAISegLib.pipeline import compute_analysis
from CardiacAISegLib.readers import load_study
from CardiacAISegLib.readers.acdc import load_acdc_patient


def _restacked(study):
    """``study`` with its images and labels in the other slice order, its affine kept."""
    return dataclasses.replace(study, images=study.images[:, ::-1].copy(),
                               labels={t: lab[::-1].copy() for t, lab in study.labels.items()})


def _oblique(study):
    """An ACDC study (a scaled-identity affine: no patient orientation) given a scanner's oblique
    affine whose k runs base -> apex along the body's long axis, as its slices do."""
    k = geometry._BASE_TO_APEX_PRIOR
    i = np.cross(k, [0.0, 0.0, 1.0])
    i /= np.linalg.norm(i)
    j = np.cross(k, i)
    col_mm, row_mm, slice_mm = study.spacing
    m = np.eye(4)
    m[:3, 0], m[:3, 1], m[:3, 2] = i * col_mm, j * row_mm, k * slice_mm
    return dataclasses.replace(study, ijk_to_ras=m, orientation_known=True)


def test_a_perfusion_series_restacked_without_its_affine_is_measured_base_for_apex_and_said_to_be():
    study, truth = make_perfusion_phantom(seed=3)
    assert geometry.slice_order_contradicts_affine(study, study.labels[0]) is None
    restacked = _restacked(study)
    analysis = compute_analysis(restacked, labels=restacked.labels)
    # the analysis keeps the affine's base: slice 0, which now holds the apical ring
    assert analysis.levels[0] == "basal" and analysis.levels[2] == "apical"
    evidence = geometry.slice_order_contradicts_affine(analysis.study, analysis.labels[analysis.reference_frame])
    assert evidence is not None
    assert evidence["base_slice"] == 0 and evidence["basal_slices"] == [0] and evidence["apical_slices"] == [2]
    pixel_mm2 = study.spacing[0] * study.spacing[1]
    apical_ring = geometry._epi_areas(study.labels[0])[2] * pixel_mm2
    assert evidence["basal_area_mm2"] == pytest.approx(apical_ring)
    assert evidence["ratio"] < geometry.SLICE_ORDER_MAX_AREA_RATIO
    # what the user sees: a review flag naming the contradiction; none on the stack as stored
    flags = {f["code"]: f for f in analysis.qc["flags"]}
    assert flags["SLICE_ORDER_DOUBTFUL"]["severity"] == "review" and "slice 1" in flags["SLICE_ORDER_DOUBTFUL"]["message"]
    stored = compute_analysis(study, labels=study.labels)
    assert "SLICE_ORDER_DOUBTFUL" not in {f["code"] for f in stored.qc["flags"]}


def test_the_restacked_nifti_of_probe_108_is_said_to_contradict_its_affine(tmp_path):
    """The file as a converter writes it: the data's slice axis reversed, the header kept."""
    write_phantom("perfusion", tmp_path / "stress", seed=3, stress=True)
    for name, dtype in (("perfusion.nii.gz", np.float32), ("perfusion_labels.nii.gz", np.uint8)):
        image = nib.load(tmp_path / "stress" / name)
        out = nib.Nifti1Image(np.asarray(image.dataobj)[:, :, ::-1].astype(dtype), image.affine, image.header)
        nib.save(out, tmp_path / name)
    as_written = load_study(tmp_path / "stress" / "perfusion.nii.gz", labels=tmp_path / "stress" / "perfusion_labels.nii.gz",
                            aif=tmp_path / "stress" / "aif.csv")
    restacked = load_study(tmp_path / "perfusion.nii.gz", labels=tmp_path / "perfusion_labels.nii.gz",
                           aif=tmp_path / "stress" / "aif.csv")
    assert restacked.orientation_known
    assert geometry.slice_order_contradicts_affine(as_written) is None
    evidence = geometry.slice_order_contradicts_affine(restacked)
    assert evidence is not None and evidence["base_slice"] == 0
    assert evidence["basal_area_mm2"] < 0.7 * evidence["apical_area_mm2"]


def test_acdc_stacks_under_an_oblique_affine_contradict_it_only_when_restacked(shared_data):
    """Every ACDC patient's expert labels, ED and ES, under an affine that says the base is at slice
    0 (where ACDC's bases are): none contradicts it; restacked, every ED stack but patient047's (an
    apex as wide as its base: its ring sizes tell neither order) does."""
    flagged, caught, missed = [], 0, []
    for folder in sorted((shared_data / "acdc").glob("patient*")):
        study = _oblique(load_acdc_patient(folder))
        for frame in (study.ed_frame, study.es_frame):
            if geometry.slice_order_contradicts_affine(study, study.labels[frame]) is not None:
                flagged.append((folder.name, frame))
        evidence = geometry.slice_order_contradicts_affine(study, study.labels[study.ed_frame][::-1].copy())
        if evidence is not None:
            assert evidence["base_slice"] == 0
            caught += 1
        else:
            missed.append(folder.name)
    assert flagged == []
    assert missed == ["patient047"] and caught == 79


def test_no_evidence_where_the_affine_does_not_decide(shared_data):
    """ACDC's own affine carries no orientation: the ring sizes decide the base already, so
    reversed slices are measured right and nothing contradicts."""
    study = load_acdc_patient(shared_data / "acdc" / "patient001")
    assert not study.orientation_known
    restacked = _restacked(study)
    assert geometry.base_at_low_k(restacked, restacked.labels[restacked.ed_frame]) == (False, "area")
    assert geometry.slice_order_contradicts_affine(restacked, restacked.labels[restacked.ed_frame]) is None


def test_sunnybrook_contours_agree_with_its_dicom_orientation(shared_data):
    """The real oblique DICOM cine: its base is at the last slices, as its experts' rings say."""
    data = shared_data / "sunnybrook"
    study = load_study(data / "SC-HF-I-1_dicom", labels=data / "SC-HF-I-1_contours")
    ed = study.labels[study.ed_frame]
    assert geometry.base_at_low_k(study, ed) == (False, "affine")
    assert geometry.slice_order_contradicts_affine(study, ed) is None
    evidence = geometry.slice_order_contradicts_affine(study, ed[::-1].copy())
    assert evidence is not None and evidence["base_slice"] == study.n_slices - 1
