"""BatchNorm as PyTorch computes it (`torch.nn.BatchNorm{1,2}d` in training and eval mode), for every model here.

Flax's `nn.BatchNorm` differs from PyTorch in two ways that matter for step-for-step parity with the paper's
code (issue 14, `benchmarks/train_parity.py`):
  * PyTorch updates the running variance with the *unbiased* batch variance, `var * n / (n - 1)` (n values per
    channel), Flax with the biased one: a factor 32/31 in BNNeck at 32 clips, which changes the evaluation
    features. Normalisation uses the biased variance in both.
  * Flax computes the batch variance as E[x^2] - E[x]^2 in one pass; PyTorch subtracts the mean first. The
    two-pass form is kept here: in float32 the one-pass form loses digits when |mean| >> std.

In training, `batch_normalize` computes PyTorch's CPU kernels' forms: the output as `x * a + (bias - mean * a)`
with `a = scale / sqrt(var + eps)`, and a custom VJP with the closed-form gradient of
`batch_norm_cpu_backward` (ATen): `dbias = sum g`, `dscale = sum((x - mean) g) / sigma`,
`dx = (g - dbias / n - (x - mean) dscale / (sigma n)) * scale / sigma` (sigma = sqrt(var + eps)). Autodiff of the
textbook formula saved `x - mean` as a second full-size array and ran its gradient as several passes; the closed
form reads `x` and `g` once for both sums and once more for `dx`. On a 2-core AMD EPYC, BatchNorm + ReLU forward
and backward at `[8, 64, 32, 256]` went from 20-25 to 9-20 ms (PyTorch: 7-16), and the full LSTRL train step from
280.5 to 250.6 ms/frame (one process, interleaved; issue 12, benchmarks/README.md).

Variables are Flax's, same names, shapes and dtypes: params {scale, bias} `[C]` (param_dtype), batch_stats
{mean, var} `[C]` float32, so checkpoints written with `nn.BatchNorm` restore unchanged. Their running
variance was accumulated with the biased estimate, i.e. (n-1)/n of what this module accumulates: in BNNeck
that scales every channel of f_bn by the same factor sqrt(32/31) ~ 1.016 (cosine rankings are unchanged), in
the backbone n >= B*T*h*w makes it negligible; training on converges to the new value (0.9^k).
Statistics are reduced in float32 whatever the input dtype (as Flax); the output has `dtype`.
"""

from __future__ import annotations

import functools
import math
from typing import Any, Callable

import flax.linen as nn
import jax
import jax.numpy as jnp

Dtype = Any


@functools.partial(jax.custom_vjp, nondiff_argnums=(3,))
def batch_normalize(x: jax.Array, scale: jax.Array, bias: jax.Array, epsilon: float
                    ) -> tuple[jax.Array, jax.Array, jax.Array]:
  """Training-mode BatchNorm over the last axis, with the batch's statistics (module docstring).

  Args:
    x: `[..., C]`, any float dtype; statistics are reduced in float32 (float64 for float64 input).
    scale, bias: `[C]` (gamma, beta).
    epsilon: added to the variance.

  Returns:
    (y, mean, var): y `[..., C]` = `x * a + (bias - mean * a)`, `a = scale * rsqrt(var + epsilon)`, in the
    promoted dtype of `x`, `scale` and float32; the batch mean and biased variance `[C]` (float32 or wider).
    Every output is differentiable (mean and var through their own `1/n` and `2 (x - mean) / n` terms).
  """
  return _batch_normalize_fwd(x, scale, bias, epsilon)[0]


def _batch_normalize_fwd(x, scale, bias, epsilon):
  axes = tuple(range(x.ndim - 1))
  values = x.astype(jnp.promote_types(x.dtype, jnp.float32))
  mean = jnp.mean(values, axis=axes)
  var = jnp.mean(jnp.square(values - mean), axis=axes)
  inv_sigma = jax.lax.rsqrt(var + epsilon)
  a = inv_sigma * scale
  y = values * a + (bias - mean * a)
  return (y, mean, var), (x, mean, inv_sigma, scale, bias)


def _batch_normalize_bwd(epsilon, residuals, cotangents):
  del epsilon
  x, mean, inv_sigma, scale, bias = residuals
  g, g_mean, g_var = cotangents
  axes = tuple(range(x.ndim - 1))
  count = math.prod(x.shape[:-1])
  g = g.astype(mean.dtype)
  centered = x.astype(mean.dtype) - mean
  g_bias = jnp.sum(g, axis=axes)
  g_dot_centered = jnp.sum(g * centered, axis=axes)
  g_x = ((g - g_bias / count - centered * (g_dot_centered * jnp.square(inv_sigma) / count)) * (inv_sigma * scale)
         + (g_mean + 2 * g_var * centered) / count)
  return (g_x.astype(x.dtype), (g_dot_centered * inv_sigma).astype(scale.dtype), g_bias.astype(bias.dtype))


batch_normalize.defvjp(_batch_normalize_fwd, _batch_normalize_bwd)


class BatchNorm(nn.Module):
  """BatchNorm over the last axis of `[..., C]`, PyTorch semantics (module docstring).

  Training (`use_running_average=False`): y = (x - mean_b) / sqrt(var_b + eps) * scale + bias with the batch
  mean and biased variance over every axis but the last, and, outside `init`,
  running_mean <- m * running_mean + (1 - m) * mean_b,
  running_var  <- m * running_var  + (1 - m) * var_b * n / (n - 1).
  Eval: the running statistics replace the batch ones.

  Attributes:
    use_running_average: as Flax's; None defers it to the call.
    momentum: Flax convention, the weight of the old running value (PyTorch momentum 0.1 is 0.9 here).
    epsilon: added to the variance (PyTorch: 1e-5).
    dtype: output dtype (None: the promoted input/parameter dtype).
    param_dtype: dtype of scale and bias.
    scale_init: initialiser of scale (ones; zeros for the last BN of MAE/BME).
    bias_init: initialiser of bias (zeros).
  """

  use_running_average: bool | None = None
  momentum: float = 0.9
  epsilon: float = 1e-5
  dtype: Dtype | None = None
  param_dtype: Dtype = jnp.float32
  scale_init: Callable[..., jax.Array] = nn.initializers.ones
  bias_init: Callable[..., jax.Array] = nn.initializers.zeros

  @nn.compact
  def __call__(self, x: jax.Array, use_running_average: bool | None = None) -> jax.Array:
    """Normalises `x` `[..., C]`; returns the same shape in `dtype`.

    Raises:
      ValueError: training on a single value per channel (n = 1, as PyTorch's "Expected more than 1 value per
        channel when training").
    """
    use_running_average = nn.merge_param('use_running_average', self.use_running_average, use_running_average)
    channels = x.shape[-1]
    running_mean = self.variable('batch_stats', 'mean', lambda: jnp.zeros((channels,), jnp.float32))
    running_var = self.variable('batch_stats', 'var', lambda: jnp.ones((channels,), jnp.float32))
    scale = self.param('scale', self.scale_init, (channels,), self.param_dtype)
    bias = self.param('bias', self.bias_init, (channels,), self.param_dtype)
    dtype = self.dtype or jnp.result_type(x, scale)
    if use_running_average:
      mean, var = running_mean.value, running_var.value
      y = (x - mean) * (jax.lax.rsqrt(var + self.epsilon) * scale) + bias
      return jnp.asarray(y, dtype)
    count = math.prod(x.shape[:-1])
    y, mean, var = batch_normalize(x, scale, bias, self.epsilon)
    if not self.is_initializing():
      if count < 2:
        raise ValueError(f'BatchNorm {self.name}: training needs more than 1 value per channel, got input {x.shape}')
      m = self.momentum
      running_mean.value = m * running_mean.value + (1 - m) * mean
      running_var.value = m * running_var.value + (1 - m) * var * (count / (count - 1))
    return jnp.asarray(y, dtype)
