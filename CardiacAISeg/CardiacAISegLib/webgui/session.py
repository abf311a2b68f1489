"""What the web page asks for, as plain calls on one study: no trame, no browser.

``Session`` owns a ``CardiacAISegLogic`` (the Slicer module's Logic, on whatever scene it is
given: trame-slicer's in the server, ``scene.new_scene()`` in tests) and a ``DataFolder``. The
trame layer (``app.py``) only turns page events into these calls and their results into page
state, so every behaviour here is testable without a browser.

Long work is split in two: ``compute`` (segmentation + measures, pure numpy/torch, safe in a
worker thread, cancellable through its progress) and ``apply`` (MRML nodes, on the server's
own thread, where the views render).
"""
import hashlib
import math
import os
import re
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from .. import scene as sc
from ..analysis import BULLSEYE_TITLES as BULLSEYE_MEASURES   # measure -> title: one table
from ..errors import CardiacInputError, OutputExistsError
from ..labels import LV, MYO, RV, to_convention
from ..logic import (FRAME_ATTRIBUTE, NODE_PARAMETERS, OUTPUT_PARAMETERS, PARAMETERS, CardiacAISegLogic,
                     fill_segmentation)
from ..readers.sniff import image_stem
from ..study import CINE, PERFUSION, check_rest_pairing
from .sandbox import DataFolder

LABELS_CHOICE = "study-labels"
SAMPLE_DIR = Path(__file__).resolve().parents[2] / "Resources" / "SampleData"
SUNNYBROOK = SAMPLE_DIR / "sunnybrook-SC-HF-I-1-ed-es"
SAMPLES = {
    "phantom-cine": "Cine phantom (synthetic, exact truth, labels included)",
    "sunnybrook": "Sunnybrook SC-HF-I-1, ED/ES frames (CC0, expert LV contours)",
    "phantom-perfusion": "Perfusion phantom (synthetic, AIF and labels included)",
}
EDIT_SEGMENTS = {"lv": LV, "myo": MYO, "rv": RV}
SEGMENT_TITLES = {"lv": "LV blood pool", "myo": "LV myocardium", "rv": "RV"}
ROTATE_STEP_DEG = 10.0   # one click of the page's rotate buttons turns a handle this far
SIDES = ("anterior", "inferior")


@dataclass
class RunResult:
    analysis: object
    model_info: dict = None
    timing: dict = field(default_factory=dict)


class Session:
    """One study at a time, read from and written into one data folder."""

    def __init__(self, data_folder, context=None, sample_folder=None):
        self.data = data_folder if isinstance(data_folder, DataFolder) else DataFolder(data_folder)
        self.logic = CardiacAISegLogic(context if context is not None else sc.new_scene())
        self.sample_folder = Path(sample_folder or Path(tempfile.gettempdir()) / "CardiacAISeg" / "samples")
        self.source = ""             # what was opened, as the page shows it
        self.frame = 0
        self.slice = 0
        self.last_update_s = None
        self.last_edit_pixels = None
        self._placed = None          # (slice, anterior RAS, inferior RAS) placed by hand (no RV labelled)
        self._saved_corrections = None   # ``_corrections()`` as the last Save wrote them

    # ------------------------------------------------------------------------- state
    @property
    def study(self):
        return self.logic.study

    @property
    def analysis(self):
        return self.logic.analysis

    @property
    def context(self):
        return self.logic.context

    def require_study(self):
        return self.logic._requireStudy()

    def require_analysis(self):
        return self.logic._requireAnalysis()

    def study_summary(self):
        st = self.study
        if st is None:
            return None
        sp = st.spacing
        return {"name": st.name, "kind": st.kind, "frames": int(st.n_frames), "slices": int(st.n_slices),
                "rows": int(st.images.shape[2]), "cols": int(st.images.shape[3]),
                "spacing": f"{sp[0]:.2f} x {sp[1]:.2f} x {sp[2]:.2f} mm", "source": self.source,
                "labelled_frames": sorted(int(t) for t in (st.labels or {})),
                "ed_frame": st.ed_frame, "es_frame": st.es_frame}

    # ----------------------------------------------------------------------- loading
    def close_study(self):
        """Forget the current study and remove its nodes from the scene."""
        self._remove_nodes(self._forget_study())

    def _study_nodes(self):
        """Every node the open study put in the scene: its images, its outputs with the hidden
        label sequences, and the rest series a run added for MPR, each sequence with its browser
        and proxy volume (the rest's were left behind: a full copy of the rest images per study
        opened with one; probe 103)."""
        logic = self.logic
        shown = logic.studyNodes
        nodes = [shown.browser, shown.sequence, shown.volume] if shown is not None else []
        for name in (*OUTPUT_PARAMETERS, "inputNodeID", "restNodeID"):
            nodes.append(logic.getNodeParameter(name))
        for node in list(nodes):
            if node is not None and node.IsA("vtkMRMLSequenceNode"):
                nodes += _browsers_and_proxies(self.context.scene, node)
        return [node for node in nodes if node is not None]

    def _forget_study(self):
        """The open study is forgotten (the Logic's results, the parameters naming its nodes, the
        page's place in it); returns its nodes, still in the scene."""
        logic = self.logic
        doomed = self._study_nodes()
        # the results first: the rest parameter emptied with an analysis there measured it again
        logic.reset()
        for name in (*OUTPUT_PARAMETERS, "inputNodeID", "restNodeID"):
            logic.setParameter(name, "")
        self.source, self.frame, self.slice = "", 0, 0
        self._placed = None
        self._saved_corrections = None
        return doomed

    def _remove_nodes(self, nodes):
        """``nodes`` out of the scene, with their display and storage nodes (the scene keeps those
        when a node goes: a few more were left with every study opened)."""
        scene = self.context.scene
        with_theirs = []
        for node in nodes:
            with_theirs.append(node)
            if node.IsA("vtkMRMLDisplayableNode"):
                with_theirs += [node.GetNthDisplayNode(n) for n in range(node.GetNumberOfDisplayNodes())]
            if node.IsA("vtkMRMLStorableNode"):
                with_theirs += [node.GetNthStorageNode(n) for n in range(node.GetNumberOfStorageNodes())]
        for node in with_theirs:
            if node is not None and node.GetScene() is scene:
                scene.RemoveNode(node)

    def _open_state(self):
        """What ``_put_back`` needs to undo an open that failed half-way: the Logic's state, its
        parameters, the nodes in the scene and the page's place in the study."""
        logic = self.logic
        scene = self.context.scene
        return {"logic": dict(vars(logic)),
                "parameters": {name: logic.getParameter(name) for name in PARAMETERS},
                "node_ids": {scene.GetNthNode(n).GetID() for n in range(scene.GetNumberOfNodes())},
                "session": (self.source, self.frame, self.slice, self._placed, self._saved_corrections)}

    def _put_back(self, state):
        """The study open at ``_open_state`` open again, as it was: the nodes added since go and
        the parameters, the Logic and the page's place are restored (``setParameter`` is not
        used: emptying the rest series through it would measure the analysis again)."""
        scene = self.context.scene
        added = [scene.GetNthNode(n) for n in range(scene.GetNumberOfNodes())]
        self._remove_nodes([node for node in added if node.GetID() not in state["node_ids"]])
        parameter_node = self.logic.parameterNode()
        for name, value in state["parameters"].items():
            if name in NODE_PARAMETERS:
                parameter_node.SetNodeReferenceID(name, value or None)
            else:
                parameter_node.SetParameter(name, value)
        logic_state = vars(self.logic)
        logic_state.clear()
        logic_state.update(state["logic"])
        self.source, self.frame, self.slice, self._placed, self._saved_corrections = state["session"]

    def open_path(self, text, labels=None, aif=None, dt=None, kind=None, rest=None, rest_aif=None, rest_dt=None,
                  rest_labels=None, label_convention="acdc"):
        """Open a file or folder of the data folder (optional label map / contour folder, AIF
        file, frame interval in s; for perfusion an optional rest series, its AIF file, its own
        frame interval and its label map, for MPR and MPRI). Everything named must lie inside the
        data folder. ``label_convention``: the label values of the label maps (the CLI's
        --label-convention)."""
        return self.adopt(self.read_path(text, labels, aif, dt, kind, rest, rest_aif, rest_dt, rest_labels,
                                         label_convention))

    def read_path(self, text, labels=None, aif=None, dt=None, kind=None, rest=None, rest_aif=None, rest_dt=None,
                  rest_labels=None, label_convention="acdc"):
        """The reading half of ``open_path``: files only, no scene node (a worker thread may
        run it while the page stays live). Returns what ``adopt`` takes."""
        path = self.data.resolve_input(text)
        options = {}
        if labels:
            options["labels"] = self.data.resolve_input(labels)
            # a UK Biobank-style map (1 LV, 2 myocardium, 3 RV) was refused with "give
            # --label-convention ukbb", a flag the page did not have (probe 96)
            options["label_convention"] = label_convention or "acdc"
        if aif:
            options["aif"] = self.data.resolve_input(aif)
        if dt not in (None, ""):
            options["dt"] = _frame_interval(dt, "the 'Frame interval (s)' field")
        if kind in (CINE, PERFUSION):
            options["kind"] = kind
        from ..readers import load_rest_series, load_study

        if not rest:
            # the rest fields go with a rest series: filled alone they were ignored, a stress-only
            # study opened as if its rest were there (the CLI refuses --rest-aif without --rest; probe 68)
            for value, field_name in ((rest_aif, "Rest AIF file"), (rest_dt, "Rest frame interval (s)"),
                                      (rest_labels, "Rest labels")):
                if value not in (None, ""):
                    raise CardiacInputError(f"the '{field_name}' field", "goes with a rest series, but the 'Rest series' "
                                                                         "field is empty: fill it, or empty this field")
        try:
            study = load_study(path, **options)       # read before the old study is dropped
        except CardiacInputError as e:
            raise CardiacInputError(self.data.shown(e.path), self.page_text(e.problem)) from None
        if study.kind != PERFUSION and options.get("dt") is not None:
            # the CLI says "--dt not used"; the page read the cine and kept the field's number unsaid (probe 98)
            study.provenance.setdefault("warnings", []).append(
                f"the 'Frame interval (s)' field ({options['dt']:g} s) is not used: it is for perfusion series, this is a "
                f"{study.kind} series")
        if not rest:
            from ..readers.perfusion import qperf_default_series_note

            if qperf_default_series_note(path):   # the CLI's note, in the page's fields (probe 68)
                study.provenance.setdefault("warnings", []).append(
                    f"{self.data.shown(path)} holds a stress and a rest series (params.json): the stress series was read; "
                    "put the same folder in the 'Rest series' field for both (MPR)")
        rest_study = None
        if rest:
            try:   # before reading it, and before the open study is dropped
                check_rest_pairing(study, rest)
            except CardiacInputError as e:
                # the field may be folded away with the perfusion panel: name it, say to empty it
                raise CardiacInputError(e.path, f"the 'Rest series' field: {e.problem}; empty that field to open a "
                                                f"{study.kind} study") from None
            rest_path = self.data.resolve_input(rest)
            # read as the CLI and the Logic read it (a folder's rest series, by its role)
            rest_options = {}
            if rest_aif:
                rest_options["aif"] = self.data.resolve_input(rest_aif)
            if rest_labels:
                # the CLI's --rest-labels: a rest mask given there (or saved by a run) could not be
                # given here, and the page's MPR differed from theirs (probe 93)
                rest_options["labels"] = self.data.resolve_input(rest_labels)
                rest_options["label_convention"] = label_convention or "acdc"
            if rest_dt not in (None, ""):
                # its own: stress and rest are two acquisitions at two heart rates
                rest_options["dt"] = _frame_interval(rest_dt, "the 'Rest frame interval (s)' field")
            try:
                rest_study = load_rest_series(rest_path, **rest_options)
            except CardiacInputError as e:
                raise CardiacInputError(self.data.shown(e.path), "the rest series: " + self.page_text(e.problem, rest=True)) from None
            # another patient's, or the stress series itself: refused here, while the open study
            # and its results still stand (adopt closed it first, then refused the rest)
            check_rest_pairing(study, rest, rest_study)
        return study, self.data.relative(path), options.get("aif"), rest_study

    def page_text(self, text, rest=False):
        """A reader's message in the page's terms (``in_page_terms``) with the data folder's
        absolute paths shown relative to it, as the page names files (probe 68)."""
        return self.relative_paths(in_page_terms(text, rest))

    def relative_paths(self, text):
        """``text`` with the data folder's absolute paths shown relative to it."""
        root = re.escape(str(self.data.root))
        # the root itself, not a sibling that starts alike (/data2)
        return re.sub(root + r"(?![\w.-])", ".", re.sub(root + re.escape(os.sep), "", text))

    def page_warnings(self, warnings):
        """Warnings as the page shows them: in its terms (``warnings_in_page_terms``) and with the
        data folder's paths relative to it, as its errors name files (a reader's warning showed the
        server's absolute path; probe 98)."""
        return [self.relative_paths(w) for w in warnings_in_page_terms(warnings)]

    def open_sample(self, sample_id):
        """One of ``SAMPLES`` (shipped with the extension; read from the package, not the data folder)."""
        return self.adopt(self.read_sample(sample_id))

    def read_sample(self, sample_id):
        """The reading half of ``open_sample`` (no scene node): the phantoms are written once
        into the sample folder, as the Logic's ``loadSamplePhantom`` does, then read."""
        if sample_id not in SAMPLES:
            raise CardiacInputError(str(sample_id), f"unknown sample; choose one of {', '.join(SAMPLES)}")
        from ..readers import load_study

        source = f"sample: {SAMPLES[sample_id]}"
        if sample_id == "sunnybrook":
            return load_study(SUNNYBROOK / "dicom", labels=SUNNYBROOK / "contours"), source, None, None
        import json

        from ..phantoms.phantom import PHANTOM_FILES, write_phantom

        kind = CINE if sample_id == "phantom-cine" else PERFUSION
        folder = self.sample_folder / sample_id
        names = PHANTOM_FILES[kind]
        if not all((folder / n).is_file() for n in names):
            write_phantom(kind, folder, seed=0, force=True)
        if kind == PERFUSION:
            dt = json.loads((folder / "truth.json").read_text())["dt_s"]
            aif = folder / "aif.csv"
            return load_study(folder / names[0], kind=PERFUSION, labels=folder / names[1], aif=aif, dt=dt), source, aif, None
        return load_study(folder / names[0], kind=CINE, labels=folder / names[1]), source, None, None

    def adopt(self, loaded):
        """Make a study read by ``read_path``/``read_sample`` the current one (scene nodes: the
        server's own thread). The previous study's nodes go once the new one is in the scene;
        until then a refusal leaves the previous study open, with its results."""
        study, source, aif, rest = loaded
        # one step: a study the scene refused (or its rest series) had closed the open one and
        # its results first, and the page was left with neither (probe 103). Forgotten first and
        # put back whole, not setStudy first with the open study standing: setStudy then lets its
        # outputs go (a LeftAnalysis record on its table, left there when the rest is refused) and
        # keeps its model and timing; and setStudy's own undo of a half-added sequence leaves the
        # proxy volume its browser makes again as the proxy is removed
        before = self._open_state()
        doomed = self._forget_study()
        try:
            self.logic.setStudy(study, aifPath=str(aif) if isinstance(aif, Path) else "")
            self.logic.setRestStudy(rest)
        except BaseException:
            self._put_back(before)
            raise
        self._remove_nodes(doomed)
        self._opened(source + (f" with the rest series {self._shown_path(rest.source or rest.name)}" if rest is not None else ""))
        return study

    def _shown_path(self, path):
        """A file as the page shows it: relative to the data folder when inside it."""
        try:
            return self.data.relative(path)
        except (ValueError, OSError):
            return str(path)

    def _opened(self, source):
        st = self.study
        self.source = source
        if st.kind == PERFUSION:
            from ..report import peak_enhancement_frame as _peak_frame

            self.frame = _peak_frame(st)       # the enhanced myocardium, not the dark first frame
        else:
            self.frame = int(st.ed_frame) if st.ed_frame is not None else 0
        self.slice = st.n_slices // 2

    # ------------------------------------------------------------------------ models
    def model_choices(self):
        """[{'title', 'value', 'summary'}] for the selector: installed networks for the study's
        kind, then the labels that came with the study (when it has some)."""
        st = self.study
        task = st.kind if st is not None else None
        choices = []
        for card in self.logic.availableModels(task):
            title = card.get("title") or card["name"]
            choices.append({"title": f"{card['name']}: {title}" + (" [default]" if card.get("default") else ""),
                            "value": card["name"], "summary": card.get("summary", "")})
        if st is not None and st.labels:
            choices.append({"title": "Labels that came with the study (no network)", "value": LABELS_CHOICE,
                            "summary": f"label maps of frames {', '.join(str(t) for t in sorted(st.labels))}"})
        return choices

    def default_choice(self):
        """The labels that came with the study when it has some (the user gave them, or a
        sample ships them), else the default network, else the first one; None if nothing."""
        choices = self.model_choices()
        if not choices:
            return None
        values = [c["value"] for c in choices]
        if LABELS_CHOICE in values:
            return LABELS_CHOICE
        for c in choices:
            if "[default]" in c["title"]:
                return c["value"]
        return values[0]

    # ------------------------------------------------------------------------ running
    def density(self):
        """Myocardial density (g/mL) from the Logic's parameter node (read it on the main thread)."""
        return self.logic.densityParameter()

    def compute(self, model=None, progress=None, density=None):
        """Segment (a network, or the study's labels with ``LABELS_CHOICE``) and measure, through
        the Logic's public compute path (the CLI's pipeline). With ``density`` given it touches no
        MRML node: safe in a worker thread. Raises ``CancelledError`` on cancel."""
        study = self.require_study()
        use_labels = model == LABELS_CHOICE
        if use_labels and not study.labels:
            raise CardiacInputError(study.source or study.name, "no label maps came with this study: choose a network")
        analysis = self.logic.computeAnalysis(None if use_labels else (model or None), frames="ed_es",
                                              useExistingLabels=use_labels, progress=progress,
                                              density=density or self.density())
        return RunResult(analysis, analysis.model_info, dict(analysis.timing_s))

    def start(self, model=None, density=None):
        """A network run in a background process (the Logic's ``startAnalysis``, as the Slicer
        module runs it): Cancel kills it at once. In a worker thread a cancel was heard only
        between frames: a γ-Net frame computed on for 30-45 s after Cancel, Run disabled all that
        time (probe 75). Call on the server's thread (it reads the parameter node); poll the job,
        then ``result_of`` its finished analysis."""
        self.require_study()
        return self.logic.startAnalysis(model or None, frames="ed_es", useExistingLabels=False,
                                        density=density or self.density())

    @staticmethod
    def result_of(job):
        """The RunResult of a finished background job (raises its error if it failed)."""
        analysis = job.result()
        return RunResult(analysis, analysis.model_info, dict(analysis.timing_s))

    def apply(self, result, revert=False):
        """Make a computed result the current one: segmentations, handles and table nodes
        (``revert``: the run's own segmentation back, as asked)."""
        a = self.logic.applyAnalysis(result.analysis, revert=revert)
        if a.kind == CINE and a.cine:
            self.frame = int(a.cine["ed_frame"])
        self._restore_placed(keep_moved=False)
        return a

    def run(self, model=None, progress=None):
        """``compute`` + ``apply`` in one go (tests, scripts)."""
        return self.apply(self.compute(model, progress))

    # --------------------------------------------------------------------- navigation
    def set_frame(self, t):
        """Show frame t (0-based; one past either end shows the end)."""
        st = self.require_study()
        self.frame = _index(t, st.n_frames, "frame", "navigation", clamp=True)
        return self.frame

    def set_slice(self, k):
        """Show slice k (one past either end shows the end)."""
        st = self.require_study()
        self.slice = _index(k, st.n_slices, "slice", "navigation", clamp=True)
        return self.slice

    def segmentation_nodes(self):
        """{frame: segmentation node} of the analysis (ED and ES for cine)."""
        out = {}
        for name in ("outputSegmentationID", "outputSegmentationESID"):
            node = self.logic.getNodeParameter(name)
            if node is not None and node.GetAttribute(FRAME_ATTRIBUTE) not in (None, ""):
                out[int(node.GetAttribute(FRAME_ATTRIBUTE))] = node
        return out

    def segmentation_for_frame(self, t=None):
        """The segmentation shown with frame t: that frame's (cine ED/ES), or for perfusion the
        one mask of the (registered) series on every frame."""
        nodes = self.segmentation_nodes()
        a = self.analysis
        if a is not None and a.kind == PERFUSION:
            return nodes.get(a.reference_frame)
        return nodes.get(self.frame if t is None else int(t))

    def edit_frame(self):
        """The frame an edit applies to: the one on screen when it has a segmentation (ED, ES),
        else the reference frame (ED for cine)."""
        a = self.require_analysis()
        if a.kind == PERFUSION:
            return a.reference_frame
        return self.frame if self.frame in self.segmentation_nodes() else a.reference_frame

    def _frame_to_edit(self, frame):
        """``frame`` as given to an edit (None: ``edit_frame``), one with a segmentation."""
        a = self.require_analysis()
        if frame is None:
            return self.edit_frame()
        frame = _index(frame, a.study.n_frames, "frame", "edit")
        if frame not in a.labels:
            segmented = ", ".join(str(t) for t in sorted(a.labels))
            raise CardiacInputError("edit", f"frame {frame} (frame {frame + 1} as the page counts them) has no segmentation "
                                            f"to edit: the segmented frames are {segmented}")
        return frame

    # ------------------------------------------------------------------- insertion handles
    def handle_angles(self, k=None):
        """{'anterior': deg, 'inferior': deg} of slice k about its LV centre (image x right,
        y down, in mm), or None when the slice has no sectors."""
        a = self.analysis
        k = self.slice if k is None else int(k)
        if a is None or a.sectors is None or k not in a.sectors.slices:
            return None
        s = a.sectors.slices[k]
        out = {}
        for side, pt in (("anterior", s.ant), ("inferior", s.inf)):
            out[side] = math.degrees(math.atan2((pt[1] - s.cy) * a.sectors.sy, (pt[0] - s.cx) * a.sectors.sx))
        return out

    def markups_node(self):
        return self.logic.getNodeParameter("markupsID")

    def rotate_handle(self, k, side, degrees):
        """Turn the anterior/inferior handle of slice k about the LV centre by ``degrees`` (same
        radius): the handle node moves, then the same update as a drag. Returns changed slices."""
        a = self.require_analysis()
        if side not in SIDES:
            raise CardiacInputError("insertion point", f"side must be one of {SIDES}")
        k = _index(k, a.study.n_slices, "slice", "insertion point")
        if a.sectors is None or k not in a.sectors.slices:
            raise CardiacInputError("insertion point", f"slice {k} has no RV insertion handles (slices with sectors: {sorted(a.sectors.slices) if a.sectors else 'none'})")
        try:
            turn = float(degrees)
        except (TypeError, ValueError):
            turn = math.nan
        if not math.isfinite(turn):
            # NaN reached the sectors and the page's angles ("math domain error" for inf), the
            # handle not put back and results.json left with the old point (probe 103)
            raise CardiacInputError("insertion point", f"the {side} handle of slice {k} cannot turn by {degrees!r} degrees: "
                                                       "give a finite angle")
        s = a.sectors.slices[k]
        pt = s.ant if side == "anterior" else s.inf
        sx, sy = a.sectors.sx, a.sectors.sy
        dx, dy = (pt[0] - s.cx) * sx, (pt[1] - s.cy) * sy
        c, si = math.cos(math.radians(turn)), math.sin(math.radians(turn))
        i = s.cx + (c * dx - si * dy) / sx
        j = s.cy + (si * dx + c * dy) / sy
        ras = a.study.ijk_to_ras_points([(i, j, k)])[0]
        node = self.markups_node()
        index = _control_point(node, k, side) if node is not None else None
        t0 = time.perf_counter()
        if index is None:                     # no node shows this point: move it in the engine only
            changed = a.move_insertion_point(k, side, list(ras))
            self.logic._refreshTable()
        else:
            node.SetNthControlPointPosition(index, *map(float, ras))
            changed = self.logic.onInsertionPointMoved(node, index)
        self.last_update_s = time.perf_counter() - t0
        return changed

    def can_place_handles(self):
        """True when the analysis has no AHA sectors (no RV labelled, e.g. Sunnybrook's LV-only
        contours) but has slices where insertion points could be placed by hand."""
        a = self.analysis
        return a is not None and a.sectors is None and bool(a.levels)

    def place_insertion_points(self, k, anterior_ras, inferior_ras):
        """Two points placed by hand on slice k (anterior, then inferior RV insertion): the AHA
        sectors, bullseye and handles follow; kept when an edit re-measures the labels (which,
        with no RV, finds no points of its own). Returns the slices with sectors."""
        a = self.require_analysis()
        if a.sectors is not None and self._placed is None:
            raise CardiacInputError("insertion point", "this study has RV insertion points already: drag the handles instead")
        t0 = time.perf_counter()
        slices = self.logic.placeInsertionPoints(int(k), anterior_ras, inferior_ras)
        self._placed = (int(k), [float(v) for v in anterior_ras], [float(v) for v in inferior_ras])
        self.last_update_s = time.perf_counter() - t0
        return slices

    def _restore_placed(self, keep_moved=True):
        """Re-measured labels with no RV have no insertion points: put the hand-placed ones back."""
        a = self.analysis
        if self._placed is not None and a is not None and a.sectors is None and self._placed[0] in a.levels:
            self.logic.placeInsertionPoints(*self._placed, keepMoved=keep_moved)

    def handles_moved(self, node=None):
        """After a drag in a view: re-bin every slice whose handle differs from the analysis."""
        if self.analysis is None:
            return []
        t0 = time.perf_counter()
        changed = self.logic.onInsertionPointMoved(node or self.markups_node())
        self.last_update_s = time.perf_counter() - t0
        return changed

    # --------------------------------------------------------------------------- edits
    def morph(self, segment, step, k=None, frame=None):
        """Grow (step > 0) or shrink (step < 0) one structure by |step| pixels on slice k of a
        labelled frame: the LV blood pool grows into / gives back myocardium, the myocardium
        and RV grow into / give back background. Returns the number of pixels changed."""
        from scipy import ndimage

        a = self.require_analysis()
        if segment not in EDIT_SEGMENTS:
            raise CardiacInputError("edit", f"structure must be one of {', '.join(EDIT_SEGMENTS)}")
        frame = self._frame_to_edit(frame)
        k = self.slice if k is None else _index(k, a.study.n_slices, "slice", "edit")
        lab = a.labels[frame].copy()
        sl = lab[k]
        value = EDIT_SEGMENTS[segment]
        n = abs(int(step)) or 1
        if segment == "myo":      # the epicardial border moves
            region = (sl == LV) | (sl == MYO)
        else:
            region = sl == value
        if not region.any():
            # frames counted from 1, as the page shows them ("Frame 8 / 20" was refused as frame 7)
            raise CardiacInputError("edit", f"slice {k} of frame {frame + 1} has no {SEGMENT_TITLES[segment]} to "
                                            f"{'grow' if step > 0 else 'shrink'}")
        if step > 0:
            grown = ndimage.binary_dilation(region, iterations=n)
            into = (sl == MYO) if segment == "lv" else (sl == 0)
            changed = grown & ~region & into
            sl[changed] = value
        else:
            kept = ndimage.binary_erosion(region, iterations=n)
            changed = region & ~kept
            if segment == "myo":
                changed &= sl == MYO
            sl[changed] = MYO if segment == "lv" else 0
        count = int(changed.sum())
        if count:
            self.set_labels(frame, lab)
        return count

    def paint(self, segment, k, row, col, radius_px=3, erase=False, frame=None):
        """A disc brush at (row, col) of slice k: paint ``segment`` (over anything) or erase it
        (to background). Returns the number of pixels changed."""
        a = self.require_analysis()
        if segment not in EDIT_SEGMENTS:
            raise CardiacInputError("edit", f"structure must be one of {', '.join(EDIT_SEGMENTS)}")
        frame = self._frame_to_edit(frame)
        k = _index(k, a.study.n_slices, "slice", "edit")
        lab = a.labels[frame].copy()
        rr, cc = np.ogrid[:lab.shape[1], :lab.shape[2]]
        disc = (rr - float(row)) ** 2 + (cc - float(col)) ** 2 <= float(radius_px) ** 2
        value = EDIT_SEGMENTS[segment]
        sl = lab[k]
        target = disc & (sl == value) if erase else disc & (sl != value)
        sl[target] = 0 if erase else value
        count = int(target.sum())
        if count:
            self.set_labels(frame, lab)
        return count

    def set_labels(self, frame, label_map):
        """Replace the label map of a frame: its segmentation node, then the same update as an
        edit in the Segment Editor."""
        a = self.require_analysis()
        node = self.segmentation_for_frame(frame)
        t0 = time.perf_counter()
        if node is None:
            a.set_labels(int(frame), label_map)
            self.logic._refreshTable()
        else:
            fill_segmentation(node, np.asarray(label_map, np.uint8), a.study.ijk_to_ras)
            try:
                self.logic.onSegmentationEdited(node, int(frame))
            except CardiacInputError as e:
                # the page's strokes are single edits: one that cannot be measured (the last of the
                # ED blood pool erased) is undone at once, so the page shows what is measured
                fill_segmentation(node, a.labels[int(frame)], a.study.ijk_to_ras)
                self.logic.unmeasuredEdits.pop(node.GetID(), None)
                raise CardiacInputError(e.path, f"{e.problem}; the stroke was undone") from None
        self.last_update_s = time.perf_counter() - t0
        return a

    def segmentation_edited(self, node):
        """The Segment Editor (paint/erase in a view) changed ``node``: measure it again."""
        if self.analysis is None or node is None:
            return None
        frame = self.edit_frame()
        before = self.analysis.labels[frame].copy() if frame in self.analysis.labels else None
        t0 = time.perf_counter()
        self.logic.onSegmentationEdited(node)   # hand-placed insertion points stay (Analysis.set_labels)
        self.last_update_s = time.perf_counter() - t0
        after = self.analysis.labels.get(frame)
        # How many pixels the stroke changed: "Erased" must not be said when nothing was.
        self.last_edit_pixels = None if before is None or after is None else int((before != after).sum())
        return self.analysis

    def revert(self):
        """Back to the network's (or the loaded) segmentation; moved handles are forgotten."""
        a = self.require_analysis()
        if not self.logic.networkLabels:
            return a
        result = RunResult(_fresh_analysis(a, self.logic.networkLabels), self.logic.modelInfo, self.logic.timing)
        net = self.logic.networkLabels
        self.apply(result, revert=True)
        self.logic.networkLabels = net
        return self.analysis

    # ------------------------------------------------------------- unsaved corrections
    def _corrections(self):
        """What was corrected by hand in the current analysis, as a value to compare: the label
        maps of the edited frames (by content), the rest series' edited mask, the handles dragged
        and the points placed by hand, and an edit not measured; None when there is none."""
        a = self.analysis
        if a is None:
            return None

        def frames(an):
            return tuple((int(t), hashlib.sha1(np.ascontiguousarray(an.labels[t]).tobytes()).hexdigest())
                         for t in sorted(an.edited_frames) if t in an.labels)

        def rounded(ras):
            return tuple(round(float(v), 4) for v in ras)

        # (Analysis keeps the handles the user moved and the points placed by hand as _user_points
        # and _placed; the Logic reads them so too, to say what a run replaced)
        handles = tuple(sorted((int(k), side, rounded(ras)) for (k, side), ras in a._user_points.items()))
        placed = None if a._placed is None else (int(a._placed[0]), rounded(a._placed[1]), rounded(a._placed[2]))
        rest = frames(a.rest) if a.rest is not None else ()
        found = (frames(a), rest, handles, placed, tuple(sorted(self.logic.unmeasuredEdits)))
        return found if any(found) else None

    def unsaved_edits(self):
        """The corrections made by hand since the last Save (or since the run when nothing was
        saved), as the page names them; [] when there is none: opening another study (or a
        sample) or running again drops them, so the page asks first. Edits undone back to what
        was saved (or to the run's segmentation) are none."""
        found = self._corrections()
        if found is None or found == self._saved_corrections:
            return []
        a = self.analysis
        stress, rest, handles, placed, unmeasured = found
        said = []
        if stress:
            if a.kind == CINE:
                tags = {t: n for t, n in (((a.cine or {}).get("ed_frame"), "ED"), ((a.cine or {}).get("es_frame"), "ES"))
                        if t is not None}
                # frames counted from 1, as the page shows them
                said.append("the contours of frame(s) " + ", ".join(f"{t + 1}" + (f" ({tags[t]})" if t in tags else "")
                                                                     for t, _ in stress))
            else:
                said.append("the myocardial mask")
        if rest:
            said.append("the rest series' mask")
        dragged = sorted({k for k, side, _ in handles if placed is None or (k, side) != (placed[0], "anterior")})
        if placed is not None:
            said.append(f"the RV insertion points placed on slice {placed[0]}")
        if dragged:
            said.append(f"the RV insertion handles moved on slice(s) {', '.join(str(k) for k in dragged)}")
        if unmeasured:
            said.append("an edit that could not be measured")
        return said

    # ------------------------------------------------------------------------- outputs
    def table(self):
        """[{'key', 'measure', 'value', 'unit', 'text'}]: the results table as the page shows it,
        each value rounded to its precision in ``measures.MEASURES``."""
        from ..measures import format_value

        a = self.analysis
        if a is None:
            return []
        rows = []
        for r in a.table_rows():
            if r["key"] in PEOPLE_FRAME_ROWS and r.get("value") is not None:
                # Frame numbers for people count from 1; results.json and results.csv keep the
                # engine's 0-based frame index (documented there).
                r = dict(r, measure=PEOPLE_FRAME_ROWS[r["key"]], value=int(r["value"]) + 1)
            rows.append({"key": r["key"], "measure": r["measure"],
                         "value": None if r.get("value") is None else float(r["value"]),
                         "unit": r.get("unit") or "", "text": format_value(r)})
        return rows

    @property
    def bullseye_measure(self):
        """What a perfusion bullseye shows: 'mbf' or 'relative_upslope' (the Logic's parameter
        node keeps it, so it holds for every study of this session)."""
        return self.logic.getParameter("bullseyeMeasure") or "mbf"

    def set_bullseye_measure(self, measure):
        if measure not in BULLSEYE_MEASURES:
            raise CardiacInputError("bullseye", f"unknown measure {measure!r}; choose one of {', '.join(BULLSEYE_MEASURES)}")
        self.logic.setBullseyeMeasure(measure)
        return measure

    def bullseye_png(self, size_px=300, fit=False):
        """The AHA bullseye of the current segment values, PNG bytes (the engine's one renderer):
        on the measure's fixed clinical scale, or fitted to the data with ``fit``."""
        from ..report import analysis_bullseye_png

        return analysis_bullseye_png(self.require_analysis(), size_px=size_px, fit=fit)

    def default_output(self):
        """cardiacaiseg-results/<the study's place in the data folder>: two studies of one name
        (visit1/patient001, visit2/patient001) had one folder, the second's save replacing the
        first's results (probe 98). A study from outside (a sample) takes its name."""
        st = self.study
        place = self.data.shown(st.source) if st is not None and st.source else None
        label = str(place) if place and not Path(str(place)).is_absolute() else (st.name if st else "study")
        label = image_stem(label)
        if label.strip("./") == "":   # the data folder itself: "." was the shared results folder
            label = st.name if st is not None and st.name else "study"
        name = "".join(ch if ch.isalnum() or ch in "-_." else "_" for ch in label.strip("/").replace("/", "_")) or "study"
        return f"cardiacaiseg-results/{name}"

    def save(self, out_text, force=False, patient=None):
        """The outputs of ``cardiacaiseg analyze`` (results.json/csv, segmentation.seg.nrrd,
        report.png, scene.mrb) into a folder of the data folder, and the corrected
        segmentation as ground truth in ``ground_truth/`` (ACDC layout for cine, a label map
        in the ACDC convention for perfusion). Returns the written paths relative to the data
        folder."""
        from ..outputs import check_outputs

        a = self.require_analysis()
        out = self.data.resolve_output(out_text or self.default_output())
        try:
            check_outputs(out, force, replace_hint="tick Overwrite to replace them")   # the page's checkbox
        except CardiacInputError as e:   # the engine speaks to the command line (--out); the page has a folder field
            raise CardiacInputError(self.data.shown(e.path), e.problem.replace("another --out", "another output folder")) from None
        except OutputExistsError as e:   # named with the server's absolute path (probe 68)
            raise OutputExistsError(self.page_text(str(e))) from None
        gt_root = out / "ground_truth"
        if a.kind == CINE:
            patient = self.logic.groundTruthName(patient)   # a bad name refused before any output is written
            gt_target = gt_root / patient
        else:
            gt_target = gt_root / "perfusion_labels_gt.nii.gz"
        # every refusal before the first file is written: a file where a folder goes (or the
        # reverse) stopped the save half-way, results written and the ground truth not
        for folder in (gt_root, gt_target) if a.kind == CINE else (gt_root,):
            if folder.exists() and not folder.is_dir():
                raise CardiacInputError(self.data.relative(folder), "is a file where the ground-truth folder goes; move it "
                                                                    "away or choose another output folder")
        if a.kind != CINE and gt_target.is_dir():
            raise CardiacInputError(self.data.relative(gt_target), "is a folder where the ground-truth label map goes; move "
                                                                   "it away or choose another output folder")
        if gt_target.exists() and not force and (a.kind != CINE or any(gt_target.iterdir())):
            raise CardiacInputError(self.data.relative(gt_target), "ground truth exists; tick Overwrite to replace it")
        paths = dict(self.logic.exportResults(out, force=force))
        if a.kind == CINE:
            folder = self.logic.saveGroundTruth(gt_root, patient, force=True)
            for f in sorted(folder.iterdir()):
                paths[f"ground_truth/{folder.name}/{f.name}"] = f
        else:
            gt_root.mkdir(parents=True, exist_ok=True)
            _write_label_nifti(gt_target, a.labels[a.reference_frame], a.study.ijk_to_ras)
            paths[f"ground_truth/{gt_target.name}"] = gt_target
        self._saved_corrections = self._corrections()   # written: nothing of them is lost by going on
        return [self.data.relative(p) for _, p in sorted(paths.items())]

    def recovery_folder(self, out_text=None, when=None):
        """Where ``save_unsaved_edits`` writes: a new folder beside the output folder (the page's
        field, else ``default_output``), ``<output folder>-unsaved-<YYYYMMDD-HHMMSS>`` with
        ``-2``, ``-3``... when that exists, so that no saved result is ever replaced. The
        default output folder's name when the field names no folder inside the data folder
        (empty, outside it, or the data folder itself). Relative to the data folder."""
        base = None
        if str(out_text or "").strip():
            try:
                base = self.data.resolve_output(out_text)
            except CardiacInputError:
                base = None   # a folder half-typed or refused must not cost the edits: the default place
        if base is None or base == self.data.root:
            base = self.data.resolve_output(self.default_output())
        stamp = time.strftime("%Y%m%d-%H%M%S", time.localtime(when))
        folder = base.with_name(f"{base.name}-unsaved-{stamp}")
        n = 1
        while folder.exists():
            n += 1
            folder = base.with_name(f"{base.name}-unsaved-{stamp}-{n}")
        return self.data.relative(folder)

    def save_unsaved_edits(self, out_text=None, patient=None, folder=None):
        """The server is stopping (Ctrl+C, SIGTERM, ``--timeout``) with corrections not saved:
        the outputs of Save, the ground truth with them, into ``recovery_folder`` - stopping had
        dropped them without a word. Returns that folder (relative to the data folder), or None
        when nothing was unsaved. A ground-truth name the page's field would refuse gives the
        default one: a name typed half-way must not cost the edits. ``folder``: the
        ``recovery_folder`` already named to the user."""
        if not self.unsaved_edits():
            return None
        if self.analysis.kind == CINE and patient:
            try:
                self.logic.groundTruthName(patient)
            except CardiacInputError:
                patient = None
        folder = folder or self.recovery_folder(out_text)
        self.save(folder, force=False, patient=patient)
        return folder


PEOPLE_FRAME_ROWS = {"ed_frame": "ED frame", "es_frame": "ES frame"}


def _index(value, count, what, action, clamp=False):
    """``value`` as the 0-based index of one of the study's ``count`` slices or frames (``what``),
    for the Session's calls; a CardiacInputError naming ``action`` and the valid range otherwise
    (-1 edited the last slice, Python's negative indexing; one past the end gave an IndexError, and
    NaN or text a ValueError traceback; probe 103). ``clamp``: a number past either end is that
    end, as navigation has always taken it."""
    try:
        number = float(value)
    except (TypeError, ValueError):
        number = math.nan
    if clamp and math.isfinite(number):
        return min(max(int(number), 0), count - 1)
    if number.is_integer() and 0 <= number < count:
        return int(number)
    counted = f" (frames 1 to {count} as the page counts them)" if what == "frame" else ""
    raise CardiacInputError(action, f"{what} {value!r} is not one of this study's {count} {what}s: give a whole number "
                                    f"from 0 to {count - 1}{counted}")


def _browsers_and_proxies(scene, sequence):
    """The browsers that play ``sequence`` and the proxy volume each shows it in."""
    found = []
    for n in range(scene.GetNumberOfNodesByClass("vtkMRMLSequenceBrowserNode")):
        browser = scene.GetNthNodeByClass(n, "vtkMRMLSequenceBrowserNode")
        if browser.IsSynchronizedSequenceNode(sequence, True):
            found += [browser, browser.GetProxyNode(sequence)]
    return found


def _control_point(node, k, side):
    want = sc.point_label(k, side)
    for n in range(node.GetNumberOfControlPoints()):
        if (node.GetNthControlPointLabel(n) or "").strip().lower() == want.lower():
            return n
    return None


def _fresh_analysis(a, labels):
    from ..analysis import Analysis

    fresh = Analysis(a.study, {t: m.copy() for t, m in labels.items()}, model_card=a.model_card,
                     density=a.density, rest=a.rest, sector_method=a.sector_method)
    fresh.bullseye_measure, fresh.model_info = a.bullseye_measure, a.model_info
    # the notes of the run that made the labels (a revert's are the network's again: its mask notes
    # hold) and the network's ED/ES volumes the ED/ES check reads; a revert dropped them
    fresh.keep_notes_of(a)
    fresh.ed_es_network_lv_ml = getattr(a, "ed_es_network_lv_ml", None)
    fresh.run()
    fresh.timing_s = dict(a.timing_s)
    return fresh


def _write_label_nifti(path, label_map, ijk_to_ras):
    """(S, R, C) internal labels -> a 3D NIfTI in the ACDC convention, written atomically."""
    import nibabel as nib

    data = to_convention(np.asarray(label_map), "acdc").transpose(2, 1, 0).astype(np.uint8)
    with sc.atomic_output(path, overwrite=True) as tmp:
        nib.save(nib.Nifti1Image(data, np.asarray(ijk_to_ras, float)), tmp)
    return path


def free_port(host="127.0.0.1"):
    """A TCP port nothing listens on right now (for tests and ``--port 0``)."""
    import socket

    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((host, 0))
        return s.getsockname()[1]


def env_rendering():
    """Offscreen rendering defaults (EGL on Mesa) unless the user set their own."""
    os.environ.setdefault("VTK_DEFAULT_OPENGL_WINDOW", "vtkEGLRenderWindow")


_PAGE_FIELDS = {"--dt": "the 'Frame interval (s)' field", "--aif": "the 'AIF file' field", "--labels": "the 'Labels' field",
                "--label-convention": "the 'Label values' box",
                "--kind": "the 'Series kind' field", "--series": "a file of that series in the 'Study' field",
                "--rest-series": "a file of that series in the 'Rest series' field", "--rest-labels": "the 'Rest labels' field"}
_REST_PAGE_FIELDS = {"--dt": "the 'Rest frame interval (s)' field", "--aif": "the 'Rest AIF file' field",
                     "--labels": "the 'Rest labels' field",
                     "--series": "a file of that series in the 'Rest series' field"}


def in_page_terms(text, rest=False):
    """A reader's message, with the CLI flags it names put as the page's fields ("give --dt" is
    "give the 'Frame interval (s)' field"; for the rest series its own fields)."""
    from ..errors import in_front_end_terms

    return in_front_end_terms(text, {**_PAGE_FIELDS, **(_REST_PAGE_FIELDS if rest else {})}, "the 'Study' field",
                              "the 'Rest series' field", rest=rest, kind_auto="'from the data'")


def warnings_in_page_terms(warnings):
    """An analysis' warnings as the page words them: the CLI flags the readers name ("give
    --dt") as the page's fields, and the rest series' (``REST_WARNING_PREFIX``) as its own fields."""
    from ..analysis import REST_WARNING_PREFIX as rest

    return [rest + in_page_terms(w[len(rest):], rest=True) if w.startswith(rest) else in_page_terms(w) for w in warnings]


def _frame_interval(text, what):
    """Seconds per frame typed into the page, as a positive number (CardiacInputError naming it)."""
    try:
        value = float(text)
    except (TypeError, ValueError):
        raise CardiacInputError(str(text), f"{what} must be a number of seconds") from None
    if not value > 0:
        raise CardiacInputError(str(text), f"{what} must be positive")
    return value
