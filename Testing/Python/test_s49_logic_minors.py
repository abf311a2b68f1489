"""Three leftovers of probe 103 in the Slicer Logic:

1. ``exportResults(Path(""))``: ``Path("")`` reads ``"."``, and the results went into the working
   folder, one the user never named; the CLI refuses an empty ``--out``, and both now ask one rule
   (``outputs.check_output_folder_named``).
2. The input series deleted from the scene (the Data module): its edits were still measured and its
   results exported, run again and stamped on outputs made for no node. Refused by name.
3. The 'Frames' box (``--frames``) set to all frames on a perfusion series chose nothing and nothing
   said so in the module: ``compute_analysis``, where every front end runs the network, says it.
"""
import re
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("slicer")

from CardiacAISegLib import scene as sc  # noqa: E402
from CardiacAISegLib.errors import CardiacInputError  # noqa: E402
from CardiacAISegLib.logic import CardiacAISegLogic  # noqa: E402
from CardiacAISegLib.phantoms.phantom import make_cine_phantom  # noqa: E402
from CardiacAISegLib.study import Study  # noqa: E402

FRAMES_NOTE = ("--frames all not used: it chooses the cine frames a network segments; a perfusion series gets one mask "
               "from its key frames, followed through the frames by motion correction")


def _cine(n_frames=4):
    study, _ = make_cine_phantom(seed=2, n_frames=n_frames, n_slices=6, size=64)
    return study


def _measured(study):
    logic = CardiacAISegLogic(sc.new_scene())
    logic.setStudy(study)
    logic.runSegmentation(useExistingLabels=True)
    return logic


# ------------------------------------------------------------------ 1. empty output folder name
@pytest.mark.parametrize("empty", [Path(""), Path("."), Path("./"), "", "  "],
                         ids=["Path('')", "Path('.')", "Path('./')", "''", "'  '"])
def test_an_empty_output_folder_name_is_refused_and_nothing_is_written(empty, tmp_path, monkeypatch):
    logic = _measured(_cine())
    monkeypatch.chdir(tmp_path)
    for call in (lambda: logic.exportResults(empty), lambda: logic.saveGroundTruth(empty, "patient101")):
        with pytest.raises(CardiacInputError, match="^output folder: an empty output folder name; give the folder to "
                                                    "write into"):
            call()
    assert list(tmp_path.iterdir()) == []


def test_the_working_folder_named_as_text_is_written_as_the_cli_writes_out_dot(tmp_path, monkeypatch):
    """The text "." names the working folder on purpose (``--out .``): written there, as the CLI does."""
    from CardiacAISegLib import cli

    logic = _measured(_cine())
    monkeypatch.chdir(tmp_path)
    paths = logic.exportResults(".")
    assert (tmp_path / "results.json").is_file() and Path(paths["results.json"]).resolve() == tmp_path / "results.json"
    assert cli._out_folder(".") == "."


def test_the_cli_refuses_an_empty_out_in_the_same_words(capsys):
    from CardiacAISegLib import cli

    for command in (["analyze", "x.nii.gz", "--out", ""], ["phantom", "--out", " "]):
        with pytest.raises(SystemExit) as e:
            cli.main(command)
        assert e.value.code == 2
        assert "argument --out: an empty output folder name; give the folder to write into, e.g. --out out" in \
            capsys.readouterr().err


# ------------------------------------------------------------------ 2. the input deleted from the scene
def _removal_refused(node):
    """The refusal, naming the deleted node."""
    return pytest.raises(CardiacInputError, match=rf"^{re.escape(node.GetName())}: the input series of this analysis was "
                                                  r"removed from the scene.*load \(or pick\) the series again")


def test_an_analysis_whose_input_series_was_deleted_is_not_measured_run_or_saved(tmp_path):
    logic = _measured(_cine())
    sequence = logic.studyNodes.sequence
    segmentation, markups = logic.getNodeParameter("outputSegmentationID"), logic.getNodeParameter("markupsID")
    table_rows = sc.table_rows(logic.getNodeParameter("tableID"))
    labels = {t: m.copy() for t, m in logic.analysis.labels.items()}
    logic.scene.RemoveNode(sequence)   # the Data module's Delete
    calls = {"an edit": lambda: logic.onSegmentationEdited(segmentation),
             "a handle drag": lambda: logic.onInsertionPointMoved(markups),
             "exportResults": lambda: logic.exportResults(tmp_path / "results"),
             "saveGroundTruth": lambda: logic.saveGroundTruth(tmp_path / "gt", "patient101"),
             "renderReport": lambda: logic.renderReport(tmp_path / "report.png"),
             "agreementWithNetwork": lambda: logic.agreementWithNetwork(),
             "a run": lambda: logic.runSegmentation(useExistingLabels=True)}
    for call in calls.values():
        with _removal_refused(sequence):
            call()
    assert list(tmp_path.iterdir()) == []
    # nothing of the analysis or its outputs was changed: the user's segmentations stay as they were
    assert sc.table_rows(logic.getNodeParameter("tableID")) == table_rows
    assert all(np.array_equal(labels[t], m) for t, m in logic.analysis.labels.items())
    # the series loaded again is the input, measured and saved as any
    logic.setStudy(_cine())
    logic.runSegmentation(useExistingLabels=True)
    assert "results.json" in logic.exportResults(tmp_path / "again")


def test_a_one_frame_input_volume_deleted_is_refused_by_its_name(tmp_path):
    one = _cine(n_frames=4)
    study = Study(one.images[:1].copy(), one.ijk_to_ras.copy(), kind=one.kind, name="phantom",
                  labels={0: one.labels[min(one.labels)].copy()})
    logic = _measured(study)
    volume = logic.studyNodes.volume
    assert logic.studyNodes.sequence is None
    logic.scene.RemoveNode(volume)
    with _removal_refused(volume):
        logic.exportResults(tmp_path / "results")
    assert list(tmp_path.iterdir()) == []


def test_the_proxy_volume_deleted_leaves_the_input_sequence_measured(tmp_path):
    """The browser's proxy volume is a view of the sequence, which still holds every frame: its
    analysis goes on."""
    logic = _measured(_cine())
    logic.scene.RemoveNode(logic.studyNodes.volume)
    logic.onSegmentationEdited(logic.getNodeParameter("outputSegmentationID"))
    assert "results.json" in logic.exportResults(tmp_path / "results")


# ------------------------------------------------------------------ 3. frames on a perfusion series
@pytest.fixture
def perfusion_folder(perfusion_phantom_folder):
    return perfusion_phantom_folder


def test_all_frames_on_a_perfusion_series_is_said_unused_in_the_module(perfusion_folder):
    pytest.importorskip("torch")
    logic = CardiacAISegLogic(sc.new_scene())
    logic.loadSamplePhantom("perfusion", perfusion_folder)
    logic.setParameter("frames", "all")
    a = logic.runSegmentation(useExistingLabels=False)
    said = logic.warningsInModuleTerms(a.warnings)
    assert said.count("the 'Frames' box set to 'All frames' not used: it chooses the cine frames a network segments; "
                      "a perfusion series gets one mask from its key frames, followed through the frames by motion "
                      "correction") == 1
    # the box at its default: nothing to say
    logic.setParameter("frames", "ed_es")
    a = logic.runSegmentation(useExistingLabels=False)
    assert not [w for w in a.warnings if "--frames" in w]


def test_compute_analysis_says_it_once_for_every_front_end(perfusion_folder):
    """The CLI, a batch row and the Slicer Logic all measure through ``compute_analysis``."""
    pytest.importorskip("torch")
    import json

    from CardiacAISegLib.pipeline import compute_analysis
    from CardiacAISegLib.readers import load_study

    dt = json.loads((perfusion_folder / "truth.json").read_text())["dt_s"]
    study = load_study(perfusion_folder / "perfusion.nii.gz", kind="perfusion", aif=perfusion_folder / "aif.csv", dt=dt)
    assert compute_analysis(study, frames="all").warnings.count(FRAMES_NOTE) == 1
    # labels measured as given: no network, and the labels' own note is the CLI's (analyze.run)
    labelled = load_study(perfusion_folder / "perfusion.nii.gz", kind="perfusion", aif=perfusion_folder / "aif.csv", dt=dt,
                          labels=perfusion_folder / "perfusion_labels.nii.gz")
    assert FRAMES_NOTE not in compute_analysis(labelled, labels=labelled.labels, frames="all").warnings
