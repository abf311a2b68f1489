"""Segment and measure in a background process, so that Slicer's GUI stays live and Cancel is immediate.

This is SlicerMONAIAuto3DSeg's pattern: the network runs in a separate Python process (Slicer's
``PythonSlicer``, or this interpreter outside Slicer), the GUI polls it from a timer and Cancel
kills it. Running torch or ONNX Runtime in Slicer's main thread blocks the event loop; keeping
it live with ``processEvents`` lets the user close the scene mid-run, and a cancel could only be
honoured between steps (48 s with gamma-Net).

Protocol (one job = one temporary folder):

- ``job.pkl``: the pickled study (and rest study) with the keyword arguments of
  ``pipeline.compute_paired_analysis`` (the Logic's in-process path), written by ``BackgroundAnalysis.start``;
- the worker (``python -m CardiacAISegLib.background JOBDIR``) writes one JSON line per event
  on its standard output: ``{"event": "progress", "done", "total", "message"}``, then
  ``{"event": "done"}`` after pickling the ``Analysis`` to ``analysis.pkl``, or
  ``{"event": "failed", "message", "input_error": [path, problem] | null}`` and a non-zero exit;
- ``poll()`` returns the events that arrived, ``result()`` the Analysis, ``cancel()`` kills
  the process and removes the folder. Nothing of a cancelled or failed job reaches the scene:
  the Logic applies a result only after ``done``.

Qt-free; the Widget drives ``poll`` from a ``qt.QTimer``.
"""
import json
import os
import pickle
import queue
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

from .errors import CardiacInputError

JOB_FILE, RESULT_FILE, WORKER_LOG = "job.pkl", "analysis.pkl", "worker.log"
RUNNING, DONE, FAILED, CANCELLED = "running", "done", "failed", "cancelled"


def python_executable():
    """The interpreter for the worker: Slicer's PythonSlicer inside Slicer (``sys.executable``
    is the Slicer application there), else this Python."""
    try:
        import slicer

        home = getattr(getattr(slicer, "app", None), "slicerHome", None)
    except ImportError:
        home = None
    if home:
        for name in ("PythonSlicer", "PythonSlicer.exe"):
            candidate = Path(home) / "bin" / name
            if candidate.is_file():
                return str(candidate)
        found = shutil.which("PythonSlicer")
        if found:
            return found
    return sys.executable


class BackgroundAnalysis:
    """One ``compute_analysis`` run in a child process: ``start``, then ``poll`` until ``state``
    is no longer running; ``result()`` after ``done``; ``cancel()`` at any time."""

    def __init__(self):
        self.state = None
        self.done, self.total, self.message = 0, 1, ""
        self.error, self.input_error = None, None   # input_error: (path, problem) of a CardiacInputError
        self.log_tail = None   # a failed worker's last stderr lines (its traceback)
        self._process, self._folder, self._lines, self._reader = None, None, None, None
        self._analysis = None   # the result, once read

    def start(self, study, rest=None, rest_labels=None, **kwargs):
        """Launch the worker on ``study`` (kwargs as ``pipeline.compute_analysis``: model_name,
        labels, frames, density, device, bullseye); ``rest``: a rest perfusion study analysed
        first in the same process (with ``rest_labels`` when given)."""
        if self.state == RUNNING:
            raise RuntimeError("a background analysis is already running")
        self._analysis = None
        self._folder = Path(tempfile.mkdtemp(prefix="cardiacaiseg-job-"))
        with open(self._folder / JOB_FILE, "wb") as f:
            pickle.dump({"study": study, "rest": rest, "rest_labels": rest_labels, "kwargs": kwargs}, f,
                        protocol=pickle.HIGHEST_PROTOCOL)
        env = dict(os.environ)
        package_root = str(Path(__file__).resolve().parents[1])   # CardiacAISegLib's parent: importable in the child
        env["PYTHONPATH"] = os.pathsep.join(p for p in (package_root, env.get("PYTHONPATH", "")) if p)
        env["PYTHONUNBUFFERED"] = "1"
        # the worker's stderr (its prints, warnings, a traceback) goes to a file in its folder: a
        # pipe nobody reads while it runs fills (64 kB, less on Windows) and the worker then
        # blocks for ever, the job "running" (probe 79)
        with open(self._folder / WORKER_LOG, "wb") as log:
            self._process = subprocess.Popen([python_executable(), "-m", "CardiacAISegLib.background", str(self._folder)],
                                             stdout=subprocess.PIPE, stderr=log, env=env, text=True)
        self._lines = queue.Queue()
        self._reader = threading.Thread(target=self._read, args=(self._process.stdout,), daemon=True)
        self._reader.start()
        self.state = RUNNING
        self.done, self.total, self.message = 0, 1, "starting"
        return self

    def _read(self, stream):
        for line in stream:
            self._lines.put(line)
        self._lines.put(None)   # end of output

    def poll(self):
        """The events that arrived since the last poll (dicts); updates ``state``, progress and error."""
        events = []
        if self.state != RUNNING:
            return events
        ended = False
        while True:
            try:
                line = self._lines.get_nowait()
            except queue.Empty:
                break
            if line is None:
                ended = True
                break
            try:
                event = json.loads(line)
            except ValueError:
                continue   # not a protocol line
            events.append(event)
            if event.get("event") == "progress":
                self.done, self.total, self.message = event["done"], max(1, event["total"]), event.get("message", "")
            elif event.get("event") == "done":
                self.state = DONE
            elif event.get("event") == "failed":
                self.state, self.error = FAILED, event.get("message", "failed")
                self.input_error = event.get("input_error")
        if ended and self.state == RUNNING:   # the process died without saying why (killed, crashed)
            code = self._process.wait()
            stderr = self._worker_log()
            self.state = FAILED
            self.error = f"the background analysis stopped (exit code {code})" + (f": {stderr[-1]}" if stderr else "")
        if self.state != RUNNING:
            self._process.wait()
            if self.state == FAILED and self.log_tail is None:
                # the worker's traceback (it prints it on stderr) for the caller's log: the message
                # alone lost where an engine bug sat (review)
                self.log_tail = "\n".join(self._worker_log()[-40:])
        return events

    def _worker_log(self):
        """The worker's stderr lines so far ([] when its folder is gone)."""
        try:
            return (self._folder / WORKER_LOG).read_text(errors="replace").strip().splitlines()
        except (OSError, TypeError):
            return []

    def wait(self, timeout=None, interval=0.05):
        """Poll until the job ends (for scripts and tests); returns ``state``."""
        end = None if timeout is None else time.monotonic() + timeout
        while self.state == RUNNING and (end is None or time.monotonic() < end):
            self.poll()
            time.sleep(interval)
        return self.state

    def result(self):
        """The ``Analysis`` of a finished job; raises the worker's error for a failed one (its
        folder, with the pickled study, is removed either way)."""
        if self.state == FAILED:
            self._cleanup()
            if self.input_error:   # the same error as in-process: names the file and the problem
                raise CardiacInputError(*self.input_error)
            raise RuntimeError(self.error)
        if self._analysis is not None:   # asked again: the same analysis (its folder is gone)
            return self._analysis
        if self.state != DONE:
            raise RuntimeError(f"the background analysis is {self.state}, not done")
        with open(self._folder / RESULT_FILE, "rb") as f:
            self._analysis = pickle.load(f)
        self._cleanup()
        return self._analysis

    def cancel(self):
        """Stop the worker now (terminate, kill after 1 s) and remove its folder."""
        if self._process is not None and self._process.poll() is None:
            self._process.terminate()
            try:
                self._process.wait(1.0)
            except subprocess.TimeoutExpired:
                self._process.kill()
                self._process.wait()
        # a job that finished but whose result nobody took is cancelled too: its result goes with
        # its folder (it stayed "done", and result() then failed on the missing folder)
        if self.state == RUNNING or (self.state == DONE and self._analysis is None):
            self.state = CANCELLED
        self._cleanup()

    def _cleanup(self):
        if self._folder is not None:
            shutil.rmtree(self._folder, ignore_errors=True)
            self._folder = None

    @property
    def folder(self):
        return self._folder


# --- the worker -------------------------------------------------------------------------------
def _run_job(folder):
    protocol = sys.stdout
    sys.stdout = sys.stderr   # anything the engine prints must not corrupt the protocol

    def emit(**event):
        protocol.write(json.dumps(event) + "\n")
        protocol.flush()

    try:
        from .pipeline import compute_paired_analysis

        with open(folder / JOB_FILE, "rb") as f:
            job = pickle.load(f)
        # the patient's images leave the disk once read: a worker whose parent died (the server
        # stopped mid-run) left them in the job folder (review)
        (folder / JOB_FILE).unlink(missing_ok=True)
        kwargs = dict(job["kwargs"])
        last = [-1.0]

        def progress(done, total, message=""):
            now = time.monotonic()
            if now - last[0] > 0.1 or done >= total:   # at most 10 lines a second
                last[0] = now
                emit(event="progress", done=int(done), total=int(total), message=str(message))

        analysis = compute_paired_analysis(job["study"], job["rest"], job["rest_labels"], progress=progress, **kwargs)
        staging = folder / (RESULT_FILE + ".part")
        with open(staging, "wb") as f:
            pickle.dump(analysis, f, protocol=pickle.HIGHEST_PROTOCOL)
        os.replace(staging, folder / RESULT_FILE)
        emit(event="done")
        return 0
    except CardiacInputError as e:
        emit(event="failed", message=str(e), input_error=[e.path, e.problem])
        return 2
    except Exception as e:   # a bug: the message for the GUI, the traceback for the console
        import traceback

        traceback.print_exc()
        emit(event="failed", message=f"{type(e).__name__}: {e}", input_error=None)
        return 1


if __name__ == "__main__":
    sys.exit(_run_job(Path(sys.argv[1])))
