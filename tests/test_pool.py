"""Tests of lstrl_jax.models.pool: values of XLA's max pool, PyTorch's gradient rule, plain XLA on GPU."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch

from lstrl_jax.models import pool


@pytest.mark.parametrize('shape', [(2, 9, 7, 3), (2, 8, 6, 4), (1, 32, 16, 8)])
def test_value_and_gradient_match_jax_on_distinct_values(shape):
  rng = np.random.default_rng(shape[1])
  x = jnp.asarray(rng.standard_normal(shape), jnp.float32)
  y = pool.max_pool(x, 3, 2, 1)
  g = jnp.asarray(rng.standard_normal(y.shape), jnp.float32)
  want = jax.grad(lambda x: jnp.sum(pool.xla_max_pool(x, 3, 2, 1) * g))(x)
  got = jax.jit(jax.grad(lambda x: jnp.sum(pool.max_pool(x, 3, 2, 1) * g)))(x)
  np.testing.assert_array_equal(y, pool.xla_max_pool(x, 3, 2, 1))
  np.testing.assert_allclose(got, want, rtol=0, atol=1e-6)


def test_ties_go_to_the_first_maximum_as_pytorch():
  # Hand-worked: a 4x4 map with equal maxima at (1, 1) and (1, 2). Each of the four 3x3/2 windows (padding 1)
  # holds (1, 1); those of outputs (0, 1) and (1, 1) also hold (1, 2), a tie that the first maximum in row-major
  # order, (1, 1), wins. So (1, 1) receives every output's cotangent, 1 + 2 + 3 + 4.
  x = np.zeros((1, 4, 4, 1), np.float32)
  x[0, 1, 1, 0] = x[0, 1, 2, 0] = 1.0
  g = np.arange(1.0, 5.0, dtype=np.float32).reshape(1, 2, 2, 1)
  got = jax.grad(lambda x: jnp.sum(pool.max_pool(x, 3, 2, 1) * g))(jnp.asarray(x))
  want = np.zeros((4, 4), np.float32)
  want[1, 1] = 1 + 2 + 3 + 4
  np.testing.assert_array_equal(np.asarray(got)[0, :, :, 0], want)
  tx = torch.from_numpy(x).permute(0, 3, 1, 2).requires_grad_(True)
  (torch.nn.functional.max_pool2d(tx, 3, 2, 1) * torch.from_numpy(g).permute(0, 3, 1, 2)).sum().backward()
  np.testing.assert_array_equal(tx.grad[0, 0].numpy(), want)


def _lowered(platform: str) -> str:
  grad = jax.jit(jax.grad(lambda x: pool.max_pool(x, 3, 2, 1).sum()))
  return jax.export.export(grad, platforms=[platform])(jnp.ones((2, 8, 6, 4))).mlir_module()


def test_gpu_lowering_is_jax_own_gradient():
  cuda, cpu = _lowered('cuda'), _lowered('cpu')
  assert 'stablehlo.select_and_scatter' in cuda or 'stablehlo.reduce_window' in cuda.split('func.func')[-1]
  assert 'stablehlo.pad' in cpu and cpu.count('stablehlo.pad') > cuda.count('stablehlo.pad')
