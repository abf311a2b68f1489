"""A myocardial ring ROI for a perfusion slice without labels or a network.

At the AIF peak the LV blood pool is the brightest compact blob near the image centre
(threshold 30% of the AIF peak, component scored by size / distance to the centre); its
convex hull takes in the papillary muscles. The ring is the band gap_px < d <= gap_px +
width_px (pixel distance outside the hull), minus pixels whose curve ever exceeds
``max_fraction`` of the AIF peak (RV blood or blood partial volume). It is a quick global
MBF check (``analyze --labels ring``), not a segmentation: it gives no RV, so no AHA sectors.
"""
import numpy as np

from ..errors import CardiacInputError
from ..labels import LV, MYO


def peak_image(frames, aif):
    """Mean of the (T, R, C) frames around the AIF peak: the blood pool at its brightest."""
    peak = int(np.argmax(aif))
    return frames[max(0, peak - 1): peak + 2].mean(0)


def convex_fill(points, shape):
    """Boolean mask of the convex hull of (N, 2) pixel ``points``; None when they span no area."""
    from scipy.spatial import ConvexHull, Delaunay, QhullError

    try:
        hull = Delaunay(points[ConvexHull(points).vertices])
    except QhullError:
        return None
    return (hull.find_simplex(np.argwhere(np.ones(shape, bool))) >= 0).reshape(shape)


def ring_mask(frames, aif, gap_px=1.0, width_px=4.0, max_fraction=0.25):
    """(pool, ring) boolean (R, C) masks for one slice's (T, R, C) frames."""
    from scipy import ndimage

    aif = np.asarray(aif, float)
    peak = int(np.argmax(aif))
    img = peak_image(frames, aif)
    labels, n = ndimage.label(img > 0.3 * aif[peak])
    if n == 0:
        raise CardiacInputError("ring ROI", "no blood pool brighter than 30% of the AIF peak at the AIF peak")
    centre = np.array(img.shape) / 2.0
    idx = range(1, n + 1)
    score = [size / (1 + np.hypot(*(np.array(cm) - centre)))
             for size, cm in zip(ndimage.sum(np.ones_like(img), labels, idx), ndimage.center_of_mass(img, labels, idx))]
    pts = np.argwhere(labels == 1 + int(np.argmax(score)))
    pool = convex_fill(pts, img.shape) if len(pts) >= 4 else None
    if pool is None:
        raise CardiacInputError("ring ROI", "blood pool too small for a ring ROI")
    dist = ndimage.distance_transform_edt(~pool)
    ring = (dist > gap_px) & (dist <= gap_px + width_px) & (frames.max(0) < max_fraction * aif[peak])
    return pool, ring


def ring_labels(study):
    """(S, R, C) label map with the blood pool (LV) and the ring (myocardium) of every slice."""
    if study.aif is None:
        raise CardiacInputError(study.source or study.name, "a ring ROI needs the AIF (give --aif)")
    out = np.zeros(study.images.shape[1:], np.uint8)
    for k in range(study.n_slices):
        pool, ring = ring_mask(study.images[:, k], study.aif)
        out[k][pool] = LV
        out[k][ring] = MYO
    return out
