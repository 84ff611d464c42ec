"""VELO response: where a particle is first measured, its track state and covariance.

The VELO has no magnetic field, so a track is a straight line. Its state is reported at the
first measurement, with the covariance of a straight-line fit of its hits (equally spaced, as
many as the modules it crosses before it leaves them, up to ``hits_per_track``) plus the
slope error from multiple scattering before that hit; the smearing is drawn from exactly
that covariance, so pulls are N(0, 1) by construction. Lengths in mm, momenta in GeV.
"""

from __future__ import annotations

import numpy as np

from .conditions import Conditions

__all__ = ["measure"]


def measure(
    rng: np.random.Generator,
    cond: Conditions,
    origin: tuple[np.ndarray, np.ndarray, np.ndarray],
    tx: np.ndarray,
    ty: np.ndarray,
    backward: np.ndarray,
    p: np.ndarray,
) -> tuple[dict[str, np.ndarray], np.ndarray]:
    """Measured VELO states of particles (straight lines) and whether the VELO sees them.

    Parameters
    ----------
    rng : numpy.random.Generator
        Source of randomness.
    cond : Conditions
        Detector numbers (hit resolution, module geometry, scattering).
    origin : tuple of numpy.ndarray
        ``(x0, y0, z0)`` where each particle is produced [mm].
    tx, ty : numpy.ndarray
        True slopes dx/dz and dy/dz.
    backward : numpy.ndarray of bool
        Whether the particle flies towards −z.
    p : numpy.ndarray
        Momentum [GeV] (sets the multiple scattering).

    Returns
    -------
    states : dict of numpy.ndarray
        The fields of :data:`pvfinder.events.TRACK_FIELDS`, state at the first measurement.
    accepted : numpy.ndarray of bool
        True where the first three hits lie on the modules: within their z span and their
        outer radial reach (the inner edge is not checked: the first hit is placed where
        the track has left the beam hole, a decay daughter heading inwards is not followed).
    """
    x0, y0, z0 = origin
    n = len(z0)
    direction = np.where(backward, -1.0, 1.0)
    tan_theta = np.maximum(np.hypot(tx, ty), 1e-12)  # a slope of 0 runs down the beam pipe
    # The first hit is on the first module after the particle leaves the beam hole.
    r0 = np.hypot(x0 - cond.beam_x, y0 - cond.beam_y)
    flight = (np.maximum(cond.velo_inner_radius - r0, 0.0) / tan_theta
              + rng.uniform(0.0, cond.module_spacing, n))
    dz = direction * flight
    z_first = z0 + dz
    x_true = x0 + tx * dz
    y_true = y0 + ty * dz

    z_low, z_high = cond.velo_z_range
    z_third = z_first + 2.0 * cond.module_spacing * direction
    # Radially, the line is farthest from the beam at one of its ends over these hits.
    r_first = np.hypot(x_true - cond.beam_x, y_true - cond.beam_y)
    r_third = np.hypot(x0 + tx * (z_third - z0) - cond.beam_x,
                       y0 + ty * (z_third - z0) - cond.beam_y)
    accepted = (
        (np.minimum(z_first, z_third) >= z_low)
        & (np.maximum(z_first, z_third) <= z_high)
        & (np.maximum(r_first, r_third) < cond.velo_outer_radius)
    )

    # Least-squares line through the n hits at distances d_k = k·spacing past the first one
    # (k < n), state at d = 0: var(x) = σ²·S2/D, var(t) = σ²·S0/D, cov(x, t) = −σ²·S1/D with
    # S_j = Σ d_k^j, D = S0·S2 − S1². t = dx/dd, and dx/dz = direction·t flips the sign of the
    # correlation.
    hits = _hits_on_modules(cond, z_first, x_true, y_true, tx, ty, direction)
    s0 = hits
    s1 = cond.module_spacing * hits * (hits - 1) / 2.0
    s2 = cond.module_spacing * cond.module_spacing * (hits - 1) * hits * (2 * hits - 1) / 6.0
    # σ·σ, not σ**2: a float power raises OverflowError where the product is inf
    scale = cond.hit_resolution * cond.hit_resolution / (s0 * s2 - s1 * s1)
    var_pos = scale * s2
    cov_pos_slope = -direction * (scale * s1)
    # Scattering before the first hit adds a kink of RMS ms_angle_term/p to the slope.
    var_slope = scale * s0 + (cond.ms_angle_term / p) ** 2

    dx, dtx = _correlated_pair(rng, var_pos, cov_pos_slope, var_slope)
    dy, dty = _correlated_pair(rng, var_pos, cov_pos_slope, var_slope)
    states = {
        "x": x_true + dx, "y": y_true + dy, "z": z_first, "tx": tx + dtx, "ty": ty + dty,
        "cov_xx": var_pos, "cov_yy": var_pos, "cov_xtx": cov_pos_slope,
        "cov_yty": cov_pos_slope, "cov_txtx": var_slope, "cov_tyty": var_slope,
    }
    return states, accepted


def _hits_on_modules(cond: Conditions, z_first: np.ndarray, x_first: np.ndarray,
                     y_first: np.ndarray, tx: np.ndarray, ty: np.ndarray, direction: np.ndarray
                     ) -> np.ndarray:
    """Hits of each track: the modules it crosses from its first hit on, one every
    ``module_spacing`` along z, before it leaves their z span or their outer radial reach;
    at most ``hits_per_track``, at least 2 (a track with fewer than three is not accepted).

    Along the flight s from the first hit, the distance from the beam is |a + b·s| with
    a the first hit's offset and b the slopes (times the direction): a quadratic in s, below
    the outer radius from the first hit until its larger root.
    """
    a_x, a_y = x_first - cond.beam_x, y_first - cond.beam_y
    b_x, b_y = direction * tx, direction * ty
    b2 = np.maximum(b_x * b_x + b_y * b_y, 1e-24)  # a slope of 0 never leaves radially
    ab = a_x * b_x + a_y * b_y
    outside = a_x * a_x + a_y * a_y - cond.velo_outer_radius * cond.velo_outer_radius
    radial_room = (-ab + np.sqrt(np.maximum(ab * ab - b2 * outside, 0.0))) / b2
    z_low, z_high = cond.velo_z_range
    z_room = np.where(direction > 0, z_high - z_first, z_first - z_low)
    room = np.minimum(radial_room, z_room) / cond.module_spacing
    hits = np.floor(np.clip(room, 0.0, cond.hits_per_track)) + 1.0
    return np.clip(hits, 2.0, cond.hits_per_track)


def _correlated_pair(
    rng: np.random.Generator, var_a: np.ndarray, cov_ab: np.ndarray, var_b: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    """Gaussian pairs with the 2×2 covariance ``[[var_a, cov_ab], [cov_ab, var_b]]``.

    Uses the closed-form Cholesky factor ``L = [[l11, 0], [l21, l22]]`` of each matrix.
    """
    l11 = np.sqrt(var_a)
    l21 = cov_ab / l11
    l22 = np.sqrt(var_b - l21 * l21)
    u = rng.standard_normal(len(var_a))
    v = rng.standard_normal(len(var_a))
    return l11 * u, l21 * u + l22 * v
