"""Validation of a cine checkpoint: ACDC validation split and Sunnybrook (another centre/vendor).

Used to fill model cards and docs/models.md; every number there comes from this script.
``--heart-crop-mm`` evaluates two-stage inference (a square of that side around the heart, as a
card with ``input.heart_crop_mm`` runs it in every analysis); the mode is recorded in the summary
and tools/ship_model.py writes it into the card, so a card never claims a mode it was not measured in.
Usage: python tools/evaluate_cine.py RUN_DIR --arch unet-light [--params JSON] [--pixel-mm 1.25]
           [--heart-crop-mm 160] [--out FILE (default RUN_DIR/evaluation.json)]
"""
import argparse
import json
import os
import shlex
import sys
import time
from pathlib import Path

import numpy as np

SHARED = Path(__file__).resolve().parents[2] / "shared" / "data"


def _spec(pixel_mm, multiple, tta, heart_crop_mm):
    spec = {"pixel_mm": pixel_mm, "size_multiple": multiple, "tta": tta}
    if heart_crop_mm:
        spec["heart_crop_mm"] = heart_crop_mm
    return spec


def sunnybrook_scores(model, pixel_mm, multiple, tta="none", heart_crop_mm=None):
    """LV blood-pool Dice on contoured slices (ED and ES) and myocardium Dice at ED (epi contours)."""
    from CardiacAISegLib.models.inference import segment_cine_volumes
    from CardiacAISegLib.readers import load_study

    st = load_study(SHARED / "sunnybrook" / "SC-HF-I-1_dicom", labels=SHARED / "sunnybrook" / "SC-HF-I-1_contours")
    sp = (st.spacing[1], st.spacing[0])
    contoured = st.provenance["contour_slices"]
    preds, heart = segment_cine_volumes(model, {t: st.images[t] for t in (st.ed_frame, st.es_frame)}, sp,
                                        _spec(pixel_mm, multiple, tta, heart_crop_mm), reference=st.ed_frame)
    out = {}
    for name, t in (("ed", st.ed_frame), ("es", st.es_frame)):
        pred = preds[t]
        ks = contoured[t] if t in contoured else contoured[str(t)]
        gt, pr = st.labels[t][ks], pred[ks]
        a, b = pr == 1, gt == 1
        out[f"sunnybrook_dice_lv_{name}"] = float(2 * (a & b).sum() / (a.sum() + b.sum()))
        if name == "ed":
            a, b = pr == 2, gt == 2
            out["sunnybrook_dice_myo_ed"] = float(2 * (a & b).sum() / (a.sum() + b.sum()))
    return out, heart


def cpu_ms_per_slice(model, pixel_mm, multiple, runs=5, tta="none", heart_crop_mm=None):
    """Median wall time per slice for an ED+ES stack of ACDC patient001 (2 x 10 slices), the
    heart search included in the two-stage mode."""
    import torch

    from CardiacAISegLib.models.inference import segment_cine_volumes
    from CardiacAISegLib.readers.acdc import load_acdc_patient

    st = load_acdc_patient(SHARED / "acdc" / "patient001")
    sp = (st.spacing[1], st.spacing[0])
    spec = _spec(pixel_mm, multiple, tta, heart_crop_mm)
    volumes = {t: st.images[t] for t in (st.ed_frame, st.es_frame)}
    times = []
    for _ in range(runs):
        t0 = time.perf_counter()
        segment_cine_volumes(model, volumes, sp, spec, reference=st.ed_frame)
        times.append(time.perf_counter() - t0)
    n = 2 * st.n_slices
    # other work on a shared machine slows this down: the load says how much to trust it
    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else None
    return {"cpu_ms_per_slice": 1000 * float(np.median(times)) / n, "cpu_s_ed_es_stack": float(np.median(times)),
            "cpu_load_average_1min": load, "threads": torch.get_num_threads(), "runs": runs, "runtime_timed": "torch"}


def main():
    import torch

    from CardiacAISegLib.models.architectures import build, mean_of_networks
    from CardiacAISegLib.models.inference import TTA_NAMES
    from CardiacAISegLib.models.shipping import rounded_to_half
    from CardiacAISegLib.models.training import evaluate

    p = argparse.ArgumentParser()
    p.add_argument("run")
    p.add_argument("--arch", default="unet-light")
    p.add_argument("--params", default="{}")
    p.add_argument("--pixel-mm", type=float, default=1.25)
    p.add_argument("--checkpoint", default="best.pt")
    p.add_argument("--tta", default="none", choices=list(TTA_NAMES))
    p.add_argument("--heart-crop-mm", type=float, help="two-stage inference on a square of this side around the heart")
    p.add_argument("--out", help="where to write the evaluation (default RUN/evaluation[-TTA].json)")
    p.add_argument("--ensemble-with", help="another run of --arch: evaluate the mean of both networks' log-probabilities")
    p.add_argument("--ensemble-params", default="{}", help="architecture parameters of --ensemble-with (JSON)")
    p.add_argument("--half-weights", action="store_true",
                   help="round the weights to float16 first, as a card shipped with stored_precision float16 holds them")
    args = p.parse_args()
    run = Path(args.run)

    def weights(path):
        state = torch.load(path, map_location="cpu", weights_only=True)
        return rounded_to_half(state) if args.half_weights else state

    model = build(args.arch, **json.loads(args.params))
    model.load_state_dict(weights(run / args.checkpoint))
    model.eval()
    if args.ensemble_with:
        other = build(args.arch, **json.loads(args.ensemble_params))
        other.load_state_dict(weights(Path(args.ensemble_with) / args.checkpoint))
        model = mean_of_networks([model, other]).eval()
    split = json.loads((run / "split.json").read_text())
    val = [SHARED / "acdc" / p for p in split["val"]]
    summary, rows = evaluate(model, val, args.pixel_mm, model.size_multiple, tta=args.tta, heart_crop_mm=args.heart_crop_mm)
    sunnybrook, sunnybrook_box = sunnybrook_scores(model, args.pixel_mm, model.size_multiple, args.tta, args.heart_crop_mm)
    summary.update(sunnybrook)
    summary.update(cpu_ms_per_slice(model, args.pixel_mm, model.size_multiple, tta=args.tta, heart_crop_mm=args.heart_crop_mm))
    summary["tta"] = args.tta
    summary["heart_crop_mm"] = args.heart_crop_mm
    summary["weights_precision"] = "float16" if args.half_weights else "float32"
    if args.heart_crop_mm:
        summary["heart_box_whole_field_fallbacks"] = sum("whole_field" in r.get("heart_box", {}) for r in rows) \
            + ("whole_field" in sunnybrook_box)
    result = {"summary": summary, "per_patient": rows, "split": split, "sunnybrook_heart_box": sunnybrook_box,
              "run": str(run), "checkpoint": args.checkpoint,
              "command": "python tools/evaluate_cine.py " + " ".join(shlex.quote(a) for a in sys.argv[1:])}
    out = Path(args.out) if args.out else run / f"evaluation{'' if args.tta == 'none' else '-' + args.tta}.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=1))
    print(json.dumps(summary, indent=1))
    print(f"written {out}")


if __name__ == "__main__":
    main()
