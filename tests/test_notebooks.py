"""notebooks/*.ipynb run top to bottom on CPU (tiny/demo models) and show their figures."""

import os

import pytest

nbformat = pytest.importorskip("nbformat")
nbclient = pytest.importorskip("nbclient")
pytest.importorskip("matplotlib")

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
# notebook -> the figures (image/png outputs) its cells must show
EXPECTED_FIGURES = {
    "quickstart.ipynb": 2,   # inpainting and outpainting: input | mask | result | close-up
    "train_tiny.ipynb": 3,   # loss curves, the training sample grid, the diffusers result
}


def _png_outputs(notebook) -> int:
  return sum("image/png" in output.get("data", {})
             for cell in notebook.cells if cell.cell_type == "code"
             for output in cell.get("outputs", []))


@pytest.mark.slow
@pytest.mark.parametrize("name", sorted(EXPECTED_FIGURES))
def test_notebook_runs_top_to_bottom_and_shows_its_figures(name, tmp_path):
  notebook = nbformat.read(os.path.join(ROOT, "notebooks", name), as_version=4)
  assert _png_outputs(notebook) == 0, "commit notebooks without outputs"
  # Runs in tmp_path: the notebooks' runs/ folders go there, the repository stays clean.
  client = nbclient.NotebookClient(notebook, timeout=900, kernel_name="python3",
                                   resources={"metadata": {"path": str(tmp_path)}})
  client.execute()  # raises CellExecutionError naming the failing cell
  nbformat.write(notebook, str(tmp_path / name))  # kept for a look when a check below fails
  assert _png_outputs(notebook) >= EXPECTED_FIGURES[name], tmp_path / name
  errors = [output for cell in notebook.cells for output in cell.get("outputs", [])
            if output.get("output_type") == "error"]
  assert not errors
