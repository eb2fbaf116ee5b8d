"""Evaluates trained LSTRL checkpoints: `python eval.py --ckpt runs/mars`.

Flags: `--ckpt` a training workdir (its latest checkpoint) or a checkpoint step directory, or several
separated by commas (one per split of iLIDS-VID / PRID-2011: each table is printed, then their mean);
`--config.<key>=<value>` overrides the config stored in the checkpoint (e.g. `--config.data_dir=...`,
`--config.eval_batch_size=64`); `--clip_selection` rrs | dense (default: the config's
final_clip_selection); `--rerank` k-reciprocal re-ranking; `--save_features out.npz`; `--pictures` writes
ranked-results sheets and Fig. 5 into `<workdir>/pictures/`. Everything else happens in
`lstrl_jax.evaluation.evaluator.evaluate_checkpoint`. A missing or unreadable checkpoint, a checkpoint that
does not fit the dataset, an empty query set or another bad value prints one line on stderr and exits 1
(library logging is limited to errors unless `--verbosity` is given).
"""

import pathlib

from absl import flags
from absl import logging
from ml_collections import config_flags

from configs import default
from lstrl_jax import cli
from lstrl_jax.data.index import DatasetError
from lstrl_jax.evaluation import evaluator
from lstrl_jax.train.checkpoint import CheckpointError

_CKPT = flags.DEFINE_string('ckpt', None, 'Workdir or checkpoint step directory; several separated by commas.')
_CONFIG = config_flags.DEFINE_config_dict('config', default.get_config(), 'Overrides of the checkpoint config.')
_CLIP_SELECTION = flags.DEFINE_enum('clip_selection', None, ['rrs', 'dense'], 'Test-time clip selection.')
_RERANK = flags.DEFINE_bool('rerank', False, 'Apply k-reciprocal re-ranking (k1=20, k2=6, lambda=0.3).')
_SAVE_FEATURES = flags.DEFINE_string('save_features', None, 'Write features, pids, camids, frames as .npz.')
_PICTURES = flags.DEFINE_bool('pictures', False, 'Write ranked-results sheets and Fig. 5 PNGs.')
flags.mark_flag_as_required('ckpt')
ERRORS = (CheckpointError, DatasetError, ValueError)


def _features_path(index: int, count: int) -> pathlib.Path | None:
  """--save_features for checkpoint `index` of `count` (suffixed _<index> when there are several)."""
  if not _SAVE_FEATURES.value:
    return None
  path = pathlib.Path(_SAVE_FEATURES.value)
  return path if count == 1 else path.with_name(f'{path.stem}_{index}{path.suffix}')


def main(argv):
  del argv  # cli.run refuses positional arguments
  if not flags.FLAGS['verbosity'].present:
    logging.set_verbosity(logging.ERROR)  # absl apps log INFO to stderr; keep errors to one line
  paths = [p for p in _CKPT.value.split(',') if p]
  overrides = config_flags.get_override_values(flags.FLAGS['config'])
  results = []
  for index, path in enumerate(paths):
    results.append(evaluator.evaluate_checkpoint(
        path, overrides=overrides, clip_selection=_CLIP_SELECTION.value, rerank=_RERANK.value,
        features_path=_features_path(index, len(paths)), pictures=_PICTURES.value, progress=True))
    print(evaluator.format_results(results[-1]), end='\n\n', flush=True)
    if _PICTURES.value:
      print(f'pictures: {evaluator.workdir_of(path) / "pictures"}', end='\n\n', flush=True)
  if len(results) > 1:
    print(evaluator.format_results(evaluator.mean_over_splits(results)))


if __name__ == '__main__':
  cli.run(main, errors=ERRORS)
