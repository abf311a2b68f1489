"""numpy's BLAS on one thread while the engine computes.

The engine's linear algebra is many small products (a 60-frame Gram matrix, 3x3 normal
equations per pixel, a few thousand curves against a grid of basis curves). OpenBLAS splits
each over all cores and waits for them: on this project's 2-core machines a (60 x 4,900) Gram
matrix took 1.1 ms on one thread and 9-300 ms on two, the more so when anything else runs
(measured with OPENBLAS_CORETYPE=Haswell, numpy 2.4). torch keeps its own thread pool for the
networks (OpenMP, not limited here).
"""
from contextlib import contextmanager

_controller = []   # one ThreadpoolController: finding the loaded libraries costs 1-35 ms a time


def _blas_controller():
    if not _controller:
        from threadpoolctl import ThreadpoolController

        _controller.append(ThreadpoolController())   # numpy's BLAS is loaded by now (numpy is imported)
    return _controller[0]


@contextmanager
def single_blas_thread():
    try:
        controller = _blas_controller()
    except ImportError:   # without threadpoolctl the numbers are the same, only slower
        yield
        return
    with controller.limit(limits=1, user_api="blas"):
        yield
