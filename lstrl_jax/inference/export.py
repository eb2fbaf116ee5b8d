r"""Exports the trained network for serving: `python -m lstrl_jax.export --ckpt runs/own --format onnx --out m.onnx`.

The exported function (DESIGN.md section 6) maps uint8 clips `[B, T, H, W, 3]` (RGB, already resized to the
config's H x W; B symbolic) to the float32 features `[B, D]` that `embed` writes for a tracklet of exactly T
frames: ImageNet normalisation (`pipeline.normalize`) inside, the network in eval mode (BatchNorm running
statistics), f_bn ('bn_features'). For a longer tracklet, average the features of its T-frame clips as `embed`
does ('dense': consecutive clips, the last padded by repeating the last frame).

- `--format stablehlo`: `jax.export` with a symbolic batch dimension, written with `Exported.serialize()`.
  Load with `jax.export.deserialize(open(path, 'rb').read()).call(clips)`; no lstrl_jax needed. Runs on the
  platforms named by `--platforms` (default: the one exporting).
- `--format onnx`: jax2onnx (the `[export]` extra), run with onnxruntime. Two faithful rewrites make jax2onnx
  0.17.1 give the Flax model's numbers: (1) the network is traced to a jaxpr before conversion, so the
  converter sees lax primitives only (its flax.linen plugins, which replace Conv/BatchNorm/max_pool calls,
  mix NHWC and NCHW layouts: a wrong residual `Add` shape on a plain ResNet-18, 8 % relative error with MAE
  and BME); (2) the stem's max pool (`reduce_window_max` over NHWC with a 4-D window) becomes the same max pool
  over `[N * C, H, W]` with a 3-D window, since the converter emits every window axis as a spatial axis of ONNX
  MaxPool and onnxruntime's MaxPool takes at most 3 ("Unsupported pooling size"). Both are exact rewrites.
"""

from __future__ import annotations

import pathlib
from typing import Callable, Sequence

import jax
from jax import lax
from jax.extend import core as jax_core
import jax.numpy as jnp

from lstrl_jax.data import pipeline
from lstrl_jax.inference import common

FORMATS = ('stablehlo', 'onnx')
_CALLS = ('pjit', 'jit', 'closed_call', 'custom_jvp_call', 'custom_vjp_call')  # inlined when rewriting


class ExportError(ValueError):
  """The network cannot be exported as asked (a missing converter, a failed conversion); one line."""


def serving_function(trained: common.Trained) -> Callable[[jax.Array], jax.Array]:
  """uint8 clips `[B, T, H, W, 3]` -> float32 f_bn `[B, D]`, the variables closed over as constants."""
  def serve(clips):
    outputs = trained.model.apply(trained.variables, pipeline.normalize(clips), train=False)
    return outputs['bn_features'].astype(jnp.float32)
  return serve


def clip_spec(trained: common.Trained) -> jax.ShapeDtypeStruct:
  """The input: uint8 `[B, T, H, W, 3]` at the config's size, B symbolic."""
  c = trained.config
  return jax.ShapeDtypeStruct(jax.export.symbolic_shape(f'B,{c.seq_len},{c.height},{c.width},3'), jnp.uint8)


def export_stablehlo(trained: common.Trained, platforms: Sequence[str] | None = None) -> bytes:
  """The serialized `jax.export.Exported` of `serving_function` (symbolic batch).

  Raises:
    ExportError: flatbuffers (which jax's serialization needs) is not installed.
  """
  exported = jax.export.export(jax.jit(serving_function(trained)), platforms=platforms)(clip_spec(trained))
  try:
    return bytes(exported.serialize())
  except ImportError as e:  # jax serializes with flatbuffers (requirements.txt)
    raise ExportError(f'--format stablehlo: {e}') from e


def _max_pool_3d(x, window_dimensions, window_strides, padding, **_):
  """`reduce_window_max` over NHWC with window (1, kh, kw, 1), computed over `[N * C, H, W]` (same values)."""
  n, h, w, c = x.shape
  if window_dimensions[0] != 1 or window_dimensions[3] != 1 or window_strides[0] != 1 or window_strides[3] != 1:
    raise ExportError(f'reduce_window_max with window {window_dimensions}: only spatial NHWC windows are rewritten')
  y = jnp.transpose(x, (0, 3, 1, 2)).reshape(n * c, h, w)
  y = lax.reduce_window(y, -jnp.inf, lax.max, (1, *window_dimensions[1:3]), (1, *window_strides[1:3]),
                        ((0, 0), *padding[1:3]))
  return jnp.transpose(y.reshape(n, c, y.shape[1], y.shape[2]), (0, 2, 3, 1))


def _eval_rewritten(jaxpr: jax_core.Jaxpr, consts: Sequence, *args) -> list:
  """Evaluates `jaxpr` primitive by primitive, calls inlined, `reduce_window_max` as `_max_pool_3d`."""
  env = {}
  def read(v):
    return v.val if isinstance(v, jax_core.Literal) else env[v]
  env.update(zip(jaxpr.constvars, consts))
  env.update(zip(jaxpr.invars, args))
  for eqn in jaxpr.eqns:
    values = [read(v) for v in eqn.invars]
    inner = eqn.params.get('jaxpr', eqn.params.get('call_jaxpr'))
    if eqn.primitive.name == 'reduce_window_max':
      outs = [_max_pool_3d(*values, **eqn.params)]
    elif eqn.primitive.name in _CALLS and hasattr(inner, 'jaxpr'):
      outs = _eval_rewritten(inner.jaxpr, inner.consts, *values)
    else:
      outs = eqn.primitive.bind(*values, **eqn.params)
      outs = outs if eqn.primitive.multiple_results else [outs]
    env.update(zip(eqn.outvars, outs))
  return [read(v) for v in jaxpr.outvars]


def export_onnx(trained: common.Trained) -> bytes:
  """The ONNX model (bytes) of `serving_function`: input 'clips' uint8 `[B, T, H, W, 3]`, output 'features'.

  Raises:
    ExportError: jax2onnx not installed, or the conversion failed.
  """
  try:
    import jax2onnx  # optional: the [export] extra (requirements-export.txt)
  except ImportError as e:
    raise ExportError(f'--format onnx needs jax2onnx ({e}); install the [export] extra') from e
  spec = clip_spec(trained)
  closed = jax.make_jaxpr(serving_function(trained))(spec)
  def lax_level(clips):
    return _eval_rewritten(closed.jaxpr, closed.consts, clips)[0]
  try:
    proto = jax2onnx.to_onnx(lax_level, inputs=[spec], model_name='lstrl', input_names=['clips'],
                             output_names=['features'])
  except Exception as e:  # the converter raises many types; name the one that stopped it
    raise ExportError(f'jax2onnx could not convert the network: {type(e).__name__}: {common.first_line(e)}') from e
  return proto.SerializeToString()


def export(ckpt: str, fmt: str, out: str, *, platforms: Sequence[str] | None = None) -> pathlib.Path:
  """Exports the checkpoint's network in `fmt` ('stablehlo' | 'onnx') to `out` (written atomically).

  Raises:
    CheckpointError, EvaluationError: bad checkpoint. ExportError: see `export_onnx`.
  """
  trained = common.load_trained(ckpt)
  data = export_stablehlo(trained, platforms) if fmt == 'stablehlo' else export_onnx(trained)
  return common.write_bytes(out, data)
