"""A folder of one image and its label maps, as `cardiacaiseg phantom` writes it, is read as that
image (probe 108 #3): `cardiacaiseg phantom --out demo && cardiacaiseg analyze demo --out res`
was refused ("give the image file itself, with --labels ..."), and the advice left out the
aif.csv beside it, so the AIF came from the LV. Now the network runs on the image, `--labels
study` measures the folder's label map, and an AIF file beside a perfusion image is its AIF: the
numbers of `analyze FOLDER/IMAGE --aif FOLDER/aif.csv [--labels FOLDER/IMAGE_labels]` to the last
digit, in `analyze` and in `batch`. What cannot be told (two AIF files, DICOM files beside, a
label map on another grid) stays refused, and a batch row's refusal says its manifest column once.
"""
import csv
import json
import numbers
import re
import shutil
import sys
from pathlib import Path

import numpy as np
import pytest

from CardiacAISegLib import cli
from CardiacAISegLib.errors import CardiacInputError
from CardiacAISegLib.readers import load_study

sys.path.insert(0, str(Path(__file__).resolve().parent))


def _cli(*argv):
    rc = cli.main([str(a) for a in argv] + (["--quiet"] if argv[0] == "analyze" else []))
    assert rc == 0, f"cardiacaiseg {' '.join(map(str, argv))} exited with {rc}"


def _numbers(doc, prefix=""):
    """{key path: number} of a results.json, its timings left out (they differ run to run)."""
    out = {}
    if isinstance(doc, dict):
        for k, v in doc.items():
            if k != "timing_s":
                out.update(_numbers(v, f"{prefix}.{k}"))
    elif isinstance(doc, list):
        for i, v in enumerate(doc):
            out.update(_numbers(v, f"{prefix}[{i}]"))
    elif isinstance(doc, numbers.Number) and not isinstance(doc, bool):
        out[prefix] = doc
    return out


def _results(out):
    return json.loads((Path(out) / "results.json").read_text())


def _assert_same_numbers(a, b):
    na, nb = _numbers(a), _numbers(b)
    assert len(na) > 100 and na == nb, {k: (na.get(k), nb.get(k)) for k in set(na) | set(nb) if na.get(k) != nb.get(k)}
    assert [f["code"] for f in a["qc"]["flags"]] == [f["code"] for f in b["qc"]["flags"]]


@pytest.fixture(scope="module")
def demo(tmp_path_factory):
    """`cardiacaiseg phantom` folders, as a teacher makes them: a perfusion one and a cine one."""
    root = tmp_path_factory.mktemp("demo")
    _cli("phantom", "--kind", "perfusion", "--out", root / "perfusion")
    _cli("phantom", "--out", root / "cine")
    return root


def test_perfusion_phantom_folder_measures_its_labels_with_its_aif(demo, tmp_path):
    folder = demo / "perfusion"
    assert sorted(p.name for p in folder.iterdir()) == ["aif.csv", "perfusion.nii.gz", "perfusion_labels.nii.gz",
                                                        "truth.json"]
    _cli("analyze", folder, "--labels", "study", "--out", tmp_path / "folder")
    _cli("analyze", folder / "perfusion.nii.gz", "--aif", folder / "aif.csv", "--labels", folder / "perfusion_labels.nii.gz",
         "--out", tmp_path / "files")
    from_folder, from_files = _results(tmp_path / "folder"), _results(tmp_path / "files")
    _assert_same_numbers(from_folder, from_files)
    assert from_folder["kind"] == "perfusion" and from_folder["model"] is None
    assert from_folder["source"]["aif_source"] == str(folder / "aif.csv")     # not the LV blood pool
    said = [w for w in from_folder["warnings"] if "aif.csv" in w]
    assert said and "lies beside the image perfusion.nii.gz" in said[0], from_folder["warnings"]
    assert not any("no separate AIF" in w for w in from_folder["warnings"])


def test_cine_phantom_folder_measures_its_labels(demo, tmp_path):
    folder = demo / "cine"
    _cli("analyze", folder, "--labels", "study", "--out", tmp_path / "folder")
    _cli("analyze", folder / "cine.nii.gz", "--labels", folder / "cine_labels.nii.gz", "--out", tmp_path / "files")
    from_folder = _results(tmp_path / "folder")
    _assert_same_numbers(from_folder, _results(tmp_path / "files"))
    truth = json.loads((folder / "truth.json").read_text())["truth"]   # the phantom's own voxel count at ED
    assert from_folder["cine"]["lv_edv_ml"] == pytest.approx(truth["voxel_lv_ml"][truth["ed_frame"]], rel=1e-6)


def test_the_folder_reads_the_image_the_file_reads_so_the_network_sees_the_same(demo):
    """Without --labels the network segments the study the image file gives; the folder's label
    map is there for --labels study (as an ACDC folder's _gt), not measured."""
    for folder, image, aif in ((demo / "perfusion", "perfusion.nii.gz", "aif.csv"), (demo / "cine", "cine.nii.gz", None)):
        read = load_study(folder)
        alone = load_study(folder / image, aif=None if aif is None else folder / aif)
        assert read.kind == alone.kind and read.n_frames == alone.n_frames
        np.testing.assert_array_equal(read.images, alone.images)
        np.testing.assert_array_equal(read.ijk_to_ras, alone.ijk_to_ras)
        if aif is not None:
            np.testing.assert_array_equal(read.aif, alone.aif)
            np.testing.assert_array_equal(read.frame_times_s, alone.frame_times_s)
        assert read.labels and not alone.labels


def test_perfusion_phantom_folder_runs_the_network_with_its_aif(demo, tmp_path):
    from CardiacAISegLib.models import registry

    if not registry.list_models("perfusion"):
        pytest.skip("no perfusion network installed")
    folder = demo / "perfusion"
    _cli("analyze", folder, "--out", tmp_path / "folder")
    _cli("analyze", folder / "perfusion.nii.gz", "--aif", folder / "aif.csv", "--out", tmp_path / "files")
    from_folder = _results(tmp_path / "folder")
    _assert_same_numbers(from_folder, _results(tmp_path / "files"))
    assert from_folder["model"] is not None and from_folder["source"]["aif_source"] == str(folder / "aif.csv")


def test_an_aif_given_wins_over_the_one_beside(demo, tmp_path):
    folder = demo / "perfusion"
    other = tmp_path / "other_aif.csv"
    other.write_text((folder / "aif.csv").read_text())
    study = load_study(folder, aif=other)
    assert study.provenance["aif_source"] == str(other)
    assert not any("lies beside" in w for w in study.provenance["warnings"])


def test_batch_of_phantom_folders_gives_rows(demo, tmp_path):
    studies = tmp_path / "studies"
    studies.mkdir()
    for name in ("perfusion", "cine"):
        shutil.copytree(demo / name, studies / name)
    assert cli.main(["batch", str(studies), "--out", str(tmp_path / "out"), "--labels", "study", "--workers", "1",
                     "--quiet"]) == 0
    with open(tmp_path / "out" / "cohort.csv", newline="") as f:
        rows = {r["study"]: r for r in csv.DictReader(f)}
    assert {name: rows[name]["error"] for name in rows} == {"perfusion": "", "cine": ""}
    assert rows["perfusion"]["kind"] == "perfusion" and rows["cine"]["kind"] == "cine"
    _cli("analyze", studies / "perfusion" / "perfusion.nii.gz", "--aif", studies / "perfusion" / "aif.csv",
         "--labels", studies / "perfusion" / "perfusion_labels.nii.gz", "--out", tmp_path / "files")
    _assert_same_numbers(_results(tmp_path / "out" / "perfusion"), _results(tmp_path / "files"))


def _perfusion_copy(demo, tmp_path, name):
    folder = tmp_path / name
    shutil.copytree(demo / "perfusion", folder)
    return folder


def test_two_aif_files_beside_the_image_are_refused(demo, tmp_path):
    folder = _perfusion_copy(demo, tmp_path, "two_aifs")
    shutil.copy(folder / "aif.csv", folder / "rest_aif.txt")
    with pytest.raises(CardiacInputError) as e:
        load_study(folder)
    assert "2 AIF files (aif.csv, rest_aif.txt)" in e.value.problem and "--aif" in e.value.problem
    assert load_study(folder, aif=folder / "aif.csv").provenance["aif_source"] == str(folder / "aif.csv")


def test_a_label_map_on_another_grid_is_refused_naming_it(demo, tmp_path):
    folder = _perfusion_copy(demo, tmp_path, "misfit")
    shutil.copy(demo / "cine" / "cine_labels.nii.gz", folder / "perfusion_labels.nii.gz")
    with pytest.raises(CardiacInputError) as e:
        load_study(folder)
    assert Path(e.value.path).name == "perfusion_labels.nii.gz"
    assert "does not match the image" in e.value.problem and "give perfusion.nii.gz itself" in e.value.problem


def test_dicom_files_beside_are_refused_and_a_batch_says_its_column_once(demo, tmp_path):
    from dicom_factory import new_dataset
    from pydicom.uid import MRImageStorage

    from CardiacAISegLib.cohort import _error_message

    folder = _perfusion_copy(demo, tmp_path, "with_dicom")
    ds = new_dataset(MRImageStorage, "1.2.826.0.1.3680043.10.99.7", 3, "SA cine")
    ds.save_as(folder / "IM0001.dcm", enforce_file_format=True)
    with pytest.raises(CardiacInputError) as e:
        load_study(folder)
    assert "DICOM files (IM0001.dcm)" in e.value.problem and "--labels perfusion_labels.nii.gz" in e.value.problem
    row = _error_message(e.value)
    assert row.count("(in a batch: the manifest's labels column)") == 1
    assert not re.search(r"\)\s*\(in a batch", row), row


def test_a_batch_note_after_a_parenthesis_reads_once():
    """ "give dt (seconds per frame, --dt) (in a batch: ...)": two parentheticals in a row."""
    from CardiacAISegLib.cohort import _error_message

    row = _error_message(CardiacInputError("perf.nii.gz", "frame interval unknown: give dt (seconds per frame, --dt)"))
    assert row.endswith("give dt (seconds per frame, --dt); in a batch: the manifest's dt column"), row


def test_an_aif_beside_a_cine_is_said_and_left_out_with_kind_cine(demo, tmp_path):
    folder = tmp_path / "cine_with_aif"
    shutil.copytree(demo / "cine", folder)
    shutil.copy(demo / "perfusion" / "aif.csv", folder / "aif.csv")
    with pytest.raises(CardiacInputError) as e:   # an AIF beside says perfusion, as --aif does
        load_study(folder)
    assert "an AIF file (aif.csv) lies beside the image" in e.value.problem and "--kind cine" in e.value.problem
    study = load_study(folder, kind="cine")
    assert study.kind == "cine" and study.aif is None
    assert any("aif.csv beside cine.nii.gz" in w and "not used" in w for w in study.provenance["warnings"])


def test_an_acdc_folder_of_one_frame_and_its_gt_stays_an_acdc_patient(tmp_path):
    """One image and its _gt beside an Info.cfg is an ACDC patient: its Info.cfg is read (and
    judged), not passed over for the one-image reading."""
    import nibabel as nib

    folder = tmp_path / "patient801"
    folder.mkdir()
    nib.save(nib.Nifti1Image(np.ones((16, 16, 4), np.float32), np.eye(4)), str(folder / "patient801_frame01.nii.gz"))
    nib.save(nib.Nifti1Image(np.zeros((16, 16, 4), np.uint8), np.eye(4)), str(folder / "patient801_frame01_gt.nii.gz"))
    (folder / "Info.cfg").write_text("ED: 1\nES: 1\nNbFrame: 6\n")
    with pytest.raises(CardiacInputError, match="ED and ES are the same frame"):
        load_study(folder)
