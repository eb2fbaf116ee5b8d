"""PRID-2011, LS-VID and DukeMTMC-VideoReID readers on tiny hand-made layouts with hand-worked expectations."""

import io
import json
import pathlib

import h5py
import numpy as np
import pytest
from PIL import Image

from lstrl_jax.data.datasets import load_dataset
from lstrl_jax.data.index import DatasetError


def _image_bytes(fmt):
  buffer = io.BytesIO()
  Image.new('RGB', (1, 1), (200, 10, 10)).save(buffer, format=fmt)
  return buffer.getvalue()


PNG, JPEG = _image_bytes('PNG'), _image_bytes('JPEG')


def _touch(folder, names, data):
  folder.mkdir(parents=True, exist_ok=True)
  for name in names:
    (folder / name).write_bytes(data)


def _names(ds, tracklet):
  return [pathlib.Path(f).name for f in tracklet.frames]


# PRID-2011 ------------------------------------------------------------------------------------------------


@pytest.fixture
def prid(tmp_path):
  """person_0001..0003: 27+ frames in both cameras; person_0004: 26 in cam_b; 0005 / 0201: one camera only."""
  cams = tmp_path / 'prid_2011' / 'multi_shot'
  for person, (a, b) in {'person_0001': (27, 30), 'person_0002': (40, 27), 'person_0003': (28, 29),
                         'person_0004': (50, 26)}.items():
    _touch(cams / 'cam_a' / person, [f'{i:04d}.png' for i in range(1, a + 1)], PNG)
    _touch(cams / 'cam_b' / person, [f'{i:04d}.png' for i in range(1, b + 1)], PNG)
  _touch(cams / 'cam_a' / 'person_0005', ['0001.png'], PNG)
  _touch(cams / 'cam_b' / 'person_0201', ['0001.png'], PNG)
  return tmp_path


def test_prid_random_splits(prid):
  splits = [load_dataset('prid', prid, split=s) for s in range(10)]
  for ds in splits:
    test_pids = [ds.test[i].pid for i in ds.query]
    train_folders = sorted({pathlib.Path(t.frames[0]).parent.name for t in ds.train})
    # 3 persons qualify (person_0004 has 26 < 27 frames in cam_b): 1 test, 2 train, disjoint, covering.
    assert len(test_pids) == 1 and len(train_folders) == 2
    assert sorted(train_folders + [f'person_{test_pids[0]:04d}']) == ['person_0001', 'person_0002', 'person_0003']
    assert [ds.test[i].pid for i in ds.galleries['cross_camera']] == test_pids
    assert [ds.test[i].camid for i in ds.query] == [0]
    assert [ds.test[i].camid for i in ds.galleries['cross_camera']] == [1]
    assert [(t.pid, t.camid) for t in ds.train] == [(0, 0), (0, 1), (1, 0), (1, 1)]
  assert len({ds.test[0].pid for ds in splits}) > 1  # the splits differ
  again = load_dataset('prid', prid, split=3)
  assert [t.frames for t in again.test] == [t.frames for t in splits[3].test]  # fixed seed


def test_prid_frames_sorted_numerically(prid):
  ds = load_dataset('prid', prid)
  longest = max(ds.train + ds.test, key=lambda t: len(t.frames))
  numbers = [int(n[:4]) for n in _names(ds, longest)]
  assert numbers == list(range(1, len(numbers) + 1))


def test_prid_splits_json(prid):
  splits = [{'train': ['person_0004', 'person_0001'], 'test': ['person_0003', 'person_0002']},
            {'train': ['person_0002'], 'test': ['person_0004']}]
  (prid / 'splits_prid2011.json').write_text(json.dumps(splits))
  ds = load_dataset('prid', prid, split=0)
  assert [ds.test[i].pid for i in ds.query] == [2, 3]
  assert [(pathlib.Path(t.frames[0]).parts[-3:-1], t.pid) for t in ds.train] == [
      (('cam_a', 'person_0001'), 0), (('cam_b', 'person_0001'), 0),
      (('cam_a', 'person_0004'), 1), (('cam_b', 'person_0004'), 1)]
  ds1 = load_dataset('prid', prid, split=1)
  assert [ds1.test[i].pid for i in ds1.query] == [4] and [t.pid for t in ds1.train] == [0, 0]
  with pytest.raises(DatasetError, match=r'splits_prid2011.json: split 2 out of range; expected 0\.\.1'):
    load_dataset('prid', prid, split=2)
  (prid / 'splits_prid2011.json').write_text(json.dumps([{'train': ['person_0005'], 'test': ['person_0001']}]))
  with pytest.raises(DatasetError, match="person 'person_0005' is not one of person_0001..0200 in both cam_a"):
    load_dataset('prid', prid)
  (prid / 'splits_prid2011.json').write_text('{"train": ')
  with pytest.raises(DatasetError, match='splits_prid2011.json: cannot read JSON'):
    load_dataset('prid', prid)


def test_prid_bad_input(prid, tmp_path):
  with pytest.raises(DatasetError, match='split 10 out of range; expected 0..9'):
    load_dataset('prid', prid, split=10)
  for f in (prid / 'prid_2011' / 'multi_shot' / 'cam_b' / 'person_0002').iterdir():
    f.unlink()
  with pytest.raises(DatasetError, match='cam_b/person_0002: tracklet has no frames'):
    load_dataset('prid', prid)
  with pytest.raises(DatasetError, match='prid_2011/multi_shot: directory not found'):
    load_dataset('prid', tmp_path / 'prid_2011')


# LS-VID ---------------------------------------------------------------------------------------------------


@pytest.fixture
def lsvid(tmp_path):
  lists = tmp_path / 'list_sequence'
  lists.mkdir()
  (lists / 'list_seq_train.txt').write_text(
      'tracklet_train/0003/0003_0001_02 3\ntracklet_train/0001/0001_0002_05 1\ntracklet_train/0001/0001_0003_01 1\n')
  (lists / 'list_seq_test.txt').write_text(
      'tracklet_test/0007/0007_0001_01 7\ntracklet_test/0007/0007_0002_03 7\ntracklet_test/0008/0008_0001_02 8\n')
  _touch(tmp_path / 'tracklet_train' / '0003', ['0003_0001_02_0010.jpg', '0003_0001_02_0002.jpg',
                                                '0003_0001_02_0001.jpg'], JPEG)
  _touch(tmp_path / 'tracklet_train' / '0001', ['0001_0002_05_0001.jpg', '0001_0003_01_0001.jpg',
                                                '0001_0003_01_0002.jpg'], JPEG)
  _touch(tmp_path / 'tracklet_test' / '0007', ['0007_0001_01_0001.jpg', '0007_0002_03_0001.jpg'], JPEG)
  _touch(tmp_path / 'tracklet_test' / '0008', ['0008_0001_02_0005.jpg'], JPEG)
  (tmp_path / 'test' / 'data').mkdir(parents=True)
  with h5py.File(tmp_path / 'test' / 'data' / 'info_test.mat', 'w') as f:
    f['query'] = np.array([[1.0, 3.0]])
  return tmp_path


def test_lsvid_tiny(lsvid):
  ds = load_dataset('lsvid', lsvid)
  # Original train pids 3, 1, 1 -> relabelled 1, 0, 0; cameras 2, 5, 1 -> camids 1, 4, 0.
  assert [(t.pid, t.camid, len(t.frames)) for t in ds.train] == [(1, 1, 3), (0, 4, 1), (0, 0, 2)]
  assert _names(ds, ds.train[0]) == ['0003_0001_02_0001.jpg', '0003_0001_02_0002.jpg', '0003_0001_02_0010.jpg']
  assert ds.train[0].frames[0] == str(lsvid / 'tracklet_train' / '0003' / '0003_0001_02_0001.jpg')
  assert [(t.pid, t.camid) for t in ds.test] == [(7, 0), (7, 2), (8, 1)]
  assert ds.query.tolist() == [0, 2]
  assert {k: v.tolist() for k, v in ds.galleries.items()} == {'paper': [1], 'official': [0, 1, 2]}


def test_lsvid_forks_info_placement(lsvid):
  # AP3D/TCLNet forks: info/list_sequence/list_seq_*.txt and info/data/info_test.mat; prefixes stay root-relative.
  (lsvid / 'info').mkdir()
  (lsvid / 'list_sequence').rename(lsvid / 'info' / 'list_sequence')
  (lsvid / 'test' / 'data').rename(lsvid / 'info' / 'data')
  ds = load_dataset('lsvid', lsvid)
  assert [(t.pid, t.camid) for t in ds.test] == [(7, 0), (7, 2), (8, 1)] and ds.query.tolist() == [0, 2]
  assert ds.train[0].frames[0] == str(lsvid / 'tracklet_train' / '0003' / '0003_0001_02_0001.jpg')
  (lsvid / 'info' / 'list_sequence').rename(lsvid / 'elsewhere')
  with pytest.raises(DatasetError, match=r'list_sequence: directory not found; expected the LS-VID sequence lists'):
    load_dataset('lsvid', lsvid)


def test_lsvid_bad_input(lsvid):
  info = lsvid / 'test' / 'data' / 'info_test.mat'
  with h5py.File(info, 'w') as f:
    f['query'] = np.array([[1.0, 4.0]])
  with pytest.raises(DatasetError, match=r'info_test.mat: query must hold distinct 1-based rows in 1\.\.3'):
    load_dataset('lsvid', lsvid)
  with h5py.File(info, 'w') as f:
    f['gallery'] = np.array([[1.0]])
  with pytest.raises(DatasetError, match="info_test.mat: key 'query' not found"):
    load_dataset('lsvid', lsvid)
  info.write_bytes(b'MATLAB 5.0 MAT-file, not HDF5')
  with pytest.raises(DatasetError, match=r'info_test.mat: cannot read as HDF5'):
    load_dataset('lsvid', lsvid)
  test_list = lsvid / 'list_sequence' / 'list_seq_test.txt'
  test_list.write_text('tracklet_test/0007/0007_0009_01 7\n')
  with pytest.raises(DatasetError, match=r'0007_0009_01_\*: tracklet has no frames'):
    load_dataset('lsvid', lsvid)
  test_list.write_text('tracklet_test/0007/0007_0001_01\n')
  with pytest.raises(DatasetError, match=r"list_seq_test.txt:1: 'tracklet_test/0007/0007_0001_01'; expected"):
    load_dataset('lsvid', lsvid)
  test_list.unlink()
  with pytest.raises(DatasetError, match='list_seq_test.txt: file not found'):
    load_dataset('lsvid', lsvid)
  with pytest.raises(DatasetError, match='split 1 out of range; expected 0..0'):
    load_dataset('lsvid', lsvid, split=1)


# DukeMTMC-VideoReID ---------------------------------------------------------------------------------------


@pytest.fixture
def duke(tmp_path):
  _touch(tmp_path / 'train' / '0005' / '0001', ['0005_C2_F0010_X1.jpg', '0005_C2_F0002_X1.jpg',
                                                '0005_C2_F0001_X1.jpg'], JPEG)
  _touch(tmp_path / 'train' / '0002' / '0003', ['0002C1F0003X5.jpg', '0002C1F0004X5.jpg'], JPEG)  # old names
  _touch(tmp_path / 'train' / '0002' / '0004', ['0002_C8_F0001_X9.jpg'], JPEG)
  _touch(tmp_path / 'query' / '0007' / '0001', ['0007_C1_F0001_X2.jpg'], JPEG)
  _touch(tmp_path / 'gallery' / '0007' / '0002', ['0007_C3_F0001_X2.jpg'], JPEG)
  _touch(tmp_path / 'gallery' / '0100' / '0005', ['0100_C4_F0001_X2.jpg'], JPEG)
  return tmp_path


def test_duke_tiny(duke):
  ds = load_dataset('duke', duke)
  # Sorted pid folders 0002, 0005 -> 0, 1; cameras C1, C8, C2 -> camids 0, 7, 1.
  assert [(t.pid, t.camid, len(t.frames)) for t in ds.train] == [(0, 0, 2), (0, 7, 1), (1, 1, 3)]
  assert _names(ds, ds.train[2]) == ['0005_C2_F0001_X1.jpg', '0005_C2_F0002_X1.jpg', '0005_C2_F0010_X1.jpg']
  assert [(t.pid, t.camid) for t in ds.test] == [(7, 0), (7, 2), (100, 3)]
  assert ds.query.tolist() == [0] and ds.galleries['cross_camera'].tolist() == [1, 2]


def test_duke_bad_input(duke):
  _touch(duke / 'gallery' / '0100' / '0005', ['0100_C5_F0002_X2.jpg'], JPEG)
  with pytest.raises(DatasetError, match=r'gallery/0100/0005: frames from cameras \[4, 5\]'):
    load_dataset('duke', duke)
  for f in (duke / 'gallery' / '0100' / '0005').iterdir():
    f.unlink()
  with pytest.raises(DatasetError, match='gallery/0100/0005: tracklet has no frames'):
    load_dataset('duke', duke)
  (duke / 'gallery' / '0100' / '0005').rmdir()
  (duke / 'query' / 'junk').mkdir()
  with pytest.raises(DatasetError, match='query/junk: unexpected folder; expected a numeric pid folder'):
    load_dataset('duke', duke)
  with pytest.raises(DatasetError, match='train: directory not found'):
    load_dataset('duke', duke / 'query')
