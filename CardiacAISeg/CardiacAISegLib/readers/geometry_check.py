"""The one place where every reader's image geometry is checked before a Study leaves it.

A volume is voxel count x voxel size, so a geometry that is read wrongly gives a wrong
EDV with nothing to see. The rules (every reader calls ``check_geometry`` last):

- Direction cosines: DICOM writes ImageOrientationPatient with ~6 decimals, so rows and
  columns within 1e-3 of unit length and of orthogonality are taken as they are. Up to 5 %
  off (a writer that rounds to 2 decimals, or a slightly sheared reconstruction) they are
  renormalised / orthogonalised with a warning; beyond that the header is broken and the
  file is refused, since no direction can be trusted.
- Spacing: every voxel size must be a finite positive number of millimetres, in-plane
  0.1-50 mm and slice 0.1-100 mm; outside that it is almost surely metres, micrometres or a
  default, and the file is refused with the value.
- Slice positions (DICOM knows them, ``provenance["slice_positions_mm"]``): a gap (a missing
  slice) or uneven spacing is recoverable: volumes are integrated by the true positions
  (``slice_thicknesses_mm``, used by cine.py) and a warning says where the gap is.

Warnings go to ``study.provenance["warnings"]`` (a list of strings) from where the Analysis
carries them to every output.
"""
import numpy as np

from ..errors import CardiacInputError

IN_PLANE_RANGE_MM = (0.1, 50.0)
# The wider side of the field of view of the 80 ACDC studies spans 320-480 mm, Sunnybrook's
# 350 mm; MR scanners reach 500-550 mm at most. A wider image has pixels larger in the file than
# the scanner's: an image resized with its old header (ACDC upsampled 1.5 times, 555 mm, read
# EDV +132 %, mass +114 %, QC pass; probe 51), or sizes read in a unit they are not in.
MAX_FIELD_OF_VIEW_MM = 550.0
SLICE_RANGE_MM = (0.1, 100.0)
UNIT_TOL, UNIT_REFUSE = 1e-3, 0.05         # | |v| - 1 |
ORTHO_TOL, ORTHO_REFUSE = 1e-3, 0.05       # |cos| between row and column directions (0.06 deg, 2.9 deg)
SLICE_TILT_WARN_COS, SLICE_TILT_REFUSE_COS = 0.9998, 0.5   # slice axis vs plane normal (1.1 deg, 60 deg)
# Slice gaps more than 10 % off the stack's median spacing are integrated by true positions
# (below that, rounding in the position tags would make voxel-count truth inexact for nothing).
UNEVEN_FRACTION = 0.10
GAP_FACTOR = 1.5                            # a gap this much larger than the median: a missing slice


def add_warning(study_or_prov, message):
    """Append ``message`` to provenance["warnings"] once (readers may be re-checked)."""
    prov = study_or_prov if isinstance(study_or_prov, dict) else study_or_prov.provenance
    warnings = prov.setdefault("warnings", [])
    if message not in warnings:
        warnings.append(message)


def _fmt(values):
    return "[" + ", ".join(f"{float(v):.6g}" for v in values) + "]"


def check_spacing_values(path, values, tag):
    """Refuse a header voxel size that is zero, negative or not a number.

    ``tag`` names the header field the user would fix (``PixelSpacing``, ``pixdim[1..3]``,
    ``ElementSpacing``, ...)."""
    values = [float(v) for v in values]
    for v in values:
        if not np.isfinite(v):
            raise CardiacInputError(path, f"{tag} {_fmt(values)} is not a finite number; voxel sizes must be positive millimetres")
        if v <= 0:
            what = "zero" if v == 0 else "negative"
            raise CardiacInputError(path, f"{tag} {_fmt(values)} has a {what} value; voxel sizes must be positive millimetres "
                                          f"(in-plane {IN_PLANE_RANGE_MM[0]:g}-{IN_PLANE_RANGE_MM[1]:g} mm, "
                                          f"slices {SLICE_RANGE_MM[0]:g}-{SLICE_RANGE_MM[1]:g} mm)")
    return values


def check_orientation(path, iop, tag="ImageOrientationPatient"):
    """(row unit vector, column unit vector, problem or None) from six direction cosines.

    Slightly off (rounded cosines): renormalised / orthogonalised, ``problem`` says how, for a
    warning. Badly off: CardiacInputError naming the file and the values."""
    iop = np.asarray(iop, float)
    if iop.size != 6 or not np.all(np.isfinite(iop)):
        raise CardiacInputError(path, f"{tag} {_fmt(iop.ravel())} must be six finite direction cosines")
    row, col = iop[:3], iop[3:]
    norms = np.array([np.linalg.norm(row), np.linalg.norm(col)])
    problems = []
    if np.any(np.abs(norms - 1) > UNIT_REFUSE):
        raise CardiacInputError(path, f"{tag} {_fmt(iop)} is not two unit vectors (lengths {norms[0]:.4f}, {norms[1]:.4f}); "
                                      f"accepted: unit row and column directions within {UNIT_REFUSE:.0%}")
    if np.any(np.abs(norms - 1) > UNIT_TOL):
        problems.append(f"row/column lengths {norms[0]:.4f}/{norms[1]:.4f} renormalised to 1")
    row, col = row / norms[0], col / norms[1]
    cos = float(row @ col)
    if abs(cos) > ORTHO_REFUSE:
        raise CardiacInputError(path, f"{tag} {_fmt(iop)}: row and column directions are not orthogonal "
                                      f"({np.degrees(np.arccos(np.clip(cos, -1, 1))):.1f} deg apart); accepted: within "
                                      f"{np.degrees(np.arcsin(ORTHO_REFUSE)):.1f} deg of 90")
    if abs(cos) > ORTHO_TOL:
        col = col - cos * row          # keep the row direction, the one the pixels are read along
        col = col / np.linalg.norm(col)
        problems.append(f"row and column {np.degrees(np.arccos(np.clip(cos, -1, 1))):.2f} deg apart, made orthogonal")
    return row, col, ("; ".join(problems) or None)


def validate_affine(path, affine, what="image"):
    """Check a 4x4 IJK->RAS: finite, voxel sizes in range, directions not degenerate.

    Returns the list of warnings (slight in-plane skew, tilted slice axis); raises
    CardiacInputError naming ``path`` and the value when the geometry cannot be trusted."""
    m = np.asarray(affine, float)
    if m.shape != (4, 4) or not np.all(np.isfinite(m)):
        raise CardiacInputError(path, f"the {what}'s voxel-to-patient matrix is not finite: {m.tolist()}")
    cols = m[:3, :3]
    spacing = np.linalg.norm(cols, axis=0)
    for axis, name, (lo, hi) in ((0, "column (in-plane)", IN_PLANE_RANGE_MM), (1, "row (in-plane)", IN_PLANE_RANGE_MM),
                                 (2, "slice", SLICE_RANGE_MM)):
        s = float(spacing[axis])
        if not lo <= s <= hi:
            hint = (" (zero: the voxel-to-patient matrix has no step along this axis: a singular or empty matrix "
                    "in the header, e.g. an sform or TransformMatrix with a zero column)" if s == 0
                    else " (metres or micrometres instead of mm?)")
            raise CardiacInputError(path, f"{name} spacing {s:.6g} mm of the {what} is outside the accepted "
                                          f"{lo:g}-{hi:g} mm{hint}")
    unit = cols / spacing
    warnings = []
    cos = float(unit[:, 0] @ unit[:, 1])
    if abs(cos) > ORTHO_REFUSE:
        raise CardiacInputError(path, f"the {what}'s row and column axes are not orthogonal "
                                      f"({np.degrees(np.arccos(np.clip(cos, -1, 1))):.1f} deg apart); accepted: within "
                                      f"{np.degrees(np.arcsin(ORTHO_REFUSE)):.1f} deg of 90")
    if abs(cos) > ORTHO_TOL:
        warnings.append(f"the {what}'s row and column axes are {np.degrees(np.arccos(np.clip(cos, -1, 1))):.2f} deg apart, "
                        "not 90: in-plane distances are approximate")
    normal = np.cross(unit[:, 0], unit[:, 1])
    normal /= np.linalg.norm(normal)
    tilt = abs(float(normal @ unit[:, 2]))
    if tilt < SLICE_TILT_REFUSE_COS:
        raise CardiacInputError(path, f"the {what}'s slice axis lies nearly in the image plane "
                                      f"({np.degrees(np.arccos(tilt)):.0f} deg from its normal): the header's directions are broken")
    if tilt < SLICE_TILT_WARN_COS:
        warnings.append(f"the {what}'s slices are sheared ({np.degrees(np.arccos(tilt)):.1f} deg between the slice axis and "
                        "the plane normal); volumes use the true voxel volume")
    return warnings


def grid_difference(affine, reference):
    """None when two ijk->RAS affines describe one voxel grid (every entry within 1 % of the
    reference's smallest voxel); otherwise which of spacing, direction and origin differ, with
    the values, for a warning. Label maps and frames are then used voxel by voxel."""
    a, b = np.asarray(affine, float), np.asarray(reference, float)
    sa, sb = np.linalg.norm(a[:3, :3], axis=0), np.linalg.norm(b[:3, :3], axis=0)
    if np.allclose(a, b, atol=1e-2 * float(np.min(sb))):
        return None
    parts = []
    if not np.allclose(sa, sb, rtol=1e-3):
        parts.append(f"spacing {np.round(sa, 4).tolist()} vs {np.round(sb, 4).tolist()} mm")
    if not np.allclose(a[:3, :3] / sa, b[:3, :3] / sb, atol=1e-3):
        parts.append("direction")
    if not np.allclose(a[:3, 3], b[:3, 3], atol=1e-2 * float(np.min(sb))):
        parts.append(f"origin {np.round(a[:3, 3], 2).tolist()} vs {np.round(b[:3, 3], 2).tolist()} mm")
    return ", ".join(parts) or "sub-voxel differences"


def onto_grid_by_placement(labels_srs, affine, reference, reference_shape_src):
    """((T, S, R, C) labels on the ``reference`` grid, labelled voxels that fall outside it) when
    every voxel of grid ``affine`` is a voxel of the reference grid (whole-voxel offsets, axes in
    any order or direction), else None. A segmentation Slicer saved cropped to its segments
    (54 x 55 x 10 of a 128 x 128 x 10 image) was refused for its size, though its origin placed
    it exactly (probe 89). None too when half its labelled voxels or more would fall outside the
    image: that is no crop of it (a map kept with 0 of 756 voxels was accepted; review)."""
    a, b = np.asarray(affine, float), np.asarray(reference, float)
    try:
        m = np.linalg.inv(b) @ a            # this grid's voxel (i, j, k) -> reference voxel
    except np.linalg.LinAlgError:
        return None
    perm, shift = np.rint(m[:3, :3]), np.rint(m[:3, 3])
    if not (np.allclose(m[:3, :3], perm, atol=1e-3) and np.allclose(m[:3, 3], shift, atol=1e-2)):
        return None
    if sorted(np.abs(perm).sum(0).tolist()) != [1, 1, 1] or sorted(np.abs(perm).sum(1).tolist()) != [1, 1, 1]:
        return None
    labels = np.asarray(labels_srs)
    if sorted(labels.shape[1:]) == sorted(reference_shape_src):
        # a map of the image's own size whose origin is elsewhere: a header written wrong is the
        # likelier story than a map that overhangs the image (used voxel by voxel, with a warning)
        return None
    t, k, j, i = np.nonzero(labels)
    target = perm.astype(int) @ np.stack([i, j, k]) + shift.astype(int)[:, None]
    n_s, n_r, n_c = reference_shape_src
    inside = ((target[0] >= 0) & (target[0] < n_c) & (target[1] >= 0) & (target[1] < n_r)
              & (target[2] >= 0) & (target[2] < n_s))
    if 2 * int(inside.sum()) <= inside.size:
        return None   # most of the labels would fall off the image: no crop of it (its origin is wrong)
    out = np.zeros((labels.shape[0], n_s, n_r, n_c), labels.dtype)
    out[t[inside], target[2][inside], target[1][inside], target[0][inside]] = labels[t, k, j, i][inside]
    return out, int((~inside).sum())


def onto_grid_by_flips(volume_srs, affine, reference, reference_shape_src):
    """(T, S, R, C) ``volume_srs`` on grid ``affine`` rewritten on the ``reference`` grid when the
    two are one set of voxel centres in another axis order or direction (a label map stored
    flipped or with its axes permuted, its affine saying so): exact, no interpolation. None when
    the grids are not such a relabelling of each other (then only voxel-by-voxel use is left)."""
    a, b = np.asarray(affine, float), np.asarray(reference, float)
    try:
        m = np.linalg.inv(a) @ b            # reference voxel (i, j, k) -> this grid's voxel
    except np.linalg.LinAlgError:
        return None
    perm = np.rint(m[:3, :3])
    shift = np.rint(m[:3, 3])
    if not (np.allclose(m[:3, :3], perm, atol=1e-3) and np.allclose(m[:3, 3], shift, atol=1e-2)):
        return None
    if sorted(np.abs(perm).sum(0).tolist()) != [1, 1, 1] or sorted(np.abs(perm).sum(1).tolist()) != [1, 1, 1]:
        return None
    # (S, R, C) arrays are (k, j, i): index ijk-axis n of a grid is array axis 2 - n
    vol = np.asarray(volume_srs)
    ijk = vol.transpose(0, 3, 2, 1)                      # (T, i, j, k) of this grid
    ref_ijk_shape = tuple(reference_shape_src[::-1])     # (i, j, k) sizes of the reference
    out_axes, flips = [], []
    for n in range(3):                                   # reference axis n comes from this grid's axis src
        src = int(np.flatnonzero(perm[:, n])[0])
        sign = perm[src, n]
        size = ijk.shape[1 + src]
        if size != ref_ijk_shape[n] or (sign > 0 and shift[src] != 0) or (sign < 0 and shift[src] != size - 1):
            return None
        out_axes.append(1 + src)
        flips.append(sign < 0)
    moved = ijk.transpose([0] + out_axes)
    for n, flip in enumerate(flips):
        if flip:
            moved = np.flip(moved, axis=1 + n)
    return np.ascontiguousarray(moved.transpose(0, 3, 2, 1))


def onto_image_grid(labels_srs, affine, reference, reference_shape_src):
    """(labels, note) of a (T, S, R, C) label map on grid ``affine`` for an image on grid
    ``reference``: the same map and no note when the grids agree; reordered exactly
    (``onto_grid_by_flips``) when they are one grid stored in another axis order or direction;
    otherwise the map as it is, used voxel by voxel, with a note saying the overlay needs checking."""
    difference = grid_difference(affine, reference)
    if not difference:
        return labels_srs, None
    reordered = onto_grid_by_flips(labels_srs, affine, reference, reference_shape_src)
    if reordered is not None:
        return reordered, (f"label map stored in another axis order or direction ({difference}): reordered onto the "
                           "image's grid by its world coordinates (exact, no interpolation)")
    placed = onto_grid_by_placement(labels_srs, affine, reference, reference_shape_src)
    if placed is not None:
        labels, lost = placed
        outside = (f"; {lost} labelled voxel(s) lie outside the image and are dropped: check the overlay" if lost else "")
        return labels, (f"label map on a part of the image's grid ({difference}; a segmentation cropped to its segments, "
                        f"as Slicer saves one): placed by its world coordinates (exact, no interpolation){outside}")
    return labels_srs, (f"label map geometry differs from the image's ({difference}); used voxel by voxel on the "
                        "image's grid, so check that the labels overlay the image")


def slice_thicknesses_mm(positions, nominal=None):
    """Per-slice thickness (mm) for integrating volumes by the true slice positions, or None
    when the stack is regular (then the affine's slice spacing is exact).

    Each slice counts half the distance to each neighbour; the outer half of the first and
    last slice is the stack's median spacing. So a regular stack gives every slice the
    spacing, and a missing slice is shared out between its two neighbours (the disc
    summation interpolating the lost slice) instead of vanishing from the volume."""
    if positions is None:
        return None
    p = np.asarray(positions, float)
    if p.ndim != 1 or p.size < 2 or not np.all(np.isfinite(p)):
        return None
    gaps = np.abs(np.diff(p))
    median = float(np.median(gaps)) if nominal is None else float(nominal)
    if median <= 0 or np.max(np.abs(gaps - median)) <= UNEVEN_FRACTION * median:
        return None
    padded = np.concatenate([[median], gaps, [median]])
    return (padded[:-1] + padded[1:]) / 2.0


def slice_gap_warnings(positions):
    """Plain-language warnings for gaps / uneven spacing in a stack's slice positions (mm)."""
    p = np.asarray(positions, float)
    if p.size < 3:
        return []
    gaps = np.diff(p)
    median = float(np.median(np.abs(gaps)))
    if slice_thicknesses_mm(p) is None:
        return []
    out = []
    for k, g in enumerate(gaps):
        if abs(g) > GAP_FACTOR * median:
            missing = int(round(abs(g) / median)) - 1
            out.append(f"slice gap at {p[k]:.1f}-{p[k + 1]:.1f} mm (between slices {k} and {k + 1}: {abs(g):.1f} mm where the "
                       f"stack's spacing is {median:.1f} mm, about {missing} slice(s) missing): volumes integrated by true "
                       "slice positions")
    if not out:
        out.append(f"uneven slice spacing {np.round(gaps, 2).tolist()} mm (median {median:.2f} mm): volumes integrated by "
                   "true slice positions")
    return out


def blank_image_problem(images):
    """A sentence when every pixel has one value (an export that lost its pixel data), or when
    its values wrapped around a signed 16-bit integer (``wrapped_values_problem``), else None."""
    images = np.asarray(images)
    if not images.size:
        return None
    lo, hi = float(images.min()), float(images.max())   # one pass for both checks (run on every re-analysis)
    if lo == hi:
        return f"every pixel of the image is {lo:g}: it holds no image data (a blank or failed export?)"
    return wrapped_values_problem(images, lo, hi)


# Values that did not fit a signed 16-bit integer wrap around: bright blood stored past 32767
# comes back as the most negative values, inside the bright region, so the cavity reads as dark
# and the network draws around it (ACDC 066 scaled past int16: EDV +2.5 %, EF 70.8 for 63.4, mass
# +15 % with QC pass, probe 85). Two signs together (/tmp/s40/wrap2.py, session 40):
# - neighbouring pixels that differ by nearly the whole 16-bit range (over 90 % of 65,536): no
#   image can show that unless its values span the whole int16 range; a wrap makes 29 or more
#   even when only the brightest 0.01 % of ACDC 066 wrapped. A jump over most of the image's own
#   range is no sign: a Gd phantom's blood beside its wall and a map's values beside zero do that;
# - the negative values are few and far below the bulk: the darkest 5 % of pixels (air,
#   background) lie 10-50 % of the range above the minimum after a wrap, within 9 % of it in 200
#   ACDC images as stored, offset, z-scored or cropped, and at it in an image scaled to the whole
#   int16 range (its background is the minimum).
# Where most of the image wrapped (the darkest 5 % are wrapped values), the steps alone tell:
# 0.1 % of neighbouring pairs or more, where an image scaled to the whole 16-bit range has at
# most 0.011 % (ACDC's bright edges beside zero padding). A uint16 wrap (past 65,535, to near
# 0) is not told from an image scaled to the whole uint16 range, so it is left to the QC of
# the result.
WRAP_STEP = 0.9 * 65536.0
WRAP_MIN_JUMPS = 10
WRAP_FLOOR_GAP = 0.05
WRAP_JUMP_SHARE = 1e-3


def wrapped_values_problem(images, lo=None, hi=None):
    """A sentence when an image's values wrapped around a signed 16-bit integer when it was
    stored, else None. ``lo``, ``hi``: the images' extremes, when known already."""
    a = np.asarray(images)
    if a.ndim < 2 or a.size < 64 or a.shape[-1] < 2 or a.shape[-2] < 2:
        return None
    lo, hi = (float(a.min()), float(a.max())) if lo is None or hi is None else (lo, hi)
    if not (np.isfinite(lo) and np.isfinite(hi)) or lo >= 0 or hi - lo < WRAP_STEP:
        return None
    jumps = 0
    for image in a.reshape(-1, *a.shape[-2:]):
        image = image.astype(np.float32, copy=False)
        jumps += int((np.abs(np.diff(image, axis=0)) > WRAP_STEP).sum() + (np.abs(np.diff(image, axis=1)) > WRAP_STEP).sum())
    if jumps < WRAP_MIN_JUMPS:
        return None
    floor = float(np.percentile(a.ravel()[::7], 5))
    gap = (floor - lo) / (hi - lo)
    share = jumps / (2.0 * a.size)
    if gap < WRAP_FLOOR_GAP and share < WRAP_JUMP_SHARE:
        return None
    why = (f"and the darkest 5 % of pixels lie {gap:.0%} of that range above the lowest value" if gap >= WRAP_FLOOR_GAP
           else f"{share:.1%} of all neighbouring pairs")
    return (f"the pixel values wrap around: {jumps} pairs of neighbouring pixels differ by nearly the whole 16-bit range "
            f"({lo:g} to {hi:g}), {why}, as when an image is stored in 16-bit integers it does not fit (the "
            "brightest tissue, the blood, comes back as the most negative values): re-export it without the overflow "
            "(scaled to fit, or as floating point)")


# A lost image - zeros, one value, or noise without anatomy (a failed reconstruction, a receiver
# dropout) - has neighbouring pixels that do not correlate; anatomy makes them correlate. Read on
# 3x3-pixel means: there real images keep 0.75 or more (20 ACDC patients' ED/ES images, 0.50 at a
# blood-pool SNR of 3), where pixel by pixel images at SNR 3-4 fell under the threshold (probe 43:
# 118 of 1,516 ACDC images at SNR 3) and noise zero-filled to twice its matrix, as a
# reconstruction interpolates it, stayed over it (0.38); on the means: noise 0.01, zero-filled
# noise 0.03, bilinearly doubled noise 0.20.
LOST_IMAGE_CORRELATION = 0.3
LOST_IMAGE_BIN = 3


def lost_image_mask(images):
    """(S,) bool of a (S, R, C) stack: True where a slice's image holds no anatomy (one value
    throughout, or noise only)."""
    lost = []
    b = LOST_IMAGE_BIN
    for image in np.asarray(images):
        r, c = (image.shape[0] // b) * b, (image.shape[1] // b) * b
        x = image[:r, :c].astype(np.float64).reshape(r // b, b, c // b, b).mean(axis=(1, 3)) if r and c else image
        x = x - float(x.mean())
        var = float((x * x).mean()) if x.size else 0.0
        if var <= 0 or min(x.shape) < 2:
            lost.append(var <= 0)
            continue
        along = float((x[1:] * x[:-1]).mean()) + float((x[:, 1:] * x[:, :-1]).mean())
        lost.append(along / (2 * var) < LOST_IMAGE_CORRELATION)
    return np.asarray(lost, bool)


# A damaged or misfiled cine image - part of it zeroed (a truncated file), or another slice's
# image in its place (a duplicated file) - still holds anatomy, so lost_image_mask passes it; the
# network segments what it shows and the volume of that frame is wrong (EF 29-38 % for 27.9 % on
# Sunnybrook, QC pass but for one LV_GAP_ES; probe 43, session 24). Outside the heart a
# breath-held cine does not change between frames, so such an image stands out there against
# its slice's other frames. Its misfit is 1 - NCC with the slice's pixelwise temporal median over
# the still body: pixels brighter than MISFIT_BODY_FRACTION of the median image's 99th
# percentile, outside the segmented heart (``heart``), leaving out those whose change over the
# frames is above the body's MISFIT_MOVING_PERCENTILE and MISFIT_DILATION_PX around them. An image
# is misfit where its misfit exceeds its slice's median frame by MISFIT_MIN_EXCESS and by
# MISFIT_SPREAD_FACTOR robust spreads of that excess over the stack, in a stack whose median
# misfit is under MISFIT_STILL_BOUND. Session 24: no image flagged in 199 good stacks
# (Sunnybrook's 20 phases and the MetaImage cine's 30, whole, cut to every 2nd-7th phase and with
# Rician noise at 2-10 % of the 99th percentile; 144 cine phantoms of 6-25 frames, with their
# heart left out);
# 620 of 624 damaged images found (half of it zeroed, or the next slice's or the one after
# next's in its place, at 4 phases on every slice; missed: a band of zeros through the heart of
# Sunnybrook's first slice); with noise at 2-10 % all 20 tried (real stacks judged without a
# heart mask; `python tools/evaluate_damaged_images.py`, after the shift search below).
MISFIT_BODY_FRACTION = 0.2
MISFIT_MOVING_PERCENTILE = 70
MISFIT_DILATION_PX = 3
MISFIT_MIN_STILL_PIXELS = 400
MISFIT_STILL_BOUND = 0.3
MISFIT_MIN_EXCESS = 0.05
MISFIT_SPREAD_FACTOR = 30.0
MISFIT_MIN_FRAMES = 4
MISFIT_SHIFT_PX = 2


def slice_medians(images):
    """(S, R, C) float32: each slice's pixelwise median over the frames of a (T, S, R, C) cine,
    what the misfit and blanked-block checks compare each image with."""
    images = np.asarray(images)
    return np.stack([np.median(images[:, k].astype(np.float32), axis=0) for k in range(images.shape[1])])


def misfit_image_mask(images, heart=None, medians=None):
    """(T, S) bool of a (T, S, R, C) cine: True where an image differs from its slice's other
    frames outside the heart (part of it lost, or another slice's image). ``heart``: (S, R, C)
    bool of the pixels to leave out besides those that move (the segmented heart over all
    frames): where the heart fills most of the body, as in a synthetic phantom, a basal slice it
    leaves at ES otherwise looks misfit. Nothing with under MISFIT_MIN_FRAMES frames, and nothing
    in a frame where over half the slices differ: that is the frame (the cycle's coarse turning
    point, a steady state not yet reached), not an image. ``medians``: the cine's
    ``slice_medians``, when taken already."""
    from scipy import ndimage

    images = np.asarray(images)
    out = np.zeros(images.shape[:2], bool)
    if images.ndim != 4 or images.shape[0] < MISFIT_MIN_FRAMES or min(images.shape[2:]) < 16:
        return out
    n_frames, n_slices = images.shape[:2]
    medians = slice_medians(images) if medians is None else medians
    misfit = np.full((n_frames, n_slices), np.nan)
    for k in range(n_slices):
        stack = images[:, k].astype(np.float32)
        median = medians[k]
        body = ndimage.uniform_filter(median, 5) > MISFIT_BODY_FRACTION * float(np.percentile(median, 99))
        # a pixel's change: its second largest departure from the median over the frames, which
        # one damaged image does not raise but a heart that fills the slice in two frames or more
        # does (a basal slice the base leaves at ES); smoothed, because pixel by pixel noise
        # decides which pixels change most and the dilation then leaves a few hundred of 16,000
        # (Sunnybrook with noise at 3 % of its bright end)
        change = np.partition(np.abs(stack - median[None]), n_frames - 2, axis=0)[n_frames - 2]
        change = ndimage.uniform_filter(change, 7)
        if heart is not None:
            body &= ~heart[k]
        if body.sum() < MISFIT_MIN_STILL_PIXELS:
            continue
        still = body & ~ndimage.binary_dilation(change > np.percentile(change[body], MISFIT_MOVING_PERCENTILE),
                                                iterations=MISFIT_DILATION_PX)
        if still.sum() < MISFIT_MIN_STILL_PIXELS:
            continue
        m = median[still].astype(np.float64)
        m -= m.mean()
        # the best match over shifts of up to MISFIT_SHIFT_PX, on images smoothed by one pixel:
        # an image moved whole by a pixel or two (the slice drifting in its breath-hold) holds
        # its slice's anatomy; unmatched, 0.75 px gave 0.085 (probe 45)
        smooth = ndimage.gaussian_filter(stack, (0, 1, 1))
        pad = MISFIT_SHIFT_PX
        padded = np.pad(smooth, ((0, 0), (pad, pad), (pad, pad)), mode="edge")
        rows, cols = stack.shape[1:]
        best = np.full(n_frames, -1.0)
        for dy in range(-pad, pad + 1):
            for dx in range(-pad, pad + 1):
                x = padded[:, pad + dy: pad + dy + rows, pad + dx: pad + dx + cols][:, still].astype(np.float64)
                x -= x.mean(axis=1, keepdims=True)
                denominator = np.sqrt((x * x).sum(axis=1) * float((m * m).sum()))
                best = np.maximum(best, np.where(denominator > 0, (x @ m) / np.maximum(denominator, 1e-300), 0.0))
        misfit[:, k] = 1.0 - best
    judged = ~np.isnan(misfit).all(axis=0)
    if not judged.any() or float(np.nanmedian(misfit)) > MISFIT_STILL_BOUND:
        return out
    excess = misfit[:, judged] - np.median(misfit[:, judged], axis=0, keepdims=True)
    spread = 1.4826 * float(np.median(np.abs(excess - np.median(excess))))
    out[:, judged] = (excess > MISFIT_MIN_EXCESS) & (excess > MISFIT_SPREAD_FACTOR * spread)
    out[out.sum(axis=1) > n_slices / 2] = False
    return out


# A block of one value at least this many pixels on a side, where the slice's other frames hold
# tissue: part of an image lost inside the heart, which the misfit check above leaves out (a
# 30-pixel block of zeros on the LV at ES read EF 38 % for 28 % with QC pass, probe 45). Noise
# makes neighbouring pixels of acquired tissue differ; 9 pixels is wider than a myocardial wall,
# so a wall clipped to black in a windowed export is no block. Session 25
# (tools/evaluate_blanked_blocks.py): no image flagged in 492 real stacks raw, windowed to 8 bits
# or quantised; 268 of 270 blocks and bands found.
BLANK_PATCH_SIDE_PX = 9
BLANK_BAND_PX = 5
BLANK_BAND_LENGTH_PX = 25
BLANK_TWO_FRAME_MARGIN_PX = 4
BLANK_TISSUE_FRACTION = 0.1   # of the slice's 99th percentile: dark myocardium, not lung or air


def _flat(image):
    """Pixels equal to a neighbour along the rows and one along the columns (inside a region of
    one value, its edges included)."""
    down = np.zeros(image.shape, bool)
    down[:-1] = image[:-1] == image[1:]
    right = np.zeros(image.shape, bool)
    right[:, :-1] = image[:, :-1] == image[:, 1:]
    up = np.zeros(image.shape, bool)
    up[1:] = down[:-1]
    left = np.zeros(image.shape, bool)
    left[:, 1:] = right[:, :-1]
    return (down | up) & (right | left)


def blanked_patch_mask(images, side_px=BLANK_PATCH_SIDE_PX, medians=None):
    """(T, S) bool of a (T, S, R, C) cine: True where an image holds a square block of
    ``side_px`` pixels or more, or a band of BLANK_BAND_PX by BLANK_BAND_LENGTH_PX, at one value
    (not the image's highest) where its slice's median over the frames holds tissue that varies
    (acquired, not a synthetic flat region). Nothing with under 2 frames. ``medians``: the
    cine's ``slice_medians``, when taken already."""
    from scipy import ndimage

    images = np.asarray(images)
    out = np.zeros(images.shape[:2], bool)
    if images.ndim != 4 or images.shape[0] < 2 or min(images.shape[2:]) < side_px:
        return out
    # a square, or a band BLANK_BAND_PX wide and BLANK_BAND_LENGTH_PX long either way (a few
    # rows zeroed across the LV: ESV -48 % with QC pass, probe 47). Bands need 3 frames: with two,
    # the "median" is their mean, and a wall clipped to black in a windowed export at ES where
    # the ED cavity was bright made bands in 4 of 320 aggressively windowed ACDC pairs. With ED
    # and ES alone the square is BLANK_TWO_FRAME_MARGIN_PX wider, for the same reason (3 of those
    # pairs at 9 pixels)
    medians = slice_medians(images) if medians is None else medians
    side = side_px if images.shape[0] >= 3 else side_px + BLANK_TWO_FRAME_MARGIN_PX
    shapes = [np.ones((side, side), bool)]
    if images.shape[0] >= 3:
        shapes += [np.ones((BLANK_BAND_PX, BLANK_BAND_LENGTH_PX), bool), np.ones((BLANK_BAND_LENGTH_PX, BLANK_BAND_PX), bool)]
    for k in range(images.shape[1]):
        stack = images[:, k]
        median = medians[k]
        tissue = ndimage.uniform_filter(median, 5) > BLANK_TISSUE_FRACTION * float(np.percentile(median, 99))
        tissue &= ~_flat(median)
        if tissue.sum() < side_px * side_px:
            continue
        for t in range(images.shape[0]):
            # any value but the image's highest: bright blood clipped by a windowed export is
            # flat at the top, and a lost part is zeros or a filler of one value
            block = _flat(stack[t]) & tissue & (stack[t] < stack[t].max())
            if block.sum() >= BLANK_BAND_PX * BLANK_BAND_PX and any(ndimage.binary_erosion(block, shape).any()
                                                                   for shape in shapes):
                out[t, k] = True
    return out


def check_not_blank(path, images):
    """Refuse a blank image where the numbers would come from it (perfusion curves)."""
    problem = blank_image_problem(images)
    if problem:
        raise CardiacInputError(path, problem)


# In a cine or perfusion series the images at one slice position hardly change from frame to
# frame outside the heart, while neighbouring slices 5-20 mm apart show other anatomy: median
# normalised cross-correlation 0.95-0.998 between consecutive frames against 0.43-0.76 between
# neighbouring slices (Sunnybrook, the MetaImage cine, 12 ACDC patients' ED/ES). A file whose
# last two axes hold (time, slices) instead of (slices, time) shows the reverse. That needs
# anatomy outside the heart in view: on a tight crop (the cine phantom's 102 mm field: 0.77
# between its 6 frames, 0.94 between slices) the beating heart fills the image, so fields
# under SWAPPED_AXES_MIN_FOV_MM are not judged.
SWAPPED_AXES_MARGIN = 0.1
SWAPPED_AXES_MIN_FOV_MM = 200.0


def _ncc(a, b):
    a = a - a.mean()
    b = b - b.mean()
    d = float(np.sqrt((a * a).sum() * (b * b).sum()))
    return float((a * b).sum()) / d if d > 0 else 1.0


def _median_similarity(images, pairs):
    return float(np.median([_ncc(images[i], images[j]) for i, j in pairs]))


def swapped_axes_problem(images, most_pairs=48):
    """A sentence when a (T, S, R, C) series' frames differ more from one to the next than its
    slices do from their neighbours (slice and time axes swapped in the file), else None."""
    n_t, n_s = images.shape[:2]
    if n_t < 2 or n_s < 2:
        return None
    small = np.asarray(images[:, :, ::2, ::2], np.float64)   # similarity needs no full resolution
    temporal = [((t, k), (t + 1, k)) for t in range(n_t - 1) for k in range(n_s)]
    spatial = [((t, k), (t, k + 1)) for t in range(n_t) for k in range(n_s - 1)]
    pick = lambda pairs: [pairs[i] for i in np.unique(np.linspace(0, len(pairs) - 1, most_pairs).astype(int))]  # noqa: E731
    between_frames = _median_similarity(small, pick(temporal))
    between_slices = _median_similarity(small, pick(spatial))
    if between_slices - between_frames <= SWAPPED_AXES_MARGIN:
        return None
    return (f"the slice and time axes look swapped: consecutive frames at one slice position differ more (median "
            f"similarity {between_frames:.2f}) than neighbouring slices of one frame ({between_slices:.2f}), where a "
            f"series keeps its anatomy from frame to frame; the file holds its {n_s} frames as slices and its {n_t} "
            "slices as frames? Write it as (x, y, slices, time)")


# Within one breath-held cine a slice keeps its anatomy from ED to ES: normalised cross-
# correlation 0.92-0.99 with itself against 0.49-0.72 with its neighbours (ACDC patient064), and
# every slice of the 80 ACDC studies, Sunnybrook and the MetaImage cine matches its own best. A
# neighbour counts only when it matches by OFFSET_MARGIN more than the slice's own image: the
# cine phantom, whose synthetic body changes from ED to ES (0.58-0.84 with itself), has
# neighbours a few hundredths ahead.
OFFSET_MARGIN = 0.1


def slice_offset_between(frame_a, frame_b):
    """(offset, slices voting for it, slices judged) between two frames' (S, R, C) images: the
    slice step d (-1, 0 or +1) at which frame b's slice k + d looks most like frame a's slice k
    (a neighbour by OFFSET_MARGIN), by most of the slices. An offset says that one frame's volume
    was written one slice off the other's."""
    a = np.asarray(frame_a, np.float64)[:, ::2, ::2]
    b = np.asarray(frame_b, np.float64)[:, ::2, ::2]
    n = a.shape[0]
    votes = []
    for k in range(n):
        if a[k].min() == a[k].max():   # a blank slice matches nothing
            continue
        scores = {d: _ncc(a[k], b[k + d]) for d in (-1, 0, 1) if 0 <= k + d < n and b[k + d].min() < b[k + d].max()}
        if len(scores) > 1:
            best = max(scores, key=scores.get)
            votes.append(best if best == 0 or scores[best] - scores.get(0, -1.0) >= OFFSET_MARGIN else 0)
    if not votes:
        return 0, 0, 0
    values, counts = np.unique(votes, return_counts=True)
    best = int(np.argmax(counts))
    return int(values[best]), int(counts[best]), len(votes)


def refuse_swapped_axes(path, images, ijk_to_ras):
    """CardiacInputError naming ``path`` for a 4D file whose slice and time axes look swapped
    (``swapped_axes_problem``): every volume, EF and MBF from it would be of the wrong images.
    Fields of view under SWAPPED_AXES_MIN_FOV_MM (crops around the heart) are not judged."""
    # a header's impossible voxel size is what is wrong, not the axes: 60 mm pixels read as a
    # field of view some metres wide were called "axes swapped" (probe 57)
    validate_affine(path, ijk_to_ras)
    m = np.asarray(ijk_to_ras, float)
    rows, cols = np.asarray(images).shape[2:]
    fov_mm = min(rows * float(np.linalg.norm(m[:3, 1])), cols * float(np.linalg.norm(m[:3, 0])))
    if fov_mm < SWAPPED_AXES_MIN_FOV_MM:
        return
    problem = swapped_axes_problem(images)
    if problem:
        raise CardiacInputError(path, problem)


def check_geometry(study, path=None):
    """Validate a reader's Study (see the module docstring); warnings into its provenance.

    Returns the study. Raises CardiacInputError naming ``path`` (default: the study's source)."""
    path = path or study.source or study.name
    prov = study.provenance
    blank = blank_image_problem(study.images)
    if blank:   # given label maps still give volumes, but of an image nobody can check them on
        add_warning(prov, f"{blank}; measures come from the label maps alone")
    for w in validate_affine(path, study.ijk_to_ras):
        add_warning(prov, w)
    positions = prov.get("slice_positions_mm")
    if positions is not None and len(positions) == study.n_slices:
        for w in slice_gap_warnings(positions):
            add_warning(prov, w)
    prov.setdefault("warnings", [])
    return study
