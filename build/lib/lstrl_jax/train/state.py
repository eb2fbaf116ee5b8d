"""The train state: one pytree holding everything a step reads and writes (as flax examples/imagenet).

`TrainState` = step, params, opt_state (from `flax.training.train_state.TrainState`) plus the BatchNorm
running statistics. It is built replicated on the mesh, its backbone optionally overwritten with ImageNet
weights before the optimiser state is made; `abstract_train_state` gives the same tree as
`jax.ShapeDtypeStruct`s (no memory, no compute) for restoring a checkpoint into.
"""

from __future__ import annotations

import functools
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
from flax.training import train_state
from jax.sharding import Mesh

from lstrl_jax import sharding
from lstrl_jax.models import weights


class TrainState(train_state.TrainState):
  """step (int32 scalar), params, opt_state and batch_stats (BatchNorm running mean/var, float32).

  `apply_fn` (the model's `apply`) and `tx` (the optimiser) are static fields, not saved in checkpoints.
  """

  batch_stats: Any


def init_variables(
    model: nn.Module, config: ml_collections.ConfigDict, rng: jax.Array, mesh: Mesh
) -> dict[str, Any]:
  """Initialises the model on one dummy clip `[1, T, H, W, 3]` (float32 zeros, eval mode).

  Args:
    model: a module with the LSTRL call signature `model(clips, train=...)`.
    config: reads seq_len, height, width.
    rng: PRNG key for the parameter initialisers.
    mesh: the variables come back replicated over it.

  Returns:
    {'params': ..., 'batch_stats': ...}; float32 unless the model's param_dtype says otherwise.
  """
  # A jit argument, not a closed-over constant: XLA would constant-fold the whole forward pass on it.
  clips = np.zeros((1, config.seq_len, config.height, config.width, 3), np.float32)

  def init(key, clips):
    variables = model.init({'params': key}, clips, train=False)
    return {'params': variables['params'], 'batch_stats': variables.get('batch_stats', {})}

  return jax.jit(init, out_shardings=sharding.replicated(mesh))(rng, clips)


def create_train_state(
    model: nn.Module,
    config: ml_collections.ConfigDict,
    tx: optax.GradientTransformation,
    rng: jax.Array,
    mesh: Mesh,
) -> TrainState:
  """A fresh train state at step 0, replicated over `mesh`.

  When `config.model.pretrained` names a weight file, the backbone's parameters and BatchNorm statistics are
  replaced by it (`lstrl_jax.models.weights.load_pretrained`) before the optimiser state is built.

  Raises:
    the errors of `load_pretrained` when the weight file is missing or does not fit the model.
  """
  variables = init_variables(model, config, rng, mesh)
  if config.model.pretrained:
    variables = weights.load_pretrained(variables, config.model.pretrained)
  build = jax.jit(functools.partial(_state_from_variables, model, tx), out_shardings=sharding.replicated(mesh))
  return build(variables)


def abstract_train_state(
    model: nn.Module, config: ml_collections.ConfigDict, tx: optax.GradientTransformation, mesh: Mesh
) -> TrainState:
  """The train state's structure as `jax.ShapeDtypeStruct`s, replicated over `mesh` (for restoring)."""
  variables = jax.eval_shape(lambda key: init_variables(model, config, key, mesh), jax.random.key(0))
  abstract = jax.eval_shape(functools.partial(_state_from_variables, model, tx), variables)
  replicated = sharding.replicated(mesh)
  return jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=replicated), abstract)


def _state_from_variables(model: nn.Module, tx: optax.GradientTransformation, variables: dict) -> TrainState:
  """Step 0 (int32), the given params and batch_stats, and a fresh optimiser state."""
  state = TrainState.create(
      apply_fn=model.apply, params=variables['params'], tx=tx, batch_stats=variables['batch_stats']
  )
  return state.replace(step=jnp.zeros((), jnp.int32))
