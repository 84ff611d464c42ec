"""Launcher of ``pvf_cleanup`` (stage 5); same signature as the Numba twin."""

from __future__ import annotations

import numpy as np

from ._launch import THREADS, blocks_for, device_array
from ._module import get_kernel

__all__ = ["cleanup"]


def cleanup(pos, cov, n_tracks, valid, n_seeds, min_chi2_dist, out_order, out_n) -> None:
    """Drop duplicate vertices and order the rest by z (see ``kernels/README.md``)."""
    device_array("cleanup", "pos", pos, np.float64, ndim=3)
    device_array("cleanup", "cov", cov, np.float64, ndim=3)
    device_array("cleanup", "n_tracks", n_tracks, np.float64, ndim=2)
    device_array("cleanup", "valid", valid, np.uint8, ndim=2)
    device_array("cleanup", "n_seeds", n_seeds, np.int32)
    device_array("cleanup", "out_order", out_order, np.int32, ndim=2)
    device_array("cleanup", "out_n", out_n, np.int32)
    n_events, max_seeds = out_order.shape
    if n_events == 0:
        return
    get_kernel("pvf_cleanup")(
        (blocks_for(n_events),), (THREADS,),
        (pos, cov, n_tracks, valid, n_seeds, np.int64(n_events), np.int32(max_seeds),
         np.float64(min_chi2_dist), out_order, out_n),
    )
