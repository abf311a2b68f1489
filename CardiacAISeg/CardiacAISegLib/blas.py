"""numpy's BLAS on one thread while the engine computes.

The engine's linear algebra is many small products (a 60-frame Gram matrix, 3x3 normal
equations per pixel, a few thousand curves against a grid of basis curves). OpenBLAS splits
each over all cores and waits for them: on this project's 2-core machines a (60 x 4,900) Gram
matrix took 1.1 ms on one thread and 9-300 ms on two, the more so when anything else runs
(measured with OPENBLAS_CORETYPE=Haswell, numpy 2.4). torch keeps its own thread pool for the
networks (OpenMP, not limited here).
"""
from contextlib import contextmanager


@contextmanager
def single_blas_thread():
    try:
        from threadpoolctl import threadpool_limits
    except ImportError:   # without threadpoolctl the numbers are the same, only slower
        yield
        return
    with threadpool_limits(limits=1, user_api="blas"):
        yield
