"""Evaluates trained LSTRL checkpoints: `python -m lstrl_jax.eval --ckpt runs/mars` (or `python eval.py`).

Flags: `--ckpt` a training workdir (its latest checkpoint) or a checkpoint step directory, or several
separated by commas (one per split of iLIDS-VID / PRID-2011: each table is printed, then their mean);
`--config.<key>=<value>` overrides the config stored in the checkpoint (e.g. `--config.data_dir=...` to read
moved data, `--config.eval_batch_size=64`); `--clip_selection` rrs | dense (default: the config's
final_clip_selection); `--rerank` k-reciprocal re-ranking (k1=`--rerank_k1`, k2=`--rerank_k2`, lambda 0.3;
refused in one line when a gallery holds fewer than 2 x k1 tracklets, see `evaluator.check_rerank`);
`--save_features out.npz`; `--pictures` writes ranked-results sheets and Fig. 5 into `<workdir>/pictures/`,
for the best, median and worst queries by AP unless `--picture_queries` (positions in the query set) or
`--picture_pids` pick them. Everything else happens in `lstrl_jax.evaluation.evaluator.evaluate_checkpoint`.
A missing or unreadable checkpoint, a checkpoint that does not fit the dataset, an empty query set or another
bad value prints one line on stderr and exits 1; a flag mistake exits 2 (DESIGN.md section 6). Library
logging is limited to errors unless `--verbosity` is given.
"""

import pathlib

from absl import flags
from absl import logging
from ml_collections import config_flags

from lstrl_jax import cli
from lstrl_jax.configs import default

FLAGS = flags.FLAGS


def define_flags() -> None:
  """Defines the flags; `--config.<key>` overrides are typed by configs/default.py's keys."""
  flags.DEFINE_string('ckpt', None, 'Workdir or checkpoint step directory; several separated by commas.')
  config_flags.DEFINE_config_dict('config', default.get_config(), 'Overrides of the checkpoint config.')
  flags.DEFINE_enum('clip_selection', None, ['rrs', 'dense'], 'Test-time clip selection.')
  flags.DEFINE_bool('rerank', False, 'Apply k-reciprocal re-ranking (Zhong et al. 2017).')
  flags.DEFINE_integer('rerank_k1', 20, 'k1 of re-ranking (paper: 20); the gallery needs >= 2 x k1 tracklets.',
                       lower_bound=1)
  flags.DEFINE_integer('rerank_k2', 6, 'k2 of re-ranking (paper: 6; 1 disables query expansion).', lower_bound=1)
  flags.DEFINE_string('save_features', None, 'Write features, pids, camids, frames as .npz.')
  flags.DEFINE_bool('pictures', False, 'Write ranked-results sheets and Fig. 5 PNGs.')
  flags.DEFINE_list('picture_queries', [], 'Queries on the pictures, as positions in the query set (0-based).')
  flags.DEFINE_list('picture_pids', [], 'Queries on the pictures, by pid (every query tracklet of each pid).')
  flags.mark_flag_as_required('ckpt')


def help_config(argv: list[str]) -> tuple[str, object]:
  """What `--help` shows: the keys a `--config.<key>=` may override."""
  del argv
  return ('config keys that --config.<key>=<value> may override (the values come from the checkpoint; shown '
          'here are\nconfigs/default.py\'s):', default.get_config())


def errors() -> tuple[type[BaseException], ...]:
  """The user's data, checkpoint and value errors: one line, exit status 1."""
  from lstrl_jax.data.index import DatasetError  # pylint: disable=g-import-not-at-top
  from lstrl_jax.train.checkpoint import CheckpointError  # pylint: disable=g-import-not-at-top

  return CheckpointError, DatasetError, ValueError


def _features_path(index: int, count: int) -> pathlib.Path | None:
  """--save_features for checkpoint `index` of `count` (suffixed _<index> when there are several)."""
  if not FLAGS.save_features:
    return None
  path = pathlib.Path(FLAGS.save_features)
  return path if count == 1 else path.with_name(f'{path.stem}_{index}{path.suffix}')


def _integers(values: list[str], flag: str) -> list[int]:
  """A list flag's values as ints; a non-integer is a usage error naming the flag."""
  try:
    return [int(v) for v in values]
  except ValueError as error:
    raise cli.UsageError(f'--{flag}: expected integers separated by commas, got {",".join(values)}') from error


def main(argv: list[str]) -> None:
  """Evaluates each `--ckpt` and prints its table (and the mean over several)."""
  del argv  # cli.run refuses positional arguments
  cli.quiet_logging(logging.ERROR)
  picture_queries = _integers(FLAGS.picture_queries, 'picture_queries')
  picture_pids = _integers(FLAGS.picture_pids, 'picture_pids')
  from lstrl_jax.evaluation import evaluator  # pylint: disable=g-import-not-at-top

  paths = [p for p in FLAGS.ckpt.split(',') if p]
  overrides = config_flags.get_override_values(FLAGS['config'])
  results = []
  for index, path in enumerate(paths):
    results.append(evaluator.evaluate_checkpoint(
        path, overrides=overrides, clip_selection=FLAGS.clip_selection, rerank=FLAGS.rerank,
        rerank_k=(FLAGS.rerank_k1, FLAGS.rerank_k2), features_path=_features_path(index, len(paths)),
        pictures=FLAGS.pictures, picture_queries=picture_queries, picture_pids=picture_pids, progress=True))
    print(evaluator.format_results(results[-1]), end='\n\n', flush=True)
    if FLAGS.pictures:
      print(f'pictures: {evaluator.workdir_of(path) / "pictures"}', end='\n\n', flush=True)
  if len(results) > 1:
    print(evaluator.format_results(evaluator.mean_over_splits(results)))


def run() -> None:
  """The command: `python -m lstrl_jax.eval`, `python eval.py` or the `lstrl-eval` script."""
  cli.run(main, errors=errors, define=define_flags, doc=__doc__, help_config=help_config)


if __name__ == '__main__':
  run()
