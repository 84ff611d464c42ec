"""Shared fixtures: the backends available here and small simulated samples."""

from __future__ import annotations

import pytest

from pvfinder.backends import available_backends

CUDA_REASON = available_backends()["cuda"]
requires_cuda = pytest.mark.skipif(CUDA_REASON is not None, reason=f"no GPU: {CUDA_REASON}")

BACKENDS = ["cpu", pytest.param("cuda", marks=[pytest.mark.gpu, requires_cuda])]


@pytest.fixture(params=BACKENDS)
def backend_name(request) -> str:
    """Every backend that can run on this machine (CUDA tests skip, with the reason, elsewhere)."""
    return request.param


@pytest.fixture(scope="session")
def sample():
    """1000 simulated events at the nominal pile-up (ν = 7.6)."""
    from pvfinder.simulation import simulate

    return simulate(1000, seed=11)
