"""PVFinderConfig: the spec's defaults and validation."""

from __future__ import annotations

import pytest

from pvfinder.config import PVFinderConfig


def test_defaults_are_the_published_ones():
    cfg = PVFinderConfig()
    assert cfg.n_bins == 2400
    assert cfg.seed_threshold == pytest.approx(0.25 / 15.0)
    assert (cfg.max_chi2, cfg.chi2_cut, cfg.min_chi2_dist) == (12.0, 4.0, 25.0)
    assert (cfg.min_fit_iter, cfg.max_fit_iter, cfg.max_vertices_per_event) == (3, 7, 64)


def test_replace_and_mapping():
    cfg = PVFinderConfig().replace(zmin=-200.0, zmax=200.0)
    assert cfg.n_bins == 1600
    assert PVFinderConfig.from_mapping({"chi2_cut": 9}).chi2_cut == 9.0
    with pytest.raises(ValueError, match="unknown PVFinderConfig field"):
        PVFinderConfig().replace(nonsense=1)


def test_beamline_with_and_without_slopes():
    assert PVFinderConfig().beamline_slopes == (0.0, 0.0)
    assert not PVFinderConfig().beamline_tilted
    assert not PVFinderConfig(beamline=(0.1, -0.2, 0.0, 0.0)).beamline_tilted
    tilted = PVFinderConfig.from_mapping({"beamline": [0.1, -0.2, 2e-4, -1e-4]})
    assert tilted.beamline == (0.1, -0.2, 2e-4, -1e-4)
    assert tilted.beamline_slopes == (2e-4, -1e-4) and tilted.beamline_tilted
    assert PVFinderConfig.from_mapping(tilted.to_dict()) == tilted


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        ({"zmin": 10.0, "zmax": 0.0}, "must be greater than zmin"),
        ({"bin_width": 0.7}, "integer number of bins"),
        ({"bin_width": -1.0}, "bin_width must be positive"),
        ({"max_vertices_per_event": 2.5}, "must be an integer"),
        ({"max_vertices_per_event": 0}, "at least 1"),
        ({"min_fit_iter": 8}, "min_fit_iter <= max_fit_iter"),
        ({"max_chi2": 0.0}, "max_chi2 must be positive"),
        ({"min_dip_density": -1.0}, "must not be negative"),
        ({"zmax": float("inf")}, "must be a finite number"),
        ({"beamline": (0.0, 0.0, 1.0)}, "beamline must be"),
        ({"beamline": (0.0, 0.0, float("nan"), 0.0)}, "beamline must be"),
        ({"min_tracks_per_vertex": 1}, "at least 2"),
        # Wrong types, as a JSON or TOML file or --set can give them: named, never a TypeError.
        ({"zmin": None}, "zmin must be a finite number, got None"),
        ({"zmin": [1.0]}, "zmin must be a finite number"),
        ({"chi2_cut": True}, "chi2_cut must be a finite number, got True"),
        ({"max_fit_iter": "7"}, "max_fit_iter must be an integer"),
        ({"beamline": 12}, "beamline must be a list"),
        ({"beamline": "12"}, "beamline must be a list"),  # not (1.0, 2.0)
        ({"beamline": (0.1, None)}, "beamline must be a list"),
        ({"zmin": -10**400}, "zmin must be a finite number"),  # not an OverflowError
        ({"max_fit_iter": 10**400}, "max_fit_iter must fit in 32 bits"),
        # Bins beyond the kernels' 32-bit index (6e9 of them: terabytes of histograms).
        ({"bin_width": 1e-7}, "3 to 2\\^31 - 1 bins, got 6000000000"),
        ({"bin_width": 300.0}, "3 to 2\\^31 - 1 bins, got 2"),
        ({"bin_width": 1e-310}, "3 to 2\\^31 - 1 bins, got infinitely many"),  # OverflowError
        ({"zmin": -1e308, "zmax": 1e308}, "got infinitely many"),
        # No weight reaches 1 / (1 + e^-2) = 0.881 at chi2_cut = 4: every vertex would be lost.
        ({"min_weight": 1.0}, "min_weight \\(1.0\\) must be below .* 0.880797"),
        ({"min_weight": 0.9, "chi2_cut": 2.0}, "below the largest weight a track can have, 0.731"),
    ],
)
def test_invalid_configs(changes, message):
    with pytest.raises(ValueError, match=message):
        PVFinderConfig(**changes)


def test_three_bins_is_the_smallest_histogram():
    assert PVFinderConfig(zmin=0.0, zmax=3.0, bin_width=1.0).n_bins == 3


def test_n_bins_rounds_a_ratio_just_below_an_integer():
    assert PVFinderConfig(zmin=0.0, zmax=0.3, bin_width=0.1).n_bins == 3  # 2.9999999999999996
    assert PVFinderConfig(zmin=0.0, zmax=0.3, bin_width=0.05).n_bins == 6


def test_two_tracks_per_vertex_is_allowed():
    assert PVFinderConfig(min_tracks_per_vertex=2).min_tracks_per_vertex == 2


@pytest.mark.parametrize("changes", [{"min_fit_iter": 0}, {"max_delta_z_converged": 0.0},
                                     {"max_delta_z_converged": -1e-3}])
def test_fit_iterations_and_convergence_are_positive(changes):
    with pytest.raises(ValueError, match=next(iter(changes))):
        PVFinderConfig(**changes)
