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


# Runs of up to this many slices without a structure are bridged when its largest 3D component is
# taken: a lost image (zeros, or noise, where the network finds nothing) split the heart in two
# and the smaller half - every slice beyond the lost one - was deleted: EDV -45 %, mass -40 %,
# QC pass (probe 41). Across three or more empty slices (25-30 mm) a piece is no longer taken for
# the same structure.
MAX_BRIDGED_SLICES = 2


def largest_component_across_gaps(mask, max_gap=MAX_BRIDGED_SLICES):
    """The largest 3D component of a (S, R, C) mask, runs of up to ``max_gap`` slices that hold
    none of it bridged: the parts on either side join where they overlap in-plane."""
    mask = np.asarray(mask, bool)
    if mask.ndim != 3 or mask.shape[0] < 3:
        return largest_component(mask)
    present = mask.any(axis=(1, 2))
    kept = present.copy()
    on = np.flatnonzero(present)
    for a, b in zip(on[:-1], on[1:]):
        if b - a - 1 > max_gap:
            kept[a + 1] = True   # one empty slice left between them keeps the parts apart
    out = np.zeros(mask.shape, bool)
    out[kept] = largest_component(mask[kept])
    return out


def keep_one_component_per_structure(label_map, fill_cavity=True, spacing_rc=None):
    """Keep the largest 3D component of LV, myocardium and RV (across a slice or two without it:
    ``largest_component_across_gaps``); other voxels become background;
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
            out[largest_component_across_gaps(m)] = value
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
