"""PRID-2011 reader (Hirzer et al., "Person Re-Identification by Descriptive and Discriminative Classification",
SCIA 2011), multi-shot version.

Layout under `root` (the official archive, plus deep-person-reid's optional split file):

  prid_2011/multi_shot/cam_a/person_NNNN/NNNN.png      385 persons
  prid_2011/multi_shot/cam_b/person_NNNN/NNNN.png      749 persons; person_0001..0200 are seen by both
  splits_prid2011.json                                 optional: [{'train': [dirs], 'test': [dirs]}, ...]

Protocol. Only the persons seen by both cameras are used (person_0001..person_0200 by the dataset's
definition, found here as the folders present in both cam_a and cam_b). Video ReID work follows Wang et al.
(ECCV 2014) and McLaughlin et al. (CVPR 2016) and keeps the 178 of them whose sequences are long enough in
both cameras; deep-person-reid ships those 178 as 10 fixed 89/89 splits in `splits_prid2011.json` ("only
178 persons whose sequences are more than a threshold are used"). This reader:
  * uses `splits_prid2011.json` when it exists (train/test person folder names per split), so numbers are
    comparable with deep-person-reid and the papers that use its file;
  * otherwise keeps the persons with at least MIN_FRAMES (27) frames in both cameras, the threshold the
    video ReID literature quotes, and draws 10 random 50/50 splits from the fixed seed SPLIT_SEED
    (split s: the s-th permutation from `np.random.default_rng(SPLIT_SEED)`; first half test, rest train).
Each person has one tracklet per camera; query cam_a (camid 0), gallery cam_b (camid 1) ('cross_camera').
Original pids are the folder numbers (person_0042 -> 42).
"""

from __future__ import annotations

import json
import pathlib
import re

import numpy as np

from lstrl_jax.data.datasets import common
from lstrl_jax.data.index import DatasetError, Tracklet, VideoReIDDataset

MULTI_SHOT = pathlib.Path('prid_2011') / 'multi_shot'
SPLITS_JSON = 'splits_prid2011.json'
CAMERAS = ('cam_a', 'cam_b')
MIN_FRAMES = 27
NUM_SPLITS = 10
SPLIT_SEED = 2011
_PERSON = re.compile(r'^person_(\d+)$')
_FRAME = re.compile(r'(\d+)\.\w+$')


def random_splits(persons: list[str], num_splits: int = NUM_SPLITS, seed: int = SPLIT_SEED) -> list[dict]:
  """10 random 50/50 splits of `persons` (sorted folder names): [{'train': [...], 'test': [...]}, ...].

  Split s uses the s-th permutation drawn from `np.random.default_rng(seed)`; its first len // 2 persons
  are the test persons. Deterministic for a given person list.
  """
  rng = np.random.default_rng(seed)
  half = len(persons) // 2
  splits = []
  for _ in range(num_splits):
    order = rng.permutation(len(persons))
    splits.append({'test': [persons[i] for i in order[:half]], 'train': [persons[i] for i in order[half:]]})
  return splits


def read_splits_json(path: pathlib.Path) -> list[dict]:
  """Reads deep-person-reid's split file: a list of {'train': [dir names], 'test': [dir names]}.

  Raises:
    DatasetError: unreadable JSON or not that structure.
  """
  try:
    splits = json.loads(path.read_text())
  except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
    raise DatasetError(f'{path}: cannot read JSON ({type(e).__name__}); expected a list of splits') from e
  valid = isinstance(splits, list) and splits and all(
      isinstance(s, dict) and all(isinstance(s.get(k), list) and s[k] for k in ('train', 'test'))
      and all(isinstance(d, str) for d in s['train'] + s['test'])
      for s in splits
  )
  if not valid:
    raise DatasetError(f'{path}: expected a non-empty list of {{"train": [person dirs], "test": [person dirs]}}')
  return splits


def shared_persons(multi_shot: pathlib.Path) -> list[str]:
  """Sorted person folders present in both cam_a and cam_b (the 200 persons seen by both cameras).

  Raises:
    DatasetError: a camera folder is missing or no person is seen by both cameras.
  """
  cam_a, cam_b = (
      set(common.sorted_subdirs(common.require_dir(multi_shot / cam, f'the PRID-2011 {cam} folder of person_NNNN/')))
      for cam in CAMERAS
  )
  persons = sorted(p for p in cam_a & cam_b if _PERSON.match(p))
  if not persons:
    raise DatasetError(f'{multi_shot}: no person_NNNN folder in both cam_a and cam_b; expected 200')
  return persons


def load(root: str | pathlib.Path, *, split: int = 0, min_frames: int = MIN_FRAMES) -> VideoReIDDataset:
  """Reads PRID-2011 (multi-shot) under one split.

  Args:
    root: folder holding prid_2011/multi_shot/ (and optionally splits_prid2011.json).
    split: split index, 0..9 (or 0..len-1 of the JSON file).
    min_frames: without a JSON file, persons need at least this many frames in each camera.

  Returns:
    VideoReIDDataset: training tracklets of both cameras (pids relabelled), test = cam_a tracklets of the
    test persons then their cam_b tracklets; query = the cam_a ones, galleries {'cross_camera': cam_b ones}.

  Raises:
    DatasetError: missing root/folders, bad JSON or unknown person in it, empty tracklet, too few persons,
      or split out of range.
  """
  root = common.require_dir(pathlib.Path(root), 'a PRID-2011 root holding prid_2011/multi_shot/')
  multi_shot = common.require_dir(root / MULTI_SHOT, 'the PRID-2011 multi_shot/cam_{a,b}/ folders')
  persons = shared_persons(multi_shot)
  cache: dict[tuple[str, int], tuple[str, ...]] = {}

  def frames(person: str, camid: int) -> tuple[str, ...]:
    if (person, camid) not in cache:
      cache[person, camid] = common.tracklet_frames(multi_shot / CAMERAS[camid] / person, _FRAME)
    return cache[person, camid]

  json_path = root / SPLITS_JSON
  if json_path.is_file():
    splits, source = read_splits_json(json_path), json_path
    unknown = sorted(set().union(*(s['train'] + s['test'] for s in splits)) - set(persons))
    if unknown:
      raise DatasetError(f'{json_path}: person {unknown[0]!r} is not in both cam_a and cam_b under {multi_shot}')
  else:
    kept = [p for p in persons if min(len(frames(p, 0)), len(frames(p, 1))) >= min_frames]
    if len(kept) < 2:
      raise DatasetError(f'{multi_shot}: {len(kept)} persons have >= {min_frames} frames in both cameras; need 2')
    splits, source = random_splits(kept), multi_shot
  common.check_split(split, len(splits), source)

  def pid_of(person: str) -> int:
    return int(_PERSON.match(person).group(1))

  train = common.relabel(
      [Tracklet(frames(p, c), pid_of(p), c) for p in sorted(splits[split]['train']) for c in (0, 1)]
  )
  test, query, gallery = common.cross_camera_test(
      sorted(splits[split]['test']), lambda p: frames(p, 0), lambda p: frames(p, 1), pid_of
  )
  return VideoReIDDataset(
      name='prid', train=train, test=test, query=query, galleries={'cross_camera': gallery}, split=split
  )
