"""Notes of a segmentation run ("no heart found ...: the network segmented the whole field") are
the run's: said with its analysis (warnings, results.json, the exported scene's outputs) and
replaced by the next run, never kept as the input's reading notes. They were added to the
study's provenance warnings, so the Slicer Logic stamped them on the input node as notes of the
file: shown at Load, read back by a reopened scene and said again after a run with another model
that found the heart."""
import json
from pathlib import Path

import numpy as np
import pytest

from CardiacAISegLib.models import inference

NO_HEART = "no heart found on the middle slices (4, 5) in a first whole-field pass"


def heart_not_found(model, volume, *args, return_axis=False, **kwargs):
    """``inference.cine_heart_box`` whose first pass found no heart: the whole field is segmented."""
    return (None, NO_HEART, None) if return_axis else (None, NO_HEART)


def notes_of_the_run(warnings):
    return [w for w in warnings if w.startswith(NO_HEART)]


def stamped_reading_notes(node):
    """The reading notes the Logic stamped on an input node (read back when a scene reopens)."""
    from CardiacAISegLib.logic import STUDY_ATTRIBUTES

    return json.loads(node.GetAttribute(STUDY_ATTRIBUTES["provenance"]) or "{}").get("reader_warnings", [])


def test_a_runs_note_goes_with_its_outputs_not_onto_the_input(tmp_path, monkeypatch):
    """A cine segmented by the network whose first pass found no heart, exported (scene.mrb),
    reopened and run again with the heart found: the note is said with the first run's results,
    in the exported and the reopened scene, and with no later run; the input never holds it."""
    pytest.importorskip("slicer")
    pytest.importorskip("torch")
    from CardiacAISegLib import scene as sc
    from CardiacAISegLib.logic import CardiacAISegLogic
    from CardiacAISegLib.phantoms.phantom import make_cine_phantom
    from CardiacAISegLib.study import Study

    phantom, _ = make_cine_phantom(seed=3, n_frames=4, n_slices=8, size=96)
    logic = CardiacAISegLogic(sc.new_scene())
    logic.setStudy(Study(phantom.images.copy(), phantom.ijk_to_ras.copy(), kind=phantom.kind, name="phantom"))
    with monkeypatch.context() as m:
        m.setattr(inference, "cine_heart_box", heart_not_found)
        first = logic.runSegmentation(useExistingLabels=False)
    assert len(notes_of_the_run(first.warnings)) == 1             # said with the run, once
    assert logic.modelInfo["cine_heart_box"]["whole_field"] == NO_HEART
    assert not notes_of_the_run(logic.loadNotes())                # not a note of the file read
    results = json.loads(Path(logic.exportResults(tmp_path / "first")["results.json"]).read_text())
    assert len(notes_of_the_run(results["warnings"])) == 1

    # the exported scene: the input keeps its reading notes only; its outputs keep the run's note
    reopened = CardiacAISegLogic(sc.read_mrb(tmp_path / "first" / "scene.mrb"))
    assert not notes_of_the_run(stamped_reading_notes(reopened.getNodeParameter("inputNodeID")))
    assert len(notes_of_the_run(reopened.restoreFromParameterNode().warnings)) == 1
    assert not notes_of_the_run(reopened.loadNotes())

    # run again, the heart found this time (the field is within the square: whole field, no note)
    for again in (logic, reopened):
        second = again.runSegmentation(useExistingLabels=False)
        assert "no heart" not in str(second.model_info.get("cine_heart_box"))
        assert not notes_of_the_run(second.warnings)
        assert not notes_of_the_run(stamped_reading_notes(again.getNodeParameter("inputNodeID")))
    results = json.loads(Path(reopened.exportResults(tmp_path / "second")["results.json"]).read_text())
    assert not notes_of_the_run(results["warnings"])


def test_a_perfusion_runs_crop_note_is_its_own_and_the_next_run_replaces_it(monkeypatch):
    """A wide field whose bolus did not show the heart with confidence is segmented whole: the
    run's record says so (its note, QC HEART_NOT_FOUND), not the study's reading notes; a later
    run that crops nothing (the key-image path) and checks nothing leaves no trace of it, nor of
    its bolus-check reports."""
    pytest.importorskip("scipy")
    from CardiacAISegLib.analysis import Analysis
    from CardiacAISegLib.models import perfusion_keyimage, perfusion_segmentation, registry
    from CardiacAISegLib.phantoms.phantom import make_perfusion_phantom
    from CardiacAISegLib.study import Study

    phantom, _ = make_perfusion_phantom(seed=5, stress=True, noise=0.01)     # 96 px at 1.8 mm
    t, s, r, c = phantom.images.shape
    images = np.abs(np.random.default_rng(0).normal(0, 0.02, (t, s, 260, 230))).astype(np.float32)
    images[:, :, 70:70 + r, 41:41 + c] = phantom.images                      # in a 468 x 414 mm field
    study = Study(images=images, ijk_to_ras=phantom.ijk_to_ras.copy(), kind="perfusion",
                  frame_times_s=phantom.frame_times_s, aif=phantom.aif, units=phantom.units)
    model = registry.load_model(registry.default_model("perfusion"))
    reason = "no RV peaked before the LV next to it"
    found = perfusion_keyimage.bolus_timing_or_curve_peak

    def unsure(st):
        return dict(found(st), confidence="low", reason=reason)

    def analysed(labels, name):
        a = Analysis(study, labels)
        a.model_info = {"name": name, "perfusion_segmentation": dict(study.provenance["perfusion_segmentation"])}
        return a.run()

    with monkeypatch.context() as m:
        m.setattr(perfusion_keyimage, "bolus_timing_or_curve_peak", unsure)
        labels = perfusion_segmentation.segment_perfusion_study(study, model, mode="frames", refine=True)
    assert study.provenance["perfusion_segmentation"]["heart_not_found"] == reason
    assert study.provenance["mask_refinement"]                # the bolus check ran
    assert not study.provenance.get("warnings")               # nothing the images said
    first = analysed(labels, model.card["name"])
    assert sum(reason in w and "segments the whole field" in w for w in first.warnings) == 1
    assert "HEART_NOT_FOUND" in {f["code"] for f in first.qc["flags"]}

    labels = perfusion_segmentation.segment_perfusion_study(study, model, mode="cine-key-image", refine=False)
    for key in ("heart_not_found", "heart_crop", "mask_refinement"):
        assert key not in study.provenance, key
    assert study.provenance["perfusion_segmentation"]["heart_not_found"] is None
    second = analysed(labels, model.card["name"])
    assert not [w for w in second.warnings if reason in w]
    assert "HEART_NOT_FOUND" not in {f["code"] for f in second.qc["flags"]}


def test_a_note_stamped_by_an_older_scene_is_not_said_as_the_files(tmp_path, monkeypatch):
    """Scenes saved before session 46 stamped the run's note among the input's reading notes: read
    back, it was said after every later run, one that found the heart included (review)."""
    pytest.importorskip("slicer")
    pytest.importorskip("torch")
    from CardiacAISegLib import scene as sc
    from CardiacAISegLib.logic import STUDY_ATTRIBUTES, CardiacAISegLogic
    from CardiacAISegLib.models.inference import heart_box_warning
    from CardiacAISegLib.models.perfusion_segmentation import heart_not_found_warning
    from CardiacAISegLib.phantoms.phantom import make_cine_phantom
    from CardiacAISegLib.study import Study

    phantom, _ = make_cine_phantom(seed=3, n_frames=4, n_slices=8, size=96)
    logic = CardiacAISegLogic(sc.new_scene())
    logic.setStudy(Study(phantom.images.copy(), phantom.ijk_to_ras.copy(), kind=phantom.kind, name="phantom"))
    node = logic.getNodeParameter("inputNodeID")
    stamped = json.loads(node.GetAttribute(STUDY_ATTRIBUTES["provenance"]) or "{}")
    older = [heart_box_warning({"whole_field": NO_HEART}),
             heart_not_found_warning({"heart_not_found": "no RV peaked before the LV next to it"}),
             "a note of the file itself"]
    stamped["reader_warnings"] = older
    node.SetAttribute(STUDY_ATTRIBUTES["provenance"], json.dumps(stamped))
    study = logic.studyFromNode(node)
    assert study.provenance["warnings"].count("a note of the file itself") == 1
    assert not [w for w in study.provenance["warnings"] if w in older[:2]], study.provenance["warnings"]
    found = logic.runSegmentation(useExistingLabels=False)
    assert not [w for w in found.warnings if w in older[:2]]


def test_a_reopened_stress_rest_pair_says_the_rest_runs_note(tmp_path, monkeypatch):
    """The rest series' run note came back only from the rest node's stamped reading notes; moved
    to the run's model info, a reopened pair lost it (review): the rest's model info is saved with
    the scene, and its note and QC flag come back."""
    pytest.importorskip("slicer")
    pytest.importorskip("torch")
    from CardiacAISegLib import scene as sc
    from CardiacAISegLib.logic import CardiacAISegLogic
    from CardiacAISegLib.models import perfusion_keyimage
    from CardiacAISegLib.phantoms.phantom import make_perfusion_phantom
    from CardiacAISegLib.study import Study

    def wide(stress, name):
        phantom, _ = make_perfusion_phantom(seed=5, stress=stress, noise=0.01)
        t, s, r, c = phantom.images.shape
        images = np.abs(np.random.default_rng(0).normal(0, 0.02, (t, s, 260, 230))).astype(np.float32)
        images[:, :, 70:70 + r, 41:41 + c] = phantom.images
        return Study(images=images, ijk_to_ras=phantom.ijk_to_ras.copy(), kind="perfusion",
                     frame_times_s=phantom.frame_times_s, aif=phantom.aif, units=phantom.units, name=name)

    reason = "no RV peaked before the LV next to it"
    found = perfusion_keyimage.bolus_timing_or_curve_peak
    monkeypatch.setattr(perfusion_keyimage, "bolus_timing_or_curve_peak", lambda st: dict(found(st), confidence="low",
                                                                                           reason=reason))
    logic = CardiacAISegLogic(sc.new_scene())
    logic.setStudy(wide(True, "stress"))
    logic.setRestStudy(wide(False, "rest"))
    live = logic.runSegmentation(useExistingLabels=False, modelName="perfusion-resunet")

    def rest_said(a):
        return ([w for w in a.warnings if w.startswith("rest series: ") and reason in w],
                [f["code"] for f in a.rest.qc["flags"] if f["code"] == "HEART_NOT_FOUND"])

    notes, flags = rest_said(live)
    assert len(notes) == 1 and flags == ["HEART_NOT_FOUND"]
    logic.exportResults(tmp_path / "out", force=True)
    reopened = CardiacAISegLogic(sc.read_mrb(tmp_path / "out" / "scene.mrb")).restoreFromParameterNode()
    assert rest_said(reopened) == (notes, flags)
