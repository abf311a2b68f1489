"""How a perfusion series is segmented: the perfusion network on the frames window, the cine
network on a key image of the first pass (``perfusion_keyimage``), or their ensemble, as the
model card declares; then the bolus check (``perfusion_refine``) where the card asks for it.

Its own module, above ``inference`` (the network runs and the grid mapping it shares with the
cine path) and ``perfusion_keyimage``, so that neither imports the other.
"""
import numpy as np

from ..errors import CardiacInputError
from ..progress import as_progress
from . import perfusion_keyimage
from .inference import ORIENTED, ORIENTED4, TTA_NAMES, cpu_threads, mirrored_probabilities, pick_device, variants_for
from .postprocess import keep_one_component_per_structure


def perfusion_window(study, n_frames=48, pre_foot=3):
    """Frame indices of the network's window: from a few frames before the AIF foot, edges repeated.

    Without an AIF the foot of the whole-image mean curve stands in (the bolus lights up
    the ventricles first).
    """
    from ..perfusion.mbf import find_foot

    curve = study.aif if study.aif is not None else study.images.reshape(study.n_frames, -1).mean(1)
    try:
        foot = find_foot(curve)
    except CardiacInputError:
        foot = 0
    start = foot - pre_foot
    return np.clip(np.arange(start, start + n_frames), 0, study.n_frames - 1)


# The perfusion network was trained on series cropped around the heart (64 px at 1.4-3.6 mm,
# and tighter crops like the QPerf examples). A field of view much wider than that holds the
# chest wall, liver and arms, which it mistakes for myocardium: such series are cropped around
# the LV found from the bolus before the network sees them. The crop keeps the series' own
# pixels when they lie in the training range, since resampling there and back blurs a 2-3 pixel
# wall: synthetic full-FOV series starting before the contrast (tools/compare_perfusion_segmenters.py
# --lead-s 4,10 --vessels 1.0), ensemble MYO Dice 0.819 resampled to 2 mm, 0.846 native.
CROP_FOV_MM = 128.0
CROP_PIXEL_RANGE_MM = (1.4, 3.6)
CROP_WHEN_FOV_OVER_MM = 200.0


def heart_crop(study, pools=None):
    """(row slice, col slice, zoom, pools) of a square around the LV for wide fields of view, or None.

    The LV comes from the bolus passage (``perfusion_keyimage.bolus_timing_or_curve_peak`` on the
    middle slice, unless ``pools`` already holds it), so no labels, geometry conventions or
    orientation are assumed.
    """
    sp_col, sp_row = study.spacing[0], study.spacing[1]
    rows, cols = study.images.shape[2:]
    if max(rows * sp_row, cols * sp_col) <= CROP_WHEN_FOV_OVER_MM:
        return None
    pools = pools or perfusion_keyimage.bolus_timing_or_curve_peak(study)
    if pools["confidence"] != "high":
        # without an RV that peaked first next to it, the "LV" may be the aorta or a vessel: a
        # crop around it could cut the heart out, so the network sees the whole field instead
        # QC HEART_NOT_FOUND (the real Dice 0.00 went this way); said by heart_not_found_warning
        # from the run's record (perfusion_probabilities), not among the study's reading notes
        study.provenance["heart_not_found"] = pools["reason"]
        return None
    rs, cs = perfusion_keyimage.square_around_heart((rows, cols), (sp_row, sp_col), pools, CROP_FOV_MM)
    target = np.clip((sp_row, sp_col), *CROP_PIXEL_RANGE_MM)
    return rs, cs, (sp_row / target[0], sp_col / target[1]), pools


def heart_not_found_warning(record):
    """What a perfusion run's record (``study.provenance["perfusion_segmentation"]``, the model
    info's) tells the user of its bolus crop, or None: a wide field segmented whole because the
    bolus did not show the heart. The run's note, said with its analysis (``Analysis.run``)."""
    reason = (record or {}).get("heart_not_found")
    if not reason:
        return None
    return f"{BOLUS_CROP_NOTE_START}{reason}): the network segments the whole field; check the contours"


BOLUS_CROP_NOTE_START = "wide field of view, but the heart was not found with confidence from the bolus ("


# How a perfusion series is segmented; the model card declares it (``input.segmentation.mode``,
# default "frames" for cards without it), so no switch is hidden:
# - "frames": the perfusion network on the frames window (48 frames as channels, Xue 2020);
# - "cine-key-image": the cine network (trained on real MRI) on a cine-like key image of the
#   first pass (``perfusion_keyimage``);
# - "ensemble": the mean of both paths' class probabilities on the perfusion grid.
# ``input.segmentation.cine_model`` names the cine network, or a list of them: each is one
# member of the mean (e.g. the cine default and a cine network that also learnt key images).
PERFUSION_SEGMENTATION_MODES = ("frames", "cine-key-image", "ensemble")
# Whether the bolus check (``perfusion_refine``) follows each path unless the card or the caller
# says otherwise. Measured with tools/compare_perfusion_segmenters.py (docs/models.md): it
# rescues the perfusion network's masks (synthetic full-FOV MYO Dice 0.68 -> 0.79, real
# aif_detection LV 0.71 -> 0.81) and the cine network's (0.72 -> 0.77, 0.78 -> 0.80), but costs
# the ensemble, whose masks are already better than what it rebuilds (0.85 -> 0.78, 0.83 -> 0.81).
BOLUS_CHECK_BY_MODE = {"frames": True, "cine-key-image": True, "ensemble": False}


def perfusion_segmentation(card):
    """The card's declared perfusion segmentation: dict with mode, key_image, cine_model (None =
    the registry's default cine model; a name; or a list of names, each a member of the mean) and
    bolus_check (default: BOLUS_CHECK_BY_MODE). A card
    without ``input.segmentation`` is run as perfusion networks were before: frames, checked."""
    from .perfusion_keyimage import DEFAULT_KEY_IMAGE, KEY_IMAGE_MODES

    entry = dict(card.get("input", {}).get("segmentation") or {"mode": "frames"})
    entry.setdefault("key_image", DEFAULT_KEY_IMAGE)
    entry.setdefault("cine_model", None)
    entry.setdefault("cine_tta", None)   # None: the cine card's own input.tta
    if entry["cine_tta"] is not None and entry["cine_tta"] not in TTA_NAMES:
        raise CardiacInputError(card.get("name", "model card"), f"input.segmentation.cine_tta must be one of "
                                f"{', '.join(TTA_NAMES)}, not {entry['cine_tta']!r}")
    names = entry["cine_model"]
    if isinstance(names, list) and (not names or not all(n is None or isinstance(n, str) for n in names)) or \
            not isinstance(names, (list, str, type(None))):
        raise CardiacInputError(card.get("name", "model card"), "input.segmentation.cine_model must be null (the default "
                                f"cine model), a model name or a non-empty list of them, not {names!r}")
    if entry.get("key_image") not in KEY_IMAGE_MODES:
        raise CardiacInputError(card.get("name", "model card"), f"input.segmentation.key_image must be one of "
                                f"{', '.join(KEY_IMAGE_MODES)}, not {entry.get('key_image')!r}")
    if entry.get("mode") in PERFUSION_SEGMENTATION_MODES:
        entry.setdefault("bolus_check", BOLUS_CHECK_BY_MODE[entry["mode"]])
    if entry.get("mode") not in PERFUSION_SEGMENTATION_MODES:
        raise CardiacInputError(card.get("name", "model card"), f"input.segmentation.mode must be one of "
                                f"{', '.join(PERFUSION_SEGMENTATION_MODES)}, not {entry.get('mode')!r}")
    return entry


def perfusion_network_probabilities(study, loaded_model, device="cpu", pools=None):
    """(S, K, R, C) class probabilities of the perfusion network on the frames window, on the
    study's grid, averaged over mirrored inputs when its card says so (``input.tta``). A wide
    field of view is first cropped around the heart found from the bolus (``heart_crop``),
    resampled into CROP_PIXEL_RANGE_MM only if its pixels lie outside it, and the probabilities
    mapped back (background outside the crop)."""
    from scipy import ndimage

    from .array_ops import pad_to_multiple as pad_array

    model = loaded_model.module
    if not hasattr(model, "run_numpy"):   # torch: on the device; ONNX Runtime needs no torch at all
        model = model.to(device)
    spec = loaded_model.card["input"]
    frames = perfusion_window(study, spec.get("frames", 48), spec.get("pre_foot_frames", 3))
    multiple = spec.get("size_multiple", 8)
    if spec.get("tta") in (ORIENTED, ORIENTED4) and pools is None:
        # the oriented reading needs the bolus' axis: found once, for the crop too
        pools = perfusion_keyimage.bolus_timing_or_curve_peak(study)
    crop = heart_crop(study, pools)
    rs, cs = (crop[0], crop[1]) if crop else (slice(None), slice(None))
    if crop:
        study.provenance["heart_crop"] = {"rows": [rs.start, rs.stop], "cols": [cs.start, cs.stop],
                                          "pixel_mm": [round(float(study.spacing[1] / crop[2][0]), 3),
                                                       round(float(study.spacing[0] / crop[2][1]), 3)],
                                          "lv_found_by": crop[3]["reason"]}
    variants = variants_for(spec.get("tta", "none"), perfusion_keyimage.heart_axis_rc(pools))
    out = None
    for k in range(study.n_slices):
        x = study.images[frames, k][:, rs, cs].astype(np.float32)
        native = x.shape[1:]
        resample = crop and not np.allclose(crop[2], 1.0)
        if resample:
            x = ndimage.zoom(x, (1, *crop[2]), order=1)
        x = np.maximum(x, 0) / max(float(x.max()), 1e-6)   # each sample divided by its maximum
        xp, pad = pad_array(x[None], multiple)
        probs = mirrored_probabilities(model, xp.astype(np.float32), device, variants)[..., pad[0], pad[1]][0]
        if resample:   # probabilities back onto the native crop grid
            zoom_back = (native[0] / probs.shape[1], native[1] / probs.shape[2])
            probs = np.stack([ndimage.zoom(p, zoom_back, order=1) for p in probs])[:, : native[0], : native[1]]
            if probs.shape[1:] != native:   # edge-padded: ndimage.zoom rounds the size
                probs = np.pad(probs, ((0, 0), (0, native[0] - probs.shape[1]), (0, native[1] - probs.shape[2])), mode="edge")
        if out is None:
            out = np.zeros((study.n_slices, probs.shape[0], *study.images.shape[2:]), np.float32)
            out[:, 0] = 1.0   # background outside the crop
        out[k][:, rs, cs] = probs
    return out


def _run_members(jobs):
    """Each (model, call) job's result, in order. Members that ONNX Runtime runs go at once: the
    runtime releases the GIL, and one network's convolutions on these small images leave gaps
    on 2 cores (3 slices of 144 px: 55 ms on one thread, 38 ms on two) that another member
    fills. The 3-slice phantom's members (`make_perfusion_phantom(seed=3)`), one after another
    against at once, medians of 15: 469 -> 436 and 536 -> 466 ms on the quiet 2-core machine,
    661 -> 529 ms beside another job; the probabilities the same to the bit. A torch member (no
    ONNX copy) shares torch's one thread pool, so the members then run one after another."""
    if (len(jobs) < 2 or cpu_threads() < 2   # one core, or a cohort worker held to one thread
            or not all(hasattr(getattr(model, "module", None), "run_numpy") for model, _ in jobs)):
        return [call() for _, call in jobs]
    from concurrent.futures import ThreadPoolExecutor

    with ThreadPoolExecutor(len(jobs), thread_name_prefix="ensemble-member") as pool:
        futures = [pool.submit(call) for _, call in jobs]
        return [f.result() for f in futures]


def perfusion_probabilities(study, loaded_model, mode=None, device="cpu", cine_model=None, key_image=None):
    """(S, K, R, C) class probabilities by ``mode`` (default: the card's declaration). The
    cine-key-image record, and the reason a wide field was segmented whole (``heart_not_found``),
    go to ``study.provenance["perfusion_segmentation"]``, this run's record."""
    # what a run before this one wrote of its crop is not this run's (a key-image run crops
    # nothing): kept, QC flagged HEART_NOT_FOUND and its note was said for a run that found the heart
    for key in ("heart_not_found", "heart_crop"):
        study.provenance.pop(key, None)
    declared = perfusion_segmentation(loaded_model.card)
    mode = mode or declared["mode"]
    if mode not in PERFUSION_SEGMENTATION_MODES:
        raise CardiacInputError("perfusion segmentation", f"mode must be one of {', '.join(PERFUSION_SEGMENTATION_MODES)}, "
                                f"not {mode!r}")
    record = {"mode": mode}
    jobs = []   # the ensemble's members, each a call giving (probabilities, its record or None)
    # the bolus is located once: every network of the ensemble squares the heart from it
    timing = perfusion_keyimage.bolus_timing_or_curve_peak(study) if mode in ("ensemble", "cine-key-image") else None
    if mode in ("frames", "ensemble"):
        jobs.append((loaded_model, lambda: (perfusion_network_probabilities(study, loaded_model, device, pools=timing), None)))
        record["network"] = loaded_model.card.get("name", "perfusion network")   # a bare checkpoint (tools) has no name
    if mode in ("cine-key-image", "ensemble"):
        # the registry loads the cine model(s) a card declares with it (LoadedModel.companions);
        # this module does not load models (models.registry imports it)
        cine_models = cine_model or getattr(loaded_model, "companions", {}).get("cine")
        if not cine_models:
            raise CardiacInputError(loaded_model.card.get("name", "perfusion model"),
                                    f"segmentation mode {mode!r} needs a cine network: its card declares none "
                                    "(input.segmentation), so pass cine_model= (a model from registry.load_model)")
        cine_models = cine_models if isinstance(cine_models, (list, tuple)) else [cine_models]
        for model in cine_models:
            # each cine network is one member of the average, as the perfusion network is
            jobs.append((model, lambda model=model: perfusion_keyimage.cine_key_image_probabilities(
                study, model, key_image or declared["key_image"], timing=timing, device=device, tta=declared["cine_tta"])))
    results = _run_members(jobs)
    parts = [probs for probs, _ in results]
    key_records = [r for _, r in results if r is not None]
    if key_records:
        record.update(key_records[-1])
        if len(key_records) > 1:
            record["cine_model"] = [r["cine_model"] for r in key_records]
            record["cine_model_version"] = [r["cine_model_version"] for r in key_records]
            record["cine_model_sha256"] = [r.get("cine_model_sha256", "") for r in key_records]
        record["mode"] = mode
    # heart_crop's, in a member's run; None when found, so that a record without the key is one
    # saved before session 46 (QC then reads it from the provenance stamped with such scenes)
    record["heart_not_found"] = study.provenance.get("heart_not_found")
    study.provenance["perfusion_segmentation"] = record
    return parts[0] if len(parts) == 1 else np.mean(parts, axis=0)


def segment_perfusion_study(study, loaded_model, device=None, progress=None, refine=None, mode=None, cine_model=None,
                            key_image=None):
    """{0: (S, R, C) labels} for a perfusion study (one motion-corrected mask for all frames).

    ``mode`` (default: the card's ``input.segmentation.mode``) picks the path
    (PERFUSION_SEGMENTATION_MODES); ``cine_model`` (a LoadedModel; default the card's companion) and ``key_image``
    ('lv-peak' / 'myo-peak') override the card's choices for the key-image path.
    With ``refine`` (default: the card's ``bolus_check`` for its mode, BOLUS_CHECK_BY_MODE for
    another mode) and an AIF, each slice's mask is checked and mended against the bolus
    (`perfusion_refine`); the per-slice reports go to ``study.provenance["mask_refinement"]``.
    """
    from .perfusion_refine import blood_fraction_for, refine_study_slice

    progress = as_progress(progress)
    device = pick_device(device)
    # a run without the bolus check writes no reports: an earlier run's were reported as this run's
    study.provenance.pop("mask_refinement", None)
    progress(0, study.n_slices + 1, "segmenting the perfusion series")
    probs = perfusion_probabilities(study, loaded_model, mode, device, cine_model, key_image)
    if refine is None:
        declared = perfusion_segmentation(loaded_model.card)
        used = study.provenance["perfusion_segmentation"]["mode"]
        refine = declared["bolus_check"] if used == declared["mode"] else BOLUS_CHECK_BY_MODE[used]
    study.provenance["perfusion_segmentation"]["bolus_check"] = bool(refine and study.aif is not None)
    out = np.zeros(study.images.shape[1:], np.uint8)
    reports = []
    for k in range(study.n_slices):
        progress(k + 1, study.n_slices + 1, f"{'checking' if refine else 'cleaning'} slice {k + 1}/{study.n_slices}")
        # slices lie 10-20 mm apart: clean each one on its own
        out[k] = keep_one_component_per_structure(probs[k].argmax(0).astype(np.uint8)[None])[0]
        if refine and study.aif is not None:
            out[k], report = refine_study_slice(study, k, out[k], blood_fraction=blood_fraction_for(study.units))
            reports.append({"slice": k, **report})
    if reports:
        study.provenance["mask_refinement"] = reports
    progress(study.n_slices + 1, study.n_slices + 1, "segmentation done")
    return {0: out}
