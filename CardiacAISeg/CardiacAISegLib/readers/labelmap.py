"""Label-map files (NIfTI, NRRD, MetaImage; simple ``.seg.nrrd``) for a Study.

A 3D map is one frame's labels; a 4D map has one per frame. Values are converted from the
file's convention ('acdc' | 'ukbb' | 'internal') to the internal one (labels.py). A
single-layer ``.seg.nrrd`` names its segments, so its names win over the convention.
"""
from pathlib import Path

import numpy as np

from ..errors import CardiacInputError
from ..labels import (CONVENTIONS, LV, MYO, RV, frame_of_header, label_of_segment_name, normalise_labels,
                      unnamed_structures_problem)
from ..study import CINE
from .geometry_check import add_warning, grid_difference, onto_image_grid
from .volume import UNITS_CONVERTED, UNITS_KEPT_AS_MM, read_volume_file

# Labels saved as floats (a converter's float32 export, a rigid resampling with nearest
# neighbour in floating point) sit this close to whole numbers; interpolated ones do not.
NEAR_WHOLE = 0.01

def _seg_nrrd_mapping(header):
    """({file value: internal label}, number of layers, [unknown segment names]) from Slicer's
    SegmentN_Name / _LabelValue / _Layer fields."""
    mapping, layers, unknown = {}, set(), []
    n = 0
    while f"Segment{n}_Name" in header:
        name = str(header[f"Segment{n}_Name"]).strip()
        layers.add(header.get(f"Segment{n}_Layer", "0"))
        value = int(header.get(f"Segment{n}_LabelValue", n + 1))
        label = label_of_segment_name(name)
        if label is not None:
            mapping[value] = label
        else:
            unknown.append(name)
        n += 1
    return mapping, len(layers), unknown


def read_labels(path, convention="acdc"):
    """(labels (T, S, R, C) uint8 internal convention, ijk_to_ras, info)."""
    path = Path(path)
    if convention not in CONVENTIONS:
        raise CardiacInputError(path, f"unknown label convention {convention!r}; choose one of {sorted(CONVENTIONS)}")
    try:
        data, m, meta = read_volume_file(path)
    except CardiacInputError as e:
        raise _in_label_map_terms(e) from None
    info = {"file": str(path), "convention": convention, "warnings": [], "spacing_lost": bool(meta.get("spacing_lost")),
            "frames_placed_by_time": bool(meta.get("frames_placed_by_time"))}
    # the header's own geometry doubts (sform against qform: Slicer shows such labels mirrored),
    # and its sizes converted from cm or m (a label NRRD in cm beside an image in mm went unsaid)
    info["warnings"] += [w for w in meta.get("warnings", []) if "sform" in w or w.startswith((UNITS_CONVERTED, UNITS_KEPT_AS_MM))]
    header = meta.get("header", {})
    mapping = None
    if path.name.lower().endswith(".seg.nrrd"):
        mapping, n_layers, unknown = _seg_nrrd_mapping(header)
        if n_layers > 1 or data.shape[0] > 1:
            raise CardiacInputError(path, "segmentation with overlapping layers is not supported; export it as a labelmap volume")
        # A .seg.nrrd holds one frame: the list axis pynrrd finds would be a layer axis
        info["recorded_frame"] = frame_of_header(header)
        if mapping:
            problem = unnamed_structures_problem(mapping.values(), unknown)
            if problem:   # "LV cavity" beside "Myocardium": read as background, then "no LV labelled" on the image
                raise CardiacInputError(path, problem)
            info["convention"] = "seg.nrrd segment names"
            if unknown:
                info["warnings"].append(f"segments {unknown} are not LV blood pool / LV myocardium / RV: left out")
        elif "Segment0_Name" in header:
            # Slicer's default names ("Segment_1", ...) say nothing of the structure: the values
            # are read in the convention, and the user should know that is a guess
            names = [str(header[f"Segment{n}_Name"]) for n in range(16) if f"Segment{n}_Name" in header]
            info["warnings"].append(f"segment names {names} are not LV blood pool / LV myocardium / RV: label values read "
                                    f"in the {convention} convention (name the segments, or check --label-convention)")
    out = label_values(path, data, convention, info, mapping)
    return out, m, info


def _in_label_map_terms(error):
    """A volume reader's refusal of non-finite values (worded for an image: "no signal to
    measure; save the image with finite values") said of a label map; other errors as they are."""
    problem = error.problem
    if not (problem.startswith("contains ") and (" NaN " in problem or " infinite " in problem)):
        return error
    counted = problem.split(": ", 1)[0]   # "contains 1000 NaN values (12.3 % of the voxels ...)"
    return CardiacInputError(error.path, f"the label map {counted}: a label map holds whole numbers, 0 for the "
                                         "background; save it with 0 in place of NaN and infinite values (e.g. "
                                         "numpy.nan_to_num) or export it again as a labelmap")


def _stored_scaling(path):
    """(scl_slope, scl_inter) of a NIfTI/Analyze file whose header scales its stored values, else
    None. Read only where a label map's values look wrong: nibabel is not imported otherwise."""
    from .sniff import volume_suffix

    if volume_suffix(path) not in (".nii", ".nii.gz", ".hdr", ".img"):
        return None
    try:
        import nibabel as nib

        proxy = nib.load(str(path)).dataobj
        slope, inter = float(getattr(proxy, "slope", 1.0)), float(getattr(proxy, "inter", 0.0))
    except Exception:   # the file was read a moment ago; a header nibabel will not give leaves the plain message
        return None
    return None if (slope, inter) == (1.0, 0.0) else (slope, inter)


def _refuse_scaled_labels(path, data, known):
    """A label map whose file scales its stored values (NIfTI scl_slope/scl_inter) into other
    ones: a uint8 map with scl_inter 1 read 0-3 as 1-4, its background as the RV, and was said
    as "label values [4]" with 12 review flags (probe 107). ITK and Slicer apply the scaling too,
    so it is the writer's error: refused by name where the stored values are labels and the
    scaled ones are not the same. (A float map nibabel stored as int16 with a fitted slope is
    scaled back to its labels, and its stored values are no labels: read as before.)"""
    scaling = _stored_scaling(path)
    if scaling is None:
        return
    slope, inter = scaling
    read = np.unique(np.asarray(data, np.float64))
    stored = (read - inter) / slope
    whole = np.rint(stored)
    if np.max(np.abs(stored - whole), initial=0.0) > NEAR_WHOLE or not set(whole.astype(int).tolist()) <= {0, *known}:
        return
    if np.array_equal(whole, read):
        return
    raise CardiacInputError(path, f"its header scales the stored values (scl_slope {slope:g}, scl_inter {inter:g}), which "
                                  f"turns the labels stored as {_few([int(v) for v in whole])} into "
                                  f"{_few([f'{v:g}' for v in read])}: a label map is stored unscaled (scl_slope 1, "
                                  "scl_inter 0), and Slicer and ITK apply the scaling too; save it again without scaling "
                                  "(nibabel: img.header.set_slope_inter(1, 0))")


def label_values(path, data, convention, info, mapping=None):
    """The internal-convention uint8 labels of a label file's values (``data`` as read, any
    dtype), with the checks every label file gets, whoever reads it (``--labels FILE``, an ACDC
    folder's ``_gt`` maps): whole numbers (interpolated labels refused), not an image, values the
    convention does not know named and set to background; ``info["warnings"]`` and
    ``info["nothing_labelled"]`` receive what is to be said."""
    values = np.rint(data).astype(np.int32)
    off = float(np.max(np.abs(values - data))) if data.size else 0.0
    known = set(mapping) if mapping else set(CONVENTIONS[convention])
    if off > NEAR_WHOLE:
        _refuse_scaled_labels(path, data, known)
        share = float(np.mean(np.abs(values - data) > NEAR_WHOLE))
        raise CardiacInputError(path, f"label values are not whole numbers ({share:.1%} of the voxels up to {off:.3g} away "
                                      "from one): an image rather than a label map, or labels resampled with interpolation "
                                      "(resample label maps with nearest neighbour)")
    if off > 1e-6:
        info["warnings"].append(f"label values are stored as decimals up to {off:.2g} from whole numbers (a float export): "
                                "rounded to the nearest label")
    _refuse_image_as_labels(path, values)
    if mapping:
        out = np.zeros(values.shape, np.uint8)
        for v, target in mapping.items():
            out[values == v] = target
    else:
        out = normalise_labels(values, convention)
    present = np.unique(values)
    unknown = sorted(int(v) for v in present if v != 0 and int(v) not in known)
    if unknown or 0 not in present:
        _refuse_scaled_labels(path, data, known)
    if not out.any():
        # nothing left to measure: say what the file holds, not "no label maps" later on the image
        # (raised by load_labelmap after the size check, the plainer reason when both apply)
        if not unknown:
            info["nothing_labelled"] = "the label map is all background (0): no LV, myocardium or RV is labelled"
        else:
            info["nothing_labelled"] = (f"no LV, myocardium or RV label: the map holds values {_few(unknown)}, which are "
                                        f"not labels in the {info['convention']} convention (accepted: "
                                        f"{_accepted(convention, mapping)}); a binary mask (0/1 or 0/255) is not a "
                                        "ventricle segmentation, choose --label-convention or convert the map")
    if unknown:
        info["warnings"].append(f"label values {_few(unknown)} are not LV/myocardium/RV in the {info['convention']} convention; set to background")
        # said above; what a training run refuses (models/training_data.py), and QC's
        # LABEL_VALUES_UNKNOWN while a structure is missing
        info["set_to_background"] = unknown
    return out


# A label map holds a handful of values; an MR image (integer-valued, so it passes the
# whole-number test) holds hundreds. More than this many distinct values is an image.
MAX_LABEL_VALUES = 64


def _refuse_image_as_labels(path, values):
    present = np.unique(values)
    if present.size > MAX_LABEL_VALUES:
        raise CardiacInputError(path, f"not a label map: it holds {present.size} different values ({present.min()}..{present.max()}), "
                                      f"a label map holds a few (0 background, 1-3 the structures); was the image given as --labels?")


def _few(values, most=8):
    shown = ", ".join(str(v) for v in values[:most])
    return f"[{shown}{', ...' if len(values) > most else ''}]"


def _accepted(convention, mapping):
    if mapping:
        return "the segment names LV blood pool, LV myocardium, RV"
    names = {LV: "LV blood pool", MYO: "myocardium", RV: "RV"}
    return ", ".join(f"{v} {names[t]}" for v, t in sorted(CONVENTIONS[convention].items()))


def _myocardium_contact(lab, value, other=MYO):
    """Share of the in-plane border of structure ``value`` that touches ``other`` (myocardium)."""
    inside = lab == value
    edges = touching = 0
    for axis in (1, 2):
        for step in (1, -1):
            neighbour = np.roll(lab, step, axis=axis)
            edge = inside & (neighbour != value)
            edges += int(edge.sum())
            touching += int((edge & (neighbour == other)).sum())
    return touching / edges if edges else None


def lv_rv_ring_shares(labels):
    """(LV share, RV share): how much of the border of the structure labelled LV blood pool, and
    of the one labelled RV, touches myocardium, on the frame with the most LV; None when either
    is too small to judge. An LV pool is ringed by myocardium (over 99 % in ACDC's ground
    truth), the RV touches it along the septum only (23-44 %)."""
    labels = list(labels)
    if not labels:
        return None
    lab = labels[int(np.argmax([(m == LV).sum() for m in labels]))]
    if min((lab == LV).sum(), (lab == MYO).sum(), (lab == RV).sum()) < 20:
        return None
    lv, rv = _myocardium_contact(lab, LV), _myocardium_contact(lab, RV)
    return None if lv is None or rv is None else (lv, rv)


# An island of one ventricle's label with (nearly) all of its in-plane border on the other
# ventricle's blood pool is anatomically impossible: the two pools are parted by the septum. ACDC's
# ground truth has none; an RV painted into the LV pool moved 1.3 mL from LV to RV with QC pass
# (probe 78). Islands under MIN_ENCLOSED_ML in all (a network's stray pixels) are left unsaid.
MIN_ENCLOSED_SHARE = 0.9
MIN_ENCLOSED_ML = 0.2


def _islands_inside(lab, value, around):
    """Voxels of ``value`` in in-plane islands whose border lies on ``around`` for at least
    ``MIN_ENCLOSED_SHARE`` of its length, in a (S, R, C) map."""
    from scipy import ndimage

    inside = lab == value
    if not inside.any() or not (lab == around).any():
        return 0
    plane = np.zeros((3, 3, 3), bool)
    plane[1] = ndimage.generate_binary_structure(2, 1)   # islands within a slice, not across slices
    comp, n = ndimage.label(inside, structure=plane)
    padded_comp = np.pad(comp, ((0, 0), (1, 1), (1, 1)))
    padded_lab = np.pad(lab, ((0, 0), (1, 1), (1, 1)))
    edges = np.zeros(n + 1)
    on_around = np.zeros(n + 1)
    for axis in (1, 2):
        for step in (1, -1):
            neighbour = np.roll(padded_comp, step, axis=axis)
            border = (neighbour > 0) & (padded_comp == 0)
            edges += np.bincount(neighbour[border], minlength=n + 1)
            on_around += np.bincount(neighbour[border & (padded_lab == around)], minlength=n + 1)
    share = np.divide(on_around, edges, out=np.zeros_like(edges), where=edges > 0)
    enclosed = np.flatnonzero(share >= MIN_ENCLOSED_SHARE)
    enclosed = enclosed[enclosed > 0]
    return int(np.isin(comp, enclosed).sum()) if enclosed.size else 0


def ventricle_inside_the_other(labels, voxel_ml):
    """A sentence when a frame's map ({frame: (S, R, C)}) has RV label inside the LV blood pool
    or LV label inside the RV (``MIN_ENCLOSED_ML`` or more), else None."""
    worst = None
    for t, lab in sorted(labels.items()):
        lab = np.asarray(lab)
        rows, cols = np.nonzero(((lab == LV) | (lab == RV)).any(axis=0))
        if rows.size == 0:
            continue
        # the ventricles' box and a pixel around it: the check runs on every edit of a whole
        # cycle (0.43 s over 30 full frames, 0.04 s cropped; review)
        lab = lab[:, max(rows.min() - 1, 0):rows.max() + 2, max(cols.min() - 1, 0):cols.max() + 2]
        for value, around, what in ((RV, LV, "RV label inside the LV blood pool"),
                                    (LV, RV, "LV blood pool label inside the RV")):
            ml = _islands_inside(lab, value, around) * voxel_ml
            if ml >= MIN_ENCLOSED_ML and (worst is None or ml > worst[0]):
                worst = (ml, what, t)
    if worst is None:
        return None
    ml, what, t = worst
    return (f"{what} ({ml:.1f} mL at frame {t + 1}, counted from 1): the two blood pools are parted by the septum, "
            "so those voxels are counted in the wrong ventricle's volume; check the segmentation there")


def lv_and_rv_look_swapped(shares):
    """The ring shares (``lv_rv_ring_shares``) of a map whose LV and RV are the other way round."""
    return shares is not None and shares[0] < 0.5 and shares[1] > 0.7


# Without myocardium the ring test cannot run: a blood-pool-only ukbb map read as acdc measured the
# RV as the LV (EDV 89.4 mL, QC flags about mass and mirroring; probe 107). The LV pool is round in
# short axis, the RV a crescent: on ACDC's 80 ED maps (the frame with the most LV, myocardium
# removed) the LV pool is the more convex (solidity: area over its convex hull's) on 88 % or more
# of the slices that have both, by a median of 0.06 or more (median 0.18); LV and RV swapped, on
# 12 % or fewer, by -0.06 or less. Both the share and the median must say "swapped" to refuse.
MIN_SHAPE_SLICES = 3
MAX_SWAPPED_SHAPE_SHARE = 1 / 3
MAX_SWAPPED_SOLIDITY_MEDIAN = -0.03


def _solidity(mask):
    """Area over the area of the convex hull of a 2D mask's pixels (their corners); None under 20
    pixels."""
    from scipy.spatial import ConvexHull

    rows, cols = np.nonzero(mask)
    if rows.size < 20:
        return None
    corners = np.concatenate([np.stack([rows + dr, cols + dc], axis=1) for dr in (0, 1) for dc in (0, 1)])
    return rows.size / ConvexHull(corners).volume   # a 2D hull's "volume" is its area


def _values_and_other(convention):
    """({structure: its value in ``convention``}, the convention that swaps LV and RV): what the
    refusals of a map read in the wrong one of the two name."""
    return {t: v for v, t in CONVENTIONS[convention].items()}, "ukbb" if convention == "acdc" else "acdc"


# the two conventions that swap LV and RV, as the refusals spell them out
_CONVENTIONS_SAID = "acdc: 1 RV, 2 myocardium, 3 LV; ukbb: 1 LV, 2 myocardium, 3 RV"


def _refuse_swapped_by_shape(path, lab, convention):
    """Refuse a (S, R, C) map without myocardium whose structure read as the LV pool is the
    crescent and the one read as the RV the round one, slice by slice."""
    differences = []
    for k in range(lab.shape[0]):
        lv, rv = _solidity(lab[k] == LV), _solidity(lab[k] == RV)
        if lv is not None and rv is not None:
            differences.append(lv - rv)
    if len(differences) < MIN_SHAPE_SLICES:
        return
    differences = np.asarray(differences)
    rounder = float(np.mean(differences > 0))
    if rounder > MAX_SWAPPED_SHAPE_SHARE or float(np.median(differences)) > MAX_SWAPPED_SOLIDITY_MEDIAN:
        return
    values, other = _values_and_other(convention)
    raise CardiacInputError(path, f"the labels look like the {other} convention, not {convention}: the map has no "
                                  f"myocardium, and the structure read as the LV blood pool (value {values[LV]}) is the "
                                  f"crescent, the one read as the RV (value {values[RV]}) the round one, on "
                                  f"{1 - rounder:.0%} of the {len(differences)} slices with both (an LV pool is round in "
                                  f"short axis, the RV wraps around it); give --label-convention {other} ({_CONVENTIONS_SAID})")


def _refuse_swapped_convention(path, labels, convention):
    """The LV blood pool is ringed by myocardium (over 99 % of its border in ACDC's ground
    truth), the RV touches it along the septum only (23-44 %). The other way round, the file
    uses the convention that swaps LV and RV, and the RV would be measured as the LV."""
    if convention not in ("acdc", "ukbb", "internal"):
        return
    if not any((lab == LV).any() for lab in labels):
        present = set().union(*(np.unique(lab).tolist() for lab in labels)) - {0}
        if present == {RV}:
            # one structure, read as the RV: a binary mask (a thresholding tool's 0/1 LV pool)
            # failed later with "no LV blood pool labelled at ED", naming the study (probe 96)
            values, other = _values_and_other(convention)
            raise CardiacInputError(path, f"the map holds one structure only, value {values[RV]}, read as the RV in the "
                                          f"{convention} convention: no LV blood pool or myocardium to measure. A binary mask "
                                          "is not a ventricle segmentation; if it is the LV blood pool, give --label-convention "
                                          f"{other} ({other}: {values[RV]} is the LV pool; {_CONVENTIONS_SAID})")
        # no LV pool at all, but an "RV" ringed by myocardium: an LV-only map (LV 1, myocardium
        # 2, as UK Biobank-style and many clinical maps are) read in a convention where 1 is the RV
        t = int(np.argmax([(lab == RV).sum() for lab in labels]))
        lab = labels[t]
        if min((lab == RV).sum(), (lab == MYO).sum()) >= 20 and (_myocardium_contact(lab, RV) or 0) > 0.7:
            values, other = _values_and_other(convention)
            raise CardiacInputError(path, f"the map has no LV blood pool (value {values[LV]} in the {convention} convention), "
                                          f"and the structure read as the RV (value {values[RV]}) is ringed by myocardium on "
                                          f"{_myocardium_contact(lab, RV):.0%} of its border, as an LV pool is: an LV-only map in "
                                          f"another convention? give --label-convention {other} ({_CONVENTIONS_SAID})")
        if min((lab == RV).sum(), (lab == MYO).sum()) >= 20 and (_myocardium_contact(lab, MYO, RV) or 0) > 0.8:
            values, _ = _values_and_other(convention)
            raise CardiacInputError(path, f"the map has no LV blood pool (value {values[LV]} in the {convention} convention), "
                                          f"and the structure read as the myocardium (value {values[MYO]}) is ringed by the one "
                                          f"read as the RV (value {values[RV]}), as a pool is by its wall: the values are not "
                                          f"in the {convention} convention (an LV-only map with {values[RV]} the myocardium and "
                                          f"{values[MYO]} the pool?); convert the map ({_CONVENTIONS_SAID})")
        return
    t = int(np.argmax([(lab == LV).sum() for lab in labels]))
    lab = labels[t]
    if (lab == MYO).sum() < 20:
        _refuse_swapped_by_shape(path, lab, convention)
    if min((lab == LV).sum(), (lab == MYO).sum()) < 20:
        return
    lv = _myocardium_contact(lab, LV)
    rv = _myocardium_contact(lab, RV) if (lab == RV).sum() >= 20 else None
    # the myocardium's inner border only touches the pool (24-45 % of its border in ACDC); a
    # "myocardium" ringed by "LV pool" is the pool, labelled the other way round
    myo_in_lv = _myocardium_contact(lab, MYO, LV)
    if lv is not None and myo_in_lv is not None and lv < 0.6 and myo_in_lv > 0.8:
        values, _ = _values_and_other(convention)
        raise CardiacInputError(path, f"the LV blood pool (value {values[LV]}) and myocardium (value {values[MYO]}) labels look "
                                      f"swapped: the structure read as myocardium is ringed by the one read as the pool "
                                      f"({myo_in_lv:.0%} of its border), which touches it on only {lv:.0%} of its own; "
                                      f"in the {convention} convention {values[LV]} is the LV blood pool and {values[MYO]} the "
                                      "myocardium: convert the map")
    if lv is not None and rv is not None and lv_and_rv_look_swapped((lv, rv)):
        _, other = _values_and_other(convention)
        raise CardiacInputError(path, f"the labels look like the {other} convention, not {convention}: the structure read as "
                                      f"the LV blood pool touches myocardium on {lv:.0%} of its border, the one read as the RV "
                                      f"on {rv:.0%} (an LV pool is ringed by myocardium); give --label-convention {other} "
                                      f"({_CONVENTIONS_SAID})")


# Given cine labels sit where the LV blood pool (bright) and the myocardium (dark) part best:
# over ACDC's 80 expert ED maps, no mirrored or shifted copy of a map separates the two better
# than 1/0.994 of the map itself, while 98 % of maps mirrored or moved by 8 pixels are beaten by
# a copy (the way back) by more than 1/0.9. The ratio of the given map's pool/wall contrast to
# the best copy's, under this, means the labels do not overlay the image.
MIN_OVERLAY_CONTRAST_SHARE = 0.9
_SHIFTS_MM = (6.0, 12.0)


def _pool_wall_contrast(image, lab):
    lv, myo = lab == LV, lab == MYO
    if lv.sum() < 20 or myo.sum() < 20:
        return None
    # over the image's own floor: a series stored with a large negative offset (every value
    # below zero) gave ratios of -4e16 and a false "labels do not overlay the image" (probe 21)
    floor = float(np.percentile(image, 1))
    return (float(image[lv].mean()) - floor) / max(float(image[myo].mean()) - floor, 1e-12)


def _moved_copies(lab, pixel_mm):
    """{description: the (S, R, C) label map mirrored or shifted in-plane}."""
    copies = {"mirrored left-right": lab[:, :, ::-1], "mirrored up-down": lab[:, ::-1, :],
              "rotated 180 degrees": lab[:, ::-1, ::-1]}
    for mm in _SHIFTS_MM:
        px = max(1, int(round(mm / pixel_mm)))
        for sign in (1, -1):
            copies[f"moved {sign * mm:+g} mm along the rows"] = np.roll(lab, sign * px, axis=1)
            copies[f"moved {sign * mm:+g} mm along the columns"] = np.roll(lab, sign * px, axis=2)
    if lab.shape[0] >= 3:
        # a map one slice off its stack (ACDC 066's own map one slice towards the base: EDV -14 %,
        # mass -12 %, QC pass; probe 85): over ACDC's 160 expert maps a copy moved by a slice never
        # parts pool and wall better than 1/0.938 of the map itself, while 72 % of maps moved by a
        # slice are beaten by the way back by more than 1/0.9 (/tmp/s40/sliceroll.py, session 40)
        for sign, towards in ((1, "last"), (-1, "first")):
            moved = np.roll(lab, sign, axis=0)
            moved[0 if sign == 1 else -1] = 0
            copies[f"moved one slice along the stack (towards its {towards} slice)"] = moved
    return copies


# How labels_off_the_image's sentence begins where the labels fit the image with its grey scale
# the other way round (a qc check may tell it from a misplaced map by it)
NOT_BRIGHT_BLOOD = "the images are not a bright-blood cine"


def labels_off_the_image(study, labels):
    """A warning when given cine labels ({frame: (S, R, C)}) do not overlay the study's images:
    on the frame with the most LV pool, a mirrored or shifted copy of the map parts the bright
    blood pool from the dark myocardium clearly better than the map itself. Where the labelled
    pool is darker than the labelled wall and the map fits the image with its grey scale
    inverted, the warning says the images are not bright-blood (``NOT_BRIGHT_BLOOD``). None when
    the map fits (or it cannot be judged: not a cine, too few labelled pixels)."""
    if study.kind != CINE or not labels:
        return None
    t = max(labels, key=lambda f: int((labels[f] == LV).sum()))
    image, lab = study.images[t], labels[t]
    given = _pool_wall_contrast(image, lab)
    if given is None:
        return None
    pixel_mm = float(min(study.spacing[:2]))
    several_frames = sum(bool((m == LV).any()) for m in labels.values()) > 1
    if given < 1:
        # the pool darker than its wall as given: a dark-blood or inverted cine with its right
        # labels was told "rotated 180 degrees, they would part ... better" (probe 107). Over
        # ACDC's 160 expert maps the given contrast is x1.37 or more, so no bright-blood cine
        # with its own labels comes here; a misplaced map on a bright-blood cine does, and does
        # not fit the inverted image either (its contours cross blood and wall: 0.37 or more
        # mixed, in all 73 such moved or other patients' ACDC maps; session 48)
        inverted = float(np.max(image)) + float(np.min(image)) - np.asarray(image, np.float32)
        if _overlay_fault(inverted, lab, t, pixel_mm, several_frames, require_mixed=True) is None:
            return (f"{NOT_BRIGHT_BLOOD}, or their grey values are inverted: the labelled LV blood pool is darker than "
                    f"the labelled myocardium (mean signal pool/wall x{given:.2f}, frame {t + 1}, counted from 1), and with "
                    "the grey scale inverted the labels fit the image as its own labels do (no mirrored or shifted copy "
                    "fits better). The volumes from these labels stand, but checks that take the blood to be bright (the "
                    "SNR) do not, and the networks are not made for such images: give the bright-blood (SSFP) cine, or "
                    "invert its grey values")
    return _overlay_fault(image, lab, t, pixel_mm, several_frames)


def _overlay_fault(image, lab, t, pixel_mm, several_frames, require_mixed=False):
    """labels_off_the_image's sentence for the map ``lab`` of frame ``t`` on ``image``, or None
    when it fits. ``require_mixed``: a map whose pool is not brighter than its wall by their
    medians (mixed share not measured) is not taken to fit."""
    given = _pool_wall_contrast(image, lab)
    copies = {name: _pool_wall_contrast(image, moved) for name, moved in _moved_copies(lab, pixel_mm).items()}
    name, best = max(((n, c) for n, c in copies.items() if c is not None), key=lambda nc: nc[1], default=(None, None))
    if best is None or given >= MIN_OVERLAY_CONTRAST_SHARE * best:
        mixed = mixed_label_share(image, lab)
        limit = MAX_MIXED_LABEL_SHARE if several_frames else MAX_MIXED_LABEL_SHARE_LONE_FRAME
        if (mixed is None and not require_mixed) or (mixed is not None and mixed <= limit):
            return None
        if mixed is None:
            return "the labelled pool is not brighter than the labelled myocardium"
        return (f"the labels do not seem to overlay this image: at frame {t + 1} (counted from 1) {mixed:.0%} of the pixels "
                "labelled myocardium or LV blood pool look like the other (brighter, or darker, than halfway between the "
                "two's median signal; ACDC's expert maps: at most 23 % at ED, 29 % at ES), so the contours cross blood and "
                "wall: check them over the image (another patient's or another series' labels?)")
    return (f"the labels do not seem to overlay this image: {name}, they would part the bright blood pool from the dark "
            f"myocardium better (mean signal pool/wall x{best:.2f} against x{given:.2f} as given, frame {t + 1}, counted from 1); check them "
            "over the image (mirrored, shifted, or another series' labels?)")


# Another patient's labels on an image overlay it nowhere, so no mirrored or shifted copy fits
# clearly better: ACDC 066 with another patient's map read EDV 114 for 158 mL, EF 79.8 for 64.4,
# QC pass (probe 85). Such contours cross blood and wall: in the labelled pool and myocardium
# (in-plane 3x3 means, so noise does not count) the share of pixels on the other's side of
# halfway between their medians (mean of both shares) is at most 0.23 in ACDC's 80 expert ED
# maps (median 0.10; ES at most 0.29), 0.34 or more in 95 % of 240 pairings of a patient's ED
# image with another's ED map (median 0.48), 0.03-0.07 on the noisy cine phantom (noise 0.3)
# (/tmp/s40/overlay2s.py, overlay3s.py, session 40). Judged on the frame with the most LV pool.
# ES maps are thinner-walled and reach 0.29 (ACDC 073: 0.285), so a frame judged as the one with
# the most LV pool among several labelled frames (ED) is held to 0.27, a lone frame (which may be
# ES) to 0.31.
MAX_MIXED_LABEL_SHARE = 0.27
MAX_MIXED_LABEL_SHARE_LONE_FRAME = 0.31


def mixed_label_share(image, lab):
    """Share (0-1) of the labelled LV pool and myocardium pixels of a (S, R, C) frame whose
    in-plane 3x3 mean signal lies on the other structure's side of halfway between the two's
    medians; None with under 20 pixels of either."""
    from scipy import ndimage

    lv, myo = lab == LV, lab == MYO
    if lv.sum() < 20 or myo.sum() < 20:
        return None
    smooth = ndimage.uniform_filter(np.asarray(image, np.float32), size=(1, 3, 3))
    pool, wall = float(np.median(smooth[lv])), float(np.median(smooth[myo]))
    if pool <= wall:
        return None   # not a bright-blood image: the contrast check above speaks for it
    cut = 0.5 * (pool + wall)
    return 0.5 * (float((smooth[myo] > cut).mean()) + float((smooth[lv] < cut).mean()))


def load_labelmap(path, study, convention="acdc", frame=None):
    """{frame: (S, R, C) uint8} for ``study``; a 3D map goes to ``frame`` (default ED, else 0)."""
    path = Path(path)
    labels, m, info = read_labels(path, convention)
    # a label file in cm beside an image in cm: the image's reader said the same words already
    said_of_image = set((study.provenance or {}).get("warnings") or [])
    info["warnings"] = [w for w in info["warnings"] if not (w.startswith((UNITS_CONVERTED, UNITS_KEPT_AS_MM))
                                                            and w in said_of_image)]
    spacing_lost = info.pop("spacing_lost")
    if spacing_lost:
        info["warnings"].append("label map has no voxel size of its own; used voxel by voxel on the image's grid")
    else:
        labels, note = onto_image_grid(labels, m, study.ijk_to_ras, study.images.shape[1:])
        if note:
            info["warnings"].append(note)
    if labels.shape[1:] != study.images.shape[1:]:
        # images the reader left out (a slice tilted off the stack, read as a long-axis view)
        # are the likelier cause than the label map: the error blamed the map alone (probe 58)
        left_out = [w for w in (study.provenance or {}).get("warnings") or [] if "left out" in w]
        why = f"; the image's reader left images out, which may be why: {left_out[0]}" if left_out else ""
        other_grid = None if why or spacing_lost else grid_difference(m, study.ijk_to_ras)
        if other_grid and other_grid.startswith("origin"):
            # the image's voxels, but most of them off the image: no crop of it
            why = (f"; its origin places it mostly off the image ({other_grid}): check that it is this image's "
                   "label map and its header's origin")
        elif other_grid:
            # resampled (1 mm isotropic, an atlas tool's output): no voxel of it is one of the
            # image's, and the bare size mismatch left the user nowhere (probe 89)
            why = (f"; it lies on another grid ({other_grid}): resample it onto the image's "
                   "grid with nearest-neighbour interpolation (in Slicer: export the segmentation as a labelmap with the "
                   "image as reference geometry)")
        raise CardiacInputError(path, f"label map size {labels.shape[1:][::-1]} (columns, rows, slices) does not match "
                                      f"the image {study.images.shape[1:][::-1]}{why}")
    if info.get("nothing_labelled"):
        raise CardiacInputError(path, info.pop("nothing_labelled"))
    if info["convention"] == convention:     # a .seg.nrrd's segment names are not a convention to doubt
        _refuse_swapped_convention(path, labels, convention)
    placed_by_time = info.pop("frames_placed_by_time", False)
    if labels.shape[0] > 1:
        if labels.shape[0] != study.n_frames:
            # an ED+ES pair stored as a 2-frame map (probe 107): which image frames they are cannot be
            # told, so the message says the layouts that do tell it (as the refusal of two 3D files does)
            raise CardiacInputError(path, f"label map has {labels.shape[0]} frames but the image has {study.n_frames}, so "
                                          "which image frame each of its frames labels cannot be told: give a 4D map of all "
                                          f"{study.n_frames} frames with the frames not labelled all 0 (background), a 3D "
                                          "map of one frame (it goes to ED), or the .seg.nrrd files a run wrote (one "
                                          "--labels each; they say their frame)")
        order = (study.provenance or {}).get("stored_frame_order")
        if order is not None and not placed_by_time:
            # the image's frames were sorted by their times; a label map without times of its
            # own lists its frames in the order the image's file stored them
            labels = labels[np.asarray(order)]
            info["warnings"].append("its frames were put in the image's time order (the image stored its frames out of "
                                    "time order; this file has no times of its own, so its frames are taken to follow "
                                    "the image's stored order)")
        if frame is not None:
            return {int(frame): labels[int(frame)]}, info
        return {t: labels[t] for t in range(labels.shape[0]) if labels[t].any()}, info
    recorded = info.pop("recorded_frame", None)
    if frame is None and recorded is not None:
        # a cine segmentation this tool wrote (or Slicer saved from its scene) says its frame: an
        # ES file given back was measured as ED
        frame, made_for = recorded
        if made_for is not None and made_for != study.n_frames:
            raise CardiacInputError(path, f"is the segmentation of frame {frame + 1} (counted from 1) of a series of "
                                          f"{made_for} frames; this input has {study.n_frames}, so that frame number "
                                          "names another image: give the series it was made on")
        info["frame_from_file"] = True
    if frame is None:
        frame = study.ed_frame if study.ed_frame is not None else 0
    frame = int(frame)
    if not 0 <= frame < study.n_frames:
        raise CardiacInputError(path, f"frame {frame} is outside the image's {study.n_frames} frames")
    info["frame"] = frame
    return {frame: labels[0]}, info


def attach_labelmap(study, path, convention="acdc", frame=None, came_with_study=None):
    """Add the label map's frames to study.labels and note it in provenance. ``came_with_study``:
    the frames whose labels came with the study (default: all it has; not those of other files
    given with this one)."""
    labels, info = load_labelmap(path, study, convention, frame)
    off = labels_off_the_image(study, labels)
    if off:
        info["warnings"].append(off)
    own = set(study.labels) if came_with_study is None else set(came_with_study) & set(study.labels)
    kept = sorted(own - set(labels))
    if kept:
        # the file's frames replace the study's own; the others stay, and the measures mix both
        def named(frames):
            return ", ".join("ED" if t == study.ed_frame else "ES" if t == study.es_frame else f"frame {t}" for t in frames)

        info["warnings"].append(f"labels of {named(sorted(labels))} from this file; {named(kept)} keep the labels that "
                                "came with the study")
    study.labels.update(labels)
    study.provenance.setdefault("label_files", []).append(info)
    for w in info["warnings"]:    # shown with every output, not only kept in provenance
        add_warning(study, f"{Path(path).name}: {w}")
    return study
