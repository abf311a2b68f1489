"""CPU time of every installed network: model load, per slice and per study (median of runs).

Next to the Xue et al. 2020 anchor (inline on the scanner: 120 ms model load + 250 ms per
slice). Targets: a cine ED+ES stack <= 1 s and a 3-slice perfusion study end to end
(segmentation + MBF map + measures) <= 1 s on 2 cores.

    python benchmarks/bench_models.py [--runs 5] [--threads 2]
"""
import argparse
import statistics
import time
from pathlib import Path

SHARED = Path(__file__).resolve().parents[2] / "shared" / "data"
SAMPLE = Path(__file__).resolve().parents[1] / "CardiacAISeg" / "Resources" / "SampleData" / "sunnybrook-SC-HF-I-1-ed-es" / "dicom"
XUE_LOAD_MS, XUE_SLICE_MS = 120.0, 250.0


def _median_time(fn, runs):
    fn()  # warm-up (first call allocates)
    times = []
    for _ in range(runs):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def _load_time(name):
    from CardiacAISegLib.models import registry

    registry._CACHE.clear()
    t0 = time.perf_counter()
    registry.load_model(name)
    return time.perf_counter() - t0


def bench_cine(card, runs):
    from CardiacAISegLib.models import registry
    from CardiacAISegLib.models.inference import segment_cine_study
    from CardiacAISegLib.readers import load_study

    loaded = registry.load_model(card["name"])
    rows = []
    cases = [("Sunnybrook sample ED+ES", SAMPLE)]
    if (SHARED / "acdc" / "patient001").is_dir():
        cases.append(("ACDC patient001 ED+ES", SHARED / "acdc" / "patient001"))
    for label, path in cases:
        study = load_study(path)
        frames = "all" if study.n_frames <= 2 else "ed_es"
        n_slices = study.n_slices * min(study.n_frames, 2)
        s = _median_time(lambda: segment_cine_study(study, loaded, frames=frames), runs)
        rows.append((card["name"], label, n_slices, 1000 * s / n_slices, s, 1.0))
    return rows


def bench_perfusion(card, runs):
    from CardiacAISegLib.analysis import Analysis
    from CardiacAISegLib.models import registry
    from CardiacAISegLib.models.inference import segment_perfusion_study
    from CardiacAISegLib.phantom import make_perfusion_phantom

    loaded = registry.load_model(card["name"])
    study, _ = make_perfusion_phantom(seed=4, noise=0.02)

    def end_to_end():
        labels = segment_perfusion_study(study, loaded)
        Analysis(study, labels).run()

    seg = _median_time(lambda: segment_perfusion_study(study, loaded), runs)
    total = _median_time(end_to_end, runs)
    return [(card["name"], "phantom 3 slices: segmentation", 3, 1000 * seg / 3, seg, None),
            (card["name"], "phantom 3 slices: end to end", 3, 1000 * total / 3, total, 1.0)]


def main(argv=None):
    import torch

    from CardiacAISegLib.models.registry import list_models

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--runs", type=int, default=5)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--models", help="comma-separated model names (default: all installed)")
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)
    rows, loads = [], []
    wanted = set(args.models.split(",")) if args.models else None
    for card in list_models():
        if wanted and card["name"] not in wanted:
            continue
        loads.append((card["name"], 1000 * _load_time(card["name"])))
        rows += bench_cine(card, args.runs) if card["task"] == "cine" else bench_perfusion(card, args.runs)
    print(f"torch {torch.__version__}, {args.threads} threads, median of {args.runs} runs\n")
    print(f"{'model':20s} {'load ms':>8s}   (Xue 2020 anchor: {XUE_LOAD_MS:.0f} ms)")
    for name, ms in loads:
        print(f"{name:20s} {ms:8.0f}")
    print(f"\n{'model':20s} {'case':38s} {'slices':>6s} {'ms/slice':>9s} {'vs Xue':>7s} {'study s':>8s} {'target s':>8s} {'ratio':>6s}")
    for name, case, n, ms, s, target in rows:
        ratio = f"{s / target:6.2f}" if target else "     -"
        print(f"{name:20s} {case:38s} {n:6d} {ms:9.1f} {ms / XUE_SLICE_MS:7.2f} {s:8.3f} {target or '-':>8} {ratio}")


if __name__ == "__main__":
    main()
