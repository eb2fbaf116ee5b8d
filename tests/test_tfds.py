"""Packed datasets: TFDS/ArrayRecord packing without TensorFlow, read back by grain with identical batches."""

import dataclasses
import os
import pathlib
import subprocess
import sys

import numpy as np
import pytest

from configs.default import get_config
from lstrl_jax.data import pipeline
from lstrl_jax.data.datasets import load_dataset
from lstrl_jax.data.index import DatasetError
from lstrl_jax.data.tfds import builders

REPO = pathlib.Path(__file__).resolve().parents[1]


@pytest.fixture(scope='module')
def pku2cam(shared_data):
  return shared_data / 'pku2cam'


def _pack_command(data_dir, packed_dir):
  return subprocess.run(
      [sys.executable, '-m', 'lstrl_jax.data.pack', '--config.dataset=ilidsvid', f'--config.data_dir={data_dir}',
       f'--config.packed_dir={packed_dir}'],
      cwd=REPO, capture_output=True, text=True, timeout=300, check=False,
      env={**os.environ, 'PYTHONPATH': str(REPO)})


@pytest.fixture(scope='module')
def packed_dir(pku2cam, tmp_path_factory):
  """pku2cam (iLIDS-VID layout) split 0 packed by the command line, into a temporary directory."""
  out = tmp_path_factory.mktemp('packed')
  result = _pack_command(pku2cam, out)
  assert result.returncode == 0, result.stderr[-2000:]
  assert result.stdout.strip().endswith(str(out / 'ilidsvid' / 'split0' / '1.0.0'))
  return out


def _config(packed_dir=''):
  config = get_config()
  config.seq_len, config.height, config.width = 4, 32, 16
  config.num_identities, config.num_instances = 4, 2
  config.num_workers = 0
  config.eval_batch_size = 16
  config.packed_dir = str(packed_dir)
  return config


def test_tensorflow_is_not_installed():
  with pytest.raises(ImportError):
    import tensorflow  # noqa: F401  pylint: disable=g-import-not-at-top,unused-import


def test_packed_records_follow_the_index(pku2cam, packed_dir):
  dataset = load_dataset('ilidsvid', pku2cam, split=0)
  builder = builders.open_packed(dataset, packed_dir)
  for split in ('train', 'test'):
    tracklets = getattr(dataset, split)
    source = builder.as_data_source(split=split)
    assert len(source) == len(tracklets) == 74
    for i in (0, 37, 73):
      record = source[i]
      assert (record['index'], record['pid'], record['camid']) == (i, tracklets[i].pid, tracklets[i].camid)
      assert record['frames'] == [pathlib.Path(p).read_bytes() for p in tracklets[i].frames]
      assert [n.decode() for n in record['names']] == [os.path.relpath(p, pku2cam) for p in tracklets[i].frames]
  assert 'tensorflow' not in sys.modules


def test_packed_and_folder_sources_give_identical_batches(pku2cam, packed_dir):
  dataset = load_dataset('ilidsvid', pku2cam, split=0)
  loaders = [iter(pipeline.train_loader(dataset, _config(d), seed=7, shard_count=1)) for d in ('', packed_dir)]
  for _ in range(3):
    folder, packed = next(loaders[0]), next(loaders[1])
    assert folder['clips'].shape == (8, 4, 32, 16, 3)
    for key in folder:
      np.testing.assert_array_equal(folder[key], packed[key])
  evals = [list(pipeline.test_loader(dataset, _config(d), clip_selection='dense', indices=range(10), shard_count=1))
           for d in ('', packed_dir)]
  assert len(evals[0]) == len(evals[1]) == 2
  for folder, packed in zip(*evals):
    for key in folder:
      np.testing.assert_array_equal(folder[key], packed[key])


def test_packed_data_that_does_not_match_is_refused(pku2cam, packed_dir):
  other_split = load_dataset('ilidsvid', pku2cam, split=1)
  with pytest.raises(DatasetError, match='no packed ilidsvid split 1'):
    pipeline.train_loader(other_split, _config(packed_dir), seed=0, shard_count=1)
  dataset = load_dataset('ilidsvid', pku2cam, split=0)
  edited = dataclasses.replace(dataset, train=dataset.train[:-1])
  with pytest.raises(DatasetError, match='packed tracklets differ'):
    pipeline.test_loader(edited, _config(packed_dir), clip_selection='rrs', shard_count=1)
  with pytest.raises(DatasetError, match="dataset 'nope': no packed format"):
    builders.make_builder('nope', 0, packed_dir)


def test_pack_command_bad_root_is_one_line_and_writes_nothing(tmp_path):
  result = _pack_command(tmp_path / 'missing', tmp_path / 'packed')
  assert result.returncode == 1
  assert result.stderr.strip().splitlines()[-1].startswith(f'error: {tmp_path / "missing"}: directory not found')
  assert not (tmp_path / 'packed').exists()
