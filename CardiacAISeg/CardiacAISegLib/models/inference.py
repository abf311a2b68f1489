"""Run a segmentation network on a study and map the prediction back onto the input grid."""
import numpy as np

from ..errors import CardiacInputError
from ..progress import as_progress
from .postprocess import keep_one_component_per_structure
from .preprocess import model_grid_shape, normalise_volume, pad_to_multiple, resample_slices


def cpu_threads():
    """Threads for a network on the CPU: ``$CARDIACAISEG_THREADS`` if set, else the cores this
    process may run on (its affinity, which containers and ``taskset`` narrow; ``os.cpu_count``
    would count the whole host)."""
    import os

    value = os.environ.get("CARDIACAISEG_THREADS")
    if value:
        if not value.isdigit() or int(value) < 1:
            raise CardiacInputError("CARDIACAISEG_THREADS", f"must be a whole number of threads >= 1, not {value!r}")
        return int(value)
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:  # macOS, Windows
        return max(1, os.cpu_count() or 1)


class OnnxModule:
    """An ONNX network run by onnxruntime on the CPU: the exported copy of a shipped network or a
    user's imported one. ``run_numpy`` takes and gives numpy arrays (no torch in the process);
    calling it like a torch module takes a float32 (N, C, rows, cols) tensor and gives the class
    scores as a tensor on the same device.

    Threads are set, not left to onnxruntime: intra-op = ``cpu_threads()`` (one per usable core),
    inter-op 1 (the graph is a chain), and no spin-waiting between operators, which on a busy or
    shared machine (Slicer's GUI, other processes) burns the cores the next convolution needs:
    measured here on 2 shared cores, spinning made a slice 2-4x slower.
    """

    runtime = "onnxruntime"

    def __init__(self, path, threads=None):
        try:
            import onnxruntime
        except ImportError:
            raise CardiacInputError(path, "ONNX models need onnxruntime, which is not installed (pip install onnxruntime)")
        options = onnxruntime.SessionOptions()
        options.log_severity_level = 3  # its warnings about unused initialisers are not the user's concern
        options.intra_op_num_threads = threads or cpu_threads()
        options.inter_op_num_threads = 1
        options.execution_mode = onnxruntime.ExecutionMode.ORT_SEQUENTIAL
        options.graph_optimization_level = onnxruntime.GraphOptimizationLevel.ORT_ENABLE_ALL
        options.add_session_config_entry("session.intra_op.allow_spinning", "0")
        self.threads = options.intra_op_num_threads
        self.session = onnxruntime.InferenceSession(str(path), sess_options=options, providers=["CPUExecutionProvider"])
        inputs = self.session.get_inputs()
        if len(inputs) != 1:
            raise CardiacInputError(path, f"an ONNX model must take one input (the image batch); this one takes {len(inputs)}: "
                                    + ", ".join(i.name for i in inputs))
        if inputs[0].type != "tensor(float)":
            raise CardiacInputError(path, f"the ONNX input {inputs[0].name!r} must be float32 (tensor(float)), not {inputs[0].type}")
        self.input_name = inputs[0].name
        self.output_name = self.session.get_outputs()[0].name

    def eval(self):
        return self

    def to(self, device):
        return self  # onnxruntime runs on the CPU; __call__ moves the tensors

    def run_numpy(self, x):
        """float32 (N, C, rows, cols) array -> class scores (N, K, rows, cols) as a numpy array."""
        x = np.ascontiguousarray(x, np.float32)
        return self.session.run([self.output_name], {self.input_name: x})[0]

    def __call__(self, x):
        import torch

        scores = self.run_numpy(x.detach().float().cpu().numpy())
        return torch.from_numpy(np.ascontiguousarray(scores)).to(x.device)


def network_scores(model, x, device="cpu"):
    """Class scores (N, K, rows, cols) as a float32 numpy array for a float32 numpy input
    (N, C, rows, cols), by either runtime: an ONNX Runtime module never touches torch (so a
    caller that uses this instead of tensors keeps torch out of the process), a torch module
    runs under ``inference_mode`` on ``device``."""
    if hasattr(model, "run_numpy"):
        return model.run_numpy(x)
    import torch

    with torch.inference_mode():
        return model(torch.from_numpy(np.ascontiguousarray(x, np.float32)).to(device)).float().cpu().numpy()


def cuda_may_be_present():
    """False when this machine certainly has no NVIDIA GPU, found without importing torch (which
    costs about a second): no NVIDIA device node on Linux, no CUDA driver on Windows, never on
    macOS. True means only 'ask torch'."""
    import os
    import sys

    if sys.platform == "darwin":
        return False
    if os.name == "nt":
        return os.path.exists(os.path.join(os.environ.get("SystemRoot", r"C:\Windows"), "System32", "nvcuda.dll"))
    return any(os.path.exists(p) for p in ("/dev/nvidiactl", "/dev/nvidia0", "/dev/dxg"))


def pick_device(device=None):
    """The device asked for, else CUDA when torch has a usable GPU, else the CPU. On a machine
    without any NVIDIA GPU the answer is 'cpu' without importing torch (the ONNX Runtime path
    needs no torch at all); torch calls accept the string as well as a ``torch.device``."""
    if (not device and not cuda_may_be_present()) or str(device) == "cpu":
        return "cpu"
    import torch

    if device:
        return torch.device(device)
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def _run_with_flips(model, x, flips):
    """Mean softmax over the input and its mirrored copies (test-time augmentation)."""
    import torch

    probs = torch.softmax(model(x), 1)
    for dims in flips:
        probs = probs + torch.softmax(model(x.flip(dims)), 1).flip(dims)
    return probs / (1 + len(flips))


TTA_FLIPS = {"none": (), "flip": ((3,),), "flip2": ((3,), (2,))}


# Pixels per ONNX Runtime call. Measured on 2 cores (unet-light, 320x272 slices): one slice per
# call used 10-30% less CPU per slice than batches of 2-10, whose activations (8-16 channels at
# full resolution, 3-6 MB a slice) no longer fit the cache; small crops are still batched so the
# per-call and per-operator overheads are shared.
ORT_PIXELS_PER_CALL = 1 << 17


def _predict_numpy(model, vol, grid, size_multiple, batch, tta):
    """The ONNX Runtime path of ``predict_volume_probabilities``: numpy around the network, no torch."""
    from . import array_ops

    s, r, c = vol.shape
    batch = max(1, min(batch, ORT_PIXELS_PER_CALL // (grid[0] * grid[1])))
    out = []
    for start in range(0, s, batch):
        x = array_ops.resample_slices(vol[start:start + batch, None], grid)
        x, crop = array_ops.pad_to_multiple(x, size_multiple)
        probs = array_ops.softmax(model.run_numpy(x))
        for dims in TTA_FLIPS[tta]:
            axes = tuple(dims)
            probs = probs + np.flip(array_ops.softmax(model.run_numpy(np.ascontiguousarray(np.flip(x, axes)))), axes)
        probs = probs / (1 + len(TTA_FLIPS[tta]))
        out.append(array_ops.resample_slices(np.ascontiguousarray(probs[..., crop[0], crop[1]]), (r, c)))
    return np.concatenate(out, 0)


def predict_volume_probabilities(model, volume, spacing_rc, pixel_mm, size_multiple=16, device="cpu", batch=16, tta="none"):
    """(S, R, C) image -> (S, K, R, C) class probabilities on the same grid.

    The network runs on a copy resampled to ``pixel_mm``; its probabilities are resampled
    back with the same half-pixel convention, so the prediction overlays the input exactly.
    ``tta`` averages over mirrored inputs ('flip': left-right, 'flip2': and up-down).
    A network run by ONNX Runtime (``run_numpy``) gets numpy arrays all the way, so torch is
    never imported; a torch module gets tensors on ``device``.
    """
    vol = normalise_volume(volume)
    s, r, c = vol.shape
    grid = model_grid_shape((r, c), spacing_rc, pixel_mm)
    if hasattr(model, "run_numpy"):
        return _predict_numpy(model, vol, grid, size_multiple, batch, tta)
    import torch

    out = []
    with torch.inference_mode():
        x_all = torch.from_numpy(vol)[:, None]
        for start in range(0, s, batch):
            x = resample_slices(x_all[start:start + batch], grid).to(device)
            x, crop = pad_to_multiple(x, size_multiple)
            probs = _run_with_flips(model, x, TTA_FLIPS[tta])[..., crop[0], crop[1]]
            out.append(resample_slices(probs.float().cpu(), (r, c)).numpy())
    return np.concatenate(out, 0)


def predict_labels(model, volume, spacing_rc, pixel_mm, size_multiple=16, device="cpu", postprocess=True, tta="none", batch=16):
    probs = predict_volume_probabilities(model, volume, spacing_rc, pixel_mm, size_multiple, device, batch=batch, tta=tta)
    labels = probs.argmax(1).astype(np.uint8)
    return keep_one_component_per_structure(labels) if postprocess else labels


# Two-stage cine inference: the heart takes a fifth of a short-axis field of view, so the network
# first finds it on a few mid slices, then segments a square around it: fewer pixels (faster) and
# nothing outside the heart to mistake for it. Whether a network runs this way, and on what
# square, is the model card's `input.heart_crop_mm` (the square the network was trained and
# evaluated on); a card without it is segmented on the whole field. Measured with
# `python tools/evaluate_cine_crop.py` (docs/models.md): the whole-field-trained unet-light v2 lost
# 0.01 Dice on 160 mm squares, the crop fine-tune (v3) gains on them and runs ~3x faster.
# A field already within HEART_BOX_SMALL_FIELD x the square gains too little to be worth a first pass.
HEART_BOX_SMALL_FIELD = 1.15
# The square grows to hold the heart found in the first pass plus this margin on each side, so a
# large heart (dilated ventricles, 130+ mm across LV and RV) is never cut by the square's edge.
HEART_BOX_MARGIN_MM = 20.0
# Fewer heart pixels than this on the mid slices is no heart (noise, a wrong series).
HEART_BOX_MIN_PIXELS = 20


def heart_crop_mm(card):
    """The side in mm of the heart square the card asks for (two-stage inference), or None."""
    return card["input"].get("heart_crop_mm") if card.get("task") == "cine" else None


def cine_heart_box(model, volume, spacing_rc, pixel_mm, crop_mm, size_multiple=16, device="cpu"):
    """(box, reason): box is (row slice, col slice) of a square of at least ``crop_mm`` around the
    heart found by the network on the middle slices of ``volume`` (S, R, C); None with the reason
    when the field is already small or no heart is found (then the whole field is segmented)."""
    s, r, c = volume.shape
    if r * spacing_rc[0] <= crop_mm * HEART_BOX_SMALL_FIELD and c * spacing_rc[1] <= crop_mm * HEART_BOX_SMALL_FIELD:
        return None, (f"the field of view ({r * spacing_rc[0]:.0f} x {c * spacing_rc[1]:.0f} mm) is within "
                      f"{HEART_BOX_SMALL_FIELD:g} x the {crop_mm:g} mm heart square")
    mid = sorted({max(0, min(s - 1, int(round(f * (s - 1))))) for f in (0.4, 0.5, 0.6)})
    first = predict_labels(model, volume[mid], spacing_rc, pixel_mm, size_multiple, device)
    heart = first > 0
    if heart.sum() < HEART_BOX_MIN_PIXELS:
        return None, f"no heart found on the middle slices ({', '.join(str(k + 1) for k in mid)}) in a first whole-field pass"
    _, rows, cols = np.nonzero(heart)

    def side(lo, hi, n, spacing):
        """(start, stop) of the square's side along one axis, inside 0..n."""
        want_mm = max(crop_mm, (hi - lo + 1) * spacing + 2 * HEART_BOX_MARGIN_MM)
        length = min(n, int(round(want_mm / spacing)))
        start = int(round((lo + hi) / 2 - length / 2))
        start = min(max(start, 0), n - length)
        return start, start + length

    r0, r1 = side(rows.min(), rows.max(), r, spacing_rc[0])
    c0, c1 = side(cols.min(), cols.max(), c, spacing_rc[1])
    return (slice(r0, r1), slice(c0, c1)), None


def predict_labels_in_box(model, volume, box, spacing_rc, pixel_mm, size_multiple=16, device="cpu", tta="none", batch=16):
    """``predict_labels`` on ``volume[:, box]`` mapped back onto the full grid: the same shape and
    geometry as the input, background outside the box. The one-component clean-up runs on the box
    alone: with nothing outside it, its components and enclosed holes are those of the full grid
    (a background region touching the box's edge continues into the empty outside), in a third
    of the pixels."""
    out = np.zeros(volume.shape, np.uint8)
    out[:, box[0], box[1]] = predict_labels(model, np.ascontiguousarray(volume[:, box[0], box[1]]), spacing_rc, pixel_mm,
                                            size_multiple, device, postprocess=True, tta=tta, batch=batch)
    return out


def predict_labels_in_heart_box(model, volume, spacing_rc, pixel_mm, crop_mm, size_multiple=16, device="cpu", tta="none",
                                box=None):
    """Two-stage ``predict_labels``: find the heart (``cine_heart_box``, unless ``box`` is given,
    e.g. found on another frame of the same study), segment its square, map back. Returns
    (labels, box, reason): box None and the reason when the whole field was segmented instead."""
    reason = None
    if box is None:
        box, reason = cine_heart_box(model, volume, spacing_rc, pixel_mm, crop_mm, size_multiple, device)
    if box is None:
        return predict_labels(model, volume, spacing_rc, pixel_mm, size_multiple, device, tta=tta), None, reason
    return predict_labels_in_box(model, volume, box, spacing_rc, pixel_mm, size_multiple, device, tta), box, None


def segment_cine_volumes(model, volumes, spacing_rc, spec, device="cpu", reference=None, progress=None, n_frames=None):
    """Labels {frame: (S, R, C)} for {frame: (S, R, C) image} of one study as the card's input
    ``spec`` says: on the whole field, or (``heart_crop_mm``) two-stage with one heart square for
    all frames, found on ``reference`` (the ED frame: the heart is largest there) or the first.
    When ``volumes`` hold every frame of a cycle of ``n_frames`` (``temporal.is_whole_cycle``),
    each frame's probabilities are smoothed with its neighbours' before the argmax
    (``temporal.smoothed_labels``), so a slice does not flip in and out between frames.
    Returns (labels, heart): heart is None for whole-field models, else a dict with the square
    ('rows', 'cols' [start, stop), 'mm') or the reason the whole field was segmented ('whole_field')."""
    from . import temporal

    progress = as_progress(progress)
    pixel_mm, multiple, tta = spec["pixel_mm"], spec.get("size_multiple", 16), spec.get("tta", "none")
    crop_mm = spec.get("heart_crop_mm")
    frames = list(volumes)
    heart, box = None, None
    if crop_mm:
        ref = reference if reference in volumes else frames[0]
        box, reason = cine_heart_box(model, volumes[ref], spacing_rc, pixel_mm, crop_mm, multiple, device)
        heart = ({"rows": [box[0].start, box[0].stop], "cols": [box[1].start, box[1].stop], "found_on_frame": ref,
                  "mm": [round((box[0].stop - box[0].start) * spacing_rc[0], 1), round((box[1].stop - box[1].start) * spacing_rc[1], 1)]}
                 if box else {"whole_field": reason})
    window = box if box is not None else (slice(None), slice(None))
    cycle = temporal.is_whole_cycle(frames, n_frames or 0)
    labels, probabilities = {}, {}
    for n, t in enumerate(frames):
        progress(n, len(frames), f"segmenting frame {t + 1}")
        image = np.ascontiguousarray(volumes[t][:, window[0], window[1]])
        if cycle:   # float16 keeps a 30-frame cycle's probabilities small
            probabilities[t] = predict_volume_probabilities(model, image, spacing_rc, pixel_mm, multiple, device, tta=tta).astype(np.float16)
        else:
            labels[t] = predict_labels(model, image, spacing_rc, pixel_mm, multiple, device, tta=tta)
    if cycle:
        labels = {t: keep_one_component_per_structure(m) for t, m in temporal.smoothed_labels(probabilities).items()}
    if box is not None:   # back onto the full grid: background outside the square
        for t, m in labels.items():
            full = np.zeros(volumes[t].shape, np.uint8)
            full[:, box[0], box[1]] = m
            labels[t] = full
    return labels, heart


def frames_to_segment(study, frames="ed_es"):
    if frames == "all" or study.n_frames == 1:
        return list(range(study.n_frames))
    if frames == "ed_es":
        if study.ed_frame is None or study.es_frame is None:
            # Without ED/ES from the file, all frames are needed to find them on the LV curve.
            return list(range(study.n_frames))
        return sorted({study.ed_frame, study.es_frame})
    if isinstance(frames, (list, tuple)):
        bad = [f for f in frames if not 0 <= f < study.n_frames]
        if bad:
            raise CardiacInputError(study.source, f"frames {bad} out of range 0..{study.n_frames - 1}")
        return list(frames)
    raise ValueError(f"frames must be 'ed_es', 'all' or a list of indices, not {frames!r}")


def segment_cine_study(study, loaded_model, frames="ed_es", device=None, progress=None):
    """Label maps {frame: (S, R, C) uint8} for a cine study with a loaded registry model (loaded
    for ``device``: ``registry.load_model(..., device=)`` / ``registry.for_device``).

    A card with ``input.heart_crop_mm`` is run two-stage (``segment_cine_volumes``): the square
    goes to ``study.provenance["cine_heart_box"]``; when the heart was not found the whole field
    is segmented and a warning says so (a small field of view needs no warning: nothing is lost)."""
    progress = as_progress(progress)
    device = pick_device(device)
    model = loaded_model.module.to(device)
    spec = loaded_model.card["input"]
    spacing_rc = (study.spacing[1], study.spacing[0])
    todo = frames_to_segment(study, frames)
    volumes = {t: study.images[t] for t in todo}

    def report(done, total, message):
        progress(done, total, f"segmenting frame {todo[done] + 1}/{study.n_frames}" if done < total else message)

    result, heart = segment_cine_volumes(model, volumes, spacing_rc, spec, device, reference=study.ed_frame, progress=report,
                                         n_frames=study.n_frames)
    if heart is not None:
        study.provenance["cine_heart_box"] = heart
        if "whole_field" in heart and heart["whole_field"].startswith("no heart"):
            study.provenance.setdefault("warnings", []).append(
                f"{heart['whole_field']}: the network segmented the whole field instead of a square around the heart; "
                "check the contours")
    progress(len(todo), len(todo), "segmentation done")
    return result


def perfusion_window(study, n_frames=48, pre_foot=3):
    """Frame indices of the network's window: from a few frames before the AIF foot, edges repeated.

    Without an AIF the foot of the whole-image mean curve stands in (the bolus lights up
    the ventricles first).
    """
    from ..mbf import find_foot

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
# the LV found from the bolus and brought to CROP_PIXEL_MM before the network sees them.
CROP_FOV_MM = 128.0
CROP_PIXEL_MM = 2.0
CROP_WHEN_FOV_OVER_MM = 200.0


def heart_crop(study):
    """(row slice, col slice, zoom) of a square around the LV for wide fields of view, or None.

    The LV comes from the bolus passage (``bolus.locate_blood_pools``) on the middle slice, so no
    labels, geometry conventions or orientation are assumed.
    """
    from ..bolus import locate_blood_pools

    sp_col, sp_row = study.spacing[0], study.spacing[1]
    rows, cols = study.images.shape[2:]
    if max(rows * sp_row, cols * sp_col) <= CROP_WHEN_FOV_OVER_MM:
        return None
    times = study.frame_times_s
    dt = float(np.median(np.diff(times))) if times is not None and len(times) > 1 else None
    try:
        pools = locate_blood_pools(study.images[:, study.n_slices // 2], dt_s=dt, pixel_mm=sp_col)
    except CardiacInputError:
        return None
    if pools["confidence"] != "high":
        # without an RV that peaked first next to it, the "LV" may be the aorta or a vessel: a
        # crop around it could cut the heart out, so the network sees the whole field instead
        study.provenance.setdefault("warnings", []).append(
            f"wide field of view, but the heart was not found with confidence from the bolus ({pools['reason']}): "
            "the network segments the whole field; check the contours")
        return None
    cy, cx = pools["lv_center_rc"]
    if pools["rv"].any():   # centre between LV and RV a little, so the RV stays in view
        ry, rx = np.nonzero(pools["rv"])
        cy, cx = cy + 0.25 * (ry.mean() - cy), cx + 0.25 * (rx.mean() - cx)
    half_r, half_c = CROP_FOV_MM / 2 / sp_row, CROP_FOV_MM / 2 / sp_col
    r0, c0 = int(round(cy - half_r)), int(round(cx - half_c))
    r0, c0 = min(max(r0, 0), max(rows - int(2 * half_r), 0)), min(max(c0, 0), max(cols - int(2 * half_c), 0))
    rs = slice(r0, min(rows, r0 + int(round(2 * half_r))))
    cs = slice(c0, min(cols, c0 + int(round(2 * half_c))))
    return rs, cs, (sp_row / CROP_PIXEL_MM, sp_col / CROP_PIXEL_MM), pools


# How a perfusion series is segmented; the model card declares it (``input.segmentation.mode``,
# default "frames" for cards without it), so no switch is hidden:
# - "frames": the perfusion network on the frames window (48 frames as channels, Xue 2020);
# - "cine-key-image": the cine network (trained on real MRI) on a cine-like key image of the
#   first pass (``perfusion_keyimage``);
# - "ensemble": the mean of both paths' class probabilities on the perfusion grid.
PERFUSION_SEGMENTATION_MODES = ("frames", "cine-key-image", "ensemble")
# Whether the bolus check (``perfusion_refine``) follows each path unless the card or the caller
# says otherwise. Measured with tools/compare_perfusion_segmenters.py (docs/models.md): it
# rescues the perfusion network's masks (synthetic full-FOV MYO Dice 0.68 -> 0.79, real
# aif_detection LV 0.71 -> 0.81) and the cine network's (0.72 -> 0.77, 0.78 -> 0.80), but costs
# the ensemble, whose masks are already better than what it rebuilds (0.85 -> 0.78, 0.83 -> 0.81).
BOLUS_CHECK_BY_MODE = {"frames": True, "cine-key-image": True, "ensemble": False}


def perfusion_segmentation(card):
    """The card's declared perfusion segmentation: dict with mode, key_image, cine_model (None =
    the registry's default cine model) and bolus_check (default: BOLUS_CHECK_BY_MODE). A card
    without ``input.segmentation`` is run as perfusion networks were before: frames, checked."""
    from .perfusion_keyimage import DEFAULT_KEY_IMAGE, KEY_IMAGE_MODES

    entry = dict(card.get("input", {}).get("segmentation") or {"mode": "frames"})
    entry.setdefault("key_image", DEFAULT_KEY_IMAGE)
    entry.setdefault("cine_model", None)
    if entry.get("key_image") not in KEY_IMAGE_MODES:
        raise CardiacInputError(card.get("name", "model card"), f"input.segmentation.key_image must be one of "
                                f"{', '.join(KEY_IMAGE_MODES)}, not {entry.get('key_image')!r}")
    if entry.get("mode") in PERFUSION_SEGMENTATION_MODES:
        entry.setdefault("bolus_check", BOLUS_CHECK_BY_MODE[entry["mode"]])
    if entry.get("mode") not in PERFUSION_SEGMENTATION_MODES:
        raise CardiacInputError(card.get("name", "model card"), f"input.segmentation.mode must be one of "
                                f"{', '.join(PERFUSION_SEGMENTATION_MODES)}, not {entry.get('mode')!r}")
    return entry


def perfusion_network_probabilities(study, loaded_model, device="cpu"):
    """(S, K, R, C) class probabilities of the perfusion network on the frames window, on the
    study's grid. A wide field of view is first cropped around the heart found from the bolus
    (``heart_crop``), brought to CROP_PIXEL_MM, and the probabilities mapped back (background
    outside the crop)."""
    from scipy import ndimage

    from .array_ops import pad_to_multiple as pad_array, softmax

    model = loaded_model.module
    if not hasattr(model, "run_numpy"):   # torch: on the device; ONNX Runtime needs no torch at all
        model = model.to(device)
    spec = loaded_model.card["input"]
    frames = perfusion_window(study, spec.get("frames", 48), spec.get("pre_foot_frames", 3))
    multiple = spec.get("size_multiple", 8)
    crop = heart_crop(study)
    rs, cs = (crop[0], crop[1]) if crop else (slice(None), slice(None))
    if crop:
        study.provenance["heart_crop"] = {"rows": [rs.start, rs.stop], "cols": [cs.start, cs.stop],
                                          "pixel_mm": CROP_PIXEL_MM, "lv_found_by": crop[3]["reason"]}
    out = None
    for k in range(study.n_slices):
        x = study.images[frames, k][:, rs, cs].astype(np.float32)
        native = x.shape[1:]
        if crop:
            x = ndimage.zoom(x, (1, *crop[2]), order=1)
        x = np.maximum(x, 0) / max(float(x.max()), 1e-6)   # each sample divided by its maximum
        xp, pad = pad_array(x[None], multiple)
        probs = softmax(network_scores(model, xp.astype(np.float32), device)[..., pad[0], pad[1]], 1)[0]
        if crop:   # probabilities back onto the native crop grid
            zoom_back = (native[0] / probs.shape[1], native[1] / probs.shape[2])
            probs = np.stack([ndimage.zoom(p, zoom_back, order=1) for p in probs])[:, : native[0], : native[1]]
            if probs.shape[1:] != native:   # edge-padded: ndimage.zoom rounds the size
                probs = np.pad(probs, ((0, 0), (0, native[0] - probs.shape[1]), (0, native[1] - probs.shape[2])), mode="edge")
        if out is None:
            out = np.zeros((study.n_slices, probs.shape[0], *study.images.shape[2:]), np.float32)
            out[:, 0] = 1.0   # background outside the crop
        out[k][:, rs, cs] = probs
    return out


def perfusion_probabilities(study, loaded_model, mode=None, device="cpu", cine_model=None, key_image=None):
    """(S, K, R, C) class probabilities by ``mode`` (default: the card's declaration). The
    cine-key-image record goes to ``study.provenance["perfusion_segmentation"]``."""
    from . import perfusion_keyimage

    declared = perfusion_segmentation(loaded_model.card)
    mode = mode or declared["mode"]
    if mode not in PERFUSION_SEGMENTATION_MODES:
        raise CardiacInputError("perfusion segmentation", f"mode must be one of {', '.join(PERFUSION_SEGMENTATION_MODES)}, "
                                f"not {mode!r}")
    record = {"mode": mode}
    parts = []
    if mode in ("frames", "ensemble"):
        parts.append(perfusion_network_probabilities(study, loaded_model, device))
        record["network"] = loaded_model.card.get("name", "perfusion network")   # a bare checkpoint (tools) has no name
    if mode in ("cine-key-image", "ensemble"):
        if cine_model is None or isinstance(cine_model, str):
            cine_model = perfusion_keyimage.load_cine_model(cine_model or declared["cine_model"], device,
                                                            classes=loaded_model.card.get("classes"))
        probs, key_record = perfusion_keyimage.cine_key_image_probabilities(
            study, cine_model, key_image or declared["key_image"], device=device)
        parts.append(probs)
        record.update(key_record)
        record["mode"] = mode
    study.provenance["perfusion_segmentation"] = record
    return parts[0] if len(parts) == 1 else np.mean(parts, axis=0)


def segment_perfusion_study(study, loaded_model, device=None, progress=None, refine=None, mode=None, cine_model=None,
                            key_image=None):
    """{0: (S, R, C) labels} for a perfusion study (one motion-corrected mask for all frames).

    ``mode`` (default: the card's ``input.segmentation.mode``) picks the path
    (PERFUSION_SEGMENTATION_MODES); ``cine_model`` (a name or LoadedModel) and ``key_image``
    ('lv-peak' / 'myo-peak') override the card's choices for the key-image path.
    With ``refine`` (default: the card's ``bolus_check`` for its mode, BOLUS_CHECK_BY_MODE for
    another mode) and an AIF, each slice's mask is checked and mended against the bolus
    (`perfusion_refine`); the per-slice reports go to ``study.provenance["mask_refinement"]``.
    """
    from .perfusion_refine import refine_study_slice
    from .postprocess import keep_one_component_per_structure

    progress = as_progress(progress)
    device = pick_device(device)
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
            # signal-intensity myocardium enhances to a larger share of the (saturated) blood
            # signal than Gd concentration does: the blood-likeness threshold follows the units
            blood_fraction = 0.25 if study.units == "gd_mmol_l" else 0.5
            out[k], report = refine_study_slice(study, k, out[k], blood_fraction=blood_fraction)
            reports.append({"slice": k, **report})
    if reports:
        study.provenance["mask_refinement"] = reports
    progress(study.n_slices + 1, study.n_slices + 1, "segmentation done")
    return {0: out}
