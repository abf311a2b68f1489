"""Run a segmentation network on a study and map the prediction back onto the input grid."""
import numpy as np

from ..errors import CardiacInputError
from ..progress import as_progress
from .postprocess import keep_one_component_per_structure
from .preprocess import model_grid_shape, normalise_volume, pad_to_multiple, resample_slices, with_context_slices


def context_slices(model):
    """Neighbouring slices on each side a 2.5D network reads (0: one slice at a time); a torch
    ``UNetLight`` knows it, an ONNX module has it from its card (``input.context_slices``)."""
    return int(getattr(model, "context_slices", 0) or 0)


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
        try:
            self.session = onnxruntime.InferenceSession(str(path), sess_options=options, providers=["CPUExecutionProvider"])
        except Exception as e:   # noqa: BLE001 - onnxruntime's own kinds
            if "NOT_IMPLEMENTED" in str(e):
                # a float64 export fails here, before its input type can be read (probe 65)
                raise CardiacInputError(path, f"ONNX Runtime has no CPU kernel for an operator of this model "
                                        f"({last_lines(e)}): e.g. a float64 export (CardiacAISeg runs float32 "
                                        "networks: model.float() before torch.onnx.export), or an operator this "
                                        "onnxruntime lacks (export with an older opset)") from None
            raise
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


class NetworkFailed(Exception):
    """The network raised on an input, or gave class scores that are not finite numbers. The
    caller that knows the model's name says it (``pipeline.segment``): an imported model fixed at
    one input size, or one that gives NaN where an image is saturated, ended the analysis with
    ONNX Runtime's or TorchScript's own 20-line message, or passed its NaN pixels off as
    background with QC pass (probe 65)."""


def last_lines(error, limit=300):
    """An error as one line: its first line, and its last where it has more (TorchScript puts
    the operation that failed last, after its own traceback)."""
    import re

    lines = [" ".join(re.sub(r"\x1b\[[0-9;]*[A-Za-z]", "", ln).split()) for ln in str(error).splitlines()]
    lines = [ln for ln in lines if ln] or [type(error).__name__]
    text = lines[0] if len(lines) == 1 else f"{lines[0]} ... {lines[-1]}"
    head = limit // 3
    return text if len(text) <= limit else f"{text[:head]} ... {text[-(limit - head - 5):]}"


def checked_network(model, x):
    """``model(x)`` (a tensor, or with ``run_numpy`` an array), its scores checked finite;
    raises ``NetworkFailed``."""
    try:
        scores = model.run_numpy(x) if hasattr(model, "run_numpy") and isinstance(x, np.ndarray) else model(x)
    except MemoryError:
        raise   # the machine's fault, not the network's: the CLI says so
    except Exception as e:   # noqa: BLE001 - whatever the runtime raises, said with the input's shape
        if type(e).__name__ == "OutOfMemoryError" or "Failed to allocate memory" in str(e):
            raise   # torch.cuda.OutOfMemoryError, ONNX Runtime's allocator: as MemoryError
        raise NetworkFailed(f"fails on a {tuple(x.shape)} input (batch, channels, rows, cols): {last_lines(e)}") from e
    finite = np.isfinite(scores) if isinstance(scores, np.ndarray) else __import__("torch").isfinite(scores)
    if not bool(finite.all()):
        bad = int((~finite).sum())
        raise NetworkFailed(f"gives non-finite class scores (NaN or inf) for {bad} of {finite.numel() if hasattr(finite, 'numel') else finite.size} "
                            f"values of a {tuple(x.shape)} input: its segmentation cannot be trusted")
    return scores


def network_scores(model, x, device="cpu"):
    """Class scores (N, K, rows, cols) as a float32 numpy array for a float32 numpy input
    (N, C, rows, cols), by either runtime: an ONNX Runtime module never touches torch (so a
    caller that uses this instead of tensors keeps torch out of the process), a torch module
    runs under ``inference_mode`` on ``device``. Raises ``NetworkFailed``."""
    if hasattr(model, "run_numpy"):
        return checked_network(model, np.ascontiguousarray(x, np.float32))
    import torch

    with torch.inference_mode():
        return checked_network(model, torch.from_numpy(np.ascontiguousarray(x, np.float32)).to(device)).float().cpu().numpy()


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


# Test-time augmentation: each variant is a sequence of in-plane operations on the last two
# axes ("W": mirror the columns, "H": mirror the rows, "T": swap rows and columns), undone in
# reverse order on the class probabilities. "dihedral" is every rotation by 90 degrees, mirrored
# or not: the same study stored in another of the 8 in-plane orientations (what scanners and
# exports do) then gives the same average (probe 31: one ACDC study rotated 270 degrees in its
# storage moved the network's ESV by 21 %).
TTA_VARIANTS = {
    "none": ((),),
    "flip": ((), ("W",)),
    "flip2": ((), ("W",), ("H",)),
    "dihedral": ((), ("W",), ("H",), ("H", "W"), ("T",), ("T", "W"), ("T", "H"), ("T", "H", "W")),
}


# "oriented": where the heart's axis is known (the LV -> RV direction, e.g. from the bolus), the
# input is turned by quarter turns so that the RV lies towards the lower column index, as in most
# ACDC images the networks were trained on (the first pass's axis of the 80 ACDC studies at ED:
# 122-180 degrees from the LV's centre in (row, column) terms, probe 35), and read twice: so and
# mirrored about that axis.
# "oriented4" reads the turned input in four: so, mirrored either way, and turned a half turn.
# The same heart stored in any of the 8 orientations then gives the same images, at the cost of
# "flip" or "flip2" where "dihedral" pays 8 readings; near a diagonal both nearest turns are read
# (DIAGONAL_BLEND_DEG). Without a known axis both are "dihedral" (``variants_for``).
ORIENTED, ORIENTED4 = "oriented", "oriented4"
TTA_NAMES = (*TTA_VARIANTS, ORIENTED, ORIENTED4)
_ROTATIONS = ((), ("T", "W"), ("H", "W"), ("T", "H"))   # 0, 90, 180, 270 degrees (the dihedral group's rotations)
_TARGET_RC = (0.0, -1.0)   # the RV's direction from the LV once turned: towards column 0
_MIRROR_ABOUT_TARGET = ("H",)   # the reflection that keeps _TARGET_RC: mirror the rows


def _turn_vector(ops, v):
    """The (row, column) direction ``v`` after the in-plane operations ``ops`` (as ``_apply`` does them)."""
    dr, dc = v
    for op in ops:
        dr, dc = (dc, dr) if op == "T" else ((-dr, dc) if op == "H" else (dr, -dc))
    return dr, dc


# Near a diagonal the nearest quarter turn is a toss-up that a few degrees of noise in the axis
# decide (probe 35: ACDC 052's axis at 135.7 / 44.8 / -44.3 / 43.0 degrees in four storages, EF
# 28.5-32.8 %; 32 of 80 ACDC hearts lie within 10 degrees of a diagonal). Within this many
# degrees of one, the two nearest turns are both read and weighted by how near each is, so the
# result moves smoothly with the axis instead of jumping between two readings.
DIAGONAL_BLEND_DEG = 10.0


class Reading(tuple):
    """Operation sequences to read an input in, with the weight of each (``weights``; None:
    equal), as ``variants_for`` chooses them."""

    def __new__(cls, variants, weights=None):
        reading = super().__new__(cls, (tuple(ops) for ops in variants))
        reading.weights = None if weights is None else tuple(float(w) for w in weights)
        return reading


def variants_for(tta, heart_axis_rc=None):
    """The ``Reading`` (sequences of in-plane operations, their weights) a TTA name
    (``TTA_NAMES``) reads an input in; ``heart_axis_rc`` is the LV -> RV direction in (row,
    column) for the oriented readings."""
    if isinstance(tta, Reading):
        return tta
    if not isinstance(tta, str):   # already a list of operation sequences
        return Reading(tta)
    if tta not in (ORIENTED, ORIENTED4):
        return Reading(TTA_VARIANTS[tta])
    if heart_axis_rc is None or not np.all(np.isfinite(heart_axis_rc)) or not np.any(heart_axis_rc):
        return Reading(TTA_VARIANTS["dihedral"])

    def reads(turn):
        if tta == ORIENTED:
            return [turn, turn + _MIRROR_ABOUT_TARGET]
        return [turn, turn + _MIRROR_ABOUT_TARGET, turn + ("W",), turn + ("H", "W")]

    def off_target_deg(ops):
        dr, dc = _turn_vector(ops, heart_axis_rc)
        return float(np.degrees(np.arccos(np.clip(np.dot((dr, dc), _TARGET_RC) / np.hypot(dr, dc), -1.0, 1.0))))

    nearest, second = sorted(_ROTATIONS, key=off_target_deg)[:2]
    # 0 degrees from the diagonal (off the target by 45): both turns weigh a half
    weight = float(np.clip(0.5 + (45.0 - off_target_deg(nearest)) / (2 * DIAGONAL_BLEND_DEG), 0.5, 1.0))
    if weight > 1.0 - 1e-6:
        return Reading(reads(nearest))
    first, other = reads(nearest), reads(second)
    return Reading(first + other, [weight / len(first)] * len(first) + [(1 - weight) / len(other)] * len(other))


def _weighted(variants):
    """(weights summing to one) of a ``Reading``'s variants."""
    weights = getattr(variants, "weights", None)
    return weights if weights is not None else (1.0 / len(variants),) * len(variants)


def _apply(ops, a, inverse=False):
    """``a`` (numpy or torch, ... x H x W) under the in-plane operations ``ops`` (or their inverse)."""
    torch_like = not isinstance(a, np.ndarray)
    for op in (reversed(ops) if inverse else ops):
        if op == "T":
            a = a.transpose(-1, -2) if torch_like else np.swapaxes(a, -1, -2)
        else:
            axis = -1 if op == "W" else -2
            a = a.flip(axis) if torch_like else np.flip(a, axis)
    return a


def _run_with_flips(model, x, tta):
    """Mean softmax over the input's ``TTA_VARIANTS[tta]``, each undone (torch)."""
    import torch

    variants = variants_for(tta)
    probs = None
    for ops, weight in zip(variants, _weighted(variants)):
        p = weight * _apply(ops, torch.softmax(checked_network(model, _apply(ops, x).contiguous()), 1), inverse=True)
        probs = p if probs is None else probs + p
    return probs


def mirrored_probabilities(model, x, device="cpu", tta="none"):
    """Mean softmax over a numpy (N, C, H, W) input's ``TTA_VARIANTS[tta]`` (mirrored, and for
    "dihedral" rotated; ``tta`` may also be the operation sequences of ``variants_for``), each
    undone, by either runtime (``network_scores``): the numpy twin of ``_run_with_flips``."""
    from .array_ops import softmax

    ops_list = variants_for(tta)
    variants = [np.ascontiguousarray(_apply(ops, x)) for ops in ops_list]
    same_shape = len({v.shape for v in variants}) == 1   # a transposed non-square input has its own shape
    if same_shape and len(variants) * x.shape[0] * x.shape[-2] * x.shape[-1] <= ORT_PIXELS_PER_CALL:
        # a few small key images: the input and its variants in one call (the per-call and
        # per-operator overheads are then paid once)
        scores = np.split(network_scores(model, np.concatenate(variants), device), len(variants))
    else:
        scores = [network_scores(model, v, device) for v in variants]
    probs = None
    for s, ops, weight in zip(scores, ops_list, _weighted(ops_list)):
        p = weight * _apply(ops, softmax(s, 1), inverse=True)   # back to the input's orientation
        probs = p if probs is None else probs + p
    return probs


# Pixels per ONNX Runtime call. Measured on 2 cores (unet-light, 320x272 slices): one slice per
# call used 10-30% less CPU per slice than batches of 2-10, whose activations (8-16 channels at
# full resolution, 3-6 MB a slice) no longer fit the cache; small crops are still batched so the
# per-call and per-operator overheads are shared.
ORT_PIXELS_PER_CALL = 1 << 17


def _predict_numpy(model, vol, grid, size_multiple, batch, tta):
    """The ONNX Runtime path of ``predict_volume_probabilities``: numpy around the network, no torch.
    ``vol`` is (S, channels, R, C)."""
    from . import array_ops

    s, _, r, c = vol.shape
    batch = max(1, min(batch, ORT_PIXELS_PER_CALL // (grid[0] * grid[1])))
    out = []
    for start in range(0, s, batch):
        x = array_ops.resample_slices(np.ascontiguousarray(vol[start:start + batch]), grid)
        x, crop = array_ops.pad_to_multiple(x, size_multiple)
        probs = mirrored_probabilities(model, x, tta=tta)
        out.append(array_ops.resample_slices(np.ascontiguousarray(probs[..., crop[0], crop[1]]), (r, c)))
    return np.concatenate(out, 0)


def predict_volume_probabilities(model, volume, spacing_rc, pixel_mm, size_multiple=16, device="cpu", batch=16, tta="none",
                                 contiguous=True):
    """(S, R, C) image -> (S, K, R, C) class probabilities on the same grid.

    The network runs on a copy resampled to ``pixel_mm``; its probabilities are resampled
    back with the same half-pixel convention, so the prediction overlays the input exactly.
    ``tta`` averages over mirrored inputs ('flip': left-right, 'flip2': and up-down).
    A network run by ONNX Runtime (``run_numpy``) gets numpy arrays all the way, so torch is
    never imported; a torch module gets tensors on ``device``.
    A 2.5D network (``context_slices``) gets each slice with its neighbours in the stack, or
    with none when the slices are not ``contiguous`` (a few chosen mid slices, perfusion slices).
    """
    vol = normalise_volume(volume)
    s, r, c = vol.shape
    grid = model_grid_shape((r, c), spacing_rc, pixel_mm)
    stacked = with_context_slices(vol, context_slices(model), contiguous)
    if hasattr(model, "run_numpy"):
        return _predict_numpy(model, stacked, grid, size_multiple, batch, tta)
    import torch

    out = []
    with torch.inference_mode():
        x_all = torch.from_numpy(stacked)
        for start in range(0, s, batch):
            x = resample_slices(x_all[start:start + batch], grid).to(device)
            x, crop = pad_to_multiple(x, size_multiple)
            probs = _run_with_flips(model, x, tta)[..., crop[0], crop[1]]
            out.append(resample_slices(probs.float().cpu(), (r, c)).numpy())
    return np.concatenate(out, 0)


def predict_labels(model, volume, spacing_rc, pixel_mm, size_multiple=16, device="cpu", postprocess=True, tta="none", batch=16,
                   contiguous=True):
    probs = predict_volume_probabilities(model, volume, spacing_rc, pixel_mm, size_multiple, device, batch=batch, tta=tta,
                                         contiguous=contiguous)
    labels = probs.argmax(1).astype(np.uint8)
    return keep_one_component_per_structure(labels, spacing_rc=spacing_rc) if postprocess else labels


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


def heart_axis_from_labels(labels, spacing_rc=(1.0, 1.0)):
    """The LV -> RV direction (row, column) in mm of label maps (..., R, C) in the internal
    convention (LV 1, RV 3), what the "oriented" readings turn by; None without both."""
    lv, rv = np.asarray(labels) == 1, np.asarray(labels) == 3
    if lv.sum() < 4 or rv.sum() < 4:
        return None
    lv_rc, rv_rc = np.argwhere(lv)[:, -2:].mean(0), np.argwhere(rv)[:, -2:].mean(0)
    return float((rv_rc[0] - lv_rc[0]) * spacing_rc[0]), float((rv_rc[1] - lv_rc[1]) * spacing_rc[1])


def cine_heart_box(model, volume, spacing_rc, pixel_mm, crop_mm, size_multiple=16, device="cpu", return_axis=False):
    """(box, reason): box is (row slice, col slice) of a square of at least ``crop_mm`` around the
    heart found by the network on the middle slices of ``volume`` (S, R, C); None with the reason
    when the field is already small or no heart is found (then the whole field is segmented).
    ``return_axis``: (box, reason, the heart's LV -> RV axis from that first pass or None)."""
    s, r, c = volume.shape
    if r * spacing_rc[0] <= crop_mm * HEART_BOX_SMALL_FIELD and c * spacing_rc[1] <= crop_mm * HEART_BOX_SMALL_FIELD:
        reason = (f"the field of view ({r * spacing_rc[0]:.0f} x {c * spacing_rc[1]:.0f} mm) is within "
                  f"{HEART_BOX_SMALL_FIELD:g} x the {crop_mm:g} mm heart square")
        return (None, reason, None) if return_axis else (None, reason)
    mid = sorted({max(0, min(s - 1, int(round(f * (s - 1))))) for f in (0.4, 0.5, 0.6)})
    first = predict_labels(model, volume[mid], spacing_rc, pixel_mm, size_multiple, device, contiguous=False)
    axis = heart_axis_from_labels(first, spacing_rc)
    heart = first > 0
    if heart.sum() < HEART_BOX_MIN_PIXELS:
        reason = f"no heart found on the middle slices ({', '.join(str(k + 1) for k in mid)}) in a first whole-field pass"
        return (None, reason, None) if return_axis else (None, reason)
    _, rows, cols = np.nonzero(heart)

    def side(lo, hi, n, spacing):
        """(start, stop) of the square's side along one axis, inside 0..n."""
        want_mm = max(crop_mm, (hi - lo + 1) * spacing + 2 * HEART_BOX_MARGIN_MM)
        length = min(n, int(round(want_mm / spacing)))
        # centred on the heart's pixels, half a pixel rounded towards the image's centre: the
        # same square whichever way the image is stored, mirrored or turned (rounding the same
        # way in every storage put a transposed copy's square one pixel off and moved ACDC 061's
        # ESV by 6 %, session 19)
        twice_start = int(lo + hi + 1 - length)
        start = twice_start // 2 + (1 if twice_start % 2 and lo + hi < n - 1 else 0)
        start = min(max(start, 0), n - length)
        return start, start + length

    r0, r1 = side(rows.min(), rows.max(), r, spacing_rc[0])
    c0, c1 = side(cols.min(), cols.max(), c, spacing_rc[1])
    box = (slice(r0, r1), slice(c0, c1))
    return (box, None, axis) if return_axis else (box, None)


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
    heart, box, axis = None, None, None
    if crop_mm:
        ref = reference if reference in volumes else frames[0]
        box, reason, axis = cine_heart_box(model, volumes[ref], spacing_rc, pixel_mm, crop_mm, multiple, device, return_axis=True)
        heart = ({"rows": [box[0].start, box[0].stop], "cols": [box[1].start, box[1].stop], "found_on_frame": ref,
                  "mm": [round((box[0].stop - box[0].start) * spacing_rc[0], 1), round((box[1].stop - box[1].start) * spacing_rc[1], 1)]}
                 if box else {"whole_field": reason})
    # "oriented" readings turn every square by the heart's axis from the first pass (read in the
    # 8 orientations without one: a whole-field card, or no RV found)
    name, tta = tta, variants_for(tta, axis)
    if heart is not None and name in (ORIENTED, ORIENTED4):   # which reading ran, for results.json (probe 35)
        heart["reading"] = {"tta": name, "orientations": len(tta),
                            "heart_axis_deg": None if axis is None else round(float(np.degrees(np.arctan2(*axis))), 1)}
    cycle = temporal.is_whole_cycle(frames, n_frames or 0)

    def read_frame(t, window):
        """Frame t in ``window``: its probabilities (float16 keeps a 30-frame cycle's small) in a
        whole cycle, else its labels."""
        image = np.ascontiguousarray(volumes[t][:, window[0], window[1]])
        if cycle:
            return predict_volume_probabilities(model, image, spacing_rc, pixel_mm, multiple, device,
                                                tta=tta).astype(np.float16)
        return predict_labels(model, image, spacing_rc, pixel_mm, multiple, device, tta=tta)

    def segment_in(window, known=None):
        labels, probabilities = {}, {}
        for n, t in enumerate(frames):
            progress(n, len(frames), f"segmenting frame {t + 1}")
            read = (known or {}).get(t)
            read = read_frame(t, window) if read is None else read
            (probabilities if cycle else labels)[t] = read
        if cycle:
            labels = {t: keep_one_component_per_structure(m, spacing_rc=spacing_rc)
                      for t, m in temporal.smoothed_labels(probabilities).items()}
        return labels

    shape_rc = next(iter(volumes.values())).shape[1:]
    known, used = {}, 0
    if box is not None and len(frames) > 2:
        # the square settled on the reference frame alone before every frame is read in it: where
        # labels kept reaching its edge (no heart in the image: noise, a resliced long-axis stack)
        # every frame was read up to five times (20 frames of noise: 177 s against 20 s for a
        # real cine; probe 85). A square the reference frame leaves uncut keeps that frame's reading.
        ref = reference if reference in volumes else frames[0]
        for widening in range(MAX_SQUARE_WIDENINGS + 1):
            read = read_frame(ref, box)
            seen = keep_one_component_per_structure(read.argmax(1).astype(np.uint8), spacing_rc=spacing_rc) if cycle else read
            wider = _box_around_cut_labels({ref: seen}, box, shape_rc, spacing_rc)
            used = widening
            if wider is None:
                known = {ref: read}
                break
            if widening == MAX_SQUARE_WIDENINGS:
                box = None
                _record_whole_field(heart, widening, shape_rc, spacing_rc)
                break
            box = wider
            _record_widening(heart, box, widening, spacing_rc)
    labels = segment_in(box if box is not None else (slice(None), slice(None)), known)
    for widening in range(used, MAX_SQUARE_WIDENINGS + 1):   # the other frames may reach past it still
        wider = None if box is None else _box_around_cut_labels(labels, box, shape_rc, spacing_rc)
        if wider is None:
            break
        # the square was found on the middle slices; a large basal RV (or LV) ran past its edge
        # (88 of 8,681 RV voxels outside on a heart 1.7x ACDC's size; probe 23), or a slice of
        # another breath-hold lies centimetres off the others: again on a square around all that
        # was labelled, until nothing reaches its edge. Widened once only, a basal slice 60 mm
        # off was still cut: EDV -16 %, ESV -22 %, QC pass (probe 38).
        if widening == MAX_SQUARE_WIDENINGS:   # still cut: the whole field, as for a heart not found
            box = None
            labels = segment_in((slice(None), slice(None)))
            _record_whole_field(heart, widening, shape_rc, spacing_rc)
            break
        box = wider
        labels = segment_in(box)
        _record_widening(heart, box, widening, spacing_rc)
    if box is not None:   # back onto the full grid: background outside the square
        for t, m in labels.items():
            full = np.zeros(volumes[t].shape, np.uint8)
            full[:, box[0], box[1]] = m
            labels[t] = full
    return labels, heart


# widenings of the heart square before the whole field is segmented instead
MAX_SQUARE_WIDENINGS = 3


def _record_widening(heart, box, widening, spacing_rc):
    """Say in ``heart`` (results.json's cine_heart_box) that the square grew to ``box``."""
    heart.update({"rows": [box[0].start, box[0].stop], "cols": [box[1].start, box[1].stop],
                  "mm": [round((box[0].stop - box[0].start) * spacing_rc[0], 1),
                         round((box[1].stop - box[1].start) * spacing_rc[1], 1)],
                  "widened": "labels reached the square's edge" + ("" if widening == 0 else f" ({widening + 1} times)")})


def _record_whole_field(heart, widening, shape_rc, spacing_rc):
    """Say in ``heart`` that the whole field was segmented after ``widening`` widenings."""
    heart.update({"whole_field": f"labels still reached the square's edge after {widening} widenings",
                  "rows": [0, shape_rc[0]], "cols": [0, shape_rc[1]],
                  "mm": [round(shape_rc[0] * spacing_rc[0], 1), round(shape_rc[1] * spacing_rc[1], 1)]})


def _box_around_cut_labels(labels, box, shape_rc, spacing_rc):
    """A wider (rows, cols) square around every labelled pixel of ``labels`` (in-box label maps)
    plus the margin, when some label touches an edge of ``box`` that is not the image's edge;
    else None."""
    touched = False
    rows_any, cols_any = [], []
    for m in labels.values():
        on = m > 0
        r_any, c_any = on.any(axis=(0, 2)), on.any(axis=(0, 1))
        rows_any.append(r_any)
        cols_any.append(c_any)
        touched |= bool((r_any[0] and box[0].start > 0) or (r_any[-1] and box[0].stop < shape_rc[0])
                        or (c_any[0] and box[1].start > 0) or (c_any[-1] and box[1].stop < shape_rc[1]))
    if not touched:
        return None
    r_on = np.flatnonzero(np.any(rows_any, axis=0)) + box[0].start
    c_on = np.flatnonzero(np.any(cols_any, axis=0)) + box[1].start

    def side(lo, hi, n, spacing, current):
        margin = int(round(HEART_BOX_MARGIN_MM / spacing))
        length = max(current.stop - current.start, hi - lo + 1 + 2 * margin)
        length = min(n, length)
        start = min(max(int(round((lo + hi) / 2 - length / 2)), 0), n - length)
        return slice(start, start + length)

    r = side(r_on.min(), r_on.max(), shape_rc[0], spacing_rc[0], box[0])
    c = side(c_on.min(), c_on.max(), shape_rc[1], spacing_rc[1], box[1])
    if (r.start, r.stop, c.start, c.stop) == (box[0].start, box[0].stop, box[1].start, box[1].stop):
        return None
    return r, c


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
    goes to ``study.provenance["cine_heart_box"]``, this run's record (``pipeline.segment`` puts
    it in the model info), replacing a previous run's; when the heart was not found the whole
    field is segmented, which ``heart_box_warning`` of that record says with the analysis."""
    # the record is this run's: a whole-field card writes none, and the square of a run before
    # it (and the note it gave) was reported as this run's
    study.provenance.pop("cine_heart_box", None)
    progress = as_progress(progress)
    device = pick_device(device)
    model = loaded_model.module.to(device)
    spec = loaded_model.card["input"]
    spacing_rc = study.spacing_rc
    todo = frames_to_segment(study, frames)
    volumes = {t: study.images[t] for t in todo}

    def report(done, total, message):
        progress(done, total, f"segmenting frame {todo[done] + 1}/{study.n_frames}" if done < total else message)

    result, heart = segment_cine_volumes(model, volumes, spacing_rc, spec, device, reference=study.ed_frame, progress=report,
                                         n_frames=study.n_frames)
    if heart is not None:
        study.provenance["cine_heart_box"] = heart
    progress(len(todo), len(todo), "segmentation done")
    return result


def heart_box_warning(heart):
    """What a run's heart square record (``segment_cine_volumes``' heart, the model info's
    ``cine_heart_box``) tells the user, or None: the whole field was segmented because no heart
    was found (a small field of view needs no warning: nothing is lost). A note of that run, said
    with its analysis (``Analysis.run``), not a note of the images: kept among the study's reading
    notes, the Slicer module stamped it on the input node, where it outlived the run."""
    reason = str((heart or {}).get("whole_field") or "")
    if not reason.startswith("no heart"):
        return None
    return f"{reason}{WHOLE_FIELD_NOTE_END}"


WHOLE_FIELD_NOTE_END = ": the network segmented the whole field instead of a square around the heart; check the contours"
