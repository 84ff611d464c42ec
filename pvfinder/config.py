"""Every parameter of the PV-finding algorithm, with the published defaults.

The defaults are those of the LHCb beamline PV finder (Dziurda et al., Eur. Phys. J. C 85
(2025) 609, arXiv:2412.14966) as the project's specification lists them
(``shared/spec/algorithm.md``, beside the repository). Lengths in mm.
"""

from __future__ import annotations

import dataclasses
import math
import numbers
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

__all__ = ["PVFinderConfig"]


@dataclasses.dataclass(frozen=True)
class PVFinderConfig:
    """Configuration of the PV finder (immutable; validated on construction).

    Parameters
    ----------
    beamline : tuple of float
        The beamline: its transverse position ``(x, y)`` at z = 0 [mm], parallel to z, or
        ``(x, y, tx, ty)`` with its slopes ``dx/dz, dy/dz`` when it is tilted. The finder
        works in the beamline's frame: with slopes ``(tx_b, ty_b)``, every track state is
        first sheared to ``(x - tx_b·z, tx - tx_b)`` (the same in y) and the vertices found
        are sheared back.
    zmin, zmax : float
        Range of the z histogram and of usable track z [mm].
    bin_width : float
        Width of a histogram bin [mm]; ``(zmax - zmin) / bin_width`` must be an integer. The
        CUDA backend holds an event's histogram (8 bytes a bin) in the shared memory of one
        block: 6 144 bins on any GPU, up to 29 056 on an H100 or H200 (227 KiB), 2400 by
        default; more is refused there with a ``ValueError``.
    max_track_beamline_chi2 : float
        Tracks with a transverse chi2 to the beamline at or above this are not used.
    max_track_z0_err : float
        Tracks whose z resolution at the beamline is at or above this are not used [mm].
    min_tracks_in_seed : float
        A (proto-)cluster needs a histogram integral above this to give a seed.
    min_dip_density : float
        A minimum splits two clusters when both maxima exceed it by more than this [per mm].
    min_density : float
        A maximum must reach at least this density [per mm]; a proto-cluster without such a
        maximum gives no seed.
    max_vertices_per_event : int
        Room for seeds, and so for vertices, per event.
    max_chi2 : float
        Tracks with a chi2 to the vertex at or above this do not enter the fit.
    chi2_cut : float
        The chi2 at which the adaptive weight of a single isolated track is one half.
    min_weight : float
        Tracks with a weight at or below this are skipped: they neither enter the fit nor
        count towards ``min_tracks_per_vertex``.
    min_fit_iter, max_fit_iter : int
        Least and most iterations of the vertex fit.
    max_delta_z_converged : float
        The fit has converged once its z step is below this [mm].
    min_tracks_per_vertex : int
        Vertices with fewer tracks passing ``max_chi2`` (and weighing more than
        ``min_weight``) are rejected.
    max_vertex_rho2 : float
        Vertices at or beyond this squared transverse distance to the beamline are rejected [mm²].
    min_chi2_dist : float
        Two vertices with ``(z1 - z2)² / (σ²z1 + σ²z2)`` below this are duplicates.
    """

    beamline: tuple[float, ...] = (0.0, 0.0)
    zmin: float = -300.0
    zmax: float = 300.0
    bin_width: float = 0.25
    max_track_beamline_chi2: float = 10.0
    max_track_z0_err: float = 1.5
    min_tracks_in_seed: float = 2.5
    min_dip_density: float = 3.0
    min_density: float = 0.0
    max_vertices_per_event: int = 64
    max_chi2: float = 12.0
    chi2_cut: float = 4.0
    min_weight: float = 0.0
    min_fit_iter: int = 3
    max_fit_iter: int = 7
    max_delta_z_converged: float = 0.0005
    min_tracks_per_vertex: int = 4
    max_vertex_rho2: float = 0.3
    min_chi2_dist: float = 25.0

    def __post_init__(self) -> None:
        beamline = self.beamline
        if (isinstance(beamline, (str, bytes)) or not isinstance(beamline, Sequence | np.ndarray)
                or len(beamline) not in (2, 4)
                or not all(_is_finite_number(v) for v in beamline)):
            raise ValueError("beamline must be a list (x, y) or (x, y, tx, ty) of finite "
                             f"numbers, got {beamline!r}")
        object.__setattr__(self, "beamline", tuple(float(v) for v in beamline))
        for field in dataclasses.fields(self):
            value = getattr(self, field.name)
            if field.type == "int":
                if not (isinstance(value, numbers.Integral) and _is_number(value)
                        or _is_finite_number(value) and float(value).is_integer()):
                    raise ValueError(f"{field.name} must be an integer, got {value!r}")
                if not -(2**31) <= int(value) < 2**31:  # the kernels take 32-bit integers
                    raise ValueError(f"{field.name} must fit in 32 bits, got {value!r}")
                object.__setattr__(self, field.name, int(value))
            elif field.type == "float":
                if not _is_finite_number(value):
                    raise ValueError(f"{field.name} must be a finite number, got {value!r}")
                object.__setattr__(self, field.name, float(value))
        if not self.zmax > self.zmin:
            raise ValueError(f"zmax ({self.zmax}) must be greater than zmin ({self.zmin})")
        if not self.bin_width > 0:
            raise ValueError(f"bin_width must be positive, got {self.bin_width}")
        n_bins = (self.zmax - self.zmin) / self.bin_width  # infinite for a width of 1e-310
        if not 2.5 <= n_bins < 2**31 - 0.5:  # the kernels index bins with 32-bit integers
            got = round(n_bins) if math.isfinite(n_bins) else "infinitely many"
            raise ValueError(f"the histogram needs 3 to 2^31 - 1 bins, got {got} "
                             "((zmax - zmin) / bin_width)")
        if abs(n_bins - round(n_bins)) > 1e-9 * n_bins:
            raise ValueError(
                f"(zmax - zmin) / bin_width must be an integer number of bins, got {n_bins}"
            )
        for name in (
            "max_track_beamline_chi2", "max_track_z0_err", "max_chi2", "chi2_cut",
            "max_delta_z_converged", "max_vertex_rho2",
        ):
            if not getattr(self, name) > 0:
                raise ValueError(f"{name} must be positive, got {getattr(self, name)}")
        for name in ("min_tracks_in_seed", "min_dip_density", "min_density", "min_weight",
                     "min_chi2_dist"):
            if getattr(self, name) < 0:
                raise ValueError(f"{name} must not be negative, got {getattr(self, name)}")
        # A weight is at most 1 / (1 + exp(-chi2_cut/2)) (a track at χ² = 0 that no other
        # seed claims): from there on no track would enter any fit.
        largest_weight = 1.0 / (1.0 + math.exp(-0.5 * self.chi2_cut))
        if not self.min_weight < largest_weight:
            raise ValueError(f"min_weight ({self.min_weight}) must be below the largest weight "
                             f"a track can have, {largest_weight:.6g} at chi2_cut = "
                             f"{self.chi2_cut}: no track would enter a vertex")
        if self.max_vertices_per_event < 1:
            raise ValueError("max_vertices_per_event must be at least 1")
        if not 1 <= self.min_fit_iter <= self.max_fit_iter:
            raise ValueError(
                f"need 1 <= min_fit_iter <= max_fit_iter, got {self.min_fit_iter}, {self.max_fit_iter}"
            )
        if self.min_tracks_per_vertex < 2:
            raise ValueError("min_tracks_per_vertex must be at least 2 (a 3-d vertex needs two lines)")

    @property
    def n_bins(self) -> int:
        """Number of histogram bins, ``(zmax - zmin) / bin_width``."""
        return round((self.zmax - self.zmin) / self.bin_width)

    @property
    def beamline_slopes(self) -> tuple[float, float]:
        """Slopes ``(dx/dz, dy/dz)`` of the beamline; ``(0.0, 0.0)`` when it is parallel to z."""
        return (self.beamline[2], self.beamline[3]) if len(self.beamline) == 4 else (0.0, 0.0)

    @property
    def beamline_tilted(self) -> bool:
        """Whether the beamline has a slope: the finder then works in its sheared frame."""
        return self.beamline_slopes != (0.0, 0.0)

    @property
    def seed_threshold(self) -> float:
        """Bin content that opens a proto-cluster: ``bin_width / (10 · max_track_z0_err)``."""
        return self.bin_width / (10.0 * self.max_track_z0_err)

    def replace(self, **changes: Any) -> PVFinderConfig:
        """A copy with some fields changed (validated like a new config).

        Raises
        ------
        ValueError
            For a name that is no field, or a value the field refuses (see the class).
        """
        unknown = set(changes) - {f.name for f in dataclasses.fields(self)}
        if unknown:
            raise ValueError(f"unknown PVFinderConfig field(s): {', '.join(sorted(unknown))}")
        return dataclasses.replace(self, **changes)

    @classmethod
    def from_mapping(cls, mapping: Mapping[str, Any]) -> PVFinderConfig:
        """Build from a mapping such as a parsed TOML or JSON file; unknown keys are errors."""
        return cls().replace(**dict(mapping))

    def to_dict(self) -> dict[str, Any]:
        """Every parameter by name, as :meth:`from_mapping` takes them back."""
        return dataclasses.asdict(self)


def _is_number(value: Any) -> bool:
    """A real number, but not a bool (``true`` in a config file is a mistake, not 1)."""
    return isinstance(value, numbers.Real) and not isinstance(value, (bool, np.bool_))


def _is_finite_number(value: Any) -> bool:
    """A real number (not a bool) that is finite as a float: not nan, inf, or an integer too
    large for a float."""
    if not _is_number(value):
        return False
    try:
        return math.isfinite(value)
    except OverflowError:
        return False
