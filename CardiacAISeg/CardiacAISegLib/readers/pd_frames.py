"""Proton-density reference images at the start of a perfusion series.

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
rest of the series and far above its frame-to-frame spread. A FlipAngle that differs
from the dynamics' (DICOM) is named as further evidence, and by itself marks the frames too: a
different flip angle is a different acquisition. The frames are dropped from the images and the
frame times, and a warning says which and why. Series in Gd concentration (QPerf) are left
alone: their pre-contrast level is zero, so a ratio means nothing.
"""
import numpy as np

MAX_PD_FRAMES = 5        # protocols write 1-3; more leading outliers are something else
PD_SIGNAL_RATIO = 1.5    # PD images are 3-10x the saturation-recovery baseline
MIN_DYNAMICS = 10        # never leave a series too short to find a bolus in


def frame_levels(images):
    """(T,) whole-field signal level per frame: the 75th percentile over every slice (tissue
    rather than air; the bolus moves a few per cent of the pixels, so it barely moves this)."""
    images = np.asarray(images)
    t = images.shape[0]
    flat = images.reshape(t, -1)
    # a strided subsample keeps this cheap on full-field series and changes a percentile by little
    step = max(1, flat.shape[1] // 20000)
    return np.percentile(flat[:, ::step], 75, axis=1)


def leading_pd_frames(images, flip_angles=None):
    """(n, reason): the number of leading PD reference frames and why (n = 0: none).

    ``images``: (T, ...) signal intensity. ``flip_angles``: (T,) degrees per frame or None.
    """
    n_t = len(images)
    if n_t < MIN_DYNAMICS + 1:
        return 0, ""
    limit = min(MAX_PD_FRAMES, n_t - MIN_DYNAMICS)
    by_flip, flip_note = 0, ""
    if flip_angles is not None and len(flip_angles) == n_t and np.all(np.isfinite(flip_angles)):
        flips = np.asarray(flip_angles, float)
        dynamic = float(np.median(flips[limit:]))
        while by_flip < limit and abs(flips[by_flip] - dynamic) > 0.5:
            by_flip += 1
        if by_flip and np.all(np.abs(flips[by_flip:] - dynamic) <= 0.5):
            flip_note = f"FlipAngle {flips[0]:g}° against the dynamics' {dynamic:g}°"
        else:
            by_flip = 0   # flip angles that vary along the series say nothing about the first frames

    levels = frame_levels(images)
    rest = levels[limit:]
    level = float(np.median(rest))
    spread = 1.4826 * float(np.median(np.abs(rest - level)))
    by_signal = 0
    if level > 0 and np.all(levels > 0):
        while by_signal < limit:
            # brighter only: contrast makes later frames brighter, never darker, so a darker
            # start is no sign of a reference image (a tight crop around an enhancing heart)
            if levels[by_signal] < PD_SIGNAL_RATIO * level or levels[by_signal] - level < 10 * spread:
                break
            by_signal += 1
    n = max(by_flip, by_signal)
    if n == 0:
        return 0, ""
    ratios = ", ".join(f"{levels[t] / level:.1f}x" for t in range(n)) if level > 0 else ""
    evidence = [e for e in (f"whole-field signal {ratios} that of the dynamics" if by_signal and ratios else "",
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
    study.images = np.ascontiguousarray(study.images[n:])
    if study.frame_times_s is not None and len(study.frame_times_s) == n + study.n_frames:
        times = np.asarray(study.frame_times_s, float)[n:]
        study.frame_times_s = times - times[0]
    for key in ("flip_angles_deg", "acquisition_times_s"):
        if isinstance(prov.get(key), list) and len(prov[key]) == n + study.n_frames:
            values = prov[key][n:]
            prov[key] = [v - values[0] for v in values] if key == "acquisition_times_s" else values
    if isinstance(prov.get("trigger_times_ms"), list):   # per slice, per frame
        prov["trigger_times_ms"] = [row[n:] for row in prov["trigger_times_ms"]]
    # image -> (frame, slice) of the DICOM files: the reference images map to no frame now
    for key in ("instance_map", "sop_map"):
        if isinstance(prov.get(key), dict):
            prov[key] = {k: (t - n, s) for k, (t, s) in prov[key].items() if t >= n}
    if isinstance(prov.get("frame_map"), dict):
        prov["frame_map"] = {uid: {f: (t - n, s) for f, (t, s) in m.items() if t >= n}
                             for uid, m in prov["frame_map"].items()}
    return n
