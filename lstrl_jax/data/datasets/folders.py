"""Own data ('folders'): a labelled layout built with mkdir and mv, or a CSV manifest (DESIGN.md section 6).

Layout under `root` (names are any strings; hidden entries are skipped):

  <root>/train/<pid>/<camera>/<tracklet>/<frames>
  <root>/query/<pid>/<camera>/<tracklet>/<frames>
  <root>/gallery/<pid>/<camera>/<tracklet>/<frames>

or `root` is a CSV file with the header `frames,pid,camid,subset` and one row per tracklet: `frames` a folder
holding the tracklet's images, or a glob pattern of them (relative paths are read from the CSV's folder);
`subset` one of train / query / gallery.

Frames: .png / .jpg / .jpeg, in natural order of their names (digit runs compared as numbers, so
`f2.png` comes before `f10.png`). Cameras: camid 0..C-1 in natural order of the camera names over the whole
dataset, so a camera has the same camid in every subset. pids: a pid named by a decimal integer keeps that
number (`0042` -> 42); other names are numbered after the largest such integer, in natural order. As in MARS,
pid `-1` marks junk tracklets (kept out of the gallery: neither counted nor ranked) and `0` distractors
(ordinary non-matches in the gallery); neither may be a query or a training tracklet. Training pids are
relabelled 0..N-1 (sorted original ids). Within a subset, tracklets are ordered by (pid number, camera,
tracklet name or frames entry), names naturally, so the index does not depend on listing or row order.

Scoring: 'cross_camera' (query against gallery; same pid and camera are junk). Every problem raises a
`DatasetError` of one line naming the path (or CSV file and line) and what was expected.
"""

from __future__ import annotations

import csv
import glob
import os
import pathlib
import re
from typing import Iterable, NamedTuple, Sequence

import numpy as np

from lstrl_jax.data.datasets import common
from lstrl_jax.data.index import DatasetError, Tracklet, VideoReIDDataset

SUBSETS = ('train', 'query', 'gallery')
MANIFEST_COLUMNS = ('frames', 'pid', 'camid', 'subset')
JUNK, DISTRACTOR = -1, 0
_INTEGER = re.compile(r'^[+-]?\d+$')
_DIGITS = re.compile(r'(\d+)')


class Entry(NamedTuple):
  """One tracklet as read: subset, pid and camera names, a sort key for the tracklet, frame paths in order."""

  subset: str
  pid: str
  camera: str
  name: str
  frames: tuple[str, ...]


def natural_key(name: str) -> tuple:
  """Sort key comparing runs of digits as numbers: 'f2' < 'f10' < 'g1' (case kept)."""
  return tuple((0, int(part), part) if part.isdigit() else (1, 0, part) for part in _DIGITS.split(name))


def _images(folder: pathlib.Path) -> list[str]:
  """Paths of the frames of a tracklet folder, natural order; strict about what else it holds.

  Raises:
    DatasetError: a sub-folder or non-image file inside, or no image at all.
  """
  with os.scandir(folder) as entries:
    visible = [e for e in entries if not e.name.startswith('.')]
  for e in visible:
    if e.is_dir() or not e.name.lower().endswith(common.IMAGE_SUFFIXES):
      raise DatasetError(f'{folder / e.name}: unexpected {"folder" if e.is_dir() else "file"} in a tracklet; '
                         'expected only image frames (.png/.jpg/.jpeg)')
  if not visible:
    raise DatasetError(f'{folder}: tracklet has no frames; expected at least one .png/.jpg/.jpeg image')
  return [str(folder / n) for n in sorted((e.name for e in visible), key=natural_key)]


def _subdirs(path: pathlib.Path, what: str) -> list[str]:
  """Names of the folders in `path` (natural order); any visible file there is an error."""
  with os.scandir(path) as entries:
    visible = [e for e in entries if not e.name.startswith('.')]
  for e in visible:
    if not e.is_dir():
      raise DatasetError(f'{path / e.name}: unexpected file; expected only {what} folders here')
  return sorted((e.name for e in visible), key=natural_key)


def read_layout(root: pathlib.Path) -> list[Entry]:
  """Every tracklet of `<root>/{train,query,gallery}/<pid>/<camera>/<tracklet>/`.

  Raises:
    DatasetError: a missing subset folder, a stray file, an empty pid or camera folder, a bad tracklet.
  """
  entries = []
  for subset in SUBSETS:
    top = common.require_dir(root / subset, f'the {subset}/ folder of <pid>/<camera>/<tracklet>/ folders')
    for pid in _subdirs(top, '<pid>'):
      cameras = _subdirs(top / pid, '<camera>')
      if not cameras:
        raise DatasetError(f'{top / pid}: no camera folders; expected <camera>/<tracklet>/<frames>')
      for camera in cameras:
        tracklets = _subdirs(top / pid / camera, '<tracklet>')
        if not tracklets:
          raise DatasetError(f'{top / pid / camera}: no tracklet folders; expected <tracklet>/<frames>')
        for name in tracklets:
          entries.append(Entry(subset, pid, camera, name, tuple(_images(top / pid / camera / name))))
  return entries


def _manifest_frames(pattern: str, base: pathlib.Path, where: str) -> tuple[str, ...]:
  """Frames of one manifest row: the images in a folder, or the image files a glob pattern matches."""
  path = pathlib.Path(pattern) if os.path.isabs(pattern) else base / pattern
  if glob.has_magic(pattern):
    names = [p for p in glob.glob(str(path)) if p.lower().endswith(common.IMAGE_SUFFIXES) and os.path.isfile(p)]
    if not names:
      raise DatasetError(f'{where}: pattern {str(path)!r} matches no .png/.jpg/.jpeg file')
    return tuple(sorted(names, key=natural_key))
  if not path.is_dir():
    raise DatasetError(f'{where}: {path}: directory not found; expected a tracklet folder or a glob of frames')
  return tuple(_images(path))


def read_manifest(path: pathlib.Path) -> list[Entry]:
  """Every row of a CSV manifest (header `frames,pid,camid,subset`; relative paths from the CSV's folder).

  Raises:
    DatasetError: unreadable file, wrong header, an empty field, an unknown subset, frames not found.
  """
  try:
    with open(path, newline='', encoding='utf-8') as f:
      rows = list(csv.reader(f))
  except (OSError, UnicodeDecodeError, csv.Error) as e:
    raise DatasetError(f'{path}: cannot read the CSV manifest ({type(e).__name__}: {e})') from e
  if not rows or tuple(c.strip() for c in rows[0]) != MANIFEST_COLUMNS:
    raise DatasetError(f'{path}:1: header {rows[0] if rows else "(empty file)"}; expected '
                       f'{",".join(MANIFEST_COLUMNS)}')
  entries = []
  for line, row in enumerate(rows[1:], start=2):
    where = f'{path}:{line}'
    if not any(c.strip() for c in row):
      continue
    if len(row) != len(MANIFEST_COLUMNS) or not all(c.strip() for c in row):
      raise DatasetError(f'{where}: {row}; expected 4 non-empty fields {",".join(MANIFEST_COLUMNS)}')
    frames, pid, camera, subset = (c.strip() for c in row)
    if subset not in SUBSETS:
      raise DatasetError(f'{where}: subset {subset!r}; expected one of {", ".join(SUBSETS)}')
    entries.append(Entry(subset, pid, camera, frames, _manifest_frames(frames, path.parent, where)))
  return entries


def pid_numbers(names: Iterable[str], where: str) -> dict[str, int]:
  """pid name -> int: integers keep their value, other names follow the largest one in natural order.

  Raises:
    DatasetError: two names for one number (e.g. '7' and '007').
  """
  names = sorted(set(names), key=natural_key)
  numbers = {n: int(n) for n in names if _INTEGER.match(n)}
  seen = {}
  for name, number in numbers.items():
    if number in seen:
      raise DatasetError(f'{where}: pids {seen[number]!r} and {name!r} are the same number; expected one name')
    seen[number] = name
  start = max(max(numbers.values(), default=0), 0) + 1
  others = [n for n in names if n not in numbers]
  return dict(numbers, **{n: start + i for i, n in enumerate(others)})


def build(entries: Sequence[Entry], source: pathlib.Path) -> VideoReIDDataset:
  """The dataset index of read entries (see the module docstring for ids and order).

  Raises:
    DatasetError: an empty subset, a junk/distractor pid where it cannot be, or the same tracklet twice.
  """
  cameras = {c: i for i, c in enumerate(sorted({e.camera for e in entries}, key=natural_key))}
  for subset in SUBSETS:
    if not any(e.subset == subset for e in entries):
      raise DatasetError(f'{source}: no {subset} tracklets; expected at least one')
  seen = {}
  for e in entries:
    if e.frames in seen:
      raise DatasetError(f'{source}: tracklet {e.name!r} ({e.subset}) repeats the frames of {seen[e.frames]!r}')
    seen[e.frames] = e.name
  train_pids = pid_numbers((e.pid for e in entries if e.subset == 'train'), f'{source} (train)')
  test_pids = pid_numbers((e.pid for e in entries if e.subset != 'train'), f'{source} (query, gallery)')
  by_subset = {s: sorted((e for e in entries if e.subset == s), key=lambda e: (
      (train_pids if s == 'train' else test_pids)[e.pid], natural_key(e.camera), natural_key(e.name)))
               for s in SUBSETS}
  for subset, pids in (('train', train_pids), ('query', test_pids)):
    for e in by_subset[subset]:
      if pids[e.pid] in (JUNK, DISTRACTOR):
        raise DatasetError(f'{source}: {subset} pid {e.pid!r} (tracklet {e.name!r}) is junk (-1) or distractor '
                           '(0); expected those only in the gallery')
  train = common.relabel([Tracklet(e.frames, train_pids[e.pid], cameras[e.camera]) for e in by_subset['train']])
  test = [Tracklet(e.frames, test_pids[e.pid], cameras[e.camera]) for s in ('query', 'gallery') for e in by_subset[s]]
  num_query = len(by_subset['query'])
  gallery = np.asarray([i for i in range(num_query, len(test)) if test[i].pid != JUNK], np.int64)
  return VideoReIDDataset(name='folders', train=train, test=tuple(test), query=np.arange(num_query, dtype=np.int64),
                          galleries={'cross_camera': gallery})


def load(root: str | pathlib.Path, *, split: int = 0) -> VideoReIDDataset:
  """Reads own data: the folder layout under `root`, or the CSV manifest `root` names.

  Args:
    root: a folder holding train/, query/ and gallery/, or a `.csv` manifest file.
    split: must be 0 (own data has one split).

  Returns:
    VideoReIDDataset named 'folders': train (pids relabelled), test = query then gallery tracklets, query
    indices, galleries {'cross_camera': the gallery tracklets except pid -1}.

  Raises:
    DatasetError: see `read_layout`, `read_manifest` and `build`; one line naming the path.
  """
  root = pathlib.Path(root)
  common.check_split(split, 1, root)
  if root.suffix.lower() == '.csv':
    return build(read_manifest(common.require_file(root, 'a CSV manifest with columns frames,pid,camid,subset')),
                 root)
  common.require_dir(root, 'own data: train/, query/, gallery/ of <pid>/<camera>/<tracklet>/, or a .csv manifest')
  return build(read_layout(root), root)
