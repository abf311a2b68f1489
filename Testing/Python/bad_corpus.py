"""A corpus of odd inputs as scanners, PACS exports and new users really produce them.

Each case builds its files in a folder of its own and says what a careful tool must do with
them (``expect``):

- ``"error"``: refuse: exit 2, one ``error:`` line naming ``named`` (a file, folder or flag)
  and containing every word of ``words`` (the problem), and no outputs written;
- ``"warn"``: measure, but say so: exit 0 and every word of ``words`` in a warning or a QC
  flag code (results.json ``warnings`` / ``qc.flags``);
- ``"ok"``: a legitimate input: exit 0; ``check(doc)`` (if given) compares numbers with truth.

``run_case`` runs one case through ``cli.main`` (in-process, or a subprocess with
``subprocess=True``) and ``classify`` names what happened: ``clear_error``, ``unclear_error``,
``warned``, ``ok``, ``silent_wrong`` (exit 0, nothing said, where a warning or an error was
due), ``traceback``, ``crash`` (exit 1: the outer guard caught a bug; or a signal),
``partial_output`` (outputs or staging left by a failed run) and ``outside_write`` (a file
created or changed outside the case's output folder, the user models folder excepted).

Distinct from ``test_bad_input.py`` / ``test_geometry_checks.py``: these are the variants
those leave out (compressed transfer syntaxes, RGB, localisers in the series, DICOMDIR only,
signed data with rescale, European CSV, label maps that are images, Info.cfg typos, ...).
Run as a script to print the classification table: ``python Testing/Python/bad_corpus.py``.
"""
import contextlib
import io
import json
import os
import re
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Optional

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from dicom_factory import new_dataset, write_dicom, write_perfusion_series  # noqa: E402

OUTPUT_FILES = ("results.json", "results.csv", "segmentation.seg.nrrd", "segmentation_es.seg.nrrd", "report.png",
                "scene.mrb")
SIZE = 64
PIXEL_MM = 1.6
SLICE_MM = 8.0
N_SLICES, N_FRAMES = 8, 6


# ------------------------------------------------------------------------------ base data
@dataclass
class Base:
    """Shared, read-only source data built once per corpus folder."""
    root: Path
    cine_images: np.ndarray = None     # (T, S, R, C) float32, 0..~1
    cine_labels: np.ndarray = None     # (T, S, R, C) internal convention
    perf_dir: Path = None
    perf_dt: float = None
    perf_study: object = None


def _axial_affine(n_slices=N_SLICES, pixel=PIXEL_MM, slice_mm=SLICE_MM):
    """IJK->RAS of the DICOM stacks below: IOP (1,0,0,0,1,0), IPP z = k * slice_mm (LPS)."""
    return np.array([[-pixel, 0, 0, 0], [0, -pixel, 0, 0], [0, 0, slice_mm, 0], [0, 0, 0, 1]], float)


def make_base(root):
    from CardiacAISegLib.phantoms.phantom import write_phantom
    from CardiacAISegLib.phantoms.phantom_cine import make_cine_phantom

    root = Path(root)
    root.mkdir(parents=True, exist_ok=True)
    study, _ = make_cine_phantom(seed=3, n_frames=N_FRAMES, n_slices=N_SLICES, size=SIZE, pixel_mm=PIXEL_MM,
                                 slice_mm=SLICE_MM, slice_direction=1)
    base = Base(root)
    base.cine_images = study.images
    base.cine_labels = np.stack([study.labels[t] for t in range(N_FRAMES)])
    base.perf_dir = root / "perfusion_phantom"
    _, pstudy, _ = write_phantom("perfusion", base.perf_dir, seed=1, size=48, n_frames=30)
    base.perf_study = pstudy
    base.perf_dt = json.loads((base.perf_dir / "truth.json").read_text())["dt_s"]
    return base


def nifti(path, data_xyzt, affine, dtype=np.float32, **header):
    import nibabel as nib

    data = np.asarray(data_xyzt).astype(dtype)
    img = nib.Nifti1Image(data, affine, dtype=data.dtype)
    for key, value in header.items():
        img.header[key] = value
    nib.save(img, str(path))
    return path


def to_xyzt(tkji):
    """(T, S, R, C) -> (C, R, S, T): the NIfTI order of the same array."""
    return np.asarray(tkji).transpose(3, 2, 1, 0)


def acdc_convention(internal):
    from CardiacAISegLib.labels import to_convention

    return np.stack([to_convention(m, "acdc") for m in internal])


def cine_nifti(base, folder, images=None, labels=None, affine=None, image_dtype=np.float32, label_dtype=np.uint8):
    folder.mkdir(parents=True, exist_ok=True)
    affine = _axial_affine() if affine is None else affine
    img = nifti(folder / "cine.nii.gz", to_xyzt(base.cine_images * 1000 if images is None else images), affine, image_dtype)
    lab = nifti(folder / "cine_labels.nii.gz", to_xyzt(acdc_convention(base.cine_labels) if labels is None else labels),
                affine, label_dtype)
    return img, lab


def cine_dicom(base, folder, slices=None, frames=None, per_image=None, series="1.2.826.0.1.3680043.10.99.1",
               desc="SA cine", number=5):
    """The cine phantom as classic MR DICOM (uint16), one file per image; ``per_image(ds, k, t)``
    may change each dataset before it is saved. Returns (folder, labels NIfTI on the same grid)."""
    from pydicom.uid import MRImageStorage

    folder.mkdir(parents=True, exist_ok=True)
    slices = list(range(N_SLICES)) if slices is None else slices
    frames = list(range(N_FRAMES)) if frames is None else frames
    inst = 0
    for k in slices:
        for t in frames:
            inst += 1
            ds = new_dataset(MRImageStorage, series, number, desc)
            ds.Modality = "MR"
            ds.Rows = ds.Columns = SIZE
            ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 16, 15, 0
            ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, "MONOCHROME2"
            ds.PixelSpacing = [PIXEL_MM, PIXEL_MM]
            ds.ImageOrientationPatient = [1, 0, 0, 0, 1, 0]
            ds.ImagePositionPatient = [0.0, 0.0, SLICE_MM * k]
            ds.SliceThickness = SLICE_MM
            ds.TriggerTime = 40.0 * t
            ds.InstanceNumber = inst
            ds.PixelData = np.rint(base.cine_images[t, k] * 1000).astype(np.uint16).tobytes()
            if per_image is not None:
                per_image(ds, k, t)
            ds.save_as(folder / f"IM{inst:04d}.dcm", enforce_file_format=True)
    lab = base.cine_labels[np.ix_(frames, slices)]
    affine = _axial_affine(len(slices))
    affine[2, 3] = SLICE_MM * slices[0]           # the first slice's position, as the reader finds it
    labels = nifti(folder.parent / f"{folder.name}_labels.nii.gz", to_xyzt(acdc_convention(lab)), affine, np.uint8)
    return folder, labels


def acdc_folder(base, folder, info, frames=(0, 3), gt=True):
    """An ACDC patient folder of the cine phantom: ``frames`` written as frame01, frame02, ..."""
    folder.mkdir(parents=True, exist_ok=True)
    for n, t in enumerate(frames, start=1):
        nifti(folder / f"{folder.name}_frame{n:02d}.nii.gz", to_xyzt(base.cine_images[t:t + 1] * 1000)[..., 0],
              _axial_affine())
        if gt:
            nifti(folder / f"{folder.name}_frame{n:02d}_gt.nii.gz", to_xyzt(acdc_convention(base.cine_labels[t:t + 1]))[..., 0],
                  _axial_affine(), np.uint8)
    (folder / "Info.cfg").write_text(info)
    return folder


def perfusion_args(base, **replace):
    """analyze arguments for the perfusion phantom, with files or values replaced."""
    d = base.perf_dir
    args = {"input": d / "perfusion.nii.gz", "--labels": d / "perfusion_labels.nii.gz", "--aif": d / "aif.csv",
            "--dt": base.perf_dt}
    args.update(replace)
    out = [args.pop("input")]
    for k, v in args.items():
        if v is not None:
            out += [k, v]
    return out


# ----------------------------------------------------------------------------------- cases
@dataclass
class Case:
    name: str
    build: Callable            # build(base, folder) -> argv (after the command, without --out)
    expect: str                # "error" | "warn" | "ok"
    words: tuple = ()
    named: Optional[Callable] = None   # named(folder) -> what the error line must name
    command: str = "analyze"
    check: Optional[Callable] = None   # check(doc, base) for "ok"/"warn" runs: raises AssertionError
    out: Optional[Callable] = None     # out(folder) -> the --out folder (default folder / "out")
    category: str = ""
    extra: dict = field(default_factory=dict)


CASES = []


def case(name, expect, words=(), named=None, command="analyze", check=None, out=None, category=""):
    def register(build):
        CASES.append(Case(name, build, expect, tuple(words), named, command, check, out, category))
        return build
    return register


# --- DICOM ---------------------------------------------------------------------------------
@case("dicom_all_zero_length_files", "error", ("empty",), named=lambda f: f / "dicom", category="dicom")
def _(base, f):
    d = f / "dicom"
    d.mkdir()
    for n in range(6):
        (d / f"IM{n:04d}.dcm").write_bytes(b"")
    return [d]


@case("dicom_dicomdir_only", "error", ("DICOMDIR",), named=lambda f: f / "export", category="dicom")
def _(base, f):
    from pydicom.dataset import Dataset, FileMetaDataset
    from pydicom.uid import ExplicitVRLittleEndian, MediaStorageDirectoryStorage, generate_uid

    d = f / "export"
    d.mkdir()
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = MediaStorageDirectoryStorage
    meta.MediaStorageSOPInstanceUID = generate_uid()
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds = Dataset()
    ds.file_meta = meta
    ds.FileSetID = "EXPORT"
    ds.DirectoryRecordSequence = []
    ds.save_as(d / "DICOMDIR", enforce_file_format=True)
    return [d]


def _zipped_cine(base, f, name):
    import shutil

    d, labels = cine_dicom(base, f / "dicom")
    archive = Path(shutil.make_archive(str(f / name), "zip", root_dir=d.parent, base_dir=d.name))
    shutil.rmtree(d)
    Path(labels).unlink()
    return archive


@case("dicom_export_as_a_zip_file", "error", ("ZIP archive", "unpacked", "unzip"), named=lambda f: f / "export.zip",
      category="dicom")
def _(base, f):
    """A PACS or web-viewer export handed over as it downloads: a .zip of the DICOM files
    ('unknown file format .zip' said what it is not, not what to do)."""
    return [_zipped_cine(base, f, "export")]


@case("dicom_folder_holding_only_a_zip", "error", ("no readable images", "archive", "export.zip", "unpack"),
      named=lambda f: f / "download", category="dicom")
def _(base, f):
    (f / "download").mkdir()
    _zipped_cine(base, f / "download", "export")
    return [f / "download"]


@case("dicom_cine_slice_lost_its_first_phase", "error", ("slice 3", "nothing at 0 ms", "first phase"),
      named=lambda f: f / "dicom", category="dicom")
def _(base, f):
    """One slice's TriggerTime-0 image (ED) lost in a copy: matched by delay, ED went from every
    slice (EDV -2.7 %, QC pass; probe 26). A phase lost mid-cycle was refused already."""
    d, lab = cine_dicom(base, f / "dicom")
    (d / f"IM{3 * N_FRAMES + 1:04d}.dcm").unlink()   # slice 3, frame 0
    return [d, "--labels", lab]


@case("dicom_cine_frames_with_nothing_to_order_them", "error", ("nothing orders them in time",), category="dicom")
def _(base, f):
    """No TriggerTime, clock, TemporalPositionIdentifier or InstanceNumber, files named by UID:
    the frames were stacked in file-name order (network EF 28-30 % for 52 %; probe 26)."""
    def strip(ds, k, t):
        del ds.TriggerTime
        del ds.InstanceNumber
    d, lab = cine_dicom(base, f / "dicom", per_image=strip)
    return [d, "--labels", lab]


@case("dicom_cine_beside_a_three_plane_localiser", "ok", category="dicom", check=lambda doc, base: _assert_cine_truth(doc, base))
def _(base, f):
    """One SAX series and a 3-image localiser series: asked for --series (probe 26), where the
    same stack stored one series per slice was read."""
    d, lab = cine_dicom(base, f / "dicom")
    for n, iop in enumerate(([1, 0, 0, 0, 1, 0], [1, 0, 0, 0, 0, -1], [0, 1, 0, 0, 0, -1])):
        def plane(ds, k, t, iop=iop):
            ds.ImageOrientationPatient = iop
            ds.ImagePositionPatient = [0.0, 0.0, 0.0]
            del ds.TriggerTime
        cine_dicom(base, f / f"loc{n}", slices=[0], frames=[0], per_image=plane, series="1.2.826.0.1.3680043.10.99.7",
                   desc="3-plane loc", number=1)
        (f / f"loc{n}" / "IM0001.dcm").rename(d / f"LOC{n}.dcm")
    return [d, "--labels", lab]


@case("dicom_cine_with_phase_images_in_its_series", "ok", category="dicom", check=lambda doc, base: _assert_cine_truth(doc, base))
def _(base, f):
    """Magnitude and phase images reconstructed into one series (Siemens ImageType ...\\M\\... and
    ...\\P\\...): every trigger delay occurred twice and the series was refused as "2 acquisitions
    of the cardiac cycle (a repeated breath-hold?)" (probe 58). The phase images are left out."""
    def magnitude(ds, k, t):
        ds.ImageType = ["ORIGINAL", "PRIMARY", "M", "ND"]

    def phase(ds, k, t):
        ds.ImageType = ["ORIGINAL", "PRIMARY", "P", "ND"]
        ds.InstanceNumber = 1000 + int(ds.InstanceNumber)
        ds.PixelData = np.random.default_rng(int(ds.InstanceNumber)).integers(0, 4096, (SIZE, SIZE), np.uint16).tobytes()
    d, lab = cine_dicom(base, f / "dicom", per_image=magnitude)
    cine_dicom(base, f / "phase", per_image=phase)
    for p in sorted((f / "phase").iterdir()):
        p.rename(d / f"P{p.name}")
    return [d, "--labels", lab]


@case("dicom_dicomdir_file_given", "ok", category="dicom", check=lambda doc, base: _assert_cine_truth(doc, base))
def _(base, f):
    """The DICOMDIR of an export given as the input: "unknown file format '(no extension)'" (probe
    58). It reads the export it indexes, its folder, as a .dcm file given reads its series."""
    d, lab = cine_dicom(base, f / "export")
    (d / "DICOMDIR").write_bytes(b"\0" * 128 + b"DICM")   # the index's preamble; its records are not read
    return [d / "DICOMDIR", "--labels", lab]


@case("dicom_one_file_without_extension_given", "ok", category="dicom", check=lambda doc, base: _assert_cine_truth(doc, base))
def _(base, f):
    """One image file of a PACS export named without an extension given as the input: "unknown
    file format" where a .dcm file reads its series from its folder. It now does the same."""
    d, lab = cine_dicom(base, f / "export")
    for p in sorted(d.glob("*.dcm")):
        p.rename(p.with_suffix(""))
    return [d / "IM0001", "--labels", lab]


@case("dicom_cine_one_slice_tilted_with_labels", "error", ("does not match the image", "left images out",
                                                            "in other orientations than its stack"),
      named=lambda f: f / "dicom_labels.nii.gz", category="dicom")
def _(base, f):
    """One slice re-planned 12 degrees off the stack, measured with labels of the whole stack:
    the reader leaves the slice out (as a long-axis view) and the error blamed the label map's
    size alone (probe 58). It now names the images the reader left out."""
    tilt = np.radians(12.0)

    def tilted(ds, k, t):
        if k == N_SLICES // 2:
            ds.ImageOrientationPatient = [1, 0, 0, 0, float(np.cos(tilt)), float(np.sin(tilt))]
    d, lab = cine_dicom(base, f / "dicom", per_image=tilted)
    return [d, "--labels", lab]


@case("dicom_cine_slice_retaken_with_another_field_of_view", "warn", ("another matrix or pixel size", "#77",
                                                                       "were left out"), category="dicom")
def _(base, f):
    """One slice per series; the mid slice's series replaced by a retake with a larger field of
    view (another PixelSpacing, same matrix): left out with no word but a "slice gap" (probe 58)."""
    mid = N_SLICES // 2

    def per_slice(ds, k, t):
        ds.SeriesInstanceUID, ds.SeriesNumber = f"1.2.826.0.1.3680043.10.99.{k + 1}", 10 + k

    def retake(ds, k, t):
        ds.SeriesInstanceUID, ds.SeriesNumber = "1.2.826.0.1.3680043.10.99.77", 77
        ds.PixelSpacing = [PIXEL_MM * 1.1, PIXEL_MM * 1.1]
    d, lab = cine_dicom(base, f / "dicom", slices=[k for k in range(N_SLICES) if k != mid], per_image=per_slice)
    cine_dicom(base, f / "retake", slices=[mid], per_image=retake)
    for p in sorted((f / "retake").glob("*.dcm")):
        p.rename(d / f"R{p.name}")
    return [d]


@case("dicom_cine_one_slice_of_another_matrix", "error", ("mixes image sizes", "image(s) of 24x24", "RIM0001.dcm"),
      named=lambda f: f / "dicom", category="dicom")
def _(base, f):
    """One slice written with a smaller matrix in the stack's series: "mixes image sizes" with no
    file or slice named (probe 58)."""
    mid = N_SLICES // 2
    d, lab = cine_dicom(base, f / "dicom", slices=[k for k in range(N_SLICES) if k != mid])

    def cropped(ds, k, t):
        ds.Rows = ds.Columns = 24
        ds.PixelData = np.rint(base.cine_images[t, k, :24, :24] * 1000).astype(np.uint16).tobytes()
    cine_dicom(base, f / "crop", slices=[mid], per_image=cropped)
    for p in sorted((f / "crop").glob("*.dcm")):
        p.rename(d / f"R{p.name}")
    return [d]


@case("dicom_cine_negative_trigger_times", "warn", ("TriggerTime is negative", "IM0001.dcm"), category="dicom",
      check=lambda doc, base: _assert_cine_truth(doc, base))
def _(base, f):
    """Every TriggerTime written 1000 ms lower (negative): accepted unsaid (probe 57). The frames
    still order by it; the warning says the delays are no times within the cycle."""
    def shifted(ds, k, t):
        ds.TriggerTime = float(ds.TriggerTime) - 1000.0
    d, lab = cine_dicom(base, f / "dicom", per_image=shifted)
    return [d, "--labels", lab]


@case("dicom_compressed_damaged", "error", ("transfer syntax", "damaged"), category="dicom")
def _(base, f):
    from pydicom.encaps import encapsulate
    from pydicom.uid import JPEG2000Lossless

    def compress(ds, k, t):
        ds.file_meta.TransferSyntaxUID = JPEG2000Lossless
        ds.PixelData = encapsulate([b"\xff\x4f\xff\x51" + os.urandom(200)])   # a J2K start, then noise
        ds["PixelData"].VR = "OB"
        ds["PixelData"].is_undefined_length = True
    d, _ = cine_dicom(base, f / "dicom", slices=range(3), frames=range(2), per_image=compress)
    return [d]


@case("dicom_jpeg_12_bit_lossy_without_a_decoder_for_it", "error", ("12-bit", "cannot read this variant", "pylibjpeg-libjpeg"),
      category="dicom")
def _(base, f):
    """A valid cine compressed as 12-bit JPEG Extended (process 4), as PACS exports do: GDCM and
    Pillow decline 12-bit precision. It was called damaged ("export the series again"); the
    error now says the decoders cannot read it and which one can."""
    from dicom_factory import compress_files

    def twelve_bits(ds, k, t):
        ds.BitsStored, ds.HighBit = 12, 11

    d, labels = cine_dicom(base, f / "dicom", slices=range(3), frames=range(2), per_image=twelve_bits)
    compress_files(sorted(d.glob("*.dcm")), "JPEGExtendedProcess2_4")
    return [d, "--labels", labels]


@case("dicom_rgb_secondary_capture", "error", ("RGB",), category="dicom")
def _(base, f):
    def rgb(ds, k, t):
        ds.SamplesPerPixel, ds.PhotometricInterpretation, ds.PlanarConfiguration = 3, "RGB", 0
        ds.BitsAllocated, ds.BitsStored, ds.HighBit = 8, 8, 7
        ds.PixelData = np.zeros((SIZE, SIZE, 3), np.uint8).tobytes()
    d, _ = cine_dicom(base, f / "dicom", slices=range(3), frames=range(2), per_image=rgb)
    return [d]


@case("dicom_signed_with_rescale", "ok", category="dicom",
      check=lambda doc, base: _assert_cine_truth(doc, base))
def _(base, f):
    def signed(ds, k, t):
        stored = np.rint(base.cine_images[t, k] * 1000).astype(np.int32) - 600      # negative values stored
        ds.PixelRepresentation = 1
        ds.RescaleSlope, ds.RescaleIntercept = 2, 1200          # real = 2 * stored + 1200 >= 0
        ds.PixelData = stored.astype(np.int16).tobytes()
    d, labels = cine_dicom(base, f / "dicom", per_image=signed)
    return [d, "--labels", labels]


@case("dicom_enhanced_without_per_frame_groups", "error", ("PerFrameFunctionalGroupsSequence",), category="dicom")
def _(base, f):
    from pydicom.dataset import Dataset
    from pydicom.uid import EnhancedMRImageStorage

    d = f / "dicom"
    d.mkdir()
    ds = new_dataset(EnhancedMRImageStorage, "1.2.826.0.1.3680043.10.99.7", 9, "enhanced cine")
    ds.Modality = "MR"
    ds.Rows = ds.Columns = SIZE
    ds.NumberOfFrames = 12
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 16, 15, 0
    ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, "MONOCHROME2"
    shared = Dataset()
    pm = Dataset()
    pm.PixelSpacing, pm.SliceThickness = [PIXEL_MM, PIXEL_MM], SLICE_MM
    shared.PixelMeasuresSequence = [pm]
    ds.SharedFunctionalGroupsSequence = [shared]
    ds.PixelData = np.zeros((12, SIZE, SIZE), np.uint16).tobytes()
    ds.save_as(d / "enhanced.dcm", enforce_file_format=True)
    return [d]


@case("dicom_two_slices_only", "warn", ("COVERAGE_SHORT",), category="dicom")
def _(base, f):
    d, labels = cine_dicom(base, f / "dicom", slices=[3, 4])
    return [d, "--labels", labels]


@case("dicom_huge_instance_numbers", "ok", category="dicom", check=lambda doc, base: _assert_cine_truth(doc, base))
def _(base, f):
    def huge(ds, k, t):
        ds.InstanceNumber = 2147483000 + int(ds.InstanceNumber)
    d, labels = cine_dicom(base, f / "dicom", per_image=huge)
    return [d, "--labels", labels]


@case("dicom_non_ascii_description", "ok", category="dicom", check=lambda doc, base: _assert_cine_truth(doc, base))
def _(base, f):
    def umlaut(ds, k, t):
        ds.SpecificCharacterSet = "ISO_IR 192"
        ds.SeriesDescription = "Kurzachse Cine Ä ö ß – 短轴电影"
        ds.PatientName = "Müller^Jürgen"
    d, labels = cine_dicom(base, f / "dicom", per_image=umlaut)
    return [d, "--labels", labels, "--series", "Kurzachse Cine Ä ö ß – 短轴电影"]


@case("dicom_localiser_mixed_into_the_series", "warn", ("localisers", "LOC0.dcm"), category="dicom",
      check=lambda doc, base: _assert_cine_truth(doc, base))
def _(base, f):
    """Three localiser images (other orientations, other size) filed under the cine's series UID:
    left out with a warning naming them, the stack measured as without them."""
    d, labels = cine_dicom(base, f / "dicom")
    for n, iop in enumerate(([0, 1, 0, 0, 0, -1], [1, 0, 0, 0, 0, -1], [0.7071, 0.7071, 0, 0, 0, -1])):
        write_dicom(d / f"LOC{n}.dcm", series="1.2.826.0.1.3680043.10.99.1", number=5, desc="SA cine", iop=iop,
                    ipp=(0, 0, 0), instance=900 + n, shape=(32, 32), spacing=(3.0, 3.0), value=50)
    return [d, "--labels", labels]


@case("dicom_cine_one_acquisition_time_and_a_reconstruction_clock", "ok", category="dicom",
      check=lambda doc, base: _assert_cine_truth(doc, base))
def _(base, f):
    """A cine stack acquired in one breath-hold: one AcquisitionTime for every image, ContentTime
    (when each image was reconstructed, phase by phase over the stack) 0.7 s apart over half a
    minute. The trigger delays run through the cycle: a cine, not a first pass timed by the
    reconstruction clock."""
    from dicom_factory import _tm

    def stamp(ds, k, t):
        ds.AcquisitionTime = "100000.000000"
        ds.ContentTime = _tm(36000.0 + 0.7 * (t * N_SLICES + k))
    d, labels = cine_dicom(base, f / "dicom", per_image=stamp)
    return [d, "--labels", labels]


def _tilt_slice(k_tilted, degrees):
    def stamp(ds, k, t):
        if k == k_tilted:   # re-planned about the row axis, through the same centre
            a = np.radians(degrees)
            ds.ImageOrientationPatient = [1, 0, 0, 0, float(np.cos(a)), float(np.sin(a))]
    return stamp


@case("dicom_cine_one_slice_re_planned_a_few_degrees", "warn", ("tilted", "5.0°", "read as parallel"), category="dicom",
      check=lambda doc, base: _assert_cine_truth(doc, base))
def _(base, f):
    """One slice of the stack re-planned 5° off the others: taken for a localiser (any tilt over
    0.1°), left out, and the stack's labels then "did not match the image"."""
    d, labels = cine_dicom(base, f / "dicom", per_image=_tilt_slice(5, 5.0))
    return [d, "--labels", labels]


@case("dicom_cine_per_slice_series_one_re_planned", "warn", ("tilted", "read as parallel"), category="dicom",
      check=lambda doc, base: _assert_cine_truth(doc, base))
def _(base, f):
    """The same stack stored one series per slice: the tilted slice's series was left out of the
    stack without a word."""
    (f / "dicom").mkdir(parents=True)
    for k in range(N_SLICES):
        one, _ = cine_dicom(base, f / f"slice{k}", slices=[k], per_image=_tilt_slice(5, 5.0),
                            series=f"1.2.826.0.1.3680043.10.99.{100 + k}", number=100 + k)
        for p in one.iterdir():
            p.rename(f / "dicom" / f"S{k}_{p.name}")
    _, labels = cine_dicom(base, f / "whole_stack")      # the labels of the whole stack (its images are not the input)
    return [f / "dicom", "--labels", labels]


@case("dicom_localiser_series_beside_cine", "warn", ("a localiser", "left out"), category="dicom")
def _(base, f):
    """A 3-plane localiser series beside one SAX series: the stack is read and the localiser
    named (it asked for --series, where the same stack stored one series per slice was read;
    probe 26)."""
    d, _ = cine_dicom(base, f / "dicom", slices=range(4), frames=range(2))
    for n, iop in enumerate(([0, 1, 0, 0, 0, -1], [1, 0, 0, 0, 0, -1], [0.7071, 0.7071, 0, 0, 0, -1])):
        write_dicom(d / f"LOC{n}.dcm", series="1.2.826.0.1.3680043.10.99.2", number=1, desc="3-plane localizer", iop=iop,
                    ipp=(0, 0, 0), instance=n + 1, shape=(32, 32), spacing=(3.0, 3.0), value=50)
    return [d]


@case("dicom_garbled_pixel_spacing", "error", ("PixelSpacing",), named=lambda f: f / "dicom" / "IM0003.dcm",
      category="dicom")
def _(base, f):
    d, _ = cine_dicom(base, f / "dicom", slices=range(3), frames=range(2))
    broken = d / "IM0003.dcm"           # a DS value that is not a number, as a broken writer leaves it
    raw = broken.read_bytes()
    assert raw.count(b"1.6\\1.6") == 1
    broken.write_bytes(raw.replace(b"1.6\\1.6", b"1.6\\abc"))
    return [d]


@case("dicom_image_position_with_two_values", "error", ("ImagePositionPatient",), category="dicom")
def _(base, f):
    def short(ds, k, t):
        if k == 2:
            ds.ImagePositionPatient = [0.0, SLICE_MM * k]
    d, _ = cine_dicom(base, f / "dicom", slices=range(3), frames=range(2), per_image=short)
    return [d]


@case("dicom_rows_differ_between_slices", "error", ("Rows",), category="dicom")
def _(base, f):
    def smaller(ds, k, t):
        if k == 2:
            ds.Rows = ds.Columns = 32
            ds.PixelData = np.zeros((32, 32), np.uint16).tobytes()
    d, _ = cine_dicom(base, f / "dicom", slices=range(3), frames=range(2), per_image=smaller)
    return [d]


@case("dicom_pixel_data_missing", "error", ("pixel data",), category="dicom")
def _(base, f):
    def nopixels(ds, k, t):
        if k == 1 and t == 1:
            del ds.PixelData
    d, _ = cine_dicom(base, f / "dicom", slices=range(3), frames=range(2), per_image=nopixels)
    return [d]


@case("dicom_with_readme_and_thumbs", "ok", category="dicom", check=lambda doc, base: _assert_cine_truth(doc, base))
def _(base, f):
    d, labels = cine_dicom(base, f / "dicom")
    (d / "README.TXT").write_text("exported by PACS\n")
    (d / "Thumbs.db").write_bytes(os.urandom(300))
    return [d, "--labels", labels]


@case("dicom_bits_stored_12_with_high_bits_set", "warn", ("PIXEL_BITS_OVER_STORED",), category="dicom",
      check=lambda doc, base: _assert_cine_truth(doc, base))
def _(base, f):
    """Overlay bits above the 12 stored: masked off, the numbers right, and said (the same bits
    may be the image's own values: the next case)."""
    def twelve(ds, k, t):
        ds.BitsStored, ds.HighBit = 12, 11
        raw = np.frombuffer(ds.PixelData, np.uint16) | 0xF000    # overlay bits above the 12 stored
        ds.PixelData = raw.astype(np.uint16).tobytes()
    d, labels = cine_dicom(base, f / "dicom", per_image=twelve)
    return [d, "--labels", labels]


@case("dicom_bits_stored_12_values_over_it", "warn", ("PIXEL_BITS_OVER_STORED",), category="dicom")
def _(base, f):
    """Values up to 8x the 12-bit limit under a BitsStored 12 header (a converter's): masked as
    the standard says, the brightest pixels wrapped to the bottom with nothing naming the pixel
    format (a perfusion series read MBF +13.5 %; probe 97)."""
    def over(ds, k, t):
        ds.BitsStored, ds.HighBit = 12, 11
        raw = np.frombuffer(ds.PixelData, np.uint16).astype(np.uint32)
        ds.PixelData = np.minimum(raw * 8, 65535).astype(np.uint16).tobytes()
    d, labels = cine_dicom(base, f / "dicom", per_image=over)
    return [d, "--labels", labels]


def _one_series_per_slice(ds, k, t):
    """Siemens-style: every slice position its own series (numbers 5..12, 'SA_1'..)."""
    ds.SeriesInstanceUID = f"1.2.826.0.1.3680043.10.99.{100 + k}"
    ds.SeriesNumber = 5 + k
    ds.SeriesDescription = f"SA_{k + 1}"


@case("dicom_one_series_per_slice", "ok", category="dicom", check=lambda doc, base: _assert_cine_truth(doc, base))
def _(base, f):
    """Siemens-style short-axis cine: every slice position is its own series (numbers 5..12)."""
    d, labels = cine_dicom(base, f / "dicom", per_image=_one_series_per_slice)
    return [d, "--labels", labels]


@case("dicom_cine_per_slice_numbered_in_two_runs", "ok", category="dicom",
      check=lambda doc, base: _assert_cine_truth(doc, base))
def _(base, f):
    """Per-slice cine series with no clock, the basal five numbered 5-9 and the rest of the stack
    30-32 (acquired after other scans): two runs of series numbers that lie beside each other
    along the normal, one stack, not two acquisitions of it planned apart (the rule that refuses
    stress and rest described alike, probe 56)."""
    def two_runs(ds, k, t):
        _one_series_per_slice(ds, k, t)
        ds.SeriesNumber = 5 + k if k < 5 else 25 + k

    d, labels = cine_dicom(base, f / "dicom", per_image=two_runs)
    return [d, "--labels", labels]


@case("dicom_cine_per_slice_with_two_retakes_numbered_later", "warn", ("acquired in two series", "the later series (#25)",
                                                                       "the later series (#26)"),
      category="dicom", check=lambda doc, base: _assert_cine_truth(doc, base))
def _(base, f):
    """Per-slice cine series with no clock (#5-#12) and slices 2 and 7 acquired again after other
    scans (#25, #26, the same positions and images): two runs of series numbers whose positions
    lie among each other, but the retakes repeat their slices' positions, where a rest planned
    apart shares none. Read as the stack with the retakes used, as before the rule for stress
    and rest described alike (the rule refused it as "stress and rest?"; helper-85's review)."""
    d, labels = cine_dicom(base, f / "dicom", per_image=_one_series_per_slice)

    def retake(ds, k, t):
        _one_series_per_slice(ds, k, t)
        ds.SeriesInstanceUID = f"1.2.826.0.1.3680043.10.99.{200 + k}"
        ds.SeriesNumber = {1: 25, 6: 26}[k]
        ds.SOPInstanceUID = f"{ds.SOPInstanceUID}.9"

    cine_dicom(base, f / "retakes", slices=[1, 6], per_image=retake)
    for p in (f / "retakes").iterdir():
        p.rename(d / f"retake_{p.name}")
    return [d, "--labels", labels]


@case("dicom_cine_per_slice_with_a_small_series_beside", "ok", category="dicom",
      check=lambda doc, base: _assert_cine_truth(doc, base))
def _(base, f):
    """Per-slice cine series and, beside them, a half-matrix series of two slices (a real-time or
    low-resolution scout, 12 images, a quarter of the stack's 48): shaped like a dual-sequence
    AIF series, but the frame times say cine, so it is not read as one."""
    d, labels = cine_dicom(base, f / "dicom", per_image=_one_series_per_slice)

    def small(ds, k, t):
        ds.SeriesInstanceUID, ds.SeriesNumber, ds.SeriesDescription = "1.2.826.0.1.3680043.10.99.999", 40, "RT scout"
        ds.Rows = ds.Columns = SIZE // 2
        ds.PixelSpacing = [2 * PIXEL_MM, 2 * PIXEL_MM]
        ds.PixelData = np.rint(base.cine_images[t, k][::2, ::2] * 1000).astype(np.uint16).tobytes()
    cine_dicom(base, f / "scout_tmp", slices=[3, 4], per_image=small, series="1.2.826.0.1.3680043.10.99.999")
    for p in (f / "scout_tmp").glob("*.dcm"):
        p.rename(d / f"RT_{p.name}")
    return [d, "--labels", labels]


@case("dicom_slice_repeated_in_another_series", "warn", ("two series", "SA_4_repeat", "later series"), category="dicom",
      check=lambda doc, base: _assert_cine_truth(doc, base))
def _(base, f):
    """One series per slice, and slice 4 acquired twice (a repeat after a failed breath-hold):
    the repeat is used, as clinicians do, and the warning names both series."""
    d, labels = cine_dicom(base, f / "dicom", per_image=_one_series_per_slice)

    def repeat(ds, k, t):
        ds.SeriesInstanceUID = "1.2.826.0.1.3680043.10.99.999"
        ds.SeriesNumber = 99
        ds.SeriesDescription = "SA_4_repeat"
        ds.InstanceNumber = 500 + t
    extra = f / "repeat"
    cine_dicom(base, extra, slices=[3], per_image=repeat)
    for p in extra.glob("*.dcm"):
        p.rename(d / f"R_{p.name}")
    return [d, "--labels", labels]


@case("dicom_two_patients_in_one_folder", "error", ("2 patients", "PatientID 'A'", "PatientID 'B'"),
      named=lambda f: f / "dicom", category="dicom")
def _(base, f):
    """Two patients' Siemens-style per-slice cine series exported into one folder: alike in
    geometry, they once merged into one stack as 'repeated slices', half of each patient."""
    def patient(pid):
        def stamp(ds, k, t):
            _one_series_per_slice(ds, k, t)
            ds.PatientID = pid
            if pid == "B":
                ds.SeriesInstanceUID += ".2"
                ds.SeriesNumber += 100
        return stamp
    d, _ = cine_dicom(base, f / "dicom", per_image=patient("A"))
    cine_dicom(base, f / "other", slices=[0, 1, 2, 3], per_image=patient("B"))
    for p in (f / "other").glob("*.dcm"):
        p.rename(d / f"B_{p.name}")
    return [d]


@case("dicom_bare_data_sets_without_file_meta", "ok", category="dicom",
      check=lambda doc, base: _assert_cine_truth(doc, base))
def _(base, f):
    """Files holding the bare data set, implicit VR, with no preamble and no file meta (old
    exports, some gateways): no Transfer Syntax UID to decode the pixels by."""
    import pydicom

    d, labels = cine_dicom(base, f / "dicom")
    for p in d.glob("*.dcm"):
        ds = pydicom.dcmread(p)
        del ds.file_meta
        pydicom.dcmwrite(p, ds, implicit_vr=True, little_endian=True, enforce_file_format=False)
    return [d, "--labels", labels]


@case("dicom_cine_positions_differ_in_the_last_digits", "ok", category="dicom",
      check=lambda doc, base: _assert_cine_truth(doc, base))
def _(base, f):
    """ImagePositionPatient of one slice differs from phase to phase by up to 0.08 mm in each
    coordinate (an export that rewrote the positions with rounding): one slice, not 48. The
    offsets of each slice's phases have median 0, so the slice sits at its nominal position and
    the labels' grid is the image's: the volume must be exact."""
    rng = np.random.default_rng(5)
    offsets = np.array([-0.08, -0.04, 0.0, 0.0, 0.04, 0.08])[:N_FRAMES]
    per_slice = {k: [rng.permutation(offsets) for _ in range(3)] for k in range(N_SLICES)}

    def jitter(ds, k, t):
        ds.ImagePositionPatient = [round(float(v) + float(per_slice[k][axis][t]), 3)
                                   for axis, v in enumerate(ds.ImagePositionPatient)]

    d, labels = cine_dicom(base, f / "dicom", per_image=jitter)
    return [d, "--labels", labels]


@case("dicom_cine_one_phase_lost_inside_the_cycle", "error", ("slice 3", "5 of 6", "missing inside the cardiac cycle"),
      named=lambda f: f / "dicom", category="dicom")
def _(base, f):
    """One image of a cine lost in a copy: slice 3 has no image at 80 ms. Keeping the first 5
    phases of every slice would put that slice's later phases one step out of line."""
    d, _ = cine_dicom(base, f / "dicom")
    (d / f"IM{3 * N_FRAMES + 3:04d}.dcm").unlink()
    return [d]


@case("dicom_cine_one_slice_with_a_shorter_cycle", "warn", ("first 5", "slice 3"), category="dicom")
def _(base, f):
    """A slice whose last phase is missing (prospective triggering drops the end of a shorter
    cycle): the common phases line up, so they are used, and the warning names the slice."""
    d, _ = cine_dicom(base, f / "dicom")
    (d / f"IM{3 * N_FRAMES + N_FRAMES:04d}.dcm").unlink()
    return [d]


@case("dicom_cine_trigger_time_in_seconds", "warn", ("TriggerTime holds seconds", "read as seconds"), category="dicom",
      check=lambda doc, base: _assert_cine_truth(doc, base))
def _(base, f):
    """A cine whose TriggerTime holds seconds (0, 0.04, ... 0.2): as milliseconds the frames
    were 0.04 ms apart, rounded to one time, and refused as duplicate images of one frame."""
    def seconds(ds, k, t):
        ds.TriggerTime = round(0.04 * t, 3)

    folder, labels = cine_dicom(base, f / "dicom", per_image=seconds)
    return [folder, "--labels", labels]


@case("perfusion_dicom_ge_trigger_time_in_seconds", "warn", ("TriggerTime holds seconds",), category="perfusion",
      check=lambda doc, base: _assert_mbf_near_truth(doc, base, 0.06) or _assert_no_poor_fit(doc))
def _(base, f):
    """A GE first pass whose TriggerTime holds seconds (0.77 ... 15.3) with no flags: as
    milliseconds its 30 frames spanned 14 ms, and it was read as a cine (EF 100 %)."""
    import pydicom

    _, paths = write_perfusion_series(f / "dicom", base.perf_study, vendor="ge")
    for path in paths:
        ds = pydicom.dcmread(path)
        ds.TriggerTime = round(float(ds.TriggerTime) / 1000.0, 4)
        ds.save_as(path)
    return [f / "dicom", "--labels", base.perf_dir / "perfusion_labels.nii.gz"]


@case("dicom_cine_two_breath_holds_in_one_series", "error", ("every trigger delay occurs 2 times", "acquisitions",
                                                              "first/IM0001.dcm, repeat/IM0001.dcm"),
      named=lambda f: f / "dicom", category="dicom")
def _(base, f):
    """The same cine stack acquired twice (a repeated breath-hold) under one series UID, the
    second five minutes later: every slice position holds each trigger delay twice with distinct
    acquisition times, so nothing looked duplicated and the two cycles were read as one cycle of
    twice the phases (an Enhanced MR file of such a repeat gave QC "pass")."""
    from pydicom.uid import generate_uid

    from dicom_factory import _tm

    def timed(start):
        def per_image(ds, k, t):
            ds.AcquisitionTime = _tm(start + 0.04 * t + 10 * k)
            ds.SOPInstanceUID = generate_uid()
        return per_image

    for name, start in (("first", 36000.0), ("repeat", 36300.0)):
        _, labels = cine_dicom(base, f / "dicom" / name, per_image=timed(start))
        labels.unlink()   # written beside the images; only DICOM in the folder
    return [f / "dicom"]


@case("dicom_enhanced_cine_stack_placed_by_its_shared_group", "error", ("cardiac cycle 8 times", "shared functional group"),
      named=lambda f: f / "dicom", category="dicom")
def _(base, f):
    """An Enhanced MR cine of 8 slices whose PlanePositionSequence sits only in the shared
    functional group (one position for every frame), each slice's trigger delays its own
    heartbeat's: the 48 frames at one position were read as a first pass brightening slice by
    slice ("frame interval unknown ... give --dt"), an invitation to a nonsense MBF."""
    from dicom_factory import write_enhanced_dicom

    frames = [dict(pixels=np.rint(base.cine_images[t, k] * 1000).astype(np.uint16), ipp=[0.0, 0.0, SLICE_MM * k],
                   iop=[1, 0, 0, 0, 1, 0], ps=[PIXEL_MM, PIXEL_MM], thickness=SLICE_MM,
                   trigger_ms=(40.0 + 2 * k) * t, tpi=t + 1)
              for k in range(N_SLICES) for t in range(N_FRAMES)]
    (f / "dicom").mkdir(parents=True)
    write_enhanced_dicom(f / "dicom" / "cine.dcm", frames, shared=("PlanePositionSequence",))
    return [f / "dicom"]


@case("dicom_realtime_cine_untriggered", "error", ("real-time", "45 ms per frame", "ECG-triggered"),
      named=lambda f: f / "dicom", category="dicom")
def _(base, f):
    """A real-time (untriggered) cine: 102 frames 45 ms apart per slice, TriggerTime 0, the
    slices acquired one after another. Its 4.5 s span once made it a 'first pass' (refused for a
    0.045 s frame interval); read as a cine, frame t of one slice is another phase than frame t
    of the next, so EF would mix phases."""
    from dicom_factory import _tm

    n_rt = 102
    seen = {}

    def realtime(ds, k, t):
        n = seen[k] = seen.get(k, -1) + 1        # the n-th image of slice k, 45 ms after the one before
        ds.TriggerTime = 0.0
        ds.AcquisitionTime = _tm(36000.0 + 10.0 * k + 0.045 * n)
    d, _ = cine_dicom(base, f / "dicom", slices=[2, 3, 4], frames=list(range(N_FRAMES)) * (n_rt // N_FRAMES),
                      per_image=realtime)
    return [d]


@case("dicom_reverse_order_and_descending_instances", "ok", category="dicom",
      check=lambda doc, base: _assert_cine_truth(doc, base))
def _(base, f):
    def reverse(ds, k, t):
        ds.InstanceNumber = 10000 - int(ds.InstanceNumber)
    d, labels = cine_dicom(base, f / "dicom", per_image=reverse)
    return [d, "--labels", labels]


# --- NIfTI / NRRD / MetaImage -------------------------------------------------------------
@case("nifti_cine_slice_and_time_axes_swapped", "warn", ("AXES_SWAPPED", "time axes look swapped"), category="nifti",
      check=lambda doc, base: _assert_qc_review(doc))
def _(base, f):
    """A converter wrote the 4D cine as (x, y, time, slice): the 6 frames read as slices and the
    8 slices as frames. Every "frame" is then one slice position over the cycle: EF 28 for 57,
    QC "pass", the one warning blaming the trigger or labels."""
    img, lab = cine_nifti(base, f)
    import nibabel as nib

    for path in (img, lab):
        x = nib.load(str(path))
        data = np.asarray(x.dataobj).transpose(0, 1, 3, 2)
        nib.save(nib.Nifti1Image(data, _axial_affine(n_slices=data.shape[2]), dtype=data.dtype), str(path))
    return [img, "--labels", lab]


@case("nifti_int64_image", "ok", category="volume", check=lambda doc, base: _assert_cine_truth(doc, base))
def _(base, f):
    img, lab = cine_nifti(base, f, image_dtype=np.int64)
    return [img, "--labels", lab]


@case("nifti_infinite_values", "error", ("infinite",), named=lambda f: f / "cine.nii.gz", category="volume")
def _(base, f):
    images = base.cine_images * 1000
    images[2, 3, 10:20, 10:20] = np.inf
    img, lab = cine_nifti(base, f, images=images)
    return [img, "--labels", lab]


@case("nifti_5d_with_a_singleton_axis", "ok", category="volume", check=lambda doc, base: _assert_cine_truth(doc, base))
def _(base, f):
    img, lab = cine_nifti(base, f)
    import nibabel as nib

    data = np.asarray(nib.load(str(img)).dataobj)[..., None]
    nifti(img, data, _axial_affine())
    return [img, "--labels", lab]


@case("nifti_5d_real", "error", ("4D",), named=lambda f: f / "cine.nii.gz", category="volume")
def _(base, f):
    img, lab = cine_nifti(base, f)
    nifti(img, np.zeros((SIZE, SIZE, N_SLICES, N_FRAMES, 2), np.float32), _axial_affine())
    return [img, "--labels", lab]


@case("nifti_2d", "warn", ("one frame only", "COVERAGE_SHORT"), category="volume")
def _(base, f):
    """One 2D image: ED volumes of one slice are no ventricle - measured, and flagged."""
    f.mkdir(parents=True, exist_ok=True)
    img = nifti(f / "slice.nii.gz", base.cine_images[base_ed(base), 3].T * 1000, _axial_affine())
    lab = nifti(f / "slice_labels.nii.gz", acdc_convention(base.cine_labels[base_ed(base):base_ed(base) + 1, 3:4])[0, 0].T,
                _axial_affine(), np.uint8)
    return [img, "--labels", lab]


@case("nifti_stack_on_the_time_axis", "warn", ("COVERAGE_SHORT", "saved along the 4th (time) axis"), category="volume")
def _(base, f):
    """An ED stack saved as (x, y, 1, slices), read as a cine as told: one slice over "frames",
    EDV 1.8 mL; the flag names the likely cause (probe 72)."""
    f.mkdir(parents=True, exist_ok=True)
    ed = base_ed(base)
    img = nifti(f / "stack.nii.gz", (base.cine_images[ed] * 1000).T[:, :, None, :], _axial_affine())
    lab = nifti(f / "stack_labels.nii.gz", acdc_convention(base.cine_labels[ed:ed + 1])[0].T[:, :, None, :],
                _axial_affine(), np.uint8)
    return [img, "--labels", lab, "--kind", "cine"]


@case("nifti_scl_slope_zero", "ok", category="volume", check=lambda doc, base: _assert_cine_truth(doc, base))
def _(base, f):
    """NIfTI-1: scl_slope 0 means 'no scaling', not 'all zero'."""
    img, lab = cine_nifti(base, f)
    import nibabel as nib

    im = nib.load(str(img))
    data = np.asarray(im.dataobj)
    hdr = im.header.copy()
    new = nib.Nifti1Image(data, im.affine, hdr)
    new.header["scl_slope"], new.header["scl_inter"] = 0, 0
    nib.save(new, str(img))
    return [img, "--labels", lab]


@case("nifti_all_zero_image", "warn", ("no image data",), category="volume")
def _(base, f):
    img, lab = cine_nifti(base, f, images=np.zeros_like(base.cine_images))
    return [img, "--labels", lab]


@case("labels_transposed_rows_columns", "error", ("does not match",), named=lambda f: f / "labels_t.nii.gz",
      category="labels")
def _(base, f):
    images = base.cine_images[:, :, :, : SIZE - 8] * 1000           # not square: a transpose changes the shape
    img, _ = cine_nifti(base, f, images=images)
    lab = acdc_convention(base.cine_labels)[:, :, :, : SIZE - 8]
    labels = nifti(f / "labels_t.nii.gz", lab.transpose(2, 3, 1, 0), _axial_affine(), np.uint8)   # (R, C, S, T)
    return [img, "--labels", labels]


@case("labels_values_4_to_255", "warn", ("label values",), category="labels")
def _(base, f):
    lab = acdc_convention(base.cine_labels).astype(np.uint8)
    lab[(lab == 0) & (np.arange(SIZE)[None, None, None, :] < 6)] = 200          # extra structures
    lab[(lab == 0) & (np.arange(SIZE)[None, None, :, None] < 4)] = 4
    img, labels = cine_nifti(base, f, labels=lab)
    return [img, "--labels", labels]


@case("labels_binary_mask_0_255", "error", ("255",), named=lambda f: f / "cine_labels.nii.gz", category="labels")
def _(base, f):
    lab = np.where(base.cine_labels > 0, 255, 0).astype(np.uint8)
    img, labels = cine_nifti(base, f, labels=lab)
    return [img, "--labels", labels]


@case("labels_binary_mask_0_1", "error", ("one structure only", "read as the RV", "--label-convention ukbb"),
      named=lambda f: f / "cine_labels.nii.gz", category="labels")
def _(base, f):
    """An LV pool mask saved as 0/1 (a thresholding tool's output): read as the RV in the ACDC
    convention, it failed with "no LV blood pool labelled at ED" naming the study, not the label
    file, and nothing said value 1 was read as the RV (probe 96)."""
    lab = (base.cine_labels == 1).astype(np.uint8)     # internal 1 = LV blood pool
    img, labels = cine_nifti(base, f, labels=lab)
    return [img, "--labels", labels]


@case("labels_doubled_by_a_slope", "error", ("no LV blood pool", "label values [4, 6]"),
      named=lambda f: f / "cine_labels.nii.gz", category="labels")
def _(base, f):
    """Labels stored x2 (a scl_slope of 2): 'no LV blood pool' said nothing of the values 4 and 6."""
    lab = (acdc_convention(base.cine_labels) * 2).astype(np.uint8)
    img, labels = cine_nifti(base, f, labels=lab)
    return [img, "--labels", labels]


@case("labels_float_halves", "error", ("whole numbers",), named=lambda f: f / "cine_labels.nii.gz", category="labels")
def _(base, f):
    lab = acdc_convention(base.cine_labels).astype(np.float32) * 0.5
    img, labels = cine_nifti(base, f, labels=lab, label_dtype=np.float32)
    return [img, "--labels", labels]


@case("labels_float_whole_numbers", "ok", category="labels", check=lambda doc, base: _assert_cine_truth(doc, base))
def _(base, f):
    img, labels = cine_nifti(base, f, labels=acdc_convention(base.cine_labels).astype(np.float32),
                             label_dtype=np.float32)
    return [img, "--labels", labels]


@case("labels_all_zero", "error", ("no LV",), named=lambda f: f / "cine_labels.nii.gz", category="labels")
def _(base, f):
    img, labels = cine_nifti(base, f, labels=np.zeros_like(base.cine_labels))
    return [img, "--labels", labels]


@case("labels_only_lv_blood_pool", "warn", ("RV", "LV_MASS_RANGE"), category="labels")
def _(base, f):
    lab = np.where(base.cine_labels == 1, 3, 0).astype(np.uint8)        # ACDC 3 = LV blood pool
    img, labels = cine_nifti(base, f, labels=lab)
    return [img, "--labels", labels]


@case("labels_are_the_image_itself", "error", ("not a label map",), named=lambda f: f / "cine.nii.gz",
      category="labels")
def _(base, f):
    img, _ = cine_nifti(base, f, image_dtype=np.int16)
    return [img, "--labels", img]


@case("labels_flag_points_to_a_folder_of_images", "error", ("label",), named=lambda f: f / "images",
      category="cli")
def _(base, f):
    img, _ = cine_nifti(base, f)
    (f / "images").mkdir()
    for t in range(2):
        nifti(f / "images" / f"frame{t}.nii.gz", to_xyzt(base.cine_images[t:t + 1])[..., 0], _axial_affine())
    return [img, "--labels", f / "images"]


@case("nrrd_labels_for_nifti_image", "ok", category="labels", check=lambda doc, base: _assert_cine_truth(doc, base))
def _(base, f):
    import nrrd

    img, _ = cine_nifti(base, f)
    lab = acdc_convention(base.cine_labels)
    header = {"space": "right-anterior-superior", "space directions": [[-PIXEL_MM, 0, 0], [0, -PIXEL_MM, 0], [0, 0, SLICE_MM],
                                                                       np.nan], "space origin": [0.0, 0.0, 0.0],
              "kinds": ["domain", "domain", "domain", "list"]}
    header["space directions"] = np.array([[-PIXEL_MM, 0, 0], [0, -PIXEL_MM, 0], [0, 0, SLICE_MM], [np.nan] * 3])
    nrrd.write(str(f / "labels.nrrd"), to_xyzt(lab).astype(np.uint8), header)
    return [img, "--labels", f / "labels.nrrd"]


def _mhd_header(element_type, data_file="cine.raw", spacing="1.6 1.6 8"):
    """The text of a 3D MetaImage header over the cine phantom's grid."""
    return (f"ObjectType = Image\nNDims = 3\nBinaryData = True\nBinaryDataByteOrderMSB = False\n"
            f"DimSize = {SIZE} {SIZE} {N_SLICES}\nElementSpacing = {spacing}\nElementType = {element_type}\n"
            f"ElementDataFile = {data_file}\n")


@case("metaimage_float_data_under_met_int", "error", ("ElementType MET_INT", "200 million or more", "MET_FLOAT"),
      named=lambda f: f / "cine.mhd", category="volume")
def _(base, f):
    """Float32 data under ElementType MET_INT: the same byte count, each value read as its bits
    (0.5-5000 as 1.0e9-1.2e9, squashed like a logarithm): exit 0, RV EDV 16 % off (probe 57)."""
    f.mkdir(parents=True, exist_ok=True)
    (f / "cine.raw").write_bytes((base.cine_images[0] * 1000).astype(np.float32).tobytes())
    (f / "cine.mhd").write_text(_mhd_header("MET_INT"))
    return [f / "cine.mhd"]


@case("metaimage_int64_with_nan_spacing_text", "error", ("ElementSpacing",), named=lambda f: f / "cine.mhd",
      category="volume")
def _(base, f):
    f.mkdir(parents=True, exist_ok=True)
    arr = (base.cine_images[0] * 1000).astype(np.int16)
    (f / "cine.raw").write_bytes(arr.tobytes())
    (f / "cine.mhd").write_text(_mhd_header("MET_SHORT", spacing="1,6 1,6 8"))
    return [f / "cine.mhd"]


@case("metaimage_data_file_is_a_folder", "error", ("ElementDataFile", "not a regular file"), named=lambda f: f / "cine.mhd",
      category="volume")
def _(base, f):
    """ElementDataFile = . (the header's own folder): "its data file ... is missing" sent the user
    looking for a file whose name is there (probe 57)."""
    f.mkdir(parents=True, exist_ok=True)
    (f / "cine.mhd").write_text(_mhd_header("MET_SHORT", data_file="."))
    return [f / "cine.mhd"]


@case("metaimage_phases_as_channels", "error", ("multi-channel", "4D image"), named=lambda f: f / "cine.mhd",
      category="volume")
def _(base, f):
    """A 3D MetaImage whose channels are the phases (ElementNumberOfChannels = frames): refused
    with no hint of what to save instead (probe 36)."""
    f.mkdir(parents=True, exist_ok=True)
    arr = np.ascontiguousarray(np.moveaxis(base.cine_images * 1000, 0, -1)).astype(np.int16)   # s, r, c, frames
    (f / "cine.raw").write_bytes(arr.tobytes())
    (f / "cine.mhd").write_text(f"ObjectType = Image\nNDims = 3\nBinaryData = True\nBinaryDataByteOrderMSB = False\n"
                                f"DimSize = {SIZE} {SIZE} {N_SLICES}\nElementSpacing = {PIXEL_MM} {PIXEL_MM} {SLICE_MM}\n"
                                f"ElementNumberOfChannels = {N_FRAMES}\nElementType = MET_SHORT\nElementDataFile = cine.raw\n")
    return [f / "cine.mhd"]


@case("seq_nrrd_two_frames_at_one_time", "warn", ("same time index value",), category="volume",
      check=lambda doc, base: _assert_cine_truth(doc, base))
def _(base, f):
    """Two frames of a cine sequence share one time index value (a frame saved twice): accepted
    without a word (probe 36)."""
    import nrrd

    f.mkdir(parents=True, exist_ok=True)
    times = [45 * t for t in range(N_FRAMES)]
    times[3] = times[2]
    header = {"space": "right-anterior-superior", "kinds": ["list", "domain", "domain", "domain"],
              "space directions": np.array([[np.nan] * 3, [-PIXEL_MM, 0, 0], [0, -PIXEL_MM, 0], [0, 0, SLICE_MM]]),
              "space origin": [0.0, 0.0, 0.0], "labels": ["time", "", "", ""], "units": ["ms", "", "", ""],
              "axis 0 index type": "numeric", "axis 0 index values": " ".join(f"{t:g}" for t in times)}
    nrrd.write(str(f / "cine.seq.nrrd"), (base.cine_images * 1000).transpose(0, 3, 2, 1).astype(np.float32), header,
               custom_field_map={"axis 0 index type": "string", "axis 0 index values": "string"})
    lab = nifti(f / "labels.nii.gz", to_xyzt(acdc_convention(base.cine_labels)), _axial_affine(), np.uint8)
    return [f / "cine.seq.nrrd", "--labels", lab]


@case("metaimage_raw_file_too_short", "error", ("truncated",), named=lambda f: f / "cine.raw", category="volume")
def _(base, f):
    f.mkdir(parents=True, exist_ok=True)
    arr = (base.cine_images[0] * 1000).astype(np.int16)
    (f / "cine.raw").write_bytes(arr.tobytes()[: arr.nbytes // 2])
    (f / "cine.mhd").write_text(f"ObjectType = Image\nNDims = 3\nBinaryData = True\nBinaryDataByteOrderMSB = False\n"
                                f"DimSize = {SIZE} {SIZE} {N_SLICES}\nElementSpacing = 1.6 1.6 8\nElementType = MET_SHORT\n"
                                f"ElementDataFile = cine.raw\n")
    return [f / "cine.mhd"]


@case("metaimage_raw_file_twice_the_header", "error", ("bytes", "ElementType", "DimSize"), named=lambda f: f / "cine.raw",
      category="volume")
def _(base, f):
    """MET_INT data under a MET_SHORT header: the first half of the bytes read silently (probe 21)."""
    f.mkdir(parents=True, exist_ok=True)
    (f / "cine.raw").write_bytes((base.cine_images[0] * 1000).astype(np.int32).tobytes())
    (f / "cine.mhd").write_text(_mhd_header("MET_SHORT"))
    return [f / "cine.mhd"]


@case("nifti_sform_and_qform_disagree_on_spacing", "error", ("sform", "qform", "voxel sizes"),
      named=lambda f: f / "cine.nii.gz", category="volume")
def _(base, f):
    """sform says 1.6 mm pixels, qform 3.2 mm: nibabel reads the sform, ITK (Slicer) the qform, so
    the volumes here and the image in Slicer would differ by 4x without a word."""
    import nibabel as nib

    img, lab = cine_nifti(base, f)
    im = nib.load(str(img))
    data = np.asarray(im.dataobj)
    new = nib.Nifti1Image(data, None)
    new.set_sform(_axial_affine(), code=1)
    new.set_qform(np.diag([-3.2, -3.2, SLICE_MM, 1.0]), code=1)
    nib.save(new, str(img))
    return [img, "--labels", lab]


@case("nifti_spacing_in_metres", "error", ("spacing", "metres"), named=lambda f: f / "cine.nii.gz", category="volume")
def _(base, f):
    affine = _axial_affine() / 1000.0
    affine[3, 3] = 1
    img, lab = cine_nifti(base, f, affine=affine)
    return [img, "--labels", lab]


@case("labels_ukbb_convention_read_as_acdc", "error", ("--label-convention ukbb",),
      named=lambda f: f / "cine_labels.nii.gz", category="labels")
def _(base, f):
    """UK Biobank labels (1 LV, 3 RV) read with the default ACDC convention (1 RV, 3 LV): the RV
    would be measured as the LV."""
    from CardiacAISegLib.labels import to_convention

    ukbb = np.stack([to_convention(m, "ukbb") for m in base.cine_labels])
    img, lab = cine_nifti(base, f, labels=ukbb)
    return [img, "--labels", lab]


@case("labels_lv_only_map_read_as_acdc", "error", ("no LV blood pool", "--label-convention ukbb"),
      named=lambda f: f / "cine_labels.nii.gz", category="labels")
def _(base, f):
    """An LV-only map (1 LV pool, 2 myocardium, no RV: the usual form of LV-only datasets) read
    with the default ACDC convention, where 1 is the RV: it failed with 'no LV blood pool in any
    frame' and no hint of the convention."""
    lv_only = np.where(base.cine_labels == 3, 0, base.cine_labels).astype(np.uint8)   # internal: 1 LV, 2 MYO
    img, lab = cine_nifti(base, f, labels=lv_only)
    return [img, "--labels", lab]


@case("nifti_sform_and_qform_orient_differently", "warn", ("sform and qform orient the image differently", "axis i reversed"),
      category="nifti", check=lambda doc, base: _assert_cine_truth(doc, base))
def _(base, f):
    """A cine whose sform mirrors the first axis against its qform (same voxel sizes): the numbers
    are the same either way, but programs that read the qform place it mirrored; nothing said so."""
    import nibabel as nib

    affine = _axial_affine()
    mirrored = affine.copy()
    mirrored[:3, 0] *= -1
    image = nib.Nifti1Image(to_xyzt(base.cine_images * 1000).astype(np.float32), affine)
    image.set_sform(mirrored, code=2)
    image.set_qform(affine, code=1)
    f.mkdir(parents=True, exist_ok=True)
    nib.save(image, str(f / "cine.nii.gz"))
    labels = nifti(f / "cine_labels.nii.gz", to_xyzt(acdc_convention(base.cine_labels)), mirrored, np.uint8)
    return [f / "cine.nii.gz", "--labels", labels]


@case("nifti_labels_sform_and_qform_orient_differently", "warn", ("cine_labels.nii.gz", "sform and qform orient the image "
      "differently"), category="nifti", check=lambda doc, base: _assert_cine_truth(doc, base))
def _(base, f):
    """The label map (not the image) with an sform mirrored against its qform: read by the sform,
    as the image would be, but said for the image only; Slicer, which reads the qform, shows
    such labels mirrored (probe round 13)."""
    import nibabel as nib

    img, _ = cine_nifti(base, f)
    affine = _axial_affine()
    mirrored = affine.copy()
    mirrored[:3, 0] *= -1
    labels = nib.Nifti1Image(to_xyzt(acdc_convention(base.cine_labels)).astype(np.uint8), affine)
    labels.set_sform(affine, code=2)
    labels.set_qform(mirrored, code=1)
    nib.save(labels, str(f / "cine_labels.nii.gz"))
    return [img, "--labels", f / "cine_labels.nii.gz"]


@case("nifti_constant_image_through_the_network", "error", ("every pixel", "no image data"), category="nifti")
def _(base, f):
    """A cine whose every voxel is 500 (a failed export) given to the network: it said 'no LV
    blood pool in any frame', which hides why."""
    img, _ = cine_nifti(base, f, images=np.full(base.cine_images.shape, 500.0, np.float32))
    return [img]


@case("labels_pool_and_myocardium_swapped", "error", ("swapped",), named=lambda f: f / "cine_labels.nii.gz",
      category="labels")
def _(base, f):
    """A convention with 2 = LV pool and 3 = myocardium read as ACDC: EDV would be the wall."""
    lab = acdc_convention(base.cine_labels)
    swapped = lab.copy()
    swapped[lab == 2], swapped[lab == 3] = 3, 2
    img, labels = cine_nifti(base, f, labels=swapped)
    return [img, "--labels", labels]


@case("labels_3d_for_a_4d_cine", "error", ("3D label map",), named=lambda f: f / "cine.nii.gz", category="labels")
def _(base, f):
    img, _ = cine_nifti(base, f)
    lab = nifti(f / "ed_labels.nii.gz", to_xyzt(acdc_convention(base.cine_labels[:1]))[..., 0], _axial_affine(), np.uint8)
    return [img, "--labels", lab]


@case("labels_study_for_a_nifti_without_gt", "error", ("label",), named=lambda f: f / "cine.nii.gz", category="labels")
def _(base, f):
    img, _ = cine_nifti(base, f)
    return [img, "--labels", "study"]


@case("labels_es_frame_empty", "warn", ("LV_EF_RANGE", "LV_ESV_RANGE"), category="labels")
def _(base, f):
    lab = acdc_convention(base.cine_labels)
    lab[base_es(base)] = 0
    lab[base_es(base), 0, 0, 0] = 2          # one stray myocardium voxel: the frame is not dropped as unlabelled
    img, labels = cine_nifti(base, f, labels=lab)
    return [img, "--labels", labels]


@case("labels_rv_missing_at_es", "warn", ("RV",), category="labels")
def _(base, f):
    lab = acdc_convention(base.cine_labels)
    es = lab[base_es(base)]
    es[es == 1] = 0                          # ACDC 1 = RV
    img, labels = cine_nifti(base, f, labels=lab)
    return [img, "--labels", labels]


@case("kind_perfusion_given_for_a_cine_with_a_one_cycle_time_axis", "error",
      ("--kind perfusion was given", "one cardiac cycle", "drop --kind"), category="cli")
def _(base, f):
    """--kind perfusion on a cine NIfTI whose time axis spans one cycle (45 ms frames): refused
    for its frame interval with "give --dt", never naming the time axis that contradicts the
    flag (probe 36)."""
    f.mkdir(parents=True, exist_ok=True)
    img = nifti(f / "cine.nii.gz", to_xyzt(base.cine_images * 1000), _axial_affine(), np.float32,
                pixdim=[1, PIXEL_MM, PIXEL_MM, SLICE_MM, 0.045, 1, 1, 1], xyzt_units=2 | 8)   # mm, s
    return [img, "--kind", "perfusion"]


def _assert_no_frame_times_and_cine_truth(doc, base):
    assert doc["source"].get("frame_times_s") is None, doc["source"].get("frame_times_s")
    _assert_cine_truth(doc, base)


@case("nifti_time_step_is_a_repetition_time", "warn", ("3.2 ms", "not frame times"), category="volume",
      check=lambda doc, base: _assert_no_frame_times_and_cine_truth(doc, base))
def _(base, f):
    """pixdim[4] 3.2 ms in seconds (the TR a converter stored): not a frame interval, so the kind
    check ignored it, but results.json listed frames 3 ms apart and the report drew the cycle
    over 61 ms (probe 36)."""
    f.mkdir(parents=True, exist_ok=True)
    img = nifti(f / "cine.nii.gz", to_xyzt(base.cine_images * 1000), _axial_affine(), np.float32,
                pixdim=[1, PIXEL_MM, PIXEL_MM, SLICE_MM, 0.0032, 1, 1, 1], xyzt_units=2 | 8)   # mm, s
    lab = nifti(f / "labels.nii.gz", to_xyzt(acdc_convention(base.cine_labels)), _axial_affine(), np.uint8)
    return [img, "--labels", lab]


def _cine_with_time_step(base, f, step):
    f.mkdir(parents=True, exist_ok=True)
    img = nifti(f / "cine.nii.gz", to_xyzt(base.cine_images * 1000), _axial_affine(), np.float32,
                pixdim=[1, PIXEL_MM, PIXEL_MM, SLICE_MM, step, 1, 1, 1], xyzt_units=2 | 8)   # mm, s
    lab = nifti(f / "labels.nii.gz", to_xyzt(acdc_convention(base.cine_labels)), _axial_affine(), np.uint8)
    return [img, "--labels", lab]


@case("nifti_time_step_negative", "warn", ("time step is -0.045", "not used as frame times"), category="volume",
      check=lambda doc, base: _assert_no_frame_times_and_cine_truth(doc, base))
def _(base, f):
    """pixdim[4] -45 ms (a writer that negated it): the cine was read without frame times and
    nothing said so."""
    return _cine_with_time_step(base, f, -0.045)


@case("nifti_time_step_not_a_number", "warn", ("time step is nan", "not used as frame times"), category="volume",
      check=lambda doc, base: _assert_no_frame_times_and_cine_truth(doc, base))
def _(base, f):
    """pixdim[4] NaN: read without frame times, unsaid."""
    return _cine_with_time_step(base, f, float("nan"))


@case("nifti_time_step_infinite", "warn", ("time step is inf", "not used as frame times"), category="volume",
      check=lambda doc, base: _assert_no_frame_times_and_cine_truth(doc, base))
def _(base, f):
    """pixdim[4] infinite: frame times [nan, inf, ...] were kept beside the warning that they
    were not used (helper-85's review)."""
    return _cine_with_time_step(base, f, float("inf"))


@case("nifti_sizes_in_metres_as_its_header_says", "warn", ("in meters", "converted to mm"), category="volume",
      check=lambda doc, base: _assert_cine_truth(doc, base))
def _(base, f):
    """A NIfTI whose xyzt_units declare metres (pixdim 0.0016): refused as a spacing outside
    0.1-50 mm, though ITK and Slicer scale by the declared unit (probe 36)."""
    f.mkdir(parents=True, exist_ok=True)
    metres = _axial_affine().copy()
    metres[:3, :] /= 1000.0
    img = nifti(f / "cine.nii.gz", to_xyzt(base.cine_images * 1000), metres, np.float32, xyzt_units=1 | 8)   # m, s
    lab = nifti(f / "labels.nii.gz", to_xyzt(acdc_convention(base.cine_labels)), _axial_affine(), np.uint8)
    return [img, "--labels", lab]


@case("density_implausible", "error", ("--density",), named=lambda f: "--density", category="cli")
def _(base, f):
    img, lab = cine_nifti(base, f)
    return [img, "--labels", lab, "--density", 10.5]


def _seq_nrrd(base, f, encoding):
    import nrrd

    f.mkdir(parents=True, exist_ok=True)
    header = {"space": "right-anterior-superior", "kinds": ["list", "domain", "domain", "domain"],
              "space directions": np.array([[np.nan] * 3, [-PIXEL_MM, 0, 0], [0, -PIXEL_MM, 0], [0, 0, SLICE_MM]]),
              "space origin": [0.0, 0.0, 0.0], "encoding": encoding}
    path = f / "cine.seq.nrrd"
    nrrd.write(str(path), (base.cine_images * 1000).transpose(0, 3, 2, 1).astype(np.float32), header)
    return path


@case("seq_nrrd_raw_data_cut", "error", ("truncated", "bytes of image data its header describes"),
      named=lambda f: f / "cine.seq.nrrd", category="volume")
def _(base, f):
    """A .seq.nrrd cut a third short: "Size of the data does not equal the product of all the
    dimensions: 196608-131022=65586" (probe 57)."""
    path = _seq_nrrd(base, f, "raw")
    raw = path.read_bytes()
    path.write_bytes(raw[:2 * len(raw) // 3])
    return [path]


@case("seq_nrrd_gzip_data_cut", "error", ("truncated", "gzip-compressed image data end early"),
      named=lambda f: f / "cine.seq.nrrd", category="volume")
def _(base, f):
    """Gzip-encoded data cut in half: "buffer size must be a multiple of element size" (probe 57)."""
    path = _seq_nrrd(base, f, "gzip")
    raw = path.read_bytes()
    path.write_bytes(raw[:len(raw) // 2])
    return [path]


@case("seq_nrrd_sizes_not_numbers", "error", ("header field 'sizes' holds 'six', not a number",),
      named=lambda f: f / "cine.seq.nrrd", category="volume")
def _(base, f):
    """'sizes: six ...': "could not convert string to float: 'six'", naming no field (probe 57)."""
    path = _seq_nrrd(base, f, "raw")
    raw = path.read_bytes()
    end = raw.index(b"\n\n")
    head = re.sub(rb"sizes: \d+", b"sizes: six", raw[:end])
    path.write_bytes(head + raw[end:])
    return [path]


@case("seq_nrrd_time_axis_first", "ok", category="volume", check=lambda doc, base: _assert_cine_truth(doc, base))
def _(base, f):
    import nrrd

    f.mkdir(parents=True, exist_ok=True)
    header = {"space": "right-anterior-superior", "kinds": ["list", "domain", "domain", "domain"],
              "space directions": np.array([[np.nan] * 3, [-PIXEL_MM, 0, 0], [0, -PIXEL_MM, 0], [0, 0, SLICE_MM]]),
              "space origin": [0.0, 0.0, 0.0]}
    nrrd.write(str(f / "cine.seq.nrrd"), (base.cine_images * 1000).transpose(0, 3, 2, 1).astype(np.float32), header)
    lab = nifti(f / "labels.nii.gz", to_xyzt(acdc_convention(base.cine_labels)), _axial_affine(), np.uint8)
    return [f / "cine.seq.nrrd", "--labels", lab]


def _assert_cine_truth_and_frames(doc, base):
    """The phantom's true EDV and its ED and ES frames (counted in time)."""
    _assert_cine_truth(doc, base)
    assert (doc["cine"]["ed_frame"], doc["cine"]["es_frame"]) == (base_ed(base), base_es(base)), doc["cine"]


@case("seq_nrrd_stored_backwards_with_labels_in_the_same_stored_order", "warn", ("out of time order", "image's time order"),
      category="volume", check=lambda doc, base: _assert_cine_truth_and_frames(doc, base))
def _(base, f):
    """A cine sequence stored last frame first, each frame with its time (ms), and its 4D label
    map (no times) in the same stored order: the images were sorted by time and the labels not,
    so each label frame lay over another image (ED 19, ES 12 for 0, 7 with QC pass; probe 36)."""
    import nrrd

    f.mkdir(parents=True, exist_ok=True)
    backwards = np.arange(N_FRAMES)[::-1]
    header = {"space": "right-anterior-superior", "kinds": ["list", "domain", "domain", "domain"],
              "space directions": np.array([[np.nan] * 3, [-PIXEL_MM, 0, 0], [0, -PIXEL_MM, 0], [0, 0, SLICE_MM]]),
              "space origin": [0.0, 0.0, 0.0], "labels": ["time", "", "", ""], "units": ["ms", "", "", ""],
              "axis 0 index type": "numeric", "axis 0 index values": " ".join(f"{45 * t:g}" for t in backwards)}
    nrrd.write(str(f / "cine.seq.nrrd"), (base.cine_images[backwards] * 1000).transpose(0, 3, 2, 1).astype(np.float32),
               header, custom_field_map={"axis 0 index type": "string", "axis 0 index values": "string"})
    lab = nifti(f / "labels.nii.gz", to_xyzt(acdc_convention(base.cine_labels[backwards])), _axial_affine(), np.uint8)
    return [f / "cine.seq.nrrd", "--labels", lab]


@case("seq_nrrd_times_in_milliseconds_without_a_unit", "warn", ("no unit", "milliseconds"), category="volume",
      check=lambda doc, base: _assert_no_frame_times_and_cine_truth(doc, base))
def _(base, f):
    """A cine sequence whose 'time' index values are milliseconds (0, 45, 90 ...) with no
    'units' field: read as 45 s frames, so a perfusion series, and refused as such (probe 36)."""
    import nrrd

    f.mkdir(parents=True, exist_ok=True)
    header = {"space": "right-anterior-superior", "kinds": ["list", "domain", "domain", "domain"],
              "space directions": np.array([[np.nan] * 3, [-PIXEL_MM, 0, 0], [0, -PIXEL_MM, 0], [0, 0, SLICE_MM]]),
              "space origin": [0.0, 0.0, 0.0], "labels": ["time", "", "", ""],
              "axis 0 index type": "numeric", "axis 0 index values": " ".join(f"{45 * t:g}" for t in range(N_FRAMES))}
    nrrd.write(str(f / "cine.seq.nrrd"), (base.cine_images * 1000).transpose(0, 3, 2, 1).astype(np.float32), header,
               custom_field_map={"axis 0 index type": "string", "axis 0 index values": "string"})
    lab = nifti(f / "labels.nii.gz", to_xyzt(acdc_convention(base.cine_labels)), _axial_affine(), np.uint8)
    return [f / "cine.seq.nrrd", "--labels", lab]


def _assert_cine_truth_and_45_ms_frames(doc, base):
    _assert_cine_truth(doc, base)
    np.testing.assert_allclose(doc["source"]["frame_times_s"], 0.045 * np.arange(N_FRAMES), atol=1e-9)


@case("nrrd_list_axis_with_a_zero_direction", "ok", category="volume", check=lambda doc, base: _assert_cine_truth(doc, base))
def _(base, f):
    """The list axis' space direction written as (0,0,0) instead of 'none': counted as a fourth
    spatial axis and refused, the zero vector never named (probe 36)."""
    import nrrd

    f.mkdir(parents=True, exist_ok=True)
    header = {"space": "right-anterior-superior", "kinds": ["domain", "domain", "domain", "list"],
              "space directions": np.array([[-PIXEL_MM, 0, 0], [0, -PIXEL_MM, 0], [0, 0, SLICE_MM], [0.0, 0.0, 0.0]]),
              "space origin": [0.0, 0.0, 0.0]}
    nrrd.write(str(f / "cine.seq.nrrd"), to_xyzt(base.cine_images * 1000).astype(np.float32), header)
    lab = nifti(f / "labels.nii.gz", to_xyzt(acdc_convention(base.cine_labels)), _axial_affine(), np.uint8)
    return [f / "cine.seq.nrrd", "--labels", lab]


@case("nrrd_space_time_rast", "ok", category="volume", check=lambda doc, base: _assert_cine_truth_and_45_ms_frames(doc, base))
def _(base, f):
    """NRRD's own 4D space 'right-anterior-superior-time', 4-number directions, the time step
    (45 ms) in the fourth and its unit in 'space units': refused as 'vectors of 3 numbers'
    (probe 36)."""
    import nrrd

    f.mkdir(parents=True, exist_ok=True)
    d = np.zeros((4, 4))
    d[:3, :3] = np.diag([-PIXEL_MM, -PIXEL_MM, SLICE_MM])
    d[3, 3] = 45.0
    header = {"space": "right-anterior-superior-time", "kinds": ["domain"] * 4, "space directions": d,
              "space origin": [0.0, 0.0, 0.0, 0.0], "space units": ["mm", "mm", "mm", "ms"]}
    nrrd.write(str(f / "cine.nrrd"), to_xyzt(base.cine_images * 1000).astype(np.float32), header)
    lab = nifti(f / "labels.nii.gz", to_xyzt(acdc_convention(base.cine_labels)), _axial_affine(), np.uint8)
    return [f / "cine.nrrd", "--labels", lab]


@case("folder_of_one_slice_4d_files_as_dcm2niix_writes", "error", ("one slice with a time axis", "not its frames"),
      category="volume", named=lambda f: f.name)
def _(base, f):
    """dcm2niix's output for a stack it could not join: one 4D file per slice. The folder was
    refused as 'give that file as the input', which then read one slice (probe 36)."""
    f.mkdir(parents=True, exist_ok=True)
    for k in range(3):
        affine = _axial_affine().copy()
        affine[:3, 3] += affine[:3, 2] * k
        nifti(f / f"cine_sax_{k + 1}.nii.gz", to_xyzt(base.cine_images[:, k:k + 1] * 1000), affine, np.float32)
    return [f]


def _raw_nrrd(path, data_tkji, spatial_field):
    """An NRRD written by hand (pynrrd refuses to write a NaN spacing): x y slice time, raw."""
    t, k, j, i = data_tkji.shape
    header = (f"NRRD0004\ntype: uint16\ndimension: 4\nsizes: {i} {j} {k} {t}\n{spatial_field}\n"
              "endian: little\nencoding: raw\n\n")
    path.write_bytes(header.encode() + np.ascontiguousarray(data_tkji.astype(np.uint16)).tobytes())
    return path


@case("nrrd_spacing_nan_on_a_spatial_axis", "error", ("spacings", "nan", "voxel size"), category="volume")
def _(base, f):
    """'spacings: nan 1.6 8 40': the nan read as 1 mm (EDV 72 for 115 mL, QC pass; probe 21)."""
    f.mkdir(parents=True, exist_ok=True)
    field = f"spacings: nan {PIXEL_MM} {SLICE_MM} 40\nkinds: domain domain domain list"
    img = _raw_nrrd(f / "cine.nrrd", base.cine_images * 1000, field)
    _raw_nrrd(f / "labels.nrrd", acdc_convention(base.cine_labels), field)
    return [img, "--labels", f / "labels.nrrd"]


@case("nrrd_space_direction_nan_on_a_spatial_axis", "error", ("space directions", "axis 2", "not numbers"), category="volume")
def _(base, f):
    """A NaN inside a slice axis' direction: said as 'expected 3 spatial axes', not the NaN."""
    f.mkdir(parents=True, exist_ok=True)
    field = (f"space: right-anterior-superior\nspace directions: ({PIXEL_MM},0,0) (0,{PIXEL_MM},0) (0,0,nan) none\n"
             "kinds: domain domain domain list\nspace origin: (0,0,0)")
    return [_raw_nrrd(f / "cine.nrrd", base.cine_images * 1000, field)]


@case("seq_nrrd_perfusion_frames_out_of_time_order_in_milliseconds", "warn", ("out of time order", "sorted"),
      category="volume", check=lambda doc, base: _assert_mbf_near_truth(doc, base, 0.06))
def _(base, f):
    """A perfusion .seq.nrrd whose frames are stored shuffled, each with its true time index in
    'milliseconds' (the unit spelt out): the frames were analysed in file order (refused for a
    0.25 s interval, or MBF 3.5 with --dt), and 'milliseconds' was taken for seconds."""
    import nrrd

    st = base.perf_study
    f.mkdir(parents=True, exist_ok=True)
    order = np.random.default_rng(0).permutation(st.n_frames)
    m = st.ijk_to_ras
    header = {"space": "right-anterior-superior", "kinds": ["list", "domain", "domain", "domain"],
              "space directions": np.vstack([np.full(3, np.nan), m[:3, 0], m[:3, 1], m[:3, 2]]),
              "space origin": m[:3, 3], "labels": ["time", "", "", ""], "units": ["milliseconds", "", "", ""],
              "axis 0 index type": "numeric",
              "axis 0 index values": " ".join(f"{1000 * t:g}" for t in st.frame_times_s[order])}
    images = (100 + 400 * np.maximum(st.images, 0))[order]
    nrrd.write(str(f / "perf.seq.nrrd"), images.transpose(0, 3, 2, 1).astype(np.float32), header,
               custom_field_map={"axis 0 index type": "string", "axis 0 index values": "string"})
    (f / "aif.csv").write_text("aif\n" + "\n".join(f"{100 + 400 * v:.3f}" for v in st.aif) + "\n")
    return [f / "perf.seq.nrrd", "--labels", base.perf_dir / "perfusion_labels.nii.gz", "--aif", f / "aif.csv"]


def _perfusion_seq_nrrd(base, f, index_axis, values, list_last=False):
    """The perfusion phantom as a .seq.nrrd whose time index values (``values``, one string) sit
    under the keys of axis ``index_axis``; the list axis first, or last with ``list_last``."""
    import nrrd

    st = base.perf_study
    f.mkdir(parents=True, exist_ok=True)
    m = st.ijk_to_ras
    spatial = [m[:3, 0], m[:3, 1], m[:3, 2]]
    data = (100 + 400 * np.maximum(st.images, 0)).transpose(0, 3, 2, 1).astype(np.float32)   # t, x, y, z
    if list_last:
        data = np.moveaxis(data, 0, 3)
    header = {"space": "right-anterior-superior", "kinds": ["domain"] * 3 + ["list"] if list_last else ["list"] + ["domain"] * 3,
              "space directions": np.vstack(spatial + [np.full(3, np.nan)] if list_last else [np.full(3, np.nan)] + spatial),
              "space origin": m[:3, 3], "labels": ["", "", "", "time"] if list_last else ["time", "", "", ""],
              f"axis {index_axis} index type": "numeric", f"axis {index_axis} index values": values}
    nrrd.write(str(f / "perf.seq.nrrd"), data, header, custom_field_map={f"axis {index_axis} index type": "string",
                                                                          f"axis {index_axis} index values": "string"})
    (f / "aif.csv").write_text("aif\n" + "\n".join(f"{100 + 400 * v:.3f}" for v in st.aif) + "\n")
    return [f / "perf.seq.nrrd", "--labels", base.perf_dir / "perfusion_labels.nii.gz", "--aif", f / "aif.csv"]


@case("seq_nrrd_perfusion_with_a_time_short_of_its_frames", "error", ("29 times for the 30 frames",), category="volume")
def _(base, f):
    """One time index value fewer than frames: the values were dropped without a word and the
    error said the file had no frame times (probe 36)."""
    times = base.perf_study.frame_times_s[:-1]
    return _perfusion_seq_nrrd(base, f, 0, " ".join(f"{t:g}" for t in times))


@case("seq_nrrd_perfusion_times_under_axis_0_keys_with_the_list_axis_last", "ok", category="volume",
      check=lambda doc, base: _assert_mbf_near_truth(doc, base, 0.06))
def _(base, f):
    """The index under 'axis 0 index values' while the list axis is the last, as Slicer's
    sequence reader accepts: the times were dropped (probe 36)."""
    return _perfusion_seq_nrrd(base, f, 0, " ".join(f"{t:g}" for t in base.perf_study.frame_times_s), list_last=True)


@case("dicom_rescale_slope_zero", "warn", ("RescaleSlope 0",), category="dicom")
def _(base, f):
    def zero(ds, k, t):
        ds.RescaleSlope, ds.RescaleIntercept = 0, 0
    d, labels = cine_dicom(base, f / "dicom", slices=range(3), frames=range(2), per_image=zero)
    return [d, "--labels", labels]


@case("dicom_monochrome1", "warn", ("MONOCHROME1",), category="dicom", check=lambda doc, base: _assert_cine_truth(doc, base))
def _(base, f):
    def inverted(ds, k, t):
        ds.PhotometricInterpretation = "MONOCHROME1"
    d, labels = cine_dicom(base, f / "dicom", per_image=inverted)
    return [d, "--labels", labels]


# --- ACDC Info.cfg ------------------------------------------------------------------------
@case("acdc_ed_equals_es", "error", ("ED", "ES", "same frame"), named=lambda f: f / "patient801" / "Info.cfg",
      category="acdc")
def _(base, f):
    return [acdc_folder(base, f / "patient801", "ED: 1\nES: 1\nNbFrame: 6\n", frames=(0,)), "--labels", "study"]


@case("acdc_ed_out_of_range", "error", ("ED", "40"), named=lambda f: f / "patient802", category="acdc")
def _(base, f):
    return [acdc_folder(base, f / "patient802", "ED: 40\nES: 2\nNbFrame: 6\n"), "--labels", "study"]


@case("acdc_ed_not_an_integer", "error", ("ED", "1.5"), named=lambda f: f / "patient803" / "Info.cfg", category="acdc")
def _(base, f):
    return [acdc_folder(base, f / "patient803", "ED: 1.5\nES: 2\nNbFrame: 6\n"), "--labels", "study"]


@case("acdc_ed_es_swapped", "warn", ("ED_ES_SWAPPED",), category="acdc")
def _(base, f):
    # frame01 = the phantom's ES, frame02 its ED, but Info.cfg says ED 1
    return [acdc_folder(base, f / "patient804", "ED: 1\nES: 2\nNbFrame: 6\n", frames=(base_es(base), base_ed(base))),
            "--labels", "study"]


@case("acdc_gt_interpolated_labels", "error", ("not usable", "not whole numbers", "nearest neighbour"),
      named=lambda f: f / "patient806", category="acdc")
def _(base, f):
    """_gt maps resampled with interpolation: rounded silently before (a --labels file was refused)."""
    folder = acdc_folder(base, f / "patient806", "ED: 1\nES: 2\nNbFrame: 6\n", frames=(base_ed(base), base_es(base)))
    from scipy import ndimage

    for n, t in ((1, base_ed(base)), (2, base_es(base))):
        lab = to_xyzt(acdc_convention(base.cine_labels[t:t + 1]))[..., 0].astype(np.float32)
        nifti(folder / f"patient806_frame{n:02d}_gt.nii.gz", ndimage.uniform_filter(lab, size=(3, 3, 1)), _axial_affine())
    return [folder, "--labels", "study"]


@case("acdc_gt_unknown_label_values", "warn", ("patient807_frame01_gt.nii.gz", "label values [5, 7]"), category="acdc",
      check=lambda doc, base: _assert_cine_truth(doc, base))
def _(base, f):
    """Values 5 and 7 in a _gt map: dropped with no word (a --labels file names them)."""
    folder = acdc_folder(base, f / "patient807", "ED: 1\nES: 2\nNbFrame: 6\n", frames=(base_ed(base), base_es(base)))
    lab = to_xyzt(acdc_convention(base.cine_labels[base_ed(base):base_ed(base) + 1]))[..., 0].astype(np.uint8)
    lab[:4, :4, 0], lab[-4:, -4:, 0] = 5, 7   # corners far from the heart
    nifti(folder / "patient807_frame01_gt.nii.gz", lab, _axial_affine(), np.uint8)
    return [folder, "--labels", "study"]


@case("acdc_folder_without_info_cfg", "error", ("label maps", "no Info.cfg", "ED: n"), named=lambda f: f / "patient808",
      category="acdc")
def _(base, f):
    """Its _gt maps were taken for frames: "frame number 1 twice ... keep one" (probe 21)."""
    folder = acdc_folder(base, f / "patient808", "", frames=(base_ed(base), base_es(base)))
    (folder / "Info.cfg").unlink()
    return [folder]


@case("acdc_folder_whose_info_cfg_is_a_folder", "error", ("label maps", "Info.cfg that is not a file",
                                                           "make its Info.cfg a text file"),
      named=lambda f: f / "patient809", category="acdc")
def _(base, f):
    """An Info.cfg that is a folder: told to "add its Info.cfg", which is there (probe 57)."""
    folder = acdc_folder(base, f / "patient809", "", frames=(base_ed(base), base_es(base)))
    (folder / "Info.cfg").unlink()
    (folder / "Info.cfg").mkdir()
    return [folder]


@case("cine_two_frames_not_named", "warn", ("2 frames and nothing names them ED and ES",), category="volume")
def _(base, f):
    """A 4D NIfTI of 2 frames that are not the cycle's ED and ES: ES was simply the other frame
    (EF 25 % for 57 %, QC pass; probe 21)."""
    img, lab = cine_nifti(base, f, images=base.cine_images[:2] * 1000, labels=acdc_convention(base.cine_labels[:2]))
    return [img, "--labels", lab]


def _info(base):
    return f"ED: 1\nES: 2\nNbFrame: 6\n", (base_ed(base), base_es(base))


@case("acdc_info_cfg_lower_case_keys", "ok", category="acdc", check=lambda doc, base: _assert_cine_truth(doc, base))
def _(base, f):
    """'ed: 1' by hand: "missing ED" before (probe 21)."""
    text, frames = _info(base)
    return [acdc_folder(base, f / "patient809", text.lower().replace("nbframe", "NbFrame"), frames=frames), "--labels", "study"]


@case("acdc_info_cfg_utf16", "ok", category="acdc", check=lambda doc, base: _assert_cine_truth(doc, base))
def _(base, f):
    """Saved as 'Unicode' (UTF-16 with its mark) by Notepad: "missing ED" before."""
    text, frames = _info(base)
    folder = acdc_folder(base, f / "patient810", text, frames=frames)
    (folder / "Info.cfg").write_bytes(text.encode("utf-16"))
    return [folder, "--labels", "study"]


@case("acdc_info_cfg_ed_twice", "error", ("ED is given twice",), named=lambda f: f / "patient811" / "Info.cfg", category="acdc")
def _(base, f):
    text, frames = _info(base)
    return [acdc_folder(base, f / "patient811", text + "ED: 2\n", frames=frames), "--labels", "study"]


@case("acdc_unpadded_frame_numbers", "ok", category="acdc", check=lambda doc, base: _assert_cine_truth(doc, base))
def _(base, f):
    """patient812_frame1.nii.gz and _frame1_gt: the images were read, their labels not found."""
    text, frames = _info(base)
    folder = acdc_folder(base, f / "patient812", text, frames=frames)
    for path in sorted(folder.glob("*_frame0*")):
        path.rename(path.with_name(path.name.replace("_frame0", "_frame")))
    return [folder, "--labels", "study"]


@case("acdc_root_folder_of_patients", "error", ("2 study folders", "cardiacaiseg batch"), named=lambda f: f / "training",
      category="acdc")
def _(base, f):
    text, frames = _info(base)
    for name in ("patient813", "patient814"):
        acdc_folder(base, f / "training" / name, text, frames=frames)
    return [f / "training"]


@case("acdc_info_cfg_with_equals_signs", "ok", category="acdc", check=lambda doc, base: _assert_cine_truth(doc, base))
def _(base, f):
    return [acdc_folder(base, f / "patient805", "ED = 1\nES = 2\nNbFrame = 6\n", frames=(base_ed(base), base_es(base))),
            "--labels", "study"]


def _acdc_with_4d(base, folder, ed, es):
    """An ACDC patient folder as the challenge ships it: the whole cycle (``_4d``), and images
    and expert labels of the ED and ES frames only (1-based ``ed``, ``es`` in Info.cfg)."""
    folder.mkdir(parents=True, exist_ok=True)
    nifti(folder / f"{folder.name}_4d.nii.gz", to_xyzt(base.cine_images * 1000), _axial_affine())
    for n in sorted({ed, es}):
        nifti(folder / f"{folder.name}_frame{n:02d}.nii.gz", to_xyzt(base.cine_images[n - 1:n] * 1000)[..., 0], _axial_affine())
        nifti(folder / f"{folder.name}_frame{n:02d}_gt.nii.gz", to_xyzt(acdc_convention(base.cine_labels[n - 1:n]))[..., 0],
              _axial_affine(), np.uint8)
    (folder / "Info.cfg").write_text(f"ED: {ed}\nES: {es}\nNbFrame: {base.cine_images.shape[0]}\n")
    return folder


@case("acdc_info_cfg_ed_es_off_the_cycle_with_4d", "warn", ("may not be ED and ES", "frames 1 and 3"), category="acdc")
def _(base, f):
    """Info.cfg names two diastolic frames (ED 5, ES 2) of a cycle whose largest and smallest LV
    are frames 1 and 3; only those two frames are labelled. EF 16 % for 57 % passed every range
    with nothing said: the images' own blood pool over the 4D file shows the cycle. A warning,
    not a QC flag: the curve is read from brightness (an inflow-weighted cine whose blood darkens
    in diastasis moves its minimum there)."""
    return [_acdc_with_4d(base, f / "patient806", 5, 2), "--labels", "study"]


@case("acdc_info_cfg_with_4d", "ok", category="acdc", check=lambda doc, base: _assert_cine_truth(doc, base))
def _(base, f):
    """The same layout with the right ED and ES: measured as the truth, nothing flagged."""
    ed, es = base_ed(base) + 1, base_es(base) + 1
    return [_acdc_with_4d(base, f / "patient807", ed, es), "--labels", "study"]


# --- perfusion ----------------------------------------------------------------------------
def _aif_values(base):
    """The phantom's AIF values as written in its aif.csv (under an 'aif' header)."""
    lines = (base.perf_dir / "aif.csv").read_text().split()
    return lines[1:] if lines[0] == "aif" else lines


@case("aif_time_column_disagrees_with_the_series", "error", ("time column", "not sampled on the series' frames"),
      named=lambda f: f / "aif.csv", category="perfusion")
def _(base, f):
    """A 'time,aif' file stepping 1 s against 0.5 s frames: the time column was read past (probe 21)."""
    f.mkdir(parents=True, exist_ok=True)
    values = _aif_values(base)
    (f / "aif.csv").write_text("time,aif\n" + "".join(f"{2 * i * base.perf_dt:g},{v}\n" for i, v in enumerate(values)))
    return perfusion_args(base, **{"--aif": f / "aif.csv"})


@case("aif_time_column_in_ms", "ok", category="perfusion", check=lambda doc, base: _assert_mbf_plausible(doc))
def _(base, f):
    """The same AIF with its times in ms under 'time_ms': agrees with the series, read as usual."""
    f.mkdir(parents=True, exist_ok=True)
    values = _aif_values(base)
    (f / "aif.csv").write_text("time_ms,aif\n" + "".join(f"{1000 * i * base.perf_dt:g},{v}\n" for i, v in enumerate(values)))
    return perfusion_args(base, **{"--aif": f / "aif.csv"})


@case("aif_csv_on_another_scale_than_the_images", "warn", ("AIF_DISAGREES_WITH_LV", "same blood"), category="perfusion",
      check=lambda doc, base: _assert_qc_review(doc))
def _(base, f):
    """An AIF file at twice the images' blood level (another tool's units, or images rescaled
    without it): MBF -50 % with QC "pass" (probe 52)."""
    f.mkdir(parents=True, exist_ok=True)
    values = np.asarray(_aif_values(base), float)
    base_level = float(np.median(values[:3]))
    (f / "aif.csv").write_text("aif\n" + "".join(f"{base_level + 2 * (v - base_level):.5f}\n" for v in values))
    return perfusion_args(base, **{"--aif": f / "aif.csv"})


@case("aif_csv_noisy", "warn", ("AIF_NOISY",), category="perfusion", check=lambda doc, base: _assert_qc_review(doc))
def _(base, f):
    """An AIF file read from a few noisy pixels (noise at 6 % of its peak): MBF 20-40 % off with
    QC "pass" (probe 52)."""
    f.mkdir(parents=True, exist_ok=True)
    values = np.asarray(_aif_values(base), float)
    noisy = values + np.random.default_rng(5).normal(0, 0.06 * (values.max() - np.median(values[:3])), values.size)
    (f / "aif.csv").write_text("aif\n" + "".join(f"{v:.5f}\n" for v in noisy))
    return perfusion_args(base, **{"--aif": f / "aif.csv"})


@case("perfusion_stress_and_rest_stacked_in_one_file", "error", ("two contrast boluses", "near frame 31", "--rest"),
      named=lambda f: f / "stress_rest.nii.gz", category="perfusion")
def _(base, f):
    """Stress then rest saved as one 4D NIfTI, the rest on the stress's leftover contrast (probe
    28): fitted across both, MBF 38 % low with QC pass; with no flags, as a user would run it."""
    import nibabel as nib

    f.mkdir(parents=True, exist_ok=True)
    im = nib.load(str(base.perf_dir / "perfusion.nii.gz"))
    data = np.asarray(im.dataobj, np.float32)
    both = nib.Nifti1Image(np.concatenate([data, 0.3 * data[..., -1:] + data], axis=3), im.affine)
    both.header["pixdim"][4] = base.perf_dt
    both.header.set_xyzt_units("mm", "sec")
    nib.save(both, str(f / "stress_rest.nii.gz"))
    return [f / "stress_rest.nii.gz"]


def _perfusion_nifti(base, path, data=None, step=None, unit="sec"):
    """The perfusion phantom as a 4D NIfTI with its time step ``step`` (default: its frame interval) in ``unit``."""
    import nibabel as nib

    path.parent.mkdir(parents=True, exist_ok=True)
    im = nib.load(str(base.perf_dir / "perfusion.nii.gz"))
    img = nib.Nifti1Image(np.asarray(im.dataobj, np.float32) if data is None else data, im.affine)
    img.header["pixdim"][4] = base.perf_dt if step is None else step
    img.header.set_xyzt_units("mm", unit)
    nib.save(img, str(path))
    return path


@case("perfusion_dcm2niix_repetition_time_as_time_step", "error", ("RepetitionTime", "perf.json", "--dt"),
      named=lambda f: f / "perf.nii.gz", category="perfusion")
def _(base, f):
    """dcm2niix writes the RepetitionTime as the NIfTI time step; a gated GE series stores the R-R
    interval there (0.5 s) though it was read every second beat: MBF +94 % with QC pass (probe 28)."""
    import nibabel as nib

    data = np.asarray(nib.load(str(base.perf_dir / "perfusion.nii.gz")).dataobj, np.float32)[..., ::2]
    img = _perfusion_nifti(base, f / "perf.nii.gz", data=data, step=base.perf_dt)
    (f / "perf.json").write_text(json.dumps({"Modality": "MR", "Manufacturer": "GE", "RepetitionTime": base.perf_dt,
                                             "ConversionSoftware": "dcm2niix"}))
    return [img]


@case("perfusion_sidecar_times_disagree_with_the_header", "warn", ("header's time step",), category="perfusion",
      check=lambda doc, base: _assert_mbf_near_truth(doc, base, 0.1))
def _(base, f):
    """The sidecar's VolumeTiming (the true times) used where the header's step differs: said (probe 28)."""
    img = _perfusion_nifti(base, f / "perf.nii.gz", step=1.6 * base.perf_dt)
    n = len(_aif_values(base))
    (f / "perf.json").write_text(json.dumps({"VolumeTiming": [round(i * base.perf_dt, 4) for i in range(n)]}))
    return [img]


def _itk_4d_nrrd(base, path):
    """The perfusion phantom as ITK's NRRD writer saves a 4D image: a 4D LPS space, 4-number
    space directions and origin, every axis 'domain', the time step in the 4th direction."""
    import nibabel as nib
    import nrrd

    path.parent.mkdir(parents=True, exist_ok=True)
    im = nib.load(str(base.perf_dir / "perfusion.nii.gz"))
    lps = np.diag([-1.0, -1.0, 1.0])
    directions = np.zeros((4, 4))
    directions[:3, :3] = (lps @ im.affine[:3, :3]).T
    directions[3, 3] = base.perf_dt
    nrrd.write(str(path), np.asarray(im.dataobj, np.float32),
               {"space dimension": 4, "kinds": ["domain"] * 4, "space directions": directions,
                "space origin": np.r_[lps @ im.affine[:3, 3], 0.0]})
    return path


@case("perfusion_itk_4d_nrrd_without_a_time_unit", "error", ("space dimension: 4", "no time unit", "--dt"),
      named=lambda f: f / "perf.nrrd", category="perfusion")
def _(base, f):
    """ITK/SimpleITK's 4D NRRD was refused as 'vectors of 3 numbers', --dt or not (probe 28): read
    now, its time step (unitless in ITK) asked for."""
    return [_itk_4d_nrrd(base, f / "perf.nrrd")]


@case("perfusion_itk_4d_nrrd_with_dt", "ok", category="perfusion", check=lambda doc, base: _assert_mbf_near_truth(doc, base, 0.1))
def _(base, f):
    return [_itk_4d_nrrd(base, f / "perf.nrrd"), "--dt", base.perf_dt]


@case("perfusion_gd_map_with_nan_background", "error", ("NaN", "every frame", "nan_to_num"),
      named=lambda f: f / "perf.nii.gz", category="perfusion")
def _(base, f):
    """A masked Gd map saved with NaN outside a circle: the error said only 'contains NaN' (probe 28)."""
    import nibabel as nib

    data = np.asarray(nib.load(str(base.perf_dir / "perfusion.nii.gz")).dataobj, np.float32).copy()
    x, y = np.mgrid[: data.shape[0], : data.shape[1]]
    data[np.hypot(x - data.shape[0] / 2, y - data.shape[1] / 2) > 0.4 * data.shape[0]] = np.nan
    return [_perfusion_nifti(base, f / "perf.nii.gz", data=data)]


@case("perfusion_nifti_5d_with_frames_on_the_5th_axis", "ok", category="perfusion",
      check=lambda doc, base: _assert_mbf_near_truth(doc, base, 0.1))
def _(base, f):
    """(x, y, z, 1, t), the time step in pixdim[5]: refused as 'expected a 2D, 3D or 4D image' (probe 28)."""
    import nibabel as nib

    f.mkdir(parents=True, exist_ok=True)
    im = nib.load(str(base.perf_dir / "perfusion.nii.gz"))
    img = nib.Nifti1Image(np.asarray(im.dataobj, np.float32)[:, :, :, None, :], im.affine)
    img.header["pixdim"][4], img.header["pixdim"][5] = 1.0, base.perf_dt
    img.header.set_xyzt_units("mm", "sec")
    nib.save(img, str(f / "perf.nii.gz"))
    return [f / "perf.nii.gz"]


@case("aif_header_only", "error", ("no values",), named=lambda f: f / "aif.csv", category="perfusion")
def _(base, f):
    f.mkdir(parents=True, exist_ok=True)
    (f / "aif.csv").write_text("aif\n")
    return perfusion_args(base, **{"--aif": f / "aif.csv"})


@case("aif_decimal_commas", "ok", category="perfusion", check=lambda doc, base: _assert_mbf_plausible(doc))
def _(base, f):
    f.mkdir(parents=True, exist_ok=True)
    (f / "aif.csv").write_text("aif\n" + "\n".join(f"{v:.4f}".replace(".", ",") for v in base.perf_study.aif) + "\n")
    return perfusion_args(base, **{"--aif": f / "aif.csv"})


@case("aif_decimal_commas_semicolon_columns", "ok", category="perfusion", check=lambda doc, base: _assert_mbf_plausible(doc))
def _(base, f):
    f.mkdir(parents=True, exist_ok=True)
    rows = [f"{t * base.perf_dt:.2f};{v:.4f}".replace(".", ",") for t, v in enumerate(base.perf_study.aif)]
    (f / "aif.csv").write_text("time;aif\n" + "\n".join(rows) + "\n")
    return perfusion_args(base, **{"--aif": f / "aif.csv"})


@case("aif_utf16_tab_separated", "ok", category="perfusion", check=lambda doc, base: _assert_mbf_plausible(doc))
def _(base, f):
    """Excel's "Unicode Text" export: UTF-16 with a byte-order mark, tab-separated. Its zero bytes
    read as "not a text file (binary data)" (probe 57)."""
    f.mkdir(parents=True, exist_ok=True)
    rows = [f"{t * base.perf_dt:.2f}\t{v:.4f}" for t, v in enumerate(base.perf_study.aif)]
    (f / "aif.txt").write_bytes(("time\taif\r\n" + "\r\n".join(rows) + "\r\n").encode("utf-16"))
    return perfusion_args(base, **{"--aif": f / "aif.txt"})


@case("aif_negative", "error", ("AIF", "negative"), named=lambda f: f / "aif.csv", category="perfusion")
def _(base, f):
    f.mkdir(parents=True, exist_ok=True)
    (f / "aif.csv").write_text("aif\n" + "\n".join(f"{-v:.4f}" for v in base.perf_study.aif) + "\n")
    return perfusion_args(base, **{"--aif": f / "aif.csv"})


@case("aif_constant_nonzero", "error", ("AIF",), named=lambda f: f / "aif.csv", category="perfusion")
def _(base, f):
    f.mkdir(parents=True, exist_ok=True)
    (f / "aif.csv").write_text("aif\n" + "\n".join("4.0" for _ in base.perf_study.aif) + "\n")
    return perfusion_args(base, **{"--aif": f / "aif.csv"})


@case("aif_one_value_short", "error", ("AIF", "29", "30"), named=lambda f: f / "aif.csv", category="perfusion")
def _(base, f):
    f.mkdir(parents=True, exist_ok=True)
    (f / "aif.csv").write_text("aif\n" + "\n".join(f"{v:.4f}" for v in base.perf_study.aif[:-1]) + "\n")
    return perfusion_args(base, **{"--aif": f / "aif.csv"})


@case("perfusion_images_all_zero", "error", ("no image data",), named=lambda f: f / "perfusion.nii.gz",
      category="perfusion")
def _(base, f):
    f.mkdir(parents=True, exist_ok=True)
    import nibabel as nib

    src = nib.load(str(base.perf_dir / "perfusion.nii.gz"))
    zero = nib.Nifti1Image(np.zeros(src.shape, np.float32), src.affine, src.header)
    nib.save(zero, str(f / "perfusion.nii.gz"))
    return perfusion_args(base, input=f / "perfusion.nii.gz")


def _perfusion_frames(base, f, n):
    import nibabel as nib

    f.mkdir(parents=True, exist_ok=True)
    src = nib.load(str(base.perf_dir / "perfusion.nii.gz"))
    data = np.asarray(src.dataobj)[..., :n]
    nib.save(nib.Nifti1Image(data, src.affine, src.header), str(f / "perfusion.nii.gz"))
    (f / "aif.csv").write_text("aif\n" + "\n".join(f"{v:.4f}" for v in base.perf_study.aif[:n]) + "\n")
    return perfusion_args(base, input=f / "perfusion.nii.gz", **{"--aif": f / "aif.csv"})


def _with_time_step(source, seconds, path):
    """``source`` (a 4D NIfTI) saved to ``path`` with the time step ``seconds``, unit seconds,
    as a writer that put something else than the frame interval there."""
    import nibabel as nib

    img = nib.load(str(source))
    header = img.header.copy()
    header["pixdim"][4] = seconds
    header.set_xyzt_units("mm", "sec")
    nib.save(nib.Nifti1Image(np.asarray(img.dataobj), img.affine, header), str(path))
    return path


@case("perfusion_nifti_itk_default_time_step", "error", ("exactly 1 s", "ITK", "--dt"),
      named=lambda f: f / "perfusion.nii.gz", category="perfusion")
def _(base, f):
    """A 4D perfusion NIfTI from an ITK-based writer (SimpleITK, Slicer) that did not know the
    timing: time step exactly 1 s, unit seconds. Read as the frame interval, the phantom's
    MBF came out at half its value with QC "pass"; the interval is asked for instead."""
    f.mkdir(parents=True, exist_ok=True)
    return [_with_time_step(base.perf_dir / "perfusion.nii.gz", 1.0, f / "perfusion.nii.gz")]


@case("perfusion_nifti_time_step_shorter_than_a_heartbeat", "error", ("0.2 s", "time step", "heartbeat", "--dt"),
      named=lambda f: f / "perfusion.nii.gz", category="perfusion")
def _(base, f):
    """A 4D perfusion NIfTI whose time step (0.2 s, unit seconds) is no frame interval: a
    per-slice acquisition time or a TR-like value a converter stored. Read as the interval it
    scaled MBF up 2.7-fold with QC "pass" (phantom: 6.6 instead of 2.4 mL/min/g); ECG-triggered
    frames are 0.3 s apart at least, so the interval is asked for."""
    f.mkdir(parents=True, exist_ok=True)
    return [_with_time_step(base.perf_dir / "perfusion.nii.gz", 0.2, f / "perfusion.nii.gz")]


@case("perfusion_metaimage_4d_time_spacing_without_unit", "error", ("4th ElementSpacing (0.5)", "without a unit", "--dt"),
      named=lambda f: f / "perfusion.mhd", command="analyze", category="perfusion")
def _(base, f):
    """A 4D MetaImage perfusion series: MetaIO gives the 4th ElementSpacing no unit (0.5 could be
    seconds, 500 milliseconds, 1 a placeholder), so the frame interval is asked for, and the
    request says why rather than "the file has no frame times"."""
    import nibabel as nib

    f.mkdir(parents=True, exist_ok=True)
    data = np.asarray(nib.load(str(base.perf_dir / "perfusion.nii.gz")).dataobj, np.float32)   # x y z t
    np.ascontiguousarray(np.transpose(data, (3, 2, 1, 0))).tofile(f / "perfusion.raw")
    (f / "perfusion.mhd").write_text(
        "ObjectType = Image\nNDims = 4\nDimSize = " + " ".join(str(n) for n in data.shape) + "\n"
        "ElementSpacing = 1.8 1.8 8 0.5\nOffset = 0 0 0 0\nElementType = MET_FLOAT\nElementDataFile = perfusion.raw\n")
    return [f / "perfusion.mhd", "--aif", base.perf_dir / "aif.csv"]


@case("perfusion_nifti_untimed_with_a_bright_chest_wall", "error", ("frame interval unknown", "first pass", "--dt"),
      named=lambda f: f / "perfusion.nii.gz", category="perfusion")
def _(base, f):
    """A 4D perfusion NIfTI with no time unit or step, whose brightest pixels are a chest wall
    near the coils (as bright before the bolus as after it): read as a 166-frame cine and
    refused for "no LV blood pool", as the real low-resolution AIF series were. The blood pools
    that brighten, RV then LV, say first pass, and the frame interval is asked for."""
    import nibabel as nib

    f.mkdir(parents=True, exist_ok=True)
    img = nib.load(str(base.perf_dir / "perfusion.nii.gz"))
    data = np.asarray(img.dataobj, np.float32).copy()
    data[:4] = 2.0 * data.max()            # the first columns of every slice and frame
    header = img.header.copy()
    header["pixdim"][4] = 0.0
    header.set_xyzt_units("mm", "unknown")
    nib.save(nib.Nifti1Image(data, img.affine, header), str(f / "perfusion.nii.gz"))
    return [f / "perfusion.nii.gz"]


@case("cine_nifti_itk_default_time_step", "warn", ("exactly 1 s",), category="volume",
      check=lambda doc, base: _assert_cine_truth(doc, base))
def _(base, f):
    """The same writer's 4D cine: 6 frames 'over 5 s' were taken for a first pass and refused
    for want of a bolus. The 1 s step is no timing: the cine is measured, with a note."""
    img, lab = cine_nifti(base, f)
    return [_with_time_step(img, 1.0, img), "--labels", lab]


@case("perfusion_nifti_time_axis_holds_the_tr", "error", ("3.1 ms", "not frame times", "--dt"), named=lambda f: f / "perfusion.nii.gz",
      category="perfusion")
def _(base, f):
    """A 4D perfusion NIfTI whose writer stored the repetition time (3.1 ms) as the time step:
    30 frames 'over 0.1 s' once read as a cine (EF 100 %, a warning among many). A step that
    short is no frame interval, so the first pass in the images decides the kind, and the
    missing frame interval is asked for."""
    f.mkdir(parents=True, exist_ok=True)
    return [_with_time_step(base.perf_dir / "perfusion.nii.gz", 0.0031, f / "perfusion.nii.gz")]


@case("perfusion_one_frame", "error", ("frame",), named=lambda f: f / "perfusion.nii.gz", category="perfusion")
def _(base, f):
    return _perfusion_frames(base, f, 1)


@case("perfusion_three_frames", "error", ("frames",), named=lambda f: f / "perfusion.nii.gz", category="perfusion")
def _(base, f):
    return _perfusion_frames(base, f, 3)


@case("perfusion_dicom_clock_crosses_midnight", "warn", ("cross midnight",), category="perfusion",
      check=lambda doc, base: _assert_mbf_plausible(doc))
def _(base, f):
    """Siemens-style perfusion (AcquisitionTime per dynamic) started 5 s before midnight: the
    frames after 00:00 must stay after the others, not sort first."""
    import pydicom

    from CardiacAISegLib.readers.dicom import _tm_seconds
    from dicom_factory import _tm

    _, paths = write_perfusion_series(f / "dicom", base.perf_study, vendor="siemens")
    for p in paths:
        ds = pydicom.dcmread(p)
        ds.AcquisitionTime = _tm((_tm_seconds(ds.AcquisitionTime) - 36000 + 86400 - 5) % 86400)
        ds.save_as(p)
    # the AIF in the images' units (the writer stores 100 + 400 x Gd)
    (f / "aif.csv").write_text("aif\n" + "\n".join(f"{100 + 400 * v:.3f}" for v in base.perf_study.aif) + "\n")
    return [f / "dicom", "--labels", base.perf_dir / "perfusion_labels.nii.gz", "--aif", f / "aif.csv"]


@case("perfusion_aif_csv_clipped_at_half_its_peak", "warn", ("AIF_CLIPPED", "over-estimated"), category="perfusion",
      check=lambda doc, base: _assert_qc_review(doc))
def _(base, f):
    """An AIF whose read-out saturated: flat at half its enhancement over 9 frames. Its area is
    too small, and MBF came out 3.33 for 2.63 mL/min/g with QC "pass"."""
    write_perfusion_series(f / "dicom", base.perf_study, vendor="siemens")
    signal = 100 + 400 * base.perf_study.aif
    clipped = np.minimum(signal, 100 + 0.5 * (signal.max() - 100))
    (f / "aif.csv").write_text("aif\n" + "\n".join(f"{v:.3f}" for v in clipped) + "\n")
    return [f / "dicom", "--labels", base.perf_dir / "perfusion_labels.nii.gz", "--aif", f / "aif.csv"]


@case("perfusion_dicom_stress_and_rest_each_one_series_per_slice", "error", ("--series stress --rest",),
      named=lambda f: f / "dicom", category="perfusion")
def _(base, f):
    """A Siemens exam export: stress and rest, each one series per slice, in one folder. The six
    slice series merged into one stack with every slice "acquired twice": the later rest series
    replaced stress, and rest's MBF was reported as stress with QC "pass"."""
    for role, uid, number, start in (("stress", "1.2.826.0.1.3680043.10.60", 10, 36000.0),
                                     ("rest", "1.2.826.0.1.3680043.10.70", 20, 37200.0)):
        write_perfusion_series(f / "dicom", base.perf_study, vendor="siemens", series_per_slice=True,
                               description=f"Perf_{role}", series=uid, start_number=number, start_s=start)
    return [f / "dicom", "--labels", base.perf_dir / "perfusion_labels.nii.gz"]


@case("aif_in_mmol_images_in_signal", "warn", ("AIF_BELOW_TISSUE",), category="perfusion")
def _(base, f):
    """DICOM perfusion in scanner signal (100 + 400 x Gd) with the phantom's AIF in mmol/L."""
    write_perfusion_series(f / "dicom", base.perf_study, vendor="ge")
    return [f / "dicom", "--labels", base.perf_dir / "perfusion_labels.nii.gz", "--aif", base.perf_dir / "aif.csv"]


@case("perfusion_dicom_frames_2_3_s_apart", "warn", ("AIF_COARSE_SAMPLING", "2.30 s"), category="perfusion")
def _(base, f):
    """Siemens-style perfusion with one dynamic every 2.3 s (29 over 66 s, as a series acquired
    every other heartbeat at a slow rate): the Fermi fit cannot pin MBF down from two or three
    samples of the bolus (10-35 % segment errors on the phantom), so the result is flagged."""
    from CardiacAISegLib.phantoms.phantom import write_phantom

    _, study, _ = write_phantom("perfusion", f / "phantom", seed=1, size=48, n_frames=29, dt=2.3, delay_s=1.0)
    write_perfusion_series(f / "dicom", study, vendor="siemens")
    (f / "aif.csv").write_text("aif\n" + "\n".join(f"{100 + 400 * v:.3f}" for v in study.aif) + "\n")
    return [f / "dicom", "--labels", f / "phantom" / "perfusion_labels.nii.gz", "--aif", f / "aif.csv"]


@case("perfusion_dicom_one_image_missing", "error", ("slice 1", "29 of 30", "nothing between"), named=lambda f: f / "dicom",
      category="perfusion")
def _(base, f):
    """Siemens-style perfusion with one image of the mid slice lost (a partial copy or PACS
    transfer): the error says which slice lacks a frame and where in time."""
    _, paths = write_perfusion_series(f / "dicom", base.perf_study, vendor="siemens")
    n_frames = base.perf_study.n_frames
    paths[n_frames + n_frames // 2].unlink()     # slice 1, a dynamic in the middle
    return [f / "dicom", "--labels", base.perf_dir / "perfusion_labels.nii.gz", "--aif", base.perf_dir / "aif.csv"]


@case("perfusion_dicom_one_image_missing_content_time", "error",
      ("slice 1", "29 of 30", "(ContentTime)", "leave the short slice's files out"), named=lambda f: f / "dicom",
      category="perfusion")
def _(base, f):
    """The same loss in a Philips-style series timed by ContentTime alone: the error named
    AcquisitionTime, a tag the files do not have, and offered no way to read the other slices
    (probe 33)."""
    _, paths = write_perfusion_series(f / "dicom", base.perf_study, vendor="philips")
    n_frames = base.perf_study.n_frames
    paths[n_frames + n_frames // 2].unlink()
    return [f / "dicom", "--labels", base.perf_dir / "perfusion_labels.nii.gz", "--aif", base.perf_dir / "aif.csv"]


@case("perfusion_dicom_one_dynamic_mistimed", "warn", ("frame times jump", "after the gap left out"),
      category="perfusion", check=lambda doc, base: _assert_mbf_near_truth(doc, base, 0.06))
def _(base, f):
    """GE-style perfusion (TriggerTime since the first dynamic) whose last dynamic is stamped
    ten minutes late: resampling would invent 1200 frames. It comes after the AIF's first pass,
    so the series ends before it, said (it was refused)."""
    import pydicom

    _, paths = write_perfusion_series(f / "dicom", base.perf_study, vendor="ge")
    last = max(float(pydicom.dcmread(p, stop_before_pixels=True).TriggerTime) for p in paths)
    for p in paths:
        ds = pydicom.dcmread(p)
        if float(ds.TriggerTime) == last:
            ds.TriggerTime = last + 600000.0
            ds.save_as(p)
    (f / "aif.csv").write_text("aif\n" + "\n".join(f"{100 + 400 * v:.3f}" for v in base.perf_study.aif) + "\n")
    return [f / "dicom", "--labels", base.perf_dir / "perfusion_labels.nii.gz", "--aif", f / "aif.csv"]


@case("perfusion_dicom_stress_and_rest_in_one_folder", "error", ("--series", "stress", "rest"),
      named=lambda f: f / "dicom", category="perfusion")
def _(base, f):
    """Stress and rest series exported into one folder: both cover every slice position, so
    neither is a 'repeat' of the other; the user must choose (MBF differs threefold)."""
    write_perfusion_series(f / "dicom", base.perf_study, vendor="ge", description="Perfusion stress",
                           series="1.2.826.0.1.3680043.10.7.1", start_number=10)
    write_perfusion_series(f / "dicom", base.perf_study, vendor="ge", description="Perfusion rest",
                           series="1.2.826.0.1.3680043.10.7.2", start_number=20)
    return [f / "dicom", "--labels", base.perf_dir / "perfusion_labels.nii.gz", "--aif", base.perf_dir / "aif.csv"]


@case("perfusion_dicom_proton_density_frames_first", "warn", ("proton-density", "frames 1-3"), category="perfusion",
      check=lambda doc, base: _assert_mbf_plausible(doc) or _assert_no_poor_fit(doc))
def _(base, f):
    """Siemens-style perfusion with three proton-density reference images first (FlipAngle 5,
    5x the pre-contrast signal), as quantitative protocols write them: left out, not averaged into
    the baseline."""
    write_perfusion_series(f / "dicom", base.perf_study, vendor="siemens", pd_frames=3)
    (f / "aif.csv").write_text("aif\n" + "\n".join(f"{100 + 400 * v:.3f}" for v in base.perf_study.aif) + "\n")
    return [f / "dicom", "--labels", base.perf_dir / "perfusion_labels.nii.gz", "--aif", f / "aif.csv"]


@case("perfusion_dicom_blank_dynamic_at_the_bolus_peak", "warn", ("left out", "blank on every slice", "dropped dynamic"),
      category="perfusion", check=lambda doc, base: _assert_mbf_near_truth(doc, base, 0.06) or _assert_no_poor_fit(doc))
def _(base, f):
    """GE perfusion whose dynamic at the AIF's peak is written as an all-zero image on every slice,
    as a dynamic lost by the scanner or the export looks. Fitted, it gave MBF 4.5 instead of 2.6
    with QC "pass": it is left out and named, and the fit uses the other frames' real times."""
    import pydicom

    _, paths = write_perfusion_series(f / "dicom", base.perf_study, vendor="ge")
    peak = int(np.argmax(base.perf_study.aif))
    n_t = base.perf_study.n_frames
    for i, path in enumerate(paths):
        if i % n_t == peak:
            ds = pydicom.dcmread(path)
            ds.PixelData = np.zeros((ds.Rows, ds.Columns), np.uint16).tobytes()
            ds.save_as(path)
    return [f / "dicom", "--labels", base.perf_dir / "perfusion_labels.nii.gz"]


@case("perfusion_dicom_t1_map_filed_in_the_series", "warn", ("derived image", "T1MAP", "left out"),
      category="perfusion", check=lambda doc, base: _assert_mbf_near_truth(doc, base, 0.06) or _assert_no_poor_fit(doc))
def _(base, f):
    """Siemens perfusion with one derived T1 map per slice filed under the same series UID, a
    second after the last dynamic (ImageType DERIVED\\PRIMARY\\T1MAP). Read as a 31st frame it
    gave MBF 17 without an AIF and, with the 30-value AIF, an error blaming the AIF file."""
    import copy

    import pydicom

    from CardiacAISegLib.readers.dicom import _tm_seconds
    from dicom_factory import _tm

    _, paths = write_perfusion_series(f / "dicom", base.perf_study, vendor="siemens")
    n_t = base.perf_study.n_frames
    for i, path in enumerate(paths):
        if i % n_t == n_t - 1:
            ds = pydicom.dcmread(path)
            t1 = copy.deepcopy(ds)
            t1.SOPInstanceUID = t1.file_meta.MediaStorageSOPInstanceUID = pydicom.uid.generate_uid()
            t1.ImageType = ["DERIVED", "PRIMARY", "T1MAP"]
            t1.InstanceNumber = 500 + i
            t1.AcquisitionTime = _tm(_tm_seconds(ds.AcquisitionTime) + 1.0)
            t1.PixelData = np.full((ds.Rows, ds.Columns), 1200, np.uint16).tobytes()
            t1.save_as(str(path).replace(".dcm", "_t1map.dcm"))
    (f / "aif.csv").write_text("aif\n" + "\n".join(f"{100 + 400 * v:.3f}" for v in base.perf_study.aif) + "\n")
    return [f / "dicom", "--labels", base.perf_dir / "perfusion_labels.nii.gz", "--aif", f / "aif.csv"]


@case("perfusion_dicom_philips_scale_slope_varies_per_dynamic", "warn", ("ScaleSlope", "floating-point"),
      category="perfusion", check=lambda doc, base: _assert_mbf_near_truth(doc, base, 0.06) or _assert_no_poor_fit(doc))
def _(base, f):
    """Philips perfusion whose private ScaleSlope (2005,xx0E) cycles 1, 1.5, 2 over the dynamics,
    the stored values scaled by it (RescaleSlope 1): displayed values of neighbouring dynamics
    are on different scales. Read as displayed, MBF was 3.15 instead of 2.63 with QC "pass"."""
    import pydicom

    _, paths = write_perfusion_series(f / "dicom", base.perf_study, vendor="philips")
    n_t = base.perf_study.n_frames
    for i, path in enumerate(paths):
        ds = pydicom.dcmread(path)
        scale = 1.0 + 0.5 * ((i % n_t) % 3)
        ds.PixelData = np.clip(np.rint(ds.pixel_array * scale), 0, 65535).astype(np.uint16).tobytes()
        ds.RescaleSlope, ds.RescaleIntercept = 1.0, 0.0
        block = ds.private_block(0x2005, "Philips MR Imaging DD 001", create=True)
        block.add_new(0x0E, "FL", scale)
        ds.save_as(path)
    (f / "aif.csv").write_text("aif\n" + "\n".join(f"{100 + 400 * v:.3f}" for v in base.perf_study.aif) + "\n")
    return [f / "dicom", "--labels", base.perf_dir / "perfusion_labels.nii.gz", "--aif", f / "aif.csv"]


def _perfusion_cut_before(base, first):
    """The perfusion phantom from frame ``first`` on (a series started late) and its AIF in the
    images' units."""
    import dataclasses

    st = base.perf_study
    times = st.frame_times_s[first:] - st.frame_times_s[first]
    return dataclasses.replace(st, images=st.images[first:], aif=st.aif[first:], frame_times_s=times, labels={})


@case("perfusion_dicom_starts_on_the_bolus_upslope", "warn", ("AIF_NO_BASELINE",), category="perfusion")
def _(base, f):
    """A series whose first frame is on the AIF's upslope, peak two frames later, with a given AIF:
    the AIF's first frames are its highest, so it was refused as 'falls instead of rising (is the
    sign flipped?)'. It is measured and flagged for its missing baseline, as without --aif."""
    peak = int(np.argmax(base.perf_study.aif))
    late = _perfusion_cut_before(base, peak - 2)
    write_perfusion_series(f / "dicom", late, vendor="ge")
    (f / "aif.csv").write_text("aif\n" + "\n".join(f"{100 + 400 * v:.3f}" for v in late.aif) + "\n")
    return [f / "dicom", "--labels", base.perf_dir / "perfusion_labels.nii.gz", "--aif", f / "aif.csv"]


@case("perfusion_dicom_starts_after_the_bolus_peak", "error", ("starts after the bolus peak", "no pre-contrast"),
      category="perfusion")
def _(base, f):
    """A series that begins after the AIF's peak: no baseline and no upslope to fit. It was
    refused as 'AIF is flat: no contrast bolus found'."""
    late = _perfusion_cut_before(base, int(np.argmax(base.perf_study.aif)))
    write_perfusion_series(f / "dicom", late, vendor="ge")
    (f / "aif.csv").write_text("aif\n" + "\n".join(f"{100 + 400 * v:.3f}" for v in late.aif) + "\n")
    return [f / "dicom", "--labels", base.perf_dir / "perfusion_labels.nii.gz", "--aif", f / "aif.csv"]


def _stress_and_rest_exam(base, f):
    """f/dicom: the perfusion phantom as a GE stress series and again as its rest (another
    baseline signal: identical images are refused as one series read twice), f/aif.csv in signal;
    returns the phantom's label map."""
    write_perfusion_series(f / "dicom", base.perf_study, vendor="ge", description="Perfusion stress",
                           series="1.2.826.0.1.3680043.10.7.1", start_number=10)
    write_perfusion_series(f / "dicom", base.perf_study, vendor="ge", description="Perfusion rest",
                           series="1.2.826.0.1.3680043.10.7.2", start_number=20, baseline=110.0)
    (f / "aif.csv").write_text("aif\n" + "\n".join(f"{100 + 400 * v:.3f}" for v in base.perf_study.aif) + "\n")
    return base.perf_dir / "perfusion_labels.nii.gz"


@case("perfusion_dicom_stress_and_rest_chosen_by_role", "ok", category="perfusion",
      check=lambda doc, base: _assert_mbf_plausible(doc) or _assert_mpr_one(doc))
def _(base, f):
    """The same exam folder with `--series stress --rest FOLDER`: each series found by the word
    in its description (both are the same phantom here, the rest on another baseline signal
    since identical images are refused as one series read twice, so the reserve is 1)."""
    labels = _stress_and_rest_exam(base, f)
    return [f / "dicom", "--series", "stress", "--labels", labels, "--aif", f / "aif.csv",
            "--rest", f / "dicom", "--rest-labels", labels, "--rest-aif", f / "aif.csv"]


@case("perfusion_rest_labels_without_myocardium", "error", ("analysing the rest series (--rest)",
                                                           "the label map has no myocardium"),
      named=lambda f: f / "dicom", category="perfusion")
def _(base, f):
    """Stress and rest in one exam, the rest's label map with no myocardium: the error read as if
    about the stress's labels; the rest's analysis names its series (and any advice its flags,
    --rest-labels; helper-85's review)."""
    import nibabel as nib

    labels = _stress_and_rest_exam(base, f)
    img = nib.load(str(labels))
    no_myo = np.where(np.asarray(img.dataobj) == 2, 0, np.asarray(img.dataobj)).astype(np.uint8)
    nib.save(nib.Nifti1Image(no_myo, img.affine), str(f / "rest_labels.nii.gz"))
    return [f / "dicom", "--series", "stress", "--labels", labels, "--aif", f / "aif.csv",
            "--rest", f / "dicom", "--rest-labels", f / "rest_labels.nii.gz", "--rest-aif", f / "aif.csv"]


@case("perfusion_rest_nifti_whose_time_step_is_a_repetition_time", "warn",
      ("rest series: analysed as perfusion (the rest series), though nifti time axis",), category="perfusion")
def _(base, f):
    """A rest NIfTI whose time step is a repetition time (30 ms: "one cardiac cycle"), its frame
    interval given with --rest-dt: the warning said it was "analysed as perfusion as requested
    (--kind)", a flag never given (the rest is read as perfusion by its role; helper-85's review)."""
    import nibabel as nib

    f.mkdir(parents=True, exist_ok=True)
    rest = _with_time_step(base.perf_dir / "perfusion.nii.gz", 0.03, f / "rest.nii.gz")
    img = nib.load(str(rest))   # other images than the stress's (one series twice is refused)
    nib.save(nib.Nifti1Image(np.asarray(img.dataobj) * 1.1, img.affine, img.header), str(rest))
    return perfusion_args(base, **{"--rest": rest, "--rest-labels": base.perf_dir / "perfusion_labels.nii.gz",
                                   "--rest-aif": base.perf_dir / "aif.csv", "--rest-dt": base.perf_dt})


@case("perfusion_rest_is_the_stress_series", "error", ("the rest series is the stress series itself", "MPR would be 1",
                                                     "give the rest acquisition (e.g. --series stress --rest FOLDER"),
      named=lambda f: f / "dicom", category="perfusion")
def _(base, f):
    """One series given as stress and rest (`--series stress --rest` on a folder whose one
    perfusion series is read both times): MPR and MPRI were exactly 1.00, QC pass (probe 20)."""
    write_perfusion_series(f / "dicom", base.perf_study, vendor="ge", description="Perfusion stress",
                           series="1.2.826.0.1.3680043.10.7.1", start_number=10)
    (f / "aif.csv").write_text("aif\n" + "\n".join(f"{100 + 400 * v:.3f}" for v in base.perf_study.aif) + "\n")
    labels = base.perf_dir / "perfusion_labels.nii.gz"
    return [f / "dicom", "--labels", labels, "--aif", f / "aif.csv",
            "--rest", f / "dicom", "--rest-labels", labels, "--rest-aif", f / "aif.csv"]


@case("perfusion_dicom_rest_of_another_patient", "error", ("PatientID 'P2'", "PatientID 'P1'", "one patient"),
      named=lambda f: f / "rest", category="perfusion")
def _(base, f):
    """--rest names another patient's rest series: the MPR would divide one patient's stress
    MBF by another's rest MBF."""
    import pydicom

    for role, pid in (("stress", "P1"), ("rest", "P2")):
        _, paths = write_perfusion_series(f / role, base.perf_study, vendor="ge", description=f"Perfusion {role}")
        for p in paths:
            ds = pydicom.dcmread(p)
            ds.PatientID = pid
            ds.save_as(p)
    (f / "aif.csv").write_text("aif\n" + "\n".join(f"{100 + 400 * v:.3f}" for v in base.perf_study.aif) + "\n")
    labels = base.perf_dir / "perfusion_labels.nii.gz"
    return [f / "stress", "--labels", labels, "--aif", f / "aif.csv", "--rest", f / "rest", "--rest-labels", labels,
            "--rest-aif", f / "aif.csv"]


@case("perfusion_dicom_siemens_export_with_moco_copy_and_aif_series", "warn", ("derived copy", "Perfusion_stress_MOCO"),
      category="perfusion", check=lambda doc, base: _assert_mbf_plausible(doc))
def _(base, f):
    """A Siemens perfusion export as the scanner writes it: the series, its motion-corrected
    copy (ImageType DERIVED\\PRIMARY\\M\\ND\\MOCO, same slices and frames) and the
    dual-sequence AIF series. No flags: the original is read with its AIF series, the copy is
    named as left out."""
    import pydicom

    from dicom_factory import write_aif_series

    write_perfusion_series(f / "dicom", base.perf_study, vendor="siemens", description="Perfusion_stress")
    _, copies = write_perfusion_series(f / "dicom", base.perf_study, vendor="siemens", description="Perfusion_stress_MOCO",
                                       series="1.2.826.0.1.3680043.10.9", start_number=3)
    for p in copies:
        ds = pydicom.dcmread(p)
        ds.ImageType = ["DERIVED", "PRIMARY", "M", "ND", "MOCO"]
        ds.save_as(p)
    write_aif_series(f / "dicom", base.perf_study)
    return [f / "dicom", "--labels", base.perf_dir / "perfusion_labels.nii.gz"]


def _siemens_inline_export(base, f):
    """A Siemens inline (Gadgetron) perfusion export: the series, its motion-corrected (MOCO) and
    surface-coil-corrected (SCC) copies, the dual-sequence AIF series and the MBF map the scanner
    computed (one image per slice, ImageType DERIVED\\PRIMARY\\M\\NONE\\PERFUSION_MAP)."""
    import pydicom

    from dicom_factory import write_aif_series

    write_perfusion_series(f / "dicom", base.perf_study, vendor="siemens", description="Perfusion_stress")
    for number, (name, kind) in enumerate((("MOCO", "MOCO"), ("SCC", "NORM")), start=3):
        _, copies = write_perfusion_series(f / "dicom", base.perf_study, vendor="siemens", description=f"Perfusion_stress_{name}",
                                           series=f"1.2.826.0.1.3680043.10.{number + 6}", start_number=number)
        for p in copies:
            ds = pydicom.dcmread(p)
            ds.ImageType = ["DERIVED", "PRIMARY", "M", "ND", kind]
            ds.save_as(p)
    write_aif_series(f / "dicom", base.perf_study)
    _, maps = write_perfusion_series(f / "map", base.perf_study, vendor="siemens", description="Perf_Flow_Map_stress",
                                     series="1.2.826.0.1.3680043.10.20", start_number=7)
    n_t = base.perf_study.n_frames
    for i, p in enumerate(maps):
        if i % n_t:
            continue
        ds = pydicom.dcmread(p)
        ds.ImageType = ["DERIVED", "PRIMARY", "M", "NONE", "PERFUSION_MAP"]
        ds.SeriesNumber = 1005
        ds.save_as(f / "dicom" / f"map_{i // n_t}.dcm")


@case("perfusion_dicom_siemens_inline_export_with_copies_and_an_mbf_map", "warn", ("derived image", "PERFUSION_MAP"),
      category="perfusion", check=lambda doc, base: _assert_mbf_near_truth(doc, base, 0.06))
def _(base, f):
    """The whole inline export in one folder: refused as "3 image series, choose one" while it
    listed five; now the original is read with its AIF series, the copies and the map named as
    left out."""
    _siemens_inline_export(base, f)
    return [f / "dicom", "--labels", base.perf_dir / "perfusion_labels.nii.gz"]


@case("perfusion_dicom_inline_mbf_map_chosen_with_series", "error", ("map the scanner computed", "PERFUSION_MAP"),
      named=lambda f: f / "dicom", category="perfusion")
def _(base, f):
    """The scanner's MBF map chosen by --series: it was segmented as a one-frame cine and ended in
    "no LV blood pool labelled at ED"."""
    _siemens_inline_export(base, f)
    return [f / "dicom", "--series", "1005"]


@case("perfusion_dicom_slice_tracking_moves_each_dynamic", "warn", ("slice tracking", "median position"),
      category="perfusion", check=lambda doc, base: _assert_mbf_plausible(doc))
def _(base, f):
    """Slice tracking (a navigator moves the slices with breathing): every dynamic's slices sit
    up to 0.6 mm off their nominal position along the normal. Read as the acquired slices, and
    the through-plane movement said, not refused as dozens of slices with a frame or two each."""
    import pydicom

    _, paths = write_perfusion_series(f / "dicom", base.perf_study, vendor="siemens")
    rng = np.random.default_rng(6)
    n_dyn = base.perf_study.images.shape[0]
    offsets = rng.uniform(-0.6, 0.6, n_dyn)
    for i, p in enumerate(paths):
        ds = pydicom.dcmread(p)
        iop = np.array([float(v) for v in ds.ImageOrientationPatient])
        normal = np.cross(iop[:3], iop[3:])
        ds.ImagePositionPatient = [round(float(v), 4) for v in np.array([float(v) for v in ds.ImagePositionPatient])
                                   + offsets[i % n_dyn] * normal]
        ds.save_as(p)
    return [f / "dicom", "--labels", base.perf_dir / "perfusion_labels.nii.gz"]


@case("perfusion_dicom_kind_cine_requested", "error", ("--kind",), named=lambda f: "--kind", category="perfusion")
def _(base, f):
    write_perfusion_series(f / "dicom", base.perf_study, vendor="ge")
    return [f / "dicom", "--kind", "cine"]


# --- CLI misuse ---------------------------------------------------------------------------
@case("out_is_the_input_frame_folder", "ok", category="cli", out=lambda f: f / "frames",
      check=lambda doc, base: _assert_cine_truth(doc, base))
def _(base, f):
    d = f / "frames"
    d.mkdir(parents=True)
    for t in range(N_FRAMES):
        nifti(d / f"frame{t:02d}.nii.gz", to_xyzt(base.cine_images[t:t + 1] * 1000)[..., 0], _axial_affine())
    labels = nifti(f / "labels.nii.gz", to_xyzt(acdc_convention(base.cine_labels)), _axial_affine(), np.uint8)
    return [d, "--labels", labels]


@case("out_inside_the_input_dicom_folder", "ok", category="cli", out=lambda f: f / "dicom" / "results",
      check=lambda doc, base: _assert_cine_truth(doc, base))
def _(base, f):
    d, labels = cine_dicom(base, f / "dicom")
    return [d, "--labels", labels]


@case("series_flag_for_a_nifti_file", "error", ("--series",), named=lambda f: "--series", category="cli")
def _(base, f):
    img, lab = cine_nifti(base, f)
    return [img, "--labels", lab, "--series", "3"]


@case("rest_flag_for_a_cine", "error", ("--rest", "perfusion"), named=lambda f: "--rest", category="cli")
def _(base, f):
    img, lab = cine_nifti(base, f)
    return [img, "--labels", lab, "--rest", img]


@case("rest_is_a_cine_dicom", "error", ("reading the rest series (--rest)", "no first-pass perfusion series",
                                        "give the rest perfusion acquisition"), named=lambda f: f / "cine", category="cli")
def _(base, f):
    """A perfusion study with a cine DICOM folder as its rest series: the error asked to 'drop
    --kind', a flag the user never gave (the rest is read as perfusion by its role; probe 60)."""
    d, _ = cine_dicom(base, f / "cine")
    return perfusion_args(base, **{"--rest": d})


@case("rest_is_a_cine_nifti_with_its_time_step", "error",
      ("reading the rest series (--rest)", "it is no first-pass perfusion series", "one cardiac cycle",
       "give the rest perfusion acquisition"), named=lambda f: f / "cine" / "cine.nii.gz", category="cli")
def _(base, f):
    """A perfusion study with a cine NIfTI (its 0.15 s time step in the header) as its rest
    series: refused for the frame interval "because --kind perfusion was given ... drop --kind",
    a flag the user never gave; the rest is perfusion by its role (probe 103)."""
    import nibabel as nib

    img, _ = cine_nifti(base, f / "cine")
    nii = nib.load(str(img))
    nii.header.set_xyzt_units("mm", "sec")
    zooms = list(nii.header.get_zooms())
    nii.header.set_zooms(tuple(zooms[:3]) + (0.15,))
    nib.save(nib.Nifti1Image(np.asarray(nii.dataobj), nii.affine, nii.header), str(img))
    return perfusion_args(base, **{"--rest": img})


@case("aif_flag_for_a_cine_acdc", "error", ("--aif",), named=lambda f: "--aif", category="cli")
def _(base, f):
    d = acdc_folder(base, f / "patient806", "ED: 1\nES: 2\n", frames=(base_ed(base), base_es(base)))
    (f / "aif.csv").write_text("aif\n1\n2\n")
    return [d, "--labels", "study", "--aif", f / "aif.csv"]


@case("frames_all_with_given_labels", "warn", ("--frames", "not used"), category="cli")
def _(base, f):
    d = acdc_folder(base, f / "patient807", "ED: 1\nES: 2\n", frames=(base_ed(base), base_es(base)))
    return [d, "--labels", "study", "--frames", "all"]


@case("frames_all_on_ed_es_only_acdc_with_the_network", "ok", category="cli",
      check=lambda doc, base: _assert_ed_es_from_info(doc))
def _(base, f):
    """--frames all where the folder holds ED and ES only: the network segments the two frames
    there are, ED/ES stay Info.cfg's (the one case here that runs a network)."""
    return [acdc_folder(base, f / "patient808", "ED: 1\nES: 2\nNbFrame: 6\n", frames=(base_ed(base), base_es(base)),
                        gt=False), "--frames", "all", "--model", "unet-light", "--device", "cpu"]


@case("seg_nrrd_with_default_segment_names", "warn", ("segment names", "Segment_1"), category="labels",
      check=lambda doc, base: _assert_cine_truth(doc, base))
def _(base, f):
    """A Slicer .seg.nrrd whose segments kept the default names: values read in the ACDC
    convention, with a warning that this is a guess."""
    import nrrd

    f.mkdir(parents=True, exist_ok=True)
    ed = base_ed(base)
    img = nifti(f / "ed.nii.gz", to_xyzt(base.cine_images[ed:ed + 1] * 1000)[..., 0], _axial_affine())   # ED only
    lab = acdc_convention(base.cine_labels[ed:ed + 1])[0]
    header = {"space": "right-anterior-superior", "kinds": ["domain"] * 3,
              "space directions": np.array([[-PIXEL_MM, 0, 0], [0, -PIXEL_MM, 0], [0, 0, SLICE_MM]]),
              "space origin": [0.0, 0.0, 0.0]}
    for n in range(3):
        header.update({f"Segment{n}_Name": f"Segment_{n + 1}", f"Segment{n}_LabelValue": str(n + 1),
                       f"Segment{n}_Layer": "0", f"Segment{n}_ID": f"Segment_{n + 1}"})
    nrrd.write(str(f / "ed.seg.nrrd"), lab.transpose(2, 1, 0).astype(np.uint8), header)
    return [img, "--labels", f / "ed.seg.nrrd"]


@case("model_of_the_wrong_task", "error", ("perfusion",), named=lambda f: _first_model("perfusion"), category="cli")
def _(base, f):
    img, _ = cine_nifti(base, f)
    return [img, "--model", _first_model("perfusion")]


@case("model_unknown", "error", ("no-such-net",), named=lambda f: "no-such-net", category="cli")
def _(base, f):
    img, _ = cine_nifti(base, f)
    return [img, "--model", "no-such-net"]


@case("model_given_with_labels", "warn", ("--model", "not used"), category="cli")
def _(base, f):
    img, lab = cine_nifti(base, f)
    return [img, "--labels", lab, "--model", _first_model("cine")]


@case("label_convention_with_study_labels", "warn", ("--label-convention ukbb not used",), category="cli",
      check=lambda doc, base: _assert_cine_truth(doc, base))
def _(base, f):
    """--label-convention with --labels study: the study's own labels are read in their format's
    convention, and the flag was ignored without a word (probe round 13)."""
    folder = acdc_folder(base, f / "patient001", "ED: 1\nES: 2\nNbFrame: 2\n")
    return [folder, "--labels", "study", "--label-convention", "ukbb"]


@case("aif_scaled_by_1000", "warn", ("MBF",), category="perfusion")
def _(base, f):
    f.mkdir(parents=True, exist_ok=True)
    (f / "aif.csv").write_text("aif\n" + "\n".join(f"{1000 * v:.4f}" for v in base.perf_study.aif) + "\n")
    return perfusion_args(base, **{"--aif": f / "aif.csv"})


@case("perfusion_labels_from_a_cine", "error", ("does not match",), named=lambda f: f / "cine_labels.nii.gz",
      category="perfusion")
def _(base, f):
    _, lab = cine_nifti(base, f)
    return perfusion_args(base, **{"--labels": lab})


@case("frames_all_on_perfusion_with_the_network", "warn", ("--frames all not used", "one mask from its key frames"),
      category="cli")
def _(base, f):
    """A cohort row's frames=all on a perfusion study was ignored without a word (probe 91)."""
    return perfusion_args(base, **{"--labels": None, "--frames": "all"})


@case("folder_of_one_image_and_its_labels", "ok", category="cli", check=lambda doc, base: _assert_cine_truth(doc, base))
def _(base, f):
    """The tool's own phantom folder (an image and its label map) given as the input: told to add an
    ACDC Info.cfg (probe 91), then to give the image file itself (probe 108); it is read as that
    image, and --labels study measures its label map."""
    cine_nifti(base, f / "study")
    return [f / "study", "--labels", "study"]


@case("dt_and_units_given_for_a_cine", "warn", ("--dt and --units not used",), category="cli")
def _(base, f):
    img, lab = cine_nifti(base, f)
    return [img, "--labels", lab, "--dt", 0.04, "--units", "signal"]


@case("rest_labels_without_rest", "error", ("--rest",), named=lambda f: "--rest-labels", category="cli")
def _(base, f):
    return perfusion_args(base, **{"--rest-labels": base.perf_dir / "perfusion_labels.nii.gz"})


@case("rest_series_is_a_cine", "error", ("cine.nii.gz",), category="perfusion")
def _(base, f):
    img, lab = cine_nifti(base, f)
    return perfusion_args(base, **{"--rest": img, "--rest-labels": lab, "--rest-aif": base.perf_dir / "aif.csv"})


@case("aif_binary_file", "error", ("not a text file",), named=lambda f: f / "aif.csv", category="perfusion")
def _(base, f):
    f.mkdir(parents=True, exist_ok=True)
    (f / "aif.csv").write_bytes(bytes(range(256)) * 4)
    return perfusion_args(base, **{"--aif": f / "aif.csv"})


@case("aif_latin1_header_and_bom", "ok", category="perfusion", check=lambda doc, base: _assert_mbf_plausible(doc))
def _(base, f):
    f.mkdir(parents=True, exist_ok=True)
    (f / "aif.csv").write_bytes("Gd (µmol/L x 1e-3)\n".encode("latin-1")
                                + "\n".join(f"{v:.4f}" for v in base.perf_study.aif).encode() + b"\n")
    return perfusion_args(base, **{"--aif": f / "aif.csv"})


# --- import-model misuse ------------------------------------------------------------------
def _card(f, weights_name="model.ts", **changes):
    card = {"name": "corpus-net", "title": "t", "task": "cine", "version": "1",
            "classes": ["background", "LV blood pool", "LV myocardium", "RV"],
            "input": {"pixel_mm": 1.25, "size_multiple": 1, "normalisation": "none"},
            "weights": {"file": weights_name, "format": "torchscript", "sha256": "0" * 64}, "licence": "test"}
    card.update(changes)
    return card


def _weights_and_card(f, card, signed=False):
    """model.ts (100 bytes) and card.json (``card``, any JSON) in ``f``; ``signed``: the card's
    sha256 is the file's, so only the flaw the case makes is wrong. Returns the import arguments."""
    f.mkdir(parents=True, exist_ok=True)
    (f / "model.ts").write_bytes(b"x" * 100)
    if signed:
        from CardiacAISegLib.models.registry import sha256_of

        card["weights"]["sha256"] = sha256_of(f / "model.ts")
    (f / "card.json").write_text(json.dumps(card))
    return [f / "model.ts", f / "card.json"]


@case("import_weights_missing", "error", ("not found",), named=lambda f: f / "model.ts", command="import-model",
      category="import")
def _(base, f):
    f.mkdir(parents=True, exist_ok=True)
    (f / "card.json").write_text(json.dumps(_card(f)))
    return [f / "model.ts", f / "card.json"]


@case("import_card_not_json", "error", ("JSON",), named=lambda f: f / "card.json", command="import-model",
      category="import")
def _(base, f):
    f.mkdir(parents=True, exist_ok=True)
    (f / "model.ts").write_bytes(b"x" * 100)
    (f / "card.json").write_text("name: corpus-net\ntask: cine\n")
    return [f / "model.ts", f / "card.json"]


@case("import_card_is_a_folder", "error", ("card",), named=lambda f: f / "cards", command="import-model",
      category="import")
def _(base, f):
    (f / "cards").mkdir(parents=True)
    (f / "model.ts").write_bytes(b"x" * 100)
    return [f / "model.ts", f / "cards"]


@case("import_weights_is_a_nifti", "error", ("model.nii.gz",), named=lambda f: f / "model.nii.gz",
      command="import-model", category="import")
def _(base, f):
    f.mkdir(parents=True, exist_ok=True)
    nifti(f / "model.nii.gz", np.zeros((4, 4, 4)), np.eye(4))
    from CardiacAISegLib.models.registry import sha256_of

    card = _card(f, "model.nii.gz")
    card["weights"]["sha256"] = sha256_of(f / "model.nii.gz")
    (f / "card.json").write_text(json.dumps(card))
    return [f / "model.nii.gz", f / "card.json"]


@case("import_card_is_a_json_list", "error", ("card",), named=lambda f: f / "card.json", command="import-model",
      category="import")
def _(base, f):
    return _weights_and_card(f, [_card(f)])


@case("import_card_classes_not_a_list", "error", ("classes",), named=lambda f: f / "card.json", command="import-model",
      category="import")
def _(base, f):
    return _weights_and_card(f, _card(f, classes="background,LV,MYO,RV"))


@case("import_card_input_missing", "error", ("input",), named=lambda f: f / "card.json", command="import-model",
      category="import")
def _(base, f):
    card = _card(f)
    del card["input"]
    return _weights_and_card(f, card)


@case("import_sha256_mismatch", "error", ("sha256",), named=lambda f: f / "model.ts", command="import-model",
      category="import")
def _(base, f):
    return _weights_and_card(f, _card(f))


@case("import_name_with_spaces", "error", ("name",), named=lambda f: f / "card.json", command="import-model",
      category="import")
def _(base, f):
    return _weights_and_card(f, _card(f, name="My Model"), signed=True)


@case("import_weights_file_in_card_escapes", "error", ("plain file name",), named=lambda f: f / "card.json",
      command="import-model", category="import")
def _(base, f):
    return _weights_and_card(f, _card(f, weights_name="../../escaped.ts"), signed=True)


@case("import_weights_is_a_folder", "error", ("weights",), named=lambda f: f / "weights", command="import-model",
      category="import")
def _(base, f):
    (f / "weights").mkdir(parents=True)
    (f / "card.json").write_text(json.dumps(_card(f)))
    return [f / "weights", f / "card.json"]


@case("import_card_unknown_task", "error", ("task",), named=lambda f: f / "card.json", command="import-model",
      category="import")
def _(base, f):
    return _weights_and_card(f, _card(f, task="segmentation"), signed=True)


# ---------------------------------------------------------------------------------- truths
def base_ed(base):
    v = [(base.cine_labels[t] == 1).sum() for t in range(N_FRAMES)]
    return int(np.argmax(v))


def base_es(base):
    v = [(base.cine_labels[t] == 1).sum() for t in range(N_FRAMES)]
    return int(np.argmin(v))


def _assert_cine_truth(doc, base):
    """LV EDV equals the voxel count of the phantom's ED mask times the voxel volume."""
    voxel_ml = PIXEL_MM * PIXEL_MM * SLICE_MM / 1000.0
    truth = float((base.cine_labels[base_ed(base)] == 1).sum()) * voxel_ml
    assert abs(doc["cine"]["lv_edv_ml"] - truth) <= 1e-6 * truth, (doc["cine"]["lv_edv_ml"], truth)


def _assert_ed_es_from_info(doc):
    c = doc["cine"]
    assert (c["ed_frame"], c["es_frame"]) == (0, 1), c
    assert c["lv_edv_ml"] > 0, c


def _assert_mbf_plausible(doc):
    g = doc["perfusion"]["global_mbf_ml_min_g"]
    assert 0.5 < g < 5.0, g


def _assert_mbf_near_truth(doc, base, tolerance):
    """Global MBF within ``tolerance`` (a fraction) of the phantom's mean segment MBF."""
    truth = json.loads((base.perf_dir / "truth.json").read_text())["truth"]["mbf_per_segment"]
    expected = float(np.mean(list(truth.values())))
    g = doc["perfusion"]["global_mbf_ml_min_g"]
    assert abs(g - expected) <= tolerance * expected, (g, expected)


def _assert_qc_review(doc):
    assert doc["qc"]["status"] == "review", doc["qc"]


def _assert_no_poor_fit(doc):
    codes = {flag["code"] for flag in doc["qc"]["flags"]}
    assert not codes & {"MBF_FIT_POOR", "MBF_AT_BOUND"}, codes


def _assert_mpr_one(doc):
    assert abs(doc["perfusion"]["mpr"]["global"] - 1.0) < 0.02, doc["perfusion"]["mpr"]["global"]


def _first_model(task):
    from CardiacAISegLib.models import registry

    names = registry.list_models(task)
    return names[0]["name"] if names and isinstance(names[0], dict) else (names[0] if names else f"no-{task}-model")


# ------------------------------------------------------------------------------ running
def _tree(folder):
    """{relative path: (mtime, size) or None for folders}; None when ``folder`` does not exist."""
    folder = Path(folder)
    if not folder.exists():
        return None
    out = {}
    for p in folder.rglob("*"):
        try:
            out[p.relative_to(folder).as_posix()] = (p.stat().st_mtime_ns, p.stat().st_size) if p.is_file() else None
        except OSError:
            pass
    return out


@dataclass
class Outcome:
    name: str
    rc: int
    err: str
    doc: Optional[dict]
    klass: str
    detail: str = ""


def run_case(c, base, folder, subprocess_run=False, models_dir=None):
    """Build and run one case; returns an Outcome (classified)."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    argv = [str(a) for a in c.build(base, folder)]
    out = c.out(folder) if c.out else folder / "out"
    watch = base.root.parent       # the tmp folder holding the base data and every case
    before = _tree(watch)
    out_before = _tree(out)
    cwd_before = set(os.listdir(os.getcwd()))   # a relative path gone wrong would write here
    cmd = [c.command, *argv] + (["--out", str(out), "--quiet"] if c.command == "analyze" else [])
    if subprocess_run:
        env = dict(os.environ)
        if models_dir:
            env["CARDIACAISEG_MODELS"] = str(models_dir)
        p = subprocess.run([sys.executable, "-m", "CardiacAISegLib.cli", *cmd], capture_output=True, text=True, env=env,
                           timeout=300)
        rc, err = p.returncode, p.stderr
    else:
        from CardiacAISegLib import cli

        buf_err, buf_out = io.StringIO(), io.StringIO()
        with contextlib.redirect_stderr(buf_err), contextlib.redirect_stdout(buf_out):
            try:
                rc = cli.main(cmd)
            except SystemExit as e:      # argparse
                rc = e.code if isinstance(e.code, int) else 2
            except BaseException as e:   # would be a traceback in the shell
                import traceback

                traceback.print_exc(file=buf_err)
                rc = 1
        err = buf_err.getvalue()
    doc = None
    if rc == 0 and (out / "results.json").is_file():
        try:
            doc = json.loads((out / "results.json").read_text())
        except ValueError:
            doc = None
    after = _tree(watch)
    outcome = classify(c, folder, out, rc, err, doc, before, after, out_before)
    new_in_cwd = set(os.listdir(os.getcwd())) - cwd_before
    if new_in_cwd and outcome.klass not in ("traceback",):
        outcome = Outcome(c.name, rc, err, doc, "outside_write", f"in {os.getcwd()}: {sorted(new_in_cwd)[:3]}")
    return outcome


def _outside_changes(before, after, folder, out, watch_root):
    """Paths under ``watch_root`` created, changed or removed by the run, outside ``out`` (the
    snapshot ``before`` is taken after the case built its input files)."""
    before, after = before or {}, after or {}
    changed = []
    for rel in sorted(set(before) | set(after)):
        if before.get(rel, "absent") == after.get(rel, "absent"):
            continue
        p = watch_root / rel
        try:
            p.relative_to(out)
            continue
        except ValueError:
            changed.append(rel)
    return changed


def classify(c, folder, out, rc, err, doc, before, after, out_before):
    name = c.name
    if "Traceback (most recent call last)" in err:
        return Outcome(name, rc, err, doc, "traceback", err.strip().splitlines()[-1] if err.strip() else "")
    outside = _outside_changes(before, after, folder, out, folder.parent)
    if outside:
        return Outcome(name, rc, err, doc, "outside_write", ", ".join(outside[:3]))
    lines = [ln for ln in err.splitlines() if ln.startswith("error:")]
    if rc not in (0, 2):
        what = "crash" if rc < 0 or rc == 1 else "error_exit_%d" % rc
        return Outcome(name, rc, err, doc, what, lines[0] if lines else err.strip()[-200:])
    if rc == 2:
        now = _tree(out)
        if now != out_before:
            return Outcome(name, rc, err, doc, "partial_output", f"{out}: {out_before} -> {str(now)[:200]}")
        if len(lines) != 1:
            return Outcome(name, rc, err, doc, "unclear_error", err.strip()[-200:])
        line = lines[0]
        named = c.named(folder) if c.named else None
        ok_named = named is None or str(named) in line
        ok_words = all(w.lower() in line.lower() for w in c.words) if c.expect == "error" else True
        vague = "cannot be read (" in line and "raised" in line       # the outer guard's safety net, not a reader message
        klass = "clear_error" if ok_named and ok_words and not vague else "unclear_error"
        return Outcome(name, rc, err, doc, klass, line[:300])
    # rc == 0
    if doc is None:
        return Outcome(name, rc, err, doc, "partial_output", "exit 0 without results.json")
    said = list(doc.get("warnings", [])) + [f["code"] for f in (doc.get("qc") or {}).get("flags", [])]
    said_text = " ".join(said)
    review = (doc.get("qc") or {}).get("status") == "review" or bool(doc.get("warnings"))
    if c.expect == "ok":
        if c.check is not None:
            try:
                c.check(doc, _BASE_FOR_CHECKS[0])
            except AssertionError as e:
                return Outcome(name, rc, err, doc, "silent_wrong" if not review else "warned_wrong", f"check failed: {e}")
        return Outcome(name, rc, err, doc, "ok", said_text[:200])
    if c.expect == "warn":
        if c.check is not None:
            try:
                c.check(doc, _BASE_FOR_CHECKS[0])
            except AssertionError as e:
                return Outcome(name, rc, err, doc, "warned_wrong", f"check failed: {e}")
        if all(w.lower() in said_text.lower() for w in c.words):
            return Outcome(name, rc, err, doc, "warned", said_text[:300])
        return Outcome(name, rc, err, doc, "warned_otherwise" if review else "silent_wrong",
                       f"expected {c.words} in {said_text[:300]}")
    # an error was due, the run measured instead
    return Outcome(name, rc, err, doc, "warned" if review else "silent_wrong", said_text[:300])


_BASE_FOR_CHECKS = [None]


def expected_class(c):
    return {"error": "clear_error", "warn": "warned", "ok": "ok"}[c.expect]


def run_all(root, names=None, subprocess_names=()):
    root = Path(root)
    base = make_base(root / "base")
    _BASE_FOR_CHECKS[0] = base
    models_dir = root / "user-models"
    os.environ["CARDIACAISEG_MODELS"] = str(models_dir)
    results = []
    for c in CASES:
        if names and c.name not in names:
            continue
        o = run_case(c, base, root / c.name, subprocess_run=c.name in subprocess_names, models_dir=models_dir)
        results.append((c, o))
    return results


def print_table(results, file=sys.stdout):
    from collections import Counter

    for c, o in results:
        mark = "" if o.klass == expected_class(c) else "   <-- expected " + expected_class(c)
        print(f"{c.name:44s} {o.klass:15s} rc={o.rc} {o.detail[:150]}{mark}", file=file)
    counts = Counter(o.klass for _, o in results)
    print("counts:", dict(sorted(counts.items())), file=file)
    print("as expected:", sum(o.klass == expected_class(c) for c, o in results), "of", len(results), file=file)


if __name__ == "__main__":
    import tempfile

    with tempfile.TemporaryDirectory() as tmp:
        only = set(sys.argv[1:]) or None
        print_table(run_all(tmp, only, subprocess_names={"dicom_all_zero_length_files", "nifti_infinite_values",
                                                         "aif_negative"}))
