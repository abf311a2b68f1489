"""Blood mixed into the myocardium's edge pixels (partial volume): what leaving them out, or
subtracting the blood, does to per-segment MBF on the perfusion phantom (docs/models.md,
"Session 43: partial volume, each pixel's own blood share").

The phantom's images are blurred in-plane (Gaussian, ``--blur`` pixels) so that the LV pool's
blood runs into the endocardial pixels and the tissue into the background at the epicardium, as a
scanner's point-spread function does; the true masks and true per-segment MBF stay. Each
myocardial pixel's curve is then written as f * (LV pool curve) + g * (its segment's median
curve) over the first pass (least squares): f is its blood share. Three readings of each
segment's median MBF against the truth: as the engine reads it; pixels with f > ``--max-share``
left out; and every pixel with f > 0.02 corrected to (curve - f * pool) / (1 - f) and fitted again.

Usage: python tools/partial_volume_experiment.py [--blur 0.6 1.0] [--seeds 0 1 2] [--max-share 0.03]
"""
import argparse

import numpy as np


def blood_share(images, aif, labels, segment_map):
    """(K, R, C) each myocardial pixel's blood share f (NaN elsewhere), read against its slice's
    eroded LV pool curve and its AHA segment's median curve over the first pass."""
    from scipy import ndimage

    from CardiacAISegLib.labels import LV, MYO
    from CardiacAISegLib.perfusion.mbf import find_foot, subtract_baseline

    foot = find_foot(aif)
    share = np.full(labels.shape, np.nan)
    for k in range(labels.shape[0]):
        pool = ndimage.binary_erosion(labels[k] == LV, iterations=1)
        myo = labels[k] == MYO
        if pool.sum() < 4 or not myo.any():
            continue
        blood = subtract_baseline(images[:, k][:, pool].mean(1), foot)
        peak = int(np.argmax(blood))
        window = slice(max(foot - 1, 0), min(len(blood), peak + 2 * (peak - foot) + 1))
        curves = subtract_baseline(images[:, k][:, myo].T, foot)[:, window]
        ids = segment_map[k][myo]
        where = np.argwhere(myo)
        for sid in np.unique(ids):
            sel = ids == sid
            basis = np.stack([blood[window], np.median(curves[sel], 0)], 1)
            coef, *_ = np.linalg.lstsq(basis, curves[sel].T, rcond=None)
            share[k][tuple(where[sel].T)] = coef[0]
    return share


def segment_errors(mbf, segment_map, truth, keep):
    """Per-segment median MBF error (%) against the phantom's truth."""
    return np.array([100 * (np.median(mbf[keep & (segment_map == sid)]) / value - 1)
                     for sid, value in truth["mbf_per_segment"].items()])


def main():
    from scipy import ndimage

    from CardiacAISegLib.analysis import Analysis
    from CardiacAISegLib.labels import LV, MYO
    from CardiacAISegLib.perfusion.mbf import find_foot, mbf_map
    from CardiacAISegLib.phantoms.phantom_perfusion import make_perfusion_phantom

    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--blur", type=float, nargs="+", default=[0.0, 0.6, 1.0])
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    p.add_argument("--max-share", type=float, default=0.03)
    args = p.parse_args()
    print("blur  series  seed | as read: median err, median |err|, max |err| | left out f > max-share (kept) | corrected")
    for blur in args.blur:
        for stress in (True, False):
            for seed in args.seeds:
                study, truth = make_perfusion_phantom(seed=seed, stress=stress, noise=0.02)
                if blur:
                    study.images = ndimage.gaussian_filter(study.images, (0, 0, blur, blur))
                a = Analysis(study, study.labels).run()
                images, aif, times = a._curves
                labels, segments = a.labels[a.reference_frame], truth["segment_map"]
                share = blood_share(images, aif, labels, segments)
                read = np.isfinite(a.mbf)
                left = read & ~(share > args.max_share)
                corrected, foot = images.copy(), find_foot(aif)
                for k in range(labels.shape[0]):
                    pool = ndimage.binary_erosion(labels[k] == LV, iterations=1)
                    blood = images[:, k][:, pool].mean(1)
                    blood = blood - blood[:max(foot, 1)].mean()
                    mixed = (labels[k] == MYO) & (share[k] > 0.02)
                    f = np.clip(share[k][mixed], 0, 0.8)
                    corrected[:, k][:, mixed] = (images[:, k][:, mixed] - f * blood[:, None]) / (1 - f)
                refit, _ = mbf_map(corrected, labels == MYO, aif, float(np.median(np.diff(times))), density=a.density)

                def summary(errors):
                    return f"{np.median(errors):+6.1f} {np.median(np.abs(errors)):5.1f} {np.max(np.abs(errors)):6.1f}"

                print(f"{blur:4.1f}  {'stress' if stress else 'rest  '}  {seed:4d} | {summary(segment_errors(a.mbf, segments, truth, read))} | "
                      f"{summary(segment_errors(a.mbf, segments, truth, left))} ({left.sum() / read.sum():.2f}) | "
                      f"{summary(segment_errors(refit, segments, truth, np.isfinite(refit)))}", flush=True)


if __name__ == "__main__":
    main()
