"""The whole pipeline: physics on simulated events, input forms, edge cases and bad input."""

from __future__ import annotations

import dataclasses
import tracemalloc
import warnings

import awkward as ak
import numpy as np
import pytest

from pvfinder import find_vertices
from pvfinder.backends import get_backend
from pvfinder.config import PVFinderConfig
from pvfinder.events import TRACK_FIELDS, VERTEX_FIELDS, TrackBatch
from pvfinder.pipeline import (
    PVFinder,
    SeedOverflowWarning,
    VertexBuffers,
    as_track_batch,
)
from pvfinder.simulation import simulate
from pvfinder.validation import core_gaussian, truth_fit, validate

from .conftest import requires_cuda
from .test_io import assert_same_vertices


def in_precision(tracks: TrackBatch, dtype: type) -> TrackBatch:
    """``tracks`` with every state converted to ``dtype``."""
    return TrackBatch.from_arrays(offsets=tracks.offsets, **{
        name: getattr(tracks, name).astype(dtype) for name in TRACK_FIELDS})


def one_vertex_event(n_tracks: int, z0: float = 10.0, seed: int = 0) -> dict[str, np.ndarray]:
    """Flat arrays of ``n_tracks`` straight tracks from (0, 0, z0) with 20 µm errors."""
    rng = np.random.default_rng(seed)
    tx, ty = rng.uniform(-0.25, 0.25, n_tracks), rng.uniform(-0.25, 0.25, n_tracks)
    z = z0 + rng.uniform(10, 50, n_tracks)
    sigma = 0.02
    return {
        "x": tx * (z - z0) + rng.normal(0, sigma, n_tracks),
        "y": ty * (z - z0) + rng.normal(0, sigma, n_tracks),
        "z": z, "tx": tx, "ty": ty,
        "cov_xx": np.full(n_tracks, sigma**2), "cov_yy": np.full(n_tracks, sigma**2),
        "cov_xtx": np.zeros(n_tracks), "cov_yty": np.zeros(n_tracks),
        "cov_txtx": np.full(n_tracks, 1e-12), "cov_tyty": np.full(n_tracks, 1e-12),
    }


def test_physics_on_simulated_sample(sample, backend_name):
    vertices = find_vertices(sample.tracks, backend=backend_name)
    report = validate(vertices, sample.truth)
    # 1000 events hold ~7000 reconstructible PVs. The rates' bounds lie several σ beyond the
    # targets (measured on 100 000 events); the pulls, known to about 0.015 here, must meet
    # theirs (cov_zz 25 % too large, a width of 0.87, passed the earlier 0.8-1.3).
    assert report.efficiency_isolated_20 >= 0.97
    assert report.efficiency_where(min_multiplicity=30)[0] >= 0.96  # 0.977 ± 0.003 here
    assert report.fake_rate <= 0.02
    assert report.clone_rate <= 0.01
    for axis in "xyz":
        assert abs(report.pull_mean[axis]) < 0.1
        assert 0.9 < report.pull_width[axis] < 1.2
    # x and y meet their goal by far (8 µm); z, which misses its own by 4 %, is held to what
    # the tracks allow by test_resolution_is_near_what_the_tracks_allow.
    above_20 = report.resolution_where(min_multiplicity=21)
    assert above_20["x"] < 0.015 and above_20["y"] < 0.015


@pytest.mark.parametrize("changes", [
    {},  # the published defaults
    {"min_dip_density": 0.5, "min_tracks_in_seed": 1.0, "min_density": 1.0, "min_weight": 0.3,
     "min_chi2_dist": 400.0, "max_vertices_per_event": 5, "beamline": (0.02, -0.01)},
    {"min_dip_density": 0.0},  # every dip splits: the sharing of a minimum's bin shows
])
def test_every_backend_finds_what_a_plain_reading_of_the_spec_finds(backend_name, changes):
    """The kernels (batches, candidate lists, SIMD lanes, bounds that skip work) against
    ``spec_reference``, the specification's formulas one event at a time: seeds and vertices
    counted exactly, every output within 1e-9 (the two sum in other orders)."""
    from . import spec_reference

    config = PVFinderConfig(**changes)
    tracks = simulate(40, seed=17).tracks
    finder = PVFinder(config, backend=backend_name)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", SeedOverflowWarning)  # max_vertices_per_event = 5
        found = finder(tracks).to_host()
        seeds = finder.z_histograms(tracks).seeds
    for event in range(tracks.n_events):
        expected_seeds, expected = spec_reference.find_event_vertices(tracks, event, config)
        kept_seeds = expected_seeds[:config.max_vertices_per_event]
        np.testing.assert_allclose(np.asarray(seeds[event]), kept_seeds, rtol=0, atol=1e-9,
                                   err_msg=f"seeds of event {event}")
        first, stop = int(found.offsets[event]), int(found.offsets[event + 1])
        assert stop - first == len(expected), f"vertices of event {event}"
        for k, vertex in enumerate(expected, start=first):
            for name in VERTEX_FIELDS:
                assert getattr(found, name)[k] == pytest.approx(vertex[name], rel=1e-9,
                                                                abs=1e-12), (event, name)
            weights = found.weights[found.weight_offsets[k]:found.weight_offsets[k + 1]]
            np.testing.assert_allclose(weights, vertex["weights"], rtol=0, atol=1e-9)


def test_resolution_is_near_what_the_tracks_allow(sample):
    # Against a fit that knows each MC PV's tracks, the finder's seeding and adaptive weights
    # cost about 13 % in z for PVs with more than 20 tracks (100 000 events: 54.2 vs 48.2 µm)
    # and 18 % in x and y: a fault in the fit, its weights or its convergence shows as more.
    report = validate(find_vertices(sample.tracks, backend="cpu"), sample.truth)
    found_many = report.mc_multiplicity[report.mc_found] > 20
    reference = truth_fit(sample.tracks, sample.truth)
    many = np.asarray(sample.truth.vertices.n_reconstructible) > 20
    for axis, name in enumerate("xyz"):
        finder_width = core_gaussian(report.residual_values[name][found_many])[1]
        reference_width = core_gaussian(reference.residual[many, axis])[1]
        assert 0.95 < finder_width / reference_width < 1.3, name


def test_a_wide_luminous_region_costs_efficiency(sample):
    # Stage 1's beamline χ² cut assumes PVs on the beamline to within the track errors (the
    # nominal 18 µm luminous width): at 280 µm tracks of PVs off the axis fail it. 50 000
    # events gave efficiencies of 89.4 % and 51 % (README, physics notebook).
    wide = simulate(300, seed=11, sigma_x=0.28, sigma_y=0.28)
    finder = PVFinder(backend="cpu")
    nominal_efficiency = validate(finder(sample.tracks), sample.truth).efficiency
    wide_efficiency = validate(finder(wide.tracks), wide.truth).efficiency
    assert nominal_efficiency > 0.85
    assert wide_efficiency < nominal_efficiency - 0.2


def test_input_forms_agree(sample):
    tracks = sample.tracks.select_events(0, 50)
    finder = PVFinder(backend="cpu")
    reference = finder(tracks)
    from_awkward = finder(tracks.to_awkward())
    from_mapping = finder({"counts": tracks.counts, **{f: getattr(tracks, f) for f in TRACK_FIELDS}})
    # Lists per event for each field, as uproot's tree.arrays(how=dict) gives (with others).
    per_field = {f: ak.unflatten(getattr(tracks, f), tracks.counts) for f in TRACK_FIELDS}
    from_jagged = finder({**per_field, "n_tracks": tracks.counts})
    # The same as Python lists, and as uproot's library="np" gives them (arrays of arrays).
    from_lists = finder({f: ak.to_list(values) for f, values in per_field.items()})
    from_objects = finder({f: _object_array([ak.to_numpy(event) for event in per_field[f]])
                           for f in TRACK_FIELDS})
    # A record of lists per event, as uproot's tree.arrays() gives by default (with others).
    from_record = finder(ak.zip({**per_field, "n_tracks": tracks.counts}, depth_limit=1))
    for other in (from_awkward, from_mapping, from_jagged, from_lists, from_objects,
                  from_record):
        np.testing.assert_array_equal(other.offsets, reference.offsets)
        np.testing.assert_array_equal(other.z, reference.z)
    # A 2-d array per field (events of one size), also big-endian as numpy.fromfile can give
    # it: awkward refuses that byte order, which was reported as "not a list per event".
    square = {f: getattr(tracks, f)[:400].reshape(4, 100) for f in TRACK_FIELDS}
    native = finder(square)
    swapped = finder({f: a.astype(a.dtype.newbyteorder(">")) for f, a in square.items()})
    assert native.n_events == 4 and native.n_vertices > 0
    np.testing.assert_array_equal(swapped.offsets, native.offsets)
    np.testing.assert_array_equal(swapped.z, native.z)


def _object_array(items: list) -> np.ndarray:
    """A 1-d numpy array of arbitrary objects (np.array would stack equal-length arrays)."""
    array = np.empty(len(items), dtype=object)
    array[:] = items
    return array


def test_calling_the_finder_takes_what_run_takes(sample):
    # __call__ is documented as "same as run", but refused timings=.
    import inspect

    assert inspect.signature(PVFinder.__call__) == inspect.signature(PVFinder.run)
    timings: dict[str, float] = {}
    PVFinder(backend="cpu")(sample.tracks.select_events(0, 5), timings=timings)
    assert set(timings) == {"extrapolate", "histogram", "find_peaks", "fit_vertices", "cleanup"}


def test_chunking_does_not_change_results(sample):
    tracks = sample.tracks.select_events(0, 60)
    whole = PVFinder(backend="cpu")(tracks)
    small_chunks = dataclasses.replace(get_backend("cpu"), events_per_chunk=7)
    chunked = PVFinder(backend=small_chunks)(tracks)
    np.testing.assert_array_equal(chunked.offsets, whole.offsets)
    np.testing.assert_array_equal(chunked.z, whole.z)
    np.testing.assert_array_equal(chunked.weights, whole.weights)


def test_a_batch_grows_the_outputs_about_once(sample):
    """Chunk after chunk, fresh outputs grow for the whole batch at the rate seen so far
    rather than a little at each chunk (every growth copies what is already written)."""
    tracks = sample.tracks.select_events(0, 600)
    finder = PVFinder(backend=dataclasses.replace(get_backend("cpu"), events_per_chunk=40))
    outputs, grown = VertexBuffers(np), []
    reserve = outputs._reserve

    def counting(*args, **kwargs):
        before = outputs.vertices, outputs.weights
        reserve(*args, **kwargs)
        grown.append((outputs.vertices is not before[0], outputs.weights is not before[1]))

    outputs._reserve = counting
    vertices = finder(tracks, out=outputs)
    assert len(grown) == 15
    assert sum(v for v, _ in grown) <= 2 and sum(w for _, w in grown) <= 2, grown
    np.testing.assert_array_equal(vertices.weights, PVFinder(backend="cpu")(tracks).weights)


@pytest.mark.parametrize("precision", [np.float64, np.float32])
def test_work_memory_follows_the_chunk_not_the_batch(sample, precision):
    """Stage 1 runs chunk by chunk too: a batch ten chunks long allocates about one chunk's
    work arrays, not a copy of every track at the beamline; nor a float64 copy of float32
    states (the CPU kernels read them as they are)."""
    batch = in_precision(sample.tracks.select_events(0, 500), precision)
    finder = PVFinder(backend=dataclasses.replace(get_backend("cpu"), events_per_chunk=50))
    finder.warmup(batch.select_events(0, 50))
    outputs = PVFinder(backend="cpu").warmup(batch).output_buffers()  # room for the batch
    tracemalloc.start()
    try:
        finder(batch, out=outputs)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    at_beamline = batch.n_tracks * (6 * 8 + 1)  # six float64 arrays and the usable flags
    assert peak < 0.25 * at_beamline, (peak, at_beamline)


def test_a_tilted_beamline_is_a_change_of_frame(sample, backend_name):
    # Shear every event as if the beamline ran through (0.3, -0.2) at z = 0 with slopes of a
    # few mrad: 0.6 mm off at z = 200, far beyond the track errors. Told the tilted beamline,
    # the finder must find the sheared vertices of the untilted events, with the covariance
    # J C Jᵀ; told only the position, it loses some (tracks fail the beamline χ² cut).
    tracks = sample.tracks.select_events(0, 200)
    bx, by, beam_tx, beam_ty = 0.3, -0.2, 3e-3, -2e-3
    tilted_fields = {name: getattr(tracks, name) for name in TRACK_FIELDS}
    tilted_fields.update(x=tracks.x + bx + beam_tx * tracks.z, tx=tracks.tx + beam_tx,
                         y=tracks.y + by + beam_ty * tracks.z, ty=tracks.ty + beam_ty)
    tilted = TrackBatch.from_arrays(counts=tracks.counts, **tilted_fields)

    straight = find_vertices(tracks, backend=backend_name)
    config = PVFinderConfig(beamline=(bx, by, beam_tx, beam_ty))
    found = find_vertices(tilted, config=config, backend=backend_name)

    np.testing.assert_array_equal(found.offsets, straight.offsets)
    z = straight.z
    shear = np.zeros((len(z), 3, 3))
    shear[:, 0, 0] = shear[:, 1, 1] = shear[:, 2, 2] = 1.0
    shear[:, 0, 2], shear[:, 1, 2] = beam_tx, beam_ty
    expected_cov = shear @ _covariances(straight) @ shear.transpose(0, 2, 1)
    tolerance = {"rtol": 1e-9, "atol": 1e-12}
    np.testing.assert_allclose(found.x, straight.x + bx + beam_tx * z, **tolerance)
    np.testing.assert_allclose(found.y, straight.y + by + beam_ty * z, **tolerance)
    np.testing.assert_allclose(found.z, z, **tolerance)
    np.testing.assert_allclose(_covariances(found), expected_cov, **tolerance)
    for name in ("chi2", "ndof", "n_tracks", "weights"):
        np.testing.assert_allclose(getattr(found, name), getattr(straight, name), **tolerance)

    unaware = find_vertices(tilted, config=PVFinderConfig(beamline=(bx, by)), backend=backend_name)
    assert unaware.n_vertices < 0.95 * straight.n_vertices


def _covariances(vertices) -> np.ndarray:
    """Each vertex's 3×3 covariance matrix."""
    xx, xy, yy, xz, yz, zz = (getattr(vertices, f"cov_{name}")
                              for name in ("xx", "xy", "yy", "xz", "yz", "zz"))
    return np.stack([np.stack([xx, xy, xz], -1), np.stack([xy, yy, yz], -1),
                     np.stack([xz, yz, zz], -1)], -2)


def test_weights_describe_the_event_tracks(sample, backend_name):
    tracks = sample.tracks.select_events(0, 40)
    vertices = find_vertices(tracks, backend=backend_name)
    per_vertex = np.diff(vertices.weight_offsets)
    np.testing.assert_array_equal(per_vertex, np.repeat(tracks.counts, vertices.counts))
    assert vertices.weights.min() >= 0 and vertices.weights.max() <= 1
    sums = np.add.reduceat(vertices.weights, vertices.weight_offsets[:-1]) if len(per_vertex) else []
    np.testing.assert_allclose(sums, vertices.n_tracks, rtol=1e-9)
    assert np.all(np.diff(vertices.z)[np.diff(np.repeat(np.arange(40), vertices.counts)) == 0] > 0)


def test_vertices_without_weights_are_the_same(sample, backend_name):
    """weights=False leaves out the per-track weights and nothing else, chunk by chunk, and
    the same output buffers then serve a call with weights again."""
    tracks = sample.tracks.select_events(0, 300)
    backend = dataclasses.replace(get_backend(backend_name), events_per_chunk=70)
    finder = PVFinder(backend=backend)
    full = finder(tracks)
    buffers = finder.output_buffers()
    lean = finder(tracks, out=buffers, to_host=True, weights=False)
    assert lean.weights is None and lean.weight_offsets is None
    assert_same_vertices(lean, full, weights=False, backend=backend_name)
    again = finder(tracks, out=buffers, to_host=True)
    assert_same_vertices(again, full, backend=backend_name)
    assert find_vertices(tracks, backend=backend_name, weights=False).weights is None


def test_one_clean_vertex_is_found_where_it_is(backend_name):
    arrays = one_vertex_event(40, z0=12.5)
    vertices = find_vertices({"counts": [40], **arrays}, backend=backend_name)
    assert vertices.counts.tolist() == [1]
    assert vertices.z[0] == pytest.approx(12.5, abs=5 * np.sqrt(vertices.cov_zz[0]))
    # Adaptive weights of clean tracks average ~0.7 (w = e^(-χ²/2) / (e^(-χ²_cut/2) + e^(-χ²/2))
    # cannot exceed 1/(1 + e^-2) ≈ 0.88 for an isolated vertex), so Σw is below the track count.
    assert 0.6 * 40 < vertices.n_tracks[0] < 0.88 * 40
    assert vertices.ndof[0] == pytest.approx(2 * vertices.n_tracks[0] - 3)


def test_empty_and_degenerate_events(backend_name):
    arrays = one_vertex_event(40)
    single = {k: v[:1] for k, v in arrays.items()}
    parallel = dict(single, tx=np.zeros(1), ty=np.zeros(1))  # never reaches the beam: unusable
    events = [arrays, {k: v[:0] for k, v in arrays.items()}, single, parallel]
    flat = {k: np.concatenate([e[k] for e in events]) for k in arrays}
    vertices = find_vertices({"counts": [40, 0, 1, 1], **flat}, backend=backend_name)
    assert vertices.counts.tolist() == [1, 0, 0, 0]
    nothing = find_vertices({"counts": np.zeros(0, int), **{k: v[:0] for k, v in arrays.items()}},
                            backend=backend_name)
    assert nothing.n_events == 0 and nothing.n_vertices == 0


def test_five_thousand_tracks_in_one_event(backend_name):
    events = [one_vertex_event(500, z0=z, seed=i) for i, z in enumerate(np.linspace(-200, 200, 10))]
    flat = {k: np.concatenate([e[k] for e in events]) for k in events[0]}
    vertices = find_vertices({"counts": [5000], **flat}, backend=backend_name)
    assert vertices.counts.tolist() == [10]
    np.testing.assert_allclose(vertices.z, np.linspace(-200, 200, 10), atol=0.05)


def three_vertex_event() -> dict[str, np.ndarray]:
    """One event of 90 tracks from three vertices, at z = -50, 0 and 50 mm."""
    events = [one_vertex_event(30, z0=z, seed=i) for i, z in enumerate((-50.0, 0.0, 50.0))]
    return {k: np.concatenate([e[k] for e in events]) for k in events[0]}


def test_seed_overflow_is_reported_at_the_users_line():
    tracks = {"counts": [90], **three_vertex_event()}
    config = PVFinderConfig(max_vertices_per_event=2)
    finder = PVFinder(config, backend="cpu")
    entry_points = {"call": finder, "run": finder.run,
                    "find_vertices": lambda t: find_vertices(t, config, backend="cpu"),
                    "z_histograms": finder.z_histograms}
    for name, entry_point in entry_points.items():
        what = "kept" if name == "z_histograms" else "fitted"
        with pytest.warns(SeedOverflowWarning, match=f"event 0: 3.*were {what}") as caught:
            result = entry_point(tracks)
        # Whichever entry point: the warning points at the caller's line, here.
        assert [w.filename for w in caught] == [__file__], name
        kept = len(result.seeds[0]) if name == "z_histograms" else result.counts[0]
        assert kept == 2, name


def test_bad_input_is_a_clear_error():
    arrays = one_vertex_event(5)
    with pytest.raises(ValueError, match="'ty' is nan in event 1"):
        find_vertices({"counts": [2, 3], **dict(arrays, ty=np.array([0.1, 0.1, 0.1, np.nan, 0.1]))},
                      backend="cpu")
    with pytest.raises(ValueError, match="counts add up to 6"):
        find_vertices({"counts": [2, 4], **arrays}, backend="cpu")
    with pytest.raises(TypeError, match="TrackBatch, an awkward array"):
        find_vertices([1, 2, 3], backend="cpu")
    with pytest.raises(ValueError, match=r"field 'x' must be a list per event like the "
                                         r"others \(flat arrays need counts or offsets\)"):
        find_vertices(arrays, backend="cpu")
    jagged = {name: ak.unflatten(values, [2, 3]) for name, values in arrays.items()}
    with pytest.raises(ValueError, match="carry their own counts"):
        find_vertices({**jagged, "counts": [2, 3]}, backend="cpu")
    with pytest.raises(ValueError, match=r"the lists of 'y' differ in length from those of "
                                         r"'x' \(event 0: 2 against 3\)"):
        find_vertices({**jagged, "x": ak.unflatten(arrays["x"], [3, 2])}, backend="cpu")
    with pytest.raises(ValueError, match="field 'y' has 3 events but 'x' has 2"):
        find_vertices({**jagged, "y": ak.unflatten(arrays["y"], [2, 3, 0])}, backend="cpu")
    with pytest.raises(ValueError, match="event 1 of field 'x' is None"):
        find_vertices({**jagged, "x": ak.Array([list(arrays["x"][:2]), None])}, backend="cpu")
    # No events as Python lists (a type awkward cannot know), and uproot's library="np" form
    # with a None event, named as the other forms name it.
    assert find_vertices({name: [] for name in TRACK_FIELDS}, backend="cpu").n_events == 0
    with_none = _object_array([arrays["x"][:2], None])
    with pytest.raises(ValueError, match="event 1 of field 'x' is None"):
        find_vertices({**jagged, "x": with_none}, backend="cpu")
    # A list of lists, or a 2-d numpy array, is a list per event too.
    as_lists = {**jagged, "x": ak.to_list(jagged["x"])}
    np.testing.assert_array_equal(find_vertices(as_lists, backend="cpu").z,
                                  find_vertices(jagged, backend="cpu").z)
    # One value per event, or per batch, is not a list per track: zipping broadcast it.
    for per_event in (np.ones(2), 0.0):
        with pytest.raises(ValueError, match="field 'x' must be a list per event like the"):
            find_vertices({**jagged, "x": per_event}, backend="cpu")
    with pytest.raises(ValueError, match="the lists of 'y' differ in length from those of 'x'"):
        find_vertices({**jagged, "x": np.ones((2, 1))}, backend="cpu")
    with pytest.raises(ValueError, match="unknown backend"):
        PVFinder(backend="tpu")
    # Arguments of the wrong kind fail at once, naming what is expected, not on first use.
    with pytest.raises(TypeError, match="config must be a PVFinderConfig, not dict"):
        find_vertices(arrays | {"counts": [5]}, config={"chi2_cut": 9.0}, backend="cpu")
    with pytest.raises(TypeError, match="out must be VertexBuffers"):
        PVFinder(backend="cpu")(arrays | {"counts": [5]}, out=np.zeros(3))


@pytest.mark.parametrize("beamline", [(0.0, 0.0), (0.1, -0.05, 2e-4, -1e-4)])
def test_float32_tracks_are_read_exactly(sample, backend_name, beamline):
    # float32 states (as ROOT files hold them) and the same values in float64 give the same
    # vertices and weights to the last bit: the kernels read float32 as float64, whether they
    # take it as it is (CPU) or after a conversion (CUDA, a tilted beamline; to rounding there,
    # the order of its histogram's atomic adds).
    as32 = in_precision(sample.tracks.select_events(0, 60), np.float32)
    as64 = in_precision(as32, np.float64)
    finder = PVFinder(PVFinderConfig(beamline=beamline), backend=backend_name)
    single, double = finder(as32).to_host(), finder(as64).to_host()
    assert single.n_vertices > 100
    assert_same_vertices(single, double, backend=backend_name)


def test_mixed_precision_buffers_meet_the_kernels_in_one_precision(sample):
    # Wrapped buffers are not made one precision: a float64 field among float32 ones, or a
    # strided float32 field, must still reach the kernels as warmup compiled them (all
    # float64 for the mixture, all float32 with the strided field copied), not as a new
    # mixture compiled on the call.
    from pvfinder.kernels.cpu.extrapolate import extrapolate

    as32 = in_precision(sample.tracks.select_events(0, 20), np.float32)
    fields = {name: getattr(as32, name) for name in TRACK_FIELDS}
    strided = np.repeat(fields["cov_xx"], 2)[::2]
    finder = PVFinder(backend="cpu").warmup()
    expected = finder(as32).to_host()
    compiled = len(extrapolate.signatures)
    for changed in ({"x": fields["x"].astype(np.float64)}, {"cov_xx": strided}):
        batch = TrackBatch.from_buffers(as32.offsets, **{**fields, **changed})
        vertices = finder(batch).to_host()
        np.testing.assert_array_equal(vertices.z, expected.z)
        np.testing.assert_array_equal(vertices.weights, expected.weights)
    assert len(extrapolate.signatures) == compiled


def test_z_histograms_show_what_the_fit_starts_from(sample, backend_name):
    tracks = sample.tracks.select_events(0, 5)
    finder = PVFinder(backend=backend_name)
    view = finder.z_histograms(tracks)
    cfg = finder.config
    assert view.density.shape == (5, cfg.n_bins)
    assert len(view.bin_edges) == cfg.n_bins + 1 and len(view.bin_centres) == cfg.n_bins
    # Every usable track adds unit probability (its window lies inside the histogram here).
    n_usable = np.array([np.count_nonzero(row) for row in view.usable.tolist()])
    np.testing.assert_allclose(view.density.sum(axis=1), n_usable, rtol=1e-9)
    vertices = finder(tracks)
    for event in range(5):
        seeds = np.asarray(view.seeds[event])
        assert np.all(np.diff(seeds) > 0)
        # Clean-up only removes seeds, and each surviving vertex lies near its seed.
        z = vertices.z[vertices.offsets[event] : vertices.offsets[event + 1]]
        assert len(z) <= len(seeds)
        assert np.all(np.min(np.abs(z[:, None] - seeds[None, :]), axis=1) < 2.0)


@pytest.mark.gpu
@requires_cuda
def test_mapping_of_cupy_arrays_is_checked_on_the_device(sample, monkeypatch):
    import cupy

    tracks = sample.tracks.select_events(0, 50)
    on_device = {name: cupy.asarray(getattr(tracks, name)) for name in TRACK_FIELDS}
    # No field may come back to the host: only offsets (per event) and the results do.
    copied = []
    real_get = cupy.ndarray.get
    monkeypatch.setattr(cupy.ndarray, "get", lambda self, *a, **k: (
        copied.append(self.size), real_get(self, *a, **k))[1])
    batch = as_track_batch({"offsets": tracks.offsets, **on_device})
    assert all(isinstance(getattr(batch, name), cupy.ndarray) for name in TRACK_FIELDS)
    assert all(size <= tracks.n_events + 1 for size in copied)
    monkeypatch.undo()
    expected = find_vertices(tracks, backend="cuda")
    got = find_vertices({"offsets": tracks.offsets, **on_device}, backend="cuda")
    assert_same_vertices(got, expected, backend="cuda")
    bad = dict(on_device, cov_yy=on_device["cov_yy"].copy())
    bad["cov_yy"][int(tracks.offsets[7]) + 2] = -1.0
    with pytest.raises(ValueError, match="variance 'cov_yy' is negative .* in event 7"):
        as_track_batch({"offsets": tracks.offsets, **bad})


@pytest.mark.gpu
@requires_cuda
def test_cpu_and_cuda_pipelines_agree_on_simulated_events(sample):
    """The whole chain on both backends, 1000 events at ν = 7.6: vertex counts exactly, floats
    to the tolerances of the stage-by-stage comparison (tests/test_cuda_stages.py): positions
    1e-4 mm, covariances 1e-6 relative, χ², n_tracks and weights 1e-6 relative."""
    cpu = find_vertices(sample.tracks, backend="cpu")
    gpu = find_vertices(sample.tracks, backend="cuda")
    np.testing.assert_array_equal(gpu.offsets, cpu.offsets)
    np.testing.assert_array_equal(gpu.weight_offsets, cpu.weight_offsets)
    for field, rtol, atol in [("x", 0, 1e-4), ("y", 0, 1e-4), ("z", 0, 1e-4),
                              ("chi2", 1e-6, 1e-9), ("ndof", 1e-6, 1e-9),
                              ("n_tracks", 1e-6, 1e-9)]:
        np.testing.assert_allclose(getattr(gpu, field), getattr(cpu, field), rtol=rtol,
                                   atol=atol, err_msg=field)
    for field in ("cov_xx", "cov_xy", "cov_yy", "cov_xz", "cov_yz", "cov_zz"):
        np.testing.assert_allclose(getattr(gpu, field), getattr(cpu, field), rtol=1e-6,
                                   atol=1e-15, err_msg=field)
    np.testing.assert_allclose(gpu.weights, cpu.weights, rtol=1e-6, atol=1e-9)
    assert len(cpu.z) > 5000  # the comparison covers the sample's vertices


def test_exactly_max_vertices_clusters_is_no_overflow():
    # Three clusters in three slots lose nothing: no SeedOverflowWarning.
    tracks = {"counts": [90], **three_vertex_event()}
    finder = PVFinder(PVFinderConfig(max_vertices_per_event=3), backend="cpu")
    with warnings.catch_warnings():
        warnings.simplefilter("error", SeedOverflowWarning)
        view = finder.z_histograms(tracks)
        vertices = finder(tracks)
    assert len(view.seeds[0]) == 3 and vertices.counts.tolist() == [3]


def test_an_overflow_names_the_event_of_the_batch_not_of_its_chunk():
    quiet, crowded = one_vertex_event(30, z0=0.0, seed=9), three_vertex_event()
    tracks = {"counts": [30, 30, 90],
              **{k: np.concatenate([quiet[k], quiet[k], crowded[k]]) for k in quiet}}
    backend = dataclasses.replace(get_backend("cpu"), events_per_chunk=1)
    finder = PVFinder(PVFinderConfig(max_vertices_per_event=2), backend=backend)
    with pytest.warns(SeedOverflowWarning, match="event 2: 3") as caught:
        finder(tracks)
    assert [list(w.message.events) for w in caught] == [[2]]


def test_an_uproot_tree_or_its_branches_are_refused_with_a_hint():
    # A TTree is a Mapping of branches, and a TBranch converts to an empty awkward array:
    # both gave a batch of 0 events without a word.
    import pathlib

    import uproot

    sample_file = pathlib.Path(__file__).resolve().parent.parent / "data" / "sample.root"
    with uproot.open(sample_file) as file:
        tree = file["tracks"]
        with pytest.raises(TypeError, match=r"tracks is an uproot TTree.*arrays\(how=dict\)"):
            find_vertices(tree, backend="cpu")
        with pytest.raises(TypeError, match=r"field 'x' is an uproot TBranch"):
            find_vertices({name: tree[name] for name in TRACK_FIELDS}, backend="cpu")
        assert find_vertices(tree.arrays(how=dict), backend="cpu").n_events == tree.num_entries
