"""The stats command: hand-worked counting, and the command line on the real MARS info/ and pku2cam."""

import pathlib
import re
import subprocess
import sys

import numpy as np
import scipy.io

from configs import default
from lstrl_jax.data import stats
from lstrl_jax.data.index import Tracklet, VideoReIDDataset

REPO = pathlib.Path(__file__).resolve().parents[1]


def _run(*flags):
  return subprocess.run(
      [sys.executable, '-m', 'lstrl_jax.data.stats', '--config', 'configs/default.py', *flags],
      cwd=REPO, capture_output=True, text=True, timeout=120,
  )


def _rows(stdout):
  """Table rows -> {name: [ints]}; cells are separated by two or more spaces."""
  rows = {}
  for line in stdout.splitlines()[1:]:
    name, *cells = re.split(r'\s{2,}', line.strip())
    if cells and all(c.replace(',', '').isdigit() for c in cells):
      rows[name] = [int(c.replace(',', '')) for c in cells]
  return rows


def _tiny():
  def t(pid, cam, n=1):
    return Tracklet(tuple(f'f{i}.png' for i in range(n)), pid, cam)

  test = (t(1, 0), t(2, 0), t(1, 1), t(2, 0), t(3, 1), t(-1, 1, 4), t(0, 0, 2), t(0, 1))
  return VideoReIDDataset('tiny', (t(0, 0, 2), t(0, 1, 3)), test, np.array([0, 1]),
                          {'rest': np.array([2, 3, 4, 5]), 'all': np.arange(8), 'none': np.array([], np.int64)})


def test_queries_without_match_hand_worked():
  ds = _tiny()
  # Query pid 1 (cam 0) matches gallery pid 1 cam 1; query pid 2 (cam 0) only meets pid 2 in cam 0.
  assert stats.queries_without_match(ds, ds.galleries['rest']) == 1
  assert stats.queries_without_match(ds, ds.galleries['all']) == 1
  assert stats.queries_without_match(ds, ds.galleries['none']) == 2


def test_subset_row_hand_worked():
  ds = _tiny()
  # pids 1, 2, 3 are identities; pid -1 (4 frames) is junk, pid 0 (2 tracklets, 3 frames) distractors.
  assert stats.subset_row(ds.test) == {'identities': 3, 'tracklets': 8, 'frames': 12, 'cameras': 2,
                                       'distractors': 2, 'junk': 1}
  # Training pids are relabelled 0..N-1: pid 0 is an identity there.
  assert stats.subset_row(ds.train, relabelled=True) == {'identities': 1, 'tracklets': 2, 'frames': 5,
                                                         'cameras': 2, 'distractors': 0, 'junk': 0}


def _config(dataset, data_dir, split=0):
  config = default.get_config()
  config.dataset, config.data_dir, config.split = dataset, str(data_dir), split
  return config


def test_run_on_pku2cam(shared_data, capsys):
  assert stats.run(_config('ilidsvid', shared_data / 'pku2cam', split=4)) == 0
  stdout = capsys.readouterr().out
  assert stdout.splitlines()[0].startswith('ilidsvid (split 4)')
  rows = _rows(stdout)
  # 37 persons x 2 cameras x 8 frames for training; one 8-frame tracklet per test person and camera.
  assert rows['train'] == [37, 74, 592, 2, 0, 0]
  assert rows['query'] == [37, 37, 296, 1, 0, 0]
  assert rows['gallery (cross_camera)'] == [37, 37, 296, 1, 0, 0]
  assert rows['cross_camera'] == [37, 37, 0]


def test_run_bad_input_one_line_exit_1(tmp_path, shared_data, capsys):
  assert stats.run(_config('ilidsvid', tmp_path / 'missing')) == 1
  captured = capsys.readouterr()
  assert captured.out == '' and captured.err.splitlines() == [
      f'error: {tmp_path / "missing"}: directory not found; expected an iLIDS-VID root holding i-LIDS-VID/sequences/']
  assert stats.run(_config('ilidsvid', shared_data / 'pku2cam', split=10)) == 1
  assert len(capsys.readouterr().err.splitlines()) == 1


def test_command_on_mars(shared_data):
  result = _run('--config.dataset=mars', f'--config.data_dir={shared_data / "mars"}')
  assert result.returncode == 0, result.stderr
  rows = _rows(result.stdout)
  info = shared_data / 'mars' / 'info'
  tracks = scipy.io.loadmat(info / 'tracks_test_info.mat')['track_test_info'].astype(np.int64)
  query = tracks[scipy.io.loadmat(info / 'query_IDX.mat')['query_IDX'].ravel() - 1]
  junk, distractor = tracks[:, 2] == -1, tracks[:, 2] == 0
  frames = tracks[:, 1] - tracks[:, 0] + 1
  gallery_ids = len(set(tracks[:, 2]) - {0, -1})
  assert rows['train'] == [625, 8298, 509914, 6, 0, 0]
  assert rows['query'] == [len(set(query[:, 2])), 1980, int((query[:, 1] - query[:, 0] + 1).sum()), 6, 0, 0]
  assert rows['gallery (official)'] == [gallery_ids, 12180, 681089, 6, int(distractor.sum()), int(junk.sum())]
  assert rows['gallery (paper)'] == [gallery_ids, 11310, 681089 - int(frames[junk].sum()), 6,
                                     int(distractor.sum()), 0]
  assert rows['gallery (torchreid)'][1:] == [9330, 681089 - rows['query'][2] - int(frames[junk].sum()), 6,
                                             int(distractor.sum()), 0]
  assert rows['paper'] == [1980, 11310, 0]
  assert rows['torchreid'] == [1980, 9330, 140]
  assert rows['official'] == [1980, 12180, 0]


def test_command_bad_input_one_line_exit_1(tmp_path):
  result = _run('--config.dataset=viper', f'--config.data_dir={tmp_path}')
  assert result.returncode == 1 and result.stdout == ''
  assert result.stderr.splitlines() == ["error: dataset 'viper': unknown; expected one of mars, ilidsvid, prid, "
                                        'lsvid, duke, demo, folders']
