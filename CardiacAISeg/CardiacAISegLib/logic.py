"""CardiacAISegLogic: every action of the Slicer module as a documented call, with or without Qt.

The Widget in ``CardiacAISeg.py`` only connects widgets to these methods; tests and scripts use
the same calls on a headless slicer-core scene (``scene.new_scene()``). The Logic owns the live
``Analysis`` and the MRML nodes that show it: input volume/sequence, one segmentation per
labelled key frame (ED and ES for cine, the mask frame for perfusion), the RV insertion markups
and the results table. Edits come back through ``onInsertionPointMoved`` (a dragged handle) and
``onSegmentationEdited`` (the Segment Editor); both refill the *same* table node, so views and
observers the module attached stay valid.

State that must survive a scene save lives in the parameter node (strings, and node references
for the ``...ID`` parameters, so IDs renamed on scene import still resolve).
"""
import contextlib
import json
import os
import re
import shutil
import tempfile
import time
from pathlib import Path

import numpy as np

from . import scene as sc
from .errors import CardiacInputError, OutputExistsError, in_front_end_terms
from .labels import FRAME_COUNT_TAG, FRAME_TAG, MYO, to_convention
from .progress import as_progress
from .readers.volume import axis_aligned
from .study import CINE, PERFUSION, Study, check_rest_pairing

try:  # Only the Slicer application has ScriptedLoadableModule (it needs Qt).
    from slicer.ScriptedLoadableModule import ScriptedLoadableModuleLogic as _LogicBase
except ImportError:
    class _LogicBase:
        """Stand-in base outside the Slicer application: just the module name."""

        def __init__(self, parent=None):
            self.moduleName = type(self).__name__[:-len("Logic")]

MODULE_NAME = "CardiacAISeg"
# on output segmentations: the frame and how many frames the series had (the same names as the
# segment tags that carry them into a saved .seg.nrrd)
FRAME_ATTRIBUTE = FRAME_TAG
FRAME_COUNT_ATTRIBUTE = FRAME_COUNT_TAG
INPUT_ATTRIBUTE = "CardiacAISeg.Input"     # on output nodes: the input node they were made for
SOURCE_ATTRIBUTE = "CardiacAISeg.SourceNode"   # on a sequence of the analysed frames: the node it was made from
REST_OF_ATTRIBUTE = "CardiacAISeg.RestOf"       # on a rest series the Logic added: the stress input it was paired with
PLACED_ON_SLICE_ATTRIBUTE = "CardiacAISeg.PlacedOnSlice"   # on the markups: insertion points placed by hand there
# on an input whose sequence has no times: the frame interval (s) it was last read with
FRAME_TIME_ATTRIBUTE = "CardiacAISeg.FrameTimeS"
# on a results table let go when another input was picked: its analysis' outputs and parameters (JSON)
LEFT_ANALYSIS_ATTRIBUTE = "CardiacAISeg.LeftAnalysis"
# On the input node of a saved scene: what the images alone cannot say again, so the scene
# reopens as the same analysis (kind, the AIF curve, image units, ED/ES from the reader).
STUDY_ATTRIBUTES = {"kind": "CardiacAISeg.Kind", "aif": "CardiacAISeg.AIF", "units": "CardiacAISeg.Units",
                    "hematocrit": "CardiacAISeg.Hematocrit", "ed_es": "CardiacAISeg.EDES",
                    "orientation_known": "CardiacAISeg.OrientationKnown", "provenance": "CardiacAISeg.Provenance"}
# What a reader found in the files that measures and QC read again (JSON on the input node): the
# DICOM trigger delays place a 2-frame cine's ED and ES in the cycle (ED_ES_TIMING); a reopened
# scene lost them, passed QC and warned that nothing named the frames (probe 67).
STAMPED_PROVENANCE = ("trigger_times_ms", "slice_positions_mm", "stack_shear_mm", "aif_source", "aif_path", "aif_detection", "aif_warnings",
                      "ed_es_from", "kind_against_data",
                      # the reading's evidence QC judges and its warnings: the file is not read again on
                      # reopening, so a spacing the scanner's field of view contradicts (PIXEL_SPACING_DISAGREES)
                      # reopened as "pass", a lone ED frame as FRAME_PHASE_UNKNOWN, and images left out of
                      # the stack unsaid (probe 96)
                      "reader", "pixel_spacing_check", "voxel_size_check", "frame_phase",
                      # read back from scenes saved before session 46 (QC HEART_NOT_FOUND where their
                      # model info has no record of it); a run now records it in its model info
                      "heart_not_found",
                      "labels_set_to_background", "missing_label_files", "series_description", "series_number",
                      "study_date", "reader_warnings", "bits_over_stored",
                      # the voxel size that evidence was judged on: changed in the scene since
                      # (Volumes module), the flag the file raised is judged again (session 45)
                      "voxel_mm_read", "reconstruction_diameter_mm")
# where the AIF came from, said again by a reopened scene: the stamped curve was read back as an
# 'array' and the dual-sequence AIF's "MBF is approximate" warning was lost (probe 70)
AIF_WARNING_START = "AIF from the dual-sequence AIF series"
OUTPUT_PARAMETERS = ("outputSegmentationID", "outputSegmentationESID", "tableID", "markupsID", "restSegmentationID",
                     "frameLabelsID", "runLabelsID", "restRunLabelsID")
# Parameter name -> default (all strings: a scripted module node stores strings).
PARAMETERS = {
    "inputNodeID": "", "kind": "auto", "modelName": "", "frames": "ed_es", "useExistingLabels": "false",
    "aifPath": "", "frameTimeS": "0", "restNodeID": "", "restAifPath": "", "restFrameTimeS": "0", "density": "1.05",
    "outputSegmentationID": "", "outputSegmentationESID": "", "tableID": "", "markupsID": "", "restSegmentationID": "",
    # a sequence of every labelled frame's label map (a whole cycle segmented): the ED and ES
    # segmentations alone reopened without the volume curve, its ED/ES certainty and the frames
    # an edit keeps (the same ES edit read EF -24 % live, 20 % reopened; probe 67)
    "frameLabelsID": "",
    # the run's own label maps of the frames shown for editing (ED and ES, the perfusion mask) and
    # of the rest mask: a reopened scene compared edits with nothing (an edit undone stayed
    # "corrected by hand", the agreement with the network was refused; probe 78)
    "runLabelsID": "", "restRunLabelsID": "",
    "outputDirectory": "", "groundTruthName": "patient101", "bullseyeMeasure": "mbf",
    # "ED ES" frames an edit kept where they were (a whole cycle labelled); "" = from the volume curve
    "keptEdEs": "",
    # what a reopened scene cannot read off its nodes: the network that drew the contours (JSON)
    # and the frames corrected by hand since, of the series and of its rest series (the rest's run
    # has notes of its own, said with its analysis: a reopened pair lost them)
    "modelInfo": "", "restModelInfo": "", "editedFrames": "", "restEditedFrames": "",
    # the density the shown results were measured with (the "density" box applies at the next
    # run; a reopened scene measured with the box's value, not the results': probe 62)
    "measuredDensity": "",
}
# What an analysis was measured and shown with that lives once in the parameter node: kept with its
# outputs when another input is picked, and put back when its input is picked again (picked again,
# an input came back with the next study's model, edited frames, kept ED/ES and density; probe 99)
ANALYSIS_PARAMETERS = ("modelInfo", "restModelInfo", "editedFrames", "restEditedFrames", "keptEdEs", "measuredDensity", "bullseyeMeasure",
                       "restNodeID", "restAifPath", "restFrameTimeS")
NODE_PARAMETERS = ("inputNodeID", "restNodeID", "outputSegmentationID", "outputSegmentationESID", "tableID", "markupsID",
                   "restSegmentationID", "frameLabelsID", "runLabelsID", "restRunLabelsID")
# Combo boxes show these values in this order (the .ui lists one item per value).
PARAMETER_CHOICES = {"kind": ("auto", CINE, PERFUSION), "frames": ("ed_es", "all"),
                     "bullseyeMeasure": ("mbf", "relative_upslope")}
_ACDC_NAME = re.compile(r"^patient\d+$")
# how a Logic caller replaces existing outputs: the module's check box, or force=True from Python
REPLACE_HINT = "tick 'Replace existing files' (force=True from Python) to replace them"

# What the module calls the settings the readers' messages name as `analyze` flags: a Slicer user
# was told "choose one with --series", "give --aif", "--series 20 --rest EXAM --rest-series 30",
# with no such box in the module (probe 87). Python callers keep the keyword (series= ...).
MODULE_FIELDS = {
    "--dt": "the 'Frame interval' box", "--aif": "the 'AIF file (perfusion)' box", "--kind": "the 'Series kind' box",
    "--series": "a file of that series in the 'Or read a file or folder' box (then Load)",
    "--rest-series": "a file of that series, loaded, in the 'Rest series (MPR)' box",
    "--rest": "the 'Rest series (MPR)' box", "--rest-dt": "the 'Rest frame interval' box",
    "--rest-aif": "the 'Rest AIF file' box", "--density": "the 'Myocardial density' box", "--model": "the 'Model' box",
    "--labels": "a label map loaded as a segmentation and 'Measure the labels that came with the study' (labels= in Python)",
    "--label-convention": "label_convention= in Python (logic.loadStudy)",
    "--force": "'Replace existing files'", "--frames": "the 'Frames' box"}
# the 'Frames' box's choices as it lists them ("--frames all not used": pipeline.frames_unused_on_perfusion)
FRAMES_CHOICE_TEXT = {"all": "'All frames'", "ed_es": "'ED and ES only'"}
_FRAMES_CHOICE = re.compile(r"(?<![\w-])--frames (all|ed_es)\b")
REST_MODULE_FIELDS = {"--dt": "the 'Rest frame interval' box", "--aif": "the 'Rest AIF file' box",
                      "--series": "a file of that series, loaded, in the 'Rest series (MPR)' box"}


def inModuleTerms(text, rest=False):
    """A reader's or the analysis' message in the module's terms (``errors.in_front_end_terms``,
    the web page's wording of the same hints)."""
    text = _FRAMES_CHOICE.sub(lambda m: f"--frames set to {FRAMES_CHOICE_TEXT[m[1]]}", text)
    return in_front_end_terms(text, {**MODULE_FIELDS, **(REST_MODULE_FIELDS if rest else {})},
                              "the 'Or read a file or folder' box (then Load)",
                              "the 'Rest series (MPR)' box (load it first)", keep_python=True, rest=rest,
                              rest_takes_folder=False, kind_auto="'Detect automatically'")


def warningsInModuleTerms(warnings):
    """An analysis' warnings as the module words them; the rest series' with its own boxes."""
    from .analysis import REST_WARNING_PREFIX as rest

    return [rest + inModuleTerms(w[len(rest):], rest=True) if w.startswith(rest) else inModuleTerms(w) for w in warnings]


@contextlib.contextmanager
def _errorsInModuleTerms(rest=False):
    """Re-raise a CardiacInputError with its problem in the module's terms (same class and path)."""
    try:
        yield
    except CardiacInputError as e:
        worded = inModuleTerms(e.problem, rest)
        if worded == e.problem:
            raise
        error = CardiacInputError.__new__(type(e))
        CardiacInputError.__init__(error, e.path, worded)
        raise error.with_traceback(e.__traceback__) from None   # the reader's frames, for a bug report


class CardiacAISegLogic(_LogicBase):
    """Load, segment, measure, correct and export one short-axis study inside an MRML scene."""

    # the widget shows the analysis' warnings in the module's terms
    warningsInModuleTerms = staticmethod(warningsInModuleTerms)

    def __init__(self, context=None):
        _LogicBase.__init__(self)
        self.moduleName = MODULE_NAME
        self.context = context if context is not None else _default_context()
        self.study = None
        self.studyNodes = None
        self.analysis = None
        self.networkLabels = None          # {frame: labels} as the network (or loader) gave them
        self._outputsMeasured = None       # a run measuring the output segmentations again (_withTheCyclesOtherFrames)
        self.restNetworkLabels = None      # the same for the rest series' mask
        self.modelInfo = None
        self.timing = {}
        self.lastUpdateTimeS = None         # duration of the last point move / edit update
        self.restStudy = None
        self._restShownAs = None            # the rest node _showRest added for restStudy (read from a file)
        self.studyAifPath = None            # the aifPath parameter the current study was read with
        # {segmentation node ID: why} for edits that could not be measured: the results still
        # stand for the segmentation before them, so nothing is saved until they are fixed
        self.unmeasuredEdits = {}

    @property
    def scene(self):
        return self.context.scene

    def reset(self):
        """Forget the study and results (the scene is closing); the parameter node stays."""
        self.study = self.studyNodes = self.restStudy = None
        self._forgetAnalysis()

    def _forgetAnalysis(self):
        """Drop everything of the current analysis: ``reset`` and ``setStudy`` both call this, so
        that what one forgets the other cannot keep (reset kept ``_outputsMeasured``, the record
        of a run measuring the output segmentations again, which setStudy dropped). Nothing of a
        previous study's analysis may stay: its network's record (modelInfo) would name that
        network as the maker of labels drawn by hand on the next study, and its rest mask and
        timings are another series'."""
        self.analysis = self.networkLabels = self.restNetworkLabels = self.modelInfo = None
        self.timing, self.lastUpdateTimeS = {}, None
        self._outputsMeasured = None
        self.unmeasuredEdits = {}

    # ------------------------------------------------------------------ parameter node
    def parameterNode(self):
        """The module's singleton vtkMRMLScriptedModuleNode in this scene (created on first use)."""
        node = self.scene.GetSingletonNode(MODULE_NAME, "vtkMRMLScriptedModuleNode")
        if node is None:
            import slicer
            node = slicer.vtkMRMLScriptedModuleNode()
            node.SetSingletonTag(MODULE_NAME)
            node.SetModuleName(MODULE_NAME)
            node.SetName(f"{MODULE_NAME} parameters")
            for name, default in PARAMETERS.items():
                if name not in NODE_PARAMETERS:
                    node.SetParameter(name, default)
            node = self.scene.AddNode(node)
        return node

    getParameterNode = parameterNode  # the name Slicer's template uses

    def getParameter(self, name):
        """A parameter as a string ("" when unset); node parameters give the node's ID."""
        _check_parameter(name)
        node = self.parameterNode()
        if name in NODE_PARAMETERS:
            return node.GetNodeReferenceID(name) or ""
        return node.GetParameter(name) or PARAMETERS[name]

    def setParameter(self, name, value):
        """Set a parameter from a string (a node ID for node parameters; "" clears it)."""
        _check_parameter(name)
        node = self.parameterNode()
        if name in NODE_PARAMETERS:
            value = value.GetID() if hasattr(value, "GetID") else value
            if name == "restNodeID" and (value or None) != node.GetNodeReferenceID(name):
                self._dropMeasuredRest()   # the rest selector emptied or set to another series
            node.SetNodeReferenceID(name, value or None)
        else:
            if name in PARAMETER_CHOICES and str(value) not in PARAMETER_CHOICES[name]:
                raise ValueError(f"{name} must be one of {PARAMETER_CHOICES[name]}, not {value!r}")
            node.SetParameter(name, str(value))

    def getNodeParameter(self, name):
        _check_parameter(name)
        return self.parameterNode().GetNodeReference(name)

    def densityParameter(self, name="density"):
        """The ``density`` parameter (g/mL; 1.05 when empty), checked as the CLI's --density is:
        a value outside the tissue range is refused, never replaced (0 used to become 1.05 and
        2.0 to double LV mass with QC "pass"). ``name``: another density parameter."""
        from .analysis import check_density

        text = self.getParameter(name).strip()
        density = self._floatParameter(name) if text else 1.05
        check_density(density, name)
        return density

    def _measuredDensity(self):
        """The density the saved results were measured with (a reopened scene), else the box's."""
        return self.densityParameter("measuredDensity" if self.getParameter("measuredDensity").strip() else "density")

    def _floatParameter(self, name):
        text = self.getParameter(name).strip()
        try:
            return float(text) if text else 0.0
        except ValueError:
            raise CardiacInputError(name, f"{text!r} is not a number")

    # ---------------------------------------------------------------------- loading
    def loadStudy(self, path, **options):
        """Read a file or folder with the engine's readers (``readers.load_study`` options: kind,
        series, labels, label_convention, aif, dt, frame) and add it to the scene.

        Returns ``scene.StudyNodes``; the input parameter points at the sequence (or volume).
        """
        from .readers import load_study

        if options.get("kind") is None and self.getParameter("kind") != "auto":
            options["kind"] = self.getParameter("kind")
        with _errorsInModuleTerms():
            study = load_study(path, **options)
        aif = options.get("aif")
        return self.setStudy(study, aifPath=os.fspath(aif) if isinstance(aif, (str, os.PathLike)) else "")

    def loadSamplePhantom(self, kind=CINE, folder=None, seed=0):
        """The shipped demo: write the phantom into ``folder`` once (exact truth, labels, AIF)
        and load it with its labels. Returns ``StudyNodes``."""
        from .phantoms.phantom import PHANTOM_FILES, write_phantom

        folder = Path(folder or Path(tempfile.gettempdir()) / "CardiacAISeg" / f"phantom_{kind}_{seed}")
        names = PHANTOM_FILES[kind]
        if not all((folder / n).is_file() for n in names):
            write_phantom(kind, folder, seed=seed, force=True)
        if kind == PERFUSION:
            import json
            dt = json.loads((folder / "truth.json").read_text())["dt_s"]
            return self.loadStudy(folder / names[0], kind=PERFUSION, labels=folder / names[1], aif=folder / "aif.csv", dt=dt)
        return self.loadStudy(folder / names[0], kind=CINE, labels=folder / names[1])

    def setStudy(self, study, aifPath=""):
        """Make ``study`` the current one: add its images to the scene, reset the analysis.
        The new input node is stamped with what its images cannot say (kind, AIF curve, units,
        ED/ES), so picking it again later reads the same study; ``aifPath``: the AIF file it was
        read with, shown as the ``aifPath`` parameter."""
        # the nodes first: a study the scene could not hold left the Logic half switched (its
        # study the new one, its input, table and segmentations the previous study's, which the
        # next Apply filled with the refused file's results; probe 103)
        with sc.nodes_removed_on_failure(self.context):
            nodes = sc.add_study(self.context, study)
            _write_study_attributes(nodes.sequence or nodes.volume, study)
        self.study = study
        self._forgetAnalysis()
        self.studyNodes = nodes
        self._setInput(self.studyNodes.sequence or self.studyNodes.volume)
        self.setParameter("aifPath", aifPath)
        self.studyAifPath = aifPath
        return self.studyNodes

    def _isInputNode(self, node):
        """True when ``node`` (a sequence, its proxy volume, or a volume) is the input parameter's node."""
        current = self.getNodeParameter("inputNodeID")
        if current is None or node is None:
            return False
        return node is current or _sequence_of(self.context, node) is current

    def _isNewInput(self, node):
        """True when ``node`` is not the input the AIF file, rest pairing and outputs were chosen
        for: not the input parameter's node, or not the current study's while one is read. The
        input selector writes the parameter before the module reads the node it picked, so the
        parameter alone took a newly picked series for the previous one (its AIF file and rest
        series kept: MBF from the other series' AIF, no flag; probe 79)."""
        return not self._isInputNode(node) or (self.study is not None and not self.isCurrentStudyNode(node))

    def _setInput(self, node, new=None):
        """Point the input parameter at ``node``; outputs made for another input are let go
        (kept in the scene, not overwritten), outputs the user made by hand stay selected. An
        AIF file chosen for another input is let go too: it belongs to the series it was given
        with (a stale one gave the next series picked a wrong MBF with no flag). ``new``: whether
        ``node`` is another input than the one read (``_isNewInput``, asked before it was read).
        The outputs let go keep what their analysis was measured with (``_keepLeftAnalysis``), so
        picking their input again brings them back (``_bringBackAnalysisOf``)."""
        # read before the rest selector is emptied for the new input: the analysis let go was measured with it
        parameters = {name: self.getParameter(name) for name in ANALYSIS_PARAMETERS}
        if new if new is not None else not self._isInputNode(node):
            self.setParameter("aifPath", "")
            # a rest series read for the previous input goes with it too (one the user picked in
            # the scene stays picked; the pairing is checked again at the next run)
            self.restStudy = None
            restNode = self.getNodeParameter("restNodeID")
            if restNode is not None and restNode.GetAttribute(REST_OF_ATTRIBUTE) not in (None, node.GetID()):
                self.setParameter("restNodeID", "")
        self.setParameter("inputNodeID", node)
        left = {}
        for name in OUTPUT_PARAMETERS:
            output = self.getNodeParameter(name)
            made_for = output.GetAttribute(INPUT_ATTRIBUTE) if output is not None else None
            if made_for and made_for != node.GetID():
                left[name] = output
                self.setParameter(name, "")
        self._keepLeftAnalysis(left, parameters)

    def liveAnalysisState(self):
        """{"input": ID, "outputs": {parameter: node}, "parameters": {...}} of the analysis the
        parameter node names now, or None without outputs: what ``keepLeftAnalysis`` keeps when
        a scene added to this one replaces the parameter node (the module takes it as the import
        begins)."""
        outputs = {name: self.getNodeParameter(name) for name in OUTPUT_PARAMETERS}
        outputs = {name: node for name, node in outputs.items() if node is not None}
        if not outputs:
            return None
        return {"input": self.getParameter("inputNodeID"), "outputs": outputs,
                "parameters": {name: self.getParameter(name) for name in ANALYSIS_PARAMETERS}}

    def keepLeftAnalysis(self, state):
        """Keep the record of an analysis (``liveAnalysisState``) that a scene added to this one
        displaced from the parameter node, so that picking its input brings it back, as for an
        input left by picking another (probe 100)."""
        outputs = {name: node for name, node in state["outputs"].items() if self.scene.GetNodeByID(node.GetID()) is node}
        self._keepLeftAnalysis(outputs, state["parameters"])

    def _keepLeftAnalysis(self, left, parameters):
        """Outputs let go (``{parameter: node}``) keep on their results table which parameter each
        filled and the ``ANALYSIS_PARAMETERS`` they were measured with (JSON): written at the moment
        they are let go, so the roles an ED/ES swap exchanged and every later edit are the ones
        kept. Earlier records for the same input go: a table of an older run of that input is not
        taken for its analysis."""
        inputs = {node.GetAttribute(INPUT_ATTRIBUTE) for node in left.values()}
        for table in sc.nodes_by_class(self.context, "vtkMRMLTableNode"):
            if table.GetAttribute(INPUT_ATTRIBUTE) in inputs and table.GetAttribute(LEFT_ANALYSIS_ATTRIBUTE) is not None:
                table.RemoveAttribute(LEFT_ANALYSIS_ATTRIBUTE)
        table = left.get("tableID")
        if table is None:
            return   # no table: an analysis without its results is not brought back
        madeFor = table.GetAttribute(INPUT_ATTRIBUTE)
        outputs = {name: node.GetID() for name, node in left.items() if node.GetAttribute(INPUT_ATTRIBUTE) == madeFor}
        table.SetAttribute(LEFT_ANALYSIS_ATTRIBUTE, json.dumps({"outputs": outputs, "parameters": parameters}, sort_keys=True))

    def _leftAnalysisOf(self, node):
        """({parameter: output node}, {parameter: value}) of the analysis of input ``node`` let go
        when another input was picked: its newest results table made for ``node`` and the outputs it
        names, each still in the scene and made for ``node``; None when there is none or one was
        deleted since (the analysis is not complete: nothing is brought back)."""
        nodeID = node.GetID()
        tables = [t for t in sc.nodes_by_class(self.context, "vtkMRMLTableNode") if t.GetAttribute(INPUT_ATTRIBUTE) == nodeID]
        text = tables[-1].GetAttribute(LEFT_ANALYSIS_ATTRIBUTE) if tables else None
        try:
            record = json.loads(text) if text else None
            outputs, parameters = dict(record["outputs"]), dict(record["parameters"])
        except (ValueError, KeyError, TypeError):
            return None
        nodes = {}
        for name, outputID in outputs.items():
            output = self.scene.GetNodeByID(str(outputID)) if name in OUTPUT_PARAMETERS else None
            if output is None or output.GetAttribute(INPUT_ATTRIBUTE) != nodeID:
                return None
            nodes[name] = output
        rest = parameters.get("restNodeID")
        if nodes.get("tableID") is not tables[-1] or "outputSegmentationID" not in nodes or \
                (rest and self.scene.GetNodeByID(str(rest)) is None):
            return None
        return nodes, {name: str(value) for name, value in parameters.items() if name in ANALYSIS_PARAMETERS}

    def _bringBackAnalysisOf(self, node):
        """An input picked again whose outputs are still in the scene (``_leftAnalysisOf``): they are
        selected again with the parameters they were measured with, and its analysis is made live as
        a reopened scene's is (``_analysisFromOutputs``). Picked again, an input kept the other
        study's table and handles in view, its own results were not live (an edit was not measured)
        and the parameters its analysis was measured with were the other study's (probe 99). Not
        when outputs are selected already (the same input, or ones the user made by hand), nor when
        they cannot be measured again (a segmentation no longer fits the series, an edit that could
        not be measured): the input is then read with no analysis, as before."""
        if any(self.getParameter(name) for name in OUTPUT_PARAMETERS):
            return None
        found = self._leftAnalysisOf(node)
        if found is None:
            return None
        outputs, parameters = found
        before = {name: self.getParameter(name) for name in ANALYSIS_PARAMETERS}
        for name, value in parameters.items():
            self.setParameter(name, value)
        for name, output in outputs.items():
            self.setParameter(name, output)
        # the timing of the run shown last is not this analysis' (a reopened scene has none)
        self.timing, self.lastUpdateTimeS = {}, None
        try:
            analysis = self._analysisFromOutputs()
        except CardiacInputError:
            analysis = None
        if analysis is None:
            for name in OUTPUT_PARAMETERS:
                self.setParameter(name, "")
            self.analysis = self.networkLabels = self.restNetworkLabels = self.modelInfo = None
            self.unmeasuredEdits = {}
            for name, value in before.items():
                self.setParameter(name, value)
        return analysis

    def isCurrentStudyNode(self, node):
        """True when ``node`` (sequence, its proxy volume, or the volume) is the current study's."""
        n = self.studyNodes
        return node is not None and self.study is not None and n is not None and node in (n.sequence, n.volume)

    def studyFromNode(self, node, kind=None, keepOutputs=False):
        """A Study from a volume node, a sequence node or a sequence browser's proxy volume.

        Frame times come from a sequence index in s or ms, else from the ``frameTimeS``
        parameter; a perfusion study takes its AIF from the ``aifPath`` parameter. The kind is
        ``kind``, else the ``kind`` parameter, else ``detectKind``. Becomes the current study;
        outputs made for another input are let go unless ``keepOutputs``.
        """
        # the aifPath parameter is the AIF of the current input: another node picked brings its own
        # (stamped on it when it was loaded), or none
        newInput = self._isNewInput(node)
        aifPath = "" if newInput else self.getParameter("aifPath")
        stampedInterval = (_sequence_of(self.context, node) or node).GetAttribute(FRAME_TIME_ATTRIBUTE) \
            if newInput and node is not None else None
        if stampedInterval:
            # a series without times in its sequence is timed by the 'Frame interval' box: picked
            # again, it is read with the interval it was read with, not the one set for the study
            # picked since (its analysis brought back with MBF halved, unflagged; review of session 45)
            self.setParameter("frameTimeS", stampedInterval)
        with _errorsInModuleTerms():
            study, sequence = self._studyFromNode(node, kind or self.getParameter("kind"), aifPath)
        from .readers.pd_frames import frames_differ_from_file

        if frames_differ_from_file(study.provenance):
            # the node still holds the frames the analysis leaves out (PD reference images, blank
            # dynamics) or scales back: show (and make the input) the series it does analyse, so
            # frame numbers and values agree
            source = (sequence or node).GetID()

            def showsIt(copy):
                return copy is not None and copy.GetAttribute(SOURCE_ATTRIBUTE) == source and \
                    copy.GetNumberOfDataNodes() == study.n_frames

            shown = self.studyNodes.sequence if self.studyNodes is not None else None
            if not showsIt(shown):
                # picked again after another input: the copy shown when it was first picked, not a
                # new one (a new input, with no outputs: its analysis was not brought back; probe 99)
                copies = sc.nodes_by_class(self.context, "vtkMRMLSequenceNode")
                shown = next((c for c in reversed(copies) if showsIt(c) and _proxy_of(self.context, c) is not None), None)
            if shown is None:
                self.setStudy(study, aifPath=aifPath)
                if self.studyNodes.sequence is not None:
                    self.studyNodes.sequence.SetAttribute(SOURCE_ATTRIBUTE, source)
                return study
            # the same input picked again: its analysed frames are shown already and go on as
            # the input, with the outputs made for them (as for any input picked again)
            node = sequence = shown
        self.study, self.analysis, self.networkLabels = study, None, None
        proxy = _proxy_of(self.context, sequence) if sequence is not None else None
        self.studyNodes = sc.StudyNodes(volume=proxy or node, sequence=sequence)
        if keepOutputs:
            self.setParameter("inputNodeID", sequence or node)
        else:
            self._setInput(sequence or node, new=newInput)
        self.studyAifPath = aifPath
        # what this reading found (an AIF chosen since, its source) is what a saved scene reopens with
        _write_study_attributes(sequence or node, study)
        if not keepOutputs:
            self._bringBackAnalysisOf(sequence or node)
        return study

    def _studyFromNode(self, node, kind, aifPath, frameTimeParameter="frameTimeS"):
        """(Study, sequence node or None) of ``node``; ``frameTimeParameter`` names the parameter
        with the frame interval for a series whose sequence has no time index."""
        import slicer.util

        if node is None:
            raise CardiacInputError("input", "no input volume or sequence selected")
        sequence = _sequence_of(self.context, node)
        volumes = [sequence.GetNthDataNode(n) for n in range(sequence.GetNumberOfDataNodes())] if sequence else [node]
        if not volumes or any(v is None or not v.IsA("vtkMRMLScalarVolumeNode") for v in volumes):
            raise CardiacInputError(node.GetName(), "not a scalar volume or a sequence of scalar volumes")
        images = np.stack([np.asarray(slicer.util.arrayFromVolume(v), np.float32) for v in volumes])
        study = Study(images, sc.volume_ijk_to_ras(volumes[0]), name=node.GetName(),
                      provenance={"reader": "slicer node", "node": node.GetID()})
        study.frame_times_s = _frame_times(sequence, len(volumes), self._floatParameter(frameTimeParameter), study.provenance)
        if study.frame_times_s is not None and study.provenance.pop("frame_times_from_interval", False):
            (sequence or node).SetAttribute(FRAME_TIME_ATTRIBUTE, repr(self._floatParameter(frameTimeParameter)))
        stamped = _read_study_attributes(sequence or node)
        stampedProvenance = stamped.get("provenance", {})
        study.provenance.update({k: v for k, v in stampedProvenance.items() if k not in ("aif_source", "aif_path",
                                                                                           "aif_detection", "aif_warnings")})
        _judgeSpacingEvidenceAgain(study)
        # as the file readers judge it: a direction without obliquity is a writer's default (an
        # ACDC NIfTI added through Add Data), not the patient's
        study.orientation_known = stamped.get("orientation_known", not axis_aligned(study.ijk_to_ras[:3, :3]))
        if kind not in (CINE, PERFUSION):
            kind = stamped.get("kind")
        aif = aifPath or stamped.get("aif")
        aifFrom = str(stampedProvenance.get("aif_source") or "")
        if stamped.get("aif") is not None and aifPath and not Path(aifPath).exists() and \
                _same_path(aifPath, _stamped_aif_path(stampedProvenance)):
            # the file the stamped curve was read from is gone (moved, or the scene sent to a
            # colleague): the curve, not 'AIF file not found' (probe 70). A file that is there is
            # read: it may have been changed or chosen since
            aif = stamped["aif"]
        # the kind is decided where every reader decides it (readers.series_kind), from the
        # same evidence; a perfusion series is then finished like a file read from disk
        from .readers.series_kind import decide_kind

        decide_kind(study, requested=kind if kind in (CINE, PERFUSION) else None, aif_given=aif is not None and len(aif) > 0)
        against = study.provenance.pop("kind_against_data", None)
        if against and study.kind == kind:
            study.provenance["kind"]["against_data"] = against
        if study.kind == PERFUSION:
            from .readers.perfusion import finish_perfusion

            dt = None if study.frame_times_s is not None else self._floatParameter(frameTimeParameter)
            finish_perfusion(study, node.GetName(), aif=aif if aif is not None and len(aif) else None, dt=dt,
                             units=stamped.get("units"), hematocrit=stamped.get("hematocrit"))
            if isinstance(aif, np.ndarray) and aif is stamped.get("aif") and aifFrom:
                # the stamped curve is the AIF read before: its source and caveats as then
                study.provenance["aif_source"] = stampedProvenance["aif_source"]
                if _stamped_aif_path(stampedProvenance):
                    study.provenance["aif_path"] = _stamped_aif_path(stampedProvenance)
                if stampedProvenance.get("aif_detection"):
                    study.provenance["aif_detection"] = stampedProvenance["aif_detection"]
                warnings = study.provenance.setdefault("warnings", [])
                warnings += [w for w in stampedProvenance.get("aif_warnings", []) if w not in warnings]
        elif "ed_es" in stamped:
            study.ed_frame, study.es_frame = stamped["ed_es"]
        # JSON made the frame keys of the missing _gt files text (their detail no longer found)
        if isinstance(study.provenance.get("missing_label_files"), dict):
            study.provenance["missing_label_files"] = {int(k) if str(k).isdigit() else k: v for k, v in
                                                       study.provenance["missing_label_files"].items()}
        # the reading's own warnings, after those this reading gives again (said once); a network
        # run's note that scenes saved before session 46 stamped among them is its run's, said
        # from its model info, not the file's (it outlived the run, said after runs that found the heart)
        from .analysis import is_network_note

        said = [w for w in study.provenance.pop("reader_warnings", None) or [] if not is_network_note(w)]
        warnings = study.provenance.setdefault("warnings", [])
        warnings += [w for w in said if w not in warnings]
        return study, sequence

    def adoptAnalysis(self, analysis):
        """Show an Analysis computed elsewhere (the CLI's) in this Logic's scene, exactly as a run
        here would: input nodes, parameter node, segmentations, handles, table. The input node is
        stamped with what the images cannot say again (kind, AIF, units, ED/ES), so a scene saved
        from here reopens as the same live analysis (``restoreFromParameterNode``)."""
        st = analysis.study
        self.setStudy(st)
        # the kind box as the user left it: --kind's value, else automatic. Set to the study's kind,
        # a reopened CLI scene refused the next study loaded for "the 'Series kind' box set to
        # perfusion", a box no one had set (probe 92); the input node is stamped with its kind
        asked = ((st.provenance or {}).get("kind") or {}).get("decided_by") == "--kind"
        self.setParameter("kind", analysis.kind if asked else "auto")
        self.setParameter("density", repr(float(analysis.density)))
        self.setParameter("bullseyeMeasure", analysis.bullseye_measure)
        return self.applyAnalysis(analysis)

    def kindText(self, study=None):
        """What the panel says of the series' kind: detected from the data, and, where the
        'Series kind' box chose another, that the study is read as the box asks (the label said
        "Detected: perfusion" of a cine read and measured as a cine; probe 92)."""
        study = study or self._requireStudy()
        kind, reason = self.detectKind(study)
        text = f"Detected: {kind} ({reason})"
        if study.kind in (CINE, PERFUSION) and study.kind != kind:
            text += f"; read as {study.kind}, as the 'Series kind' box asks"
        return text

    def aifPathForLoad(self, path):
        """The 'AIF file' box's path to read ``path`` with, or "". After a load the box shows the
        open study's AIF (the sample's temporary aif.csv too): passed on to the next file loaded,
        it made a cine perfusion, refused for reasons that never named the AIF (probe 92). Kept
        when ``path`` is the open study's own file read again, or when another AIF was chosen since."""
        aif = self.getParameter("aifPath")
        if not aif or self.study is None or not self.studyAifPath or not _same_path(aif, self.studyAifPath):
            return aif
        return aif if self.study.source and _same_path(path, self.study.source) else ""

    def loadNotes(self):
        """The open study's reading notes (series left out, a long-axis view chosen, a kind
        against the data) in the module's terms: shown at Load, not only after Run (probe 92)."""
        if self.study is None:
            return []
        return warningsInModuleTerms(list((self.study.provenance or {}).get("warnings", [])))

    def detectKind(self, study=None):
        """('cine' | 'perfusion', reason), as ``readers.series_kind.decide_kind`` decides it."""
        from copy import copy

        from .readers.series_kind import decide_kind

        study = copy(study or self._requireStudy())
        study.provenance = dict(study.provenance or {})
        decide_kind(study, aif_given=study.aif is not None)
        return study.kind, study.provenance["kind"]["decided_by"]

    def loadRestStudy(self, path, **options):
        """The rest perfusion series (with its labels/AIF options) paired for MPR; from a folder (an
        exam holding stress and rest) its rest series, as ``readers.load_rest_series`` reads it."""
        from .readers import load_rest_series

        with _errorsInModuleTerms(rest=True):
            study = load_rest_series(path, **options)
        return self.setRestStudy(study)

    def setRestStudy(self, study):
        """Pair a rest perfusion series (already read) with the current stress series for MPR and
        MPRI; None unpairs. A cine, or a rest series for a cine study, is refused with the reason."""
        if study is not None and study is self.restStudy:
            return study   # paired already: nothing changes (the node it was shown as stays, with its MPR)
        self._dropMeasuredRest()
        if study is not None:
            if study.kind != PERFUSION:
                raise CardiacInputError(study.source or study.name, f"the rest series is read as {study.kind}, not perfusion: "
                                        "MPR pairs a stress and a rest first-pass perfusion series")
            if self.study is not None:
                check_rest_pairing(self.study, study.source or study.name, study)
        self.restStudy = study
        self._restShownAs = None   # the node _showRest adds for it (the selector then names it)
        # a rest node picked or added for an earlier pairing is let go (the next run adds this one)
        self.setParameter("restNodeID", "")
        self.setParameter("restSegmentationID", "")
        return study

    def _dropMeasuredRest(self):
        """The rest series is unpaired (``setRestStudy(None)``, the rest selector emptied or set to
        another series): the MPR, MPRI and rest rows measured with it go now and the stress is
        measured alone; the next run measures a newly paired rest. Kept until then, the table and
        results.json showed the old MPR, a stress edit re-measured it against the unpaired rest, and
        the saved scene reopened without it (probe 76)."""
        a = self.analysis
        if a is None or a.rest is None:
            return
        a.rest = None
        self.restNetworkLabels = None
        restRun = self.getNodeParameter("restRunLabelsID")
        if restRun is not None:
            self.scene.RemoveNode(restRun)
            self.setParameter("restRunLabelsID", "")
        a.warnings = []   # measured again, as an edit does: the rest's caveats go with it
        a.run()
        self.parameterNode().SetNodeReferenceID("restSegmentationID", None)   # its mask is measured no more
        self._refreshTable()

    # ----------------------------------------------------------------------- models
    def availableModels(self, task=None):
        """Registry cards of the installed models (``task``: 'cine', 'perfusion' or all), each
        with a one-line ``summary`` of task, training data and metrics for the selector."""
        from .models import registry

        # the task's default first, as the selectors offer it first
        cards = sorted(registry.list_models(task), key=lambda card: not card.get("default"))
        for card in cards:
            card["summary"] = model_summary(card)
            # listed like any other, a model whose weights were gone failed only at Run (probe 95)
            card["problem"] = registry.runnable_problem(card)
            if card["problem"]:
                card["summary"] = f"CANNOT RUN: {card['problem']} · {card['summary']}"
        return cards

    def modelNeedsTorch(self, modelName=None):
        """True when the chosen model (``modelName`` or the parameter's, else the task's default)
        runs only on PyTorch on this CPU: no ONNX export (an imported TorchScript or state-dict
        model). The Slicer module then asks for SlicerPyTorch before the run, not after it fails."""
        from .models import registry

        if self.getParameter("useExistingLabels").lower() == "true":
            return False
        try:
            name = modelName or self.getParameter("modelName") or \
                registry.default_model(self.study.kind if self.study is not None else CINE)
            card = registry.get_card(name)
        except CardiacInputError:
            return False   # the run names the missing model
        return registry.choose_runtime(card, device="cpu") == "torch"

    # ------------------------------------------------------------------ segmentation
    def runSegmentation(self, modelName=None, frames=None, useExistingLabels=None, progress=None, device=None):
        """Segment the current study (a registry network, or the labels that came with it) and
        measure it; then ``updateNodes``. Returns the ``Analysis``.

        ``computeAnalysis`` + ``applyAnalysis``. With no installed model for the task the
        engine's error says so. ``progress`` may cancel (``CancelledError``); the previous
        results then stay as they were.
        """
        progress = as_progress(progress)
        self._readWithChosenAif()
        inputID = self.getParameter("inputNodeID")
        analysis = self.computeAnalysis(modelName, frames, useExistingLabels, progress, device)
        # the last point where a cancel (or a scene closed meanwhile) stops the run: once the
        # nodes are written, the results are the new ones and no "cancelled" may say otherwise
        progress(2, 3, "updating the scene")
        self.applyAnalysis(analysis, forInput=inputID)
        return analysis

    def computeAnalysis(self, modelName=None, frames=None, useExistingLabels=None, progress=None, device=None,
                        density=None):
        """The measured ``Analysis`` of the current study, touching no MRML node (safe in a
        worker thread when ``density`` is given): ``pipeline.compute_paired_analysis``, the CLI's and
        the web GUI's compute path too. Parameters default to the parameter node's."""
        from .pipeline import compute_paired_analysis

        study, rest, restLabels, arguments = self._analysisArguments(modelName, frames, useExistingLabels, device, density)
        with _errorsInModuleTerms():
            return compute_paired_analysis(study, rest, restLabels, progress=progress, **arguments)

    def startAnalysis(self, modelName=None, frames=None, useExistingLabels=None, device=None, density=None):
        """``computeAnalysis`` in a background process (``background.BackgroundAnalysis``, as
        SlicerMONAIAuto3DSeg runs its networks): returns the running job. Poll it from a timer;
        when its state is ``done``, ``applyAnalysis(job.result())``; ``job.cancel()`` stops it at
        once and leaves the current results as they are."""
        from .background import BackgroundAnalysis

        self._readWithChosenAif()
        study, rest, restLabels, arguments = self._analysisArguments(modelName, frames, useExistingLabels, device, density)
        return BackgroundAnalysis().start(study, rest=rest, rest_labels=restLabels, **arguments)

    def _readWithChosenAif(self):
        """An AIF file chosen (or cleared) in the ``aifPath`` parameter after the perfusion input
        was read: read the input again with it, rather than measure with the AIF it was read
        with (main thread: it reads MRML nodes)."""
        inputNode = self.getNodeParameter("inputNodeID")
        if self.study is not None and self.study.kind == PERFUSION and inputNode is not None \
                and self.getParameter("aifPath") != (self.studyAifPath or ""):
            self.studyFromNode(inputNode, keepOutputs=True)

    def _analysisArguments(self, modelName, frames, useExistingLabels, device, density):
        """(study, rest study or None, rest labels or None, keyword arguments of
        ``compute_analysis``), parameters defaulting to the parameter node's."""
        study = self._requireStudy()
        frames = frames or self.getParameter("frames")
        if useExistingLabels is None:
            useExistingLabels = self.getParameter("useExistingLabels").lower() == "true"
        modelName = modelName or self.getParameter("modelName") or None
        if density is None:
            density = self.densityParameter()
        labels, madeBy = None, None
        self._outputsMeasured = None
        if useExistingLabels:
            labels = {int(t): np.array(m, np.uint8) for t, m in study.labels.items()}
            if not labels:
                # the output segmentations: the network's (edited or not), judged by QC as its own
                # (as hand-drawn labels a frame without RV passed QC; helper-85's review)
                labels, madeBy = self._labelsFromOutputSegmentations(), self.modelInfo
                if labels and self._analysisIsOf(study):
                    # labels measured before (an input picked again reads no labels from its node)
                    # keep their other frames too: measured alone, ED and ES lost the cycle (probe 100)
                    labels = self._withTheCyclesOtherFrames(labels)
            if not labels:
                raise CardiacInputError(study.source or study.name, "no label maps came with the study and no output segmentation is selected")
        rest = self._restStudy() if study.kind == PERFUSION else None
        if rest is not None:   # paired before this input was chosen: still one patient's
            check_rest_pairing(study, rest.source or rest.name, rest)
        restLabels = rest.labels if rest is not None and useExistingLabels and rest.labels else None
        arguments = {"model_name": modelName, "labels": labels, "frames": frames, "density": density, "device": device,
                     "bullseye": self.getParameter("bullseyeMeasure") or "mbf", "labels_made_by": madeBy}
        if self._outputsMeasured is not None and self._outputsMeasured.get("kept_ed_es"):
            # the frames an edit kept as ED and ES stay so: taken again from the curve, ED moved to a
            # frame still holding the network's uncorrected labels (review of session 44)
            arguments["kept_ed_es"] = self._outputsMeasured["kept_ed_es"]
        return study, rest, restLabels, arguments

    def _withTheCyclesOtherFrames(self, labels):
        """The output segmentations measured again after hand edits, with the current analysis'
        other labelled frames, and what ``applyAnalysis`` keeps of the run: measured alone, the
        ED and ES segmentations lost a whole cycle's volume curve and its ED/ES certainty, the
        edits were recorded as the network's output (no edited frames, agreement Dice 1.0 with
        the network) and the run's own labels were gone (probe 96)."""
        a = self.analysis
        labels = {**{int(t): np.array(m, np.uint8) for t, m in a.labels.items()}, **labels}
        network = {int(t): m.copy() for t, m in (self.networkLabels or {}).items()}
        edited = set(a.edited_frames) | {t for t, m in labels.items() if t in network and not np.array_equal(network[t], m)}
        self._outputsMeasured = {"study": a.study.name, "model": self.modelInfo, "edited": edited, "network": network,
                                 "kept_ed_es": a.kept_ed_es}
        return labels

    def _analysisIsOf(self, study):
        """The current analysis is of ``study``: the same study, or the copy a background run
        returned (pickled, so not the same object: the check by identity never held there)."""
        a = self.analysis
        return a is not None and (a.study is study or (a.study.name == study.name and
                                                       a.study.images.shape == study.images.shape))

    def applyAnalysis(self, analysis, forInput=None, revert=False):
        """Make a computed Analysis the current one: segmentations, handles and table nodes.
        Only a finished analysis replaces the previous one, so a cancel leaves the old results.

        ``forInput``: the ``inputNodeID`` the analysis was started for. When another input was
        picked (or the scene closed) while it ran, it is refused: shown, the first input's
        results would be stamped on the second one's nodes. ``revert``: the user asked to go back
        to the run's segmentation (the hand corrections it replaces are not warned about)."""
        if forInput is not None and (self.study is None or forInput != self.getParameter("inputNodeID")):
            inputNode = self.scene.GetNodeByID(forInput) if forInput else None
            raise CardiacInputError(inputNode.GetName() if inputNode is not None else "input",
                                    "the input was changed (or the scene closed) while its analysis ran: that result "
                                    "is not shown on the new input; run again")
        self.timing = dict(analysis.timing_s)
        replaced = [] if revert else _corrections_replaced(self.analysis, analysis)
        if replaced:
            # a run over corrected contours replaces them (with the study's own labels or the
            # network's): said, not done without a word (probe 62). The previous analysis is of
            # this study (setStudy drops it); a background run's result holds a copy of the study
            frames = ", ".join(str(t + 1) for t in replaced)
            source = "the network's segmentation" if analysis.model_info else "the labels that came with the study"
            analysis.warnings.append(f"this run replaced the corrections made by hand on frame(s) {frames} (counted from "
                                     f"1) with {source}; save corrected contours (ground truth, or the segmentation "
                                     "files) before running again to keep them")
        restReplaced = not revert and _rest_corrections_replaced(self.analysis, analysis)
        if restReplaced:
            # the rest mask corrected by hand went without a word where the stress's is said (probe 70)
            analysis.warnings.append("this run replaced the corrections made by hand on the rest series' mask with "
                                     + ("the network's segmentation" if analysis.model_info else "the labels that came "
                                        "with the rest series") + "; save them before running again to keep them")
        handles = [] if revert else _handles_replaced(self.analysis, analysis)
        if handles:
            # dragged handles are corrections too: a rerun put them back at their automatic
            # places (26.9 mm, 6 wall-thickness rows changed) or removed hand-placed points
            # (16 AHA rows to none) with no word (probe 67)
            analysis.warnings.append(f"this run placed the RV insertion points again: {' and '.join(handles)} "
                                     "replaced; drag or place them again where they were")
        # a new analysis takes ED and ES from its own volume curve; one computed elsewhere from an
        # edited whole cycle (the exported scene) keeps the frames the edit kept (its scene lost them)
        self.setParameter("keptEdEs", "%d %d" % analysis.kept_ed_es if analysis.kept_ed_es else "")
        self.setParameter("measuredDensity", repr(float(analysis.density)))
        measured, self._outputsMeasured = getattr(self, "_outputsMeasured", None), None
        network = None
        if measured is not None and not revert and analysis.study.name == measured["study"] and \
                analysis.model_info == measured["model"]:
            # the output segmentations measured again: still the network's, with the hand edits
            # recorded as such and the run's own labels kept to compare them with (probe 96)
            analysis.edited_frames |= measured["edited"] & set(analysis.labels)
            network = {t: m for t, m in measured["network"].items() if t in analysis.labels}
        self.analysis, self.modelInfo = analysis, analysis.model_info
        self.unmeasuredEdits = {}
        self.networkLabels = network or {t: m.copy() for t, m in analysis.labels.items()}
        self.restNetworkLabels = {t: m.copy() for t, m in analysis.rest.labels.items()} if analysis.rest is not None else None
        self._storeFrameLabels(analysis)
        self.updateNodes()
        self._storeRunLabels()
        markups = self.getNodeParameter("markupsID")
        if markups is not None:
            # points placed by hand (labels with no RV) are placed again from here on reopening
            # (the exported scene.mrb lost them: no AHA rows, QC pass for review; probe 62)
            placed = analysis.hand_placed_slice
            markups.SetAttribute(PLACED_ON_SLICE_ATTRIBUTE, "" if placed is None else str(placed))
        return analysis

    def _storeFrameLabels(self, analysis):
        """Every labelled frame's label map in the ``frameLabelsID`` sequence (hidden: the ED and ES
        segmentations are what is shown and edited) when a cine has more labelled frames than
        those two; no such node otherwise."""
        node = self.getNodeParameter("frameLabelsID")
        if analysis.kind != CINE or len(analysis.labels) <= 2:
            if node is not None:
                self.scene.RemoveNode(node)
                self.setParameter("frameLabelsID", "")
            return
        node = sc.store_frame_labels(self.context, analysis.labels, analysis.study.ijk_to_ras,
                                     f"{analysis.study.name} {sc.FRAME_LABELS_NAME}", node=node)
        self.setParameter("frameLabelsID", node)

    def _storeRunLabels(self):
        """The run's label maps of the frames the output segmentations show (``networkLabels``)
        and of the rest mask (``restNetworkLabels``) in hidden sequences, so that a reopened scene
        still knows what an edit changed."""
        shown = {int(node.GetAttribute(FRAME_ATTRIBUTE)) for node in
                 (self.getNodeParameter("outputSegmentationID"), self.getNodeParameter("outputSegmentationESID"))
                 if node is not None and (node.GetAttribute(FRAME_ATTRIBUTE) or "").isdigit()}
        a = self.analysis
        # an analysis adopted after hand corrections (the exported scene) holds them as its
        # labels: those frames are not the run's, and a reopened export compared the corrections
        # with themselves (Dice 1.0; review)
        rest = a.rest
        for parameter, labels, study, suffix in (
                ("runLabelsID", {t: m for t, m in (self.networkLabels or {}).items() if t in shown and t not in a.edited_frames},
                 a.study, "run labels"),
                ("restRunLabelsID", {t: m for t, m in (self.restNetworkLabels or {}).items() if rest is not None
                                     and t not in rest.edited_frames}, rest.study if rest is not None else None, "rest run labels")):
            node = self.getNodeParameter(parameter)
            if not labels or study is None:
                if node is not None:
                    self.scene.RemoveNode(node)
                    self.setParameter(parameter, "")
                continue
            node = sc.store_frame_labels(self.context, labels, study.ijk_to_ras, f"{study.name} {suffix}", node=node)
            node.SetAttribute(INPUT_ATTRIBUTE, self.getParameter("inputNodeID"))
            self.setParameter(parameter, node)

    def _runLabelsOf(self, parameter, study):
        """{frame: labels} stored by ``_storeRunLabels`` that fit ``study``'s grid, else None."""
        node = self.getNodeParameter(parameter)
        if node is None or study is None:
            return None
        shape = study.images.shape[1:]
        labels = {t: m for t, m in sc.frame_labels_of(node).items() if m.shape == shape}
        return labels or None

    def _restStudy(self):
        """The rest perfusion study to pair with a stress one, or None."""
        rest = self.restStudy
        node = self.getNodeParameter("restNodeID")
        shownAs = self._restShownAs
        if rest is not None and shownAs is not None and (node is None or node.GetID() != shownAs):
            # the selector was emptied, or another rest series picked, since this one was shown:
            # the selector decides (the series read from a file went on being measured: MPR kept
            # after 'None', the old rest's mask put on the new series' images; probe 70)
            restAif = self.getParameter("restAifPath")
            if restAif and _same_path(restAif, _stamped_aif_path(rest.provenance or {})):
                # that AIF file was the dropped series' own: not the newly picked one's
                self.setParameter("restAifPath", "")
            self.restStudy = rest = None
            self._restShownAs = None
            # its mask was drawn on the dropped series' grid: not the picked one's (written over
            # the old grid, it reopened with other voxels: MPR 2.707 for 2.716)
            self.setParameter("restSegmentationID", "")
        if rest is None and node is not None:
            # its own frame interval: stress and rest are two acquisitions at two heart rates
            rest, _ = self._studyFromNode(self.getNodeParameter("restNodeID"), PERFUSION, self.getParameter("restAifPath"),
                                          frameTimeParameter="restFrameTimeS")
        return rest

    def _labelsFromOutputSegmentations(self):
        labels = {}
        for name in ("outputSegmentationID", "outputSegmentationESID"):
            node = self.getNodeParameter(name)
            if node is not None:
                text = node.GetAttribute(FRAME_ATTRIBUTE)
                made_for = node.GetAttribute(FRAME_COUNT_ATTRIBUTE)
                if text and made_for and self.study is not None and int(made_for) != self.study.n_frames:
                    # frames added to or taken from the sequence since: frame number N is no longer
                    # the image this segmentation was drawn on
                    raise CardiacInputError(node.GetName(), f"was made for frame {text} of a series of {made_for} frames; "
                                                            f"the input now has {self.study.n_frames}, so that frame number "
                                                            "names another image: segment again (or restore the frames)")
                # A segmentation drawn by hand belongs to the frame on screen.
                frame = int(text) if text else self._displayedFrame()
                labels[frame] = self._labelsOf(node)
        return labels

    def selectSegmentationForEditing(self, segmentationNode):
        """Edit a cine segmentation over its own frame: the sequence browser moves to the frame
        the segmentation belongs to and the other output segmentation is hidden, so an ES edit
        is never drawn over the ED image. Returns that frame (None for a segmentation that is
        not one of this analysis' outputs)."""
        outputs = [self.getNodeParameter(p) for p in ("outputSegmentationID", "outputSegmentationESID")]
        if segmentationNode is None or segmentationNode not in outputs:
            return None
        text = segmentationNode.GetAttribute(FRAME_ATTRIBUTE)
        frame = int(text) if text else None
        browser = self._sequenceBrowser()
        if browser is not None and frame is not None:
            browser.SetSelectedItemNumber(frame)
        for node in outputs:
            if node is not None and node.GetDisplayNode() is not None:
                node.GetDisplayNode().SetVisibility(node is segmentationNode)
        return frame

    def _sequenceBrowser(self):
        sequence = self.studyNodes.sequence if self.studyNodes is not None else None
        for n in range(self.scene.GetNumberOfNodesByClass("vtkMRMLSequenceBrowserNode")) if sequence else ():
            browser = self.scene.GetNthNodeByClass(n, "vtkMRMLSequenceBrowserNode")
            if browser.IsSynchronizedSequenceNode(sequence, True):
                return browser
        return None

    def _displayedFrame(self):
        browser = self._sequenceBrowser()
        return max(0, int(browser.GetSelectedItemNumber())) if browser is not None else 0

    def _labelsOf(self, segmentationNode, study=None):
        st = study or self._requireStudy()
        return sc.labelmap_from_segmentation(segmentationNode, st.ijk_to_ras, st.images.shape[1:])

    # -------------------------------------------------------------------------- nodes
    def updateNodes(self):
        """Show the analysis: segmentations (reference frame, and ES for cine), insertion
        markups and the results table; existing output nodes are refilled in place."""
        a = self._requireAnalysis()
        st = a.study
        ref = a.reference_frame
        self._showSegmentation("outputSegmentationID", ref, " ED" if a.kind == CINE else "")
        es = (a.cine or {}).get("es_frame")
        if es is not None and es != ref and es in a.labels:
            self._showSegmentation("outputSegmentationESID", es, " ES")
        markups = self.getNodeParameter("markupsID")
        if a.insertion:
            markups = sc.add_insertion_markups(self.context, a.insertion_summary(), name=f"{st.name} {sc.INSERTION_NODE_NAME}", node=markups)
            self.setParameter("markupsID", markups)
        elif markups is not None:
            sc.add_insertion_markups(self.context, [], node=markups)
        self._showRest()
        self._refreshTable()
        self._stampOutputs()

    def _showRest(self):
        """The rest series of an MPR and the mask it was measured with, as scene nodes
        (``restNodeID``, ``restSegmentationID``, the mask hidden: it belongs to the rest images),
        so a saved scene reopens with its MPR and MPRI (they were lost without a word)."""
        rest = self.analysis.rest
        if rest is None:
            self.setParameter("restSegmentationID", "")
            return
        restNode = self.getNodeParameter("restNodeID")
        if restNode is None:   # read from a file (loadRestStudy, the CLI): not in the scene yet
            nodes = sc.add_study(self.context, rest.study)
            restNode = nodes.sequence or nodes.volume
            _write_study_attributes(restNode, rest.study)
            restNode.SetAttribute(REST_OF_ATTRIBUTE, self.getParameter("inputNodeID"))
            # the node of the rest just measured: set directly, as setParameter would read it as an unpairing
            self.parameterNode().SetNodeReferenceID("restNodeID", restNode.GetID())
            if self.restStudy is not None:   # read from a file (a background run's copy of it too)
                self._restShownAs = restNode.GetID()
        volume = _proxy_of(self.context, restNode) if restNode.IsA("vtkMRMLSequenceNode") else restNode
        node = self._showSegmentation("restSegmentationID", rest.reference_frame, " rest", analysis=rest, volume=volume)
        if node.GetDisplayNode() is not None:
            node.GetDisplayNode().SetVisibility(False)

    def _stampOutputs(self):
        inputID = self.getParameter("inputNodeID")
        for name in OUTPUT_PARAMETERS:
            node = self.getNodeParameter(name)
            if node is not None:
                node.SetAttribute(INPUT_ATTRIBUTE, inputID)

    def _showSegmentation(self, parameter, frame, suffix, analysis=None, volume=None):
        """The segmentation node of ``parameter`` filled with ``frame``'s labels of ``analysis``
        (default: the current one, over the input volume; the rest series' over its own)."""
        a = analysis or self.analysis
        node = self.getNodeParameter(parameter)
        if node is None:
            if volume is None and self.studyNodes is not None:
                volume = self.studyNodes.volume
            node = sc.add_segmentation(self.context, a.labels[frame], a.study.ijk_to_ras, volume,
                                       name=f"{a.study.name} segmentation{suffix}")
            self.setParameter(parameter, node)
        else:
            fill_segmentation(node, a.labels[frame], a.study.ijk_to_ras)
        node.SetAttribute(FRAME_ATTRIBUTE, str(int(frame)))
        node.SetAttribute(FRAME_COUNT_ATTRIBUTE, str(int(a.study.n_frames)))
        if a.kind == CINE:   # saved with the node's .seg.nrrd: given back to --labels, it goes to its frame
            sc.tag_frame(node, frame, a.study.n_frames)
        return node

    def _refreshTable(self):
        # a QC flag's message in the module's terms, as its status line words it ("(--kind)" was
        # "(the 'Series kind' box)" there and "(--kind)" in the table; probe 92)
        rows = [dict(r, measure=inModuleTerms(r["measure"])) if r["key"].startswith("qc_") else r
                for r in self.analysis.table_rows()]
        node = self.getNodeParameter("tableID")
        if node is None:
            node = sc.add_results_table(self.context, rows, name=f"{self.analysis.study.name} results")
            self.setParameter("tableID", node)
        else:
            fill_table(node, rows)
        self._rememberProvenance()
        return node

    def _rememberProvenance(self):
        """The model and the hand-corrected frames into the parameter node (saved with the
        scene): a reopened scene's export said "model": null and nothing of the edits."""
        a = self.analysis
        rest = getattr(a, "rest", None)
        restInfo = getattr(rest, "model_info", None)
        values = {"modelInfo": json.dumps(self.modelInfo, sort_keys=True, default=str) if self.modelInfo else "",
                  "restModelInfo": json.dumps(restInfo, sort_keys=True, default=str) if restInfo else "",
                  "editedFrames": " ".join(str(f) for f in sorted(a.edited_frames)),
                  "restEditedFrames": " ".join(str(f) for f in sorted(rest.edited_frames)) if rest is not None else ""}
        for name, value in values.items():
            if self.getParameter(name) != value:
                self.setParameter(name, value)

    # -------------------------------------------------------------------------- edits
    def onInsertionPointMoved(self, markupsNode=None, pointIndex=None):
        """A dragged RV insertion handle: re-bin that slice's AHA sectors, refresh the table.

        ``pointIndex`` None checks every point and moves those that differ from the analysis.
        Returns the slices whose sectors changed; ``lastUpdateTimeS`` holds the time taken.
        """
        a = self._requireAnalysis()
        node = self._handlesNode(markupsNode)
        t0 = time.perf_counter()
        current = {(p["slice"], side): p.get(f"{side}_ras") for p in a.insertion for side in sc.SIDES}
        indices = range(node.GetNumberOfControlPoints()) if pointIndex is None else [int(pointIndex)]
        changed, pos, refused = [], [0.0, 0.0, 0.0], []
        try:
            for n in indices:
                match = sc._POINT_LABEL.match(node.GetNthControlPointLabel(n) or "")
                if not match:
                    continue   # a point the user renamed or added is not an insertion point
                k, side = int(match.group(1)), match.group(2).lower()
                node.GetNthControlPointPosition(n, pos)
                finite = bool(np.all(np.isfinite(pos)))
                if pointIndex is None and finite:
                    # a whole scan (a reopened scene) may find every point on the plane of another
                    # slice number; a single drag keeps the handle on its own slice
                    k = self._sliceOfPoint(node, n, k, side, pos)
                old = current.get((k, side))
                if pointIndex is None and old is not None and np.allclose(old, pos, atol=1e-6):
                    continue
                try:
                    if not finite:
                        # checked here: the sectors took a NaN point, then failed (IndexError) with
                        # the table and results still on the old one (probe 103)
                        raise CardiacInputError(f"RV insertion handle '{sc.point_label(k, side)}'",
                                                f"({', '.join(f'{v:g}' for v in pos)}) is not a finite position")
                    changed += a.move_insertion_point(k, side, list(pos))
                except CardiacInputError as e:
                    # the handle goes back to the point the analysis still uses, so what is shown
                    # is what is measured (and the next drag or a saved scene does not fail again)
                    self._placeHandle(node, n, k, side)
                    if pointIndex is not None:
                        raise
                    refused.append(e)   # a whole scan moves the other points, then says it
                    continue
                self._placeHandle(node, n, k, side, onlyIfOffPlane=True)
            if refused:
                raise refused[0]
        finally:
            if changed:
                self._refreshTable()
            self.lastUpdateTimeS = time.perf_counter() - t0
        return sorted(set(changed))

    def onInsertionPointRemoved(self, markupsNode=None):
        """A handle deleted (possible once the node's fixed number of points is unlocked in the
        Markups module): the AHA sectors still use its point, so the handle is shown again where
        it is measured, and that is said (the table kept the deleted point's sectors with no
        word, and so did a saved scene; probe 78). Returns the (slice, side) put back."""
        a = self._requireAnalysis()
        node = self._handlesNode(markupsNode)
        shown = {(p["slice"], side) for p in sc.insertion_points_from_markups(node) for side in sc.SIDES
                 if p[f"{side}_ras"] is not None}
        missing = [(p["slice"], side, p[f"{side}_ras"]) for p in a.insertion_summary() for side in sc.SIDES
                   if p.get(f"{side}_ras") is not None and (p["slice"], side) not in shown]
        if not missing:
            return []
        fixed = node.GetFixedNumberOfControlPoints()
        node.SetFixedNumberOfControlPoints(False)
        for k, side, ras in missing:
            node.AddControlPoint([float(x) for x in ras], sc.point_label(k, side))
        node.SetFixedNumberOfControlPoints(fixed)
        names = " and ".join(f"'{sc.point_label(k, side)}'" for k, side, _ in missing)
        a.warnings.append(f"RV insertion handle {names} deleted: the AHA segments are measured from it still, so it is "
                          "shown again there; drag it to move it")
        return [(k, side) for k, side, _ in missing]

    def _handlesNode(self, markupsNode):
        """``markupsNode``, else the ``markupsID`` parameter's node, else the refusal that there is
        none (deleted by hand: an AttributeError on None)."""
        node = markupsNode or self.getNodeParameter("markupsID")
        if node is None:
            raise CardiacInputError(sc.INSERTION_NODE_NAME, "no markups node holds the RV insertion handles (deleted "
                                                            "from the scene?); run the segmentation again to show them")
        return node

    def _placeHandle(self, node, n, k, side, onlyIfOffPlane=False):
        """Put handle ``n`` where the analysis has slice k's ``side`` point (on slice k's plane:
        a point dragged off it is measured by its projection, so it is shown there too)."""
        a = self.analysis
        if a is None or a.sectors is None or k not in a.sectors.slices:
            return
        where = np.asarray(a.sectors.points(k)[f"{side}_ras"], float)
        pos = [0.0, 0.0, 0.0]
        node.GetNthControlPointPosition(n, pos)
        if onlyIfOffPlane and np.linalg.norm(where - np.asarray(pos)) < 1e-3:
            return
        node.SetNthControlPointPosition(n, *where)

    def placeInsertionPoints(self, sliceIndex, anteriorRas, inferiorRas, keepMoved=False):
        """RV insertion points placed by hand on one slice, for labels with no RV (Sunnybrook's
        LV-only contours): AHA sectors from them, every other level slice takes their directions
        about its own LV centre (a handle there too, draggable); markups and table refreshed.
        ``keepMoved``: handles the user dragged since keep their place (the same points placed
        again after an edit re-measured the labels). Returns the slices with sectors."""
        a = self._requireAnalysis()
        placed = a.place_insertion_points(sliceIndex, anteriorRas, inferiorRas, keep_moved=keepMoved)
        st = a.study
        markups = sc.add_insertion_markups(self.context, a.insertion_summary(), node=self.getNodeParameter("markupsID"),
                                           name=f"{st.name} {sc.INSERTION_NODE_NAME}")
        # the slice they were placed on: a reopened scene places them again from there
        markups.SetAttribute(PLACED_ON_SLICE_ATTRIBUTE, str(int(sliceIndex)))
        self.setParameter("markupsID", markups)
        self._refreshTable()
        return placed

    def _placeAgainFrom(self, markups):
        """Insertion points placed by hand (labels with no RV) from a reopened scene's markups:
        placed again on the slice they were placed on; the handles dragged since are then
        re-applied by ``onInsertionPointMoved``. A scene reopened without them lost its AHA
        segments, wall thickness rows and bullseye (probe round 18)."""
        text = markups.GetAttribute(PLACED_ON_SLICE_ATTRIBUTE)
        saved = {p["slice"]: p for p in sc.insertion_points_from_markups(markups)}
        hand = saved.get(int(text)) if text not in (None, "") else None
        if hand is None or hand["anterior_ras"] is None or hand["inferior_ras"] is None or hand["slice"] not in self.analysis.levels:
            return
        self.analysis.place_insertion_points(hand["slice"], list(hand["anterior_ras"]), list(hand["inferior_ras"]))

    def _sliceOfPoint(self, node, n, k, side, pos):
        """The slice a point lies on. A saved scene may come back with its volume stored the
        other way along k (Slicer rewrites left-handed grids), so a point on a slice plane
        names its slice by position; the label is corrected to match."""
        st = self.analysis.study
        kf = float(st.ras_to_ijk_points(pos)[0, 2])
        kp = int(round(kf))
        if abs(kf - kp) < 0.25 and 0 <= kp < st.n_slices and kp != k:
            node.SetNthControlPointLabel(n, sc.point_label(kp, side))
            return kp
        return k

    def onSegmentationEdited(self, segmentationNode=None, frame=None):
        """The user edited a segmentation (Segment Editor): re-read its label map and
        recompute volumes, mass, geometry and segment values; refresh markups and table."""
        a = self._requireAnalysis()
        node = segmentationNode or self.getNodeParameter("outputSegmentationID")
        if node is not None and node is self.getNodeParameter("restSegmentationID"):
            return self._onRestSegmentationEdited(node)
        if node not in (self.getNodeParameter("outputSegmentationID"), self.getNodeParameter("outputSegmentationESID")):
            # a rest mask was written into the stress labels (MBF 2.77 -> 2.98, no word)
            raise CardiacInputError(node.GetName() if node is not None else "segmentation",
                                    "is not an output segmentation of this analysis (its ED/ES or perfusion mask, or the "
                                    "rest mask): edit those")
        if frame is None:
            text = node.GetAttribute(FRAME_ATTRIBUTE)
            frame = int(text) if text else a.reference_frame
        t0 = time.perf_counter()
        with self._measuringEditOf(node):
            labels = self._labelsOf(node)
            self._keepEdAndEsAtTheirFrames(a)
            a.set_labels(int(frame), labels)
        original = (self.networkLabels or {}).get(int(frame))
        if original is not None and np.array_equal(original, labels):
            # edited back to what the run gave (undone): no longer said to be corrected by hand
            a.edited_frames.discard(int(frame))
        unused = sc.unused_segment_names(node)
        if unused:
            a.warnings.append(f"segment(s) {', '.join(repr(n) for n in unused)} of '{node.GetName()}' are not measured: "
                              "not a name of the LV blood pool, myocardium or RV")
        for structure, names in sc.structures_in_several_segments(node).items():
            a.warnings.append(f"segments {', '.join(repr(n) for n in names)} of '{node.GetName()}' all name the {structure}: "
                              "measured together, as the saved segmentation file is read")
        shared = sc.overlapping_voxels(node, a.study.ijk_to_ras, a.study.images.shape[1:])
        if shared:
            a.warnings.append(f"{shared} voxel(s) of '{node.GetName()}' lie in two structures (overlapping segments: the "
                              "Segment Editor's masking allows overlap): each is measured once, as the RV over the "
                              "myocardium over the LV blood pool; paint with 'overwrite other segments' to decide")
        self._followEdAndEs()
        markups = self.getNodeParameter("markupsID")
        if markups is not None or a.insertion:
            markups = sc.add_insertion_markups(self.context, a.insertion_summary(), node=markups,
                                               name=f"{a.study.name} {sc.INSERTION_NODE_NAME}")
            self.setParameter("markupsID", markups)
        self._refreshTable()
        self.lastUpdateTimeS = time.perf_counter() - t0
        return a

    def _onRestSegmentationEdited(self, node):
        """The rest series' mask edited: the rest MBF, and the MPR and MPRI made from it, are
        measured again (the table and results.json kept the reserve of the unedited mask, and a
        reopened scene gave another)."""
        a = self.analysis
        if a.rest is None:
            raise CardiacInputError(node.GetName(), "no rest series is paired with this analysis")
        t0 = time.perf_counter()
        text = node.GetAttribute(FRAME_ATTRIBUTE)
        frame = int(text) if text else a.rest.reference_frame
        with self._measuringEditOf(node):
            before = a.rest.labels.get(frame)
            labels = self._labelsOf(node, a.rest.study)
            a.rest.set_labels(frame, labels)
            original = (self.restNetworkLabels or {}).get(frame)
            if original is not None and np.array_equal(original, labels):
                # edited back to the run's mask (undone): no longer said to be corrected by hand,
                # as for the stress's (probe 76)
                a.rest.edited_frames.discard(frame)
            try:
                a.warnings = []   # measured again, as set_labels does: its warnings (the rest's among them) come again
                a.run()           # MPR and MPRI follow
            except Exception:
                if before is not None:   # the pair as it was: the rest's mask before the edit
                    a.rest.set_labels(frame, before)
                    a.run()
                raise
        self._refreshTable()
        self.lastUpdateTimeS = time.perf_counter() - t0
        return a

    @contextlib.contextmanager
    def _measuringEditOf(self, node):
        """An edit of ``node`` measured (its earlier refusal forgotten) or refused: the analysis
        keeps the segmentation before it (``Analysis.set_labels``) and ``unmeasuredEdits`` says
        why until the node is fixed, so exports do not write the old results as the new ones."""
        try:
            yield
        except Exception as e:
            # by ID: an ED/ES swap renames the nodes
            self.unmeasuredEdits[node.GetID()] = e.problem if isinstance(e, CardiacInputError) else f"{type(e).__name__}: {e}"
            raise
        self.unmeasuredEdits.pop(node.GetID(), None)

    def _refuseUnmeasuredEdits(self, what):
        if self.unmeasuredEdits:
            nodeID, problem = next(iter(self.unmeasuredEdits.items()))
            node = self.scene.GetNodeByID(nodeID)
            name = node.GetName() if node is not None else "segmentation"
            raise CardiacInputError(name, f"its last edit could not be measured ({problem}): the results are still those "
                                          f"of the segmentation before it, so {what} would not match it; correct the "
                                          "segmentation (or undo the edit) first")

    def _keepEdAndEsAtTheirFrames(self, a):
        """With three or more frames labelled (a whole cycle), an edit corrects the frame it is
        drawn on; it does not move ED or ES to another frame. Left to the volume curve, trimming
        the ED blood pool made a neighbouring frame (its network contours uncorrected) ED, one
        that no output segmentation showed: later edits of the node named ED changed nothing,
        the exports and ground truth left the correction out, and the saved scene did not
        reopen (probe round 18). ED and ES are kept where they are, as fixed frames (kept in
        the parameter node, so a reopened scene keeps them), and where the curve now disagrees the
        measures say so. Two labelled frames keep the swap rule (``_followEdAndEs``). Kept by the
        Analysis, not the study (a new run of the study finds ED and ES from its own curve), and
        in the parameter node, so a reopened scene keeps them."""
        st = a.study
        if a.kind != CINE or not a.cine or len(a.labels) < 3 or st.ed_frame is not None or st.es_frame is not None:
            return
        if a.kept_ed_es is not None or a.cine.get("es_frame") is None:
            return
        a.kept_ed_es = (int(a.cine["ed_frame"]), int(a.cine["es_frame"]))
        self.setParameter("keptEdEs", "%d %d" % a.kept_ed_es)

    def _followEdAndEs(self):
        """An edit that gives the ES frame the larger LV volume makes it ED (ED and ES are picked
        from the volumes when the study does not fix them): the two output segmentations swap
        roles and names, so the node called ED holds the ED frame the results use, and a
        warning says so."""
        a = self.analysis
        ed_node, es_node = self.getNodeParameter("outputSegmentationID"), self.getNodeParameter("outputSegmentationESID")
        if a.kind != CINE or ed_node is None or es_node is None:
            return
        ref = str(int(a.reference_frame))
        if ed_node.GetAttribute(FRAME_ATTRIBUTE) == ref or es_node.GetAttribute(FRAME_ATTRIBUTE) != ref:
            return
        self.setParameter("outputSegmentationID", es_node)
        self.setParameter("outputSegmentationESID", ed_node)
        for node, role in ((es_node, "ED"), (ed_node, "ES")):
            name = node.GetName()
            node.SetName((name[:-3] if name.endswith((" ED", " ES")) else name) + f" {role}")
        a.warnings.append(f"after the edit frame {int(ref) + 1} (counted from 1) has the larger LV volume: it is ED now "
                          f"and frame {int(a.cine['es_frame']) + 1} ES; the segmentations were renamed to match")

    def _restoredRest(self):
        """The rest Analysis of a reopened scene (its series and mask nodes), or None."""
        from .analysis import Analysis

        restSegmentation = self.getNodeParameter("restSegmentationID")
        study = self._restStudy() if restSegmentation is not None else None
        if study is None:
            return None
        text = restSegmentation.GetAttribute(FRAME_ATTRIBUTE)
        labels = {int(text) if text else 0: self._labelsOf(restSegmentation, study)}
        rest = Analysis(study, labels, density=self._measuredDensity())
        saved = self.getParameter("restModelInfo")
        rest.model_info = json.loads(saved) if saved else None
        return rest.run()

    def restoreFromParameterNode(self):
        """After a scene reload: rebuild study, labels and analysis from the nodes the
        parameter node names, and re-apply insertion points the user had moved."""
        node = self.getNodeParameter("inputNodeID")
        if node is None:
            return None
        if self.study is not None and self.getNodeParameter("outputSegmentationID") is None and \
                self.getNodeParameter("outputSegmentationESID") is None:
            # nothing measured to make live again; reading the input here replaced the study a
            # file was loaded as, and the labels that came with it (Run then found none; probe 79).
            # With no study held it is read: the next pick is then told from it (_isNewInput; review)
            return None
        # Node IDs may have been renamed on import: the parameter node's references are right.
        self.studyFromNode(node, keepOutputs=True)
        return self._analysisFromOutputs()

    def _analysisFromOutputs(self):
        """The analysis of the current study rebuilt from the output nodes and parameters the
        parameter node names (``restoreFromParameterNode`` after reading the input; an input picked
        again, ``_bringBackAnalysisOf``), made live; None when no output segmentation is selected."""
        from .analysis import Analysis

        labels = self._labelsFromOutputSegmentations()
        if not labels:
            return None
        frameLabels = self.getNodeParameter("frameLabelsID")
        if frameLabels is not None:
            # the other frames of a whole cycle; ED and ES from their segmentations (edited there)
            for t, lab in sc.frame_labels_of(frameLabels).items():
                if t not in labels and 0 <= t < self.study.n_frames and lab.shape == self.study.images.shape[1:]:
                    labels[t] = lab
        self.unmeasuredEdits = {}
        self.analysis = Analysis(self.study, labels, density=self._measuredDensity(), rest=self._restoredRest())
        self.analysis.bullseye_measure = self.getParameter("bullseyeMeasure") or "mbf"
        saved = self.getParameter("modelInfo")
        self.modelInfo = self.analysis.model_info = json.loads(saved) if saved else None
        self.analysis.edited_frames = {int(f) for f in self.getParameter("editedFrames").split()}
        if self.analysis.rest is not None:
            self.analysis.rest.edited_frames = {int(f) for f in self.getParameter("restEditedFrames").split()}
        self.networkLabels = self._runLabelsOf("runLabelsID", self.study)
        self.restNetworkLabels = self._runLabelsOf("restRunLabelsID", self.analysis.rest.study if self.analysis.rest else None)
        kept = self.getParameter("keptEdEs").split()
        if len(kept) == 2:
            self.analysis.kept_ed_es = (int(kept[0]), int(kept[1]))
        self.analysis.run()
        markups = self.getNodeParameter("markupsID")
        if markups is not None and self.analysis.sectors is None:
            self._placeAgainFrom(markups)
        if markups is not None and self.analysis.sectors is not None:
            try:
                self.onInsertionPointMoved()
            except CardiacInputError as e:
                # one saved handle that no longer applies (its slice has no sectors) made the whole
                # scene fail to reopen (probe 62); the others are applied, it goes back, it is said
                self.analysis.warnings.append(f"a saved RV insertion handle was not applied: {e.problem}")
        self._refreshTable()
        self._stampOutputs()
        return self.analysis

    # ------------------------------------------------------------------------ outputs
    def exportResults(self, outDir, force=False, progress=None):
        """results.json, results.csv, segmentation(s), report.png and scene.mrb into
        ``outDir`` (``outputs.write_outputs``, as the CLI writes them); existing files are kept
        unless ``force``."""
        from .outputs import check_output_folder_named, write_outputs

        a = self._requireAnalysis()
        self._refuseUnmeasuredEdits("the saved results")
        check_output_folder_named(outDir)   # the CLI's rule for --out
        return write_outputs(a, outDir, a.study.source or a.study.name, self.modelInfo, self.timing, force, progress,
                             scene_builder=build_output_scene, replace_hint=REPLACE_HINT)

    def renderReport(self, path, overwrite=True):
        """report.png of the current state: the same renderer as `cardiacaiseg analyze`."""
        from .report import write_analysis_report

        self._refuseUnmeasuredEdits("the report")
        return write_analysis_report(path, self._requireAnalysis(), overwrite=overwrite)

    def renderBullseye(self, path, sizePx=320):
        """The AHA bullseye alone (wall thickness for cine, MBF or relative upslope for perfusion) as a PNG."""
        from .report import analysis_bullseye_png

        a = self._requireAnalysis()
        self._refuseUnmeasuredEdits("the bullseye")
        data = analysis_bullseye_png(a, size_px=sizePx)
        with sc.atomic_output(path, overwrite=True) as tmp:
            Path(tmp).write_bytes(data)
        return path

    def setBullseyeMeasure(self, measure):
        """'mbf' or 'relative_upslope' for perfusion; kept in the parameter node, table refreshed."""
        self.setParameter("bullseyeMeasure", measure)
        if self.analysis is not None:
            self.analysis.set_bullseye_measure(measure)
            # the table and bullseye only: the segmentations are unchanged, and refilled from the
            # analysis they wiped an edit it had refused, which then still blocked the export (probe 76)
            self._refreshTable()

    def agreementWithNetwork(self):
        """{frame: agreement.segmentation_agreement(network, corrected)} for every frame the
        network segmented: Dice, FP/FN, boundary errors of the user's corrections."""
        from .agreement import segmentation_agreement

        a = self._requireAnalysis()
        if not self.networkLabels:
            raise CardiacInputError("agreement", "no network segmentation to compare with (run the segmentation first)")
        # the labels before an edit that could not be measured are not the segmentation shown:
        # Dice 1.0 for an LV pool just erased (probe 103)
        self._refuseUnmeasuredEdits("the agreement with the network")
        sp = a.study.spacing
        return {t: segmentation_agreement(self.networkLabels[t], a.labels[t], sp)
                for t in sorted(self.networkLabels) if t in a.labels}

    def groundTruthName(self, patientName=None):
        """``patientName`` (default: the ``groundTruthName`` parameter) when it names an ACDC
        patient folder (patientNNN), else CardiacInputError: checked before anything is written."""
        patientName = patientName or self.getParameter("groundTruthName")
        if not _ACDC_NAME.match(patientName or ""):
            raise CardiacInputError(patientName, "ACDC patient folders are named patientNNN (e.g. patient101)")
        return patientName

    def saveGroundTruth(self, outDir, patientName=None, group=None, force=False):
        """Save the corrected segmentation as ground truth in ACDC layout:
        ``outDir/patientNNN/`` with Info.cfg, patientNNN_frameXX.nii.gz (+ _gt) for ED and ES
        (frames 1-based, labels in the ACDC convention) and patientNNN_4d.nii.gz. Existing
        files are never replaced without ``force``; with it, the patient's frame files of an
        earlier save (or the ACDC original) that this one does not write are moved into a
        ``replaced-<time>`` folder inside it. Returns the folder."""
        from .outputs import check_output_folder_named, make_output_folder
        from .readers.acdc import patient_image_files, slice_positions_lines

        a = self._requireAnalysis()
        self._refuseUnmeasuredEdits("the ground truth")
        check_output_folder_named(outDir)   # the CLI's rule for --out
        st = a.study
        patientName = self.groundTruthName(patientName)
        if a.kind != CINE:
            raise CardiacInputError(patientName, "the ACDC layout holds cine studies; export perfusion with exportResults")
        ed, es = a.cine["ed_frame"], a.cine["es_frame"]
        folder = Path(outDir) / patientName
        files = {"Info.cfg": None}
        for t in sorted({f for f in (ed, es) if f is not None}):
            files[f"{patientName}_frame{t + 1:02d}.nii.gz"] = (st.images[t][None], np.float32)
            files[f"{patientName}_frame{t + 1:02d}_gt.nii.gz"] = (to_convention(a.labels[t], "acdc")[None], np.uint8)
        if st.n_frames > 1:
            files[f"{patientName}_4d.nii.gz"] = (st.images, np.float32)
        existing = [n for n in files if (folder / n).exists()]
        # an earlier save's (or the ACDC original's) frames that this one does not write: left beside
        # the new ones they read back as labelled frames of this study (an old ES frame, probe 94)
        earlier = [f.name for f in patient_image_files(folder, patientName) if f.name not in files] if folder.is_dir() else []
        if (existing or earlier) and not force:
            raise OutputExistsError(f"{folder}: would overwrite {', '.join(existing + earlier)}; {REPLACE_HINT}")
        group = group or (st.provenance or {}).get("info", {}).get("Group")   # an ACDC input keeps its group
        # said as exportResults says it ("... is not a folder"), not a NotADirectoryError traceback
        make_output_folder(folder)
        stage = Path(tempfile.mkdtemp(prefix=".cardiacaiseg-gt-", dir=folder))
        try:
            # the ACDC layout has no "no ES": a single frame is written as its own ES, the form
            # its reader takes for a one-frame study
            info = [f"ED: {ed + 1}", f"ES: {(ed if es is None else es) + 1}"] + ([f"Group: {group}"] if group else []) + [f"NbFrame: {st.n_frames}"]
            info += slice_positions_lines(st)
            (stage / "Info.cfg").write_text("\n".join(info) + "\n")
            for name, spec in files.items():
                if spec is not None:
                    _write_nifti(stage / name, spec[0], st.ijk_to_ras, spec[1], st.frame_times_s)
            for name in files:
                os.replace(stage / name, folder / name)
            if earlier:
                # replaced, not deleted: the ACDC original's ES image and expert labels are kept in a
                # folder of their own, which no reader of the patient folder takes as frames
                aside = folder / f"replaced-{time.strftime('%Y%m%d-%H%M%S')}"
                aside.mkdir(exist_ok=True)
                for name in earlier:
                    os.replace(folder / name, aside / name)
        finally:
            shutil.rmtree(stage, ignore_errors=True)
        return folder

    # -------------------------------------------------------------------------- helpers
    def _requireStudy(self):
        if self.study is None:
            raise CardiacInputError("input", "no study loaded: load a file or select an input volume/sequence")
        self._refuseRemovedInput()
        return self.study

    def _requireAnalysis(self):
        if self.analysis is None:
            raise CardiacInputError("analysis", "nothing measured yet: run the segmentation first")
        self._refuseRemovedInput()
        return self.analysis

    def _refuseRemovedInput(self):
        """The current study's input node (its sequence, or its volume) deleted from the scene (the
        Data module): its edits were measured and its results exported, run again and stamped on
        outputs made for no node, which a saved scene could not reopen (probe 103). Refused by name
        on use, as a deleted handles node is (``_handlesNode``); the study is kept, so nothing the
        user made is dropped, and loading or picking a series makes that one current."""
        nodes = self.studyNodes
        node = (nodes.sequence or nodes.volume) if nodes is not None else None
        if node is not None and not self.scene.IsNodePresent(node):
            raise CardiacInputError(node.GetName(), "the input series of this analysis was removed from the scene, so the "
                                                    "analysis is not measured, run again or saved: load (or pick) the "
                                                    "series again and run the segmentation (the output segmentations stay "
                                                    "in the scene)")

    def myocardialVoxels(self, frame):
        """Number of myocardial voxels of a frame in the live analysis (for checks and tests)."""
        return int(np.count_nonzero(self._requireAnalysis().labels[frame] == MYO))


# ------------------------------------------------------------------------------ functions
def _default_context():
    import slicer
    return sc.application_context() if hasattr(slicer, "app") else sc.new_scene()


def _check_parameter(name):
    if name not in PARAMETERS:
        raise KeyError(f"unknown parameter {name!r}; parameters: {', '.join(PARAMETERS)}")


def _corrections_replaced(previous, analysis):
    """The frames corrected by hand in ``previous`` whose labels ``analysis`` does not keep
    (a run with the study's labels or the network's); none where the run measured the edited
    segmentations themselves."""
    if previous is None or previous is analysis:
        return []
    return [t for t in sorted(previous.edited_frames)
            if t not in analysis.labels or not np.array_equal(previous.labels[t], analysis.labels[t])]


def _rest_corrections_replaced(previous, analysis):
    """True when ``previous`` had a rest mask corrected by hand that ``analysis`` does not keep."""
    before = getattr(previous, "rest", None) if previous is not None and previous is not analysis else None
    if before is None or not before.edited_frames:
        return False
    after = analysis.rest
    return after is None or any(t not in after.labels or not np.array_equal(before.labels[t], after.labels[t])
                                for t in before.edited_frames)


def _handles_replaced(previous, analysis):
    """What a new analysis drops of the RV insertion points set by hand in ``previous``: handles
    dragged on slices the new one has not, points placed by hand that it has not."""
    if previous is None or previous is analysis:
        return []
    out = []
    # named as the handles are labelled (scene.point_label: S<slice index>)
    moved = sorted({k for k, _ in previous._user_points} - {k for k, _ in analysis._user_points})
    if moved:
        out.append(f"the handles moved by hand ({', '.join(f'S{k}' for k in moved)})")
    if previous._placed is not None and analysis._placed is None:
        out.append(f"the points placed by hand (S{previous._placed[0]})")
    return out


def build_output_scene(analysis):
    """(scene context, {output file name: node}) of a finished analysis, built by the Logic in a
    fresh scene exactly as a run in Slicer shows it, parameter node included: what scene.mrb and
    the .seg.nrrd files are written from, so a saved scene reopens as the live analysis."""
    logic = CardiacAISegLogic(sc.new_scene())
    logic.adoptAnalysis(analysis)
    storables = {}
    for parameter, name in (("outputSegmentationID", "segmentation.seg.nrrd"), ("outputSegmentationESID", "segmentation_es.seg.nrrd")):
        node = logic.getNodeParameter(parameter)
        if node is not None:
            storables[name] = node
    return logic.context, storables


def _write_study_attributes(node, study):
    node.SetAttribute(STUDY_ATTRIBUTES["kind"], study.kind)
    # an AIF taken from the LV pool is taken again from the saved segmentation on reopening
    if study.aif is not None and (study.provenance or {}).get("aif_source") != "lv_blood_pool":
        node.SetAttribute(STUDY_ATTRIBUTES["aif"], " ".join(repr(float(v)) for v in study.aif))
    node.SetAttribute(STUDY_ATTRIBUTES["units"], study.units)
    if study.hematocrit is not None:
        node.SetAttribute(STUDY_ATTRIBUTES["hematocrit"], repr(float(study.hematocrit)))
    if study.ed_frame is not None and study.es_frame is not None:
        node.SetAttribute(STUDY_ATTRIBUTES["ed_es"], f"{int(study.ed_frame)} {int(study.es_frame)}")
    # an ACDC NIfTI's scaled identity is no patient direction: base and apex then come from the
    # anatomy; read back as known, a reopened scene put every AHA level upside down
    node.SetAttribute(STUDY_ATTRIBUTES["orientation_known"], "true" if study.orientation_known else "false")
    provenance = dict(study.provenance or {})
    provenance["aif_warnings"] = [w for w in provenance.get("warnings", []) if w.startswith(AIF_WARNING_START)]
    provenance["reader_warnings"] = [w for w in provenance.get("warnings", []) if not w.startswith(AIF_WARNING_START)]
    # the kind given against the file's clocks: the clocks are not in the scene, so the flag
    # (qc KIND_AGAINST_DATA) would be lost on reopening, and its QC read "pass" (review of session 42)
    provenance["kind_against_data"] = ((provenance.get("kind") or {}).get("against_data") or "")
    # the file's own voxel size, kept through later picks (a spacing changed in the scene is
    # judged against the file's, not against the last pick's)
    provenance["voxel_mm_read"] = provenance.get("voxel_mm_read") or [round(float(v), 6) for v in study.spacing]
    kept = {k: v for k, v in provenance.items()
            if k in STAMPED_PROVENANCE and v is not None and (not hasattr(v, "__len__") or len(v))}
    if kept:
        node.SetAttribute(STUDY_ATTRIBUTES["provenance"], json.dumps(kept, default=_json_ready))


_DUAL_SEQUENCE_FOLDER = re.compile(r"^dual-sequence AIF series in (.+) \(")


def _stamped_aif_path(provenance):
    """The AIF file (or dual-sequence AIF folder) a study was read with: its ``aif_path``, or for a
    scene saved before that was stamped (session 37) the path its ``aif_source`` text names, so
    such a scene still reopens with its stamped curve when the file has moved (review)."""
    if provenance.get("aif_path"):
        return provenance["aif_path"]
    source = str(provenance.get("aif_source") or "")
    match = _DUAL_SEQUENCE_FOLDER.match(source)
    if match:
        return match.group(1)
    return source if source and source not in ("array", "lv_blood_pool") and not source.startswith("dual-sequence") else None


def _same_path(a, b):
    if not a or not b:
        return False
    try:
        return Path(a).expanduser().resolve() == Path(b).expanduser().resolve()
    except OSError:
        return False


def _json_ready(value):
    """json.dumps' fallback for the readers' numpy arrays and scalars."""
    return value.tolist() if isinstance(value, (np.ndarray, np.generic)) else str(value)


SPACING_CHANGED_WARNING = "the voxel size was changed in the scene since the file was read"


def _judgeSpacingEvidenceAgain(study):
    """The file's evidence against its voxel size (PIXEL_SPACING_DISAGREES: a ReconstructionDiameter
    that contradicts PixelSpacing; VOXEL_SIZE_DISAGREES: a NIfTI header form that did) is stamped
    on the input node, since the file is not read again. Where the volume's spacing was changed in
    the scene since (the Volumes module, as the flag asks), that evidence was about a spacing no
    longer used: the flag stood after the spacing was put right, telling the user to check what
    they had just corrected. The diameter (kept from the reading whether it agreed or not) is
    asked again with the spacing there is now, at every reading, so a spacing changed wrongly is
    flagged too; the header forms decide nothing once the spacing was changed, and a warning
    says the numbers use the scene's spacing (one, for the spacing there is now)."""
    prov = study.provenance
    for key in ("warnings", "reader_warnings"):
        if prov.get(key):
            prov[key] = [w for w in prov[key] if not w.startswith(SPACING_CHANGED_WARNING)]
    check = prov.pop("pixel_spacing_check", None)
    diameter = (check or {}).get("diameter_mm") or prov.get("reconstruction_diameter_mm")
    read = prov.get("voxel_mm_read")
    if diameter:
        from .readers.dicom import MAX_FIELD_OF_VIEW_MISMATCH, spacing_against_diameter

        prov["reconstruction_diameter_mm"] = float(diameter)
        rows, columns = study.images.shape[2:4]
        # an image whose file filled the diameter is no crop: a spacing halved in the scene made
        # it look like one (a 2x matrix of 16s), and went unflagged (session 45's leftover)
        crop_possible = not read or len(read) != 3 or \
            max(rows * float(read[1]), columns * float(read[0])) < float(diameter) * (1 - MAX_FIELD_OF_VIEW_MISMATCH)
        again = spacing_against_diameter(float(diameter), rows, columns, study.spacing_rc, crop_possible)
        if again is not None:
            prov["pixel_spacing_check"] = again
    elif check:
        prov["pixel_spacing_check"] = check
    now = [float(v) for v in study.spacing]
    if not read or len(read) != 3 or np.allclose(now, read, rtol=1e-4, atol=1e-6):
        return
    prov.pop("voxel_size_check", None)
    said = " x ".join(f"{v:.4g}" for v in read), " x ".join(f"{v:.4g}" for v in now)
    prov.setdefault("warnings", []).append(f"{SPACING_CHANGED_WARNING} ({said[0]} mm as read, {said[1]} mm now): the "
                                           "volumes and mass use the scene's")


def _read_study_attributes(node):
    """{kind, aif (array), units, hematocrit, ed_es} from a stamped input node (only what is there)."""
    out = {}
    if node is None:
        return out
    get = node.GetAttribute
    if get(STUDY_ATTRIBUTES["kind"]) in (CINE, PERFUSION):
        out["kind"] = get(STUDY_ATTRIBUTES["kind"])
    try:
        if get(STUDY_ATTRIBUTES["aif"]):
            out["aif"] = np.array([float(v) for v in get(STUDY_ATTRIBUTES["aif"]).split()])
        if get(STUDY_ATTRIBUTES["hematocrit"]):
            out["hematocrit"] = float(get(STUDY_ATTRIBUTES["hematocrit"]))
        if get(STUDY_ATTRIBUTES["ed_es"]):
            out["ed_es"] = tuple(int(v) for v in get(STUDY_ATTRIBUTES["ed_es"]).split())
    except ValueError as e:
        raise CardiacInputError(node.GetName(), f"unreadable CardiacAISeg attribute on the input node ({e})")
    if get(STUDY_ATTRIBUTES["units"]) in ("signal", "gd_mmol_l"):
        out["units"] = get(STUDY_ATTRIBUTES["units"])
    if get(STUDY_ATTRIBUTES["orientation_known"]) in ("true", "false"):
        out["orientation_known"] = get(STUDY_ATTRIBUTES["orientation_known"]) == "true"
    if get(STUDY_ATTRIBUTES["provenance"]):
        try:
            stamped = json.loads(get(STUDY_ATTRIBUTES["provenance"]))
        except ValueError as e:
            raise CardiacInputError(node.GetName(), f"unreadable CardiacAISeg attribute on the input node ({e})")
        out["provenance"] = {k: v for k, v in stamped.items() if k in STAMPED_PROVENANCE}
    return out


def _sequence_of(ctx, node):
    if node.IsA("vtkMRMLSequenceNode"):
        return node
    browser = ctx.sequences_logic.GetFirstBrowserNodeForProxyNode(node) if ctx.sequences_logic else None
    return browser.GetSequenceNode(node) if browser is not None else None


def _proxy_of(ctx, sequence):
    for n in range(ctx.scene.GetNumberOfNodesByClass("vtkMRMLSequenceBrowserNode")):
        browser = ctx.scene.GetNthNodeByClass(n, "vtkMRMLSequenceBrowserNode")
        if browser.IsSynchronizedSequenceNode(sequence, True):
            return browser.GetProxyNode(sequence)
    return None


def _frame_times(sequence, n_frames, frame_time_s, provenance):
    """The sequence's index values as seconds from the first frame, else ``frame_time_s`` steps
    (the module's frame-time parameter), else None. Index values 0, 1, 2 ... s are an ITK
    writer's placeholder (a sequence loaded from such a NIfTI file), said in ``provenance``,
    unless this module made the sequence from times its readers read (``sc.FRAME_TIMES_ATTRIBUTE``),
    or the times it kept beside frame numbers (``sc.FRAME_TIMES_S_ATTRIBUTE``)."""
    from .readers.volume import ignore_placeholder_times

    kept = sequence.GetAttribute(sc.FRAME_TIMES_S_ATTRIBUTE) if sequence is not None else None
    if kept and sequence.GetIndexUnit().strip() == "" and n_frames > 1:
        try:
            times = np.array([float(v) for v in kept.split()])
        except ValueError:
            times = None
        if times is not None and times.size == n_frames and np.all(np.isfinite(times)):
            return times - times[0]
    if sequence is not None and n_frames > 1:
        scale = {"s": 1.0, "sec": 1.0, "ms": 1e-3}.get(sequence.GetIndexUnit().strip().lower())
        if scale is not None:
            try:
                times = np.array([float(sequence.GetNthIndexValue(n)) for n in range(n_frames)]) * scale
            except ValueError:
                times = None
            if times is not None and not sequence.GetAttribute(sc.FRAME_TIMES_ATTRIBUTE):
                times = ignore_placeholder_times(times, provenance)
            if times is not None:
                return times - times[0]
    if frame_time_s > 0:
        provenance["frame_times_from_interval"] = True
        return np.arange(n_frames) * frame_time_s
    return None


def _write_nifti(path, array_tkji, ijk_to_ras, dtype, frame_times=None):
    import nibabel as nib

    data = np.asarray(array_tkji).transpose(3, 2, 1, 0)
    if data.shape[-1] == 1:
        data = data[..., 0]
    img = nib.Nifti1Image(data.astype(dtype), np.asarray(ijk_to_ras, float))
    img.header.set_xyzt_units("mm", "sec")
    if data.ndim == 4 and frame_times is not None and len(frame_times) > 1:
        img.header.set_zooms(img.header.get_zooms()[:3] + (float(np.median(np.diff(frame_times))),))
    nib.save(img, str(path))


def fill_table(node, rows):
    """Refill a results table made by ``scene.add_results_table`` in place (same node, same
    columns), so table views and observers stay attached; one Modified at the end."""
    table = node.GetTable()
    cols = [table.GetColumnByName(c) for c in sc.TABLE_COLUMNS]
    if any(c is None for c in cols):
        raise ValueError(f"table {node.GetName()!r} lacks one of the columns {sc.TABLE_COLUMNS}")
    measure, value, unit = cols
    wasModifying = node.StartModify()
    for array in cols:
        array.SetNumberOfValues(len(rows))
    for i, row in enumerate(rows):
        v = row.get("value")
        measure.SetValue(i, str(row["measure"]))
        value.SetValue(i, float("nan") if v is None else float(v))
        unit.SetValue(i, str(row.get("unit") or ""))
    units = {str(r.get("unit") or "") for r in rows}
    node.SetColumnUnitLabel("Value", units.pop() if len(units) == 1 else "")
    for array in cols:
        array.Modified()
    table.Modified()
    node.Modified()
    node.EndModify(wasModifying)


def fill_segmentation(node, label_map, ijk_to_ras):
    """Replace the content of a segmentation made by ``scene.add_segmentation`` in place: one
    new shared labelmap layer for all three segments (the node, its ID and display stay)."""
    import slicer

    from .labels import SEGMENTS, SEGMENT_IDS

    image = sc._oriented_image(label_map, ijk_to_ras)
    seg = node.GetSegmentation()
    binary = slicer.vtkSegmentationConverter.GetBinaryLabelmapRepresentationName()
    for name, (value, colour) in SEGMENTS.items():
        sids = sc._segment_ids(seg, name)
        for extra in sids[1:]:   # a second segment of the structure would keep its old voxels beside the new map
            seg.RemoveSegment(extra)
        sid = sids[0] if sids else None
        segment = seg.GetSegment(sid) if sid else None
        if segment is None:
            segment = slicer.vtkSegment()
            segment.SetName(name)
            segment.SetColor(*colour)
            seg.AddSegment(segment, SEGMENT_IDS[name])
        segment.AddRepresentation(binary, image)
        segment.SetLabelValue(value)
    seg.InvokeEvent(slicer.vtkSegmentation.SourceRepresentationModified)
    return node


def model_summary(card):
    """'cine · trained on ACDC (100 patients) · Dice LV 0.93 myo 0.86 RV 0.89 · licence CC-BY'."""
    parts = [card.get("task", "?")]
    data = card.get("training_data") or card.get("data") or card.get("trained_on")
    if isinstance(data, dict):
        data = data.get("name") or data.get("description") or ", ".join(f"{k}: {v}" for k, v in data.items())
    if isinstance(data, (list, tuple)):
        data = ", ".join(str(d.get("name", d)) if isinstance(d, dict) else str(d) for d in data)
    if data:
        parts.append(f"trained on {data}")
    metrics = card.get("metrics") or {}
    dice = [f"{k[5:].upper() if k[5:] in ('lv', 'rv') else k[5:]} {v:.2f}" for k, v in metrics.items()
            if k.startswith("dice_") and k.count("_") == 1 and isinstance(v, (int, float))]
    if dice:
        parts.append("Dice " + " ".join(dice))
    if card.get("licence"):
        parts.append(f"licence {card['licence']}")
    from .models.registry import disagreement_at_import

    disagreed = disagreement_at_import(card)
    if disagreed:   # the selector offered such a model like any other (probe 80)
        parts.append(f"disagreed at import: {disagreed}")
    return " · ".join(parts)
