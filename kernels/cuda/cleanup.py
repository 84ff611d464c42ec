"""Launcher of ``pvf_cleanup`` (stage 5): one thread per event. Same signature as the twin."""

from __future__ import annotations

import numpy as np

from ._launch import THREADS, blocks_for, device_array
from ._module import get_kernel

__all__ = ["cleanup"]


def cleanup(pos, cov, n_tracks, valid, n_seeds, min_chi2_dist, out_order, out_n) -> None:
    """Drop duplicate vertices and order the rest by z, on the GPU.

    Arguments, units (mm) and results are those of the Numba twin
    ``pvfinder.kernels.cpu.cleanup`` (``kernels/README.md`` section 5). Queued on the current
    stream; returns at once.

    Raises
    ------
    ValueError
        When an array has the wrong type, dtype or shape.
    """
    stage = "cleanup"
    n_events, max_seeds = device_array(stage, "out_order", out_order, np.int32,
                                       (None, None)).shape
    device_array(stage, "pos", pos, np.float64, (n_events, max_seeds, 3))
    device_array(stage, "cov", cov, np.float64, (n_events, max_seeds, 6))
    device_array(stage, "n_tracks", n_tracks, np.float64, (n_events, max_seeds))
    device_array(stage, "valid", valid, np.uint8, (n_events, max_seeds))
    device_array(stage, "n_seeds", n_seeds, np.int32, (n_events,))
    device_array(stage, "out_n", out_n, np.int32, (n_events,))
    if n_events == 0:
        return
    get_kernel("pvf_cleanup")(
        (blocks_for(n_events),), (THREADS,),
        (pos, cov, n_tracks, valid, n_seeds, np.int64(n_events), np.int32(max_seeds),
         np.float64(min_chi2_dist), out_order, out_n),
    )
