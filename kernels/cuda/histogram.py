"""Launcher of ``pvf_histogram`` (stage 2); same signature as the Numba twin."""

from __future__ import annotations

import numpy as np

from ._launch import THREADS, device_array
from ._module import get_kernel

__all__ = ["histogram"]

_DEFAULT_SHARED_LIMIT = 48 * 1024  # bytes of dynamic shared memory without an opt-in


def histogram(offsets, z_beam, sigma_z, usable, zmin, bin_width, out_hist) -> None:
    """Fill one z histogram per event in shared memory (see ``kernels/README.md``)."""
    device_array("histogram", "offsets", offsets, np.int64)
    device_array("histogram", "z_beam", z_beam, np.float64)
    device_array("histogram", "sigma_z", sigma_z, np.float64)
    device_array("histogram", "usable", usable, np.uint8)
    device_array("histogram", "out_hist", out_hist, np.float64, ndim=2)
    n_events, n_bins = out_hist.shape
    if len(offsets) != n_events + 1:
        raise ValueError("histogram: out_hist needs one row per event (len(offsets) - 1)")
    if n_events == 0:
        return
    kernel = get_kernel("pvf_histogram")
    shared = 8 * n_bins
    if shared > _DEFAULT_SHARED_LIMIT:  # e.g. finer bins: opt in to more shared memory
        kernel.max_dynamic_shared_size_bytes = shared
    kernel((n_events,), (THREADS,),
           (offsets, z_beam, sigma_z, usable, np.float64(zmin), np.float64(bin_width),
            np.int32(n_bins), out_hist),
           shared_mem=shared)
