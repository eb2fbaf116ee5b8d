"""Every reader on a small layout shaped like its dataset's official release (tiny real images), its index
compared with expectations written by hand from the dataset's documentation (data/README.md, DESIGN.md
section 3). PRID-2011's 385/749-folder layout is in test_datasets_prid.py.
"""

import io
import pathlib

import h5py
import numpy as np
import scipy.io
from PIL import Image

from lstrl_jax.data.datasets import load_dataset


def _image(fmt):
  buffer = io.BytesIO()
  Image.new('RGB', (2, 4), (30, 120, 60)).save(buffer, format=fmt)
  return buffer.getvalue()


PNG, JPEG = _image('PNG'), _image('JPEG')


def _write(folder: pathlib.Path, names, data):
  folder.mkdir(parents=True, exist_ok=True)
  for name in names:
    (folder / name).write_bytes(data)


def _index(tracklets):
  """(pid, camid, [frame file names]) per tracklet, every frame checked to exist and to be an image."""
  out = []
  for t in tracklets:
    for f in t.frames:
      with Image.open(f) as image:
        assert image.size == (2, 4)
    out.append((t.pid, t.camid, [pathlib.Path(f).name for f in t.frames]))
  return out


def test_mars_official_layout(tmp_path):
  # bbox_train/<pid>/, bbox_test/<pid>/ with 00-1 (junk) and 0000 (distractors); info/ lists every frame, a
  # tracklet being rows start..end (1-based) of its name list; query_IDX: 1-based rows of track_test_info.
  train = ['0001C1T0001F001.jpg', '0001C1T0001F002.jpg', '0001C4T0003F005.jpg', '0003C2T0001F011.jpg',
           '0003C2T0001F010.jpg']
  test = ['00-1C1T0001F001.jpg', '00-1C1T0001F002.jpg', '0000C2T0004F001.jpg', '0002C1T0001F001.jpg',
          '0002C1T0001F002.jpg', '0002C6T0002F001.jpg', '0002C1T0003F001.jpg', '0004C3T0001F001.jpg']
  for folder, names in (('bbox_train', train), ('bbox_test', test)):
    for name in names:
      _write(tmp_path / folder / name[:4], [name], JPEG)
  info = tmp_path / 'info'
  info.mkdir()
  (info / 'train_name.txt').write_text('\n'.join(train) + '\n')
  (info / 'test_name.txt').write_text('\n'.join(test) + '\n')
  scipy.io.savemat(info / 'tracks_train_info.mat', {'track_train_info': np.array(
      [[1, 2, 1, 1], [3, 3, 1, 4], [4, 5, 3, 2]], np.float64)})
  scipy.io.savemat(info / 'tracks_test_info.mat', {'track_test_info': np.array(
      [[1, 2, -1, 1], [3, 3, 0, 2], [4, 5, 2, 1], [6, 6, 2, 6], [7, 7, 2, 1], [8, 8, 4, 3]], np.float64)})
  scipy.io.savemat(info / 'query_IDX.mat', {'query_IDX': np.array([[3, 6]], np.float64)})
  ds = load_dataset('mars', tmp_path)
  assert _index(ds.train) == [(0, 0, ['0001C1T0001F001.jpg', '0001C1T0001F002.jpg']),
                              (0, 3, ['0001C4T0003F005.jpg']),
                              (1, 1, ['0003C2T0001F010.jpg', '0003C2T0001F011.jpg'])]  # frame order
  assert _index(ds.test) == [(-1, 0, ['00-1C1T0001F001.jpg', '00-1C1T0001F002.jpg']),
                             (0, 1, ['0000C2T0004F001.jpg']),
                             (2, 0, ['0002C1T0001F001.jpg', '0002C1T0001F002.jpg']),
                             (2, 5, ['0002C6T0002F001.jpg']),
                             (2, 0, ['0002C1T0003F001.jpg']),
                             (4, 2, ['0004C3T0001F001.jpg'])]
  assert ds.query.tolist() == [2, 5]
  assert {k: v.tolist() for k, v in ds.galleries.items()} == {
      'paper': [2, 5, 1, 3, 4],  # query, then test - query - junk
      'torchreid': [1, 3, 4],  # test - query - junk
      'official': [0, 1, 2, 3, 4, 5]}  # every test tracklet


def test_ilidsvid_official_layout(tmp_path):
  # i-LIDS-VID/sequences/cam{1,2}/personNNN/camC_personNNN_FFFFF.png; ls_set rows: 1-based indices into the
  # sorted person folders, first half test persons (Wang et al. 2014).
  sequences = tmp_path / 'i-LIDS-VID' / 'sequences'
  frames = {'person001': (317, 3), 'person002': (1045, 2), 'person005': (9, 2), 'person010': (98, 3)}
  for cam in ('cam1', 'cam2'):
    for person, (start, count) in frames.items():
      offset = 100 if cam == 'cam2' else 0
      _write(sequences / cam / person,
             [f'{cam}_{person}_{n:05d}.png' for n in range(start + offset, start + offset + count)], PNG)
  splits = tmp_path / 'train-test people splits'
  splits.mkdir()
  scipy.io.savemat(splits / 'train_test_splits_ilidsvid.mat', {'ls_set': np.array(
      [[4, 2, 1, 3], [1, 3, 2, 4]], np.float64)})
  ds = load_dataset('ilidsvid', tmp_path, split=0)  # test: person010, person002; train: person001, person005
  assert _index(ds.train) == [
      (0, 0, ['cam1_person001_00317.png', 'cam1_person001_00318.png', 'cam1_person001_00319.png']),
      (0, 1, ['cam2_person001_00417.png', 'cam2_person001_00418.png', 'cam2_person001_00419.png']),
      (1, 0, ['cam1_person005_00009.png', 'cam1_person005_00010.png']),
      (1, 1, ['cam2_person005_00109.png', 'cam2_person005_00110.png'])]
  assert [(pid, camid, len(names)) for pid, camid, names in _index(ds.test)] == [
      (2, 0, 2), (10, 0, 3), (2, 1, 2), (10, 1, 3)]
  assert ds.query.tolist() == [0, 1] and ds.galleries == {'cross_camera': ds.galleries['cross_camera']}
  assert ds.galleries['cross_camera'].tolist() == [2, 3]
  assert [t.pid for t in load_dataset('ilidsvid', tmp_path, split=1).test[:2]] == [1, 5]


def test_lsvid_official_layout(tmp_path):
  # list_sequence/list_seq_{train,test}.txt: '<prefix> <pid>'; frames '<pid>_<x>_<cam>_<frame>.jpg' next to
  # the prefix; test/data/info_test.mat (MATLAB v7.3 = HDF5) `query`: 1-based rows of list_seq_test.txt.
  lists = tmp_path / 'list_sequence'
  lists.mkdir()
  (lists / 'list_seq_train.txt').write_text('tracklet_train/0012/0012_0001_03 12\ntracklet_train/0004/0004_0002_15 4\n')
  (lists / 'list_seq_test.txt').write_text(
      'tracklet_test/0100/0100_0001_01 100\ntracklet_test/0100/0100_0002_07 100\n'
      'tracklet_test/0100/0100_0003_01 100\ntracklet_test/0200/0200_0001_09 200\n')
  _write(tmp_path / 'tracklet_train' / '0012', [f'0012_0001_03_{n:04d}.jpg' for n in (12, 3, 101)], JPEG)
  _write(tmp_path / 'tracklet_train' / '0004', ['0004_0002_15_0001.jpg'], JPEG)
  _write(tmp_path / 'tracklet_test' / '0100', ['0100_0001_01_0001.jpg', '0100_0002_07_0001.jpg',
                                               '0100_0002_07_0002.jpg', '0100_0003_01_0004.jpg'], JPEG)
  _write(tmp_path / 'tracklet_test' / '0200', ['0200_0001_09_0001.jpg'], JPEG)
  (tmp_path / 'test' / 'data').mkdir(parents=True)
  with h5py.File(tmp_path / 'test' / 'data' / 'info_test.mat', 'w') as f:
    f['query'] = np.array([[1.0, 4.0]])
  ds = load_dataset('lsvid', tmp_path)
  assert _index(ds.train) == [(1, 2, ['0012_0001_03_0003.jpg', '0012_0001_03_0012.jpg', '0012_0001_03_0101.jpg']),
                              (0, 14, ['0004_0002_15_0001.jpg'])]
  assert [(pid, camid) for pid, camid, _ in _index(ds.test)] == [(100, 0), (100, 6), (100, 0), (200, 8)]
  assert ds.query.tolist() == [0, 3]
  assert {k: v.tolist() for k, v in ds.galleries.items()} == {'paper': [1, 2], 'official': [0, 1, 2, 3]}


def test_duke_official_layout(tmp_path):
  # train|query|gallery/<pid>/<tracklet>/<pid>_C<cam>_F<frame>_X<x>.jpg; the gallery also holds identities
  # that no query has (distractor identities), frame numbers need not start at 1.
  _write(tmp_path / 'train' / '0001' / '0001', ['0001_C6_F0101_X30823.jpg', '0001_C6_F0099_X30823.jpg'], JPEG)
  _write(tmp_path / 'train' / '0001' / '0002', ['0001_C1_F0005_X30824.jpg'], JPEG)
  _write(tmp_path / 'train' / '0008' / '0001', ['0008_C2_F0001_X1.jpg'], JPEG)
  _write(tmp_path / 'query' / '0005' / '0001', ['0005_C2_F0040_X7.jpg', '0005_C2_F0041_X7.jpg'], JPEG)
  _write(tmp_path / 'gallery' / '0005' / '0003', ['0005_C5_F0300_X7.jpg'], JPEG)
  _write(tmp_path / 'gallery' / '0005' / '0004', ['0005_C2_F0500_X7.jpg'], JPEG)
  _write(tmp_path / 'gallery' / '7001' / '0001', ['7001_C8_F0002_X3.jpg'], JPEG)
  ds = load_dataset('duke', tmp_path)
  assert _index(ds.train) == [(0, 5, ['0001_C6_F0099_X30823.jpg', '0001_C6_F0101_X30823.jpg']),
                              (0, 0, ['0001_C1_F0005_X30824.jpg']), (1, 1, ['0008_C2_F0001_X1.jpg'])]
  assert [(pid, camid) for pid, camid, _ in _index(ds.test)] == [(5, 1), (5, 4), (5, 1), (7001, 7)]
  assert ds.query.tolist() == [0] and ds.galleries['cross_camera'].tolist() == [1, 2, 3]


def test_lsvid_eval_prints_both_conventions(tmp_path):
  from lstrl_jax.evaluation import evaluator  # pylint: disable=import-outside-toplevel
  test_lsvid_official_layout(tmp_path)
  ds = load_dataset('lsvid', tmp_path)
  # Test tracklets: 0 (pid 100 cam 0, query), 1 (100, cam 6), 2 (100, cam 0), 3 (200, cam 8, query).
  features = np.array([[1, 0], [0.9, 0.1], [1, 0], [0, 1]], np.float32)
  results = evaluator.score_features(features, ds, distance='euclidean', clip_selection='dense')
  table = evaluator.format_results(results)
  rows = {line.split()[0]: line.split()[1:] for line in table.splitlines()[2:4]}
  assert list(rows) == ['paper', 'official']
  # paper: gallery [1, 2]; query 0's match 1 (tracklet 2 is same pid same camera: junk) -> AP 1; query 3
  # (pid 200) has no match and is skipped. official: gallery all 4; query 3 counts AP 0.
  assert rows['paper'][:2] == ['100.00', '100.00'] and rows['paper'][-3:] == ['2', '2', '1']
  assert rows['official'][:2] == ['50.00', '50.00'] and rows['official'][-3:] == ['2', '4', '1']
  assert 'paper: 1 queries without a valid match, skipped' in table
  assert 'official: 1 queries without a valid match, counted as AP 0, CMC 0' in table
