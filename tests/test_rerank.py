"""Tests of lstrl_jax.evaluation.rerank against a NumPy transcription of the authors' reference."""

import numpy as np
import pytest

from lstrl_jax.evaluation import rerank


def reference_re_ranking(q_g_dist, q_q_dist, g_g_dist, k1, k2, lambda_value):
  """Zhong et al.'s `re_ranking` (person-re-ranking/python-version), loops and all."""
  original_dist = np.concatenate([np.concatenate([q_q_dist, q_g_dist], axis=1),
                                  np.concatenate([q_g_dist.T, g_g_dist], axis=1)], axis=0)
  original_dist = np.power(original_dist, 2).astype(np.float32)
  original_dist = np.transpose(1. * original_dist / np.max(original_dist, axis=0))
  v = np.zeros_like(original_dist).astype(np.float32)
  initial_rank = np.argsort(original_dist).astype(np.int32)
  query_num = q_g_dist.shape[0]
  all_num = query_num + q_g_dist.shape[1]

  def reciprocal(i, k):
    forward = initial_rank[i, :k + 1]
    backward = initial_rank[forward, :k + 1]
    return forward[np.where(backward == i)[0]]

  for i in range(all_num):
    k_reciprocal_index = reciprocal(i, k1)
    expansion = k_reciprocal_index
    for candidate in k_reciprocal_index:
      candidate_index = reciprocal(candidate, int(np.around(k1 / 2.)))
      if len(np.intersect1d(candidate_index, k_reciprocal_index)) > 2. / 3 * len(candidate_index):
        expansion = np.append(expansion, candidate_index)
    expansion = np.unique(expansion)
    weight = np.exp(-original_dist[i, expansion])
    v[i, expansion] = 1. * weight / np.sum(weight)
  original_dist = original_dist[:query_num]
  if k2 != 1:
    v_qe = np.zeros_like(v, dtype=np.float32)
    for i in range(all_num):
      v_qe[i, :] = np.mean(v[initial_rank[i, :k2], :], axis=0)
    v = v_qe
  inv_index = [np.where(v[:, i] != 0)[0] for i in range(all_num)]
  jaccard_dist = np.zeros_like(original_dist, dtype=np.float32)
  for i in range(query_num):
    temp_min = np.zeros(shape=[1, all_num], dtype=np.float32)
    ind_non_zero = np.where(v[i, :] != 0)[0]
    ind_images = [inv_index[ind] for ind in ind_non_zero]
    for j in range(len(ind_non_zero)):
      temp_min[0, ind_images[j]] = temp_min[0, ind_images[j]] + np.minimum(
          v[i, ind_non_zero[j]], v[ind_images[j], ind_non_zero[j]])
    jaccard_dist[i] = 1 - temp_min / (2. - temp_min)
  final_dist = jaccard_dist * (1 - lambda_value) + original_dist * lambda_value
  return final_dist[:query_num, query_num:]


def _distances(rng, num_query, num_gallery, dim=6, num_pids=8):
  centres = rng.normal(size=(num_pids, dim))
  pids = rng.integers(0, num_pids, num_query + num_gallery)
  x = centres[pids] + 0.7 * rng.normal(size=(num_query + num_gallery, dim))
  d = np.linalg.norm(x[:, None] - x[None], axis=-1).astype(np.float32)
  return d[:num_query, num_query:], d[:num_query, :num_query], d[num_query:, num_query:]


@pytest.mark.parametrize('k1,k2,lambda_value', [(20, 6, 0.3), (6, 1, 0.5)])
def test_matches_reference(k1, k2, lambda_value):
  q_g, q_q, g_g = _distances(np.random.default_rng(k1), num_query=9, num_gallery=45)
  expected = reference_re_ranking(q_g, q_q, g_g, k1, k2, lambda_value)
  got = rerank.k_reciprocal_rerank(q_g, q_q, g_g, k1=k1, k2=k2, lambda_value=lambda_value)
  assert got.shape == (9, 45)
  np.testing.assert_allclose(np.asarray(got), expected, atol=2e-6)
  # Re-ranking really moved something: the order differs from the original distances somewhere.
  assert (np.argsort(expected, axis=1) != np.argsort(q_g, axis=1)).any()


def test_rejects_too_few_tracklets_and_bad_shapes():
  q_g, q_q, g_g = _distances(np.random.default_rng(0), num_query=3, num_gallery=10)
  with pytest.raises(ValueError, match='at least 21'):
    rerank.k_reciprocal_rerank(q_g, q_q, g_g)
  with pytest.raises(ValueError, match='do not form'):
    rerank.k_reciprocal_rerank(q_g, q_q, g_g[:5, :5], k1=3)
