"""`python -m lstrl_jax.embed`: the command's flags and entry point; the work is `lstrl_jax.inference.embed`.

`--help` prints that module's docstring without importing it (nor JAX), so it answers at once.
"""

from absl import flags
from absl import logging

from lstrl_jax import cli


def define_flags() -> None:
  """Defines the command's flags (only when run as a program, so importing this module defines none)."""
  flags.DEFINE_string('ckpt', None, 'Training workdir or checkpoint step directory.', required=True)
  flags.DEFINE_string('tracklets', None, 'Folder whose image-holding sub-folders are the tracklets.', required=True)
  flags.DEFINE_string('out', None, 'Features file to write (.npz).', required=True)
  flags.DEFINE_enum('clip_selection', None, ['dense', 'rrs'], 'Clip selection (default: the config\'s final one).')
  flags.DEFINE_integer('batch_size', 0, 'Clips per step over all devices (0: the config\'s eval_batch_size).')


def main(argv) -> None:
  """Embeds and prints one line naming the file, tracklet count and feature size."""
  del argv  # cli.run refuses positional arguments
  from lstrl_jax.inference import embed  # pylint: disable=g-import-not-at-top

  cli.quiet_logging(logging.ERROR)
  f = flags.FLAGS
  arrays = embed.embed(f.ckpt, f.tracklets, f.out, clip_selection=f.clip_selection, batch_size=f.batch_size,
                       progress=True)
  n, d = arrays['features'].shape
  print(f'{f.out}: {n} tracklets x {d} features (step {int(arrays["step"])}, {arrays["clip_selection"]} clips)')


def run() -> None:
  """The command: flags, then `main` under the exit-status contract (lstrl_jax.cli)."""
  cli.run(main, errors=cli.checkpoint_errors, define=define_flags,
          doc=cli.module_doc('lstrl_jax.inference.embed'))


if __name__ == '__main__':
  run()
