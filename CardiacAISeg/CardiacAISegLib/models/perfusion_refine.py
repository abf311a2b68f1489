"""Check and mend a perfusion network's mask with the bolus itself (physiology, not learning).

The perfusion network is trained on synthetic series only, so on a real series its mask is
checked against what the first pass shows unambiguously:

- the LV blood pool is the bright blob at the AIF peak that the network's LV overlaps most,
  excluding blood that peaks earlier (the RV); its convex hull takes in the papillary muscles;
- the myocardium is a band around that pool whose thickness follows the network where the
  network's wall is plausible (between ``min_ratio`` and ``max_ratio`` of the pool's radius) and
  the median plausible thickness elsewhere, so a wall the network lost is filled and a wall that
  swallowed the surrounding tissue is trimmed;
- pixels whose curve looks like blood (above ``blood_fraction`` of the pool's level, or brighter
  at the AIF peak than ever after the first pass) leave the myocardium: partial volume with the
  cavity or the RV would inflate MBF. (``gap_px`` can also drop whole layers next to the pool;
  measured on the phantoms it costs more wall than it saves, so it is 0 by default.)

Each slice gets a short report (how much of the ring was filled or trimmed) so the user knows
where to look before trusting the numbers.
"""
import numpy as np

from ..labels import LV, MYO, RV

N_SECTORS = 36


def blood_fraction_for(units):
    """The share of the blood pool's enhancement above which a myocardial pixel reads as blood:
    signal-intensity myocardium enhances to a larger share of the (saturated) blood signal than
    Gd concentration does, so the threshold follows the units (the mask check here and QC's
    MYO_BLOOD_LIKE use the same)."""
    return 0.25 if units == "gd_mmol_l" else 0.5


def blood_pool_from_bolus(frames, at_peak, peak, net_lv, net_rv):
    """(pool mask or None, pool level): the AIF-peak blob the network's LV overlaps most, hull-filled."""
    from scipy import ndimage

    from ..perfusion.roi import convex_fill

    level = float(np.median(at_peak[net_lv])) if net_lv.sum() >= 4 else float(np.percentile(at_peak, 99))
    bright = at_peak > 0.5 * level
    early = np.argmax(frames, axis=0) < peak - 2       # peaks before the LV: right-heart blood
    bright &= ~(early & net_rv)
    comps, n = ndimage.label(bright)
    if n == 0:
        return None, level
    overlap = ndimage.sum(net_lv if net_lv.any() else bright, comps, range(1, n + 1))
    pts = np.argwhere(comps == 1 + int(np.argmax(overlap)))
    return (convex_fill(pts, at_peak.shape) if len(pts) >= 4 else None), level


def enhancement_frames(frames, aif):
    """Frames minus their pre-contrast baseline (the frames before the AIF's foot).

    Every test below compares brightness with the blood pool's: in signal-intensity series
    (no Gd conversion) the pre-contrast signal of tissue is a large part of its brightness, so
    raw signal would call well-perfused myocardium "blood". Gd series have a zero baseline and
    are unchanged.
    """
    from ..errors import CardiacInputError
    from ..perfusion.mbf import find_foot, subtract_baseline

    frames = np.asarray(frames, np.float64)
    try:
        foot = find_foot(aif)
    except CardiacInputError:
        return frames
    return subtract_baseline(frames, foot, axis=0)


def frames_aligned(frames, labels, pixel_mm=None):
    """(frames aligned with each other by motion correction, max shift in pixels, the (T, 2)
    frame-to-frame shifts or None when the frames could not be registered).

    Breathing moves blood over the wall in some frames; tested frame by frame without this,
    those wall pixels look like blood and are cut (breathing phantom: a third of the wall). The
    frames are aligned at their median position, not onto the network's mask, which is what is
    being checked here (``labels`` only places the window). Without a pixel size, shifts up to
    6 pixels are searched (10 mm at 1.7 mm pixels)."""
    from ..perfusion.motion import DEAD_BAND_PX, apply_shifts, estimate_shifts

    if pixel_mm is None:
        shifts, note = estimate_shifts(frames, labels, (1.0, 1.0), max_shift_mm=6.0, onto_mask=False)
    else:
        shifts, note = estimate_shifts(frames, labels, pixel_mm, onto_mask=False)
    if not note.get("registered"):
        return frames, 0.0, None
    biggest = float(np.abs(shifts).max())
    if biggest <= DEAD_BAND_PX:
        return frames, 0.0, shifts
    return apply_shifts(np.asarray(frames, np.float64), shifts), biggest, shifts


def refine_study_slice(study, k, labels, **options):
    """``refine_slice`` for slice ``k`` of a perfusion study, at the study's pixel size. The
    frame-to-frame alignment the check estimates is kept in
    ``study.provenance["frame_alignment"][k]``: the motion correction before the MBF fit
    (``motion.correct``) reuses it on the same frames and only places the aligned series on the
    final mask, so breathing is registered once per slice, not twice."""
    from ..perfusion.motion import alignment_record

    pixel_mm = study.spacing_rc
    frames = study.images[:, k]
    out, report, shifts = _refine_slice(frames, study.aif, labels, pixel_mm=pixel_mm, **options)
    alignments = study.provenance.setdefault("frame_alignment", {})
    if shifts is None:
        alignments.pop(k, None)
    else:
        alignments[k] = alignment_record(frames, shifts, pixel_mm)
    return out, report


def refine_slice(frames, aif, labels, min_ratio=0.25, max_ratio=1.0, blood_fraction=0.25, gap_px=0.0, peak_ratio=1.2,
                 motion=True, pixel_mm=None):
    """(refined (R, C) labels, report) for one slice's (T, R, C) frames and network labels.

    With ``motion`` the frames are first aligned with each other (``frames_aligned``), so the
    blood-likeness tests read each pixel's own curve; ``pixel_mm`` (row, col) sets the search
    range in millimetres when known."""
    out, report, _ = _refine_slice(frames, aif, labels, min_ratio, max_ratio, blood_fraction, gap_px, peak_ratio,
                                   motion, pixel_mm)
    return out, report


def _refine_slice(frames, aif, labels, min_ratio=0.25, max_ratio=1.0, blood_fraction=0.25, gap_px=0.0, peak_ratio=1.2,
                  motion=True, pixel_mm=None):
    """``refine_slice``, and the frame-to-frame shifts it aligned the frames with (None if none)."""
    from scipy import ndimage

    from ..perfusion.roi import peak_image

    net_lv, net_myo, net_rv = labels == LV, labels == MYO, labels == RV
    moved_px, shifts = 0.0, None
    if motion and net_lv.any() and net_myo.any():
        frames, moved_px, shifts = frames_aligned(frames, labels, pixel_mm)
    frames = enhancement_frames(frames, aif)
    peak = int(np.argmax(aif))
    at_peak = peak_image(frames, aif)
    pool, level = blood_pool_from_bolus(frames, at_peak, peak, net_lv, net_rv)
    if pool is None:
        return labels.copy(), {"refined": False, "reason": "no blood pool found at the AIF peak"}, shifts
    radius = np.sqrt(pool.sum() / np.pi)
    dist = ndimage.distance_transform_edt(~pool)
    cy, cx = np.argwhere(pool).mean(0)
    yy, xx = np.indices(pool.shape)
    sector = ((np.arctan2(yy - cy, xx - cx) + np.pi) / (2 * np.pi) * N_SECTORS).astype(int) % N_SECTORS

    lo, hi = min_ratio * radius, max_ratio * radius
    attached = net_myo & ~pool & (dist <= hi * 1.5)
    thick = np.full(N_SECTORS, np.nan)
    for s in range(N_SECTORS):
        d = dist[attached & (sector == s)]
        if d.size:
            thick[s] = d.max()
    plausible = (thick >= lo) & (thick <= hi)
    # With no plausible sector at all, a mid-ventricular diastolic proportion (wall ~ 0.45 x radius).
    typical = float(np.median(thick[plausible])) if plausible.any() else 0.45 * float(radius)
    used = np.where(plausible, thick, typical)

    outer = np.maximum(used, gap_px + 1)[sector]
    ring = (dist > gap_px) & (dist <= outer) & ~net_rv
    # Blood peaks with the AIF and washes out; myocardium is still rising then. A pixel
    # brighter at the AIF peak than at any time after the first pass holds blood.
    late = frames[peak + 3:].max(0) if frames.shape[0] > peak + 3 else at_peak
    blood_like = (frames.max(0) > blood_fraction * level) | (at_peak > peak_ratio * np.maximum(late, 1e-6))
    ring &= ~blood_like
    out = np.zeros_like(labels)
    out[net_rv & ~pool & ~ring] = RV
    out[ring] = MYO
    out[pool] = LV
    report = {"refined": True, "pool_radius_px": round(float(radius), 2), "wall_px": round(float(typical), 2),
              "sectors_from_network": int(plausible.sum()), "sectors_filled": int(np.isnan(thick).sum()),
              "sectors_trimmed": int((thick > hi).sum()), "sectors_widened": int((thick < lo).sum()),
              "blood_like_pixels_removed": int(((dist > gap_px) & (dist <= outer) & blood_like).sum()),
              "motion_max_shift_px": round(moved_px, 2)}
    return out, report, shifts
