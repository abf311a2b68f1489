"""The dual-sequence AIF: a low-resolution series acquired beside the perfusion images.

Dual-sequence perfusion (Gatehouse 2004; Xue et al. 2020) images the LV blood pool with a
short saturation delay so the blood signal stays nearly linear in Gd at the bolus peak. Its
LV pool is found from the bolus (``bolus.locate_blood_pools``) and its curve is brought onto the
main series' frames and signal scale: the main series' own LV curve is linear in Gd at low
concentration and saturates towards the peak, so the AIF is scaled by the slope at zero of a
saturation curve fitted to the main LV signal against the AIF series' over the first pass
(``scale_onto_main``). What stays approximate without proton-density calibration is said in a
warning.
"""
import numpy as np

from ..errors import CardiacInputError
from .pd_frames import drop_leading_pd_frames, drop_trailing_pd_frames


def aif_from_dual_sequence(study, folder, aif_uid, progress=None):
    """(T,) AIF for ``study`` from the AIF series ``aif_uid`` in ``folder``."""
    from .dicom import load_dicom_series

    aif_study = study.companion_series.pop(aif_uid, None)   # read with the main series, from one folder scan
    if aif_study is None:
        aif_study = load_dicom_series(folder, series=aif_uid, progress=progress, as_aif=True)
    return _aif_from_series_study(study, aif_study, aif_uid, folder)


def aif_from_series_folder(study, folder, progress=None):
    """(T,) AIF for ``study`` from a folder that holds its dual-sequence AIF series alone
    (``--aif AIF_FOLDER``, the AIF series exported apart from the perfusion series)."""
    from ..study import check_same_patient
    from .dicom import load_dicom_series

    aif_study = load_dicom_series(folder, progress=progress, as_aif=True)
    refuse_the_images_themselves(study, aif_study, folder)
    check_same_patient(study, aif_study, folder, "the AIF series")
    if aif_study.n_frames < MIN_AIF_SERIES_FRAMES:
        # a cine folder given as --aif was refused as "perfusion series: need (frames >= 8, ...)",
        # naming neither the folder nor --aif (probe 57)
        described = aif_study.provenance.get("series_description") or "no description"
        raise CardiacInputError(folder, f"given with --aif, its series ({described!r}) has {aif_study.n_frames} frame(s): a "
                                        f"dual-sequence AIF series follows the first pass over {MIN_AIF_SERIES_FRAMES} or more "
                                        f"(the images have {study.n_frames}); a cine or another series? Give the AIF "
                                        "series' folder, or leave --aif out to take the AIF from the LV")
    return _aif_from_series_study(study, aif_study, aif_study.provenance.get("series_uid", str(folder)), folder)


def refuse_the_images_themselves(study, aif_study, folder):
    """Refuse a folder given with --aif whose series read as the AIF series is (part of) the
    images' own: the input folder, or a copy of the exam with no AIF series that pairs with the
    images. Read as "the dual-sequence AIF series", the images' own saturated LV was scaled onto
    itself by 1: MBF +10 to +61 %, the AIF_FROM_LV review flag gone (probe 106)."""
    own = set(str((study.provenance or {}).get("series_uid") or "").split("+")) - {""}
    read = set(str((aif_study.provenance or {}).get("series_uid") or "").split("+")) - {""}
    if own & read:
        described = aif_study.provenance.get("series_description") or "no description"
        raise CardiacInputError(folder, f"given with --aif, it holds the images themselves (series {'+'.join(sorted(own & read))}, "
                                        f"{described!r}) and no dual-sequence AIF series that pairs with them: give the AIF "
                                        "series' folder, or leave --aif out (the AIF is then taken from an AIF series found "
                                        "beside the images, else from their LV)")


# A first pass over fewer frames is no AIF series (bolus.enhancement needs as many).
MIN_AIF_SERIES_FRAMES = 8


# Frame times of an AIF series matched frame for frame that part from the images' by more than
# this are said (whole-second clocks on one series part them by up to 0.5 s over 60 frames).
AIF_SERIES_TIME_DRIFT_S = 0.1


def _aif_from_series_study(study, aif_study, aif_uid, folder):
    from ..perfusion.bolus import aif_from_lv
    from ..perfusion.motion import DEAD_BAND_PX, alignment_record

    # its own PD frames (dual-sequence protocols write them in both series): the main series' warnings say so
    drop_leading_pd_frames(aif_study, f"the AIF series {aif_uid}", study.provenance.setdefault("warnings", []))
    drop_trailing_pd_frames(aif_study, f"the AIF series {aif_uid}", study.provenance.setdefault("warnings", []))
    frames, pools, shifts = _pools_on_aligned_frames(aif_study, aif_study.n_slices // 2)
    moved_px = 0.0 if shifts is None else float(np.abs(shifts).max())
    curve = aif_from_lv(frames, pool_core(pools), erode_px=0)
    t_aif = aif_study.frame_times_s
    t_main = study.frame_times_s
    offset = clock_offset_s(study, aif_study)
    if t_aif is not None and t_main is not None and len(t_aif) == len(curve) and len(curve) == study.n_frames and \
            not _first_frames_beats_apart(study, aif_study, offset):
        # as many frames as the images: frame for frame, as the scanner read them out in the same
        # heartbeats; the clock would only blur this: the AIF read out 0.2 s before the first
        # slice, at 120/min, sits nearer the previous beat's images than its own (MBF +66 %;
        # probe 25). By index, not on the two series' times: times cut to whole seconds on the
        # images only (0.49 s steps against the AIF series' 0.5 s) moved the AIF by up to a frame
        # when it was interpolated on them, MBF +17 % with QC pass (probe 44)
        drift = float(np.max(np.abs((t_main - t_main[0]) - (t_aif - t_aif[0]))))
        if drift > AIF_SERIES_TIME_DRIFT_S:
            study.provenance.setdefault("warnings", []).append(
                f"the AIF series {aif_uid} and the images have as many frames, read in the same heartbeats, but their "
                f"frame times part by up to {drift:.2f} s (one series' times rounded or written otherwise?): the AIF is "
                "matched frame for frame and the images' times are used")
    elif t_aif is not None and t_main is not None and len(t_aif) == len(curve) and offset is not None:
        # frames lost from one series (a file missing in the export): which AIF frame belongs to
        # which heartbeat is read off the common clock (counting from the first files put the
        # AIF a beat early: MBF +66 %; probe 22)
        from .dicom import aif_read_every_beat

        if aif_read_every_beat(len(curve), study.n_frames):
            study.provenance.setdefault("warnings", []).append(
                f"the dual-sequence AIF series {aif_uid} has {len(curve)} frames, the images {study.n_frames}: the AIF read "
                "out every heartbeat, the images' slices every other; the AIF is taken at the images' heartbeats on "
                "the common clock")
        curve = same_heartbeats(curve, t_aif - t_aif[0] + offset, t_main - t_main[0])
    elif t_aif is not None and t_main is not None and len(t_aif) == len(curve):
        if len(curve) != study.n_frames:
            raise CardiacInputError(folder, f"the AIF series has {len(curve)} frames, the perfusion series {study.n_frames}, "
                                            "and no common acquisition clock: which frames are the same heartbeats is "
                                            "unknown (a frame missing at the start would shift the AIF by a heartbeat)")
        curve = np.interp(t_main - t_main[0], t_aif - t_aif[0], curve)
    elif len(curve) != study.n_frames:
        raise CardiacInputError(folder, f"the AIF series has {len(curve)} frames, the perfusion series {study.n_frames}, "
                                        "and no frame times to match them")
    # the images' LV curve the scale is fitted to, on frames aligned as the AIF series' are: read
    # on the frames as acquired, breathing took myocardium into the pool at the peak (phantom
    # breathing up to 5 mm: scale 12 % low, MBF +22 / +29 %; aligned: 2-3 % low, +10 / +17 %,
    # the rest the tissue's own breathing error)
    # the alignment is kept for that slice's motion correction before the MBF fit, which starts
    # from it instead of registering the same frames again (as from the mask's bolus check)
    mid = study.n_slices // 2
    main_frames, main_pools, main_shifts = _pools_on_aligned_frames(study, mid)
    if main_shifts is not None:
        study.provenance.setdefault("frame_alignment", {})[mid] = alignment_record(
            study.images[:, mid], main_shifts, study.spacing_rc, source="the dual-sequence AIF's scale")
    main_lv = aif_from_lv(main_frames, main_pools["lv"])
    check_same_bolus(curve, main_lv, t_main, aif_uid)
    clipped = lv_clipped_frames(main_lv, t_main, float(np.max(study.images)))
    scale, saturation = scale_onto_main(curve, main_lv, leave_out=clipped)
    clip_note = ""
    if clipped.any():
        first, last = np.flatnonzero(clipped)[[0, -1]]
        clip_level = float(main_lv[clipped].max())
        clip_note = (f"; the images' LV signal is clipped at {clip_level:.4g} (flat at its maximum over {int(clipped.sum())} "
                     f"frame(s), {first + 1}-{last + 1}: a ceiling in the stored values or a saturated read-out), so "
                     "those frames were left out of the scaling")
    study.provenance.setdefault("warnings", []).append(
        f"AIF from the dual-sequence AIF series {aif_uid}, scaled onto the perfusion images' LV signal by {scale:.3g} "
        f"(the slope where both are linear; the images' LV signal {saturation:.0%} below linear at the AIF's peak): no "
        "proton-density calibration, so MBF is approximate (the AIF series' own saturation at the bolus peak "
        "over-estimates it, the tissue's under-estimates it)"
        + (f"; its frames were aligned for breathing (up to {moved_px * aif_study.spacing[0]:.1f} mm) before its LV "
           "pool was read" if moved_px > DEAD_BAND_PX else "")
        + clip_note)
    study.provenance["aif_detection"] = {"series": aif_uid, "confidence": pools["confidence"], "reason": pools["reason"],
                                         "scale_to_main": scale, "main_lv_saturation_at_aif_peak": saturation,
                                         "breathing_shift_max_px": round(moved_px, 2)}
    if clipped.any():
        study.provenance["aif_detection"]["main_lv_clipped_frames"] = [int(i) for i in np.flatnonzero(clipped)]
        study.provenance["aif_detection"]["main_lv_clip_level"] = clip_level
    return curve * scale


# The AIF series is read out in the heartbeat of the images' first slices, a few hundred ms
# before them: first frames this many frame intervals apart on the common clock are no longer
# one heartbeat's.
BEATS_APART = 0.75


def _first_frames_beats_apart(study, aif_study, offset):
    """True where the two series' first frames lie in different heartbeats on a common clock
    (not whole seconds): each lost other dynamics, as many in all (the images their last two, the
    AIF series its first two), and frame-for-frame pairing put the AIF two beats late (MBF
    +6.5 %, QC pass; probe 97). Their heartbeats are then read off the clock."""
    if offset is None or study.frame_times_s is None or len(study.frame_times_s) < 2:
        return False
    if any(((s.provenance or {}).get("timing") or {}).get("coarse") for s in (study, aif_study)):
        return False   # whole seconds: the offset itself is uncertain by a beat or two
    interval = float(np.median(np.diff(study.frame_times_s)))
    if not interval > 0 or abs(offset) <= BEATS_APART * interval:
        return False
    apart = abs(offset) / interval
    # proton-density frames left out of one series only start its dynamics that many frames
    # later: the usual cause, not a file lost in the export (session 45's note said "lost").
    # Signed (the offset is the AIF series' first frame less the images'): PD frames left out of
    # the images cannot explain an AIF series that starts later; frames lost from it can.
    pd_left_out = [((s.provenance or {}).get("pd_frames") or {}).get("dropped", 0) for s in (study, aif_study)]
    if pd_left_out[0] != pd_left_out[1] and abs(offset / interval - (pd_left_out[1] - pd_left_out[0])) < 0.5:
        why = (f"the proton-density reference frames left out before the dynamics differ ({pd_left_out[0]} of the "
               f"images, {pd_left_out[1]} of the AIF series)")
    else:
        why = "frames were lost from one series or both"
    study.provenance.setdefault("warnings", []).append(
        f"the dual-sequence AIF series' first frame is {offset:+.2f} s from the images' on the common clock, "
        f"{apart:.1f} frame intervals: {why}, so the AIF is matched to the images by heartbeat on the clock, not "
        "frame for frame")
    return True


def _pools_on_aligned_frames(study, k):
    """(frames, pools, (T, 2) shifts in pixels or None where nothing could be registered): slice
    ``k``'s frames (the AIF series', or the images' middle slice the scale is read on) moved onto
    each other when the patient breathes, and the bolus' blood pools (``bolus.locate_blood_pools``)
    found on them.

    The pool is found once for all frames; breathing moves the heart under it (by a pixel or two
    at the AIF series' 3-10 mm pixels), so the pool's curve picks up myocardium and RV blood in
    some frames. The frames are aligned with each other as the images' are
    (``motion.estimate_shifts``, the low-rank synthetic reference), on a mask of the pool and a two-pixel ring around it standing
    for the myocardium, and the pools found again on the aligned frames. A phantom AIF series
    breathing +-5 / +-10 mm (5 s period) at 9 mm pixels read MBF 18 / 49 % low (at 5.4 mm 9 / 14 %),
    now 8 % low (5-6 % at 5.4 mm; 4-5 % when still); on the three real AIF series the curve's
    area moves under 1 %."""
    from scipy import ndimage

    from ..labels import LV, MYO, RV
    from ..perfusion.bolus import locate_blood_pools
    from ..perfusion.motion import DEAD_BAND_PX, apply_shifts, estimate_shifts

    frames = study.images[:, k]
    pools = locate_blood_pools(frames, pixel_mm=study.spacing[0])
    lv, rv = np.asarray(pools["lv"], bool), np.asarray(pools.get("rv", False), bool)
    label = np.zeros(lv.shape, np.uint8)
    label[ndimage.binary_dilation(lv, iterations=2) & ~lv] = MYO
    label[rv & (label == 0)] = RV
    label[lv] = LV
    shifts, note = estimate_shifts(frames, label, study.spacing_rc, onto_mask=False)
    if not note.get("registered"):
        return frames, pools, None
    # before the contrast arrives the AIF sequence's short saturation delay leaves little but
    # noise to register on (real AIF series: 1-2 px 'shifts' there, none after): those frames
    # keep the shift of the bolus' foot
    foot = int(pools.get("foot_frame") or 0)
    if 0 < foot < len(shifts):
        shifts[:foot] = shifts[foot]
    if float(np.abs(shifts).max()) <= DEAD_BAND_PX:
        return frames, pools, shifts
    aligned = apply_shifts(frames, shifts)
    return aligned, locate_blood_pools(aligned, pixel_mm=study.spacing[0]), shifts


# A pixel of the AIF series' LV pool holds RV blood when its enhancement at the RV's peak is an
# outlier among the pool's: over the median by this many robust SDs (and 5 % of the LV's peak)
RV_BLOOD_OUTLIER_SD = 3.0


def pool_core(pools):
    """The bolus' LV pool (``bolus.locate_blood_pools``) eroded by a pixel, as ``aif_from_lv``
    takes it, less the pixels that hold RV blood: an outlying enhancement at the RV's peak (three
    frames around it, against the pool's LV peak). The AIF series' pixels are 3-10 mm, so across
    the septum a pixel mixes in RV blood: at 5.4 mm a pool of 64 pixels held 9 such, and the AIF's
    RV hump before the LV's rise put MBF at 1.9-5x the truth (probe 39). Keeping the pool's
    brightest half at the LV's peak instead (as first done) took the pixels whose noise was high
    there: MBF 5-10 % low at SNR 7 (probe 40)."""
    from scipy import ndimage

    lv = np.asarray(pools["lv"], bool)
    inner = ndimage.binary_erosion(lv)
    if inner.sum() < 4:
        inner = lv
    rv_peak = pools.get("rv_peak_frame")
    if rv_peak is None or not np.asarray(pools.get("rv", False)).any() or inner.sum() < 8:
        return inner
    e = np.asarray(pools["enhancement"], float)[:, inner]

    def around(frame):
        return e[max(0, frame - 1):frame + 2].mean(0)

    lv_peak = float(np.median(around(pools["lv_peak_frame"])))
    if not lv_peak > 0:
        return inner
    share = around(rv_peak) / lv_peak
    centre = float(np.median(share))
    spread = 1.4826 * float(np.median(np.abs(share - centre)))
    holds_rv = share > centre + max(RV_BLOOD_OUTLIER_SD * spread, 0.05)
    if (~holds_rv).sum() < 4:
        return inner
    core = inner.copy()
    core[inner] = ~holds_rv
    return core


def clock_offset_s(study, aif_study):
    """Seconds from the images' first frame to the AIF series' first frame on the scanner's clock
    both were read with (the same tag), or None: another clock, no clock, or hours apart."""
    a = (study.provenance or {}).get("timing") or {}
    b = (aif_study.provenance or {}).get("timing") or {}
    if a.get("origin_s") is None or b.get("origin_s") is None:
        return None
    if (a.get("clock"), a.get("tag")) != (b.get("clock"), b.get("tag")):
        return None
    offset = float(b["origin_s"]) - float(a["origin_s"])
    return offset if abs(offset) < MAX_CLOCK_OFFSET_S else None


def same_heartbeats(curve, aif_times, main_times):
    """The AIF series' values on the images' frames, each AIF frame put on the image frame of its
    heartbeat: the nearest on the common clock, within half an interval. The clock says which
    heartbeat, not a sub-beat shift: the AIF is read out in the same heartbeat a little before
    the slices, and interpolating by that 0.1-0.3 s moved the upslope the images' LV is scaled
    on (MBF +18 % for a 0.1 s offset). Image frames without an AIF frame (a file missing) are
    interpolated between their neighbours."""
    main_times = np.asarray(main_times, float)
    aif_times = np.asarray(aif_times, float)
    half = 0.5 * float(np.median(np.diff(main_times))) if main_times.size > 1 else np.inf
    nearest = np.abs(aif_times[:, None] - main_times[None, :]).argmin(axis=1)
    matched = np.abs(main_times[nearest] - aif_times) < half
    frames, values = nearest[matched], np.asarray(curve, float)[matched]
    frames, first = np.unique(frames, return_index=True)   # two AIF frames in one heartbeat: the first
    if frames.size < 2:
        raise CardiacInputError("AIF series", "its frames fall in none of the images' heartbeats on the common clock")
    return np.interp(main_times, main_times[frames], values[first])


MAX_CLOCK_OFFSET_S = 600.0   # further apart, the series are not one acquisition (or the clock is another day's)
MAX_RISE_LAG_S = 3.0         # the AIF series images the same LV blood at the same heartbeats


def check_same_bolus(aif, main_lv, times, aif_uid):
    """Refuse an AIF series whose curve does not rise with the images' own LV blood pool: a
    low-resolution series taken for the AIF series (a scout, a localiser) gave a curve with no
    first pass or another one. ``times`` in s (None: frame numbers, the lag then in frames)."""
    t = np.arange(len(aif), dtype=float) if times is None else np.asarray(times, float)   # untimed: in frames
    a = np.asarray(aif, float) - np.median(aif[:3])
    m = np.asarray(main_lv, float) - np.median(main_lv[:3])
    if not (a.max() > 0 and m.max() > 0):
        raise CardiacInputError(aif_uid, "its blood pool shows no first-pass enhancement")
    # the half-rise, not the peak: the images' LV signal saturates, its peak is a plateau
    signed = float(t[int(np.argmax(a >= 0.5 * a.max()))] - t[int(np.argmax(m >= 0.5 * m.max()))])
    lag = abs(signed)
    if lag > MAX_RISE_LAG_S:
        # earlier: the RV's first pass, which the bolus finder takes for the LV when the AIF
        # series' LV pool is a few coarse pixels (probe 39: 8 pixels or fewer)
        when = "before" if signed < 0 else "after"
        why = " (its LV pool may be the RV: the AIF series' LV is perhaps only a few pixels)" if signed < 0 else ""
        raise CardiacInputError(aif_uid, f"its blood curve rises {lag:.1f} s {when} the images' LV blood pool{why}: "
                                         "not the same first pass")


# The main series' blood signal against the AIF series' over the first pass, S_main =
# (s / beta) (1 - exp(-beta S_aif)): the images' saturation-recovery signal saturates with Gd
# (S0 (1 - exp(-TD (R10 + r1 Gd)))), the AIF series' short saturation delay keeps it nearly
# linear. ``beta`` is searched so that beta times the AIF's peak runs over this grid (0: linear).
SATURATION_GRID = np.linspace(0.0, 8.0, 161)
MIN_FRAMES_FOR_SCALE = 4
MIN_AIF_SHARE_FOR_SCALE = 0.2   # of the AIF's peak: lower frames are mostly noise (probe 40's floor)


# The saturation curve is taken only where it fits far better than a line: on a main series that
# does not saturate, noise in the AIF series' low frames alone fitted a 16-30 % "saturation" and
# scaled the AIF 15-40 % high (SNR 5-10: MBF down to -24 %, QC pass; probe 40).
MAX_RESIDUAL_SHARE_FOR_SATURATION = 0.5


# The images' LV curve at the series' highest value in this many frames is cut at a ceiling (a
# 12-bit store, an export's window): the pool's mean sits there only when every pixel of it does.
# Two frames, not AIF_CLIPPED's three over 1.5 s: the ceiling says it, and a bolus clipped at 0.9
# of its peak stays there two frames (scale 3.5 % low).
MIN_FRAMES_AT_CEILING = 2


def lv_clipped_frames(main_lv, times, ceiling):
    """(T,) bool: the frames where the images' LV curve is clipped: flat at its maximum as
    ``perfusion.bolus.clipped_peak`` reads a clipped AIF (QC's AIF_CLIPPED: ``AIF_PLATEAU_FRAMES``
    or more within ``AIF_PLATEAU_FRACTION`` of the peak over ``AIF_PLATEAU_S``), or at the series' highest value
    ``ceiling`` in ``MIN_FRAMES_AT_CEILING`` or more frames. The saturation curve of
    ``scale_onto_main`` bends smoothly; fitted to a hard plateau it took the plateau for
    saturation: LV cut at 0.7 of its peak by a 12-bit ceiling scaled the AIF by 1.8 for 1.49 (the
    clip called "38 % below linear"), MBF 18 % low, up to 29 % (probe 106)."""
    from ..perfusion.bolus import CEILING_TOLERANCE, bolus_foot, clipped_peak

    m = np.asarray(main_lv, float)
    clipped = np.zeros(m.size, bool)
    if m.size == 0:
        return clipped
    if times is not None and len(times) == m.size:
        top = clipped_peak(m - np.median(m[:max(1, bolus_foot(m, fraction=0.1))]), np.asarray(times, float))
        if top is not None:
            clipped[top[0]:top[1] + 1] = True
    at_ceiling = m >= ceiling - CEILING_TOLERANCE * (ceiling - float(m.min()))
    if at_ceiling.sum() >= MIN_FRAMES_AT_CEILING:
        clipped |= at_ceiling
    return clipped


def scale_onto_main(aif, main_lv, leave_out=None):
    """(factor, saturation) mapping the AIF series' baseline-corrected curve onto the main
    series' LV signal in its linear range: the slope at zero of the main LV signal against the
    AIF series' signal, fitted with the main series' saturation over every frame where the AIF
    has risen above ``MIN_AIF_SHARE_FOR_SCALE`` of its peak (rise, peak and fall; below it noise
    and a noise floor bend the curve; the acquisition a little apart within
    each beat then tilts the rise and the fall opposite ways), when that curve leaves under half
    the residual of a line (``MAX_RESIDUAL_SHARE_FOR_SATURATION``), else the line's slope. Both
    curves lose their median before the AIF's foot (``bolus.bolus_foot`` at 10 % of its rise): a
    median, not ``mbf.subtract_baseline``'s mean, because the low-resolution AIF series is noisy
    (SNR 7 in probe 40) and one noisy baseline frame moves a mean. ``saturation``: how far below
    linear the main series' LV signal is at the AIF's peak (0 = linear).

    A fit on the upslope below half the main LV's peak alone (until session 21) missed the
    saturation: at 0.8 s frames only one frame lies there, the fallback took the whole saturated
    rise, and MBF came out twice the truth (probe 39); at 0.5 s frames the half-peak window itself
    is 25 % below linear (MBF +21 to +76 %).

    ``leave_out``: (T,) bool, frames not fitted (the main LV clipped there, ``lv_clipped_frames``);
    the saturation is still said at the AIF's own peak."""
    from ..perfusion.bolus import bolus_foot

    foot = max(1, bolus_foot(aif, fraction=0.1))
    a, m = np.asarray(aif, float), np.asarray(main_lv, float)
    a, m = a - np.median(a[:foot]), m - np.median(m[:foot])
    if not a.max() > 0:
        return 1.0, 0.0
    peak = float(a.max())
    use = a > MIN_AIF_SHARE_FOR_SCALE * peak
    if leave_out is not None:
        use &= ~np.asarray(leave_out, bool)
    a, m = a[use], m[use]
    if float(a @ a) <= 0:
        return 1.0, 0.0
    line = float(a @ m) / float(a @ a)
    if a.size < MIN_FRAMES_FOR_SCALE:
        return line, 0.0
    line_residual = float(((m - line * a) ** 2).sum())
    best = (line_residual, line, 0.0)
    for u in SATURATION_GRID[1:]:
        beta = u / peak
        g = -np.expm1(-beta * a) / beta    # (1 - exp(-beta a)) / beta: a when beta -> 0
        slope = float(g @ m) / float(g @ g)
        residual = float(((m - slope * g) ** 2).sum())
        if residual < best[0]:
            best = (residual, slope, u)
    residual, slope, u = best
    if u == 0 or residual > MAX_RESIDUAL_SHARE_FOR_SATURATION * line_residual:
        return line, 0.0
    return slope, 1.0 - float(-np.expm1(-u)) / u
