"""ACDC patient folders: Info.cfg, patientNNN_frameXX.nii.gz (+ _gt), optional patientNNN_4d.nii.gz."""
import re
from pathlib import Path

import numpy as np

from ..errors import CardiacInputError
from ..study import CINE, Study
from .geometry_check import check_geometry, grid_difference, onto_image_grid
from .labelmap import label_values, labels_off_the_image
from .nifti import SPACING_LOST, load_nifti, nifti_spacing_lost, nifti_to_kji

_FRAME_RE = re.compile(r"^(?P<pid>patient\d+)_frame(?P<n>\d+)\.nii(\.gz)?$")


def is_acdc_folder(path):
    path = Path(path)
    return path.is_dir() and (path / "Info.cfg").is_file()


# Info.cfg key of this tool (ACDC's own files have none): the true positions of the slices along
# the stack's normal, written when they are uneven (a slice missing from the DICOM stack). A
# NIfTI keeps one slice step, so without them a ground truth saved from a stack with a gap
# reloaded ~14 % low (Sunnybrook with one slice left out), with no warning.
SLICE_POSITIONS_KEY = "SlicePositionsMm"


def slice_positions_lines(study):
    """Info.cfg lines that keep ``study``'s slice positions when they are uneven, else none."""
    from .geometry_check import slice_gap_warnings

    positions = (study.provenance or {}).get("slice_positions_mm")
    if positions is None or len(positions) != study.n_slices or not slice_gap_warnings(positions):
        return []
    return [f"{SLICE_POSITIONS_KEY}: " + " ".join(f"{float(p):.4f}" for p in positions)]


def _slice_positions(info, path, n_slices):
    text = info.pop(SLICE_POSITIONS_KEY, None)
    if text is None:
        return None
    try:
        positions = [float(v) for v in str(text).split()]
    except ValueError:
        raise CardiacInputError(path, f"{SLICE_POSITIONS_KEY} {text!r} is not a list of numbers (mm)") from None
    if len(positions) != n_slices or not np.all(np.isfinite(positions)):
        raise CardiacInputError(path, f"{SLICE_POSITIONS_KEY} lists {len(positions)} positions for {n_slices} slices")
    return positions


def read_info_cfg(path):
    """Info.cfg as a dict; ED/ES/NbFrame as int, Height/Weight as float; absent keys are absent."""
    info = {}
    try:
        raw = Path(path).read_bytes()
    except OSError as e:
        raise CardiacInputError(path, f"cannot read Info.cfg ({e.strerror})")
    # utf-8-sig: Windows editors save a byte-order mark, which would hide the first key ("ED");
    # Notepad's "Unicode" is UTF-16 (read as "missing ED" before)
    encoding = "utf-16" if raw[:2] in (b"\xff\xfe", b"\xfe\xff") else "utf-8-sig"
    text = raw.decode(encoding, errors="replace")
    canonical = {"ed": "ED", "es": "ES", "nbframe": "NbFrame", "height": "Height", "weight": "Weight", "group": "Group"}
    for line in text.splitlines():
        sep = ":" if ":" in line else "=" if "=" in line else None   # "ED = 1" is a common hand edit
        if sep is None:
            continue
        key, value = (s.strip() for s in line.split(sep, 1))
        key = canonical.get(key.lower(), key)   # "ed: 1" / "Es: 12" by hand
        if key in ("ED", "ES") and key in info and str(info[key]) != value:
            raise CardiacInputError(path, f"{key} is given twice ({info[key]} and {value}): keep the right one")
        if key in ("ED", "ES", "NbFrame"):
            try:
                number = float(value)
            except ValueError:
                raise CardiacInputError(path, f"{key} is not a number: {value!r}; accepted: a whole frame number (1-based)")
            # int(float("1.5")) would silently pick frame 1
            if not number.is_integer() or number < 1:
                raise CardiacInputError(path, f"{key} {value!r} is not a frame number; accepted: a whole number from 1 "
                                              "(frames are counted from 1)")
            info[key] = int(number)
        elif key in ("Height", "Weight"):
            try:
                info[key] = float(value)
            except ValueError:
                pass  # tolerated: these are informative only
        else:
            info[key] = value
    for key in ("ED", "ES"):
        if key not in info:
            raise CardiacInputError(path, f"missing {key} frame number")
    if info["ED"] == info["ES"]:
        # EDV = ESV, EF 0 %: never a measurement
        raise CardiacInputError(path, f"ED and ES are the same frame ({info['ED']}); end-diastole and end-systole are "
                                      "different frames of the cycle")
    if "NbFrame" in info:
        for key in ("ED", "ES"):
            if info[key] > info["NbFrame"]:
                raise CardiacInputError(path, f"{key} frame {info[key]} is beyond NbFrame {info['NbFrame']}")
    return info


_FOUR_D_RE = re.compile(r"^(?P<pid>.+)_4d\.nii(\.gz)?$")
_PATIENT_RE = re.compile(r"^patient\d+$")


def patient_image_files(folder, patient):
    """The frame, ``_gt`` and ``_4d`` files of ``patient`` in an ACDC folder (the names
    ``_FRAME_RE`` and ``_FOUR_D_RE`` read, and their label maps)."""
    out = []
    for f in sorted(Path(folder).iterdir()):
        name = re.sub(r"_gt(?=\.nii)", "", f.name)
        m = _FRAME_RE.match(name) or _FOUR_D_RE.match(name)
        if m and m.group("pid") == patient and f.is_file():
            out.append(f)
    return out


def _patient_files(folder, warnings):
    """(the patient's name, {frame number: file}, [its _4d file]) of an ACDC folder. Files are
    keyed by frame number, so another patient's frame file copied in (patient004_frame02 beside
    patient002's frames) replaced the patient's own frame of that number, or added a frame:
    EF 8.6 % for 26.9 % with no word, or a whole row of the other patient's numbers (probe 91).
    The patient is the one the folder is named after, else the one patient whose files are
    there; another patient's files are left out and said, several with none named by the folder
    refused."""
    by_patient, unnamed = {}, []
    for f in sorted(folder.iterdir()):
        m = _FRAME_RE.match(f.name)
        if m:
            by_patient.setdefault(m.group("pid"), ({}, []))[0][int(m.group("n"))] = f
            continue
        m = _FOUR_D_RE.match(f.name)
        if m:
            # a 4D file named otherwise than patientNNN (scan_4d, patient001_cine_4d) names no
            # patient: it goes with the folder's (review of session 43)
            if _PATIENT_RE.match(m.group("pid")):
                by_patient.setdefault(m.group("pid"), ({}, []))[1].append(f)
            else:
                unnamed.append(f)
    if not by_patient:
        return folder.name, {}, unnamed
    if folder.name in by_patient:
        pid = folder.name
    elif len(by_patient) == 1:
        pid = next(iter(by_patient))   # a renamed or copied folder ("patient007 copy")
    else:
        listing = "; ".join(f"{p}: {', '.join(f.name for f in [*files.values(), *four][:3])}"
                            for p, (files, four) in sorted(by_patient.items()))
        raise CardiacInputError(folder, f"images of {len(by_patient)} patients in this ACDC folder ({listing}), none named "
                                        "like the folder: one folder holds one patient's frames; move the others out")
    others = sorted(f.name for p, (files, four) in by_patient.items() if p != pid for f in [*files.values(), *four])
    if others:
        warnings.append(f"{len(others)} file(s) of another patient left out ({', '.join(others[:4])}"
                        f"{', ...' if len(others) > 4 else ''}): this folder is {pid}'s")
    return pid, by_patient[pid][0], by_patient[pid][1] or unnamed


def load_acdc_patient(folder, frames="all"):
    """Read an ACDC patient folder into a cine Study.

    With a ``_4d`` file the whole cycle is loaded; otherwise the individual frame files
    (typically ED and ES only) become the frames, in frame-number order. Labels from ``_gt``
    files are attached (internal convention) to their frames.
    """
    folder = Path(folder)
    if not folder.is_dir():
        raise CardiacInputError(folder, "not a folder")
    info = read_info_cfg(folder / "Info.cfg")
    warnings = []
    pid, frame_files, four_d = _patient_files(folder, warnings)
    if not four_d and not frame_files:
        raise CardiacInputError(folder, "no patientNNN_frameXX.nii.gz or _4d.nii.gz image in this ACDC folder")

    if four_d:
        data, affine, header = load_nifti(four_d[0])
        if nifti_spacing_lost(header, data.ndim):
            raise CardiacInputError(four_d[0], SPACING_LOST)
        if data.ndim != 4:
            raise CardiacInputError(four_d[0], f"expected a 4D image (x, y, slices, frames), got shape {data.shape}")
        images = nifti_to_kji(data)
        frame_numbers = list(range(1, images.shape[0] + 1))
        files = [str(four_d[0])]
    else:
        frame_numbers = sorted(frame_files)
        vols, affine = [], None
        for n in frame_numbers:
            data, aff, header = load_nifti(frame_files[n])
            if data.ndim != 3:
                raise CardiacInputError(frame_files[n], f"expected a 3D frame, got shape {data.shape}")
            if vols and data.shape != vols[0].shape:
                raise CardiacInputError(frame_files[n], f"shape {data.shape} differs from frame {frame_numbers[0]} {vols[0].shape}")
            if nifti_spacing_lost(header, data.ndim):
                raise CardiacInputError(frame_files[n], SPACING_LOST)
            vols.append(data)
            if affine is None:
                affine = aff
            else:
                _same_geometry_as_first(frame_files[n], aff, frame_files[frame_numbers[0]], affine, warnings)
        images = np.stack([nifti_to_kji(v)[0] for v in vols])
        files = [str(frame_files[n]) for n in frame_numbers]

    index = {n: i for i, n in enumerate(frame_numbers)}
    for key in ("ED", "ES"):
        if info[key] not in index:
            raise CardiacInputError(folder / "Info.cfg", f"{key} frame {info[key]} has no image in the folder (frames: {frame_numbers})")

    labels, missing_gt, label_problems = {}, {}, {}
    set_to_background = set()   # label values of the _gt files that are no label (QC LABEL_VALUES_UNKNOWN)
    for n, i in index.items():
        # ACDC pads frame numbers to 2 digits; hand-made folders often do not (frame1_gt)
        # named by the images' patient, not the folder: a copied folder "patient007 copy" looked
        # for "patient007 copy_frame01_gt.nii.gz" beside patient007_frame01_gt.nii.gz (probe 91)
        candidates = [folder / f"{name}_frame{n:{width}}_gt.nii{gz}" for name in dict.fromkeys((pid, folder.name))
                      for width in ("02d", "d") for gz in (".gz", "")]
        gt = next((c for c in candidates if c.is_file()), candidates[0])
        if not gt.is_file():
            missing_gt[i] = f"{pid}_frame{n:02d}_gt.nii.gz not found"   # said if its labels are asked for
        if gt.is_file():
            lab, gt_affine, _ = load_nifti(gt)
            lab, note = onto_image_grid(nifti_to_kji(lab), gt_affine, affine, images.shape[1:])
            lab = lab[0]
            if note:
                warnings.append(f"{gt.name}: {note}")
            if lab.shape != images.shape[1:]:
                raise CardiacInputError(gt, f"label map shape {lab.shape[::-1]} does not match the image {images.shape[1:][::-1]}")
            # the checks a --labels file gets: interpolated (non-whole) labels were rounded, the
            # image saved as _gt measured, values 5-7 dropped, all without a word
            label_info = {"warnings": [], "convention": "acdc"}
            try:
                labels[i] = label_values(gt, lab, "acdc", label_info)
            except CardiacInputError as e:
                # not fatal to a network run of the images; refused where the labels are asked for
                missing_gt[i] = f"{gt.name} not usable: {e.problem}"
                warnings.append(f"{gt.name} not used: {e.problem}")
                continue
            warnings.extend(f"{gt.name}: {w}" for w in label_info["warnings"])
            if label_info.get("nothing_labelled"):
                warnings.append(f"{gt.name}: {label_info['nothing_labelled']}")
            # what a measurement may say and go on with, but a network must not learn from (the
            # LV coded 4 became background and training went on, exit 0; probe 66)
            problems = [f"label values {label_info['set_to_background']} are not labels in ACDC's convention"] \
                if label_info.get("set_to_background") else []
            set_to_background.update(label_info.get("set_to_background") or [])
            if label_info.get("nothing_labelled"):
                problems.append(label_info["nothing_labelled"])
            if problems:
                label_problems[i] = f"{gt.name}: " + "; ".join(problems)

    positions = _slice_positions(info, folder / "Info.cfg", images.shape[1])
    study = Study(
        images=images,
        ijk_to_ras=affine,
        kind=CINE,
        name=folder.name,
        source=str(folder),
        provenance={"reader": "acdc", "files": files, "info": info, "frame_numbers": frame_numbers, "warnings": warnings,
                    "missing_label_files": missing_gt, "label_problems": label_problems,
                    **({"labels_set_to_background": sorted(set_to_background)} if set_to_background else {}),
                    **({"slice_positions_mm": positions} if positions is not None else {})},
        ed_frame=index[info["ED"]],
        es_frame=index[info["ES"]],
        labels=labels,
        # The ACDC NIfTI affines are scaled identities: no real patient orientation.
        orientation_known=False,
    )
    off = labels_off_the_image(study, labels)
    if off:
        warnings.append(f"{folder.name}'s _gt label maps: {off}")
    return check_geometry(study, files[0])


def _same_geometry_as_first(path, affine, first_path, first_affine, warnings):
    """Frames of one patient share one voxel grid. A different voxel size cannot be reconciled
    (which header is right?), so it is refused; a moved origin or direction only warns, since
    the frames are used voxel by voxel."""
    sa, sb = np.linalg.norm(affine[:3, :3], axis=0), np.linalg.norm(first_affine[:3, :3], axis=0)
    if not np.allclose(sa, sb, rtol=1e-2):
        raise CardiacInputError(path, f"voxel size {np.round(sa, 4).tolist()} mm differs from {first_path.name} "
                                      f"({np.round(sb, 4).tolist()} mm): the ED and ES frames of one patient must share "
                                      "one geometry, and which header is right cannot be told; fix the wrong file's header")
    difference = grid_difference(affine, first_affine)
    if difference:
        warnings.append(f"{Path(path).name}: geometry differs from {first_path.name} ({difference}); frames used voxel by voxel")


def frame_phase_from_info_cfg(path):
    """{"phase": 'ED', 'ES' or 'frame N', "how"} of an ACDC frame file (``_FRAME_RE``) given alone,
    from the Info.cfg beside it; None when the file is no ACDC frame or Info.cfg cannot say."""
    path = Path(path)
    match = _FRAME_RE.match(path.name)
    info_path = path.parent / "Info.cfg"
    if not match or not info_path.is_file():
        return None
    try:
        info = read_info_cfg(info_path)
    except CardiacInputError:
        return None
    if "ED" not in info or "ES" not in info:
        return None
    number = int(match.group("n"))
    phase = "ED" if number == info["ED"] else "ES" if number == info["ES"] else f"frame {number}"
    return {"phase": phase, "how": f"frame {number} of the cycle; Info.cfg beside it: ED {info['ED']}, ES {info['ES']}"}
