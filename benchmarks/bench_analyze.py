"""Stage timings of the analyze pipeline (`cardiacaiseg analyze`), median of several runs.

Cases
- ``qperf-stress``: the QPerf stress example (../shared/data/qperf, Xue et al. MRM 2020; one
  mid slice, 40x37, 59 frames). It has no labels, so a myocardial ring around the LV blood
  pool is drawn the way Testing/Python/test_mbf.py does it and written as a NIfTI label map
  in the ACDC convention (3 LV blood pool, 2 myocardium).
- ``acdc-patient001``: ACDC patient001 (Bernard et al. IEEE TMI 2018) with ``--labels study``.
- ``phantom-3slice``: a 3-slice perfusion phantom whose myocardium has about 4,500 pixels
  (``make_perfusion_phantom(size=192, pixel_mm=0.9)``), written as NIfTI + aif.csv: the MBF
  map of this study has the target of 0.3 s on 2 cores.

Stages (results.json ``timing_s``): load, segmentation (only with --model), measures, MBF map,
writing. Each case runs once to warm up (imports, slicer), then ``--runs`` times; the table
gives the median, min and max. Threads are limited to ``--cores`` (default 2) and the process
is pinned to that many CPUs before numpy is imported.

    python benchmarks/bench_analyze.py [--runs 5] [--cores 2] [--json out.json]
"""
import argparse
import os
import sys


def _limit_cores(n):
    for var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS", "NUMEXPR_NUM_THREADS"):
        os.environ[var] = str(n)
    try:
        cpus = sorted(os.sched_getaffinity(0))
        os.sched_setaffinity(0, cpus[:n])
    except (AttributeError, OSError):
        pass


def _parse():
    here = os.path.dirname(os.path.abspath(__file__))
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--runs", type=int, default=5, help="timed runs per case (after one warm-up)")
    p.add_argument("--cores", type=int, default=2)
    p.add_argument("--data", default=os.path.join(here, "..", "..", "shared", "data"), help="the shared data folder")
    p.add_argument("--model", help="segment the cine case with this registry model instead of its labels")
    p.add_argument("--cases", default="qperf-stress,acdc-patient001,phantom-3slice,mbf-map-4500px")
    p.add_argument("--json", help="also write the timings here")
    return p.parse_args()


ARGS = _parse() if __name__ == "__main__" else None
if ARGS is not None:
    _limit_cores(ARGS.cores)

import json  # noqa: E402
import statistics  # noqa: E402
import tempfile  # noqa: E402
import time  # noqa: E402
from pathlib import Path  # noqa: E402

import numpy as np  # noqa: E402

from CardiacAISegLib.perfusion.roi import ring_mask  # noqa: E402

STAGES = ("load", "segmentation", "measures", "mbf_map", "mbf_map_cpu", "writing")
TARGETS = {("phantom-3slice", "mbf_map"): 0.3, ("mbf-map-4500px", "mbf_map"): 0.3}
KERNEL_PIXELS = 4500
PHANTOM_OPTIONS = dict(seed=11, size=192, pixel_mm=0.9)


# ---------------------------------------------------------------------------- inputs
def _write_labels_nifti(path, labels_skji, ijk_to_ras):
    """(S, R, C) internal labels -> NIfTI (i, j, k) in the ACDC convention (3 LV, 2 myo, 1 RV)."""
    import nibabel as nib

    from CardiacAISegLib.labels import to_convention

    data = to_convention(labels_skji, "acdc").transpose(2, 1, 0)
    nib.save(nib.Nifti1Image(data.astype(np.uint8), np.asarray(ijk_to_ras, float)), str(path))


def prepare_qperf(data, work):
    from CardiacAISegLib.labels import LV, MYO
    from CardiacAISegLib.readers import load_study

    folder = Path(data) / "qperf"
    study = load_study(folder, series="stress")
    pool, ring = ring_mask(study.images[:, 0], study.aif)
    lab = np.zeros(study.images.shape[1:], np.uint8)
    lab[0][pool] = LV
    lab[0][ring] = MYO
    path = Path(work) / "qperf_stress_ring.nii.gz"
    _write_labels_nifti(path, lab, study.ijk_to_ras)
    info = f"{study.images.shape[2]}x{study.images.shape[3]}, 1 slice, {study.n_frames} frames, ring {int(ring.sum())} px"
    return dict(input_path=str(folder), series="stress", labels=str(path)), info


def prepare_acdc(data, model=None):
    folder = Path(data) / "acdc" / "patient001"
    kw = dict(input_path=str(folder))
    kw.update(model=model) if model else kw.update(labels="study")
    return kw, "ACDC patient001, ED + ES, " + (f"model {model}" if model else "ground-truth labels")


def prepare_phantom(work):
    from CardiacAISegLib.labels import MYO
    from CardiacAISegLib.phantoms.phantom import write_phantom

    d = Path(work) / "phantom"
    _, study, _ = write_phantom("perfusion", d, **PHANTOM_OPTIONS)
    n_myo = int((study.labels[0] == MYO).sum())
    dt = json.loads((d / "truth.json").read_text())["dt_s"]
    kw = dict(input_path=str(d / "perfusion.nii.gz"), kind="perfusion", labels=str(d / "perfusion_labels.nii.gz"),
              aif=str(d / "aif.csv"), dt=dt)
    info = f"{study.images.shape[2]}x{study.images.shape[3]}, 3 slices, {study.n_frames} frames, myocardium {n_myo} px"
    return kw, info, n_myo


# ------------------------------------------------------------------------------ timing
def time_case(kw, runs, work):
    """[{stage: seconds}] of ``runs`` analyze runs after one warm-up (each writes all outputs)."""
    from CardiacAISegLib.analyze import run

    out = Path(tempfile.mkdtemp(prefix="out-", dir=work))
    args = dict(kw)
    path = args.pop("input_path")
    timings = []
    for n in range(runs + 1):
        t0 = time.perf_counter()
        run(path, out, force=True, **args)
        total = time.perf_counter() - t0
        doc = json.loads((out / "results.json").read_text())
        t = dict(doc["timing_s"])
        t["total"] = total
        if n:
            timings.append(t)
    return timings


def time_mbf_kernel(runs, n_pixels=KERNEL_PIXELS):
    """``mbf.mbf_map`` alone on exactly ``n_pixels`` myocardial pixels of the 3-slice phantom."""
    from CardiacAISegLib.perfusion import mbf
    from CardiacAISegLib.labels import MYO
    from CardiacAISegLib.phantoms.phantom import make_perfusion_phantom

    study, _ = make_perfusion_phantom(**PHANTOM_OPTIONS)
    myo = study.labels[0] == MYO
    keep = np.zeros(myo.size, bool)
    keep[np.flatnonzero(myo.ravel())[:n_pixels]] = True
    mask = keep.reshape(myo.shape)
    dt = float(np.median(np.diff(study.frame_times_s)))
    timings = []
    for n in range(runs + 1):
        t0, c0 = time.perf_counter(), time.process_time()
        mbf.mbf_map(study.images, mask, study.aif, dt)
        if n:
            # CPU time of all threads: on a busy machine it shows the work without the waiting.
            timings.append({"mbf_map": time.perf_counter() - t0, "mbf_map_cpu": time.process_time() - c0})
    info = f"mbf.mbf_map alone on {int(mask.sum())} pixels of the phantom, 3 slices, {study.n_frames} frames"
    return timings, info


def summarise(case, timings):
    rows = []
    for stage in STAGES + ("total",):
        values = [t[stage] for t in timings if stage in t]
        if not values:
            continue
        med = statistics.median(values)
        target = TARGETS.get((case, stage))
        rows.append({"case": case, "stage": stage, "median_s": med, "min_s": min(values), "max_s": max(values),
                     "target_s": target, "ratio": med / target if target else None, "runs": len(values)})
    return rows


def print_table(rows, infos, cores, runs):
    load = ", load average %.1f" % os.getloadavg()[0] if hasattr(os, "getloadavg") else ""
    print(f"\nanalyze stage timings: median of {runs} runs after a warm-up, {cores} cores "
          f"(numpy {np.__version__}, {os.cpu_count()} CPUs on the machine{load})\n")
    for case, info in infos.items():
        print(f"  {case:18s} {info}")
    print()
    head = f"{'case':18s} {'stage':13s} {'median s':>9s} {'min s':>8s} {'max s':>8s} {'target s':>9s} {'ratio':>6s}"
    print(head)
    print("-" * len(head))
    last = None
    for r in rows:
        if last is not None and r["case"] != last:
            print()
        last = r["case"]
        target = f"{r['target_s']:.2f}" if r["target_s"] else "-"
        ratio = f"{r['ratio']:.2f}" if r["ratio"] else "-"
        print(f"{r['case']:18s} {r['stage']:13s} {r['median_s']:9.3f} {r['min_s']:8.3f} {r['max_s']:8.3f} {target:>9s} {ratio:>6s}")
    print("\nratio = median / target (< 1 meets the target). 'writing' covers segmentation.seg.nrrd, "
          "report.png, results.json/.csv (no scene.mrb: run() writes it only with scene=True); 'total' is the wall time of one run() call; "
          "'mbf_map_cpu' is CPU time summed over threads (the fit is single-threaded, so on an idle machine wall time is about this).")


def main(args):
    cases = [c.strip() for c in args.cases.split(",") if c.strip()]
    data = Path(args.data).resolve()
    rows, infos = [], {}
    with tempfile.TemporaryDirectory(prefix="bench-analyze-") as work:
        for case in cases:
            if case == "qperf-stress":
                if not (data / "qperf").is_dir():
                    print(f"skip {case}: {data / 'qperf'} not found", file=sys.stderr)
                    continue
                kw, info = prepare_qperf(data, work)
            elif case == "acdc-patient001":
                if not (data / "acdc" / "patient001").is_dir():
                    print(f"skip {case}: {data / 'acdc' / 'patient001'} not found", file=sys.stderr)
                    continue
                kw, info = prepare_acdc(data, args.model)
            elif case == "phantom-3slice":
                kw, info, n_myo = prepare_phantom(work)
                if not 4000 <= n_myo <= 5000:
                    print(f"warning: phantom myocardium has {n_myo} pixels, not about 4,500", file=sys.stderr)
            elif case == "mbf-map-4500px":
                timings, infos[case] = time_mbf_kernel(args.runs)
                rows += summarise(case, timings)
                continue
            else:
                raise SystemExit(f"unknown case {case!r}")
            infos[case] = info
            rows += summarise(case, time_case(kw, args.runs, work))
    print_table(rows, infos, args.cores, args.runs)
    if args.json:
        Path(args.json).write_text(json.dumps({"cores": args.cores, "runs": args.runs, "cases": infos, "rows": rows}, indent=1))
    failed = [r for r in rows if r["ratio"] and r["ratio"] > 1]
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main(ARGS))
