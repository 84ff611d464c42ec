"""Launcher of ``pvf_histogram`` (stage 2): one block per event, the event's histogram in
dynamic shared memory. Same signature as the twin."""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np

from ._launch import (
    DEFAULT_SHARED_BYTES,
    THREADS,
    device_array,
    error_buffer,
    max_dynamic_shared_bytes,
)
from ._module import get_kernel

if TYPE_CHECKING:
    from cupy import ndarray as DeviceArray

__all__ = ["histogram"]


def histogram(
    offsets: DeviceArray, z_beam: DeviceArray, sigma_z: DeviceArray, usable: DeviceArray,
    zmin: float, bin_width: float, out_hist: DeviceArray,
) -> None:
    """Zero and fill one z histogram per event, on the GPU.

    Arguments, units (mm) and results are those of the Numba twin
    ``pvfinder.kernels.cpu.histogram`` (``kernels/README.md`` section 2). Queued on the current
    stream; returns at once. Offsets that point outside the track arrays are recorded in the
    device error buffer (see ``_launch.check_errors``) and give an empty row.

    Raises
    ------
    ValueError
        When an array has the wrong type, dtype or shape, or a histogram row does not fit in
        the shared memory of one block.
    """
    stage = "histogram"
    n_events = device_array(stage, "offsets", offsets, np.int64, (None,)).shape[0] - 1
    n = device_array(stage, "z_beam", z_beam, np.float64, (None,)).shape[0]
    device_array(stage, "sigma_z", sigma_z, np.float64, (n,))
    device_array(stage, "usable", usable, np.uint8, (n,))
    if n_events < 0:
        raise ValueError(f"{stage}: offsets must hold n_events + 1 >= 1 entries")
    n_bins = device_array(stage, "out_hist", out_hist, np.float64, (n_events, None)).shape[1]
    if n_events == 0:
        return
    kernel = get_kernel("pvf_histogram")
    shared = 8 * n_bins
    if shared > DEFAULT_SHARED_BYTES:  # e.g. finer bins: opt in to more shared memory
        if shared > max_dynamic_shared_bytes():
            raise ValueError(f"{stage}: out_hist rows of {n_bins} bins do not fit in the "
                             f"shared memory of one block ({max_dynamic_shared_bytes()} bytes)")
        kernel.max_dynamic_shared_size_bytes = shared
    kernel((n_events,), (THREADS,),
           (offsets, z_beam, sigma_z, usable, np.int64(n), np.float64(zmin),
            np.float64(bin_width), np.int32(n_bins), out_hist, error_buffer()),
           shared_mem=shared)
