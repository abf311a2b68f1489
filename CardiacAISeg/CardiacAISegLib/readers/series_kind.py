"""Cine or perfusion: decided here, once, after a reader has read the geometry and frame times.

Evidence, strongest first:
1. the frame times of the series: frames at one slice position spanning many heartbeats
   (more than ``MANY_HEARTBEATS_S``) are a first-pass series; a span of one cycle is a cine
   (DICOM trigger delays / acquisition clocks: ``dicom.choose_frame_clock``; NIfTI/NRRD time
   axes with units; a QPerf folder or Analyze file is perfusion by its format);
2. the user's ``--aif`` (only a perfusion series has an arterial input function) and ``--dt``
   when frames x dt spans many heartbeats;
3. words in the series description ("perf", "first pass", "tfiperf"): they may support the
   timing, never decide against it.
A requested ``--kind`` is never ignored: when strong evidence contradicts it the read fails and
says why; when only weak evidence does, the flag wins and a warning says what the data suggest.
"""
from ..errors import CardiacInputError
from ..study import CINE, PERFUSION
from .dicom import MANY_HEARTBEATS_S, REALTIME_STEP_S

STRONG, WEAK = "strong", "weak"


# A time step shorter than this is no frame interval: cine frames lie 15-60 ms apart and
# perfusion frames a heartbeat or two; a NIfTI writer that stores the repetition time (TR,
# 2-5 ms) in the time axis says nothing of the series' timing.
MIN_FRAME_STEP_S = 0.012


def _from_times(times, source):
    if times is None or len(times) < 2:
        return None
    span = float(times[-1] - times[0])
    if span <= 0 or span / (len(times) - 1) < MIN_FRAME_STEP_S:
        return None
    # frames under REALTIME_STEP_S apart over many seconds: a real-time cine, not a first pass
    kind = PERFUSION if span > MANY_HEARTBEATS_S and span / (len(times) - 1) >= REALTIME_STEP_S else CINE
    cycles = "many heartbeats" if kind == PERFUSION else "one cardiac cycle" if span <= MANY_HEARTBEATS_S else "a real-time cine"
    return kind, f"{source}: {len(times)} frames over {span:.1f} s ({cycles})"


# A first pass lifts both blood pools several-fold over their pre-contrast signal (real
# saturation-recovery series: 6.7-11.5x; Gd-converted series start at zero). Motion in a cine
# makes "pools" of pixels that blood moves into, at most 2.2x (Sunnybrook, 12 slices).
FIRST_PASS_POOL_RISE = 3.0
CINE_POOL_RISE = 2.5     # between the two: neither kind is claimed


def _from_content(study):
    """A first pass from the images alone. Weak evidence.

    The bolus finder's two pools on the middle slice (``bolus.locate_blood_pools``: an early
    and a late one, side by side) must each brighten ``FIRST_PASS_POOL_RISE``-fold over their
    first frames (after any proton-density reference frames): the pools of blood a cine's
    motion mimics do not. Failing that, the brightest pixels: dark before a bolus and bright at
    its peak in a crop around the heart, as bright in every frame of a cine. A full field of
    view's brightest pixels are fat and chest wall near the coils, in perfusion too, so they
    alone never call a series with a pool pair a cine."""
    import numpy as np

    from ..perfusion.bolus import locate_blood_pools
    from .pd_frames import leading_pd_frames

    if study.n_frames < 10:
        return None
    pd_count, _ = leading_pd_frames(study.images)
    images = study.images[pd_count:]
    frames = images[:, study.n_slices // 2]
    try:
        pools = locate_blood_pools(frames)
    except CardiacInputError:
        pools = None
    pool_rise = None
    if pools is not None and pools["rv"].any():
        def rise(region):
            curve = frames[:, region].mean(1)
            before = float(np.median(curve[:3]))
            return float(curve.max()) / before if before > 0 else float("inf")

        lv, rv = rise(pools["lv"]), rise(pools["rv"])
        pool_rise = min(lv, rv)
        if pool_rise >= FIRST_PASS_POOL_RISE:
            return PERFUSION, (f"a contrast first pass on the middle slice: one blood pool brightens {rv:.1f}-fold, then "
                               f"the one beside it {lv:.1f}-fold (RV, then LV)")
    top = np.percentile(images.reshape(images.shape[0], -1), 99, axis=1)
    before = float(np.median(top[:3]))
    ratio = float(top.max()) / before if before > 0 else float("inf")
    if ratio > 1.5:
        return PERFUSION, f"the brightest pixels brighten {ratio:.1f}-fold over the series (a contrast first pass)"
    if ratio < 1.2 and (pool_rise is None or pool_rise < CINE_POOL_RISE):
        return CINE, f"the brightest pixels stay as bright through the series (x{ratio:.2f}: no contrast first pass)"
    return None


def evidence(study, aif_given=False, dt=None):
    """[(kind, strength, reason)] from the data and the flags, strongest first."""
    prov = study.provenance or {}
    found = []
    if prov.get("format_kind"):       # (kind, why): a QPerf folder, an ACDC patient folder
        found.append((prov["format_kind"][0], STRONG, prov["format_kind"][1]))
    timing = prov.get("timing")
    if timing and timing.get("kind"):
        found.append((timing["kind"], STRONG, f"DICOM {timing['reason']}"))
    elif not timing and study.frame_times_s is not None:
        # NIfTI/NRRD time axes: NIfTI writers often store the repetition time, not the frame
        # interval, so a file's time axis is weak evidence
        got = _from_times(study.frame_times_s, f"{prov.get('reader', 'file')} time axis")
        if got:
            found.append((got[0], WEAK, got[1]))
    if aif_given:
        found.append((PERFUSION, STRONG, "an arterial input function was given (--aif)"))
    if dt is not None and study.n_frames > 1:
        got = _from_times([0.0, float(dt) * (study.n_frames - 1)], f"--dt {dt:g} s")
        if got:
            found.append((got[0], WEAK, got[1]))
    content = _from_content(study) if not any(e[1] == STRONG for e in found) else None
    if content:
        found.append((content[0], WEAK, content[1]))
    hint = (timing or {}).get("hint")
    if hint:
        found.append((hint, WEAK, f"series description suggests {hint}"))
    if study.n_frames == 1:
        found.append((CINE, STRONG, "a single frame (no time course): a static short-axis stack"))
    order = {STRONG: 0, WEAK: 1}
    return sorted(found, key=lambda e: order[e[1]])


# A first pass (baseline, arrival, peak, wash-out) needs this many frames; the MBF fit
# (perfusion/mbf.py) needs as many. Checked where MBF is computed (a short series still reads, e.g.
# to look at its timing).
MIN_PERFUSION_FRAMES = 8


def check_perfusion_frames(study, why="a first-pass perfusion series"):
    if study.n_frames < MIN_PERFUSION_FRAMES:
        raise CardiacInputError(study.source or study.name,
                                f"{study.n_frames} frame(s): {why} needs at least {MIN_PERFUSION_FRAMES} "
                                "(baseline, bolus arrival, peak and wash-out; typically 40-60 heartbeats)")


def decide_kind(study, requested=None, aif_given=False, dt=None):
    """Set ``study.kind`` from the evidence and the user's ``requested`` kind; return it.

    Records {"kind", "decided_by", "evidence"} in ``provenance["kind"]``; contradictions between
    strong pieces of evidence, or between strong evidence and ``requested``, are errors that
    name the source and what each says.
    """
    found = evidence(study, aif_given, dt)
    strong = [e for e in found if e[1] == STRONG]
    kinds = {e[0] for e in strong}
    where = study.source or study.name
    if len(kinds) > 1:
        said = "; ".join(f"{k}: {r}" for k, _, r in strong)
        raise CardiacInputError(where, f"the input contradicts itself on the series kind ({said}); check the files and flags")
    warnings = study.provenance.setdefault("warnings", [])
    if requested is not None:
        if requested not in (CINE, PERFUSION):
            raise CardiacInputError(where, f"unknown kind {requested!r}; use 'cine' or 'perfusion'")
        against = [e for e in strong if e[0] != requested]
        if against:
            raise CardiacInputError(where, f"--kind {requested} contradicts the data: {against[0][2]}, which is a "
                                           f"{against[0][0]} series; drop --kind to use the detected kind")
        weak_against = [e for e in found if e[0] != requested]
        if weak_against:
            warnings.append(f"analysed as {requested} as requested (--kind), though {weak_against[0][2]}")
        kind, decided_by = requested, "--kind"
    elif found:
        kind, strength, reason = found[0]
        others = [e for e in found if e[0] != kind]
        if strength == WEAK and others:
            warnings.append(f"series kind uncertain: {reason}, but {others[0][2]}; analysed as {kind} (use --kind to choose)")
        decided_by = reason
    else:
        kind, decided_by = CINE, "no timing information: a short-axis stack is taken as a cine (use --kind perfusion otherwise)"
        if study.n_frames >= 8:
            warnings.append(f"no frame times in the file: {study.n_frames} frames analysed as a cine; "
                            "give --kind perfusion (and --dt) for a first-pass series")
    study.kind = kind
    study.provenance["kind"] = {"kind": kind, "decided_by": decided_by,
                                "evidence": [{"kind": k, "strength": s, "reason": r} for k, s, r in found]}
    return kind
