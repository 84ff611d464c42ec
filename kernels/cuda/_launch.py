"""Argument checks, launch geometry and the device error buffer shared by the stage loaders.

Loaders check shapes and dtypes on the host (a ``ValueError`` naming the kernel and the
argument) and never synchronise. What only the device can see (offsets that point outside the
track arrays, weight blocks of the wrong length) the kernels record in a small error buffer,
one per device and calling thread, and skip; :func:`check_errors` synchronises, turns a recorded error into a
``ValueError`` naming the kernel, and clears it.
"""

from __future__ import annotations

import functools
import threading
from collections.abc import Sequence
from typing import Any

import numpy as np

from .. import BAD_TRACK_OFFSETS
from ._module import cupy, current_device_id

__all__ = [
    "DEFAULT_SHARED_BYTES",
    "ERROR_MESSAGES",
    "EVENT_BITS",
    "THREADS",
    "WARPS_PER_BLOCK",
    "blocks_for",
    "check_errors",
    "device_array",
    "error_buffer",
    "max_dynamic_shared_bytes",
]

THREADS = 128  # threads per block: a multiple of 32 (the warp-level kernels rely on it)
WARPS_PER_BLOCK = THREADS // 32  # events per block of the kernels that give each a warp
DEFAULT_SHARED_BYTES = 48 * 1024  # dynamic shared memory a block gets without opting in
# The error buffer holds (code << EVENT_BITS | event), all bits set while there is no error
# (PVF_EVENT_BITS of common.cuh; a test keeps them in step).
EVENT_BITS = 40
_NO_ERROR = np.iinfo(np.uint64).max

# Codes of `PVF_ERROR_*` in common.cuh → (kernel, what is wrong); a test keeps them in step.
ERROR_MESSAGES: dict[int, tuple[str, str]] = {
    1: ("histogram", BAD_TRACK_OFFSETS),
    2: ("fit_vertices", BAD_TRACK_OFFSETS),
    3: ("fit_vertices", "weight_offsets do not give min(n_seeds, max_seeds) * n_tracks weights "
                        "per event inside out_weights"),
}


def device_array(
    stage: str, name: str, array: Any, dtype: Any, shape: Sequence[int | None]
) -> Any:
    """``array`` checked to be a C-contiguous CuPy array of ``dtype`` and ``shape``.

    ``None`` in ``shape`` accepts any length along that axis.

    Raises
    ------
    ValueError
        Naming ``stage`` and ``name``, when a check fails.
    """
    cp = cupy()
    if not isinstance(array, cp.ndarray):
        raise ValueError(f"{stage}: {name} must be a cupy array, got {type(array).__name__}")
    wanted = "(" + ", ".join("any" if n is None else str(n) for n in shape) + ")"
    if (array.dtype != dtype or array.ndim != len(shape) or not array.flags.c_contiguous
            or any(n is not None and n != m for n, m in zip(shape, array.shape))):
        raise ValueError(
            f"{stage}: {name} must be a C-contiguous {np.dtype(dtype).name} array of shape "
            f"{wanted}, got {'' if array.flags.c_contiguous else 'non-contiguous '}"
            f"{array.dtype} of shape {array.shape}"
        )
    return array


def blocks_for(n: int, per_block: int = THREADS) -> int:
    """Blocks that cover ``n`` items at ``per_block`` items a block (at least one)."""
    return max(1, -(-n // per_block))


_THREAD_BUFFERS = threading.local()


def error_buffer() -> Any:
    """The error buffer of the current device and the calling thread: one int64 holding the
    bits of ``code << EVENT_BITS | event`` of the first bad input, all set while there is
    none. One per thread, so that finders run by two threads on one device neither raise
    nor clear each other's errors."""
    buffers = _THREAD_BUFFERS.__dict__.setdefault("by_device", {})
    device = current_device_id()
    if device not in buffers:
        buffers[device] = cupy().full(1, -1, dtype=np.int64)  # all bits set
    return buffers[device]


def check_errors() -> None:
    """Wait for the kernels queued so far and raise the first bad input they recorded.

    Raises
    ------
    ValueError
        Naming the kernel, the problem and the first event where it was seen; the buffer is
        cleared, so the next call starts clean.
    """
    buffer = error_buffer()
    key = int(buffer.get().view(np.uint64)[0])
    if key == _NO_ERROR:
        return
    buffer.fill(-1)
    code, event = key >> EVENT_BITS, key & ((1 << EVENT_BITS) - 1)
    kernel, message = ERROR_MESSAGES.get(code, ("unknown kernel", f"error code {code}"))
    raise ValueError(f"{kernel}: {message} (first seen in event {event})")


@functools.cache
def _shared_limit(device_id: int) -> int:
    attributes = cupy().cuda.Device(device_id).attributes
    return int(attributes.get("MaxSharedMemoryPerBlockOptin", DEFAULT_SHARED_BYTES))


def max_dynamic_shared_bytes() -> int:
    """The most dynamic shared memory one block may opt in to on the current device."""
    return _shared_limit(current_device_id())
