"""Perfusion segmentation on a wide field of view: synthetic first-pass series built on the
held-out ACDC patients' whole images (not heart crops), network alone vs the bolus heart crop.
``synthetic_fullfov_cases`` is shared with tools/compare_perfusion_segmenters.py.

Real full-field perfusion with expert masks is not in ../shared; this measures the part that
can be measured here: whether the heart is found and segmented when the chest, liver and arms
are in view. Usage: python tools/evaluate_perfusion_fullfov.py [--cases N] [--size PX]
"""
import argparse
import json
import time
from pathlib import Path

import numpy as np

SHARED = Path(__file__).resolve().parents[2] / "shared" / "data"


FRAME_S = 0.5   # frame interval of the synthetic series


def lead_range(text):
    """``--lead-s LOW,HIGH`` -> (low, high) seconds, or None."""
    return None if text is None else tuple(float(v) for v in text.split(","))


def dice(a, b):
    return float(2 * (a & b).sum() / max(1, a.sum() + b.sum()))


def synthetic_fullfov_cases(cases, size=160, seed=0, vessels=0.0, lead_s=None):
    """Yields (name, study, truth labels (R, C)) for ``cases`` synthetic first-pass series built on
    the held-out ACDC patients' whole images (``perfusion_synth.synth_sample`` at ``size`` px of
    1.4-3.6 mm), half in Gd units, half as signal intensity. The same seed gives the same cases;
    ``vessels`` (a chance per case) adds great vessels outside the heart to the same series.
    ``lead_s`` (low, high): each series starts a random lead of that many seconds earlier, with
    that many more frames: the pre-contrast baseline and the RV's bolus a scanner records, which
    the network's 48-frame window (the default) often cuts."""
    from CardiacAISegLib.labels import LV, MYO
    from CardiacAISegLib.models import registry
    from CardiacAISegLib.models.perfusion_synth import N_FRAMES, synth_sample
    from CardiacAISegLib.readers.acdc import load_acdc_patient
    from CardiacAISegLib.study import Study, affine_from_spacing

    card = registry.get_card("perfusion-resunet")
    split = card["training"]["split"]
    split = json.loads(split.replace("'", '"')) if isinstance(split, str) else split
    patients = split["val"]   # held out from the perfusion and the cine networks alike
    rng = np.random.default_rng(seed)
    n = 0
    while n < cases:
        name = patients[n % len(patients)]
        st = load_acdc_patient(SHARED / "acdc" / name)
        lab3 = st.labels[st.ed_frame]
        # a slice beside the largest LV; clipped, since -1 from slice 0 took the apex (numpy's
        # wrap-around) for a case still named as the base's neighbour (probe 61)
        k = int(np.clip(np.argmax((lab3 == LV).sum(axis=(1, 2))) + rng.integers(-1, 2), 0, lab3.shape[0] - 1))
        img = st.images[st.ed_frame, k]
        img = img / max(float(np.percentile(img, 99.5)), 1e-6)
        sp = st.spacing
        case_seed = int(rng.integers(1 << 30))
        pixel_mm = np.random.default_rng(case_seed).uniform(1.4, 3.6)   # synth_sample's first draw
        signal = bool(rng.random() < 0.5)
        lead_frames = 0 if lead_s is None else int(round(np.random.default_rng(case_seed + 2).uniform(*lead_s) / FRAME_S))
        try:
            series, lab, aif = synth_sample(img, lab3[k], (sp[1], sp[0]), np.random.default_rng(case_seed), size=size,
                                            signal=signal, vessels=vessels,
                                            vessel_rng=np.random.default_rng(case_seed + 1), dt=FRAME_S,
                                            lead_s=lead_frames * FRAME_S, frames=N_FRAMES + lead_frames)
        except ValueError:   # a slice with no labels left after the crop
            continue
        if not (lab == MYO).any():
            continue
        n += 1
        study = Study(images=series[:, None], ijk_to_ras=affine_from_spacing((pixel_mm, pixel_mm, 8.0)), kind="perfusion",
                      frame_times_s=np.arange(series.shape[0]) * FRAME_S, aif=aif.astype(np.float64),
                      units="signal" if signal else "gd_mmol_l")
        yield f"{name} slice {k + 1}", study, lab


def main():
    from CardiacAISegLib.labels import LV, MYO, RV
    from CardiacAISegLib.models import perfusion_segmentation, registry

    p = argparse.ArgumentParser()
    p.add_argument("--cases", type=int, default=30)
    p.add_argument("--size", type=int, default=160, help="field of view in pixels (at 1.4-3.6 mm)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--no-refine", action="store_true", help="the network's masks without the bolus check")
    p.add_argument("--vessels", type=float, default=0.0, help="chance per case of great vessels outside the heart")
    p.add_argument("--lead-s", default=None,
                   help="LOW,HIGH: start each synthetic series a random LOW-HIGH s earlier (a scanner's pre-contrast "
                        "baseline, with the RV's bolus that the network's 48-frame window often cuts)")
    args = p.parse_args()

    model = registry.load_model("perfusion-resunet")
    rows = {"network alone": [], "bolus heart crop": []}
    timing = []
    for name, study, lab in synthetic_fullfov_cases(args.cases, args.size, args.seed, args.vessels,
                                                   lead_range(args.lead_s)):
        for label, limit in (("network alone", 1e9), ("bolus heart crop", perfusion_segmentation.CROP_WHEN_FOV_OVER_MM)):
            perfusion_segmentation.CROP_WHEN_FOV_OVER_MM = limit
            t0 = time.perf_counter()
            try:
                pred = perfusion_segmentation.segment_perfusion_study(study, model, refine=not args.no_refine, mode="frames")[0][0]
            except Exception as e:   # a series where the bolus finder fails counts as a miss
                print(f"{name}: {label}: {type(e).__name__}: {e}")
                pred = np.zeros_like(lab)
            if label == "bolus heart crop":
                timing.append(time.perf_counter() - t0)
            rows[label].append([dice(pred == c, lab == c) for c in (LV, MYO, RV)])
        perfusion_segmentation.CROP_WHEN_FOV_OVER_MM = 200.0
    print(f"{len(timing)} synthetic full-FOV series ({args.size} px at 1.4-3.6 mm) on the held-out ACDC patients "
          "(perfusion network, frames path)")
    for label, r in rows.items():
        r = np.asarray(r)
        print(f"{label:18s} Dice LV {r[:, 0].mean():.3f}  MYO {r[:, 1].mean():.3f} (median {np.median(r[:, 1]):.3f}, "
              f"<0.5 in {(r[:, 1] < 0.5).sum()})  RV {r[:, 2].mean():.3f}")
    print(f"crop path: {np.median(timing) * 1000:.0f} ms per slice (median)")


if __name__ == "__main__":
    main()
