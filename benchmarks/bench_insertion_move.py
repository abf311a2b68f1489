"""Interactive updates of the Slicer module, timed through CardiacAISegLogic on real MRML nodes.

The case is the default cine phantom (20 frames, 10 slices of 128 x 128, true labels). A drag of
an RV insertion handle is: set the markups control point -> ``onInsertionPointMoved`` (re-bin
that slice's AHA sectors, refresh the segment values, refill the results table node). Its
median is the number that must stay under the 100 ms target. For context the table also shows
the two parts of a move alone and a Segment Editor stroke (``onSegmentationEdited``: re-read
the segmentation, recompute volumes, mass, geometry, sectors and table).

Each step runs once to warm up, then ``--runs`` times over a cycle of positions on every mid
and basal slice; threads are limited to ``--cores`` (default 2) before numpy is imported.

    python benchmarks/bench_insertion_move.py [--runs 50] [--cores 2]
"""
import argparse
import os
import time

TARGET_MS = 100.0


def _limit_cores(n):
    for var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS", "NUMEXPR_NUM_THREADS"):
        os.environ[var] = str(n)
    try:
        os.sched_setaffinity(0, sorted(os.sched_getaffinity(0))[:n])
    except (AttributeError, OSError):
        pass


def _timed(fn, runs):
    fn(0)
    out = []
    for i in range(runs):
        t0 = time.perf_counter()
        fn(i + 1)
        out.append(1000.0 * (time.perf_counter() - t0))
    return out


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--runs", type=int, default=50)
    p.add_argument("--cores", type=int, default=2)
    args = p.parse_args()
    _limit_cores(args.cores)

    import numpy as np

    from CardiacAISegLib import scene as sc
    from CardiacAISegLib.labels import MYO
    from CardiacAISegLib.logic import CardiacAISegLogic, fill_table
    from CardiacAISegLib.phantoms.phantom import make_cine_phantom

    study, _ = make_cine_phantom(seed=0)
    logic = CardiacAISegLogic(sc.new_scene())
    logic.setStudy(study)
    a = logic.runSegmentation(useExistingLabels=True)
    markups = logic.getNodeParameter("markupsID")
    table = logic.getNodeParameter("tableID")
    labels = [markups.GetNthControlPointLabel(n) for n in range(markups.GetNumberOfControlPoints())]
    handles = []
    for k, level in sorted(a.levels.items()):
        if level in ("basal", "mid") and f"S{k} anterior" in labels:
            n = labels.index(f"S{k} anterior")
            pos = np.zeros(3)
            markups.GetNthControlPointPosition(n, pos)
            centre = np.array([q["centre_ras"] for q in a.insertion if q["slice"] == k][0])
            handles.append((k, n, pos, centre))
    normal = study.slice_normal

    def position(i):
        k, n, pos, centre = handles[i % len(handles)]
        ang = np.radians(((i // len(handles)) % 9 - 4) * 3.0)      # -12 .. +12 degrees
        r = pos - centre
        return k, n, centre + r * np.cos(ang) + np.cross(normal, r) * np.sin(ang)

    def drag(i):
        k, n, ras = position(i)
        markups.SetNthControlPointPosition(n, *ras)
        logic.onInsertionPointMoved(markups, n)

    def analysis_only(i):
        k, _, ras = position(i)
        a.move_insertion_point(k, "anterior", ras)

    rows = a.table_rows()

    def table_only(i):
        fill_table(table, rows)

    seg = logic.getNodeParameter("outputSegmentationID")
    ed = a.cine["ed_frame"]
    base = a.labels[ed].copy()
    ring = np.argwhere(base == MYO)

    def stroke(i):
        # A paint/erase stroke alternates: remove then restore 30 myocardial voxels.
        lab = base.copy()
        if i % 2:
            for v in ring[i % 50::97][:30]:
                lab[tuple(v)] = 0
        from CardiacAISegLib.logic import fill_segmentation
        fill_segmentation(seg, lab, study.ijk_to_ras)
        logic.onSegmentationEdited(seg, ed)

    cases = [("insertion-point move -> table node (target)", drag),
             ("  Analysis.move_insertion_point alone", analysis_only),
             ("  results table refill alone", table_only),
             ("segmentation edit -> measures -> table", stroke)]
    print(f"cine phantom {study.images.shape} (frames, slices, rows, cols); {len(handles)} handles; "
          f"{args.runs} runs after a warm-up; {args.cores} core(s)\n")
    print(f"| {'update':46s} | median ms | p90 ms | max ms | target ms |")
    print(f"|{'-' * 48}|-----------|--------|--------|-----------|")
    medians = {}
    for name, fn in cases:
        t = np.array(_timed(fn, args.runs))
        medians[fn] = float(np.median(t))
        target = f"{TARGET_MS:.0f}" if "target" in name else ""
        print(f"| {name:46s} | {np.median(t):9.2f} | {np.percentile(t, 90):6.2f} | {t.max():6.2f} | {target:>9s} |")
    move = medians[drag]
    print(f"\ninsertion-point move: median {move:.2f} ms, {'within' if move <= TARGET_MS else 'OVER'} the {TARGET_MS:.0f} ms target")


if __name__ == "__main__":
    main()
