"""Validation of a cine checkpoint: ACDC validation split and Sunnybrook (another centre/vendor).

Used to fill model cards and docs/models.md; every number there comes from this script.
Usage: python tools/evaluate_cine.py RUN_DIR --arch unet-light [--params JSON] [--pixel-mm 1.25]
"""
import argparse
import json
import time
from pathlib import Path

import numpy as np

SHARED = Path(__file__).resolve().parents[2] / "shared" / "data"


def sunnybrook_scores(model, pixel_mm, multiple, tta="none"):
    """LV blood-pool Dice on contoured slices (ED and ES) and myocardium Dice at ED (epi contours)."""
    from CardiacAISegLib.models.inference import predict_labels
    from CardiacAISegLib.readers import load_study

    st = load_study(SHARED / "sunnybrook" / "SC-HF-I-1_dicom", labels=SHARED / "sunnybrook" / "SC-HF-I-1_contours")
    sp = (st.spacing[1], st.spacing[0])
    contoured = st.provenance["contour_slices"]
    out = {}
    for name, t in (("ed", st.ed_frame), ("es", st.es_frame)):
        pred = predict_labels(model, st.images[t], sp, pixel_mm, multiple, tta=tta)
        ks = contoured[t] if t in contoured else contoured[str(t)]
        gt, pr = st.labels[t][ks], pred[ks]
        a, b = pr == 1, gt == 1
        out[f"sunnybrook_dice_lv_{name}"] = float(2 * (a & b).sum() / (a.sum() + b.sum()))
        if name == "ed":
            a, b = pr == 2, gt == 2
            out["sunnybrook_dice_myo_ed"] = float(2 * (a & b).sum() / (a.sum() + b.sum()))
    return out


def cpu_ms_per_slice(model, pixel_mm, multiple, runs=5, tta="none"):
    """Median wall time per slice for an ED+ES stack of ACDC patient001 (2 x 10 slices)."""
    import torch

    from CardiacAISegLib.models.inference import predict_labels
    from CardiacAISegLib.readers.acdc import load_acdc_patient

    st = load_acdc_patient(SHARED / "acdc" / "patient001")
    sp = (st.spacing[1], st.spacing[0])
    times = []
    for _ in range(runs):
        t0 = time.perf_counter()
        for t in (st.ed_frame, st.es_frame):
            predict_labels(model, st.images[t], sp, pixel_mm, multiple, tta=tta)
        times.append(time.perf_counter() - t0)
    n = 2 * st.n_slices
    return {"cpu_ms_per_slice": 1000 * float(np.median(times)) / n, "cpu_s_ed_es_stack": float(np.median(times)),
            "threads": torch.get_num_threads(), "runs": runs}


def main():
    import torch

    from CardiacAISegLib.models.architectures import build
    from CardiacAISegLib.models.training import evaluate

    p = argparse.ArgumentParser()
    p.add_argument("run")
    p.add_argument("--arch", default="unet-light")
    p.add_argument("--params", default="{}")
    p.add_argument("--pixel-mm", type=float, default=1.25)
    p.add_argument("--checkpoint", default="best.pt")
    p.add_argument("--tta", default="none", choices=["none", "flip", "flip2"])
    args = p.parse_args()
    run = Path(args.run)
    model = build(args.arch, **json.loads(args.params))
    model.load_state_dict(torch.load(run / args.checkpoint, map_location="cpu", weights_only=True))
    model.eval()
    split = json.loads((run / "split.json").read_text())
    val = [SHARED / "acdc" / p for p in split["val"]]
    summary, rows = evaluate(model, val, args.pixel_mm, model.size_multiple, tta=args.tta)
    summary.update(sunnybrook_scores(model, args.pixel_mm, model.size_multiple, args.tta))
    summary.update(cpu_ms_per_slice(model, args.pixel_mm, model.size_multiple, tta=args.tta))
    summary["tta"] = args.tta
    result = {"summary": summary, "per_patient": rows, "split": split}
    (run / f"evaluation{'' if args.tta == 'none' else '-' + args.tta}.json").write_text(json.dumps(result, indent=1))
    print(json.dumps(summary, indent=1))


if __name__ == "__main__":
    main()
