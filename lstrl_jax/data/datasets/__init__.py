"""Dataset registry: `load_dataset(name, root, *, split=0)` -> `VideoReIDDataset` (DESIGN.md section 3).

`reader_options(config)` gives the reader options a config may hold (`prid_min_frames`, configs/default.py):
`load_dataset(config.dataset, config.data_dir, split=config.split, **reader_options(config))`.

Readers live in `lstrl_jax/data/datasets/<name>.py`; each lists frame paths without opening any image.
'demo' reads the generated demo dataset (`python -m lstrl_jax.data.demo`), which uses the iLIDS-VID layout.
"""

from __future__ import annotations

import pathlib
from typing import Callable

from lstrl_jax.data.datasets import duke, folders, ilidsvid, lsvid, mars, prid
from lstrl_jax.data.index import DatasetError, VideoReIDDataset

_READERS: dict[str, Callable[..., VideoReIDDataset]] = {
    'mars': mars.load,
    'ilidsvid': ilidsvid.load,
    'prid': prid.load,
    'lsvid': lsvid.load,
    'duke': duke.load,
    'demo': lambda root, *, split=0: ilidsvid.load(root, split=split, name='demo'),
    'folders': folders.load,
}

NAMES = tuple(_READERS)


def load_dataset(name: str, root: str | pathlib.Path, *, split: int = 0, **options) -> VideoReIDDataset:
  """Reads dataset `name` from its download layout under `root`.

  Args:
    name: one of NAMES ('mars', 'ilidsvid', 'prid', 'lsvid', 'duke', 'demo').
    root: dataset root, laid out as DESIGN.md section 3 and data/README.md describe.
    split: split index for iLIDS-VID / PRID-2011 / demo (0..9); the other datasets accept only 0.
    **options: reader options, e.g. `min_frames` for 'prid' (`prid.load`).

  Returns:
    The dataset index: tracklets with frame paths in temporal order, query and gallery index arrays.

  Raises:
    DatasetError: unknown name, missing root or files, wrong layout, corrupt protocol file, empty
      tracklet, or split out of range; the message is one line naming the path and what was expected.
  """
  if name not in _READERS:
    raise DatasetError(f'dataset {name!r}: unknown; expected one of {", ".join(NAMES)}')
  return _READERS[name](root, split=split, **options)


def reader_options(config) -> dict:
  """The keyword options of `load_dataset` a config holds: {'min_frames': config.prid_min_frames} for 'prid'.

  Args:
    config: an ml_collections.ConfigDict (a checkpoint's older config may lack `prid_min_frames`).
  """
  if config.dataset == 'prid' and 'prid_min_frames' in config:
    return {'min_frames': config.prid_min_frames}
  return {}
