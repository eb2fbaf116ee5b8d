"""Tests of lstrl_jax.models.conv: its CPU kernel gradient against
jax.grad of the plain XLA convolution."""

import flax.linen as nn
import jax
from jax import lax
import jax.numpy as jnp
import numpy as np
import pytest

from lstrl_jax.models import conv

# (H, W, C_in, C_out, kernel, stride): the stem, 1x1 convolutions (stride 1 and the strided downsample), and
# 3x3 ones (XLA's own kernel gradient) at small sizes.
CASES = [(32, 16, 3, 8, 7, 2), (8, 4, 16, 8, 1, 1), (9, 5, 16, 8, 1, 2), (9, 5, 4, 6, 3, 2), (8, 4, 4, 6, 3, 1)]


def plain_conv(x, kernel, stride):
  pad = kernel.shape[0] // 2
  return lax.conv_general_dilated(x, kernel, (stride, stride), ((pad, pad), (pad, pad)),
                                  dimension_numbers=('NHWC', 'HWIO', 'NHWC'))


@pytest.mark.parametrize('h,w,c_in,c_out,k,stride', CASES)
def test_gradients_match_plain_convolution(h, w, c_in, c_out, k, stride):
  rng = np.random.default_rng(k * 10 + stride)
  x = jnp.asarray(rng.standard_normal((2, h, w, c_in)), jnp.float32)
  kernel = jnp.asarray(rng.standard_normal((k, k, c_in, c_out)), jnp.float32)
  cotangent = jnp.asarray(rng.standard_normal(plain_conv(x, kernel, stride).shape), jnp.float32)
  loss = lambda f: (lambda x, kernel: jnp.sum(f(x, kernel) * cotangent))
  want = jax.jit(jax.grad(loss(lambda x, kernel: plain_conv(x, kernel, stride)), (0, 1)))(x, kernel)
  got = jax.jit(jax.grad(loss(lambda x, kernel: conv.conv2d(x, kernel, stride, k // 2)), (0, 1)))(x, kernel)
  for name, a, b in zip(('dX', 'dW'), want, got):
    relative = float(jnp.max(jnp.abs(a - b)) / jnp.max(jnp.abs(a)))
    assert relative <= 1e-5, (name, relative)
  np.testing.assert_array_equal(conv.conv2d(x, kernel, stride, k // 2), plain_conv(x, kernel, stride))


@pytest.mark.parametrize('h,w,c_in,c_out,k,stride', CASES)
def test_im2col_kernel_grad_matches_plain_convolution(h, w, c_in, c_out, k, stride):
  # Any kernel size, including those that take XLA's gradient in `conv2d` (3x3, the 7x7 stem).
  rng = np.random.default_rng(k * 10 + stride + 1)
  x = jnp.asarray(rng.standard_normal((2, h, w, c_in)), jnp.float32)
  kernel = jnp.asarray(rng.standard_normal((k, k, c_in, c_out)), jnp.float32)
  g = jnp.asarray(rng.standard_normal(plain_conv(x, kernel, stride).shape), jnp.float32)
  want = jax.grad(lambda kernel: jnp.sum(plain_conv(x, kernel, stride) * g))(kernel)
  got = conv.im2col_kernel_grad(x, g, k, stride, k // 2)
  assert float(jnp.max(jnp.abs(got - want)) / jnp.max(jnp.abs(want))) <= 1e-5


def test_im2col_kernel_grad_is_a_matrix_product():
  # A hand-worked 1x1 case: dW[c, o] = sum over pixels of x[., c] * g[., o].
  x = jnp.arange(8.0).reshape(1, 2, 2, 2)  # pixels (0,1), (2,3), (4,5), (6,7)
  g = jnp.ones((1, 2, 2, 1))
  np.testing.assert_allclose(conv.im2col_kernel_grad(x, g, 1, 1, 0), [[[[12.0], [16.0]]]])
  # stride 2 keeps the top-left pixel only.
  np.testing.assert_allclose(conv.im2col_kernel_grad(x, g[:, :1, :1], 1, 2, 0), [[[[0.0], [1.0]]]])


def _lowered_ops(platform: str, k: int) -> str:
  x, kernel = jnp.ones((2, 16, 8, 4)), jnp.ones((k, k, 4, 8))
  grad = jax.jit(jax.grad(lambda kernel: conv.conv2d(x, kernel, 1, k // 2).sum()))
  return jax.export.export(grad, platforms=[platform])(kernel).mlir_module()


def test_gpu_lowering_is_the_plain_convolution():
  # On CUDA the 1x1 kernel gradient is XLA's convolution (no matrix product); on CPU it is one dot_general.
  cuda, cpu = _lowered_ops('cuda', 1), _lowered_ops('cpu', 1)
  assert 'stablehlo.convolution' in cuda and 'dot_general' not in cuda
  assert 'dot_general' in cpu
  assert 'dot_general' not in _lowered_ops('cpu', 7)  # the stem keeps XLA's kernel gradient on CPU too


def test_module_matches_flax_conv():
  x = jnp.asarray(np.random.default_rng(0).standard_normal((2, 8, 6, 3)), jnp.float32)
  ours = conv.Conv(5, 3, stride=2, name='c')
  variables = ours.init(jax.random.key(0), x)
  assert variables['params']['kernel'].shape == (3, 3, 3, 5)
  flax_conv = nn.Conv(5, (3, 3), strides=(2, 2), padding=((1, 1), (1, 1)), use_bias=False)
  np.testing.assert_allclose(ours.apply(variables, x), flax_conv.apply(variables, x), rtol=1e-6, atol=1e-6)
  clips = x.reshape(1, 2, 8, 6, 3)  # [B, T, H, W, C] as MAE and BME call it
  np.testing.assert_allclose(ours.apply(variables, clips), flax_conv.apply(variables, clips), rtol=1e-6, atol=1e-6)
  bf16 = conv.Conv(5, 1, dtype=jnp.bfloat16).apply(variables | {'params': {'kernel': jnp.ones((1, 1, 3, 5))}}, x)
  assert bf16.dtype == jnp.bfloat16


def test_rejects_a_mismatched_kernel():
  with pytest.raises(ValueError, match=r'\[k, k, 3, C_out\]'):
    conv.conv2d(jnp.ones((1, 4, 4, 3)), jnp.ones((1, 1, 4, 2)), 1, 0)


def test_piecewise_conv_sums_to_the_conv_of_the_broadcast_concatenation():
  rng = np.random.default_rng(2)
  # MAE's layout: a full map, one repeated over T, one over the pixels, one over both ([B, T, H, W, c_i]).
  shapes = [(2, 3, 4, 2, 5), (2, 1, 4, 2, 3), (2, 3, 1, 1, 2), (2, 1, 1, 1, 4)]
  with jax.enable_x64(True):
    pieces = [jnp.asarray(rng.standard_normal(shape), jnp.float64) for shape in shapes]
    concatenated = jnp.concatenate([jnp.broadcast_to(p, (2, 3, 4, 2, p.shape[-1])) for p in pieces], -1)
    cotangent = jnp.asarray(rng.standard_normal((2, 3, 4, 2, 6)), jnp.float64)
    piecewise = conv.PiecewiseConv(6, 1, dtype=jnp.float64, param_dtype=jnp.float64)
    whole = conv.Conv(6, 1, dtype=jnp.float64, param_dtype=jnp.float64)
    params = piecewise.init(jax.random.key(0), pieces)['params']
    # The same parameter as Conv's: shape, initialiser and key give the same values.
    np.testing.assert_array_equal(params['kernel'], whole.init(jax.random.key(0), concatenated)['params']['kernel'])
    terms = piecewise.apply({'params': params}, pieces)
    assert [t.shape for t in terms] == [p.shape[:-1] + (6,) for p in pieces]
    np.testing.assert_allclose(sum(terms), whole.apply({'params': params}, concatenated), rtol=1e-12, atol=1e-12)
    grads = [jax.grad(lambda p: jnp.sum(y(p) * cotangent))(params)['kernel'] for y in (
        lambda p: sum(piecewise.apply({'params': p}, pieces)), lambda p: whole.apply({'params': p}, concatenated))]
    np.testing.assert_allclose(grads[0], grads[1], rtol=1e-12, atol=1e-12)


def test_piecewise_conv_refuses_a_larger_kernel():
  with pytest.raises(ValueError, match='kernel_size 1'):
    conv.PiecewiseConv(4, 3).init(jax.random.key(0), [jnp.ones((1, 4, 4, 2))])


def test_piecewise_conv_lowers_to_plain_convolutions_on_gpu():
  pieces = [jnp.ones((2, 3, 4, 2, 4)), jnp.ones((2, 1, 4, 2, 2))]
  module = conv.PiecewiseConv(6, 1)
  params = module.init(jax.random.key(0), pieces)['params']
  grad = jax.jit(jax.grad(lambda p: sum(jnp.sum(t) for t in module.apply({'params': p}, pieces))))
  cuda, cpu = (jax.export.export(grad, platforms=[p])(params).mlir_module() for p in ('cuda', 'cpu'))
  # One kernel-gradient convolution per piece on CUDA (XLA's own); the CPU takes the matrix product instead.
  assert cuda.count('stablehlo.convolution') == 2 and 'stablehlo.dot_general' not in cuda
  assert cpu.count('stablehlo.dot_general') == 2
