"""segmentation.seg.nrrd without Slicer (seg_nrrd.py) against the file Slicer's storage node writes
from the Logic's scene (today's and the GUIs' writer): same header fields, same voxels, and it loads
back through slicer-core with the same segments, colours, label values and geometry."""
import gzip

import numpy as np
import pytest

from CardiacAISegLib import seg_nrrd
from CardiacAISegLib.analysis import Analysis
from CardiacAISegLib.errors import CardiacInputError
from CardiacAISegLib.labels import RV, SEGMENT_IDS, SEGMENTS, frame_of_header
from CardiacAISegLib.outputs import segmentation_frames
from CardiacAISegLib.phantoms.phantom import make_cine_phantom

# header fields that hold floating point geometry: Slicer's differ from ours in the last digit
# (it splits the matrix into spacing and directions and multiplies them again, in VTK and ITK)
GEOMETRY_FIELDS = ("space directions", "space origin")


@pytest.fixture(scope="module")
def analysis():
    study, _ = make_cine_phantom(seed=5, n_frames=8, n_slices=6, size=80)
    return Analysis(study, {t: m.copy() for t, m in study.labels.items()}).run()


def _header_and_voxels(path):
    raw = path.read_bytes()
    end = raw.index(b"\n\n")
    lines = raw[:end].decode("latin-1").splitlines()
    return lines, gzip.decompress(raw[end + 2:])


def _numbers(text):
    return np.array([float(x) for x in text.replace("(", " ").replace(")", " ").replace(",", " ").split()])


def _split_conversion_parameters(text):
    """{name: (value, description)} of a Segmentation_ConversionParameters value."""
    out = {}
    for entry in filter(None, text.split("&")):
        name, value, description = entry.split("|")
        out[name] = (value, description)
    return out


def assert_same_seg_nrrd(ours, slicers):
    """Every header line the same, in the same order; geometry to 1e-9 mm; voxels identical."""
    lines_a, voxels_a = _header_and_voxels(ours)
    lines_b, voxels_b = _header_and_voxels(slicers)
    assert [ln.partition(":")[0] for ln in lines_a] == [ln.partition(":")[0] for ln in lines_b]
    for a, b in zip(lines_a, lines_b):
        key = a.partition(":")[0]
        if key in GEOMETRY_FIELDS:
            np.testing.assert_allclose(_numbers(a.partition(":")[2]), _numbers(b.partition(":")[2]), rtol=0, atol=1e-9)
        elif key == "Segmentation_ConversionParameters":
            pa, pb = (_split_conversion_parameters(x.partition(":=")[2]) for x in (a, b))
            assert list(pa) == list(pb)
            geometry = "Reference image geometry"
            for name in pa:
                if name != geometry:
                    assert pa[name] == pb[name], name
            assert pa[geometry][1] == pb[geometry][1]
            ga, gb = (v[0].rstrip(";").split(";") for v in (pa[geometry], pb[geometry]))
            np.testing.assert_allclose(np.array(ga, float), np.array(gb, float), rtol=0, atol=1e-9)
        else:
            assert a == b
    assert voxels_a == voxels_b


def test_written_like_slicer_writes_the_logic_scene(analysis, tmp_path):
    """The files outputs.py writes equal the ones Slicer's storage node writes from the scene the
    Logic builds (scene.mrb's nodes), for the ED and the ES segmentation."""
    pytest.importorskip("slicer")
    from CardiacAISegLib import scene as sc
    from CardiacAISegLib.logic import build_output_scene

    _, storables = build_output_scene(analysis)
    frames = segmentation_frames(analysis)
    assert set(frames) == set(storables) == {"segmentation.seg.nrrd", "segmentation_es.seg.nrrd"}
    for name, frame in frames.items():
        sc.write_node(storables[name], tmp_path / f"slicer-{name}")
        seg_nrrd.write_seg_nrrd(tmp_path / name, analysis.labels[frame], analysis.study.ijk_to_ras, frame=frame,
                                n_frames=analysis.study.n_frames)
        assert frame_of_header(seg_nrrd.read_seg_nrrd(tmp_path / f"slicer-{name}")[2]) == (frame, 8)
        assert_same_seg_nrrd(tmp_path / name, tmp_path / f"slicer-{name}")


def test_loads_back_through_slicer_core(analysis, tmp_path):
    pytest.importorskip("slicer")
    from CardiacAISegLib import scene as sc

    frame = analysis.reference_frame
    labels = analysis.labels[frame]
    path = seg_nrrd.write_seg_nrrd(tmp_path / "segmentation.seg.nrrd", labels, analysis.study.ijk_to_ras)
    ctx = sc.new_scene()
    node = sc.load_segmentation(ctx, str(path))
    seg = node.GetSegmentation()
    assert list(seg.GetSegmentIDs()) == list(SEGMENT_IDS.values())
    for name, (value, colour) in SEGMENTS.items():
        segment = seg.GetSegment(SEGMENT_IDS[name])
        assert segment.GetName() == name and segment.GetLabelValue() == value
        np.testing.assert_allclose(segment.GetColor(), colour, atol=1e-6)
    ijk_to_ras, shape = sc.segmentation_geometry(node)
    np.testing.assert_allclose(ijk_to_ras, analysis.study.ijk_to_ras, atol=1e-9)
    assert shape == labels.shape
    np.testing.assert_array_equal(sc.labelmap_from_segmentation(node), labels)
    back, m, names = sc.read_segmentation(str(path))
    np.testing.assert_array_equal(back, labels)
    assert names == list(SEGMENTS)


def test_reads_back_without_slicer_and_with_pynrrd(analysis, tmp_path):
    import nrrd

    labels = analysis.labels[analysis.reference_frame]
    assert set(np.unique(labels)) == {0, 1, 2, 3}
    path = seg_nrrd.write_seg_nrrd(tmp_path / "a.seg.nrrd", labels, analysis.study.ijk_to_ras)
    back, m, header = seg_nrrd.read_seg_nrrd(path)
    np.testing.assert_array_equal(back, labels)
    np.testing.assert_allclose(m, analysis.study.ijk_to_ras, atol=1e-12)
    assert [header[f"Segment{n}_Name"] for n in range(3)] == list(SEGMENTS)
    data, h = nrrd.read(str(path))          # pynrrd: (i, j, k) axis order, LPS space
    np.testing.assert_array_equal(data.transpose(2, 1, 0), labels)
    lps = np.diag([-1.0, -1.0, 1.0])
    np.testing.assert_allclose(lps @ h["space directions"].T, analysis.study.ijk_to_ras[:3, :3], atol=1e-12)
    np.testing.assert_allclose(lps @ h["space origin"], analysis.study.ijk_to_ras[:3, 3], atol=1e-12)
    assert h["Segment2_LabelValue"] == str(RV)
    # the same label map gives the same bytes (gzip without a time stamp)
    again = seg_nrrd.write_seg_nrrd(tmp_path / "b.seg.nrrd", labels, analysis.study.ijk_to_ras)
    assert again.read_bytes() == path.read_bytes()


@pytest.mark.parametrize("removed", [(RV,), (1, 2, 3)], ids=["no RV", "empty"])
def test_a_map_with_empty_segments_is_written_like_slicer(analysis, tmp_path, removed):
    """A perfusion mask has no RV: Slicer still lists the empty segment on the shared layer
    (and all three, with the layer's extent, when nothing is labelled)."""
    pytest.importorskip("slicer")
    from CardiacAISegLib import scene as sc

    labels = analysis.labels[analysis.reference_frame].copy()
    labels[np.isin(labels, removed)] = 0
    sc.write_segmentation(tmp_path / "slicer.seg.nrrd", labels, analysis.study.ijk_to_ras)
    seg_nrrd.write_seg_nrrd(tmp_path / "ours.seg.nrrd", labels, analysis.study.ijk_to_ras)
    assert_same_seg_nrrd(tmp_path / "ours.seg.nrrd", tmp_path / "slicer.seg.nrrd")


def test_refusals(analysis, tmp_path):
    m = analysis.study.ijk_to_ras
    with pytest.raises(ValueError, match=r"values \[7\] outside the internal labels"):
        seg_nrrd.write_seg_nrrd(tmp_path / "x.seg.nrrd", np.full((2, 3, 4), 7, np.uint8), m)
    with pytest.raises(ValueError, match="must end with .seg.nrrd"):
        seg_nrrd.write_seg_nrrd(tmp_path / "x.nrrd", np.zeros((2, 3, 4), np.uint8), m)
    assert not list(tmp_path.iterdir())
    bad = tmp_path / "bad.seg.nrrd"
    bad.write_bytes(b"NRRD0004\ntype: float\ndimension: 3\n\n")
    with pytest.raises(CardiacInputError, match=rf"{bad}: not a readable segmentation NRRD \(type 'float'"):
        seg_nrrd.read_seg_nrrd(bad)
    with pytest.raises(CardiacInputError, match="no such file"):
        seg_nrrd.read_seg_nrrd(tmp_path / "none.seg.nrrd")
