"""CardiacAISeg engine: Qt-free loading, models, inference, geometry, measures and reports.

Heavy packages (torch, matplotlib, slicer) are imported inside the functions that need them.
"""
__version__ = "0.1.0"

from .errors import CardiacInputError, CancelledError, OutputExistsError  # noqa: F401
from .study import Study, CINE, PERFUSION  # noqa: F401
