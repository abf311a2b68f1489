"""Every frame of a cine segmented, with and without temporal smoothing (models/temporal.py).

For each study: ED and ES Dice against the manual labels, EF and LV mass errors (ACDC: Info.cfg
ED/ES; Sunnybrook: the contoured phases), and the shape of the LV volume curve: its roughness
(sum of |second differences| / EDV, in %) and its number of local maxima on the cycle (one is a
clean curve). Also which frames the curve alone would call ED and ES, against the reference.
Uses the default cine model through the registry (ONNX Runtime), as `cardiacaiseg analyze --frames all`.

    python tools/evaluate_cine_temporal.py [--patients N] [--out FILE]

The ACDC patients are the shipped default model's validation split (never trained on). This copy of
ACDC holds the ED and ES frames only, so smoothing cannot act there (two frames are no cycle): its
rows check that nothing changes. The Sunnybrook sample (20 phases) and the MetaImage cine (30
phases, no labels: curve shape only) are whole cycles.
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


def dice(a, b):
    s = a.sum() + b.sum()
    return float(2 * (a & b).sum() / s) if s else 1.0


def curve_shape(curve):
    v = np.asarray(curve, float)
    second = np.abs(np.roll(v, -1) - 2 * v + np.roll(v, 1))   # cyclic
    peaks = int(np.sum((v > np.roll(v, 1)) & (v >= np.roll(v, -1))))
    return {"roughness_pct": float(100 * second.sum() / v.max()), "local_maxima": peaks,
            "curve_ed": int(np.argmax(v)), "curve_es": int(np.argmin(v))}


def study_scores(study, loaded, smooth, reference_slices=None):
    """Scores of one study segmented on every frame, smoothing on or off."""
    from CardiacAISegLib.models import temporal
    from CardiacAISegLib.models.inference import segment_cine_volumes

    sp = (study.spacing[1], study.spacing[0])
    volumes = {t: study.images[t] for t in range(study.n_frames)}
    saved = temporal.MIN_CYCLE_FRAMES
    if not smooth:
        temporal.MIN_CYCLE_FRAMES = 10 ** 9   # never a cycle: each frame alone
    try:
        labels, _ = segment_cine_volumes(loaded.module, volumes, sp, loaded.card["input"], reference=study.ed_frame,
                                         n_frames=study.n_frames)
    finally:
        temporal.MIN_CYCLE_FRAMES = saved
    vv = float(np.prod(study.spacing)) / 1000.0
    lv = [float((labels[t] == 1).sum()) * vv for t in range(study.n_frames)]
    row = curve_shape(lv)
    row["lv_curve_ml"] = [round(x, 2) for x in lv]
    if not study.labels:   # no reference: the curve's shape only
        return row
    for name, t in (("ed", study.ed_frame), ("es", study.es_frame)):
        gt, pr = study.labels[t], labels[t]
        ks = reference_slices[t] if reference_slices else slice(None)
        for cls, v in (("lv", 1), ("myo", 2), ("rv", 3)):
            if cls == "rv" and reference_slices:
                continue   # Sunnybrook has no RV contours
            if cls == "myo" and reference_slices and name == "es":
                continue   # nor ES epicardium
            row[f"dice_{cls}_{name}"] = dice(pr[ks] == v, gt[ks] == v)
    if not reference_slices:
        ed, es = study.ed_frame, study.es_frame
        for src, m in (("pred", labels), ("gt", study.labels)):
            edv, esv = float((m[ed] == 1).sum()) * vv, float((m[es] == 1).sum()) * vv
            row[f"ef_{src}"] = 100 * (edv - esv) / edv
            row[f"mass_{src}"] = 1.05 * float((m[ed] == 2).sum()) * vv
        row["ef_abs_err"] = abs(row["ef_pred"] - row["ef_gt"])
        row["mass_abs_err"] = abs(row["mass_pred"] - row["mass_gt"])
    row["ed_ref"], row["es_ref"] = int(study.ed_frame), int(study.es_frame)
    return row


def main():
    from CardiacAISegLib.models.registry import default_model, load_model
    from CardiacAISegLib.readers import load_study
    from CardiacAISegLib.readers.acdc import load_acdc_patient

    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--patients", type=int, default=15, help="first N of the validation split")
    p.add_argument("--out", default="build/eval/cine-temporal.json")
    args = p.parse_args()

    name = default_model("cine")
    loaded = load_model(name)
    val = loaded.card["training"]["split"]["val"]
    studies = [("acdc/" + pid, load_acdc_patient(SHARED / "acdc" / pid), None) for pid in val[: args.patients]]
    sb = load_study(SHARED / "sunnybrook" / "SC-HF-I-1_dicom", labels=SHARED / "sunnybrook" / "SC-HF-I-1_contours")
    contoured = {int(t): ks for t, ks in sb.provenance["contour_slices"].items()}
    studies.append(("sunnybrook/SC-HF-I-1", sb, contoured))
    metaimage = SHARED / "cine-metaimage" / "ExampleSequence"
    if metaimage.is_dir():   # a real 30-phase cine (a folder of per-frame files) without labels: the curve's shape only
        studies.append(("cine-metaimage", load_study(metaimage), None))

    t0 = time.time()
    rows = {}
    for label, study, ref in studies:
        rows[label] = {mode: study_scores(study, loaded, mode == "smoothed", ref) for mode in ("per_frame", "smoothed")}
        r = rows[label]
        print(f"{label:24s} " + "  ".join(
            f"{m}: rough {r[m]['roughness_pct']:.1f}% max {r[m]['local_maxima']} ED {r[m]['curve_ed']}/{r[m].get('ed_ref')} "
            f"ES {r[m]['curve_es']}/{r[m].get('es_ref')} LV {r[m].get('dice_lv_ed', 0):.3f}/{r[m].get('dice_lv_es', 0):.3f}"
            for m in ("per_frame", "smoothed")), flush=True)

    summary = {}
    acdc = [v for k, v in rows.items() if k.startswith("acdc/")]
    for mode in ("per_frame", "smoothed"):
        s = {}
        for key in ("dice_lv_ed", "dice_lv_es", "dice_myo_ed", "dice_myo_es", "dice_rv_ed", "dice_rv_es",
                    "ef_abs_err", "mass_abs_err", "roughness_pct", "local_maxima"):
            s[f"acdc_{key}"] = float(np.mean([r[mode][key] for r in acdc]))
        s["acdc_curve_ed_is_reference"] = int(sum(r[mode]["curve_ed"] == r[mode]["ed_ref"] for r in acdc))
        s["acdc_curve_es_within_1_frame"] = int(sum(abs(r[mode]["curve_es"] - r[mode]["es_ref"]) <= 1 for r in acdc))
        s["acdc_studies"] = len(acdc)
        sbr = rows["sunnybrook/SC-HF-I-1"][mode]
        s.update({f"sunnybrook_{k}": sbr[k] for k in ("roughness_pct", "local_maxima", "curve_ed", "curve_es",
                                                         "dice_lv_ed", "dice_lv_es", "dice_myo_ed")})
        if "cine-metaimage" in rows:
            mi = rows["cine-metaimage"][mode]
            s.update({f"metaimage_{k}": mi[k] for k in ("roughness_pct", "local_maxima", "curve_ed", "curve_es")})
        summary[mode] = s
    doc = {"model": name, "version": loaded.card.get("version"), "command": " ".join(shlex.quote(a) for a in sys.argv),
           "seconds": round(time.time() - t0, 1), "load_average_1min": os.getloadavg()[0], "summary": summary, "studies": rows}
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(doc, indent=1))
    print(json.dumps(summary, indent=1))
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
