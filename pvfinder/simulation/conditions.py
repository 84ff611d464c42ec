"""The numbers of the simulation: LHCb Upgrade I running conditions and detector response.

Every field carries its source. Where a number is a modelling choice rather than a published
figure, the comment says "approximation". Change a number only with a source.
Lengths in mm, momenta and masses in GeV.
"""

from __future__ import annotations

import dataclasses
import math
import numbers
from typing import Any, NamedTuple

__all__ = ["PER_CHARGED_PARTICLE", "SPECIES", "Conditions", "DecaySpecies"]

#: The decaying species whose charged daughters the generator adds, in field-name spelling.
SPECIES = ("k0s", "lambda", "charm", "beauty")
#: The species whose yield is measured per charged particle (K0S, and Λ as a ratio to K0S;
#: see the comment on ``k0s_per_pv``): each PV makes them in proportion to its own charged
#: multiplicity, ``<species>_per_pv`` on average. Charm and beauty come from cross-sections
#: per interaction: the same mean for every PV.
PER_CHARGED_PARTICLE = frozenset({"k0s", "lambda"})


class DecaySpecies(NamedTuple):
    """The numbers of one decaying species (see the ``<species>_*`` fields of Conditions)."""

    name: str
    per_pv: float
    ctau: float
    mass: float
    mean_pt: float
    decay_momentum: float
    daughters: int


@dataclasses.dataclass(frozen=True)
class Conditions:
    """LHCb Upgrade I conditions for the event generator (immutable, validated).

    Use :meth:`replace` to change fields. Lengths in mm, momenta and masses in GeV; each
    default's source is a comment beside it in ``pvfinder/simulation/conditions.py``.

    Attributes
    ----------
    nu : float
        Mean number of visible pp interactions per crossing (Poisson).
    beam_x, beam_y, beam_z : float
        Centre of the luminous region.
    sigma_x, sigma_y, sigma_z : float
        Gaussian widths of the luminous region.
    charged_per_eta : float
        Prompt charged particles per unit of pseudorapidity per interaction (flat in η).
    multiplicity_k : float
        Shape of the negative-binomial multiplicity (1e12 is Poisson).
    eta_forward, eta_backward : tuple of float
        ``(low, high)`` |η| ranges seen by the VELO, forward and backward.
    mean_pt, min_pt : float
        Mean and lowest transverse momentum of prompt particles.
    hit_resolution : float
        Single-hit resolution in x and y.
    hits_per_track : int
        Most hits in a track's straight-line fit (at least 3): fewer where the track leaves
        the modules first.
    module_spacing : float
        Distance in z between successive hits.
    velo_inner_radius, velo_outer_radius : float
        Radial extent of the sensors.
    velo_z_range : tuple of float
        ``(low, high)`` z span of the modules; a track needs its first three hits inside.
    ms_angle_term : float
        Multiple-scattering angle (rad) times momentum (GeV) before the first hit.
    track_efficiency : float
        Probability that a track in the acceptance is reconstructed, in [0, 1].
    ghost_fraction : float
        Fraction of the tracks that are ghosts (random lines), in [0, 0.9].
    ghost_transverse_spread : float
        Transverse spread of the ghosts' origins around the beam.
    <species>_per_pv, _ctau, _mass, _mean_pt, _decay_momentum : float
        For ``k0s``, ``lambda``, ``charm`` and ``beauty`` decays: decays per interaction
        (on average for :data:`PER_CHARGED_PARTICLE`),
        mean lifetime times c, parent mass, parent mean pT and daughter momentum in the
        parent's frame.
    <species>_daughters : int
        Charged daughters per decay.

    Raises
    ------
    ValueError
        For an invalid value, naming the condition.
    TypeError
        For an unknown name (:meth:`replace` raises ``ValueError`` for it instead).
    """

    # -- pile-up and luminous region -----------------------------------------------------
    # Mean visible pp interactions per crossing at L = 2e33 /cm²/s: LHCb Upgrade I design
    # (LHCb Framework TDR, LHCb-TDR-012; detector paper JINST 19 (2024) P05065, sec. 1), as
    # the spec reads it. LHCb's own ν counts all pp interactions, elastic and diffractive
    # too, and its visible ones, μ, as about 0.7 ν (LHCb twiki NuMuPileUp): about 5.3 at
    # ν = 7.6. Taken as visible, 7.6 is the busier case.
    # The multiplicity below is not conditioned on visibility: 1.3 % of the interactions
    # leave no reconstructible track and 3.2 % fewer than two (the PV checker needs four to
    # count one as reconstructible).
    nu: float = 7.6
    # Luminous-region centre: the beamline at the origin, the spec's default.
    beam_x: float = 0.0
    beam_y: float = 0.0
    beam_z: float = 0.0
    # Transverse luminous size: beta* = 2 m and normalised emittance 2.5 µm at 7 TeV give
    # sigma_beam ≈ 26 µm, sigma_lumi = sigma_beam/√2 ≈ 18 µm (LHCb-TDR-012; spec).
    sigma_x: float = 0.018
    sigma_y: float = 0.018
    # Longitudinal luminous size ≈ 45 mm (LHCb-TDR-013, VELO TDR, interaction-region model).
    sigma_z: float = 45.0

    # -- prompt charged particles -----------------------------------------------------------
    # Charged particles per unit pseudorapidity per visible interaction, taken flat in η over
    # the acceptance: CMS measures 5.49 ± 0.17 at η = 0 in inelastic pp at 13 TeV
    # (PLB 751 (2015) 143), LHCb a slow fall towards η = 5 (EPJC 82 (2022) 20). Flatness is an
    # approximation. Times the 5 units of acceptance below: ≈ 25 tracks per PV (spec: 20–30).
    charged_per_eta: float = 5.1
    # Negative-binomial shape of the multiplicity (k ≈ 1.5 gives the long tail of
    # minimum-bias events; LHCb, EPJC 72 (2012) 1947, approximation of the fitted shape).
    multiplicity_k: float = 1.5
    # |η| ranges seen by the VELO: forward 2 < η < 5 (LHCb acceptance, JINST 3 (2008) S08005),
    # backward −3.5 < η < −1.5 (LHCb-TDR-013, VELO acceptance figure); approximation of the edges.
    eta_forward: tuple[float, float] = (2.0, 5.0)
    eta_backward: tuple[float, float] = (1.5, 3.5)
    # Transverse momentum: min_pt + Gamma(shape 2) with overall mean 0.55 GeV, close to the
    # measured ⟨pT⟩ of charged hadrons at 13 TeV (ATLAS, EPJC 76 (2016) 502: 0.5–0.6 GeV
    # depending on the cut); the shape and the 50 MeV floor are approximations.
    mean_pt: float = 0.55
    min_pt: float = 0.05

    # -- VELO response ---------------------------------------------------------------------
    # Single-hit resolution of 55 µm pixels with charge sharing ≈ 12 µm (LHCb-TDR-013, sec. 4).
    hit_resolution: float = 0.012
    # Hits in the straight-line fit and their spacing along z: 26 stations, ≈ 25 mm apart
    # near the interaction region (LHCb-TDR-013); at most ten hits per track is an
    # approximation (a track has fewer when it leaves the modules' z span or outer reach).
    hits_per_track: int = 10
    module_spacing: float = 25.0
    # Sensors start 5.1 mm from the beam (JINST 19 (2024) P05065, sec. 3); their outer
    # reach (the L-shaped tiles, 43 × 15 mm² each) is approximated by a 40 mm radius.
    velo_inner_radius: float = 5.1
    velo_outer_radius: float = 40.0
    # z span of the modules (LHCb-TDR-013, JINST 19 (2024) P05065): a track is in acceptance
    # when its first three hits lie inside it.
    velo_z_range: tuple[float, float] = (-290.0, 750.0)
    # RMS multiple-scattering angle (per plane, rad) times momentum (GeV) before the first
    # measurement: an effective value for the published impact-parameter resolution of about
    # 12 + 24/pT µm (LHCb-TDR-013; JINST 19 (2024) P05065; the spec's reading, 12 ⊕ 24/pT the
    # other): IP_ms ≈ r_first · this / pT, 24 µm/pT for a first hit 6 mm from the beam. The
    # sample's first hits lie 6.7 mm out on average: its σ(IPx), 90 / 30 / 15 µm at pT =
    # 0.3 / 1 / 5 GeV, lies between the two readings, within 5 % (tests/test_simulation.py).
    ms_angle_term: float = 0.0039
    # Per-track reconstruction efficiency in acceptance ≈ 99 % (LHCb-TDR-013; arXiv:2412.14966).
    track_efficiency: float = 0.99
    # Ghost tracks: a few per cent of VELO tracks (LHCb-TDR-013: ghost rate ≈ 2–3 %); they are
    # random lines whose origin scatters transversely by ghost_transverse_spread around the
    # beam (approximation: ghosts are built from hits of real tracks, mostly near the beam).
    ghost_fraction: float = 0.025
    ghost_transverse_spread: float = 1.0

    # -- displaced decays (charged daughters are VELO tracks with MC label −1) --------------
    # per_pv: decays into charged final states per visible interaction, parent within the
    #   η acceptance above (K0S and Λ on average: a PV's share follows its charged
    #   multiplicity, see PER_CHARGED_PARTICLE). K0S: 0.06 per charged particle (CMS JHEP 05
    #   (2011) 064) × 25 tracks = 1.5, × 0.69 (BR to π+π−) ≈ 1.0; Λ+Λ̄: 0.6 of those 1.5 K0S
    #   (LHCb JHEP 08 (2011) 034 measures Λ̄/K0S ≈ 0.3 per species) × 0.64 (BR to pπ) ≈ 0.58;
    #   cc̄ and bb̄: LHCb σ(cc̄) ≈ 2.4 mb in 2 < y < 4.5 (JHEP 03 (2016) 159, with its errata)
    #   and σ(bb̄) ≈ 0.144 mb in 2 < η < 5 (PRL 118 (2017) 052002), over the 62.2 mb of inelastic
    #   interactions in the acceptance (JHEP 06 (2018) 100), times two hadrons per pair,
    #   spread flat over the 5 units of η of the acceptance (3 forward, 2 backward; charm's
    #   rapidity range taken as one of η): charm 0.038 × 2 × 5/2.5 = 0.15, beauty
    #   0.0023 × 2 × 5/3 = 0.0077. All approximations.
    # ctau: PDG mean lifetimes (charm: production-weighted D0, D+, Ds, Λc; beauty: B0, B+, Bs,
    #   Λb; approximations of the mix). mass: PDG (charm: D; beauty: B).
    # mean_pt: parent ⟨pT⟩, approximation of LHCb and ALICE spectra (strange ≈ 0.7–1 GeV,
    #   D ≈ 2 GeV, B ≈ 5 GeV). decay_momentum: daughter momentum in the parent frame (K0S→ππ,
    #   Λ→pπ from PDG masses; charm and beauty multi-body averages, approximations).
    # daughters: charged tracks per decay (charm and beauty: mean charged multiplicity,
    #   approximation; beauty includes its charm cascade).
    k0s_per_pv: float = 1.0
    k0s_ctau: float = 26.84
    k0s_mass: float = 0.4976
    k0s_mean_pt: float = 0.75
    k0s_decay_momentum: float = 0.206
    k0s_daughters: int = 2
    lambda_per_pv: float = 0.58
    lambda_ctau: float = 78.9
    lambda_mass: float = 1.1157
    lambda_mean_pt: float = 0.95
    lambda_decay_momentum: float = 0.101
    lambda_daughters: int = 2
    charm_per_pv: float = 0.15
    charm_ctau: float = 0.17
    charm_mass: float = 1.87
    charm_mean_pt: float = 2.0
    charm_decay_momentum: float = 0.7
    charm_daughters: int = 3
    beauty_per_pv: float = 0.0077
    beauty_ctau: float = 0.47
    beauty_mass: float = 5.28
    beauty_mean_pt: float = 5.0
    beauty_decay_momentum: float = 1.0
    beauty_daughters: int = 5

    def __post_init__(self) -> None:
        for name in ("eta_forward", "eta_backward", "velo_z_range"):
            pair = getattr(self, name)
            if isinstance(pair, str) or not hasattr(pair, "__len__") or len(pair) != 2:
                raise ValueError(f"condition {name} must be a pair (low, high), got {pair!r}")
            low, high = (_number(f"{name}[{i}]", v) for i, v in enumerate(pair))
            if not low < high:
                raise ValueError(f"condition {name} must have low < high, got {pair!r}")
            object.__setattr__(self, name, (low, high))  # JSON gives lists: store tuples
        for name in ("eta_forward", "eta_backward"):
            if getattr(self, name)[0] <= 0:
                raise ValueError(f"condition {name} holds |η|: its low edge must be positive")

        for field in dataclasses.fields(self):
            value = getattr(self, field.name)
            if field.type in ("int", int):
                if _number(field.name, value) != int(value):
                    raise ValueError(f"condition {field.name} must be an integer, got {value!r}")
                object.__setattr__(self, field.name, int(value))
            elif field.type in ("float", float):
                object.__setattr__(self, field.name, _number(field.name, value))

        positive = ["sigma_x", "sigma_y", "sigma_z", "charged_per_eta", "multiplicity_k",
                    "mean_pt", "hit_resolution", "module_spacing", "velo_inner_radius",
                    "velo_outer_radius", "ms_angle_term", "ghost_transverse_spread"]
        positive += [f"{s}_{what}" for s in SPECIES
                     for what in ("ctau", "mass", "mean_pt", "decay_momentum", "daughters")]
        for name in positive:
            if not getattr(self, name) > 0:
                raise ValueError(f"condition {name} must be positive, got {getattr(self, name)}")
        for name in ["nu", "min_pt", *(f"{s}_per_pv" for s in SPECIES)]:
            if getattr(self, name) < 0:
                raise ValueError(f"condition {name} must be non-negative, got {getattr(self, name)}")
        # A bound on input, not a figure of the detector: LHCb Upgrade II foresees ν ≈ 42
        # (Framework TDR, LHCb-TDR-023); at 10⁶ a few events took all memory and the process
        # was killed.
        if self.nu > 100:
            raise ValueError(f"condition nu must be at most 100 visible interactions per "
                             f"crossing, got {self.nu}")
        if not 0.0 <= self.track_efficiency <= 1.0:
            raise ValueError(f"condition track_efficiency must lie in [0, 1], got {self.track_efficiency}")
        # Ghosts come at ghost_fraction / (1 - ghost_fraction) per real track: beyond 0.9
        # (nine each) a sample's size grows without bound (0.99999: 10⁵ per track).
        if not 0.0 <= self.ghost_fraction <= 0.9:
            raise ValueError(f"condition ghost_fraction must lie in [0, 0.9], got {self.ghost_fraction}")
        # numpy's negative-binomial sampler takes p = k / (k + mean): beyond 1e12, p rounds
        # towards 1 and the mean drifts (1 % at 1e16, 0 at 1e18); towards k = 0 it loses the
        # mean too (0 instead of 25 at 1e-12) or refuses (1e-300).
        if not 1e-3 <= self.multiplicity_k <= 1e12:
            raise ValueError("condition multiplicity_k must lie in [1e-3, 1e12] (a Poisson "
                             f"multiplicity is k = 1e12), got {self.multiplicity_k}")
        if self.hits_per_track < 3:
            raise ValueError(f"condition hits_per_track must be at least 3, got {self.hits_per_track}")
        if not self.min_pt < self.mean_pt:
            raise ValueError("condition min_pt must be below mean_pt")
        if not self.velo_inner_radius < self.velo_outer_radius:
            raise ValueError("condition velo_inner_radius must be below velo_outer_radius")

    @property
    def mean_charged(self) -> float:
        """Mean prompt charged particles per visible interaction in the VELO η acceptance."""
        return self.charged_per_eta * (_width(self.eta_forward) + _width(self.eta_backward))

    @property
    def backward_fraction(self) -> float:
        """Fraction of prompt particles in the backward range (dN/dη flat)."""
        backward = _width(self.eta_backward)
        return backward / (_width(self.eta_forward) + backward)

    def decay_species(self) -> tuple[DecaySpecies, ...]:
        """The ``<species>_*`` fields gathered per species, in :data:`SPECIES` order."""
        return tuple(
            DecaySpecies(s, *(getattr(self, f"{s}_{what}") for what in DecaySpecies._fields[1:]))
            for s in SPECIES
        )

    def replace(self, **changes: Any) -> Conditions:
        """A copy with some conditions changed (validated like a new object).

        Raises
        ------
        ValueError
            For an unknown name or an invalid value.
        """
        known = {field.name for field in dataclasses.fields(self)}
        unknown = sorted(set(changes) - known)
        if unknown:
            raise ValueError(f"unknown simulation condition(s): {', '.join(unknown)}")
        return dataclasses.replace(self, **changes)


def _number(name: str, value: Any) -> float:
    """``value`` as a finite float, or a ``ValueError`` naming the condition."""
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise ValueError(f"condition {name} must be a number, got {value!r}")
    try:
        number = float(value)
    except OverflowError:  # an integer beyond float64 (10**400)
        number = math.inf
    if not math.isfinite(number):
        raise ValueError(f"condition {name} must be finite, got {value}")
    return number


def _width(edges: tuple[float, float]) -> float:
    return edges[1] - edges[0]
