"""LS-VID reader (Li et al., "Global-Local Temporal Representations for Video Person Re-Identification",
ICCV 2019).

Layout under `root` (the LS-VID release):

  list_sequence/list_seq_train.txt     one tracklet per line: '<prefix> <pid>', e.g.
  list_sequence/list_seq_test.txt        'tracklet_train/0001/0001_0001_01 1' (a path prefix, not a folder)
  test/data/info_test.mat              MATLAB v7.3 (HDF5), dataset `query`: 1-based rows of list_seq_test
  tracklet_train/<pid>/<prefix>_<frame>.jpg, tracklet_test/...   frames: '<pid>_<x>_<cam>_<frame>.jpg'

As in the authors' GLTR code and AP3D/TCLNet: a tracklet's frames are the files `<prefix>_*` next to the
prefix (ordered here by the frame number after the last '_'), the camera is the third '_' field of the frame
name (1..15, made 0-based), training pids are relabelled, test pids kept. The gallery 'cross_camera' is the
whole test list, queries included (AP3D: "gallery set must contain query set"); the evaluator ignores
same-pid-same-camera gallery items.
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


def load(root: str | pathlib.Path, *, split: int = 0) -> VideoReIDDataset:
  """Reads LS-VID from its sequence lists (frames are listed, not opened).

  Args:
    root: the LS-VID folder (list_sequence/, test/data/, tracklet_*/).
    split: must be 0 (LS-VID has one fixed split).

  Returns:
    VideoReIDDataset with training pids relabelled, test = list_seq_test order, query from info_test.mat,
    galleries {'cross_camera': every test tracklet}.

  Raises:
    DatasetError: missing root/list/folder, malformed line, empty tracklet, bad info_test.mat, split != 0.
  """
  root = common.require_dir(pathlib.Path(root), 'an LS-VID root holding list_sequence/')
  common.check_split(split, 1, root / TRAIN_LIST)
  index = _FrameIndex(root)

  def tracklets(list_path: pathlib.Path) -> list[Tracklet]:
    out = []
    for prefix, pid in read_list(list_path):
      frames, camid = index.frames(prefix, list_path)
      out.append(Tracklet(frames, pid, camid))
    return out

  train = common.relabel(tracklets(root / TRAIN_LIST))
  test = tuple(tracklets(root / TEST_LIST))
  query = read_query(root / INFO_TEST, len(test))
  return VideoReIDDataset(
      name='lsvid', train=train, test=test, query=query,
      galleries={'cross_camera': np.arange(len(test), dtype=np.int64)},
  )
