"""The Flax LSTRL against an independent PyTorch implementation (reference/torch_lstrl.py, written from DESIGN.md).

Every variable of the Flax model (backbone, MAE, BME, BNNeck, classifier) is filled with random values, the
zero-initialised BatchNorm scales of MAE and BME included, so both branches contribute; the same values are
copied into the PyTorch model, and the two must give the same features, BNNeck features and logits.
"""

import copy

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch

from reference import torch_lstrl
from lstrl_jax.models import lstrl

BATCH, SEQ_LEN, HEIGHT, WIDTH, NUM_CLASSES = 2, 4, 64, 32, 7
TOLERANCE = 1e-4


def relative_error(actual, expected) -> float:
  """||actual - expected|| / ||expected|| (Frobenius)."""
  expected = np.asarray(expected)
  return float(np.linalg.norm(np.asarray(actual) - expected) / np.linalg.norm(expected))


@pytest.fixture(scope='module', params=[('global_to_local', True), ('local_to_local', False)],
                ids=['g2l-bidirectional', 'l2l-forward-only'])
def models(request):
  """(Flax model, its random variables, the PyTorch model holding the same values), ResNet-18, T=4.

  The second variant covers the ablation switches: local-to-local BME, forward motion only, A2 off.
  """
  mode, bidirectional = request.param
  granularities = (True, True, True, True) if bidirectional else (True, False, True, True)
  fields = dict(depth=18, mae_granularities=granularities, bme_mode=mode, bme_bidirectional=bidirectional)
  flax_model = lstrl.LSTRL(num_classes=NUM_CLASSES, **fields)
  clips = jnp.zeros((BATCH, SEQ_LEN, HEIGHT, WIDTH, 3))
  shapes = jax.eval_shape(lambda: flax_model.init(jax.random.key(0), clips, train=False))
  variables = torch_lstrl.random_flax_variables(shapes, np.random.default_rng(0))
  torch_model = torch_lstrl.LSTRL(NUM_CLASSES, SEQ_LEN, **fields)
  return flax_model, variables, torch_lstrl.load_flax_variables_(torch_model, variables)


def test_zero_initialised_scales_were_randomised(models):
  _, variables, torch_model = models
  assert float(jnp.min(jnp.abs(variables['params']['mae2']['bn']['scale']))) > 0.4
  assert torch_model.bme3.bn.weight.abs().min().item() > 0.4


def test_eval_outputs_match(models):
  flax_model, variables, torch_model = models
  clips = np.random.default_rng(1).standard_normal((BATCH, SEQ_LEN, HEIGHT, WIDTH, 3)).astype(np.float32)
  actual = jax.jit(lambda v, x: flax_model.apply(v, x, train=False))(variables, clips)
  with torch.no_grad():
    expected = torch_model.eval()(torch.from_numpy(clips.transpose(0, 1, 4, 2, 3)))
  for key in ('features', 'bn_features', 'logits'):
    assert actual[key].shape == tuple(expected[key].shape), key
    assert relative_error(actual[key], expected[key]) < TOLERANCE, key


def test_branches_contribute(models):
  """Silencing MAE and BME (their last BN scale set to 0) changes the PyTorch output, which the Flax output
  equals: the parity above is not a plain-ResNet parity."""
  _, _, torch_model = models
  clips = torch.from_numpy(np.random.default_rng(1).standard_normal((BATCH, SEQ_LEN, 3, HEIGHT, WIDTH))).float()
  silenced = copy.deepcopy(torch_model).eval()
  with torch.no_grad():
    for name in ('mae2', 'mae3', 'bme2', 'bme3'):
      getattr(silenced, name).bn.weight.zero_()
      getattr(silenced, name).bn.bias.zero_()
    full, plain = torch_model.eval()(clips)['features'], silenced(clips)['features']
  assert relative_error(plain, full) > 0.05
