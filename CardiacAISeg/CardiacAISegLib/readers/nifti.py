"""NIfTI-1/2 and Analyze 7.5 files: the one low-level reader with errors that name the problem.

Shared by the ACDC, volume and perfusion readers (each adds what its layout means). nibabel
quietly "fixes" some broken headers (a negative voxel size becomes positive, a zero one 1 mm),
so the raw header is checked before nibabel reads it.

The common files are read without nibabel (issue 14: ``import nibabel`` pulls every image
format, ~0.15-0.27 s of a cold run): ``_read_fast`` parses single-file NIfTI-1, NIfTI-1 pairs
and SPM2-style Analyze 7.5 headers with numpy and gzip and gives the same array, affine and header
values as nibabel. Anything it has a doubt about (NIfTI-2, no qform/sform, complex/RGB or other
data types, odd dims or offsets, truncated data, DICOM/CIFTI extensions, a .mat next to an
Analyze file, compressed pairs) returns None and goes through nibabel unchanged, errors included.
"""
import gzip
import logging
import zlib
from pathlib import Path

import numpy as np

from ..errors import CardiacInputError

# nibabel logs the header fixes it makes to stderr ("pixdim[1,2,3] should be non-zero; setting 0
# dims to 1"), ahead of this reader's own error about the same field (probe 101): its errors stay
logging.getLogger("nibabel.global").setLevel(logging.ERROR)

FAST_READS = {"fast": 0, "nibabel": 0}   # which path load_nifti took (tests check the common files are read fast)


def load_nifti(path):
    """(array in nibabel x,y,z[,t] order as float32, affine, header) of a NIfTI or Analyze file;
    clear errors for bad files."""
    path = Path(path)
    if not path.is_file():
        raise CardiacInputError(path, "file not found")
    _check_raw_pixdim(path)
    fast = _read_fast(path)
    if fast is not None:
        FAST_READS["fast"] += 1
        data, affine, header = fast
        refuse_non_finite(path, data)
        _refuse_forms_that_disagree(path, header)
        return data, affine, header
    FAST_READS["nibabel"] += 1
    import nibabel as nib

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
    refuse_non_finite(path, data)
    _refuse_forms_that_disagree(path, img.header)
    return data, np.asarray(img.affine, float), img.header


def refuse_non_finite(path, data, time_axis=-1):
    """CardiacInputError naming how many values are NaN or infinite, and where, for an image
    that has any (a masked map saved with NaN outside the mask is the common case: it says how
    to save it); nothing for a finite image. ``time_axis``: the frames' axis of a 4D array."""
    finite = np.isfinite(data)
    if finite.all():
        return
    nan, inf = int(np.isnan(data).sum()), int(np.isinf(data).sum())
    what = " and ".join(f"{n} {name}" for n, name in ((nan, "NaN"), (inf, "infinite")) if n)
    where = ""
    if data.ndim == 4:
        bad_frames = int((~finite).any(axis=tuple(a for a in range(4) if a != time_axis % 4)).sum())
        where = f" in {bad_frames} of {data.shape[time_axis]} frames"
    share = 100.0 * (nan + inf) / data.size
    if inf == 0 and share < 90 and data.ndim == 4 and np.array_equal((~finite).all(axis=time_axis), (~finite).any(axis=time_axis)):
        hint = ("the same voxels in every frame, as a masked map's background: save it with a number (0) in place "
                "of NaN, e.g. numpy.nan_to_num")
    else:
        hint = "a voxel without a number has no signal to measure; save the image with finite values"
    raise CardiacInputError(path, f"contains {what} values ({share:.1f} % of the voxels{where}): {hint}")


def _forms(header):
    """{"sform" | "qform": (code, 4x4 matrix, voxel sizes)} of a NIfTI header; None for Analyze
    7.5 (neither) or a header whose forms cannot be read."""
    try:
        forms = {name: (int(header[f"{name}_code"]), np.asarray(getattr(header, f"get_{name}")(), float))
                 for name in ("sform", "qform")}
    except (KeyError, ValueError, TypeError, AttributeError):   # Analyze 7.5 has neither
        return None
    if not all(np.all(np.isfinite(m)) for _, m in forms.values()):
        return None
    return {name: (code, m, np.linalg.norm(m[:3, :3], axis=0)) for name, (code, m) in forms.items()}


def _sizes_differ(a, b):
    return not np.allclose(a, b, rtol=0.01)


def _refuse_forms_that_disagree(path, header):
    """A NIfTI with both an sform and a qform whose voxel sizes differ: nibabel (and so these
    numbers) use the sform, ITK and Slicer the qform, so the volume depends on the program."""
    forms = _forms(header)
    if forms is None or forms["sform"][0] <= 0 or forms["qform"][0] <= 0:
        return
    s, q = forms["sform"][2], forms["qform"][2]
    if _sizes_differ(s, q):
        raise CardiacInputError(path, f"the header's sform and qform give different voxel sizes ({np.round(s, 4).tolist()} vs "
                                      f"{np.round(q, 4).tolist()} mm): programs that read the sform (nibabel) and the qform "
                                      "(ITK, Slicer) would measure different volumes; re-export the image with one geometry")


def unused_form_disagrees(header):
    """A sentence when a NIfTI header carries a form it marks unused (code 0) whose voxel sizes
    differ from the form in use by over 1 %, or an sform in use whose voxel sizes differ from
    pixdim's, else None (both forms in use are refused on load if they differ:
    ``_refuse_forms_that_disagree``). A tool that rewrote one form and zeroed the other's code
    leaves the old one behind: a 4D cine whose qform and pixdim said 4 mm slices, beside an unused
    sform of the scanner's 8 mm, read EDV and mass 50 % low with QC pass (probe 51). All-zero and
    identity forms are what writers leave by default, not a geometry."""
    forms = _forms(header)
    if forms is None or (forms["sform"][0] > 0) == (forms["qform"][0] > 0):
        return None
    used, unused = ("sform", "qform") if forms["sform"][0] > 0 else ("qform", "sform")
    matrix = forms[unused][1]
    if not matrix[:3].any() or np.allclose(matrix, np.eye(4)):
        return _sform_against_pixdim(header, forms) if used == "sform" else None
    if not _sizes_differ(forms[used][2], forms[unused][2]):
        return None
    return (f"the header's {used} gives voxels of {np.round(forms[used][2], 3).tolist()} mm and its unused {unused} (code 0) "
            f"{np.round(forms[unused][2], 3).tolist()} mm: one of them was left behind by a tool that rewrote the other; the "
            f"numbers here use the {used}, and volumes and mass scale with the voxel size; check it against the scanner's")


def _sform_against_pixdim(header, forms):
    """A sentence when the sform in use gives other voxel sizes than pixdim[1..3] (by over 1 %),
    beside a qform left at the identity (nibabel's header for an image made without an affine
    and given an sform: pixdim 1 x 1 x 1, a zero quaternion), else None. ITK, and so Slicer, take
    the voxel size from pixdim whatever the sform says ("unexpected scales in sform"): the cine
    measured here with the sform's 1.58 x 1.58 x 8.54 mm voxels was 21x smaller in Slicer, with no
    word (probe 105); a qform other than the identity holds pixdim's sizes and is said above."""
    try:
        pixdim = np.asarray(header.get_zooms()[:3], float)
    except (AttributeError, TypeError, ValueError):
        return None
    sform = forms["sform"][2][:pixdim.size]
    if pixdim.size < 2 or not np.all(np.isfinite(pixdim)) or not _sizes_differ(sform, pixdim):
        return None
    default = " (the 1 x 1 x 1 writers leave when no voxel size was set)" if np.allclose(pixdim, 1.0) else ""
    ratio = float(np.prod(sform) / np.prod(pixdim))
    return (f"the header's sform gives voxels of {np.round(sform, 3).tolist()} mm, its pixdim {np.round(pixdim, 3).tolist()} mm"
            f"{default} and its qform is unused: the numbers here use the sform, but ITK and Slicer take the voxel size from "
            f"pixdim, so they would measure this file {ratio:.3g}x {'smaller' if ratio > 1 else 'larger'} in volume (and "
            "the segmentation saved here would not overlay it there); re-export the image with pixdim set to the sform's "
            "voxel size (nibabel: header.set_zooms)")


def _raw_pixdim(path):
    """(dim[0], pixdim[1..3]) as written in a NIfTI-1/2 or Analyze header, or None if unreadable.

    Read before nibabel, which quietly replaces a negative voxel size by its absolute value and
    a zero one by 1 on load (a plausible but wrong volume)."""
    path = Path(path)
    header_path = path.with_suffix(".hdr") if path.suffix.lower() == ".img" else path
    try:
        raw = _header_bytes(header_path, 540)
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
    except (gzip.BadGzipFile, zlib.error) as e:
        if str(e).startswith("Not a gzipped file"):
            return "not gzip-compressed data, although the name ends in .gz"
        # the gzip header was read: the compressed data after it, or their checksum, are broken
        return f"damaged: its gzip data do not decode ({e}; bytes changed in a copy or download?)"
    except OSError:
        return "not gzip-compressed data, although the name ends in .gz"
    if len(raw) < 348 or not ({int.from_bytes(raw[:4], "little"), int.from_bytes(raw[:4], "big")} & {348, 540}):
        return "not a NIfTI file (no NIfTI header)"
    return None


# --- the fast path (issue 14): nibabel's values without importing nibabel --------------------
_NIFTI_DTYPES = {2: "u1", 4: "i2", 8: "i4", 16: "f4", 64: "f8", 256: "i1", 512: "u2", 768: "u4", 1024: "i8", 1280: "u8"}
_ANALYZE_DTYPES = {2: "u1", 4: "i2", 8: "i4", 16: "f4", 64: "f8"}   # Analyze 7.5 has no others
_UNITS = {0: "unknown", 1: "meter", 2: "mm", 3: "micron", 8: "sec", 16: "msec", 24: "usec", 32: "hz", 40: "ppm", 48: "rads"}
_XFORM_CODES = range(6)   # nibabel resets any other code to 0 on load
_PARSED_EXTENSIONS = (2, 32)   # DICOM and CIFTI extensions, which nibabel parses (and may reject)
_QUATERNION_W2_TOLERANCE = np.finfo(np.float32).eps * 3   # nibabel's Nifti1Header.quaternion_threshold


def _header_bytes(path, size):
    """The first ``size`` bytes of a (maybe gzip-compressed) header file."""
    name = str(path).lower()
    if name.endswith((".bz2", ".zst")):   # rare: nibabel's opener knows them
        from nibabel.openers import ImageOpener

        with ImageOpener(str(path)) as f:
            return f.read(size)
    with (gzip.open if name.endswith(".gz") else open)(path, "rb") as f:
        return f.read(size)


class _AnalyzeHeader:
    """The accessors the readers use of nibabel's Analyze header (which has no sform/qform)."""

    def __init__(self, fields, zooms):
        self._fields, self._zooms = fields, zooms

    def __getitem__(self, key):
        if key not in self._fields:   # Analyze: no sform_code/qform_code, as nibabel's numpy record says
            raise ValueError(f"no field of name {key}")
        return self._fields[key]

    def get(self, key, default=None):
        return self._fields.get(key, default)

    def get_zooms(self):
        return self._zooms


class _Nifti1Header(_AnalyzeHeader):
    def __init__(self, fields, zooms, xyzt_units, sform, qform):
        super().__init__(fields, zooms)
        self._xyzt_units, self._sform, self._qform = xyzt_units, sform, qform

    def get_xyzt_units(self):
        xyz = self._xyzt_units % 8
        return _UNITS[xyz], _UNITS[self._xyzt_units - xyz]   # KeyError for an undefined code, as nibabel

    def get_sform(self):
        return self._sform.copy()

    def get_qform(self):
        return self._qform.copy()


def _qform_affine(bcd, pixdim, qoffset):
    """nibabel's Nifti1Header.get_qform (quaternions.fillpositive + quat2mat, in long double), or
    None where nibabel would raise (b, c, d not a unit quaternion)."""
    x, y, z = xyz = np.asarray(bcd, dtype=np.longdouble)
    w2 = 1.0 - xyz @ xyz
    if np.abs(w2) < np.abs(_QUATERNION_W2_TOLERANCE):
        w = 0
    elif w2 < 0 or not np.isfinite(w2):
        return None
    else:
        w = np.sqrt(w2)
    w, x, y, z = np.r_[w, xyz]
    s = 2.0 / (w * w + x * x + y * y + z * z)
    X, Y, Z = x * s, y * s, z * s
    rotation = np.array([[1.0 - (y * Y + z * Z), x * Y - w * Z, x * Z + w * Y],
                         [x * Y + w * Z, 1.0 - (x * X + z * Z), y * Z - w * X],
                         [x * Z - w * Y, y * Z + w * X, 1.0 - (x * X + y * Y)]])
    vox = pixdim[1:4].copy()
    vox[-1] *= -1 if pixdim[0] == -1 else 1   # qfac: nibabel sets any value but -1 or 1 to 1
    out = np.eye(4)
    out[:3, :3] = np.dot(rotation, np.diag(vox))
    out[:3, 3] = qoffset
    return out


def _spm_origin_affine(dim, pixdim, origin):
    """nibabel's Spm99AnalyzeHeader.get_origin_affine (x flipped; SPM origin when plausible)."""
    zooms = pixdim[1:4].copy()
    zooms[0] *= -1
    dims = dim[1:4]
    if np.any(origin) and np.all(origin > -dims) and np.all(origin < dims * 2):
        origin = origin - 1
    else:
        origin = (dims - 1) / 2.0
    aff = np.eye(4)
    aff[:3, :3] = np.diag(zooms)
    aff[:3, -1] = -origin * zooms
    return aff


def _parse(path, whole=True):
    """(header, shape, dtype, data bytes, data offset, slope, inter) as nibabel would load the file,
    or None where nibabel's own path should decide. ``whole=False`` reads the header only (data None)."""
    path = Path(path)
    name, pair = path.name.lower(), path.suffix in (".hdr", ".img", ".HDR", ".IMG")
    if pair:   # the other file of the pair as nibabel finds it (same case)
        upper = path.suffix.isupper()
        path, data_path = path.with_suffix(".HDR" if upper else ".hdr"), path.with_suffix(".IMG" if upper else ".img")
        if path.with_suffix(".mat").exists() or path.with_suffix(".MAT").exists():
            return None   # SPM's .mat affine: nibabel reads it with scipy
    elif not name.endswith((".nii", ".nii.gz")):
        return None
    if whole and name.endswith(".gz"):
        raw = gzip.decompress(path.read_bytes())
    else:
        raw = path.read_bytes() if whole else _header_bytes(path, 352)
    order = next((o for o in "<>" if len(raw) >= 348 and np.frombuffer(raw, o + "i4", 1)[0] == 348), None)
    if order is None:
        return None

    def field(fmt, offset, count=1):
        return np.frombuffer(raw, order + fmt, count, offset)

    dim, pixdim = field("i2", 40, 8), field("f4", 76, 8).copy()
    magic, code = raw[344:348], int(field("i2", 70)[0])
    nifti = magic in (b"n+1\0", b"ni1\0")
    if (magic == b"n+1\0") == pair:
        return None   # a .nii must say n+1 and a .hdr must not: nibabel's offset rules differ
    if magic == b"ni1\0" and raw[348:349] not in (b"", b"\0"):
        return None   # a pair header with extensions
    ndim = int(dim[0])
    shape = tuple(int(d) for d in dim[1:ndim + 1])
    dtype = (_NIFTI_DTYPES if nifti else _ANALYZE_DTYPES).get(code)
    offset = float(field("f4", 108)[0])
    if not 2 <= ndim <= 7 or min(shape) < 1 or dtype is None or not np.isfinite(offset) or offset != int(offset) or offset < 0:
        return None
    if nifti and shape[:3] == (27307, 1, 6):
        return None   # nibabel reshapes FreeSurfer's ico7 surface files
    offset = int(offset)
    if magic == b"n+1\0" and (offset < 352 or whole and not _plain_extensions(raw, order, offset)):
        return None   # (extensions do not change the shape a header-only read is for)
    spatial = pixdim[1:4]   # nibabel's fix on load: zero voxel sizes become 1, negative ones positive
    pixdim[1:4] = np.abs(np.where(spatial == 0, 1, spatial))
    zooms = tuple(pixdim[1:ndim + 1])
    slope, inter = float(field("f4", 112)[0]), float(field("f4", 116)[0])
    if nifti:
        codes = {"qform_code": field("i2", 252)[0], "sform_code": field("i2", 254)[0]}
        if codes["qform_code"] not in _XFORM_CODES or codes["sform_code"] not in _XFORM_CODES:
            return None
        sform = np.eye(4)
        sform[:3] = field("f4", 280, 12).reshape(3, 4)
        qform = _qform_affine(field("f4", 256, 3), pixdim, field("f4", 268, 3))
        if (qform is None and (codes["qform_code"] or not codes["sform_code"])) or not any(codes.values()):
            return None   # no usable form: nibabel's base affine and errors
        header = _Nifti1Header(codes, zooms, int(raw[123]), sform, qform)
        header.affine = sform if codes["sform_code"] else qform
        if slope == 0 or not np.isfinite(slope):
            slope, inter = 1.0, 0.0
        elif not np.isfinite(inter):
            return None   # nibabel: "Valid slope but invalid intercept"
    else:
        header = _AnalyzeHeader({}, zooms)
        header.affine = _spm_origin_affine(dim, pixdim, field("i2", 253, 5)[:3])
        if not (slope and np.isfinite(slope)):
            with np.errstate(all="ignore"):
                if field("i4", 140)[0] - field("i4", 144)[0] and field("f4", 124)[0] - field("f4", 128)[0]:
                    return None   # SPM2's scaling from glmax/glmin and cal_max/cal_min: nibabel's path
            slope, inter = 1.0, 0.0
        elif not np.isfinite(inter):
            inter = 0.0
    if not whole:
        return header, shape, np.dtype(order + dtype), None, offset, slope, inter
    if pair:
        if not data_path.is_file():
            return None
        raw = data_path.read_bytes()
    return header, shape, np.dtype(order + dtype), raw, offset, slope, inter


def _plain_extensions(raw, order, offset):
    """True when a single file's extensions (if any) are ones nibabel keeps as raw bytes and they
    tile the space before the data exactly as nibabel walks it."""
    if raw[348:349] == b"\0":
        return True
    position = 352
    while offset - position >= 16:
        size, code = np.frombuffer(raw, order + "i4", 2, position)
        if size < 16 or size % 16 or position + size > offset or code in _PARSED_EXTENSIONS:
            return False
        position += int(size)
    return True


def _read_fast(path):
    """(data float32, affine, header) as load_nifti's nibabel path gives them, or None to use nibabel."""
    try:
        parsed = _parse(path)
    except gzip.BadGzipFile as e:
        if str(e).startswith(("CRC check failed", "Incorrect length")):
            # nibabel's reader does not check the gzip trailer: a bit flipped in a copy read
            # as changed voxels with exit 0 (probe 57)
            raise CardiacInputError(path, "damaged: the gzip checksum does not match the data it holds (bytes changed in "
                                          "a copy or download, or the file was cut and mended); copy it again from its "
                                          "source") from None
        return None   # not gzip data at all, or trailing bytes: nibabel's path reads or words it
    except (OSError, EOFError, ValueError, IndexError, OverflowError, zlib.error):
        return None   # unreadable or truncated: nibabel's path words the error
    if parsed is None:
        return None
    header, shape, dtype, raw, offset, slope, inter = parsed
    count = int(np.prod(shape, dtype=np.int64))
    if len(raw) < offset + count * dtype.itemsize:
        return None   # truncated data
    values = np.frombuffer(raw, dtype, count, offset).reshape(shape, order="F")
    if (slope, inter) == (1, 0):   # nibabel's cast goes through float64 for (u)int32/64: int64 rounds twice
        data = values.astype(np.promote_types(dtype, np.float32)).astype(np.float32, copy=False)
    else:   # nibabel scales in float64 (apply_read_scaling), then casts
        scaled = values.astype(np.float64)
        if slope != 1:
            scaled = scaled * slope
        if inter != 0:
            scaled = scaled + inter
        data = scaled.astype(np.float32)
    return data, np.asarray(header.affine, float), header


def header_shape(path):
    """The data shape nibabel would give a NIfTI/Analyze file, read from its header without
    nibabel; None where only nibabel can tell."""
    try:
        parsed = _parse(path, whole=False)
    except (OSError, EOFError, ValueError, IndexError, OverflowError, zlib.error):
        return None
    return None if parsed is None else parsed[1]
