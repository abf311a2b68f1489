"""How the cine default's numbers move when a study's pixels are coarser than ACDC's: each ACDC
patient its model card holds out (training.split.val) resampled in-plane to MM-pixels (images
linearly, labels by nearest) and analysed with the default network, against the same patient as
acquired; the experts' EF on the coarse copy beside it. Many centres acquire cine at 1.8-2.5 mm.

Usage:
  python tools/coarse_pixels.py [MM ...]      (default 2.0 2.5)

(docs/models.md, unet-light: session 20)
"""
import sys
from copy import copy
from pathlib import Path

import numpy as np

SHARED = Path(__file__).resolve().parents[2] / "shared" / "data"


def resampled(study, mm):
    """``study`` with its in-plane pixels resampled to ``mm`` (the affine following)."""
    from scipy import ndimage

    sp = study.spacing   # (col, row, slice) mm
    factors = (sp[1] / mm, sp[0] / mm)
    out = copy(study)
    out.images = ndimage.zoom(study.images, (1, 1, *factors), order=1, prefilter=False).astype(np.float32)
    rows, cols = out.images.shape[2:]
    out.labels = {t: ndimage.zoom(lab, (1, *factors), order=0) for t, lab in study.labels.items()}
    m = study.ijk_to_ras.copy()
    m[:3, 0] *= study.images.shape[3] / cols
    m[:3, 1] *= study.images.shape[2] / rows
    out.ijk_to_ras = m
    return out


def main():
    import warnings

    warnings.filterwarnings("ignore")
    from CardiacAISegLib.models import registry
    from CardiacAISegLib.pipeline import compute_analysis
    from CardiacAISegLib.readers import load_study

    split = registry.get_card(registry.default_model("cine"))["training"]["split"]["val"]
    sizes = [float(v) for v in sys.argv[1:]] or [2.0, 2.5]
    for patient in split:
        study = load_study(SHARED / "acdc" / patient)
        as_acquired = compute_analysis(study).cine
        experts = compute_analysis(study, labels=study.labels).cine
        line = (f"{patient} pixel {study.spacing[0]:.2f} mm: network EF {as_acquired['lv_ef_pct']:.1f} ESV "
                f"{as_acquired['lv_esv_ml']:.1f} mass {as_acquired['lv_mass_g']:.0f} | experts EF {experts['lv_ef_pct']:.1f}")
        for mm in sizes:
            coarse = resampled(study, mm)
            a = compute_analysis(coarse)
            truth = compute_analysis(coarse, labels=coarse.labels).cine
            c = a.cine
            line += (f" || {mm:g} mm: EF {c['lv_ef_pct']:.1f} (experts {truth['lv_ef_pct']:.1f}) ESV "
                     f"{100 * (c['lv_esv_ml'] / as_acquired['lv_esv_ml'] - 1):+.0f} % mass "
                     f"{100 * (c['lv_mass_g'] / as_acquired['lv_mass_g'] - 1):+.0f} % QC {a.qc['status']}")
        print(line, flush=True)


if __name__ == "__main__":
    main()
