"""Readers: every format becomes one `Study`. ``load_study`` picks the reader from the path."""
from pathlib import Path

from ..errors import CardiacInputError
from ..study import CINE, PERFUSION

ACCEPTED = ("an ACDC patient folder (Info.cfg), a DICOM folder, a folder of per-frame .mhd/.nii.gz/.nrrd files, "
            ".nii/.nii.gz (3D or 4D), .seq.nrrd/.nrrd, .mhd/.mha, Analyze .hdr/.img or a QPerf folder (params.json) "
            "for perfusion")
_VOLUME = (".nii", ".nii.gz", ".nrrd", ".seq.nrrd", ".nhdr", ".mhd", ".mha")


def _folder_kind(folder):
    """('acdc' | 'qperf' | 'frames' | 'single' | 'dicom' | None, volume files) from a look at the folder."""
    from itertools import islice

    from .acdc import is_acdc_folder
    from .dicom import looks_like_dicom
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
        if f.suffix.lower() in (".dcm", ".ima") or looks_like_dicom(f):
            return "dicom", []
    return ("single", volumes) if volumes else (None, [])


def _attach_labels(study, labels, label_convention, frame):
    from .contours import attach_sunnybrook_contours, is_contour_folder
    from .labelmap import attach_labelmap

    if Path(labels).is_dir() and is_contour_folder(labels):
        return attach_sunnybrook_contours(study, labels)
    if not Path(labels).is_file():
        raise CardiacInputError(labels, "label file not found (expected a label map file or a Sunnybrook contour folder)")
    return attach_labelmap(study, labels, label_convention, frame)


def load_study(path, kind=None, series=None, labels=None, label_convention="acdc", aif=None, dt=None,
               frame=None, progress=None, units=None):
    """Read any supported input into a Study.

    kind: None (from the format), 'cine' or 'perfusion' (forces the perfusion readers).
    series: a DICOM series (UID, number or description); for a QPerf folder 'rest' or 'stress'.
    labels: a label-map file or a Sunnybrook contour folder, in ``label_convention``; a 3D
    label map goes to ``frame``. aif, dt: perfusion AIF (file or array) and seconds per frame.
    units: perfusion image units when the file cannot tell ('gd_mmol_l' or 'signal').
    """
    from .volume import volume_suffix

    if path is None or str(path).strip() == "":
        raise CardiacInputError(path, f"no input given; accepted: {ACCEPTED}")
    path = Path(path)
    if kind not in (None, CINE, PERFUSION):
        raise CardiacInputError(path, f"unknown kind {kind!r}; use 'cine' or 'perfusion'")
    if not path.exists():
        raise CardiacInputError(path, f"file or folder not found; accepted: {ACCEPTED}")

    study = None
    if path.is_dir():
        if not any(path.iterdir()):
            raise CardiacInputError(path, f"empty folder; accepted: {ACCEPTED}")
        what, volumes = _folder_kind(path)
        if what == "qperf" or (kind == PERFUSION and what in ("dicom", "frames")):
            from .perfusion import load_perfusion

            qperf = what == "qperf"
            study = load_perfusion(path, aif=aif, dt=dt, series=None if qperf else series,
                                   stress_or_rest=series if qperf and series else "stress", progress=progress,
                                   units=units)
        elif what == "acdc":
            from .acdc import load_acdc_patient

            study = load_acdc_patient(path)
        elif what == "frames":
            from .volume import load_frame_folder

            study = load_frame_folder(path, kind=kind or CINE, progress=progress)
        elif what == "single":
            return load_study(volumes[0], kind, series, labels, label_convention, aif, dt, frame, progress, units)
        elif what == "dicom":
            from .dicom import load_dicom_series

            study = load_dicom_series(path, series=series, kind=kind or CINE, progress=progress)
        else:
            raise CardiacInputError(path, f"no readable images found in this folder; accepted: {ACCEPTED}")
    else:
        suffix = volume_suffix(path)
        if suffix in (".hdr", ".img") or path.name == "params.json" or (kind == PERFUSION and suffix in _VOLUME):
            from .perfusion import load_perfusion

            target = path.parent if path.name == "params.json" else path
            study = load_perfusion(target, aif=aif, dt=dt, stress_or_rest=series or "stress", progress=progress, units=units)
        elif suffix in _VOLUME:
            from .volume import load_volume

            study = load_volume(path, kind=kind or CINE)
        elif suffix in (".dcm", ".ima"):
            from .dicom import load_dicom_series, series_uid_of

            uid = series or series_uid_of(path)  # the series of the file the user picked
            if kind == PERFUSION:
                from .perfusion import load_perfusion

                study = load_perfusion(path.parent, aif=aif, dt=dt, series=uid, progress=progress)
            else:
                study = load_dicom_series(path.parent, series=uid, kind=CINE, progress=progress)
        else:
            raise CardiacInputError(path, f"unknown file format {suffix or '(no extension)'!r}; accepted: {ACCEPTED}")

    if labels is not None:
        _attach_labels(study, labels, label_convention, frame)
    return study
