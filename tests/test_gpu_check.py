"""Runs the reduced (CPU) form of benchmarks/gpu_check.py end to end and reads back its JSON table."""

import json

from benchmarks import gpu_check


def test_reduced_check_writes_every_section(tmp_path):
  out = tmp_path / 'check.json'
  assert gpu_check.main(['--reduced', '--repeats', '1', '--out', str(out)]) == 0
  table = json.loads(out.read_text())
  assert table['header']['form'] == 'reduced'
  train = table['LSTRL float32']
  assert 'error' not in train, train
  assert train['train ms/step'] > 0 and train['extraction frames/s'] > 0
  # 2 x 2 clips x 2 frames per step: frames/s and ms/step describe the same time.
  assert abs(train['train frames/s'] * train['train ms/step'] / 1e3 - 8) < 1e-6
  assert table['ranking']['ranking s'] > 0
  assert table['MAE attention']['attention xla ms'] > 0
  assert str(table['MAE attention']['attention cudnn ms']).startswith('unavailable')  # no GPU here
  assert table['input pipeline']['pipeline frames/s'] > 0
