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
    if "selected" in namespace:  # the trigger loop kept some events and not all of them
        assert 0 < namespace["selected"] < 1000
