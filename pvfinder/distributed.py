"""Many files: reconstruct batches of ROOT files in this process or on a Dask cluster.

:func:`reconstruct_files` is the job behind ``pvfinder reconstruct``: it reads each input in
chunks, finds its vertices and writes them, one output per input or several inputs merged
into one. With ``scheduler`` the same job runs as a Dask graph (``uproot.dask`` and
``dask_awkward.map_partitions``) on a local cluster (``"local:N"``) or a running scheduler;
the vertices are identical to the single-process run because every event is reconstructed
on its own.

Dask is optional: ``pip install "pvfinder[dask]"``.
"""

from __future__ import annotations

import collections
import contextlib
import dataclasses
import glob
import itertools
import logging
import multiprocessing.resource_tracker
import os
import signal
import threading
import time
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path
from typing import Any

import awkward as ak
import fsspec
import numpy as np
from tqdm.auto import tqdm

from .backends import BackendUnavailableError, _check_name, get_backend
from .config import PVFinderConfig
from .events import VERTEX_FIELDS, VertexBatch
from .io import (
    DEFAULT_STEP_SIZE,
    DEFAULT_VERTEX_COMPRESSION,
    LOCAL_SOURCE,
    TrackChunk,
    TrackSchema,
    TrackSource,
    VertexWriter,
    _compression,
    _described,
    _input_name,
    _input_stem,
    _local_output,
    _not_a_regular_file,
    _schema,
    check_vertex_file,
    holds_weights,
    input_identity,
    inspect_tracks,
    is_url,
    parse_step_size,
    recorded_inputs,
    usable_cores,
)
from .pipeline import PVFinder

__all__ = [
    "FileResult",
    "dask_client",
    "expand_inputs",
    "plan_outputs",
    "reconstruct_files",
    "vertex_collection",
]

DASK_HINT = 'Dask is not installed: pip install "pvfinder[dask]"'

# What one chunk of one input becomes: its vertices, event identifiers and track counts.
Piece = tuple[VertexBatch, dict[str, np.ndarray], np.ndarray]
# What the local reader hands over: the input's position among those submitted, and one of
# its chunks or the error that ended it.
_Read = tuple[int, TrackChunk | Exception]


# -- inputs and outputs --------------------------------------------------------------------


def expand_inputs(patterns: Iterable[str], *, output: str | os.PathLike | None = None
                  ) -> tuple[list[Path | str], list[str]]:
    """Expand glob patterns (``"dir/*.root"``, ``"runs/**/*.root"`` recursively) into files,
    in order and without repeats (a file named twice, also by another path or a link, is
    kept once, where it first came, under its own name rather than a link's).

    Parameters
    ----------
    patterns : iterable of str
        File names and glob patterns, local or URLs (``"root://host//data/*.root"``,
        listed by fsspec: see :func:`pvfinder.io.inspect_tracks`).
    output : path, optional
        Where the job writes (as given to :func:`plan_outputs`). A file that a pattern
        matched is then left out when it is a vertex file this job would write (``output``
        itself, or ``output/<stem>_pvs.root`` for one of the files) that records the inputs
        it came from: rerunning a glob over the folder that also receives the outputs must
        not take them for inputs. Files named without wildcards are always kept.

    Returns
    -------
    files : list of Path or str
        The files (URLs as str); names without wildcards are kept even when missing (reading
        reports them).
    errors : list of str
        One message per pattern that matched nothing (or only this job's outputs), or whose
        URLs cannot be listed here, and per URL left out because it differs from one before
        only by its query (see :func:`~pvfinder.io.input_identity`).
    """
    # Per pattern: None when it names a file, and what it matched, or why it could not list.
    expanded: list[tuple[str | None, list[Path | str] | str]] = []
    for pattern in patterns:
        try:
            name = _input_name(pattern)
        except ValueError as error:  # "" names no file
            expanded.append((pattern, str(error)))
            continue
        if isinstance(name, str):
            try:
                matches = _remote_matches(name)
            except MemoryError:
                raise
            except Exception as error:  # noqa: BLE001 (fsspec and its clients' own kinds)
                expanded.append((pattern, f"{pattern}: cannot be listed ({_described(error)})"))
                continue
            expanded.append((None, [name]) if matches is None else (pattern, matches))
        # A name that exists is a file even when it holds glob characters ("run[1].root").
        elif any(char in str(name) for char in "*?[") and not name.exists():
            expanded.append((pattern, [
                Path(match) for match in sorted(glob.glob(str(name), recursive=True))
                if not Path(match).is_dir()]))  # "runs/**" also matches the folders
        else:
            expanded.append((None, [name]))
    own = set() if output is None else _own_outputs(
        [path for _, paths in expanded if not isinstance(paths, str) for path in paths], output)
    files: dict[str, Path | str] = {}  # the file itself → the name it is read under
    errors = []
    for pattern, matches in expanded:
        if isinstance(matches, str):  # the listing failed
            errors.append(matches)
            continue
        named = [(match, input_identity(match)) for match in matches]
        if pattern is not None:
            kept = [(match, identity) for match, identity in named if identity not in own]
            if not kept:
                errors.append(f"{pattern}: matches only this job's outputs" if matches else
                              f"{pattern}: no file matches")
            named = kept
        for match, identity in named:
            known = files.setdefault(identity, match)
            if _query(known) != _query(match):  # not the same name twice: say so
                errors.append(f"{match}: left out, one file with {known}; a URL's query is "
                              "taken for access (a token), not for the file it names")
            elif _is_link(known) and not _is_link(match):  # outputs take its own name
                files[identity] = match
    return list(files.values()), errors


def _query(name: Path | str) -> str:
    """A URL's query (its access parameters), empty for a local file."""
    return name.partition("?")[2] if isinstance(name, str) else ""


def _remote_matches(url: str) -> list[str] | None:
    """The files (not folders) that a URL with wildcards (``*``, ``[...]``) matches, as URLs
    in order and with its query (a token) each; None when it names one file: no wildcard (a
    ``?`` starts the query), a file of that very name (``run[1].root``), or a chained URL
    (``simplecache::...``, whose listing would lose the chain)."""
    base, mark, query = url.partition("?")
    if "::" in base or not any(char in base for char in "*["):
        return None
    filesystem, where = fsspec.core.url_to_fs(base)
    if filesystem.exists(where):
        return None
    found = filesystem.glob(where, detail=True)
    return sorted(filesystem.unstrip_protocol(path) + mark + query
                  for path, info in found.items() if info.get("type") != "directory")


def _is_link(name: Path | str) -> bool:
    return isinstance(name, Path) and name.is_symlink()


def _output_in(folder: Path, input_name: Path | str) -> Path:
    """The vertex file of one input in an output folder: ``<stem>_pvs.root``."""
    return folder / f"{_input_stem(input_name)}_pvs.root"


def _own_outputs(files: Sequence[Path | str], output: str | os.PathLike) -> set[str]:
    """Those of the local ``files`` (by :func:`~pvfinder.io.input_identity`) that are vertex
    files, recording their inputs, at a place this job would write to: ``output`` or
    ``output/<stem>_pvs.root`` for one of ``files`` (also of a URL)."""
    try:
        output = _local_output(output)
    except ValueError:  # a URL: refused when the outputs are planned
        return set()
    targets = {output.resolve()} | {_output_in(output, name).resolve() for name in files}
    local = {path.resolve() for path in files if isinstance(path, Path)}
    own = set()
    for path in local & targets:
        with contextlib.suppress(OSError, ValueError):  # unreadable: left to the reading
            if recorded_inputs(path) is not None:
                own.add(str(path))
    return own


def plan_outputs(inputs: Sequence[str | os.PathLike], output: str | os.PathLike, *,
                 merge: bool = False) -> dict[Path, list[Path | str]]:
    """Decide which output file each input goes to.

    Parameters
    ----------
    inputs : sequence of path
        The input files (local paths or URLs).
    output : path
        A local path. With ``merge``, the one output file. Else an output file when there
        is a single input and ``output`` ends in ``.root`` (any case), not in a slash, and is
        not a directory; otherwise a directory that receives ``<stem>_pvs.root`` for each
        input (a URL's stem: ``run1`` of ``root://host//data/run1.root?authz=...``).
    merge : bool
        Write every input's vertices, in order, into one file.

    Returns
    -------
    dict of Path to list of Path or str
        Output → its inputs (URLs as str).

    Raises
    ------
    ValueError
        When two inputs would write the same output, or several inputs without ``merge``
        are given a file name (ending in ``.root``, or an existing file) rather than a
        directory: ``--merge`` forgotten, or a glob that matched more than one file; when
        a single input or ``merge`` is given an existing file not named ``*.root`` (which
        would be replaced); when ``merge`` is given a directory (a name ending in a slash);
        or when ``output`` is a URL (the vertices are written on this machine).
    """
    inputs = [_input_name(path) for path in inputs]
    folder = str(output).endswith(("/", os.sep))  # "pvs.root/": meant as a directory
    output = _local_output(output)
    if merge and folder:
        raise ValueError(f"{output}: --merge writes one file, and this names a directory")
    named_file = output.suffix.lower() == ".root" and not folder and not output.is_dir()
    other_file = output.exists() and not output.is_dir() and not named_file  # notes.txt
    not_root = (f"{output}: {_not_a_regular_file(output) or 'an existing file'} not named "
                "*.root, which the vertices would replace")
    if merge and other_file:
        raise ValueError(f"{not_root}; --merge writes a file named *.root")
    if merge or (len(inputs) == 1 and named_file):
        return {output: list(inputs)}
    if len(inputs) > 1 and (named_file or other_file):
        raise ValueError(f"{output}: {len(inputs)} inputs make one file each in a directory, "
                         "and this names a file; give a directory, or --merge for one file")
    if other_file:  # one input
        if folder:
            raise ValueError(f"{output}: a file, not a directory (the trailing slash asks "
                             "for one)")
        raise ValueError(f"{not_root}; the output is a file named *.root or a directory (for "
                         "<stem>_pvs.root)")
    plan: dict[Path, list[Path | str]] = {}
    for path in inputs:
        target = _output_in(output, path)
        if target in plan:
            raise ValueError(f"{plan[target][0]} and {path} would both write {target}; "
                             "rename one or use --merge")
        plan[target] = [path]
    return plan


@dataclasses.dataclass(frozen=True)
class FileResult:
    """What became of one input.

    Attributes
    ----------
    input, output : Path or str, Path
        The input file (a URL as a str) and the output its vertices went to.
    status : {"done", "skipped", "failed"}
        ``skipped``: the output existed already (``skip_existing``).
    n_events, n_vertices : int
        Events read and vertices found.
    seconds : float
        Wall time from the moment its first chunk was asked for to its last written.
    first_event : int
        Position of the input's first event in the output (non-zero in merged outputs).
    error : str or None
        Why it failed, naming file, tree, branch and entry.
    """

    input: Path | str
    output: Path
    status: str
    n_events: int = 0
    n_vertices: int = 0
    seconds: float = 0.0
    first_event: int = 0
    error: str | None = None


# -- the job -------------------------------------------------------------------------------


def reconstruct_files(
    plan: Mapping[Path, Sequence[Path]],
    *,
    schema: TrackSchema | None = None,
    config: PVFinderConfig | None = None,
    backend: str = "auto",
    step_size: int | str = DEFAULT_STEP_SIZE,
    with_weights: bool = False,
    compression: str = DEFAULT_VERTEX_COMPRESSION,
    skip_existing: bool = False,
    scheduler: str | None = None,
    progress: bool = False,
    on_result: Callable[[FileResult], None] | None = None,
) -> list[FileResult]:
    """Reconstruct the vertices of many files and write them.

    A bad input is reported (``status="failed"``) and the others go on. Outputs are written
    under a temporary name and renamed once complete; a merged output holds the inputs that
    succeeded: each input's vertices are held in memory until it is complete (under 1 kB per
    event at ν = 7.6; about 13 kB with ``with_weights``, 8 bytes per vertex and track) and
    then written, a basket per chunk, all or none.

    Parameters
    ----------
    plan : mapping of Path to sequence of Path or str
        Output → inputs (local paths or URLs), as from :func:`plan_outputs`.
    schema : TrackSchema, optional
        Tree and branches of the inputs (default: this package's layout).
    config : PVFinderConfig, optional
        Algorithm parameters (published defaults when omitted).
    backend : {"auto", "cpu", "cuda"}
        Where the finder runs (on each Dask worker with ``scheduler``).
    step_size : int or str
        Entries per chunk, or a size such as ``"100 MB"``.
    with_weights : bool
        Also write the track–vertex weights and each track's vertex.
    compression : str
        Codec of the output files (see :class:`~pvfinder.io.VertexWriter`).
    skip_existing : bool
        Leave outputs that hold the vertices of their inputs already (to resume an
        interrupted run); an output in the way that is not such a file, or lacks the weights
        asked for, fails its inputs.
    scheduler : str, optional
        Run on Dask: ``"local:N"`` starts N local worker processes, anything else is the
        address of a running scheduler. In this process when omitted.
    progress : bool
        Show a progress bar with events/s on stderr.
    on_result : callable, optional
        Called with each input's :class:`FileResult` once the output holding its vertices is
        finished (for a merged output: after its last input).

    Returns
    -------
    list of FileResult
        One per input.

    Raises
    ------
    ValueError
        When an input appears more than once in ``plan``, an output is also an input (it
        would be overwritten), an output is a directory, ``step_size`` is neither entries
        nor a size with its unit, an output is a URL (the vertices are written on this
        machine), or (when there is an input to reconstruct) the backend name, the
        compression or a ``local:N`` scheduler is not one there is.
    TypeError
        For a ``plan`` that is not a mapping, or a ``schema`` that is not a TrackSchema.
    BackendUnavailableError
        When the backend asked for cannot run here, in this process or on ``local:N``
        workers (and there is an input to reconstruct); a scheduler's workers report it
        per input.
    ImportError
        When ``scheduler`` is given, there is an input to reconstruct and Dask is not
        installed (the message says how).
    """
    plan = _as_paths(plan)
    _check_plan(plan)
    schema, step_size = _schema(schema), parse_step_size(step_size)
    report = on_result or (lambda _: None)
    results: list[FileResult] = []

    def record(result: FileResult) -> None:
        results.append(result)
        with tqdm.external_write_mode():  # what the reporter prints, not across the bar
            report(result)

    sources: dict[Path | str, TrackSource] = {}
    for output, inputs in plan.items():
        if skip_existing and output.exists():
            for result in _resumed(output, inputs, with_weights):
                record(result)
            continue
        refusal = _refusal_to_replace(output)
        if refusal is not None:
            for result in _all_failed(inputs, output, refusal):
                record(result)
            continue
        for path in inputs:
            try:  # open and check every input first: bad files show up at once
                sources[path] = inspect_tracks(path, schema)
            except (ValueError, OSError) as error:
                record(FileResult(path, output, "failed", error=str(error)))
    if not sources:  # all skipped or failed: no finder, and no cluster, to start
        return results
    _compression(compression)  # before a cluster starts, not when the first output is written
    total = sum(source.n_entries for source in sources.values())
    with _engine(scheduler, config, backend, step_size, with_weights) as engine, \
            tqdm(total=total, unit="evt", disable=not progress) as bar:
        engine.submit(list(sources.values()))
        for output, inputs in plan.items():
            todo = [sources[path] for path in inputs if path in sources]
            if todo:
                _write_output(output, todo, engine, bar, record, with_weights=with_weights,
                              compression=compression)
    return results


def _resumed(output: Path, inputs: Sequence[Path | str], with_weights: bool
             ) -> list[FileResult]:
    """What ``--skip-existing`` makes of ``inputs`` when ``output`` exists: skipped when it
    holds their vertices, as it recorded them; failed when it lacks one or holds another's,
    is not a readable vertex file (junk, a file of tracks, a truncated copy) or lacks the
    weights asked for. A vertex file that recorded nothing (written by an earlier pvfinder
    or by :func:`~pvfinder.io.write_vertices`) holds them all."""
    try:
        recorded = recorded_inputs(output)
        lacks_weights = with_weights and not holds_weights(output)
    except (ValueError, OSError) as error:
        return _all_failed(inputs, output, f"{error}: not a vertex file to resume; remove "
                           "it to redo its inputs")
    if lacks_weights:
        return _all_failed(inputs, output, f"{output} exists without the weights asked "
                           "for; remove it to redo its inputs with them")
    if recorded is None:
        return [FileResult(path, output, "skipped") for path in inputs]
    held, resolved = set(recorded), {path: input_identity(path) for path in inputs}
    extra = sorted(held - set(resolved.values()))
    if extra:  # it holds vertices not asked for: not this job's output
        return _all_failed(inputs, output, (
            f"{output} exists with the vertices of {extra[0]}, which is not among the inputs "
            f"given for it now; remove {output} to redo them, or write elsewhere"))
    return [FileResult(path, output, "skipped") if resolved[path] in held else
            FileResult(path, output, "failed", error=(
                f"{output} exists without the vertices of {path} (it failed when that file "
                f"was written, or was not among its inputs); remove {output} to redo it"))
            for path in inputs]


def _refusal_to_replace(output: Path) -> str | None:
    """Why ``output``, when it exists, must not be replaced by vertices; None when it may
    (nothing there, or a vertex file of any version, as a rerun finds). A file of tracks
    named as the output by mistake was replaced without a word."""
    if not output.exists():
        return None
    try:
        check_vertex_file(output)
    except (ValueError, OSError) as error:
        return (f"{error}: not a vertex file, which the vertices would replace; remove it or "
                "write elsewhere")
    return None


def _all_failed(inputs: Sequence[Path | str], output: Path, error: str) -> list[FileResult]:
    return [FileResult(path, output, "failed", error=error) for path in inputs]


def _as_paths(plan: Mapping[Any, Any]) -> dict[Path, list[Path | str]]:
    """``plan`` with Paths throughout (str keys failed on ``output.exists()``) but for input
    URLs, one input given alone taken as one (not as the letters of its name)."""
    if not isinstance(plan, Mapping):
        raise TypeError(f"plan must map each output to its inputs (plan_outputs makes one), "
                        f"got {type(plan).__name__}")
    return {_local_output(output): [_input_name(inputs)]
            if isinstance(inputs, (str, os.PathLike)) else list(map(_input_name, inputs))
            for output, inputs in plan.items()}


def _check_plan(plan: Mapping[Path, Sequence[Path | str]]) -> None:
    """Refuse, before anything is read, a plan that would lose data or could not finish."""
    names: dict[str, list[str]] = collections.defaultdict(list)  # by file, also via links
    for path in (path for inputs in plan.values() for path in inputs):
        names[input_identity(path)].append(str(path))
    repeated = [" = ".join(given) for given in names.values() if len(given) > 1]
    if repeated:
        raise ValueError(f"input(s) given more than once: {', '.join(repeated)}")
    inputs = set(names)
    for output in plan:
        if input_identity(output) in inputs:
            raise ValueError(f"{output} is an input too: writing the vertices there would "
                             "overwrite it; choose another output (or inputs that do not "
                             "match it)")
        kind = _not_a_regular_file(output)
        if kind is not None:
            raise ValueError(f"{output} is {kind}; the vertices need a file name there")


def _write_output(output: Path, sources: list[TrackSource], engine: Any, bar: Any,
                  record: Callable[[FileResult], None], **writer_options: Any) -> None:
    """Write the vertices of ``sources`` into ``output``; keep the file if one succeeded.

    The inputs are recorded once the file is finished: a file that cannot be made (no right
    to write there, a read-only disk) or finished (no room left, no right to rename it) fails
    the inputs not failed for their own reason, those not begun are not read, and its partial
    file is removed.
    """
    # One input streams straight to its own file; inputs merged into one file are held
    # until complete, so that a bad one leaves nothing of itself in the merged file.
    buffered = len(sources) > 1
    results: list[FileResult] = []
    # The bar ends where these inputs' entries do, also when one fails part-way.
    bar_end = bar.n + sum(source.n_entries for source in sources)
    writer: VertexWriter | None = None  # made inside the try, so that a stop discards it
    try:
        writer = VertexWriter(output, **writer_options)
        for source in sources:
            results.append(_run_input(source, writer, engine, buffered, bar))
        if any(result.status == "done" for result in results):
            writer.record_inputs(result.input for result in results if result.status == "done")
            writer.close()
        else:
            writer.discard()
    except OSError as error:  # the output's: every input not failed for its own reason fails
        if writer is not None:
            writer.discard()
        for source in sources[len(results):]:  # the one being written and those not begun
            engine.drop(source)
        own = {result.input: result for result in results if result.status == "failed"}
        results = [own.get(_input_name(source.path)) or FileResult(
                       _input_name(source.path), output, "failed",
                       error=_unwritable(output, error))
                   for source in sources]
    except BaseException:
        if writer is not None:
            writer.discard()
        raise
    bar.update(bar_end - bar.n)
    for result in results:
        record(result)


def _run_input(source: TrackSource, writer: VertexWriter, engine: Any, buffered: bool,
               bar: Any) -> FileResult:
    start, first_event = time.perf_counter(), writer.n_events
    n_events = n_vertices = 0
    held: list[Piece] = []
    try:
        for piece in engine.pieces(source):
            if buffered:  # the engine may reuse a piece's arrays for the next one
                held.append((piece[0].copy(), *piece[1:]))
            else:
                _write(writer, source, [piece])
            n_events += piece[0].n_events
            n_vertices += piece[0].n_vertices
            bar.update(piece[0].n_events)
        _write(writer, source, held)  # all checked before any lands
    except _OutputError:
        raise  # the file, not this input: _write_output fails them all
    except (ValueError, OSError) as error:
        return FileResult(_input_name(source.path), writer.path, "failed", error=str(error))
    return FileResult(_input_name(source.path), writer.path, "done", n_events, n_vertices,
                      time.perf_counter() - start, first_event)


def _unwritable(output: Path, error: OSError) -> str:
    """The message of an output that cannot be written, naming it once."""
    message = str(error)
    return message if message.startswith(f"{output}:") else (
        f"{output}: cannot be written ({message})")


class _OutputError(OSError):
    """The output file could not be written (a full disk): it may hold part of an input."""


def _write(writer: VertexWriter, source: TrackSource, pieces: list[Piece]) -> None:
    """``writer.write_all(pieces)``, its refusals (identifiers that do not fit the file)
    naming the input too, its failures to write as :class:`_OutputError`."""
    try:
        writer.write_all(pieces)
    except ValueError as error:
        raise ValueError(f"{source.where}: not written to {error}") from None
    except OSError as error:
        raise _OutputError(error.errno, error.strerror, error.filename) from error


@contextlib.contextmanager
def _engine(scheduler: str | None, config: PVFinderConfig | None, backend: str,
            step_size: int | str, with_weights: bool) -> Iterator[Any]:
    if scheduler is None:
        finder = PVFinder(config, backend)
        engine = _LocalEngine(finder, step_size, with_weights, _reads_ahead(finder))
        try:
            yield engine
        finally:
            engine.close()
        return
    # Before the cluster starts: each partition of each input failed with the backend's error.
    # Local workers run here, so the backend must run here; a scheduler's may hold a GPU
    # that this machine lacks, so only the name is checked for them.
    if scheduler.partition(":")[0] == "local":
        get_backend(backend)  # an unknown name is a ValueError, an unusable one unavailable
    else:
        _check_name(backend)
    with dask_client(scheduler) as client:
        yield _DaskEngine(client, config, backend, step_size, with_weights)


def _reads_ahead(finder: PVFinder) -> bool:
    """Whether the local engine should read the next chunk while the finder works on this one.

    Not when the finder runs on the CPU with a Numba thread on every core: reading and
    decompressing then take a core from kernels whose threads all wait for the slowest, which
    cost more than the overlap won (``pvfinder reconstruct`` on 200 000 events, 2 cores, the
    two ways taking turns, medians of sets of 3–5 runs: 5.5–6.0 s reading in turn
    against 6.0–6.7 s reading ahead from zstd, 4.9–5.2 against 5.4–5.7 s from lz4; again
    after the kernels took float32 states as they are: 5.5 against 6.0 s, 4.72 against
    4.75 s). A GPU, or a core left free, does overlap them.
    """
    if finder.backend.name != "cpu":
        return True
    import numba

    return numba.get_num_threads() < usable_cores()


class _LocalEngine:
    """Chunks read in this process and reconstructed by one finder into reused outputs,
    with the per-track weights only when they are written (``with_weights``).

    One background thread reads the chunks of all submitted inputs in order. With
    ``read_ahead`` it reads one chunk ahead of the finder: the next chunk, also the first of
    the next input, is read while this one is reconstructed (the kernels release the GIL).
    Without, the next chunk is read once this one is reconstructed, while its vertices are
    written (see :func:`_reads_ahead`). Either way at most two chunks are in memory at once.
    Close the engine to stop the reader.
    """

    def __init__(self, finder: PVFinder, step_size: int | str, with_weights: bool,
                 read_ahead: bool) -> None:
        self.finder, self.step_size = finder, step_size
        self.with_weights, self.read_ahead = with_weights, read_ahead
        self.outputs = finder.output_buffers()
        self._reader = ThreadPoolExecutor(1, thread_name_prefix="pvfinder-reader")
        self._positions: dict[str, int] = {}
        self._dropped: set[int] = set()  # positions of inputs no longer wanted
        self._stream = self._read([])
        self._upcoming: Future[_Read | None] = Future()  # nothing to read until submit()
        self._upcoming.set_result(None)

    def submit(self, sources: list[TrackSource]) -> None:
        """Start reading ``sources`` (distinct inputs), to be asked for in this order by
        :meth:`pieces`."""
        self._stop_reading()
        self._positions = {source.path: i for i, source in enumerate(sources)}
        self._dropped = set()
        self._stream = self._read(sources)
        self._read_next()

    def _read(self, sources: list[TrackSource]) -> Iterator[_Read]:
        """``(position, chunk)`` for every chunk of every input; an input that cannot be
        read gives ``(position, error)`` as its last item, and the next input follows."""
        for position, source in enumerate(sources):
            if position in self._dropped:
                continue
            chunks = source.read_chunks(self.step_size)
            try:
                for chunk in chunks:
                    yield position, chunk
                    if position in self._dropped:
                        break
            except (ValueError, OSError) as error:
                yield position, error
            finally:
                chunks.close()  # closes the file now, not at collection

    def pieces(self, source: TrackSource) -> Iterator[Piece]:
        """Each chunk's vertices, valid until the next chunk is asked for; an input without
        entries gives one empty piece, so that its output has the branches of any other."""
        position = self._positions[source.path]
        any_chunk = False
        # An item of a later input means this one has ended; leave it for its own call.
        while (entry := self._upcoming.result()) is not None and entry[0] <= position:
            read_position, chunk = entry
            to_reconstruct = read_position == position and not isinstance(chunk, Exception)
            if self.read_ahead or not to_reconstruct:
                self._read_next()
            if read_position < position:
                continue  # what is left of an earlier input whose consumer gave up on it
            if isinstance(chunk, Exception):
                raise chunk
            vertices = self.finder(chunk.tracks, out=self.outputs, to_host=True,
                                   weights=self.with_weights,
                                   origin=(source.where, chunk.entry_start))
            if not self.read_ahead:
                self._read_next()
            any_chunk = True
            yield vertices, chunk.event_ids, chunk.tracks.counts
        if not any_chunk:
            yield _no_vertices(self.with_weights), _empty_ids(source), np.zeros(0, np.int64)

    def drop(self, source: TrackSource) -> None:
        """Read no more of ``source`` (its output cannot be written): the reader moves on to
        the next input after the chunk it may be reading."""
        self._dropped.add(self._positions[source.path])

    def _read_next(self) -> None:
        self._upcoming = self._reader.submit(next, self._stream, None)

    def close(self) -> None:
        """Stop reading and end the reader thread."""
        self._stop_reading()
        self._reader.shutdown()

    def _stop_reading(self) -> None:
        """Close the input being read once the chunk it may be reading is done (an error
        there belongs to an input nobody asks for any more)."""
        # In the reader thread, after it: a stop may have come before the future of that
        # chunk was kept, and closing a running generator raises.
        self._reader.submit(self._stream.close).result()


class _DaskEngine:
    """The inputs' partitions computed in order, a bounded number at a time (four times the
    threads of the workers there are, as they join or leave), and fetched in that order:
    the client writes while the workers go on, and results it has not written yet do not
    pile up on the workers (with weights, 13 kB an event) when the cluster outpaces the
    writing. A window of twice the threads made a job on two local workers about 10 %
    slower than none (a slow partition holds the next ones' results until it is fetched),
    four times about 6 % (200 000 events in four files, runs taking turns)."""

    def __init__(self, client: Any, config: PVFinderConfig | None, backend: str,
                 step_size: int | str, with_weights: bool) -> None:
        self.client, self.step_size = client, step_size
        self.options = {"config": config, "backend": backend, "with_weights": with_weights}
        # Inputs whose graphs are still to be built: one at a time, as the window reaches
        # them (building them all first delayed the first partition by 43 ms an input).
        self.unbuilt: collections.deque[TrackSource] = collections.deque()
        # Per input: its partitions (delayed) and their first entries.
        self.parts: dict[str, tuple[list[Any], tuple[int, ...]]] = {}
        self.errors: dict[str, Exception] = {}
        self.pending: collections.deque[tuple[str, int]] = collections.deque()  # in order
        self.running: dict[tuple[str, int], Any] = {}  # (input, partition) -> its future

    def submit(self, sources: list[TrackSource]) -> None:
        self.unbuilt.extend(sources)
        self._top_up()

    def _build_next(self) -> None:
        """Build the graph of the next input, its partitions then pending."""
        source = self.unbuilt.popleft()
        try:
            tracks = _track_partitions(source, self.step_size)
            parts = _vertices_of(tracks, source, **self.options).to_delayed()
        except MemoryError:
            raise
        except Exception as error:  # noqa: BLE001 (uproot's KeyInFileError, a KeyError, too)
            # Kept to be raised for its own input: this runs while the one before is read.
            self.errors[source.path] = (error if isinstance(error, (ValueError, OSError))
                                        else ValueError(f"{source.where}: {_described(error)}"))
            return
        self.parts[source.path] = (parts, tracks.divisions)
        self.pending.extend((source.path, index) for index in range(len(parts)))

    def window(self) -> int:
        """How many partitions may run at once: asked each time, as workers may join (a
        scheduler's, an adaptive cluster's) after the job has begun."""
        return max(4 * sum(self.client.nthreads().values()), 4)

    def _top_up(self) -> None:
        window = self.window()
        while len(self.running) < window and (self.pending or self.unbuilt):
            if not self.pending:
                self._build_next()
                continue
            path, index = key = self.pending.popleft()
            self.running[key] = self.client.compute(self.parts[path][0][index])

    def drop(self, source: TrackSource) -> None:
        """Cancel what is left of ``source`` (its output cannot be written)."""
        self.errors.pop(source.path, None)
        self._forget(source.path)

    def _forget(self, path: str) -> None:
        """Cancel the partitions of ``path`` submitted and submit none of the others."""
        self.parts.pop(path, None)
        self.unbuilt = collections.deque(source for source in self.unbuilt
                                         if source.path != path)
        self.pending = collections.deque(key for key in self.pending if key[0] != path)
        running = [key for key in self.running if key[0] == path]
        if running:
            self.client.cancel([self.running.pop(key) for key in running])
        self._top_up()

    def pieces(self, source: TrackSource) -> Iterator[Piece]:
        if source.path in self.errors:
            raise self.errors.pop(source.path)
        parts, starts = self.parts[source.path]
        try:
            for index, start in zip(range(len(parts)), starts):
                key = (source.path, index)
                # Running already: the inputs are asked for in order, and the window, at
                # least 4, holds the partitions in order from the first not yet fetched.
                future = self.running.pop(key)
                self._top_up()  # the workers go on while this one is waited for
                try:
                    records = future.result()
                except MemoryError:
                    raise
                except Exception as error:
                    # Damaged baskets raise codec and uproot errors alike, ValueError included:
                    # reported as the one-process reader does, unless the worker's message
                    # already names the input.
                    if str(error).startswith(source.where):
                        raise
                    raise source.unreadable(start, error) from None
                future.release()
                yield _piece_of(records, list(source.written_ids))
        finally:
            self._forget(source.path)  # a failed partition stops the rest of its file


# -- Dask ----------------------------------------------------------------------------------


def _import_dask() -> tuple[Any, Any]:
    try:
        import dask_awkward
        import distributed
    except ImportError as error:
        raise ImportError(f"{DASK_HINT} ({error})") from None
    return dask_awkward, distributed


@contextlib.contextmanager
def dask_client(scheduler: str) -> Iterator[Any]:
    """A ``distributed.Client`` for ``scheduler``, closed (with its cluster) on exit.

    Parameters
    ----------
    scheduler : str
        ``"local:N"``: N worker processes of one thread each on this machine (loopback
        only, no dashboard); ``"local"``: one per core this process may use. Anything
        else: the address of a running scheduler (``"tcp://host:8786"``).

    Raises
    ------
    ImportError
        With the install hint, when Dask is missing.
    ValueError
        For ``local:N`` with N not a positive integer, or an address that is not one
        (``"bogus"``, ``"host:abc"``).

    Notes
    -----
    For a local cluster, Dask's console logging (the ``distributed`` logger's handlers) shows
    only critical records while the client lives: a task's error is raised by the client,
    naming its input. The workers run with SIGINT blocked, those that Dask restarts too, so
    that a Ctrl-C, which the terminal sends to the whole process group, stops this process
    alone, which then closes them. A Ctrl-C sent while the cluster starts or closes, or a
    SIGTERM while it closes, arrives once that is done.
    """
    _, distributed = _import_dask()
    kind, _, count = scheduler.partition(":")
    if kind != "local":
        try:
            client = distributed.Client(scheduler)
        except ValueError as error:  # Dask's own words: "invalid literal for int() ..."
            raise ValueError(f"scheduler {scheduler!r} is neither local[:N] nor a scheduler's "
                             f"address ({error})") from None
        with client:
            yield client
        return
    cores = usable_cores()  # those this process may use, as a batch system's slot allows
    count = count or str(cores)
    if not count.isdigit() or int(count) < 1:
        raise ValueError(f"--dask local:N needs a positive number of workers, got {scheduler!r}")
    n_workers = int(count)
    # One process per worker, one task at a time; the finder's own threads share the cores.
    threads = str(max(1, cores // n_workers))
    # The cluster's own silence_logs ends when it starts to close, and its scheduler then
    # logged the workers' lost connections (a traceback on Ctrl-C): quiet from before it is
    # made until it has closed.
    with (distributed.utils.silence_logging_cmgr(logging.CRITICAL),
          _closed_whole() as closing):
        # The workers inherit the blocked SIGINT; a Ctrl-C held here comes once the cluster
        # is in the stack that closes it.
        with _stops_held(sigterm=False):
            cluster = closing.enter_context(distributed.LocalCluster(
                n_workers=n_workers, threads_per_worker=1, processes=True, host="127.0.0.1",
                dashboard_address=None, env={"NUMBA_NUM_THREADS": threads},
                # its HTTP server (health checks) on any free port, not 8787: a second job
                # warned "Port 8787 is already in use"
                scheduler_kwargs={"dashboard_address": "127.0.0.1:0"},
                # a task's error is raised here, named; the workers' report of it is noise
                silence_logs=logging.CRITICAL))
        yield closing.enter_context(distributed.Client(cluster))


@contextlib.contextmanager
def _closed_whole() -> Iterator[contextlib.ExitStack]:
    """An ExitStack whose closing a stop does not cut short: one that comes meanwhile is
    held until it is done (cut short, a cluster closed at exit, seconds later and logging)."""
    with contextlib.ExitStack() as stack:
        try:
            yield stack
        finally:
            with _stops_held(sigterm=True):
                stack.close()


@contextlib.contextmanager
def _stops_held(*, sigterm: bool) -> Iterator[None]:
    """Hold Ctrl-C (SIGINT), and SIGTERM too with ``sigterm``, and raise the first one
    received once the block ends, as its own handler takes it.

    SIGINT is also blocked in this thread meanwhile: worker processes and threads started
    meanwhile keep it blocked for good (and so the workers that Dask restarts from those
    threads), so that a Ctrl-C, which the terminal sends to the whole process group, stops
    this process alone, which then closes them. SIGTERM is never blocked: the workers keep
    its default action, which Dask's and multiprocessing's ``terminate()`` rely on. Hold it
    only where nothing waits for workers that a SIGTERM to the whole group ends: not while
    they start (the start waited for them, minutes).
    """
    if threading.current_thread() is not threading.main_thread() or not hasattr(
            signal, "pthread_sigmask"):  # Windows: no signal masks, nor process groups
        yield
        return
    # It unblocks SIGINT after starting itself, here too: start it before.
    multiprocessing.resource_tracker.ensure_running()
    held: list[int] = []  # those received meanwhile

    def note(signum: int, frame: Any) -> None:
        held.append(signum)

    stops = (signal.SIGINT, signal.SIGTERM) if sigterm else (signal.SIGINT,)
    handlers = {stop: signal.signal(stop, note) for stop in stops}
    mask = signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGINT})
    try:
        yield
    finally:
        signal.pthread_sigmask(signal.SIG_SETMASK, mask)  # a pending Ctrl-C is noted here
        for stop, handler in handlers.items():  # None: set outside Python, not restorable
            if handler is None:
                handler = signal.default_int_handler if stop == signal.SIGINT else signal.SIG_DFL
            signal.signal(stop, handler)
        if held:  # the first, as its own handler takes it
            signal.raise_signal(held[0])


def vertex_collection(source: TrackSource, *, config: PVFinderConfig | None = None,
                      backend: str = "cpu", step_size: int | str = DEFAULT_STEP_SIZE,
                      with_weights: bool = False) -> Any:
    """The vertices of one input as a dask-awkward array, one record per event.

    Each record holds the event identifiers, ``n_input_tracks`` and ``vertices`` (a list of
    vertex records, with ``weights`` when asked for). Nothing is read until computed:
    whole (``collection.compute()``), a column of it (``collection.vertices.z.compute()``,
    which still runs the whole finder), or partition by partition
    (``dask.compute(*collection.to_delayed())``), as :func:`reconstruct_files` does to write
    each partition as it arrives.

    Parameters
    ----------
    source : TrackSource
        The checked input, from :func:`pvfinder.io.inspect_tracks`.
    config, backend, step_size, with_weights
        As for :func:`reconstruct_files`, except that ``backend`` defaults to ``"cpu"``
        (Dask workers seldom hold a GPU).

    Raises
    ------
    ValueError
        When ``step_size`` is neither entries nor a size with its unit.
    ImportError
        When Dask is not installed (the message says how).
    """
    tracks = _track_partitions(source, parse_step_size(step_size))
    return _vertices_of(tracks, source, config, backend, with_weights)


def _track_partitions(source: TrackSource, step_size: int | str) -> Any:
    """The input's tracks as a dask-awkward array, with known divisions (entry boundaries).

    Its graph names the file and each partition's entries, and each partition opens the
    file where it runs: a graph that held the file open (uproot's ``open_files=True``) kept
    it open as long as dask-awkward's cache of graphs kept the graph, one file descriptor an
    input or more, which a job of a few hundred inputs ran out of. (uproot still opens the
    file here to learn its form, and lets it go: it closes when Python's garbage collector
    runs.)
    """
    import uproot

    _import_dask()
    steps = source.entry_steps(step_size)
    if is_url(source.path):  # through fsspec, uproot's default
        name, handler = source.path, None
    else:  # uproot takes local names as glob patterns: run[1].root would read run1.root
        # Absolute: a scheduler's workers read a relative name in their own directory, where
        # a file of that name gave other vertices without a word.
        name, handler = glob.escape(os.path.abspath(source.path)), LOCAL_SOURCE
    return uproot.dask({name: {"object_path": source.tree, "steps": steps}},
                       filter_name=source.read_branches, open_files=False, handler=handler)


def _vertices_of(tracks: Any, source: TrackSource, config: PVFinderConfig | None,
                 backend: str, with_weights: bool) -> Any:
    """:func:`vertex_collection` of the partitions ``tracks``."""
    dak, _ = _import_dask()
    # The entry numbers, partitioned as the tracks: each partition learns where it starts,
    # for event numbers and for errors that name the entry.
    divisions = tracks.divisions
    entries = dak.from_map(_entry_numbers, list(itertools.pairwise(divisions)),
                           divisions=divisions, meta=_typetracer(_entry_numbers((0, 0))),
                           label="entries")
    return dak.map_partitions(_partition_vertices, tracks, entries, source=source,
                              config=config, backend=backend, with_weights=with_weights,
                              meta=_output_type(source, with_weights), label="pvfinder")


def _entry_numbers(bounds: tuple[int, int]) -> ak.Array:
    return ak.Array(np.arange(bounds[0], bounds[1], dtype=np.int64))


def _typetracer(array: ak.Array) -> ak.Array:
    return ak.Array(array.layout.to_typetracer(forget_length=True))


def _output_type(source: TrackSource, with_weights: bool) -> ak.Array:
    """A typetracer of the records :func:`_partition_vertices` returns."""
    return _typetracer(_records(_no_vertices(with_weights), _empty_ids(source),
                                np.zeros(0, np.int64)))


def _no_vertices(with_weights: bool) -> VertexBatch:
    """The vertices of no event (with empty weights when ``with_weights``)."""
    weights = {"weights": np.zeros(0), "weight_counts": np.zeros(0, np.int64)}
    return VertexBatch.from_arrays(counts=np.zeros(0, np.int64),
                                   **(weights if with_weights else {}),
                                   **{name: np.zeros(0) for name in VERTEX_FIELDS})


def _empty_ids(source: TrackSource) -> dict[str, np.ndarray]:
    return {name: np.zeros(0, dtype) for name, dtype in source.written_ids.items()}


_WORKER_FINDERS = threading.local()


def _finder(config: PVFinderConfig | None, backend: str) -> PVFinder:
    """One finder per worker thread and configuration: compiled once, buffers reused. Not
    one per process: Dask's threaded scheduler, and workers with several threads, run
    partitions at once, and a finder must not be called from two threads at once."""
    finders = _WORKER_FINDERS.__dict__.setdefault("by_setup", {})
    if (config, backend) not in finders:
        finders[(config, backend)] = PVFinder(config, backend)
    return finders[(config, backend)]


def _partition_vertices(tracks: ak.Array, entries: ak.Array, *, source: TrackSource,
                        config: PVFinderConfig | None, backend: str, with_weights: bool
                        ) -> ak.Array:
    """Reconstruct one partition (runs on a worker)."""
    if ak.backend(tracks) == "typetracer":
        # dask-awkward's optimisation calls this on typetracers to learn which branches
        # are needed: all of them. Run no kernels; answer with the output's type.
        ak.typetracer.touch_data(tracks)
        ak.typetracer.touch_data(entries)
        return _output_type(source, with_weights)
    entry_numbers = ak.to_numpy(entries)
    start = int(entry_numbers[0]) if len(entry_numbers) else 0
    chunk = source.chunk({name: tracks[name] for name in source.read_branches}, start)
    try:
        finder = _finder(config, backend)
    except BackendUnavailableError as error:  # named as the input's own error, not a read's
        raise ValueError(f"{source.where}: not reconstructed on worker {_worker_name()}: "
                         f"{error}") from None
    vertices = finder(chunk.tracks, weights=with_weights, origin=(source.where, start))
    return _records(vertices, chunk.event_ids, chunk.tracks.counts)


def _worker_name() -> str:
    from distributed import get_worker

    try:
        return get_worker().address
    except ValueError:  # not on a worker (dask.compute's threads)
        return "(this process)"


def _records(vertices: VertexBatch, event_ids: Mapping[str, np.ndarray], track_counts: Any
             ) -> ak.Array:
    """One record per event: its identifiers, input track count and vertices (with their
    weights when ``vertices`` has them)."""
    return ak.zip({**event_ids, "n_input_tracks": np.asarray(track_counts, dtype=np.int64),
                   "vertices": vertices.to_awkward()}, depth_limit=1)


def _piece_of(records: ak.Array, id_names: list[str]) -> Piece:
    ids = {name: ak.to_numpy(records[name]) for name in id_names}
    return (VertexBatch.from_awkward(records["vertices"]), ids,
            ak.to_numpy(records["n_input_tracks"]))
