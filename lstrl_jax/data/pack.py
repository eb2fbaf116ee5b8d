r"""Packs a dataset into ArrayRecord files with its TFDS builder (`lstrl_jax.data.tfds.builders`).

  python -m lstrl_jax.data.pack --config configs/mars.py --config.data_dir=data/mars \
      --config.packed_dir=data/packed

reads the dataset `config.dataset` from `config.data_dir` and writes `<packed_dir>/<name>[/split<k>]/1.0.0/`.
iLIDS-VID, PRID-2011 and the demo data pack `config.split` (add `--all_splits` for all 10). Training and
evaluation then read the packed frames when run with the same `--config.packed_dir`. Needs no TensorFlow.
"""

from __future__ import annotations

from absl import flags
from ml_collections import config_flags

from lstrl_jax import cli
from lstrl_jax.data.index import DatasetError
from lstrl_jax.data.tfds import builders

def define_flags() -> None:
  """Defines the command's flags (only when run as a program, so importing this module defines none)."""
  config_flags.DEFINE_config_file(
      'config', str(cli.CONFIG_DIR / 'default.py'), 'Config file or shipped config name (dataset, data_dir, split, '
      'packed_dir; default: the shipped default).')
  flags.DEFINE_bool('all_splits', False, 'Pack all 10 splits (iLIDS-VID, PRID-2011, demo).')


def main(argv: list[str]) -> None:
  """Packs the configured dataset; prints one line per packed split (errors: one line, `cli.run`)."""
  del argv  # cli.run refuses positional arguments
  config = flags.FLAGS.config
  if not config.packed_dir:
    raise cli.UsageError('config.packed_dir is empty; expected --config.packed_dir=<output directory>')
  has_splits = config.dataset in builders.BUILDERS and builders.BUILDERS[config.dataset].BUILDER_CONFIGS
  splits = range(builders.NUM_SPLITS) if flags.FLAGS.all_splits and has_splits else [config.split]
  for split in splits:
    print(builders.pack(config.dataset, config.data_dir, config.packed_dir, split))


if __name__ == '__main__':
  cli.run(main, errors=(DatasetError,), define=define_flags, doc=__doc__, help_config=cli.config_for_help)
