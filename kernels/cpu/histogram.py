"""Stage 2 on the CPU: one z histogram per event of the tracks' smeared z_beam.

Lengths in mm. The contract is ``kernels/README.md`` section 2.
"""

from __future__ import annotations

import math

import numba
import numpy as np

from . import FASTMATH, check_event_ranges

__all__ = ["histogram", "poly_cdf"]

# Half-width of the kernel in units of σ_z. The polynomial CDF below integrates the density
# (15/16)(1 - s²)² on s = u/a ∈ [-1, 1] (a biweight kernel), whose variance is a²/7 in u:
# a = sqrt(7) makes it a unit-variance stand-in for the Gaussian.
HALF_WIDTH = math.sqrt(7.0)


@numba.njit(cache=True, fastmath=FASTMATH)
def _cdf_of_scaled(s: float) -> float:
    """:func:`poly_cdf` of ``u = a·s``: the hot loop works in units of the half-width.

    Clamping s to [-1, 1] gives exactly 0 and 1 outside (η = 0 there) without a branch.
    """
    s = min(max(s, -1.0), 1.0)
    eta = 1.0 - s * s
    return 0.5 + s * (0.5 + eta * (0.25 + eta * 0.1875))


@numba.njit(cache=True, fastmath=FASTMATH)
def poly_cdf(u: float) -> float:
    """Cheap cumulative function of the track z probability, in units of σ_z.

    ``F(u) = 1/2 + (u/a)·(1/2 + η(1/4 + η·3/16))`` with ``η = 1 - (u/a)²`` and ``a = sqrt(7)``;
    its derivative is ``(15/16a)·η² ≥ 0``, so F rises monotonically from exactly 0 at ``u = -a``
    to exactly 1 at ``u = +a``; it is clamped to 0 and 1 beyond.
    """
    return _cdf_of_scaled(u / HALF_WIDTH)


@numba.njit(parallel=True, nogil=True, cache=True, fastmath=FASTMATH, error_model="numpy")
def histogram(
    offsets: np.ndarray, z_beam: np.ndarray, sigma_z: np.ndarray, usable: np.ndarray,
    zmin: float, bin_width: float, out_hist: np.ndarray,
) -> None:
    """Zero and fill ``out_hist[e]`` with the z probability of every usable track of event ``e``.

    Bin ``b`` covers ``[zmin + b·bin_width, zmin + (b+1)·bin_width)``. A usable track adds
    ``F(u_hi) - F(u_lo)`` (see :func:`poly_cdf`, ``u = (z - z_beam)/σ_z``) to each bin that its
    window ``z_beam ± sqrt(7)·σ_z`` overlaps; only those bins are touched. Bins 0 and
    ``n_bins - 1`` are never filled: what would fall there (or outside the range) is dropped,
    so the histogram's integral counts the tracks whose window lies inside bins 1..n_bins-2,
    with fractional counts for tracks straddling that range.

    Parameters
    ----------
    offsets : ndarray of int64, shape (n_events + 1,)
        Event boundaries in the track arrays.
    z_beam, sigma_z : ndarray of float64, shape (n_tracks,)
        Track z at the beamline and its resolution (mm), from ``extrapolate``.
    usable : ndarray of uint8, shape (n_tracks,)
        Only tracks with ``usable == 1`` are filled.
    zmin, bin_width : float
        Lower edge of bin 0 and bin width (mm).
    out_hist : ndarray of float64, shape (n_events, n_bins)
        Written: the histograms.

    Raises
    ------
    ValueError
        When the offsets decrease or point outside the track arrays.
    """
    check_event_ranges(offsets, len(z_beam), "histogram")
    n_bins = out_hist.shape[1]
    last = n_bins - 2  # last fillable bin
    per_bin = 1.0 / bin_width
    for e in numba.prange(len(offsets) - 1):
        hist = out_hist[e]
        hist[:] = 0.0
        for t in range(offsets[e], offsets[e + 1]):
            sigma = sigma_z[t]
            if usable[t] == 0 or not 0.0 < sigma < np.inf:
                continue
            zt, half = z_beam[t], HALF_WIDTH * sigma
            first_bin = np.floor((zt - half - zmin) * per_bin)
            last_bin = np.floor((zt + half - zmin) * per_bin)
            if not (last_bin >= 1.0 and first_bin <= last):
                continue  # outside the fillable bins (or NaN)
            # Clamp before the int conversion so a far-away track cannot overflow it.
            b_lo = int(max(first_bin, 1.0))
            b_hi = int(min(last_bin, float(last)))
            # Bin edges in units of the half-width; each edge's CDF is evaluated once and
            # reused as the next bin's lower edge, so the contributions telescope to exactly
            # F(upper edge) - F(lower edge) of the filled range.
            scale = 1.0 / half
            s_lo = (zmin + b_lo * bin_width - zt) * scale
            step = bin_width * scale
            f_lo = _cdf_of_scaled(s_lo)
            for k in range(b_hi - b_lo + 1):
                f_hi = _cdf_of_scaled(s_lo + (k + 1) * step)
                hist[b_lo + k] += f_hi - f_lo
                f_lo = f_hi
