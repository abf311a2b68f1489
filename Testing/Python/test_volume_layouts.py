"""Volume files laid out as real tools write them, read to the plain file's numbers (probe 105).

Each test writes the cine (or perfusion) phantom the plain way and the way a tool writes it, runs
`cardiacaiseg analyze` on both with the phantom's labels, and compares: the numbers must be the
plain file's, and what the reader did about the layout must be said.
"""
import json

import numpy as np
import pytest

from CardiacAISegLib import cli
from CardiacAISegLib.phantoms.phantom import write_phantom
from CardiacAISegLib.readers.volume import load_frame_folder, load_volume

CINE_MEASURES = ("lv_edv_ml", "lv_esv_ml", "lv_ef_pct", "lv_mass_g", "rv_edv_ml")


@pytest.fixture(scope="module")
def cine(tmp_path_factory):
    """The cine phantom (20 frames, 96 x 96 pixels of 1.58 mm, 10 slices 8.54 mm apart) as the
    phantom command writes it, and its analysis."""
    folder = tmp_path_factory.mktemp("cine")
    paths, _, _ = write_phantom("cine", folder / "phantom", seed=0, size=96)
    return paths["cine.nii.gz"], paths["cine_labels.nii.gz"], _analyze(paths["cine.nii.gz"], paths["cine_labels.nii.gz"],
                                                                         folder / "plain")


def _analyze(image, labels, out, *extra):
    rc = cli.main(["analyze", str(image), "--labels", str(labels), "--out", str(out), "--quiet", *extra])
    assert rc == 0
    return json.loads((out / "results.json").read_text())


def _analyze_error(capsys, image, labels, out, *extra):
    capsys.readouterr()
    rc = cli.main(["analyze", str(image), "--labels", str(labels), "--out", str(out), "--quiet", *extra])
    err = capsys.readouterr().err
    assert rc == 2 and "Traceback" not in err, err
    lines = [ln for ln in err.splitlines() if ln.startswith("error:")]
    assert len(lines) == 1, err
    return lines[0]


def _same_cine_numbers(doc, plain):
    for key in CINE_MEASURES:
        assert doc["cine"][key] == pytest.approx(plain["cine"][key], rel=1e-9), key
    # AHA wall thickness reads the slices' planes: +83 % on long-axis cuts (probe 105)
    got = [s["wall_thickness_ed_mm"] for s in doc["cine"]["segments"]]
    want = [s["wall_thickness_ed_mm"] for s in plain["cine"]["segments"]]
    assert got == pytest.approx(want, rel=1e-9)
    assert doc["qc"]["status"] == plain["qc"]["status"] == "pass"


def _nifti_slice_axis_first(source, path, dtype):
    """``source`` (i, j, k, t) stored as (k, i, j, t) with the affine's columns permuted to match:
    a legal NIfTI that nibabel, ITK and Slicer place voxel for voxel as the plain file."""
    import nibabel as nib

    img = nib.load(str(source))
    permuted = img.affine.copy()
    permuted[:3, :3] = img.affine[:3, [2, 0, 1]]
    out = nib.Nifti1Image(np.asarray(img.dataobj).transpose(2, 0, 1, *range(3, img.ndim)).astype(dtype), permuted)
    out.header.set_xyzt_units("mm", "sec")
    if img.ndim == 4:
        zooms = list(out.header.get_zooms())
        zooms[3] = img.header.get_zooms()[3]
        out.header.set_zooms(zooms)
    nib.save(out, str(path))
    return path


# --- a stack stored with its slice axis first ----------------------------------------------
def test_a_cine_stored_slice_axis_first_is_put_back_in_slice_order(cine, tmp_path):
    """(k, i, j, t) with a permuted affine was read with each 'slice' a 10 x 128 long-axis cut:
    AHA wall thickness +83 %, QC review with four flags about another fault. The stack is put
    back in slice order exactly (the same voxels and geometry as the plain file), said in a
    warning, and its labels follow whether written the same way or the plain way."""
    image, labels, plain = cine
    stored = _nifti_slice_axis_first(image, tmp_path / "kij.nii.gz", np.float32)
    stored_labels = _nifti_slice_axis_first(labels, tmp_path / "kij_labels.nii.gz", np.uint8)

    reference, read = load_volume(image), load_volume(stored)
    np.testing.assert_array_equal(read.images, reference.images)
    np.testing.assert_allclose(read.ijk_to_ras, reference.ijk_to_ras, atol=1e-5)
    said = [w for w in read.provenance["warnings"] if "slice axis" in w]
    assert len(said) == 1 and said[0].startswith("stored with the slice axis first: axes reordered, nothing resampled")
    assert "8.54 mm apart" in said[0]

    for name, given in (("own", stored_labels), ("plain", labels)):
        doc = _analyze(stored, given, tmp_path / name)
        _same_cine_numbers(doc, plain)
        assert any(w.startswith("stored with the slice axis first") for w in doc["warnings"]), name


def test_a_sequence_nrrd_with_the_slice_axis_first_reads_as_the_plain_file(cine, tmp_path):
    """A .seq.nrrd whose space directions list the slice axis first (then the two in-plane
    axes, then the frames) is read as the plain NIfTI: the same (T, S, R, C) voxels and
    geometry."""
    import nibabel as nib
    import nrrd

    image = cine[0]
    img = nib.load(str(image))
    data = np.asarray(img.dataobj, np.float32).transpose(2, 0, 1, 3)   # (k, i, j, t)
    steps = img.affine[:3, :3].T[[2, 0, 1]]                            # one row per stored axis, in RAS
    header = {"space": "right-anterior-superior", "space origin": img.affine[:3, 3],
              "kinds": ["domain", "domain", "domain", "list"], "space directions": np.vstack([steps, np.full(3, np.nan)])}
    nrrd.write(str(tmp_path / "kij.seq.nrrd"), data, header, index_order="F")

    reference, read = load_volume(image), load_volume(tmp_path / "kij.seq.nrrd")
    np.testing.assert_array_equal(read.images, reference.images)
    np.testing.assert_allclose(read.ijk_to_ras, reference.ijk_to_ras, atol=1e-5)
    assert any(w.startswith("stored with the slice axis first: axes reordered") for w in read.provenance["warnings"])


def test_a_perfusion_nifti_stored_slice_axis_first_reads_as_the_plain_file(tmp_path):
    """The perfusion reader reads a NIfTI itself: a (k, i, j, t) series gets the same slices as
    the plain file."""
    from CardiacAISegLib.readers.perfusion import read_perfusion_image

    paths, _, _ = write_phantom("perfusion", tmp_path / "phantom", seed=0)
    stored = _nifti_slice_axis_first(paths["perfusion.nii.gz"], tmp_path / "kij.nii.gz", np.float32)
    reference, read = read_perfusion_image(paths["perfusion.nii.gz"]), read_perfusion_image(stored)
    np.testing.assert_array_equal(read.images, reference.images)
    np.testing.assert_allclose(read.ijk_to_ras, reference.ijk_to_ras, atol=1e-5)
    assert any(w.startswith("stored with the slice axis first") for w in read.provenance["warnings"])


@pytest.mark.parametrize("spacing", [(2.5, 1.5, 1.5), (8.0, 1.5, 2.0), (1.25, 2.6, 1.3)],
                         ids=["slice-axis-not-clear", "pixels-not-square", "3d-coarse-in-plane-axis"])
def test_a_volume_whose_slice_axis_is_not_clear_is_read_as_stored(tmp_path, spacing):
    """Only a clear short-axis geometry is reordered (one spacing at least twice both others,
    which are square pixels): anything else keeps the file's axes, unsaid as before."""
    import nibabel as nib

    data = np.random.default_rng(0).uniform(0, 100, (6, 40, 32, 3)).astype(np.float32)
    nib.save(nib.Nifti1Image(data, np.diag([*spacing, 1.0])), str(tmp_path / "v.nii.gz"))
    read = load_volume(tmp_path / "v.nii.gz")
    assert read.images.shape == (3, 32, 40, 6)
    assert not any("slice axis" in w for w in read.provenance["warnings"])


# --- sform in use, pixdim another voxel size --------------------------------------------------
def test_an_sform_that_disagrees_with_pixdim_1_1_1_is_flagged(cine, tmp_path):
    """nibabel's image made without an affine and given an sform keeps pixdim 1 x 1 x 1 and a
    zero quaternion (qform code 0): measured here with the sform's voxels, silently, while ITK
    and Slicer take pixdim's 1 mm (the volumes 21x smaller there). The numbers stay the sform's;
    QC's VOXEL_SIZE_DISAGREES says the disagreement, naming both sizes. pixdim set right, the
    same file raises nothing."""
    import nibabel as nib

    image, labels, plain = cine
    for source, name in ((image, "img"), (labels, "lab")):
        src = nib.load(str(source))
        out = nib.Nifti1Image(np.asarray(src.dataobj), None)
        out.set_sform(src.affine, code=2)
        out.set_qform(None, code=0)
        nib.save(out, str(tmp_path / f"sform_{name}.nii.gz"))
    doc = _analyze(tmp_path / "sform_img.nii.gz", tmp_path / "sform_lab.nii.gz", tmp_path / "out")
    for key in CINE_MEASURES:
        assert doc["cine"][key] == pytest.approx(plain["cine"][key], rel=1e-9), key
    flag = next(f for f in doc["qc"]["flags"] if f["code"] == "VOXEL_SIZE_DISAGREES")
    voxel = np.linalg.norm(nib.load(str(image)).affine[:3, :3], axis=0)
    assert f"sform gives voxels of {np.round(voxel, 3).tolist()} mm, its pixdim [1.0, 1.0, 1.0] mm" in flag["message"]
    assert "ITK and Slicer take the voxel size from pixdim" in flag["message"]
    assert f"{np.prod(voxel):.3g}x smaller in volume" in flag["message"]

    right = nib.load(str(tmp_path / "sform_img.nii.gz"))
    right.header.set_zooms((*voxel, *right.header.get_zooms()[3:]))
    nib.save(right, str(tmp_path / "right.nii.gz"))
    doc = _analyze(tmp_path / "right.nii.gz", labels, tmp_path / "out_right")
    assert "VOXEL_SIZE_DISAGREES" not in {f["code"] for f in doc["qc"]["flags"]}


# --- a time step in ms labelled seconds (ITK) ---------------------------------------------------
def _itk_like_time_step(source, path, step):
    """``source`` with its time step set to ``step`` and the unit written 'sec', with qform and
    sform code 1, as ITK's NIfTI writer stores any 4D image (a step in ms included)."""
    import nibabel as nib

    img = nib.load(str(source))
    out = nib.Nifti1Image(np.asarray(img.dataobj), img.affine)
    out.set_qform(img.affine, code=1)
    out.set_sform(img.affine, code=1)
    out.header.set_xyzt_units("mm", "sec")
    zooms = list(out.header.get_zooms())
    zooms[3] = step
    out.header.set_zooms(zooms)
    nib.save(out, str(path))
    return path


def test_an_itk_cine_nifti_with_its_time_step_in_ms_labelled_seconds_reads_as_a_cine(cine, tmp_path):
    """A cine's 45 ms step written by ITK reads '45 sec': it was refused as an 855-s first pass,
    and with --kind cine kept frame times 45 s apart. No series steps over 5 s, so the step is
    left unused with a word (as ITK's 1-s placeholder is) and the images decide: the plain file's
    numbers, no frame times."""
    image, labels, plain = cine
    stored = _itk_like_time_step(image, tmp_path / "itk45.nii.gz", 45.0)
    for extra in ((), ("--kind", "cine")):
        doc = _analyze(stored, labels, tmp_path / f"out{len(extra)}", *extra)
        assert doc["kind"] == "cine"
        _same_cine_numbers(doc, plain)
        assert doc["source"].get("frame_times_s") is None
        said = [w for w in doc["warnings"] if "time step 45 sec" in w]
        assert len(said) == 1 and "is no frame interval" in said[0] and "not used as frame times" in said[0], doc["warnings"]
        assert "milliseconds" in said[0]
        assert not any("as requested" in w for w in doc["warnings"])


def test_a_perfusion_nifti_with_its_time_step_in_ms_labelled_seconds_asks_for_dt(tmp_path, capsys):
    """The same ITK labelling on a perfusion series (500 ms read as '500 sec'): the step is no
    frame interval, so the series is recognised by its first pass and refused for want of one,
    naming the header's step and asking for --dt; with --dt it is read."""
    paths, _, _ = write_phantom("perfusion", tmp_path / "phantom", seed=0)
    stored = _itk_like_time_step(paths["perfusion.nii.gz"], tmp_path / "itk500.nii.gz", 500.0)
    labels = paths["perfusion_labels.nii.gz"]
    line = _analyze_error(capsys, stored, labels, tmp_path / "out")
    assert str(stored) in line and "frame interval unknown" in line and "first-pass perfusion" in line
    assert "time step 500 sec is no frame interval" in line and "--dt" in line
    doc = _analyze(stored, labels, tmp_path / "out_dt", "--aif", str(paths["aif.csv"]), "--dt", "0.5")
    assert doc["perfusion"]["segments"]


# --- NRRD 'space units' other than mm -----------------------------------------------------------
def _nrrd_cine_in(source, path, units, per_mm, space_time=False):
    """``source`` (a NIfTI cine or label map, i j k t) as a NRRD whose space directions and
    origin are in ``units`` (``per_mm`` of them to the mm), said in its 'space units'; with
    ``space_time``, in NRRD's own 4D space (the time step, 45 ms, in the fourth coordinate). A
    unit pynrrd cannot write (the micro sign) is put in the header's bytes afterwards."""
    import nibabel as nib
    import nrrd

    img = nib.load(str(source))
    data = np.asarray(img.dataobj)
    steps, origin = img.affine[:3, :3].T * per_mm, img.affine[:3, 3] * per_mm   # one row per stored axis
    written = ["um" if u == "\u00b5m" else u for u in units]
    if space_time:
        directions = np.zeros((4, 4))
        directions[:3, :3], directions[3, 3] = steps, 45.0
        header = {"space": "right-anterior-superior-time", "kinds": ["domain"] * 4, "space directions": directions,
                  "space origin": [*origin, 0.0], "space units": [*written, "ms"]}
    else:   # a 4D file's frames on a list axis after the three spatial ones (as Slicer writes it)
        listed = data.ndim == 4
        header = {"space": "right-anterior-superior", "kinds": ["domain"] * 3 + ["list"] * listed,
                  "space directions": np.vstack([steps, *[np.full(3, np.nan)] * listed]), "space origin": origin}
        if units:
            header["space units"] = written
    nrrd.write(str(path), data, header, index_order="F")
    if written != list(units):
        raw = path.read_bytes()
        end = raw.index(b"\n\n")
        head = raw[:end].replace(b'"um"', '"\u00b5m"'.encode())
        path.write_bytes(head + raw[end:])
    return path


@pytest.mark.parametrize("unit, per_mm, space_time", [("cm", 0.1, False), ("m", 0.001, False), ("\u00b5m", 1000.0, False),
                                                      ("cm", 0.1, True)],
                         ids=["cm", "m", "micrometres-micro-sign", "cm-space-time"])
def test_a_nrrd_cine_whose_space_units_are_not_mm_is_converted(cine, tmp_path, unit, per_mm, space_time):
    """NRRD's 'space units' were not read: a cine (and its labels) in cm read EDV 0.13 mL for
    129.5, flagged by the range checks alone; in m it was refused as 'metres or micrometres
    instead of mm?' although its header says m; a micro sign, which pynrrd drops, read 'µm' as
    'm'. Directions and origin are scaled to mm, said in one warning naming the unit, and the
    numbers are the plain file's."""
    image, labels, plain = cine
    cine_file = _nrrd_cine_in(image, tmp_path / "cine.nrrd", [unit] * 3, per_mm, space_time)
    label_file = _nrrd_cine_in(labels, tmp_path / "labels.nrrd", [unit] * 3, per_mm)

    reference, read = load_volume(image), load_volume(cine_file)
    np.testing.assert_allclose(read.ijk_to_ras, reference.ijk_to_ras, atol=1e-4)
    doc = _analyze(cine_file, label_file, tmp_path / "out")
    for key in CINE_MEASURES:
        assert doc["cine"][key] == pytest.approx(plain["cine"][key], rel=5e-3), key
    assert doc["qc"]["status"] == "pass", doc["qc"]
    said = [w for w in doc["warnings"] if "space units" in w]
    assert len(said) == 1, doc["warnings"]
    assert said[0].startswith(f"the header gives its sizes in {unit} (space units): converted to mm"), said[0]


@pytest.mark.parametrize("units", [["mm"] * 3, [], [""] * 3], ids=["mm", "no-space-units", "empty-units"])
def test_a_nrrd_cine_in_mm_is_read_as_before(cine, tmp_path, units):
    """'space units' of mm, or none (or empty strings), are mm as before: the plain file's
    voxels and geometry, and no word about units."""
    image = cine[0]
    read = load_volume(_nrrd_cine_in(image, tmp_path / "cine.nrrd", units, 1.0))
    reference = load_volume(image)
    np.testing.assert_array_equal(read.images, reference.images)
    np.testing.assert_allclose(read.ijk_to_ras, reference.ijk_to_ras, atol=1e-5)
    assert not any("units" in w for w in read.provenance.get("warnings", [])), read.provenance.get("warnings")


def test_a_nrrd_whose_space_units_are_no_length_unit_is_refused_by_name(cine, tmp_path, capsys):
    """A unit the reader does not know (inches here) is refused, naming the file and the unit:
    read as mm, the volumes would be wrong by an unknown factor."""
    image, labels, _ = cine
    cine_file = _nrrd_cine_in(image, tmp_path / "cine.nrrd", ["in"] * 3, 1 / 25.4)
    line = _analyze_error(capsys, cine_file, labels, tmp_path / "out")
    assert str(cine_file) in line and "space units" in line and "'in'" in line, line
    assert "m, cm, mm" in line, line


def test_a_folder_of_nrrd_frames_in_cm_is_converted_and_said_once(cine, tmp_path):
    """Per-frame NRRD files in cm get the same conversion as one file, and the folder says it
    once (only the slice-axis warning of the first frame was passed on: the units went unsaid)."""
    import nibabel as nib

    image = cine[0]
    img = nib.load(str(image))
    frames = tmp_path / "frames"
    frames.mkdir()
    for t in range(3):
        nib.save(nib.Nifti1Image(np.asarray(img.dataobj)[..., t], img.affine), str(tmp_path / f"f{t}.nii.gz"))
        _nrrd_cine_in(tmp_path / f"f{t}.nii.gz", frames / f"cine_time_{t + 1}.nrrd", ["cm"] * 3, 0.1)
    read, reference = load_frame_folder(frames), load_volume(image)
    np.testing.assert_array_equal(read.images, reference.images[:3])
    np.testing.assert_allclose(read.ijk_to_ras, reference.ijk_to_ras, atol=1e-4)
    said = [w for w in read.provenance["warnings"] if "space units" in w]
    assert len(said) == 1 and said[0].startswith("the header gives its sizes in cm (space units): converted to mm"), said


def test_a_nrrd_saying_cm_over_sizes_in_mm_keeps_them_when_cm_would_widen_the_field_past_a_scanners(cine, tmp_path):
    """'space units' of cm over mm numbers: 1.58 cm pixels are a pixel size, but their field of
    view (over 1,500 mm) is no scanner's: read as cm the volumes were 1,000 times too large
    (review 1 of session 48); kept as mm with a word, as metres over mm numbers are."""
    image = cine[0]
    read = load_volume(_nrrd_cine_in(image, tmp_path / "cine.nrrd", ["cm"] * 3, 1.0))
    np.testing.assert_allclose(read.ijk_to_ras, load_volume(image).ijk_to_ras, atol=1e-5)
    said = [w for w in read.provenance["warnings"] if "space units" in w]
    assert len(said) == 1 and said[0].startswith("the header says its sizes are in cm (space units)"), said


def test_a_nrrd_saying_metres_over_sizes_only_plausible_in_mm_keeps_them_and_says_so(cine, tmp_path):
    """'space units' of m over 1.58-unit pixels (a writer that wrote the wrong unit): 1.58 m
    pixels are no image's, so the numbers are kept as mm, as NIfTI's xyzt_units, with a word."""
    image = cine[0]
    read = load_volume(_nrrd_cine_in(image, tmp_path / "cine.nrrd", ["m"] * 3, 1.0))
    np.testing.assert_allclose(read.ijk_to_ras, load_volume(image).ijk_to_ras, atol=1e-5)
    said = [w for w in read.provenance["warnings"] if "space units" in w]
    assert len(said) == 1 and said[0].startswith("the header says its sizes are in m (space units), but its"), said
    assert said[0].endswith("only plausible in mm: used as mm")
