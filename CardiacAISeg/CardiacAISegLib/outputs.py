"""Output folder safety: one run per folder, nothing half-written, nothing left behind.

- ``output_lock(out_dir)``: an exclusive lock (``flock`` on ``OUT/.cardiacaiseg.lock``; ``msvcrt``
  on Windows) held for a whole run, so two runs on one folder cannot interleave their files; the
  second is refused at once with ``OutputLockedError`` naming the folder and the holder's pid. The
  kernel drops the lock when a process dies, even by SIGKILL, so a lock is never stale. It creates
  the folder when needed and removes what it created (the lock file, empty folders) on the way out.
- ``stop_signals_raise()``: SIGTERM/SIGHUP raise ``Terminated`` (a ``KeyboardInterrupt``) in the
  main thread instead of killing the process, so ``finally`` blocks remove staging folders.
- ``deferred_signals()``: while native writers (VTK, ITK, zip) run, SIGINT/SIGTERM are held and
  raised at the next ``checkpoint()``, so no exception unwinds through half-built C++ objects.
- ``replace_outputs(stage, out_dir, names)``: moves staged files into place so that the folder ends
  with all the new outputs or all the old ones: old outputs are moved aside into the staging folder
  first and put back if any step fails.
"""
import errno
import os
import shutil
import signal
import threading
from contextlib import contextmanager
from pathlib import Path, PurePath

from .errors import CardiacInputError, OutputExistsError, OutputLockedError
from .study import CINE

# every run writes these; segmentation_es.seg.nrrd when the study has an ES frame of its own, and
# scene.mrb only when a scene builder is given (`analyze --scene`, the Slicer module, the web GUI)
OUTPUT_FILES = ("results.json", "results.csv", "segmentation.seg.nrrd", "report.png")
ES_SEGMENTATION = "segmentation_es.seg.nrrd"
# the rest series' mask (stress and rest): without --scene it was written nowhere, so rest MBF,
# MPR and MPRI could not be checked or measured again (probe 94)
REST_SEGMENTATION = "rest_segmentation.seg.nrrd"
SCENE_FILE = "scene.mrb"
# what a run replaces: an old scene.mrb goes too when a run writes none, so no folder holds a scene
# of one run beside the results of another
REPLACED_FILES = OUTPUT_FILES + (ES_SEGMENTATION, REST_SEGMENTATION, SCENE_FILE)
LOCK_NAME = ".cardiacaiseg.lock"
STAGE_PREFIX = ".cardiacaiseg-"


class Terminated(KeyboardInterrupt):
    """The process was asked to stop (SIGTERM, SIGHUP); unwinds like Ctrl-C so cleanup runs."""

    def __init__(self, signum):
        self.signum = signum
        super().__init__(f"stopped by {signal.Signals(signum).name}")


# --- the output folder ------------------------------------------------------------------------
def first_non_folder_parent(path):
    """The nearest existing ancestor of ``path`` that is not a folder, or None."""
    for parent in Path(path).parents:
        if parent.exists() or parent.is_symlink():
            return None if parent.is_dir() else parent
    return None


def _exists(out):
    """``out.exists()``, with the errors a path itself causes (a name over the file system's
    limit, a loop of links) as a CardiacInputError naming it: a traceback-free exit 1 before
    (probe 57)."""
    try:
        return out.exists()
    except OSError as e:
        raise CardiacInputError(out, f"cannot be an output folder: {e.strerror or e}") from None


EMPTY_OUTPUT_FOLDER = "an empty output folder name; give the folder to write into"


def check_output_folder_named(folder):
    """The one rule for the folder a run's outputs go to, the CLI's --out and the Slicer Logic's
    exportResults and saveGroundTruth: an empty name is refused (CardiacInputError), since the
    outputs then went into the current working folder, one the user never named (probe 21, 103).
    ``Path("")`` reads ``"."``, its empty text lost: a Path "." is refused as one (a GUI's empty
    field made a Path wrote there); the text "." names the working folder on purpose (``--out .``)."""
    text = os.fspath(folder) if folder is not None else ""
    if not str(text).strip():
        raise CardiacInputError("output folder", EMPTY_OUTPUT_FOLDER)
    if isinstance(folder, PurePath) and str(folder) == ".":
        raise CardiacInputError("output folder", f"{EMPTY_OUTPUT_FOLDER} (Path('') reads '.', the working folder: "
                                                 "give '.' as text, or the folder's full path, to write there)")


def make_output_folder(out_dir):
    """Create ``out_dir`` and missing parents; returns the folders this call created, deepest first.

    Each level is made with its own ``mkdir`` so that a folder another process created at the
    same moment is never counted (and later removed) as ours.
    """
    out = Path(out_dir)
    if _exists(out) and not out.is_dir():
        raise CardiacInputError(out, "output path exists and is not a folder")
    missing = []
    p = out
    while not p.is_dir() and p != p.parent:
        missing.append(p)
        p = p.parent
    created = []
    try:
        for d in reversed(missing):
            try:
                os.mkdir(d)
                created.append(d)
            except FileExistsError:
                if not d.is_dir():
                    raise
    except OSError as e:
        remove_if_empty(created[::-1])
        blocker = first_non_folder_parent(out)
        reason = f"{blocker} is not a folder" if blocker is not None else (e.strerror or str(e))
        dangling = next((d for d in missing if d.is_symlink()), None)
        if dangling is not None:
            # "File exists" for a link whose target is gone (probe 57)
            reason = f"{dangling} is a symbolic link to {os.readlink(dangling)}, which does not exist"
        raise CardiacInputError(out, f"cannot create output folder: {reason}") from None
    return created[::-1]


def remove_if_empty(folders):
    """rmdir each folder (deepest first) that is still empty; others are left alone."""
    for d in folders:
        try:
            d.rmdir()
        except OSError:
            break  # not empty (or gone): its parents are not empty either


# --- the lock ---------------------------------------------------------------------------------
try:
    import fcntl
except ImportError:  # Windows
    fcntl = None
    import msvcrt


def _try_lock(fd):
    try:
        if fcntl is not None:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        else:
            msvcrt.locking(fd, msvcrt.LK_NBLCK, 1)
        return True
    except OSError as e:
        if e.errno in (errno.EAGAIN, errno.EACCES, errno.EWOULDBLOCK, errno.EDEADLK):
            return False
        raise


def _holder(lock_path):
    try:
        pid = Path(lock_path).read_text().strip()
        return f" (pid {pid})" if pid.isdigit() else ""
    except OSError:
        return ""


def _acquire(out):
    """An fd holding the lock on OUT/.cardiacaiseg.lock, or OutputLockedError."""
    lock_path = out / LOCK_NAME
    for _ in range(20):
        try:
            fd = os.open(lock_path, os.O_RDWR | os.O_CREAT | getattr(os, "O_CLOEXEC", 0), 0o644)
        except FileNotFoundError:  # another run removed the folder it had created: make it again
            make_output_folder(out)
            continue
        except OSError as e:
            raise CardiacInputError(out, f"cannot write in the output folder: {e.strerror or e}") from None
        if not _try_lock(fd):
            os.close(fd)
            raise OutputLockedError(out, f"another cardiacaiseg run{_holder(lock_path)} is writing to this output folder "
                                         f"(it holds {LOCK_NAME}); wait for it to finish or choose another --out")
        # The holder before us may have unlinked the file after we opened it: then our lock is on
        # an orphan inode and a third run could lock a new file. Only a lock on the file that is
        # at the path now counts.
        try:
            same = os.stat(lock_path).st_ino == os.fstat(fd).st_ino
        except FileNotFoundError:
            same = False
        if not same:
            os.close(fd)
            continue
        os.ftruncate(fd, 0)
        os.write(fd, f"{os.getpid()}\n".encode())
        return fd
    raise OutputLockedError(out, f"could not take the lock {LOCK_NAME}: other runs keep replacing it")


_held = {}  # realpath -> [thread id, depth]
_held_guard = threading.Lock()


@contextmanager
def output_lock(out_dir):
    """Hold the output folder's lock for the block; re-entrant in one thread (run -> write_outputs)."""
    out = Path(out_dir)
    key = os.path.realpath(out)
    me = threading.get_ident()
    with _held_guard:
        entry = _held.get(key)
        if entry is not None and entry[0] == me:
            entry[1] += 1
            nested = True
        elif entry is not None:
            raise OutputLockedError(out, "another analysis in this program is writing to this output folder; "
                                         "wait for it to finish or choose another folder")
        else:
            nested = False
            _held[key] = [me, 1]
    if nested:
        try:
            yield out
        finally:
            with _held_guard:
                _held[key][1] -= 1
        return
    created, fd = [], None
    try:
        # a signal between creating the folder or lock file and recording it would leave them behind
        with deferred_signals():
            created = make_output_folder(out)
            fd = _acquire(out)
        yield out
    finally:
        with deferred_signals():  # a second Ctrl-C must not cut the cleanup short
            if fd is not None:
                # unlink while still holding the lock: a run that opened the old file sees it is gone
                if fcntl is not None:
                    _unlink(out / LOCK_NAME)
                os.close(fd)
                if fcntl is None:
                    _unlink(out / LOCK_NAME)
            remove_if_empty(created)
            with _held_guard:
                _held.pop(key, None)


def _unlink(path):
    try:
        os.unlink(path)
    except OSError:
        pass


# --- signals ----------------------------------------------------------------------------------
_STOP_SIGNALS = tuple(getattr(signal, n) for n in ("SIGTERM", "SIGHUP") if hasattr(signal, n))


def _in_main_thread():
    return threading.current_thread() is threading.main_thread()


def _not_ignored(signals):
    """The signals of ``signals`` the process does not ignore. One started under ``nohup`` ignores
    SIGHUP, and a background job of a shell script SIGINT: handlers of our own had turned them
    back on, and closing the terminal cancelled the run (probe 57)."""
    return [s for s in signals if signal.getsignal(s) is not signal.SIG_IGN]


@contextmanager
def _handling(signals, handler):
    """``handler`` for the not-ignored ``signals`` during the block, the previous ones put back
    after; nothing outside the main thread (signals cannot be handled there)."""
    if not _in_main_thread():
        yield
        return
    previous = {s: signal.signal(s, handler) for s in _not_ignored(signals)}
    try:
        yield
    finally:
        for s, h in previous.items():
            signal.signal(s, h)


def _stop_exception(signum):
    """What a stop signal raises: KeyboardInterrupt for SIGINT, else Terminated."""
    return KeyboardInterrupt() if signum == signal.SIGINT else Terminated(signum)


@contextmanager
def stop_signals_raise():
    """SIGTERM/SIGHUP raise ``Terminated`` in the main thread for the block (no-op elsewhere)."""
    def stop(signum, frame):
        raise Terminated(signum)

    with _handling(_STOP_SIGNALS, stop):
        yield


class _Remembered:
    def __init__(self):
        self.signum = None

    def check(self):
        """Raise again a stop signal whose exception was lost (see remembered_stop_signals)."""
        if self.signum is not None:
            raise _stop_exception(self.signum)


@contextmanager
def remembered_stop_signals():
    """SIGINT, SIGTERM and SIGHUP raise at once, as without it, and are remembered: the yielded
    ``check()`` raises one again whose exception Python swallowed. A signal handled while a
    weakref callback or ``__del__`` runs (an import's module lock, during Dask's start) raises
    there, is printed as "Exception ignored in ... KeyboardInterrupt" and lost: a batch stopped
    at that moment ran to its end (probe 64). No-op outside the main thread; an ignored signal
    stays ignored."""
    remembered = _Remembered()

    def stop(signum, frame):
        remembered.signum = signum
        raise _stop_exception(signum)

    with _handling((signal.SIGINT,) + _STOP_SIGNALS, stop):
        yield remembered


class _Deferred:
    def __init__(self):
        self.pending = None

    def __call__(self):
        """Raise the signal that arrived while held (the checkpoint between two writers)."""
        signum, self.pending = self.pending, None
        if signum is not None:
            raise _stop_exception(signum)


@contextmanager
def deferred_signals():
    """Hold SIGINT/SIGTERM/SIGHUP during the block; the yielded ``checkpoint()`` raises them.

    Outside the main thread signals cannot be handled; the checkpoint then does nothing.
    """
    deferred = _Deferred()

    def hold(signum, frame):
        if deferred.pending is None:
            deferred.pending = signum

    with _handling((signal.SIGINT,) + _STOP_SIGNALS, hold):
        yield deferred
    deferred()  # only reached without an exception: a held signal still stops the run


# --- all-or-nothing replacement -----------------------------------------------------------------
def keep_outputs_of_killed_runs(out_dir):
    """Staging folders an earlier run left in ``out_dir`` (it was killed: SIGKILL, a power cut),
    found under the folder's lock, so no live run owns them: the outputs such a run had moved aside
    while swapping in its own (``stage/.old``) go to a visible ``cardiacaiseg-previous-outputs-*``
    folder instead of staying hidden, and the rest of the staging folder goes. Returns a warning
    naming what was kept, or "" (probe 54: a run killed mid-write left its hidden folder behind)."""
    out = Path(out_dir)
    kept = []
    for stage in sorted(out.glob(STAGE_PREFIX + "*")):
        if not stage.is_dir():
            continue
        aside = stage / ".old"
        if aside.is_dir() and any(aside.iterdir()):
            target = out / f"cardiacaiseg-previous-outputs-{stage.name[len(STAGE_PREFIX):]}"
            try:
                os.replace(aside, target)
                kept.append(target.name)
            except OSError:
                continue   # never delete what could not be kept
        shutil.rmtree(stage, ignore_errors=True)
    if not kept:
        return ""
    return (f"an earlier run into {out} was stopped while it replaced its outputs (killed?): the outputs it had moved "
            f"aside are kept in {', '.join(kept)}")


def replace_outputs(stage, out_dir, names):
    """Move every file of ``stage`` into ``out_dir``; old files called ``names`` go in any case.

    The final state is the new outputs only, or (when a move fails) the old outputs as they
    were: old files are first moved aside into ``stage/.old``, then the new ones moved in; on
    a failure the new ones are taken out again and the old ones put back. Returns {name: path}.
    """
    stage, out = Path(stage), Path(out_dir)
    new = sorted(f for f in stage.iterdir() if f.is_file())
    aside = stage / ".old"
    aside.mkdir()
    moved_aside, moved_in = [], []
    try:
        for name in sorted(set(names) | {f.name for f in new}):
            if (out / name).exists() or (out / name).is_symlink():
                os.replace(out / name, aside / name)
                moved_aside.append(name)
        for f in new:
            os.replace(f, out / f.name)
            moved_in.append(f.name)
    except BaseException:
        for name in moved_in:  # back into the staging folder, which the caller removes
            try:
                os.replace(out / name, stage / name)
            except OSError:
                _unlink(out / name)
        kept = []
        for name in moved_aside:
            try:
                os.replace(aside / name, out / name)
            except OSError:
                kept.append(name)
        if kept:  # never let the staging cleanup delete the user's old outputs
            try:
                os.replace(aside, out / f"cardiacaiseg-previous-outputs-{os.getpid()}")
            except OSError:
                pass
        else:
            remove_if_empty([aside])
        raise
    shutil.rmtree(aside, ignore_errors=True)
    return {name: out / name for name in moved_in}


# ------------------------------------------------------------------ the outputs of a run
# how the command line replaces existing outputs; the Slicer module and the web page name their own control
CLI_REPLACE_HINT = "pass --force to replace them"


def check_outputs(out_dir, force=False, replace_hint=CLI_REPLACE_HINT):
    """Fail before any work if outputs exist and ``force`` is not given (the error ends with
    ``replace_hint``: how the caller's front end replaces them), or cannot be replaced."""
    out_dir = Path(out_dir)
    if _exists(out_dir) and not out_dir.is_dir():
        raise CardiacInputError(out_dir, "output path exists and is not a folder")
    blocker = first_non_folder_parent(out_dir)
    if not out_dir.exists() and blocker is not None:
        raise CardiacInputError(out_dir, f"cannot create output folder: {blocker} is not a folder")
    names = REPLACED_FILES
    folders = [n for n in names if (out_dir / n).is_dir()]
    if folders:  # --force replaces output files, never a folder that may hold the user's data
        raise CardiacInputError(out_dir / folders[0], "is a folder where an output file goes; move it away or choose another --out")
    existing = [n for n in names if (out_dir / n).exists() or (out_dir / n).is_symlink()]
    if existing and not force:
        raise OutputExistsError(f"{out_dir}: would overwrite {', '.join(existing)}; {replace_hint}")


def write_outputs(analysis, out_dir, input_path, model_info=None, timing=None, force=False, progress=None,
                  scene_builder=None, report=True, report_process=None, replace_hint=CLI_REPLACE_HINT):
    """Write every output of ``analysis`` into ``out_dir``; returns {name: path}.

    results.json/.csv, report.png (unless ``report=False``) and the seg.nrrd files (``seg_nrrd``, no Slicer needed) always;
    scene.mrb only when ``scene_builder`` is given: ``scene_builder(analysis)`` -> (scene context,
    {output file name: storable node}) builds the one scene of the run, the Slicer Logic's node
    builder (``logic.build_output_scene``), passed in so that this module needs neither the Logic
    nor the pipeline, and slicer-core is imported only by runs that write a scene.
    ``report=False`` leaves out report.png (`batch --reports flagged|none`: drawing it is most of
    a warm study's CPU time); an old report.png in the folder goes, as an old scene.mrb does.
    ``report_process``: a ``report_process.ReportProcess`` the CLI started at the beginning of the
    run; it draws report.png while the other files are written (else it is drawn here).
    ``replace_hint``: how the caller's front end replaces existing outputs (``check_outputs``).

    Under the folder's lock (``outputs.output_lock``), everything is written into a hidden
    staging folder first, then ``outputs.replace_outputs`` swaps it in: the folder ends with all
    new outputs or all old ones (an old scene.mrb goes even when this run writes none).
    SIGINT/SIGTERM are held while the writers run and honoured between them; the staging folder
    (and an output folder this call created) goes on any failure.
    """
    import tempfile

    from .progress import as_progress

    progress = as_progress(progress)
    out_dir = Path(out_dir)
    check_outputs(out_dir, force, replace_hint)
    # signals are held for the whole write and honoured at checkpoints, so no folder is created
    # or filled without the cleanup knowing about it
    with deferred_signals() as checkpoint:
        created = make_output_folder(out_dir)
        try:
            with output_lock(out_dir):
                kept = keep_outputs_of_killed_runs(out_dir)
                if kept and hasattr(analysis, "warnings"):
                    analysis.warnings.append(kept)
                check_outputs(out_dir, force, replace_hint)  # again under the lock: another run may have written meanwhile
                stage = Path(tempfile.mkdtemp(prefix=STAGE_PREFIX, dir=out_dir))
                try:
                    _write_staged(analysis, stage, input_path, model_info, timing, progress, checkpoint, scene_builder,
                                  report, report_process)
                    checkpoint()
                    paths = replace_outputs(stage, out_dir, REPLACED_FILES)
                finally:
                    shutil.rmtree(stage, ignore_errors=True)
        except BaseException:
            remove_if_empty(created)  # a folder this call made, now empty again; never anything else
            raise
    progress(5, 5, "done")
    return paths


def segmentation_frames(analysis):
    """{seg.nrrd file name: frame} of an analysis: the reference frame (ED for cine), and the ES
    frame when it has labels of its own; the frames the Logic shows as its output segmentations
    (``CardiacAISegLogic.updateNodes``; test_outputs_seg_nrrd checks that the two agree)."""
    ref = analysis.reference_frame
    frames = {"segmentation.seg.nrrd": ref}
    es = (analysis.cine or {}).get("es_frame")
    if es is not None and es != ref and es in analysis.labels:
        frames[ES_SEGMENTATION] = es
    return frames


def _write_staged(analysis, stage, input_path, model_info, timing, progress, checkpoint, scene_builder, report=True,
                  report_process=None):
    import time
    from .results import results_csv_text, results_document, results_json_text
    from .seg_nrrd import write_seg_nrrd

    t0 = time.perf_counter()
    steps = 5
    timing = dict(timing or {})
    drawing = False
    if report and report_process is not None:
        # the report module without matplotlib: report_arguments needs numpy only
        from .report import report_arguments

        drawing = report_process.draw(report_arguments(stage / "report.png", analysis, overwrite=True))
    progress(0, steps, "writing segmentations")
    for name, frame in segmentation_frames(analysis).items():
        # a cine file records its frame: given back to --labels it is measured there, not as ED
        cine = analysis.kind == CINE
        write_seg_nrrd(stage / name, analysis.labels[frame], analysis.study.ijk_to_ras, overwrite=True,
                       frame=frame if cine else None, n_frames=analysis.study.n_frames if cine else None)
    rest = getattr(analysis, "rest", None)
    if rest is not None:   # on the rest's own grid: given back with --rest-labels it measures the same
        write_seg_nrrd(stage / REST_SEGMENTATION, rest.labels[rest.reference_frame], rest.study.ijk_to_ras, overwrite=True)
    checkpoint()
    t1 = time.perf_counter()
    if drawing:
        progress(1, steps, "writing report")
        drawing = report_process.wait()   # False: the process died without a word; drawn here instead
        checkpoint()
    if report and not drawing:   # imported only here: matplotlib costs a batch worker that draws no report nothing
        from .report import write_analysis_report

        progress(1, steps, "writing report")
        write_analysis_report(stage / "report.png", analysis, overwrite=True)
        checkpoint()
    t2 = time.perf_counter()
    if scene_builder is not None:
        from . import scene as sc

        progress(2, steps, "writing scene")
        ctx, _ = scene_builder(analysis)   # its seg.nrrd nodes hold the same label maps as the files above
        checkpoint()
        sc.write_mrb(ctx, stage / SCENE_FILE, overwrite=True)
        checkpoint()
        timing["writing_scene"] = time.perf_counter() - t2
    progress(3, steps, "writing results")
    # the writing steps, so a slow one shows in results.json (issue 14 measures each)
    timing["writing_segmentation"] = t1 - t0
    if report:
        timing["writing_report"] = t2 - t1
    timing["writing"] = time.perf_counter() - t0
    doc = results_document(analysis, input_path, model_info, timing)
    (stage / "results.json").write_text(results_json_text(doc))
    (stage / "results.csv").write_text(results_csv_text(analysis.table_rows()))
    progress(4, steps, "moving outputs into place")
