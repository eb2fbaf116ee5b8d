"""Tests for train.py's handling of user errors: one line on stderr, exit status 1, nothing written.

The happy path (train, evaluate, resume) is in test_checkpoint_resume.py. The runs here fail before any
compilation, so they start in parallel.
"""

import importlib
import json
import pathlib
import subprocess
import sys

import pytest

from configs import default
from lstrl_jax.data import datasets
from lstrl_jax.data import demo as demo_data
from lstrl_jax.train import __main__ as train_command

REPO = pathlib.Path(__file__).resolve().parents[1]

# tensorboardX imports torch whenever it is installed; torch is a test-only dependency that costs seconds.
RUN_TRAIN = """
import runpy, sys
sys.modules['torch'] = None
sys.argv = ['train.py', *sys.argv[1:]]
runpy.run_path('train.py', run_name='__main__')
"""


def start_train(*args: str) -> subprocess.Popen:
  """Starts `python train.py <args>` in the repository root."""
  return subprocess.Popen(
      [sys.executable, '-c', RUN_TRAIN, *args], cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
  )


def test_user_errors_exit_1_with_one_line(tmp_path):
  data = demo_data.generate(tmp_path / 'demo', num_persons=4, frames=2, height=32, width=16)
  missing = tmp_path / 'no_such_data'
  cases = {
      'missing_data': (f'--config.data_dir={missing}', str(missing)),
      'bad_value': (
          '--config.eval_clip_selection=every', "config.eval_clip_selection: expected one of ('rrs', 'dense')"
      ),
  }
  runs = {
      name: start_train(
          '--config=configs/demo.py', f'--config.data_dir={data}', override, f'--workdir={tmp_path / name}'
      )
      for name, (override, _) in cases.items()
  }
  for name, process in runs.items():
    _, stderr = process.communicate(timeout=300)
    assert process.returncode == 1, (name, stderr[-2000:])
    assert 'Traceback' not in stderr, (name, stderr[-2000:])
    last = stderr.strip().splitlines()[-1]
    assert last.startswith('error: ') and cases[name][1] in last, (name, last)
    assert not (tmp_path / name / 'checkpoints').exists(), name


def test_mistyped_override_and_unknown_variant_are_flag_errors(tmp_path):
  runs = [
      start_train('--config=configs/demo.py', '--config.learning_rat=1', f'--workdir={tmp_path}'),
      start_train('--config=configs/demo.py:large', f'--workdir={tmp_path}'),
  ]
  outputs = [process.communicate(timeout=300) for process in runs]
  assert [process.returncode for process in runs] == [2, 2]  # usage errors (DESIGN.md section 6)
  for _, stderr in outputs:
    assert len(stderr.strip().splitlines()) == 1 and 'Traceback' not in stderr, stderr
  assert 'did you mean "learning_rate"' in outputs[0][1]
  assert 'configs/demo.py:large: unknown config variant' in outputs[1][1]
  assert not any(tmp_path.iterdir())


@pytest.mark.parametrize('name', ['mars', 'lsvid', 'ilidsvid', 'prid', 'duke', 'demo'])
def test_configs_start_from_default(name):
  module = importlib.import_module(f'configs.{name}')
  reference = sorted(default.get_config().to_dict())
  for variant in (None, 'smoke'):
    config = module.get_config(variant)
    assert sorted(config.to_dict()) == reference  # no key added or dropped
    assert config.dataset in datasets.NAMES and config.dataset == name  # the demo is named demo
    assert config.data_dir == ('data/demo' if name == 'demo' else f'data/{name}')
  full, smoke = module.get_config(), module.get_config('smoke')
  assert (smoke.model.depth, smoke.seq_len, smoke.eval_every_epochs) == (18, 4, 1)
  assert smoke.height * smoke.width < full.height * full.width and smoke.num_epochs < full.num_epochs
  assert 'python train.py --config configs/' in module.__doc__ and ':smoke' in module.__doc__


def test_config_paths_made_absolute(tmp_path, monkeypatch):
  monkeypatch.chdir(tmp_path)
  config = default.get_config()
  config.data_dir, config.model.pretrained = 'data/demo', '~/resnet50.pth'
  config.lock()
  train_command.absolute_paths(config)
  assert config.data_dir == str(tmp_path / 'data' / 'demo')
  assert config.model.pretrained == str(pathlib.Path.home() / 'resnet50.pth')
  assert config.packed_dir == ''  # unset stays unset


def test_finished_run_is_named_not_redone(tmp_path):
  config = default.get_config()
  config.num_epochs = 10
  (tmp_path / 'checkpoints' / '40').mkdir(parents=True)
  (tmp_path / 'checkpoints' / '30').mkdir()
  assert train_command.finished_run(tmp_path, config) is None  # no results.json: train (or evaluate) again
  (tmp_path / 'results.json').write_text(json.dumps({'step': 40, 'epoch': 10.0, 'completed': True}))
  line = train_command.finished_run(tmp_path, config)
  assert line == (f'{tmp_path}: finished (10 epochs, step 40); results in {tmp_path / "results.json"}; evaluate '
                  f'again with: python eval.py --ckpt {tmp_path}')
  config.num_epochs = 20  # more epochs asked for: resume
  assert train_command.finished_run(tmp_path, config) is None
  config.num_epochs = 10
  (tmp_path / 'checkpoints' / '44').mkdir()  # a later checkpoint than the results: not finished as recorded
  assert train_command.finished_run(tmp_path, config) is None
