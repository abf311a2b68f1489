"""Readers: every format becomes one `Study`. ``load_study`` picks the reader from the path."""
from __future__ import annotations

from pathlib import Path
from typing import Callable, Sequence, Union

import numpy as np

from ..errors import CardiacInputError
from ..study import CINE, PERFUSION, Study
from .sniff import VOLUME_SUFFIXES, archive_kind, looks_like_dicom

ACCEPTED = ("an ACDC patient folder (Info.cfg), a DICOM folder, a folder of per-frame .mhd/.nii.gz/.nrrd files, "
            ".nii/.nii.gz (3D or 4D), .seq.nrrd/.nrrd, .mhd/.mha, Analyze .hdr/.img or a QPerf folder (params.json) "
            "for perfusion")
_VOLUME = (".seq.nrrd",) + VOLUME_SUFFIXES


def _folder_kind(folder):
    """('acdc' | 'qperf' | 'frames' | 'single' | 'dicom' | None, volume files) from a look at the folder."""
    from itertools import islice

    from .acdc import is_acdc_folder
    from .volume import frame_files

    if is_acdc_folder(folder):
        return "acdc", []
    if (folder / "params.json").is_file():
        return "qperf", []
    volumes = frame_files(folder)
    if len(volumes) > 1:
        return "frames", volumes
    files = (f for f in folder.rglob("*") if f.is_file() and not f.name.startswith("."))
    for f in islice(files, 200):  # DICOM folders can be huge; a few files tell
        if looks_like_dicom(f):
            return "dicom", []
    return ("single", volumes) if volumes else (None, [])


def _attach_labels(study, labels, label_convention, frame):
    """``labels``: one file or contour folder, or a list of files each holding other frames (the
    ED and the ES segmentation a run wrote, each saying its frame)."""
    if isinstance(labels, (list, tuple)):
        if len(labels) == 1:
            return _attach_labels(study, labels[0], label_convention, frame)
        if frame is not None:
            raise CardiacInputError(labels[0], f"one frame ({frame}) for {len(labels)} label files: give one file, or "
                                               "files that each say their frame (.seg.nrrd written by this tool or Slicer)")
        came_with_study = set(study.labels)
        placed = {}   # frame -> the file of the list that labelled it
        for path in labels:
            if Path(path).is_dir():
                # a contour folder replaces the study's labels whole: it goes alone (review of session 44)
                raise CardiacInputError(path, "a contour folder is given alone with --labels, not beside label files")
            before = dict(study.labels)
            _attach_one(study, path, label_convention, None, came_with_study)
            # the frames this file labelled: by identity, the study's own labels (an ACDC folder's
            # _gt) included, which the file replaces (two 3D maps both went to ED there, unrefused)
            mine = sorted(t for t, m in study.labels.items() if before.get(t) is not m)
            clash = [t for t in mine if t in placed]
            if clash:
                raise CardiacInputError(path, f"labels frame {clash[0] + 1} (counted from 1), as {Path(placed[clash[0]]).name} "
                                              "does: each label file must hold other frames (a 3D map without a "
                                              "recorded frame goes to ED; give one of them, a 4D map, or the "
                                              ".seg.nrrd files a run wrote, which say their frame)")
            placed.update({t: path for t in mine})
        return study
    return _attach_one(study, labels, label_convention, frame)


def _attach_one(study, labels, label_convention, frame, came_with_study=None):
    from .contours import attach_sunnybrook_contours, is_contour_folder
    from .labelmap import attach_labelmap

    if Path(labels).is_dir() and is_contour_folder(labels):
        return attach_sunnybrook_contours(study, labels)
    if Path(labels).is_dir():
        # a folder that exists was called "not found" (probe 57)
        raise CardiacInputError(labels, "--labels is a folder, but not one of Sunnybrook contour files (*-icontour-manual.txt, "
                                        "*-ocontour-manual.txt): give a label map file (NIfTI, NRRD, MetaImage, .seg.nrrd) "
                                        "or a contour folder")
    if not Path(labels).is_file():
        what = "not a regular file" if Path(labels).exists() else "label file not found"
        raise CardiacInputError(labels, f"{what} (expected a label map file or a Sunnybrook contour folder)")
    return attach_labelmap(study, labels, label_convention, frame, came_with_study)


def load_study(path: str | Path, kind: str | None = None, series: str | None = None, labels: str | Path | None = None,
               label_convention: str = "acdc", aif: str | Path | Sequence[float] | np.ndarray | None = None,
               dt: float | None = None, frame: int | None = None, progress: Callable | None = None,
               units: str | None = None, kind_by_role: bool = False) -> Study:
    """Read any supported input into a Study.

    kind: None (decided from the data: ``series_kind.decide_kind``), or 'cine' / 'perfusion'
    as the user asks - checked against the data, never silently ignored. kind_by_role: the kind
    is the series' role's (a rest series is perfusion), not the user's word, so the frame clocks
    that contradict it refuse it (the user's --kind is taken against the clocks alone), and the
    errors and warnings that say why name its role, not a --kind the user could drop.
    series: a DICOM series (UID, number or description); for a QPerf folder 'rest' or 'stress'.
    labels: a label-map file or a Sunnybrook contour folder, in ``label_convention``, or a list
    of label-map files holding other frames; a 3D label map goes to ``frame``, else to the frame
    its .seg.nrrd records (``labels.FRAME_TAG``), else to ED.
    aif, dt: perfusion AIF (file or array) and seconds per frame.
    units: perfusion image units when the file cannot tell ('gd_mmol_l' or 'signal').
    """
    from .series_kind import decide_kind

    if path is None or str(path).strip() == "":
        raise CardiacInputError(path, f"no input given; accepted: {ACCEPTED}")
    path = Path(path)
    if kind not in (None, CINE, PERFUSION):
        raise CardiacInputError(path, f"unknown kind {kind!r}; use 'cine' or 'perfusion'")
    if not path.exists():
        raise CardiacInputError(path, f"file or folder not found; accepted: {ACCEPTED}")
    if not path.is_dir() and not path.is_file():
        # a named pipe waits for a writer: the run hung with no output (probe 57)
        raise CardiacInputError(path, "is not a regular file or folder (a named pipe, device or socket); give the image "
                                      f"file or folder itself; accepted: {ACCEPTED}")
    # refuse inputs whose headers describe more than fits, before any pixels are read (DICOM
    # series are checked by the DICOM reader, from the headers it parses anyway)
    from ..memory_check import check_input_size

    check_input_size(path, *(labels if isinstance(labels, (list, tuple)) else [labels]), dicom=False)

    from ..blas import single_blas_thread

    with single_blas_thread():
        study = _read(path, kind, series, aif, dt, progress, units)
        # perfusion formats (QPerf, Analyze) come back finished; the flags must still agree
        finished = study.kind == PERFUSION and study.provenance.get("dt_source")
        decide_kind(study, requested=kind, aif_given=aif is not None, dt=dt, user_asked=not kind_by_role)
        if study.kind == PERFUSION and not finished:
            from .perfusion import finish_perfusion
            from .series_kind import kind_said_on_errors

            with kind_said_on_errors(study, reading=True):
                finish_perfusion(study, path, aif=aif, dt=dt, stress_or_rest=series or "stress", units=units,
                                 progress=progress)

    if study.kind == CINE and study.n_frames == 1:
        study.provenance["frame_phase"] = one_frame_phase(study)
    if labels is not None:
        _attach_labels(study, labels, label_convention, frame)
    return study


# A first cine phase is triggered at the R wave (trigger delays of 0-50 ms as scanners write them):
# a one-phase stack within this of it shows end-diastole.
ED_TRIGGER_DELAY_MS = 100.0


def _is_dicomdir(path):
    """An export's index file (DICOMDIR), which stands for the folder it is in."""
    return path.name.upper() == "DICOMDIR" and path.is_file()


def load_rest_series(path: str | Path, kind: str | None = None, series: str | None = None, **options) -> Study:
    """The rest series of a stress/rest pair, read as the CLI, the Slicer Logic and the web GUI
    all read it: as perfusion by its role (``kind`` None), and from a folder its rest series
    (``series`` None: the one whose description says rest; an exam's or a QPerf folder's stress
    was read as the rest and refused as the stress itself). Other options as ``load_study``.

    Read by its role, the reader's words say so (``load_study``'s ``kind_by_role``): "--kind
    perfusion contradicts the data ...; drop --kind" asked to drop a flag never given (probe 60),
    "as requested (--kind)" named one.
    """
    if series is None and path is not None and str(path).strip() and (Path(path).is_dir() or _is_dicomdir(Path(path))):
        # an exam's DICOMDIR is its folder, as for the stress (probe 86: it asked for --rest-series)
        series = "rest"
    return load_study(path, kind=kind or PERFUSION, series=series, kind_by_role=kind is None, **options)


def one_frame_phase(study):
    """{"phase": 'ED', 'ES', 'frame N' or None (unknown), "how": what says so} of a one-frame
    cine. The volumes of one frame are reported as ED's; an ACDC ES file given alone read its
    end-systolic volume as "LV EDV" with QC pass (probe 46). An ACDC frame file names its frame
    and the Info.cfg beside it names ED and ES; a DICOM phase triggered at the R wave is ED."""
    from .acdc import frame_phase_from_info_cfg

    source = Path(study.source) if study.source else None
    known = frame_phase_from_info_cfg(source) if source is not None and source.is_file() else None
    if known is not None:
        return known
    delays = study.provenance.get("trigger_times_ms")
    if delays:
        values = np.asarray(delays, float).ravel()
        if values.size and np.all(np.isfinite(values)):
            how = f"trigger delay {values.min():g}" + (f"-{values.max():g}" if values.max() > values.min() else "") + " ms"
            return {"phase": "ED" if values.max() <= ED_TRIGGER_DELAY_MS else None, "how": how}
    return {"phase": None, "how": "nothing in the file says which cardiac phase it shows"}


def _series_not_applicable(path, series, what):
    """--series picks a DICOM series (or 'rest'/'stress' of a QPerf folder): given for an input
    that holds one series it would be ignored, so the user may believe another one was read."""
    if series is not None and str(series).lower() not in ("rest", "stress"):
        raise CardiacInputError("--series", f"{series!r} chooses a series of a DICOM folder, but {path} is {what}, which "
                                            "holds one series; leave --series out")


def _read(path, kind, series, aif, dt, progress, units):
    """The images, geometry and frame times of ``path``; perfusion formats come back finished."""
    from .volume import volume_suffix

    if path.is_dir():
        if not any(path.iterdir()):
            raise CardiacInputError(path, f"empty folder; accepted: {ACCEPTED}")
        what, volumes = _folder_kind(path)
        if what == "qperf":
            from .perfusion import load_perfusion

            return load_perfusion(path, aif=aif, dt=dt, stress_or_rest=series or "stress", progress=progress, units=units)
        if what == "acdc":
            from .acdc import load_acdc_patient

            _series_not_applicable(path, series, "an ACDC patient folder")

            study = load_acdc_patient(path)
            study.provenance["format_kind"] = (CINE, "an ACDC cine patient folder (Info.cfg)")
            return study
        if what == "frames":
            from .volume import load_frame_folder

            _series_not_applicable(path, series, "a folder of per-frame volume files")

            return load_frame_folder(path, kind=kind or CINE, progress=progress)
        if what == "single":
            return _read(volumes[0], kind, series, aif, dt, progress, units)
        if what == "dicom":
            from .dicom import load_dicom_series

            return load_dicom_series(path, series=series, progress=progress, kind_asked=kind)
        studies = [d for d in sorted(Path(path).iterdir()) if d.is_dir() and (d / "Info.cfg").is_file()]
        hint = (f"; it holds {len(studies)} study folders ({', '.join(d.name for d in studies[:3])}"
                f"{', ...' if len(studies) > 3 else ''}): analyse one of them, or all with `cardiacaiseg batch {path}`"
                if studies else "")
        if not hint:
            hint = _archives_hint(path)
        entries = [e for e in sorted(Path(path).iterdir()) if not e.name.startswith(".")]
        if not hint and entries and all(e.is_dir() for e in entries):
            # a folder of folders (a batch's folder of studies one level too high; probe 74)
            hint = (f"; it holds only folders ({', '.join(e.name for e in entries[:3])}{', ...' if len(entries) > 3 else ''}): "
                    "give the folder of one study, or a folder of studies to `cardiacaiseg batch`")
        raise CardiacInputError(path, f"no readable images found in this folder; accepted: {ACCEPTED}{hint}")
    suffix = volume_suffix(path)
    if suffix in (".hdr", ".img") and kind == CINE:
        # QPerf's perfusion format, unless the user says it holds a cine (x, y, slices, frames)
        from .volume import load_volume

        return load_volume(path, kind=CINE)
    if suffix in (".hdr", ".img") or path.name == "params.json":
        from .perfusion import load_perfusion

        target = path.parent if path.name == "params.json" else path
        return load_perfusion(target, aif=aif, dt=dt, stress_or_rest=series or "stress", progress=progress, units=units)
    if suffix in _VOLUME:
        _series_not_applicable(path, series, f"a {suffix} file")
    if suffix in _VOLUME and (kind == PERFUSION or aif is not None):
        # a perfusion file: a 3D image is one slice over time, (x, y, frames)
        from .perfusion import read_perfusion_image

        return read_perfusion_image(path)
    if suffix in _VOLUME:
        from .volume import load_volume

        return load_volume(path, kind=kind or CINE)
    if _is_dicomdir(path):
        # the index of an export, given as the input: the export is its folder (it was an
        # "unknown file format '(no extension)'"; probe 58)
        from .dicom import load_dicom_series

        return load_dicom_series(path.parent, series=series, progress=progress)
    if suffix in (".dcm", ".ima") or (not suffix and path.is_file() and looks_like_dicom(path)):
        from .dicom import load_dicom_series, series_uid_of

        uid = series or series_uid_of(path)  # the series of the file the user picked
        return load_dicom_series(path.parent, series=uid, progress=progress)
    archive = archive_kind(path) if path.is_file() else None
    if archive:
        raise CardiacInputError(path, f"a {archive[0]} archive: the images inside must be unpacked first "
                                      f"(e.g. `{archive[1]}`); then give the folder they are in")
    raise CardiacInputError(path, f"unknown file format {suffix or '(no extension)'!r}; accepted: {ACCEPTED}")


def _archives_hint(folder):
    """'; it holds archives ...' when the folder's only content worth naming is archives (an export
    left packed): what to unpack, instead of a bare "no readable images"."""
    from itertools import islice

    files = (f for f in folder.rglob("*") if f.is_file() and not f.name.startswith("."))
    archives = [(f, kind) for f in islice(files, 200) if (kind := archive_kind(f))]
    if not archives:
        return ""
    names = ", ".join(str(f.relative_to(folder)) for f, _ in archives[:3]) + (", ..." if len(archives) > 3 else "")
    how = archives[0][1][1]
    return f"; it holds {len(archives)} archive(s) ({names}): unpack them (e.g. `{how}`) and give the folder"
