"""Are two `cardiacaiseg analyze` output folders the same in content? (issue 14: a faster release
must give the same measures within 1e-6, the same label maps and the same picture.)

Compares results.json value by value (relative 1e-6; timings, paths and the model's load
details are left out: they differ run to run), results.csv cell by cell, the seg.nrrd label maps
voxel by voxel with their geometry, and report.png pixel by pixel. Exit 0 when all agree, 1 with
a list of the differences otherwise.

    python tools/compare_outputs.py OLD_OUT NEW_OUT

To compare two commits, run one analyze per commit (a `git worktree` of the old one with
PYTHONPATH pointing at its CardiacAISeg folder) into two folders, then this script.
"""
import argparse
import csv
import json
import math
import sys
from pathlib import Path

import numpy as np

SKIPPED_KEYS = {"timing_s", "input", "model"}
TOLERANCE = 1e-6


def json_differences(a, b, where=""):
    if isinstance(a, dict) and isinstance(b, dict):
        out = []
        for key in sorted(set(a) | set(b)):
            if key in SKIPPED_KEYS and not where:
                continue
            if key not in a or key not in b:
                out.append(f"{where}/{key}: only in {'new' if key in b else 'old'}")
            else:
                out += json_differences(a[key], b[key], f"{where}/{key}")
        return out
    if isinstance(a, list) and isinstance(b, list):
        if len(a) != len(b):
            return [f"{where}: {len(a)} items vs {len(b)}"]
        return [d for n, (x, y) in enumerate(zip(a, b)) for d in json_differences(x, y, f"{where}[{n}]")]
    if isinstance(a, (int, float)) and isinstance(b, (int, float)) and not isinstance(a, bool):
        if a == b or (math.isnan(a) and math.isnan(b)) or abs(a - b) <= TOLERANCE * max(1.0, abs(a)):
            return []
        return [f"{where}: {a!r} vs {b!r}"]
    return [] if a == b else [f"{where}: {str(a)[:80]!r} vs {str(b)[:80]!r}"]


def csv_differences(old, new):
    rows_a, rows_b = (list(csv.reader(p.open())) for p in (old, new))
    if len(rows_a) != len(rows_b):
        return [f"{new.name}: {len(rows_a)} rows vs {len(rows_b)}"]
    out = []
    for n, (ra, rb) in enumerate(zip(rows_a, rows_b)):
        for m, (x, y) in enumerate(zip(ra, rb)):
            if x == y:
                continue
            try:
                if abs(float(x) - float(y)) <= TOLERANCE * max(1.0, abs(float(x))):
                    continue
            except ValueError:
                pass
            out.append(f"{new.name} row {n} column {m}: {x!r} vs {y!r}")
    return out


def seg_differences(old, new):
    from CardiacAISegLib.seg_nrrd import read_seg_nrrd

    (la, ma, _), (lb, mb, _) = read_seg_nrrd(old), read_seg_nrrd(new)
    if la.shape != lb.shape:
        return [f"{new.name}: shape {la.shape} vs {lb.shape}"]
    out = [] if np.allclose(ma, mb, atol=1e-6) else [f"{new.name}: geometry differs"]
    changed = int((la != lb).sum())
    return out + ([f"{new.name}: {changed} voxels differ"] if changed else [])


def png_differences(old, new):
    from PIL import Image

    a, b = np.asarray(Image.open(old)), np.asarray(Image.open(new))
    if a.shape != b.shape:
        return [f"{new.name}: size {a.shape} vs {b.shape}"]
    changed = int((a != b).any(axis=-1).sum()) if a.ndim == 3 else int((a != b).sum())
    return [f"{new.name}: {changed} pixels differ"] if changed else []


def compare(old_dir, new_dir):
    old_dir, new_dir = Path(old_dir), Path(new_dir)
    names_a = {p.name for p in old_dir.iterdir() if not p.name.startswith(".")}
    names_b = {p.name for p in new_dir.iterdir() if not p.name.startswith(".")}
    out = [f"{n}: only in {'new' if n in names_b else 'old'}" for n in sorted(names_a ^ names_b)]
    for name in sorted(names_a & names_b):
        a, b = old_dir / name, new_dir / name
        if name.endswith(".json"):
            out += [f"{name}{d}" for d in json_differences(json.loads(a.read_text()), json.loads(b.read_text()))]
        elif name.endswith(".csv"):
            out += csv_differences(a, b)
        elif name.endswith(".seg.nrrd"):
            out += seg_differences(a, b)
        elif name.endswith(".png"):
            out += png_differences(a, b)
        elif a.read_bytes() != b.read_bytes():
            out.append(f"{name}: bytes differ")
    return out


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("old")
    ap.add_argument("new")
    args = ap.parse_args(argv)
    differences = compare(args.old, args.new)
    for d in differences:
        print(d)
    print(f"{len(differences)} difference(s) between {args.old} and {args.new}")
    return 1 if differences else 0


if __name__ == "__main__":
    sys.exit(main())
