"""The module's form and its code agree: load CardiacAISeg.ui with Qt (PySide6, offscreen).

Slicer's own widget classes (ctk*, qMRML*) are not registered here, so QUiLoader builds their
``extends`` base class; a widget is accepted when it is an instance of that base. This checks the
names, classes and parameter bindings, not Slicer's behaviour (CardiacAISegTest does that in Slicer).
"""
import ast
import os
import re
import xml.etree.ElementTree as ET
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2] / "CardiacAISeg"
UI_FILE = ROOT / "Resources" / "UI" / "CardiacAISeg.ui"
MODULE_FILE = ROOT / "CardiacAISeg.py"


def _module_constant(name):
    """A literal assigned at the top of CardiacAISeg.py (the file imports Slicer: never import it)."""
    tree = ast.parse(MODULE_FILE.read_text())
    for node in tree.body:
        if isinstance(node, ast.Assign) and any(getattr(t, "id", None) == name for t in node.targets):
            return ast.literal_eval(node.value)
    raise AssertionError(f"{name} not found in {MODULE_FILE.name}")


def _ui_tree():
    root = ET.parse(UI_FILE).getroot()
    extends = {c.findtext("class"): c.findtext("extends") for c in root.iter("customwidget")}
    classes = {w.get("name"): w.get("class") for w in root.iter("widget")}
    return root, extends, classes


def _qt_base(cls, extends):
    while cls in extends:   # qMRMLSegmentEditorWidget -> qMRMLWidget -> QWidget
        cls = extends[cls]
    return cls


@pytest.fixture(scope="module")
def form():
    os.environ.setdefault("QT_QPA_PLATFORM", "offscreen")
    try:
        from PySide6.QtCore import QFile
        from PySide6.QtUiTools import QUiLoader
        from PySide6.QtWidgets import QApplication
    except ImportError as e:
        pytest.skip(f"PySide6 is not installed ({e}); pip install PySide6-Essentials to check the .ui with Qt")
    created = QApplication.instance() is None
    app = QApplication.instance() or QApplication([])
    f = QFile(str(UI_FILE))
    assert f.open(QFile.ReadOnly), f"cannot open {UI_FILE}"
    try:
        widget = QUiLoader().load(f)
    finally:
        f.close()
    assert widget is not None, "QUiLoader could not build the form"
    yield widget
    # Delete the form and the application now, not at interpreter exit, where PySide6 and the
    # other native libraries are torn down in no fixed order (deleteLater alone never runs: no loop).
    from PySide6.QtCore import QEvent
    widget.deleteLater()
    QApplication.sendPostedEvents(None, QEvent.DeferredDelete)
    if created:
        app.shutdown()


def test_every_widget_the_code_names_is_declared():
    code = MODULE_FILE.read_text()
    used = set(re.findall(r"\bself\.ui\.(\w+)", code)) | set(re.findall(r"\bwidget\.ui\.(\w+)", code))
    declared = _module_constant("UI_WIDGETS")
    assert used, "the module names no widgets?"
    assert used <= set(declared), f"named in code but not in UI_WIDGETS: {sorted(used - set(declared))}"


def test_ui_widgets_exist_with_the_expected_class(form):
    from PySide6 import QtWidgets

    _, extends, classes = _ui_tree()
    for name, expected in _module_constant("UI_WIDGETS").items():
        assert classes.get(name) == expected, f"{name}: .ui says {classes.get(name)}, the code expects {expected}"
        base = getattr(QtWidgets, _qt_base(expected, extends))
        found = form.findChild(base, name)
        assert found is not None, f"{name} ({expected}) not found in the loaded form"
        assert isinstance(found, base)


def test_parameter_names_map_to_logic_parameters(form):
    from PySide6.QtWidgets import QComboBox, QWidget

    from CardiacAISegLib.logic import NODE_PARAMETERS, PARAMETER_CHOICES, PARAMETERS

    bound = {}
    for w in form.findChildren(QWidget):
        name = w.property("SlicerParameterName")
        if name:
            assert name in PARAMETERS, f"{w.objectName()}: SlicerParameterName {name!r} is not a Logic parameter"
            assert name not in bound, f"{name!r} bound twice ({bound.get(name)} and {w.objectName()})"
            bound[name] = w.objectName()
    # The ES segmentation is made by the Logic and edited in the Segment Editor, not chosen; the
    # rest series' mask is made by the Logic and kept for the saved scene; the ED/ES frames an
    # edit kept, the model (and the rest run's), the hand-edited frames and the density the results were measured
    # with are the Logic's record for the saved scene, not choices; so is every frame's labels
    # sequence of a whole cycle (frameLabelsID).
    assert set(bound) == set(PARAMETERS) - {"outputSegmentationESID", "restSegmentationID", "keptEdEs", "modelInfo",
                                            "restModelInfo", "editedFrames", "restEditedFrames", "measuredDensity", "frameLabelsID",
                                            "runLabelsID", "restRunLabelsID"}
    _, _, classes = _ui_tree()
    for name, widget_name in bound.items():
        cls = classes[widget_name]
        if name in NODE_PARAMETERS:
            assert cls == "qMRMLNodeComboBox", f"{name} is a node parameter but {widget_name} is a {cls}"
        if name in PARAMETER_CHOICES:
            combo = form.findChild(QComboBox, widget_name)
            assert combo.count() == len(PARAMETER_CHOICES[name]), f"{widget_name} lists {combo.count()} items for {PARAMETER_CHOICES[name]}"


def test_bound_widgets_have_a_binding_in_the_code():
    """Every class that carries a SlicerParameterName is one the widget knows how to sync."""
    _, _, classes = _ui_tree()
    root = ET.parse(UI_FILE).getroot()
    bound_classes = {w.get("class") for w in root.iter("widget")
                     if any(p.get("name") == "SlicerParameterName" for p in w.findall("property"))}
    code = MODULE_FILE.read_text()
    binder = code[code.index("def _connectChanged"):code.index("def _widgetValue")]
    for cls in bound_classes:
        assert re.search(rf"\b{cls}\b", binder), f"_connectChanged has no case for {cls}"


def test_scene_connections_reach_mrml_widgets():
    root, _, classes = _ui_tree()
    receivers = {c.findtext("receiver") for c in root.iter("connection") if c.findtext("slot") == "setMRMLScene(vtkMRMLScene*)"}
    mrml = {n for n, c in classes.items() if c in ("qMRMLNodeComboBox", "qMRMLSegmentEditorWidget", "qMRMLTableView")}
    assert mrml <= receivers, f"not given the scene: {sorted(mrml - receivers)}"
