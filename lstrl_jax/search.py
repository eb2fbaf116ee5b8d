"""`python -m lstrl_jax.search`: the command's flags and entry point; the work is `lstrl_jax.inference.search`.

`--help` prints that module's docstring without importing it (nor JAX), so it answers at once.
"""

from absl import flags
from absl import logging

from lstrl_jax import cli


def define_flags() -> None:
  """Defines the command's flags (only when run as a program, so importing this module defines none)."""
  flags.DEFINE_string('query', None, 'Query features (.npz) or a folder of tracklet folders.', required=True)
  flags.DEFINE_string('gallery', None, 'Gallery features (.npz from embed).', required=True)
  flags.DEFINE_string('ckpt', None, 'Checkpoint to embed a query folder with.')
  flags.DEFINE_integer('top', 10, 'Gallery tracklets listed per query.', lower_bound=1)
  flags.DEFINE_bool('rerank', False, 'k-reciprocal re-ranking (k1=20, k2=6, lambda=0.3).')
  flags.DEFINE_enum('distance', None, ['cosine', 'euclidean'], 'Distance (default: the gallery config\'s).')
  flags.DEFINE_string('sheet', None, 'Write the ranked-results sheet (PNG) here.')
  flags.DEFINE_integer('sheet_queries', 6, 'Queries drawn on the sheet.', lower_bound=1)


def main(argv) -> None:
  """Prints each query's ranked gallery names and distances; writes the sheet if asked."""
  del argv  # cli.run refuses positional arguments
  from lstrl_jax.inference import search  # pylint: disable=g-import-not-at-top

  cli.quiet_logging(logging.ERROR)
  f = flags.FLAGS
  query, gallery, d, index = search.search(f.query, f.gallery, ckpt=f.ckpt, top=f.top, rerank=f.rerank,
                                           distance=f.distance)
  lines = []
  for q, name in enumerate(query['names']):
    lines.append(f'query {name}')
    lines += [f'  {r + 1:>4}  {d[q, r]:.4f}  {gallery["names"][g]}' for r, g in enumerate(index[q])]
  print('\n'.join(lines), flush=True)
  if f.sheet:
    print(f'sheet: {search.write_sheet(f.sheet, query, gallery, index, f.sheet_queries)}')


def run() -> None:
  """The command: flags, then `main` under the exit-status contract (lstrl_jax.cli)."""
  cli.run(main, errors=cli.checkpoint_errors, define=define_flags,
          doc=cli.module_doc('lstrl_jax.inference.search'))


if __name__ == '__main__':
  run()
