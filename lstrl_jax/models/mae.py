"""Multi-granularity Appearance Extractor, MAE (LSTRL paper, section 3; DESIGN.md section 1).

Per clip, with F `[T, h, w, C]` and c = C/4:
  X1 = ω1(F) `[THW, c]` (1x1 conv, no bias); X2 = temporal mean of X1 `[hw, c]`; X3 = spatial mean `[T, c]`;
  X4 = spatio-temporal mean `[1, c]`;
  D^i = softmax(X_i X1ᵀ) over the THW key axis (no 1/√c scale);  A_i = D^i X1;
  F^a = BN(ω2([A1, A2, A3, A4])), A2 repeated over T, A3 over h·w, A4 over T·h·w; ω2: 1x1 conv to C, no bias.

ω2 is linear and 1x1, so ω2([A1, A2, A3, A4]) = ω2_1 A1 + ω2_2 A2 + ω2_3 A3 + ω2_4 A4 with ω2_i the kernel rows
of A_i, each term repeated as its A_i is: by default the module computes that sum (ω2_2..ω2_4 on the T-, h·w-
and T·h·w-times smaller unrepeated maps, so about a quarter of ω2's multiplies), and `as_written=True` the
concatenation form, which the MAC count traces (`lstrl_jax.summary`, the paper's Table 3).

A_i = D^i X1 is attention with query X_i, key = value = X1 and scale 1, so all four granularities go through
one `jax.nn.dot_product_attention` call (queries concatenated along the sequence axis; softmax is per query
row, so this is exact). The `[THW, THW]` matrix D^1 is never returned by that path; the explicit D^i are
computed only for pictures, when the 'intermediates' collection is mutable. Float64 inputs are the exception:
`jax.nn.dot_product_attention` (JAX 0.10, `_dot_product_attention_core`) always casts the logits to float32
for the softmax, a 1e-7 error that float64 step-for-step parity with PyTorch (benchmarks/train_parity.py)
cannot afford, so float64 uses the explicit softmax(Q X1ᵀ) X1 throughout, in float64. So does a process whose
default backend is the CPU (chosen when tracing, from `jax.default_backend()`, so that exported programs hold
one form, which jax2onnx can convert; GPU and TPU machines keep the fused call): there XLA's lowering of the
fused call is the slower one (MAE at layer2, B=2, T=4: 176 vs 104 ms forward, 416 vs 322 ms forward + backward
on a 2-core AMD EPYC; issue 12, benchmarks/README.md); the explicit form computes the logits and softmax in
float32 for float32 and bfloat16.

Sown into 'intermediates' (Flax `sow`, so each value is a 1-tuple), float32 (float64 for float64 inputs),
for enabled granularities only:
  D1 `[B, T*h*w, T*h*w]`, D2 `[B, h*w, T*h*w]`, D3 `[B, T, T*h*w]`, D4 `[B, 1, T*h*w]`;
  query index (t, y, x) is row-major (t*h*w + y*w + x), keys likewise.
"""

from __future__ import annotations

import functools
import operator
from typing import Any, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from lstrl_jax.models.conv import PiecewiseConv
from lstrl_jax.models.resnet import batch_norm, conv, conv_init

Dtype = Any


def frame_sum(x: jnp.ndarray) -> jnp.ndarray:
  """Σ_t x[:, t]: `[B, T, ...]` -> `[B, ...]`, as T - 1 additions of frame slices.

  XLA's CPU reduction over such a middle axis (YNNPACK's) took 25-40x the time of the additions: 2.8 against
  0.1 ms for `[2, 4, 32, 16, 128]`, the X2 of MAE at layer2 (2-core AMD EPYC; benchmarks/README.md, issue 12).
  """
  return functools.reduce(operator.add, [x[:, i] for i in range(x.shape[1])])


@functools.partial(jax.custom_vjp, nondiff_argnums=(1,))
def repeat_frames(x: jnp.ndarray, frames: int) -> jnp.ndarray:
  """`[B, 1, ...]` -> `[B, frames, ...]` (a broadcast) whose gradient is `frame_sum` of the cotangent, not XLA's
  slow middle-axis reduction."""
  return jnp.broadcast_to(x, (x.shape[0], frames) + x.shape[2:])


def _repeat_frames_fwd(x, frames):
  return repeat_frames(x, frames), None


def _repeat_frames_bwd(frames, _, g):
  return (frame_sum(g)[:, None],)


repeat_frames.defvjp(_repeat_frames_fwd, _repeat_frames_bwd)


def granularity_queries(x1: jnp.ndarray) -> list[jnp.ndarray]:
  """The queries X1..X4 of the four granularities.

  Args:
    x1: X1 as `[B, T, h, w, c]`.

  Returns:
    [X1 `[B, T*h*w, c]`, X2 `[B, h*w, c]` (mean over T), X3 `[B, T, c]` (mean over h, w),
    X4 `[B, 1, c]` (mean over T, h, w)].
  """
  b, t, h, w, c = x1.shape
  return [
      x1.reshape(b, t * h * w, c),
      (frame_sum(x1) / t).reshape(b, h * w, c),
      jnp.mean(x1, axis=(2, 3)),
      jnp.mean(x1, axis=(1, 2, 3))[:, None],
  ]


def granularity_grid(a: jnp.ndarray, granularity: int, shape: tuple[int, int, int, int]) -> jnp.ndarray:
  """A_i `[B, n_i, c]` (granularity 0..3 for A1..A4) laid out on the clip grid, unrepeated.

  Returns A1 `[B, T, h, w, c]`, A2 `[B, 1, h, w, c]`, A3 `[B, T, 1, 1, c]`, A4 `[B, 1, 1, 1, c]` for `shape`
  (B, T, h, w); broadcasting each to `[B, T, h, w, c]` repeats A2 over T, A3 over h*w, A4 over T*h*w.
  """
  b, t, h, w = shape
  grid = ((b, t, h, w), (b, 1, h, w), (b, t, 1, 1), (b, 1, 1, 1))[granularity]
  return a.reshape(*grid, a.shape[-1])


def attend(queries: jnp.ndarray, x1: jnp.ndarray) -> jnp.ndarray:
  """A = softmax(Q X1ᵀ) X1 with `jax.nn.dot_product_attention` (scale 1, one head, no mask).

  Args:
    queries: Q `[B, N, c]`.
    x1: keys and values X1 `[B, S, c]`, same dtype as `queries`.

  Returns:
    A `[B, N, c]` in the dtype of `queries`; logits and softmax are float32 inside, except for float64
    inputs, which take the explicit `dependency_maps` form in float64 (the fused attention's softmax is
    always float32; module docstring). With the CPU as default backend the explicit form serves every dtype.
  """
  def explicit(q, k):
    return jnp.einsum('bns,bsc->bnc', dependency_maps(q, k), k).astype(q.dtype)

  def fused(q, k):
    return jax.nn.dot_product_attention(q[:, :, None], k[:, :, None], k[:, :, None], scale=1.0)[:, :, 0]

  with jax.named_scope('attention'):
    if queries.dtype == jnp.float64 or jax.default_backend() == 'cpu':
      return explicit(queries, x1)
    return fused(queries, x1)


def dependency_maps(queries: jnp.ndarray, x1: jnp.ndarray) -> jnp.ndarray:
  """Explicit D = softmax(Q X1ᵀ) over the key axis `[B, N, S]`, float32 (float64 for float64 inputs).

  For visualisation, and the float64 path of `attend`. Q `[B, N, c]`, X1 `[B, S, c]`.
  """
  dtype = jnp.promote_types(queries.dtype, jnp.float32)
  logits = jnp.einsum('bnc,bsc->bns', queries, x1, preferred_element_type=dtype)
  return jax.nn.softmax(logits, axis=-1)


class MAE(nn.Module):
  """F^a = BN(ω2([A1, A2, A3, A4])) for a clip feature map `[B, T, h, w, C] -> [B, T, h, w, C]`.

  The BatchNorm scale starts at zero, so F^a = 0 at initialisation. C must be divisible by 4.

  Attributes:
    granularities: A1..A4 on/off (paper Table 4); ω2 takes (number enabled) * C/4 channels.
    as_written: apply ω2 to the concatenation of the repeated A_i, as the equation is written (the paper's MAC
      count, `lstrl_jax.summary`); False (default) applies ω2's kernel rows of each A_i before repeating it
      (`conv.PiecewiseConv`), the same F^a in about a quarter of ω2's multiplies.
    dtype: compute dtype.
    param_dtype: parameter dtype.
  """

  granularities: Sequence[bool] = (True, True, True, True)
  as_written: bool = False
  dtype: Dtype = jnp.float32
  param_dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, f: jnp.ndarray, *, train: bool) -> jnp.ndarray:
    """Computes F^a.

    Args:
      f: clip feature map F `[B, T, h, w, C]`.
      train: BatchNorm normalises with batch statistics and updates 'batch_stats'.

    Returns:
      F^a `[B, T, h, w, C]` in `dtype`. Sows D1..D4 when 'intermediates' is mutable.

    Raises:
      ValueError: C is not divisible by 4, or no granularity is enabled.
    """
    b, t, h, w, channels = f.shape
    if channels % 4 or not any(self.granularities):
      raise ValueError(
          f'MAE: needs channels divisible by 4 and at least one granularity, got C={channels}, '
          f'granularities={tuple(self.granularities)}'
      )
    x1 = conv(channels // 4, 1, 1, self.dtype, self.param_dtype, name='omega1')(jnp.asarray(f, self.dtype))
    enabled = [i for i, on in enumerate(self.granularities) if on]
    all_queries = granularity_queries(x1)
    queries = [all_queries[i] for i in enabled]
    keys = all_queries[0]
    attended = attend(jnp.concatenate(queries, axis=1), keys)
    if self.is_mutable_collection('intermediates'):
      for i, query in zip(enabled, queries):
        self.sow('intermediates', f'D{i + 1}', dependency_maps(query, keys))
    splits = np.cumsum([q.shape[1] for q in queries])[:-1]
    pieces = jnp.split(attended, splits, axis=1)
    grids = [granularity_grid(p, i, (b, t, h, w)) for p, i in zip(pieces, enabled)]
    if self.as_written:
      repeated = [jnp.broadcast_to(g, (b, t, h, w, g.shape[-1])) for g in grids]
      a = conv(channels, 1, 1, self.dtype, self.param_dtype, name='omega2')(jnp.concatenate(repeated, axis=-1))
    else:
      omega2 = PiecewiseConv(channels, 1, dtype=self.dtype, param_dtype=self.param_dtype, kernel_init=conv_init,
                             name='omega2')
      terms = [repeat_frames(term, t) if term.shape[1] == 1 else term for term in omega2(grids)]
      a = jnp.broadcast_to(functools.reduce(operator.add, terms), (b, t, h, w, channels))
    return batch_norm(train, self.dtype, self.param_dtype, name='bn', zero_scale=True)(a)
