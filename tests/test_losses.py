"""Tests for lstrl_jax.train.losses against hand-worked values and a brute-force triplet enumeration."""

import itertools
import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch

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


def _torch_batch_hard(x, pids, margin):
  """The author group's PyTorch TripletLoss (AP3D `losses.TripletLoss`), per anchor and reduced.

  Returns (mean loss as float, per-anchor hinge `[B]`, gradient of the mean with respect to x `[B, D]`).
  """
  inputs = torch.tensor(x, dtype=torch.float64, requires_grad=True)
  targets = torch.tensor(pids)
  n = inputs.size(0)
  dist = torch.pow(inputs, 2).sum(dim=1, keepdim=True).expand(n, n)
  dist = dist + dist.t()
  dist = torch.addmm(dist, inputs, inputs.t(), beta=1, alpha=-2)
  dist = dist.clamp(min=1e-12).sqrt()
  mask = targets.expand(n, n).eq(targets.expand(n, n).t())
  dist_ap = torch.stack([dist[i][mask[i]].max() for i in range(n)])
  dist_an = torch.stack([dist[i][~mask[i]].min() for i in range(n)])
  y = torch.ones_like(dist_an)
  per_anchor = torch.nn.MarginRankingLoss(margin=margin, reduction='none')(dist_an, dist_ap, y)
  loss = torch.nn.MarginRankingLoss(margin=margin)(dist_an, dist_ap, y)
  loss.backward()
  return loss.item(), per_anchor.detach().numpy(), inputs.grad.numpy()


def test_batch_hard_triplet_averages_over_every_anchor_like_torch():
  # Two tight, far-apart identities (anchors with zero loss) and two overlapping ones (positive loss):
  # MarginRankingLoss takes the mean over all 8 anchors, zero-loss ones included.
  rng = np.random.default_rng(3)
  centres = np.array([[0.0, 0.0, 0.0], [3.0, 0.0, 0.0], [0.0, 3.0, 0.0], [0.0, 3.1, 0.0]])
  x = (np.repeat(centres, 2, axis=0) + 0.1 * rng.normal(size=(8, 3))).astype(np.float32)
  pids = np.repeat([4, 9, 2, 7], 2)
  want, per_anchor, want_grad = _torch_batch_hard(x, pids, 0.3)
  assert (per_anchor[:4] == 0).all() and (per_anchor[4:] > 0).all()  # the case has both kinds of anchor
  got, grad = jax.value_and_grad(losses.batch_hard_triplet)(jnp.asarray(x), jnp.asarray(pids), 0.3)
  assert float(got) == pytest.approx(want, rel=1e-4)  # float32 against float64
  np.testing.assert_allclose(np.asarray(grad), want_grad, rtol=1e-4, atol=1e-5)
