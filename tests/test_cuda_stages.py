"""Each CUDA stage against its Numba twin on the same inputs (needs a GPU and cupy).

Inputs are synthetic events (5–10 vertices of 20–40 tracks each, |z| < 100 mm, slopes
0.05–0.3, position errors 0.01–0.05 mm), plus an empty event, a one-track event, a 5000-track
event (more clusters than seed slots) and a few tracks parallel to the beam. Every stage gets
the CPU chain's output of the stage before, so that a difference is the stage's own. Counts
and flags must agree exactly; floats to rounding (the GPU fuses multiply-adds and adds a
histogram bin's contributions in another order): extrapolate and histogram to 1e-9 relative
and absolute, seeds to 1e-6 mm, fitted positions to 1e-4 mm, covariances to 1e-6 relative.
"""

from __future__ import annotations

import numpy as np
import pytest

from pvfinder.backends import cuda_unavailable_reason
from pvfinder.config import PVFinderConfig
from pvfinder.kernels.cpu.cleanup import cleanup as cpu_cleanup
from pvfinder.kernels.cpu.extrapolate import extrapolate as cpu_extrapolate
from pvfinder.kernels.cpu.find_peaks import find_peaks as cpu_find_peaks
from pvfinder.kernels.cpu.fit_vertices import fit_vertices as cpu_fit_vertices
from pvfinder.kernels.cpu.histogram import histogram as cpu_histogram

REASON = cuda_unavailable_reason()
pytestmark = [pytest.mark.gpu, pytest.mark.skipif(REASON is not None, reason=f"no GPU: {REASON}")]

CONFIG = PVFinderConfig()
SEEDS = (1, 2, 3)
TRACK_FIELDS = ("x", "y", "z", "tx", "ty", "cov_xx", "cov_yy", "cov_xtx", "cov_yty",
                "cov_txtx", "cov_tyty")


def _vertex_tracks(rng: np.random.Generator, vertex: np.ndarray, n: int) -> dict[str, np.ndarray]:
    """``n`` straight tracks from ``vertex`` with their state at a reference z 20–200 mm away."""
    slope = rng.uniform(0.05, 0.3, n)
    phi = rng.uniform(0.0, 2.0 * np.pi, n)
    tx, ty = slope * np.cos(phi), slope * np.sin(phi)
    z_ref = vertex[2] + rng.choice([-1.0, 1.0], n, p=[0.2, 0.8]) * rng.uniform(20.0, 200.0, n)
    sigma = rng.uniform(0.01, 0.05, n)
    sigma_t = sigma / rng.uniform(50.0, 200.0, n)  # slope error: a lever arm of 5–20 cm
    dz = z_ref - vertex[2]
    return {
        "x": vertex[0] + tx * dz + rng.normal(0.0, 1.0, n) * sigma,
        "y": vertex[1] + ty * dz + rng.normal(0.0, 1.0, n) * sigma,
        "z": z_ref, "tx": tx, "ty": ty,
        "cov_xx": sigma**2, "cov_yy": sigma**2,
        "cov_xtx": 0.5 * sigma * sigma_t, "cov_yty": -0.3 * sigma * sigma_t,
        "cov_txtx": sigma_t**2, "cov_tyty": sigma_t**2,
    }


def _event(rng: np.random.Generator, n_vertices: int, z_range: float) -> dict[str, np.ndarray]:
    parts = []
    for _ in range(n_vertices):
        vertex = np.array([rng.normal(0.0, 0.02), rng.normal(0.0, 0.02),
                           rng.uniform(-z_range, z_range)])
        parts.append(_vertex_tracks(rng, vertex, int(rng.integers(20, 41))))
    return {f: np.concatenate([p[f] for p in parts] or [np.zeros(0)]) for f in TRACK_FIELDS}


def synthetic_tracks(seed: int) -> dict[str, np.ndarray]:
    """Flat track arrays and int64 ``offsets`` of a batch of synthetic events."""
    rng = np.random.default_rng(seed)
    events = [_event(rng, 0, 100.0), _event(rng, 1, 100.0)]
    events[1] = {f: a[:1] for f, a in events[1].items()}  # a one-track event
    events += [_event(rng, int(rng.integers(5, 11)), 100.0) for _ in range(12)]
    big = _event(rng, 200, 280.0)  # ≥ 64 clusters: more than the seed slots
    events.append({f: a[:5000] for f, a in big.items()})
    counts = [len(e["x"]) for e in events]
    tracks = {f: np.concatenate([e[f] for e in events]) for f in TRACK_FIELDS}
    tracks["tx"][::53] = tracks["ty"][::53] = 0.0  # parallel to the beam: unusable
    tracks["cov_xx"][5::97] *= -1.0  # a covariance that is not positive: unusable
    tracks["offsets"] = np.concatenate(([0], np.cumsum(counts))).astype(np.int64)
    return tracks


def _to_device(arrays):
    import cupy

    return [cupy.asarray(a) for a in arrays]


def _to_host(arrays):
    import cupy

    return [cupy.asnumpy(a) for a in arrays]


def _first_bad_event(bad_rows: np.ndarray) -> int:
    return int(np.flatnonzero(bad_rows)[0])


def _rows_close(a: np.ndarray, b: np.ndarray, rtol: float, atol: float) -> np.ndarray:
    """Per event (first axis): whether every entry agrees (NaN with NaN, inf with inf)."""
    same = np.isclose(a, b, rtol=rtol, atol=atol, equal_nan=True)
    return same.reshape(len(a), -1).all(axis=1)


# --- the CPU chain, one stage at a time -------------------------------------------------------

def extrapolate_args(tracks):
    n = len(tracks["x"])
    inputs = [tracks[f] for f in TRACK_FIELDS]
    numbers = [*CONFIG.beamline, CONFIG.zmin, CONFIG.zmax, CONFIG.max_track_beamline_chi2,
               CONFIG.max_track_z0_err]
    outputs = [np.zeros(n) for _ in range(6)] + [np.zeros(n, dtype=np.uint8)]
    return inputs, numbers, outputs


def cpu_chain(tracks):
    """Every stage's inputs and CPU outputs, chained."""
    inputs, numbers, beam = extrapolate_args(tracks)
    cpu_extrapolate(*inputs, *numbers, *beam)
    bx, by, bz, wx, wy, sigma_z, usable = beam
    offsets = tracks["offsets"]
    n_events = len(offsets) - 1
    hist = np.zeros((n_events, CONFIG.n_bins))
    cpu_histogram(offsets, bz, sigma_z, usable, CONFIG.zmin,
                                    CONFIG.bin_width, hist)
    max_seeds = CONFIG.max_vertices_per_event
    seeds, n_seeds = np.zeros((n_events, max_seeds)), np.zeros(n_events, dtype=np.int32)
    cpu_find_peaks(hist, *peak_numbers(), seeds, n_seeds)
    fitted = np.minimum(n_seeds, max_seeds).astype(np.int64)
    weight_offsets = np.concatenate(([0], np.cumsum(fitted * np.diff(offsets)))).astype(np.int64)
    fit_in = [offsets, bx, by, bz, tracks["tx"], tracks["ty"], wx, wy, usable, seeds, n_seeds,
              weight_offsets]
    fit_out = fit_outputs(n_events, max_seeds, int(weight_offsets[-1]))
    cpu_fit_vertices(*fit_in, *fit_numbers(), *fit_out)
    order, n_kept = np.zeros((n_events, max_seeds), np.int32), np.zeros(n_events, np.int32)
    pos, cov, _, _, n_tracks, valid, _ = fit_out
    cpu_cleanup(pos, cov, n_tracks, valid, n_seeds, CONFIG.min_chi2_dist,
                                order, n_kept)
    return {"extrapolate": (inputs, numbers, beam), "hist": hist, "seeds": (seeds, n_seeds),
            "fit": (fit_in, fit_out), "cleanup": (order, n_kept)}


def peak_numbers():
    return (CONFIG.zmin, CONFIG.bin_width, CONFIG.seed_threshold, CONFIG.min_tracks_in_seed,
            CONFIG.min_dip_density, CONFIG.min_density)


def fit_numbers():
    return (*CONFIG.beamline, CONFIG.max_chi2, CONFIG.chi2_cut, CONFIG.min_weight,
            CONFIG.min_fit_iter, CONFIG.max_fit_iter, CONFIG.max_delta_z_converged,
            CONFIG.min_tracks_per_vertex, CONFIG.max_vertex_rho2)


def fit_outputs(n_events: int, max_seeds: int, n_weights: int) -> list[np.ndarray]:
    """pos, cov, chi2, ndof, n_tracks, valid, weights, filled with a sentinel."""
    shape = (n_events, max_seeds)
    return [np.full((*shape, 3), -7.0), np.full((*shape, 6), -7.0), np.full(shape, -7.0),
            np.full(shape, -7.0), np.full(shape, -7.0), np.full(shape, 7, dtype=np.uint8),
            np.full(n_weights, -7.0)]


@pytest.fixture(scope="module", params=SEEDS, ids=lambda s: f"seed{s}")
def chain(request):
    tracks = synthetic_tracks(request.param)
    return tracks, cpu_chain(tracks)


def test_inputs_cover_the_edge_cases(chain):
    tracks, cpu = chain
    counts = np.diff(tracks["offsets"])
    _, n_seeds = cpu["seeds"]
    assert counts[0] == 0 and counts[1] == 1 and counts.max() == 5000
    assert n_seeds.max() > CONFIG.max_vertices_per_event  # the overflow path is exercised
    assert np.count_nonzero(n_seeds[2:-1] >= 4) >= 10  # the multi-vertex events give seeds
    *_, beam = cpu["extrapolate"]
    negative = beam[3] < 0  # W_x
    assert negative.any() and not beam[6][negative].any()


# --- one test per stage -----------------------------------------------------------------------

def test_extrapolate(chain):
    from pvfinder.kernels.cuda.extrapolate import extrapolate

    _, cpu = chain
    inputs, numbers, expected = cpu["extrapolate"]
    outputs = _to_device([np.full_like(a, 7) for a in expected])
    extrapolate(*_to_device(inputs), *numbers, *outputs)
    got = _to_host(outputs)
    names = ("x", "y", "z", "wx", "wy", "sigma_z")
    for name, a, b in zip(names, got[:6], expected[:6]):
        np.testing.assert_allclose(a, b, rtol=1e-9, atol=1e-9, err_msg=f"extrapolate {name}")
    bad = np.flatnonzero(got[6] != expected[6])
    assert bad.size == 0, f"extrapolate: usable differs for {bad.size} tracks, first {bad[:5]}"


def test_histogram(chain):
    from pvfinder.kernels.cuda.histogram import histogram

    tracks, cpu = chain
    _, _, (_, _, bz, _, _, sigma_z, usable) = cpu["extrapolate"]
    expected = cpu["hist"]
    out = _to_device([np.full_like(expected, 7.0)])[0]
    histogram(*_to_device([tracks["offsets"], bz, sigma_z, usable]), CONFIG.zmin,
              CONFIG.bin_width, out)
    got = _to_host([out])[0]
    close = _rows_close(got, expected, rtol=1e-9, atol=1e-9)
    assert close.all(), f"histogram differs in event {_first_bad_event(~close)}"
    assert np.all(got[:, [0, -1]] == 0.0)
    # each usable track well inside the range adds one: the integral counts tracks
    assert got[2:-1].sum() == pytest.approx(usable.sum() - usable[: tracks["offsets"][2]].sum()
                                            - usable[tracks["offsets"][-2]:].sum(), abs=1e-6)


def test_find_peaks(chain):
    from pvfinder.kernels.cuda.find_peaks import find_peaks

    _, cpu = chain
    seeds, n_seeds = cpu["seeds"]
    out_seeds, out_n = _to_device([np.full_like(seeds, -7.0), np.full_like(n_seeds, -7)])
    find_peaks(_to_device([cpu["hist"]])[0], *peak_numbers(), out_seeds, out_n)
    got_seeds, got_n = _to_host([out_seeds, out_n])
    same = got_n == n_seeds
    assert same.all(), (f"find_peaks: seed count of event {_first_bad_event(~same)}: "
                        f"{got_n[~same][0]} on the GPU, {n_seeds[~same][0]} on the CPU")
    for e, n in enumerate(np.minimum(n_seeds, seeds.shape[1])):
        np.testing.assert_allclose(got_seeds[e, :n], seeds[e, :n], rtol=0, atol=1e-6,
                                   err_msg=f"find_peaks: seeds of event {e}")


def test_fit_vertices(chain):
    from pvfinder.kernels.cuda.fit_vertices import fit_vertices

    _, cpu = chain
    fit_in, expected = cpu["fit"]
    n_events, max_seeds = fit_in[9].shape
    outputs = _to_device(fit_outputs(n_events, max_seeds, len(expected[6])))
    fit_vertices(*_to_device(fit_in), *fit_numbers(), *outputs)
    pos, cov, chi2, ndof, n_tracks, valid, weights = _to_host(outputs)
    exp_pos, exp_cov, exp_chi2, exp_ndof, exp_n_tracks, exp_valid, exp_weights = expected
    checks = [
        ("valid flags", valid, exp_valid, 0.0, 0.0),
        ("positions", pos, exp_pos, 0.0, 1e-4),
        ("covariances", cov, exp_cov, 1e-6, 1e-15),
        ("chi2", chi2, exp_chi2, 1e-6, 1e-9),
        ("ndof", ndof, exp_ndof, 1e-6, 1e-9),
        ("n_tracks", n_tracks, exp_n_tracks, 1e-6, 1e-9),
    ]
    for name, got, want, rtol, atol in checks:
        close = _rows_close(got, want, rtol, atol)  # unused slots keep the sentinel on both
        assert close.all(), f"fit_vertices {name} differ in event {_first_bad_event(~close)}"
    weight_offsets = fit_in[11]
    close = np.isclose(weights, exp_weights, rtol=1e-6, atol=1e-9)
    bad_events = np.unique(np.searchsorted(weight_offsets, np.flatnonzero(~close), "right") - 1)
    assert close.all(), f"fit_vertices weights differ in events {bad_events[:5]}"
    assert np.count_nonzero(exp_valid == 1) >= 50  # the comparison covers real vertices


def test_fit_vertices_with_a_weight_that_is_not_positive():
    """A direct call may pass a usable track with W_x < 0, so a negative χ²: both backends
    take its Gaussian term as 1 (plain exp would exceed 1, or overflow)."""
    from pvfinder.kernels.cuda.fit_vertices import fit_vertices

    angle = np.arange(7) * 2.0 * np.pi / 7.0
    tx = np.r_[0.0, 0.1 * np.cos(angle)]
    ty = np.r_[0.2, 0.1 * np.sin(angle)]
    for shift in (0.01, 0.4):  # χ² of track 0 about -1, then about -1600
        fit_in = [np.array([0, 8], np.int64), 10.0 * tx + np.r_[shift, np.zeros(7)], 10.0 * ty,
                  np.full(8, 10.0), tx, ty, np.r_[-1e4, np.full(7, 1e4)], np.full(8, 1e4),
                  np.ones(8, np.uint8), np.zeros((1, 1)), np.ones(1, np.int32),
                  np.array([0, 8], np.int64)]
        expected = fit_outputs(1, 1, 8)
        cpu_fit_vertices(*fit_in, *fit_numbers(), *expected)
        outputs = _to_device(fit_outputs(1, 1, 8))
        fit_vertices(*_to_device(fit_in), *fit_numbers(), *outputs)
        for name, got, want in zip(("pos", "cov", "chi2", "ndof", "n_tracks", "valid",
                                    "weights"), _to_host(outputs), expected):
            np.testing.assert_allclose(got, want, rtol=1e-9, atol=1e-12, err_msg=name)


def test_cleanup(chain):
    from pvfinder.kernels.cuda.cleanup import cleanup

    _, cpu = chain
    fit_in, (pos, cov, _, _, n_tracks, valid, _) = cpu["fit"]
    order, n_kept = cpu["cleanup"]
    out_order, out_n = _to_device([np.full_like(order, 7), np.full_like(n_kept, 7)])
    cleanup(*_to_device([pos, cov, n_tracks, valid, fit_in[10]]), CONFIG.min_chi2_dist,
            out_order, out_n)
    got_order, got_n = _to_host([out_order, out_n])
    same = (got_n == n_kept) & np.all(got_order == order, axis=1)
    assert same.all(), f"cleanup differs in event {_first_bad_event(~same)}"
    assert n_kept.sum() >= 50


def test_compact(chain):
    from pvfinder.kernels.cpu.cleanup import compact as cpu_compact
    from pvfinder.kernels.cuda.cleanup import compact

    _, cpu = chain
    fit_in, (pos, cov, chi2, ndof, n_tracks, _, weights) = cpu["fit"]
    order, n_kept = cpu["cleanup"]
    offsets, weight_offsets = fit_in[0], fit_in[11]
    vertex_offsets = np.concatenate(([0], np.cumsum(n_kept))).astype(np.int64)
    weight_base = np.concatenate(([0], np.cumsum(n_kept * np.diff(offsets)))).astype(np.int64)
    n_vertices, n_weights = int(vertex_offsets[-1]), int(weight_base[-1])
    inputs = [offsets, weight_offsets, order, n_kept, vertex_offsets, weight_base,
              pos, cov, chi2, ndof, n_tracks, weights]
    expected = [np.zeros((12, n_vertices)), np.zeros(n_vertices + 1, np.int64),
                np.zeros(n_weights)]
    cpu_compact(*inputs, *expected)
    got = _to_device([np.full_like(a, 7) for a in expected])
    compact(*_to_device(inputs), *got)
    for name, a, b in zip(("vertices", "weight_offsets", "weights"), _to_host(got), expected):
        np.testing.assert_array_equal(a, b, err_msg=f"compact {name}")  # copies: exact
    assert n_vertices >= 50


# --- bad input ----------------------------------------------------------------------------------

def test_loader_names_kernel_and_argument():
    import cupy

    from pvfinder.kernels.cuda.find_peaks import find_peaks

    hist = cupy.zeros((3, CONFIG.n_bins))
    seeds, n_seeds = cupy.zeros((3, 8)), cupy.zeros(3, dtype=cupy.int64)
    with pytest.raises(ValueError, match="find_peaks: out_n_seeds must be .*int32"):
        find_peaks(hist, *peak_numbers(), seeds, n_seeds)
    with pytest.raises(ValueError, match="find_peaks: hist must be a cupy array"):
        find_peaks(np.zeros((3, 10)), *peak_numbers(), seeds, n_seeds.astype(cupy.int32))


def test_device_errors_name_the_kernel():
    import cupy

    from pvfinder.kernels.cuda._launch import check_errors
    from pvfinder.kernels.cuda.fit_vertices import fit_vertices
    from pvfinder.kernels.cuda.histogram import histogram

    tracks = synthetic_tracks(5)
    fit_in, _ = cpu_chain(tracks)["fit"]
    n_events, max_seeds = fit_in[9].shape
    bad_weight_offsets = fit_in[11].copy()
    bad_weight_offsets[3:] += 1  # event 2's block one weight too long
    outputs = _to_device(fit_outputs(n_events, max_seeds, int(bad_weight_offsets[-1])))
    check_errors()  # start clean
    fit_vertices(*_to_device(fit_in[:11] + [bad_weight_offsets]), *fit_numbers(), *outputs)
    with pytest.raises(ValueError, match=r"fit_vertices: weight_offsets .* event 2\)"):
        check_errors()
    check_errors()  # the buffer was cleared

    n = len(tracks["x"])
    offsets = cupy.asarray(np.array([0, 5, n + 1], dtype=np.int64))
    arrays = [cupy.zeros(n), cupy.ones(n), cupy.zeros(n, dtype=cupy.uint8)]
    histogram(offsets, *arrays, CONFIG.zmin, CONFIG.bin_width, cupy.zeros((2, CONFIG.n_bins)))
    with pytest.raises(ValueError, match=r"histogram: offsets .* event 1\)"):
        check_errors()
