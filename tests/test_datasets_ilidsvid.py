"""iLIDS-VID reader: the real pku2cam data (iLIDS-VID layout) and tiny hand-made layouts for edge cases."""

import pathlib

import numpy as np
import pytest
import scipy.io
from PIL import Image

from lstrl_jax.data.datasets import load_dataset
from lstrl_jax.data.index import DatasetError


def _write_ilidsvid(root: pathlib.Path, frames: dict, ls_set) -> None:
  """frames: (cam, person) -> list of frame numbers; writes 1x1 PNGs and the split .mat."""
  for (cam, person), numbers in frames.items():
    folder = root / 'i-LIDS-VID' / 'sequences' / cam / person
    folder.mkdir(parents=True, exist_ok=True)
    for n in numbers:
      Image.new('RGB', (1, 1)).save(folder / f'{cam}_{person}_{n}.png')
  splits = root / 'train-test people splits'
  splits.mkdir(parents=True, exist_ok=True)
  scipy.io.savemat(splits / 'train_test_splits_ilidsvid.mat', {'ls_set': np.asarray(ls_set, dtype=np.float64)})


@pytest.fixture
def tiny(tmp_path):
  """4 persons (person002, 005, 007, 010); split 0 tests persons #3,#1 (1-based into sorted folders)."""
  persons = ['person002', 'person005', 'person007', 'person010']
  frames = {(cam, p): [3, 10, 9, 100] for cam in ('cam1', 'cam2') for p in persons}
  _write_ilidsvid(tmp_path, frames, [[3, 1, 4, 2], [2, 4, 1, 3]])
  return tmp_path


def test_pku2cam_every_split(shared_data):
  root = shared_data / 'pku2cam'
  folders = sorted(p.name for p in (root / 'i-LIDS-VID' / 'sequences' / 'cam1').iterdir())
  ls_set = scipy.io.loadmat(root / 'train-test people splits' / 'train_test_splits_ilidsvid.mat')['ls_set']
  assert ls_set.shape == (10, 74)
  for split in range(10):
    ds = load_dataset('ilidsvid', root, split=split)
    assert ds.split == split and ds.name == 'ilidsvid'
    assert len(ds.train) == 74 and ds.num_train_pids == 37
    assert sorted({t.pid for t in ds.train}) == list(range(37))
    assert len(ds.query) == 37 and len(ds.galleries['cross_camera']) == 37
    queries = [ds.test[i] for i in ds.query]
    gallery = [ds.test[i] for i in ds.galleries['cross_camera']]
    assert {t.camid for t in queries} == {0} and {t.camid for t in gallery} == {1}
    assert all(len(t.frames) == 8 for t in ds.train + ds.test)
    expected_test = sorted(int(folders[int(i) - 1][len('person'):]) for i in ls_set[split, :37])
    assert [t.pid for t in queries] == expected_test
    assert [t.pid for t in gallery] == expected_test
    assert all(f'/cam1/person{t.pid:03d}/' in t.frames[0] for t in queries)
    assert all(f'/cam2/person{t.pid:03d}/' in t.frames[0] for t in gallery)
    train_dirs = {pathlib.Path(t.frames[0]).parent.name for t in ds.train}
    assert not train_dirs & {f'person{p:03d}' for p in expected_test}


def test_tiny_split_relabel_and_frame_order(tiny):
  ds = load_dataset('ilidsvid', tiny, split=0)
  # Test = 1-based #3, #1 -> person007, person002; train = #4, #2 -> person010, person005.
  assert [ds.test[i].pid for i in ds.query] == [2, 7]
  assert [ds.test[i].pid for i in ds.galleries['cross_camera']] == [2, 7]
  # Train pids 5, 10 relabel to 0, 1 (sorted original ids), one tracklet per camera.
  assert [(pathlib.Path(t.frames[0]).parent.name, t.pid, t.camid) for t in ds.train] == [
      ('person005', 0, 0), ('person005', 0, 1), ('person010', 1, 0), ('person010', 1, 1)]
  # Frames sorted numerically (3, 9, 10, 100), not lexically (10, 100, 3, 9).
  assert [pathlib.Path(f).name for f in ds.train[0].frames] == [
      'cam1_person005_3.png', 'cam1_person005_9.png', 'cam1_person005_10.png', 'cam1_person005_100.png']
  ds1 = load_dataset('ilidsvid', tiny, split=1)
  assert [ds1.test[i].pid for i in ds1.query] == [5, 10]
  assert load_dataset('demo', tiny).name == 'demo'


def test_split_out_of_range(tiny):
  with pytest.raises(DatasetError, match=r'split 2 out of range; expected 0\.\.1'):
    load_dataset('ilidsvid', tiny, split=2)


def test_missing_root_and_wrong_layout(tmp_path):
  with pytest.raises(DatasetError, match='nowhere: directory not found'):
    load_dataset('ilidsvid', tmp_path / 'nowhere')
  (tmp_path / 'sequences').mkdir()
  with pytest.raises(DatasetError, match='i-LIDS-VID/sequences: directory not found'):
    load_dataset('ilidsvid', tmp_path)


def test_missing_and_corrupt_split_file(tiny):
  mat = tiny / 'train-test people splits' / 'train_test_splits_ilidsvid.mat'
  mat.write_bytes(b'not a mat file at all')
  with pytest.raises(DatasetError, match='train_test_splits_ilidsvid.mat: cannot read .mat file'):
    load_dataset('ilidsvid', tiny)
  scipy.io.savemat(mat, {'ls_set': np.array([[1, 1, 2, 3]], dtype=np.float64)})
  with pytest.raises(DatasetError, match='not permutations of 1..4'):
    load_dataset('ilidsvid', tiny)
  scipy.io.savemat(mat, {'other': np.zeros(3)})
  with pytest.raises(DatasetError, match="key 'ls_set' not found"):
    load_dataset('ilidsvid', tiny)
  mat.unlink()
  with pytest.raises(DatasetError, match='train_test_splits_ilidsvid.mat: file not found'):
    load_dataset('ilidsvid', tiny)


def test_empty_tracklet_and_unmatched_person(tiny):
  for f in (tiny / 'i-LIDS-VID' / 'sequences' / 'cam2' / 'person005').iterdir():
    f.unlink()
  with pytest.raises(DatasetError, match='cam2/person005: tracklet has no frames'):
    load_dataset('ilidsvid', tiny)
  (tiny / 'i-LIDS-VID' / 'sequences' / 'cam2' / 'person005').rmdir()
  with pytest.raises(DatasetError, match='person005 is not in both cam1 and cam2'):
    load_dataset('ilidsvid', tiny)


def test_unknown_dataset(tmp_path):
  with pytest.raises(DatasetError, match="dataset 'viper': unknown"):
    load_dataset('viper', tmp_path)
