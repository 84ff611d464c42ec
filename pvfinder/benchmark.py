"""Throughput benchmarks: events/s per stage and end to end, with the hardware named."""

from __future__ import annotations

import datetime
import functools
import numbers
import os
import platform
import site
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from .backends import STAGES, get_backend
from .events import TRACK_FIELDS, _is_count, offsets_from_counts
from .pipeline import PVFinder

__all__ = ["check_counts", "check_pile_ups", "hardware_description", "result_header",
           "run_benchmark", "run_latency_benchmark"]

DEFAULT_GPU_BATCHES = (1_000, 10_000, 100_000, 1_000_000)
DEFAULT_LATENCY_BATCHES = (1, 16, 256, 4096)


def _cpu_model() -> str:
    try:
        with open("/proc/cpuinfo") as cpuinfo:
            for line in cpuinfo:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def _compile_target() -> str:
    """The CPU that Numba's LLVM generates code for (``NUMBA_CPU_NAME`` or the host's)."""
    import llvmlite.binding
    import numba

    return numba.config.CPU_NAME or llvmlite.binding.get_host_cpu_name()


def hardware_description(backend_name: str) -> dict[str, Any]:
    """The machine, the library versions and, for CUDA, the GPU, driver and runtime."""
    import numba

    info: dict[str, Any] = {
        "cpu": _cpu_model(),
        # What Numba compiles the kernels for: a VM may name only the vendor ("AMD EPYC")
        # while hosts of one name differ by a generation (znver3, znver4) and by AVX-512.
        "cpu_target": _compile_target(),
        "cpu_count": os.cpu_count(),
        # The cores this process may use (its affinity, or NUMBA_NUM_THREADS): "all threads".
        "cpu_threads_available": numba.config.NUMBA_NUM_THREADS,
        "python": platform.python_version(),
        "numpy": np.__version__,
        "numba": numba.__version__,
    }
    if backend_name == "cuda":
        from .kernels.cuda._module import device_properties

        info.update(device_properties())
    return info


def result_header(kind: str, backend_name: str) -> dict[str, Any]:
    """What every benchmark's JSON starts with: its date (now, UTC), its kind, the backend and
    the hardware (:func:`hardware_description`)."""
    return {"date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
            "kind": kind, "backend": backend_name, "hardware": hardware_description(backend_name)}


def _values(value: Any) -> list[Any]:
    """``value`` as a list: None as none, a sequence or array as its items, else alone."""
    if value is None:
        return []
    if isinstance(value, np.ndarray):
        return value.ravel().tolist()
    return list(value) if isinstance(value, Sequence) else [value]


def _check_once(name: str, values: list[Any]) -> None:
    """Refuse a value given twice: its rows would be measured twice, or overwrite each other."""
    if len(set(values)) != len(values):
        raise ValueError(f"{name} names a value twice: {' '.join(map(str, values))}")


def check_counts(named: Mapping[str, int | Sequence[int] | None], *,
                 at_most: int | None = None) -> None:
    """Refuse a count (events, files, threads, batch sizes, repeats) before a run of minutes.

    Parameters
    ----------
    named : mapping
        Each count, or sequence of counts, under the name the caller knows it by (a parameter
        or a command-line option); ``None`` is not checked.
    at_most : int, optional
        The largest count allowed.

    Raises
    ------
    ValueError
        Naming the first count that is not a whole number from 1 (to ``at_most``), or that a
        sequence holds twice.
    """
    top = "" if at_most is None else f" to {at_most}"
    for name, value in named.items():
        values = _values(value)
        for count in values:
            if not _is_count(count) or not 1 <= count <= (count if at_most is None else at_most):
                raise ValueError(f"{name} takes whole numbers from 1{top}, got {count!r}")
        _check_once(name, values)


def check_pile_ups(named: Mapping[str, float | Sequence[float] | None]) -> None:
    """Refuse a pile-up ν that the simulation would refuse only when its turn comes.

    Parameters
    ----------
    named : mapping
        Each ν, or sequence of them, under the name the caller knows it by; ``None`` is not
        checked.

    Raises
    ------
    ValueError
        Naming the first ν that is not positive or that :class:`~pvfinder.simulation.Conditions`
        refuses (above 100), or that a sequence holds twice.
    """
    from .simulation import Conditions

    for name, value in named.items():
        values = _values(value)
        for nu in values:
            if isinstance(nu, bool) or not isinstance(nu, numbers.Real) or not nu > 0:
                raise ValueError(f"{name} takes positive values, got {nu!r}")
            try:
                Conditions().replace(nu=nu)
            except ValueError as error:
                raise ValueError(f"{name} {nu!r}: {error}") from None
        _check_once(name, values)


def _in_turns(jobs: dict[Any, Callable[[], Any]], repeats: int) -> dict[Any, list[Any]]:
    """What each job returns in ``repeats`` calls, the jobs taking turns call by call: a change
    in the machine's load then falls on all of them rather than between the timings that are
    compared."""
    results: dict[Any, list[Any]] = {key: [] for key in jobs}
    for _ in range(repeats):
        for key, job in jobs.items():
            results[key].append(job())
    return results


def _time_in_turns(finder: PVFinder, tracks: Any, setups: dict[Any, Callable[[], Any]],
                   repeats: int) -> dict[Any, tuple[list[float], dict[str, float]]]:
    """For each setup (such as a CPU thread count), the wall times of ``repeats`` whole runs on
    the steady path (warmed-up finder, reused output buffers) and the best per-stage split
    (separate runs: the split synchronises the device after every stage), the setups taking
    turns (see :func:`_in_turns`)."""
    finder.warmup(tracks)
    buffers = finder.output_buffers()

    def timed(setup: Callable[[], Any]) -> Callable[[], tuple[float, dict[str, float]]]:
        def run() -> tuple[float, dict[str, float]]:
            setup()
            start = time.perf_counter()
            finder(tracks, out=buffers)
            finder.backend.synchronize()
            seconds = time.perf_counter() - start
            split: dict[str, float] = {}
            finder.run(tracks, out=buffers, timings=split)
            return seconds, split
        return run

    runs = _in_turns({key: timed(setup) for key, setup in setups.items()}, repeats)
    return {key: ([seconds for seconds, _ in results],
                  {stage: min(split[stage] for _, split in results) for stage in results[0][1]})
            for key, results in runs.items()}


def _time_run(finder: PVFinder, tracks: Any, repeats: int
              ) -> tuple[list[float], dict[str, float]]:
    """:func:`_time_in_turns` of a single setup."""
    return _time_in_turns(finder, tracks, {None: lambda: None}, repeats)[None]


# What a new process does to get its first vertices: import, read a batch, find; then it
# prints how many events it got and the wall-clock time it got them at (its exit, which
# takes a few tenths of a second more, is not part of the start-up).
_FIRST_RESULT = """
import sys
import time
import numpy as np
from pvfinder import find_vertices
arrays = np.load(sys.argv[1])
vertices = find_vertices({name: arrays[name] for name in arrays.files}, backend=sys.argv[2])
print(vertices.n_events, time.time())
"""
_START_UP_TIMEOUT_S = 300


def _start_up(backend_name: str, tracks: Any, repeats: int) -> dict[str, Any]:
    """Seconds from starting a new Python process to its first result on ``tracks``, best
    and median of ``repeats`` processes; the kernels are already compiled and cached (the
    caller has warmed up a finder), so this is the start-up a second process sees."""
    seconds = []
    with tempfile.TemporaryDirectory() as folder:
        batch = Path(folder) / "tracks.npz"
        np.savez(batch, counts=tracks.counts,
                 **{name: getattr(tracks, name) for name in TRACK_FIELDS})
        for _ in range(repeats):
            start = time.time()  # wall clock: the child stamps its result with the same clock
            done = subprocess.run([sys.executable, "-c", _FIRST_RESULT, str(batch), backend_name],
                                  capture_output=True, text=True, check=False, cwd=folder,
                                  env=_child_environment(), timeout=_START_UP_TIMEOUT_S)
            words = done.stdout.split()
            if done.returncode != 0 or len(words) != 2 or words[0] != str(tracks.n_events):
                raise RuntimeError(f"the start-up run failed:\n{done.stdout}{done.stderr}")
            seconds.append(float(words[1]) - start)
    return {"events": tracks.n_events, "seconds_to_first_result": min(seconds),
            "median_seconds": float(np.median(seconds))}


def _child_environment() -> dict[str, str]:
    """The environment of a start-up process, which runs in a folder of its own: this process's,
    with the folder of the pvfinder it runs first on PYTHONPATH, so that the child times the
    same code also when it came from a checkout (the current folder, a relative path) rather
    than an installation."""
    env = dict(os.environ)
    here = str(Path(__file__).resolve().parent.parent)
    if here not in site.getsitepackages():  # an installation is found anyway: no shadowing
        env["PYTHONPATH"] = os.pathsep.join([here, *filter(None, [env.get("PYTHONPATH")])])
    return env


def _measurement(n_events: int, run_seconds: Sequence[float], stages: dict[str, float]
                 ) -> dict[str, Any]:
    """A row of the results: the best run (and, for the spread, the median run) of
    ``run_seconds`` and the best per-stage split."""
    best = min(run_seconds)
    return {
        "events": n_events,
        "seconds": best,
        "events_per_s": n_events / best,
        "us_per_event": 1e6 * best / n_events,
        "median_us_per_event": 1e6 * float(np.median(run_seconds)) / n_events,
        "stage_us_per_event": {s: 1e6 * stages.get(s, 0.0) / n_events for s in STAGES},
    }


def run_benchmark(
    backend: str = "cpu",
    n_events: int = 20_000,
    nu_values: Sequence[float] = (2.0, 5.0, 7.6, 11.0, 15.0),
    threads: Sequence[int] | None = None,
    batch_sizes: Sequence[int] | None = None,
    seed: int = 7,
    repeats: int = 5,
    progress: Callable[[str], None] = lambda _: None,
) -> dict[str, Any]:
    """Measure the finder on simulated events.

    CPU: ``n_events`` events at each ν, for each thread count (default 1 and all cores), the
    thread counts taking turns. Every figure is the best of ``repeats`` runs on the steady
    path; ``median_us_per_event`` gives the median run, for the spread.
    CUDA: at ν = 7.6 for each batch size (data resident on the GPU, and including the
    host-to-device copy), then the ν scan at 100 000 events.
    Both: ``start_up``, the seconds a new process takes from its start to its first vertices
    (100 events) with the kernels already cached, best and median of ``repeats`` processes.

    Parameters
    ----------
    backend : {"cpu", "cuda", "auto"}
        Where the finder runs.
    n_events : int
        Events per CPU measurement.
    nu_values : sequence of float
        The pile-ups of the scan (at most 100, as the simulation takes).
    threads : sequence of int, optional
        CPU thread counts, each from 1 to the cores this process may use.
    batch_sizes : sequence of int, optional
        Events per call on a GPU (default 10³ to 10⁶).
    seed : int
        Seed of the simulated events.
    repeats : int
        Runs per figure.
    progress : callable
        Called with a line of text after each measurement.

    Returns
    -------
    dict
        JSON-serialisable results with the date, the hardware and every measurement.

    Raises
    ------
    ValueError
        For a count that is not a positive integer, a thread count beyond the cores, a ν the
        simulation refuses or a value given twice, before anything runs.
    """
    import numba

    from .simulation import simulate

    chosen = get_backend(backend)
    check_counts({"n_events": n_events, "batch_sizes": batch_sizes, "repeats": repeats})
    check_counts({"threads": threads}, at_most=numba.config.NUMBA_NUM_THREADS)
    check_pile_ups({"nu_values": nu_values})
    result: dict[str, Any] = {**result_header("throughput", chosen.name), "measurements": []}
    finder = PVFinder(backend=chosen).warmup()  # compiled, and cached for the start-up runs
    result["start_up"] = _start_up(chosen.name, simulate(100, seed=seed, nu=7.6).tracks,
                                   repeats)
    progress(f"a second process finds its first vertices after "
             f"{result['start_up']['seconds_to_first_result']:.2f} s")
    if chosen.name == "cpu":
        thread_counts = threads or sorted({1, numba.config.NUMBA_NUM_THREADS})
        callers_threads = numba.get_num_threads()
        try:  # the caller's thread count back also after an error or a Ctrl-C
            for nu in nu_values:
                tracks = simulate(n_events, seed=seed, nu=nu).tracks
                timed = _time_in_turns(finder, tracks, {
                    n_threads: functools.partial(numba.set_num_threads, n_threads)
                    for n_threads in thread_counts}, repeats)
                for n_threads, (run_seconds, stages) in timed.items():
                    row = {"threads": n_threads, "nu": nu,
                           **_measurement(n_events, run_seconds, stages)}
                    result["measurements"].append(row)
                    progress(f"cpu threads={n_threads} nu={nu}: {row['events_per_s']:,.0f} "
                             f"events/s ({row['us_per_event']:.1f} µs/event)")
        finally:
            numba.set_num_threads(callers_threads)
        return result

    largest = max(batch_sizes or DEFAULT_GPU_BATCHES)
    pool = simulate(min(largest, 100_000), seed=seed, nu=7.6).tracks
    for size in batch_sizes or DEFAULT_GPU_BATCHES:
        tracks = _tile(pool, size)
        resident = _on_device(tracks, chosen)
        run_seconds, stages = _time_run(finder, resident, repeats)
        row = {"nu": 7.6, "batch": size, "data": "on device",
               **_measurement(size, run_seconds, stages)}
        result["measurements"].append(row)
        progress(f"cuda batch={size} on device: {row['events_per_s']:,.0f} events/s")
        del resident  # a million events fill tens of GB: make room for the copied-in run
        chosen.xp.get_default_memory_pool().free_all_blocks()
        run_seconds, stages = _time_run(finder, tracks, repeats)
        row = {"nu": 7.6, "batch": size, "data": "host, copied in",
               **_measurement(size, run_seconds, stages)}
        result["measurements"].append(row)
        progress(f"cuda batch={size} with host-to-device copy: {row['events_per_s']:,.0f} events/s")
    for nu in nu_values:
        tracks = _on_device(simulate(100_000, seed=seed, nu=nu).tracks, chosen)
        run_seconds, stages = _time_run(finder, tracks, repeats)
        row = {"nu": nu, "batch": 100_000, "data": "on device",
               **_measurement(100_000, run_seconds, stages)}
        result["measurements"].append(row)
        progress(f"cuda nu={nu}: {row['events_per_s']:,.0f} events/s")
    return result


def run_latency_benchmark(
    backend: str = "cpu",
    batch_sizes: Sequence[int] | None = None,
    seconds_per_size: float = 2.0,
    nu: float = 7.6,
    seed: int = 7,
    progress: Callable[[str], None] = lambda _: None,
) -> dict[str, Any]:
    """Per-call latency of a warmed-up finder, as a trigger loop would see it.

    For each batch size (default 1, 16, 256 and 4096 events) consecutive batches of simulated
    events, already in float64 buffers on the backend's device, are passed one call at a
    time into reused output buffers, for about ``seconds_per_size`` (at least 20 calls). The
    clock stops when the results are ready (the device is synchronised).

    Parameters
    ----------
    backend : {"cpu", "cuda", "auto"}
        Where the finder runs.
    batch_sizes : sequence of int, optional
        Events per call.
    seconds_per_size : float
        How long to keep calling at each size.
    nu : float
        The pile-up of the events (at most 100).
    seed : int
        Seed of the simulated events.
    progress : callable
        Called with a line of text after each batch size.

    Returns
    -------
    dict
        JSON-serialisable results: per batch size the number of calls and the median,
        99th-percentile and maximum call time (µs), with the hardware named.

    Raises
    ------
    ValueError
        For a batch size that is not a positive integer or is given twice, or a ν the
        simulation refuses, before anything runs.
    """
    from .simulation import simulate

    chosen = get_backend(backend)
    check_counts({"batch_sizes": batch_sizes})
    check_pile_ups({"nu": nu})
    sizes = sorted(batch_sizes or DEFAULT_LATENCY_BATCHES)
    result: dict[str, Any] = {**result_header("latency", chosen.name), "nu": nu,
                              "measurements": []}
    pool = simulate(max(4 * sizes[-1], 1000), seed=seed, nu=nu).tracks
    finder = PVFinder(backend=chosen).warmup(_on_device(_tile(pool, sizes[-1]), chosen))
    buffers = finder.output_buffers()
    for size in sizes:
        n_batches = pool.n_events // size
        batches = [_on_device(pool.select_events(i * size, (i + 1) * size), chosen)
                   for i in range(min(n_batches, 64))]
        finder(batches[0], out=buffers)
        times: list[float] = []
        deadline = time.perf_counter() + seconds_per_size
        while len(times) < 20 or time.perf_counter() < deadline:
            batch = batches[len(times) % len(batches)]
            start = time.perf_counter()
            finder(batch, out=buffers)
            chosen.synchronize()
            times.append(time.perf_counter() - start)
        us = 1e6 * np.asarray(times)
        row = {"batch": size, "calls": len(times), "median_us": float(np.median(us)),
               "p99_us": float(np.percentile(us, 99)), "max_us": float(us.max()),
               "events_per_s_at_median": size / (1e-6 * float(np.median(us)))}
        result["measurements"].append(row)
        progress(f"{chosen.name} batch={size}: median {row['median_us']:,.0f} µs, "
                 f"p99 {row['p99_us']:,.0f} µs over {len(times)} calls")
    return result


def _tile(tracks: Any, n_events: int) -> Any:
    """``n_events`` events made by repeating ``tracks`` (to reach batch sizes beyond the pool)."""
    from .events import TrackBatch

    reps = -(-n_events // tracks.n_events)
    counts = np.tile(tracks.counts, reps)[:n_events]
    n_tracks = int(counts.sum())
    fields = {name: np.tile(getattr(tracks, name), reps)[:n_tracks] for name in TrackBatch.FIELDS}
    return TrackBatch(offsets=offsets_from_counts(counts), **fields)


def _on_device(tracks: Any, backend: Any) -> Any:
    from .events import TrackBatch

    return TrackBatch.from_buffers(
        offsets=backend.asarray(tracks.offsets, dtype=np.int64),
        **{name: backend.asarray(getattr(tracks, name), dtype=np.float64)
           for name in TrackBatch.FIELDS},
    )
