"""How much the numbers move when the same study is stored in another in-plane orientation
(rotated or mirrored pixels, the affine following): the default network run on a study and on
its 6 re-stored copies, with test-time augmentation TTA.

Usage:
  python tools/storage_invariance.py none|flip|flip2|dihedral|oriented|oriented4 patientNNN
      the cine default (its card's input.tta) on an ACDC patient: EF and ESV per copy
  python tools/storage_invariance.py none|flip|flip2|dihedral|oriented|oriented4 qperf-stress|qperf-rest [PERFUSION_TTA]
      the perfusion ensemble on a QPerf series, TTA as its cine members' reading (input.segmentation.cine_tta)
      and PERFUSION_TTA as the perfusion network's own (default: its card's): myocardium Dice of each
      copy's labels put back on the given grid, global MBF and the largest segment change

(docs/models.md, session 18: ACDC 061 ESV -1.7 to +20.7 % read once, -1.4 to +1.5 % read in 8 orientations;
session 19: the perfusion ensemble on QPerf)
"""
import sys
from copy import copy
from pathlib import Path

import numpy as np

SHARED = Path(__file__).resolve().parents[2] / "shared" / "data"
# in-plane storage changes on (..., rows, cols) with their inverses
STORAGES = {
    "rot90": (lambda a: np.rot90(a, 1, axes=(-2, -1)), lambda a: np.rot90(a, -1, axes=(-2, -1))),
    "rot180": (lambda a: np.rot90(a, 2, axes=(-2, -1)), lambda a: np.rot90(a, -2, axes=(-2, -1))),
    "rot270": (lambda a: np.rot90(a, 3, axes=(-2, -1)), lambda a: np.rot90(a, -3, axes=(-2, -1))),
    "fliprows": (lambda a: np.flip(a, -2), lambda a: np.flip(a, -2)),
    "flipcols": (lambda a: np.flip(a, -1), lambda a: np.flip(a, -1)),
    "transpose": (lambda a: np.swapaxes(a, -2, -1), lambda a: np.swapaxes(a, -2, -1)),
}


def _restored(study, turn):
    """The study with its pixels stored turned and the affine following, so that every voxel keeps
    its place in the patient (the anatomy's handedness, hence the AHA segments, unchanged)."""
    rows, cols = study.images.shape[-2:]
    old_j, old_i = (turn(a) for a in np.meshgrid(np.arange(rows), np.arange(cols), indexing="ij"))
    # new (i', j') -> old (i, j) is affine: read it off three pixels
    steps = np.array([[old_i[0, 1] - old_i[0, 0], old_i[1, 0] - old_i[0, 0]],
                      [old_j[0, 1] - old_j[0, 0], old_j[1, 0] - old_j[0, 0]]], float)
    new_to_old = np.eye(4)
    new_to_old[:2, :2], new_to_old[:2, 3] = steps, (old_i[0, 0], old_j[0, 0])
    stored = copy(study)
    stored.images, stored.labels = np.ascontiguousarray(turn(study.images)), {}
    stored.ijk_to_ras = study.ijk_to_ras @ new_to_old
    return stored


def cine(tta, patient):
    from CardiacAISegLib.models import registry
    from CardiacAISegLib.pipeline import compute_analysis
    from CardiacAISegLib.readers import load_study

    registry.load_model("unet-light").card["input"]["tta"] = tta   # the cached model the pipeline runs
    study = load_study(SHARED / "acdc" / patient)
    ref = compute_analysis(study).cine
    print(f"{patient}, tta {tta}: stored as given EF {ref['lv_ef_pct']:.1f} % ESV {ref['lv_esv_ml']:.1f} mL")
    for name, (turn, _) in STORAGES.items():
        c = compute_analysis(_restored(study, turn)).cine
        print(f"  {name}: EF {c['lv_ef_pct']:.1f} % ESV {c['lv_esv_ml']:.1f} mL ({100 * (c['lv_esv_ml'] / ref['lv_esv_ml'] - 1):+.1f} %)",
              flush=True)


def perfusion(cine_tta, series, perfusion_tta=None):
    from CardiacAISegLib.labels import MYO
    from CardiacAISegLib.models import registry
    from CardiacAISegLib.pipeline import compute_analysis
    from CardiacAISegLib.readers import load_study

    card = registry.load_model("perfusion-resunet").card   # the cached model the pipeline runs
    card["input"]["segmentation"]["cine_tta"] = cine_tta
    if perfusion_tta:
        card["input"]["tta"] = perfusion_tta
    study = load_study(SHARED / "qperf", series=series.split("-")[1])
    # The Analyze files carry no direction and a 1 mm placeholder pixel: give them the pixel size
    # the key-image path estimates from the LV pool and take their axes as the patient's, so that
    # a mirrored copy is a re-stored image of the same heart, not a mirror-image heart.
    pixel_mm = compute_analysis(study).study.provenance["perfusion_segmentation"]["pixel_mm"][0]
    study.ijk_to_ras = study.ijk_to_ras @ np.diag([pixel_mm, pixel_mm, 1.0, 1.0])
    study.orientation_known = True

    def run(st):
        a = compute_analysis(st)
        return a.labels[a.reference_frame], a.perfusion["global_mbf_ml_min_g"], \
            {s["id"]: s["mbf_ml_min_g"] for s in a.perfusion["segments"]
                                                                 if s.get("mbf_ml_min_g") is not None and np.isfinite(s["mbf_ml_min_g"])}

    ref_lab, ref_mbf, ref_seg = run(study)
    print(f"{series}, cine members {cine_tta}, perfusion network {card['input']['tta']}: stored as given "
          f"MBF {ref_mbf:.3f}, {int((ref_lab == MYO).sum())} myocardial pixels")
    dices, moves = [], []
    for name, (turn, back) in STORAGES.items():
        lab, mbf, seg = run(_restored(study, turn))
        lab = back(lab)
        a, b = ref_lab == MYO, lab == MYO
        dice = 2 * (a & b).sum() / max(1, a.sum() + b.sum())
        common = sorted(set(seg) & set(ref_seg))
        worst = max((abs(seg[i] / ref_seg[i] - 1) for i in common), default=float("nan"))
        dices.append(dice)
        moves.append(worst)
        print(f"  {name}: myocardium Dice {dice:.3f}, MBF {mbf:.3f} ({100 * (mbf / ref_mbf - 1):+.1f} %), "
              f"largest segment change {100 * worst:.1f} % ({len(common)} segments)", flush=True)
    print(f"  lowest Dice {min(dices):.3f}, mean {np.mean(dices):.3f}; largest segment change {100 * max(moves):.1f} %")


if __name__ == "__main__":
    if len(sys.argv) < 3:
        sys.exit(__doc__)
    if sys.argv[2].startswith("qperf-"):
        perfusion(*sys.argv[1:4])
    else:
        cine(*sys.argv[1:3])
