"""Launcher of ``pvf_find_peaks`` (stage 3): one warp per event. Same signature as the twin."""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np

from ._launch import THREADS, WARPS_PER_BLOCK, blocks_for, device_array
from ._module import get_kernel

if TYPE_CHECKING:
    from cupy import ndarray as DeviceArray

__all__ = ["find_peaks"]


def find_peaks(
    hist: DeviceArray, zmin: float, bin_width: float, threshold: float,
    min_tracks_in_seed: float, min_dip_density: float, min_density: float,
    out_seeds: DeviceArray, out_n_seeds: DeviceArray,
) -> None:
    """Turn each event's z histogram into seeds, on the GPU.

    Arguments, units (mm) and results are those of the Numba twin
    ``pvfinder.kernels.cpu.find_peaks`` (``kernels/README.md`` section 3). Queued on the
    current stream; returns at once.

    Raises
    ------
    ValueError
        When an array has the wrong type, dtype or shape.
    """
    stage = "find_peaks"
    n_events, n_bins = device_array(stage, "hist", hist, np.float64, (None, None)).shape
    max_seeds = device_array(stage, "out_seeds", out_seeds, np.float64, (n_events, None)).shape[1]
    device_array(stage, "out_n_seeds", out_n_seeds, np.int32, (n_events,))
    if n_events == 0:
        return
    get_kernel("pvf_find_peaks")(
        (blocks_for(n_events, WARPS_PER_BLOCK),), (THREADS,),
        (hist, np.int64(n_events), np.int32(n_bins), np.float64(zmin), np.float64(bin_width),
         np.float64(threshold), np.float64(min_tracks_in_seed), np.float64(min_dip_density),
         np.float64(min_density), np.int32(max_seeds), out_seeds, out_n_seeds),
    )
