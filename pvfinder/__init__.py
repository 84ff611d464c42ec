"""pvfinder: LHCb's beamline primary-vertex finder on CPU (Numba) and GPU (CuPy).

The one-line entry point is :func:`find_vertices`; :class:`PVFinder` keeps its buffers for
repeated calls; :func:`simulate` makes LHCb Upgrade I-like samples with truth, and
:func:`pvfinder.validation.validate` scores a reconstruction as LHCb's PV checker does.
"""

from __future__ import annotations

import importlib
from typing import Any

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

# Submodules with heavier imports (uproot, Dask) load on first use: pvfinder.io.read_tracks
# works after a plain ``import pvfinder``.
_SUBMODULES = frozenset({"io", "validation", "distributed", "benchmark", "benchmark_io"})


def __getattr__(name: str) -> Any:
    if name in _SUBMODULES:
        return importlib.import_module(f"{__name__}.{name}")
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def __dir__() -> list[str]:  # tab completion shows the submodules not loaded yet
    return sorted(set(globals()) | _SUBMODULES)
