"""scene.py against real slicer-core: segmentation files, labelmap round trips, .mrb bundles."""
import os

import numpy as np
import pytest

pytest.importorskip("slicer")

from CardiacAISegLib import scene as sc  # noqa: E402
from CardiacAISegLib.errors import CardiacInputError, OutputExistsError  # noqa: E402
from CardiacAISegLib.labels import SEGMENT_IDS, SEGMENTS  # noqa: E402
from CardiacAISegLib.study import Study  # noqa: E402


def oblique_affine():
    a, b = 0.3, 0.5
    rz = np.array([[np.cos(a), -np.sin(a), 0], [np.sin(a), np.cos(a), 0], [0, 0, 1]])
    rx = np.array([[1, 0, 0], [0, np.cos(b), -np.sin(b)], [0, np.sin(b), np.cos(b)]])
    m = np.eye(4)
    m[:3, :3] = rz @ rx @ np.diag([1.37, 1.37, 8.2])
    m[:3, 3] = [-30.5, 12.25, 40.125]
    return m


def synthetic_labels(shape=(4, 40, 50), seed=0):
    s, r, c = shape
    lab = np.zeros(shape, np.uint8)
    jj, ii = np.mgrid[:r, :c]
    dist = np.hypot(jj - 20, ii - 28)
    for k in range(s - 1):
        lab[k][dist < 12 - k] = 2
        lab[k][dist < 7 - k] = 1
        lab[k][np.hypot(jj - 20, ii - 10) < 6] = 3
    # Speckle: an exact round trip must keep isolated voxels at the edges of the grid too.
    rng = np.random.default_rng(seed)
    lab[-1] = rng.integers(0, 4, (r, c))
    return lab


@pytest.fixture(scope="module")
def ctx():
    return sc.new_scene()


@pytest.fixture(scope="module")
def study():
    rng = np.random.default_rng(1)
    images = rng.normal(100, 20, (3, 4, 40, 50)).astype(np.float32)
    return Study(images, oblique_affine(), frame_times_s=[0.0, 0.0375, 0.075], name="cine")


def test_logics_are_registered(ctx):
    assert ctx.scene.GetNumberOfNodesByClass("vtkMRMLColorTableNode") > 0
    for attr in ("volumes_logic", "segmentations_logic", "sequences_logic", "markups_logic"):
        logic = getattr(ctx, attr)
        assert logic is not None and logic.GetMRMLScene() is ctx.scene


def test_single_frame_volume(ctx):
    import slicer.util
    images = np.arange(2 * 3 * 4, dtype=np.float32).reshape(1, 2, 3, 4)
    nodes = sc.add_study(ctx, Study(images, oblique_affine(), name="single"))
    assert nodes.sequence is None and nodes.volume.IsA("vtkMRMLScalarVolumeNode")
    np.testing.assert_array_equal(slicer.util.arrayFromVolume(nodes.volume), images[0])
    np.testing.assert_allclose(sc.volume_ijk_to_ras(nodes.volume), oblique_affine(), atol=1e-9)


def test_a_study_refused_after_its_browser_made_a_proxy_leaves_no_node(study):
    """A block that fails once the sequence browser has made its proxy volume: removing the
    proxy while its browser stood made the browser add another (with display and storage
    nodes), left in the scene as a copy of one frame (review of session 48)."""
    ctx = sc.new_scene()
    scene = ctx.scene
    before = {scene.GetNthNode(n).GetID() for n in range(scene.GetNumberOfNodes())}
    with pytest.raises(CardiacInputError, match="refused after adding"):
        with sc.nodes_removed_on_failure(ctx):
            nodes = sc.add_study(ctx, study)
            assert nodes.browser is not None and nodes.volume is not None
            raise CardiacInputError(study.name, "refused after adding")
    left = {scene.GetNthNode(n).GetID() for n in range(scene.GetNumberOfNodes())} - before
    assert not left


def test_labelmap_round_trip_through_segmentation_is_exact_on_oblique_grid(ctx, study):
    lab = synthetic_labels()
    node = sc.add_segmentation(ctx, lab, study.ijk_to_ras, name="roundtrip")
    seg = node.GetSegmentation()
    assert seg.GetSegmentIDs() == tuple(SEGMENT_IDS.values())
    assert seg.GetSourceRepresentationName() == "Binary labelmap"
    out = sc.labelmap_from_segmentation(node, study.ijk_to_ras, lab.shape)
    assert out.dtype == np.uint8
    np.testing.assert_array_equal(out, lab)
    np.testing.assert_array_equal(sc.labelmap_from_segmentation(node), lab)   # own geometry
    vol = sc.add_study(ctx, Study(study.images[:1], study.ijk_to_ras, name="ref")).volume
    np.testing.assert_array_equal(sc.labelmap_from_segmentation(node, reference_volume=vol), lab)


def test_labelmap_from_segmentation_made_in_slicer(ctx, study):
    """Segments the user created (own ids, one layer each) are found by name."""
    import slicer
    lab = synthetic_labels(seed=3)
    node = ctx.scene.AddNewNodeByClass("vtkMRMLSegmentationNode", "user")
    for n, (name, (value, colour)) in enumerate(SEGMENTS.items()):
        image = sc._oriented_image((lab == value).astype(np.uint8), study.ijk_to_ras)
        segment = slicer.vtkSegment()
        segment.SetName(name)
        segment.AddRepresentation("Binary labelmap", image)
        node.GetSegmentation().AddSegment(segment, f"Segment_{n + 1}")
    assert node.GetSegmentation().GetNumberOfLayers() == 3
    np.testing.assert_array_equal(sc.labelmap_from_segmentation(node, study.ijk_to_ras, lab.shape), lab)


def test_bad_labels_are_refused(ctx, study):
    with pytest.raises(ValueError, match="outside the internal labels"):
        sc.add_segmentation(ctx, np.full((2, 3, 4), 7, np.uint8), study.ijk_to_ras)


def test_seg_nrrd_loads_into_fresh_scene(tmp_path, study):
    lab = synthetic_labels()
    path = tmp_path / "case.seg.nrrd"
    sc.write_segmentation(path, lab, study.ijk_to_ras)
    assert sorted(os.listdir(tmp_path)) == ["case.seg.nrrd"]      # no temporary left over

    fresh = sc.new_scene()
    node = sc.load_segmentation(fresh, str(path))
    seg = node.GetSegmentation()
    names = [seg.GetSegment(i).GetName() for i in seg.GetSegmentIDs()]
    assert names == list(SEGMENTS)
    for name, (_, colour) in SEGMENTS.items():
        np.testing.assert_allclose(seg.GetSegment(SEGMENT_IDS[name]).GetColor(), colour, atol=1e-6)
    m, shape = sc.segmentation_geometry(node)
    np.testing.assert_allclose(m, study.ijk_to_ras, atol=1e-6)
    assert shape == lab.shape
    np.testing.assert_array_equal(sc.labelmap_from_segmentation(node), lab)

    lab2, m2, names2 = sc.read_segmentation(str(path))
    np.testing.assert_array_equal(lab2, lab)
    np.testing.assert_allclose(m2, study.ijk_to_ras, atol=1e-6)
    assert names2 == list(SEGMENTS)


def test_missing_or_bad_segmentation_file(tmp_path):
    with pytest.raises(CardiacInputError, match="no such file"):
        sc.read_segmentation(str(tmp_path / "none.seg.nrrd"))
    bad = tmp_path / "bad.seg.nrrd"
    bad.write_text("not nrrd")
    with pytest.raises(CardiacInputError, match=str(bad)):
        sc.read_segmentation(str(bad))


def test_mrb_round_trip(ctx, study, tmp_path):
    import slicer.util
    lab = synthetic_labels()
    nodes = sc.add_study(ctx, study)
    assert nodes.volume.GetName() == "cine"
    sc.add_segmentation(ctx, lab, study.ijk_to_ras, reference_volume=nodes.volume, name="cine segmentation")
    points = [{"slice": 1, "anterior_ras": (1.5, -2.25, 30.0), "inferior_ras": (4.0, 5.5, 31.0)},
              {"slice": 2, "anterior_ras": (2.0, -1.0, 38.0), "inferior_ras": None}]
    sc.add_insertion_markups(ctx, points)
    rows = [{"measure": "LVEF", "value": 57.25, "unit": "%"},
            {"measure": "LVEDV", "value": 142.5, "unit": "mL"},
            {"measure": "LV mass", "value": None, "unit": "g"}]
    sc.add_results_table(ctx, rows, name="results")
    sc.add_results_table(ctx, [{"measure": "MBF seg 1", "value": 2.5, "unit": "mL/min/g"},
                               {"measure": "MBF seg 2", "value": 0.75, "unit": "mL/min/g"}], name="mbf")
    path = tmp_path / "scene.mrb"
    sc.write_mrb(ctx, str(path))
    assert sorted(os.listdir(tmp_path)) == ["scene.mrb"]

    back = sc.read_mrb(str(path))
    seqs = sc.nodes_by_class(back, "vtkMRMLSequenceNode")
    seq = [s for s in seqs if s.GetName() == "cine sequence"][0]
    assert (seq.GetIndexName(), seq.GetIndexUnit()) == ("time", "s")
    assert [seq.GetNthIndexValue(t) for t in range(3)] == ["0", "0.0375", "0.075"]
    for t in range(3):
        np.testing.assert_array_equal(slicer.util.arrayFromVolume(seq.GetNthDataNode(t)), study.images[t])
    browser = [b for b in sc.nodes_by_class(back, "vtkMRMLSequenceBrowserNode") if b.GetName() == "cine browser"][0]
    proxy = browser.GetProxyNode(seq)
    assert proxy is not None and proxy.GetName() == "cine"
    np.testing.assert_allclose(sc.volume_ijk_to_ras(proxy), study.ijk_to_ras, atol=1e-6)

    seg = [n for n in sc.nodes_by_class(back, "vtkMRMLSegmentationNode") if n.GetName() == "cine segmentation"][0]
    np.testing.assert_array_equal(sc.labelmap_from_segmentation(seg, reference_volume=proxy), lab)

    (markups,) = [n for n in sc.nodes_by_class(back, "vtkMRMLMarkupsFiducialNode") if n.GetName() == "RV insertion"]
    labels = [markups.GetNthControlPointLabel(n) for n in range(markups.GetNumberOfControlPoints())]
    assert labels == ["S1 anterior", "S1 inferior", "S2 anterior"]
    got = sc.insertion_points_from_markups(markups)
    assert [p["slice"] for p in got] == [1, 2]
    np.testing.assert_allclose(got[0]["anterior_ras"], points[0]["anterior_ras"], atol=1e-6)
    np.testing.assert_allclose(got[0]["inferior_ras"], points[0]["inferior_ras"], atol=1e-6)
    np.testing.assert_allclose(got[1]["anterior_ras"], points[1]["anterior_ras"], atol=1e-6)
    assert got[1]["inferior_ras"] is None

    tables = {n.GetName(): n for n in sc.nodes_by_class(back, "vtkMRMLTableNode")}
    table = sc.table_rows(tables["results"])
    assert [(r["measure"], r["unit"]) for r in table] == [(r["measure"], r["unit"]) for r in rows]
    assert table[0]["value"] == 57.25 and table[1]["value"] == 142.5 and np.isnan(table[2]["value"])
    assert tables["results"].GetColumnUnitLabel("Value") == ""          # mixed units: per row
    assert tables["mbf"].GetColumnUnitLabel("Value") == "mL/min/g"
    assert [r["value"] for r in sc.table_rows(tables["mbf"])] == [2.5, 0.75]


def test_existing_output_needs_overwrite(ctx, study, tmp_path):
    lab = synthetic_labels()
    seg_path, mrb_path = tmp_path / "a.seg.nrrd", tmp_path / "a.mrb"
    sc.write_segmentation(seg_path, lab, study.ijk_to_ras)
    sc.write_mrb(ctx, mrb_path)
    with pytest.raises(OutputExistsError):
        sc.write_segmentation(seg_path, lab, study.ijk_to_ras)
    with pytest.raises(OutputExistsError):
        sc.write_mrb(ctx, mrb_path)
    lab2 = lab.copy()
    lab2[0] = 0
    sc.write_segmentation(seg_path, lab2, study.ijk_to_ras, overwrite=True)
    np.testing.assert_array_equal(sc.read_segmentation(seg_path)[0], lab2)
    sc.write_mrb(ctx, mrb_path, overwrite=True)
    assert sorted(os.listdir(tmp_path)) == ["a.mrb", "a.seg.nrrd"]


def test_failed_write_leaves_no_partial_file(ctx, study, tmp_path, monkeypatch):
    target = tmp_path / "x.mrb"
    with pytest.raises(RuntimeError):
        with sc.atomic_output(target) as tmp:
            with open(tmp, "wb") as f:
                f.write(b"half a file")
            raise RuntimeError("disk full")
    assert os.listdir(tmp_path) == []

    target.write_bytes(b"old")                 # a failed overwrite keeps the old file
    with pytest.raises(RuntimeError):
        with sc.atomic_output(target, overwrite=True) as tmp:
            open(tmp, "wb").write(b"new, incomplete")
            raise RuntimeError("interrupted")
    assert target.read_bytes() == b"old" and os.listdir(tmp_path) == ["x.mrb"]

    def broken_replace(src, dst):
        raise OSError("cannot move")
    monkeypatch.setattr(sc.os, "replace", broken_replace)
    with pytest.raises(OSError):
        sc.write_segmentation(tmp_path / "y.seg.nrrd", synthetic_labels(), study.ijk_to_ras)
    with pytest.raises(OSError):
        sc.write_mrb(ctx, tmp_path / "y.mrb")
    assert os.listdir(tmp_path) == ["x.mrb"]


def test_insertion_markups_fixed_count_and_refill(ctx):
    node = sc.add_insertion_markups(ctx, [{"slice": 0, "anterior_ras": (1, 2, 3), "inferior_ras": (4, 5, 6)}],
                                    name="refill")
    assert node.GetFixedNumberOfControlPoints()        # the user drags, but adds no stray points
    node.SetNthControlPointPosition(1, 7.0, 8.0, 9.0)   # a drag
    np.testing.assert_allclose(sc.insertion_points_from_markups(node)[0]["inferior_ras"], (7, 8, 9))
    same = sc.add_insertion_markups(ctx, [{"slice": 3, "anterior_ras": (0, 0, 1), "inferior_ras": None}],
                                    node=node)
    assert same is node and node.GetNumberOfControlPoints() == 1
    assert [p["slice"] for p in sc.insertion_points_from_markups(node)] == [3]
