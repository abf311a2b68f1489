"""Clean network masks: one connected component per structure (algorithms.md §1c)."""
import numpy as np

from ..labels import LV, MYO, RV


def largest_component(mask):
    from scipy import ndimage

    lab, n = ndimage.label(mask)
    if n <= 1:
        return mask.astype(bool)
    sizes = np.bincount(lab.ravel())
    sizes[0] = 0
    return lab == int(np.argmax(sizes))


def keep_one_component_per_structure(label_map):
    """Keep the largest 3D component of LV, myocardium and RV; other voxels become background.

    The myocardium keeps only the component touching the kept LV when possible, so a stray
    ring around the RV or the aorta is not counted as LV mass.
    """
    out = np.zeros_like(label_map)
    for value in (LV, MYO, RV):
        m = label_map == value
        if m.any():
            out[largest_component(m)] = value
    return out
