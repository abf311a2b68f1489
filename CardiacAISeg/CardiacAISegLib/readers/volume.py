"""Volume files: NIfTI 3D/4D, NRRD (plain and Slicer ``.seq.nrrd``), MetaImage, folders of frames.

Every reader here returns arrays as ``(t, k, j, i)`` with an IJK->RAS matrix, like the rest of
the engine. NIfTI is RAS already; NRRD says its space; MetaImage is LPS (ITK), as is DICOM.
"""
import re
import zlib
from collections import Counter
from pathlib import Path

import numpy as np

from ..errors import CardiacInputError
from ..progress import as_progress
from ..study import CINE, Study
from .nifti import SPACING_LOST, diagnose_nifti, load_nifti, nifti_spacing_lost, nifti_to_kji, unused_form_disagrees
from .geometry_check import check_geometry, check_spacing_values, onto_grid_by_flips, refuse_swapped_axes
from .sniff import VOLUME_SUFFIXES, metaimage_fields, volume_suffix

LPS_TO_RAS = np.diag([-1.0, -1.0, 1.0])

# NRRD anatomical spaces -> sign of each axis relative to RAS
_NRRD_SPACES = {
    "right-anterior-superior": (1, 1, 1), "ras": (1, 1, 1),
    "left-anterior-superior": (-1, 1, 1), "las": (-1, 1, 1),
    "left-posterior-superior": (-1, -1, 1), "lps": (-1, -1, 1),
}
_SPATIAL_KINDS = {"domain", "space"}
# MetaIO element types; MET_LONG is 4 bytes in MetaIO, unlike C's long on Linux
_MET_TYPES = {
    "MET_UCHAR": "u1", "MET_CHAR": "i1", "MET_USHORT": "u2", "MET_SHORT": "i2",
    "MET_UINT": "u4", "MET_INT": "i4", "MET_ULONG": "u4", "MET_LONG": "i4",
    "MET_ULONG_LONG": "u8", "MET_LONG_LONG": "i8", "MET_FLOAT": "f4", "MET_DOUBLE": "f8",
}


# What `cardiacaiseg analyze` writes (analyze.py) and its hidden staging folders: a user who
# writes the outputs into the input folder must not get them read back as images next time.
OUTPUT_NAMES = ("results.json", "results.csv", "report.png", "scene.mrb")
OUTPUT_SUFFIXES = (".seg.nrrd",)


def is_ignored_input(path, root):
    """True for hidden files and folders (our ``.cardiacaiseg-*`` staging folders among them)
    and for our own output files, anywhere under ``root``."""
    path = Path(path)
    try:
        parts = path.relative_to(root).parts
    except ValueError:
        parts = (path.name,)
    if any(p.startswith(".") for p in parts):
        return True
    name = path.name.lower()
    return name in OUTPUT_NAMES or name.endswith(OUTPUT_SUFFIXES)


def natural_key(name):
    """Sort key so that 'time_2' < 'time_10'."""
    return [int(s) if s.isdigit() else s.lower() for s in re.split(r"(\d+)", str(name))]


def axis_aligned(direction):
    """True when a direction matrix has no obliquity: for cardiac short-axis data that means
    the writer had no real orientation (a default identity), not a true patient direction."""
    d = np.asarray(direction, float)
    return bool(np.all(np.abs(d - np.diag(np.diag(d))) < 1e-9))


def check_finite(path, array):
    """``array`` ((T, S, R, C) images) if every value is a number, else the error that says how many are not."""
    from .nifti import refuse_non_finite

    refuse_non_finite(path, array, time_axis=0)
    return array


# --- frame timing that is no timing ------------------------------------------------------
# ITK-based writers (SimpleITK, Slicer's NIfTI export of a 4D image, a sequence made from such
# a file) store a time step of exactly 1 s, unit seconds, when they do not know the timing. As
# frame times it halved the MBF of a 0.5 s perfusion series with QC "pass" and made a cine a
# 10-second "first pass". A real frame interval is hardly ever exactly 1.000 s.
ITK_DEFAULT_TIME_STEP_S = 1.0
# why such times are not used: provenance["frame_times_ignored"], where a missing --dt is asked for
PLACEHOLDER_TIME_REASON = "the time step is exactly 1 s, what ITK-based writers store when they do not know the frame timing"


def placeholder_time_step(times_s):
    """True for frame times 0, 1, 2, ... s exactly (``ITK_DEFAULT_TIME_STEP_S`` apart)."""
    t = np.asarray(times_s, float)
    return t.size > 1 and bool(np.all(np.abs(np.diff(t) - ITK_DEFAULT_TIME_STEP_S) < 1e-9))


def frame_times_not_used(provenance, reason):
    """Say in ``provenance`` why a file's frame times are not used: ``frame_times_ignored`` (where
    a missing --dt is asked for) and a warning; returns None, the times to use."""
    provenance["frame_times_ignored"] = reason
    provenance.setdefault("warnings", []).append(f"{reason}: not used as frame times (give --dt for a perfusion series)")
    return None


def ignore_placeholder_times(times_s, provenance):
    """``times_s``, or None when they are ``placeholder_time_step``'s, said in ``provenance``."""
    if times_s is None or not placeholder_time_step(times_s):
        return times_s
    return frame_times_not_used(provenance, PLACEHOLDER_TIME_REASON)


# Spatial units, in mm: NIfTI's xyzt_units (nibabel's names: meter, mm, micron) and NRRD's 'space
# units' (any spelling writers use; a micro sign as UTF-8 or Latin-1, read by _nrrd_space_units)
_SPACE_UNITS_MM = {**dict.fromkeys(("m", "meter", "meters", "metre", "metres"), 1000.0),
                   **dict.fromkeys(("cm", "centimeter", "centimeters", "centimetre", "centimetres"), 10.0),
                   **dict.fromkeys(("mm", "millimeter", "millimeters", "millimetre", "millimetres"), 1.0),
                   **dict.fromkeys(("um", "\u00b5m", "\u03bcm", "micron", "microns", "micrometer", "micrometers",
                                    "micrometre", "micrometres"), 1e-3)}
_SPACE_UNITS_ACCEPTED = "m, cm, mm, um (\u00b5m, micron)"
# how the warnings about a header's units begin (a frame folder says its first frame's once)
UNITS_CONVERTED = "the header gives its sizes in"
UNITS_KEPT_AS_MM = "the header says its sizes are in"


def _in_millimetres(affine, header, meta):
    """The affine of a NIfTI in mm when its header declares metres or micrometres (xyzt_units;
    refused as 'outside 0.1-50 mm' before; probe 36): ``_scaled_to_millimetres``' rule."""
    try:
        unit = header.get_xyzt_units()[0] if hasattr(header, "get_xyzt_units") else None
    except (KeyError, ValueError):
        return affine
    scale = _SPACE_UNITS_MM.get(unit)
    if scale is None:   # 'unknown' (code 0): mm, as ITK and Slicer read it
        return affine
    matrix = tuple(header.get_data_shape()[:2]) if hasattr(header, "get_data_shape") else None
    return _scaled_to_millimetres(affine, [scale] * 3, f"{unit}s", unit, "xyzt_units", meta,
                                  matrix if matrix is not None and len(matrix) == 2 else None)


def _scaled_to_millimetres(affine, scales, words, unit, field, meta, matrix=None):
    """``affine`` (its rows in the header's units, one scale to mm per patient axis) in mm when
    the declared units make the voxel size a plausible one (ITK and Slicer scale by the unit),
    said in a warning naming the header's ``field``. A header that declares a unit over a voxel
    size that is only plausible in mm (a writer's wrong unit code) keeps its numbers, said too;
    one plausible in neither is left to the spacing checks' refusal. ``matrix``: the image's
    (columns, rows), when known: a plausible pixel also keeps the field of view a scanner's."""
    from .geometry_check import IN_PLANE_RANGE_MM, MAX_FIELD_OF_VIEW_MM

    scales = np.asarray(scales, float)
    if np.all(scales == 1.0):
        return affine
    scaled = np.array(affine, float)
    scaled[:3, :] = np.diag(scales) @ scaled[:3, :]
    in_plane = np.linalg.norm(np.asarray(affine, float)[:3, :2], axis=0)
    in_plane_mm = np.linalg.norm(scaled[:3, :2], axis=0)
    lo, hi = IN_PLANE_RANGE_MM

    def plausible(values):
        # a cm header over mm numbers made 1.5 mm pixels 15 mm, still a pixel size, but a
        # 3,840 mm field of view (EDV 295,508 mL; review 1 of session 48)
        fov_ok = matrix is None or bool(np.all(values * np.asarray(matrix, float) <= MAX_FIELD_OF_VIEW_MM))
        return bool(np.all((values >= lo) & (values <= hi))) and fov_ok

    # NIfTI's metres or micrometres are never plausible both ways; NRRD's cm can be (0.16 cm
    # pixels are plausible as 0.16 mm too): the header's explicit unit decides then
    if plausible(in_plane_mm):
        meta.setdefault("warnings", []).append(f"{UNITS_CONVERTED} {words} ({field}): converted to mm "
                                               f"({in_plane[0]:.6g} {unit} pixels are {in_plane_mm[0]:.3g} mm)")
        return scaled
    if plausible(in_plane):
        meta.setdefault("warnings", []).append(f"{UNITS_KEPT_AS_MM} {words} ({field}), but its "
                                               f"{in_plane[0]:.3g}-unit pixels are only plausible in mm: used as mm")
    return affine


# --- a stack stored with its slice axis before its in-plane axes ---------------------------
# The engine reads slices along a file's third spatial axis. A stack saved from a (slices, rows,
# columns) array with the affine's columns permuted to match is a legal file that nibabel, ITK and
# Slicer place exactly; read as stored, each "slice" was a long-axis cut (128 of them: AHA wall
# thickness +83 %, QC review with four flags describing another fault; probe 105). A short-axis
# stack shows its slice axis by its geometry: one spacing at least SLICE_AXIS_SPACING_RATIO times
# both others, which are square pixels (within SQUARE_PIXEL_TOLERANCE). Anything less clear is
# read as stored: a guess at the slice axis would cut the stack the wrong way without a word.
SLICE_AXIS_SPACING_RATIO = 2.0
SQUARE_PIXEL_TOLERANCE = 0.1
# short-axis slices lie 5-10 mm apart (4 mm is thinner than any cine or perfusion stack): a 3D
# acquisition's coarse in-plane axis (1.25 x 2.6 mm pixels, 1.3 mm slices) was taken for the
# slice axis and the stack cut into 160 slices (review 3 of session 47)
MIN_STACK_SLICE_SPACING_MM = 4.0
SLICE_AXIS_REORDERED = "stored with the slice axis"


def slice_axis_last(images, affine, meta):
    """(images, affine) of a (T, S, R, C) volume whose file stores its slice axis before an
    in-plane axis, put in slice order: the same voxels with their axes permuted and the affine's
    columns permuted to match (``onto_grid_by_flips``, the reordering label maps get: exact, nothing
    resampled), said in ``meta``'s warnings. Unchanged when the slice axis is last already or not
    clear from the spacings."""
    m = np.asarray(affine, float)
    spacing = np.linalg.norm(m[:3, :3], axis=0)          # of the stored i, j, k axes
    slice_axis = int(np.argmax(spacing))
    if slice_axis == 2:
        return images, affine
    in_plane = [a for a in range(3) if a != slice_axis]
    pixel = spacing[in_plane]
    if spacing[slice_axis] < max(SLICE_AXIS_SPACING_RATIO * pixel.max(), MIN_STACK_SLICE_SPACING_MM) or \
            pixel.max() - pixel.min() > SQUARE_PIXEL_TOLERANCE * pixel.min():
        return images, affine
    order = in_plane + [slice_axis]                      # the in-plane axes keep their stored order
    reordered = m[:, order + [3]]
    sizes_ijk = images.shape[:0:-1]
    shape_src = tuple(sizes_ijk[a] for a in order)[::-1]
    moved = onto_grid_by_flips(images, m, reordered, shape_src)
    if moved is None:   # a permutation of the grid's own axes always maps: nothing to say otherwise
        return images, affine
    which = "first" if slice_axis == 0 else "second"
    meta.setdefault("warnings", []).append(
        f"{SLICE_AXIS_REORDERED} {which}: axes reordered, nothing resampled (the file's {'ijk'[slice_axis]} axis, "
        f"{sizes_ijk[slice_axis]} slices {spacing[slice_axis]:.3g} mm apart, runs across its {pixel[0]:.3g} x "
        f"{pixel[1]:.3g} mm pixels: it is the stack's slice axis; the affine's columns are permuted with the axes, so "
        "every voxel stays where the header places it)")
    return moved, reordered


# --- NIfTI ----------------------------------------------------------------------------------
def read_nifti(path):
    try:
        data, affine, header = load_nifti(path)
    except CardiacInputError as e:
        reason = diagnose_nifti(path) if Path(path).is_file() and "NaN" not in e.problem else None
        if reason is None:
            raise
        raise CardiacInputError(path, f"not a readable NIfTI file: {reason}") from e
    time_zoom = 3   # which header zoom is the time step
    while data.ndim > 4 and data.shape[-1] == 1:  # (x, y, z, t, 1) from some writers
        data = data[..., 0]
    if data.ndim == 5 and data.shape[3] == 1:
        # (x, y, z, 1, t): NIfTI's 5th axis holds the frames (writers that follow the standard's
        # "4th axis is time, 5th other" loosely); the empty 4th goes, the 5th's step is the time step
        data, time_zoom = data[:, :, :, 0, :], 4
    if data.ndim > 4 or data.ndim < 2:
        raise CardiacInputError(path, f"expected a 2D, 3D or 4D image, got shape {data.shape}")
    meta = {"format": "nifti", "orientation_known": True, "frame_times_s": None, "ndim": data.ndim,
            "spacing_lost": SPACING_LOST if nifti_spacing_lost(header, data.ndim) else None}
    affine = _in_millimetres(affine, header, meta)
    codes = (int(header.get("sform_code", 0)), int(header.get("qform_code", 0))) if hasattr(header, "get") else (0, 0)
    if codes == (0, 0) or axis_aligned(affine[:3, :3]):
        meta["orientation_known"] = False
    stale = unused_form_disagrees(header)
    if stale:   # said by QC (VOXEL_SIZE_DISAGREES): the numbers may be off by the ratio
        meta["voxel_size_check"] = stale
    if min(codes) > 0:
        differ = forms_orient_differently(header)
        if differ:
            meta.setdefault("warnings", []).append(
                f"the header's sform and qform orient the image differently ({differ}): the numbers here use the sform, "
                "as nibabel does; programs that read the qform show the image, and the segmentation saved with it, "
                "another way round; re-export the image with one geometry")
    if data.ndim == 4 and data.shape[3] > 1:
        dt = float(header.get_zooms()[time_zoom]) if len(header.get_zooms()) > time_zoom else 0.0
        try:
            unit = header.get_xyzt_units()[1] if hasattr(header, "get_xyzt_units") else "unknown"
        except (KeyError, ValueError):   # a unit code NIfTI does not define: no trusted time step
            unit = "unknown"
        scale = time_unit_seconds(unit)
        no_interval = None   # why the header's step is no frame interval, when it is none
        if scale and np.isfinite(dt) and dt > 0 and dt * scale > MAX_FRAME_INTERVAL_S:
            # no series steps this far; ITK's NIfTI writer labels any time step seconds, so a step
            # set in ms (a cine's 45, from DICOM trigger times) read as 45-s frames: refused as a
            # 855-s first pass, or kept as such frame times with --kind cine (probe 105)
            itk = (": ITK-based writers (SimpleITK, Slicer) label the time unit seconds whatever the step was in, so "
                   "it may be milliseconds" if scale == 1.0 else "")
            no_interval = (f"the NIfTI header's time step {dt:g} {unit} is no frame interval (a cine's frames lie "
                           f"15-60 ms apart, a first pass's {MIN_FRAME_INTERVAL_S:g}-{MAX_FRAME_INTERVAL_S:g} s){itk}")
            meta["unitless_time_step"] = dt   # a --dt that is it neither in s nor in ms is said
            meta["frame_times_s"] = frame_times_not_used(meta, no_interval)
        elif scale and np.isfinite(dt) and dt > 0:
            times = np.arange(data.shape[3]) * dt * scale
            # ITK writes a step of 1 in seconds where an image had none; 1000 written as
            # milliseconds is a measured 1-s interval (it was refused as the placeholder, probe 72)
            meta["frame_times_s"] = ignore_placeholder_times(times, meta) if scale == 1.0 else times
        elif np.isfinite(dt) and dt > 0 and dt != 1.0:
            # said where --dt is asked for: the file has a step, only not one in a known unit
            meta["frame_times_ignored"] = (f"the NIfTI header's time step {dt:g} has no time unit (xyzt_units "
                                           f"{unit!r}), so seconds and milliseconds cannot be told apart")
            meta["unitless_time_step"] = dt
        if not np.isfinite(dt) or dt < 0:
            # a writer's fault (a negated or undefined pixdim[4]): the cine was read without frame
            # times and nothing said so
            frame_times_not_used(meta, f"the NIfTI header's time step is {dt:g}")
        side = read_sidecar(path)
        sidecar = bids_volume_times(side, path, data.shape[3])
        header_step = float(np.median(np.diff(meta["frame_times_s"]))) if meta["frame_times_s"] is not None else None
        if sidecar is not None:
            # the acquisition's own times (irregular heartbeats) rather than one step in the header
            times, where = sidecar
            meta["frame_times_s"] = times
            meta["frame_times_from"] = where     # named by the frame-interval checks
            meta.pop("frame_times_ignored", None)
            # the header's placeholder (or impossible) step no longer matters: no --dt to ask for
            meta["warnings"] = [w for w in meta.get("warnings", []) if not w.startswith(PLACEHOLDER_TIME_REASON)
                                and not (no_interval and w.startswith(no_interval))]
            meta["warnings"].append(f"frame times from {where}")
            step = float(np.median(np.diff(times)))
            if header_step and abs(step - header_step) > 0.1 * header_step:
                meta["warnings"].append(f"{where} steps {step:.3g} s between frames where the NIfTI header's time "
                                        f"step is {header_step:.3g} s: the sidecar's times are used (give --dt if the "
                                        "header is right)")
        elif (unread := unread_sidecar_times(side, data.shape[3])):
            meta["frame_times_s"] = frame_times_not_used(meta, unread)
        elif header_step:
            tr = sidecar_repetition_time_s(side)
            if tr is not None and abs(tr - header_step) <= 0.01 * header_step:
                # dcm2niix writes the RepetitionTime as the NIfTI time step: the time between a
                # gated series' dynamics is not in the file (a TR of 0.5 s that was the R-R
                # interval, read as 0.5 s frames of a series read every second beat: MBF +94 %)
                meta["frame_times_s"] = None
                meta["frame_times_ignored"] = (f"the NIfTI header's time step {header_step:g} s is the RepetitionTime "
                                               f"of its sidecar {side[0].name} (dcm2niix writes the TR there), not the measured "
                                               "time between dynamics, and the sidecar lists no VolumeTiming")
    images = nifti_to_kji(data)
    if data.ndim == 4:
        # here for the perfusion reader, which reads a NIfTI itself; a 3D file's third axis may be
        # its frames there ([RO, E1, frames]), so a 3D one is put in slice order by read_volume_file
        images, affine = slice_axis_last(images, affine, meta)
    return images, affine, meta


def read_sidecar(path):
    """(sidecar path, its JSON object) of the BIDS / dcm2niix sidecar beside a NIfTI file
    (``x.nii.gz`` -> ``x.json``), or None when there is none; one that cannot be read is named
    in a CardiacInputError."""
    import json

    path = Path(path)
    stem = path.name[:-7] if path.name.endswith(".nii.gz") else path.stem
    side = path.with_name(stem + ".json")
    if not side.is_file():
        return None
    try:
        doc = json.loads(side.read_text())
    except (OSError, ValueError) as e:
        raise CardiacInputError(side, f"the JSON sidecar of {path.name} cannot be read ({e})") from None
    return side, doc if isinstance(doc, dict) else {}


def sidecar_repetition_time_s(sidecar):
    """The RepetitionTime (s) a ``read_sidecar`` result gives, or None."""
    try:
        value = float(sidecar[1].get("RepetitionTime")) if sidecar is not None else None
    except (TypeError, ValueError):
        return None
    return value if value is not None and np.isfinite(value) and value > 0 else None


# BIDS sidecar fields that give each volume's acquisition time in seconds: VolumeTiming (MRI),
# FrameTimesStart (PET, and some converters' dynamic series)
_BIDS_TIME_FIELDS = ("VolumeTiming", "FrameTimesStart")


def bids_volume_times(sidecar, path, n_frames):
    """(frame times from the first, in s; 'the sidecar NAME (FIELD)') from a ``read_sidecar``
    result of the NIfTI file ``path``, when it lists one time per frame; else None. A list of
    another length is named in a CardiacInputError: times that disagree with the image are no
    times to fit on."""
    if sidecar is None:
        return None
    side, doc = sidecar
    for field in _BIDS_TIME_FIELDS:
        values = doc.get(field)
        if values is None:
            continue
        try:
            t = np.asarray(values, float).ravel()
        except (TypeError, ValueError):
            raise CardiacInputError(side, f"{field} is not a list of numbers (seconds)") from None
        if t.size != n_frames:
            raise CardiacInputError(side, f"{field} lists {t.size} times but {Path(path).name} has {n_frames} frames")
        if not np.all(np.isfinite(t)) or np.any(np.diff(t) <= 0):
            raise CardiacInputError(side, f"{field} must rise from frame to frame (seconds)")
        return t - t[0], f"the sidecar {side.name} ({field})"
    return _clock_times(side, doc, n_frames)


def _clock_of_day_s(text):
    """Seconds since midnight of a DICOM TM ('HHMMSS.ffffff') or 'HH:MM:SS.ffffff' string, else None."""
    m = re.fullmatch(r"\s*(\d{2}):?(\d{2}):?(\d{2}(?:\.\d*)?)\s*", str(text))
    if not m:
        return None
    h, mi, sec = int(m.group(1)), int(m.group(2)), float(m.group(3))
    return h * 3600 + mi * 60 + sec if h < 24 and mi < 60 and sec < 61 else None


def _clock_times(side, doc, n_frames):
    """Frame times from a sidecar's per-frame AcquisitionTime list of clock times (as a DICOM
    export keeps each dynamic's: 'HH:MM:SS.ffffff' or DICOM TM), as ``bids_volume_times``
    returns them; None otherwise (``unread_sidecar_times`` says why a per-frame list is not read)."""
    t = _clocks(doc, n_frames)
    if t is None or not np.all(np.diff(t) > 0):
        return None
    return t - t[0], f"the sidecar {side.name} ({CLOCK_TIME_FIELD})"


# each dynamic's clock time, as a DICOM export may keep it in a sidecar (not a BIDS field;
# ContentTime is left alone: it stamps the reconstruction, which runs behind the acquisition)
CLOCK_TIME_FIELD = "AcquisitionTime"


def _clocks(doc, n_frames):
    """Seconds since midnight of each frame from the sidecar's per-frame AcquisitionTime list
    (the day's wrap undone), or None where it is no list of ``n_frames`` clock strings (a single
    string is dcm2niix's first volume's; another length is another thing's, e.g. slices')."""
    values = doc.get(CLOCK_TIME_FIELD)
    if not isinstance(values, list) or len(values) != n_frames or n_frames < 2:
        return None
    clocks = [_clock_of_day_s(v) if isinstance(v, str) else None for v in values]
    if any(c is None for c in clocks):
        return None
    t = np.asarray(clocks, float)
    return np.where(t < t[0] - 43200, t + 86400, t)   # a series across midnight


def unread_sidecar_times(sidecar, n_frames):
    """Why a sidecar's per-frame AcquisitionTime list is not read as frame times, or None: a list
    of numbers (seconds of the day, HHMMSS or milliseconds cannot be told apart), or clock times
    that repeat or fall (whole seconds at sub-second beats; one time for every frame is a
    cine's single acquisition, not read at all). The
    header's single step is then not used either: fitted on uneven beats it read MBF 20 % low
    with nothing said (probe 72). The reader does not refuse: --dt answers it."""
    if sidecar is None:
        return None
    side, doc = sidecar
    values = doc.get(CLOCK_TIME_FIELD)
    if not isinstance(values, list) or len(values) != n_frames or n_frames < 2:
        return None
    t = _clocks(doc, n_frames)
    if t is None:
        if all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in values):
            return (f"the sidecar {side.name} lists one {CLOCK_TIME_FIELD} per frame, but as numbers, not clock times "
                    f"('HH:MM:SS.ffffff'; e.g. {values[0]!r}: seconds, HHMMSS or milliseconds?), so the frames' times are "
                    "unknown; give them as VolumeTiming (seconds)")
        return None
    if np.ptp(t) > 0 and not np.all(np.diff(t) > 0):   # one time for all frames: a cine's, no frame times
        return (f"the sidecar {side.name} lists one {CLOCK_TIME_FIELD} per frame, but they repeat or fall (e.g. "
                f"{values[0]!r}, {values[1]!r}: a clock of whole seconds?), so the frames' times are unknown; give them "
                "as VolumeTiming (seconds)")
    return None


def forms_orient_differently(header):
    """A phrase when a NIfTI header's sform and qform direction columns differ by over 1 degree
    (a flip or a rotation between them), else None. Voxel sizes that differ are refused on load
    (``nifti._refuse_forms_that_disagree``); directions only move the image, not the numbers."""
    try:
        s, q = np.asarray(header.get_sform(), float)[:3, :3], np.asarray(header.get_qform(), float)[:3, :3]
    except Exception:
        return None
    if not (np.all(np.isfinite(s)) and np.all(np.isfinite(q))):
        return None
    ns, nq = np.linalg.norm(s, axis=0), np.linalg.norm(q, axis=0)
    if np.any(ns == 0) or np.any(nq == 0):
        return None
    cosines = np.sum((s / ns) * (q / nq), axis=0)
    axes = [name for name, c in zip("ijk", cosines) if c < np.cos(np.radians(1.0))]
    if not axes:
        return None
    worst = float(np.degrees(np.arccos(np.clip(cosines.min(), -1, 1))))
    return f"axis {', '.join(axes)} {'reversed' if worst > 179 else f'{worst:.0f} degrees apart'}"


# --- NRRD -----------------------------------------------------------------------------------
def _nrrd_frame_times(header, list_axis, n, meta):
    """(frame times in s, whether the file stored them in seconds, whether it named their unit)
    from the time axis's index values (or a Slicer MultiVolume's FrameLabels, in ms), else None.
    Index values that are there but cannot be used are said in ``meta`` (``frame_times_ignored``
    and a warning): dropped without a word, a perfusion series was refused as having "no frame
    times" (probe 36)."""
    values = header.get(f"axis {list_axis} index values")
    index_type = str(header.get(f"axis {list_axis} index type", ""))
    if values is None:
        # Slicer's sequence reader takes the index from the 'axis 0' keys whichever axis is the
        # list one (a spatial axis has no index values); other writers put them on another axis
        # than the list one (refused as "no frame times", probe 72)
        keyed = [a for a in range(4) if f"axis {a} index values" in header]
        if keyed:
            values, index_type = header[f"axis {keyed[0]} index values"], str(header.get(f"axis {keyed[0]} index type", ""))
    label = ""
    if header.get("labels"):
        label = str(header["labels"][list_axis]).lower()
    unit = ""
    if header.get("units"):
        unit = str(header["units"][list_axis]).lower()
    if values is None and "MultiVolume.FrameLabels" in header:
        # a MultiVolume's labels are trigger times in ms unless its units field names another
        multi_unit = str(header.get("MultiVolume.FrameIdentifyingDICOMTagUnits", "")).strip().lower()
        values, unit, label = (header["MultiVolume.FrameLabels"].replace(",", " "),
                               multi_unit if time_unit_seconds(multi_unit) else "ms", "time")
    # an axis labelled for time, or index values in a unit of time (a label "t" with "s" was
    # refused as "no frame times", probe 72)
    if values is None or not ("time" in label + " " + index_type.lower() or label == "t" or time_unit_seconds(unit)):
        return None

    def unusable(problem):
        return frame_times_not_used(meta, f"the sequence's time index values {problem}")

    words = str(values).split()
    try:
        t = np.array([float(v) for v in words])
    except ValueError:
        shown = " ".join(words[:3]) + (" ..." if len(words) > 3 else "")
        return unusable(f"('{shown}') are not plain numbers (a unit belongs in the 'units' field)")
    if t.size != n:
        return unusable(f"list {t.size} times for the {n} frames")
    scale = time_unit_seconds(unit or "s")   # Slicer writes no unit for seconds
    if scale is None:
        return unusable(f"have the unit {unit!r}, which is not one of time (s, ms)")
    return t * scale, scale == 1.0, bool(unit)


# time units as NIfTI (sec, msec, usec), Slicer sequences (s, ms) and other writers spell them
_TIME_UNITS = {"s": 1.0, "sec": 1.0, "second": 1.0, "seconds": 1.0, "ms": 1e-3, "msec": 1e-3, "millisecond": 1e-3,
               "milliseconds": 1e-3, "us": 1e-6, "usec": 1e-6, "microsecond": 1e-6, "microseconds": 1e-6}


# One frame per heartbeat or two: a shorter interval (a TR or a per-slice time stored as the time
# step) read as the frame interval scales MBF up by the same factor (phantom, 0.5 s frames read
# as 0.2 s: 6.6 instead of 2.4 mL/min/g, QC "pass"); sequence index values farther apart than the
# longest are not seconds. Here, where every reader of time axes sees them (readers/perfusion
# checks the interval with them).
MIN_FRAME_INTERVAL_S = 0.3
MAX_FRAME_INTERVAL_S = 5.0


def time_unit_seconds(unit):
    """Seconds per unit of a time unit's name, or None for a unit that is not one of time."""
    return _TIME_UNITS.get(str(unit).strip().lower())


# Numeric NRRD header fields, each of whose values must parse (pynrrd's error names the value
# only: "could not convert string to float: 'six'", probe 57).
_NRRD_NUMERIC_FIELDS = ("dimension", "sizes", "spacings", "thicknesses", "axis mins", "axis maxs", "byte skip",
                        "line skip", "space dimension")


_NRRD_TYPE_BYTES = {**dict.fromkeys(("signed char", "int8", "int8_t", "uchar", "unsigned char", "uint8", "uint8_t"), 1),
                    **dict.fromkeys(("short", "short int", "signed short", "signed short int", "int16", "int16_t", "ushort",
                                     "unsigned short", "unsigned short int", "uint16", "uint16_t"), 2),
                    **dict.fromkeys(("int", "signed int", "int32", "int32_t", "uint", "unsigned int", "uint32", "uint32_t",
                                     "float"), 4),
                    **dict.fromkeys(("longlong", "long long", "long long int", "signed long long", "signed long long int",
                                     "int64", "int64_t", "ulonglong", "unsigned long long", "unsigned long long int",
                                     "uint64", "uint64_t", "double"), 8)}


def _nrrd_problem(path):
    """A plain reason why a NRRD file does not read (a malformed numeric header field, image data
    shorter than the header describes, compressed data that do not decode), or None. pynrrd's
    own words ("buffer size must be a multiple of element size", "Size of the data does not equal
    the product of all the dimensions") left the user to guess (probe 57)."""
    import gzip

    import nrrd

    raw = Path(path).read_bytes()
    end = raw.find(b"\n\n")
    lines = raw[:end if end >= 0 else len(raw)].decode("latin-1").splitlines()
    for line in lines[1:]:
        key, sep, value = line.partition(":")
        if sep and key.strip().lower() in _NRRD_NUMERIC_FIELDS and not value.startswith("="):
            for word in value.split():
                try:
                    float(word)
                except ValueError:
                    return f"header field '{key.strip()}' holds {word!r}, not a number"
    try:
        with open(path, "rb") as f:
            header = nrrd.read_header(f)
    except Exception as e:  # noqa: BLE001 - pynrrd's header errors are of many types
        return f"its header does not parse ({e})"
    if "data file" in header or "datafile" in header or end < 0:
        return None   # detached data: pynrrd names the missing file itself
    size = _NRRD_TYPE_BYTES.get(" ".join(str(header.get("type", "")).lower().split()))
    if size is None or "sizes" not in header:
        return None   # a type pynrrd does not know: its own error says so
    n_bytes = int(np.prod(header["sizes"])) * size
    payload = raw[end + 2:]
    encoding = str(header.get("encoding", "raw")).lower()
    if encoding in ("gzip", "gz"):
        try:
            payload = gzip.decompress(payload)
        except EOFError:
            return "truncated: its gzip-compressed image data end early (an incomplete copy or download?)"
        except (OSError, zlib.error) as e:
            return f"damaged: its gzip-compressed image data do not decode ({e})"
    elif encoding != "raw":
        return None
    if len(payload) < n_bytes:
        return (f"truncated: {len(payload)} of the {n_bytes} bytes of image data its header describes (sizes "
                f"{' '.join(str(v) for v in header['sizes'])}, type {header.get('type')})")
    return None


def _nrrd_space_units(path):
    """The 'space units' of a NRRD's header as written, or None. pynrrd decodes the header as
    ASCII and drops what it cannot read: '"\u00b5m"' came out as 'm', a millionfold error."""
    with open(path, "rb") as f:
        head = b""
        while b"\n\n" not in head and len(head) < 1 << 24:
            chunk = f.read(1 << 16)
            if not chunk:
                break
            head += chunk
    for line in head.split(b"\n\n", 1)[0].splitlines()[1:]:
        key, sep, value = line.partition(b":")
        # "space units:=" would be a key/value pair of the writer's, not the field
        if sep and key.strip().lower() == b"space units" and not value.startswith(b"="):
            try:
                text = value.decode("utf-8")
            except UnicodeDecodeError:
                text = value.decode("latin-1")   # the micro sign as one byte (0xB5)
            return re.findall(r'"([^"]*)"', text) or text.split()
    return None


def _nrrd_in_millimetres(path, header, affine, meta, matrix=None):
    """``affine`` in mm when the NRRD's 'space units' name another length unit (its rows, the
    patient axes, each in its own unit; ``_scaled_to_millimetres``' rule, as NIfTI's xyzt_units).
    No units, or empty ones, are mm as before; a unit that is no length this reader knows is
    refused by name: read as mm, the volumes would be off by an unknown factor."""
    units = header.get("space units")
    if units is None:
        return affine
    units = [str(u).strip() for u in units]
    if len(units) != 3:
        raise CardiacInputError(path, f"space units {units} must name 3 units, one per axis of the patient space")
    unknown = [u for u in units if u and u.lower() not in _SPACE_UNITS_MM]
    if unknown:
        raise CardiacInputError(path, f"space units {' '.join(repr(u) for u in units)}: {unknown[0]!r} is not a "
                                      f"length unit this reader knows (accepted: {_SPACE_UNITS_ACCEPTED}); the voxel "
                                      "size in mm, and so every volume, would be unknown")
    scales = [_SPACE_UNITS_MM[u.lower()] if u else 1.0 for u in units]
    if len(set(units)) == 1:
        return _scaled_to_millimetres(affine, scales, units[0], units[0], "space units", meta, matrix)
    # axes in different units: a pixel's length in the header's numbers has no one unit
    return _scaled_to_millimetres(affine, scales, " ".join(repr(u) for u in units), "header-unit", "space units", meta,
                                  matrix)


def read_nrrd(path):
    """(images (T, S, R, C), ijk_to_ras, meta) from a 3D .nrrd or a 4D (.seq).nrrd."""
    import nrrd

    path = Path(path)
    if not path.is_file():
        raise CardiacInputError(path, "file not found")
    try:
        data, header = nrrd.read(str(path), index_order="F")
    except Exception as e:  # pynrrd raises NRRDError, zlib/EOF errors, ValueError on bad files
        raise CardiacInputError(path, f"not a readable NRRD file: {_nrrd_problem(path) or f'{type(e).__name__}: {e}'}")
    if "space units" in header:
        header["space units"] = _nrrd_space_units(path) or header["space units"]
    itk_time_step = _4d_space_as_3d_space_and_time(header, data.shape)
    kinds = [str(k).lower() for k in header.get("kinds", ["domain"] * data.ndim)]
    dirs = header.get("space directions")
    if dirs is not None and len(kinds) == data.ndim == len(dirs):
        # a list axis given the zero vector for 'none' (some writers): no step in space, so no
        # spatial axis; it was counted as a fourth one and refused without naming it (probe 36)
        dirs = [np.full(3, np.nan) if kinds[a] not in _SPATIAL_KINDS and np.asarray(dirs[a], float).size == 3
                and np.all(np.asarray(dirs[a], float) == 0) else dirs[a] for a in range(data.ndim)]
    if len(kinds) != data.ndim or (dirs is not None and len(dirs) != data.ndim):
        raise CardiacInputError(path, f"header fields do not match the {data.ndim} axes of the data (kinds {kinds}, "
                                      f"{'no' if dirs is None else len(dirs)} space directions)")
    if dirs is not None:
        width = {np.asarray(dirs[a], float).size for a in range(data.ndim)
                 if np.all(np.isfinite(np.asarray(dirs[a], float)))}
        if width - {3}:
            raise CardiacInputError(path, f"space directions {np.asarray(dirs).tolist()} must be vectors of 3 numbers "
                                          "(a 3D patient space)")
    if "space origin" in header and np.asarray(header["space origin"], float).size != 3:
        raise CardiacInputError(path, f"space origin {np.asarray(header['space origin']).tolist()} must be 3 numbers")
    spatial = [a for a in range(data.ndim)
               if (dirs is not None and np.all(np.isfinite(np.asarray(dirs[a], float))))
               or (dirs is None and kinds[a] in _SPATIAL_KINDS)]
    if len(spatial) != 3 or data.ndim - len(spatial) > 1:
        # a direction with a NaN among numbers, or none on an axis whose kind is spatial: a
        # damaged header, not a missing axis (the error named the axes' count, not the NaN)
        broken = [a for a in range(data.ndim) if dirs is not None and a not in spatial
                  and (np.any(np.isfinite(np.asarray(dirs[a], float))) or kinds[a] in _SPATIAL_KINDS)]
        if broken:
            raise CardiacInputError(path, "space directions " + "; ".join(
                f"of axis {a} ({kinds[a]}, size {data.shape[a]}): {np.asarray(dirs[a]).tolist()}" for a in broken)
                + " are not numbers: the voxel size and orientation of that axis are unknown; the header is damaged")
        raise CardiacInputError(path, f"expected 3 spatial axes and at most one list/time axis, got sizes {list(data.shape)} and kinds {kinds}")
    list_axis = next((a for a in range(data.ndim) if a not in spatial), None)
    if list_axis is None:
        data, list_axis = data[..., None], data.ndim
    # The list axis may come first (documented .seq.nrrd layout) or last (what Slicer 5.13 writes)
    data = np.moveaxis(data, list_axis, 0)
    images = np.asarray(data.transpose(0, 3, 2, 1), dtype=np.float32)
    check_finite(path, images)

    space = str(header.get("space", "")).lower()
    signs = _NRRD_SPACES.get(space)
    m = np.eye(4)
    units_said = {}
    if dirs is not None:
        d = np.array([np.asarray(dirs[a], float) for a in spatial]).T  # columns = i, j, k steps
        m[:3, :3] = d
        if "space origin" in header:
            m[:3, 3] = np.asarray(header["space origin"], float)
        m = _nrrd_in_millimetres(path, header, m, units_said, (data.shape[1], data.shape[2]))
    else:
        spacings = header.get("spacings")
        if spacings is not None and not all(np.isfinite(float(spacings[a])) for a in spatial):
            # nan on a spatial axis was read as 1 mm: EDV 72 for 115 mL, QC pass
            raise CardiacInputError(path, f"spacings {np.asarray(spacings).tolist()}: a spatial axis has no spacing (nan), so "
                                          "its voxel size is unknown and volumes would be wrong; give every spatial axis "
                                          "its spacing in mm")
        sp = [float(spacings[a]) if spacings is not None else 1.0 for a in spatial]
        check_spacing_values(path, sp, "spacings")
        m[:3, :3] = np.diag(sp)
    if signs is not None:
        m[:3, :] = np.diag(signs) @ m[:3, :]
    orientation_known = signs is not None and dirs is not None and not axis_aligned(m[:3, :3] / np.linalg.norm(m[:3, :3], axis=0))
    lost = dirs is None and header.get("spacings") is None
    meta = {"format": "nrrd", "orientation_known": orientation_known, "nrrd_space": space or None,
            "spacing_lost": "no 'space directions' or 'spacings' field: the voxel size was not saved with this file, so "
                            "volumes would be wrong; accepted: an NRRD with space directions (or spacings)" if lost else None,
            "header": {k: v for k, v in header.items() if isinstance(v, str)}, **units_said}
    timed = _nrrd_frame_times(header, list_axis, images.shape[0], meta) if images.shape[0] > 1 else None
    times, in_seconds, unit_named = timed if timed is not None else (None, False, False)
    # each frame's own time places it: a label sequence read so is in time order already,
    # whatever order the image's file stored (labelmap.load_labelmap)
    if times is not None:
        meta["frames_placed_by_time"] = True
    if times is not None and np.any(np.diff(times) < 0):
        # frames stored out of time order: the index values say where each belongs (a stable
        # sort keeps repeated times in file order; the uneven-times checks then see them)
        order = np.argsort(times, kind="stable")
        images, times = np.ascontiguousarray(images[order]), times[order]
        # a label file with no times of its own follows the image's stored order: it is put in
        # the same time order (its frame 7 lay over the image's frame 12: ED 19, ES 12 for 0, 7)
        meta["stored_frame_order"] = [int(i) for i in order]
        meta.setdefault("warnings", []).append("the sequence's frames are stored out of time order: sorted by their time "
                                               "index values")
    if times is not None and not unit_named and times.size > 1:
        step = float(np.median(np.diff(times)))
        if step > MAX_FRAME_INTERVAL_S:
            # no unit is Slicer's seconds, but no series steps this far: milliseconds with the
            # unit lost (read as 45 s frames, so perfusion, and refused as "give --kind cine"; probe 36)
            meta["unitless_time_step"] = step   # a --dt that is it neither in s nor in ms is said
            times = frame_times_not_used(meta, (
                f"the sequence's time index values step {step:g} with no unit: as seconds (what Slicer writes "
                f"without one) that is no frame interval (a cine's frames lie 15-60 ms apart, a first pass's "
                f"{MIN_FRAME_INTERVAL_S:g}-{MAX_FRAME_INTERVAL_S:g} s); if they are milliseconds, the header needs 'units' naming ms for "
                "that axis"))
    if times is not None and np.any(np.diff(times) == 0):
        # two frames at one time: a frame saved twice (and so, often, another lost); the stable
        # sort kept them in file order, but the cycle or the first pass has a hole (probe 36)
        at = int(np.argmax(np.diff(times) == 0))
        meta.setdefault("warnings", []).append(
            f"the sequence's frames {at + 1} and {at + 2} (counted from 1 in time order) have the same time index value "
            f"({times[at]:.6g} s): a frame saved twice, or another's time lost? check the sequence")
    # a sequence made from a NIfTI with placeholder times carries them on (0, 1, 2 ... in
    # seconds); times written in another unit (a MultiVolume's 0, 1000, 2000 ms) were measured
    times = None if times is None else times - times[0]
    meta["frame_times_s"] = ignore_placeholder_times(times, meta) if in_seconds else times
    if itk_time_step is not None and meta["frame_times_s"] is None and itk_time_step != 1.0:
        # ITK keeps no time unit: seconds and milliseconds cannot be told apart (a step of 1 is
        # the placeholder of an image that had none, said by ignore_placeholder_times' rule)
        meta["frame_times_ignored"] = (f"the time axis of this 4D NRRD (written by ITK/SimpleITK: 'space dimension: 4') "
                                       f"steps {itk_time_step:g} with no time unit, so seconds and milliseconds cannot be "
                                       "told apart")
        meta["unitless_time_step"] = float(itk_time_step)
    return images, m, meta


# NRRD's named 4D spaces (the spec's space-time): the 3D space they extend
_SPACE_TIME = {"right-anterior-superior-time": "right-anterior-superior", "rast": "right-anterior-superior",
               "left-anterior-superior-time": "left-anterior-superior", "last": "left-anterior-superior",
               "left-posterior-superior-time": "left-posterior-superior", "lpst": "left-posterior-superior"}


def _4d_space_as_3d_space_and_time(header, shape):
    """ITK's NRRD writer saves a 4D image in a 4D space ('space dimension: 4', no named space,
    4-number space directions and origin; ITK's space is LPS), and NRRD's own space-time spaces
    ('space: right-anterior-superior-time', the time unit in 'space units') do the same: rewrite
    ``header`` in place as 3 spatial axes and one list axis. ITK's step has no unit: it is
    returned (None otherwise); a space-time's axis gets its times as index values in the unit
    its 'space units' name (refused before as "vectors of 3 numbers"; probe 36)."""
    space = str(header.get("space", "")).strip().lower()
    space_time = _SPACE_TIME.get(space)
    if len(shape) != 4 or (space_time is None and (header.get("space")
                                                   or str(header.get("space dimension", "")).strip() != "4")):
        return None
    try:
        dirs = np.asarray(header["space directions"], float)
        origin = np.asarray(header.get("space origin", np.zeros(4)), float)
    except (KeyError, TypeError, ValueError):
        return None
    if dirs.shape != (4, 4) or origin.size != 4 or not np.all(np.isfinite(dirs)):
        return None
    timed = [a for a in range(4) if np.allclose(dirs[a, :3], 0) and dirs[a, 3] != 0]
    if len(timed) != 1 or not np.allclose(np.delete(dirs, timed[0], axis=0)[:, 3], 0):
        return None   # space and time mixed: not a 3D+t image; refused as before
    t = timed[0]
    three = dirs[:, :3].copy()
    three[t] = np.nan
    header["space directions"] = three
    header["space origin"] = origin[:3]
    header["space"] = space_time or "left-posterior-superior"
    header.pop("space dimension", None)
    header["kinds"] = ["list" if a == t else "domain" for a in range(4)]
    units = header.pop("space units", None)
    if units is not None:   # the patient axes': scaled to mm as a 3D file's
        header["space units"] = list(units[:3]) if len(units) == 4 else units
    if space_time is None:
        return float(abs(dirs[t, 3]))
    unit = str(units[3]) if units is not None and len(units) == 4 else ""
    header[f"axis {t} index type"] = "numeric"
    header[f"axis {t} index values"] = " ".join(f"{origin[3] + i * dirs[t, 3]:.9g}" for i in range(shape[t]))
    header["labels"] = ["time" if a == t else "" for a in range(4)]
    header["units"] = [unit if a == t else "" for a in range(4)]
    return None


# --- MetaImage ------------------------------------------------------------------------------
def _parse_mhd(path):
    with open(path, "rb") as f:
        raw = f.read()
    return metaimage_fields(raw), raw


def _header_numbers(path, name, text, counts):
    """The numbers of a MetaImage header field, refused naming the field unless there are as many
    as one of ``counts`` (a 4D image's spatial fields may hold the 3D count)."""
    try:
        values = [float(v) for v in str(text).replace(",", " ").split()]
    except ValueError:
        raise CardiacInputError(path, f"{name} {text!r} is not a list of numbers") from None
    if len(values) not in counts or not np.all(np.isfinite(values)):
        raise CardiacInputError(path, f"{name} {text!r} has {len(values)} values; expected "
                                      f"{' or '.join(str(c) for c in sorted(set(counts), reverse=True))} finite numbers")
    return values


def read_metaimage(path):
    """(images (T, S, R, C), ijk_to_ras, meta) from a .mhd (+ .raw/.zraw) or .mha file."""
    path = Path(path)
    if not path.is_file():
        raise CardiacInputError(path, "file not found")
    fields, raw = _parse_mhd(path)
    try:
        ndims = int(fields["NDims"])
        dims = [int(v) for v in fields["DimSize"].split()]
        dtype = np.dtype(_MET_TYPES[fields["ElementType"]])
        data_file = fields["ElementDataFile"]
    except KeyError as e:
        raise CardiacInputError(path, f"not a MetaImage header: missing or unknown {e.args[0]!r}")
    except ValueError as e:
        raise CardiacInputError(path, f"bad MetaImage header ({e})")
    if int(fields.get("ElementNumberOfChannels", "1")) != 1:
        raise CardiacInputError(path, "multi-channel MetaImage is not supported (expected a scalar image); if its channels "
                                      "are the cardiac phases or dynamics, save it as a 4D image (NDims = 4, one volume "
                                      "per frame)")
    if not 2 <= ndims <= 4 or len(dims) != ndims:
        raise CardiacInputError(path, f"expected a 2D-4D image, got NDims={ndims} DimSize={dims}")
    msb = fields.get("BinaryDataByteOrderMSB", fields.get("ElementByteOrderMSB", "False")).lower() == "true"
    dtype = dtype.newbyteorder(">" if msb else "<")
    compressed = fields.get("CompressedData", "False").lower() == "true"
    n_bytes = int(np.prod(dims)) * dtype.itemsize

    if data_file.upper() == "LOCAL":
        data_path = path
        marker = raw.find(b"ElementDataFile")
        payload = raw[raw.index(b"\n", marker) + 1:]
    elif data_file.upper() == "LIST" or "%" in data_file:
        raise CardiacInputError(path, f"ElementDataFile {data_file!r} (file lists/patterns) is not supported; use one data file")
    else:
        data_path = path.parent / data_file
        if not data_path.is_file():
            # /dev/zero or '.' exist: "missing" sent the user looking for a file that is there (probe 57)
            what = "is missing" if not data_path.exists() else "is not a regular file (a folder, device or pipe)"
            raise CardiacInputError(path, f"its data file {data_path} (ElementDataFile {data_file!r}) {what}")
        payload = data_path.read_bytes()
    header_size = int(fields.get("HeaderSize", "0"))
    if header_size > 0:
        payload = payload[header_size:]
    elif header_size == -1 and not compressed:
        payload = payload[-n_bytes:]
    if compressed:
        d = zlib.decompressobj(47)  # zlib or gzip stream
        try:
            payload = d.decompress(payload, n_bytes) if n_bytes else b""
        except zlib.error as e:
            raise CardiacInputError(data_path, f"corrupt compressed data ({e})")
    if len(payload) < n_bytes:
        raise CardiacInputError(data_path, f"truncated: {len(payload)} of {n_bytes} bytes of image data")
    if not compressed and header_size == 0 and len(payload) >= 1.5 * n_bytes:
        # twice the bytes the header describes: another ElementType (MET_SHORT read as the
        # first half of MET_INT values) or a dimension left out; the first half was read silently
        raise CardiacInputError(data_path, f"holds {len(payload)} bytes where the header ({path.name}: DimSize "
                                           f"{' '.join(map(str, dims))}, ElementType {fields.get('ElementType')}) describes "
                                           f"{n_bytes}: a wrong ElementType or DimSize in the header, or another image's data")
    stored = np.frombuffer(payload[:n_bytes], dtype=dtype)
    if _float_bits_as_integers(stored):
        raise CardiacInputError(path, f"ElementType {fields.get('ElementType')} reads every non-zero value as "
                                      f"{FLOAT_BITS_MIN / 1e6:.0f} million or more, as 32-bit float data read as "
                                      "integers do (the bits of 0.5-5000 read as 1.0e9-1.2e9): is the data MET_FLOAT? "
                                      "Correct the header's ElementType")
    arr = stored.reshape(dims[::-1]).astype(np.float32)
    check_finite(data_path, arr)

    spacing_field = fields.get("ElementSpacing", fields.get("ElementSize"))
    try:
        sp = [float(v) for v in (spacing_field or " ".join(["1"] * ndims)).split()]
    except ValueError:
        raise CardiacInputError(path, f"ElementSpacing {spacing_field!r} is not a list of numbers")
    if len(sp) < min(ndims, 3):
        raise CardiacInputError(path, f"ElementSpacing {spacing_field!r} has {len(sp)} values for {ndims} dimensions")
    check_spacing_values(path, sp[:min(ndims, 3)], "ElementSpacing")
    origin_name = next((k for k in ("Offset", "Position", "Origin") if k in fields), None)
    origin = _header_numbers(path, origin_name, fields[origin_name], (ndims, min(ndims, 3))) if origin_name else [0.0] * ndims
    tm_name = next((k for k in ("TransformMatrix", "Rotation", "Orientation") if k in fields), None)
    tm = fields[tm_name] if tm_name else None
    direction = np.eye(ndims)
    if tm is not None:
        values = _header_numbers(path, tm_name, tm, (ndims * ndims, min(ndims, 3) ** 2))
        n = int(round(np.sqrt(len(values))))
        direction[:n, :n] = np.array(values).reshape(n, n).T
    # MetaIO lists each axis' direction in turn: column a of ITK's direction = values[a*n:(a+1)*n]
    d3, sp3, o3 = np.eye(3), np.ones(3), np.zeros(3)
    n3 = min(ndims, 3)
    d3[:n3, :n3], sp3[:n3], o3[:n3] = direction[:n3, :n3], sp[:n3], origin[:n3]
    m = np.eye(4)
    m[:3, :3] = LPS_TO_RAS @ d3 @ np.diag(sp3)
    m[:3, 3] = LPS_TO_RAS @ o3
    if ndims == 2:
        arr = arr[None, None]
    elif ndims == 3:
        arr = arr[None]
    # a 4th ElementSpacing has no time unit in MetaIO, so frame times stay unknown
    meta = {"format": "metaimage", "orientation_known": tm is not None and not axis_aligned(d3),
            "frame_times_s": None, "data_file": str(data_path),
            "spacing_lost": None if spacing_field else ("no ElementSpacing: the voxel size was not saved with this file, so "
                                                        "volumes would be wrong; accepted: a MetaImage header with "
                                                        "ElementSpacing in mm")}
    if ndims == 4 and spacing_field:
        fourth = f" ({sp[3]:g})" if len(sp) > 3 else ""
        meta["frame_times_ignored"] = (f"MetaImage stores the 4th ElementSpacing{fourth} without a unit (seconds, "
                                       "milliseconds or a placeholder?), so it is not taken as the frame interval")
        if len(sp) > 3 and np.isfinite(sp[3]) and sp[3] > 0 and sp[3] != 1.0:
            meta["unitless_time_step"] = float(sp[3])
    return arr, m, meta


# --- dispatch -------------------------------------------------------------------------------
def read_volume_file(path):
    """(images (T, S, R, C) float32, ijk_to_ras, meta) for any single volume file."""
    suffix = volume_suffix(path)
    readers = {".nii": read_nifti, ".nii.gz": read_nifti, ".nrrd": read_nrrd, ".seq.nrrd": read_nrrd, ".nhdr": read_nrrd,
               ".mhd": read_metaimage, ".mha": read_metaimage, ".hdr": read_analyze, ".img": read_analyze}
    if suffix in readers:
        images, affine, meta = readers[suffix](path)
        images, affine = slice_axis_last(images, affine, meta)
        return images, affine, meta
    raise CardiacInputError(path, f"unknown volume format {suffix!r}; accepted: {', '.join(('.seq.nrrd',) + VOLUME_SUFFIXES)}")


def read_analyze(path):
    """An Analyze 7.5 image as a (x, y, z[, t]) stack, for a cine (``--kind cine``). Analyze keeps
    no orientation and no frame times: only the voxel size is trusted. (Without --kind an
    Analyze file is QPerf's perfusion format, [RO, E1, frames]: readers.perfusion.)"""
    from .nifti import load_nifti, nifti_to_kji

    data, affine, _ = load_nifti(path)
    if data.ndim not in (3, 4):
        raise CardiacInputError(path, f"expected a 3D or 4D image (x, y, slices[, frames]), got shape {data.shape}")
    return np.ascontiguousarray(nifti_to_kji(data), np.float32), np.asarray(affine, float), \
        {"format": "analyze", "orientation_known": False, "frame_times_s": None}


def _strip_suffix(path):
    name = Path(path).name
    suffix = volume_suffix(path)
    return name[: -len(suffix)] if name.lower().endswith(suffix) else Path(path).stem


def _refuse_lost_spacing(path, meta):
    """An image whose file did not keep its voxel size cannot be measured: refuse, naming it.
    (Label maps are used voxel by voxel on the image's grid, so they are not refused.)"""
    lost = meta.pop("spacing_lost", None)
    if lost:
        raise CardiacInputError(path, lost)


def load_volume(path, kind=CINE):
    """One file -> Study. 3D files become a single frame; 4D files a series."""
    images, m, meta = read_volume_file(path)
    _refuse_lost_spacing(path, meta)
    refuse_swapped_axes(path, images, m)
    study = Study(images=images, ijk_to_ras=m, kind=kind, frame_times_s=meta.pop("frame_times_s"),
                  name=_strip_suffix(path), source=str(path),
                  orientation_known=meta.pop("orientation_known"),
                  provenance={"reader": meta.pop("format"), "files": [str(path)], "warnings": meta.pop("warnings", []),
                              **meta})
    return check_geometry(study, path)


# One format per frame folder; .nii and .nii.gz (one frame saved uncompressed) are one format,
# as .mhd and .mha are: read apart, a frame saved the other way was dropped without a word.
_FRAME_FORMATS = {".nii": "NIfTI", ".nii.gz": "NIfTI", ".nrrd": "NRRD", ".mhd": "MetaImage", ".mha": "MetaImage"}


def _volume_files_by_format(folder):
    by_format = {}
    for f in folder.iterdir():
        if f.is_file() and not is_ignored_input(f, folder):
            fmt = _FRAME_FORMATS.get(volume_suffix(f))
            if fmt is not None:
                by_format.setdefault(fmt, []).append(f)
    return by_format


# A label map's name as converters, ACDC (patient001_frame01_gt) and this tool's phantoms
# (cine_labels) write it: the labels of an image beside it, never a frame or an image itself.
_LABEL_MAP_NAME = re.compile(r"(_gt|_seg|_label|_labels|_mask)$", re.I)


def is_label_map_name(f):
    """True when the volume file ``f`` is named as a label map (``_LABEL_MAP_NAME``)."""
    return bool(_LABEL_MAP_NAME.search(f.name[: len(f.name) - len(volume_suffix(f))]))


def one_image_and_its_label_maps(folder):
    """(the image file, its label map files in natural order) of a folder that holds one image
    volume and label maps beside it, as `cardiacaiseg phantom` writes it (cine.nii.gz and
    cine_labels.nii.gz) and converters export a study; else None. Other files (truth.json, an
    AIF curve, notes) are not volumes and do not count; nor do this tool's outputs."""
    folder = Path(folder)
    volumes = [f for f in folder.iterdir() if f.is_file() and not is_ignored_input(f, folder)
               and volume_suffix(f) in (".seq.nrrd",) + VOLUME_SUFFIXES]
    labels = sorted((f for f in volumes if is_label_map_name(f)), key=lambda f: natural_key(f.name))
    images = [f for f in volumes if f not in labels]
    if len(images) != 1 or not labels:
        return None
    return images[0], labels


def _frame_files_and_others(folder):
    """(per-frame volume files of the folder's main format, volume files of other formats), each
    in natural order (time_2 before time_10)."""
    by_format = _volume_files_by_format(Path(folder))
    if not by_format:
        return [], []
    main = max(by_format, key=lambda k: len(by_format[k]))
    others = [f for fmt, files in by_format.items() if fmt != main for f in files]
    return (sorted(by_format[main], key=lambda f: natural_key(f.name)), sorted(others, key=lambda f: natural_key(f.name)))


def _frames_named_alike(files):
    """(the frame files, the files left out, the frames' name with N for its numbers).

    A folder of frames time_1 ... time_60 with a time_peak, a mask or a mean image saved beside
    them took that file in as a frame, unsaid (frame 0 of a cine: ED and ES a frame late), or
    blamed the series (a "second bolus"; probe 89). A name is its stem with every number as N;
    the frames' name is the one most files share (at least three, the others fewer than half as
    many, and no other name as common: else every file is a frame, as before). A file named
    otherwise is still a frame where its last number continues or fills the frames' numbering
    (frame_01_ED beside frame_02 ... frame_25; review of session 42); it is left out where it has
    no number or one beyond the frames' range by more than a step (perf_aif_99 beside perf_20 ...
    perf_79)."""
    def pattern(f):   # .nii and .nii.gz frames are one format (a frame saved uncompressed is a frame)
        return re.sub(r"\d+", "N", f.name[: len(f.name) - len(volume_suffix(f))])

    names = {f: pattern(f) for f in files}
    counts = Counter(names.values())
    main = max(counts, key=counts.get) if counts else None
    named = [f for f in files if names[f] == main]
    others = [f for f in files if names[f] != main]
    if not others or len(named) < 3 or 2 * len(others) >= len(named) or list(counts.values()).count(counts[main]) > 1:
        return files, [], main
    numbers = sorted(n for n in (_frame_number(f) for f in named) if n is not None)
    step = int(np.median(np.diff(numbers))) if len(numbers) > 1 else 1
    lo, hi = (numbers[0] - step, numbers[-1] + step) if numbers else (None, None)
    strays = [f for f, n in ((f, _frame_number(f)) for f in others) if n is None or lo is None or not lo <= n <= hi]
    if not strays:
        return files, [], main
    return [f for f in files if f not in strays], strays, main + volume_suffix(named[0])


def frame_files(folder):
    """Per-frame volume files of one format in a folder, in natural order (time_2 before time_10)."""
    return _frame_files_and_others(folder)[0]


def _frame_number(f):
    """The number that ends a frame file's name (``time_12.mhd`` -> 12), or None."""
    m = re.search(r"(\d+)\D*$", f.name[: len(f.name) - len(volume_suffix(f))])
    return int(m.group(1)) if m else None


# The bits of a 32-bit float from 1e-30 up read as an integer of 2e8 or more: no integer image
# holds only such values (MR magnitudes stay under 65536). Float32 data under ElementType MET_INT
# had been read so, squashed like a logarithm: RV EDV 16 % off with no flag about it (probe 57).
FLOAT_BITS_MIN = 2.0e8


def _float_bits_as_integers(values):
    """True when 32-bit integer ``values`` are float32 data read as integers: every non-zero value
    (there are some) at FLOAT_BITS_MIN or more, and the same bits finite as floats."""
    if values.dtype.kind not in "iu" or values.dtype.itemsize != 4:
        return False
    nonzero = values[values != 0]
    if nonzero.size < 0.01 * values.size or nonzero.size == 0:
        return False
    if np.abs(nonzero.astype(np.int64)).min() < FLOAT_BITS_MIN:
        return False
    as_floats = nonzero.astype(nonzero.dtype.newbyteorder("="), copy=False).view(np.float32)
    return bool(np.all(np.isfinite(as_floats)))


def check_frame_numbers(folder, files, others=()):
    """Refuse a frame folder whose numbered files skip a number or repeat one: every frame after
    a lost file would be read a frame early (a perfusion series' MBF then read 24 % low, a
    cine's ES moved), and two files of one number are two versions of a frame. Numbers that
    are not a frame index (no step that most of them keep, e.g. times in ms) are not judged: the
    note returned says so (numbers that looked like uneven acquisition times went unsaid, probe 72)."""
    labels = [f for f in files if is_label_map_name(f)]
    if labels:
        # an ACDC patient folder without its Info.cfg: the _gt maps were counted as frames
        # ("frame number 1 twice ... keep one", which invited deleting the ground truth)
        cfg = Path(folder) / "Info.cfg"
        # an Info.cfg that is a folder was told to "add its Info.cfg" (probe 57)
        info = (" and no Info.cfg (an ACDC patient folder's ED and ES frames)" if not cfg.exists()
                else " and an Info.cfg that is not a file (a folder?)" if not cfg.is_file() else "")
        images = [f for f in files if f not in labels]
        if len(images) == 1 and not cfg.exists():
            # one image and its label maps alone are read as that image (``load_study``,
            # ``one_image_and_its_label_maps``); here volumes of another format lie beside them, or
            # a caller took the folder for frames. No cohort advice of its own: a batch adds its
            # manifest column after the message, two parentheticals in a row (probe 108)
            beside = (f" beside volumes of another format ({', '.join(f.name for f in others[:2])}"
                      f"{', ...' if len(others) > 2 else ''}): which one is the study's image cannot be told"
                      if others else ", not one file per frame")
            raise CardiacInputError(folder, f"holds one image ({images[0].name}) and its label maps ({', '.join(f.name for f in labels[:2])}"
                                            f"{', ...' if len(labels) > 2 else ''}){beside}; give the image file itself, "
                                            f"with --labels {labels[0].name} for its labels")
        raise CardiacInputError(folder, f"holds label maps ({', '.join(f.name for f in labels[:2])}"
                                        f"{', ...' if len(labels) > 2 else ''}) beside the image frames{info}: they are "
                                        f"not frames. For an ACDC patient folder "
                                        f"{'add its Info.cfg' if not cfg.exists() else 'make its Info.cfg a text file'} "
                                        "(ED: n, ES: n, NbFrame: n); "
                                        "else give the image files without the label maps and the labels with --labels")
    numbers = [_frame_number(f) for f in files]
    if len(files) < 3 or any(n is None for n in numbers):
        return
    first = {}
    for n, f in zip(numbers, files):
        if n in first:
            raise CardiacInputError(f, f"frame number {n} twice in {folder}: {first[n].name} and {f.name} (two versions "
                                       "of one frame?); keep one")
        first[n] = f
    order = np.sort(numbers)
    steps = np.diff(order)
    values, counts = np.unique(steps, return_counts=True)
    step = int(values[counts.argmax()])
    irregular = steps != step
    if 2 * counts.max() <= steps.size:
        typical = float(np.median(steps))
        if typical > 0 and np.max(np.abs(steps - typical)) <= 0.1 * typical:
            return None   # times in ms rounded to whole numbers (0, 33, 67, ...): even
        if len(files) < 4 or (steps.min() > 0 and not np.any(steps % steps.min())):
            return None   # too few to judge, or an index with numbers left out (1, 2, 4): not times
        shown = ", ".join(map(str, order[:4])) + (", ..." if order.size > 4 else "")
        return (f"the frame files' numbers ({shown}) step unevenly: they are not read as frame numbers or as times "
                "(if they are acquisition times, the frames are not evenly spaced); the frames are taken in the "
                "names' order")
    if not irregular.any() or np.any(steps[irregular] % step):
        return None
    missing = [int(n) for a, b in zip(order[:-1][irregular], order[1:][irregular]) for n in range(a + step, b, step)]
    shown = ", ".join(map(str, missing[:5])) + (f" and {len(missing) - 5} more" if len(missing) > 5 else "")
    elsewhere = f"; {', '.join(f.name for f in others[:3])} in another format lie(s) beside them" if others else ""
    raise CardiacInputError(folder, f"the frame files are numbered {order[0]}-{order[-1]} but frame(s) {shown} are missing "
                                    f"(a lost or renamed file{elsewhere}): read without them every later frame would move "
                                    "a frame early; save every frame in one format, or remove the gap knowingly by "
                                    "renumbering the files")


def _refuse_series_files(folder, files, f, images):
    """A folder of frames holds one 3D volume per file; a file with its own time axis (dcm2niix
    writes one 4D file per series, or per slice) is a whole series: named, with the folder's
    files and, where they name stress and rest, the stress-with-rest reading (probe 89)."""
    if images.shape[0] == 1:
        return
    n_frames = images.shape[0]
    if images.shape[1] == 1 and len(files) > 1:
        # one slice with its own time axis per file: dcm2niix's output for a stack it could
        # not join; given alone, the file was analysed as a one-slice study (probe 36)
        raise CardiacInputError(folder, f"its {len(files)} files each hold one slice with a time axis of its own "
                                        f"({f.name}: 1 slice, {n_frames} frames), as dcm2niix writes the "
                                        "slices of a stack it could not join: they are one study's slices, not its "
                                        "frames; give the DICOM series (its slices are stacked by position) or join "
                                        "the files into one 4D image (x, y, slices, time)")
    names = [g.name for g in files]
    roles = {role: next((n for n in names if role in n.lower() and "aif" not in n.lower()), None)
             for role in ("stress", "rest")}
    pair = f"; for a stress series with its rest (MPR): {roles['stress']} --rest {roles['rest']}" if all(roles.values()) else ""
    raise CardiacInputError(f, f"has {n_frames} frames of its own, where a folder of frames holds one 3D volume per file: "
                               "it is a whole time series (as dcm2niix writes one per series or per slice); give that "
                               f"file as the input, not the folder of {len(files)} files ({', '.join(names[:4])}"
                               f"{', ...' if len(names) > 4 else ''}){pair}")


def load_frame_folder(folder, kind=CINE, progress=None):
    """A folder of 3D files, one per frame (e.g. ``v4_cSAX_time_N.mhd``) -> one Study."""
    folder = Path(folder)
    files, others = _frame_files_and_others(folder)
    if not files:
        raise CardiacInputError(folder, "no per-frame volume files (.mhd, .nii.gz, .nrrd) in this folder")
    files, strays, pattern = _frames_named_alike(files)
    try:
        numbering = check_frame_numbers(folder, files, others)
    except CardiacInputError as gap:
        # whole series (dcm2niix writes one 4D file per series) are no frames with a gap:
        # stress 20/21 and rest 40/41 were "frames 22-39 missing" (review of session 42)
        if "are missing" in gap.problem:
            _refuse_series_files(folder, files, files[0], read_volume_file(files[0])[0])
        raise
    progress = as_progress(progress)
    frames, m0 = [], None
    for n, f in enumerate(files):
        progress(n, len(files), f"reading {f.name}")
        images, m, meta = read_volume_file(f)
        _refuse_lost_spacing(f, meta)
        _refuse_series_files(folder, files, f, images)
        if frames and images.shape[1:] != frames[0].shape:
            raise CardiacInputError(f, f"size {images.shape[1:][::-1]} differs from {files[0].name} {frames[0].shape[::-1]}: "
                                       "not a frame of the same series (another series saved beside the frames, such "
                                       "as a dual-sequence AIF series?); move it out of the folder")
        if m0 is None:
            m0, meta0 = m, meta
        elif not np.allclose(m, m0, atol=1e-3):
            raise CardiacInputError(f, f"geometry (origin/spacing/direction) differs from {files[0].name}")
        frames.append(images[0])
    progress(len(files), len(files), "read")
    study = Study(images=np.stack(frames), ijk_to_ras=m0, kind=kind, name=folder.name, source=str(folder),
                  orientation_known=meta0["orientation_known"],
                  provenance={"reader": meta0["format"] + "-frames", "files": [str(f) for f in files],
                              "warnings": ([numbering] if numbering else [])
                              # every frame file is stored alike (their geometry agrees): said once
                              + [w for w in meta0.get("warnings", [])
                                 if w.startswith((SLICE_AXIS_REORDERED, UNITS_CONVERTED, UNITS_KEPT_AS_MM))]})
    if strays:
        study.provenance["warnings"].append(
            f"{len(strays)} file(s) not named as the {len(files)} frames ({pattern}) left out: "
            + ", ".join(f.name for f in strays[:3]) + (" ..." if len(strays) > 3 else ""))
    if others:
        study.provenance["warnings"].append(
            f"{len(others)} volume file(s) of another format than the {len(files)} frames left out: "
            + ", ".join(f.name for f in others[:3]) + (" ..." if len(others) > 3 else ""))
    return check_geometry(study, files[0])
