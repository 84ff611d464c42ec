"""Vectorised generator of LHCb Upgrade I-like events: VELO tracks with MC truth.

Every particle of every event is generated at once with numpy (no loop over events or tracks),
so 100 000 events take seconds. Lengths in mm, momenta in GeV.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import numpy as np

from ..events import MCTruth, MCVertices, TrackBatch
from .conditions import Conditions

__all__ = ["SimulatedSample", "simulate"]


@dataclasses.dataclass(frozen=True, eq=False)
class SimulatedSample:
    """Tracks of a simulated sample, their MC truth and the conditions that made them."""

    tracks: TrackBatch
    truth: MCTruth
    conditions: Conditions

    def statistics(self) -> dict[str, float]:
        """Means that characterise the sample, to compare with the conditions."""
        pvs = self.truth.vertices
        labels = np.asarray(self.truth.track_mc_pv)
        n_events = max(self.tracks.n_events, 1)
        n_tracks = max(self.tracks.n_tracks, 1)
        n_pvs = max(pvs.n_vertices, 1)
        reco = np.asarray(pvs.n_reconstructible)
        # A prompt track whose first measurement lies upstream of its PV flies backward.
        prompt = np.flatnonzero(labels >= 0)
        event = np.repeat(np.arange(self.tracks.n_events), self.tracks.counts)[prompt]
        pv_z = np.asarray(pvs.z)[np.asarray(pvs.offsets)[event] + labels[prompt]]
        backward = np.asarray(self.tracks.z)[prompt] < pv_z
        return {
            "mean_visible_pvs": pvs.n_vertices / n_events,
            "mean_tracks_per_event": self.tracks.n_tracks / n_events,
            "mean_reconstructible_tracks_per_pv": float(reco.sum()) / n_pvs,
            "fraction_reconstructible_pvs": float(np.count_nonzero(reco >= 4)) / n_pvs,
            "fraction_prompt_tracks": float(np.count_nonzero(labels >= 0)) / n_tracks,
            "fraction_backward_prompt_tracks": float(np.count_nonzero(backward)) / max(prompt.size, 1),
        }


def simulate(
    n_events: int, seed: int | None = None, conditions: Conditions | None = None, **overrides: Any
) -> SimulatedSample:
    """Generate ``n_events`` bunch crossings under LHCb Upgrade I conditions.

    Parameters
    ----------
    n_events : int
        Number of events (bunch crossings).
    seed : int, optional
        Seed of ``numpy.random.default_rng``: the same seed gives the same sample.
    conditions : Conditions, optional
        The numbers of the simulation; :class:`Conditions` defaults when omitted.
    **overrides
        Fields of :class:`Conditions` to change, e.g. ``nu=11.0``.

    Returns
    -------
    SimulatedSample
        Tracks (state at their first VELO measurement, with covariance) and truth.
    """
    if isinstance(n_events, bool) or int(n_events) != n_events or n_events < 0:
        raise ValueError(f"n_events must be a non-negative integer, got {n_events!r}")
    n_events = int(n_events)
    cond = (conditions or Conditions()).replace(**overrides)
    rng = np.random.default_rng(seed)

    pv_counts = rng.poisson(cond.nu, n_events)
    pv_offsets = np.concatenate(([0], np.cumsum(pv_counts)))
    n_pvs = int(pv_offsets[-1])
    pv_event = np.repeat(np.arange(n_events), pv_counts)
    pv_x = rng.normal(cond.beam_x, cond.sigma_x, n_pvs)
    pv_y = rng.normal(cond.beam_y, cond.sigma_y, n_pvs)
    pv_z = rng.normal(cond.beam_z, cond.sigma_z, n_pvs)

    # Prompt particles, one row each, labelled with their PV (global index).
    k = cond.multiplicity_k
    n_charged = rng.negative_binomial(k, k / (k + cond.mean_charged), n_pvs)
    prompt_pv = np.repeat(np.arange(n_pvs), n_charged)
    prompt = _particles(rng, cond, pv_x[prompt_pv], pv_y[prompt_pv], pv_z[prompt_pv])
    prompt_found = rng.random(len(prompt_pv)) < cond.track_efficiency
    n_reconstructible = np.bincount(prompt_pv[prompt_found], minlength=n_pvs)

    decays = _decay_daughters(rng, cond, pv_x, pv_y, pv_z)
    decays_found = rng.random(len(decays["pv"])) < cond.track_efficiency

    # Ghosts: random lines near the luminous region, a fixed fraction of all tracks.
    real_per_event = np.bincount(pv_event[prompt_pv[prompt_found]], minlength=n_events)
    real_per_event += np.bincount(pv_event[decays["pv"][decays_found]], minlength=n_events)
    ghost_rate = cond.ghost_fraction / (1.0 - cond.ghost_fraction)
    ghost_event = np.repeat(np.arange(n_events), rng.poisson(ghost_rate * real_per_event))
    n_ghosts = len(ghost_event)
    ghosts = _particles(
        rng, cond,
        rng.normal(cond.beam_x, 1.0, n_ghosts),  # ghosts need not point to the beam: ±1 mm
        rng.normal(cond.beam_y, 1.0, n_ghosts),
        rng.normal(cond.beam_z, cond.sigma_z, n_ghosts),
    )

    event = np.concatenate((pv_event[prompt_pv[prompt_found]],
                            pv_event[decays["pv"][decays_found]], ghost_event))
    local_pv = prompt_pv[prompt_found] - pv_offsets[pv_event[prompt_pv[prompt_found]]]
    label = np.concatenate((local_pv, np.full(int(decays_found.sum()) + n_ghosts, -1)))
    states = {
        name: np.concatenate((prompt[name][prompt_found], decays[name][decays_found], ghosts[name]))
        for name in _STATE_NAMES
    }
    # Order the tracks by event, shuffled within each event so that truth is not in the order.
    order = np.argsort(event + rng.random(len(event)), kind="stable")
    track_counts = np.bincount(event, minlength=n_events)
    tracks = TrackBatch.from_arrays(counts=track_counts, **{n: states[n][order] for n in _STATE_NAMES})
    vertices = MCVertices.from_arrays(counts=pv_counts, x=pv_x, y=pv_y, z=pv_z,
                                      n_reconstructible=n_reconstructible.astype(np.int32))
    truth = MCTruth(vertices, label[order].astype(np.int32))
    return SimulatedSample(tracks, truth, cond)


_STATE_NAMES = ("x", "y", "z", "tx", "ty", "cov_xx", "cov_yy", "cov_xtx", "cov_yty",
                "cov_txtx", "cov_tyty")


def _particles(rng: np.random.Generator, cond: Conditions, x0: np.ndarray, y0: np.ndarray,
               z0: np.ndarray) -> dict[str, np.ndarray]:
    """Measured VELO states of particles from origins ``(x0, y0, z0)``, with covariances.

    Direction: forward or backward, flat in η and φ; pT from a Gamma(2) spectrum. The state is
    given at the first VELO measurement, at transverse radius ``first_hit_radius``; its
    covariance is that of a straight-line fit of ``hits_per_track`` hits, plus a multiple
    scattering slope error that reproduces the published IP resolution term. The smearing is
    drawn from exactly that covariance.
    """
    n = len(x0)
    backward = rng.random(n) < cond.backward_fraction
    eta = np.where(backward, rng.uniform(*cond.eta_backward, n), rng.uniform(*cond.eta_forward, n))
    direction = np.where(backward, -1.0, 1.0)
    phi = rng.uniform(0.0, 2.0 * np.pi, n)
    tan_theta = 1.0 / np.sinh(eta)
    tx_true = direction * tan_theta * np.cos(phi)  # dx/dz: a backward particle runs to −z
    ty_true = direction * tan_theta * np.sin(phi)
    pt = np.maximum(rng.gamma(2.0, cond.mean_pt / 2.0, n), cond.min_pt)

    flight = rng.uniform(*cond.first_hit_radius, n) / tan_theta  # |z| from origin to first hit
    z_ref = z0 + direction * flight
    x_true = x0 + tx_true * (z_ref - z0)
    y_true = y0 + ty_true * (z_ref - z0)

    # Straight-line fit of hits at distances d_k = k·spacing beyond the first hit, the state at
    # d = 0: var(x0) = σ²S2/D, var(t) = σ²S0/D, cov = −σ²S1/D (t along the flight direction).
    d = cond.module_spacing * np.arange(cond.hits_per_track)
    s0, s1, s2 = len(d), d.sum(), (d**2).sum()
    det = s0 * s2 - s1**2
    sigma2 = cond.hit_resolution**2
    var_pos = np.full(n, sigma2 * s2 / det)
    cov_pos_slope = -direction * sigma2 * s1 / det  # dz = direction·d turns t into dx/dz
    var_slope = sigma2 * s0 / det + (cond.ip_ms_term / (pt * flight)) ** 2

    dx, dtx = _correlated_pair(rng, var_pos, cov_pos_slope, var_slope)
    dy, dty = _correlated_pair(rng, var_pos, cov_pos_slope, var_slope)
    return {
        "x": x_true + dx, "y": y_true + dy, "z": z_ref,
        "tx": tx_true + dtx, "ty": ty_true + dty,
        "cov_xx": var_pos, "cov_yy": var_pos.copy(),
        "cov_xtx": cov_pos_slope, "cov_yty": cov_pos_slope.copy(),
        "cov_txtx": var_slope, "cov_tyty": var_slope.copy(),
    }


def _correlated_pair(rng: np.random.Generator, var_a: np.ndarray, cov_ab: np.ndarray,
                     var_b: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Gaussian pairs with the given 2×2 covariance (closed-form Cholesky factor)."""
    l11 = np.sqrt(var_a)
    l21 = cov_ab / l11
    l22 = np.sqrt(var_b - l21**2)
    u, v = rng.standard_normal(len(var_a)), rng.standard_normal(len(var_a))
    return l11 * u, l21 * u + l22 * v


def _decay_daughters(rng: np.random.Generator, cond: Conditions, pv_x: np.ndarray,
                     pv_y: np.ndarray, pv_z: np.ndarray) -> dict[str, np.ndarray]:
    """Charged daughters of K⁰S, Λ, charm and beauty decays, displaced from their PV.

    Flight length is exponential with mean βγcτ along a direction flat in η (forward or
    backward) and φ. The daughters leave the decay point in directions drawn like prompt
    particles (no collimation with the parent: an approximation that only matters for how
    often daughters form a fake cluster, which it makes slightly pessimistic).
    """
    species = (  # (decays per PV, cτ, βγ, charged daughters)
        (cond.k0s_per_pv, cond.ctau_k0s, cond.boost_strange, 2),
        (cond.lambda_per_pv, cond.ctau_lambda, cond.boost_strange, 2),
        (cond.charm_per_pv, cond.ctau_charm, cond.boost_heavy, 3),
        (cond.beauty_per_pv, cond.ctau_beauty, cond.boost_heavy, 5),
    )
    pieces = []
    n_pvs = len(pv_z)
    for rate, ctau, boost, n_daughters in species:
        parent_pv = np.repeat(np.arange(n_pvs), rng.poisson(rate, n_pvs))
        n = len(parent_pv)
        backward = rng.random(n) < cond.backward_fraction
        eta = np.where(backward, rng.uniform(*cond.eta_backward, n),
                       rng.uniform(*cond.eta_forward, n))
        phi = rng.uniform(0.0, 2.0 * np.pi, n)
        tan_theta = 1.0 / np.sinh(eta)
        length = rng.exponential(boost * ctau, n)
        cos_theta = 1.0 / np.sqrt(1.0 + tan_theta**2)
        dz = np.where(backward, -1.0, 1.0) * length * cos_theta
        decay_x = pv_x[parent_pv] + tan_theta * np.cos(phi) * np.abs(dz)
        decay_y = pv_y[parent_pv] + tan_theta * np.sin(phi) * np.abs(dz)
        decay_z = pv_z[parent_pv] + dz
        daughter_of = np.repeat(np.arange(n), n_daughters)
        daughters = _particles(rng, cond, decay_x[daughter_of], decay_y[daughter_of],
                               decay_z[daughter_of])
        pieces.append((parent_pv[daughter_of], daughters))
    return {
        "pv": np.concatenate([pv for pv, _ in pieces]),
        **{name: np.concatenate([d[name] for _, d in pieces]) for name in _STATE_NAMES},
    }
