"""The Slicer module's background-process protocol (background.py, Logic.startAnalysis) on
slicer-core: start, progress, result equal to the in-process run, cancel within a second,
failures that name the problem, and nothing of a cancelled or failed job in the scene."""
import json
import time

import pytest

from CardiacAISegLib import scene
from CardiacAISegLib.background import CANCELLED, DONE, FAILED, RUNNING, BackgroundAnalysis
from CardiacAISegLib.errors import CardiacInputError
from CardiacAISegLib.logic import CardiacAISegLogic
from CardiacAISegLib.phantoms.phantom import write_phantom
from CardiacAISegLib.results import results_document


@pytest.fixture(scope="module")
def cine_phantom(tmp_path_factory):
    folder = tmp_path_factory.mktemp("phantom")
    write_phantom("cine", folder, seed=3)
    return folder


def _logic_with(phantom):
    logic = CardiacAISegLogic(scene.new_scene())
    logic.loadStudy(phantom / "cine.nii.gz", labels=phantom / "cine_labels.nii.gz")
    return logic


def _numbers(analysis, source):
    doc = results_document(analysis, source)
    return {key: doc[key] for key in ("kind", "cine", "rv_insertion", "qc")}


def test_background_network_run_gives_the_in_process_numbers(cine_phantom):
    logic = _logic_with(cine_phantom)
    job = logic.startAnalysis(useExistingLabels=False)
    assert job.state == RUNNING and job.folder.is_dir()
    events = []
    deadline = time.monotonic() + 300
    while job.state == RUNNING and time.monotonic() < deadline:
        events += job.poll()
        time.sleep(0.05)
    assert job.state == DONE, job.error
    progress = [e for e in events if e["event"] == "progress"]
    assert progress, "the worker reported no progress"
    assert all(0 <= e["done"] <= e["total"] for e in progress)
    folder = job.folder
    analysis = job.result()
    assert not folder.exists(), "the job folder is removed once the result is read"
    assert logic.analysis is None, "nothing reaches the scene before applyAnalysis"

    in_process = logic.computeAnalysis(useExistingLabels=False)
    source = cine_phantom / "cine.nii.gz"
    assert _numbers(analysis, source) == _numbers(in_process, source)
    assert analysis.model_info["name"] == in_process.model_info["name"]

    logic.applyAnalysis(analysis)
    assert logic.analysis is analysis
    assert logic.getNodeParameter("tableID").GetNumberOfRows() > 0
    assert logic.getNodeParameter("outputSegmentationID").GetSegmentation().GetNumberOfSegments() == 3


def test_cancel_stops_the_worker_within_a_second_and_keeps_the_previous_results(cine_phantom):
    logic = _logic_with(cine_phantom)
    previous = logic.runSegmentation(useExistingLabels=True)
    before = json.dumps(_numbers(previous, cine_phantom / "cine.nii.gz"), sort_keys=True)

    job = logic.startAnalysis(useExistingLabels=False)
    process, folder = job._process, job.folder
    t0 = time.monotonic()
    job.cancel()
    took = time.monotonic() - t0
    assert took < 1.0, f"cancel took {took:.2f} s"
    assert process.poll() is not None, "the worker process is still alive after cancel"
    assert job.state == CANCELLED
    assert not folder.exists()
    assert job.poll() == []
    with pytest.raises(RuntimeError, match="cancelled"):
        job.result()
    assert logic.analysis is previous
    assert json.dumps(_numbers(logic.analysis, cine_phantom / "cine.nii.gz"), sort_keys=True) == before


def test_a_bad_model_name_fails_with_the_engines_message(cine_phantom):
    logic = _logic_with(cine_phantom)
    job = logic.startAnalysis(modelName="no-such-network", useExistingLabels=False)
    assert job.wait(timeout=120) == FAILED
    assert "no-such-network" in job.error
    folder = job.folder
    assert folder is not None and folder.exists()
    with pytest.raises((CardiacInputError, RuntimeError), match="no-such-network"):
        job.result()
    assert logic.analysis is None
    # its folder (with the pickled study, ~15 MB) goes too: every failed run used to leave one in the temp folder
    assert not folder.exists() and job.folder is None


def test_bad_input_in_the_worker_is_the_same_input_error_as_in_process(cine_phantom):
    """Labels the engine refuses: the background job re-raises the CardiacInputError with the
    same path and problem that the in-process run gives."""
    import numpy as np

    logic = _logic_with(cine_phantom)
    study = logic._requireStudy()
    bad = {0: np.full(study.images.shape[1:], 9, np.uint8)}   # label 9 is no class
    with pytest.raises(CardiacInputError) as in_process:
        from CardiacAISegLib.pipeline import compute_analysis

        compute_analysis(study, labels=bad)
    job = BackgroundAnalysis().start(study, labels=bad)
    assert job.wait(timeout=120) == FAILED
    with pytest.raises(CardiacInputError) as background:
        job.result()
    assert (background.value.path, background.value.problem) == (in_process.value.path, in_process.value.problem)


def test_a_worker_that_dies_is_reported_with_its_exit_code(cine_phantom):
    logic = _logic_with(cine_phantom)
    job = logic.startAnalysis(useExistingLabels=False)
    job._process.kill()
    assert job.wait(timeout=30) == FAILED
    assert "exit code" in job.error
    job.cancel()   # cleans up a finished job too
    assert job.folder is None


def test_a_finished_job_cancelled_before_its_result_is_taken_says_so(cine_phantom):
    """Cancel after the job finished left it "done" with its folder removed: result() then
    failed with a bare TypeError (probe 30). Now it is cancelled; a result taken before stays."""
    logic = _logic_with(cine_phantom)
    job = logic.startAnalysis(useExistingLabels=True)
    assert job.wait(timeout=300) == DONE, job.error
    job.cancel()
    assert job.state == CANCELLED
    with pytest.raises(RuntimeError, match="cancelled, not done"):
        job.result()
    taken = logic.startAnalysis(useExistingLabels=True)
    assert taken.wait(timeout=300) == DONE, taken.error
    analysis = taken.result()
    taken.cancel()
    assert taken.state == DONE and taken.result() is analysis   # asked again: the same analysis


def test_a_bug_in_the_worker_leaves_its_traceback_for_the_log_and_no_images_on_disk(cine_phantom):
    """Review of session 37: a failed worker's traceback (printed on its stderr) was never read, so
    the web GUI's log had only the message; and the pickled study stayed in the job folder until
    the job was ended (left behind when the server stopped mid-run)."""
    logic = _logic_with(cine_phantom)
    study = logic._requireStudy()
    job = BackgroundAnalysis().start(study, labels=None, frames="bogus")   # no such frames choice: a ValueError
    assert job.wait(timeout=120) == FAILED
    assert "Traceback" in job.log_tail and "ValueError" in job.log_tail and "bogus" in job.log_tail
    assert not (job.folder / "job.pkl").exists()   # read by the worker, then removed
    with pytest.raises(RuntimeError, match="ValueError"):
        job.result()


def test_a_worker_that_writes_much_on_stderr_still_finishes(cine_phantom, tmp_path, monkeypatch):
    """Probe 79: the worker's stderr was a pipe nobody read while it ran; past the pipe's buffer
    (64 kB here, less on Windows) the worker blocked for ever and the job stayed "running"."""
    (tmp_path / "sitecustomize.py").write_text("import sys\nsys.stderr.write('warning: noisy library\\n' * 12000)\n")
    monkeypatch.setenv("PYTHONPATH", str(tmp_path))   # the worker inherits it: 280 kB on its stderr at start
    logic = _logic_with(cine_phantom)
    job = BackgroundAnalysis().start(logic._requireStudy(), labels=logic.study.labels)
    try:
        assert job.wait(timeout=120) == DONE, (job.state, job.error)
        assert job.result().cine["lv_edv_ml"] > 0
    finally:
        job.cancel()
