"""Tests of lstrl_jax.evaluation.extract with a toy model whose features are known in closed form."""

import os
import pathlib
import subprocess
import sys

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
from PIL import Image
import pytest

from configs.default import get_config
from lstrl_jax import sharding
from lstrl_jax.data.index import Tracklet, VideoReIDDataset
from lstrl_jax.evaluation import extract

LENGTHS = (3, 6, 9, 4, 1)  # frames per test tracklet
MEAN = np.array([0.485, 0.456, 0.406]) * 255
STD = np.array([0.229, 0.224, 0.225]) * 255
REPO = pathlib.Path(__file__).resolve().parents[1]


class MeanColour(nn.Module):
  """f_bn = Dense(mean colour of the clip): the clip feature is affine in the frames' colours."""

  @nn.compact
  def __call__(self, clips, *, train):
    f = nn.Dense(5)(jnp.mean(clips, axis=(1, 2, 3)))
    return {'features': f, 'bn_features': f, 'logits': f}


def colour(tracklet, frame):
  return np.array([10 * tracklet + 3 * frame, 100 + 7 * frame, 200 - 20 * tracklet], np.float64)


def make_dataset(root: pathlib.Path) -> VideoReIDDataset:
  """Solid-colour 16x8 PNG frames, tracklet i of LENGTHS[i] frames."""
  test = []
  for i, n in enumerate(LENGTHS):
    frames = []
    for k in range(n):
      path = root / f't{i}' / f'{k:03d}.png'
      path.parent.mkdir(parents=True, exist_ok=True)
      Image.fromarray(np.broadcast_to(colour(i, k).astype(np.uint8), (16, 8, 3)).copy()).save(path)
      frames.append(str(path))
    test.append(Tracklet(tuple(frames), pid=i, camid=i % 2))
  return VideoReIDDataset('toy', train=(), test=tuple(test), query=np.arange(2),
                          galleries={'cross_camera': np.arange(2, len(test))})


def make_config():
  config = get_config()
  config.seq_len, config.height, config.width = 4, 16, 8
  config.eval_batch_size, config.num_workers = 4, 0
  return config


def make_variables():
  return MeanColour().init(jax.random.key(0), jnp.zeros((1, 4, 16, 8, 3)), train=False)


def expected_features(variables, clip_frames):
  """Mean over clips of Dense(normalised mean colour), in float64."""
  kernel = np.asarray(variables['params']['Dense_0']['kernel'], np.float64)
  bias = np.asarray(variables['params']['Dense_0']['bias'], np.float64)
  rows = []
  for i, clips in enumerate(clip_frames):
    means = [(np.mean([colour(i, k) for k in clip], axis=0) - MEAN) / STD for clip in clips]
    rows.append(np.mean([m @ kernel + bias for m in means], axis=0))
  return np.stack(rows)


def dense_frames(n, t=4):
  """Consecutive clips of t frames, the last padded with the last frame."""
  return [[min(c + j, n - 1) for j in range(t)] for c in range(0, n, t)]


@pytest.fixture(scope='module')
def toy(tmp_path_factory):
  return make_dataset(tmp_path_factory.mktemp('toy')), make_config(), make_variables()


def test_dense_features_are_clip_means(toy):
  dataset, config, variables = toy
  got = extract.extract_features(MeanColour(), variables, dataset, config, clip_selection='dense',
                                 mesh=sharding.make_mesh())
  assert got.dtype == np.float32 and got.shape == (len(LENGTHS), 5)
  want = expected_features(variables, [dense_frames(n) for n in LENGTHS])
  np.testing.assert_allclose(got, want, atol=1e-5)


def test_rrs_features_and_indices(toy):
  dataset, config, variables = toy
  got = extract.extract_features(MeanColour(), variables, dataset, config, clip_selection='rrs',
                                 mesh=sharding.make_mesh(), indices=[4, 2])
  # RRS at test time: the first frame of each of T equal chunks, floor(t * n / T).
  want = expected_features(variables, [[[t * n // 4 for t in range(4)]] for n in LENGTHS])
  assert got.shape == (2, 5)
  np.testing.assert_allclose(got, want[[4, 2]], atol=1e-5)


SCRIPT = '''
import pathlib, sys
import numpy as np
sys.path.insert(0, {tests!r})
import test_extract as t
from lstrl_jax import sharding
from lstrl_jax.evaluation import extract
import jax
assert len(jax.devices()) == 2, jax.devices()
dataset = t.make_dataset(pathlib.Path({root!r}))
out = extract.extract_features(t.MeanColour(), t.make_variables(), dataset, t.make_config(),
                               clip_selection='dense', mesh=sharding.make_mesh())
np.save({out!r}, out)
config = t.make_config()
config.eval_batch_size = 3
try:
  extract.extract_features(t.MeanColour(), t.make_variables(), dataset, config, clip_selection='rrs',
                           mesh=sharding.make_mesh())
  raise SystemExit('eval_batch_size 3 over 2 devices was accepted')
except ValueError as e:
  assert 'eval_batch_size' in str(e), e
'''


def test_two_cpu_devices_give_the_same_features_and_check_divisibility(toy, tmp_path):
  dataset, config, variables = toy
  single = extract.extract_features(MeanColour(), variables, dataset, config, clip_selection='dense',
                                    mesh=sharding.make_mesh())
  out = tmp_path / 'two.npy'
  script = SCRIPT.format(tests=str(REPO / 'tests'), root=str(tmp_path / 'data'), out=str(out))
  env = dict(os.environ, XLA_FLAGS='--xla_force_host_platform_device_count=2', JAX_PLATFORMS='cpu',
             PYTHONPATH=str(REPO))
  result = subprocess.run([sys.executable, '-c', script], env=env, cwd=REPO, capture_output=True, text=True,
                          timeout=300)
  assert result.returncode == 0, result.stderr[-2000:]
  np.testing.assert_allclose(np.load(out), single, atol=1e-5)


class TwoFeatures(nn.Module):
  """f = Dense(mean colour) and f_bn = 2 f + 1: a model whose clip feature and BNNeck feature differ."""

  @nn.compact
  def __call__(self, clips, *, train):
    f = nn.Dense(5)(jnp.mean(clips, axis=(1, 2, 3)))
    return {'features': f, 'bn_features': 2.0 * f + 1.0, 'logits': f}


@pytest.mark.parametrize('clip_selection, batch_size', [('rrs', 3), ('dense', 3), ('rrs', 4)])
def test_embeds_f_bn_and_masks_padding_rows(toy, clip_selection, batch_size):
  """Test feature f_bn (DESIGN.md section 1); padding rows (zero clips, whose f_bn is not zero) add nothing.

  Every tracklet is embedded, so whichever row the padding is routed to is checked: rrs gives 5 clips (1 or 3
  padding rows for batches of 3 or 4), dense 8 clips (1 padding row for batches of 3).
  """
  dataset = toy[0]
  config = make_config()
  config.eval_batch_size = batch_size
  variables = TwoFeatures().init(jax.random.key(1), jnp.zeros((1, 4, 16, 8, 3)), train=False)
  frames = ([[[t * n // 4 for t in range(4)]] for n in LENGTHS] if clip_selection == 'rrs'
            else [dense_frames(n) for n in LENGTHS])
  f = expected_features(variables, frames)
  got = extract.extract_features(TwoFeatures(), variables, dataset, config, clip_selection=clip_selection,
                                 mesh=sharding.make_mesh())
  np.testing.assert_allclose(got, 2.0 * f + 1.0, atol=1e-5)
