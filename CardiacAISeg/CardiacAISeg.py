"""CardiacAISeg: review, correct and report short-axis cardiac MRI segmentation inside 3D Slicer.

A thin Qt layer: every button calls a documented method of ``CardiacAISegLogic``
(``CardiacAISegLib/logic.py``), which runs the same way headless. The engine (numpy, scipy,
matplotlib, torch) is imported only when the module is used, never when Slicer starts.
"""
import contextlib
import importlib.util
import logging
import os

import ctk
import qt
import slicer
import vtk
from slicer.ScriptedLoadableModule import ScriptedLoadableModule, ScriptedLoadableModuleTest, ScriptedLoadableModuleWidget
from slicer.util import VTKObservationMixin

# Every widget the code names, with its class in the .ui (Testing/Python/test_ui.py checks both).
UI_WIDGETS = {
    "inputSelector": "qMRMLNodeComboBox", "loadPathLineEdit": "ctkPathLineEdit", "loadButton": "QPushButton",
    "kindComboBox": "QComboBox", "detectedKindLabel": "QLabel", "aifPathLineEdit": "ctkPathLineEdit",
    "frameTimeSpinBox": "QDoubleSpinBox", "restSelector": "qMRMLNodeComboBox", "restAifPathLineEdit": "ctkPathLineEdit",
    "restFrameTimeSpinBox": "QDoubleSpinBox",
    "modelComboBox": "QComboBox", "modelInfoLabel": "QLabel", "framesComboBox": "QComboBox",
    "useLabelsCheckBox": "QCheckBox", "densitySpinBox": "QDoubleSpinBox",
    "outputSegmentationSelector": "qMRMLNodeComboBox", "applyButton": "QPushButton", "cancelButton": "QPushButton",
    "progressBar": "QProgressBar", "statusLabel": "QLabel", "segmentEditorWidget": "qMRMLSegmentEditorWidget",
    "markupsSelector": "qMRMLNodeComboBox", "updateTimeLabel": "QLabel", "tableSelector": "qMRMLNodeComboBox",
    "tableView": "qMRMLTableView", "bullseyeMeasureComboBox": "QComboBox", "bullseyeLabel": "QLabel",
    "showReportButton": "QPushButton",
    "agreementButton": "QPushButton", "agreementLabel": "QLabel", "reportScrollArea": "QScrollArea",
    "reportLabel": "QLabel", "outputDirectoryLineEdit": "ctkPathLineEdit", "overwriteCheckBox": "QCheckBox",
    "exportButton": "QPushButton", "groundTruthNameLineEdit": "QLineEdit", "saveGroundTruthButton": "QPushButton",
}
# import name -> pip name of what the engine needs besides Slicer's own numpy/vtk.
# import name -> pip requirement, with the lower bounds of pyproject.toml. ONNX Runtime runs the
# shipped networks on a CPU, so PyTorch (SlicerPyTorch) is asked for only for a TorchScript model.
PYTHON_PACKAGES = {"scipy": "scipy>=1.10", "nibabel": "nibabel>=5.0", "pydicom": "pydicom>=2.4", "gdcm": "python-gdcm>=3.0.22",
                   "nrrd": "pynrrd>=1.0",
                   "matplotlib": "matplotlib>=3.7", "tqdm": "tqdm>=4.60", "threadpoolctl": "threadpoolctl>=3.1",
                   "onnxruntime": "onnxruntime>=1.17"}
_declinedInstall = False   # asked once per session: no nagging after a "Cancel"
_moduleLogic = None


#
# CardiacAISeg
#
class CardiacAISeg(ScriptedLoadableModule):
    def __init__(self, parent):
        ScriptedLoadableModule.__init__(self, parent)
        self.parent.title = "CardiacAISeg"
        self.parent.categories = ["Cardiac"]
        self.parent.dependencies = ["Sequences", "Segmentations", "Markups", "Tables"]
        self.parent.contributors = ["CardiacAISeg contributors"]
        self.parent.helpText = """
Segment short-axis cardiac MRI (cine or first-pass perfusion) with a network from the model
registry, correct it with the Segment Editor, drag the RV insertion points, and read LV/RV
volumes, EF, LV mass, AHA wall thickness or myocardial blood flow from the results table.
Every result updates as you edit. Export CSV/JSON/report, or save the corrected segmentation as
ACDC-layout ground truth for retraining. Try it with Sample Data &gt; CardiacAISeg (phantoms with
exact truth, no download).
See the <a href="https://github.com/CardiacAISeg/SlicerCardiacAISeg/blob/main/docs/user-guide.md">user guide</a>.
"""
        self.parent.acknowledgementText = """
Method background: H. Xue et al., "Automated inline analysis of myocardial perfusion MRI with deep
learning", Radiology: Artificial Intelligence 2020; Y. Li, "Myocardial segmentation of perfusion MRI:
gamma-Net versus a lightweight U-Net", MS thesis, UC San Diego 2020; M. J. Ankenbrand et al., "Deep
learning-based cardiac cine segmentation: transfer learning application to 7T ultrahigh-field MRI",
Magnetic Resonance in Medicine 2021; ML4H UK Biobank LV mass (machine learning for health, UK Biobank
cardiac MR). Data: ACDC - O. Bernard et al., IEEE Transactions on Medical Imaging 2018; Sunnybrook
Cardiac Data - P. Radau et al., MIDAS Journal 2009; QPerf perfusion examples - H. Xue et al.,
Magnetic Resonance in Medicine 2020. Built on 3D Slicer (Segment Editor, Sequences, Markups).
"""
        slicer.app.connect("startupCompleted()", registerSampleData)


def moduleLogic():
    """One Logic for the widget and the sample-data loader, so a loaded phantom keeps its labels."""
    global _moduleLogic
    if _moduleLogic is None or _moduleLogic.scene is not slicer.mrmlScene:
        from CardiacAISegLib.logic import CardiacAISegLogic
        _moduleLogic = CardiacAISegLogic()
    return _moduleLogic


#
# Sample data: phantoms generated on first use (nothing to download)
#
# the output segmentations the Segment Editor may correct: ED, ES (or the perfusion mask) and
# the rest series' mask, whose edit re-measures the MPR and MPRI
EDITABLE_SEGMENTATIONS = ("outputSegmentationID", "outputSegmentationESID", "restSegmentationID")
SUNNYBROOK = os.path.join(os.path.dirname(__file__), "Resources", "SampleData", "sunnybrook-SC-HF-I-1-ed-es")


def _phantomFolder(kind):
    return os.path.join(slicer.app.temporaryPath, "CardiacAISeg", f"phantom_{kind}")


def registerSampleData():
    import pathlib

    import SampleData

    iconsPath = os.path.join(os.path.dirname(__file__), "Resources", "Icons")
    for kind, title in (("cine", "Cine"), ("perfusion", "Perfusion")):
        fileName = f"{kind}.nii.gz"
        SampleData.SampleDataLogic.registerCustomSampleDataSource(
            category="CardiacAISeg", sampleName=f"CardiacAISegPhantom{title}",
            # The loader below writes the file first; the URI only names where it lands.
            uris=[pathlib.Path(_phantomFolder(kind), fileName).as_uri()], fileNames=[f"CardiacAISeg-{fileName}"],
            nodeNames=[f"Phantom {kind}"], thumbnailFileName=os.path.join(iconsPath, f"CardiacAISegPhantom{title}.png"),
            loadFileType="VolumeFile", customDownloader=loadPhantomSample)
    # Shipped with the extension (CC0): real ED/ES frames with manual LV contours.
    SampleData.SampleDataLogic.registerCustomSampleDataSource(
        category="CardiacAISeg", sampleName="CardiacAISegSunnybrook",
        uris=[pathlib.Path(SUNNYBROOK, "dicom").as_uri()], fileNames=["CardiacAISeg-sunnybrook"],
        nodeNames=["Sunnybrook SC-HF-I-1"], thumbnailFileName=os.path.join(iconsPath, "CardiacAISegSunnybrook.png"),
        loadFileType="VolumeFile", customDownloader=loadSunnybrookSample)


def loadPhantomSample(source):
    """SampleData's button: write the phantom once, load it with labels (and AIF), return nodes."""
    kind = "perfusion" if source.sampleName.endswith("Perfusion") else "cine"
    if not ensureDependencies():
        return []
    logic = moduleLogic()
    with _showErrors(f"Could not create the {kind} phantom.", waitCursor=True):
        nodes = logic.loadSamplePhantom(kind, _phantomFolder(kind))
        # The phantom's true labels make the demo work before any model is installed.
        logic.setParameter("useExistingLabels", "true")
        slicer.util.setSliceViewerLayers(background=nodes.volume, fit=True)
        return [nodes.volume]
    return []


def loadSunnybrookSample(source):
    """SampleData's button for the shipped Sunnybrook ED/ES frames and their LV contours."""
    if not ensureDependencies():
        return []
    logic = moduleLogic()
    with _showErrors("Could not read the Sunnybrook sample.", waitCursor=True):
        nodes = logic.loadStudy(os.path.join(SUNNYBROOK, "dicom"), labels=os.path.join(SUNNYBROOK, "contours"))
        logic.setParameter("useExistingLabels", "true")
        slicer.util.setSliceViewerLayers(background=nodes.volume, fit=True)
        return [nodes.volume]
    return []


#
# Dependencies: asked for once, installed with Slicer's pip helper; torch via SlicerPyTorch
#
def missingPackages():
    return [pip for module, pip in PYTHON_PACKAGES.items() if importlib.util.find_spec(module) is None]


def ensureDependencies(needTorch=False):
    """True when the engine can run; offers to install what is missing (one question)."""
    global _declinedInstall
    missing = missingPackages()
    if missing:
        if _declinedInstall:
            slicer.util.errorDisplay("CardiacAISeg needs these Python packages: " + ", ".join(missing))
            return False
        if not slicer.util.confirmOkCancelDisplay(
                "CardiacAISeg needs these Python packages, which are not installed yet:\n\n  " + ", ".join(missing)
                + "\n\nInstall them now (pip, a few minutes)?", windowTitle="CardiacAISeg dependencies"):
            _declinedInstall = True
            return False
        try:
            with slicer.util.WaitCursor():
                slicer.util.pip_install(" ".join(f'"{m}"' for m in missing))
        except Exception as e:   # offline, no write access, a proxy: say so here, not only in the console
            slicer.util.errorDisplay("Could not install " + ", ".join(missing) + ":\n\n" + str(e)
                                     + "\n\nInstall them from Slicer's Python console with pip when online.",
                                     windowTitle="CardiacAISeg dependencies")
            return False
        still = missingPackages()
        if still:
            slicer.util.errorDisplay("These packages are still missing after pip: " + ", ".join(still))
            return False
    if needTorch and importlib.util.find_spec("torch") is None:
        try:
            import PyTorchUtils
        except ImportError:
            slicer.util.errorDisplay(
                "Running a network needs PyTorch. Install the 'PyTorch' extension (SlicerPyTorch) from the "
                "Extensions Manager and restart Slicer; or tick 'Measure the labels that came with the study'.")
            return False
        if PyTorchUtils.PyTorchUtilsLogic().installTorch(askConfirmation=True) is None:
            return False
    return True


#
# CardiacAISegWidget
#
class CardiacAISegWidget(ScriptedLoadableModuleWidget, VTKObservationMixin):
    def __init__(self, parent=None):
        ScriptedLoadableModuleWidget.__init__(self, parent)
        VTKObservationMixin.__init__(self)
        self.logic = None
        self._parameterNode = None
        self._updatingGUI = False
        self._updatingNodes = False     # the Logic is writing nodes: ignore their events
        self._progress = None
        self._job = None                # the background analysis (CardiacAISegLib.background) while it runs
        self._jobInput = None           # the inputNodeID the job was started for
        self._beforeImport = None       # the live analysis' outputs and parameters when a scene import began
        self._jobTimer = None
        self._observedSegmentations = []
        self._observedMarkups = None
        self._editTimer = None
        self._pendingEdits = set()

    def setup(self):
        ScriptedLoadableModuleWidget.setup(self)
        uiWidget = slicer.util.loadUI(self.resourcePath("UI/CardiacAISeg.ui"))
        self.layout.addWidget(uiWidget)
        self.ui = slicer.util.childWidgetVariables(uiWidget)
        uiWidget.setMRMLScene(slicer.mrmlScene)
        self.logic = moduleLogic()

        from CardiacAISegLib.logic import PARAMETER_CHOICES
        self._choices = PARAMETER_CHOICES
        self._bound = [w for w in uiWidget.findChildren(qt.QWidget) if w.property("SlicerParameterName")]
        for w in self._bound:
            _connectChanged(w, self.updateParameterNodeFromGUI)

        for pathEdit in (self.ui.outputDirectoryLineEdit,):
            pathEdit.filters = ctk.ctkPathLineEdit.Dirs | ctk.ctkPathLineEdit.Writable
        # the results table and the insertion handles are the module's own nodes, shown, not
        # chosen: a point list or table picked there was overwritten or refused (probe 79)
        for selector in (self.ui.markupsSelector, self.ui.tableSelector):
            selector.enabled = False
            selector.toolTip = "Made by the module when it measures; shown here, not chosen."
        self.ui.progressBar.setVisible(False)
        self.ui.reportScrollArea.setVisible(False)
        self.ui.segmentEditorWidget.setMRMLSegmentEditorNode(self._segmentEditorNode())

        self.ui.loadButton.connect("clicked(bool)", self.onLoadButton)
        self.ui.applyButton.connect("clicked(bool)", self.onApplyButton)
        self.ui.cancelButton.connect("clicked(bool)", self.onCancelButton)
        self.ui.showReportButton.connect("clicked(bool)", self.onShowReport)
        self.ui.agreementButton.connect("clicked(bool)", self.onAgreement)
        self.ui.exportButton.connect("clicked(bool)", self.onExport)
        self.ui.saveGroundTruthButton.connect("clicked(bool)", self.onSaveGroundTruth)
        self.ui.kindComboBox.connect("currentIndexChanged(int)", lambda i: self.refreshModels())
        self.ui.bullseyeMeasureComboBox.connect("currentIndexChanged(int)", self.onBullseyeMeasureChanged)
        self.ui.modelComboBox.connect("currentIndexChanged(int)", self.showModelCard)
        self.ui.inputSelector.connect("currentNodeChanged(vtkMRMLNode*)", self.onInputChanged)
        self.ui.segmentEditorWidget.connect("segmentationNodeChanged(vtkMRMLSegmentationNode*)", self.onEditedSegmentationChanged)

        self.addObserver(slicer.mrmlScene, slicer.mrmlScene.StartCloseEvent, self.onSceneStartClose)
        self.addObserver(slicer.mrmlScene, slicer.mrmlScene.EndCloseEvent, self.onSceneEndClose)
        self.addObserver(slicer.mrmlScene, slicer.mrmlScene.StartImportEvent, self.onSceneStartImport)
        self.addObserver(slicer.mrmlScene, slicer.mrmlScene.EndImportEvent, self.onSceneEndImport)
        self.initializeParameterNode()
        self.refreshModels()

    def cleanup(self):
        self._stopJob()
        self._stopEditTimer()
        self.removeObservers()

    def enter(self):
        self.initializeParameterNode()
        inputNode = self.logic.getNodeParameter("inputNodeID")
        if self.logic.analysis is None and inputNode is not None and not self.logic.isCurrentStudyNode(inputNode) \
                and not self._isRunning():
            # a scene loaded before this module was first opened (a study read here, by Load or
            # the input box, is not read again: that lost the labels that came with it; probe 79)
            self._restoreAnalysis()
        # as Slicer's Segment Editor module: shortcuts and view observations only while shown
        self.ui.segmentEditorWidget.installKeyboardShortcuts()
        self.ui.segmentEditorWidget.setupViewObservations()
        self.ui.segmentEditorWidget.updateWidgetFromMRML()

    def exit(self):
        # leaving the module must not leave Paint or Erase active in the views
        self.ui.segmentEditorWidget.setActiveEffect(None)
        self.ui.segmentEditorWidget.uninstallKeyboardShortcuts()
        self.ui.segmentEditorWidget.removeViewObservations()
        if self._parameterNode is not None:
            self.removeObserver(self._parameterNode, vtk.vtkCommand.ModifiedEvent, self.updateGUIFromParameterNode)
            # observed again by the next enter(); removed twice, VTKObservationMixin warns (probe 79)
            self._parameterNode = None

    def onSceneStartClose(self, caller, event):
        self._stopJob()          # a result must never be written into the next scene
        if self._progress is not None:
            self._progress.cancel()   # the labels run in this process stops at its next step
        self._stopEditTimer()
        self.setParameterNode(None)
        self._observeOutputs(clear=True)
        self.logic.reset()
        self._setRunning(False)
        self._clearResults()

    def onSceneEndClose(self, caller, event):
        if self.parent.isEntered:
            self.initializeParameterNode()

    def onSceneStartImport(self, caller, event):
        # what the live analysis is, before an added scene's parameter node can replace it
        self._beforeImport = self.logic.liveAnalysisState() if self.logic is not None else None

    def onSceneEndImport(self, caller, event):
        """A loaded scene brings its parameter node: rebuild the analysis it describes. Data
        added to a scene whose live analysis still has its input (File > Add Data of another
        scene or file) leaves that analysis as it is: rebuilt from the nodes, it would lose the
        network's own output, the labelled frames and the volume curve.

        A scene added with a parameter node of its own replaces the parameter node's input and
        outputs: that study is then the one shown, rebuilt (its outputs stamped for their input
        again, which the import renamed), and the analysis it displaced keeps its record, so
        picking its input brings it back. Kept as "the run goes on" or "the live analysis
        stays", the panel showed the added study's table beside the live study's segmentation,
        a handle drag wrote one study's numbers into the other's table, and an edit was
        measured nowhere (probe 100)."""
        before, self._beforeImport = self._beforeImport, None
        inputID = self.logic.getParameter("inputNodeID")
        if self.logic.analysis is not None and self.logic.isCurrentStudyNode(self.logic.getNodeParameter("inputNodeID")):
            return
        if self._isRunning() and self._jobInput and inputID == self._jobInput and \
                slicer.mrmlScene.GetNodeByID(self._jobInput) is not None:
            return   # data added during a first run: the run goes on for its input, which is still there
        displaced = before is not None and before["input"] != inputID
        if displaced:
            self.logic.keepLeftAnalysis(before)
        said = []
        if self._isRunning():
            # its input went with the import: the panel was left half "running" (Cancel doing nothing)
            runInputThere = bool(self._jobInput) and slicer.mrmlScene.GetNodeByID(self._jobInput) is not None
            self._stopJob()
            if self._progress is not None:
                self._progress.cancel()
            self._setRunning(False)
            said.append("Stopped: a scene added with an analysis of its own replaced the input the run was for; pick "
                        "it and run again." if runInputThere else "Stopped: the scene the run was started for was replaced.")
        self.logic = moduleLogic()
        if self.logic.study is not None and not self.logic.isCurrentStudyNode(self.logic.getNodeParameter("inputNodeID")):
            # the parameter node names another input now: the study held (and its views) is not
            # what the panel shows any more; left live, an edit of its segmentation, still in the
            # editor, was measured nowhere (review of session 45). Its record was kept above.
            self.logic.reset()
            self._clearResultViews()
        self.initializeParameterNode()
        self._restoreAnalysis()
        if displaced:
            said.append("Showing the analysis of the scene added;" if self.logic.analysis is not None else
                        "The scene added names a study with no analysis yet;")
            said.append("the previous study's comes back when its input is picked.")
        if said:
            self.ui.statusLabel.text = " ".join(said)

    def _restoreAnalysis(self):
        """The analysis a scene's parameter node describes, made live (editable, handles) again;
        also on the first ``enter`` after a scene was loaded before the module was opened."""
        with _showErrors("Could not restore the CardiacAISeg analysis of this scene."):
            self._updatingNodes = True
            try:
                restored = self.logic.restoreFromParameterNode()
            finally:
                self._updatingNodes = False
            if restored is not None:
                self._showResults()

    # -------------------------------------------------------------- parameter node <-> GUI
    def initializeParameterNode(self):
        self.setParameterNode(self.logic.parameterNode())

    def setParameterNode(self, node):
        if self._parameterNode is not None:
            self.removeObserver(self._parameterNode, vtk.vtkCommand.ModifiedEvent, self.updateGUIFromParameterNode)
        self._parameterNode = node
        if node is not None:
            self.addObserver(node, vtk.vtkCommand.ModifiedEvent, self.updateGUIFromParameterNode)
        self.updateGUIFromParameterNode()

    def updateGUIFromParameterNode(self, caller=None, event=None):
        if self._parameterNode is None or self._updatingGUI:
            return
        self._updatingGUI = True
        try:
            for w in self._bound:
                name = w.property("SlicerParameterName")
                _setWidgetValue(w, self.logic.getParameter(name), self._choices.get(name))
            # the view shows the table the module writes (after a run, an edit, or a table made anew)
            if self.ui.tableView.mrmlTableNode() is not self.logic.getNodeParameter("tableID"):
                self.ui.tableView.setMRMLTableNode(self.logic.getNodeParameter("tableID"))
            # an input in the scene: a study whose node was deleted ran and said "Done." on nodes
            # no saved scene could reopen (probe 79)
            ready = self.ui.inputSelector.currentNode() is not None or self.logic.getNodeParameter("inputNodeID") is not None
            self.ui.applyButton.enabled = ready and not self._isRunning()
            hasResults = self.logic.analysis is not None
            if not hasResults and getattr(self, "_resultsShown", False):
                # another study read over the one shown (the Load button, Sample Data): its editor
                # kept editing the first study's segmentation, unmeasured, beside its bullseye and
                # report (probe 99)
                self._clearResultViews()
            for button in (self.ui.showReportButton, self.ui.exportButton, self.ui.saveGroundTruthButton):
                button.enabled = hasResults
            self.ui.agreementButton.enabled = hasResults and bool(self.logic.networkLabels)
        finally:
            self._updatingGUI = False

    def updateParameterNodeFromGUI(self, *args):
        if self._parameterNode is None or self._updatingGUI:
            return
        edited = self.logic.getParameter("outputSegmentationID")
        wasModifying = self._parameterNode.StartModify()
        try:
            for w in self._bound:
                name = w.property("SlicerParameterName")
                self.logic.setParameter(name, _widgetValue(w, self._choices.get(name)))
        finally:
            self._parameterNode.EndModify(wasModifying)
        if self.logic.getParameter("outputSegmentationID") != edited and self.logic.analysis is not None:
            # strokes in another segmentation picked there went unmeasured: its edits are watched now
            self._observeOutputs()

    # ------------------------------------------------------------------------- input
    def onInputChanged(self, node):
        if node is None or self._updatingNodes or self._updatingGUI:
            # _updatingGUI: the box set from the parameter node (a scene loaded or imported), not
            # a pick: read as a new input, an imported scene's outputs, stamped with node IDs the
            # import had renamed, were let go and its analysis not restored (probe 79)
            return
        if (node.IsA("vtkMRMLSequenceNode") and node.GetNumberOfDataNodes() == 0) or \
                (node.IsA("vtkMRMLScalarVolumeNode") and node.GetImageData() is None):
            # a node still being filled (Sample Data adds the sequence before its frames, and the
            # combo box picks the first node added to an empty scene): nothing to read yet
            return
        if not self.logic.isCurrentStudyNode(node):
            self._clearResults()   # the panel's table, bullseye and report were the previous input's
        with _showErrors("Could not read the selected input."):
            picked = not self.logic.isCurrentStudyNode(node)
            study = self.logic.studyFromNode(node) if picked else self.logic.study
            self.ui.detectedKindLabel.text = self.logic.kindText(study)
            self.refreshModels()
            if picked and self.logic.analysis is not None:
                # an input picked again whose outputs the Logic brought back: shown and observed as
                # after a run, so an edit of them is measured (probe 99)
                self._showResults()

    def onLoadButton(self):
        path = self.ui.loadPathLineEdit.currentPath
        if not path:
            self.ui.statusLabel.text = "Choose a file or folder to read first."
            return
        if not ensureDependencies():
            return
        options = {}
        aif = self.logic.aifPathForLoad(path)
        if aif:
            options["aif"] = aif
        dropped = self.logic.getParameter("aifPath") if not aif else ""
        if self.ui.frameTimeSpinBox.value > 0:
            options["dt"] = self.ui.frameTimeSpinBox.value
        with _showErrors(f"Could not read {path}.", waitCursor=True):
            self._updatingNodes = True
            try:
                nodes = self.logic.loadStudy(path, **options)
            finally:
                self._updatingNodes = False
            self.ui.inputSelector.setCurrentNode(nodes.sequence or nodes.volume)
            slicer.util.setSliceViewerLayers(background=nodes.volume, fit=True)
            self.ui.detectedKindLabel.text = self.logic.kindText() + (" · labels found" if self.logic.study.labels else "")
            self.refreshModels()
            notes = ([f"The AIF file box held the previous study's AIF ({dropped}): not used for this file; to use it, "
                      "choose it in the box now (it is read at the next Apply)."] if dropped else []) + self.logic.loadNotes()
            self.ui.statusLabel.text = " ".join(["Loaded."] + notes)

    def refreshModels(self):
        """Fill the model selector from the registry for the chosen or detected kind."""
        kind = self.logic.getParameter("kind")
        if kind == "auto":
            kind = self.logic.study.kind if self.logic.study is not None else "cine"
        try:
            cards = self.logic.availableModels(kind)
        except Exception as e:   # a broken registry must not break the module panel
            logging.warning(f"CardiacAISeg: cannot list models: {e}")
            cards = []
        wanted = self.logic.getParameter("modelName")
        wasUpdating, self._updatingGUI = self._updatingGUI, True   # may run inside a GUI update
        try:
            self.ui.modelComboBox.clear()
            for card in cards:
                self.ui.modelComboBox.addItem(card["name"])
                self.ui.modelComboBox.setItemData(self.ui.modelComboBox.count - 1, card["summary"], qt.Qt.ToolTipRole)
            index = self.ui.modelComboBox.findText(wanted)
            if index < 0:
                # none chosen (or one no longer installed): the task's default, as the CLI and the web
                # page run it, not the first listed (gammanet, alphabetically; probe 95)
                index = next((i for i, card in enumerate(cards) if card.get("default")), 0 if cards else -1)
            self.ui.modelComboBox.setCurrentIndex(index)
        finally:
            self._updatingGUI = wasUpdating
        self._modelCards, self._modelKind = cards, kind
        self.showModelCard()
        if not wasUpdating:
            self.logic.setParameter("modelName", self.ui.modelComboBox.currentText if cards else "")

    def showModelCard(self, index=None):
        """The selected model's card under the selector: task, training data, metrics, licence."""
        cards = getattr(self, "_modelCards", [])
        index = self.ui.modelComboBox.currentIndex if index is None else index
        if cards and 0 <= index < len(cards):
            self.ui.modelInfoLabel.text = f"{cards[index]['title']}\n{cards[index]['summary']}"
        else:
            self.ui.modelInfoLabel.text = (f"No {getattr(self, '_modelKind', 'cine')} model is installed: tick 'Measure the "
                                           "labels that came with the study', or import one (cardiacaiseg import-model).")

    # --------------------------------------------------------------------------- run
    def onApplyButton(self):
        """Measuring labels that came with the study is quick and runs here; a network runs in a
        background process (Logic.startAnalysis) polled by a timer, so Slicer stays live and
        Cancel stops it at once."""
        from CardiacAISegLib.errors import CancelledError

        if self._isRunning():   # one run at a time: a second would leave the first out of Cancel's reach
            return
        useLabels = self.ui.useLabelsCheckBox.checked
        if not ensureDependencies(needTorch=False):
            return
        node = self.ui.inputSelector.currentNode()
        self.ui.statusLabel.text = ""
        inputRead = False
        with _showErrors("CardiacAISeg could not segment and measure this series."):
            if node is not None and not self.logic.isCurrentStudyNode(node):
                self.logic.studyFromNode(node)
            if not useLabels:
                if self.logic.modelNeedsTorch() and not ensureDependencies(needTorch=True):
                    return
                self._jobInput = self.logic.getParameter("inputNodeID")
                self._job = self.logic.startAnalysis()
                self._setRunning(True)
                if self._jobTimer is None:
                    self._jobTimer = qt.QTimer()
                    self._jobTimer.setInterval(100)
                    self._jobTimer.connect("timeout()", self._pollJob)
                self._jobTimer.start()
                return
            inputRead = True
        if not inputRead:
            # the error was shown; measuring now would measure the previous input and say "Done."
            self.ui.statusLabel.text = "Failed: see the error message."
            return
        self._progress = self._newProgress()
        # the input this run measures: data added while it runs (Slicer handles events between
        # its steps) is told from a scene that replaced it by this (review of session 45)
        self._jobInput = self.logic.getParameter("inputNodeID")
        self._setRunning(True)
        outcome = "Failed: see the error message."
        try:
            with _showErrors("CardiacAISeg could not measure this series."):
                self._updatingNodes = True
                try:
                    self.logic.runSegmentation(useExistingLabels=True, progress=self._progress)
                except CancelledError:
                    outcome = "Cancelled: the previous results are unchanged."
                    return
                finally:
                    self._updatingNodes = False
                self._showResults()
                outcome = "Done. " + " ".join(self.logic.warningsInModuleTerms(self.logic.analysis.warnings))
        finally:
            self._progress = None
            self._setRunning(False)
            self.ui.statusLabel.text = outcome

    def onEditedSegmentationChanged(self, node):
        """The ED or ES segmentation chosen in the editor: show its frame (Logic.selectSegmentationForEditing)."""
        if not self._updatingNodes:
            self.logic.selectSegmentationForEditing(node)

    def _pollJob(self):
        job = self._job
        if job is None:
            return
        from CardiacAISegLib.pipeline import run_percent

        job.poll()
        # one bar for the whole run, never going back (a stress+rest run went 0-100 % twice)
        self.ui.progressBar.maximum = 100
        self.ui.progressBar.value = max(self.ui.progressBar.value, round(run_percent(job.done, job.total, job.message)))
        self.ui.statusLabel.text = job.message
        if job.state == "running":
            return
        self._jobTimer.stop()
        self._job = None
        outcome = "Failed: see the error message."
        try:
            with _showErrors("CardiacAISeg could not segment and measure this series."):
                analysis = job.result()   # a failed job raises its error here, shown in the box
                self._updatingNodes = True
                try:
                    # refused when another input was picked meanwhile: not shown on its nodes
                    self.logic.applyAnalysis(analysis, forInput=self._jobInput)
                finally:
                    self._updatingNodes = False
                self._showResults()
                outcome = "Done. " + " ".join(self.logic.warningsInModuleTerms(analysis.warnings))
        finally:
            self._setRunning(False)
            self.ui.statusLabel.text = outcome

    def _stopJob(self):
        if self._jobTimer is not None:
            self._jobTimer.stop()
        if self._job is not None:
            self._job.cancel()
            self._job = None

    def _stopEditTimer(self):
        if self._editTimer is not None:
            self._editTimer.stop()
        self._pendingEdits.clear()

    def _newProgress(self):
        from CardiacAISegLib.pipeline import run_percent
        from CardiacAISegLib.progress import Progress

        def onProgress(done, total, message):
            self.ui.progressBar.maximum = 100
            self.ui.progressBar.value = max(self.ui.progressBar.value, round(run_percent(done, total, message)))
            self.ui.statusLabel.text = message
            slicer.app.processEvents()   # repaint and let Cancel be clicked between steps
        return Progress(onProgress)

    def onCancelButton(self):
        if self._job is not None:        # the background process is killed at once
            self._stopJob()
            self._setRunning(False)
            self.ui.statusLabel.text = "Cancelled: the previous results are unchanged."
        elif self._progress is not None:
            self._progress.cancel()
            self.ui.statusLabel.text = "Cancelling after the current step..."

    def _isRunning(self):
        return self._job is not None or self._progress is not None

    def _setRunning(self, running):
        self.ui.progressBar.setVisible(running)
        self.ui.progressBar.value = 0
        self.ui.cancelButton.enabled = running
        self.ui.applyButton.enabled = not running
        # what the run was started for stays as it is until it ends
        for w in (self.ui.inputSelector, self.ui.loadButton, self.ui.restSelector, self.ui.useLabelsCheckBox):
            w.enabled = not running
        self.updateGUIFromParameterNode()

    def _clearResults(self):
        """The panel's views of results (table, editor, bullseye, report, agreement), emptied
        when they no longer belong to the input (another input picked, the scene closed)."""
        self._clearResultViews()
        self.ui.statusLabel.text = ""

    def _clearResultViews(self):
        """The views of an analysis the Logic no longer holds, the status line left as it is."""
        self.ui.tableView.setMRMLTableNode(None)
        self.ui.segmentEditorWidget.setSegmentationNode(None)
        self.ui.bullseyeLabel.clear()
        self.ui.reportScrollArea.setVisible(False)
        for label in (self.ui.agreementLabel, self.ui.updateTimeLabel):
            label.text = ""
        self._observeOutputs(clear=True)
        self._resultsShown = False

    def _showResults(self):
        self._resultsShown = True
        seg = self.logic.getNodeParameter("outputSegmentationID")
        self.ui.segmentEditorWidget.setSegmentationNode(seg)
        if self.logic.studyNodes is not None:
            editor = self.ui.segmentEditorWidget
            # setMasterVolumeNode before Slicer 5.2
            setSource = getattr(editor, "setSourceVolumeNode", None) or editor.setMasterVolumeNode
            setSource(self.logic.studyNodes.volume)
        self.ui.tableView.setMRMLTableNode(self.logic.getNodeParameter("tableID"))
        self._observeOutputs()
        self._showBullseye()
        self.updateGUIFromParameterNode()

    def onBullseyeMeasureChanged(self, index):
        """MBF or relative upslope on the perfusion bullseye: the Logic re-bins, the view redraws."""
        if self.logic.analysis is None:
            return
        with _showErrors("Could not change the bullseye measure."):
            self._updatingNodes = True   # the Logic refills segmentations and handles: not an edit
            try:
                self.logic.setBullseyeMeasure(self._choices["bullseyeMeasure"][index])
            finally:
                self._updatingNodes = False
            self._showBullseye()

    def _showBullseye(self):
        # called from drag and edit callbacks too: a drawing error is shown, not left to a VTK
        # callback's traceback in the console (probe 79)
        with _showErrors("Could not draw the bullseye."):
            path = os.path.join(slicer.app.temporaryPath, "CardiacAISeg-bullseye.png")
            self.logic.renderBullseye(path)
            self.ui.bullseyeLabel.setPixmap(qt.QPixmap(path))

    # ------------------------------------------------------------------------- edits
    def _observeOutputs(self, clear=False):
        for segmentation in self._observedSegmentations:
            for event in _segmentationEditEvents():
                self.removeObserver(segmentation, event, self.onSegmentationModified)
        self._observedSegmentations = []
        if self._observedMarkups is not None:
            self.removeObserver(self._observedMarkups, slicer.vtkMRMLMarkupsNode.PointModifiedEvent, self.onMarkupsPointModified)
            self.removeObserver(self._observedMarkups, slicer.vtkMRMLMarkupsNode.PointEndInteractionEvent, self.onMarkupsInteractionEnded)
            self.removeObserver(self._observedMarkups, slicer.vtkMRMLMarkupsNode.PointRemovedEvent, self.onMarkupsPointRemoved)
            self._observedMarkups = None
        if clear:
            return
        for name in EDITABLE_SEGMENTATIONS:
            node = self.logic.getNodeParameter(name)
            if node is not None:
                segmentation = node.GetSegmentation()
                for event in _segmentationEditEvents():
                    self.addObserver(segmentation, event, self.onSegmentationModified)
                self._observedSegmentations.append(segmentation)
        markups = self.logic.getNodeParameter("markupsID")
        if markups is not None:
            self.addObserver(markups, slicer.vtkMRMLMarkupsNode.PointModifiedEvent, self.onMarkupsPointModified)
            self.addObserver(markups, slicer.vtkMRMLMarkupsNode.PointEndInteractionEvent, self.onMarkupsInteractionEnded)
            self.addObserver(markups, slicer.vtkMRMLMarkupsNode.PointRemovedEvent, self.onMarkupsPointRemoved)
            self._observedMarkups = markups

    @vtk.calldata_type(vtk.VTK_INT)
    def onMarkupsPointModified(self, caller, event, pointIndex):
        """Dragging: sectors and table follow every move of the handle."""
        if self._updatingNodes or self.logic.analysis is None:
            return
        self._updatingNodes = True   # the Logic may relabel the point (its slice)
        try:
            self.logic.onInsertionPointMoved(caller, pointIndex)
            self.ui.updateTimeLabel.text = f"Sectors and table updated in {1000 * self.logic.lastUpdateTimeS:.1f} ms"
        except Exception as e:   # e.g. a point dragged onto the LV centre: say so, keep going
            self.ui.updateTimeLabel.text = f"Insertion point not applied: {e}"
        finally:
            self._updatingNodes = False

    def onMarkupsPointRemoved(self, caller, event):
        """A handle deleted: the Logic shows it again where the sectors are measured from, and says so."""
        if self._updatingNodes or self.logic.analysis is None:
            return
        self._updatingNodes = True
        try:
            if self.logic.onInsertionPointRemoved(caller):
                self.ui.statusLabel.text = self.logic.warningsInModuleTerms(self.logic.analysis.warnings[-1:])[0]
        finally:
            self._updatingNodes = False

    def onMarkupsInteractionEnded(self, caller, event):
        """The handle was released: redraw the bullseye once (matplotlib is too slow per move)."""
        if self.logic.analysis is not None:
            self._showBullseye()

    def onSegmentationModified(self, caller, event):
        """Segment Editor strokes arrive in bursts: recompute once they pause (300 ms)."""
        if self._updatingNodes:
            return
        for name in EDITABLE_SEGMENTATIONS:
            node = self.logic.getNodeParameter(name)
            if node is not None and node.GetSegmentation() is caller:
                self._pendingEdits.add(node.GetID())
        if self._editTimer is None:
            self._editTimer = qt.QTimer()
            self._editTimer.setSingleShot(True)
            self._editTimer.setInterval(300)
            self._editTimer.connect("timeout()", self._applyEdits)
        self._editTimer.start()

    def _applyEdits(self):
        if self._progress is not None:
            # a labels run in this process is writing the segmentations (its progress pumps the
            # event loop): its writes are no edits, and resetting _updatingNodes here made them so
            self._editTimer.start()
            return
        pending, self._pendingEdits = self._pendingEdits, set()
        if not pending or self.logic.analysis is None:
            return
        self._updatingNodes = True
        try:
            with _showErrors("Could not measure the edited segmentation."):
                for nodeID in pending:
                    node = slicer.mrmlScene.GetNodeByID(nodeID)
                    if node is None:
                        # deleted before the edit timer fired: no node to measure (None meant the ED
                        # segmentation to the Logic, so the ES edit was measured there; probe 99)
                        continue
                    self.logic.onSegmentationEdited(node)
                if self.logic.lastUpdateTimeS is not None:
                    self.ui.updateTimeLabel.text = f"Volumes, mass and segments updated in {1000 * self.logic.lastUpdateTimeS:.0f} ms"
                if self.logic.analysis is not None:
                    # what the edit changed is said here (e.g. ED and ES swapped), not left to the run's text
                    self.ui.statusLabel.text = "Updated after the edit. " + " ".join(self.logic.warningsInModuleTerms(self.logic.analysis.warnings))
        finally:
            self._updatingNodes = False
        # an edit can create the handles (an RV painted on LV-only labels): their drags count too
        self._observeOutputs()
        self._showBullseye()

    # ----------------------------------------------------------------------- outputs
    def onShowReport(self):
        path = os.path.join(slicer.app.temporaryPath, "CardiacAISeg-report.png")
        with _showErrors("Could not draw the report.", waitCursor=True):
            self.logic.renderReport(path)
            pixmap = qt.QPixmap(path)
            width = max(300, self.ui.reportScrollArea.viewport().width - 10)
            self.ui.reportLabel.setPixmap(pixmap.scaledToWidth(width, qt.Qt.SmoothTransformation))
            self.ui.reportScrollArea.setVisible(True)

    def onAgreement(self):
        with _showErrors("Could not compare the segmentations."):
            lines = []
            for frame, a in self.logic.agreementWithNetwork().items():
                dice = " ".join(f"{name.upper()} {a[name]['dice']:.3f}" for name in ("lv", "myo", "rv"))
                lines.append(f"Frame {frame}: Dice {dice}; endo {a['endo']['mean_mm']:.2f} mm, "
                             f"epi {a['epi']['mean_mm']:.2f} mm mean boundary error")
            self.ui.agreementLabel.text = "\n".join(lines) or "No frame to compare."

    def _outputFolder(self):
        folder = self.ui.outputDirectoryLineEdit.currentPath
        if not folder:
            slicer.util.errorDisplay("Choose an output folder first.")
        return folder

    def onExport(self):
        folder = self._outputFolder()
        if not folder:
            return
        with _showErrors("Export failed.", waitCursor=True):
            paths = self.logic.exportResults(folder, force=self.ui.overwriteCheckBox.checked)
            self.ui.statusLabel.text = "Wrote " + ", ".join(sorted(paths)) + f" to {folder}"

    def onSaveGroundTruth(self):
        folder = self._outputFolder()
        if not folder:
            return
        with _showErrors("Could not save the ground truth.", waitCursor=True):
            written = self.logic.saveGroundTruth(folder, self.ui.groundTruthNameLineEdit.text,
                                                 force=self.ui.overwriteCheckBox.checked)
            self.ui.statusLabel.text = f"Ground truth saved in {written} (ACDC layout)"

    def _segmentEditorNode(self):
        node = slicer.mrmlScene.GetSingletonNode("CardiacAISeg", "vtkMRMLSegmentEditorNode")
        if node is None:
            node = slicer.vtkMRMLSegmentEditorNode()
            node.SetSingletonTag("CardiacAISeg")
            node = slicer.mrmlScene.AddNode(node)
        return node


# ------------------------------------------------------------------ widget value helpers
@contextlib.contextmanager
def _showErrors(message, waitCursor=False):
    """Show an error in a message box and carry on: a slot must not raise into Qt."""
    try:
        with slicer.util.tryWithErrorDisplay(message, waitCursor=waitCursor):
            yield
    except Exception:
        logging.exception(message)


def _segmentationEditEvents():
    """What a user's edit of a segmentation fires: a stroke changes its source representation; a
    segment renamed fires SegmentModified only (a segment renamed away from 'LV' was measured
    still until the next stroke; probe 79)."""
    return _sourceModifiedEvent(), slicer.vtkSegmentation.SegmentModified


def _sourceModifiedEvent():
    # Renamed from "Master" to "Source" in Slicer 5.2.
    return getattr(slicer.vtkSegmentation, "SourceRepresentationModified", None) or slicer.vtkSegmentation.MasterRepresentationModified


def _connectChanged(w, callback):
    if isinstance(w, slicer.qMRMLNodeComboBox):
        w.connect("currentNodeChanged(vtkMRMLNode*)", callback)
    elif isinstance(w, ctk.ctkPathLineEdit):
        w.connect("currentPathChanged(QString)", callback)
    elif isinstance(w, qt.QComboBox):
        w.connect("currentIndexChanged(int)", callback)
    elif isinstance(w, qt.QCheckBox):
        w.connect("toggled(bool)", callback)
    elif isinstance(w, qt.QDoubleSpinBox):
        w.connect("valueChanged(double)", callback)
    elif isinstance(w, qt.QLineEdit):
        w.connect("textChanged(QString)", callback)
    else:
        raise TypeError(f"no parameter binding for {w.className()} {w.objectName}")


def _widgetValue(w, choices=None):
    if isinstance(w, slicer.qMRMLNodeComboBox):
        return w.currentNodeID or ""
    if isinstance(w, ctk.ctkPathLineEdit):
        return w.currentPath
    if isinstance(w, qt.QComboBox):
        return choices[max(0, w.currentIndex)] if choices else w.currentText
    if isinstance(w, qt.QCheckBox):
        return "true" if w.checked else "false"
    if isinstance(w, qt.QDoubleSpinBox):
        return repr(float(w.value))
    return w.text


def _setWidgetValue(w, value, choices=None):
    # a value the widget holds already is not set again: setting a line edit's text moves its
    # cursor to the end, so every keystroke (parameter node -> GUI) sent typing there (probe 79)
    if isinstance(w, slicer.qMRMLNodeComboBox):
        w.setCurrentNodeID(value or None)
    elif isinstance(w, ctk.ctkPathLineEdit):
        if w.currentPath != value:
            w.currentPath = value
    elif isinstance(w, qt.QComboBox):
        w.setCurrentIndex(choices.index(value) if choices and value in choices else max(0, w.findText(value)))
    elif isinstance(w, qt.QCheckBox):
        w.checked = value.lower() == "true"
    elif isinstance(w, qt.QDoubleSpinBox):
        if w.value != float(value or 0):
            w.value = float(value or 0)
    elif w.text != value:
        w.text = value


#
# CardiacAISegLogic: the Qt-free Logic lives in CardiacAISegLib/logic.py; this name is where
# Slicer (and scripts that do ``CardiacAISeg.CardiacAISegLogic()``) look for it.
#
def __getattr__(name):
    if name == "CardiacAISegLogic":
        from CardiacAISegLib.logic import CardiacAISegLogic
        return CardiacAISegLogic
    raise AttributeError(name)


#
# CardiacAISegTest: the whole workflow inside Slicer (Developer mode > Reload and Test)
#
class CardiacAISegTest(ScriptedLoadableModuleTest):
    def setUp(self):
        slicer.mrmlScene.Clear()

    def runTest(self):
        self.setUp()
        self.test_CardiacAISeg_cineWorkflow()
        self.setUp()
        self.test_CardiacAISeg_perfusionPhantom()
        self.setUp()
        self.test_CardiacAISeg_widget()

    def _logic(self):
        from CardiacAISegLib.logic import CardiacAISegLogic
        return CardiacAISegLogic()

    def test_CardiacAISeg_cineWorkflow(self):
        """Phantom -> network (or true labels) -> move a point -> paint -> export -> ground truth."""
        import tempfile

        import numpy as np

        from CardiacAISegLib import scene as sc
        self.assertTrue(ensureDependencies())
        self.delayDisplay("Loading the cine phantom")
        logic = self._logic()
        nodes = logic.loadSamplePhantom("cine", _phantomFolder("cine"))
        self.assertIsNotNone(nodes.sequence)
        useModel = bool(logic.availableModels("cine")) and importlib.util.find_spec("torch") is not None
        self.delayDisplay("Segmenting with " + ("the default model" if useModel else "the phantom's true labels"))
        a = logic.runSegmentation(useExistingLabels=not useModel)
        self.assertGreater(a.cine["lv_edv_ml"], 0)

        self.delayDisplay("Moving an RV insertion point")
        markups = logic.getNodeParameter("markupsID")
        table = logic.getNodeParameter("tableID")
        k = sorted(a.sectors.slices)[len(a.sectors.slices) // 2]
        labels = [markups.GetNthControlPointLabel(n) for n in range(markups.GetNumberOfControlPoints())]
        n = labels.index(f"S{k} anterior")
        before = sc.table_rows(table)
        p = np.zeros(3)
        markups.GetNthControlPointPosition(n, p)
        centre = np.array([q["centre_ras"] for q in a.insertion if q["slice"] == k][0])
        normal = a.study.slice_normal
        r = p - centre
        markups.SetNthControlPointPosition(n, *(centre + r * np.cos(0.4) + np.cross(normal, r) * np.sin(0.4)))
        self.assertEqual(logic.onInsertionPointMoved(markups, n), [k])
        self.assertLess(logic.lastUpdateTimeS, 0.1)
        after = sc.table_rows(table)
        self.assertTrue(any(x["value"] != y["value"] for x, y in zip(before, after)))

        self.delayDisplay("Painting myocardium")
        seg = logic.getNodeParameter("outputSegmentationID")
        ed = a.cine["ed_frame"]
        volume = logic.studyNodes.volume
        myo = slicer.util.arrayFromSegmentBinaryLabelmap(seg, "myo", volume)
        anyLabel = sc.labelmap_from_segmentation(seg, reference_volume=volume) > 0
        free = np.argwhere(~anyLabel & (np.arange(anyLabel.shape[0]) == k)[:, None, None])[:20]
        for kk, j, i in free:
            myo[kk, j, i] = 1
        mass0 = a.cine["lv_mass_g"]
        slicer.util.updateSegmentBinaryLabelmapFromArray(myo, seg, "myo", volume)
        logic.onSegmentationEdited(seg, ed)
        self.assertAlmostEqual(a.cine["lv_mass_g"] - mass0, 20 * a.study.voxel_volume_ml * 1.05, places=6)

        self.delayDisplay("Exporting")
        out = tempfile.mkdtemp(prefix="CardiacAISegTest-")
        paths = logic.exportResults(os.path.join(out, "results"))
        self.assertIn("results.csv", paths)
        folder = logic.saveGroundTruth(os.path.join(out, "gt"), "patient101")
        self.assertTrue(os.path.isfile(os.path.join(folder, "Info.cfg")))
        self.assertLess(logic.agreementWithNetwork()[ed]["myo"]["dice"], 1.0)
        self.delayDisplay("Cine workflow passed")

    def test_CardiacAISeg_perfusionPhantom(self):
        self.assertTrue(ensureDependencies())
        self.delayDisplay("Perfusion phantom")
        logic = self._logic()
        logic.loadSamplePhantom("perfusion", _phantomFolder("perfusion"))
        self.assertEqual(logic.detectKind()[0], "perfusion")
        a = logic.runSegmentation(useExistingLabels=True)
        self.assertGreater(a.perfusion["global_mbf_ml_min_g"], 0)
        self.delayDisplay("Perfusion passed")

    def test_CardiacAISeg_widget(self):
        """The panel: every named widget exists; Run on the phantom fills table and editor."""
        self.assertTrue(ensureDependencies())
        slicer.util.selectModule("CardiacAISeg")
        widget = slicer.util.getModuleWidget("CardiacAISeg")
        for name, className in UI_WIDGETS.items():
            self.assertTrue(getattr(widget.ui, name).inherits(className), f"{name} is not a {className}")
        nodes = moduleLogic().loadSamplePhantom("cine", _phantomFolder("cine"))
        widget.ui.inputSelector.setCurrentNode(nodes.sequence)
        widget.ui.useLabelsCheckBox.checked = True
        widget.onApplyButton()
        self.assertIsNotNone(widget.ui.tableView.mrmlTableNode())
        self.assertIs(widget.ui.segmentEditorWidget.segmentationNode(), moduleLogic().getNodeParameter("outputSegmentationID"))
        self.delayDisplay("Widget passed")
