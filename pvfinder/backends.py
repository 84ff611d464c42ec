"""The dispatch layer: one registry of backends that offer the same five stage kernels.

A :class:`Backend` bundles the stage functions of one implementation (``cpu``: Numba,
``cuda``: CuPy) with its array module. The pipeline asks for a backend by name and never
knows which one runs; two finders on two backends can live side by side in one process.
"""

from __future__ import annotations

import contextlib
import dataclasses
import importlib
import os
import sys
import threading
from collections.abc import Callable
from types import ModuleType
from typing import Any

import numpy as np

from .kernels import check_track_offsets

__all__ = [
    "KERNELS",
    "STAGES",
    "Backend",
    "BackendUnavailableError",
    "available_backends",
    "check_track_offsets",  # the same on every backend: the kernels share their words
    "get_backend",
]

STAGES = ("extrapolate", "histogram", "find_peaks", "fit_vertices", "cleanup")
# Kernel functions of each backend → the stage module that holds them: the five stages, and
# ``compact``, the second half of clean-up that writes the kept vertices into flat outputs.
KERNELS = {**{stage: stage for stage in STAGES}, "compact": "cleanup"}


class BackendUnavailableError(RuntimeError):
    """The requested backend cannot run on this machine (the message says why)."""


@dataclasses.dataclass(frozen=True)
class Backend:
    """The five stage kernels of one implementation and the array module they work on.

    Attributes
    ----------
    name : str
        ``"cpu"`` or ``"cuda"``.
    xp : module
        ``numpy`` or ``cupy``: where the stage functions expect their arrays.
    stages : dict
        Kernel name → launch function: the five stages and ``compact`` (see :data:`KERNELS`
        and ``kernels/README.md`` for the contract).
    events_per_chunk : int
        How many events the pipeline hands to the stages at once; bounds the size of the
        work buffers (tracks at the beamline, histograms, weights), whatever the batch.
    synchronize : callable
        Waits until the device has finished the work launched so far (a no-op on the CPU).
    check_errors : callable
        Raises the first bad input a kernel recorded on the device, naming it (waits for the
        device; a no-op on the CPU, whose kernels raise at once).
    launch_guard : context manager
        Held while a batch runs (not reentrant): for the CPU, a lock for as long as Numba's
        threading layer may be one that cannot take launches from several threads at once;
        otherwise a no-op.
    state_dtypes : tuple of numpy dtypes
        Precisions of the track states (stage 1's inputs) that the kernels read as they are;
        states in another one are converted to float64 first.
    """

    name: str
    xp: ModuleType
    stages: dict[str, Callable[..., None]]
    events_per_chunk: int
    synchronize: Callable[[], None] = lambda: None
    # Raises the first bad input a kernel recorded on the device (waits for the device).
    check_errors: Callable[[], None] = lambda: None
    launch_guard: contextlib.AbstractContextManager = dataclasses.field(
        default_factory=contextlib.nullcontext)
    state_dtypes: tuple[np.dtype, ...] = (np.dtype(np.float64),)

    def __getattr__(self, stage: str) -> Callable[..., None]:
        try:  # through vars(): a copy being made has no stages yet
            return vars(self)["stages"][stage]
        except KeyError:
            raise AttributeError(stage) from None

    def asarray(self, array: Any, dtype: Any = None) -> Any:
        """``array`` on this backend's device (no copy when it is already there)."""
        return self.xp.ascontiguousarray(self.xp.asarray(array, dtype=dtype))

    def to_host(self, array: Any) -> np.ndarray:
        """``array`` as a numpy array."""
        if self.xp is np:
            return np.asarray(array)
        return self.xp.asnumpy(array)


def _load_stages(package: str) -> dict[str, Callable[..., None]]:
    return {
        kernel: getattr(importlib.import_module(f"{package}.{module}"), kernel)
        for kernel, module in KERNELS.items()
    }


# Set in a process forked from one whose Numba had started GNU OpenMP threads: GNU OpenMP
# cannot run after a fork, and Numba ends such a child (SIGTERM) at its first parallel launch,
# which leaves a multiprocessing pool waiting for it forever. Launches refuse instead.
_forked_from_gnu_openmp = False


def _note_fork() -> None:
    global _forked_from_gnu_openmp
    _forked_from_gnu_openmp = _forked_from_gnu_openmp or _runs_gnu_openmp()


def _numba_threading_layer() -> str | None:
    """The threading layer Numba runs parallel kernels on, or ``None`` before the first one
    has run (the settings do not tell which it picks) or when Numba was never imported."""
    if "numba" not in sys.modules:  # never imported: no threads (and no import in a fork)
        return None
    import numba

    try:
        return numba.threading_layer()
    except ValueError:  # no parallel kernel has run yet
        return None


def _runs_gnu_openmp() -> bool:
    """Whether this process's Numba has started its threads under GNU OpenMP."""
    if _numba_threading_layer() != "omp":
        return False
    from numba.np.ufunc import omppool

    return getattr(omppool, "openmp_vendor", "GNU") == "GNU"


os.register_at_fork(after_in_child=_note_fork)


class _NumbaLaunchGuard:
    """A lock around CPU kernel launches for as long as Numba's threading layer may be
    ``workqueue``, which aborts the process when two threads launch parallel kernels at once
    (``omp`` and ``tbb`` take concurrent launches).

    Which layer Numba uses is only known once a parallel kernel has run: the settings do not
    tell (``forksafe`` falls back to ``workqueue`` without TBB on Linux, and
    ``NUMBA_THREADING_LAYER_PRIORITY`` reorders the choice). So launches hold the lock until
    one has run under a thread-safe layer; from then on they go free. Not reentrant, as
    launches do not nest.
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.needed = True
        self._held = threading.local()  # whether this thread's launch holds the lock

    def __enter__(self) -> None:
        if _forked_from_gnu_openmp:
            raise RuntimeError(
                "this process was forked from one whose Numba kernels ran on GNU OpenMP "
                "threads, which cannot run after a fork (Numba would end the process): start "
                "worker processes with multiprocessing.get_context('spawn') or 'forkserver' "
                "(or use Dask), or set NUMBA_THREADING_LAYER=workqueue before the first "
                "reconstruction")
        self._held.value = self.needed
        if self._held.value:
            self._lock.acquire()

    def __exit__(self, *_: object) -> None:
        if self._held.value:
            try:
                self.needed = _numba_threading_layer() not in ("omp", "tbb")
            finally:
                self._lock.release()




def _cpu_backend() -> Backend:
    return Backend(
        name="cpu",
        xp=np,
        stages=_load_stages("pvfinder.kernels.cpu"),
        # 2048 events × 2400 bins × 8 B ≈ 40 MB of histogram: stays in memory bandwidth's
        # sweet spot while giving every thread thousands of events.
        events_per_chunk=2048,
        launch_guard=_NumbaLaunchGuard(),
        # Numba compiles the kernels for float32 states too (ROOT files store them so):
        # converting a batch to float64 first took ~8 % of the reconstruction, on one core.
        state_dtypes=(np.dtype(np.float32), np.dtype(np.float64)),
    )


def cuda_unavailable_reason() -> str | None:
    """Why the CUDA backend cannot run here, or ``None`` when it can.

    ``import cupy`` succeeds on machines without a GPU, so the device count is probed too.
    """
    try:
        import cupy
    except ImportError as error:
        return f"cupy is not installed ({error}); pip install 'pvfinder[cuda]'"
    try:
        n_devices = cupy.cuda.runtime.getDeviceCount()
    except Exception as error:  # CUDARuntimeError, or a missing driver library
        return f"no usable CUDA driver or device ({type(error).__name__}: {error})"
    if n_devices == 0:
        return "cupy sees no CUDA device"
    return None


def _cuda_backend() -> Backend:
    reason = cuda_unavailable_reason()
    if reason is not None:
        raise BackendUnavailableError(f"the cuda backend is not available: {reason}")
    import cupy

    launch = importlib.import_module("pvfinder.kernels.cuda._launch")
    return Backend(
        name="cuda",
        xp=cupy,
        stages=_load_stages("pvfinder.kernels.cuda"),
        # 65 536 events × 2400 bins × 8 B ≈ 1.3 GB of histogram: enough blocks to fill any GPU.
        events_per_chunk=65536,
        synchronize=lambda: cupy.cuda.get_current_stream().synchronize(),
        check_errors=launch.check_errors,
    )


_FACTORIES: dict[str, Callable[[], Backend]] = {"cpu": _cpu_backend, "cuda": _cuda_backend}
_BACKENDS: dict[str, Backend] = {}


def _backend(name: str) -> Backend:
    # One Backend per name, also when threads ask for it first at once: its launch guard is
    # what keeps their finders' launches apart. Each may build one; the first stored is
    # everyone's (dict.setdefault is atomic). No lock: a process forked while another
    # thread held it would wait for it forever.
    backend = _BACKENDS.get(name)
    if backend is None:
        backend = _BACKENDS.setdefault(name, _FACTORIES[name]())
    return backend


def get_backend(name: str | Backend = "auto") -> Backend:
    """Return the backend called ``name``: ``"cpu"``, ``"cuda"`` or ``"auto"``.

    ``"auto"`` picks ``cuda`` when cupy sees a GPU and falls back to ``cpu`` quietly.

    Parameters
    ----------
    name : str or Backend
        The backend's name, or a Backend (returned as it is).

    Returns
    -------
    Backend
        One per name in a process, shared by every finder that runs on it.

    Raises
    ------
    ValueError
        For an unknown name.
    TypeError
        For a ``name`` that is neither a string nor a Backend.
    BackendUnavailableError
        When the named backend cannot run here; the message says why.
    """
    if isinstance(name, Backend):
        return name
    _check_name(name)
    if name == "auto":
        return _backend("cuda" if cuda_unavailable_reason() is None else "cpu")
    return _backend(name)


def _check_name(name: Any) -> None:
    """Refuse a backend name that is not registered (a Backend passes), without probing any
    device: a Dask scheduler's workers may run a backend this machine cannot."""
    if isinstance(name, Backend):
        return
    if not isinstance(name, str):  # a list was "unhashable type"
        raise TypeError(f"backend must be a name (auto, {', '.join(_FACTORIES)}) or a Backend, "
                        f"got {type(name).__name__}")
    if name != "auto" and name not in _FACTORIES:
        raise ValueError(f"unknown backend {name!r}; choose one of auto, {', '.join(_FACTORIES)}")


def available_backends() -> dict[str, str | None]:
    """Which backends can run here.

    Returns
    -------
    dict of str to str or None
        Every registered backend's name → ``None`` if it can run here, else the reason it
        cannot (as ``pvfinder info`` prints it).
    """
    return {"cpu": None, "cuda": cuda_unavailable_reason()}
