"""Tests of lstrl_jax.evaluation.metrics: hand-worked rankings and a per-query NumPy reference."""

import os

import numpy as np
import pytest
import threadpoolctl

from lstrl_jax.evaluation import cpu_ranking
from lstrl_jax.evaluation import metrics

ALL = tuple(metrics.CONVENTIONS)
SKIP_NO_MATCH = ('paper', 'torchreid', 'cross_camera')  # AP3D/TCLNet and torchreid skip; MATLAB counts 0


@pytest.fixture(params=['host', 'jitted'])
def ranking_path(request, monkeypatch):
  """Runs a test on the CPU backend's NumPy path ('host') and on the jitted accelerator path ('jitted')."""
  monkeypatch.setattr(metrics, '_on_cpu', lambda: request.param == 'host')
  return request.param


def _evaluate(distances, q_pids, q_camids, g_pids, g_camids, convention, chunk_size=4):
  return metrics.evaluate_distances(
      np.asarray(distances, np.float32), np.asarray(q_pids), np.asarray(q_camids), np.asarray(g_pids),
      np.asarray(g_camids), convention=convention, chunk_size=chunk_size)


# Per-query NumPy references, written from the protocols' own code, one loop per query.

def _plain_ap(matches):
  """AP3D / torchreid: mean of the precision at each match of a junk-free ranking."""
  ranks = np.flatnonzero(matches) + 1
  return float(np.mean(np.arange(1, len(ranks) + 1) / ranks))


def _matlab_ap(order, good, junk):
  """MARS compute_AP.m, loop form: trapezoid rule, junk skipped, stops after the last match."""
  ngood = len(good)
  old_recall, old_precision, ap, intersect, j, njunk = 0.0, 1.0, 0.0, 0, 0, 0
  first = 0
  for n, item in enumerate(order):
    is_good = item in good
    if is_good and not first:
      first = n - njunk + 1
    if item in junk:
      njunk += 1
      continue
    intersect += is_good
    recall = intersect / ngood
    precision = intersect / (j + 1)
    ap += (recall - old_recall) * (old_precision + precision) / 2
    old_recall, old_precision = recall, precision
    j += 1
    if intersect == ngood:
      break
  return ap, first


def reference(distances, q_pids, q_camids, g_pids, g_camids, convention):
  """mAP, CMC[rank-1 .. rank-G] and no-match count, one query at a time."""
  num_gallery = distances.shape[1]
  aps, cmcs, no_match = [], [], 0
  for i in range(distances.shape[0]):
    order = np.argsort(distances[i], kind='stable')
    same = g_pids[order] == q_pids[i]
    junk = same & (g_camids[order] == q_camids[i])
    if convention == 'official':
      junk |= g_pids[order] == -1
    good_mask = same & ~junk
    if not good_mask.any():
      no_match += 1
      if convention in SKIP_NO_MATCH:
        continue
      aps.append(0.0)
      cmcs.append(np.zeros(num_gallery))
      continue
    cmc = np.zeros(num_gallery)
    if convention == 'official':
      ap, first = _matlab_ap(list(order), set(order[good_mask]), set(order[junk]))
      cmc[first - 1:] = 1
    else:
      matches = same[~junk]
      ap = _plain_ap(matches)
      cmc[np.argmax(matches):] = 1
    aps.append(ap)
    cmcs.append(cmc)
  return float(np.mean(aps)), np.mean(cmcs, axis=0), no_match


def _random_protocol(rng, num_query, num_gallery, num_pids=25, num_cams=6):
  g_pids = rng.integers(-1, num_pids, num_gallery)  # -1 junk, 0 distractor
  q_pids = rng.integers(1, num_pids + 5, num_query)  # some pids absent from the gallery
  return q_pids, rng.integers(0, num_cams, num_query), g_pids, rng.integers(0, num_cams, num_gallery)


def _assert_matches_reference(result, distances, protocol, convention):
  ap, cmc, no_match = reference(distances, *protocol, convention)
  assert result['mAP'] == pytest.approx(ap, abs=1e-6)
  for k in metrics.CMC_RANKS:
    assert result[f'R-{k}'] == pytest.approx(cmc[k - 1], abs=1e-9)
  assert result['no_match'] == no_match


@pytest.mark.parametrize('convention', ALL)
def test_matches_at_ranks_1_and_3(convention):
  result = _evaluate([[0.1, 0.2, 0.3, 0.4, 0.5]], [7], [0], [7, 3, 7, 4, 5], [1, 1, 2, 1, 1], convention)
  if convention == 'official':  # (1+1)/2 * 1/2 + (1/2 + 2/3)/2 * 1/2
    assert result['mAP'] == pytest.approx(0.5 + 7 / 24, abs=1e-7)
  else:
    assert result['mAP'] == pytest.approx((1 + 2 / 3) / 2, abs=1e-7)
  assert result['R-1'] == 1.0


@pytest.mark.parametrize('convention', ALL)
def test_same_camera_match_is_junk(convention):
  # Nearest item: same pid and camera -> ignored, so the matches sit at ranks 1 and 3 again.
  result = _evaluate([[0.0, 0.1, 0.2, 0.3, 0.4, 0.5]], [7], [0], [7, 7, 3, 7, 4, 5], [0, 1, 1, 2, 1, 1],
                     convention)
  expected = 0.5 + 7 / 24 if convention == 'official' else (1 + 2 / 3) / 2
  assert result['mAP'] == pytest.approx(expected, abs=1e-7)
  assert result['R-1'] == 1.0


@pytest.mark.parametrize('convention', ALL)
def test_unlabeled_junk_only_in_official(convention):
  # pid -1 at rank 1, the one match at rank 2.
  result = _evaluate([[0.1, 0.2, 0.3]], [7], [0], [-1, 7, 5], [1, 1, 1], convention)
  official = convention == 'official'
  assert result['mAP'] == pytest.approx(1.0 if official else 0.5, abs=1e-7)
  assert result['R-1'] == (1.0 if official else 0.0)


@pytest.mark.parametrize('convention', ALL)
def test_distractor_is_a_non_match(convention):
  # pid 0 (distractor) at rank 1 -> the match is at rank 2 in every convention.
  result = _evaluate([[0.1, 0.2, 0.3]], [7], [0], [0, 7, 5], [1, 1, 1], convention)
  # Trapezoid: precision 0 after the non-match at rank 1, 1/2 at the match -> (0 + 1/2) / 2.
  expected = 0.25 if convention == 'official' else 0.5
  assert result['mAP'] == pytest.approx(expected, abs=1e-7)
  assert (result['R-1'], result['R-5']) == (0.0, 1.0)


@pytest.mark.parametrize('convention', ALL)
def test_query_without_valid_match(convention):
  # Query 0 matches at rank 1; query 1 (pid 9) has only a same-camera item in the gallery.
  result = _evaluate([[0.1, 0.2, 0.3], [0.3, 0.2, 0.1]], [7, 9], [0, 0], [7, 9, 5], [1, 0, 1], convention)
  assert result['no_match'] == 1
  assert result['num_query'] == 2
  if convention in SKIP_NO_MATCH:
    assert (result['mAP'], result['R-1'], result['num_scored']) == (1.0, 1.0, 1)
  else:
    assert (result['mAP'], result['R-1'], result['num_scored']) == (0.5, 0.5, 2)


def test_all_queries_without_match_raise_when_skipped():
  with pytest.raises(ValueError, match='no query has a valid match'):
    _evaluate([[0.1, 0.2]], [9], [0], [5, 9], [1, 0], 'torchreid')


@pytest.mark.parametrize('convention', ALL)
def test_ties_keep_gallery_order(convention, ranking_path):
  # All distances equal: the match at gallery position 2 ranks third.
  result = _evaluate([[0.3, 0.3, 0.3, 0.3]], [7], [0], [1, 2, 7, 3], [1, 1, 1, 1], convention)
  expected = (0 + 1 / 3) / 2 if convention == 'official' else 1 / 3
  assert result['mAP'] == pytest.approx(expected, abs=1e-7)
  assert (result['R-1'], result['R-5']) == (0.0, 1.0)


def test_unknown_convention_and_distance():
  with pytest.raises(ValueError, match='unknown scoring convention'):
    _evaluate([[0.1]], [1], [0], [1], [1], 'market')
  with pytest.raises(ValueError, match='unknown distance'):
    metrics.distance_matrix(np.ones((1, 2)), np.ones((1, 2)), distance='manhattan')


def test_distance_matrix_against_numpy():
  rng = np.random.default_rng(0)
  q, g = rng.normal(size=(5, 16)).astype(np.float32), rng.normal(size=(7, 16)).astype(np.float32)
  cos = 1 - (q / np.linalg.norm(q, axis=1, keepdims=True)) @ (g / np.linalg.norm(g, axis=1, keepdims=True)).T
  euc = np.linalg.norm(q[:, None].astype(np.float64) - g[None], axis=-1)
  np.testing.assert_allclose(metrics.distance_matrix(q, g, distance='cosine'), cos, atol=1e-6)
  np.testing.assert_allclose(metrics.distance_matrix(q, g, distance='euclidean'), euc, rtol=1e-5, atol=1e-5)
  for distance, want in (('cosine', cos), ('euclidean', euc)):
    blocks = list(cpu_ranking.distance_blocks(q, g, distance, chunk_size=2))
    assert [len(b) for b in blocks] == [2, 2, 1]
    np.testing.assert_allclose(np.concatenate(blocks), want, rtol=1e-5, atol=1e-5)


def blas_threads() -> list[int]:
  return [library['num_threads'] for library in threadpoolctl.threadpool_info() if library['user_api'] == 'blas']


def test_distance_blocks_leave_one_core_to_the_ranking_and_restore_blas_after():
  rng = np.random.default_rng(0)
  q, g = rng.normal(size=(5, 16)).astype(np.float32), rng.normal(size=(7, 16)).astype(np.float32)
  before, cores = blas_threads(), len(os.sched_getaffinity(0))
  assert before, "NumPy's BLAS is not seen by threadpoolctl"
  blocks = cpu_ranking.distance_blocks(q, g, 'cosine', chunk_size=2)
  next(blocks)
  assert blas_threads() == [max(1, cores - 1)] * len(before)
  assert len(list(blocks)) == 2
  assert blas_threads() == before


@pytest.mark.parametrize('convention', ALL)
def test_random_distances_agree_with_reference(convention, ranking_path):
  rng = np.random.default_rng(1)
  protocol = _random_protocol(rng, num_query=150, num_gallery=400)
  distances = rng.random((150, 400)).astype(np.float32)
  result = _evaluate(distances, *protocol, convention, chunk_size=32)
  _assert_matches_reference(result, distances, protocol, convention)
  assert result['num_gallery'] == 400


@pytest.mark.parametrize('convention', ALL)
def test_random_features_with_ties_agree_with_reference(convention, ranking_path):
  # Small-integer features: Euclidean distances are exact in float32 and tie often.
  rng = np.random.default_rng(2)
  protocol = _random_protocol(rng, num_query=70, num_gallery=300, num_pids=15, num_cams=3)
  qf = rng.integers(-2, 3, (70, 4)).astype(np.float32)
  gf = rng.integers(-2, 3, (300, 4)).astype(np.float32)
  squared = ((qf[:, None].astype(np.int64) - gf[None].astype(np.int64)) ** 2).sum(-1)
  distances = np.sqrt(squared.astype(np.float32))
  assert len(np.unique(distances[0])) < 100  # many ties among 300
  result = metrics.evaluate_features(qf, gf, *protocol, convention=convention, distance='euclidean',
                                     chunk_size=32)
  _assert_matches_reference(result, distances, protocol, convention)


def test_host_and_jitted_paths_give_the_same_per_query_scores(monkeypatch):
  rng = np.random.default_rng(3)
  protocol = _random_protocol(rng, num_query=90, num_gallery=200, num_pids=12, num_cams=3)
  distances = rng.integers(0, 6, (90, 200)).astype(np.float32)  # ties everywhere
  scores = {}
  for host in (True, False):
    monkeypatch.setattr(metrics, '_on_cpu', lambda host=host: host)
    scores[host] = metrics.scores_from_distances(distances, *protocol, convention='official', chunk_size=16)
  for key in ('ap', 'first_match_rank', 'num_matches'):
    np.testing.assert_allclose(scores[True][key], scores[False][key], rtol=1e-6, atol=1e-7, err_msg=key)


def test_query_order_groups_queries_by_gallery_count():
  # pid 5 has 3 gallery items, pid 7 one, pid 9 none: queries [5, 9, 7, 5] -> 9, 7, then the two 5s in order.
  np.testing.assert_array_equal(metrics.query_order([5, 9, 7, 5], [5, 7, 5, 5, 2]), [1, 2, 0, 3])


def test_top_k_gallery_is_stable():
  distances = np.array([[0.5, 0.1, 0.5, 0.1, 0.9]], np.float32)
  np.testing.assert_array_equal(metrics.top_k_gallery(distances, 4), [[1, 3, 0, 2]])


def test_cross_camera_one_match_per_query_hand_worked():
  # iLIDS-VID / PRID-2011 shape: 3 persons, query cam 0, gallery cam 1, one match each, at ranks 1, 3, 2.
  distances = [[0.1, 0.5, 0.6], [0.2, 0.4, 0.3], [0.1, 0.9, 0.2]]
  result = _evaluate(distances, [1, 2, 3], [0, 0, 0], [1, 2, 3], [1, 1, 1], 'cross_camera')
  assert result['mAP'] == pytest.approx((1 + 1 / 3 + 1 / 2) / 3, abs=1e-7)  # AP = 1 / rank
  assert (result['R-1'], result['R-5']) == pytest.approx((1 / 3, 1.0))
  # The MATLAB trapezoid AP of the same ranking: rank 1 -> (1 + 1) / 2; rank 3 -> (0 + 1/3) / 2 (precision
  # 0/2 after two non-matches); rank 2 -> (0 + 1/2) / 2. cross_camera does not use it.
  official = _evaluate(distances, [1, 2, 3], [0, 0, 0], [1, 2, 3], [1, 1, 1], 'official')
  assert official['mAP'] == pytest.approx((1 + 1 / 6 + 1 / 4) / 3, abs=1e-7)
  assert result['mAP'] != pytest.approx(official['mAP'])


def test_paper_skips_a_query_without_match_as_ap3d_does():
  # LS-VID 'paper' gallery (test - query): query pid 9 has no other tracklet; AP3D's evaluate skips it.
  result = _evaluate([[0.1, 0.2], [0.3, 0.4]], [7, 9], [0, 0], [7, 5], [1, 1], 'paper')
  assert (result['mAP'], result['R-1'], result['num_scored'], result['no_match']) == (1.0, 1.0, 1, 1)
  official = _evaluate([[0.1, 0.2], [0.3, 0.4]], [7, 9], [0, 0], [7, 5], [1, 1], 'official')
  assert (official['mAP'], official['R-1'], official['num_scored']) == (0.5, 0.5, 2)  # compute_AP.m: ap=0
