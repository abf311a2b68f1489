"""Slicer MRML scene without the Slicer application (slicer-core).

One ``SceneContext`` holds a ``vtkMRMLScene`` and the module logics registered on it; the same
functions serve the CLI (headless, writes .seg.nrrd / .mrb) and the Slicer module (which passes
a context built around ``slicer.mrmlScene``). ``slicer`` is imported inside functions because
it takes 1-2 s.

Conventions: arrays are ``(S, R, C)`` = ``arrayFromVolume`` order and ``ijk_to_ras`` maps
(i=col, j=row, k=slice) to RAS mm (study.py). Label maps use the internal labels (labels.py).
Slicer stores a volume's IJK->RAS as spacing, origin and direction columns, so a sheared
matrix (gantry tilt) cannot be represented; orthogonal oblique matrices round trip exactly.

Writers are atomic: the file is written in a hidden temporary folder next to the target, with
the target's own name (Slicer picks the writer and the .mrb folder name from the file name),
then moved with ``os.replace``; nothing is left behind on failure.
"""
import contextlib
import os
import re
import shutil
import tempfile
from dataclasses import dataclass
from typing import Any

import numpy as np

from .errors import CardiacInputError, OutputExistsError
from .labels import SEGMENT_IDS, SEGMENTS, label_of_segment_name, unnamed_structures_problem

INSERTION_NODE_NAME = "RV insertion"
SIDES = ("anterior", "inferior")
# Control point labels are "S<k> <side>", k the 0-based slice index of Study.images (the same
# k as everywhere in the engine), e.g. "S3 anterior". The module parses them back when the user
# drags a point, so renaming a point in Slicer detaches it from its slice.
_POINT_LABEL = re.compile(r"^\s*S(\d+)\s+(anterior|inferior)\s*$", re.IGNORECASE)
TABLE_COLUMNS = ("Measure", "Value", "Unit")


@dataclass
class SceneContext:
    """A scene and its logics; holding them here also keeps the VTK logic objects alive."""
    scene: Any
    app_logic: Any = None
    colors_logic: Any = None
    volumes_logic: Any = None
    segmentations_logic: Any = None
    sequences_logic: Any = None
    markups_logic: Any = None
    tables_logic: Any = None


def application_context():
    """The context of a running Slicer application (the module's side; the engine and the
    tests build their own with ``new_scene``)."""
    import slicer
    modules = slicer.modules
    return SceneContext(scene=slicer.mrmlScene, app_logic=slicer.app.applicationLogic(),
                        colors_logic=modules.colors.logic(), volumes_logic=modules.volumes.logic(),
                        segmentations_logic=modules.segmentations.logic(),
                        sequences_logic=modules.sequences.logic(), markups_logic=modules.markups.logic(),
                        tables_logic=modules.tables.logic())


@dataclass
class StudyNodes:
    volume: Any                      # scalar volume (one frame) or the browser's proxy volume
    sequence: Any = None             # vtkMRMLSequenceNode when the study has several frames
    browser: Any = None              # vtkMRMLSequenceBrowserNode


# --------------------------------------------------------------------------------- scene
_CACHE_DIR = None


def _cache_dir():
    global _CACHE_DIR
    if _CACHE_DIR is None or not os.path.isdir(_CACHE_DIR):
        import atexit
        _CACHE_DIR = tempfile.mkdtemp(prefix="cardiacaiseg-mrml-cache-")
        atexit.register(shutil.rmtree, _CACHE_DIR, True)
    return _CACHE_DIR


def new_scene():
    """A fresh ``vtkMRMLScene`` bootstrapped like the Slicer application does it.

    Order matters (docs/architecture.md, "Slicer without the Slicer application"): cache + data
    IO managers (ReadFromMRB needs them), the application logic, then each logic gets the application logic *before* the scene - the
    Colors logic looks its files up through it, and segment converter rules exist only once
    the Segmentations logic has a scene (before that AddEmptySegment fails).
    """
    import slicer
    import vtk

    scene = slicer.vtkMRMLScene()
    cache = slicer.vtkCacheManager()
    # ReadFromMRB unpacks the bundle under the remote cache directory, which it finds through
    # the data IO manager: without both links it fails ("cannot retrieve remote cache
    # directory"). Slicer uses a folder in the temp dir; so do we, one per process.
    cache.SetRemoteCacheDirectory(_cache_dir())
    io_manager = slicer.vtkDataIOManager()
    io_manager.SetCacheManager(cache)
    scene.SetCacheManager(cache)
    scene.SetDataIOManager(io_manager)
    app = slicer.vtkSlicerApplicationLogic()
    app.SetMRMLScene(scene)

    colors = slicer.vtkSlicerColorLogic()
    colors.SetMRMLApplicationLogic(app)
    # slicer-core ships no ColorFiles folder, so the Colors logic warns that it cannot find
    # the file-based tables (GenericAnatomyColors, ...). The built-in tables it needs are
    # still created; silence only this step so real warnings stay visible.
    was_on = vtk.vtkObject.GetGlobalWarningDisplay()
    vtk.vtkObject.GlobalWarningDisplayOff()
    try:
        colors.SetMRMLScene(scene)
    finally:
        vtk.vtkObject.SetGlobalWarningDisplay(was_on)
    app.SetColorLogic(colors)
    app.SetModuleLogic("Colors", colors)

    ctx = SceneContext(scene=scene, app_logic=app, colors_logic=colors)
    for module, attr, cls in (("Volumes", "volumes_logic", slicer.vtkSlicerVolumesLogic),
                              ("Segmentations", "segmentations_logic", slicer.vtkSlicerSegmentationsModuleLogic),
                              ("Sequences", "sequences_logic", slicer.vtkSlicerSequencesLogic),
                              ("Markups", "markups_logic", slicer.vtkSlicerMarkupsLogic),
                              ("Tables", "tables_logic", slicer.vtkSlicerTablesLogic)):
        logic = cls()
        logic.SetMRMLApplicationLogic(app)
        logic.SetMRMLScene(scene)
        app.SetModuleLogic(module, logic)
        setattr(ctx, attr, logic)
    return ctx


def _vtk_matrix(m):
    import slicer.util
    return slicer.util.vtkMatrixFromArray(np.asarray(m, float))


def _array_matrix(vtk_matrix):
    import slicer.util
    return np.array(slicer.util.arrayFromVTKMatrix(vtk_matrix), float)


def volume_ijk_to_ras(volume_node):
    import vtk
    m = vtk.vtkMatrix4x4()
    volume_node.GetIJKToRASMatrix(m)
    return _array_matrix(m)


def _new_volume(name, array, ijk_to_ras):
    """A scalar volume node that is not in any scene (sequences copy their items)."""
    import slicer
    import slicer.util
    import vtk
    node = slicer.vtkMRMLScalarVolumeNode()
    node.SetName(name)
    node.SetIJKToRASMatrix(_vtk_matrix(ijk_to_ras))
    node.SetAndObserveImageData(vtk.vtkImageData())
    slicer.util.updateVolumeFromArray(node, np.ascontiguousarray(array))
    return node


FRAME_LABELS_NAME = "frame labels"


def store_frame_labels(ctx, labels, ijk_to_ras, name, node=None):
    """A sequence node (``node`` refilled, else a new one) of the label maps ``labels`` ({frame
    index: (S, R, C) internal labels}) as uint8 volumes indexed by frame index: saved in a scene
    as a .seq.nrrd, read back by ``frame_labels_of``."""
    if node is None:
        node = ctx.scene.AddNewNodeByClass("vtkMRMLSequenceNode", name)
        node.SetIndexName("frame")
        node.SetIndexUnit("")
        node.SetIndexType(node.NumericIndex)
        node.SetHideFromEditors(True)   # kept for the saved scene; the ED and ES segmentations are what is edited
    node.RemoveAllDataNodes()
    for t in sorted(labels):
        node.SetDataNodeAtValue(_new_volume(f"{name} {t}", np.asarray(labels[t], np.uint8), ijk_to_ras), str(int(t)))
    return node


def frame_labels_of(node):
    """{frame index: (S, R, C) uint8 labels} of a ``store_frame_labels`` sequence."""
    import slicer.util

    out = {}
    for n in range(node.GetNumberOfDataNodes()):
        volume = node.GetNthDataNode(n)
        if volume is not None and volume.GetImageData() is not None:
            out[int(float(node.GetNthIndexValue(n)))] = np.asarray(slicer.util.arrayFromVolume(volume), np.uint8)
    return out


def _index_values(study, tolerance):
    """(index name, unit, index values) of a study's sequence: its frame times in s, else frame
    numbers. A sequence keeps one item per index value, and takes two numeric values closer than
    its ``tolerance`` (Slicer's default 0.001) for one: a file with two frames at one time (which
    the readers accept with a warning, as the CLI measures it) or less than a millisecond apart is
    indexed by frame number, its times kept in ``FRAME_TIMES_S_ATTRIBUTE``."""
    frames = "frame", "", [str(t) for t in range(study.n_frames)]
    if study.frame_times_s is None:
        return frames
    times = np.asarray(study.frame_times_s, float)
    if times.shape != (study.n_frames,):
        raise ValueError(f"frame_times_s has {times.size} values for {study.n_frames} frames")
    # six significant digits read well in the browser; more where two times differ only past them
    values = [format(t, ".6g") for t in times]
    if len(set(values)) != len(values):
        values = [repr(float(t)) for t in times]
    stored = np.sort([float(v) for v in values])
    if stored.size > 1 and np.min(np.diff(stored)) <= tolerance:
        return frames
    return "time", "s", values


# on a sequence node whose index values are frame times this module's readers read
FRAME_TIMES_ATTRIBUTE = "CardiacAISeg.FrameTimes"
# on a sequence indexed by frame number because its frame times could not be index values
# (``_index_values``): the times, in s, one per frame
FRAME_TIMES_S_ATTRIBUTE = "CardiacAISeg.FrameTimesS"


@contextlib.contextmanager
def nodes_removed_on_failure(ctx):
    """Remove again every node added to the scene inside the block when the block fails: a study
    half added (its sequence but no browser) is no node anything should pick."""
    scene = ctx.scene
    before = {scene.GetNthNode(n).GetID() for n in range(scene.GetNumberOfNodes())}
    try:
        yield
    except BaseException:
        added = [scene.GetNthNode(n) for n in range(scene.GetNumberOfNodes())]
        added = [node for node in added if node.GetID() not in before]
        # browsers first: a proxy volume removed while its browser stands is made again by the
        # browser (with display and storage nodes), a copy of one frame left in the scene
        browsers_first = sorted(reversed(added), key=lambda node: not node.IsA("vtkMRMLSequenceBrowserNode"))
        for node in browsers_first:
            if scene.IsNodePresent(node):   # not taken out already with a node removed before it
                scene.RemoveNode(node)
        raise


def node_name(study):
    """The name of a study's image nodes: its name, and which series of its folder it holds
    (``results.series_text``, as the cohort table names it): stress and rest of one exam folder
    were both 'EXAM sequence', one not told from the other in the module's input and rest boxes
    (probe 87)."""
    from .results import series_text, source_of

    source = source_of(study)
    text = series_text(source) if source.get("series_uid") else ""
    return f"{study.name} {text}" if text and text not in study.name else study.name


def add_study(ctx, study):
    """Add the images of ``study``; returns ``StudyNodes``.

    One frame gives a scalar volume. Several frames give a sequence (index "time" in s from
    ``frame_times_s``; "frame" numbers without unit when the times are unknown, rather than
    invented seconds, or cannot be index values: ``_index_values``) and a browser whose proxy
    volume is what views show. Nothing is left in the scene when adding fails.
    """
    with nodes_removed_on_failure(ctx):
        return _add_study_nodes(ctx, study)


def _add_study_nodes(ctx, study):
    scene = ctx.scene
    name = node_name(study)
    if study.n_frames == 1:
        vol = _new_volume(name, study.images[0], study.ijk_to_ras)
        scene.AddNode(vol)
        vol.CreateDefaultDisplayNodes()
        return StudyNodes(volume=vol)

    seq = scene.AddNewNodeByClass("vtkMRMLSequenceNode", f"{name} sequence")
    index_name, unit, values = _index_values(study, seq.GetNumericIndexValueTolerance())
    seq.SetIndexName(index_name)
    seq.SetIndexUnit(unit)
    seq.SetIndexType(seq.NumericIndex)
    if unit == "s":   # times a reader vetted: 0, 1, 2 ... s here are real, not a writer's placeholder
        seq.SetAttribute(FRAME_TIMES_ATTRIBUTE, "read by CardiacAISeg")
    elif study.frame_times_s is not None:
        seq.SetAttribute(FRAME_TIMES_S_ATTRIBUTE, " ".join(repr(float(t)) for t in study.frame_times_s))
    for t, value in enumerate(values):
        seq.SetDataNodeAtValue(_new_volume(f"{name} {value}", study.images[t], study.ijk_to_ras), value)
    if seq.GetNumberOfDataNodes() != study.n_frames:
        raise RuntimeError(f"{name}: the sequence holds {seq.GetNumberOfDataNodes()} of {study.n_frames} frames")

    browser = scene.AddNewNodeByClass("vtkMRMLSequenceBrowserNode", f"{name} browser")
    browser.SetAndObserveMasterSequenceNodeID(seq.GetID())
    ctx.sequences_logic.UpdateProxyNodesFromSequences(browser)
    proxy = browser.GetProxyNode(seq)
    # Otherwise every frame change renames the proxy after the sequence node.
    browser.SetOverwriteProxyName(seq, False)
    proxy.SetName(name)
    if proxy.GetDisplayNode() is None:
        proxy.CreateDefaultDisplayNodes()
    return StudyNodes(volume=proxy, sequence=seq, browser=browser)


# -------------------------------------------------------------------------- segmentation
def _oriented_image(array, ijk_to_ras):
    import slicer
    import vtk
    from vtk.util import numpy_support
    a = np.ascontiguousarray(array, dtype=np.uint8)
    if a.ndim != 3:
        raise ValueError(f"label map must be (slice, row, col), got shape {a.shape}")
    s, r, c = a.shape
    img = slicer.vtkOrientedImageData()
    img.SetExtent(0, c - 1, 0, r - 1, 0, s - 1)
    img.AllocateScalars(vtk.VTK_UNSIGNED_CHAR, 1)
    # vtkImageData runs i fastest, then j, then k: the C order of an (S, R, C) array.
    numpy_support.vtk_to_numpy(img.GetPointData().GetScalars())[:] = a.ravel()
    img.SetImageToWorldMatrix(_vtk_matrix(ijk_to_ras))
    return img


def tag_frame(node, frame, n_frames):
    """Record in every segment's tags the cine ``frame`` (of ``n_frames``) a segmentation node
    belongs to (``labels.frame_tags``): saved with its .seg.nrrd, by Slicer too."""
    from .labels import frame_tags

    seg = node.GetSegmentation()
    for sid in seg.GetSegmentIDs():
        for key, value in frame_tags(frame, n_frames).items():
            seg.GetSegment(sid).SetTag(key, value)


def add_segmentation(ctx, label_map, ijk_to_ras, reference_volume=None, name="Segmentation", frame=None,
                     n_frames=None):
    """Segmentation node with "LV blood pool", "LV myocardium", "RV" (ids lv, myo, rv); ``frame``
    of ``n_frames``: the cine frame it belongs to, in its segments' tags (``tag_frame``).

    The three segments share one binary labelmap layer holding the label map itself (label
    values = internal labels), so the source representation lies exactly on the input grid
    and a .seg.nrrd of it is an ordinary 3D labelmap other tools can read too.
    """
    import slicer
    label_map = np.asarray(label_map)
    unknown = set(np.unique(label_map).tolist()) - {0} - {v for v, _ in SEGMENTS.values()}
    if unknown:
        raise ValueError(f"label map has values {sorted(unknown)} outside the internal labels (labels.py)")
    image = _oriented_image(label_map, ijk_to_ras)
    node = ctx.scene.AddNewNodeByClass("vtkMRMLSegmentationNode", name)
    node.CreateDefaultDisplayNodes()
    if reference_volume is not None:
        node.SetReferenceImageGeometryParameterFromVolumeNode(reference_volume)
    seg = node.GetSegmentation()
    binary = slicer.vtkSegmentationConverter.GetBinaryLabelmapRepresentationName()
    seg.SetSourceRepresentationName(binary)
    if reference_volume is None:
        # The editor paints on the reference geometry: make it the label map's own grid.
        seg.SetConversionParameter(slicer.vtkSegmentationConverter.GetReferenceImageGeometryParameterName(),
                                   slicer.vtkSegmentationConverter.SerializeImageGeometry(image))
    for seg_name, (value, colour) in SEGMENTS.items():
        segment = slicer.vtkSegment()
        segment.SetName(seg_name)
        segment.SetColor(*colour)
        # Auto-generated names/colours may be replaced by terminology defaults in Slicer.
        segment.SetNameAutoGenerated(False)
        segment.SetColorAutoGenerated(False)
        # The same image object in every segment = one shared layer, told apart by label value.
        segment.AddRepresentation(binary, image)
        segment.SetLabelValue(value)
        seg.AddSegment(segment, SEGMENT_IDS[seg_name])
    tag_frame(node, frame, n_frames)
    return node


def _geometry_image(ijk_to_ras, shape):
    import slicer
    s, r, c = shape
    img = slicer.vtkOrientedImageData()
    img.SetExtent(0, c - 1, 0, r - 1, 0, s - 1)
    img.SetImageToWorldMatrix(_vtk_matrix(ijk_to_ras))
    return img


def segmentation_geometry(seg_node):
    """(ijk_to_ras, (S, R, C)) of the segmentation's reference grid, extent shifted to start at 0."""
    import slicer
    import vtk
    seg = seg_node.GetSegmentation()
    text = seg.GetConversionParameter(slicer.vtkSegmentationConverter.GetReferenceImageGeometryParameterName())
    img = slicer.vtkOrientedImageData()
    if not text or not slicer.vtkSegmentationConverter.DeserializeImageGeometry(text, img, False):
        ids = seg.GetSegmentIDs()
        if not ids:
            return None
        seg_node.GetBinaryLabelmapRepresentation(ids[0], img)
    ext = img.GetExtent()
    if ext[1] < ext[0]:
        return None
    m = vtk.vtkMatrix4x4()
    img.GetImageToWorldMatrix(m)
    m = _array_matrix(m)
    m[:3, 3] = m[:3, :3] @ np.array([ext[0], ext[2], ext[4]], float) + m[:3, 3]
    shape = (ext[5] - ext[4] + 1, ext[3] - ext[2] + 1, ext[1] - ext[0] + 1)
    return m, shape


def _segment_ids(seg, name):
    """The segments of structure ``name``: every segment whose name says it ("LV", "Myocardium",
    "RV", ...: ``labels.label_of_segment_name``, the file reader's rule, which maps every such
    segment: a second "LV cavity" segment painted beside "LV" was left out here and counted from
    the saved file, EDV 295.5 vs 304.8 mL with no word; probe 67), else our id unless that
    segment's name says another structure. Matched by id first, segments the user renamed (LV
    and myocardium names swapped) were measured by their old roles here and by their names from
    the saved file (MBF 2.78 vs 17.1; probe round 18)."""
    wanted = SEGMENTS[name][0]
    named = [seg.GetNthSegmentID(n) for n in range(seg.GetNumberOfSegments())
             if label_of_segment_name(seg.GetNthSegment(n).GetName()) == wanted]
    if named:
        return named
    sid = SEGMENT_IDS[name]
    segment = seg.GetSegment(sid)
    if segment is not None and label_of_segment_name(segment.GetName()) in (None, wanted):
        return [sid]
    return []


def _segment_id(seg, name):
    """The first segment of structure ``name`` (``_segment_ids``), or None."""
    ids = _segment_ids(seg, name)
    return ids[0] if ids else None


def structures_in_several_segments(seg_node):
    """{structure: [segment names]} of the structures two or more segments of ``seg_node`` name."""
    seg = seg_node.GetSegmentation()
    out = {}
    for name in SEGMENTS:
        ids = _segment_ids(seg, name)
        if len(ids) > 1:
            out[name] = [seg.GetSegment(i).GetName() for i in ids]
    return out


def unused_segment_names(seg_node):
    """Names of the segments of ``seg_node`` that are not measured (not a known name of the LV
    blood pool, myocardium or RV): a "Scar" segment drawn over the myocardium was dropped
    without a word, where the CLI says it of a file."""
    return _unknown_segment_names(seg_node.GetSegmentation())


def _unknown_segment_names(seg):
    return [seg.GetNthSegment(n).GetName() for n in range(seg.GetNumberOfSegments())
            if label_of_segment_name(seg.GetNthSegment(n).GetName()) is None
            and label_of_segment_name(seg.GetNthSegmentID(n)) is None]


def overlapping_voxels(seg_node, ijk_to_ras, shape):
    """How many voxels of the grid two or more structure segments of ``seg_node`` share. The
    Segment Editor keeps one labelmap layer (each voxel one segment) unless its masking allows
    overlap, or a script sets a segment with the API: ``labelmap_from_segmentation`` then counts
    each shared voxel once (RV over myocardium over blood pool), and an LV painted over the wall
    was not counted with no word (probe 62)."""
    import slicer
    import vtk
    from vtk.util import numpy_support

    seg = seg_node.GetSegmentation()
    if seg.GetNumberOfLayers() < 2:
        return 0
    shape = tuple(int(n) for n in shape)
    reference = _geometry_image(ijk_to_ras, shape)
    claims = np.zeros(shape, np.uint8)
    for name in SEGMENTS:
        sids = _segment_ids(seg, name)
        if not sids:
            continue
        ids = vtk.vtkStringArray()
        for sid in sids:   # two segments of one structure overlapping is no double count
            ids.InsertNextValue(sid)
        one = slicer.vtkOrientedImageData()
        if not seg_node.GenerateMergedLabelmapForAllSegments(one, slicer.vtkSegmentation.EXTENT_REFERENCE_GEOMETRY,
                                                             reference, ids):
            continue
        claims += numpy_support.vtk_to_numpy(one.GetPointData().GetScalars()).reshape(shape) != 0
    return int((claims > 1).sum())


def labelmap_from_segmentation(seg_node, ijk_to_ras=None, shape=None, reference_volume=None):
    """(S, R, C) uint8 internal label map of ``seg_node`` on a reference grid.

    The grid is ``reference_volume``'s, else ``ijk_to_ras`` + ``shape``, else the
    segmentation's own reference geometry. Segments are found by id, then by name; where
    edited segments overlap the later one (RV over myocardium over blood pool) wins. On the
    grid the segmentation was made on no resampling happens, so the round trip is exact.
    """
    import slicer
    import vtk
    from vtk.util import numpy_support
    if reference_volume is not None:
        ijk_to_ras = volume_ijk_to_ras(reference_volume)
        shape = tuple(reference_volume.GetImageData().GetDimensions()[::-1])
    elif ijk_to_ras is None or shape is None:
        geometry = segmentation_geometry(seg_node)
        if geometry is None:
            raise ValueError(f"segmentation {seg_node.GetName()!r} has no geometry; pass ijk_to_ras and shape")
        ijk_to_ras, shape = geometry
    shape = tuple(int(n) for n in shape)
    reference = _geometry_image(ijk_to_ras, shape)

    seg = seg_node.GetSegmentation()
    ids, values, found = vtk.vtkStringArray(), vtk.vtkIntArray(), []
    for name, (value, _) in SEGMENTS.items():
        for sid in _segment_ids(seg, name):
            ids.InsertNextValue(sid)
            values.InsertNextValue(value)
            found.append(value)
    problem = unnamed_structures_problem(found, _unknown_segment_names(seg))
    if problem:   # said of the segmentation, not later as "no LV blood pool labelled" of the image
        raise CardiacInputError(seg_node.GetName(), problem)
    if ids.GetNumberOfValues() == 0:
        return np.zeros(shape, np.uint8)
    merged = slicer.vtkOrientedImageData()
    if not seg_node.GenerateMergedLabelmapForAllSegments(
            merged, slicer.vtkSegmentation.EXTENT_REFERENCE_GEOMETRY, reference, ids, values):
        raise RuntimeError(f"could not build a labelmap from segmentation {seg_node.GetName()!r}")
    if tuple(merged.GetExtent()) != tuple(reference.GetExtent()):
        raise RuntimeError(f"merged labelmap extent {merged.GetExtent()} != reference {reference.GetExtent()}")
    # The merged image is signed short whatever the input; values are 0..3.
    return numpy_support.vtk_to_numpy(merged.GetPointData().GetScalars()).reshape(shape).astype(np.uint8)


# ------------------------------------------------------------------------ atomic files
@contextlib.contextmanager
def atomic_output(path, overwrite=False):
    """Yield a temporary path with the same file name in a hidden folder beside ``path``;
    move it onto ``path`` when the block succeeds, remove everything when it fails."""
    path = os.path.abspath(os.fspath(path))
    if os.path.isdir(path):
        # replaced by a file, it failed with an IsADirectoryError naming the hidden temporary file
        raise CardiacInputError(path, "is a folder: give the name of the file to write")
    if os.path.exists(path) and not overwrite:
        raise OutputExistsError(f"{path}: exists; pass overwrite=True to replace it")
    folder = os.path.dirname(path)
    os.makedirs(folder, exist_ok=True)
    tmp_dir = tempfile.mkdtemp(prefix=".cardiacaiseg-tmp-", dir=folder)
    try:
        tmp = os.path.join(tmp_dir, os.path.basename(path))
        yield tmp
        if not os.path.isfile(tmp):
            raise OSError(f"{path}: the writer produced no file")
        os.replace(tmp, path)
    finally:
        shutil.rmtree(tmp_dir, ignore_errors=True)


def _write_storable(node, path, overwrite):
    with atomic_output(path, overwrite) as tmp:
        if not node.AddDefaultStorageNode(tmp):
            raise OSError(f"{path}: no storage node for {node.GetClassName()}")
        storage = node.GetStorageNode()
        storage.SetFileName(tmp)
        if not storage.WriteData(node):
            raise OSError(f"{path}: Slicer could not write {node.GetClassName()}")
    # The node must not keep pointing at the deleted temporary file.
    storage.SetFileName(os.path.abspath(os.fspath(path)))


def write_node(node, path, overwrite=False):
    """Write a storable node (segmentation, volume, markups, table) with its default storage."""
    _write_storable(node, path, overwrite)


def write_segmentation(path, label_map, ijk_to_ras, overwrite=False, ctx=None, name="Segmentation"):
    """Write ``label_map`` as a Slicer ``.seg.nrrd``; returns the segmentation node."""
    if not os.fspath(path).endswith(".seg.nrrd"):
        raise ValueError(f"{path}: a segmentation file must end with .seg.nrrd")
    ctx = ctx or new_scene()
    node = add_segmentation(ctx, label_map, ijk_to_ras, name=name)
    _write_storable(node, path, overwrite)
    return node


def load_segmentation(ctx, path):
    """Segmentation node read from ``path`` into ``ctx.scene``."""
    if not os.path.isfile(path):
        raise CardiacInputError(path, "no such file")
    node = ctx.segmentations_logic.LoadSegmentationFromFile(os.fspath(path), False)
    if node is None or node.GetSegmentation().GetNumberOfSegments() == 0:
        raise CardiacInputError(path, "not a readable Slicer segmentation (.seg.nrrd)")
    return node


def read_segmentation(path, ctx=None):
    """(label_map (S, R, C) uint8, ijk_to_ras 4x4, segment names) from a ``.seg.nrrd``."""
    ctx = ctx or new_scene()
    node = load_segmentation(ctx, path)
    geometry = segmentation_geometry(node)
    if geometry is None:
        raise CardiacInputError(path, "segmentation has no image geometry")
    ijk_to_ras, shape = geometry
    seg = node.GetSegmentation()
    names = [seg.GetSegment(sid).GetName() for sid in seg.GetSegmentIDs()]
    return labelmap_from_segmentation(node, ijk_to_ras, shape), ijk_to_ras, names


# ------------------------------------------------------------------------------ markups
def point_label(slice_index, side):
    return f"S{int(slice_index)} {side}"


def add_insertion_markups(ctx, points, name=INSERTION_NODE_NAME, node=None):
    """One fiducial node holding the RV insertion points, labelled ``"S<k> anterior|inferior"``.

    ``points``: [{"slice": k, "anterior_ras": (x, y, z) or None, "inferior_ras": ...}, ...].
    The number of points is fixed so the user can drag points but not add stray ones; the
    module observes PointModifiedEvent / PointEndInteractionEvent and reads them back with
    ``insertion_points_from_markups``. Pass ``node`` to refill an existing node in place, so
    observers the module attached stay attached.
    """
    if node is None:
        node = ctx.scene.AddNewNodeByClass("vtkMRMLMarkupsFiducialNode", name)
        node.CreateDefaultDisplayNodes()
    else:
        node.SetFixedNumberOfControlPoints(False)   # else RemoveAllControlPoints is refused
        node.RemoveAllControlPoints()
    for p in sorted(points, key=lambda p: int(p["slice"])):
        for side in SIDES:
            ras = p.get(f"{side}_ras")
            if ras is not None:
                node.AddControlPoint([float(x) for x in ras], point_label(p["slice"], side))
    node.SetFixedNumberOfControlPoints(True)
    return node


def insertion_points_from_markups(node):
    """Points back as [{"slice", "anterior_ras", "inferior_ras"}], sorted by slice; a side
    with no point is None; points whose label is not ``S<k> <side>`` are ignored."""
    by_slice = {}
    pos = [0.0, 0.0, 0.0]
    for n in range(node.GetNumberOfControlPoints()):
        match = _POINT_LABEL.match(node.GetNthControlPointLabel(n) or "")
        if not match:
            continue
        node.GetNthControlPointPosition(n, pos)
        k, side = int(match.group(1)), match.group(2).lower()
        entry = by_slice.setdefault(k, {"slice": k, "anterior_ras": None, "inferior_ras": None})
        entry[f"{side}_ras"] = np.array(pos, float)
    return [by_slice[k] for k in sorted(by_slice)]


# -------------------------------------------------------------------------------- table
def add_results_table(ctx, rows, name="CardiacAISeg results"):
    """Table node with columns Measure, Value, Unit (one row per measure).

    Units differ per row, so they live in the Unit column; the Value column also gets a
    unit label (the table's own column property, as SegmentStatistics sets it) when every
    row shares one unit, so Slicer's table view shows it in the header.
    """
    import vtk
    measure, value, unit = vtk.vtkStringArray(), vtk.vtkDoubleArray(), vtk.vtkStringArray()
    for array, column in zip((measure, value, unit), TABLE_COLUMNS):
        array.SetName(column)
    for row in rows:
        measure.InsertNextValue(str(row["measure"]))
        v = row.get("value")
        value.InsertNextValue(float("nan") if v is None else float(v))
        unit.InsertNextValue(str(row.get("unit") or ""))
    node = ctx.scene.AddNewNodeByClass("vtkMRMLTableNode", name)
    # Columns filled before they are added: AddEmptyRow on a table without columns adds
    # a default column of its own.
    for array in (measure, value, unit):
        node.AddColumn(array)
    units = {str(r.get("unit") or "") for r in rows}
    if len(units) == 1:
        node.SetColumnUnitLabel("Value", units.pop())
    node.SetColumnDescription("Measure", "Measure computed by CardiacAISeg")
    node.SetColumnDescription("Unit", "Unit of the value in the same row")
    return node


def table_rows(node):
    """[{"measure", "value" (float, nan when missing), "unit"}] from a results table."""
    table = node.GetTable()
    cols = [table.GetColumnByName(c) for c in TABLE_COLUMNS]
    if any(c is None for c in cols):
        raise ValueError(f"table {node.GetName()!r} lacks one of the columns {TABLE_COLUMNS}")
    rows = []
    for r in range(table.GetNumberOfRows()):
        text = cols[1].GetVariantValue(r).ToString()
        try:
            v = float(text)
        except ValueError:
            v = float("nan")
        rows.append({"measure": cols[0].GetValue(r), "value": v, "unit": cols[2].GetValue(r)})
    return rows


# ---------------------------------------------------------------------------------- mrb
def write_mrb(ctx, path, overwrite=False):
    """Write the whole scene as a Slicer bundle (.mrb)."""
    if not os.fspath(path).endswith(".mrb"):
        raise ValueError(f"{path}: a scene bundle must end with .mrb")
    import slicer
    messages = slicer.vtkMRMLMessageCollection()
    with atomic_output(path, overwrite) as tmp:
        if not ctx.scene.WriteToMRB(tmp, None, messages):
            raise OSError(f"{path}: writing the scene failed: {messages.GetAllMessagesAsString()}")
        _fix_zip_times(tmp)


def _fix_zip_times(path):
    """Rewrite a zip with one fixed timestamp per entry: the same scene gives the same bytes.

    WriteToMRB stamps each entry with the time it wrote the file, so two runs on the same input
    would differ in those bytes alone (determinism is part of what a cohort or a regulator checks).
    """
    import zipfile

    fixed = (1980, 1, 1, 0, 0, 0)
    with zipfile.ZipFile(path) as src:
        entries = [(info, src.read(info)) for info in src.infolist()]
    tmp = f"{path}.fixed"
    with zipfile.ZipFile(tmp, "w") as dst:
        for info, data in entries:
            out = zipfile.ZipInfo(info.filename, date_time=fixed)
            out.compress_type, out.external_attr = info.compress_type, info.external_attr
            dst.writestr(out, data)
    os.replace(tmp, path)


def read_mrb(path):
    """A fresh ``SceneContext`` with the bundle at ``path`` loaded."""
    import slicer
    if not os.path.isfile(path):
        raise CardiacInputError(path, "no such file")
    ctx = new_scene()
    messages = slicer.vtkMRMLMessageCollection()
    # absolute: the bundle is unpacked into a temporary folder the reader moves into, where a
    # relative path named nothing ("No URL specified"), and that folder, deleted, was left the
    # process' working directory, so the next read failed too (probe 96)
    here = os.getcwd()
    try:
        read = ctx.scene.ReadFromMRB(os.path.abspath(os.fspath(path)), False, messages)
    finally:
        os.chdir(here)   # unconditionally: in a deleted folder os.getcwd() itself raises
    if not read:
        raise CardiacInputError(path, f"not a readable Slicer scene bundle: {messages.GetAllMessagesAsString()}")
    return ctx


def nodes_by_class(ctx, class_name):
    """Nodes of a class in *this* scene (``slicer.util.getNodesByClass`` ignores its scene)."""
    return [ctx.scene.GetNthNodeByClass(n, class_name) for n in range(ctx.scene.GetNumberOfNodesByClass(class_name))]
