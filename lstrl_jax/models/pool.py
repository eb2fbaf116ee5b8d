"""Max pooling whose gradient on the CPU backend is nine masked, strided additions (issue 12).

`max_pool(x, size, stride, padding)`: `x` `[N, H, W, C]`, a `size` x `size` window, stride `stride`, `padding`
pixels of -inf on each side -> `[N, H_out, W_out, C]`, `H_out = (H + 2 * padding - size) // stride + 1`
(PyTorch's `max_pool2d`, torchvision's ResNet stem: 3x3, stride 2, padding 1). The value is XLA's
`reduce_window` (`nn.max_pool`) on every backend; only its VJP differs:

  - on CPU the gradient of each output goes to the first maximum of its window in row-major order (PyTorch's
    rule), written as `size * size` masked copies of the cotangent placed by `lax.pad` with interior padding
    (stride - 1) and summed in one fusion. JAX's own gradient (`select_and_gather_add`, lowered on CPU to a
    variadic `reduce_window` over index planes) took 100.9 ms against PyTorch's 6.0 for the stem's map of 8
    frames at 256x128 on a 2-core AMD EPYC (benchmarks/README.md);
  - on other backends (GPU, TPU): JAX's own gradient, unchanged (`lax.platform_dependent`).

dtypes: any float.
"""

from __future__ import annotations

import functools

import flax.linen as nn
import jax
from jax import lax
import jax.numpy as jnp


def xla_max_pool(x: jax.Array, size: int, stride: int, padding: int) -> jax.Array:
  """XLA's max pool (`nn.max_pool`, padding with -inf): the value of `max_pool`, and its gradient off CPU."""
  return nn.max_pool(x, (size, size), strides=(stride, stride), padding=((padding, padding), (padding, padding)))


def first_max_grad(x: jax.Array, g: jax.Array, size: int, stride: int, padding: int) -> jax.Array:
  """Gradient `[N, H, W, C]` of `max_pool` at `x` for output cotangent `g`, routed to each window's first max."""
  _, h_out, w_out, _ = g.shape
  h, w = x.shape[1:3]
  neg = jnp.array(-jnp.inf, x.dtype)
  xp = lax.pad(x, neg, ((0, 0, 0), (padding, padding, 0), (padding, padding, 0), (0, 0, 0)))
  span_h, span_w = stride * (h_out - 1) + 1, stride * (w_out - 1) + 1
  offsets = [(i, j) for i in range(size) for j in range(size)]
  windows = [xp[:, i:i + span_h:stride, j:j + span_w:stride, :] for i, j in offsets]
  best, first = windows[0], jnp.zeros(windows[0].shape, jnp.int32)
  for k, window in enumerate(windows[1:], start=1):  # a strict > keeps the first maximum of a tie, as PyTorch
    better = window > best
    best, first = jnp.where(better, window, best), jnp.where(better, k, first)
  grad = jnp.zeros(xp.shape, g.dtype)
  zero = jnp.array(0, g.dtype)
  for k, (i, j) in enumerate(offsets):
    placed = lax.pad(jnp.where(first == k, g, zero), zero,
                     ((0, 0, 0), (i, xp.shape[1] - i - span_h, stride - 1), (j, xp.shape[2] - j - span_w, stride - 1),
                      (0, 0, 0)))
    grad = grad + placed
  return grad[:, padding:padding + h, padding:padding + w, :]


@functools.partial(jax.custom_vjp, nondiff_argnums=(1, 2, 3))
def max_pool(x: jax.Array, size: int, stride: int, padding: int) -> jax.Array:
  """See the module docstring: `[N, H, W, C]` -> `[N, H_out, W_out, C]`."""
  return xla_max_pool(x, size, stride, padding)


def _max_pool_fwd(x, size, stride, padding):
  return xla_max_pool(x, size, stride, padding), x


def _max_pool_bwd(size, stride, padding, x, g):
  def xla_grad(x_, g_):
    return jax.vjp(lambda a: xla_max_pool(a, size, stride, padding), x_)[1](g_)[0]
  return (lax.platform_dependent(x, g, cpu=lambda x_, g_: first_max_grad(x_, g_, size, stride, padding),
                                 default=xla_grad),)


max_pool.defvjp(_max_pool_fwd, _max_pool_bwd)
