"""Per-query ranking scores on the host CPU with NumPy: the CPU backend's path of `metrics.scores_from_*`.

Same results as the jitted evaluator (`metrics._chunk_scores`, see its module docstring for the conventions),
computed the way a CPU does them fastest: per chunk of queries, the valid non-matches' distances are sorted
(`np.sort`, a vectorised quicksort on x86) and each match's rank is its number of valid non-matches with a
smaller distance (a binary search, `np.searchsorted`) plus the matches before it. Matches are ordered by
(distance, gallery index); a non-match at exactly a match's distance counts before it only when its gallery
index is smaller (ties keep gallery order, as a stable sort would). XLA's CPU gathers and sorts are several
times slower than NumPy's (benchmarks/README.md, ranking), so `metrics` sends CPU work here and keeps the
jitted, fixed-shape program for accelerators. Memory: a few `[chunk_size, G]` arrays.

Peer: torchreid's `eval_market1501` (argsort of every gallery, then a cumulative sum), same AP/CMC.
"""

from __future__ import annotations

import concurrent.futures
import os
from typing import Iterator

import numpy as np
import threadpoolctl


def distance_blocks(query_features: np.ndarray, gallery_features: np.ndarray, distance: str,
                    chunk_size: int) -> Iterator[np.ndarray]:
  """float32 `[chunk_size, G]` rows of the distances of `metrics.distance_matrix` (1 - cos, or L2), in order.

  Each block is computed in a worker thread while the caller ranks the one before, with NumPy's BLAS on all
  host cores but one (threadpoolctl, restored when the blocks are done): ranking is single-threaded, and BLAS
  threads left idle beside it spin (OpenBLAS: about 0.1 s each time), which cost a third more CPU time on MARS
  (benchmarks/README.md, ranking). At most two blocks are held at once. `distance`: 'cosine' or 'euclidean'
  (checked by the caller); features float `[Q, D]` and `[G, D]`. The last block has the remaining rows.
  """
  blocks = _distance_blocks(query_features, gallery_features, distance, chunk_size)
  cores = len(os.sched_getaffinity(0)) if hasattr(os, 'sched_getaffinity') else os.cpu_count() or 1
  with threadpoolctl.threadpool_limits(max(1, cores - 1), user_api='blas'), \
      concurrent.futures.ThreadPoolExecutor(1) as worker:
    pending = worker.submit(next, blocks, None)
    while (block := pending.result()) is not None:
      pending = worker.submit(next, blocks, None)
      yield block


def _distance_blocks(query_features: np.ndarray, gallery_features: np.ndarray, distance: str,
                     chunk_size: int) -> Iterator[np.ndarray]:
  """The blocks of `distance_blocks`, computed in the calling thread: NumPy's BLAS matmul (faster than XLA's CPU
  dot for these shapes), the rest in place on each block; squared norms by `einsum` (no `[G, D]` temporary),
  the gallery normalised (cosine) once."""
  q = np.asarray(query_features, np.float32)
  g = np.asarray(gallery_features, np.float32)
  q_squared, g_squared = np.einsum('ij,ij->i', q, q), np.einsum('ij,ij->i', g, g)
  if distance == 'cosine':
    q = q / np.maximum(np.sqrt(q_squared), 1e-12)[:, None]
    g = g / np.maximum(np.sqrt(g_squared), 1e-12)[:, None]
  for start in range(0, len(q), chunk_size):
    block = q[start:start + chunk_size] @ g.T
    if distance == 'cosine':
      yield np.subtract(1.0, block, out=block)
    else:
      block *= -2.0
      block += q_squared[start:start + chunk_size, None]
      block += g_squared[None, :]
      yield np.sqrt(np.maximum(block, 0.0, out=block), out=block)


def chunk_scores(distances: np.ndarray, q_pids: np.ndarray, q_camids: np.ndarray, g_pids: np.ndarray,
                 g_camids: np.ndarray, unlabeled_junk: bool, trapezoid_ap: bool
                 ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
  """Scores a chunk of queries: float `[C, G]` distances -> (AP float64 `[C]`, first rank int32, #matches int32).

  Args:
    distances: float `[C, G]`, finite, smaller is more similar.
    q_pids, q_camids: int `[C]`; g_pids, g_camids: int `[G]`.
    unlabeled_junk: gallery pid -1 is junk (MARS MATLAB code).
    trapezoid_ap: AP by MARS's trapezoid rule, else plain AP.

  Returns:
    As `metrics._chunk_scores`: AP (0 without a valid match), the first match's 1-based rank among the
    non-junk items (0 without one), and the number of valid matches.
  """
  same_pid = g_pids[None, :] == q_pids[:, None]
  junk = same_pid & (g_camids[None, :] == q_camids[:, None])
  if unlabeled_junk:
    junk |= (g_pids == -1)[None, :]
  good = same_pid & ~junk
  other_sorted = np.sort(np.where(junk | good, np.inf, distances), axis=1)
  count = len(q_pids)
  ap, first = np.zeros(count), np.zeros(count, np.int32)
  num_matches = good.sum(axis=1).astype(np.int32)
  for i in np.flatnonzero(num_matches):
    index = np.flatnonzero(good[i])
    match_dist = distances[i, index]
    order = np.lexsort((index, match_dist))
    index, match_dist = index[order], match_dist[order]
    before = np.searchsorted(other_sorted[i], match_dist, side='left')
    tied = np.searchsorted(other_sorted[i], match_dist, side='right') > before
    for m in np.flatnonzero(tied):
      same = (distances[i] == match_dist[m]) & ~junk[i] & ~good[i]
      before[m] += np.count_nonzero(same[:index[m]])
    hits = np.arange(1, len(index) + 1)
    ranks = before + hits
    precision = hits / ranks
    if trapezoid_ap:
      old = np.where(ranks == 1, 1.0, (hits - 1) / np.maximum(ranks - 1, 1))
      precision = (old + precision) / 2
    ap[i], first[i] = precision.mean(), ranks[0]
  return ap, first, num_matches
