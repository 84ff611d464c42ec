"""The ``pvfinder`` command: simulate, reconstruct, validate, bench, info."""

from __future__ import annotations

import _thread
import argparse
import json
import os
import signal
import sys
import threading
import time
import warnings
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from . import __version__

__all__ = ["main"]

#: Exit code of ``bench --physics`` when a goal is missed: apart from 1, Python's for an
#: uncaught error, and 2, a mistake or a failed input.
GOAL_MISSED = 3


class UsageError(Exception):
    """A mistake of the user's: printed as one line, exit code 2."""


def _parse_assignments(items: Sequence[str], what: str) -> dict[str, Any]:
    """``["nu=5", "zmin=-200"]`` → ``{"nu": 5.0, "zmin": -200.0}``: JSON values where they
    parse, else Python numbers (``.5``, ``2.``, ``+1``), else the text."""
    out: dict[str, Any] = {}
    for item in items:
        name, sep, value = item.partition("=")
        if not sep or not name:
            raise UsageError(f"{what} expects NAME=VALUE, got {item!r}")
        try:
            out[name] = json.loads(value)
        except json.JSONDecodeError:
            try:
                out[name] = float(value)
            except ValueError:
                out[name] = value
    return out


def _load_config(path: str | None, overrides: Sequence[str]):
    from ._settings import is_toml, parse_settings
    from .config import PVFinderConfig

    mapping: dict[str, Any] = {}
    if path is not None:
        try:
            mapping = parse_settings(Path(path).read_text(), path)
        except (OSError, UnicodeDecodeError, ValueError) as error:  # parsers raise ValueErrors
            kind = "TOML" if is_toml(path) else "JSON (or name it .toml)"
            raise UsageError(f"--config {path}: not a readable {kind} file ({error})") from None
        if not isinstance(mapping, dict):
            raise UsageError(f"--config {path}: holds {type(mapping).__name__}, not a table of "
                             "PVFinderConfig fields")
    mapping.update(_parse_assignments(overrides, "--set"))
    try:
        return PVFinderConfig.from_mapping(mapping)
    except ValueError as error:  # name where the fields came from
        given = " and ".join(filter(None, (path and f"--config {path}", overrides and "--set")))
        raise UsageError(f"{given}: {error}") from None


def _cmd_simulate(args: argparse.Namespace) -> int:
    from .io import _local_output, write_sample
    from .simulation import Conditions, simulate

    overrides = _parse_assignments(args.set, "--set")
    for name, option in (("seed", "--seed"), ("n_events", "-n")):
        if name in overrides:
            raise UsageError(f"--set {name}: give it as {option}")
    if args.nu is not None:
        if "nu" in overrides:
            raise UsageError("ν given twice, by --nu and by --set nu: give it once")
        overrides["nu"] = args.nu
    _check_seed(args.seed)
    if args.output == "":  # was taken as no -o at all
        raise UsageError("-o needs a file name, got ''")
    # Before, not after simulating: a URL (refused) or a directory.
    if args.output is not None and _local_output(args.output).is_dir():
        raise UsageError(f"{args.output}: a directory, not a file to write")
    conditions = Conditions().replace(**overrides)  # only conditions' names, none of simulate's
    start = time.perf_counter()
    sample = simulate(args.n_events, seed=args.seed, conditions=conditions)
    elapsed = time.perf_counter() - start
    if args.output is not None:  # before printing: a closed pipe must not lose the sample
        write_sample(args.output, sample.tracks, sample.truth, event_ids=sample.event_ids,
                     compression=args.compression)
    print(f"simulated {args.n_events} events in {elapsed:.1f} s (seed {args.seed})")
    for name, value in sample.statistics().items():
        print(f"  {name:<40s} {value:10.4f}")
    if args.output is not None:
        print(f"wrote {args.output}")
    return 0


def _track_schema(args: argparse.Namespace):
    """The schema of ``--schema FILE``, with ``--tree``, ``--branch`` and ``--fill-cov`` on top."""
    import dataclasses

    from .io import TrackSchema

    schema = TrackSchema.from_file(args.schema) if args.schema else TrackSchema()
    branches = dict(schema.branches)
    for item in args.branch:
        field, sep, branch = item.partition("=")
        if not sep or not field or not branch:
            raise UsageError(f"--branch expects FIELD=BRANCH, got {item!r}")
        branches[field] = branch
    fill = {**(schema.fill_missing_covariance or {}),
            **_parse_assignments(args.fill_cov, "--fill-cov")}
    return dataclasses.replace(schema, tree=args.tree or schema.tree, branches=branches,
                               fill_missing_covariance=fill or None)


def _result_printer() -> Callable[[Any], None]:
    """A reporter of each input of ``pvfinder reconstruct`` as soon as it is done. An error
    shared by all the inputs of a merged output (the file could not be made) is printed
    once."""
    printed: set[str] = set()

    def report(result: Any) -> None:
        if result.status == "failed":
            if result.error not in printed:
                printed.add(result.error)
                print(f"pvfinder reconstruct: error: {result.error}", file=sys.stderr)
        elif result.status == "skipped":
            print(f"{result.input}: skipped, {result.output} exists")
        else:
            print(f"{result.input}: {result.n_vertices} vertices in {result.n_events} events "
                  f"-> {result.output}")

    return report


def _validate_outputs(results, plots: str | None, tracks_tree: str,
                      summaries: str | None = None) -> int:
    """The PV checker's table for each input reconstructed in this run that carries truth,
    its plots in ``plots`` and its summary in the JSON file ``summaries`` (written first,
    before any table) when asked; an input whose truth cannot be read is reported and left
    unvalidated (its vertices are written). Returns how many of the files asked for could not
    be written (each reported, the others go on)."""
    from .events import VertexBatch
    from .io import read_truth, read_vertices
    from .validation import validate

    done = [result for result in results if result.status == "done"]
    outputs: dict[Path, VertexBatch] = {}
    missing = " and ".join(filter(None, (plots and "no plots", summaries and "no summary")))
    validated = []
    for result in done:
        try:
            truth = read_truth(result.input, tracks_tree)
            if truth is None:
                if missing:  # asked for, and none will come
                    print(f"pvfinder reconstruct: warning: {result.input}: no truth to "
                          f"validate against, so {missing}", file=sys.stderr)
                continue
            if result.output not in outputs:
                outputs[result.output] = read_vertices(result.output, weights=False)
            vertices = outputs[result.output]
            if vertices.n_events != result.n_events:  # this input's share of a merged output
                vertices = vertices.select_events(result.first_event,
                                                  result.first_event + result.n_events)
            validated.append((result, validate(vertices, truth)))
        except (ValueError, OSError) as error:  # the truth does not fit, cannot be read, ...
            named = str(error) if str(error).startswith(str(result.input)) else (
                f"{result.input}: {error}")
            print(f"pvfinder reconstruct: warning: not validated: {named}", file=sys.stderr)
    files_failed = 0
    skipped = sum(result.status == "skipped" for result in results)
    for option, target, so in (
            ("--plots", plots, "have no plots (pvfinder validate draws them)"),
            ("--json", summaries, "not in it (pvfinder validate gives their figures)")):
        if target and skipped:
            print(f"pvfinder reconstruct: warning: {option} {target}: the {skipped} input(s) "
                  f"left by --skip-existing are not validated again, so {so}", file=sys.stderr)
    if summaries:
        try:
            _write_summaries(summaries, [_summary(result.input, result.output, report)
                                         for result, report in validated])
        except OSError as error:
            print(f"pvfinder reconstruct: error: {error}", file=sys.stderr)
            files_failed += 1
    folders = _plot_folders([result.input for result in done]) if len(done) > 1 else {}
    for result, report in validated:
        if len(done) > 1:
            print(f"== {result.input}")
        try:  # an error of the command (exit 2), not of the validation; the next input goes on
            _print_validation(report, plots and str(Path(plots, folders.get(result.input, ""))))
        except OSError as error:
            print(f"pvfinder reconstruct: error: {result.input}: {error}", file=sys.stderr)
            files_failed += 1
    return files_failed


def _check_summaries(summaries: str | None, plots: str | None, files: list[Path | str]) -> None:
    """Refuse, before the job, a ``--json`` file that cannot be written, or whose writing
    would replace something else: one of the job's files (``files``: inputs, outputs, the
    output folder), the ``--plots`` folder, or a ROOT file (``--json run.root``, a slip)."""
    from .io import input_identity, is_url

    if summaries is None:
        return
    mine = input_identity(summaries)
    for name in files:
        if not is_url(name) and input_identity(name) == mine:
            raise UsageError(f"--json {summaries}: is {name}, an input or output of this job")
    if plots is not None and (mine + os.sep).startswith(input_identity(plots) + os.sep):
        raise UsageError(f"--json {summaries}: in the --plots folder, whose folders and "
                         "files are the plots'")
    _check_text_output(summaries, "--json")


def _check_text_output(path: str, option: str) -> None:
    """Refuse a file for ``option``'s text that cannot be written, or that is a ROOT file
    (``run.root`` for ``run.json``, a slip), which writing would replace."""
    _check_writable(path, option)
    if Path(path).is_file():
        with open(path, "rb") as file:
            if file.read(4) == b"root":
                raise UsageError(f"{option} {path}: a ROOT file, which it would replace")


def _summary(sample: Path | str, vertices: Path | str, report: Any) -> dict[str, Any]:
    """One entry of ``--json``: the files validated, as vertex files record their inputs
    (absolute paths; URLs without their query and credentials: no token, no password), and
    the PV checker's summary."""
    from .io import input_identity

    return {"sample": input_identity(sample), "vertices": input_identity(vertices),
            "report": report.to_dict()}


def _write_summaries(path: str, summaries: list[dict[str, Any]]) -> None:
    """``--json``: the summaries as a JSON list (strict: no NaN, as ``to_dict`` gives none)."""
    _write_text(path, json.dumps(summaries, indent=2, allow_nan=False) + "\n", "--json")


def _write_text(path: str, text: str, option: str) -> None:
    """Write ``text`` to the file ``path`` given to ``option``, whole or not at all: into
    ``<file>.<unique>.part``, then renamed over it (a full disk or a stop leaves the earlier
    file as it was); a device or a pipe (``/dev/null``) is written as it is. Says so.

    Raises
    ------
    OSError
        Naming the option and the file.
    """
    from .io import _not_a_regular_file, _written_whole

    try:
        if _not_a_regular_file(Path(path)) not in (None, "a directory"):
            with open(path, "w") as stream:
                stream.write(text)
        else:
            with _written_whole(Path(path)) as partial:
                partial.write_text(text)
    except OSError as error:
        raise OSError(f"{option} {path}: not written ({error.strerror or error})") from None
    print(f"wrote {path}")  # not in the try: a closed stdout is not a failed write


def _plot_folders(inputs: list[Path | str]) -> dict[Path | str, str]:
    """A folder name per input for its plots: its stem, numbered where stems repeat
    (a/run.root, b/run.root → run, run_2)."""
    from .io import _input_stem

    folders: dict[Path | str, str] = {}
    taken: set[str] = set()
    last: dict[str, int] = {}  # per stem, the last number given: no rescan from 2
    for path in inputs:
        stem = _input_stem(path)
        name, number = stem, last.get(stem, 1)
        while name in taken:  # also past an input named like a numbered one
            number += 1
            name = f"{stem}_{number}"
        folders[path], last[stem] = name, number
        taken.add(name)
    return folders


def _names_an_input(scheduler: str) -> bool:
    """Whether ``--dask``'s value is rather an input that followed it: not ``local[:N]``,
    and a ``*.root`` name (also a URL's, before its query: an address ends in a port) or an
    existing path."""
    from .io import is_url

    if scheduler.partition(":")[0] == "local":
        return False
    if is_url(scheduler):
        return scheduler.partition("?")[0].lower().endswith(".root")
    return scheduler.lower().endswith(".root") or Path(scheduler).exists()


def _cmd_reconstruct(args: argparse.Namespace) -> int:
    from .backends import get_backend
    from .distributed import expand_inputs, plan_outputs, reconstruct_files

    if args.plots and args.no_validate:
        raise UsageError("--plots draws the validation, which --no-validate turns off")
    if args.json and args.no_validate:
        raise UsageError("--json holds the validation, which --no-validate turns off")
    if args.output == "":  # was taken as the current directory
        raise UsageError("-o needs a file or directory name, got ''")
    _check_plots_folder(args.plots)
    config = _load_config(args.config, args.set)
    schema = _track_schema(args)
    inputs, errors = expand_inputs(args.inputs, output=args.output)
    for message in errors:
        print(f"pvfinder reconstruct: error: {message}", file=sys.stderr)
    plan = plan_outputs(inputs, args.output, merge=args.merge)
    _check_summaries(args.json, args.plots, [*inputs, *plan, args.output])
    where = f"Dask ({args.dask})" if args.dask else get_backend(args.backend).name
    start = time.perf_counter()
    try:
        results = reconstruct_files(
            plan, schema=schema, config=config, backend=args.backend,
            step_size=args.step_size,
            with_weights=args.weights, compression=args.compression,
            skip_existing=args.skip_existing, scheduler=args.dask,
            progress=sys.stderr.isatty(), on_result=_result_printer())
    except ImportError as error:  # Dask asked for but not installed: the hint is the message
        raise UsageError(str(error)) from None
    elapsed = time.perf_counter() - start
    n_events = sum(result.n_events for result in results)
    rate = n_events / elapsed if elapsed > 0 else float("inf")
    print(f"reconstructed {sum(result.n_vertices for result in results)} vertices in "
          f"{n_events} events on {where} ({rate:,.0f} events/s including reading, writing "
          "and compilation)")
    for output in sorted({r.output for r in results if r.status == "done"}):
        print(f"wrote {output}")
    files_failed = 0 if args.no_validate else _validate_outputs(results, args.plots,
                                                                schema.tree, args.json)
    n_failed = len(errors) + sum(result.status == "failed" for result in results)
    if n_failed:
        print(f"{n_failed} input(s) failed (errors above)")
    return 2 if n_failed or files_failed else 0


def _print_validation(report, plots: str | None) -> None:
    """The report's table, and its plots in ``plots`` when given (an ``OSError`` that names
    the folder when they cannot be written)."""
    print(report.table())
    if plots:
        try:
            paths = report.plot(plots)
        except OSError as error:  # not the table's: a closed stdout is not a plot's fault
            raise OSError(f"plots not written in {plots} ({error.strerror or error})") from None
        for path in paths:
            print(f"wrote {path}")


def _cmd_validate(args: argparse.Namespace) -> int:
    from .io import read_truth, read_vertices
    from .validation import validate

    _check_plots_folder(args.plots)
    _check_summaries(args.json, args.plots, [args.sample, args.vertices])
    truth = read_truth(args.sample, args.tree)
    if truth is None:
        raise UsageError(f"{args.sample}: holds no truth tree to validate against")
    _check_same_events(args.sample, args.tree, args.vertices)  # before reading them all
    vertices = read_vertices(args.vertices, weights=False)  # never needed here, 25 kB/event
    if vertices.n_events != truth.n_events:  # validate() would name neither file
        raise UsageError(f"{args.vertices}: the vertices of {vertices.n_events} events, but "
                         f"{args.sample} has {truth.n_events}: not this sample's vertices")
    report = validate(vertices, truth)
    if args.json is not None:  # before the table: a closed stdout must not lose it
        _write_summaries(args.json, [_summary(args.sample, args.vertices, report)])
    _print_validation(report, args.plots)
    return 0


def _check_plots_folder(plots: str | None) -> None:
    """Refuse, before anything runs (and without making anything), a ``--plots`` that cannot
    become a folder of plots: a file, a file or a dangling link on its path, or plotting
    libraries that are not installed."""
    if not plots:
        return
    path = Path(plots)
    existing = path  # the nearest part of the path that is there (a dangling link counts)
    while not (existing.exists() or existing.is_symlink()):
        existing = existing.parent
    if not existing.is_dir():
        what = ("a file, not a directory" if existing == path and path.is_file() else
                f"cannot be made a directory ({existing} is not one)")
        raise UsageError(f"--plots {plots}: {what}")
    try:
        import matplotlib  # noqa: F401
        import mplhep  # noqa: F401
    except ImportError:
        raise UsageError("--plots needs matplotlib and mplhep: pip install "
                         "'pvfinder[plot]'") from None


def _check_same_events(sample: str, tracks_tree: str, vertices: str) -> None:
    """Refuse vertices whose event identifiers are not those of the sample's tracks, which
    reconstruct carries over (another sample of the same size would be scored without a
    word); identifiers that only one of the files has are not compared."""
    import numpy as np

    from .io import VERTICES_TREE, read_event_ids, recorded_inputs

    expected = read_event_ids(sample, tracks_tree)
    found = read_event_ids(vertices, VERTICES_TREE)
    for name in expected.keys() & found.keys():
        if len(expected[name]) != len(found[name]):
            merged = recorded_inputs(vertices) or []
            if len(merged) > 1:  # said only that the event counts differ
                raise UsageError(
                    f"{vertices}: the vertices of {len(merged)} inputs merged "
                    f"({', '.join(Path(path).name for path in merged)}), not of {sample} "
                    "alone; reconstruct --merge prints the validation of each input")
            return  # counted once the vertices are read
        differ = np.flatnonzero(expected[name] != found[name])
        if differ.size:
            event = differ[0]
            raise UsageError(f"{vertices}: its event {event} has {name} {found[name][event]} "
                             f"but {sample}:{tracks_tree} has {expected[name][event]} there: "
                             "not this sample's vertices")


def _check_bench_options(args: argparse.Namespace) -> Any:
    """Refuse, before anything runs, an option the chosen benchmark would ignore or a size
    it cannot run; returns the finder's configuration for ``--physics`` (else None)."""
    import numba

    from .backends import get_backend
    from .benchmark import check_counts, check_pile_ups
    from .distributed import _import_dask

    chosen = [flag for flag, asked in (("--io", args.io), ("--latency", args.latency),
                                       ("--physics", args.physics)) if asked]
    if len(chosen) > 1:
        raise UsageError(f"{' and '.join(chosen)} are separate benchmarks: run one at a time")
    backend = get_backend(args.backend).name  # one that cannot run here is refused now
    # Without one, the throughput scan: threads and sizes on the CPU, batches on a GPU.
    kind = chosen[0] if chosen else f"--backend {backend}"
    ignored = {"--io": {"--nu": args.nu, "--threads": args.threads, "--batch": args.batch},
               "--latency": {"-n": args.n_events, "--threads": args.threads},
               "--physics": {"--threads": args.threads, "--batch": args.batch},
               "--backend cpu": {"--batch": args.batch},
               "--backend cuda": {"-n": args.n_events, "--threads": args.threads}}[kind]
    if kind != "--physics":  # the others measure the specification's finder
        for option, value in (("--config", args.config), ("--set", args.set or None)):
            if value is not None:
                raise UsageError(f"{option} applies to bench --physics only (the other "
                                 "benchmarks run the specification's finder)")
    for option, value in ignored.items():
        if value is not None:
            raise UsageError(f"{option} does not apply to bench {kind}")
    _check_seed(args.seed)
    if (args.latency or args.physics) and args.nu is not None and len(args.nu) != 1:
        raise UsageError(f"bench {kind} takes one --nu")
    try:  # the benchmarks' own checks, naming the options
        check_counts({"-n": args.n_events, "--batch": args.batch})
        check_counts({"--threads": args.threads}, at_most=numba.config.NUMBA_NUM_THREADS)
        check_pile_ups({"--nu": args.nu})
    except ValueError as error:
        raise UsageError(str(error)) from None
    if args.io:  # its Dask run comes after minutes of simulating and writing files
        try:
            _import_dask()
        except ImportError as error:
            raise UsageError(str(error)) from None
    config = _load_config(args.config, args.set) if args.physics else None
    if args.output is not None:  # known before a run of minutes, not after it
        _check_text_output(args.output, "-o")
    return config


def _check_seed(seed: int | None) -> None:
    """Refuse a negative ``--seed`` (argparse made it an integer), naming the option."""
    if seed is not None and seed < 0:
        raise UsageError(f"--seed must be a non-negative integer, got {seed}")


def _check_writable(path: str, option: str = "-o") -> None:
    """Refuse a file that cannot be written, by creating it (and removing it again when it
    was not there): asking the permissions does not tell (root, /proc, read-only mounts)."""
    output = Path(path).resolve()  # a link's target: the probe must not replace the link
    if output.is_dir():
        raise UsageError(f"{option} {path}: cannot be written, it is a directory")
    if not output.parent.is_dir():
        what = "is a file" if output.parent.exists() else "does not exist"
        raise UsageError(f"{option} {path}: cannot be written, {output.parent} {what}")
    if output.is_fifo():  # opening it would wait for its reader, or end what it reads
        if not os.access(output, os.W_OK):
            raise UsageError(f"{option} {path}: cannot be written (permission denied)")
        return
    existed = output.exists()
    try:
        with output.open("a"):
            pass
    except OSError as error:
        raise UsageError(f"{option} {path}: cannot be written ({error.strerror})") from None
    if not existed:
        output.unlink()


def _cmd_bench(args: argparse.Namespace) -> int:
    from .benchmark import run_benchmark, run_latency_benchmark

    config = _check_bench_options(args)
    # Each benchmark has its own defaults (the figures); the options override them.
    size = {} if args.n_events is None else {"n_events": args.n_events}
    seed = {} if args.seed is None else {"seed": args.seed}
    nu = {} if args.nu is None else {"nu": args.nu[0]}
    if args.io:
        from .benchmark_io import run_io_benchmark

        result = run_io_benchmark(backend=args.backend, progress=print, **size, **seed)
    elif args.latency:
        result = run_latency_benchmark(backend=args.backend, batch_sizes=args.batch,
                                       progress=print, **nu, **seed)
    elif args.physics:
        from .benchmark_physics import run_physics_benchmark

        result = run_physics_benchmark(backend=args.backend, config=config, progress=print,
                                       **size, **nu, **seed)
    else:
        nu_values = {} if args.nu is None else {"nu_values": args.nu}
        result = run_benchmark(
            backend=args.backend,
            threads=args.threads,
            batch_sizes=args.batch,
            progress=print,
            **size,
            **nu_values,
            **seed,
        )
    text = json.dumps(result, indent=2)
    if args.output:
        _write_text(args.output, text + "\n", "-o")
    else:
        print(text)
    missed = [goal["name"] for goal in result.get("goals", ()) if not goal["met"]]
    if missed:  # a physics goal is asserted, as the test suite asserts it on fewer events
        print(f"pvfinder bench: {len(missed)} of {len(result['goals'])} physics goals missed: "
              f"{'; '.join(missed)}", file=sys.stderr)
        return GOAL_MISSED
    return 0


def _cmd_info(args: argparse.Namespace) -> int:
    import platform

    import awkward
    import numba
    import numpy
    import uproot

    from .backends import available_backends, get_backend

    print(f"pvfinder {__version__} on Python {platform.python_version()} ({platform.machine()})")
    for module in (numpy, numba, awkward, uproot):
        print(f"  {module.__name__:<10s} {module.__version__}")
    print("backends:")
    for name, reason in available_backends().items():
        print(f"  {name:<6s} {'available' if reason is None else 'unavailable: ' + reason}")
    if available_backends()["cuda"] is None:
        from .kernels.cuda._module import describe_device

        for line in describe_device():
            print(f"    {line}")
    print(f"'auto' selects: {get_backend('auto').name}")
    return 0


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="pvfinder", description="LHCb-style primary-vertex finding on CPU and GPU."
    )
    parser.add_argument("--version", action="version", version=f"pvfinder {__version__}")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    simulate = commands.add_parser("simulate", help="generate a simulated LHCb Upgrade I sample")
    simulate.add_argument("-n", "--n-events", type=int, default=1000,
                          help="number of events (default 1000)")
    simulate.add_argument("-o", "--output", help="ROOT file to write (tracks and truth); "
                                                 "without it only the statistics are printed")
    simulate.add_argument("--seed", type=int, default=1, help="random seed (default 1)")
    simulate.add_argument("--compression", choices=["zstd", "lz4", "zlib", "lzma"],
                          default="zstd",
                          help="compression of the output file (default zstd; lzma: 3-4 %% smaller, "
                               "much slower to read; see pvfinder.io.write_sample)")
    simulate.add_argument("--nu", type=float,
                          help="mean visible interactions per crossing (default 7.6)")
    simulate.add_argument("--set", action="append", default=[], metavar="NAME=VALUE",
                          help="override a simulation condition (repeatable; the names are "
                               "the fields of pvfinder.simulation.Conditions)")
    simulate.set_defaults(run=_cmd_simulate)

    reconstruct = commands.add_parser(
        "reconstruct", help="find the PVs of ROOT files of tracks",
        description="Find the PVs of each input and write them; a bad input is reported and "
                    "the others go on (exit code 2 at the end).")
    # "*", checked by _parsed: "+" reported an input taken by --dask as missing
    reconstruct.add_argument("inputs", nargs="*", metavar="IN",
                             help="ROOT files of tracks, glob patterns ('dir/*.root') or URLs "
                                  "('root://host//dir/*.root', read through fsspec)")
    reconstruct.add_argument("-o", "--output", required=True,
                             help="ROOT file, a name ending in .root (one input, or "
                                  "--merge), or directory (one <stem>_pvs.root per input)")
    reconstruct.add_argument("--merge", action="store_true",
                             help="write every input's vertices into the one file OUTPUT")
    reconstruct.add_argument("--skip-existing", action="store_true",
                             help="leave outputs that hold their inputs' vertices already (resume "
                                  "an interrupted run)")
    reconstruct.add_argument("--backend", default="auto", choices=["auto", "cpu", "cuda"])
    reconstruct.add_argument("--config", help="JSON or TOML file of PVFinderConfig fields")
    reconstruct.add_argument("--set", action="append", default=[], metavar="NAME=VALUE",
                             help="override a PVFinderConfig field (repeatable)")
    reconstruct.add_argument("--schema", help="TOML or JSON file: tree, branches, event_ids, "
                                              "fill_missing_covariance (see pvfinder.io)")
    reconstruct.add_argument("--tree", help="tree of tracks (default: the schema's, 'tracks')")
    reconstruct.add_argument("--branch", action="append", default=[], metavar="FIELD=BRANCH",
                             help="read a track field from this branch (repeatable)")
    reconstruct.add_argument("--fill-cov", action="append", default=[], metavar="FIELD=VALUE",
                             help="fill a covariance term the input lacks (repeatable)")
    reconstruct.add_argument("--step-size", "--chunk-events", default="100 MB",
                             help="chunk read at a time: entries (e.g. 10000) or bytes (default "
                                  "'100 MB')")
    reconstruct.add_argument("--weights", action="store_true",
                             help="also write the track-vertex weights and each track's vertex")
    reconstruct.add_argument("--compression", default="lz4",
                             choices=["lz4", "zstd", "zlib", "lzma", "none"],
                             help="codec of the output files (default lz4, the fastest to "
                                  "write; zstd: 7 %% smaller, 19 %% with --weights)")
    reconstruct.add_argument("--dask", nargs="?", const="local", metavar="SCHEDULER",
                             help="run on Dask: local:N worker processes or a scheduler "
                                  "address (alone: one local worker per core this process "
                                  "may use); put it "
                                  "after the inputs")
    reconstruct.add_argument("--plots", help="directory for validation plots")
    reconstruct.add_argument("--json", metavar="FILE",
                             help="write the PV checker's summary of each input with truth "
                                  "to this JSON file (a list of sample, vertices, report)")
    reconstruct.add_argument("--no-validate", action="store_true",
                             help="skip the validation table even if truth is present")
    reconstruct.set_defaults(run=_cmd_reconstruct)

    validate = commands.add_parser("validate", help="score vertices against a sample's truth")
    validate.add_argument("sample", help="ROOT file with the 'truth' tree")
    validate.add_argument("vertices", help="ROOT file with the 'vertices' tree")
    validate.add_argument("--tree", default="tracks",
                          help="the sample's tree of tracks, whose branch mc_pv labels them")
    validate.add_argument("--plots", help="directory for validation plots")
    validate.add_argument("--json", metavar="FILE",
                          help="write the PV checker's summary to this JSON file (a list of "
                               "one sample, vertices, report)")
    validate.set_defaults(run=_cmd_validate)

    bench = commands.add_parser("bench", help="measure throughput (events/s) per stage, "
                                              "latency, I/O or the physics goals")
    bench.add_argument("--backend", default="cpu", choices=["auto", "cpu", "cuda"])
    bench.add_argument("-n", "--n-events", type=int, default=None,
                       help="events per measurement on the CPU (default 20 000 per ν); with "
                            "--io: events in all (default 200 000); with --physics: events of "
                            "the sample (default 100 000); not with --latency")
    bench.add_argument("--nu", type=float, nargs="+", default=None,
                       help="pile-up values to scan (default 2 5 7.6 11 15); with --latency "
                            "or --physics: one value (default 7.6); not with --io (7.6)")
    bench.add_argument("--threads", type=int, nargs="+", default=None,
                       help="CPU thread counts (default: 1 and all); not with --latency, "
                            "--io or --physics")
    bench.add_argument("--batch", type=int, nargs="+", default=None,
                       help="GPU batch sizes (default: 1000 10000 100000 1000000; "
                            "with --latency: 1 16 256 4096); not with --io or --physics, "
                            "nor on the CPU without --latency")
    bench.add_argument("--latency", action="store_true",
                       help="per-call latency (median, 99th percentile) of a warmed-up finder "
                            "for small batches, as in a trigger loop")
    bench.add_argument("--io", action="store_true",
                       help="end-to-end reconstruct of -n simulated events in 4 ROOT files, "
                            "one process and Dask local:2, with the share of time spent in I/O")
    bench.add_argument("--physics", action="store_true",
                       help="the PV checker on -n simulated events (default 100 000) at one "
                            "--nu (default 7.6) against the CPU pipeline's physics goals; "
                            "exits 3 when one is missed")
    bench.add_argument("--config", help="with --physics: JSON or TOML file of PVFinderConfig "
                                        "fields (default: the specification's)")
    bench.add_argument("--set", action="append", default=[], metavar="NAME=VALUE",
                       help="with --physics: override a PVFinderConfig field (repeatable)")
    bench.add_argument("--seed", type=int, default=None,
                       help="random seed of the simulated events (default 7; --physics: 2, "
                            "the sample of the physics notebook)")
    bench.add_argument("-o", "--output", help="write the JSON here instead of printing it")
    bench.set_defaults(run=_cmd_bench)

    info = commands.add_parser("info", help="versions and available backends")
    info.set_defaults(run=_cmd_info)
    return parser


def _parsed(argv: Sequence[str] | None) -> argparse.Namespace:
    """The command line parsed, a mistake reported with its command's usage: an unknown option
    (argparse leaves those of a subcommand to the top-level parser, whose usage shows no
    option) or an input that ``reconstruct --dask`` took for its scheduler."""
    parser = _parser()
    args, unknown = parser.parse_known_args(argv)
    commands = next(action for action in parser._actions
                    if isinstance(action, argparse._SubParsersAction))
    command = commands.choices[args.command]
    if unknown:
        command.error(f"unrecognized arguments: {' '.join(unknown)}")
    if args.command == "reconstruct":
        if args.dask and _names_an_input(args.dask):  # Dask said: missing port number
            command.error(f"--dask took the input {args.dask} for its scheduler: put --dask "
                          "after the inputs")
        if not args.inputs:
            command.error("the following arguments are required: IN")
    return args


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``pvfinder`` command; returns the exit code."""
    args = _parsed(argv)
    shown = warnings.showwarning
    on_sigterm = _catch_sigterm()
    unraisable, resent = sys.unraisablehook, []
    try:
        warnings.showwarning = _warning_printer(args.command)
        sys.unraisablehook = _stops_sent_again(unraisable, resent)
        return _run(args)
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    except _Terminated:
        print("terminated", file=sys.stderr)
        return 128 + signal.SIGTERM
    finally:
        warnings.showwarning = shown
        sys.unraisablehook = unraisable
        for timer in resent:  # not after main() has returned
            timer.cancel()
        if on_sigterm is not None:
            signal.signal(signal.SIGTERM, on_sigterm)


def _run(args: argparse.Namespace) -> int:
    """Run the command, its errors printed as one line; the stops are main()'s."""
    from .backends import BackendUnavailableError  # numpy: once stops are handled

    try:
        return args.run(args)
    except BrokenPipeError as error:
        if not _stdout_is_closed():  # another pipe: an error like any other
            print(f"pvfinder {args.command}: error: {error}", file=sys.stderr)
            return 2
        return 1  # output piped into a reader that stopped (| head): end quietly
    except (UsageError, ValueError, OSError, BackendUnavailableError) as error:
        print(f"pvfinder {args.command}: error: {error}", file=sys.stderr)
        return 2
    except MemoryError as error:  # e.g. buffers for a configuration of billions of bins
        detail = f" ({error})" if str(error) else ""
        print(f"pvfinder {args.command}: error: out of memory{detail}", file=sys.stderr)
        return 2


class _Terminated(BaseException):
    """SIGTERM received; a BaseException, as KeyboardInterrupt, so that no ``except
    Exception`` takes it for an error of one file."""


def _catch_sigterm() -> Any:
    """Have SIGTERM, a batch system's stop, unwind as Ctrl-C does, so that no partial output
    is left; returns the handler to put back, None where this thread may not handle signals
    (only the main thread of the main interpreter may)."""
    if threading.current_thread() is not threading.main_thread():
        return None
    try:
        previous = signal.signal(signal.SIGTERM, _raise_terminated)
    except ValueError:  # a subinterpreter
        return None
    return signal.SIG_DFL if previous is None else previous  # None: set outside Python


def _raise_terminated(signum: int, frame: Any) -> None:
    signal.signal(signal.SIGTERM, signal.SIG_IGN)  # a second one must not cut the clean-up
    raise _Terminated


def _stops_sent_again(passed_on: Callable[[Any], None],
                      timers: list[threading.Timer]) -> Callable[[Any], None]:
    """A ``sys.unraisablehook`` that sends a stop again when its exception was raised inside
    a finalizer (a ``__del__``, a garbage-collector callback) of the main thread: Python
    drops it there, and the job ran to its end. The stop is sent a moment later, from a
    timer (kept in ``timers``), so that it is raised once the finalizer has returned; should
    it not be, this hook sends it again. Other exceptions go to ``passed_on``."""
    def hook(unraisable: Any) -> None:
        if threading.current_thread() is not threading.main_thread():
            passed_on(unraisable)
        elif issubclass(unraisable.exc_type, (KeyboardInterrupt, _Terminated)):
            stop = signal.SIGINT if issubclass(unraisable.exc_type, KeyboardInterrupt) \
                else signal.SIGTERM
            if stop == signal.SIGTERM:
                signal.signal(signal.SIGTERM, _raise_terminated)  # it ignores further ones
            timers.append(threading.Timer(0.01, _thread.interrupt_main, args=(stop,)))
            timers[-1].daemon = True
            timers[-1].start()
        else:
            passed_on(unraisable)
    return hook


def _warning_printer(command: str) -> Any:
    """A ``warnings.showwarning`` that prints a warning as this command's other messages
    are printed (one line, no source line of pvfinder's)."""
    def show(message: Warning | str, category: type[Warning], filename: str, lineno: int,
             file: Any = None, line: str | None = None) -> None:
        kind = "" if issubclass(category, UserWarning) else f"{category.__name__}: "
        print(f"pvfinder {command}: warning: {kind}{message}", file=file or sys.stderr)
    return show


def _stdout_is_closed() -> bool:
    """Whether standard output is a pipe or socket whose reader has gone (it reports an
    error or a hang-up when polled); if so, point it at the null device so that flushing it
    at exit raises no second error."""
    import select

    try:
        descriptor = sys.stdout.fileno()
    except (AttributeError, OSError, ValueError):  # no file descriptor (io.StringIO)
        return False
    if not hasattr(select, "poll"):  # Windows: no way to ask; take it as the cause
        return True
    poller = select.poll()
    poller.register(descriptor, select.POLLOUT)
    # A pipe without reader reports POLLERR on Linux, POLLHUP elsewhere; a socket, POLLHUP.
    if not any(events & (select.POLLERR | select.POLLHUP) for _, events in poller.poll(0)):
        return False
    os.dup2(os.open(os.devnull, os.O_WRONLY), descriptor)
    return True


if __name__ == "__main__":  # python -m pvfinder.cli, as well as python -m pvfinder
    sys.exit(main())
