"""Tests of lstrl_jax.evaluation.visualize: PNGs opened back with PIL, sizes, colours, map selection."""

import pathlib

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
from PIL import Image
import pytest

from configs.default import get_config
from lstrl_jax.data.index import Tracklet, VideoReIDDataset
from lstrl_jax.evaluation import visualize as vis

GREEN, RED, GREY = vis.STATUS_COLOURS[1], vis.STATUS_COLOURS[0], vis.STATUS_COLOURS[-1]


def _open(path):
  with Image.open(path) as image:
    return np.asarray(image.convert('RGB'))


def _cell_corner(row, col, height, width):
  """Top-left pixel (y, x) of cell (row, col) on a sheet of framed cells."""
  cell_h, cell_w = height + 2 * vis.BORDER, width + 2 * vis.BORDER
  return vis.GAP + row * (cell_h + vis.GAP), vis.GAP + col * (cell_w + vis.GAP)


def test_ranking_sheet_size_and_frame_colours(tmp_path):
  rng = np.random.default_rng(0)
  queries = rng.integers(0, 256, (2, 3, 12, 6, 3), dtype=np.uint8)
  gallery = rng.integers(0, 256, (2, 4, 12, 6, 3), dtype=np.uint8)
  status = np.array([[1, 0, -1, 0], [0, 1, 1, -1]])
  path = vis.save_png(vis.ranking_sheet(queries, gallery, status), tmp_path / 'pictures' / 'ranks.png')
  pixels = _open(path)
  cols = 3 + 1 + 4
  assert pixels.shape == (vis.GAP + 2 * (18 + vis.GAP), vis.GAP + cols * (12 + vis.GAP), 3)
  assert pixels.std() > 0
  for row in range(2):
    for k in range(4):
      y, x = _cell_corner(row, 3 + 1 + k, 12, 6)
      assert tuple(pixels[y, x]) == vis.STATUS_COLOURS[status[row, k]]
    y, x = _cell_corner(row, 0, 12, 6)
    np.testing.assert_array_equal(pixels[y + vis.BORDER, x + vis.BORDER], queries[row, 0, 0, 0])
  assert not list(tmp_path.glob('pictures/.*'))  # no temporary file left behind


def test_ranking_sheet_rejects_mismatched_shapes():
  with pytest.raises(ValueError, match='do not agree'):
    vis.ranking_sheet(np.zeros((2, 3, 8, 4, 3), np.uint8), np.zeros((2, 4, 8, 4, 3), np.uint8),
                      np.zeros((2, 5), int))


def test_ranking_status_junk_rules():
  pids, camids = np.array([7, 7, -1, 0, 3]), np.array([0, 1, 1, 1, 0])
  np.testing.assert_array_equal(vis.ranking_status(7, 0, pids, camids, 'paper'), [-1, 1, 0, 0, 0])
  np.testing.assert_array_equal(vis.ranking_status(7, 0, pids, camids, 'official'), [-1, 1, -1, 0, 0])


def _solid_dataset(root: pathlib.Path) -> VideoReIDDataset:
  """Person p (0..3) in camera c (0..1): 3 frames of 16x8, colour (60p, 200c, 100)."""
  test = []
  for p in range(4):
    for c in range(2):
      frames = []
      for k in range(3):
        path = root / f'p{p}c{c}f{k}.png'
        Image.fromarray(np.full((16, 8, 3), (60 * p, 200 * c, 100), np.uint8)).save(path)
        frames.append(str(path))
      test.append(Tracklet(tuple(frames), pid=p, camid=c))
  return VideoReIDDataset('toy', train=(), test=tuple(test), query=np.array([0, 2]),
                          galleries={'paper': np.arange(8)})


def test_write_ranking_sheet_frames_matches_green(tmp_path):
  dataset = _solid_dataset(tmp_path)
  features = np.eye(4, dtype=np.float32)[[t.pid for t in dataset.test]]  # same pid -> distance 0
  config = get_config()
  config.seq_len, config.height, config.width = 2, 16, 8
  path = vis.write_ranking_sheet(dataset, features, tmp_path / 'ranks.png', convention='paper',
                                 distance='cosine', query_positions=[0, 1], config=config, top_k=3,
                                 title='toy split 0', row_notes=['best', 'worst'])
  pixels = _open(path)
  cell = (16 + 2 * vis.BORDER, 8 + 2 * vis.BORDER)
  grid_h = vis.GAP + 2 * (cell[0] + vis.CAPTION_LINES * vis.LINE + vis.GAP)
  top = pixels.shape[0] - grid_h - 3 * vis.LINE  # text above (title, rows explained); the legend's 3 lines below
  assert top >= vis.GAP + 2 * vis.LINE
  origin = lambda row, col: vis.cell_origin(row, col, cell, vis.ROW_LABEL_WIDTH, vis.CAPTION_LINES * vis.LINE)
  # Query 0 = (pid 0, cam 0): ranked [itself: junk, pid 0 cam 1: match, pid 1 cam 0: non-match].
  for k, colour in enumerate((GREY, GREEN, RED)):
    x, y = origin(0, 2 + 1 + k)
    assert tuple(pixels[top + y, x]) == colour
  x, y = origin(1, 0)  # query 1 = test[2] = (pid 1, cam 0)
  assert tuple(pixels[top + y + vis.BORDER, x + vis.BORDER]) == (60, 0, 100)
  dark = lambda region: int((region.min(axis=-1) < 100).sum())  # text pixels
  assert dark(pixels[:top]) > 50  # the title
  assert dark(pixels[top:top + 4 * vis.LINE, :vis.ROW_LABEL_WIDTH]) > 100  # the row label
  x, y = origin(0, 3)
  assert dark(pixels[top + y + cell[0]:top + y + cell[0] + 3 * vis.LINE, x:x + cell[1] + vis.GAP]) > 10  # caption
  legend = pixels[-3 * vis.LINE:]
  for colour in (GREEN, RED, GREY):  # the legend's swatches
    assert (legend == colour).all(axis=-1).sum() > 20


def test_ranking_row_labels_name_ap_and_first_match(tmp_path, monkeypatch):
  """The text of the labels: query 1 (pid 1, cam 0) under 'paper' with identical features per pid ranks junk
  (itself), then its match at rank 2 among ties broken by gallery order: AP 1, first true match rank 2."""
  dataset = _solid_dataset(tmp_path)
  features = np.eye(4, dtype=np.float32)[[t.pid for t in dataset.test]]
  config = get_config()
  config.seq_len, config.height, config.width = 2, 16, 8
  seen = {}
  real = vis.ranking_sheet
  monkeypatch.setattr(vis, 'ranking_sheet', lambda *a, **k: seen.update(k) or real(*a, **k))
  vis.write_ranking_sheet(dataset, features, tmp_path / 'r.png', convention='paper', distance='cosine',
                          query_positions=[1], config=config, top_k=3, row_notes=['picked'])
  assert seen['row_labels'] == [['picked', 'query 1: pid 1, cam 0', 'AP 100.0%', 'first true match: rank 2']]
  assert seen['captions'][0] == [['#1 pid 1', 'cam 0', 'd 0.000'], ['#2 pid 1', 'cam 1', 'd 0.000'],
                                 ['#3 pid 0', 'cam 0', 'd 1.000']]


class _Maps(nn.Module):
  """Sows MAE-shaped D1..D4 (attention ramping up over positions) for a `[B, T, h, w]` grid."""

  @nn.compact
  def __call__(self, b, t, h, w):
    n = t * h * w
    ramp = jax.nn.softmax(jnp.arange(n, dtype=jnp.float32) / n * 4)
    for name, rows in (('D1', n), ('D2', h * w), ('D3', t), ('D4', 1)):
      self.sow('intermediates', name, jnp.broadcast_to(ramp, (b, rows, n)))


class _Motion(nn.Module):
  """Sows BME-shaped M_f, M_b `[B, T, h, w, 4]` whose channel norm grows with t."""

  @nn.compact
  def __call__(self, b, t, h, w):
    m = jnp.broadcast_to(jnp.arange(1, t + 1, dtype=jnp.float32)[None, :, None, None, None], (b, t, h, w, 4))
    self.sow('intermediates', 'M_f', m)
    self.sow('intermediates', 'M_b', m[:, ::-1])


class Sower(nn.Module):
  """A stand-in network sowing the stage-2 maps of an 8x-downsampled grid."""

  @nn.compact
  def __call__(self, clips, *, train):
    b, t, height, width, _ = clips.shape
    _Maps(name='mae2')(b, t, height // 8, width // 8)
    _Motion(name='bme2')(b, t, height // 8, width // 8)
    f = jnp.mean(clips, axis=(1, 2, 3))
    return {'features': f, 'bn_features': f, 'logits': f}


def test_figure5_rows_pick_the_query_position():
  t, h, w = 2, 3, 2
  n = t * h * w
  maps = {'D1': np.eye(n), 'D2': np.eye(h * w, n, k=h * w), 'D3': np.eye(t, n), 'D4': np.ones((1, n)),
          'M_f': np.ones((t, h, w, 3))}
  rows = dict(vis.figure5_rows(maps, (t, h, w), (1, 2, 0)))
  assert list(rows) == ['D^1', 'D^2', 'D^3', 'D^4', 'M^f']
  assert rows['D^1'][1, 2, 0] == 1 and rows['D^1'].sum() == 1  # D1 = I: the query attends to itself
  assert rows['D^2'][1, 2, 0] == 1 and rows['D^2'].sum() == 1  # row y*w+x of D2 -> key hw + y*w + x
  assert rows['D^3'][0, 0, 1] == 1 and rows['D^3'].sum() == 1  # row t=1 of eye(t, n) -> key 1
  assert np.all(rows['D^4'] == 1) and np.all(rows['M^f'] == 1)


def test_write_figure5_png(tmp_path):
  dataset = _solid_dataset(tmp_path)
  config = get_config()
  config.seq_len, config.height, config.width = 4, 32, 16
  paths = vis.write_figure5(Sower(), {}, dataset, config, tracklet=3, directory=tmp_path / 'pictures')
  assert [p.name for p in paths] == ['fig5_t3_stage2.png']
  pixels = _open(paths[0])
  rows = 1 + 4 + 2  # frames, D^1..D^4, M^f, M^b
  grid_h = vis.GAP + rows * (32 + vis.GAP)
  title_h = vis.GAP + vis.LINE * 5  # the title, the query position and the map explanation, wrapped
  assert pixels.shape[1] == vis.TEXT_WIDTH  # a 4-frame grid is narrower than the text
  assert pixels.shape[0] >= title_h + grid_h + 2 * vis.LINE
  assert pixels.std() > 0
  top = next(y for y in range(pixels.shape[0]) if (pixels[y, vis.LABEL_WIDTH + vis.GAP + 8] != 255).any()
             and y > vis.LINE * 3 and (pixels[y, vis.LABEL_WIDTH + vis.GAP:vis.LABEL_WIDTH + vis.GAP + 16] ==
                                       (60, 200, 100)).all())  # first row of the frames (solid colour)
  # Frame 0 of tracklet 3 = (pid 1, cam 1); the query box is on frame T // 2 = 2.
  assert tuple(pixels[top + 28 - vis.GAP, vis.LABEL_WIDTH + vis.GAP + 8]) == (60, 200, 100)
  # M^f grows with t: the last frame's overlay is red-ish, the first blue-ish.
  y = top + 5 * (32 + vis.GAP) + 16
  first, last = pixels[y, vis.LABEL_WIDTH + vis.GAP + 8], pixels[y, vis.LABEL_WIDTH + vis.GAP + 3 * 22 + 8]
  assert last[0] > first[0] and first[2] > last[2]
  bar = pixels[-2 * vis.LINE + 2]  # the colour bar runs from jet's blue to its red
  assert bar[vis.GAP + 2][2] > bar[vis.GAP + 2][0] and bar[vis.TEXT_WIDTH // 2 + 100][0] > 100
