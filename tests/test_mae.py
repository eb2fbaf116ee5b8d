"""MAE: fused attention equals the explicit softmax form; the module against a NumPy reference of the paper."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from lstrl_jax.models import macs, mae
from lstrl_jax.models.mae import MAE, attend, dependency_maps


def _softmax(logits):
  e = np.exp(logits - logits.max(-1, keepdims=True))
  return e / e.sum(-1, keepdims=True)


@pytest.mark.parametrize('backend', ['cpu', 'gpu'])
def test_attend_equals_explicit_softmax_form(backend, monkeypatch):
  # A CPU process takes the explicit form, others `jax.nn.dot_product_attention` (run here on the CPU).
  monkeypatch.setattr(jax, 'default_backend', lambda: backend)
  rng = np.random.default_rng(0)
  queries = rng.standard_normal((2, 9, 16)).astype(np.float32)
  x1 = rng.standard_normal((2, 40, 16)).astype(np.float32)
  d = _softmax(np.einsum('bnc,bsc->bns', queries.astype(np.float64), x1.astype(np.float64)))
  expected = d @ x1.astype(np.float64)
  got = np.asarray(jax.jit(lambda q, k: attend(q, k))(jnp.asarray(queries), jnp.asarray(x1)), np.float64)
  assert np.linalg.norm(got - expected) / np.linalg.norm(expected) < 1e-5
  np.testing.assert_allclose(dependency_maps(jnp.asarray(queries), jnp.asarray(x1)), d, rtol=1e-5, atol=1e-7)
  assert attend(jnp.asarray(queries, jnp.bfloat16), jnp.asarray(x1, jnp.bfloat16)).dtype == jnp.bfloat16


@pytest.mark.parametrize('backend,fused', [('cpu', False), ('gpu', True), ('tpu', True)])
def test_only_a_cpu_process_takes_the_explicit_form(backend, fused, monkeypatch):
  # jax.nn.dot_product_attention works on [B, N, heads, c]: its products are 4-D and 5-D, the explicit form's 3-D.
  # (A fresh lambda each time: JAX caches traces per function.)
  monkeypatch.setattr(jax, 'default_backend', lambda: backend)
  jaxpr = jax.make_jaxpr(lambda q, k: attend(q, k))(jnp.zeros((1, 3, 4)), jnp.zeros((1, 5, 4)))
  ranks = {eqn.invars[0].aval.ndim for eqn in jaxpr.eqns if eqn.primitive.name == 'dot_general'}
  assert (max(ranks) > 3) == fused


def test_attend_float64_equals_numpy_float64():
  """Float64 A = softmax(Q X1ᵀ) X1 stays float64 end to end (the fused attention's softmax is float32)."""
  rng = np.random.default_rng(2)
  queries = rng.standard_normal((2, 9, 16)) * 2
  x1 = rng.standard_normal((2, 40, 16)) * 2
  expected = _softmax(np.einsum('bnc,bsc->bns', queries, x1)) @ x1
  with jax.enable_x64(True):
    got = attend(jnp.asarray(queries, jnp.float64), jnp.asarray(x1, jnp.float64))
    assert got.dtype == jnp.float64
    got = np.asarray(got)
  assert np.linalg.norm(got - expected) / np.linalg.norm(expected) < 1e-12


def _reference(f, omega1, omega2, scale, bias, granularities):
  """NumPy MAE in eval mode (running mean 0, var 1), written from the paper's equations clip by clip."""
  b, t, h, w, c = f.shape
  out = np.zeros_like(f)
  for clip in range(b):
    x1 = f[clip].reshape(t * h * w, c) @ omega1[0, 0]  # [THW, C/4]
    grid = x1.reshape(t, h, w, -1)
    queries = [x1, grid.mean(0).reshape(h * w, -1), grid.mean((1, 2)), grid.mean((0, 1, 2))[None]]
    pieces = []
    for i, q in enumerate(queries):
      if not granularities[i]:
        continue
      a = _softmax(q @ x1.T) @ x1
      if i == 0:
        a = a.reshape(t, h, w, -1)
      elif i == 1:
        a = np.tile(a.reshape(1, h, w, -1), (t, 1, 1, 1))
      elif i == 2:
        a = np.tile(a.reshape(t, 1, 1, -1), (1, h, w, 1))
      else:
        a = np.tile(a.reshape(1, 1, 1, -1), (t, h, w, 1))
      pieces.append(a)
    y = np.concatenate(pieces, -1) @ omega2[0, 0]
    out[clip] = y / np.sqrt(1.0 + 1e-5) * scale + bias
  return out


# T=4 with a 2x2 map: hw == T, so A2 and A3 (same length) must still be repeated along different axes.
# Both evaluations of ω2 (per granularity before the repeat, and as written) must give the reference.
@pytest.mark.parametrize('as_written', [False, True])
@pytest.mark.parametrize(
    'granularities', [(True, True, True, True), (False, True, True, False), (False, False, False, True)]
)
def test_mae_matches_numpy_reference(granularities, as_written):
  rng = np.random.default_rng(1)
  f = rng.standard_normal((2, 4, 2, 2, 8)).astype(np.float32)
  module = MAE(granularities, as_written=as_written)
  variables = jax.eval_shape(lambda: module.init(jax.random.key(0), f, train=False))
  params = variables['params']
  enabled = sum(granularities)
  assert params['omega1']['kernel'].shape == (1, 1, 8, 2)
  assert params['omega2']['kernel'].shape == (1, 1, 2 * enabled, 8)  # ω2's input shrinks with the ablation
  omega1 = (0.5 * rng.standard_normal((1, 1, 8, 2))).astype(np.float32)
  omega2 = (0.5 * rng.standard_normal((1, 1, 2 * enabled, 8))).astype(np.float32)
  scale, bias = rng.standard_normal(8).astype(np.float32), rng.standard_normal(8).astype(np.float32)
  values = {
      'params': {'omega1': {'kernel': omega1}, 'omega2': {'kernel': omega2}, 'bn': {'scale': scale, 'bias': bias}},
      'batch_stats': {'bn': {'mean': np.zeros(8, np.float32), 'var': np.ones(8, np.float32)}},
  }
  got = jax.jit(lambda v, f: module.apply(v, f, train=False))(values, f)
  np.testing.assert_allclose(got, _reference(f, omega1, omega2, scale, bias, granularities), rtol=1e-4, atol=1e-5)


def test_output_is_zero_at_initialisation_and_dependency_maps_are_sown():
  f = np.random.default_rng(2).standard_normal((2, 3, 2, 4, 8)).astype(np.float32)
  module = MAE((True, True, True, True))
  variables = jax.jit(lambda f: module.init(jax.random.key(0), f, train=False))(f)
  assert not np.any(variables['params']['bn']['scale'])
  apply = jax.jit(lambda v, f: module.apply(v, f, train=True, mutable=['batch_stats', 'intermediates']))
  out, state = apply(variables, f)
  assert out.shape == f.shape and not np.any(out)
  sown = {k: v[0] for k, v in state['intermediates'].items()}
  thw = 3 * 2 * 4
  assert {k: v.shape for k, v in sown.items()} == {
      'D1': (2, thw, thw), 'D2': (2, 8, thw), 'D3': (2, 3, thw), 'D4': (2, 1, thw)}
  x1 = np.asarray(f.reshape(2, thw, 8) @ np.asarray(variables['params']['omega1']['kernel'])[0, 0])
  np.testing.assert_allclose(sown['D1'], _softmax(x1 @ x1.transpose(0, 2, 1)), rtol=1e-4, atol=1e-6)
  d4 = _softmax(np.einsum('bc,bsc->bs', x1.mean(1), x1))
  np.testing.assert_allclose(sown['D4'][:, 0], d4, rtol=1e-4, atol=1e-6)


def test_explicit_maps_are_only_computed_when_intermediates_are_mutable():
  f = jnp.zeros((1, 2, 2, 2, 8))
  module = MAE((True, True, True, True))
  variables = jax.eval_shape(lambda: module.init(jax.random.key(0), f, train=False))

  def counted(mutable):
    return macs.count_macs(jax.make_jaxpr(lambda v: module.apply(v, f, train=False, mutable=mutable))(variables))

  plain, pictures = counted([]), counted(['intermediates'])
  tokens, queries = 8, 8 + 4 + 2 + 1
  assert plain['attention'] == pictures['attention'] == 2 * queries * tokens * 2  # Q X1ᵀ and D X1, c = 2
  assert plain['other'] == 0 and pictures['other'] == queries * tokens * 2  # explicit D^i = softmax(X_i X1ᵀ)


@pytest.mark.parametrize('channels,granularities', [(6, (True,) * 4), (8, (False,) * 4)])
def test_invalid_shapes_are_rejected(channels, granularities):
  with pytest.raises(ValueError, match='MAE'):
    MAE(granularities).init(jax.random.key(0), jnp.zeros((1, 2, 2, 2, channels)), train=False)


def test_frame_sum_and_the_gradient_of_repeat_frames():
  x = jnp.asarray(np.random.default_rng(4).standard_normal((2, 3, 2, 5)), jnp.float32)
  np.testing.assert_allclose(mae.frame_sum(x), np.asarray(x).sum(1), rtol=1e-6)
  y = x[:, :1]
  cotangent = jnp.asarray(np.random.default_rng(5).standard_normal((2, 4, 2, 5)), jnp.float32)
  repeated, vjp = jax.vjp(lambda y: mae.repeat_frames(y, 4), y)
  np.testing.assert_array_equal(repeated, np.broadcast_to(y, (2, 4, 2, 5)))
  np.testing.assert_allclose(vjp(cotangent)[0], np.asarray(cotangent).sum(1, keepdims=True), rtol=1e-6)
