"""Frames of a perfusion series that are not dynamics to fit: proton-density reference images at
its start, and blank (dropped) dynamics anywhere in it. Both are left out of the images, the
frame times and the DICOM frame maps alike (``remove_frames``), and a warning says which and why.

Dual-sequence and quantitative perfusion protocols (Kellman et al. 2005; Xue et al. 2020) acquire
a few proton-density (PD) images in the first heartbeats, before the saturation-recovery dynamics:
no saturation pulse and a low flip angle, so every tissue, blood and myocardium alike, is several
times brighter than in the pre-contrast dynamics. Scanners
write them as the first images of the same series. Left in, they are averaged into the baseline
that is subtracted from every curve, so the whole first pass sits below zero and MBF is wrong
(a 3-PD-frame series gave 2.91 instead of 2.43 mL/min/g, every pixel a poor fit); with an AIF
taken from the series, a bright PD frame can even win the search for the bolus peak.

They are recognised from the images alone, so every format is covered: a run of leading frames
(at most ``MAX_PD_FRAMES``) whose whole-field signal is over ``PD_SIGNAL_RATIO`` times that of the
pre-contrast frames right after it. A FlipAngle that differs
from the dynamics' (DICOM) is named as further evidence, and by itself marks the frames too: a
different flip angle is a different acquisition. The frames are dropped from the images and the
frame times, and a warning says which and why. Series in Gd concentration (QPerf) are left
alone: their pre-contrast level is zero, so a ratio means nothing.
"""
import numpy as np

from ..order_stats import row_median, row_percentile

MAX_PD_FRAMES = 5        # protocols write 1-3; more leading outliers are something else
# PD images are 3-10x the saturation-recovery baseline; leading frames 1.4-1.6x it (a reference
# image at the dynamics' flip angle) read MBF 8-21 % high, 1.2x 2 % (probe 44)
PD_SIGNAL_RATIO = 1.3
FRAMES_AFTER_RUN = 3         # the pre-contrast dynamics the run is measured against
PRE_CONTRAST_MARGIN = 1.15   # ... which lie this close to the series' darkest frame
MIN_DYNAMICS = 10        # never leave a series too short to find a bolus in


def pixel_sample(images, lead_axes, count):
    """``images`` with its first ``lead_axes`` axes kept and the rest flattened to every k-th
    pixel, about ``count`` of them: the whole-frame statistics here (percentiles, medians, ratios)
    change little on a strided subsample and cost a fraction on a full-field series."""
    images = np.asarray(images)
    flat = images.reshape(*images.shape[:lead_axes], -1)
    return flat[..., ::max(1, flat.shape[-1] // count)]


FRAME_LEVEL_PIXELS = 20000   # per frame; series_kind samples as many first (sampled again, a sample is itself)


def frame_levels(images):
    """(T,) whole-field signal level per frame: the 75th percentile over every slice (tissue
    rather than air; the bolus moves a few per cent of the pixels, so it barely moves this)."""
    return row_percentile(pixel_sample(images, 1, FRAME_LEVEL_PIXELS), 75)


def leading_pd_frames(images, flip_angles=None):
    """(n, reason): the number of leading PD reference frames and why (n = 0: none).

    ``images``: (T, ...) signal intensity. ``flip_angles``: (T,) degrees per frame or None.
    """
    n_t = len(images)
    if n_t < MIN_DYNAMICS + 1:
        return 0, ""
    limit = min(MAX_PD_FRAMES, n_t - MIN_DYNAMICS)
    by_flip, flip_note = flip_angle_run(flip_angles, n_t, at_end=False)

    levels = frame_levels(images)
    # Reference images are a run of bright frames that drops at once to the pre-contrast level:
    # the run's frames over PD_SIGNAL_RATIO times the few frames right after it, which must be the
    # series' low end (within PRE_CONTRAST_MARGIN of its darkest frame; contrast only brightens).
    # Against the median of all later frames, which takes in the bolus, two reference frames 1.6x
    # the baseline measured 1.47x on a 96-pixel field and stayed in (MBF 21 % high, QC pass), and
    # against a low percentile of them, a tight crop whose first frames were the bolus peak lost
    # them as "reference images" (probes 44, 45)
    by_signal, level = 0, 0.0
    if np.all(levels > 0):
        for k in range(limit, 0, -1):
            after = float(levels[k:k + FRAMES_AFTER_RUN].min())
            if after <= PRE_CONTRAST_MARGIN * float(levels[k:].min()) and levels[:k].min() >= PD_SIGNAL_RATIO * after:
                by_signal, level = k, after
                break
    n = max(by_flip, by_signal)
    if n == 0:
        return 0, ""
    ratios = ", ".join(f"{levels[t] / level:.1f}x" for t in range(n)) if level > 0 else ""
    evidence = [e for e in (f"whole-field signal {ratios} that of the pre-contrast dynamics" if by_signal and ratios else "",
                            flip_note) if e]
    return n, "; ".join(evidence)


def drop_leading_pd_frames(study, where, warnings=None):
    """Drop leading PD reference frames from a signal-intensity perfusion ``study`` in place
    (images, frame times, DICOM frame maps); returns how many were dropped. The warning goes to
    ``warnings`` (default: ``study.provenance["warnings"]``), the details to
    ``provenance["pd_frames"]``."""
    prov = study.provenance
    n, reason = leading_pd_frames(study.images, prov.get("flip_angles_deg"))
    if n == 0:
        return 0
    frames = "frame 1" if n == 1 else f"frames 1-{n}"
    (prov.setdefault("warnings", []) if warnings is None else warnings).append(
        f"{frames} of {where} left out as proton-density reference images ({reason}): the baseline and the "
        f"curves use the {study.n_frames - n} dynamics after them")
    prov["pd_frames"] = {"dropped": n, "reason": reason}
    remove_frames(study, np.arange(study.n_frames) >= n)
    return n


def flip_angle_run(flip_angles, n_t, at_end):
    """(n, reason): a run of up to MAX_PD_FRAMES frames at the series' start (or its end,
    ``at_end``) whose FlipAngle differs from that of every other frame, the dynamics, which all
    share one (n = 0: none, or flip angles that vary along the series and so say nothing).
    ``flip_angles``: (T,) degrees per frame, or None where the format has none."""
    if flip_angles is None or len(flip_angles) != n_t or n_t < MIN_DYNAMICS + 1:
        return 0, ""
    flips = np.asarray(flip_angles, float)
    if not np.all(np.isfinite(flips)):
        return 0, ""
    if at_end:
        flips = flips[::-1]
    limit = min(MAX_PD_FRAMES, n_t - MIN_DYNAMICS)
    dynamic = float(np.median(flips[limit:]))
    n = 0
    while n < limit and abs(flips[n] - dynamic) > 0.5:
        n += 1
    if n == 0 or not np.all(np.abs(flips[n:] - dynamic) <= 0.5):
        return 0, ""
    return n, f"FlipAngle {flips[0]:g}° against the dynamics' {dynamic:g}°"


def trailing_pd_frames(flip_angles, n_t):
    """(n, reason): a run of up to MAX_PD_FRAMES last frames whose FlipAngle differs from the
    dynamics' before them, all alike (n = 0: none). Some protocols write their PD reference images
    after the dynamics; read as a change of receiver gain they were scaled back to the series and
    kept (MBF 26 % low, QC pass; probe 97). Only the flip angle marks them: the frames after the
    first pass are enhanced, so their signal alone is no sign of a reference image."""
    return flip_angle_run(flip_angles, n_t, at_end=True)


def drop_trailing_pd_frames(study, where, warnings=None):
    """Drop trailing PD reference frames (``trailing_pd_frames``) from ``study`` in place, as
    ``drop_leading_pd_frames`` drops leading ones; returns how many were dropped."""
    prov = study.provenance
    n, reason = trailing_pd_frames(prov.get("flip_angles_deg"), study.n_frames)
    if n == 0:
        return 0
    total = study.n_frames
    frames = f"frame {total}" if n == 1 else f"frames {total - n + 1}-{total}"
    (prov.setdefault("warnings", []) if warnings is None else warnings).append(
        f"{frames} of {where} left out as proton-density reference images written after the dynamics ({reason}): the "
        f"curves use the {total - n} dynamics before them")
    prov.setdefault("pd_frames", {}).update({"dropped_at_end": n, "reason_at_end": reason})
    remove_frames(study, np.arange(total) < total - n)
    return n


# A dynamic the scanner or the export lost is written as an empty image (all zeros, or a noise
# floor): left in a signal-intensity series it is a sudden drop of every curve, and where it falls
# near the bolus peak MBF and the upslopes come out far off (a zeroed dynamic at the LV peak of
# the 3-slice phantom: MBF 4.5 instead of 2.6 mL/min/g, upslope 4x, QC "pass"). A slice image
# whose spread (1st to 99th percentile) is under BLANK_LEVEL of the frames' before it and after
# it is no dynamic.
BLANK_LEVEL = 0.05
BLANK_NEIGHBOURS = 3     # up to this many lost in a row are found
MAX_BLANK_SHARE = 0.2    # more than this many blank dynamics is no dropout but a broken series


def blank_frames(images):
    """(T,) bool: frames blank on at least one slice of a (T, S, R, C) signal-intensity series,
    and per blank frame the slices it is blank on."""
    # the spread of the values, not their level: a series stored with an offset (a negative
    # baseline, signed differences) has full images below zero, while a lost dynamic is flat
    # everywhere (2,000 pixels of each slice tell)
    sample = pixel_sample(images, 2, 2000)
    high = row_percentile(sample, 99) - row_percentile(sample, 1)                               # (T, S)
    # against the frames on both sides (up to BLANK_NEIGHBOURS each way): a lost dynamic sits
    # between frames with signal, while the pre-contrast frames of a series in Gd units are
    # empty (noise, or exactly zero) like their neighbours before the bolus arrives
    before = np.full_like(high, -np.inf)
    after = np.full_like(high, -np.inf)
    for d in range(1, BLANK_NEIGHBOURS + 1):
        before[d:] = np.maximum(before[d:], high[:-d])
        after[:-d] = np.maximum(after[:-d], high[d:])
    blank = high < BLANK_LEVEL * np.minimum(before, after)
    # the dynamics an export lost at the end have no frame with signal after them: a run of them
    # to the series' end, against the slice's typical frame (5 blank last frames read the phantom's
    # MBF 40 % low with the AIF from its LV, unflagged). Not at the start: the pre-contrast frames
    # of a subtracted series are as empty as lost ones, while after the first pass contrast stays
    low = high < BLANK_LEVEL * np.median(high, axis=0)
    for k in range(high.shape[1]):
        end = high.shape[0]
        while end > 0 and low[end - 1, k]:
            end -= 1
        blank[end:, k] = True
    return blank.any(axis=1), {int(f): [int(k) for k in np.flatnonzero(blank[f])] for f in np.flatnonzero(blank.any(1))}


def drop_blank_frames(study, where, warnings=None):
    """Leave blank dynamics (``blank_frames``) out of a signal-intensity perfusion ``study`` in
    place; returns their indices in the series as it came. The frame times keep their real values,
    so the fit sees the gap (the MBF fit resamples irregular frames onto a regular grid). Raises
    CardiacInputError when over MAX_BLANK_SHARE of the dynamics are blank."""
    from ..errors import CardiacInputError

    if study.n_frames < MIN_DYNAMICS:
        return []
    blank, on_slices = blank_frames(study.images)
    if not blank.any():
        return []
    numbers = ", ".join(str(f + 1) for f in on_slices)
    if blank.mean() > MAX_BLANK_SHARE:
        raise CardiacInputError(study.source or where, f"{int(blank.sum())} of {study.n_frames} frames are blank next to "
                                f"frames with signal (frames {numbers}: no signal on a slice): not a series to fit; check "
                                "the export, and that its frames are in time order")
    slices = sorted({k for ks in on_slices.values() for k in ks})
    on = "every slice" if len(slices) == study.n_slices else "slice " + ", ".join(str(k + 1) for k in slices)
    (study.provenance.setdefault("warnings", []) if warnings is None else warnings).append(
        f"frame{'s' if blank.sum() > 1 else ''} {numbers} of {where} left out: blank on {on} (no signal: a dropped "
        f"dynamic); the curves and the fit use the other {study.n_frames - int(blank.sum())} frames at their real times")
    study.provenance["blank_frames"] = {"dropped": [int(f) for f in on_slices], "slices": slices}
    remove_frames(study, ~blank)
    return [int(f) for f in on_slices]


# A dynamic whose every tissue is brighter or darker by one factor than in the frames around
# it was rescaled, not enhanced: a receiver gain or surface-coil intensity correction that
# changed for that image. Contrast lifts the blood pools and the myocardium, a few per cent of
# the field, and the body hardly at all from one heartbeat to the next. Left in, the step reads
# as enhancement: a dynamic x1.3 on the upslope gave the phantom MBF 7 % high and a QC flag
# blaming the AIF's timing. SCALE_STEP: the least factor taken for a rescale; SCALE_AGREEMENT:
# the share of the tissue pixels whose own ratio lies within SCALE_TOLERANCE of it.
SCALE_STEP = 0.10
SCALE_AGREEMENT = 0.6
SCALE_TOLERANCE = 0.05

# Of the body's pixels, at least this share steady on both sides of a step: a scale change moves
# the whole body (55-84 % of it steady on the phantom series stepped part-way), while at the bolus
# arrival 55 pixels of a phantom's 2,304 rising together had passed for a x1.11 step
STEP_STEADY_SHARE = 0.2
# Frames scaled back alike, this many or more in a row: a step in the scale (``_largest_scale_step``),
# not single frames rescaled against both neighbours
MIN_STEP_FRAMES = 3


def rescaled_frames(images):
    """(T,) factor per frame of a (T, S, R, C) signal-intensity series: the common ratio of its
    steady tissue (pixels whose value the frames either side agree on: the body, and blood
    and myocardium outside the bolus) to those frames, where most of that tissue shares it and
    it is over SCALE_STEP from 1; 1.0 elsewhere. The most deviant frame is found first and
    set right before the next is looked for, so a rescaled frame does not make its
    neighbours look rescaled the other way."""
    t = len(images)
    factors = np.ones(t)
    if t < 5:
        return factors
    flat = pixel_sample(images, 1, 4000).astype(np.float64)
    x = flat[:, flat.mean(0) > np.percentile(flat.mean(0), 50)].copy()   # the body, not air
    frames = np.arange(t)
    # the two frames either side; at the ends, the ones further along on the other side
    picks = [np.where((frames + d >= 0) & (frames + d < t), frames + d, frames - d) for d in (-2, -1, 1, 2)]
    for _ in range(max(1, t // 5)):
        around = np.stack([x[i] for i in picks], 1)                  # (T, 4, pixels)
        ref = row_median(np.moveaxis(around, 1, -1))
        steady = (ref > 0) & ((around.max(1) - around.min(1)) < SCALE_TOLERANCE * np.maximum(ref, 1e-12))
        ratio = np.where(steady, x / np.where(steady, ref, 1.0), np.nan)
        found = {}
        for f in np.flatnonzero(steady.sum(1) >= 50):
            values = ratio[f][steady[f]]
            r = float(np.median(values))
            if r <= 0:
                continue   # the frame's tissue is empty where its neighbours' is not: a blank frame, not a rescale
            if abs(r - 1) > SCALE_STEP and np.mean(np.abs(values / r - 1) < SCALE_TOLERANCE) > SCALE_AGREEMENT:
                found[int(f)] = r
        if not found:
            break
        worst = max(found, key=lambda f: abs(np.log(found[f])))
        x[worst] /= found[worst]
        factors[worst] *= found[worst]
    # a change that persists: every frame from one on scaled alike against those before it (a
    # series joined from two exports, a gain changed part-way), which no frame shows against its
    # neighbours. A phantom's DICOM series x1.25 from its 31st of 60 dynamics read MBF 22 % low,
    # x0.8 from its 41st 28 % low, with QC saying only that its AIF came from the LV (probe 52's
    # "scale inside the window"). Found in the body's signal: a series without one (Gd units, or
    # a phantom of concentration plus noise) shows no step to find
    for _ in range(3):
        r, f = _largest_scale_step(x)
        if f is None:
            break
        x[f:] /= r
        factors[f:] *= r
    return factors


def _largest_scale_step(x, width=3):
    """(factor, frame) of the largest step in the steady tissue's level of ``x`` ((T, pixels), the
    body's pixels): the frames from ``frame`` on against the ``width`` before it, where the pixels
    steady on both sides (within SCALE_TOLERANCE over each side's frames; STEP_STEADY_SHARE of
    them or more) mostly share one ratio over SCALE_STEP from 1; (1.0, None) when there is none."""
    best = (1.0, None)
    for f in range(2, len(x) - 1):
        left, right = x[max(0, f - width):f], x[f:f + width]
        # each side's level where the two meet, on its own trend: the body still takes up contrast
        # after the first pass, and side medians read a x0.80 step as x0.77 (MBF 17 % off after)
        lref, rref = _level_at(left, len(left) - 0.5), _level_at(right, -0.5)
        steady = ((lref > 0) & (rref > 0) & (np.ptp(left, 0) < SCALE_TOLERANCE * lref)
                  & (np.ptp(right, 0) < SCALE_TOLERANCE * np.maximum(rref, 1e-12)))
        if steady.sum() < max(50, STEP_STEADY_SHARE * x.shape[1]):
            continue
        ratios = rref[steady] / lref[steady]
        r = float(np.median(ratios))
        if (abs(r - 1) > SCALE_STEP and np.mean(np.abs(ratios / r - 1) < SCALE_TOLERANCE) > SCALE_AGREEMENT
                and abs(np.log(r)) > abs(np.log(best[0]))):
            best = (r, f)
    return best


def _level_at(window, t):
    """Each pixel's straight-line trend over the frames of ``window`` ((n, pixels)) at frame ``t``
    of it (counted from its first)."""
    frames = np.arange(len(window)) - (len(window) - 1) / 2
    mean = window.mean(0)
    if len(window) < 2:
        return mean
    slope = frames @ window / (frames @ frames)
    return mean + slope * (t - (len(window) - 1) / 2)


def undo_rescaled_frames(study, where, warnings=None):
    """Divide frames rescaled as a whole (``rescaled_frames``) back to the series' scale, in
    place, with a warning naming them; returns {frame: factor}."""
    factors = rescaled_frames(study.images)
    odd = {int(f): float(factors[f]) for f in np.flatnonzero(factors != 1.0)}
    if not odd:
        return odd
    study.images = np.ascontiguousarray(study.images, np.float32)
    for f, r in odd.items():
        study.images[f] /= r
    runs = []   # frames of one factor in a row, said once: a step scales every frame after it
    for f, r in odd.items():
        if runs and f == runs[-1][1] + 1 and abs(r - runs[-1][2]) < 1e-9:
            runs[-1][1] = f
        else:
            runs.append([f, f, r])
    listed = ", ".join(f"{a + 1}{f'-{b + 1}' if b > a else ''} (x{r:.2f})" for a, b, r in runs)
    (study.provenance.setdefault("warnings", []) if warnings is None else warnings).append(
        f"frame{'s' if len(odd) > 1 else ''} {listed} of {where}: every tissue alike brighter or darker than in the "
        "frames around, a change of receiver scaling or intensity correction, not contrast: scaled back to the series")
    study.provenance["rescaled_frames"] = {str(f): round(r, 4) for f, r in odd.items()}
    steps = [{"frames": [a, b], "factor": round(r, 4)} for a, b, r in runs if b - a + 1 >= MIN_STEP_FRAMES]
    if steps:   # QC's FRAMES_SCALE_STEP: the factor is estimated, and MBF is sensitive to it
        study.provenance["scale_steps"] = steps
    return odd


def frames_differ_from_file(provenance):
    """True when the study's frames are not the file's: frames left out (PD reference images,
    blank dynamics; frame numbers then differ) or rescaled back to the series' scale."""
    return bool(provenance.get("pd_frames") or provenance.get("blank_frames") or provenance.get("rescaled_frames"))


def remove_frames(study, keep):
    """Keep the frames where ``keep`` (a (T,) bool) in ``study``'s images, frame times (counted
    from the first frame kept; a gap where a frame in the middle went) and DICOM frame maps, in
    place."""
    keep = np.asarray(keep, bool)
    n_before = len(keep)
    new_index = np.cumsum(keep) - 1        # old frame -> new frame, where kept
    prov = study.provenance
    study.images = np.ascontiguousarray(study.images[keep])
    if study.frame_times_s is not None and len(study.frame_times_s) == n_before:
        times = np.asarray(study.frame_times_s, float)[keep]
        study.frame_times_s = times - times[0]
        timing = prov.get("timing")
        if isinstance(timing, dict) and timing.get("origin_s") is not None:
            timing["origin_s"] = float(timing["origin_s"]) + float(times[0])   # the first frame kept, on the clock
    for key in ("flip_angles_deg", "acquisition_times_s", "temporal_positions"):
        if isinstance(prov.get(key), list) and len(prov[key]) == n_before:
            values = [v for v, k in zip(prov[key], keep) if k]
            prov[key] = [v - values[0] for v in values] if key == "acquisition_times_s" else values
    if isinstance(prov.get("trigger_times_ms"), list):   # per slice, per frame
        prov["trigger_times_ms"] = [[v for v, k in zip(row, keep) if k] if len(row) == n_before else row
                                    for row in prov["trigger_times_ms"]]
    # image -> (frame, slice) of the DICOM files: the frames left out map to no frame now
    for key in ("instance_map", "sop_map"):
        if isinstance(prov.get(key), dict):
            prov[key] = {i: (int(new_index[t]), s) for i, (t, s) in prov[key].items() if 0 <= t < n_before and keep[t]}
    if isinstance(prov.get("frame_map"), dict):
        prov["frame_map"] = {uid: {f: (int(new_index[t]), s) for f, (t, s) in m.items() if 0 <= t < n_before and keep[t]}
                             for uid, m in prov["frame_map"].items()}
