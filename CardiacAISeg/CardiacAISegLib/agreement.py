"""Agreement between an automatic (A) and a manual (M) segmentation (docs/algorithms.md section 6).

Overlap: Dice = 2|A n M| / (|A| + |M|), FP = |A \\ M| / |A|, FN = |M \\ A| / |M|,
precision = |A n M| / |A|, recall = |A n M| / |M|.

Boundaries are compared **in-plane, slice by slice** (2D distance transforms with the
(row, col) pixel spacing), as contours are drawn and reported in cardiac MR: with 8-10 mm
slices a 3D distance would be dominated by the slice spacing. Boundary pixels are mask
pixels with a 4-neighbour outside. Mean boundary error = 1/2 [mean d(dA -> dM) + mean
d(dM -> dA)] pooled over all slices where both masks are present; Hausdorff = the largest
distance either way. Slices where only one mask is present have no in-plane counterpart:
they are listed in ``unmatched_slices`` and left out of the distances (and show up in
Dice/FN/FP instead).

Empty masks: the scalar helpers (``dice``, ``boundary_distances_mm``, ``angle_error_deg``,
``bland_altman``) raise ``CardiacInputError`` naming the empty input; the per-structure
summaries (``overlap_metrics``, ``segmentation_agreement``) return NaN for each undefined
value and say why in ``undefined`` ({metric: reason}), so one missing structure does not
hide the others in a report.
"""
import numpy as np
from scipy import ndimage

from .errors import CardiacInputError
from .geometry import _epicardium, _spacing_rc
from .labels import LV, MYO, RV

_CROSS = ndimage.generate_binary_structure(2, 1)
_NAN = float("nan")


def _pair(auto, manual):
    a, m = np.asarray(auto).astype(bool), np.asarray(manual).astype(bool)
    if a.shape != m.shape:
        raise CardiacInputError("masks", f"automatic mask shape {a.shape} differs from manual {m.shape}")
    return a, m


def overlap_metrics(auto, manual):
    """{'dice', 'fp', 'fn', 'precision', 'recall', 'undefined'} of two boolean masks."""
    a, m = _pair(auto, manual)
    na, nm, inter = int(a.sum()), int(m.sum()), int(np.count_nonzero(a & m))
    out, why = {}, {}
    if na + nm:
        out["dice"] = 2.0 * inter / (na + nm)
    else:
        out["dice"], why["dice"] = _NAN, "both masks are empty"
    if na:
        out["precision"] = inter / na
        out["fp"] = (na - inter) / na
    else:
        out["precision"] = out["fp"] = _NAN
        why["precision"] = why["fp"] = "automatic mask is empty"
    if nm:
        out["recall"] = inter / nm
        out["fn"] = (nm - inter) / nm
    else:
        out["recall"] = out["fn"] = _NAN
        why["recall"] = why["fn"] = "manual mask is empty"
    out["undefined"] = why
    return out


def dice(auto, manual):
    """Dice coefficient; CardiacInputError when both masks are empty (undefined)."""
    a, m = _pair(auto, manual)
    total = int(a.sum()) + int(m.sum())
    if not total:
        raise CardiacInputError("masks", "both masks are empty: Dice is undefined")
    return 2.0 * np.count_nonzero(a & m) / total


def _boundary(mask):
    return mask & ~ndimage.binary_erosion(mask, _CROSS, border_value=0)


def _directed(src, dst, sampling):
    """Distances (mm) from every boundary pixel of ``src`` to the boundary of ``dst``."""
    bs, bd = _boundary(src), _boundary(dst)
    # Crop to both boundaries (+1 px) so the distance transform stays small and exact.
    rr, cc = np.nonzero(bs | bd)
    r0, r1, c0, c1 = rr.min(), rr.max() + 2, cc.min(), cc.max() + 2
    dist = ndimage.distance_transform_edt(~bd[r0:r1, c0:c1], sampling=sampling)
    return dist[bs[r0:r1, c0:c1]]


def boundary_distances_mm(auto, manual, spacing):
    """{'mean_mm', 'hausdorff_mm', 'slices', 'unmatched_slices'} for 2D (R, C) or 3D (S, R, C) masks.

    ``spacing``: (row, col) mm, or Study.spacing (col, row, slice). Raises
    CardiacInputError when no slice has both masks.
    """
    a, m = _pair(auto, manual)
    if a.ndim == 2:
        a, m = a[None], m[None]
    if a.ndim != 3:
        raise CardiacInputError("masks", f"expected 2D or 3D masks, got {a.ndim} dimensions")
    sampling = _spacing_rc(spacing)
    to_m, to_a, used, unmatched = [], [], [], []
    for k in range(a.shape[0]):
        ha, hm = a[k].any(), m[k].any()
        if ha and hm:
            to_m.append(_directed(a[k], m[k], sampling))
            to_a.append(_directed(m[k], a[k], sampling))
            used.append(k)
        elif ha or hm:
            unmatched.append(k)
    if not used:
        if not a.any() or not m.any():
            empty = "automatic and manual masks are" if not (a.any() or m.any()) else \
                "automatic mask is" if not a.any() else "manual mask is"
            raise CardiacInputError("masks", f"boundary distance undefined: {empty} empty")
        raise CardiacInputError("masks", f"boundary distance undefined: no slice has both masks "
                                         f"(slices with only one: {unmatched})")
    d_am, d_ma = np.concatenate(to_m), np.concatenate(to_a)
    return {"mean_mm": 0.5 * (float(d_am.mean()) + float(d_ma.mean())),
            "hausdorff_mm": float(max(d_am.max(), d_ma.max())),
            "slices": used, "unmatched_slices": unmatched}


def _boundary_or_nan(auto, manual, spacing):
    try:
        return boundary_distances_mm(auto, manual, spacing), None
    except CardiacInputError as e:
        return {"mean_mm": _NAN, "hausdorff_mm": _NAN, "slices": [], "unmatched_slices": []}, e.problem


def _epi_stack(lab):
    lab = np.asarray(lab)
    if lab.ndim == 2:
        return _epicardium(lab)
    return np.stack([_epicardium(s) for s in lab])


def segmentation_agreement(auto_labels, manual_labels, spacing):
    """Per structure overlap (lv, myo, rv) and boundary errors (endo, epi, rv) of two label maps.

    Returns {'lv': {...overlap, mean_mm, hausdorff_mm}, 'myo': {...}, 'rv': {...},
    'endo': {mean_mm, hausdorff_mm, ...}, 'epi': {...}}; undefined values are NaN with the
    reason in each entry's 'undefined'.
    """
    a, m = np.asarray(auto_labels), np.asarray(manual_labels)
    if a.shape != m.shape:
        raise CardiacInputError("labels", f"automatic label map shape {a.shape} differs from manual {m.shape}")
    out = {}
    for name, value in (("lv", LV), ("myo", MYO), ("rv", RV)):
        res = overlap_metrics(a == value, m == value)
        b, why = _boundary_or_nan(a == value, m == value, spacing)
        res.update(mean_mm=b["mean_mm"], hausdorff_mm=b["hausdorff_mm"])
        if why:
            res["undefined"].update(mean_mm=why, hausdorff_mm=why)
        out[name] = res
    for name, ma, mm in (("endo", a == LV, m == LV), ("epi", _epi_stack(a), _epi_stack(m))):
        b, why = _boundary_or_nan(ma, mm, spacing)
        b["undefined"] = {"mean_mm": why, "hausdorff_mm": why} if why else {}
        out[name] = b
    return out


def angle_error_deg(u_auto, u_manual):
    """arccos(u_auto . u_manual) in degrees for two direction vectors (normalised here)."""
    u, v = np.asarray(u_auto, float).ravel(), np.asarray(u_manual, float).ravel()
    if u.shape != v.shape:
        raise CardiacInputError("insertion points", f"direction vectors differ in length: {u.size} vs {v.size}")
    nu, nv = np.linalg.norm(u), np.linalg.norm(v)
    if nu == 0 or nv == 0 or not np.isfinite(nu * nv):
        raise CardiacInputError("insertion points", "a direction is zero or not finite (point at the LV centre?)")
    return float(np.degrees(np.arccos(np.clip(np.dot(u, v) / (nu * nv), -1.0, 1.0))))


def insertion_angle_error_deg(point_auto, centre_auto, point_manual, centre_manual=None):
    """Angle between the centre -> insertion point directions (RAS or mm coordinates)."""
    centre_manual = centre_auto if centre_manual is None else centre_manual
    return angle_error_deg(np.subtract(point_auto, centre_auto), np.subtract(point_manual, centre_manual))


def bland_altman(auto_values, manual_values):
    """{'bias', 'sd', 'lower', 'upper', 'n'}: d = auto - manual, limits bias +/- 1.96 SD.

    Pairs with a NaN are dropped; fewer than 2 complete pairs raise CardiacInputError.
    """
    a, m = np.asarray(auto_values, float).ravel(), np.asarray(manual_values, float).ravel()
    if a.shape != m.shape:
        raise CardiacInputError("measurements", f"{a.size} automatic values vs {m.size} manual values")
    ok = np.isfinite(a) & np.isfinite(m)
    if ok.sum() < 2:
        raise CardiacInputError("measurements", f"Bland-Altman needs at least 2 complete pairs, got {int(ok.sum())}")
    d = a[ok] - m[ok]
    bias, sd = float(d.mean()), float(d.std(ddof=1))
    return {"bias": bias, "sd": sd, "lower": bias - 1.96 * sd, "upper": bias + 1.96 * sd, "n": int(ok.sum())}
