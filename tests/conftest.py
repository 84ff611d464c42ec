"""Shared fixtures: the backends available here and small simulated samples."""

from __future__ import annotations

import signal
import uuid
from pathlib import Path

import fsspec
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


class RemoteFolder:
    """A folder of fsspec's in-memory filesystem (``memory://``), standing in for remote
    storage (``root://``, ``https://``): what is put there is read through fsspec, as a URL."""

    def __init__(self) -> None:
        self.filesystem = fsspec.filesystem("memory")
        self.folder = f"/pvfinder-tests-{uuid.uuid4().hex}"

    def put(self, path: Path, name: str | None = None) -> str:
        """Copy the local file ``path`` there (as ``name``); return its URL."""
        where = f"{self.folder}/{name or path.name}"
        self.filesystem.pipe(where, path.read_bytes())
        return f"memory://{where}"

    def url(self, name: str) -> str:
        return f"memory://{self.folder}/{name}"


@pytest.fixture
def remote():
    """A fresh :class:`RemoteFolder`, emptied afterwards."""
    folder = RemoteFolder()
    yield folder
    if folder.filesystem.exists(folder.folder):
        folder.filesystem.rm(folder.folder, recursive=True)
