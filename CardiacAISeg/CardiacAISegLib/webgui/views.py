"""Slicer's views in the page: one short-axis slice view and a 3D view (trame-slicer).

The views render offscreen (EGL) in the server and stream images to the page (trame-rca); mouse
events come back, so the RV insertion handles (markups) can be dragged and the Segment Editor's
paint/erase effects work in the slice view as they do in Slicer.

``StudyViews`` builds the trame-slicer application around one MRML scene and hands the engine a
``scene.SceneContext`` on that scene, so the Logic's nodes are the nodes the views show.
"""
import os

import numpy as np

from .. import scene as sc
from ..labels import SEGMENT_IDS
from ..study import CINE

# Contour colours on screen: distinct hues at full saturation, readable on a grey MR image
# (the engine's file colours - warm red, tan, blue - are too alike as thin lines). Display
# overrides only: the saved segmentation keeps the engine's colours.
CONTOUR_COLOURS = {"lv": (1.0, 0.15, 0.15), "myo": (0.1, 1.0, 0.2), "rv": (1.0, 0.9, 0.0)}
HANDLE_COLOUR = (0.0, 0.9, 1.0)          # cyan: apart from every contour colour
CONTOUR_WIDTH_PX = 3

# Pictures streamed per second while the mouse acts on a view. Each render runs on the server's
# event loop, so the page's next event and state update wait behind it: on a busy 2-core machine
# (renders 50-240 ms) 20 per second left a handle drag's table update 334 ms behind the release,
# 10 per second 117 ms (benchmarks/bench_webgui.py). CARDIACAISEG_GUI_FPS sets another rate.
DEFAULT_STREAM_FPS = 10.0


def stream_fps():
    text = os.environ.get("CARDIACAISEG_GUI_FPS", "")
    try:
        fps = float(text) if text else DEFAULT_STREAM_FPS
    except ValueError:
        import logging

        logging.getLogger("cardiacaiseg.webgui").warning(
            "CARDIACAISEG_GUI_FPS=%r is not a number of pictures per second; using %g", text, DEFAULT_STREAM_FPS)
        fps = DEFAULT_STREAM_FPS
    return min(max(fps, 1.0), 60.0)


SLICE_VIEW = "Red"
THREED_VIEW = "ThreeD"
LAYOUT = "cardiac"
LAYOUT_2D = "cardiac-2d"          # the slice view alone (a single slice shows as a line in 3D)


def _no_gutter(*_args):
    """The default slice gutter's reset button would turn the view back to axial; the page has
    its own slice and frame controls."""


class StudyViews:
    """trame-slicer views of the current study, and what the page needs from them."""

    def __init__(self, server):
        import slicer
        from trame_slicer.core import LayoutManager, SlicerApp
        from trame_slicer.rca_view import register_rca_factories
        from trame_slicer.views import Layout, LayoutDirection, ViewLayoutDefinition

        self.server = server
        self.app = SlicerApp()
        register_rca_factories(self.app.view_manager, server, slice_view_ui_f=_no_gutter, rca_encoder="jpeg",
                               target_fps=stream_fps(), blur_fps=5.0)
        self.layout_manager = LayoutManager(self.app.scene, self.app.view_manager, server)
        red = ViewLayoutDefinition.slice_view("Axial", label=SLICE_VIEW, color="#F34A33")
        threed = ViewLayoutDefinition.threed_view(name=THREED_VIEW)
        self.layout_manager.register_layout(LAYOUT, Layout(LayoutDirection.Horizontal, [red, threed]))
        self.layout_manager.register_layout(LAYOUT_2D, Layout(LayoutDirection.Horizontal, [red]))
        self.layout_manager.set_layout(LAYOUT)
        app = self.app
        self.context = sc.SceneContext(
            scene=app.scene, app_logic=app.app_logic, colors_logic=app.color_logic, volumes_logic=app.volumes_logic,
            segmentations_logic=app.segmentations_logic,
            sequences_logic=app.register_module_logic(slicer.vtkSlicerSequencesLogic()),
            markups_logic=getattr(app.markups_logic, "_logic", None),
            tables_logic=app.register_module_logic(slicer.vtkSlicerTablesLogic()))
        self._fit_pending = False
        self._editing = None           # (segmentation node, effect name) the editor is set up for
        self._fit_size = None
        self._zoom = "all"             # 'all' (whole image) or 'heart': redone when the view is resized
        self.contour_fill = False      # outlines only unless the page asks for a fill
        self._session = None           # the session whose slice a re-fit must keep
        self._base_axes = (np.array([1.0, 0.0, 0.0]), np.array([0.0, 1.0, 0.0]))   # default (right, up) in RAS
        self._turns, self._mirrored = 0, False      # the user's quarter turns and mirror on top
        self._axes_study = None
        self._playback = None          # display-only contours of frames without an output node
        self.editor.set_surface_representation_enabled(True)     # 3D surfaces while editing too
        self.slice_node.AddObserver("ModifiedEvent", self._on_slice_node_modified)

    # ----------------------------------------------------------------------- access
    @property
    def slice_view(self):
        return self.app.view_manager.get_view(SLICE_VIEW)

    @property
    def threed_view(self):
        return self.app.view_manager.get_view(THREED_VIEW)

    @property
    def slice_node(self):
        return self.slice_view.get_view_node()

    @property
    def editor(self):
        return self.app.segmentation_editor

    def show_3d(self, visible):
        """The 3D view beside the slice view, or the slice view alone (all the width)."""
        self.layout_manager.set_layout(LAYOUT if visible else LAYOUT_2D)
        # The slice view changes shape: zoom again (heart or whole image) once it has.
        self._fit_pending = True
        self._fit_size = tuple(self.slice_node.GetDimensions()[:2])
        self.render()

    def initialize_grid(self, ui):
        self.layout_manager.initialize_layout_grid(ui)

    def render(self):
        for view in (self.slice_view, self.threed_view):
            view.schedule_render()

    # ------------------------------------------------------------------------ study
    def show_study(self, session):
        """A study was opened: background volume, short-axis orientation, fit."""
        nodes = session.logic.studyNodes
        self.stop_editing()
        self.drop_playback()
        if nodes is None:
            self.slice_view.set_background_volume_id(None)
            self.render()
            return
        self.slice_view.set_background_volume_id(nodes.volume.GetID())
        self.slice_view.set_foreground_volume_id(None)
        self._turns, self._mirrored = 0, False
        self.orient_to_study(session.study)
        self.show_frame(session)
        self.show_slice(session)
        self.fit(session)

    def orient_to_study(self, study, analysis=None):
        """The default orientation of the slice view, as short-axis views are read: RV on the
        left, anterior up. From the RV insertion points when the analysis has them (the anatomy
        on the image itself), else from the file's patient geometry (the RV lies to the
        patient's right, +R; anterior is +A), else the acquisition plane as stored (column
        index right, row index down). The user's quarter turns and mirror (``set_view_turns``)
        apply on top. The view only: images, labels and numbers never change."""
        self._base_axes = _default_axes(study, analysis)
        self._apply_axes(study)

    def set_view_turns(self, study, quarter_turns, mirrored):
        """Turn the picture clockwise by ``quarter_turns`` x 90 degrees, then mirror it left-right."""
        self._turns, self._mirrored = int(quarter_turns) % 4, bool(mirrored)
        self._apply_axes(study)

    def _apply_axes(self, study):
        import vtk

        right, up = self._base_axes
        for _ in range(self._turns):          # the picture turns clockwise: what was up goes right
            right, up = up, -right
        if self._mirrored:
            right = -right
        normal = np.cross(right, up)          # a mirror views the plane from its other side
        node = self.slice_node
        old = node.GetSliceToRAS()
        centre = [old.GetElement(row, 3) for row in range(3)]
        if self._axes_study is not study:    # a new study: its centre, not the last one's
            s, r, c = study.images.shape[1:]
            centre = study.ijk_to_ras_points([((c - 1) / 2, (r - 1) / 2, (s - 1) / 2)])[0]
            self._axes_study = study
        slice_to_ras = vtk.vtkMatrix4x4()
        for row in range(3):
            slice_to_ras.SetElement(row, 0, right[row])
            slice_to_ras.SetElement(row, 1, up[row])
            slice_to_ras.SetElement(row, 2, normal[row])
            slice_to_ras.SetElement(row, 3, float(centre[row]))
        node.GetSliceToRAS().DeepCopy(slice_to_ras)
        node.UpdateMatrices()
        self.render()

    def screen_axes(self):
        """(right, up) of the slice view as RAS unit vectors (tests and the page's hints)."""
        m = self.slice_node.GetSliceToRAS()
        return (np.array([m.GetElement(r, 0) for r in range(3)]), np.array([m.GetElement(r, 1) for r in range(3)]))

    def fit(self, session=None):
        """The whole field of view. Fitting recentres the slice view on the volume, through the
        plane too: the slice on screen is put back (the page follows the view's slice)."""
        self._session = session or self._session
        self.slice_view.fit_view_to_content()
        self._back_to_session_slice()
        self.threed_view.reset_camera()
        self._zoom = "all"
        self._fit_pending = True      # again once the page has given the views their size
        self._fit_size = tuple(self.slice_node.GetDimensions()[:2])
        self.render()

    def zoom_to_heart(self, session, margin=1.3):
        """Centre the slice view on the segmented heart (LV, myocardium, RV of the frame edited)
        and zoom so that it spans 1/``margin`` of the view's shorter side: the whole field of
        view leaves the heart a small part of the picture. False when nothing is segmented."""
        a, st = session.analysis, session.study
        if a is None or st is None:
            return False
        labels = a.labels.get(session.edit_frame())
        if labels is None or not (labels > 0).any():
            return False
        _, rows, cols = np.nonzero(labels > 0)
        m = np.asarray(st.ijk_to_ras, float)
        centre = st.ijk_to_ras_points([((cols.min() + cols.max()) / 2, (rows.min() + rows.max()) / 2, session.slice)])[0]
        extent = margin * max((cols.max() - cols.min() + 1) * np.linalg.norm(m[:3, 0]),
                              (rows.max() - rows.min() + 1) * np.linalg.norm(m[:3, 1]))
        node = self.slice_node
        slice_to_ras = node.GetSliceToRAS()
        for row in range(3):
            slice_to_ras.SetElement(row, 3, float(centre[row]))
        w, h = node.GetDimensions()[:2]
        aspect = (w / h) if w > 1 and h > 1 else 1.0
        fov = node.GetFieldOfView()
        if aspect >= 1:
            node.SetFieldOfView(extent * aspect, extent, fov[2])
        else:
            node.SetFieldOfView(extent, extent / aspect, fov[2])
        node.UpdateMatrices()
        self._zoom = "heart"
        self._fit_pending = False
        self.render()
        return True

    # ------------------------------------------------------------------- window/level
    def _volume_display(self, session):
        nodes = session.logic.studyNodes
        volume = None if nodes is None else nodes.volume
        return None if volume is None else volume.GetDisplayNode()

    def window_level(self, session):
        """(lowest, highest) intensity shown from black to white, or None without a study."""
        display = self._volume_display(session)
        if display is None:
            return None
        return float(display.GetWindowLevelMin()), float(display.GetWindowLevelMax())

    def set_window_level(self, session, low=None, high=None):
        """Intensities ``low``..``high`` from black to white; both None: Slicer's automatic
        window/level (from the image histogram)."""
        display = self._volume_display(session)
        if display is None:
            return
        if low is None or high is None:
            display.AutoWindowLevelOn()
        else:
            display.AutoWindowLevelOff()
            display.SetWindowLevelMinMax(float(low), float(max(high, low + 1e-6)))
        self.render()

    def _on_slice_node_modified(self, *_):
        if not self._fit_pending:
            return
        size = tuple(self.slice_node.GetDimensions()[:2])
        if size != self._fit_size and min(size) > 1:
            self._fit_pending = False
            if not (self._zoom == "heart" and self._session is not None and self.zoom_to_heart(self._session)):
                self.slice_view.fit_view_to_content()
                self._back_to_session_slice()
            self.threed_view.reset_camera()
            self.render()

    def _back_to_session_slice(self):
        session = self._session
        if session is not None and session.study is not None:
            self.show_slice(session)

    def show_slice(self, session):
        """Move the slice view onto slice ``session.slice`` (in-plane pan and zoom kept)."""
        st = session.study
        if st is None:
            return
        s, r, c = st.images.shape[1:]
        p = st.ijk_to_ras_points([((c - 1) / 2, (r - 1) / 2, session.slice)])[0]
        self.slice_node.JumpSliceByOffsetting(float(p[0]), float(p[1]), float(p[2]))
        self.render()

    def shown_slice(self, study):
        """Slice index (float, 0-based) the slice view shows now: the mouse wheel moves the view
        by itself, the page follows it from here."""
        m = self.slice_node.GetSliceToRAS()
        ras = [m.GetElement(row, 3) for row in range(3)] + [1.0]
        ijk = np.linalg.solve(np.asarray(study.ijk_to_ras, float), np.asarray(ras))
        return float(ijk[2])

    def show_frame(self, session):
        """Cine frame on screen, and the segmentation of that frame (if it has one)."""
        nodes = session.logic.studyNodes
        if nodes is not None and nodes.browser is not None:
            nodes.browser.SetSelectedItemNumber(int(session.frame))
        self.show_segmentation(session)

    def show_segmentation(self, session):
        """Show the segmentation of the frame on screen (2D and 3D); hide the others.
        A cine frame segmented but not edited (every frame but ED and ES, when the labels or
        the run cover them) shows its contours in the slice view through one display-only node,
        refilled per frame, so playback shows the border moving.
        Insertion handles stay in the slice view only (their labels would clutter 3D)."""
        current = session.segmentation_for_frame()
        nodes = list(session.segmentation_nodes().values())
        a = session.analysis
        playback = None
        if current is None and a is not None and a.kind == CINE and session.frame in a.labels:
            playback = self._playback_node(session)
        if self._playback is not None:
            nodes.append(self._playback)
        for node in nodes:
            display = node.GetDisplayNode()
            if display is None:
                node.CreateDefaultDisplayNodes()
                display = node.GetDisplayNode()
            visible = node is current or node is playback
            display.SetVisibility(visible)
            if node is playback:
                display.SetVisibility3D(False)       # a surface per frame would be too slow for playback
            if visible:
                # Lines show the border the user judges; a fill (optional) would hide it.
                display.SetVisibility2DOutline(True)
                display.SetVisibility2DFill(bool(self.contour_fill))
                display.SetOpacity2DFill(0.3)
                display.SetOpacity2DOutline(1.0)
                display.SetSliceIntersectionThickness(CONTOUR_WIDTH_PX)
                for segment_id, colour in CONTOUR_COLOURS.items():
                    if node.GetSegmentation().GetSegment(segment_id) is not None:
                        display.SetSegmentOverrideColor(segment_id, *colour)
                if node is not playback and not node.GetSegmentation().ContainsRepresentation("Closed surface"):
                    node.CreateClosedSurfaceRepresentation()
        markups = session.markups_node()
        if markups is not None:
            display = markups.GetDisplayNode()
            if display is not None:
                display.SetViewNodeIDs([self.slice_node.GetID()])
                display.SetTextScale(2.5)
                display.SetGlyphScale(2.5)
                display.SetColor(*HANDLE_COLOUR)
                display.SetSelectedColor(*HANDLE_COLOUR)
                text = display.GetTextProperty() if hasattr(display, "GetTextProperty") else None
                if text is not None:       # dark box behind the label: readable on any pixel
                    text.SetBackgroundColor(0.0, 0.0, 0.0)
                    text.SetBackgroundOpacity(0.6)
            self.slice_view.set_visible_in_3d(True)
        self.render()

    def _playback_node(self, session):
        """The display-only segmentation node, filled with the labels of the frame on screen."""
        from ..logic import fill_segmentation

        a = session.analysis
        node = self._playback
        if node is None or node.GetScene() is not self.context.scene:
            volume = session.logic.studyNodes.volume if session.logic.studyNodes else None
            node = sc.add_segmentation(self.context, a.labels[session.frame], a.study.ijk_to_ras, volume,
                                       name="frame contours (display only)")
            node.SetHideFromEditors(True)
            self._playback = node
        else:
            fill_segmentation(node, a.labels[session.frame], a.study.ijk_to_ras)
        return node

    def drop_playback(self):
        """A study closes: its display-only contour node goes with it."""
        node, self._playback = self._playback, None
        if node is not None and node.GetScene() is not None:
            node.GetScene().RemoveNode(node)

    # ------------------------------------------------------------- handles on screen
    def handle_positions(self, session):
        """Insertion handles of the slice on screen as fractions of the slice view
        ({'label', 'x', 'y'}, x to the right, y down, 0..1): where to press to drag one."""
        markups = session.markups_node()
        if markups is None or session.study is None:
            return []
        points, pos = [], [0.0, 0.0, 0.0]
        for n in range(markups.GetNumberOfControlPoints()):
            label = markups.GetNthControlPointLabel(n) or ""
            if label.startswith(f"S{session.slice} "):
                markups.GetNthControlPointPosition(n, pos)
                points.append((label, tuple(pos)))
        return self.positions_of(points)

    def positions_of(self, points):
        """[(label, RAS)] -> [{'label', 'x', 'y'}] as fractions of the slice view (y down)."""
        import vtk

        node = self.slice_node
        ras_to_xy = vtk.vtkMatrix4x4()
        ras_to_xy.DeepCopy(node.GetXYToRAS())
        ras_to_xy.Invert()
        w, h = node.GetDimensions()[:2]
        if w <= 1 or h <= 1:
            return []
        out = []
        for label, ras in points:
            x, y, _, _ = ras_to_xy.MultiplyPoint([float(ras[0]), float(ras[1]), float(ras[2]), 1.0])
            out.append({"label": label, "x": float(x) / w, "y": 1.0 - float(y) / h})
        return out

    # ------------------------------------------------------------- placing by clicks
    def start_placing(self, on_click):
        """Left clicks in the slice view go to ``on_click(ras)`` (and nowhere else) until
        ``stop_placing``: the point under the mouse, through the view's own XY->RAS, so any
        zoom, pan, turn or mirror of the view lands on the right voxel."""
        import vtk

        self.stop_placing()
        iren = self.slice_view.interactor()

        def press(caller, _event):
            x, y = caller.GetEventPosition()
            ras = self.slice_node.GetXYToRAS().MultiplyPoint([float(x), float(y), 0.0, 1.0])[:3]
            caller.GetCommand(self._place_observers[0]).SetAbortFlag(1)
            on_click([float(v) for v in ras])

        def swallow(caller, _event):
            caller.GetCommand(self._place_observers[1]).SetAbortFlag(1)

        # above Slicer's interactor style and displayable managers
        self._place_observers = (iren.AddObserver(vtk.vtkCommand.LeftButtonPressEvent, press, 100.0),
                                 iren.AddObserver(vtk.vtkCommand.LeftButtonReleaseEvent, swallow, 100.0))

    def stop_placing(self):
        observers = getattr(self, "_place_observers", None)
        if observers:
            iren = self.slice_view.interactor()
            for tag in observers:
                iren.RemoveObserver(tag)
        self._place_observers = None

    # ------------------------------------------------------------------ segment editor
    def set_tool(self, session, tool, segment, brush_mm):
        """'none' | 'paint' | 'erase' with Slicer's Segment Editor effects, on the
        segmentation of the frame being edited, for structure ``segment`` ('lv'|'myo'|'rv')."""
        from trame_slicer.segmentation import (BrushDiameterMode, SegmentationEffectErase,
                                               SegmentationEffectPaint)

        if tool not in ("paint", "erase") or session.analysis is None:
            self.stop_editing()
            return None
        node = session.segmentation_for_frame(session.edit_frame())
        if node is None:
            self.stop_editing()
            return None
        editor = self.editor
        if editor.active_segmentation_node is not node:
            editor.set_active_segmentation(node, session.logic.studyNodes.volume)
        segment_id = SEGMENT_IDS.get({"lv": "LV blood pool", "myo": "LV myocardium", "rv": "RV"}[segment])
        editor.set_active_segment_id(segment_id)
        effect = editor.set_active_effect_type(SegmentationEffectPaint if tool == "paint" else SegmentationEffectErase)
        if effect is not None:
            effect.set_brush_diameter(float(brush_mm), BrushDiameterMode.Absolute)
        self._editing = (node, tool)
        return node

    def stop_editing(self):
        if self._editing is not None or self.editor.active_effect is not None:
            self.editor.deactivate_effect()
        self._editing = None

    @property
    def editing_node(self):
        return self._editing[0] if self._editing else None


def _unit(v):
    n = float(np.linalg.norm(v))
    return None if n < 1e-6 else np.asarray(v, float) / n


def _default_axes(study, analysis=None):
    """(right, up) RAS unit vectors in the acquisition plane for 'RV left, anterior up'."""
    m = np.asarray(study.ijk_to_ras, float)
    col, row = _unit(m[:3, 0]), _unit(m[:3, 1])
    normal = _unit(np.cross(col, row))
    plane = lambda v: _unit(np.asarray(v, float) - np.dot(v, normal) * normal)   # noqa: E731
    # as stored: column index right, row index down (report.png's view)
    right, up = col, plane(-row)
    rv_dir = anterior_dir = None
    pts = [p for p in (analysis.insertion if analysis is not None else []) if p.get("anterior_ras") and p.get("inferior_ras")]
    if pts and analysis.sectors is not None:
        # the mid slice's points: the septum (towards the RV) bisects the two insertions, the
        # anterior insertion lies above the inferior one
        p = pts[len(pts) // 2]
        k = int(p["slice"])
        sl = analysis.sectors.slices.get(k)
        if sl is not None:
            centre = study.ijk_to_ras_points([(sl.cx, sl.cy, k)])[0]
            a = _unit(np.asarray(p["anterior_ras"]) - centre)
            i = _unit(np.asarray(p["inferior_ras"]) - centre)
            if a is not None and i is not None:
                rv_dir = plane(a + i)
                anterior_dir = plane(a - i)
    if rv_dir is None:
        # the patient's axes: the RV lies to the right (+R) of the LV, anterior is +A
        rv_dir, anterior_dir = plane([1.0, 0.0, 0.0]), plane([0.0, 1.0, 0.0])
        if rv_dir is None or anterior_dir is None or abs(np.dot(rv_dir, anterior_dir)) > 0.9:
            return right, up
    left = rv_dir
    up = plane(anterior_dir - np.dot(anterior_dir, left) * left)
    if up is None:
        return right, plane(-row)
    return -left, up
