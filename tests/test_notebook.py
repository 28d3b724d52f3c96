"""notebooks/analyze_study.ipynb runs top to bottom on two tiny studies the test makes."""

from __future__ import annotations

from pathlib import Path

import nbformat
import pytest
from nbclient import NotebookClient

from tiny_studies import make_two_studies

# Executes the notebook in a kernel on two studies it makes first.
pytestmark = [pytest.mark.notebook, pytest.mark.slow]

NOTEBOOK = Path(__file__).resolve().parent.parent / "notebooks" / "analyze_study.ipynb"


def test_the_notebook_runs_and_draws_its_plots(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    storage = make_two_studies(tmp_path)
    # The kernel inherits this environment: where the studies are, and matplotlib's inline backend.
    monkeypatch.setenv("KVOPT_STORAGE", storage)
    monkeypatch.setenv("KVOPT_STUDY", "a")
    monkeypatch.setenv("KVOPT_OTHER_STUDY", "b")
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.delenv("MPLBACKEND", raising=False)
    notebook = nbformat.read(NOTEBOOK, as_version=4)
    # Raises CellExecutionError, with the cell and its traceback, if any cell fails.
    resources = {"metadata": {"path": str(tmp_path)}}
    client = NotebookClient(notebook, timeout=180, kernel_name="python3", resources=resources)
    client.execute()
    nbformat.write(notebook, tmp_path / "executed.ipynb")  # kept with the test's files for a look

    outputs = [o for cell in notebook.cells if cell.cell_type == "code" for o in cell.outputs]
    assert not [o for o in outputs if o.output_type == "error"]
    images = [o for o in outputs if "image/png" in o.get("data", {})]
    assert len(images) == 3  # the front, the hypervolume history, the B/A ratios
    text = "\n".join(o.get("text", "") + o.get("data", {}).get("text/plain", "") for o in outputs)
    assert "a: tiny-gpt2 / ci-micro, 4 candidates measured" in text
    assert "recommended: " in text
    assert "A recommends" in text and "B recommends" in text
