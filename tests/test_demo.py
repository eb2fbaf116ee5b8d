"""The demo dataset generator: layout readable by the iLIDS-VID reader, determinism, atomicity, learnability."""

import hashlib
import json
import pathlib
import subprocess
import sys
import time

import numpy as np
import pytest
import scipy.io
from PIL import Image

from lstrl_jax.data import demo
from lstrl_jax.data.datasets import load_dataset
from lstrl_jax.data.index import DatasetError

REPO = pathlib.Path(__file__).resolve().parents[1]


def _digest(root):
  files = sorted(p for p in root.rglob('*') if p.is_file())
  return [(str(p.relative_to(root)), hashlib.sha256(p.read_bytes()).hexdigest()) for p in files]


def test_layout_read_by_ilidsvid_reader(tmp_path):
  out = demo.generate(tmp_path / 'demo', num_persons=6, frames=3)
  ls_set = scipy.io.loadmat(out / 'train-test people splits' / 'train_test_splits_ilidsvid.mat')['ls_set']
  assert ls_set.shape == (10, 6) and (np.sort(ls_set, axis=1) == np.arange(1, 7)).all()
  for split in range(10):
    ds = load_dataset('ilidsvid', out, split=split)
    assert ds.num_train_pids == 3 and len(ds.train) == 6 and len(ds.query) == 3
    assert sorted(ds.test[i].pid for i in ds.query) == sorted(int(i) for i in ls_set[split, :3])
  first = ds.test[0].frames
  numbers = [int(f[-9:-4]) for f in first]
  assert len(first) == 3 and numbers == list(range(numbers[0], numbers[0] + 3))
  image = Image.open(first[0])
  assert image.size == (64, 128) and image.mode == 'RGB'
  assert load_dataset('demo', out).name == 'demo'


def test_deterministic_in_seed(tmp_path, monkeypatch):
  """Equal flags give byte-identical files, also when the clock moves between them (scipy's MAT header)."""
  clock = iter(['Wed Dec  2 14:00:00 2026', 'Wed Dec  2 14:00:01 2026', 'Wed Dec  2 14:00:02 2026'])
  monkeypatch.setattr(time, 'asctime', lambda *_: next(clock))
  a = demo.generate(tmp_path / 'a', num_persons=3, frames=2, height=32, width=16)
  b = demo.generate(tmp_path / 'b', num_persons=3, frames=2, height=32, width=16)
  c = demo.generate(tmp_path / 'c', num_persons=3, frames=2, height=32, width=16, seed=1)
  assert _digest(a) == _digest(b)
  assert [h for _, h in _digest(a)] != [h for _, h in _digest(c)]


def test_frames_move_and_cameras_differ(tmp_path):
  out = demo.generate(tmp_path / 'demo', num_persons=2, frames=6)
  ds = load_dataset('ilidsvid', out)
  query = ds.test[ds.query[0]]
  frames = [np.asarray(Image.open(f), dtype=np.float32) for f in query.frames]
  assert np.abs(frames[0] - frames[3]).mean() > 2.0  # walking: not a still image
  gallery = np.asarray(Image.open(ds.test[ds.galleries['cross_camera'][0]].frames[0]), dtype=np.float32)
  assert np.abs(frames[0][:20].mean((0, 1)) - gallery[:20].mean((0, 1))).max() > 20  # other background


def _stripe_histogram(tracklet):
  """Colour histograms (4 levels per channel) of six horizontal stripes of the central half, averaged."""
  features = []
  for path in tracklet.frames:
    image = np.asarray(Image.open(path))
    codes = image[:, image.shape[1] // 4: 3 * image.shape[1] // 4].astype(np.int64) // 64
    codes = codes[..., 0] * 16 + codes[..., 1] * 4 + codes[..., 2]
    features.append(np.concatenate([np.bincount(s.ravel(), minlength=64) for s in np.array_split(codes, 6)]))
  feature = np.mean(features, axis=0)
  return feature / np.linalg.norm(feature)


def test_learnable_beats_chance(tmp_path):
  out = demo.generate(tmp_path / 'demo', num_persons=20, frames=2)
  rank1 = []
  for split in range(10):
    ds = load_dataset('ilidsvid', out, split=split)
    features = np.stack([_stripe_histogram(t) for t in ds.test])
    scores = features[ds.query] @ features[ds.galleries['cross_camera']].T
    gallery_pids = np.array([ds.test[i].pid for i in ds.galleries['cross_camera']])
    rank1.append(np.mean(gallery_pids[scores.argmax(axis=1)] == [ds.test[i].pid for i in ds.query]))
  chance = 1 / 10
  assert np.mean(rank1) >= 2 * chance  # a hand-crafted colour matcher; a trained network does far better


def test_interrupted_run_leaves_nothing(tmp_path, monkeypatch):
  calls = []
  original = demo.tracklet

  def failing(*args, **kwargs):
    calls.append(1)
    if len(calls) == 3:
      raise KeyboardInterrupt
    return original(*args, **kwargs)

  monkeypatch.setattr(demo, 'tracklet', failing)
  with pytest.raises(KeyboardInterrupt):
    demo.generate(tmp_path / 'demo', num_persons=4, frames=2, height=32, width=16)
  assert list(tmp_path.iterdir()) == []


def test_refuses_existing_out(tmp_path):
  (tmp_path / 'demo').mkdir()
  with pytest.raises(DatasetError, match='demo: already exists; expected a new folder'):
    demo.generate(tmp_path / 'demo')
  with pytest.raises(DatasetError, match='demo: already exists; expected the demo dataset of these flags'):
    demo.generate(tmp_path / 'demo', exist_ok=True)  # no manifest: not a finished demo dataset


def _snapshot(root):
  """Every file under `root` with its modification time and bytes."""
  return {p: (p.stat().st_mtime_ns, p.read_bytes()) for p in root.rglob('*') if p.is_file()}


def test_command_line_reuses_only_the_same_dataset(tmp_path):
  out = tmp_path / 'demo'
  command = [sys.executable, '-m', 'lstrl_jax.data.demo', '--out', str(out), '--num_persons', '4', '--frames', '2',
             '--height', '32', '--width', '16']
  result = subprocess.run(command, cwd=REPO, capture_output=True, text=True, timeout=120)
  assert result.returncode == 0, result.stderr
  assert result.stdout == f'wrote 4 persons x 2 cameras x 2 frames in {out}\n'
  assert load_dataset('ilidsvid', out).num_train_pids == 2
  assert json.loads((out / demo.MANIFEST).read_text()) == dict(num_persons=4, frames=2, seed=0, height=32, width=16)
  before = _snapshot(out)

  # The same command again (the README one-liner run twice) finds the dataset and touches nothing.
  result = subprocess.run(command, cwd=REPO, capture_output=True, text=True, timeout=120)
  assert result.returncode == 0, result.stderr
  assert result.stdout == f'found (same flags, left as it is) 4 persons x 2 cameras x 2 frames in {out}\n'
  assert _snapshot(out) == before

  # Other flags on the same folder: one line, exit 1, nothing changed.
  result = subprocess.run([*command, '--seed', '1'], cwd=REPO, capture_output=True, text=True, timeout=120)
  assert result.returncode == 1 and result.stdout == ''
  assert result.stderr.splitlines() == [f'error: {out}: already exists; expected the demo dataset of these flags '
                                        '(remove it first)']
  assert _snapshot(out) == before
