"""search: chunked exact top-k against NumPy's stable sort; the command's listing, sheet and refusals."""

import pathlib
import subprocess
import sys

import numpy as np
from PIL import Image
import pytest

from lstrl_jax.inference import common, search

REPO = pathlib.Path(__file__).resolve().parents[1]


def _numpy_top_k(query, gallery, k, distance):
  """Reference: the full distance matrix in float64 and a stable argsort (ties in gallery order)."""
  q, g = query.astype(np.float64), gallery.astype(np.float64)
  if distance == 'cosine':
    q = q / np.linalg.norm(q, axis=1, keepdims=True)
    g = g / np.linalg.norm(g, axis=1, keepdims=True)
    d = 1 - q @ g.T
  else:
    d = np.sqrt(np.maximum((q * q).sum(1)[:, None] + (g * g).sum(1)[None] - 2 * q @ g.T, 0))
  index = np.argsort(d, axis=1, kind='stable')[:, :k]
  return np.take_along_axis(d, index, axis=1), index


@pytest.mark.parametrize('distance', ['cosine', 'euclidean'])
@pytest.mark.parametrize('chunk_size, query_block', [(7, 3), (1000, 256)])
def test_chunked_top_k_equals_full_sort(distance, chunk_size, query_block):
  rng = np.random.default_rng(0)
  gallery = rng.normal(size=(50, 16)).astype(np.float32)
  gallery[31] = gallery[4]  # an exact tie across chunks: the lower gallery index ranks first
  query = rng.normal(size=(10, 16)).astype(np.float32)
  query[2] = gallery[4] + 0.05
  d, index = search.top_k(query, gallery, 12, distance=distance, chunk_size=chunk_size, query_block=query_block)
  want_d, want_index = _numpy_top_k(query, gallery, 12, distance)
  np.testing.assert_array_equal(index, want_index)
  np.testing.assert_allclose(d, want_d, rtol=1e-5, atol=1e-4)
  assert index[2, 0] == 4 and index[2, 1] == 31


def test_top_k_bounds():
  x = np.ones((2, 4), np.float32)
  with pytest.raises(ValueError, match=r'top 3: expected 1..2'):
    search.top_k(x, x, 3)


def _features_file(path, frames_root, persons, features, fingerprint='abc', pids=None):
  """A features file over real pku2cam frames, as embed writes it."""
  frames = [sorted(str(p) for p in (frames_root / person).iterdir()) for person in persons]
  arrays = dict(features=features.astype(np.float32), names=np.asarray(persons),
                frame_paths=np.asarray([f for fs in frames for f in fs]),
                frame_offsets=np.concatenate([[0], np.cumsum([len(f) for f in frames])]).astype(np.int64),
                clip_selection=np.asarray('dense'), step=np.asarray(7), fingerprint=np.asarray(fingerprint),
                distance=np.asarray('cosine'), seq_len=np.asarray(4), height=np.asarray(64), width=np.asarray(32))
  if pids is not None:
    arrays.update(pids=np.asarray(pids, np.int64), camids=np.zeros(len(pids), np.int64))
  common.write_features(path, arrays)
  return path


def test_command_lists_ranks_and_draws_the_sheet(shared_data, tmp_path):
  sequences = shared_data / 'pku2cam' / 'i-LIDS-VID' / 'sequences'
  persons = ['person001', 'person003', 'person004', 'person007']
  rng = np.random.default_rng(1)
  gallery_features = rng.normal(size=(4, 8))
  query_features = gallery_features[[2, 0]] + 0.01 * rng.normal(size=(2, 8))  # nearest: person004, person001
  gallery = _features_file(tmp_path / 'g.npz', sequences / 'cam2', persons, gallery_features)
  query = _features_file(tmp_path / 'q.npz', sequences / 'cam1', persons[:2], query_features)
  out = subprocess.run([sys.executable, '-m', 'lstrl_jax.search', '--query', str(query), '--gallery', str(gallery),
                        '--top', '3', '--sheet', str(tmp_path / 's.png')], cwd=REPO, capture_output=True, text=True,
                       timeout=300)
  assert out.returncode == 0, out.stderr
  lines = out.stdout.splitlines()
  assert lines[0] == 'query person001' and lines[1].split()[::2] == ['1', 'person004']
  assert lines[4] == 'query person003' and lines[5].split()[::2] == ['1', 'person001']
  assert len(lines) == 9 and lines[-1].startswith('sheet: ')
  with Image.open(tmp_path / 's.png') as sheet:  # 2 rows; 4 query frames + gap + 3 matches of (32 + 6) wide cells
    assert sheet.size == (8 * (32 + 6 + 6) + 6, 2 * (64 + 6 + 6) + 6)


def test_command_refuses_features_of_another_model(shared_data, tmp_path):
  sequences = shared_data / 'pku2cam' / 'i-LIDS-VID' / 'sequences'
  gallery = _features_file(tmp_path / 'g.npz', sequences / 'cam2', ['person001'], np.ones((1, 8)), fingerprint='abc')
  query = _features_file(tmp_path / 'q.npz', sequences / 'cam1', ['person001'], np.ones((1, 8)), fingerprint='xyz')
  out = subprocess.run([sys.executable, '-m', 'lstrl_jax.search', '--query', str(query), '--gallery', str(gallery)],
                       cwd=REPO, capture_output=True, text=True, timeout=300)
  assert out.returncode == 1
  assert out.stderr.startswith('error: ') and 'fingerprint xyz but gallery fingerprint abc' in out.stderr
  assert out.stderr.count('\n') == 1
