"""Perfusion segmentation paths side by side, on the same cases (issue 9):

- ``frames``: the perfusion network on the 48-frame window (bolus heart crop on wide fields);
- ``cine lv-peak`` / ``cine myo-peak``: the default cine network on a key image of the first
  pass (mean of 3 frames around the LV peak / the myocardial peak), in a heart square;
- ``ensemble lv-peak`` / ``ensemble myo-peak``: the mean of both class probabilities.

Every path is followed by the bolus check (``perfusion_refine``) as shipped; ``--no-refine``
shows the masks without it. Measures:

1. real: qperf/aif_detection, 3 low-resolution dual-sequence AIF series with expert LV/RV
   masks: LV (and RV) Dice. No pixel size or frame interval is stored: the study is built with
   1 x 1 mm "unknown" pixels (as an Analyze file without spacing reads) and 1 s per frame; the
   AIF comes from the bolus-located LV, as the readers take it when none is given.
2. synthetic: first-pass series on the 15 held-out ACDC patients' whole images
   (tools/evaluate_perfusion_fullfov.py's generator, ``--cases``, ``--size``): Dice LV/MYO/RV.
3. real: the QPerf rest and stress examples (no labels): global MBF with each path's masks
   (the authors' medians: about 0.94 rest, 3.25 stress) and the share of blood-like myocardial
   pixels (enhancement at the pool's peak >= 25 % of the pool's, as
   Testing/Python/test_perfusion_motion.py counts it; target <= 10 % at stress).

Usage: python tools/compare_perfusion_segmenters.py [--cases 16] [--size 160] [--out table.json]
"""
import argparse
import dataclasses
import json
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
SHARED = Path(__file__).resolve().parents[2] / "shared" / "data"
AIF_DETECTION = SHARED / "qperf" / "aif_detection"
PATHS = {"frames": ("frames", None), "cine lv-peak": ("cine-key-image", "lv-peak"),
         "cine myo-peak": ("cine-key-image", "myo-peak"), "ensemble lv-peak": ("ensemble", "lv-peak"),
         "ensemble myo-peak": ("ensemble", "myo-peak")}
AUTHORS_MBF = {"rest": 0.94, "stress": 3.25}


def dice(a, b):
    return float(2 * (a & b).sum() / max(1, a.sum() + b.sum()))


def aif_detection_study(n):
    """(Study, expert mask) for qperf/aif_detection example ``n``."""
    from CardiacAISegLib.perfusion.bolus import aif_from_lv, locate_blood_pools
    from CardiacAISegLib.study import Study, affine_from_spacing

    images = np.load(AIF_DETECTION / f"example{n}_images.npy")        # (rows, cols, frames)
    mask = np.load(AIF_DETECTION / f"example{n}_mask.npy").astype(np.uint8)
    frames = np.ascontiguousarray(np.moveaxis(images, -1, 0))[:, None]  # (T, 1, R, C)
    pools = locate_blood_pools(frames[:, 0], dt_s=1.0)
    study = Study(images=frames.astype(np.float32), ijk_to_ras=affine_from_spacing((1.0, 1.0, 1.0)), kind="perfusion",
                  frame_times_s=np.arange(frames.shape[0], dtype=float), aif=aif_from_lv(frames[:, 0], pools["lv"]),
                  units="signal", orientation_known=False, name=f"aif_detection example{n}")
    return study, mask


def segment(study, model, path, refine, cine_model=None):
    from CardiacAISegLib.models import perfusion_segmentation

    mode, key = PATHS[path]
    return perfusion_segmentation.segment_perfusion_study(study, model, refine=refine, mode=mode, key_image=key,
                                                          cine_model=cine_model)


def load_cine_candidate(source):
    """A registry cine model, or a training run's checkpoint (``best.pt``/``last.pt``) of the
    registry's unet-light architecture (torch runtime, a model of its own); comma-separated:
    a list of them, each a member of the ensemble's mean."""
    import copy

    from CardiacAISegLib.models import registry
    from CardiacAISegLib.models.architectures import build
    from CardiacAISegLib.models.training import load_start_weights

    if "," in source:
        return [load_cine_candidate(s.strip()) for s in source.split(",")]
    if not source.endswith(".pt"):
        return registry.load_model(source)
    model = copy.copy(registry.load_model("unet-light", runtime="torch"))
    module = build("unet-light", **model.card["architecture"].get("params", {}))
    module.load_state_dict(load_start_weights(source))
    model.module = module.eval()
    model.card = dict(model.card, name=f"unet-light ({source})")
    return model


def blood_like_fraction(images, aif, labels):
    """Share of myocardial pixels whose enhancement at the LV pool's peak frame is >= 25 % of the
    pool's (Testing/Python/test_perfusion_motion.py)."""
    from CardiacAISegLib.labels import LV, MYO
    from CardiacAISegLib.models.perfusion_refine import enhancement_frames

    e = enhancement_frames(images, aif)
    pool = e[:, labels == LV].mean(1)
    peak = int(np.argmax(pool))
    return float((e[peak, labels == MYO] >= 0.25 * pool[peak]).mean())


def main():
    from CardiacAISegLib.analysis import Analysis
    from CardiacAISegLib.labels import LV, MYO, RV
    from CardiacAISegLib.models import registry
    from CardiacAISegLib.models.inference import TTA_NAMES
    from CardiacAISegLib.readers import load_study
    from evaluate_perfusion_fullfov import lead_range, synthetic_fullfov_cases

    p = argparse.ArgumentParser()
    p.add_argument("--cases", type=int, default=16)
    p.add_argument("--size", type=int, default=160)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--no-refine", action="store_true")
    p.add_argument("--paths", default=",".join(PATHS), help="comma-separated subset of: " + ", ".join(PATHS))
    p.add_argument("--out", help="write the results as JSON here")
    p.add_argument("--vessels", type=float, default=0.0,
                   help="chance per synthetic case of great vessels outside the heart (aorta, pulmonary artery)")
    p.add_argument("--lead-s", default=None,
                   help="LOW,HIGH: start each synthetic series a random LOW-HIGH s earlier (a scanner's pre-contrast "
                        "baseline, with the RV's bolus that the network's 48-frame window often cuts)")
    p.add_argument("--model", default="perfusion-resunet", help="perfusion model: registry name or a run folder's best.pt")
    p.add_argument("--cine-tta", choices=("card",) + tuple(TTA_NAMES), default="card",
                   help="mirroring of the cine network's key images (card: the perfusion card's input.segmentation.cine_tta)")
    p.add_argument("--tta", choices=("card",) + tuple(TTA_NAMES), default="card",
                   help="the perfusion network's own reading of its frames (card: its input.tta)")
    p.add_argument("--cine-model", default=None,
                   help="the key images' cine network: registry name or a unet-light run's best.pt/last.pt, or "
                        "several comma-separated (each a member of the mean; default: the perfusion card's companions)")
    args = p.parse_args()
    refine = not args.no_refine
    paths = [s.strip() for s in args.paths.split(",")]
    if args.model.endswith(".pt"):   # a candidate's weights in the shipped card's place (torch runtime)
        import torch

        model = registry.load_model("perfusion-resunet", runtime="torch")
        model.module.load_state_dict(torch.load(args.model, map_location="cpu", weights_only=True))
        model.module.eval()
    else:
        model = registry.load_model(args.model)
    if args.cine_tta != "card":
        model.card["input"]["segmentation"]["cine_tta"] = args.cine_tta
    if args.tta != "card":
        model.card["input"]["tta"] = args.tta
    cine_model = load_cine_candidate(args.cine_model) if args.cine_model else None
    cine = args.cine_model or registry.default_model("cine")
    result = {"cine_model": cine if args.cine_model else f"{cine} v{registry.get_card(cine).get('version', '1')}", "refine": refine, "paths": {},
              "cine_tta": model.card["input"]["segmentation"].get("cine_tta"), "tta": model.card["input"].get("tta")}
    seconds = {path: [] for path in paths}

    def timed(study, path):
        t0 = time.perf_counter()
        labels = segment(study, model, path, refine, cine_model)
        seconds[path].append(time.perf_counter() - t0)
        return labels

    for path in paths:
        result["paths"][path] = {"aif_detection": [], "synthetic": []}
    for n in (1, 2, 3):
        study0, truth = aif_detection_study(n)
        for path in paths:
            study, _ = aif_detection_study(n)
            pred = timed(study, path)[0][0]
            result["paths"][path]["aif_detection"].append({"lv": dice(pred == LV, truth == 1), "rv": dice(pred == RV, truth == 2)})
    for name, study0, truth in synthetic_fullfov_cases(args.cases, args.size, args.seed, args.vessels,
                                                   lead_range(args.lead_s)):
        for path in paths:
            study = dataclasses.replace(study0, provenance={})
            try:
                pred = timed(study, path)[0][0]
            except Exception as error:   # a failure counts as a miss, and is shown
                print(f"{name}: {path}: {type(error).__name__}: {error}")
                pred = np.zeros_like(truth)
            result["paths"][path]["synthetic"].append([dice(pred == c, truth == c) for c in (LV, MYO, RV)])
    for series in ("rest", "stress"):
        for path in paths:
            study = load_study(SHARED / "qperf", series=series)
            labels = timed(study, path)
            rest = result["paths"][path].get("_rest_analysis")
            a = Analysis(study, labels, rest=rest).run()
            if series == "rest":
                result["paths"][path]["_rest_analysis"] = a
            images = a._curves[0][:, 0]   # the frames the MBF fit saw (motion-corrected)
            result["paths"][path][f"qperf_{series}"] = {
                "global_mbf": float(a.perfusion["global_mbf_ml_min_g"]),
                "blood_like": blood_like_fraction(images, study.aif, labels[0][0]),
                "myo_pixels": int((labels[0][0] == MYO).sum())}

    header = ("| path | aif_detection LV Dice (3 real) | synthetic full-FOV Dice LV / MYO (median) / RV | "
              "QPerf rest MBF | QPerf stress MBF | blood-like rest / stress | s per series |")
    print(f"cine model {result['cine_model']} (key images read: {result['cine_tta'] or 'as its card'}; perfusion network's frames: {result['tta']}), "
          f"bolus check {'on' if refine else 'off'}, "
          f"{args.cases} synthetic cases of {args.size} px (seed {args.seed})")
    print(header)
    print("|" + "---|" * header.count(" | ") + "---|")
    for path in paths:
        r = result["paths"][path]
        r.pop("_rest_analysis", None)
        lv = [x["lv"] for x in r["aif_detection"]]
        syn = np.asarray(r["synthetic"])
        r["summary"] = {"aif_detection_lv_mean": float(np.mean(lv)), "aif_detection_lv": lv,
                        "synthetic_lv": float(syn[:, 0].mean()), "synthetic_myo": float(syn[:, 1].mean()),
                        "synthetic_myo_median": float(np.median(syn[:, 1])), "synthetic_rv": float(syn[:, 2].mean()),
                        "synthetic_myo_below_0.5": int((syn[:, 1] < 0.5).sum()),
                        "seconds_median": float(np.median(seconds[path]))}
        s, qr, qs = r["summary"], r["qperf_rest"], r["qperf_stress"]
        print(f"| {path} | {s['aif_detection_lv_mean']:.3f} ({', '.join(f'{v:.2f}' for v in lv)}) | "
              f"{s['synthetic_lv']:.3f} / {s['synthetic_myo']:.3f} ({s['synthetic_myo_median']:.3f}) / {s['synthetic_rv']:.3f} | "
              f"{qr['global_mbf']:.2f} | {qs['global_mbf']:.2f} | {100 * qr['blood_like']:.0f} % / {100 * qs['blood_like']:.0f} % | "
              f"{s['seconds_median']:.2f} |")
    if args.out:
        Path(args.out).write_text(json.dumps(result, indent=1))


if __name__ == "__main__":
    main()
