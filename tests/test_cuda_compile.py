"""The CUDA sources compile for Ampere and Hopper with warnings as errors, and the Python
launchers pass every kernel exactly the C types it declares (no GPU needed; the compile checks
need nvcc)."""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
import types

import numpy as np
import pytest

from pvfinder.kernels.cuda import _launch, _module

CUDA_DIR = _module.SOURCE_DIR
SOURCES = sorted(CUDA_DIR.glob("*.cu"))
NVCC = shutil.which("nvcc")
ARCHS = ["sm_80", "sm_90"]
requires_nvcc = pytest.mark.skipif(NVCC is None, reason="nvcc is not installed")

# C parameter type → what the launcher must pass (exact numpy scalar type, or array dtype).
SCALARS = {"double": np.float64, "long long": np.int64, "int": np.int32}
POINTEES = {"double": np.float64, "long long": np.int64, "int": np.int32,
            "unsigned char": np.uint8}


def kernel_signatures(source: str) -> dict[str, list[tuple[str, str, bool, bool]]]:
    """``extern "C" __global__`` kernels → ``(name, base type, is pointer, is const)`` params."""
    kernels = {}
    for match in re.finditer(r'extern "C" __global__ void (\w+)\((.*?)\)\s*\{', source, re.S):
        params = []
        for param in match.group(2).split(","):
            words = param.replace("__restrict__", "").replace("*", " * ").split()
            name, pointer, const = words[-1], "*" in words, "const" in words
            base = " ".join(w for w in words[:-1] if w not in ("const", "*"))
            params.append((name, base, pointer, const))
        kernels[match.group(1)] = params
    return kernels


def nvcc(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([NVCC, f"-I{CUDA_DIR}", "-Werror", "all-warnings", *args],
                          capture_output=True, text=True, check=False)


def test_every_kernel_function_has_its_cuda_kernel_in_its_stage_source():
    from pvfinder.backends import KERNELS, STAGES

    assert {p.stem for p in SOURCES} == set(STAGES)
    for source in SOURCES:
        expected = [f"pvf_{kernel}" for kernel, stage in KERNELS.items() if stage == source.stem]
        assert list(kernel_signatures(source.read_text())) == expected


@requires_nvcc
@pytest.mark.parametrize("arch", ARCHS)
@pytest.mark.parametrize("source", SOURCES, ids=lambda p: p.name)
def test_compiles_standalone(source, arch, tmp_path):
    ptx = tmp_path / f"{source.stem}.ptx"
    result = nvcc("-ptx", f"-arch={arch}", "-o", str(ptx), str(source))
    assert result.returncode == 0, result.stderr
    assert ptx.read_text().count(".entry ") == len(kernel_signatures(source.read_text()))


@requires_nvcc
@pytest.mark.parametrize("arch", ARCHS)
def test_module_assembles_without_warnings_or_spills(arch, tmp_path):
    """The loader's one translation unit (header + every .cu): no symbol defined twice, and
    ptxas (warnings as errors, spills warned) accepts every kernel."""
    joined = tmp_path / "module.cu"
    joined.write_text(_module.module_source())
    result = nvcc("-cubin", f"-arch={arch}", "-Xptxas", "-Werror,-warn-spills,-v",
                  "-o", str(tmp_path / "module.cubin"), str(joined))
    assert result.returncode == 0, result.stderr
    compiled = re.findall(r"Compiling entry function '(\w+)'", result.stderr)
    assert sorted(compiled) == sorted(kernel_signatures(_module.module_source()))


def test_error_codes_match_the_header():
    header = (CUDA_DIR / "common.cuh").read_text()
    assert f"#define PVF_EVENT_BITS {_launch.EVENT_BITS}\n" in header
    codes = {int(v): k for k, v in re.findall(r"#define PVF_ERROR_(\w+) (\d+)", header)}
    assert sorted(codes) == sorted(_launch.ERROR_MESSAGES)
    for code, name in codes.items():  # PVF_ERROR_HISTOGRAM_OFFSETS → ("histogram", ...)
        kernel = _launch.ERROR_MESSAGES[code][0]
        assert name.lower().startswith(kernel.split("_")[0]), (code, name, kernel)


# --- the launchers against the C signatures, with a recording stand-in for cupy ---------------

class _FakeArray(np.ndarray):
    """What the launchers see of a cupy array: a numpy array of another type."""

    def get(self) -> np.ndarray:  # cupy's copy to the host
        return np.array(self)


class _Recorder:
    def __init__(self, name: str, calls: list):
        self.name, self.calls = name, calls
        self.max_dynamic_shared_size_bytes = 0

    def __call__(self, grid, block, args, shared_mem=0):
        self.calls.append((self.name, grid, block, args, shared_mem))


@pytest.fixture
def launches(monkeypatch):
    """Install a fake ``cupy`` whose kernels record their launches; yield the record."""
    calls: list = []
    fake = types.ModuleType("cupy")
    fake.ndarray = _FakeArray
    fake.empty = lambda *a, **k: np.empty(*a, **k).view(_FakeArray)
    fake.zeros = lambda *a, **k: np.zeros(*a, **k).view(_FakeArray)
    fake.full = lambda *a, **k: np.full(*a, **k).view(_FakeArray)
    fake.RawModule = lambda code, options: types.SimpleNamespace(
        get_function=lambda name: _Recorder(name, calls))
    device = types.SimpleNamespace(id=0, attributes={"MaxSharedMemoryPerBlockOptin": 99 * 1024})
    fake.cuda = types.SimpleNamespace(Device=lambda *a: device)
    caches = (_module._module, _module._kernel, _launch._shared_limit)
    for cache in caches:
        cache.cache_clear()
    _launch._THREAD_BUFFERS.__dict__.clear()
    monkeypatch.setitem(sys.modules, "cupy", fake)
    yield calls
    for cache in caches:
        cache.cache_clear()
    _launch._THREAD_BUFFERS.__dict__.clear()


def _arrays(*specs):
    return [np.zeros(shape, dtype=dtype).view(_FakeArray) for shape, dtype in specs]


def _launch_every_stage(n_events=3, n_tracks=7, max_seeds=4, n_bins=10000):
    from pvfinder.kernels.cuda import cleanup, extrapolate, find_peaks, fit_vertices, histogram

    f8, i4, i8, u1 = np.float64, np.int32, np.int64, np.uint8
    track = ((n_tracks,), f8)
    slot = ((n_events, max_seeds), f8)
    extrapolate.extrapolate(*_arrays(*[track] * 11), 0.0, 0, -300, 300.0, 10, 1.5,
                            *_arrays(*[track] * 6, ((n_tracks,), u1)))
    histogram.histogram(*_arrays(((n_events + 1,), i8), track, track, ((n_tracks,), u1)),
                        -300, 0.25, *_arrays(((n_events, n_bins), f8)))
    find_peaks.find_peaks(*_arrays(((n_events, n_bins), f8)), -300, 0.25, 0.0167, 2.5, 3, 0,
                          *_arrays(slot, ((n_events,), i4)))
    fit_vertices.fit_vertices(
        *_arrays(((n_events + 1,), i8), *[track] * 7, ((n_tracks,), u1), slot,
                 ((n_events,), i4), ((n_events + 1,), i8)),
        0, 0, 12, 4, 0, 3, 7, 5e-4, 4, 0.3,
        *_arrays(((n_events, max_seeds, 3), f8), ((n_events, max_seeds, 6), f8), slot, slot,
                 slot, ((n_events, max_seeds), u1), ((11,), f8)))
    cleanup.cleanup(*_arrays(((n_events, max_seeds, 3), f8), ((n_events, max_seeds, 6), f8), slot,
                             ((n_events, max_seeds), u1), ((n_events,), i4)), 25,
                    *_arrays(((n_events, max_seeds), i4), ((n_events,), i4)))
    cleanup.compact(*_arrays(*[((n_events + 1,), i8)] * 2, ((n_events, max_seeds), i4),
                             ((n_events,), i4), *[((n_events + 1,), i8)] * 2,
                             ((n_events, max_seeds, 3), f8), ((n_events, max_seeds, 6), f8),
                             slot, slot, slot, ((11,), f8), ((12, 5), f8), ((6,), i8),
                             ((20,), f8)))


def test_launchers_pass_the_declared_c_types(launches):
    _launch_every_stage()
    signatures = kernel_signatures(_module.module_source())
    assert sorted(call[0] for call in launches) == sorted(signatures)
    for name, grid, block, args, shared_mem in launches:
        params = signatures[name]
        assert len(args) == len(params), name
        for arg, (param, base, pointer, const) in zip(args, params):
            where = f"{name}({param})"
            if pointer:
                assert isinstance(arg, _FakeArray), where
                assert arg.dtype == POINTEES[base], f"{where}: {arg.dtype}"
            else:
                assert type(arg) is SCALARS[base], f"{where}: {type(arg).__name__}"
        assert block[0] % 32 == 0 and grid[0] >= 1, name
    histogram_call = next(c for c in launches if c[0] == "pvf_histogram")
    assert histogram_call[4] == 8 * 10000  # one double of shared memory per bin


def test_launchers_name_kernel_and_argument(launches):
    from pvfinder.kernels.cuda import cleanup, find_peaks

    with pytest.raises(ValueError, match=r"find_peaks: out_n_seeds must be .*int32.*\(3,\)"):
        find_peaks.find_peaks(*_arrays(((3, 50), np.float64)), -300, 0.25, 0.0167, 2.5, 3, 0,
                              *_arrays(((3, 4), np.float64), ((3,), np.int64)))
    with pytest.raises(ValueError, match=r"cleanup: cov must be .*shape \(2, 4, 6\)"):
        cleanup.cleanup(*_arrays(((2, 4, 3), np.float64), ((2, 4, 5), np.float64),
                                 ((2, 4), np.float64), ((2, 4), np.uint8), ((2,), np.int32)),
                        25, *_arrays(((2, 4), np.int32), ((2,), np.int32)))
    with pytest.raises(ValueError, match=r"histogram: out_hist rows of 20000 bins do not fit"):
        _launch_every_stage(n_bins=20000)
    assert launches[0][0] == "pvf_extrapolate"  # stages before the bad one were launched


def test_missing_cupy_gives_the_install_hint(monkeypatch):
    monkeypatch.setitem(sys.modules, "cupy", None)  # makes `import cupy` fail
    with pytest.raises(ImportError, match=r"pvfinder\[cuda\].*cupy-cuda12x"):
        _module.cupy()


def test_each_thread_has_its_own_error_buffer(launches):
    # One buffer per device: a finder in another thread raised this thread's bad input, or
    # cleared it so that it was never raised.
    import threading

    mine = _launch.error_buffer()
    mine[0] = 1 << _launch.EVENT_BITS | 7  # the histogram kernel's note of bad event 7
    seen = {}

    def other_thread():
        seen["buffer"] = _launch.error_buffer()
        _launch.check_errors()  # nothing noted in this thread's buffer
        seen["checked"] = True

    thread = threading.Thread(target=other_thread)
    thread.start()
    thread.join()
    assert seen["checked"] and seen["buffer"] is not mine
    assert _launch.error_buffer() is mine
    with pytest.raises(ValueError, match=r"histogram: offsets decrease .*event 7\)"):
        _launch.check_errors()
    _launch.check_errors()  # cleared
