"""The simulated sample: reproducible, its statistics follow the conditions, pulls are N(0, 1)."""

from __future__ import annotations

import numpy as np
import pytest

from pvfinder.simulation import Conditions, SimulatedSample, TrackOrigin, simulate
from pvfinder.simulation.generator import _directions
from pvfinder.simulation.velo import measure


@pytest.fixture(scope="module")
def big() -> SimulatedSample:
    return simulate(4000, seed=123)


def _binomial_tolerance(p: float, n: int, sigmas: float = 5.0) -> float:
    return sigmas * np.sqrt(p * (1 - p) / n)


def _prompt_at_pv(sample: SimulatedSample):
    """Indices of prompt tracks and the global index of their MC PV."""
    labels = sample.truth.track_mc_pv
    prompt = np.flatnonzero(labels >= 0)
    event = np.repeat(np.arange(sample.tracks.n_events), sample.tracks.counts)[prompt]
    return prompt, sample.truth.vertices.offsets[event] + labels[prompt]


def test_reproducible_from_seed():
    a, b, c = simulate(30, seed=9), simulate(30, seed=9), simulate(30, seed=10)
    for name in ("x", "z", "tx", "cov_txtx"):
        np.testing.assert_array_equal(getattr(a.tracks, name), getattr(b.tracks, name))
    np.testing.assert_array_equal(a.truth.track_mc_pv, b.truth.track_mc_pv)
    np.testing.assert_array_equal(a.truth.vertices.z, b.truth.vertices.z)
    assert a.statistics() == b.statistics()
    assert not np.array_equal(a.tracks.counts, c.tracks.counts)
    assert not np.array_equal(a.truth.vertices.counts, c.truth.vertices.counts)


def test_pile_up_is_poisson(big):
    counts = big.truth.vertices.counts
    nu = big.conditions.nu
    assert counts.mean() == pytest.approx(nu, abs=5 * np.sqrt(nu / counts.size))
    assert counts.var() == pytest.approx(nu, rel=0.1)
    low = simulate(4000, seed=5, nu=2.0).truth.vertices.counts  # exp(−7.6) is too rare to test
    assert np.mean(low == 0) == pytest.approx(np.exp(-2.0), abs=_binomial_tolerance(np.exp(-2.0), 4000))
    assert np.mean(counts == 0) < 0.003


def test_luminous_region(big):
    cond, pvs = big.conditions, big.truth.vertices
    m = pvs.n_vertices
    for axis, sigma in (("x", cond.sigma_x), ("y", cond.sigma_y), ("z", cond.sigma_z)):
        values = getattr(pvs, axis)
        assert values.mean() == pytest.approx(0.0, abs=5 * sigma / np.sqrt(m))
        assert values.std() == pytest.approx(sigma, rel=5 / np.sqrt(2 * m))
    moved = simulate(500, seed=2, beam_x=0.5, beam_z=-20.0, sigma_x=0.05).truth.vertices
    assert moved.x.mean() == pytest.approx(0.5, abs=0.005)
    assert moved.x.std() == pytest.approx(0.05, rel=0.05)
    assert moved.z.mean() == pytest.approx(-20.0, abs=3.0)


def test_reconstructible_tracks_per_pv(big):
    cond, stats = big.conditions, big.statistics()
    reco = big.truth.vertices.n_reconstructible
    expected = cond.mean_charged * cond.track_efficiency  # acceptance losses are below 0.5 %
    assert stats["mean_reconstructible_tracks_per_pv"] == pytest.approx(expected, rel=0.02)
    assert 20 <= stats["mean_reconstructible_tracks_per_pv"] <= 30  # the spec's range
    assert np.percentile(reco, 99) > 3 * reco.mean()  # negative binomial: a long tail
    assert stats["fraction_reconstructible_pvs"] == pytest.approx(np.mean(reco >= 4))
    # n_reconstructible counts exactly the prompt tracks labelled with each PV.
    _, pv = _prompt_at_pv(big)
    np.testing.assert_array_equal(np.bincount(pv, minlength=len(reco)), reco)


def test_ghosts_decays_and_direction(big):
    cond, stats = big.conditions, big.statistics()
    n = big.tracks.n_tracks
    assert stats["ghost_fraction"] == pytest.approx(
        cond.ghost_fraction, abs=_binomial_tolerance(cond.ghost_fraction, n))
    assert 0.02 < stats["displaced_fraction"] < 0.15
    assert stats["backward_fraction"] == pytest.approx(cond.backward_fraction, abs=0.01)
    prompt = big.track_origin == TrackOrigin.PROMPT
    np.testing.assert_array_equal(big.truth.track_mc_pv >= 0, prompt)
    # A track flies backward exactly when its first measurement lies upstream of its PV.
    index, pv = _prompt_at_pv(big)
    upstream = big.tracks.z[index] < big.truth.vertices.z[pv]
    np.testing.assert_array_equal(upstream, big.track_backward[index])

    quiet = simulate(300, seed=4, ghost_fraction=0.0,
                     **{f"{s}_per_pv": 0.0 for s in ("k0s", "lambda", "charm", "beauty")})
    assert quiet.statistics()["ghost_fraction"] == 0.0
    assert quiet.statistics()["displaced_fraction"] == 0.0
    more = simulate(300, seed=4, k0s_per_pv=3.0).statistics()["displaced_fraction"]
    assert more > simulate(300, seed=4).statistics()["displaced_fraction"] + 0.03


def test_strange_decays_follow_their_pv_s_multiplicity():
    """K0S and Λ yields are measured per charged particle: a PV of few tracks made as many as
    a busy one (and most fakes were quiet PVs with their decays)."""
    sample = simulate(4000, seed=11, nu=1.0, ghost_fraction=0.0, k0s_per_pv=2.0,
                      charm_per_pv=0.0, beauty_per_pv=0.0)
    one_pv = sample.truth.vertices.counts == 1
    event = np.repeat(np.arange(len(sample)), sample.tracks.counts)
    prompt, displaced = (
        np.bincount(event[sample.track_origin == origin], minlength=len(sample))[one_pv]
        for origin in (TrackOrigin.PROMPT, TrackOrigin.DISPLACED))
    busy = prompt > np.median(prompt)
    assert displaced[busy].mean() / displaced[~busy].mean() == pytest.approx(
        prompt[busy].mean() / prompt[~busy].mean(), rel=0.15)


def test_displaced_daughters_miss_the_pv(big):
    """Daughters of long-lived decays point away from the PVs more than prompt tracks do."""
    tracks = big.tracks
    # Distance of closest approach of each line to the beam axis (the luminous region is
    # centred on it, 18 µm wide).
    t2 = tracks.tx**2 + tracks.ty**2
    dz = -(tracks.x * tracks.tx + tracks.y * tracks.ty) / t2
    doca = np.hypot(tracks.x + tracks.tx * dz, tracks.y + tracks.ty * dz)
    prompt = np.median(doca[big.track_origin == TrackOrigin.PROMPT])
    displaced = np.median(doca[big.track_origin == TrackOrigin.DISPLACED])
    assert displaced > 5 * prompt


@pytest.mark.parametrize("axis", ["x", "y"])
def test_smearing_matches_stated_covariance(big, axis):
    """Prompt tracks extrapolated to their MC PV: residual / propagated error is N(0, 1)."""
    tracks, vertices = big.tracks, big.truth.vertices
    index, pv = _prompt_at_pv(big)
    slope, cov, cov_ts, cov_tt = {"x": ("tx", "cov_xx", "cov_xtx", "cov_txtx"),
                                  "y": ("ty", "cov_yy", "cov_yty", "cov_tyty")}[axis]
    dz = vertices.z[pv] - tracks.z[index]
    predicted = getattr(tracks, axis)[index] + getattr(tracks, slope)[index] * dz
    variance = (getattr(tracks, cov)[index] + 2 * dz * getattr(tracks, cov_ts)[index]
                + dz**2 * getattr(tracks, cov_tt)[index])
    pulls = (predicted - getattr(vertices, axis)[pv]) / np.sqrt(variance)
    assert abs(pulls.mean()) < 0.01
    assert pulls.std() == pytest.approx(1.0, abs=0.01)
    # Also where the correlation matters most: short and long extrapolations apart.
    short = np.abs(dz) < np.median(np.abs(dz))
    for part in (pulls[short], pulls[~short]):
        assert part.std() == pytest.approx(1.0, abs=0.03)


@pytest.mark.parametrize("pt", [0.3, 1.0, 5.0])
def test_impact_parameter_resolution(pt):
    """σ_IP lies between 12 ⊕ 24/pT and 12 + 24/pT µm (the published figure, either reading)."""
    cond = Conditions()
    rng = np.random.default_rng(7)
    n = 50_000
    tx, ty, backward, eta = _directions(rng, cond, n)
    zero = np.zeros(n)
    states, accepted = measure(rng, cond, (zero, zero, zero), tx, ty, backward, pt * np.cosh(eta))
    residual = states["x"] - states["tx"] * states["z"]  # the line at z = 0, the origin
    rms = residual.std()
    assert 0.95 * np.hypot(0.012, 0.024 / pt) < rms < 1.05 * (0.012 + 0.024 / pt)
    assert accepted.mean() > 0.99


def test_a_track_is_fitted_with_the_hits_it_leaves_on_the_modules():
    """Every track had the covariance of hits_per_track hits, also one that left the sensors
    after three (13.6 % of the prompt tracks have five or fewer)."""
    cond = Conditions()
    rng = np.random.default_rng(9)
    n = 20_000
    tx, ty, backward, _ = _directions(rng, cond, n)
    origin = (rng.uniform(-5, 5, n), rng.uniform(-5, 5, n), rng.uniform(-300, 760, n))
    states, accepted = measure(rng, cond, origin, tx, ty, backward, np.ones(n))
    # Count by placing every hit: the modules crossed in a row from the first hit.
    direction = np.where(backward, -1.0, 1.0)
    k = np.arange(cond.hits_per_track)
    z_hits = states["z"][:, None] + direction[:, None] * cond.module_spacing * k
    run = z_hits - origin[2][:, None]
    radius = np.hypot(origin[0][:, None] + tx[:, None] * run,
                      origin[1][:, None] + ty[:, None] * run)
    low, high = cond.velo_z_range
    on = (radius < cond.velo_outer_radius) & (z_hits >= low) & (z_hits <= high)
    hits = np.cumprod(on, axis=1).sum(axis=1)[accepted]
    assert set(hits) == set(range(3, cond.hits_per_track + 1))  # every count occurs
    d = cond.module_spacing * k
    s0, s1, s2 = hits, np.cumsum(d)[hits - 1], np.cumsum(d * d)[hits - 1]
    variance = cond.hit_resolution**2 / (s0 * s2 - s1 * s1)
    np.testing.assert_allclose(states["cov_xx"][accepted], variance * s2, rtol=1e-9)
    scattering = (cond.ms_angle_term / 1.0) ** 2  # a kink before the first hit, p = 1 GeV
    np.testing.assert_allclose(states["cov_txtx"][accepted], variance * s0 + scattering,
                               rtol=1e-9)
    np.testing.assert_allclose(states["cov_xtx"][accepted],
                               -direction[accepted] * variance * s1, rtol=1e-9)


def test_accepted_tracks_have_their_first_three_hits_on_the_modules():
    # The radius was checked at the first hit only: 0.9 % of the tracks left the sensors
    # (40 mm) before their third hit and were kept.
    cond = Conditions()
    rng = np.random.default_rng(8)
    n = 100_000
    tx, ty, backward, eta = _directions(rng, cond, n)
    origin = (rng.uniform(-20, 20, n), rng.uniform(-20, 20, n), np.zeros(n))  # displaced too
    states, accepted = measure(rng, cond, origin, tx, ty, backward, 1.0 * np.cosh(eta))
    third = states["z"] + 2 * cond.module_spacing * np.where(backward, -1.0, 1.0)
    run = third - origin[2]
    radius = np.hypot(origin[0] + tx * run, origin[1] + ty * run)
    assert np.all(radius[accepted] < cond.velo_outer_radius)
    assert 0.5 < accepted.mean() < 1.0


def test_counts_consistent_with_truth(big):
    tracks, truth = big.tracks, big.truth
    truth.check_matches(tracks)
    assert truth.track_mc_pv.dtype == np.int32
    assert len(big.track_origin) == len(big.track_backward) == tracks.n_tracks
    n_pvs = np.repeat(truth.vertices.counts, tracks.counts)
    assert np.all(truth.track_mc_pv < n_pvs)
    assert tracks.counts.sum() == tracks.n_tracks
    stats = big.statistics()
    assert stats["mean_tracks_per_event"] == pytest.approx(tracks.n_tracks / tracks.n_events)
    assert stats["mean_visible_pvs"] == pytest.approx(truth.vertices.counts.mean())


def test_truth_not_encoded_in_track_order(big):
    counts = big.tracks.counts
    event = np.repeat(np.arange(len(counts)), counts)
    position = np.arange(big.tracks.n_tracks) - big.tracks.offsets[event]
    relative = (position + 0.5) / counts[event]  # uniform on (0, 1) when shuffled
    ghosts = relative[big.track_origin == TrackOrigin.GHOST]
    assert ghosts.mean() == pytest.approx(0.5, abs=5 * np.sqrt(1 / 12 / ghosts.size))
    labels = big.truth.track_mc_pv
    prompt = labels >= 0
    assert abs(np.corrcoef(relative[prompt], labels[prompt])[0, 1]) < 0.02


def test_overrides_and_conditions_object():
    high = simulate(400, seed=1, nu=11)
    assert high.conditions.nu == 11.0
    assert high.truth.vertices.counts.mean() == pytest.approx(11.0, abs=5 * np.sqrt(11 / 400))
    base = Conditions(hit_resolution=0.015)
    sample = simulate(10, seed=1, conditions=base, ghost_fraction=0.0)
    assert sample.conditions.hit_resolution == 0.015 and sample.conditions.ghost_fraction == 0.0
    assert base.replace(eta_forward=[2.0, 4.5]).eta_forward == (2.0, 4.5)  # JSON lists
    assert Conditions().backward_fraction == pytest.approx(2.0 / 5.0)
    assert Conditions().mean_charged == pytest.approx(5 * Conditions().charged_per_eta)
    names = [s.name for s in Conditions().decay_species()]
    assert names == ["k0s", "lambda", "charm", "beauty"]


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        ({"sigma_z": -1.0}, "sigma_z must be positive"),
        ({"track_efficiency": 1.5}, "track_efficiency must lie in"),
        ({"ghost_fraction": 1.0}, "ghost_fraction must lie in"),
        ({"nu": -0.1}, "nu must be non-negative"),
        ({"nu": 1e6}, "nu must be at most 100"),  # took all memory: the process was killed
        ({"hit_resolution": float("nan")}, "hit_resolution must be finite"),
        ({"mean_pt": "big"}, "mean_pt must be a number"),
        ({"hits_per_track": 2}, "hits_per_track must be at least 3"),
        ({"k0s_daughters": 1.5}, "k0s_daughters must be an integer"),
        ({"eta_forward": (5.0, 2.0)}, "eta_forward must have low < high"),
        ({"eta_backward": (0.0, 2.0)}, "eta_backward holds"),
        ({"velo_z_range": (1.0,)}, "velo_z_range must be a pair"),
        ({"min_pt": 1.0}, "min_pt must be below mean_pt"),
        ({"nu": 10**400}, "nu must be finite"),  # not an OverflowError
        # Beyond 0.9 the ghosts (g / (1 - g) per track) outgrow memory: 0.99999 asked 303 GiB.
        ({"ghost_fraction": 0.95}, "ghost_fraction must lie in \\[0, 0.9\\]"),
        # Where numpy's sampler loses the mean (0 at 1e18) or refuses (1e-300) in its words.
        ({"multiplicity_k": 1e18}, "multiplicity_k must lie in \\[1e-3, 1e12\\]"),
        ({"multiplicity_k": 1e-300}, "multiplicity_k must lie in"),
    ],
)
def test_invalid_conditions_raise(changes, message):
    with pytest.raises(ValueError, match=message):
        Conditions(**changes)
    with pytest.raises(ValueError, match=message):
        simulate(5, seed=1, **changes)


@pytest.mark.filterwarnings("error")  # numpy's overflow warnings came before the error
@pytest.mark.parametrize("changes", [
    {"hit_resolution": 1e155},  # finite and positive; σ**2 raised OverflowError
    {"ms_angle_term": 1e300},
    {"module_spacing": 1e-300},
    {"min_pt": 1e-300, "mean_pt": 1e-299},
])
def test_conditions_too_large_for_finite_tracks_are_named(changes):
    with pytest.raises(ValueError, match="the conditions make track states that are not "
                                         "finite .*changed from their defaults: "
                                         + ", ".join(sorted(changes, key=list(
                                             Conditions.__dataclass_fields__).index))):
        simulate(5, seed=1, **changes)


def test_invalid_arguments_raise():
    with pytest.raises(ValueError, match="unknown simulation condition"):
        simulate(10, seed=1, not_a_condition=1)
    with pytest.raises(ValueError, match="unknown simulation condition"):
        Conditions().replace(sigma=1.0)
    for bad in (-3, 2.5, True):
        with pytest.raises(ValueError, match="n_events must be a non-negative integer"):
            simulate(bad)
        with pytest.raises(ValueError, match="seed must be a non-negative integer or None"):
            simulate(5, seed=bad)  # numpy's SeedSequence said it in its own words
    with pytest.raises(ValueError, match="n_events=100000000000000000000: more events than"):
        simulate(10**20)  # numpy's "Maximum allowed dimension exceeded"
    # A falsy conditions= was taken for "the defaults"; it is not a Conditions at all.
    for bad in (Conditions, {}, 0, {"nu": 3}):  # the class itself, a dict, a falsy value
        with pytest.raises(TypeError, match="conditions must be a Conditions"):
            simulate(5, seed=1, conditions=bad)


def test_samples_are_told_apart_by_their_run_number():
    # Same seed, conditions and size: the same sample, so the same identifiers; anything else
    # differs, so that validate can refuse another sample's vertices.
    one = simulate(30, seed=3)
    assert one.run_number == simulate(30, seed=3).run_number
    others = [simulate(30, seed=4), simulate(30, seed=3, nu=5.0), simulate(31, seed=3),
              simulate(30)]
    assert len({one.run_number, *(sample.run_number for sample in others)}) == 5
    ids = one.event_ids
    assert ids["run_number"].dtype == np.uint32 and set(ids["run_number"]) == {one.run_number}
    assert np.array_equal(ids["event_number"], np.arange(30, dtype=np.uint64))


def test_empty_sample():
    sample = simulate(0, seed=1)
    assert sample.tracks.n_events == 0 and sample.truth.vertices.n_vertices == 0
    assert sample.statistics()["mean_tracks_per_event"] == 0.0
    nothing = simulate(20, seed=1, nu=0.0, ghost_fraction=0.1)
    assert nothing.tracks.n_tracks == 0 and nothing.truth.vertices.counts.sum() == 0


def test_forward_tracks_stay_within_the_forward_eta_range():
    # Without scattering and with exact hits, slopes are 1/sinh(η): forward η ≥ 2 gives
    # |t| ≤ 1/sinh(2) = 0.2757, backward η ≥ 1.5 allows up to 1/sinh(1.5) = 0.4696.
    s = simulate(100, seed=3, ms_angle_term=1e-9, hit_resolution=1e-6, ghost_fraction=0.0)
    slope = np.hypot(s.tracks.tx, s.tracks.ty)
    prompt = s.track_origin == TrackOrigin.PROMPT
    assert slope[prompt & ~s.track_backward].max() <= 1 / np.sinh(2.0) + 1e-3
    assert slope[prompt & s.track_backward].max() > 1 / np.sinh(2.0) + 0.05


def test_no_track_is_reconstructed_at_zero_efficiency():
    assert simulate(50, seed=1, track_efficiency=0.0).tracks.n_tracks == 0


def test_ghost_fraction_is_a_fraction_of_all_tracks():
    s = simulate(200, seed=5, ghost_fraction=0.5)
    fraction = np.mean(s.track_origin == TrackOrigin.GHOST)
    assert 0.45 < fraction < 0.55  # ghost_fraction/(1 - ghost_fraction) ghosts per real track
