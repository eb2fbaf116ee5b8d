"""Bias-free 2-D convolution whose 1x1 kernel gradient is one matrix product on the CPU backend (issue 12).

Every convolution of the network (ResNet, MAE's omega1/omega2, BME's phi/psi/upsilon) is a `Conv`.
`conv2d(x, kernel, stride, padding)`: `x` `[N, H, W, C_in]`, `kernel` HWIO `[k, k, C_in, C_out]`, symmetric
zero padding `padding` pixels, stride `stride` -> `[N, H_out, W_out, C_out]` with
`H_out = (H + 2 * padding - k) // stride + 1` (PyTorch's `conv2d`, torchvision's ResNet convolutions). The
forward value is `lax.conv_general_dilated` on every backend; only its VJP differs:

  - input gradient: XLA's own (the transpose of the convolution), everywhere;
  - kernel gradient on CPU, 1x1 kernels: `dW[c, o] = sum_{n, p, q} x[n, s p, s q, c] g[n, p, q, o]`, one
    `dot_general` over the `N H_out W_out` rows of `x` (strided) and `g`. XLA's CPU kernel-gradient convolution
    first copies its input into `[C_in, H, W, N]` order (batch innermost), and on the wide maps of the
    bottleneck inputs those copies cost more than the products (`transpose_copy_fusion`: 0.9 of the train
    step's 2.4 s of kernel time at B x T = 8 frames, 256x128, on a 2-core AMD EPYC); the product reads `x` as
    it lies (benchmarks/README.md);
  - kernel gradient of larger kernels (the 7x7 stem, 3x3), and of any kernel on other backends (GPU, TPU):
    XLA's own, the same HLO as `jax.grad` of the plain convolution (`lax.platform_dependent` keeps only that
    branch when lowering for them; tests/test_conv.py exports the gradient for 'cuda').

`im2col_kernel_grad` handles any kernel size (im2col patches, `k*k` copies of the input), but only 1x1 takes it
(`CPU_IM2COL_KERNELS`): the stem's and the 3x3 ones were no faster than XLA's (benchmarks/README.md). dtypes:
any float; the product accumulates in the inputs' dtype as XLA's convolution does.

`Conv` is the Flax module over it, a drop-in for `nn.Conv`: parameter `kernel` of the same shape, initialiser
and dtype handling, so checkpoints and torchvision weight imports are unchanged. `PiecewiseConv` is the same
parameter applied to a channel concatenation given as its pieces (MAE's ω2 on [A1, A2, A3, A4]).
"""

from __future__ import annotations

import functools
from typing import Any, Callable

import flax.linen as nn
import jax
from jax import lax
import jax.numpy as jnp

Dtype = Any
DIMENSION_NUMBERS = ('NHWC', 'HWIO', 'NHWC')
CPU_IM2COL_KERNELS = (1,)


def xla_conv(x: jax.Array, kernel: jax.Array, stride: int, padding: int) -> jax.Array:
  """The plain XLA convolution (`[N, H, W, C_in]`, HWIO kernel -> `[N, H_out, W_out, C_out]`)."""
  return lax.conv_general_dilated(
      x, kernel, (stride, stride), ((padding, padding), (padding, padding)), dimension_numbers=DIMENSION_NUMBERS)


def im2col_kernel_grad(x: jax.Array, g: jax.Array, size: int, stride: int, padding: int) -> jax.Array:
  """Kernel gradient `[size, size, C_in, C_out]` of `xla_conv` from its input `x` and output cotangent `g`.

  `x` `[N, H, W, C_in]`, `g` `[N, H_out, W_out, C_out]`. One `dot_general` over the `N H_out W_out` rows of the
  im2col patches (column order (i, j, c), which is HWIO's); a 1x1 kernel needs no copy beyond the stride.
  """
  n, h_out, w_out, c_out = g.shape
  if padding:
    x = jnp.pad(x, ((0, 0), (padding, padding), (padding, padding), (0, 0)))
  span_h, span_w = stride * (h_out - 1) + 1, stride * (w_out - 1) + 1
  columns = [x[:, i:i + span_h:stride, j:j + span_w:stride, :] for i in range(size) for j in range(size)]
  patches = columns[0] if len(columns) == 1 else jnp.concatenate(columns, axis=-1)
  patches = patches.reshape(n * h_out * w_out, -1)
  grad = lax.dot_general(patches, g.reshape(-1, c_out), (((0,), (0,)), ((), ())))
  return grad.reshape(size, size, x.shape[-1], c_out)


def _xla_kernel_grad(x: jax.Array, g: jax.Array, kernel: jax.Array, stride: int, padding: int) -> jax.Array:
  _, vjp = jax.vjp(lambda k: xla_conv(x, k, stride, padding), kernel)
  return vjp(g)[0]


@functools.partial(jax.custom_vjp, nondiff_argnums=(2, 3))
def _conv_cpu_grad(x: jax.Array, kernel: jax.Array, stride: int, padding: int) -> jax.Array:
  return xla_conv(x, kernel, stride, padding)


def _conv_cpu_grad_fwd(x, kernel, stride, padding):
  return xla_conv(x, kernel, stride, padding), (x, kernel)


def _conv_cpu_grad_bwd(stride, padding, residuals, g):
  x, kernel = residuals
  _, vjp_x = jax.vjp(lambda x_: xla_conv(x_, kernel, stride, padding), x)
  grad_x = vjp_x(g)[0]
  size = kernel.shape[0]
  grad_kernel = lax.platform_dependent(
      x, g, kernel,
      cpu=lambda x_, g_, _: im2col_kernel_grad(x_, g_, size, stride, padding).astype(kernel.dtype),
      default=lambda x_, g_, k_: _xla_kernel_grad(x_, g_, k_, stride, padding))
  return grad_x, grad_kernel


_conv_cpu_grad.defvjp(_conv_cpu_grad_fwd, _conv_cpu_grad_bwd)


def conv2d(x: jax.Array, kernel: jax.Array, stride: int, padding: int) -> jax.Array:
  """Convolution of `x` `[N, H, W, C_in]` with a square HWIO `kernel`; see the module docstring.

  The value and the input gradient are XLA's; the kernel gradient is `im2col_kernel_grad` on CPU when the kernel
  size is in `CPU_IM2COL_KERNELS`, XLA's otherwise (and on every other backend).

  Raises:
    ValueError: `kernel` is not `[k, k, C_in, C_out]` with `C_in` = `x.shape[-1]`.
  """
  if kernel.ndim != 4 or kernel.shape[0] != kernel.shape[1] or kernel.shape[2] != x.shape[-1]:
    raise ValueError(f'conv2d: expected a [k, k, {x.shape[-1]}, C_out] kernel, got shape {kernel.shape}')
  if kernel.shape[0] in CPU_IM2COL_KERNELS:
    return _conv_cpu_grad(x, kernel, stride, padding)
  return xla_conv(x, kernel, stride, padding)


class Conv(nn.Module):
  """Bias-free `kernel_size` x `kernel_size` convolution, padding `kernel_size // 2` (PyTorch's), via `conv2d`.

  `[..., H, W, C_in] -> [..., H_out, W_out, features]` (leading axes, e.g. `[B, T]`, are folded into one batch
  axis, as `nn.Conv` does); parameter `kernel` `[k, k, C_in, features]` in `param_dtype`, inputs and kernel
  promoted to `dtype` (as `nn.Conv`, whose parameter it mirrors).
  """

  features: int
  kernel_size: int
  stride: int = 1
  dtype: Dtype = jnp.float32
  param_dtype: Dtype = jnp.float32
  kernel_init: Callable[..., jax.Array] = nn.initializers.lecun_normal()

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    shape = (self.kernel_size, self.kernel_size, x.shape[-1], self.features)
    return self.convolve(x, self.param('kernel', self.kernel_init, shape, self.param_dtype))

  def convolve(self, x: jax.Array, kernel: jax.Array) -> jax.Array:
    """`conv2d` of `x` `[..., H, W, C_in]` (leading axes folded into the batch) with `kernel`, both promoted to
    `dtype`, at the module's stride and padding `kernel_size // 2` -> `[..., H_out, W_out, C_out]`."""
    x, kernel = nn.dtypes.promote_dtype(x, kernel, dtype=self.dtype)
    y = conv2d(x.reshape((-1,) + x.shape[-3:]), kernel, self.stride, self.kernel_size // 2)
    return y.reshape(x.shape[:-3] + y.shape[1:])


class PiecewiseConv(Conv):
  """A 1x1 `Conv` of a channel concatenation `[x_1, ..., x_k]`, given the pieces and returning per-piece terms.

  `__call__(pieces)`: `pieces[i]` `[..., H_i, W_i, c_i]` -> list of `[..., H_i, W_i, features]`, the i-th being
  the convolution of `pieces[i]` with the kernel rows `sum(c_<i) : sum(c_<=i)`. Where the pieces broadcast to
  one shape, the sum of the terms equals `Conv` applied to the concatenation of the broadcast pieces (a 1x1
  convolution is linear in its input channels and commutes with repeating pixels), in `1/k`-ths of its
  multiplies for a piece that is repeated k times. The parameter is `Conv`'s: `kernel` `[1, 1, sum c_i,
  features]` with the same initialiser, so the two modules read the same checkpoints.

  Raises:
    ValueError: `kernel_size` is not 1 (a larger kernel mixes neighbouring pixels, which repeating changes).
  """

  @nn.compact
  def __call__(self, pieces: list[jax.Array]) -> list[jax.Array]:
    if self.kernel_size != 1:
      raise ValueError(f'PiecewiseConv: expected kernel_size 1, got {self.kernel_size}')
    widths = [piece.shape[-1] for piece in pieces]
    kernel = self.param('kernel', self.kernel_init, (1, 1, sum(widths), self.features), self.param_dtype)
    terms, start = [], 0
    for piece, width in zip(pieces, widths):
      terms.append(self.convolve(piece, kernel[:, :, start:start + width]))
      start += width
    return terms
