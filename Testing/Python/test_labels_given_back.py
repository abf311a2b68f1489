"""A run's cine segmentations given back to ``analyze --labels`` (an annotator's loop: run,
correct the ED and ES files in Slicer, measure again). Each .seg.nrrd records its frame in its
segments' tags, which Slicer keeps when it saves the file again; before, a 3D file always went to
ED, so the ES file could not be given at all and alone it was measured as ED."""
import json

import numpy as np
import pytest

from CardiacAISegLib import seg_nrrd
from CardiacAISegLib.analyze import run
from CardiacAISegLib.errors import CardiacInputError
from CardiacAISegLib.labels import MYO, frame_of_header
from CardiacAISegLib.phantoms.phantom import write_phantom
from CardiacAISegLib.readers import load_study


@pytest.fixture(scope="module")
def first_run(tmp_path_factory):
    """A cine phantom (8 frames, ED and ES not in the file) measured from its 4D labels."""
    root = tmp_path_factory.mktemp("given-back")
    paths, study, truth = write_phantom("cine", root / "phantom", seed=4, n_frames=8, n_slices=6, size=80)
    analysis, _ = run(paths["cine.nii.gz"], root / "first", labels=paths["cine_labels.nii.gz"])
    out = root / "first"
    return paths["cine.nii.gz"], out, analysis


def test_the_ed_and_es_files_measure_what_the_run_measured(first_run, tmp_path):
    image, out, first = first_run
    ed, es = first.cine["ed_frame"], first.cine["es_frame"]
    assert ed != es and {ed, es} != {0, 1}   # frames a default placement (ED or 0) could not hit by luck
    # given in either order, each file goes to the frame it records
    again, _ = run(image, tmp_path / "again", labels=[out / "segmentation_es.seg.nrrd", out / "segmentation.seg.nrrd"])
    assert (again.cine["ed_frame"], again.cine["es_frame"]) == (ed, es)
    for key in ("lv_edv_ml", "lv_esv_ml", "lv_ef_pct", "lv_mass_g", "rv_edv_ml", "rv_esv_ml"):
        assert again.cine[key] == pytest.approx(first.cine[key], rel=1e-9), key
    np.testing.assert_array_equal(again.labels[es], first.labels[es])


def test_a_corrected_file_saved_by_slicer_keeps_its_frame(first_run, tmp_path):
    """Loaded into a Slicer scene, edited (myocardium erased on one slice) and saved by Slicer's
    storage node: the file still says its frame, and the edit is measured at ES."""
    pytest.importorskip("slicer")
    from CardiacAISegLib import scene as sc

    image, out, first = first_run
    es = first.cine["es_frame"]
    ctx = sc.new_scene()
    node = sc.load_segmentation(ctx, str(out / "segmentation_es.seg.nrrd"))
    labels = sc.labelmap_from_segmentation(node)
    edited = labels.copy()
    level = int(np.argmax((labels == MYO).sum(axis=(1, 2))))
    edited[level][edited[level] == MYO] = 0
    from CardiacAISegLib.logic import fill_segmentation

    fill_segmentation(node, edited, first.study.ijk_to_ras)
    sc.write_node(node, tmp_path / "corrected_es.seg.nrrd")
    assert frame_of_header(seg_nrrd.read_seg_nrrd(tmp_path / "corrected_es.seg.nrrd")[2]) == (es, 8)
    study = load_study(image, labels=[out / "segmentation.seg.nrrd", tmp_path / "corrected_es.seg.nrrd"])
    np.testing.assert_array_equal(study.labels[es], edited)
    np.testing.assert_array_equal(study.labels[first.cine["ed_frame"]], first.labels[first.cine["ed_frame"]])


def test_the_es_file_alone_is_refused_with_the_way_to_give_both(first_run, tmp_path):
    image, out, _ = first_run
    with pytest.raises(CardiacInputError, match=r"ED frame unknown.*give ED's and ES's, as the \.seg\.nrrd files a "
                                                r"run writes, which say their frame"):
        run(image, tmp_path / "es-only", labels=out / "segmentation_es.seg.nrrd")
    assert not (tmp_path / "es-only").exists()


def test_a_file_made_for_another_frame_count_is_refused(first_run, tmp_path):
    """Frame 3 of an 8-frame series is another image in a 2-frame ED/ES export of it."""
    image, out, first = first_run
    labels, m, _ = seg_nrrd.read_seg_nrrd(out / "segmentation.seg.nrrd")
    other = seg_nrrd.write_seg_nrrd(tmp_path / "other.seg.nrrd", labels, m, frame=1, n_frames=2)
    with pytest.raises(CardiacInputError, match=r"other.seg.nrrd: is the segmentation of frame 2 \(counted from 1\) of "
                                                r"a series of 2 frames; this input has 8"):
        load_study(image, labels=other)


def test_two_files_for_one_frame_are_refused_naming_both(first_run, tmp_path):
    """Two 3D maps that record no frame both go to ED: the second would silently replace the first."""
    import nibabel as nib

    image, out, first = first_run
    labels, m, _ = seg_nrrd.read_seg_nrrd(out / "segmentation.seg.nrrd")
    from CardiacAISegLib.labels import to_convention

    for name in ("a.nii.gz", "b.nii.gz"):
        volume = to_convention(labels, "acdc").transpose(2, 1, 0)
        nib.save(nib.Nifti1Image(volume, m), str(tmp_path / name))
    with pytest.raises(CardiacInputError, match=r"b.nii.gz: labels frame \d+ \(counted from 1\), as a.nii.gz does"):
        load_study(image, labels=[tmp_path / "a.nii.gz", tmp_path / "b.nii.gz"])


def test_cli_takes_labels_twice_and_refuses_study_with_a_file(first_run, tmp_path):
    from CardiacAISegLib.cli import main

    image, out, first = first_run
    code = main(["analyze", str(image), "--out", str(tmp_path / "cli"), "--quiet", "--labels",
                 str(out / "segmentation.seg.nrrd"), "--labels", str(out / "segmentation_es.seg.nrrd")])
    assert code == 0
    results = json.loads((tmp_path / "cli" / "results.json").read_text())
    assert results["cine"]["lv_ef_pct"] == pytest.approx(first.cine["lv_ef_pct"], rel=1e-9)
    code = main(["analyze", str(image), "--out", str(tmp_path / "cli2"), "--quiet", "--labels", "study",
                 "--labels", str(out / "segmentation.seg.nrrd")])
    assert code == 2
    assert not (tmp_path / "cli2").exists()


def test_two_maps_for_the_ed_of_an_acdc_folder_are_refused_and_contour_folders_go_alone(tmp_path):
    """Review of session 44: on a study whose own labels (an ACDC folder's _gt) held ED, two 3D
    maps without a recorded frame both went to ED, the second silently replacing the first; a
    contour folder in the list ended in a KeyError."""
    import nibabel as nib

    from bad_corpus import acdc_folder, make_base

    base = make_base(tmp_path / "base")
    folder = acdc_folder(base, tmp_path / "patient901", "ED: 1\nES: 2\nGroup: NOR\n")
    gt = nib.load(str(folder / "patient901_frame01_gt.nii.gz"))
    for name in ("a.nii.gz", "b.nii.gz"):
        nib.save(nib.Nifti1Image(np.asarray(gt.dataobj), gt.affine), str(tmp_path / name))
    with pytest.raises(CardiacInputError, match=r"b.nii.gz: labels frame 1 \(counted from 1\), as a.nii.gz does"):
        load_study(folder, labels=[tmp_path / "a.nii.gz", tmp_path / "b.nii.gz"])
    (tmp_path / "contours").mkdir()
    with pytest.raises(CardiacInputError, match="a contour folder is given alone"):
        load_study(folder, labels=[tmp_path / "a.nii.gz", tmp_path / "contours"])
