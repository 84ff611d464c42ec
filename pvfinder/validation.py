"""The PV checker: score reconstructed primary vertices against Monte Carlo truth.

It is modelled on LHCb's ``PrimaryVertexChecker`` (matching by distance in z), with the
matching of the specification:

* an MC PV is *reconstructible* when it has at least ``min_reconstructible_tracks``
  reconstructible VELO tracks;
* every reconstructed PV is matched to the reconstructible MC PV of its own event that is
  nearest in z, provided ``|Δz| < match_nsigma · σ_z(rec)``; unmatched reconstructed PVs
  are *fakes* (a PV near only a non-reconstructible MC PV is therefore a fake);
* an MC PV with at least one match is *found*; further matches to it are *clones*
  (LHCb's checker matches one to one instead: it passes over MC PVs already matched, so a
  second reconstructed PV goes to the next MC PV within reach or counts as a fake);
* an MC PV is *isolated* when no other reconstructible MC PV of its event lies within
  ``isolation_distance`` in 3D, *close* otherwise.

Residuals and pulls use the best match (smallest ``|Δz|``) of each found MC PV.
:func:`truth_fit` gives the reference to judge them by: every MC PV fitted from all of its own
tracks, which the finder cannot know.
Everything is computed with whole-sample numpy operations; no Python loop runs over events.
Lengths are in mm (tables and plots show residuals in µm).

Core Gaussian width
-------------------
The core of a distribution is measured without any fitting library by iterative
2σ clipping: start from the median and the MAD-based width ``1.4826 · MAD``; then repeat
"keep the entries within ±2σ of the current mean, take their mean and standard deviation,
and divide the latter by the standard deviation of a unit Gaussian truncated at ±2σ
(0.880)" until the width changes by less than 10⁻⁶ relative. For a pure Gaussian this
converges to its mean and σ as entries accumulate; non-Gaussian tails barely move it. Few
entries give too small a width on average: 0.84 σ from 10 Gaussian entries, 0.91 σ from 20,
0.96 σ from 50, 0.99 σ from 200 (a bin of the tables with few PVs reads low). Below 10
entries there is no core width (nan): clipping a handful of values can keep just the two
closest. The RMS reported next to it is the plain standard deviation of all entries. The
core's width and mean come with statistical errors (:class:`Spread`), those of the clipped
estimators for Gaussian entries: 1.6 and 1.16 times those of a plain width and mean.
"""

from __future__ import annotations

import dataclasses
import json
import math
import pathlib
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np

from .events import (
    TRACK_FIELDS,
    MCTruth,
    TrackBatch,
    VertexBatch,
    _event_of,
    _is_count,
    _to_host,
)

__all__ = [
    "AXES",
    "DEFAULT_MULTIPLICITY_BINS",
    "DEFAULT_Z_BINS",
    "PLATEAU_MULTIPLICITY",
    "Curve",
    "Spread",
    "TruthFit",
    "ValidationReport",
    "core_gaussian",
    "truth_fit",
    "validate",
    "wilson_interval",
]

AXES = ("x", "y", "z")
DEFAULT_MULTIPLICITY_BINS = (4, 10, 20, 30, 50, 80, 120, math.inf)
#: 20 mm bins over ±200 mm: ±4.4 σ of the nominal luminous region (σ_z ≈ 45 mm).
DEFAULT_Z_BINS = tuple(float(edge) for edge in np.linspace(-200.0, 200.0, 21))
#: The high-multiplicity threshold of :attr:`ValidationReport.efficiency_isolated_20`.
PLATEAU_MULTIPLICITY = 20

_CLIP = 2.0  # the core is the part within ±2σ
# Standard deviation of a unit Gaussian truncated at ±_CLIP: undoes the clipping's shrinkage.
_TRUNCATED_STD = math.sqrt(
    1.0
    - 2.0 * _CLIP * math.exp(-0.5 * _CLIP**2) / math.sqrt(2.0 * math.pi) / math.erf(_CLIP / math.sqrt(2.0))
)
_CORE_FRACTION = math.erf(_CLIP / math.sqrt(2.0))  # share of a Gaussian within ±2σ


def _clipped_width_variance() -> float:
    """n · Var(σ̂)/σ² of the clipped width σ̂ from n Gaussian entries, for large n.

    σ̂ solves Σ ψ = 0 with ψ(x, σ) = (x² − k²σ²)·1(|x| < cσ) (k: ``_TRUNCATED_STD``, c:
    ``_CLIP``), so by the M-estimator rule its variance is E[ψ²] / (n (∂E[ψ]/∂σ)²) at σ = 1:
    1.28/n, 2.6 times the 1/(2n) of a plain standard deviation.
    """
    c, k2, inside = _CLIP, _TRUNCATED_STD**2, _CORE_FRACTION
    density = math.exp(-0.5 * c * c) / math.sqrt(2.0 * math.pi)
    moment2 = inside - 2.0 * c * density  # ∫ x² φ over |x| < c
    moment4 = 3.0 * inside - (2.0 * c**3 + 6.0 * c) * density  # ∫ x⁴ φ over |x| < c
    mean_square = moment4 - 2.0 * k2 * moment2 + k2 * k2 * inside  # E[ψ²]
    slope = 2.0 * c * (c * c - k2) * density - 2.0 * k2 * inside  # ∂E[ψ]/∂σ
    return mean_square / slope**2


def _clipped_mean_variance() -> float:
    """n · Var(μ̂)/σ² of the clipped mean μ̂ from n Gaussian entries, for large n.

    μ̂ solves Σ ψ = 0 with ψ(x, μ) = (x − μ)·1(|x − μ| < cσ): E[ψ²] and −∂E[ψ]/∂μ are both
    ∫ x² φ over |x| < c, so the variance is 1/(n ∫ x² φ) = 1.35/n, above the 0.81/n that
    the spread of the core entries alone would give (the window follows the mean).
    """
    density = math.exp(-0.5 * _CLIP * _CLIP) / math.sqrt(2.0 * math.pi)
    return 1.0 / (_CORE_FRACTION - 2.0 * _CLIP * density)


# Errors of a core's width and mean per core entry: σ̂ · sqrt(this / n_core) (n_core ≈ 0.954 n).
_CORE_WIDTH_VARIANCE = _clipped_width_variance() * _CORE_FRACTION
_CORE_MEAN_VARIANCE = _clipped_mean_variance() * _CORE_FRACTION
_MAD_TO_SIGMA = 1.4826
_MAX_CLIP_ITERATIONS = 100
# Fewest entries with a core width: residuals of 5.6, 5.9 and 46.8 µm clipped to the first
# two and gave σ = 0.2 µm, which a table would show as a resolution.
_MIN_CORE_ENTRIES = 10
_UM_PER_MM = 1000.0
# truth_fit leaves out a normal matrix with a diagonal entry that is not positive or whose
# determinant is at most this fraction of its diagonal's product (Hadamard's bound), the
# finder's fit's test for a singular vertex.
_SINGULAR_DET_FRACTION = 1e-12


def _ratio(passed: int | np.ndarray, total: int | np.ndarray) -> tuple[Any, Any]:
    """Ratio and binomial uncertainty ``sqrt(ε(1 − ε)/n)``; nan where ``total`` is 0."""
    passed = np.asarray(passed, dtype=np.float64)
    total = np.asarray(total, dtype=np.float64)
    with np.errstate(invalid="ignore", divide="ignore"):
        value = passed / total
        error = np.sqrt(value * (1.0 - value) / total)
    if value.ndim == 0:
        return float(value), float(error)
    return value, error


def wilson_interval(passed: Any, total: Any) -> tuple[Any, Any]:
    """Lower and upper bounds of the 68.3 % (one σ) Wilson score interval of ``passed / total``.

    Unlike ``sqrt(ε(1 − ε)/n)`` it does not shrink to nothing at ε = 0 or 1 (4 of 4 found
    gives [0.80, 1]) and stays inside [0, 1]; nan where ``total`` is 0.

    Parameters
    ----------
    passed, total : int or array of int
        Successes and trials (broadcast together).

    Returns
    -------
    (float, float) or (numpy.ndarray, numpy.ndarray)
        The lower and upper bounds: numbers for numbers, else arrays shaped as ``passed``
        and ``total`` broadcast.
    """
    passed = np.asarray(passed, dtype=np.float64)
    total = np.asarray(total, dtype=np.float64)
    # With z = 1: centre (k + 1/2)/(n + 1), half-width sqrt(k(n − k)/n + 1/4)/(n + 1).
    with np.errstate(invalid="ignore", divide="ignore"):
        centre = (passed + 0.5) / (total + 1.0)
        half = np.sqrt(passed * (total - passed) / total + 0.25) / (total + 1.0)
    lower = np.where(total > 0, centre - half, np.nan)
    upper = np.where(total > 0, centre + half, np.nan)
    if lower.ndim == 0:
        return float(lower), float(upper)
    return lower, upper


def _poisson_interval(count: int, per: int) -> tuple[float, float]:
    """68.3 % score interval of a Poisson rate ``count / per`` (a count per unit, which
    unlike a fraction may exceed 1): ``(k + 1/2 ∓ sqrt(k + 1/4)) / n``; nan where ``per``
    is 0."""
    if per <= 0:
        return math.nan, math.nan
    half = math.sqrt(count + 0.25)
    return (count + 0.5 - half) / per, (count + 0.5 + half) / per


def core_gaussian(values: np.ndarray) -> tuple[float, float, int]:
    """Mean, width and entry count of the Gaussian core of ``values`` (±2σ clipping).

    See the module docstring for the method. Returns ``(nan, nan, 0)`` for fewer than 10
    finite entries; a width of 0 when the entries are all equal.
    """
    values = np.asarray(values, dtype=np.float64)
    values = values[np.isfinite(values)]
    if values.size < _MIN_CORE_ENTRIES:
        return math.nan, math.nan, 0
    mean = float(np.median(values))
    sigma = _MAD_TO_SIGMA * float(np.median(np.abs(values - mean)))
    if sigma == 0.0:  # more than half the entries equal: fall back to the plain spread
        sigma = float(np.std(values))
    core = np.ones(values.size, dtype=bool)
    for _ in range(_MAX_CLIP_ITERATIONS):
        if sigma == 0.0:
            break
        core = np.abs(values - mean) < _CLIP * sigma
        if core.sum() < 2:
            break
        inside = values[core]
        if inside.min() == inside.max():  # np.std of equal values leaves rounding, not 0
            mean, sigma = float(inside[0]), 0.0
            break
        new_mean = float(inside.mean())
        new_sigma = float(inside.std()) / _TRUNCATED_STD
        converged = abs(new_sigma - sigma) <= 1e-6 * sigma and abs(new_mean - mean) <= 1e-6 * sigma
        mean, sigma = new_mean, new_sigma
        if converged:
            break
    return mean, sigma, int(core.sum())


@dataclasses.dataclass(frozen=True, eq=False)
class Spread:
    """Summary of a residual or pull distribution (scalars, or arrays with one entry per bin).

    Attributes
    ----------
    n : int or numpy.ndarray
        Number of entries.
    mean, rms : float or numpy.ndarray
        Plain mean and standard deviation of all entries.
    core_mean, core_sigma : float or numpy.ndarray
        Mean and width of the Gaussian core (see :func:`core_gaussian`).
    core_sigma_error : float or numpy.ndarray
        Statistical uncertainty of ``core_sigma``: ``core_sigma · sqrt(1.22 / n_core)``, that
        of the clipped width of Gaussian entries (about 1.6 times the ``sqrt(1/(2 n))`` of a
        plain standard deviation, since clipping discards information).
    core_mean_error : float or numpy.ndarray
        Statistical uncertainty of ``core_mean``: ``core_sigma · sqrt(1.29 / n_core)``, that
        of the clipped mean of Gaussian entries (1.16 times the ``sigma / sqrt(n)`` of a plain
        mean).
    n_core : int or numpy.ndarray
        Entries within ±2 ``core_sigma`` of ``core_mean``.
    """

    n: Any
    mean: Any
    rms: Any
    core_mean: Any
    core_sigma: Any
    core_sigma_error: Any
    core_mean_error: Any
    n_core: Any

    @classmethod
    def of(cls, values: np.ndarray) -> Spread:
        """Summarise the finite entries of ``values``."""
        values = np.asarray(values, dtype=np.float64)
        values = values[np.isfinite(values)]
        core_mean, core_sigma, n_core = core_gaussian(values)
        core_sigma_error, core_mean_error = (
            (core_sigma * math.sqrt(_CORE_WIDTH_VARIANCE / n_core),
             core_sigma * math.sqrt(_CORE_MEAN_VARIANCE / n_core)) if n_core
            else (math.nan, math.nan))
        return cls(
            n=int(values.size),
            mean=float(values.mean()) if values.size else math.nan,
            rms=float(values.std()) if values.size else math.nan,
            core_mean=core_mean,
            core_sigma=core_sigma,
            core_sigma_error=core_sigma_error,
            core_mean_error=core_mean_error,
            n_core=n_core,
        )

    @classmethod
    def binned(cls, values: np.ndarray, bin_index: np.ndarray, n_bins: int) -> Spread:
        """One summary per bin (``bin_index`` in ``[0, n_bins)``; others are ignored)."""
        per_bin = [cls.of(values[bin_index == b]) for b in range(n_bins)]
        return cls(
            **{
                field.name: np.array([getattr(s, field.name) for s in per_bin])
                for field in dataclasses.fields(cls)
            }
        )


@dataclasses.dataclass(frozen=True, eq=False)
class Curve:
    """A rate in bins: ``value = passed / total`` with its binomial ``error`` and its Wilson
    score interval ``lower``–``upper`` (68.3 %, see :func:`wilson_interval`), which the plots
    and the table show: the binomial error vanishes in bins at 0 or 1.

    ``edges`` has one entry more than the other arrays; a bin is ``[edges[i], edges[i+1])``.
    Empty bins hold nan.
    """

    edges: np.ndarray
    total: np.ndarray
    passed: np.ndarray
    value: np.ndarray
    error: np.ndarray
    lower: np.ndarray
    upper: np.ndarray

    @classmethod
    def of(cls, variable: np.ndarray, passed: np.ndarray, edges: np.ndarray) -> Curve:
        """The fraction of ``passed`` entries in each ``[lo, hi)`` bin of ``variable``."""
        n_bins = len(edges) - 1
        index = _bin_index(variable, edges)
        inside = index >= 0
        total = np.bincount(index[inside], minlength=n_bins)
        hits = np.bincount(index[inside], weights=passed[inside], minlength=n_bins).astype(np.int64)
        return cls.from_counts(edges, hits, total)

    @classmethod
    def from_counts(cls, edges: Any, passed: Any, total: Any) -> Curve:
        """The curve of ``passed`` out of ``total`` entries in the bins of ``edges``."""
        total, passed = np.asarray(total), np.asarray(passed)
        value, error = _ratio(passed, total)
        lower, upper = wilson_interval(passed, total)
        return cls(edges=np.asarray(edges, dtype=np.float64), total=total, passed=passed,
                   value=value, error=error, lower=lower, upper=upper)

    @property
    def yerr(self) -> np.ndarray:
        """``(value − lower, upper − value)``: the Wilson interval as matplotlib error bars."""
        return np.array([self.value - self.lower, self.upper - self.value])


def _bin_index(variable: np.ndarray, edges: np.ndarray) -> np.ndarray:
    """Bin of each entry (``[lo, hi)`` bins), −1 outside the edges."""
    index = np.searchsorted(edges, variable, side="right") - 1
    index[(index < 0) | (index >= len(edges) - 1)] = -1
    return index


@dataclasses.dataclass(frozen=True, eq=False)
class ValidationReport:
    """What :func:`validate` measured.

    Attributes
    ----------
    n_events : int
        Events scored.
    counts : dict of str to int
        ``mc_pvs``, ``reconstructible``, ``isolated``, ``close``, ``found``,
        ``found_isolated``, ``found_close``, ``rec_pvs``, ``matched`` (reconstructed PVs
        with a match), ``fakes`` and ``clones``.
    efficiency, efficiency_isolated, efficiency_close : float
        Found / reconstructible MC PVs (all, isolated, close); nan without any.
    efficiency_error, efficiency_isolated_error, efficiency_close_error : float
        Their binomial uncertainties.
    fake_rate, fake_rate_error : float
        ``fakes / (matched + fakes)`` and its binomial uncertainty.
    clone_rate, clone_rate_error : float
        ``clones / found`` and its Poisson uncertainty ``sqrt(clones) / found``.
    residuals, pulls : dict of str to Spread
        Per axis (``"x"``, ``"y"``, ``"z"``): rec − MC [mm] and (rec − MC) / σ_rec of the
        best match of each found MC PV.
    residuals_vs_multiplicity, pulls_vs_multiplicity : dict of str to Spread
        The same in bins of MC multiplicity (``efficiency_vs_multiplicity.edges``).
    efficiency_vs_multiplicity, efficiency_vs_z : Curve
        Efficiency in bins of the number of reconstructible tracks and of MC z [mm].
    fake_rate_vs_multiplicity : Curve
        Fake rate in bins of the reconstructed (weighted) number of tracks.
    settings : dict
        The matching parameters used.
    mc_multiplicity, mc_z, mc_isolated, mc_found : numpy.ndarray
        Per reconstructible MC PV (flat over events), for selections of your own.
    residual_values, pull_values : dict of str to numpy.ndarray
        The entries behind ``residuals`` and ``pulls`` (for plots).
    """

    n_events: int
    counts: dict[str, int]
    efficiency: float
    efficiency_error: float
    efficiency_isolated: float
    efficiency_isolated_error: float
    efficiency_close: float
    efficiency_close_error: float
    fake_rate: float
    fake_rate_error: float
    clone_rate: float
    clone_rate_error: float
    residuals: dict[str, Spread]
    pulls: dict[str, Spread]
    residuals_vs_multiplicity: dict[str, Spread]
    pulls_vs_multiplicity: dict[str, Spread]
    efficiency_vs_multiplicity: Curve
    efficiency_vs_z: Curve
    fake_rate_vs_multiplicity: Curve
    settings: dict[str, Any]
    mc_multiplicity: np.ndarray = dataclasses.field(repr=False)
    mc_z: np.ndarray = dataclasses.field(repr=False)
    mc_isolated: np.ndarray = dataclasses.field(repr=False)
    mc_found: np.ndarray = dataclasses.field(repr=False)
    residual_values: dict[str, np.ndarray] = dataclasses.field(repr=False)
    pull_values: dict[str, np.ndarray] = dataclasses.field(repr=False)

    # -- derived numbers -------------------------------------------------------------------

    def efficiency_where(
        self, *, isolated: bool | None = None, min_multiplicity: float = 0
    ) -> tuple[float, float]:
        """Efficiency and its error for a subset of reconstructible MC PVs.

        Parameters
        ----------
        isolated : bool, optional
            Only isolated (True) or close (False) MC PVs; both when None.
        min_multiplicity : float
            Only MC PVs with at least this many reconstructible tracks.

        Returns
        -------
        (float, float)
            The efficiency and its binomial error; nan for a subset without MC PVs.

        Raises
        ------
        TypeError
            When ``isolated`` is neither a bool nor None.
        """
        if not (isolated is None or isinstance(isolated, (bool, np.bool_))):  # "no" matched none
            raise TypeError(f"isolated must be True, False or None, got {isolated!r}")
        return _ratio(*self._found_of(isolated, min_multiplicity))

    def _found_of(self, isolated: bool | None, min_multiplicity: float) -> tuple[int, int]:
        """Found and total reconstructible MC PVs of a subset."""
        keep = self.mc_multiplicity >= min_multiplicity
        if isolated is not None:
            keep &= self.mc_isolated == isolated
        return int(np.count_nonzero(self.mc_found & keep)), int(np.count_nonzero(keep))

    @property
    def efficiency_isolated_20(self) -> float:
        """Efficiency for isolated MC PVs with at least 20 reconstructible tracks (the plateau)."""
        return self.efficiency_where(isolated=True, min_multiplicity=PLATEAU_MULTIPLICITY)[0]

    def resolution_where(self, *, min_multiplicity: float = 0) -> dict[str, float]:
        """Core Gaussian width of rec − MC per axis [mm] for the found MC PVs with at least
        ``min_multiplicity`` reconstructible tracks (21 for "more than 20 tracks"); nan with
        fewer than 10 such PVs."""
        keep = self.mc_multiplicity[self.mc_found] >= min_multiplicity
        return {axis: core_gaussian(self.residual_values[axis][keep])[1] for axis in AXES}

    @property
    def bias(self) -> dict[str, float]:
        """Core mean of rec − MC per axis [mm]."""
        return {axis: self.residuals[axis].core_mean for axis in AXES}

    @property
    def resolution(self) -> dict[str, float]:
        """Core Gaussian width of rec − MC per axis [mm]."""
        return {axis: self.residuals[axis].core_sigma for axis in AXES}

    @property
    def resolution_rms(self) -> dict[str, float]:
        """RMS of rec − MC per axis [mm]."""
        return {axis: self.residuals[axis].rms for axis in AXES}

    @property
    def pull_mean(self) -> dict[str, float]:
        """Core mean of the pulls per axis (ideal: 0)."""
        return {axis: self.pulls[axis].core_mean for axis in AXES}

    @property
    def pull_width(self) -> dict[str, float]:
        """Core width of the pulls per axis (ideal: 1)."""
        return {axis: self.pulls[axis].core_sigma for axis in AXES}

    @property
    def pull_rms(self) -> dict[str, float]:
        """RMS of the pulls per axis."""
        return {axis: self.pulls[axis].rms for axis in AXES}

    # -- output ----------------------------------------------------------------------------

    def to_dict(self) -> dict[str, Any]:
        """Every summary number as plain JSON types (arrays as lists, nan and inf as None).

        The per-vertex arrays (``mc_*``, ``residual_values``, ``pull_values``) are left out.
        """
        skip = {"mc_multiplicity", "mc_z", "mc_isolated", "mc_found", "residual_values", "pull_values"}
        out = {
            field.name: getattr(self, field.name)
            for field in dataclasses.fields(self)
            if field.name not in skip
        }
        out["efficiency_isolated_20"] = self.efficiency_isolated_20
        return _jsonable(out)

    def to_json(self, **kwargs: Any) -> str:
        """:meth:`to_dict` as a strict JSON string (``kwargs`` go to :func:`json.dumps`)."""
        return json.dumps(self.to_dict(), allow_nan=False, **kwargs)

    def table(self) -> str:
        """A printable summary in the manner of LHCb's PV checker.

        Rates are shown with their 68.3 % score interval (``+up/-down``), which stays
        meaningful where the ``*_error`` attributes vanish (at 0, and for fractions at 1):
        Wilson's for the efficiencies and the fake rate, Poisson's for the clone rate, a
        number of extra matches per found MC PV that may exceed 1.
        """
        c = self.counts
        s = self.settings
        n_20_found, n_20 = self._found_of(True, PLATEAU_MULTIPLICITY)
        lines = [
            " ============================================",
            " PV checker: efficiencies for reconstructible MC vertices",
            " ============================================",
            f" {self.n_events} events, {c['mc_pvs']} MC PVs, {c['rec_pvs']} reconstructed PVs",
            f" MC PV is reconstructible if at least {s['min_reconstructible_tracks']} tracks are reconstructed",
            f" MC PV is isolated if no other reconstructible MC PV is within {s['isolation_distance']:g} mm (3D)",
            f" REC and MC vertices matched by dz distance: |dz| < {s['match_nsigma']:g} sigma_z(rec)",
            "",
            _rate_line("All", c["found"], c["reconstructible"]),
            _rate_line("Isolated", c["found_isolated"], c["isolated"]),
            _rate_line("Close", c["found_close"], c["close"]),
            _rate_line(f"Isolated & >= {PLATEAU_MULTIPLICITY} tr", n_20_found, n_20),
            _rate_line("False rate", c["fakes"], c["rec_pvs"]),
            _rate_line("Clone rate", c["clones"], c["found"], _poisson_interval),
            "",
            f" {'best match, rec - MC':<26}{'x':>16}{'y':>16}{'z':>16}",
            _axes_line("core mean [um]", self.residuals, "core_mean", _UM_PER_MM),
            _axes_line("core sigma [um]", self.residuals, "core_sigma", _UM_PER_MM),
            _axes_line("RMS [um]", self.residuals, "rms", _UM_PER_MM),
            _axes_line("pull core mean", self.pulls, "core_mean"),
            _axes_line("pull core width", self.pulls, "core_sigma"),
            _axes_line("pull RMS", self.pulls, "rms"),
            "",
            " efficiency and resolution vs MC multiplicity (reconstructible tracks)",
            (f" {'tracks':<12}{'MC PVs':>8}{'found':>8}{'efficiency':>24}"
             f"{'sigma_x':>9}{'sigma_y':>9}{'sigma_z':>9} [um]"),
        ]
        curve = self.efficiency_vs_multiplicity
        res = self.residuals_vs_multiplicity
        for i in range(len(curve.total)):
            lines.append(
                f" {_bin_label(curve.edges, i):<12}{curve.total[i]:>8d}{curve.passed[i]:>8d}"
                f"{_value_interval(curve.value[i], curve.lower[i], curve.upper[i]):>24}"
                + "".join(f"{_number(res[a].core_sigma[i] * _UM_PER_MM, 1):>9}" for a in AXES)
            )
        return "\n".join(lines)

    def __str__(self) -> str:
        return self.table()

    def plot(self, directory: str | pathlib.Path) -> list[pathlib.Path]:
        """Write the checker's plots as PNG files into ``directory`` (created if needed).

        Efficiency vs multiplicity and vs z, fake rate vs reconstructed multiplicity, and the
        residual and pull distributions per axis with their core Gaussian, in mplhep's LHCb
        style. Needs the ``plot`` extra (matplotlib, mplhep).

        Returns
        -------
        list of pathlib.Path
            The files written.
        """
        return _plot_report(self, pathlib.Path(directory))


def _value_interval(value: float, lower: float, upper: float) -> str:
    if not np.isfinite(value):
        return "n/a"
    return f"{value:.4f} +{upper - value:.4f}/-{value - lower:.4f}"


def _rate_line(name: str, passed: int, total: int,
               interval: Callable[[int, int], tuple[Any, Any]] = wilson_interval) -> str:
    """``passed / total`` with its interval (Wilson's for a fraction), and the counts."""
    rate = _value_interval(_ratio(passed, total)[0], *interval(passed, total))
    return f" {name:<24}: {rate:>24}   ({passed} / {total})"


def _axes_line(name: str, spreads: dict[str, Spread], field: str, scale: float | None = None
               ) -> str:
    """One quantity of ``spreads`` per axis: µm to 0.1 with a ``scale`` (from mm), else to
    0.001; a core's width or mean with its statistical error."""
    digits, scale = (3, 1.0) if scale is None else (1, scale)
    cells = []
    for axis in AXES:
        spread = spreads[axis]
        value = getattr(spread, field)
        text = _number(value * scale, digits)
        if field in ("core_sigma", "core_mean") and math.isfinite(value):
            text += f"±{_number(getattr(spread, f'{field}_error') * scale, digits)}"
        cells.append(f"{text:>16}")
    return f"   {name:<23}" + "".join(cells)


def _number(value: float, digits: int) -> str:
    """``value`` to ``digits`` decimals; ``n/a`` where there is none (too few entries)."""
    return f"{value:.{digits}f}" if math.isfinite(value) else "n/a"


def _bin_label(edges: np.ndarray, i: int) -> str:
    """``[lo, hi)`` as text; ``>= lo`` for an open last bin."""
    lo, hi = edges[i], edges[i + 1]
    if np.isinf(hi):
        return f">= {lo:g}"
    return f"[{lo:g}, {hi:g})"


def _jsonable(value: Any) -> Any:
    """Plain JSON types; non-finite floats become None."""
    if dataclasses.is_dataclass(value):
        return {f.name: _jsonable(getattr(value, f.name)) for f in dataclasses.fields(value)}
    if isinstance(value, dict):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_jsonable(v) for v in value]
    if isinstance(value, np.ndarray):
        return [_jsonable(v) for v in value.tolist()]
    if isinstance(value, (bool, np.bool_)):
        return bool(value)
    if isinstance(value, (int, np.integer)):
        return int(value)
    if isinstance(value, (float, np.floating)):
        return float(value) if math.isfinite(value) else None
    return value


# -- plots ---------------------------------------------------------------------------------


def _plot_report(report: ValidationReport, directory: pathlib.Path) -> list[pathlib.Path]:
    try:
        import matplotlib.style
        import mplhep
        from matplotlib.backends.backend_agg import FigureCanvasAgg
        from matplotlib.figure import Figure
    except ImportError as err:
        raise ImportError(
            "ValidationReport.plot needs matplotlib and mplhep: pip install pvfinder[plot]"
        ) from err

    directory.mkdir(parents=True, exist_ok=True)
    written = []

    def save(fig: Figure, name: str) -> None:
        # An explicit Agg canvas instead of pyplot: the user's backend is left alone.
        FigureCanvasAgg(fig)
        path = directory / f"{name}.png"
        fig.savefig(path)
        written.append(path)

    with matplotlib.style.context(mplhep.style.LHCb2):
        save(_plot_rate_vs_multiplicity(Figure(), report.efficiency_vs_multiplicity,
                                        "Number of reconstructible tracks", "Efficiency"),
             "efficiency_vs_multiplicity")
        save(_plot_rate_vs_z(Figure(), report.efficiency_vs_z), "efficiency_vs_z")
        save(_plot_rate_vs_multiplicity(Figure(), report.fake_rate_vs_multiplicity,
                                        "Number of tracks (weighted, reconstructed)", "Fake rate"),
             "fake_rate_vs_multiplicity")
        for axis in AXES:
            save(_plot_distribution(Figure(), report.residual_values[axis] * _UM_PER_MM,
                                    report.residuals[axis], _UM_PER_MM,
                                    rf"${axis}_{{\mathrm{{rec}}}} - {axis}_{{\mathrm{{MC}}}}$ [$\mu$m]",
                                    r"$\mu$m"),
                 f"residual_{axis}")
        for axis in AXES:
            save(_plot_distribution(Figure(), report.pull_values[axis], report.pulls[axis], 1.0,
                                    rf"Pull $({axis}_{{\mathrm{{rec}}}} - {axis}_{{\mathrm{{MC}}}})"
                                    rf" / \sigma_{axis}$", ""),
                 f"pull_{axis}")
    return written


def _plot_rate_vs_multiplicity(fig: Any, curve: Curve, xlabel: str, ylabel: str) -> Any:
    """Rate per multiplicity bin, one labelled category per bin (the last bin is open)."""
    import matplotlib.ticker
    ax = fig.subplots()
    position = np.arange(curve.total.size)
    ax.errorbar(position, curve.value, yerr=curve.yerr, xerr=0.5, fmt="o", color="black")
    ax.set_xticks(position, [_bin_label(curve.edges, i) for i in position], rotation=30)
    ax.set_xlim(-0.6, curve.total.size - 0.4)
    ax.xaxis.set_minor_locator(matplotlib.ticker.NullLocator())
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    _set_rate_limits(ax, curve)
    return fig


def _plot_rate_vs_z(fig: Any, curve: Curve) -> Any:
    ax = fig.subplots()
    centre = 0.5 * (curve.edges[1:] + curve.edges[:-1])
    ax.errorbar(centre, curve.value, yerr=curve.yerr, xerr=0.5 * np.diff(curve.edges),
                fmt="o", color="black")
    ax.set_xlabel(r"$z_{\mathrm{MC}}$ [mm]")
    ax.set_ylabel("Efficiency")
    _set_rate_limits(ax, curve)
    return fig


def _set_rate_limits(ax: Any, curve: Curve) -> None:
    """Leave room above the points; a rate axis never starts below 0."""
    top = np.nanmax(curve.upper) if np.isfinite(curve.upper).any() else 1.0
    ax.set_ylim(0.0, max(top, 0.05) * 1.15)


def _plot_distribution(
    fig: Any, values: np.ndarray, spread: Spread, scale: float, xlabel: str, unit: str
) -> Any:
    """Histogram over ±5 core widths with the core Gaussian (scaled to the core entries).

    ``values`` are already in display units; ``scale`` converts ``spread`` (mm) to them.
    """
    ax = fig.subplots()
    values = values[np.isfinite(values)]
    mean, sigma = spread.core_mean * scale, spread.core_sigma * scale
    if values.size and np.isfinite(sigma) and sigma > 0:
        window = (mean - 5 * sigma, mean + 5 * sigma)
    elif values.size:
        window = (values.min() - 1.0, values.max() + 1.0)
    else:
        window = (-1.0, 1.0)
    content, edges = np.histogram(values, bins=50, range=window)
    centre = 0.5 * (edges[1:] + edges[:-1])
    ax.errorbar(centre, content, yerr=np.sqrt(content), xerr=0.5 * np.diff(edges),
                fmt="o", color="black", label="best matches")
    if np.isfinite(sigma) and sigma > 0:
        fine = np.linspace(*window, 400)
        total = spread.n_core / _CORE_FRACTION
        gauss = total * np.diff(edges)[0] / (sigma * math.sqrt(2 * math.pi)) * np.exp(
            -0.5 * ((fine - mean) / sigma) ** 2
        )
        suffix = f" {unit}" if unit else ""
        ax.plot(fine, gauss, color="tab:red",
                label=f"core Gaussian\n$\\mu$ = {mean:.2g}{suffix}\n$\\sigma$ = {sigma:.3g}{suffix}")
        ax.legend(loc="upper right", fontsize=20)
    ax.set_xlim(*window)
    ax.set_ylim(0.0, max(content.max(initial=0), 1) * 1.35)
    ax.set_xlabel(xlabel)
    width = f"{np.diff(edges)[0]:.3g}"
    ax.set_ylabel(f"Entries / ({width} {unit})" if unit else f"Entries / {width}")
    return fig


# -- matching ------------------------------------------------------------------------------


def _nearest_in_event(
    ref_event: np.ndarray, ref_z: np.ndarray, query_event: np.ndarray, query_z: np.ndarray
) -> np.ndarray:
    """Index of the reference entry of the same event nearest in z to each query (−1: none).

    Both sets are merged and sorted by (event, z); each query's neighbours are the last
    reference entry before it and the first after it, found with running max/min.
    """
    n_ref = ref_z.size
    event = np.concatenate([ref_event, query_event])
    z = np.concatenate([ref_z, query_z])
    order = np.lexsort((z, event))
    is_ref = order < n_ref
    position = np.arange(order.size)
    before = np.maximum.accumulate(np.where(is_ref, position, -1))
    after = np.minimum.accumulate(np.where(is_ref, position, order.size)[::-1])[::-1]

    query_position = np.flatnonzero(~is_ref)
    query_index = order[query_position] - n_ref
    sorted_event = event[order]
    best = np.full(query_z.size, -1, dtype=np.int64)
    best_distance = np.full(query_z.size, np.inf)
    for neighbour in (before[query_position], after[query_position]):
        valid = (neighbour >= 0) & (neighbour < order.size)
        valid[valid] &= sorted_event[neighbour[valid]] == sorted_event[query_position[valid]]
        ref_index = np.where(valid, order[np.clip(neighbour, 0, order.size - 1)], -1)
        distance = np.where(valid, np.abs(z[np.maximum(ref_index, 0)] - query_z[query_index]), np.inf)
        closer = distance < best_distance[query_index]
        best[query_index[closer]] = ref_index[closer]
        best_distance[query_index[closer]] = distance[closer]
    return best


def _isolated(event: np.ndarray, x: np.ndarray, y: np.ndarray, z: np.ndarray,
              distance: float) -> np.ndarray:
    """True where no other entry of the same event lies within ``distance`` in 3D.

    Entries are sorted by (event, z); as the 3D distance is at least the distance in z, an
    entry is compared with the next one, the one after, ... only while they are of its
    event and within ``distance`` in z. Memory stays linear in the entries, time grows with
    the number of neighbours in z (a few at LHCb pile-up).
    """
    order = np.lexsort((z, event))
    event, x, y, z = event[order], x[order], y[order], z[order]
    has_neighbour = np.zeros(order.size, dtype=bool)
    first = np.arange(order.size)
    step = 1
    while first.size:
        first = first[first + step < order.size]
        second = first + step
        in_reach = (event[second] == event[first]) & (z[second] - z[first] <= distance)
        first, second = first[in_reach], second[in_reach]
        d2 = (x[first] - x[second]) ** 2 + (y[first] - y[second]) ** 2 + (z[first] - z[second]) ** 2
        near = d2 <= distance**2
        has_neighbour[first[near]] = True
        has_neighbour[second[near]] = True
        step += 1
    isolated = np.empty(order.size, dtype=bool)
    isolated[order] = ~has_neighbour
    return isolated


def _check_reconstructed(vertices: VertexBatch) -> None:
    """Refuse vertices that cannot be matched or pulled: a position that is not finite, or a
    variance of x, y or z that is not positive and finite (the match window and the pulls
    divide by the σ). The finder's own results are built without the checks of
    :meth:`VertexBatch.from_arrays`, and those allow a zero variance."""
    for axis in AXES:
        for name, kind in ((axis, ""), (f"cov_{axis}{axis}", "variance ")):
            values = np.asarray(getattr(vertices, name), dtype=np.float64)
            valid = np.isfinite(values) if not kind else (values > 0) & (values < np.inf)
            bad = np.flatnonzero(~valid)
            if bad.size:
                index = int(bad[0])
                event = _event_of(vertices.offsets, index)
                raise ValueError(
                    f"vertices: {kind}{name!r} of reconstructed vertex "
                    f"{index - int(vertices.offsets[event])} of event {event} is "
                    f"{values[index]}; the PV checker needs finite positions and positive "
                    "variances")


def _check_bins(edges: Sequence[float], name: str, *, finite: bool = False) -> np.ndarray:
    edges = np.asarray(edges, dtype=np.float64)
    if edges.ndim != 1 or edges.size < 2 or np.any(np.diff(edges) <= 0) or np.isnan(edges).any():
        raise ValueError(f"{name} must be at least two increasing edges, got {edges.tolist()}")
    if finite and not np.isfinite(edges).all():
        raise ValueError(f"{name} must be finite (an open bin has no place on the plot's "
                         f"axis), got {edges.tolist()}")
    return edges


def validate(
    vertices: VertexBatch,
    truth: MCTruth,
    *,
    min_reconstructible_tracks: int = 4,
    match_nsigma: float = 5.0,
    isolation_distance: float = 10.0,
    multiplicity_bins: Sequence[float] | None = None,
    z_bins: Sequence[float] = DEFAULT_Z_BINS,
) -> ValidationReport:
    """Score reconstructed PVs against MC truth as LHCb's PV checker does.

    Parameters
    ----------
    vertices : VertexBatch
        Reconstructed PVs (host or device arrays).
    truth : MCTruth
        The sample's truth; only ``truth.vertices`` is used.
    min_reconstructible_tracks : int
        An MC PV with at least this many reconstructible tracks is reconstructible.
    match_nsigma : float
        A reconstructed PV matches the nearest reconstructible MC PV in z when
        ``|Δz| < match_nsigma · sqrt(cov_zz)``.
    isolation_distance : float
        An MC PV is isolated when no other reconstructible MC PV of its event is within
        this 3D distance [mm].
    multiplicity_bins : sequence of float, optional
        Edges in the number of reconstructible tracks of the MC PV (``[lo, hi)`` bins) for
        the efficiency and resolution curves; by default :data:`DEFAULT_MULTIPLICITY_BINS`
        from ``min_reconstructible_tracks`` on (its first edge, 4, moved there), so that every
        reconstructible PV is in a bin. The fake rate uses the same edges on the
        reconstructed (weighted) track count with the lowest edge opened to 0, because a
        weighted count can fall below the minimum number of tracks.
    z_bins : sequence of float
        Finite edges in MC z [mm] for the efficiency curve.

    Returns
    -------
    ValidationReport

    Raises
    ------
    TypeError
        If ``vertices`` is not a :class:`VertexBatch` or ``truth`` not an :class:`MCTruth`
        (given the other way round, say), or ``match_nsigma`` or ``isolation_distance`` is
        not a number.
    ValueError
        If the two inputs hold different numbers of events, a reconstructed vertex has a
        position that is not finite or a variance of x, y or z that is not positive (it
        could be neither matched nor pulled), or a setting is out of range.

    Notes
    -----
    Events are paired by position: the i-th event of ``vertices`` is scored against the
    i-th of ``truth``. Neither carries event identifiers, so the vertices of another sample
    of the same size are scored without a word; compare :func:`pvfinder.io.read_event_ids`
    of the two files first, as ``pvfinder validate`` does.
    """
    if not (isinstance(vertices, VertexBatch) and isinstance(truth, MCTruth)):
        raise TypeError(f"validate(vertices, truth) takes a VertexBatch and an MCTruth, got "
                        f"{type(vertices).__name__} and {type(truth).__name__}")
    if vertices.n_events != truth.n_events:
        raise ValueError(
            f"vertices hold {vertices.n_events} events but the MC truth holds {truth.n_events}"
        )
    if not _is_count(min_reconstructible_tracks):
        raise ValueError("min_reconstructible_tracks must be a non-negative integer, got "
                         f"{min_reconstructible_tracks!r}")
    for name, value in (("match_nsigma", match_nsigma), ("isolation_distance", isolation_distance)):
        if isinstance(value, bool) or not isinstance(value, (int, float, np.integer, np.floating)):
            raise TypeError(f"{name} must be a number, got {type(value).__name__}")
    if not match_nsigma > 0:
        raise ValueError(f"match_nsigma must be positive, got {match_nsigma}")
    if not isolation_distance >= 0:
        raise ValueError(f"isolation_distance must be >= 0, got {isolation_distance}")
    if multiplicity_bins is None:
        multiplicity_bins = (min_reconstructible_tracks, *(
            edge for edge in DEFAULT_MULTIPLICITY_BINS[1:] if edge > min_reconstructible_tracks))
    multiplicity_edges = _check_bins(multiplicity_bins, "multiplicity_bins")
    z_edges = _check_bins(z_bins, "z_bins", finite=True)

    rec = vertices.to_host()
    _check_reconstructed(rec)
    mc = truth.vertices
    n_events = rec.n_events
    mc_event_all = np.repeat(np.arange(n_events), mc.counts)
    reconstructible = np.asarray(mc.n_reconstructible) >= min_reconstructible_tracks
    mc_event = mc_event_all[reconstructible]
    mc_pos = {axis: np.asarray(getattr(mc, axis), dtype=np.float64)[reconstructible] for axis in AXES}
    mc_multiplicity = np.asarray(mc.n_reconstructible)[reconstructible]
    n_mc = mc_event.size

    rec_event = np.repeat(np.arange(n_events), rec.counts)
    rec_pos = {axis: np.asarray(getattr(rec, axis), dtype=np.float64) for axis in AXES}
    rec_sigma = {axis: np.sqrt(np.asarray(getattr(rec, f"cov_{axis}{axis}"), dtype=np.float64))
                 for axis in AXES}
    n_rec = rec_event.size

    # Each rec PV -> nearest reconstructible MC PV of its event in z, if within n σ_z.
    nearest = _nearest_in_event(mc_event, mc_pos["z"], rec_event, rec_pos["z"])
    dz = np.abs(rec_pos["z"] - mc_pos["z"][np.maximum(nearest, 0)]) if n_mc else np.full(n_rec, np.inf)
    matched = (nearest >= 0) & (dz < match_nsigma * rec_sigma["z"])
    matched_rec = np.flatnonzero(matched)
    matched_mc = nearest[matched_rec]
    n_matches = np.bincount(matched_mc, minlength=n_mc)
    found = n_matches > 0

    # Best match of each found MC PV: the smallest |Δz| among its matches.
    order = np.lexsort((dz[matched_rec], matched_mc))
    first = np.ones(order.size, dtype=bool)
    first[1:] = matched_mc[order][1:] != matched_mc[order][:-1]
    best_rec = matched_rec[order[first]]
    best_mc = matched_mc[order[first]]

    isolated = _isolated(mc_event, mc_pos["x"], mc_pos["y"], mc_pos["z"], isolation_distance)

    n_found = int(found.sum())
    n_fakes = int(n_rec - matched_rec.size)
    n_clones = int(matched_rec.size - n_found)
    counts = {
        "mc_pvs": int(mc.n_vertices),
        "reconstructible": int(n_mc),
        "isolated": int(isolated.sum()),
        "close": int((~isolated).sum()),
        "found": n_found,
        "found_isolated": int((found & isolated).sum()),
        "found_close": int((found & ~isolated).sum()),
        "rec_pvs": int(n_rec),
        "matched": int(matched_rec.size),
        "fakes": n_fakes,
        "clones": n_clones,
    }
    efficiency = _ratio(n_found, n_mc)
    efficiency_isolated = _ratio(counts["found_isolated"], counts["isolated"])
    efficiency_close = _ratio(counts["found_close"], counts["close"])
    fake_rate = _ratio(n_fakes, n_rec)
    with np.errstate(invalid="ignore", divide="ignore"):
        clone_rate = float(np.float64(n_clones) / n_found)
        clone_rate_error = float(np.sqrt(n_clones) / np.float64(n_found))

    residual_values = {axis: rec_pos[axis][best_rec] - mc_pos[axis][best_mc] for axis in AXES}
    with np.errstate(invalid="ignore", divide="ignore"):
        pull_values = {axis: residual_values[axis] / rec_sigma[axis][best_rec] for axis in AXES}
    best_bin = _bin_index(mc_multiplicity[best_mc], multiplicity_edges)
    n_bins = multiplicity_edges.size - 1

    rec_multiplicity_edges = multiplicity_edges.copy()
    rec_multiplicity_edges[0] = min(0.0, rec_multiplicity_edges[0])

    return ValidationReport(
        n_events=int(n_events),
        counts=counts,
        efficiency=efficiency[0],
        efficiency_error=efficiency[1],
        efficiency_isolated=efficiency_isolated[0],
        efficiency_isolated_error=efficiency_isolated[1],
        efficiency_close=efficiency_close[0],
        efficiency_close_error=efficiency_close[1],
        fake_rate=fake_rate[0],
        fake_rate_error=fake_rate[1],
        clone_rate=clone_rate,
        clone_rate_error=clone_rate_error,
        residuals={axis: Spread.of(residual_values[axis]) for axis in AXES},
        pulls={axis: Spread.of(pull_values[axis]) for axis in AXES},
        residuals_vs_multiplicity={
            axis: Spread.binned(residual_values[axis], best_bin, n_bins) for axis in AXES
        },
        pulls_vs_multiplicity={axis: Spread.binned(pull_values[axis], best_bin, n_bins) for axis in AXES},
        efficiency_vs_multiplicity=Curve.of(mc_multiplicity, found, multiplicity_edges),
        efficiency_vs_z=Curve.of(mc_pos["z"], found, z_edges),
        fake_rate_vs_multiplicity=Curve.of(
            np.asarray(rec.n_tracks, dtype=np.float64), ~matched, rec_multiplicity_edges
        ),
        settings={
            "min_reconstructible_tracks": int(min_reconstructible_tracks),
            "match_nsigma": float(match_nsigma),
            "isolation_distance": float(isolation_distance),
        },
        mc_multiplicity=mc_multiplicity,
        mc_z=mc_pos["z"],
        mc_isolated=isolated,
        mc_found=found,
        residual_values=residual_values,
        pull_values=pull_values,
    )


@dataclasses.dataclass(frozen=True, eq=False)
class TruthFit:
    """Every MC PV fitted from its own tracks (see :func:`truth_fit`), in the flat order of
    ``truth.vertices``; NaN for the MC PVs with too few tracks to fit.

    Attributes
    ----------
    position : numpy.ndarray, shape (n_mc, 3)
        Fitted (x, y, z) [mm].
    covariance : numpy.ndarray, shape (n_mc, 3, 3)
        Its covariance [mm²].
    residual : numpy.ndarray, shape (n_mc, 3)
        ``position`` minus the MC PV's position [mm].
    n_tracks : numpy.ndarray of int, shape (n_mc,)
        Tracks of each MC PV in the fit (all of its reconstructed tracks).
    """

    position: np.ndarray
    covariance: np.ndarray
    residual: np.ndarray
    n_tracks: np.ndarray


def truth_fit(tracks: TrackBatch, truth: MCTruth, *, min_tracks: int = 2) -> TruthFit:
    """Fit every MC PV from all of its own tracks, by least squares with weight 1.

    The MC truth says which reconstructed tracks come from which PV, so this fit has no seeds,
    shares no track with another vertex and down-weights none: it shows the resolution that
    the tracks themselves allow. The finder's resolution is worse by what seeding and the
    adaptive weights cost. Each track state and its covariance are taken to the MC PV's z,
    where the transverse χ² of the finder's fit is exactly quadratic in the vertex, so one
    linear solve per vertex gives its minimum.

    Parameters
    ----------
    tracks : TrackBatch
        The reconstructed tracks.
    truth : MCTruth
        Their truth (``truth.track_mc_pv`` labels each track's MC PV).
    min_tracks : int
        MC PVs with fewer own tracks are not fitted (NaN); at least 2, two lines fix a point.

    Returns
    -------
    TruthFit

    Raises
    ------
    ValueError
        If the truth does not describe ``tracks`` or ``min_tracks`` is not an integer of
        at least 2.
    TypeError
        When ``tracks`` is not a TrackBatch or ``truth`` not an MCTruth.
    """
    if not (isinstance(tracks, TrackBatch) and isinstance(truth, MCTruth)):
        raise TypeError(f"truth_fit(tracks, truth) takes a TrackBatch and an MCTruth, got "
                        f"{type(tracks).__name__} and {type(truth).__name__}")
    if not _is_count(min_tracks) or min_tracks < 2:  # 2.5 was taken as 3
        raise ValueError(f"min_tracks must be an integer of at least 2, got {min_tracks!r}")
    truth.check_matches(tracks)
    mc = truth.vertices
    mc_position = np.stack([np.asarray(_to_host(getattr(mc, axis)), dtype=np.float64)
                            for axis in AXES], axis=1)
    label = np.asarray(truth.track_mc_pv)
    own = label >= 0
    event = np.repeat(np.arange(tracks.n_events), tracks.counts)
    first_pv = np.asarray(_to_host(mc.offsets))[:-1]
    pv = first_pv[event[own]] + label[own]
    state = {name: np.asarray(_to_host(getattr(tracks, name)), dtype=np.float64)[own]
             for name in TRACK_FIELDS}
    dz = mc_position[pv, 2] - state["z"]
    w_x = 1.0 / (state["cov_xx"] + dz * (2.0 * state["cov_xtx"] + dz * state["cov_txtx"]))
    w_y = 1.0 / (state["cov_yy"] + dz * (2.0 * state["cov_yty"] + dz * state["cov_tyty"]))
    tx, ty = state["tx"], state["ty"]
    # A track is the line (c_x + t_x·z, c_y + t_y·z); the fit minimises
    # Σ W_x (v_x - c_x - t_x v_z)² + W_y (v_y - c_y - t_y v_z)², linear in (v_x, v_y, v_z).
    c_x, c_y = state["x"] - tx * state["z"], state["y"] - ty * state["z"]
    n_mc = mc.n_vertices

    def total(values: np.ndarray) -> np.ndarray:
        return np.bincount(pv, weights=values, minlength=n_mc)

    normal = np.zeros((n_mc, 3, 3))
    normal[:, 0, 0], normal[:, 1, 1] = total(w_x), total(w_y)
    normal[:, 0, 2] = normal[:, 2, 0] = total(-w_x * tx)
    normal[:, 1, 2] = normal[:, 2, 1] = total(-w_y * ty)
    normal[:, 2, 2] = total(w_x * tx * tx + w_y * ty * ty)
    rhs = np.stack([total(w_x * c_x), total(w_y * c_y),
                    total(-w_x * tx * c_x - w_y * ty * c_y)], axis=1)
    n_tracks = np.bincount(pv, minlength=n_mc)
    # Parallel lines fix no point: leave out a singular system, as the finder's fit does.
    diagonal = normal[:, 0, 0] * normal[:, 1, 1] * normal[:, 2, 2]
    positive = np.all(np.diagonal(normal, axis1=1, axis2=2) > 0, axis=1)
    fitted = ((n_tracks >= min_tracks) & positive
              & (np.linalg.det(normal) > _SINGULAR_DET_FRACTION * diagonal))
    position = np.full((n_mc, 3), np.nan)
    covariance = np.full((n_mc, 3, 3), np.nan)
    covariance[fitted] = np.linalg.inv(normal[fitted])
    position[fitted] = np.einsum("vij,vj->vi", covariance[fitted], rhs[fitted])
    return TruthFit(position, covariance, position - mc_position, n_tracks)

