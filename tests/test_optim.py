"""Tests for lstrl_jax.train.optim: the schedule by hand, the optimiser against torch.optim.Adam."""

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest
import torch

from lstrl_jax.models import lstrl
from lstrl_jax.train import optim


def _config(**overrides):
  config = ml_collections.ConfigDict(
      dict(learning_rate=3e-4, weight_decay=5e-4, warmup_epochs=2, decay_every_epochs=3, decay_factor=0.1)
  )
  config.update(overrides)
  return config


def test_schedule_hand_values():
  # 2 steps per epoch: warm-up over 4 steps, decay every 6 steps.
  schedule = optim.learning_rate_schedule(_config(), steps_per_epoch=2)
  expected = {0: 3e-4 / 4, 1: 3e-4 / 2, 3: 3e-4, 5: 3e-4, 6: 3e-5, 11: 3e-5, 12: 3e-6}
  for step, lr in expected.items():
    assert float(schedule(step)) == pytest.approx(lr, rel=1e-6), step


def test_schedule_matches_author_per_epoch_warmup_at_epoch_ends():
  # Author code: lr * (e + 1) / warmup for epoch e; the per-step ramp meets it at each epoch's last step.
  config = _config(warmup_epochs=10, decay_every_epochs=70)
  schedule = optim.learning_rate_schedule(config, steps_per_epoch=78)
  for epoch in range(10):
    assert float(schedule(78 * epoch + 77)) == pytest.approx(3e-4 * (epoch + 1) / 10, rel=1e-5)


def test_schedule_without_warmup_or_decay():
  schedule = optim.learning_rate_schedule(_config(warmup_epochs=0, decay_every_epochs=0), steps_per_epoch=5)
  assert [float(schedule(s)) for s in (0, 7, 1000)] == pytest.approx([3e-4] * 3)


def test_adam_matches_torch_adam_with_weight_decay():
  # Same parameters, gradients and per-step learning rates through 6 steps of warm-up and decay.
  config = _config(learning_rate=0.1, weight_decay=0.05, warmup_epochs=1, decay_every_epochs=2)
  steps_per_epoch = 2
  schedule = optim.learning_rate_schedule(config, steps_per_epoch)
  tx = optim.make_optimizer(config, steps_per_epoch)
  rng = np.random.default_rng(0)
  init = rng.normal(size=(3, 4)).astype(np.float32)
  grads = rng.normal(size=(6, 3, 4)).astype(np.float32)

  params = {'w': jnp.asarray(init)}
  state = tx.init(params)
  weight = torch.nn.Parameter(torch.tensor(init))
  reference = torch.optim.Adam([weight], lr=0.1, betas=(0.9, 0.999), eps=1e-8, weight_decay=0.05)
  for step in range(6):
    updates, state = tx.update({'w': jnp.asarray(grads[step])}, state, params)
    params = jax.tree.map(lambda p, u: p + u, params, updates)
    for group in reference.param_groups:
      group['lr'] = float(schedule(step))
    weight.grad = torch.tensor(grads[step])
    reference.step()
    np.testing.assert_allclose(np.asarray(params['w']), weight.detach().numpy(), rtol=1e-5, atol=1e-6)


def test_frozen_parameter_never_changes():
  config = _config(learning_rate=1.0, weight_decay=0.5, warmup_epochs=0)
  tx = optim.make_optimizer(config, steps_per_epoch=1, trainable_mask=lstrl.trainable_mask)
  params = {'bnneck': {'bias': jnp.zeros(3), 'scale': jnp.ones(3)}, 'dense': {'bias': jnp.full(3, 0.25)}}
  state = tx.init(params)
  for _ in range(3):
    grads = jax.tree.map(jnp.ones_like, params)
    updates, state = tx.update(grads, state, params)
    params = jax.tree.map(lambda p, u: p + u, params, updates)
  assert np.array_equal(np.asarray(params['bnneck']['bias']), np.zeros(3))
  assert not np.allclose(np.asarray(params['bnneck']['scale']), 1.0)
  assert not np.allclose(np.asarray(params['dense']['bias']), 0.25)
