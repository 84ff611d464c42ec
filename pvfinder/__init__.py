"""pvfinder: LHCb's beamline primary-vertex finder on CPU (Numba) and GPU (CuPy).

The one-line entry point is :func:`find_vertices`; :class:`PVFinder` keeps its buffers for
repeated calls; :func:`simulate` makes LHCb Upgrade I-like samples with truth, and
:func:`pvfinder.validation.validate` scores a reconstruction as LHCb's PV checker does.
"""

from __future__ import annotations

from .backends import available_backends, get_backend
from .config import PVFinderConfig
from .events import MCTruth, MCVertices, TrackBatch, VertexBatch
from .pipeline import PVFinder, find_vertices
from .simulation import simulate

__version__ = "0.1.0"

__all__ = [
    "MCTruth",
    "MCVertices",
    "PVFinder",
    "PVFinderConfig",
    "TrackBatch",
    "VertexBatch",
    "__version__",
    "available_backends",
    "find_vertices",
    "get_backend",
    "simulate",
]
