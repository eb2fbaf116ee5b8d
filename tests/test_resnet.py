"""ResNet backbone: torchvision parameter counts, layout and names (against a PyTorch reference), BN, dtypes."""

import re

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch
import torch.nn.functional as F
from flax import traverse_util

from lstrl_jax.models import macs
from lstrl_jax.models.resnet import ResNet, batch_norm, stage_channels


def _init_shapes(model, shape=(1, 64, 32, 3)):
  return jax.eval_shape(lambda x: model.init(jax.random.key(0), x, train=False), jnp.zeros(shape))


@pytest.mark.parametrize(
    'depth,expected',
    # torchvision resnet{18,34,50,101} totals minus their fc layer (512*1000+1000 / 2048*1000+1000).
    [(18, 11_689_512 - 513_000), (34, 21_797_672 - 513_000), (50, 25_557_032 - 2_049_000),
     (101, 44_549_160 - 2_049_000)],
)
def test_parameter_counts_match_torchvision(depth, expected):
  assert macs.count_params(_init_shapes(ResNet(depth))['params']) == expected


@pytest.mark.parametrize('depth,last_stride,expected', [(50, 1, (1, 16, 8, 2048)), (50, 2, (1, 8, 4, 2048)),
                                                        (18, 1, (1, 16, 8, 512))])
def test_output_shape_and_last_stride(depth, last_stride, expected):
  model = ResNet(depth, last_stride)
  variables = _init_shapes(model, (1, 256, 128, 3))
  out = jax.eval_shape(lambda v, x: model.apply(v, x, train=False), variables, jnp.zeros((1, 256, 128, 3)))
  assert out.shape == expected
  assert stage_channels(depth)[-1] == expected[-1]


def test_unknown_depth_is_rejected():
  with pytest.raises(ValueError, match='model.depth'):
    _init_shapes(ResNet(depth=42))


def _torch_key(path):
  """Flax path -> torchvision key by the rule documented in resnet.py (numeric suffix `_b` -> `.b`)."""
  *modules, leaf = path
  name = '.'.join(re.sub(r'_(\d+)$', r'.\1', m) for m in modules)
  leaf = {'kernel': 'weight', 'scale': 'weight', 'bias': 'bias', 'mean': 'running_mean', 'var': 'running_var'}[leaf]
  return f'{name}.{leaf}'


def _torch_resnet18(x, sd, last_stride):
  """Independent PyTorch (NCHW) ResNet-18 forward in eval mode, reading torchvision key names."""

  def bn(y, p):
    return F.batch_norm(y, sd[f'{p}.running_mean'], sd[f'{p}.running_var'], sd[f'{p}.weight'], sd[f'{p}.bias'],
                        training=False, eps=1e-5)

  x = F.relu(bn(F.conv2d(x, sd['conv1.weight'], stride=2, padding=3), 'bn1'))
  x = F.max_pool2d(x, 3, stride=2, padding=1)
  for s, stride in zip((1, 2, 3, 4), (1, 2, 2, last_stride)):
    for b in range(2):
      p = f'layer{s}.{b}'
      st = stride if b == 0 else 1
      y = F.relu(bn(F.conv2d(x, sd[f'{p}.conv1.weight'], stride=st, padding=1), f'{p}.bn1'))
      y = bn(F.conv2d(y, sd[f'{p}.conv2.weight'], padding=1), f'{p}.bn2')
      if f'{p}.downsample.0.weight' in sd:
        x = bn(F.conv2d(x, sd[f'{p}.downsample.0.weight'], stride=st), f'{p}.downsample.1')
      x = F.relu(y + x)
  return x


def _random_variables(shapes, seed):
  """Random variables of the given shapes: He-normal kernels and random BN scale/bias/mean/var, so BN and
  layout mistakes show up in the outputs (numpy, no compilation)."""
  rng = np.random.default_rng(seed)
  out = {}
  for path, value in traverse_util.flatten_dict(shapes).items():
    if path[-1] == 'kernel':
      std = np.sqrt(2.0 / (value.shape[0] * value.shape[1] * value.shape[3]))
      out[path] = (std * rng.standard_normal(value.shape)).astype(np.float32)
    elif path[-1] == 'var':
      out[path] = rng.uniform(0.5, 2.0, value.shape).astype(np.float32)
    else:
      out[path] = ((path[-1] == 'scale') + 0.3 * rng.standard_normal(value.shape)).astype(np.float32)
  return traverse_util.unflatten_dict(out)


@pytest.fixture(scope='module')
def resnet18():
  """(variables with random BN, input `[2, 32, 16, 3]`, float32 eval output) of a ResNet-18, compiled once."""
  model = ResNet(18)
  x = np.random.default_rng(1).standard_normal((2, 32, 16, 3)).astype(np.float32)
  variables = _random_variables(_init_shapes(model, x.shape), seed=2)
  return variables, x, jax.jit(lambda v, x: model.apply(v, x, train=False))(variables, x)


def test_matches_pytorch_reference_with_torchvision_names(resnet18):
  variables, x, out = resnet18
  state = {}
  for collection in ('params', 'batch_stats'):
    for path, value in traverse_util.flatten_dict(variables[collection]).items():
      state[_torch_key(path)] = torch.from_numpy(value.transpose(3, 2, 0, 1).copy() if value.ndim == 4 else value)
  assert len(state) == 60 + 2 * 20  # torchvision resnet18 without fc and num_batches_tracked: 60 + 2 x 20 BN
  expected = _torch_resnet18(torch.from_numpy(np.asarray(x).transpose(0, 3, 1, 2).copy()), state, last_stride=1)
  expected = expected.numpy().transpose(0, 2, 3, 1)
  assert out.shape == expected.shape == (2, 2, 1, 512)
  np.testing.assert_allclose(out, expected, rtol=1e-4, atol=1e-4 * np.abs(expected).max())


def test_batch_norm_momentum_and_epsilon_match_pytorch():
  x = (np.random.default_rng(0).standard_normal((8, 3, 2, 5)) * 3.0 + 1.0).astype(np.float32)
  module = batch_norm(True, jnp.float32, jnp.float32, name='bn')
  variables = {'params': {'scale': np.ones(5, np.float32), 'bias': np.zeros(5, np.float32)},
               'batch_stats': {'mean': np.zeros(5, np.float32), 'var': np.ones(5, np.float32)}}
  y, updated = jax.jit(lambda v, x: module.apply(v, x, mutable=['batch_stats']))(variables, x)
  mean, var = x.reshape(-1, 5).mean(0), x.reshape(-1, 5).var(0)
  np.testing.assert_allclose(updated['batch_stats']['mean'], 0.1 * mean, rtol=1e-5, atol=1e-6)
  unbiased = x.reshape(-1, 5).var(0, ddof=1)  # PyTorch's running variance takes the unbiased batch variance
  np.testing.assert_allclose(updated['batch_stats']['var'], 0.9 + 0.1 * unbiased, rtol=1e-5)
  np.testing.assert_allclose(y, (x - mean) / np.sqrt(var + 1e-5), rtol=1e-4, atol=1e-4)


def test_bfloat16_compute_with_float32_params(resnet18):
  variables, x, out32 = resnet18
  model16 = ResNet(18, dtype=jnp.bfloat16)
  init16 = jax.eval_shape(lambda: model16.init(jax.random.key(0), x, train=False))
  assert {leaf.dtype for leaf in jax.tree_util.tree_leaves(init16)} == {jnp.dtype(jnp.float32)}
  _, stats16 = jax.eval_shape(lambda: model16.apply(variables, x, train=True, mutable=['batch_stats']))
  assert {leaf.dtype for leaf in jax.tree_util.tree_leaves(stats16)} == {jnp.dtype(jnp.float32)}
  out16 = jax.jit(lambda v, x: model16.apply(v, x, train=False))(variables, x)
  assert out16.dtype == jnp.bfloat16
  error = jnp.linalg.norm(out16.astype(jnp.float32) - out32) / jnp.linalg.norm(out32)
  assert error < 0.03  # bfloat16 keeps 8 significant bits; measured 0.007 with fresh statistics


@pytest.mark.parametrize('depth,gmacs', [(18, 1.81), (50, 4.09)])
def test_macs_match_torchvision_at_224(depth, gmacs):
  """torchvision's documented GFLOPS (MACs incl. fc) at 224x224; a v1 bottleneck (stride on the first 1x1)
  would give 3.86 for ResNet-50, so this pins the v1.5 layout."""
  model = ResNet(depth, last_stride=2)
  x = jax.ShapeDtypeStruct((1, 224, 224, 3), jnp.float32)
  variables = _init_shapes(model, x.shape)
  counts = macs.count_macs(jax.make_jaxpr(lambda v, x: model.apply(v, x, train=False))(variables, x))
  fc = stage_channels(depth)[-1] * 1000
  assert round((counts['conv'] + fc) / 1e9, 2) == gmacs
