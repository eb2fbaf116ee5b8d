"""Clip decoding and clip-consistent augmentation, as grain transforms with explicit RNGs (DESIGN.md section 2).

Training (`TrainClip`, a grain RandomMap): RRS frame choice, PIL decode, resize to H x W (bilinear, the
torchvision `Resize` default), zero-pad `pad` pixels + random H x W crop, horizontal flip, random erasing
(Zhong et al., "Random Erasing Data Augmentation", AAAI 2020, in the ReID form of AP3D / the LSTRL author code:
area uniform in `erasing_area` of the frame, aspect uniform in `erasing_aspect`, up to 100 attempts, one
rectangle). Every random draw is made once per clip from the clip's own generator and applied identically to all
T frames, since BME reads frame-to-frame differences. The erased rectangle is filled with the ImageNet mean
pixel in uint8 (124, 116, 104), which `normalize` maps to ~0, as the reference erases after normalisation.

Evaluation (`EvalClip`, a grain Map): decode and resize only.

Frames arrive either as file paths (folder layout) or as the encoded PNG/JPEG bytes of a packed dataset; both
decode through PIL. A frame PIL cannot read (missing, truncated, not an image) raises `DatasetError` naming the
file: the pipeline stops rather than skipping, since a skipped clip would change the batch composition.
"""

from __future__ import annotations

import dataclasses
import io
import math
from typing import Any, Sequence

import grain
import ml_collections
import numpy as np
import PIL.Image

from lstrl_jax.data import sampling
from lstrl_jax.data.index import DatasetError

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
MEAN_PIXEL = np.round(np.asarray(IMAGENET_MEAN) * 255).astype(np.uint8)  # (124, 116, 104)
_ERASING_ATTEMPTS = 100


def open_frame(source: str | bytes, name: str, height: int, width: int) -> PIL.Image.Image:
  """Decodes one frame with PIL and resizes it (bilinear) to height x width.

  Args:
    source: a file path, or the encoded PNG/JPEG bytes of a packed record.
    name: what to call the frame in an error message (its path, or packed record and original path).
    height, width: output size in pixels.

  Returns:
    The decoded RGB image.

  Raises:
    DatasetError: the file is missing, truncated or not an image; the message names `name`.
  """
  try:
    with PIL.Image.open(io.BytesIO(source) if isinstance(source, bytes) else source) as image:
      image = image.convert('RGB') if image.mode != 'RGB' else image
      image.load()
      if image.size != (width, height):
        image = image.resize((width, height), PIL.Image.BILINEAR)
      return image
  except (OSError, SyntaxError, ValueError) as e:  # PIL's errors for missing/truncated/unknown files.
    raise DatasetError(f'{name}: cannot decode image ({e}); expected a readable PNG/JPEG frame') from e


@dataclasses.dataclass(frozen=True)
class AugmentConfig:
  """Augmentation settings (config.augment as plain values; picklable into grain workers).

  Attributes:
    pad: zero padding in pixels before the random crop.
    flip_prob: probability of a horizontal flip.
    erasing_prob: probability of random erasing.
    erasing_area: (min, max) erased fraction of the frame area.
    erasing_aspect: (min, max) aspect ratio h / w of the erased rectangle.
  """

  pad: int = 10
  flip_prob: float = 0.5
  erasing_prob: float = 0.5
  erasing_area: tuple[float, float] = (0.02, 0.4)
  erasing_aspect: tuple[float, float] = (0.3, 3.3)

  @classmethod
  def from_config(cls, augment: ml_collections.ConfigDict) -> AugmentConfig:
    """Reads config.augment (keys as in configs/default.py)."""
    return cls(int(augment.pad), float(augment.flip_prob), float(augment.erasing_prob),
               tuple(augment.erasing_area), tuple(augment.erasing_aspect))


@dataclasses.dataclass(frozen=True)
class ClipAugmentation:
  """The random draws of one clip, shared by all its frames.

  Attributes:
    top, left: crop offset in the padded frame, each in 0..2*pad.
    flip: whether to flip horizontally.
    erase: (y, x, h, w) of the erased rectangle in the cropped, flipped frame, or None.
  """

  top: int
  left: int
  flip: bool
  erase: tuple[int, int, int, int] | None


def draw_augmentation(rng: np.random.Generator, height: int, width: int, config: AugmentConfig) -> ClipAugmentation:
  """Draws one clip's crop, flip and erasing parameters, in that order, from `rng`."""
  top, left = (int(v) for v in rng.integers(0, 2 * config.pad + 1, size=2))
  flip = bool(rng.random() < config.flip_prob)
  erase = None
  if rng.random() < config.erasing_prob:
    for _ in range(_ERASING_ATTEMPTS):
      area = rng.uniform(*config.erasing_area) * height * width
      aspect = rng.uniform(*config.erasing_aspect)
      h, w = round(math.sqrt(area * aspect)), round(math.sqrt(area / aspect))
      if h < height and w < width:
        erase = (int(rng.integers(0, height - h + 1)), int(rng.integers(0, width - w + 1)), h, w)
        break
  return ClipAugmentation(top, left, flip, erase)


def crop_and_flip(image: PIL.Image.Image, params: ClipAugmentation, pad: int) -> PIL.Image.Image:
  """Zero-pads `pad` pixels, crops the frame size at (top, left) of the padded frame, then flips if drawn.

  PIL's crop fills the part of the box outside the image with zeros, which is exactly the zero padding.
  """
  width, height = image.size
  x0, y0 = params.left - pad, params.top - pad
  image = image.crop((x0, y0, x0 + width, y0 + height))
  return image.transpose(PIL.Image.FLIP_LEFT_RIGHT) if params.flip else image


def erase(clip: np.ndarray, params: ClipAugmentation) -> np.ndarray:
  """Fills the drawn rectangle of every frame of uint8 `[T, H, W, 3]` with MEAN_PIXEL, in place; returns clip."""
  if params.erase is not None:
    y, x, h, w = params.erase
    clip[:, y:y + h, x:x + w] = MEAN_PIXEL
  return clip


def load_clip(
    frames: Sequence[Any],
    names: Sequence[str],
    indices: np.ndarray,
    height: int,
    width: int,
    augment: tuple[ClipAugmentation, int] | None = None,
) -> np.ndarray:
  """Decodes the frames `indices` of a tracklet (each distinct frame once), optionally cropped and flipped.

  Args:
    frames: the tracklet's frames (paths or encoded bytes) in temporal order.
    names: the frames' names for error messages, same length.
    indices: int `[T]` frame indices (repeats allowed).
    height, width: output size.
    augment: (params, pad) to apply `crop_and_flip` to every frame, or None (resize only).

  Returns:
    uint8 `[T, height, width, 3]`.

  Raises:
    DatasetError: as `open_frame`.
  """
  indices = np.asarray(indices)
  clip = np.empty((len(indices), height, width, 3), np.uint8)
  for i in np.unique(indices):
    image = open_frame(frames[i], names[i], height, width)
    if augment is not None:
      image = crop_and_flip(image, *augment)
    clip[indices == i] = np.asarray(image)
  return clip


class TrainClip(grain.transforms.RandomMap):
  """Tracklet record -> augmented training clip, all draws from the record's clip RNG.

  Input element: {'frames': paths or bytes, 'names': str per frame, 'pid': int, 'camid': int}.
  Output: {'clips': uint8 `[T, H, W, 3]`, 'pids': int32 `[]`, 'camids': int32 `[]`}.
  """

  def __init__(self, seq_len: int, height: int, width: int, augment: AugmentConfig):
    self.seq_len, self.height, self.width, self.augment = seq_len, height, width, augment

  def random_map(self, element: dict[str, Any], rng: np.random.Generator) -> dict[str, np.ndarray]:
    """RRS frame choice, then `draw_augmentation` (same rng, in that order), decode + augment every frame."""
    indices = sampling.rrs_train(len(element['frames']), self.seq_len, rng)
    params = draw_augmentation(rng, self.height, self.width, self.augment)
    clip = load_clip(element['frames'], element['names'], indices, self.height, self.width,
                     (params, self.augment.pad))
    return {
        'clips': erase(clip, params),
        'pids': np.int32(element['pid']),
        'camids': np.int32(element['camid']),
    }


class EvalClip(grain.transforms.Map):
  """Evaluation row -> resized clip; padding rows (mask False) give zeros without decoding.

  Input element: {'frames', 'names', 'indices': int `[T]`, 'tracklet': int, 'mask': bool}.
  Output: {'clips': uint8 `[T, H, W, 3]`, 'tracklet': int32 `[]`, 'mask': bool `[]`}.
  """

  def __init__(self, height: int, width: int):
    self.height, self.width = height, width

  def map(self, element: dict[str, Any]) -> dict[str, np.ndarray]:
    """Decodes and resizes the row's frames."""
    indices = element['indices']
    if element['mask']:
      clip = load_clip(element['frames'], element['names'], indices, self.height, self.width)
    else:
      clip = np.zeros((len(indices), self.height, self.width, 3), np.uint8)
    return {'clips': clip, 'tracklet': np.int32(element['tracklet']), 'mask': np.bool_(element['mask'])}
