"""Find the heart from the contrast bolus: the RV blood pool lights up first, the LV after it.

Works on any first-pass series with no labels, no geometry and no AIF: the low-resolution
dual-sequence AIF images, a full field-of-view perfusion slice, or a tight crop. What it gives
- the LV and RV blood pools of a slice (``locate_blood_pools``),
- an arterial input function from the LV blood pool when the scanner wrote none (``aif_from_lv``),
- the heart's centre and size, to crop a full field of view before segmentation.

The method: enhancement = signal minus its pre-contrast baseline; the peak-enhancement image
shows the blood pools brightest; their pixels split by time to peak into an early (RV) and a
late (LV) group; each pool is the largest compact component of its group, and the LV must lie
next to an RV that peaked earlier.
"""
import threading
import zlib
from collections import OrderedDict
from typing import NamedTuple, Optional

import numpy as np
from scipy import ndimage

from ..errors import CardiacInputError
from ..order_stats import row_percentile

# Blood pools peak at least this many seconds apart (RV then LV, one pulmonary transit: 2-8 s).
MIN_TRANSIT_S = 1.0
# The LV blood pool holds at least this share of the blood (enhancement x compactness) of the
# largest pool in the slice: an apical LV beside the descending aorta has about half of it.
MIN_LV_SHARE_OF_LARGEST_POOL = 0.4
# A blood pool's pixels peak together: their time-to-peak interquartile range stays under this
# share of the delay between the two pools of a pair (real pools: 0-1 frames against 8-12).
MAX_POOL_PEAK_SPREAD = 0.5


def bolus_foot(curve, fraction=0.15):
    """First frame at which a rising curve passes ``fraction`` of its rise (0 when it never rises)."""
    curve = np.asarray(curve, float)
    peak = int(np.argmax(curve))
    base = float(np.median(curve[: max(1, min(3, peak))]))
    rise = curve[peak] - base
    if peak == 0 or rise <= 0:
        return 0
    above = np.nonzero(curve[: peak + 1] >= base + fraction * rise)[0]
    return int(above[0]) if above.size else 0


class RecentResults:
    """The last few results of a function of a series' frames, keyed by the frames' content.

    One analysis asks about the middle slice's bolus several times (the reader for the AIF,
    the segmentation for the key frames and the heart square), each with the frames it holds,
    and QC asks again about the labels over the frames on every handle drag
    (``qc.perfusion_labels_off_the_image``); keying on the bytes (not the array's identity)
    makes a copy of the same frames a hit and an edited frame a miss. Keep a few entries: each
    may hold a slice's enhancement, tens of MB on a whole field of view.

    ``key(frames, *args)`` makes the key (``args``: the other inputs of the function, hashable);
    ``get(key)`` gives the value kept or None (so keep None itself wrapped, e.g. in a tuple);
    ``put(key, value)`` keeps it, dropping the least recently used beyond ``size``; ``clear()``
    forgets all. Safe to share between threads (the GUI computes in a worker)."""

    def __init__(self, size):
        self.size, self.entries, self.lock = size, OrderedDict(), threading.Lock()

    @staticmethod
    def key(frames, *args):
        # two independent 32-bit checksums of the bytes: 5x cheaper than a cryptographic hash
        # (which cost 8 ms per 60-frame slice on the 2-core machine), with no accidental match
        # to fear among the few entries kept
        a = np.ascontiguousarray(frames)
        raw = a.view(np.uint8).reshape(-1)
        return (a.shape, a.dtype.str, zlib.crc32(raw), zlib.adler32(raw)) + args

    def get(self, key):
        with self.lock:
            if key in self.entries:
                self.entries.move_to_end(key)
                return self.entries[key]
        return None

    def put(self, key, value):
        with self.lock:
            self.entries[key] = value
            while len(self.entries) > self.size:
                self.entries.popitem(last=False)

    def clear(self):
        with self.lock:
            self.entries.clear()


_recent_pools = RecentResults(size=3)


def forget_recent_results():
    """Empty the cache of recent bolus finds (a benchmark's runs on one series each start cold)."""
    _recent_pools.clear()


def enhancement(frames, smooth_px=1.0):
    """(T, R, C) signal -> (enhancement, foot): signal minus its pre-bolus baseline, smoothed.

    The foot comes from the brightest pixels' curve (the blood pools), so a dark or noisy
    background does not hide it; the baseline is the mean of the frames before it.
    """
    frames = np.asarray(frames, np.float64)
    if frames.ndim != 3 or frames.shape[0] < 8:
        raise CardiacInputError("perfusion series", f"need (frames >= 8, rows, cols), got shape {frames.shape}")
    if smooth_px:
        frames = ndimage.gaussian_filter(frames, (0.7, smooth_px, smooth_px))
    rise = frames - frames[:2].mean(0, keepdims=True)
    top = row_percentile(rise.reshape(rise.shape[0], -1), 99.5)
    foot = bolus_foot(top)
    from .mbf import subtract_baseline

    return subtract_baseline(frames, foot, axis=0), foot


def _compactness(region):
    """Area over the area of its bounding circle about the centroid: 1 for a disc, small for a streak."""
    rr, cc = np.nonzero(region)
    if rr.size < 3:
        return 0.0
    r = np.hypot(rr - rr.mean(), cc - cc.mean()).max() + 0.5
    return float(rr.size / (np.pi * r * r))


def locate_blood_pools(frames, dt_s=None, pixel_mm=None, min_area_mm2=40.0):
    """LV and RV blood pools of one slice from the bolus passage.

    frames: (T, R, C) signal (any units) of one slice; dt_s: frame interval if known (used for
    the minimum RV-to-LV transit); pixel_mm: in-plane pixel size if known (for the area limits).
    Returns a dict: lv, rv (bool (R, C) masks; rv may be empty), lv_peak_frame, rv_peak_frame,
    foot_frame, lv_center_rc, lv_radius_px, confidence ('high' when an RV peaked clearly before
    the LV next to it, else 'low'), reason and the slice's ``enhancement`` (read-only: one array
    for every caller with the same frames). Raises CardiacInputError when no bolus is seen.
    """
    key = RecentResults.key(frames, dt_s, pixel_mm, min_area_mm2)
    known = _recent_pools.get(key)
    if known is None:
        known = _locate_blood_pools(frames, dt_s, pixel_mm, min_area_mm2)
        _recent_pools.put(key, known)
    # a copy of the dict and the masks: callers add their own entries and may edit the masks
    return {k: (v.copy() if isinstance(v, np.ndarray) and k != "enhancement" else v) for k, v in known.items()}


def _locate_blood_pools(frames, dt_s, pixel_mm, min_area_mm2):
    e, foot = enhancement(frames)
    e.flags.writeable = False
    t_count = e.shape[0]
    peak = e.max(0)
    ttp = e.argmax(0)
    ref = np.percentile(peak, 99.5)
    if not np.isfinite(ref) or ref <= 0:
        raise CardiacInputError("perfusion series", "no contrast enhancement: the images do not change over time")
    # frame-to-frame noise of a pixel, robustly: a bolus lifts the blood pools far above it
    # (every 7th pixel is plenty for a median and a seventh of the cost)
    noise = 1.4826 * float(np.median(np.abs(np.diff(e.reshape(t_count, -1)[:, ::7], axis=0)))) / np.sqrt(2)
    if ref < 10 * max(noise, 1e-9):
        raise CardiacInputError("perfusion series", "no contrast bolus found: enhancement does not rise above the noise")
    px_area = (pixel_mm or 1.5) ** 2
    min_area = max(4, int(round(min_area_mm2 / px_area)))
    transit = max(1, int(round(MIN_TRANSIT_S / dt_s))) if dt_s else 2

    candidates = peak > 0.35 * ref
    # specks (noise, small vessels) would pull the split between the two pools
    lab, n = ndimage.label(candidates)
    sizes = ndimage.sum(candidates, lab, index=np.arange(1, n + 1))
    candidates = np.isin(lab, 1 + np.nonzero(sizes >= min_area)[0])
    early_t = ttp[candidates]
    # Two groups by time to peak, early (RV) and late (LV). One split (Otsu on frame indices) is
    # not enough when great vessels are in the slice: the descending aorta peaks after the LV and
    # a vena cava or the pulmonary artery with the RV, so the split may fall between the LV and
    # the aorta and a vessel pair pass for the ventricles. Every split near it is tried and the
    # pair that peaks in order, side by side, with the most blood wins: the ventricles are the
    # largest blood pools of a short-axis slice, and of a chain of pools in order (RV, LV,
    # aorta) the link with the pulmonary transit. An LV far smaller than the largest pool
    # elsewhere is a vessel (a series that starts after the RV's passage shows the aorta beside
    # a vein as the only pair in order).
    split = _otsu(early_t) if early_t.size > 8 else None
    result = {"foot_frame": int(foot), "confidence": "low", "reason": ""}
    lv = rv = None
    if split is not None:
        pairs, pools = [], [_best_pool(candidates, peak, min_area)]
        for s in _splits_to_try(early_t, split):
            late = _best_pool(candidates & (ttp > s), peak, min_area)
            early = _best_pool(candidates & (ttp <= s), peak, min_area, near=late.region) if late.region is not None \
                else _Pool(None, 0.0)
            pools += [late, early]
            if early.region is not None:
                delay = float(np.median(ttp[late.region])) - float(np.median(ttp[early.region]))
                pairs.append(_PoolPair(late, early, delay, is_otsu=s == split))
        plausible = [p for p in pairs if p.lv.score >= MIN_LV_SHARE_OF_LARGEST_POOL * p.largest_elsewhere(pools)]
        in_order = [p for p in plausible if p.delay >= transit]
        # A pool whose pixels peak over a spread of frames comparable to the pair's delay is two
        # pools merged (RV and LV touching across a thin septum once the split falls after both
        # peaks): real blood pools peak within 0-1 frames (interquartile range; the three real AIF
        # series, QPerf stress), a merged RV + LV over the transit itself.
        in_order = [p for p in in_order if not p.holds_a_merge(ttp)] or in_order
        # Three pools in order (a pair's early pool is another pair's late one) are RV -> LV ->
        # aorta or a vena cava -> RV -> LV: the lungs lie between RV and LV, so of the two links
        # the ventricles are the one with the longer delay (aorta and cava: about a second)
        in_order = [p for p in in_order if not any(q is not p and q.chained_with(p) and q.delay > p.delay
                                                   for q in in_order)] or in_order
        if in_order:
            best = max(in_order, key=lambda p: p.lv.score + p.rv.score)
            lv, rv = best.lv.region, best.rv.region
            result.update(confidence="high", reason="RV peaked before the LV next to it")
        else:
            otsu_pair = next((p for p in plausible if p.is_otsu), None)
            if otsu_pair is not None:
                lv, rv = otsu_pair.lv.region, otsu_pair.rv.region
                result["reason"] = "the two brightest pools peak together"
    if lv is None:
        # No clear two-stage passage (a crop without RV, a flat split): the brightest compact pool.
        lv = _best_pool(candidates & (peak > 0.5 * ref), peak, min_area).region
        rv = None
        result["reason"] = result["reason"] or "no RV-then-LV passage found; the brightest blood pool is taken as the LV"
    if lv is None:
        raise CardiacInputError("perfusion series", "no blood pool found in the bolus passage")
    lv = _grow_pool(lv, e, peak)
    if rv is not None:
        rv = _grow_pool(rv, e, peak) & ~lv
    rows, cols = np.nonzero(lv)
    result.update(
        lv=lv, rv=rv if rv is not None else np.zeros_like(lv),
        lv_peak_frame=int(np.argmax(e[:, lv].mean(1))),
        rv_peak_frame=None if rv is None or not rv.any() else int(np.argmax(e[:, rv].mean(1))),
        lv_center_rc=(float(rows.mean()), float(cols.mean())),
        lv_radius_px=float(np.sqrt(lv.sum() / np.pi)), n_frames=t_count, enhancement=e)
    return result


def _otsu(values):
    v = np.sort(np.asarray(values, float))
    lo, hi = v[0], v[-1]
    if hi - lo < 1:
        return None
    best, best_t = -1.0, None
    for t in np.unique(v)[:-1]:
        a, b = v[v <= t], v[v > t]
        score = a.size * b.size * (a.mean() - b.mean()) ** 2
        if score > best:
            best, best_t = score, t
    return best_t


def _splits_to_try(ttp_values, otsu, most=9):
    """Otsu's split and up to ``most`` others among the frames at which candidate pixels peak."""
    frames = np.unique(ttp_values)[:-1]
    if frames.size > most:
        frames = frames[np.unique(np.linspace(0, frames.size - 1, most).round().astype(int))]
    return [otsu] + [f for f in frames if f != otsu]


class _Pool(NamedTuple):
    region: Optional[np.ndarray]   # bool mask, None when no pool was found
    score: float                   # enhancement mass x compactness


class _PoolPair(NamedTuple):
    lv: _Pool
    rv: _Pool
    delay: float                   # frames from the RV's peak to the LV's (medians)
    is_otsu: bool

    def largest_elsewhere(self, pools):
        """The largest of ``pools`` apart from this pair's (a merged LV + RV overlaps it)."""
        both = self.lv.region | self.rv.region
        return max((p.score for p in pools if p.region is not None and not (p.region & both).any()), default=0.0)

    def holds_a_merge(self, ttp):
        """Either pool's pixels peak over an interquartile range of more than half the delay
        between the pools (frames of ``ttp``, the time-to-peak map): two pools merged."""
        def spread(region):
            q1, q3 = np.percentile(ttp[region], [25, 75])
            return q3 - q1
        return bool(max(spread(self.lv.region), spread(self.rv.region)) > MAX_POOL_PEAK_SPREAD * self.delay)

    def chained_with(self, other):
        """One pair's early pool is the other's late one: three pools in order."""
        return bool((self.lv.region & other.rv.region).any() or (other.lv.region & self.rv.region).any())


def _best_pool(mask, peak, min_area, near=None):
    """The ``_Pool`` with the most enhancement mass among compact components (and next to ``near``)."""
    mask = ndimage.binary_opening(mask, iterations=1) if mask.sum() > 4 * min_area else mask
    lab, n = ndimage.label(mask)
    if near is not None:   # once per call, not per component
        gap_to_near = ndimage.distance_transform_edt(~near)
        reach = 1.5 * np.sqrt(near.sum() / np.pi) + 3
    best = _Pool(None, 0.0)
    for i in range(1, n + 1):
        region = lab == i
        area = int(region.sum())
        if area < min_area:
            continue
        comp = _compactness(region)
        if comp < 0.2:
            continue
        if near is not None and gap_to_near[region].min() > reach:
            continue
        score = float(peak[region].sum()) * comp
        if score > best.score:
            best = _Pool(region, score)
    return best


def _grow_pool(seed, e, peak, min_corr=0.9):
    """Pixels around ``seed`` that enhance like it (curve correlation) and as much (> 50 % of its peak)."""
    curve = e[:, seed].mean(1)
    c = curve - curve.mean()
    x = e - e.mean(0, keepdims=True)
    corr = np.tensordot(c, x, axes=(0, 0)) / (np.linalg.norm(c) * np.linalg.norm(x, axis=0) + 1e-12)
    like = (corr > min_corr) & (peak > 0.5 * float(np.median(peak[seed])))
    lab, _ = ndimage.label(like | seed)
    grown = np.isin(lab, np.unique(lab[seed]))
    grown = ndimage.binary_fill_holes(grown)
    # never more than twice the seed: a leak along a vessel must not swallow the image
    return grown if grown.sum() <= 2.5 * seed.sum() else seed


def aif_from_lv(images, lv_mask, erode_px=1):
    """(T,) mean signal of the LV blood pool away from its edge (where myocardium mixes in).

    images: (T, R, C) or (T, S, R, C) with a matching mask. A pool too small to erode keeps its
    full extent. The curve is in the images' units; baseline subtraction happens in the fit.
    """
    images = np.asarray(images)
    mask = np.asarray(lv_mask, bool)
    if images.shape[1:] != mask.shape:
        raise CardiacInputError("LV mask", f"mask shape {mask.shape} does not match images {images.shape[1:]}")
    inner = mask
    for _ in range(erode_px):
        structure = ndimage.generate_binary_structure(mask.ndim, 1)
        if mask.ndim == 3:
            structure[0] = structure[2] = False   # erode within each slice only
        eroded = ndimage.binary_erosion(inner, structure)
        if eroded.sum() >= 4:
            inner = eroded
    if not inner.any():
        raise CardiacInputError("LV mask", "the LV blood pool is empty: no AIF can be taken from it")
    return images[:, inner].mean(1).astype(np.float64)


# A bolus peak sampled once a heartbeat or two is rounded: the frames either side of it lie 2-8 %
# below it (a 4-8 s wide first pass at 0.5-1 s frames; the real QPerf and aif_detection AIFs
# 0.2-6 %), more with noise. Three or more frames in a row, over 1.5 s or more, within this
# fraction of the maximum are a plateau: the signal was clipped (a 12-bit ceiling, a saturated
# receiver, an export's window). A clipped phantom AIF (at half its peak) gave MBF 3.33 for
# 2.63 mL/min/g with QC "pass".
AIF_PLATEAU_FRACTION = 0.005
AIF_PLATEAU_FRAMES = 3
AIF_PLATEAU_S = 1.5

# A value counts as at a series' highest value ``ceiling`` from ``ceiling - CEILING_TOLERANCE *
# (ceiling - floor)`` up, not only at equality: pixels moved by the motion correction's
# interpolation, or averaged over a pool, land a rounding error below the ceiling they were cut at.
# One constant for qc's perfusion IMAGE_CLIPPED (the myocardium's pixels) and
# readers.aif_series.lv_clipped_frames (the LV curve), so the two read a ceiling alike.
CEILING_TOLERANCE = 1e-4


def clipped_peak(rise, times):
    """(first, last) frame of a flat top around the peak of a baseline-subtracted curve sampled
    at ``times`` (s): ``AIF_PLATEAU_FRAMES`` or more frames over ``AIF_PLATEAU_S`` or more;
    else None."""
    rise = np.asarray(rise, float)
    peak = int(np.argmax(rise))
    if rise.size < 8 or not rise[peak] > 0:
        return None
    near = rise >= rise[peak] * (1 - AIF_PLATEAU_FRACTION)
    first, last = peak, peak
    while first > 0 and near[first - 1]:
        first -= 1
    while last < rise.size - 1 and near[last + 1]:
        last += 1
    if last - first + 1 < AIF_PLATEAU_FRAMES or times[last] - times[first] < AIF_PLATEAU_S:
        return None
    return first, last
