"""Shared fixtures: the backends available here and small simulated samples."""

from __future__ import annotations

import signal

import pytest

from pvfinder.backends import available_backends

CUDA_REASON = available_backends()["cuda"]
requires_cuda = pytest.mark.skipif(CUDA_REASON is not None, reason=f"no GPU: {CUDA_REASON}")

BACKENDS = ["cpu", pytest.param("cuda", marks=[pytest.mark.gpu, requires_cuda])]


def pytest_configure(config):
    # Tests send Ctrl-C (SIGINT) to this process and to the workers it starts. A run put in
    # the background by a non-interactive shell (`pytest &` in a script) inherits SIGINT
    # ignored, which Python keeps, and pvfinder rightly leaves so: give the suite the
    # terminal's default that those tests describe.
    if signal.getsignal(signal.SIGINT) is signal.SIG_IGN:
        signal.signal(signal.SIGINT, signal.default_int_handler)


@pytest.fixture(params=BACKENDS)
def backend_name(request) -> str:
    """Every backend that can run on this machine (CUDA tests skip, with the reason, elsewhere)."""
    return request.param


@pytest.fixture(scope="session")
def sample():
    """1000 simulated events at the nominal pile-up (ν = 7.6)."""
    from pvfinder.simulation import simulate

    return simulate(1000, seed=11)
