"""LSTRL: the paper's parameter counts (Table 3), ablation switches, outputs, intermediates, config plumbing."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from configs import default
from lstrl_jax.models import macs
from lstrl_jax.models.lstrl import LSTRL, model_from_config, trainable_mask

SMALL_CLIP = (1, 2, 64, 32, 3)  # parameter shapes do not depend on the clip size


def _param_shapes(model):
  clips = jax.ShapeDtypeStruct(SMALL_CLIP, jnp.float32)
  return jax.eval_shape(lambda x: model.init(jax.random.key(0), x, train=False), clips)['params']


@pytest.mark.parametrize(
    'stages,expected',
    [
        (dict(mae_stages=(), bme_stages=()), 24_792_128),  # ResNet-50 + BNNeck + classifier(625)
        (dict(bme_stages=()), 26_433_600),  # + MAE at layer2 and layer3
        (dict(), 29_058_112),  # full LSTRL
    ],
)
def test_parameter_counts_match_paper_table_3(stages, expected):
  assert macs.count_params(_param_shapes(LSTRL(625, **stages))) == expected


def _mae_count(c, enabled):
  return c * c // 4 + enabled * (c // 4) * c + 2 * c  # ω1, ω2, BN scale/bias


def _bme_count(c, bidirectional):
  return 2 * c * (c // 2) + (c if bidirectional else c // 2) * c + 2 * c  # φ, ψ, υ, BN scale/bias


@pytest.mark.parametrize(
    'fields',
    [
        dict(mae_granularities=(True, False, False, False)),
        dict(mae_granularities=(False, True, True, True), bme_bidirectional=False),
        dict(mae_stages=(1, 4), bme_stages=(4,), bme_mode='local_to_local'),
    ],
)
def test_ablation_switches_change_the_inserted_modules(fields):
  model = LSTRL(625, **fields)
  params = _param_shapes(model)
  channels = {1: 256, 2: 512, 3: 1024, 4: 2048}
  expected = {f'mae{s}': _mae_count(channels[s], sum(model.mae_granularities)) for s in model.mae_stages}
  expected.update({f'bme{s}': _bme_count(channels[s], model.bme_bidirectional) for s in model.bme_stages})
  got = {name: macs.count_params(p) for name, p in params.items() if name[:3] in ('mae', 'bme')}
  assert got == expected


def _initial_variables(shapes, seed):
  """Numeric variables for `shapes` in the state `LSTRL.init` leaves them (He-normal kernels, BN scale 1 and
  bias 0, running mean 0 / var 1, zero scale on the last BN of MAE/BME as tested in test_mae/test_bme), made
  with NumPy: compiling `init` (threefry for every parameter) would cost more than the rest of this file."""
  rng = np.random.default_rng(seed)

  def value(path, leaf):
    keys = [k.key for k in path]
    if keys[-1] == 'kernel':
      fan_out = np.prod(leaf.shape[:-2]) * leaf.shape[-1]
      return (np.sqrt(2.0 / fan_out) * rng.standard_normal(leaf.shape)).astype(np.float32)
    inserted = keys[-2] == 'bn' and keys[-3][:3] in ('mae', 'bme')
    one = keys[-1] == 'var' or (keys[-1] == 'scale' and not inserted)
    return np.full(leaf.shape, float(one), np.float32)

  return jax.tree_util.tree_map_with_path(value, shapes)


@pytest.fixture(scope='module')
def tiny():
  """A ResNet-18 LSTRL on `[2, 4, 32, 16, 3]`: (model, clips, variables, train outputs, intermediates)."""
  model = LSTRL(10, depth=18)
  clips = np.random.default_rng(1).standard_normal((2, 4, 32, 16, 3)).astype(np.float32)
  shapes = jax.eval_shape(lambda x: model.init(jax.random.key(0), x, train=False), clips)
  variables = _initial_variables(shapes, seed=0)
  apply = jax.jit(lambda v, x: model.apply(v, x, train=True, mutable=['batch_stats', 'intermediates']))
  outputs, state = apply(variables, clips)
  return model, clips, variables, outputs, state['intermediates']


def test_outputs_have_the_same_structure_in_train_and_eval(tiny):
  model, clips, variables, train_outputs, _ = tiny
  eval_outputs = jax.eval_shape(lambda v, x: model.apply(v, x, train=False), variables, clips)
  expected = {'features': (2, 512), 'bn_features': (2, 512), 'logits': (2, 10)}
  for outputs in (train_outputs, eval_outputs):
    assert {k: v.shape for k, v in outputs.items()} == expected
    assert {v.dtype for v in outputs.values()} == {jnp.dtype(jnp.float32)}
  # f is GAP+TAP of layer4, so it is non-negative (post-ReLU); f_bn in train mode is batch-normalised.
  assert np.all(np.asarray(train_outputs['features']) >= 0)
  np.testing.assert_allclose(np.asarray(train_outputs['bn_features']).mean(0), 0, atol=1e-4)


def test_sown_intermediates_shapes(tiny):
  shapes = jax.tree.map(lambda a: a.shape, tiny[-1])
  thw2, thw3 = 4 * 4 * 2, 4 * 2 * 1  # layer2 maps are 4x2, layer3 2x1 at 32x16
  assert shapes['mae2'] == {'D1': ((2, thw2, thw2),), 'D2': ((2, 8, thw2),), 'D3': ((2, 4, thw2),),
                            'D4': ((2, 1, thw2),)}
  assert shapes['mae3']['D1'] == ((2, thw3, thw3),)
  assert shapes['bme2'] == {'M_f': ((2, 4, 4, 2, 64),), 'M_b': ((2, 4, 4, 2, 64),)}
  assert shapes['bme3'] == {'M_f': ((2, 4, 2, 1, 128),), 'M_b': ((2, 4, 2, 1, 128),)}


def test_initial_network_is_the_plain_resnet(tiny):
  """With the last BN scales of MAE/BME at zero, LSTRL and the baseline agree on the same backbone weights."""
  _, clips, variables, outputs, _ = tiny
  baseline = LSTRL(10, depth=18, mae_stages=(), bme_stages=())
  shared = {c: {k: v for k, v in variables[c].items() if k[:3] not in ('mae', 'bme')} for c in variables}
  plain, _ = jax.jit(lambda v, x: baseline.apply(v, x, train=True, mutable=['batch_stats']))(shared, clips)
  np.testing.assert_array_equal(outputs['features'], plain['features'])
  np.testing.assert_array_equal(outputs['logits'], plain['logits'])


def test_bfloat16_compute_keeps_float32_parameters_and_outputs():
  model = LSTRL(625, dtype=jnp.bfloat16)
  clips = jax.ShapeDtypeStruct(SMALL_CLIP, jnp.float32)
  variables = jax.eval_shape(lambda x: model.init(jax.random.key(0), x, train=False), clips)
  assert {leaf.dtype for leaf in jax.tree_util.tree_leaves(variables)} == {jnp.dtype(jnp.float32)}
  outputs = jax.eval_shape(lambda v, x: model.apply(v, x, train=False), variables, clips)
  assert {v.dtype for v in outputs.values()} == {jnp.dtype(jnp.float32)}


def test_model_from_config_reads_config_model():
  config = default.get_config()
  model = model_from_config(config.model, num_classes=625)
  assert model == LSTRL(625)
  config.model.dtype = 'bfloat16'
  config.model.mae_stages = [3]
  config.model.bme_bidirectional = False
  model = model_from_config(config.model, num_classes=8)
  assert (model.dtype, model.param_dtype, model.mae_stages, model.bme_bidirectional, model.num_classes) == (
      jnp.bfloat16, jnp.float32, (3,), False, 8)


@pytest.mark.parametrize(
    'key,value,message',
    [('dtype', 'float64', 'model.dtype'), ('bme_stages', (5,), 'model.mae_stages/bme_stages'),
     ('bme_mode', 'sideways', 'model.bme_mode'), ('mae_granularities', (False,) * 4, 'model.mae_granularities'),
     ('depth', 42, 'model.depth')],
)
def test_bad_model_config_raises_one_clear_error(key, value, message):
  config = default.get_config()
  config.model[key] = value
  with pytest.raises(ValueError, match=message):
    model_from_config(config.model, num_classes=625)


def test_trainable_mask_freezes_only_the_bnneck_bias():
  mask = trainable_mask(_param_shapes(LSTRL(625, depth=18, mae_stages=(), bme_stages=())))
  frozen = [path for path, trainable in jax.tree_util.tree_leaves_with_path(mask) if not trainable]
  assert [tuple(k.key for k in path) for path in frozen] == [('bnneck', 'bias')]


def _conv_macs_per_frame(model, seq_len):
  clips = jax.ShapeDtypeStruct((1, seq_len, 256, 128, 3), jnp.float32)
  variables = jax.eval_shape(lambda x: model.init(jax.random.key(0), x, train=False), clips)
  return macs.model_macs_per_frame(model, variables, seq_len, 256, 128)


@pytest.mark.parametrize('seq_len', [4, 8])
def test_default_evaluation_saves_the_hand_counted_macs(seq_len):
  written, default = (_conv_macs_per_frame(LSTRL(625, as_written=w), seq_len) for w in (True, False))
  assert written['conv'] == 4_926_341_120  # the paper's 4.93 (Table 3)
  t = seq_len
  saved = 0
  for c, hw in ((512, 32 * 16), (1024, 16 * 8)):  # layer2, layer3 per frame
    # MAE ω2 on the repeated [A1..A4] (C/4 channels each) vs each A_i on its own grid: A1 T·h·w, A2 h·w, A3 T, A4 1.
    saved += hw * c * c - (t * hw + hw + t + 1) * (c // 4) * c / t
    saved += hw * c * (c // 2)  # BME: one ψ instead of two
  assert written['conv'] - default['conv'] == pytest.approx(saved, rel=1e-12)
  assert (written['attention'], written['other']) == (default['attention'], default['other'])
  if seq_len == 8:
    assert round(default['conv'] / 1e9, 2) == 4.60


def test_default_evaluation_is_the_written_function_in_float64():
  """Values and gradients of the train-mode outputs agree in float64 (a ResNet-18 LSTRL, MAE/BME switched on)."""
  with jax.enable_x64(True):
    rng = np.random.default_rng(3)
    clips = jnp.asarray(rng.standard_normal((2, 4, 32, 16, 3)), jnp.float64)
    models = [LSTRL(10, depth=18, as_written=w, dtype=jnp.float64, param_dtype=jnp.float64) for w in (True, False)]
    shapes = jax.eval_shape(lambda x: models[0].init(jax.random.key(0), x, train=False), clips)
    variables = jax.tree.map(lambda v: jnp.asarray(v, jnp.float64), _initial_variables(shapes, seed=4))
    # Non-zero last BN scales, so MAE and BME contribute.
    params = jax.tree_util.tree_map_with_path(
        lambda path, v: jnp.full_like(v, 0.7) if path[-1].key == 'scale' else v, variables['params'])

    def loss(params, model):
      out, _ = model.apply({**variables, 'params': params}, clips, train=True, mutable=['batch_stats'])
      return jnp.sum(out['logits'] ** 2) + jnp.sum(out['features'] * jnp.arange(512)), out

    value_and_grad = jax.jit(jax.value_and_grad(loss, has_aux=True), static_argnums=1)
    (value_w, out_w), grads_w = value_and_grad(params, models[0])
    (value_d, out_d), grads_d = value_and_grad(params, models[1])
    np.testing.assert_allclose(value_d, value_w, rtol=1e-12)
    np.testing.assert_allclose(out_d['bn_features'], out_w['bn_features'], rtol=1e-10, atol=1e-12)
    for (path, g_w), g_d in zip(jax.tree_util.tree_leaves_with_path(grads_w), jax.tree_util.tree_leaves(grads_d)):
      scale = float(jnp.max(jnp.abs(g_w)))
      np.testing.assert_allclose(g_d, g_w, rtol=0, atol=1e-10 * max(scale, 1.0), err_msg=jax.tree_util.keystr(path))
