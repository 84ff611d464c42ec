"""Launcher of ``pvf_extrapolate`` (stage 1): one thread per track. Same signature as the twin."""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np

from ._launch import THREADS, blocks_for, device_array
from ._module import get_kernel

if TYPE_CHECKING:
    from cupy import ndarray as DeviceArray

__all__ = ["extrapolate"]

_INPUTS = ("x", "y", "z", "tx", "ty", "cov_xx", "cov_yy", "cov_xtx", "cov_yty", "cov_txtx",
           "cov_tyty")
_OUTPUTS = ("out_x", "out_y", "out_z", "out_wx", "out_wy", "out_sigma_z")


def extrapolate(
    x: DeviceArray, y: DeviceArray, z: DeviceArray, tx: DeviceArray, ty: DeviceArray,
    cov_xx: DeviceArray, cov_yy: DeviceArray, cov_xtx: DeviceArray, cov_yty: DeviceArray,
    cov_txtx: DeviceArray, cov_tyty: DeviceArray, beam_x: float, beam_y: float, zmin: float,
    zmax: float, max_track_beamline_chi2: float, max_track_z0_err: float, out_x: DeviceArray,
    out_y: DeviceArray, out_z: DeviceArray, out_wx: DeviceArray, out_wy: DeviceArray,
    out_sigma_z: DeviceArray, out_usable: DeviceArray,
) -> None:
    """Move every track to its closest approach to the beamline, on the GPU.

    Arguments, units (mm) and results are those of the Numba twin
    ``pvfinder.kernels.cpu.extrapolate`` (``kernels/README.md`` section 1): float64 CuPy
    arrays of one length, ``out_usable`` uint8. Queued on the current stream; returns at once.

    Raises
    ------
    ValueError
        When an array is not a C-contiguous CuPy array of the right dtype and length.
    """
    arrays = (x, y, z, tx, ty, cov_xx, cov_yy, cov_xtx, cov_yty, cov_txtx, cov_tyty)
    outputs = (out_x, out_y, out_z, out_wx, out_wy, out_sigma_z)
    n = device_array("extrapolate", "x", x, np.float64, (None,)).shape[0]
    for name, array in zip(_INPUTS + _OUTPUTS, arrays + outputs):
        device_array("extrapolate", name, array, np.float64, (n,))
    device_array("extrapolate", "out_usable", out_usable, np.uint8, (n,))
    if n == 0:
        return
    get_kernel("pvf_extrapolate")(
        (blocks_for(n),), (THREADS,),
        (*arrays, np.int64(n), np.float64(beam_x), np.float64(beam_y), np.float64(zmin),
         np.float64(zmax), np.float64(max_track_beamline_chi2), np.float64(max_track_z0_err),
         *outputs, out_usable),
    )
