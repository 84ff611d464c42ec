"""Stage 3 on the CPU: turn each event's z histogram into cluster seeds.

Lengths in mm. The contract is ``kernels/README.md`` section 3.
"""

from __future__ import annotations

import numba
import numpy as np

from . import FASTMATH

__all__ = ["find_peaks"]


@numba.njit(cache=True, fastmath=FASTMATH)
def _seed_z(hist: np.ndarray, peak: int, zmin: float, bin_width: float) -> float:
    """Centre of bin ``peak`` moved to the vertex of the parabola through it and its neighbours.

    The shift is clamped to half a bin so that the seed stays inside its maximum bin.
    """
    centre = hist[peak]
    below = hist[peak - 1] if peak > 0 else centre
    above = hist[peak + 1] if peak + 1 < len(hist) else centre
    curvature = 2.0 * centre - below - above
    shift = 0.5 * (above - below) / curvature if curvature > 0.0 else 0.0
    shift = min(max(shift, -0.5), 0.5)
    return zmin + (peak + 0.5 + shift) * bin_width


@numba.njit(cache=True, fastmath=FASTMATH)
def _emit(out_row: np.ndarray, n_found: int, z: float) -> int:
    """Store seed number ``n_found`` when there is room; return the new count."""
    if n_found < len(out_row):
        out_row[n_found] = z
    return n_found + 1


@numba.njit(parallel=True, nogil=True, cache=True, fastmath=FASTMATH, error_model="numpy")
def find_peaks(
    hist: np.ndarray, zmin: float, bin_width: float, threshold: float,
    min_tracks_in_seed: float, min_dip_density: float, min_density: float,
    out_seeds: np.ndarray, out_n_seeds: np.ndarray,
) -> None:
    """Find the clusters of each histogram in one pass over its bins and write their seed z.

    1. A *proto-cluster* is a maximal run of bins with content ``≥ threshold``.
    2. Walking a run, local maxima (a rise followed by a fall or plateau) below
       ``min_density·bin_width`` are ignored. Each new maximum is compared with the last kept
       one through the lowest local minimum between them: when both maxima exceed it by more
       than ``min_dip_density·bin_width`` the minimum is kept as a cluster boundary, otherwise
       the lower of the two maxima is dropped (with the minimum). A boundary minimum bin gives
       half of its content to each side. A sub-cluster between consecutive boundaries (or the
       run ends) is kept when its integral exceeds ``min_tracks_in_seed``; when the run keeps
       none and its whole integral exceeds ``min_tracks_in_seed``, the run is one cluster
       around its highest bin. A run with integral ``≤ min_tracks_in_seed``, or in which no
       maximum reaches ``min_density·bin_width``, gives nothing.
    3. A cluster's seed is the centre of its maximum bin, shifted to the vertex of the parabola
       through that bin and its two neighbours (at most half a bin).

    Seeds come out in increasing z. ``out_n_seeds[e]`` counts every cluster found, also
    beyond ``max_seeds = out_seeds.shape[1]``; only the first ``max_seeds`` are stored and the
    rest of ``out_seeds[e]`` is left untouched.

    Parameters
    ----------
    hist : ndarray of float64, shape (n_events, n_bins)
        Histograms from ``histogram``.
    zmin, bin_width : float
        Lower edge of bin 0 and bin width (mm).
    threshold : float
        Minimum bin content of a proto-cluster bin (tracks per bin).
    min_tracks_in_seed : float
        A cluster must hold more than this many tracks.
    min_dip_density, min_density : float
        Significant dip depth and minimal peak height, per mm (multiplied by ``bin_width``).
    out_seeds : ndarray of float64, shape (n_events, max_seeds)
        Written: seed z (mm) in increasing order.
    out_n_seeds : ndarray of int32, shape (n_events,)
        Written: number of clusters found.
    """
    n_events, n_bins = hist.shape
    min_dip = min_dip_density * bin_width
    min_peak = min_density * bin_width
    for e in numba.prange(n_events):
        h = hist[e]
        seeds = out_seeds[e]
        n_found = 0
        in_run = False
        # State of the current run (reset when one starts).
        rising = True
        run_sum = 0.0        # integral of the run's bins before bin i
        boundary_sum = 0.0   # integral up to the last kept boundary minimum
        n_kept = 0           # sub-clusters of this run already emitted
        peak, peak_value = -1, 0.0     # last kept maximum (peak < 0: none yet)
        low_value, low_sum = np.inf, 0.0  # lowest minimum since that maximum
        top, top_value = -1, -np.inf   # highest bin of the run
        for i in range(n_bins):
            value = h[i]
            if value < threshold:
                continue
            if not in_run:
                in_run, rising = True, True
                run_sum = boundary_sum = 0.0
                n_kept, peak, low_value, top, top_value = 0, -1, np.inf, -1, -np.inf
            run_continues = i + 1 < n_bins and h[i + 1] >= threshold
            following = h[i + 1] if run_continues else -np.inf
            if value > top_value:
                top, top_value = i, value
            if rising and following <= value:
                rising = False
                if value >= min_peak:
                    if peak < 0:
                        peak, peak_value, low_value = i, value, np.inf
                    elif peak_value - low_value > min_dip and value - low_value > min_dip:
                        # A significant dip closes the sub-cluster of the last kept maximum.
                        if low_sum - boundary_sum > min_tracks_in_seed:
                            n_found = _emit(seeds, n_found, _seed_z(h, peak, zmin, bin_width))
                            n_kept += 1
                        boundary_sum = low_sum
                        peak, peak_value, low_value = i, value, np.inf
                    elif value > peak_value:
                        peak, peak_value, low_value = i, value, np.inf
            elif not rising and following > value:
                rising = True
                if peak >= 0 and value < low_value:
                    low_value, low_sum = value, run_sum + 0.5 * value
            run_sum += value
            if run_continues:
                continue
            in_run = False
            if peak < 0:
                continue  # no maximum reached min_density
            if run_sum - boundary_sum > min_tracks_in_seed:
                n_found = _emit(seeds, n_found, _seed_z(h, peak, zmin, bin_width))
                n_kept += 1
            if n_kept == 0 and run_sum > min_tracks_in_seed:
                n_found = _emit(seeds, n_found, _seed_z(h, top, zmin, bin_width))
        out_n_seeds[e] = n_found
