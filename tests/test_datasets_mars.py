"""MARS reader: the real info/ protocol files and tiny hand-made info/ folders for edge cases."""

import collections
import pathlib

import numpy as np
import pytest
import scipy.io

from lstrl_jax.data.datasets import load_dataset
from lstrl_jax.data.index import DatasetError


@pytest.fixture(scope='module')
def mars(shared_data):
  return load_dataset('mars', shared_data / 'mars')


def _no_cross_camera_match(ds, gallery):
  """Queries with no gallery tracklet of the same pid from another camera (plain loops, independent)."""
  cams_of_pid = collections.defaultdict(set)
  for g in gallery:
    cams_of_pid[ds.test[g].pid].add(ds.test[g].camid)
  return sum(not (cams_of_pid[ds.test[q].pid] - {ds.test[q].camid}) for q in ds.query)


def test_real_counts(mars):
  assert len(mars.train) == 8298 and mars.num_train_pids == 625
  assert len(mars.test) == 12180 and len(mars.query) == 1980
  assert {k: len(v) for k, v in mars.galleries.items()} == {'paper': 11310, 'torchreid': 9330, 'official': 12180}
  assert sum(len(t.frames) for t in mars.train) == 509914
  assert sum(len(t.frames) for t in mars.test) == 681089


def test_real_protocol_against_mat_files(mars, shared_data):
  info = shared_data / 'mars' / 'info'
  train_info = scipy.io.loadmat(info / 'tracks_train_info.mat')['track_train_info']
  test_info = scipy.io.loadmat(info / 'tracks_test_info.mat')['track_test_info']
  query = scipy.io.loadmat(info / 'query_IDX.mat')['query_IDX'].ravel() - 1
  label = {pid: i for i, pid in enumerate(sorted(set(train_info[:, 2].tolist())))}
  assert [t.pid for t in mars.train] == [label[p] for p in train_info[:, 2]]
  assert [t.camid for t in mars.train] == (train_info[:, 3] - 1).tolist()
  assert [t.pid for t in mars.test] == test_info[:, 2].tolist()
  assert [t.camid for t in mars.test] == (test_info[:, 3] - 1).tolist()
  assert mars.query.tolist() == query.tolist()
  junk = set(np.flatnonzero(test_info[:, 2] == -1).tolist())
  rest = [i for i in range(len(test_info)) if i not in set(query.tolist()) and i not in junk]
  assert mars.galleries['torchreid'].tolist() == rest
  assert mars.galleries['paper'].tolist() == query.tolist() + rest
  assert mars.galleries['official'].tolist() == list(range(12180))


def test_real_frame_paths(mars, shared_data):
  names = (shared_data / 'mars' / 'info' / 'train_name.txt').read_text().split()
  first = mars.train[0].frames
  assert first[0] == str(shared_data / 'mars' / 'bbox_train' / '0001' / names[0])
  assert len(first) == 16 and all(pathlib.Path(f).name == n for f, n in zip(first, names[:16]))
  junk = mars.test[0]
  assert junk.pid == -1 and '/bbox_test/00-1/00-1C1T0001F001.jpg' in junk.frames[0]
  for t in mars.test[::997]:
    numbers = [int(pathlib.Path(f).name[12:15]) for f in t.frames]
    assert numbers == sorted(numbers)
    assert {pathlib.Path(f).name[5] for f in t.frames} == {str(t.camid + 1)}


def test_real_queries_without_cross_camera_match(mars):
  assert _no_cross_camera_match(mars, mars.galleries['torchreid']) == 140
  # With the queries in the gallery every query has a match: AP3D's note "gallery set must contain query
  # set, otherwise 140 query imgs will not have ground truth".
  assert _no_cross_camera_match(mars, mars.galleries['paper']) == 0
  assert _no_cross_camera_match(mars, mars.galleries['official']) == 0


def _write_info(root, train_names, train_tracks, test_names, test_tracks, query):
  info = root / 'info'
  info.mkdir(parents=True, exist_ok=True)
  (info / 'train_name.txt').write_text('\n'.join(train_names) + '\n')
  (info / 'test_name.txt').write_text('\n'.join(test_names) + '\n')
  scipy.io.savemat(info / 'tracks_train_info.mat', {'track_train_info': np.array(train_tracks, dtype=np.int32)})
  scipy.io.savemat(info / 'tracks_test_info.mat', {'track_test_info': np.array(test_tracks, dtype=np.int32)})
  scipy.io.savemat(info / 'query_IDX.mat', {'query_IDX': np.array([query], dtype=np.uint16)})


@pytest.fixture
def tiny(tmp_path):
  """Train: pid 7 (cam 2, frames listed 3,1,2), pid 3 (cam 1). Test: junk, pid 5 cam 1/cam 3, pid 9."""
  train_names = ['0007C2T0001F003.jpg', '0007C2T0001F001.jpg', '0007C2T0001F002.jpg', '0003C1T0002F001.jpg']
  test_names = ['00-1C1T0001F001.jpg', '0005C1T0001F001.jpg', '0005C1T0001F002.jpg', '0005C3T0002F001.jpg',
                '0009C6T0003F001.jpg']
  _write_info(tmp_path, train_names, [[1, 3, 7, 2], [4, 4, 3, 1]],
              test_names, [[1, 1, -1, 1], [2, 3, 5, 1], [4, 4, 5, 3], [5, 5, 9, 6]], [2])
  return tmp_path


def test_tiny_relabel_order_and_galleries(tiny):
  ds = load_dataset('mars', tiny)
  assert [(t.pid, t.camid, len(t.frames)) for t in ds.train] == [(1, 1, 3), (0, 0, 1)]
  assert [pathlib.Path(f).name[12:15] for f in ds.train[0].frames] == ['001', '002', '003']
  assert ds.train[0].frames[0] == str(tiny / 'bbox_train' / '0007' / '0007C2T0001F001.jpg')
  assert ds.test[0].frames[0] == str(tiny / 'bbox_test' / '00-1' / '00-1C1T0001F001.jpg')
  assert [(t.pid, t.camid) for t in ds.test] == [(-1, 0), (5, 0), (5, 2), (9, 5)]
  assert ds.query.tolist() == [1]
  assert ds.galleries['paper'].tolist() == [1, 2, 3]
  assert ds.galleries['torchreid'].tolist() == [2, 3]
  assert ds.galleries['official'].tolist() == [0, 1, 2, 3]


def test_missing_root_info_and_files(tiny, tmp_path):
  with pytest.raises(DatasetError, match='nowhere: directory not found'):
    load_dataset('mars', tmp_path / 'nowhere')
  with pytest.raises(DatasetError, match=r'info: directory not found; expected the MARS info/'):
    load_dataset('mars', tiny / 'info')
  (tiny / 'info' / 'query_IDX.mat').unlink()
  with pytest.raises(DatasetError, match='query_IDX.mat: file not found'):
    load_dataset('mars', tiny)


def test_corrupt_mat_and_bad_tables(tiny):
  info = tiny / 'info'
  (info / 'tracks_test_info.mat').write_bytes(b'\x00garbage')
  with pytest.raises(DatasetError, match='tracks_test_info.mat: cannot read .mat file'):
    load_dataset('mars', tiny)
  scipy.io.savemat(info / 'tracks_test_info.mat', {'track_test_info': np.array([[2, 1, 5, 1]])})
  with pytest.raises(DatasetError, match='row 1: tracklet has no frames'):
    load_dataset('mars', tiny)
  scipy.io.savemat(info / 'tracks_test_info.mat', {'track_test_info': np.array([[1, 9, 5, 1]])})
  with pytest.raises(DatasetError, match='row 1 points outside the 5 frame names'):
    load_dataset('mars', tiny)
  scipy.io.savemat(info / 'tracks_test_info.mat', {'track_test_info': np.array([[1, 2, 5, 1]])})
  with pytest.raises(DatasetError, match=r"row 1 \(pid 5, cam 1\) includes '00-1C1T0001F001.jpg'"):
    load_dataset('mars', tiny)
  scipy.io.savemat(info / 'tracks_test_info.mat', {'track_test_info': np.array([[1, 1, -1, 1], [2, 3, 5, 1]])})
  scipy.io.savemat(info / 'query_IDX.mat', {'query_IDX': np.array([[3]])})
  with pytest.raises(DatasetError, match=r'query_IDX must hold distinct 1-based rows in 1\.\.2'):
    load_dataset('mars', tiny)


def test_bad_name_and_split(tiny):
  with pytest.raises(DatasetError, match='split 1 out of range'):
    load_dataset('mars', tiny, split=1)
  (tiny / 'info' / 'train_name.txt').write_text('0007C2T0001F003.jpg\n0007C2T0001X001.jpg\n')
  with pytest.raises(DatasetError, match=r"train_name.txt:2: '0007C2T0001X001.jpg' is not a MARS frame name"):
    load_dataset('mars', tiny)


def test_real_info_with_a_duplicate_frame_name_is_refused(shared_data, tmp_path):
  # The real info/ copied; line 2 of test_name.txt (second frame of the first test tracklet, same pid and
  # camera, so every other check passes) replaced by line 1.
  info = tmp_path / 'info'
  info.mkdir()
  for f in (shared_data / 'mars' / 'info').iterdir():
    (info / f.name).symlink_to(f)
  names = (shared_data / 'mars' / 'info' / 'test_name.txt').read_text().split('\n')
  assert names[0] != names[1] and names[0][:6] == names[1][:6]
  names[1] = names[0]
  (info / 'test_name.txt').unlink()
  (info / 'test_name.txt').write_text('\n'.join(names))
  with pytest.raises(DatasetError) as error:
    load_dataset('mars', tmp_path)
  assert str(error.value) == (f"{info / 'test_name.txt'}:2: {names[0]!r} repeats line 1; "
                              'expected each frame name once')


def test_tiny_duplicate_in_another_tracklet_is_refused(tiny):
  # Line 4 repeats line 2 across two tracklets of pid 7; the first repeat (line 4) is named.
  (tiny / 'info' / 'train_name.txt').write_text(
      '0007C2T0001F003.jpg\n0007C2T0001F001.jpg\n0007C2T0001F002.jpg\n0007C2T0001F001.jpg\n0007C2T0001F003.jpg\n')
  with pytest.raises(DatasetError, match=r"train_name.txt:4: '0007C2T0001F001.jpg' repeats line 2; expected"):
    load_dataset('mars', tiny)
