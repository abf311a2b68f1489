"""ACDC patient folders: Info.cfg, patientNNN_frameXX.nii.gz (+ _gt), optional patientNNN_4d.nii.gz."""
import re
from pathlib import Path

import numpy as np

from ..errors import CardiacInputError
from ..labels import normalise_labels
from ..study import CINE, Study

_FRAME_RE = re.compile(r"^(?P<pid>patient\d+)_frame(?P<n>\d+)\.nii(\.gz)?$")


def is_acdc_folder(path):
    path = Path(path)
    return path.is_dir() and (path / "Info.cfg").is_file()


def read_info_cfg(path):
    """Info.cfg as a dict; ED/ES/NbFrame as int, Height/Weight as float; absent keys are absent."""
    info = {}
    try:
        text = Path(path).read_text()
    except OSError as e:
        raise CardiacInputError(path, f"cannot read Info.cfg ({e.strerror})")
    for line in text.splitlines():
        if ":" not in line:
            continue
        key, value = (s.strip() for s in line.split(":", 1))
        if key in ("ED", "ES", "NbFrame"):
            try:
                info[key] = int(float(value))
            except ValueError:
                raise CardiacInputError(path, f"{key} is not a number: {value!r}")
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
    return info


def load_nifti(path):
    """(array in nibabel x,y,z[,t] order as float32, affine, header) of a NIfTI or Analyze file;
    clear errors for bad files."""
    import nibabel as nib

    path = Path(path)
    if not path.is_file():
        raise CardiacInputError(path, "file not found")
    try:
        img = nib.load(str(path))
        data = np.asarray(img.dataobj, dtype=np.float32)
    except Exception as e:  # nibabel raises many types for corrupt / truncated files
        from .volume import diagnose_nifti, volume_suffix  # volume imports this module

        if volume_suffix(path) in (".hdr", ".img"):
            raise CardiacInputError(path, f"not a readable Analyze 7.5 file ({type(e).__name__}: {e})")
        raise CardiacInputError(path, f"not a readable NIfTI file: {diagnose_nifti(path) or f'{type(e).__name__}: {e}'}")
    if not np.all(np.isfinite(data)):
        raise CardiacInputError(path, "contains NaN or infinite values")
    return data, np.asarray(img.affine, float), img.header


def nifti_to_kji(data):
    """nibabel (i, j, k[, t]) -> (t, k, j, i)."""
    if data.ndim == 2:
        data = data[:, :, None]
    if data.ndim == 3:
        return data.transpose(2, 1, 0)[None]
    if data.ndim == 4:
        return data.transpose(3, 2, 1, 0)
    raise ValueError(f"expected a 2D, 3D or 4D image, got {data.ndim} dimensions")


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
    four_d = sorted(folder.glob("*_4d.nii*"))
    frame_files = {}
    for f in folder.iterdir():
        m = _FRAME_RE.match(f.name)
        if m:
            frame_files[int(m.group("n"))] = f
    if not four_d and not frame_files:
        raise CardiacInputError(folder, "no patientNNN_frameXX.nii.gz or _4d.nii.gz image in this ACDC folder")

    if four_d:
        data, affine, header = load_nifti(four_d[0])
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
            vols.append(data)
            affine = aff if affine is None else affine
        images = np.stack([nifti_to_kji(v)[0] for v in vols])
        files = [str(frame_files[n]) for n in frame_numbers]

    index = {n: i for i, n in enumerate(frame_numbers)}
    for key in ("ED", "ES"):
        if info[key] not in index:
            raise CardiacInputError(folder / "Info.cfg", f"{key} frame {info[key]} has no image in the folder (frames: {frame_numbers})")

    labels = {}
    for n, i in index.items():
        gt = folder / f"{folder.name}_frame{n:02d}_gt.nii.gz"
        if not gt.is_file():
            gt = folder / f"{folder.name}_frame{n:02d}_gt.nii"
        if gt.is_file():
            lab, _, _ = load_nifti(gt)
            lab = nifti_to_kji(lab)[0]
            if lab.shape != images.shape[1:]:
                raise CardiacInputError(gt, f"label map shape {lab.shape[::-1]} does not match the image {images.shape[1:][::-1]}")
            labels[i] = normalise_labels(np.rint(lab).astype(np.int16), "acdc")

    study = Study(
        images=images,
        ijk_to_ras=affine,
        kind=CINE,
        name=folder.name,
        source=str(folder),
        provenance={"reader": "acdc", "files": files, "info": info, "frame_numbers": frame_numbers},
        ed_frame=index[info["ED"]],
        es_frame=index[info["ES"]],
        labels=labels,
        # The ACDC NIfTI affines are scaled identities: no real patient orientation.
        orientation_known=False,
    )
    return study
