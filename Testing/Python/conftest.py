import atexit
import faulthandler
import gc
import os
import sys
from pathlib import Path

import pytest

os.environ.setdefault("QT_QPA_PLATFORM", "offscreen")
os.environ.setdefault("MPLBACKEND", "Agg")

REPO = Path(__file__).resolve().parents[2]
SHARED_DATA = REPO.parent / "shared" / "data"


@pytest.fixture(scope="session")
def shared_data():
    """../shared/data, or a skip that says why (CI has it; a bare checkout may not)."""
    if not SHARED_DATA.is_dir():
        pytest.skip(f"development data not found at {SHARED_DATA} (../shared/data beside the checkout)")
    return SHARED_DATA


@pytest.fixture(scope="session")
def perfusion_phantom_folder(tmp_path_factory):
    """A folder as `cardiacaiseg phantom --kind perfusion` writes it (seed 0): perfusion.nii.gz,
    perfusion_labels.nii.gz, aif.csv, truth.json. Read only: tests that change it copy it."""
    from CardiacAISegLib.phantoms.phantom import write_phantom

    folder = tmp_path_factory.mktemp("perfusion-phantom")
    write_phantom("perfusion", folder, seed=0, force=True)
    return folder


@pytest.hookimpl(wrapper=True, tryfirst=True)
def pytest_sessionfinish(session, exitstatus):
    # outermost: past the yield every session-finish hook has run, the summary printed; a hook
    # that raised leaves the flag unset, and the process then ends the ordinary way with its error
    result = yield
    session.config._cardiacaiseg_finished = session
    return result


@pytest.hookimpl(trylast=True)
def pytest_unconfigure(config):
    """End the process with pytest's own exit status, skipping the interpreter's finalisation.

    Twice (sessions 45 and 46) a run printed "all passed" and then died with SIGSEGV (exit 139)
    while the interpreter tore down native libraries' globals (VTK/MRML, PySide6, torch, ONNX
    Runtime, Dask's offload thread) in whatever order it reaches them; it did not recur on rerun.
    What the tests measured is in the exit status pytest computed, so that is what the process
    returns - but only once pytest reached its end (a session-finish hook that raised keeps its
    failure). Python-level exit handlers still run (pytest's temporary-folder locks, the scene's
    cache folders; PySide6's, which tears Qt down natively, does not), and our own objects are collected first with faulthandler on, so a crash in
    their destructors prints where it happened and fails the run."""
    session = getattr(config, "_cardiacaiseg_finished", None)
    if session is None or os.environ.get("CARDIACAISEG_TEST_NORMAL_EXIT"):
        return   # set it to see the interpreter's own shutdown (e.g. to chase that crash)
    faulthandler.enable(file=sys.__stderr__, all_threads=True)
    gc.collect()
    qt_core = sys.modules.get("PySide6.QtCore")
    qt_shutdown = getattr(qt_core, "__moduleShutdown", None)
    if qt_shutdown is not None:
        atexit.unregister(qt_shutdown)   # Qt's native teardown, part of what is skipped (review 2)
    atexit._run_exitfuncs()
    for stream in (sys.stdout, sys.stderr, sys.__stdout__, sys.__stderr__):
        try:
            stream.flush()
        except (OSError, ValueError, AttributeError):
            pass
    os._exit(int(session.exitstatus))
