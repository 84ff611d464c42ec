"""Compile the CUDA sources of this folder into one CuPy ``RawModule`` on first use.

Every ``*.cu`` file here is joined into a single translation unit (their shared helpers live in
``common.cuh`` as ``static __device__ inline`` functions, included once), compiled with NVRTC
the first time a kernel is asked for, and cached for the life of the process (CuPy also keeps
the compiled binary in its on-disk kernel cache, so a second process starts fast).
"""

from __future__ import annotations

import functools
from pathlib import Path
from typing import Any

__all__ = ["cupy", "get_kernel", "describe_device", "device_properties", "SOURCE_DIR"]

SOURCE_DIR = Path(__file__).resolve().parent
_OPTIONS = ("--std=c++17", f"-I{SOURCE_DIR}")


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


@functools.cache
def _module() -> Any:
    sources = sorted(SOURCE_DIR.glob("*.cu"))
    code = "\n".join(path.read_text() for path in sources)
    return cupy().RawModule(code=code, options=_OPTIONS)


@functools.cache
def get_kernel(name: str) -> Any:
    """The compiled ``__global__`` function ``name`` (compiling the module on first use)."""
    return _module().get_function(name)


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
        _module().compile()
        lines.append("kernels: compiled")
    except Exception as error:  # report, do not crash `info`
        lines.append(f"kernels: failed to compile ({type(error).__name__}: {error})")
    return lines
