"""Trains and evaluates LSTRL: `python train.py --config configs/mars.py --workdir runs/mars`.

Flags: `--config` a config file (configs/*.py, optionally `:smoke`), with `--config.<key>=<value>`
overrides (the config is locked: a mistyped key is an error); `--workdir` the run directory, where a
rerun resumes from the latest checkpoint. Everything else happens in
`lstrl_jax.train.trainer.train_and_evaluate`. A bad dataset, config value or checkpoint, a workdir in use
or unwritable, a failed save or a diverged loss prints one line on stderr and exits with status 1; a run
stopped with a checkpoint saved (SIGTERM, Ctrl-C, `config.stop_at_step`) says where and exits with 75.
Library logging shows warnings and errors only (`--verbosity=0` for INFO).
"""

from absl import flags
from absl import logging
import jax
from ml_collections import config_flags

from lstrl_jax import cli
from lstrl_jax.train import checkpoint
from lstrl_jax.train import guards
from lstrl_jax.train import trainer
from lstrl_jax.train import workdir

_CONFIG = config_flags.DEFINE_config_file('config', None, 'Training config file.', lock_config=True)
_WORKDIR = flags.DEFINE_string('workdir', None, 'Directory for checkpoints, logs and results.')
flags.mark_flags_as_required(['config', 'workdir'])
ERRORS = (ValueError, checkpoint.CheckpointError, guards.TrainingDivergedError, workdir.WorkdirError)


def main(argv):
  del argv  # cli.run refuses positional arguments
  if not flags.FLAGS['verbosity'].present:
    logging.set_verbosity(logging.WARNING)  # orbax and grain log every checkpoint save at INFO
  summary = trainer.train_and_evaluate(_CONFIG.value, _WORKDIR.value)
  if not summary['completed']:
    raise cli.Resumable(f'stopped at step {summary["step"]}; saved {summary["checkpoint"]}; run the same command '
                        'again to resume')
  if summary['completed'] and jax.process_index() == 0:  # process 0 alone writes results.json
    print(f'results written to {_WORKDIR.value}/results.json')


if __name__ == '__main__':
  cli.run(main, errors=ERRORS)
