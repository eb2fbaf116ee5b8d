"""The two LSTRL training losses (DESIGN.md section 2): label-smoothed cross-entropy and batch-hard triplet.

Both are pure functions of arrays and reduce to a float32 scalar (the mean over the batch; float64 for float64
inputs), so they run unchanged inside the jitted, batch-sharded train step: under `jax.jit` the batch-hard
mining sees the whole global batch, exactly as a single-GPU PyTorch run would.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import optax

# Squared distances are clamped here before the square root, as in the author group's PyTorch code
# (`dist.clamp(min=1e-12).sqrt()`): it keeps the gradient of the self-distance finite (zero).
_MIN_SQUARED_DISTANCE = 1e-12


def label_smoothed_cross_entropy(logits: jax.Array, labels: jax.Array, smoothing: float) -> jax.Array:
  """Cross-entropy against label-smoothed one-hot targets, averaged over the batch.

  The target of an example with class y is `(1 - smoothing) * onehot(y) + smoothing / N`, as in
  `CrossEntropyLabelSmooth` of the ReID codebases (Szegedy et al., "Rethinking the Inception Architecture",
  section 7); `smoothing = 0` is the plain cross-entropy.

  Args:
    logits: float `[B, N]` classifier outputs (unnormalised log-probabilities).
    labels: int `[B]` classes in 0..N-1 (training pids).
    smoothing: the smoothing factor epsilon in [0, 1) (paper: 0.1).

  Returns:
    float32 scalar (float64 for float64 logits), the mean loss in nats.
  """
  logits = logits.astype(jnp.promote_types(logits.dtype, jnp.float32))
  targets = optax.smooth_labels(jax.nn.one_hot(labels, logits.shape[-1], dtype=logits.dtype), smoothing)
  return jnp.mean(optax.softmax_cross_entropy(logits, targets))


def pairwise_euclidean(x: jax.Array) -> jax.Array:
  """Euclidean distances between all rows of `x`.

  Computed as `sqrt(max(|a|^2 + |b|^2 - 2 a.b, 1e-12))`, the expansion the author code uses, so the
  diagonal is 1e-6 rather than 0.

  Args:
    x: float `[B, D]` features.

  Returns:
    float32 `[B, B]` distances (float64 for float64 features).
  """
  x = x.astype(jnp.promote_types(x.dtype, jnp.float32))
  squared_norms = jnp.sum(jnp.square(x), axis=-1)
  squared = squared_norms[:, None] + squared_norms[None, :] - 2.0 * (x @ x.T)
  return jnp.sqrt(jnp.maximum(squared, _MIN_SQUARED_DISTANCE))


def batch_hard_triplet(features: jax.Array, pids: jax.Array, margin: float) -> jax.Array:
  """Batch-hard triplet loss (Hermans, Beyer, Leibe, "In Defense of the Triplet Loss", 2017).

  For every anchor a in the batch: the hardest positive is the farthest clip with the same pid (the anchor
  itself included, at distance ~0), the hardest negative the closest clip with another pid, and the loss is
  `max(0, d(a, p) - d(a, n) + margin)`, averaged over anchors (PyTorch's `MarginRankingLoss`). An anchor
  with no negative in the batch contributes 0. LSTRL applies it to the clip feature f before BNNeck.

  Args:
    features: float `[B, D]` clip features f.
    pids: int `[B]` identities.
    margin: the margin in feature-space distance units (paper: 0.3).

  Returns:
    float32 scalar (float64 for float64 features), the mean hinge loss.
  """
  distances = pairwise_euclidean(features)
  same_pid = pids[:, None] == pids[None, :]
  hardest_positive = jnp.max(jnp.where(same_pid, distances, -jnp.inf), axis=1)
  hardest_negative = jnp.min(jnp.where(same_pid, jnp.inf, distances), axis=1)
  return jnp.mean(jax.nn.relu(hardest_positive - hardest_negative + margin))
