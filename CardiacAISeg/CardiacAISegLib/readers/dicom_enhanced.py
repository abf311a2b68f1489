"""Enhanced (multi-frame) MR DICOM: one file -> one record per frame for the classic reader.

Philips and newer Siemens scanners store a cine or perfusion series as Enhanced MR Image
Storage (one file, NumberOfFrames frames; sometimes one such file per slice). Each frame's
geometry, timing and rescale sit in its item of PerFrameFunctionalGroupsSequence, or, when the
same for all frames, in SharedFunctionalGroupsSequence. ``expand_enhanced`` turns every frame
into an ``EnhancedFrame`` that reads like a single-frame dataset (ImagePositionPatient,
ImageOrientationPatient, PixelSpacing, TriggerTime, RescaleSlope, ...), so ``dicom.py`` groups,
orders, merges and builds the geometry exactly as it does for classic images.
"""
import datetime
import re

from ..errors import CardiacInputError

ENHANCED_SOP_CLASSES = {
    "1.2.840.10008.5.1.4.1.1.4.1": "Enhanced MR Image Storage",
    "1.2.840.10008.5.1.4.1.1.4.4": "Legacy Converted Enhanced MR Image Storage",
}
PER_FRAME, SHARED = "PerFrameFunctionalGroupsSequence", "SharedFunctionalGroupsSequence"

# functional group -> the attributes it carries that a frame exposes at the top level
_GROUPS = {
    "PlanePositionSequence": ("ImagePositionPatient",),
    "PlaneOrientationSequence": ("ImageOrientationPatient",),
    "PixelMeasuresSequence": ("PixelSpacing", "SliceThickness", "SpacingBetweenSlices"),
    "PixelValueTransformationSequence": ("RescaleSlope", "RescaleIntercept"),
    # the flip angle tells proton-density reference frames (a few degrees) from the dynamics;
    # Siemens XA writes it here, not at the top level
    "MRTimingAndRelatedParametersSequence": ("FlipAngle",),
    # Philips: the scanner's own units; varying per frame, they are the one comparable scale
    "RealWorldValueMappingSequence": ("RealWorldValueSlope", "RealWorldValueIntercept"),
    # magnitude or phase: a file holding both read every trigger delay twice (probe 58)
    "MRImageFrameTypeSequence": ("FrameType", "ComplexImageComponent"),
}
_GEOMETRY_GROUP = {"ImagePositionPatient": "PlanePositionSequence",
                   "ImageOrientationPatient": "PlaneOrientationSequence",
                   "PixelSpacing": "PixelMeasuresSequence"}
# top-level attributes of the file that must not stand in for a frame's own values
_MASKED = ("ImagePositionPatient", "ImageOrientationPatient", "PixelSpacing", "TriggerTime",
           "AcquisitionTime", "ContentTime", "AcquisitionDateTime")
_EPOCH_DAY = datetime.date(2000, 1, 1).toordinal()
_DT = re.compile(r"^(\d{4})(\d{2})?(\d{2})?(\d{2})?(\d{2})?(\d{2})?(\.\d{1,6})?([+-]\d{4})?$")
_TIME_ONLY = re.compile(r"^\d{6}\.\d{1,6}$")


def is_enhanced(ds):
    """A functional-group multi-frame image: Enhanced or Legacy Converted Enhanced MR, or any
    multi-frame image with functional groups. (Some classic single-frame GE files carry a stray
    empty PerFrameFunctionalGroupsSequence; they stay classic.)"""
    sop = str(ds.get("SOPClassUID", "") or getattr(ds, "file_meta", {}).get("MediaStorageSOPClassUID", ""))
    if sop in ENHANCED_SOP_CLASSES:
        return True
    try:
        n = int(ds.get("NumberOfFrames", 1) or 1)
    except (TypeError, ValueError):
        return False
    return n > 1 and (PER_FRAME in ds or SHARED in ds)


def datetime_seconds(value):
    """DICOM DT 'YYYYMMDDHHMMSS.FFFFFF&ZZXX' -> seconds since 2000-01-01 (None if unreadable).

    Anonymised dates ('20120000') keep the time of day, so frames within one day still order. A
    time of day written without its date ('100000.5', 'HHMMSS.FFFFFF': some exports) is read
    as one, not as the year 1000 with the fraction alone left to time the frames (probe 49)."""
    text = str(value or "").strip()
    if _TIME_ONLY.match(text):
        return int(text[:2]) * 3600 + int(text[2:4]) * 60 + float(text[4:])
    m = _DT.match(text)
    if not m:
        return None
    y, mo, d, h, mi, s, frac, tz = m.groups()
    try:
        day = datetime.date(int(y), int(mo or 1), int(d or 1)).toordinal() - _EPOCH_DAY
    except ValueError:
        day = 0
    secs = day * 86400.0 + int(h or 0) * 3600 + int(mi or 0) * 60 + int(s or 0) + float(frac or 0)
    if tz:
        secs -= (1 if tz[0] == "+" else -1) * (int(tz[1:3]) * 3600 + int(tz[3:5]) * 60)
    return secs


class _EnhancedFile:
    """The file behind the frames: decodes the pixel data once, frees it after the last frame."""

    def __init__(self, path, ds, n_frames):
        self.path, self.ds, self.n_frames = path, ds, n_frames
        self._array, self._left = None, n_frames

    def frame(self, index):
        if self._array is None:
            a = self.ds.pixel_array
            if a.ndim == 2 and self.n_frames == 1:
                a = a[None]
            rows, cols = int(self.ds.Rows), int(self.ds.Columns)
            if a.shape != (self.n_frames, rows, cols):
                raise CardiacInputError(self.path, f"pixel data has shape {a.shape}, expected NumberOfFrames x Rows x Columns "
                                                   f"= {(self.n_frames, rows, cols)} (colour or damaged multi-frame data)")
            self._array = a
        out = self._array[index]
        self._left -= 1
        if self._left <= 0:
            self._array, self._left = None, self.n_frames
        return out


class EnhancedFrame:
    """One frame of an enhanced file, read like a single-frame dataset: ``get``, ``in`` and
    attribute access see the frame's functional-group values first, then the file's top level
    (patient, series, Rows, Columns, ...)."""

    __slots__ = ("source", "index", "values", "missing", "acquisition_s", "temporal_index")

    def __init__(self, source, index, values, missing, acquisition_s, temporal_index):
        self.source, self.index, self.values, self.missing = source, index, values, missing
        self.acquisition_s, self.temporal_index = acquisition_s, temporal_index

    @property
    def frame_number(self):
        """1-based, as DICOM references frames (ReferencedFrameNumber)."""
        return self.index + 1

    def pixels(self):
        return self.source.frame(self.index)

    def missing_reason(self, tag):
        return self.missing.get(tag)

    def __contains__(self, name):
        if name in self.values:
            return self.values[name] is not None
        return name in self.source.ds

    def get(self, name, default=None):
        if name in self.values:
            v = self.values[name]
            return default if v is None else v
        return self.source.ds.get(name, default)

    def __getattr__(self, name):  # only for names that are not slots
        if name.startswith("_") or name in EnhancedFrame.__slots__:
            raise AttributeError(name)
        values = self.values
        if name in values:
            if values[name] is None:
                raise AttributeError(name)
            return values[name]
        return getattr(self.source.ds, name)

    def __repr__(self):
        return f"<EnhancedFrame {self.frame_number} of {self.source.path}>"


# Dimension index pointers that place a frame in time: TemporalPositionIndex (0020,9128),
# NominalCardiacTriggerDelayTime (0020,9153), FrameAcquisitionNumber (0020,9156),
# NominalPercentageOfCardiacPhase (0020,9241). No other dimension is taken for time: an echo or
# reconstruction dimension would make two images of one time two frames (review of session 42)
_TIME_POINTERS = (0x00209128, 0x00209153, 0x00209156, 0x00209241)


def _time_dimension(ds):
    """Which of a frame's DimensionIndexValues places it in time (a time pointer's), or None. A
    file whose frames carry their time only as a dimension index (the attribute it indexes left
    out) was read in stored order, shuffled frames and all: EF 20 % for 51 %, nothing said by the
    reader (probe 88)."""
    seq = ds.get("DimensionIndexSequence")
    if not seq:
        return None
    for n, item in enumerate(seq):
        try:
            if int(item.get("DimensionIndexPointer")) in _TIME_POINTERS:
                return n
        except (TypeError, ValueError):
            continue
    return None


def _dimension_index(frame_content, position):
    values = frame_content.get("DimensionIndexValues")
    if values is None:
        return None
    values = [values] if isinstance(values, int) else list(values)
    try:
        return int(values[position]) if position < len(values) else None
    except (TypeError, ValueError):
        return None


def _item(seq_owner, name):
    seq = seq_owner.get(name) if seq_owner is not None else None
    return seq[0] if seq else None


UNASSIGNED_PER_FRAME = "UnassignedPerFrameConvertedAttributesSequence"


def _legacy_acquisition_seconds(item):
    """The acquisition clock of one converted source image (its AcquisitionDateTime, else its
    AcquisitionDate + AcquisitionTime or the time alone), in seconds, else None."""
    when = datetime_seconds(item.get("AcquisitionDateTime"))
    if when is None and item.get("AcquisitionTime") not in (None, ""):
        time = str(item.get("AcquisitionTime")).strip()
        date = str(item.get("AcquisitionDate") or "").strip()
        when = datetime_seconds(date + time) if date else datetime_seconds(time if "." in time else time + ".0")
    return when


def expand_enhanced(path, ds):
    """[EnhancedFrame] for every frame of an enhanced file (CardiacInputError if its functional
    groups are malformed; a missing geometry group is reported when the series is loaded)."""
    n = ds.get("NumberOfFrames")
    try:
        n = int(n) if n not in (None, "") else None
    except (TypeError, ValueError):
        raise CardiacInputError(path, f"unreadable NumberOfFrames {n!r}")
    per_frame = ds.get(PER_FRAME)
    if not per_frame:
        raise CardiacInputError(path, f"enhanced multi-frame DICOM without {PER_FRAME} (missing DICOM tag {PER_FRAME}, "
                                      "which holds each frame's position and timing)")
    if n is None:
        raise CardiacInputError(path, "enhanced multi-frame DICOM without NumberOfFrames (missing DICOM tag NumberOfFrames)")
    if len(per_frame) != n:
        raise CardiacInputError(path, f"{PER_FRAME} has {len(per_frame)} items but NumberOfFrames is {n}")
    shared = ds.get(SHARED)
    shared = shared[0] if shared else None
    source = _EnhancedFile(path, ds, n)
    time_dimension = _time_dimension(ds)
    frames, references = [], []
    for i, groups in enumerate(per_frame):
        def group(name):  # a functional group sits per frame or, when common to all, in the shared item
            it = _item(groups, name)
            return it if it is not None else _item(shared, name)

        values = dict.fromkeys(_MASKED)
        values["NumberOfFrames"] = 1
        missing = {}
        for gname, attrs in _GROUPS.items():
            g = group(gname)
            for a in attrs:
                v = g.get(a) if g is not None else None
                if v not in (None, ""):
                    values[a] = v
                elif a in _GEOMETRY_GROUP:
                    where = f"{gname}" if g is None else f"{a} in {gname}"
                    missing[a] = (f"missing DICOM tag {where} for frame {i + 1} (in neither {PER_FRAME} item {i + 1} "
                                  f"nor {SHARED}), needed for the image geometry")
        cs = group("CardiacSynchronizationSequence")
        if cs is not None:
            for tag in ("NominalCardiacTriggerDelayTime", "ActualCardiacTriggerDelayTime"):
                if cs.get(tag) not in (None, ""):
                    values["TriggerTime"] = float(cs.get(tag))   # ms, as the classic TriggerTime
                    break
        fc = group("FrameContentSequence")
        acq_s, tpi = None, None
        if fc is not None:
            acq_s = datetime_seconds(fc.get("FrameAcquisitionDateTime"))
            references.append(datetime_seconds(fc.get("FrameReferenceDateTime")))
            if acq_s is None:
                acq_s = references[-1]
            try:
                tpi = int(fc.get("TemporalPositionIndex")) if fc.get("TemporalPositionIndex") not in (None, "") else None
            except (TypeError, ValueError):
                tpi = None
            if tpi is None and time_dimension is not None:
                tpi = _dimension_index(fc, time_dimension)
        legacy = _item(groups, UNASSIGNED_PER_FRAME)
        if legacy is not None:
            # a Legacy Converted Enhanced MR file keeps each source image's own attributes here: its
            # frames, stored in any order, were read in file order with no clock (EF 18 for 51 %,
            # nothing said; probe 77)
            if values["TriggerTime"] is None and legacy.get("TriggerTime") not in (None, ""):
                values["TriggerTime"] = float(legacy.get("TriggerTime"))
            if acq_s is None:
                acq_s = _legacy_acquisition_seconds(legacy)
        frames.append(EnhancedFrame(source, i, values, missing, acq_s, tpi))
    if (len(frames) > 1 and len(references) == len(frames) and None not in references and len(set(references)) > 1
            and len({f.acquisition_s for f in frames}) == 1):
        # acquisition date-times anonymised to one value, the reference date-times still per
        # frame: those time the frames (read as "no frame times; give --dt", probe 49)
        for f, t in zip(frames, references):
            f.acquisition_s = t
    return frames
