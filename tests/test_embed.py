"""embed: tracklet folders -> the features file; equal to the evaluator's features of the same tracklets."""

import pathlib
import shutil
import subprocess
import sys

import grain
import jax
import jax.numpy as jnp
import numpy as np
from PIL import Image
import pytest

from configs.default import get_config
from lstrl_jax import sharding
from lstrl_jax.data.datasets import load_dataset
from lstrl_jax.data.index import DatasetError
from lstrl_jax.evaluation import extract
from lstrl_jax.inference import common, embed
from lstrl_jax.models.lstrl import model_from_config
from lstrl_jax.train import checkpoint

REPO = pathlib.Path(__file__).resolve().parents[1]
SEQUENCES = ('pku2cam', 'i-LIDS-VID', 'sequences')


def tiny_config(data_dir):
  """pku2cam config shrunk for tests: ResNet-18 with MAE and BME at layer2/3, T=4, 64x32."""
  config = get_config()
  config.dataset, config.data_dir, config.split = 'ilidsvid', str(data_dir), 0
  config.seq_len, config.height, config.width = 4, 64, 32
  config.eval_batch_size, config.num_workers = 4, 0
  config.model.depth = 18
  return config


def write_checkpoint(workdir, config, num_classes=37, seed=0):
  """A step-7 checkpoint of random variables (BatchNorm statistics random too), by the trainer's module."""
  model = model_from_config(config.model, num_classes)
  clips = jnp.zeros((1, config.seq_len, config.height, config.width, 3))
  shapes = jax.eval_shape(lambda: model.init(jax.random.key(0), clips, train=False))
  rng = np.random.default_rng(seed)

  def fill(path, leaf):
    name = jax.tree_util.keystr(path)
    if 'var' in name:
      return rng.uniform(0.5, 2.0, leaf.shape).astype(np.float32)
    if 'scale' in name:
      return rng.uniform(0.5, 1.5, leaf.shape).astype(np.float32)
    return (0.1 * rng.normal(size=leaf.shape)).astype(np.float32)

  variables = jax.tree_util.tree_map_with_path(fill, shapes)
  state = {'params': variables['params'], 'batch_stats': variables['batch_stats'], 'step': np.int32(7)}
  manager = checkpoint.make_manager(workdir, max_to_keep=1)
  checkpoint.save(manager, 7, state, iter(grain.MapDataset.range(4).to_iter_dataset()), config)
  manager.wait_until_finished()
  manager.close()
  return workdir


@pytest.fixture(scope='module')
def trained(shared_data, tmp_path_factory):
  """(workdir of a tiny pku2cam checkpoint, its config)."""
  config = tiny_config(shared_data / 'pku2cam')
  return write_checkpoint(tmp_path_factory.mktemp('run'), config), config


def _copy_tracklets(shared_data, root, persons, cams=('cam1', 'cam2')):
  """root/<cam>/<person>/ copies of pku2cam tracklets (frames renamed f1, f2, ..., f10 to test natural order)."""
  for cam in cams:
    for person in persons:
      source = shared_data.joinpath(*SEQUENCES, cam, person)
      target = root / cam / person
      target.mkdir(parents=True)
      for i, frame in enumerate(sorted(source.iterdir()), start=1):
        shutil.copy(frame, target / f'f{i}.png')
  return root


def test_embed_equals_evaluator_features(shared_data, trained, tmp_path):
  workdir, config = trained
  dataset = load_dataset('ilidsvid', shared_data / 'pku2cam', split=0)
  persons = [pathlib.Path(dataset.test[i].frames[0]).parent.name for i in dataset.query[:3]]
  root = _copy_tracklets(shared_data, tmp_path / 'crops', persons)
  arrays = embed.embed(str(workdir), str(root), str(tmp_path / 'f.npz'))
  assert list(arrays['names']) == [f'{c}/{p}' for c in ('cam1', 'cam2') for p in persons]
  assert [pathlib.Path(p).name for p in arrays['frame_paths'][:8]] == [f'f{i}.png' for i in range(1, 9)]
  # the same tracklets through the evaluator's harness, from the iLIDS-VID reader's index
  wanted = [i for i, t in enumerate(dataset.test) if pathlib.Path(t.frames[0]).parent.name in persons]
  wanted = sorted(wanted, key=lambda i: (dataset.test[i].camid, dataset.test[i].pid))
  _, variables, _ = checkpoint.load_for_eval(workdir)
  model = model_from_config(config.model, 37)
  reference = common.unlabelled_dataset([dataset.test[i].frames for i in wanted])  # same shapes: one compile
  expected = extract.extract_features(model, variables, reference, config, clip_selection='dense',
                                      mesh=sharding.make_mesh())
  saved = common.read_features(tmp_path / 'f.npz')
  np.testing.assert_allclose(saved['features'], expected, rtol=1e-5, atol=1e-6)
  assert saved['features'].dtype == np.float32 and saved['features'].shape == (6, 512)
  assert int(saved['step']) == 7 and str(saved['clip_selection']) == 'dense'
  assert str(saved['fingerprint']) == common.fingerprint(config)
  assert not np.allclose(saved['features'][0], saved['features'][1])


def test_short_tracklet_as_the_evaluator(shared_data, trained, tmp_path):
  """A tracklet of 2 frames (T = 4): dense repeats the last frame, so it equals [f1, f2, f2, f2] spelled out."""
  workdir, _ = trained
  source = sorted(shared_data.joinpath(*SEQUENCES, 'cam1', 'person001').iterdir())
  for name, frames in (('short', [source[0], source[1]]), ('spelled', [source[0], source[1], source[1], source[1]])):
    (tmp_path / 'crops' / name).mkdir(parents=True)
    for i, frame in enumerate(frames):
      shutil.copy(frame, tmp_path / 'crops' / name / f'{i}.png')
  arrays = embed.embed(str(workdir), str(tmp_path / 'crops'), str(tmp_path / 'f.npz'))
  np.testing.assert_allclose(arrays['features'][0], arrays['features'][1], rtol=1e-5, atol=1e-6)


def _command(*args):
  return subprocess.run([sys.executable, '-m', 'lstrl_jax.embed', *args], cwd=REPO, capture_output=True, text=True,
                        timeout=300)


def test_command_errors_are_one_line(trained, tmp_path):
  workdir, _ = trained
  (tmp_path / 'empty' / 'a').mkdir(parents=True)
  (tmp_path / 'bad' / 't').mkdir(parents=True)
  (tmp_path / 'bad' / 't' / '1.png').write_bytes(b'not a png')
  for folder, message in (('empty', 'no .png/.jpg/.jpeg image'), ('missing', 'directory not found')):
    with pytest.raises(DatasetError, match=message):
      embed.embed(str(workdir), str(tmp_path / folder), str(tmp_path / 'f.npz'))
  out = _command('--ckpt', str(workdir), '--tracklets', str(tmp_path / 'bad'), '--out', str(tmp_path / 'f.npz'))
  assert out.returncode == 1, out.stderr
  assert out.stderr.startswith('error: ') and 'cannot read image' in out.stderr and out.stderr.count('\n') == 1
  assert not (tmp_path / 'f.npz').exists()
  out = _command('--tracklets', str(tmp_path), '--out', 'x.npz')
  assert out.returncode == 2 and 'ckpt' in out.stderr


def test_unreadable_frames_found_before_embedding(tmp_path):
  (tmp_path / 't').mkdir()
  Image.new('RGB', (2, 2)).save(tmp_path / 't' / '1.png')
  names, frames = common.list_tracklets(tmp_path)
  assert names == ['t'] and len(frames[0]) == 1
  (tmp_path / 't' / '2.png').write_bytes(b'')
  with pytest.raises(DatasetError, match=r't/2.png: cannot read image'):
    common.list_tracklets(tmp_path)
  (tmp_path / 't' / '2.png').write_bytes(b'\x89PNG\r\n\x1a\n')
  with pytest.raises(DatasetError, match=r't/2.png: cannot read image'):
    common.list_tracklets(tmp_path)
