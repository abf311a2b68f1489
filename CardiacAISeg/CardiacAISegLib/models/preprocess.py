"""Physical-mode preprocessing shared by training and inference (docs/algorithms.md §2).

Slices are resampled in-plane to the model's pixel size and intensities are normalised per
volume by robust percentiles, so the network sees the same scale whatever the scanner,
vendor or stored intensity range (ACDC here is min-max scaled, DICOM is raw).
"""
import numpy as np


def normalise_volume(volume, low=1.0, high=99.5):
    """Map the [low, high] percentiles of a (S, R, C) volume to [0, 1], clipped."""
    v = np.asarray(volume, np.float32)
    lo, hi = np.percentile(v, [low, high])
    if not np.isfinite(lo) or not np.isfinite(hi) or hi <= lo:
        return np.zeros_like(v)
    return np.clip((v - lo) / (hi - lo), 0.0, 1.0).astype(np.float32)


def model_grid_shape(shape_rc, spacing_rc, pixel_mm):
    """Rows/cols of the model grid covering the same field of view at ``pixel_mm``."""
    return tuple(max(1, int(round(n * s / pixel_mm))) for n, s in zip(shape_rc, spacing_rc))


def resample_slices(slices, size, mode="bilinear"):
    """(N, C, R, C) tensor -> (N, C, size) with half-pixel-aligned sampling (exact inverse grid)."""
    import torch.nn.functional as F

    if mode == "nearest":
        return F.interpolate(slices, size=size, mode="nearest-exact")
    return F.interpolate(slices, size=size, mode=mode, align_corners=False)


def pad_to_multiple(x, multiple):
    """Zero-pad the last two dims of a tensor to a multiple; returns the padded tensor and the crop."""
    import torch.nn.functional as F

    h, w = x.shape[-2:]
    ph, pw = (-h) % multiple, (-w) % multiple
    top, left = ph // 2, pw // 2
    x = F.pad(x, (left, pw - left, top, ph - top))
    return x, (slice(top, top + h), slice(left, left + w))


def with_context_slices(volume, n, contiguous=True):
    """(S, R, C) volume -> (S, 2n+1, R, C): each slice with its n neighbours on each side, in
    slice order, zeros beyond the stack. ``contiguous=False`` (slices far apart or not in order:
    the heart-finding pass on a few mid slices, perfusion key images 20-30 mm apart) gives zero
    neighbours throughout, which a 2.5D network is trained to read as "no context"."""
    v = np.asarray(volume, np.float32)
    if n == 0:
        return v[:, None]
    s = v.shape[0]
    out = np.zeros((s, 2 * n + 1, *v.shape[1:]), np.float32)
    out[:, n] = v
    if contiguous:
        for d in range(1, n + 1):
            out[d:, n - d] = v[:s - d]   # the slice d before
            out[:s - d, n + d] = v[d:]   # the slice d after
    return out
