"""Semi-quantitative perfusion indices: what needs no Gd calibration and no deconvolution.

Per AHA segment and for the whole myocardium, from the mean signal curve of the region (as
Segment and cvi42 report them for non-quantitative sequences):
- upslope: the steepest rise of the baseline-corrected curve during the first pass, fitted
  over ``SLOPE_WINDOW`` frames (signal units per second);
- relative upslope: the upslope divided by the LV blood pool's (AIF's) upslope - it removes the
  coil sensitivity and the injection, so segments and studies compare;
- peak enhancement: the highest baseline-corrected signal of the first pass;
- time to peak: from the AIF's foot to the region's peak (s);
- MPRI (with a rest series): stress relative upslope / rest relative upslope.
The first pass ends when the AIF has fallen back under 10 % of its peak, plus the foot-to-peak
time (``mbf.fit_window``), so recirculation does not count as uptake.
"""
import numpy as np

from ..aha import AHA_SEGMENTS
from .mbf import find_foot, fit_window, subtract_baseline

SLOPE_WINDOW = 3   # frames in each linear fit (a 5-point fit blurs a 1-s rise at 0.5-s frames)


def max_upslope(curve, times, start, stop, window=SLOPE_WINDOW):
    """Steepest least-squares slope of ``curve`` over ``window`` consecutive frames in [start, stop)."""
    c = np.asarray(curve, float)
    t = np.asarray(times, float)
    lo, hi = max(0, start), min(stop, c.size)
    if hi - lo < window:
        return 0.0
    # every window's fit at once (one region curve per AHA segment, on every edit)
    from numpy.lib.stride_tricks import sliding_window_view

    tt, cc = sliding_window_view(t[lo:hi], window), sliding_window_view(c[lo:hi], window)
    tt0 = tt - tt.mean(1, keepdims=True)
    slopes = (tt0 * (cc - cc.mean(1, keepdims=True))).sum(1) / (tt0 * tt0).sum(1)
    return max(0.0, float(slopes.max()))


def curve_indices(curve, times, foot, window):
    """{upslope, peak_enhancement, time_to_peak_s} of one baseline-corrected tissue curve."""
    start, stop = window
    c = np.asarray(curve, float)
    smooth = np.convolve(c, np.ones(3) / 3, mode="same")
    seg = smooth[start:stop]
    peak_i = start + int(np.argmax(seg))
    return {"upslope": max_upslope(c, times, foot, stop),
            "peak_enhancement": float(smooth[peak_i]),
            "time_to_peak_s": round(float(times[peak_i] - times[foot]), 3)}   # ms: 5.600000000000005 was written


def semiquant_indices(images, myo_mask, segment_map, aif, times):
    """Indices for the whole myocardium and each AHA segment present.

    images: (T, S, R, C) signal; myo_mask: (S, R, C) bool; segment_map: (S, R, C) AHA ids (0 =
    none) or None; aif: (T,) LV blood curve in the images' units (or Gd); times: (T,) s.
    Returns {"global": {...}, "segments": [{id, name, territory, ...}], "aif_upslope",
    "statistic": "region mean curve"}.
    """
    times = np.asarray(times, float)
    aif = np.asarray(aif, float)
    foot = find_foot(aif)
    aif_b = subtract_baseline(aif, foot)
    window = fit_window(aif_b, foot)
    aif_up = max_upslope(aif_b, times, foot, window[1])

    def region(mask):
        curve = subtract_baseline(images[:, mask].mean(1).astype(float), foot)
        out = curve_indices(curve, times, foot, window)
        out["relative_upslope"] = out["upslope"] / aif_up if aif_up > 0 else None
        out["n_pixels"] = int(mask.sum())
        return out

    myo = np.asarray(myo_mask, bool)
    result = {"global": region(myo), "segments": [], "aif_upslope": aif_up, "foot_frame": int(foot),
              "first_pass_frames": [int(window[0]), int(window[1])], "statistic": "region mean curve"}
    if segment_map is not None:
        for s in AHA_SEGMENTS:
            sel = myo & (segment_map == s["id"])
            if sel.sum() >= 3:
                result["segments"].append({"id": s["id"], "name": s["name"], "territory": s["territory"], **region(sel)})
    return result


def mpri(stress, rest):
    """Myocardial perfusion reserve index: stress / rest relative upslope, global and per segment."""
    def ratio(a, b):
        return None if a is None or b is None or b <= 0 else float(a) / float(b)

    from .mbf import common_segments, median_of_finite

    rest_by_id = {s["id"]: s for s in rest.get("segments", [])}
    out = {"global": ratio(stress["global"]["relative_upslope"], rest["global"]["relative_upslope"]),
           "segments": {s["id"]: ratio(s["relative_upslope"], rest_by_id[s["id"]]["relative_upslope"])
                        for s in stress.get("segments", []) if s["id"] in rest_by_id}}
    _, note = common_segments({s["id"]: s["relative_upslope"] for s in stress.get("segments", [])},
                              {s["id"]: s["relative_upslope"] for s in rest.get("segments", [])})
    if note is not None and stress.get("segments") and rest.get("segments"):
        # different myocardium at stress and at rest: the reserve over the segments both measure
        median = median_of_finite(out["segments"].values())
        out["global"] = None if not np.isfinite(median) else median
        out["coverage"] = f"{note}: global MPRI is the median of the per-segment MPRI over those"
    return out
