"""Tests for lstrl_jax.train.losses against hand-worked values and a brute-force triplet enumeration."""

import itertools
import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from lstrl_jax.train import losses


def test_cross_entropy_hand_worked():
  # Two classes with probabilities 1/4 and 3/4; label 1, smoothing 0.2 -> targets (0.1, 0.9).
  logits = jnp.array([[0.0, math.log(3.0)]])
  expected = -(0.1 * math.log(0.25) + 0.9 * math.log(0.75))
  got = losses.label_smoothed_cross_entropy(logits, jnp.array([1]), 0.2)
  assert float(got) == pytest.approx(expected, rel=1e-6)


def test_cross_entropy_batch_mean_and_no_smoothing():
  # Equal logits give ln(N) whatever the label and smoothing; without smoothing the loss is -log p_y.
  logits = jnp.array([[1.0, 1.0, 1.0], [0.0, math.log(2.0), math.log(5.0)]])
  labels = jnp.array([0, 2])
  expected = 0.5 * (math.log(3.0) - math.log(5.0 / 8.0))
  assert float(losses.label_smoothed_cross_entropy(logits, labels, 0.0)) == pytest.approx(expected, rel=1e-6)
  smoothed_second = -(0.1 / 3 * (math.log(1 / 8) + math.log(2 / 8)) + (0.9 + 0.1 / 3) * math.log(5 / 8))
  expected = 0.5 * (math.log(3.0) + smoothed_second)
  assert float(losses.label_smoothed_cross_entropy(logits, labels, 0.1)) == pytest.approx(expected, rel=1e-6)


def test_pairwise_euclidean_matches_norms():
  x = jnp.array([[0.0, 0.0], [3.0, 4.0], [6.0, 8.0]])
  d = np.asarray(losses.pairwise_euclidean(x))
  np.testing.assert_allclose(d, [[1e-6, 5, 10], [5, 1e-6, 5], [10, 5, 1e-6]], rtol=1e-5, atol=1e-5)


def test_batch_hard_triplet_hand_worked():
  # Points on a line; pids (0, 0, 1, 1). Per anchor (hardest positive, hardest negative):
  # x=0: (2, 1.5) -> 0.8; x=2: (2, 0.5) -> 1.8; x=1.5: (3.5, 0.5) -> 3.3; x=5: (3.5, 3) -> 0.8.
  features = jnp.array([[0.0, 0.0], [2.0, 0.0], [1.5, 0.0], [5.0, 0.0]])
  pids = jnp.array([0, 0, 1, 1])
  got = losses.batch_hard_triplet(features, pids, margin=0.3)
  assert float(got) == pytest.approx((0.8 + 1.8 + 3.3 + 0.8) / 4, rel=1e-5)


def test_batch_hard_triplet_zero_when_separated():
  # Every hardest negative is farther than every hardest positive plus the margin.
  features = jnp.array([[0.0], [1.0], [10.0], [11.0]])
  got = losses.batch_hard_triplet(features, jnp.array([3, 3, 7, 7]), margin=0.3)
  assert float(got) == 0.0


def _brute_force_triplet(x, pids, margin):
  """Max over every (positive, negative) pair of the hinge, per anchor: equal to batch-hard by monotonicity."""
  per_anchor = []
  for a in range(len(x)):
    hinges = [0.0]
    for p, n in itertools.product(range(len(x)), repeat=2):
      if pids[p] == pids[a] and pids[n] != pids[a]:
        hinges.append(np.linalg.norm(x[a] - x[p]) - np.linalg.norm(x[a] - x[n]) + margin)
    per_anchor.append(max(hinges))
  return np.mean(per_anchor)


def test_batch_hard_triplet_matches_brute_force():
  rng = np.random.default_rng(0)
  x = rng.normal(size=(12, 5)).astype(np.float32)
  pids = np.repeat(np.arange(4), 3)
  got = losses.batch_hard_triplet(jnp.asarray(x), jnp.asarray(pids), margin=0.3)
  assert float(got) == pytest.approx(_brute_force_triplet(x, pids, 0.3), rel=1e-5)


def test_batch_hard_triplet_gradient_finite_with_single_identity():
  # One pid only: no negatives, loss 0, and the clamped self-distance keeps gradients finite.
  x = jnp.array([[1.0, 2.0], [1.0, 2.0]])
  value, grad = jax.value_and_grad(losses.batch_hard_triplet)(x, jnp.array([0, 0]), 0.3)
  assert float(value) == 0.0
  assert np.all(np.isfinite(np.asarray(grad)))
