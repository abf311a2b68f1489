"""Breathing motion in a first-pass perfusion series: each frame moved onto the mask.

One mask is drawn (or predicted) for a whole series, but the heart moves with breathing
between frames by a few millimetres: a pixel near the endocardium then reads blood in some
frames and tissue in others, and blood in a tissue curve inflates MBF. Here each frame of each
slice is brought back onto the mask by a rigid in-plane translation (numpy/scipy only):

1. Frames of a perfusion series change contrast frame to frame (the bolus), so a frame is not
   compared with a fixed key frame but with a *synthetic* frame of the same contrast: the
   low-rank (few temporal components) approximation of the series inside a heart-centred
   window. The few components carry the contrast dynamics; the motion, different in every
   frame, is left out. Each frame is registered to its synthetic twin, the series corrected and
   the synthetic series rebuilt, until the shifts settle (the "synthetic reference" idea of
   Adluru et al. 2006 / Xue et al. 2009, reduced to translations). All frames are moved,
   searched (FFT-based masked NCC) and refined (Gauss-Newton) in batches.
2. Step 1 aligns the frames with each other, not with the mask. The one offset that brings the
   aligned series onto the mask is the one under which the labelled regions are most
   homogeneous: the least spread of the curves inside the myocardium and inside the LV pool
   (blood in a myocardial pixel makes its curve an outlier at the AIF peak).
3. Frames without contrast inside the window (pre-contrast frames of a Gd-concentration
   series: zero plus noise) cannot be registered; they keep the shift of the nearest frame
   that can. A slice whose frames all sit within ``DEAD_BAND_PX`` of the mask is left exactly
   as it was: resampling would blur it for no gain.

``correct(images, mask)`` returns the corrected images and a record of the shifts for
``study.provenance["motion"]``. Step 1 is done once per slice: the network mask's bolus check
(``models/perfusion_refine``) aligns the frames first and keeps the shifts
(``alignment_record``, ``study.provenance["frame_alignment"]``); ``correct`` starts from them on
the final mask's window (a few cheap rounds, no whole-pixel search) and adds step 2.
"""
import numpy as np
from scipy import fft as scipy_fft
from scipy import ndimage

from ..errors import CardiacInputError
from ..labels import LV, MYO, RV
from ..order_stats import row_median

MAX_SHIFT_MM = 10.0       # breathing in a free-breathing or failed breath-hold series: up to ~1 cm in-plane
RANK = 2                  # temporal components beyond the mean: 3 already follow the breathing (phantom: 0.9 px vs 0.06 px)
# rounds of (synthetic reference, registration to it) until no frame moves by CONVERGED_PX: each
# round closes ~30 % of the remaining gap to the fixed point (breathing phantom: 0.19 px max error
# after 3 rounds, 0.08 px after 7-8), and after the first round one costs a tenth of it
ITERATIONS = 10
CONVERGED_PX = 0.03
# a frame is registered when its own spread in the window is this many times the noise, i.e. it
# shows contrast or anatomy to register on (the frames of noise alone keep a neighbour's shift)
USABLE_SPREAD_IN_NOISE = 8.0
DEAD_BAND_PX = 0.3        # slices that never move more than this are not resampled
MARGIN_MM = 8.0           # window around the labelled heart


def _window(mask_heart, margin_px, shape):
    rows, cols = np.nonzero(mask_heart)
    r0, c0 = max(rows.min() - margin_px, 0), max(cols.min() - margin_px, 0)
    r1, c1 = min(rows.max() + margin_px + 1, shape[0]), min(cols.max() + margin_px + 1, shape[1])
    return slice(r0, r1), slice(c0, c1)


SPLINE_PAD = 12       # scipy's own pre-padding for 'nearest' splines: the filter's edge effect is gone by then


def _tap_weights(frac, order):
    """(taps, (T, n_taps) weights) of the cubic B-spline (order 3) or linear (order 1) kernel at fractions ``frac``."""
    f = frac[:, None]
    if order == 1:
        return np.arange(2), np.hstack([1 - f, f])
    return np.arange(-1, 3), np.hstack([(1 - f) ** 3, 3 * f ** 3 - 6 * f ** 2 + 4, -3 * f ** 3 + 3 * f ** 2 + 3 * f + 1, f ** 3]) / 6


def _interpolate_axis(coeffs, start, frac, n, axis, order):
    """Along ``axis`` (1 or 2) of (T, ...) ``coeffs``: frame t sampled at start[t] + i + frac[t], i < n.
    One slice per frame and tap: the offset is the same for the whole frame (faster than a gather)."""
    taps, weights = _tap_weights(frac, order)
    weights = weights.astype(coeffs.dtype)
    shape = list(coeffs.shape)
    shape[axis] = n
    out = np.empty(shape, coeffs.dtype)
    for t in range(coeffs.shape[0]):
        acc = 0.0
        for j, tap in enumerate(taps):
            lo = start[t] + tap
            part = coeffs[t, lo:lo + n] if axis == 1 else coeffs[t, :, lo:lo + n]
            acc = acc + weights[t, j] * part
        out[t] = acc
    return out


def _coefficients(stack, pad, order=3):
    """Edge-padded (by ``pad``) frames of a (T, R, C) stack, as cubic B-spline coefficients for
    order 3, in the stack's float precision (float32 images: half the memory traffic of every
    resampling, which dominates the registration; shifts equal to 0.01 px on the phantoms)."""
    dtype = np.float32 if np.asarray(stack).dtype == np.float32 else np.float64
    coeffs = np.pad(np.asarray(stack, dtype), ((0, 0), (pad, pad), (pad, pad)), mode="edge")
    if order == 3:
        coeffs = ndimage.spline_filter1d(coeffs, 3, axis=1, mode="nearest", output=dtype)
        coeffs = ndimage.spline_filter1d(coeffs, 3, axis=2, mode="nearest", output=dtype)
    elif order != 1:
        raise ValueError("order 1 or 3")
    return coeffs


def _sample(coeffs, pad, shifts, order=3):
    """Frame t of ``_coefficients`` (padded by ``pad``) sampled at x + shifts[t]; |shifts| < pad - 2 - SPLINE_PAD."""
    shifts = np.asarray(shifts, np.float64).reshape(-1, 2)
    base = np.floor(shifts).astype(int)
    frac = shifts - base
    h, w = coeffs.shape[1] - 2 * pad, coeffs.shape[2] - 2 * pad
    rows = _interpolate_axis(coeffs, pad + base[:, 0], frac[:, 0], h, 1, order)
    return _interpolate_axis(rows, pad + base[:, 1], frac[:, 1], w, 2, order)


def _shift_stack(stack, shifts, order=3):
    """Every frame t of a (T, R, C) stack sampled at x + shifts[t] (d = (drow, dcol): content at
    x + d moves to x), all frames at once. A translation has one sub-pixel fraction per frame, so
    the spline is a 4-tap (cubic) or 2-tap (linear) filter along rows and then columns; edges as
    scipy's 'nearest' (edge values padded, then the B-spline prefilter), so it agrees with
    ``ndimage.shift(frame, -d, order, mode="nearest")`` to rounding. That scipy call per frame
    cost ~0.2 ms of overhead each, thousands of times per series."""
    pad = SPLINE_PAD + int(np.ceil(np.abs(np.asarray(shifts, float)).max(initial=0))) + 3
    return _sample(_coefficients(stack, pad, order), pad, shifts, order)


def _low_rank(stack, rank):
    t = stack.shape[0]
    x = stack.reshape(t, -1)
    mean = x.mean(0, keepdims=True)
    centred = x - mean
    # the temporal components from the small (T, T) Gram matrix: a full SVD of (T, pixels) is slow
    vals, vecs = np.linalg.eigh(centred @ centred.T)
    u = vecs[:, ::-1][:, :min(rank, t)]
    return (mean + u @ (u.T @ centred)).reshape(stack.shape)


def _integer_search(moving, refs, weight, max_px):
    """(T, 2) integer (drow, dcol) maximising the weighted NCC of moving[t](x + d) with refs[t](x).

    Every shift at once: the weighted NCC expands into sums of the moving frame against fixed
    kernels (the weight, the weighted reference, the squared weight), i.e. four correlations,
    done with FFTs (masked NCC, as in Padfield 2012) instead of one pass per shift, and for all
    frames in one batch. A kernel of the core's size (the frame less ``max_px`` on each side)
    correlated circularly at the frame's own size never wraps for shifts 0..2 max_px, so the
    FFT needs no padding.
    """
    t_count, h, w = moving.shape
    m = max_px
    core = (slice(None), slice(m, h - m), slice(m, w - m))
    wt = weight[core[1:]]
    r = refs[core]
    s_w = wt.sum()
    rw = (r - ((r * wt).sum((1, 2)) / s_w)[:, None, None]) * wt
    rn = np.sqrt((rw * rw).sum((1, 2)))[:, None, None]
    wt2 = wt * wt
    k = wt * rw
    s_k, s_w2 = k.sum((1, 2))[:, None, None], wt2.sum()

    def spectrum(kernel):
        padded = np.zeros(kernel.shape[:-2] + (h, w))
        padded[..., : h - 2 * m, : w - 2 * m] = kernel
        return np.conj(scipy_fft.rfft2(padded))

    def corr(a_spec, k_spec):   # [m + dr, m + dc] = sum over the core of a(x + d) * kernel(x)
        return scipy_fft.irfft2(a_spec * k_spec, s=(h, w))[:, : 2 * m + 1, : 2 * m + 1]

    # scipy's FFT: numpy's algorithm (pocketfft), about twice as fast on these (T, h, w) batches
    f_moving, f_square = scipy_fft.rfft2(moving), scipy_fft.rfft2(moving * moving)
    k_w, k_w2 = spectrum(wt), spectrum(wt2)
    mu = corr(f_moving, k_w) / s_w
    numerator = corr(f_moving, spectrum(k)) - mu * s_k
    energy = corr(f_square, k_w2) - 2 * mu * corr(f_moving, k_w2) + mu * mu * s_w2
    score = (numerator / (np.sqrt(np.maximum(energy, 0)) * rn + 1e-12)).reshape(t_count, -1)
    i, j = np.unravel_index(score.argmax(1), (2 * m + 1, 2 * m + 1))
    return np.stack([i - m, j - m], 1).astype(float)


def _refine(coeffs, pad, refs, weight, d, iterations=8):
    """Gauss-Newton (Lucas-Kanade) on the weighted squared difference of each frame with its
    reference, from (T, 2) ``d``, all frames at once; a frame stops when its step is under 0.01 px.
    ``coeffs``: the moving frames' spline coefficients (``_coefficients``, padded by ``pad``)."""
    d = np.asarray(d, float).copy()
    active = np.arange(len(d))
    for _ in range(iterations):
        if not active.size:
            break
        warped = _sample(coeffs[active], pad, d[active])
        gr, gc = np.gradient(warped, axis=(1, 2))
        err = (warped - refs[active]) * weight
        grw, gcw = gr * weight, gc * weight
        a11, a12, a22 = (gr * grw).sum((1, 2)), (gr * gcw).sum((1, 2)), (gc * gcw).sum((1, 2))
        b1, b2 = -(gr * err).sum((1, 2)), -(gc * err).sum((1, 2))
        det = a11 * a22 - a12 * a12
        solvable = det > 1e-12 * np.maximum((a11 + a22) ** 2, 1e-300)
        safe = np.where(solvable, det, 1.0)
        step = np.stack([(a22 * b1 - a12 * b2) / safe, (a11 * b2 - a12 * b1) / safe], 1)
        # a step never takes a frame further than the padding allows (the search range)
        limit = pad - SPLINE_PAD - 3
        d[active[solvable]] = np.clip(d[active[solvable]] + np.clip(step[solvable], -1.0, 1.0), -limit, limit)
        moving_on = solvable & (np.abs(step).max(1) >= 0.01)
        active = active[moving_on]
    return d


def _weighted_spread(stack, w_norm):
    """(T,) standard deviation of each frame of ``stack`` about its own mean, under the weights ``w_norm`` (sum 1)."""
    mean = (stack * w_norm).sum((1, 2))
    return np.sqrt((((stack - mean[:, None, None]) ** 2) * w_norm).sum((1, 2)))


def _relative_shifts(win, weight, max_px, noise, start=None, rounds=ITERATIONS):
    """(T, 2) shifts aligning every frame of ``win`` with the others, and the frames that had contrast.

    ``start``: shifts already found on these frames (with another window), refined from there
    without the whole-pixel search, for ``rounds`` rounds."""
    t_count = win.shape[0]
    shifts = np.zeros((t_count, 2)) if start is None else np.clip(np.asarray(start, np.float64), -max_px, max_px)
    w_norm = weight / weight.sum()
    # a frame is registered only on what it shows itself, well above the noise (a frame of noise
    # alone has a spread of about the noise). Judged on its synthetic twin instead, which carries
    # the series' mean anatomy, the flat pre-contrast frames of a still Gd series passed and were
    # moved 5-9 px onto that anatomy by their noise: 'moved up to 18.7 mm' (probe 106)
    shows_something = _weighted_spread(win, w_norm) > USABLE_SPREAD_IN_NOISE * noise
    usable = shows_something
    # the frames' spline coefficients do not depend on the shifts: filtered once, sampled at
    # every shift tried (the search range, and room for the refinement to step past it)
    pad = SPLINE_PAD + 2 * max_px + 3
    coeffs = _coefficients(win, pad)
    for iteration in range(rounds):
        synth = _low_rank(_sample(coeffs, pad, shifts), RANK)
        # ... and, round by round, its twin at the frame's present shift still shows it: a frame
        # that a wrong whole-pixel match moved far off loses its twin's contrast and keeps its
        # neighbour's shift for a round, then is refined from there (QPerf stress frame 20, between
        # the RV and LV peaks: matched at (-10, -10) px, back at 0.2 px the next round; without
        # this it drifted to the edge of the search range)
        usable = shows_something & (_weighted_spread(synth, w_norm) > USABLE_SPREAD_IN_NOISE * noise)
        idx = np.flatnonzero(usable)
        if not idx.size:
            break
        previous = shifts.copy()
        first = _integer_search(win[idx], synth[idx], weight, max_px) if iteration == 0 and start is None else shifts[idx]
        shifts[idx] = _refine(coeffs[idx], pad, synth[idx], weight, first)
        # the frames without contrast follow the nearest frame that had it
        nearest = idx[np.abs(np.arange(t_count)[:, None] - idx[None, :]).argmin(1)]
        shifts = shifts[nearest]
        shifts -= np.median(shifts[usable], axis=0)     # keep the series centred where it mostly was
        # beyond the search range (max_shift_mm) is no breathing: a frame that the refinement
        # took further was pulled by noise or by what moves in and out of the window
        shifts = np.clip(shifts, -max_px, max_px)
        if (iteration or start is not None) and np.abs(shifts - previous).max() < CONVERGED_PX:
            break   # the synthetic reference no longer changes: another round would find the same shifts
    return shifts, usable


def _spread(curves_by_label):
    """Spread of the (T, n) curves of each labelled region about their frame-wise median, weighted by n."""
    cost = 0.0
    for curves in curves_by_label:
        if curves.shape[1] < 4:
            continue
        cost += float(((curves - row_median(curves, keepdims=True)) ** 2).mean()) * curves.shape[1]
    return cost


def _region_pixels(lab_win):
    """(rows, cols) of the myocardium and of the LV pool: the regions whose curves should agree."""
    return [np.nonzero(lab_win == value) for value in (MYO, LV)]


def _sampled_curves(win, rows, cols, shifts):
    """(T, n) curves of ``win`` at pixels (rows, cols) moved by shifts[t]: bilinear with edge
    clamping, i.e. ``_shift_stack(win, shifts, order=1)`` read at those pixels only."""
    t_count, h, w = win.shape
    whole = np.floor(shifts).astype(int)
    if (rows.min() + whole[:, 0].min() >= 0 and rows.max() + whole[:, 0].max() <= h - 2
            and cols.min() + whole[:, 1].min() >= 0 and cols.max() + whole[:, 1].max() <= w - 2):
        # no pixel reaches the edge: the fraction is one per frame (the pixels are whole), so the
        # four taps are one gather each and the weights broadcast (the pattern search's hot path)
        frac = shifts - whole
        fr, fc = frac[:, :1], frac[:, 1:]
        at = (rows * w + cols)[None, :] + (whole[:, 0] * w + whole[:, 1] + np.arange(t_count) * (h * w))[:, None]
        flat = win.reshape(-1)
        return (1 - fr) * ((1 - fc) * flat.take(at) + fc * flat.take(at + 1)) \
            + fr * ((1 - fc) * flat.take(at + w) + fc * flat.take(at + w + 1))
    r = np.clip(rows[None, :] + shifts[:, :1], 0, h - 1)
    c = np.clip(cols[None, :] + shifts[:, 1:], 0, w - 1)
    r0, c0 = np.minimum(np.floor(r).astype(int), h - 2), np.minimum(np.floor(c).astype(int), w - 2)
    fr, fc = r - r0, c - c0
    flat = win.reshape(-1)
    at = r0 * w + c0 + (np.arange(t_count) * (h * w))[:, None]

    def tap(offset):
        return flat.take(at + offset)

    return (1 - fr) * ((1 - fc) * tap(0) + fc * tap(1)) + fr * ((1 - fc) * tap(w) + fc * tap(w + 1))


def _homogeneity_cost(win, regions, shifts, offset):
    """Spread of the myocardial and LV-pool curves when the aligned series is moved by ``offset``."""
    moved = shifts + offset
    return _spread([_sampled_curves(win, rows, cols, moved) for rows, cols in regions])


def _mask_offset(win, lab_win, shifts, max_px=3):
    """The common offset (drow, dcol) that brings the aligned series onto the mask."""
    regions = _region_pixels(lab_win)
    # whole pixels first, by moving the mask over the aligned series (no resampling per offset)
    aligned = _shift_stack(win, shifts, order=1)
    h, w = lab_win.shape
    integer_cost = {}

    def cost_at(dr, dc):
        # the series moved by d, seen through the mask: aligned(x + d) against lab(x); region
        # pixels that d moves out of the window drop out
        if (dr, dc) not in integer_cost:
            curves = []
            for rows, cols in regions:
                inside = (rows + dr >= 0) & (rows + dr < h) & (cols + dc >= 0) & (cols + dc < w)
                curves.append(aligned[:, rows[inside] + dr, cols[inside] + dc])
            integer_cost[dr, dc] = _spread(curves)
        return integer_cost[dr, dc]

    # descent over the whole-pixel grid from no offset: to the best of the 8 neighbours until
    # none is better (the spread grows steadily away from its minimum; the full 7 x 7 grid found
    # the same offsets on the phantoms at 3-4 times the cost)
    best_d = (0, 0)
    while True:
        around = [(best_d[0] + i, best_d[1] + j) for i in (-1, 0, 1) for j in (-1, 0, 1)
                  if max(abs(best_d[0] + i), abs(best_d[1] + j)) <= max_px]
        step_to = min(around, key=lambda d: cost_at(*d))
        if step_to == best_d:
            break
        best_d = step_to
    best_d = np.array(best_d, float)
    best = _homogeneity_cost(win, regions, shifts, best_d)
    # sub-pixel: a pattern search of halving steps (the cost is V-shaped, not a parabola, at the
    # edges: a parabola through the integer neighbours was biased by 0.15 px on still phantoms).
    # Each move goes to the best of the four neighbours, not the first that improves: with two
    # improving directions the first one tried won, so the same series stored with its columns
    # mirrored found +0.31 px where the mirror of +0.38 is -0.38 (segment MBF 6 % apart; probe 29)
    seen = {tuple(best_d): best}   # a point measured once is not measured again
    step = 0.5
    while step >= 0.0625:
        while True:
            trials = [best_d + np.array(delta) for delta in ((step, 0.0), (-step, 0.0), (0.0, step), (0.0, -step))]
            trials = [t for t in trials if np.abs(t).max() <= max_px]
            for trial in trials:
                if tuple(trial) not in seen:
                    seen[tuple(trial)] = _homogeneity_cost(win, regions, shifts, trial)
            nearest = min(trials, key=lambda t: seen[tuple(t)], default=None)
            if nearest is None or seen[tuple(nearest)] >= best:
                break
            best, best_d = seen[tuple(nearest)], nearest
        step /= 2
    return best_d


def estimate_shifts(frames, label_slice, pixel_mm=(1.0, 1.0), max_shift_mm=MAX_SHIFT_MM, onto_mask=True, aligned=None,
                    cache=None):
    """(T, 2) in-plane shifts (drow, dcol) in pixels of one slice: frame t shows at x + shift[t]
    what the mask shows at x. Also returns a dict: usable frames, mask offset.

    ``onto_mask`` False aligns the frames with each other only (at their median position), for a
    mask that is itself in doubt (the bolus check of a network's mask): the mask then only
    places the window. ``aligned``: those (T, 2) frame-to-frame shifts, estimated earlier on the
    same frames (the bolus check's, ``reusable_alignment``); only the offset onto this mask is
    then estimated, the expensive part is not done twice. ``cache`` (a dict kept by the caller
    over re-analyses of the same frames): the frame-to-frame shifts by slice heart mask, so an
    edit that leaves the heart's outline on a slice as it was (blood and myocardium traded, or
    another slice edited) re-estimates only the offset onto the mask, with the same result as a
    fresh analysis (the shifts depend on the frames and the outline alone)."""
    # float32 images stay float32 (see _coefficients); anything else is computed in float64
    frames = np.asarray(frames)
    frames = frames if frames.dtype == np.float32 else frames.astype(np.float64)
    lab = np.asarray(label_slice)
    heart = (lab == LV) | (lab == MYO) | (lab == RV)
    if frames.ndim != 3 or lab.shape != frames.shape[1:]:
        raise CardiacInputError("motion", f"frames {frames.shape} and mask {lab.shape} do not match")
    t_count = frames.shape[0]
    if not ((lab == MYO).any() and (lab == LV).any()) or t_count < 4:
        return np.zeros((t_count, 2)), {"registered": False, "reason": "no LV pool and myocardium to register on"}
    sy, sx = pixel_mm
    max_px = max(1, int(np.ceil(max_shift_mm / min(sy, sx))))
    margin = int(np.ceil(MARGIN_MM / min(sy, sx))) + max_px
    rs, cs = _window(heart, margin, lab.shape)
    # contiguous: the curve sampling reads the window as one flat array, hundreds of times
    win, lab_win = np.ascontiguousarray(frames[:, rs, cs]), lab[rs, cs]
    if min(win.shape[1:]) <= 2 * max_px + 4:
        max_px = max(1, (min(win.shape[1:]) - 5) // 2)
    # weight: the heart and a rim around it, tapering off, so the chest wall counts little
    dist = ndimage.distance_transform_edt(~heart[rs, cs], sampling=(sy, sx))
    weight = np.exp(-0.5 * (dist / MARGIN_MM) ** 2).astype(frames.dtype)
    key = None
    if cache is not None:
        key = (heart.tobytes(), frames.shape, frames.dtype.str, float(np.sum(frames, dtype=np.float64)),
               tuple(float(v) for v in pixel_mm), float(max_shift_mm), None if aligned is None else np.asarray(aligned).tobytes())
    if key is not None and key in cache:
        shifts, usable = (v.copy() for v in cache[key])
    else:
        noise = 1.4826 * float(row_median(np.abs(np.diff(win, axis=0)).ravel())) / np.sqrt(2)
        if aligned is None:
            shifts, usable = _relative_shifts(win, weight, max_px, max(noise, 1e-9))
        else:
            shifts, usable = _relative_shifts(win, weight, max_px, max(noise, 1e-9), start=aligned)
        if key is not None:
            if len(cache) >= 8:   # a long editing session: the outlines of the last few edits are enough
                cache.clear()
            cache[key] = (shifts.copy(), usable.copy())
    if not usable.any():
        return np.zeros((t_count, 2)), {"registered": False, "reason": "no frame with contrast in the heart"}
    note = {"registered": True, "usable_frames": int(usable.sum())}
    offset = _mask_offset(win, lab_win, shifts) if onto_mask else np.zeros(2)
    note["mask_offset_px"] = [round(float(v), 2) for v in offset]
    return shifts + offset, note


def alignment_record(frames, shifts, pixel_mm, max_shift_mm=MAX_SHIFT_MM, source="the mask check"):
    """What ``reusable_alignment`` needs to hand frame-to-frame shifts of ``frames`` on to a later
    correction of the same frames (``study.provenance["frame_alignment"][slice]``); ``source``
    (what estimated them) is named in the correction's note."""
    frames = np.asarray(frames)
    return {"shifts_px": np.asarray(shifts, np.float64), "frames_shape": list(frames.shape),
            "frames_sum": float(np.sum(frames, dtype=np.float64)), "pixel_mm": [float(v) for v in pixel_mm],
            "max_shift_mm": float(max_shift_mm), "source": source}


def reusable_alignment(record, frames, pixel_mm, max_shift_mm=MAX_SHIFT_MM):
    """The record's (T, 2) shifts when they were estimated on these very frames with this pixel
    size and search range, else None (the frames were resampled or edited: estimate anew)."""
    if not record:
        return None
    frames = np.asarray(frames)
    same = (list(frames.shape) == list(record["frames_shape"])
            and np.allclose(record["pixel_mm"], [float(v) for v in pixel_mm])
            and abs(record["max_shift_mm"] - max_shift_mm) < 1e-9
            and np.isclose(float(np.sum(frames, dtype=np.float64)), record["frames_sum"], rtol=1e-12, atol=1e-9))
    return np.asarray(record["shifts_px"], np.float64) if same else None


def apply_shifts(frames, shifts):
    """(T, R, C) frames each moved by -shift[t] (cubic spline), so they line up with the mask."""
    frames = np.asarray(frames)
    return _shift_stack(frames, shifts).astype(frames.dtype)


def correct(images, label_map, pixel_mm=(1.0, 1.0), max_shift_mm=MAX_SHIFT_MM, alignments=None, cache=None):
    """(corrected (T, S, R, C) images, record) with each slice's frames moved onto ``label_map``.

    ``alignments``: {slice: ``alignment_record``} of frame-to-frame shifts already estimated on
    these images (the network mask's bolus check); a slice whose record still fits its frames
    only gets its offset onto this mask estimated. ``cache``: {slice: dict} for ``estimate_shifts``.
    record: {'shifts_px': per slice (T, 2) list (drow, dcol), 'max_shift_px', 'corrected_slices',
    'slices': per-slice notes}. Slices within ``DEAD_BAND_PX`` everywhere are returned unchanged.
    """
    images = np.asarray(images)
    lab = np.asarray(label_map)
    if images.ndim != 4 or lab.shape != images.shape[1:]:
        raise CardiacInputError("motion", f"images {images.shape} and label map {lab.shape} do not match (T, S, R, C)")
    out = images
    record = {"method": "rigid in-plane translation to a low-rank synthetic reference, mask offset by homogeneity",
              "shifts_px": [], "max_shift_px": [], "corrected_slices": [], "slices": []}
    for k in range(images.shape[1]):
        known = (alignments or {}).get(k)
        aligned = reusable_alignment(known, images[:, k], pixel_mm, max_shift_mm)
        shifts, note = estimate_shifts(images[:, k], lab[k], pixel_mm, max_shift_mm, aligned=aligned,
                                       cache=None if cache is None else cache.setdefault(k, {}))
        if aligned is not None and note.get("registered"):
            note["alignment"] = f"shared with {known.get('source', 'the mask check')}"
        biggest = float(np.abs(shifts).max()) if shifts.size else 0.0
        record["shifts_px"].append(np.round(shifts, 2).tolist())
        record["max_shift_px"].append(round(biggest, 2))
        record["slices"].append(note)
        if note.get("registered") and biggest > DEAD_BAND_PX:
            if out is images:
                out = images.copy()
            out[:, k] = apply_shifts(images[:, k], shifts)
            record["corrected_slices"].append(k)
    return out, record
