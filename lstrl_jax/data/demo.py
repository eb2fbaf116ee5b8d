r"""Writes a small procedural two-camera video ReID dataset in the iLIDS-VID layout (no download needed).

  python -m lstrl_jax.data.demo --out data/demo [--num_persons 40 --frames 16 --seed 0]

Then `load_dataset('ilidsvid', 'data/demo')` (or 'demo') reads it, and `configs/demo.py` trains on it.

Each identity is a drawn pedestrian (PIL): head with hair, torso with an identity-specific shirt colour and
pattern (plain, horizontal or vertical stripes, two-tone, chest logo), arms, trousers or shorts, shoes,
sometimes a bag, and a body build. A tracklet walks: the figure drifts sideways, bobs, and swings its legs
and arms with a per-tracklet gait phase, in a random direction (mirrored view). The two cameras differ in
background (wall/sky, ground, texture), lighting (colour gain and brightness), person scale, and sensor
noise, so matching needs appearance that survives a camera change, as in real data. Identity cues persist
across cameras, so a model beats chance: a 3-layer CNN trained for 15 epochs on the 20 training identities
of a default demo split reaches cross-camera R-1 of about 97 % on the 20 unseen ones (chance 5 %). Everything is drawn from `np.random.default_rng` seeded with (seed, person,
camera): the output is a pure function of the flags.

Layout written under --out (as i-LIDS-VID, see lstrl_jax/data/datasets/ilidsvid.py):
  i-LIDS-VID/sequences/cam{1,2}/personNNN/cam{1,2}_personNNN_FFFFF.png  (frame numbers start at random)
  train-test people splits/train_test_splits_ilidsvid.mat   `ls_set` [10, num_persons], 1-based, float64
  demo.json                                                 the generation flags (MANIFEST)
The dataset is written to a temporary sibling folder `.<out>.partial-<host>-<pid>-*` and renamed into place,
so an interrupted run leaves nothing at --out; the partial folder of a generator killed outright (kill -9) is
removed by the next run on the same host once its pid is gone. Running the command again on a finished folder with the same flags leaves it as it is (the
output is a pure function of the flags); any other existing --out is refused.
"""

from __future__ import annotations

import json
import os
import pathlib
import glob
import io
import shutil
import socket
import tempfile
from typing import Sequence

import numpy as np
import scipy.io
from absl import flags
from PIL import Image, ImageDraw

from lstrl_jax import cli
from lstrl_jax.data.index import DatasetError

NUM_SPLITS = 10
MANIFEST = 'demo.json'  # the generation flags, written last: a finished demo dataset holds it
_SKIN_LIGHT, _SKIN_DARK = (241, 194, 167), (89, 57, 42)
_PATTERNS = ('plain', 'hstripes', 'vstripes', 'two_tone', 'logo')
_CAMERAS = (  # background top, ground, texture colours; lighting gain (RGB); person scale; noise std
    dict(top=(150, 160, 170), ground=(105, 100, 95), texture=(120, 128, 140), gain=(1.05, 1.0, 0.95),
         scale=1.0, noise=3.0),
    dict(top=(70, 95, 70), ground=(140, 130, 105), texture=(55, 80, 60), gain=(0.8, 0.85, 1.0),
         scale=0.9, noise=5.0),
)


def _colour(rng: np.random.Generator, low: int = 20, high: int = 235) -> tuple[int, int, int]:
  return tuple(int(c) for c in rng.integers(low, high, size=3))


def identity(rng: np.random.Generator) -> dict:
  """Samples one person's appearance: clothing colours/pattern, skin, hair, build, bag."""
  skin = np.array(_SKIN_LIGHT) + rng.uniform() * (np.array(_SKIN_DARK) - np.array(_SKIN_LIGHT))
  return dict(
      shirt=_colour(rng), accent=_colour(rng), trousers=_colour(rng, 10, 160), skin=tuple(int(c) for c in skin),
      hair=_colour(rng, 5, 120), shoes=_colour(rng, 0, 80), pattern=_PATTERNS[rng.integers(len(_PATTERNS))],
      shorts=bool(rng.random() < 0.3), bag=_colour(rng) if rng.random() < 0.4 else None,
      width=float(rng.uniform(0.85, 1.15)), height=float(rng.uniform(0.92, 1.05)),
  )


def _background(camera: dict, rng: np.random.Generator, size: tuple[int, int]) -> Image.Image:
  """Vertical gradient wall/sky, a ground band, and camera-specific texture blocks at random offsets."""
  h, w = size
  horizon = int(h * rng.uniform(0.68, 0.78))
  t = np.linspace(0.0, 1.0, h)[:, None, None]
  top, ground = np.array(camera['top'], float), np.array(camera['ground'], float)
  image = np.where(np.arange(h)[:, None, None] < horizon, top * (1.1 - 0.3 * t), ground * (0.9 + 0.2 * t))
  canvas = Image.fromarray(np.broadcast_to(image, (h, w, 3)).clip(0, 255).astype(np.uint8))
  draw = ImageDraw.Draw(canvas)
  for _ in range(4):
    x, y = rng.uniform(-0.2, 1.0) * w, rng.uniform(0.0, 0.6) * h
    draw.rectangle([x, y, x + rng.uniform(0.15, 0.4) * w, y + rng.uniform(0.08, 0.2) * h], fill=camera['texture'])
  return canvas


def _torso(draw: ImageDraw.ImageDraw, person: dict, box: list[float]) -> None:
  """Shirt with the identity's pattern inside `box` = [x0, y0, x1, y1]."""
  x0, y0, x1, y1 = box
  draw.rectangle(box, fill=person['shirt'])
  pattern, accent = person['pattern'], person['accent']
  if pattern == 'hstripes':
    step = (y1 - y0) / 6
    for k in range(0, 6, 2):
      draw.rectangle([x0, y0 + k * step, x1, y0 + (k + 1) * step], fill=accent)
  elif pattern == 'vstripes':
    step = (x1 - x0) / 5
    for k in range(1, 5, 2):
      draw.rectangle([x0 + k * step, y0, x0 + (k + 1) * step, y1], fill=accent)
  elif pattern == 'two_tone':
    draw.rectangle([x0, (y0 + y1) / 2, x1, y1], fill=accent)
  elif pattern == 'logo':
    cx, cy, r = (x0 + x1) / 2, y0 + (y1 - y0) * 0.35, (x1 - x0) * 0.2
    draw.rectangle([cx - r, cy - r, cx + r, cy + r], fill=accent)


def draw_frame(person: dict, camera: dict, background: Image.Image, t: float, gait: dict) -> np.ndarray:
  """Draws one frame of a walking figure over `background`.

  Args:
    person: appearance from `identity`.
    camera: an entry of _CAMERAS.
    background: the tracklet's background, `[H, W]` RGB image (copied, not modified).
    t: time in frames from the tracklet start.
    gait: per-tracklet motion {'phase', 'period', 'drift', 'x0'} (radians, frames, px/frame, px).

  Returns:
    uint8 `[H, W, 3]` before lighting and noise.
  """
  canvas = background.copy()
  draw = ImageDraw.Draw(canvas)
  w, h = canvas.size
  s = h / 128.0 * camera['scale'] * person['height']  # vertical unit: the figure is ~120 units tall
  sx = w / 64.0 * camera['scale'] * person['width']
  swing = np.sin(gait['phase'] + 2 * np.pi * t / gait['period'])
  cx = w / 2 + gait['x0'] + gait['drift'] * t
  top = h - 4 * h / 128.0 - 120 * s + abs(swing) * 1.5 * s  # feet near the bottom; bob with the stride
  hip, shoulder = top + 66 * s, top + 24 * s
  leg = 50 * s
  for side, sign in ((-1, 1), (1, -1)):  # legs swing in antiphase
    hx, fx = cx + side * 5 * sx, cx + side * 5 * sx + sign * swing * 11 * sx
    knee = (hx + fx) / 2, hip + leg / 2
    lower = person['skin'] if person['shorts'] else person['trousers']
    draw.line([(hx, hip), knee], fill=person['trousers'], width=max(1, int(8 * sx)))
    draw.line([knee, (fx, hip + leg)], fill=lower, width=max(1, int(7 * sx)))
    draw.ellipse([fx - 5 * sx, hip + leg - 3 * s, fx + 5 * sx, hip + leg + 2 * s], fill=person['shoes'])
  for side, sign in ((-1, -1), (1, 1)):  # arms swing against the legs
    ax = cx + side * 13 * sx
    hand = (ax + sign * swing * 7 * sx, shoulder + 38 * s)
    draw.line([(ax, shoulder + 3 * s), hand], fill=person['shirt'], width=max(1, int(6 * sx)))
    draw.ellipse([hand[0] - 3 * sx, hand[1] - 3 * s, hand[0] + 3 * sx, hand[1] + 3 * s], fill=person['skin'])
  _torso(draw, person, [cx - 12 * sx, shoulder, cx + 12 * sx, hip + 4 * s])
  if person['bag'] is not None:
    draw.rectangle([cx + 10 * sx, shoulder + 8 * s, cx + 17 * sx, shoulder + 34 * s], fill=person['bag'])
  draw.rectangle([cx - 3 * sx, shoulder - 5 * s, cx + 3 * sx, shoulder + 1 * s], fill=person['skin'])  # neck
  draw.ellipse([cx - 9 * sx, top + 2 * s, cx + 9 * sx, shoulder - 3 * s], fill=person['skin'])
  draw.chord([cx - 9.5 * sx, top, cx + 9.5 * sx, top + 16 * s], 180, 360, fill=person['hair'])
  return np.asarray(canvas)


def tracklet(person: dict, camid: int, num_frames: int, size: tuple[int, int],
             rng: np.random.Generator) -> list[np.ndarray]:
  """`num_frames` uint8 `[H, W, 3]` frames of `person` walking in camera `camid` (0 or 1)."""
  camera = _CAMERAS[camid]
  background = _background(camera, rng, size)
  gait = dict(phase=rng.uniform(0, 2 * np.pi), period=rng.uniform(7, 11), drift=rng.uniform(-0.4, 0.4),
              x0=rng.uniform(-3, 3))
  gain = np.array(camera['gain']) * rng.uniform(0.85, 1.15)
  mirror = rng.random() < 0.5  # walking direction: the whole view is mirrored
  frames = []
  for t in range(num_frames):
    image = draw_frame(person, camera, background, float(t), gait)
    image = (image[:, ::-1] if mirror else image) * gain
    image = image + rng.normal(0.0, camera['noise'], image.shape)
    frames.append(image.clip(0, 255).astype(np.uint8))
  return frames


MAT_DESCRIPTION = b'MATLAB 5.0 MAT-file, written by lstrl_jax.data.demo'


def write_mat(path: pathlib.Path, arrays: dict[str, np.ndarray]) -> None:
  """`scipy.io.savemat(path, arrays)` with a fixed 116-byte description in the MAT 5 header.

  scipy writes its call time into that free-text field ('Created on: ...'), so two equal generations a
  second apart differed in this file; readers use only the version and endian bytes after it.
  """
  buffer = io.BytesIO()
  scipy.io.savemat(buffer, arrays)
  path.write_bytes(MAT_DESCRIPTION.ljust(116) + buffer.getvalue()[116:])


def generate(out: str | pathlib.Path, *, num_persons: int = 40, frames: int = 16, seed: int = 0,
             height: int = 128, width: int = 64, exist_ok: bool = False) -> pathlib.Path:
  """Writes the demo dataset to `out` atomically (temporary sibling folder, then rename).

  Args:
    out: destination folder; must not exist yet, unless `exist_ok` and it holds this very dataset.
    num_persons: identities (>= 2), each with one tracklet per camera; half are test persons per split.
    frames: frames per tracklet (>= 1).
    seed: seed of every random choice; equal flags give byte-identical files.
    height, width: frame size in pixels (H x W, default 128 x 64).
    exist_ok: accept an existing `out` whose MANIFEST records these same flags, and leave it untouched.

  Returns:
    The path written (or, with `exist_ok`, found).

  Raises:
    DatasetError: `out` already exists (with `exist_ok`: and is not the demo dataset of these flags), or a
      size/count is out of range.
  """
  out = pathlib.Path(out)
  manifest = dict(num_persons=num_persons, frames=frames, seed=seed, height=height, width=width)
  if out.exists():
    if exist_ok and _read_manifest(out) == manifest:
      return out
    expected = 'the demo dataset of these flags' if exist_ok else 'a new folder for the demo dataset'
    raise DatasetError(f'{out}: already exists; expected {expected} (remove it first)')
  if num_persons < 2 or frames < 1 or height < 16 or width < 8:
    raise DatasetError(f'{out}: need num_persons >= 2, frames >= 1, height >= 16, width >= 8')
  out.parent.mkdir(parents=True, exist_ok=True)
  remove_stale_partials(out)
  staging = pathlib.Path(tempfile.mkdtemp(prefix=f'{_partial_prefix(out)}{socket.gethostname()}-{os.getpid()}-',
                                          dir=out.parent))
  try:
    for index in range(num_persons):
      person = identity(np.random.default_rng([seed, index]))
      for camid in (0, 1):
        rng = np.random.default_rng([seed, index, camid + 1])
        folder = staging / 'i-LIDS-VID' / 'sequences' / f'cam{camid + 1}' / f'person{index + 1:03d}'
        folder.mkdir(parents=True)
        start = int(rng.integers(1, 500))
        for t, image in enumerate(tracklet(person, camid, frames, (height, width), rng)):
          name = f'cam{camid + 1}_person{index + 1:03d}_{start + t:05d}.png'
          Image.fromarray(image).save(folder / name)
    split_rng = np.random.default_rng([seed, num_persons, NUM_SPLITS])
    ls_set = np.stack([split_rng.permutation(num_persons) + 1 for _ in range(NUM_SPLITS)]).astype(np.float64)
    (staging / 'train-test people splits').mkdir()
    write_mat(staging / 'train-test people splits' / 'train_test_splits_ilidsvid.mat', {'ls_set': ls_set})
    (staging / MANIFEST).write_text(json.dumps(manifest, indent=2) + '\n')
    os.chmod(staging, 0o755)
    staging.rename(out)
  except BaseException:
    shutil.rmtree(staging, ignore_errors=True)
    raise
  return out


def _partial_prefix(out: pathlib.Path) -> str:
  return f'.{out.name}.partial-'


def _process_alive(pid: int) -> bool:
  try:
    os.kill(pid, 0)
  except ProcessLookupError:
    return False
  except PermissionError:  # alive, another user's
    return True
  return True


def remove_stale_partials(out: pathlib.Path) -> list[pathlib.Path]:
  """Removes the partial folders of `out` left by dead generators on this host; returns them.

  A partial folder is `.<out>.partial-<host>-<pid>-<random>`; one of another host, or of a live pid, is left
  alone (it may still be being written), as is any name this module did not make.
  """
  removed = []
  prefix = _partial_prefix(out)
  for entry in out.parent.glob(f'{glob.escape(prefix)}*'):
    fields = entry.name[len(prefix):].rsplit('-', 2)
    if len(fields) != 3 or not fields[1].isdigit():
      continue
    host, pid = fields[0], int(fields[1])
    if host == socket.gethostname() and not _process_alive(pid):
      shutil.rmtree(entry, ignore_errors=True)
      removed.append(entry)
  return removed


def _read_manifest(out: pathlib.Path) -> dict | None:
  """The generation flags recorded in `out`/MANIFEST, or None when there is no readable one."""
  try:
    return json.loads((out / MANIFEST).read_text())
  except (OSError, ValueError):
    return None


def define_flags() -> None:
  """Defines the command's flags (only when run as a program, so importing this module defines none)."""
  flags.DEFINE_string('out', None, 'Destination folder, e.g. data/demo: new, or a finished demo dataset of the '
                      'same flags (left as it is).', required=True)
  flags.DEFINE_integer('num_persons', 40, 'Number of identities.', lower_bound=2)
  flags.DEFINE_integer('frames', 16, 'Frames per tracklet.', lower_bound=1)
  flags.DEFINE_integer('seed', 0, 'Seed of every random choice.')
  flags.DEFINE_integer('height', 128, 'Frame height in pixels.', lower_bound=16)
  flags.DEFINE_integer('width', 64, 'Frame width in pixels.', lower_bound=8)


def main(argv: Sequence[str]) -> int:
  """Entry point: writes the dataset (or finds it already there) and prints its path; DatasetError -> one line
  on stderr, exit 1 (`cli.run`)."""
  del argv  # cli.run refuses positional arguments
  args = flags.FLAGS
  existed = pathlib.Path(args.out).exists()
  out = generate(args.out, num_persons=args.num_persons, frames=args.frames, seed=args.seed,
                 height=args.height, width=args.width, exist_ok=True)
  done = 'found (same flags, left as it is)' if existed else 'wrote'
  print(f'{done} {args.num_persons} persons x 2 cameras x {args.frames} frames in {out}')
  return 0


if __name__ == '__main__':
  cli.run(main, errors=(DatasetError,), define=define_flags, doc=__doc__)
