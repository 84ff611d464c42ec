"""The Python examples of README.md run as printed."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
EXAMPLES = re.findall(r"```python\n(.*?)```", (ROOT / "README.md").read_text(), re.DOTALL)


def test_readme_has_examples():
    assert len(EXAMPLES) >= 2


@pytest.mark.parametrize("code", EXAMPLES, ids=lambda code: code.splitlines()[0][:40])
def test_readme_example_runs(code, monkeypatch, capsys):
    monkeypatch.chdir(ROOT)  # examples name data/sample.root relative to the project
    namespace: dict = {}
    exec(compile(code, "README.md", "exec"), namespace)
    if "selected" in namespace:  # the trigger loop: the events a one-shot run selects
        import awkward as ak
        import numpy as np

        from pvfinder import find_vertices
        from pvfinder.io import read_tracks

        pvs = find_vertices(read_tracks(ROOT / "data/sample.root"), backend="cpu").to_awkward()
        keep = (ak.num(pvs) >= 10) | ak.any(abs(pvs.z) < 1.0, axis=1)
        expected = np.flatnonzero(ak.to_numpy(keep))  # the sample numbers events from 0
        assert 0 < len(expected) < 1000
        np.testing.assert_array_equal(namespace["selected"], expected)
