"""notebooks/quickstart.ipynb runs end to end in a real Jupyter kernel (nbclient), in its few-step setting."""

from pathlib import Path

import nbformat
import pytest
from nbclient import NotebookClient

NOTEBOOK = Path(__file__).resolve().parent.parent / "notebooks" / "quickstart.ipynb"


def outputs(cell) -> str:
    parts = []
    for out in cell.get("outputs", []):
        parts.append(out.get("text", ""))
        parts += [str(v) for k, v in out.get("data", {}).items() if k.startswith("text/")]
    return "\n".join(parts)


@pytest.mark.slow
def test_the_quickstart_notebook_runs_every_cell(tmp_path, monkeypatch):
    monkeypatch.setenv("THINKTUNE_NOTEBOOK_SMALL", "1")
    monkeypatch.setenv("THINKTUNE_NOTEBOOK_OUT", str(tmp_path))
    notebook = nbformat.read(NOTEBOOK, as_version=4)
    NotebookClient(
        notebook, timeout=900, kernel_name="python3", resources={"metadata": {"path": str(NOTEBOOK.parent)}}
    ).execute()  # a failing cell raises CellExecutionError
    code = [c for c in notebook.cells if c.cell_type == "code"]
    assert "3 steps of 8 completions" in outputs(code[0])
    assert any("image/png" in out.get("data", {}) for out in code[2]["outputs"])  # the curves, drawn inline
    table = outputs(code[3])
    assert "| accuracy |" in table and "paired sign test" in table
    assert "Calculate 47 + 38" not in outputs(code[4]) and outputs(code[4]).strip()  # two replies, printed
    assert "quickstart.gguf" in outputs(code[5]) and (tmp_path / "export" / "quickstart.gguf").is_file()
    assert (tmp_path / "quickstart" / "final" / "adapter_config.json").is_file()
