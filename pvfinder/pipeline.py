"""The five-stage pipeline: tracks in, vertices out, on whichever backend was chosen."""

from __future__ import annotations

import time
import warnings
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import awkward as ak
import numpy as np

from .backends import Backend, get_backend
from .config import PVFinderConfig
from .events import TRACK_FIELDS, VERTEX_FIELDS, TrackBatch, VertexBatch

__all__ = ["PVFinder", "SeedOverflowWarning", "ZHistograms", "find_vertices", "as_track_batch"]


class SeedOverflowWarning(UserWarning):
    """An event had more clusters than ``max_vertices_per_event``; the extra ones were not fitted."""


def as_track_batch(tracks: Any) -> TrackBatch:
    """Accept a :class:`TrackBatch`, an awkward array of track records, or a mapping of
    flat arrays with ``counts`` or ``offsets`` (see :meth:`TrackBatch.from_arrays`)."""
    if isinstance(tracks, TrackBatch):
        return tracks
    if isinstance(tracks, ak.Array):
        return TrackBatch.from_awkward(tracks)
    if isinstance(tracks, Mapping):
        return TrackBatch.from_arrays(**tracks)
    raise TypeError(
        "tracks must be a TrackBatch, an awkward array of track records or a mapping of "
        f"arrays, got {type(tracks).__name__}"
    )


@dataclass(frozen=True)
class ZHistograms:
    """Stages 1–3 of a batch on the host, from :meth:`PVFinder.z_histograms` (lengths in mm).

    Attributes
    ----------
    bin_edges : ndarray, shape (n_bins + 1,)
        Edges of the z histogram.
    density : ndarray, shape (n_events, n_bins)
        Each event's histogram: the summed probability of its usable tracks per bin.
    seeds : awkward.Array
        Per event, the z of each seed (cluster) found in the histogram, increasing.
    z_beam, sigma_z : awkward.Array
        Per event and track, the z of closest approach to the beamline and its uncertainty.
    usable : awkward.Array
        Per event and track, whether the track entered the histogram and the fit.
    """

    bin_edges: np.ndarray
    density: np.ndarray
    seeds: ak.Array
    z_beam: ak.Array
    sigma_z: ak.Array
    usable: ak.Array

    @property
    def bin_centres(self) -> np.ndarray:
        return 0.5 * (self.bin_edges[1:] + self.bin_edges[:-1])


class _Buffers:
    """Work arrays reused from call to call; they grow when a bigger batch arrives."""

    def __init__(self, xp: Any) -> None:
        self._xp = xp
        self._arrays: dict[str, Any] = {}

    def get(self, name: str, shape: tuple[int, ...], dtype: Any) -> Any:
        size = int(np.prod(shape))
        array = self._arrays.get(name)
        if array is None or array.size < size or array.dtype != dtype:
            array = self._xp.empty(max(size, 1), dtype=dtype)
            self._arrays[name] = array
        return array[:size].reshape(shape)


class PVFinder:
    """Primary-vertex finder bound to one configuration and one backend.

    Construct once and call many times: work buffers are kept between calls.

    Parameters
    ----------
    config : PVFinderConfig, optional
        Algorithm parameters; the published defaults when omitted.
    backend : {"auto", "cpu", "cuda"} or Backend
        Where to run. ``"auto"`` uses the GPU when one is usable.

    Examples
    --------
    >>> finder = PVFinder(backend="cpu")                     # doctest: +SKIP
    >>> vertices = finder(tracks)                            # doctest: +SKIP
    """

    def __init__(self, config: PVFinderConfig | None = None, backend: str | Backend = "auto"):
        self.config = config if config is not None else PVFinderConfig()
        self.backend = get_backend(backend)
        self._buffers = _Buffers(self.backend.xp)

    def __repr__(self) -> str:
        return f"PVFinder(backend={self.backend.name!r}, config={self.config!r})"

    def __call__(self, tracks: Any, *, to_host: bool = True) -> VertexBatch:
        return self.run(tracks, to_host=to_host)

    def run(
        self, tracks: Any, *, to_host: bool = True, timings: dict[str, float] | None = None
    ) -> VertexBatch:
        """Find the vertices of every event of ``tracks``.

        Parameters
        ----------
        tracks : TrackBatch, awkward.Array or mapping
            The events' VELO tracks (see :func:`as_track_batch`).
        to_host : bool
            Return numpy arrays (default); ``False`` keeps them on the backend's device.
        timings : dict, optional
            When given, the seconds spent in each stage are added to it (the device is
            synchronised after every stage, which costs a little on a GPU).

        Returns
        -------
        VertexBatch
            The vertices of each event sorted by z, with per-track weights.
        """
        batch = as_track_batch(tracks)
        backend = self.backend
        clock = _StageClock(backend, timings)

        offsets = backend.asarray(batch.offsets, dtype=np.int64)
        state = {name: backend.asarray(getattr(batch, name), dtype=np.float64)
                 for name in TRACK_FIELDS}
        n_tracks = len(state["x"])
        beamline = self._extrapolate(state, n_tracks, clock)

        host_offsets = np.concatenate(([0], np.cumsum(batch.counts)))  # chunk boundaries
        pieces = []
        for start in range(0, batch.n_events, backend.events_per_chunk):
            stop = min(start + backend.events_per_chunk, batch.n_events)
            lo, hi = int(host_offsets[start]), int(host_offsets[stop])
            chunk_offsets = offsets[start : stop + 1] - lo
            chunk_tracks = {name: array[lo:hi] for name, array in beamline.items()}
            pieces.append(self._vertices_of_chunk(chunk_offsets, chunk_tracks, start, clock))
        if not pieces:
            pieces.append(self._vertices_of_chunk(offsets, beamline, 0, clock))
        backend.check_errors()
        vertices = VertexBatch.concatenate(pieces)
        return vertices.to_host() if to_host else vertices

    def z_histograms(self, tracks: Any) -> ZHistograms:
        """The intermediate results of stages 1–3, for drawing and debugging an event.

        Not meant for large batches: the histograms take ``n_events × n_bins`` floats.

        Parameters
        ----------
        tracks : TrackBatch, awkward.Array or mapping
            The events' VELO tracks (see :func:`as_track_batch`).

        Returns
        -------
        ZHistograms
            Host arrays: each event's histogram, its seeds and its tracks at the beamline.
        """
        batch = as_track_batch(tracks)
        backend, cfg = self.backend, self.config
        clock = _StageClock(backend, None)
        offsets = backend.asarray(batch.offsets, dtype=np.int64)
        state = {name: backend.asarray(getattr(batch, name), dtype=np.float64)
                 for name in TRACK_FIELDS}
        beamline = self._extrapolate(state, len(state["x"]), clock)
        hist, seeds, n_seeds = self._seeds(offsets, beamline, clock)
        backend.check_errors()
        counts = batch.counts
        n_found = np.minimum(backend.to_host(n_seeds), cfg.max_vertices_per_event)
        seeds = backend.to_host(seeds)
        per_track = {name: ak.unflatten(backend.to_host(beamline[name]).copy(), counts)
                     for name in ("z", "sigma_z", "usable")}
        return ZHistograms(
            bin_edges=cfg.zmin + cfg.bin_width * np.arange(cfg.n_bins + 1),
            density=backend.to_host(hist).copy(),
            seeds=ak.Array([row[:n] for row, n in zip(seeds.tolist(), n_found)]),
            z_beam=per_track["z"],
            sigma_z=per_track["sigma_z"],
            usable=ak.values_astype(per_track["usable"], bool),
        )

    # -- stages ---------------------------------------------------------------------------

    def _extrapolate(self, state: dict[str, Any], n_tracks: int, clock: _StageClock) -> dict:
        cfg, buffers = self.config, self._buffers
        out = {name: buffers.get(f"beam_{name}", (n_tracks,), np.float64)
               for name in ("x", "y", "z", "wx", "wy", "sigma_z")}
        out["usable"] = buffers.get("usable", (n_tracks,), np.uint8)
        self.backend.extrapolate(
            *(state[name] for name in TRACK_FIELDS),
            cfg.beamline[0], cfg.beamline[1], cfg.zmin, cfg.zmax,
            cfg.max_track_beamline_chi2, cfg.max_track_z0_err,
            out["x"], out["y"], out["z"], out["wx"], out["wy"], out["sigma_z"], out["usable"],
        )
        out["tx"], out["ty"] = state["tx"], state["ty"]
        clock.tick("extrapolate")
        return out

    def _seeds(self, offsets: Any, tracks: dict[str, Any], clock: _StageClock) -> tuple:
        """Stages 2 and 3: the z histogram of each event and the seeds found in it."""
        cfg, backend, buffers = self.config, self.backend, self._buffers
        n_events = len(offsets) - 1
        hist = buffers.get("hist", (n_events, cfg.n_bins), np.float64)
        backend.histogram(offsets, tracks["z"], tracks["sigma_z"], tracks["usable"],
                          cfg.zmin, cfg.bin_width, hist)
        clock.tick("histogram")
        seeds = buffers.get("seeds", (n_events, cfg.max_vertices_per_event), np.float64)
        n_seeds = buffers.get("n_seeds", (n_events,), np.int32)
        backend.find_peaks(hist, cfg.zmin, cfg.bin_width, cfg.seed_threshold,
                           cfg.min_tracks_in_seed, cfg.min_dip_density, cfg.min_density,
                           seeds, n_seeds)
        clock.tick("find_peaks")
        return hist, seeds, n_seeds

    def _vertices_of_chunk(
        self, offsets: Any, tracks: dict[str, Any], first_event: int, clock: _StageClock
    ) -> VertexBatch:
        cfg, backend, buffers, xp = self.config, self.backend, self._buffers, self.backend.xp
        n_events, max_seeds = len(offsets) - 1, cfg.max_vertices_per_event
        _, seeds, n_seeds = self._seeds(offsets, tracks, clock)
        _report_overflow(backend.to_host(n_seeds), max_seeds, first_event)

        n_fitted = xp.minimum(n_seeds, max_seeds).astype(np.int64)
        weight_offsets = xp.zeros(n_events + 1, dtype=np.int64)
        xp.cumsum(n_fitted * xp.diff(offsets), out=weight_offsets[1:])
        n_weights = int(weight_offsets[-1])
        pos = buffers.get("pos", (n_events, max_seeds, 3), np.float64)
        cov = buffers.get("cov", (n_events, max_seeds, 6), np.float64)
        chi2 = buffers.get("chi2", (n_events, max_seeds), np.float64)
        ndof = buffers.get("ndof", (n_events, max_seeds), np.float64)
        n_vtx_tracks = buffers.get("n_vtx_tracks", (n_events, max_seeds), np.float64)
        valid = buffers.get("valid", (n_events, max_seeds), np.uint8)
        weights = buffers.get("weights", (n_weights,), np.float64)
        backend.fit_vertices(
            offsets, tracks["x"], tracks["y"], tracks["z"], tracks["tx"], tracks["ty"],
            tracks["wx"], tracks["wy"], tracks["usable"], seeds, n_seeds, weight_offsets,
            cfg.beamline[0], cfg.beamline[1], cfg.max_chi2, cfg.chi2_cut, cfg.min_weight,
            cfg.min_fit_iter, cfg.max_fit_iter, cfg.max_delta_z_converged,
            cfg.min_tracks_per_vertex, cfg.max_vertex_rho2,
            pos, cov, chi2, ndof, n_vtx_tracks, valid, weights,
        )
        clock.tick("fit_vertices")

        order = buffers.get("order", (n_events, max_seeds), np.int32)
        n_kept = buffers.get("n_kept", (n_events,), np.int32)
        backend.cleanup(pos, cov, n_vtx_tracks, valid, n_seeds, cfg.min_chi2_dist, order, n_kept)
        vertices = _gather(xp, offsets, weight_offsets, order, n_kept,
                           pos, cov, chi2, ndof, n_vtx_tracks, weights)
        clock.tick("cleanup")  # the compaction into flat arrays counts as part of clean-up
        return vertices


class _StageClock:
    """Adds the wall time since the previous tick to ``timings[stage]`` (when asked to)."""

    def __init__(self, backend: Backend, timings: dict[str, float] | None) -> None:
        self._backend, self._timings = backend, timings
        self._last = time.perf_counter()

    def tick(self, stage: str) -> None:
        if self._timings is None:
            return
        self._backend.synchronize()
        now = time.perf_counter()
        self._timings[stage] = self._timings.get(stage, 0.0) + now - self._last
        self._last = now


def _report_overflow(n_seeds: np.ndarray, max_seeds: int, first_event: int) -> None:
    over = np.flatnonzero(n_seeds > max_seeds)
    if over.size:
        warnings.warn(
            f"{over.size} event(s) had more than max_vertices_per_event={max_seeds} clusters "
            f"(event {first_event + over[0]}: {n_seeds[over[0]]}); only the first {max_seeds} "
            "in z were fitted. Raise max_vertices_per_event to fit them all.",
            SeedOverflowWarning,
            stacklevel=4,
        )


def _gather(xp, track_offsets, weight_offsets, order, n_kept, pos, cov, chi2, ndof, n_tracks,
            weights) -> VertexBatch:
    """Compact the kept vertex slots (``order[e, :n_kept[e]]``) into flat per-vertex arrays."""
    n_events, max_seeds = order.shape
    kept = xp.arange(max_seeds)[None, :] < n_kept[:, None]
    event = xp.broadcast_to(xp.arange(n_events)[:, None], kept.shape)[kept]
    slot = order[kept].astype(np.int64)
    fields = dict(zip(("x", "y", "z"), (pos[event, slot, i] for i in range(3))))
    fields.update(zip(VERTEX_FIELDS[3:9], (cov[event, slot, i] for i in range(6))))
    fields.update(chi2=chi2[event, slot], ndof=ndof[event, slot], n_tracks=n_tracks[event, slot])

    # Vertex v owns the event's n_e weights that start at weight_offsets[e] + slot·n_e.
    tracks_per_event = xp.diff(track_offsets)
    length = tracks_per_event[event]
    start = weight_offsets[:-1][event] + slot * length
    out_offsets = xp.zeros(len(slot) + 1, dtype=np.int64)
    xp.cumsum(length, out=out_offsets[1:])
    # Every kept vertex owns at least min_tracks_per_vertex ≥ 2 weights, so its first element
    # is a distinct mark and a running sum of marks names the owner of each element.
    total = int(out_offsets[-1])
    owner = xp.zeros(total, dtype=np.int64)
    owner[out_offsets[1:-1]] = 1
    xp.cumsum(owner, out=owner)
    out_weights = weights[xp.arange(total, dtype=np.int64) + (start - out_offsets[:-1])[owner]]

    vertex_offsets = xp.zeros(n_events + 1, dtype=np.int64)
    xp.cumsum(n_kept, out=vertex_offsets[1:])
    return VertexBatch(offsets=vertex_offsets, weights=out_weights, weight_offsets=out_offsets,
                       **fields)


def find_vertices(
    tracks: Any, config: PVFinderConfig | None = None, backend: str | Backend = "auto"
) -> VertexBatch:
    """Find the primary vertices of every event: the one-line entry point.

    Parameters
    ----------
    tracks : TrackBatch, awkward.Array or mapping of arrays
        VELO track states per event (mm).
    config : PVFinderConfig, optional
        Algorithm parameters; the published defaults when omitted.
    backend : {"auto", "cpu", "cuda"}
        Where to run.

    Returns
    -------
    VertexBatch
        Vertices per event (host arrays), sorted by z, with track–vertex weights.
    """
    return PVFinder(config, backend)(tracks)

