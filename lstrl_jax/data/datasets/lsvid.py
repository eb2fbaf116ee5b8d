"""LS-VID reader (Li et al., "Global-Local Temporal Representations for Video Person Re-Identification",
ICCV 2019).

Layout under `root` (the LS-VID release; forks of the AP3D/TCLNet code move the lists under info/):

  list_sequence/list_seq_train.txt     one tracklet per line: '<prefix> <pid>', e.g.
  list_sequence/list_seq_test.txt        'tracklet_train/0001/0001_0001_01 1' (a path prefix, not a folder)
  test/data/info_test.mat              MATLAB v7.3 (HDF5), dataset `query`: 1-based rows of list_seq_test
  tracklet_train/<pid>/<prefix>_<frame>.jpg, tracklet_test/...   frames: '<pid>_<x>_<cam>_<frame>.jpg'
  or info/list_sequence/list_seq_{train,test}.txt and info/data/info_test.mat   (the forks' placement)

As in the LSVID reader of the AP3D/TCLNet code family (blue-blue272/BiCnet-TKS `data_manager/lsvid.py`, the
TCLNet authors' code): a tracklet's frames are the files `<prefix>_*` next to the prefix (ordered here by
the frame number after the last '_'), the camera is the third '_' field of the frame name (1..15, made
0-based), training pids are relabelled, test pids kept. Prefixes resolve against `root` in both placements.

Galleries, one per scoring convention (`lstrl_jax.evaluation.metrics`; every reported number names one):
  'paper'     test - query: the family's reader builds `gallery_IDX` as the test rows not in `query`, and
              TCLNet's `evaluation.py` (blue-blue272/VideoReID-TCLNet) adds the queries back only for MARS.
              Same-pid-same-camera items ignored, plain AP, queries without a match skipped
              (`eval_market1501`; guxinqian/AP3D `tools/eval_metrics.py` likewise). The convention of the
              numbers the video ReID literature (and the LSTRL table) reports for LS-VID.
  'official'  every test tracklet, queries included: the release's MATLAB test script ranks each query
              against all of `info_test` with `pdist2(query_feature, test_feature)`, good = same pid other
              camera, junk = same pid same camera, AP by the trapezoid rule of `compute_AP.m` (0 for a query
              without a good item: ljn114514/GLTR `Duke_test/compute_AP.m`, the LS-VID authors' code),
              CMC and mAP averaged over all queries.
BiCnet-TKS's `evaluation.py` instead prepends the queries to the reader's gallery for LS-VID (the whole test
list, plain AP, no-match queries skipped), which is neither of the two.
"""

from __future__ import annotations

import collections
import os
import pathlib
import re

import h5py
import numpy as np

from lstrl_jax.data.datasets import common
from lstrl_jax.data.index import DatasetError, Tracklet, VideoReIDDataset

TRAIN_LIST = pathlib.Path('list_sequence') / 'list_seq_train.txt'
TEST_LIST = pathlib.Path('list_sequence') / 'list_seq_test.txt'
INFO_TEST = pathlib.Path('test') / 'data' / 'info_test.mat'
FORK_INFO = pathlib.Path('info')  # forks: info/list_sequence/..., info/data/info_test.mat
_FRAME = re.compile(r'^(.+)_(\d+)\.(?:jpg|jpeg|png)$', re.IGNORECASE)


def read_list(path: pathlib.Path) -> list[tuple[str, int]]:
  """Reads a list_seq_*.txt file into (prefix, pid) pairs.

  Raises:
    DatasetError: missing file, no lines, or a line that is not '<prefix> <integer pid>'.
  """
  common.require_file(path, "an LS-VID sequence list of '<prefix> <pid>' lines")
  entries = []
  for number, line in enumerate(path.read_text().splitlines(), start=1):
    if not line.strip():
      continue
    fields = line.split()
    if len(fields) != 2 or not re.fullmatch(r'-?\d+', fields[1]):
      raise DatasetError(f"{path}:{number}: {line.strip()!r}; expected '<tracklet path prefix> <pid>'")
    entries.append((fields[0], int(fields[1])))
  if not entries:
    raise DatasetError(f"{path}: no tracklets; expected '<tracklet path prefix> <pid>' lines")
  return entries


class _FrameIndex:
  """Lists each tracklet folder once and groups its frames by prefix (many tracklets share a folder)."""

  def __init__(self, root: pathlib.Path):
    self._root = root
    self._folders: dict[str, dict[str, list[tuple[int, str]]]] = {}

  def frames(self, prefix: str, list_path: pathlib.Path) -> tuple[tuple[str, ...], int]:
    """Frame paths of tracklet `prefix` in temporal order, and its 0-based camid.

    Raises:
      DatasetError: folder missing, no frame with this prefix, or a frame name without a camera field.
    """
    folder, stem = os.path.split(prefix)
    if folder not in self._folders:
      directory = common.require_dir(self._root / folder, f'the LS-VID frame folder of tracklets in {list_path}')
      groups = collections.defaultdict(list)
      for name in common.frame_files(directory):
        match = _FRAME.match(name)
        if match:
          groups[match.group(1)].append((int(match.group(2)), name))
      self._folders[folder] = groups
    found = sorted(self._folders[folder].get(stem, ()))
    if not found:
      raise DatasetError(f'{self._root / prefix}_*: tracklet has no frames; expected {stem}_<frame>.jpg files')
    fields = found[0][1].split('_')
    if len(fields) < 4 or not fields[2].isdigit() or int(fields[2]) < 1:
      raise DatasetError(f'{self._root / folder / found[0][1]}: no camera field; expected <pid>_<x>_<cam>_<frame>')
    base = str(self._root / folder) + os.sep
    return tuple(base + name for _, name in found), int(fields[2]) - 1


def read_query(path: pathlib.Path, num_test: int) -> np.ndarray:
  """Reads the 1-based query rows from info_test.mat (HDF5, dataset `query`) as int64 0-based indices.

  Raises:
    DatasetError: missing or non-HDF5 file, no `query` dataset, or indices not distinct in 1..num_test.
  """
  common.require_file(path, 'the LS-VID info_test.mat (MATLAB v7.3/HDF5 with a `query` dataset)')
  try:
    with h5py.File(path, 'r') as f:
      if 'query' not in f:
        raise DatasetError(f"{path}: key 'query' not found; expected 1-based rows of list_seq_test.txt")
      query = np.asarray(f['query'][()]).ravel()
  except OSError as e:
    raise DatasetError(f'{path}: cannot read as HDF5 (MATLAB v7.3) .mat ({type(e).__name__})') from e
  rows = query.astype(np.int64)
  if (not rows.size or not np.array_equal(rows, query) or rows.min() < 1 or rows.max() > num_test
      or len(np.unique(rows)) != rows.size):
    raise DatasetError(f'{path}: query must hold distinct 1-based rows in 1..{num_test} of list_seq_test.txt')
  return rows - 1


def placement(root: pathlib.Path) -> tuple[pathlib.Path, pathlib.Path, pathlib.Path]:
  """Paths of list_seq_train.txt, list_seq_test.txt and info_test.mat under `root`, in either placement.

  The release's (`list_sequence/`, `test/data/`) is used when its `list_sequence/` folder exists, else the
  forks' (`info/list_sequence/`, `info/data/`) when that exists; files are checked by the callers.

  Raises:
    DatasetError: neither `list_sequence/` nor `info/list_sequence/` exists under `root`.
  """
  if (root / TRAIN_LIST.parent).is_dir():
    return root / TRAIN_LIST, root / TEST_LIST, root / INFO_TEST
  if (root / FORK_INFO / TRAIN_LIST.parent).is_dir():
    return root / FORK_INFO / TRAIN_LIST, root / FORK_INFO / TEST_LIST, root / FORK_INFO / 'data' / INFO_TEST.name
  raise DatasetError(f'{root / TRAIN_LIST.parent}: directory not found; expected the LS-VID sequence lists there '
                     f'or in {FORK_INFO / TRAIN_LIST.parent}')


def galleries(num_test: int, query: np.ndarray) -> dict[str, np.ndarray]:
  """The two LS-VID gallery conventions as int64 index arrays into the test list (see module doc)."""
  is_query = np.zeros(num_test, dtype=bool)
  is_query[query] = True
  return {'paper': np.flatnonzero(~is_query).astype(np.int64), 'official': np.arange(num_test, dtype=np.int64)}


def load(root: str | pathlib.Path, *, split: int = 0) -> VideoReIDDataset:
  """Reads LS-VID from its sequence lists (frames are listed, not opened).

  Args:
    root: the LS-VID folder (list_sequence/, test/data/, tracklet_*/; or info/list_sequence/, info/data/).
    split: must be 0 (LS-VID has one fixed split).

  Returns:
    VideoReIDDataset with training pids relabelled, test = list_seq_test order, query from info_test.mat,
    galleries {'paper': test - query, 'official': every test tracklet}.

  Raises:
    DatasetError: missing root/list/folder, malformed line, empty tracklet, bad info_test.mat, split != 0.
  """
  root = common.require_dir(pathlib.Path(root), 'an LS-VID root holding list_sequence/ (or info/list_sequence/)')
  train_list, test_list, info_test = placement(root)
  common.check_split(split, 1, train_list)
  index = _FrameIndex(root)

  def tracklets(list_path: pathlib.Path) -> list[Tracklet]:
    out = []
    for prefix, pid in read_list(list_path):
      frames, camid = index.frames(prefix, list_path)
      out.append(Tracklet(frames, pid, camid))
    return out

  train = common.relabel(tracklets(train_list))
  test = tuple(tracklets(test_list))
  query = read_query(info_test, len(test))
  return VideoReIDDataset(name='lsvid', train=train, test=test, query=query, galleries=galleries(len(test), query))
