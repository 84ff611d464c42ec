"""The five Numba stage kernels (``kernels/cpu``) on hand-computable inputs."""

from __future__ import annotations

import importlib
import json
import math
import os
import pkgutil
import subprocess
import sys
import threading

import numba
import numpy as np
import pytest

from pvfinder import find_vertices
from pvfinder.events import TRACK_FIELDS, TrackBatch
from pvfinder.kernels import cpu as cpu_kernels
from pvfinder.kernels.cpu import fit_vertices as fit_module
from pvfinder.kernels.cpu.cleanup import cleanup
from pvfinder.kernels.cpu.extrapolate import extrapolate
from pvfinder.kernels.cpu.find_peaks import find_peaks
from pvfinder.kernels.cpu.fit_vertices import fit_vertices
from pvfinder.kernels.cpu.histogram import HALF_WIDTH, histogram, poly_cdf
from pvfinder.simulation import simulate

# Published defaults (algorithm.md), spelled out so each test reads on its own.
ZMIN, ZMAX, BIN_WIDTH, N_BINS = -300.0, 300.0, 0.25, 2400
MAX_BL_CHI2, MAX_Z0_ERR = 10.0, 1.5
THRESHOLD = BIN_WIDTH / (10 * MAX_Z0_ERR)
MIN_TRACKS_IN_SEED, MIN_DIP_DENSITY, MIN_DENSITY = 2.5, 3.0, 0.0
FIT_DEFAULTS = dict(max_chi2=12.0, chi2_cut=4.0, min_weight=0.0, min_iter=3, max_iter=7,
                    max_delta_z=0.0005, min_tracks=4, max_rho2=0.3)
MIN_CHI2_DIST = 25.0


# -- stage runners: allocate the outputs, call the kernel, return the outputs ---------------

def run_extrapolate(beam=(0.0, 0.0), zrange=(ZMIN, ZMAX), **track):
    """``track``: x, y, z, tx, ty and the six covariance terms (scalars or arrays)."""
    names = ("x", "y", "z", "tx", "ty", "cov_xx", "cov_yy", "cov_xtx", "cov_yty", "cov_txtx",
             "cov_tyty")
    defaults = dict(cov_xx=1e-4, cov_yy=1e-4, cov_xtx=0.0, cov_yty=0.0, cov_txtx=0.0,
                    cov_tyty=0.0)
    n = len(np.atleast_1d(track["x"]))
    inputs = [np.broadcast_to(np.asarray(track.get(k, defaults.get(k)), np.float64), (n,)).copy()
              for k in names]
    out = {k: np.full(n, np.nan) for k in ("x", "y", "z", "wx", "wy", "sigma_z")}
    out["usable"] = np.full(n, 7, np.uint8)
    extrapolate(*inputs, beam[0], beam[1], zrange[0], zrange[1], MAX_BL_CHI2, MAX_Z0_ERR,
                out["x"], out["y"], out["z"], out["wx"], out["wy"], out["sigma_z"], out["usable"])
    return out


def run_histogram(offsets, z, sigma, usable=None, n_bins=N_BINS):
    offsets = np.asarray(offsets, np.int64)
    z, sigma = np.asarray(z, np.float64), np.asarray(sigma, np.float64)
    usable = np.ones(len(z), np.uint8) if usable is None else np.asarray(usable, np.uint8)
    hist = np.full((len(offsets) - 1, n_bins), np.nan)  # the kernel must zero it
    histogram(offsets, z, sigma, usable, ZMIN, BIN_WIDTH, hist)
    return hist


def run_find_peaks(hist, max_seeds=64):
    hist = np.atleast_2d(np.asarray(hist, np.float64))
    seeds = np.full((len(hist), max_seeds), np.nan)
    n_seeds = np.full(len(hist), -1, np.int32)
    find_peaks(hist, ZMIN, BIN_WIDTH, THRESHOLD, MIN_TRACKS_IN_SEED, MIN_DIP_DENSITY,
               MIN_DENSITY, seeds, n_seeds)
    return seeds, n_seeds


def run_fit(offsets, tracks, seeds, n_seeds, beam=(0.0, 0.0), weight_offsets=None, **options):
    """``tracks``: dict of x, y, z, tx, ty, wx, wy, usable; ``seeds``: (n_events, max_seeds);
    ``weight_offsets`` as the pipeline computes them unless given."""
    params = {**FIT_DEFAULTS, **options}
    offsets = np.asarray(offsets, np.int64)
    seeds = np.atleast_2d(np.asarray(seeds, np.float64))
    n_seeds = np.asarray(n_seeds, np.int32)
    n_events, max_seeds = seeds.shape
    slots = np.minimum(n_seeds, max_seeds).astype(np.int64)
    if weight_offsets is None:
        weight_offsets = np.concatenate(([0], np.cumsum(slots * np.diff(offsets))))
    weight_offsets = np.asarray(weight_offsets, np.int64)
    out = dict(pos=np.full((n_events, max_seeds, 3), np.nan),
               cov=np.full((n_events, max_seeds, 6), np.nan),
               chi2=np.full((n_events, max_seeds), np.nan),
               ndof=np.full((n_events, max_seeds), np.nan),
               n_tracks=np.full((n_events, max_seeds), np.nan),
               valid=np.full((n_events, max_seeds), 7, np.uint8),
               weights=np.full(weight_offsets[-1], np.nan))
    fit_vertices(offsets, *(np.asarray(tracks[k], np.float64) for k in "x y z tx ty wx wy".split()),
                 np.asarray(tracks["usable"], np.uint8), seeds, n_seeds, weight_offsets,
                 beam[0], beam[1], params["max_chi2"], params["chi2_cut"], params["min_weight"],
                 params["min_iter"], params["max_iter"], params["max_delta_z"],
                 params["min_tracks"], params["max_rho2"],
                 out["pos"], out["cov"], out["chi2"], out["ndof"], out["n_tracks"], out["valid"],
                 out["weights"])
    out["weight_offsets"] = weight_offsets
    return out


def run_cleanup(pos_z, var_z, n_tracks, valid, n_seeds):
    pos_z = np.atleast_2d(np.asarray(pos_z, np.float64))
    n_events, max_seeds = pos_z.shape
    pos = np.zeros((n_events, max_seeds, 3))
    pos[:, :, 2] = pos_z
    cov = np.zeros((n_events, max_seeds, 6))
    cov[:, :, 5] = var_z
    order = np.full((n_events, max_seeds), 99, np.int32)
    n_kept = np.full(n_events, -1, np.int32)
    cleanup(pos, cov, np.atleast_2d(np.asarray(n_tracks, np.float64)),
            np.atleast_2d(np.asarray(valid, np.uint8)), np.asarray(n_seeds, np.int32),
            MIN_CHI2_DIST, order, n_kept)
    return order, n_kept


def toy_tracks(rng, vertex, n_tracks, sigma=0.02, slope=(0.05, 0.3)):
    """Straight tracks from ``vertex`` whose states at z (near the vertex) carry Gaussian
    position errors ``sigma`` (mm) in x and y, with W_x = W_y = 1/sigma²."""
    magnitude = rng.uniform(*slope, n_tracks)
    phi = rng.uniform(0.0, 2.0 * np.pi, n_tracks)
    tx, ty = magnitude * np.cos(phi), magnitude * np.sin(phi)
    z = vertex[2] + rng.normal(0.0, 1.0, n_tracks)
    x = vertex[0] + tx * (z - vertex[2]) + rng.normal(0.0, sigma, n_tracks)
    y = vertex[1] + ty * (z - vertex[2]) + rng.normal(0.0, sigma, n_tracks)
    weight = np.full(n_tracks, 1.0 / sigma**2)
    return dict(x=x, y=y, z=z, tx=tx, ty=ty, wx=weight, wy=weight.copy(),
                usable=np.ones(n_tracks, np.uint8))


def concat_tracks(*parts):
    return {k: np.concatenate([p[k] for p in parts]) for k in parts[0]}


# -- extrapolate ------------------------------------------------------------------------------

# The names of the x view and their twins in y: a case and its mirror image.
_MIRROR = {"x": "y", "tx": "ty", "cov_xx": "cov_yy", "cov_xtx": "cov_yty",
           "cov_txtx": "cov_tyty", "wx": "wy"}
_MIRROR.update({y: x for x, y in _MIRROR.items()})


@pytest.mark.parametrize("mirrored", [False, True], ids=["in x", "in y"])
def test_extrapolate_moves_track_to_the_beamline(mirrored):
    # Crosses x = 1 at z = 10 with tx = 0.1: reaches x = 0.3 (the beam) 7 mm earlier.
    track = {"x": 1.0, "y": 0.0, "z": 10.0, "tx": 0.1, "ty": 0.0, "cov_xx": 1e-4, "cov_yy": 2e-4,
             "cov_xtx": 1e-6, "cov_yty": 0.0, "cov_txtx": 1e-6, "cov_tyty": 1e-6}
    beam = (0.3, 0.0)
    name = _MIRROR.get if mirrored else lambda key, default=None: key
    if mirrored:
        track, beam = {name(k, k): v for k, v in track.items()}, beam[::-1]
    out = run_extrapolate(beam=beam, **track)
    out = {name(k, k): v for k, v in out.items()}  # read back in the x view
    assert out["z"][0] == pytest.approx(3.0, abs=1e-12)
    assert out["x"][0] == pytest.approx(0.3, abs=1e-12)
    assert out["y"][0] == pytest.approx(0.0, abs=1e-12)
    # Δz = -7: C_xx' = 1e-4 - 14e-6 + 49e-6 = 1.35e-4, C_yy' = 2e-4 + 49e-6 = 2.49e-4.
    assert out["wx"][0] == pytest.approx(1 / 1.35e-4, rel=1e-12)
    assert out["wy"][0] == pytest.approx(1 / 2.49e-4, rel=1e-12)
    assert out["sigma_z"][0] == pytest.approx(1 / math.sqrt(0.01 / 1.35e-4), rel=1e-12)
    assert out["usable"][0] == 1


@pytest.mark.parametrize(
    ("track", "z_beam", "usable"),
    [
        (dict(x=0.0, y=0.0, z=299.0, tx=0.1, ty=0.0), 299.0, 1),
        (dict(x=0.0, y=0.0, z=301.0, tx=0.1, ty=0.0), 301.0, 0),     # beyond zmax
        (dict(x=0.1, y=0.0, z=-299.0, tx=0.1, ty=0.0), -300.0, 0),   # exactly at zmin: open range
        (dict(x=0.0, y=0.0, z=300.0, tx=0.1, ty=0.0), 300.0, 0),     # exactly at zmax: the same
        # Misses the beam by 0.03 in y: χ²_bl = 0.03²/1e-4 = 9 (kept), 0.04 → 16 (cut).
        (dict(x=0.0, y=0.03, z=5.0, tx=0.1, ty=0.0), 5.0, 1),
        (dict(x=0.0, y=0.04, z=5.0, tx=0.1, ty=0.0), 5.0, 0),
        # σ_z = 1/sqrt(tx²·1e4): tx = 0.01 → 1.0 (kept), tx = 0.005 → 2.0 (cut).
        (dict(x=0.0, y=0.0, z=5.0, tx=0.01, ty=0.0), 5.0, 1),
        (dict(x=0.0, y=0.0, z=5.0, tx=0.005, ty=0.0), 5.0, 0),
    ],
)
def test_extrapolate_cuts(track, z_beam, usable):
    out = run_extrapolate(**track)
    assert out["z"][0] == pytest.approx(z_beam, abs=1e-9)
    assert out["usable"][0] == usable


def test_extrapolate_sigma_z_cut_values():
    out = run_extrapolate(x=[0.0, 0.0], y=[0.0, 0.0], z=[5.0, 5.0], tx=[0.01, 0.005],
                          ty=[0.0, 0.0])
    np.testing.assert_allclose(out["sigma_z"], [1.0, 2.0], rtol=1e-12)


def test_extrapolate_track_parallel_to_beam_is_unusable_without_nan():
    out = run_extrapolate(x=[0.01, 0.0], y=[0.02, 0.0], z=[7.0, 1.0], tx=[0.0, 3e-7],
                          ty=[0.0, 0.0])
    for name, values in out.items():
        assert not np.isnan(values).any(), name
    np.testing.assert_array_equal(out["usable"], [0, 0])
    np.testing.assert_array_equal(out["z"], [7.0, 1.0])
    assert out["wx"][0] == pytest.approx(1e4)


def test_extrapolate_track_whose_covariance_is_not_positive_is_unusable():
    # Both tracks come from the origin along y, 0.01 mm off in x, so the x weight reaches
    # only the beamline χ²: negative there (C_xx' < 0) it would pass the χ² cut.
    # Track 0: cov_xx < 0; track 1: |cov_xtx| > sqrt(cov_xx·cov_txtx), C_xx' = 1e-4 - 2e-4·10
    # + 1e-6·100 < 0 at the beamline (Δz = -10). Track 2, the same with a proper covariance.
    out = run_extrapolate(x=[0.01] * 3, y=2.0, z=10.0, tx=0.0, ty=0.2,
                          cov_xx=[-1e-4, 1e-4, 1e-4], cov_xtx=[0.0, 1e-4, 0.0],
                          cov_txtx=[0.0, 1e-6, 1e-6])
    assert out["wx"][0] < 0 and out["wx"][1] < 0
    np.testing.assert_array_equal(out["usable"], [0, 0, 1])


def test_extrapolate_empty():
    out = run_extrapolate(x=np.zeros(0), y=np.zeros(0), z=np.zeros(0), tx=np.zeros(0),
                          ty=np.zeros(0))
    assert all(len(v) == 0 for v in out.values())


# -- histogram --------------------------------------------------------------------------------

def test_poly_cdf_is_a_monotonic_unit_variance_cdf():
    u = np.linspace(-4.0, 4.0, 80001)
    f = np.array([poly_cdf(v) for v in u])
    assert np.all(np.diff(f) >= 0.0)
    assert poly_cdf(-HALF_WIDTH) == 0.0 and poly_cdf(HALF_WIDTH) == 1.0
    assert poly_cdf(0.0) == 0.5
    assert poly_cdf(-5.0) == 0.0 and poly_cdf(5.0) == 1.0
    # The density is (15/16a)(1 - (u/a)²)²; a = sqrt(7) gives it unit variance.
    mid = 0.5 * (u[1:] + u[:-1])
    assert np.sum(np.diff(f) * mid**2) == pytest.approx(1.0, abs=1e-6)
    assert (poly_cdf(1e-4) - poly_cdf(-1e-4)) / 2e-4 == pytest.approx(15 / (16 * HALF_WIDTH))


def test_histogram_one_track_sums_to_one_around_its_z():
    z0, sigma = 12.34, 0.5
    hist = run_histogram([0, 1], [z0], [sigma])[0]
    assert hist.sum() == pytest.approx(1.0, abs=1e-9)
    centres = ZMIN + (np.arange(N_BINS) + 0.5) * BIN_WIDTH
    assert np.sum(hist * centres) == pytest.approx(z0, abs=1e-3)
    # The bin holding z0 gets F(u_hi) - F(u_lo); only the window's bins are filled.
    b = int((z0 - ZMIN) // BIN_WIDTH)
    u_lo, u_hi = (ZMIN + b * BIN_WIDTH - z0) / sigma, (ZMIN + (b + 1) * BIN_WIDTH - z0) / sigma
    assert hist[b] == pytest.approx(poly_cdf(u_hi) - poly_cdf(u_lo), rel=1e-12)
    filled = np.flatnonzero(hist)
    assert centres[filled].min() > z0 - HALF_WIDTH * sigma - BIN_WIDTH
    assert centres[filled].max() < z0 + HALF_WIDTH * sigma + BIN_WIDTH


@pytest.mark.parametrize("offsets", [[0, 3, 1, 4], [0, 2, 9, 4], [0, 2, 5]])
def test_histogram_refuses_offsets_that_do_not_fit_the_tracks(offsets):
    with pytest.raises(ValueError, match=r"histogram: offsets decrease or point outside the "
                                         r"track arrays \(first seen in event 1\)"):
        run_histogram(offsets, z=np.zeros(4), sigma=np.full(4, 0.1))


def test_the_host_check_of_a_chunked_batch_names_the_event_as_the_kernels_do():
    # The pipeline makes this check for batches it hands to the stages in chunks: it must
    # raise what the histogram kernels (CPU, and CUDA in the same words) would for the whole
    # batch, whatever the offsets' type (read-only, int32, unsigned).
    from pvfinder.kernels import check_track_offsets
    from pvfinder.kernels.cpu import check_event_ranges

    rng = np.random.default_rng(5)
    for trial in range(300):
        counts = rng.integers(0, 6, size=rng.integers(1, 12))
        offsets = np.concatenate([[0], np.cumsum(counts)])
        n_tracks = int(offsets[-1])
        if trial % 3:  # two in three damaged: an offset moved anywhere, past the end too
            offsets[rng.integers(0, len(offsets))] = rng.integers(-2, n_tracks + 4)
        outcomes = []
        for check in (lambda o, n: check_event_ranges(o, n, "histogram"), check_track_offsets):
            try:
                check(offsets, n_tracks)
                outcomes.append(None)
            except ValueError as error:
                outcomes.append(str(error))
        assert outcomes[0] == outcomes[1], offsets
        assert (outcomes[0] is None) == bool(
            np.all((offsets[:-1] >= 0) & (np.diff(offsets) >= 0) & (offsets[1:] <= n_tracks)))
    read_only = np.array([0, 1, 3])
    read_only.flags.writeable = False
    for offsets in (read_only, np.array([0, 1, 3], dtype=np.int32),
                    np.array([0, 1, 3], dtype=np.uint64)):
        check_track_offsets(offsets, 3)
        with pytest.raises(ValueError, match=r"^histogram: offsets decrease or point outside "
                                             r"the track arrays \(first seen in event 1\)$"):
            check_track_offsets(offsets, 2)


def test_fit_refuses_weight_offsets_that_do_not_fit():
    tracks = toy_tracks(np.random.default_rng(5), (0.0, 0.0, 10.0), 20)
    # One weight short of the second event's one seed × 10 tracks.
    with pytest.raises(ValueError, match=r"fit_vertices: weight_offsets do not give .* "
                                         r"\(first seen in event 1\)"):
        run_fit([0, 10, 20], tracks, [[10.0], [10.0]], [1, 1], weight_offsets=[0, 10, 19])


def test_histogram_counts_tracks_and_skips_unusable_ones():
    hist = run_histogram([0, 3, 3], [-50.0, 80.0, 0.0], [0.1, 1.2, 0.3], usable=[1, 1, 0])
    assert hist[0].sum() == pytest.approx(2.0, abs=1e-9)
    assert hist[0, int((0.0 - ZMIN) // BIN_WIDTH)] == 0.0  # the unusable track
    assert not hist[1].any()  # an event without tracks is zeroed


def test_histogram_drops_what_falls_in_the_edge_bins():
    # Event 1 holds tracks at both ends; a write outside its row would land in events 0 or 2.
    sigma = 0.5
    hist = run_histogram([0, 0, 3, 3], [ZMIN + 0.1, ZMAX - 0.2, ZMIN - 5.0], [sigma] * 3)
    assert not hist[0].any() and not hist[2].any()
    row = hist[1]
    assert row[0] == 0.0 and row[-1] == 0.0
    # Kept: the part of each window beyond the first (last) bin.
    kept_low = 1.0 - poly_cdf((ZMIN + BIN_WIDTH - (ZMIN + 0.1)) / sigma)
    kept_high = poly_cdf((ZMAX - BIN_WIDTH - (ZMAX - 0.2)) / sigma)
    assert row.sum() == pytest.approx(kept_low + kept_high, abs=1e-12)
    assert row[: N_BINS // 2].sum() == pytest.approx(kept_low, abs=1e-12)


def test_histogram_keeps_a_window_that_ends_in_the_first_bin_to_fill():
    # The window [z - 2.65 σ, z + 2.65 σ] of a track at zmin + 0.2 with σ = 0.05 spans bins 0
    # and 1; bin 1 gets what lies beyond zmin + 0.25. The CDF from (15/16)(1 - s²)²:
    # F(s) = 1/2 + (15/16)(s - 2s³/3 + s⁵/5).
    s = 0.05 / (HALF_WIDTH * 0.05)
    beyond = 0.5 - 15 / 16 * (s - 2 * s**3 / 3 + s**5 / 5)
    row = run_histogram([0, 1], [ZMIN + 0.2], [0.05])[0]
    assert row[1] == pytest.approx(beyond, rel=1e-12) and row[0] == 0.0


def test_histogram_empty_batch():
    assert run_histogram([0], [], []).shape == (0, N_BINS)


# -- find_peaks -------------------------------------------------------------------------------

def gaussian_hist(centres_and_counts, sigma=0.3):
    """Bin contents of Gaussian peaks of ``count`` tracks (exact bin integrals)."""
    edges = ZMIN + np.arange(N_BINS + 1) * BIN_WIDTH
    hist = np.zeros(N_BINS)
    for centre, count in centres_and_counts:
        cdf = np.array([0.5 * (1 + math.erf((e - centre) / (sigma * math.sqrt(2)))) for e in edges])
        hist += count * np.diff(cdf)
    return hist


def hist_with(values, start=1000):
    hist = np.zeros(N_BINS)
    hist[start : start + len(values)] = values
    return hist


def test_find_peaks_two_separated_gaussians():
    seeds, n_seeds = run_find_peaks(gaussian_hist([(-10.13, 20), (12.31, 20)]))
    assert n_seeds[0] == 2
    np.testing.assert_allclose(seeds[0, :2], [-10.13, 12.31], atol=0.05)


def test_find_peaks_significant_dip_splits_and_parabola_refines():
    # Maxima 5 and 6 both exceed the minimum 3 by more than 3/mm · 0.25 mm = 0.75.
    start = 1000
    seeds, n_seeds = run_find_peaks(hist_with([1, 3, 5, 3, 4.5, 6, 3, 1], start))
    assert n_seeds[0] == 2
    # Parabola through (3, 5, 3) peaks at the bin centre; through (4.5, 6, 3):
    # shift = 0.5·(3 - 4.5)/(12 - 4.5 - 3) = -1/6 bin.
    expected = ZMIN + BIN_WIDTH * (start + np.array([2 + 0.5, 5 + 0.5 - 1 / 6]))
    np.testing.assert_allclose(seeds[0, :2], expected, rtol=0, atol=1e-12)


def test_find_peaks_shallow_dip_gives_one_seed_at_the_higher_maximum():
    # Dips of 0.4 and 0.3 < 0.75: one cluster around the maximum 5.
    start = 1000
    seeds, n_seeds = run_find_peaks(hist_with([1, 3, 5, 4.6, 4.9, 3, 1], start))
    assert n_seeds[0] == 1
    # Parabola through (3, 5, 4.6): shift = 0.5·(4.6 - 3)/(10 - 3 - 4.6) = 1/3 bin.
    assert seeds[0, 0] == pytest.approx(ZMIN + BIN_WIDTH * (start + 2.5 + 1 / 3), abs=1e-12)
    # A dip must be significant on both sides: 5 - 3 = 2 is, 3.5 - 3 = 0.5 is not.
    _, n_seeds = run_find_peaks(hist_with([1, 3, 5, 3, 3.5, 1], start))
    assert n_seeds[0] == 1


def test_find_peaks_shallow_gaussian_pair_merges():
    hist = gaussian_hist([(0.0, 20), (0.75, 20)])
    core = hist[hist > THRESHOLD]
    is_max = (core[1:-1] > core[:-2]) & (core[1:-1] >= core[2:])
    assert is_max.sum() == 2  # two maxima, but the dip between them is too shallow
    _, n_seeds = run_find_peaks(hist)
    assert n_seeds[0] == 1


def test_find_peaks_small_subcluster_is_dropped_or_merged():
    # The dip 0.2 is significant (1.2 - 0.2 > 0.75) but the right bump holds only
    # 0.1 + 1.2 + 0.3 = 1.6 tracks: only the left cluster; parabola through (3, 5, 1).
    seeds, n_seeds = run_find_peaks(hist_with([1, 3, 5, 1, 0.2, 1.2, 0.3]))
    assert n_seeds[0] == 1
    assert seeds[0, 0] == pytest.approx(ZMIN + BIN_WIDTH * (1002.5 - 1 / 6), abs=1e-12)
    # Neither side holds more than 2.5, the run (4.2) does: one cluster at its highest bin.
    seeds, n_seeds = run_find_peaks(hist_with([0.5, 1.8, 0.1, 1.2, 0.6]))
    assert n_seeds[0] == 1
    shift = 0.5 * (0.1 - 0.5) / (3.6 - 0.5 - 0.1)
    assert seeds[0, 0] == pytest.approx(ZMIN + BIN_WIDTH * (1001.5 + shift), abs=1e-12)


def test_find_peaks_shares_the_dip_bin_between_its_two_sides():
    # The dip (1.0) is significant on both sides (5 and 2 exceed it by more than 0.75). The
    # right side holds half the dip bin: 0.5 + 2.0 + 0.1 = 2.6 > 2.5 tracks, a seed; with
    # the whole dip bin on the left it would hold 2.1, and be merged.
    start = 1000
    seeds, n_seeds = run_find_peaks(hist_with([1, 3, 5, 3, 1.0, 2.0, 0.1], start))
    assert n_seeds[0] == 2
    # Parabolas through (3, 5, 3) and (1.0, 2.0, 0.1): shift = 0.5·(0.1 - 1.0)/(4 - 1.1).
    expected = ZMIN + BIN_WIDTH * (start + np.array([2.5, 5.5 - 0.45 / 2.9]))
    np.testing.assert_allclose(seeds[0, :2], expected, rtol=0, atol=1e-12)


def test_find_peaks_small_peak_gives_no_seed():
    _, n_seeds = run_find_peaks(hist_with([0.5, 1.0, 0.5]))  # integral 2 ≤ 2.5
    assert n_seeds[0] == 0
    # A gap below threshold splits a run: two runs of 2 are not one of 4.
    _, n_seeds = run_find_peaks(hist_with([0.5, 1.0, 0.5, 0.0, 0.5, 1.0, 0.5]))
    assert n_seeds[0] == 0


def test_find_peaks_counts_beyond_max_seeds():
    centres = [-100.0, -40.0, 3.0, 50.0, 120.0]
    seeds, n_seeds = run_find_peaks(gaussian_hist([(c, 10) for c in centres]), max_seeds=3)
    assert n_seeds[0] == 5
    np.testing.assert_allclose(seeds[0], centres[:3], atol=0.05)


def test_find_peaks_empty_inputs():
    seeds, n_seeds = run_find_peaks(np.zeros((2, N_BINS)))
    np.testing.assert_array_equal(n_seeds, [0, 0])
    seeds, n_seeds = run_find_peaks(np.zeros((0, N_BINS)))
    assert n_seeds.shape == (0,)


# -- fit_vertices -----------------------------------------------------------------------------

def test_fit_recovers_toy_vertices_with_matching_pulls():
    rng = np.random.default_rng(3)
    n_events, n_per_vertex = 2000, 20
    truth = np.column_stack([rng.normal(0, 0.02, n_events), rng.normal(0, 0.02, n_events),
                             rng.normal(0, 40, n_events)])
    tracks = concat_tracks(*(toy_tracks(rng, v, n_per_vertex) for v in truth))
    offsets = np.arange(n_events + 1) * n_per_vertex
    seeds = (truth[:, 2] + rng.normal(0, 0.1, n_events))[:, None]
    out = run_fit(offsets, tracks, seeds, np.ones(n_events))
    assert out["valid"].all()
    cov = out["cov"][:, 0]
    sigma = np.sqrt(cov[:, [0, 2, 5]])
    pulls = (out["pos"][:, 0] - truth) / sigma
    np.testing.assert_allclose(pulls.mean(axis=0), 0.0, atol=0.1)
    np.testing.assert_allclose(pulls.std(axis=0), 1.0, atol=0.1)
    # Resolution of order σ/sqrt(n) transverse and σ/(slope·sqrt(n)) in z.
    assert np.all(sigma[:, :2] < 0.02) and np.all(sigma[:, 2] < 0.1)


def test_fit_outputs_are_consistent_with_the_weights():
    rng = np.random.default_rng(5)
    tracks = toy_tracks(rng, (0.01, -0.01, 7.0), 25)
    out = run_fit([0, 25], tracks, [[7.2]], [1])
    w = out["weights"]
    assert out["valid"][0, 0] == 1 and np.all((w > 0) & (w < 1))
    assert out["n_tracks"][0, 0] == pytest.approx(w.sum(), rel=1e-12)
    assert out["ndof"][0, 0] == pytest.approx(2 * w.sum() - 3, rel=1e-12)
    # The covariance is the inverse of Σ w·H W Hᵀ with the returned weights.
    half_hessian = np.zeros((3, 3))
    for t in range(25):
        h = np.array([[1.0, 0.0], [0.0, 1.0], [-tracks["tx"][t], -tracks["ty"][t]]])
        half_hessian += w[t] * h @ np.diag([tracks["wx"][t], tracks["wy"][t]]) @ h.T
    c = out["cov"][0, 0]
    fitted = np.array([[c[0], c[1], c[3]], [c[1], c[2], c[4]], [c[3], c[4], c[5]]])
    np.testing.assert_allclose(fitted, np.linalg.inv(half_hessian), rtol=1e-9)
    # With a single seed D_t is the own term: w = e/(e_cut + e). The outputs come from the last
    # iteration, before its step: converge tightly so that the step does not matter.
    out = run_fit([0, 25], tracks, [[7.2]], [1], max_delta_z=1e-12, max_iter=100)
    w, pos = out["weights"], out["pos"][0, 0]
    dz = pos[2] - tracks["z"]
    chi2 = ((pos[0] - tracks["x"] - tracks["tx"] * dz) ** 2 * tracks["wx"]
            + (pos[1] - tracks["y"] - tracks["ty"] * dz) ** 2 * tracks["wy"])
    e = np.exp(-0.5 * chi2)
    np.testing.assert_allclose(w, e / (math.exp(-2.0) + e), rtol=1e-9)
    assert out["chi2"][0, 0] == pytest.approx(np.sum(w * chi2), rel=1e-9)


def test_fit_shares_tracks_between_separated_vertices():
    rng = np.random.default_rng(7)
    near = toy_tracks(rng, (0.0, 0.0, -20.0), 15)
    far = toy_tracks(rng, (0.0, 0.0, 25.0), 12)
    # Two events with different track counts exercise the weight layout.
    tracks = concat_tracks(far, near, far)
    offsets = [0, 12, 39]
    out = run_fit(offsets, tracks, [[25.1, np.nan], [-20.1, 25.1]], [1, 2])
    assert out["valid"][0, 0] == 1 and out["valid"][1].all()
    np.testing.assert_array_equal(out["weight_offsets"], [0, 12, 12 + 2 * 27])
    event1 = out["weights"][12:].reshape(2, 27)
    own = np.r_[np.zeros(15, int), np.ones(12, int)]
    np.testing.assert_array_equal(event1[1 - own, np.arange(27)], 0.0)
    assert np.all(event1[own, np.arange(27)] > 0.5)
    np.testing.assert_allclose(out["pos"][1, :, 2], [-20.0, 25.0], atol=0.1)
    np.testing.assert_allclose(out["pos"][0, 0], out["pos"][1, 1], atol=1e-12)


def test_fit_seeds_in_any_order():
    """find_peaks hands over seeds in increasing z, which the CPU fit exploits to stop its scan
    over the seeds early; seeds in another order must give the same vertices, only slower."""
    rng = np.random.default_rng(17)
    vertices = [(0.0, 0.0, -20.0), (0.0, 0.0, 4.0), (0.0, 0.0, 6.5), (0.0, 0.0, 25.0)]
    tracks = concat_tracks(*(toy_tracks(rng, v, 14) for v in vertices))
    n_tracks = len(tracks["x"])
    seeds = np.array([-20.1, 4.05, 6.45, 25.1])
    order = np.array([2, 0, 3, 1])
    increasing = run_fit([0, n_tracks], tracks, [seeds], [4])
    shuffled = run_fit([0, n_tracks], tracks, [seeds[order]], [4])
    assert increasing["valid"].all() and shuffled["valid"].all()
    for name in ("pos", "cov", "chi2", "n_tracks"):
        np.testing.assert_allclose(shuffled[name][0], increasing[name][0][order], rtol=1e-12,
                                   atol=1e-15, err_msg=name)
    np.testing.assert_allclose(shuffled["weights"].reshape(4, n_tracks),
                               increasing["weights"].reshape(4, n_tracks)[order], rtol=1e-12,
                               atol=1e-15)


def test_fit_rejects_too_few_tracks():
    rng = np.random.default_rng(9)
    tracks = toy_tracks(rng, (0.0, 0.0, 3.0), 3)
    out = run_fit([0, 3], tracks, [[3.0]], [1])
    assert out["valid"][0, 0] == 0
    np.testing.assert_array_equal(out["weights"], 0.0)
    out = run_fit([0, 3], tracks, [[3.0]], [1], min_tracks=3)
    assert out["valid"][0, 0] == 1


def test_fit_rejects_vertex_far_from_beamline():
    # Large errors let the tracks pull the vertex from the beamline out to ρ = 0.8 mm.
    rng = np.random.default_rng(11)
    tracks = toy_tracks(rng, (0.8, 0.0, 0.0), 40, sigma=0.35)
    out = run_fit([0, 40], tracks, [[0.0]], [1])
    assert (out["pos"][0, 0, 0] - 0.8) ** 2 < 0.04
    assert out["valid"][0, 0] == 0
    np.testing.assert_array_equal(out["weights"], 0.0)
    assert run_fit([0, 40], tracks, [[0.0]], [1], max_rho2=1.0)["valid"][0, 0] == 1
    # ρ is measured from the beamline: the same tracks around a beam there, in x or in y.
    assert run_fit([0, 40], tracks, [[0.0]], [1], beam=(0.8, 0.0))["valid"][0, 0] == 1
    swapped = {**tracks, "x": tracks["y"], "y": tracks["x"], "tx": tracks["ty"],
               "ty": tracks["tx"]}
    assert run_fit([0, 40], swapped, [[0.0]], [1])["valid"][0, 0] == 0
    assert run_fit([0, 40], swapped, [[0.0]], [1], beam=(0.0, 0.8))["valid"][0, 0] == 1


def test_fit_singular_when_all_slopes_equal():
    rng = np.random.default_rng(13)
    tracks = toy_tracks(rng, (0.0, 0.0, 0.0), 10)
    tracks["tx"][:], tracks["ty"][:] = 0.1, 0.2
    out = run_fit([0, 10], tracks, [[0.0]], [1])
    assert out["valid"][0, 0] == 0
    assert np.isfinite(out["pos"][0, 0]).all()
    np.testing.assert_array_equal(out["cov"][0, 0], 0.0)
    np.testing.assert_array_equal(out["weights"], 0.0)


def test_fit_ignores_unusable_tracks():
    rng = np.random.default_rng(15)
    tracks = toy_tracks(rng, (0.0, 0.0, 0.0), 10)
    tracks["usable"][:7] = 0
    out = run_fit([0, 10], tracks, [[0.0]], [1])
    assert out["valid"][0, 0] == 0  # 3 usable tracks < 4
    np.testing.assert_array_equal(out["weights"], 0.0)


def test_fit_empty_inputs():
    none = {k: np.zeros(0) for k in "x y z tx ty wx wy".split()}
    none["usable"] = np.zeros(0, np.uint8)
    out = run_fit([0], none, np.zeros((0, 4)), np.zeros(0))
    assert out["pos"].shape == (0, 4, 3)
    # Events without tracks: no seed leaves the slots untouched; a seed gives an invalid one.
    out = run_fit([0, 0, 0], none, [[1.0], [2.0]], [0, 1])
    assert np.isnan(out["pos"][0]).all()
    assert out["valid"][1, 0] == 0 and out["n_tracks"][1, 0] == 0.0


def lines_through_origin():
    """Four tracks whose states lie at (0, 0, 0): χ² = 0 exactly at the seed z = 0."""
    zero = np.zeros(4)
    return {"x": zero, "y": zero, "z": zero, "tx": np.array([0.1, -0.1, 0.0, 0.0]),
            "ty": np.array([0.0, 0.0, 0.1, -0.1]), "wx": np.full(4, 1e4), "wy": np.full(4, 1e4),
            "usable": np.ones(4, np.uint8)}


def with_offset_track(x0):
    """:func:`lines_through_origin` and a fifth track ``x0`` off the origin in x."""
    extra = {"x": x0, "y": 0.0, "z": 0.0, "tx": 0.05, "ty": 0.0, "wx": 1e4, "wy": 1e4,
             "usable": 1}
    return {k: np.append(v, extra[k]).astype(v.dtype) for k, v in lines_through_origin().items()}


def test_a_weight_equal_to_min_weight_is_skipped():
    # One seed, χ² = 0: w = 1 / (exp(-chi2_cut/2) + 1), the largest a weight can be.
    w = 1.0 / (math.exp(-2.0) + 1.0)
    below = run_fit([0, 4], lines_through_origin(), [[0.0]], [1], min_weight=np.nextafter(w, 0))
    assert below["valid"][0, 0] == 1
    np.testing.assert_allclose(below["weights"], w, rtol=1e-15)
    at = run_fit([0, 4], lines_through_origin(), [[0.0]], [1], min_weight=w)
    assert at["valid"][0, 0] == 0  # w > min_weight fails for every track


def test_a_fit_matrix_with_a_negative_diagonal_is_singular():
    """A direct call may pass a weight W_x < 0. Once only such a track keeps a weight, the
    half-Hessian's a_xx < 0 and it is singular, but the determinant bound, which holds for
    positive diagonals only, let its rounding residue through: a vertex with cov_zz ≈ 2e14,
    whose sign and size depended on how the compiler fused the multiply-adds."""
    angle = np.arange(7) * 2.0 * np.pi / 7.0
    tx, ty = np.r_[0.0, 0.1 * np.cos(angle)], np.r_[0.2, 0.1 * np.sin(angle)]
    tracks = {"x": 10.0 * tx + np.r_[0.4, np.zeros(7)], "y": 10.0 * ty, "z": np.full(8, 10.0),
              "tx": tx, "ty": ty, "wx": np.r_[-1e4, np.full(7, 1e4)], "wy": np.full(8, 1e4),
              "usable": np.ones(8, np.uint8)}
    out = run_fit([0, 8], tracks, [[0.0]], [1])
    assert out["valid"][0, 0] == 0
    np.testing.assert_array_equal(out["cov"][0, 0], 0.0)


def test_a_track_at_exactly_max_chi2_does_not_enter():
    tracks = with_offset_track(0.03)
    chi2 = (0.0 - 0.03) ** 2 * 1e4  # the fifth track's χ² at the seed (0, 0, 0): 9
    at = run_fit([0, 5], tracks, [[0.0]], [1], max_chi2=chi2)
    assert at["weights"][4] == 0.0
    np.testing.assert_array_equal(at["pos"][0, 0], 0.0)  # the four exact lines alone
    above = run_fit([0, 5], tracks, [[0.0]], [1], max_chi2=np.nextafter(chi2, np.inf))
    assert above["weights"][4] > 0.0


def test_a_vertex_at_exactly_max_rho2_is_rejected():
    # The bound is read from the fit's own position: only so is it met exactly.
    tracks = with_offset_track(0.03)
    x, y = run_fit([0, 5], tracks, [[0.0]], [1], max_rho2=1.0)["pos"][0, 0, :2]
    rho2 = x * x + y * y
    assert rho2 > 0
    assert run_fit([0, 5], tracks, [[0.0]], [1], max_rho2=rho2)["valid"][0, 0] == 0
    assert run_fit([0, 5], tracks, [[0.0]], [1],
                   max_rho2=np.nextafter(rho2, np.inf))["valid"][0, 0] == 1


# -- cleanup ----------------------------------------------------------------------------------

def test_cleanup_keeps_the_larger_of_two_close_vertices():
    # (0.05)²/(0.01 + 0.01) = 0.125 < 25: duplicates; slot 1 has more tracks.
    order, n_kept = run_cleanup([[0.0, 0.05]], [[0.01, 0.01]], [[10.0, 12.0]], [[1, 1]], [2])
    assert n_kept[0] == 1 and order[0, 0] == 1
    # Equal track counts: the lower slot wins.
    order, n_kept = run_cleanup([[0.0, 0.05]], [[0.01, 0.01]], [[10.0, 10.0]], [[1, 1]], [2])
    assert n_kept[0] == 1 and order[0, 0] == 0
    # Both variances count: 1²/(0.001 + 0.05) = 19.6 < 25 (either one doubled: 500 or 10).
    for var_z, n_tracks, kept in (([0.001, 0.05], [5.0, 10.0], 1), ([0.05, 0.001], [10.0, 5.0], 0)):
        order, n_kept = run_cleanup([[0.0, 1.0]], [var_z], [n_tracks], [[1, 1]], [2])
        assert n_kept[0] == 1 and order[0, 0] == kept


def test_cleanup_keeps_separated_vertices_sorted_by_z():
    # (1.2)²/(0.03 + 0.03) = 24 < 25 is a duplicate; (1.3)²/0.06 = 28.2 is not.
    order, n_kept = run_cleanup([[10.0, 0.0, 1.2, -5.0, 1.3]], 0.03,
                                [[5.0, 9.0, 4.0, 6.0, 3.0]], [[1, 1, 1, 0, 1]], [5])
    assert n_kept[0] == 3
    np.testing.assert_array_equal(order[0, :3], [1, 4, 0])
    np.testing.assert_array_equal(order[0, 3:], -1)


def test_cleanup_only_looks_at_fitted_slots():
    order, n_kept = run_cleanup([[3.0, -1.0, 0.0]], 0.01, [[5.0, 5.0, 5.0]], [[1, 1, 1]], [2])
    assert n_kept[0] == 2
    np.testing.assert_array_equal(order[0], [1, 0, -1])


def test_cleanup_empty_inputs():
    order, n_kept = run_cleanup(np.zeros((0, 4)), 0.01, np.zeros((0, 4)), np.zeros((0, 4)),
                                np.zeros(0))
    assert n_kept.shape == (0,)
    order, n_kept = run_cleanup(np.zeros((2, 4)), 0.01, np.zeros((2, 4)), np.zeros((2, 4)),
                                [0, 4])
    np.testing.assert_array_equal(n_kept, [0, 0])
    np.testing.assert_array_equal(order, -1)


def test_compact_copies_kept_slots_in_order_with_their_weights():
    from pvfinder.kernels.cpu.cleanup import compact

    # Event 0: 2 tracks, 3 fitted slots, keeps slots 2 then 0; event 1: 1 track, keeps none.
    track_offsets = np.array([0, 2, 3], np.int64)
    weight_offsets = np.array([0, 6, 6], np.int64)
    order = np.array([[2, 0, -1], [-1, -1, -1]], np.int32)
    n_kept = np.array([2, 0], np.int32)
    pos = np.arange(18, dtype=np.float64).reshape(2, 3, 3)
    cov = np.arange(36, dtype=np.float64).reshape(2, 3, 6) + 100
    chi2, ndof, n_tracks = (np.arange(6, dtype=np.float64).reshape(2, 3) + k for k in (10, 20, 30))
    weights = np.array([0.1, 0.2, 0.3, 0.4, 0.5, 0.6])
    out_vertices, out_weight_offsets, out_weights = np.zeros((12, 2)), np.zeros(3, np.int64), np.zeros(4)
    compact(track_offsets, weight_offsets, order, n_kept, np.array([0, 2, 2], np.int64),
            np.array([0, 4, 4], np.int64), pos, cov, chi2, ndof, n_tracks, weights,
            out_vertices, out_weight_offsets, out_weights)
    np.testing.assert_array_equal(out_vertices[:3].T, [pos[0, 2], pos[0, 0]])
    np.testing.assert_array_equal(out_vertices[3:9].T, [cov[0, 2], cov[0, 0]])
    np.testing.assert_array_equal(out_vertices[9:].T, [[12, 22, 32], [10, 20, 30]])
    np.testing.assert_array_equal(out_weight_offsets, [0, 2, 4])
    np.testing.assert_array_equal(out_weights, [0.5, 0.6, 0.1, 0.2])


def test_fit_seed_range_holds_every_seed_in_a_tracks_window():
    """The fit scans a track's seeds only within z ± extent; every seed that the window test
    ``|t|·|Δz| ≤ window`` keeps must lie in that range, also at its edges."""
    rng = np.random.default_rng(23)
    n = 20_000
    x, y = rng.normal(0, 0.05, n), rng.normal(0, 0.05, n)
    z = rng.uniform(-300, 300, n)
    tx, ty = rng.normal(0, 0.2, n) * rng.choice([1e-6, 1.0], n), rng.normal(0, 0.2, n)
    wx, wy = 10 ** rng.uniform(0, 6, n), 10 ** rng.uniform(0, 6, n)
    scratch = np.zeros((fit_module._N_SCRATCH, n))
    fit_module._track_bounds(x, y, tx, ty, wx, wy, 0.0, 0.0, 12.0,
                             fit_module.negligible_chi2(4.0, 64), scratch)
    slope, window = scratch[fit_module._SLOPE], scratch[fit_module._WINDOW]
    extent = scratch[fit_module._EXTENT]
    # Seeds exactly at, and one float either side of, the window's edge in z.
    edge = z + np.where(slope > 0, window / np.maximum(slope, 1e-300), 0.0)
    for seed in (np.nextafter(edge, -np.inf), edge, np.nextafter(edge, np.inf)):
        kept = ~(slope * np.abs(z - seed) > window)
        in_range = (seed >= z - extent) & (seed <= z + extent)
        assert kept.any() and np.all(in_range[kept])


@pytest.mark.parametrize("n_candidates", [1, 7, 8, 9, 17])
def test_fit_lanes_add_the_passing_tracks_only(n_candidates):
    """The fit's vectorised sums over a seed's candidates (gathered into lanes padded to a
    multiple of the SIMD width) equal plain sums over the tracks that pass; a failing track,
    here one far away with an infinite weight, adds nothing."""
    rng = np.random.default_rng(n_candidates)
    n = n_candidates
    x, y, z = rng.normal(0, 0.02, n), rng.normal(0, 0.02, n), rng.normal(0, 0.3, n)
    tx, ty = rng.normal(0, 0.2, n), rng.normal(0, 0.2, n)
    wx, wy = rng.uniform(1e3, 1e4, n), rng.uniform(1e3, 1e4, n)
    x[0], wx[0] = 5.0, np.inf
    others = rng.uniform(0, 0.5, n)
    lanes = np.full((fit_module._N_LANES, fit_module._padded(n) + 8), 7.0)  # 7: not to be read
    n_columns = fit_module._gather(x, y, z, tx, ty, wx, wy, np.arange(n), others, n, lanes)
    assert n_columns % 8 == 0 and n <= n_columns < n + 8
    vx, vy, vz, exp_cut = 0.01, -0.01, 0.05, math.exp(-2.0)
    got = fit_module._accumulate(lanes, n_columns, vx, vy, vz, 12.0, exp_cut, 0.0)

    with np.errstate(invalid="ignore"):
        rx, ry = vx - (x + tx * (vz - z)), vy - (y + ty * (vz - z))
        chi2 = rx * rx * wx + ry * ry * wy
        term = np.exp(-0.5 * chi2)
        w = term / (exp_cut + term + others)
    ok = (chi2 < 12.0) & (w > 0.0)
    w, wx, wy, tx, ty, rx, ry, chi2 = (a[ok] for a in (w, wx, wy, tx, ty, rx, ry, chi2))
    want = (ok.sum(), w.sum(), (w * chi2).sum(), (w * wx).sum(), (w * wy).sum(),
            -(w * wx * tx).sum(), -(w * wy * ty).sum(), (w * (wx * tx**2 + wy * ty**2)).sum(),
            (w * wx * rx).sum(), (w * wy * ry).sum(), -(w * (wx * tx * rx + wy * ty * ry)).sum())
    assert got[0] == want[0] and (n == 1 or got[0] > 0)
    np.testing.assert_allclose(got[1:], want[1:], rtol=1e-12, atol=1e-9)
    weights = lanes[fit_module._LWEIGHT, :n]
    assert weights[0] == 0.0 and np.count_nonzero(weights) == ok.sum()


@pytest.mark.parametrize("chi2_cut", [1.0, 4.0, 9.0, 25.0])
@pytest.mark.parametrize("max_seeds", [1, 64, 1024])
def test_negligible_seed_terms_stay_below_rounding(chi2_cut, max_seeds):
    """Every seed's term left out of D_t, together, is below 2^-60 of the smallest possible
    denominator of a weight, exp(-chi2_cut/2)."""
    negligible = fit_module.negligible_chi2(chi2_cut, max_seeds)
    assert chi2_cut < negligible <= fit_module._UNDERFLOW_CHI2
    assert max_seeds * math.exp(-0.5 * negligible) <= 2.0**-60 * math.exp(-0.5 * chi2_cut) \
        * (1 + 1e-12)


def test_negligible_chi2_never_exceeds_the_underflow():
    assert fit_module.negligible_chi2(2000.0, 64) == fit_module._UNDERFLOW_CHI2


def test_inlined_exp_matches_libm():
    """The fit's own exp: within 1 ulp of numpy's wherever the fit uses it (exp(-χ²/2) up to
    the underflow), exactly 1 at 0 (and for x > 0, a negative χ²), 0 where exp underflows."""
    rng = np.random.default_rng(5)
    x = np.concatenate([-rng.uniform(0, 6, 20_000), -rng.uniform(0, 746, 20_000),
                        -np.logspace(-300, math.log10(745), 2000),
                        np.linspace(-745.2, -744.0, 500)])  # down to the underflow
    got = np.array([fit_module._exp_nonpositive(value) for value in x])
    want = np.exp(x)
    ulps = np.abs(got - want) / np.spacing(want)  # subnormal results too
    assert ulps.max() <= 1
    for value, expected in [(0.0, 1.0), (-0.0, 1.0), (1e-300, 1.0), (0.5, 1.0), (np.inf, 1.0),
                            (-745.2, 0.0), (-1e308, 0.0), (-np.inf, 0.0), (np.nan, 0.0)]:
        assert fit_module._exp_nonpositive(value) == expected


def test_kernels_run_as_python_under_numba_disable_jit():
    """Numba's debugging mode runs the kernels as Python: the fit's bit casts included
    (intrinsics alone cannot run there), with the compiled kernels' vertices."""
    script = ("import json, numpy as np, pvfinder\n"
              "from pvfinder.simulation import simulate\n"
              "v = pvfinder.find_vertices(simulate(3, seed=1).tracks, backend='cpu')\n"
              "print(json.dumps([v.counts.tolist(), np.asarray(v.z).tolist()]))\n")
    env = {**os.environ, "NUMBA_DISABLE_JIT": "1"}
    done = subprocess.run([sys.executable, "-c", script], env=env, capture_output=True,
                          text=True, timeout=300, check=False)
    assert done.returncode == 0, done.stderr
    counts, z = json.loads(done.stdout)
    compiled = find_vertices(simulate(3, seed=1).tracks, backend="cpu")
    assert counts == compiled.counts.tolist() and sum(counts) > 0
    np.testing.assert_allclose(z, np.asarray(compiled.z), rtol=0, atol=1e-9)


def test_leaving_out_negligible_terms_changes_no_vertex(sample, monkeypatch):
    """The whole pipeline with D_t summed up to the underflow of exp gives the same vertices
    (counts exactly, floats to rounding) as with the negligible terms left out."""
    pruned = find_vertices(sample.tracks, backend="cpu")
    monkeypatch.setattr(fit_module, "negligible_chi2", lambda *_: fit_module._UNDERFLOW_CHI2)
    full = find_vertices(sample.tracks, backend="cpu")
    assert pruned.n_vertices > 5000
    np.testing.assert_array_equal(pruned.offsets, full.offsets)
    np.testing.assert_array_equal(pruned.weight_offsets, full.weight_offsets)
    for name in ("x", "y", "z", "cov_zz", "chi2", "n_tracks"):
        np.testing.assert_allclose(getattr(pruned, name), getattr(full, name), rtol=1e-12,
                                   atol=1e-15, err_msg=name)
    np.testing.assert_allclose(pruned.weights, full.weights, rtol=1e-12, atol=1e-15)


def test_fit_workspace_grows_for_a_larger_event_and_is_per_thread(sample):
    """The fit's scratch is kept per calling thread and grown for a larger event: results do
    not depend on what the thread reconstructed before."""
    small = sample.tracks.select_events(0, 20)
    end = sample.tracks.offsets[20]  # 20 crossings as one event: larger than any before
    big = TrackBatch.from_arrays(offsets=[0, end],
                                 **{name: getattr(sample.tracks, name)[:end] for name in TRACK_FIELDS})
    results = {}

    def run(key, batches):
        results[key] = [find_vertices(batch, backend="cpu") for batch in batches]
        results[key + "_rows"] = fit_module._workspaces.floats.shape[1]

    for key, batches in (("small_then_big", [small, big]), ("big_only", [big])):
        thread = threading.Thread(target=run, args=(key, batches))
        thread.start()
        thread.join()
    grown, fresh = results["small_then_big"][1], results["big_only"][0]
    assert fresh.n_vertices > 30
    np.testing.assert_array_equal(grown.z, fresh.z)
    np.testing.assert_array_equal(grown.weights, fresh.weights)
    assert results["small_then_big_rows"] == results["big_only_rows"]  # grown to the same need


def test_every_parallel_kernel_releases_the_gil():
    """A batch's kernels must let other Python threads run: the next chunk of a file is read
    while this one is reconstructed, and finders in several threads run at the same time."""
    parallel = {}
    for info in pkgutil.iter_modules(cpu_kernels.__path__):
        module = importlib.import_module(f"{cpu_kernels.__name__}.{info.name}")
        for name, value in vars(module).items():
            if isinstance(value, numba.core.registry.CPUDispatcher) \
                    and value.targetoptions.get("parallel"):
                parallel[f"{info.name}.{name}"] = value.targetoptions.get("nogil", False)
    assert len(parallel) >= 6  # every stage, and the cleanup's compaction
    assert all(parallel.values()), [name for name, nogil in parallel.items() if not nogil]
