"""Vectorised generator of LHCb Upgrade I-like events: VELO tracks with MC truth.

Every particle of every event is generated at once with numpy (no loop over events or
tracks): pile-up, prompt particles, displaced decays and ghosts, then the VELO response of
:mod:`.velo`. Lengths in mm, momenta in GeV.
"""

from __future__ import annotations

import dataclasses
import enum
import json
import zlib
from typing import Any

import numpy as np

from ..events import TRACK_FIELDS, MCTruth, MCVertices, TrackBatch, _is_count
from .conditions import PER_CHARGED_PARTICLE, Conditions, DecaySpecies
from .velo import measure

__all__ = ["SimulatedSample", "TrackOrigin", "simulate"]


class TrackOrigin(enum.IntEnum):
    """Where a simulated track comes from (values of :attr:`SimulatedSample.track_origin`)."""

    PROMPT = 0  #: a charged particle from a PV
    DISPLACED = 1  #: a daughter of a K0S, Λ, charm or beauty decay
    GHOST = 2  #: a fake track (random line)


@dataclasses.dataclass(frozen=True, eq=False, repr=False)
class SimulatedSample:
    """Tracks of a simulated sample, their MC truth and the conditions that made them.

    Attributes
    ----------
    tracks : TrackBatch
        VELO tracks, state at the first measurement, with covariance.
    truth : MCTruth
        MC PVs and, per track, the index of its PV within the event (−1 if none).
    conditions : Conditions
        The numbers of the simulation.
    track_origin : numpy.ndarray of int8
        Per track (same flat order as ``tracks``), a :class:`TrackOrigin` value.
    track_backward : numpy.ndarray of bool
        Per track, whether the particle flies towards −z.
    run_number : int
        A 32-bit number that names the sample: a checksum of what made it (seed, conditions,
        number of events), so that two different samples never share their event identifiers
        (:attr:`event_ids`) but by a chance of one in 4·10⁹, and the same sample always does.
    """

    tracks: TrackBatch
    truth: MCTruth
    conditions: Conditions
    track_origin: np.ndarray
    track_backward: np.ndarray
    run_number: int

    def __repr__(self) -> str:  # a summary: the arrays may hold millions of numbers
        return (f"SimulatedSample({self.tracks.n_events} events at nu = {self.conditions.nu:g}, "
                f"{int(self.tracks.offsets[-1])} tracks, "
                f"{int(self.truth.vertices.offsets[-1])} MC vertices, "
                f"run_number={self.run_number})")

    def __len__(self) -> int:
        return self.tracks.n_events

    @property
    def event_ids(self) -> dict[str, np.ndarray]:
        """Identifiers of the events, as LHCb's: ``run_number`` (uint32, :attr:`run_number`
        for all) and ``event_number`` (uint64, 0, 1, 2, ...); ``pvfinder.io.write_sample``
        writes them with the tracks and ``pvfinder reconstruct`` carries them over to the
        vertices, which lets ``pvfinder validate`` refuse vertices of another sample."""
        n_events = self.tracks.n_events
        return {"run_number": np.full(n_events, self.run_number, dtype=np.uint32),
                "event_number": np.arange(n_events, dtype=np.uint64)}

    def statistics(self) -> dict[str, float]:
        """Means that characterise the sample, to compare with the conditions.

        Returns
        -------
        dict
            ``mean_visible_pvs``, ``mean_tracks_per_event``,
            ``mean_reconstructible_tracks_per_pv``, ``fraction_reconstructible_pvs``
            (PVs with at least 4 reconstructible tracks), and among all tracks
            ``ghost_fraction``, ``displaced_fraction`` and ``backward_fraction``.
        """
        pvs = self.truth.vertices
        reco = np.asarray(pvs.n_reconstructible)
        n_events = max(self.tracks.n_events, 1)
        n_pvs = max(pvs.n_vertices, 1)
        n_tracks = max(self.tracks.n_tracks, 1)
        return {
            "mean_visible_pvs": pvs.n_vertices / n_events,
            "mean_tracks_per_event": self.tracks.n_tracks / n_events,
            "mean_reconstructible_tracks_per_pv": float(reco.sum()) / n_pvs,
            "fraction_reconstructible_pvs": np.count_nonzero(reco >= 4) / n_pvs,
            "ghost_fraction": np.count_nonzero(self.track_origin == TrackOrigin.GHOST) / n_tracks,
            "displaced_fraction": (
                np.count_nonzero(self.track_origin == TrackOrigin.DISPLACED) / n_tracks
            ),
            "backward_fraction": np.count_nonzero(self.track_backward) / n_tracks,
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
        Seed of ``numpy.random.default_rng`` (a non-negative integer): the same seed,
        conditions and ``n_events`` give the same sample; a fresh random one when omitted.
    conditions : Conditions, optional
        The numbers of the simulation; :class:`Conditions` defaults when omitted.
    **overrides
        Fields of :class:`Conditions` to change, e.g. ``nu=11.0``.

    Returns
    -------
    SimulatedSample
        Tracks (state at their first VELO measurement, with covariance) and truth.

    Raises
    ------
    ValueError
        For a negative or non-integer ``n_events`` or ``seed``, an unknown condition or an
        invalid value.
    TypeError
        When ``conditions`` is not a :class:`Conditions`.
    """
    if not _is_count(n_events):
        raise ValueError(f"n_events must be a non-negative integer, got {n_events!r}")
    if n_events > np.iinfo(np.intp).max:  # numpy's "Maximum allowed dimension exceeded"
        raise ValueError(f"n_events={n_events}: more events than an array can index")
    if seed is not None and not _is_count(seed):
        raise ValueError(f"seed must be a non-negative integer or None, got {seed!r}")
    if conditions is None:
        conditions = Conditions()
    elif not isinstance(conditions, Conditions):
        raise TypeError(f"conditions must be a Conditions, not {type(conditions).__name__}")
    n_events = int(n_events)
    cond = conditions.replace(**overrides)
    seeds = np.random.SeedSequence(seed)  # the same stream as default_rng(seed)
    rng = np.random.default_rng(seeds)

    pv_counts = rng.poisson(cond.nu, n_events)
    n_pvs = int(pv_counts.sum())
    pv_event = np.repeat(np.arange(n_events), pv_counts)
    pv_first = np.cumsum(pv_counts) - pv_counts  # global index of each event's first PV
    pv = (rng.normal(cond.beam_x, cond.sigma_x, n_pvs),
          rng.normal(cond.beam_y, cond.sigma_y, n_pvs),
          rng.normal(cond.beam_z, cond.sigma_z, n_pvs))

    # Conditions far out of range overflow in here: the check of the states below names them,
    # which numpy's warnings would only precede.
    with np.errstate(over="ignore", divide="ignore", invalid="ignore"):
        k = cond.multiplicity_k
        n_charged = rng.negative_binomial(k, k / (k + cond.mean_charged), n_pvs)
        prompt = _prompt_tracks(rng, cond, pv, n_charged)
        decays = _decay_tracks(rng, cond, pv, n_charged)
        real_per_event = np.bincount(pv_event[np.concatenate((prompt.pv, decays.pv))],
                                     minlength=n_events)
        ghosts = _ghost_tracks(rng, cond, real_per_event)

    event = np.concatenate((pv_event[prompt.pv], pv_event[decays.pv], ghosts.pv))
    label = np.concatenate((prompt.pv - pv_first[pv_event[prompt.pv]],
                            np.full(decays.pv.size + ghosts.pv.size, -1)))
    origin = np.repeat(np.array([TrackOrigin.PROMPT, TrackOrigin.DISPLACED, TrackOrigin.GHOST],
                                dtype=np.int8),
                       [prompt.pv.size, decays.pv.size, ghosts.pv.size])
    backward = np.concatenate((prompt.backward, decays.backward, ghosts.backward))
    # Order by event, shuffled within each event so that truth is not encoded in the order.
    order = np.argsort(event + rng.random(event.size))
    try:
        tracks = TrackBatch.from_arrays(
            counts=np.bincount(event, minlength=n_events),
            **{name: np.concatenate((prompt.states[name], decays.states[name],
                                     ghosts.states[name]))[order]
               for name in TRACK_FIELDS},
        )
    except ValueError as error:  # a condition far out of range: a hit resolution of 1e155 mm
        default = Conditions()
        changed = [field.name for field in dataclasses.fields(cond)
                   if getattr(cond, field.name) != getattr(default, field.name)]
        raise ValueError(f"the conditions make track states that are not finite ({error}); "
                         f"conditions changed from their defaults: "
                         f"{', '.join(changed) or 'none'}") from None
    vertices = MCVertices.from_arrays(
        counts=pv_counts, x=pv[0], y=pv[1], z=pv[2],
        n_reconstructible=np.bincount(prompt.pv, minlength=n_pvs).astype(np.int32),
    )
    truth = MCTruth(vertices, label[order].astype(np.int32))
    return SimulatedSample(tracks, truth, cond, origin[order], backward[order],
                           _run_number(seeds, cond, n_events))


def _run_number(seeds: np.random.SeedSequence, cond: Conditions, n_events: int) -> int:
    """A CRC-32 of what makes a sample: the seed's entropy (drawn by numpy when no seed was
    given), every condition and the number of events."""
    made_of = [str(seeds.entropy), dataclasses.asdict(cond), n_events]
    return zlib.crc32(json.dumps(made_of, sort_keys=True).encode())


@dataclasses.dataclass(frozen=True)
class _Tracks:
    """Reconstructed tracks of one kind: owner index (PV, or event for ghosts) and states."""

    pv: np.ndarray
    backward: np.ndarray
    states: dict[str, np.ndarray]


def _directions(
    rng: np.random.Generator, cond: Conditions, n: int
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Slopes ``tx, ty``, backward flag and ``|η|`` of ``n`` particles, flat in η and φ.

    Flat dN/dη over the union of the forward and backward ranges: a particle is backward
    with probability :attr:`Conditions.backward_fraction`.
    """
    backward = rng.random(n) < cond.backward_fraction
    low = np.where(backward, cond.eta_backward[0], cond.eta_forward[0])
    high = np.where(backward, cond.eta_backward[1], cond.eta_forward[1])
    eta = low + (high - low) * rng.random(n)
    phi = rng.uniform(0.0, 2.0 * np.pi, n)
    # dx/dz of a particle at polar angle θ: tan θ = 1/sinh η, negative z turns the sign.
    slope = np.where(backward, -1.0, 1.0) / np.sinh(eta)
    return slope * np.cos(phi), slope * np.sin(phi), backward, eta


def _momenta(rng: np.random.Generator, low: float, mean: float, eta: np.ndarray) -> np.ndarray:
    """Momentum ``p = pT cosh η`` with ``pT = low + Gamma(2)`` of mean ``mean`` [GeV]."""
    pt = low + rng.gamma(2.0, (mean - low) / 2.0, eta.size)
    return pt * np.cosh(eta)


def _prompt_tracks(rng: np.random.Generator, cond: Conditions, pv: tuple[np.ndarray, ...],
                   n_charged: np.ndarray) -> _Tracks:
    """Reconstructed prompt tracks of ``n_charged`` particles per PV (drawn from the
    negative-binomial multiplicity): efficiency, acceptance."""
    owner = np.repeat(np.arange(pv[0].size), n_charged)
    owner = owner[rng.random(owner.size) < cond.track_efficiency]  # lost ones need no state
    tx, ty, backward, eta = _directions(rng, cond, owner.size)
    p = _momenta(rng, cond.min_pt, cond.mean_pt, eta)
    states, seen = measure(rng, cond, tuple(c[owner] for c in pv), tx, ty, backward, p)
    return _select(owner, backward, states, seen)


def _decay_tracks(rng: np.random.Generator, cond: Conditions, pv: tuple[np.ndarray, ...],
                  n_charged: np.ndarray) -> _Tracks:
    """Reconstructed charged daughters of every species of :meth:`Conditions.decay_species`
    (``n_charged``: prompt charged particles per PV)."""
    parts = [_species_tracks(rng, cond, species, pv, n_charged)
             for species in cond.decay_species()]
    return _Tracks(
        pv=np.concatenate([t.pv for t in parts]),
        backward=np.concatenate([t.backward for t in parts]),
        states={name: np.concatenate([t.states[name] for t in parts]) for name in TRACK_FIELDS},
    )


def _species_tracks(rng: np.random.Generator, cond: Conditions, species: DecaySpecies,
                    pv: tuple[np.ndarray, ...], n_charged: np.ndarray) -> _Tracks:
    """Daughters of one species: Poisson count per PV (its mean in proportion to the PV's
    charged multiplicity for :data:`PER_CHARGED_PARTICLE`), flight exponential with mean βγcτ.

    Parents are flat in η like prompt particles, with their own pT spectrum and
    βγ = p/m. Daughters share the parent momentum equally and leave along the parent line
    with an isotropic kick of the decay momentum (approximations of the decay kinematics).
    """
    rate = species.per_pv
    if species.name in PER_CHARGED_PARTICLE:
        rate = rate * n_charged / cond.mean_charged
    parent_pv = np.repeat(np.arange(pv[0].size), rng.poisson(rate, pv[0].size))
    tx, ty, backward, eta = _directions(rng, cond, parent_pv.size)
    p = _momenta(rng, 0.0, species.mean_pt, eta)
    length = rng.exponential(p / species.mass * species.ctau)
    dz = np.where(backward, -1.0, 1.0) * length * np.tanh(eta)  # cos θ = tanh η
    decay = (pv[0][parent_pv] + tx * dz, pv[1][parent_pv] + ty * dz, pv[2][parent_pv] + dz)

    parent = np.repeat(np.arange(parent_pv.size), species.daughters)
    parent = parent[rng.random(parent.size) < cond.track_efficiency]
    p_daughter = p[parent] / species.daughters
    # Per-plane transverse kick of an isotropic decay: decay_momentum/√3, over the momentum.
    kick = species.decay_momentum / np.sqrt(3.0) / p_daughter
    d_tx = tx[parent] + kick * rng.standard_normal(parent.size)
    d_ty = ty[parent] + kick * rng.standard_normal(parent.size)
    states, seen = measure(rng, cond, tuple(c[parent] for c in decay), d_tx, d_ty,
                           backward[parent], p_daughter)
    return _select(parent_pv[parent], backward[parent], states, seen)


def _ghost_tracks(rng: np.random.Generator, cond: Conditions,
                  real_per_event: np.ndarray) -> _Tracks:
    """Ghosts: random lines near the luminous region, ``ghost_fraction`` of all tracks.

    The owner index of a ghost is its event.
    """
    rate = cond.ghost_fraction / (1.0 - cond.ghost_fraction)
    event = np.repeat(np.arange(real_per_event.size), rng.poisson(rate * real_per_event))
    n = event.size
    origin = (rng.normal(cond.beam_x, cond.ghost_transverse_spread, n),
              rng.normal(cond.beam_y, cond.ghost_transverse_spread, n),
              rng.normal(cond.beam_z, cond.sigma_z, n))
    tx, ty, backward, eta = _directions(rng, cond, n)
    p = _momenta(rng, cond.min_pt, cond.mean_pt, eta)
    states, seen = measure(rng, cond, origin, tx, ty, backward, p)
    return _select(event, backward, states, seen)


def _select(owner: np.ndarray, backward: np.ndarray, states: dict[str, np.ndarray],
            keep: np.ndarray) -> _Tracks:
    return _Tracks(owner[keep], backward[keep], {name: a[keep] for name, a in states.items()})
