"""CardiacAISegLogic forgets a whole analysis in one place (``_forgetAnalysis``), for a new study
(``setStudy``) and a closing scene (``reset``) alike: each cleared its own list of attributes, and
``reset`` kept ``_outputsMeasured`` (the record of a run measuring the output segmentations again)
that ``setStudy`` dropped."""
import pytest

pytest.importorskip("slicer")

from CardiacAISegLib import scene as sc  # noqa: E402
from CardiacAISegLib.logic import CardiacAISegLogic  # noqa: E402
from CardiacAISegLib.phantoms.phantom import make_cine_phantom  # noqa: E402

# what an analysis leaves on the Logic (a run, its network's record, its rest mask, edits)
ANALYSIS_STATE = ("analysis", "networkLabels", "restNetworkLabels", "modelInfo", "timing", "lastUpdateTimeS",
                  "_outputsMeasured", "unmeasuredEdits")


def _phantom(seed):
    study, _ = make_cine_phantom(seed=seed, n_frames=4, n_slices=4, size=64)
    return study


def _analysed(logic):
    """``logic`` with a measured analysis and, on top of it, what a run over edited outputs, a
    rest series and a failed edit leave (every attribute off its initial value)."""
    logic.setStudy(_phantom(1))
    logic.runSegmentation(useExistingLabels=True)
    logic.modelInfo = {"name": "a network"}
    logic.restNetworkLabels = {0: logic.analysis.labels[0].copy()}
    logic.timing, logic.lastUpdateTimeS = {"segmentation": 1.0}, 0.2
    logic._outputsMeasured = {"study": logic.study.name, "kept_ed_es": (0, 2)}
    logic.unmeasuredEdits = {"vtkMRMLSegmentationNode1": "no LV"}
    initial = CardiacAISegLogic(sc.new_scene())
    assert all(getattr(logic, name) != getattr(initial, name) for name in ANALYSIS_STATE)
    return logic


@pytest.mark.parametrize("forget", ["setStudy", "reset"])
def test_a_new_study_and_a_closing_scene_forget_the_same_analysis(forget):
    logic = _analysed(CardiacAISegLogic(sc.new_scene()))
    if forget == "setStudy":
        logic.setStudy(_phantom(2))
    else:
        logic.reset()
        assert logic.study is None and logic.studyNodes is None and logic.restStudy is None
    initial = CardiacAISegLogic(sc.new_scene())
    assert {name: getattr(logic, name) for name in ANALYSIS_STATE} == \
           {name: getattr(initial, name) for name in ANALYSIS_STATE}
