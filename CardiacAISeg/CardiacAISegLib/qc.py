"""Plausibility checks of a result: a number outside physiology is flagged, never passed silently.

Every check has a stable code (for scripts, cohort tables and ``--strict``), a severity and a
plain-language message. ``review`` flags make the overall status ``review``: the result may be
right, but a person should look before using it. ``info`` flags say how a number was made
(e.g. an AIF taken from the LV blood pool) and leave the status at ``pass``.

Ranges are deliberately wide - adult values from the SCMR reference ranges (Kawel-Boehm et al.
2020) widened to include disease (dilated, hypertrophied, failing hearts) - so that a flag
means "implausible", not "abnormal". They live in ``RANGES`` so a site can see and change them.
"""
import zlib

import numpy as np

from .labels import LV, MYO, RV
from .perfusion.bolus import AIF_PLATEAU_FRACTION, CEILING_TOLERANCE, clipped_peak
from .readers.geometry_check import MAX_FIELD_OF_VIEW_MM
from .study import PERFUSION

REVIEW, INFO = "review", "info"

RANGES = {
    "lv_edv_ml": (40.0, 500.0),
    "lv_esv_ml": (5.0, 400.0),
    "lv_ef_pct": (5.0, 85.0),
    "lv_mass_g": (30.0, 400.0),
    "rv_edv_ml": (40.0, 500.0),
    "rv_ef_pct": (5.0, 85.0),
    # DCM hearts reach RV/LV 0.36 and RV disease 3.6 in ACDC's manual labels: only a
    # missing or mislabelled ventricle falls outside this
    "rv_lv_edv_ratio": (0.2, 4.0),
    "mbf_ml_min_g": (0.2, 8.0),
    "mpr": (0.8, 7.0),
    "aif_peak_gd_mmol_l": (1.0, 30.0),
}
# The fit's F bound is 0.3 /s (17 mL/min/g): values there are the bound, not a measurement.
MIN_SLICES_FOR_VOLUME = 3
# The LV spans 50-110 mm of short-axis slices at ED in the 80 ACDC patients' expert labels
# (DCM included); segmented over a much longer stretch the "stack" is something else: frames
# concatenated as slices, a wrong slice spacing, or the atria and aorta labelled as LV.
MAX_LV_LENGTH_MM = 160.0


# A short-axis stack that stops short of the base or the apex: the LV reaches the end slice of
# the stack with at least END_AREA_FRACTION of its largest blood-pool area (the apex never does:
# 0.86 at most in 80 ACDC patients, 0.29 at the 90th percentile) and is either that wide at both
# ends, or short for its width: ED extent along the slices over the diameter of its largest
# (pool + wall) cross-section under MIN_LENGTH_TO_WIDTH (0.84 the least of the 80 ACDC patients'
# expert ED labels). On those labels this flags no intact stack, 20 of 80 with the 2 basal slices
# removed (EDV about -30 %), 46 with 3, and 56 with the 2 apical slices removed (at 0.85: 1
# intact, 32, 60, 60; session 17). A basal cut is often not told from a short, wide ventricle.
# Systole adds a cue: the base moves towards the apex, so at ES a true basal slice mostly holds
# less heart (LV and myocardium) than the largest ES cross-section (median 0.78 in those 80 expert
# label pairs, none of the slices in 10 %), while a slice the cut left at the end of the stack
# holds all of it. An end slice with at least ES_END_HEART_FRACTION of it and a ratio under
# MIN_LENGTH_TO_WIDTH_WITH_ES is cut too (session 27, 2 basal slices removed: 28 of 80 flagged on
# the expert labels for 19 before, 33 of 81 on the shipped network's for 26; 3 removed: 58 for 45,
# 63 for 51; intact: 0 of 80, and 1 of 81 with the network's labels, ACDC patient041, ratio 0.84).
END_AREA_FRACTION = 0.5
MIN_LENGTH_TO_WIDTH = 0.8
ES_END_HEART_FRACTION = 0.95
MIN_LENGTH_TO_WIDTH_WITH_ES = 0.85


# The same ratio has an upper end: 0.84-1.51 on the shipped network's ED labels of the 80 ACDC
# patients and 1.35-1.47 on Sunnybrook and the MetaImage cine (session 27). A ventricle over
# MAX_LENGTH_TO_WIDTH is one whose slices are further apart in the file than in the scanner: a
# 5 mm stack written as 10 mm read its volumes and mass twice over with QC pass (probe 51).
MAX_LENGTH_TO_WIDTH = 2.0


def lv_length_and_width(label_volume, spacing):
    """(length, width) mm of the LV in one frame's labels: the extent of its slices with LV or
    myocardium along the stack, and the diameter of a disc of its largest such cross-section."""
    heart = np.isin(np.asarray(label_volume), (LV, MYO)).sum(axis=(1, 2)).astype(float)
    on = np.nonzero(heart > 0)[0]
    if on.size == 0:
        return 0.0, 0.0
    length = (int(on[-1]) - int(on[0]) + 1) * float(spacing[2])
    return length, 2.0 * float(np.sqrt(heart.max() * float(spacing[0]) * float(spacing[1]) / np.pi))


def incomplete_coverage(label_volume, spacing, label_es=None):
    """(message, length/width) when the LV labels of one frame (ED) look cut off by the end of the
    stack (see END_AREA_FRACTION), else None. ``spacing``: (column, row, slice) mm; ``label_es``:
    the same stack at ES, for the systolic cue (ES_END_HEART_FRACTION)."""
    lab = np.asarray(label_volume)
    pool = (lab == LV).sum(axis=(1, 2)).astype(float)
    heart = ((lab == LV) | (lab == MYO)).sum(axis=(1, 2)).astype(float)
    on = np.nonzero(heart > 0)[0]
    if on.size < MIN_SLICES_FOR_VOLUME or pool.max() <= 0:
        return None
    n = lab.shape[0]
    wide_at = [name for name, k, edge in (("first", on[0], 0), ("last", on[-1], n - 1))
               if k == edge and pool[k] >= END_AREA_FRACTION * pool.max()]
    if not wide_at:
        return None
    length, width = lv_length_and_width(lab, spacing)
    ratio = length / width if width > 0 else float("inf")
    if len(wide_at) == 2:
        why = "on both the first and the last slice of the stack"
    elif ratio < MIN_LENGTH_TO_WIDTH:
        why = (f"on the {wide_at[0]} slice of the stack, and it spans {length:.0f} mm of slices for a {width:.0f} mm wide "
               f"ventricle (ratio {ratio:.2f}; 0.84 or more in the expert labels of 80 ACDC patients)")
    elif ratio < MIN_LENGTH_TO_WIDTH_WITH_ES and label_es is not None:
        heart_es = np.isin(np.asarray(label_es), (LV, MYO)).sum(axis=(1, 2)).astype(float)
        end = on[0] if wide_at[0] == "first" else on[-1]
        share = heart_es[end] / heart_es.max() if heart_es.max() > 0 else 0.0
        if share < ES_END_HEART_FRACTION:
            return None
        why = (f"on the {wide_at[0]} slice of the stack, where at ES the LV and myocardium still fill {share:.0%} of their "
               f"largest cross-section (the base moves out of a basal slice in systole), and it spans {length:.0f} mm of "
               f"slices for a {width:.0f} mm wide ventricle (ratio {ratio:.2f})")
    else:
        return None
    # the ratio is short also where the header's slice spacing is smaller than the true one (5 mm
    # for 10: EDV and mass halved, and only "base or apex cut off" was said; probe 85)
    spacing_too = (f", or the file gives its slices as closer together ({float(spacing[2]):g} mm) than they were "
                   "acquired" if ratio < MIN_LENGTH_TO_WIDTH else "")
    return (f"the LV blood pool is still {END_AREA_FRACTION:.0%} or more of its largest cross-section {why}: the stack "
            f"may not cover the whole ventricle (base or apex cut off){spacing_too}, which makes EDV, ESV and mass low; "
            "check the slice coverage" + (" and the slice spacing against the scanner's" if spacing_too else ""), ratio)


# Blood-pool SNR of a cine (LV pool mean over the darkest 2 % of a square around the heart,
# divided by the image noise from Immerkaer 1996's Laplacian-difference estimate there; median
# over the mid slices at ED): 26.6-277 on the 80 ACDC patients' expert labels (5th percentile
# 29.7, session 17), the same for images scaled to -1..1 or offset. A first estimator without the
# floor read 17.9-227 on them and, with Rician noise of 5 / 10 / 15 % of the 99th-percentile
# signal added, 8.3 / 4.6 / 3.3 (medians), where the network's ES cavity shrinks (ESV -30 %, EF
# +12 points at 15 %, QC pass before; probe 23). Under MIN_CINE_SNR results go to review.
MIN_CINE_SNR = 6.0
_NOISE_KERNEL = np.array([[1.0, -2.0, 1.0], [-2.0, 4.0, -2.0], [1.0, -2.0, 1.0]])


def cine_snr(images_ed, label_ed, half_box_px=40):
    """Median over the mid LV slices of (LV pool mean / noise sigma), or None (too little LV).

    The noise sigma is Immerkaer's: the Laplacian-difference filter cancels smooth anatomy and
    leaves 6 sigma of noise per pixel; its median (not mean) keeps edges out, scaled to sigma."""
    from scipy import ndimage

    lab = np.asarray(label_ed)
    on = np.nonzero((lab == LV).any(axis=(1, 2)))[0]
    if on.size == 0:
        return None
    mid = on[on.size // 4: on.size - on.size // 4] if on.size >= 4 else on
    values = []
    for k in mid:
        pool = lab[k] == LV
        if pool.sum() < 20:
            continue
        rows, cols = np.nonzero(pool)
        r0, c0 = int(rows.mean()), int(cols.mean())
        box = np.asarray(images_ed[k], float)[max(0, r0 - half_box_px):r0 + half_box_px,
                                              max(0, c0 - half_box_px):c0 + half_box_px]
        if min(box.shape) < 8:
            continue
        response = ndimage.convolve(box, _NOISE_KERNEL, mode="reflect")[1:-1, 1:-1]
        sigma = 1.4826 * float(np.median(np.abs(response))) / 6.0   # MAD of a zero-mean response -> sigma
        if sigma > 0:
            # over the darkest of the square (air, lung: the signal's floor), not zero: images
            # scaled to -1..1 or stored with an offset read as SNR -17 or 5x too clean (probe 25)
            floor = float(np.percentile(box, 2))
            values.append((float(np.asarray(images_ed[k], float)[pool].mean()) - floor) / sigma)
    return float(np.median(values)) if values else None


def _snr_of(analysis, ed):
    """``cine_snr`` of the ED frame, kept on the analysis while its ED label map is the same
    object: QC runs again on every handle drag, which changes neither (18 ms each on ACDC)."""
    cached = getattr(analysis, "_snr_cache", None)
    if cached is not None and cached[0] is analysis.labels[ed] and cached[1] == ed:
        return cached[2]
    snr = cine_snr(analysis.study.images[ed], analysis.labels[ed])
    analysis._snr_cache = (analysis.labels[ed], ed, snr)
    return snr


def _flag(code, severity, message, value=None):
    out = {"code": code, "severity": severity, "message": message}
    if value is not None:
        out["value"] = float(value) if isinstance(value, (int, float, np.floating, np.integer)) else value
    return out


def _shown_outside(value, lo, hi, digits=3):
    """``value`` with enough digits not to read as a bound of the range it is outside of ("ratio
    0.20 is outside 0.2-4" read as a contradiction; it was 0.196)."""
    for d in range(digits, 9):
        text = f"{value:.{d}g}"
        if float(text) not in (lo, hi):
            return text
    return repr(float(value))


def _out_of(key, value, what, unit):
    lo, hi = RANGES[key]
    if value is None or not np.isfinite(value):
        return None
    if value < lo or value > hi:
        return f"{what} {_shown_outside(value, lo, hi)}{unit} is outside the plausible {lo:g}-{hi:g}{unit}"
    return None


def image_edge(image):
    """The edge of a 2D image's data: its outermost rows and columns, and where rows or columns of
    one value (a crop padded back to the matrix, zero-fill to a square) reach in from the
    border, those and the first row or column of data beside them."""
    image = np.asarray(image)
    edge = np.zeros(image.shape, bool)
    edge[0, :] = edge[-1, :] = edge[:, 0] = edge[:, -1] = True
    if image.size == 0 or image.min() == image.max():
        return edge
    data = [slice(None), slice(None)]   # the rows and columns inside the padding found so far
    for axis in (0, 1, 0):   # rows, then columns within those rows, then rows again (padding on both)
        inner = image[data[0], data[1]]
        flat = inner.min(axis=1 - axis) == inner.max(axis=1 - axis)
        if flat.all():
            return edge
        lead, trail = int(np.argmin(flat)), int(np.argmin(flat[::-1]))   # one-value lines from each end
        start = (data[axis].start or 0) + lead
        stop = (data[axis].start or 0) + flat.size - trail
        data[axis] = slice(start, stop)
    for axis in (0, 1):
        band = np.ones(image.shape[axis], bool)
        band[data[axis].start + 1: data[axis].stop - 1] = False   # the data's own outermost lines stay edge
        edge |= band[:, None] if axis == 0 else band[None, :]
    return edge


def structures_at_edge(label_volume, images=None):
    """{structure name: [slices]} of the LV (pool or myocardium) and the RV labelled on the edge
    of the image's data (``image_edge`` of each slice of ``images``, the same frame's (S, R, C);
    without them the outermost rows and columns): a heart the field of view cuts. None of the
    160 ACDC expert label maps touches the edge."""
    lab = np.asarray(label_volume)
    border = image_edge(np.zeros(lab.shape[1:]))
    out = {}
    for name, values in (("LV", (LV, MYO)), ("RV", (RV,))):
        slices = [int(k) for k in range(lab.shape[0])
                  if np.isin(lab[k][border if images is None else image_edge(images[k])], values).any()]
        if slices:
            out[name] = slices
    return out


def cycle_along_slices(label_volume):
    """(slice, fraction) when the LV blood pool area along the slices of one frame is U-shaped:
    at least 85 % of the largest on the first and on the last slice, and under 75 % of the
    smaller of the two on a slice between them; else None. From base to apex the pool narrows
    (or the stack stops short of the apex, where the areas stay alike), it does not shrink and
    regrow; over a cardiac cycle it does: slices that are really frames (axes swapped)."""
    area = (np.asarray(label_volume) == LV).sum(axis=(1, 2)).astype(float)
    if area.size < 5 or area.max() <= 0:
        return None
    ends = min(area[0], area[-1])
    if ends < 0.85 * area.max():
        return None
    k = int(np.argmin(area[1:-1])) + 1
    return (k, float(area[k] / ends)) if area[k] < 0.75 * ends else None


# The basal third of the LV keeps a cavity at ES: the outflow tract is there (HCM cavities close
# at ES towards the apex, and mid-cavity obliteration is rare). In 80 ACDC expert label maps no
# slice whose ED cavity was at least half the largest showed ES myocardium without any LV blood
# pool; the network on held-out HCM patient 037 drew its basal ES ring off the heart with no
# cavity (ESV 9.9 mL for the experts' 22, EF 84 % for 66 %, QC "pass"). Towards the apex the
# network and the experts differ by a few pixels of a closing cavity (HCM 023 and 037: the
# experts 21-25 pixels, the network none), so only basal slices are judged.
ES_CAVITY_SLICE_SHARE = 0.5
MIN_MYO_WITHOUT_CAVITY_MM2 = 100.0


def basal_es_cavity_missing(label_ed, label_es, spacing, study=None):
    """[(slice, ED cavity as a share of its largest)] for basal slices (the basal third of the
    ED LV, ``geometry.slice_levels``) where the ES labels have myocardium (at least
    ``MIN_MYO_WITHOUT_CAVITY_MM2``) but no LV blood pool, though the ED cavity on that slice is at least
    ``ES_CAVITY_SLICE_SHARE`` of the largest. (S, R, C) label volumes."""
    from .geometry import slice_levels

    label_ed, label_es = np.asarray(label_ed), np.asarray(label_es)
    pixel_mm2 = float(spacing[0]) * float(spacing[1])
    lv_ed = (label_ed == LV).sum(axis=(1, 2)).astype(float)
    if lv_ed.max() <= 0 or not (label_ed == MYO).any():
        return []
    basal = [k for k, level in slice_levels(label_ed, study).items() if level == "basal"]
    lv_es = (label_es == LV).sum(axis=(1, 2))
    myo_es_mm2 = (label_es == MYO).sum(axis=(1, 2)) * pixel_mm2
    share = lv_ed / lv_ed.max()
    return [(k, float(share[k])) for k in sorted(basal)
            if share[k] >= ES_CAVITY_SLICE_SHARE and lv_es[k] == 0 and myo_es_mm2[k] >= MIN_MYO_WITHOUT_CAVITY_MM2]


# Pixels of LV blood pool (or of pool and myocardium) that make a slice's pool a pool: a few
# stray pixels from the base's outflow tract, or an apical speck of 1-14 pixels beyond an ES
# cavity that closed (HCM patient023, patient092 in the shipped network's contours; volumes
# within 1-6 % of the experts'), are not one, and put the slices before them "between slices
# that have one" (LV_CAVITY_GAP_ES, LV_GAP_ES on valid results; probe 55's sweep)
MIN_POOL_PIXELS = 20


def cavity_gaps(label_volume, spacing, study=None):
    """Slices of a (S, R, C) label volume with myocardium (at least ``MIN_MYO_WITHOUT_CAVITY_MM2``) but no LV
    blood pool between slices that have one; with ``study`` (for ED, where the base has its
    cavity too) also such slices on the base's side of the largest cavity
    (``geometry.base_at_low_k``). None in the 160 ACDC expert label maps (ED and ES) nor in the
    network's contours on them; a basal slice 86 mm off the others was segmented without its
    cavity: EDV -13 %, QC pass (probe 40)."""
    from .geometry import base_at_low_k

    lab = np.asarray(label_volume)
    lv = (lab == LV).sum(axis=(1, 2))
    myo_mm2 = (lab == MYO).sum(axis=(1, 2)) * float(spacing[0]) * float(spacing[1])
    on = np.flatnonzero(lv >= MIN_POOL_PIXELS)
    if on.size == 0:
        return []
    judged = set(range(on[0] + 1, on[-1]))
    if study is not None:
        largest = int(np.argmax(lv))
        judged |= set(range(0, largest) if base_at_low_k(study, lab)[0] else range(largest + 1, lab.shape[0]))
    return sorted(int(k) for k in judged if lv[k] == 0 and myo_mm2[k] >= MIN_MYO_WITHOUT_CAVITY_MM2)


def myocardium_gaps(label_volume):
    """Slices of an (S, R, C) label map with an LV blood pool of MIN_POOL_PIXELS or more and no
    myocardium at all, strictly between slices that have myocardium: the ring was erased (an
    edit) or given another label there (probe 55: ground truth with one mid slice's myocardium
    removed read LV mass 13 % low with QC pass)."""
    lab = np.asarray(label_volume)
    with_myo = np.flatnonzero((lab == MYO).sum(axis=(1, 2)) >= MIN_POOL_PIXELS)
    if with_myo.size < 2:
        return []
    return [int(k) for k in range(int(with_myo[0]) + 1, int(with_myo[-1]))
            if (lab[k] == LV).sum() >= MIN_POOL_PIXELS and not (lab[k] == MYO).any()]


def label_anatomy_flags(analysis):
    """Labels that contradict the anatomy they are drawn on, whatever made them. A label file is
    checked as it is read (refused, or a warning); a network's output was not: an imported model
    whose card lists its classes in another order gave LV and RV swapped (EF 40 % for 24 %), and
    one whose output is mirrored put every contour off the heart, both with QC "pass" (probe
    round 15)."""
    from .readers.labelmap import lv_and_rv_look_swapped, lv_rv_ring_shares, ventricle_inside_the_other

    flags = []
    shares = lv_rv_ring_shares(analysis.labels.values())
    if lv_and_rv_look_swapped(shares):
        flags.append(_flag("LV_RV_SWAPPED", REVIEW, f"the structure labelled LV blood pool touches myocardium on "
                                                    f"{shares[0]:.0%} of its border and the RV on {shares[1]:.0%}; an LV "
                                                    "pool is ringed by myocardium: LV and RV look swapped (a model whose "
                                                    "classes are in another order than its card says?)", shares[0]))
    # labels given are warned about as they are read too; measured, they are no less off (ACDC
    # patient001's images with 013's _gt read mass +51 %, RV EF -32 points, QC pass; probe 51)
    flags += labels_off_the_image_flags(analysis)
    nested = ventricle_inside_the_other(analysis.labels, analysis.study.voxel_volume_ml)
    if nested:
        flags.append(_flag("VENTRICLE_INSIDE_OTHER", REVIEW, nested, None))
    flags += _unknown_label_value_flags(analysis)
    return flags


def _label_file_names(analysis):
    """The names of the label files the labels were read from (none for a network's or for
    labels handed over in memory)."""
    from pathlib import Path

    return [Path(f["file"]).name for f in (analysis.study.provenance or {}).get("label_files") or [] if f.get("file")]


def labels_source(analysis):
    """Who made the labels, as a flag's message starts: the network, or the label file(s) given."""
    if analysis.model_info:
        return "network output"
    files = _label_file_names(analysis)
    return f"labels given ({', '.join(files)})" if files else "labels given"


def labels_off_the_image_flags(analysis):
    """LABELS_OFF_THE_IMAGE where the labels do not overlay the images they are measured on: a
    cine's frame (``readers.labelmap.labels_off_the_image``), a perfusion series' bolus
    (``perfusion_labels_off_the_image``)."""
    from .readers.labelmap import NOT_BRIGHT_BLOOD, labels_off_the_image

    if analysis.kind == PERFUSION:
        off = perfusion_labels_off_the_image(analysis)
    else:
        off = labels_off_the_image(analysis.study, analysis.labels)
    if not off:
        return []
    if off.startswith(NOT_BRIGHT_BLOOD):
        # the labels fit the images with their grey values inverted: the images are what is off
        # (a dark-blood or inverted cine), not the labels (probe 107: "rotated 180 degrees")
        return [_flag("IMAGES_NOT_BRIGHT_BLOOD", REVIEW, f"{labels_source(analysis)}: {off}", None)]
    return [_flag("LABELS_OFF_THE_IMAGE", REVIEW, f"{labels_source(analysis)}: {off}", None)]


# The motion correction moves each slice's frames onto the labels by up to this many pixels
# (perfusion.motion._mask_offset, max_px): the labels given and every copy of them are judged with
# that reach, so a shift the correction makes good is not flagged, a mirror it cannot undo is.
MOTION_REACH_PX = 3
# A ring mirrored is also the ring moved: where a copy mirrored or rotated parts pool and wall
# within this share of the best copy (a move), it is the one named, the simpler way back (probe
# 105's mirrored map was otherwise called "moved -6 mm along the columns")
NAMED_COPY_SHARE = 0.95
# labelled pixels of the LV pool and of the RV a slice needs before the side its RV lies on is
# compared with the bolus's RV (as rv_side_against_header needs)
MIN_RV_SIDE_PIXELS = 10


def _contrast_within_reach(peak, lab, floor, reach_px):
    """Blood pool over myocardium signal (above ``floor``) of the (S, R, C) map ``lab`` on
    ``peak``, each slice of the map moved by the whole-pixel offset within ``reach_px`` that
    parts the two best on it; None with under 20 pixels of either."""
    rows, cols = peak.shape[1:]
    steps = np.arange(-reach_px, reach_px + 1)
    dr, dc = (d.reshape(-1, 1) for d in np.meshgrid(steps, steps, indexing="ij"))
    sums = np.zeros(4)   # pool sum, pool pixels, wall sum, wall pixels
    for k in range(lab.shape[0]):
        pool, wall = np.nonzero(lab[k] == LV), np.nonzero(lab[k] == MYO)
        if not pool[0].size or not wall[0].size:
            continue
        # (offsets, pixels), each row the map moved as np.roll moves the copies themselves
        p = peak[k][(pool[0] + dr) % rows, (pool[1] + dc) % cols]
        w = peak[k][(wall[0] + dr) % rows, (wall[1] + dc) % cols]
        best = int(np.argmax((p.mean(axis=1) - floor) / np.maximum(w.mean(axis=1) - floor, 1e-12)))
        sums += (p[best].sum(), p.shape[1], w[best].sum(), w.shape[1])
    if sums[1] < 20 or sums[3] < 20:
        return None
    return float((sums[0] / sums[1] - floor) / max(sums[2] / sums[3] - floor, 1e-12))


def _bolus_peak(images, notes):
    """(S, R, C) peak enhancement over the pre-bolus baseline of (T, S, R, C) frames, each slice
    put back where the motion correction had aligned its frames before moving them onto the
    labels (``notes``: its per-slice record, with ``mask_offset_px``); None without a bolus."""
    from scipy import ndimage

    from .errors import CardiacInputError
    from .perfusion.bolus import enhancement

    peak = np.zeros(images.shape[1:])
    try:
        for k in range(images.shape[1]):
            peak[k] = enhancement(images[:, k], smooth_px=0.7)[0].max(axis=0)
    except CardiacInputError:   # too few frames, no bolus: nothing to judge the labels by
        return None
    for k, note in enumerate(notes):
        offset = note.get("mask_offset_px")
        if offset is not None and any(offset):
            peak[k] = ndimage.shift(peak[k], offset, order=1, mode="nearest")
    return peak


def _rv_against_the_bolus(images, lab, spacing_rc, dt):
    """Cosines, per slice with enough LV pool and RV labelled, between the direction from the LV
    pool to the RV labelled and to the RV the bolus shows (``geometry.rv_at_peak``)."""
    from .geometry import rv_at_peak

    pixel_rc = np.asarray(spacing_rc, float)
    cosines = []
    for k in range(lab.shape[0]):
        lv, rv_labelled = lab[k] == LV, lab[k] == RV
        if lv.sum() < MIN_RV_SIDE_PIXELS or rv_labelled.sum() < MIN_RV_SIDE_PIXELS:
            continue
        rv_bolus, how = rv_at_peak(images[:, k], lab[k], spacing_rc, dt)
        if how != "bolus":
            continue
        centre = np.argwhere(lv).mean(axis=0)
        labelled = (np.argwhere(rv_labelled).mean(axis=0) - centre) * pixel_rc
        seen = (np.argwhere(rv_bolus).mean(axis=0) - centre) * pixel_rc
        cosines.append(float(labelled @ seen / max(np.linalg.norm(labelled) * np.linalg.norm(seen), 1e-9)))
    return cosines


# perfusion_labels_off_the_image's last few results (perfusion.bolus.RecentResults, made at first use)
_recent_overlays = None


def perfusion_labels_off_the_image(analysis):
    """Why a perfusion series' labels do not seem to overlay its frames, or None.

    A label map mirrored against its image (the same affine with its data flipped, or the data
    kept with the affine flipped) read MBF 2.911 for 2.827 with the AHA segments swapped, and the
    one orientation flag blamed the images (probe 105). Two cues, on the frames as measured:

    - at the bolus peak the blood pool is bright and the myocardium darker, as in a cine frame:
      a mirrored, rotated or in-plane shifted copy of the map (not one moved along the stack:
      ``_in_plane_copies``) parts the two clearly better than the map itself
      (``readers.labelmap.MIN_OVERLAY_CONTRAST_SHARE``, the cine's check), each given the
      motion correction's reach (``MOTION_REACH_PX``) on the frames as it aligned them;
    - the RV labelled lies on the LV's other side (median cosine under ``MIRRORED_MAX_COS``) from
      the RV the bolus shows (blood peaking before the LV pool, ``geometry.rv_at_peak``): a map
      mirrored about a line near the LV leaves its ring on the ring, and only the RV tells.

    Correct maps: none flagged of 80 perfusion phantoms (10 seeds; noise 0.005-0.05 mmol/L, still
    and breathing, an LAD defect, rest), the map's contrast 0.965 x the best copy's or more, nor
    the QPerf stress and rest series with the shipped network's masks (0.99, 1.14); their RV
    labelled within 40° of the bolus's (cosine 0.77 or more). Of 30 maps mirrored along the rows
    or the columns or rotated 180°, 18 are caught by the contrast and 5 more by the RV; the 7 left
    keep ring and RV where they were (IMAGES_MIRRORED does not fire on them either). Maps moved
    3 px (5.4 mm, within the correction's reach): none flagged; 5 px: 8 of 10; 7 px: 10 of 10
    (measured in session 47 on the phantoms of ``phantoms.phantom_perfusion``).

    The result is kept for the same frames and labels: QC runs again on every handle drag."""
    global _recent_overlays
    from .perfusion.bolus import RecentResults

    st = analysis.study
    lab = np.asarray(analysis.labels[analysis.reference_frame])
    curves = getattr(analysis, "_curves", None)
    images = np.asarray(curves[0] if curves is not None else st.images)
    if images.ndim != 4 or images.shape[1:] != lab.shape:
        return None
    # the motion correction's record of these frames (not of a study read again without it)
    notes = ((st.provenance or {}).get("motion") or {}).get("slices") or [] if curves is not None else []
    notes = notes if len(notes) == lab.shape[0] else []
    times = st.frame_times_s if curves is None else curves[2]
    dt = float(np.median(np.diff(times))) if times is not None and len(times) > 1 else None
    if _recent_overlays is None:
        _recent_overlays = RecentResults(size=4)
    key = _recent_overlays.key(images, zlib.crc32(np.ascontiguousarray(lab, np.uint8).tobytes()),
                               tuple(tuple(n.get("mask_offset_px") or ()) for n in notes),
                               tuple(float(v) for v in st.spacing), dt)
    known = _recent_overlays.get(key)
    if known is None:
        known = (_perfusion_overlay(images, lab, notes, st.spacing, st.spacing_rc, dt),)   # None is a result too
        _recent_overlays.put(key, known)
    return known[0]


def _in_plane_copies(lab, pixel_mm):
    """``readers.labelmap._moved_copies`` of the (S, R, C) map without its copies moved along
    the stack: the mirrored and in-plane shifted ones only, as each slice moved alone gives them.

    The copy moved one slice was calibrated on ACDC cines (about 10 slices 5-10 mm apart, where
    neighbouring rings nearly match). A perfusion series has 3-4 slices 10-20 mm apart: the next
    slice's ring, larger or smaller, moved within the motion correction's reach, finds a darker
    rim around the pool, so the contrast favours the larger ring, not the right slice. On 12
    full-field perfusion phantoms at 2.5 mm pixels, the copy moved towards the last slice beat
    the network's correct masks (myocardium Dice 0.96-1.0) on 2 and the true maps on the same 2
    (on one of them it won on each slice it covers judged alone, so asking for that does not
    help), and of the 12 true maps moved one slice towards the last slice it flagged 11, each
    time naming that same direction, away from the right slices (probe 106; session 48). A map moved along a perfusion stack leaves an end slice unlabelled,
    which SEGMENTS_UNMEASURED flags (all 24 maps moved either way).
    """
    from .readers.labelmap import _moved_copies

    # the mirrored and in-plane shifted copies move each slice within its own plane (flips and
    # rolls along rows and columns), so the whole map's are its slices' own: moved once, the
    # copies along the stack (the only ones that mix slices) left out by name
    return {name: moved for name, moved in _moved_copies(lab, pixel_mm).items() if "along the stack" not in name}


def _perfusion_overlay(images, lab, notes, spacing, spacing_rc, dt):
    """``perfusion_labels_off_the_image``'s judgement, not kept."""
    from .readers.labelmap import MIN_OVERLAY_CONTRAST_SHARE

    peak = _bolus_peak(images, notes)
    if peak is None:
        return None
    floor = float(np.percentile(peak, 1))
    given = _contrast_within_reach(peak, lab, floor, MOTION_REACH_PX)
    if given is not None:
        copies = {name: _contrast_within_reach(peak, moved, floor, MOTION_REACH_PX)
                  for name, moved in _in_plane_copies(lab, float(min(spacing[:2]))).items()}
        best = max((c for c in copies.values() if c is not None), default=None)
        if best is not None and given < MIN_OVERLAY_CONTRAST_SHARE * best:
            name, shown = next((n, c) for n, c in copies.items() if c is not None and c >= NAMED_COPY_SHARE * best)
            return (f"the labels do not seem to overlay this image: {name}, they would part the blood pool from the "
                    f"myocardium better at the bolus peak (peak enhancement pool/wall x{shown:.2f} against x{given:.2f} "
                    f"as given, each moved by up to {MOTION_REACH_PX} pixels as the motion correction moves the frames); "
                    "check them over the image (mirrored, shifted, or another series' labels?)")
    cosines = _rv_against_the_bolus(images, lab, spacing_rc, dt)
    if not cosines or np.median(cosines) >= MIRRORED_MAX_COS:
        return None
    degrees = np.degrees(np.arccos(np.clip(np.median(cosines), -1.0, 1.0)))
    return (f"the labels do not seem to overlay this image: on {len(cosines)} slice(s) the RV labelled lies {degrees:.0f}° "
            "(median) around the LV from the RV the bolus shows (the blood that peaks before the LV pool's), on the "
            "LV's other side; check them over the image (mirrored against it, or another series' labels?)")


def _unknown_label_value_flags(analysis):
    """A label file's values that are no label in its convention are read as background, which
    is said as it is read; the structure they held is then missing from every measure with QC
    "pass" (an RV labelled 4 and 5: no RV measures, exit 0; probe 85). Flagged while a structure
    is still missing on every frame (an edit that adds it ends the flag)."""
    prov = analysis.study.provenance or {}
    unknown = sorted({int(v) for info in prov.get("label_files") or [] for v in info.get("set_to_background") or []}
                     | {int(v) for v in prov.get("labels_set_to_background") or []})   # an ACDC folder's _gt files
    if not unknown or analysis.model_info:
        return []
    missing = [name for value, name in ((LV, "LV blood pool"), (MYO, "myocardium"), (RV, "RV"))
               if not any((lab == value).any() for lab in analysis.labels.values())]
    if not missing:
        return []
    return [_flag("LABEL_VALUES_UNKNOWN", REVIEW, f"the label map holds values {unknown}, which are no label in its "
                                                   f"convention and were read as background, and no {' or '.join(missing)} "
                                                   "is labelled on any frame: the missing structure may be under those "
                                                   "values, and its measures are not given; check the map's values or "
                                                   "--label-convention (acdc: 1 RV, 2 myocardium, 3 LV; ukbb: 1 LV, 2 "
                                                   "myocardium, 3 RV)", len(unknown))]


# Cine stacks the networks were trained and checked on lie 5-10 mm apart (80 ACDC studies,
# Sunnybrook 10 mm); slices 20 mm apart (pairs averaged) moved a study's ESV by 10-27 % and its
# EF by up to 10 points with QC "pass" (probe 31): the base and apex fall between slices.
MAX_CINE_SLICE_SPACING_MM = 12.0
# Blood at the image's highest value (a 12-bit or windowed export that clipped the bright blood):
# at most 9.6 % of the ED LV pool in 80 ACDC studies (3 over 1 %); clipped at the pool's median,
# ESV rose 15-32 % with QC "pass" (probe 31).
MAX_POOL_SHARE_AT_IMAGE_MAXIMUM = 0.25
# Grey levels in the ED volume: 175 or more in the 80 ACDC studies (8-bit at their source), and 814-958
# in the MetaImage cine and Sunnybrook (as grey_levels counts). 0..1 images cast to integers without scaling keep
# 2-4 levels; the network's ESV read 30 % low, EF +11 points, QC pass (probe 51).
MIN_GREY_LEVELS = 32
# MAX_FIELD_OF_VIEW_MM (imported above) is the widest field of view an MR scanner gives; a header's
# length unit is judged by it too (readers.geometry_check)


def grey_levels(image, most=200_000):
    """Distinct values in ``image`` (every k-th pixel of a large one: a count, not a census)."""
    flat = np.asarray(image).ravel()
    return int(np.unique(flat[:: max(1, flat.size // most)]).size)


def repeated_slices(images):
    """[(k, j)] pairs of slices whose images are identical in every frame (and not one value):
    a slice written twice. A scanner's slices always differ, by noise at least; a stack with its
    middle slice written twice read EDV, ESV and mass 11-15 % high with QC pass (probe 51)."""
    return _identical_pairs(images, axis=1)


def repeated_frames(images):
    """[(j, k)] pairs of frames whose images are identical in every slice (and not one value): a
    frame written twice. Every frame after a repeat is read one frame interval late: a perfusion
    phantom with one upslope frame repeated read MBF 17-39 % off with QC pass (probe 52)."""
    return _identical_pairs(images, axis=0)


# A slice stored twice need not be bit-identical: a copy at another gain (x1.1) or with fresh
# noise read EDV 144.2 for 129.5 mL and mass 134.3 for 121.3 g with QC pass (probe 107). Over the
# whole cycle (Pearson, every frame's pixels together) such copies correlate with their original
# at 0.9998-1.0, and a real slice copied with fresh noise of 3 % of its 99th percentile at
# 0.991-0.994 (the MetaImage cine, Sunnybrook, ACDC 001 and 094). Slices of a stack, any two, at
# most 0.898 (ACDC's 80 studies, ED and ES frames), 0.784 (the MetaImage cine), 0.811
# (Sunnybrook); the perfusion phantoms 0.881 (3 slices 20 mm apart, 120 series), 0.961 with a
# full-field body the same on every slice (24 series); the cine phantom 0.974 with its default
# noise (20 seeds; 0.986 at noise 0.02, 0.996 noise-free: its torso is the same on every slice,
# as no scanner's is; session 48).
NEAR_COPY_MIN_CORRELATION = 0.99
# ... and over the tenth of their pixels that move most through the cycle (the heart): a torso the
# same on every slice (the cine phantom's, as no scanner's is) made neighbours correlate at
# 0.991-0.995 over the whole image at low noise (review 2 of session 48), 0.95-0.97 here; copies
# 0.990-1.0 (a Sunnybrook slice with fresh noise of 3 % of its 99th percentile 0.9905, the
# phantom's 0.994), Sunnybrook's neighbours 0.67
NEAR_COPY_MOVING_SHARE = 0.1
NEAR_COPY_MIN_MOVING = 0.98
# ... judged only where slices lie this far apart: thinner stacks are 3D acquisitions, often
# reconstructed with overlapping slices, whose neighbours come near a copy. ACDC's slices against
# themselves moved in-plane correlate up to 0.914 at 5 mm (its stacks 5 mm apart: 0.898 through
# the plane), 0.958 at 3 mm, 0.977 at 2 mm and 0.986 at 1.5 mm (session 48).
NEAR_COPY_MIN_SPACING_MM = 5.0
# pixels per slice the correlation is taken on (every n-th row and column): enough for its 4th
# decimal, and a 30-frame 256x256 cine's 14 slices in some 30 MB
NEAR_COPY_SAMPLES = 200_000


def nearly_repeated_slices(images, slice_spacing_mm):
    """[(j, k, r)], j < k: slices of (frames, slices, rows, columns) ``images`` whose images over
    every frame correlate at ``r`` >= ``NEAR_COPY_MIN_CORRELATION`` (Pearson; identical ones
    included, one-valued ones left out): a slice stored twice at another gain or with other
    noise. [] for slices under ``NEAR_COPY_MIN_SPACING_MM`` apart, where neighbours may come as
    near."""
    images = np.asarray(images)
    if images.ndim != 4 or images.shape[1] < 2 or not slice_spacing_mm or slice_spacing_mm < NEAR_COPY_MIN_SPACING_MM:
        return []
    n_frames, n_slices, rows, cols = images.shape
    step = max(1, int(np.ceil(np.sqrt(n_frames * rows * cols / NEAR_COPY_SAMPLES))))
    x = np.moveaxis(images[:, :, ::step, ::step], 1, 0).reshape(n_slices, -1).astype(np.float64)
    x -= x.mean(axis=1, keepdims=True)
    norms = np.linalg.norm(x, axis=1)
    live = np.flatnonzero(norms > 0)
    r = (x[live] @ x[live].T) / np.outer(norms[live], norms[live])
    pairs = [(int(live[a]), int(live[b]), float(r[a, b])) for a in range(live.size) for b in range(a + 1, live.size)
             if r[a, b] >= NEAR_COPY_MIN_CORRELATION]
    return [(j, k, c) for j, k, c in pairs if _moving_region_correlation(images[:, j, ::step, ::step],
                                                                         images[:, k, ::step, ::step]) >= NEAR_COPY_MIN_MOVING]


def _moving_region_correlation(a, b):
    """Pearson correlation of two slices' (frames, rows, columns) images over the pixels that move
    most through the cycle in either (``NEAR_COPY_MOVING_SHARE``): the heart, not what every slice
    shares (a still torso)."""
    spread = np.maximum(np.asarray(a, np.float64).std(0), np.asarray(b, np.float64).std(0))
    where = spread >= np.quantile(spread, 1 - NEAR_COPY_MOVING_SHARE)
    x, y = np.asarray(a, np.float64)[:, where].ravel(), np.asarray(b, np.float64)[:, where].ravel()
    x, y = x - x.mean(), y - y.mean()
    norm = np.linalg.norm(x) * np.linalg.norm(y)
    return float(x @ y / norm) if norm > 0 else 0.0


def _identical_pairs(images, axis):
    """[(j, k)], j < k: the indices along ``axis`` of (frames, slices, rows, columns) ``images``
    whose sub-arrays are equal (blank ones left out: BLANK_END_SLICES / IMAGE_LOST say so)."""
    images = np.moveaxis(np.asarray(images), axis, 0)
    seen, pairs = {}, []
    for k in range(images.shape[0]):
        first = images[k].reshape(-1, *images.shape[-2:])[0]   # the first image sorts; all decide
        if first.min() == first.max():
            continue
        key = hash(np.ascontiguousarray(first).tobytes())
        pairs += [(j, k) for j in seen.get(key, []) if np.array_equal(images[j], images[k])]
        seen.setdefault(key, []).append(k)
    return pairs


def _field_of_view_mm(study):
    """(rows, columns) extent of the study's images in mm."""
    return study.images.shape[2] * float(study.spacing[1]), study.images.shape[3] * float(study.spacing[0])


def _field_of_view_flags(study, consequence):
    """FIELD_OF_VIEW_LARGE where the study's images span more than ``MAX_FIELD_OF_VIEW_MM``, the
    cine's and the perfusion series' alike; ``consequence``: what a pixel size too large does to
    what the series measures, and what to check."""
    fov = _field_of_view_mm(study)
    if max(fov) <= MAX_FIELD_OF_VIEW_MM:
        return []
    return [_flag("FIELD_OF_VIEW_LARGE", REVIEW, f"the images span {fov[0]:.0f} x {fov[1]:.0f} mm, wider than an MR scanner's "
                                                 f"field of view (at most 500-{MAX_FIELD_OF_VIEW_MM:.0f} mm): the pixel size in "
                                                 "the file is larger than the scanner's (an image resized and saved with its "
                                                 f"old header?); {consequence}", max(fov))]


def _placeholder_pixel_size(study):
    """True where a file other than DICOM gives the pixels as exactly 1.0 x 1.0 mm: what a tool
    writes when the scanner's spacing was lost on the way to the file (a DICOM file's PixelSpacing
    is the scanner's own)."""
    reader = str((study.provenance or {}).get("reader") or "")
    return bool(reader) and not reader.startswith("dicom") and np.allclose(study.spacing_rc, 1.0, rtol=0, atol=1e-6)


def _placeholder_pixels_said(usual):
    """PIXEL_SPACING_DEFAULT's opening, the cine's and the perfusion series' alike; ``usual``: the
    pixel sizes such a series usually has."""
    return f"the file gives the pixels as exactly 1.0 x 1.0 mm, the value tools write when the scanner's spacing was lost ({usual})"


def _repeated_slice_flags(study):
    """SLICES_REPEATED for slices identical (``repeated_slices``) or nearly so
    (``nearly_repeated_slices``)."""
    same = repeated_slices(study.images)
    near = [(j, k, r) for j, k, r in nearly_repeated_slices(study.images, float(study.spacing[2])) if (j, k) not in same]
    if not same and not near:
        return []
    said = []
    if same:
        said.append("slice(s) " + ", ".join(f"{j + 1} and {k + 1}" for j, k in same)
                    + " (counted from 1) hold the same images in every frame")
    if near:
        said.append("slice(s) " + ", ".join(f"{j + 1} and {k + 1}" for j, k, _ in near) + " (counted from 1) hold nearly "
                    "identical images over every frame (correlation " + ", ".join(f"{r:.4f}" for _, _, r in near)
                    + f"; from {NEAR_COPY_MIN_CORRELATION} flagged, where a scanner's slices correlate at most about 0.9), "
                    "the same images at another gain or with other noise")
    return [_flag("SLICES_REPEATED", REVIEW, "; ".join(said) + ": one slice stored twice (by the export, or as a retake at "
                  "a moved position with the same pixels) is measured twice (a cine's mid slice repeated read its volumes "
                  "and mass 11-15 % high in tests; a perfusion slice repeated moves the slices after it to other AHA "
                  "levels); check the stack", len(same) + len(near))]


def _repeated_flags(code, what, pairs, consequence):
    """``code`` naming the ``pairs`` (j, k) of ``what`` (slices, frames), counted from 1."""
    if not pairs:
        return []
    return [_flag(code, REVIEW, f"{what} " + ", ".join(f"{j + 1} and {k + 1}" for j, k in pairs) + f" (counted from 1) "
                  + consequence, len(pairs))]


# Slice origins this far off one line within the image plane: no short-axis stack is planned so
# (a shear of a few mm is rounding or a small correction); the basal half of a stack 40 mm off
# read EDV +36 % with QC pass (probe 101)
MAX_STACK_SHEAR_MM = 10.0


def acquisition_flags(analysis):
    """STACK_SHEARED, SLICES_THICK, SLICES_REPEATED, FIELD_OF_VIEW_LARGE, PIXEL_SPACING_DISAGREES, VOXEL_SIZE_DISAGREES,
    PIXEL_SPACING_DEFAULT, IMAGE_CLIPPED and IMAGE_QUANTISED: a
    cine acquired or exported outside what the segmentation was trained and checked on, or with
    its spacing lost."""
    flags = _repeated_slice_flags(analysis.study)
    st = analysis.study
    flags += _field_of_view_flags(st, "volumes and mass grow with its square; check the spacing")
    spacing = float(st.spacing[2]) if st.n_slices > 1 else 0.0
    if spacing > MAX_CINE_SLICE_SPACING_MM:
        flags.append(_flag("SLICES_THICK", REVIEW, f"slices {spacing:.0f} mm apart, where the networks were trained and "
                                                   "checked on 5-10 mm: the base and apex fall between slices and the "
                                                   "volumes and mass are less certain (pairs of slices averaged to 20 mm moved "
                                                   "ESV by 10-27 % in tests); check the basal and apical slices", spacing))
    shear = (st.provenance or {}).get("stack_shear_mm")
    if shear is not None and shear > MAX_STACK_SHEAR_MM:
        flags.append(_flag("STACK_SHEARED", REVIEW, f"the slices' origins lie up to {shear:.0f} mm apart within the image "
                                                    "plane, where a short-axis stack's lie on one line: the stack is read as "
                                                    "straight, so the heart is not where each slice's position says (slices "
                                                    "of two acquisitions, or a table moved between breath-holds?); check the "
                                                    "slices line up", shear))
    disagree = (st.provenance or {}).get("pixel_spacing_check")
    if disagree:
        flags.append(_flag("PIXEL_SPACING_DISAGREES", REVIEW, disagree["message"] + "; check the spacing against the "
                                                                                    "scanner's", disagree["diameter_mm"]))
    stale = (st.provenance or {}).get("voxel_size_check")
    if stale:   # readers.nifti.unused_form_disagrees
        flags.append(_flag("VOXEL_SIZE_DISAGREES", REVIEW, stale, None))
    if _placeholder_pixel_size(st):
        # cine pixels are 1.2-2 mm, so volumes and mass shrink with its square and still look
        # physiological: EDV 46-65 % low with QC pass (probe 46)
        flags.append(_flag("PIXEL_SPACING_DEFAULT", REVIEW, f"{_placeholder_pixels_said('cine pixels are usually 1.2-2 mm')}: "
                                                            "volumes and mass scale with the pixel area, so check the spacing "
                                                            "against the scanner's (DICOM PixelSpacing)", 1.0))
    ed = (analysis.cine or {}).get("ed_frame")
    # the network's contours only: labels drawn by hand measure the same with the blood clipped
    if analysis.model_info and ed is not None and ed in analysis.labels and st.images.shape[0] > ed:
        image, pool = st.images[ed], analysis.labels[ed] == LV
        if pool.sum() >= 20:
            share = float((image[pool] >= image.max()).mean())
            if share > MAX_POOL_SHARE_AT_IMAGE_MAXIMUM:
                flags.append(_flag("IMAGE_CLIPPED", REVIEW, f"{100 * share:.0f} % of the LV blood pool at ED sits at the image's "
                                                            "highest value: the bright blood was clipped (a 12-bit or windowed "
                                                            "export?), which blurs the cavity's edge for the segmentation (ESV "
                                                            "15-32 % high in tests); export the series with its full range",
                                   share))
        levels = grey_levels(image)
        if levels < MIN_GREY_LEVELS:
            flags.append(_flag("IMAGE_QUANTISED", REVIEW, f"the ED images hold only {levels} grey levels (cine MRI: hundreds "
                                                          "or more): an export that cast the values to whole numbers "
                                                          "without scaling them? The network cannot find the cavity's "
                                                          "edge in it (ESV 30 % low in tests); export the series with "
                                                          "its full range", levels))
    return flags


# A first-pass series is judged by the acquisition checks whose premise holds for it
# (perfusion_acquisition_flags), worded for what it measures: MBF per gram is a ratio of
# concentrations and does not scale with the pixel size, but the network's mask (given the heart's
# size in mm: a 1.8 mm phantom read as 1.0 mm lost a third of its myocardium; session 48),
# the motion correction's reach and the mask checks in mm² read it. Two cine checks do not hold:
# SLICES_THICK and STACK_SHEARED judge a stack measured as one volume, where a first pass has 3-4
# slices 8-10 mm thick with gaps (15-30 mm apart), each fitted and given its AHA level on its own
# (by count, or by position along the slice normal, which a shift within the plane leaves alone):
# 12 mm would flag every series, and a shear moves no number. SLICES_REPEATED is run by
# perfusion_flags. Clipping and quantisation are judged on the myocardium, whose curves MBF is
# fitted on (whoever drew the mask), not on the cine's LV pool at ED.
#
# Myocardial pixels whose curve reaches the series' highest value: tissue enhances a fraction of
# what blood does, so only a ceiling at the tissue's own level (a windowed export) puts it there.
# Perfusion phantoms (seeds 3-5, still and breathing): 0-4 % with the blood clipped at 0.3-0.5 of
# the LV peak and MBF unchanged (the real QPerf Gd maps stop at 6.0 mmol/L in their RV and LV
# pools at the peak: 0 %); clipped at 1.0-1.1 x the myocardium's median peak 7-50 %, segment MBF
# 5-23 % off with no flag that names the cause (session 48).
MAX_MYO_SHARE_AT_IMAGE_MAXIMUM = 0.1
# Distinct values of the myocardium's pixels over the series: tens of thousands in the phantoms
# and the real QPerf series (float Gd), 125-190 in phantoms written as 16-bit signal DICOM (400
# per mmol/L, dicom_factory); a Gd map stored in steps of 0.05 mmol/L keeps 7-14 (segment MBF
# 22-36 % off, once with QC pass), 0.02 mmol/L 17-34 (7-17 % off, QC pass), 0.01 mmol/L 34-67
# (under 5 %) on phantoms with a 0.26-0.41 mmol/L myocardial peak (session 48).
MIN_PERFUSION_MYO_LEVELS = 32
_PIXEL_SIZE_IN_PERFUSION = ("MBF per gram does not depend on the pixel size, but the network's mask (given the heart's "
                            "size in mm), the motion correction's reach and the mask-size check read it")


def perfusion_acquisition_flags(analysis):
    """FIELD_OF_VIEW_LARGE, PIXEL_SPACING_DISAGREES, VOXEL_SIZE_DISAGREES, PIXEL_SPACING_DEFAULT,
    IMAGE_CLIPPED and IMAGE_QUANTISED of a first-pass perfusion series: its pixel size lost or
    wrong in the file, or its values cut or rounded by an export (see the comment above)."""
    st = analysis.study
    prov = st.provenance or {}
    flags = _field_of_view_flags(st, f"{_PIXEL_SIZE_IN_PERFUSION}; check the spacing and the contours")
    disagree = prov.get("pixel_spacing_check")
    if disagree:   # readers.dicom.spacing_against_diameter; its message speaks of a cine's volumes
        flags.append(_flag("PIXEL_SPACING_DISAGREES", REVIEW, f"PixelSpacing {float(st.spacing_rc[0]):g} x "
                                                              f"{float(st.spacing_rc[1]):g} mm gives a "
                                                              f"{float(disagree['field_of_view_mm']):.0f} mm field of view, but "
                                                              f"ReconstructionDiameter says {float(disagree['diameter_mm']):g} mm "
                                                              f"({float(disagree['pixel_mm_by_diameter']):.3g} mm pixels): one "
                                                              "of the two is wrong (an edited or re-written header?); "
                                                              f"{_PIXEL_SIZE_IN_PERFUSION}; check the spacing against the "
                                                              "scanner's", disagree["diameter_mm"]))
    stale = prov.get("voxel_size_check")
    if stale:   # readers.nifti.unused_form_disagrees: a sentence written for volumes
        flags.append(_flag("VOXEL_SIZE_DISAGREES", REVIEW, f"{stale} (in this perfusion series: {_PIXEL_SIZE_IN_PERFUSION})"))
    if _placeholder_pixel_size(st):
        flags += _placeholder_pixel_flags(analysis)
    flags += _perfusion_values_flags(analysis)
    return flags


def _placeholder_pixel_flags(analysis):
    """PIXEL_SPACING_DEFAULT of a perfusion series whose file gives 1.0 x 1.0 mm pixels (a DICOM
    file's PixelSpacing is the scanner's own): review where the network segmented the heart at that
    size, info where the mask does not rest on it (the segmentation took the 1 x 1 mm of a file
    without orientation, as Analyze files and the QPerf examples store it, for no pixel size and
    estimated one from the LV pool, or the labels were given)."""
    from .models.perfusion_keyimage import pixel_size_known

    said = _placeholder_pixels_said("perfusion pixels are usually 1.4-3 mm")
    if analysis.model_info and pixel_size_known(analysis.study):
        return [_flag("PIXEL_SPACING_DEFAULT", REVIEW, f"{said}, and the network segmented the heart at that size: MBF per "
                                                       "gram does not depend on the pixel size, but the mask does (a 1.8 mm "
                                                       "phantom read as 1.0 mm lost a third of its myocardium from it); "
                                                       "check the contours, and the spacing against the scanner's (DICOM "
                                                       "PixelSpacing)", 1.0)]
    run = (analysis.model_info or {}).get("perfusion_segmentation")
    run = run if isinstance(run, dict) else {}
    how = str(run.get("pixel_mm_from") or "")
    estimate = f"; the segmentation took them as {float(run['pixel_mm'][0]):.2g} mm, {how}" \
        if how.startswith("estimated") and run.get("pixel_mm") else ""
    return [_flag("PIXEL_SPACING_DEFAULT", INFO, f"{said}{estimate}. MBF per gram does not depend on the pixel size; the "
                                                 "motion correction's reach and the mask-size check take the pixels as "
                                                 "1 mm", 1.0)]


def _perfusion_values_flags(analysis):
    """IMAGE_CLIPPED and IMAGE_QUANTISED of a perfusion series, read on the myocardium measured:
    its curves cut at the series' highest value (MAX_MYO_SHARE_AT_IMAGE_MAXIMUM), or its values
    in too few steps (MIN_PERFUSION_MYO_LEVELS)."""
    st = analysis.study
    myo = np.asarray(analysis.labels[analysis.reference_frame]) == MYO
    raw = np.asarray(st.images)
    if raw.ndim != 4 or raw.shape[1:] != myo.shape or myo.sum() < 20:
        return []
    flags = []
    # the frames fitted (motion-corrected, where breathing would carry clipped blood into the
    # ring of the first frame's mask); their values interpolated, so the ceiling is the file's
    curves = getattr(analysis, "_curves", None)
    fitted = np.asarray(curves[0]) if curves is not None and np.shape(curves[0])[1:] == raw.shape[1:] else raw
    ceiling, floor = float(raw.max()), float(raw.min())
    if ceiling > floor:
        share = float((fitted[:, myo] >= ceiling - CEILING_TOLERANCE * (ceiling - floor)).any(axis=0).mean())
        if share > MAX_MYO_SHARE_AT_IMAGE_MAXIMUM:
            flags.append(_flag("IMAGE_CLIPPED", REVIEW, f"{100 * share:.0f} % of the myocardium's pixels reach the series' "
                                                        "highest value, which tissue, enhancing a fraction of what blood "
                                                        "does, does not: the values were cut at a ceiling (a windowed or "
                                                        "12-bit export?), the tissue curves lose their peak and MBF reads "
                                                        "low (segments 5-23 % off in tests); export the series with its "
                                                        "full range", share))
    # the file's values (interpolation by the motion correction makes new ones)
    levels = grey_levels(raw[:, myo])
    if levels < MIN_PERFUSION_MYO_LEVELS:
        flags.append(_flag("IMAGE_QUANTISED", REVIEW, f"the myocardium's pixels take only {levels} distinct values over the "
                                                      "series (thousands in the real QPerf series): an export that "
                                                      "rounded the values (a Gd map stored in steps of 0.05 mmol/L?) "
                                                      "leaves the tissue's enhancement a few steps high, and its fits "
                                                      "follow the steps (segment MBF 7-36 % off in tests); export the "
                                                      "series with its full range", levels))
    return flags


def padding_slices(study, lost, labels):
    """The slices of ``lost`` ({frame: [slices]}) that are padding: lost in every frame given,
    one value throughout, in runs that reach an end of the stack, beside a slice whose labels
    hold no heart in any frame. A conversion that pads a stack to a fixed size writes such
    slices; they were flagged IMAGE_LOST with the volumes unchanged (a false alarm: probe 46),
    and the heart they border on none of cannot have reached into them."""
    n = study.n_slices
    if not lost or not labels or len(lost) < len(labels):
        return set()
    common = set.intersection(*(set(v) for v in lost.values()))
    run = set()
    for end, step in ((0, 1), (n - 1, -1)):
        k = end
        while k in common and 0 <= k < n:
            k += step
        beside = k
        if k != end and 0 <= beside < n and not any(np.any(np.asarray(lab)[beside] > 0) for lab in labels.values()):
            run |= set(range(min(end, beside - step), max(end, beside - step) + 1))
    return {k for k in run if all(np.ptp(study.images[t, k]) == 0 for t in lost)}


def lost_image_flags(analysis, lost, ed, es, damaged=None):
    """IMAGE_LOST (cine) where labelled frames hold an image without anatomy on a slice (one value
    throughout, or noise only: a lost or failed image, ``cine.lost_images``). The network finds
    nothing there: one black image at ES read EF 59 % for 24 %, one slice lost in every frame EDV
    45 % low, both with QC pass (probe 41). The measures now take such a slice's share from its
    neighbours and keep its frame from being ES, but the numbers are estimates. IMAGE_DAMAGED where
    an image holds anatomy but not its slice's (``cine.damaged_images``: half of it zeroed, another
    slice's image; EF 31-36 % for 27.9 % with QC pass, probe 43), measured alike. ``lost``:
    {frame: [slices]} of the labelled frames, the damaged ones (``damaged``) among them."""
    damaged = damaged or {}
    flags = []
    empty = {t: [k for k in slices if k not in damaged.get(t, [])] for t, slices in lost.items()}
    padding = padding_slices(analysis.study, empty, analysis.labels)
    if padding:
        empty = {t: [k for k in slices if k not in padding] for t, slices in empty.items()}
        flags.append(_flag("BLANK_END_SLICES", INFO, f"slice(s) {sorted(padding)} at the end of the stack are one value in "
                                                     "every frame (padding written by a conversion), beyond a slice "
                                                     "without heart: they hold nothing to measure", len(padding)))
    for code, images, what in (
            ("IMAGE_LOST", {t: v for t, v in empty.items() if v},
             "hold no anatomy (one value throughout, or noise only: a lost or failed image)"),
            ("IMAGE_DAMAGED", damaged,
             "differ from the same slice's other frames: outside the heart, where a breath-held cine does not change, "
             "or by a block of one value where the other frames hold tissue (part of the image lost, or another "
             "slice's image in its place)")):
        if images:
            flags.append(_image_flag(analysis.study, code, images, what, ed, es))
    return flags


def _image_flag(study, code, images, what, ed, es):
    by_slices = {}
    for t, slices in images.items():
        by_slices.setdefault(tuple(slices), []).append(t + 1)

    def frames_named(frames):
        return frames if len(frames) < 6 else f"{frames[:5]} and {len(frames) - 5} more"

    where = "; ".join(f"slice(s) {list(slices)} at frame(s) {frames_named(frames)}"
                      for slices, frames in list(by_slices.items())[:3])
    at = [name for name, t in (("ED", ed), ("ES", es)) if t in images]
    # an end slice has a neighbour on one side only: its share of the volume is not made up
    ends = any(k in (0, study.n_slices - 1) for slices in images.values() for k in slices)
    effect = (f"at {' and '.join(at)} the slices beside them share their volume, as for a missing slice"
              + (" (an end slice's has nothing beyond it to share it, so it is left out)" if ends else "")
              + ", so the volumes, EF and mass are estimates" if at
              else "those frames were not taken as ED or ES where enough frames without one remained")
    n = sum(len(v) for v in images.values())
    return _flag(code, REVIEW, f"{n} image(s) {what}, {where} (frames counted from 1): {effect}; re-export or "
                               "re-acquire them", n)


def _es_slice_offset_flags(study, ed, es):
    """ES_SLICES_OFFSET: most slices of the ES images look like the ED images of the slice beside
    them rather than their own (``geometry_check.slice_offset_between``). An ES volume written one
    slice off ED's (ACDC ES files shifted by one slice, images and labels alike) read ESV about
    20 % low and EF 6-11 points high with QC pass in 8 of 12 patients (probe 51); so shifted
    either way, all 80 ACDC studies are flagged, unshifted none. Judged on fields of view of
    SWAPPED_AXES_MIN_FOV_MM or more: on a crop the beating heart fills the image."""
    from .readers.geometry_check import SWAPPED_AXES_MIN_FOV_MM, slice_offset_between

    if ed is None or es is None or ed == es or study.n_slices < 3 or study.images.shape[0] <= max(ed, es):
        return []
    if min(_field_of_view_mm(study)) < SWAPPED_AXES_MIN_FOV_MM:
        return []
    offset, votes, judged = slice_offset_between(study.images[ed], study.images[es])
    if offset == 0 or votes < max(2, judged / 2):
        return []
    return [_flag("ES_SLICES_OFFSET", REVIEW, f"at ES {votes} of {judged} slices look like the ED image of the slice "
                                              # ED slice k best matches ES slice k + offset
                                              f"{'after' if offset < 0 else 'before'} them (ES slice k like ED slice k "
                                              f"{'+' if offset < 0 else '-'} 1) rather than their own: the ES volume looks "
                                              "written one slice off the ED volume (frames from files written apart?), so "
                                              "ESV and EF compare different levels; check the ES frame's slices", votes)]


def _one_frame_phase_flags(study, cine):
    """One frame's volumes are reported as ED's: said for review unless the file shows it is ED
    (an ACDC ES file given alone read its end-systolic 225 mL as "LV EDV", true 295, QC pass)."""
    known = study.provenance.get("frame_phase") or {}
    phase, how = known.get("phase"), known.get("how", "nothing in the file says which cardiac phase it shows")
    if phase == "ED":
        return []
    shown = f"LV {cine['lv_edv_ml']:.1f} mL" + (f", RV {cine['rv_edv_ml']:.1f} mL" if cine.get("rv_edv_ml") is not None else "")
    what = (f"is the {phase} frame ({how})" if phase == "ES" else f"is {phase}, neither ED nor ES ({how})" if phase
            else f"is of unknown cardiac phase ({how})")
    return [_flag("FRAME_NOT_ED" if phase else "FRAME_PHASE_UNKNOWN", REVIEW,
                  f"the one frame given {what}: the volumes reported as EDV ({shown}) are that frame's, and are EDV "
                  "only if it shows end-diastole; give the whole cine (or the ACDC patient folder) for EDV, ESV and EF",
                  cine["lv_edv_ml"])]


# A slice's cycle runs this share of the cardiac cycle or more (and 3 frames or more) off the
# stack's own, with a break of OUT_OF_STEP_BREAK_SHARE between neighbouring slices: its images
# belong to other phases than their frame numbers say. The Sunnybrook study's basal slices run
# 3 of 20 frames late (15 %, through-plane motion) in steps of a frame, its mid slices and the
# MetaImage cine's within 1 frame; DICOM cine slices whose pixels were moved 4 or 6 phases
# against their trigger delays ran 5-9 frames off and read EF 6-10 points low with QC pass, a
# MetaImage block moved 8 of 30 phases 7 off (probe 55)
OUT_OF_STEP_SHARE = 0.2
OUT_OF_STEP_MIN_SLICES = 2
OUT_OF_STEP_BREAK_SHARE = 0.15


def slices_out_of_step(labels, n_frames, ed):
    """[(slice, frames)]: slices whose LV blood-pool area over the cycle runs ``frames`` off most of
    the stack's (circularly; positive: late), OUT_OF_STEP_SHARE of the cycle or more, behind a
    break between neighbouring slices (each slice's shift read against the one before it, so a
    block of slices moved together is found whether it is the base, the middle or the apex); only
    slices whose ED pool is 30 % of the largest or more, and only when every frame is labelled.
    [] unless OUT_OF_STEP_MIN_SLICES or more slices are so off."""
    if n_frames < 8 or len(labels) < n_frames or ed not in labels:
        return []
    area = np.array([(np.asarray(labels[t]) == LV).sum(axis=(1, 2)) for t in range(n_frames)], float)   # (T, S)
    slices = [k for k in range(area.shape[1]) if area[ed, k] >= 0.3 * area[ed].max() and area[:, k].std() > 0]
    if len(slices) < 3:
        return []

    offsets, breaks = [0], []
    for a, b in zip(slices, slices[1:]):
        lag, match = _cycle_shift(area[:, b], area[:, a])
        step = lag if match >= 0.6 else 0   # a curve too unlike its neighbour's says nothing of its phase
        breaks.append(abs(step))
        offsets.append(_circular(offsets[-1] + step, n_frames))
    if max(breaks) < max(3, OUT_OF_STEP_BREAK_SHARE * n_frames):
        return []
    # the offset most slices share (within 2 frames) is the stack's; ties go to the middle slice's
    share = [sum(abs(_circular(o - c, n_frames)) <= 2 for o in offsets) for c in offsets]
    middle = len(slices) // 2
    reference = offsets[max(range(len(slices)), key=lambda i: (share[i], i == middle))]
    off = [(k, _circular(o - reference, n_frames)) for k, o in zip(slices, offsets)]
    off = [(k, lag) for k, lag in off if abs(lag) >= max(3, OUT_OF_STEP_SHARE * n_frames)]
    return off if len(off) >= OUT_OF_STEP_MIN_SLICES else []


def _cycle_shift(curve, reference):
    """(frames, correlation): the circular shift of ``curve`` that best matches ``reference``
    (two (T,) curves; positive: ``curve`` runs late)."""
    c = (curve - curve.mean()) / (curve.std() or 1.0)
    r = (reference - reference.mean()) / (reference.std() or 1.0)
    match = np.array([np.mean(np.roll(c, -lag) * r) for lag in range(len(c))])
    return _circular(int(np.argmax(match)), len(c)), float(match.max())


def _circular(lag, n):
    """``lag`` frames of an ``n``-frame cycle as the shortest way round (-n/2, n/2]."""
    lag = lag % n
    return lag if lag <= n // 2 else lag - n


def _out_of_step_flags(analysis):
    off = slices_out_of_step(analysis.labels, analysis.study.n_frames, (analysis.cine or {}).get("ed_frame"))
    if not off:
        return []
    said = ", ".join(f"{k} ({lag:+d})" for k, lag in off)
    return [_flag("SLICES_OUT_OF_STEP", REVIEW, f"slice(s) {said} run through the cardiac cycle that many frames off the "
                                                "rest of the stack (their LV blood pool is smallest and largest at other "
                                                "frames): their images belong to other phases than their frame numbers "
                                                "say (frames misassigned in the export or the conversion), so ED and ES "
                                                "mix phases across slices (EF 6-10 points low in tests); check the "
                                                "frame order of those slices", len(off))]


def ed_es_disagree_flag(ed, es, measured_by, largest, smallest, ef_between_pct, ef_given_pct):
    """ED_ES_DISAGREE: the ED and ES frames a file fixed (ACDC Info.cfg) are not where the LV
    volume ``measured_by`` says they are. One wording for the images' blood pool curve and for
    the network's LV volumes at the frames that curve points at (``Analysis``)."""
    return _flag("ED_ES_DISAGREE", REVIEW,
                 f"the ED and ES frames given ({ed + 1}, {es + 1}, counted from 1) are not where {measured_by} "
                 f"is largest and smallest (frames {largest + 1} and {smallest + 1}; EF between "
                 f"them {ef_between_pct:.0f} %): EF and ESV are measured between the frames given; "
                 "check the ED/ES frames (Info.cfg)", ef_given_pct)


def cine_flags(analysis):
    from .cine import damaged_images, lost_images

    c = analysis.cine or {}
    flags = []
    labels = analysis.labels
    ed, es = c.get("ed_frame"), c.get("es_frame")
    edv, esv, ef = c.get("lv_edv_ml"), c.get("lv_esv_ml"), c.get("lv_ef_pct")
    if edv is not None and esv is not None and esv > edv:
        flags.append(_flag("ED_ES_SWAPPED", REVIEW, f"LV ESV {esv:.1f} mL exceeds EDV {edv:.1f} mL (EF {ef:.0f} %): "
                                                    "ED and ES look swapped or mislabelled", ef))
    check = c.get("ed_es_check") or {}
    if check.get("disagree") and "ef_from_curve_pct" in check and not any(f["code"] == "ED_ES_SWAPPED" for f in flags):
        # ED/ES the file fixed (ACDC Info.cfg) that the cycle contradicts: EF between two
        # diastolic frames (16 % for 57 %) passed every range
        flags.append(ed_es_disagree_flag(ed, es, check["by"], check["largest"], check["smallest"],
                                         check["ef_from_curve_pct"], ef))
    if ed is not None and ed == es and len(labels) > 1:
        # two frames saved from one phase (a 4D file of ED twice): EF 0.0 with every range
        # skipped, as for a single frame (probe 46)
        flags.append(_flag("NO_CYCLE", REVIEW, f"the LV volume is the same in all {len(labels)} frames measured: they show "
                                               "no cardiac cycle (one phase saved more than once?), so ED and ES are "
                                               "undefined and the EF of 0 % and the ESV are no measurement; check that "
                                               "the file holds the ED and ES phases", len(labels)))
    if analysis.study.n_frames == 1 and edv is not None:
        flags += _one_frame_phase_flags(analysis.study, c)
    flags += _es_slice_offset_flags(analysis.study, ed, es)
    flags += _out_of_step_flags(analysis)
    at_edge = {}
    for name, t in (("ED", ed), ("ES", es if es != ed else None)):
        if t is not None and t in labels:
            images = analysis.study.images[t] if analysis.study.images.shape[0] > t else None
            for structure, slices in structures_at_edge(labels[t], images).items():
                at_edge.setdefault(structure, {})[name] = slices
    if at_edge:
        # a field of view that cuts the heart: a third of the LV cut away read EDV 15-25 % low,
        # mass 30-41 % low, EF 6-16 points off with QC pass (probe 46)
        where = "; ".join(f"{structure} at {', '.join(f'{n} slice(s) {v}' for n, v in phases.items())}"
                          for structure, phases in at_edge.items())
        flags.append(_flag("HEART_AT_IMAGE_EDGE", REVIEW, f"the heart reaches the edge of the image ({where}): the field of "
                                                          "view may cut it, and what lies outside is not measured, so "
                                                          f"the {' and '.join(at_edge)} volumes"
                                                          + (" and the LV mass" if "LV" in at_edge else "")
                                                          + " may be under-estimated; check the field of view",
                           sum(len(v) for phases in at_edge.values() for v in phases.values())))
    flags += label_anatomy_flags(analysis)
    lost = lost_images(analysis.study, sorted(labels), labels)
    flags += lost_image_flags(analysis, lost, ed, es, damaged_images(analysis.study, sorted(labels), labels))
    if ed is not None and ed in labels and analysis.study.images.shape[0] > ed:
        # the SNR is the bright pool's over the background: a dark-blood cine's says nothing of its noise
        snr = None if any(f["code"] == "IMAGES_NOT_BRIGHT_BLOOD" for f in flags) else _snr_of(analysis, ed)
        if snr is not None and snr < MIN_CINE_SNR:
            flags.append(_flag("IMAGE_NOISY", REVIEW, f"the images are noisy: LV blood-pool SNR {snr:.1f} at ED (80 ACDC "
                                                      f"studies: 26 or more), under {MIN_CINE_SNR:g}, where segmentations "
                                                      "lose the cavity's edge (ESV 30 % low at SNR 3 in tests); check the "
                                                      "contours", snr))
    flags += acquisition_flags(analysis)
    for key, what, unit, code in (("lv_edv_ml", "LV EDV", " mL", "LV_EDV_RANGE"), ("lv_esv_ml", "LV ESV", " mL", "LV_ESV_RANGE"),
                                  ("lv_ef_pct", "LV EF", " %", "LV_EF_RANGE"), ("lv_mass_g", "LV mass", " g", "LV_MASS_RANGE"),
                                  ("rv_edv_ml", "RV EDV", " mL", "RV_EDV_RANGE"), ("rv_ef_pct", "RV EF", " %", "RV_EF_RANGE")):
        if code in ("LV_EF_RANGE", "LV_ESV_RANGE") and any(f["code"] == "ED_ES_SWAPPED" for f in flags):
            continue
        if ed == es and code in ("LV_EF_RANGE", "LV_ESV_RANGE", "RV_EF_RANGE"):
            continue   # one frame: no ESV/EF to judge
        msg = _out_of(key, c.get(key), what, unit)
        if msg:
            flags.append(_flag(code, REVIEW, msg, c.get(key)))
    if c.get("rv_edv_ml") and edv:
        ratio = c["rv_edv_ml"] / edv
        lo, hi = RANGES["rv_lv_edv_ratio"]
        if not lo <= ratio <= hi:
            flags.append(_flag("RV_LV_RATIO", REVIEW, f"RV/LV EDV ratio {_shown_outside(ratio, lo, hi, 2)} is outside "
                                                      f"{lo:g}-{hi:g}", ratio))
    closed = []
    if ed is not None and es is not None and ed != es and ed in labels and es in labels:
        closed = basal_es_cavity_missing(labels[ed], labels[es], analysis.study.spacing, analysis.study)
        if closed:
            where = ", ".join(f"{k} ({share:.0%})" for k, share in closed)
            flags.append(_flag("ES_CAVITY_MISSING", REVIEW, f"at ES basal slice(s) {where} show myocardium but no LV blood "
                                                            "pool, though the ED cavity there is at least half its largest "
                                                            "(share in brackets): the base keeps its cavity (the outflow "
                                                            "tract; no such slice in 80 ACDC expert label maps), so the ES "
                                                            "cavity was labelled myocardium or drawn off the heart: ESV is "
                                                            "under-estimated and EF over-estimated; check the ES contours",
                                   len(closed)))
    # structures on the mid-ventricular slices of ED and ES
    for name, t in (("ED", ed), ("ES", es)):
        if t is None or t not in labels:
            continue
        lab = labels[t]
        lv_slices = np.flatnonzero(((lab == LV) | (lab == MYO)).sum(axis=(1, 2)) >= MIN_POOL_PIXELS)
        if lv_slices.size == 0:
            flags.append(_flag(f"LV_MISSING_{name}", REVIEW, f"no LV in any slice at {name}"))
            continue
        # the LV is one structure from base to apex: a slice without it between slices with it
        # is a slice the segmentation missed, and the volumes and mass silently lack it
        # a slice whose image was lost or damaged is said by IMAGE_LOST / IMAGE_DAMAGED, and its share
        # is taken from its neighbours
        lost_here = set(lost.get(t, []))
        gaps = sorted(set(range(int(lv_slices[0]), int(lv_slices[-1]) + 1)) - set(lv_slices.tolist()) - lost_here)
        # a slice with myocardium but no pool where the cavity runs on (at ED also towards the base)
        no_pool = [k for k in cavity_gaps(lab, analysis.study.spacing, analysis.study if name == "ED" else None)
                   if (name == "ED" or k not in dict(closed)) and k not in lost_here]
        if no_pool and not (name == "ES" and ed == es):
            flags.append(_flag(f"LV_CAVITY_GAP_{name}", REVIEW, f"at {name} slice(s) {no_pool} show myocardium but no LV blood "
                                                                "pool between slices that have one (at ED also towards the "
                                                                "base): the cavity runs from base to apex (no such slice in "
                                                                "160 ACDC expert label maps), so it was labelled myocardium "
                                                                "there, or the slice lies off the others (another breath-hold) "
                                                                "and was not segmented: volumes are under-estimated; check "
                                                                "that slice", len(no_pool)))
        no_ring = [k for k in myocardium_gaps(lab) if k not in lost_here]
        if no_ring:
            flags.append(_flag(f"MYO_GAP_{name}", REVIEW, f"at {name} slice(s) {no_ring} show an LV blood pool but no myocardium "
                                                          "between slices that have it: the pool is ringed by myocardium on "
                                                          "every slice (none without it in 160 ACDC expert label maps), so "
                                                          "its myocardium was erased or labelled as something else there: LV "
                                                          "mass misses that slice (one mid slice: 13 % in tests); check it",
                               len(no_ring)))
        if gaps:
            flags.append(_flag(f"LV_GAP_{name}", REVIEW, f"no LV blood pool or myocardium at {name} on slice(s) {gaps}, between "
                                                         f"slices {int(lv_slices[0])} and {int(lv_slices[-1])} that have them: "
                                                         "volumes and mass miss those slices; check the segmentation", len(gaps)))
        mid = lv_slices[len(lv_slices) // 4: len(lv_slices) - len(lv_slices) // 4] if lv_slices.size >= 3 else lv_slices
        # A structure is "missing" when no mid-ventricular slice has it: the RV thins out towards
        # the apex and basal slices at ES may hold atria, so one empty slice is anatomy, not error.
        # Hand-drawn labels may leave a structure out by their convention (LV contours only, the
        # epicardium at ED only, where the mass is measured: Sunnybrook's experts): the sample's own
        # contours were "review" for an RV never drawn (probe 60). A network labels all three.
        given = analysis.model_info is None
        for value, struct in ((LV, "LV blood pool"), (MYO, "myocardium"), (RV, "RV")):
            # QC reruns on every edit: the labels of every frame are scanned only for a hand-drawn
            # frame that lacks the structure
            if given and not (lab == value).any() and (
                    (value == MYO and name == "ES") or (value == RV and not any((m == RV).any() for m in labels.values()))):
                continue
            if not any((lab[k] == value).any() for k in mid):
                code = {LV: "LV", MYO: "MYO", RV: "RV"}[value] + f"_MISSING_MID_{name}"
                flags.append(_flag(code, REVIEW, f"{struct} missing at {name} on every mid-ventricular slice "
                                                 f"({[int(k) for k in mid]})"))
    # coverage: a ventricle measured on one or two slices is not a volume
    if ed is not None and ed in labels:
        on = np.nonzero(((labels[ed] == LV) | (labels[ed] == MYO)).any(axis=(1, 2)))[0]
        n_lv = int(on.size)
        length, width = lv_length_and_width(labels[ed], analysis.study.spacing)
        if length > MAX_LV_LENGTH_MM:
            flags.append(_flag("LV_LENGTH_RANGE", REVIEW, f"the LV is segmented over {length:.0f} mm of slices at ED "
                                                          f"(slices {int(on[0])}-{int(on[-1])}), where expert labels span 50-110 mm "
                                                          "(80 ACDC patients): frames stacked as slices, a wrong slice spacing, "
                                                          "or other structures labelled LV?", length))
        dip = cycle_along_slices(labels[ed])
        if dip is not None:
            flags.append(_flag("AXES_SWAPPED", REVIEW, f"at ED the LV blood pool is largest on the first and last slices and "
                                                       f"shrinks to {dip[1]:.0%} of that on slice {dip[0]} between them, as it "
                                                       "does over a heartbeat, never from base to apex: the file's slice and "
                                                       "time axes look swapped (a 4D image written as x, y, time, slice); "
                                                       "check the export", dip[1]))
        es_labels = labels.get(es) if es != ed else None
        cut = incomplete_coverage(labels[ed], analysis.study.spacing, es_labels) if n_lv >= MIN_SLICES_FOR_VOLUME else None
        if n_lv >= MIN_SLICES_FOR_VOLUME and MAX_LV_LENGTH_MM >= length > MAX_LENGTH_TO_WIDTH * width:
            flags.append(_flag("LV_LONG_FOR_ITS_WIDTH", REVIEW, f"at ED the LV spans {length:.0f} mm of slices for a {width:.0f} mm "
                                                                f"wide ventricle (ratio {length / width:.2f}; 0.84-1.51 with the "
                                                                "shipped network on 80 ACDC patients): are the slices further "
                                                                f"apart in the file ({analysis.study.spacing[2]:g} mm) than they "
                                                                "were acquired? Volumes and mass scale with the slice spacing; "
                                                                "check it against the scanner's", length / width))
        if cut is not None:
            flags.append(_flag("COVERAGE_INCOMPLETE", REVIEW, f"at ED {cut[0]}", cut[1]))
        if n_lv < MIN_SLICES_FOR_VOLUME:
            # a stack saved as (x, y, 1, slices) reads as one slice over "frames" (probe 72: EDV 1.8 mL)
            one = ("; the image holds a single slice: if its slices were saved along the 4th (time) axis, save it as "
                   "(x, y, slices) or (x, y, slices, time)" if analysis.study.n_slices == 1 and analysis.study.n_frames > 2
                   # slices placed by their positions (DICOM, also reopened in Slicer) are not a
                   # volume file's axes: the hint is for a file that has only its axes
                   and not (analysis.study.provenance or {}).get("slice_positions_mm") else "")
            flags.append(_flag("COVERAGE_SHORT", REVIEW, f"the LV appears on {n_lv} slice(s) at ED: base-to-apex coverage "
                                                         f"needs at least {MIN_SLICES_FOR_VOLUME}; volumes and mass are not "
                                                         f"whole-heart values{one}", n_lv))
    timing = c.get("ed_es_timing") or {}
    if timing.get("problems"):
        flags.append(_flag("ED_ES_TIMING", REVIEW, "the trigger delays place the frames taken as ED and ES elsewhere in the "
                                                   f"cycle: {'; '.join(timing['problems'])}; EF and SV are not the cycle's",
                           timing["es_ms"]))
    certainty = c.get("ed_es_certainty") or {}
    for phase in ("ed", "es"):
        if certainty and certainty.get("ragged"):
            from .cine import ragged_text

            said = ragged_text(certainty) if phase == "ed" else "uncertain as ED is: the LV volume curve is ragged"
            flags.append(_flag(f"{phase.upper()}_UNCERTAIN", REVIEW, f"{phase.upper()} frame {c.get(phase + '_frame') + 1}: "
                               f"{said}", certainty["ragged_pct"]))
        elif certainty and not certainty.get(f"{phase}_sure", True):
            frames = certainty[f"{phase}_candidates"]
            flags.append(_flag(f"{phase.upper()}_UNCERTAIN", REVIEW,
                               f"{phase.upper()} frame {c.get(phase + '_frame') + 1} is uncertain: frames {[f + 1 for f in frames]} in separate parts of the "
                               f"cycle are within {certainty['tolerance_pct']:g} % of EDV of it", len(frames)))
    from .cine import ED_ES_MIN_FRAMES, SPIKE_MIN_FRAMES, SPIKE_SHARE, stands_out_pct

    curve = c.get("lv_volume_curve_ml")
    study = analysis.study
    if curve is not None and 2 < len(curve) < ED_ES_MIN_FRAMES and not timing and \
            (study.ed_frame is None or study.es_frame is None):
        # a few frames over the cycle with nothing to place them (trigger delays): the largest
        # and smallest may miss ED or ES (5 of 20 phases: EF 36.7 for 52.1, nothing said of the
        # LV; probe 81)
        flags.append(_flag("ED_ES_SPARSE", REVIEW, f"only {len(curve)} frames over the cycle: ED and ES are the frames with the "
                                                   "largest and smallest LV volume among them, and the true ES (or ED) may fall "
                                                   "between frames, which makes EF and SV low; read a cine of the whole cycle "
                                                   "(20 or more phases) or give its ED and ES phases", len(curve)))
    if certainty and curve is not None and len(curve) >= SPIKE_MIN_FRAMES:
        v = np.asarray(curve, float)
        for phase, word in (("ed", "above"), ("es", "below")):
            # at the frame taken as ED (ES), which a file or a kept edit may fix elsewhere than the
            # curve's extreme (review)
            t = c[f"{phase}_frame"]
            spike = stands_out_pct(v, t) * (1 if phase == "ed" else -1)   # ED above its neighbours, ES below
            if spike >= 100 * SPIKE_SHARE:
                rest = np.delete(v, t)
                other = int(np.argmax(rest) if phase == "ed" else np.argmin(rest))
                other += other >= t
                flags.append(_flag(f"{phase.upper()}_SPIKE", REVIEW,
                                   f"{phase.upper()} frame {t + 1} (counted from 1) stands {spike:.0f} % of the volume curve's range "
                                   f"{word} the mean of its two neighbouring frames: one frame's segmentation error, not the "
                                   f"cycle's {'end-diastole' if phase == 'ed' else 'end-systole'}? Check that frame's contours; "
                                   f"without it {phase.upper()} would be frame {other + 1} ({v[other]:.1f} mL)", spike))
    if curve is not None and len(curve) >= 8:
        v = np.asarray(curve, float)
        smooth = np.convolve(np.r_[v[-1], v, v[0]], np.ones(3) / 3, mode="valid")
        depth = 0.1 * (v.max() - v.min())
        minima = [i for i in range(len(smooth)) if smooth[i] < smooth[i - 1] and smooth[i] < smooth[(i + 1) % len(smooth)]
                  and (v.max() - smooth[i]) > depth * 5]
        if len(minima) > 1:
            flags.append(_flag("VOLUME_CURVE_MINIMA", REVIEW, f"the LV volume curve has {len(minima)} deep minima "
                                                              f"(frames {[m + 1 for m in minima]}): one is expected per cycle", len(minima)))
    return flags


# The largest short-axis cross-section of the LV in 160 ACDC expert label maps (ED and ES): the
# myocardium 832 mm² or more, the blood pool 506 mm² or more. A perfusion mask far under that
# lies on a vessel or beside the heart (probe 27: a bright vessel taken for the LV, myocardium
# 146 mm², Dice 0.16, flagged only through the fit).
MIN_PERFUSION_MYO_MM2 = 400.0
MIN_PERFUSION_LV_MM2 = 200.0


def perfusion_mask_flags(analysis):
    """The segmentation a perfusion analysis measured, judged as anatomy: too small a myocardium
    or LV pool on every slice, blood inside the myocardium, or (the network's) heart not found
    from the bolus."""
    flags = []
    st = analysis.study
    lab = np.asarray(analysis.labels[analysis.reference_frame])
    pixel_mm2 = float(st.spacing[0]) * float(st.spacing[1])
    myo = float((lab == MYO).sum(axis=(1, 2)).max()) * pixel_mm2
    pool = float((lab == LV).sum(axis=(1, 2)).max()) * pixel_mm2
    if myo < MIN_PERFUSION_MYO_MM2 or pool < MIN_PERFUSION_LV_MM2:
        flags.append(_flag("PERFUSION_MASK_SMALL", REVIEW, f"the myocardium measured covers at most {myo:.0f} mm² of a slice "
                                                           f"and the LV blood pool {pool:.0f} mm² (160 ACDC label maps: 830 "
                                                           "and 500 mm² or more on their largest slice): the mask may lie on "
                                                           "a vessel or beside the heart; check the contours", myo))
    flags += blood_in_the_myocardium_flags(analysis)
    # the run's own record (the model info): the study's provenance, stamped on Slicer's input
    # node, kept a run's "not found" for the runs after it; read there only for model infos
    # whose record has no such key (scenes saved before session 46)
    run = (analysis.model_info or {}).get("perfusion_segmentation")
    reason = run["heart_not_found"] if isinstance(run, dict) and "heart_not_found" in run \
        else (st.provenance or {}).get("heart_not_found")
    if reason and analysis.model_info:
        flags.append(_flag("HEART_NOT_FOUND", REVIEW, f"the heart was not found with confidence from the bolus ({reason}): "
                                                      "the network segmented the whole field, where a chest wall or a vessel "
                                                      "can be taken for the myocardium; check the contours"))
    return flags


# A myocardial pixel enhances like blood when, at its slice's LV pool peak, it has risen by
# ``perfusion_refine.blood_fraction_for`` (the share the network's ring is trimmed with: a quarter
# in Gd, half in signal) of the pool's rise or more. The shipped network's masks: 0-2.5 % of a
# slice's myocardium (QPerf stress 2.3 %, rest 0.2 %; 14 synthetic full-field series 0-2.5 %,
# phantoms 0 %); a one-pixel rim of the LV pool painted as myocardium: 5.3-11.9 %, and segment MBF
# up to 37 % high with QC "pass" (probe 30).
MAX_BLOOD_LIKE_SHARE = 0.05
MIN_BLOOD_LIKE_PIXELS = 8


def blood_in_the_myocardium_flags(analysis):
    """MYO_BLOOD_LIKE where a slice's myocardial mask holds pixels whose curves enhance like the
    LV pool's (blood painted or drawn into the ring, an endocardial contour inside the cavity),
    on the motion-corrected curves the MBF was fitted on. Only the pool's and the ring's pixels
    are read: QC runs again on every handle drag."""
    from .errors import CardiacInputError
    from .models.perfusion_refine import blood_fraction_for
    from .perfusion.mbf import find_foot, subtract_baseline

    curves = getattr(analysis, "_curves", None)
    if curves is None:
        return []
    images, aif, grid_s = curves
    lab = np.asarray(analysis.labels[analysis.reference_frame])
    try:
        foot = find_foot(aif)
    except CardiacInputError:   # an AIF with no bolus to find: nothing to judge the pixels by
        return []
    rise = blood_fraction_for(analysis.study.units)
    worst = None
    for k in range(lab.shape[0]):
        myo, pool = lab[k] == MYO, lab[k] == LV
        if myo.sum() < MIN_BLOOD_LIKE_PIXELS or pool.sum() < 4:
            continue
        pool_curve = subtract_baseline(images[:, k][:, pool].mean(1), foot)
        peak = int(np.argmax(pool_curve))
        if not pool_curve[peak] > 0:
            continue
        ring = subtract_baseline(images[:, k][:, myo].T, foot)   # (pixels, frames)
        blood = int((ring[:, peak] >= rise * pool_curve[peak]).sum())
        share = blood / int(myo.sum())
        if blood >= MIN_BLOOD_LIKE_PIXELS and share > MAX_BLOOD_LIKE_SHARE and (worst is None or share > worst[1]):
            worst = (k, share, blood, int(myo.sum()), peak)
    if worst is None:
        return []
    k, share, blood, total, peak = worst
    # the curves lie on a regular time grid (irregular heartbeats: half the median interval), so
    # the peak is named by its time and the acquired frame nearest it (probe 34: "frame 41" of 60)
    peak_s = float(grid_s[peak])
    times = analysis.study.frame_times_s
    frame = int(np.argmin(np.abs(np.asarray(times) - times[0] - peak_s))) if times is not None else peak
    # Exact contours on a breathing phantom were flagged too (probe 32): where the registration
    # leaves the pool's edge a pixel off at the peak, the ring's curves hold blood all the same,
    # so the flag stands and the message names both causes and the frame to look at.
    return [_flag("MYO_BLOOD_LIKE", REVIEW, f"on slice {k}, {blood} of the {total} myocardial pixels ({100 * share:.0f} %) "
                                            f"enhance like blood (at the LV pool's peak, frame {frame + 1}, {peak_s:.1f} s "
                                            f"after the first, {100 * rise:.0f} % of its rise or more): blood inside the "
                                            "myocardial contour, drawn there or moved there by breathing the motion "
                                            "correction did not remove, raises MBF; check the endocardial contour and "
                                            f"the registration around frame {frame + 1}",
                  round(share, 3))]


# frames moved this far onto the mask are named as a cause of poor fits: the breathing phantom's
# 2.3-2.9 px (4-5.3 mm) left segment MBF 7-14 % off (median, network masks) with unreliable fits
# where the still series' fits were all reliable (session 22)
BREATHING_NOTE_MM = 3.0


def _breathing_note(study):
    """'; the frames moved ... with breathing' where the motion correction moved a slice's frames
    by ``BREATHING_NOTE_MM`` or more: pixels at the mask's edge then mix tissue and blood in
    some frames whatever the registration, and a user checking the fits should look there."""
    motion = (study.provenance or {}).get("motion") or {}
    shifts = [float(v) for v in motion.get("max_shift_px") or []]
    if not shifts:
        return ""
    mm = max(shifts) * float(min(study.spacing[0], study.spacing[1]))
    if mm < BREATHING_NOTE_MM:
        return ""
    return (f"; the frames moved up to {mm:.1f} mm with breathing (slice {int(np.argmax(shifts))}; corrected onto the "
            "mask, but pixels at its edge still mix tissue and blood in some frames)")


def _repeated_frame_flags(study):
    return _repeated_flags("FRAMES_REPEATED", "frame(s)", repeated_frames(study.images),
                           "hold the same images in every slice: a frame written twice by the export or a conversion. The "
                           "scanner never acquires the same image twice (noise alone differs), so every frame after the "
                           "copy is read one frame interval late (MBF 17-39 % off in tests); check the series' frames and "
                           "their times")


def _scale_step_flags(study):
    steps = (study.provenance or {}).get("scale_steps") or []
    if not steps:
        return []
    said = "; ".join(f"frames {s['frames'][0] + 1}-{s['frames'][1] + 1} read x{s['factor']:.2f}" for s in steps)
    return [_flag("FRAMES_SCALE_STEP", REVIEW, f"{said} (counted from 1) against the frames before them, every tissue "
                                               "alike: a gain or scaling that changed part-way through the series (or a "
                                               "series joined from two exports), scaled back to the series' scale. The "
                                               "factor is estimated from the body's signal and MBF moves with it (on a "
                                               "phantom, 1 % in it moved MBF up to 8 %); check the series' scaling",
                  len(steps))]


# a segment whose pixels' MBF spreads more than this about its median (robust, relative) is
# flagged MBF_SEGMENT_SPREAD: noisy-phantom segments read over 15 % off spread 0.40-2.6 (every such study flagged at 0.45), the
# real QPerf segments 0.20-0.36 (probe 73)
MAX_PIXEL_SPREAD = 0.45


def perfusion_level_flags(analysis):
    """The AHA levels of a perfusion series come from its slice count (one is mid, two are basal
    and mid, three are basal, mid and apical) unless a paired series' positions read them. Two
    slices of an exam that had three, or three with a missing one between them, put the values in
    another ring's segments: a series whose mid slice was lost reported the apex as segments 7-12,
    one whose basal slice was lost shifted every level, with no word of slices or levels (probe 82)."""
    st = analysis.study
    if st.n_slices < 2 or analysis.levels_by_positions:
        return []
    positions = (st.provenance or {}).get("slice_positions_mm")
    positions = np.sort(np.asarray(positions, float)) if positions is not None and len(positions) == st.n_slices else None
    if st.n_slices == 2:
        apart = abs(float(positions[1] - positions[0])) if positions is not None else None
        return [_flag("PERFUSION_LEVELS_BY_COUNT", REVIEW,
                      f"2 slices{f' ({apart:.0f} mm apart)' if apart is not None else ''}: their AHA levels are taken as basal and mid from their count, but "
                      "a perfusion exam usually has 3 (base, mid, apex): if a slice is missing, their values are in another "
                      "ring's segments (two slices 40 mm or more apart are more likely base and apex); check which levels "
                      "they are", apart if apart is not None else 2)]
    if positions is None:
        return []
    from .readers.geometry_check import GAP_FACTOR

    gaps = np.diff(positions)
    step = float(np.min(gaps))   # the planned spacing: with 3 slices a median is half the missing slice's gap
    wide = [k for k, g in enumerate(gaps) if step > 0 and g > GAP_FACTOR * step]
    if not wide:
        return []
    said = ", ".join(f"{gaps[k]:.0f} mm between the slices at {positions[k]:.0f} and {positions[k + 1]:.0f} mm" for k in wide)
    return [_flag("PERFUSION_SLICE_GAP", REVIEW,
                  f"{said}, where the others are {step:.0f} mm apart: a slice missing? The AHA levels are given by the "
                  f"slices' count ({st.n_slices} split base to apex in thirds), so a missing slice shifts the levels after it; "
                  "check which levels the slices are", float(gaps[wide].max()))]


# Share of myocardial pixels whose Fermi τ0 sits at its lower bound 0 from which the model's shape
# is taken not to fit: the real QPerf series 49-51 %, the phantom 12 % (noise 0.005) to 38 %
# (0.02); tissue made by a two-compartment exchange model 100 %, with MBF 20-46 % low, r² 0.99 and
# QC pass (probe 84)
TAU0_AT_ZERO_MAX = 0.9


def perfusion_flags(analysis):
    p = analysis.perfusion or {}
    flags = _repeated_slice_flags(analysis.study) + _repeated_frame_flags(analysis.study) + _scale_step_flags(analysis.study)
    flags += perfusion_level_flags(analysis) + perfusion_acquisition_flags(analysis)
    st = analysis.study
    flags += perfusion_mask_flags(analysis) + labels_off_the_image_flags(analysis)
    g = p.get("global_mbf_ml_min_g")
    msg = _out_of("mbf_ml_min_g", g, "global MBF", " mL/min/g")
    if msg:
        flags.append(_flag("MBF_RANGE", REVIEW, msg, g))
    bad = [s["id"] for s in p.get("segments", []) if s.get("mbf_ml_min_g") is not None and _out_of("mbf_ml_min_g", s["mbf_ml_min_g"], "", "")]
    if bad:
        flags.append(_flag("MBF_SEGMENT_RANGE", REVIEW, f"MBF outside {RANGES['mbf_ml_min_g'][0]:g}-{RANGES['mbf_ml_min_g'][1]:g} "
                                                        f"mL/min/g in segment(s) {bad}", len(bad)))
    from .perfusion.mbf import MAX_UNRELIABLE_FRACTION, R2_MIN

    unreliable = [s for s in p.get("segments", []) if s.get("fit_unreliable")]
    if unreliable:
        shown = ", ".join(f"{s['id']} ({100 * s['unreliable_fraction']:.0f} %)" for s in unreliable)
        flags.append(_flag("MBF_SEGMENT_UNRELIABLE", REVIEW,
                           f"segment(s) {shown}: more than {100 * MAX_UNRELIABLE_FRACTION:.0f} % of their pixels fit the "
                           "model unreliably (delay at the search range's end, flow or shape on a bound, or r² under "
                           f"{R2_MIN:g}): their MBF rests on fits that are not measurements; check the AIF and the mask there"
                           + _breathing_note(st), len(unreliable)))
    spread = [s for s in p.get("segments", []) if (s.get("pixel_spread") or 0) > MAX_PIXEL_SPREAD
              and not s.get("fit_unreliable")]
    if spread:
        # noisy pixel fits spread widely and their median strays: perfusion phantoms at 0.01-0.02
        # mmol/L noise read low-flow segments 15-25 % off with QC pass (probe 73); real QPerf
        # segments spread 0.20-0.36
        shown = ", ".join(f"{s['id']} (±{100 * s['pixel_spread']:.0f} %)" for s in spread)
        flags.append(_flag("MBF_SEGMENT_SPREAD", REVIEW,
                           f"segment(s) {shown}: their pixels' MBF spreads more than ±{100 * MAX_PIXEL_SPREAD:.0f} % about "
                           "its median (interquartile range as a standard deviation), from noise or a defect covering "
                           "part of the segment; the median is then uncertain (noisy phantoms: 15-25 % off); read the "
                           "MBF map there", len(spread)))
    fit = analysis.mbf_fit or {}
    if "r2" in fit and np.size(fit["r2"]):
        r2 = np.asarray(fit["r2"], float)
        poor = float(np.mean(~(r2 >= R2_MIN)))
        if poor > 0.3:
            flags.append(_flag("MBF_FIT_POOR", REVIEW, f"{100 * poor:.0f} % of myocardial pixels fit the Fermi model poorly "
                                                       f"(r² < {R2_MIN}): check the AIF, timing and mask", poor))
    if "F" in fit and np.size(fit["F"]):
        from .perfusion.mbf import F_BOUNDS

        f = np.asarray(fit["F"], float)
        share = float(np.mean((f >= F_BOUNDS[1] * 0.999) | (f <= F_BOUNDS[0] + 1e-9)))
        if share > 0.1:
            flags.append(_flag("MBF_AT_BOUND", REVIEW, f"{100 * share:.0f} % of myocardial pixels have flow at a bound of the "
                                                       f"fit (0 or {60 * F_BOUNDS[1] / analysis.density:.0f} mL/min/g): "
                                                       "those are limits, not measurements", share))
    if "tau0_at_zero" in fit and np.size(fit["tau0_at_zero"]):
        share = float(np.mean(np.asarray(fit["tau0_at_zero"], bool)))
        if share >= TAU0_AT_ZERO_MAX:
            flags.append(_flag("MBF_SHAPE_UNFIT", REVIEW, f"in {100 * share:.0f} % of myocardial pixels the Fermi fit put "
                                                          "τ0, the residue's plateau, at its bound 0: the tissue curves have "
                                                          "a shape the Fermi model cannot follow, and MBF may be low although "
                                                          "every fit looks good (two-compartment tissue on a phantom: 20-46 % "
                                                          "low); read the semi-quantitative indices beside it", share))
    if "at_delay_edge" in fit and np.size(fit["at_delay_edge"]):
        share = float(np.mean(np.asarray(fit["at_delay_edge"], bool)))
        if share > 0.2:
            flags.append(_flag("MBF_DELAY_EDGE", REVIEW, f"{100 * share:.0f} % of myocardial pixels have their best delay at "
                                                         "the end of the search range", share))
    flags += unmeasured_segment_flags(analysis)
    if "mpr" in p:
        m = (p["mpr"] or {}).get("global")
        msg = _out_of("mpr", m, "global MPR", "")
        if msg:
            flags.append(_flag("MPR_RANGE", REVIEW, msg, m))
    flags += roles_swapped_flags(analysis) + rest_other_day_flags(analysis) + rest_slices_elsewhere_flags(analysis)
    # the myocardium the analysis measured (network or given labels), on the frames it fitted
    myo = analysis.labels[analysis.reference_frame] == MYO
    curves = analysis._curves
    images = curves[0] if curves is not None and st.aif is not None and curves[0].shape[0] == len(st.aif) else st.images
    flags += aif_flags(st, myo, images, lv=analysis.labels[analysis.reference_frame] == LV)
    return flags


# A stress series whose frames (one per heartbeat or two) come this much slower than the rest's,
# with a reserve under 1: the two given the wrong way round, neutral descriptions (MPR 0.80 for
# 1.30 at the range's edge, unflagged; probe 82). Stress (adenosine, regadenoson) raises the heart
# rate; alone a slower stress is no proof (a fast heart is read every other beat), so the
# inverted reserve must come with it.
SLOWER_STRESS_FACTOR = 1.15


def slower_stress_text(analysis):
    """Why stress and rest look swapped by their heart rates (the frame intervals), or None."""
    rest = getattr(analysis, "rest", None)
    mpr = ((analysis.perfusion or {}).get("mpr") or {}).get("global")
    if rest is None or mpr is None or not np.isfinite(mpr) or mpr >= 1.0:
        return None
    stress_dt, rest_dt = analysis.study.median_frame_interval_s, rest.study.median_frame_interval_s
    if not stress_dt or not rest_dt or stress_dt <= SLOWER_STRESS_FACTOR * rest_dt:
        return None
    return (f"the reserve is {mpr:.2f} (under 1) and the stress series' frames come {stress_dt:.2f} s apart, slower than "
            f"the rest's {rest_dt:.2f} s, where stress raises the heart rate (unless the stress heart was read every "
            "other beat)")


def rest_other_day_flags(analysis):
    """REST_OTHER_DAY where the rest series' StudyDate is another day than the stress's: a rest
    from a prior exam of the same patient was paired without a word (probe 82). Stress and rest
    are one session's; a two-day protocol is possible, so flagged for review, not refused."""
    from .study import days_apart

    rest = getattr(analysis, "rest", None)
    days = days_apart(analysis.study, rest.study) if rest is not None else None
    if not days:
        return []
    dates = [str((s.provenance or {}).get("study_date")) for s in (analysis.study, rest.study)]
    dates = [f"{d[:4]}-{d[4:6]}-{d[6:8]}" for d in dates]
    return [_flag("REST_OTHER_DAY", REVIEW, f"the rest series was acquired on {dates[1]}, the stress on {dates[0]} ({days} "
                                            f"day{'s' if days > 1 else ''} "
                                            "apart): the reserve (MPR, MPRI) divides one day's stress by another day's rest; "
                                            "check that this rest series belongs to this exam", days)]


def rest_slices_elsewhere_flags(analysis):
    """REST_SLICES_ELSEWHERE where stress and rest slices cannot be read at shared places
    (``geometry.stacks_apart``) and the AHA levels were not read from them: each series' levels
    come from its own slice order, and the reserve of a segment may divide one level by another
    (a rest stack one slice off read with QC pass; probe 93)."""
    from .geometry import stacks_apart

    rest = getattr(analysis, "rest", None)
    if rest is None or getattr(analysis, "levels_by_positions", False) or getattr(rest, "levels_by_positions", False):
        return []
    why = stacks_apart([analysis.study, rest.study], names=("stress", "rest"))
    if why is None:
        return []
    return [_flag("REST_SLICES_ELSEWHERE", REVIEW, f"stress and rest slices do not lie at the same places: {why}. The AHA "
                                                   "levels of each come from its own slice order, so a segment's reserve "
                                                   "(MPR, MPRI) may divide one level's stress by another level's rest; "
                                                   "check that both series are of one exam and cover the same levels")]


def roles_swapped_flags(analysis):
    """STRESS_REST_SWAPPED where the series read as the stress is described as a rest series, or
    the one given with --rest as a stress series: the two given the wrong way round read the
    reserve inverted (MPR 0.87 for 1.15, QC pass; probe 56), and an inverted MPR within the
    plausible range says nothing of itself."""
    from .readers.dicom import role_named

    rest = getattr(analysis, "rest", None)
    if rest is None:
        return []
    said = {name: (s.provenance or {}).get("series_description") or ""
            for name, s in (("stress", analysis.study), ("rest", rest.study))}
    wrong = [f"the {name} series is described {text!r}" for name, text in said.items()
             if role_named(text) not in (None, name)]
    slower = slower_stress_text(analysis) if not any(role_named(text) for text in said.values()) else None
    if slower:   # described neutrally: the descriptions confirm or contradict the roles better than the heart
        wrong = [slower]
    if not wrong:
        return []
    return [_flag("STRESS_REST_SWAPPED", REVIEW, f"{' and '.join(wrong)}: stress and rest given the wrong way round? "
                                                 "MBF reserve (MPR, MPRI) is then inverted; give the stress series as "
                                                 "the input and the rest with --rest", len(wrong))]


def unmeasured_segment_flags(analysis):
    """SEGMENTS_UNMEASURED where an acquired slice's AHA segments have no value: its mask holds no
    LV pool or myocardium (the network missed the slice), or part of its ring is missing. The
    global value then covers only the rest of the heart, which the number alone does not show."""
    from .aha import segments_in_level

    acquired = analysis.acquired_levels
    p = analysis.perfusion or {}
    segments = p.get("segments") or (p.get("semiquantitative") or {}).get("segments") or []
    if not acquired or not segments:
        return []
    value_key = "mbf_ml_min_g" if p.get("segments") else "relative_upslope"
    expected = sorted({sid for level in set(acquired.values()) for sid in segments_in_level(level)})
    measured = {s["id"] for s in segments if s.get(value_key) is not None and np.isfinite(s[value_key])
                and (s.get("n_pixels") is None or s["n_pixels"] > 0)}
    missing = [sid for sid in expected if sid not in measured]
    thin = _thin_segment_flags(segments, measured)
    if not missing:
        return thin
    unsegmented = [f"slice {k} ({level})" for k, level in sorted(acquired.items()) if k not in analysis.levels]
    why = (f"{', '.join(unsegmented)} {'has' if len(unsegmented) == 1 else 'have'} no LV blood pool or myocardium in the mask"
           if unsegmented else "the myocardial ring in the mask does not reach them")
    return [_flag("SEGMENTS_UNMEASURED", REVIEW, f"AHA segment(s) {missing} not measured: {why}; the global value covers "
                                                 f"{len(expected) - len(missing)} of the {len(expected)} segments acquired. "
                                                 "Check and correct the contours", len(missing))] + thin


# A segment measured from under this share of the median measured segment's pixels has lost most
# of its wall from the mask (QPerf's segments: 62-83 pixels each, the phantom's about 70)
SEGMENT_FEW_PIXELS_SHARE = 0.25


def _thin_segment_flags(segments, measured):
    """SEGMENTS_FEW_PIXELS where a segment's value comes from a sliver of wall: most of it erased
    by an edit or missed by the network (probe 62: a segment's wall erased left 4 of 71 pixels,
    MBF 2.26 from them and no flag). Its value is then the sliver's, not the segment's."""
    counts = {s["id"]: s["n_pixels"] for s in segments if s["id"] in measured and s.get("n_pixels")}
    if len(counts) < 3:
        return []
    typical = float(np.median(list(counts.values())))
    thin = sorted(sid for sid, n in counts.items() if n < SEGMENT_FEW_PIXELS_SHARE * typical)
    if not thin:
        return []
    each = ", ".join(f"{sid} ({counts[sid]} px)" for sid in thin)
    return [_flag("SEGMENTS_FEW_PIXELS", REVIEW, f"AHA segment(s) {each} measured from under "
                                                 f"{SEGMENT_FEW_PIXELS_SHARE:.0%} of a segment's usual {typical:.0f} "
                                                 "pixels: most of their wall is missing from the mask, so their value "
                                                 "is a sliver's. Check and correct the contours", len(thin))]


# A whole first pass ends with the AIF at 10-30 % of its peak (recirculation; the real QPerf and
# aif_detection series end at 11-22 %). 0.6 let a series cut with the AIF at 40-56 % of its peak
# pass with MBF +5 to +8 % on every segment (probe round 17: 17-18 frames at 0.85 s).
AIF_END_FRACTION_MAX = 0.4
# ... and a series must run at least this many AIF first-pass widths (FWHM) past the AIF's peak
AIF_MIN_WIDTHS_AFTER_PEAK = 1.75
# Frames across the AIF's first pass (its full width at half maximum) below which the Fermi fit
# cannot recover MBF, and the frame interval past which no AIF is sampled well enough. Fermi
# phantom (AIF FWHM 5.6 s, 1 s tissue delay, seeds 0-3, stress and rest; `docs/algorithms.md`):
# median segment error 2-4 % at 1.0 s frames (5+ frames per FWHM), 2-7 % at 1.5 s, 3-10 % at
# 1.8 s, 9-23 % at 2.0 s and 11-35 % at 2.3 s (2.2-2.5 frames per FWHM), every fit "good" and
# no other flag; a sharper real AIF (QPerf: FWHM 3.1-3.7 s) crosses the same line at shorter
# intervals, hence frames per FWHM as well as seconds. The median hides single segments: with a
# dual-sequence AIF at 1.4-1.6 s frames (3.3-3.95 frames per FWHM) the worst segment read 14-31 %
# off with QC pass, at 1.2 s (4.3-4.6 frames) within 12 % (probe 102, 3 seeds each), so frames
# over 1.3 s apart are flagged whatever the width. By frames alone that line would also flag the
# real QPerf rest series taken at 1.0 s (every beat at 60/min: 3.7-3.9 frames, segments within
# 5.5 % of the 0.5 s reading), while the stress one at 1.0 s (3.0-3.2 frames) is 12-22 % off
# (review of session 46).
AIF_MIN_FRAMES_PER_FWHM = 3.5
# One frame interval in five or more off their median by over this share of it (atrial
# fibrillation, 0.6-1.2 s: 0.27; +-10 % jitter: 0.08)
IRREGULAR_HEARTBEATS_SPREAD = 0.2
# ... with this many frames or more across the AIF's half-peak width; with fewer, the allowed
# spread shrinks in proportion (coarse frames: each one carries more of the first pass' shape)
IRREGULAR_FRAMES_PER_FWHM = 8.0
AIF_MAX_FRAME_INTERVAL_S = 1.3
# Whole-second acquisition times (``dicom.coarse_clock_drift_s``) that stray further than this
# from evenly spaced frames (around a quadratic: a rate that changes steadily is no irregularity):
# an even rhythm cut to the second strays up to 1.0 s, a steady rate change 0.9-1.3 s, RR jitter
# of +-0.1 s up to 1.6 s; atrial fibrillation (RR 0.5-1.5 s, 40 draws of 60 beats) 1.4-3.6 s,
# median 2.2, where MBF read 26-44 % low with QC pass (probe 102; review of session 46)
COARSE_CLOCK_DRIFT_S = 1.75
# An arterial first pass is seconds wide at half its peak (QPerf examples: 4.0 s at rest and
# stress; the phantom's 5-6 s). Under this the clock is too fast: a frame interval read from a
# per-slice time or given too short, which scales MBF up by the same factor.
AIF_MIN_FWHM_S = 2.0

# A given AIF (a file, a QPerf entry) is the blood the images show in their own LV: once the first
# pass is over the two hold the same concentration (blood mixed, neither sequence saturating), so
# the images' eroded LV pool over the AIF, both above their pre-contrast level, in the last frames
# after the AIF's first pass is about 1. Intact: phantoms seeds 0-5 stress and rest 1.00-1.01, the
# real QPerf rest 0.80 (the mask's edge mixes in myocardium) and stress 1.02. An AIF file scaled x2
# or x0.5, images rescaled x1.5 or x2 (a scl_slope), another patient's AIF: 0.50-0.59 or 1.53-2.0,
# and MBF 31-102 % off with QC "pass" (probe 52, /tmp/s28/aif_ratio*.py); an AIF file zeroed after
# its first pass: MBF -26 %. The range was 0.6-1.35 until an AIF file x1.5-1.6 read 0.63-0.67 and
# MBF 33-37 % low with QC "pass" (probe 108; MPR 4.42 for 2.99 with the rest's AIF x1.5): the low
# end now as near as the intact series allow with a margin (QPerf rest 0.80 against 0.7), an AIF
# 1.45x its level flagged. An AIF too low is caught at the peak first (AIF_PEAK_RATIO_MAX: x0.87).
AIF_LATE_RATIO_RANGE = (0.7, 1.35)
# ... and at the bolus peak the images' blood cannot enhance much more than the AIF (their own
# sequence saturates as much or more): intact 0.74-1.0; QPerf's AIF read as if from a saturated
# LV: 1.86, MBF +71 % with QC "pass" (probe 52)
AIF_PEAK_RATIO_MAX = 1.15
# The last frames compared, and the share of its peak an AIF's tail must keep to be compared
AIF_LATE_FRAMES = 10
AIF_TAIL_MIN_FRACTION = 0.02

# Noise of an AIF, from its second differences (robust: the bolus' own curvature is a few frames
# out of many), as a share of its peak rise. Intact: QPerf 0.5 %, the three real low-resolution
# AIF series' eroded pools (8-40 pixels) 0.2-1.1 %, phantoms 0.1-0.6 %. Noise added to the phantom's
# AIF at 2 % of its peak read MBF up to 13 % off, at 3-5 % up to 23 % (/tmp/s28/aif_noise.py); an
# AIF file with 7.5 % read -37 % with QC "pass" (probe 52).
AIF_NOISE_MAX = 0.02
# A bolus only rises from its foot to its peak: intact AIFs (QPerf, the real AIF series, phantoms
# with noise) never fall on the way; two upslope frames swapped fell 18 % of the peak and read MBF
# +29 % with QC "pass" (probe 52)
AIF_UPSLOPE_DIP_MAX = 0.1


def _pre_contrast_level(curve, foot):
    """A curve's level before the AIF's foot (its first frame when the foot is at 0)."""
    return float(np.median(np.asarray(curve, float)[:max(1, foot)]))


def aif_noise_fraction(aif, foot):
    """Frame-to-frame noise of the AIF (the MAD of its second differences, as a standard deviation)
    over its rise above the pre-contrast level."""
    aif = np.asarray(aif, float)
    rise = float(aif.max()) - _pre_contrast_level(aif, foot)
    if aif.size < 8 or rise <= 0:
        return 0.0
    second = np.diff(aif, 2)
    return float(1.4826 * np.median(np.abs(second - np.median(second))) / np.sqrt(6.0) / rise)


def upslope_dip(aif, foot):
    """``(drop, frame)``: the largest fall between two frames from the AIF's foot to its peak, as
    a share of its rise, and the frame it falls from; None without an upslope."""
    aif = np.asarray(aif, float)
    peak = int(np.argmax(aif))
    rise = float(aif[peak]) - _pre_contrast_level(aif, foot)
    steps = np.diff(aif[foot:peak + 1])
    if not steps.size or rise <= 0:
        return None
    i = int(np.argmin(steps))
    return max(0.0, -float(steps[i])) / rise, foot + i


def aif_against_lv_blood(aif, images, lv, foot):
    """The images' own LV blood pool against a given AIF: ``(late, peak)``, the pool's enhancement
    over the AIF's in the last frames after the AIF's first pass (up to ``AIF_LATE_FRAMES``; None
    with fewer than 3 such frames or neither curve enhanced there; inf where only the pool is) and
    at the peaks. ``images`` (T, S, R, C) as analysed, ``lv`` (S, R, C) the LV blood pool label,
    ``foot`` the AIF's (``mbf.find_foot``): the frames before it are both curves' baseline."""
    from .perfusion.bolus import aif_from_lv

    aif = np.asarray(aif, float)
    if foot < 1:
        return None, None
    blood = aif_from_lv(images, lv)
    aif_rise = aif - _pre_contrast_level(aif, foot)
    blood_rise = blood - _pre_contrast_level(blood, foot)
    peak = int(np.argmax(aif_rise))
    peak_ratio = float(blood_rise.max() / aif_rise[peak]) if aif_rise[peak] > 0 else None
    below_half = np.flatnonzero(aif_rise[peak:] < 0.5 * aif_rise[peak])
    if not below_half.size:
        return None, peak_ratio
    late = slice(max(peak + int(below_half[0]), aif.size - AIF_LATE_FRAMES), aif.size)
    if late.stop - late.start < 3:
        return None, peak_ratio
    aif_late, blood_late = float(aif_rise[late].mean()), float(blood_rise[late].mean())
    if aif_late <= AIF_TAIL_MIN_FRACTION * aif_rise[peak]:
        return (np.inf if blood_late > 2 * AIF_TAIL_MIN_FRACTION * blood_rise.max() else None), peak_ratio
    return blood_late / aif_late, peak_ratio


def first_pass_fwhm_s(rise, times):
    """Full width at half maximum (s) of the AIF's first pass, ``rise`` being the AIF above its
    baseline; the crossings placed by linear interpolation between frames. None without a rise
    or either crossing."""
    rise = np.asarray(rise, float)
    peak = int(np.argmax(rise))
    half = rise[peak] / 2
    if not rise[peak] > 0:
        return None
    before = np.flatnonzero(rise[:peak] <= half)
    after = np.flatnonzero(rise[peak:] <= half)
    if not before.size or not after.size:
        return None
    i, j = int(before[-1]), peak + int(after[0])
    up = times[i] + (half - rise[i]) / (rise[i + 1] - rise[i]) * (times[i + 1] - times[i])
    down = times[j - 1] + (rise[j - 1] - half) / (rise[j - 1] - rise[j]) * (times[j] - times[j - 1])
    return float(down - up)


# clipped_peak (perfusion.bolus, with its AIF_PLATEAU_* rule): a flat top around the AIF's peak


def frame_gap_in_first_pass(rise, times, foot):
    """Index i of the first gap (times[i + 1] - times[i] over FRAME_GAP_FACTOR typical intervals)
    on the AIF's first pass, else None: from its foot until it has fallen back under half its
    peak. Resampling bridges a gap, which is harmless on the baseline or the tail but not where
    the AIF changes fastest: the phantom with one 2 s gap among 1 s frames on the upslope read
    MBF 27 % low with QC "pass" (on the baseline: within 2 %). At 0.8 s frames (seeds 0 and 3,
    one or two frames lost; probe 42) a gap from the peak read 9-42 % low, one from the downslope
    above half the peak -34 to +16 %, and one from under half the peak on -9 to +5 %. Among 0.5 s
    frames (three phantoms, stress and rest; session 31) one beat skipped on the upslope read -3 to
    -10 %, at the peak -3 to +2 %, two on the upslope -10 to -20 %: still flagged."""
    from .readers.perfusion import FRAME_GAP_FACTOR

    times = np.asarray(times, float)
    rise = np.asarray(rise, float)
    if times.size < 3 or times.size != rise.size:
        return None
    steps = np.diff(times)
    typical = float(np.median(steps))
    peak = int(np.argmax(rise))
    below_half = np.flatnonzero(rise[peak:] < 0.5 * rise[peak])
    # a gap that starts on a frame at or above half the peak leaves that stretch unsampled
    end = peak + int(below_half[0]) if below_half.size else rise.size - 1
    for i in range(max(0, int(foot) - 1), min(end, steps.size)):
        if steps[i] > FRAME_GAP_FACTOR * typical:
            return i
    return None


def aif_flags(study, myo=None, images=None, lv=None):
    """Units, shape and timing of the AIF: a scaled, spiky or late AIF gives a confident wrong MBF.
    ``myo``/``lv``/``images``: the analysed myocardium, LV blood pool and frames (default: the
    study's own labels and images)."""
    flags = []
    aif = study.aif
    if aif is None:
        return flags
    from .perfusion.mbf import find_foot
    from .errors import CardiacInputError

    aif = np.asarray(aif, float)
    base = float(np.median(aif[: max(1, int(np.argmax(aif)) // 2)]))
    rise = aif - base
    peak = int(np.argmax(rise))
    if study.units == "gd_mmol_l":
        msg = _out_of("aif_peak_gd_mmol_l", rise[peak], "AIF peak", " mmol/L")
        if msg:
            flags.append(_flag("AIF_UNITS", REVIEW, msg + ": is the AIF in mmol/L (not µmol/L or signal)?", rise[peak]))
    # a bolus passes over several frames; one frame far above both neighbours is a spike
    if 0 < peak < aif.size - 1:
        neighbours = max(rise[peak - 1], rise[peak + 1])
        if rise[peak] > 0 and neighbours < 0.4 * rise[peak]:
            flags.append(_flag("AIF_SPIKE", REVIEW, f"the AIF peak at frame {peak + 1} is a single-frame spike "
                                                    f"({neighbours / rise[peak]:.0%} of it on either side): not a bolus"))
    try:
        foot = find_foot(aif)
    except CardiacInputError:
        flags.append(_flag("AIF_FLAT", REVIEW, "the AIF shows no bolus"))
        return flags
    noise = aif_noise_fraction(aif, foot)
    if noise > AIF_NOISE_MAX:
        flags.append(_flag("AIF_NOISY", REVIEW, f"the AIF's frame-to-frame noise is {noise:.1%} of its peak (intact AIFs "
                                                f"{AIF_NOISE_MAX:.0%} or less): the Fermi fit follows the noise, so MBF is "
                                                "uncertain (phantom: 2 % noise read up to 13 % off, 3-5 % noise up to 23 %); "
                                                "a smaller or noisier blood pool than an AIF needs?", noise))
    dip = upslope_dip(aif, foot)
    if dip is not None and dip[0] > AIF_UPSLOPE_DIP_MAX:
        flags.append(_flag("AIF_UPSLOPE_DIP", REVIEW, f"the AIF falls by {dip[0]:.0%} of its peak between frames {dip[1] + 1} and "
                                                      f"{dip[1] + 2} on its upslope, where a bolus only rises: frames out of "
                                                      "order, or one from another time? MBF is then wrong (probe: two "
                                                      "upslope frames swapped read +29 %)", dip[0]))
    times = np.asarray(study.frame_times_s, float) if study.frame_times_s is not None and len(study.frame_times_s) == aif.size \
        else np.arange(aif.size) * (study.median_frame_interval_s or 1.0)
    dt = float(np.median(np.diff(times))) if aif.size > 1 else 0.0
    width = first_pass_fwhm_s(rise, times)
    after_peak_s = float(times[-1] - times[peak])
    # the AIF back near its baseline is not enough: the tissue's downslope must be there too.
    # The real QPerf stress series cut 4 s after its AIF peak (AIF at 10-17 % of it) read 3.10
    # for 3.39 (-9 %), at 5 s -6 %, at 6 s -1 % (its first pass 3.2 s wide at half its peak; probe 19)
    short = width is not None and after_peak_s < AIF_MIN_WIDTHS_AFTER_PEAK * width
    if rise[peak] > 0 and (rise[-1] > AIF_END_FRACTION_MAX * rise[peak] or short):
        # the Fermi fit needs the first pass whole: a phantom series cut 2-4 frames after the AIF
        # peak (AIF still at 84-99 % of it) gave MBF 10-13 % low with every fit good
        saturated = (not short and (study.provenance or {}).get("aif_source") == "lv_blood_pool"
                     and study.units != "gd_mmol_l")
        # an LV blood signal saturated at the bolus keeps a high share of its flattened peak long
        # after it: a 30 s series "cut short" with the AIF at 46 % of its peak (probe 59)
        cause = ("the LV's blood signal, the AIF here, saturated at the bolus peak (AIF_FROM_LV), which flattens the "
                 "peak, or the first pass is cut short" if saturated else "the first pass is cut short")
        flags.append(_flag("AIF_TRUNCATED", REVIEW, f"the series ends {aif.size - 1 - peak} frame(s) ({after_peak_s:.1f} s) after "
                                                    f"the AIF peak, with the AIF still at {rise[-1] / rise[peak]:.0%} of it: "
                                                    f"{cause}, so MBF may be biased (phantoms: +5 to +8 % with "
                                                    "the AIF at 40-56 % of its peak at the end, 10-13 % low when cut just after "
                                                    "it; a real series cut 4 s after its AIF peak: -9 %)",
                                                    rise[-1] / rise[peak]))
    top = clipped_peak(rise, times)
    if top is not None:
        flags.append(_flag("AIF_CLIPPED", REVIEW, f"the AIF's peak is flat: frames {top[0] + 1}-{top[1] + 1} lie within "
                                                  f"{AIF_PLATEAU_FRACTION:.1%} of its maximum, as a clipped signal does (a "
                                                  "saturated read-out, or a ceiling in the stored values), not a bolus "
                                                  "peak; the AIF's area is then too small and MBF over-estimated",
                           top[1] - top[0] + 1))
    if dt > 0 and (dt > AIF_MAX_FRAME_INTERVAL_S or (width is not None and width / dt < AIF_MIN_FRAMES_PER_FWHM)):
        across = f"{width:.1f} s wide at half its peak, so {width / dt:.1f} frames sample it" if width is not None else ""
        flags.append(_flag("AIF_COARSE_SAMPLING", REVIEW, f"one frame every {dt:.2f} s is too coarse for the AIF's first pass"
                                                           + (f" ({across})" if across else "")
                                                           + ": the Fermi fit cannot pin the flow down (phantoms: single "
                                                           "segments 14-31 % off at 1.4-1.6 s frames, 10-35 % at 2.0-2.3 "
                                                           "s); read MBF as approximate and "
                                                           "compare regions with the semi-quantitative indices",
                                 round(dt, 3)))
    if width is not None and width < AIF_MIN_FWHM_S:
        from .readers.perfusion import frame_interval_source

        source = frame_interval_source((study.provenance or {}).get("dt_source"))
        flags.append(_flag("AIF_TOO_FAST", REVIEW, f"the AIF's first pass is {width:.1f} s wide at half its peak with one frame "
                                                    f"every {dt:.2f} s ({source}); arterial first passes last 4-8 s, so the "
                                                    "frame interval is probably too short, and MBF scales with it: check it",
                                 round(width, 2)))
    if foot == 0:
        # the baseline subtracted from every curve is then already on the upslope: phantom
        # series started 1-2 frames after the foot gave MBF 10-29 % high with every fit good
        flags.append(_flag("AIF_NO_BASELINE", REVIEW, "the AIF is already rising at the first frame: the series has no "
                                                      "pre-contrast frame (the acquisition started as the bolus arrived), "
                                                      "so the baseline holds contrast and MBF is biased high"))
    # with --dt the fit's times are even; the file's own, kept in the provenance, show the gap
    real_times = (study.provenance or {}).get("file_frame_times_s") or times
    gap = frame_gap_in_first_pass(rise, real_times, foot)
    if gap is not None:
        real_times = np.asarray(real_times, float)
        span = float(real_times[gap + 1] - real_times[gap])
        typical = float(np.median(np.diff(real_times)))
        lost = max(1, int(round(span / typical)) - 1) if typical > 0 else 1
        # the phantoms' range for as many frames lost as this gap holds: two lost on the upslope
        # read 11-21 % low among 0.5 s frames, where the message quoted one beat's 3-10 % (probe 97)
        seen = ("a beat skipped on the upslope read 3-10 % low among 0.5 s frames, 27 % among 1 s frames" if lost == 1 else
                f"{lost} frames lost on the upslope read 10-21 % low among 0.5 s frames, two just after the peak 38-42 % "
                "low among 0.8 s frames")
        flags.append(_flag("FRAME_GAP_IN_BOLUS", REVIEW, f"frames {gap + 1} and {gap + 2} are {span:.2f} s apart "
                                                         f"({dt:.2f} s typical; about {lost} frame{'s' if lost > 1 else ''} "
                                                         "missing) on the AIF's first pass (a skipped beat, or a dynamic "
                                                         "left out): where the AIF changes fastest its shape between them "
                                                         f"is unknown, so MBF is uncertain (on phantoms {seen})",
                           round(span, 3)))
    elif len(real_times) > 2:
        steps = np.diff(np.asarray(real_times, float))
        typical = float(np.median(steps))
        # most intervals, not one: a single skipped beat off the first pass is harmless
        spread = float(np.percentile(np.abs(steps - typical), 80)) / typical if typical > 0 else 0.0
        # the fewer frames across the AIF's first pass, the less unevenness it takes to lose its
        # shape: 1.5 s frames varying +-0.3 s (spread 0.16, ~4 frames across) read 12-16 % low
        # with QC pass, where regular ones read within 5 % (probe 37)
        per_fwhm = width / typical if width is not None and typical > 0 else None
        limit = IRREGULAR_HEARTBEATS_SPREAD * (1.0 if per_fwhm is None else min(1.0, per_fwhm / IRREGULAR_FRAMES_PER_FWHM))
        if spread > limit:
            # AF-like intervals: the fit interpolates the curves on the real times, but an AIF
            # sampled unevenly across its peak loses shape the fit cannot recover
            flags.append(_flag("IRREGULAR_HEARTBEATS", REVIEW,
                               f"frame intervals {steps.min():.2f}-{steps.max():.2f} s (median {typical:.2f} s): irregular "
                               "heartbeats sample the AIF unevenly across its first pass, so MBF is uncertain (noise-free "
                               f"phantom at 0.6-1.2 s intervals: -8 %){_clock_not_the_acquisitions(study)}", round(spread, 3)))
    drift = ((study.provenance or {}).get("timing") or {}).get("coarse_drift_s")
    if drift is not None and drift > COARSE_CLOCK_DRIFT_S:
        # the frames were given even times (whole seconds cannot time each one), but the seconds
        # themselves show the beats were not even
        flags.append(_flag("IRREGULAR_HEARTBEATS", REVIEW,
                           f"the acquisition times, in whole seconds only, stray up to {drift:.1f} s from evenly spaced "
                           "frames (an even rhythm cut to the second strays up to 1 s, a steadily changing rate "
                           "little more): the heartbeats were irregular, but the fit was given even frame times, as "
                           "far off; MBF is uncertain "
                           "(atrial fibrillation on phantoms: 26-44 % low); re-export the series with its times' "
                           "fractions of a second", drift))
    # the myocardium cannot enhance before the blood that feeds it
    if myo is None and study.labels:
        myo = next(iter(study.labels.values())) == MYO
    images = study.images if images is None else images
    if myo is not None and images.shape[0] == aif.size:
        if myo.any():
            from .perfusion.bolus import bolus_foot

            tissue = images[:, myo].mean(1).astype(float)
            t_rise = float(tissue.max() - np.median(tissue[:3]))
            t_foot = bolus_foot(tissue, fraction=0.2)
            if t_rise > 0 and (foot - t_foot) * dt > 2.0:
                flags.append(_flag("AIF_LATE", REVIEW, f"the AIF rises {(foot - t_foot) * dt:.1f} s after the myocardium "
                                                       f"(frame {foot + 1} vs {t_foot + 1}): AIF and images are out of step", (foot - t_foot) * dt))
            # myocardium holds at most its extracellular share of the blood's contrast: a tissue
            # rise above the AIF's is an AIF in other units (mmol/L beside signal) or scale
            if rise[peak] > 0 and t_rise > rise[peak]:
                flags.append(_flag("AIF_BELOW_TISSUE", REVIEW, f"the myocardium enhances more ({t_rise:.3g}) than the AIF "
                                                               f"({rise[peak]:.3g}), which no tissue can: are the AIF and the "
                                                               "images in the same units (mmol/L or signal) and scale?",
                                   t_rise / rise[peak]))
    source = str((study.provenance or {}).get("aif_source") or "")
    if lv is None and study.labels:
        lv = next(iter(study.labels.values())) == LV
    # the images' LV is the AIF when no separate one was given, and a dual-sequence AIF series is
    # scaled onto it: only an AIF given as numbers can be on another scale than the images
    given = source != "lv_blood_pool" and not source.startswith("dual-sequence")
    if given and lv is not None and lv.any() and images.shape[0] == aif.size and foot > 0:
        late, peak_ratio = aif_against_lv_blood(aif, images, lv, foot)
        low, high = AIF_LATE_RATIO_RANGE
        problems = []
        if late is not None and np.isinf(late):
            problems.append("the AIF is back at its baseline after its first pass while the images' LV blood is still "
                            "enhanced (an AIF cut short and padded, or another series')")
        elif late is not None and not low <= late <= high:
            problems.append(f"after its first pass the images' LV blood is {late:.2f} times the AIF (expected "
                            f"{low:g}-{high:g}: the same blood)")
        if peak_ratio is not None and peak_ratio > AIF_PEAK_RATIO_MAX:
            problems.append(f"at the bolus peak the images' LV blood enhances {peak_ratio:.2f} times as much as the AIF "
                            f"(at most {AIF_PEAK_RATIO_MAX:g}: a saturated or scaled AIF)")
        if problems:
            flags.append(_flag("AIF_DISAGREES_WITH_LV", REVIEW, "; ".join(problems) + ". The AIF given and the images "
                                                                "should measure the same blood: other units or scale, "
                                                                "images rescaled, or another series' or patient's AIF? "
                                                                "MBF scales inversely with the AIF's level (probe: x2 "
                                                                "read -50 %, x0.5 +102 %)",
                               late if late is not None and np.isfinite(late) else peak_ratio))
    if source == "lv_blood_pool":
        if study.units == "gd_mmol_l":
            flags.append(_flag("AIF_FROM_LV", INFO, "the AIF is the LV blood pool of this series (no separate AIF), "
                                                    "already in Gd concentration"))
        else:
            # in signal, the blood saturates at the bolus peak while the myocardium hardly does:
            # MBF from that AIF is over-estimated, by how much the series cannot tell. On
            # saturation-recovery phantoms: stress +3 to +15 % (probe 37), +44 % at a 100 ms
            # saturation time and 2-3x at 150-200 ms or a double dose, +6.5 % at half dose (blood
            # T1 1.6 s, r1 4.5 /mM/s; probe 59); rest +49 % to 4.7x, more than stress, so MPR reads
            # low (2.23 for 2.89). With the dual-sequence AIF the same series read -4 to -10 %
            flags.append(_flag("AIF_FROM_LV", REVIEW, "the AIF is the LV blood pool of this series in signal units (no "
                                                      "separate AIF): blood saturates at the bolus peak, so MBF is "
                                                      "over-estimated, at rest more than at stress (MPR then reads low), "
                                                      "by an amount the series cannot tell (a few per cent at a low dose, "
                                                      "up to 2-3 fold at a full dose or a long saturation time on "
                                                      "saturation-recovery phantoms); read the semi-quantitative "
                                                      "indices (upslope, MPRI), which need no AIF, or give the "
                                                      "dual-sequence AIF series"))
    else:
        # what MBF rests on, as notes the report and the tables show by name (the reader's
        # warnings reached results.json only; probe 73)
        if source.startswith("dual-sequence AIF series"):
            flags.append(_flag("AIF_DUAL_SEQUENCE", INFO, "the AIF is the dual-sequence AIF series' LV blood pool, scaled "
                                                          "onto this series' LV signal without proton-density calibration: "
                                                          "MBF is approximate (the AIF series' saturation at the bolus peak "
                                                          "over-estimates it, the tissue's under-estimates it)"))
        if study.units != "gd_mmol_l":
            flags.append(_flag("SIGNAL_UNITS", INFO, "the images are in signal intensity, not Gd concentration: MBF "
                                                     "assumes the signal rises linearly with Gd, which saturation at high "
                                                     "concentrations breaks (MBF then reads low)"))
    return flags


# The septum's anterior end lies anterior and superior of its inferior end: from the inferior to
# the anterior RV insertion point, in the patient's coordinates, the direction is within about
# 45 degrees of anterior-superior (RAS (0, 1, 1) in the slice plane; the Sunnybrook study's ten
# slices 0.74-0.97 as cosines, phantoms 0.95-0.98). Images mirrored against their header turn
# the frame the insertion points are read in by twice the mirror's angle: the anterior point
# then lands on the inferior wall, and the anterior and inferior segments swap (probe 53: an LAD
# defect read in the RCA territory, segments 157 % and 66 % off, QC "pass"). Under this median
# cosine (over 100 degrees off) the points are the wrong way round.
MIRRORED_MAX_COS = -0.2
# Where the RV lies from the LV in the patient: to the right and in front (RAS +x, +y). In the slice
# plane the LV-to-RV direction lies within 15° of it on the Sunnybrook study (cosine 0.98) and the
# perfusion phantoms (0.95-0.97); mirrored images put it more than 100° away for many mirror axes
# that leave the insertion points' order looking right (probe 53's leftover, session 29)
RV_SIDE = np.array([1.0, 1.0, 0.0]) / np.sqrt(2.0)


def _in_plane(direction, normal):
    """``direction`` projected into the plane of ``normal``, unit length; None where the plane is
    nearly across it (under 0.3 of the direction in the plane: no direction to read)."""
    d = np.asarray(direction, float) / np.linalg.norm(direction)
    d = d - (d @ normal) * normal
    n = np.linalg.norm(d)
    return d / n if n >= 0.3 else None


def mirrored_against_header(analysis):
    """``(median cosine, slices)`` of the inferior-to-anterior insertion point direction against
    anterior-superior in each slice's plane, or None where the study has no real orientation or
    no slice has both points."""
    st = analysis.study
    if not st.orientation_known or not analysis.insertion:
        return None
    normal = st.slice_normal
    up = _in_plane([0.0, 1.0, 1.0], normal)
    if up is None:
        return None
    cosines = []
    for p in analysis.insertion:
        if "anterior_ras" in p and "inferior_ras" in p:
            septum = np.asarray(p["anterior_ras"], float) - np.asarray(p["inferior_ras"], float)
            septum -= (septum @ normal) * normal
            if np.linalg.norm(septum) > 0:
                cosines.append(float(septum @ up / np.linalg.norm(septum)))
    return (float(np.median(cosines)), len(cosines)) if cosines else None


def rv_side_against_header(analysis, min_pixels=10):
    """``(median cosine, slices)`` of the LV-to-RV centroid direction against right-anterior
    (``RV_SIDE``) in each slice's plane, on the slices that hold both, or None where the study has
    no real orientation or no slice holds both."""
    st = analysis.study
    if not st.orientation_known or not analysis.labels:
        return None
    side = _in_plane(RV_SIDE, st.slice_normal)
    if side is None:
        return None
    lab = np.asarray(analysis.labels[analysis.reference_frame])
    cosines = []
    for k in range(lab.shape[0]):
        lv, rv = np.argwhere(lab[k] == LV), np.argwhere(lab[k] == RV)
        if len(lv) < min_pixels or len(rv) < min_pixels:
            continue
        (r0, c0), (r1, c1) = lv.mean(axis=0), rv.mean(axis=0)
        direction = np.diff(st.ijk_to_ras_points([[c0, r0, k], [c1, r1, k]]), axis=0)[0]
        cosines.append(float(direction @ side / max(np.linalg.norm(direction), 1e-9)))
    return (float(np.median(cosines)), len(cosines)) if cosines else None


def mirrored_flags(analysis, labels_off=False):
    """IMAGES_MIRRORED where the septum's anterior end lies posterior or inferior of its inferior
    end in the patient's coordinates (``mirrored_against_header``), or the RV lies left or
    behind the LV (``rv_side_against_header``).

    The RV side is read from the labels, and so are a cine's insertion points (a perfusion
    series' come from the bolus): those cues say the labels are mirrored against the header,
    which is the images' doing only where the labels lie on the images. A perfusion label map
    mirrored against its image was flagged "the images look mirrored ... check the image
    orientation" alone, and a user who checked the images found nothing wrong (probe 105). So
    with ``labels_off`` (LABELS_OFF_THE_IMAGE raised) the label map is named as the likelier one
    mirrored, and labels given whose cues alone fired name both."""
    said = []
    insertion_from_labels = analysis.kind != PERFUSION
    for cue, text, from_labels in ((mirrored_against_header(analysis), "on {} slice(s) the anterior RV insertion point "
                                    "lies posterior or inferior of the inferior one in the patient's coordinates (median "
                                    "direction {:.0f}° from anterior-superior)", insertion_from_labels),
                                   (rv_side_against_header(analysis), "on {} slice(s) the RV lies {:.0f}° from the LV's "
                                    "right-anterior side (median), left of or behind it in the patient's coordinates", True)):
        if cue is not None and cue[0] < MIRRORED_MAX_COS:
            said.append((cue[0], text.format(cue[1], np.degrees(np.arccos(np.clip(cue[0], -1.0, 1.0)))), from_labels))
    if not said:
        return []
    cues = "; ".join(text for _, text, _ in said)
    files = _label_file_names(analysis)
    labels = ("the network's labels" if analysis.model_info else
              f"the label map {', '.join(files)}" if files else "the labels given")
    if labels_off:
        why = (": the labels look mirrored against the image's header, and they do not overlay the image "
               f"(LABELS_OFF_THE_IMAGE), so the likelier one mirrored is {labels}, not the images; anterior and inferior "
               "AHA segments are then swapped; check the labels over the image, then the image orientation")
    elif not analysis.model_info and all(from_labels for _, _, from_labels in said):
        why = (": the images look mirrored against their header (or the heart lies on the right), or else "
               f"{labels} against the images (these cues are read from the labels), so anterior and inferior AHA "
               "segments are swapped; check the image orientation, the labels over the image and the insertion points")
    else:
        why = (": the images look mirrored against their header (or the heart lies on the right), so anterior and inferior "
               "AHA segments are swapped; check the image orientation and the insertion points")
    return [_flag("IMAGES_MIRRORED", REVIEW, cues + why, min(c for c, _, _ in said))]


def slice_order_flags(analysis):
    """SLICE_ORDER_DOUBTFUL where the file's orientation decides which end of the stack is the base
    and the ring sizes contradict it (``geometry.slice_order_contradicts_affine``): slices re-stacked
    without their affine put the apical ring in the basal AHA segments and the basal ring in the
    apical ones, every number plausible (probe 108: a stress perfusion's segments 1/3/5/14 off by
    +28/+25/-20/-23 %, the rest's MPR up to +46 %, QC naming neither). The affine stays the
    decision, as a heart whose apex is as wide as its base comes close (ACDC patient047): the user
    checks."""
    from pathlib import Path

    from .geometry import slice_order_contradicts_affine

    if not analysis.labels:
        return []
    evidence = slice_order_contradicts_affine(analysis.study, analysis.labels[analysis.reference_frame])
    if evidence is None:
        return []

    def slices(ks):
        first, last = min(ks) + 1, max(ks) + 1
        return f"slice {first}" if first == last else f"slices {first}-{last}"

    name = Path(analysis.study.source).name if analysis.study.source else "the series"
    if analysis.kind == PERFUSION:
        swapped = ("the basal AHA segments (1-6) are measured on the apical slices and the apical ones (13-16) on the "
                   "basal slices, their MBF (and reserve) with them")
    else:
        swapped = ("the basal AHA segments (1-6) of the wall thickness are read on the apical slices and the apical ones "
                   "(13-16) on the basal slices; volumes, EF and mass are not affected")
    return [_flag("SLICE_ORDER_DOUBTFUL", REVIEW,
                  f"{name}: its orientation puts the base at slice {evidence['base_slice'] + 1} (counted from 1), but the "
                  f"mean epicardial area of {slices(evidence['basal_slices'])} ({evidence['basal_area_mm2']:.0f} mm²) is "
                  f"{100 * evidence['ratio']:.0f} % of that of {slices(evidence['apical_slices'])} "
                  f"({evidence['apical_area_mm2']:.0f} mm²), where it puts the apex; the LV narrows toward the apex, so the "
                  f"slices look stored in the other order than the header says (re-stacked without it?): {swapped}. Check "
                  "the slice order against the header's slice positions", evidence["ratio"])]


def insertion_flags(analysis):
    """INSERTION_POINTS_IMPLAUSIBLE where the RV insertion points (found, or dragged by a user)
    are not where any reader would put them (``SectorState.point_problems``): the AHA segment
    values then come from the wrong sectors, which no number shows."""
    sectors = getattr(analysis, "sectors", None)
    problems = sectors.point_problems() if sectors is not None else []
    if not problems:
        return []
    return [_flag("INSERTION_POINTS_IMPLAUSIBLE", REVIEW, "RV insertion points: " + "; ".join(problems[:4])
                  + (f"; {len(problems) - 4} more" if len(problems) > 4 else "")
                  + ". The AHA segments follow them: move the handles to where the RV wall meets the septum",
                  len(problems))]


def imported_model_flags(analysis):
    """MODEL_DISAGREES_ON_SAMPLE for an imported network that did not agree with the shipped
    default on the shipped sample at import (``registry.sample_agreement``)."""
    check = (analysis.model_info or {}).get("import_check")
    if not check or check.get("agrees", True):
        return []
    said = check.get("summary") or "did not agree with the shipped default on the shipped sample"
    return [_flag("MODEL_DISAGREES_ON_SAMPLE", REVIEW, f"the imported network '{analysis.model_info.get('name')}' "
                                                       f"disagreed with the shipped default when it was imported "
                                                       f"({said.replace('it agrees with', 'against', 1)}): "
                                                       "check its card (input.pixel_mm, the "
                                                       "normalisation, the class order) and the contours", check["dice_myo"])]


# Slices of one dynamic share its heartbeat's intervals to the clock's resolution (1-2.5 ms):
# a median spread of 100 ms between the slices' intervals of one dynamic is no clock's rounding
SLICE_INTERVAL_DISAGREEMENT_S = 0.1


def _clock_not_the_acquisitions(study):
    """A clause for IRREGULAR_HEARTBEATS when the slices disagree on the intervals (the frame
    clock is then no acquisition time: a reconstruction time written with a lag read as
    irregular heartbeats, MBF -19 %, the flag quoting -8 %; probe 88), else ''."""
    timing = (study.provenance or {}).get("timing") or {}
    disagreement = timing.get("slice_interval_disagreement_s")
    if disagreement is None or disagreement < SLICE_INTERVAL_DISAGREEMENT_S:
        return ""
    tag = timing.get("tag") or timing.get("clock") or "the frame clock"
    return (f"; but the slices' intervals for one dynamic differ by {1000 * disagreement:.0f} ms (median), where the slices of one "
            f"heartbeat share its intervals: the times ({tag}) are probably not the acquisition's (a reconstruction "
            "time?), and MBF may be off by more; if the heartbeats were regular, give the frame interval (--dt)")


def kind_against_data_flags(analysis):
    """The series was analysed as the kind --kind asked for, against what its frame clocks say
    (readers.series_kind.decide_kind): a perfusion measured as a cine (or the reverse) gives
    numbers of the wrong kind, so the user's word is taken and the result marked."""
    against = ((analysis.study.provenance or {}).get("kind") or {}).get("against_data")
    if not against:
        return []
    return [_flag("KIND_AGAINST_DATA", REVIEW, f"analysed as a {analysis.kind} because the series kind was given (--kind), "
                                               f"though {against}: the measures are a {analysis.kind}'s only if the "
                                               f"series is one")]


def bits_over_stored_flags(analysis):
    """PIXEL_BITS_OVER_STORED where DICOM pixels had bits set above BitsStored (masked off, as
    the standard says): junk or overlay bits are harmless, but values a converter wrote over a
    12-bit header wrap the brightest pixels (the bolus peak) to the bottom, MBF +13.5 % with only
    fit flags that named no cause (probe 97)."""
    found = (analysis.study.provenance or {}).get("bits_over_stored")
    if not found:
        return []
    return [_flag("PIXEL_BITS_OVER_STORED", REVIEW, f"pixels have bits set above BitsStored {found['bits']} (e.g. in "
                                                    f"{found['file']}), masked off as the standard says: if they are the "
                                                    "image's own values (a header that understates its bits), the "
                                                    "brightest pixels wrapped to the bottom and the measures are wrong; "
                                                    "check the export", found["bits"])]


def assess(analysis):
    """{"status": "pass" | "review", "flags": [...]} for an Analysis that has run."""
    flags = perfusion_flags(analysis) if analysis.kind == PERFUSION else cine_flags(analysis)
    # the mirror cues read from the labels are the labels' own where the labels lie off the image
    labels_off = any(f["code"] == "LABELS_OFF_THE_IMAGE" for f in flags)
    flags += insertion_flags(analysis) + mirrored_flags(analysis, labels_off) + slice_order_flags(analysis)
    flags += bits_over_stored_flags(analysis)
    flags += getattr(analysis, "extra_qc", []) + imported_model_flags(analysis) + kind_against_data_flags(analysis)
    rest = getattr(analysis, "rest", None)
    if rest is not None and rest.qc:   # the MPR depends on the rest series: its flags are ours
        flags += [dict(f, code=f"REST_{f['code']}", message=f"rest series: {f['message']}") for f in rest.qc["flags"]]
    status = "review" if any(f["severity"] == REVIEW for f in flags) else "pass"
    return {"status": status, "flags": flags, "ranges": {k: list(v) for k, v in RANGES.items()}}
