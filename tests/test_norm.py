"""`lstrl_jax.models.norm.BatchNorm` against `torch.nn.BatchNorm1d/2d` (training and eval mode, momentum 0.1).

The JAX module is given PyTorch's momentum as Flax's 0.9; several training calls must leave the same running
mean and (unbiased, n/(n-1)) running variance as PyTorch's, with the same outputs and input gradients, and its
variables must be named and shaped as Flax's `nn.BatchNorm` so old checkpoints restore.
"""

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch

from lstrl_jax.models import norm

CHANNELS = 5


@pytest.mark.parametrize('shape', [(32, CHANNELS), (4, 3, 6, CHANNELS)], ids=['BatchNorm1d', 'BatchNorm2d'])
def test_training_and_eval_match_pytorch(shape):
  rng = np.random.default_rng(0)
  scale = rng.uniform(0.5, 1.5, CHANNELS).astype(np.float32)
  bias = rng.normal(0.0, 0.1, CHANNELS).astype(np.float32)
  module = norm.BatchNorm(momentum=0.9, epsilon=1e-5)
  variables = {'params': {'scale': scale, 'bias': bias},
               'batch_stats': {'mean': np.zeros(CHANNELS, np.float32), 'var': np.ones(CHANNELS, np.float32)}}
  reference = (torch.nn.BatchNorm1d if len(shape) == 2 else torch.nn.BatchNorm2d)(CHANNELS, momentum=0.1)
  with torch.no_grad():
    reference.weight.copy_(torch.from_numpy(scale))
    reference.bias.copy_(torch.from_numpy(bias))

  def to_torch(x):  # channels last -> channels first
    return torch.from_numpy(np.moveaxis(x, -1, 1).copy()).requires_grad_(True)

  def loss(params, stats, x, cotangent):
    y, updated = module.apply({'params': params, 'batch_stats': stats}, x, use_running_average=False,
                              mutable=['batch_stats'])
    return jnp.sum(y * cotangent), (y, updated['batch_stats'])

  step = jax.jit(jax.value_and_grad(loss, argnums=(0, 2), has_aux=True))
  for _ in range(3):
    x = (rng.standard_normal(shape) * 3.0 + 2.0).astype(np.float32)
    cotangent = rng.standard_normal(shape).astype(np.float32)
    (_, (y, stats)), (grad_params, grad_x) = step(variables['params'], variables['batch_stats'], x, cotangent)
    variables['batch_stats'] = stats
    x_torch = to_torch(x)
    reference.train()
    y_torch = reference(x_torch)
    y_torch.backward(to_torch(cotangent))
    np.testing.assert_allclose(y, np.moveaxis(y_torch.detach().numpy(), 1, -1), rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(grad_x, np.moveaxis(x_torch.grad.numpy(), 1, -1), rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(grad_params['scale'], reference.weight.grad.numpy(), rtol=1e-4)
    np.testing.assert_allclose(grad_params['bias'], reference.bias.grad.numpy(), rtol=1e-4)
    reference.zero_grad()
  np.testing.assert_allclose(stats['mean'], reference.running_mean.numpy(), rtol=1e-5, atol=1e-6)
  np.testing.assert_allclose(stats['var'], reference.running_var.numpy(), rtol=1e-5)
  x = rng.standard_normal(shape).astype(np.float32)
  reference.eval()
  with torch.no_grad():
    expected = np.moveaxis(reference(to_torch(x)).numpy(), 1, -1)
  np.testing.assert_allclose(module.apply(variables, x, use_running_average=True), expected, rtol=1e-5, atol=1e-5)


def _autodiff_batch_normalize(x, scale, bias, epsilon):
  """The textbook training BatchNorm, differentiated by JAX (the reference for the custom VJP)."""
  axes = tuple(range(x.ndim - 1))
  mean = jnp.mean(x, axis=axes)
  var = jnp.mean(jnp.square(x - mean), axis=axes)
  return (x - mean) / jnp.sqrt(var + epsilon) * scale + bias, mean, var


def test_batch_normalize_vjp_equals_autodiff_in_float64():
  """Values and gradients of all three outputs (y, mean, var) against JAX's autodiff of the formula, float64.

  Non-zero cotangents for mean and var exercise their `1/n` and `2 (x - mean) / n` terms, which the network
  never uses (its batch statistics only feed the running averages).
  """
  rng = np.random.default_rng(1)
  shape = (3, 4, 2, CHANNELS)
  x, g = (rng.standard_normal(shape) * 2.0 + 1.0 for _ in range(2))
  scale, bias, g_mean, g_var = (rng.standard_normal(CHANNELS) for _ in range(4))

  def weighted(fn, x, scale, bias):
    y, mean, var = fn(x, scale, bias, 1e-5)
    return jnp.sum(y * g) + jnp.sum(mean * g_mean) + jnp.sum(var * g_var)

  with jax.enable_x64(True):
    args = [jnp.asarray(a, jnp.float64) for a in (x, scale, bias)]
    for got, expected in zip(norm.batch_normalize(*args, 1e-5), _autodiff_batch_normalize(*args, 1e-5)):
      np.testing.assert_allclose(got, expected, rtol=1e-12, atol=1e-12)
    got = jax.grad(lambda *a: weighted(norm.batch_normalize, *a), argnums=(0, 1, 2))(*args)
    expected = jax.grad(lambda *a: weighted(_autodiff_batch_normalize, *a), argnums=(0, 1, 2))(*args)
  for name, a, b in zip(('x', 'scale', 'bias'), got, expected):
    np.testing.assert_allclose(a, b, rtol=1e-10, atol=1e-12, err_msg=f'gradient of {name}')


def test_batch_normalize_keeps_bfloat16_inputs_and_float32_statistics():
  x = jnp.asarray(np.random.default_rng(2).standard_normal((8, CHANNELS)), jnp.bfloat16)
  scale, bias = jnp.ones(CHANNELS), jnp.zeros(CHANNELS)
  y, mean, var = norm.batch_normalize(x, scale, bias, 1e-5)
  assert (y.dtype, mean.dtype, var.dtype) == (jnp.float32, jnp.float32, jnp.float32)
  grads = jax.grad(lambda x, s, b: jnp.sum(norm.batch_normalize(x, s, b, 1e-5)[0] ** 2), (0, 1, 2))(x, scale, bias)
  assert [a.dtype for a in grads] == [jnp.bfloat16, jnp.float32, jnp.float32]


def test_variables_are_flax_batchnorms():
  """Same collections, names, shapes and dtypes as `flax.linen.BatchNorm`: old checkpoints restore."""
  x = jnp.zeros((2, 3, CHANNELS), jnp.bfloat16)
  ours = jax.eval_shape(lambda: norm.BatchNorm(use_running_average=False).init(jax.random.key(0), x))
  flax = jax.eval_shape(lambda: nn.BatchNorm(use_running_average=False).init(jax.random.key(0), x))
  assert jax.tree.map(lambda a: (a.shape, a.dtype), ours) == jax.tree.map(lambda a: (a.shape, a.dtype), flax)


def test_single_value_per_channel_is_refused_in_training():
  module = norm.BatchNorm(use_running_average=False)
  variables = module.init(jax.random.key(0), jnp.zeros((2, CHANNELS)))
  with pytest.raises(ValueError, match='more than 1 value per channel'):
    module.apply(variables, jnp.zeros((1, CHANNELS)), mutable=['batch_stats'])
