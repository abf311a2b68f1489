"""Notes on how an analysis was made outlive an edit; a note on labels the edit replaced does not.

``Analysis.set_labels`` (an edit in Slicer or the web GUI) measures again from no warnings, and the
notes ``compute_analysis`` and the CLI had appended after the run went with the first stroke: the
'Frames' setting unused on a perfusion series, the network's ED/ES check that could not run, the
CLI's flags not used. They are the run's and stay (``Analysis.add_run_note``). A note on the mask
as the network gave it (the bolus check mended slice k: "check the contours") speaks of that slice
only while it is so: redrawn by the user it goes, the other slices' notes stay, and an undo says it
again (``Analysis.add_mask_note``); the same for the CLI's automatic ring ROI.
"""
import json

import numpy as np
import pytest

from CardiacAISegLib.labels import MYO
from CardiacAISegLib.pipeline import frames_unused_on_perfusion, refinement_warnings

FRAMES_NOTE = frames_unused_on_perfusion("all")
# the bolus check's record of a run (the phantom's walls need no mending, so its own run says nothing)
REPORTS = [{"slice": 1, "refined": True, "sectors_filled": 6, "sectors_trimmed": 3, "sectors_widened": 1},
           {"slice": 2, "refined": False, "reason": "no bolus seen in the LV blood pool"}]
SLICE_1_NOTE, SLICE_2_NOTE = (refinement_warnings([r])[0] for r in REPORTS)


@pytest.fixture
def perfusion_folder(perfusion_phantom_folder):
    return perfusion_phantom_folder


def _perfusion_study(folder):
    from CardiacAISegLib.readers import load_study

    dt = json.loads((folder / "truth.json").read_text())["dt_s"]
    return load_study(folder / "perfusion.nii.gz", kind="perfusion", aif=folder / "aif.csv", dt=dt)


@pytest.fixture
def mended_by_the_bolus_check(monkeypatch):
    """The shipped network's run, its record saying the bolus check mended slice 1 and could not
    check slice 2 (what ``segment`` hands on from ``study.provenance["mask_refinement"]``)."""
    pytest.importorskip("torch")
    from CardiacAISegLib import pipeline

    real = pipeline.segment

    def segment(study, *args, **kwargs):
        labels, info = real(study, *args, **kwargs)
        return labels, dict(info, mask_refinement=[dict(r) for r in REPORTS])

    monkeypatch.setattr(pipeline, "segment", segment)


def _trimmed(labels, k, n=6):
    """``labels`` with ``n`` myocardium pixels of slice ``k`` erased (a stroke of the eraser)."""
    out = labels.copy()
    myo = np.argwhere(out[k] == MYO)
    for r, c in myo[:: max(1, len(myo) // n)][:n]:
        out[k, r, c] = 0
    assert (out != labels).sum() == n
    return out


def test_the_runs_notes_stay_through_edits_and_a_slices_note_goes_when_it_is_redrawn(perfusion_folder,
                                                                                     mended_by_the_bolus_check):
    from CardiacAISegLib.pipeline import compute_analysis

    a = compute_analysis(_perfusion_study(perfusion_folder), frames="all")
    network_mask = a.labels[0].copy()
    assert [w for w in a.warnings if w in (FRAMES_NOTE, SLICE_1_NOTE, SLICE_2_NOTE)] == \
        [SLICE_1_NOTE, SLICE_2_NOTE, FRAMES_NOTE]

    a.set_labels(0, _trimmed(network_mask, 0))          # slice 0 corrected: every note stands
    for note in (FRAMES_NOTE, SLICE_1_NOTE, SLICE_2_NOTE):
        assert a.warnings.count(note) == 1, (note, a.warnings)

    redrawn = _trimmed(a.labels[0], 1)                   # slice 1 redrawn: its note on the network's mask goes
    a.set_labels(0, redrawn)
    assert SLICE_1_NOTE not in a.warnings
    assert a.warnings.count(SLICE_2_NOTE) == 1 and a.warnings.count(FRAMES_NOTE) == 1
    assert SLICE_1_NOTE not in a.results()["warnings"]

    handle = a.insertion[0]
    a.move_insertion_point(handle["slice"], "anterior", handle["anterior_ras"])   # no re-run: nothing comes back
    assert SLICE_1_NOTE not in a.warnings
    undone = redrawn.copy()
    undone[1] = network_mask[1]                          # the stroke undone: the network's slice 1 again
    a.set_labels(0, undone)
    assert a.warnings.count(SLICE_1_NOTE) == 1 and a.warnings.count(SLICE_2_NOTE) == 1
    assert a.warnings.count(FRAMES_NOTE) == 1


def test_the_given_ed_es_checks_failure_stays_through_an_edit(monkeypatch):
    """The given ED/ES that the network could not check: a note of the run, said after an edit."""
    from CardiacAISegLib import pipeline
    from CardiacAISegLib.analysis import Analysis
    from CardiacAISegLib.errors import CardiacInputError
    from CardiacAISegLib.phantoms.phantom import make_cine_phantom

    study, truth = make_cine_phantom(seed=2, n_frames=8, n_slices=6, size=64)
    ed, es = truth["ed_frame"], truth["es_frame"]
    a = Analysis(study, {t: study.labels[t] for t in (ed, es)}).run()
    others = [t for t in range(study.n_frames) if t not in (ed, es)]
    a.cine["ed_es_check"] = {"disagree": True, "largest": others[0], "smallest": others[1]}

    def failing(*args, **kwargs):
        raise CardiacInputError("model 'cine'", "it is not installed")

    monkeypatch.setattr(pipeline, "segment", failing)
    assert pipeline.given_ed_es_checked_by_the_network(a, "cine")
    note = "the given ED/ES frames could not be checked with the network (it is not installed)"
    assert a.warnings.count(note) == 1
    a.set_labels(es, _trimmed(a.labels[es], study.n_slices // 2))
    assert a.warnings.count(note) == 1, a.warnings


def test_the_clis_notes_stay_and_the_rings_goes_when_every_ring_slice_is_redrawn(perfusion_folder, tmp_path):
    from CardiacAISegLib import analyze

    dt = json.loads((perfusion_folder / "truth.json").read_text())["dt_s"]
    a, _ = analyze.run(perfusion_folder / "perfusion.nii.gz", tmp_path / "out", labels="ring", frames="all",
                       aif=perfusion_folder / "aif.csv", dt=dt, kind="perfusion", reports="none")
    unused = "--frames all not used: it chooses the frames a network segments; --labels gives the label maps"
    ring_note = next(w for w in a.warnings if w.startswith("myocardium from an automatic ring ROI"))
    assert a.warnings.count(unused) == 1
    ring = a.labels[0].copy()
    ring_slices = [k for k in range(ring.shape[0]) if (ring[k] == MYO).any()]
    assert len(ring_slices) > 1

    a.set_labels(0, _trimmed(ring, ring_slices[0]))       # one slice redrawn: the others are still the ring
    assert a.warnings.count(unused) == 1 and a.warnings.count(ring_note) == 1
    everywhere = ring
    for k in ring_slices:
        everywhere = _trimmed(everywhere, k)
    a.set_labels(0, everywhere)                           # the wall redrawn on every slice: the user's, not a band
    assert ring_note not in a.warnings
    assert a.warnings.count(unused) == 1


def test_the_slicer_module_keeps_them_after_an_edit_and_exports_them(perfusion_folder, mended_by_the_bolus_check,
                                                                     tmp_path):
    """The Logic's edit path (the Segment Editor, and the web GUI's strokes through it) and its export."""
    pytest.importorskip("slicer")
    from CardiacAISegLib import scene as sc
    from CardiacAISegLib.logic import CardiacAISegLogic, fill_segmentation

    logic = CardiacAISegLogic(sc.new_scene())
    logic.loadSamplePhantom("perfusion", perfusion_folder)
    logic.setParameter("frames", "all")
    a = logic.runSegmentation(useExistingLabels=False)
    seg = logic.getNodeParameter("outputSegmentationID")
    fill_segmentation(seg, _trimmed(a.labels[0], 1), a.study.ijk_to_ras)
    logic.onSegmentationEdited(seg)
    a = logic.analysis
    said = logic.warningsInModuleTerms(a.warnings)
    assert said.count("the 'Frames' box set to 'All frames' not used: it chooses the cine frames a network segments; "
                      "a perfusion series gets one mask from its key frames, followed through the frames by motion "
                      "correction") == 1
    assert SLICE_1_NOTE not in a.warnings and a.warnings.count(SLICE_2_NOTE) == 1
    paths = logic.exportResults(tmp_path / "results")
    written = json.loads(paths["results.json"].read_text())["warnings"]
    assert written.count(FRAMES_NOTE) == 1 and written.count(SLICE_2_NOTE) == 1 and SLICE_1_NOTE not in written


def test_the_web_gui_keeps_the_network_notes_after_a_stroke(perfusion_folder, mended_by_the_bolus_check, tmp_path):
    pytest.importorskip("slicer")
    import shutil

    from CardiacAISegLib.webgui.session import Session

    data = tmp_path / "data"
    shutil.copytree(perfusion_folder, data)
    s = Session(data, sample_folder=tmp_path / "samples")
    dt = json.loads((data / "truth.json").read_text())["dt_s"]
    s.open_path("perfusion.nii.gz", aif="aif.csv", dt=dt, kind="perfusion")
    s.run(None)
    assert s.analysis.warnings.count(SLICE_2_NOTE) == 1
    myo = np.argwhere(s.analysis.labels[0][0] == MYO)
    assert s.paint("myo", 0, *myo[len(myo) // 2], radius_px=2, erase=True)   # a stroke on slice 0
    assert s.analysis.warnings.count(SLICE_1_NOTE) == 1 and s.analysis.warnings.count(SLICE_2_NOTE) == 1
    shown = s.page_warnings(s.analysis.warnings)
    assert any("mended from the bolus" in w for w in shown)
    saved = s.save("out")
    written = json.loads((data / next(p for p in saved if p.endswith("results.json"))).read_text())["warnings"]
    assert written.count(SLICE_1_NOTE) == 1 and written.count(SLICE_2_NOTE) == 1
    # Revert (back to the network's labels) builds a fresh analysis: the notes came back no more
    reverted = s.revert()
    assert reverted.warnings.count(SLICE_1_NOTE) == 1 and reverted.warnings.count(SLICE_2_NOTE) == 1
