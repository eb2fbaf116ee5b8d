"""Trains and evaluates LSTRL: `python -m lstrl_jax.train --config demo --workdir runs/demo` (or `python train.py`).

Flags: `--config` a config file by path (`configs/mars.py`, `~/my.py`) or a shipped config by name (`mars`,
`demo`), optionally with a variant (`demo:smoke`), plus `--config.<key>=<value>` overrides (the config is
locked: a mistyped key is an error, with the did-you-mean); `--workdir` the run directory, where a rerun
resumes from the latest checkpoint. Paths in the config (data_dir, packed_dir, model.pretrained) are made
absolute against the working directory before anything is recorded, so the checkpoints and results.json name
the data wherever the run is later evaluated from. A workdir whose run finished (its results.json at the
final step of this config) is not trained or evaluated again: one line names its results.json. Everything
else happens in `lstrl_jax.train.trainer.train_and_evaluate`. A bad dataset, config value or checkpoint, a
workdir in use or unwritable, a failed save or a diverged loss prints one line on stderr and exits with
status 1; a flag mistake exits 2; a run stopped with a checkpoint saved (SIGTERM, Ctrl-C,
`config.stop_at_step`) says where and exits with 75 (DESIGN.md section 6). Library logging shows warnings
and errors only (`--verbosity=0` for INFO).
"""

import json
import os
import pathlib

from absl import flags
from absl import logging
from ml_collections import config_flags
import ml_collections

from lstrl_jax import cli

FLAGS = flags.FLAGS
PATH_KEYS = ('data_dir', 'packed_dir', 'model.pretrained')  # config keys holding a path ('' = unset)


def define_flags() -> None:
  """Defines --config and --workdir (both required)."""
  config_flags.DEFINE_config_file('config', None, 'Config file (configs/*.py) or shipped config name (demo, mars, '
                                  '...), optionally :smoke.', lock_config=True)
  flags.DEFINE_string('workdir', None, 'Directory for checkpoints, logs and results.')
  flags.mark_flags_as_required(['config', 'workdir'])


def absolute_paths(config: ml_collections.ConfigDict) -> None:
  """Makes the non-empty path keys of `config` (PATH_KEYS) absolute against the working directory, in place."""
  with config.unlocked():
    for dotted in PATH_KEYS:
      *parents, leaf = dotted.split('.')
      node = config
      for key in parents:
        node = node[key]
      if node[leaf]:
        node[leaf] = os.path.abspath(os.path.expanduser(node[leaf]))


def finished_run(workdir: pathlib.Path, config: ml_collections.ConfigDict) -> str | None:
  """The line saying `workdir` already holds this config's finished run, or None.

  Finished: results.json says the run completed at `config.num_epochs` epochs, and that step is the latest
  checkpoint (a run stopped during its final evaluation has no results.json and is evaluated again).
  """
  try:
    results = json.loads((workdir / 'results.json').read_text())
    steps = [int(p.name) for p in (workdir / 'checkpoints').iterdir() if p.name.isdigit()]
  except (OSError, ValueError):
    return None
  if not (results.get('completed') and results.get('epoch') == config.num_epochs and steps
          and max(steps) == results.get('step')):
    return None
  return (f'{workdir}: finished ({config.num_epochs} epochs, step {results["step"]}); results in '
          f'{workdir / "results.json"}; evaluate again with: python eval.py --ckpt {workdir}')


def errors() -> tuple[type[BaseException], ...]:
  """The user's data, checkpoint and value errors: one line, exit status 1."""
  from lstrl_jax.train import checkpoint, guards, workdir  # pylint: disable=g-import-not-at-top

  return ValueError, checkpoint.CheckpointError, guards.TrainingDivergedError, workdir.WorkdirError


def main(argv: list[str]) -> None:
  """Trains `--config` in `--workdir` (or finds it finished) and names results.json."""
  del argv  # cli.run refuses positional arguments
  cli.quiet_logging(logging.WARNING)
  config = FLAGS.config
  absolute_paths(config)
  workdir = pathlib.Path(FLAGS.workdir)
  finished = finished_run(workdir, config)
  if finished:
    print(finished)
    return
  import jax  # pylint: disable=g-import-not-at-top
  from lstrl_jax.train import trainer  # pylint: disable=g-import-not-at-top

  summary = trainer.train_and_evaluate(config, workdir)
  if not summary['completed']:
    raise cli.Resumable(f'stopped at step {summary["step"]}; saved {summary["checkpoint"]}; run the same command '
                        'again to resume')
  if jax.process_index() == 0:  # process 0 alone writes results.json
    print(f'results written to {workdir / "results.json"}')


def run() -> None:
  """The command: `python -m lstrl_jax.train`, `python train.py` or the `lstrl-train` script."""
  cli.run(main, errors=errors, define=define_flags, doc=__doc__, help_config=cli.config_for_help)


if __name__ == '__main__':
  run()
