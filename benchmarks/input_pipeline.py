r"""Input pipeline throughput: training clips/s and frames/s at 256x128, T=8, P x K = 8 x 4, beside PIL alone.

  python -m benchmarks.input_pipeline [--num_workers 2 --batches 8 --repeats 3 --persons 32 --frames 32 --packed]

Writes a temporary dataset of 256x128 JPEGs in the iLIDS-VID layout (MARS-sized frames; MARS itself is not in
this environment), then measures
  - PIL alone: one process opening, decoding and converting every frame file once (frames/s);
  - `pipeline.train_loader`: RRS + decode + pad/crop/flip/erase + batching in `--num_workers` grain worker
    processes, after two warm-up batches (clips/s and frames/s), from the folder layout and, with --packed,
    from the ArrayRecord files of `lstrl_jax.data.tfds`;
each the best of --repeats timed windows (the least disturbed by other processes on shared cores),
and prints the pipeline's frame rate as a ratio of PIL's. The machine's CPU count and load average are
printed with the figures, since other processes share the cores.
"""

from __future__ import annotations

import os
import pathlib
import platform
import tempfile
import time

from absl import app
from absl import flags
import numpy as np
import PIL.Image
import scipy.io

from configs.default import get_config
from lstrl_jax.data import pipeline
from lstrl_jax.data.datasets import load_dataset
from lstrl_jax.data.tfds import builders

_WORKERS = flags.DEFINE_integer('num_workers', 2, 'grain worker processes (config.num_workers).')
_BATCHES = flags.DEFINE_integer('batches', 8, 'Batches of P x K = 32 clips per timed window.')
_PERSONS = flags.DEFINE_integer('persons', 32, 'Persons in the temporary dataset (half of them train).')
_FRAMES = flags.DEFINE_integer('frames', 32, 'Frames per tracklet.')
_PACKED = flags.DEFINE_bool('packed', False, 'Also time the packed (ArrayRecord) source.')
_REPEATS = flags.DEFINE_integer('repeats', 3, 'Timed windows per measurement; the best is reported.')


def write_jpeg_dataset(root: pathlib.Path, persons: int, frames: int, height: int, width: int) -> None:
  """Writes persons x 2 cameras x frames JPEGs (height x width, quality 90) and a 10-split `ls_set`."""
  rng = np.random.default_rng(0)
  for cam in ('cam1', 'cam2'):
    for person in range(1, persons + 1):
      folder = root / 'i-LIDS-VID' / 'sequences' / cam / f'person{person:03d}'
      folder.mkdir(parents=True)
      coarse = rng.integers(0, 256, size=(16, 8, 3), dtype=np.uint8)
      base = np.asarray(PIL.Image.fromarray(coarse).resize((width, height), PIL.Image.BICUBIC), np.int16)
      for f in range(frames):
        noisy = np.clip(base + rng.integers(-12, 13, size=base.shape), 0, 255).astype(np.uint8)
        PIL.Image.fromarray(noisy).save(folder / f'{cam}_person{person:03d}_{f:05d}.jpg', quality=90)
  splits = root / 'train-test people splits'
  splits.mkdir()
  ls_set = np.stack([rng.permutation(persons) + 1 for _ in range(10)]).astype(np.float64)
  scipy.io.savemat(splits / 'train_test_splits_ilidsvid.mat', {'ls_set': ls_set})


def pil_frames_per_second(paths: list[str], repeats: int) -> float:
  """Frames/s of PIL alone: open, decode and convert to an RGB array, one process; best of `repeats` passes."""
  rates = []
  for _ in range(repeats):
    start = time.perf_counter()
    for path in paths:
      with PIL.Image.open(path) as image:
        np.asarray(image.convert('RGB'))
    rates.append(len(paths) / (time.perf_counter() - start))
  return max(rates)


def loader_clips_per_second(dataset, config, batches: int, repeats: int) -> float:
  """Clips/s of `train_loader` after two warm-up batches: best of `repeats` windows of `batches` batches."""
  iterator = iter(pipeline.train_loader(dataset, config, seed=0, shard_index=0, shard_count=1))
  for _ in range(2):
    next(iterator)
  rates = []
  for _ in range(repeats):
    start = time.perf_counter()
    clips = sum(next(iterator)['clips'].shape[0] for _ in range(batches))
    rates.append(clips / (time.perf_counter() - start))
  return max(rates)


def main(argv: list[str]) -> None:
  """Builds the temporary dataset, runs both measurements and prints one line per figure."""
  del argv
  config = get_config()  # 256x128, T=8, P=8 x K=4, paper augmentation
  config.num_workers = _WORKERS.value
  with tempfile.TemporaryDirectory() as tmp:
    root = pathlib.Path(tmp) / 'jpegs'
    write_jpeg_dataset(root, _PERSONS.value, _FRAMES.value, config.height, config.width)
    dataset = load_dataset('ilidsvid', root)
    paths = [p for t in dataset.train for p in t.frames]
    print(f'machine: {platform.processor() or platform.machine()}, {os.cpu_count()} CPUs, '
          f'load average {os.getloadavg()[0]:.2f} (1 min) at start')
    print(f'data: {len(dataset.train)} training tracklets x {_FRAMES.value} JPEG frames of '
          f'{config.height}x{config.width}, T={config.seq_len}, batch {config.num_identities}x{config.num_instances}')
    pil = pil_frames_per_second(paths, _REPEATS.value)
    print(f'PIL alone (1 process): {pil:.0f} frames/s')
    sources = [('folder', '')]
    if _PACKED.value:
      packed_dir = pathlib.Path(tmp) / 'packed'
      builders.pack('ilidsvid', root, packed_dir)
      sources.append(('packed', str(packed_dir)))
    for name, packed_dir in sources:
      config.packed_dir = packed_dir
      clips = loader_clips_per_second(dataset, config, _BATCHES.value, _REPEATS.value)
      frames = clips * config.seq_len
      print(f'train_loader ({name}, {config.num_workers} workers): {clips:.1f} clips/s, {frames:.0f} frames/s, '
            f'{frames / pil:.2f} x PIL alone')
    print(f'load average {os.getloadavg()[0]:.2f} (1 min) at end')


if __name__ == '__main__':
  app.run(main)
