"""Sunnybrook manual contours -> label maps on a DICOM Study.

Files ``IM-0001-NNNN-icontour-manual.txt`` (endocardium) and ``-ocontour-`` (epicardium) hold
"x y" pixel coordinates (x = column, y = row, pixel centres at integers: the points lie halfway
between pixel centres, as a marching-squares outline does) of the image with InstanceNumber NNNN.
"""
import re
from pathlib import Path

import numpy as np

from ..errors import CardiacInputError
from ..labels import LV, MYO

_CONTOUR_RE = re.compile(r"^IM-\d+-(?P<inst>\d+)-(?P<which>[io])contour-manual\.txt$", re.IGNORECASE)


def contour_files(folder):
    """{(instance, 'i'|'o'): path} for every Sunnybrook contour file under ``folder``."""
    out = {}
    for f in Path(folder).rglob("*contour-manual.txt"):
        m = _CONTOUR_RE.match(f.name)
        if m:
            out[(int(m.group("inst")), m.group("which").lower())] = f
    return out


def is_contour_folder(path):
    path = Path(path)
    return path.is_dir() and bool(contour_files(path))


def read_contour(path):
    """(N, 2) float array of x (column), y (row)."""
    try:
        pts = np.loadtxt(path, dtype=float, ndmin=2)
    except (OSError, ValueError) as e:
        raise CardiacInputError(path, f"not a contour file of 'x y' lines ({e})")
    if pts.shape[1] != 2 or len(pts) < 3:
        raise CardiacInputError(path, f"expected at least 3 'x y' points, got shape {pts.shape}")
    if not np.all(np.isfinite(pts)):
        raise CardiacInputError(path, "contains NaN or infinite coordinates")
    return pts


def polygon_mask(points, shape):
    """Boolean (rows, cols) mask of pixel centres inside the polygon (even-odd rule)."""
    rows, cols = shape
    x, y = points[:, 0], points[:, 1]
    r0, r1 = max(int(np.floor(y.min())), 0), min(int(np.ceil(y.max())) + 1, rows)
    c0, c1 = max(int(np.floor(x.min())), 0), min(int(np.ceil(x.max())) + 1, cols)
    mask = np.zeros(shape, bool)
    if r0 >= r1 or c0 >= c1:
        return mask
    yy, xx = np.mgrid[r0:r1, c0:c1].astype(float)
    inside = np.zeros(yy.shape, bool)
    xj, yj = np.roll(x, 1), np.roll(y, 1)
    for xa, ya, xb, yb in zip(x, y, xj, yj):
        if ya == yb:
            continue
        crosses = (ya > yy) != (yb > yy)
        x_at = xa + (yy - ya) * (xb - xa) / (yb - ya)
        inside ^= crosses & (xx < x_at)
    mask[r0:r1, c0:c1] = inside
    return mask


def sunnybrook_labels(folder, study):
    """({frame: (S, R, C) uint8}, info) from the contours in ``folder`` for a DICOM ``study``.

    info: ``contour_slices`` {frame: [k, ...]}, ``unlabelled_slices`` {frame: [k, ...]},
    ``endo``/``epi`` {frame: [k, ...]}, ``ed_frame``/``es_frame`` (or None), ``warnings``.
    """
    folder = Path(folder)
    files = contour_files(folder)
    if not files:
        raise CardiacInputError(folder, "no Sunnybrook contour files (IM-....-NNNN-icontour-manual.txt) here")
    imap = study.provenance.get("instance_map")
    # read from DICOM, every number carried by several images (one series per slice, numbering
    # restarting in each): the map is empty, and "no map" said the study was not DICOM (probe 26)
    if not imap and "ambiguous_instances" not in study.provenance:
        raise CardiacInputError(study.source or folder, "the study has no DICOM InstanceNumber map; Sunnybrook contours need a study read from DICOM")
    imap = imap or {}
    shape = study.images.shape[2:]
    masks = {}  # (t, k) -> {'i': mask, 'o': mask}
    for (inst, which), f in sorted(files.items()):
        if inst not in imap:
            if inst in study.provenance.get("ambiguous_instances", ()):
                raise CardiacInputError(f, f"refers to InstanceNumber {inst}, which several images of the DICOM series "
                                           "carry (numbering restarts per series): the contour's image is ambiguous")
            restart = study.provenance.get("ambiguous_instances") or ()
            hint = (f"; the series' InstanceNumbers restart ({min(restart)}-{max(restart)} in each of its per-slice series), "
                    "where Sunnybrook contours name images by one numbering through the study: give the study as it "
                    "was exported with the contours" if restart else "")
            raise CardiacInputError(f, f"refers to InstanceNumber {inst}, which is not in the DICOM series{hint}")
        t, k = imap[inst]
        points = read_contour(f)
        rows_reversed, columns_reversed = study.provenance.get("reversed_instances", {}).get(inst, (False, False))
        if rows_reversed or columns_reversed:
            # the image stored rotated 180° or mirrored was put back onto the stack's grid by
            # reversing its pixel rows / columns: its contour, drawn on the pixels as stored, goes
            # with them. The points are turned, not the mask: polygon_mask settles pixel centres on
            # the outline one way, and a mask turned afterwards would have them settled the other
            # way, edge pixels apart from the same contour on the slice stored untouched
            points = points.copy()
            if columns_reversed:
                points[:, 0] = (shape[1] - 1) - points[:, 0]
            if rows_reversed:
                points[:, 1] = (shape[0] - 1) - points[:, 1]
        masks.setdefault((int(t), int(k)), {})[which] = polygon_mask(points, shape)

    labels, endo, epi, warn = {}, {}, {}, []
    for (t, k), m in sorted(masks.items()):
        lab = labels.setdefault(t, np.zeros(study.images.shape[1:], np.uint8))
        if "o" in m:
            if "i" not in m:
                warn.append(f"frame {t} slice {k}: epicardium without endocardium, not labelled")
                continue
            lab[k][m["o"] & ~m["i"]] = MYO
            epi.setdefault(t, []).append(k)
        if "i" in m:
            lab[k][m["i"]] = LV
            endo.setdefault(t, []).append(k)
    contour_slices = {t: sorted(set(endo.get(t, [])) | set(epi.get(t, []))) for t in labels}
    unlabelled = {t: [k for k in range(study.n_slices) if k not in ks] for t, ks in contour_slices.items()}
    ed = max(epi, key=lambda t: len(epi[t])) if epi else None
    es_candidates = [t for t in endo if t != ed]
    es = max(es_candidates, key=lambda t: len(endo[t])) if es_candidates else None
    info = {"contour_slices": contour_slices, "unlabelled_slices": unlabelled, "endo": endo, "epi": epi,
            "ed_frame": ed, "es_frame": es, "warnings": warn, "files": [str(f) for f in files.values()]}
    return labels, info


def attach_sunnybrook_contours(study, folder):
    """Set study.labels, provenance['contour_slices'] and ED/ES (when the contours tell them)."""
    labels, info = sunnybrook_labels(folder, study)
    study.labels = labels
    study.provenance["contour_slices"] = info["contour_slices"]
    study.provenance["unlabelled_slices"] = info["unlabelled_slices"]
    study.provenance["contours"] = {"folder": str(folder), "warnings": info["warnings"],
                                    "endo_slices": info["endo"], "epi_slices": info["epi"]}
    if info["ed_frame"] is not None:
        study.ed_frame = info["ed_frame"]
    if info["es_frame"] is not None:
        study.es_frame = info["es_frame"]
    if info["ed_frame"] is not None or info["es_frame"] is not None:
        # which phases the contours give: said when a network's labels are measured at them
        study.provenance["ed_es_from"] = {"by": f"the contours in {Path(folder).name}", "ed": info["ed_frame"] is not None,
                                          "es": info["es_frame"] is not None}
    return study
