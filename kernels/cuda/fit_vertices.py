"""Launcher of ``pvf_fit_vertices`` (stage 4); same signature as the Numba twin."""

from __future__ import annotations

import numpy as np

from ._launch import THREADS, device_array
from ._module import cupy, get_kernel

__all__ = ["fit_vertices"]


def fit_vertices(offsets, x, y, z, tx, ty, wx, wy, usable, seeds, n_seeds, weight_offsets,
                 beam_x, beam_y, max_chi2, chi2_cut, min_weight, min_iter, max_iter,
                 max_delta_z, min_tracks, max_rho2, out_pos, out_cov, out_chi2, out_ndof,
                 out_n_tracks, out_valid, out_weights) -> None:
    """Adaptive multi-vertex fit, one block per event (see ``kernels/README.md``)."""
    stage = "fit_vertices"
    device_array(stage, "offsets", offsets, np.int64)
    for name, array in (("x", x), ("y", y), ("z", z), ("tx", tx), ("ty", ty), ("wx", wx),
                        ("wy", wy), ("out_weights", out_weights)):
        device_array(stage, name, array, np.float64)
    device_array(stage, "usable", usable, np.uint8)
    device_array(stage, "seeds", seeds, np.float64, ndim=2)
    device_array(stage, "n_seeds", n_seeds, np.int32)
    device_array(stage, "weight_offsets", weight_offsets, np.int64)
    device_array(stage, "out_pos", out_pos, np.float64, ndim=3)
    device_array(stage, "out_cov", out_cov, np.float64, ndim=3)
    for name, array in (("out_chi2", out_chi2), ("out_ndof", out_ndof),
                        ("out_n_tracks", out_n_tracks)):
        device_array(stage, name, array, np.float64, ndim=2)
    device_array(stage, "out_valid", out_valid, np.uint8, ndim=2)
    n_events, max_seeds = seeds.shape
    if len(offsets) != n_events + 1 or len(weight_offsets) != n_events + 1:
        raise ValueError("fit_vertices: offsets, weight_offsets and seeds disagree on the events")
    if n_events == 0:
        return
    density = cupy().empty(len(x), dtype=np.float64)  # D_t of every track (scratch)
    get_kernel("pvf_fit_vertices")(
        (n_events,), (THREADS,),
        (offsets, x, y, z, tx, ty, wx, wy, usable, seeds, n_seeds, weight_offsets,
         np.int32(max_seeds), np.float64(beam_x), np.float64(beam_y), np.float64(max_chi2),
         np.float64(chi2_cut), np.float64(min_weight), np.int32(min_iter), np.int32(max_iter),
         np.float64(max_delta_z), np.int32(min_tracks), np.float64(max_rho2),
         out_pos, out_cov, out_chi2, out_ndof, out_n_tracks, out_valid, out_weights, density),
    )
