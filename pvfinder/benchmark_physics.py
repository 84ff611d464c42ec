"""The physics goals of the CPU pipeline, checked on a large simulated sample.

``pvfinder bench --physics`` simulates 100 000 events at ν = 7.6, finds their vertices (with
the specification's defaults, or the configuration given) and scores them with the PV checker
(:func:`pvfinder.validation.validate`), then sets each figure against its goal. The test suite
asserts the same goals on a small sample, with bounds wide enough for its statistics; here
they are checked as stated. Beside the finder's resolution stands that of
:func:`pvfinder.validation.truth_fit`, which fits every MC PV from its own tracks: what the
tracks allow, and so whether a resolution missed is the algorithm's or the tracks'.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable
from typing import Any

import numpy as np

from .backends import get_backend
from .benchmark import check_counts, check_pile_ups, result_header
from .config import PVFinderConfig
from .pipeline import PVFinder
from .validation import (
    AXES,
    PLATEAU_MULTIPLICITY,
    ValidationReport,
    _jsonable,
    core_gaussian,
    truth_fit,
    validate,
)

__all__ = ["PHYSICS_GOALS", "PhysicsGoal", "run_physics_benchmark"]

#: "PVs with more than 20 tracks", the sample whose resolution the goals state.
RESOLUTION_MULTIPLICITY = 21


@dataclasses.dataclass(frozen=True)
class PhysicsGoal:
    """One figure of the PV checker and the range it must fall in.

    Attributes
    ----------
    name : str
        What is measured, as the goal states it.
    measure : callable
        Takes the :class:`~pvfinder.validation.ValidationReport`, returns the figure.
    at_least, at_most : float, optional
        The bounds (inclusive), None where there is none.
    below : float, optional
        A strict upper bound ("better than").
    """

    name: str
    measure: Callable[[ValidationReport], float]
    at_least: float | None = None
    at_most: float | None = None
    below: float | None = None

    def met_by(self, value: float) -> bool:
        """Whether ``value`` meets the goal (never a nan)."""
        return not math.isnan(value) and all((
            self.at_least is None or value >= self.at_least,
            self.at_most is None or value <= self.at_most,
            self.below is None or value < self.below,
        ))

    @property
    def goal(self) -> str:
        """The bounds as text, e.g. ``">= 0.99"`` or ``"0.9 to 1.2"``."""
        if self.at_least is not None and self.at_most is not None:
            return f"{self.at_least:g} to {self.at_most:g}"
        if self.at_least is not None:
            return f">= {self.at_least:g}"
        return f"<= {self.at_most:g}" if self.at_most is not None else f"< {self.below:g}"


def _resolution(axis: str) -> Callable[[ValidationReport], float]:
    return lambda report: report.resolution_where(min_multiplicity=RESOLUTION_MULTIPLICITY)[axis]


#: The goals of the CPU pipeline issue, on ν = 7.6 (lengths in mm).
PHYSICS_GOALS: tuple[PhysicsGoal, ...] = (
    PhysicsGoal(f"efficiency, isolated MC PVs with >= {PLATEAU_MULTIPLICITY} tracks",
                lambda report: report.efficiency_isolated_20, at_least=0.99),
    PhysicsGoal("efficiency, MC PVs with >= 30 tracks",
                lambda report: report.efficiency_where(min_multiplicity=30)[0], at_least=0.97),
    PhysicsGoal("fake rate", lambda report: report.fake_rate, at_most=0.01),
    PhysicsGoal("clone rate", lambda report: report.clone_rate, at_most=0.005),
    *(PhysicsGoal(f"pull mean {axis}", lambda report, axis=axis: report.pull_mean[axis],
                  at_least=-0.1, at_most=0.1) for axis in AXES),
    *(PhysicsGoal(f"pull width {axis}", lambda report, axis=axis: report.pull_width[axis],
                  at_least=0.9, at_most=1.2) for axis in AXES),
    *(PhysicsGoal(f"resolution {axis} [mm], MC PVs with > 20 tracks", _resolution(axis),
                  below=0.05 if axis == "z" else 0.015) for axis in AXES),
)


def run_physics_benchmark(
    n_events: int = 100_000,
    nu: float = 7.6,
    seed: int = 2,
    backend: str = "cpu",
    config: PVFinderConfig | None = None,
    progress: Callable[[str], None] = lambda _: None,
) -> dict[str, Any]:
    """Check :data:`PHYSICS_GOALS` on ``n_events`` simulated events.

    Parameters
    ----------
    n_events : int
        Events to simulate (100 000 hold about 700 000 reconstructible MC PVs; 1.8 GB of
        tracks in memory).
    nu : float
        Mean visible interactions per crossing.
    seed : int
        Seed of the sample (2, as ``notebooks/02_physics_performance.ipynb``).
    backend : {"cpu", "cuda", "auto"}
        Where the finder runs.
    config : PVFinderConfig, optional
        The finder's parameters (default: the specification's), to see what another choice
        gives; the result records them.
    progress : callable
        Called with the parameters that differ from the specification's (if any), the PV
        checker's table, a line of text per goal, then the truth fit's resolution.

    Returns
    -------
    dict
        JSON-serialisable: the date (of the start), the hardware, the sample, the
        configuration, each goal with its figure and whether it is met (``goals``;
        ``all_met``), the resolution of the truth fit for the MC PVs with more than 20
        tracks, found or not (``truth_fit_resolution``, as the physics notebook gives it)
        and the PV checker's whole summary (``report``: the efficiency against multiplicity
        and z included).

    Raises
    ------
    ValueError
        For a count that is not a positive integer or a ν the simulation refuses, before
        anything runs.
    TypeError
        For a ``config`` that is not a PVFinderConfig.
    """
    from .simulation import simulate

    chosen = get_backend(backend)
    check_counts({"n_events": n_events})
    check_pile_ups({"nu": nu})
    finder = PVFinder(config, backend=chosen)  # checks the configuration
    config = finder.config
    defaults = PVFinderConfig().to_dict()
    changed = {name: value for name, value in config.to_dict().items() if value != defaults[name]}
    if changed:
        progress("not the specification's defaults: "
                 + ", ".join(f"{name} = {value}" for name, value in changed.items()))
    header = result_header("physics", chosen.name)  # dated as it starts
    sample = simulate(n_events, seed=seed, nu=nu)
    report = validate(finder(sample.tracks), sample.truth)
    progress(report.table())  # the overall, isolated and close efficiencies and the curves
    goals = []
    for goal in PHYSICS_GOALS:
        value = float(goal.measure(report))
        goals.append({"name": goal.name, "value": _jsonable(value), "goal": goal.goal,
                      "met": goal.met_by(value)})
        progress(f"{goal.name}: {value:.6g} (goal {goal.goal}): "
                 f"{'met' if goals[-1]['met'] else 'MISSED'}")
    reference = truth_fit(sample.tracks, sample.truth)
    many = np.asarray(sample.truth.vertices.n_reconstructible) >= RESOLUTION_MULTIPLICITY
    truth_fit_resolution = {axis: core_gaussian(reference.residual[many, i])[1]
                            for i, axis in enumerate(AXES)}
    progress("resolution [mm] of the truth fit (each MC PV from all its own tracks), MC PVs "
             f"with > {RESOLUTION_MULTIPLICITY - 1} tracks: "
             + ", ".join(f"{axis} {value:.6g}" for axis, value in truth_fit_resolution.items()))
    return {
        **header,
        "sample": {"n_events": n_events, "nu": nu, "seed": seed},
        "config": config.to_dict(),
        "goals": goals,
        "all_met": all(goal["met"] for goal in goals),
        "truth_fit_resolution": _jsonable(truth_fit_resolution),
        "report": report.to_dict(),
    }
