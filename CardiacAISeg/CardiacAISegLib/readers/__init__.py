"""Readers: every format becomes one `Study`. ``load_study`` picks the reader from the path."""
from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Sequence, Union

import numpy as np

from ..errors import CardiacInputError
from ..study import CINE, PERFUSION, Study
from .sniff import VOLUME_SUFFIXES, archive_kind, looks_like_dicom

ACCEPTED = ("an ACDC patient folder (Info.cfg), a DICOM folder, a folder of per-frame .mhd/.nii.gz/.nrrd files, "
            "a folder of one image and its label maps (cine.nii.gz, cine_labels.nii.gz), "
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


# An AIF curve saved beside the images (`cardiacaiseg phantom --kind perfusion` writes aif.csv):
# a text file whose name has "aif" as a word of its own (aif.csv, stress_aif.txt, AIF-curve.tsv)
_AIF_FILE_NAME = re.compile(r"(?:^|[^a-z0-9])aif(?:[^a-z0-9]|$)")
_AIF_TEXT_SUFFIXES = (".txt", ".csv", ".tsv", ".dat")   # the text columns --aif reads


def _aif_files_beside(folder):
    return sorted(f for f in folder.iterdir() if f.is_file() and not f.name.startswith(".")
                  and f.suffix.lower() in _AIF_TEXT_SUFFIXES and _AIF_FILE_NAME.search(f.stem.lower()))


@dataclass
class _OneImageFolder:
    """A folder read as its one image (``volume.one_image_and_its_label_maps``)."""
    folder: Path
    image: Path
    label_maps: list
    aif: Path | None          # the AIF file beside the image, taken where no --aif is given
    notes: list               # warnings on what was found beside the image and not used


def _one_image_folder(folder, kind, aif):
    """The folder of one image volume and its label maps (this tool's phantom folders, a
    converter's export), read as that image with its label maps as the study's own (measured
    with --labels study, as an ACDC folder's _gt) and an AIF file beside it as its AIF where no
    --aif is given, as a dual-sequence AIF series beside a DICOM series is found by itself; else
    None. It was refused for "give the image file itself", and --labels and --aif had to name
    what lay beside it (the AIF was dropped when only --labels was given; probe 108). DICOM
    files beside the pair, or several AIF files, leave the study's image or AIF unknown: refused."""
    from itertools import islice

    from .volume import one_image_and_its_label_maps

    if (folder / "Info.cfg").exists() or (folder / "params.json").is_file():
        return None   # an ACDC patient (its Info.cfg checked, even a broken one) or a QPerf folder
    found = one_image_and_its_label_maps(folder)
    if found is None:
        return None
    image, label_maps = found
    named = ", ".join(f.name for f in label_maps[:2]) + (", ..." if len(label_maps) > 2 else "")
    others = (f for f in folder.iterdir() if f.is_file() and f != image and f not in label_maps)
    dicom = [f for f in islice(others, 200) if looks_like_dicom(f)]
    if dicom:
        raise CardiacInputError(folder, f"holds one image ({image.name}) with its label maps ({named}) and DICOM files "
                                        f"({', '.join(f.name for f in dicom[:2])}{', ...' if len(dicom) > 2 else ''}): "
                                        "which one is the study cannot be told; put the DICOM files in a folder of their "
                                        f"own, or give {image.name} itself with --labels {label_maps[0].name} for its labels")
    curves, notes = _aif_files_beside(folder), []
    if aif is not None or not curves:
        beside = None
    elif kind == CINE:
        beside = None
        notes.append(f"{', '.join(f.name for f in curves)} beside {image.name} in {folder} not used as an AIF: the series "
                     "is read as a cine (--kind cine)")
    elif len(curves) > 1:
        raise CardiacInputError(folder, f"holds {len(curves)} AIF files ({', '.join(f.name for f in curves[:3])}"
                                        f"{', ...' if len(curves) > 3 else ''}) beside its one image ({image.name}): which "
                                        "one is its AIF cannot be told; give it with --aif")
    else:
        beside = curves[0]
    return _OneImageFolder(folder, image, label_maps, beside, notes)


def _attach_folder_labels(study, found, frame):
    """The label maps beside a folder's one image, as its own labels: in ACDC's convention, as
    an ACDC folder's _gt maps and this tool's phantoms are (--label-convention is for a file
    given with --labels); one that does not fit the image is refused as a --labels file is."""
    maps = found.label_maps
    try:
        _attach_labels(study, maps if len(maps) > 1 else maps[0], "acdc", frame)
    except CardiacInputError as e:
        # after a semicolon: the problem may end in a parenthesis of its own, and a batch adds one
        raise CardiacInputError(e.path, f"{e.problem}; {'they lie' if len(maps) > 1 else 'it lies'} beside "
                                        f"{found.image.name} in {found.folder} and {'are' if len(maps) > 1 else 'is'} "
                                        f"read as its labels: give {found.image.name} itself to analyse it without "
                                        f"{'them' if len(maps) > 1 else 'the label map'}") from None
    return study


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
    from .geometry_check import add_warning

    # a folder of one image and its label maps is read as that image file, given the AIF file
    # beside it: what `analyze FOLDER/IMAGE --aif FOLDER/AIF` reads, to the last digit
    one_image = _one_image_folder(path, kind, aif) if path.is_dir() else None
    image = one_image.image if one_image else path
    curve = aif if aif is not None or one_image is None else one_image.aif
    with single_blas_thread():
        study = _read(image, kind, series, curve, dt, progress, units)
        if curve is not None and aif is None:
            # the folder's AIF makes it perfusion as --aif would, in the folder's words: "--aif
            # was given" (and "give no AIF" for a cine) named a flag nobody gave
            study.provenance.setdefault("format_kind", (PERFUSION, f"an AIF file ({curve.name}) lies beside the image "
                                                                   f"in {one_image.folder.name}"))
        # perfusion formats (QPerf, Analyze) come back finished; the flags must still agree
        finished = study.kind == PERFUSION and study.provenance.get("dt_source")
        decide_kind(study, requested=kind, aif_given=aif is not None, dt=dt, user_asked=not kind_by_role)
        if study.kind == PERFUSION and not finished:
            from .perfusion import finish_perfusion
            from .series_kind import kind_said_on_errors

            with kind_said_on_errors(study, reading=True):
                finish_perfusion(study, image, aif=curve, dt=dt, stress_or_rest=series or "stress", units=units,
                                 progress=progress)
    if one_image is not None:
        for note in one_image.notes:
            add_warning(study, note)
        if curve is not None and aif is None:
            add_warning(study, f"the AIF is read from {curve.name}, which lies beside the image {image.name} in "
                               f"{one_image.folder} (as --aif {curve} reads it); give --aif for another")

    if study.kind == CINE and study.n_frames == 1:
        study.provenance["frame_phase"] = one_frame_phase(study)
    if labels is not None:
        _attach_labels(study, labels, label_convention, frame)
    elif one_image is not None:
        _attach_folder_labels(study, one_image, frame)
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
