"""Tests for lstrl_jax.xla_cpu: CPU convolutions on XLA's own kernels, same gradients, chosen for CPU only."""

import flax.linen as nn
import jax
from jax import lax
import jax.numpy as jnp
import numpy as np
import pytest

from lstrl_jax import sharding
from lstrl_jax import xla_cpu
from lstrl_jax.evaluation import extract

# (kernel, stride, C_in, C_out, map height): the backbone's kinds of convolution, on maps small enough for a test
# and large enough that jaxlib 0.10.2 hands them to YNNPACK by default.
CONVOLUTIONS = [(7, 2, 3, 64, 64), (3, 1, 32, 32, 32), (3, 2, 32, 32, 32), (1, 1, 32, 16, 16), (1, 2, 16, 32, 16)]


def conv(x, w, stride):
  """PyTorch-style symmetric padding `k // 2`, NHWC / HWIO."""
  pad = w.shape[0] // 2
  return lax.conv_general_dilated(x, w, (stride, stride), ((pad, pad), (pad, pad)),
                                  dimension_numbers=('NHWC', 'HWIO', 'NHWC'))


def test_cpu_devices_get_the_options_and_others_do_not(monkeypatch):
  monkeypatch.delenv('XLA_FLAGS', raising=False)
  assert xla_cpu.compiler_options() == xla_cpu.CPU_OPTIONS
  assert xla_cpu.compiler_options(jax.devices('cpu')) == xla_cpu.CPU_OPTIONS

  class Accelerator:
    platform = 'gpu'

  assert xla_cpu.compiler_options([Accelerator()]) == {}
  assert xla_cpu.compiler_options([jax.devices('cpu')[0], Accelerator()]) == {}


def test_a_user_setting_in_xla_flags_wins(monkeypatch):
  monkeypatch.setenv('XLA_FLAGS', '--xla_cpu_experimental_ynn_fusion_type=individual_dot,individual_convolution,reduce')
  assert xla_cpu.compiler_options() == {}


def test_an_option_the_compiler_refuses_gives_no_options(monkeypatch):
  monkeypatch.delenv('XLA_FLAGS', raising=False)
  monkeypatch.setattr(xla_cpu, 'CPU_OPTIONS', {xla_cpu.YNN_FUSION_OPTION: 'LIBRARY_FUSION_TYPE_NO_SUCH_TYPE'})
  xla_cpu._cpu_accepts_options.cache_clear()
  try:
    assert xla_cpu.compiler_options() == {}
  finally:
    xla_cpu._cpu_accepts_options.cache_clear()


@pytest.mark.parametrize('kernel,stride,c_in,c_out,size', CONVOLUTIONS)
def test_gradients_equal_the_default_compilation(kernel, stride, c_in, c_out, size):
  rng = np.random.default_rng(kernel * 10 + stride)
  x = jnp.asarray(rng.standard_normal((4, size, size // 2, c_in)), jnp.float32)
  w = jnp.asarray(rng.standard_normal((kernel, kernel, c_in, c_out)) / np.sqrt(kernel * kernel * c_in), jnp.float32)
  g = jnp.asarray(rng.standard_normal(jax.eval_shape(lambda: conv(x, w, stride)).shape), jnp.float32)

  def value_and_grads(x, w):
    y, vjp = jax.vjp(lambda x, w: conv(x, w, stride), x, w)
    return (y,) + vjp(g)

  default = jax.jit(value_and_grads).lower(x, w).compile()
  project = jax.jit(value_and_grads, compiler_options=xla_cpu.compiler_options()).lower(x, w).compile()
  assert xla_cpu.ynn_convolutions(default.as_text()) >= 1  # jaxlib 0.10.2 default: YNNPACK
  assert xla_cpu.ynn_convolutions(project.as_text()) == 0
  for name, want, got in zip(('y', 'dx', 'dw'), default(x, w), project(x, w)):
    scale = float(jnp.max(jnp.abs(want)))
    np.testing.assert_allclose(got, want, rtol=0, atol=1e-5 * scale, err_msg=name)


class ConvReID(nn.Module):
  """`[B, T, H, W, 3]` -> 3x3 conv -> mean: 'bn_features' `[B, 4]`."""

  @nn.compact
  def __call__(self, clips, *, train):
    b, t, h, w, c = clips.shape
    x = nn.Conv(4, (3, 3), use_bias=False)(clips.reshape(b * t, h, w, c))
    return {'bn_features': jnp.mean(x.reshape(b, -1, 4), axis=1)}


def test_feature_extraction_compiles_with_the_options():
  model, mesh = ConvReID(), sharding.make_mesh()
  clips = jnp.zeros((2, 2, 16, 8, 3), jnp.uint8)
  variables = model.init(jax.random.key(0), clips, train=False)
  batch = {'clips': clips, 'mask': jnp.ones(2, bool), 'tracklet': jnp.arange(2)}
  lowered = extract._accumulate_step(mesh).lower(model, variables, jnp.zeros((2, 4)), jnp.zeros(2), batch)
  text = lowered.compile().as_text()
  assert ' convolution(' in text and xla_cpu.ynn_convolutions(text) == 0
