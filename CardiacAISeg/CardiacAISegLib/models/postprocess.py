"""Clean network masks: one connected component per structure (docs/algorithms.md §1c)."""
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


def keep_one_component_per_structure(label_map, fill_cavity=True):
    """Keep the largest 3D component of LV, myocardium and RV; other voxels become background.

    With ``fill_cavity`` anything the LV blood pool encloses in a slice becomes blood pool:
    papillary muscles and trabeculae belong to the cavity (ACDC and SCMR conventions), not to
    the myocardial mass.
    """
    out = np.zeros_like(label_map)
    for value in (LV, MYO, RV):
        m = label_map == value
        if m.any():
            out[largest_component(m)] = value
    if fill_cavity:
        fill_lv_cavity(out)
    return out


def fill_lv_cavity(label_map):
    """In place, per slice: pixels enclosed by the LV blood pool become LV."""
    from scipy import ndimage

    for k in range(label_map.shape[0]):
        lv = label_map[k] == LV
        if lv.any():
            label_map[k][ndimage.binary_fill_holes(lv) & ~lv] = LV
    return label_map
