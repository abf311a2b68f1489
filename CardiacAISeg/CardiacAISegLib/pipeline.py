"""The one compute path: a loaded Study -> labels (network or given) -> a measured Analysis.

The CLI (`analyze.run`), the Slicer Logic (`CardiacAISegLogic.computeAnalysis`) and the web GUI
(`Session.compute`, through the Logic) all call ``compute_analysis``; what they do with the
result differs (files, MRML nodes, a page), what is computed does not. The returned Analysis
carries everything a front end shows: measures, QC, warnings (reader, bolus check, QC),
``model_info`` (name, version, sha256, mask refinement) and ``timing_s`` per stage.
"""
from __future__ import annotations

import time
from contextlib import contextmanager
from typing import TYPE_CHECKING, Callable, Mapping, Sequence, Union

import numpy as np

from .errors import CardiacInputError
from .study import CINE, PERFUSION

if TYPE_CHECKING:
    from .analysis import Analysis
    from .progress import Progress
    from .study import Study

Labels = Mapping[int, np.ndarray]          # {frame: (S, R, C) uint8 label map}
Frames = Union[str, Sequence[int]]         # "ed_es", "all" or frame indices
ProgressLike = Union["Progress", Callable[[int, int, str], None], None]

def segment(study: Study, model_name: str | None = None, frames: Frames = "ed_es", device: str | None = None,
            progress: ProgressLike = None) -> tuple[dict[int, np.ndarray], dict]:
    """Label maps from a registry network; returns (labels, model info for results.json)."""
    from .models import registry

    task = study.kind
    if model_name is None and not registry.list_models(task):
        raise CardiacInputError(study.source or study.name, f"no {task} model is installed to segment this {task} series: "
                                "give the masks with --labels, or install a model (cardiacaiseg import-model)")
    from .readers.geometry_check import check_not_blank

    # a network finds nothing in an image without data, and "no LV found" would hide why
    check_not_blank(study.source or study.name, study.images)
    name = model_name or registry.default_model(task)
    card = registry.get_card(name)
    if card["task"] != task:
        raise CardiacInputError(name, f"model is for {card['task']} series, the input is a {task} series")
    from .models.inference import pick_device

    # an explicit --device cuda wants torch even where ONNX Runtime was chosen for the CPU
    device = pick_device(device)
    loaded = registry.for_device(registry.load_model(name), device)
    from .models.inference import NetworkFailed

    try:
        if task == PERFUSION:
            from .models.perfusion_segmentation import segment_perfusion_study

            labels = segment_perfusion_study(study, loaded, device=device, progress=progress)
        else:
            from .models.inference import segment_cine_study

            labels = segment_cine_study(study, loaded, frames=frames, device=device, progress=progress)
    except NetworkFailed as e:
        imported = card.get("_source") == "user"
        raise CardiacInputError(f"model {name!r}", f"the network {e}" + (
            "; an imported network must take any size that is a multiple of its card's input.size_multiple "
            "(exported with dynamic axes, no sizes fixed in it) and give finite scores for images normalised as "
            "its card says" if imported else "")) from e
    info = {"name": card["name"], "version": card.get("version", "1"), "sha256": card["weights"]["sha256"],
            "runtime": loaded.runtime, "source": card.get("_source", "shipped")}
    if card.get("import_check"):
        info["import_check"] = card["import_check"]   # an imported network's agreement on the shipped sample (QC)
    if loaded.runtime == "onnxruntime" and card.get("onnx"):
        info["onnx_sha256"] = card["onnx"]["sha256"]   # the file that actually ran
    for key in ("perfusion_segmentation", "mask_refinement", "cine_heart_box"):   # what ran, for results.json
        if study.provenance.get(key):
            info[key] = study.provenance[key]
    return labels, info


def frames_unused_on_perfusion(frames: Frames) -> str:
    """The note that ``frames`` (--frames, the module's 'Frames' box) chose nothing: a perfusion
    network segments its key frames, whatever frames are asked for."""
    return (f"--frames {frames} not used: it chooses the cine frames a network segments; a perfusion series "
            "gets one mask from its key frames, followed through the frames by motion correction")


def refinement_warnings(reports: Sequence[dict] | None, sectors: int = 36) -> list[str]:
    """Plain-language warnings for slices whose network mask the bolus check had to mend a lot."""
    out = []
    for r in reports or []:
        if not r.get("refined"):
            out.append(f"slice {r['slice']}: network mask used as is ({r.get('reason', 'not checked')}): check the contours")
            continue
        mended = r["sectors_filled"] + r["sectors_trimmed"] + r["sectors_widened"]
        if mended >= sectors // 4:
            out.append(f"slice {r['slice']}: the network's myocardium was mended from the bolus in {mended} of {sectors} sectors "
                       f"(filled {r['sectors_filled']}, trimmed {r['sectors_trimmed']}, widened {r['sectors_widened']}): check the contours")
    return out


def compute_analysis(study: Study, model_name: str | None = None, labels: Labels | None = None, frames: Frames = "ed_es",
                     density: float = 1.05, rest: Analysis | None = None, device: str | None = None,
                     progress: ProgressLike = None, bullseye: str = "mbf", labels_made_by: dict | None = None,
                     kept_ed_es: tuple | None = None) -> Analysis:
    """A measured Analysis of ``study``.

    labels: None runs the registry network ``model_name`` (the task's default when None); a
    ``{frame: (S, R, C)}`` dict measures those labels as they are (a single 3D volume is
    measured at ED only, with a warning: ``Analysis``). ``labels_made_by``: the model info of
    the network that made ``labels`` (the Slicer module's output segmentations, edited or not),
    so that QC judges them as a network's, not as hand-drawn labels that may leave a structure
    out by convention. ``rest``: the rest perfusion Analysis for MPR/MPRI. ``bullseye``: 'mbf'
    or 'relative_upslope' (perfusion). ``kept_ed_es``: (ED, ES) frames an edit kept, measured there
    rather than taken again from the volume curve (a whole cycle measured again after a correction).
    """
    from .blas import single_blas_thread

    with single_blas_thread():
        return _compute_analysis(study, model_name, labels, frames, density, rest, device, progress, bullseye,
                                 labels_made_by, kept_ed_es)


# the rest series' own steps (its network's frames) in a paired run's progress messages
REST_PROGRESS_PREFIX = "rest series: "
STRESS_PROGRESS_PREFIX = "stress series: "   # ... and the stress series' after them


# The run's steps as parts of one progress bar: the network's frames/slices, then the measures.
SEGMENTING_SHARE = 85.0


def run_percent(done, total, message):
    """Percent of a whole run for one of its progress reports (``done/total`` of its stage: the
    0..3 steps of ``compute_paired_analysis``, the network per frame or slice, the measures), so a
    front end shows one bar that never goes back: the web GUI, and the Slicer module's bar, which
    ran 0-100 % for the rest series and again for the stress (review)."""
    frac = min(max(float(done) / max(float(total), 1.0), 0.0), 1.0)
    text = (message or "").lower()
    if text.startswith(REST_PROGRESS_PREFIX):
        # the rest series is segmented first: the first half of the network's share (its
        # messages went to the measures' 85 %, and the bar stayed there; probe 63) ...
        return 0.5 * min(run_percent(done, total, message[len(REST_PROGRESS_PREFIX):]), SEGMENTING_SHARE)
    if text.startswith(STRESS_PROGRESS_PREFIX):
        # ... the stress series' network the second half, then the measures as without a rest
        inner = run_percent(done, total, message[len(STRESS_PROGRESS_PREFIX):])
        return inner if inner >= SEGMENTING_SHARE else 0.5 * (SEGMENTING_SHARE + inner)
    if text.startswith(("segmenting frame", "segmenting slice", "segmentation done")):
        return SEGMENTING_SHARE * frac
    if text.startswith("segmenting"):
        return 0.0
    if text.startswith("measuring"):
        return SEGMENTING_SHARE
    return SEGMENTING_SHARE + (100.0 - SEGMENTING_SHARE) * frac


def compute_paired_analysis(study: Study, rest_study: Study | None = None, rest_labels: Labels | None = None,
                            progress: ProgressLike = None, **arguments) -> Analysis:
    """``compute_analysis`` of ``study`` (keyword ``arguments`` as there), with a rest perfusion
    series measured first for MPR and MPRI: the Slicer Logic in process, its background worker
    and the web GUI run this, with the same steps and progress messages.

    The rest's steps are reported prefixed ``REST_PROGRESS_PREFIX`` (a cancel during its network
    waited for all of it: Run came back 1.7 s after Cancel in the web GUI), then the stress's
    prefixed ``STRESS_PROGRESS_PREFIX``; the rest takes the stress's model, density and device,
    and ``rest_labels`` when given.
    """
    from .progress import as_progress

    progress = as_progress(progress)
    progress(0, 3, "segmenting")
    rest = None
    if rest_study is not None:
        rest_progress = as_progress(lambda done, total, message="": progress(done, total, REST_PROGRESS_PREFIX + message))
        rest = compute_analysis(rest_study, arguments.get("model_name"), labels=rest_labels,
                                density=arguments.get("density", 1.05), device=arguments.get("device"),
                                progress=rest_progress)
    # the network (when no labels are measured) reports its own frames next: "measuring" here
    # held the web GUI's bar at the measures' 85 % through the whole network (probe 63)
    progress(1, 3, "segmenting" if arguments.get("labels") is None else "measuring")
    if rest is not None:   # the stress's own steps, after the rest's (a cancel still stops them)
        outer = progress
        progress = as_progress(lambda done, total, message="": outer(done, total, STRESS_PROGRESS_PREFIX + message))
    return compute_analysis(study, rest=rest, progress=progress, **arguments)


@contextmanager
def _network_named_on_errors(model_info):
    """A measure that finds nothing labelled, when a network made the labels, names the network:
    an imported model fed another pixel size or intensity scale than it was trained on finds no
    LV, and "no LV blood pool labelled" of the image sent the user to the image."""
    try:
        yield
    except CardiacInputError as e:
        if not model_info or not ("labelled" in e.problem or "no LV" in e.problem):
            raise
        if model_info.get("source") == "user":
            advice = ("for an imported model check its card (input.pixel_mm, the intensity normalisation it was trained "
                      "with, the order of its classes)")
        else:
            # the shipped networks find the LV on short-axis cines of any vendor: an input where
            # they find none is most often not one (a long-axis view, axes or spacing wrong:
            # probe 46 sent such users to an imported model's card)
            advice = ("is the input a short-axis stack, with its voxel spacing and axis order right (a long-axis view, "
                      "rows and columns swapped, or spacing lost in a conversion make a heart the network does not know)?")
        raise CardiacInputError(e.path, f"{e.problem}: the network {model_info['name']!r} (version {model_info['version']}) "
                                        f"found none there; {advice}") from None


def given_ed_es_checked_by_the_network(analysis, model_name, device=None):
    """ED/ES frames the study fixed (ACDC Info.cfg) that the images' blood pool doubts
    (``cine.ed_es_check`` disagrees; only said before): the network also segments the frames
    where the pool is largest and smallest, and where the LV volumes there give an EF more than
    ``ED_ES_EF_POINTS`` above the given frames', QC flags ED_ES_DISAGREE as it does for a whole
    cycle (``Analysis._judge_given_ed_es_by_the_network``, again at every edit). An ES a few
    frames off (EF 7.9 % for 28 %) passed QC unless every frame was segmented (probe 96).
    Returns whether the network ran."""
    from .cine import slice_voxel_volumes_ml, structure_volumes_ml

    c = analysis.cine or {}
    check = c.get("ed_es_check")
    if not check or not check.get("disagree") or "ef_from_curve_pct" in check or c.get("lv_ef_pct") is None:
        return False
    st = analysis.study
    extra = sorted({int(check["largest"]), int(check["smallest"])} - set(analysis.labels))
    if not extra:
        return False
    kept = {k: st.provenance.get(k) for k in ("cine_heart_box", "warnings")}
    kept["warnings"] = list(kept["warnings"] or [])
    try:
        labels, _ = segment(st, model_name, extra, device)
    except CardiacInputError as e:
        # a check, not the analysis: its network failing on other frames is said, not fatal
        analysis.add_run_note(f"the given ED/ES frames could not be checked with the network ({e.problem})")
        return True
    finally:   # the check's own run says nothing of the analysis' (its heart box, its notes)
        for key, value in kept.items():
            if value is None:
                st.provenance.pop(key, None)
            else:
                st.provenance[key] = value
    vv = slice_voxel_volumes_ml(st)
    # a frame where the network found no LV says nothing of ED or ES (it read as EF 100 %)
    analysis.ed_es_network_lv_ml = {t: v for t, v in ((t, structure_volumes_ml(m, vv)["lv"]) for t, m in labels.items())
                                    if v > 0}
    analysis.extra_qc = [f for f in analysis.extra_qc if f["code"] != "ED_ES_DISAGREE"]
    analysis._judge_given_ed_es_by_the_network()
    analysis._assess()
    return True


def _compute_analysis(study, model_name, labels, frames, density, rest, device, progress, bullseye, labels_made_by=None,
                      kept_ed_es=None):
    from .analysis import Analysis
    from .readers.series_kind import kind_said_on_errors

    timing = {}
    model_info = None
    if labels is None:
        t0 = time.perf_counter()
        labels, model_info = segment(study, model_name, frames, device, progress)
        timing["segmentation"] = time.perf_counter() - t0
    elif not labels:
        # an ACDC folder's _gt maps that could not be used say why (interpolated values, an image)
        why = sorted(set(((study.provenance or {}).get("missing_label_files") or {}).values()))
        raise CardiacInputError(study.source or study.name, "no label maps were given or found with the study"
                                + (f" ({'; '.join(why)})" if why else ""))
    analysis = Analysis(study, labels, density=density, rest=rest)
    analysis.bullseye_measure = bullseye
    if kept_ed_es is not None:
        analysis.kept_ed_es = tuple(int(t) for t in kept_ed_es)
    analysis.model_info = model_info or labels_made_by   # before the run: QC judges a network's output as such
    if model_info:
        # recorded on the Analysis, which says them at every run: appended to its warnings after
        # this run, they went at the first edit, which measures again (session 49)
        for report in model_info.get("mask_refinement") or []:
            # each on its slice's mask as the network gave it: a slice the user redrew is no longer it
            for note in refinement_warnings([report]):
                analysis.add_mask_note(note, [report["slice"]])
        if analysis.kind == PERFUSION and frames != "ed_es":
            # said here, where the CLI, the Slicer module and a batch row all run the network: the
            # module's 'Frames' box set to all frames went unsaid on a perfusion series (probe 103)
            analysis.add_run_note(frames_unused_on_perfusion(frames))
    with kind_said_on_errors(study), _network_named_on_errors(model_info):
        analysis.run(progress)
    if model_info:
        if analysis.kind == CINE and frames == "ed_es":
            t0 = time.perf_counter()
            if given_ed_es_checked_by_the_network(analysis, model_info["name"], device):
                timing["ed_es_check"] = time.perf_counter() - t0
    timing.update(analysis.timing_s)
    analysis.timing_s = timing
    return analysis
