"""Geometry that used to be read silently wrong, and messages that name the culprit (issue 10).

Every reader validates its geometry in one place (readers/geometry_check.py): directions of
unit length and orthogonal, voxel sizes positive and plausible, the voxel size present at all,
slice gaps integrated by the true slice positions. Failures go through ``cardiacaiseg analyze``
(``cli.main``) and must end with one ``error:`` line naming the file and the problem; readable
inputs must give volumes that match the truth and warnings that reach results.json.
"""
import gzip
import json
import os
import shutil

import numpy as np
import pytest
from dicom_factory import write_dicom

from CardiacAISegLib import cli
from CardiacAISegLib.outputs import OUTPUT_FILES
from CardiacAISegLib.errors import CardiacInputError
from CardiacAISegLib.readers import load_study
from CardiacAISegLib.readers.geometry_check import slice_thicknesses_mm

AFFINE = np.diag([1.5, 1.5, 8.0, 1.0])
SIZE = 24


# ----------------------------------------------------------------------------- helpers
def _nifti(path, data, affine=AFFINE, dtype=np.float32, pixdim=None):
    import nibabel as nib

    img = nib.Nifti1Image(np.asarray(data).astype(dtype), affine)
    if pixdim is not None:                       # written as given: nibabel only fixes it on load
        img.header["pixdim"][1:1 + len(pixdim)] = pixdim
    nib.save(img, str(path))
    return path


def _lab2d(radius_lv=5.0):
    """ACDC convention (1 RV, 2 myocardium, 3 LV): LV disc, myocardial ring, RV crescent."""
    x, y = np.mgrid[0:SIZE, 0:SIZE]
    r = np.hypot(x - 11.5, y - 11.5)
    lab = np.zeros((SIZE, SIZE), np.uint8)
    lab[(r > radius_lv + 3) & (r <= radius_lv + 5.5) & (x < 8)] = 1
    lab[r <= radius_lv + 3] = 2
    lab[r <= radius_lv] = 3
    return lab


def _labels_4d(n_slices, radii=(5.0, 3.5)):
    """(x, y, slices, frames) ACDC labels: the same cross-section on every slice, ED then ES."""
    return np.stack([np.repeat(_lab2d(r)[:, :, None], n_slices, axis=2) for r in radii], axis=-1)


def _snapshot(folder):
    if not folder.exists():
        return None
    return {p.relative_to(folder).as_posix(): p.stat().st_mtime_ns for p in folder.rglob("*")}


def expect_failure(capsys, argv, out, *words, code=2):
    """Run `cardiacaiseg analyze ARGV --out OUT`: exit code, one error line with every word, OUT untouched."""
    before = _snapshot(out)
    rc = cli.main(["analyze", *map(str, argv), "--out", str(out), "--quiet"])
    err = capsys.readouterr().err
    assert rc == code, (rc, err)
    assert "Traceback" not in err
    lines = [ln for ln in err.splitlines() if ln.startswith("error:")]
    assert len(lines) == 1, err
    for w in words:
        assert str(w) in lines[0], (w, lines[0])
    assert _snapshot(out) == before
    return lines[0]


def analyze_ok(capsys, argv, out, *extra):
    rc = cli.main(["analyze", *map(str, argv), "--out", str(out), "--quiet", *extra])
    err = capsys.readouterr().err
    assert rc == 0, err
    assert "Traceback" not in err
    return json.loads((out / "results.json").read_text()), err


def _dcm(path, **kw):
    kw.setdefault("shape", (SIZE, SIZE))
    kw.setdefault("spacing", (1.5, 1.5))
    write_dicom(path, **kw)


def _dicom_stack(folder, z_positions, n_frames=2, start=1, **kw):
    """One image per (slice, frame); slices at ``z_positions`` mm; files 1.dcm, 2.dcm, ..."""
    folder.mkdir(parents=True, exist_ok=True)
    inst = start
    for z in z_positions:
        for t in range(n_frames):
            _dcm(folder / f"{inst}.dcm", ipp=(0, 0, float(z)), trigger=40.0 * t, instance=inst, value=inst, **kw)
            inst += 1
    return folder


# ---------------------------------------------------------------- DICOM orientation / spacing
def test_dicom_orientation_far_from_unit_length_is_refused(tmp_path, capsys):
    d = _dicom_stack(tmp_path / "dicom", [0, 8, 16], iop=(2, 0, 0, 0, 1, 0))
    expect_failure(capsys, [d], tmp_path / "out", d / "1.dcm", "ImageOrientationPatient", "unit")


def test_dicom_orientation_rows_and_columns_not_orthogonal_is_refused(tmp_path, capsys):
    c = np.sqrt(0.75)
    d = _dicom_stack(tmp_path / "dicom", [0, 8, 16], iop=(1, 0, 0, 0.5, c, 0))
    expect_failure(capsys, [d], tmp_path / "out", d / "1.dcm", "ImageOrientationPatient", "not orthogonal", "60.0 deg")


def test_dicom_orientation_slightly_off_is_renormalised_with_a_warning(tmp_path):
    # cosines rounded by a writer: 2 % long and 1 degree off orthogonal
    d = _dicom_stack(tmp_path / "dicom", [0, 8, 16], iop=(1.02, 0, 0, 0.0175, 1.0, 0))
    s = load_study(d)
    m = s.ijk_to_ras[:3, :3]
    np.testing.assert_allclose(np.linalg.norm(m, axis=0), (1.5, 1.5, 8.0), rtol=1e-9)
    assert abs(m[:, 0] @ m[:, 1]) < 1e-9                       # made orthogonal
    w = [x for x in s.provenance["warnings"] if "ImageOrientationPatient corrected" in x]
    assert w and "6 image(s)" in w[0] and "renormalised" in w[0] and "orthogonal" in w[0]


def test_dicom_pixel_spacing_that_differs_between_slices_is_refused(tmp_path, capsys):
    d = _dicom_stack(tmp_path / "dicom", [0, 8])
    _dcm(d / "9.dcm", ipp=(0, 0, 16.0), trigger=0.0, instance=9, spacing=(1.25, 1.25))
    _dcm(d / "10.dcm", ipp=(0, 0, 16.0), trigger=40.0, instance=10, spacing=(1.25, 1.25))
    expect_failure(capsys, [d], tmp_path / "out", d / "9.dcm", "PixelSpacing [1.25, 1.25]", "[1.5, 1.5]", "1.dcm",
                   "one pixel size")


@pytest.mark.parametrize("bad", [(0.0, 1.5), (-1.5, 1.5)])
def test_dicom_zero_or_negative_pixel_spacing_is_refused(tmp_path, capsys, bad):
    d = _dicom_stack(tmp_path / "dicom", [0, 8])
    _dcm(d / "5.dcm", ipp=(0, 0, 16.0), trigger=0.0, instance=5, spacing=bad)
    word = "zero" if bad[0] == 0 else "negative"
    expect_failure(capsys, [d], tmp_path / "out", d / "5.dcm", "PixelSpacing", f"{bad[0]:g}", word, "positive millimetres")


# ------------------------------------------------------------------- volume-file spacing
def test_nifti_without_qform_sform_and_unit_pixdim_is_refused_for_images_only(tmp_path, capsys):
    """nibabel's default header (spacing never written) gave EDV 5 mL; an image like that is
    refused, while a label map without geometry is used on the image's grid with a warning."""
    data = np.random.default_rng(0).uniform(0, 100, (SIZE, SIZE, 3, 2))
    lost = _nifti(tmp_path / "lost.nii.gz", data, affine=None)
    labels = _nifti(tmp_path / "labels.nii.gz", _labels_4d(3), dtype=np.uint8)
    expect_failure(capsys, [lost, "--labels", labels], tmp_path / "out", lost, "no qform or sform", "1 x 1 x 1 mm",
                   "voxel size")

    img = _nifti(tmp_path / "cine.nii.gz", data)
    bare_labels = _nifti(tmp_path / "bare_labels.nii.gz", _labels_4d(3), affine=None, dtype=np.uint8)
    doc, err = analyze_ok(capsys, [img, "--labels", bare_labels], tmp_path / "out2")
    assert doc["cine"]["lv_edv_ml"] == pytest.approx((_lab2d() == 3).sum() * 3 * 1.5 * 1.5 * 8 / 1000)
    assert any("bare_labels.nii.gz" in w and "no voxel size" in w for w in doc["warnings"])


def test_an_unused_form_that_disagrees_with_the_one_in_use_is_flagged(tmp_path, capsys):
    """A 4D cine whose qform and pixdim said 4 mm slices, beside an unused sform (code 0) of the
    scanner's 8 mm, read EDV and mass 50 % low with QC pass (probe 51): the numbers follow the
    form in use, and VOXEL_SIZE_DISAGREES names both. A plain nibabel file, and one whose unused
    sform is the identity writers leave, raise nothing."""
    import nibabel as nib

    data = np.random.default_rng(0).uniform(0, 100, (SIZE, SIZE, 3, 2)).astype(np.float32)
    labels = _nifti(tmp_path / "labels.nii.gz", _labels_4d(3), dtype=np.uint8)
    img = nib.Nifti1Image(data, AFFINE)
    img.set_qform(np.diag([1.5, 1.5, 4.0, 1.0]), code=1)
    img.set_sform(AFFINE, code=0)
    nib.save(img, str(tmp_path / "stale.nii.gz"))
    doc, _ = analyze_ok(capsys, [tmp_path / "stale.nii.gz", "--labels", labels], tmp_path / "out")
    flag = next(f for f in doc["qc"]["flags"] if f["code"] == "VOXEL_SIZE_DISAGREES")
    assert "qform gives voxels of [1.5, 1.5, 4.0] mm" in flag["message"] and "unused sform (code 0) [1.5, 1.5, 8.0]" in flag["message"]
    assert doc["cine"]["lv_edv_ml"] == pytest.approx((_lab2d() == 3).sum() * 3 * 1.5 * 1.5 * 4 / 1000)   # the form in use
    plain = nib.Nifti1Image(data, AFFINE)
    plain.set_sform(np.eye(4), code=0)
    nib.save(plain, str(tmp_path / "plain.nii.gz"))
    _nifti(tmp_path / "cine.nii.gz", data)
    for name in ("plain.nii.gz", "cine.nii.gz"):
        doc, _ = analyze_ok(capsys, [tmp_path / name, "--labels", labels], tmp_path / f"out_{name[:5]}")
        assert "VOXEL_SIZE_DISAGREES" not in {f["code"] for f in doc["qc"]["flags"]}, name


@pytest.mark.parametrize("pixdim, word", [((-1.5, 1.5, 8.0), "negative"), ((0.0, 1.5, 8.0), "zero")])
def test_nifti_negative_or_zero_pixdim_is_refused(tmp_path, capsys, monkeypatch, pixdim, word):
    import logging

    # nibabel logs its own fix-up of such headers through a handler bound to the stderr of the
    # test that first imported it (closed by now under pytest): keep that out of this test
    monkeypatch.setattr(logging.getLogger("nibabel.global"), "disabled", True)
    f = _nifti(tmp_path / "cine.nii.gz", np.ones((SIZE, SIZE, 3, 2)), affine=None, pixdim=pixdim)
    expect_failure(capsys, [f], tmp_path / "out", f, "pixdim", word, f"{pixdim[0]:g}")


def test_metaimage_negative_element_spacing_is_refused(tmp_path, capsys):
    arr = np.ones((3, 4, 5), np.uint16)
    (tmp_path / "v.raw").write_bytes(arr.tobytes())
    mhd = tmp_path / "v.mhd"
    mhd.write_text("ObjectType = Image\nNDims = 3\nBinaryData = True\nBinaryDataByteOrderMSB = False\n"
                   "ElementSpacing = 1.5 -1.5 8\nDimSize = 5 4 3\nElementType = MET_USHORT\nElementDataFile = v.raw\n")
    expect_failure(capsys, [mhd], tmp_path / "out", mhd, "ElementSpacing", "-1.5", "negative")


def test_spacing_in_metres_is_refused_with_the_value(tmp_path, capsys):
    f = _nifti(tmp_path / "metres.nii.gz", np.ones((SIZE, SIZE, 3, 2)), affine=np.diag([0.0015, 0.0015, 0.008, 1]))
    expect_failure(capsys, [f], tmp_path / "out", f, "spacing 0.0015 mm", "0.1-50 mm", "metres")


def test_complex_nifti_is_refused_naming_the_dtype(tmp_path, capsys):
    f = _nifti(tmp_path / "complex.nii.gz", np.ones((SIZE, SIZE, 3, 2)) * (1 + 2j), dtype=np.complex64)
    expect_failure(capsys, [f], tmp_path / "out", f, "complex-valued", "complex64", "magnitude")


# --------------------------------------------------------------- slice gaps: true positions
def test_slice_thicknesses_share_a_missing_slice_between_its_neighbours():
    assert slice_thicknesses_mm([0, 8, 16, 24]) is None                  # regular: the affine is exact
    w = slice_thicknesses_mm([0, 8, 24, 32])                             # the slice at 16 mm is missing
    np.testing.assert_allclose(w, [8, 12, 12, 8])
    assert w.sum() == pytest.approx(4 * 8 + 8)                          # the lost slice is still counted


def test_dicom_stack_with_a_missing_slice_keeps_the_true_volume(tmp_path, capsys):
    """10 slices 8 mm apart, the 5th lost in export: volumes are integrated by the true slice
    positions (was: 9 slices x 8 mm, 10 % low, no word) and the gap is reported."""
    z = [8.0 * k for k in range(10) if k != 4]
    d = _dicom_stack(tmp_path / "dicom", z)
    study = load_study(d)
    assert study.n_slices == 9 and study.provenance["slice_positions_mm"] == z
    labels = _nifti(tmp_path / "labels.nii.gz", _labels_4d(9), affine=study.ijk_to_ras, dtype=np.uint8)
    doc, err = analyze_ok(capsys, [d, "--labels", labels], tmp_path / "out")
    voxel_ml = 1.5 * 1.5 * 8 / 1000
    truth_edv = (_lab2d(5.0) == 3).sum() * 10 * voxel_ml                # constant cross-section over 80 mm
    truth_esv = (_lab2d(3.5) == 3).sum() * 10 * voxel_ml
    assert doc["cine"]["lv_edv_ml"] == pytest.approx(truth_edv, rel=1e-9)
    assert doc["cine"]["lv_esv_ml"] == pytest.approx(truth_esv, rel=1e-9)
    gap = [w for w in doc["warnings"] if "slice gap" in w]
    assert gap and "24.0-40.0 mm" in gap[0] and "true slice positions" in gap[0] and "about 1 slice" in gap[0]


# ------------------------------------------------------------------------------------ ACDC
def _acdc(folder, affines, info="ED: 1\nES: 2\n", encoding="utf-8"):
    folder.mkdir()
    data = np.random.default_rng(1).uniform(0, 100, (SIZE, SIZE, 3))
    for n, (aff, r) in enumerate(zip(affines, (5.0, 3.5)), start=1):
        _nifti(folder / f"{folder.name}_frame0{n}.nii.gz", data, affine=aff)
        _nifti(folder / f"{folder.name}_frame0{n}_gt.nii.gz", np.repeat(_lab2d(r)[:, :, None], 3, 2), affine=aff,
               dtype=np.uint8)
    (folder / "Info.cfg").write_bytes(info.encode(encoding))
    return folder


def test_acdc_ed_and_es_headers_that_disagree_on_spacing_are_refused(tmp_path, capsys):
    d = _acdc(tmp_path / "patient950", [AFFINE, np.diag([1.5, 1.5, 16.0, 1.0])])
    expect_failure(capsys, [d, "--labels", "study"], tmp_path / "out", d / "patient950_frame02.nii.gz",
                   "[1.5, 1.5, 16.0]", "patient950_frame01.nii.gz", "[1.5, 1.5, 8.0]", "one geometry")


def test_acdc_info_cfg_with_a_byte_order_mark_is_read(tmp_path, capsys):
    d = _acdc(tmp_path / "patient951", [AFFINE, AFFINE], info="ED: 2\r\nES: 1\r\n", encoding="utf-8-sig")
    assert (d / "Info.cfg").read_bytes().startswith(b"\xef\xbb\xbf")
    study = load_study(d)
    assert (study.ed_frame, study.es_frame) == (1, 0)


def test_acdc_gt_whose_geometry_differs_from_the_image_is_warned(tmp_path, capsys):
    d = _acdc(tmp_path / "patient952", [AFFINE, AFFINE])
    moved = AFFINE.copy()
    moved[:3, 3] = (30, 0, 0)
    _nifti(d / "patient952_frame01_gt.nii.gz", np.repeat(_lab2d(5.0)[:, :, None], 3, 2), affine=moved, dtype=np.uint8)
    doc, _ = analyze_ok(capsys, [d, "--labels", "study"], tmp_path / "out")
    w = [x for x in doc["warnings"] if "patient952_frame01_gt.nii.gz" in x]
    assert w and "origin [30.0, 0.0, 0.0]" in w[0] and "voxel by voxel" in w[0]


def test_label_map_with_other_geometry_is_shown_as_a_warning(tmp_path, capsys):
    img = _nifti(tmp_path / "cine.nii.gz", np.random.default_rng(2).uniform(0, 100, (SIZE, SIZE, 3, 2)))
    labels = _nifti(tmp_path / "labels.nii.gz", _labels_4d(3), affine=np.diag([1.5, 1.5, 10.0, 1.0]), dtype=np.uint8)
    study = load_study(img, labels=labels)
    w = [x for x in study.provenance["warnings"] if x.startswith("labels.nii.gz:")]
    assert w and "spacing [1.5, 1.5, 10.0] vs [1.5, 1.5, 8.0] mm" in w[0]
    doc, _ = analyze_ok(capsys, [img, "--labels", labels], tmp_path / "out")
    assert w[0] in doc["warnings"]


# ---------------------------------------------------------- DICOM copies, duplicates, broken
def test_series_also_copied_into_a_subfolder_is_read_once(tmp_path):
    d = _dicom_stack(tmp_path / "dicom", [0, 8, 16])
    reference = load_study(d)
    shutil.copytree(d, d / "copy")
    s = load_study(d)
    assert s.images.shape == reference.images.shape == (2, 3, SIZE, SIZE)
    assert np.array_equal(s.images, reference.images)
    w = [x for x in s.provenance["warnings"] if "copies" in x]
    assert w and "6 file(s)" in w[0] and "copy/1.dcm = 1.dcm" in w[0]
    assert all(str(d / "copy") not in f for f in s.provenance["files"])


def test_two_different_images_at_one_position_and_time_are_refused_naming_both(tmp_path, capsys):
    d = _dicom_stack(tmp_path / "dicom", [0, 8, 16])
    _dcm(d / "extra.dcm", ipp=(0, 0, 8.0), trigger=40.0, instance=99, value=7)   # a new UID, same slot as 4.dcm
    # two different images: removing one would drop a real frame (probe 82: "remove one of the two files")
    said = expect_failure(capsys, [d], tmp_path / "out", d / "extra.dcm", "4.dcm", "8.00 mm", "same frame time",
                          "different pixels", "clock is wrong")
    assert "remove one" not in said
    # the same pixels under a new UID: a duplicate (sent twice), read once with a warning naming
    # both files (it was refused, "remove one of the two files"; probe 97)
    shutil.copy(d / "4.dcm", tmp_path / "copy.dcm")
    (d / "extra.dcm").unlink()
    import pydicom

    ds = pydicom.dcmread(str(tmp_path / "copy.dcm"))
    ds.SOPInstanceUID = ds.SOPInstanceUID + ".9"
    ds.save_as(str(d / "extra.dcm"))
    s = load_study(d)
    assert s.images.shape[:2] == (2, 3)
    assert any("extra.dcm = 4.dcm" in w and "read once" in w for w in s.provenance["warnings"]), s.provenance["warnings"]


def test_all_images_at_one_position_is_a_single_slice_series_not_a_traceback(tmp_path, capsys):
    d = tmp_path / "dicom"
    d.mkdir()
    for t in range(12):                                    # legitimate: one slice, 12 phases
        _dcm(d / f"{t + 1}.dcm", ipp=(0, 0, 0), trigger=40.0 * t, instance=t + 1, value=t)
    s = load_study(d)
    assert s.images.shape == (12, 1, SIZE, SIZE)
    labels = np.stack([_lab2d(5.0 if t < 6 else 3.5)[:, :, None] for t in range(12)], axis=-1)
    lab = _nifti(tmp_path / "labels.nii.gz", labels, affine=s.ijk_to_ras, dtype=np.uint8)
    doc, _ = analyze_ok(capsys, [d, "--labels", lab], tmp_path / "out")
    assert any("slice thickness is unknown" in w for w in doc["warnings"])

    # the same 12 images, but as 3 slices x 4 phases whose positions were all written as one
    bad = tmp_path / "stack"
    bad.mkdir()
    for n in range(12):
        _dcm(bad / f"{n + 1}.dcm", ipp=(0, 0, 0), trigger=40.0 * (n % 4), instance=n + 1, value=n)
    expect_failure(capsys, [bad], tmp_path / "out2", "same frame time", "lie at one slice position",
                   "ImagePositionPatient is wrong")


def test_an_empty_dicom_file_among_good_ones_is_skipped_with_a_warning(tmp_path):
    d = _dicom_stack(tmp_path / "dicom", [0, 8, 16])
    (d / "7.dcm").write_bytes(b"")
    s = load_study(d)
    assert s.images.shape == (2, 3, SIZE, SIZE)
    assert any(str(d / "7.dcm") in w and "empty file" in w for w in s.provenance["warnings"])


def test_a_broken_file_of_the_series_is_named_in_the_error(tmp_path, capsys):
    d = _dicom_stack(tmp_path / "dicom", [0, 8, 16], n_frames=4)
    (d / "6.dcm").write_bytes(b"")                          # one image of slice 2: 3 frames left there
    (d / "3.dcm").write_bytes(b"DICM" * 10)                 # not even a DICOM header
    expect_failure(capsys, [d], tmp_path / "out", "different numbers of frames", "unreadable file(s)", "3.dcm", "6.dcm")


def test_outputs_written_into_the_input_folder_are_not_read_back(tmp_path, capsys):
    """Analyse a DICOM folder with --out set to that folder, then again: our outputs and the
    hidden staging folders must not become images (or frames of a frame folder)."""
    d = _dicom_stack(tmp_path / "dicom", [0, 8, 16])
    reference = load_study(d)
    labels = _nifti(tmp_path / "labels.nii.gz", _labels_4d(3), affine=reference.ijk_to_ras, dtype=np.uint8)
    first, _ = analyze_ok(capsys, [d, "--labels", labels], d)
    assert set(OUTPUT_FILES) <= set(os.listdir(d))
    (d / ".cardiacaiseg-left-over").mkdir()                # a staging folder left by a killed run
    shutil.copy(d / "segmentation.seg.nrrd", d / ".cardiacaiseg-left-over" / "segmentation.seg.nrrd")
    shutil.copy(d / "segmentation.seg.nrrd", d / "segmentation_es.seg.nrrd")
    again = load_study(d)
    assert again.images.shape == reference.images.shape and np.array_equal(again.images, reference.images)
    assert again.provenance["skipped_files"] == []
    second, _ = analyze_ok(capsys, [d, "--labels", labels], d, "--force")
    assert second["cine"]["lv_edv_ml"] == first["cine"]["lv_edv_ml"]

    # a folder of per-frame NIfTI files with outputs beside them stays a two-frame series
    frames = tmp_path / "frames"
    frames.mkdir()
    for t in range(2):
        _nifti(frames / f"time_{t}.nii.gz", np.full((SIZE, SIZE, 3), t, np.float32))
    for name in ("segmentation.seg.nrrd", "segmentation_es.seg.nrrd"):
        shutil.copy(d / "segmentation.seg.nrrd", frames / name)
    s = load_study(frames)
    assert s.images.shape == (2, 3, SIZE, SIZE) and s.provenance["reader"] == "nifti-frames"


def test_truncated_gzip_nifti_still_named(tmp_path):
    """The raw pixdim check must not mask the plain reason for a damaged file."""
    f = _nifti(tmp_path / "cine.nii.gz", np.ones((SIZE, SIZE, 3, 2)))
    raw = gzip.decompress(f.read_bytes())
    f.write_bytes(gzip.compress(raw[: len(raw) // 2]))
    with pytest.raises(CardiacInputError, match="not a readable NIfTI"):
        load_study(f)


def test_metaimage_without_element_spacing_is_refused(tmp_path, capsys):
    arr = np.ones((3, 4, 5), np.uint16)
    (tmp_path / "v.raw").write_bytes(arr.tobytes())
    mhd = tmp_path / "v.mhd"
    mhd.write_text("ObjectType = Image\nNDims = 3\nBinaryData = True\nBinaryDataByteOrderMSB = False\n"
                   "DimSize = 5 4 3\nElementType = MET_USHORT\nElementDataFile = v.raw\n")
    expect_failure(capsys, [mhd], tmp_path / "out", mhd, "no ElementSpacing", "voxel size")


def test_zero_density_names_the_flag_not_a_label_file(tmp_path, capsys):
    from CardiacAISegLib.phantoms.phantom import write_phantom

    d = tmp_path / "perf"
    write_phantom("perfusion", d, seed=1, size=48, n_frames=30)
    dt = json.loads((d / "truth.json").read_text())["dt_s"]
    line = expect_failure(capsys, [d / "perfusion.nii.gz", "--labels", d / "perfusion_labels.nii.gz", "--aif",
                                   d / "aif.csv", "--dt", dt, "--density", 0], tmp_path / "out", "--density", "0.8-1.3 g/mL",
                          "1.05")
    assert "perfusion_labels" not in line


def test_single_slice_frames_with_one_constant_trigger_delay_still_load(tmp_path):
    """A constant TriggerTime (perfusion-style, acquisition time stripped) does not tell frames
    apart; it must not be mistaken for duplicates: frames follow InstanceNumber."""
    d = tmp_path / "dicom"
    d.mkdir()
    for n in range(5):
        _dcm(d / f"{n + 1}.dcm", ipp=(0, 0, 0), trigger=100.0, instance=n + 1, value=n)
    s = load_study(d)
    assert s.images.shape == (5, 1, SIZE, SIZE)
    assert [int(s.images[t, 0, 0, 0]) for t in range(5)] == [0, 1, 2, 3, 4]


@pytest.mark.parametrize("kind", ["cine", "perfusion"])
def test_slice_and_time_axes_swapped_in_a_4d_file_are_refused(tmp_path, shared_data, kind):
    """A real short-axis stack (ACDC patient001, ED and ES, 10 slices) written as (x, y, slices,
    time) reads; the same images written as (x, y, time, slices) once read as a 2-slice, 10-frame
    series and gave volumes of the wrong images. Consecutive frames of one slice are far more
    alike than neighbouring slices, so the swap is seen and refused, naming the file."""
    import nibabel as nib

    from CardiacAISegLib.readers import load_study
    from CardiacAISegLib.readers.acdc import load_acdc_patient

    st = load_acdc_patient(shared_data / "acdc" / "patient001")
    images = np.stack([st.images[st.ed_frame], st.images[st.es_frame]])     # (T=2, S, R, C)
    xyzt = images.transpose(3, 2, 1, 0)
    affine = np.diag([-st.spacing[0], -st.spacing[1], st.spacing[2], 1.0])
    good, swapped = tmp_path / "good.nii.gz", tmp_path / "swapped.nii.gz"
    nib.save(nib.Nifti1Image(xyzt.astype(np.float32), affine), str(good))
    nib.save(nib.Nifti1Image(xyzt.transpose(0, 1, 3, 2).astype(np.float32), affine), str(swapped))
    options = {"kind": kind, "dt": 0.8} if kind == "perfusion" else {}
    if kind == "cine":
        assert load_study(good).images.shape[:2] == (2, st.n_slices)
    with pytest.raises(CardiacInputError, match="slice and time axes look swapped") as e:
        load_study(swapped, **options)
    assert str(swapped) in str(e.value)


def _store_flipped(volume_xyz, affine, flip_axes=(), swap_xy=False):
    """The same voxels in another storage order, with the affine that says so (world unchanged)."""
    data, a = np.asarray(volume_xyz), np.asarray(affine, float).copy()
    for axis in flip_axes:
        data = np.flip(data, axis)
        a[:3, 3] = a[:3, 3] + a[:3, axis] * (data.shape[axis] - 1)
        a[:, axis] = -a[:, axis]
    if swap_xy:
        data = np.swapaxes(data, 0, 1)
        a[:, [0, 1]] = a[:, [1, 0]]
    return np.ascontiguousarray(data), a


@pytest.mark.parametrize("flip_axes,swap_xy", [((0,), False), ((2,), False), ((0, 1), True), ((), True)])
def test_labels_stored_flipped_or_transposed_overlay_by_world_coordinates(tmp_path, flip_axes, swap_xy):
    """A label map written in another axis order or direction (its affine says so, as ITK and
    nibabel writers do after a reorientation) was used voxel by voxel: the segmentation drawn
    mirrored over the image, the volumes unchanged so nothing looked wrong, and AHA segments,
    insertion points and wall thickness mirrored. It is now reordered onto the image's grid."""
    from CardiacAISegLib.readers.labelmap import load_labelmap

    rng = np.random.default_rng(0)
    lab2d = _lab2d()
    lab = np.stack([np.roll(lab2d, k, axis=1) for k in range(4)], axis=2)[:, : SIZE - 3]   # (x, y, z), not square
    lab[0, 0, 0] = 1                                          # an asymmetric mark: any flip shows
    affine = np.array([[0, -1.4, 0, 30], [1.4, 0, 0, -20], [0, 0, 8.0, 5], [0, 0, 0, 1]], float)
    image = _nifti(tmp_path / "image.nii.gz", rng.random(lab.shape) + lab, affine)
    stored, a = _store_flipped(lab, affine, flip_axes, swap_xy)
    labels = _nifti(tmp_path / "labels.nii.gz", stored, a, np.uint8)
    study = load_study(image)
    got, info = load_labelmap(labels, study)
    truth, _ = load_labelmap(_nifti(tmp_path / "same.nii.gz", lab, affine, np.uint8), study)
    np.testing.assert_array_equal(got[0], truth[0])
    assert any("reordered onto the image's grid" in w for w in info["warnings"])


def test_labels_shifted_in_the_world_are_not_reordered(tmp_path):
    """An origin 30 mm away is no reordering of the same voxels: used voxel by voxel, with the
    warning that says to check the overlay (as before)."""
    from CardiacAISegLib.readers.labelmap import load_labelmap

    lab = np.stack([_lab2d()] * 3, axis=2)
    image = _nifti(tmp_path / "image.nii.gz", lab.astype(float), AFFINE)
    shifted = AFFINE.copy()
    shifted[0, 3] += 30
    study = load_study(image)
    got, info = load_labelmap(_nifti(tmp_path / "labels.nii.gz", lab, shifted, np.uint8), study)
    assert any("used voxel by voxel" in w for w in info["warnings"])
    truth, _ = load_labelmap(_nifti(tmp_path / "same.nii.gz", lab, AFFINE, np.uint8), study)
    np.testing.assert_array_equal(got[0], truth[0])


def test_acdc_ground_truth_stored_flipped_is_reordered(tmp_path, shared_data):
    source = shared_data / "acdc" / "patient001"
    if not source.is_dir():
        pytest.skip(f"{source} not found")
    import nibabel as nib

    folder = tmp_path / "patient001"
    shutil.copytree(source, folder)
    gt = nib.load(str(source / "patient001_frame01_gt.nii.gz"))
    stored, a = _store_flipped(np.asarray(gt.dataobj), gt.affine, flip_axes=(0,))
    nib.save(nib.Nifti1Image(stored, a), str(folder / "patient001_frame01_gt.nii.gz"))
    study, reference = load_study(folder), load_study(source)
    for frame in reference.labels:
        np.testing.assert_array_equal(study.labels[frame], reference.labels[frame])
    assert any("reordered onto the image's grid" in w for w in study.provenance["warnings"])


def test_labels_that_do_not_overlay_their_image_are_named(tmp_path, shared_data):
    """Expert labels mirrored (same header) or moved over their image: volumes and mass come out
    exactly as before, so nothing looked wrong, yet every overlay, AHA segment and insertion
    point is off. A mirrored or shifted copy of such a map parts blood from myocardium better
    than the map itself (never so for ACDC's 80 expert maps): a warning says so."""
    import nibabel as nib

    source = shared_data / "acdc" / "patient001"
    if not source.is_dir():
        pytest.skip(f"{source} not found")
    gt = nib.load(str(source / "patient001_frame01_gt.nii.gz"))
    image = source / "patient001_frame01.nii.gz"
    as_given = _nifti(tmp_path / "gt.nii.gz", np.asarray(gt.dataobj), gt.affine, np.uint8)
    mirrored = _nifti(tmp_path / "mirrored.nii.gz", np.asarray(gt.dataobj)[::-1], gt.affine, np.uint8)
    moved = _nifti(tmp_path / "moved.nii.gz", np.roll(np.asarray(gt.dataobj), 9, axis=1), gt.affine, np.uint8)
    assert not any("overlay" in w for w in load_study(image, labels=as_given).provenance["warnings"])
    for labels, how in ((mirrored, "mirrored left-right"), (moved, "moved")):
        warnings = load_study(image, labels=labels).provenance["warnings"]
        assert any("do not seem to overlay this image" in w and how in w for w in warnings), warnings


def test_another_patients_labels_that_no_moved_copy_fits_are_named(tmp_path, shared_data):
    """ACDC 032's expert map over 066's images of the same size overlaps the heart, so no
    mirrored or shifted copy fits clearly better: EDV 114 for 158 mL, EF 79.8 for 64.4, QC pass
    (probe 85). Its contours cross blood and wall, which the expert's own map does not."""
    import nibabel as nib

    image, other = shared_data / "acdc" / "patient066", shared_data / "acdc" / "patient032"
    if not image.is_dir() or not other.is_dir():
        pytest.skip(f"{image} or {other} not found")
    own = nib.load(str(image / "patient066_frame01_gt.nii.gz"))
    # their ED and ES maps over 066's ED and ES, as the probe gave them (one 4D file)
    theirs = np.stack([np.asarray(nib.load(str(other / f"patient032_frame{n}_gt.nii.gz")).dataobj)[:, :, :own.shape[2]]
                       for n in ("01", "02")], axis=-1)
    assert theirs.shape[:3] == own.shape
    labels = _nifti(tmp_path / "theirs.nii.gz", theirs, own.affine, np.uint8)
    warnings = load_study(image, labels=labels).provenance["warnings"]
    assert any("do not seem to overlay this image" in w and "cross blood and wall" in w for w in warnings), warnings
    as_given = _nifti(tmp_path / "own.nii.gz", np.asarray(own.dataobj), own.affine, np.uint8)
    assert not any("overlay" in w for w in load_study(image / "patient066_frame01.nii.gz", labels=as_given)
                   .provenance["warnings"])


def test_labels_one_slice_off_their_stack_are_named(tmp_path, shared_data):
    """ACDC 066's expert map moved one slice along its stack read EDV -14 %, mass -12 %, EF 58.5
    for 64.4, QC pass (probe 85): moved back, it parts blood from wall clearly better."""
    import nibabel as nib

    source = shared_data / "acdc" / "patient066"
    if not source.is_dir():
        pytest.skip(f"{source} not found")
    gt = nib.load(str(source / "patient066_frame01_gt.nii.gz"))
    shifted = np.roll(np.asarray(gt.dataobj), 1, axis=2)
    shifted[:, :, 0] = 0
    labels = _nifti(tmp_path / "shifted.nii.gz", shifted, gt.affine, np.uint8)
    warnings = load_study(source / "patient066_frame01.nii.gz", labels=labels).provenance["warnings"]
    assert any("do not seem to overlay this image" in w and "one slice along the stack" in w for w in warnings), warnings


def test_an_expert_es_map_alone_is_not_taken_for_another_patients(tmp_path, shared_data):
    """ACDC 073's expert ES map alone (thin ES wall: 28 % of pool and wall pixels look like the
    other) was called "another patient's or another series' labels" (session 40's review): a lone
    labelled frame, which may be ES, is held to the ES maps' bound."""
    source = shared_data / "acdc" / "patient073"
    if not source.is_dir():
        pytest.skip(f"{source} not found")
    warnings = load_study(source / "patient073_frame02.nii.gz",
                          labels=source / "patient073_frame02_gt.nii.gz").provenance["warnings"]
    assert not any("overlay" in w for w in warnings), warnings


def test_labels_cropped_to_their_segments_are_placed_by_world_coordinates(tmp_path):
    """Probe 89: a segmentation saved cropped to its segments (as Slicer saves a .seg.nrrd: a
    54 x 55 x 10 box of a 128 x 128 x 10 image, its origin the box's corner) was refused for its
    size. Every voxel of it is a voxel of the image: placed exactly, in any axis order."""
    from CardiacAISegLib.readers.labelmap import load_labelmap

    lab = np.stack([_lab2d()] * 3, axis=2)
    image = _nifti(tmp_path / "image.nii.gz", lab.astype(float), AFFINE)
    study = load_study(image)
    truth, _ = load_labelmap(_nifti(tmp_path / "same.nii.gz", lab, AFFINE, np.uint8), study)
    box = np.argwhere(lab > 0)
    (x0, y0, z0), (x1, y1, z1) = box.min(0), box.max(0) + 1
    cropped = lab[x0:x1, y0:y1, z0:z1]
    corner = AFFINE.copy()
    corner[:3, 3] = AFFINE[:3, :3] @ [x0, y0, z0] + AFFINE[:3, 3]
    stored, a = _store_flipped(cropped, corner, flip_axes=(0,), swap_xy=True)
    got, info = load_labelmap(_nifti(tmp_path / "cropped.nii.gz", stored, a, np.uint8), study)
    np.testing.assert_array_equal(got[0], truth[0])
    assert any("placed by its world coordinates" in w for w in info["warnings"]), info["warnings"]
    # the same box with its origin 30 voxels off: most labels would fall off the image, no crop of it
    off = corner.copy()
    off[:3, 3] += AFFINE[:3, 0] * 30
    with pytest.raises(CardiacInputError, match="its origin places it mostly off the image"):
        load_labelmap(_nifti(tmp_path / "off.nii.gz", cropped, off, np.uint8), study)
    # on another grid (resampled): refused, saying how to bring it onto the image's
    fine = AFFINE.copy()
    fine[:3, :3] /= 2
    with pytest.raises(CardiacInputError, match="it lies on another grid .* resample it onto the image's grid"):
        load_labelmap(_nifti(tmp_path / "fine.nii.gz", np.repeat(np.repeat(lab, 2, 0), 2, 1)[:, :, :2], fine, np.uint8),
                      study)
