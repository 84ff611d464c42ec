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


def test_readme_names_every_command_line_option():
    import argparse

    from pvfinder.cli import _parser

    section = (ROOT / "README.md").read_text().split("## Command line")[1].split("\n## ")[0]
    parser = _parser()
    (commands,) = [action for action in parser._actions
                   if isinstance(action, argparse._SubParsersAction)]

    def rows(prefix: str) -> str:  # the table's rows for one command
        return "\n".join(line for line in section.splitlines()
                         if line.startswith(f"| `pvfinder {prefix}"))

    def named(option: str, text: str) -> bool:
        return re.search(rf"(?<![\w-]){re.escape(option)}(?![\w-])", text) is not None

    # Each option of each command in that command's rows, in one of its spellings.
    tables = [("pvfinder", parser, rows("--")), *(
        (name, command, rows(f"{name} ")) for name, command in commands.choices.items())]
    missing = [f"{name} {'/'.join(action.option_strings)}"
               for name, command, text in tables
               for action in command._actions
               if action.option_strings and not isinstance(action, argparse._HelpAction)
               and not any(named(option, text) for option in action.option_strings)]
    assert missing == []
