"""Parameter and multiply-accumulate (MAC) counts of the model, read from its jaxpr (paper Table 3).

MACs are counted on the traced computation (`jax.make_jaxpr`, nothing is compiled or run):
  conv_general_dilated: output elements x kernel height x kernel width x input channels per group;
  dot_general: output elements x the product of the contracting dimensions.
Products under a `jax.named_scope('attention')` (MAE's D^i X1) are 'attention', other convolutions are
'conv', other dot products (the classifier) are 'other'. Element-wise work (BatchNorm, ReLU, pooling, ⊙) is
not counted, as in the paper's tool (thop counts modules, not element-wise tensor ops).
"""

from __future__ import annotations

import math
from typing import Any, Iterator

import jax
import jax.numpy as jnp
from jax.extend import core as jex_core
import numpy as np
from flax import traverse_util

CATEGORIES = ('conv', 'attention', 'other')


def count_params(tree: Any) -> int:
  """Total number of elements of all leaves (arrays or `jax.ShapeDtypeStruct`)."""
  return sum(int(np.prod(leaf.shape)) for leaf in jax.tree_util.tree_leaves(tree))


def params_by_module(params: Any, depth: int = 1) -> dict[str, int]:
  """Parameter counts grouped by the first `depth` components of each path ('/'-joined), in tree order."""
  counts: dict[str, int] = {}
  for path, leaf in traverse_util.flatten_dict(params).items():
    name = '/'.join(path[:depth])
    counts[name] = counts.get(name, 0) + int(np.prod(leaf.shape))
  return counts


def _equations(jaxpr: jex_core.Jaxpr, scope: str) -> Iterator[tuple[Any, str]]:
  """Every equation with its full name scope, descending into sub-jaxprs (jit, custom_vjp, scan, ...)."""
  for eqn in jaxpr.eqns:
    eqn_scope = f'{scope}/{eqn.source_info.name_stack}'
    yield eqn, eqn_scope
    for sub in jex_core.jaxprs_in_params(eqn.params):
      yield from _equations(sub, eqn_scope)


def _macs(eqn: Any) -> int:
  """MACs of one conv_general_dilated or dot_general equation (0 for anything else)."""
  out = eqn.outvars[0].aval.shape
  if eqn.primitive.name == 'conv_general_dilated':
    rhs = eqn.invars[1].aval.shape
    spec = eqn.params['dimension_numbers'].rhs_spec  # (out feature, in feature per group, spatial...)
    return math.prod(out) * math.prod(rhs[d] for d in spec[1:])
  if eqn.primitive.name == 'dot_general':
    (lhs_contract, _), _ = eqn.params['dimension_numbers']
    lhs = eqn.invars[0].aval.shape
    return math.prod(out) * math.prod(lhs[d] for d in lhs_contract)
  return 0


def count_macs(closed_jaxpr: jex_core.ClosedJaxpr) -> dict[str, int]:
  """MACs of a jaxpr by category: {'conv', 'attention', 'other'} -> int (see the module docstring)."""
  counts = dict.fromkeys(CATEGORIES, 0)
  for eqn, scope in _equations(closed_jaxpr.jaxpr, ''):
    macs = _macs(eqn)
    if not macs:
      continue
    if 'attention' in scope.split('/'):
      counts['attention'] += macs
    elif eqn.primitive.name == 'conv_general_dilated':
      counts['conv'] += macs
    else:
      counts['other'] += macs
  return counts


def model_macs_per_frame(model: Any, variables: Any, seq_len: int, height: int, width: int) -> dict[str, float]:
  """MACs per frame of `model.apply(variables, clips, train=False)` for one clip `[1, T, H, W, 3]`.

  Args:
    model: a Flax module taking `(clips, *, train)`, e.g. `LSTRL`.
    variables: its variables (arrays or `jax.ShapeDtypeStruct`, e.g. from `jax.eval_shape(model.init, ...)`).
    seq_len: T, frames per clip.
    height, width: frame size in pixels.

  Returns:
    {'conv', 'attention', 'other'} -> MACs of one clip divided by T (float).
  """
  clips = jax.ShapeDtypeStruct((1, seq_len, height, width, 3), jnp.float32)
  jaxpr = jax.make_jaxpr(lambda v, x: model.apply(v, x, train=False))(variables, clips)
  return {k: v / seq_len for k, v in count_macs(jaxpr).items()}
