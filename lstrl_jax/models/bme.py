"""Bi-direction Motion Estimator, BME (LSTRL paper, section 3; DESIGN.md section 1).

Per frame t of a clip F `[T, h, w, C]`, with φ, ψ 1x1 convolutions C -> C/2 (no bias):
  global-to-local (default): M^f_t = φ(F_t^g) ⊙ ψ(F_{t+1}),  M^b_t = φ(F_t^g) ⊙ ψ(F_{t-1}),
    F_t^g the spatial mean of F_t `[1, 1, C]`, broadcast over h x w;
  local-to-local (paper Table 5): φ(F_t) replaces φ(F_t^g), a per-position product;
  at the clip ends the missing neighbour is the frame itself (F_{-1} = F_0, F_T = F_{T-1}).
  F^m = ReLU(BN(υ([M^f, M^b]))), υ a 1x1 convolution C -> C (C/2 -> C with forward motion only).

How the convolutions are evaluated (same outputs, different cost). As written, φ is applied to the pooled F_t^g
and ψ to each shifted clip separately, ψ(F_{t+1}) and ψ(F_{t-1}); that is what reproduces the paper's 4.93 GMACs
of convolutions per frame for the full model. Per frame at 256x128, in MMACs, at layer2 (C=512, 32x16): ψ 2 x
67.1 + υ 134.2 + φ 0.1; at layer3 (C=1024, 16x8): ψ 2 x 67.1 + υ 134.2 + φ 0.5; 537.5 in all, so 4.3888 (baseline
+ MAE) + 0.5375 = 4.9263 -> 4.93. A 1x1 convolution acts on each frame alone, so it commutes with the frame
shift: ψ(F_{t±1}) = (ψ F)_{t±1}. By default the module computes ψ(F) once and shifts it (67.1 MMACs per frame
and stage fewer); `as_written=True` evaluates the equations as written, which the MAC count traces
(`lstrl_jax.summary`). (The other reading that lands on 4.93, φ applied to the full map before pooling, since
mean(φ F) = φ(mean F) for φ without bias, with ψ once, gives 4.9257: the same rounded number, but it contradicts
the written φ(F_t^g).) In local-to-local mode φ runs on the full map as well (+0.134).

BatchNorm's scale starts at zero, so F^m = 0 at initialisation. The ReLU after it has gradient 1 at exactly 0
(the subgradient at the kink; `jax.nn.relu` and PyTorch use 0 there): with the zero-initialised scale every
pre-activation is exactly 0 at the start, and a zero-gradient ReLU would then leave the whole BME branch
without gradient forever. The forward values are those of an ordinary ReLU.

Sown into 'intermediates' (Flax `sow`, each value a 1-tuple), in the compute dtype:
  M_f `[B, T, h, w, C/2]` and, when bidirectional, M_b `[B, T, h, w, C/2]`.
"""

from __future__ import annotations

from typing import Any

import flax.linen as nn
import jax.numpy as jnp

from lstrl_jax.models.resnet import batch_norm, conv

Dtype = Any

BME_MODES = ('global_to_local', 'local_to_local')


def neighbours(f: jnp.ndarray) -> tuple[jnp.ndarray, jnp.ndarray]:
  """(F_{t+1}, F_{t-1}) for every t of `[B, T, ...]`, replicating the clip's last/first frame at the ends."""
  following = jnp.concatenate([f[:, 1:], f[:, -1:]], axis=1)
  preceding = jnp.concatenate([f[:, :1], f[:, :-1]], axis=1)
  return following, preceding


def relu_open_at_zero(x: jnp.ndarray) -> jnp.ndarray:
  """max(x, 0) whose gradient is 1 at x = 0 (see the module docstring), any shape and dtype."""
  return jnp.where(x >= 0, x, jnp.zeros_like(x))


class BME(nn.Module):
  """F^m = ReLU(BN(υ([M^f, M^b]))) for a clip feature map `[B, T, h, w, C] -> [B, T, h, w, C]`.

  Attributes:
    mode: 'global_to_local' (φ on the spatial mean F_t^g) or 'local_to_local' (φ on F_t).
    bidirectional: use M^f and M^b; False uses M^f only (υ takes C/2 channels).
    as_written: ψ on each shifted clip (the paper's MAC count); False (default) ψ(F) once, then shifted.
    dtype: compute dtype.
    param_dtype: parameter dtype.
  """

  mode: str = 'global_to_local'
  bidirectional: bool = True
  as_written: bool = False
  dtype: Dtype = jnp.float32
  param_dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, f: jnp.ndarray, *, train: bool) -> jnp.ndarray:
    """Computes F^m.

    Args:
      f: clip feature map F `[B, T, h, w, C]`.
      train: BatchNorm normalises with batch statistics and updates 'batch_stats'.

    Returns:
      F^m `[B, T, h, w, C]` in `dtype`, non-negative. Sows M_f (and M_b) into 'intermediates'.

    Raises:
      ValueError: unknown `mode` or odd C.
    """
    channels = f.shape[-1]
    if self.mode not in BME_MODES or channels % 2:
      raise ValueError(f'BME: expected mode in {BME_MODES} and even C, got {self.mode!r}, C={channels}')
    f = jnp.asarray(f, self.dtype)
    phi = conv(channels // 2, 1, 1, self.dtype, self.param_dtype, name='phi')
    psi = conv(channels // 2, 1, 1, self.dtype, self.param_dtype, name='psi')
    if self.mode == 'global_to_local':
      anchor = phi(jnp.mean(f, axis=(2, 3), keepdims=True))  # φ(F_t^g) [B, T, 1, 1, C/2]
    else:
      anchor = phi(f)  # φ(F_t) [B, T, h, w, C/2]
    directions = 2 if self.bidirectional else 1
    if self.as_written:
      shifted = [psi(g) for g in neighbours(f)[:directions]]  # ψ(F_{t+1}), ψ(F_{t-1})
    else:
      shifted = neighbours(psi(f))[:directions]  # (ψ F)_{t+1}, (ψ F)_{t-1}
    motions = [anchor * g for g in shifted]
    for name, motion in zip(('M_f', 'M_b'), motions):
      self.sow('intermediates', name, motion)
    m = conv(channels, 1, 1, self.dtype, self.param_dtype, name='upsilon')(jnp.concatenate(motions, axis=-1))
    m = batch_norm(train, self.dtype, self.param_dtype, name='bn', zero_scale=True)(m)
    return relu_open_at_zero(m)
