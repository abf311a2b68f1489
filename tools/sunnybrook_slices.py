"""Where a cine model loses myocardium Dice on Sunnybrook SC-HF-I-1 (ED): per slice, and whether a
contour convention explains it (contours moved by half/one pixel, our epicardium dilated by one).

Usage: python tools/sunnybrook_slices.py [MODEL_NAME]   (a registry name; default: the default cine model)
"""
import sys
from pathlib import Path

import numpy as np

SHARED = Path(__file__).resolve().parents[2] / "shared" / "data" / "sunnybrook"


def dice(a, b):
    return 2 * (a & b).sum() / max(1, a.sum() + b.sum())


def main():
    from scipy import ndimage

    from CardiacAISegLib.models.inference import predict_labels
    from CardiacAISegLib.models.registry import default_model, load_model
    from CardiacAISegLib.readers import contours as C
    from CardiacAISegLib.readers import load_study

    loaded = load_model(sys.argv[1] if len(sys.argv) > 1 else default_model("cine"))
    spec = loaded.card["input"]
    st = load_study(SHARED / "SC-HF-I-1_dicom", labels=SHARED / "SC-HF-I-1_contours")
    t = st.ed_frame
    pred = predict_labels(loaded.module, st.images[t], (st.spacing[1], st.spacing[0]), spec["pixel_mm"], spec["size_multiple"])
    ks = st.provenance["contour_slices"][t]
    print("slice  LV-gt LV-pred  MYO-gt MYO-pred  Dice-LV Dice-MYO")
    for k in ks:
        g, p = st.labels[t][k], pred[k]
        print(f"{k:5d} {(g == 1).sum():6d} {(p == 1).sum():7d} {(g == 2).sum():7d} {(p == 2).sum():8d} {dice(p == 1, g == 1):8.3f} {dice(p == 2, g == 2):8.3f}")

    def pooled_myo(pred_myo, gt_myo):
        return 2 * sum((a & b).sum() for a, b in zip(pred_myo, gt_myo)) / sum(a.sum() + b.sum() for a, b in zip(pred_myo, gt_myo))

    gt_myo = [st.labels[t][k] == 2 for k in ks]
    print(f"pooled MYO Dice {pooled_myo([pred[k] == 2 for k in ks], gt_myo):.3f}")
    heart = [ndimage.binary_dilation((pred[k] == 1) | (pred[k] == 2)) & (pred[k] != 1) for k in ks]
    print(f"our epicardium dilated by 1 px: {pooled_myo(heart, gt_myo):.3f}")
    files = C.contour_files(SHARED / "SC-HF-I-1_contours")
    imap = st.provenance["instance_map"]
    best = (None, -1)
    for dx in (-1, -0.5, 0, 0.5, 1):
        for dy in (-1, -0.5, 0, 0.5, 1):
            pm, gm = [], []
            for (inst, which), f in files.items():
                tt, k = imap[inst]
                if tt != t or which != "o":
                    continue
                o = C.polygon_mask(C.read_contour(f) + [dx, dy], pred.shape[1:])
                i = C.polygon_mask(C.read_contour(files[(inst, "i")]) + [dx, dy], pred.shape[1:])
                pm.append(pred[k] == 2)
                gm.append(o & ~i)
            d = pooled_myo(pm, gm)
            best = max(best, ((dx, dy), d), key=lambda b: b[1])
    print(f"best contour shift (x, y) {best[0]} px: MYO Dice {best[1]:.3f}")


if __name__ == "__main__":
    main()
