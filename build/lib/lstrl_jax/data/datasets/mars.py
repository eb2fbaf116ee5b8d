"""MARS reader (Zheng et al., "MARS: A Video Benchmark for Large-Scale Person Re-identification", ECCV 2016).

Layout under `root` (as the official archives unpack):

  bbox_train/<pid>/<pid>C<cam>T<tracklet>F<frame>.jpg     e.g. bbox_train/0001/0001C1T0001F001.jpg
  bbox_test/<pid>/...                                      (junk tracklets live in bbox_test/00-1/)
  info/train_name.txt, info/test_name.txt                  one frame name per line
  info/tracks_train_info.mat  `track_train_info`           [8298, 4]  start, end, pid, cam (1-based rows)
  info/tracks_test_info.mat   `track_test_info`            [12180, 4]
  info/query_IDX.mat          `query_IDX`                  [1, 1980]  1-based rows of track_test_info

Indexing reads only info/ (no image is opened or listed), vectorised over the 1.19M frame names. Every
tracklet's names are checked to carry its pid and camera, and ordered by the frame number in the name.
Camids become 0-based (1..6 -> 0..5). Test tracklets keep their original pids (-1 junk, 0 distractors).

Galleries (DESIGN.md section 3; every reported number names its convention):
  'paper'     query followed by (test - query - pid -1): 11,310. AP3D / PSTA / the LSTRL authors' code.
  'torchreid' test - query - pid -1: 9,330 (deep-person-reid; queries without a valid match are skipped).
  'official'  all 12,180 test tracklets (MARS's MATLAB code, which marks pid -1 as junk).
"""

from __future__ import annotations

import os
import pathlib

import numpy as np

from lstrl_jax.data.datasets import common
from lstrl_jax.data.index import DatasetError, Tracklet, VideoReIDDataset

NAME_LENGTH = 19  # 0001C1T0001F001.jpg
_TEMPLATE = '0000C0T0000F000.jpg'  # '0' marks a digit position
_DIGITS = np.array([c == '0' for c in _TEMPLATE])


def parse_names(path: pathlib.Path) -> tuple[list[str], np.ndarray, np.ndarray, np.ndarray]:
  """Reads a MARS name list and parses every name, vectorised.

  Args:
    path: info/train_name.txt or info/test_name.txt.

  Returns:
    (names, pid, cam, frame): the names, and int64 `[N]` arrays of the pid (-1 for '00-1'), the 1-based
    camera and the frame number parsed from each name.

  Raises:
    DatasetError: missing file, or a name not of the form PPPPCcTttttFfff.jpg (PPPP may be 00-1).
  """
  common.require_file(path, 'a MARS frame name list (one PPPPCcTttttFfff.jpg name per line)')
  names = path.read_text().split()
  if not names:
    raise DatasetError(f'{path}: empty; expected one MARS frame name per line')
  array = np.array(names)
  if array.dtype.itemsize != 4 * NAME_LENGTH:  # a longer name (shorter ones fail the template check)
    line = next((i for i, n in enumerate(names) if len(n) > NAME_LENGTH), 0) + 1
    raise DatasetError(f'{path}:{line}: {names[line - 1]!r} is not a MARS frame name; expected {_TEMPLATE}')
  codes = array.view(np.uint32).reshape(-1, NAME_LENGTH).astype(np.int64)
  digits = codes - ord('0')
  template = np.array([ord(c) for c in _TEMPLATE])
  junk = (codes[:, :4] == np.array([ord(c) for c in '00-1'])).all(axis=1)
  is_digit = (digits >= 0) & (digits <= 9)
  ok = np.where(_DIGITS, is_digit, codes == template)
  ok[:, :4] |= junk[:, None]
  bad = np.flatnonzero(~ok.all(axis=1))
  if bad.size:
    raise DatasetError(f'{path}:{bad[0] + 1}: {names[bad[0]]!r} is not a MARS frame name; expected {_TEMPLATE}')
  pid = np.where(junk, -1, digits[:, :4] @ np.array([1000, 100, 10, 1]))
  return names, pid, digits[:, 5], digits[:, 12:15] @ np.array([100, 10, 1])


def read_tracks(path: pathlib.Path, key: str, num_names: int) -> np.ndarray:
  """Reads a tracks_*_info.mat table and checks its rows point into the name list.

  Returns:
    int64 `[num_tracklets, 4]`: start, end (1-based, inclusive), pid, cam (1-based).

  Raises:
    DatasetError: missing/corrupt file, wrong shape, or a row whose range is empty or out of the list.
  """
  what = f'`{key}`, rows of [start, end, pid, cam] (1-based) into a list of {num_names} names'
  tracks = common.load_mat(path, key, what)
  if tracks.ndim != 2 or tracks.shape[1] != 4 or tracks.shape[0] == 0:
    raise DatasetError(f'{path}: {key} has shape {tracks.shape}; expected [num_tracklets, 4]')
  tracks = tracks.astype(np.int64)
  start, end = tracks[:, 0], tracks[:, 1]
  empty = np.flatnonzero(end < start)
  if empty.size:
    raise DatasetError(f'{path}: {key} row {empty[0] + 1}: tracklet has no frames (end < start)')
  outside = np.flatnonzero((start < 1) | (end > num_names))
  if outside.size:
    raise DatasetError(f'{path}: {key} row {outside[0] + 1} points outside the {num_names} frame names')
  return tracks


def build_tracklets(
    root: pathlib.Path, folder: str, names_path: pathlib.Path, tracks_path: pathlib.Path, key: str
) -> tuple[Tracklet, ...]:
  """Tracklets of one MARS subset with frame paths root/folder/<name[:4]>/<name> in temporal order.

  Raises:
    DatasetError: bad name list or track table, or a tracklet whose names disagree with its pid/camera.
  """
  names, name_pid, name_cam, name_frame = parse_names(names_path)
  tracks = read_tracks(tracks_path, key, len(names))
  lengths = tracks[:, 1] - tracks[:, 0] + 1
  owner = np.repeat(np.arange(len(tracks)), lengths)  # tracklet of each listed frame
  rows = np.arange(lengths.sum()) - np.repeat(np.cumsum(lengths) - lengths, lengths) + tracks[owner, 0] - 1
  wrong = np.flatnonzero((name_pid[rows] != tracks[owner, 2]) | (name_cam[rows] != tracks[owner, 3]))
  if wrong.size:
    t = owner[wrong[0]]
    raise DatasetError(
        f'{tracks_path}: {key} row {t + 1} (pid {tracks[t, 2]}, cam {tracks[t, 3]}) includes '
        f'{names[rows[wrong[0]]]!r} of {names_path.name}; expected names of that pid and camera'
    )
  rows = rows[np.lexsort((name_frame[rows], owner))]  # temporal order inside each tracklet
  base = str(root / folder) + os.sep
  paths = [f'{base}{names[i][:4]}{os.sep}{names[i]}' for i in rows.tolist()]
  bounds = np.concatenate([[0], np.cumsum(lengths)]).tolist()
  return tuple(
      Tracklet(tuple(paths[bounds[t]:bounds[t + 1]]), int(pid), int(cam) - 1)
      for t, (pid, cam) in enumerate(zip(tracks[:, 2].tolist(), tracks[:, 3].tolist()))
  )


def galleries(test_pids: np.ndarray, query: np.ndarray) -> dict[str, np.ndarray]:
  """The three MARS gallery conventions as int64 index arrays into the test tracklets (see module doc)."""
  is_query = np.zeros(len(test_pids), dtype=bool)
  is_query[query] = True
  rest = np.flatnonzero(~is_query & (test_pids != -1))
  return {
      'paper': np.concatenate([query, rest]).astype(np.int64),
      'torchreid': rest.astype(np.int64),
      'official': np.arange(len(test_pids), dtype=np.int64),
  }


def load(root: str | pathlib.Path, *, split: int = 0) -> VideoReIDDataset:
  """Reads MARS from its info/ folder (frames are listed, not opened).

  Args:
    root: folder holding info/ (and bbox_train/, bbox_test/ for training or evaluation).
    split: must be 0 (MARS has one fixed split).

  Returns:
    VideoReIDDataset: 8,298 training tracklets (625 ids relabelled 0..624), 12,180 test tracklets,
    1,980 queries and the galleries 'paper' (11,310), 'torchreid' (9,330), 'official' (12,180).

  Raises:
    DatasetError: missing root or info/ file, corrupt .mat, malformed name list, inconsistent track table,
      query index out of range, or split != 0.
  """
  root = common.require_dir(pathlib.Path(root), 'a MARS root holding info/')
  info = common.require_dir(root / 'info', 'the MARS info/ folder (train_name.txt, tracks_*_info.mat, ...)')
  common.check_split(split, 1, info)
  train = build_tracklets(
      root, 'bbox_train', info / 'train_name.txt', info / 'tracks_train_info.mat', 'track_train_info'
  )
  test = build_tracklets(
      root, 'bbox_test', info / 'test_name.txt', info / 'tracks_test_info.mat', 'track_test_info'
  )
  query_path = info / 'query_IDX.mat'
  query = common.load_mat(query_path, 'query_IDX', '`query_IDX`, 1-based rows of track_test_info')
  query = query.ravel().astype(np.int64) - 1
  if query.size == 0 or query.min() < 0 or query.max() >= len(test) or len(np.unique(query)) != query.size:
    raise DatasetError(f'{query_path}: query_IDX must hold distinct 1-based rows in 1..{len(test)}')
  test_pids = np.array([t.pid for t in test])
  if (test_pids[query] == -1).any():
    raise DatasetError(f'{query_path}: query_IDX selects a junk (pid -1) tracklet; expected real identities')
  return VideoReIDDataset(
      name='mars', train=common.relabel(train), test=test, query=query, galleries=galleries(test_pids, query)
  )
