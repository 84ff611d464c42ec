"""pvfinder: LHCb's beamline primary-vertex finder on CPU (Numba) and GPU (CuPy).

The one-line entry point is :func:`find_vertices`; :class:`PVFinder` keeps its buffers for
repeated calls; :func:`simulate` makes LHCb Upgrade I-like samples with truth, and
:func:`pvfinder.validation.validate` scores a reconstruction as LHCb's PV checker does.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
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

# Everything loads on first use (PEP 562), so that the ``pvfinder`` command handles Ctrl-C
# and SIGTERM before numpy, awkward and Numba are imported (half a second), and a plain
# ``import pvfinder`` still reaches pvfinder.io.read_tracks.
_HOMES = {"PVFinder": "pipeline", "find_vertices": "pipeline", "PVFinderConfig": "config",
          "MCTruth": "events", "MCVertices": "events", "TrackBatch": "events",
          "VertexBatch": "events", "available_backends": "backends",
          "get_backend": "backends", "simulate": "simulation"}
_SUBMODULES = frozenset({"backends", "benchmark", "benchmark_io", "benchmark_physics", "cli",
                         "config", "distributed", "events", "io", "kernels", "pipeline",
                         "simulation", "validation"})


def __getattr__(name: str) -> Any:
    if name in _HOMES:
        value = getattr(importlib.import_module(f"{__name__}.{_HOMES[name]}"), name)
        globals()[name] = value  # found directly from now on
        return value
    if name in _SUBMODULES:
        return importlib.import_module(f"{__name__}.{name}")
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def __dir__() -> list[str]:  # tab completion shows what is not loaded yet
    return sorted(set(globals()) | set(_HOMES) | _SUBMODULES)
