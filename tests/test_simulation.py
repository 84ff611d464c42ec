"""The simulated sample: reproducible, and its statistics follow the conditions."""

from __future__ import annotations

import numpy as np
import pytest

from pvfinder.simulation import Conditions, simulate


@pytest.fixture(scope="module")
def big():
    return simulate(4000, seed=123)


def test_reproducible_from_seed():
    a, b, c = simulate(30, seed=9), simulate(30, seed=9), simulate(30, seed=10)
    np.testing.assert_array_equal(a.tracks.x, b.tracks.x)
    np.testing.assert_array_equal(a.truth.track_mc_pv, b.truth.track_mc_pv)
    assert a.tracks.n_tracks != c.tracks.n_tracks or not np.array_equal(a.tracks.x, c.tracks.x)


def test_pile_up_and_luminous_region(big):
    cond = big.conditions
    counts = big.truth.vertices.counts
    n = len(counts)
    assert counts.mean() == pytest.approx(cond.nu, abs=4 * np.sqrt(cond.nu / n))
    assert np.mean(counts == 0) == pytest.approx(np.exp(-cond.nu), abs=0.002)
    pvs = big.truth.vertices
    m = pvs.n_vertices
    assert np.std(pvs.x) == pytest.approx(cond.sigma_x, rel=4 / np.sqrt(2 * m))
    assert np.std(pvs.z) == pytest.approx(cond.sigma_z, rel=4 / np.sqrt(2 * m))


def test_multiplicity_ghosts_and_decays(big):
    cond = big.conditions
    stats = big.statistics()
    expected_reco = cond.mean_charged * cond.track_efficiency
    assert stats["mean_reconstructible_tracks_per_pv"] == pytest.approx(expected_reco, rel=0.03)
    assert 20 <= stats["mean_reconstructible_tracks_per_pv"] <= 30  # the spec's range
    assert stats["fraction_backward_prompt_tracks"] == pytest.approx(cond.backward_fraction, abs=0.01)
    labels = big.truth.track_mc_pv
    non_prompt = np.mean(labels < 0)
    assert cond.ghost_fraction < non_prompt < 0.2  # ghosts plus decay daughters
    # n_reconstructible counts exactly the prompt tracks labelled with each PV.
    event = np.repeat(np.arange(big.tracks.n_events), big.tracks.counts)
    prompt = labels >= 0
    global_pv = big.truth.vertices.offsets[event[prompt]] + labels[prompt]
    counted = np.bincount(global_pv, minlength=big.truth.vertices.n_vertices)
    np.testing.assert_array_equal(counted, big.truth.vertices.n_reconstructible)


def test_smearing_matches_stated_covariance(big):
    """Prompt tracks extrapolated to their MC PV: residual / propagated error is N(0, 1)."""
    tracks, truth = big.tracks, big.truth
    labels = truth.track_mc_pv
    prompt = np.flatnonzero(labels >= 0)
    event = np.repeat(np.arange(tracks.n_events), tracks.counts)[prompt]
    pv = truth.vertices.offsets[event] + labels[prompt]
    dz = truth.vertices.z[pv] - tracks.z[prompt]
    for axis, slope, cov, cov_ts, cov_tt in (
        ("x", "tx", "cov_xx", "cov_xtx", "cov_txtx"),
        ("y", "ty", "cov_yy", "cov_yty", "cov_tyty"),
    ):
        predicted = getattr(tracks, axis)[prompt] + getattr(tracks, slope)[prompt] * dz
        variance = (getattr(tracks, cov)[prompt] + 2 * dz * getattr(tracks, cov_ts)[prompt]
                    + dz**2 * getattr(tracks, cov_tt)[prompt])
        true_position = getattr(truth.vertices, axis)[pv]
        pulls = (predicted - true_position) / np.sqrt(variance)
        assert abs(pulls.mean()) < 0.01
        assert pulls.std() == pytest.approx(1.0, abs=0.01)


def test_overrides_and_invalid_conditions():
    assert simulate(200, seed=1, nu=2.0).truth.vertices.counts.mean() < 3.0
    assert simulate(10, seed=1, ghost_fraction=0.0).conditions.ghost_fraction == 0.0
    with pytest.raises(ValueError, match="unknown simulation condition"):
        simulate(10, seed=1, not_a_condition=1)
    with pytest.raises(ValueError, match="sigma_z must be positive"):
        Conditions(sigma_z=-1.0)
    with pytest.raises(ValueError, match="track_efficiency must lie in"):
        Conditions(track_efficiency=1.5)
    with pytest.raises(ValueError, match="n_events must be a non-negative integer"):
        simulate(-3)


def test_empty_sample():
    sample = simulate(0, seed=1)
    assert sample.tracks.n_events == 0 and sample.truth.vertices.n_vertices == 0
