"""Stage 1 on the CPU: move every track state to its closest approach to the beamline.

Lengths in mm. The contract is ``kernels/README.md`` section 1.
"""

from __future__ import annotations

import math

import numba
import numpy as np

from . import FASTMATH

__all__ = ["extrapolate"]

# Below this squared transverse slope a track is treated as parallel to the beam: its point of
# closest approach is undefined (division by ~0), so it stays at its own z and is unusable.
_MIN_SLOPE2 = 1e-12


# error_model="numpy": IEEE results (inf/NaN) instead of exceptions on a zero covariance.
@numba.njit(parallel=True, nogil=True, cache=True, fastmath=FASTMATH, error_model="numpy")
def extrapolate(
    x: np.ndarray, y: np.ndarray, z: np.ndarray, tx: np.ndarray, ty: np.ndarray,
    cov_xx: np.ndarray, cov_yy: np.ndarray, cov_xtx: np.ndarray, cov_yty: np.ndarray,
    cov_txtx: np.ndarray, cov_tyty: np.ndarray,
    beam_x: float, beam_y: float, zmin: float, zmax: float,
    max_track_beamline_chi2: float, max_track_z0_err: float,
    out_x: np.ndarray, out_y: np.ndarray, out_z: np.ndarray, out_wx: np.ndarray,
    out_wy: np.ndarray, out_sigma_z: np.ndarray, out_usable: np.ndarray,
) -> None:
    """Extrapolate each straight track to ``z_beam``, where it passes closest to the beamline.

    For a track with slope² ``t² = tx² + ty²``::

        z_beam = z - ((x - bx)·tx + (y - by)·ty) / t²,   Δz = z_beam - z
        x' = x + Δz·tx,  C_xx' = C_xx + 2Δz·C_x,tx + Δz²·C_tx,tx   (same for y)
        W_x = 1 / C_xx',  W_y = 1 / C_yy'
        σ_z = 1 / sqrt(tx²·W_x + ty²·W_y)
        χ²_bl = (x' - bx)²·W_x + (y' - by)²·W_y

    A track is usable iff ``zmin < z_beam < zmax``, ``χ²_bl < max_track_beamline_chi2``,
    ``σ_z < max_track_z0_err`` and both weights are positive (a covariance that is not
    positive definite can make ``C_xx'`` negative, and a χ² with it too). A track with ``t² < 1e-12`` keeps its own state (weights from
    its unpropagated covariance, ``σ_z = inf``) and is unusable. A NaN anywhere makes a track
    unusable because every cut is a comparison that NaN fails.

    Parameters
    ----------
    x, y, z, tx, ty : ndarray of float32 or float64, shape (n_tracks,)
        Track states (mm, dimensionless slopes). float32 states are read as float64: the
        results are those of the same states converted to float64, bit for bit.
    cov_xx, cov_yy, cov_xtx, cov_yty, cov_txtx, cov_tyty : ndarray of float32 or float64
        Covariance terms of the states at ``z``.
    beam_x, beam_y : float
        Beamline position (mm); the beamline is parallel to z.
    zmin, zmax : float
        Open z range (mm) of usable tracks.
    max_track_beamline_chi2, max_track_z0_err : float
        Upper bounds (exclusive) on ``χ²_bl`` and on ``σ_z`` (mm).
    out_x, out_y, out_z, out_wx, out_wy, out_sigma_z : ndarray of float64, shape (n_tracks,)
        Written: state at ``z_beam``, weights (1/mm²) and z resolution (mm).
    out_usable : ndarray of uint8, shape (n_tracks,)
        Written: 1 for usable tracks, 0 otherwise.
    """
    for i in numba.prange(len(x)):
        # float32 states widen here, exactly; a product of two of them must not round in
        # float32 (every other term meets a float64 first).
        txi, tyi = np.float64(tx[i]), np.float64(ty[i])
        slope2 = txi * txi + tyi * tyi
        if slope2 < _MIN_SLOPE2:
            out_x[i], out_y[i], out_z[i] = x[i], y[i], z[i]
            out_wx[i] = 1.0 / cov_xx[i]
            out_wy[i] = 1.0 / cov_yy[i]
            out_sigma_z[i] = np.inf
            out_usable[i] = 0
            continue
        dz = -((x[i] - beam_x) * txi + (y[i] - beam_y) * tyi) / slope2
        z_beam = z[i] + dz
        xb = x[i] + dz * txi
        yb = y[i] + dz * tyi
        wx = 1.0 / (cov_xx[i] + 2.0 * dz * cov_xtx[i] + dz * dz * cov_txtx[i])
        wy = 1.0 / (cov_yy[i] + 2.0 * dz * cov_yty[i] + dz * dz * cov_tyty[i])
        sigma_z = 1.0 / math.sqrt(txi * txi * wx + tyi * tyi * wy)
        chi2 = (xb - beam_x) ** 2 * wx + (yb - beam_y) ** 2 * wy
        out_x[i], out_y[i], out_z[i] = xb, yb, z_beam
        out_wx[i], out_wy[i], out_sigma_z[i] = wx, wy, sigma_z
        usable = (zmin < z_beam < zmax and chi2 < max_track_beamline_chi2
                  and sigma_z < max_track_z0_err and wx > 0.0 and wy > 0.0)
        out_usable[i] = 1 if usable else 0
