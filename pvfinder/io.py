"""ROOT files of tracks, truth and vertices (uproot), with errors that name the problem.

Layout written and read by default (all lengths in mm):

* tree ``tracks``: ``event_number`` (uint64), ``n_tracks`` (counter) and one jagged branch per
  track field of :data:`pvfinder.events.TRACK_FIELDS`; with truth also ``mc_pv`` (int32, index
  of the track's MC PV in the event, −1 for ghosts and displaced daughters).
* tree ``truth``: ``event_number``, ``n_pvs`` (counter) and jagged ``x``, ``y``, ``z``,
  ``n_reconstructible`` of the MC PVs.
* tree ``vertices``: ``event_number``, ``n_vertices`` (counter) and jagged branches of
  :data:`pvfinder.events.VERTEX_FIELDS`; optionally ``weights`` per vertex flattened per
  event with ``weight_counts`` giving each vertex's share.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import awkward as ak
import numpy as np
import uproot

from .events import (
    MC_VERTEX_FIELDS,
    TRACK_FIELDS,
    VERTEX_FIELDS,
    MCTruth,
    MCVertices,
    TrackBatch,
    VertexBatch,
)

__all__ = ["read_tracks", "read_truth", "write_sample", "write_vertices", "read_vertices"]

TRACKS_TREE, TRUTH_TREE, VERTICES_TREE = "tracks", "truth", "vertices"


def _open(path: str | os.PathLike) -> Any:
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"{path}: no such file")
    try:
        return uproot.open(path)
    except Exception as error:
        raise ValueError(f"{path}: not a readable ROOT file ({error})") from None


def _tree(file: Any, path: Path, name: str) -> Any:
    if name not in file:
        trees = ", ".join(sorted({key.split(";")[0] for key in file.keys()})) or "none"
        raise ValueError(f"{path}: no tree {name!r} (trees in the file: {trees})")
    return file[name]


def _jagged_arrays(path: Path, tree: Any, fields: tuple[str, ...]) -> tuple[np.ndarray, dict]:
    missing = [name for name in fields if name not in tree.keys()]
    if missing:
        raise ValueError(f"{path}:{tree.name}: missing branch(es) {', '.join(missing)}")
    arrays = tree.arrays(list(fields), library="ak")
    counts = None
    flat = {}
    for name in fields:
        array = arrays[name]
        if array.ndim != 2:
            raise ValueError(f"{path}:{tree.name}: branch {name!r} is not jagged per event")
        these = ak.to_numpy(ak.num(array, axis=1))
        if counts is None:
            counts = these
        elif not np.array_equal(counts, these):
            event = int(np.flatnonzero(counts != these)[0])
            raise ValueError(
                f"{path}:{tree.name}: branch {name!r} has {these[event]} entries in event {event} "
                f"but {fields[0]!r} has {counts[event]}"
            )
        flat[name] = ak.to_numpy(ak.flatten(array, axis=1))
    return counts, flat


def _with_location(path: Path, tree: str, error: ValueError) -> ValueError:
    return ValueError(f"{path}:{tree}: {error}")


def read_tracks(path: str | os.PathLike, tree: str = TRACKS_TREE) -> TrackBatch:
    """Read every event's tracks from ``path`` (layout in this module's docstring).

    Raises
    ------
    FileNotFoundError, ValueError
        Naming the file, tree, branch and event of the problem.
    """
    path = Path(path)
    with _open(path) as file:
        counts, flat = _jagged_arrays(path, _tree(file, path, tree), TRACK_FIELDS)
    try:
        return TrackBatch.from_arrays(counts=counts, **flat)
    except ValueError as error:
        raise _with_location(path, tree, error) from None


def read_truth(path: str | os.PathLike) -> MCTruth | None:
    """Read the MC truth written by :func:`write_sample`, or ``None`` when the file has none."""
    path = Path(path)
    with _open(path) as file:
        if TRUTH_TREE not in file:
            return None
        counts, flat = _jagged_arrays(path, _tree(file, path, TRUTH_TREE), MC_VERTEX_FIELDS)
        _, labels = _jagged_arrays(path, _tree(file, path, TRACKS_TREE), ("mc_pv",))
    try:
        vertices = MCVertices.from_arrays(counts=counts, **flat)
    except ValueError as error:
        raise _with_location(path, TRUTH_TREE, error) from None
    return MCTruth(vertices, labels["mc_pv"].astype(np.int32))


def _jagged(batch: Any, fields: tuple[str, ...], dtype: Any) -> dict[str, ak.Array]:
    counts = batch.counts
    return {name: ak.unflatten(np.asarray(getattr(batch, name), dtype=dtype), counts)
            for name in fields}


def _write_tree(file: Any, name: str, counter: str, jagged: dict[str, ak.Array],
                event_number: np.ndarray) -> None:
    file.mktree(name, {"event_number": np.uint64, **{k: a.type for k, a in jagged.items()}},
                counter_name=lambda _: counter)
    file[name].extend({"event_number": event_number, **jagged})


COMPRESSION = {"zlib": uproot.ZLIB(1), "lzma": uproot.LZMA(6)}


def write_sample(path: str | os.PathLike, tracks: TrackBatch, truth: MCTruth | None = None,
                 *, precision: Any = np.float32, compression: str = "zlib") -> None:
    """Write tracks (and truth) in the layout of this module.

    Parameters
    ----------
    precision : numpy dtype
        How floats are stored (float32 by default, as LHCb stores track states).
    compression : {"zlib", "lzma"}
        ``zlib`` (fast, the default) or ``lzma`` (about a third smaller, several times slower;
        used for the bundled sample).
    """
    if compression not in COMPRESSION:
        raise ValueError(f"unknown compression {compression!r}; choose one of {', '.join(COMPRESSION)}")
    event_number = np.arange(tracks.n_events, dtype=np.uint64)
    with uproot.recreate(path, compression=COMPRESSION[compression]) as file:
        jagged = _jagged(tracks, TRACK_FIELDS, precision)
        if truth is not None:
            truth.check_matches(tracks)
            jagged["mc_pv"] = ak.unflatten(np.asarray(truth.track_mc_pv, dtype=np.int32),
                                           tracks.counts)
        _write_tree(file, TRACKS_TREE, "n_tracks", jagged, event_number)
        if truth is not None:
            pv = truth.vertices
            jagged = _jagged(pv, ("x", "y", "z"), precision)
            jagged["n_reconstructible"] = ak.unflatten(
                np.asarray(pv.n_reconstructible, dtype=np.int32), pv.counts)
            _write_tree(file, TRUTH_TREE, "n_pvs", jagged, event_number)


def write_vertices(path: str | os.PathLike, vertices: VertexBatch, *,
                   with_weights: bool = True) -> None:
    """Write reconstructed vertices (float64) to the tree ``vertices`` of a new file."""
    vertices = vertices.to_host()
    event_number = np.arange(vertices.n_events, dtype=np.uint64)
    jagged = _jagged(vertices, VERTEX_FIELDS, np.float64)
    with uproot.recreate(path) as file:
        _write_tree(file, VERTICES_TREE, "n_vertices", jagged, event_number)
        if with_weights and vertices.weights is not None:
            per_event = np.diff(vertices.weight_offsets[vertices.offsets])
            file["vertex_weights"] = {
                "event_number": event_number,
                "weight_counts": ak.unflatten(np.diff(vertices.weight_offsets).astype(np.int32),
                                              vertices.counts),
                "weights": ak.unflatten(vertices.weights, per_event),
            }


def read_vertices(path: str | os.PathLike) -> VertexBatch:
    """Read vertices written by :func:`write_vertices` (weights included when present)."""
    path = Path(path)
    with _open(path) as file:
        counts, flat = _jagged_arrays(path, _tree(file, path, VERTICES_TREE), VERTEX_FIELDS)
        weights = weight_counts = None
        if "vertex_weights" in file:
            extra = file["vertex_weights"].arrays(["weight_counts", "weights"])
            weight_counts = ak.to_numpy(ak.flatten(extra["weight_counts"]))
            weights = ak.to_numpy(ak.flatten(extra["weights"]))
    return VertexBatch.from_arrays(counts=counts, weights=weights, weight_counts=weight_counts,
                                   **flat)
