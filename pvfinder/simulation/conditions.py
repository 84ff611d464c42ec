"""The numbers of the simulation: LHCb Upgrade I running conditions and detector response.

Every field carries its source. Where a number is a modelling choice rather than a published
figure, the comment says so. Change a number only with a source (see CONTRIBUTING in README).
Lengths in mm, momenta in GeV.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any

__all__ = ["Conditions"]


@dataclasses.dataclass(frozen=True)
class Conditions:
    """LHCb Upgrade I conditions for the event generator (immutable, validated).

    Use :meth:`replace` to change fields; unknown names raise ``ValueError``.
    """

    # -- pile-up and luminous region -----------------------------------------------------
    # Mean visible pp interactions per crossing at L = 2e33 /cm²/s: LHCb Upgrade I design
    # (LHCb Framework TDR, LHCb-TDR-012; detector paper JINST 19 (2024) P05065, sec. 1).
    nu: float = 7.6
    # Luminous-region centre (mm): the beamline at the origin, as the spec's default.
    beam_x: float = 0.0
    beam_y: float = 0.0
    beam_z: float = 0.0
    # Transverse luminous size: beta* = 2 m, normalised emittance 2.5 µm at 7 TeV give
    # sigma_beam ≈ 26 µm and sigma_lumi = sigma_beam/√2 ≈ 18 µm (spec; LHCb-TDR-012).
    sigma_x: float = 0.018
    sigma_y: float = 0.018
    # Longitudinal luminous size ≈ 45 mm (spec; LHCb-TDR-013 uses σ_z ≈ 45–63 mm).
    sigma_z: float = 45.0

    # -- charged particles per collision in the VELO acceptance --------------------------
    # Negative binomial: mean charged tracks in acceptance per visible PV, chosen so that with
    # the efficiency below the mean of reconstructible VELO tracks is ≈ 25, inside the spec's
    # 20–30 (arXiv:2412.14966, fig. of PV multiplicity); the shape k = 1.5 gives the long tail
    # of minimum-bias multiplicity (approximation of LHCb's measured distributions,
    # Eur. Phys. J. C 72 (2012) 1947).
    mean_charged: float = 25.5
    multiplicity_k: float = 1.5
    # Fraction of VELO tracks that fly backward (the VELO covers −3.5 < η < −1.5 behind the
    # interaction region; LHCb-TDR-013 fig. 2.2); approximation.
    backward_fraction: float = 0.25
    # Pseudorapidity ranges (|η|), forward 2 < η < 5 (LHCb acceptance, JINST 3 (2008) S08005),
    # backward 1.5 < |η| < 3.5 (LHCb-TDR-013); dN/dη taken flat (approximation).
    eta_forward: tuple[float, float] = (2.0, 5.0)
    eta_backward: tuple[float, float] = (1.5, 3.5)
    # Transverse momentum: Gamma(shape 2) with mean 0.55 GeV, close to the measured minimum-bias
    # <pT> of charged hadrons at 13 TeV (LHCb, JHEP 05 (2022) 098); approximation of the shape.
    mean_pt: float = 0.55
    min_pt: float = 0.05

    # -- VELO response ---------------------------------------------------------------------
    # Single-hit resolution of 55 µm pixels with charge sharing: ≈ 12 µm (LHCb-TDR-013, sec. 4).
    hit_resolution: float = 0.012
    # Hits used per track and module spacing along z (LHCb-TDR-013: 52 modules, ≈ 25 mm apart
    # near the interaction region); approximation of a typical track.
    hits_per_track: int = 10
    module_spacing: float = 25.0
    # Transverse radius of the first measurement: the sensors start at 5.1 mm from the beam
    # (JINST 19 (2024) P05065, sec. 3); the first hit lies between that and ≈ 12 mm.
    first_hit_radius: tuple[float, float] = (5.1, 12.0)
    # Multiple-scattering term of the impact-parameter resolution, σ_IP = 12 µm ⊕ 24 µm/pT
    # (LHCb-TDR-013 and JINST 19 (2024) P05065, fig. of IP resolution): the slope error from
    # scattering is set so that it reproduces this term at the PV.
    ip_ms_term: float = 0.024
    # Per-track reconstruction efficiency above threshold ≈ 99 % (LHCb-TDR-013; arXiv:2412.14966).
    track_efficiency: float = 0.99
    # Ghost (fake) tracks: a few per cent of VELO tracks (LHCb-TDR-013, ghost rate ≈ 2–3 %).
    ghost_fraction: float = 0.025

    # -- displaced decays ------------------------------------------------------------------
    # Mean number per visible collision of decays whose charged daughters reach the VELO, and
    # their lifetimes cτ (mm, PDG). Rates are approximations of LHCb's measured production
    # (K0S and Λ: JHEP 08 (2011) 034; cc̄ and bb̄: JHEP 03 (2016) 159, PRL 118 (2017) 052002)
    # times the VELO acceptance.
    k0s_per_pv: float = 0.8
    lambda_per_pv: float = 0.25
    charm_per_pv: float = 0.12
    beauty_per_pv: float = 0.008
    ctau_k0s: float = 26.84
    ctau_lambda: float = 78.9
    ctau_charm: float = 0.123
    ctau_beauty: float = 0.455
    # Typical boost βγ of each decaying species in the acceptance (approximation).
    boost_strange: float = 3.0
    boost_heavy: float = 8.0

    def __post_init__(self) -> None:
        positive = ("sigma_x", "sigma_y", "sigma_z", "mean_charged", "multiplicity_k", "mean_pt",
                    "hit_resolution", "module_spacing", "ip_ms_term", "ctau_k0s",
                    "ctau_lambda", "ctau_charm", "ctau_beauty", "boost_strange", "boost_heavy")
        for name in positive:
            value = getattr(self, name)
            if not (math.isfinite(value) and value > 0):
                raise ValueError(f"condition {name} must be positive and finite, got {value}")
        non_negative = ("nu", "min_pt", "k0s_per_pv", "lambda_per_pv", "charm_per_pv",
                        "beauty_per_pv")
        for name in non_negative:
            value = getattr(self, name)
            if not (math.isfinite(value) and value >= 0):
                raise ValueError(f"condition {name} must be non-negative, got {value}")
        for name in ("backward_fraction", "track_efficiency", "ghost_fraction"):
            value = getattr(self, name)
            if not 0.0 <= value <= 1.0:
                raise ValueError(f"condition {name} must lie in [0, 1], got {value}")
        if self.ghost_fraction >= 1.0:
            raise ValueError("condition ghost_fraction must be below 1")
        if self.hits_per_track < 3:
            raise ValueError("condition hits_per_track must be at least 3")
        for name in ("eta_forward", "eta_backward", "first_hit_radius"):
            low, high = getattr(self, name)
            if not 0 < low < high:
                raise ValueError(f"condition {name} must be (low, high) with 0 < low < high")

    def replace(self, **changes: Any) -> Conditions:
        """A copy with some conditions changed (validated like a new object)."""
        known = {field.name for field in dataclasses.fields(self)}
        unknown = sorted(set(changes) - known)
        if unknown:
            raise ValueError(f"unknown simulation condition(s): {', '.join(unknown)}")
        return dataclasses.replace(self, **changes)
