"""Validation of a perfusion checkpoint: synthetic held-out series, perfusion phantoms, real QPerf.

- synthetic series on the validation patients' anatomy: Dice LV, MYO, RV;
- perfusion phantoms (3 slices, exact truth): insertion angle error and per-segment MBF
  Bland-Altman bias with the network's masks;
- QPerf rest and stress examples (real, no labels): global MBF in the network's myocardium.
Usage: python tools/evaluate_perfusion.py RUN [--no-refine]
"""
import argparse
import json
import time
from pathlib import Path

import numpy as np

SHARED = Path(__file__).resolve().parents[2] / "shared" / "data"


class _Loaded:
    def __init__(self, module, card):
        self.module, self.card = module, card


def main():
    import torch

    from CardiacAISegLib.agreement import bland_altman, insertion_angle_error_deg
    from CardiacAISegLib.analysis import Analysis
    from CardiacAISegLib.geometry import study_insertion_points
    from CardiacAISegLib.models.architectures import build
    from CardiacAISegLib.models.perfusion_segmentation import segment_perfusion_study
    from CardiacAISegLib.models.perfusion_training import _dice_per_class, make_pool
    from CardiacAISegLib.models.training_data import anatomy_slices
    from CardiacAISegLib.models.postprocess import keep_one_component_per_structure
    from CardiacAISegLib.phantoms.phantom import make_perfusion_phantom
    from CardiacAISegLib.readers import load_study

    p = argparse.ArgumentParser()
    p.add_argument("run")
    p.add_argument("--checkpoint", default="best.pt")
    p.add_argument("--no-refine", action="store_true", help="the network's masks as they are (no bolus check)")
    args = p.parse_args()
    refine = not args.no_refine
    run = Path(args.run)
    cfg = torch.load(run / "last.pt", map_location="cpu", weights_only=False)["config"]
    net = build("perfusion-resunet", **cfg["arch_params"])
    net.load_state_dict(torch.load(run / args.checkpoint, map_location="cpu", weights_only=True))
    net.eval()
    loaded = _Loaded(net, {"input": {"frames": cfg["arch_params"]["in_frames"], "pre_foot_frames": 3, "size_multiple": net.size_multiple}})
    split = json.loads((run / "split.json").read_text())
    summary = {}

    vx, vy = make_pool(anatomy_slices([SHARED / "acdc" / p for p in split["val"]]), 200, cfg["size"], np.random.default_rng(777))
    with torch.inference_mode():
        pred = net(torch.from_numpy(vx.astype(np.float32))).argmax(1).numpy().astype(np.uint8)
    scores = [_dice_per_class(keep_one_component_per_structure(q[None])[0], g) for q, g in zip(pred, vy)]
    for n in ("lv", "myo", "rv"):
        summary[f"synthetic_val_dice_{n}"] = float(np.mean([s[n] for s in scores]))

    angles, auto, true = [], [], []
    for seed in range(6):
        study, truth = make_perfusion_phantom(seed=100 + seed, stress=seed % 2 == 0, noise=0.01)
        labels = segment_perfusion_study(study, loaded, refine=refine)
        mask = labels[0]
        tm = next(iter(study.labels.values()))
        summary.setdefault("phantom_dice_myo", []).append(float(2 * ((mask == 2) & (tm == 2)).sum() / ((mask == 2).sum() + (tm == 2).sum())))
        found = {q["slice"]: q for q in study_insertion_points(study, mask)}
        m = study.ijk_to_ras
        for k, (ant, inf) in enumerate(truth["insertion_points"]):
            if k not in found:
                continue
            c = study.ijk_to_ras_points(truth["lv_centre_ijk"][k])[0]
            for which, t_ijk in (("anterior", ant), ("inferior", inf)):
                angles.append(insertion_angle_error_deg(found[k][f"{which}_ras"], c, m[:3, :3] @ np.asarray(t_ijk, float) + m[:3, 3], c))
        a = Analysis(study, labels).run()
        for s in a.perfusion["segments"]:
            auto.append(s["mbf_ml_min_g"])
            true.append(truth["mbf_per_segment"][s["id"]])
    summary["phantom_dice_myo"] = float(np.mean(summary["phantom_dice_myo"]))
    summary["phantom_insertion_angle_error_deg_mean"] = float(np.mean(angles))
    summary["phantom_insertion_angle_error_deg_max"] = float(np.max(angles))
    ba = bland_altman(auto, true)
    summary["phantom_mbf_bias_ml_min_g"] = ba["bias"]
    summary["phantom_mbf_loa_ml_min_g"] = [ba["lower"], ba["upper"]]

    times = []
    for series in ("rest", "stress"):
        study = load_study(SHARED / "qperf", series=series)
        t0 = time.perf_counter()
        labels = segment_perfusion_study(study, loaded, refine=refine)
        times.append(time.perf_counter() - t0)
        a = Analysis(study, labels).run()
        summary[f"qperf_{series}_global_mbf_ml_min_g"] = a.perfusion["global_mbf_ml_min_g"]
        summary[f"qperf_{series}_myo_pixels"] = int((labels[0] == 2).sum())
    summary["cpu_ms_per_slice"] = 1000 * float(np.median(times))
    summary["threads"] = torch.get_num_threads()
    summary["refine"] = refine
    (run / ("evaluation.json" if refine else "evaluation-raw.json")).write_text(json.dumps({"summary": summary, "split": split}, indent=1))
    print(json.dumps(summary, indent=1))


if __name__ == "__main__":
    main()
