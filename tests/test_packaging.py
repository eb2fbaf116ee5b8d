"""The package (pyproject.toml): ranges that admit the pinned set, Python 3.11-3.12, extras, and a wheel that
ships every command and the configs (DESIGN.md section 6)."""

import os
import pathlib
import re
import shutil
import subprocess
import sys
import tomllib
import zipfile

from packaging.requirements import Requirement
import pytest

REPO = pathlib.Path(__file__).resolve().parents[1]
PROJECT = tomllib.loads((REPO / 'pyproject.toml').read_text())['project']


def _pins(name):
  """{package: version} of a requirements file's `==` pins (following `-r`)."""
  pins = {}
  for line in (REPO / name).read_text().splitlines():
    line = line.split('#')[0].strip()
    if line.startswith('-r '):
      pins.update(_pins(line[3:]))
    elif '==' in line:
      package, version = line.split('==')
      pins[re.sub(r'\[.*\]', '', package).lower().replace('_', '-')] = version
  return pins


def test_dependencies_are_ranges_admitting_the_pins_and_newer_jax():
  pins = _pins('requirements.txt')
  for text in PROJECT['dependencies']:
    requirement = Requirement(text)
    assert not any(s.operator == '==' for s in requirement.specifier), text  # ranges, not pins
    name = requirement.name.lower().replace('_', '-')
    assert name in pins and requirement.specifier.contains(pins[name]), (text, pins.get(name))
  jax = next(Requirement(t) for t in PROJECT['dependencies'] if t.startswith('jax'))
  assert jax.specifier.contains('0.11.2') and jax.specifier.contains('0.12.0.1')  # measured in issue 10
  flax = next(Requirement(t) for t in PROJECT['dependencies'] if t.startswith('flax'))
  assert flax.specifier.contains('0.12.12')
  assert not any(Requirement(t).name == 'tensorflow' for t in PROJECT['dependencies'])


def test_python_versions_and_extras():
  assert PROJECT['requires-python'] == '>=3.11,<3.13'
  assert {'Programming Language :: Python :: 3.11', 'Programming Language :: Python :: 3.12'} <= set(
      PROJECT['classifiers'])
  extras = PROJECT['optional-dependencies']
  assert set(extras) >= {'cuda12', 'test', 'export'}
  assert {Requirement(t).name for t in extras['export']} == {'onnxruntime', 'onnx'}  # jax2onnx: --no-deps file
  assert Requirement(extras['cuda12'][0]).extras == {'cuda12'}


@pytest.fixture(scope='module')
def wheel(tmp_path_factory):
  """The wheel `pip wheel .` builds from a copy of the tracked files (no dependencies, no network; the build
  writes build/ and *.egg-info into the tree it builds, so not into the repository)."""
  out = tmp_path_factory.mktemp('wheel')
  tracked = subprocess.run(['git', 'ls-files'], cwd=REPO, check=True, capture_output=True, text=True).stdout
  tree = out / 'tree'
  for name in tracked.splitlines():
    source, target = REPO / name, tree / name
    target.parent.mkdir(parents=True, exist_ok=True)
    if source.is_symlink():
      target.symlink_to(os.readlink(source))
    elif source.is_file():
      shutil.copy2(source, target)
  subprocess.run([sys.executable, '-m', 'pip', 'wheel', '--no-deps', '--no-build-isolation', '-q', '-w', str(out),
                  str(tree)], check=True, capture_output=True, timeout=300)
  return zipfile.ZipFile(next(out.glob('lstrl_jax-*.whl')))


def test_wheel_ships_commands_and_configs(wheel):
  names = set(wheel.namelist())
  for module in ('cli', 'eval', 'summary', 'train/__main__', 'data/stats', 'data/demo', 'data/pack',
                 'configs/__init__', 'configs/default', 'configs/demo', 'configs/mars'):
    assert f'lstrl_jax/{module}.py' in names, module
  assert not any(n.startswith(('tests/', 'configs/', 'benchmarks/')) for n in names)
  demo = wheel.read('lstrl_jax/configs/demo.py').decode()  # a file, not a link
  assert 'from lstrl_jax.configs import default' in demo and "config.dataset = 'demo'" in demo
  entry_points = next(n for n in names if n.endswith('entry_points.txt'))
  scripts = wheel.read(entry_points).decode()
  assert 'lstrl-train = lstrl_jax.train.__main__:run' in scripts and 'lstrl-eval = lstrl_jax.eval:run' in scripts
