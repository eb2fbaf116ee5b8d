"""Every command's user mistakes give one `error:` line and exit 2 (usage) or 1 (data), `--help` exits 0 with
the flags and the config tree, and shipped configs are found by name (lstrl_jax/cli.py, DESIGN.md section 6).

The commands run as subprocesses from a temporary working directory outside the repository (the package on
PYTHONPATH, as an installed package would be), all started at once: none gets past flag parsing or the first
check, so no JAX computation runs.
"""

import os
import pathlib
import subprocess
import sys
import time

import ml_collections
import pytest

from lstrl_jax import cli
from lstrl_jax.data import demo as demo_data

REPO = pathlib.Path(__file__).resolve().parents[1]


def start(cwd, module, *args):
  """Starts `python -m <module> <args>` in `cwd` with the repository on PYTHONPATH (torch hidden: seconds)."""
  code = f'import runpy, sys\nsys.modules["torch"] = None\nsys.argv = ["{module}", *{list(args)!r}]\n'
  code += f'runpy.run_module("{module}", run_name="__main__", alter_sys=True)'
  env = dict(os.environ, JAX_PLATFORMS='cpu', PYTHONPATH=str(REPO))
  return subprocess.Popen([sys.executable, '-c', code], cwd=cwd, env=env, stdout=subprocess.PIPE,
                          stderr=subprocess.PIPE, text=True)


# (module, args, exit status, text the one stderr line must hold); {data} is a demo dataset, {tmp} a folder.
MISTAKES = {
    'train_typo': ('lstrl_jax.train', ['--config=demo', '--config.num_epoch=3', '--workdir={tmp}/w'], 2,
                   'unknown config key \'num_epoch\': did you mean "num_epochs"'),
    'train_nested_typo': ('lstrl_jax.train', ['--config=demo', '--config.model.dept=3', '--workdir={tmp}/w'], 2,
                          'did you mean "depth"'),
    'train_type': ('lstrl_jax.train', ['--config=demo', '--config.num_epochs=ten', '--workdir={tmp}/w'], 2,
                   "flag --config.num_epochs=ten: invalid literal for int()"),
    'train_unknown_flag': ('lstrl_jax.train', ['--config=demo', '--workdri={tmp}/w'], 2,
                           "Unknown command line flag 'workdri'"),
    'train_missing_flag': ('lstrl_jax.train', ['--config=demo'], 2, '--workdir is required'),
    'train_no_config': ('lstrl_jax.train', ['--config=nosuch', '--workdir={tmp}/w'], 2,
                        '--config nosuch: no such config file; expected a path to a config .py file or one of '
                        'the shipped configs: default, demo,'),
    'train_variant': ('lstrl_jax.train', ['--config=demo:large', '--workdir={tmp}/w'], 2,
                      'configs/demo.py:large: unknown config variant'),
    'train_extra': ('lstrl_jax.train', ['--config=demo', '--workdir={tmp}/w', 'now'], 2,
                    'unexpected arguments: now'),
    'train_data': ('lstrl_jax.train', ['--config=demo', '--config.data_dir={tmp}/none', '--workdir={tmp}/w'], 1,
                   '{tmp}/none: directory not found'),
    'train_config_syntax': ('lstrl_jax.train', ['--config={tmp}/syntax.py', '--workdir={tmp}/w'], 2,
                            '--config: {tmp}/syntax.py:1: SyntaxError'),
    'train_config_import': ('lstrl_jax.train', ['--config={tmp}/imports.py', '--workdir={tmp}/w'], 2,
                            "--config: ModuleNotFoundError: No module named 'nosuchmodule'"),
    'stats_config_no_get_config': ('lstrl_jax.data.stats', ['--config={tmp}/empty.py'], 2,
                                   '--config: the config file defines no get_config()'),
    'eval_typo': ('lstrl_jax.eval', ['--ckpt={tmp}', '--config.data_dri=x'], 2,
                  'unknown config key \'data_dri\': did you mean "data_dir"'),
    'eval_nested_typo': ('lstrl_jax.eval', ['--ckpt={tmp}', '--config.model.dept=3'], 2, 'did you mean "depth"'),
    'eval_type': ('lstrl_jax.eval', ['--ckpt={tmp}', '--config.seq_len=x'], 2, 'flag --config.seq_len=x'),
    'eval_missing_flag': ('lstrl_jax.eval', ['--rerank'], 2, '--ckpt is required'),
    'eval_enum': ('lstrl_jax.eval', ['--ckpt={tmp}', '--clip_selection=all'], 2, 'flag --clip_selection=all'),
    'eval_queries': ('lstrl_jax.eval', ['--ckpt={tmp}', '--picture_queries=first'], 2,
                     '--picture_queries: expected integers'),
    'eval_no_checkpoint': ('lstrl_jax.eval', ['--ckpt={tmp}/none'], 1, '{tmp}/none'),
    'summary_typo': ('lstrl_jax.summary', ['--config=mars', '--config.model.bme_mod=x'], 2, 'did you mean'),
    'summary_value': ('lstrl_jax.summary', ['--config=mars', '--config.model.bme_mode=sideways'], 1,
                      "model.bme_mode: expected one of ('global_to_local', 'local_to_local'), got 'sideways'"),
    'summary_missing_flag': ('lstrl_jax.summary', [], 2, '--config is required'),
    'stats_typo': ('lstrl_jax.data.stats', ['--config=demo', '--config.data_dri=x'], 2, 'did you mean "data_dir"'),
    'stats_data': ('lstrl_jax.data.stats', ['--config=demo', '--config.data_dir={tmp}/none'], 1,
                   '{tmp}/none: directory not found'),
    'demo_type': ('lstrl_jax.data.demo', ['--out={tmp}/d', '--frames=many'], 2, 'flag --frames=many'),
    'demo_missing_flag': ('lstrl_jax.data.demo', [], 2, '--out is required'),
    'demo_other_flags': ('lstrl_jax.data.demo', ['--out={data}', '--seed=5'], 1, 'already exists'),
    'pack_usage': ('lstrl_jax.data.pack', ['--config=demo'], 2, 'config.packed_dir is empty'),
    'pack_typo': ('lstrl_jax.data.pack', ['--config=demo', '--config.packed_dri=x'], 2, 'did you mean'),
    'embed_missing_flag': ('lstrl_jax.embed', ['--ckpt={tmp}', '--out={tmp}/f.npz'], 2, '--tracklets is required'),
    'embed_enum': ('lstrl_jax.embed', ['--ckpt={tmp}', '--tracklets={tmp}', '--out={tmp}/f.npz',
                                       '--clip_selection=all'], 2, 'flag --clip_selection=all'),
    'embed_no_checkpoint': ('lstrl_jax.embed', ['--ckpt={tmp}/none', '--tracklets={data}', '--out={tmp}/f.npz'], 1,
                            '{tmp}/none'),
    'search_unknown_flag': ('lstrl_jax.search', ['--query={tmp}/q.npz', '--galery={tmp}/g.npz'], 2,
                            "Unknown command line flag 'galery'"),
    'search_top': ('lstrl_jax.search', ['--query={tmp}/q.npz', '--gallery={tmp}/g.npz', '--top=0'], 2,
                   'flag --top=0'),
    'search_no_file': ('lstrl_jax.search', ['--query={tmp}/q.npz', '--gallery={tmp}/g.npz'], 1,
                       '{tmp}/g.npz: cannot read features'),
    'export_format': ('lstrl_jax.export', ['--ckpt={tmp}', '--format=tflite', '--out={tmp}/m'], 2,
                      'flag --format=tflite'),
    'export_missing_flag': ('lstrl_jax.export', ['--ckpt={tmp}', '--format=onnx'], 2, '--out is required'),
}


@pytest.fixture(scope='module')
def mistakes(tmp_path_factory):
  """Every case of MISTAKES run at once from a folder outside the repository: {name: (status, out, err)}."""
  tmp = tmp_path_factory.mktemp('cwd')
  data = demo_data.generate(tmp / 'demo', num_persons=4, frames=2, height=32, width=16)
  (tmp / 'syntax.py').write_text('def get_config(:\n')
  (tmp / 'imports.py').write_text('import nosuchmodule\n')
  (tmp / 'empty.py').write_text('')
  fill = lambda text: text.format(tmp=tmp, data=data)
  runs = {name: start(tmp, module, *map(fill, args)) for name, (module, args, _, _) in MISTAKES.items()}
  out = {}
  for name, process in runs.items():
    stdout, stderr = process.communicate(timeout=300)
    out[name] = (process.returncode, stdout, stderr, fill(MISTAKES[name][3]))
  return out


@pytest.mark.parametrize('name', list(MISTAKES))
def test_each_mistake_is_one_line(mistakes, name):
  status, _, stderr, expected = mistakes[name]
  assert 'Traceback' not in stderr, stderr[-3000:]
  lines = stderr.strip().splitlines()
  assert len(lines) == 1, stderr[-3000:]
  assert lines[0].startswith('error: ') and expected in lines[0], lines[0]
  assert status == MISTAKES[name][2], (status, lines[0])


@pytest.mark.parametrize('module, expected', [
    ('lstrl_jax.train', ['--config: Config file', '--workdir:', 'config keys of demo:smoke', '  seq_len: 4',
                         '  model:\n    bme_bidirectional: True', '    depth: 18']),
    ('lstrl_jax.eval', ['--ckpt:', '--[no]rerank:', '--rerank_k1:', '(default: 20)', 'may override',
                        '  data_dir: \'data/mars\'', '  augment:\n    erasing_area: (0.02, 0.4)']),
    ('lstrl_jax.embed', ['Embeds unlabelled tracklets', '--tracklets:', '--clip_selection:']),
    ('lstrl_jax.search', ['Searches a gallery', '--gallery:', '--top:', '(default: 10)']),
    ('lstrl_jax.export', ['Exports the trained network', '--format:', '<stablehlo|onnx>']),
])
def test_help_exits_0_with_flags_and_config_tree(tmp_path, module, expected):
  begin = time.perf_counter()
  process = start(tmp_path, module, '--config=demo:smoke', '--help', '--config.nosuch=1')
  stdout, stderr = process.communicate(timeout=120)
  seconds = time.perf_counter() - begin
  assert process.returncode == 0 and stderr == '', stderr
  for text in expected:
    assert text in stdout, (text, stdout)
  assert seconds < 10, seconds  # about 0.4 s idle; the bound leaves room for a loaded CI machine


def test_resolve_config_by_name_or_path(tmp_path, monkeypatch):
  monkeypatch.chdir(tmp_path)
  assert cli.resolve_config('demo:smoke') == f'{cli.CONFIG_DIR / "demo.py"}:smoke'
  assert cli.resolve_config('mars.py') == str(cli.CONFIG_DIR / 'mars.py')
  (tmp_path / 'demo.py').write_text('')  # a file in the working directory wins over the shipped config
  assert cli.resolve_config('demo.py') == 'demo.py'
  with pytest.raises(cli.UsageError, match='no such config file.*shipped configs: default, demo, duke'):
    cli.resolve_config('configs/nosuch.py')
  assert {'default', 'demo', 'mars', 'ilidsvid', 'prid', 'lsvid', 'duke'} <= set(cli.shipped_configs())


def test_config_tree_nests_and_quotes():
  config = ml_collections.ConfigDict({'b': 1, 'a': 'x', 'model': {'depth': 18, 'stages': (2, 3)}})
  assert cli.config_tree(config) == ["  a: 'x'", '  b: 1', '  model:', '    depth: 18', '    stages: (2, 3)']


REPORTS = '''
import asyncio, sys
from lstrl_jax import cli

class Late:
  """Calls into an event loop from __del__, as tensorstore's threads do after orbax closed the loop."""

  def __init__(self, action):
    self.action = action

  def __del__(self):
    self.action()

def fail():
  raise ValueError('another unraisable error')

loop = asyncio.new_event_loop()
loop.close()
if sys.argv[1] == 'drop':
  cli.drop_closed_loop_reports()
Late(lambda: loop.call_soon_threadsafe(print))
Late(fail)
'''


@pytest.mark.parametrize('drop', [False, True])
def test_closed_event_loop_reports_are_dropped_and_nothing_else(drop):
  result = subprocess.run([sys.executable, '-c', REPORTS, 'drop' if drop else 'keep'], capture_output=True,
                          text=True, env=dict(os.environ, PYTHONPATH=str(REPO)), timeout=60)
  assert result.returncode == 0, result.stderr
  assert ('Event loop is closed' in result.stderr) != drop, result.stderr
  assert 'ValueError: another unraisable error' in result.stderr
