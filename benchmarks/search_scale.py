r"""Search at scale: exact chunked top-k (lstrl_jax.inference.search.top_k) over a million random features.

  python benchmarks/search_scale.py [--gallery 1000000] [--queries 100] [--dim 512] [--top 10] \
      [--chunk_size 65536] [--check 20000]

Random float32 gallery `[G, D]` (D = 512, a ResNet-18 f_bn; ResNet-50's 2048 quadruples host memory) and
queries `[Q, D]`, cosine distance. Reports: seconds for the whole search after one warm-up on a small slice
(compilation excluded; the shapes are the same), the growth of the process's peak RSS (resource.getrusage)
over the search and the gallery's own size, against the `[Q, G]` float32 matrix a one-shot search would
build. `--check N`: the first N gallery rows are also ranked with a NumPy full sort and must agree.
"""

import pathlib
import resource
import sys
import time

from absl import app
from absl import flags
import numpy as np

REPO = pathlib.Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from lstrl_jax.inference import search  # pylint: disable=g-import-not-at-top

_GALLERY = flags.DEFINE_integer('gallery', 1_000_000, 'Gallery tracklets G.')
_QUERIES = flags.DEFINE_integer('queries', 100, 'Query tracklets Q.')
_DIM = flags.DEFINE_integer('dim', 512, 'Feature dimension D.')
_TOP = flags.DEFINE_integer('top', 10, 'Neighbours per query.')
_CHUNK = flags.DEFINE_integer('chunk_size', search.CHUNK_SIZE, 'Gallery tracklets per step.')
_CHECK = flags.DEFINE_integer('check', 20_000, 'Gallery rows also ranked by NumPy (0: none).')


def peak_rss_mib() -> float:
  """The process's peak resident set size so far, MiB (Linux reports KiB)."""
  return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def main(argv):
  del argv
  rng = np.random.default_rng(0)
  gallery = np.empty((_GALLERY.value, _DIM.value), np.float32)
  for start in range(0, len(gallery), 100_000):  # filled in slices: no float64 copy of the whole gallery
    gallery[start:start + 100_000] = rng.standard_normal((min(100_000, len(gallery) - start), _DIM.value),
                                                         dtype=np.float32)
  queries = rng.standard_normal((_QUERIES.value, _DIM.value), dtype=np.float32)
  search.top_k(queries, gallery[:_CHUNK.value + 1], _TOP.value, chunk_size=_CHUNK.value)  # compile
  before = peak_rss_mib()
  start = time.perf_counter()
  distances, index = search.top_k(queries, gallery, _TOP.value, chunk_size=_CHUNK.value)
  seconds = time.perf_counter() - start
  growth = peak_rss_mib() - before
  print(f'gallery {_GALLERY.value:,} x {_DIM.value} float32 ({gallery.nbytes / 2**20:,.0f} MiB), '
        f'{_QUERIES.value} queries, top {_TOP.value}, chunks of {_CHUNK.value:,}')
  print(f'search: {seconds:.2f} s ({_QUERIES.value * _GALLERY.value / seconds / 1e6:,.0f} M distances/s); '
        f'peak RSS grew {growth:,.0f} MiB during it (a [Q, G] float32 matrix: '
        f'{_QUERIES.value * _GALLERY.value * 4 / 2**20:,.0f} MiB); process peak {peak_rss_mib():,.0f} MiB')
  if _CHECK.value:
    g = gallery[:_CHECK.value]
    q = queries / np.linalg.norm(queries, axis=1, keepdims=True)
    d = 1 - q @ (g / np.linalg.norm(g, axis=1, keepdims=True)).T
    want = np.argsort(d, axis=1, kind='stable')[:, :_TOP.value]
    _, got = search.top_k(queries, g, _TOP.value, chunk_size=_CHUNK.value // 8)
    print(f'check on the first {_CHECK.value:,} gallery rows against NumPy: '
          f'{"equal" if np.array_equal(got, want) else "DIFFERENT"}')
  assert distances.shape == index.shape == (_QUERIES.value, _TOP.value)


if __name__ == '__main__':
  app.run(main)
