"""NIfTI-1/2 and Analyze 7.5 files: the one low-level reader with errors that name the problem.

Shared by the ACDC, volume and perfusion readers (each adds what its layout means). nibabel
quietly "fixes" some broken headers (a negative voxel size becomes positive, a zero one 1 mm),
so the raw header is checked before nibabel reads it.
"""
import zlib
from pathlib import Path

import numpy as np

from ..errors import CardiacInputError


def load_nifti(path):
    """(array in nibabel x,y,z[,t] order as float32, affine, header) of a NIfTI or Analyze file;
    clear errors for bad files."""
    import nibabel as nib

    path = Path(path)
    if not path.is_file():
        raise CardiacInputError(path, "file not found")
    _check_raw_pixdim(path)
    try:
        img = nib.load(str(path))
        dtype = np.dtype(img.get_data_dtype())
        if np.issubdtype(dtype, np.complexfloating) or dtype.fields:
            # a cast to float would silently drop the phase / colour channels; the magnitude of a
            # complex reconstruction is not guaranteed to be the image the scanner showed
            what = "complex-valued" if dtype.kind == "c" else "multi-channel (RGB)"
            raise CardiacInputError(path, f"{what} image data ({dtype}) is not supported; accepted: real-valued scalar "
                                          "images (save the magnitude image, e.g. numpy.abs, as float32 or int16)")
        data = np.asarray(img.dataobj, dtype=np.float32)
    except CardiacInputError:
        raise
    except Exception as e:  # nibabel raises many types for corrupt / truncated files
        if path.suffix.lower() in (".hdr", ".img"):
            raise CardiacInputError(path, f"not a readable Analyze 7.5 file ({type(e).__name__}: {e})")
        raise CardiacInputError(path, f"not a readable NIfTI file: {diagnose_nifti(path) or f'{type(e).__name__}: {e}'}")
    if not np.all(np.isfinite(data)):
        raise CardiacInputError(path, "contains NaN or infinite values")
    _refuse_forms_that_disagree(path, img.header)
    return data, np.asarray(img.affine, float), img.header


def _refuse_forms_that_disagree(path, header):
    """A NIfTI with both an sform and a qform whose voxel sizes differ: nibabel (and so these
    numbers) use the sform, ITK and Slicer the qform, so the volume depends on the program."""
    try:
        codes = int(header["sform_code"]), int(header["qform_code"])
    except (KeyError, ValueError, TypeError):   # Analyze 7.5 has neither
        return
    if codes[0] <= 0 or codes[1] <= 0:
        return
    s = np.linalg.norm(header.get_sform()[:3, :3], axis=0)
    q = np.linalg.norm(header.get_qform()[:3, :3], axis=0)
    if np.all(np.isfinite(s)) and np.all(np.isfinite(q)) and not np.allclose(s, q, rtol=0.01):
        raise CardiacInputError(path, f"the header's sform and qform give different voxel sizes ({np.round(s, 4).tolist()} vs "
                                      f"{np.round(q, 4).tolist()} mm): programs that read the sform (nibabel) and the qform "
                                      "(ITK, Slicer) would measure different volumes; re-export the image with one geometry")


def _raw_pixdim(path):
    """(dim[0], pixdim[1..3]) as written in a NIfTI-1/2 or Analyze header, or None if unreadable.

    Read before nibabel, which quietly replaces a negative voxel size by its absolute value and
    a zero one by 1 on load (a plausible but wrong volume)."""
    from nibabel.openers import ImageOpener

    path = Path(path)
    header_path = path.with_suffix(".hdr") if path.suffix.lower() == ".img" else path
    try:
        with ImageOpener(str(header_path)) as f:
            raw = f.read(540)
    except Exception:
        return None
    for order in ("<", ">"):
        if len(raw) >= 348 and int(np.frombuffer(raw[:4], order + "i4")[0]) == 348:
            dim = np.frombuffer(raw[40:56], order + "i2")
            return int(dim[0]), np.frombuffer(raw[76:92], order + "f4")[1:4].astype(float)
        if len(raw) >= 540 and int(np.frombuffer(raw[:4], order + "i4")[0]) == 540:
            dim = np.frombuffer(raw[16:80], order + "i8")
            return int(dim[0]), np.frombuffer(raw[104:136], order + "f8")[1:4].astype(float)
    return None


def _check_raw_pixdim(path):
    """Refuse a zero, negative or non-finite voxel size in the file's own header."""
    found = _raw_pixdim(path)
    if found is None:
        return
    ndim, pix = found
    pix = pix[:min(max(ndim, 2), 3)]
    if np.all(np.isfinite(pix)) and np.all(pix > 0):
        return
    from .geometry_check import check_spacing_values

    check_spacing_values(path, pix, "pixdim[1..3] (voxel size)")


def nifti_spacing_lost(header, ndim):
    """True for a NIfTI with neither qform nor sform and a 1 x 1 x 1 pixdim: the writer did not
    store the voxel size (nibabel's default), so any volume computed from it would be wrong."""
    try:
        codes = (int(header["sform_code"]), int(header["qform_code"]))
    except (KeyError, TypeError, ValueError):
        return False    # Analyze 7.5: pixdim is all there is
    zooms = np.asarray(header.get_zooms()[:min(max(ndim, 2), 3)], float)
    return codes == (0, 0) and np.allclose(zooms, 1.0)


SPACING_LOST = ("no qform or sform and a voxel size (pixdim) of exactly 1 x 1 x 1 mm: the voxel size was not saved with "
                "this file, so volumes would be wrong (a cine stack has slices 5-10 mm apart); accepted: a NIfTI with its "
                "true voxel size in pixdim or in a qform/sform (re-export from the DICOM, or set it, e.g. nibabel "
                "header.set_zooms)")


def nifti_to_kji(data):
    """nibabel (i, j, k[, t]) -> (t, k, j, i)."""
    if data.ndim == 2:
        data = data[:, :, None]
    if data.ndim == 3:
        return data.transpose(2, 1, 0)[None]
    if data.ndim == 4:
        return data.transpose(3, 2, 1, 0)
    raise ValueError(f"expected a 2D, 3D or 4D image, got {data.ndim} dimensions")


def diagnose_nifti(path):
    """A plainer reason than nibabel's for a NIfTI that will not load, or None."""
    import gzip

    try:
        raw = Path(path).read_bytes()
        if str(path).lower().endswith(".gz"):
            raw = gzip.decompress(raw)
    except EOFError:
        return "truncated: the gzip stream ends early (incomplete download or copy?)"
    except (OSError, zlib.error):
        return "not gzip-compressed data, although the name ends in .gz"
    if len(raw) < 348 or not ({int.from_bytes(raw[:4], "little"), int.from_bytes(raw[:4], "big")} & {348, 540}):
        return "not a NIfTI file (no NIfTI header)"
    return None
