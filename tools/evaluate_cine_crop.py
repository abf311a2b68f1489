"""Whole-field vs two-stage (heart square) cine inference with the shipped network: Dice on the
held-out ACDC patients (the card's validation split) and the Sunnybrook sample, and time per stack.

    python tools/evaluate_cine_crop.py [--model unet-light] [--run RUN_DIR [--checkpoint best.pt]] [--crop-mm 160]
"""
import argparse
import json
import time
from pathlib import Path

import numpy as np

SHARED = Path(__file__).resolve().parents[2] / "shared" / "data"


def dice(a, b):
    return float(2 * (a & b).sum() / max(1, a.sum() + b.sum()))


def main():
    from CardiacAISegLib.models import registry
    from CardiacAISegLib.models.inference import predict_labels, predict_labels_in_heart_box
    from CardiacAISegLib.readers import load_study

    p = argparse.ArgumentParser()
    p.add_argument("--model", default="unet-light")
    p.add_argument("--run", help="a training run folder: its checkpoint (torch) instead of the shipped weights")
    p.add_argument("--checkpoint", default="best.pt")
    p.add_argument("--crop-mm", type=float, help="side of the heart square (default: inference.CINE_CROP_MM)")
    args = p.parse_args()
    if args.crop_mm:
        from CardiacAISegLib.models import inference

        inference.CINE_CROP_MM = args.crop_mm
    loaded = registry.load_model(args.model)
    card = loaded.card
    spec = card["input"]
    split = card["training"]["split"]
    split = json.loads(split.replace("'", '"')) if isinstance(split, str) else split
    if args.run:
        import torch

        from CardiacAISegLib.models.architectures import build
        from CardiacAISegLib.models.registry import LoadedModel

        module = build(card["architecture"]["name"], **card["architecture"].get("params", {}))
        module.load_state_dict(torch.load(Path(args.run) / args.checkpoint, map_location="cpu", weights_only=True))
        module.eval()
        loaded = LoadedModel(card=card, module=module, runtime="torch")
        split = json.loads((Path(args.run) / "split.json").read_text())

    def run(vol, sp, two_stage):
        t0 = time.perf_counter()
        if two_stage:
            lab, box = predict_labels_in_heart_box(loaded.module, vol, sp, spec["pixel_mm"], spec.get("size_multiple", 16))
        else:
            lab, box = predict_labels(loaded.module, vol, sp, spec["pixel_mm"], spec.get("size_multiple", 16)), None
        return lab, time.perf_counter() - t0, box

    rows = {False: [], True: []}
    times = {False: [], True: []}
    for name in split["val"]:
        st = load_study(SHARED / "acdc" / name)
        sp = (st.spacing[1], st.spacing[0])
        for t in (st.ed_frame, st.es_frame):
            for mode in (False, True):
                lab, dt, _ = run(st.images[t], sp, mode)
                gt = st.labels[t]
                rows[mode].append([dice(lab == c, gt == c) for c in (1, 2, 3)])
                times[mode].append(dt)
    sb = load_study(SHARED / "sunnybrook" / "SC-HF-I-1_dicom", labels=SHARED / "sunnybrook" / "SC-HF-I-1_contours")
    sp = (sb.spacing[1], sb.spacing[0])
    contoured = sb.provenance["contour_slices"]
    sun = {False: [], True: []}
    for t in (sb.ed_frame, sb.es_frame):
        ks = contoured[t] if t in contoured else contoured[str(t)]
        for mode in (False, True):
            lab, _, box = run(sb.images[t], sp, mode)
            sun[mode].append(dice(lab[ks] == 1, sb.labels[t][ks] == 1))
            if t == sb.ed_frame:
                sun[mode].append(dice(lab[ks] == 2, sb.labels[t][ks] == 2))
    print(f"{args.model}: {len(split['val'])} held-out ACDC patients (ED+ES) and Sunnybrook SC-HF-I-1")
    for mode, label in ((False, "whole field"), (True, "heart square")):
        r = np.asarray(rows[mode])
        print(f"{label:13s} ACDC Dice LV {r[:, 0].mean():.3f} MYO {r[:, 1].mean():.3f} RV {r[:, 2].mean():.3f} | "
              f"Sunnybrook LV ED {sun[mode][0]:.3f} MYO ED {sun[mode][1]:.3f} LV ES {sun[mode][2]:.3f} | "
              f"{np.median(times[mode]) * 1000:.0f} ms per stack (median)")


if __name__ == "__main__":
    main()
