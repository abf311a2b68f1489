"""The grid behind perfusion_refine's defaults: phantom MYO Dice and QPerf rest/stress MBF for
gap 0/1 px x wall bound 0.6/0.9/1.0 of the pool radius, on the shipped network's raw masks.

Also prints the QPerf radial enhancement profile outside the blood pool (median per 1-px band
at AIF peak + 6 frames), the only label-free evidence of where the wall ends.
Usage: python tools/tune_perfusion_refine.py   (needs ../shared/data/qperf)
"""
import itertools
from pathlib import Path

import numpy as np

QPERF = Path(__file__).resolve().parents[2] / "shared" / "data" / "qperf"


def dice(a, b):
    return 2 * (a & b).sum() / (a.sum() + b.sum())


def main():
    from CardiacAISegLib.analysis import Analysis
    from CardiacAISegLib.models.perfusion_segmentation import segment_perfusion_study
    from CardiacAISegLib.models.perfusion_refine import refine_slice
    from CardiacAISegLib.models.registry import load_model
    from CardiacAISegLib.phantoms.phantom import make_perfusion_phantom
    from CardiacAISegLib.readers import load_study

    model = load_model("perfusion-resunet")
    phantoms = []
    for seed in range(6):
        study, _ = make_perfusion_phantom(seed=100 + seed, stress=seed % 2 == 0, noise=0.01)
        phantoms.append((study, next(iter(study.labels.values())), segment_perfusion_study(study, model, refine=False)[0]))
    real = []
    for series in ("rest", "stress"):
        study = load_study(QPERF, series=series)
        real.append((series, study, segment_perfusion_study(study, model, refine=False)[0]))

    from scipy import ndimage

    from CardiacAISegLib.models.perfusion_refine import blood_pool_from_bolus
    from CardiacAISegLib.perfusion.roi import peak_image

    for series, study, raw in real:
        frames = study.images[:, 0]
        pool, _ = blood_pool_from_bolus(frames, peak_image(frames, study.aif), int(np.argmax(study.aif)), raw[0] == 1, raw[0] == 3)
        dist = ndimage.distance_transform_edt(~pool)
        late = frames[int(np.argmax(study.aif)) + 6]
        bands = [float(np.median(late[(dist > d - 1) & (dist <= d)])) for d in range(1, 12)]
        print(f"QPerf {series}: pool radius {np.sqrt(pool.sum() / np.pi):.1f} px; enhancement at AIF peak + 6 frames, "
              f"1..11 px outside the pool: " + " ".join(f"{b:.2f}" for b in bands))
    for gap, bound in itertools.product([0.0, 1.0], [0.6, 0.9, 1.0]):
        scores = []
        for study, truth, raw in phantoms:
            for k in range(study.n_slices):
                out, _ = refine_slice(study.images[:, k], study.aif, raw[k], gap_px=gap, max_ratio=bound)
                scores.append(dice(out == 2, truth[k] == 2))
        line = [f"gap {gap:.0f} px, bound {bound:.1f}: phantom MYO Dice mean {np.mean(scores):.3f} min {np.min(scores):.3f}"]
        for series, study, raw in real:
            out = raw.copy()
            out[0], _ = refine_slice(study.images[:, 0], study.aif, raw[0], gap_px=gap, max_ratio=bound)
            mbf = Analysis(study, {0: out}).run().perfusion["global_mbf_ml_min_g"]
            line.append(f"QPerf {series} {mbf:.2f} mL/min/g ({int((out[0] == 2).sum())} px)")
        print("; ".join(line))


if __name__ == "__main__":
    main()
