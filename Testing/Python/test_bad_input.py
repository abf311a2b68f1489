"""Bad input through `cardiacaiseg analyze` (``cli.main`` in-process).

Every case must end with a non-zero exit, one ``error:`` line on stderr that names the
offending file (or model / folder) and the problem, no traceback, and an output folder left
exactly as it was: not created when it did not exist, no stray files when it did.
"""
import csv
import gzip
import json
import os

import nibabel as nib
import numpy as np
import pytest
from dicom_factory import write_dicom
from nifti_files import write_nifti

from CardiacAISegLib import cli
from CardiacAISegLib.outputs import OUTPUT_FILES

AFFINE = np.diag([1.5, 1.5, 8.0, 1.0])


# ----------------------------------------------------------------------------- helpers
def _nifti(path, data, affine=AFFINE, dt=None, dtype=np.float32):
    return write_nifti(path, data, affine, dt, dtype)


def _cine_labels(shape_xyz=(24, 24, 3)):
    """ACDC convention (1 RV, 2 myocardium, 3 LV blood pool): LV disc, myocardial ring, RV."""
    x, y = np.mgrid[0:shape_xyz[0], 0:shape_xyz[1]]
    r = np.hypot(x - 11.5, y - 11.5)
    lab2d = np.zeros(shape_xyz[:2], np.uint8)
    lab2d[(r > 8) & (r <= 10.5) & (x < 8)] = 1
    lab2d[r <= 8] = 2
    lab2d[r <= 5] = 3
    return np.repeat(lab2d[:, :, None], shape_xyz[2], axis=2)


def _cine(tmp_path, name="cine.nii.gz", frames=4, data=None):
    """A small 4D cine NIfTI (x, y, slices, frames) and its 4D ACDC-convention label map."""
    if data is None:
        data = np.random.default_rng(0).uniform(0, 100, (24, 24, 3, frames))
    img = _nifti(tmp_path / name, data)
    lab = np.stack([_cine_labels()] * frames, axis=-1)
    labels = _nifti(tmp_path / "cine_labels.nii.gz", lab, dtype=np.uint8)
    return img, labels


@pytest.fixture(scope="module")
def perfusion_dir(tmp_path_factory):
    """A small perfusion phantom written as files (NIfTI 4D, ACDC labels, aif.csv)."""
    from CardiacAISegLib.phantoms.phantom import write_phantom

    d = tmp_path_factory.mktemp("perf")
    write_phantom("perfusion", d, seed=1, size=80, n_frames=40)
    meta = json.loads((d / "truth.json").read_text())
    return d, meta["dt_s"]


def _snapshot(folder):
    if not folder.exists():
        return None
    if folder.is_file():
        return ("file", folder.read_bytes())
    return {p.relative_to(folder).as_posix(): p.stat().st_mtime_ns for p in folder.rglob("*")}


def expect_failure(capsys, argv, out, *words, code=2, clean=True):
    """Run `cardiacaiseg analyze ARGV --out OUT`; check exit code, message and OUT untouched."""
    before = _snapshot(out)
    rc = cli.main(["analyze", *map(str, argv), "--out", str(out), "--quiet"])
    captured = capsys.readouterr()
    err = captured.err
    assert rc == code, (rc, err)
    assert "Traceback" not in err
    lines = [ln for ln in err.splitlines() if ln.startswith("error:")]
    assert len(lines) == 1, err
    for w in words:
        assert str(w) in lines[0], (w, lines[0])
    assert _snapshot(out) == before, f"{out} changed: {before} -> {_snapshot(out)}"
    if clean and out.is_dir():
        assert not [n for n in os.listdir(out) if n in OUTPUT_FILES or n.startswith(".cardiacaiseg")]
    return lines[0]


# ------------------------------------------------------------------------------- input file
def test_missing_input(tmp_path, capsys):
    missing = tmp_path / "nowhere" / "cine.nii.gz"
    expect_failure(capsys, [missing], tmp_path / "out", missing, "not found")


@pytest.mark.skipif(not hasattr(os, "mkfifo"), reason="no named pipes on this platform")
def test_named_pipe_as_input_is_refused_not_waited_on(tmp_path, capsys):
    """A named pipe called cine.nii: reading it waited for a writer, with no output, for ever
    (probe 57). It is refused as not a regular file."""
    fifo = tmp_path / "cine.nii"
    os.mkfifo(fifo)
    expect_failure(capsys, [fifo], tmp_path / "out", fifo, "not a regular file or folder", "named pipe")


@pytest.mark.skipif(not hasattr(os, "mkfifo"), reason="no named pipes on this platform")
def test_a_batch_sizing_its_workers_does_not_wait_on_a_named_pipe(tmp_path):
    """A batch sizes its workers' memory from every input's header before the cluster starts; a
    named pipe among them (a hung share) blocked the whole batch there, no study run (probe 83).
    It counts as nothing; its own study is refused by the reader, naming it."""
    import threading

    from CardiacAISegLib.cohort import worker_memory_limit
    from CardiacAISegLib.memory_check import estimate_bytes

    fifo = tmp_path / "stalled.nii"
    os.mkfifo(fifo)
    good = tmp_path / "good.nii"
    nib.save(nib.Nifti1Image(np.zeros((64, 64, 8, 20), np.float32), np.eye(4)), good)
    spec = type("Spec", (), {})
    a, b = spec(), spec()
    a.input, b.input = str(fifo), str(good)
    answers = {}
    worker = threading.Thread(target=lambda: answers.update(fifo=estimate_bytes(fifo), limit=worker_memory_limit([a, b], 1)),
                              daemon=True)
    worker.start()
    worker.join(20)
    assert not worker.is_alive(), "sizing the batch waited on the named pipe"
    assert answers["fifo"] == (0, fifo)
    assert answers["limit"] >= 64 * 64 * 8 * 20 * 4


def _wrapped(values, top, dtype=np.int16):
    """``values`` scaled so that their ``top`` value lands at 1.6x the dtype's largest, stored
    as a writer without clipping stores it: what does not fit wraps around."""
    info = np.iinfo(dtype)
    scaled = np.asarray(values, np.float64) / top * 1.6 * info.max
    return scaled.astype(np.int64).astype(dtype)


def test_an_image_whose_values_wrapped_around_in_16_bits_is_refused(tmp_path, capsys):
    """A cine stored in int16 past 32767: bright blood comes back as the most negative values, the
    cavity reads dark, and the network drew around it (ACDC 066: EF 70.8 for 63.4, mass +15 %,
    QC pass; probe 85). Refused, naming the file and the overflow."""
    from CardiacAISegLib.phantoms.phantom_cine import make_cine_phantom

    study, _ = make_cine_phantom(seed=2, n_frames=6, n_slices=6, size=96, noise=0.02)
    images = study.images                                   # (T, S, R, C)
    wrapped = _wrapped(images, np.percentile(images, 99.5))  # the brightest pixels (blood) past 32767
    assert (wrapped < 0).any()
    data = np.transpose(wrapped, (3, 2, 1, 0))              # (x, y, slices, frames)
    path = _nifti(tmp_path / "cine_int16.nii.gz", data, affine=np.diag([1.5, 1.5, 8.0, 1.0]), dtype=np.int16)
    expect_failure(capsys, [path], tmp_path / "out", path, "pixel values wrap around", "16-bit")


def test_the_wrap_check_leaves_real_value_layouts_alone():
    """No image as scanners and converters store it is taken for a wrapped one (200 ACDC images
    so stored were checked when the limits were set, session 40), nor a Gd phantom or a map
    whose values jump from zero to their top; a signed wrap, slight or heavy, is."""
    from CardiacAISegLib.phantoms.phantom_cine import make_cine_phantom
    from CardiacAISegLib.phantoms.phantom_perfusion import make_perfusion_phantom
    from CardiacAISegLib.readers.geometry_check import wrapped_values_problem

    study, _ = make_cine_phantom(seed=3, n_frames=4, n_slices=5, size=96, noise=0.02)
    x = study.images.astype(np.float64)
    top = x.max()
    perfusion, _ = make_perfusion_phantom(seed=3, n_frames=30, noise=0.005)
    for name, fine in (("as made", x), ("offset below zero", x - 0.5 * top), ("z-scored", (x - x.mean()) / x.std()),
                       ("int16 that fits", (x / top * 30000).astype(np.int16)),
                       ("uint16 over its whole range", (x / top * 65535).astype(np.uint16)),
                       ("int16 over its whole range", (x / top * 65535 - 32768).astype(np.int16)),
                       ("Gd perfusion", perfusion.images), ("a map of one value beside zero", (x > 0.5 * top) * 3.02)):
        assert wrapped_values_problem(fine) is None, name
    for name, bad in (("top 0.5 % over", _wrapped(x, np.percentile(x, 99.5))),
                      ("top 10 % over", _wrapped(x, np.percentile(x, 90))),
                      ("most over", _wrapped(x, np.percentile(x, 70)))):
        assert "wrap around" in (wrapped_values_problem(bad) or ""), name


def test_empty_folder(tmp_path, capsys):
    (tmp_path / "empty").mkdir()
    expect_failure(capsys, [tmp_path / "empty"], tmp_path / "out", tmp_path / "empty", "empty folder")


def test_unknown_extension(tmp_path, capsys):
    f = tmp_path / "scan.xyz"
    f.write_bytes(b"\x00" * 100)
    expect_failure(capsys, [f], tmp_path / "out", f, "unknown file format", ".xyz")


def test_corrupt_nifti(tmp_path, capsys):
    f = tmp_path / "cine.nii.gz"
    f.write_bytes(gzip.compress(os.urandom(2000)))
    expect_failure(capsys, [f], tmp_path / "out", f, "not a readable NIfTI")


def test_not_gzip_nifti(tmp_path, capsys):
    f = tmp_path / "cine.nii.gz"
    f.write_text("this is not a NIfTI file at all")
    expect_failure(capsys, [f], tmp_path / "out", f, "not a readable NIfTI")


def test_truncated_nifti(tmp_path, capsys):
    good, _ = _cine(tmp_path)
    raw = gzip.decompress(good.read_bytes())
    f = tmp_path / "truncated.nii.gz"
    f.write_bytes(gzip.compress(raw[: len(raw) // 2]))
    line = expect_failure(capsys, [f], tmp_path / "out", f, "not a readable NIfTI")
    assert "truncated" in line or "bytes" in line


def test_nifti_whose_gzip_checksum_fails_is_refused(tmp_path, capsys):
    """One bit flipped in a .nii.gz's compressed data decodes to changed voxels; only the gzip
    trailer's CRC says so, which nibabel's reader does not check: exit 0 with those voxels
    (probe 57). The image is refused as damaged."""
    good, labels = _cine(tmp_path)
    whole = good.read_bytes()
    outcomes = {}
    for at in range(len(whole) // 3, len(whole) - 8, 97):   # a flip that still decodes, and one that does not
        raw = bytearray(whole)
        raw[at] ^= 0x01
        try:
            gzip.decompress(bytes(raw))
        except Exception as e:  # noqa: BLE001 - which error is what is looked for
            outcomes.setdefault("CRC" if "CRC check failed" in str(e) else "broken", bytes(raw))
        if len(outcomes) == 2:
            break
    for kind, words in (("CRC", ("damaged", "CRC check failed")), ("broken", ("damaged", "do not decode"))):
        f = tmp_path / f"flipped_{kind}.nii.gz"
        f.write_bytes(outcomes[kind])
        expect_failure(capsys, [f, "--labels", labels], tmp_path / "out", f, *words)


def test_impossible_pixel_size_is_named_not_taken_for_swapped_axes(tmp_path, capsys):
    """A cine whose header gives 60 mm pixels: the field of view, metres wide, was judged for
    swapped slice and time axes, and the error told the user to rewrite the axes (probe 57). The
    pixel size is named as outside the accepted range."""
    import nibabel as nib

    from CardiacAISegLib.phantoms.phantom import write_phantom

    write_phantom("cine", tmp_path / "small", seed=3, n_frames=6, n_slices=8, size=64, pixel_mm=1.6, slice_mm=8.0)
    loaded, labels = nib.load(str(tmp_path / "small" / "cine.nii.gz")), tmp_path / "small" / "cine_labels.nii.gz"
    big = tmp_path / "big_pixels.nii.gz"
    _nifti(big, np.asarray(loaded.dataobj), np.diag([60.0, 60.0, 8.0, 1.0]))
    line = expect_failure(capsys, [big, "--labels", labels], tmp_path / "out", big, "spacing 60 mm", "outside the accepted")
    assert "swapped" not in line


def test_nan_image(tmp_path, capsys):
    data = np.random.default_rng(1).uniform(0, 100, (24, 24, 3, 4))
    data[3, 4, 1, 2] = np.nan
    img, labels = _cine(tmp_path, data=data)
    expect_failure(capsys, [img, "--labels", labels], tmp_path / "out", img, "NaN")


def test_wrong_dimensions_5d(tmp_path, capsys):
    f = _nifti(tmp_path / "five.nii.gz", np.zeros((8, 8, 2, 3, 2)))
    expect_failure(capsys, [f], tmp_path / "out", f, "expected a 2D, 3D or 4D image")


def test_2d_image_for_perfusion(tmp_path, capsys, perfusion_dir):
    d, dt = perfusion_dir
    f = _nifti(tmp_path / "slice.nii.gz", np.zeros((16, 16)))
    expect_failure(capsys, [f, "--kind", "perfusion", "--aif", d / "aif.csv", "--dt", dt], tmp_path / "out",
                   f, "expected (x, y, frames) or (x, y, slices, frames)")


def test_single_frame_cine(tmp_path, capsys):
    """A 3D volume (one frame) has no ES: ED volumes and mass are measured, ESV/SV/EF left empty
    with a warning - the same in the CLI, the Slicer Logic and the web GUI (one pipeline)."""
    img = _nifti(tmp_path / "one.nii.gz", np.random.default_rng(2).uniform(0, 1, (24, 24, 3)))
    labels = _nifti(tmp_path / "one_labels.nii.gz", _cine_labels(), dtype=np.uint8)
    out = tmp_path / "out"
    assert cli.main(["analyze", str(img), "--labels", str(labels), "--out", str(out), "--quiet"]) == 0
    doc = json.loads((out / "results.json").read_text())
    assert doc["cine"]["lv_edv_ml"] > 0 and doc["cine"]["lv_esv_ml"] is None and doc["cine"]["lv_ef_pct"] is None
    # no ES frame either (it was 0, the ED frame, in every file)
    assert doc["cine"]["ed_frame"] == 0 and doc["cine"]["es_frame"] is None
    es_row = next(r for r in csv.DictReader((out / "results.csv").open()) if r["key"] == "es_frame")
    assert es_row["value"] == ""
    assert any("one frame only" in w for w in doc["warnings"])
    assert "one frame only" in capsys.readouterr().err
    # nothing in a bare volume says it is ED: its "EDV" is said for review
    assert doc["qc"]["status"] == "review" and "FRAME_PHASE_UNKNOWN" in {f["code"] for f in doc["qc"]["flags"]}


@pytest.mark.parametrize("number, code", [(1, None), (12, "FRAME_NOT_ED"), (5, "FRAME_NOT_ED")])
def test_one_acdc_frame_file_is_measured_as_ed_only_if_info_cfg_says_it_is(tmp_path, number, code):
    """An ACDC frame file given alone, Info.cfg beside it (ED 1, ES 12). The ES file read its
    end-systolic volume as "LV EDV" with QC pass (patient001: 225 mL for 295; probe 46); now the
    ES file, or a frame that is neither, is flagged, naming the frame and Info.cfg; the ED file is not."""
    folder = tmp_path / "patient001"
    folder.mkdir()
    (folder / "Info.cfg").write_text("ED: 1\nES: 12\nGroup: DCM\nNbFrame: 30\n")
    img = _nifti(folder / f"patient001_frame{number:02d}.nii.gz", np.random.default_rng(2).uniform(0, 1, (24, 24, 3)))
    labels = _nifti(tmp_path / "labels.nii.gz", _cine_labels(), dtype=np.uint8)
    out = tmp_path / "out"
    assert cli.main(["analyze", str(img), "--labels", str(labels), "--out", str(out), "--quiet"]) == 0
    doc = json.loads((out / "results.json").read_text())
    flags = [f for f in doc["qc"]["flags"] if f["code"].startswith("FRAME_")]
    if code is None:
        assert not flags
    else:
        assert [f["code"] for f in flags] == [code] and doc["qc"]["status"] == "review"
        assert f"frame {number} of the cycle; Info.cfg beside it: ED 1, ES 12" in flags[0]["message"]
        assert ("is the ES frame" in flags[0]["message"]) == (number == 12)


@pytest.mark.parametrize("trigger_ms, phase", [(32.5, "ED"), (420.0, None)])
def test_one_dicom_phase_is_ed_when_triggered_at_the_r_wave(tmp_path, trigger_ms, phase):
    """A one-phase DICOM stack: its trigger delay tells whether it is the first phase (ED); at
    420 ms it may be any other (FRAME_PHASE_UNKNOWN follows). Each slice triggered a quarter of
    a millisecond apart, as Sunnybrook's phase 1 (18.29-20 ms): those delays were taken for
    seconds (a series with no step between frames), and ED for "18292-20000 ms" (probe 50)."""
    from CardiacAISegLib.readers import load_study

    for k in range(6):
        write_dicom(tmp_path / f"s{k}.dcm", ipp=(0, 0, 8.0 * k), trigger=trigger_ms + 0.25 * k, instance=k + 1,
                    value=100 + k, shape=(16, 16))
    known = load_study(tmp_path).provenance["frame_phase"]
    assert known["phase"] == phase and known["how"] == f"trigger delay {trigger_ms:g}-{trigger_ms + 1.25:g} ms"


# ------------------------------------------------------------------------------ label maps
def test_label_file_missing(tmp_path, capsys):
    img, _ = _cine(tmp_path)
    missing = tmp_path / "no_labels.nii.gz"
    expect_failure(capsys, [img, "--labels", missing], tmp_path / "out", missing, "not found")


def test_label_folder_that_holds_no_contours_is_not_called_missing(tmp_path, capsys):
    """--labels given a folder (a DICOM export, not Sunnybrook contour files): "label file not
    found" for a folder that is there (probe 57). It says what the folder lacks."""
    img, _ = _cine(tmp_path)
    folder = tmp_path / "dicom"
    folder.mkdir()
    (folder / "IM0001.dcm").write_bytes(b"\0" * 200)
    line = expect_failure(capsys, [img, "--labels", folder], tmp_path / "out", folder, "is a folder",
                          "not one of Sunnybrook contour files")
    assert "not found" not in line


def test_label_map_wrong_shape(tmp_path, capsys):
    img, _ = _cine(tmp_path)
    bad = _nifti(tmp_path / "small_labels.nii.gz", np.zeros((20, 24, 3, 4)), dtype=np.uint8)
    expect_failure(capsys, [img, "--labels", bad], tmp_path / "out", bad, "does not match", "(20, 24, 3)")


def test_label_map_wrong_number_of_frames(tmp_path, capsys):
    img, _ = _cine(tmp_path)
    bad = _nifti(tmp_path / "labels3.nii.gz", np.stack([_cine_labels()] * 3, -1), dtype=np.uint8)
    expect_failure(capsys, [img, "--labels", bad], tmp_path / "out", bad, "3 frames", "4")


def test_label_map_not_integer(tmp_path, capsys):
    img, _ = _cine(tmp_path)
    bad = _nifti(tmp_path / "float_labels.nii.gz", np.random.default_rng(3).uniform(0, 3, (24, 24, 3, 4)))
    expect_failure(capsys, [img, "--labels", bad], tmp_path / "out", bad, "not whole numbers")


def test_label_map_stored_as_near_whole_floats_is_rounded(tmp_path, capsys):
    """A converter's float export (0.999, 2.0001, 2.9999): refused before as "is this an image?";
    rounded now, with a warning, and measured as the whole-number map is."""
    from CardiacAISegLib import cli

    img, _ = _cine(tmp_path)
    lab = np.stack([_cine_labels()] * 4, -1).astype(np.float32)
    wobble = np.random.default_rng(4).uniform(-0.001, 0.001, lab.shape).astype(np.float32)
    exact = _nifti(tmp_path / "labels.nii.gz", lab, dtype=np.uint8)
    floats = _nifti(tmp_path / "float_labels.nii.gz", lab + np.where(lab > 0, wobble, 0), dtype=np.float32)
    docs = []
    for labels, out in ((exact, "a"), (floats, "b")):
        assert cli.main(["analyze", str(img), "--labels", str(labels), "--out", str(tmp_path / out), "--quiet"]) == 0
        docs.append(json.loads((tmp_path / out / "results.json").read_text()))
    assert docs[1]["cine"]["lv_edv_ml"] == pytest.approx(docs[0]["cine"]["lv_edv_ml"])
    assert any("rounded to the nearest label" in w for w in docs[1]["warnings"])
    capsys.readouterr()


def test_cine_labels_without_lv(tmp_path, capsys):
    img, _ = _cine(tmp_path)
    lab = np.stack([_cine_labels()] * 4, -1)
    lab[lab >= 2] = 0                                   # RV only: no myocardium, no blood pool
    bad = _nifti(tmp_path / "rv_only.nii.gz", lab, dtype=np.uint8)
    expect_failure(capsys, [img, "--labels", bad], tmp_path / "out", bad, "no LV blood pool")


def test_perfusion_empty_myocardium(tmp_path, capsys, perfusion_dir):
    d, dt = perfusion_dir
    import nibabel as nib

    lab = np.asarray(nib.load(str(d / "perfusion_labels.nii.gz")).dataobj)
    lab = np.where(lab == 2, 3, lab)                    # myocardium relabelled as blood pool
    bad = _nifti(tmp_path / "no_myo.nii.gz", lab, affine=nib.load(str(d / "perfusion_labels.nii.gz")).affine, dtype=np.uint8)
    img = d / "perfusion.nii.gz"
    expect_failure(capsys, [img, "--kind", "perfusion", "--labels", bad, "--aif", d / "aif.csv", "--dt", dt],
                   tmp_path / "out", img, "myocardial mask is empty", "the label map has no myocardium at frame 1 (counted from 1)")


def test_a_cine_given_as_the_rest_and_refused_in_its_analysis_names_its_role(tmp_path, capsys, perfusion_dir):
    """A cine given as the rest series with --rest-dt reads as perfusion (by its role), and its
    analysis refuses it (pipeline's kind_said_on_errors: no bolus in its LV-pool AIF). The error
    says it is no first-pass perfusion series, by its one-cycle time axis, in the reader's words
    (session 49); "because --kind perfusion was given ... drop --kind" named a flag the user never
    gave (review 1 of session 47)."""
    d, dt = perfusion_dir
    rest = _nifti(tmp_path / "cine.nii.gz", np.random.default_rng(3).uniform(100, 200, (24, 24, 3, 12)), dt=0.07)
    rest_labels = _nifti(tmp_path / "cine_labels.nii.gz", _cine_labels(), dtype=np.uint8)
    said = expect_failure(capsys, [d / "perfusion.nii.gz", "--labels", d / "perfusion_labels.nii.gz", "--aif",
                                   d / "aif.csv", "--dt", dt, "--rest", rest, "--rest-dt", 0.5, "--rest-labels", rest_labels],
                          tmp_path / "out", f"error: {rest}: analysing the rest series (--rest): it is no first-pass "
                          "perfusion series: nifti time axis: 12 frames over 0.8 s (one cardiac cycle), which is a cine "
                          "series; give the rest perfusion acquisition (analysed as one: AIF is flat")
    assert "--kind" not in said, said


def test_perfusion_series_in_reverse_time_order_says_what_the_network_missed(tmp_path, capsys, perfusion_dir):
    """A perfusion series written with its frames in reverse time order: the network found no
    myocardium and the run stopped with "the myocardial mask is empty", which named no cause."""
    import nibabel as nib

    d, _ = perfusion_dir
    source = nib.load(str(d / "perfusion.nii.gz"))
    reversed_series = tmp_path / "reversed.nii.gz"
    nib.save(nib.Nifti1Image(np.asarray(source.dataobj)[..., ::-1].copy(), source.affine, source.header), str(reversed_series))
    expect_failure(capsys, [reversed_series], tmp_path / "out", reversed_series, "myocardial mask is empty",
                   "the network found no myocardium", "reverse time order", "give the masks yourself (--labels)")


def test_a_network_that_misses_the_wall_of_a_heart_the_bolus_shows_is_named():
    """The network found no myocardium in a full-field series whose bolus showed the RV, then the
    LV: the error blamed a missing first pass or reversed frames (probe 61). It now says the
    segmentation failed and how to go on."""
    from CardiacAISegLib.analysis import Analysis
    from CardiacAISegLib.errors import CardiacInputError
    from CardiacAISegLib.labels import MYO
    from CardiacAISegLib.phantoms.phantom_perfusion import make_perfusion_phantom

    study, _ = make_perfusion_phantom(seed=3, noise=0.005)
    labels = {t: np.where(m == MYO, 0, m).astype(np.uint8) for t, m in study.labels.items()}

    def refusal(found):
        study.provenance = {"aif_detection": found}
        a = Analysis(study, labels)
        a.model_info = {"name": "perfusion-resunet"}
        with pytest.raises(CardiacInputError) as refused:
            a.run()
        return str(refused.value)

    said = refusal({"confidence": "high", "rv_peak_frame": 19, "lv_peak_frame": 25})
    assert "though the bolus shows a heart" in said and "frame 19" in said and "frame 25" in said
    assert "the segmentation failed on this series" in said and "give the masks yourself (--labels)" in said
    assert "imported model" not in said
    # an imported network (its classes in another order than its card says): its card is named
    # too, where only the series was doubted (probe 95)
    study.provenance = {"aif_detection": {"confidence": "high", "rv_peak_frame": 19, "lv_peak_frame": 25}}
    imported = Analysis(study, labels)
    imported.model_info = {"name": "my-perfusion", "source": "user"}
    with pytest.raises(CardiacInputError, match=r"the network 'my-perfusion' is an imported model: check its card"):
        imported.run()
    assert "no first pass" not in said
    # a dual-sequence AIF series beside the images is found "high" too, with no pools in them
    said = refusal({"confidence": "high", "series": "1.2.3"})
    assert "no first pass" in said and "frame None" not in said


def test_a_series_cut_before_its_bolus_peak_is_named_as_such():
    """Probe 82: a series that ends before the AIF peak was refused as "the network found no
    myocardium ... no first pass ... give the masks yourself (--labels)": the wrong cause, and
    advice that leads nowhere (MBF needs the peak too). It now says the peak was not acquired."""
    from copy import copy

    from CardiacAISegLib.analysis import Analysis
    from CardiacAISegLib.errors import CardiacInputError
    from CardiacAISegLib.labels import MYO
    from CardiacAISegLib.phantoms.phantom_perfusion import make_perfusion_phantom

    study, _ = make_perfusion_phantom(seed=3, noise=0.005)
    labels = {t: np.where(m == MYO, 0, m).astype(np.uint8) for t, m in study.labels.items()}
    peak = int(np.argmax(study.aif))

    def refusal(st):
        a = Analysis(st, labels)
        a.model_info = {"name": "perfusion-resunet"}
        with pytest.raises(CardiacInputError) as refused:
            a.run()
        return str(refused.value)

    cut = copy(study)
    cut.images, cut.aif, cut.frame_times_s = study.images[:peak - 2], study.aif[:peak - 2], study.frame_times_s[:peak - 2]
    said = refusal(cut)
    assert "ends while the images still brighten steeply" in said and "bolus peak" in said and "--labels" not in said
    said = refusal(study)   # the whole first pass: the network's failure, as before
    assert "bolus peak" not in said and "give the masks yourself (--labels)" in said


# ------------------------------------------------------------------------------ perfusion
def _perfusion_args(d, dt, **replace):
    args = {"--kind": "perfusion", "--labels": d / "perfusion_labels.nii.gz", "--aif": d / "aif.csv", "--dt": dt}
    args.update(replace)
    out = [d / "perfusion.nii.gz"]
    for k, v in args.items():
        if v is not None:
            out += [k, v]
    return out


def test_aif_length_mismatch(tmp_path, capsys, perfusion_dir):
    d, dt = perfusion_dir
    aif = tmp_path / "short_aif.csv"
    aif.write_text("aif\n" + "\n".join(l for l in (d / "aif.csv").read_text().splitlines()[1:-5]) + "\n")
    expect_failure(capsys, _perfusion_args(d, dt, **{"--aif": aif}), tmp_path / "out", aif, "AIF has 35 values", "40 frames")


def test_aif_with_nan(tmp_path, capsys, perfusion_dir):
    d, dt = perfusion_dir
    values = (d / "aif.csv").read_text().splitlines()
    values[10] = "nan"
    aif = tmp_path / "nan_aif.csv"
    aif.write_text("\n".join(values) + "\n")
    expect_failure(capsys, _perfusion_args(d, dt, **{"--aif": aif}), tmp_path / "out", aif, "NaN")


def test_aif_not_numbers(tmp_path, capsys, perfusion_dir):
    d, dt = perfusion_dir
    aif = tmp_path / "text_aif.csv"
    aif.write_text("aif\n1.0\nhello\n")
    expect_failure(capsys, _perfusion_args(d, dt, **{"--aif": aif}), tmp_path / "out", aif, "not numbers")


def test_aif_file_missing(tmp_path, capsys, perfusion_dir):
    d, dt = perfusion_dir
    aif = tmp_path / "none.csv"
    expect_failure(capsys, _perfusion_args(d, dt, **{"--aif": aif}), tmp_path / "out", aif, "AIF file not found")


def test_flat_aif(tmp_path, capsys, perfusion_dir):
    d, dt = perfusion_dir
    aif = tmp_path / "flat_aif.csv"
    aif.write_text("aif\n" + "0.2\n" * 40)
    expect_failure(capsys, _perfusion_args(d, dt, **{"--aif": aif}), tmp_path / "out", aif, "AIF is flat")


def test_perfusion_without_aif_and_without_a_bolus(tmp_path, capsys, perfusion_dir):
    """No --aif: the AIF comes from the LV blood pool; a series with no bolus in it has none to give."""
    d, dt = perfusion_dir
    import nibabel as nib

    src = nib.load(str(d / "perfusion.nii.gz"))
    flat = np.random.default_rng(0).normal(100.0, 1.0, src.shape).astype(np.float32)
    img = _nifti(tmp_path / "flat.nii.gz", flat, affine=src.affine)
    args = [img, "--kind", "perfusion", "--dt", str(dt), "--labels", d / "perfusion_labels.nii.gz"]
    expect_failure(capsys, args, tmp_path / "out", img, "AIF", "flat")


@pytest.mark.parametrize("dt,said", [("50", "is over 5 s"), ("0.001", "is under 0.3 s"), ("0.2", "is under 0.3 s")])
def test_perfusion_implausible_dt(tmp_path, capsys, perfusion_dir, dt, said):
    d, _ = perfusion_dir
    expect_failure(capsys, _perfusion_args(d, None, **{"--dt": dt}), tmp_path / "out",
                   d / "perfusion.nii.gz", f"(--dt) {said}", "heartbeat", "give the real frame interval")


def test_perfusion_without_dt(tmp_path, capsys, perfusion_dir):
    d, dt = perfusion_dir
    import nibabel as nib

    src = nib.load(str(d / "perfusion.nii.gz"))
    img = _nifti(tmp_path / "no_time.nii.gz", np.asarray(src.dataobj), affine=src.affine)   # no time step in the header
    args = [img, "--kind", "perfusion", "--labels", d / "perfusion_labels.nii.gz", "--aif", d / "aif.csv"]
    expect_failure(capsys, args, tmp_path / "out", img, "frame interval unknown", "--dt")


@pytest.mark.parametrize("dt", ["-0.5", "0", "nan"])
def test_perfusion_bad_dt(tmp_path, capsys, perfusion_dir, dt):
    d, _ = perfusion_dir
    expect_failure(capsys, _perfusion_args(d, None, **{"--dt": dt}), tmp_path / "out",
                   d / "perfusion.nii.gz", "--dt", "must be a positive number of seconds")


def test_perfusion_without_labels_or_model(tmp_path, capsys, perfusion_dir, monkeypatch):
    from CardiacAISegLib.models import registry

    monkeypatch.setattr(registry, "model_dirs", lambda: [tmp_path / "no-models"])
    d, dt = perfusion_dir
    line = expect_failure(capsys, _perfusion_args(d, dt, **{"--labels": None}), tmp_path / "out",
                          d / "perfusion.nii.gz", "no perfusion model is installed")
    assert "--labels" in line


def test_unknown_model(tmp_path, capsys):
    img, _ = _cine(tmp_path)
    expect_failure(capsys, [img, "--model", "no-such-net"], tmp_path / "out", "no-such-net", "no such model")


def test_model_for_the_wrong_task(tmp_path, capsys, monkeypatch):
    from CardiacAISegLib.models import registry

    card = {"name": "perf-net", "task": "perfusion", "title": "t", "classes": [], "input": {"pixel_mm": 1.0},
            "weights": {"file": "w.pt", "sha256": "0" * 64, "format": "torchscript"}, "licence": "x"}
    folder = tmp_path / "models" / "perf-net"
    folder.mkdir(parents=True)
    (folder / "model.json").write_text(json.dumps(card))
    monkeypatch.setattr(registry, "model_dirs", lambda: [tmp_path / "models"])
    img, _ = _cine(tmp_path)
    expect_failure(capsys, [img, "--model", "perf-net"], tmp_path / "out", "perf-net", "model is for perfusion series")


# ---------------------------------------------------------------------------------- DICOM
def _dcm(path, instance=1, **kw):
    write_dicom(path, instance=instance, value=instance, shape=(6, 7), spacing=(1.5, 1.5), **kw)


def _dicom_series(folder, n_slices=2, n_frames=2, start=1, **kw):
    folder.mkdir(parents=True, exist_ok=True)
    inst = start
    for k in range(n_slices):
        for t in range(n_frames):
            _dcm(folder / f"{inst}.dcm", ipp=(0, 0, 8.0 * k), trigger=40.0 * t, instance=inst, **kw)
            inst += 1


def test_dicom_two_series_without_choice(tmp_path, capsys):
    d = tmp_path / "dicom"
    _dicom_series(d, series="1.2.3.1", number=3, desc="sax cine")
    _dicom_series(d, series="1.2.3.2", number=4, desc="localiser", start=100)
    expect_failure(capsys, [d], tmp_path / "out", d, "2 image series", "choose one", "series", "sax cine", "localiser")


def test_dicom_unknown_series_choice(tmp_path, capsys):
    d = tmp_path / "dicom"
    _dicom_series(d, series="1.2.3.1", number=3, desc="sax cine")
    expect_failure(capsys, [d, "--series", "7"], tmp_path / "out", d, "no series matches '7'", "sax cine")


def test_dicom_missing_geometry_tag(tmp_path, capsys):
    d = tmp_path / "dicom"
    _dicom_series(d)
    _dcm(d / "9.dcm", ipp=(0, 0, 16.0), instance=9, drop=("PixelSpacing",))
    expect_failure(capsys, [d], tmp_path / "out", d / "9.dcm", "missing DICOM tag PixelSpacing")


def test_dicom_truncated_file(tmp_path, capsys):
    d = tmp_path / "dicom"
    _dicom_series(d)
    f = d / "2.dcm"
    f.write_bytes(f.read_bytes()[:-40])                 # pixel data cut short
    expect_failure(capsys, [d], tmp_path / "out", f, "pixel data")


# ----------------------------------------------------------------------------------- ACDC
def test_acdc_info_without_es(tmp_path, capsys):
    d = tmp_path / "patient900"
    d.mkdir()
    _nifti(d / "patient900_frame01.nii.gz", np.zeros((24, 24, 3)))
    (d / "Info.cfg").write_text("ED: 1\nGroup: NOR\nNbFrame: 2\n")
    expect_failure(capsys, [d, "--labels", "study"], tmp_path / "out", d / "Info.cfg", "missing ES")


def test_acdc_es_frame_without_image(tmp_path, capsys):
    d = tmp_path / "patient901"
    d.mkdir()
    _nifti(d / "patient901_frame01.nii.gz", np.zeros((24, 24, 3)))
    (d / "Info.cfg").write_text("ED: 1\nES: 9\n")
    expect_failure(capsys, [d, "--labels", "study"], tmp_path / "out", d / "Info.cfg", "ES frame 9 has no image")


def test_acdc_without_gt_labels(tmp_path, capsys):
    d = tmp_path / "patient902"
    d.mkdir()
    for n in (1, 2):
        _nifti(d / f"patient902_frame0{n}.nii.gz", np.zeros((24, 24, 3)))
    (d / "Info.cfg").write_text("ED: 1\nES: 2\n")
    expect_failure(capsys, [d, "--labels", "study"], tmp_path / "out", d, "no label maps")


# -------------------------------------------------------------------------------- outputs
def test_out_path_is_a_file(tmp_path, capsys):
    img, labels = _cine(tmp_path)
    out = tmp_path / "results.txt"
    out.write_text("mine")
    expect_failure(capsys, [img, "--labels", labels], out, out, "not a folder")
    assert out.read_text() == "mine"


@pytest.fixture(scope="module")
def small_cine(tmp_path_factory):
    from CardiacAISegLib.phantoms.phantom import write_phantom

    d = tmp_path_factory.mktemp("cine")
    write_phantom("cine", d, seed=2, n_frames=6, n_slices=6, size=64)
    return d


def test_existing_outputs_need_force(tmp_path, capsys, small_cine):
    args = ["analyze", str(small_cine / "cine.nii.gz"), "--labels", str(small_cine / "cine_labels.nii.gz"),
            "--out", str(tmp_path / "out"), "--quiet"]
    assert cli.main(args) == 0
    out = tmp_path / "out"
    (out / "notes.txt").write_text("the user's own file")
    first = json.loads((out / "results.json").read_text())
    before = {n: (out / n).read_bytes() for n in os.listdir(out)}
    capsys.readouterr()

    line = expect_failure(capsys, args[1:-3], out, out, "would overwrite", "results.json", "--force", clean=False)
    assert {n: (out / n).read_bytes() for n in os.listdir(out)} == before

    # --force replaces them (and leaves the user's other files alone).
    os.utime(out / "results.json", (0, 0))
    assert cli.main(args + ["--force"]) == 0
    assert (out / "results.json").stat().st_mtime > 1e6
    assert json.loads((out / "results.json").read_text())["cine"] == first["cine"]
    assert (out / "notes.txt").read_text() == "the user's own file"
    assert sorted(n for n in os.listdir(out) if n.startswith(".")) == []
    assert line


def test_failure_after_loading_leaves_existing_folder_clean(tmp_path, capsys, small_cine):
    """A failure late in the pipeline (here: measuring) leaves a pre-existing folder as it was."""
    out = tmp_path / "out"
    out.mkdir()
    (out / "keep.txt").write_text("x")
    import nibabel as nib

    src = nib.load(str(small_cine / "cine_labels.nii.gz"))
    lab = np.asarray(src.dataobj)
    lab[lab == 3] = 0                                   # no LV blood pool in any frame
    bad = _nifti(tmp_path / "no_lv.nii.gz", lab, affine=src.affine, dtype=np.uint8)
    expect_failure(capsys, [small_cine / "cine.nii.gz", "--labels", bad], out, "no LV blood pool")
    assert os.listdir(out) == ["keep.txt"]


@pytest.mark.parametrize("existing", [False, True])
def test_writer_failure_leaves_nothing_half_written(tmp_path, capsys, small_cine, monkeypatch, existing):
    """A failure while writing (here the scene bundle, after the segmentation and report were
    staged) leaves no output: the folder is removed if the run created it, else left as it was."""
    from CardiacAISegLib import scene

    def broken_write_mrb(ctx, path, overwrite=False):
        raise OSError(f"{path}: writing the scene failed: No space left on device")

    monkeypatch.setattr(scene, "write_mrb", broken_write_mrb)
    out = tmp_path / "out"
    if existing:
        out.mkdir()
        (out / "keep.txt").write_text("x")
    expect_failure(capsys, [small_cine / "cine.nii.gz", "--labels", small_cine / "cine_labels.nii.gz", "--scene"], out,
                   "scene.mrb", "No space left on device", code=1)
    assert (os.listdir(out) == ["keep.txt"]) if existing else not out.exists()


def test_a_ct_series_is_refused_as_not_mr(tmp_path, capsys):
    """A CT series (Modality CT, Hounsfield units) was analysed as a cine, exit 0, QC pass
    (probe 101); a secondary capture or an image with no Modality is still read."""
    from bad_corpus import cine_dicom, make_base
    from CardiacAISegLib.readers import load_study

    base = make_base(tmp_path / "base")

    def as_ct(ds, k, t):
        ds.Modality = "CT"
    folder, _ = cine_dicom(base, tmp_path / "ct", per_image=as_ct)
    out = tmp_path / "out"
    assert cli.main(["analyze", str(folder), "--out", str(out), "--quiet"]) == 2
    err = capsys.readouterr().err
    assert "Modality CT (computed tomography), not MR" in err and str(folder) in err and not out.exists()

    def no_modality(ds, k, t):
        del ds.Modality
    assert load_study(cine_dicom(base, tmp_path / "none", per_image=no_modality)[0]).kind == "cine"

    # an exam folder with a larger CT series beside the MR cine: the CT was picked and refused
    # (before: picked and analysed); the MR cine is read, and the CT said as left out (review)
    exam = tmp_path / "exam"
    cine_dicom(base, exam / "mr", slices=[2, 3, 4, 5], series="1.2.826.0.1.3680043.10.99.2", desc="SA cine", number=3)

    def ct_series(ds, k, t):
        ds.Modality = "CT"
        ds.SOPInstanceUID = f"1.2.826.0.1.3680043.10.99.77.{k}.{t}"
    cine_dicom(base, exam / "ct", per_image=ct_series, series="1.2.826.0.1.3680043.10.99.77", desc="Cardiac CTA",
               number=9)
    for labels in exam.glob("*.nii.gz"):   # the factory's label maps: not part of the exam
        labels.unlink()
    study = load_study(exam)
    assert study.n_slices == 4 and study.provenance["series_description"] == "SA cine"


def test_slices_in_another_frame_of_reference_that_do_not_line_up_are_refused(tmp_path):
    """The basal half of a stack re-landmarked between breath-holds (a FrameOfReferenceUID of its
    own, positions 40 mm off in the image plane) was read as one sheared stack, EDV +36 % with QC
    pass (probe 101). A straight stack whose slices carry UIDs of their own (Sunnybrook's GE
    cine) is read as one."""
    from bad_corpus import N_SLICES, cine_dicom, make_base
    from CardiacAISegLib.errors import CardiacInputError
    from CardiacAISegLib.readers import load_study

    base = make_base(tmp_path / "base")

    def own_uid_per_slice(ds, k, t):
        ds.FrameOfReferenceUID = f"1.2.826.0.1.3680043.10.543.{k + 1}"
    assert load_study(cine_dicom(base, tmp_path / "straight", per_image=own_uid_per_slice)[0]).n_slices == N_SLICES

    def relandmarked(ds, k, t):
        ds.FrameOfReferenceUID = "1.2.826.0.1.3680043.10.543.1"
        if k >= N_SLICES // 2:
            ds.FrameOfReferenceUID = "1.2.826.0.1.3680043.10.543.99"
            x, y, z = (float(v) for v in ds.ImagePositionPatient)
            ds.ImagePositionPatient = [x + 40, y, z]
    with pytest.raises(CardiacInputError, match="FrameOfReferenceUID .* differs .* the patient coordinates changed"):
        load_study(cine_dicom(base, tmp_path / "moved", per_image=relandmarked)[0])

    from CardiacAISegLib.analysis import Analysis

    def sheared_by(mm):
        def shift(ds, k, t):   # a shift alone, UIDs that say nothing: read, said, and QC reviews a large one
            ds.FrameOfReferenceUID = f"1.2.826.0.1.3680043.10.543.{k}.{t}"
            if k >= N_SLICES // 2:
                x, y, z = (float(v) for v in ds.ImagePositionPatient)
                ds.ImagePositionPatient = [x + mm, y, z]
        return shift
    for mm, flagged in ((40, True), (2, False)):
        folder, labels = cine_dicom(base, tmp_path / f"sheared{mm}", per_image=sheared_by(mm))
        study = load_study(folder, labels=labels)
        assert any("sheared stack" in w for w in study.provenance["warnings"])
        codes = {f["code"] for f in Analysis(study, study.labels).run().qc["flags"]}
        assert ("STACK_SHEARED" in codes) == flagged, codes
