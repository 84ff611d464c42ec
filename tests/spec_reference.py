"""A plain reading of the algorithm's specification, one event at a time, for the kernels to be
tested against.

Python loops and numpy only, written from the specification's formulas: no batching, no
candidate lists, no lanes, no bounds that skip work. Where the specification leaves a choice
open it takes the one the kernels document:

- stage 1: a track with tx² + ty² below 1e-12 is unusable, as is one whose propagated
  covariance gives a weight that is not positive;
- stage 3: a flat-topped maximum is at its first bin; a maximum that is not significant
  against the last kept one is dropped when it is the lower of the two, and the lowest
  minimum since the kept maximum stays the candidate dip; a sub-cluster's integral counts
  half of a bin at a minimum it shares with its neighbour; a proto-cluster whose maxima all
  fall below ``min_density`` gives no seed, and one that keeps no sub-cluster is seeded at
  its first highest bin; of more than ``max_vertices_per_event`` seeds, those lowest in z
  are fitted;
- stage 4: ``D_t`` sums over the seeds fitted; a track at or below ``min_weight`` neither
  enters the fit nor counts towards ``min_tracks_per_vertex``; the covariance, χ² and
  weights are those of the last iteration, evaluated at the position that entered it; a
  singular half-Hessian rejects the vertex;
- stage 5: duplicates are resolved greedily, the vertex with more weighted tracks first.

The beamline is taken parallel to z (no slopes).
"""

from __future__ import annotations

import math

import numpy as np

from pvfinder.config import PVFinderConfig
from pvfinder.events import TRACK_FIELDS, TrackBatch

_A = math.sqrt(7.0)  # the histogram's window, ±a·σ_z


def extrapolate(tracks: dict[str, np.ndarray], config: PVFinderConfig) -> dict[str, np.ndarray]:
    """Stage 1: each track at its closest approach to the beamline, its weights, σ_z and
    usability."""
    bx, by = config.beamline[:2]
    n = len(tracks["x"])
    out = {name: np.zeros(n) for name in ("x", "y", "z", "tx", "ty", "wx", "wy", "sigma_z")}
    out["usable"] = np.zeros(n, dtype=bool)
    for i in range(n):
        x, y, z = tracks["x"][i], tracks["y"][i], tracks["z"][i]
        tx, ty = tracks["tx"][i], tracks["ty"][i]
        slope2 = tx * tx + ty * ty
        dz = -((x - bx) * tx + (y - by) * ty) / slope2 if slope2 >= 1e-12 else 0.0
        cxx = tracks["cov_xx"][i] + 2 * dz * tracks["cov_xtx"][i] + dz * dz * tracks["cov_txtx"][i]
        cyy = tracks["cov_yy"][i] + 2 * dz * tracks["cov_yty"][i] + dz * dz * tracks["cov_tyty"][i]
        wx, wy = 1.0 / cxx, 1.0 / cyy
        resolution = tx * tx * wx + ty * ty * wy
        sigma_z = 1.0 / math.sqrt(resolution) if slope2 >= 1e-12 and resolution > 0 else math.inf
        xb, yb, zb = x + tx * dz, y + ty * dz, z + dz
        chi2_beamline = (xb - bx) ** 2 * wx + (yb - by) ** 2 * wy
        out["x"][i], out["y"][i], out["z"][i], out["tx"][i], out["ty"][i] = xb, yb, zb, tx, ty
        out["wx"][i], out["wy"][i], out["sigma_z"][i] = wx, wy, sigma_z
        out["usable"][i] = (config.zmin < zb < config.zmax and wx > 0 and wy > 0
                            and chi2_beamline < config.max_track_beamline_chi2
                            and sigma_z < config.max_track_z0_err)
    return out


def _cumulative(u: float) -> float:
    """The specification's polynomial stand-in for the Gaussian's cumulative function."""
    if u <= -_A:
        return 0.0
    if u >= _A:
        return 1.0
    r = u / _A
    eta = 1.0 - r * r
    return 0.5 + r * (0.5 + eta * (0.25 + eta * 3.0 / 16.0))


def histogram(states: dict[str, np.ndarray], config: PVFinderConfig) -> np.ndarray:
    """Stage 2: each usable track's unit of probability, bin by bin."""
    n_bins, width = config.n_bins, config.bin_width
    density = np.zeros(n_bins)
    for i in np.flatnonzero(states["usable"]):
        centre, sigma = states["z"][i], states["sigma_z"][i]
        first = max(math.floor((centre - _A * sigma - config.zmin) / width), 1)
        last = min(math.floor((centre + _A * sigma - config.zmin) / width), n_bins - 2)
        for b in range(first, last + 1):  # the first and last bins stay empty
            low = config.zmin + b * width
            density[b] += (_cumulative((low + width - centre) / sigma)
                           - _cumulative((low - centre) / sigma))
    return density


def find_peaks(density: np.ndarray, config: PVFinderConfig) -> list[float]:
    """Stage 3: the seeds' z, in increasing z, all of them (not cut at
    ``max_vertices_per_event``)."""
    width = config.bin_width
    threshold = width / (10.0 * config.max_track_z0_err)
    dip, lowest_peak = config.min_dip_density * width, config.min_density * width
    seeds: list[float] = []
    for first, last in _proto_clusters(density, threshold, config.min_tracks_in_seed):
        extrema = _extrema(density, first, last, dip, lowest_peak)
        if extrema is None:
            continue
        minima, maxima = extrema[::2], extrema[1::2]
        kept = [peak for left, peak, right in zip(minima, maxima, minima[1:])
                if _integral(density, left, right, first, last) > config.min_tracks_in_seed]
        if not kept:  # the whole proto-cluster is one cluster
            kept = [first + int(np.argmax(density[first:last + 1]))]
        seeds.extend(_refined(density, peak, config) for peak in kept)
    return seeds


def _proto_clusters(density: np.ndarray, threshold: float, min_tracks: float):
    b = 0
    while b < len(density):
        if density[b] < threshold:
            b += 1
            continue
        end = b
        while end + 1 < len(density) and density[end + 1] >= threshold:
            end += 1
        if density[b:end + 1].sum() > min_tracks:
            yield b, end
        b = end + 1


def _extrema(density: np.ndarray, first: int, last: int, dip: float, lowest_peak: float
             ) -> list[int] | None:
    """Alternating minimum, maximum, ..., minimum bins of a proto-cluster; None when no
    maximum reaches ``lowest_peak``."""
    extrema = [first]  # even places minima, odd places maxima
    rising = True
    for b in range(first, last + 1):
        going_up = b + 1 < len(density) and density[b + 1] > density[b]
        if rising and not going_up:  # a maximum
            rising = False
            if density[b] < lowest_peak:
                continue
            if len(extrema) < 3:  # the first one
                extrema.append(b)
                continue
            previous, low = density[extrema[-2]], density[extrema[-1]]
            if previous - low > dip and density[b] - low > dip:
                extrema.append(b)
            elif density[b] > previous:  # the earlier, lower one and its dip go
                extrema[-2:] = [b]
        elif not rising and going_up:  # a minimum
            rising = True
            if len(extrema) % 2 == 0:  # after a maximum
                extrema.append(b)
            elif len(extrema) > 1 and density[b] < density[extrema[-1]]:
                extrema[-1] = b  # the lowest minimum since the last kept maximum
    if len(extrema) % 2 == 0:
        extrema.append(last)
    return extrema if len(extrema) > 1 else None


def _integral(density: np.ndarray, left: int, right: int, first: int, last: int) -> float:
    """A sub-cluster's integral: half of a minimum bin it shares with a neighbour."""
    total = density[left + 1:right].sum()
    total += density[left] * (1.0 if left == first else 0.5)
    total += density[right] * (1.0 if right == last else 0.5)
    return total


def _refined(density: np.ndarray, peak: int, config: PVFinderConfig) -> float:
    """The centre of the maximum bin, moved by a parabola through it and its neighbours."""
    z = config.zmin + (peak + 0.5) * config.bin_width
    below = density[peak - 1] if peak > 0 else 0.0
    above = density[peak + 1] if peak + 1 < len(density) else 0.0
    curvature = below - 2 * density[peak] + above
    return z + 0.5 * config.bin_width * (below - above) / curvature if curvature else z


def _chi2(states: dict[str, np.ndarray], i: int, vertex: np.ndarray) -> tuple[float, float, float]:
    dz = vertex[2] - states["z"][i]
    rx = vertex[0] - (states["x"][i] + states["tx"][i] * dz)
    ry = vertex[1] - (states["y"][i] + states["ty"][i] * dz)
    return rx * rx * states["wx"][i] + ry * ry * states["wy"][i], rx, ry


def fit_vertices(states: dict[str, np.ndarray], seeds: list[float], config: PVFinderConfig
                 ) -> list[dict[str, object]]:
    """Stage 4: the adaptive multi-vertex fit of every seed; the valid vertices."""
    bx, by = config.beamline[:2]
    usable = np.flatnonzero(states["usable"])
    seed_terms = np.zeros((len(seeds), len(states["z"])))
    for s, seed in enumerate(seeds):
        for i in usable:
            seed_terms[s, i] = math.exp(-0.5 * _chi2(states, i, np.array([bx, by, seed]))[0])
    others = seed_terms.sum(axis=0)  # D_t
    cut_term = math.exp(-0.5 * config.chi2_cut)
    vertices = []
    for s, seed in enumerate(seeds):
        vertex = np.array([bx, by, seed])
        singular = False
        for iteration in range(1, config.max_fit_iter + 1):
            hessian, gradient = np.zeros((3, 3)), np.zeros(3)
            weights = np.zeros(len(states["z"]))
            chi2_sum, n_passing = 0.0, 0
            for i in usable:
                chi2, rx, ry = _chi2(states, i, vertex)
                if not chi2 < config.max_chi2:
                    continue
                term = math.exp(-0.5 * chi2)
                weight = term / (cut_term + term + others[i] - seed_terms[s, i])
                if not weight > config.min_weight:
                    continue
                weights[i], n_passing = weight, n_passing + 1
                chi2_sum += weight * chi2
                h = np.array([[1.0, 0.0], [0.0, 1.0], [-states["tx"][i], -states["ty"][i]]])
                w = np.diag([states["wx"][i], states["wy"][i]])
                hessian += weight * h @ w @ h.T
                gradient += weight * h @ w @ np.array([rx, ry])
            try:
                covariance = np.linalg.inv(hessian)
            except np.linalg.LinAlgError:
                singular = True
                break
            step = -covariance @ gradient
            vertex = vertex + step
            if iteration >= config.min_fit_iter and abs(step[2]) < config.max_delta_z_converged:
                break
        if (not singular and n_passing >= config.min_tracks_per_vertex
                and (vertex[0] - bx) ** 2 + (vertex[1] - by) ** 2 < config.max_vertex_rho2):
            n_tracks = weights.sum()
            vertices.append({
                "x": vertex[0], "y": vertex[1], "z": vertex[2],
                "cov_xx": covariance[0, 0], "cov_xy": covariance[0, 1],
                "cov_yy": covariance[1, 1], "cov_xz": covariance[0, 2],
                "cov_yz": covariance[1, 2], "cov_zz": covariance[2, 2],
                "chi2": chi2_sum, "ndof": 2 * n_tracks - 3, "n_tracks": n_tracks,
                "weights": weights})
    return vertices


def cleanup(vertices: list[dict[str, object]], config: PVFinderConfig) -> list[dict[str, object]]:
    """Stage 5: of two duplicates keep the one with more weighted tracks; sorted by z."""
    kept: list[dict[str, object]] = []
    for vertex in sorted(vertices, key=lambda v: -v["n_tracks"]):
        if all((vertex["z"] - other["z"]) ** 2 / (vertex["cov_zz"] + other["cov_zz"])
               >= config.min_chi2_dist for other in kept):
            kept.append(vertex)
    return sorted(kept, key=lambda v: v["z"])


def find_event_vertices(tracks: TrackBatch, event: int, config: PVFinderConfig
                        ) -> tuple[list[float], list[dict[str, object]]]:
    """The seeds (all of them) and the vertices of one event of ``tracks``."""
    first, stop = int(tracks.offsets[event]), int(tracks.offsets[event + 1])
    states = extrapolate({name: np.asarray(getattr(tracks, name), dtype=np.float64)[first:stop]
                          for name in TRACK_FIELDS}, config)
    seeds = find_peaks(histogram(states, config), config)
    fitted = fit_vertices(states, seeds[:config.max_vertices_per_event], config)
    return seeds, cleanup(fitted, config)
