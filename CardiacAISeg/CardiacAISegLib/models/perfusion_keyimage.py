"""Perfusion segmented by the cine network on a cine-like key image of the first pass (issue 9).

The perfusion network is trained on synthetic series only; on real full field-of-view series
from another centre it found the chest wall (myocardium Dice 0.00), while the cine network,
trained on real MRI, applied to an average of frames of the same series found the heart
(Dice ~0.81). Here, per slice:

1. the bolus is located without labels (``bolus.locate_blood_pools`` on the middle slice: the
   RV lights up first, the LV a transit later), which gives the LV peak frame, the heart's
   centre and the LV pool's size;
2. a *key image* is the mean of a few frames around one moment of the first pass:
   ``lv-peak`` (blood bright, myocardium not yet enhanced: bright cavity, dark wall, as in a
   bSSFP cine) or ``myo-peak`` (peak myocardial enhancement: the wall bright against fat and
   lung, the cavity washing out);
3. the cine network (the registry's default cine model unless another is named) segments the
   key images in a square around the heart found from the bolus, at its own pixel size; its
   class probabilities are resampled back onto the perfusion grid exactly
   (``inference.predict_volume_probabilities``), so the mask overlays every frame.

When the file carries no pixel size (Analyze crops such as the QPerf examples, the
low-resolution AIF images), the pixel size is estimated from the LV pool's area at the bolus
peak (``TYPICAL_LV_POOL_DIAMETER_MM``), because the cine network reads shapes in millimetres.
"""
import numpy as np

from ..errors import CardiacInputError

KEY_IMAGE_MODES = ("lv-peak", "myo-peak")
# Measured with tools/compare_perfusion_segmenters.py (docs/models.md), averaged with the
# perfusion network: lv-peak and myo-peak tie on the segmentation (synthetic full-FOV MYO Dice
# 0.862 vs 0.854, real aif_detection LV 0.818 vs 0.832, QPerf MBF alike), but at the myocardial
# peak the RV has washed out and the cine network labels none (QPerf stress: 0 RV pixels), so
# the AHA insertion points were lost; at the LV peak the RV is still bright and labelled.
DEFAULT_KEY_IMAGE = "lv-peak"
# Frames averaged on each side of the key moment: 3 frames (1.5-3 s) smooth noise without
# letting the bolus move on (the LV peak lasts 2-4 frames at 0.5-1 s per frame).
KEY_HALF_WIDTH = 1
# Side of the heart square for a cine network trained on whole fields (no heart_crop_mm in its
# card): the square the v3 crop model was trained on, wide enough for dilated hearts.
DEFAULT_SQUARE_MM = 160.0
# A field within this factor of the square is segmented whole (nothing to cut away).
SMALL_FIELD_FACTOR = 1.15
# Equivalent diameter of the LV blood pool at the bolus peak, for series without a pixel size.
# ACDC mid-ventricular LV cavities are 45-55 mm at ED and 30-40 mm at ES; perfusion slices are
# read at various phases, so the middle is taken. The cine network was trained with scale
# augmentation of 0.8-1.25 (strong: 0.7-1.4), which covers the spread of this guess.
TYPICAL_LV_POOL_DIAMETER_MM = 42.0
# Myocardium is looked for in this band outside the LV pool when the myocardial peak is timed.
MYO_BAND_MM = (2.0, 9.0)


def pixel_size_known(study):
    """False when the reader had no real pixel size: Analyze-style files without orientation
    that store a placeholder of 1 x 1 mm."""
    sp = np.asarray(study.spacing[:2], float)
    return bool(study.orientation_known or not np.allclose(sp, 1.0))


def bolus_timing(study, slice_index=None):
    """The bolus on one slice (default: the middle one): ``bolus.locate_blood_pools``' dict plus
    ``myo_peak_frame``. Raises CardiacInputError when no bolus passes."""
    from scipy import ndimage

    from ..perfusion.bolus import locate_blood_pools

    k = study.n_slices // 2 if slice_index is None else slice_index
    frames = study.images[:, k]
    pixel_mm = float(study.spacing[0]) if pixel_size_known(study) else None
    pools = locate_blood_pools(frames, dt_s=study.median_frame_interval_s, pixel_mm=pixel_mm)
    pools["slice"] = k
    e = pools["enhancement"]
    lv_peak = pools["lv_peak_frame"]
    # the wall: a band just outside the LV pool, without the RV, among pixels that peak after
    # the LV (blood peaks with or before it; myocardium peaks seconds later)
    px = pixel_mm or TYPICAL_LV_POOL_DIAMETER_MM / max(2 * pools["lv_radius_px"], 1.0)
    dist = ndimage.distance_transform_edt(~pools["lv"])
    band = (dist > MYO_BAND_MM[0] / px) & (dist <= MYO_BAND_MM[1] / px) & ~pools["rv"]
    band &= e.argmax(0) > lv_peak
    if band.sum() >= 4 and lv_peak + 1 < e.shape[0]:
        curve = np.median(e[:, band], axis=1)
        pools["myo_peak_frame"] = lv_peak + 1 + int(np.argmax(curve[lv_peak + 1:]))
    else:
        pools["myo_peak_frame"] = min(e.shape[0] - 1, lv_peak + 4)   # ~2-4 s after the LV peak
    return pools


def bolus_timing_or_curve_peak(study):
    """``bolus_timing``, or when no blood pool is found, a low-confidence timing from the AIF (or
    the whole image's mean curve): its peak as the LV peak, the wall 4 frames later."""
    try:
        return bolus_timing(study)
    except CardiacInputError as error:
        curve = study.aif if study.aif is not None else study.images.reshape(study.n_frames, -1).mean(1)
        peak = int(np.argmax(curve))
        return {"lv_peak_frame": peak, "myo_peak_frame": min(study.n_frames - 1, peak + 4), "confidence": "low",
                "lv_radius_px": None, "reason": f"no blood pool found from the bolus ({error.problem}); "
                                               f"frames timed on the {'AIF' if study.aif is not None else 'mean image curve'}"}


def heart_axis_rc(timing):
    """The LV -> RV direction in (row, column) pixels that the bolus found (``bolus_timing``), or
    None without a confident find: what the "oriented" reading (``inference.variants_for``) turns by."""
    if not timing or timing.get("confidence") != "high" or timing.get("rv") is None or not timing["rv"].any():
        return None
    rows, cols = np.nonzero(timing["rv"])
    cy, cx = timing["lv_center_rc"]
    return float(rows.mean() - cy), float(cols.mean() - cx)


def key_frames(timing, mode, n_frames, half_width=KEY_HALF_WIDTH):
    """Indices of the frames averaged into the key image."""
    if mode not in KEY_IMAGE_MODES:
        raise CardiacInputError("key image", f"mode must be one of {', '.join(KEY_IMAGE_MODES)}, not {mode!r}")
    centre = timing["lv_peak_frame"] if mode == "lv-peak" else timing["myo_peak_frame"]
    return np.clip(np.arange(centre - half_width, centre + half_width + 1), 0, n_frames - 1)


def key_images(study, timing, mode):
    """(S, R, C) key images: per slice the mean signal over ``key_frames``."""
    frames = key_frames(timing, mode, study.n_frames)
    return np.maximum(study.images[frames].astype(np.float32), 0).mean(0)


def working_pixel_mm(study, timing):
    """(row, col) pixel size in mm to give the cine network: the file's when it has one, else the
    estimate from the LV pool (``TYPICAL_LV_POOL_DIAMETER_MM``), and how it was decided."""
    if pixel_size_known(study) or not timing.get("lv_radius_px"):
        return study.spacing_rc, "file"
    px = TYPICAL_LV_POOL_DIAMETER_MM / max(2 * timing["lv_radius_px"], 1.0)
    return (px, px), f"estimated from the LV pool ({2 * timing['lv_radius_px']:.1f} px = {TYPICAL_LV_POOL_DIAMETER_MM:g} mm)"


def square_around_heart(shape_rc, spacing_rc, pools, side_mm):
    """(row slice, col slice) of a square of ``side_mm`` centred a little towards the RV from the
    LV the bolus found (``pools``: ``bolus.locate_blood_pools``' dict), so the RV stays in view;
    clipped into the field. The perfusion network's crop and the key image's square both use it."""
    rows, cols = shape_rc
    cy, cx = pools["lv_center_rc"]
    if pools["rv"].any():
        ry, rx = np.nonzero(pools["rv"])
        cy, cx = cy + 0.25 * (ry.mean() - cy), cx + 0.25 * (rx.mean() - cx)

    def side(centre, n, spacing):
        length = min(n, int(round(side_mm / spacing)))
        start = min(max(int(round(centre - length / 2)), 0), n - length)
        return slice(start, start + length)

    return side(cy, rows, spacing_rc[0]), side(cx, cols, spacing_rc[1])


def heart_square(shape_rc, spacing_rc, timing, side_mm):
    """``square_around_heart`` for the cine network, or None when the field is already within
    SMALL_FIELD_FACTOR of the square."""
    rows, cols = shape_rc
    if rows * spacing_rc[0] <= side_mm * SMALL_FIELD_FACTOR and cols * spacing_rc[1] <= side_mm * SMALL_FIELD_FACTOR:
        return None
    return square_around_heart(shape_rc, spacing_rc, timing, side_mm)


def cine_key_image_probabilities(study, cine_model, mode=DEFAULT_KEY_IMAGE, timing=None, device="cpu", tta=None):
    """(S, K, R, C) class probabilities on the perfusion grid from ``cine_model`` (a registry
    LoadedModel) on the key images, and a record of what was done (for provenance). ``tta``
    (inference.TTA_VARIANTS) overrides the cine card's own: a few key images can afford mirroring
    that a whole cine stack need not pay for."""
    from .inference import ORIENTED, ORIENTED4, cine_heart_box, predict_volume_probabilities, variants_for

    if timing is None:
        timing = bolus_timing_or_curve_peak(study)
    spec = cine_model.card["input"]
    multiple = spec.get("size_multiple", 16)
    tta = tta or spec.get("tta", "none")
    spacing_rc, pixel_source = working_pixel_mm(study, timing)
    keys = key_images(study, timing, mode)
    side_mm = spec.get("heart_crop_mm") or DEFAULT_SQUARE_MM
    record = {"mode": mode, "frames": [int(f) for f in key_frames(timing, mode, study.n_frames)],
              "cine_model": cine_model.card["name"], "cine_model_version": str(cine_model.card.get("version", "1")),
              # which weights ran: a member re-imported under its version was taken for the old (probe 95)
              "cine_model_sha256": cine_model.card["weights"].get("sha256", ""),
              "cine_tta": tta, "pixel_mm": [round(v, 3) for v in spacing_rc], "pixel_mm_from": pixel_source,
              "heart_found_by": timing["reason"]}
    if timing["confidence"] == "high":
        box = heart_square(keys.shape[1:], spacing_rc, timing, side_mm)
        axis = heart_axis_rc(timing)
    else:
        # without an RV that peaked first next to it, the bolus "LV" may be the aorta: the cine
        # network finds the heart on the key images itself (its own first pass, which also gives
        # the heart's axis for the oriented readings)
        box, _, axis = cine_heart_box(cine_model.module, keys, spacing_rc, spec["pixel_mm"], side_mm, multiple, device,
                                      return_axis=True)
        record["heart_found_by"] = "the cine network on the key images (the bolus find was not confident)"
    reading = variants_for(tta, axis)
    if tta in (ORIENTED, ORIENTED4) and len(reading) == 8:
        record["cine_tta"] = f"{tta}: no heart axis found, read in the 8 orientations"
    rs, cs = box if box is not None else (slice(0, keys.shape[1]), slice(0, keys.shape[2]))
    record["square"] = {"rows": [rs.start, rs.stop], "cols": [cs.start, cs.stop]}
    inside = predict_volume_probabilities(cine_model.module, np.ascontiguousarray(keys[:, rs, cs]), spacing_rc,
                                          spec["pixel_mm"], multiple, device, tta=reading,
                                          contiguous=False)   # perfusion slices lie 20-30 mm apart
    probs = np.zeros((keys.shape[0], inside.shape[1], *keys.shape[1:]), np.float32)
    probs[:, 0] = 1.0   # background outside the square
    probs[:, :, rs, cs] = inside
    return probs, record
