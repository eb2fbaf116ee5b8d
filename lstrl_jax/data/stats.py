r"""Prints a dataset's statistics: identities, tracklets, frames and cameras per subset, and per convention.

  python -m lstrl_jax.data.stats --config configs/default.py \
      --config.dataset=mars --config.data_dir=../shared/data/mars

Reads `config.dataset`, `config.data_dir`, `config.split` (and `prid_min_frames`); only the index is built
(no image is opened). Identities count distinct pids other than MARS's distractor pid 0 and junk pid -1;
the tracklets of those two are counted in their own columns, 'distractors' and 'junk' (deep-person-reid's
MARS statistics count pid 0 as one identity; here it is not one). The second table gives, per scoring
convention, the query and gallery sizes and how many queries have no valid match: no gallery tracklet of
the same pid from another camera (deep-person-reid skips such queries; the other conventions keep them).
A bad dataset prints one line to stderr and exits 1.
"""

from __future__ import annotations

import sys
from typing import Sequence

import ml_collections
import numpy as np
from absl import flags
from ml_collections import config_flags

from lstrl_jax import cli
from lstrl_jax.data.datasets import load_dataset, reader_options
from lstrl_jax.data.index import DatasetError, Tracklet, VideoReIDDataset

def define_flags() -> None:
  """Defines the command's flags (only when run as a program, so importing this module defines none)."""
  config_flags.DEFINE_config_file('config', None, 'Config file (configs/*.py) or shipped config name (mars, demo).',
                                  lock_config=True)
  flags.mark_flag_as_required('config')


def subset_row(tracklets: Sequence[Tracklet], relabelled: bool = False) -> dict[str, int]:
  """Counts of one subset: identities (pids other than 0 and -1), tracklets, frames, cameras, distractor
  tracklets (pid 0) and junk tracklets (pid -1).

  With `relabelled` (training tracklets, pids 0..N-1 after `common.relabel`) every pid is an identity and
  the distractor and junk columns are 0.
  """
  pids = {t.pid for t in tracklets}
  special = set() if relabelled else {0, -1}
  return {
      'identities': len(pids - special),
      'tracklets': len(tracklets),
      'frames': sum(len(t.frames) for t in tracklets),
      'cameras': len({t.camid for t in tracklets}),
      'distractors': 0 if relabelled else sum(t.pid == 0 for t in tracklets),
      'junk': 0 if relabelled else sum(t.pid == -1 for t in tracklets),
  }


def _count(values: np.ndarray, keys: np.ndarray) -> np.ndarray:
  """For each key, how often it occurs in `values` (int64 arrays; vectorised with np.unique)."""
  unique, counts = np.unique(values, return_counts=True)
  at = np.minimum(np.searchsorted(unique, keys), len(unique) - 1)
  return np.where(unique[at] == keys, counts[at], 0) if len(unique) else np.zeros(len(keys), np.int64)


def queries_without_match(dataset: VideoReIDDataset, gallery: np.ndarray) -> int:
  """Number of queries with no tracklet of the same pid from a different camera in `gallery`.

  Args:
    dataset: the dataset (its test tracklets, query indices).
    gallery: int `[G]` indices into dataset.test.

  Returns:
    The count; vectorised: same-pid gallery count minus same-(pid, camid) gallery count is 0.
  """
  pid = np.array([t.pid for t in dataset.test], dtype=np.int64)
  cam = np.array([t.camid for t in dataset.test], dtype=np.int64)
  pair = (pid + 1) * (cam.max() + 1) + cam  # (pid, camid) -> one int; pid >= -1
  q, g = dataset.query, np.asarray(gallery)
  cross_camera = _count(pid[g], pid[q]) - _count(pair[g], pair[q])
  return int((cross_camera == 0).sum())


def format_table(dataset: VideoReIDDataset, root: str) -> str:
  """The two tables `main` prints, as one string (thousands separated, columns right-aligned)."""
  header = f'{dataset.name} (split {dataset.split}) at {root}'
  subsets = [('train', dataset.train), ('query', [dataset.test[i] for i in dataset.query])]
  subsets += [(f'gallery ({k})', [dataset.test[i] for i in v]) for k, v in dataset.galleries.items()]
  columns = ('identities', 'tracklets', 'frames', 'cameras', 'distractors', 'junk')
  lines = [header, f'{"subset":<22}' + ''.join(f'{c:>12}' for c in columns)]
  for name, tracklets in subsets:
    row = subset_row(tracklets, relabelled=name == 'train')
    lines.append(f'{name:<22}' + ''.join(f'{row[c]:>12,}' for c in columns))
  columns = ('query', 'gallery', 'no match')
  lines += ['', f'{"convention":<22}' + ''.join(f'{c:>12}' for c in columns)]
  for name, gallery in dataset.galleries.items():
    values = (len(dataset.query), len(gallery), queries_without_match(dataset, gallery))
    lines.append(f'{name:<22}' + ''.join(f'{v:>12,}' for v in values))
  return '\n'.join(lines)


def run(config: ml_collections.ConfigDict) -> int:
  """Loads `config.dataset` from `config.data_dir` (split `config.split`) and prints its tables.

  Returns:
    The exit status: 0, or 1 after printing a DatasetError as one line to stderr.
  """
  try:
    dataset = load_dataset(config.dataset, config.data_dir, split=config.split, **reader_options(config))
  except DatasetError as e:
    print(f'error: {e}', file=sys.stderr)
    return 1
  print(format_table(dataset, config.data_dir))
  return 0


def main(argv: Sequence[str]) -> int:
  """Entry point (absl): `run` on the --config file with its --config.* overrides."""
  del argv  # cli.run refuses positional arguments
  return run(flags.FLAGS.config)


if __name__ == '__main__':
  cli.run(main, define=define_flags, doc=__doc__, help_config=cli.config_for_help)
