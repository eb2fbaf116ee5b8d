"""DukeMTMC-VideoReID reader (Wu et al., "Exploit the Unknown Gradually", CVPR 2018; Ristani et al. 2016).

Layout under `root` (the unzipped DukeMTMC-VideoReID folder):

  train/<pid>/<tracklet>/<pid>_C<cam>_F<frame>_X<x>.jpg      e.g. train/0001/0001/0001_C6_F0099_X30823.jpg
  query/<pid>/<tracklet>/...                                 (older releases: 0001C6F0099X30823.jpg)
  gallery/<pid>/<tracklet>/...

Protocol (as released and read by deep-person-reid's `DukeMTMCVidReID`): 702 training identities (2,196
tracklets, pids relabelled), 702 query tracklets and 2,636 gallery tracklets (702 + 408 distractor
identities). The camera comes from the frame names (C1..C8 -> camid 0..7) and must agree across a
tracklet; frames are ordered by the F number. Test = query tracklets then gallery tracklets; query and the
'cross_camera' gallery are those two ranges.
"""

from __future__ import annotations

import pathlib
import re

import numpy as np

from lstrl_jax.data.datasets import common
from lstrl_jax.data.index import DatasetError, Tracklet, VideoReIDDataset

SUBSETS = ('train', 'query', 'gallery')
_ID = re.compile(r'^\d+$')
_FRAME = re.compile(r'C\d+_?F(\d+)')
_CAMERA = re.compile(r'^\d+_?C(\d+)_?F\d+')


def read_subset(folder: pathlib.Path) -> list[Tracklet]:
  """Tracklets under folder/<pid>/<tracklet>/ (sorted pid and tracklet folders), original pids.

  Raises:
    DatasetError: missing folder, non-numeric pid folder, empty tracklet, frame name without camera and
      frame number, or frames of one tracklet from different cameras.
  """
  common.require_dir(folder, 'a DukeMTMC-VideoReID subset folder of <pid>/<tracklet>/*.jpg')
  tracklets = []
  for pid_dir in common.sorted_subdirs(folder):
    if not _ID.match(pid_dir):
      raise DatasetError(f'{folder / pid_dir}: unexpected folder; expected a numeric pid folder like 0001')
    for tracklet_dir in common.sorted_subdirs(folder / pid_dir):
      path = folder / pid_dir / tracklet_dir
      frames = common.tracklet_frames(path, _FRAME)
      cameras = {_CAMERA.match(pathlib.Path(f).name) for f in frames}
      if None in cameras:
        raise DatasetError(f'{path}: frame name without camera; expected <pid>_C<cam>_F<frame>_X<x>.jpg')
      cameras = {int(m.group(1)) for m in cameras}
      if len(cameras) != 1 or min(cameras) < 1:
        raise DatasetError(f'{path}: frames from cameras {sorted(cameras)}; expected one camera C1..C8')
      tracklets.append(Tracklet(frames, int(pid_dir), cameras.pop() - 1))
  if not tracklets:
    raise DatasetError(f'{folder}: no tracklets; expected <pid>/<tracklet>/*.jpg')
  return tracklets


def load(root: str | pathlib.Path, *, split: int = 0) -> VideoReIDDataset:
  """Reads DukeMTMC-VideoReID (frames are listed, not opened).

  Args:
    root: folder holding train/, query/ and gallery/.
    split: must be 0 (one fixed split).

  Returns:
    VideoReIDDataset with training pids relabelled, test = query tracklets then gallery tracklets,
    query = the first range, galleries {'cross_camera': the second}.

  Raises:
    DatasetError: missing root or subset folder, malformed layout, empty tracklet, or split != 0.
  """
  root = common.require_dir(pathlib.Path(root), 'a DukeMTMC-VideoReID root holding train/, query/, gallery/')
  common.check_split(split, 1, root)
  train, query, gallery = (read_subset(root / subset) for subset in SUBSETS)
  return VideoReIDDataset(
      name='duke', train=common.relabel(train), test=tuple(query + gallery),
      query=np.arange(len(query), dtype=np.int64),
      galleries={'cross_camera': np.arange(len(query), len(query) + len(gallery), dtype=np.int64)},
  )
