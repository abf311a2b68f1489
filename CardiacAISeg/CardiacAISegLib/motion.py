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
   the synthetic series rebuilt, a few times over (the "synthetic reference" idea of
   Adluru et al. 2006 / Xue et al. 2009, reduced to translations).
2. Step 1 aligns the frames with each other, not with the mask. The one offset that brings the
   aligned series onto the mask is the one under which the labelled regions are most
   homogeneous: the least spread of the curves inside the myocardium and inside the LV pool
   (blood in a myocardial pixel makes its curve an outlier at the AIF peak).
3. Frames without contrast inside the window (pre-contrast frames of a Gd-concentration
   series: zero plus noise) cannot be registered; they keep the shift of the nearest frame
   that can. A slice whose frames all sit within ``DEAD_BAND_PX`` of the mask is left exactly
   as it was: resampling would blur it for no gain.

``correct(images, mask)`` returns the corrected images and a record of the shifts for
``study.provenance["motion"]``.
"""
import numpy as np
from scipy import ndimage

from .errors import CardiacInputError
from .labels import LV, MYO, RV

MAX_SHIFT_MM = 10.0       # breathing in a free-breathing or failed breath-hold series: up to ~1 cm in-plane
RANK = 2                  # temporal components beyond the mean: 3 already follow the breathing (phantom: 0.9 px vs 0.06 px)
ITERATIONS = 3
DEAD_BAND_PX = 0.3        # slices that never move more than this are not resampled
MARGIN_MM = 8.0           # window around the labelled heart


def _window(mask_heart, margin_px, shape):
    rows, cols = np.nonzero(mask_heart)
    r0, c0 = max(rows.min() - margin_px, 0), max(cols.min() - margin_px, 0)
    r1, c1 = min(rows.max() + margin_px + 1, shape[0]), min(cols.max() + margin_px + 1, shape[1])
    return slice(r0, r1), slice(c0, c1)


def _shift(frame, d, order=3):
    """frame sampled at x + d (d = (drow, dcol)): content at x + d moves to x."""
    if abs(d[0]) < 1e-6 and abs(d[1]) < 1e-6:
        return frame
    return ndimage.shift(frame, (-d[0], -d[1]), order=order, mode="nearest", prefilter=order > 1)


def _low_rank(stack, rank):
    t = stack.shape[0]
    x = stack.reshape(t, -1)
    mean = x.mean(0, keepdims=True)
    centred = x - mean
    # the temporal components from the small (T, T) Gram matrix: a full SVD of (T, pixels) is slow
    vals, vecs = np.linalg.eigh(centred @ centred.T)
    u = vecs[:, ::-1][:, :min(rank, t)]
    return (mean + u @ (u.T @ centred)).reshape(stack.shape)


def _integer_search(moving, ref, weight, max_px):
    """Integer (drow, dcol) maximising the weighted NCC of moving(x + d) with ref(x).

    Every shift at once: the weighted NCC expands into sums of the moving frame against fixed
    kernels (the weight, the weighted reference, the squared weight), i.e. four correlations,
    done with FFTs (masked NCC, as in Padfield 2012) instead of one pass per shift.
    """
    from scipy.signal import correlate

    h, w = ref.shape
    m = max_px
    core = (slice(m, h - m), slice(m, w - m))
    r, wt = ref[core], weight[core]
    rw = (r - (r * wt).sum() / wt.sum()) * wt
    rn = np.sqrt((rw * rw).sum())
    wt2 = wt * wt
    k = wt * rw

    def corr(a, kernel):   # [m + dr, m + dc] = sum over the core of a(x + d) * kernel(x)
        return correlate(a, kernel, mode="valid", method="fft")

    s_w, s_k, s_w2 = wt.sum(), k.sum(), wt2.sum()
    mu = corr(moving, wt) / s_w
    numerator = corr(moving, k) - mu * s_k
    energy = corr(moving * moving, wt2) - 2 * mu * corr(moving, wt2) + mu * mu * s_w2
    score = numerator / (np.sqrt(np.maximum(energy, 0)) * rn + 1e-12)
    i, j = np.unravel_index(int(np.argmax(score)), score.shape)
    return np.array([i - m, j - m], float)


def _refine(moving, ref, weight, d, iterations=8):
    """Gauss-Newton (Lucas-Kanade) on the weighted squared difference, from d."""
    d = np.asarray(d, float).copy()
    for _ in range(iterations):
        warped = _shift(moving, d)
        gr, gc = np.gradient(warped)
        err = (warped - ref) * weight
        a = np.array([[(gr * gr * weight).sum(), (gr * gc * weight).sum()],
                      [(gr * gc * weight).sum(), (gc * gc * weight).sum()]])
        b = -np.array([(gr * err).sum(), (gc * err).sum()])
        if np.linalg.det(a) <= 1e-12 * max(np.trace(a) ** 2, 1e-300):
            break
        step = np.linalg.solve(a, b)
        d += np.clip(step, -1.0, 1.0)
        if np.abs(step).max() < 0.01:
            break
    return d


def _relative_shifts(win, weight, max_px, noise):
    """(T, 2) shifts aligning every frame of ``win`` with the others, and the frames that had contrast."""
    t_count = win.shape[0]
    shifts = np.zeros((t_count, 2))
    usable = np.ones(t_count, bool)
    for _ in range(ITERATIONS):
        aligned = np.stack([_shift(win[t], shifts[t]) for t in range(t_count)])
        synth = _low_rank(aligned, RANK)
        # contrast in the window well above the noise, or the frame has nothing to register on
        spread = np.array([np.sqrt(np.average((s - np.average(s, weights=weight)) ** 2, weights=weight)) for s in synth])
        usable = spread > 8.0 * noise
        for t in np.flatnonzero(usable):
            d0 = _integer_search(win[t], synth[t], weight, max_px) if _ == 0 else shifts[t]
            shifts[t] = _refine(win[t], synth[t], weight, d0)
        if usable.any():
            # the frames without contrast follow the nearest frame that had it
            idx = np.flatnonzero(usable)
            nearest = idx[np.abs(np.arange(t_count)[:, None] - idx[None, :]).argmin(1)]
            shifts = shifts[nearest]
            shifts -= np.median(shifts[usable], axis=0)     # keep the series centred where it mostly was
    return shifts, usable


def _spread(stack, lab_win):
    cost = 0.0
    for value in (MYO, LV):
        sel = lab_win == value
        if sel.sum() < 4:
            continue
        curves = stack[:, sel]
        cost += float(((curves - np.median(curves, axis=1, keepdims=True)) ** 2).mean()) * sel.sum()
    return cost


def _homogeneity_cost(win, lab_win, shifts, offset):
    """Spread of the myocardial and LV-pool curves when the aligned series is moved by ``offset``."""
    return _spread(np.stack([_shift(win[t], shifts[t] + offset, order=1) for t in range(win.shape[0])]), lab_win)


def _mask_offset(win, lab_win, shifts, max_px=3):
    """The common offset (drow, dcol) that brings the aligned series onto the mask."""
    # whole pixels first, by moving the mask over the aligned series (no resampling per offset)
    aligned = np.stack([_shift(win[t], shifts[t], order=1) for t in range(win.shape[0])])
    h, w = lab_win.shape
    best, best_d = np.inf, np.zeros(2)
    for dr in range(-max_px, max_px + 1):
        for dc in range(-max_px, max_px + 1):
            # the series moved by d, seen through the mask: aligned(x + d) against lab(x)
            rs_a, rs_l = slice(max(dr, 0), h + min(dr, 0)), slice(max(-dr, 0), h + min(-dr, 0))
            cs_a, cs_l = slice(max(dc, 0), w + min(dc, 0)), slice(max(-dc, 0), w + min(-dc, 0))
            c = _spread(aligned[:, rs_a, cs_a], lab_win[rs_l, cs_l])
            if c < best:
                best, best_d = c, np.array([dr, dc], float)
    best = _homogeneity_cost(win, lab_win, shifts, best_d)
    # sub-pixel: a pattern search of halving steps (the cost is V-shaped, not a parabola, at the
    # edges: a parabola through the integer neighbours was biased by 0.15 px on still phantoms)
    step = 0.5
    while step >= 0.0625:
        moved = True
        while moved:
            moved = False
            for delta in ((step, 0.0), (-step, 0.0), (0.0, step), (0.0, -step)):
                trial = best_d + np.array(delta)
                if np.abs(trial).max() > max_px:
                    continue
                c = _homogeneity_cost(win, lab_win, shifts, trial)
                if c < best:
                    best, best_d, moved = c, trial, True
        step /= 2
    return best_d


def estimate_shifts(frames, label_slice, pixel_mm=(1.0, 1.0), max_shift_mm=MAX_SHIFT_MM, onto_mask=True):
    """(T, 2) in-plane shifts (drow, dcol) in pixels of one slice: frame t shows at x + shift[t]
    what the mask shows at x. Also returns a dict: usable frames, mask offset.

    ``onto_mask`` False aligns the frames with each other only (at their median position), for a
    mask that is itself in doubt (the bolus check of a network's mask): the mask then only
    places the window."""
    frames = np.asarray(frames, np.float64)
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
    win, lab_win = frames[:, rs, cs], lab[rs, cs]
    if min(win.shape[1:]) <= 2 * max_px + 4:
        max_px = max(1, (min(win.shape[1:]) - 5) // 2)
    # weight: the heart and a rim around it, tapering off, so the chest wall counts little
    dist = ndimage.distance_transform_edt(~heart[rs, cs], sampling=(sy, sx))
    weight = np.exp(-0.5 * (dist / MARGIN_MM) ** 2)
    noise = 1.4826 * float(np.median(np.abs(np.diff(win, axis=0)))) / np.sqrt(2)
    shifts, usable = _relative_shifts(win, weight, max_px, max(noise, 1e-9))
    if not usable.any():
        return np.zeros((t_count, 2)), {"registered": False, "reason": "no frame with contrast in the heart"}
    offset = _mask_offset(win, lab_win, shifts) if onto_mask else np.zeros(2)
    return shifts + offset, {"registered": True, "usable_frames": int(usable.sum()),
                             "mask_offset_px": [round(float(v), 2) for v in offset]}


def apply_shifts(frames, shifts):
    """(T, R, C) frames each moved by -shift[t] (cubic spline), so they line up with the mask."""
    return np.stack([_shift(np.asarray(f, np.float64), s) for f, s in zip(frames, shifts)]).astype(np.asarray(frames).dtype)


def correct(images, label_map, pixel_mm=(1.0, 1.0), max_shift_mm=MAX_SHIFT_MM):
    """(corrected (T, S, R, C) images, record) with each slice's frames moved onto ``label_map``.

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
        shifts, note = estimate_shifts(images[:, k], lab[k], pixel_mm, max_shift_mm)
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
