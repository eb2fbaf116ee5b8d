"""Own data ('folders'): the real pku2cam images laid out both ways give the iLIDS-VID reader's index."""

import csv
import os
import pathlib
import subprocess
import sys

import numpy as np
import pytest
from PIL import Image

from lstrl_jax.data.datasets import folders, load_dataset
from lstrl_jax.data.index import DatasetError

REPO = pathlib.Path(__file__).resolve().parents[1]


def _pku2cam_people(shared_data):
  """(reference index, train persons, test persons) of pku2cam split 0 read by the iLIDS-VID reader."""
  reference = load_dataset('ilidsvid', shared_data / 'pku2cam', split=0)
  def person(t):
    return pathlib.Path(t.frames[0]).parent.name
  return reference, sorted({person(t) for t in reference.train}), sorted({person(t) for t in reference.test})


def _rows(shared_data, train, test):
  """(subset, pid folder name, camera, source tracklet folder) for the pku2cam split-0 layout."""
  sequences = shared_data / 'pku2cam' / 'i-LIDS-VID' / 'sequences'
  rows = [('train', p[len('person'):], cam, sequences / cam / p) for p in train for cam in ('cam1', 'cam2')]
  rows += [('query', p[len('person'):], 'cam1', sequences / 'cam1' / p) for p in test]
  rows += [('gallery', p[len('person'):], 'cam2', sequences / 'cam2' / p) for p in test]
  return rows


def _assert_same(got, reference, resolve):
  assert [resolve(f) for t in got.train for f in t.frames] == [f for t in reference.train for f in t.frames]
  assert [(t.pid, t.camid, len(t.frames)) for t in got.train] == [(t.pid, t.camid, len(t.frames))
                                                                     for t in reference.train]
  assert [resolve(f) for t in got.test for f in t.frames] == [f for t in reference.test for f in t.frames]
  assert [(t.pid, t.camid) for t in got.test] == [(t.pid, t.camid) for t in reference.test]
  np.testing.assert_array_equal(got.query, reference.query)
  assert list(got.galleries) == ['cross_camera']
  np.testing.assert_array_equal(got.galleries['cross_camera'], reference.galleries['cross_camera'])
  assert got.num_train_pids == reference.num_train_pids == 37


def test_pku2cam_layout_and_manifest_equal_ilidsvid_split0(shared_data, tmp_path):
  reference, train, test = _pku2cam_people(shared_data)
  rows = _rows(shared_data, train, test)
  root = tmp_path / 'own'
  for subset, pid, cam, source in rows:  # <root>/<subset>/<pid>/<camera>/<tracklet> -> the real folder
    (root / subset / pid / cam).mkdir(parents=True, exist_ok=True)
    (root / subset / pid / cam / 'tracklet1').symlink_to(source, target_is_directory=True)
  _assert_same(load_dataset('folders', root), reference, os.path.realpath)
  manifest = tmp_path / 'own.csv'
  with open(manifest, 'w', newline='') as f:
    writer = csv.writer(f)
    writer.writerow(folders.MANIFEST_COLUMNS)
    for subset, pid, cam, source in reversed(rows):  # row order does not matter
      frames = f'{source}/*.png' if subset == 'query' else str(source)  # a glob or a folder
      writer.writerow([frames, pid, cam, subset])
  _assert_same(load_dataset('folders', manifest), reference, str)


def test_stats_command_on_layout(shared_data, tmp_path):
  _, train, test = _pku2cam_people(shared_data)
  root = tmp_path / 'own'
  for subset, pid, cam, source in _rows(shared_data, train, test):
    (root / subset / pid / cam).mkdir(parents=True, exist_ok=True)
    (root / subset / pid / cam / 'a').symlink_to(source, target_is_directory=True)
  out = subprocess.run([sys.executable, '-m', 'lstrl_jax.data.stats', '--config', str(REPO / 'configs/folders.py'),
                        f'--config.data_dir={root}'], capture_output=True, text=True, cwd=REPO, timeout=120)
  assert out.returncode == 0, out.stderr
  lines = out.stdout.splitlines()
  assert lines[2].split() == ['train', '37', '74', '592', '2', '0', '0']  # no distractors, no junk
  assert lines[-1].split() == ['cross_camera', '37', '37', '0']


def _frame(path: pathlib.Path) -> None:
  path.parent.mkdir(parents=True, exist_ok=True)
  Image.new('RGB', (2, 4)).save(path)


def test_string_names_natural_order_junk_and_distractors(tmp_path):
  for rel in ('train/alice/door/t1/f10.png', 'train/alice/door/t1/f9.png', 'train/bob/lobby/x/1.jpg',
              'query/7/door/a/1.png', 'query/carol/lobby/a/1.png',
              'gallery/7/lobby/b/2.png', 'gallery/7/door/c/1.png', 'gallery/carol/cam10/a/1.png',
              'gallery/-1/door/j/1.png', 'gallery/0/cam2/d/1.png'):
    _frame(tmp_path / rel)
  data = folders.load(tmp_path)
  assert [pathlib.Path(f).name for f in data.train[0].frames] == ['f9.png', 'f10.png']  # natural, not 'f10' < 'f9'
  assert [(t.pid, t.camid) for t in data.train] == [(0, 2), (1, 3)]
  # cameras in natural order: cam2, cam10, door, lobby -> 0..3; 'carol' numbered after the largest integer pid
  assert [(t.pid, t.camid) for t in data.test] == [(7, 2), (8, 3), (-1, 2), (0, 0), (7, 2), (7, 3), (8, 1)]
  np.testing.assert_array_equal(data.query, [0, 1])
  np.testing.assert_array_equal(data.galleries['cross_camera'], [3, 4, 5, 6])  # junk -1 left out


@pytest.mark.parametrize('rel, message', [
    ('query/1/cam/t/notes.txt', 'unexpected file in a tracklet'),
    ('query/1/cam/t/sub/1.png', 'unexpected folder in a tracklet'),
    ('query/1/stray.png', 'unexpected file; expected only <camera> folders'),
    ('query/-1/cam/t/1.png', "query pid '-1'"),
    ('query/01/cam/t/1.png', "pids '01' and '1' are the same number"),
])
def test_layout_errors_name_the_path(tmp_path, rel, message):
  for good in ('train/1/cam/t/1.png', 'query/1/cam/t/1.png', 'gallery/1/cam2/t/1.png'):
    _frame(tmp_path / good)
  target = tmp_path / rel
  target.parent.mkdir(parents=True, exist_ok=True)
  if target.suffix == '.png':
    _frame(target)
  else:
    target.write_text('x')
  with pytest.raises(DatasetError, match=message) as error:
    folders.load(tmp_path)
  assert '\n' not in str(error.value)


def test_missing_subset_and_empty_tracklet(tmp_path):
  _frame(tmp_path / 'train/1/cam/t/1.png')
  with pytest.raises(DatasetError, match=r'query: directory not found'):
    folders.load(tmp_path)
  (tmp_path / 'query/1/cam/t').mkdir(parents=True)
  (tmp_path / 'gallery').mkdir()
  with pytest.raises(DatasetError, match=r'query/1/cam/t: tracklet has no frames'):
    folders.load(tmp_path)


@pytest.mark.parametrize('text, message', [
    ('frames,pid,cam,subset\n', r':1: header'),
    ('frames,pid,camid,subset\nt,1,cam\n', r':2: .*expected 4 non-empty fields'),
    ('frames,pid,camid,subset\nt,1,cam,test\n', r":2: subset 'test'"),
    ('frames,pid,camid,subset\nnowhere,1,cam,train\n', r':2: .*nowhere: directory not found'),
    ('frames,pid,camid,subset\nt/*.jpg,1,cam,train\n', r":2: pattern .*matches no"),
])
def test_manifest_errors_name_file_and_line(tmp_path, text, message):
  _frame(tmp_path / 't' / '1.png')
  manifest = tmp_path / 'm.csv'
  manifest.write_text(text)
  with pytest.raises(DatasetError, match=message):
    folders.load(manifest)
