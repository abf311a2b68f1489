"""Whole-field vs two-stage (heart square) cine inference of one network, same process: Dice on
the held-out ACDC patients (the card's validation split, or the run's) and the Sunnybrook sample,
and time per ED+ES stack. The two-stage mode is the analysis's own path
(``inference.segment_cine_volumes``: one square per study, found on ED).

    python tools/evaluate_cine_crop.py [--model unet-light] [--run RUN_DIR [--checkpoint best.pt]] [--crop-mm 160]

The square's side is --crop-mm, else the card's input.heart_crop_mm, else 160 mm.
"""
import argparse
import json
import time
from pathlib import Path

import numpy as np

SHARED = Path(__file__).resolve().parents[2] / "shared" / "data"
DEFAULT_CROP_MM = 160.0


def dice(a, b):
    return float(2 * (a & b).sum() / max(1, a.sum() + b.sum()))


def main():
    from CardiacAISegLib.models import registry
    from CardiacAISegLib.models.inference import segment_cine_volumes
    from CardiacAISegLib.readers import load_study

    p = argparse.ArgumentParser()
    p.add_argument("--model", default="unet-light")
    p.add_argument("--run", help="a training run folder: its checkpoint (torch) instead of the shipped weights")
    p.add_argument("--checkpoint", default="best.pt")
    p.add_argument("--crop-mm", type=float, help="side of the heart square (default: the card's input.heart_crop_mm, else 160)")
    args = p.parse_args()
    loaded = registry.load_model(args.model)
    card = loaded.card
    spec = dict(card["input"])
    crop_mm = args.crop_mm or spec.get("heart_crop_mm") or DEFAULT_CROP_MM
    split = card["training"]["split"]
    if args.run:
        import torch

        from CardiacAISegLib.models.architectures import build
        from CardiacAISegLib.models.registry import LoadedModel

        module = build(card["architecture"]["name"], **card["architecture"].get("params", {}))
        module.load_state_dict(torch.load(Path(args.run) / args.checkpoint, map_location="cpu", weights_only=True))
        module.eval()
        loaded = LoadedModel(card=card, module=module, runtime="torch")
        split = json.loads((Path(args.run) / "split.json").read_text())
    modes = {"whole field": {k: v for k, v in spec.items() if k != "heart_crop_mm"},
             f"{crop_mm:g} mm square": {**spec, "heart_crop_mm": crop_mm}}

    def run(study, mode):
        sp = (study.spacing[1], study.spacing[0])
        t0 = time.perf_counter()
        labels, _ = segment_cine_volumes(loaded.module, {t: study.images[t] for t in (study.ed_frame, study.es_frame)}, sp,
                                         modes[mode], reference=study.ed_frame)
        return labels, time.perf_counter() - t0

    rows = {m: [] for m in modes}
    times = {m: [] for m in modes}
    for name in split["val"]:
        st = load_study(SHARED / "acdc" / name)
        for mode in modes:
            labels, dt = run(st, mode)
            times[mode].append(dt)
            for t in (st.ed_frame, st.es_frame):
                rows[mode].append([dice(labels[t] == c, st.labels[t] == c) for c in (1, 2, 3)])
    sb = load_study(SHARED / "sunnybrook" / "SC-HF-I-1_dicom", labels=SHARED / "sunnybrook" / "SC-HF-I-1_contours")
    contoured = sb.provenance["contour_slices"]
    sun = {m: [] for m in modes}
    for mode in modes:
        labels, _ = run(sb, mode)
        for t in (sb.ed_frame, sb.es_frame):
            ks = contoured[t] if t in contoured else contoured[str(t)]
            sun[mode].append(dice(labels[t][ks] == 1, sb.labels[t][ks] == 1))
            if t == sb.ed_frame:
                sun[mode].append(dice(labels[t][ks] == 2, sb.labels[t][ks] == 2))
    print(f"{args.run or args.model} ({loaded.runtime}): {len(split['val'])} held-out ACDC patients (ED+ES) and Sunnybrook SC-HF-I-1")
    for mode in modes:
        r = np.asarray(rows[mode])
        print(f"{mode:13s} ACDC Dice LV {r[:, 0].mean():.3f} MYO {r[:, 1].mean():.3f} RV {r[:, 2].mean():.3f} | "
              f"Sunnybrook LV ED {sun[mode][0]:.3f} MYO ED {sun[mode][1]:.3f} LV ES {sun[mode][2]:.3f} | "
              f"{np.median(times[mode]) * 1000:.0f} ms per ED+ES stack (median)")


if __name__ == "__main__":
    main()
