"""End-to-end throughput of ``pvfinder reconstruct`` on ROOT files, and what I/O costs.

Simulated events are written to several files (once per input codec: ``zstd``, as
``pvfinder simulate`` writes them, ``zlib``, ROOT's long-standing choice, and ``lz4``), then
timed: reading and converting alone, reconstruction alone (tracks already in memory), writing
the vertices alone, the whole job in one process (:func:`pvfinder.distributed.reconstruct_files`,
which the command runs) and the same job on a local Dask cluster.
"""

from __future__ import annotations

import functools
import tempfile
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from .benchmark import _in_turns, check_counts, result_header
from .distributed import dask_client, plan_outputs, reconstruct_files
from .events import VERTEX_FIELDS
from .io import (
    DEFAULT_STEP_SIZE,
    DEFAULT_VERTEX_COMPRESSION,
    VertexWriter,
    _compression,
    iterate_tracks,
    parse_step_size,
    read_vertices,
    write_sample,
)
from .pipeline import PVFinder

__all__ = ["run_io_benchmark"]

TARGET = 0.30  # the goal: I/O and conversion add at most 30 % to the reconstruction


def run_io_benchmark(
    n_events: int = 200_000,
    n_files: int = 4,
    workers: int = 2,
    backend: str = "cpu",
    step_size: int | str = DEFAULT_STEP_SIZE,
    input_compressions: Sequence[str] = ("zstd", "zlib", "lz4"),
    repeats: int = 3,
    seed: int = 7,
    directory: str | Path | None = None,
    progress: Callable[[str], None] = lambda _: None,
) -> dict[str, Any]:
    """Measure ``pvfinder reconstruct`` end to end on simulated files (ν = 7.6).

    Parameters
    ----------
    n_events : int
        Events in all, split evenly over ``n_files`` files (file ``i`` simulated with seed
        ``seed + i``).
    n_files : int
        Input files of the job.
    workers : int
        Worker processes of the Dask run (``--dask local:N``); 0 skips it.
    backend : {"cpu", "cuda", "auto"}
        Where the finder runs.
    step_size : int or str
        Chunk read at a time, as ``--step-size``.
    input_compressions : sequence of str
        Codecs of the input files, one set of measurements each (``zstd`` is what
        ``pvfinder simulate`` writes; ``zlib`` takes two to three times its CPU time to
        read, ``lz4`` less than half).
    repeats : int
        Reading alone, the reconstruction alone and the one-process job run this many times
        each, in turns, and each keeps its best (writing alone and the Dask job run once).
    seed : int
        Seed of the first file's events (see ``n_events``).
    directory : path, optional
        Where to put the files (a temporary directory, removed afterwards, by default).
    progress : callable
        Called with a line of text after each measurement.

    Returns
    -------
    dict
        JSON-serialisable: date, hardware, sample and, per input codec, the seconds and
        events/s of each measurement (with the CPU seconds of this process's threads for the
        repeated ones: what reading costs the cores that also reconstruct) and
        ``io_overhead``: (end-to-end − reconstruction) / reconstruction, to compare with the
        target of 0.30.

    Raises
    ------
    ValueError
        For a count that is not a positive integer (``workers`` may be 0), a step size that
        uproot would not take or an unknown codec, before anything is simulated.
    """
    check_counts({"n_events": n_events, "n_files": n_files, "repeats": repeats,
                  "workers": workers or None})  # 0: no Dask run
    for codec in input_compressions:
        _compression(codec)  # refused now rather than after the first file's simulation
    parse_step_size(step_size)
    with tempfile.TemporaryDirectory(dir=directory) as folder:
        folder = Path(folder)
        inputs = _simulate_files(folder, n_events, n_files, seed, input_compressions, progress)
        finder = PVFinder(backend=backend).warmup()  # compilation is not what is measured
        result: dict[str, Any] = {
            **result_header("io", finder.backend.name),
            "sample": {"events": n_events, "files": n_files, "nu": 7.6, "step_size": step_size,
                       "output_compression": DEFAULT_VERTEX_COMPRESSION},
            "repeats": repeats,
            "target_io_overhead": TARGET,
            "runs": [],
        }
        if workers:
            result["dask_startup_seconds"] = round(
                _timed(lambda: _start_and_stop(workers))[0], 3)
        for codec, paths in inputs.items():
            run = _measure(paths, finder, backend, step_size, workers, repeats, folder / codec,
                           progress)
            result["sample"]["tracks"] = run.pop("tracks")
            result["runs"].append({"input_compression": codec, **run})
    return result


def _simulate_files(folder: Path, n_events: int, n_files: int, seed: int,
                    codecs: Sequence[str], progress: Callable[[str], None]
                    ) -> dict[str, list[Path]]:
    """The same simulated events written once per codec."""
    from .simulation import simulate

    paths: dict[str, list[Path]] = {codec: [] for codec in codecs}
    for i, size in enumerate(np.diff(np.linspace(0, n_events, n_files + 1).astype(int))):
        sample = simulate(int(size), seed=seed + i)
        for codec in codecs:
            (folder / codec).mkdir(exist_ok=True)
            paths[codec].append(folder / codec / f"sample_{i}.root")
            write_sample(paths[codec][-1], sample.tracks, sample.truth,
                         event_ids=sample.event_ids, compression=codec)
        progress(f"simulated sample_{i}: {size} events")
    return paths


def _measure(inputs: list[Path], finder: PVFinder, backend: str, step_size: int | str,
             workers: int, repeats: int, folder: Path, progress: Callable[[str], None]
             ) -> dict[str, Any]:
    # Each part alone, chunk by chunk as the end-to-end job goes. The chunks are also held in
    # memory once, untimed, for the reconstruction alone.
    chunks = list(iterate_tracks(inputs, step_size=step_size))
    n_events = sum(chunk.tracks.n_events for chunk in chunks)
    n_tracks = sum(chunk.tracks.n_tracks for chunk in chunks)
    outputs = finder.output_buffers()  # reused, as the end-to-end job reuses its own

    def read_and_convert() -> None:  # each chunk dropped when the next comes, as in the job
        for _ in iterate_tracks(inputs, step_size=step_size):
            pass

    def reconstruct() -> None:  # the job's work: it writes no per-track weights
        for chunk in chunks:
            finder(chunk.tracks, out=outputs, to_host=True, weights=False)

    def end_to_end() -> None:
        _check_done(reconstruct_files(plan_outputs(inputs, folder / "single"), backend=backend,
                                      step_size=step_size))

    timings, cpu = _best_taking_turns({"read_and_convert": read_and_convert,
                                       "reconstruction": reconstruct, "end_to_end": end_to_end},
                                      repeats)
    timings["write"] = _write_seconds(chunks, finder, outputs, folder / "parts.root")
    chunks.clear()  # memory back before the Dask run
    run: dict[str, Any] = {"input_mb": round(sum(p.stat().st_size for p in inputs) / 1e6, 1),
                           "tracks": n_tracks}
    if workers:
        timings["end_to_end_dask"], _ = _timed(lambda: _check_done(reconstruct_files(
            plan_outputs(inputs, folder / "dask"), backend=backend, step_size=step_size,
            scheduler=f"local:{workers}")))
        run["dask_matches_single"] = _same_outputs(folder / "single", folder / "dask")
    run["measurements"] = {
        name: {"seconds": round(seconds, 3), "events_per_s": round(n_events / seconds)}
        | ({"cpu_seconds": round(cpu[name], 3)} if name in cpu else {})
        for name, seconds in timings.items()}
    reco = timings["reconstruction"]
    run["io_overhead"] = {"end_to_end": round((timings["end_to_end"] - reco) / reco, 3),
                          "read_and_convert": round(timings["read_and_convert"] / reco, 3),
                          "write": round(timings["write"] / reco, 3)}
    progress(f"{inputs[0].parent.name}: " + ", ".join(
        f"{name} {n_events / seconds:,.0f} events/s" for name, seconds in timings.items())
        + f"; I/O adds {100 * run['io_overhead']['end_to_end']:.0f} %")
    return run


def _timed(job: Callable[[], Any]) -> tuple[float, float]:
    """Wall-clock seconds of ``job()``, and the CPU seconds of all this process's threads."""
    wall, cpu = time.perf_counter(), time.process_time()
    job()
    return time.perf_counter() - wall, time.process_time() - cpu


def _best_taking_turns(jobs: dict[str, Callable[[], Any]], repeats: int
                       ) -> tuple[dict[str, float], dict[str, float]]:
    """Each job's best wall-clock time of ``repeats`` runs, and that run's CPU time, the jobs
    taking turns (see :func:`~pvfinder.benchmark._in_turns`)."""
    runs = _in_turns({name: functools.partial(_timed, job) for name, job in jobs.items()},
                     repeats)
    best = {name: min(times) for name, times in runs.items()}
    return ({name: wall for name, (wall, _) in best.items()},
            {name: cpu for name, (_, cpu) in best.items()})


def _write_seconds(chunks: list[Any], finder: PVFinder, outputs: Any, output: Path) -> float:
    """Seconds spent writing the vertices of ``chunks``, reconstructed again one by one, and
    finishing the file."""
    seconds = 0.0
    with VertexWriter(output) as writer:
        for chunk in chunks:
            vertices = finder(chunk.tracks, out=outputs, to_host=True, weights=False)
            start = time.perf_counter()
            writer.write(vertices, chunk.event_ids, chunk.tracks.counts)
            seconds += time.perf_counter() - start
        start = time.perf_counter()  # leaving the block finishes the file
    return seconds + time.perf_counter() - start


def _start_and_stop(workers: int) -> None:
    """Start a local cluster and close it: the fixed cost inside the Dask run's time."""
    with dask_client(f"local:{workers}"):
        pass


def _check_done(results: list[Any]) -> None:
    failed = [result.error for result in results if result.status != "done"]
    if failed:
        raise RuntimeError(f"benchmark run failed: {failed}")


def _same_outputs(one: Path, other: Path) -> bool:
    for path in sorted(one.iterdir()):
        mine, theirs = read_vertices(path), read_vertices(other / path.name)
        if not (np.array_equal(mine.offsets, theirs.offsets)
                and all(np.array_equal(getattr(mine, f), getattr(theirs, f))
                        for f in VERTEX_FIELDS)):
            return False
    return True
