"""The ``pvfinder`` command: simulate, reconstruct, validate, bench, info."""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from . import __version__

__all__ = ["main"]


class UsageError(Exception):
    """A mistake of the user's: printed as one line, exit code 2."""


def _parse_assignments(items: Sequence[str], what: str) -> dict[str, Any]:
    """``["nu=5", "zmin=-200"]`` → ``{"nu": 5.0, "zmin": -200.0}`` (JSON values where they parse)."""
    out: dict[str, Any] = {}
    for item in items:
        name, sep, value = item.partition("=")
        if not sep or not name:
            raise UsageError(f"{what} expects NAME=VALUE, got {item!r}")
        try:
            out[name] = json.loads(value)
        except json.JSONDecodeError:
            out[name] = value
    return out


def _load_config(path: str | None, overrides: Sequence[str]):
    from .config import PVFinderConfig

    mapping: dict[str, Any] = {}
    if path is not None:
        text = Path(path).read_text()
        if path.endswith(".toml"):
            import tomllib

            mapping = tomllib.loads(text)
        else:
            mapping = json.loads(text)
    mapping.update(_parse_assignments(overrides, "--set"))
    return PVFinderConfig.from_mapping(mapping)


def _cmd_simulate(args: argparse.Namespace) -> int:
    from .io import write_sample
    from .simulation import simulate

    overrides = _parse_assignments(args.set, "--set")
    if args.nu is not None:
        overrides["nu"] = args.nu
    start = time.perf_counter()
    sample = simulate(args.n_events, seed=args.seed, **overrides)
    elapsed = time.perf_counter() - start
    print(f"simulated {args.n_events} events in {elapsed:.1f} s (seed {args.seed})")
    for name, value in sample.statistics().items():
        print(f"  {name:<40s} {value:10.4f}")
    if args.output:
        write_sample(args.output, sample.tracks, sample.truth, compression=args.compression)
        print(f"wrote {args.output}")
    return 0


def _reconstruct_file(path: str, finder, chunk_events: int):
    """Run ``finder`` over the tracks of ``path`` in chunks, with a progress bar."""
    from tqdm.auto import tqdm

    from .io import read_tracks
    from .events import VertexBatch

    tracks = read_tracks(path)
    pieces = []
    start_time = time.perf_counter()
    with tqdm(total=tracks.n_events, unit="evt", desc=Path(path).name,
              disable=not sys.stderr.isatty()) as bar:
        for start in range(0, max(tracks.n_events, 1), chunk_events):
            stop = min(start + chunk_events, tracks.n_events)
            pieces.append(finder(tracks.select_events(start, stop)))
            bar.update(stop - start)
    elapsed = time.perf_counter() - start_time
    return tracks, VertexBatch.concatenate(pieces), elapsed


def _cmd_reconstruct(args: argparse.Namespace) -> int:
    from .io import read_truth, write_vertices
    from .pipeline import PVFinder

    finder = PVFinder(_load_config(args.config, args.set), backend=args.backend)
    tracks, vertices, elapsed = _reconstruct_file(args.input, finder, args.chunk_events)
    rate = tracks.n_events / elapsed if elapsed > 0 else float("inf")
    print(f"reconstructed {vertices.n_vertices} vertices in {tracks.n_events} events "
          f"on {finder.backend.name} ({rate:,.0f} events/s including compilation)")
    write_vertices(args.output, vertices)
    print(f"wrote {args.output}")
    truth = read_truth(args.input)
    if truth is not None and not args.no_validate:
        _print_validation(vertices, truth, args.plots)
    return 0


def _print_validation(vertices, truth, plots: str | None) -> None:
    from .validation import validate

    report = validate(vertices, truth)
    print(report.table())
    if plots:
        for path in report.plot(plots):
            print(f"wrote {path}")


def _cmd_validate(args: argparse.Namespace) -> int:
    from .io import read_truth, read_vertices

    truth = read_truth(args.sample)
    if truth is None:
        raise UsageError(f"{args.sample}: holds no truth tree to validate against")
    vertices = read_vertices(args.vertices)
    _print_validation(vertices, truth, args.plots)
    return 0


def _cmd_bench(args: argparse.Namespace) -> int:
    from .benchmark import run_benchmark, run_latency_benchmark

    if args.latency:
        result = run_latency_benchmark(backend=args.backend, batch_sizes=args.batch,
                                       seed=args.seed, progress=print)
    else:
        result = run_benchmark(
            backend=args.backend,
            n_events=args.n_events,
            nu_values=args.nu,
            threads=args.threads,
            batch_sizes=args.batch,
            seed=args.seed,
            progress=print,
        )
    text = json.dumps(result, indent=2)
    if args.output:
        Path(args.output).write_text(text + "\n")
        print(f"wrote {args.output}")
    else:
        print(text)
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
    simulate.add_argument("-n", "--n-events", type=int, default=1000, help="number of events")
    simulate.add_argument("-o", "--output", help="ROOT file to write (tracks and truth)")
    simulate.add_argument("--seed", type=int, default=1, help="random seed (default 1)")
    simulate.add_argument("--compression", choices=["zlib", "lzma"], default="zlib",
                          help="compression of the output file (lzma: smaller, slower)")
    simulate.add_argument("--nu", type=float, help="mean visible interactions per crossing")
    simulate.add_argument("--set", action="append", default=[], metavar="NAME=VALUE",
                          help="override a simulation condition (repeatable)")
    simulate.set_defaults(run=_cmd_simulate)

    reconstruct = commands.add_parser("reconstruct", help="find the PVs of a ROOT file of tracks")
    reconstruct.add_argument("input", help="ROOT file with a 'tracks' tree")
    reconstruct.add_argument("-o", "--output", required=True, help="ROOT file for the vertices")
    reconstruct.add_argument("--backend", default="auto", choices=["auto", "cpu", "cuda"])
    reconstruct.add_argument("--config", help="JSON or TOML file of PVFinderConfig fields")
    reconstruct.add_argument("--set", action="append", default=[], metavar="NAME=VALUE",
                             help="override a PVFinderConfig field (repeatable)")
    reconstruct.add_argument("--chunk-events", type=int, default=10000,
                             help="events per batch handed to the finder")
    reconstruct.add_argument("--plots", help="directory for validation plots")
    reconstruct.add_argument("--no-validate", action="store_true",
                             help="skip the validation table even if truth is present")
    reconstruct.set_defaults(run=_cmd_reconstruct)

    validate = commands.add_parser("validate", help="score vertices against a sample's truth")
    validate.add_argument("sample", help="ROOT file with the 'truth' tree")
    validate.add_argument("vertices", help="ROOT file with the 'vertices' tree")
    validate.add_argument("--plots", help="directory for validation plots")
    validate.set_defaults(run=_cmd_validate)

    bench = commands.add_parser("bench", help="measure throughput (events/s) per stage")
    bench.add_argument("--backend", default="cpu", choices=["auto", "cpu", "cuda"])
    bench.add_argument("-n", "--n-events", type=int, default=20000,
                       help="events per measurement (CPU)")
    bench.add_argument("--nu", type=float, nargs="+", default=[2.0, 5.0, 7.6, 11.0, 15.0],
                       help="pile-up values to scan")
    bench.add_argument("--threads", type=int, nargs="+", default=None,
                       help="CPU thread counts (default: 1 and all)")
    bench.add_argument("--batch", type=int, nargs="+", default=None,
                       help="GPU batch sizes (default: 1000 10000 100000 1000000; "
                            "with --latency: 1 16 256 4096)")
    bench.add_argument("--latency", action="store_true",
                       help="per-call latency (median, 99th percentile) of a warmed-up finder "
                            "for small batches, as in a trigger loop")
    bench.add_argument("--seed", type=int, default=7)
    bench.add_argument("-o", "--output", help="write the JSON here instead of printing it")
    bench.set_defaults(run=_cmd_bench)

    info = commands.add_parser("info", help="versions and available backends")
    info.set_defaults(run=_cmd_info)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``pvfinder`` command; returns the exit code."""
    from .backends import BackendUnavailableError

    args = _parser().parse_args(argv)
    try:
        return args.run(args)
    except (UsageError, ValueError, FileNotFoundError, BackendUnavailableError) as error:
        print(f"pvfinder {args.command}: error: {error}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
