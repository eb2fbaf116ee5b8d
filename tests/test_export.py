"""export: StableHLO (run in a fresh process without lstrl_jax) and ONNX (onnxruntime) equal embed's features."""

import subprocess
import sys
import textwrap

import jax
import numpy as np
import pytest

from lstrl_jax import sharding
from lstrl_jax.data import transforms
from lstrl_jax.data.datasets import load_dataset
from lstrl_jax.evaluation import extract
from lstrl_jax.inference import common, export
from test_embed import tiny_config, write_checkpoint

TOLERANCE = 1e-4  # relative error, float32


@pytest.fixture(scope='module')
def exported(shared_data, tmp_path_factory):
  """(trained model, real pku2cam clips uint8 [3, T, H, W, 3], embed's features of those T-frame tracklets)."""
  config = tiny_config(shared_data / 'pku2cam')
  trained = common.load_trained(write_checkpoint(tmp_path_factory.mktemp('run'), config))
  dataset = load_dataset('ilidsvid', shared_data / 'pku2cam', split=0)
  tracklets = [dataset.test[i].frames[:config.seq_len] for i in (0, 5, 40)]  # exactly T frames each
  clips = np.stack([transforms.load_clip(f, f, np.arange(config.seq_len), config.height, config.width)
                    for f in tracklets])
  features = extract.extract_features(trained.model, trained.variables, common.unlabelled_dataset(tracklets),
                                      trained.config, clip_selection='dense', mesh=sharding.make_mesh())
  return trained, clips, features


def relative_error(got, want):
  return float(np.max(np.abs(got - want)) / np.max(np.abs(want)))


def test_stablehlo_in_a_fresh_process(exported, tmp_path):
  trained, clips, features = exported
  path = common.write_bytes(tmp_path / 'lstrl.stablehlo', export.export_stablehlo(trained))
  np.save(tmp_path / 'clips.npy', clips)
  script = textwrap.dedent(f'''
      import sys
      import numpy as np
      from jax import export
      exported = export.deserialize(open({str(path)!r}, 'rb').read())
      clips = np.load({str(tmp_path / 'clips.npy')!r})
      np.save({str(tmp_path / 'out3.npy')!r}, np.asarray(exported.call(clips)))
      np.save({str(tmp_path / 'out1.npy')!r}, np.asarray(exported.call(clips[2:])))
      assert not [m for m in sys.modules if m.startswith('lstrl_jax')]
      print(exported.in_avals, exported.out_avals)
  ''')
  out = subprocess.run([sys.executable, '-c', script], cwd=tmp_path, capture_output=True, text=True, timeout=300,
                       env={'PATH': '/usr/bin:/bin', 'JAX_PLATFORMS': 'cpu'})
  assert out.returncode == 0, out.stderr
  assert 'uint8[B,4,64,32,3]' in out.stdout and 'float32[B,512]' in out.stdout
  got3, got1 = np.load(tmp_path / 'out3.npy'), np.load(tmp_path / 'out1.npy')
  assert got3.dtype == np.float32 and got3.shape == (3, 512)
  assert relative_error(got3, features) < TOLERANCE
  assert relative_error(got1, features[2:]) < TOLERANCE


def test_onnx_in_onnxruntime(exported, tmp_path):
  pytest.importorskip('jax2onnx')
  ort = pytest.importorskip('onnxruntime')
  trained, clips, features = exported
  path = common.write_bytes(tmp_path / 'lstrl.onnx', export.export_onnx(trained))
  session = ort.InferenceSession(str(path), providers=['CPUExecutionProvider'])
  (clips_input,), (features_output,) = session.get_inputs(), session.get_outputs()
  assert (clips_input.name, clips_input.type, clips_input.shape) == ('clips', 'tensor(uint8)', ['B', 4, 64, 32, 3])
  assert features_output.name == 'features'
  got3 = session.run(None, {'clips': clips})[0]
  got1 = session.run(None, {'clips': clips[:1]})[0]
  assert got3.dtype == np.float32 and got3.shape == (3, 512)
  assert relative_error(got3, features) < TOLERANCE
  assert relative_error(got1, features[:1]) < TOLERANCE


def test_max_pool_rewrite_is_exact():
  x = np.random.default_rng(0).normal(size=(2, 9, 7, 5)).astype(np.float32)
  want = jax.lax.reduce_window(x, -np.inf, jax.lax.max, (1, 3, 3, 1), (1, 2, 2, 1), ((0, 0), (1, 1), (1, 1), (0, 0)))
  got = export._max_pool_3d(x, (1, 3, 3, 1), (1, 2, 2, 1), ((0, 0), (1, 1), (1, 1), (0, 0)))
  np.testing.assert_array_equal(got, want)
