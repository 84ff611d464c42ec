"""pvfinder: LHCb's beamline primary-vertex finder on CPU (Numba) and GPU (CuPy)."""

from __future__ import annotations

from .events import MCTruth, MCVertices, TrackBatch, VertexBatch

__version__ = "0.1.0"

__all__ = ["MCTruth", "MCVertices", "TrackBatch", "VertexBatch", "__version__"]
