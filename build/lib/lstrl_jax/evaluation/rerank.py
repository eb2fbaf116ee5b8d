"""k-reciprocal re-ranking (Zhong, Zheng, Cao, Li: "Re-ranking Person Re-identification with k-reciprocal
Encoding", CVPR 2017), in jnp.

Follows the authors' Python reference (`re_ranking(q_g_dist, q_q_dist, g_g_dist, k1, k2, lambda_value)`)
step by step, with its loops replaced by array operations over all N = Q + G tracklets:
1. d(i, j)^2 over query and gallery together, each row divided by its maximum;
2. R(i, k1), the k1-reciprocal neighbours (i among the k1+1 nearest of each of its k1+1 nearest);
3. expansion: R(i, k1) plus R(j, round(k1/2)) of every j in R(i, k1) sharing more than 2/3 of it with R(i, k1);
4. V_i: Gaussian weights exp(-d(i, j)) on that set, summing to 1 (paper eq. 7);
5. local query expansion: V_i <- mean of V over the k2 nearest of i (eq. 11), skipped for k2 = 1;
6. Jaccard distance 1 - sum min(V_i, V_j) / sum max(V_i, V_j), written as 1 - m / (2 - m) with
   m = sum_k min(V_ik, V_jk) since each V row sums to 1 (eq. 10);
7. d* = (1 - lambda) d_J + lambda d (eq. 12).
Nearest neighbours come from `jax.lax.top_k`, which keeps the lower index first on ties. Memory is a few
dense `[N, N]` float32 arrays (V is stored dense like the reference); the Jaccard step only walks the
non-zero entries of each query's V row, in chunks of queries.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp

_JACCARD_CHUNK = 8  # queries per Jaccard block: [chunk, K, G] floats
_SUPPORT_MULTIPLE = 32  # the V support size K is rounded up to limit recompilation


def _k_reciprocal_sets(neighbours: jnp.ndarray, k: int) -> tuple[jnp.ndarray, jnp.ndarray]:
  """R(i, k) for every i: the k+1 nearest `[N, k+1]` and a bool mask `[N, k+1]` of the reciprocal ones."""
  forward = neighbours[:, :k + 1]
  backward = forward[forward]  # [N, k+1, k+1]: the k+1 nearest of each of i's k+1 nearest
  rows = jnp.arange(forward.shape[0])[:, None, None]
  return forward, jnp.any(backward == rows, axis=-1)


@functools.partial(jax.jit, static_argnames=('k1', 'k2'))
def _encode(original_dist: jnp.ndarray, k1: int, k2: int) -> jnp.ndarray:
  """The k-reciprocal feature V `[N, N]` (after local query expansion) from row-normalised distances."""
  num = original_dist.shape[0]
  half = int(round(k1 / 2))
  _, neighbours = jax.lax.top_k(-original_dist, max(k1 + 1, k2))
  forward, recip = _k_reciprocal_sets(neighbours, k1)  # [N, k1+1]
  half_forward, half_recip = _k_reciprocal_sets(neighbours, half)  # [N, half+1]
  # For each candidate j = forward[i, a]: its R(j, half) and how much of it lies in R(i, k1).
  cand_set = half_forward[forward]  # [N, k1+1, half+1]
  cand_mask = half_recip[forward]
  in_r = jnp.any((cand_set[..., None] == forward[:, None, None, :]) & recip[:, None, None, :], axis=-1)
  overlap = jnp.sum(in_r & cand_mask, axis=-1)
  accept = recip & (overlap > 2.0 / 3.0 * jnp.sum(cand_mask, axis=-1))
  expansion = jnp.concatenate([forward, cand_set.reshape(num, -1)], axis=1)
  keep = jnp.concatenate([recip, (cand_mask & accept[..., None]).reshape(num, -1)], axis=1)
  rows = jnp.broadcast_to(jnp.arange(num)[:, None], expansion.shape)
  member = jnp.zeros((num, num), jnp.float32).at[rows, expansion].max(keep.astype(jnp.float32))
  weight = member * jnp.exp(-original_dist)
  v = weight / jnp.sum(weight, axis=1, keepdims=True)
  if k2 == 1:
    return v
  return jax.lax.map(lambda r: jnp.mean(v[r], axis=0), neighbours[:, :k2], batch_size=256)


@functools.partial(jax.jit, static_argnames=('num_query', 'support'))
def _jaccard(v: jnp.ndarray, num_query: int, support: int) -> jnp.ndarray:
  """Jaccard distance `[Q, G]` between the V rows of the queries and of the gallery (eq. 10).

  Only the `support` largest entries of each query row are visited (all of its non-zeros).
  """
  values, columns = jax.lax.top_k(v[:num_query], support)  # [Q, K]
  gallery_by_column = v[num_query:].T  # [N, G]

  def one_query(args):
    value, column = args
    return jnp.sum(jnp.minimum(value[:, None], gallery_by_column[column]), axis=0)

  shared = jax.lax.map(one_query, (values, columns), batch_size=_JACCARD_CHUNK)
  return 1.0 - shared / (2.0 - shared)


@jax.jit
def _original_dist(q_g_dist, q_q_dist, g_g_dist):
  full = jnp.concatenate([jnp.concatenate([q_q_dist, q_g_dist], axis=1),
                          jnp.concatenate([q_g_dist.T, g_g_dist], axis=1)], axis=0)
  full = jnp.square(full.astype(jnp.float32))
  return (full / jnp.max(full, axis=0)).T


def k_reciprocal_rerank(q_g_dist: jnp.ndarray, q_q_dist: jnp.ndarray, g_g_dist: jnp.ndarray, *,
                        k1: int = 20, k2: int = 6, lambda_value: float = 0.3) -> jnp.ndarray:
  """Re-ranked query-gallery distances d* (Zhong et al. 2017, eq. 12).

  Args:
    q_g_dist: float `[Q, G]` query-gallery distances (e.g. Euclidean or cosine; they are squared and
      row-normalised as in the reference).
    q_q_dist: float `[Q, Q]`; g_g_dist: float `[G, G]`.
    k1: size of the k-reciprocal neighbourhood (paper: 20).
    k2: neighbours averaged by local query expansion (paper: 6; 1 disables it).
    lambda_value: weight of the original distance (paper: 0.3).

  Returns:
    float32 `[Q, G]`, smaller is more similar.

  Raises:
    ValueError: inconsistent shapes, or fewer than max(k1 + 1, k2) tracklets in all.
  """
  num_query, num_gallery = q_g_dist.shape
  if q_q_dist.shape != (num_query, num_query) or g_g_dist.shape != (num_gallery, num_gallery):
    raise ValueError(f'distance shapes {q_g_dist.shape}, {q_q_dist.shape}, {g_g_dist.shape} do not form '
                     '[Q, G], [Q, Q], [G, G]')
  if num_query + num_gallery < max(k1 + 1, k2):
    raise ValueError(f're-ranking needs at least {max(k1 + 1, k2)} query + gallery tracklets '
                     f'(k1={k1}, k2={k2}), got {num_query + num_gallery}')
  original_dist = _original_dist(q_g_dist, q_q_dist, g_g_dist)
  v = _encode(original_dist, k1, k2)
  nonzero = int(jnp.max(jnp.sum(v[:num_query] > 0, axis=1)))
  support = min(-(-nonzero // _SUPPORT_MULTIPLE) * _SUPPORT_MULTIPLE, v.shape[1])
  jaccard = _jaccard(v, num_query, support)
  return jaccard * (1.0 - lambda_value) + original_dist[:num_query, num_query:] * lambda_value
