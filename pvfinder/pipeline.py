"""The five-stage pipeline: tracks in, vertices out, on whichever backend was chosen."""

from __future__ import annotations

import contextlib
import math
import os
import sys
import threading
import time
import warnings
from collections.abc import Iterator
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np

from .backends import Backend, BackendUnavailableError, check_track_offsets, get_backend
from .config import PVFinderConfig
from .events import (
    TRACK_FIELDS,
    VERTEX_FIELDS,
    TrackBatch,
    VertexBatch,
    _check_flag,
    _is_count,
    _to_host,
    as_track_batch,
    jagged_array,
    offsets_from_counts,
)

if TYPE_CHECKING:
    import awkward as ak

__all__ = [
    "PVFinder",
    "SeedOverflowWarning",
    "VertexBuffers",
    "ZHistograms",
    "as_track_batch",
    "find_vertices",
]


class SeedOverflowWarning(UserWarning):
    """An event had more clusters than ``max_vertices_per_event``; the extra ones were not fitted.

    Attributes
    ----------
    events : numpy.ndarray or None
        The events concerned: positions in the batch, or entries of the file it was read
        from when the finder was told (``origin``).
    n_clusters : numpy.ndarray or None
        Their numbers of clusters.
    """

    def __init__(self, message: str, events: np.ndarray | None = None,
                 n_clusters: np.ndarray | None = None) -> None:
        super().__init__(message)
        self.events, self.n_clusters = events, n_clusters

    def __reduce__(self) -> tuple[Any, ...]:  # pickles with its fields, not only its message
        return type(self), (str(self), self.events, self.n_clusters)


# Every overflow is reported: by default Python shows a warning once per line of code, which
# in a loop over batches hid all but the first. Appended, so the user's filters still win.
warnings.filterwarnings("always", category=SeedOverflowWarning, append=True)


@dataclass(frozen=True)
class ZHistograms:
    """Stages 1–3 of a batch on the host, from :meth:`PVFinder.z_histograms` (lengths in mm).

    Attributes
    ----------
    bin_edges : ndarray, shape (n_bins + 1,)
        Edges of the z histogram.
    density : ndarray, shape (n_events, n_bins)
        Each event's histogram: the summed probability of its usable tracks per bin. A
        track adds 1 in all, less the part of its window (±√7·σ_z) beyond the histogram's
        inner bins (the first and last stay empty) when it lies that close to zmin or zmax.
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
        """Centre of each bin of the z histogram (mm)."""
        return 0.5 * (self.bin_edges[1:] + self.bin_edges[:-1])


# A buffer that must grow is given this much room beyond the request, so that a batch a little
# larger than any before does not allocate again (amortised growth, as Python lists do).
_GROWTH = 1.25


def _grown(size: int, at_least: int) -> int:
    """Room for ``size`` items and a quarter more (a growing batch), and ``at_least``."""
    return max(int(_GROWTH * size), at_least)


# What sizes the larger work arrays per event, for an allocation that fails.
_SIZE_HINTS = {
    "hist": " (a histogram of (zmax - zmin) / bin_width bins per event of a chunk)",
    "weights": " (up to max_vertices_per_event weights per track of a chunk)",
    **{name: " (max_vertices_per_event slots per event of a chunk)"
       for name in ("seeds", "pos", "cov", "chi2", "ndof", "n_vtx_tracks", "valid", "order")},
}


class _Buffers:
    """Work arrays reused from call to call; they grow when a bigger batch arrives."""

    def __init__(self, xp: Any) -> None:
        self._xp = xp
        self._arrays: dict[str, Any] = {}
        # The view last handed out per name: a loop of same-sized batches (a trigger) asks
        # for the same shapes every call, and slicing anew costs more than the small kernels.
        self._views: dict[str, Any] = {}

    def get(self, name: str, shape: tuple[int, ...], dtype: Any) -> Any:
        view = self._views.get(name)
        if view is not None and view.shape == shape and view.dtype == dtype:
            return view
        size = math.prod(shape)
        array = self._arrays.get(name)
        if array is None or array.size < size or array.dtype != dtype:
            try:
                array = self._xp.empty(_grown(size, 1), dtype=dtype)
            except MemoryError:  # numpy's message names neither the array nor the setting
                raise MemoryError(
                    f"cannot allocate the work array {name!r} of shape {shape}, "
                    f"{np.dtype(dtype).name}: {size * np.dtype(dtype).itemsize / 1e9:.1f} GB"
                    f"{_SIZE_HINTS.get(name, '')}") from None
            self._arrays[name] = array
        view = self._views[name] = array[:size].reshape(shape)
        return view


class VertexBuffers:
    """Output arrays that a :class:`PVFinder` writes vertices into, reused from call to call.

    Get one from :meth:`PVFinder.output_buffers` and pass it as ``out=`` to the finder.

    Lifetime: the :class:`~pvfinder.events.VertexBatch` returned by ``finder(tracks, out=buffers)``
    is a view of these arrays and stays valid until the same buffers are passed again, which
    overwrites it. Keep a result beyond that with :meth:`VertexBatch.copy`, or rotate between
    several ``VertexBuffers``. Capacity only grows, when a batch needs more room than any before.

    Attributes
    ----------
    offsets : array of int64, shape (capacity_events + 1,)
    vertices : array of float64, shape (len(VERTEX_FIELDS), capacity_vertices)
        One row per field of :data:`~pvfinder.events.VERTEX_FIELDS`.
    weight_offsets : array of int64, shape (capacity_vertices + 1,)
    weights : array of float64, shape (capacity_weights,)
        Read-only attributes (the arrays they name are written by the finder): the kernels
        write as far as the capacities, so an array of another size or type put in their
        place would have them write past its end.
    """

    def __init__(self, xp: Any, n_events: int = 0, n_vertices: int = 0,
                 n_weights: int = 0) -> None:
        self._xp = xp
        self._busy = threading.Lock()
        self._offsets = xp.zeros(n_events + 1, dtype=np.int64)
        self._vertices = xp.empty((len(VERTEX_FIELDS), n_vertices), dtype=np.float64)
        self._weight_offsets = xp.zeros(n_vertices + 1, dtype=np.int64)
        self._weights = xp.empty(n_weights, dtype=np.float64)

    def _writing(self) -> contextlib.AbstractContextManager[None]:
        """Held while a finder writes into these buffers: two calls at once, in two threads
        (two finders given the same ``out=``), would interleave their vertices silently."""
        return _held_alone(self._busy, "these VertexBuffers are being written by another "
                                       "call (in another thread): give each thread buffers "
                                       "of its own")

    @property
    def offsets(self) -> Any:
        return self._offsets

    @property
    def vertices(self) -> Any:
        return self._vertices

    @property
    def weight_offsets(self) -> Any:
        return self._weight_offsets

    @property
    def weights(self) -> Any:
        return self._weights

    def __repr__(self) -> str:
        return (f"VertexBuffers(events={len(self.offsets) - 1}, "
                f"vertices={self.vertices.shape[1]}, weights={len(self.weights)})")

    def _reserve_events(self, n_events: int) -> None:
        """Room for ``n_events`` events (previous contents are not kept)."""
        if len(self.offsets) < n_events + 1:
            self._offsets = self._xp.zeros(_grown(n_events + 1, 0), dtype=np.int64)

    def _reserve(self, n_vertices: int, n_weights: int, keep_vertices: int, keep_weights: int,
                expected: tuple[int, int] = (0, 0)) -> None:
        """Room for ``n_vertices`` and ``n_weights``, keeping the first ``keep_*`` written.

        An array that must grow is sized for ``expected`` (vertices, weights) too when that
        is more: what the whole batch will likely need.
        """
        xp = self._xp
        if self.vertices.shape[1] < n_vertices:
            vertices = xp.empty((len(VERTEX_FIELDS), _grown(max(n_vertices, expected[0]), 0)),
                                dtype=np.float64)
            vertices[:, :keep_vertices] = self.vertices[:, :keep_vertices]
            weight_offsets = xp.zeros(vertices.shape[1] + 1, dtype=np.int64)
            weight_offsets[: keep_vertices + 1] = self.weight_offsets[: keep_vertices + 1]
            self._vertices, self._weight_offsets = vertices, weight_offsets
        if len(self.weights) < n_weights:
            weights = xp.empty(_grown(max(n_weights, expected[1]), 0), dtype=np.float64)
            weights[:keep_weights] = self.weights[:keep_weights]
            self._weights = weights

    def _view(self, n_events: int, n_vertices: int, n_weights: int | None) -> VertexBatch:
        """The first ``n_events`` events written, as a batch of views (without weights when
        ``n_weights`` is ``None``)."""
        rows = dict(zip(VERTEX_FIELDS, self.vertices[:, :n_vertices]))
        if n_weights is None:
            return VertexBatch(offsets=self.offsets[: n_events + 1], **rows)
        return VertexBatch(offsets=self.offsets[: n_events + 1],
                           weights=self.weights[:n_weights],
                           weight_offsets=self.weight_offsets[: n_vertices + 1], **rows)


class PVFinder:
    """Primary-vertex finder bound to one configuration and one backend.

    Construct once and call many times: kernels are compiled and work buffers allocated on
    the first call (or by :meth:`warmup`) and reused afterwards.

    Parameters
    ----------
    config : PVFinderConfig, optional
        Algorithm parameters; the published defaults when omitted.
    backend : {"auto", "cpu", "cuda"} or Backend
        Where to run. ``"auto"`` uses the GPU when one is usable.

    Raises
    ------
    TypeError
        For a ``config`` that is not a :class:`PVFinderConfig`.
    ValueError
        For an unknown backend name.
    BackendUnavailableError
        When the backend asked for cannot run here (the message says why).

    Notes
    -----
    For a hot loop (a trigger prototype): call :meth:`warmup` with a batch as large as the
    largest you will pass, get output arrays from :meth:`output_buffers` and call
    ``finder(tracks, out=buffers)``. Inputs that are already float64 (on the CPU also all
    float32) with int64 offsets, C-contiguous, writable and on the backend's device are used
    in place; then a call allocates no arrays. Build ``tracks`` with
    :meth:`TrackBatch.from_buffers` to wrap your own arrays.

    One finder runs one call at a time (a call while it runs in another thread raises
    ``RuntimeError``); one finder per thread is safe (they share only the compiled kernels,
    which release the GIL while they run, and on the CPU a launch lock: see the README).

    Examples
    --------
    >>> finder = PVFinder(backend="cpu").warmup(first_batch)    # doctest: +SKIP
    >>> buffers = finder.output_buffers()                       # doctest: +SKIP
    >>> for batch in batches:                                   # doctest: +SKIP
    ...     vertices = finder(batch, out=buffers)               # valid until the next call
    """

    def __init__(self, config: PVFinderConfig | None = None, backend: str | Backend = "auto"):
        if config is not None and not isinstance(config, PVFinderConfig):
            raise TypeError(f"config must be a PVFinderConfig, not {type(config).__name__} "
                            "(PVFinderConfig.from_mapping builds one from a mapping)")
        self.config = config if config is not None else PVFinderConfig()
        self.backend = get_backend(backend)
        self._buffers = _Buffers(self.backend.xp)
        self._output = VertexBuffers(self.backend.xp)
        self._busy = threading.Lock()

    def __repr__(self) -> str:
        return f"PVFinder(backend={self.backend.name!r}, config={self.config!r})"

    def _exclusive(self) -> contextlib.AbstractContextManager[None]:
        """Held while a call uses the work buffers: a second thread's call is refused (it
        would overwrite them under the first one's feet, and both would be wrong)."""
        return _held_alone(self._busy, "this PVFinder is running already (in another thread, "
                                       "or this call comes from within that one): give each "
                                       "thread a finder of its own (they share the compiled "
                                       "kernels)")

    # A finder pickles (and deep-copies) as its configuration and its backend's name, so that
    # it can go to Dask or multiprocessing workers: the work buffers are not copied, and the
    # backend is looked up again where it is unpickled (a CUDA finder needs a GPU there).
    def __getstate__(self) -> dict[str, Any]:
        try:
            registered = get_backend(self.backend.name)
        except (ValueError, BackendUnavailableError):
            registered = None
        if registered is not self.backend:  # the name would lose it
            raise TypeError(f"a PVFinder on a backend of its own ({self.backend.name!r}, not "
                            "get_backend's) cannot be copied or pickled: build the finder "
                            "where it is needed")
        return {"config": self.config, "backend": self.backend.name}

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__init__(state["config"], state["backend"])  # type: ignore[misc]

    def __call__(self, tracks: Any, *, out: VertexBuffers | None = None,
                 to_host: bool | None = None, timings: dict[str, float] | None = None,
                 weights: bool = True, origin: tuple[str, int] | None = None) -> VertexBatch:
        """Same as :meth:`run`."""
        return self.run(tracks, out=out, to_host=to_host, timings=timings, weights=weights,
                        origin=origin)

    def run(
        self,
        tracks: Any,
        *,
        out: VertexBuffers | None = None,
        to_host: bool | None = None,
        timings: dict[str, float] | None = None,
        weights: bool = True,
        origin: tuple[str, int] | None = None,
    ) -> VertexBatch:
        """Find the vertices of every event of ``tracks``.

        Parameters
        ----------
        tracks : TrackBatch, awkward.Array or mapping
            The events' VELO tracks (see :func:`as_track_batch`).
        out : VertexBuffers, optional
            Write the vertices into these arrays (see :meth:`output_buffers`) and return a
            view of them, valid until ``out`` is passed again. Without it the result owns
            new arrays.
        to_host : bool, optional
            Return numpy arrays (the default without ``out``); ``False`` keeps them on the
            backend's device (the default with ``out``). With ``out`` on the CPU the numpy
            arrays are still the views of ``out`` (from a GPU they are copies): either way
            rely on them only until ``out`` is passed again.
        timings : dict, optional
            When given, the seconds spent in each stage are added to it (the device is
            synchronised after every stage, which costs a little on a GPU).
        weights : bool
            Return each vertex's per-track weights (the track–vertex association). They
            take one float per vertex and input track of its event, about 12 kB per event at
            ν = 7.6: a job that only keeps the vertices saves that memory traffic with
            ``False``.
        origin : (str, int), optional
            Where the batch was read: ``("file.root:tracks", first_entry)``. Warnings then
            name the file and its entries rather than positions in the batch.

        Returns
        -------
        VertexBatch
            The vertices of each event sorted by z, with per-track weights unless
            ``weights=False`` (then its ``weights`` is ``None``).

        Raises
        ------
        TypeError
            For tracks of a kind not listed above, an ``out`` that is not
            :class:`VertexBuffers`, an ``origin`` that is not ``(str, int)``,
            ``timings`` that is not a dict, or ``weights`` or ``to_host`` not a bool.
        RuntimeError
            When this finder is running in another thread, or this process was forked from
            one whose CPU kernels had run on GNU OpenMP threads (see the README).
        ValueError
            For malformed tracks: a missing field, fields of different lengths, counts or
            offsets that do not match them.
        """
        if out is not None and not isinstance(out, VertexBuffers):
            raise TypeError(f"out must be VertexBuffers (from output_buffers()), not "
                            f"{type(out).__name__}")
        if origin is not None and not (  # used only when a warning is due, deep in a job
                isinstance(origin, tuple) and len(origin) == 2 and isinstance(origin[0], str)
                and _is_count(origin[1])):  # True was taken for entry 1
            raise TypeError(f"origin must be (str, int): where the batch was read and its "
                            f"first entry, got {origin!r}")
        if timings is not None and not isinstance(timings, dict):
            raise TypeError(f"timings must be a dict (stage -> seconds), got "
                            f"{type(timings).__name__}")
        _check_flag("weights", weights)  # "no" was taken as True
        if to_host is not None:
            _check_flag("to_host", to_host)
        batch = as_track_batch(tracks)
        target = self._output if out is None else out
        with self._exclusive(), target._writing():
            with self.backend.launch_guard:
                n_vertices, n_weights = self._find(batch, target, weights,
                                                   _StageClock(self.backend, timings), origin)
            vertices = target._view(batch.n_events, n_vertices, n_weights if weights else None)
            if out is None:  # the finder's own buffers: hand out arrays the caller owns
                return (vertices.to_host(copy=True) if to_host in (None, True)
                        else vertices.copy())
        return vertices.to_host() if to_host else vertices

    def warmup(self, tracks: Any = None, *, weights: bool = True) -> PVFinder:
        """Compile the kernels and size the work buffers now rather than on the first call.

        Parameters
        ----------
        tracks : TrackBatch, awkward.Array or mapping, optional
            A batch as large as the largest that will be passed later: every work buffer
            (and the finder's output buffers) is sized for it, with some room to spare.
            Either way the kernels are compiled for every precision of track states that
            they read as it is (float64, and on the CPU float32 too, unless the beamline is
            tilted), whatever the batch's.
        weights : bool
            Whether the later calls ask for the per-track weights (see :meth:`run`): with
            ``False`` no room is made for them, in this finder's outputs nor in those of
            :meth:`output_buffers`.

        Returns
        -------
        PVFinder
            This finder, so that ``finder = PVFinder(...).warmup(batch)`` reads naturally.
        """
        batches = [_compile_batch(self.config, dtype) for dtype in self._state_dtypes]
        for batch in batches if tracks is None else [*batches, tracks]:
            self.run(batch, out=self._output, weights=weights)
        return self

    def output_buffers(self) -> VertexBuffers:
        """New output arrays for ``out=``, on this finder's device, as large as its own.

        After :meth:`warmup` with a representative batch they need no growing.
        """
        own = self._output
        return VertexBuffers(self.backend.xp, len(own.offsets) - 1, own.vertices.shape[1],
                             len(own.weights))

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
        with self._exclusive():  # until the work buffers are copied
            with backend.launch_guard, _device_errors_raised(backend):
                offsets, state = self._inputs(batch)
                beamline = self._at_beamline(state, clock)
                hist, seeds, n_seeds = self._seeds(offsets, beamline, clock)
            n_seeds = backend.to_host(n_seeds).copy()
            seeds = backend.to_host(seeds).copy()
            density = backend.to_host(hist).copy()
            per_track = {name: backend.to_host(beamline[name]).copy()
                         for name in ("z", "sigma_z", "usable")}
        _report_overflow(n_seeds, cfg.max_vertices_per_event, 0, "kept")
        n_found = np.minimum(n_seeds, cfg.max_vertices_per_event)
        track_offsets = _to_host(batch.offsets, copy=True)  # the caller's array may change
        found = np.arange(seeds.shape[1]) < n_found[:, None]
        return ZHistograms(
            bin_edges=cfg.zmin + cfg.bin_width * np.arange(cfg.n_bins + 1),
            density=density,
            seeds=jagged_array(offsets_from_counts(n_found), seeds[found]),
            z_beam=jagged_array(track_offsets, per_track["z"]),
            sigma_z=jagged_array(track_offsets, per_track["sigma_z"]),
            usable=jagged_array(track_offsets, per_track["usable"].astype(bool)),
        )

    # -- stages ---------------------------------------------------------------------------

    def _find(self, batch: TrackBatch, target: VertexBuffers, weights: bool,
              clock: _StageClock, origin: tuple[str, int] | None) -> tuple[int, int]:
        """Run the five stages chunk by chunk into ``target`` (with the per-track weights
        when ``weights``); (vertices, weights) written."""
        backend = self.backend
        offsets, state = self._inputs(batch)
        n_events = batch.n_events
        target._reserve_events(n_events)
        target.offsets[0] = 0
        target.weight_offsets[0] = 0
        host_offsets = _to_host(batch.offsets)  # chunk boundaries
        if n_events > backend.events_per_chunk:  # a kernel would name an event of its chunk
            check_track_offsets(host_offsets, batch.n_tracks)
        n_vertices = n_weights = 0
        # All five stages run chunk by chunk, stage 1 included, so that the work arrays
        # (tracks at the beamline, histograms, weights) are sized by the chunk, not the batch.
        with _device_errors_raised(backend):
            for start in range(0, n_events, backend.events_per_chunk):
                stop = min(start + backend.events_per_chunk, n_events)
                lo, hi = int(host_offsets[start]), int(host_offsets[stop])
                chunk_offsets = offsets
                if (start, stop) != (0, n_events):
                    chunk_offsets = self._buffers.get("chunk_offsets", (stop - start + 1,),
                                                      np.int64)
                    backend.xp.subtract(offsets[start : stop + 1], lo, out=chunk_offsets)
                chunk_tracks = self._at_beamline(
                    {name: array[lo:hi] for name, array in state.items()}, clock)
                n_vertices, n_weights = self._vertices_of_chunk(
                    chunk_offsets, chunk_tracks, start, n_events, target, n_vertices,
                    n_weights, weights, clock, origin)
            if self.config.beamline_tilted:
                _shear_back(target.vertices[:, :n_vertices], *self.config.beamline_slopes)
        return n_vertices, n_weights

    def _input(self, name: str, array: Any, dtype: Any) -> Any:
        """``array`` as a C-contiguous ``dtype`` array on the device: itself when it already
        is one, else converted into a reused buffer."""
        xp = self.backend.xp
        # Read-only arrays (np.frombuffer, memory maps) would need kernels compiled for them
        # (a stall of 15 s in the middle of a job): they are copied like the others.
        if (isinstance(array, xp.ndarray) and array.dtype == dtype
                and array.flags.c_contiguous and getattr(array.flags, "writeable", True)):
            return array
        if isinstance(array, (np.ndarray, xp.ndarray)):
            buffer = self._buffers.get(f"input_{name}", array.shape, dtype)
            buffer[...] = xp.asarray(array)
            return buffer
        return self.backend.asarray(array, dtype=dtype)  # e.g. Numba device arrays on CUDA

    def _inputs(self, batch: TrackBatch) -> tuple[Any, dict[str, Any]]:
        """The batch's offsets and track states on the device, in the beamline's frame."""
        offsets = self._input("offsets", batch.offsets, np.int64)
        # One precision for all states, so that the kernels meet only the ones warmup compiled.
        precisions = {np.dtype(getattr(batch, name).dtype) for name in TRACK_FIELDS}
        precision = precisions.pop() if len(precisions) == 1 else np.dtype(np.float64)
        if precision not in self._state_dtypes:
            precision = np.dtype(np.float64)
        state = {name: self._input(name, getattr(batch, name), precision)
                 for name in TRACK_FIELDS}
        if self.config.beamline_tilted:
            state = self._in_beamline_frame(state)
        return offsets, state

    @property
    def _state_dtypes(self) -> tuple[np.dtype, ...]:
        """Precisions in which the states go to the kernels as they are (others become
        float64): the backend's, but only float64 for a tilted beamline, whose shear computes
        in the states' precision."""
        if self.config.beamline_tilted:
            return (np.dtype(np.float64),)
        return self.backend.state_dtypes

    def _at_beamline(self, state: dict[str, Any], clock: _StageClock) -> dict[str, Any]:
        """Stage 1: the tracks of ``state`` moved to the beamline (work buffers)."""
        cfg, buffers = self.config, self._buffers
        n_tracks = len(state["x"])
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

    def _in_beamline_frame(self, state: dict[str, Any]) -> dict[str, Any]:
        """The track states sheared so that the tilted beamline runs parallel to z:
        ``x - tx_beam·z`` and ``tx - tx_beam``, the same in y. The shear moves every point
        at a given z alike, so residuals at fixed z, and the covariances, do not change."""
        xp, buffers = self.backend.xp, self._buffers
        sheared = dict(state)
        n_tracks = len(state["z"])
        for axis, beam_slope in zip("xy", self.config.beamline_slopes):
            position = buffers.get(f"frame_{axis}", (n_tracks,), np.float64)
            xp.multiply(state["z"], -beam_slope, out=position)
            xp.add(position, state[axis], out=position)
            direction = buffers.get(f"frame_t{axis}", (n_tracks,), np.float64)
            xp.subtract(state[f"t{axis}"], beam_slope, out=direction)
            sheared[axis], sheared[f"t{axis}"] = position, direction
        return sheared

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
        self, offsets: Any, tracks: dict[str, Any], first_event: int, batch_events: int,
        target: VertexBuffers, vertices_before: int, weights_before: int, with_weights: bool,
        clock: _StageClock, origin: tuple[str, int] | None,
    ) -> tuple[int, int]:
        """Stages 2–5 on one chunk (from event ``first_event`` of ``batch_events``), appended to
        ``target``; returns the new totals."""
        cfg, backend, buffers, xp = self.config, self.backend, self._buffers, self.backend.xp
        n_events, max_seeds = len(offsets) - 1, cfg.max_vertices_per_event
        _, seeds, n_seeds = self._seeds(offsets, tracks, clock)
        if int(n_seeds.max()) > max_seeds:
            backend.check_errors()  # bad offsets a kernel noted come before what they caused
            _report_overflow(backend.to_host(n_seeds), max_seeds, first_event, "fitted",
                             origin)

        # Event e's weights: min(n_seeds, max_seeds) fitted slots × its n_e tracks.
        counts = buffers.get("counts", (n_events,), np.int64)
        xp.subtract(offsets[1:], offsets[:-1], out=counts)
        slots = buffers.get("weights_per_event", (n_events,), np.int64)
        xp.minimum(n_seeds, max_seeds, out=slots)
        xp.multiply(slots, counts, out=slots)
        weight_offsets = _prefix_sum(
            xp, buffers.get("weight_offsets", (n_events + 1,), np.int64), slots, 0)
        pos = buffers.get("pos", (n_events, max_seeds, 3), np.float64)
        cov = buffers.get("cov", (n_events, max_seeds, 6), np.float64)
        chi2 = buffers.get("chi2", (n_events, max_seeds), np.float64)
        ndof = buffers.get("ndof", (n_events, max_seeds), np.float64)
        n_vtx_tracks = buffers.get("n_vtx_tracks", (n_events, max_seeds), np.float64)
        valid = buffers.get("valid", (n_events, max_seeds), np.uint8)
        weights = buffers.get("weights", (int(weight_offsets[-1]),), np.float64)
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
        # Where each event's vertices and their weights go in the output (global positions).
        vertex_offsets = _prefix_sum(
            xp, target.offsets[first_event : first_event + n_events + 1], n_kept,
            vertices_before)
        # Each kept vertex takes one weight per track of its event; without weights, zero
        # track counts make compact copy the vertices alone.
        weighted_offsets = offsets
        if with_weights:
            xp.multiply(n_kept, counts, out=slots)
        else:
            weighted_offsets = buffers.get("no_tracks", (n_events + 1,), np.int64)
            weighted_offsets[...] = 0
            slots[...] = 0
        weight_base = _prefix_sum(
            xp, buffers.get("weight_base", (n_events + 1,), np.int64), slots, weights_before)
        n_vertices, n_weights = int(vertex_offsets[-1]), int(weight_base[-1])
        # Should the outputs grow, room for the whole batch at the rate so far: a large batch
        # then grows them about once, not at every chunk (each growth copies what is written).
        rate = batch_events / (first_event + n_events)
        target._reserve(n_vertices, n_weights, vertices_before, weights_before,
                       expected=(math.ceil(rate * n_vertices), math.ceil(rate * n_weights)))
        backend.compact(weighted_offsets, weight_offsets, order, n_kept, vertex_offsets,
                        weight_base,
                        pos, cov, chi2, ndof, n_vtx_tracks, weights,
                        target.vertices, target.weight_offsets, target.weights)
        clock.tick("cleanup")  # the compaction into flat arrays counts as part of clean-up
        return n_vertices, n_weights


@contextlib.contextmanager
def _held_alone(lock: threading.Lock, refusal: str) -> Iterator[None]:
    """Hold ``lock`` for the block; a ``RuntimeError`` saying ``refusal`` when it is held."""
    if not lock.acquire(blocking=False):
        raise RuntimeError(refusal)
    try:
        yield
    finally:
        lock.release()


@contextlib.contextmanager
def _device_errors_raised(backend: Backend) -> Iterator[None]:
    """Raise, at the end, the bad input the kernels recorded on the device (the CUDA kernels
    skip it and note it); on another exception, clear the note, which would otherwise be
    raised by the next call."""
    try:
        yield
    except BaseException:
        with contextlib.suppress(Exception):
            backend.check_errors()
        raise
    backend.check_errors()


def _prefix_sum(xp: Any, out: Any, values: Any, first: int) -> Any:
    """``out = [first, first + v0, first + v0 + v1, ...]`` written in place; returns ``out``."""
    out[0] = first
    # Summed in place: int32 values summed into int64 took a chunk-sized cast buffer.
    out[1:] = values
    xp.cumsum(out[1:], out=out[1:])
    if first:
        out[1:] += first
    return out


def _shear_back(rows: Any, beam_tx: float, beam_ty: float) -> None:
    """Move vertices found in the frame of a beamline with slopes ``(beam_tx, beam_ty)`` back
    to the detector frame, in place: ``x += beam_tx·z``, ``y += beam_ty·z`` and the covariance
    ``C → J C Jᵀ`` with ``J = [[1, 0, beam_tx], [0, 1, beam_ty], [0, 0, 1]]``.

    ``rows`` holds the vertices as :class:`VertexBuffers` does, one row per field.
    """
    x, y, z, cxx, cxy, cyy, cxz, cyz, czz = (rows[VERTEX_FIELDS.index(name)] for name in
                                             ("x", "y", "z", "cov_xx", "cov_xy", "cov_yy",
                                              "cov_xz", "cov_yz", "cov_zz"))
    x += beam_tx * z
    y += beam_ty * z
    # The terms in x and y first: they need cov_xz and cov_yz as they were.
    cxx += beam_tx * (2.0 * cxz + beam_tx * czz)
    cxy += beam_tx * cyz + beam_ty * (cxz + beam_tx * czz)
    cyy += beam_ty * (2.0 * cyz + beam_ty * czz)
    cxz += beam_tx * czz
    cyz += beam_ty * czz


def _compile_batch(config: PVFinderConfig, dtype: Any = np.float64) -> TrackBatch:
    """One event of two tracks from the beamline at z = 0, given at z = 1 mm, with states of
    type ``dtype``: enough to compile and launch every kernel."""
    bx, by = config.beamline[:2]
    beam_tx, beam_ty = config.beamline_slopes
    slope, variance = 0.1, 1e-4  # any small slope, any well-measured state
    tx = np.array([beam_tx + slope, beam_tx - slope])
    fields = {name: np.zeros(2) for name in TRACK_FIELDS}
    fields.update(x=bx + tx, y=np.full(2, by + beam_ty), z=np.ones(2), tx=tx,
                  ty=np.full(2, beam_ty), cov_xx=np.full(2, variance),
                  cov_yy=np.full(2, variance))
    return TrackBatch.from_arrays(counts=[2], **{name: values.astype(dtype)
                                                 for name, values in fields.items()})


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


def _report_overflow(n_seeds: np.ndarray, max_seeds: int, first_event: int, what: str,
                     origin: tuple[str, int] | None = None) -> None:
    """Warn when events had more clusters than seed slots (``what`` says what became of the
    ones beyond them), naming the events by entry of ``origin`` (file:tree, first entry)
    when given."""
    over = np.flatnonzero(n_seeds > max_seeds)
    if over.size:
        where, first_entry = origin or ("", 0)
        events = first_entry + first_event + over
        place = f"{where}: " if where else ""
        kind = "entry" if where else "event"
        warnings.warn(SeedOverflowWarning(
            f"{place}{over.size} event(s) had more than max_vertices_per_event={max_seeds} "
            f"clusters ({kind} {events[0]}: {n_seeds[over[0]]}); only the first {max_seeds} in "
            f"z were {what}. Raise max_vertices_per_event to keep them all.",
            events, n_seeds[over]), stacklevel=_stacklevel_of_caller())


_PACKAGE_DIR = os.path.dirname(os.path.abspath(__file__)) + os.sep


def _stacklevel_of_caller() -> int:
    """The ``stacklevel`` for a warning raised in the caller of this function that points at
    the first line outside pvfinder: the user's call, whichever entry point it went through."""
    frame, level = sys._getframe(1), 1
    while frame.f_back is not None and frame.f_code.co_filename.startswith(_PACKAGE_DIR):
        frame, level = frame.f_back, level + 1
    return level


def find_vertices(
    tracks: Any, config: PVFinderConfig | None = None, backend: str | Backend = "auto",
    *, weights: bool = True,
) -> VertexBatch:
    """Find the primary vertices of every event: the one-line entry point.

    Parameters
    ----------
    tracks : TrackBatch, awkward.Array or mapping of arrays
        VELO track states per event (mm).
    config : PVFinderConfig, optional
        Algorithm parameters; the published defaults when omitted.
    backend : {"auto", "cpu", "cuda"} or Backend
        Where to run.
    weights : bool
        Return the track–vertex weights too (see :meth:`PVFinder.run`).

    Returns
    -------
    VertexBatch
        Vertices per event (host arrays), sorted by z, with track–vertex weights unless
        ``weights=False``.

    Raises
    ------
    TypeError
        For a ``config`` that is not a :class:`PVFinderConfig`, or tracks of another kind.
    ValueError
        For an unknown backend name, or malformed tracks (see :meth:`PVFinder.run`).
    BackendUnavailableError
        When the backend asked for cannot run here (the message says why).
    RuntimeError
        In a process forked from one whose CPU kernels had run on GNU OpenMP threads.

    Notes
    -----
    Each call builds a new :class:`PVFinder` with fresh work buffers, whose first touch
    costs time: on 1000 events a call takes 30–100 ms (the first touch of fresh memory, which
    varies from run to run) where a kept finder takes 22 ms (medians of seven, 2-core VM).
    For batch after batch keep one finder and call it, as ``pvfinder reconstruct`` does.
    """
    return PVFinder(config, backend)(tracks, weights=weights)

