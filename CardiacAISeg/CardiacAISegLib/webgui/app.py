"""The trame page: state, controls and the calls they make on a ``Session``.

Every control goes through ``_guard``: an error from the engine (bad file, no model, a path
outside the data folder, outputs that exist) becomes the text of the page's error alert
(``#error-alert``), and an unexpected one too (with its type), besides the server log. Long work
(segmentation) shows progress and can be cancelled: a network runs in a background process
(``Session.start``, the Slicer module's way), which Cancel stops at once; measuring the study's own
labels (about a second) in a worker thread. MRML and the views are only touched on the server's
own thread.
"""
import asyncio
import base64
import json
import logging
import re

import numpy as np

from ..errors import CancelledError, CardiacInputError, OutputExistsError
from ..logic import PARAMETERS
from ..pipeline import SEGMENTING_SHARE, run_percent
from ..progress import Progress
from ..study import CINE
from .sandbox import DataFolder
from .session import BULLSEYE_MEASURES, LABELS_CHOICE, SAMPLES, SEGMENT_TITLES, Session, in_page_terms
from .ui import OPEN_FIELDS
from .views import StudyViews

log = logging.getLogger("cardiacaiseg.webgui")
PAINT_SETTLE_S = 0.02
EXPECTED = (CardiacInputError, OutputExistsError, CancelledError, FileNotFoundError, PermissionError)


# how long "Saving ..." has to reach the page before the save holds the server's loop
SAVE_MESSAGE_LEAD_S = 0.1
# how often the page asks a background network run for its progress
JOB_POLL_S = 0.1



_ACDC_PATIENT = re.compile(r"^patient\d+$")

class CardiacWebApp:
    """One server, one study, one data folder."""

    def __init__(self, data_folder, server=None):
        from trame.app import get_server

        self.server = get_server(server, client_type="vue3")
        self.state, self.ctrl = self.server.state, self.server.controller
        self.data = data_folder if isinstance(data_folder, DataFolder) else DataFolder(data_folder)
        self.views = StudyViews(self.server)
        self.session = Session(self.data, context=self.views.context)
        self._updating = False       # our own node updates must not look like user edits
        self._progress = None
        self._job = None   # a network run in its background process
        self._saving = False          # a save in progress: a second click meanwhile is refused (busy)
        self._paint_timer = None
        self._xy_timer = None
        self._slice_sync_pending = False
        self._wl_shown = None
        self._play_task = None
        self._observed_markups = None
        self._bullseye_key = None
        self._bullseye_pending = False
        self._bullseye_again = False
        self._pending = None          # the action waiting for "Discard the edits of ...?" to be answered
        self._init_state()
        self._build_ui()
        self._bind()

    # ------------------------------------------------------------------------- state
    def _init_state(self):
        s = self.state
        s.trame__title = "CardiacAISeg"
        s.update({
            "error_message": "", "info_message": "",
            "samples": [{"title": t, "value": k} for k, t in SAMPLES.items()], "sample_id": "phantom-cine",
            "data_root": str(self.data.root), "data_files": [], "data_truncated": False, "data_collapsed": 0,
            "study_path": "", "labels_path": "", "aif_path": "", "dt_text": "", "rest_path": "", "rest_aif_path": "", "rest_labels_path": "",
            "rest_dt_text": "", "kind_choice": "auto", "label_convention": "acdc",
            "label_conventions": [{"title": "ACDC: 1 RV, 2 myocardium, 3 LV pool", "value": "acdc"},
                                  {"title": "UK Biobank: 1 LV pool, 2 myocardium, 3 RV", "value": "ukbb"},
                                  {"title": "internal: 1 LV pool, 2 myocardium, 3 RV", "value": "internal"}],
            "kinds": [{"title": "from the data", "value": "auto"}, {"title": "cine", "value": "cine"},
                      {"title": "perfusion", "value": "perfusion"}],
            "study": None, "study_loaded": False,
            "models": [], "model": None, "model_summary": "",
            "running": False, "progress": 0, "progress_text": "",
            "frame": 0, "n_frames": 1, "frame_tag": "", "slice": 0, "n_slices": 1,
            "has_results": False, "results_rows": [], "warnings": [], "bullseye_src": "",
            "qc_status": "", "qc_flags": [], "contour_fill": False, "bullseye_fit": False,
            "bullseye_measure": self.session.bullseye_measure, "bullseye_title": "", "bullseye_choice": False,
            "bullseye_measures": [{"title": t, "value": k} for k, t in BULLSEYE_MEASURES.items()],
            "placing": "", "can_place": False, "opening": False, "stopping": False, "view_turns": 0, "view_mirrored": False,
            "show_3d": True, "playing": False, "play_fps": 8, "wl_preset": "auto", "wl_range": [0.0, 1.0], "wl_bounds": [0.0, 1.0], "wl_step": 0.01,
            "handle_text": "", "has_handles": False, "handle_xy": "[]",
            "edit_segment": "myo", "tool": "none", "brush_mm": 6, "edit_frame_text": "",
            "out_path": "", "patient": PARAMETERS["groundTruthName"], "overwrite": False, "saved_files": [],
            "discard_dialog": False, "discard_question": "", "discard_detail": "",
        })
        self.refresh_files()

    def _bind(self):
        import slicer

        c = self.ctrl
        c.open_sample = lambda sample_id=None: self._guard(self._open_sample, sample_id)
        c.open_study = lambda fields=None: self._guard(self._open_study, fields)
        c.refresh_files = lambda: self._guard(self.refresh_files)
        c.run = lambda: self._guard(self._start_run)
        c.discard_edits = lambda: self._guard(self._discard_edits)
        c.keep_edits = self._keep_edits
        c.cancel = self.cancel
        c.goto_frame_tag = lambda tag: self._guard(self._goto_frame_tag, tag)
        c.step_frame = lambda d: self._guard(self._step, "frame", d)
        c.step_slice = lambda d: self._guard(self._step, "slice", d)
        c.rotate = lambda side, deg: self._guard(self._rotate, side, deg)
        c.morph = lambda step: self._guard(self._morph, step)
        c.revert = lambda: self._guard(self._revert)
        c.save = self._start_save
        c.dismiss = self._dismiss
        c.zoom_heart = lambda: self._guard(self._zoom_heart)
        c.toggle_play = lambda: self._guard(self._toggle_play)
        c.zoom_all = lambda: self._guard(self.views.fit, self.session)
        c.place_handles = lambda: self._guard(self._start_placing)
        c.cancel_placing = lambda: self._guard(self._stop_placing, "Placing cancelled.")
        c.turn_view = lambda: self._guard(self._turn_view, "turn")
        c.mirror_view = lambda: self._guard(self._turn_view, "mirror")
        c.reset_view = lambda: self._guard(self._turn_view, "reset")
        self.state.change("frame")(lambda frame, **_: self._guard(self._on_frame, frame))
        self.state.change("slice")(lambda slice, **_: self._guard(self._on_slice, slice))
        self.state.change("tool", "edit_segment", "brush_mm")(lambda **_: self._guard(self._apply_tool))
        self.state.change("model")(lambda model, **_: self._on_model(model))
        self.state.change("bullseye_fit")(lambda **_: self._guard(self.refresh, True))
        self.state.change("bullseye_measure")(lambda bullseye_measure, **_: self._guard(self._on_bullseye_measure, bullseye_measure))
        self.state.change("wl_preset")(lambda wl_preset, **_: self._guard(self._on_wl_preset, wl_preset))
        self.state.change("wl_range")(lambda wl_range, **_: self._guard(self._on_wl_range, wl_range))
        self.state.change("show_3d")(lambda show_3d, **_: self._guard(self.views.show_3d, bool(show_3d)))
        self.state.change("contour_fill")(lambda contour_fill, **_: self._guard(self._on_contour_fill, contour_fill))
        self.views.editor.segmentation_modified.connect(self._on_segmentation_modified)
        self.views.slice_node.AddObserver("ModifiedEvent", lambda *_: self._schedule_xy())
        self.views.slice_node.AddObserver("ModifiedEvent", lambda *_: self._schedule_slice_sync())
        self._markups_event = slicer.vtkMRMLMarkupsNode.PointEndInteractionEvent

    # ---------------------------------------------------------------------- guarding
    def _busy_message(self, fn=None):
        if self.state.running and fn not in (self._on_frame, self._on_slice, self._step, self._goto_frame_tag):
            return "Busy: the segmentation is running (Cancel stops it)."
        if self.state.opening:
            return "Busy: a study is being opened."
        return ""

    def _said(self, error):
        """An engine error as the page words it: the data folder's paths relative to it and the
        CLI's flags as the page's fields (a refusal at Run showed the server's absolute path; probe 75)."""
        return self.session.page_text(str(error))

    def _guard(self, fn, *args):
        """Run a page action; errors become the page's message, never only a log line."""
        busy = self._busy_message(fn)
        if busy:
            self.state.error_message = busy
            return None
        self._updating = True
        try:
            result = fn(*args)
            self.state.error_message = ""
            return result
        except EXPECTED as e:
            self.state.error_message = f"Cancelled: {e}" if isinstance(e, CancelledError) else self._said(e)
        except Exception as e:  # noqa: BLE001 - the page must say what happened
            log.exception("web GUI action %s failed", getattr(fn, "__name__", fn))
            self.state.error_message = f"Unexpected error ({type(e).__name__}): {e}"
        finally:
            self._updating = False
        return None

    def _dismiss(self):
        self.state.error_message = ""
        self.state.info_message = ""

    # ---------------------------------------------------------------------- loading
    def refresh_files(self):
        entries, truncated, collapsed = self.data.listing()
        self.state.data_files = entries
        self.state.data_truncated = truncated
        self.state.data_collapsed = len(collapsed)

    def _open_sample(self, sample_id=None):
        if sample_id is not None:
            self.state.sample_id = sample_id
        sample = self.state.sample_id
        if sample not in SAMPLES:   # refused before "Discard the edits?" is asked for it
            raise CardiacInputError("sample", f"{sample!r} is no shipped sample: choose one of {', '.join(SAMPLES)}")
        title = SAMPLES.get(sample, sample)
        self._unless_edits_would_go(f"opening the sample {title}", lambda: self._open_in_background(
            self.session.read_sample, (sample,), f"Opened the sample: {title}", f"Opening the sample {title}..."))

    def _open_study(self, fields=None):
        s = self.state
        for name, value in (fields or {}).items():
            if name in OPEN_FIELDS:   # the fields Open sends with its click
                s[name] = value
        args = (s.study_path, s.labels_path or None, s.aif_path or None, s.dt_text or None, s.kind_choice,
                s.rest_path or None, s.rest_aif_path or None, s.rest_dt_text or None, s.rest_labels_path or None,
                s.label_convention or "acdc")
        if not str(s.study_path or "").strip():   # refused before "Discard the edits?" is asked for it
            raise CardiacInputError("Study", "type or pick a file or folder of the data folder in the 'Study' field first")
        busy_text = f"Opening {s.study_path}..."
        self._unless_edits_would_go(f"opening {s.study_path or 'another study'}", lambda: self._open_in_background(
            self.session.read_path, args, None, busy_text))

    # ------------------------------------------------------------- unsaved edits
    def _unless_edits_would_go(self, doing, go_on):
        """``go_on()`` now when the open analysis holds no correction left unsaved, else ask first
        ("Discard the edits of <study>?", Discard / Cancel), as Slicer and every editor do: opening
        another study or running again dropped the corrected contours, and the measures made from
        them, without a word (probe 98). The session says what is unsaved (``Session.unsaved_edits``);
        the action waits, with the fields as they were at the click, for the answer."""
        edits = self.session.unsaved_edits()
        if not edits:
            return go_on()
        s = self.state
        st = self.session.study
        s.discard_question = f"Discard the edits of {st.name if st is not None else 'this study'}?"
        s.discard_detail = (f"Not saved: {'; '.join(edits)}. {doing[:1].upper() + doing[1:]} drops them, and the measures "
                            "made from them. Cancel keeps them (Save writes them).")
        self._pending = go_on
        s.discard_dialog = True
        return None

    def _discard_edits(self):
        """The dialog's Discard: the action asked for goes on."""
        go_on, self._pending = self._pending, None
        self.state.discard_dialog = False
        if go_on is not None:
            go_on()

    def _keep_edits(self):
        """The dialog's Cancel: nothing happens, the study and its edits stay as they were."""
        self._pending = None
        self.state.discard_dialog = False

    def keep_unsaved_edits(self, say=print):
        """The server stops (Ctrl+C, SIGTERM, ``--timeout``): corrections not saved would go with
        the process, unasked - no page is left to ask. They are written as Save writes them, into
        a new folder beside the output folder (``Session.recovery_folder``; saved results are never
        replaced), and ``say`` tells where, or why they could not be. Returns the folder, or None."""
        s, sess = self.state, self.session
        if not sess.unsaved_edits():
            return None
        st = sess.study
        name = st.name if st is not None else "the study"
        try:
            folder = sess.recovery_folder(s.out_path)
            say(f"Stopping with edits of {name} not saved ({'; '.join(sess.unsaved_edits())}): writing them into {folder} ...")
            sess.save_unsaved_edits(s.out_path, (s.patient or "").strip() or None, folder=folder)
        except KeyboardInterrupt as e:   # Ctrl+C again (or SIGTERM, outputs.Terminated) while writing
            # the staged writer put back what was there: nothing half-written, but nothing kept either
            said = "Ctrl+C" if type(e) is KeyboardInterrupt else str(e)
            say(f"error: stopped again while writing ({said}): the edits of {name} not saved were not written; "
                "they are lost")
            return None
        except Exception as e:  # noqa: BLE001 - the stop goes on; the user must learn the edits are lost
            if not isinstance(e, EXPECTED):
                log.exception("writing the unsaved edits at the stop failed")
            say(f"error: the edits of {name} not saved could not be written ({self._said(e)}); they are lost")
            return None
        say(f"The edits of {name} not saved are in {folder} (data folder {self.data.root}); the output folder "
            "was left as it was.")
        return folder

    def open_initial(self, study, labels=None):
        """The study named on the command line, before the server runs (errors go to the page
        and are returned)."""
        s = self.state
        s.study_path, s.labels_path = str(study), str(labels or "")

        def now():
            self.session.adopt(self.session.read_path(s.study_path, s.labels_path or None))
            self._study_opened(f"Opened {self.session.source}")
        self._guard(now)
        return self.state.error_message

    def _open_in_background(self, read, args, message, busy_text):
        """Read the files in a worker thread while the page shows that it is busy (the last
        error is cleared at once); the scene nodes are made back on the server's thread."""
        from trame_server.utils.asynchronous import create_task

        s = self.state
        s.opening, s.error_message, s.info_message = True, "", busy_text
        create_task(self._open_async(read, args, message))

    async def _open_async(self, read, args, message):
        loop = asyncio.get_running_loop()
        try:
            loaded = await loop.run_in_executor(None, read, *args)
        except Exception as e:  # noqa: BLE001 - the page says what happened
            with self.state:
                self.state.opening = False
                self.state.info_message = ""
                if isinstance(e, EXPECTED):
                    self.state.error_message = self._said(e)
                else:
                    log.exception("opening failed")
                    self.state.error_message = f"Unexpected error ({type(e).__name__}): {e}"
                if self.session.study is not None and not isinstance(e, CancelledError):
                    # the previous study's table stayed under the refused path, and Run measured it
                    # again as if it were the file just refused (probe 87)
                    self.state.error_message += f" - nothing was opened: {self.session.source} is still the open study"
            return
        with self.state:
            self.state.opening = False

            adopted = []
            kept = self.session.source if self.session.study is not None else None

            def adopt():
                self.session.adopt(loaded)
                adopted.append(True)
                self._study_opened(message or f"Opened {self.session.source}")
            self._guard(adopt)
            if not adopted and kept is not None and self.session.source == kept and self.state.error_message:
                # refused while it was put into the scene: the open study is kept (Session.adopt), as for a read refused
                self.state.error_message += f" - nothing was opened: {kept} is still the open study"

    def _study_opened(self, message):
        sess = self.session
        self.views.stop_editing()
        s = self.state
        s.tool = "none"
        s.playing = False
        self._stop_placing()
        s.view_turns, s.view_mirrored = 0, False
        s.saved_files = []
        choices = sess.model_choices()
        s.models = choices
        s.model = sess.default_choice()
        self._on_model(s.model)
        s.out_path = sess.default_output()
        # Overwrite goes with the study it was ticked for: left ticked, the next study's save
        # replaced the first one's files without a word (probe 98)
        s.overwrite = False
        # its ground truth under its own name, not patient101 for every ACDC patient; another study
        # does not keep the previous one's (review of session 44)
        name = sess.study.name if sess.study is not None else ""
        s.patient = name if _ACDC_PATIENT.match(name or "") else PARAMETERS["groundTruthName"]
        self.views.show_study(sess)
        # A single slice is a line edge-on in 3D: the slice view alone, unless asked for.
        s.show_3d = sess.study is not None and sess.study.n_slices > 1
        s.wl_preset = "auto"
        self.views.set_window_level(sess)
        self._show_wl()
        self.refresh()
        s.info_message = message + ("" if choices else " - no network is installed for this kind of series and the study has no labels: "
                                    "install a model (cardiacaiseg import-model) or open it with its label file.")

    def _on_model(self, model):
        for c in self.state.models or []:
            if c["value"] == model:
                self.state.model_summary = c.get("summary", "")
                return
        self.state.model_summary = ""

    # ----------------------------------------------------------------------- running
    def _start_run(self):
        sess = self.session
        sess.require_study()
        s = self.state
        if s.stopping:
            raise CardiacInputError("Run", "the cancelled run is still stopping (at its next step); try again in a moment")
        if not s.model and not sess.model_choices():
            # Nothing to run: the engine's own "no <kind> model is installed" error (raised
            # before any work, since the registry has no model for this kind).
            sess.compute(None)
        # a run replaces the segmentation, and the corrections made on it
        model = s.model
        self._unless_edits_would_go("running the segmentation again", lambda: self._run_now(model))

    def _run_now(self, model):
        sess, s = self.session, self.state
        if s.stopping:
            raise CardiacInputError("Run", "the cancelled run is still stopping (at its next step); try again in a moment")
        s.model = model
        from trame_server.utils.asynchronous import create_task

        if s.model != LABELS_CHOICE:
            self._job = sess.start(s.model, sess.density())   # (a refusal before it starts is the page's error)
            task = self._run_job(self._job)
        else:
            progress = Progress(lambda done, total, message: self._progress_from_thread(progress, done, total, message))
            self._progress = progress
            task = self._run(s.model, progress, sess.density())
        s.running, s.progress, s.progress_text = True, 0, "starting"
        s.info_message = ""
        create_task(task)

    async def _run_job(self, job):
        """Follow a background network run: its progress onto the page, its analysis applied when
        done; a cancelled job (killed) leaves the page as Cancel left it."""
        from ..background import CANCELLED, RUNNING

        try:
            while job.state == RUNNING:
                for event in job.poll():
                    if event.get("event") == "progress" and job is self._job:
                        self._show_progress(self.overall_percent(event["done"], event["total"], event.get("message", "")),
                                            event.get("message", ""))
                if job.state == RUNNING:
                    await asyncio.sleep(JOB_POLL_S)
            if job.state == CANCELLED or job is not self._job:
                return
            with self.state:
                self.state.running = False
                self._guard(self._apply_result, self.session.result_of(job))
        except Exception as e:  # noqa: BLE001
            with self.state:
                if isinstance(e, EXPECTED):
                    self.state.error_message = self._said(e)
                else:
                    log.error("segmentation failed in its background process: %s\n%s", e, job.log_tail or "")
                    self.state.error_message = f"Unexpected error ({type(e).__name__}): {e}"
        finally:
            if job is self._job:
                self._job = None
                with self.state:
                    self.state.running = False
                    self.state.progress_text = ""

    async def _run(self, model, progress, density):
        loop = asyncio.get_running_loop()
        self._loop = loop
        try:
            # The worker thread gets plain values only: MRML stays on this thread.
            result = await loop.run_in_executor(None, self.session.compute, model, progress, density)
            with self.state:
                if progress.cancelled:
                    return          # cancelled while finishing: the page already said so; results kept
                self.state.running = False
                self._guard(self._apply_result, result)
        except Exception as e:  # noqa: BLE001
            with self.state:
                if progress.cancelled or isinstance(e, CancelledError):
                    if not progress.cancelled:      # (the engine cancelled by itself)
                        self.state.error_message = f"Cancelled: {e} - the previous results are kept"
                elif isinstance(e, EXPECTED):
                    self.state.error_message = self._said(e)
                else:
                    log.exception("segmentation failed")
                    self.state.error_message = f"Unexpected error ({type(e).__name__}): {e}"
        finally:
            with self.state:
                self.state.running = False
                self.state.stopping = False
                self.state.progress_text = ""
            if self._progress is progress:
                self._progress = None

    def _apply_result(self, result):
        self._stop_placing()
        self.session.apply(result)
        # RV left, anterior up from the insertion points the run found (the view only)
        self.views.orient_to_study(self.session.study, self.session.analysis)
        self.views.show_frame(self.session)
        self.views.show_slice(self.session)
        self.views.zoom_to_heart(self.session)
        self.refresh()
        a = self.session.analysis
        t = result.timing or {}
        self.state.info_message = "Segmented and measured" + (f" in {sum(t.values()):.1f} s" if t else "") + \
            (f" with {result.model_info['name']}" if result.model_info else " from the study's labels")
        if a.rest is not None:   # the rest series has no labels of its own on the page: say what segmented it
            self.state.info_message += (f"; rest series with {a.rest.model_info['name']}" if a.rest.model_info
                                        else "; rest series from its labels")
        self.state.progress = 100
        if a.warnings:
            self.state.info_message += f" ({len(a.warnings)} warning(s) below the table)"

    # one bar for the whole run (pipeline.run_percent), in the Slicer module too
    SEGMENTING_SHARE = SEGMENTING_SHARE
    overall_percent = staticmethod(run_percent)

    def _progress_from_thread(self, progress, done, total, message):
        loop = getattr(self, "_loop", None)
        if loop is None or progress.cancelled:
            return
        percent = self.overall_percent(done, total, message)

        def update():
            if progress is not self._progress or progress.cancelled:
                return          # a cancelled run's late steps leave the page alone
            self._show_progress(percent, message)
        loop.call_soon_threadsafe(update)

    def _show_progress(self, percent, message):
        with self.state:
            # one bar for the whole run, never going back
            self.state.progress = max(int(self.state.progress or 0), round(percent))
            self.state.progress_text = message

    def cancel(self):
        """Cancel answers at once: the page is free again with the previous results. A network's
        background process is killed at once; measuring the labels in the worker thread stops at
        its next step (Run waits for that)."""
        job, s = self._job, self.state
        if job is not None:
            # the background process is killed now: nothing of it reaches the page, Run is free
            self._job = None
            job.cancel()
            s.running, s.progress, s.progress_text = False, 0, ""
            s.info_message = ""
            s.error_message = "Cancelled: the previous results are kept"
            return
        progress = self._progress
        if progress is None or progress.cancelled:
            return
        progress.cancel()
        s.running, s.stopping = False, True
        s.progress, s.progress_text = 0, "stopping the cancelled run at its next step..."
        s.info_message = ""
        s.error_message = "Cancelled: the previous results are kept"

    # -------------------------------------------------------------------- navigation
    def _on_frame(self, frame):
        sess = self.session
        if sess.study is None:
            return
        if sess.set_frame(frame) != frame:
            self.state.frame = sess.frame
        self.views.show_frame(sess)
        self._apply_tool()
        self._refresh_tags()
        self._show_wl()

    def _on_slice(self, k):
        sess = self.session
        if sess.study is None:
            return
        if sess.set_slice(k) != k:
            self.state.slice = sess.slice
        self.views.show_slice(sess)
        self._refresh_handles()

    def _schedule_slice_sync(self):
        """The slice view moved (mouse wheel, or our own jump): follow it once the event is over."""
        if self._slice_sync_pending:
            return
        try:
            loop = asyncio.get_event_loop()
        except RuntimeError:
            return
        self._slice_sync_pending = True
        loop.call_soon(self._sync_slice_from_view)

    def _sync_slice_from_view(self):
        """One slice state for the view and the page: when the view shows another slice than the
        session's (the wheel scrolled it), the page's slice follows - label, handles, and every
        edit (Grow, paint, handle turns) then acts on the slice on screen."""
        self._slice_sync_pending = False
        st = self.session.study
        if st is None:
            return
        k = int(round(self.views.shown_slice(st)))
        k = min(max(k, 0), st.n_slices - 1)
        if k != self.session.slice:
            with self.state:
                self.state.slice = k

    def _zoom_heart(self):
        self.session.require_analysis()
        if not self.views.zoom_to_heart(self.session):
            raise CardiacInputError("zoom", "nothing is segmented on the frame shown")

    # Window/level presets, from the frame on screen: "contrast" darkens everything below the
    # median (muscle, background) so the blood pool / myocardium border stands out.
    WL_PRESETS = {"full": (0.0, 100.0), "contrast": (50.0, 99.5)}

    def _on_wl_preset(self, preset):
        sess = self.session
        st = sess.study
        if st is None or preset == "custom":
            return
        if preset == "auto":
            self.views.set_window_level(sess)
        else:
            lo, hi = np.percentile(st.images[sess.frame], self.WL_PRESETS[preset])
            self.views.set_window_level(sess, lo, hi)
        self._show_wl()

    def _on_wl_range(self, wl_range):
        current = self.views.window_level(self.session)
        if current is None or not wl_range or len(wl_range) != 2:
            return
        lo, hi = float(wl_range[0]), float(wl_range[1])
        if [lo, hi] == self._wl_shown:
            return                       # our own update coming back
        self.views.set_window_level(self.session, lo, hi)
        self.state.wl_preset = "custom"

    def _show_wl(self):
        """Slider bounds from the study's intensities, and the window shown now."""
        st = self.session.study
        current = self.views.window_level(self.session)
        if st is None or current is None:
            return
        lo, hi = float(st.images.min()), float(st.images.max())
        self.state.wl_bounds = [lo, hi]
        self.state.wl_step = max((hi - lo) / 200.0, 1e-6)
        self._wl_shown = [max(lo, current[0]), min(hi, current[1])]
        self.state.wl_range = list(self._wl_shown)

    def _on_contour_fill(self, fill):
        self.views.contour_fill = bool(fill)
        self.views.show_segmentation(self.session)

    def _step(self, what, delta):
        sess = self.session
        sess.require_study()
        if what == "frame":
            self.state.frame = (int(self.state.frame) + int(delta)) % sess.study.n_frames
        else:
            self.state.slice = min(max(int(self.state.slice) + int(delta), 0), sess.study.n_slices - 1)

    def _toggle_play(self):
        """Cine playback: the frames in a loop at ``play_fps`` until pressed again (or another
        study opens)."""
        st = self.session.require_study()
        if self.state.playing or st.n_frames < 2:
            self.state.playing = False
            return
        from trame_server.utils.asynchronous import create_task

        self.state.playing = True
        self._play_task = create_task(self._play())

    async def _play(self):
        try:
            while self.state.playing and self.session.study is not None:
                await asyncio.sleep(1.0 / max(float(self.state.play_fps or 8), 1.0))
                if not self.state.playing:
                    break
                with self.state:
                    self.state.frame = (int(self.state.frame) + 1) % self.session.study.n_frames
        finally:
            self._play_task = None

    def _goto_frame_tag(self, tag):
        sess = self.session
        st = sess.require_study()
        a = sess.analysis
        if st.kind != CINE:   # "run the segmentation first" after a finished run (probe 68)
            raise CardiacInputError(tag.upper(), "a first-pass perfusion series has no ED or ES frame (each dynamic is "
                                                 "another heartbeat): step through the dynamics with < > or the slider")
        t = (a.cine or {}).get(f"{tag}_frame") if a is not None and a.cine else getattr(st, f"{tag}_frame", None)
        if t is None:
            raise CardiacInputError(tag.upper(), "not known yet: run the segmentation first")
        self.state.frame = int(t)

    # ------------------------------------------------------------------- orientation
    def _turn_view(self, how):
        """Turn the picture 90 degrees clockwise, mirror it left-right, or back to the default
        (RV left, anterior up): the view only, never the images, labels or numbers."""
        st = self.session.require_study()
        s = self.state
        if how == "reset":
            s.view_turns, s.view_mirrored = 0, False
        elif how == "mirror":
            s.view_mirrored = not s.view_mirrored
        else:
            # a clockwise turn of what is on screen; behind a mirror that is a turn back
            s.view_turns = (int(s.view_turns) + (-1 if s.view_mirrored else 1)) % 4
        self.views.set_view_turns(st, s.view_turns, s.view_mirrored)
        self._schedule_xy()

    # ------------------------------------------------------------ bullseye measure
    def _on_bullseye_measure(self, measure):
        if measure == self.session.bullseye_measure and (self.session.analysis is None
                                                         or self.session.analysis.bullseye_measure == measure):
            return
        self.session.set_bullseye_measure(measure)
        self.refresh(results_only=True)

    # ------------------------------------------------------------- placing handles
    def _start_placing(self):
        """No RV labelled: the next two left clicks in the slice view place the anterior, then
        the inferior RV insertion point on the slice on screen."""
        sess = self.session
        sess.require_analysis()
        if not sess.can_place_handles():
            raise CardiacInputError("insertion point", "this study has RV insertion handles already: drag them in the slice view")
        self.state.tool = "none"
        self._apply_tool()
        self._placed_first = None
        self.state.placing = "anterior"
        self.views.start_placing(self._on_place_click)
        self.state.info_message = "Click the anterior RV insertion point in the slice view"

    def _stop_placing(self, message=None):
        self.views.stop_placing()
        self._placed_first = None
        self.state.placing = ""
        if message:
            self.state.info_message = message

    def _on_place_click(self, ras):
        with self.state:
            if self.state.placing == "anterior":
                self._placed_first = ras
                self.state.placing = "inferior"
                self.state.info_message = "Anterior point placed: now click the inferior RV insertion point"
                return
            first = self._placed_first
            self._stop_placing()
            self._guard(self._place, first, ras)

    def _place(self, anterior, inferior):
        sess = self.session
        k = int(round(float(sess.study.ras_to_ijk_points([anterior])[0][2])))
        slices = sess.place_insertion_points(k, anterior, inferior)
        self.views.show_segmentation(sess)
        self.refresh(results_only=True)
        self._note_update(f"RV insertion points placed on slice {k}: AHA sectors on slices {slices}")

    # -------------------------------------------------------------------------- edits
    def _rotate(self, side, degrees):
        sess = self.session
        changed = sess.rotate_handle(sess.slice, side, float(degrees))
        self.refresh(results_only=True)
        self._note_update(f"{side} handle of slice {sess.slice} turned {float(degrees):+.0f} deg; sectors of slice(s) {changed} re-binned")

    def _morph(self, step):
        sess = self.session
        n = sess.morph(self.state.edit_segment, int(step))
        self.views.show_segmentation(sess)
        self.refresh(results_only=True)
        verb = "grown" if int(step) > 0 else "shrunk"
        self._note_update(f"{SEGMENT_TITLES[self.state.edit_segment]} {verb} on slice {sess.slice}: {n} pixel(s) changed")

    def _revert(self):
        """Back to the computed segmentation. Revert is there to drop the corrections, but a
        click by mistake lost them unasked: with some not saved it asks first, as Open and Run do."""
        self.session.require_analysis()   # "run first" is said at once, not after a question
        self._unless_edits_would_go("reverting to the segmentation as it was computed", self._revert_now)

    def _revert_now(self):
        self.session.revert()
        self.views.show_segmentation(self.session)
        self.refresh()
        self.state.info_message = "Back to the segmentation as it was computed."

    def _apply_tool(self):
        s = self.state
        node = self.views.set_tool(self.session, s.tool, s.edit_segment, float(s.brush_mm))
        if s.tool in ("paint", "erase") and node is None:
            s.tool = "none"
            raise CardiacInputError("edit", "nothing to edit yet: run the segmentation first")
        self._refresh_tags()

    def _on_segmentation_modified(self, *_):
        """Segment Editor strokes arrive as many modifications: measure once they stop."""
        if self._updating or self.views.editing_node is None:
            return
        loop = asyncio.get_event_loop()
        if self._paint_timer is not None:
            self._paint_timer.cancel()
        # The brush lands in the segmentation on the mouse release, as a burst of modified
        # events in one turn of the loop: measure once, right after the burst.
        self._paint_timer = loop.call_later(PAINT_SETTLE_S, self._after_paint)

    def _after_paint(self):
        self._paint_timer = None
        node = self.views.editing_node
        with self.state:
            if self._guard(self.session.segmentation_edited, node) is not None:
                self.refresh(results_only=True)
                n = self.session.last_edit_pixels
                title = SEGMENT_TITLES[self.state.edit_segment]
                if n == 0:
                    verb = "painted" if self.state.tool == "paint" else "erased"
                    self._note_update(f"Nothing {verb}: the stroke changed no pixel of {title}")
                else:
                    done = "Painted" if self.state.tool == "paint" else "Erased"
                    self._note_update(f"{done} {title}" + ("" if n is None else f": {n} pixel(s) changed"))

    def _on_markups_end(self, *_):
        asyncio.get_event_loop().call_soon(self._after_drag)

    def _after_drag(self):
        with self.state:
            changed = self._guard(self.session.handles_moved)
            if changed is not None:
                self.refresh(results_only=True)
                self._note_update(f"handle dragged: sectors of slice(s) {changed} re-binned")

    def _note_update(self, text):
        t = self.session.last_update_s
        self.state.info_message = text + ("" if t is None else f" (update {1000 * t:.0f} ms)")

    # ------------------------------------------------------------------------ outputs
    def _start_save(self, out_path=None, patient=None, overwrite=None):
        """Save with the fields as the page showed them at the click. A save takes seconds
        (report, scene) on the server's loop: "Saving ..." is sent first and the writing starts
        a moment later, or the page saw it only as the files were done (probe 63)."""
        from trame_server.utils.asynchronous import create_task

        s = self.state
        if self._busy_message() or self._saving:
            s.error_message = self._busy_message() or "Busy: saving."
            return
        if out_path is not None:
            s.out_path = out_path
        if patient is not None:
            s.patient = patient
        if overwrite is not None:
            s.overwrite = bool(overwrite)
        s.error_message, s.info_message = "", "Saving ..."
        self._saving = True
        create_task(self._save_after_the_message())

    async def _save_after_the_message(self):
        try:
            await asyncio.sleep(SAVE_MESSAGE_LEAD_S)
            with self.state:
                self._guard(self._save)
                if self.state.error_message:   # refused, failed or busy: "Saving ..." is over
                    self.state.info_message = ""
        finally:
            self._saving = False

    def _save(self):
        s = self.state
        files = self.session.save(s.out_path, force=bool(s.overwrite), patient=(s.patient or "").strip() or None)
        s.saved_files = files
        s.info_message = f"Saved {len(files)} files into {self.data.relative(self.data.resolve(s.out_path or self.session.default_output(), must_exist=False))}"
        self.refresh_files()

    # ------------------------------------------------------------------------ refresh
    def refresh(self, results_only=False):
        """Push the session's state to the page."""
        sess, s = self.session, self.state
        st = sess.study
        if not results_only:
            s.study = sess.study_summary()
            s.study_loaded = st is not None
            s.n_frames = int(st.n_frames) if st is not None else 1
            s.n_slices = int(st.n_slices) if st is not None else 1
            s.frame, s.slice = sess.frame, sess.slice
        a = sess.analysis
        s.has_results = a is not None
        rows = sess.table()
        # QC has its own chip and list beside the table; the table keeps the measures.
        s.results_rows = [r for r in rows if not r["key"].startswith("qc_")]
        qc = (a.qc if a is not None else None) or {}
        s.qc_status = qc.get("status", "")
        # in the page's fields, as the warnings (STRESS_REST_SWAPPED named --rest; probe 68)
        s.qc_flags = [{"code": f.get("code", ""), "severity": f.get("severity", ""),
                       "message": sess.relative_paths(in_page_terms(f.get("message", ""),
                                                                    rest=f.get("code", "").startswith("REST_")))}
                      for f in qc.get("flags", [])]
        # before a run, the reading's notes (series left out, a long-axis view chosen, a kind
        # against the data): they reached the page only after Run (probe 92)
        s.warnings = sess.page_warnings(a.warnings if a is not None else
                                        (sess.study.provenance or {}).get("warnings", []) if sess.study is not None else [])
        s.bullseye_choice = a is not None and a.kind != CINE
        if results_only:
            # After a drag or an edit the table goes to the page first; the bullseye picture
            # (matplotlib, ~0.1-0.3 s) follows in the next turn of the loop.
            self._schedule_bullseye()
        else:
            self._render_bullseye()
        self._watch_markups()
        self._refresh_tags()
        self._refresh_handles()

    def _bullseye_wanted(self):
        """(key, what to draw) of the bullseye the page should show now; key None: none."""
        from types import SimpleNamespace

        a = self.session.analysis
        self.state.bullseye_title = a.bullseye_label if a is not None else ""
        if a is None:
            return None, None
        fit = bool(self.state.bullseye_fit)
        key = (fit, a.bullseye_label, tuple(sorted(a.segment_values.items())))
        # a copy of what the renderer reads, so that a worker thread can draw it while the
        # analysis moves on
        return key, SimpleNamespace(kind=a.kind, bullseye_label=a.bullseye_label, bullseye_format=a.bullseye_format,
                                    segment_values=dict(a.segment_values), fit=fit)

    @staticmethod
    def _bullseye_src(what):
        from ..report import analysis_bullseye_png

        return "data:image/png;base64," + base64.b64encode(analysis_bullseye_png(what, size_px=300, fit=what.fit)).decode()

    def _render_bullseye(self):
        key, what = self._bullseye_wanted()
        if key != self._bullseye_key:
            self.state.bullseye_src = "" if what is None else self._bullseye_src(what)
            self._bullseye_key = key

    def _schedule_bullseye(self):
        """Draw the bullseye in a worker thread (matplotlib takes 0.1-0.4 s on a busy machine):
        the table, already sent, and the views' rendering do not wait for it."""
        try:
            loop = asyncio.get_event_loop()
        except RuntimeError:
            loop = None
        if loop is None or not loop.is_running():
            self._render_bullseye()
            return
        if self._bullseye_pending:
            self._bullseye_again = True          # drawn again once the one in flight is done
            return
        key, what = self._bullseye_wanted()
        if key == self._bullseye_key:
            return
        if what is None:
            self._render_bullseye()
            return
        from trame_server.utils.asynchronous import create_task

        self._bullseye_pending, self._bullseye_again = True, False

        async def draw():
            try:
                src = await loop.run_in_executor(None, self._bullseye_src, what)
                with self.state:
                    if self._bullseye_wanted()[0] == key:
                        self.state.bullseye_src, self._bullseye_key = src, key
            except Exception as e:  # noqa: BLE001 - the page must say what happened
                log.exception("bullseye drawing failed")
                with self.state:
                    self.state.error_message = f"Unexpected error ({type(e).__name__}): {e}"
            finally:
                self._bullseye_pending = False
            if self._bullseye_again:
                with self.state:
                    self._schedule_bullseye()
        create_task(draw())

    def _refresh_tags(self):
        sess, s = self.session, self.state
        st, a = sess.study, sess.analysis
        tags = {}
        if a is not None and a.cine:
            tags = {t: n for t, n in ((a.cine["ed_frame"], "ED"), (a.cine["es_frame"], "ES")) if t is not None}
        elif st is not None:
            tags = {t: n for t, n in ((st.ed_frame, "ED"), (st.es_frame, "ES")) if t is not None}
        s.frame_tag = tags.get(sess.frame, "")
        if a is None:
            s.edit_frame_text = ""
        elif a.kind != CINE:
            s.edit_frame_text = f"Edits apply to the one mask of the series (frame {a.reference_frame + 1}), shown on every frame"
        else:
            # Frame numbers for people count from 1 (files keep 0-based where documented).
            t = sess.edit_frame()
            if t == sess.frame:
                shown = ""
            elif sess.frame in a.labels:      # contours shown for reading; the edited ones are ED/ES
                shown = f" (frame {sess.frame + 1} shows its contours read-only: edits go to frame {t + 1})"
            else:
                shown = f" (frame {sess.frame + 1} has no segmentation: edits go to frame {t + 1})"
            s.edit_frame_text = f"Edits apply to frame {t + 1} {tags.get(t, '')}{shown}".strip()

    def _refresh_handles(self):
        sess, s = self.session, self.state
        angles = sess.handle_angles()
        s.has_handles = angles is not None
        s.can_place = sess.can_place_handles()
        if angles is None and s.can_place:
            s.handle_text = "No RV labelled, so no insertion points: place them (two clicks in the slice view)."
        elif angles is None:
            s.handle_text = ("No RV insertion handles on this slice." if sess.analysis is not None else "")
        else:
            s.handle_text = f"anterior {angles['anterior']:.0f} deg, inferior {angles['inferior']:.0f} deg"
        self._update_xy()

    def _watch_markups(self):
        node = self.session.markups_node()
        if node is self._observed_markups:
            return
        if node is not None:
            node.AddObserver(self._markups_event, self._on_markups_end)
        self._observed_markups = node

    def _schedule_xy(self):
        try:
            loop = asyncio.get_event_loop()
        except RuntimeError:
            return
        if self._xy_timer is not None:
            return

        def fire():
            self._xy_timer = None
            with self.state:
                self._update_xy()
        self._xy_timer = loop.call_later(0.15, fire)

    def _update_xy(self):
        """Screen positions of the handles on this slice (and the LV centre), for anyone who
        wants to press on them - the end-to-end test does."""
        sess = self.session
        points = self.views.handle_positions(sess)
        a = sess.analysis
        if a is not None and a.sectors is not None and sess.slice in a.sectors.slices:
            sl = a.sectors.slices[sess.slice]
            ras = a.study.ijk_to_ras_points([(sl.cx, sl.cy, sess.slice)])[0]
            points += self.views.positions_of([("LV centre", ras)])
        elif a is not None:
            # no sectors (no RV labelled): the LV's centre from the labels, where to place from
            from ..labels import LV, MYO

            lab = a.labels.get(sess.edit_frame())
            if lab is not None:
                rows, cols = np.nonzero((lab[sess.slice] == LV) | (lab[sess.slice] == MYO))
                if rows.size:
                    ras = a.study.ijk_to_ras_points([(cols.mean(), rows.mean(), sess.slice)])[0]
                    points += self.views.positions_of([("LV centre", ras)])
        self.state.handle_xy = json.dumps(points)

    # ----------------------------------------------------------------------------- UI
    def _build_ui(self):
        from .ui import build as build_layout

        build_layout(self)



LOOPBACK_NAMES = ("127.0.0.1", "localhost", "::1")


def request_allowed(host_header, origin, loopback_only=True):
    """(ok, reason) for an HTTP/WebSocket request to the GUI server.

    - ``Host`` must name this machine when the server listens on loopback only: a page that
      resolved its own domain to 127.0.0.1 (DNS rebinding) is refused;
    - ``Origin``, when the browser sends one (it always does for WebSockets and cross-site
      requests), must be the page's own origin: another site open in the same browser cannot
      drive the GUI or read its data through the WebSocket.
    """
    from urllib.parse import urlsplit

    host = (host_header or "").strip()
    try:
        hostname = urlsplit(f"http://{host}").hostname or ""
    except ValueError:
        return False, f"bad Host header {host!r}"
    if loopback_only and hostname not in LOOPBACK_NAMES:
        return False, f"Host {host!r} is not this machine"
    if origin:
        try:
            parts = urlsplit(origin)
        except ValueError:
            return False, f"bad Origin {origin!r}"
        if parts.scheme not in ("http", "https") or parts.netloc.lower() != host.lower():
            return False, f"cross-origin request from {origin!r}"
    return True, ""


# trame's page asks a session launcher at <page folder>/paraview/ where to connect before it falls
# back to the server's own WebSocket; a single-user server has no launcher, so every page load
# logged "405 (Method Not Allowed)" in the browser console (probe 63)
LAUNCHER_PATH = "/paraview/"


def page_session_url(referer, request_path=LAUNCHER_PATH):
    """The WebSocket address trame's page falls back to when no launcher answers, for the page at
    ``referer`` (its URL) that asked ``request_path``: ws(s)://host[:port]/<page folder>/ws. None
    when it cannot be said exactly: no page URL, not http(s), letters in upper case (the page
    lower-cases a launcher's answer before it connects), or a page folder other than the one
    the request came to (a Referer cut to the site's root by a Referrer-Policy, a proxy that
    strips a path prefix: the page's own fallback knows its folder; helper-90's review)."""
    from urllib.parse import urlsplit

    try:
        parts = urlsplit(referer or "")
    except ValueError:
        return None
    if parts.scheme not in ("http", "https") or not parts.netloc:
        return None
    folder = parts.path
    if folder.endswith((".html", ".htm")):
        folder = folder.rsplit("/", 1)[0]
    folder = folder.rstrip("/")
    if not request_path.endswith(LAUNCHER_PATH) or request_path[:-len(LAUNCHER_PATH)].rstrip("/") != folder:
        return None
    url = f"{'wss' if parts.scheme == 'https' else 'ws'}://{parts.netloc}{folder}/ws"
    return url if url == url.lower() else None


def install_request_guard(server, loopback_only=True):
    """Refuse requests that fail ``request_allowed`` (403) before trame or wslink see them, and
    answer the page's launcher request with the server's own WebSocket (``page_session_url``)."""
    from aiohttp import web

    @web.middleware
    async def guard(request, handler):
        ok, reason = request_allowed(request.headers.get("Host"), request.headers.get("Origin"), loopback_only)
        if not ok:
            log.warning("refused %s %s: %s", request.method, request.path, reason)
            return web.Response(status=403, text=f"CardiacAISeg web GUI: refused ({reason})\n")
        if request.method == "POST" and request.path.endswith(LAUNCHER_PATH):
            url = page_session_url(request.headers.get("Referer"), request.path)
            if url:
                return web.json_response({"sessionURL": url})
        return await handler(request)

    def bind(wslink_server, **_):
        app = getattr(wslink_server, "app", None)
        if app is not None:
            app.middlewares.append(guard)

    server.controller.on_server_bind.add(bind)
