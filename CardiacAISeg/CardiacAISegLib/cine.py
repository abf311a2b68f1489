"""Cine measures: volumes, EDV/ESV/SV/EF, LV mass, RV, ED/ES from the LV volume curve.

Volumes are voxel counts x voxel volume (docs/algorithms.md section 4). The voxel volume comes
from the determinant of ``ijk_to_ras``, whose slice column is the slice *spacing*
(thickness + gap), so a stack with gaps is counted as the clinical disc summation does.
Counts are integers, so a pipeline given the true masks reproduces voxel-count truth exactly.
When the reader knows the true slice positions (``provenance["slice_positions_mm"]``, DICOM)
and they are uneven (a missing slice), each slice's voxels count with their own thickness,
half the distance to each neighbour (``readers.geometry_check.slice_thicknesses_mm``), so a
lost slice does not silently drop out of the volume.
"""
import numpy as np

from .errors import CardiacInputError
from .labels import LV, MYO, RV

MYOCARDIAL_DENSITY_G_ML = 1.05

# ECG-triggered cines start at the R wave, so ED should sit within a few frames of frame 0
# (or of the last frame, the cycle wraps). Further away usually means a retrospective
# series with an offset trigger or a labelling problem: worth telling the user.
_ED_WARN_FRACTION = 0.1
# Frames whose LV volume is within this fraction of EDV of the extreme are ED (or ES) candidates:
# ~3 % is the frame-to-frame noise of a network's basal slice on a clean curve.
ED_ES_TOLERANCE = 0.03
# Fewer frames than this are no sampled cycle: certainty is not judged.
ED_ES_MIN_FRAMES = 6
# ED (or ES) standing out of the mean of its two neighbouring frames by this share of the curve's
# range or more is one frame's error, not the cycle's extreme: real whole cycles (20-30 frames,
# Sunnybrook, the MetaImage cine) stand 0.04-0.07 out, the phantom's sharp ES 0.17, a basal
# slice flipping at ED 0.23; one frame's LV pool grown by 3 pixels 0.47-0.50 was taken as ED
# (EF 68.6 for 59.0, "sure", QC pass; probe 81). Judged on cycles of SPIKE_MIN_FRAMES or more.
SPIKE_SHARE = 0.35
SPIKE_MIN_FRAMES = 10
# A curve whose frames stand, at the median, this share of its range or more out of their two
# neighbours is ragged: the frames' segmentations disagree, and no frame is surely ED or ES. Real
# whole cycles (Sunnybrook, the MetaImage cine, the phantom): 0.011-0.023; a curve of noise
# (phantom at noise 0.3, EF 98.7) 0.136 was called "sure" at both ends; a basal slice flipping
# every other frame 0.178 (probe 81). Judged on cycles of SPIKE_MIN_FRAMES or more, above what a
# smooth cycle sampled at n frames stands out by itself ((1 - cos 2pi/n) / 2 of its range at a
# peak: 0.024 at 20 frames, 0.067 at 12; the 12-frame phantom cycle reads 0.05-0.08).
RAGGED_SHARE = 0.08
# ED and ES given by the file (ACDC Info.cfg) that the cycle contradicts: EF between them more
# than this many points from EF between the largest and smallest LV volume (every frame
# labelled), or, with ED and ES labelled only, a given frame on the wrong half of the range of
# the images' own blood-pool curve (``blood_pool_curve``), which must span ED_ES_MIN_RANGE of
# its maximum to be read (Sunnybrook SC-HF-I-1, a failing heart: 24 %, its expert ED and ES at
# 98 % and 1 % of the range).
ED_ES_EF_POINTS = 5.0
ED_ES_MIN_RANGE = 0.10
# The same half of the range judges ED and ES taken as the largest and smallest LV of a few
# labelled frames of a whole cine (the M&Ms layout), which nothing else checks: an ES labelled
# on diastasis sat at 77 % (EF 15.6 for 56.7, QC pass; probe 107). Measured on that curve: a true
# ES at 0-4 % of the range (Sunnybrook by its experts and by the network, the MetaImage cine by
# the network, phantoms of 6-30 frames), a frame next to it at 0-3 % on the real cines and
# 4-36 % on the phantom's sharp ES of 12-30 frames, diastasis at 57-72 % (real) and 75-90 %
# (phantom). A frame next to ES on the coarse 6-8 frame phantoms reaches 61-77 %, and so does
# its LV volume (EF under half the true one): the warning is right there too.
ED_ES_SPLIT = 0.5
# A few phases exported with their DICOM trigger delays (under ED_ES_MIN_FRAMES frames): the
# delays place ED and ES in the cycle. End-systole falls ES_DELAY_MS after the R wave at heart
# rates of about 45-150/min; end-diastole is the R wave itself (readers.ED_TRIGGER_DELAY_MS) or
# the cycle's end, at least ED_AFTER_ES_MS after ES (the shipped Sunnybrook sample: ES 300 ms,
# ED 740 ms). Two early-systolic phases (0 and 100 ms) read as ED and ES give an EF of the
# first 100 ms of systole with every range passed.
ES_DELAY_MS = (150.0, 550.0)
ED_AFTER_ES_MS = 250.0

MEASURE_KEYS = ("ed_frame", "es_frame", "lv_edv_ml", "lv_esv_ml", "lv_sv_ml", "lv_ef_pct",
                "lv_mass_g", "rv_edv_ml", "rv_esv_ml", "rv_sv_ml", "rv_ef_pct",
                "lv_volume_curve_ml", "ed_es_certainty", "ed_es_check", "ed_es_timing")


def _where(source):
    """A path for error messages: the study's source, its name, or a description."""
    if source is None:
        return "labels"
    src = getattr(source, "source", "") or getattr(source, "name", "")
    return src or "labels"


def structure_volumes_ml(label_map, voxel_volume_ml):
    """{'lv', 'myo', 'rv'} volumes in mL of one (S, R, C) label map (internal convention).

    ``voxel_volume_ml``: one number, or one per slice (S,) for a stack integrated by its
    true slice positions (``slice_voxel_volumes_ml``)."""
    lab = np.asarray(label_map)
    if lab.size and np.issubdtype(lab.dtype, np.signedinteger) and lab.min() < 0:
        raise CardiacInputError("labels", f"label values must be 0..3 (internal convention), found {lab.min()}")
    vv = np.asarray(voxel_volume_ml, dtype=float) if voxel_volume_ml is not None else None
    # per slice, a lost slice counts for nothing (0); one number must be a volume
    if vv is None or vv.ndim > 1 or vv.size == 0 or not np.all(np.isfinite(vv)) or np.any(vv < 0) or not np.any(vv > 0):
        raise CardiacInputError("labels", f"voxel volume must be a positive number of mL, got {voxel_volume_ml!r}")
    if vv.ndim == 1:
        if lab.ndim != 3 or lab.shape[0] != vv.size:
            raise CardiacInputError("labels", f"{vv.size} per-slice voxel volumes for a label map of shape {lab.shape}")
        # per-slice integer counts (one bincount over slice*4 + label), then one weighted sum
        flat = lab.reshape(lab.shape[0], -1).astype(np.int64, copy=False)
        if flat.size and flat.max() > 3:
            raise CardiacInputError("labels", f"label values must be 0..3 (internal convention), found up to {flat.max()}")
        idx = (np.arange(lab.shape[0])[:, None] * 4 + flat).ravel()
        per_slice = np.bincount(idx, minlength=4 * lab.shape[0]).reshape(lab.shape[0], 4)
        return {"lv": float(per_slice[:, LV] @ vv), "myo": float(per_slice[:, MYO] @ vv),
                "rv": float(per_slice[:, RV] @ vv)}
    vv = float(vv)
    # bincount is one pass over the array; counts stay integers until the single multiply.
    counts = np.bincount(lab.ravel().astype(np.int64, copy=False), minlength=4) if lab.size else np.zeros(4, int)
    if counts.size > 4:
        raise CardiacInputError("labels", f"label values must be 0..3 (internal convention), found up to {counts.size - 1}")
    return {"lv": int(counts[LV]) * vv, "myo": int(counts[MYO]) * vv, "rv": int(counts[RV]) * vv}


def slice_voxel_volumes_ml(study, lost_slices=()):
    """The voxel volume in mL: one number, or one per slice when the study's true slice
    positions (``provenance["slice_positions_mm"]``) are uneven, e.g. a missing slice.
    ``lost_slices``: slices whose image was lost (``lost_images``): they count for nothing, and
    their neighbours share their thickness, as for a missing slice."""
    from .readers.geometry_check import slice_thicknesses_mm

    positions = (getattr(study, "provenance", None) or {}).get("slice_positions_mm")
    known = positions is not None and len(positions) == study.n_slices
    kept = np.ones(study.n_slices, bool)
    kept[[int(k) for k in lost_slices]] = False
    if not kept.any():
        kept[:] = True   # every slice lost: there is nothing to share with
    if not known and kept.all():
        return study.voxel_volume_ml
    m = study.ijk_to_ras[:3, :3]
    in_plane = np.cross(m[:, 0], m[:, 1])              # normal scaled by the pixel area
    area_mm2 = float(np.linalg.norm(in_plane))
    step_mm = abs(float(m[:, 2] @ in_plane)) / area_mm2   # the affine's slice step along the normal
    positions = np.asarray(positions, float) if known else np.arange(study.n_slices) * step_mm
    kept_thick = slice_thicknesses_mm(positions[kept], nominal=step_mm)
    if kept_thick is None and kept.all():
        return study.voxel_volume_ml
    thick = np.zeros(study.n_slices)
    thick[kept] = step_mm if kept_thick is None else kept_thick
    return area_mm2 * thick / 1000.0


def lost_images(study, frames, labels=None):
    """{frame: [slices]} of the images among ``frames`` that hold no anatomy (one value, or noise
    only: a lost or failed image; ``readers.geometry_check.lost_image_mask``), or not their
    slice's (``damaged_images``). Nothing when no image among them has anatomy: a synthetic stack
    of flat images has nothing to lose (a wholly blank input is refused where it matters,
    ``check_not_blank``). Read once per study and frame: the measures run again on every edit."""
    checks = _image_checks(study)
    masks = {t: _lost_mask(checks, study, t) for t in frames}
    damaged = damaged_images(study, frames, labels)
    if all(masks[t].all() for t in frames):
        return damaged
    out = {int(t): [int(k) for k in np.flatnonzero(masks[t])] for t in frames if masks[t].any()}
    for t, slices in damaged.items():
        out[t] = sorted(set(out.get(t, [])) | set(slices))
    return dict(sorted(out.items()))


# The heart left out of the misfit check: the labels over all frames, widened by this much.
MISFIT_HEART_MARGIN_MM = 10.0


def damaged_images(study, frames, labels=None):
    """{frame: [slices]} of the images among ``frames`` that hold anatomy but differ from their
    slice's other frames outside the heart: part of the image lost (a truncated file), or another
    slice's image in its place (``readers.geometry_check.misfit_image_mask``; half an ES image
    zeroed read EF 31-36 % for 27.9 % with QC pass, probe 43); or that hold a block of one value
    where the other frames hold tissue, in the heart too (``blanked_patch_mask``). ``labels`` ({frame: label map})
    give the heart to leave out; read once per study, with the labels of the first call (the
    heart as first segmented: an edit moves it by a few pixels, the margin by 10 mm)."""
    from scipy import ndimage

    from .readers.geometry_check import blanked_patch_mask, misfit_image_mask, slice_medians

    checks = _image_checks(study)
    if checks["blanked"] is None:
        # both checks compare each image with its slice's median over the frames: taken once
        medians = slice_medians(study.images) if study.images.ndim == 4 and study.images.shape[0] >= 2 else None
        # inside the heart, which the misfit check leaves out: a block of one value where the
        # slice's other frames hold tissue (30 pixels of zeros on the LV at ES: EF 38 % for 28 %)
        checks["blanked"] = blanked_patch_mask(study.images, medians=medians)
        checks["medians"] = medians
    if checks["misfit"] is None:
        heart = None
        if labels:
            heart = np.zeros(study.images.shape[1:], bool)
            for lab in labels.values():
                heart |= np.asarray(lab) > 0
            steps = max(1, int(round(MISFIT_HEART_MARGIN_MM / max(min(study.spacing_rc), 1e-6))))
            heart = np.stack([ndimage.binary_dilation(h, iterations=steps) if h.any() else h for h in heart])
        checks["misfit"] = misfit_image_mask(study.images, heart, medians=checks["medians"])
    out = {}
    for t in frames:
        lost = _lost_mask(checks, study, t)
        slices = [int(k) for k in np.flatnonzero(checks["misfit"][t] | checks["blanked"][t]) if not lost[k]]
        if slices:
            out[int(t)] = slices
    return out


def _lost_mask(checks, study, t):
    from .readers.geometry_check import lost_image_mask

    if t not in checks["lost"]:
        checks["lost"][t] = lost_image_mask(study.images[t])
    return checks["lost"][t]


def _image_checks(study):
    """The per-study cache of the lost- and misfit-image checks, read again when the images
    change (a new input on the same Study object)."""
    cache = getattr(study, "_image_checks", None)
    if cache is None or cache["images"] is not study.images:
        cache = {"images": study.images, "lost": {}, "misfit": None, "blanked": None, "medians": None}
        study._image_checks = cache
    return cache


def _labels_and_voxel(source, voxel_volume_ml):
    if isinstance(source, dict):
        labels = source
        if voxel_volume_ml is None:
            raise CardiacInputError("labels", "voxel_volume_ml is required when passing a labels dict")
    else:
        labels = source.labels
        if voxel_volume_ml is None:
            voxel_volume_ml = slice_voxel_volumes_ml(source)
    return labels, voxel_volume_ml


def volume_curve(source, voxel_volume_ml=None):
    """{frame: {'lv', 'myo', 'rv'} mL} for every labelled frame, in frame order.

    ``source`` is a Study (voxel volume taken from its affine unless given) or a
    ``{frame: label_map}`` dict (then ``voxel_volume_ml`` is required).
    """
    labels, vv = _labels_and_voxel(source, voxel_volume_ml)
    return {int(t): structure_volumes_ml(labels[t], vv) for t in sorted(labels)}


def _lv_series(curve):
    """(frames, lv volumes) from a volume_curve dict, a {frame: float} dict or a sequence."""
    if isinstance(curve, dict):
        frames = sorted(curve)
        vals = [curve[t]["lv"] if isinstance(curve[t], dict) else curve[t] for t in frames]
    else:
        vals = list(curve)
        frames = list(range(len(vals)))
    return np.asarray(frames, int), np.asarray(vals, float)


def _unknown_label_note(study):
    """'; <what the label file's reader said of values it did not know>' (259, a slope of 2 that
    made 1 into 2), the likelier reason for an empty ventricle than the labels themselves
    (probe 21); "" when it said nothing."""
    notes = [w for w in (study.provenance or {}).get("warnings", []) if "label values" in w]
    return f"; {notes[0]}" if notes else ""


def ed_es_from_curve(curve, n_frames=None):
    """(ed_frame, es_frame, warnings): ED = argmax LV volume, ES = argmin.

    ``n_frames`` (the series length) lets the ED check wrap around the cycle; by default
    it is the last frame in the curve + 1.
    """
    frames, lv = _lv_series(curve)
    if lv.size < 2:
        raise CardiacInputError("volume curve", f"need at least 2 labelled frames to find ED and ES, got {lv.size}")
    if not np.all(np.isfinite(lv)):
        raise CardiacInputError("volume curve", "LV volume curve contains NaN or infinite values")
    ed, es = int(frames[np.argmax(lv)]), int(frames[np.argmin(lv)])
    warnings = []
    if lv.max() <= 0:
        raise CardiacInputError("volume curve", "no LV blood pool in any frame")
    if ed == es:
        warnings.append("LV volume is constant over the labelled frames: ED and ES are undefined")
    n = int(n_frames) if n_frames else int(frames.max()) + 1
    dist = min(ed, n - ed)
    if n >= 5 and dist > max(1, int(round(_ED_WARN_FRACTION * n))):
        warnings.append(f"ED (largest LV volume) is frame {ed + 1}, {dist} frames from the start of the "
                        f"cycle: expected near the first frame for an ECG-triggered series; check the trigger or labels")
    return ed, es, warnings


def _cyclic_runs(frames, n):
    """How many separate runs the sorted frame indices form on a cycle of ``n`` frames."""
    if not frames:
        return 0
    s = set(frames)
    return sum(1 for f in s if (f - 1) % n not in s) or 1   # a run starts where its previous frame is missing


def ed_es_certainty(lv_curve, tolerance=ED_ES_TOLERANCE):
    """How sure the curve's ED (largest LV volume) and ES (smallest) are, for a whole cycle.

    ``ed_candidates``/``es_candidates``: frames within ``tolerance`` x EDV of the extreme.
    ``ed_sure``/``es_sure``: those frames are one run on the cycle (frame 0 follows the last):
    a plateau around one phase, not two separate parts of the cycle that a flipping basal slice
    or an arrhythmic beat made look alike; and the curve is not ``ragged`` (``ragged_pct``: the
    median share of its range by which a frame stands out of its two neighbours, RAGGED_SHARE). ``ed_margin_pct``/``es_margin_pct``: how far (in % of
    EDV) the extreme stands out from every frame more than one frame away from it."""
    v = np.asarray(lv_curve, float)
    n = len(v)
    vmax, vmin = float(v.max()), float(v.min())
    ed, es = int(np.argmax(v)), int(np.argmin(v))
    ed_c = [int(i) for i in np.nonzero(v >= vmax - tolerance * vmax)[0]]
    es_c = [int(i) for i in np.nonzero(v <= vmin + tolerance * vmax)[0]]

    def others(center):
        return [i for i in range(n) if min(abs(i - center), n - abs(i - center)) > 1]

    far_ed, far_es = others(ed), others(es)
    ragged = (float(np.median([abs(stands_out_pct(v, t)) for t in range(n)])) if n >= SPIKE_MIN_FRAMES else None)
    smooth = ragged is None or ragged < 100 * (RAGGED_SHARE + (1 - np.cos(2 * np.pi / n)) / 2)
    return {
        "ed_candidates": ed_c, "es_candidates": es_c,
        "ed_spike_pct": stands_out_pct(v, ed), "es_spike_pct": -stands_out_pct(v, es),
        "ragged_pct": ragged, "ragged": not smooth,
        "ed_sure": _cyclic_runs(ed_c, n) == 1 and smooth, "es_sure": _cyclic_runs(es_c, n) == 1 and smooth,
        "ed_margin_pct": round(100 * (vmax - v[far_ed].max()) / vmax, 2) if far_ed else None,
        "es_margin_pct": round(100 * (v[far_es].min() - vmin) / vmax, 2) if far_es else None,
        "tolerance_pct": 100 * tolerance,
    }


def ragged_text(certainty):
    """The warning for a ragged volume curve (``ed_es_certainty``), said once for ED and ES."""
    return (f"ED and ES are uncertain: the LV volume curve jumps from frame to frame (a frame stands "
            f"{certainty['ragged_pct']:.0f} % of the curve's range out of its two neighbours at the median; whole real "
            "cycles 1-2 %): the frames' segmentations disagree (noise, a slice flipping in and out); check the contours "
            "across the cycle")


def stands_out_pct(curve, t):
    """How far frame ``t`` of a whole cycle's volume curve stands above (positive) or below the
    mean of its two neighbouring frames (the cycle wraps), in % of the curve's range."""
    v = np.asarray(curve, float)
    n, spread = len(v), float(v.max() - v.min())
    return round(float(100 * (v[t] - (v[(t - 1) % n] + v[(t + 1) % n]) / 2) / spread), 1) if spread > 0 else 0.0


def _ef(edv, esv):
    return 100.0 * (edv - esv) / edv if edv > 0 else None


def blood_pool_curve(study, labels, reference, margin_px=3):
    """(T,) the LV blood pool as the images show it in every frame: pixels brighter than halfway
    between the reference frame's blood and myocardium (bSSFP: blood is bright) inside its
    labelled LV and myocardium, widened by ``margin_px``, summed over slices. It follows the LV
    volume over the cycle where only ED and ES are labelled; None where nothing can be read."""
    from scipy import ndimage

    lab = np.asarray(labels[reference])
    images = np.asarray(study.images)
    out = np.zeros(study.n_frames)
    used = False
    for k in range(study.n_slices):
        lv, myo = lab[k] == LV, lab[k] == MYO
        if lv.sum() < 10 or myo.sum() < 10:
            continue
        blood, wall = np.median(images[reference, k][lv]), np.median(images[reference, k][myo])
        if not blood > wall:
            continue   # no bright-blood contrast on this slice
        region = ndimage.binary_dilation(lv | myo, iterations=margin_px)
        out += (images[:, k][:, region] > 0.5 * (blood + wall)).sum(1)
        used = True
    return out if used and out.max() > 0 else None


def _ed_es_given(study):
    """Whether the study fixed both ED and ES (ACDC Info.cfg, Sunnybrook's contours)."""
    return study.ed_frame is not None and study.es_frame is not None


def _ed_es_check(study, labels, curve, ed, es):
    """{'by', 'ed_position', 'es_position', 'largest', 'smallest', 'disagree', ...} for ED/ES the
    study fixed (ACDC Info.cfg), or taken as the largest and smallest LV of fewer labelled frames
    than the cine has (the M&Ms layout: ED and ES labelled in a 4D map): positions 1 = the
    largest LV, 0 = the smallest. None when there is nothing to check against (a whole cycle
    labelled, whose own extremes ED and ES then are)."""
    if study.n_frames < ED_ES_MIN_FRAMES or not (_ed_es_given(study) or len(curve) < study.n_frames):
        return None
    if len(curve) == study.n_frames:
        lv = np.array([curve[t]["lv"] for t in range(study.n_frames)])
        by = "the labelled LV volume of every frame"
    else:
        lv = blood_pool_curve(study, labels, ed)
        by = "the LV blood pool in the images (bright pixels inside the labelled LV and myocardium)"
        if lv is None:
            return None
    lo, hi = float(lv.min()), float(lv.max())
    if not hi > 0 or (hi - lo) / hi < ED_ES_MIN_RANGE:
        return None
    check = {"by": by, "largest": int(np.argmax(lv)), "smallest": int(np.argmin(lv)),
             "ed_position": (float(lv[ed]) - lo) / (hi - lo), "es_position": (float(lv[es]) - lo) / (hi - lo)}
    if len(curve) == study.n_frames:
        check["ef_from_curve_pct"] = 100.0 * (hi - lo) / hi
        check["disagree"] = abs(_ef(lv[ed], lv[es]) - check["ef_from_curve_pct"]) > ED_ES_EF_POINTS
    else:
        check["disagree"] = check["ed_position"] < ED_ES_SPLIT or check["es_position"] > ED_ES_SPLIT
    return check


def _labelled_ed_es_off_text(ed, es, check, labelled, n_frames):
    """The opening of the warning for ED/ES taken from a few labelled frames of a whole cine
    that the images' blood pool (``_ed_es_check``) puts elsewhere: which labelled frame is off."""
    off = [f"{name} (frame {t + 1})" for name, t, wrong in
           (("ED", ed, check["ed_position"] < ED_ES_SPLIT), ("ES", es, check["es_position"] > ED_ES_SPLIT)) if wrong]
    frames = f" ({', '.join(str(t + 1) for t in labelled)})" if len(labelled) <= 10 else ""
    return (f"the labelled {' and '.join(off)} {'is' if len(off) == 1 else 'are'} not where the images put "
            f"{'it' if len(off) == 1 else 'them'} (frames counted from 1): ED and ES were taken as the largest and "
            f"smallest LV of the {len(labelled)} labelled frames{frames} of this {n_frames}-frame cine")


def ed_es_timing(study, ed, es):
    """{"ed_ms", "es_ms", "problems": [...]} for a cine of under ED_ES_MIN_FRAMES frames with DICOM
    trigger delays (medians over the slices), else None; ``problems`` says where ED or ES lies
    outside the cycle's place for it (ES_DELAY_MS, ED_AFTER_ES_MS)."""
    from .readers import ED_TRIGGER_DELAY_MS

    delays = (study.provenance or {}).get("trigger_times_ms")
    if not delays or study.n_frames >= ED_ES_MIN_FRAMES or ed == es:
        return None
    try:
        d = np.asarray(delays, float)   # (slice, frame)
    except ValueError:   # slices with different numbers of phases
        return None
    if d.ndim != 2 or d.shape[1] != study.n_frames or not np.isfinite(d).all():
        return None
    ed_ms, es_ms = float(np.median(d[:, ed])), float(np.median(d[:, es]))
    problems = []
    if not ES_DELAY_MS[0] <= es_ms <= ES_DELAY_MS[1]:
        problems.append(f"ES (frame {es + 1}) is {es_ms:.0f} ms after the R wave, where end-systole falls "
                        f"{ES_DELAY_MS[0]:.0f}-{ES_DELAY_MS[1]:.0f} ms after it")
    if ED_TRIGGER_DELAY_MS < ed_ms < es_ms + ED_AFTER_ES_MS:
        problems.append(f"ED (frame {ed + 1}) is {ed_ms:.0f} ms after the R wave: neither at it (0-{ED_TRIGGER_DELAY_MS:.0f} ms) "
                        f"nor {ED_AFTER_ES_MS:.0f} ms or more after ES")
    return {"ed_ms": ed_ms, "es_ms": es_ms, "problems": problems}


def cine_measures(study, labels=None, density=MYOCARDIAL_DENSITY_G_ML, kept_ed_es=None):
    """EDV/ESV/SV/EF, LV mass (``density``, 1.05 g/mL, x myocardium at ED) and RV volumes of a cine study.

    ``labels`` (``{frame: (S, R, C) label map}``) defaults to ``study.labels``. ED and ES are
    ``kept_ed_es`` (the frames an edit kept, ``Analysis.kept_ed_es``), else ``study.ed_frame`` /
    ``study.es_frame`` when the reader knows them (ACDC Info.cfg), else the argmax / argmin of
    the LV volume curve. Returns the keys in ``MEASURE_KEYS`` plus
    ``'warnings'`` (a list of strings). ``lv_volume_curve_ml`` is a list over all frames when
    every frame is labelled, else None.
    """
    where = _where(study)
    labels = study.labels if labels is None else labels
    if not labels:
        raise CardiacInputError(where, "no label maps: segment the study (or load ground truth) before computing volumes")
    shape = tuple(study.images.shape[1:])
    for t, lab in labels.items():
        if tuple(np.shape(lab)) != shape:
            raise CardiacInputError(where, f"label map of frame {t} has shape {np.shape(lab)}, images are {shape} (slice, row, col)")
        if not 0 <= int(t) < study.n_frames:
            raise CardiacInputError(where, f"label map for frame {t}, but the study has {study.n_frames} frames")
    vv = slice_voxel_volumes_ml(study)
    curve = volume_curve(labels, vv)
    # a lost image (no anatomy) or a damaged one (not its slice's) on a slice: that frame's volumes
    # take its share from the slices beside it, as for a missing slice (one slice lost in every
    # frame read EDV 45 % low, one black image at ES EF 35 % for 24 %; probe 41); QC flags it
    # (IMAGE_LOST, IMAGE_DAMAGED)
    lost = lost_images(study, sorted(curve), labels)
    for t, slices in lost.items():
        curve[t] = structure_volumes_ml(labels[t], slice_voxel_volumes_ml(study, slices))
    warnings = []

    ed, es = kept_ed_es if kept_ed_es is not None else (study.ed_frame, study.es_frame)
    if ed is None or es is None:
        if len(curve) < 2:
            missing = "ED" if ed is None else "ES"
            raise CardiacInputError(where, f"{missing} frame unknown and only {len(curve)} labelled frame(s) "
                                           f"(frame {[t + 1 for t in sorted(curve)]} of {study.n_frames}, counted from 1): label ED and ES, or the whole "
                                           "cycle (a 3D label map labels one frame: give ED's and ES's, as the "
                                           ".seg.nrrd files a run writes, which say their frame, or a 4D one)")
        # a frame with a lost image: its dip made it ES (EF 59 % for 24 %, QC pass; probe 41), so
        # it is no candidate while at least half the frames are without one; where most frames
        # hold one, the curve with their share given to the neighbours is the better guide (one
        # lost image in 16 of 20 frames left ES to a diastolic frame: EF 11 % for 28 %; probe 43)
        candidates = {t: v for t, v in curve.items() if t not in lost}
        if lost and len(candidates) >= max(2, len(curve) / 2):
            warnings.append(f"frame(s) {[t + 1 for t in sorted(lost)]} (counted from 1) hold a lost or damaged image on a "
                            "slice: not taken as ED or ES")
        else:
            candidates = curve
        try:
            c_ed, c_es, w = ed_es_from_curve(candidates, study.n_frames)
        except CardiacInputError as e:
            raise CardiacInputError(e.path, e.problem + _unknown_label_note(study)) from None
        warnings += w
        # DICOM trigger delays place the two frames in the cycle: an export of its ED and ES
        # frames (the shipped sample: 300 and 740 ms, ED the later one, at end-diastole)
        triggered = bool((study.provenance or {}).get("trigger_times_ms"))
        if study.n_frames == 2 and ed is None and es is None and not triggered:
            # two frames and nothing naming them: ES is simply the other frame (EF 25 % for 57 %
            # with QC pass when the two were not the cycle's ED and ES; probe 21)
            warnings.append("the series has 2 frames and nothing names them ED and ES: the larger LV is taken as ED and "
                            "the other as ES; EF and SV are right only if these are the cycle's ED and ES frames")
        ed = c_ed if ed is None else ed
        es = c_es if es is None else es
    for name, t in (("ED", ed), ("ES", es)):
        if t not in curve:
            missing = (study.provenance or {}).get("missing_label_files", {}).get(t)
            raise CardiacInputError(where, f"no labels for the {name} frame (frame index {t}, counted from 0"
                                           f"{f'; {missing}' if missing else ''}); labelled frames: {sorted(curve)}")

    lv_edv, lv_esv = curve[ed]["lv"], curve[es]["lv"]
    rv_edv, rv_esv = curve[ed]["rv"], curve[es]["rv"]
    if lv_edv <= 0:
        raise CardiacInputError(where, f"no LV blood pool labelled at ED (frame {ed + 1})" + _unknown_label_note(study))
    full = len(curve) == study.n_frames
    fixed = kept_ed_es is not None or (study.ed_frame is not None and study.es_frame is not None)
    if full and len(curve) > 1 and fixed:
        c_ed, c_es, _ = ed_es_from_curve(curve, study.n_frames)
        if (c_ed, c_es) != (ed, es):
            given = ("ED/ES frames ({}, {}), kept at the frames shown when the segmentation was first edited,"
                     if kept_ed_es is not None else "given ED/ES frames ({}, {})").format(ed + 1, es + 1)
            warnings.append(f"{given} differ from the volume curve's largest/smallest LV volume ({c_ed + 1}, {c_es + 1}; "
                            "frames counted from 1)")

    ed_es_check = _ed_es_check(study, labels, curve, ed, es)
    if ed_es_check and ed_es_check["disagree"] and not full:
        # from the images' brightness, not from labels: said, not a QC flag (an inflow-weighted
        # cine whose blood darkens in diastasis moves the curve's minimum there)
        # taken from the labels only when nothing fixed either frame (review 1: frames an edit
        # kept, or one the study gave, were said "taken as the largest and smallest LV")
        from_labels = kept_ed_es is None and study.ed_frame is None and study.es_frame is None
        where = (f"{ed_es_check['by']} is largest and smallest at frames {ed_es_check['largest'] + 1} and "
                 f"{ed_es_check['smallest'] + 1} (the {'labelled' if from_labels else 'given'} ones at "
                 f"{100 * ed_es_check['ed_position']:.0f} % and {100 * ed_es_check['es_position']:.0f} % of its range)")
        if not from_labels:
            how = ("kept at the frames shown when the segmentation was first edited" if kept_ed_es is not None
                   else "given" if _ed_es_given(study) else "used")
            warnings.append(f"the ED and ES frames {how} ({ed + 1}, {es + 1}, counted from 1) may not be ED and ES: "
                            f"{where}; check the ED/ES frames" + (" (Info.cfg)" if how == "given" else ""))
        else:
            warnings.append(_labelled_ed_es_off_text(ed, es, ed_es_check, sorted(curve), study.n_frames)
                            + f"; {where}: EF and ESV are measured between the labelled frames; check which phases "
                              "the labels are of (label the cycle's ED and ES, or every frame)")
    if curve[ed]["myo"] <= 0:
        warnings.append(f"no LV myocardium labelled at ED (frame {ed + 1}): LV mass is 0")
    elif es != ed and es in curve and curve[es]["myo"] <= 0:
        # the epicardium drawn at ED only (Sunnybrook's experts): the mass is measured at ED, and
        # QC leaves such labels unflagged, so it is said here
        warnings.append(f"no LV myocardium labelled at ES (frame {es + 1}): the ES wall is not measured (the mass is ED's)")
    rv_measured = any((np.asarray(m) == RV).any() for m in labels.values())
    if not rv_measured:
        # no RV on any labelled frame (LV-only contours, Sunnybrook's): the RV was not measured,
        # so its volumes are not numbers (0 mL read as one in results.json and cohort tables)
        rv_edv = rv_esv = None
        warnings.append("no RV labelled on any frame: RV measures are not given")
    elif rv_edv <= 0:
        warnings.append(f"no RV labelled at ED (frame {ed + 1}): RV measures are undefined")
    if lv_esv > lv_edv:
        warnings.append("LV ESV exceeds EDV: ED and ES frames may be swapped")
    timing = ed_es_timing(study, ed, es)
    if timing and timing["problems"]:
        warnings.append("the trigger delays place the frames taken as ED and ES elsewhere in the cycle: "
                        + "; ".join(timing["problems"]) + ": EF and SV are not the cycle's; give its ED and ES phases")
    certainty = None
    if full and study.n_frames >= ED_ES_MIN_FRAMES:
        certainty = ed_es_certainty([curve[t]["lv"] for t in range(study.n_frames)])
        if certainty["ragged"]:
            warnings.append(ragged_text(certainty))
        for phase, word in (("ed", "largest"), ("es", "smallest")):
            if not certainty[f"{phase}_sure"] and not certainty["ragged"]:
                warnings.append(f"{phase.upper()} is uncertain: separate parts of the cycle (frames "
                                f"{[f + 1 for f in certainty[phase + '_candidates']]}, counted from 1) come within {certainty['tolerance_pct']:g} % of EDV of the "
                                f"{word} LV volume; check the basal slices of those frames")

    out = {
        "ed_frame": int(ed), "es_frame": int(es),
        "lv_edv_ml": lv_edv, "lv_esv_ml": lv_esv, "lv_sv_ml": lv_edv - lv_esv, "lv_ef_pct": _ef(lv_edv, lv_esv),
        "lv_mass_g": float(density) * curve[ed]["myo"],
        "rv_edv_ml": rv_edv, "rv_esv_ml": rv_esv,
        "rv_sv_ml": (rv_edv - rv_esv) if rv_edv else None, "rv_ef_pct": _ef(rv_edv, rv_esv) if rv_edv is not None else None,
        "lv_volume_curve_ml": [curve[t]["lv"] for t in range(study.n_frames)] if full else None,
        "ed_es_certainty": certainty,
        "ed_es_check": ed_es_check,
        "ed_es_timing": timing,
        "warnings": warnings,
    }
    return out
