"""Every CUDA source compiles with nvcc for Ampere and Hopper, warnings as errors (no GPU needed)."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest

import pvfinder.kernels.cuda as cuda_kernels

CUDA_DIR = Path(cuda_kernels.__file__).parent
SOURCES = sorted(CUDA_DIR.glob("*.cu"))
NVCC = shutil.which("nvcc")

pytestmark = pytest.mark.skipif(NVCC is None, reason="nvcc is not installed")


def test_every_stage_has_a_cuda_source():
    assert {p.stem for p in SOURCES} == {
        "extrapolate", "histogram", "find_peaks", "fit_vertices", "cleanup"
    }


def _compile(source: Path, arch: str, output: Path) -> subprocess.CompletedProcess:
    return subprocess.run(
        [NVCC, "-ptx", f"-arch={arch}", f"-I{CUDA_DIR}", "-Werror", "all-warnings",
         "-o", str(output), str(source)],
        capture_output=True, text=True, check=False,
    )


@pytest.mark.parametrize("arch", ["sm_80", "sm_90"])
@pytest.mark.parametrize("source", SOURCES, ids=lambda p: p.name)
def test_compiles_standalone(source, arch, tmp_path):
    result = _compile(source, arch, tmp_path / f"{source.stem}.ptx")
    assert result.returncode == 0, result.stderr
    assert ".entry pvf_" in (tmp_path / f"{source.stem}.ptx").read_text()


@pytest.mark.parametrize("arch", ["sm_80", "sm_90"])
def test_compiles_as_one_module(arch, tmp_path):
    """The loader joins every .cu into one RawModule: no symbol may be defined twice."""
    joined = tmp_path / "all.cu"
    joined.write_text("\n".join(p.read_text() for p in SOURCES))
    result = _compile(joined, arch, tmp_path / "all.ptx")
    assert result.returncode == 0, result.stderr
    assert (tmp_path / "all.ptx").read_text().count(".entry pvf_") == len(SOURCES)
