"""order_stats: the fast row medians and percentiles must be numpy's, to the bit, for every dtype
the readers hand on (they replace np.median / np.percentile in the perfusion path)."""
import numpy as np
import pytest

from CardiacAISegLib.order_stats import row_median, row_percentile

SHAPES = [(60, 2765), (5, 7), (3, 4, 10), (6, 1), (4, 2), (2, 3, 9)]


def _values(dtype, shape, rng):
    if dtype == np.uint16:   # near the top of the range: a sum of two would overflow
        return rng.integers(60000, 65535, size=shape).astype(dtype)
    return (rng.normal(size=shape) * 1000).astype(dtype)


@pytest.mark.parametrize("dtype", [np.float32, np.float64, np.int16, np.uint16, np.int64])
def test_equal_to_numpy_to_the_bit(dtype):
    rng = np.random.default_rng(7)
    for shape in SHAPES:
        x = _values(dtype, shape, rng)
        for q in (0, 1, 25, 33.3, 50, 75, 99, 99.5, 100):
            expected = np.percentile(x, q, axis=-1)
            got = row_percentile(x, q)
            assert got.dtype == expected.dtype and np.array_equal(got, expected), (dtype, shape, q)
        expected = np.median(x, axis=-1, keepdims=True)
        got = row_median(x, keepdims=True)
        assert got.dtype == expected.dtype and np.array_equal(got, expected), (dtype, shape)


def test_leaves_the_input_alone():
    x = np.random.default_rng(0).normal(size=(4, 11))
    before = x.copy()
    row_median(x)
    row_percentile(x, 75)
    assert np.array_equal(x, before)
