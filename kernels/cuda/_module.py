"""Compile the CUDA sources of this folder into one CuPy ``RawModule`` on first use.

Every ``*.cu`` file here is joined into a single translation unit behind the text of
``common.cuh`` (its helpers are ``static __device__ inline`` and include-guarded, so the
``#include`` lines of the sources then add nothing), compiled with NVRTC the first time a kernel
is asked for, and cached for the life of the process. CuPy also keeps the compiled binary in its
on-disk kernel cache, keyed by the source text: inlining the header makes an edit of the header
recompile too.
"""

from __future__ import annotations

import functools
from pathlib import Path
from typing import Any

__all__ = [
    "OPTIONS",
    "SOURCE_DIR",
    "cupy",
    "current_device_id",
    "describe_device",
    "device_properties",
    "get_kernel",
    "module_source",
]

SOURCE_DIR = Path(__file__).resolve().parent
HEADER = SOURCE_DIR / "common.cuh"
# NVRTC options; the include path only resolves the (then empty) `#include "common.cuh"` lines.
OPTIONS = ("--std=c++17", f"-I{SOURCE_DIR}")


def cupy() -> Any:
    """The ``cupy`` module, imported lazily with an install hint when it is missing."""
    try:
        import cupy as module
    except ImportError as error:
        raise ImportError(
            "the cuda backend needs CuPy: pip install 'pvfinder[cuda]' (CUDA 13 drivers) "
            "or pip install cupy-cuda12x (CUDA 12 drivers)"
        ) from error
    return module


def module_source() -> str:
    """The one translation unit compiled by :func:`get_kernel`: header, then every ``.cu``."""
    sources = sorted(SOURCE_DIR.glob("*.cu"))
    return "\n".join(path.read_text() for path in (HEADER, *sources))


def current_device_id() -> int:
    """The CUDA device that CuPy launches on in the calling thread."""
    return cupy().cuda.Device().id


# One module per device: a loaded CUDA module (and a kernel's shared-memory opt-in) belongs to
# one device's context.
@functools.cache
def _module(device_id: int) -> Any:
    return cupy().RawModule(code=module_source(), options=OPTIONS)


@functools.cache
def _kernel(name: str, device_id: int) -> Any:
    return _module(device_id).get_function(name)


def get_kernel(name: str) -> Any:
    """The compiled ``extern "C" __global__`` function ``name`` for the current device
    (compiling the module on first use)."""
    return _kernel(name, current_device_id())


def device_properties() -> dict[str, Any]:
    """GPU model, memory, driver, CUDA runtime and CuPy versions of the current device."""
    cp = cupy()
    device = cp.cuda.Device()
    props = cp.cuda.runtime.getDeviceProperties(device.id)
    name = props["name"]
    return {
        "gpu": name.decode() if isinstance(name, bytes) else str(name),
        "gpu_memory_gib": round(props["totalGlobalMem"] / 2**30, 1),
        "compute_capability": f"{props['major']}.{props['minor']}",
        "multiprocessors": props["multiProcessorCount"],
        "cuda_driver": cp.cuda.runtime.driverGetVersion(),
        "cuda_runtime": cp.cuda.runtime.runtimeGetVersion(),
        "cupy": cp.__version__,
    }


def describe_device() -> list[str]:
    """Lines for ``pvfinder info``: the GPU and whether the kernels compile."""
    lines = [f"{key}: {value}" for key, value in device_properties().items()]
    try:
        _module(current_device_id()).compile()
        lines.append("kernels: compiled")
    except Exception as error:  # report, do not crash `info`
        lines.append(f"kernels: failed to compile ({type(error).__name__}: {error})")
    return lines
