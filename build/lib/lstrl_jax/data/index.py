"""The common index every dataset reader produces.

A dataset is a list of tracklets (frame paths in temporal order, pid, camid) split into a training set and
a test set; query and gallery are index arrays into the test set, the gallery chosen by a scoring
convention (DESIGN.md section 3). Images are not opened here: readers only list paths.
"""

from __future__ import annotations

import dataclasses
from typing import Mapping

import numpy as np


class DatasetError(ValueError):
  """A dataset root, layout, protocol file or image is not what the reader expects.

  The message is one line naming the offending path or key and what was expected, so entry points can
  print it and exit non-zero without a stack trace.
  """


@dataclasses.dataclass(frozen=True)
class Tracklet:
  """One tracklet: the frames of one person seen by one camera.

  Attributes:
    frames: frame file paths in temporal order (sorted by frame number, never raw directory order).
    pid: person identity. Training tracklets carry relabelled pids 0..N-1 (sorted order of the original
      ids); test tracklets carry the original ids, with -1 for junk and 0 for distractors on MARS.
    camid: camera index, 0-based.
  """

  frames: tuple[str, ...]
  pid: int
  camid: int


@dataclasses.dataclass(frozen=True)
class VideoReIDDataset:
  """A dataset under one protocol (and, for iLIDS-VID and PRID-2011, one split).

  Attributes:
    name: dataset name, e.g. 'mars', 'ilidsvid'.
    train: training tracklets, pids relabelled 0..num_train_pids-1.
    test: every tracklet whose feature the evaluator extracts (query and gallery draw from it).
    query: int64 `[Q]` indices into `test`.
    galleries: scoring convention name -> int64 `[G]` indices into `test`. MARS has 'paper',
      'torchreid' and 'official'; the other datasets have 'cross_camera'.
    split: split index for datasets with several splits (iLIDS-VID, PRID-2011), else 0.
  """

  name: str
  train: tuple[Tracklet, ...]
  test: tuple[Tracklet, ...]
  query: np.ndarray
  galleries: Mapping[str, np.ndarray]
  split: int = 0

  @property
  def num_train_pids(self) -> int:
    """Number of training identities N (the classifier's output size)."""
    return len({t.pid for t in self.train})
