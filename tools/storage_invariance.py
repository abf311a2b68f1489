"""How much the cine default's numbers move when the same study is stored in another in-plane
orientation (rotated or mirrored pixels, the affine following): the network run on an ACDC
patient and on its 6 re-stored copies, with the card's test-time augmentation set to TTA.

Usage: python tools/storage_invariance.py none|flip|flip2|dihedral patientNNN
(docs/models.md, session 18: ACDC 061 ESV -1.7 to +20.7 % read once, -1.4 to +1.5 % read in 8 orientations)
"""
import sys
from copy import copy
from pathlib import Path

import numpy as np

SHARED = Path(__file__).resolve().parents[2] / "shared" / "data"
# in-plane storage changes on (..., rows, cols); those that trade rows and columns swap the affine's first two columns
STORAGES = {"rot90": (lambda a: np.rot90(a, 1, axes=(-2, -1)), True), "rot180": (lambda a: np.rot90(a, 2, axes=(-2, -1)), False),
            "rot270": (lambda a: np.rot90(a, 3, axes=(-2, -1)), True), "fliprows": (lambda a: np.flip(a, -2), False),
            "flipcols": (lambda a: np.flip(a, -1), False), "transpose": (lambda a: np.swapaxes(a, -2, -1), True)}


def main(tta, patient):
    from CardiacAISegLib.models import registry
    from CardiacAISegLib.pipeline import compute_analysis
    from CardiacAISegLib.readers import load_study

    registry.load_model("unet-light").card["input"]["tta"] = tta   # the cached model the pipeline runs
    study = load_study(SHARED / "acdc" / patient)
    ref = compute_analysis(study).cine
    print(f"{patient}, tta {tta}: stored as given EF {ref['lv_ef_pct']:.1f} % ESV {ref['lv_esv_ml']:.1f} mL")
    for name, (turn, swaps) in STORAGES.items():
        stored = copy(study)
        stored.images, stored.labels = np.ascontiguousarray(turn(study.images)), {}
        if swaps:
            stored.ijk_to_ras = study.ijk_to_ras[:, [1, 0, 2, 3]]
        c = compute_analysis(stored).cine
        print(f"  {name}: EF {c['lv_ef_pct']:.1f} % ESV {c['lv_esv_ml']:.1f} mL ({100 * (c['lv_esv_ml'] / ref['lv_esv_ml'] - 1):+.1f} %)",
              flush=True)


if __name__ == "__main__":
    main(*sys.argv[1:3])
