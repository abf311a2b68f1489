"""An input picked again in one scene brings back its own analysis (probe 99 #5).

Study A analysed, then study B, then A's input picked again (what the module's input selector
does): B's outputs were let go, but A's, still in the scene, were not selected again. The table
and handles in view were not A's, A's results were not live (an edit of its segmentation was not
measured) and the parameters its analysis was measured with (density, edited frames, kept ED/ES)
were B's."""
import numpy as np
import pytest

pytest.importorskip("slicer")

from CardiacAISegLib import scene as sc  # noqa: E402
from CardiacAISegLib.labels import MYO  # noqa: E402
from CardiacAISegLib.logic import OUTPUT_PARAMETERS, CardiacAISegLogic  # noqa: E402
from CardiacAISegLib.phantoms.phantom import make_cine_phantom  # noqa: E402


@pytest.fixture(scope="module")
def phantoms():
    # two patients, every frame labelled (a whole cycle: its frame labels and kept ED/ES too)
    return [make_cine_phantom(seed=seed, n_frames=8, n_slices=8, size=96)[0] for seed in (3, 4)]


def rows_of(table):
    return {r["measure"]: r["value"] for r in sc.table_rows(table)}


def erase_myocardium(logic, count=12):
    """Erase ``count`` myocardium voxels of the ED segmentation (a Segment Editor stroke) and measure it."""
    import slicer

    a = logic.analysis
    seg = logic.getNodeParameter("outputSegmentationID")
    ed = int(seg.GetAttribute("CardiacAISeg.Frame"))
    mask = (sc.labelmap_from_segmentation(seg, a.study.ijk_to_ras, a.study.images.shape[1:]) == MYO).astype(np.uint8)
    for v in np.argwhere(mask)[::37][:count]:
        mask[tuple(v)] = 0
    modes = slicer.vtkSlicerSegmentationsModuleLogic
    assert modes.SetBinaryLabelmapToSegment(sc._oriented_image(mask, a.study.ijk_to_ras), seg, "myo", modes.MODE_REPLACE)
    logic.onSegmentationEdited(seg)
    return ed


def snapshot(logic):
    a = logic.analysis
    return {"outputs": {n: logic.getNodeParameter(n) for n in OUTPUT_PARAMETERS},
            "rows": rows_of(logic.getNodeParameter("tableID")), "edv": a.cine["lv_edv_ml"], "mass": a.cine["lv_mass_g"],
            "edited": set(a.edited_frames), "kept": a.kept_ed_es, "density": a.density}


@pytest.fixture
def two_studies(phantoms):
    """One scene: A measured and corrected by hand (an ED edit), then B measured with another density."""
    logic = CardiacAISegLogic(sc.new_scene())
    nodesA = logic.setStudy(phantoms[0])
    logic.runSegmentation(useExistingLabels=True)
    erase_myocardium(logic)
    a = snapshot(logic)
    assert a["edited"] and a["kept"] is not None   # per-analysis parameters B's run writes over
    nodesB = logic.setStudy(phantoms[1])
    logic.setParameter("density", "1.1")
    logic.runSegmentation(useExistingLabels=True)
    b = snapshot(logic)
    assert b["edv"] != pytest.approx(a["edv"]) and not b["edited"] and b["density"] == 1.1
    assert all(b["outputs"][n] is not a["outputs"][n] for n in OUTPUT_PARAMETERS if a["outputs"][n] is not None)
    return logic, nodesA, nodesB, a, b


def assert_shows(logic, expected):
    a = logic.analysis
    assert a is not None
    assert a.cine["lv_edv_ml"] == pytest.approx(expected["edv"], rel=1e-12)
    assert a.cine["lv_mass_g"] == pytest.approx(expected["mass"], rel=1e-12)
    assert a.density == expected["density"] and logic.getParameter("measuredDensity") == repr(expected["density"])
    assert a.edited_frames == expected["edited"] and a.kept_ed_es == expected["kept"]
    assert {n: logic.getNodeParameter(n) for n in OUTPUT_PARAMETERS} == expected["outputs"]
    assert rows_of(logic.getNodeParameter("tableID")) == pytest.approx(expected["rows"], rel=1e-6, nan_ok=True)


def test_an_input_picked_again_brings_back_its_own_analysis(two_studies):
    logic, nodesA, nodesB, a, b = two_studies
    logic.studyFromNode(nodesA.sequence)            # what the input selector does
    assert logic.getNodeParameter("inputNodeID") is nodesA.sequence
    assert_shows(logic, a)
    assert logic.getNodeParameter("tableID") is a["outputs"]["tableID"]
    assert logic.getNodeParameter("outputSegmentationID") is a["outputs"]["outputSegmentationID"]
    assert logic.getParameter("editedFrames") == " ".join(str(f) for f in sorted(a["edited"]))
    assert logic.getParameter("keptEdEs") == "%d %d" % a["kept"]
    # B's outputs were let go, not written over
    assert rows_of(b["outputs"]["tableID"]) == pytest.approx(b["rows"], rel=1e-6, nan_ok=True)


def test_an_edit_after_picking_an_input_again_is_measured_and_leaves_the_other_study_alone(two_studies):
    logic, nodesA, nodesB, a, b = two_studies
    logic.studyFromNode(nodesA.sequence)
    assert logic.analysis is not None
    mass = logic.analysis.cine["lv_mass_g"]
    erase_myocardium(logic, count=20)
    assert logic.analysis.cine["lv_mass_g"] < mass
    rows = rows_of(a["outputs"]["tableID"])
    assert rows["LV mass"] == pytest.approx(logic.analysis.cine["lv_mass_g"], rel=1e-5)
    assert rows["LV mass"] != pytest.approx(a["rows"]["LV mass"], rel=1e-6)
    assert rows_of(b["outputs"]["tableID"]) == pytest.approx(b["rows"], rel=1e-6, nan_ok=True)


def test_picking_the_other_study_again_brings_back_its_numbers(two_studies):
    logic, nodesA, nodesB, a, b = two_studies
    logic.studyFromNode(nodesA.sequence)
    erase_myocardium(logic, count=20)
    edited = snapshot(logic)
    logic.setParameter("inputNodeID", nodesB.sequence)   # the selector's binding writes the parameter first (probe 79)
    logic.studyFromNode(nodesB.sequence)
    assert_shows(logic, b)
    assert logic.getParameter("editedFrames") == "" and logic.getParameter("keptEdEs") == ""
    # and A once more, with the edit made after it was picked again
    logic.studyFromNode(nodesA.sequence)
    assert_shows(logic, edited)


def test_deleted_outputs_stay_deleted_and_the_other_study_still_comes_back(two_studies):
    """A's table deleted while B was shown: A is read with no analysis (nothing made again, no
    error); B picked again still comes back."""
    logic, nodesA, nodesB, a, b = two_studies
    logic.scene.RemoveNode(a["outputs"]["tableID"])
    tables = logic.scene.GetNumberOfNodesByClass("vtkMRMLTableNode")
    logic.studyFromNode(nodesA.sequence)
    assert logic.analysis is None and not any(logic.getParameter(n) for n in OUTPUT_PARAMETERS)
    assert logic.scene.GetNumberOfNodesByClass("vtkMRMLTableNode") == tables
    assert logic.getParameter("measuredDensity") == repr(b["density"])   # as before: nothing of A's put back
    logic.studyFromNode(nodesB.sequence)
    assert_shows(logic, b)


def test_a_saved_scene_reopened_on_one_study_brings_back_the_other_when_picked(two_studies, tmp_path):
    """What is kept for an input let go is saved with the scene."""
    logic, nodesA, nodesB, a, b = two_studies
    sc.write_mrb(logic.context, tmp_path / "scene.mrb")
    reopened = CardiacAISegLogic(sc.read_mrb(tmp_path / "scene.mrb"))
    assert reopened.restoreFromParameterNode().cine["lv_edv_ml"] == pytest.approx(b["edv"], rel=1e-9)
    inputA = reopened.scene.GetNodeByID(nodesA.sequence.GetID())
    tableA = reopened.scene.GetNodeByID(a["outputs"]["tableID"].GetID())
    reopened.studyFromNode(inputA)
    assert reopened.analysis is not None and reopened.getNodeParameter("tableID") is tableA
    assert reopened.analysis.cine["lv_edv_ml"] == pytest.approx(a["edv"], rel=1e-9)
    assert reopened.analysis.edited_frames == a["edited"] and reopened.analysis.kept_ed_es == a["kept"]
    assert reopened.analysis.density == a["density"]


def test_a_stress_series_picked_again_comes_back_with_its_rest_series_and_mpr(phantoms, tmp_path):
    """The rest series the Logic added for a stress series is let go with it (the rest selector is
    emptied for the next input); picked again, the stress series is paired with it again and its
    MPR rows come back, not measured without them."""
    import json

    from CardiacAISegLib.phantoms.phantom import write_phantom

    logic = CardiacAISegLogic(sc.new_scene())
    stress = logic.loadSamplePhantom("perfusion", tmp_path / "stress")
    write_phantom("perfusion", tmp_path / "rest", seed=5, force=True)
    rest = tmp_path / "rest"
    dt = json.loads((rest / "truth.json").read_text())["dt_s"]
    logic.loadRestStudy(rest / "perfusion.nii.gz", labels=rest / "perfusion_labels.nii.gz", aif=rest / "aif.csv", dt=dt)
    logic.runSegmentation(useExistingLabels=True)
    expected, restNode = rows_of(logic.getNodeParameter("tableID")), logic.getNodeParameter("restNodeID")
    assert "Global MPR" in expected and restNode is not None
    logic.setStudy(phantoms[1])
    logic.runSegmentation(useExistingLabels=True)
    assert logic.getNodeParameter("restNodeID") is None
    logic.studyFromNode(stress.sequence)
    assert logic.analysis is not None and logic.analysis.rest is not None
    assert logic.getNodeParameter("restNodeID") is restNode
    assert rows_of(logic.getNodeParameter("tableID")) == pytest.approx(expected, rel=1e-4, nan_ok=True)


def test_a_series_shown_without_its_pd_frames_picked_again_brings_back_its_analysis(phantoms):
    """A series whose PD reference images the Logic leaves out is shown (and analysed) as a copy of
    the frames it analyses. Picked again after another study, the file's series made one more copy,
    a new input with no outputs: its analysis was not brought back."""
    from CardiacAISegLib.phantoms.phantom_perfusion import make_perfusion_phantom
    from CardiacAISegLib.study import Study

    study, _ = make_perfusion_phantom(seed=3, n_frames=40, noise=0.005)
    signal = (100.0 + 400.0 * np.maximum(study.images, 0)).astype(np.float32)
    written = Study(images=np.concatenate([np.repeat(5 * signal[:1], 3, axis=0), signal]), ijk_to_ras=study.ijk_to_ras,
                    kind="perfusion", frame_times_s=np.arange(study.n_frames + 3) * 0.5)
    logic = CardiacAISegLogic(sc.new_scene())
    nodes = sc.add_study(logic.context, written)
    logic.setParameter("kind", "perfusion")
    logic.studyFromNode(nodes.sequence)
    shown = logic.getNodeParameter("inputNodeID")
    assert shown is not nodes.sequence and logic.study.provenance["pd_frames"]["dropped"] == 3
    logic.study.labels = {int(t): m for t, m in study.labels.items()}
    logic.runSegmentation(useExistingLabels=True)
    table, expected = logic.getNodeParameter("tableID"), rows_of(logic.getNodeParameter("tableID"))
    logic.setStudy(phantoms[1])
    logic.runSegmentation(useExistingLabels=True)
    sequences = logic.scene.GetNumberOfNodesByClass("vtkMRMLSequenceNode")
    logic.studyFromNode(nodes.sequence)             # the file's series picked in the input box again
    assert logic.getNodeParameter("inputNodeID") is shown
    assert logic.scene.GetNumberOfNodesByClass("vtkMRMLSequenceNode") == sequences
    assert logic.analysis is not None and logic.getNodeParameter("tableID") is table
    assert rows_of(table) == pytest.approx(expected, rel=1e-6, nan_ok=True)


def test_a_series_timed_by_the_frame_interval_box_comes_back_with_its_own_interval():
    """A perfusion sequence without times is timed by the 'Frame interval' box: analysed at 0.5 s,
    then another series picked and 1.0 s typed for it, then the first picked again: it was read
    again at 1.0 s and its analysis brought back with MBF halved in its table, unflagged (review
    of session 45). Its interval is stamped on its node and read back when it is picked again."""
    from CardiacAISegLib import scene as sc
    from CardiacAISegLib.logic import CardiacAISegLogic
    from CardiacAISegLib.phantoms.phantom_perfusion import make_perfusion_phantom
    from CardiacAISegLib.study import Study

    def untimed(seed):
        st, _ = make_perfusion_phantom(seed=seed, n_frames=40, noise=0.005)
        return Study(images=st.images, ijk_to_ras=st.ijk_to_ras, kind="perfusion", aif=st.aif, labels=st.labels), \
            float(np.median(np.diff(st.frame_times_s)))

    logic = CardiacAISegLogic(sc.new_scene())
    logic.setParameter("kind", "perfusion")
    a, dt = untimed(3)
    a_nodes = sc.add_study(logic.context, a)
    logic.setParameter("frameTimeS", repr(dt))
    logic.studyFromNode(a_nodes.sequence)
    logic.study.labels = {int(t): m for t, m in a.labels.items()}
    logic.runSegmentation(useExistingLabels=True)
    mbf = logic.analysis.perfusion["global_mbf_ml_min_g"]
    b, _ = untimed(4)
    b_nodes = sc.add_study(logic.context, b)
    logic.setParameter("frameTimeS", repr(2 * dt))   # typed for the next series, then it is picked
    logic.studyFromNode(b_nodes.sequence)
    logic.study.labels = {int(t): m for t, m in b.labels.items()}
    logic.runSegmentation(useExistingLabels=True)
    logic.studyFromNode(a_nodes.sequence)
    assert float(logic.getParameter("frameTimeS")) == pytest.approx(dt)
    assert logic.analysis is not None and logic.analysis.perfusion["global_mbf_ml_min_g"] == pytest.approx(mbf, rel=1e-6)
    assert logic.study.frame_times_s[-1] == pytest.approx(39 * dt)
