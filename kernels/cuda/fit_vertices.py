"""Launcher of ``pvf_fit_vertices`` (stage 4): one block per event, one warp per seed. Same
signature as the twin."""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np

from ._launch import THREADS, device_array, error_buffer
from ._module import cupy, get_kernel

if TYPE_CHECKING:
    from cupy import ndarray as DeviceArray

__all__ = ["fit_vertices"]

_TRACK_INPUTS = ("x", "y", "z", "tx", "ty", "wx", "wy")
_PER_SLOT_OUTPUTS = ("out_chi2", "out_ndof", "out_n_tracks")


def fit_vertices(
    offsets: DeviceArray, x: DeviceArray, y: DeviceArray, z: DeviceArray, tx: DeviceArray,
    ty: DeviceArray, wx: DeviceArray, wy: DeviceArray, usable: DeviceArray, seeds: DeviceArray,
    n_seeds: DeviceArray, weight_offsets: DeviceArray, beam_x: float, beam_y: float,
    max_chi2: float, chi2_cut: float, min_weight: float, min_iter: int, max_iter: int,
    max_delta_z: float, min_tracks: int, max_rho2: float, out_pos: DeviceArray,
    out_cov: DeviceArray, out_chi2: DeviceArray, out_ndof: DeviceArray,
    out_n_tracks: DeviceArray, out_valid: DeviceArray, out_weights: DeviceArray,
) -> None:
    """Adaptive multi-vertex fit of every event's seeds, on the GPU.

    Arguments, units (mm) and results are those of the Numba twin
    ``pvfinder.kernels.cpu.fit_vertices`` (``kernels/README.md`` section 4), except that every
    float array, the slopes included, is float64 (the CUDA backend reads states in float64
    only). Queued on the
    current stream; returns at once. Offsets or weight offsets that do not fit the arrays are
    recorded in the device error buffer (see ``_launch.check_errors``) and their event is
    skipped.

    Raises
    ------
    ValueError
        When an array has the wrong type, dtype or shape.
    """
    stage = "fit_vertices"
    n_events, max_seeds = device_array(stage, "seeds", seeds, np.float64, (None, None)).shape
    device_array(stage, "offsets", offsets, np.int64, (n_events + 1,))
    n = device_array(stage, "x", x, np.float64, (None,)).shape[0]
    for name, array in zip(_TRACK_INPUTS, (x, y, z, tx, ty, wx, wy)):
        device_array(stage, name, array, np.float64, (n,))
    device_array(stage, "usable", usable, np.uint8, (n,))
    device_array(stage, "n_seeds", n_seeds, np.int32, (n_events,))
    device_array(stage, "weight_offsets", weight_offsets, np.int64, (n_events + 1,))
    device_array(stage, "out_pos", out_pos, np.float64, (n_events, max_seeds, 3))
    device_array(stage, "out_cov", out_cov, np.float64, (n_events, max_seeds, 6))
    for name, array in zip(_PER_SLOT_OUTPUTS, (out_chi2, out_ndof, out_n_tracks)):
        device_array(stage, name, array, np.float64, (n_events, max_seeds))
    device_array(stage, "out_valid", out_valid, np.uint8, (n_events, max_seeds))
    n_weights = device_array(stage, "out_weights", out_weights, np.float64, (None,)).shape[0]
    if n_events == 0:
        return
    # D_t of every track (scratch). From the pool on this stream: the same block each call,
    # no device allocation, and safe to free before the queued kernel has run.
    density = cupy().empty(n, dtype=np.float64)
    get_kernel("pvf_fit_vertices")(
        (n_events,), (THREADS,),
        (offsets, x, y, z, tx, ty, wx, wy, usable, np.int64(n), seeds, n_seeds, weight_offsets,
         np.int64(n_weights), np.int32(max_seeds), np.float64(beam_x), np.float64(beam_y),
         np.float64(max_chi2), np.float64(chi2_cut), np.float64(min_weight),
         np.int32(min_iter), np.int32(max_iter), np.float64(max_delta_z),
         np.int32(min_tracks), np.float64(max_rho2), out_pos, out_cov, out_chi2, out_ndof,
         out_n_tracks, out_valid, out_weights, density, error_buffer()),
    )
