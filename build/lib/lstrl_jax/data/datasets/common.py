"""Helpers every dataset reader shares: checked paths, sorted listings, frame ordering, pid relabelling.

All of them raise `DatasetError` with one line naming the offending path and what was expected, so a reader
never lets a bare `FileNotFoundError`, `KeyError` or `AssertionError` escape.
"""

from __future__ import annotations

import os
import pathlib
import re
from typing import Callable, Iterable, Sequence

import numpy as np
import scipy.io

from lstrl_jax.data.index import DatasetError, Tracklet

IMAGE_SUFFIXES = ('.png', '.jpg', '.jpeg')


def require_dir(path: pathlib.Path, what: str) -> pathlib.Path:
  """Returns `path` if it is a directory.

  Raises:
    DatasetError: naming `path` and `what` (e.g. 'the MARS info/ folder') when it is missing.
  """
  if not path.is_dir():
    raise DatasetError(f'{path}: directory not found; expected {what}')
  return path


def require_file(path: pathlib.Path, what: str) -> pathlib.Path:
  """Returns `path` if it is a regular file.

  Raises:
    DatasetError: naming `path` and `what` when it is missing.
  """
  if not path.is_file():
    raise DatasetError(f'{path}: file not found; expected {what}')
  return path


def sorted_subdirs(path: pathlib.Path) -> list[str]:
  """Names of the sub-directories of `path`, sorted (hidden entries such as .DS_Store skipped)."""
  with os.scandir(path) as entries:
    return sorted(e.name for e in entries if e.is_dir() and not e.name.startswith('.'))


def frame_files(path: pathlib.Path) -> list[str]:
  """Names of the image files (.png/.jpg/.jpeg, any case) directly inside `path`, in no particular order."""
  with os.scandir(path) as entries:
    return [
        e.name for e in entries
        if e.is_file() and not e.name.startswith('.') and e.name.lower().endswith(IMAGE_SUFFIXES)
    ]


def sort_by_frame_number(names: Iterable[str], pattern: re.Pattern[str], where: pathlib.Path) -> list[str]:
  """Sorts frame file names by the frame number `pattern` captures (group 1), never by raw listing order.

  Args:
    names: frame file names (basenames).
    pattern: compiled regex whose first group is the decimal frame number, matched with `search`.
    where: the tracklet directory, for the error message.

  Returns:
    The names in temporal order (ties, which a valid layout never has, broken by name).

  Raises:
    DatasetError: if a name carries no frame number.
  """
  keyed = []
  for name in names:
    match = pattern.search(name)
    if match is None:
      raise DatasetError(f'{where / name}: cannot parse a frame number; expected a name matching {pattern.pattern!r}')
    keyed.append((int(match.group(1)), name))
  return [name for _, name in sorted(keyed)]


def tracklet_frames(path: pathlib.Path, pattern: re.Pattern[str]) -> tuple[str, ...]:
  """Paths (as strings) of the frames in tracklet directory `path`, in temporal order.

  Raises:
    DatasetError: if `path` is not a directory or holds no image file.
  """
  require_dir(path, 'a tracklet directory of image frames')
  names = frame_files(path)
  if not names:
    raise DatasetError(f'{path}: tracklet has no frames; expected at least one .png/.jpg image')
  return tuple(str(path / name) for name in sort_by_frame_number(names, pattern, path))


def relabel(tracklets: Sequence[Tracklet]) -> tuple[Tracklet, ...]:
  """Maps training pids to 0..N-1 in sorted order of the original ids (camids and frames unchanged)."""
  label = {pid: i for i, pid in enumerate(sorted({t.pid for t in tracklets}))}
  return tuple(Tracklet(t.frames, label[t.pid], t.camid) for t in tracklets)


def load_mat(path: pathlib.Path, key: str, what: str) -> np.ndarray:
  """Reads array `key` from a MATLAB v5 .mat file with `scipy.io.loadmat`.

  Raises:
    DatasetError: if the file is missing, unreadable/corrupt, or lacks `key`.
  """
  require_file(path, what)
  try:
    contents = scipy.io.loadmat(str(path))
  except Exception as e:  # scipy raises ValueError, TypeError, OSError... on a corrupt file.
    raise DatasetError(f'{path}: cannot read .mat file ({type(e).__name__}); expected {what}') from e
  if key not in contents:
    raise DatasetError(f'{path}: key {key!r} not found; expected {what}')
  return np.asarray(contents[key])


def check_split(split: int, num_splits: int, source: pathlib.Path) -> None:
  """Raises DatasetError unless 0 <= split < num_splits (the splits defined by `source`)."""
  if not 0 <= split < num_splits:
    raise DatasetError(f'{source}: split {split} out of range; expected 0..{num_splits - 1}')


def cross_camera_test(
    persons: Sequence[str],
    query_frames: Callable[[str], tuple[str, ...]],
    gallery_frames: Callable[[str], tuple[str, ...]],
    pid_of: Callable[[str], int],
) -> tuple[tuple[Tracklet, ...], np.ndarray, np.ndarray]:
  """Builds the test set of a two-camera dataset: one query tracklet (camid 0) and one gallery (camid 1) each.

  Args:
    persons: test person folder names, sorted.
    query_frames / gallery_frames: person -> frame paths in the query / gallery camera.
    pid_of: person -> original pid.

  Returns:
    (test, query, gallery): test tracklets (all query tracklets, then all gallery tracklets, persons in the
    given order) and int64 index arrays `[len(persons)]` into it.
  """
  queries = [Tracklet(query_frames(p), pid_of(p), 0) for p in persons]
  gallery = [Tracklet(gallery_frames(p), pid_of(p), 1) for p in persons]
  n = len(persons)
  return tuple(queries + gallery), np.arange(n, dtype=np.int64), np.arange(n, 2 * n, dtype=np.int64)
