"""numpy versions of the few torch operations inference needs around the network.

When ONNX Runtime runs the network, these keep torch out of the process altogether (importing
torch costs about a second of a 1.5 s analysis). Each one reproduces its torch counterpart in
``preprocess.py`` to float32 rounding (checked in Testing/Python/test_onnx_runtime.py).
"""
import numpy as np


def _bilinear_taps(n_in, n_out):
    """Source pixels and weights of ``F.interpolate(mode='bilinear', align_corners=False)`` along
    one axis: output pixel o = w0[o] * in[i0[o]] + w1[o] * in[i1[o]].

    torch samples output pixel o at source (o + 0.5) * n_in / n_out - 0.5, clamped below at 0,
    between floor(src) and the next pixel (clamped at the last one). torch works in float32 and
    its compiled kernel rounds scale * (o + 0.5) - 0.5 once (a fused multiply-add); doing the same
    here keeps the weights equal to torch's, so resampled images agree to 1 ulp, not 1e-5.
    """
    scale = np.float32(n_in) / np.float32(n_out)
    src = (np.float64(scale) * (np.arange(n_out) + 0.5) - 0.5).astype(np.float32)
    src = np.maximum(src, np.float32(0.0))
    i0 = np.minimum(src.astype(np.int64), n_in - 1)
    i1 = np.minimum(i0 + 1, n_in - 1)
    w1 = src - i0.astype(np.float32)
    return i0, i1, np.float32(1.0) - w1, w1


def resample_slices(slices, size):
    """(N, C, R, C) float32 array -> (N, C, *size), bilinear with half-pixel alignment, like
    ``preprocess.resample_slices`` (the same grid convention, so predictions overlay the input).

    Two taps per axis gathered directly (columns, then rows, in torch's order of operations):
    a dense interpolation matrix product is 20-50x slower on stacks of slices.
    """
    slices = np.asarray(slices, np.float32)
    rows, cols = slices.shape[-2:]
    if (rows, cols) == tuple(size):
        return slices.copy()
    c0, c1, cw0, cw1 = _bilinear_taps(cols, size[1])
    r0, r1, rw0, rw1 = _bilinear_taps(rows, size[0])
    x = slices[..., c0] * cw0 + slices[..., c1] * cw1
    return x[..., r0, :] * rw0[:, None] + x[..., r1, :] * rw1[:, None]


def pad_to_multiple(x, multiple):
    """Zero-pad the last two axes to a multiple (centred as ``preprocess.pad_to_multiple``);
    returns the padded array and the crop that undoes it."""
    h, w = x.shape[-2:]
    ph, pw = (-h) % multiple, (-w) % multiple
    top, left = ph // 2, pw // 2
    pad = [(0, 0)] * (x.ndim - 2) + [(top, ph - top), (left, pw - left)]
    return np.pad(x, pad), (slice(top, top + h), slice(left, left + w))


def softmax(scores, axis=1):
    shifted = scores - scores.max(axis=axis, keepdims=True)
    e = np.exp(shifted)
    return e / e.sum(axis=axis, keepdims=True)
