"""grain pipelines: P x K batches, determinism, resume, hosts, workers, evaluation padding, corrupt frames."""

import numpy as np
import PIL.Image
import pytest
from absl import flags

from configs.default import get_config
from lstrl_jax.data import pipeline
from lstrl_jax.data import sampling
from lstrl_jax.data.index import DatasetError, Tracklet, VideoReIDDataset

T, H, W = 4, 16, 8
# Frames per tracklet: identity i has two tracklets (cameras 0 and 1); some are shorter than T.
_LENGTHS = [(6, 3), (9, 4), (2, 7), (5, 5), (8, 1), (4, 6), (7, 9)]


def _write_tracklet(folder, rng, n):
  folder.mkdir(parents=True)
  paths = []
  for f in range(n):
    path = folder / f'{f:04d}.png'
    PIL.Image.fromarray(rng.integers(0, 256, size=(20, 10, 3), dtype=np.uint8)).save(path)
    paths.append(str(path))
  return tuple(paths)


@pytest.fixture(scope='module')
def dataset(tmp_path_factory):
  root = tmp_path_factory.mktemp('tiny')
  rng = np.random.default_rng(0)
  train, test = [], []
  for pid, lengths in enumerate(_LENGTHS):
    for cam, n in enumerate(lengths):
      train.append(Tracklet(_write_tracklet(root / 'train' / f'{pid}_{cam}', rng, n), pid, cam))
      test.append(Tracklet(_write_tracklet(root / 'test' / f'{pid}_{cam}', rng, n + 2), 100 + pid, cam))
  galleries = {'cross_camera': np.arange(1, 14, 2)}
  return VideoReIDDataset('tiny', tuple(train), tuple(test), np.arange(0, 14, 2), galleries)


def _config(**overrides):
  config = get_config()
  config.seq_len, config.height, config.width = T, H, W
  config.num_identities, config.num_instances = 3, 2
  config.num_workers = 0
  config.eval_batch_size = 4
  config.update(overrides)
  return config


def _take(iterator, n):
  return [next(iterator) for _ in range(n)]


def _assert_same(batches_a, batches_b):
  assert len(batches_a) == len(batches_b)
  for a, b in zip(batches_a, batches_b):
    assert a.keys() == b.keys()
    for key in a:
      np.testing.assert_array_equal(a[key], b[key])


def test_train_batches_are_p_by_k(dataset):
  batches = _take(iter(pipeline.train_loader(dataset, _config(), seed=0, shard_index=0, shard_count=1)), 5)
  for batch in batches:
    assert batch['clips'].shape == (6, T, H, W, 3) and batch['clips'].dtype == np.uint8
    assert batch['pids'].dtype == np.int32 and batch['camids'].dtype == np.int32
    pids = batch['pids'].reshape(3, 2)
    assert (pids == pids[:, :1]).all() and len(set(pids[:, 0])) == 3
  epoch = np.concatenate([b['pids'][::2] for b in batches[:2]])  # 7 ids // P=3 -> 2 steps per epoch
  assert len(set(epoch)) == 6
  assert pipeline.steps_per_epoch(dataset, _config()) == 2


def test_same_seed_same_batches_other_seed_differs(dataset):
  make = lambda seed: _take(iter(pipeline.train_loader(dataset, _config(), seed=seed, shard_count=1)), 3)
  first = make(0)
  _assert_same(first, make(0))
  assert not all(np.array_equal(a['clips'], b['clips']) for a, b in zip(first, make(1)))


def test_get_state_set_state_resumes_at_the_next_batch(dataset):
  loader = pipeline.train_loader(dataset, _config(), seed=4, shard_count=1)
  iterator = iter(loader)
  _take(iterator, 2)
  state = iterator.get_state()
  expected = _take(iterator, 3)
  resumed = iter(pipeline.train_loader(dataset, _config(), seed=4, shard_count=1))
  resumed.set_state(state)
  _assert_same(_take(resumed, 3), expected)


def test_hosts_concatenate_to_the_single_host_batch(dataset):
  whole = _take(iter(pipeline.train_loader(dataset, _config(), seed=2, shard_index=0, shard_count=1)), 3)
  hosts = [_take(iter(pipeline.train_loader(dataset, _config(), seed=2, shard_index=h, shard_count=2)), 3)
           for h in range(2)]
  for step in range(3):
    assert hosts[0][step]['clips'].shape[0] == 3
    joined = {k: np.concatenate([hosts[0][step][k], hosts[1][step][k]]) for k in whole[step]}
    _assert_same([joined], [whole[step]])


def test_worker_processes_give_the_in_process_batches_and_resume(dataset):
  flags.FLAGS.mark_as_parsed()  # grain workers read absl flags; programs get this from absl.app.run
  expected = _take(iter(pipeline.train_loader(dataset, _config(), seed=5, shard_count=1)), 4)
  iterator = iter(pipeline.train_loader(dataset, _config(num_workers=2), seed=5, shard_count=1))
  _assert_same(_take(iterator, 2), expected[:2])
  state = iterator.get_state()
  resumed = iter(pipeline.train_loader(dataset, _config(num_workers=2), seed=5, shard_count=1))
  resumed.set_state(state)
  _assert_same(_take(resumed, 2), expected[2:])


def _eval_batches(dataset, clip_selection, **kwargs):
  config = _config(**kwargs.pop('config', {}))
  return list(pipeline.test_loader(dataset, config, clip_selection=clip_selection, **kwargs))


def _frame(path):
  return np.asarray(PIL.Image.open(path).convert('RGB').resize((W, H), PIL.Image.BILINEAR))


def test_rrs_eval_rows_are_padded_and_hold_the_first_frame_of_each_chunk(dataset):
  batches = _eval_batches(dataset, 'rrs', shard_count=1)
  assert len(batches) == 4  # 14 tracklets in batches of 4, 2 padding rows
  tracklet = np.concatenate([b['tracklet'] for b in batches])
  mask = np.concatenate([b['mask'] for b in batches])
  np.testing.assert_array_equal(tracklet, list(range(14)) + [-1, -1])
  np.testing.assert_array_equal(mask, [True] * 14 + [False] * 2)
  clips = np.concatenate([b['clips'] for b in batches])
  assert not clips[14:].any()
  for row in (0, 9):
    frames = dataset.test[row].frames
    expected = np.stack([_frame(frames[i]) for i in sampling.rrs_test(len(frames), T)])
    np.testing.assert_array_equal(clips[row], expected)


def test_dense_eval_covers_every_frame_and_splits_over_hosts(dataset):
  batches = _eval_batches(dataset, 'dense', indices=[2, 5], shard_count=1)
  # test tracklets 2 and 5 have 11 and 9 frames: 3 + 3 clips of T=4, padded to 8 rows.
  tracklet = np.concatenate([b['tracklet'] for b in batches])
  np.testing.assert_array_equal(tracklet, [2, 2, 2, 5, 5, 5, -1, -1])
  last = batches[0]['clips'][2]
  frames = dataset.test[2].frames
  np.testing.assert_array_equal(last, np.stack([_frame(frames[i]) for i in (8, 9, 10, 10)]))
  hosts = [_eval_batches(dataset, 'dense', indices=[2, 5], shard_index=h, shard_count=2) for h in range(2)]
  assert [len(h) for h in hosts] == [2, 2]
  for b in range(2):
    joined = {k: np.concatenate([hosts[0][b][k], hosts[1][b][k]]) for k in batches[b]}
    _assert_same([joined], [batches[b]])


def test_bad_settings_raise_clear_errors(dataset):
  with pytest.raises(ValueError, match='eval_batch_size 4 does not split over 3 hosts'):
    pipeline.test_loader(dataset, _config(), clip_selection='rrs', shard_index=0, shard_count=3)
  with pytest.raises(ValueError, match='clip_selection'):
    pipeline.test_loader(dataset, _config(), clip_selection='all', shard_count=1)
  with pytest.raises(ValueError, match='num_identities'):
    pipeline.train_loader(dataset, _config(num_identities=8), seed=0, shard_count=1)


def test_corrupt_frame_stops_with_its_path(dataset, tmp_path):
  good = dataset.test[0]
  data = open(good.frames[1], 'rb').read()
  broken = tmp_path / 'broken.png'
  broken.write_bytes(data[:len(data) // 2])
  frames = (good.frames[0], str(broken)) + good.frames[2:]
  train = (Tracklet((str(broken),) * 3, 0, 0),)
  bad = VideoReIDDataset('bad', train, (Tracklet(frames, 0, 0),), np.zeros(1, np.int64), {})
  with pytest.raises(DatasetError, match='broken.png: cannot decode'):
    _eval_batches(bad, 'dense', shard_count=1)
  with pytest.raises(DatasetError, match='broken.png: cannot decode'):
    next(iter(pipeline.train_loader(bad, _config(num_identities=1, num_instances=2), seed=0, shard_count=1)))


def test_normalize_matches_the_imagenet_formula():
  x = np.arange(256, dtype=np.uint8).repeat(3).reshape(1, 256, 3)
  expected = (x / 255.0 - np.array([0.485, 0.456, 0.406])) / np.array([0.229, 0.224, 0.225])
  out = pipeline.normalize(x)
  assert out.dtype == np.float32
  np.testing.assert_allclose(np.asarray(out), expected, atol=1e-5)
  assert np.abs(np.asarray(pipeline.normalize(np.array([124, 116, 104], np.uint8)))).max() < 0.01
