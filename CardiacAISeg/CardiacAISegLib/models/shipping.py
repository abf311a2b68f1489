"""Write a trained network into the registry layout: weights + model card with sha256."""
import json
import os
from pathlib import Path

from .registry import CARD_NAME, SHIPPED_DIR, sha256_of

WEIGHTS_NAME = "weights.pt"
HALF_PRECISION = "float16"


def rounded_to_half(state_dict):
    """``state_dict`` with every floating-point tensor stored as float16: half the bytes, the
    networks still run in float32 (loading casts back). An evaluation of such weights rounds them
    the same way (tools/evaluate_cine.py --half-weights), so a card's numbers are of what ships."""
    return {k: (v.detach().cpu().half() if v.is_floating_point() else v.detach().cpu()) for k, v in state_dict.items()}


def ship_model(state_dict, card, dest_root=None, overwrite=False, precision=None):
    """Save ``state_dict`` and ``card`` (without the weights entry) as ``<dest_root>/<name>/``;
    ``precision`` HALF_PRECISION stores the floating-point tensors as float16 (``rounded_to_half``)."""
    import torch

    if precision == HALF_PRECISION:
        state_dict = rounded_to_half(state_dict)
    elif precision is not None:
        raise ValueError(f"stored precision {precision!r}: only {HALF_PRECISION!r} or None (as trained)")
    folder = Path(dest_root or SHIPPED_DIR) / card["name"]
    if folder.exists() and not overwrite:
        raise FileExistsError(f"{folder} exists; pass overwrite=True to replace the shipped model")
    folder.mkdir(parents=True, exist_ok=True)
    tmp = folder / (WEIGHTS_NAME + ".tmp")
    torch.save({k: v.detach().cpu().contiguous() for k, v in state_dict.items()}, tmp)
    os.replace(tmp, folder / WEIGHTS_NAME)
    card = dict(card)
    card["weights"] = {"file": WEIGHTS_NAME, "format": "state_dict", "sha256": sha256_of(folder / WEIGHTS_NAME),
                       "bytes": (folder / WEIGHTS_NAME).stat().st_size}
    if precision:
        card["weights"]["stored_precision"] = precision
    (folder / CARD_NAME).write_text(json.dumps(card, indent=2) + "\n")
    return folder


ONNX_NAME = "model.onnx"
ONNX_OPSET = 17


def parity_inputs(card, seed=0):
    """Network inputs the export is checked on: a phantom study prepared as the analysis prepares
    it (realistic intensities and anatomy), and a random batch of another shape (rows != cols,
    batch > 1) so that a graph frozen to one shape fails."""
    import numpy as np

    from .array_ops import pad_to_multiple, resample_slices
    from .preprocess import model_grid_shape, normalise_volume

    spec = card["input"]
    multiple = spec.get("size_multiple", 16 if card["task"] == "cine" else 8)
    rng = np.random.default_rng(seed)
    if card["task"] == "perfusion":
        from ..phantoms.phantom import make_perfusion_phantom

        study, _ = make_perfusion_phantom(seed=seed, noise=0.02)
        frames = spec.get("frames", 48)
        x = study.images[:frames, :].transpose(1, 0, 2, 3).astype(np.float32)
        x = np.maximum(x, 0) / np.maximum(x.max(axis=(1, 2, 3), keepdims=True), 1e-6)
        phantom = pad_to_multiple(x, multiple)[0]
        rand = rng.random((2, frames, 5 * multiple, 7 * multiple), dtype=np.float32)
    else:
        from ..phantoms.phantom_cine import make_cine_phantom

        study, _ = make_cine_phantom(seed=seed)
        vol = normalise_volume(study.images[0])
        grid = model_grid_shape(vol.shape[1:], study.spacing_rc, spec["pixel_mm"])
        phantom = pad_to_multiple(resample_slices(vol[:, None], grid), multiple)[0]
        rand = rng.random((2, 1, 5 * multiple, 7 * multiple), dtype=np.float32)
    return {"phantom": phantom, "random": rand}


HALF_MIN_ELEMENTS = 64   # smaller float constants (shape arithmetic, epsilons) stay float32


def _store_initializers_as_half(path):
    """Rewrite the ONNX file at ``path`` so that its float32 weight initializers are stored as
    float16, each cast back to float32 by a Cast node ahead of the graph: the file halves, the
    graph still computes in float32, and ONNX Runtime folds the casts once when it loads the model.
    Exact for weights that were float16 already (a card with stored_precision float16)."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    model = onnx.load(str(path))
    graph = model.graph
    casts, kept = [], []
    for init in graph.initializer:
        values = numpy_helper.to_array(init) if init.data_type == TensorProto.FLOAT else None
        if values is None or values.size < HALF_MIN_ELEMENTS:
            kept.append(init)
            continue
        half = numpy_helper.from_array(values.astype("float16"), init.name + "__float16")
        kept.append(half)
        casts.append(helper.make_node("Cast", [half.name], [init.name], to=TensorProto.FLOAT, name=init.name + "__to_float32"))
    del graph.initializer[:]
    graph.initializer.extend(kept)
    nodes = casts + list(graph.node)
    del graph.node[:]
    graph.node.extend(nodes)
    onnx.checker.check_model(model)
    onnx.save(model, str(path))
    return len(casts)


def export_onnx(folder, opset=ONNX_OPSET):
    """Export the torch network of the model in ``folder`` to ``model.onnx`` (batch, rows and cols
    dynamic), check it against torch on ``parity_inputs``, and record file, sha256, opset and the
    largest score difference in the card's ``onnx`` entry. Returns the updated card."""
    import warnings

    import numpy as np
    import torch

    from .inference import OnnxModule
    from .registry import _build_module, read_card, sha256_of, verify_weights

    folder = Path(folder)
    card = read_card(folder)
    module = _build_module(card, verify_weights(card))
    inputs = parity_inputs(card)
    tmp = folder / (ONNX_NAME + ".tmp")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the TorchScript exporter warns about traced shape arithmetic it handles
        torch.onnx.export(module, (torch.from_numpy(inputs["random"]),), str(tmp), dynamo=False, opset_version=opset,
                          input_names=["image"], output_names=["scores"], do_constant_folding=True,
                          dynamic_axes={"image": {0: "batch", 2: "rows", 3: "cols"},
                                        "scores": {0: "batch", 2: "rows", 3: "cols"}})
    half = card["weights"].get("stored_precision") == HALF_PRECISION
    if half:
        # the export as small as the weights it comes from; parity below is checked on this file
        _store_initializers_as_half(tmp)
    ort = OnnxModule(tmp)
    diffs = {}
    with torch.inference_mode():
        for label, x in inputs.items():
            reference = module(torch.from_numpy(x)).numpy()
            scores = ort.run_numpy(x)
            if scores.shape != reference.shape:
                tmp.unlink()
                raise RuntimeError(f"{card['name']}: ONNX gives {scores.shape} for {x.shape}, torch {reference.shape}")
            diffs[label] = float(np.abs(scores - reference).max())
            if not np.array_equal(scores.argmax(1), reference.argmax(1)):
                diffs[label + "_label_pixels_differing"] = int((scores.argmax(1) != reference.argmax(1)).sum())
    worst = max(v for k, v in diffs.items() if not k.endswith("differing"))
    if worst > 1e-3:
        tmp.unlink()
        raise RuntimeError(f"{card['name']}: the ONNX export differs from torch by {worst:.2g} in class scores; not shipped")
    os.replace(tmp, folder / ONNX_NAME)
    card = json.loads((folder / CARD_NAME).read_text())
    card["onnx"] = {"file": ONNX_NAME, "sha256": sha256_of(folder / ONNX_NAME), "bytes": (folder / ONNX_NAME).stat().st_size,
                    "opset": opset, "exporter": f"torch.onnx.export (TorchScript exporter), torch {torch.__version__.split('+')[0]}",
                    "parity_max_abs_diff": worst, "stored_precision": HALF_PRECISION if half else "float32",
                    "parity": {"what": "max |ONNX Runtime - torch| of the class scores (logits), float32",
                               "inputs": {k: list(v.shape) for k, v in inputs.items()}, **diffs}}
    (folder / CARD_NAME).write_text(json.dumps(card, indent=2) + "\n")
    return card
