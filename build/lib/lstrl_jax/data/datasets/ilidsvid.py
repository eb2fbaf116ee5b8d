"""iLIDS-VID reader (Wang et al., "Person Re-identification by Video Ranking", ECCV 2014).

Layout under `root` (as the official archive unpacks):

  i-LIDS-VID/sequences/cam1/personNNN/cam1_personNNN_FFFFF.png
  i-LIDS-VID/sequences/cam2/personNNN/cam2_personNNN_FFFFF.png
  train-test people splits/train_test_splits_ilidsvid.mat   (`ls_set`, 10 x num_persons)

Protocol (Wang et al. 2014, as in deep-person-reid's `iLIDSVID`): row `split` of `ls_set` is a permutation of
1-based indices into the sorted person folders; its first half are the test persons, the rest the training
persons. Every person has one tracklet per camera. Training uses both; at test time the cam1 tracklets are
the queries and the cam2 tracklets the gallery ('cross_camera'). camid: cam1 -> 0, cam2 -> 1. Original pids
are the numbers in the folder names (person001 -> 1). The demo dataset (`lstrl_jax.data.demo`) and the
pku2cam data in ../shared/data use this layout too.
"""

from __future__ import annotations

import pathlib
import re

import numpy as np

from lstrl_jax.data.datasets import common
from lstrl_jax.data.index import DatasetError, Tracklet, VideoReIDDataset

SEQUENCES = pathlib.Path('i-LIDS-VID') / 'sequences'
SPLITS_MAT = pathlib.Path('train-test people splits') / 'train_test_splits_ilidsvid.mat'
CAMERAS = ('cam1', 'cam2')
_PERSON = re.compile(r'^person(\d+)$')
_FRAME = re.compile(r'(\d+)\.\w+$')


def read_splits(path: pathlib.Path, num_persons: int) -> np.ndarray:
  """Reads `ls_set` and checks every row is a permutation of 1..num_persons.

  Returns:
    int64 `[num_splits, num_persons]` 0-based indices into the sorted person folders.

  Raises:
    DatasetError: missing/corrupt file, missing key, or rows that are not such permutations.
  """
  what = f'`ls_set`, rows of 1-based indices into the {num_persons} sorted person folders'
  ls_set = common.load_mat(path, 'ls_set', what)
  if ls_set.ndim != 2 or ls_set.shape[1] != num_persons or ls_set.shape[0] == 0:
    raise DatasetError(f'{path}: ls_set has shape {ls_set.shape}; expected [num_splits, {num_persons}]')
  rows = ls_set.astype(np.int64)
  expected = np.arange(1, num_persons + 1)
  if not np.array_equal(rows, ls_set) or not (np.sort(rows, axis=1) == expected).all():
    raise DatasetError(f'{path}: ls_set rows are not permutations of 1..{num_persons}; expected {what}')
  return rows - 1


def person_folders(sequences: pathlib.Path) -> list[str]:
  """Sorted person folder names, checked to be the same in both cameras and named personNNN.

  Raises:
    DatasetError: missing camera folder, no persons, differing person sets, or a badly named folder.
  """
  cam1, cam2 = (
      common.sorted_subdirs(common.require_dir(sequences / cam, f'the iLIDS-VID {cam} folder of personNNN/'))
      for cam in CAMERAS
  )
  if not cam1:
    raise DatasetError(f'{sequences / CAMERAS[0]}: no person folders; expected personNNN/ sub-folders')
  if cam1 != cam2:
    only = sorted(set(cam1) ^ set(cam2))[0]
    raise DatasetError(f'{sequences}: {only} is not in both cam1 and cam2; expected the same person folders')
  for name in cam1:
    if not _PERSON.match(name):
      raise DatasetError(f'{sequences / CAMERAS[0] / name}: unexpected folder; expected personNNN')
  return cam1


def load(root: str | pathlib.Path, *, split: int = 0, name: str = 'ilidsvid') -> VideoReIDDataset:
  """Reads iLIDS-VID (or any dataset in its layout) under one split.

  Args:
    root: folder holding `i-LIDS-VID/` and `train-test people splits/`.
    split: row of `ls_set`, 0..num_splits-1 (10 in the official file).
    name: dataset name stored in the result ('demo' for the generated demo dataset).

  Returns:
    VideoReIDDataset with 2 tracklets per training person (pids relabelled), test = the cam1 tracklets of
    the test persons followed by their cam2 tracklets, query = the cam1 ones, galleries {'cross_camera':
    the cam2 ones}.

  Raises:
    DatasetError: missing root/folder/file, corrupt .mat, empty tracklet or split out of range.
  """
  root = common.require_dir(pathlib.Path(root), 'an iLIDS-VID root holding i-LIDS-VID/sequences/')
  sequences = common.require_dir(root / SEQUENCES, 'the iLIDS-VID sequences/cam{1,2}/ folders')
  persons = person_folders(sequences)
  splits_path = root / SPLITS_MAT
  rows = read_splits(splits_path, len(persons))
  common.check_split(split, rows.shape[0], splits_path)
  half = len(persons) // 2
  test_persons = sorted(persons[i] for i in rows[split, :half])
  train_persons = sorted(persons[i] for i in rows[split, half:])

  def frames(person: str, camid: int) -> tuple[str, ...]:
    return common.tracklet_frames(sequences / CAMERAS[camid] / person, _FRAME)

  def pid_of(person: str) -> int:
    return int(_PERSON.match(person).group(1))

  train = common.relabel(
      [Tracklet(frames(p, camid), pid_of(p), camid) for p in train_persons for camid in (0, 1)]
  )
  test, query, gallery = common.cross_camera_test(
      test_persons, lambda p: frames(p, 0), lambda p: frames(p, 1), pid_of
  )
  return VideoReIDDataset(
      name=name, train=train, test=test, query=query, galleries={'cross_camera': gallery}, split=split
  )
