"""Ranking metrics for video ReID: distance matrix, mAP and CMC under each scoring convention.

Everything heavy is a pure jitted function. Queries are ranked in chunks of a fixed size (the last chunk
padded; queries grouped by their number of matches, `query_order`), mapped with `jax.lax.map`, so one compiled shape serves every query set and device memory stays at
a few `[chunk_size, G]` arrays whatever the gallery size; the `[Q, G]` distance matrix is never built when
ranking from features. The gallery is never sorted: only the ranks of a query's matches are needed, found
by `top_k` over the matches and a binary search (`_good_ranks`), O(G log K) per query for K matches.
On the CPU backend the same scores come from NumPy (`cpu_ranking`: a vectorised sort of each chunk's
non-matches and a binary search per match; distances by NumPy's BLAS in blocks of `HOST_MATMUL_ROWS`
queries), which is several times faster there; memory stays at a few `[max(chunk_size, 512), G]` arrays.
Items are ordered by (distance, gallery index): ties keep gallery order, as a stable sort (MATLAB's `sort`,
NumPy's stable `argsort`) would. Distances must be finite.

Scoring conventions (DESIGN.md section 3; README "Scoring conventions" gives each one's gallery). In all of
them distractors (pid 0) are ordinary non-matches and gallery items with the query's pid and camid are junk
(ignored: they neither count nor take a rank):
- 'paper': plain (non-interpolated) AP; queries without a valid match are skipped (guxinqian/AP3D
  `tools/eval_metrics.py` `evaluate`: `num_no_gt += 1; continue`, the averages divide by `num_q - num_no_gt`;
  blue-blue272/VideoReID-TCLNet `tools/eval_metrics.py` `eval_market1501` likewise). MARS (whose 'paper'
  gallery holds every query, so no query lacks a match) and LS-VID (gallery test - query).
- 'torchreid': plain AP; queries without a valid match are skipped (torchreid `eval_market1501`).
- 'official': the datasets' MATLAB scripts (MARS `evaluation_mars.m` + `compute_AP.m`; LS-VID's test script
  and the GLTR `compute_AP.m`, same trapezoid rule): pid -1 gallery items are junk too (MARS's `junk0`;
  LS-VID's script has no pid -1 rule, so the two agree unless an LS-VID test list holds pid -1); AP by the
  trapezoid rule
  `ap += d_recall * (old_precision + precision) / 2` with `old_precision = 1` at rank 0; mAP and CMC
  averaged over all queries, a query without a valid match counting AP 0 and CMC 0 (ljn114514/GLTR
  `compute_AP.m`: `if length(good_image)==0, ap=0`; none on MARS).
- 'cross_camera' (iLIDS-VID, PRID-2011, DukeMTMC-VideoReID): plain AP, queries without a valid match skipped
  (torchreid `eval_market1501`; on iLIDS-VID and PRID-2011 every query has exactly one match, in the other
  camera, so AP = 1 / its rank).
"""

from __future__ import annotations

import dataclasses
import functools
from typing import Mapping

import jax
import jax.numpy as jnp
import numpy as np

from lstrl_jax.evaluation import cpu_ranking

DISTANCES = ('cosine', 'euclidean')
CMC_RANKS = (1, 5, 10, 20)
DEFAULT_CHUNK_SIZE = 128
# On the CPU backend, query rows per distance block: BLAS needs about this many rows to reach its full-matrix
# speed (128-row blocks took 1.9x the CPU time of one [Q, G] product; 512 rows 1.1x, benchmarks/README.md).
HOST_MATMUL_ROWS = 512


@dataclasses.dataclass(frozen=True)
class Convention:
  """Junk, AP and averaging rules of one scoring convention.

  Attributes:
    name: convention name.
    unlabeled_junk: gallery items with pid -1 are junk (MARS MATLAB code).
    trapezoid_ap: AP by the trapezoid rule of MARS's `compute_AP.m`; else plain AP (mean of the precision
      at each match).
    skip_no_match: queries without a valid match are left out of the averages; else they count 0.
  """

  name: str
  unlabeled_junk: bool
  trapezoid_ap: bool
  skip_no_match: bool


CONVENTIONS = {
    'paper': Convention('paper', unlabeled_junk=False, trapezoid_ap=False, skip_no_match=True),
    'torchreid': Convention('torchreid', unlabeled_junk=False, trapezoid_ap=False, skip_no_match=True),
    'official': Convention('official', unlabeled_junk=True, trapezoid_ap=True, skip_no_match=False),
    'cross_camera': Convention('cross_camera', unlabeled_junk=False, trapezoid_ap=False, skip_no_match=True),
}


def get_convention(name: str) -> Convention:
  """Returns the `Convention` called `name`; raises ValueError naming the known ones otherwise."""
  if name not in CONVENTIONS:
    raise ValueError(f'unknown scoring convention {name!r}; expected one of {sorted(CONVENTIONS)}')
  return CONVENTIONS[name]


def _check_distance(distance: str) -> None:
  if distance not in DISTANCES:
    raise ValueError(f'unknown distance {distance!r}; expected one of {DISTANCES}')


def l2_normalize(features: jnp.ndarray, eps: float = 1e-12) -> jnp.ndarray:
  """Scales each row of float `[N, D]` to unit L2 norm (rows of zeros stay zero)."""
  norm = jnp.linalg.norm(features, axis=-1, keepdims=True)
  return features / jnp.maximum(norm, eps)


@functools.partial(jax.jit, static_argnames=('distance',))
def distance_matrix(query_features: jnp.ndarray, gallery_features: jnp.ndarray, *,
                    distance: str = 'cosine') -> jnp.ndarray:
  """Query-gallery distances, float32 `[Q, G]`, smaller is more similar.

  Args:
    query_features: float `[Q, D]`.
    gallery_features: float `[G, D]`.
    distance: 'cosine': 1 - cos on L2-normalised features, in [0, 2]; 'euclidean': the L2 distance
      sqrt(|q|^2 + |g|^2 - 2 q.g), clamped at 0 before the root.

  Raises:
    ValueError: unknown `distance`.
  """
  _check_distance(distance)
  q = query_features.astype(jnp.float32)
  g = gallery_features.astype(jnp.float32)
  if distance == 'cosine':
    q, g = l2_normalize(q), l2_normalize(g)
  dot = jnp.matmul(q, g.T, precision=jax.lax.Precision.HIGHEST)
  if distance == 'cosine':
    return 1.0 - dot
  squared = jnp.sum(q * q, axis=1)[:, None] + jnp.sum(g * g, axis=1)[None, :] - 2.0 * dot
  return jnp.sqrt(jnp.maximum(squared, 0.0))


def _bisect(distances, match_dist, match_index, num_good, exact: bool):
  """Matches preceding each item: int32 `[C, G]`, by binary search over each query's sorted matches.

  `exact`: order by (distance, gallery index), two gathers per step; else by distance alone (strictly
  smaller), one gather per step. The search over a query's `num_good` used slots takes
  ceil(log2(max num_good + 1)) steps, a traced count, so a chunk of few-match queries stops early.
  """
  c, g = distances.shape
  max_matches = match_dist.shape[1]
  index = jnp.arange(g)[None, :]

  def step(_, bounds):  # lo: number of matches known to precede each item
    lo, hi = bounds
    mid = (lo + hi) // 2
    at = jnp.minimum(mid, max_matches - 1)
    md = jnp.take_along_axis(match_dist, at, axis=1)
    precedes = md < distances
    if exact:
      mi = jnp.take_along_axis(match_index, at, axis=1)
      precedes = precedes | ((md == distances) & (mi < index))
    active = lo < hi
    return jnp.where(active & precedes, mid + 1, lo), jnp.where(active & ~precedes, mid, hi)

  most = jnp.max(num_good).astype(jnp.int32)
  steps = 32 - jax.lax.clz(most)  # bit length of the largest match count: enough halvings of [0, most]
  bounds = (jnp.zeros((c, g), jnp.int32), jnp.broadcast_to(num_good[:, None].astype(jnp.int32), (c, g)))
  return jax.lax.fori_loop(0, steps, step, bounds)[0]


def _good_ranks(distances, good, valid, max_matches: int):
  """1-based ranks among the valid items of each query's matches, in rank order, without sorting the gallery.

  Items are ordered by (distance, gallery index), so ties keep gallery order. The matches (at most
  `max_matches` per query) are taken in that order with `top_k`; a binary search (`_bisect`) then counts, for
  every valid non-match, how many matches precede it, and a histogram of those counts gives the valid
  non-matches ranked before each match. Cost per query: O(G log #matches) instead of a sort of G. The search
  compares distances only (one gather per step) unless a valid non-match has exactly a match's distance, when
  the chunk is searched again by (distance, index).

  Args:
    distances: float `[C, G]`, finite.
    good, valid: bool `[C, G]` matches and non-junk items (good implies valid).
    max_matches: K, a bound on the matches of any query (static).

  Returns:
    (ranks int32 `[C, K]` (slot m: rank of the (m+1)-th match), in_use bool `[C, K]` (slot m < #matches)).
  """
  c, g = distances.shape
  neg, match_index = jax.lax.top_k(jnp.where(good, -distances, -jnp.inf), max_matches)
  slot = jnp.arange(max_matches)
  num_good = jnp.sum(good, axis=1)
  in_use = slot[None, :] < num_good[:, None]
  match_dist = jnp.where(in_use, -neg, jnp.inf)
  match_index = jnp.where(in_use, match_index, g)  # unused slots sort after every gallery item
  other = valid & ~good
  lo = _bisect(distances, match_dist, match_index, num_good, exact=False)
  at = jnp.take_along_axis(match_dist, jnp.minimum(lo, max_matches - 1), axis=1)
  tie = jnp.any(other & (lo < num_good[:, None]) & (at == distances))
  lo = jax.lax.cond(tie, lambda: _bisect(distances, match_dist, match_index, num_good, exact=True), lambda: lo)
  histogram = jnp.zeros((c, max_matches + 1), jnp.int32).at[jnp.arange(c)[:, None], lo].add(
      other.astype(jnp.int32))
  ranks = jnp.cumsum(histogram, axis=1)[:, :max_matches] + slot[None, :] + 1
  return ranks, in_use


def _chunk_scores(distances, q_pids, q_camids, g_pids, g_camids, rule, max_matches: int):
  """Scores a chunk of queries: float `[C, G]` distances -> (AP `[C]`, first match rank `[C]`, #matches `[C]`).

  `rule` holds the convention's flags as traced booleans (unlabeled_junk, trapezoid_ap), so every
  convention shares one compiled function. The first match rank is 1-based among the non-junk gallery
  items (0 when the query has no valid match), the rank CMC counts; AP is 0 without a valid match.
  """
  unlabeled_junk, trapezoid_ap = rule
  same_pid = g_pids[None, :] == q_pids[:, None]
  junk = same_pid & (g_camids[None, :] == q_camids[:, None])
  junk = junk | (unlabeled_junk & (g_pids == -1))[None, :]
  good = same_pid & ~junk
  ranks, in_use = _good_ranks(distances, good, ~junk, max_matches)
  num_good = jnp.sum(in_use, axis=1)
  rank_f = ranks.astype(jnp.float32)
  hits_f = jnp.arange(1, max_matches + 1, dtype=jnp.float32)[None, :]
  precision = hits_f / rank_f
  old_precision = jnp.where(ranks == 1, 1.0, (hits_f - 1.0) / jnp.maximum(rank_f - 1.0, 1.0))
  precision = jnp.where(trapezoid_ap, (old_precision + precision) / 2.0, precision)
  ap = jnp.sum(jnp.where(in_use, precision, 0.0), axis=1) / jnp.maximum(num_good, 1).astype(jnp.float32)
  first = jnp.where(num_good > 0, ranks[:, 0], 0)
  return ap, first, num_good


def _gallery_counts(q_pids, g_pids) -> np.ndarray:
  """Number of gallery items with each query's pid, int `[Q]` (host NumPy)."""
  g_pids, q_pids = np.asarray(g_pids), np.asarray(q_pids)
  values, counts = np.unique(g_pids, return_counts=True)
  position = np.clip(np.searchsorted(values, q_pids), 0, max(len(values) - 1, 0))
  found = values[position] == q_pids if len(values) else np.zeros(len(q_pids), bool)
  return np.where(found, counts[position] if len(values) else 0, 0)


def match_bound(q_pids, g_pids) -> int:
  """A static bound K on any query's matches: the largest same-pid gallery count, rounded up to 2^n (<= G)."""
  counts = _gallery_counts(q_pids, g_pids)
  most = max(int(counts.max()) if counts.size else 1, 1)
  return int(min(1 << (most - 1).bit_length(), max(len(np.asarray(g_pids)), 1)))


def query_order(q_pids, g_pids) -> np.ndarray:
  """Queries in ascending order of their same-pid gallery count, int32 `[Q]` (stable).

  Chunks are filled in this order, so the queries of a chunk have similar match counts and its binary
  search (`_bisect`) needs as few steps as its own largest count, not the largest of all queries.
  """
  return np.argsort(_gallery_counts(q_pids, g_pids), kind='stable').astype(np.int32)


def _pad_chunks(x: jnp.ndarray, chunk_size: int) -> jnp.ndarray:
  """Pads `[Q]` to a multiple of `chunk_size` with its first entry and folds it: `[Q', C]`."""
  pad = -x.shape[0] % chunk_size
  x = jnp.concatenate([x, jnp.broadcast_to(x[:1], (pad,))])
  return x.reshape(-1, chunk_size)


def _map_chunks(score_chunk, order, query_arrays, chunk_size: int) -> dict[str, jnp.ndarray]:
  """Scores queries chunk by chunk in `order` (int32 `[Q]`, a permutation), results in query order.

  Each chunk gathers its `[chunk_size, ...]` rows of `query_arrays` (the last chunk padded with query
  `order[0]`, its results dropped), so no permuted copy of a `[Q, G]` matrix is made.
  """
  num_query = order.shape[0]
  chunks = _pad_chunks(order, chunk_size)
  ap, first, num_good = jax.lax.map(lambda ids: score_chunk(*(x[ids] for x in query_arrays)), chunks)
  unsort = lambda x: jnp.zeros(num_query, x.dtype).at[order].set(x.reshape(-1)[:num_query])
  return {'ap': unsort(ap), 'first_match_rank': unsort(first), 'num_matches': unsort(num_good)}


def _rule_flags(convention: str) -> tuple[jnp.ndarray, jnp.ndarray]:
  rule = get_convention(convention)
  return jnp.asarray(rule.unlabeled_junk), jnp.asarray(rule.trapezoid_ap)


@functools.partial(jax.jit, static_argnames=('chunk_size', 'max_matches'))
def _scores_from_distances(distances, q_pids, q_camids, g_pids, g_camids, rule, order, chunk_size, max_matches):
  score = lambda d, qp, qc: _chunk_scores(d, qp, qc, g_pids, g_camids, rule, max_matches)
  return _map_chunks(score, order, (distances, q_pids, q_camids), chunk_size)


@functools.partial(jax.jit, static_argnames=('distance', 'chunk_size', 'max_matches'))
def _scores_from_features(query_features, gallery_features, q_pids, q_camids, g_pids, g_camids, rule, order,
                          distance, chunk_size, max_matches):
  def score(qf, qp, qc):
    d = distance_matrix(qf, gallery_features, distance=distance)
    return _chunk_scores(d, qp, qc, g_pids, g_camids, rule, max_matches)

  return _map_chunks(score, order, (query_features, q_pids, q_camids), chunk_size)


def _on_cpu() -> bool:
  """Whether ranking runs on the CPU backend, where `cpu_ranking` (NumPy) replaces the jitted program."""
  return jax.default_backend() == 'cpu'


def _host_scores(blocks, q_pids, q_camids, g_pids, g_camids, rule: Convention) -> dict[str, np.ndarray]:
  """`cpu_ranking.chunk_scores` over `blocks`, which yields consecutive row blocks of the `[Q, G]` distances."""
  q_pids, q_camids, g_pids, g_camids = (np.asarray(x) for x in (q_pids, q_camids, g_pids, g_camids))
  num_query = len(q_pids)
  ap, first, num_matches = np.zeros(num_query, np.float32), np.zeros(num_query, np.int32), np.zeros(
      num_query, np.int32)
  start = 0
  for distances in blocks:
    rows = slice(start, start + len(distances))
    ap[rows], first[rows], num_matches[rows] = cpu_ranking.chunk_scores(
        distances, q_pids[rows], q_camids[rows], g_pids, g_camids, rule.unlabeled_junk, rule.trapezoid_ap)
    start += len(distances)
  return {'ap': ap, 'first_match_rank': first, 'num_matches': num_matches}


def scores_from_distances(distances, q_pids, q_camids, g_pids, g_camids, *, convention: str,
                          chunk_size: int = DEFAULT_CHUNK_SIZE) -> dict[str, jnp.ndarray]:
  """Per-query ranking scores from a precomputed (e.g. re-ranked) distance matrix (jitted; NumPy on CPU).

  Args:
    distances: float `[Q, G]`, smaller is more similar.
    q_pids, q_camids: int `[Q]` query pids and camids.
    g_pids, g_camids: int `[G]` gallery pids and camids (pid -1 junk, 0 distractor on MARS).
    convention: a key of `CONVENTIONS`.
    chunk_size: queries ranked at once.

  Returns:
    {'ap': float32 `[Q]`, 'first_match_rank': int32 `[Q]` (1-based among non-junk items, 0 = no valid
    match), 'num_matches': int32 `[Q]` valid matches in the gallery}.

  Raises:
    ValueError: unknown convention.
  """
  if _on_cpu():
    host = np.asarray(distances)
    blocks = (host[start:start + chunk_size] for start in range(0, len(host), chunk_size))
    return _host_scores(blocks, q_pids, q_camids, g_pids, g_camids, get_convention(convention))
  return _scores_from_distances(distances, q_pids, q_camids, g_pids, g_camids, _rule_flags(convention),
                                query_order(q_pids, g_pids), chunk_size, match_bound(q_pids, g_pids))


def scores_from_features(query_features, gallery_features, q_pids, q_camids, g_pids, g_camids, *,
                         convention: str, distance: str = 'cosine',
                         chunk_size: int = DEFAULT_CHUNK_SIZE) -> dict[str, jnp.ndarray]:
  """Per-query ranking scores from features, one distance block at a time (jitted; NumPy on CPU).

  Args:
    query_features: float `[Q, D]`; gallery_features: float `[G, D]`.
    q_pids, q_camids, g_pids, g_camids, convention, chunk_size: as in `scores_from_distances`.
    distance: 'cosine' or 'euclidean' (see `distance_matrix`).

  Returns:
    The dict of `scores_from_distances`.

  Raises:
    ValueError: unknown convention or distance.
  """
  _check_distance(distance)
  if _on_cpu():
    rows = max(chunk_size, HOST_MATMUL_ROWS)
    blocks = cpu_ranking.distance_blocks(query_features, gallery_features, distance, rows)
    return _host_scores(blocks, q_pids, q_camids, g_pids, g_camids, get_convention(convention))
  return _scores_from_features(query_features, gallery_features, q_pids, q_camids, g_pids, g_camids,
                               _rule_flags(convention), query_order(q_pids, g_pids), distance, chunk_size,
                               match_bound(q_pids, g_pids))


def summarize(scores: Mapping[str, jnp.ndarray], convention: str, num_gallery: int,
              ranks: tuple[int, ...] = CMC_RANKS) -> dict[str, float | int]:
  """Averages per-query scores into mAP and CMC (fractions in [0, 1]) under `convention`'s rule.

  Args:
    scores: output of `scores_from_distances` / `scores_from_features`.
    convention: a key of `CONVENTIONS`.
    num_gallery: G, reported as is.
    ranks: CMC ranks to report, e.g. (1, 5, 10, 20) -> keys 'R-1', 'R-5', ...

  Returns:
    {'mAP', 'R-k' for k in ranks, 'num_query', 'num_gallery', 'num_scored' (queries in the averages),
    'no_match' (queries without a valid match)}. Averages are taken in float64 on the host.

  Raises:
    ValueError: unknown convention, or every query would be skipped for lack of a valid match.
  """
  rule = get_convention(convention)
  ap = np.asarray(scores['ap'], np.float64)
  first = np.asarray(scores['first_match_rank'])
  has_match = np.asarray(scores['num_matches']) > 0
  scored = has_match if rule.skip_no_match else np.ones_like(has_match)
  if not scored.any():
    raise ValueError(f'no query has a valid match in the gallery (convention {convention!r})')
  result = {'mAP': float(ap[scored].mean())}
  for k in ranks:
    result[f'R-{k}'] = float(((first[scored] >= 1) & (first[scored] <= k)).mean())
  result.update(num_query=int(ap.shape[0]), num_gallery=int(num_gallery), num_scored=int(scored.sum()),
                no_match=int((~has_match).sum()))
  return result


def evaluate_features(query_features, gallery_features, q_pids, q_camids, g_pids, g_camids, *,
                      convention: str, distance: str = 'cosine',
                      chunk_size: int = DEFAULT_CHUNK_SIZE) -> dict[str, float | int]:
  """mAP and CMC of query features `[Q, D]` against gallery features `[G, D]` (see `summarize`)."""
  scores = scores_from_features(query_features, gallery_features, q_pids, q_camids, g_pids, g_camids,
                                convention=convention, distance=distance, chunk_size=chunk_size)
  return summarize(scores, convention, num_gallery=gallery_features.shape[0])


def evaluate_distances(distances, q_pids, q_camids, g_pids, g_camids, *, convention: str,
                       chunk_size: int = DEFAULT_CHUNK_SIZE) -> dict[str, float | int]:
  """mAP and CMC from a `[Q, G]` distance matrix (see `summarize`)."""
  scores = scores_from_distances(distances, q_pids, q_camids, g_pids, g_camids, convention=convention,
                                 chunk_size=chunk_size)
  return summarize(scores, convention, num_gallery=distances.shape[1])


@functools.partial(jax.jit, static_argnames=('k',))
def top_k_gallery(distances: jnp.ndarray, k: int) -> jnp.ndarray:
  """Indices int32 `[Q, k]` of the k nearest gallery items per query, ties in gallery order."""
  _, indices = jax.lax.top_k(-distances, k)
  return indices
