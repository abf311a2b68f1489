"""A folder of DICOM images (cine or perfusion) -> Study.

Classic single-frame images and Enhanced (multi-frame) MR files are read alike: every frame of
an enhanced file becomes one per-image record (dicom_enhanced.EnhancedFrame) with the frame's
position, orientation, pixel spacing, trigger delay and rescale from its functional groups.
Slices are ordered along the slice normal (row x column direction), frames by TriggerTime for
cine (AcquisitionTime for perfusion, where TriggerTime is the constant delay after the R wave;
FrameAcquisitionDateTime for enhanced frames), then by InstanceNumber, TemporalPositionIndex
and frame number.
"""
import functools
import math
import re
import warnings
from collections import Counter
from contextlib import contextmanager
from pathlib import Path

import numpy as np

from ..errors import CardiacInputError
from ..progress import as_progress
from ..study import CINE, PERFUSION, Study
from .dicom_enhanced import EnhancedFrame, expand_enhanced, is_enhanced
from .geometry_check import add_warning, check_geometry, check_orientation, check_spacing_values
from .pd_frames import MAX_PD_FRAMES
from .sniff import import_pydicom
from .volume import LPS_TO_RAS, is_ignored_input, natural_key

_DICOMDIR_UID = "1.2.840.10008.1.3.10"
_REQUIRED = ("PixelSpacing", "ImageOrientationPatient", "ImagePositionPatient")
# Images of one slice lie at one position along the normal, give or take what scanners and
# exports really write: rounding in the last digits, and slice tracking (a navigator moves the
# slice with breathing, a few tenths of a mm per frame). Positions closer than this to the
# nearest other position are one slice; short-axis slices are 5-10 mm apart (3D stacks >= 1 mm).
_POSITION_TOL_MM = 0.5
# one slice's positions spread over more than this: said, since the slice moved through the plane
_POSITION_SPREAD_NOTE_MM = 0.2


def _dcm():
    return import_pydicom()


@contextmanager
def _quiet():
    """Silence pydicom's value warnings: vendors' invalid UIDs and VRs are common and harmless."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", module=r"pydicom(\.|$)")
        yield


def _read_header(path):
    """Dataset with deferred pixel data; None for files that are not DICOM images (a README,
    DICOMDIR, structured reports); CardiacInputError naming the file for an empty file or a
    DICOM file that cannot be read."""
    pydicom = _dcm()
    path = Path(path)
    try:
        if path.stat().st_size == 0:
            raise CardiacInputError(path, "empty file (0 bytes): an interrupted copy or export?")
    except OSError as e:
        raise CardiacInputError(path, f"cannot read the file ({e.strerror})")
    # files named .dcm/.ima are meant to be DICOM: if unreadable they are broken, not foreign
    named_dicom = path.suffix.lower() in (".dcm", ".ima")
    with _quiet():
        try:
            ds = pydicom.dcmread(str(path), defer_size="16 KB")
        except pydicom.errors.InvalidDicomError:
            try:  # DICOM without the 128-byte preamble
                ds = pydicom.dcmread(str(path), defer_size="16 KB", force=True)
                ok = "Rows" in ds and "SOPClassUID" in ds
            except Exception:
                ok = False
            if not ok:
                if named_dicom:
                    raise CardiacInputError(path, "not a readable DICOM image (no DICOM header or image attributes)")
                return None
        except Exception as e:
            raise CardiacInputError(path, f"truncated or corrupt DICOM file ({type(e).__name__}: {e})")
    _name_the_transfer_syntax(ds)
    try:
        sop = ds.get("SOPClassUID") or getattr(ds, "file_meta", {}).get("MediaStorageSOPClassUID")
    except Exception as e:   # an element pydicom cannot parse (unknown VR, odd length)
        raise CardiacInputError(path, f"damaged DICOM header: SOPClassUID cannot be parsed ({type(e).__name__}: {e})") from None
    if "Rows" not in ds:
        if sop is None or "Image" in getattr(sop, "name", ""):
            raise CardiacInputError(path, "truncated or corrupt DICOM file (the image attributes are missing)")
        return None  # DICOMDIR, structured reports, presentation states: no image
    if str(sop) == _DICOMDIR_UID:
        return None
    _check_header(path, ds)
    return ds


def _name_the_transfer_syntax(ds):
    """Old exports and some gateways write the bare data set: no preamble and no file meta, so no
    Transfer Syntax UID, which pydicom needs to decode the pixels. The encoding the parser found
    (implicit or explicit VR, byte order) is the transfer syntax of such a file, uncompressed."""
    from pydicom.dataset import FileMetaDataset
    from pydicom.uid import ExplicitVRBigEndian, ExplicitVRLittleEndian, ImplicitVRLittleEndian

    meta = getattr(ds, "file_meta", None)
    if meta is not None and "TransferSyntaxUID" in meta:
        return
    implicit, little = getattr(ds, "original_encoding", (None, None))
    if implicit is None:
        return
    if meta is None:
        ds.file_meta = meta = FileMetaDataset()
    meta.TransferSyntaxUID = ImplicitVRLittleEndian if implicit else (ExplicitVRLittleEndian if little else ExplicitVRBigEndian)


# Tags the reader turns into whole numbers; a damaged header must fail here, naming the file,
# not as a bare ValueError deep in the stacking code.
_INTEGER_TAGS = ("Rows", "Columns", "InstanceNumber", "SeriesNumber", "NumberOfFrames", "BitsAllocated", "BitsStored",
                 "PixelRepresentation", "SamplesPerPixel")
# Tags read later with their own messages (geometry, times): only a header so damaged that
# pydicom cannot parse the element (an unknown VR) is refused here.
_LATER_TAGS = ("ImagePositionPatient", "ImageOrientationPatient", "PixelSpacing", "TriggerTime", "AcquisitionTime",
               "ContentTime", "SeriesInstanceUID", "SOPInstanceUID", "SeriesDescription", "RescaleSlope",
               "RescaleIntercept", "PhotometricInterpretation", "SliceThickness", "SpacingBetweenSlices", "Manufacturer")


def _check_header(path, ds):
    """Refuse, naming the file and the tag, a header whose elements pydicom cannot parse or
    whose counts are not single whole numbers (bit errors, broken anonymisers)."""
    if "Columns" not in ds:
        raise CardiacInputError(path, "truncated or corrupt DICOM file (Rows without Columns)")
    for tag in _INTEGER_TAGS + _LATER_TAGS:
        try:
            value = ds.get(tag)
        except NotImplementedError as e:    # pydicom: "Unknown Value Representation ..."
            raise CardiacInputError(path, f"damaged DICOM header: {tag} cannot be parsed ({e})") from None
        except (ValueError, TypeError, OverflowError):
            if tag in _INTEGER_TAGS:
                raise CardiacInputError(path, f"damaged DICOM header: {tag} is not a number") from None
            continue
        except Exception as e:              # pydicom's BytesLengthException and kin: a broken element
            raise CardiacInputError(path, f"damaged DICOM header: {tag} cannot be parsed ({type(e).__name__}: {e})") from None
        if tag in _INTEGER_TAGS and value not in (None, ""):
            try:
                number = int(value)
            except (ValueError, TypeError, OverflowError):
                raise CardiacInputError(path, f"damaged DICOM header: {tag} {value!r} is not one whole number") from None
            if tag in ("Rows", "Columns") and number <= 0:
                raise CardiacInputError(path, f"damaged DICOM header: {tag} {number}")


def series_uid_of(path):
    """SeriesInstanceUID of one DICOM image file (CardiacInputError if it is not one)."""
    ds = _read_header(path)
    if ds is None:
        raise CardiacInputError(path, "not a DICOM image file")
    with _quiet():
        return _series_key(ds)


def _series_key(ds):
    return str(ds.get("SeriesInstanceUID", "<no SeriesInstanceUID>"))


def _describe(uid, items):
    """'#20 'Perfusion_stress' (180 images, UID ..., file exam/IM00023)': the file tells which one
    to open in a GUI, where a series is chosen by one of its files (the exports name files
    IM00001..., and nothing else tied a listed series to a file; probe 87)."""
    path = Path(items[0][0])
    return f"{_series_name(items)} ({len(items)} images, UID {uid}, file {path.parent.name}/{path.name})"


def _series_name(items):
    """"#20 'Perfusion_stress'": a series' number and description as the messages name it."""
    ds = items[0][1]
    return f"#{ds.get('SeriesNumber', '?')} {str(ds.get('SeriesDescription', '')) or '(no description)'!r}"


def _records(path, ds):
    """The per-image records of one file: itself, or one EnhancedFrame per frame."""
    if is_enhanced(ds):
        return [(path, frame) for frame in expand_enhanced(path, ds)]
    return [(path, ds)]


def _same_pixels(ds, other):
    """True when two images whose headers say they are one (``_copy_key``) also hold the same
    pixels. An anonymiser that gives every file one SOPInstanceUID, with InstanceNumber removed
    and times cut to the second, made different frames of one second "copies": half a perfusion
    series was dropped and MBF read +105 % with QC pass (probe 48). Read only for such pairs."""
    try:
        syntaxes = {str(d.file_meta.TransferSyntaxUID) for d in (ds, other)}
        if len(syntaxes) == 1:
            return ds.PixelData == other.PixelData
        # a copy saved compressed (JPEG lossless) differs in bytes, not in pixels: both were read
        # and the series refused as "2 acquisitions" (probe 50)
        return bool(np.array_equal(ds.pixel_array, other.pixel_array))
    except Exception:   # no pixel data to compare or decode: the headers decide, as before
        return True


def _copy_key(ds):
    """Two files with this key equal are copies of one image (a PACS export that also puts the
    series in a subfolder): same SOPInstanceUID, position, instance and times. Anonymisers
    that reuse one UID for different images differ in the rest, so those are not dropped."""
    sop = ds.get("SOPInstanceUID")
    if sop in (None, ""):
        return None
    return tuple(_as_numbers(ds.get(t, "")) for t in ("ImagePositionPatient", "InstanceNumber", "TriggerTime",
                                                       "AcquisitionTime", "NumberOfFrames")) + (str(sop),)


def _as_numbers(value):
    """A tag's value as numbers (to 1e-4) where it is numeric, else as written: a copy saved by
    another tool writes '[0, 0, 0]' for '[0.0, 0.0, 0.0]' (a JPEG-lossless copy was no copy)."""
    values = [value] if isinstance(value, str) or not hasattr(value, "__len__") else value   # one value, or a MultiValue
    try:
        return tuple(round(float(v), 4) for v in values)
    except (TypeError, ValueError):
        return str(value)


def scan_dicom_folder(folder, progress=None, notes=None):
    """{SeriesInstanceUID: [(path, dataset or EnhancedFrame), ...]} (one record per image, so
    an enhanced file gives one per frame) and the skipped non-DICOM files.

    Hidden files and folders (our staging folders) and our own outputs are not looked at.
    A file that is a copy of another (``_copy_key``) is read once. With a ``notes`` dict, it
    receives ``"broken"``: [(path, problem)] for empty or unreadable DICOM files (skipped, not
    fatal: they may belong to another series) and ``"duplicates"``: {series uid: [(copy,
    kept file)]}, and ``"merged"``: {uid: note} for series whose UID was rewritten per image.
    """
    folder = Path(folder)
    files = sorted((f for f in folder.rglob("*") if f.is_file() and not is_ignored_input(f, folder)),
                   key=lambda f: (len(f.relative_to(folder).parts), natural_key(f.relative_to(folder))))
    progress = as_progress(progress)
    series, skipped, broken, duplicates, seen = {}, [], [], {}, {}
    for n, f in enumerate(files):
        if n % 20 == 0:
            progress(n, len(files), "reading DICOM headers")
        try:
            ds = _read_header(f)
        except CardiacInputError as e:
            broken.append((f, e.problem))
            continue
        if ds is None:
            skipped.append(str(f))
            continue
        key = _copy_key(ds)
        if key is not None and key in seen and _same_pixels(ds, seen[key][1]):
            duplicates.setdefault(_series_key(ds), []).append((f, seen[key][0]))
            continue
        if key is not None and key not in seen:
            seen[key] = (f, ds)
        series.setdefault(_series_key(ds), []).extend(_records(f, ds))
    progress(len(files), len(files), "read DICOM headers")
    series, merged = _merge_series_split_per_image(series)
    series, per_dynamic = _merge_series_per_dynamic(series)
    merged.update(per_dynamic)
    series, echoes = _first_echo_only(series)
    merged.update(echoes)
    for items in series.values():
        _most_common_size_first(items)
        _screen_saves_last(items)
    if notes is not None:
        notes["broken"], notes["duplicates"], notes["merged"] = broken, duplicates, merged
    elif broken and not series:
        raise CardiacInputError(broken[0][0], broken[0][1])
    return series, skipped


def _most_common_size_first(items):
    """Order a series' images (in place) so that the first is of its most common matrix: the
    series is described by its first image when series are paired and told apart (stress and
    rest, images and a dual-sequence AIF series), and proton-density images acquired at a
    coarser matrix, first in the series, made it look like a low-resolution AIF series (the
    series refused as two to choose from, or the AIF series read as the perfusion; review of
    session 45). They are left out when the stack is read (``_drop_reference_images_of_another_matrix``)."""
    def size(item):
        try:
            return int(item[1].Rows), int(item[1].Columns)
        except (AttributeError, TypeError, ValueError):
            return None
    sizes = Counter(size(it) for it in items)
    if len(sizes) > 1:
        common = max(sizes, key=sizes.get)
        items.sort(key=lambda it: size(it) != common)   # stable: each size keeps its order


def _names(paths, folder, most=3):
    """'a.dcm, sub/b.dcm and 4 more' relative to the folder."""
    rel = []
    for p in paths:
        try:
            rel.append(str(Path(p).relative_to(folder)))
        except ValueError:
            rel.append(str(p))
    return ", ".join(rel[:most]) + (f" and {len(rel) - most} more" if len(rel) > most else "")


def list_dicom_series(folder):
    """[{uid, number, description, count}] for the image series in a folder."""
    with _quiet():
        series, _ = scan_dicom_folder(folder)
        return [{"uid": uid, "number": str(items[0][1].get("SeriesNumber", "")),
                 "description": str(items[0][1].get("SeriesDescription", "")), "count": len(items)}
                for uid, items in series.items()]


# A slice whose orientation is within this of its stack's is a slice of that stack, re-planned
# (a few degrees, as operators do for one slice): read as parallel to it, with a warning. A
# localiser or a long-axis view is tens of degrees off. Read apart, a tilt of 0.1 degree made
# the slice a "localiser", left out, and the stack's labels then "did not match".
TILT_TOLERANCE_DEG = 10.0


def _orientation_angle_deg(a, b):
    """Largest angle between the row directions and between the column directions of two
    ImageOrientationPatient values."""
    a, b = np.asarray(a, float), np.asarray(b, float)
    angles = []
    for u, v in ((a[:3], b[:3]), (a[3:], b[3:])):
        cos = float(np.dot(u, v) / (np.linalg.norm(u) * np.linalg.norm(v) + 1e-12))
        angles.append(np.degrees(np.arccos(np.clip(cos, -1.0, 1.0))))
    return max(angles)


def _stack_key(ds):
    """Series that can form one short-axis stack share orientation, matrix and pixel size, and
    the study (exam) they were acquired in: a prior exam's per-slice cine in the same folder,
    numbered and described alike, was merged into the current one as more slices (EDV and mass
    10 % low, or EF 26 for 51 %, exit 0; probe 77)."""
    try:
        iop = tuple(np.round([float(v) for v in ds.ImageOrientationPatient], 2))
        ps = tuple(np.round([float(v) for v in ds.PixelSpacing], 3))
        return iop, int(ds.Rows), int(ds.Columns), ps, str(ds.get("StudyInstanceUID", "") or "")
    except (AttributeError, TypeError, ValueError):
        return None


MAX_LOCALISER_IMAGES = 5


def _is_screen_save(ds):
    """Colour pixels, or no position or orientation in the patient: a secondary capture of a
    viewer's screen or report, no image of a stack."""
    if isinstance(ds, EnhancedFrame):
        return False   # its geometry is per frame, read with it
    return (int(ds.get("SamplesPerPixel", 1) or 1) > 1
            or ds.get("ImagePositionPatient") is None or ds.get("ImageOrientationPatient") is None)


def _without_screen_saves(series, notes=None):
    """``series`` without screen saves (``_is_screen_save``) when a series with both remains: a GE
    exam's RGB screen save beside its perfusion series asked for --series (probe 44). A series is
    judged by its first image; a screen save filed among a series' images is ordered last
    (``_screen_saves_last``) and left out when the series is read (``_drop_screen_saves``)."""
    return _leave_out(series, [u for u, items in series.items() if _is_screen_save(items[0][1])],
                      "a screen save (colour, or no position in the patient)", notes)


def _screen_saves_last(items):
    """Order a series' images (in place) so that screen saves filed in it come after its images:
    the series is judged and described by its first image, and a screen save first made the whole
    series one."""
    if any(_is_screen_save(ds) for _, ds in items):
        items.sort(key=lambda it: _is_screen_save(it[1]))   # stable: the rest keep their order


_MR_IMAGE_STORAGE = "1.2.840.10008.5.1.4.1.1.4"


def _drop_screen_saves(folder, uid, items):
    """(items, notes): screen saves filed in a series of images left out, as one in a series of its
    own is (``_without_screen_saves``). A scanner or workstation files its report or screen save
    (a Secondary Capture object, no geometry) under the cine's SeriesInstanceUID, and the whole
    study was refused for its "missing DICOM tag PixelSpacing" (probe 104). An MR image without
    its position is a damaged image of the stack, not a screen save: refused naming the tag, as
    is one missing PixelSpacing."""
    def sop_class(ds):
        return str(ds.get("SOPClassUID", "") or getattr(ds, "file_meta", {}).get("MediaStorageSOPClassUID", "") or "")

    def screen_save(ds):
        return _is_screen_save(ds) and (int(ds.get("SamplesPerPixel", 1) or 1) > 1 or sop_class(ds) != _MR_IMAGE_STORAGE)

    saves = [it for it in items if screen_save(it[1])]
    if not saves or len(saves) == len(items):
        return items, []
    from pydicom.uid import UID

    kinds = sorted({UID(sop_class(ds)).name or sop_class(ds) or "no SOP class" for _, ds in saves})
    why = sorted({"colour" if int(ds.get("SamplesPerPixel", 1) or 1) > 1 else "no position in the patient" for _, ds in saves})
    note = (f"{len(saves)} screen save(s) filed in series {uid} ({', '.join(kinds)}, {' or '.join(why)}: no image of "
            f"the stack) were left out: {_names([f for f, _ in saves], folder)}")
    return [it for it in items if not screen_save(it[1])], [note]


def _leave_out(series, dropped, what, notes=None):
    """``series`` less ``dropped``, each named in ``notes`` as ``what``; all of ``series`` when
    nothing, or nothing else, would remain."""
    if not dropped or len(dropped) == len(series):
        return series
    if notes is not None and len(dropped) > 3:   # an LGE or map stored one series per slice: one note
        notes.append(f"{len(dropped)} series ({_numbers_text(series, dropped)}, e.g. {_describe(dropped[0], series[dropped[0]])}): "
                     f"{what}, left out")
    elif notes is not None:
        notes.extend(f"{_describe(u, series[u])}: {what}, left out" for u in dropped)
    return {u: items for u, items in series.items() if u not in dropped}


def _orientations(items):
    """The image orientations (``_stack_key``'s, to 0.01) of a series' images."""
    return {key[0] for key in (_stack_key(ds) for _, ds in items) if key is not None}


def _without_localisers(series, notes=None):
    """``series`` without localiser/scout series (at most MAX_LOCALISER_IMAGES images in two or
    more orientations, or named so) when a series of many images remains: a SAX cine beside its
    3-plane localiser asked for --series (probe 26), as it did not in per-slice layouts."""
    def localiser(items):
        desc = str(items[0][1].get("SeriesDescription", "")).lower()
        return len(items) <= MAX_LOCALISER_IMAGES and (len(_orientations(items)) >= 2 or
                                                      re.search(r"loc|scout|survey|tripilot|3.?plane", desc) is not None)

    dropped = [u for u, items in series.items() if localiser(items)]
    if any(len(items) <= MAX_LOCALISER_IMAGES for u, items in series.items() if u not in dropped):
        return series
    return _leave_out(series, dropped, "a localiser (a few images in several planes)", notes)


def _without_single_images(series, notes=None):
    """``series`` without those of one image per slice position when another series holds two
    or more per position (a cine's phases, a first pass's dynamics): an LGE, a map (an MBF or T1
    map, a subtraction, filed by a scanner as ORIGINAL: a Siemens 'Perf_Flow_Map' beside its
    perfusion and AIF series asked for --series, probe 44) or a black-blood stack has no cycle or
    first pass to analyse. An LGE stored one series per slice beside a one-series cine was merged
    into a stack of its own and read in the cine's place (a one-frame "cine", exit 0). Five or
    more at one set of positions are dynamics of a stack exported one series per dynamic that
    could not be merged (no clock, no numbers): kept, to be chosen from. Only beside three or
    more slice positions of time series, or at their positions."""
    if len(series) < 2:
        return series
    # (positions, images per position, geometry) of each series, read once
    shape = {u: (where, _frames_per_position(items, where), _stack_key(items[0][1])) for u, items in series.items()
             for where in (_series_positions(items),)}
    # the slice positions time series cover, per image geometry (orientation, matrix, pixel size)
    covered = {}
    for where, n, key in shape.values():
        if n >= 2:
            covered[key] = covered.get(key, frozenset()) | where
    stack = any(len(where) >= 3 for where in covered.values())
    # beside a stack of them (three or more slice positions, in one series or one per slice), or
    # at a time series' own positions in its geometry (a map of its slices); a single 4-chamber
    # cine beside an LGE stack is no reason to leave the stack out: it was read as "the cine"
    # (EDV 26 mL; probe 50)
    single = [u for u, (where, n, key) in shape.items() if n == 1 and where
              and (stack or where <= covered.get(key, frozenset()))]
    at_one_place = Counter(shape[u][0] for u in single)
    if at_one_place and max(at_one_place.values()) >= MIN_SERIES_PER_DYNAMIC:
        return series
    return _leave_out(series, single, "one image per slice position (an LGE, a map or another single-phase image: no "
                                      "cycle or first pass to analyse)", notes)


# Long-axis views (2-, 3-, 4-chamber) lie at 60-90 degrees to the short axis; slices re-planned
# within a stack turn by a few degrees.
LONG_AXIS_MIN_ANGLE_DEG = 30.0


def _long_axis_choice_notes(series, uid):
    """A note when the series chosen by --series is one the folder's reading without it leaves
    out as a long-axis view: measured as a one-slice cine (EDV 11 mL, QC review for coverage),
    nothing said it was the 4-chamber view the reader itself had named (probe 88)."""
    rest = _without_localisers(_without_single_images(_without_other_acquisitions(series)[0]))
    stack = _parallel_stack(rest)
    if stack is not None and uid not in stack[0].split("+"):
        # the short axis stored one series per slice (Siemens): judged as the stack it is read as
        rest = {stack[0]: stack[1], **{u: its for u, its in rest.items() if u not in stack[0].split("+")}}
    kept = _without_long_axis_views(rest)
    if uid not in rest or uid in kept:
        return []
    stack = next(u for u in kept if len(_series_positions(rest[u])) >= 3)
    angle = float(np.degrees(np.arccos(min(1.0, abs(float(_stack_normal(series[uid][0][1]) @
                                                            _stack_normal(rest[stack][0][1])))))))
    return [f"{_describe(uid, series[uid])}, the series chosen, is a long-axis view ({angle:.0f} degrees to the "
            f"short-axis stack {_series_name(rest[stack])}): the networks segment short-axis slices, and volumes, "
            f"EF and mass need the short-axis stack; its numbers are not the heart's"]


def _without_long_axis_views(series, notes=None):
    """``series`` without the one-slice series (or two slices in two orientations) at a steep
    angle to the one stack of three or more slice positions: an exam export holds the short-axis
    cine beside its 2-, 3- and 4-chamber cines, and a folder of a SAX stack with a 4-chamber cine
    asked for --series. Left as they are unless exactly one series is a stack, and a time series
    (two or more images per slice position); two parallel slices are a short stack (a 2-slice
    short axis beside a 3-slice 4-chamber stack was left out as "a long-axis view", probe 50)."""
    def normal(items):
        return _stack_normal(items[0][1])

    counts = {u: len(_series_positions(items)) for u, items in series.items()}
    stacks = [u for u, k in counts.items() if k >= 3]
    if len(stacks) != 1 or normal(series[stacks[0]]) is None or _frames_per_position(series[stacks[0]]) < 2:
        # a stack of one image per slice (an LGE, or one phase) beside a 4-chamber cine: which
        # one is meant is the user's to say (the LGE was read as a one-phase cine; probe 50)
        return series
    axis = normal(series[stacks[0]])
    dropped = []
    for u, items in series.items():
        if u == stacks[0]:
            continue
        n = normal(items)
        if counts[u] > 2 or n is None:
            return series
        if counts[u] == 2 and len(_orientations(items)) < 2:
            return series   # two parallel slices: a short stack, perhaps the short axis itself (probe 50)
        angle = float(np.degrees(np.arccos(min(1.0, abs(float(n @ axis))))))
        if angle < LONG_AXIS_MIN_ANGLE_DEG:
            return series   # a slice parallel to the stack (a repeat, a missing part): the user chooses
        dropped.append(u)
    return _leave_out(series, dropped, "a long-axis view (one or two slices at a steep angle to the short-axis stack)",
                      notes)


def _clock_spans(series, uids):
    """{uid: (first, last) acquisition clock in seconds} of the series, or None when one has no
    clock. Times of day on both sides of midnight (a folder spanning over 12 h of the clock) are
    counted on from the evening: a stack read out from 23:59:50 to 00:00:20 is one span, not one
    from 00:00 to 23:59 that every other series overlaps (probe 34)."""
    for u in uids:
        _settle_once(series[u])
    times = {u: [t for t in (_clock_s(ds) for _, ds in series[u]) if t is not None] for u in uids}
    if any(not t for t in times.values()):
        return None
    dated = {u for u, ts in times.items() if min(ts) > _DATED_CLOCK_S}
    if dated and len(dated) < len(times):
        # one series timed by date-time (seconds since 2000), another by time of day: compare
        # them by time of day (Siemens writes AcquisitionDateTime on the images and only
        # AcquisitionTime on its AIF series; Enhanced frames carry date-times). Compared as they
        # were, the AIF series "was not acquired during" its own images (probe 56)
        times = {u: [t % 86400.0 for t in ts] if u in dated else ts for u, ts in times.items()}
    every = [t for ts in times.values() for t in ts]
    if max(every) - min(every) > 43200:
        times = {u: [t + 86400 if t < 43200 else t for t in ts] for u, ts in times.items()}
    return {u: (min(ts), max(ts)) for u, ts in times.items()}


# A clock this far past zero counts seconds since 2000 (a DICOM date-time), not since midnight.
_DATED_CLOCK_S = 10 * 86400.0


# Slice series of one acquisition read out interleaved overlap in time; a scanner that stamps each
# series with one time (its start: GE) gives points, which lie this close for one acquisition's
# slices and 10 s or more apart for consecutive breath-holds.
SAME_ACQUISITION_GAP_S = 2.0


def _acquisitions(series, uids):
    """``uids`` split into acquisitions by their clocks (lists of uids, by start): series whose
    time spans overlap, or lie within SAME_ACQUISITION_GAP_S, were read out in the same
    heartbeats (the slice series of one perfusion stack); a series that starts later is another
    acquisition (a cine slice's own breath-hold, the rest series 10-20 min after stress). None
    when a series has no clock (nothing to tell acquisitions apart by)."""
    spans = _clock_spans(series, uids)
    if spans is None:
        return None
    groups = []   # [[uids], end of the group's span]
    for u in sorted(uids, key=lambda u: spans[u][0]):
        if groups and spans[u][0] <= groups[-1][1] + SAME_ACQUISITION_GAP_S:
            groups[-1][0].append(u)
            groups[-1][1] = max(groups[-1][1], spans[u][1])
        else:
            groups.append([[u], spans[u][1]])
    return [g for g, _ in groups]


def _positions_of(series, uids):
    return set().union(*(_series_positions(series[u]) for u in uids))


def _repeated_stacks(series, uids):
    """Two or more acquisitions among ``uids`` that each cover the whole stack (every slice
    position of them all, 3 or more), as stress and rest stored one series per slice and
    described alike (Philips): two studies, not one stack with every slice "repeated" (the later
    acquisition had replaced the earlier one's slices, exit 0). A breath-hold of a few cine
    slices acquired again covers part of the stack and stays a repeat. [] else; None when the
    series cannot be told apart (a series without a clock, or one start time for all) although
    most slice positions were acquired in two or more of them, or two runs of their series
    numbers lie among each other (``_interleaved_number_runs``)."""
    everywhere = _positions_of(series, uids)
    if len(everywhere) < 3:
        return []
    groups = _acquisitions(series, uids)
    complete = [g for g in groups or [] if len(g) > 1 and _positions_of(series, g) == everywhere]
    if len(complete) >= 2:
        return complete
    overlapping = _overlapping_stacks(series, groups or [])
    if len(overlapping) >= 2:
        return overlapping
    if (groups is None or len(groups) == 1) and _most_positions_twice(series, uids):
        # most positions acquired twice, nothing in the clocks to part them: two stacks. With
        # every one required, a rest slice planned a few mm off the stress's let the two merge
        # into one stack, the rest's slices in the stress's place (MBF -62 %, QC pass; probe 56)
        return None
    if (groups is None or len(groups) == 1) and _interleaved_number_runs(series, uids):
        return None
    return []


def _most_positions_twice(series, uids):
    """Half or more of the slice positions of ``uids`` (two at least) lie in two or more series."""
    everywhere = _positions_of(series, uids)
    where = [_series_positions(series[u]) for u in uids]
    twice = sum(sum(p in w for w in where) >= 2 for p in everywhere)
    return twice >= max(2, 0.5 * len(everywhere))


# Series numbers of one acquisition's slice series follow each other (1, 2, 3 or 701, 801, 901);
# a later acquisition of the same stack (the rest, 10-20 min after stress, other scans between)
# starts a run this many times the widest step within either run further on.
NUMBER_RUN_BREAK_FACTOR = 3


def _interleaved_number_runs(series, uids):
    """Two runs of slice series (one position each) parted by a break in their series numbers
    (``NUMBER_RUN_BREAK_FACTOR``) whose positions lie among each other along the slice normal,
    each run spanning half or more of the stack: stress and rest stored one series per slice,
    described alike and with no clock to part them, the rest planned a few millimetres off the
    stress's positions (read as one stack of both: MBF -25 %, review only from the LV's AIF;
    probe 56). A stack continued in a later breath-hold lies beside the first part, not among
    it. [] when there are no such runs, else the two runs (lists of uids by number)."""
    slice_series = [u for u in uids if len(_series_positions(series[u])) == 1]
    if len(slice_series) < 4 or len(slice_series) != len(uids) or any(_series_number(series[u]) <= 0 for u in uids):
        return []   # numbers missing (read as 0): nothing to part the series by
    by_number = sorted(slice_series, key=lambda u: _series_number(series[u]))
    numbers = [_series_number(series[u]) for u in by_number]
    steps = np.diff(numbers)
    cut = int(np.argmax(steps)) + 1
    runs = [by_number[:cut], by_number[cut:]]
    within = [step for k, step in enumerate(steps) if k != cut - 1]
    if min(len(r) for r in runs) < 2 or steps[cut - 1] <= NUMBER_RUN_BREAK_FACTOR * max(max(within), 1):
        return []
    if _positions_of(series, runs[0]) & _positions_of(series, runs[1]):
        # a retake repeats its slice's exact position: cine slices acquired again after other
        # scans (a clockless 6-slice cine with two retakes was refused as "stress and rest?"),
        # where the rest planned apart shares none (helper-85's review)
        return []
    return runs if len(_overlapping_stacks(series, runs)) == 2 else []


def _overlapping_stacks(series, groups):
    """The acquisitions among ``groups`` (``_acquisitions``) that are each a stack of two or more
    slice series spanning half or more of all of them along the slice normal, and overlapping
    another such: stress and rest stored one series per slice and described alike, the rest
    planned a few millimetres off the stress (not at exactly its positions). They had been merged
    into one stack of both, rest slices between stress slices or in their place (MBF -25 to -62 %,
    QC pass; probe 56). A cine read two slices per breath-hold gives short stacks side by side
    along the normal, and a pair of them acquired again one short stack over another."""
    spans = []
    for g in groups:
        if len(g) < 2:
            continue
        positions = [_series_positions(series[u]) for u in g]
        if any(len(p) != 1 for p in positions):
            continue   # a series of several positions, or a position read twice: not slice series
        normal = _stack_normal(series[g[0]][0][1])
        if normal is None:
            return []
        along = [float(np.dot(next(iter(p)), normal)) for p in positions]
        spans.append((g, min(along), max(along)))
    if len(spans) < 2:
        return []
    whole = max(hi for _, _, hi in spans) - min(lo for _, lo, _ in spans)
    spans = [(g, lo, hi) for g, lo, hi in spans if hi - lo >= 0.5 * whole]
    return [g for g, lo, hi in spans
            if any(other is not g and lo <= other_hi and other_lo <= hi for other, other_lo, other_hi in spans)]


def _stack_normal(ds):
    """The unit slice normal of an image's ImageOrientationPatient, or None when unreadable."""
    try:
        iop = np.array([float(v) for v in ds.ImageOrientationPatient])
    except (AttributeError, TypeError, ValueError):
        return None
    normal = np.cross(iop[:3], iop[3:6])
    size = np.linalg.norm(normal)
    return normal / size if size > 0.5 else None


def _positive_mm(value):
    """A header length in millimetres as a float, or None when it is missing, unreadable or not
    positive."""
    try:
        value = float(value)
    except (TypeError, ValueError):
        return None
    return value if np.isfinite(value) and value > 0 else None


def _series_number(items):
    try:
        return int(items[0][1].get("SeriesNumber", 0) or 0)
    except (TypeError, ValueError):
        return 0


def _repeated_stacks_hint(series, folder):
    """'; ... acquisitions ...' naming each complete stack's series and start time and the flags
    that read them, when the folder holds ``_repeated_stacks``, else ""."""
    for group in _stack_groups(series).values():
        if len(group) < 2:
            continue
        stacks = _repeated_stacks(series, group)
        spans = _clock_spans(series, group) if stacks is None else None
        if spans and all(last - first > 1.0 for first, last in spans.values()):
            # clocks that run through each series and put them all in one span: the same
            # acquisition stored twice or more, ORIGINAL each (a Siemens NORM intensity-corrected
            # copy beside the ND one, a re-UIDed compressed copy), once refused as "no clock ...
            # stress and rest?" (probe 44); one time for every image still tells nothing
            numbers = sorted({_series_number(series[u]) for u in group})
            return (f"; {_numbers_text(series, group)} hold the same slice positions over the same acquisition times: "
                    "copies of one acquisition (an intensity-normalised or otherwise reconstructed copy, each stored as "
                    f"ORIGINAL?); give --series with the one to read (--series {numbers[0]})")
        runs = _interleaved_number_runs(series, group) if stacks is None and not _most_positions_twice(series, group) else []
        if runs:
            return (f"; the slice positions of {' and '.join(_numbers_text(series, r) for r in runs)}, numbered as two "
                    "acquisitions, lie among each other, and their acquisition clocks do not tell the acquisitions apart "
                    "(no clock, or one time for all): two stacks (stress and rest?) planned a few millimetres apart; put "
                    "each acquisition's series in a folder of its own")
        if stacks is None:
            return (f"; most slice positions of {_numbers_text(series, group)} were acquired in two or more of these "
                    "series, whose acquisition clocks do not tell the acquisitions apart (no clock, or one time for all): "
                    "two stacks (stress and rest?); put each acquisition's series in a folder of its own")
        if not stacks:
            continue
        return _acquisitions_text(series, stacks, _clock_spans(series, group), folder)
    # stress and rest stored one series per slice with as many images per slice as each has
    # dynamics (64 and 48): two stack groups of one acquisition each, listed as 6 series with no
    # word of the two acquisitions (probe 82)
    whole = [g for g in _stack_groups(series).values() if len(g) > 1 and len(_acquisitions(series, g) or []) == 1]
    spans = [_clock_spans(series, g) for g in whole]
    described = {str(series[u][0][1].get("SeriesDescription", "")).strip().lower() for g in whole for u in g}
    if len(whole) >= 2 and all(spans) and len(described) == 1:   # described alike (a cine beside its LGE is not)
        joined = {u: span for one in spans for u, span in one.items()}
        if len(_acquisitions(series, [u for g in whole for u in g]) or []) == len(whole):   # minutes apart, not interleaved
            return _acquisitions_text(series, sorted(whole, key=lambda g: min(joined[u][0] for u in g)), joined, folder)
    return ""


def _repeated_acquisitions_hint(series, folder):
    """'; #20 ... and #30 ... are 2 acquisitions of the same slice positions 20 min apart ...'
    when two or more series (one whole stack each) of one stack group were acquired apart
    (``_acquisitions``), else "": stress and rest under one protocol name were listed as "5
    series, choose one" with no word that #20 and #30 are two acquisitions 20 minutes apart, nor
    the flags that read them (probe 86). Stacks stored one series per slice are
    ``_repeated_stacks_hint``'s."""
    for group in _stack_groups(series).values():
        acquisitions = _acquisitions(series, group) if len(group) >= 2 else None
        everywhere = _positions_of(series, group)
        if not acquisitions or len(acquisitions) < 2 or \
                any(len(g) != 1 or _positions_of(series, g) != everywhere for g in acquisitions):
            continue
        perfusion = any(description_hint(series[u][0][1]) == PERFUSION for u in group)
        return _acquisitions_text(series, acquisitions, _clock_spans(series, group), folder, with_rest=perfusion)
    return ""


def _series_choice(series, uid):
    """What --series takes to read ``uid``: its number where no other series here has it, else
    its UID (a hint offered "--series 0" twice for series without SeriesNumber, and "--series 1"
    twice where every series is numbered 1; review of session 41)."""
    number = _series_number(series[uid])
    if number > 0 and sum(_series_number(its) == number for its in series.values()) == 1:
        return number
    return uid


def _acquisitions_text(series, stacks, spans, folder, with_rest=True):
    """'; #701/#702/#703 'PERF SA' (started 10:00:00, 3 slice series) and ... are 2 acquisitions
    ... --series ...': the hint for acquisitions of one stack, each one series or one series per
    slice (``stacks``: their uids, by start); ``with_rest``: add the flags for stress with rest."""
    starts = [min(spans[u][0] for u in g) for g in stacks]
    parts = [f"{_numbers_text(series, g)} {str(series[g[0]][0][1].get('SeriesDescription', '')) or '(no description)'!r} "
             f"(started {_clock_text(t)}{f', {len(g)} slice series' if len(g) > 1 else ''})" for g, t in zip(stacks, starts)]
    text = (f"; {' and '.join(parts)} are {len(stacks)} acquisitions of the same slice positions"
            f"{'' if all(_positions_of(series, g) == _positions_of(series, stacks[0]) for g in stacks) else ' (or nearly)'} "
            f"{(max(starts) - min(starts)) / 60:.0f} min apart")
    if all(len(g) > 1 for g in stacks):
        first = [_series_number(series[sorted(g, key=lambda u: _series_number(series[u]))[0]]) for g in stacks]
        text += (f", each stored one series per slice: --series {first[0]} reads the first's whole stack (any of its "
                 "series' numbers does)")
    else:
        choices = [_series_choice(series, g[0]) for g in stacks]
        text += f": --series {choices[0]} reads the first, --series {choices[-1]} the last"
    if with_rest:
        text += f"; for stress with rest: --series STRESS_NUMBER --rest {folder} --rest-series REST_NUMBER"
    return text


def _numbers_text(series, uids):
    return "/".join(f"#{series[u][0][1].get('SeriesNumber', '?')}" for u in sorted(uids, key=lambda u: _series_number(series[u])))


def _clock_text(seconds):
    seconds = seconds % 86400
    return f"{int(seconds // 3600):02d}:{int(seconds % 3600 // 60):02d}:{int(seconds % 60):02d}"


def _stack_groups(series):
    """{key: [uids]}: the series that could be slices of one stack (orientation, matrix, pixel
    size and images per position alike), as ``_parallel_stack`` merges them."""
    groups = {}
    for uid, items in series.items():
        key = _stack_key(items[0][1])
        if key is None:
            continue
        # the images per slice position are part of the key: a Siemens exam stores the cine
        # (20-30 phases), the LGE (1 image) and the MOLLI (8-11) one series per slice at the same
        # positions, matrix and pixel size, and the LGE slices had replaced the cine's as
        # "repeated slices" (a one-frame LGE stack measured as the cine, exit 0). Counts within
        # 25 % are one acquisition: a slice short of a phase, prospective triggering's 20/19/18
        key = (*key, _frames_per_position(items))
        # a series tilted a few degrees against a group (one slice re-planned) joins it, as does
        # one stored rotated 180° or mirrored in the stack's plane, tilted or not (put back when read:
        # _drop_stray_orientations)
        near = next((k for k in groups if k[1:-1] == key[1:-1] and _similar_frame_counts(k[-1], key[-1])
                     and (_orientation_angle_deg(k[0], key[0]) < TILT_TOLERANCE_DEG
                          or _axis_reversals(k[0], key[0]) is not None)), None)
        groups.setdefault(near or key, []).append(uid)
    return groups


def _acquisition_stack(series, uid):
    """The slice series acquired together with ``uid`` (``_acquisitions``) that form one stack
    with it (same orientation, matrix, pixel size and images per position; each its own slice
    positions), merged as ('uid+uid+...', items); None when ``uid`` is a stack of its own.
    ``--series 701`` then reads the whole perfusion stack that series 701 is one slice of."""
    key = _stack_key(series[uid][0][1])
    if key is None:
        return None
    # a scanner's derived copies (MOCO) share the original's clocks and positions: not slices of it
    derived = _is_derived(series[uid][0][1])
    alike = [u for u, its in series.items() if _stack_key(its[0][1]) == key and _is_derived(its[0][1]) == derived
             and _similar_frame_counts(_frames_per_position(its), _frames_per_position(series[uid]))]
    groups = _acquisitions(series, alike)
    if groups is None:   # without clocks nothing shows which series were acquired together
        return None
    together = next((g for g in groups if uid in g), [uid])
    if len(together) < 2:
        return None
    positions = [_series_positions(series[u]) for u in together]
    if any(not p for p in positions) or sum(len(p) for p in positions) != len(set().union(*positions)):
        return None   # a position read twice within one acquisition: not slice series of one stack
    together = sorted(together, key=lambda u: _series_number(series[u]))
    return "+".join(together), [it for u in together for it in series[u]]


def _parallel_stack(series, notes=None):
    """One stack from several series of parallel slices, or None.

    Many scanners (Siemens in particular) store a cine short-axis stack as one series per
    slice. Series with the same orientation, matrix and pixel size are merged; the stack
    with the most slice positions wins when it is clearly the largest (at least 3 positions
    and more than any other group), so a stray long-axis series or localiser is left out.
    """
    groups = _stack_groups(series)

    def n_positions(uids):
        return len(set().union(*(_series_positions(series[uid]) for uid in uids)))

    # a stack of several images per position (cine, perfusion) before one of single images (an
    # LGE per slice, with more slices than the cine: it had won on its count), then most positions
    def rank(uids):
        return _frames_per_position(series[uids[0]]) > 1, n_positions(uids)

    ranked = sorted(((n_positions(u), u) for u in groups.values() if len(u) > 1), key=lambda x: rank(x[1]), reverse=True)
    if not ranked or (len(ranked) > 1 and rank(ranked[1][1]) == rank(ranked[0][1])):
        return None
    if ranked[0][0] < 3 and not _two_slices_read_together(series, ranked[0][1]):
        return None
    if max(len(_series_positions(series[u])) for u in ranked[0][1]) == ranked[0][0]:
        return None   # one series alone covers the stack: the others are other acquisitions (rest/stress), not parts
    if not rank(ranked[0][1])[0] and any(_frames_per_position(items) > 1 for items in series.values()):
        return None   # an LGE stored per slice beside a lone 4-chamber cine: which to read is the user's to say
    if sum(any(_names_role(series[u], role) for u in ranked[0][1]) for role in PERFUSION_ROLES) > 1:
        # stress and rest, each stored one series per slice: two stacks, not one with every
        # slice "repeated" (the rest series, being later, replaced the stress slices)
        return None
    if _repeated_stacks(series, ranked[0][1]) != []:
        # the same, described alike: told apart by their clocks, or not at all (_repeated_stacks_hint says so)
        return None
    uids = _drop_repeated_positions(series, ranked[0][1], notes)
    items = [it for uid in uids for it in series[uid]]
    # only a stack of two one-slice series read out in the same heartbeats, not named a cine, is a
    # short perfusion stack: a cine of 12 slices beside one re-acquired slice was told it (probe 104)
    if notes is not None and _two_slices_read_together(series, uids) and description_hint(items[0][1]) != CINE:
        notes.append(f"{_numbers_text(series, uids)}, one slice each and acquired in the same heartbeats, are read as one "
                     "stack of 2 slices, whose AHA levels are taken as basal and mid; a perfusion exam usually has 3-4: if "
                     "a slice's series is missing from the export, check which levels these two are")
    if notes is not None:
        notes.extend(_slices_near_another_series(series, uids))
        # series at the stack's positions with another number of images (LGE, T1 mapping): left
        # out, and said, since a slice re-acquired with another phase count is left out too
        positions = _series_positions(items)
        stack_key = _stack_key(items[0][1])
        others = [u for u, its in series.items() if u not in ranked[0][1] and _stack_key(its[0][1]) == stack_key
                  and _series_positions(its) & positions]
        if others:
            notes.append(_RelatedNote(
                f"{len(others)} series at the stack's slice positions with another number of images per position "
                f"(e.g. {_describe(others[0], series[others[0]])}: {_frames_per_position(series[others[0]])}, the stack "
                f"{_frames_per_position(series[ranked[0][1][0]])}) are other acquisitions and were left out",
                related=set(uids)))
        merged = "+".join(uids)
        # not a dual-sequence AIF series that pairs with the stack: read as its AIF, it was also
        # said to be "left out: a slice re-acquired with another field of view?" (probe 86)
        resized = [u for u in _parallel_series_of_another_size(series, ranked[0][1], stack_key, positions)
                   if _pair_but_for_the_clocks({merged: items, u: series[u]}) != (merged, u)]
        if resized:
            notes.append(_RelatedNote(
                f"{len(resized)} series parallel to the stack and within its span, with another matrix or pixel size "
                f"(e.g. {_describe(resized[0], series[resized[0]])}: {_size_text(series[resized[0]])}, the stack "
                f"{_size_text(items)}), were left out: a slice re-acquired with another field of view? The stack is "
                "read without it", related=set(uids)))
    return "+".join(uids), items


def _slices_near_another_series(series, uids):
    """A note for each series of a merged stack that holds a slice a few millimetres from a slice
    of an earlier series: a slice re-acquired off its original (a retake after a failed
    breath-hold) is read as one more slice of the stack, with no word of which series it is but
    an "uneven slice spacing" list (probe 104). A few millimetres: less than the slice thickness
    (the two overlap) and less than a third of the stack's spacing without that slice. Half the
    spacing with it called planned uneven stacks retakes: a perfusion stack stored one series
    per slice at 0, 8 and 40 mm, or 4 slices at 0, 10, 32 and 54 mm (review 2)."""
    normal = _stack_normal(series[uids[0]][0][1]) if len(uids) >= 2 else None
    if normal is None:
        return []

    def along_normal(items):
        # from the positions as written: _series_positions' 0.1 mm rounding of each coordinate
        # made a 2.0 mm retake "2.1 mm" off
        found = set()
        for _, ds in items:
            try:
                found.add(round(float(np.dot([float(v) for v in ds.ImagePositionPatient], normal)), 3))
            except (AttributeError, TypeError, ValueError):
                continue
        return sorted(found)

    along = {u: along_normal(series[u]) for u in uids}
    every = np.sort([a for values in along.values() for a in values])
    if every.size < 3:
        return []
    ordered = sorted(uids, key=lambda u: _series_number(series[u]))
    notes = []
    for i, later in enumerate(ordered):
        thickness = _positive_mm(series[later][0][1].get("SliceThickness")) or math.inf
        for earlier in ordered[:i]:
            distance, suspect = min(((abs(a - b), a) for a in along[later] for b in along[earlier]),
                                    default=(math.inf, None))
            if suspect is None:
                continue
            # the spacing of the other slices: with the suspect in, a 3-slice stack's smaller gap
            # set the median it was measured against
            others = np.delete(every, int(np.argmin(np.abs(every - suspect))))
            if distance < thickness and distance < float(np.median(np.diff(others))) / 3.0:
                notes.append(f"#{_series_number(series[later])} lies {distance:.1f} mm from a slice of "
                             f"#{_series_number(series[earlier])}: a re-acquired slice? Both are read as slices of the stack")
                break
    return notes


def _size_text(items):
    ds = items[0][1]
    return f"{ds.Columns}x{ds.Rows} of {float(ds.PixelSpacing[1]):g} x {float(ds.PixelSpacing[0]):g} mm"


def _parallel_series_of_another_size(series, stack_uids, stack_key, stack_positions):
    """The series not in the stack that are slices parallel to it (same orientation), lying
    within its span along the normal, with its images per position but another matrix or pixel
    size: a slice re-acquired with a larger field of view was left out with no word but a
    "slice gap" (probe 58)."""
    normal = _stack_normal(series[stack_uids[0]][0][1])
    if normal is None:
        return []
    along = [float(np.dot(p, normal)) for p in stack_positions]
    frames = _frames_per_position(series[stack_uids[0]])
    found = []
    for u, its in series.items():
        key = _stack_key(its[0][1])
        if u in stack_uids or key is None or key == stack_key or key[0] != stack_key[0]:
            continue
        if not _similar_frame_counts(_frames_per_position(its), frames):
            continue
        if all(min(along) <= float(np.dot(p, normal)) <= max(along) for p in _series_positions(its)):
            found.append(u)
    return found


def _two_slices_read_together(series, uids):
    """True when ``uids`` are two series of one slice position each, several images per position,
    whose clocks put them in the same heartbeats: a two-slice perfusion stored one series per slice
    (Siemens, GE). It asked to choose one series, and read that one slice; two cine slices are two
    breath-holds, and without clocks nothing shows they were read together (``_short_stack_hint``)."""
    if len(uids) != 2 or any(len(_series_positions(series[u])) != 1 for u in uids):
        return False
    if _frames_per_position(series[uids[0]]) < 2:
        return False
    groups = _acquisitions(series, uids)
    return groups is not None and len(groups) == 1


class _RelatedNote(str):
    """A note about a folder's other series that matters only when the series it concerns
    (``related``: uids) is the one read: a cine run was told of perfusion MOCO copies left out."""

    def __new__(cls, text, related=()):
        note = super().__new__(cls, text)
        note.related = set(related)
        return note


def notes_for(notes, uid):
    """The notes that concern the series ``uid`` read (a merged stack: 'uid+uid+...')."""
    picked = set(str(uid).split("+"))
    return [n for n in notes if not getattr(n, "related", None) or n.related & picked]


def _similar_frame_counts(a, b):
    """Images per position of one acquisition's slice series: within 25 % of each other (a cine
    slice a phase short, 16-20 phases of a re-acquired slice), and never one image against
    several (LGE beside cine)."""
    lo, hi = min(a, b), max(a, b)
    return hi <= 1.25 * lo and (lo > 1 or hi == 1)


def _frames_per_position(items, positions=None):
    """Images per slice position of a series (rounded): the phases of a cine, the dynamics of
    a perfusion series, 1 for LGE. ``positions``: its ``_series_positions``, when read already."""
    positions = _series_positions(items) if positions is None else positions
    return int(round(len(items) / max(len(positions), 1)))


def _most_frames_at_a_position(items):
    """The most images any one slice position of a series holds (0 without positions)."""
    counts = Counter(p for p in (_position_key(ds) for _, ds in items) if p is not None)
    return max(counts.values(), default=0)


def _short_stack_hint(series):
    """'; ... a slice series missing?' when two series of one slice each share geometry and
    description (a stack stored one series per slice, ``_parallel_stack`` needs 3 positions to
    merge one), else ""."""
    groups = {}
    for uid, items in series.items():
        key = _stack_key(items[0][1])
        if key is not None and len(_series_positions(items)) == 1:
            groups.setdefault((key, str(items[0][1].get("SeriesDescription", ""))), []).append(uid)
    for (_, desc), uids in groups.items():
        if len(uids) == 2 and len(set().union(*(_series_positions(series[u]) for u in uids))) == 2:
            numbers = " and ".join(f"#{series[u][0][1].get('SeriesNumber', '?')}" for u in uids)
            return (f"; {numbers} ({desc!r}) look like one stack stored one series per slice with only 2 slice "
                    "positions: is a slice's series missing from the export?")
    return ""


def _position_key(ds):
    """The image's ImagePositionPatient to 0.1 mm, or None when it has none readable."""
    try:
        return tuple(np.round([float(v) for v in ds.ImagePositionPatient], 1))
    except (AttributeError, TypeError, ValueError):
        return None


def _series_positions(items):
    return frozenset(p for p in (_position_key(ds) for _, ds in items) if p is not None)


def _drop_repeated_positions(series, uids, notes=None):
    """A slice acquired twice (a repeat after a failed breath-hold) keeps its last series;
    ``notes`` (a list) receives a warning naming both, since the choice changes the volume."""
    def number(uid):
        return _series_number(series[uid])

    keep = {}
    for uid in sorted(uids, key=number):
        where = _series_positions(series[uid])
        if where in keep and notes is not None:
            notes.append(f"a slice position was acquired in two series, {_describe(keep[where], series[keep[where]])} and "
                         f"{_describe(uid, series[uid])}: the later series (#{number(uid)}) is used (to use the earlier one, "
                         "leave the later series out of the folder)")
        keep[where] = uid   # later series replace earlier ones
    return sorted(keep.values())


def pick_main_and_aif(series):
    """(main uid, AIF uid) when a folder holds one perfusion series and its low-resolution
    dual-sequence AIF series (read by ``aif_series``).

    series: {uid: [(path, dataset), ...]}. The AIF series has at most half the pixels per image
    of the other and about as many images (one per heartbeat, like the main series, times its
    slice count); descriptions with 'aif' support it. None when the folder is not such a pair.
    """
    pair = _pair_but_for_the_clocks(series)
    if pair is None:
        return None
    i2, i1 = series[pair[0]], series[pair[1]]
    if _has_clock(i1) and _has_clock(i2) and not _acquired_together(i2, i1):
        # another acquisition (a rest AIF series 15 min later beside the stress images: MBF -18 %)
        return None
    if _other_study(i2, i1):
        return None
    return pair


def _study_uids(items):
    return {str(ds.get("StudyInstanceUID", "") or "").strip() for _, ds in items} - {""}


def _several_studies_hint(series):
    """A hint naming the studies (exams) ``series`` belong to when there are several, else "": a
    prior exam exported beside the current one, numbered and described alike, is not told apart
    by a list of series (probe 77)."""
    studies = {}
    for uid, items in series.items():
        ds = items[0][1]
        study = str(ds.get("StudyInstanceUID", "") or "")
        if study:
            studies.setdefault(study, [ds, 0])[1] += 1
    if len(studies) < 2:
        return ""

    def text(ds, n):
        date = str(ds.get("StudyDate", "") or "")
        when = f"{date[:4]}-{date[4:6]}-{date[6:8]}" if len(date) == 8 and date.isdigit() else "no date"
        about = str(ds.get("StudyDescription", "") or "").strip()
        return f"{when}{f' {about!r}' if about else ''} ({n} series, StudyInstanceUID {ds.StudyInstanceUID})"

    return (f"; they belong to {len(studies)} studies (exams) of this patient: "
            + "; ".join(text(ds, n) for ds, n in sorted(studies.values(), key=lambda v: str(v[0].get("StudyDate", ""))))
            + ". One analysis reads one exam: give a folder that holds one study's images")


def _other_study(items, other_items):
    """The StudyInstanceUID(s) of ``other_items`` when both series name their study and none is
    ``items``' own, else None. A dual-sequence AIF series is acquired in the same heartbeats as its
    images, so it is always of their study; another exam's (another patient's under one anonymised
    ID, or another day's) paired by size and frame count alone gave MBF from someone else's blood
    with QC pass (probe 52)."""
    own, other = _study_uids(items), _study_uids(other_items)
    return sorted(other) if own and other and not own & other else None


def _pair_but_for_the_clocks(series):
    """(main uid, AIF uid) of two series that pair as images and their dual-sequence AIF series
    by size, image count and slice positions (``pick_main_and_aif`` without the clocks)."""
    if len(series) != 2:
        return None
    (u1, i1), (u2, i2) = sorted(series.items(), key=lambda kv: int(kv[1][0][1].Rows) * int(kv[1][0][1].Columns))
    small, large = i1[0][1], i2[0][1]
    px_small, px_large = int(small.Rows) * int(small.Columns), int(large.Rows) * int(large.Columns)
    desc = str(small.get("SeriesDescription", "")).lower()
    if px_small > 0.5 * px_large and "aif" not in desc:
        return None
    small_roles, large_roles = _roles_named(i1), _roles_named(i2)
    if "aif" not in desc and small_roles != large_roles and ((small_roles and large_roles) or not _looks_like_aif_series(i1)):
        # a stress and a rest are two acquisitions, whatever their sizes: a GE stress at 96 px
        # beside its rest at 192 px paired as the rest's AIF series, and `--series stress` read the
        # rest with the stress as its AIF (session 40's review); so did a 'Perfusion' beside a
        # 'Perfusion_rest' unless it looks like an AIF series (small, or so named; review of
        # session 41). An unnamed 48-px AIF series beside 'Perfusion_stress' still pairs
        return None
    if len(i1) < 8 or len(i2) < 8:
        return None
    # one image per slice per heartbeat in both: as many dynamics per slice position, give or
    # take the main series' proton-density frames and a file or two lost in an export (an exact
    # count ratio left a 2-file-short AIF series out, unsaid, or asked to choose a series)
    # the most at any one position: a slice acquired every other beat (60/60/30) left the images
    # at 50 per position, no pair, and the folder was refused as "2 series, choose one" with no
    # reason; paired, the images' reader names the short slice (probe 56)
    n_small, n_large = _most_frames_at_a_position(i1), _most_frames_at_a_position(i2)
    if _series_positions(i1) and _series_positions(i2):
        # or the AIF series read out in every heartbeat and the images' slices in every other
        # (a fast heart rate): twice the frames (probe 102: "2 series, choose one", and with
        # --series the AIF was taken from the LV instead); its heartbeats are matched on the clock
        if (abs(n_large - n_small) > max(MAX_AIF_FRAME_DIFFERENCE, 0.1 * n_large) and not aif_read_every_beat(n_small, n_large)) \
                or not 1 <= len(_series_positions(i2)) <= 6:
            return None
    else:
        ratio = len(i2) / len(i1)
        if abs(ratio - round(ratio)) > 0.1 or not 1 <= round(ratio) <= 6:
            return None
    return u2, u1


def _unpaired_aif_hint(series):
    """'; #2 ... was acquired apart from #1' when two series would pair as images and their AIF
    series but for their acquisition clocks, else "" (also without descriptions: an anonymiser
    that shifted each series' times by its own offset left "2 series, choose one" unexplained,
    probe 48)."""
    pair = _pair_but_for_the_clocks(series)
    if pair is None:
        return ""
    (u2, i2), (u1, i1) = ((u, series[u]) for u in pair)
    named = "aif" in str(i1[0][1].get("SeriesDescription", "")).lower()
    other_study = _other_study(i2, i1)
    if other_study:
        return (f"; {_describe(u1, i1)} {'is named like' if named else 'pairs as'} a dual-sequence AIF series but belongs to "
                f"another study (StudyInstanceUID {other_study[0]}, not #{i2[0][1].get('SeriesNumber', '?')}'s "
                f"{sorted(_study_uids(i2))[0]}), so it is not used as its AIF: give --series for the images (AIF then from "
                "their LV blood pool), and keep one exam per folder")
    if not (_has_clock(i1) and _has_clock(i2)) or _acquired_together(i2, i1):
        return ""
    return (f"; {_describe(u1, i1)} {'is named like' if named else 'pairs as'} a dual-sequence AIF series but was not acquired during "
            f"#{i2[0][1].get('SeriesNumber', '?')} (its acquisition times lie outside that series'), so it is not used "
            "as its AIF: give --series for the images (AIF then from their LV blood pool) and the AIF series of the same "
            "acquisition with --aif FOLDER")


MAX_AIF_FRAME_DIFFERENCE = 4   # PD frames of one series only (1-3) and a lost file or two


def aif_read_every_beat(n_aif, n_images):
    """Whether a dual-sequence AIF series of ``n_aif`` frames was read out every heartbeat beside
    images of ``n_images`` read every other (twice the frames, give or take as above)."""
    return abs(n_aif - 2 * n_images) <= max(MAX_AIF_FRAME_DIFFERENCE, 0.1 * n_aif)


def _has_clock(items):
    # on the series' one clock tag, as the pairing reads it: a ContentTime that is one value for
    # all (anonymised to 000000) is no clock, yet read unsettled it made a Philips AIF series
    # "not acquired during" its images (probe 48)
    _settle_once(items)
    return any(_clock_s(ds) is not None for _, ds in items)


def _settle_once(items):
    """``_settle_clock_tag`` unless done: each series is read on its one clock tag, as its frames
    will be (a reconstruction time that is one value for all is no clock); every pairing asks again."""
    if items and getattr(items[0][1], _CLOCK_TAG, None) is None:
        _settle_clock_tag(items)


PERFUSION_ROLES = ("stress", "rest")


# What names a role: 'stress' anywhere ('PERFSTRESS' joins it to a word; no other word holds it),
# the stress agent as a word start ('Adenosine perfusion', 'Regadenoson_perf', 'Perf_ATP' name no
# 'stress' but are the stress series), 'rest' as a word start only ('interest', 'forest') or
# joined to 'perf' ('PERFREST'), the abbreviations STR and RST as words, and the German, French,
# Spanish and Italian words (Belastung / Ruhe, repos, reposo, riposo; 'repos' as a whole word:
# 'Perf after repositioning' is no rest, probe 50). Each of these asked for --series (probe 47).
_ROLE_WORDS = {"stress": r"stress|belastung|(?<![a-z])(?:adenosin|regadenoson|lexiscan|dipyridamol|persantin"
                         r"|(?:atp|str)(?![a-z]))",
               "rest": r"(?:(?<![a-z])|(?<=perf))rest(?!art|or|ric)|(?<![a-z])(?:rst(?![a-z])|ruhe|reposo?(?![a-z])|riposo)"}


def _names_role(items, role):
    """True when the series' description names ``role`` (``_ROLE_WORDS``: 'Perfusion_REST',
    'Resting', 'PerfStress' in CamelCase, 'PERFSTRESS', 'Adenosine perfusion' for stress; not
    'forest', nor 'restart' or 'restore': an AIF series 'Perf_AIF_restart' was taken for the
    rest's, probe 45)."""
    return _description_names(str(items[0][1].get("SeriesDescription", "")), role)


def _description_words(description):
    """A description in lower-case words: 'PerfStressAIF' -> 'perf stress aif'."""
    return re.sub(r"(?<=[a-z])(?=[A-Z])", " ", str(description or "")).lower()


def _description_names(description, role):
    return re.search(_ROLE_WORDS[role], _description_words(description)) is not None


def role_named(description):
    """'stress' or 'rest' when a series description names that role alone, else None (it names
    none or both: 'AIF_stress_rest_protocol', 'Perf_rest_after_stress' say whose they are no
    more than 'AIF_perfusion' does)."""
    roles = [role for role in PERFUSION_ROLES if _description_names(str(description or ""), role)]
    return roles[0] if len(roles) == 1 else None


def _roles_named(items):
    """{the perfusion role} the series' description names alone (``role_named``), else empty."""
    role = role_named(items[0][1].get("SeriesDescription", ""))
    return {role} if role else set()


def _aif_candidates(uid, items, series):
    """The series here that pair with ``uid`` (``items``) as its dual-sequence AIF series."""
    return [other for other, its in series.items()
            if other not in uid.split("+") and pick_main_and_aif({uid: items, other: its}) == (uid, other)]


def _mains_of(aif, series, but=()):
    """The series here, but ``but``, that ``aif`` pairs with as their dual-sequence AIF series."""
    return [other for other, its in series.items()
            if other != aif and other not in but and pick_main_and_aif({other: its, aif: series[aif]}) == (other, aif)]


def _aif_partner(uid, items, series, role=None):
    """The dual-sequence AIF series of the chosen ``uid`` among the folder's others (a folder
    with the motion-corrected copy or the rest series beside them needs --series, and the
    chosen series keeps its AIF): the one other series that pairs with it as its AIF, else None.
    ``role``: the role ('stress', 'rest') it was chosen for, else the one its description names."""
    partners = _aif_candidates(uid, items, series)
    # an AIF series is read out in the same heartbeats as its main series, so its clock runs
    # within theirs: that decides before any name does (a stress AIF series named 'Perf_REST_AIF'),
    # unless another main series' clock holds it too (stress and rest stamped with one start time
    # by an anonymiser: the rest took the stress's AIF series, -12 %, MPR 2.63 for 2.31; probe 47)
    together = [other for other in partners if _acquired_together(items, series[other])
                and not _also_within_another(uid, other, series)]
    if len(together) == 1:
        return together[0]
    if together:
        partners = together
    # an AIF series whose description names only the other role is that acquisition's, even alone:
    # an anonymised exam (no clocks) paired the rest with the stress's 'Perf_stress_AIF', MPR +14 %
    # with QC pass (probe 44)
    roles = {role} if role in PERFUSION_ROLES else _roles_named(items)
    named = {other: _roles_named(series[other]) for other in partners}
    partners = [other for other in partners if not roles or not named[other] or roles & named[other]]
    if roles and len(partners) == 1 and not named[partners[0]] and not together:
        # one AIF series that names no role beside a main series of the other role, and no clock
        # that puts it in this one's acquisition: it is either's ('AIF_perfusion' in an anonymised
        # exam went to the rest as well as the stress: rest -12.6 %, MPR 2.63 for 2.31, QC pass;
        # probe 45). Neither takes it (each AIF then comes from its LV, flagged), unless the
        # other has an AIF series named for its own role
        aif = partners[0]
        if any(_other_role_claims(u, its, aif, series, roles) for u, its in series.items() if u not in (uid, aif)):
            partners = []
    if len(partners) > 1:
        # stress and rest exported together, each with its AIF series: the one whose description
        # names the main series' role
        partners = [other for other in partners if roles and roles <= named[other]]
    return partners[0] if len(partners) == 1 else None


def _also_within_another(uid, aif, series):
    """True when a series other than ``uid`` pairs with ``aif`` as its AIF series by clock too."""
    return any(_acquired_together(series[other], series[aif]) for other in _mains_of(aif, series, but=(uid,)))


def _other_role_claims(uid, items, aif, series, roles):
    """True when ``uid``, a main series of a role other than ``roles``, could take ``aif`` as its
    AIF series and has none of its own named for its role."""
    its_roles = _roles_named(items)
    if not its_roles or its_roles & roles or pick_main_and_aif({uid: items, aif: series[aif]}) != (uid, aif):
        return False
    return not any(_roles_named(series[other]) == its_roles for other in _aif_candidates(uid, items, series) if other != aif)


def _acquired_together(items, other_items):
    """True when the images of ``other_items`` were acquired within the time span of ``items``
    (acquisition clocks; False when either has none)."""
    spans = _clock_spans({0: items, 1: other_items}, (0, 1))   # midnight handled as for acquisitions
    if spans is None:
        return False
    a, b = spans[0], spans[1]
    slack = 0.1 * max(a[1] - a[0], 1.0)
    return a[0] - slack <= b[0] and b[1] <= a[1] + slack


def _is_derived(ds):
    """A series the scanner derived from another: ImageType DERIVED, or a motion-corrected copy
    (Siemens writes 'MOCO' in ImageType and the description)."""
    values = _image_type(ds)
    desc = str(ds.get("SeriesDescription", "")).upper()
    return values[:1] == ["DERIVED"] or "MOCO" in values or re.search(r"(?<![A-Z])MOCO", desc) is not None


def _image_type(ds):
    image_type = ds.get("ImageType") or []
    return [str(v).strip().upper() for v in ([image_type] if isinstance(image_type, str) else image_type)]


# What an image is of a complex reconstruction other than its magnitude: DICOM's
# ComplexImageComponent (Enhanced MR), or a value of ImageType / FrameType (Siemens 'P', 'R', 'I'
# third; Philips 'P' fourth or 'P_FFE'-like third; 'PHASE MAP').
_NOT_MAGNITUDE_COMPONENTS = {"PHASE", "REAL", "IMAGINARY"}
_NOT_MAGNITUDE_TYPES = {"P", "R", "I", "PHASE", "REAL", "IMAGINARY", "PHASE MAP"}


def _not_magnitude(ds):
    """True for an image that is the phase, real or imaginary part of a complex reconstruction."""
    if str(ds.get("ComplexImageComponent", "") or "").strip().upper() in _NOT_MAGNITUDE_COMPONENTS:
        return True
    types = _image_type(ds)
    frame_type = ds.get("FrameType")
    if frame_type:
        types = [str(v).strip().upper() for v in ([frame_type] if isinstance(frame_type, str) else frame_type)]
    return any(v in _NOT_MAGNITUDE_TYPES or v[:2] in ("P_", "R_", "I_") for v in types[2:])


def _drop_phase_images(folder, items):
    """(items, notes): the phase (real, imaginary) images a series holds beside its magnitude
    images left out. A scanner set to reconstruct both files them in one series, or one Enhanced
    file: every trigger delay then occurred twice and the series was refused as "2 acquisitions
    of the cardiac cycle (a repeated breath-hold?)", advice no one could follow (probe 58)."""
    other = [_not_magnitude(ds) for _, ds in items]
    if not any(other) or all(other):
        return items, []
    left = [f for (f, _), o in zip(items, other) if o]
    note = (f"{len(left)} phase (or real/imaginary) image(s) beside the magnitude images were left out: "
            f"{_names(sorted(set(left)), folder)}")
    return [it for it, o in zip(items, other) if not o], [note]


def _drop_derived_images(folder, uid, items):
    """(items, notes): a few derived images filed in a series of acquired ones left out. Scanners
    file a T1 map, a subtraction or a MIP under the series it was computed from (ImageType
    DERIVED among ORIGINAL images); read as one more frame at the same positions, a perfusion
    series grew a dynamic that was a map (MBF 17 instead of 2.6, and a given AIF refused for
    its length). When derived images are as many as the acquired ones, the series is two
    acquisitions and the checks after this refuse it."""
    types = [_image_type(ds) for _, ds in items]
    derived = [it for it, t in zip(items, types) if t[:1] == ["DERIVED"]]
    if not derived or 2 * len(derived) >= len(items):
        return items, []
    kinds = sorted({"\\".join(t) for t in types if t[:1] == ["DERIVED"]})
    note = (f"{len(derived)} derived image(s) of series {uid} (ImageType {', '.join(kinds[:3])}) are not acquired "
            f"frames and were left out: {_names([f for f, _ in derived], folder)}")
    return [it for it, t in zip(items, types) if t[:1] != ["DERIVED"]], [note]


def _drop_derived_copies(series, notes=None):
    """The folder's series less those that are a derived copy of another one here: same stack
    geometry, slice positions and image count, derived (``_is_derived``) where the other is
    not. A Siemens perfusion export holds the series and its motion-corrected copy (MOCO); the
    analysis aligns the frames itself, so the original is read and ``notes`` says which copy
    was left out (``--series`` still reads it)."""
    originals = {uid: items for uid, items in series.items() if not _is_derived(items[0][1])}
    if not originals or len(originals) == len(series):
        return series
    def shape(items):
        return _stack_key(items[0][1]), _series_positions(items), len(items)

    original_of = {}
    for uid, items in originals.items():
        original_of.setdefault(shape(items), []).append(uid)

    def whose(candidates, items):
        # stress and rest share the stack's geometry and image count: the rest's MOCO copy was
        # called a copy of the stress (and --series of the copy offered to read it; probe 86).
        # A copy carries its original's acquisition times; else the role its description names
        if len(candidates) > 1:
            timed = [u for u in candidates if _acquired_together(originals[u], items)]
            named = [u for u in candidates if _roles_named(originals[u]) & _roles_named(items)]
            candidates = timed if len(timed) == 1 else named if len(named) == 1 else candidates
        return candidates[0] if candidates else None

    def source_of(items):
        exact = original_of.get(shape(items))
        if exact is not None:
            return whose(exact, items)
        # a motion-corrected copy holds the dynamics only: the proton-density frames the
        # original starts with (1-5 per slice) are not in it
        key, where, n = shape(items)
        fewer = [u for (k, w, m), uids in original_of.items()
                 if k == key and w == where and 0 < m - n <= MAX_PD_FRAMES * len(where) for u in uids]
        return whose(fewer, items) if fewer else None
    # a derived series of one image per slice beside acquired series of many frames is a result
    # computed from them (an inline MBF or T1 map), not images to analyse
    dynamic = any(len(items) > len(_series_positions(items)) for items in originals.values())
    kept = dict(series)
    for uid, items in series.items():
        if uid in originals:
            continue
        source = source_of(items)
        parts = _slice_series_copied(items, originals) if source is None else None
        if parts is not None or source is not None:
            del kept[uid]
            if notes is None:
                continue
            if parts is not None:
                copy_of = (f"of the stack stored one series per slice as {_numbers_text(series, parts)} ({len(parts)} "
                           "series: the same slice positions, images and pixels) and was left out: those series are "
                           "read as one stack")
            else:
                copy_of = (f"(motion-corrected or filtered) of series {_describe(source, series[source])} and was left "
                           "out: the original is read and its frames aligned here")
            notes.append(_RelatedNote(f"series {_describe(uid, items)} is a derived copy {copy_of}; give --series {uid} "
                                      "to read the copy instead", related=set(parts) if parts is not None else {source}))
        elif dynamic and _one_image_per_slice(items):
            del kept[uid]
            if notes is not None:
                # said when a series it may have been computed from is read (same stack, a shared position)
                near = {u for u, its in originals.items() if _stack_key(its[0][1]) == _stack_key(items[0][1])
                        and _series_positions(its) & _series_positions(items)}
                # the stress's map is not the rest's (both at one stack): the role its name shares
                near = {u for u in near if _roles_named(originals[u]) & _roles_named(items)} or near
                notes.append(_RelatedNote(
                    f"series {_describe(uid, items)} is a derived image, one per slice (ImageType "
                    f"{chr(92).join(_image_type(items[0][1]))}: a map computed by the scanner), and was left out",
                    related=near or {"-"}))
    return kept


def _slice_series_copied(items, originals):
    """The original series (2 or more, sorted by number) that together hold the images of the
    derived series ``items``, or None: same stack geometry, each original's slice positions among
    the copy's, and as many images at every position as the copy, with the same pixels in every
    image, in time order. A workstation or PACS "composed" stack of a cine stored one series per
    slice: compared with one original series at a time it matched none, and the folder was
    refused as "11 image series ... choose one", whose first suggestion read one slice (probe
    104). Headers alike are not enough: a derived series at the same positions with other pixels
    (a filtered or registered one, even one that keeps its reference frame) is no copy, and the
    user still chooses."""
    key = _stack_key(items[0][1])
    wanted = Counter(_position_key(ds) for _, ds in items)
    if key is None or None in wanted:
        return None
    # only series with the copy's images per position: an LGE stored per slice at the cine's
    # positions was counted in, and no cine copy beside it matched (review 2)
    frames = _frames_per_position(items)
    parts = [u for u, its in originals.items() if _stack_key(its[0][1]) == key
             and _series_positions(its) and _series_positions(its) <= set(wanted)
             and _similar_frame_counts(_frames_per_position(its), frames)]
    if len(parts) < 2:
        return None
    held = Counter(_position_key(ds) for u in parts for _, ds in originals[u])
    if held != wanted:   # a position missing, or held twice (a slice re-acquired): not this copy's sources
        return None
    # every image, not the first of each original: a registered series keeps its reference frame
    held_images = [item for u in parts for item in originals[u]]
    for position in wanted:
        if not all(_same_image_pixels(a, b) for a, b in zip(_in_time_order(held_images, position),
                                                             _in_time_order(items, position))):
            return None
    return sorted(parts, key=lambda u: _series_number(originals[u]))


def _in_time_order(items, position):
    """The datasets of the images at ``position``, by trigger delay, then InstanceNumber."""
    def when(ds):
        try:
            trigger = float(ds.get("TriggerTime"))
        except (TypeError, ValueError):
            trigger = math.inf
        try:
            number = int(ds.get("InstanceNumber"))
        except (TypeError, ValueError):
            number = 0
        return trigger, number
    return sorted((ds for _, ds in items if _position_key(ds) == position), key=when)


def _same_image_pixels(ds, other):
    """True when two images hold the same pixel values (decoded: one may be stored compressed);
    False when either cannot be read, as nothing then shows they are one image."""
    try:
        return bool(np.array_equal(ds.pixel_array, other.pixel_array))
    except Exception:
        return False


def _one_image_per_slice(items):
    """A series of one image at each of its slice positions (a single-phase stack, a map, one
    dynamic of a series exported per dynamic)."""
    return len(items) == len(_series_positions(items))


def _refuse_derived_map(folder, uid, items):
    """A series chosen by the user that is a scanner's computed map (derived, one image per slice
    position, ImageType naming a MAP): segmenting it ended in 'no LV blood pool labelled'."""
    types = _image_type(items[0][1])
    if _is_derived(items[0][1]) and any("MAP" in t or t in _MAP_TYPES for t in types) and _one_image_per_slice(items):
        raise CardiacInputError(folder, f"series {_describe(uid, items)} is a map the scanner computed (ImageType "
                                        f"{chr(92).join(types)}), one image per slice: not a cine or a first-pass series to "
                                        "segment; choose the acquired series")


# What a scanner's computed map says of itself besides 'MAP' (Siemens inline perfusion writes
# 'DERIVED\\PRIMARY\\PERFUSION\\MBF'): chosen with --series, such a map went to the network and
# was refused for a reason that sent the user to re-export it (probe 86)
_MAP_TYPES = {"MBF", "FLOW", "PERFUSION", "T1", "T2", "T2*", "T2STAR", "ECV", "PARAMETRIC"}

# A T1-mapping series (MOLLI, ShMOLLI, SASHA) images one slice at 8-11 inversion or saturation
# times in one breath-hold: its images at a slice position differ by contrast, not by the heart's
# phase. An export holding MOLLI series and no cine merged three of them into a 3-slice "cine"
# with a 2.8 s "cycle" (EDV 181 mL, EF 0.7 %, mass 102 g, QC naming only the ranges; probe 86).
# An LGE stack is inversion-recovery too, one image per slice at one inversion time: no cycle.
# Cine and perfusion sequences write no InversionTime, or one for every image (a saturation
# delay), so the tag alone tells; the names of MOLLI and its kin support it where it is missing.
# (T2 mapping's T2-prepared images, 3-4 at a position, carry no InversionTime: their name tells)
# Phase-contrast flow: Siemens writes the velocity encoding into SequenceName ("*fl2d1_v150in":
# VENC 150 cm/s through plane), Philips into ImageType ("PHASE CONTRAST M", "PCA"); GE and the
# others name the series (FLOW, Q-flow, VENC). A flow magnitude series chosen by --series was
# measured as a one-slice cine (EDV 11 mL), and GE's one series of magnitude and phase was called
# "2 acquisitions of the cardiac cycle" (probe 88)
FLOW_SEQUENCE = re.compile(r"^\*?[a-z0-9]+_v\d{2,4}[a-z]*$|_vel$", re.I)
# not "FLOW": a derived perfusion map is typed so (_MAP_TYPES)
FLOW_IMAGE_TYPES = {"PCA", "M_PCA", "PHASE CONTRAST M", "VELOCITY"}
FLOW_WHAT = ("a phase-contrast flow series, whose images show blood velocity through a vessel's or valve's plane, not a "
             "short-axis cine or first pass to segment")
FLOW_WORDS = re.compile(r"(?<![A-Z])(?:Q[ _-]?FLOW|FLOW|VENC|VELOCITY|PC[ _-]?MRI)(?![A-Z])", re.I)


def _flow_magnitude_sign(items, siblings):
    """A clause when ``items`` are the magnitude images of a phase-contrast series stored apart
    from its phase images (one of ``siblings``, the folder's other series), else None. Siemens
    writes the velocity encoding only into the phase series' SequenceName ('*fl2d1_v150in'); its
    magnitude series ('*fl2d1r3', ImageType M) is known by that partner: the same slice position
    and orientation, as many images."""
    if _phase_contrast_sign(items) or len(_series_positions(items)) != 1:
        return None
    for its in siblings:
        if len(its) != len(items):
            continue
        if _series_positions(its) == _series_positions(items) and _orientations(its) == _orientations(items):
            sign = _phase_contrast_sign(its)
            if sign:
                return (f"its partner {_series_name(its)} at the same slice position, with as many images, is the phase of a "
                        f"flow series ({sign}): these are its magnitude images")
    return None


def _phase_contrast_sign(items):
    """What marks ``items`` as a phase-contrast flow series (a clause), else None. A name only
    counts for a series of one slice position, as flow is acquired (a perfusion or cine stack
    is never called flow by its description)."""
    for _, ds in items:
        name = str(ds.get("SequenceName", "") or "").strip()
        named = FLOW_SEQUENCE.search(name)
        if named:
            part = "" if named.group(0) == name else f" ({named.group(0)!r})"
            return f"its SequenceName {name!r} carries a velocity encoding{part}"
    for _, ds in items:
        kinds = {v.upper() for v in _image_type(ds)} & FLOW_IMAGE_TYPES
        if kinds:
            return f"its ImageType names {sorted(kinds)[0]!r} (phase-contrast images)"
    if len(_series_positions(items)) == 1:
        named = FLOW_WORDS.search(str(items[0][1].get("SeriesDescription", "") or ""))
        if named:
            return f"its SeriesDescription names {named.group(0)!r} and it holds one slice position"
    return None


T1_MAPPING_WORDS = re.compile(r"MOLLI|SASHA|SAPPHIRE|(?<![A-Z0-9])T[12][ _-]?(?:MAP|PREP)", re.I)
MIN_INVERSION_SPAN_MS = 200.0
MIN_INVERSION_TIMES = 3
# An LGE stack holds a slice position per image, 8-20 of them: a first-pass series whose
# positions move with every dynamic (slice tracking) has as many "positions" as images, hundreds
# (session 40's review)
MAX_LGE_IMAGES = 40


def not_cine_or_first_pass(items, siblings=()):
    """Why a series holds no cine or first-pass images to analyse (a clause), else None: a
    T1-mapping series, an inversion-recovery single-phase stack (LGE), phase images, a flow
    series, or its magnitude images known by their phase partner among ``siblings`` (the
    folder's other series, each a list of (path, dataset))."""
    found = _other_acquisition(items, siblings)
    return found[1] if found else None


def _other_acquisition(items, siblings=()):
    """(a few words for listing, the clause) of ``not_cine_or_first_pass``, or None."""
    by_position = {}
    for _, ds in items:
        ti = _positive_mm(ds.get("InversionTime"))   # a positive number; milliseconds here
        if ti is not None:
            by_position.setdefault(_position_key(ds), set()).add(round(ti, 1))
    times = sorted(set().union(*by_position.values())) if by_position else []
    if any(len(v) >= MIN_INVERSION_TIMES and max(v) - min(v) >= MIN_INVERSION_SPAN_MS for v in by_position.values()):
        return "T1/T2 mapping", (f"its images at a slice position were acquired at {len(times)} inversion times ({times[0]:g}-"
                f"{times[-1]:g} ms, InversionTime): a T1-mapping series (MOLLI, ShMOLLI, SASHA), whose images differ "
                "by contrast, not by the heart's phase")
    ds = items[0][1]
    # not ProtocolName: on GE it is the exam's protocol, on every series of it ("CARDIAC FUNCTION
    # T1 MAPPING" refused the cine too; review of session 40)
    for tag in ("SeriesDescription", "SequenceName"):
        named = T1_MAPPING_WORDS.search(str(ds.get(tag, "") or ""))
        if named:
            return "T1/T2 mapping", (f"its {tag} names {named.group(0)!r}: a T1- or T2-mapping series or map, not a cine "
                                     "or a first pass")
    if len(times) == 1 and _one_image_per_slice(items) and len(items) <= MAX_LGE_IMAGES:
        return "late enhancement", (f"one image per slice position, all at inversion time {times[0]:g} ms (InversionTime): an inversion-"
                "recovery stack (late gadolinium enhancement?), with no cardiac cycle or first pass to measure")
    flow = _phase_contrast_sign(items)
    if flow:
        return "phase-contrast flow", f"{flow}: {FLOW_WHAT}"
    if all(_not_magnitude(d) for _, d in items):
        return "phase images", (f"its images are the phase (or real/imaginary part) of a complex reconstruction (ImageType "
                f"{chr(92).join(_image_type(ds))}): a flow or phase-contrast series, not magnitude images to segment")
    partner = _flow_magnitude_sign(items, siblings)
    if partner:
        return "phase-contrast flow", f"{partner}: {FLOW_WHAT}"
    return None


# Named late enhancement, a stack of one image per slice position: where InversionTime is not
# written, the name tells what the stack is (an export of MOLLI, T1 maps and an LGE "PSIR_LGE_SAX"
# without its InversionTime read the LGE as a one-phase cine, EDV 190 mL, mass 121 g; probe 86).
# Only where it would be read: beside a cine, such a stack is left out with the other single images
LATE_ENHANCEMENT_WORDS = re.compile(r"LGE|PSIR|(?<![A-Z])MDE(?![A-Z])|DELAYED|LATE[ _-]?ENH", re.I)


def _late_enhancement_by_name(items):
    """A clause when a series of one image per slice position is named late enhancement."""
    named = LATE_ENHANCEMENT_WORDS.search(str(items[0][1].get("SeriesDescription", "") or ""))
    if named is None or not _one_image_per_slice(items) or len(items) > MAX_LGE_IMAGES:
        return None
    return (f"one image per slice position and its description names {named.group(0)!r}: a late gadolinium "
            "enhancement stack, with no cardiac cycle or first pass to measure")


def _without_other_acquisitions(series, notes=None):
    """(series, {uid: (kind, reason)}): the series that hold a cine or a first pass, those that
    do not (``not_cine_or_first_pass``) left out and said."""
    reasons = {uid: found for uid, items in series.items()
               for found in [_other_acquisition(items, [its for u, its in series.items() if u != uid])] if found}
    if notes is not None:
        # one note per reason: an LGE stored one series per slice beside three MOLLI series gave 11
        by_why = {}
        for uid, (_, why) in reasons.items():
            by_why.setdefault(why, []).append(uid)
        for why, uids in by_why.items():
            first = str(series[uids[0]][0][1].get("SeriesDescription", "")) or "no description"
            named = (f"series {_describe(uids[0], series[uids[0]])} was" if len(uids) == 1 else
                     f"{len(uids)} series ({_numbers_text(series, uids)} {first!r}) were")
            notes.append(f"{named} left out: {why}")
    return {uid: items for uid, items in series.items() if uid not in reasons}, reasons


# A dual-sequence AIF series images the blood pool at low resolution for the AIF alone (48-64
# pixels a side); read as the perfusion images (chosen, or alone in a folder beside a map), it
# gave MBF 2.56 in 16 segments with only AIF_FROM_LV said (probe 86)
AIF_SERIES_MAX_SIDE_PX = 80


def _aif_signs(items):
    """(the description names AIF, the larger image side in pixels or None) of a series."""
    ds = items[0][1]
    words = _description_words(ds.get("SeriesDescription", ""))
    try:
        side = max(int(ds.Rows), int(ds.Columns))
    except (AttributeError, TypeError, ValueError):
        side = None
    return re.search(r"(?<![a-z])aif(?![a-z])", words) is not None, side


def _looks_like_aif_series(items):
    """Small images (``AIF_SERIES_MAX_SIDE_PX``) or a description that names AIF."""
    named, side = _aif_signs(items)
    return named or (side is not None and side <= AIF_SERIES_MAX_SIDE_PX)


def _aif_series_by_itself(items):
    """A clause when a series is described as an AIF series and has the small images of one."""
    named, side = _aif_signs(items)
    if not named or side is None or side > AIF_SERIES_MAX_SIDE_PX:
        return None
    ds = items[0][1]
    description = str(ds.get("SeriesDescription", "") or "")
    return (f"it is described as an AIF series ({description!r}) and its images are {int(ds.Rows)} x {int(ds.Columns)} "
            "pixels: a dual-sequence AIF series, which images the blood pool for the arterial input only, too coarse "
            "for the myocardium")


def _refuse_aif_series(folder, uid, items, series, chosen):
    """Refuse reading a dual-sequence AIF series as the perfusion images."""
    # a stack merged from slice series is no AIF series; nor is a chosen series that only pairs
    # by size and count with a larger one (GE stress at 96 px beside its rest at 192 was refused
    # as the rest's AIF series; review of session 40): it must look like one, small or so named
    mains = _mains_of(uid, series) if chosen and uid in series and _looks_like_aif_series(items) else []
    if mains:
        main = series[mains[0]]
        raise CardiacInputError(folder, f"series {_describe(uid, items)} is the dual-sequence AIF series of series "
                                        f"{_describe(mains[0], main)}: its low-resolution images hold the blood pool for "
                                        f"the AIF only; analyse the perfusion series (--series "
                                        f"{main[0][1].get('SeriesNumber', mains[0])}), which takes this one as its AIF")
    why = _aif_series_by_itself(items)
    if why:
        raise CardiacInputError(folder, f"series {_describe(uid, items)}: {why}; give the perfusion series it was acquired "
                                        "with (the two in one folder, or this series' folder as the AIF, --aif, beside the "
                                        "images)")


def _study_name(folder):
    """The folder's name, or its parent's when the folder is just called 'dicom' or the like."""
    generic = {"dicom", "dcm", "images", "image", "data", "series"}
    return folder.parent.name if folder.name.lower() in generic and folder.parent.name else folder.name


def _merge_series_split_per_image(series):
    """(series, {kept uid: note}): series of one image each that share SeriesNumber,
    SeriesDescription and stack geometry are one series whose SeriesInstanceUID was rewritten per
    file (a faulty anonymiser), merged under the first UID. Left apart, each image looked like a
    repeat of the slice before it and a 60-frame perfusion series was read as a one-frame cine."""
    groups, merged_notes = {}, {}
    for uid, items in series.items():
        if len(items) == 1:
            ds = items[0][1]
            key = (str(ds.get("SeriesNumber", "")), str(ds.get("SeriesDescription", "")), _stack_key(ds))
            groups.setdefault(key, []).append(uid)
    merged = dict(series)
    for (number, desc, _), uids in groups.items():
        if len(uids) < 2:
            continue
        uids = sorted(uids)
        merged[uids[0]] = [it for uid in uids for it in series[uid]]
        for uid in uids[1:]:
            del merged[uid]
        merged_notes[uids[0]] = (f"{len(uids)} images of series #{number} {desc!r} each carry a SeriesInstanceUID of "
                                 "their own (rewritten per file, e.g. by an anonymiser): read as one series")
    return merged, merged_notes


MIN_SERIES_PER_DYNAMIC = 5   # fewer series of one stack are repeats or re-acquisitions, not a time series


def _echo_key(ds):
    """The image's echo: its EchoTime in ms (to 0.01 ms), else its first EchoNumbers, else None."""
    for tag, digits in (("EchoTime", 2), ("EchoNumbers", 0)):
        value = ds.get(tag)
        if value is not None and not isinstance(value, str) and hasattr(value, "__getitem__"):
            value = value[0] if len(value) else None   # a multi-valued EchoNumbers
        try:
            if value not in (None, ""):
                return round(float(value), digits)
        except (TypeError, ValueError):
            continue
    return None


# Echoes of one read-out lie a millisecond or more apart; EchoTime that wobbles by rounding from
# one dynamic or phase to the next dropped every second frame as a "second echo" (probe 32).
MIN_ECHO_GAP_MS = 0.2


def _first_echo_only(series):
    """(series, {uid: note}): a classic series that holds each image at two or more echo times,
    as many images at each (a dual-echo AIF read-out, whose second echo measures the T2* signal
    loss at the bolus peak), keeps its first echo: the shortest, least attenuated one. Read
    whole, each image met its twin at the same position and time and the series was refused
    as "mixes two acquisitions ... remove one of the two files" (the AIF series then went
    unused, or the folder was "2 series, choose one")."""
    notes = {}
    out = dict(series)
    for uid, items in series.items():
        if any(isinstance(ds, EnhancedFrame) for _, ds in items):
            continue
        groups = {}
        for item in items:
            groups.setdefault(_echo_key(item[1]), []).append(item)
        if len(groups) < 2 or None in groups or len({len(g) for g in groups.values()}) != 1:
            continue
        if len({_series_positions(g) for g in groups.values()}) != 1:
            continue   # slices acquired with different echo times: parts of one stack, not echoes of each image
        if min(np.diff(sorted(groups))) < MIN_ECHO_GAP_MS:
            continue   # a vendor's rounding (1.234 / 1.236 ms dynamic to dynamic), not two echoes (probe 32)
        first = min(groups)
        out[uid] = groups[first]
        times = ", ".join(f"{k:g}" for k in sorted(groups))
        notes[uid] = (f"series {uid} holds every image at {len(groups)} echo times ({times} ms): the first echo "
                      f"({first:g} ms, the least T2* signal loss at the bolus peak) is read, the other "
                      f"{len(items) - len(groups[first])} images are left out")
    return out, notes


def _merge_series_per_dynamic(series):
    """(series, {kept uid: note}): five or more series that each hold one image per slice of the
    same stack (same description, geometry and slice positions), acquired at distinct times, are
    the dynamics of one series exported one series per dynamic (some Siemens and PACS exports):
    merged under the earliest one's UID. Left apart, the folder was refused as "60 image series,
    choose one", and any one chosen was one frame. Without distinct acquisition times (an
    anonymiser removed or blanked them) the SeriesNumbers, all distinct, give the order: the
    anonymised exam was refused as "60 series described as 'stress'" (probe 47)."""
    def start(items):
        times = [_clock_s(ds) for _, ds in items]
        return min(times) if times and all(t is not None for t in times) else None

    def number(items):
        try:
            return int(items[0][1].get("SeriesNumber"))
        except (TypeError, ValueError):
            return None

    groups = {}
    for uid, items in series.items():
        if isinstance(items[0][1], EnhancedFrame) or not _one_image_per_slice(items):
            continue
        ds = items[0][1]
        key = (str(ds.get("SeriesDescription", "")), _stack_key(ds), _series_positions(items))
        groups.setdefault(key, []).append(uid)
    merged, notes = dict(series), {}
    runs = []
    for (desc, _, _), uids in groups.items():
        if len(uids) < MIN_SERIES_PER_DYNAMIC:
            continue
        by = "time"
        keys = [start(series[u]) for u in uids]
        if any(t is None for t in keys) or len(set(np.round(keys, 3))) < len(uids):
            by, keys = "number", [number(series[u]) for u in uids]
            if any(n is None for n in keys) or len(set(keys)) < len(uids):
                continue
        order = sorted(zip(keys, uids))
        steps = np.diff([k for k, _ in order])
        # a pause of many dynamics (or a jump in the numbering) is another acquisition (stress,
        # then rest 15 minutes later, both exported one series per dynamic under one
        # description): each is its own series
        cuts = [0] + [i + 1 for i, d in enumerate(steps) if d > 10 * np.median(steps)] + [len(order)]
        runs += [(desc, by, [u for _, u in order[a:b]]) for a, b in zip(cuts[:-1], cuts[1:])
                 if b - a >= MIN_SERIES_PER_DYNAMIC]
    for desc, by, uids in runs:
        if by == "number":
            _number_the_dynamics(series, uids)
        merged[uids[0]] = [it for uid in uids for it in series[uid]]
        for uid in uids[1:]:
            del merged[uid]
        numbers = [str(series[u][0][1].get("SeriesNumber", "?")) for u in (uids[0], uids[-1])]
        notes[uids[0]] = (f"{len(uids)} series #{numbers[0]}-#{numbers[1]} {desc!r} each hold one image per slice of the "
                          "same stack at successive times (exported one series per dynamic): read as one series of "
                          f"{len(uids)} frames" + ("" if by == "time" else ", in the order of their SeriesNumber (the "
                                                   "images carry no distinct acquisition times)"))
    return merged, notes


def _number_the_dynamics(series, uids):
    """Series merged in the order of their numbers, with no clock to order the frames of one
    slice: where the images carry no TemporalPositionIdentifier, each is given its series' place
    (1, 2, ...) as one, so the frames follow the series order. InstanceNumber cannot: exports
    restart it in every series, and the slice's frames were then "nothing orders them in time"."""
    if any(_temporal_position(ds) is not None for uid in uids for _, ds in series[uid]):
        return
    for place, uid in enumerate(uids, start=1):
        for _, ds in series[uid]:
            ds.TemporalPositionIdentifier = place


def _patient_id(ds):
    return str(ds.get("PatientID", "") or "").strip()


def refuse_mixed_patients(folder, items):
    """CardiacInputError when ``items`` ((path, dataset) records) hold images of more than one
    patient (PatientID; an empty ID, as some anonymisers leave it, matches any). One study is
    one patient: slices or frames of two patients merged into one stack would give a volume
    that belongs to nobody, with nothing in the numbers to show it."""
    by_patient = {}
    for path, ds in items:
        pid = _patient_id(ds)
        if pid:
            by_patient.setdefault(pid, []).append(path)
    if len(by_patient) > 1:
        ranked = sorted(by_patient.items(), key=lambda kv: -len(kv[1]))
        listing = "; ".join(f"PatientID {pid!r}: {len(paths)} images, e.g. {_names(paths[:1], folder)}" for pid, paths in ranked)
        raise CardiacInputError(folder, f"images of {len(by_patient)} patients here ({listing}): one analysis reads one "
                                        "patient's images; give a folder (or --series) that holds one patient only")


def _pick_series(folder, series, choice, notes=None, kind=None, as_aif=False):
    """(uid, items, the uid of its dual-sequence AIF series or None): the one place that decides
    which series of a folder is read. A folder of several patients is refused unless a series
    is chosen (which must then be one patient's). ``kind`` (``--kind``) narrows a folder of
    several series to those whose names say that kind. ``as_aif``: read as a dual-sequence AIF
    series (by the AIF's reader), not as the images to analyse; of a folder that holds images
    with their AIF series, the AIF series."""
    if choice is None:
        series = _without_other_modalities(series, notes)
        refuse_mixed_patients(folder, [it for items in series.values() for it in items])
        series = _series_of_kind(series, kind, notes)
    uid, items, aif_uid = _choose_series(folder, series, choice, notes)
    siblings = [its for u, its in series.items() if u not in uid.split("+")]
    why = not_cine_or_first_pass(items, siblings) or _late_enhancement_by_name(items)
    if why:
        # the series left out before this one was picked are said too: an export of MOLLI series,
        # T1 maps, an LGE and a localiser named the LGE only (probe 87)
        others = f" (the folder's other series: {'; '.join(notes)})" if choice is None and notes else ""
        raise CardiacInputError(folder, f"series {_describe(uid, items)} is no cine or first-pass perfusion series: {why}"
                                        f"{others}")
    if aif_uid is None and not as_aif:
        _refuse_aif_series(folder, uid, items, series, chosen=choice is not None)
    if aif_uid is None and notes is not None:
        notes.extend(_unused_aif_notes(uid, items, series))
    if choice is not None:
        refuse_mixed_patients(folder, items + (series[aif_uid] if aif_uid else []))
    if as_aif and aif_uid is not None:
        # the AIF's reader given a folder of perfusion images with their dual-sequence AIF series
        # (`--aif EXAM_FOLDER`, often the input folder itself): the AIF series is what it asked
        # for. Returning the images it pairs with read their own saturated LV as "the AIF series"
        # scaled by 1: MBF +10 to +61 %, the AIF_FROM_LV review flag gone (probe 106)
        return aif_uid, series[aif_uid], None
    return uid, items, aif_uid


def _unused_aif_notes(uid, items, series):
    """Why the series here that would pair with ``uid`` as its dual-sequence AIF series are not
    used: without a note the reader says "no separate AIF" while the folder holds one, or two."""
    others = {u: _other_study(items, its) for u, its in series.items() if u not in uid.split("+")}
    notes = [f"{_describe(u, series[u])} pairs as this series' dual-sequence AIF series but belongs to another study "
             f"(StudyInstanceUID {study[0]}): not used, the AIF is taken from the LV blood pool"
             for u, study in others.items() if study and _pair_but_for_the_clocks({uid: items, u: series[u]}) == (uid, u)]
    candidates = _aif_candidates(uid, items, series)
    if candidates:
        notes.append(f"{'; '.join(_describe(u, series[u]) for u in candidates)} could be this series' dual-sequence AIF "
                     f"series, but nothing here ties {'it' if len(candidates) == 1 else 'one of them'} to this acquisition "
                     "(no acquisition clock puts it within this series and no other, and the description names another "
                     "role, or none while another series could take it): the AIF is taken from the LV blood pool instead. "
                     "If it is this series' AIF, put it in a folder of its own and give --aif FOLDER")
    return notes


def _series_of_kind(series, kind, notes=None):
    """The series of a whole exam that --kind asks for: for perfusion the exam's cine stack was
    picked and then refused as contradicting --kind. Narrowed by the names' hints
    (``description_hint``) with each one's dual-sequence AIF series (for cine: those named
    perfusion left out), only when that leaves some series and leaves some out; the reader's
    timing still decides the kind."""
    if kind == CINE and len(series) >= 2:
        # the other way round: the series whose names say perfusion (with their AIF series) are
        # not the cine asked for (a whole exam's cine, undescribed beside 'Perfusion_stress', was
        # asked for with --series; probe 97)
        perfusion = {u for u, its in series.items() if description_hint(its[0][1]) == PERFUSION}
        for u in list(perfusion):
            partner = _aif_partner(u, series[u], series)
            if partner is not None:
                perfusion.add(partner)
        kept = {u: its for u, its in series.items() if u not in perfusion}
        if not kept or not perfusion:
            return series
        if notes is not None:
            notes.append(f"--kind cine: of the folder's {len(series)} image series, the {len(perfusion)} whose names say "
                         "perfusion were left out")
        return kept
    if kind != PERFUSION or len(series) < 2:
        # perfusion's names are distinctive (perf, first pass, tfiperf); a cine's are not: a
        # short-axis stack named SA_1..SA_12 beside CINE_2CH and CINE_4CH lost to the long axes
        return series
    named = {u: its for u, its in series.items() if description_hint(its[0][1]) == kind}
    if kind == PERFUSION:
        for u in list(named):
            partner = _aif_partner(u, named[u], series)
            if partner is not None:
                named[partner] = series[partner]
    if not named or len(named) == len(series):
        return series
    if notes is not None:
        notes.append(f"--kind {kind}: of the folder's {len(series)} image series, the {len(named)} whose names say "
                     f"{kind} were considered")
    return named


def _choose_series(folder, series, choice, notes=None):
    if not series:
        if any(p.name.upper() == "DICOMDIR" for p in Path(folder).iterdir()):
            raise CardiacInputError(folder, "no DICOM image files in this folder, only a DICOMDIR (the index of a CD/export): "
                                            "the images it lists are not here; give the folder that holds the image files")
        raise CardiacInputError(folder, "no DICOM image files in this folder")
    listing = "; ".join(_describe(uid, items) for uid, items in series.items())
    if choice is None:
        every = series
        series, others = _without_other_acquisitions(series, notes)
        if not series:
            raise CardiacInputError(folder, "no cine or first-pass perfusion series in this folder: "
                                            + "; ".join(f"series {_describe(u, every[u])}: {why}" for u, (_, why) in others.items()))
        series = _without_single_images(_without_screen_saves(_drop_derived_copies(series, notes), notes), notes)
        if len(series) == 1:
            return (*next(iter(series.items())), None)
        stack = _parallel_stack(series, notes)
        if stack is not None:   # one series per slice; a dual-sequence AIF series may sit beside them
            uid, items = stack
            others = {u: its for u, its in series.items() if u not in uid.split("+")}
            return uid, items, _aif_partner(uid, items, {uid: items, **others})
        pair = pick_main_and_aif(series)
        if pair is not None:   # a perfusion series and its dual-sequence AIF series
            return pair[0], series[pair[0]], pair[1]
        rest = _without_long_axis_views(_without_localisers(series, notes), notes)
        if len(rest) == 1:   # one stack beside a 3-plane localiser or long-axis cines (read as in per-slice layouts)
            return (*next(iter(rest.items())), None)
        pair = pick_main_and_aif(rest) if len(rest) < len(series) else None
        if pair is not None:
            # a perfusion series and its AIF series beside a localiser: the export of a stress
            # perfusion with its localiser asked for --series, the same without it ran (probe 86)
            return pair[0], rest[pair[0]], pair[1]
        if all(any(_names_role(items, role) for items in series.values()) for role in PERFUSION_ROLES):
            hint = f"; for the stress series with its rest series (MPR): --series stress --rest {folder}"
        else:
            hint = (_repeated_stacks_hint(series, folder) or _repeated_acquisitions_hint(series, folder)
                    or _short_stack_hint(series) or _unpaired_aif_hint(series))
        hint = hint or _several_studies_hint(series)
        left_out = [f"#{items[0][1].get('SeriesNumber', '?')}" for uid, items in every.items()
                    if uid not in series and uid not in others]
        if left_out:
            # a localiser's few images went here too: "derived copies or maps" named it wrongly (probe 97)
            hint += f" (left out as derived copies, maps, screen saves or single images: {', '.join(left_out)})"
        if others:
            kinds = {}
            for u, (kind, _) in others.items():
                kinds.setdefault(kind, []).append(f"#{every[u][0][1].get('SeriesNumber', '?')}")
            listed = "; ".join(f"{kind} {', '.join(numbers)}" for kind, numbers in kinds.items())
            hint += f" (left out as no cine or first pass: {listed})"
        listing = "; ".join(_describe(uid, items) for uid, items in series.items())
        raise CardiacInputError(folder, f"{len(series)} image series in this folder, choose one with --series (series= in Python: "
                                        f"UID, number or description): {listing}{hint}")
    c = str(choice).strip()
    # by the number or UID of any of its images: a series merged from several (one per slice,
    # one per dynamic) is still found by a part's number
    matches = [uid for uid, items in series.items()
               if c == uid or c in {str(ds.get("SeriesNumber", "")) for _, ds in items}
               or c in {_series_key(ds) for _, ds in items}
               or c.lower() == str(items[0][1].get("SeriesDescription", "")).strip().lower()]
    if len(matches) > 1:
        # a stack stored one series per slice, all described alike: the description names the
        # stack (it matched 12 series and no --series value could read them together)
        stack = _parallel_stack({u: series[u] for u in matches}, notes)
        if stack is not None:
            uid, items = stack
            others = {u: its for u, its in series.items() if u not in uid.split("+")}
            return uid, items, _aif_partner(uid, items, {uid: items, **others})
        # two series described alike (a repeated slice, a repeat acquisition): the first found
        # was taken, a one-slice repeat read as the stack
        raise CardiacInputError(folder, f"--series {choice!r} matches {len(matches)} series: "
                                        f"{'; '.join(_describe(u, series[u]) for u in matches)}; choose one by its number or UID"
                                        f"{_repeated_stacks_hint({u: series[u] for u in matches}, folder)}")
    if matches:
        uid = matches[0]
        _refuse_derived_map(folder, uid, series[uid])
        stack = _acquisition_stack(series, uid)
        if stack is not None:   # one slice series of a perfusion stack: the whole stack
            merged, items = stack
            if notes is not None:
                notes.append(f"{_describe(uid, series[uid])}, the series chosen, is one of {len(merged.split('+'))} slice "
                             f"series acquired together ({_numbers_text(series, merged.split('+'))}): read as one stack")
            others = {u: its for u, its in series.items() if u not in merged.split("+")}
            return merged, items, _aif_partner(merged, items, {merged: items, **others})
        if notes is not None:
            notes.extend(_long_axis_choice_notes(series, uid))
        return uid, series[uid], _aif_partner(uid, series[uid], series)
    if c.lower() in PERFUSION_ROLES:
        # a role, not a name (`--rest FOLDER`, `--series stress`): the series whose description
        # says it (its AIF series may say it too), else the folder's one series or pair
        # the single images left out go unsaid: the role chose the series, and the stress's and the
        # rest's reads of one exam folder each named the same LGE series (probe 50)
        series = _without_single_images(_drop_derived_copies(series, notes))
        partner = {uid: _aif_partner(uid, items, series, c.lower()) for uid, items in series.items()
                   if _names_role(items, c.lower())}
        # not the AIF series of another one (named or not: a stress AIF series named 'Perf_REST_AIF'
        # is no rest series)
        named = [u for u in partner if u not in partner.values() and not _mains_of(u, series)]
        if len(named) > 1 and sum(_roles_named(series[u]) == {c.lower()} for u in named) == 1:
            # 'Perf_rest_after_stress' names stress too; 'Perf_stress' beside it names only stress
            named = [u for u in named if _roles_named(series[u]) == {c.lower()}]
        if len(named) == 1:
            return named[0], series[named[0]], partner[named[0]]
        if not named:
            try:
                return _choose_series(folder, series, None, notes)
            except CardiacInputError as error:
                raise CardiacInputError(folder, f"no series description here names {c.lower()!r}, and {error.problem}") from None
        # the role's series may be one stack stored one series per slice (with its AIF series)
        stack = _parallel_stack({u: series[u] for u in partner}, notes)
        if stack is not None:
            uid, items = stack
            return uid, items, _aif_partner(uid, items, {uid: items, **{u: series[u] for u in partner if u not in uid.split("+")}})
        raise CardiacInputError(folder, f"{len(named)} series here are described as {c!r}, choose one with --series "
                                        f"(UID, number or description): {'; '.join(_describe(u, series[u]) for u in named)}")
    raise CardiacInputError(folder, f"no series matches {choice!r}; series here: {listing}")


def _tm_seconds(value):
    """DICOM TM 'HHMMSS.ffffff' -> seconds since midnight."""
    s = str(value).strip().replace(":", "")
    if not s:
        return None
    try:
        return int(s[0:2]) * 3600 + int(s[2:4] or 0) * 60 + float(s[4:] or 0)
    except ValueError:
        return None


_TRIGGER_UNIT_S = "_cardiacaiseg_trigger_unit_s"


def _trigger_s(ds):
    # TriggerTime is in milliseconds (DICOM); a series found to store seconds is marked
    value = _raw_trigger(ds)
    return None if value is None else value * getattr(ds, _TRIGGER_UNIT_S, 0.001)


def _raw_trigger(ds):
    try:
        return float(ds.get("TriggerTime"))
    except (TypeError, ValueError):   # absent (None) or not a number
        return None


def _mark_trigger_times_in_seconds(items):
    """A series whose TriggerTime holds seconds, as some converters and older GE software write
    it, is marked to be read so; returns a warning or None. As milliseconds its frames would lie
    under a millisecond apart, which no ECG-triggered acquisition does (cine frames are 10 ms or
    more apart): a GE first pass (0.77-15.3) read as a cine of 14 ms, a cine (0-0.2) refused
    for duplicate frame times. Taken as seconds, the steps are those of a cine (10 ms and more)
    or of a first pass."""
    raw = [(_raw_trigger(ds), ds) for _, ds in items if not isinstance(ds, EnhancedFrame)]
    values = np.array([v for v, _ in raw if v is not None], float)
    distinct = np.unique(np.round(values, 6))
    if len(raw) != len(items) or values.size != len(raw) or distinct.size < 5 or values.min() < 0 or distinct.max() >= 120:
        return None
    # the step between one slice's frames: a one-phase stack whose slices were triggered 18.29-20 ms
    # after the R wave has none, and its slices' delays 0.25 ms apart read as seconds (ED then
    # "18292-20000 ms", FRAME_PHASE_UNKNOWN; probe 50)
    by_position = {}
    for v, ds in raw:
        by_position.setdefault(_position_key(ds), set()).add(round(v, 6))
    steps = [d for delays in by_position.values() if len(delays) > 1 for d in np.diff(sorted(delays))]
    if not steps:
        return None
    step = float(np.median(steps))
    if not 0.005 <= step < 1.0:
        return None
    for _, ds in raw:
        object.__setattr__(ds, _TRIGGER_UNIT_S, 1.0)
    return (f"TriggerTime holds seconds, not milliseconds ({distinct.min():g}-{distinct.max():g} over {distinct.size} "
            f"values, {step:.3g} apart: as milliseconds no ECG-triggered frames lie so close): read as seconds")


def _clock_s(ds):
    """Wall-clock acquisition time of one image in seconds (None when the file has none).

    Enhanced frames carry FrameAcquisitionDateTime; classic images the series' one clock tag
    (``_settle_clock_tag``), else the first of AcquisitionDateTime, AcquisitionTime, ContentTime
    they carry. After midnight a time of day counts on the next day (``_DAY_OFFSET``).
    """
    if isinstance(ds, EnhancedFrame):
        return ds.acquisition_s
    settled = getattr(ds, _CLOCK_TAG, None)
    if settled == _NO_CLOCK:
        return None
    for tag in (settled,) if settled is not None else _CLOCK_TAGS:
        t = _clock_tag_seconds(ds, tag)
        if t is not None:
            if getattr(ds, _WHOLE_SECONDS, False):
                t = float(np.floor(t))
            return t + getattr(ds, _DAY_OFFSET, 0.0)
    return None


_DAY_OFFSET = "_cardiacaiseg_day_offset_s"
_WHOLE_SECONDS = "_cardiacaiseg_whole_seconds"
WHOLE_SECONDS_SHARE = 0.25   # of a series' images with times cut to the second: all read to the second
_CLOCK_TAG = "_cardiacaiseg_clock_tag"
_NO_CLOCK = ""   # _CLOCK_TAG of a series whose only time is one reconstruction time for all
_CLOCK_TAGS = ("AcquisitionDateTime", "AcquisitionTime", "ContentTime")


def _clock_tag_seconds(ds, tag):
    """Seconds from one clock tag: a DT (since 2000-01-01) or a TM (since midnight); None if absent."""
    from .dicom_enhanced import datetime_seconds

    return datetime_seconds(ds.get(tag, "")) if tag == "AcquisitionDateTime" else _tm_seconds(ds.get(tag, ""))


def _settle_clock_tag(items):
    """Read every image's time from one tag: the first of AcquisitionDateTime, AcquisitionTime,
    ContentTime that all the classic images carry and that is not one value for all of them.
    Chosen per image, one series mixed clocks: a
    date-time (seconds since 2000) on one dynamic beside times of day, or the reconstruction
    clock (ContentTime) on two images that lacked AcquisitionTime, which read as a jump of
    years or of 30 s between frames and blamed the series' timing."""
    classic = [ds for _, ds in items if not isinstance(ds, EnhancedFrame)]
    if not classic:
        return
    carried = []
    for tag in _CLOCK_TAGS:
        values = [_clock_tag_seconds(ds, tag) for ds in classic]
        if all(v is not None for v in values):
            carried.append((tag, len(set(values)) > 1 or len(classic) == 1))
    # a tag that is one value on every image is the series' start, not a frame's time (scanners
    # that write AcquisitionDateTime once per series and advance AcquisitionTime: settling on
    # it left ContentTime, the reconstruction clock, to time the frames: MBF +49 %, QC pass)
    # One value for all is still the series' start where the scanner stamps it so (GE's
    # AcquisitionTime, which pairs an AIF series by start), but a ContentTime that is one value
    # for all is when the images were reconstructed: taken as a clock, it refused the AIF series of
    # a motion-corrected copy as "not acquired during" it (probe 44)
    start = next((tag for tag, _ in carried if tag != "ContentTime"), None)
    chosen = next((tag for tag, advances in carried if advances), start)
    if chosen is None and carried:
        for ds in classic:
            object.__setattr__(ds, _CLOCK_TAG, _NO_CLOCK)
    if chosen is not None:
        for ds in classic:
            object.__setattr__(ds, _CLOCK_TAG, chosen)
        # some images' times written without their fraction of a second (an export that cut
        # them): two frames then shared a time, refused as "a duplicate ... remove one of the two
        # files". The whole series is read at the precision they all have, whole seconds
        # (frames ordered by time and InstanceNumber, the interval from the span)
        if chosen in ("AcquisitionTime", "ContentTime"):
            texts = [str(ds.get(chosen, "")).strip() for ds in classic]
            with_fraction = sum("." in t and t.split(".", 1)[1].strip("0") != "" for t in texts)
            without = sum(bool(t) and "." not in t for t in texts)
            # an export that cut them, not a stray time written without ".000000" (one such image
            # put a valid series on whole seconds: MBF 2.46 for 2.65; probe 25)
            if with_fraction and without >= WHOLE_SECONDS_SHARE * len(texts):
                for ds in classic:
                    object.__setattr__(ds, _WHOLE_SECONDS, True)


def _content_s(ds):
    """ContentTime alone, for series whose AcquisitionTime is one value for every image (the
    series start) while ContentTime advances per dynamic."""
    if isinstance(ds, EnhancedFrame):
        return None
    return _tm_seconds(ds.get("ContentTime", ""))


def _unwrap_midnight(items):
    """A series whose times of day span more than 12 h crossed midnight: images after 00:00
    belong to the next day. Without this they sort before the first frame and the time axis
    spans a day. The same for date-times whose date did not advance (an anonymiser that set one
    date for the whole study). Marks those datasets; returns a warning or None."""
    times = []
    for _, ds in items:
        t = _clock_s(ds)
        if t is not None:
            times.append((t, ds))
    if not times:
        return None
    values = np.array([t for t, _ in times])
    if values.max() - values.min() <= 43200:
        return None
    for t, ds in times:
        if t < values.min() + 43200:
            if isinstance(ds, EnhancedFrame):
                # an enhanced file's frames carry FrameAcquisitionDateTime: the same fixed date
                # (an anonymiser's) sorted the frames after 00:00 first; once moved a day on,
                # the span is under 12 h and a second call changes nothing
                ds.acquisition_s = t + 86400.0
            else:
                object.__setattr__(ds, _DAY_OFFSET, 86400.0)
    dated = isinstance(times[0][1], EnhancedFrame) or getattr(times[0][1], _CLOCK_TAG, None) == "AcquisitionDateTime"
    of_day = values % 86400.0
    if dated and of_day.max() - of_day.min() <= 43200:
        # the times of day run on and the dates differ: a date written wrong on some images, not
        # midnight crossed (it was said as "cross midnight with the date unchanged"; probe 97)
        return ("the images' AcquisitionDateTime dates differ by a day while their times of day run on (a date written "
                "wrong on some images?): the images are placed by their times of day")
    return ("acquisition times cross midnight" + (" with the date unchanged (an anonymiser's fixed date?)" if dated else "")
            + ": images after 00:00 are counted on the next day")


# A cine covers one cardiac cycle (trigger delays under ~2 s even at 30 beats/min); frames that
# span more than this at one slice position come from many heartbeats: a first-pass series.
MANY_HEARTBEATS_S = 4.0
# A first pass takes one frame per heartbeat or two (0.3-2 s apart). Frames as long a series
# spans but under REALTIME_STEP_S apart are a real-time (untriggered) cine of many cycles.
REALTIME_STEP_S = 0.15
# Frames this far apart, this many or more, are one per heartbeat however short the series: a
# cine's 10-40 phases lie 15-60 ms apart. A GE first pass of 5 dynamics 0.5 s apart (trigger
# delays 0.77-2.77 s) was read as a cine, EF 100 % (probe 101). Fewer frames may be a cine's ED
# and ES alone (0.3-0.4 s apart).
HEARTBEAT_STEP_S = 0.3
MIN_FRAMES_FOR_STEP = 4


def settled_clock_tag(groups):
    """The tag the wall clock of a series was read from (``_settle_clock_tag``); an enhanced
    file's frames carry FrameAcquisitionDateTime, which no tag was settled for."""
    return next((getattr(ds, _CLOCK_TAG, None) for _, ds, *_ in groups[0]), None) or "FrameAcquisitionDateTime"


def choose_frame_clock(groups):
    """Which clock orders the frames of each slice position, and what it says of the series.

    groups: per slice position, the list of (path, dataset, ...) records. Vendors time frames
    differently: a cine has rising trigger delays within one cycle; GE writes perfusion with the
    time since the first frame in TriggerTime (0.8 ... 55 s); Siemens and Philips keep the
    trigger delay constant and advance AcquisitionTime/ContentTime by one heartbeat per
    dynamic (some write a constant AcquisitionTime and advance ContentTime). Returns
    {"clock": "TriggerTime" | "AcquisitionTime" | "ContentTime" | None, "kind": "cine" |
    "perfusion" | None (the data cannot tell), "span_s", "reason"}.
    """
    def per_group(fn):
        values = [[fn(g[1]) for g in grp] for grp in groups]
        if any(v is None for grp in values for v in grp):
            return None
        return [np.asarray(v, float) for v in values]

    trig = per_group(_trigger_s)
    clock = per_group(_clock_s)
    n_frames = max(len(g) for g in groups)

    def span(values):
        return max(float(v.max() - v.min()) for v in values)

    def distinct(values):
        return all(np.unique(np.round(v, 4)).size == v.size for v in values)

    def cut_to_seconds(values):
        return all(np.all(np.abs(v - np.round(v)) < 1e-6) for v in values)

    def whole_seconds(values):
        return cut_to_seconds(values) and not distinct(values)

    def step(values):
        return float(np.median([np.median(np.diff(np.sort(v))) for v in values if v.size > 1]))

    if n_frames < 2:
        return {"clock": None, "kind": None, "span_s": 0.0, "reason": "one frame per slice position"}
    for name, values in (("TriggerTime", trig), ("AcquisitionTime", clock)):
        if values is None or not distinct(values) or span(values) <= MANY_HEARTBEATS_S:
            continue
        frame_step = step(values)
        if frame_step < REALTIME_STEP_S:
            # the tag the wall clock was read from, not the clock's family: "AcquisitionTime
            # advances 20 ms" of a series whose AcquisitionTime was one value (probe 88)
            tag = name if name == "TriggerTime" else settled_clock_tag(groups)
            return {"clock": name, "kind": CINE, "span_s": span(values), "realtime": True,
                    "reason": f"{tag} advances {1000 * frame_step:.0f} ms per frame through {span(values):.1f} s at one "
                              "slice position (a real-time cine of many cardiac cycles)"}
    if trig is not None and distinct(trig) and span(trig) > MANY_HEARTBEATS_S:
        return {"clock": "TriggerTime", "kind": PERFUSION, "span_s": span(trig),
                "reason": f"TriggerTime rises through {span(trig):.1f} s at one slice position (many heartbeats)"}
    def rises_with_clock():
        # in clock order, a cine's phases come with rising trigger delays (reconstructed phase
        # after phase); a first pass's delays measured at each beat wander with the heart rate
        ups = [np.mean(np.diff(t[np.argsort(c, kind="stable")]) > 0) for t, c in zip(trig, clock) if t.size > 2]
        return bool(ups) and min(ups) >= 0.9

    # trigger delays that run through a cardiac cycle (distinct, 0.2 s or more, rising as the clock
    # runs) are a cine's phases, whatever the clock's span: a stack with one AcquisitionTime and
    # its images' ContentTime (the reconstruction clock) spread over seconds is no first pass,
    # while a first pass whose measured delays wander over 100-400 ms still is one
    cycle = trig is not None and clock is not None and distinct(trig) and span(trig) >= MIN_CYCLE_SPAN_S \
        and rises_with_clock()
    if clock is not None and distinct(clock) and span(clock) > MANY_HEARTBEATS_S and not cycle \
            and (trig is None or span(trig) < 0.25 * span(clock)):
        if cut_to_seconds(clock) and step(clock) < 3.0:
            # distinct, but cut to whole seconds: at a heartbeat of 1.2 s the steps read 1, 1, 2,
            # 1, 1, 2 s, a "skipped beat" every third frame, and MBF 15 % off; only the span over
            # the series is good (to 1 s), as when frames share a second (below)
            return {"clock": "AcquisitionTime", "kind": PERFUSION, "span_s": span(clock), "coarse": True,
                    "reason": f"acquisition times advance through {span(clock):.0f} s at one slice position (many "
                              "heartbeats), in whole seconds only"}
        return {"clock": "AcquisitionTime", "kind": PERFUSION, "span_s": span(clock),
                "reason": f"acquisition times advance through {span(clock):.1f} s at one slice position (many heartbeats)"}
    if trig is not None and distinct(trig) and n_frames >= MIN_FRAMES_FOR_STEP and step(trig) >= HEARTBEAT_STEP_S:
        return {"clock": "TriggerTime", "kind": PERFUSION, "span_s": span(trig), "by_step": True,
                "reason": f"TriggerTime rises {step(trig):.2f} s per frame at one slice position (one frame per "
                          "heartbeat, not phases of one cycle)"}
    if trig is not None and distinct(trig):
        return {"clock": "TriggerTime", "kind": CINE, "span_s": span(trig),
                "reason": f"trigger delays span {span(trig) * 1000:.0f} ms at one slice position (one cardiac cycle)"}
    content = per_group(_content_s) if clock is None or not distinct(clock) else None
    if content is not None and distinct(content) and span(content) > MANY_HEARTBEATS_S and \
            (trig is None or span(trig) < 0.25 * span(content)):
        return {"clock": "ContentTime", "kind": PERFUSION, "span_s": span(content),
                "reason": f"ContentTime advances through {span(content):.1f} s at one slice position (many heartbeats; "
                          "AcquisitionTime does not)"}
    if clock is not None and span(clock) > MANY_HEARTBEATS_S and whole_seconds(clock) and \
            (trig is None or span(trig) < 0.25 * span(clock)):
        # times of day cut to whole seconds (anonymisers do it): heartbeats under a second apart
        # share a second, so the clock orders frames only with InstanceNumber and gives the
        # frame interval only as its span over the series (frame_times_from_coarse_clock)
        return {"clock": "AcquisitionTime", "kind": PERFUSION, "span_s": span(clock), "coarse": True,
                "reason": f"acquisition times advance through {span(clock):.0f} s at one slice position (many heartbeats), "
                          "in whole seconds only"}
    if clock is not None and distinct(clock):
        # no usable trigger delays: the clock orders the frames; its span says which kind
        k = PERFUSION if span(clock) > MANY_HEARTBEATS_S else None
        return {"clock": "AcquisitionTime", "kind": k, "span_s": span(clock),
                "reason": f"frames ordered by acquisition time ({span(clock):.1f} s); no distinct trigger delays"}
    untimed = _frames_without_clock(groups)
    if not untimed and clock is not None and any(len(g) > 1 for g in groups):
        # "the file has no frame times" said of times that are there but alike (probe 49)
        untimed = ("the images' acquisition times do not tell one slice's frames apart (one value for several of "
                   "them: the series' start, or times an anonymiser replaced or cut short)")
    return {"clock": None, "kind": None, "span_s": None, "untimed_images": untimed or None,
            "reason": "no distinct frame times in TriggerTime or AcquisitionTime" + (f"; {untimed}" if untimed else "")}


def _frames_without_clock(groups):
    """'k of n images lack their acquisition time ...' naming the images (enhanced: the frames)
    without a clock while most of the series has one, else "": one frame exported without its
    time leaves the whole series untimed, and the user must see which one, not "the file has no
    frame times"."""
    records = [g for grp in groups for g in grp]
    lacking = [g for g in records if _clock_s(g[1]) is None]
    if not lacking or len(lacking) * 2 > len(records):
        return ""
    what = "FrameAcquisitionDateTime" if isinstance(lacking[0][1], EnhancedFrame) else "AcquisitionTime/ContentTime"
    names = [f"{g[0]} frame {g[1].frame_number}" if isinstance(g[1], EnhancedFrame) else str(g[0]) for g in lacking[:3]]
    more = f" and {len(lacking) - 3} more" if len(lacking) > 3 else ""
    verb = "images lacks its" if len(lacking) == 1 else "images lack their"
    return (f"{len(lacking)} of {len(records)} {verb} acquisition time ({what}): {', '.join(names)}{more}, "
            "so the others' times cannot give the series' timing")


def frame_times_from_coarse_clock(times):
    """(T,) frame times on a regular grid from (T, S) clock readings cut to whole seconds: the
    interval is the span over the frames, the mean over slices (each reading is up to 1 s short,
    so the interval is good to about 1 s over the whole series, 2 % of a 50 s first pass)."""
    n_t = times.shape[0]
    if n_t < 2:
        return np.zeros(n_t)
    dt = float(np.mean(times[-1] - times[0])) / (n_t - 1)
    return np.arange(n_t) * dt


def coarse_clock_drift_s(times):
    """How far (s) whole-second clock readings (T, S) stray from evenly spaced frames: per slice,
    the range of each reading less its frame's place on a smooth curve fitted to all of them
    (least squares, quadratic: a heart rate that rises or falls steadily through the series is
    no irregularity, and its even times are off by 1-3 % across the bolus; review of session 46),
    the largest over slices. Cutting to the second puts readings of an even rhythm within one
    second of that curve (range up to 1 s; RR jitter of +-0.1 s up to 1.6 s); irregular heartbeats
    (atrial fibrillation: RR 0.5-1.5 s) wander further (1.4-3.6 s, median 2.2), where the even
    times the fit is given are as far off (MBF 26-44 % low with QC pass; probe 102)."""
    n_t = times.shape[0]
    if n_t < 3:
        return 0.0
    k = np.arange(n_t, dtype=float)
    fitted = np.polynomial.polynomial.polyval(k, np.polynomial.polynomial.polyfit(k, times, 2)).T   # (T, S)
    off = times - fitted
    return float(np.max(off.max(axis=0) - off.min(axis=0)))


def _slices_of_another_frame_of_reference(groups, in_plane):
    """The index of the slice furthest off a sheared stack when the stack's FrameOfReferenceUIDs
    explain the shear: each slice one UID, at least two UIDs and fewer than slices (UIDs per
    image or per slice, as some exports and anonymisers write them, say nothing: Sunnybrook's
    GE cine), and the slices of each UID a straight stack of their own, so the shift lies
    between frames of reference. Else None (a sheared stack, said as one)."""
    per_slice = [{str(g[1].get("FrameOfReferenceUID", "") or "") for g in grp} for grp in groups]
    if any(len(uids) != 1 for uids in per_slice):
        return None
    uids = [next(iter(u)) for u in per_slice]
    if not 2 <= len(set(uids)) < len(uids):
        return None
    for uid in set(uids):
        members = [k for k, u in enumerate(uids) if u == uid]
        if np.max(np.linalg.norm(in_plane[members] - in_plane[members[0]], axis=1)) > 0.5:
            return None   # sheared within one frame of reference too: the UIDs do not explain it
    return int(np.argmax(np.linalg.norm(in_plane - in_plane[0], axis=1)))


def _gap_in_frames(group, clock):
    """(time before, time after) of the widest step between a slice's frames when it is over 1.5x
    the slice's median step (an image lost in a copy or a PACS transfer), else None."""
    times = [_frame_time_s(ds, clock) for _, ds, *_ in group]
    if not clock or len(times) < 3 or any(t is None for t in times):
        return None
    t = np.asarray(times, float) - times[0]
    steps = np.diff(t)
    step = float(np.median(steps))
    if step > 0 and steps.max() > 1.5 * step:
        i = int(np.argmax(steps))
        return float(t[i]), float(t[i + 1])
    return None


def _lost_first_phase(groups, clock):
    """(slice, first delay of the others) when a slice with fewer phases than the rest keeps
    their phase step but starts one or more steps later: its first images were lost, not a
    shorter or differently sampled cycle; else None."""
    if clock != "TriggerTime":
        return None
    delays = [np.array([_trigger_s(g[1]) for g in grp], float) for grp in groups]
    if any(d.size < 3 or not np.all(np.isfinite(d)) for d in delays):
        return None
    full = max(d.size for d in delays)
    complete = [d for d in delays if d.size == full]
    step = float(np.median(np.diff(complete[0])))
    if not step > 0:
        return None
    first = float(np.median([d[0] for d in complete]))
    for k, d in enumerate(delays):
        if d.size < full and abs(float(np.median(np.diff(d))) - step) <= 0.1 * step and d[0] > first + 0.5 * step:
            return k, first
    return None


def _where_frames_are_missing(groups, positions, clock, tag=None):
    """For the error on unequal frame counts: which slice lacks frames and, when the clock
    shows it, the gap where they are missing (an image lost in a copy or a PACS transfer),
    named by the tag read (``tag``: the wall clock's, e.g. ContentTime where AcquisitionTime is
    absent)."""
    full = max(len(g) for g in groups)
    parts = []
    for k, g in enumerate(groups):
        if len(g) == full:
            continue
        where = f"slice {k} (at {positions[k]:.1f} mm) has {len(g)} of {full}"
        gap = _gap_in_frames(g, clock)
        if gap is not None:
            digits = 3 if clock == "TriggerTime" else 1   # trigger delays are milliseconds apart
            where += f", nothing between {gap[0]:.{digits}f} s and {gap[1]:.{digits}f} s ({tag or clock})"
        parts.append(where)
    return ": " + "; ".join(parts[:3]) + (f"; {len(parts) - 3} more" if len(parts) > 3 else "") if parts else ""


def _frame_time_s(ds, clock):
    if clock == "ContentTime":
        return _content_s(ds)
    return _trigger_s(ds) if clock == "TriggerTime" else _clock_s(ds) if clock == "AcquisitionTime" else None


_PERFUSION_WORDS = ("perf", "first pass", "first-pass", "firstpass", "fpp", "tfiperf", "stress", "rest ")
_CINE_WORDS = ("cine", "trufi", "tfisp", "ssfp", "fiesta", "bffe", "balanced")


def _flip_angle(ds):
    try:
        value = float(ds.get("FlipAngle"))
    except (TypeError, ValueError):
        return np.nan
    return value if 0 < value <= 180 else np.nan


def description_hint(ds):
    """'perfusion', 'cine' or None from SeriesDescription/ProtocolName/SequenceName words.

    A hint only: scanners' names are free text, so it may support the timing, never decide.
    """
    text = " ".join(str(ds.get(t, "") or "") for t in ("SeriesDescription", "ProtocolName", "SequenceName")).lower() + " "
    if any(w in text for w in _PERFUSION_WORDS):
        return PERFUSION
    if any(w in text for w in _CINE_WORDS):
        return CINE
    return None


def _geometry(f, ds, fixes=None):
    """(unit ImageOrientationPatient (6,), ImagePositionPatient, PixelSpacing) of one image.

    Orientation slightly off unit length or orthogonality is corrected (``fixes`` collects
    (file, what was done) for one warning); badly off, or a PixelSpacing that is not a
    positive number, is refused naming the file and the values (geometry_check)."""
    for tag in _REQUIRED:
        if tag not in ds or ds.get(tag) in (None, ""):
            reason = ds.missing_reason(tag) if isinstance(ds, EnhancedFrame) else None
            raise CardiacInputError(f, reason or f"missing DICOM tag {tag}, needed for the image geometry")
    frame = f" (frame {ds.frame_number})" if isinstance(ds, EnhancedFrame) else ""
    iop = np.array(_numbers(f, ds, "ImageOrientationPatient", 6, frame))
    ipp = np.array(_numbers(f, ds, "ImagePositionPatient", 3, frame))
    ps = _numbers(f, ds, "PixelSpacing", 2, frame)
    if not np.all(np.isfinite(ipp)):
        raise CardiacInputError(f, f"ImagePositionPatient {ipp.tolist()}{frame} is not finite")
    check_spacing_values(f, ps, "PixelSpacing" + frame)
    row, col, problem = check_orientation(f, iop, "ImageOrientationPatient" + frame)
    if problem and fixes is not None:
        fixes.append((f, problem))
    return np.concatenate([row, col]), ipp, ps


def _numbers(f, ds, tag, count, frame=""):
    """The ``count`` numbers of a geometry tag, or an error naming the tag and its text."""
    try:
        values = [float(v) for v in (ds.get(tag) if not isinstance(ds.get(tag), (int, float)) else [ds.get(tag)])]
    except (TypeError, ValueError):
        raw = None
        if hasattr(ds, "get_item"):
            try:
                item = ds.get_item(tag)
                raw = item.value.decode("latin-1", "replace").strip() if isinstance(item.value, bytes) else item.value
            except Exception:   # only for the message: the value is broken either way
                raw = None
        shown = f" {raw!r}" if raw is not None else ""
        raise CardiacInputError(f, f"{tag}{shown}{frame} is not a list of {count} numbers (a DICOM decimal string, "
                                   "e.g. 1.25\\1.25); the file's header is damaged") from None
    if len(values) != count:
        raise CardiacInputError(f, f"{tag}{frame} has {len(values)} value(s) {_fmt_values(values)}, needs {count}")
    return values


def _fmt_values(values):
    return "[" + ", ".join(f"{float(v):.6g}" for v in values) + "]"


# Pixel data pydicom cannot decode without an extra package (python-gdcm is a dependency, so this
# is for installs without it, e.g. a Python where it was left out)
_DECODER_HINT = ("install a decoder (pip install python-gdcm, or pylibjpeg pylibjpeg-libjpeg pylibjpeg-openjpeg) or export "
                 "uncompressed DICOM (e.g. gdcmconv --raw, dcmdjpeg)")
_DAMAGED_HINT = ("a decoder for it is installed, so the compressed data itself is damaged or not what its transfer syntax "
                 "says: export the series again")


@functools.cache
def _configure_decoders():
    """Once per process: JPEG 2000 decoded by Pillow rather than GDCM where Pillow can. GDCM's
    JPEG 2000 path (OpenJPEG through C++) aborted the whole process on damaged data in tests here
    (a C++ exception no Python code can catch); Pillow decodes the same 16-bit lossless images
    exactly and raises an ordinary error on damaged ones. GDCM stays for JPEG Lossless and
    JPEG-LS, which nothing else installed decodes (damaged data gave errors, never an abort)."""
    try:
        from pydicom.pixels import get_decoder
        from pydicom.uid import JPEG2000TransferSyntaxes
    except ImportError:   # pydicom 2: its own handler order
        return
    for uid in JPEG2000TransferSyntaxes:
        try:
            decoder = get_decoder(uid)
            if "gdcm" in decoder.available_plugins and len(decoder.available_plugins) > 1:
                decoder.remove_plugin("gdcm")
        except Exception:   # a syntax this pydicom has no decoder for
            continue


def _decoder_available(ts):
    """Whether pydicom has a working decoder for transfer syntax ``ts`` (None when it cannot say)."""
    try:
        from pydicom.pixels import get_decoder

        return bool(get_decoder(ts).is_available)
    except Exception:   # pydicom 2 (no pydicom.pixels), or a syntax it has no decoder class for
        return None


def _check_pixel_format(f, ds):
    """Refuse colour images and name an undecodable compression before decoding."""
    samples = int(ds.get("SamplesPerPixel", 1) or 1)
    photometric = str(ds.get("PhotometricInterpretation", "MONOCHROME2") or "MONOCHROME2").strip()
    if samples != 1 or not photometric.startswith("MONOCHROME"):
        raise CardiacInputError(f, f"a colour image (PhotometricInterpretation {photometric}, SamplesPerPixel {samples}): "
                                   "a screenshot or secondary capture, not MR data; accepted: greyscale (MONOCHROME1/2) "
                                   "MR images")


# Uncompressed little-endian pixel data: the bytes are the array. Read straight from them,
# pydicom's decoding pipeline cost 0.3 ms per image (about 50 ms of a 180-image perfusion
# series) around a copy; anything else (big endian, compressed, 1- or 32-bit, odd lengths)
# goes through pydicom, which also words the errors.
_NATIVE_LITTLE_ENDIAN = ("1.2.840.10008.1.2", "1.2.840.10008.1.2.1")


def _native_pixels(ds, notes=None, f=None):
    """float32 (Rows, Columns) of an uncompressed little-endian 8- or 16-bit image as pydicom
    decodes it (unsigned values masked to BitsStored, signed ones sign-extended from it), or
    None where pydicom must decode. Unsigned values with bits set above BitsStored are noted
    (``notes``, ``f``: the reader's {what: first file})."""
    try:
        if str(ds.file_meta.TransferSyntaxUID) not in _NATIVE_LITTLE_ENDIAN:
            return None
        rows, cols = int(ds.Rows), int(ds.Columns)
        allocated, stored = int(ds.BitsAllocated), int(ds.get("BitsStored") or ds.BitsAllocated)
        signed = int(ds.get("PixelRepresentation") or 0) == 1
        if allocated not in (8, 16) or not 0 < stored <= allocated:
            return None
        data = ds.PixelData
    except (AttributeError, KeyError, TypeError, ValueError):
        return None
    if not isinstance(data, bytes) or len(data) != rows * cols * allocated // 8:
        return None
    a = np.frombuffer(data, ("<i" if signed else "<u") + str(allocated // 8))
    if stored < allocated:
        if signed:   # the sign bit is bit stored - 1: move it to the top and back
            spare = allocated - stored
            a = (a << spare) >> spare
        else:
            masked = a & ((1 << stored) - 1)
            if notes is not None and not np.array_equal(a, masked):
                # masked as the standard says, but said: values written over BitsStored (a converter
                # that keeps a 12-bit header over 16-bit values) wrap the brightest pixels to the
                # bottom, the bolus peak with them (MBF +13.5 %, the cause unnamed; probe 97)
                notes.setdefault("BitsStored", (f, stored))
            a = masked
    return a.reshape(rows, cols).astype(np.float32)


def _compressed_syntax(ds):
    """The file's transfer syntax when it is a compressed one, else None."""
    source = ds.source.ds if isinstance(ds, EnhancedFrame) else ds
    ts = getattr(getattr(source, "file_meta", None), "get", lambda *_: None)("TransferSyntaxUID")
    try:
        return ts if ts is not None and ts.is_compressed else None
    except (ValueError, AttributeError):   # not a transfer syntax UID at all
        return None


def _pixels(f, ds, notes=None):
    """One image as float32 in real-world units (RescaleSlope/Intercept applied; MONOCHROME1
    inverted so that bright means signal, as in MONOCHROME2). ``notes`` (a dict) collects
    {what: first file} for the reader's warnings."""
    if not isinstance(ds, EnhancedFrame) and int(ds.get("NumberOfFrames", 1) or 1) > 1:
        raise CardiacInputError(f, "multi-frame DICOM without per-frame functional groups is not supported; "
                                   "export single-frame or Enhanced MR images")
    _check_pixel_format(f, ds)
    _configure_decoders()
    try:
        with _quiet():
            a = None if isinstance(ds, EnhancedFrame) else _native_pixels(ds, notes, f)
            if a is None:
                a = (ds.pixels() if isinstance(ds, EnhancedFrame) else ds.pixel_array).astype(np.float32)
    except CardiacInputError:
        raise
    except Exception as e:
        ts = _compressed_syntax(ds)
        if ts is not None:
            # pydicom lists each plugin's reason on its own line: keep them all, they say
            # whether the data is damaged or a decoder cannot read this variant (12-bit JPEG)
            lines = [line.strip() for line in str(e).splitlines() if line.strip()] or [""]
            reasons = lines[0].rstrip(":") + (": " + "; ".join(lines[1:]) if len(lines) > 1 else "")
            unsupported = re.search(r"not support|unsupported", reasons, re.IGNORECASE) is not None
            hint = _DECODER_HINT if unsupported or not _decoder_available(ts) else _DAMAGED_HINT
            if unsupported:
                hint = "the installed decoders cannot read this variant of it; " + hint
            raise CardiacInputError(f, f"pixel data compressed as {getattr(ts, 'name', '') or 'unknown'} (transfer syntax "
                                       f"{ts}) could not be decoded ({type(e).__name__}: {reasons}): {hint}") from None
        raise CardiacInputError(f, f"cannot read the pixel data (truncated, corrupt or unsupported compression: {type(e).__name__}: {e})")
    if a.shape != (int(ds.Rows), int(ds.Columns)):
        raise CardiacInputError(f, f"pixel data of shape {a.shape} where Rows x Columns is {int(ds.Rows)} x {int(ds.Columns)}: "
                                   "one greyscale image per file (or frame) is accepted")
    padding = _padding_mask(ds, a)
    if str(ds.get("PhotometricInterpretation", "")).strip() == "MONOCHROME1":
        # MONOCHROME1: the lowest value is shown white; a network trained on MONOCHROME2 would
        # see blood dark. Mirror within the stored range so the series keeps one scale.
        bits = int(ds.get("BitsStored", 16) or 16)
        a = (-1.0 - a) if int(ds.get("PixelRepresentation", 0) or 0) == 1 else (float(2 ** bits - 1) - a)
        if notes is not None:
            notes.setdefault("MONOCHROME1", f)
    try:
        slope = float(ds.get("RescaleSlope", 1) if ds.get("RescaleSlope", 1) not in (None, "") else 1)
        intercept = float(ds.get("RescaleIntercept", 0) or 0)
    except (TypeError, ValueError):
        raise CardiacInputError(f, f"RescaleSlope/RescaleIntercept {ds.get('RescaleSlope')!r}/{ds.get('RescaleIntercept')!r} "
                                   "are not numbers") from None
    if slope == 0 or not np.isfinite(slope) or not np.isfinite(intercept):
        # a slope of 0 would make every pixel the intercept: an invalid header, not an image
        if notes is not None:
            notes.setdefault("RescaleSlope", (f, slope))
        slope, intercept = 1.0, 0.0 if not np.isfinite(intercept) else intercept
    scale_slope = getattr(ds, _PRIVATE_SCALE, None)   # Philips' floating-point value, where marked
    a = (a * slope + intercept) / (slope * scale_slope) if scale_slope else a * slope + intercept
    if padding is not None:
        # outside the reconstructed field (a circular FOV's corners): no tissue, shown as the
        # image's darkest value rather than read as a signal of 65535 or -32768
        darkest = a[~padding].min()
        if notes is not None and a[padding][0] > darkest:
            # said where it would have read as signal; a padding of 0 below the image's own
            # background (as many scanners write it) changes nothing worth a word
            notes.setdefault("PixelPaddingValue", f)
        a[padding] = darkest
    return a


def _padding_mask(ds, stored):
    """(R, C) bool of the pixels whose stored value is the PixelPaddingValue (up to
    PixelPaddingRangeLimit), or None when the image has no padding (or is all padding)."""
    def value(tag):
        v = ds.get(tag)
        if isinstance(v, bytes):   # VR 'US or SS' left undecided by the parser
            signed = int(ds.get("PixelRepresentation", 0) or 0) == 1
            return int.from_bytes(v[:2], "little", signed=signed) if len(v) >= 2 else None
        try:
            return None if v in (None, "") else int(v)
        except (TypeError, ValueError):
            return None

    pad = value("PixelPaddingValue")
    if pad is None:
        return None
    limit = value("PixelPaddingRangeLimit")
    mask = (stored >= min(pad, limit)) & (stored <= max(pad, limit)) if limit is not None else stored == pad
    return mask if mask.any() and not mask.all() else None


_PRIVATE_SCALE = "_cardiacaiseg_private_scale"
_PHILIPS_CREATOR = "Philips MR Imaging DD 001"


def _philips_scale_slope(ds):
    """Philips' private ScaleSlope (2005,xx0E) of a classic image, or None (enhanced frames carry
    their scale as a RealWorldValueMapping: ``_apply_real_world_values``)."""
    try:
        value = float(ds.private_block(0x2005, _PHILIPS_CREATOR)[0x0E].value)
    except (KeyError, TypeError, ValueError, AttributeError):
        return None
    return value if np.isfinite(value) and value > 0 else None


def _mark_philips_scale(items):
    """Philips stores pixels so that the displayed value (RescaleSlope/Intercept applied) is the
    signal times a private ScaleSlope (2005,xx0E): the true, comparable value is
    displayed / (RescaleSlope x ScaleSlope). Within one series the factor is usually constant
    and nothing needs doing (a given AIF is in the displayed units). Where it changes from image
    to image, displayed values of different dynamics are on different scales (a factor 1-2 from
    one dynamic to the next gave MBF 3.15 instead of 2.63 with QC "pass"): every image is then
    read as the floating-point value. Returns a warning or None."""
    enhanced = [ds for _, ds in items if isinstance(ds, EnhancedFrame)]
    if enhanced:
        return _apply_real_world_values(enhanced)
    scales = [(ds, _philips_scale_slope(ds)) for _, ds in items]
    values = {round(v, 9) for _, v in scales if v is not None}
    if len(values) < 2:
        return None
    if any(v is None for _, v in scales):
        raise CardiacInputError(items[0][0], "some images carry Philips' private ScaleSlope (2005,xx0E) with varying values "
                                             "and some none: their pixel values are on different scales; export the "
                                             "series again (as floating-point values, or with one scale)")
    for ds, value in scales:
        object.__setattr__(ds, _PRIVATE_SCALE, value)   # _pixels divides by it and the RescaleSlope it checked
    return (f"Philips' private ScaleSlope (2005,xx0E) varies within the series ({min(values):g}-{max(values):g}): "
            "every image is read as its floating-point value (displayed value / (RescaleSlope x ScaleSlope)) so that "
            "all frames share one scale; a given AIF must be in those units")


def _apply_real_world_values(frames):
    """The enhanced twin of the private ScaleSlope: Philips Enhanced MR frames carry their
    scale as a RealWorldValueMapping (slope, intercept). Where its slope changes from frame to
    frame the stored values of different dynamics are on different scales (alternating 1/1.25
    gave MBF 3.10 for 2.63 with QC "pass"): every frame is then read as its real-world value.
    A constant mapping that differs from the rescale only says in which units a given AIF must
    be. Returns a warning or None."""
    def number(frame, tag):
        try:
            return float(frame.get(tag))
        except (TypeError, ValueError):
            return None
    slopes = [number(f, "RealWorldValueSlope") for f in frames]
    known = {round(v, 9) for v in slopes if v is not None}
    if not known:
        return None
    if len(known) == 1:
        rescale = number(frames[0], "RescaleSlope") or 1.0
        factor = next(iter(known)) / rescale
        if abs(factor - 1) < 1e-6:
            return None
        return (f"the images' real-world value mapping (RealWorldValueSlope {next(iter(known)):g}) scales their displayed "
                f"values by {factor:g}: the images are read in displayed values, and a given AIF must be in those units")
    if any(v is None or v <= 0 for v in slopes):
        raise CardiacInputError(frames[0].source.path, "some frames carry a RealWorldValueMapping whose slope varies and some "
                                                       "none (or a slope of 0): their pixel values are on different scales; "
                                                       "export the series again")
    for frame, slope in zip(frames, slopes):
        frame.values["RescaleSlope"] = slope
        frame.values["RescaleIntercept"] = number(frame, "RealWorldValueIntercept") or 0.0
    return (f"the real-world value mapping varies within the series (RealWorldValueSlope {min(known):g}-{max(known):g}): "
            "every frame is read as its real-world value so that all share one scale; a given AIF must be in those units")


def load_dicom_series(folder, series=None, kind=None, progress=None, kind_asked=None, as_aif=False):
    """Read one series of a DICOM folder into a Study (see the module docstring for ordering).

    kind None: cine or perfusion as the frame times say (``choose_frame_clock``), recorded in
    ``provenance["timing"]``; the final word is ``readers.series_kind.decide_kind``'s.
    ``kind_asked`` (``--kind``) only narrows which series of a whole exam is read
    (``_series_of_kind``); whether the data agree is ``decide_kind``'s to say. ``as_aif``: the
    series is read as a dual-sequence AIF series (``aif_series``), which the images' reading refuses.
    """
    with _quiet():
        return _load_series(Path(folder), series, kind, progress, kind_asked, as_aif)


def _load_series(folder, series, kind, progress, kind_asked=None, as_aif=False):
    if not folder.is_dir():
        raise CardiacInputError(folder, "not a folder")
    progress = as_progress(progress)
    notes = {}
    all_series, skipped = scan_dicom_folder(folder, progress, notes=notes)
    try:
        study = _stack_from_series(folder, series, kind, progress, all_series, skipped, kind_asked, as_aif)
    except CardiacInputError as e:
        broken = [b for b in notes["broken"] if str(b[0]) != e.path]
        if not broken:
            raise
        # an unreadable file may be the image this series misses: say so, not just "frame counts"
        raise CardiacInputError(e.path, f"{e.problem}; unreadable file(s) in the folder that may belong to it: "
                                        f"{_names([b[0] for b in broken], folder)} ({broken[0][1]})") from e
    aif_uid = study.provenance.get("aif_series_uid")
    if aif_uid is not None and series != aif_uid:
        # read from this scan now: the AIF needs it, and a second load would parse every header again
        try:
            study.companion_series[aif_uid] = check_geometry(
                _stack_from_series(folder, aif_uid, None, progress, all_series, skipped, as_aif=True), folder)
        except CardiacInputError as e:
            # the images are fine; without a readable AIF series the AIF comes from their LV pool
            del study.provenance["aif_series_uid"]
            add_warning(study, f"the dual-sequence AIF series {aif_uid} beside the images could not be read ({e.problem}): "
                               "not used")
    for f, problem in notes["broken"]:
        add_warning(study, f"{f}: skipped, {problem}")
    uids = study.provenance["series_uid"].split("+") + ([aif_uid] if aif_uid in study.companion_series else [])
    for uid in uids:
        if uid in notes["merged"]:
            add_warning(study, notes["merged"][uid])
    copies = [c for u in uids for c in notes["duplicates"].get(u, [])]
    if copies:
        pairs = "; ".join(f"{_names([c], folder)} = {_names([k], folder)}" for c, k in copies[:3])
        more = f" and {len(copies) - 3} more" if len(copies) > 3 else ""
        add_warning(study, f"{len(copies)} file(s) are copies of other images (same SOPInstanceUID, position and time), "
                           f"read once: {pairs}{more}")
    return check_geometry(study, folder)


MIN_TILT_NOTED_DEG = 0.1   # a re-planned slice is tilted by degrees; under this, the same plane written with float noise


def _drop_reference_images_of_another_matrix(folder, uid, geo, items):
    """(geo, items, notes) without proton-density reference images a protocol acquired at another
    matrix or pixel size than its dynamics (a coarser PD scan filed in the perfusion series): the
    series was refused as one that mixes pixel sizes, unnamed as what they are (probe 97). They
    are told by their FlipAngle, which differs from that of every dynamic while the dynamics share
    one, and are a few per slice position (at most MAX_PD_FRAMES) beside at least MIN_DYNAMICS
    dynamics; anything else (a slice re-acquired at the dynamics' flip angle, a crop) is left to
    the checks that refuse a stack of mixed sizes."""
    from .pd_frames import MIN_DYNAMICS

    def size(g):
        return int(g[1].Rows), int(g[1].Columns), tuple(np.round(np.asarray(g[4], float), 3))

    def flip(g):
        try:
            return float(g[1].get("FlipAngle"))
        except (TypeError, ValueError):
            return float("nan")

    sizes = Counter(size(g) for g in geo)
    if len(sizes) < 2:
        return geo, items, []
    main = max(sizes, key=sizes.get)
    dynamics = [g for g in geo if size(g) == main]
    others = [g for g in geo if size(g) != main]
    dynamic_flips = np.array([flip(g) for g in dynamics])
    other_flips = np.array([flip(g) for g in others])
    if not (np.all(np.isfinite(dynamic_flips)) and np.all(np.isfinite(other_flips))):
        return geo, items, []
    dynamic = float(np.median(dynamic_flips))
    if np.any(np.abs(dynamic_flips - dynamic) > 0.5) or np.any(np.abs(other_flips - dynamic) <= 0.5):
        return geo, items, []

    # slice positions along the normal, a position's images within _POSITION_TOL_MM of each other
    # (rounded coordinates split a slice whose positions wobble by hundredths of a mm into groups
    # too small to be dynamics; review of session 45)
    normal = np.cross(np.asarray(dynamics[0][2][:3], float), np.asarray(dynamics[0][2][3:], float))
    along = sorted(float(normal @ np.asarray(g[3], float)) for g in geo)
    starts = [d for k, d in enumerate(along) if k == 0 or d - along[k - 1] > _POSITION_TOL_MM]

    def at(g):
        d = float(normal @ np.asarray(g[3], float))
        return max(k for k, start in enumerate(starts) if start <= d + 1e-9)

    per_position = Counter(at(g) for g in others)
    dynamics_per_position = Counter(at(g) for g in dynamics)
    if max(per_position.values()) > MAX_PD_FRAMES or min(dynamics_per_position.values()) < MIN_DYNAMICS:
        return geo, items, []
    left_out = {id(g[1]) for g in others}
    rows, cols, ps = size(others[0])
    flips = ", ".join(f"{v:g}°" for v in sorted(set(np.round(other_flips, 2))))
    note = (f"{len(others)} image(s) of series {uid} at another matrix or pixel size ({cols}x{rows} of {ps[1]:g} x "
            f"{ps[0]:g} mm against the dynamics' {main[1]}x{main[0]} of {main[2][1]:g} x {main[2][0]:g} mm) and FlipAngle "
            f"{flips} against the dynamics' {dynamic:g}° left out as proton-density reference images, e.g. "
            f"{_names(sorted(g[0] for g in others)[:1], folder)}: the curves use the dynamics only")
    return dynamics, [it for it in items if id(it[1]) not in left_out], [note]


def _axis_reversals(iop, main):
    """(row direction reversed, column direction reversed) where ``iop`` is ``main`` with one or
    both of its directions reversed: the stack's own pixel grid stored rotated 180° in its plane
    (both reversed) or mirrored (one reversed), which re-ordering the pixels undoes exactly; else
    None. Each direction within TILT_TOLERANCE_DEG of ``main``'s or of its reverse, as a slice
    only tilted is read with the stack: a re-planned slice comes out reversed and tilted a degree
    (left out as "rotated in-plane by 180°, not the stack's pixel grid"; review of session 47)."""
    a, b = np.asarray(iop, float), np.asarray(main, float)
    reversed_axes = []
    for u, v in ((a[:3], b[:3]), (a[3:], b[3:])):
        angle = float(np.degrees(np.arccos(np.clip(u @ v / (np.linalg.norm(u) * np.linalg.norm(v) + 1e-12), -1.0, 1.0))))
        if angle < TILT_TOLERANCE_DEG:
            reversed_axes.append(False)
        elif angle > 180.0 - TILT_TOLERANCE_DEG:
            reversed_axes.append(True)
        else:
            return None
    return tuple(reversed_axes) if any(reversed_axes) else None


def _turn_in_plane(iop, main):
    """How the image axes of ``iop`` lie against ``main``'s when both view one plane (normals
    within TILT_TOLERANCE_DEG, either way round): 'rotated in-plane by N°', 'mirrored' (the
    normal reversed) or both; None for another plane (a localiser, a long-axis view)."""
    a, b = np.asarray(iop, float), np.asarray(main, float)
    normal, main_normal = np.cross(a[:3], a[3:]), np.cross(b[:3], b[3:])
    facing = float(normal @ main_normal / (np.linalg.norm(normal) * np.linalg.norm(main_normal) + 1e-12))
    if abs(facing) < np.cos(np.radians(TILT_TOLERANCE_DEG)):
        return None
    mirrored = facing < 0
    # a mirrored image's row direction is turned against the stack's after its columns are reversed
    row = -a[:3] if mirrored else a[:3]
    turn = abs(float(np.degrees(np.arctan2(row @ b[3:], row @ b[:3]))))
    said = [f"rotated in-plane by {turn:.0f}°"] if turn >= MIN_TILT_NOTED_DEG else []
    return " and ".join((["mirrored (its normal reversed)"] if mirrored else []) + said)


def _drop_stray_orientations(geo, items, notes=None, reversed_axes=None):
    """(geo, items, dropped files) without a few images in other orientations than the stack.

    Scanners file localisers / scouts under the cine's series now and then: a handful of
    images (at most 3, or a fifth of the stack) whose orientation differs are left out, with a
    warning. So are long-axis views filed with a short-axis stack (a perfusion protocol of three
    short-axis slices and a four-chamber one): when the main orientation has several slice
    positions and at least twice the images of all others together. Anything else is two views
    of the heart, and the caller refuses it.

    ``notes`` collects (what, files, value): ("tilted", files, largest angle) for slices read
    as parallel; ("reversed", files, how) for images on the stack's pixel grid stored rotated
    180° or mirrored, kept with their position moved to the stack's corner, and their
    (reverse rows, reverse columns) put in ``reversed_axes`` by id for the pixels;
    ("turned", files, how) for images left out that lie in the stack's plane turned some other
    way (not a localiser: said as what they are)."""
    keys = [tuple(np.round(g[2], 3)) for g in geo]
    counts = {}
    for k in keys:
        counts[k] = counts.get(k, 0) + 1
    if len(counts) < 2:
        return geo, items, []
    main = max(counts, key=counts.get)
    # a slice stored rotated 180° in its own plane (both directions reversed, its position at the
    # opposite corner) is the stack's grid read backwards: left out as "a localiser", it left a
    # slice gap (EDV 190.6 for 191.4 mL, QC pass; probe 101)
    flips = {k: _axis_reversals(k, main) for k in counts if k != main}
    flips = {k: f for k, f in flips.items() if f is not None}
    if flips:
        turned_geo, turned_keys = [], []
        for g, k in zip(geo, keys):
            if k not in flips:
                turned_geo.append(g)
                turned_keys.append(k)
                continue
            row_reversed, col_reversed = flips[k]
            rows, cols = int(g[1].Rows), int(g[1].Columns)
            # the first pixel of the stack's grid: the far end of each reversed direction
            ipp = np.asarray(g[3], float) + row_reversed * g[2][:3] * g[4][1] * (cols - 1) \
                + col_reversed * g[2][3:] * g[4][0] * (rows - 1)
            # the image's own directions turned back, not the key rounded to 3 decimals: where this
            # image gave the stack its orientation, its spacing came out 1.4995 for 1.5 mm (review
            # of session 47). One also tilted keeps its tilt, read as parallel below
            iop = np.concatenate([-g[2][:3] if row_reversed else g[2][:3], -g[2][3:] if col_reversed else g[2][3:]])
            turned_geo.append((g[0], g[1], iop, ipp) + tuple(g[4:]))
            turned_keys.append(tuple(np.round(iop, 3)))
            if reversed_axes is not None:
                reversed_axes[id(g[1])] = (col_reversed, row_reversed)   # array axes: rows, columns
        if notes is not None:
            for how in sorted(set(flips.values())):
                files = [g[0] for g, k in zip(geo, keys) if flips.get(k) == how]
                notes.append(("reversed", files, "rotated 180° within the stack's plane" if all(how) else
                              f"mirrored within the stack's plane (its {'row' if how[0] else 'column'} direction reversed)"))
        geo, keys = turned_geo, turned_keys
        counts = dict(Counter(keys))
        if len(counts) < 2:
            return geo, items, []
    # slices a few degrees off the stack (re-planned) belong to it: read as parallel to it, with
    # the orientation of an image on the stack (the key is rounded to 3 decimals)
    tilted = {k: _orientation_angle_deg(k, main) for k in counts if k != main}
    tilted = {k: a for k, a in tilted.items() if a < TILT_TOLERANCE_DEG}
    if tilted:
        files = [g[0] for g, k in zip(geo, keys) if k in tilted]
        if notes is not None and max(tilted.values()) >= MIN_TILT_NOTED_DEG:
            # orientations a rounding apart (float noise across a 0.0005 step) are one plane: no
            # "tilted up to 0.0 deg (a re-planned slice?)" (probe 77)
            notes.append(("tilted", files, max(tilted.values())))
        on_stack = next(np.asarray(g[2], float) for g, k in zip(geo, keys) if k == main)
        geo = [(g[0], g[1], on_stack) + tuple(g[3:]) if k in tilted else g for g, k in zip(geo, keys)]
        for k in tilted:
            counts[main] += counts.pop(k)
        keys = [main if k in tilted else k for k in keys]
        if len(counts) < 2:
            return geo, items, []
    stray = len(geo) - counts[main]
    positions = {tuple(np.round(g[3], 1)) for g, k in zip(geo, keys) if k == main}
    a_stack_beside_views = len(positions) >= 2 and 2 * stray <= counts[main]
    if counts[main] < 2 or (stray > max(3, 0.2 * counts[main]) and not a_stack_beside_views):
        return geo, items, []
    keep = [k == main for k in keys]

    def name(g, it):
        # an enhanced file's frames are named by number: "cine.dcm, cine.dcm, cine.dcm" named none (probe 49)
        return f"{g[0]} frame {it[1].frame_number}" if isinstance(it[1], EnhancedFrame) else g[0]
    # in the stack's plane but turned another way (90°): no localiser, and said as what it is
    turns = {k: _turn_in_plane(k, main) for k in counts if k != main}
    if notes is not None:
        for how in sorted({t for t in turns.values() if t}):
            notes.append(("turned", [name(g, it) for g, it, k in zip(geo, items, keys) if turns.get(k) == how], how))
    dropped = [name(g, it) for g, it, ok, k in zip(geo, items, keep, keys) if not ok and not (notes is not None and turns.get(k))]
    return [g for g, ok in zip(geo, keep) if ok], [it for it, ok in zip(items, keep) if ok], dropped


def _temporal_position(ds):
    """The frame's place in the time series by number: an enhanced frame's TemporalPositionIndex,
    a classic image's TemporalPositionIdentifier (Canon and others number the dynamics so, with
    one clock value for the whole series and InstanceNumber restarting every dynamic); None."""
    if isinstance(ds, EnhancedFrame):
        return ds.temporal_index
    try:
        value = ds.get("TemporalPositionIdentifier")
        return int(value) if value not in (None, "") else None
    except (TypeError, ValueError):
        return None


def _frame_numbers(groups):
    """Each frame's dynamic number (TemporalPositionIdentifier / TemporalPositionIndex, the
    median over slices) where every image has one and they rise through the frames; else None.
    A series without a clock is placed on --dt by them: a lost dynamic leaves a gap in the
    numbers that frames put side by side closed (MBF 12 % low, time to peak a beat short,
    nothing said; probe 97)."""
    rows = [[_temporal_position(item[1]) for item in grp] for grp in groups]
    if not rows or any(v is None for row in rows for v in row) or len({len(r) for r in rows}) != 1:
        return None
    numbers = np.median(np.array(rows, float), axis=0)
    if len(numbers) < 2 or np.any(np.diff(numbers) <= 0) or np.any(numbers != np.round(numbers)):
        return None
    return [int(v) for v in numbers]


def _same_time_key(ds):
    """What says 'the same frame' at one slice position; None when the image has no time."""
    key = (_trigger_s(ds), _clock_s(ds), _temporal_position(ds))
    return None if all(v is None for v in key) else tuple(None if v is None else round(float(v), 4) for v in key)


# Trigger delays spanning less than this are no cardiac cycle (a cine at 180 beats/min still
# spans some 0.25 s): they are one delay per heartbeat of a single-shot acquisition (a first
# pass written with the delay measured at each beat, 140-180 ms), so runs of them say nothing
# of repeated cycles.
MIN_CYCLE_SPAN_S = 0.2


def _refuse_repeated_cycles(folder, groups, positions):
    """A slice position whose trigger delays each occur the same number of times (k >= 2, over 5
    or more delays) holds k acquisitions of the cardiac cycle: a repeated breath-hold filed in
    the same series (one Enhanced MR file, or images under one UID). Their acquisition times
    differ, so no two images looked like one frame, and the k cycles were read as one cycle of
    k times the phases, ED and ES possibly from different acquisitions, with QC "pass"."""
    for pos, grp in zip(positions, groups):
        delays = [_trigger_s(g[1]) for g in grp]
        if any(d is None for d in delays) or max(delays) - min(delays) < MIN_CYCLE_SPAN_S:
            continue
        values, counts = np.unique(np.round(delays, 4), return_counts=True)
        if values.size >= 5 and counts.min() >= 2 and counts.min() == counts.max():
            # the files of one delay named: an export sent twice under new UIDs is told apart from
            # a repeated breath-hold by comparing them, and only the files say which to remove (probe 58)
            first = np.round(delays, 4) == values[0]
            same_delay = [g[0] for g, here in zip(grp, first) if here]
            raise CardiacInputError(folder, f"at slice position {pos:.2f} mm every trigger delay occurs {counts[0]} times "
                                            f"({values.size} delays, {len(grp)} images; at {values[0] * 1000:g} ms: "
                                            f"{_names(same_delay, folder)}): the series holds {counts[0]} acquisitions of "
                                            "the cardiac cycle (a repeated breath-hold?) or the same images exported "
                                            f"{counts[0]} times under new UIDs; neither can be read as one: export one of "
                                            "them (or give its series alone), or remove the copies")
        runs = _cycles_in_stored_order(grp, delays)
        if runs:
            one_place = (" several slices stored with one position (every frame of the Enhanced MR file takes its "
                         "PlanePositionSequence from the shared functional group?) or" if isinstance(grp[0][1], EnhancedFrame)
                         else " several slices stored with one ImagePositionPatient or")
            raise CardiacInputError(folder, f"at slice position {pos:.2f} mm the trigger delays run through the cardiac cycle "
                                            f"{len(runs)} times in stored order ({min(runs)}-{max(runs)} images each, "
                                            f"{len(grp)} in all): the images are{one_place} repeated acquisitions, not one "
                                            "cycle; export the series with each slice's own position")


def _cycles_in_stored_order(grp, delays):
    """Lengths of the rising runs of trigger delays in stored order (InstanceNumber, then frame
    number) when there are two or more and each is a whole cycle (5+ images spanning 70 % of
    the delays), else []. Slices of a stack filed with one position (all frames of an Enhanced
    MR file placed by its shared group) or cycles of unequal length (RR changes) escape the
    equal-count test above; a single cycle stored from mid-cycle gives two partial runs."""
    def stored(i):
        ds = grp[i][1]
        return int(ds.get("InstanceNumber", 0) or 0), ds.index if isinstance(ds, EnhancedFrame) else 0
    indices = [g[1].temporal_index for g in grp if isinstance(g[1], EnhancedFrame)]
    if len(indices) == len(grp) and None not in indices and len(set(indices)) == len(indices):
        # enhanced frames each numbered in time: their order in the file means nothing (a valid
        # file with its frames shuffled was refused, probe 49), and slices filed with one
        # position would repeat the numbers
        return []
    keys = [stored(i) for i in range(len(grp))]
    if len(set(keys)) < len(keys):
        # no stored order to read (InstanceNumber removed by an anonymiser, the files renamed to
        # their UIDs): file order is no cycle order, and a valid cine was refused as "the trigger
        # delays run through the cardiac cycle 3 times" (probe 48)
        return []
    order = sorted(range(len(grp)), key=stored)
    d = np.asarray([delays[i] for i in order], float)
    full = float(d.max() - d.min()) if d.size else 0.0
    if d.size < 10 or full <= 0:
        return []
    cuts = [0] + [i + 1 for i in range(d.size - 1) if d[i] - d[i + 1] > 0.5 * full] + [d.size]
    runs = [d[a:b] for a, b in zip(cuts[:-1], cuts[1:])]
    if len(runs) < 2 or any(r.size < 5 or float(r.max() - r.min()) < 0.7 * full for r in runs):
        return []
    gaps = np.diff(np.sort(d))
    if gaps.min() > 0.5 * np.median(gaps):
        # the delays of one cycle, evenly spaced, in another stored order (a PACS that renumbered
        # the instances: a valid Sunnybrook cine was refused, probe 55); cycles of several slices
        # or acquisitions put delays of the same phase next to each other
        return []
    return [int(r.size) for r in runs]


def _phases_matched_by_trigger_time(folder, groups, clock, positions=None):
    """None when the first phases of every slice share their trigger delays (a slice whose
    cycle is only shorter: the common phases are kept by number); else (groups, note) with
    each slice's phase nearest in time to each phase of the slice with the fewest. Arrhythmia
    rejection or a heart-rate change can give one slice 25 phases over the RR interval that
    others cover in 30: kept by number, its phase 20 was 130 ms later than the others', so ED
    and ES mixed moments (EF 3 points low, QC pass). CardiacInputError when no phase lies
    within half a phase step of the reference."""
    if clock != "TriggerTime":
        return None
    delays = [np.array([_trigger_s(g[1]) for g in grp], float) for grp in groups]
    n = min(len(d) for d in delays)
    ref = delays[int(np.argmin([len(d) for d in delays]))]
    step = float(np.median(np.diff(ref))) if n > 1 else 0.0
    if not step > 0 or all(np.max(np.abs(d[:n] - ref)) <= 0.25 * step for d in delays):
        return None
    picked, worst = [], 0.0
    for grp, d in zip(groups, delays):
        idx = np.abs(d[:, None] - ref[None, :]).argmin(0)
        worst = max(worst, float(np.max(np.abs(d[idx] - ref))))
        if len(set(idx.tolist())) < n:
            return _phases_matched_by_cycle_share(groups, delays, positions)
        picked.append([grp[i] for i in idx])
    if worst > 0.5 * step:
        raise CardiacInputError(folder, f"slices have {n}-{max(len(d) for d in delays)} phases whose trigger delays "
                                        "do not line up (arrhythmia rejection, or acquisitions of different cycles): "
                                        "no common phases to stack")
    steps = sorted({round(1000 * float(np.median(np.diff(d))), 1) for d in delays if d.size > 1})
    note = (f"slices have {n}-{max(len(d) for d in delays)} phases over the cycle ({', '.join(f'{v:g}' for v in steps)} ms "
            f"apart: arrhythmia rejection or a heart-rate change): each slice's phases matched by trigger delay to the {n} "
            f"of the slice with the fewest (within {1000 * worst:.0f} ms)")
    return picked, note


def _phases_per_cycle(grp):
    """The phases a slice's header says its cycle was acquired in (CardiacNumberOfImages, one
    value for all its images), or None."""
    values = set()
    for item in grp:
        try:
            values.add(int(item[1].get("CardiacNumberOfImages")))
        except (AttributeError, TypeError, ValueError):
            return None
    return values.pop() if len(values) == 1 and min(values) > 0 else None


# A slice short of its header's phase count by at most this share (one file at least) lost it
LOST_PHASES_SHARE = 0.1


def _acquired_phases(groups, delays):
    """Each slice's phases per cycle: what it holds, or its header's CardiacNumberOfImages where
    it holds a few fewer (``LOST_PHASES_SHARE``) and another slice holds that many: a file lost.
    A series-wide or wrong header count is not taken (slices of 20 beside slices of 25, all
    headed 25, would have had their cycles stretched: helper-90's review)."""
    held = [len(d) for d in delays]
    acquired = []
    for grp, n in zip(groups, held):
        header = _phases_per_cycle(grp) or 0
        lost = header - n
        acquired.append(header if 0 < lost <= max(1, round(LOST_PHASES_SHARE * header)) and header in held else n)
    return acquired


def _phases_matched_by_cycle_share(groups, delays, positions=None):
    """(groups, note) with each slice's phase nearest, as a share of its own cycle, to each phase
    of the slice with the fewest; None when two would take one phase, or one lies over half a
    phase off. Slices of 25 phases over a shorter cycle (a faster heart in their breath-hold)
    beside slices of 20 match no delay in milliseconds near the cycle's end: they had been cut
    to their first 20 phases, 0-76 % of their cycle (ED and ES moved, volumes 3 % low; probe 58).
    A slice's cycle is its phase step times the phases its header says it was acquired in
    (``_phases_per_cycle``) where it holds fewer: one file lost (its last phase) had made a
    cycle of 19 steps of 20, each phase matched a little late (probe 57's rerun)."""
    acquired = _acquired_phases(groups, delays)

    def shares(d, phases):
        step = float(np.median(np.diff(d)))
        return (d - d[0]) / (step * phases)
    n = min(len(d) for d in delays)
    fewest = int(np.argmin([len(d) for d in delays]))
    ref = shares(delays[fewest], acquired[fewest])
    picked, worst = [], 0.0
    for grp, d, phases in zip(groups, delays, acquired):
        own = shares(d, phases)
        idx = np.abs(own[:, None] - ref[None, :]).argmin(0)
        worst = max(worst, float(np.max(np.abs(own[idx] - ref))))
        if len(set(idx.tolist())) < n:
            return None
        picked.append([grp[i] for i in idx])
    if worst > 0.5 / n:
        return None
    cycles = [1000 * float(np.median(np.diff(d))) * phases for d, phases in zip(delays, acquired)]
    lost = [k for k, (d, phases) in enumerate(zip(delays, acquired)) if len(d) < phases]
    said = "; ".join(f"slice {k}{f' at {positions[k]:.1f} mm' if positions is not None else ''} holds {len(delays[k])} of "
                     f"the {acquired[k]} phases its header gives (CardiacNumberOfImages)" for k in lost[:3])
    why = (f"{said}: an image lost in a copy or transfer?" if lost else "the heart rate changed between breath-holds")
    note = (f"slices have {n}-{max(len(d) for d in delays)} phases over cycles of {min(cycles):.0f}-{max(cycles):.0f} ms "
            f"({why}): each slice's phases matched to the {n} of the slice with the fewest by their place in its own "
            f"cycle (within {100 * worst:.0f} % of a cycle)")
    return picked, note


# Slices read in one heartbeat keep one offset from each other in every dynamic, to the clock's
# resolution (1-2.5 ms)
SAME_BEAT_OFFSET_SD_S = 0.02
# Consecutive intervals of a clock with a random lag per image correlate at -0.5 (each lag
# enters two intervals with opposite signs); a heartbeat's intervals, irregular or not, near 0
LAG_PULL_CORRELATION = -0.25


def slice_interval_disagreement(times):
    """How far the slices' intervals for one dynamic differ (s, the median over dynamics of their
    range), among slices read in the same heartbeat; None with under 3 dynamics or 2 slices.

    The slices of one heartbeat share its intervals, so a clock on which they do not is no
    acquisition clock (a reconstruction time written with a lag read as irregular heartbeats:
    MBF -19 %, probe 88). Slices read in the next heartbeat (a dynamic over two beats) have
    intervals of their own under arrhythmia: only slices that keep one offset from each other
    are compared, or all when none do (every slice's time jitters)."""
    times = np.asarray(times, float)
    if times.ndim != 2 or times.shape[0] < 3 or times.shape[1] < 2:
        return None
    n = times.shape[1]
    group = list(range(n))

    def root(i):
        while group[i] != i:
            i = group[i]
        return i
    for i in range(n):
        for j in range(i + 1, n):
            if float(np.std(times[:, j] - times[:, i])) < SAME_BEAT_OFFSET_SD_S:
                group[root(j)] = root(i)
    members = {}
    for i in range(n):
        members.setdefault(root(i), []).append(i)
    beats = [m for m in members.values() if len(m) >= 2]
    if not beats:
        # every slice in a heartbeat of its own: under arrhythmia their intervals differ too. A
        # clock stamped with a random lag gives each interval the difference of two lags, so
        # consecutive intervals pull against each other (lag-1 correlation near -0.5); heartbeats'
        # do not (near 0)
        steps = np.diff(times, axis=0)
        steps = steps - np.median(steps, axis=0)
        pulls = [float(np.corrcoef(d[:-1], d[1:])[0, 1]) for d in steps.T if d.size > 3 and np.std(d) > 0]
        if not pulls or np.median(pulls) > LAG_PULL_CORRELATION:
            return None
        beats = [list(range(n))]
    spread = np.concatenate([np.ptp(np.diff(times[:, m], axis=0), axis=1) for m in beats])
    return round(float(np.median(spread)), 4)


def _distinct_instance_numbers(records):
    """Every image has an InstanceNumber and no two share one: untimed images then follow it (the
    sort in _stack_from_series). The frames of one enhanced file share their file's number, so
    frames of one file at one position never pass: their order in the file means nothing."""
    numbers = [g[1].get("InstanceNumber") for g in records]
    return all(n not in (None, "") for n in numbers) and len(set(map(str, numbers))) == len(numbers)


def _follow_instance_numbers(groups):
    """Untimed frames ordered by InstanceNumber: at every position no temporal position tells
    them apart, and their InstanceNumbers do."""
    return all(len({_temporal_position(g[1]) for g in grp}) == 1 and _distinct_instance_numbers(grp) for grp in groups)


def _refuse_frames_without_place(folder, groups):
    """With no frame clock, enhanced frames follow their TemporalPositionIndex. A frame without
    one, among frames that have it, has no known place in time: sorted as index 0 it went to the
    start of its slice (MBF 2 % off, QC pass)."""
    for grp in groups:
        frames = [g for g in grp if isinstance(g[1], EnhancedFrame)]
        lacking = [g for g in frames if g[1].temporal_index is None]
        if lacking and len(lacking) < len(frames):
            names = ", ".join(f"frame {g[1].frame_number}" for g in lacking[:3])
            raise CardiacInputError(lacking[0][0], f"{names} ha{'s' if len(lacking) == 1 else 've'} neither an acquisition "
                                                   "time (FrameAcquisitionDateTime) nor a TemporalPositionIndex while the "
                                                   "other frames have an index: its place in the time series is unknown; "
                                                   "re-export the series")
        if len(frames) > 1 and len({_same_time_key(g[1]) for g in frames}) == 1 and not _distinct_instance_numbers(frames):
            # one trigger delay, one clock and no index for all the frames of a position: what
            # is left is their order in the file, which means nothing (the frames of a shuffled
            # file were read so: EF 20 % for 51 %, QC review only; probe 88). Frames of files
            # numbered apart (Siemens XA: one file per dynamic, times anonymised) follow the
            # files' InstanceNumber, as classic images do (refused here, --dt or not; probe 102)
            files = list(dict.fromkeys(g[0] for g in frames))
            where = (f"in {len(files)} files whose InstanceNumbers do not tell them apart (e.g. {_names(files[:2], folder)})"
                     if len(files) > 1 else "")
            raise CardiacInputError(frames[0][0] if len(files) == 1 else folder,
                                    f"{len(frames)} frames at one slice position {where}{' ' if where else ''}and nothing "
                                    "orders them in time: no trigger delay (CardiacSynchronizationSequence), "
                                    "FrameAcquisitionDateTime, TemporalPositionIndex or time dimension index "
                                    "(DimensionIndexValues) that differs between them; re-export the series with its timing")
        classic = [g for g in grp if not isinstance(g[1], EnhancedFrame)]
        if len(classic) > 1 and all(_temporal_position(g[1]) is None for g in classic):
            if not _distinct_instance_numbers(classic):
                # no trigger delay, clock, temporal position or distinct InstanceNumber: the
                # frames were stacked in file-name order, random in a PACS export by UID (the
                # network's EF 28-30 % for 52 %; probe 26)
                raise CardiacInputError(classic[0][0], f"{len(classic)} images at one slice position and nothing orders them "
                                                       "in time: no TriggerTime, acquisition time, TemporalPositionIdentifier "
                                                       "or distinct InstanceNumber; re-export the series with its timing tags")


def _refuse_same_position_and_time(folder, groups, positions, coarse=False):
    """Two different images at one slice position and one frame time cannot both be a frame.

    A time shared by every image of a position tells nothing (a constant trigger delay and no
    acquisition time: frames then follow InstanceNumber), so only collisions among otherwise
    distinct times are refused. With a ``coarse`` clock (whole seconds) two frames may share a
    second: their InstanceNumber must then differ, and follow the clock."""
    for pos, grp in zip(positions, groups):
        keys = [_same_time_key(g[1]) for g in grp]
        if coarse:
            _refuse_numbers_against_the_clock(folder, grp, pos)
            keys = [None if key is None else key + (g[1].get("InstanceNumber"),) for key, g in zip(keys, grp)]
        if len({k for k in keys if k is not None}) <= 1:
            continue
        first = {}
        for g, key in zip(grp, keys):
            if key is None:
                continue
            if key in first:
                if coarse and g[1].get("InstanceNumber") in (None, ""):
                    raise CardiacInputError(g[0], f"acquisition times are in whole seconds and the images carry no "
                                                  f"InstanceNumber: this image and {_names([first[key][0]], folder)} at "
                                                  f"slice position {pos:.2f} mm were acquired in the same second and nothing "
                                                  "orders them; re-export the series with its full acquisition times (or "
                                                  "its InstanceNumbers)")
                lacking = _time_tag_lacking(grp, keys, key)
                if lacking:
                    tag, without = lacking
                    raise CardiacInputError(g[0], f"{len(without)} image(s) at slice position {pos:.2f} mm have no {tag} "
                                                  f"(empty or absent; e.g. this one and {_names([first[key][0]], folder)}) "
                                                  f"while the other {len(grp) - len(without)} there have one: their place in "
                                                  "the time series is unknown; re-export the series with its timing tags, "
                                                  "or leave those files out")
                hint = ""
                if len(groups) == 1:
                    hint = (f"; all {len(grp)} images lie at one slice position: if this is meant to be a stack, "
                            "their ImagePositionPatient is wrong")
                raise CardiacInputError(g[0], f"a second image at slice position {pos:.2f} mm with the same frame time "
                                              f"(TriggerTime/AcquisitionTime) as {_names([first[key][0]], folder)}: "
                                              f"{_same_time_advice(g[0], first[key][0])}{hint}")
            first[key] = g


def _files_hold_same_pixels(path, other):
    """True when two DICOM files hold the same pixels, False when not, None when either cannot
    be decoded."""
    try:
        import pydicom

        return bool(np.array_equal(pydicom.dcmread(str(path)).pixel_array, pydicom.dcmread(str(other)).pixel_array))
    except Exception:  # noqa: BLE001 - unreadable pixels: the caller says both ways
        return None


def _drop_copies_under_new_uids(folder, groups):
    """(groups, notes) with each image that repeats another at its slice position and frame time
    pixel for pixel, under another SOPInstanceUID (a PACS re-send, an export run twice into one
    folder), read once. Such a series was refused ("remove one of the two files"; probe 97),
    though nothing about it is in doubt; two different images at one time still are refused
    (``_refuse_same_position_and_time``). A time every image of a position shares (a constant
    trigger delay, no clock) says nothing, so no pixels are compared there."""
    copies = []
    for grp in groups:
        keys = [None if isinstance(g[1], EnhancedFrame) else _same_time_key(g[1]) for g in grp]
        if len({k for k in keys if k is not None}) <= 1:
            continue
        first, keep = {}, []
        for g, key in zip(grp, keys):
            if key is not None and key in first and _files_hold_same_pixels(g[0], first[key][0]):
                copies.append((g[0], first[key][0]))
                continue
            if key is not None:
                first.setdefault(key, g)
            keep.append(g)
        grp[:] = keep
    if not copies:
        return groups, []
    pairs = "; ".join(f"{_names([c], folder)} = {_names([k], folder)}" for c, k in copies[:3])
    more = f" and {len(copies) - 3} more" if len(copies) > 3 else ""
    return groups, [f"{len(copies)} file(s) repeat another image pixel for pixel at its slice position and frame time "
                    f"under a new SOPInstanceUID (sent or exported twice), read once: {pairs}{more}"]


def _same_time_advice(path, other):
    """What to do about two images at one position and one frame time: a duplicate (the same
    pixels) is removed; two different images are two frames whose clock is wrong, or two
    acquisitions mixed, and removing one drops a real frame (probe 82: "remove one of the two
    files" was said of two real dynamics)."""
    same = _files_hold_same_pixels(path, other)
    if same:
        return "the same pixels: a duplicate stored under a new UID; remove one of the two files"
    said = "different pixels: " if same is False else ""
    return (f"{said}two frames whose clock is wrong, or two acquisitions mixed in one series; their order in time cannot "
            "be read, and removing one would drop a real frame: re-export the series with its acquisition times, or "
            "put each acquisition in a folder of its own")


_TIME_KEY_TAGS = ("TriggerTime", "acquisition time", "TemporalPositionIdentifier")   # _same_time_key's parts


def _time_tag_lacking(grp, keys, key):
    """(tag, [images]) when the images of one position whose frame time is ``key`` collide
    because a part of it most of the others have is empty on them (GE: TriggerTime empty on a
    few images, the series' one AcquisitionTime left: they read as duplicates of each other and
    the error advised removing one; probe 56), else None."""
    for part, tag in enumerate(_TIME_KEY_TAGS[:len(key)]):
        if key[part] is not None:
            continue
        have = sum(k is not None and k[part] is not None for k in keys)
        if have >= len(grp) / 2:
            return tag, [g for g, k in zip(grp, keys) if k is None or k[part] is None]
    return None


def _refuse_numbers_against_the_clock(folder, grp, pos):
    """With times in whole seconds, InstanceNumber orders the frames of one second: it must rise
    with the clock. An anonymiser that renumbered the images and cut the times to the second put
    a quarter of a perfusion series' frames out of order: MBF +33 % with QC pass (probe 48)."""
    timed = []
    for g in grp:
        t, number = _clock_s(g[1]), g[1].get("InstanceNumber")
        if t is not None and number not in (None, ""):
            timed.append((t, int(number), g[0]))
    timed.sort(key=lambda x: x[:2])   # by second, then number: only a fall between seconds is left
    falls = [i for i in range(1, len(timed)) if timed[i][1] < timed[i - 1][1]]
    if falls:
        later, earlier = timed[falls[0]], timed[falls[0] - 1]
        raise CardiacInputError(later[2], f"acquisition times are in whole seconds and InstanceNumber does not follow them "
                                          f"(at slice position {pos:.2f} mm, #{later[1]} was acquired after "
                                          f"{_names([earlier[2]], folder)}, #{earlier[1]}; {len(falls)} such fall(s)): the "
                                          "images were renumbered (an anonymiser?), so the frames within a second cannot be "
                                          "ordered; re-export the series with its full acquisition times or its original "
                                          "InstanceNumbers")


def _check_memory(folder, items):
    """Refuse a series whose headers describe more than this machine can analyse, before any
    pixels are read: the headers are the ones just parsed, and only the chosen series counts."""
    from ..memory_check import FLOAT32_BYTES, refuse_if_too_large

    voxels, largest, largest_n = 0, None, -1
    for f, ds in items:
        try:
            n = int(ds.get("Rows", 0) or 0) * int(ds.get("Columns", 0) or 0)
        except (TypeError, ValueError):
            continue   # the geometry checks name the file
        voxels += n
        if n > largest_n:
            largest, largest_n = f, n
    refuse_if_too_large(folder, voxels * FLOAT32_BYTES, largest)


def _slices_along(geo, normal):
    """Images grouped by slice: (groups, each slice's median position along ``normal``, the
    first slice's origin (LPS, its images' median), the largest spread of one slice's positions).
    A position within ``_POSITION_TOL_MM`` of its neighbour in the sorted order joins its slice."""
    geo.sort(key=lambda g: float(normal @ g[3]))
    groups, along = [], []
    for g in geo:
        d = float(normal @ g[3])
        if not along or d - along[-1][-1] > _POSITION_TOL_MM:
            groups.append([])
            along.append([])
        groups[-1].append(g)
        along[-1].append(d)
    positions = [float(np.median(a)) for a in along]
    origin = np.median(np.array([g[3] for g in groups[0]], float), axis=0)
    spread = max(a[-1] - a[0] for a in along)
    return groups, positions, origin, spread


# PixelSpacing times the matrix and ReconstructionDiameter (the field of view, GE writes it) agree
# to rounding; further apart one of them is wrong
MAX_FIELD_OF_VIEW_MISMATCH = 0.1


def pixel_spacing_against_diameter(ds, ps):
    """None, or {"message", "diameter_mm", "field_of_view_mm", "pixel_mm_by_diameter"} when the
    field of view PixelSpacing gives (``ps`` (row, column) mm times Rows and Columns, the larger
    side) and the image's ReconstructionDiameter disagree by over 10 %. Volumes scale with the
    pixel area: PixelSpacing 1\\1 written into a GE cine of 1.37 mm pixels read EDV 47 % low with
    QC pass (probe 47), where ReconstructionDiameter still said 350 mm."""
    try:
        return spacing_against_diameter(float(ds.get("ReconstructionDiameter")), int(ds.Rows), int(ds.Columns), ps)
    except (TypeError, ValueError, AttributeError):
        return None


def spacing_against_diameter(diameter, rows, columns, ps, crop_possible=True):
    """``pixel_spacing_against_diameter`` from the numbers: a ReconstructionDiameter (mm), the
    matrix and the pixel spacing (row, column) mm. Also what a scene reopened in Slicer asks
    again of the spacing its volume has now (changed there since the file was read).
    ``crop_possible``: False where the image is known to fill the diameter (in Slicer: the file
    as read did), so a spacing that only makes it look like a crop is not excused as one."""
    fov = max(rows * float(ps[0]), columns * float(ps[1]))
    if not (diameter > 0 and fov > 0) or abs(fov / diameter - 1) <= MAX_FIELD_OF_VIEW_MISMATCH:
        return None
    matrix = diameter / max(float(ps[0]), float(ps[1]))
    if crop_possible and fov < diameter and matrix >= max(rows, columns) and abs(matrix / (16 * round(matrix / 16)) - 1) < 0.005:
        # the diameter holds a reconstruction matrix (a multiple of 16) of these pixels, of which
        # the image keeps a part: an export cropped around the heart, its volumes right (a
        # 128-px crop of Sunnybrook's 256 read "4.00 times as large", probe 50)
        return None
    pixel = diameter / max(rows, columns)
    return {"diameter_mm": diameter, "field_of_view_mm": round(fov, 2), "pixel_mm_by_diameter": round(pixel, 4),
            "message": f"PixelSpacing {float(ps[0]):g} x {float(ps[1]):g} mm gives a {fov:.0f} mm field of view, but "
                       f"ReconstructionDiameter says {diameter:g} mm ({pixel:.3g} mm pixels): one of the two is wrong "
                       f"(an edited or re-written header?); the volumes and mass, measured with PixelSpacing, would "
                       f"be {(pixel * pixel) / (float(ps[0]) * float(ps[1])):.2f} times as large with the diameter's "
                       "pixels"}


# Modalities whose images are no MR acquisition: a CT series (Hounsfield units) was analysed as a
# cine, exit 0, QC pass (probe 101). MR, and images with no Modality or a secondary capture (SC,
# OT: screenshots and converted MR), are read.
NOT_MR_MODALITIES = {"CT": "computed tomography", "PT": "PET", "NM": "nuclear medicine", "US": "ultrasound", "XA": "X-ray angiography",
                     "RF": "fluoroscopy", "CR": "radiography", "DX": "radiography", "MG": "mammography"}


def _modality(ds):
    return str(ds.get("Modality", "") or "").strip().upper()


def _without_other_modalities(series, notes=None):
    """The folder's series less those of another modality (a CT beside the MR cine was picked
    for its size and analysed; review of session 46), said in ``notes``; all of them when none
    is MR (``_refuse_other_modalities`` then names the file)."""
    other = sorted(u for u, its in series.items() if _modality(its[0][1]) in NOT_MR_MODALITIES)
    if not other or len(other) == len(series):
        return series
    if notes is not None:
        notes.append(f"{'; '.join(_describe(u, series[u]) for u in other)} left out: Modality "
                     f"{', '.join(sorted({_modality(series[u][0][1]) for u in other}))}, not MR")
    return {u: its for u, its in series.items() if u not in other}


def _refuse_other_modalities(items):
    for path, ds in items:
        modality = _modality(ds)
        if modality in NOT_MR_MODALITIES:
            raise CardiacInputError(path, f"Modality {modality} ({NOT_MR_MODALITIES[modality]}), not MR: CardiacAISeg "
                                          "reads cardiac MR series (short-axis cine or first-pass perfusion)")


def _stack_from_series(folder, series, kind, progress, all_series, skipped, kind_asked=None, as_aif=False):
    picked_notes = []
    uid, items, aif_uid = _pick_series(folder, all_series, series, picked_notes, kind=kind_asked or kind, as_aif=as_aif)
    picked_notes = notes_for(picked_notes, uid)   # not the notes about other series' copies and maps
    items, phase_note = _drop_phase_images(folder, items)
    items, derived_note = _drop_derived_images(folder, uid, items)
    items, screen_note = _drop_screen_saves(folder, uid, items)
    picked_notes += phase_note + derived_note + screen_note
    _refuse_other_modalities(items)
    _check_memory(folder, items)

    fixes = []
    geo = [(f, ds) + _geometry(f, ds, fixes) for f, ds in items]
    tilt_notes, reversed_axes = [], {}
    geo, items, dropped = _drop_stray_orientations(geo, items, tilt_notes, reversed_axes)
    geo, items, reference_notes = _drop_reference_images_of_another_matrix(folder, uid, geo, items)
    _settle_clock_tag(items)
    midnight = _unwrap_midnight(items)
    trigger_note = _mark_trigger_times_in_seconds(items)
    scale_note = _mark_philips_scale(items)
    if dropped:
        early_localisers = [f"{len(dropped)} image(s) of series {uid} in other orientations than its stack (localisers or "
                            f"long-axis views) left out: {_names(dropped, folder)}"]
    else:
        early_localisers = []
    of_uid = 'the stack' if '+' in uid else f'series {uid}'
    for what, files, value in tilt_notes:
        if what == "tilted":
            early_localisers.append(f"{len(files)} image(s) of {of_uid} tilted up to {value:.1f}° against the rest of the "
                                    f"stack (a re-planned slice?), e.g. {_names(files[:1], folder)}: read as parallel to it")
        elif what == "reversed":
            early_localisers.append(f"{len(files)} image(s) of {of_uid} stored {value}, e.g. {_names(files[:1], folder)}: "
                                    "the stack's own pixel grid, put back onto it (the same pixels re-ordered, nothing "
                                    "resampled) and read with the stack")
        else:
            early_localisers.append(f"{len(files)} image(s) of {of_uid} in the stack's plane, {value} against it (not "
                                    f"the stack's pixel grid), left out: {_names(files, folder)}")
    orients = {}
    for g in geo:
        orients.setdefault(tuple(np.round(g[2], 3)), g[0])
    if len(orients) > 1:
        (o1, f1), (o2, f2) = list(orients.items())[:2]
        raise CardiacInputError(folder, f"series {uid} mixes {len(orients)} image orientations (e.g. localisers or several "
                                        f"views): {_names([f1], folder)} {_fmt_values(o1)} vs {_names([f2], folder)} "
                                        f"{_fmt_values(o2)}; export one stack of parallel slices")
    for g in geo[1:]:
        if not np.allclose(g[4], geo[0][4], rtol=1e-3, atol=1e-4):
            raise CardiacInputError(g[0], f"PixelSpacing {g[4]} mm differs from {geo[0][4]} mm of "
                                          f"{_names([geo[0][0]], folder)} in the same stack (series {uid}): one stack has one "
                                          "pixel size; the series mixes resolutions or acquisitions")
    shapes = {(int(ds.Rows), int(ds.Columns)) for _, ds in items}
    if len(shapes) > 1:
        # the files of the rarer size named, as the pixel-size check names its file (probe 58)
        sizes = Counter((int(ds.Rows), int(ds.Columns)) for _, ds in items)
        rare = min(sizes, key=sizes.get)
        files = [f for f, ds in items if (int(ds.Rows), int(ds.Columns)) == rare]
        raise CardiacInputError(folder, f"series {uid} mixes image sizes {sorted(shapes)} (rows, columns): "
                                        f"{sizes[rare]} image(s) of {rare[0]}x{rare[1]}, e.g. "
                                        f"{_names(sorted(set(files)), folder)}; one stack has one matrix: a slice "
                                        "re-acquired or cropped? Leave those files out or export them as a series of "
                                        "their own")
    iop, ps = geo[0][2], geo[0][4]
    row_dir, col_dir = iop[:3], iop[3:]
    normal = np.cross(row_dir, col_dir)

    groups, positions, origin, spread = _slices_along(geo, normal)
    groups, copy_notes = _drop_copies_under_new_uids(folder, groups)
    counts = [len(g) for g in groups]
    # before the clock is judged: two cycles' acquisition times can look like a real-time series
    _refuse_repeated_cycles(folder, groups, positions)
    timing = choose_frame_clock(groups)
    clock = timing["clock"]
    if clock == "AcquisitionTime":
        # the wall clock is read from the one tag settled on for the series (_settle_clock_tag)
        timing["tag"] = settled_clock_tag(groups)
    if timing.get("realtime") and len(groups) > 1 and kind_asked != PERFUSION:
        # untriggered frames: frame t of one slice is not the cardiac phase of frame t of the
        # next, so volumes summed over slices per frame would mix systole and diastole
        raise CardiacInputError(folder, f"a real-time (untriggered) cine: {timing['reason']}; its slices were acquired at "
                                        "different times, so one frame number is not one cardiac phase across slices and "
                                        "volumes and EF from it would mix phases. Give an ECG-triggered (segmented) cine "
                                        "series; if it is a first-pass perfusion series whose clock is not the "
                                        "acquisition's (a reconstruction time), give --kind perfusion and --dt (seconds "
                                        "per frame)")
    _refuse_same_position_and_time(folder, groups, positions, coarse=timing.get("coarse", False))

    if clock is None:
        _refuse_frames_without_place(folder, groups)

    def order(g):
        ds = g[1]
        t = _frame_time_s(ds, clock)
        # the dynamic's number before InstanceNumber, which some vendors restart every dynamic
        position = _temporal_position(ds) or 0
        inst = int(ds.get("InstanceNumber", 0) or 0)
        within = ds.index if isinstance(ds, EnhancedFrame) else 0
        return (0, t, position, inst, within) if t is not None else (1, 0.0, position, inst, within)

    for g in groups:
        g.sort(key=order)
    early_warnings = picked_notes + list(early_localisers) + reference_notes + copy_notes + [note for note in (midnight, trigger_note, scale_note) if note]
    if spread > _POSITION_SPREAD_NOTE_MM:
        early_warnings.append(f"the images of one slice lie up to {spread:.2f} mm apart along the slice normal (slice "
                              "tracking, or rounding in an export): each slice is read at its median position")
    if len(set(counts)) > 1:
        # Heart-rate changes during a breath-hold give some slices a phase or two more; the
        # common phases are kept. Larger differences mean mixed or incomplete acquisitions.
        # A phase missing inside the cycle (a gap in the trigger times) is a lost image, not a
        # shorter cycle: keeping the first phases would shift that slice's later phases by one
        # against the others' (its ES taken from another moment), so it is refused too.
        gap_inside = any(len(g) < max(counts) and _gap_in_frames(g, clock) is not None for g in groups)
        lost_first = _lost_first_phase(groups, clock)
        if timing["kind"] == PERFUSION or kind == PERFUSION or min(counts) < 0.8 * max(counts) or gap_inside or lost_first:
            lost = "; an image is missing inside the cardiac cycle" if gap_inside and timing["kind"] != PERFUSION else ""
            if lost_first and not gap_inside:
                # its first phase (ED at the R wave) lost in a copy: matched by delay, ED went from
                # every slice (EDV -2.7 %, QC pass; probe 26)
                k, t0 = lost_first
                lost = (f"; slice {k} (at {positions[k]:.1f} mm) has nothing at {1000 * t0:.0f} ms, where the other slices "
                        "have their first phase (ED at the R wave): an image lost in a copy or transfer")
            # a perfusion slice short of dynamics cannot share the others' time axis: say how the rest can be read
            other_slices = ("; re-export the series, or leave the short slice's files out of the folder to analyse the other "
                            "slices") if timing["kind"] == PERFUSION or kind == PERFUSION else ""
            raise CardiacInputError(folder, f"slice positions have different numbers of frames {counts}; the series is incomplete or "
                                            f"mixes acquisitions{lost}"
                                            f"{_where_frames_are_missing(groups, positions, clock, timing.get('tag'))}{other_slices}")
        matched = _phases_matched_by_trigger_time(folder, groups, clock, positions)
        if matched is None:
            longer = [k for k, n in enumerate(counts) if n > min(counts)]
            if len(longer) < len(counts) - len(longer):
                # name the few slices whose extra phases are left out, not the many without (probe 26)
                where = ": " + "; ".join(f"slice {k} (at {positions[k]:.1f} mm) has {counts[k]}" for k in longer[:3]) \
                    + (f"; {len(longer) - 3} more" if len(longer) > 3 else "")
            else:
                where = _where_frames_are_missing(groups, positions, clock, timing.get("tag"))
            early_warnings.append(f"slices have {min(counts)}-{max(counts)} phases; the first {min(counts)} of each are used "
                                  f"(the last phases of the longer cycles are left out{where})")
            groups = [g[:min(counts)] for g in groups]
        else:
            groups, note = matched
            early_warnings.append(note)
        counts = [min(counts)] * len(groups)
    n_t, n_s = counts[0], len(groups)
    rows, cols = shapes.pop()
    images = np.empty((n_t, n_s, rows, cols), np.float32)
    times = np.full((n_t, n_s), np.nan)
    flips = np.full((n_t, n_s), np.nan)   # proton-density reference frames have their own (pd_frames)
    instance_map, sop_map, frame_map, warn = {}, {}, {}, list(early_warnings)
    ambiguous = set()
    pixel_notes = {}
    done = 0
    for k, g in enumerate(groups):
        for t, (f, ds, *_rest) in enumerate(g):
            if done % 20 == 0:
                progress(done, n_t * n_s, "reading DICOM pixels")
            done += 1
            pixels = _pixels(f, ds, pixel_notes)
            if id(ds) in reversed_axes:   # stored rotated 180° or mirrored: back onto the stack's grid
                flip_rows, flip_cols = reversed_axes[id(ds)]
                pixels = pixels[::-1 if flip_rows else 1, ::-1 if flip_cols else 1]
            images[t, k] = pixels
            tt = _frame_time_s(ds, clock)
            times[t, k] = np.nan if tt is None else tt
            flips[t, k] = _flip_angle(ds)
            if isinstance(ds, EnhancedFrame):   # frames share their file's InstanceNumber and SOP UID
                frame_map.setdefault(str(ds.get("SOPInstanceUID", f)), {})[ds.frame_number] = (t, k)
                continue
            if ds.get("InstanceNumber") not in (None, ""):
                inst = int(ds.InstanceNumber)
                if inst in instance_map or inst in ambiguous:
                    ambiguous.add(inst)   # numbering restarts per series (one series per slice)
                    instance_map.pop(inst, None)
                else:
                    instance_map[inst] = (t, k)
            if "SOPInstanceUID" in ds:
                sop_map[str(ds.SOPInstanceUID)] = (t, k)
    progress(n_t * n_s, n_t * n_s, "read DICOM")
    # contours name their image by InstanceNumber and draw on its pixels as stored: on an image
    # turned back onto the stack's grid they are turned with it (readers/contours.py); left out of
    # the map, they were refused as "not in the DICOM series" (review of session 47)
    reversed_instances = {}
    for _, ds, *_rest in (g for grp in groups for g in grp):
        if id(ds) in reversed_axes and not isinstance(ds, EnhancedFrame) and ds.get("InstanceNumber") not in (None, ""):
            reversed_instances[int(ds.InstanceNumber)] = reversed_axes[id(ds)]
    # InstanceNumbers used by several images (numbering restarts in each series of a stack stored
    # one series per slice) are harmless to the analysis, which places images by position and
    # time: no note on every such stack (a false alarm without contours); contours that name one
    # are refused by their reader, naming the number (``ambiguous_instances``)
    if "MONOCHROME1" in pixel_notes:
        warn.append(f"PhotometricInterpretation MONOCHROME1 (inverted grey scale, e.g. {_names([pixel_notes['MONOCHROME1']], folder)}): "
                    "grey values inverted to MONOCHROME2 (bright = signal) before analysis")
    bits_over = None
    if "BitsStored" in pixel_notes:   # QC's PIXEL_BITS_OVER_STORED says it, with the outputs
        bits_file, bits = pixel_notes["BitsStored"]
        bits_over = {"bits": int(bits), "file": _names([bits_file], folder)}
    if "PixelPaddingValue" in pixel_notes:
        warn.append(f"PixelPaddingValue marks pixels outside the reconstructed field (e.g. in "
                    f"{_names([pixel_notes['PixelPaddingValue']], folder)}): set to each image's darkest value, not read as signal")
    if "RescaleSlope" in pixel_notes:
        bad_file, bad_slope = pixel_notes["RescaleSlope"]
        warn.append(f"RescaleSlope {bad_slope:g} in {_names([bad_file], folder)} (and maybe others) is not a valid scale: "
                    "taken as 1, so pixel values are the stored values; intensities are not in the scanner's units")
    if not np.all(np.isfinite(images)):
        raise CardiacInputError(folder, "pixel data contains NaN or infinite values")

    gaps = np.diff(positions)
    stack_shear_mm = None
    if n_s > 1:
        # the affine takes the median; gaps and uneven spacing are reported and integrated by the
        # true positions (slice_positions_mm) in geometry_check / cine
        spacing = float(np.median(gaps))
        offsets = np.array([g[0][3] for g in groups]) - groups[0][0][3]
        in_plane = offsets - np.outer(offsets @ normal, normal)
        sheared = np.max(np.linalg.norm(in_plane, axis=1)) > 0.5
        moved = _slices_of_another_frame_of_reference(groups, in_plane) if sheared else None
        if moved is not None:
            # positions in two patient coordinate systems (the table moved or the scanner
            # re-landmarked between breath-holds) are not one space: read as one, the shift taken
            # for a sheared stack, EDV +36 % with QC pass (probe 101)
            raise CardiacInputError(groups[moved][0][0], f"the slice at {positions[moved]:.1f} mm lies "
                                    f"{np.linalg.norm(in_plane[moved]):.1f} mm off the stack within the image plane, and "
                                    f"its FrameOfReferenceUID ({groups[moved][0][1].get('FrameOfReferenceUID')}) differs "
                                    f"from the slice at {positions[0]:.1f} mm's "
                                    f"({groups[0][0][1].get('FrameOfReferenceUID')}): the patient coordinates changed "
                                    "between them (the table moved, or the scanner landmarked again), so where the slices "
                                    "lie relative to each other is unknown; analyse the slices of one frame of reference "
                                    "together (export them apart)")
        if sheared:
            warn.append("slice origins shift within the image plane (sheared stack); geometry assumes a straight stack")
            # how far: QC STACK_SHEARED reviews a shift no real short-axis stack has
            stack_shear_mm = round(float(np.max(np.linalg.norm(in_plane, axis=1))), 1)
    else:
        ds0 = groups[0][0][1]
        try:
            spacing = float(ds0.get("SpacingBetweenSlices", 0) or ds0.get("SliceThickness", 0) or 0)
        except (TypeError, ValueError):
            spacing = 0.0
        if not spacing > 0:
            spacing = 1.0
            if (kind or timing["kind"]) != PERFUSION:
                warn.append("one slice position and no SliceThickness or SpacingBetweenSlices: the slice thickness is "
                            "unknown, 1 mm assumed, so volumes are per mm of thickness")
    if fixes:
        warn.append(f"ImageOrientationPatient corrected in {len(fixes)} image(s), e.g. {_names([fixes[0][0]], folder)}: "
                    f"{fixes[0][1]}")

    m = np.eye(4)
    m[:3, 0] = row_dir * ps[1]   # i = column index advances along the row direction
    m[:3, 1] = col_dir * ps[0]   # j = row index advances along the column direction
    m[:3, 2] = normal * spacing
    m[:3, 3] = origin
    m[:3, :] = LPS_TO_RAS @ m[:3, :]

    ds0 = groups[0][0][1]
    spacing_check = pixel_spacing_against_diameter(ds0, ps)   # QC flags it for a cine (PIXEL_SPACING_DISAGREES)
    frame_times = None
    if np.all(np.isfinite(times)) and timing.get("coarse"):
        frame_times = frame_times_from_coarse_clock(times)
        timing["coarse_drift_s"] = round(coarse_clock_drift_s(times), 2)
        mixed = any(getattr(g[1], _WHOLE_SECONDS, False) for grp in groups for g in grp)
        warn.append(f"acquisition times are in whole seconds only{' on some images (the others carry fractions: all read to the second)' if mixed else ''}: frames ordered by time and InstanceNumber, one "
                    f"every {frame_times[1]:.3f} s from the series' span ({times[-1, 0] - times[0, 0]:.0f} s over "
                    f"{n_t - 1} intervals, ±1 s); irregular heartbeats cannot be seen")
    elif np.all(np.isfinite(times)):
        # slices of one dynamic are acquired a fraction of a heartbeat apart: time from each
        # slice's own first frame, the median over slices
        rel = times - times[0:1, :]
        frame_times = np.median(rel, axis=1)
        disagreement = slice_interval_disagreement(times)
        if disagreement is not None:
            timing["slice_interval_disagreement_s"] = disagreement
        # where the first frame sits on the clock: a dual-sequence AIF series is matched to the
        # images on it (each series counted from its own first frame put the AIF a heartbeat
        # early when its first file was missing: MBF +66 %, QC pass)
        # the earliest slice's: a dual-sequence AIF is read out first in each heartbeat, before the slices
        timing["origin_s"] = float(np.min(times[0]))
    prov = {
        "reader": "dicom", "files": list(dict.fromkeys(str(g[0]) for grp in groups for g in grp)), "skipped_files": skipped,
        "series_uid": uid, "series_number": int(ds0.SeriesNumber) if ds0.get("SeriesNumber") not in (None, "") else None,
        "series_description": str(ds0.get("SeriesDescription", "")),
        "manufacturer": str(ds0.get("Manufacturer", "")), "model": str(ds0.get("ManufacturerModelName", "")),
        "field_strength_t": float(ds0.get("MagneticFieldStrength", 0) or 0) or None,
        "patient_id": str(ds0.get("PatientID", "")),
        # a rest series is checked against its stress by these too: one PatientID ("ANONYMOUS")
        # let another patient's or another day's rest through (probe 82)
        "patient_name": str(ds0.get("PatientName", "") or ""), "patient_birth_date": str(ds0.get("PatientBirthDate", "") or ""),
        "study_uid": str(ds0.get("StudyInstanceUID", "") or ""),
        "study_date": str(ds0.get("StudyDate", "") or ds0.get("SeriesDate", "") or ds0.get("AcquisitionDate", "") or ""),
        "slice_positions_mm": [round(p, 4) for p in positions], "stack_shear_mm": stack_shear_mm,
        "instance_map": instance_map, "ambiguous_instances": sorted(ambiguous), "sop_map": sop_map, "warnings": warn,
        "reversed_instances": reversed_instances,   # InstanceNumber: (rows, columns) reversed when read
        "multi_frame": bool(frame_map),
        "slice_thickness_mm": _positive_mm(ds0.get("SliceThickness")),
    }
    if "+" in str(uid):
        # a stack merged from one series per slice: its numbers and names, not only the first
        # slice's (results.json said neither, probe 86)
        numbers = {g[1].get("SeriesNumber") for grp in groups for g in grp} - {None, ""}
        prov["series_numbers"] = sorted(int(n) for n in numbers if str(n).strip().lstrip("-").isdigit())
        prov["series_descriptions"] = sorted({str(g[1].get("SeriesDescription", "") or "") for grp in groups for g in grp})
    if frame_map:   # enhanced files: SOPInstanceUID -> {1-based frame number: (t, k)}
        prov["frame_map"] = frame_map
    if spacing_check:
        prov["pixel_spacing_check"] = spacing_check
    else:
        try:   # kept where it agrees too: a spacing changed in a Slicer scene later is judged against it
            diameter = float(ds0.get("ReconstructionDiameter"))
            if math.isfinite(diameter) and diameter > 0:
                prov["reconstruction_diameter_mm"] = diameter
        except (TypeError, ValueError):
            pass
    if bits_over:
        prov["bits_over_stored"] = bits_over
    prov["timing"] = {**timing, "hint": description_hint(ds0)}
    if frame_times is None and timing.get("untimed_images"):
        prov["frame_times_ignored"] = timing["untimed_images"]   # the error asking for --dt names the frames
        if clock is None and n_t > 1 and _follow_instance_numbers(groups):
            # what --dt would time: the user sees the order the frames are read in
            prov["frame_times_ignored"] += ", so the frames are ordered by their InstanceNumber"
    if frame_times is None:
        numbers = _frame_numbers(groups)
        if numbers is not None:
            prov["temporal_positions"] = numbers
    if aif_uid is not None and timing["kind"] == CINE and kind != PERFUSION:
        aif_uid = None   # the frame times say cine: a smaller series beside it is no dual-sequence AIF
    if aif_uid is not None:
        prov["aif_series_uid"] = aif_uid
        prov["timing"]["hint"] = PERFUSION   # only perfusion comes with a dual-sequence AIF series
    if np.all(np.isfinite(flips)):
        prov["flip_angles_deg"] = np.median(flips, axis=1).tolist()
    if clock == "AcquisitionTime" or timing["kind"] == PERFUSION:
        prov["acquisition_times_s"] = None if frame_times is None else (times[:, 0] - times[0, 0]).tolist()
    else:
        prov["trigger_times_ms"] = None if frame_times is None else np.round(times.T * 1000, 3).tolist()
    negative = [g[0] for grp in groups for g in grp if (_trigger_s(g[1]) or 0.0) < 0]
    if negative and timing["kind"] != PERFUSION:
        # a delay counts from the R wave: a negative one is no delay (the files' timing was
        # rewritten, or another offset stored), accepted unsaid before (probe 57)
        prov.setdefault("warnings", []).append(
            f"TriggerTime is negative on {len(negative)} image(s), e.g. {_names(negative[:1], folder)}: a trigger delay "
            "counts from the R wave; the frames are ordered by it, but the delays are no times within the cycle "
            "(check the export)")
    if all(len(grp) == 1 for grp in groups):
        # one phase: its trigger delay says whether it is ED (readers.one_frame_phase)
        delays = [_trigger_s(grp[0][1]) for grp in groups]
        if all(d is not None for d in delays):
            prov["trigger_times_ms"] = [[round(1000 * d, 3)] for d in delays]
    return Study(images=images, ijk_to_ras=m, kind=kind or timing["kind"] or CINE, frame_times_s=frame_times, name=_study_name(folder),
                 source=str(folder), provenance=prov, orientation_known=True)
