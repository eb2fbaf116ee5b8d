"""BME: hand-worked motions on a 3-frame clip (both modes, both ends), forward-only, trainability at init."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from lstrl_jax.models.bme import BME

# One clip, T=3 frames of 2x1 positions (p0, p1), C=2 channels: F[t][p] = (channel 0, channel 1).
CLIP = np.array([[[1, 1], [3, 0]], [[1, 2], [0, 4]], [[2, 2], [0, 0]]], np.float32).reshape(1, 3, 2, 1, 2)
PHI = np.array([1, 0], np.float32).reshape(1, 1, 2, 1)  # φ picks channel 0
PSI = np.array([0, 1], np.float32).reshape(1, 1, 2, 1)  # ψ picks channel 1
BN_GAIN = 1 / np.sqrt(1 + 1e-5)  # eval BatchNorm with mean 0, var 1, scale 1, bias 0

# global-to-local: φ(F_t^g) = mean of channel 0 = (2, 0.5, 1); ψ(F_t) = channel 1 = (1,0), (2,4), (2,0).
#   M^f_t = φ(F_t^g) ψ(F_{t+1}); t=2 reuses frame 2:  (4,8), (1,0), (2,0)
#   M^b_t = φ(F_t^g) ψ(F_{t-1}); t=0 reuses frame 0:  (2,0), (0.5,0), (2,4)
GLOBAL_M_F = [[4, 8], [1, 0], [2, 0]]
GLOBAL_M_B = [[2, 0], [0.5, 0], [2, 4]]
# local-to-local: φ(F_t) per position = (1,3), (1,0), (2,0).
#   M^f = (1*2, 3*4), (1*2, 0*0), (2*2, 0*0);  M^b = (1*1, 3*0), (1*1, 0*0), (2*2, 0*4)
LOCAL_M_F = [[2, 12], [2, 0], [4, 0]]
LOCAL_M_B = [[1, 0], [1, 0], [4, 0]]


def _variables(upsilon):
  channels = upsilon.shape[-1]
  return {
      'params': {
          'phi': {'kernel': PHI},
          'psi': {'kernel': PSI},
          'upsilon': {'kernel': upsilon},
          'bn': {'scale': np.ones(channels, np.float32), 'bias': np.zeros(channels, np.float32)},
      },
      'batch_stats': {'bn': {'mean': np.zeros(channels, np.float32), 'var': np.ones(channels, np.float32)}},
  }


def _as_map(values):
  """[t][p] values -> `[1, T, 2, 1, 1]`."""
  return np.asarray(values, np.float32).reshape(1, 3, 2, 1, 1)


@pytest.mark.parametrize('as_written', [False, True])  # ψ once then shifted, or ψ on each shifted clip
@pytest.mark.parametrize(
    'mode,m_f,m_b', [('global_to_local', GLOBAL_M_F, GLOBAL_M_B), ('local_to_local', LOCAL_M_F, LOCAL_M_B)]
)
def test_bidirectional_motion_hand_worked(mode, m_f, m_b, as_written):
  # υ: output channel 0 = M^f - M^b, channel 1 = M^b (kernel [in, out]), so the ReLU and the order of the
  # concatenation [M^f, M^b] both show in the output.
  upsilon = np.array([[1, 0], [-1, 1]], np.float32).reshape(1, 1, 2, 2)
  out, state = BME(mode, as_written=as_written).apply(_variables(upsilon), CLIP, train=False,
                                                     mutable=['intermediates'])
  sown = state['intermediates']
  np.testing.assert_allclose(sown['M_f'][0], _as_map(m_f))
  np.testing.assert_allclose(sown['M_b'][0], _as_map(m_b))
  m_f, m_b = np.asarray(m_f, np.float32), np.asarray(m_b, np.float32)
  expected = np.stack([np.maximum(m_f - m_b, 0), m_b], -1).reshape(1, 3, 2, 1, 2) * BN_GAIN
  np.testing.assert_allclose(out, expected, rtol=1e-6)


@pytest.mark.parametrize('as_written', [False, True])
def test_forward_only_motion(as_written):
  upsilon = np.array([[1, 0.5]], np.float32).reshape(1, 1, 1, 2)  # υ takes C/2 = 1 channel
  module = BME('global_to_local', bidirectional=False, as_written=as_written)
  shapes = jax.eval_shape(lambda: module.init(jax.random.key(0), CLIP, train=False))
  assert shapes['params']['upsilon']['kernel'].shape == (1, 1, 1, 2)
  out, state = module.apply(_variables(upsilon), CLIP, train=False, mutable=['intermediates'])
  assert set(state['intermediates']) == {'M_f'}
  m_f = np.asarray(GLOBAL_M_F, np.float32)
  np.testing.assert_allclose(out, np.stack([m_f, 0.5 * m_f], -1).reshape(1, 3, 2, 1, 2) * BN_GAIN, rtol=1e-6)


def test_zero_initialised_branch_outputs_zero_and_still_gets_gradients():
  f = jnp.asarray(np.random.default_rng(0).standard_normal((2, 3, 2, 2, 4)), jnp.float32)
  module = BME()
  variables = jax.jit(lambda f: module.init(jax.random.key(0), f, train=False))(f)
  target = jnp.asarray(np.random.default_rng(1).standard_normal(f.shape), jnp.float32)

  def loss(params):
    out, _ = module.apply({**variables, 'params': params}, f, train=True, mutable=['batch_stats'])
    return jnp.sum(out * target), out

  grads, out = jax.jit(jax.grad(loss, has_aux=True))(variables['params'])
  assert not np.any(out)
  # The BN scale and bias learn from the first step on (a ReLU with zero gradient at 0 would block both).
  assert np.all(np.abs(grads['bn']['bias']) > 0)
  assert np.any(np.abs(grads['bn']['scale']) > 0)


def test_invalid_mode_is_rejected():
  with pytest.raises(ValueError, match='BME'):
    BME('sideways').init(jax.random.key(0), CLIP, train=False)
