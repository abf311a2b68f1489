"""The one object every reader returns and every stage consumes.

Array order follows Slicer's ``arrayFromVolume``: ``images[t, k, j, i]`` with k the slice,
j the row and i the column; ``ijk_to_ras`` maps (i, j, k, 1) to RAS millimetres, so a
frame drops straight into a ``vtkMRMLScalarVolumeNode`` and a mask into a segmentation.
"""
from dataclasses import dataclass, field
from typing import Dict, Optional

import numpy as np

from .errors import CardiacInputError

CINE, PERFUSION = "cine", "perfusion"


@dataclass
class Study:
    images: np.ndarray                      # float32 (T, S, R, C)
    ijk_to_ras: np.ndarray                  # float64 (4, 4); columns 0..2 = i, j, k steps in mm
    kind: str = CINE                        # "cine" | "perfusion"
    frame_times_s: Optional[np.ndarray] = None   # (T,) seconds from the first frame
    name: str = "study"
    source: str = ""                        # path the study was read from
    provenance: dict = field(default_factory=dict)  # reader, files, vendor, series UID, ...
    ed_frame: Optional[int] = None          # 0-based indices into T
    es_frame: Optional[int] = None
    # frame index -> (S, R, C) uint8 label map in the internal convention (labels.py).
    # Perfusion series are motion-corrected, so one mask serves all frames: it is stored
    # under the key of the frame it was drawn on (0 unless a reader knows better).
    labels: Dict[int, np.ndarray] = field(default_factory=dict)
    aif: Optional[np.ndarray] = None        # (T,) arterial input function (perfusion)
    units: str = "signal"                   # "signal" | "gd_mmol_l"
    hematocrit: Optional[float] = None
    orientation_known: bool = True          # False when the file carries no real direction
    # Other series read from the same folder scan, by series UID (the dual-sequence AIF series),
    # for the reader that finishes this study; it takes them out (the folder is not scanned twice).
    companion_series: Dict[str, "Study"] = field(default_factory=dict, repr=False)

    def __post_init__(self):
        self.images = np.asarray(self.images, dtype=np.float32)
        if self.images.ndim != 4:
            raise ValueError(f"Study.images must be (time, slice, row, col), got shape {self.images.shape}")
        self.ijk_to_ras = np.asarray(self.ijk_to_ras, dtype=np.float64)
        if self.ijk_to_ras.shape != (4, 4):
            raise ValueError(f"Study.ijk_to_ras must be 4x4, got {self.ijk_to_ras.shape}")
        if self.frame_times_s is not None:
            self.frame_times_s = np.asarray(self.frame_times_s, dtype=np.float64)

    # --- geometry -------------------------------------------------------------------------
    @property
    def n_frames(self):
        return self.images.shape[0]

    @property
    def n_slices(self):
        return self.images.shape[1]

    @property
    def spacing(self):
        """(column, row, slice) spacing in mm; slice spacing = thickness + gap."""
        return tuple(float(np.linalg.norm(self.ijk_to_ras[:3, a])) for a in range(3))

    @property
    def spacing_rc(self):
        """(row, column) pixel size in mm, as the image arrays index them (``spacing`` is column
        first): what the networks, the motion correction and the bolus search take."""
        column, row, _ = self.spacing
        return row, column

    @property
    def median_frame_interval_s(self):
        """Median seconds between frames (irregular heartbeats give irregular intervals), or None
        without frame times."""
        t = self.frame_times_s
        return float(np.median(np.diff(t))) if t is not None and len(t) > 1 else None

    @property
    def voxel_volume_ml(self):
        return abs(float(np.linalg.det(self.ijk_to_ras[:3, :3]))) / 1000.0

    @property
    def slice_normal(self):
        """Unit vector of increasing slice index k, in RAS."""
        k = self.ijk_to_ras[:3, 2]
        return k / np.linalg.norm(k)

    def ijk_to_ras_points(self, ijk):
        """(N, 3) continuous i, j, k -> (N, 3) RAS mm."""
        ijk = np.atleast_2d(np.asarray(ijk, float))
        return ijk @ self.ijk_to_ras[:3, :3].T + self.ijk_to_ras[:3, 3]

    def ras_to_ijk_points(self, ras):
        ras = np.atleast_2d(np.asarray(ras, float))
        inv = np.linalg.inv(self.ijk_to_ras)
        return ras @ inv[:3, :3].T + inv[:3, 3]

    def frame_volume(self, t):
        """(S, R, C) image of frame t."""
        return self.images[t]

    def labelled_frames(self):
        return sorted(self.labels)


def affine_from_spacing(spacing, origin=(0.0, 0.0, 0.0), directions=None):
    """4x4 IJK->RAS from (col, row, slice) spacing, an origin and a 3x3 of unit column directions."""
    m = np.eye(4)
    d = np.eye(3) if directions is None else np.asarray(directions, float)
    m[:3, :3] = d * np.asarray(spacing, float)[None, :]
    m[:3, 3] = origin
    return m


def check_rest_pairing(study, rest_name, rest_study=None, same_series_advice=None):
    """A rest series pairs only with a perfusion (stress) study: refuse it beside a cine, naming
    the rest series (before it is read, where the caller can). Once read (``rest_study``), it
    must be the same patient's: MPR divides one patient's stress by another's rest otherwise.
    Files without a PatientID (NIfTI, anonymised DICOM) cannot be compared and pass.
    ``same_series_advice`` adds a front end's own words (the CLI's flags) to the refusal of a
    rest series that is the stress series itself."""
    if study.kind != PERFUSION:
        raise CardiacInputError(str(rest_name), f"a rest series pairs with a perfusion (stress) study (for the MPR); "
                                                f"{study.source or study.name} is read as {study.kind}")
    if rest_study is not None:
        check_same_patient(study, rest_study, rest_name, "the rest series", study_role="stress")
        check_not_the_same_series(study, rest_study, rest_name, advice=same_series_advice)


def check_not_the_same_series(study, rest_study, rest_name, advice=None):
    """Refuse a rest series that is the stress series itself (the same DICOM series read twice,
    one file given as both): MPR and MPRI came out exactly 1.00 with QC pass. ``advice`` follows
    "give the rest acquisition" in the message (how the front end's user does that)."""
    a, b = study.provenance or {}, rest_study.provenance or {}
    same_series = bool(a.get("series_uid")) and a.get("series_uid") == b.get("series_uid")
    same_files = bool(a.get("files")) and sorted(map(str, a["files"])) == sorted(map(str, b.get("files") or []))
    same_images = study.images.shape == rest_study.images.shape and np.array_equal(study.images, rest_study.images)
    if same_series or same_files or same_images:
        what = (f"series {a['series_uid']}" if same_series else "the same file(s)" if same_files else "the same images")
        raise CardiacInputError(str(rest_name), f"the rest series is the stress series itself ({what}): MPR would be 1; "
                                                f"give the rest acquisition{f' ({advice})' if advice else ''}")


def check_same_patient(study, other, other_name, what, study_role="perfusion"):
    """Refuse ``other`` (a series read to go with ``study``: its rest series, its AIF series) when
    both carry a PatientID and they differ; ``what`` and ``study_role`` name the two in the
    message. Files without a PatientID (NIfTI, anonymised DICOM) cannot be compared and pass."""
    ids = [str(s.provenance.get("patient_id") or "").strip() for s in (study, other)]
    if all(ids) and ids[0] != ids[1]:
        raise CardiacInputError(str(other_name), f"{what} is of PatientID {ids[1]!r}, the {study_role} series of PatientID "
                                                 f"{ids[0]!r}: both must be one patient's")
    # one PatientID for every patient (an anonymiser's "ANONYMOUS") with the names or birth dates
    # kept: they tell two patients apart (probe 82: another patient's rest accepted)
    for key, tag in (("patient_name", "PatientName"), ("patient_birth_date", "PatientBirthDate")):
        values = [_same_person_text(s.provenance.get(key)) for s in (study, other)]
        if all(values) and values[0] != values[1]:
            raise CardiacInputError(str(other_name), f"{what} is of {tag} {other.provenance[key]!r}, the {study_role} series "
                                                     f"of {study.provenance[key]!r}"
                                                     f"{f' (PatientID {ids[0]!r} in both)' if all(ids) else ''}: both must "
                                                     "be one patient's")


def _same_person_text(value):
    """A PatientName or birth date as compared: a name by the family and given names of its
    first (alphabetic) group, so 'Doe^John^^^', 'DOE^JOHN^A' and 'YAMADA^TARO=山田^太郎'
    against 'Yamada^Taro' are one person; case and spaces do not count."""
    parts = str(value or "").split("=")[0].split("^")[:2]
    return " ".join(" ".join(p.split()).lower() for p in parts).strip()


def days_apart(study, other):
    """Whole days between two series' StudyDate (YYYYMMDD), or None where either has none."""
    from datetime import date

    dates = []
    for s in (study, other):
        text = str((s.provenance or {}).get("study_date") or "").strip()
        try:
            dates.append(date(int(text[:4]), int(text[4:6]), int(text[6:8])))
        except ValueError:
            return None
    return abs((dates[0] - dates[1]).days)
