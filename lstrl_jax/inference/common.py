"""What embed, search and export share: the trained model, tracklet folders and the features file.

Features file (DESIGN.md section 6): `.npz` with `features` float32 `[N, D]` (f_bn, not normalised), `names`
str `[N]`, `frame_paths` str `[F]` and `frame_offsets` int64 `[N + 1]` (tracklet i is
frame_paths[o[i]:o[i + 1]]), `clip_selection`, `step` (checkpoint step), `fingerprint` (of the config), `seq_len`,
`height`, `width`, and `pids` / `camids` int64 `[N]` where known. Written atomically (temporary file, rename).
"""

from __future__ import annotations

import hashlib
import json
import os
import pathlib
import tempfile
from typing import Any, Callable, Mapping, NamedTuple

import flax.linen as nn
import ml_collections
import numpy as np
import PIL.Image

from lstrl_jax.data.datasets import common as dataset_common
from lstrl_jax.data.datasets.folders import natural_key
from lstrl_jax.data.index import DatasetError, Tracklet, VideoReIDDataset
from lstrl_jax.evaluation import evaluator
from lstrl_jax.models.lstrl import model_from_config
from lstrl_jax.train.checkpoint import load_for_eval

RUNTIME_KEYS = ('data_dir', 'packed_dir', 'num_workers', 'eval_batch_size', 'stop_at_step', 'log_every_steps')
FEATURE_KEYS = ('features', 'names', 'frame_paths', 'frame_offsets', 'clip_selection', 'step', 'fingerprint')


class FeaturesError(ValueError):
  """A features file is missing, malformed or from another model; the message is one line."""


class Trained(NamedTuple):
  """A trained model read from a checkpoint: config, module, variables ({'params', 'batch_stats'}), step."""

  config: ml_collections.ConfigDict
  model: nn.Module
  variables: Any
  step: int


def fingerprint(config: ml_collections.ConfigDict) -> str:
  """16 hex digits of SHA-256 over the config's JSON without the keys that do not change the model's output
  (RUNTIME_KEYS: where the data lives, workers, batch size, logging). Two runs of one config share it."""
  values = json.loads(config.to_json())
  for key in RUNTIME_KEYS:
    values.pop(key, None)
  return hashlib.sha256(json.dumps(values, sort_keys=True).encode()).hexdigest()[:16]


def load_trained(path: str | pathlib.Path, overrides: Mapping[str, Any] | None = None) -> Trained:
  """Reads a checkpoint (workdir or step directory) and builds its model, without reading the dataset.

  The number of training identities comes from the classifier kernel, so own data need not be at hand.

  Raises:
    CheckpointError: missing or unreadable checkpoint. EvaluationError: unknown override key or variables
      that do not fit config.model.
  """
  config, variables, step = load_for_eval(path)
  evaluator.apply_overrides(config, overrides or {})
  num_classes = int(variables['params']['classifier']['kernel'].shape[-1])
  model = model_from_config(config.model, num_classes)
  evaluator.check_variables(model, variables, config, str(path))
  return Trained(config, model, variables, step)


def list_tracklets(root: str | pathlib.Path) -> tuple[list[str], list[tuple[str, ...]]]:
  """Every folder under `root` that directly holds image files is one tracklet, named by its relative path.

  Frames (.png/.jpg/.jpeg) are in natural order of their names; tracklets in natural order of their names.
  Only file headers are read here (PIL's lazy open), so a bad frame is found before any computation.

  Returns:
    (names, frames): tracklet names ('cam1/t7', '.' for `root` itself) and their frame paths.

  Raises:
    DatasetError: `root` missing, no image anywhere under it, or a frame PIL cannot read or of zero size
      (one line naming the file).
  """
  root = dataset_common.require_dir(pathlib.Path(root), 'a folder of tracklet folders of image frames')
  names, frames = [], []
  for folder, dirs, files in os.walk(root, followlinks=True):
    dirs[:] = [d for d in dirs if not d.startswith('.')]
    images = [f for f in files if not f.startswith('.') and f.lower().endswith(dataset_common.IMAGE_SUFFIXES)]
    if images:
      names.append(os.path.relpath(folder, root))
      frames.append(tuple(os.path.join(folder, f) for f in sorted(images, key=natural_key)))
  if not names:
    raise DatasetError(f'{root}: no .png/.jpg/.jpeg image in it or below it; expected tracklet folders of frames')
  order = sorted(range(len(names)), key=lambda i: natural_key(names[i]))
  names, frames = [names[i] for i in order], [frames[i] for i in order]
  for paths in frames:
    for path in paths:
      check_frame(path)
  return names, frames


def check_frame(path: str) -> None:
  """Raises DatasetError unless PIL reads `path`'s header and the image has at least one pixel."""
  try:
    with PIL.Image.open(path) as image:
      width, height = image.size
  except (OSError, SyntaxError, ValueError, PIL.Image.DecompressionBombError) as e:
    raise DatasetError(f'{path}: cannot read image ({type(e).__name__}: {e}); expected a PNG/JPEG frame') from e
  if width < 1 or height < 1:
    raise DatasetError(f'{path}: frame size {width}x{height}; expected at least 1x1 pixels')


def unlabelled_dataset(frames: list[tuple[str, ...]]) -> VideoReIDDataset:
  """Tracklets as the test set of a dataset (pid -1, camid 0, no query), for the evaluation pipeline."""
  test = tuple(Tracklet(f, -1, 0) for f in frames)
  return VideoReIDDataset(name='tracklets', train=(), test=test, query=np.zeros(0, np.int64), galleries={})


def _write_atomically(path: str | pathlib.Path, write: Callable[[Any], None]) -> pathlib.Path:
  """Calls `write(file)` on a temporary file beside `path`, then renames it to `path` (parents created)."""
  path = pathlib.Path(path)
  path.parent.mkdir(parents=True, exist_ok=True)
  fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f'.{path.name}.', suffix='.tmp')
  try:
    with os.fdopen(fd, 'wb') as f:
      write(f)
    os.chmod(tmp, 0o644)
    os.replace(tmp, path)
  except BaseException:
    os.unlink(tmp)
    raise
  return path


def write_features(path: str | pathlib.Path, arrays: Mapping[str, Any]) -> pathlib.Path:
  """Writes `arrays` as .npz at `path` atomically (temporary file in the same folder, then rename)."""
  return _write_atomically(path, lambda f: np.savez(f, **arrays))


def write_bytes(path: str | pathlib.Path, data: bytes) -> pathlib.Path:
  """Writes `data` to `path` atomically (an exported model)."""
  return _write_atomically(path, lambda f: f.write(data))


def first_line(error: BaseException) -> str:
  """The first line of an error's message, at most 300 characters (converter errors run long)."""
  lines = str(error).strip().splitlines()
  return (lines[0] if lines else '')[:300]


def read_features(path: str | pathlib.Path) -> dict[str, np.ndarray]:
  """Reads a features file and checks its keys and shapes (see the module docstring).

  Raises:
    FeaturesError: unreadable file, a missing key, or features / names / offsets that do not agree.
  """
  try:
    with np.load(path, allow_pickle=False) as data:
      arrays = {k: data[k] for k in data.files}
  except (OSError, ValueError, EOFError) as e:
    raise FeaturesError(f'{path}: cannot read features ({type(e).__name__}: {e}); expected an .npz from embed')
  missing = [k for k in FEATURE_KEYS if k not in arrays]
  if missing:
    raise FeaturesError(f'{path}: no {missing[0]!r}; expected the keys {", ".join(FEATURE_KEYS)} (written by embed)')
  features, names, offsets = arrays['features'], arrays['names'], arrays['frame_offsets']
  if features.ndim != 2 or len(names) != len(features) or len(offsets) != len(features) + 1:
    raise FeaturesError(f'{path}: features {features.shape}, names {names.shape}, frame_offsets {offsets.shape}; '
                        'expected [N, D], [N], [N + 1]')
  if not np.isfinite(features).all():
    raise FeaturesError(f'{path}: features hold NaN or infinity; expected finite values')
  return arrays
