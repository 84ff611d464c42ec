"""The notebooks in notebooks/ run top to bottom on a small sample and are committed stripped."""

from __future__ import annotations

import pathlib

import pytest

nbformat = pytest.importorskip("nbformat")
nbclient = pytest.importorskip("nbclient")

NOTEBOOK_DIR = pathlib.Path(__file__).resolve().parent.parent / "notebooks"
NOTEBOOKS = ["01_quickstart.ipynb", "02_physics_performance.ipynb", "03_throughput.ipynb"]
# Enough events for every figure to have content, few enough for the whole set to take well
# under two minutes on two cores.
EVENTS = "300"
CELL_TIMEOUT_S = 300


@pytest.mark.parametrize("name", NOTEBOOKS)
def test_notebook_runs(name, monkeypatch):
    monkeypatch.setenv("PVFINDER_NOTEBOOK_EVENTS", EVENTS)
    # The kernel inherits this environment. Headless, and images land in the cell outputs
    # (a plain Agg backend would drop them, and a GUI backend set by the user would open windows).
    monkeypatch.setenv("MPLBACKEND", "module://matplotlib_inline.backend_inline")
    notebook = nbformat.read(NOTEBOOK_DIR / name, as_version=4)
    client = nbclient.NotebookClient(
        notebook,
        kernel_name="python3",
        timeout=CELL_TIMEOUT_S,
        resources={"metadata": {"path": str(NOTEBOOK_DIR)}},  # cwd: relative paths as in Jupyter
    )
    client.execute()  # raises CellExecutionError, with the cell and its traceback, on failure

    images = [
        output
        for cell in notebook.cells
        if cell.cell_type == "code"
        for output in cell.outputs
        if "image/png" in output.get("data", {})
    ]
    assert images, f"{name} ran but drew no figure"


@pytest.mark.parametrize("name", NOTEBOOKS)
def test_notebook_is_stripped(name):
    notebook = nbformat.read(NOTEBOOK_DIR / name, as_version=4)
    nbformat.validate(notebook)
    for index, cell in enumerate(notebook.cells):
        if cell.cell_type != "code":
            continue
        assert cell.outputs == [], f"{name}: cell {index} has outputs; strip them before committing"
        assert cell.execution_count is None, f"{name}: cell {index} has an execution count"
    assert set(notebook.metadata) <= {"kernelspec", "language_info"}, (
        f"{name}: notebook metadata beyond kernelspec and language_info: {sorted(notebook.metadata)}"
    )
