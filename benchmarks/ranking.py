r"""Ranking benchmark: jitted mAP/CMC (lstrl_jax.evaluation.metrics) against torchreid's Cython evaluator and a NumPy loop.

  python benchmarks/ranking.py [--mars_info ../shared/data/mars/info] [--repeats 5] [--chunk_size 128] \
      [--torchreid_cy DIR]

MARS's real queries (1,980) against two galleries: 'torchreid' (9,330 tracklets, `torchreid` convention) and
'paper' (11,310, `paper` convention); pids and camids from the official info/ files, read with the MARS
reader; random 2048-d features, cosine distance. Timed twice: from features (every side includes the distance
computation; JAX never builds the [Q, G] matrix) and ranking only (given the distance matrix). Sides:
  - jax: `metrics.scores_from_features` / `scores_from_distances` + `summarize` (the project's evaluator; on
    the CPU backend that is its NumPy path, `evaluation.cpu_ranking`, elsewhere the jitted program);
  - torchreid: `rank_cy.evaluate_cy` (torchreid's Cython `eval_market1501_cy`, what
    `torchreid.metrics.evaluate_rank(..., use_cython=True)` calls), from features after NumPy distances. The
    PyPI `torchreid` (0.2.5, the torchreid-pip fork) ships no Cython extension, so `--torchreid_cy` names a
    folder holding `rank_cy*.so` built from deep-person-reid's `torchreid/metrics/rank_cylib/rank_cy.pyx`
    with its own `setup.py` (Cython 3, gcc -O3); without it this side is left out;
  - numpy: an independent per-query loop (one stable argsort per query, junk removed, plain AP), run once,
    the reference the jax results must match to 1e-6.
Times are medians of --repeats runs (after one warm-up), wall and process CPU seconds (all threads).

Peak memory: the growth of the process's peak RSS (resource.getrusage) over the first jax phase (which
includes compilation) and the device's own peak where the backend reports one (GPU).
"""

import importlib.util
import pathlib
import resource
import statistics
import sys
import time

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
_REPEATS = flags.DEFINE_integer('repeats', 5, 'Timed runs of each side after one warm-up.')
_CHUNK_SIZE = flags.DEFINE_integer('chunk_size', metrics.DEFAULT_CHUNK_SIZE, 'Queries ranked at once.')
_DIM = flags.DEFINE_integer('dim', 2048, 'Feature dimension.')
_SEED = flags.DEFINE_integer('seed', 0, 'Seed of the random features.')
_TORCHREID_CY = flags.DEFINE_string('torchreid_cy', '', "Folder with torchreid's compiled rank_cy*.so.")
SETTINGS = (('torchreid', 'torchreid'), ('paper', 'paper'))  # (gallery, convention)


def numpy_distances(qf, gf):
  """Cosine distances `[Q, G]` (1 - cos) of L2-normalised features, float32."""
  qn = qf / np.linalg.norm(qf, axis=1, keepdims=True)
  gn = gf / np.linalg.norm(gf, axis=1, keepdims=True)
  return 1.0 - qn @ gn.T


def numpy_protocol(distances, q_pids, q_camids, g_pids, g_camids, skip_no_match):
  """Per-query plain-AP scoring; queries without a valid match skipped or counted as 0 (`skip_no_match`)."""
  num_query, num_gallery = distances.shape
  aps, cmc, has_match = np.zeros(num_query), np.zeros(num_gallery), np.zeros(num_query, bool)
  for i in range(num_query):
    order = np.argsort(distances[i], kind='stable')
    junk = (g_pids[order] == q_pids[i]) & (g_camids[order] == q_camids[i])
    hits = np.flatnonzero(g_pids[order][~junk] == q_pids[i])
    if hits.size:
      aps[i] = np.mean(np.arange(1, hits.size + 1) / (hits + 1))
      cmc[hits[0]:] += 1
    has_match[i] = hits.size > 0
  scored = has_match if skip_no_match else np.ones(num_query, bool)
  return {'mAP': aps[scored].mean(), **{f'R-{k}': cmc[k - 1] / scored.sum() for k in metrics.CMC_RANKS}}


def load_rank_cy(folder: str):
  """torchreid's compiled `rank_cy` module from `folder`, or None when no folder is given.

  Raises:
    SystemExit: `folder` holds no `rank_cy*.so`.
  """
  if not folder:
    return None
  found = sorted(pathlib.Path(folder).glob('rank_cy*.so'))
  if not found:
    raise SystemExit(f'--torchreid_cy: no rank_cy*.so in {folder}')
  spec = importlib.util.spec_from_file_location('rank_cy', found[0])
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module


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
  rank_cy = load_rank_cy(_TORCHREID_CY.value)
  pids = np.asarray([t.pid for t in dataset.test], np.int64)
  camids = np.asarray([t.camid for t in dataset.test], np.int64)
  features = np.random.default_rng(_SEED.value).normal(size=(len(dataset.test), _DIM.value)).astype(np.float32)
  query = np.asarray(dataset.query)
  device = jax.devices()[0]
  print(f'MARS: {len(query)} queries, {_DIM.value}-d random features, cosine; {device.platform} '
        f'({device.device_kind}), {jax.device_count()} device(s); jax chunks of {_CHUNK_SIZE.value} queries; '
        f'median of {_REPEATS.value}, seconds wall / CPU (all threads)')
  repeats, chunk = _REPEATS.value, _CHUNK_SIZE.value
  for gallery_name, convention in SETTINGS:
    gallery = np.asarray(dataset.galleries[gallery_name])
    args = (features[query], features[gallery], pids[query], camids[query], pids[gallery], camids[gallery])
    rss_start = peak_rss_mib()
    on_device = jax.device_put(args)
    summarize = lambda scores: metrics.summarize(scores, convention, num_gallery=len(gallery))
    rows = {}
    rows['jax', 'features'] = timed(lambda: summarize(
        metrics.scores_from_features(*on_device, convention=convention, chunk_size=chunk)), repeats)
    rss_jax = peak_rss_mib() - rss_start
    distances = jax.block_until_ready(metrics.distance_matrix(*on_device[:2]))
    rows['jax', 'ranking'] = timed(lambda: summarize(
        metrics.scores_from_distances(distances, *on_device[2:], convention=convention, chunk_size=chunk)),
        repeats)
    numpy_dist = numpy_distances(*args[:2])
    labels = (args[2], args[4], args[3], args[5])  # torchreid's order: q_pids, g_pids, q_camids, g_camids
    if rank_cy is not None:
      rows['torchreid', 'features'] = timed(
          lambda: rank_cy.evaluate_cy(numpy_distances(*args[:2]), *labels, 20), repeats)
      rows['torchreid', 'ranking'] = timed(lambda: rank_cy.evaluate_cy(numpy_dist, *labels, 20), repeats)
    reference = numpy_protocol(numpy_dist, *args[2:], skip_no_match=convention == 'torchreid')
    ours = rows['jax', 'features'][3]
    worst = max(abs(ours[k] - reference[k]) for k in reference)
    worst_ranking = max(abs(rows['jax', 'ranking'][3][k] - reference[k]) for k in reference)
    print(f"gallery '{gallery_name}' ({len(gallery)}), convention '{convention}': jax compile + first run "
          f"{rows['jax', 'features'][2]:.1f} s, peak RSS growth {rss_jax:.0f} MiB")
    for phase in ('features', 'ranking'):
      jw, jc = rows['jax', phase][:2]
      line = f'  {"from features" if phase == "features" else "ranking only":<14} jax {jw:6.3f} / {jc:6.3f}'
      if ('torchreid', phase) in rows:
        tw, tc = rows['torchreid', phase][:2]
        line += f'   torchreid Cython {tw:6.3f} / {tc:6.3f}   jax / torchreid {jw / tw:.2f}x wall, {jc / tc:.2f}x CPU'
      print(line)
    if rank_cy is not None:
      cmc, m_ap = rows['torchreid', 'features'][3]
      peer = max(abs(m_ap - ours['mAP']), *(abs(cmc[k - 1] - ours[f'R-{k}']) for k in metrics.CMC_RANKS))
      print(f'  largest |jax - torchreid Cython| {peer:.1e} (its float32 sums)')
    print(f"  mAP {100 * ours['mAP']:.4f}  R-1 {100 * ours['R-1']:.4f} (%, chance level); largest |jax - numpy| "
          f'{max(worst, worst_ranking):.2e}')
    if max(worst, worst_ranking) > 1e-6:
      raise SystemExit(f'jax and numpy disagree by {max(worst, worst_ranking):.2e} (> 1e-6)')
  stats = device.memory_stats() if hasattr(device, 'memory_stats') else None
  if (stats or {}).get('peak_bytes_in_use'):
    print(f"device peak {stats['peak_bytes_in_use'] / 2**20:.0f} MiB")
  print(f'process peak RSS {peak_rss_mib():.0f} MiB')


if __name__ == '__main__':
  app.run(main)
