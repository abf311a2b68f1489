"""Cine or perfusion: decided here, once, after a reader has read the geometry and frame times.

Evidence, strongest first:
1. the frame times of the series: frames at one slice position spanning many heartbeats
   (more than ``MANY_HEARTBEATS_S``) are a first-pass series; a span of one cycle is a cine
   (DICOM trigger delays / acquisition clocks: ``dicom.choose_frame_clock``; NIfTI/NRRD time
   axes with units; a QPerf folder or Analyze file is perfusion by its format);
2. the user's ``--aif`` (only a perfusion series has an arterial input function) and ``--dt``
   when frames x dt spans many heartbeats;
3. the images themselves (``_from_content``), when nothing above is strong: two blood pools side
   by side that brighten several-fold, the RV's first, are a first pass (measured from the
   series' floor where its intensities were shifted below zero: z-scored, offset);
4. words in the series description ("perf", "first pass", "tfiperf"): they may support the
   timing, never decide against it.
A requested ``--kind`` is never ignored: when strong evidence contradicts it the read fails and
says why; when only weak evidence does, the flag wins and a warning says what the data suggest.
"""
from contextlib import contextmanager

from ..errors import CardiacInputError
from ..study import CINE, PERFUSION
from .dicom import HEARTBEAT_STEP_S, MANY_HEARTBEATS_S, MIN_FRAMES_FOR_STEP, REALTIME_STEP_S

STRONG, WEAK = "strong", "weak"


# A time step shorter than this is no frame interval: cine frames lie 15-60 ms apart and
# perfusion frames a heartbeat or two; a NIfTI writer that stores the repetition time (TR,
# 2-5 ms) in the time axis says nothing of the series' timing.
MIN_FRAME_STEP_S = 0.012


def _from_times(times, source, n_frames=None):
    """(kind, reason) from frame times; ``n_frames``: how many frames they are when only the
    first and last time are given (``--dt``)."""
    if times is None or len(times) < 2:
        return None
    count = n_frames or len(times)
    span = float(times[-1] - times[0])
    step = span / (count - 1)
    if span <= 0 or step < MIN_FRAME_STEP_S:
        return None
    # frames under REALTIME_STEP_S apart over many seconds: a real-time cine, not a first pass
    if span > MANY_HEARTBEATS_S and step >= REALTIME_STEP_S:
        return PERFUSION, f"{source}: {count} frames over {span:.1f} s (many heartbeats)"
    if count >= MIN_FRAMES_FOR_STEP and step >= HEARTBEAT_STEP_S:
        return PERFUSION, f"{source}: {count} frames {step:.2f} s apart (one per heartbeat, not phases of one cycle)"
    return CINE, f"{source}: {count} frames over {span:.1f} s ({'one cardiac cycle' if span <= MANY_HEARTBEATS_S else 'a real-time cine'})"


# A first pass lifts both blood pools several-fold over their pre-contrast signal (real
# saturation-recovery series: 6.7-11.5x; Gd-converted series start at zero). Motion in a cine
# makes "pools" of pixels that blood moves into, at most 2.2x (Sunnybrook, 12 slices).
FIRST_PASS_POOL_RISE = 3.0
CINE_POOL_RISE = 2.5     # between the two: neither kind is claimed


# Rises are fold-changes over a signal whose zero is where no signal is: the air of a magnitude
# image, the pre-contrast blood of a map in Gd units (whose noise dips a little below zero: QPerf
# maps to -3 % of their range). A series whose darkest values lie well below zero has been shifted
# (z-scored by a preprocessing tool, int16 stored minus 32000); measured from zero, its pools and
# brightest pixels "rose" from a negative or near-zero start, and a cine was refused as a first
# pass (probe 107 D3). Its rises are measured from its floor: the darkest values it holds.
FLOOR_PERCENTILE = 1
SHIFTED_BELOW_ZERO = 0.05   # of the series' 1st-99th percentile range


def _signal_floor(images):
    """The level where ``images`` hold no signal: 0, or, for a series shifted below zero, its
    ``FLOOR_PERCENTILE``-th percentile. The series' minimum is left out: a padding value outside
    the field (-1024) is no signal level, and subtracted it would flatten every rise."""
    import numpy as np

    from .pd_frames import pixel_sample

    values = pixel_sample(images, 0, 1_000_000)
    values = values[values > values.min()]
    if values.size == 0:
        return 0.0
    low, high = np.percentile(values, [FLOOR_PERCENTILE, 100 - FLOOR_PERCENTILE])
    if not low < -SHIFTED_BELOW_ZERO * (high - low):
        return 0.0
    # shifted is the bulk of the series, not a tail: a Gd map whose noise is centred on zero dips
    # as far below it, but its commonest value (air, pre-contrast tissue) is zero, and measured
    # from its tail its pools rose under 3-fold: taken as a cine (review 1 of session 48)
    counts, edges = np.histogram(values, bins=100, range=(low, high))
    commonest = float(edges[np.argmax(counts)] + edges[np.argmax(counts) + 1]) / 2
    return float(low) if commonest < -SHIFTED_BELOW_ZERO * (high - low) else 0.0


def _above_floor(images):
    """``images`` measured from their ``_signal_floor`` (the same array when that is 0)."""
    return _minus(images, _signal_floor(images))


def _minus(images, floor):
    """``images`` measured from ``floor``: a copy of just these pixels, or the same array when
    ``floor`` is 0. Callers subtract it from the part they read, not from a whole 4D series: the
    copy of a full-field series (60 x 4 x 224 x 208 float32, 45 MB) was made to read one slice."""
    return images - floor if floor else images


def _pool_curves(frames):
    """((rise of the RV pool, rise of the LV pool), (their last frame over their first)) of one
    slice's (T, R, C) frames, for the pair ``bolus.locate_blood_pools`` finds (an early and a late
    pool, side by side): each pool's peak signal, and its last frame's, over its median in the
    first 3 frames (infinite when that is at or below zero: a map in Gd units). ``frames`` are
    measured from zero (``_above_floor``). None when the finder sees no pair."""
    import numpy as np

    from ..perfusion.bolus import locate_blood_pools

    try:
        pools = locate_blood_pools(frames)
    except CardiacInputError:
        return None
    if not pools["rv"].any():
        return None

    def ratios(region):
        curve = frames[:, region].mean(1)
        before = float(np.median(curve[:3]))
        if not before > 0:
            return float("inf"), float("inf"), 0
        rising = int(np.argmax(curve > before + 0.1 * (float(curve.max()) - before)))
        return float(curve.max()) / before, float(curve[-1]) / before, rising

    (rv_rise, rv_end, rv_start), (lv_rise, lv_end, _) = ratios(pools["rv"]), ratios(pools["lv"])
    return (rv_rise, lv_rise), (rv_end, lv_end), rv_start


def _pool_rises(frames):
    curves = _pool_curves(frames)
    return None if curves is None else curves[0]


CYCLE_RISE_WITHIN = 5   # frames: a cine's moving pools change from its first frames on


# Contrast stays in the blood for minutes: after a first pass both pools end well above their
# pre-contrast signal (real series 1.8-2.8x at their last frames). Over one cardiac cycle the
# "pools" a cine's motion makes come back to their first frames' signal (1.1-1.3x on the real
# MetaImage cine, whose pools otherwise brighten 3-5x on some slices), and they start changing
# at once (frame 2-3), where a first pass has its pre-contrast frames.
FIRST_PASS_END_RATIO = 1.5


def _brightening(ratio, verb="brightens", rises="rises"):
    """How a fold-change is said: a series in Gd units starts at (about) zero, no fold worth giving."""
    return f"{verb} {ratio:.1f}-fold" if ratio < 100 else f"{rises} from near zero"


def _first_pass_reason(rises, where):
    rv, lv = rises
    return (f"a contrast first pass {where}: one blood pool {_brightening(rv)}, then the one beside it "
            f"{_brightening(lv)} (RV, then LV)")


def _from_content(study):
    """A first pass from the images alone. Weak evidence.

    The bolus finder's two pools on the middle slice must each brighten
    ``FIRST_PASS_POOL_RISE``-fold over their first frames (after any proton-density reference
    frames): the pools of blood a cine's motion mimics do not. Failing that, the brightest
    pixels: dark before a bolus and bright at its peak in a crop around the heart, as bright in
    every frame of a cine. A full field of view's brightest pixels are fat and chest wall near
    the coils, in perfusion too, so they alone never call a series with a pool pair a cine."""
    import numpy as np

    from .pd_frames import FRAME_LEVEL_PIXELS, leading_pd_frames, pixel_sample

    if study.n_frames < 10:
        return None
    series = study.images
    floor = _signal_floor(series)
    # the pixels pd_frames.frame_levels reads, measured from the floor (not the whole series)
    pd_count, _ = leading_pd_frames(_minus(pixel_sample(series, 1, FRAME_LEVEL_PIXELS), floor))
    curves = _pool_curves(_minus(series[pd_count:, study.n_slices // 2], floor))
    rises, ends, start = curves if curves is not None else (None, None, None)
    # both pools back (not just one: a real first pass cut to start 3-5 frames before the RV rises
    # ended with its RV pool at 1.28x and was read as a cine; probe 25)
    if rises is not None and min(rises) >= FIRST_PASS_POOL_RISE and max(ends) < FIRST_PASS_END_RATIO \
            and start <= CYCLE_RISE_WITHIN:
        # the pools come back to where they started: a cycle, not a first pass (a real cine
        # lost its 2 apical slices and, its middle slice now another, was refused as perfusion)
        rises = None
    if rises is not None and min(rises) >= FIRST_PASS_POOL_RISE:
        return PERFUSION, _first_pass_reason(rises, "on the middle slice")
    # frame by frame: np.percentile copies what it sorts, and over the whole series that was one
    # more copy of it
    top = np.array([np.percentile(_minus(frame, floor), 99) for frame in series[pd_count:]])
    before = float(np.median(top[:3]))
    ratio = float(top.max()) / before if before > 0 else float("inf")
    if ratio > 1.5:
        return PERFUSION, f"the brightest pixels {_brightening(ratio, 'brighten', 'rise')} over the series (a contrast first pass)"
    if ratio < 1.2 and (rises is None or min(rises) < CINE_POOL_RISE):
        return CINE, f"the brightest pixels stay as bright through the series (x{ratio:.2f}: no contrast first pass)"
    return None


# A short-axis stack has at most ~25 slices; a 3D file with this many may hold one slice's frames
# on its third axis (an (x, y, t) array saved as a volume).
MANY_SLICES_FOR_A_STACK = 30
# ... when its two ends show the same anatomy: first and last frames of the real AIF series
# correlate 0.95-0.99; the ends of ACDC stacks resampled to 1.4 mm slices 0.06-0.37. (The pools
# alone do not tell: blood appearing from base to apex also "brightens" along z.)
SAME_ANATOMY_AT_BOTH_ENDS = 0.8


def _ends_correlation(frames):
    import numpy as np

    first, last = frames[:3].mean(0).ravel(), frames[-3:].mean(0).ravel()
    if first.std() == 0 or last.std() == 0:
        return 0.0
    return float(np.corrcoef(first, last)[0, 1])


def _check_time_saved_as_slices(study):
    """Refuse a single-frame 3D image whose many 'slices' are the frames of one slice's first
    pass: analysed as a stack it has no LV anywhere, and the user needs to know how to read it.
    (Series in Gd units start at zero, so their ends do not correlate: not recognised here.)"""
    if study.n_frames != 1 or study.n_slices < MANY_SLICES_FOR_A_STACK:
        return
    frames = _above_floor(study.images[0])
    if _ends_correlation(frames) < SAME_ANATOMY_AT_BOTH_ENDS:
        return
    rises = _pool_rises(frames)
    if rises is not None and min(rises) >= FIRST_PASS_POOL_RISE:
        raise CardiacInputError(study.source or study.name,
                                f"a 3D image of {study.n_slices} slices and one frame whose slices look like the frames of "
                                f"one slice's first pass ({_first_pass_reason(rises, 'along its third axis')}): its third "
                                "axis is probably time. Read it as a perfusion series with --kind perfusion and --dt "
                                "(seconds per frame), or save it as a 4D image (x, y, slice, time)")


def _wall_clock_reason(study):
    """The reason ``evidence`` gives for a kind the DICOM wall clock (acquisition or content
    time, not the trigger delay) decided, or the step between few trigger delays (``dicom``'s
    ``HEARTBEAT_STEP_S``: a cine of 4 phases at 40/min has it too; review of session 46), or
    None: the strong evidence --kind may overrule."""
    timing = (study.provenance or {}).get("timing") or {}
    if not timing.get("kind") or (timing.get("clock") in (None, "TriggerTime") and not timing.get("by_step")):
        return None
    return _clock_evidence(timing)


def _clock_evidence(timing):
    """How ``evidence`` words what the DICOM frame clocks say of the kind."""
    return f"DICOM {timing['reason']}"


def evidence(study, aif_given=False, dt=None):
    """[(kind, strength, reason)] from the data and the flags, strongest first."""
    prov = study.provenance or {}
    found = []
    if prov.get("format_kind"):       # (kind, why): a QPerf folder, an ACDC patient folder
        found.append((prov["format_kind"][0], STRONG, prov["format_kind"][1]))
    timing = prov.get("timing")
    if timing and timing.get("kind"):
        found.append((timing["kind"], STRONG, _clock_evidence(timing)))
    elif not timing and study.frame_times_s is not None:
        # NIfTI/NRRD time axes: NIfTI writers often store the repetition time, not the frame
        # interval, so a file's time axis is weak evidence
        got = _from_times(study.frame_times_s, f"{prov.get('reader', 'file')} time axis")
        if got:
            found.append((got[0], WEAK, got[1]))
    if aif_given:
        found.append((PERFUSION, STRONG, "an arterial input function was given (--aif)"))
    if dt is not None and study.n_frames > 1:
        got = _from_times([0.0, float(dt) * (study.n_frames - 1)], f"--dt {dt:g} s", n_frames=study.n_frames)
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


def _drop_times_that_are_no_frame_interval(study):
    """A volume file's time axis whose step is under ``MIN_FRAME_STEP_S`` (a NIfTI's repetition
    time, 3.2 ms; a sequence's frame numbers labelled ms) says nothing of the series' timing:
    the kind is decided without it, and it must not reach the results either (results.json
    listed frames 3 ms apart and the report drew the cycle over 61 ms; probe 36). DICOM frame
    clocks are judged by their own reader."""
    import numpy as np

    prov = study.provenance if study.provenance is not None else {}
    times = study.frame_times_s
    if prov.get("timing") or times is None or len(times) < 2:
        return
    step = float(np.median(np.diff(np.asarray(times, float))))
    if not 0 < step < MIN_FRAME_STEP_S:
        return
    from .volume import frame_times_not_used

    study.frame_times_s = frame_times_not_used(prov, f"the file's time axis steps {1000 * step:.3g} ms, under the "
                                                     f"{1000 * MIN_FRAME_STEP_S:g} ms of any frame interval (cine frames "
                                                     "lie 15-60 ms apart): a repetition time or frame numbers, not frame "
                                                     "times")
    study.provenance = prov


ROLE = "the rest series"   # perfusion by its role: it has no --kind to drop


def rest_is_no_first_pass(said):
    """The sentence that refuses the rest series, perfusion by its role, when the data show a
    cine (``said``: "EVIDENCE, which is a cine series"): built here alone, so that the reader
    (``decide_kind``, ``kind_said_on_errors`` while it is read) and its analysis (the pipeline's
    ``kind_said_on_errors``) say the same. The analysis said "read as perfusion for its role (the
    rest series), though ..." where the reader said "it is no first-pass perfusion series: ..."."""
    return f"it is no first-pass perfusion series: {said}; give the rest perfusion acquisition"


def decide_kind(study, requested=None, aif_given=False, dt=None, user_asked=True):
    """Set ``study.kind`` from the evidence and the user's ``requested`` kind; return it.

    Records {"kind", "decided_by", "evidence"} in ``provenance["kind"]``; contradictions between
    strong pieces of evidence, or between strong evidence and ``requested``, are errors that
    name the source and what each says; except that a ``requested`` kind the user asked for
    (``user_asked``, not a series' role) is taken against the DICOM frame clocks alone.
    """
    overruled = None
    if requested is None:
        _check_time_saved_as_slices(study)
    _drop_times_that_are_no_frame_interval(study)
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
        wall_clock = _wall_clock_reason(study)
        clocks_only = user_asked and bool(against) and all(e[2] == wall_clock for e in against)
        # the wall clock alone against the user's word, the images not siding with it: a cine whose
        # images carry acquisition times 0.5 s apart was read as perfusion, whose error said "give
        # --kind cine", and --kind cine was then refused (probe 88 F1). Honoured, said, and flagged
        # for review (qc KIND_AGAINST_DATA); a first pass the images show too is refused, and so
        # are trigger delays (a cycle's, or GE's time since the first dynamic), which are no clock
        # a writer stamps at will
        images = _from_content(study) if clocks_only else None
        if against and (not clocks_only or (images and images[0] == against[0][0])):
            also = f", and {images[1]}" if images else ""
            said = f"{against[0][2]}{also}, which is a {against[0][0]} series"
            if not user_asked:
                # the rest series is perfusion by its role: "drop --kind" named a flag never given (probe 60)
                raise CardiacInputError(where, rest_is_no_first_pass(said))
            raise CardiacInputError(where, f"--kind {requested} contradicts the data: {said}; drop --kind to use the "
                                           "detected kind")
        overruled = against[0] if against else None
        # "as requested (--kind)" named a flag the rest series, read by its role, never had
        as_asked = "as requested (--kind)" if user_asked else f"({ROLE})"
        if overruled:
            warnings.append(f"analysed as {requested} {as_asked}, against the data: {overruled[2]}, which is "
                            f"a {overruled[0]} series; check that the series is a {requested}")
        weak_against = [e for e in found if e[0] != requested]
        if weak_against and overruled is None:
            warnings.append(f"analysed as {requested} {as_asked}, though {weak_against[0][2]}")
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
    if requested is not None and overruled is not None:
        study.provenance["kind"]["against_data"] = f"{overruled[2]}, which is a {overruled[0]} series"
    if requested is not None and not user_asked:
        study.provenance["kind"]["by_role"] = True   # the rest series: no --kind (box) to drop
    return kind


def inferred_perfusion_reason(study):
    """Why ``study`` was taken as a first-pass perfusion series, when the data decided it (not
    --kind, not an AIF given with it, not a QPerf folder, which holds perfusion series only);
    else None. Before the kind is decided (a perfusion format read as such: Analyze), the
    format's own reason."""
    prov = study.provenance or {}
    if study.kind != PERFUSION or "qperf" in prov:
        return None
    decision = prov.get("kind")
    if decision is None:
        fmt = prov.get("format_kind")
        return fmt[1] if fmt and fmt[0] == PERFUSION else None
    if decision.get("decided_by") in (None, "--kind"):
        return None
    if any("(--aif)" in e.get("reason", "") for e in decision.get("evidence", [])):
        return None
    return decision["decided_by"]


def aif_made_perfusion_note(study):
    """When the AIF given with ``study`` alone made it perfusion (nothing in the data said
    perfusion), a phrase saying so for an error that follows; else None. A cine opened with the
    previous study's AIF file still in a GUI's field was refused for "AIF has 30 values but 8
    frames", a frame interval, or a series "starting after the bolus peak", none naming the AIF
    that had made it perfusion (probe 92)."""
    decision = (study.provenance or {}).get("kind") or {}
    if study.kind != PERFUSION or decision.get("decided_by") in (None, "--kind"):
        return None
    evidence = decision.get("evidence", [])
    aif = [e for e in evidence if "(--aif)" in e.get("reason", "")]
    # a frame interval given is the user's too (a GUI's field kept from the study before), not the data's
    dt = [e for e in evidence if e.get("reason", "").startswith("--dt ")]
    if not aif or any(e.get("kind") == PERFUSION for e in evidence if e not in aif + dt):
        return None
    if dt:
        return ("read as a first-pass perfusion series only because an arterial input function (--aif) and a frame "
                "interval (--dt) were given; if it is a cine, give neither")
    return ("read as a first-pass perfusion series only because an arterial input function was given (--aif); "
            "if it is a cine, give no AIF")


def read_as_perfusion_note(reason):
    """How an error says that the data, not the user, made a series perfusion (``reason``)."""
    return f"read as a first-pass perfusion series: {reason}; if it is a cine, give --kind cine"


def _evidence_against_the_request(study):
    """The first piece of evidence recorded against the kind ``--kind`` (or the series' role)
    chose, as "REASON, which is a KIND series"; else None."""
    decision = (study.provenance or {}).get("kind") or {}
    if decision.get("decided_by") != "--kind":
        return None
    against = [e for e in decision.get("evidence", []) if e.get("kind") != study.kind]
    return f"{against[0]['reason']}, which is a {against[0]['kind']} series" if against else None


def _read_by_role(study):
    """Whether ``study`` was read as perfusion for its role (the rest series), not by a --kind."""
    return bool(((study.provenance or {}).get("kind") or {}).get("by_role"))


def requested_against_the_data_note(study):
    """When ``--kind`` chose the series' kind against weaker evidence of the other kind (a
    file's time axis, the images), a phrase saying so for an error that follows; else None.
    (The rest series, read by its role, is refused in ``rest_is_no_first_pass``'s words.)"""
    said = _evidence_against_the_request(study)
    if said is None:
        return None
    return f"read as {study.kind} because --kind {study.kind} was given, though {said}; if it is one, drop --kind"


@contextmanager
def kind_said_on_errors(study, reading=False):
    """An input error raised while ``study`` is finished or analysed as perfusion, whose kind
    the data decided, says why it was read as perfusion and that --kind cine reads it as a cine:
    a cine whose file carries a wrong time step (0.5 s for 0.045) was refused for a "flat AIF"
    or a series "starting after the bolus peak", which named neither. An error on a series of
    either kind that --kind chose against what the data suggest says that (``--kind perfusion``
    on a cine NIfTI was refused for its 0.045 s frame interval and invited --dt, never naming
    the one-cycle time axis; probe 36). The rest series, read as perfusion by its role against
    evidence of a cine, is said first to be no first-pass perfusion series (``rest_is_no_first_pass``),
    with the error's own words after (they blamed its frame interval; probe 103): the same words
    whether it is refused as it is read (``finish_perfusion``: ``reading``) or in its analysis."""
    try:
        yield
    except CardiacInputError as e:
        said = _evidence_against_the_request(study) if _read_by_role(study) else None
        if said is not None:
            refusal = rest_is_no_first_pass(said)
            if refusal in e.problem:
                raise
            raise CardiacInputError(e.path, f"{refusal} ({'read' if reading else 'analysed'} as one: {e.problem})") from None
        reason = inferred_perfusion_reason(study)
        note = (read_as_perfusion_note(reason) if reason is not None else
                requested_against_the_data_note(study) or aif_made_perfusion_note(study))
        if note is None or (reason or note) in e.problem:
            raise
        raise CardiacInputError(e.path, f"{e.problem} [{note}]") from None
