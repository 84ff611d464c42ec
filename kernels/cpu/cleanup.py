"""Stage 5 on the CPU: drop duplicate vertices, sort the survivors by z and compact them.

Lengths in mm. The contract is ``kernels/README.md`` section 5.
"""

from __future__ import annotations

import numba
import numpy as np

from . import FASTMATH

__all__ = ["cleanup", "compact"]


@numba.njit(parallel=True, nogil=True, cache=True, fastmath=FASTMATH, error_model="numpy")
def cleanup(
    pos: np.ndarray, cov: np.ndarray, n_tracks: np.ndarray, valid: np.ndarray,
    n_seeds: np.ndarray, min_chi2_dist: float, out_order: np.ndarray, out_n: np.ndarray,
) -> None:
    """Keep, per event, the valid vertices that duplicate no better one, ordered by z.

    The valid slots among the first ``min(n_seeds[e], max_seeds)`` are visited by decreasing
    ``n_tracks`` (ties: lower slot first); a vertex is dropped when
    ``(z1 - z2)² < min_chi2_dist·(σ²_z1 + σ²_z2)`` for a vertex already kept (the spec's
    ``(z1 - z2)²/(σ²_z1 + σ²_z2) < min_chi2_dist``, written without a division), where
    ``σ²_z = cov[..., 5]``. The kept slots, in increasing z (ties: lower slot first), are
    ``out_order[e, :out_n[e]]``; the rest of the row is set to -1.

    Parameters
    ----------
    pos : ndarray of float64, shape (n_events, max_seeds, 3)
        Vertex positions (mm).
    cov : ndarray of float64, shape (n_events, max_seeds, 6)
        Vertex covariances (xx, xy, yy, xz, yz, zz; mm²).
    n_tracks : ndarray of float64, shape (n_events, max_seeds)
        Weighted number of tracks per vertex.
    valid : ndarray of uint8, shape (n_events, max_seeds)
        Only valid vertices are considered.
    n_seeds : ndarray of int32, shape (n_events,)
        Seeds per event (slots ``≥ max_seeds`` do not exist).
    min_chi2_dist : float
        Duplicate threshold on the z separation χ².
    out_order : ndarray of int32, shape (n_events, max_seeds)
        Written: kept slots sorted by z, then -1.
    out_n : ndarray of int32, shape (n_events,)
        Written: number of kept vertices.
    """
    max_seeds = pos.shape[1]
    for e in numba.prange(pos.shape[0]):
        order = out_order[e]  # doubles as the scratch list: kept vertices never outrun it
        n_slots = min(n_seeds[e], max_seeds)
        # Valid slots by decreasing n_tracks; insertion sort is stable, so ties keep slot order.
        n_valid = 0
        for s in range(n_slots):
            if valid[e, s] == 0:
                continue
            j = n_valid
            while j > 0 and n_tracks[e, order[j - 1]] < n_tracks[e, s]:
                order[j] = order[j - 1]
                j -= 1
            order[j] = s
            n_valid += 1
        # Greedy selection, compacting the kept slots to the front of the same row.
        n_kept = 0
        for j in range(n_valid):
            s = order[j]
            z, var_z = pos[e, s, 2], cov[e, s, 5]
            duplicate = False
            for k in range(n_kept):
                other = order[k]
                dz = z - pos[e, other, 2]
                if dz * dz < min_chi2_dist * (var_z + cov[e, other, 5]):
                    duplicate = True
                    break
            if not duplicate:
                order[n_kept] = s
                n_kept += 1
        # Kept slots by increasing (z, slot).
        for j in range(1, n_kept):
            s = order[j]
            k = j
            while k > 0 and (pos[e, order[k - 1], 2] > pos[e, s, 2]
                             or (pos[e, order[k - 1], 2] == pos[e, s, 2] and order[k - 1] > s)):
                order[k] = order[k - 1]
                k -= 1
            order[k] = s
        order[n_kept:] = -1
        out_n[e] = n_kept


@numba.njit(parallel=True, nogil=True, cache=True)
def compact(
    track_offsets: np.ndarray, weight_offsets: np.ndarray, order: np.ndarray,
    n_kept: np.ndarray, vertex_offsets: np.ndarray, weight_base: np.ndarray,
    pos: np.ndarray, cov: np.ndarray, chi2: np.ndarray, ndof: np.ndarray,
    n_tracks: np.ndarray, weights: np.ndarray,
    out_vertices: np.ndarray, out_weight_offsets: np.ndarray, out_weights: np.ndarray,
) -> None:
    """Copy the kept vertices of every event, in z order, into flat output arrays.

    Vertex ``k`` of event ``e`` (slot ``s = order[e, k]``, ``k < n_kept[e]``) goes to row
    ``v = vertex_offsets[e] + k``; its ``n_e`` weights (one per input track of the event) go to
    ``out_weights[weight_base[e] + k·n_e :][:n_e]``, and ``out_weight_offsets[v]`` records where
    they start. The offsets are given by the caller (prefix sums of ``n_kept`` and
    ``n_kept·n_e``), so each event is copied independently.

    Parameters
    ----------
    track_offsets : ndarray of int64, shape (n_events + 1,)
        Tracks of each event (``n_e = track_offsets[e + 1] - track_offsets[e]``).
    weight_offsets : ndarray of int64, shape (n_events + 1,)
        Where each event's fitted weights start in ``weights`` (as given to ``fit_vertices``).
    order, n_kept : ndarray of int32
        From ``cleanup``: kept slots in z order and their number.
    vertex_offsets : ndarray of int64, shape (n_events + 1,)
        Row of each event's first vertex in the outputs.
    weight_base : ndarray of int64, shape (n_events + 1,)
        Where each event's first vertex's weights start in ``out_weights``; the last entry is
        the end of the last event's, written to ``out_weight_offsets[vertex_offsets[-1]]``.
    pos, cov, chi2, ndof, n_tracks, weights : ndarray of float64
        Outputs of ``fit_vertices``.
    out_vertices : ndarray of float64, shape (12, capacity)
        Written: one row per field of ``VERTEX_FIELDS`` (x, y, z, cov_xx, cov_xy, cov_yy,
        cov_xz, cov_yz, cov_zz, chi2, ndof, n_tracks), one column per kept vertex.
    out_weight_offsets : ndarray of int64, shape (capacity + 1,)
        Written: start of each vertex's weights.
    out_weights : ndarray of float64
        Written: each kept vertex's weights.
    """
    n_events = len(n_kept)
    for e in numba.prange(n_events):
        n_e = track_offsets[e + 1] - track_offsets[e]
        for k in range(n_kept[e]):
            s = order[e, k]
            v = vertex_offsets[e] + k
            for i in range(3):
                out_vertices[i, v] = pos[e, s, i]
            for i in range(6):
                out_vertices[3 + i, v] = cov[e, s, i]
            out_vertices[9, v] = chi2[e, s]
            out_vertices[10, v] = ndof[e, s]
            out_vertices[11, v] = n_tracks[e, s]
            start = weight_base[e] + k * n_e
            out_weight_offsets[v] = start
            source = weight_offsets[e] + s * n_e
            out_weights[start : start + n_e] = weights[source : source + n_e]
    out_weight_offsets[vertex_offsets[n_events]] = weight_base[n_events]
