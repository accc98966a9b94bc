"""notebooks/colab_tpu.ipynb runs top to bottom on the CPU (tiny model, tiny run), so it cannot rot."""

import os

import pytest

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def test_colab_notebook_runs_top_to_bottom(tiny_with_tokenizer, tmp_path):
  nbformat = pytest.importorskip("nbformat")
  nbclient = pytest.importorskip("nbclient")
  notebook = nbformat.read(os.path.join(REPO, "notebooks", "colab_tpu.ipynb"), as_version=4)
  parameters = notebook.cells[1]
  assert parameters.source.startswith("# Parameters")
  parameters.source = "\n".join([
      f"MODEL = {tiny_with_tokenizer!r}", 'DATA = "concept10/prod_2b_l20_v1"', "LAYER = 1",
      'RUN_FLAGS = ["--max_concepts=2", "--methods=DiffMean", "--factors=0.5,4", "--num_instructions=4",'
      ' "--max_new_tokens=4", "--batch_size=4"]',
      f"OUTPUT = {str(tmp_path / 'run')!r}", 'AXJAX_DIR = "unused"'])
  nbclient.NotebookClient(notebook, timeout=900, kernel_name="python3",
                          resources={"metadata": {"path": REPO}}).execute()
  outputs = "".join(o.get("text", "") for cell in notebook.cells if cell.cell_type == "code" for o in cell.outputs)
  assert "(2, 64)" in outputs  # the dictionary loaded in three lines: 2 concepts of the tiny model's width
  assert any("image/png" in o.get("data", {}) for cell in notebook.cells if cell.cell_type == "code"
             for o in cell.outputs)  # the detection plot was drawn
