"""The analyze pipeline: load -> segment (network or given labels) -> measure -> write outputs.

Outputs are staged in a hidden folder inside ``out_dir`` and moved into place only when all
of them were written, so a failure leaves nothing half-written; existing outputs are never
replaced without ``force``.
"""
import time
from pathlib import Path

from .outputs import check_outputs
from .outputs import write_outputs as _write_outputs
from .errors import CardiacInputError
from .study import PERFUSION, check_rest_pairing

STUDY_LABELS = "study"        # --labels study: the label maps that come with the input (ACDC _gt)
RING_LABELS = "ring"          # --labels ring: automatic myocardial ring ROI (perfusion, no network)
SPECIAL_LABELS = (STUDY_LABELS, RING_LABELS)
REPORT_CHOICES = ("all", "flagged", "none")   # which studies get a report.png (batch --reports)


def analyze_study(study, model_name=None, use_labels=False, frames="ed_es", density=1.05, rest=None,
                  device=None, progress=None, bullseye="mbf"):
    """(Analysis, model info, timings) for a loaded study; ``use_labels`` skips the network.

    The computation is ``pipeline.compute_analysis``, the one the Slicer Logic and the web GUI
    use too; this keeps the CLI's (analysis, info, timing) shape.
    """
    from .pipeline import compute_analysis

    # no labels with use_labels: compute_analysis says so, with why each label file was not used
    analysis = compute_analysis(study, model_name, labels=study.labels if use_labels else None, frames=frames,
                                density=density, rest=rest, device=device, progress=progress, bullseye=bullseye)
    return analysis, analysis.model_info, dict(analysis.timing_s)


def write_outputs(analysis, out_dir, input_path, model_info=None, timing=None, force=False, progress=None,
                  scene=False, report=True, report_process=None):
    """Every output of ``analysis`` into ``out_dir`` (``outputs.write_outputs``); returns {name: path}.

    ``scene``: also scene.mrb, built by the Slicer Logic (``logic.build_output_scene``). Only then
    are the Logic and slicer-core imported (about 1 s of a 1.5 s run otherwise spent for a file
    a batch or a pipeline rarely opens). ``report=False``: no report.png.
    """
    scene_builder = None
    if scene:
        from .logic import build_output_scene as scene_builder

    return _write_outputs(analysis, out_dir, input_path, model_info, timing, force, progress,
                          scene_builder=scene_builder, report=report, report_process=report_process)


def _load_with_labels(path, labels, read=None, **options):
    """``read`` (default ``readers.load_study``; the rest's ``readers.load_rest_series``) with
    ``labels`` a file or one of ``SPECIAL_LABELS``."""
    from .readers import load_study

    study = (read or load_study)(path, labels=None if labels in SPECIAL_LABELS else labels, **options)
    if labels == RING_LABELS:
        if study.kind != PERFUSION:
            raise CardiacInputError(path, "--labels ring is for perfusion series (give --kind perfusion)")
        from .perfusion.roi import ring_labels

        study.labels = {0: ring_labels(study)}
    return study


_REST_FLAGS = {"--dt": "--rest-dt", "--aif": "--rest-aif", "--labels": "--rest-labels"}


def as_rest_flags(text):
    """A reader's message about the rest series, with the flags that set its options named as
    the CLI names them for the rest series (its --dt is --rest-dt)."""
    from .errors import with_flags_renamed

    return with_flags_renamed(text, _REST_FLAGS)


def run(input_path, out_dir, model=None, labels=None, aif=None, dt=None, force=False, frames="ed_es",
        series=None, label_convention="acdc", rest=None, rest_labels=None, rest_aif=None, density=1.05,
        kind=None, device=None, progress=None, units=None, bullseye="mbf", scene=False, reports="all",
        report_process=None, rest_dt=None, rest_series=None):
    """`cardiacaiseg analyze`: returns (Analysis, {output name: path}); ``scene``: also scene.mrb.

    ``dt`` is the frame interval of the (stress) input, ``rest_dt`` the rest series': two
    acquisitions at two heart rates (stress ~90-110/min, rest ~60-70/min), so one interval for
    both would scale the rest MBF, and the MPR, by their ratio. ``rest_series`` chooses the rest
    series in a folder as ``series`` does the stress's (default: the one whose description says
    rest).

    ``reports`` (`batch --reports`): ``all`` writes report.png, ``flagged`` only when QC asks for
    review (the studies a reviewer opens), ``none`` never. ``report_process``: a started
    ``report_process.ReportProcess`` to draw report.png (the CLI's; the caller closes it).
    """
    if reports not in REPORT_CHOICES:
        raise CardiacInputError("--reports", f"{reports!r}: accepted are {', '.join(REPORT_CHOICES)}")
    check_outputs(out_dir, force)
    from .analysis import check_density

    check_density(density, "--density")   # before anything is read or written
    if rest is None:
        for flag, value in (("--rest-labels", rest_labels), ("--rest-aif", rest_aif), ("--rest-dt", rest_dt),
                            ("--rest-series", rest_series)):
            if value is not None:
                raise CardiacInputError(flag, "goes with --rest (the rest perfusion series), which was not given")
    elif rest_series is not None and not Path(rest).is_dir():
        raise CardiacInputError("--rest-series", f"chooses a series in a DICOM folder given with --rest; {rest} is a file "
                                                 "(one series): leave --rest-series out")
    t0 = time.perf_counter()
    study = _load_with_labels(input_path, labels, kind=kind, series=series, label_convention=label_convention,
                              aif=aif, dt=dt, progress=progress, units=units)
    timing = {"load": time.perf_counter() - t0}
    # --- flags that do not apply to this input: refused or said, never silently ignored
    if rest is not None:
        check_rest_pairing(study, "--rest")
    unused = []
    if series is None and rest is None:
        from .readers.perfusion import qperf_default_series_note

        note = qperf_default_series_note(input_path)
        if note:
            unused.append(note)
    if labels is not None and model is not None:
        unused.append(f"--model {model} not used: the label maps given with --labels are measured, no network runs")
    if labels in SPECIAL_LABELS and label_convention != "acdc":
        unused.append(f"--label-convention {label_convention} not used: it is for a label file given with --labels; "
                      f"--labels {labels} reads {'the study' if labels == STUDY_LABELS else 'a ring'}'s own labels")
    if labels is not None and frames != "ed_es":
        unused.append(f"--frames {frames} not used: it chooses the frames a network segments; --labels gives the label maps")
    # --frames on a perfusion series with the network: said by compute_analysis, for the Slicer module too
    if study.kind != PERFUSION:
        given = [flag for flag, value in (("--dt", dt), ("--units", units)) if value is not None]
        if given:
            unused.append(f"{' and '.join(given)} not used: {'they are' if len(given) > 1 else 'it is'} for perfusion "
                          f"series, this is a {study.kind} series")
    # --- end of flags check
    rest_analysis = None
    if rest is not None:
        from .pipeline import REST_PROGRESS_PREFIX
        from .progress import as_progress
        from .readers import load_rest_series

        # the rest's reading and network on the bar too, named as the rest's: nothing was shown for
        # them (a large DICOM rest series sat without a bar; probe 94)
        outer = as_progress(progress)
        rest_progress = as_progress(lambda done, total, message="": outer(done, total, REST_PROGRESS_PREFIX + message))
        try:
            rest_study = _load_with_labels(rest, rest_labels, read=load_rest_series, label_convention=label_convention,
                                           aif=rest_aif, dt=rest_dt, units=units, series=rest_series,
                                           progress=rest_progress)
        except CardiacInputError as e:
            # the rest folder is often the stress's own (a whole exam): say which series failed, and
            # its series is chosen with --rest-series (--series chooses the stress's)
            problem = as_rest_flags(e.problem).replace("choose one with --series",
                                                       "choose the rest series with --rest-series")
            raise CardiacInputError(e.path, f"reading the rest series (--rest): {problem}") from None
        warnings = rest_study.provenance.get("warnings") or []
        warnings[:] = [as_rest_flags(w) for w in warnings]
        # the flags that read each series of one folder
        check_rest_pairing(study, rest, rest_study,
                           same_series_advice="e.g. --series stress --rest FOLDER picks each by its description")
        try:
            rest_analysis, _, _ = analyze_study(rest_study, model, use_labels=rest_labels is not None, density=density,
                                                device=device, progress=rest_progress)
        except CardiacInputError as e:   # its advice in the rest's flags (--rest-labels, not --labels)
            raise CardiacInputError(e.path, f"analysing the rest series (--rest): {as_rest_flags(e.problem)}") from None
    analysis, model_info, t = analyze_study(study, model, use_labels=labels is not None, frames=frames, density=density,
                                            rest=rest_analysis, device=device, progress=progress, bullseye=bullseye)
    if labels == RING_LABELS:
        # the ring is a band of fixed width around the pool, not the drawn wall: its segment values
        # (sectors from the RV the bolus shows) are as rough as its edges ("global MBF only"
        # stood beside 6 segment values). Said while a slice holds the ring as made: redrawn on
        # every slice, the wall is the user's
        ring = analysis.labels[analysis.reference_frame]
        analysis.add_mask_note("myocardium from an automatic ring ROI around the LV blood pool (no network): a band of "
                               "fixed width, not the wall's own edges; global MBF is its median, segment values are rough",
                               [k for k in range(ring.shape[0]) if ring[k].any()])
    for note in unused:   # kept on the analysis: said again if it is measured again (an edit)
        analysis.add_run_note(note)
    timing.update(t)
    report = reports == "all" or (reports == "flagged" and (analysis.qc or {}).get("status", "pass") != "pass")
    paths = write_outputs(analysis, out_dir, input_path, model_info, timing, force, progress, scene=scene, report=report,
                          report_process=report_process)
    return analysis, paths
