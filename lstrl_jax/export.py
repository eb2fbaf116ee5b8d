"""`python -m lstrl_jax.export`: the command's flags and entry point; the work is `lstrl_jax.inference.export`.

`--help` prints that module's docstring without importing it (nor JAX), so it answers at once.
"""

from absl import flags
from absl import logging

from lstrl_jax import cli


def define_flags() -> None:
  """Defines the command's flags (only when run as a program, so importing this module defines none)."""
  flags.DEFINE_string('ckpt', None, 'Training workdir or checkpoint step directory.', required=True)
  flags.DEFINE_enum('format', None, ['stablehlo', 'onnx'], 'stablehlo (jax.export) or onnx (jax2onnx).', required=True)
  flags.DEFINE_string('out', None, 'File to write.', required=True)
  flags.DEFINE_list('platforms', None, 'StableHLO only: platforms to lower for (e.g. cpu,cuda,tpu).')


def main(argv) -> None:
  """Exports and prints the file, its input and its output."""
  del argv  # cli.run refuses positional arguments
  from lstrl_jax.inference import export  # pylint: disable=g-import-not-at-top

  cli.quiet_logging(logging.ERROR)
  f = flags.FLAGS
  path = export.export(f.ckpt, f.format, f.out, platforms=f.platforms)
  print(f'{path}: uint8 clips [B, T, H, W, 3] -> float32 features [B, D] ({f.format}, '
        f'{path.stat().st_size:,} bytes)')


def run() -> None:
  """The command: flags, then `main` under the exit-status contract (lstrl_jax.cli)."""
  cli.run(main, errors=cli.checkpoint_errors, define=define_flags,
          doc=cli.module_doc('lstrl_jax.inference.export'))


if __name__ == '__main__':
  run()
