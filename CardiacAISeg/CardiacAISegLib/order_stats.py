"""Medians and percentiles along the last axis of finite arrays, equal to numpy's, 4-6x faster.

``np.median`` and ``np.percentile`` partition each row at the order statistics they need and
also at its last element, to find NaNs; on the (frames, pixels) arrays of the perfusion
path that extra pass cost more than the statistic (the motion correction's mask-offset search
alone evaluated a frame-wise median some 30 times per slice: 90 ms of a 1.1 s analysis). The
engine's images are finite by the time they get here (readers refuse or replace NaN and inf), so
one partition at the lower order statistic does, and the next one up is the smallest value
above it. The interpolation is numpy's ``linear`` method, written as numpy writes it, so the
results agree to the bit (Testing/Python/test_order_stats.py).
"""
import numpy as np


def _lerp(below, above, weight):
    # numpy's _lerp: from the nearer end, so that weight 0 and 1 give the ends exactly; 1 - weight
    # in double precision before it meets a float32 row, as numpy does
    diff = above - below
    return np.where(weight >= 0.5, above - diff * (1 - weight), below + diff * weight)


def _result_type(values):
    # numpy keeps a float input's precision and takes whole numbers to float64
    return values.dtype if values.dtype.kind == "f" else np.dtype(np.float64)


def row_percentile(values, q):
    """``np.percentile(values, q, axis=-1)`` for finite ``values`` and one ``q`` in [0, 100]."""
    values = np.asarray(values)
    result = _result_type(values)
    n = values.shape[-1]
    position = q / 100 * (n - 1)
    lower = int(np.floor(position))
    if lower >= n - 1:
        return np.partition(values, n - 1, axis=-1)[..., n - 1].astype(result)
    part = np.partition(values, lower, axis=-1)
    below = part[..., lower].astype(result)
    above = part[..., lower + 1:].min(-1).astype(result)
    return _lerp(below, above, float(position - lower))   # a Python float, as numpy passes it


def row_median(values, keepdims=False):
    """``np.median(values, axis=-1, keepdims=keepdims)`` for finite ``values``."""
    values = np.asarray(values)
    result = _result_type(values)
    n = values.shape[-1]
    k = n // 2
    part = np.partition(values, k, axis=-1)
    upper = part[..., k].astype(result)
    median = upper if n % 2 else (part[..., :k].max(-1).astype(result) + upper) / result.type(2)
    return median[..., None] if keepdims else median
