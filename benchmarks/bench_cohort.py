"""Cohort throughput: N studies by one `cardiacaiseg batch` vs N separate `cardiacaiseg analyze`
processes, in the same run, on the same cores.

Studies: the first N ACDC patients of ../shared/data/acdc (Bernard et al. IEEE TMI 2018), with
the network (``--model``: the default cine model) or with their ground-truth labels
(``--labels study``). The separate processes run ``--cores`` at a time (as a shell loop with
``xargs -P`` would); the batch runs a LocalCluster with ``--cores`` worker processes. Both write
their default outputs: seg.nrrd and results.json/csv for every study (no scene.mrb, which needs
--scene); report.png for every study from `analyze`, and from `batch` by its ``--reports`` (default
``flagged``: the studies QC asks to review; ``--reports all`` here for a report.png each). ``ratio`` is studies per
second of the batch over studies per second of the separate processes (wall clock);
``cpu_ratio`` the same in CPU seconds of all the processes each way, which other programs on a
shared machine disturb less than the wall clock.

    python benchmarks/bench_cohort.py [--n 12] [--cores 2] [--labels] [--reports flagged|all|none] [--json out.json]
"""
import argparse
import csv
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path


def _become_subreaper():
    """Linux: orphaned descendants (a helper process whose parent exited without waiting for it,
    such as multiprocessing's resource tracker) become this process's children, so that
    ``_children_cpu`` counts them too once reaped."""
    try:
        import ctypes

        PR_SET_CHILD_SUBREAPER = 36
        return ctypes.CDLL(None, use_errno=True).prctl(PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0) == 0
    except (OSError, AttributeError):
        return False


def _reap_orphans(timeout=10.0):
    """Wait for the orphans handed to this subreaper (they end when their parent's pipes close)."""
    end = time.time() + timeout
    while time.time() < end:
        try:
            pid, _ = os.waitpid(-1, os.WNOHANG)
        except ChildProcessError:
            return   # no children left
        if pid == 0:
            time.sleep(0.05)


def _children_cpu():
    """CPU seconds (user + system) of the finished child processes and their waited-for descendants
    (the batch's Dask scheduler, nannies and workers included)."""
    _reap_orphans()
    r = resource.getrusage(resource.RUSAGE_CHILDREN)
    return r.ru_utime + r.ru_stime


def main():
    here = Path(__file__).resolve().parent
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--n", type=int, default=12, help="studies")
    p.add_argument("--cores", type=int, default=2, help="parallel analyze processes = batch workers")
    p.add_argument("--labels", action="store_true", help="use the ACDC ground-truth labels (no network)")
    p.add_argument("--data", default=str(here.parent.parent / "shared" / "data" / "acdc"))
    p.add_argument("--reports", default="flagged", choices=["flagged", "all", "none"],
                   help="the batch's --reports (default: its default, report.png for QC-review studies only; "
                        "every separate analyze writes one)")
    p.add_argument("--json", help="write the numbers here")
    args = p.parse_args()
    subreaper = _become_subreaper()
    patients = sorted(d for d in Path(args.data).iterdir() if d.is_dir() and d.name.startswith("patient"))[: args.n]
    if len(patients) < args.n:
        sys.exit(f"{args.data}: only {len(patients)} ACDC patients, {args.n} asked for")
    cli = [sys.executable, "-m", "CardiacAISegLib.cli"]
    labels = ["--labels", "study"] if args.labels else []
    # one core per process for both, as each of --cores batch workers gets
    env = {**os.environ, "OMP_NUM_THREADS": "1", "CARDIACAISEG_THREADS": str(max(1, (os.cpu_count() or 1) // args.cores))}
    with tempfile.TemporaryDirectory(prefix="bench_cohort_") as tmp:
        tmp = Path(tmp)

        def analyze(patient):
            subprocess.run(cli + ["analyze", str(patient), "--out", str(tmp / "separate" / patient.name), "--quiet"] + labels,
                           check=True, stdout=subprocess.DEVNULL, env=env)

        t0, c0 = time.perf_counter(), _children_cpu()
        with ThreadPoolExecutor(args.cores) as pool:
            list(pool.map(analyze, patients))
        separate_s, separate_cpu = time.perf_counter() - t0, _children_cpu() - c0

        manifest = tmp / "cohort.csv"
        with open(manifest, "w", newline="") as f:
            w = csv.writer(f)
            w.writerow(["study", "path"])
            w.writerows([[d.name, str(d)] for d in patients])
        t0, c0 = time.perf_counter(), _children_cpu()
        subprocess.run(cli + ["batch", str(manifest), "--out", str(tmp / "batch"), "--workers", str(args.cores), "--quiet",
                             "--reports", args.reports] + labels, check=True, stdout=subprocess.DEVNULL, env=env)
        batch_s, batch_cpu = time.perf_counter() - t0, _children_cpu() - c0
        with open(tmp / "batch" / "cohort.csv", newline="") as f:
            statuses = [r["status"] for r in csv.DictReader(f)]
        batch_reports = sum((tmp / "batch" / d.name / "report.png").is_file() for d in patients)
        # the same numbers both ways
        for d in patients:
            a = json.loads((tmp / "separate" / d.name / "results.json").read_text())["cine"]
            b = json.loads((tmp / "batch" / d.name / "results.json").read_text())["cine"]
            assert abs(a["lv_edv_ml"] - b["lv_edv_ml"]) < 1e-6 * max(1.0, a["lv_edv_ml"]), d.name
    result = {"studies": args.n, "cores": args.cores, "segmentation": "labels" if args.labels else "network",
              "separate_s": round(separate_s, 1), "batch_s": round(batch_s, 1),
              "separate_studies_per_min": round(60 * args.n / separate_s, 1),
              "batch_studies_per_min": round(60 * args.n / batch_s, 1), "ratio": round(separate_s / batch_s, 2),
              "separate_cpu_s": round(separate_cpu, 1), "batch_cpu_s": round(batch_cpu, 1),
              "cpu_ratio": round(separate_cpu / batch_cpu, 2),
              "separate_cpu_s_per_study": round(separate_cpu / args.n, 2), "batch_cpu_s_per_study": round(batch_cpu / args.n, 2),
              "batch_reports": args.reports, "batch_report_png_written": batch_reports, "load_average_1min_at_end": round(os.getloadavg()[0], 1),
              "orphans_counted": subreaper,
              "batch_statuses": {s: statuses.count(s) for s in sorted(set(statuses))}}
    print(json.dumps(result, indent=1))
    if args.json:
        Path(args.json).write_text(json.dumps(result, indent=1))


if __name__ == "__main__":
    main()
