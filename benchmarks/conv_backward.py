r"""Where the CPU train step goes: one convolution's forward, input gradient and weight gradient, JAX vs PyTorch.

  python -m benchmarks.conv_backward [--frames 8] [--repeats 5]

A diagnostic for the train-step gap in `benchmarks/model_throughput.py`. Each row is one convolution of the
ResNet-50 backbone at 256x128 input (last stride 1) on `--frames` frames, float32:
  - JAX: jitted `lax.conv_general_dilated` (NHWC/HWIO), and `jax.grad` of its sum with respect to the input
    (dX) and to the kernel (dW), compiled with the project's `lstrl_jax.xla_cpu.compiler_options()` (XLA's own
    convolution kernels; jaxlib 0.10.2's default, YNNPACK, is timed with
    `XLA_FLAGS=--xla_cpu_experimental_ynn_fusion_type=individual_dot,individual_convolution,reduce`). The
    gradient of a sum needs no forward output, so XLA computes dX and dW alone.
    "im2col dW" is `lstrl_jax.models.conv.im2col_kernel_grad` (one matrix product over the im2col patches),
    the kernel gradient `conv2d` uses on CPU for the kernel sizes in `conv.CPU_IM2COL_KERNELS`.
  - PyTorch: `conv2d` on a channels_last tensor under `no_grad`, and `autograd.grad` of its sum with respect
    to the input and to the weight; torch records the forward to differentiate, so its gradient columns
    include one forward, which is subtracted to give dX and dW.
Figures are medians of --repeats calls after one warm-up, in milliseconds per call (all frames).
"""

import argparse
import functools
from typing import Callable

from absl import app
from absl import flags
import jax
import jax.numpy as jnp
import numpy as np
import torch

from benchmarks.model_throughput import time_calls
from lstrl_jax.models import conv as lstrl_conv
from lstrl_jax import xla_cpu

_FRAMES = flags.DEFINE_integer('frames', 8, 'Frames per call (the batch of every convolution).')
_REPEATS = flags.DEFINE_integer('repeats', 5, 'Timed calls after one warm-up.')

# (name, H, W, C_in, C_out, kernel, stride): feature map at the convolution's input for a 256x128 frame.
LAYERS = (
    ('stem conv1', 256, 128, 3, 64, 7, 2),
    ('layer1 3x3', 64, 32, 64, 64, 3, 1),
    ('layer1 1x1 256->64', 64, 32, 256, 64, 1, 1),
    ('layer2 3x3', 32, 16, 128, 128, 3, 1),
    ('layer3 3x3', 16, 8, 256, 256, 3, 1),
    ('layer3 1x1 1024->256', 16, 8, 1024, 256, 1, 1),
    ('layer4 3x3', 16, 8, 512, 512, 3, 1),
)


def median_ms(fn: Callable[[], object], repeats: int) -> float:
  """Median wall time of `fn()` in milliseconds over `repeats` calls after one warm-up (results blocked on)."""
  wall, _ = time_calls(lambda: jax.block_until_ready(fn()), argparse.Namespace(warmup=1, repeats=repeats))
  return 1e3 * wall


def jax_row(x: np.ndarray, w: np.ndarray, stride: int, repeats: int) -> tuple[float, float, float, float]:
  """(forward, dX, dW, im2col dW) ms of the JAX convolution; `x` [N, H, W, C_in], `w` [k, k, C_in, C_out]."""
  def conv(x, w):
    return jax.lax.conv_general_dilated(x, w, (stride, stride), 'SAME', dimension_numbers=('NHWC', 'HWIO', 'NHWC'))

  x, w = jnp.asarray(x), jnp.asarray(w)
  jit = functools.partial(jax.jit, compiler_options=xla_cpu.compiler_options())
  forward = jit(conv)
  grad_x = jit(jax.grad(lambda x, w: conv(x, w).sum(), argnums=0))
  grad_w = jit(jax.grad(lambda x, w: conv(x, w).sum(), argnums=1))
  size = w.shape[0]
  out = jnp.ones(jax.eval_shape(conv, x, w).shape, x.dtype)
  im2col = jit(lambda x, w: lstrl_conv.im2col_kernel_grad(x, out, size, stride, size // 2))
  return tuple(median_ms(lambda f=f: f(x, w), repeats) for f in (forward, grad_x, grad_w, im2col))


def torch_row(x: np.ndarray, w: np.ndarray, stride: int, repeats: int) -> tuple[float, float, float]:
  """(forward, dX, dW) ms of the PyTorch convolution (gradients less one forward); same arrays as `jax_row`."""
  tx = torch.from_numpy(x).permute(0, 3, 1, 2).contiguous(memory_format=torch.channels_last)
  tw = torch.from_numpy(w).permute(3, 2, 0, 1).contiguous()
  padding = w.shape[0] // 2

  def conv(a, b):
    return torch.nn.functional.conv2d(a, b, stride=stride, padding=padding)

  def forward():
    with torch.no_grad():
      return conv(tx, tw)

  def grad_x():
    a = tx.detach().requires_grad_(True)
    return torch.autograd.grad(conv(a, tw).sum(), a)

  def grad_w():
    b = tw.detach().requires_grad_(True)
    return torch.autograd.grad(conv(tx, b).sum(), b)

  f, gx, gw = (median_ms(fn, repeats) for fn in (forward, grad_x, grad_w))
  return f, gx - f, gw - f


def main(argv):
  del argv
  torch.set_num_threads(2)
  rng = np.random.default_rng(0)
  print(f'{_FRAMES.value} frames, float32, median of {_REPEATS.value}; ms per call (forward / dX / dW); '
        f'JAX compiler_options {xla_cpu.compiler_options()}')
  print(f'{"convolution":<22}{"JAX fwd":>9}{"dX":>8}{"dW":>8}{"im2col dW":>10}   {"torch fwd":>9}{"dX":>8}'
        f'{"dW":>8}   {"dW JAX/torch":>12}{"im2col/torch":>13}')
  for name, height, width, c_in, c_out, kernel, stride in LAYERS:
    x = rng.random((_FRAMES.value, height, width, c_in), np.float32)
    w = (rng.random((kernel, kernel, c_in, c_out), np.float32) - 0.5) * 0.01
    j, t = jax_row(x, w, stride, _REPEATS.value), torch_row(x, w, stride, _REPEATS.value)
    ratio, im2col_ratio = j[2] / max(t[2], 1e-3), j[3] / max(t[2], 1e-3)
    print(f'{name:<22}{j[0]:9.1f}{j[1]:8.1f}{j[2]:8.1f}{j[3]:10.1f}   {t[0]:9.1f}{t[1]:8.1f}{t[2]:8.1f}   '
          f'{ratio:11.1f}x{im2col_ratio:12.1f}x')


if __name__ == '__main__':
  app.run(main)
