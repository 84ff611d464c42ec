"""Each CUDA stage against its Numba twin, on simulated and random inputs (needs a GPU).

Tolerances: extrapolate to 1e-12 relative or 1e-12 absolute (the same formulas, with fused
multiply-adds on the GPU), histogram bins to 1e-9
absolute (shared-memory atomics add in another order), seed z to 1e-6 mm, fitted positions to
1e-4 mm and covariances to 1e-6 relative. Seed and vertex counts must agree on at least 99.9 %
of events (a bin sum that differs in its last bit may, very rarely, flip a threshold).
"""

from __future__ import annotations

import numpy as np
import pytest

from pvfinder.backends import get_backend
from pvfinder.config import PVFinderConfig
from pvfinder.events import TRACK_FIELDS
from pvfinder.simulation import simulate

from .conftest import requires_cuda

pytestmark = [pytest.mark.gpu, requires_cuda]
CONFIG = PVFinderConfig()


def random_tracks(seed: int) -> dict[str, np.ndarray]:
    """Events of 0, 1, a few hundred and 5000 tracks around several vertices, plus junk."""
    rng = np.random.default_rng(seed)
    counts = np.concatenate(([0, 1, 5000], rng.integers(0, 400, 60)))
    n = int(counts.sum())
    vertex_z = rng.uniform(-150, 150, n)
    tx, ty = rng.uniform(-0.3, 0.3, n), rng.uniform(-0.3, 0.3, n)
    ref = vertex_z + rng.uniform(-40, 80, n)
    sigma = rng.uniform(0.01, 0.05, n)
    fields = {
        "x": tx * (ref - vertex_z) + rng.normal(0, 1, n) * sigma,
        "y": ty * (ref - vertex_z) + rng.normal(0, 1, n) * sigma,
        "z": ref, "tx": tx, "ty": ty,
        "cov_xx": sigma**2, "cov_yy": sigma**2,
        "cov_xtx": np.zeros(n), "cov_yty": np.zeros(n),
        "cov_txtx": np.full(n, 1e-8), "cov_tyty": np.full(n, 1e-8),
    }
    fields["tx"][::97] = 0.0  # some tracks parallel to the beam
    fields["ty"][::97] = 0.0
    return {"offsets": np.concatenate(([0], np.cumsum(counts))), **fields}


def simulated_tracks(seed: int) -> dict[str, np.ndarray]:
    tracks = simulate(300, seed=seed).tracks
    return {"offsets": tracks.offsets, **{f: getattr(tracks, f) for f in TRACK_FIELDS}}


INPUTS = [pytest.param(lambda: random_tracks(s), id=f"random{s}") for s in (1, 2)] + [
    pytest.param(lambda: simulated_tracks(s), id=f"simulated{s}") for s in (3, 4)
]


def run_stages(backend_name: str, arrays: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """Chain the five stages on one backend; every intermediate comes back as numpy."""
    backend = get_backend(backend_name)
    xp = backend.xp
    offsets = xp.asarray(arrays["offsets"], dtype=np.int64)
    n_events, n_tracks = len(offsets) - 1, len(arrays["x"])
    state = [xp.asarray(arrays[f], dtype=np.float64) for f in TRACK_FIELDS]
    beam = [xp.empty(n_tracks) for _ in range(6)] + [xp.empty(n_tracks, dtype=np.uint8)]
    backend.extrapolate(*state, *CONFIG.beamline, CONFIG.zmin, CONFIG.zmax,
                        CONFIG.max_track_beamline_chi2, CONFIG.max_track_z0_err, *beam)
    bx, by, bz, wx, wy, sigma_z, usable = beam
    hist = xp.empty((n_events, CONFIG.n_bins))
    backend.histogram(offsets, bz, sigma_z, usable, CONFIG.zmin, CONFIG.bin_width, hist)
    max_seeds = CONFIG.max_vertices_per_event
    seeds, n_seeds = xp.zeros((n_events, max_seeds)), xp.zeros(n_events, dtype=np.int32)
    backend.find_peaks(hist, CONFIG.zmin, CONFIG.bin_width, CONFIG.seed_threshold,
                       CONFIG.min_tracks_in_seed, CONFIG.min_dip_density, CONFIG.min_density,
                       seeds, n_seeds)
    # The fit and clean-up of both backends start from the CPU's seeds, so that a rare seed
    # difference does not hide a fit difference.
    return {
        "beam": [backend.to_host(a) for a in beam], "hist": backend.to_host(hist),
        "seeds": backend.to_host(seeds), "n_seeds": backend.to_host(n_seeds),
    }


def fit_and_clean(backend_name, arrays, beam, seeds, n_seeds):
    backend = get_backend(backend_name)
    xp = backend.xp
    offsets = xp.asarray(arrays["offsets"], dtype=np.int64)
    n_events, max_seeds = seeds.shape
    fitted = np.minimum(n_seeds, max_seeds).astype(np.int64)
    weight_offsets = np.concatenate(([0], np.cumsum(fitted * np.diff(arrays["offsets"]))))
    bx, by, bz, wx, wy, _, usable = (xp.asarray(a) for a in beam)
    tx, ty = xp.asarray(arrays["tx"], dtype=np.float64), xp.asarray(arrays["ty"], dtype=np.float64)
    out = {
        "pos": xp.zeros((n_events, max_seeds, 3)), "cov": xp.zeros((n_events, max_seeds, 6)),
        "chi2": xp.zeros((n_events, max_seeds)), "ndof": xp.zeros((n_events, max_seeds)),
        "n_tracks": xp.zeros((n_events, max_seeds)),
        "valid": xp.zeros((n_events, max_seeds), dtype=np.uint8),
        "weights": xp.zeros(int(weight_offsets[-1])),
    }
    backend.fit_vertices(
        offsets, bx, by, bz, tx, ty, wx, wy, usable, xp.asarray(seeds), xp.asarray(n_seeds),
        xp.asarray(weight_offsets), *CONFIG.beamline, CONFIG.max_chi2, CONFIG.chi2_cut,
        CONFIG.min_weight, CONFIG.min_fit_iter, CONFIG.max_fit_iter,
        CONFIG.max_delta_z_converged, CONFIG.min_tracks_per_vertex, CONFIG.max_vertex_rho2,
        out["pos"], out["cov"], out["chi2"], out["ndof"], out["n_tracks"], out["valid"],
        out["weights"],
    )
    order = xp.zeros((n_events, max_seeds), dtype=np.int32)
    n_kept = xp.zeros(n_events, dtype=np.int32)
    backend.cleanup(out["pos"], out["cov"], out["n_tracks"], out["valid"], xp.asarray(n_seeds),
                    CONFIG.min_chi2_dist, order, n_kept)
    host = {k: backend.to_host(v) for k, v in out.items()}
    host["order"], host["n_kept"] = backend.to_host(order), backend.to_host(n_kept)
    return host


def first_bad_event(mask_per_event: np.ndarray) -> str:
    bad = np.flatnonzero(~mask_per_event)
    return f"{bad.size} event(s) differ, first: event {bad[0]}" if bad.size else ""


@pytest.mark.parametrize("make_input", INPUTS)
def test_stages_agree(make_input):
    arrays = make_input()
    cpu, gpu = run_stages("cpu", arrays), run_stages("cuda", arrays)

    for name, a, b in zip(("x", "y", "z", "wx", "wy", "sigma_z"), cpu["beam"], gpu["beam"]):
        # The GPU contracts a·b + c into fused multiply-adds: last-bit differences, which
        # cancellation near the beamline turns into ~1e-15 mm absolute.
        np.testing.assert_allclose(b, a, rtol=1e-12, atol=1e-12, err_msg=f"extrapolate {name}")
    np.testing.assert_array_equal(gpu["beam"][6], cpu["beam"][6], err_msg="extrapolate usable")

    close = np.all(np.abs(gpu["hist"] - cpu["hist"]) <= 1e-9, axis=1)
    assert close.all(), "histogram: " + first_bad_event(close)

    same_count = gpu["n_seeds"] == cpu["n_seeds"]
    assert same_count.mean() >= 0.999, "find_peaks counts: " + first_bad_event(same_count)
    max_seeds = cpu["seeds"].shape[1]
    for e in np.flatnonzero(same_count):
        m = min(cpu["n_seeds"][e], max_seeds)
        np.testing.assert_allclose(gpu["seeds"][e, :m], cpu["seeds"][e, :m], atol=1e-6,
                                   err_msg=f"find_peaks seeds of event {e}")

    fit_cpu = fit_and_clean("cpu", arrays, cpu["beam"], cpu["seeds"], cpu["n_seeds"])
    fit_gpu = fit_and_clean("cuda", arrays, cpu["beam"], cpu["seeds"], cpu["n_seeds"])
    for e in range(len(cpu["n_seeds"])):
        m = min(cpu["n_seeds"][e], max_seeds)
        np.testing.assert_array_equal(fit_gpu["valid"][e, :m], fit_cpu["valid"][e, :m],
                                      err_msg=f"fit_vertices valid flags of event {e}")
        np.testing.assert_allclose(fit_gpu["pos"][e, :m], fit_cpu["pos"][e, :m], atol=1e-4,
                                   err_msg=f"fit_vertices positions of event {e}")
        np.testing.assert_allclose(fit_gpu["cov"][e, :m], fit_cpu["cov"][e, :m], rtol=1e-6,
                                   atol=1e-15, err_msg=f"fit_vertices covariance of event {e}")
        np.testing.assert_allclose(fit_gpu["n_tracks"][e, :m], fit_cpu["n_tracks"][e, :m],
                                   rtol=1e-6, err_msg=f"fit_vertices n_tracks of event {e}")
    np.testing.assert_allclose(fit_gpu["weights"], fit_cpu["weights"], atol=1e-6,
                               err_msg="fit_vertices weights")
    same_kept = fit_gpu["n_kept"] == fit_cpu["n_kept"]
    assert same_kept.mean() >= 0.999, "cleanup counts: " + first_bad_event(same_kept)


def test_whole_pipeline_agrees_on_simulated_events():
    from pvfinder import find_vertices
    from pvfinder.validation import validate

    sample = simulate(3000, seed=21)
    cpu = find_vertices(sample.tracks, backend="cpu")
    gpu = find_vertices(sample.tracks, backend="cuda")
    same = cpu.counts == gpu.counts
    assert same.mean() >= 0.999, "vertex counts: " + first_bad_event(same)
    events = np.flatnonzero(same)
    cpu_z = np.split(cpu.z, cpu.offsets[1:-1])
    gpu_z = np.split(gpu.z, gpu.offsets[1:-1])
    for e in events:
        np.testing.assert_allclose(gpu_z[e], cpu_z[e], atol=1e-4, err_msg=f"vertex z of event {e}")
    a, b = validate(cpu, sample.truth), validate(gpu, sample.truth)
    assert abs(a.efficiency - b.efficiency) < 0.002
    assert abs(a.fake_rate - b.fake_rate) < 0.002


def test_loader_rejects_host_arrays():
    from pvfinder.kernels.cuda.extrapolate import extrapolate

    host = np.zeros(3)
    with pytest.raises(ValueError, match="extrapolate: x must be a cupy array"):
        extrapolate(*([host] * 11), 0, 0, -300, 300, 10, 1.5, *([host] * 6),
                    np.zeros(3, dtype=np.uint8))
