"""Pictures: ranked-results sheets and the paper's Fig. 5 (MAE dependency maps, BME motion maps), as PNGs.

Ranked results: each chosen query clip's T frames beside its top-k gallery tracklets (one middle frame
each), framed green (match), red (non-match) or grey (junk under the convention: same pid and camera, and
pid -1 under 'official'), with a title (dataset, split, convention, clip selection, step), a label per query
row (why it was chosen, pid, camera, AP, rank of the first true match), a caption per thumbnail (rank, pid,
camera, distance) and the colour legend. Fig. 5 (titled with the tracklet, its frames and the stage, the
query position explained, a colour bar): for one clip and one insertion stage, the frames, then the dependency maps
D^1..D^4 of MAE (attention of the query position (t, y, x) over the T x h x w keys; D^2 uses its (y, x),
D^3 its t, D^4 the single clip query), then the motion maps M^f and M^b of BME as per-position channel
L2 norms; each row normalised by its maximum over the clip and overlaid (jet colormap) on the frames.
The maps come from `model.apply(..., mutable=['intermediates'])` (names 'mae{s}/D1..D4', 'bme{s}/M_f, M_b';
shapes in `lstrl_jax.models.mae` / `bme`). Every PNG is written atomically (temporary file, rename).
"""

from __future__ import annotations

import functools
import os
import pathlib
import tempfile
from typing import Any, Mapping, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp
from matplotlib import colormaps
import ml_collections
import numpy as np
from PIL import Image, ImageDraw, ImageFont

from lstrl_jax.data import pipeline, sampling, transforms
from lstrl_jax.data.index import VideoReIDDataset
from lstrl_jax.evaluation import metrics

MATCH, NON_MATCH, JUNK = 1, 0, -1
STATUS_COLOURS = {MATCH: (0, 170, 0), NON_MATCH: (215, 25, 25), JUNK: (150, 150, 150)}
BORDER = 3  # pixels of the status frame around a gallery image
GAP = 6  # pixels between cells
LABEL_WIDTH = 44  # left margin of Fig. 5 holding the row names
BACKGROUND = (255, 255, 255)
TEXT = (0, 0, 0)
FONT_SIZE = 11  # pixels; Pillow's bundled font, so pictures look the same everywhere
LINE = FONT_SIZE + 3  # pixels per text line
ROW_LABEL_WIDTH = 170  # left margin of a ranked-results sheet holding the query labels
TEXT_WIDTH = 420  # pixels: pictures narrower than this are widened for their text
CAPTION_LINES = 3  # text lines under each gallery thumbnail: rank + pid, camera, distance
LEGEND = ((MATCH, 'match: same pid, other camera'), (NON_MATCH, 'non-match: other pid'),
          (JUNK, 'junk: ignored by the metrics (same pid and camera; pid -1 under official)'))


@functools.lru_cache(maxsize=4)
def font(size: int = FONT_SIZE) -> ImageFont.ImageFont:
  """Pillow's bundled scalable font at `size` pixels."""
  return ImageFont.load_default(size=size)


def _wrap(line: str, width: int) -> list[str]:
  """`line` broken at spaces into lines of at most `width` pixels in `font()` (a longer word stays whole)."""
  lines, current = [], ''
  for word in line.split(' '):
    candidate = f'{current} {word}' if current else word
    if current and font().getlength(candidate) > width:
      lines.append(current)
      candidate = word
    current = candidate
  return lines + [current]


def add_text(image: Image.Image, top: Sequence[str] = (), bottom: Sequence[str] = (), *,
             colours: Sequence[tuple[int, int, int] | None] = ()) -> Image.Image:
  """`image` with lines of text above and below it, widened to the longest line.

  Lines above are wrapped to the width (at least TEXT_WIDTH pixels); `colours[i]`, when given, draws a swatch
  of that colour before bottom line i (a legend).
  """
  size = font()
  width = max(image.width, TEXT_WIDTH)
  top = [part for line in top for part in _wrap(line, width - 2 * GAP - LINE)]
  out = Image.new('RGB', (width, image.height + LINE * (len(top) + len(bottom)) + (GAP if top else 0)),
                  BACKGROUND)
  draw = ImageDraw.Draw(out)
  for i, line in enumerate(top):
    draw.text((GAP, GAP + i * LINE), line, fill=TEXT, font=size)
  y0 = LINE * len(top) + (GAP if top else 0)
  out.paste(image, (0, y0))
  for i, line in enumerate(bottom):
    y = y0 + image.height + i * LINE
    colour = colours[i] if i < len(colours) else None
    x = GAP
    if colour is not None:
      draw.rectangle((x, y + 2, x + LINE - 5, y + LINE - 3), fill=colour)
      x += LINE
    draw.text((x, y), line, fill=TEXT, font=size)
  return out


def save_png(image: Image.Image, path: str | pathlib.Path) -> pathlib.Path:
  """Writes `image` to `path` (parent folders created) through a temporary file and a rename."""
  path = pathlib.Path(path)
  path.parent.mkdir(parents=True, exist_ok=True)
  fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f'.{path.name}.', suffix='.tmp')
  try:
    with os.fdopen(fd, 'wb') as f:
      image.save(f, format='PNG')
    os.chmod(tmp, 0o644)  # mkstemp creates 0600; pictures are for sharing
    os.replace(tmp, path)
  except BaseException:
    os.unlink(tmp)
    raise
  return path


def _canvas(rows: int, cols: int, cell: tuple[int, int], left: int = 0, below: int = 0) -> Image.Image:
  height, width = cell
  return Image.new('RGB', (left + cols * (width + GAP) + GAP, rows * (height + below + GAP) + GAP), BACKGROUND)


def cell_origin(row: int, col: int, cell: tuple[int, int], left: int = 0, below: int = 0) -> tuple[int, int]:
  """(x, y) of the top-left pixel of grid cell (row, col): cells of `cell` = (h, w) pixels, GAP apart, after a
  `left` margin, each row with `below` pixels of caption under its cells."""
  height, width = cell
  return left + GAP + col * (width + GAP), GAP + row * (height + below + GAP)


def _paste(canvas: Image.Image, image: np.ndarray, row: int, col: int, left: int = 0, below: int = 0) -> None:
  canvas.paste(Image.fromarray(image), cell_origin(row, col, image.shape[:2], left, below))


def _framed(image: np.ndarray, colour: tuple[int, int, int]) -> np.ndarray:
  """uint8 `[H, W, 3]` -> `[H + 2B, W + 2B, 3]` with a border of `colour`."""
  out = np.empty((image.shape[0] + 2 * BORDER, image.shape[1] + 2 * BORDER, 3), np.uint8)
  out[...] = colour
  out[BORDER:-BORDER, BORDER:-BORDER] = image
  return out


def ranking_sheet(query_clips: np.ndarray, gallery_frames: np.ndarray, status: np.ndarray, *,
                  row_labels: Sequence[Sequence[str]] | None = None,
                  captions: Sequence[Sequence[Sequence[str]]] | None = None) -> Image.Image:
  """Ranked-results grid: row q holds query q's frames, then its ranked gallery images, framed by status.

  Args:
    query_clips: uint8 `[Q, T, H, W, 3]`, the query clips (shown unframed, white border).
    gallery_frames: uint8 `[Q, K, H, W, 3]`, one frame of each of the top-K gallery tracklets in rank order.
    status: int `[Q, K]`: MATCH (1, green), NON_MATCH (0, red) or JUNK (-1, grey).
    row_labels: per query, lines written in a ROW_LABEL_WIDTH left margin (none: no margin).
    captions: per query and gallery item, CAPTION_LINES lines written under the thumbnail (none: no room).

  Returns:
    RGB image of Q rows and T + K cells of (H + 6) x (W + 6) pixels (one blank cell between the parts), at
    `cell_origin(row, col, cell, left, below)` with left = ROW_LABEL_WIDTH if row_labels else 0 and below =
    CAPTION_LINES * LINE if captions else 0.

  Raises:
    ValueError: shapes that do not agree.
  """
  q, t, height, width, _ = query_clips.shape
  if gallery_frames.shape[:2] != status.shape or gallery_frames.shape[0] != q or \
      gallery_frames.shape[2:] != (height, width, 3):
    raise ValueError(f'ranking_sheet: query clips {query_clips.shape}, gallery frames '
                     f'{gallery_frames.shape} and status {status.shape} do not agree')
  k = status.shape[1]
  left = ROW_LABEL_WIDTH if row_labels else 0
  below = CAPTION_LINES * LINE if captions else 0
  cell = (height + 2 * BORDER, width + 2 * BORDER)
  canvas = _canvas(q, t + 1 + k, cell, left, below)
  draw = ImageDraw.Draw(canvas)
  for row in range(q):
    for col in range(t):
      _paste(canvas, _framed(query_clips[row, col], BACKGROUND), row, col, left, below)
    for col in range(k):
      _paste(canvas, _framed(gallery_frames[row, col], STATUS_COLOURS[int(status[row, col])]), row, t + 1 + col,
             left, below)
      for i, line in enumerate(captions[row][col] if captions else ()):
        x, y = cell_origin(row, t + 1 + col, cell, left, below)
        draw.text((x, y + cell[0] + i * LINE), line, fill=TEXT, font=font())
    for i, line in enumerate(row_labels[row] if row_labels else ()):
      draw.text((GAP, cell_origin(row, 0, cell, left, below)[1] + i * LINE), line, fill=TEXT, font=font())
  return canvas


def ranking_status(q_pid: int, q_camid: int, g_pids: np.ndarray, g_camids: np.ndarray,
                   convention: str) -> np.ndarray:
  """MATCH / NON_MATCH / JUNK int `[K]` of gallery items for one query under `convention`'s junk rule."""
  rule = metrics.get_convention(convention)
  same = g_pids == q_pid
  junk = same & (g_camids == q_camid)
  if rule.unlabeled_junk:
    junk |= g_pids == -1
  return np.where(junk, JUNK, np.where(same, MATCH, NON_MATCH))


def write_ranking_sheet(dataset: VideoReIDDataset, features: np.ndarray, path: str | pathlib.Path, *,
                        convention: str, distance: str, query_positions: Sequence[int],
                        config: ml_collections.ConfigDict, top_k: int = 10, title: str = '',
                        row_notes: Sequence[str] | None = None) -> pathlib.Path:
  """Ranks chosen queries against `convention`'s gallery and writes their labelled ranked-results sheet.

  Each row is labelled with its note (why it was chosen), its position in the query set, pid, camera, AP under
  `convention` (`metrics.scores_from_distances`) and the rank of its first true match in the full ranking
  (junk counted, as the thumbnails are numbered); each thumbnail with its rank, pid, camera and distance.

  Args:
    dataset: the dataset index; features: float `[N_test, D]` of `dataset.test`.
    path: PNG to write.
    convention: a key of `dataset.galleries`; distance: 'cosine' | 'euclidean'.
    query_positions: positions in `dataset.query` to show.
    config: reads seq_len, height, width (query clips: test-time RRS frames; gallery: middle frame).
    top_k: gallery tracklets per query (at most the gallery size).
    title: the sheet's first line (dataset, split, convention, clip selection, step).
    row_notes: one note per query row (e.g. 'best AP of 20').

  Raises:
    DatasetError: an unreadable frame. ValueError: unknown convention or distance.
  """
  gallery = np.asarray(dataset.galleries[convention])
  queries = np.asarray(dataset.query)[list(query_positions)]
  distances = np.asarray(metrics.distance_matrix(features[queries], features[gallery], distance=distance))
  order = np.argsort(distances, axis=1, kind='stable')
  k = min(top_k, len(gallery))
  g_pids = np.asarray([t.pid for t in dataset.test])[gallery]
  g_camids = np.asarray([t.camid for t in dataset.test])[gallery]
  q_pids = np.asarray([dataset.test[q].pid for q in queries])
  q_camids = np.asarray([dataset.test[q].camid for q in queries])
  ap = np.asarray(metrics.scores_from_distances(distances, q_pids, q_camids, g_pids, g_camids,
                                                convention=convention)['ap'])
  def frames(tracklet, indices):  # decoded and resized as the evaluation pipeline does
    return transforms.load_clip(tracklet.frames, tracklet.frames, indices, config.height, config.width)

  clips, tops, status, labels, captions = [], [], [], [], []
  for r, (position, query) in enumerate(zip(query_positions, queries)):
    tracklet = dataset.test[query]
    full = ranking_status(tracklet.pid, tracklet.camid, g_pids[order[r]], g_camids[order[r]], convention)
    first = np.flatnonzero(full == MATCH)
    clips.append(frames(tracklet, sampling.rrs_test(len(tracklet.frames), config.seq_len)))
    tops.append([frames(dataset.test[g], [len(dataset.test[g].frames) // 2])[0] for g in gallery[order[r, :k]]])
    status.append(full[:k])
    labels.append([row_notes[r] if row_notes else '', f'query {position}: pid {tracklet.pid}, cam {tracklet.camid}',
                   f'AP {100 * ap[r]:.1f}%',
                   f'first true match: rank {first[0] + 1}' if len(first) else 'no true match in gallery'])
    captions.append([[f'#{i + 1} pid {g_pids[j]}', f'cam {g_camids[j]}', f'd {distances[r, j]:.3f}']
                     for i, j in enumerate(order[r, :k])])
  grid = ranking_sheet(np.asarray(clips), np.asarray(tops), np.asarray(status), row_labels=labels,
                       captions=captions)
  top = [title, f'each row: a query clip ({config.seq_len} frames), then its top {k} of {len(gallery)} gallery '
                f'tracklets (middle frame), nearest first']
  return save_png(add_text(grid, top, [text for _, text in LEGEND],
                           colours=[STATUS_COLOURS[key] for key, _ in LEGEND]), path)


@functools.partial(jax.jit, static_argnums=0)
def _intermediates(model: nn.Module, variables: Any, clips: jnp.ndarray) -> Any:
  _, state = model.apply(variables, pipeline.normalize(clips), train=False, mutable=['intermediates'])
  return state['intermediates']


def clip_intermediates(model: nn.Module, variables: Any, clips: np.ndarray) -> dict[str, dict[str, np.ndarray]]:
  """The sown MAE / BME maps of uint8 clips `[B, T, H, W, 3]` (eval mode), as numpy float32.

  Returns:
    {'mae{s}': {'D1': `[B, T*h*w, T*h*w]`, ...}, 'bme{s}': {'M_f': `[B, T, h, w, C/2]`, ...}}.
  """
  tree = jax.device_get(_intermediates(model, variables, jnp.asarray(clips)))
  return {module: {name: np.asarray(value[0], np.float32) for name, value in maps.items()}
          for module, maps in tree.items()}


def map_grid(maps: Mapping[str, np.ndarray], seq_len: int, aspect: float) -> tuple[int, int]:
  """(h, w) of a stage's feature map from its sown maps of one clip (aspect = frame height / width).

  Raises:
    ValueError: no map, or a D^i key count that is no h x w grid of that aspect.
  """
  for name in ('M_f', 'M_b'):
    if name in maps:
      return tuple(maps[name].shape[1:3])
  if not maps:
    raise ValueError('map_grid: the stage sowed no D^i or M maps')
  area = next(iter(maps.values())).shape[-1] // seq_len
  h = int(round(np.sqrt(area * aspect)))
  if h < 1 or area % h:
    raise ValueError(f'map_grid: {area} positions per frame form no grid of aspect {aspect:.2f}')
  return h, area // h


def figure5_rows(maps: Mapping[str, np.ndarray], grid: tuple[int, int, int],
                 query: tuple[int, int, int]) -> list[tuple[str, np.ndarray]]:
  """(label, heat `[T, h, w]` in [0, 1]) rows of Fig. 5 for one clip's maps at one stage.

  Args:
    maps: D1 `[T*h*w, T*h*w]`, D2 `[h*w, T*h*w]`, D3 `[T, T*h*w]`, D4 `[1, T*h*w]`, M_f / M_b
      `[T, h, w, c]` (those present).
    grid: (T, h, w).
    query: the query position (t, y, x) on the feature map.
  """
  t_len, h, w = grid
  t, y, x = query
  rows_of = {'D1': t * h * w + y * w + x, 'D2': y * w + x, 'D3': t, 'D4': 0}
  rows = []
  for name, row in rows_of.items():
    if name in maps:
      rows.append((f'D^{name[1]}', maps[name][row].reshape(t_len, h, w)))
  for name in ('M_f', 'M_b'):
    if name in maps:
      rows.append((f'M^{name[2]}', np.linalg.norm(maps[name], axis=-1)))
  return [(label, heat / max(float(heat.max()), 1e-12)) for label, heat in rows]


def _overlay(frame: np.ndarray, heat: np.ndarray, alpha: float = 0.5) -> np.ndarray:
  """Blends the jet-coloured heat `[h, w]` in [0, 1], resized bilinearly, over uint8 `[H, W, 3]`."""
  size = (frame.shape[1], frame.shape[0])
  up = np.asarray(Image.fromarray(heat.astype(np.float32)).resize(size, Image.BILINEAR))
  coloured = colormaps['jet'](np.clip(up, 0.0, 1.0))[..., :3] * 255
  return np.round((1 - alpha) * frame + alpha * coloured).astype(np.uint8)


def figure5(frames: np.ndarray, rows: Sequence[tuple[str, np.ndarray]],
            query: tuple[int, int, int]) -> Image.Image:
  """The Fig. 5 sheet: the T frames (query position marked), then one overlaid row per map.

  Args:
    frames: uint8 `[T, H, W, 3]`.
    rows: output of `figure5_rows`, heats `[T, h, w]`.
    query: (t, y, x) on the `h x w` grid, marked by a white box on frame t.
  """
  t_len, height, width, _ = frames.shape
  canvas = _canvas(1 + len(rows), t_len, (height, width), LABEL_WIDTH)
  draw = ImageDraw.Draw(canvas)
  for col in range(t_len):
    _paste(canvas, frames[col], 0, col, LABEL_WIDTH)
  for r, (label, heat) in enumerate(rows, start=1):
    draw.text((4, GAP + r * (height + GAP) + height // 2 - 5), label, fill=(0, 0, 0))
    for col in range(t_len):
      _paste(canvas, _overlay(frames[col], heat[col]), r, col, LABEL_WIDTH)
  if rows:
    h, w = rows[0][1].shape[1:]
    t, y, x = query
    left = LABEL_WIDTH + GAP + t * (width + GAP)
    box = (left + x * width / w, GAP + y * height / h, left + (x + 1) * width / w, GAP + (y + 1) * height / h)
    draw.rectangle(box, outline=(255, 255, 255), width=2)
  draw.text((4, GAP + height // 2 - 5), 'frames', fill=(0, 0, 0))
  return canvas


def colour_bar(width: int) -> Image.Image:
  """The jet scale of the heat overlays, `width` pixels wide, labelled 0 and 1 (the row's maximum)."""
  ramp = colormaps['jet'](np.linspace(0.0, 1.0, width))[None, :, :3] * 255
  bar = Image.fromarray(np.repeat(np.round(ramp).astype(np.uint8), LINE, axis=0))
  return add_text(bar, [], ['colour: 0 (blue) .. 1 (red) = the map value / its maximum over the clip'])


def _stack(*images: Image.Image) -> Image.Image:
  """Images one under the other, left-aligned, on a white canvas as wide as the widest."""
  out = Image.new('RGB', (max(i.width for i in images), sum(i.height for i in images)), BACKGROUND)
  y = 0
  for image in images:
    out.paste(image, (0, y))
    y += image.height
  return out


def write_figure5(model: nn.Module, variables: Any, dataset: VideoReIDDataset,
                  config: ml_collections.ConfigDict, tracklet: int, directory: str | pathlib.Path,
                  query: tuple[int, int, int] | None = None, step: int | None = None) -> list[pathlib.Path]:
  """Writes `fig5_t{tracklet}_stage{s}.png` for each MAE/BME insertion stage s of the model.

  The clip is `dataset.test[tracklet]`'s test-time RRS clip at config.height x width. Above the grid: a title
  naming the tracklet (pid, camera), its frame numbers, the stage and the checkpoint `step`, and where the
  query position is; under it the colour bar.

  Args:
    model, variables: the network (sowing 'mae{s}' / 'bme{s}' maps) and its variables.
    dataset, config: the dataset index; config reads seq_len, height, width.
    tracklet: index into `dataset.test`.
    directory: output folder.
    query: (t, y, x) on each stage's grid (clamped to it); default the centre of the middle frame.

  Returns:
    The PNG paths, in stage order.

  Raises:
    DatasetError: an unreadable frame. ValueError: the model sows no MAE or BME map.
  """
  frames_of = dataset.test[tracklet].frames
  indices = sampling.rrs_test(len(frames_of), config.seq_len)
  clip = transforms.load_clip(frames_of, frames_of, indices, config.height, config.width)
  tree = clip_intermediates(model, variables, clip[None])
  stages = sorted({int(module[3:]) for module in tree if module[:3] in ('mae', 'bme')})
  if not stages:
    raise ValueError(f'{type(model).__name__} sows no MAE or BME maps (model.mae_stages / bme_stages empty)')
  paths = []
  for stage in stages:
    modules = (tree.get(f'mae{stage}', {}), tree.get(f'bme{stage}', {}))
    maps = {name: value[0] for module in modules for name, value in module.items()}
    h, w = map_grid(maps, config.seq_len, config.height / config.width)
    t_len = config.seq_len
    where = (t_len // 2, h // 2, w // 2) if query is None else (
        min(query[0], t_len - 1), min(query[1], h - 1), min(query[2], w - 1))
    grid = figure5(clip, figure5_rows(maps, (t_len, h, w), where), where)
    track = dataset.test[tracklet]
    at = '' if step is None else f', checkpoint step {step}'
    top = [f'Fig. 5: {dataset.name} test tracklet {tracklet} (pid {track.pid}, cam {track.camid}), frames '
           f'{", ".join(str(int(i)) for i in indices)} of {len(frames_of)}; after layer{stage}{at}',
           f'white box: the query position, clip frame {where[0]} (tracklet frame {int(indices[where[0]])}), row '
           f'{where[1]}, column {where[2]} of the {h}x{w} feature map',
           'D^1: its attention over every position of the clip; D^2: of its (row, column) over the frames; D^3: of '
           'its frame; D^4: of the whole clip',
           'M^f, M^b: forward and backward motion (channel L2 norm)']
    sheet = _stack(add_text(grid, top), colour_bar(min(grid.width - 2 * GAP, 256)))
    paths.append(save_png(sheet, pathlib.Path(directory) / f'fig5_t{tracklet}_stage{stage}.png'))
  return paths
