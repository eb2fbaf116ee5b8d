"""grain input pipelines: P x K training batches and padded evaluation batches (DESIGN.md sections 2 and 3).

Training (`train_loader`): a grain DataLoader over the training tracklets with the P x K `IdentitySampler`;
each record becomes one clip (RRS frames, clip-consistent augmentation, see `transforms`), batched on the host
into uint8 `[B_host, T, H, W, 3]`. Batches are a pure function of (seed, step): the same seed gives the same
batches for any worker count, and `iter(loader).get_state()` / `set_state()` resume at exactly the next batch.

Evaluation (`test_loader`): rows are clips (one per tracklet for 'rrs', one per T frames for 'dense'), padded
to a whole number of global batches with zero clips whose 'mask' is False, so every batch has the same shape.

Frames come from the folder layout (paths in the dataset index) or, when `config.packed_dir` is set, from the
ArrayRecord files of `lstrl_jax.data.tfds` (identical batches either way). Decoding runs in
`config.num_workers` grain worker processes (0 = in the main process); programs using workers must run under
`absl.app.run`, which grain's workers expect. Normalisation (`normalize`) runs on device.

Corrupt or missing images are not skipped: the first frame PIL cannot decode stops the pipeline with a
`DatasetError` naming the file (skipping would silently change batch composition and break determinism).
"""

from __future__ import annotations

from typing import Any, Sequence

from absl import flags
import grain
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from lstrl_jax.data import sampling
from lstrl_jax.data import transforms
from lstrl_jax.data.index import DatasetError, Tracklet, VideoReIDDataset
from lstrl_jax.data.sampler import IdentitySampler
from lstrl_jax.data.tfds import builders


class FolderTracklets:
  """grain data source over tracklets in the folder layout: element i = tracklet i's frame paths."""

  def __init__(self, tracklets: Sequence[Tracklet], label: str):
    self._tracklets = tuple(tracklets)
    self._label = label

  def __len__(self) -> int:
    return len(self._tracklets)

  def __getitem__(self, index: int) -> dict[str, Any]:
    tracklet = self._tracklets[index]
    return {'frames': tracklet.frames, 'names': tracklet.frames, 'pid': tracklet.pid, 'camid': tracklet.camid}

  def __repr__(self) -> str:
    return f'FolderTracklets({self._label}, {len(self)} tracklets)'


class PackedTracklets:
  """grain data source over one split of a packed dataset: element i = tracklet i's encoded frames."""

  def __init__(self, builder: builders.VideoReIDBuilder, split: str):
    self._source = builder.as_data_source(split=split)
    self._label = f'{builder.data_dir}:{split}'

  def __len__(self) -> int:
    return len(self._source)

  def __getitem__(self, index: int) -> dict[str, Any]:
    record = self._source[index]
    names = [f'{self._label}[{index}] {name.decode()}' for name in record['names']]
    return {'frames': record['frames'], 'names': names, 'pid': record['pid'], 'camid': record['camid']}

  def __repr__(self) -> str:
    return f'PackedTracklets({self._label}, {len(self)} tracklets)'


def _tracklet_source(dataset: VideoReIDDataset, config: ml_collections.ConfigDict, split: str):
  """The folder or packed (config.packed_dir) data source of `dataset.<split>`.

  Raises:
    DatasetError: packed data missing or not matching `dataset`.
  """
  tracklets = getattr(dataset, split)
  if not config.packed_dir:
    return FolderTracklets(tracklets, f'{dataset.name}:{split}')
  source = PackedTracklets(builders.open_packed(dataset, config.packed_dir), split)
  if len(source) != len(tracklets):
    raise DatasetError(f'{config.packed_dir}: packed {split} split holds {len(source)} tracklets, the '
                       f'index {len(tracklets)}; repack with {builders.PACK_COMMAND}')
  return source


def _check_workers(num_workers: int) -> None:
  """Raises ValueError if grain worker processes are asked for before absl flags were parsed.

  grain's workers read absl flags; programs get them parsed by `absl.app.run`, notebooks by calling
  `absl.flags.FLAGS.mark_as_parsed()`.
  """
  if num_workers and not flags.FLAGS.is_parsed():
    raise ValueError(f'config.num_workers={num_workers} needs absl flags parsed (run under absl.app.run, or call '
                     'absl.flags.FLAGS.mark_as_parsed() in a notebook); or set config.num_workers=0')


def _shards(shard_index: int | None, shard_count: int | None) -> tuple[int, int]:
  """(shard_index, shard_count), None meaning this JAX process of all of them."""
  return (jax.process_index() if shard_index is None else shard_index,
          jax.process_count() if shard_count is None else shard_count)


def steps_per_epoch(dataset: VideoReIDDataset, config: ml_collections.ConfigDict) -> int:
  """num_train_pids // P (at least 1): one epoch visits every training identity once."""
  return max(1, dataset.num_train_pids // config.num_identities)


def train_loader(
    dataset: VideoReIDDataset,
    config: ml_collections.ConfigDict,
    *,
    seed: int,
    shard_index: int | None = None,
    shard_count: int | None = None,
) -> grain.DataLoader:
  """Endless P x K training batches, this host's slice of each global batch.

  Args:
    dataset: the dataset index (training tracklets with relabelled pids).
    config: reads seq_len, height, width, num_identities (P), num_instances (K), num_workers, augment,
      packed_dir.
    seed: base seed of sampling and augmentation.
    shard_index, shard_count: this host and the host count (None: jax.process_index() / process_count()).

  Returns:
    A grain DataLoader yielding {'clips': uint8 `[B_host, T, H, W, 3]`, 'pids': int32 `[B_host]`,
    'camids': int32 `[B_host]`}, B_host = P * K / shard_count; global step n is the n-th batch.

  Raises:
    ValueError: fewer training identities than P, P * K not divisible by shard_count, or worker processes
      asked for before absl flags were parsed.
    DatasetError: packed data missing or not matching `dataset`.
  """
  _check_workers(config.num_workers)
  shard_index, shard_count = _shards(shard_index, shard_count)
  sampler = IdentitySampler(
      [t.pid for t in dataset.train], num_identities=config.num_identities, num_instances=config.num_instances,
      seed=seed, shard_index=shard_index, shard_count=shard_count, num_workers=config.num_workers)
  source = _tracklet_source(dataset, config, 'train')
  clip = transforms.TrainClip(config.seq_len, config.height, config.width,
                              transforms.AugmentConfig.from_config(config.augment))
  return grain.DataLoader(
      data_source=source,
      sampler=sampler,
      operations=[clip, grain.transforms.Batch(sampler.host_batch, drop_remainder=True)],
      worker_count=config.num_workers,
      worker_buffer_size=2,
      shard_options=grain.sharding.NoSharding(),  # the sampler slices each global batch itself
      # Folder elements are in-memory paths (no reader threads); packed records are read ahead by 4 threads.
      read_options=grain.ReadOptions(num_threads=4 if config.packed_dir else 0,
                                     prefetch_buffer_size=sampler.host_batch),
  )


class EvalRows:
  """grain data source of one host's evaluation rows (clips), padding rows included.

  Row r of the host is global row (r // B_host) * B + shard_index * B_host + r % B_host; global rows past the
  real clips are padding (mask False, tracklet -1).
  """

  def __init__(self, source: Any, tracklets: np.ndarray, frames: np.ndarray, host_batch: int, shard_index: int,
               shard_count: int):
    self._source = source
    self._tracklets, self._frames = tracklets, frames
    self._host_batch, self._shard_index, self._shard_count = host_batch, shard_index, shard_count
    batch = host_batch * shard_count
    self._length = -(-len(tracklets) // batch) * host_batch

  def __len__(self) -> int:
    return self._length

  def __getitem__(self, index: int) -> dict[str, Any]:
    batch, j = divmod(index, self._host_batch)
    row = batch * self._host_batch * self._shard_count + self._shard_index * self._host_batch + j
    if row >= len(self._tracklets):
      return {'frames': (), 'names': (), 'indices': np.zeros(self._frames.shape[1], np.int64), 'tracklet': -1,
              'mask': False}
    element = self._source[int(self._tracklets[row])]
    return {'frames': element['frames'], 'names': element['names'], 'indices': self._frames[row],
            'tracklet': self._tracklets[row], 'mask': True}


def eval_rows(dataset: VideoReIDDataset, seq_len: int, clip_selection: str,
              indices: Sequence[int] | None = None) -> tuple[np.ndarray, np.ndarray]:
  """The evaluation clips of `dataset.test[indices]` in order.

  Returns:
    (tracklet int64 `[R]` index into dataset.test, frames int64 `[R, T]` frame indices of each clip).

  Raises:
    ValueError: unknown clip_selection (expected 'rrs' or 'dense').
  """
  if clip_selection not in ('rrs', 'dense'):
    raise ValueError(f'clip_selection {clip_selection!r}: expected rrs or dense')
  indices = range(len(dataset.test)) if indices is None else indices
  tracklets, frames = [], []
  for i in indices:
    n = len(dataset.test[i].frames)
    clips = sampling.rrs_test(n, seq_len)[None] if clip_selection == 'rrs' else sampling.dense_clips(n, seq_len)
    tracklets.append(np.full(len(clips), i, np.int64))
    frames.append(clips)
  if not frames:
    return np.zeros((0,), np.int64), np.zeros((0, seq_len), np.int64)
  return np.concatenate(tracklets), np.concatenate(frames)


def test_loader(
    dataset: VideoReIDDataset,
    config: ml_collections.ConfigDict,
    *,
    clip_selection: str,
    indices: Sequence[int] | None = None,
    shard_index: int | None = None,
    shard_count: int | None = None,
) -> grain.IterDataset:
  """Evaluation clips of the test tracklets, resized only, in fixed-shape padded batches.

  Args:
    dataset: the dataset index.
    config: reads seq_len, height, width, eval_batch_size (global), num_workers, packed_dir.
    clip_selection: 'rrs' (one clip per tracklet) or 'dense' (every frame, T at a time).
    indices: positions in dataset.test to embed (default: all).
    shard_index, shard_count: this host and the host count (None: the JAX process index / count).

  Returns:
    An iterable of {'clips': uint8 `[B, T, H, W, 3]`, 'tracklet': int32 `[B]` (index into dataset.test, -1 on
    padding), 'mask': bool `[B]` (False on padding)}, B = config.eval_batch_size / shard_count; every host
    yields the same number of batches.

  Raises:
    ValueError: unknown clip_selection, eval_batch_size not divisible by shard_count, or worker processes
      asked for before absl flags were parsed.
    DatasetError: packed data missing or not matching `dataset`.
  """
  _check_workers(config.num_workers)
  shard_index, shard_count = _shards(shard_index, shard_count)
  if config.eval_batch_size % shard_count:
    raise ValueError(f'config.eval_batch_size {config.eval_batch_size} does not split over {shard_count} hosts')
  host_batch = config.eval_batch_size // shard_count
  tracklets, frames = eval_rows(dataset, config.seq_len, clip_selection, indices)
  rows = EvalRows(_tracklet_source(dataset, config, 'test'), tracklets, frames, host_batch, shard_index, shard_count)
  ds = grain.MapDataset.source(rows).map(transforms.EvalClip(config.height, config.width))
  ds = ds.batch(host_batch, drop_remainder=True).to_iter_dataset()
  if config.num_workers:
    ds = ds.mp_prefetch(grain.MultiprocessingOptions(num_workers=config.num_workers))
  return ds


def normalize(clips: jax.Array) -> jax.Array:
  """ImageNet mean/std normalisation on device: uint8 `[..., 3]` -> float32 `[..., 3]`, (x / 255 - mean) / std."""
  mean = jnp.asarray(transforms.IMAGENET_MEAN, jnp.float32) * 255
  std = jnp.asarray(transforms.IMAGENET_STD, jnp.float32) * 255
  return (clips.astype(jnp.float32) - mean) / std
