"""Executes notebooks/quickstart.ipynb top to bottom on CPU with its smallest configuration."""

import pathlib

import nbclient
import nbformat

REPO = pathlib.Path(__file__).resolve().parents[1]


def test_quickstart_notebook_runs_and_shows_pictures(tmp_path, monkeypatch):
  monkeypatch.setenv('LSTRL_QUICKSTART_SMOKE', '1')
  monkeypatch.setenv('LSTRL_QUICKSTART_OUT', str(tmp_path))
  notebook = nbformat.read(REPO / 'notebooks' / 'quickstart.ipynb', as_version=4)
  nbclient.NotebookClient(notebook, timeout=900, kernel_name='python3',
                          resources={'metadata': {'path': str(REPO / 'notebooks')}}).execute()
  outputs = [out for cell in notebook.cells if cell.cell_type == 'code' for out in cell.outputs]
  text = ''.join(out.get('text', '') for out in outputs)
  images = [out for out in outputs if 'image/png' in out.get('data', {})]
  assert 'repository root: ' + str(REPO) in text
  assert 'R-1' in text and 'mAP' in text
  assert (tmp_path / 'runs' / 'quickstart_smoke' / 'results.json').is_file()
  # The first frames of a tracklet, one ranked-results sheet and the Fig. 5 maps at least.
  assert len(images) >= 3
