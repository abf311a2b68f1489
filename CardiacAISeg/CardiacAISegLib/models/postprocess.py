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


def keep_one_component_per_structure(label_map, fill_cavity=True, spacing_rc=None):
    """Keep the largest 3D component of LV, myocardium and RV; other voxels become background;
    with the in-plane ``spacing_rc`` (mm) of a (S, R, C) stack, LV pieces on slices without that
    component that are the cavity of the kept myocardium are kept too (``readmit_ringed_lv``).

    With ``fill_cavity`` anything the LV blood pool encloses in a slice becomes blood pool:
    papillary muscles and trabeculae belong to the cavity (ACDC and SCMR conventions), not to
    the myocardial mass.
    """
    out = np.zeros_like(label_map)
    for value in (LV, MYO, RV):
        m = label_map == value
        if m.any():
            out[largest_component(m)] = value
    if spacing_rc is not None:
        readmit_ringed_lv(label_map, out, spacing_rc)
    if fill_cavity:
        fill_lv_cavity(out)
    return out


# Share of an LV piece's in-plane border on the kept myocardium for it to count as the LV's cavity
# (an LV pool is ringed by myocardium; a stray blob elsewhere is not)
MIN_MYO_RING_SHARE = 0.5
# and within this distance of the kept cavity's centre on the nearest slice that has it
MAX_PIECE_OFFSET_MM = 20.0


def readmit_ringed_lv(label_map, kept, spacing_rc):
    """In place on ``kept``: LV pieces of ``label_map`` outside the largest LV component that lie
    on slices without it and are ringed by the kept myocardium (at least ``MIN_MYO_RING_SHARE`` of
    their in-plane border) are the LV's cavity too. Slices far apart, an oblique LV or another
    breath-hold leave the apical cavity touching none of the slice above it: as a separate 3D
    component it was removed, the myocardium around it kept (probe 38: ACDC 093 at 13 mm slices,
    three apical slices without a cavity, LV EDV -19 %)."""
    from scipy import ndimage

    lv = label_map == LV
    kept_lv, kept_myo = kept == LV, kept == MYO
    pieces, n = ndimage.label(lv & ~kept_lv)
    if n == 0 or not kept_myo.any() or not kept_lv.any():
        return kept
    in_plane = np.zeros((3, 3, 3), bool)
    in_plane[1] = ndimage.generate_binary_structure(2, 1)
    slices_with_lv = kept_lv.any(axis=(1, 2))
    for i, where in enumerate(ndimage.find_objects(pieces), start=1):
        piece = pieces[where] == i
        ks = np.arange(where[0].start, where[0].stop)
        if slices_with_lv[ks].any():
            continue   # a slice that has the LV already: a second piece there is no cavity
        grown = np.zeros(lv.shape, bool)
        grown[where] = piece
        # beside the LV: near the kept cavity's centre on the nearest slice that has it (a ring
        # drawn off the heart, a basal one around the atrium or aorta, lies centimetres away:
        # ACDC 037's ES base 40 mm)
        nearest = min(np.flatnonzero(slices_with_lv), key=lambda j: min(abs(j - ks[0]), abs(j - ks[-1])))
        offset = np.argwhere(grown)[:, 1:].mean(0) - np.argwhere(kept_lv[nearest]).mean(0)
        if np.hypot(*(offset * np.asarray(spacing_rc, float))) > MAX_PIECE_OFFSET_MM:
            continue
        ring = ndimage.binary_dilation(grown, in_plane) & ~grown
        if ring.any() and kept_myo[ring].mean() >= MIN_MYO_RING_SHARE:
            kept[grown] = LV
    return kept


def fill_lv_cavity(label_map):
    """In place, per slice: pixels enclosed by the LV blood pool become LV."""
    from scipy import ndimage

    for k in range(label_map.shape[0]):
        lv = label_map[k] == LV
        if lv.any():
            label_map[k][ndimage.binary_fill_holes(lv) & ~lv] = LV
    return label_map
