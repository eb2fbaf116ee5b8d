r"""Ranking benchmark: jitted mAP/CMC (lstrl_jax.evaluation.metrics) against a per-query NumPy loop.

  python benchmarks/ranking.py [--mars_info ../shared/data/mars/info] [--repeats 3] [--chunk_size 128]

MARS's real query and 'paper' gallery (1,980 queries x 11,310 tracklets, pids and camids from the official
info/ files, read with the MARS reader) with random 2048-d features, cosine distance. Timed twice: from
features (both sides include the distance computation; JAX never builds the [Q, G] matrix) and ranking only
(both given the distance matrix). The JAX side is timed after compilation (median of --repeats runs); the
NumPy side is an independent straightforward implementation (full distance matrix, then one stable argsort
per query, junk removed, plain AP), run once. Results must agree to 1e-6.

Peak memory: tracemalloc's peak of the NumPy phase (NumPy reports its buffers to tracemalloc), the growth of
the process's peak RSS (resource.getrusage) over each phase, run JAX first, and the device's own peak
where the backend reports one (GPU).
"""

import pathlib
import resource
import statistics
import sys
import time
import tracemalloc

from absl import app
from absl import flags
import jax
import numpy as np

REPO = pathlib.Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from lstrl_jax.data.datasets import load_dataset  # pylint: disable=g-import-not-at-top
from lstrl_jax.evaluation import metrics  # pylint: disable=g-import-not-at-top

_MARS_INFO = flags.DEFINE_string('mars_info', str(REPO.parent / 'shared' / 'data' / 'mars' / 'info'),
                                 "MARS's info/ folder (tracks_test_info.mat, query_IDX.mat, ...).")
_REPEATS = flags.DEFINE_integer('repeats', 3, 'Timed runs of the jitted evaluator after compilation.')
_CHUNK_SIZE = flags.DEFINE_integer('chunk_size', metrics.DEFAULT_CHUNK_SIZE, 'Queries ranked at once.')
_DIM = flags.DEFINE_integer('dim', 2048, 'Feature dimension.')
_SEED = flags.DEFINE_integer('seed', 0, 'Seed of the random features.')


def numpy_distances(qf, gf):
  """Cosine distances `[Q, G]` (1 - cos) of L2-normalised features, float32."""
  qn = qf / np.linalg.norm(qf, axis=1, keepdims=True)
  gn = gf / np.linalg.norm(gf, axis=1, keepdims=True)
  return 1.0 - qn @ gn.T


def numpy_paper_protocol(distances, q_pids, q_camids, g_pids, g_camids):
  """Per-query 'paper' scoring: mAP and CMC over all queries (no valid match: AP 0, CMC 0)."""
  num_query, num_gallery = distances.shape
  aps = np.zeros(num_query)
  cmc = np.zeros(num_gallery)
  for i in range(num_query):
    order = np.argsort(distances[i], kind='stable')
    junk = (g_pids[order] == q_pids[i]) & (g_camids[order] == q_camids[i])
    matches = g_pids[order][~junk] == q_pids[i]
    hits = np.flatnonzero(matches)
    if hits.size:
      aps[i] = np.mean(np.arange(1, hits.size + 1) / (hits + 1))
      cmc[hits[0]:] += 1
  cmc /= num_query
  return {'mAP': aps.mean(), **{f'R-{k}': cmc[k - 1] for k in metrics.CMC_RANKS}}


def timed(function, repeats):
  """Runs `function` once (warm-up), then `repeats` times.

  Returns:
    (median wall seconds, median CPU seconds of the process (all threads), wall seconds of the first call,
    the last result). CPU time is reported beside wall time because a shared machine stretches wall time.
  """
  start = time.perf_counter()
  result = function()
  first = time.perf_counter() - start
  walls, cpus = [], []
  for _ in range(repeats):
    start, start_cpu = time.perf_counter(), time.process_time()
    result = function()
    walls.append(time.perf_counter() - start)
    cpus.append(time.process_time() - start_cpu)
  return statistics.median(walls), statistics.median(cpus), first, result


def peak_rss_mib() -> float:
  """The process's peak resident set size so far, MiB (Linux reports KiB)."""
  return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def main(argv):
  del argv
  dataset = load_dataset('mars', pathlib.Path(_MARS_INFO.value).parent)
  pids = np.asarray([t.pid for t in dataset.test], np.int64)
  camids = np.asarray([t.camid for t in dataset.test], np.int64)
  query, gallery = np.asarray(dataset.query), np.asarray(dataset.galleries['paper'])
  features = np.random.default_rng(_SEED.value).normal(size=(len(dataset.test), _DIM.value)).astype(np.float32)
  args = (features[query], features[gallery], pids[query], camids[query], pids[gallery], camids[gallery])
  device = jax.devices()[0]
  print(f"MARS 'paper': {len(query)} queries x {len(gallery)} gallery, {_DIM.value}-d random features, cosine; "
        f'{device.platform} ({device.device_kind}), {jax.device_count()} device(s)')

  rss_start = peak_rss_mib()
  on_device = jax.device_put(args)
  labels = on_device[2:]
  chunk = _CHUNK_SIZE.value
  from_features = lambda: jax.block_until_ready(
      metrics.scores_from_features(*on_device, convention='paper', chunk_size=chunk))
  jax_wall, jax_cpu, first, scores = timed(from_features, _REPEATS.value)
  jax_result = metrics.summarize(scores, 'paper', num_gallery=len(gallery))
  rss_features = peak_rss_mib()
  distances = jax.block_until_ready(metrics.distance_matrix(*on_device[:2]))
  from_distances = lambda: jax.block_until_ready(
      metrics.scores_from_distances(distances, *labels, convention='paper', chunk_size=chunk))
  rank_wall, rank_cpu, _, _ = timed(from_distances, _REPEATS.value)
  del distances
  rss_jax = peak_rss_mib()
  stats = device.memory_stats() if hasattr(device, 'memory_stats') else None
  device_peak = (stats or {}).get('peak_bytes_in_use')

  tracemalloc.start()
  start, start_cpu = time.perf_counter(), time.process_time()
  numpy_dist = numpy_distances(*args[:2])
  dist_wall, dist_cpu = time.perf_counter() - start, time.process_time() - start_cpu
  numpy_result = numpy_paper_protocol(numpy_dist, *args[2:])
  numpy_wall, numpy_cpu = time.perf_counter() - start, time.process_time() - start_cpu
  _, numpy_traced_peak = tracemalloc.get_traced_memory()
  tracemalloc.stop()
  rss_numpy = peak_rss_mib()

  worst = max(abs(jax_result[k] - numpy_result[k]) for k in numpy_result)
  print(f'jax timed after compilation (compile + first run {first:.1f} s), median of {_REPEATS.value}, chunks of '
        f'{chunk}; numpy run once. Seconds wall / CPU (all threads):')
  rows = (('from features (distances + ranking)', jax_wall, jax_cpu, numpy_wall, numpy_cpu),
          ('ranking only (given [Q, G] distances)', rank_wall, rank_cpu, numpy_wall - dist_wall,
           numpy_cpu - dist_cpu))
  for name, jw, jc, nw, nc in rows:
    print(f'  {name:<38} jax {jw:7.3f} / {jc:7.3f}   numpy {nw:7.3f} / {nc:7.3f}   '
          f'ratio numpy / jax {nw / jw:4.1f}x wall, {nc / jc:4.1f}x CPU')
  print(f"mAP {100 * jax_result['mAP']:.4f}  R-1 {100 * jax_result['R-1']:.4f}  "
        f"R-20 {100 * jax_result['R-20']:.4f} (%, chance level); largest |jax - numpy| {worst:.2e}")
  print(f'peak memory: numpy traced {numpy_traced_peak / 2**20:.0f} MiB; peak RSS growth: jax from features '
        f'{rss_features - rss_start:.0f} MiB (incl. compilation), jax ranking-only phase (holds the [Q, G] '
        f'matrix) {rss_jax - rss_features:.0f} MiB, numpy phase {rss_numpy - rss_jax:.0f} MiB (process peak '
        f'{rss_numpy:.0f} MiB)' + (f'; device peak {device_peak / 2**20:.0f} MiB' if device_peak else ''))
  if worst > 1e-6:
    raise SystemExit(f'jax and numpy disagree by {worst:.2e} (> 1e-6)')


if __name__ == '__main__':
  app.run(main)
