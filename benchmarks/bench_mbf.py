"""Time the pixelwise Fermi MBF map: 4,500 myocardial pixels x 60 frames (target 0.3 s).

Pixels come from the perfusion phantom at 0.9 mm (so 4,500 real myocardial curves with
0.02 mmol/L noise; tissue delay ``--delay-s``, default one frame), timed as the median of
5 runs after one warm-up. The fit searches a continuous delay (-1 to 5 s) with F, tau0
and k; before sub-frame delays (whole frames 0-6 only) the same map took ~0.1 s, now
~0.2 s (about 2x: a 4-parameter LM with a sub-frame shift and the delay grid in seconds).

    python benchmarks/bench_mbf.py [--runs 5] [--pixels 4500] [--delay-s 0.8]

BLAS threads matter on a shared machine: set OPENBLAS_NUM_THREADS=1 to compare; the
fit's matrix products are small (frames x frames), so one thread is often as fast, and
several threads on a loaded machine can be several times slower.
"""
import argparse
import os
import time

import numpy as np

from CardiacAISegLib.labels import MYO
from CardiacAISegLib.perfusion.mbf import fermi_deconvolution
from CardiacAISegLib.phantoms.phantom_perfusion import make_perfusion_phantom

TARGET_S = 0.3


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--runs", type=int, default=5)
    ap.add_argument("--pixels", type=int, default=4500)
    ap.add_argument("--delay-s", type=float, default=None, help="tissue delay (s); default one frame")
    args = ap.parse_args(argv)

    study, _ = make_perfusion_phantom(seed=0, size=192, pixel_mm=0.9, noise=0.02, delay_s=args.delay_s)
    tissue = study.images[:, study.labels[0] == MYO].T[: args.pixels]
    if tissue.shape[0] < args.pixels:
        raise SystemExit(f"phantom has only {tissue.shape[0]} myocardial pixels")
    dt = float(study.frame_times_s[1] - study.frame_times_s[0])
    fit = fermi_deconvolution(tissue, study.aif, dt)                 # warm-up
    times = []
    for _ in range(args.runs):
        t0 = time.perf_counter()
        fit = fermi_deconvolution(tissue, study.aif, dt)
        times.append(time.perf_counter() - t0)
    med = float(np.median(times))
    start, stop = fit["window"]
    print(f"MBF map: {tissue.shape[0]} pixels x {tissue.shape[1]} frames "
          f"(fit window {stop - start} frames), {args.runs} runs, "
          f"OPENBLAS_NUM_THREADS={os.environ.get('OPENBLAS_NUM_THREADS', 'default')}, {os.cpu_count()} CPUs")
    print(f"{'case':<28}{'median s':>10}{'min s':>9}{'target s':>10}{'ratio':>8}")
    print(f"{'fermi_deconvolution':<28}{med:>10.3f}{min(times):>9.3f}{TARGET_S:>10.2f}{med / TARGET_S:>8.2f}")
    print(f"median MBF {np.median(fit['mbf']):.2f} mL/min/g, median r2 {np.median(fit['r2']):.3f}, "
          f"median delay {np.median(fit['delay_s']):.2f} s, reliable {100 * np.mean(fit['reliable']):.0f}% "
          f"(delay at edge {100 * np.mean(fit['at_delay_edge']):.1f}%, at a bound {100 * np.mean(fit['at_bound']):.1f}%)")
    return med


if __name__ == "__main__":
    main()
