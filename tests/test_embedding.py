"""The embedding API: a finder built once and called in a hot loop, into reused outputs."""

from __future__ import annotations

import contextlib
import copy as copy_module
import dataclasses
import json
import os
import pathlib
import pickle
import re
import subprocess
import sys
import threading
import time
import tracemalloc
import warnings

import awkward as ak
import numpy as np
import pytest

from pvfinder import find_vertices
from pvfinder.backends import STAGES, _NumbaLaunchGuard, get_backend
from pvfinder.config import PVFinderConfig
from pvfinder.events import TRACK_FIELDS, TrackBatch, VertexBatch
from pvfinder.pipeline import PVFinder, SeedOverflowWarning, VertexBuffers

from .conftest import requires_cuda
from .test_io import assert_same_vertices


def as_buffers(tracks: TrackBatch, xp=np) -> TrackBatch:
    """The batch as a caller's own float64 SoA buffers (on the device for CuPy)."""
    return TrackBatch.from_buffers(
        xp.asarray(np.asarray(tracks.offsets, dtype=np.int64)),
        **{name: xp.asarray(np.asarray(getattr(tracks, name), dtype=np.float64))
           for name in TRACK_FIELDS},
    )


def test_calls_into_buffers_match_find_vertices(sample, backend_name):
    xp = get_backend(backend_name).xp
    batches = [sample.tracks.select_events(start, start + 100) for start in (0, 300, 600)]
    finder = PVFinder(backend=backend_name).warmup(as_buffers(batches[0], xp))
    buffers = finder.output_buffers()
    for batch in batches:
        got = finder(as_buffers(batch, xp), out=buffers)
        assert_same_vertices(got, find_vertices(batch, backend=backend_name),
                             backend=backend_name)


def test_result_lives_until_the_buffers_are_used_again(sample):
    first, second = sample.tracks.select_events(0, 50), sample.tracks.select_events(50, 100)
    finder = PVFinder(backend="cpu").warmup(first)
    buffers = finder.output_buffers()
    result = finder(first, out=buffers)
    kept, as_awkward = result.copy(), result.to_awkward()
    assert np.shares_memory(result.z, buffers.vertices)  # a view, not a copy
    finder(second, out=buffers)
    assert not np.array_equal(result.z[:5], kept.z[:5])  # overwritten, as documented
    assert_same_vertices(kept, find_vertices(first, backend="cpu"))
    # to_awkward() owns its arrays (the README's trigger loop keeps such results)
    assert_same_vertices(VertexBatch.from_awkward(as_awkward), kept)
    # Without out=, the caller owns the result: later calls leave it alone.
    owned = finder(first)
    finder(second)
    assert_same_vertices(owned, kept)


def test_buffers_grow_for_a_bigger_batch_and_keep_earlier_chunks(sample):
    small_chunks = dataclasses.replace(get_backend("cpu"), events_per_chunk=64)
    finder = PVFinder(backend=small_chunks)
    buffers = VertexBuffers(np, n_events=1, n_vertices=1, n_weights=1)
    batch = sample.tracks.select_events(0, 300)  # five chunks, each growing the outputs
    got = finder(batch, out=buffers)
    assert_same_vertices(got, find_vertices(batch, backend="cpu"))
    assert buffers.vertices.shape[1] >= got.n_vertices


def repeated(tracks: TrackBatch, times: int) -> TrackBatch:
    """The batch's events ``times`` times over, as float64 buffers."""
    counts = np.tile(tracks.counts, times)
    offsets = np.concatenate(([0], np.cumsum(counts)))
    return TrackBatch.from_buffers(offsets, **{
        name: np.tile(np.asarray(getattr(tracks, name), dtype=np.float64), times)
        for name in TRACK_FIELDS})


def steady_call_allocations(finder: PVFinder, batch: TrackBatch, weights: bool
                            ) -> tuple[int, int, int]:
    """One warm call into reused buffers: (bytes Python still holds after it, peak bytes
    Python allocated during it, Numba runtime allocations during it)."""
    from numba.core.runtime import _nrt_python, rtsys

    finder.warmup(batch, weights=weights)
    buffers = finder.output_buffers()
    if not weights:  # no room made for weights nobody asks for
        assert len(buffers.weights) == 0
    finder(batch, out=buffers, weights=weights)
    _nrt_python.memsys_enable_stats()
    tracemalloc.start()
    try:
        before, numba_before = tracemalloc.get_traced_memory()[0], rtsys.get_allocation_stats()
        result = finder(batch, out=buffers, weights=weights)
        del result
        after, peak = tracemalloc.get_traced_memory()
        numba_allocations = rtsys.get_allocation_stats().alloc - numba_before.alloc
    finally:
        tracemalloc.stop()
        _nrt_python.memsys_disable_stats()
    return after - before, peak - before, numba_allocations


@pytest.mark.parametrize("weights", [True, False], ids=["weights", "no-weights"])
def test_steady_calls_allocate_nothing_that_outlives_them_or_grows_with_the_batch(sample,
                                                                                    weights):
    # Both batches in one chunk, so that both calls make the same kernel launches.
    finder = PVFinder(backend=dataclasses.replace(get_backend("cpu"), events_per_chunk=4096))
    small = repeated(sample.tracks, 1)
    held_small, peak_small, numba_small = steady_call_allocations(finder, small, weights)
    held_big, peak_big, numba_big = steady_call_allocations(finder, repeated(sample.tracks, 4),
                                                            weights)
    # Nothing is kept from one call to the next (a few Python objects at most) ...
    assert held_small < 4096 and held_big < 4096
    # ... Python allocates only fixed-size temporaries (numpy's casting buffers, frames): a
    # single per-track array of the big batch (6.8 MB) would break both bounds ...
    assert peak_big < peak_small + 65536, (peak_small, peak_big)
    assert peak_big < 50_000, peak_big  # README's figure, for 4000 events in one chunk
    input_bytes = sum(getattr(small, name).nbytes for name in TRACK_FIELDS)
    assert peak_small < 0.05 * input_bytes
    # ... and the kernels allocate no arrays: what the Numba runtime counts is the same fixed
    # number per call whatever the batch (the wrappers of the array arguments of each launch),
    # where per-event scratch would add thousands.
    assert numba_small == numba_big < 200, (numba_small, numba_big)


@pytest.mark.gpu
@requires_cuda
def test_cuda_steady_calls_do_not_grow_the_memory_pool(sample):
    import cupy

    batch = as_buffers(sample.tracks, cupy)
    finder = PVFinder(backend="cuda").warmup(batch)
    buffers = finder.output_buffers()
    finder(batch, out=buffers)
    pool = cupy.get_default_memory_pool()
    cupy.cuda.get_current_stream().synchronize()
    used, total = pool.used_bytes(), pool.total_bytes()
    for _ in range(3):
        finder(batch, out=buffers)
    cupy.cuda.get_current_stream().synchronize()
    assert pool.total_bytes() == total
    assert pool.used_bytes() == used


def test_one_finder_per_thread(sample, backend_name):
    xp = get_backend(backend_name).xp
    batches = [as_buffers(sample.tracks.select_events(i * 200, i * 200 + 200), xp)
               for i in range(4)]
    expected = [find_vertices(batch, backend=backend_name) for batch in batches]
    results: dict[int, list[VertexBatch]] = {}

    def work(index: int) -> None:
        finder = PVFinder(backend=backend_name).warmup(batches[index])
        buffers = finder.output_buffers()
        # Each thread loops over all batches, so threads run kernels at the same time.
        results[index] = [finder(batch, out=buffers).copy() for batch in batches * 3]

    threads = [threading.Thread(target=work, args=(i,)) for i in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert sorted(results) == [0, 1, 2, 3]
    for outputs in results.values():
        for got, want in zip(outputs, expected * 3):
            assert_same_vertices(got, want, backend=backend_name)


def test_threads_asking_first_for_a_backend_at_once_share_it(monkeypatch):
    """Each got a Backend of its own: its own launch guard (so concurrent launches where Numba
    cannot take them), and a finder that would not pickle."""
    from pvfinder import backends

    make = backends._FACTORIES["cpu"]

    def slowly() -> backends.Backend:
        time.sleep(0.05)  # every thread has asked before the first backend is made
        return make()

    monkeypatch.setattr(backends, "_BACKENDS", {})
    monkeypatch.setitem(backends._FACTORIES, "cpu", slowly)
    start, got = threading.Barrier(4), []

    def ask() -> None:
        start.wait()
        got.append(get_backend("cpu"))

    threads = [threading.Thread(target=ask) for _ in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert len(got) == 4 and all(backend is got[0] for backend in got)


def test_a_finder_refuses_a_call_from_a_second_thread_while_it_runs(sample):
    """Two threads sharing one finder overwrote each other's work buffers: wrong vertices,
    no error. The second call is refused; the first one's result is right."""
    batch = sample.tracks.select_events(0, 100)
    finder = PVFinder(backend="cpu")
    inside, release = threading.Event(), threading.Event()
    find = finder._find

    def held_inside(*args):
        inside.set()
        release.wait(60)
        return find(*args)

    finder._find = held_inside
    results = []
    thread = threading.Thread(target=lambda: results.append(finder(batch)))
    thread.start()
    assert inside.wait(60)
    try:
        with pytest.raises(RuntimeError, match="running already"):
            finder(batch)
        with pytest.raises(RuntimeError, match="running already"):
            finder.z_histograms(batch)
    finally:
        release.set()
        thread.join()
    assert_same_vertices(results[0], find_vertices(batch, backend="cpu"))
    finder._find = find
    assert_same_vertices(finder(batch), results[0])  # free again


def test_z_histograms_copy_the_work_buffers_before_another_call_may_use_them(sample):
    """z_histograms read the work buffers after letting go of the finder: a call from another
    thread right then gave it that call's histograms (found by the diff review)."""
    first, second = sample.tracks.select_events(0, 20), sample.tracks.select_events(20, 40)
    finder = PVFinder(backend="cpu")
    expected = finder.z_histograms(first)
    exclusive = finder._exclusive

    @contextlib.contextmanager
    def then_another_call():
        with exclusive():
            yield
        finder._exclusive = exclusive
        finder(second)  # what another thread may do as soon as the finder is free

    finder._exclusive = then_another_call
    got = finder.z_histograms(first)
    np.testing.assert_array_equal(got.density, expected.density)
    assert ak.all(got.z_beam == expected.z_beam)
    assert ak.all(got.seeds == expected.seeds)


_NOTHING_COMPILED_AFTER_WARMUP = """
import numpy as np
from pvfinder.kernels.cpu import extrapolate, fit_vertices
from pvfinder.pipeline import PVFinder
from pvfinder.simulation import simulate
from pvfinder.events import TRACK_FIELDS, TrackBatch
tracks = simulate(30, seed=2).tracks
finder = PVFinder(backend="cpu").warmup(tracks)  # float64 states
def kernels():
    return len(extrapolate.extrapolate.signatures), len(fit_vertices._fit_events.signatures)
before = kernels()
fields = {name: getattr(tracks, name).astype(np.float32) for name in TRACK_FIELDS}
finder(TrackBatch.from_buffers(tracks.offsets, **fields))  # as ROOT files hold them
for array in fields.values():
    array.flags.writeable = False  # np.frombuffer, memory maps
finder(TrackBatch.from_buffers(tracks.offsets, **fields))
print(before == kernels())
"""


def test_nothing_is_compiled_after_warmup_for_float32_or_read_only_states():
    """warmup(batch) of float64 states compiled only those: float32 (ROOT files) and
    read-only arrays then stalled a call for 15 s each, compiling (in a fresh process)."""
    done = subprocess.run([sys.executable, "-c", _NOTHING_COMPILED_AFTER_WARMUP],
                          capture_output=True, text=True, timeout=600, check=False)
    assert done.returncode == 0, done.stderr
    assert done.stdout.split() == ["True"]


def test_a_finder_pickles_and_deep_copies_as_its_config_and_backend(sample, backend_name):
    """For Dask or multiprocessing workers: the copy finds the same vertices with its own
    buffers, and the original's buffers stay its own."""
    config = dataclasses.replace(PVFinderConfig(), chi2_cut=6.0, min_tracks_per_vertex=5)
    finder = PVFinder(config, backend=backend_name).warmup(sample.tracks)
    expected = finder(sample.tracks)
    for copy in (pickle.loads(pickle.dumps(finder)), copy_module.deepcopy(finder)):
        assert copy.config == config
        assert copy.backend.name == finder.backend.name
        assert copy._buffers is not finder._buffers
        assert_same_vertices(copy(sample.tracks), expected, backend=backend_name)
    # A backend of its own would come back as the registry's one of that name: refused.
    own = dataclasses.replace(get_backend(backend_name), events_per_chunk=64)
    with pytest.raises(TypeError, match="on a backend of its own"):
        copy_module.deepcopy(PVFinder(config, backend=own))
    renamed = dataclasses.replace(own, name="mine")
    with pytest.raises(TypeError, match="on a backend of its own"):
        pickle.dumps(PVFinder(config, backend=renamed))
    # A shallow copy of a backend recursed in __getattr__ before its fields were set.
    assert copy_module.copy(own) == own


_FORKED_CHILD = """
import os, numba, pvfinder
from pvfinder.backends import _runs_gnu_openmp
from pvfinder.simulation import simulate
tracks = simulate(20, seed=1).tracks
print(pvfinder.find_vertices(tracks, backend="cpu").n_vertices, _runs_gnu_openmp(), flush=True)
pid = os.fork()
if pid == 0:
    try:
        print(pvfinder.find_vertices(tracks, backend="cpu").n_vertices, flush=True)
    except RuntimeError as error:
        print("refused:", error, flush=True)
    os._exit(0)
print("child", os.waitpid(pid, 0)[1], flush=True)
"""


def test_a_forked_child_of_a_gnu_openmp_process_refuses_instead_of_being_killed():
    """GNU OpenMP cannot run after a fork and Numba ends such a child with SIGTERM at its
    first launch (a multiprocessing pool then waits forever); elsewhere the child works."""
    done = subprocess.run([sys.executable, "-c", _FORKED_CHILD], capture_output=True,
                          text=True, timeout=300, check=False)
    assert done.returncode == 0, done.stderr
    first, child, status = done.stdout.splitlines()
    n_vertices, gnu_openmp = first.split()
    assert status == "child 0"  # it exited by itself
    if gnu_openmp == "True":
        assert child.startswith("refused:") and "get_context('spawn')" in child
    else:
        assert child == n_vertices


def test_launches_are_serialised_where_numba_cannot_take_concurrent_ones(monkeypatch):
    # The layer Numba runs, not the one asked for, decides: NUMBA_THREADING_LAYER=forksafe
    # without TBB runs workqueue, and two finders in two threads aborted the process.
    import numba

    guard = _NumbaLaunchGuard()
    layers = iter(["workqueue", "workqueue", "omp"])
    monkeypatch.setattr(numba, "threading_layer", lambda: next(layers))
    for expected_lock in (True, True, True, False):  # until a launch has run under omp
        with guard:
            assert guard._lock.locked() is expected_lock
    assert not guard.needed
    # Before any parallel kernel has run, Numba cannot say: the lock stays.
    def not_yet():
        raise ValueError("Threading layer is not initialized.")

    monkeypatch.setattr(numba, "threading_layer", not_yet)
    fresh = _NumbaLaunchGuard()
    with fresh:
        assert fresh._lock.locked()
    assert fresh.needed
    assert isinstance(get_backend("cpu").launch_guard, _NumbaLaunchGuard)


def test_warmup_without_a_batch_and_an_empty_batch(monkeypatch):
    # Without a batch, warmup runs one for every precision the backend reads as it is, so
    # that float32 states from a file do not compile the kernels on the first call.
    finder, precisions = PVFinder(backend="cpu"), []
    run = finder.run
    monkeypatch.setattr(finder, "run", lambda batch, **kw: (precisions.append(batch.x.dtype),
                                                            run(batch, **kw))[1])
    finder.warmup()
    assert precisions == list(finder.backend.state_dtypes) == [np.float32, np.float64]
    empty = TrackBatch.from_buffers(np.zeros(4, dtype=np.int64),
                                    **{name: np.zeros(0) for name in TRACK_FIELDS})
    vertices = finder(empty, out=finder.output_buffers())
    assert vertices.n_events == 3 and vertices.n_vertices == 0
    np.testing.assert_array_equal(vertices.offsets, [0, 0, 0, 0])
    np.testing.assert_array_equal(vertices.weight_offsets, [0])


def test_from_buffers_wraps_without_copying_and_checks_structure(sample):
    tracks = sample.tracks.select_events(0, 5)
    fields = {name: np.ascontiguousarray(getattr(tracks, name), dtype=np.float64)
              for name in TRACK_FIELDS}
    offsets = np.asarray(tracks.offsets, dtype=np.int64)
    batch = TrackBatch.from_buffers(offsets, **fields)
    assert batch.x is fields["x"] and batch.offsets is offsets
    with pytest.raises(ValueError, match="missing field.*cov_tyty"):
        TrackBatch.from_buffers(offsets, **{k: v for k, v in fields.items() if k != "cov_tyty"})
    # An extra field alone: no "missing field(s) none"; the message lists the fields.
    with pytest.raises(ValueError, match=r"^tracks: unknown field\(s\) mc_pv \(the fields "
                                         r"are x, y, z, tx, ty, .*\)$"):
        TrackBatch.from_buffers(offsets, **fields, mc_pv=np.zeros(len(fields["x"])))
    with pytest.raises(ValueError, match=r"field 'z' must have shape \(\d+,\)"):
        TrackBatch.from_buffers(offsets, **{**fields, "z": fields["z"][:-1]})
    with pytest.raises(ValueError, match="offsets must start at 0"):
        TrackBatch.from_buffers(offsets + 1, **fields)
    # Types are structure too: float offsets were truncated, text states parsed.
    with pytest.raises(ValueError, match="offsets must be integers, got float64"):
        TrackBatch.from_buffers(offsets + 0.5, **fields)
    with pytest.raises(ValueError, match="field 'tx' must hold floats, got <U"):
        TrackBatch.from_buffers(offsets, **{**fields, "tx": fields["tx"].astype(str)})


def test_wrapped_offsets_that_run_backwards_are_an_error_on_every_backend(sample, backend_name):
    # from_buffers does not scan the offsets: the kernels do, and both backends say the same.
    # The CPU found made-up vertices in the overlapping ranges; CUDA raised.
    tracks = sample.tracks.select_events(0, 3)
    offsets = np.array(tracks.offsets, dtype=np.int64)
    offsets[1] = offsets[2] + 5  # event 0 runs past event 1's end, event 1 backwards
    batch = TrackBatch.from_buffers(offsets, **{name: np.asarray(getattr(tracks, name),
                                                                 np.float64)
                                                for name in TRACK_FIELDS})
    with pytest.raises(ValueError, match=r"histogram: offsets decrease or point outside the "
                                         r"track arrays \(first seen in event 1\)"):
        find_vertices(batch, backend=backend_name)


def test_of_many_bad_events_every_backend_names_the_first(sample, backend_name):
    # The CUDA blocks raced to report: any bad event could be named, where the CPU names the
    # first. 399 events run backwards from event 600 on, spread over many blocks.
    offsets = np.array(sample.tracks.offsets, dtype=np.int64)
    offsets[601:1000] = offsets[600] - np.arange(1, 400)
    batch = TrackBatch.from_buffers(offsets, **{
        name: np.asarray(getattr(sample.tracks, name), np.float64) for name in TRACK_FIELDS})
    with pytest.raises(ValueError, match=r"\(first seen in event 600\)$"):
        find_vertices(batch, backend=backend_name)


def test_a_bad_input_noted_on_the_device_is_not_left_for_the_next_call(sample, monkeypatch):
    # The CUDA kernels note bad offsets and the pipeline raises them at the end; a call that
    # failed for another reason first (a warning made an error) left the note to be raised
    # by the next, valid call. The CPU backend stands in, with CUDA's way of reporting.
    noted = []
    backend = dataclasses.replace(get_backend("cpu"),
                                  check_errors=lambda: noted.append("checked"))
    finder = PVFinder(PVFinderConfig(max_vertices_per_event=2), backend=backend)
    with warnings.catch_warnings():
        warnings.simplefilter("error", SeedOverflowWarning)
        with pytest.raises(SeedOverflowWarning):
            finder(sample.tracks.select_events(0, 20))
    assert noted[-2:] == ["checked", "checked"]  # before the warning; cleared on the way out
    checks = len(noted)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", SeedOverflowWarning)
        finder(sample.tracks.select_events(0, 1))
    assert len(noted) > checks


def test_bad_offsets_noted_on_the_device_are_raised_before_a_seed_overflow(sample):
    # CUDA notes bad offsets and skips the event; a seed overflow of the other events was
    # warned of first, and with warnings as errors the call raised that instead.
    def noted():
        raise ValueError("histogram: offsets decrease or point outside the track arrays "
                         "(first seen in event 3)")

    backend = dataclasses.replace(get_backend("cpu"), check_errors=noted)
    finder = PVFinder(PVFinderConfig(max_vertices_per_event=2), backend=backend)
    with warnings.catch_warnings():
        warnings.simplefilter("error", SeedOverflowWarning)
        with pytest.raises(ValueError, match=r"first seen in event 3\)$"):
            finder(sample.tracks.select_events(0, 20))


@pytest.mark.parametrize("origin", ["run1.root", ("run1.root", "5"), ("run1.root",),
                                    ("run1.root", True), ("run1.root", -1)])
def test_a_bad_origin_is_refused_at_the_call(sample, origin):
    # It was used only to name a seed overflow: a long job failed at its first busy event
    # with 'too many values to unpack'.
    with pytest.raises(TypeError, match="origin must be \\(str, int\\)"):
        PVFinder(backend="cpu")(sample.tracks.select_events(0, 2), origin=origin)


def test_submodules_are_attributes_of_a_plain_import():
    # "import pvfinder; pvfinder.validation.validate(...)" raised AttributeError, and later
    # so did pvfinder.benchmark_physics and pvfinder.kernels, left out of a hand-kept list.
    import pvfinder

    package = pathlib.Path(pvfinder.__file__).parent
    public = sorted({path.stem for path in package.glob("[!_]*.py")}
                    | {path.parent.name for path in package.glob("[!_]*/__init__.py")}
                    | {"kernels"})  # installed from kernels/ (a package-dir mapping)
    code = ("import sys, pvfinder; print(*(getattr(pvfinder, name).__name__ "
            "for name in sys.argv[1:]))")
    done = subprocess.run([sys.executable, "-c", code, *public], capture_output=True,
                          text=True, timeout=120, check=False)
    assert done.stdout.split() == [f"pvfinder.{name}" for name in public], done.stderr
    assert set(pvfinder.__all__) == set(pvfinder._HOMES) | {"__version__"}


def test_the_command_handles_stops_before_the_heavy_imports():
    # import pvfinder loaded numpy, awkward and Numba (0.3-0.6 s), and main() numpy, before
    # main() set up its handling of Ctrl-C and SIGTERM: a stop then printed a traceback or
    # left no message.
    code = ("import sys; from pvfinder import cli; catch = cli._catch_sigterm; "
            "cli._catch_sigterm = lambda: print(sorted({'numpy', 'awkward', 'numba', "
            "'uproot'} & set(sys.modules))) or catch(); cli.main(['info'])")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          timeout=120, check=False)
    assert done.stdout.splitlines()[0] == "[]", done.stderr


def test_a_work_array_too_large_names_itself_and_what_sizes_it():
    # numpy's "Unable to allocate 27.9 GiB for an array with shape ..." named no setting.
    from pvfinder.pipeline import _Buffers

    class NoMemory:
        @staticmethod
        def empty(*_, **__):
            raise MemoryError

    with pytest.raises(MemoryError, match=r"work array 'hist' of shape \(2048, 4000000\), "
                                          r"float64: 65.5 GB \(a histogram of \(zmax - zmin\)"):
        _Buffers(NoMemory).get("hist", (2048, 4_000_000), np.float64)


def test_arguments_of_the_wrong_kind_are_named(sample):
    # "'list' object has no attribute 'get'", "unhashable type: 'list'" and an
    # AttributeError deep in concatenate before.
    tracks = sample.tracks.select_events(0, 2)
    with pytest.raises(TypeError, match="timings must be a dict"):
        PVFinder(backend="cpu")(tracks, timings=[])
    for flag in ("weights", "to_host"):  # "no" was taken as True
        with pytest.raises(TypeError, match=f"{flag} must be True or False, got 'no'"):
            PVFinder(backend="cpu")(tracks, **{flag: "no"})
    with pytest.raises(TypeError, match="backend must be a name .* or a Backend, got list"):
        get_backend([])
    vertices = find_vertices(tracks, backend="cpu")
    with pytest.raises(TypeError, match="only VertexBatch objects concatenate, got TrackBatch"):
        VertexBatch.concatenate([vertices, tracks])


def test_output_buffers_written_by_another_call_are_refused(sample):
    # Two finders in two threads given the same out= gave wrong vertices in 4 of 20 calls.
    tracks = sample.tracks.select_events(0, 5)
    buffers = PVFinder(backend="cpu").output_buffers()
    # Held as another finder's call in another thread holds them:
    with buffers._writing(), pytest.raises(RuntimeError, match="being written by another call"):
        PVFinder(backend="cpu")(tracks, out=buffers)
    assert PVFinder(backend="cpu")(tracks, out=buffers).n_events == 5  # free again


def test_output_buffers_cannot_be_swapped_for_arrays_of_another_size():
    # _reserve() grew the arrays it knew of; a short weight_offsets put in place of its own
    # was written past its end (a corrupted heap, the process ended with SIGSEGV).
    buffers = PVFinder(backend="cpu").output_buffers()
    for name in ("offsets", "vertices", "weight_offsets", "weights"):
        with pytest.raises(AttributeError):
            setattr(buffers, name, np.zeros(5))


@pytest.mark.parametrize("events_per_chunk", [4, 65536])  # several chunks, one
@pytest.mark.parametrize(("damaged", "start", "named"), [
    (7, lambda offsets: offsets[8] + 1, 7),  # event 7 runs backwards
    (1, lambda offsets: offsets[-1] + 5, 0),  # event 1 starts past the tracks: event 0 ends there
])
def test_offsets_that_run_backwards_are_named_by_their_event_in_the_batch(
        sample, events_per_chunk, damaged, start, named):
    # Beyond the first chunk the kernels counted events from the chunk's start: event 452
    # for event 2500 with the CPU's chunks of 2048, another number on the GPU. The check of a
    # batch of several chunks then named another event than the kernels, in other words
    # ("tracks offsets decrease at event 1" for the second case): for 2049-65 536 events the
    # CPU (chunks of 2048) and CUDA (65 536) named the same offsets differently.
    tracks = sample.tracks.select_events(0, 10)
    offsets = np.array(tracks.offsets, dtype=np.int64)
    offsets[damaged] = start(offsets)
    batch = TrackBatch.from_buffers(offsets, **{name: np.asarray(getattr(tracks, name),
                                                                 np.float64)
                                                for name in TRACK_FIELDS})
    backend = dataclasses.replace(get_backend("cpu"), events_per_chunk=events_per_chunk)
    words = (r"^histogram: offsets decrease or point outside the track arrays "
             rf"\(first seen in event {named}\)$")
    with pytest.raises(ValueError, match=words):
        PVFinder(backend=backend)(batch)
    with pytest.raises(ValueError, match=words):
        PVFinder(backend=backend).z_histograms(batch)


def test_a_nan_state_in_wrapped_buffers_makes_the_track_unusable(sample):
    tracks = sample.tracks.select_events(0, 20)
    fields = {name: np.array(getattr(tracks, name), dtype=np.float64) for name in TRACK_FIELDS}
    reference = find_vertices(TrackBatch.from_buffers(tracks.offsets, **fields), backend="cpu")
    fields["x"][tracks.offsets[3]] = np.nan  # one track of event 3
    vertices = find_vertices(TrackBatch.from_buffers(tracks.offsets, **fields), backend="cpu")
    nan_track_weights = [
        vertices.weights[vertices.weight_offsets[v]]  # the NaN track is the event's first
        for v in range(vertices.offsets[3], vertices.offsets[4])
    ]
    assert nan_track_weights and not np.any(nan_track_weights)
    np.testing.assert_array_equal(vertices.counts, reference.counts)


def test_benchmark_hardware_counts_the_cores_the_process_may_use():
    # A run pinned to one core ("all threads" = 1) must not be labelled with the machine's.
    script = ("import os; os.sched_setaffinity(0, {min(os.sched_getaffinity(0))}); "
              "from pvfinder.benchmark import hardware_description; "
              "print(hardware_description('cpu')['cpu_threads_available'])")
    env = {key: value for key, value in os.environ.items() if key != "NUMBA_NUM_THREADS"}
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True,
                          env=env, check=True, timeout=120)
    assert done.stdout.split() == ["1"]



def test_benchmark_hardware_names_the_cpu_the_kernels_are_compiled_for():
    # A VM's CPU model may be just "AMD EPYC": the compile target tells Zen 3 from Zen 4.
    import llvmlite.binding

    script = ("from pvfinder.benchmark import hardware_description; "
              "print(hardware_description('cpu')['cpu_target'])")
    for override, expected in ((None, llvmlite.binding.get_host_cpu_name()),
                               ("generic", "generic")):
        env = {key: value for key, value in os.environ.items() if key != "NUMBA_CPU_NAME"}
        if override:
            env["NUMBA_CPU_NAME"] = override
        done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True,
                              env=env, check=True, timeout=120)
        assert done.stdout.split() == [expected]

def test_latency_benchmark_reports_median_and_tail(tmp_path):
    from pvfinder.benchmark import run_latency_benchmark
    from pvfinder.cli import main

    result = run_latency_benchmark("cpu", batch_sizes=[4, 1], seconds_per_size=0.05)
    assert result["kind"] == "latency" and result["hardware"]["cpu_count"] >= 1
    rows = result["measurements"]
    assert [row["batch"] for row in rows] == [1, 4]
    for row in rows:
        assert row["calls"] >= 20
        assert 0 < row["median_us"] <= row["p99_us"] <= row["max_us"]
    output = tmp_path / "latency.json"
    assert main(["bench", "--latency", "--batch", "2", "-o", str(output)]) == 0
    assert json.loads(output.read_text())["measurements"][0]["batch"] == 2


def test_throughput_benchmark_times_the_thread_counts_in_turns(monkeypatch):
    """Each thread count gets a row per ν with its per-stage split; the counts take turns run
    by run (so that a change in the machine's load does not fall between the two timings whose
    ratio is the speed-up), and the thread count is restored afterwards."""
    import numba

    from pvfinder import benchmark

    if numba.config.NUMBA_NUM_THREADS < 2:
        pytest.skip("needs two threads")
    chosen = []
    set_num_threads = numba.set_num_threads
    monkeypatch.setattr(numba, "set_num_threads",
                        lambda n: (chosen.append(n), set_num_threads(n))[1])
    # Two threads before one, so that the restored count differs from the last one set.
    result = benchmark.run_benchmark("cpu", n_events=50, nu_values=[2.0, 7.6], threads=[2, 1],
                                     repeats=3)
    assert result["kind"] == "throughput" and result["backend"] == "cpu"
    rows = result["measurements"]
    assert [(row["nu"], row["threads"]) for row in rows] == [
        (2.0, 2), (2.0, 1), (7.6, 2), (7.6, 1)]
    for row in rows:
        assert row["events"] == 50 and row["events_per_s"] > 0
        assert 0 < row["us_per_event"] <= row["median_us_per_event"]  # best run, median run
        assert set(row["stage_us_per_event"]) == set(STAGES)
        assert 0 < sum(row["stage_us_per_event"].values())
    assert chosen[:6] == [2, 1, 2, 1, 2, 1]
    assert numba.get_num_threads() == numba.config.NUMBA_NUM_THREADS
    start_up = result["start_up"]  # new processes, each checked to find the 100 events
    assert start_up["events"] == 100
    assert 0 < start_up["seconds_to_first_result"] <= start_up["median_seconds"]


def test_throughput_benchmark_restores_the_thread_count_when_stopped(monkeypatch):
    # A Ctrl-C (or an error) during a one-thread run left the caller's finder on one thread.
    import numba

    from pvfinder import benchmark

    if numba.config.NUMBA_NUM_THREADS < 2:
        pytest.skip("needs two threads")

    def stopped(*_args, **_kwargs):
        numba.set_num_threads(1)
        raise KeyboardInterrupt

    monkeypatch.setattr(benchmark, "_start_up", lambda *_: {"seconds_to_first_result": 0.0})
    monkeypatch.setattr(benchmark, "_time_in_turns", stopped)
    before = numba.get_num_threads()
    with pytest.raises(KeyboardInterrupt):
        benchmark.run_benchmark("cpu", n_events=10, nu_values=[2.0], threads=[2, 1], repeats=1)
    assert before > 1 and numba.get_num_threads() == before


@pytest.mark.parametrize(
    ("function", "options", "message"),
    [
        # A ZeroDivisionError, a list index error and a refusal of ν only after the warm-up,
        # the start-up runs and the first ν's measurement, before.
        ("run_benchmark", {"n_events": 0}, "n_events takes whole numbers from 1, got 0"),
        ("run_benchmark", {"repeats": 0}, "repeats takes whole numbers from 1, got 0"),
        ("run_benchmark", {"nu_values": [2.0, 150.0]}, "nu_values 150.0: condition nu must be"),
        ("run_benchmark", {"nu_values": [0.0]}, "nu_values takes positive values, got 0.0"),
        ("run_benchmark", {"threads": [1, 1]}, "threads names a value twice: 1 1"),
        ("run_benchmark", {"threads": [10_000]}, "threads takes whole numbers from 1 to"),
        ("run_benchmark", {"n_events": 2.5}, "n_events takes whole numbers from 1, got 2.5"),
        ("run_latency_benchmark", {"batch_sizes": [0]}, "batch_sizes takes whole numbers"),
        ("run_latency_benchmark", {"nu": -1.0}, "nu takes positive values, got -1.0"),
        ("run_io_benchmark", {"n_files": 0}, "n_files takes whole numbers from 1, got 0"),
        ("run_io_benchmark", {"workers": -1}, "workers takes whole numbers from 1, got -1"),
        ("run_io_benchmark", {"input_compressions": ["lz5"]}, "unknown compression 'lz5'"),
        ("run_io_benchmark", {"step_size": "ten"}, "step size"),
    ],
)
def test_benchmark_functions_refuse_bad_settings_before_anything_runs(function, options,
                                                                      message, monkeypatch):
    import pvfinder.simulation
    from pvfinder import benchmark, benchmark_io

    def must_not_run(*_args, **_kwargs):
        raise AssertionError("the benchmark ran")

    monkeypatch.setattr(pvfinder.simulation, "simulate", must_not_run)
    monkeypatch.setattr(benchmark, "PVFinder", must_not_run)
    module = benchmark_io if function == "run_io_benchmark" else benchmark
    with pytest.raises(ValueError, match=re.escape(message)):
        getattr(module, function)(**options)


def test_benchmark_checks_take_numpy_arrays():
    # run_benchmark(nu_values=np.array([5.0, 7.0])) was refused: "got array([5., 7.])".
    from pvfinder.benchmark import check_counts, check_pile_ups

    check_pile_ups({"nu_values": np.array([5.0, 7.0])})
    check_counts({"threads": np.array([1, 2])})
    with pytest.raises(ValueError, match="nu_values names a value twice"):
        check_pile_ups({"nu_values": np.array([5.0, 5.0])})


def test_start_up_benchmark_stops_at_the_result_and_reports_a_failed_process(sample,
                                                                            monkeypatch):
    from pvfinder import benchmark

    three = sample.tracks.select_events(0, 3)
    # A process that has its result at once and then takes four seconds to exit (a start of
    # Python takes well under one second, but a loaded machine may slow it).
    monkeypatch.setattr(benchmark, "_FIRST_RESULT",
                        "import time; print(3, time.time(), flush=True); time.sleep(4)")
    start_up = benchmark._start_up("cpu", three, repeats=1)
    assert 0 < start_up["seconds_to_first_result"] < 3.5
    monkeypatch.setattr(benchmark, "_FIRST_RESULT", "import sys; sys.exit('no vertices')")
    with pytest.raises(RuntimeError, match="the start-up run failed:\nno vertices"):
        benchmark._start_up("cpu", three, repeats=1)


def test_a_start_up_process_imports_the_pvfinder_that_runs_the_benchmark(sample, tmp_path,
                                                                          monkeypatch):
    # Started in a folder of its own, it imported the installed pvfinder, not the one of a
    # checkout that `python -m pvfinder bench` ran from (or none at all).
    from pvfinder import benchmark

    checkout = tmp_path / "checkout" / "pvfinder"
    checkout.mkdir(parents=True)
    (checkout / "__init__.py").write_text("")
    monkeypatch.setattr(benchmark, "__file__", str(checkout / "benchmark.py"))
    monkeypatch.setattr(benchmark, "_FIRST_RESULT", (
        "import os, sys, time, pvfinder\n"
        f"if os.path.dirname(pvfinder.__file__) != {str(checkout)!r}:\n"
        "    sys.exit('imported ' + pvfinder.__file__)\n"
        "print(3, time.time())\n"))
    start_up = benchmark._start_up("cpu", sample.tracks.select_events(0, 3), repeats=1)
    assert start_up["events"] == 3


def test_every_overflow_is_reported_in_a_loop_over_batches():
    # Python's default filter shows a warning once per line of code: a finder called in a
    # loop reported the first batch's overflow and dropped the later ones' silently. Run in
    # a fresh interpreter, whose filters are Python's defaults (pytest sets its own).
    script = (
        "from pvfinder import PVFinder, PVFinderConfig\n"
        "from pvfinder.simulation import simulate\n"
        "finder = PVFinder(PVFinderConfig(max_vertices_per_event=2), backend='cpu')\n"
        "tracks = simulate(3, seed=5, nu=12.0).tracks\n"
        "for _ in range(3):\n"
        "    finder(tracks)\n")
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True,
                          timeout=300, check=True)
    assert done.stderr.count("SeedOverflowWarning") == 3
    # A filter of the user's own still wins.
    ignored = subprocess.run([sys.executable, "-W", "ignore::UserWarning", "-c", script],
                             capture_output=True, text=True, timeout=300, check=True)
    assert "SeedOverflowWarning" not in ignored.stderr
