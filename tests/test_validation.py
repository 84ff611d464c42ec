"""The PV checker on hand-made cases whose answers are known."""

from __future__ import annotations

import json
import math
import sys

import numpy as np
import pytest

from pvfinder.events import TRACK_FIELDS, MCTruth, MCVertices, TrackBatch, VertexBatch
from pvfinder.validation import Spread, core_gaussian, truth_fit, validate


def make_truth(counts, z, n_reconstructible=None, x=None, y=None) -> MCTruth:
    """MC PVs at ``(x, y, z)`` (x, y default 0), 20 reconstructible tracks each by default."""
    z = np.asarray(z, dtype=np.float64)
    vertices = MCVertices.from_arrays(
        counts=counts,
        x=np.zeros_like(z) if x is None else x,
        y=np.zeros_like(z) if y is None else y,
        z=z,
        n_reconstructible=np.full(z.size, 20) if n_reconstructible is None else np.asarray(n_reconstructible),
    )
    return MCTruth(vertices, np.zeros(0, dtype=np.int64))


def make_vertices(counts, z, sigma_z=0.01, x=None, y=None, sigma_xy=0.01, n_tracks=None) -> VertexBatch:
    """Reconstructed PVs with diagonal covariance (σ_x = σ_y = ``sigma_xy``, ``sigma_z``)."""
    z = np.asarray(z, dtype=np.float64)
    zeros = np.zeros_like(z)
    return VertexBatch.from_arrays(
        counts=counts,
        x=zeros if x is None else x,
        y=zeros if y is None else y,
        z=z,
        cov_xx=zeros + np.square(sigma_xy), cov_xy=zeros, cov_yy=zeros + np.square(sigma_xy),
        cov_xz=zeros, cov_yz=zeros, cov_zz=zeros + np.square(sigma_z),
        chi2=zeros, ndof=zeros + 1.0,
        n_tracks=np.full(z.size, 20.0) if n_tracks is None else n_tracks,
    )


# Twelve PVs in six events: enough entries for a core width (see core_gaussian).
COUNTS = [2, 1, 3] * 2
MC_Z = [-40.0, 25.0, 3.0, -100.0, 0.0, 60.0] * 2


def test_perfect_reconstruction():
    truth = make_truth(COUNTS, MC_Z)
    report = validate(make_vertices(COUNTS, MC_Z), truth)
    assert report.efficiency == 1.0
    assert report.efficiency_error == 0.0
    assert report.fake_rate == 0.0
    assert report.clone_rate == 0.0
    assert report.counts["reconstructible"] == 12
    assert report.counts["found"] == 12
    assert report.counts["matched"] == 12
    for axis in "xyz":
        assert report.resolution[axis] == 0.0
        assert report.bias[axis] == 0.0
        assert report.pulls[axis].rms == 0.0


def test_inputs_the_wrong_way_round_are_named():
    truth, vertices = make_truth(COUNTS, MC_Z), make_vertices(COUNTS, MC_Z)
    with pytest.raises(TypeError, match="takes a VertexBatch and an MCTruth, got MCTruth and "
                                        "VertexBatch"):
        validate(truth, vertices)  # was: 'MCTruth' object has no attribute 'to_host'


def test_shifted_vertices_give_bias_and_pull():
    shifted = np.asarray(MC_Z) + 0.02
    report = validate(make_vertices(COUNTS, shifted, sigma_z=0.01), make_truth(COUNTS, MC_Z))
    assert report.efficiency == 1.0  # 2 σ is well inside the 5 σ window
    assert report.bias["z"] == pytest.approx(0.02, abs=1e-9)
    assert report.residuals["z"].mean == pytest.approx(0.02, abs=1e-9)
    assert report.pull_mean["z"] == pytest.approx(2.0, abs=1e-6)
    assert report.pull_mean["x"] == 0.0
    # Each axis in units of its own error: σ_x = 0.02 here, σ_z = 0.01.
    report = validate(make_vertices(COUNTS, MC_Z, x=np.full(12, 0.02), sigma_xy=0.02),
                      make_truth(COUNTS, MC_Z))
    assert report.pull_mean["x"] == pytest.approx(1.0, abs=1e-9)
    assert report.pull_mean["z"] == 0.0


def test_match_window_is_five_sigma_z():
    # 6 σ away: no match, so every MC PV is lost and every reconstructed PV is a fake.
    far = validate(make_vertices(COUNTS, np.asarray(MC_Z) + 0.06, sigma_z=0.01), make_truth(COUNTS, MC_Z))
    assert far.efficiency == 0.0
    assert far.fake_rate == 1.0
    # 4 σ away: matched.
    near = validate(make_vertices(COUNTS, np.asarray(MC_Z) + 0.04, sigma_z=0.01), make_truth(COUNTS, MC_Z))
    assert near.efficiency == 1.0
    assert near.fake_rate == 0.0
    # Exactly 5 σ (1.25 = 5 · 0.25, exact in binary): outside, as |Δz| < 5 σ_z says.
    edge = validate(make_vertices([1], [1.25], sigma_z=0.25), make_truth([1], [0.0]))
    assert edge.efficiency == 0.0 and edge.fake_rate == 1.0



def test_clone_rate_interval_is_a_poisson_one():
    # Two clones of one found MC PV: a rate of 2, which a fraction's (Wilson) interval cannot
    # hold. The Poisson score interval (k + 1/2 ∓ sqrt(k + 1/4)) / n gives [1, 4].
    report = validate(make_vertices([3], [0.0, 0.001, -0.001]), make_truth([1], [0.0]))
    assert report.counts["clones"] == 2 and report.clone_rate == 2.0
    (line,) = [line for line in report.table().splitlines() if "Clone rate" in line]
    assert "2.0000 +2.0000/-1.0000" in line

def test_duplicated_vertex_is_one_clone():
    truth = make_truth([2], [0.0, 30.0])
    # The MC PV at 0 is found twice; the exact copy is its best match.
    vertices = make_vertices([3], [0.003, 0.0, 30.0])
    report = validate(vertices, truth)
    assert report.counts["clones"] == 1
    assert report.clone_rate == pytest.approx(1 / 2)
    assert report.clone_rate_error == pytest.approx(1 / 2)
    assert report.fake_rate == 0.0
    assert report.efficiency == 1.0
    np.testing.assert_array_equal(report.residual_values["z"], [0.0, 0.0])


def test_vertex_from_nowhere_is_one_fake():
    truth = make_truth([2, 1], [0.0, 30.0, 10.0])
    vertices = make_vertices([3, 1], [0.0, 30.0, 150.0, 10.0])
    report = validate(vertices, truth)
    assert report.counts["fakes"] == 1
    assert report.fake_rate == pytest.approx(1 / 4)
    assert report.fake_rate_error == pytest.approx(math.sqrt(0.25 * 0.75 / 4))
    assert report.efficiency == 1.0


def test_non_reconstructible_pv_is_not_counted_and_its_vertex_is_fake():
    truth = make_truth([2], [0.0, 50.0], n_reconstructible=[20, 3])
    report = validate(make_vertices([2], [0.0, 50.0]), truth)
    assert report.counts["mc_pvs"] == 2
    assert report.counts["reconstructible"] == 1
    assert report.efficiency == 1.0
    assert report.counts["fakes"] == 1  # matching only considers reconstructible MC PVs
    assert report.fake_rate == pytest.approx(1 / 2)


def test_vertex_matches_nearest_mc_pv_of_its_own_event():
    # Event 1 has an MC PV at z = 10 but no vertex; event 0's vertex at 10 must not take it.
    truth = make_truth([1, 1], [0.0, 10.0])
    report = validate(make_vertices([1, 0], [10.0]), truth)
    assert report.counts["found"] == 0
    assert report.counts["fakes"] == 1


def test_isolated_and_close_split():
    # Event 0: two PVs 5 mm apart (close); event 1: a lone PV; event 2: two PVs 8 mm apart
    # in z but 7 mm apart transversely, 10.6 mm in 3D (isolated); event 3: 30 mm apart.
    truth = make_truth(
        [2, 1, 2, 2],
        [0.0, 5.0, 20.0, 0.0, 8.0, -50.0, -20.0],
        x=[0.0, 0.0, 0.0, 0.0, 7.0, 0.0, 0.0],
    )
    # One of the close pair is lost; everything else is found.
    vertices = make_vertices(
        [1, 1, 2, 2],
        [0.0, 20.0, 0.0, 8.0, -50.0, -20.0],
        x=[0.0, 0.0, 0.0, 7.0, 0.0, 0.0],
    )
    report = validate(vertices, truth)
    assert report.counts["close"] == 2
    assert report.counts["isolated"] == 5
    assert report.efficiency_close == pytest.approx(1 / 2)
    assert report.efficiency_isolated == 1.0
    assert report.efficiency == pytest.approx(6 / 7)
    np.testing.assert_array_equal(report.mc_isolated, [False, False, True, True, True, True, True])


def test_isolation_distance_is_configurable():
    truth = make_truth([2], [0.0, 5.0])
    report = validate(make_vertices([2], [0.0, 5.0]), truth, isolation_distance=4.0)
    assert report.counts["isolated"] == 2


def test_pvs_exactly_the_isolation_distance_apart_are_close():
    # Isolated means the nearest other MC PV lies more than 10 mm away.
    report = validate(make_vertices([2], [0.0, 10.0]), make_truth([2], [0.0, 10.0]))
    assert report.counts["close"] == 2 and report.counts["isolated"] == 0


@pytest.mark.parametrize("width", [0.01, 0.05])
def test_gaussian_residuals_give_core_width(width):
    rng = np.random.default_rng(7)
    n = 4000
    mc_z = rng.normal(0.0, 45.0, n)
    rec_z = mc_z + rng.normal(0.0, width, n)
    report = validate(make_vertices(np.ones(n, int), rec_z, sigma_z=width),
                      make_truth(np.ones(n, int), mc_z))
    assert report.efficiency > 0.999
    assert report.resolution["z"] == pytest.approx(width, rel=0.05)
    assert report.resolution_rms["z"] == pytest.approx(width, rel=0.05)
    assert report.pull_width["z"] == pytest.approx(1.0, rel=0.05)
    assert report.pull_rms["z"] == pytest.approx(1.0, rel=0.05)
    assert abs(report.pull_mean["z"]) < 0.05



@pytest.mark.parametrize(("field", "seed", "plain_factor"), [
    # A plain standard deviation's sqrt(1/2n) is 1.6 times short of the clipped width's.
    ("core_sigma", 11, None),
    # The clipped mean scatters 1.16 times more than a plain mean's sigma/sqrt(n), since
    # its window follows it; sqrt(1/n_core) would be 12 % short.
    ("core_mean", 12, 1.16),
])
def test_core_errors_match_their_spread_over_samples(field, seed, plain_factor):
    # 400 Gaussian samples of 2000 entries: the quoted error must be the spread of the
    # values found.
    rng = np.random.default_rng(seed)
    spreads = [Spread.of(rng.normal(0.0, 1.0, 2000)) for _ in range(400)]
    values = np.array([getattr(spread, field) for spread in spreads])
    quoted = np.mean([getattr(spread, f"{field}_error") for spread in spreads])
    # The spread of 400 values is known to ±3.5 % (one σ): allow 4 σ.
    assert np.std(values) == pytest.approx(quoted, rel=0.14)
    if plain_factor is not None:
        assert quoted == pytest.approx(plain_factor / np.sqrt(2000), rel=0.02)


def test_core_width_ignores_tails():
    rng = np.random.default_rng(3)
    values = np.concatenate([rng.normal(0.0, 1.0, 19000), rng.normal(0.0, 6.0, 1000)])
    mean, sigma, n_core = core_gaussian(values)
    assert sigma == pytest.approx(1.0, rel=0.05)
    assert abs(mean) < 0.05
    assert values.std() > 1.5
    assert 0.9 * values.size < n_core < values.size


def test_core_width_needs_ten_entries():
    # Clipping three residuals kept the two closest and reported a width of 0.0002.
    assert np.isnan(core_gaussian([0.0056, 0.0059, 0.0468])[1])
    values = np.linspace(-1.0, 1.0, 10)
    mean, sigma, n_core = core_gaussian(values)
    # All ten lie within 2σ (the first σ, 1.4826 · MAD = 0.82): the width is their standard
    # deviation over that of a unit Gaussian cut at ±2, sqrt(1 - 4 φ(2) / (2 Φ(2) - 1)).
    truncated = math.sqrt(1 - 4 * math.exp(-2) / math.sqrt(2 * math.pi) / math.erf(math.sqrt(2)))
    assert sigma == pytest.approx(np.std(values) / truncated, rel=1e-9)
    assert n_core == 10 and abs(mean) < 1e-12


@pytest.mark.parametrize("value", [0.001, 0.1, 0.0])
def test_equal_entries_have_a_core_width_of_zero(value):
    # np.std's rounding left 2.5e-19 for 0.001, and plot() then asked for 50 bins over
    # 1e-15 µm ("Too many bins for data range").
    assert core_gaussian(np.full(12, value)) == (value, 0.0, 12)
    # Also when the clipping leaves only equal entries.
    assert core_gaussian(np.r_[np.full(11, value), value + 0.5]) == (value, 0.0, 11)


def test_efficiency_vs_multiplicity_binning():
    multiplicity = [3, 4, 9, 10, 19, 20, 150, 150]
    found = [True, True, False, True, True, False, True, False]
    z = np.arange(len(multiplicity)) * 30.0 - 100.0
    truth = make_truth([len(z)], z, n_reconstructible=multiplicity)
    vertices = make_vertices([sum(found)], z[np.asarray(found)], n_tracks=[2.5, 5.0, 12.0, 30.0, 200.0])
    report = validate(vertices, truth, multiplicity_bins=(4, 10, 20, np.inf))
    curve = report.efficiency_vs_multiplicity
    np.testing.assert_array_equal(curve.total, [2, 2, 3])
    np.testing.assert_array_equal(curve.passed, [1, 2, 1])
    np.testing.assert_allclose(curve.value, [1 / 2, 1, 1 / 3])
    np.testing.assert_allclose(curve.error, [math.sqrt(0.25 / 2), 0.0, math.sqrt(2 / 9 / 3)])
    # The Wilson interval, centre (k + 1/2)/(n + 1) and half-width sqrt(k(n-k)/n + 1/4)/(n + 1),
    # stays open where the binomial error vanishes (2 of 2 found).
    half = np.array([math.sqrt(0.75) / 3, 0.5 / 3, math.sqrt(2 / 3 + 0.25) / 4])
    np.testing.assert_allclose(curve.lower, np.array([0.5, 2.5 / 3, 0.375]) - half)
    np.testing.assert_allclose(curve.upper, np.array([0.5, 2.5 / 3, 0.375]) + half)
    np.testing.assert_allclose(curve.yerr[:, 1], [1 / 3, 0.0], atol=1e-12)
    # The 3-track PV's vertex (2.5 weighted tracks) is a fake; the fake rate's lowest bin
    # opens to 0 tracks.
    fake_curve = report.fake_rate_vs_multiplicity
    np.testing.assert_array_equal(fake_curve.edges, [0, 10, 20, np.inf])
    np.testing.assert_array_equal(fake_curve.total, [2, 1, 2])
    np.testing.assert_array_equal(fake_curve.passed, [1, 0, 0])
    assert report.efficiency_where(min_multiplicity=20) == pytest.approx((1 / 3, math.sqrt(2 / 9 / 3)))


def test_efficiency_vs_z():
    truth = make_truth([3], [-150.0, -5.0, 5.0])
    report = validate(make_vertices([1], [-5.0]), truth, z_bins=(-200.0, -100.0, 0.0, 100.0))
    np.testing.assert_array_equal(report.efficiency_vs_z.total, [1, 1, 1])
    np.testing.assert_array_equal(report.efficiency_vs_z.passed, [0, 1, 0])
    # An open bin has no centre on the plot's z axis: its point was not drawn at all.
    for open_edges in ((-300.0, 0.0, np.inf), (-np.inf, 0.0)):
        with pytest.raises(ValueError, match="z_bins must be finite"):
            validate(make_vertices([1], [-5.0]), truth, z_bins=open_edges)


def test_resolution_in_bins_of_multiplicity():
    # Bin [4, 10): residuals all +10 µm; bin [10, inf): ±30 µm.
    mc_z = np.array([-60.0, -30.0, 0.0, 30.0, 60.0, 90.0])
    residual = np.array([0.01, 0.01, 0.03, -0.03, 0.03, -0.03])
    truth = make_truth([6], mc_z, n_reconstructible=[5, 5, 40, 40, 40, 40])
    report = validate(make_vertices([6], mc_z + residual, sigma_z=0.01), truth,
                      multiplicity_bins=(4, 10, np.inf))
    z = report.residuals_vs_multiplicity["z"]
    np.testing.assert_array_equal(z.n, [2, 4])
    np.testing.assert_allclose(z.mean, [0.01, 0.0], atol=1e-9)
    np.testing.assert_allclose(z.rms, [0.0, 0.03], atol=1e-9)
    np.testing.assert_allclose(report.pulls_vs_multiplicity["z"].mean, [1.0, 0.0], atol=1e-6)


def test_agrees_with_event_by_event_reference():
    """Random events against a plain per-event loop written from the rules."""
    rng = np.random.default_rng(5)
    n_events = 200
    mc_counts = rng.poisson(5, n_events)
    mc_z = rng.uniform(-30, 30, mc_counts.sum())
    mc_mult = rng.integers(0, 30, mc_counts.sum())
    rec_counts = rng.poisson(5, n_events)
    rec_z = rng.uniform(-30, 30, rec_counts.sum())
    sigma_z = rng.uniform(0.05, 2.0, rec_z.size)
    report = validate(make_vertices(rec_counts, rec_z, sigma_z=sigma_z),
                      make_truth(mc_counts, mc_z, n_reconstructible=mc_mult))

    found = clones = fakes = isolated = 0
    mc_off = np.concatenate([[0], np.cumsum(mc_counts)])
    rec_off = np.concatenate([[0], np.cumsum(rec_counts)])
    for e in range(n_events):
        zs = mc_z[mc_off[e]:mc_off[e + 1]][mc_mult[mc_off[e]:mc_off[e + 1]] >= 4]
        hits = np.zeros(zs.size, dtype=int)
        for z, s in zip(rec_z[rec_off[e]:rec_off[e + 1]], sigma_z[rec_off[e]:rec_off[e + 1]]):
            if zs.size and np.abs(zs - z).min() < 5 * s:
                hits[np.argmin(np.abs(zs - z))] += 1
            else:
                fakes += 1
        found += np.count_nonzero(hits)
        clones += np.sum(np.maximum(hits - 1, 0))
        isolated += sum(np.sum(np.abs(zs - z) <= 10.0) == 1 for z in zs)
    assert report.counts["found"] == found
    assert report.counts["clones"] == clones
    assert report.counts["fakes"] == fakes
    assert report.counts["isolated"] == isolated


def test_mismatched_event_counts():
    with pytest.raises(ValueError, match="3 events.*2"):
        validate(make_vertices([1, 0, 1], [0.0, 1.0]), make_truth([1, 1], [0.0, 1.0]))


def test_empty_input():
    report = validate(make_vertices([], []), make_truth([], []))
    assert report.n_events == 0
    assert math.isnan(report.efficiency)
    assert math.isnan(report.fake_rate)
    assert math.isnan(report.resolution["z"])
    assert report.efficiency_vs_multiplicity.total.sum() == 0
    assert "All" in report.table()
    json.loads(report.to_json())


def test_no_reconstructed_vertices():
    report = validate(make_vertices([0, 0], []), make_truth([1, 2], [0.0, 1.0, 40.0]))
    assert report.efficiency == 0.0
    assert report.counts["reconstructible"] == 3
    assert math.isnan(report.fake_rate)
    assert math.isnan(report.clone_rate)


def test_every_reconstructible_pv_is_in_a_multiplicity_bin():
    # With min_reconstructible_tracks=3 the default bins began at 4: PVs of 3 tracks counted in
    # the overall efficiency but in no bin of its curve, nor of the resolution's.
    truth = make_truth([1, 1, 1], [0.0, 0.0, 0.0], n_reconstructible=[3, 3, 12])
    report = validate(make_vertices([1, 1, 1], [0.0, 0.0, 0.0]), truth,
                      min_reconstructible_tracks=3)
    curve = report.efficiency_vs_multiplicity
    assert curve.edges[:3].tolist() == [3, 10, 20] and curve.total.sum() == 3
    assert report.residuals_vs_multiplicity["z"].n[0] == 2
    # From 15 on, the default edges below it go: (15, 20, 30, ...).
    high = validate(make_vertices([1, 1, 1], [0.0, 0.0, 0.0]), truth,
                    min_reconstructible_tracks=15).efficiency_vs_multiplicity
    assert high.edges[:2].tolist() == [15, 20] and high.total.sum() == 0
    # 3.5 cut at 4 while the table said 3; inf blamed multiplicity_bins, never passed.
    for bad in (3.5, math.inf, float("nan"), -1, True):
        with pytest.raises(ValueError, match="min_reconstructible_tracks must be a "
                                             "non-negative integer"):
            validate(make_vertices([1, 1, 1], [0.0, 0.0, 0.0]), truth,
                     min_reconstructible_tracks=bad)
    # "'>' not supported between instances of 'str' and 'int'" before.
    for name in ("match_nsigma", "isolation_distance"):
        with pytest.raises(TypeError, match=f"{name} must be a number, got str"):
            validate(make_vertices([1, 1, 1], [0.0, 0.0, 0.0]), truth, **{name: "5"})


def test_no_reconstructible_pvs():
    report = validate(make_vertices([1], [0.0]), make_truth([1], [0.0], n_reconstructible=[2]))
    assert math.isnan(report.efficiency)
    assert math.isnan(report.efficiency_isolated_20)
    assert report.fake_rate == 1.0


def test_report_outputs():
    report = validate(make_vertices(COUNTS, MC_Z), make_truth(COUNTS, MC_Z))
    data = json.loads(report.to_json())
    assert data["efficiency"] == 1.0
    assert data["counts"]["found"] == 12
    assert data["efficiency_vs_multiplicity"]["edges"][-1] is None  # inf in strict JSON
    assert data["residuals"]["z"]["core_sigma"] == 0.0
    assert str(report) == report.table()
    # Rates with their Wilson interval: 12 of 12 gives [12/13, 1].
    assert "1.0000 +0.0000/-0.0769   (12 / 12)" in report.table()


def test_plot_writes_pngs(tmp_path):
    pytest.importorskip("mplhep")
    rng = np.random.default_rng(1)
    mc_z = rng.normal(0, 45, 300)
    truth = make_truth(np.ones(300, int), mc_z, n_reconstructible=rng.integers(4, 100, 300))
    report = validate(make_vertices(np.ones(300, int), mc_z + rng.normal(0, 0.05, 300), sigma_z=0.05), truth)
    paths = report.plot(tmp_path / "plots")
    assert {p.name for p in paths} == {
        "efficiency_vs_multiplicity.png", "efficiency_vs_z.png", "fake_rate_vs_multiplicity.png",
        "residual_x.png", "residual_y.png", "residual_z.png", "pull_x.png", "pull_y.png", "pull_z.png",
    }
    for path in paths:
        assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
        assert path.stat().st_size > 10_000


def test_plot_without_mplhep_says_what_to_install(tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "mplhep", None)  # makes `import mplhep` fail
    report = validate(make_vertices(COUNTS, MC_Z), make_truth(COUNTS, MC_Z))
    with pytest.raises(ImportError, match=r"pip install pvfinder\[plot\]"):
        report.plot(tmp_path)
    assert list(tmp_path.iterdir()) == []


# 10 µm and 0.1 mrad, uncorrelated: the track errors of the hand-made truth-fit events.
ERRORS = {"cov_xx": 1e-4, "cov_yy": 1e-4, "cov_xtx": 0.0, "cov_yty": 0.0, "cov_txtx": 1e-8,
          "cov_tyty": 1e-8}


def test_truth_fit_finds_the_point_its_tracks_come_from():
    # Event 0: PV 0 at (0.1, -0.2, 5) with four exact lines, PV 1 with one track (not fitted),
    # a ghost (label -1); event 1: PV 0 at (0, 0, -30) with three exact lines.
    points = [(0.1, -0.2, 5.0), (0.0, 0.0, 40.0), (0.0, 0.0, -30.0)]
    slopes = [[(0.1, 0.05), (-0.08, 0.1), (0.02, -0.15), (-0.2, -0.03)], [(0.1, 0.1)],
              [(0.12, -0.07), (-0.05, 0.2), (0.3, 0.1)]]
    fields = {name: [] for name in TRACK_FIELDS}
    labels = [0, 0, 0, 0, 1, -1, 0, 0, 0]
    for (px, py, pz), lines in zip(points, slopes):
        for tx, ty in lines:
            z = pz + 20.0
            state = {"x": px + tx * 20.0, "y": py + ty * 20.0, "z": z, "tx": tx, "ty": ty}
            for name in TRACK_FIELDS:
                fields[name].append(state.get(name, ERRORS.get(name)))
    ghost = {"x": 1.0, "y": 1.0, "z": 0.0, "tx": 0.1, "ty": 0.1, **ERRORS}
    for name in TRACK_FIELDS:
        fields[name].insert(5, ghost[name])
    tracks = TrackBatch.from_arrays(counts=[6, 3], **{k: np.array(v) for k, v in fields.items()})
    vertices = MCVertices.from_arrays(counts=[2, 1], x=[0.1, 0.0, 0.0], y=[-0.2, 0.0, 0.0],
                                      z=[5.0, 40.0, -30.0], n_reconstructible=[4, 1, 3])
    fit = truth_fit(tracks, MCTruth(vertices, np.array(labels)))

    np.testing.assert_array_equal(fit.n_tracks, [4, 1, 3])
    np.testing.assert_allclose(fit.position[[0, 2]], np.array(points)[[0, 2]], atol=1e-9)
    np.testing.assert_allclose(fit.residual[[0, 2]], 0.0, atol=1e-9)
    assert np.all(np.isnan(fit.position[1])) and np.all(np.isnan(fit.covariance[1]))
    assert np.all(np.linalg.eigvalsh(fit.covariance[[0, 2]]) > 0)
    for refused in (1, 2.5):  # 2.5 was taken as 3
        with pytest.raises(ValueError, match=f"min_tracks must be an integer of at least 2, "
                                             f"got {refused}"):
            truth_fit(tracks, MCTruth(vertices, np.array(labels)), min_tracks=refused)


def test_truth_fit_covariance_describes_its_spread(sample):
    fit = truth_fit(sample.tracks, sample.truth)
    many = fit.n_tracks > 20
    for axis in range(3):
        pulls = fit.residual[many, axis] / np.sqrt(fit.covariance[many, axis, axis])
        mean, width, _ = core_gaussian(pulls)
        assert abs(mean) < 0.05 and 0.93 < width < 1.07


@pytest.mark.parametrize(("field", "value", "message"), [
    ("cov_zz", 0.0, "variance 'cov_zz' of reconstructed vertex 0 of event 1 is 0.0"),
    ("cov_xx", 0.0, "variance 'cov_xx' of reconstructed vertex 0 of event 1 is 0.0"),
    ("cov_zz", np.nan, "variance 'cov_zz' of reconstructed vertex 0 of event 1 is nan"),
    ("z", np.nan, "'z' of reconstructed vertex 0 of event 1 is nan"),
])
def test_vertices_without_an_uncertainty_are_refused(field, value, message):
    # A zero σ_z made a perfect vertex a fake (window 5·0), a zero σ_x dropped its pull, and
    # a NaN made it a fake: silently. The plain constructor (the finder's own) checks nothing.
    good = make_vertices(COUNTS, MC_Z)
    columns = {name: getattr(good, name).copy() for name in VertexBatch.FIELDS}
    columns[field][2] = value  # the first vertex of event 1
    bad = VertexBatch(offsets=good.offsets, **columns)
    with pytest.raises(ValueError, match=message):
        validate(bad, make_truth(COUNTS, MC_Z))


def test_isolation_of_many_pvs_in_one_event_takes_linear_memory():
    # Every pair of an event's PVs was formed at once: 8000 PVs in one event took 3 GB.
    import tracemalloc

    rng = np.random.default_rng(5)
    n = 20_000
    z = rng.uniform(-1e4, 1e4, n)  # about 20 within 10 mm of each: few true neighbours
    x, y = rng.normal(0, 5, n), rng.normal(0, 5, n)
    truth = make_truth([n], z, x=x, y=y)
    tracemalloc.start()
    try:
        report = validate(make_vertices([0], []), truth)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert peak < 100e6
    # The same answer as all pairs, by brute force on a slice of z small enough for it.
    window = np.flatnonzero(np.abs(z) < 300)
    near = np.sqrt((x[window, None] - x) ** 2 + (y[window, None] - y) ** 2
                   + (z[window, None] - z) ** 2) <= 10.0
    near[np.arange(window.size), window] = False
    np.testing.assert_array_equal(report.mc_isolated[window], ~near.any(axis=1))
    assert 0 < (~report.mc_isolated).sum() < n


def test_table_gives_the_uncertainty_of_core_widths_and_means():
    rng = np.random.default_rng(2)
    n = 400
    z = rng.uniform(-100, 100, n)
    truth = make_truth(np.ones(n, int), z)
    report = validate(make_vertices(np.ones(n, int), z + rng.normal(0, 0.01, n)), truth)
    (line,) = [line for line in report.table().splitlines() if "pull core width" in line]
    pull = report.pulls["z"]
    assert f"{pull.core_sigma:.3f}±{pull.core_sigma_error:.3f}" in line
    (line,) = [line for line in report.table().splitlines() if "core sigma [um]" in line]
    res = report.residuals["z"]
    assert f"{res.core_sigma * 1e3:.1f}±{res.core_sigma_error * 1e3:.1f}" in line
    (line,) = [line for line in report.table().splitlines() if "pull core mean" in line]
    assert f"{pull.core_mean:.3f}±{pull.core_mean_error:.3f}" in line
    (line,) = [line for line in report.table().splitlines() if "core mean [um]" in line]
    assert f"{res.core_mean * 1e3:.1f}±{res.core_mean_error * 1e3:.1f}" in line


_SLOPES = [(0.1, 0.05), (-0.08, 0.1), (0.02, -0.15)]


def _three_lines(at_dz, cov):
    """Three exact lines from (0, 0, 5), their states at z = 5 + at_dz with covariance ``cov``."""
    fields = {name: [] for name in TRACK_FIELDS}
    for tx, ty in _SLOPES:
        state = {"x": tx * at_dz, "y": ty * at_dz, "z": 5.0 + at_dz, "tx": tx, "ty": ty, **cov}
        for name in TRACK_FIELDS:
            fields[name].append(state[name])
    tracks = TrackBatch.from_arrays(counts=[3], **{k: np.array(v) for k, v in fields.items()})
    return tracks, MCTruth(make_truth([1], [5.0], [3]).vertices, np.zeros(3, np.int32))


def test_truth_fit_propagates_the_state_covariance_to_the_pv():
    # A state 20 mm downstream, moved to the PV (dz = -20): C_xx + 2·dz·C_xtx + dz²·C_txtx
    # = 1e-4 - 4e-5 + 4e-6 = 6.4e-5; the same track given at the PV with that covariance.
    # C_xtx + dz·C_txtx = 1e-6 - 2e-7 = 8e-7.
    far = {"cov_xx": 1e-4, "cov_xtx": 1e-6, "cov_txtx": 1e-8, "cov_yy": 1e-4, "cov_yty": 1e-6,
           "cov_tyty": 1e-8}
    near = {"cov_xx": 6.4e-5, "cov_xtx": 8e-7, "cov_txtx": 1e-8, "cov_yy": 6.4e-5,
            "cov_yty": 8e-7, "cov_tyty": 1e-8}
    fit_far = truth_fit(*_three_lines(20.0, far))
    fit_near = truth_fit(*_three_lines(0.0, near))
    np.testing.assert_allclose(fit_far.covariance, fit_near.covariance, rtol=1e-9, atol=1e-15)


def test_truth_fit_fits_a_pv_with_exactly_min_tracks():
    cov = {"cov_xx": 1e-4, "cov_xtx": 0.0, "cov_txtx": 1e-8, "cov_yy": 1e-4, "cov_yty": 0.0,
           "cov_tyty": 1e-8}
    fit = truth_fit(*_three_lines(20.0, cov), min_tracks=3)
    np.testing.assert_allclose(fit.position[0], [0.0, 0.0, 5.0], atol=1e-9)
    assert np.all(np.isnan(truth_fit(*_three_lines(20.0, cov), min_tracks=4).position))


def test_resolution_where_takes_the_found_pvs_of_enough_tracks():
    # 12 PVs of 20 tracks 50 µm off in z, 12 of 21 tracks 10 µm off: "more than 20 tracks"
    # (at least 21) are the second dozen alone.
    mc_z = np.arange(24) * 10.0 - 115.0
    residual = np.tile([0.01, -0.01], 12) * np.repeat([5.0, 1.0], 12)
    truth = make_truth([24], mc_z, n_reconstructible=np.repeat([20, 21], 12))
    report = validate(make_vertices([24], mc_z + residual, sigma_z=0.02), truth)
    above_20 = report.resolution_where(min_multiplicity=21)
    assert above_20["z"] == pytest.approx(core_gaussian(residual[12:])[1], rel=1e-9)
    assert above_20["z"] == pytest.approx(0.01 / 0.8796, rel=1e-3)
    assert report.resolution_where()["z"] == report.resolution["z"] > 0.02
    assert above_20["x"] == 0.0  # no residual in x
    assert math.isnan(report.resolution_where(min_multiplicity=22)["z"])  # no PV


def test_physics_goals_hold_their_bounds():
    from pvfinder.benchmark_physics import PhysicsGoal

    efficiency = PhysicsGoal("efficiency", lambda report: 0.0, at_least=0.99)
    assert (efficiency.met_by(0.99), efficiency.met_by(0.9899), efficiency.goal) == (
        True, False, ">= 0.99")
    resolution = PhysicsGoal("resolution", lambda report: 0.0, below=0.05)
    assert (resolution.met_by(0.05), resolution.met_by(0.0499), resolution.goal) == (
        False, True, "< 0.05")
    pull = PhysicsGoal("pull width", lambda report: 0.0, at_least=0.9, at_most=1.2)
    assert [pull.met_by(value) for value in (0.9, 1.2, 0.89, 1.21, math.nan)] == [
        True, True, False, False, False]
    assert pull.goal == "0.9 to 1.2"
    fakes = PhysicsGoal("fake rate", lambda report: 0.0, at_most=0.01)
    assert (fakes.met_by(0.01), fakes.met_by(0.0101), fakes.goal) == (True, False, "<= 0.01")


def test_physics_benchmark_refuses_a_configuration_of_another_type_before_simulating(
        monkeypatch):
    import pvfinder.simulation
    from pvfinder.benchmark_physics import run_physics_benchmark

    def must_not_run(*args, **kwargs):
        raise AssertionError("simulated")

    monkeypatch.setattr(pvfinder.simulation, "simulate", must_not_run)
    with pytest.raises(TypeError, match="config must be a PVFinderConfig, not dict"):
        run_physics_benchmark(config={"chi2_cut": 9.0})


def test_physics_goals_are_the_issues():
    # The CPU pipeline issue's goals, as stated: bounds inclusive ("at least", "within") or
    # strict ("better than"), which the goal's text shows.
    from pvfinder.benchmark_physics import PHYSICS_GOALS

    assert [(goal.name, goal.goal) for goal in PHYSICS_GOALS] == [
        ("efficiency, isolated MC PVs with >= 20 tracks", ">= 0.99"),
        ("efficiency, MC PVs with >= 30 tracks", ">= 0.97"),
        ("fake rate", "<= 0.01"), ("clone rate", "<= 0.005"),
        *((f"pull mean {axis}", "-0.1 to 0.1") for axis in "xyz"),
        *((f"pull width {axis}", "0.9 to 1.2") for axis in "xyz"),
        ("resolution x [mm], MC PVs with > 20 tracks", "< 0.015"),
        ("resolution y [mm], MC PVs with > 20 tracks", "< 0.015"),
        ("resolution z [mm], MC PVs with > 20 tracks", "< 0.05"),
    ]


@pytest.mark.parametrize("changes", [{}, {"chi2_cut": 9.0}])
def test_physics_benchmark_measures_each_goal_on_its_sample(changes):
    from pvfinder import find_vertices
    from pvfinder.benchmark_physics import PHYSICS_GOALS, run_physics_benchmark
    from pvfinder.config import PVFinderConfig
    from pvfinder.simulation import simulate

    config = PVFinderConfig(**changes)
    lines = []
    result = run_physics_benchmark(n_events=300, seed=4, config=config if changes else None,
                                   progress=lines.append)
    json.dumps(result, allow_nan=False)
    assert result["config"] == config.to_dict()
    assert (lines[0] == "not the specification's defaults: chi2_cut = 9.0") == bool(changes)
    sample = simulate(300, seed=4)
    report = validate(find_vertices(sample.tracks, config, backend="cpu"), sample.truth)
    values = {goal["name"]: goal["value"] for goal in result["goals"]}
    assert len(values) == len(PHYSICS_GOALS) == 13
    above_20 = report.resolution_where(min_multiplicity=21)
    assert values == {
        "efficiency, isolated MC PVs with >= 20 tracks": report.efficiency_isolated_20,
        "efficiency, MC PVs with >= 30 tracks": report.efficiency_where(min_multiplicity=30)[0],
        "fake rate": report.fake_rate, "clone rate": report.clone_rate,
        **{f"pull mean {axis}": report.pull_mean[axis] for axis in "xyz"},
        **{f"pull width {axis}": report.pull_width[axis] for axis in "xyz"},
        **{f"resolution {axis} [mm], MC PVs with > 20 tracks": above_20[axis] for axis in "xyz"},
    }
    assert result["all_met"] == all(goal["met"] for goal in result["goals"])
    assert [goal["met"] for goal in result["goals"]] == [
        goal.met_by(values[goal.name]) for goal in PHYSICS_GOALS]
    reference = truth_fit(sample.tracks, sample.truth)
    many = np.asarray(sample.truth.vertices.n_reconstructible) > 20
    assert result["truth_fit_resolution"]["z"] == core_gaussian(reference.residual[many, 2])[1]
    # Printed beside the goals too, as README says (it was in the JSON only).
    assert lines[-1] == ("resolution [mm] of the truth fit (each MC PV from all its own "
                         "tracks), MC PVs with > 20 tracks: " + ", ".join(
                             f"{axis} {result['truth_fit_resolution'][axis]:.6g}"
                             for axis in "xyz"))
    assert (result["kind"], result["sample"]) == ("physics", {"n_events": 300, "nu": 7.6,
                                                              "seed": 4})
    assert result["report"]["counts"] == report.to_dict()["counts"]


def test_arguments_of_the_wrong_kind_are_type_errors(sample):
    # truth_fit raised awkward's or Python's AttributeError; efficiency_where(isolated="no")
    # compared every flag with the text and returned (nan, nan).
    from pvfinder import find_vertices

    tracks, truth = sample.tracks.select_events(0, 20), sample.truth.select_events(
        0, 20, sample.tracks)
    with pytest.raises(TypeError, match=r"takes a TrackBatch and an MCTruth, got Array and"):
        truth_fit(tracks.to_awkward(), truth)
    with pytest.raises(TypeError, match=r"got TrackBatch and SimulatedSample"):
        truth_fit(tracks, sample)
    report = validate(find_vertices(tracks, backend="cpu"), truth)
    with pytest.raises(TypeError, match="isolated must be True, False or None"):
        report.efficiency_where(isolated="no")
