"""Tests for lstrl_jax.xla_cpu: CPU convolutions on XLA's own kernels, same gradients, chosen for CPU only."""

import functools

import flax.linen as nn
import jax
from jax import lax
import jax.numpy as jnp
import numpy as np
import pytest

from lstrl_jax import sharding
from lstrl_jax import xla_cpu
from lstrl_jax.evaluation import extract
from lstrl_jax.models import lstrl
from lstrl_jax.train import optim
from lstrl_jax.train import state as state_lib
from lstrl_jax.train import trainer
from tests.test_train_step import TinyReID, tiny_config

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
  """`[B, 1, 64, 32, 3]` -> stem-like 7x7/2 convolution, ReLU, a convolution spanning the map: 'bn_features'
  `[B, 8]` with no reduction over pixels."""

  @nn.compact
  def __call__(self, clips, *, train):
    b, t, h, w, c = clips.shape
    x = nn.Conv(64, (7, 7), strides=(2, 2), padding=((3, 3), (3, 3)), use_bias=False)(clips.reshape(b * t, h, w, c))
    x = nn.Conv(8, (h // 2, w // 2), padding='VALID', use_bias=False)(nn.relu(x))  # [B*T, 1, 1, 8], no reduce
    return {'bn_features': jnp.mean(x.reshape(b, t, 8), axis=1)}


def test_feature_extraction_compiles_with_the_options():
  # A YNNPACK reduce fusion takes in a chain of convolutions that feeds a reduction over pixels whatever the
  # options (layer4's tail and the pooling, in LSTRL's eval forward); here no such reduction follows the stem,
  # so it stands alone: YNNPACK's by default, XLA's with the options.
  model, mesh = ConvReID(), sharding.make_mesh()
  clips = jnp.zeros((2, 1, 64, 32, 3), jnp.uint8)
  variables = model.init(jax.random.key(0), clips, train=False)
  args = (model, variables, jnp.zeros((2, 8)), jnp.zeros(2), {'clips': clips, 'mask': jnp.ones(2, bool),
                                                                'tracklet': jnp.arange(2)})
  project = extract._accumulate_step(mesh).lower(*args).compile().as_text()
  default = jax.jit(extract._accumulate, static_argnums=0).lower(*args).compile().as_text()
  assert xla_cpu.ynn_convolutions(project) < xla_cpu.ynn_convolutions(default)


def test_the_train_step_compiles_with_the_options():
  config = tiny_config()
  config.seq_len, config.height, config.width = 1, 64, 32
  # A ResNet stem (7x7/2, 3 -> 64) on 64x32 frames: jaxlib 0.10.2 hands its convolution to YNNPACK by default.
  mesh, model = sharding.make_mesh(), TinyReID(num_classes=3, width=64, kernel=7)
  schedule = optim.learning_rate_schedule(config, 4)
  tx = optim.make_optimizer(config, 4, lstrl.trainable_mask)
  state = state_lib.create_train_state(model, config, tx, jax.random.key(0), mesh)
  batch = {'clips': np.zeros((4, 1, 64, 32, 3), np.uint8), 'pids': np.array([0, 0, 1, 1], np.int32)}
  project = trainer.make_train_step(config, schedule, mesh).lower(state, batch).compile().as_text()
  step = functools.partial(trainer.train_step, learning_rate_fn=schedule, label_smoothing=0.1, triplet_margin=0.3)
  default = jax.jit(step).lower(state, batch).compile().as_text()
  assert xla_cpu.ynn_convolutions(default) >= 1
  assert xla_cpu.ynn_convolutions(project) == 0
