"""Tests for the jitted train step (lstrl_jax.train.trainer) on a tiny stand-in model with the LSTRL contract.

The stand-in has what the step relies on: BatchNorm statistics, an output dict {'features', 'bn_features',
'logits'} and a BNNeck named 'bnneck' whose bias the optimiser must freeze. The 2-device check runs in a
subprocess with XLA_FLAGS=--xla_force_host_platform_device_count=2.
"""

import os
import pathlib
import subprocess
import sys
import textwrap

import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest

from lstrl_jax import sharding
from lstrl_jax.data import pipeline
from lstrl_jax.models import lstrl
from lstrl_jax.train import losses
from lstrl_jax.train import optim
from lstrl_jax.train import state as state_lib
from lstrl_jax.train import trainer

REPO = pathlib.Path(__file__).resolve().parents[1]


class TinyReID(nn.Module):
  """`[B, T, H, W, 3]` -> conv, BN, ReLU, GAP+TAP -> f `[B, 8]`; BNNeck -> f_bn; bias-free classifier."""

  num_classes: int

  @nn.compact
  def __call__(self, clips, *, train):
    b, t, h, w, c = clips.shape
    x = nn.Conv(8, (3, 3), strides=(2, 2), use_bias=False)(clips.reshape(b * t, h, w, c))
    x = nn.relu(nn.BatchNorm(use_running_average=not train, momentum=0.9)(x))
    features = jnp.mean(x.reshape(b, -1, 8), axis=1)
    bn_features = nn.BatchNorm(use_running_average=not train, momentum=0.9, name='bnneck')(features)
    logits = nn.Dense(self.num_classes, use_bias=False, name='classifier')(bn_features)
    return {'features': features, 'bn_features': bn_features, 'logits': logits}


def tiny_config():
  return ml_collections.ConfigDict(
      dict(
          seq_len=2, height=16, width=8, num_identities=2, num_instances=2, learning_rate=1e-2,
          weight_decay=5e-4, warmup_epochs=1, decay_every_epochs=10, decay_factor=0.1, label_smoothing=0.1,
          triplet_margin=0.3, model=dict(pretrained=''),
      )
  )


def tiny_batch(seed=0):
  rng = np.random.default_rng(seed)
  return {
      'clips': rng.integers(0, 256, size=(4, 2, 16, 8, 3), dtype=np.uint8),
      'pids': np.array([0, 0, 1, 1], np.int32),
      'camids': np.array([0, 1, 0, 1], np.int32),
  }


def setup(mesh, steps_per_epoch=4):
  """(model, schedule, fresh replicated train state, jitted train step) for the stand-in on `mesh`."""
  config = tiny_config()
  model = TinyReID(num_classes=3)
  schedule = optim.learning_rate_schedule(config, steps_per_epoch)
  tx = optim.make_optimizer(config, steps_per_epoch, lstrl.trainable_mask)
  state = state_lib.create_train_state(model, config, tx, jax.random.key(0), mesh)
  return model, schedule, state, trainer.make_train_step(config, schedule, mesh)


@pytest.fixture(scope='module')
def compiled():
  """One compiled step for the in-process tests, and a host copy of the initial state to start each from."""
  mesh = sharding.make_mesh()
  model, schedule, state, step = setup(mesh)
  return mesh, model, schedule, jax.device_get(state), step


def fresh(compiled):
  mesh, model, schedule, initial, step = compiled
  return mesh, model, schedule, jax.device_put(initial, sharding.replicated(mesh)), step


def test_metrics_are_the_losses_on_normalised_clips(compiled):
  mesh, model, schedule, state, step = fresh(compiled)
  batch = tiny_batch()

  @jax.jit
  def reference(variables):
    # The losses recomputed outside the step on the same (pre-step) variables and normalised clips.
    outputs, _ = model.apply(variables, pipeline.normalize(batch['clips']), train=True, mutable=['batch_stats'])
    ce = losses.label_smoothed_cross_entropy(outputs['logits'], batch['pids'], 0.1)
    return {'ce': ce, 'triplet': losses.batch_hard_triplet(outputs['features'], batch['pids'], 0.3)}

  expected = jax.device_get(reference({'params': state.params, 'batch_stats': state.batch_stats}))
  new_state, metrics = step(state, sharding.shard_batch(batch, mesh))
  metrics = jax.device_get(metrics)
  assert metrics['ce'] == pytest.approx(expected['ce'], rel=1e-5)
  assert metrics['triplet'] == pytest.approx(expected['triplet'], rel=1e-5)
  assert metrics['loss'] == pytest.approx(expected['ce'] + expected['triplet'], rel=1e-5)
  assert metrics['learning_rate'] == pytest.approx(float(schedule(0)))
  assert int(new_state.step) == 1


def test_step_updates_params_and_statistics_but_not_bnneck_bias(compiled):
  mesh, _, _, state, step = fresh(compiled)
  before = jax.device_get({'params': state.params, 'batch_stats': state.batch_stats})
  for seed in range(3):
    state, _ = step(state, sharding.shard_batch(tiny_batch(seed), mesh))
  after = jax.device_get({'params': state.params, 'batch_stats': state.batch_stats})
  assert np.array_equal(after['params']['bnneck']['bias'], np.zeros(8, np.float32))
  assert not np.allclose(after['params']['bnneck']['scale'], before['params']['bnneck']['scale'])
  assert not np.allclose(after['params']['classifier']['kernel'], before['params']['classifier']['kernel'])
  assert not np.allclose(after['batch_stats']['bnneck']['mean'], before['batch_stats']['bnneck']['mean'])


def test_state_is_donated(compiled):
  mesh, _, _, state, step = fresh(compiled)
  kernel = state.params['classifier']['kernel']
  step(state, sharding.shard_batch(tiny_batch(), mesh))
  assert kernel.is_deleted()


_TWO_DEVICES = textwrap.dedent(
    """
    import sys
    import jax, numpy as np
    from lstrl_jax import sharding
    from tests import test_train_step as t

    assert jax.device_count() == 2, jax.devices()
    mesh = sharding.make_mesh()
    _, _, state, step = t.setup(mesh)
    final = t.run_two_steps(mesh, state, step)
    np.savez(sys.argv[1], *jax.tree.leaves(final))
    try:
      t.make_train_step_for_batch(3)
    except ValueError as error:
      print('ERROR', error)
    """
)


def run_two_steps(mesh, state, step):
  """Two steps on batches 0 and 1 sharded over `mesh`; returns the final variables on the host."""
  for seed in range(2):
    batch = sharding.shard_batch(tiny_batch(seed), mesh)
    assert len(batch['clips'].sharding.device_set) == mesh.devices.size
    state, _ = step(state, batch)
  return jax.device_get({'params': state.params, 'batch_stats': state.batch_stats})


def make_train_step_for_batch(global_batch):
  """`make_train_step` for a config whose P*K is `global_batch` (used by the 2-device subprocess)."""
  config = tiny_config()
  config.num_identities, config.num_instances = global_batch, 1
  return trainer.make_train_step(config, optim.learning_rate_schedule(config, 1), sharding.make_mesh())


def test_two_devices_match_one_device_and_odd_batch_is_refused(compiled, tmp_path):
  mesh, _, _, state, step = fresh(compiled)
  one_device = jax.tree.leaves(run_two_steps(mesh, state, step))
  env = dict(os.environ, XLA_FLAGS='--xla_force_host_platform_device_count=2', JAX_PLATFORMS='cpu')
  result = subprocess.run(
      [sys.executable, '-c', _TWO_DEVICES, str(tmp_path / 'two.npz')],
      cwd=REPO, env=env, capture_output=True, text=True, timeout=300,
  )
  assert result.returncode == 0, result.stderr[-3000:]
  assert 'ERROR config.num_identities * config.num_instances = 3 does not divide over 2 devices' in result.stdout
  with np.load(tmp_path / 'two.npz') as two_devices:
    assert len(two_devices.files) == len(one_device)
    for i, leaf in enumerate(one_device):
      np.testing.assert_allclose(two_devices[f'arr_{i}'], leaf, rtol=1e-4, atol=1e-5)
