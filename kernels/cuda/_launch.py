"""Argument checks and launch geometry shared by the stage loaders."""

from __future__ import annotations

from typing import Any

import numpy as np

from ._module import cupy

THREADS = 128  # threads per block: a multiple of 32 (the block reductions rely on it)


def device_array(stage: str, name: str, array: Any, dtype: Any, ndim: int = 1) -> Any:
    """``array`` checked to be a C-contiguous CuPy array of ``dtype`` and ``ndim`` dimensions."""
    cp = cupy()
    if not isinstance(array, cp.ndarray):
        raise ValueError(f"{stage}: {name} must be a cupy array, got {type(array).__name__}")
    if array.dtype != dtype or array.ndim != ndim or not array.flags.c_contiguous:
        raise ValueError(
            f"{stage}: {name} must be a C-contiguous {ndim}-d {np.dtype(dtype).name} array, "
            f"got {array.ndim}-d {array.dtype}"
        )
    return array


def blocks_for(n: int) -> int:
    """Blocks of ``THREADS`` threads that cover ``n`` items (at least one)."""
    return max(1, -(-n // THREADS))
