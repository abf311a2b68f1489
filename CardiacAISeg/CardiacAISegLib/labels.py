"""Label conventions.

Inside CardiacAISeg every label map uses one convention: 0 background, 1 LV blood pool,
2 LV myocardium, 3 RV (the order of the segments in the output segmentation). Readers
normalise other conventions on load; writers of ground truth convert back.
"""
import numpy as np

BACKGROUND, LV, MYO, RV = 0, 1, 2, 3

# name -> (label value, RGB colour 0..1). Colours follow Slicer's generic anatomy colours
# for heart chambers/muscle so the segmentation looks as users expect.
SEGMENTS = {
    "LV blood pool": (LV, (0.85, 0.29, 0.27)),
    "LV myocardium": (MYO, (0.78, 0.64, 0.41)),
    "RV": (RV, (0.36, 0.56, 0.85)),
}
SEGMENT_IDS = {"LV blood pool": "lv", "LV myocardium": "myo", "RV": "rv"}

# source label -> internal label
CONVENTIONS = {
    "internal": {1: LV, 2: MYO, 3: RV},
    "acdc": {1: RV, 2: MYO, 3: LV},
    "ukbb": {1: LV, 2: MYO, 3: RV},  # Bai et al. / UK Biobank
}


def normalise_labels(label_map, convention="acdc"):
    """Return a uint8 copy of ``label_map`` in the internal convention."""
    try:
        mapping = CONVENTIONS[convention]
    except KeyError:
        raise ValueError(f"unknown label convention {convention!r}; choose one of {sorted(CONVENTIONS)}")
    src = np.asarray(label_map)
    out = np.zeros(src.shape, np.uint8)
    for value, target in mapping.items():
        out[src == value] = target
    return out


def to_convention(label_map, convention="acdc"):
    """Convert an internal label map back to ``convention`` (e.g. to save ACDC ground truth)."""
    inverse = {v: k for k, v in CONVENTIONS[convention].items()}
    out = np.zeros(np.shape(label_map), np.uint8)
    for internal, value in inverse.items():
        out[np.asarray(label_map) == internal] = value
    return out
