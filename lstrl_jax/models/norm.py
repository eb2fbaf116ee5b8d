"""BatchNorm as PyTorch computes it (`torch.nn.BatchNorm{1,2}d` in training and eval mode), for every model here.

Flax's `nn.BatchNorm` differs from PyTorch in two ways that matter for step-for-step parity with the paper's
code (issue 14, `benchmarks/train_parity.py`):
  * PyTorch updates the running variance with the *unbiased* batch variance, `var * n / (n - 1)` (n values per
    channel), Flax with the biased one: a factor 32/31 in BNNeck at 32 clips, which changes the evaluation
    features. Normalisation uses the biased variance in both.
  * Flax computes the batch variance as E[x^2] - E[x]^2 in one pass; PyTorch subtracts the mean first. The
    two-pass form is kept here: in float32 the one-pass form loses digits when |mean| >> std.

Variables are Flax's, same names, shapes and dtypes: params {scale, bias} `[C]` (param_dtype), batch_stats
{mean, var} `[C]` float32, so checkpoints written with `nn.BatchNorm` restore unchanged. Their running
variance was accumulated with the biased estimate, i.e. (n-1)/n of what this module accumulates: in BNNeck
that scales every channel of f_bn by the same factor sqrt(32/31) ~ 1.016 (cosine rankings are unchanged), in
the backbone n >= B*T*h*w makes it negligible; training on converges to the new value (0.9^k).
Statistics are reduced in float32 whatever the input dtype (as Flax); the output has `dtype`.
"""

from __future__ import annotations

import math
from typing import Any, Callable

import flax.linen as nn
import jax
import jax.numpy as jnp

Dtype = Any


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
    axes = tuple(range(x.ndim - 1))
    running_mean = self.variable('batch_stats', 'mean', lambda: jnp.zeros((channels,), jnp.float32))
    running_var = self.variable('batch_stats', 'var', lambda: jnp.ones((channels,), jnp.float32))
    scale = self.param('scale', self.scale_init, (channels,), self.param_dtype)
    bias = self.param('bias', self.bias_init, (channels,), self.param_dtype)
    if use_running_average:
      mean, var = running_mean.value, running_var.value
    else:
      count = math.prod(x.shape[:-1])
      values = x.astype(jnp.promote_types(x.dtype, jnp.float32))
      mean = jnp.mean(values, axis=axes)
      var = jnp.mean(jnp.square(values - mean), axis=axes)
      if not self.is_initializing():
        if count < 2:
          raise ValueError(f'BatchNorm {self.name}: training needs more than 1 value per channel, got input {x.shape}')
        m = self.momentum
        running_mean.value = m * running_mean.value + (1 - m) * mean
        running_var.value = m * running_var.value + (1 - m) * var * (count / (count - 1))
    y = (x - mean) * (jax.lax.rsqrt(var + self.epsilon) * scale) + bias
    return jnp.asarray(y, self.dtype or jnp.result_type(x, scale))
