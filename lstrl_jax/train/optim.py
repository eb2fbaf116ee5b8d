"""Learning-rate schedule and optimiser of the paper's recipe (DESIGN.md section 2), in steps.

Configs write the schedule in epochs; `epochs_to_steps` turns it into steps with the pipeline's
`steps_per_epoch`, so changing the batch size or the dataset never leaves a stale step count.

Optimiser: PyTorch `torch.optim.Adam(weight_decay=wd)`, i.e. the L2 term is added to the gradient *before*
the Adam moments (`g + wd * p`, then Adam), which is `optax.add_decayed_weights` chained before
`optax.adam`, not AdamW's decoupled decay. Every trainable parameter is decayed, as in the author code.
Parameters the model marks as frozen (the BNNeck bias) receive a zero update, so they keep their initial
value exactly.
"""

from __future__ import annotations

from typing import Any, Callable

import jax
import jax.numpy as jnp
import ml_collections
import optax

Params = Any


def epochs_to_steps(epochs: float, steps_per_epoch: int) -> int:
  """`epochs` (as written in the config) in optimiser steps, rounded to the nearest step."""
  return int(round(epochs * steps_per_epoch))


def learning_rate_schedule(config: ml_collections.ConfigDict, steps_per_epoch: int) -> optax.Schedule:
  """Linear warm-up, then a step decay: `lr(step)` for step = 0, 1, ... (the step being taken).

  `lr(s) = learning_rate * min(1, (s + 1) / W) * decay_factor ** floor(s / D)` with W = warmup_epochs and
  D = decay_every_epochs in steps. The author code warms up per epoch, `lr * (e + 1) / warmup_epochs` for
  epoch e; the per-step ramp here passes through the same value at the last step of every warm-up epoch
  and is smoother in between. W = 0 disables the warm-up, D = 0 the decay.

  Args:
    config: reads learning_rate, warmup_epochs, decay_every_epochs, decay_factor.
    steps_per_epoch: optimiser steps in one epoch.

  Returns:
    a jittable function from an int step to a float32 learning rate (float64 under `jax.enable_x64`, so the
    float64 parity run of benchmarks/train_parity.py has no float32 rate; optax casts the rate to each
    update's dtype, so float32 training is unaffected).
  """
  base = config.learning_rate
  warmup = epochs_to_steps(config.warmup_epochs, steps_per_epoch)
  decay_every = epochs_to_steps(config.decay_every_epochs, steps_per_epoch)
  factor = config.decay_factor

  def schedule(step):
    dtype = jax.dtypes.canonicalize_dtype(jnp.float64)  # float32 unless x64 is enabled
    step = jnp.asarray(step, jnp.int32)
    lr = jnp.asarray(base, dtype)
    if warmup > 0:
      lr = lr * jnp.minimum(1.0, (step + 1).astype(dtype) / warmup)
    if decay_every > 0:
      lr = lr * jnp.asarray(factor, dtype) ** (step // decay_every).astype(dtype)
    return lr

  return schedule


def make_optimizer(
    config: ml_collections.ConfigDict,
    steps_per_epoch: int,
    trainable_mask: Callable[[Params], Any] | None = None,
) -> optax.GradientTransformation:
  """PyTorch-style Adam with L2 weight decay on the warm-up/step-decay schedule.

  Args:
    config: reads weight_decay and the schedule keys (see `learning_rate_schedule`).
    steps_per_epoch: optimiser steps in one epoch.
    trainable_mask: maps params to a same-structured pytree of bools, False where a parameter must never
      change (`lstrl_jax.models.lstrl.trainable_mask`: the BNNeck bias); None trains every parameter.

  Returns:
    an optax transformation; `update(grads, state, params)` needs `params` for the weight decay.
  """
  adam = optax.chain(
      optax.add_decayed_weights(config.weight_decay),
      optax.adam(learning_rate_schedule(config, steps_per_epoch), b1=0.9, b2=0.999, eps=1e-8),
  )

  if trainable_mask is None:
    return adam

  def labels(params: Params) -> Params:
    return jax.tree.map(lambda trained: 'trained' if trained else 'frozen', trainable_mask(params))

  return optax.multi_transform({'trained': adam, 'frozen': optax.set_to_zero()}, labels)
