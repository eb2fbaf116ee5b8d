"""Tests for the jitted train step (lstrl_jax.train.trainer) on a tiny stand-in model with the LSTRL contract.

The stand-in has what the step relies on: BatchNorm statistics, an output dict {'features', 'bn_features',
'logits'} and a BNNeck named 'bnneck' whose bias the optimiser must freeze. The 2-device check runs in a
subprocess with XLA_FLAGS=--xla_force_host_platform_device_count=2.
"""

import os
import pathlib
import signal
import subprocess
import sys
import textwrap

import flax.linen as nn
import grain
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest
import safetensors.numpy

from lstrl_jax import sharding
from lstrl_jax.data import pipeline
from lstrl_jax.models import lstrl
from lstrl_jax.models import weights
from lstrl_jax.train import checkpoint
from lstrl_jax.train import guards
from lstrl_jax.train import losses
from lstrl_jax.train import optim
from lstrl_jax.train import state as state_lib
from lstrl_jax.train import trainer
from lstrl_jax.train import workdir

REPO = pathlib.Path(__file__).resolve().parents[1]


class TinyReID(nn.Module):
  """`[B, T, H, W, 3]` -> `kernel`x`kernel`/2 conv, BN, ReLU, GAP+TAP -> f `[B, width]`; BNNeck -> f_bn;
  bias-free classifier."""

  num_classes: int
  width: int = 8
  kernel: int = 3

  @nn.compact
  def __call__(self, clips, *, train):
    b, t, h, w, c = clips.shape
    x = nn.Conv(self.width, (self.kernel, self.kernel), strides=(2, 2), use_bias=False)(clips.reshape(b * t, h, w, c))
    x = nn.relu(nn.BatchNorm(use_running_average=not train, momentum=0.9)(x))
    features = jnp.mean(x.reshape(b, -1, self.width), axis=1)
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


class RecordingWriter:
  """Stands in for `writers.MetricWriter`: keeps the records instead of writing TensorBoard files."""

  def __init__(self):
    self.records, self.lines = [], []

  def write(self, step, scalars):
    self.records.append((step, dict(scalars)))

  def advance(self, steps=1):
    del steps

  def show(self, **fields):
    del fields

  def print_line(self, message):
    self.lines.append(message)


def make_run(compiled, tmp_path, **overrides):
  """A `trainer.Run` of the stand-in: 4 steps per epoch, 8 in all, checkpoints every epoch, no evaluation."""
  mesh, model, _, _, step = compiled
  config = ml_collections.ConfigDict(
      dict(num_identities=2, num_instances=2, log_every_steps=1, checkpoint_every_epochs=1, eval_every_epochs=0,
           stop_at_step=0)
  )
  config.update(overrides)
  batches = grain.MapDataset.range(1000).map(tiny_batch).to_iter_dataset()
  return trainer.Run(
      config=config, dataset=None, model=model, mesh=mesh, step_fn=step, data_iterator=iter(batches),
      manager=checkpoint.make_manager(tmp_path, max_to_keep=3), writer=RecordingWriter(),
      workdir=workdir.Workdir(tmp_path), loss_watch=guards.LossWatch(10.0), steps_per_epoch=4, total_steps=8,
  )


def test_stop_at_step_saves_then_infinite_learning_rate_diverges_without_saving(compiled, tmp_path):
  _, _, _, state, _ = fresh(compiled)
  run = make_run(compiled, tmp_path, stop_at_step=2)
  with guards.StopRequest(run.manager) as stop_request:
    state, step, stopped = trainer.train_loop(run, state, 0, stop_request)
  run.manager.wait_until_finished()
  assert (step, stopped, run.manager.latest_step()) == (2, True, 2)
  assert [s for s, record in run.writer.records] == [1, 2]
  assert run.writer.records[0][1]['train/loss'] == pytest.approx(
      run.writer.records[0][1]['train/ce'] + run.writer.records[0][1]['train/triplet'], rel=1e-6
  )
  saved = jax.device_get(state.params)

  # Continue with an infinite learning rate: step 3's update makes every parameter NaN, so step 4's loss is
  # NaN; the loop stops at that log, before the epoch-end save of step 4.
  config = tiny_config()
  config.learning_rate = float('inf')
  state = state.replace(tx=optim.make_optimizer(config, 4, lstrl.trainable_mask))
  with guards.StopRequest(run.manager) as stop_request:
    with pytest.raises(guards.TrainingDivergedError, match='training loss is nan at step 4; stopped without saving'):
      trainer.train_loop(run, state, step, stop_request)
  assert run.manager.latest_step() == 2
  restored = checkpoint.load_for_eval(tmp_path)[1]['params']
  for a, b in zip(jax.tree.leaves(restored), jax.tree.leaves(saved)):
    assert np.array_equal(np.asarray(a), b)


def test_sigterm_sets_the_stop_request_and_the_old_handler_returns(tmp_path):
  manager = checkpoint.make_manager(tmp_path, max_to_keep=1)
  before = signal.getsignal(signal.SIGTERM)
  with guards.StopRequest(manager) as stop_request:
    assert not stop_request.requested(1)
    os.kill(os.getpid(), signal.SIGTERM)
    assert stop_request.requested(2)
  assert signal.getsignal(signal.SIGTERM) is before


def test_parameter_check_names_the_step_and_the_last_checkpoint(tmp_path):
  manager = checkpoint.make_manager(tmp_path, max_to_keep=1)
  guards.check_params({'w': jnp.ones(3)}, 5, manager)
  with pytest.raises(guards.TrainingDivergedError, match='parameters are not finite after step 5;.*no checkpoint'):
    guards.check_params({'w': jnp.array([1.0, jnp.inf, 0.0]), 'b': jnp.zeros(2)}, 5, manager)
  with pytest.raises(guards.TrainingDivergedError, match='training loss is inf at step 8'):
    guards.LossWatch(0.0).check([1.0, 2.0, float('inf'), float('nan')], 5, manager)


def test_a_loss_far_above_its_running_median_is_divergence(tmp_path):
  manager = checkpoint.make_manager(tmp_path, max_to_keep=1)
  watch = guards.LossWatch(10.0, window=3)
  watch.check([9.0, 1.0, 2.0, 3.0], 0, manager)  # the window keeps 1, 2, 3: median 2
  watch.check([19.9], 4, manager)  # just under 10 x 2; the window is now 2, 3, 19.9
  with pytest.raises(guards.TrainingDivergedError, match=r'loss 70 at step 7 exceeds 10 x its running median 3.5 '):
    watch.check([3.5, 70.0], 5, manager)  # 3.5 passes (median 3); then the window is 3, 19.9, 3.5: median 3.5
  guards.LossWatch(0.0).check([1.0, 1e12], 0, manager)  # 0 turns the bound off


def test_ctrl_c_requests_a_stop_and_a_second_one_aborts(tmp_path):
  manager = checkpoint.make_manager(tmp_path, max_to_keep=1)
  before = signal.getsignal(signal.SIGINT)
  with guards.StopRequest(manager) as stop_request:
    os.kill(os.getpid(), signal.SIGINT)
    assert stop_request.requested(1)
    with pytest.raises(guards.Interrupted, match='an earlier stop request'), stop_request.immediately():
      pass
  with guards.StopRequest(manager) as stop_request:
    with pytest.raises(guards.Interrupted, match='SIGINT'), stop_request.immediately():
      os.kill(os.getpid(), signal.SIGINT)
  assert signal.getsignal(signal.SIGINT) is before


def test_pretrained_backbone_is_loaded_before_the_optimiser_state(tmp_path):
  # A random torchvision-layout ResNet-18 file, written from the model's own leaves (kernels as OIHW).
  config = tiny_config()
  config.update(dict(seq_len=2, height=32, width=16))
  model = lstrl.LSTRL(num_classes=3, depth=18, mae_stages=(), bme_stages=())
  tx = optim.make_optimizer(config, 4, lstrl.trainable_mask)
  mesh = sharding.make_mesh()
  abstract = state_lib.abstract_train_state(model, config, tx, mesh)
  rng = np.random.default_rng(0)
  tensors = {}
  leaves = weights.backbone_leaves({'params': abstract.params, 'batch_stats': abstract.batch_stats})
  for key, (path, leaf) in leaves.items():
    shape = tuple(leaf.shape[i] for i in weights.HWIO_TO_OIHW) if path[-1] == 'kernel' else leaf.shape
    tensors[key] = rng.uniform(0.5, 1.5, size=shape).astype(np.float32)
  path = str(tmp_path / 'resnet18.safetensors')
  safetensors.numpy.save_file(tensors, path)

  config.model.pretrained = path
  state = jax.device_get(state_lib.create_train_state(model, config, tx, jax.random.key(0, impl='rbg'), mesh))
  backbone = state.params['backbone']
  np.testing.assert_array_equal(backbone['conv1']['kernel'], tensors['conv1.weight'].transpose(weights.OIHW_TO_HWIO))
  np.testing.assert_array_equal(backbone['layer4_1']['bn2']['bias'], tensors['layer4.1.bn2.bias'])
  np.testing.assert_array_equal(state.batch_stats['backbone']['bn1']['var'], tensors['bn1.running_var'])
  # The head keeps its initialisation: BNNeck scale 1 and bias 0, classifier weights N(0, 0.001^2).
  np.testing.assert_array_equal(state.params['bnneck']['scale'], np.ones(512, np.float32))
  np.testing.assert_array_equal(state.params['bnneck']['bias'], np.zeros(512, np.float32))
  assert 0.0008 < np.std(state.params['classifier']['kernel']) < 0.0012
  assert all(not np.any(leaf) for leaf in jax.tree.leaves(state.opt_state))  # fresh Adam moments, count 0


def test_a_periodic_evaluation_starts_from_a_saved_checkpoint(compiled, tmp_path, monkeypatch):
  # Checkpoints every 2 epochs (step 8 only) but evaluation every epoch: the step-4 evaluation still finds a
  # checkpoint at step 4, so a job killed during it loses no training.
  _, _, _, state, _ = fresh(compiled)
  run = make_run(compiled, tmp_path, checkpoint_every_epochs=2, eval_every_epochs=1, eval_clip_selection='rrs')
  seen = []

  def evaluate(run, state, clip_selection, step):
    run.manager.wait_until_finished()
    seen.append((step, run.manager.latest_step()))

  monkeypatch.setattr(trainer, '_evaluate', evaluate)
  with guards.StopRequest(run.manager) as stop_request:
    trainer.train_loop(run, state, 0, stop_request)
  run.manager.wait_until_finished()
  assert seen == [(4, 4)]  # step 8 is the last: the final evaluation, outside train_loop, covers it
  assert run.manager.all_steps() == [4, 8]
