"""Launchers of stage 5: ``pvf_cleanup`` (one thread per event) and ``pvf_compact`` (one warp
per event). Same signatures as the Numba twins."""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np

from ._launch import THREADS, WARPS_PER_BLOCK, blocks_for, device_array
from ._module import get_kernel

if TYPE_CHECKING:
    from cupy import ndarray as DeviceArray

__all__ = ["cleanup", "compact"]

_VERTEX_ROWS = 12  # x, y, z, six covariance terms, chi2, ndof, n_tracks


def cleanup(
    pos: DeviceArray, cov: DeviceArray, n_tracks: DeviceArray, valid: DeviceArray,
    n_seeds: DeviceArray, min_chi2_dist: float, out_order: DeviceArray, out_n: DeviceArray,
) -> None:
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


def compact(
    track_offsets: DeviceArray, weight_offsets: DeviceArray, order: DeviceArray,
    n_kept: DeviceArray, vertex_offsets: DeviceArray, weight_base: DeviceArray,
    pos: DeviceArray, cov: DeviceArray, chi2: DeviceArray, ndof: DeviceArray,
    n_tracks: DeviceArray, weights: DeviceArray, out_vertices: DeviceArray,
    out_weight_offsets: DeviceArray, out_weights: DeviceArray,
) -> None:
    """Copy the kept vertices into flat outputs, on the GPU.

    Arguments, units (mm) and results are those of the Numba twin
    ``pvfinder.kernels.cpu.cleanup.compact`` (``kernels/README.md`` section 5). Queued on the
    current stream; returns at once.

    Raises
    ------
    ValueError
        When an array has the wrong type, dtype or shape.
    """
    stage = "compact"
    n_events, max_seeds = device_array(stage, "order", order, np.int32, (None, None)).shape
    for name, array in (("track_offsets", track_offsets), ("weight_offsets", weight_offsets),
                        ("vertex_offsets", vertex_offsets), ("weight_base", weight_base)):
        device_array(stage, name, array, np.int64, (n_events + 1,))
    device_array(stage, "n_kept", n_kept, np.int32, (n_events,))
    device_array(stage, "pos", pos, np.float64, (n_events, max_seeds, 3))
    device_array(stage, "cov", cov, np.float64, (n_events, max_seeds, 6))
    for name, array in (("chi2", chi2), ("ndof", ndof), ("n_tracks", n_tracks)):
        device_array(stage, name, array, np.float64, (n_events, max_seeds))
    device_array(stage, "weights", weights, np.float64, (None,))
    capacity = device_array(stage, "out_vertices", out_vertices, np.float64,
                            (_VERTEX_ROWS, None)).shape[1]
    device_array(stage, "out_weight_offsets", out_weight_offsets, np.int64, (capacity + 1,))
    device_array(stage, "out_weights", out_weights, np.float64, (None,))
    get_kernel("pvf_compact")(
        (blocks_for(max(n_events, 1), WARPS_PER_BLOCK),), (THREADS,),
        (track_offsets, weight_offsets, order, n_kept, vertex_offsets, weight_base,
         pos, cov, chi2, ndof, n_tracks, weights, np.int64(n_events), np.int32(max_seeds),
         np.int64(capacity), out_vertices, out_weight_offsets, out_weights),
    )
