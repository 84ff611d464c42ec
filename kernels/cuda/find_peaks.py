"""Launcher of ``pvf_find_peaks`` (stage 3); same signature as the Numba twin."""

from __future__ import annotations

import numpy as np

from ._launch import THREADS, blocks_for, device_array
from ._module import get_kernel

__all__ = ["find_peaks"]


def find_peaks(hist, zmin, bin_width, threshold, min_tracks_in_seed, min_dip_density,
               min_density, out_seeds, out_n_seeds) -> None:
    """Turn each event's histogram into seeds, one thread per event (see ``kernels/README.md``)."""
    device_array("find_peaks", "hist", hist, np.float64, ndim=2)
    device_array("find_peaks", "out_seeds", out_seeds, np.float64, ndim=2)
    device_array("find_peaks", "out_n_seeds", out_n_seeds, np.int32)
    n_events, n_bins = hist.shape
    if out_seeds.shape[0] != n_events or len(out_n_seeds) != n_events:
        raise ValueError("find_peaks: out_seeds and out_n_seeds need one row per event")
    if n_events == 0:
        return
    get_kernel("pvf_find_peaks")(
        (blocks_for(n_events),), (THREADS,),
        (hist, np.int64(n_events), np.int32(n_bins), np.float64(zmin), np.float64(bin_width),
         np.float64(threshold), np.float64(min_tracks_in_seed), np.float64(min_dip_density),
         np.float64(min_density), np.int32(out_seeds.shape[1]), out_seeds, out_n_seeds),
    )
