"""The NIfTI/Analyze fast path (readers.nifti._read_fast, issue 14) against load_nifti's nibabel path.

Every file is loaded twice through load_nifti: once as it runs (fast path where it applies) and
once with the fast path switched off; data must be bitwise equal, the affine equal to 1e-6 and
the header values the readers use (codes, zooms, units, sform/qform) equal. Files the fast path
declines must give the same outcome too (the same error message where nibabel refuses them).
"""
import struct
import subprocess
import sys
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

from CardiacAISegLib.errors import CardiacInputError
from CardiacAISegLib.memory_check import _nifti_voxels
from CardiacAISegLib.readers import nifti


def _rotation(angle_deg, axis):
    axis = np.asarray(axis, float) / np.linalg.norm(axis)
    k = np.array([[0, -axis[2], axis[1]], [axis[2], 0, -axis[0]], [-axis[1], axis[0], 0]])
    a = np.radians(angle_deg)
    return np.eye(3) + np.sin(a) * k + (1 - np.cos(a)) * k @ k


def _affine(zooms=(1.4, 1.3, 8.0), rotation=None, flip=False):
    aff = np.eye(4)
    aff[:3, :3] = (np.eye(3) if rotation is None else rotation) @ np.diag(zooms)
    if flip:   # a left-handed grid: the qform stores it with qfac = -1
        aff[:3, 2] *= -1
    aff[:3, 3] = (-91.5, 40.25, 12.0)
    return aff


OBLIQUE = _rotation(27.0, (0.3, -0.5, 0.8))


def _data(shape, dtype, seed=0):
    rng = np.random.default_rng(seed)
    dtype = np.dtype(dtype)
    if dtype.kind == "f":
        return (rng.standard_normal(shape) * 300).astype(dtype)
    info = np.iinfo(dtype)   # the full range: int32/int64 values that float32 must round
    values = rng.integers(info.min, info.max, size=shape, dtype=dtype, endpoint=True)
    if dtype.itemsize == 8:   # rounds differently to float32 directly and through float64
        values.flat[0] = 2 ** 60 + 2 ** 36 + 1
    return values


def _write_nifti(path, data, affine=None, sform=1, qform=1, endian="<", units=None, zooms=None, image=nib.Nifti1Image):
    header = image.header_class(endianness=endian)
    header.set_data_dtype(data.dtype)
    img = image(data, None, header)
    affine = _affine() if affine is None else affine
    img.set_sform(affine, code=sform)
    img.set_qform(affine, code=qform)
    if zooms is not None:
        img.header.set_zooms(zooms)
    if units is not None:
        img.header.set_xyzt_units(*units)
    img.to_filename(str(path))
    return Path(path)


def _write_analyze(path, data, zooms=(1.5, 1.5, 6.0), origin=None, endian="<", keep_mat=False):
    header = nib.Spm2AnalyzeHeader(endianness=endian)
    header.set_data_dtype(data.dtype)
    header.set_data_shape(data.shape)
    header.set_zooms(zooms[:data.ndim])
    if origin is not None:
        header["origin"][:3] = origin
    # with an affine nibabel also writes SPM's .mat beside the pair; without one the header's origin decides
    nib.Spm2AnalyzeImage(data, _affine(zooms) if keep_mat else None, header).to_filename(str(path))
    assert Path(path).with_suffix(".mat").exists() == keep_mat
    return Path(path)


def _patch(path, offset, fmt, *values):
    """Write raw header fields (what nibabel itself would not write) into an uncompressed file."""
    path = Path(path).with_suffix(".hdr") if Path(path).suffix == ".img" else Path(path)
    raw = bytearray(path.read_bytes())
    order = "<" if int.from_bytes(raw[:4], "little") == 348 else ">"
    struct.pack_into(order + fmt, raw, offset, *values)
    path.write_bytes(bytes(raw))
    return path


def _outcome(path, fast):
    """load_nifti's result (or its error) in comparable form, with the fast path on or off."""
    saved = nifti._read_fast
    if not fast:
        nifti._read_fast = lambda p: None
    try:
        data, affine, header = nifti.load_nifti(path)
    except Exception as e:   # CardiacInputError, or what escapes nibabel's path (it must escape the same way)
        return ("error", f"{type(e).__name__}: {e}")
    finally:
        nifti._read_fast = saved

    def attempt(fn):
        try:
            return fn()
        except (KeyError, ValueError) as e:
            return type(e).__name__

    codes = tuple(attempt(lambda k=k: int(header[k])) for k in ("sform_code", "qform_code"))
    defaults = tuple(int(header.get(k, 0)) for k in ("sform_code", "qform_code"))
    units = attempt(header.get_xyzt_units) if hasattr(header, "get_xyzt_units") else None
    forms = None
    if codes[0] not in ("KeyError", "ValueError") and codes[0] > 0 and codes[1] > 0:
        forms = (header.get_sform(), header.get_qform())
    zooms = tuple(float(z) for z in header.get_zooms())
    return ("ok", data, affine, codes, defaults, units, zooms, forms)


def _assert_same(path):
    fast, slow = _outcome(path, True), _outcome(path, False)
    assert fast[0] == slow[0], (fast[:2], slow[:2])
    if fast[0] == "error":
        assert fast[1] == slow[1]
        return
    data, ref = fast[1], slow[1]
    assert data.dtype == ref.dtype == np.float32 and data.shape == ref.shape
    assert np.array_equal(data.view(np.uint32), ref.view(np.uint32))   # bitwise, NaN-safe
    np.testing.assert_allclose(fast[2], slow[2], rtol=0, atol=1e-6)
    assert fast[3:7] == slow[3:7]
    assert (fast[7] is None) == (slow[7] is None)
    if fast[7] is not None:
        for mine, theirs in zip(fast[7], slow[7]):
            np.testing.assert_allclose(mine, theirs, rtol=0, atol=1e-6)


# --- files the fast path reads -------------------------------------------------------------
def _fast_cases():
    cases = {f"dtype_{t}": (lambda p, t=t: _write_nifti(p / "a.nii", _data((9, 7, 4), t)))
             for t in ("u1", "i1", "i2", "u2", "i4", "u4", "i8", "u8", "f4", "f8")}
    cases.update({
        "gz_sform_only": lambda p: _write_nifti(p / "a.nii.gz", _data((9, 7, 4), "i2"), _affine(rotation=OBLIQUE), qform=0),
        "qform_only_oblique": lambda p: _write_nifti(p / "a.nii", _data((9, 7, 4), "f4"), _affine(rotation=OBLIQUE), sform=0),
        "both_oblique": lambda p: _write_nifti(p / "a.nii", _data((9, 7, 4), "i2"), _affine(rotation=OBLIQUE), sform=2),
        "qfac_minus_1": lambda p: _write_nifti(p / "a.nii", _data((9, 7, 4), "i2"), _affine(rotation=OBLIQUE, flip=True), sform=0),
        "qfac_zero_means_1": lambda p: _patch(_write_nifti(p / "a.nii", _data((9, 7, 4), "i2"), sform=0), 76, "f", 0.0),
        "big_endian_f4": lambda p: _write_nifti(p / "a.nii", _data((9, 7, 4), "f4"), endian=">"),
        "big_endian_scaled": lambda p: _patch(_write_nifti(p / "a.nii", _data((9, 7, 4), "i2"), endian=">"), 112, "ff", 0.5, -10.0),
        "scaled_int16": lambda p: _patch(_write_nifti(p / "a.nii", _data((9, 7, 4), "i2")), 112, "ff", 2.5, -3.0),
        "scaled_int32": lambda p: _patch(_write_nifti(p / "a.nii", _data((9, 7, 4), "i4")), 112, "ff", 1.7, 0.0),
        "scaled_float32": lambda p: _patch(_write_nifti(p / "a.nii", _data((9, 7, 4), "f4")), 112, "ff", 1.5, 0.25),
        "intercept_only": lambda p: _patch(_write_nifti(p / "a.nii", _data((9, 7, 4), "i4")), 112, "ff", 1.0, 7.0),
        "slope_zero_ignores_intercept": lambda p: _patch(_write_nifti(p / "a.nii", _data((9, 7, 4), "i2")), 112, "ff", 0.0, 5.0),
        "slope_nan": lambda p: _patch(_write_nifti(p / "a.nii", _data((9, 7, 4), "u2")), 112, "ff", float("nan"), 5.0),
        "2d": lambda p: _write_nifti(p / "a.nii.gz", _data((12, 10), "f4")),
        "2d_zero_third_pixdim": lambda p: _patch(_write_nifti(p / "a.nii", _data((12, 10), "f4"), sform=0), 88, "f", 0.0),
        "4d_msec": lambda p: _write_nifti(p / "a.nii.gz", _data((8, 6, 3, 5), "i2"), units=("mm", "msec"), zooms=(1.4, 1.3, 8.0, 35.0)),
        "4d_sec": lambda p: _write_nifti(p / "a.nii", _data((8, 6, 3, 5), "f4"), units=("mm", "sec"), zooms=(1.4, 1.3, 8.0, 0.5)),
        "4d_undefined_unit_code": lambda p: _patch(_write_nifti(p / "a.nii", _data((8, 6, 3, 5), "f4")), 123, "B", 2 + 56),
        "5d_trailing_1": lambda p: _write_nifti(p / "a.nii", _data((8, 6, 3, 5, 1), "f4")),
        "nifti_pair": lambda p: _write_nifti(p / "a.hdr", _data((9, 7, 4), "i2"), image=nib.Nifti1Pair),
        "nifti_pair_by_img": lambda p: _write_nifti(p / "a.hdr", _data((9, 7, 4), "f4"), image=nib.Nifti1Pair).with_suffix(".img"),
        "analyze_centre": lambda p: _write_analyze(p / "a.hdr", _data((9, 7, 4), "f4")),
        "analyze_origin_big_endian": lambda p: _write_analyze(p / "a.hdr", _data((9, 7, 4), "i2"), origin=(4, 3, 2), endian=">"),
        "analyze_scaled": lambda p: _patch(_write_analyze(p / "a.hdr", _data((9, 7, 4), "i2")), 112, "ff", 0.25, 3.0),
        "analyze_nan_intercept_is_0": lambda p: _patch(_write_analyze(p / "a.hdr", _data((9, 7, 4), "u1")), 112, "ff", 2.0, float("nan")),
        "analyze_2d_column": lambda p: _write_analyze(p / "a.hdr", _data((30, 1), "f4"), zooms=(1.0, 1.0)),
    })

    def with_extension(p):
        img = nib.Nifti1Image(_data((9, 7, 4), "i2"), _affine())
        img.header.extensions.append(nib.nifti1.Nifti1Extension("comment", b"written by a test: " + b"x" * 40))
        img.to_filename(str(p / "a.nii"))
        return p / "a.nii"

    cases["comment_extension"] = with_extension
    return cases


FAST_CASES = _fast_cases()


@pytest.mark.parametrize("case", sorted(FAST_CASES))
def test_fast_path_matches_nibabel(tmp_path, case):
    path = FAST_CASES[case](tmp_path)
    assert nifti._read_fast(path) is not None, f"{case}: the fast path declined a common file"
    _assert_same(path)
    header_path = path.with_suffix(".hdr") if path.suffix == ".img" else path
    assert nifti.header_shape(path) == nib.load(str(path)).shape
    assert _nifti_voxels(header_path) == int(np.prod(nib.load(str(path)).shape))


# --- files it leaves to nibabel: same outcome, errors included -------------------------------
def _declined_cases():
    def dicom_extension(p):
        path = FAST_CASES["comment_extension"](p)
        return _patch(path, 352 + 4, "i", 2)   # the extension's code -> DICOM, which nibabel parses

    def gl_cal_scaling(p):
        path = _write_analyze(p / "a.hdr", _data((9, 7, 4), "i2"))
        _patch(path, 112, "f", 0.0)
        _patch(path, 124, "ff", 100.0, -50.0)   # cal_max, cal_min
        return _patch(path, 140, "ii", 32767, -32768)   # glmax, glmin

    def truncated(p):
        path = _write_nifti(p / "a.nii", _data((9, 7, 4), "f4"))
        path.write_bytes(path.read_bytes()[:-40])
        return path

    return {
        "no_forms": lambda p: _write_nifti(p / "a.nii", _data((9, 7, 4), "i2"), sform=0, qform=0),
        "complex64": lambda p: _write_nifti(p / "a.nii", _data((9, 7, 4), "f4").astype(np.complex64)),
        "nifti2": lambda p: _write_nifti(p / "a.nii", _data((9, 7, 4), "i2"), image=nib.Nifti2Image),
        "truncated": truncated,
        "dicom_extension": dicom_extension,
        "vox_offset_infinite": lambda p: _patch(_write_nifti(p / "a.nii", _data((9, 7, 4), "i2")), 108, "f", float("inf")),
        "vox_offset_too_low": lambda p: _patch(_write_nifti(p / "a.nii", _data((9, 7, 4), "i2")), 108, "f", 0.0),
        "undefined_sform_code": lambda p: _patch(_write_nifti(p / "a.nii", _data((9, 7, 4), "i2")), 254, "h", 9),
        "infinite_intercept": lambda p: _patch(_write_nifti(p / "a.nii", _data((9, 7, 4), "i2")), 112, "ff", 2.0, float("inf")),
        "freesurfer_ico7_shape": lambda p: _write_nifti(p / "a.nii", _data((27307, 1, 6), "f4")),
        "analyze_with_mat": lambda p: _write_analyze(p / "a.hdr", _data((9, 7, 4), "f4"), origin=(4, 3, 2), keep_mat=True),
        "analyze_gl_cal_scaling": gl_cal_scaling,
    }


DECLINED_CASES = _declined_cases()


@pytest.mark.parametrize("case", sorted(DECLINED_CASES))
def test_declined_files_keep_nibabels_outcome(tmp_path, case):
    path = DECLINED_CASES[case](tmp_path)
    assert nifti._read_fast(path) is None
    _assert_same(path)


def test_declined_errors_still_name_the_problem(tmp_path):
    path = DECLINED_CASES["complex64"](tmp_path)
    with pytest.raises(CardiacInputError, match="complex-valued"):
        nifti.load_nifti(path)
    (tmp_path / "truncated").mkdir()
    path = DECLINED_CASES["truncated"](tmp_path / "truncated")
    with pytest.raises(CardiacInputError, match="not a readable NIfTI"):
        nifti.load_nifti(path)


def test_corrupted_headers_same_outcome(tmp_path):
    """Random bytes in the header fields the parser reads: whichever path reads them, the outcome
    (values or error) is nibabel's."""
    rng = np.random.default_rng(14)
    fields = [0, 40, 42, 44, 46, 70, 76, 80, 88, 92, 108, 112, 116, 123, 124, 140, 252, 254, 256, 264, 280, 344, 348, 356]
    taken = damaged = 0
    for i in range(80):
        case = ("both_oblique", "4d_msec", "analyze_origin_big_endian", "scaled_int16", "comment_extension")[i % 5]
        folder = tmp_path / str(i)
        folder.mkdir()
        path = FAST_CASES[case](folder)
        header = path.with_suffix(".hdr") if path.suffix == ".img" else path
        raw = bytearray(header.read_bytes())
        for position in rng.choice(fields, size=rng.integers(1, 4)) + rng.integers(0, 4):
            if position < len(raw):   # an Analyze .hdr ends at 348
                raw[position] = rng.integers(0, 256)
        header.write_bytes(bytes(raw))
        if _gzip_crc_fails(path):
            # bytes of a .nii.gz changed: refused as damaged, where nibabel's reader, which never
            # checks the CRC, reads what the changed stream decodes to (probe 57)
            with pytest.raises(CardiacInputError, match="damaged"):
                nifti._read_fast(path)
            damaged += 1
            continue
        taken += nifti._read_fast(path) is not None
        _assert_same(path)
    assert 10 < taken < 80 - damaged   # both paths were exercised


def _gzip_crc_fails(path):
    import gzip
    import zlib

    if not str(path).endswith(".gz"):
        return False
    try:
        gzip.decompress(path.read_bytes())
    except gzip.BadGzipFile as e:
        return str(e).startswith("CRC check failed")
    except (EOFError, OSError, ValueError, zlib.error):
        return False
    return False


# --- the development data --------------------------------------------------------------------
def _shared_files(root):
    acdc = sorted(root.glob("acdc/*/*.nii*"))
    return acdc[::max(1, len(acdc) // 26)][:26] + sorted(root.glob("qperf/*.hdr"))


def test_development_data_fast_and_identical(shared_data):
    files = _shared_files(shared_data)
    assert len(files) >= 20
    before = dict(nifti.FAST_READS)
    for path in files:
        assert nifti._read_fast(path) is not None, f"{path}: the fast path declined it"
        _assert_same(path)
    assert nifti.FAST_READS["fast"] - before["fast"] == len(files)   # each once through load_nifti, fast


def _imports_after(code):
    out = subprocess.run([sys.executable, "-c", code + "\nimport sys; print(sorted(m for m in sys.modules if m.split('.')[0] == 'nibabel'))"],
                         capture_output=True, text=True, check=True)
    return out.stdout.strip().splitlines()[-1]


def test_nibabel_not_imported_for_a_common_file(tmp_path):
    path = FAST_CASES["gz_sform_only"](tmp_path)
    assert _imports_after(f"from CardiacAISegLib.readers.nifti import load_nifti; load_nifti({str(path)!r})") == "[]"
    # and the fallback really is nibabel (so the check above can fail)
    (tmp_path / "nifti2").mkdir()
    path = DECLINED_CASES["nifti2"](tmp_path / "nifti2")
    assert "'nibabel'" in _imports_after(f"from CardiacAISegLib.readers.nifti import load_nifti; load_nifti({str(path)!r})")


def test_nibabel_not_imported_loading_qperf_and_acdc(shared_data):
    for target in (f"{str(shared_data / 'qperf')!r}, series='stress'", repr(str(shared_data / "acdc" / "patient001"))):
        assert _imports_after(f"from CardiacAISegLib.readers import load_study; load_study({target})") == "[]", target
