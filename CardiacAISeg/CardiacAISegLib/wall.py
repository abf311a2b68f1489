"""Myocardial wall thickness per AHA segment (the cine bullseye)."""
import numpy as np

from .aha import AHA_SEGMENTS
from .labels import LV, MYO


def wall_thickness_map(label_map3d, spacing_rc):
    """Per myocardial pixel: distance to the blood pool + distance to outside the epicardium (mm).

    Slice by slice (2D), because short-axis slices are 8-10 mm apart and a 3D distance
    would mix in the neighbour slice.
    """
    from scipy import ndimage

    lab = np.asarray(label_map3d)
    out = np.full(lab.shape, np.nan, np.float32)
    for k in range(lab.shape[0]):
        myo = lab[k] == MYO
        if not myo.any():
            continue
        d_endo = ndimage.distance_transform_edt(lab[k] != LV, sampling=spacing_rc)
        epi = myo | (lab[k] == LV)
        d_epi = ndimage.distance_transform_edt(epi, sampling=spacing_rc)
        out[k][myo] = (d_endo + d_epi)[myo]
    return out


def segment_means(value_map, segment_map):
    """{AHA id: mean of finite values in that segment} (NaN when the segment is empty)."""
    values = np.asarray(value_map, float)
    seg = np.asarray(segment_map)
    ok = np.isfinite(values)
    out = {}
    for row in AHA_SEGMENTS:
        v = values[(seg == row["id"]) & ok]
        out[row["id"]] = float(v.mean()) if v.size else float("nan")
    return out
