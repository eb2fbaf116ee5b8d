"""The harness that embeds: test-set tracklets -> one feature per tracklet (DESIGN.md sections 3 and 5).

Batches of clips from `pipeline.test_loader` (uint8, fixed shape, padding rows masked) are sharded over the
mesh's `data` axis, normalised on device and embedded by the model in eval mode (BatchNorm running
statistics); the test feature is f_bn ('bn_features'). One jitted step adds each clip's feature into a
per-tracklet sum `[N_test, D]` and count `[N_test]`, both replicated and donated, so memory stays at that
accumulator plus one batch whatever the number of clips. A tracklet's feature is the mean of its clip
features: one clip with 'rrs', every T-frame clip with 'dense'. Every host ends with the full accumulator.
"""

from __future__ import annotations

import functools
import sys
from typing import Any, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import tqdm

from lstrl_jax import sharding
from lstrl_jax import xla_cpu
from lstrl_jax.data import pipeline
from lstrl_jax.data.index import VideoReIDDataset


def _accumulate(model: nn.Module, variables: Any, sums: jnp.ndarray, counts: jnp.ndarray,
                batch: dict[str, jnp.ndarray]) -> tuple[jnp.ndarray, jnp.ndarray]:
  """Adds the f_bn of a batch's real clips `[B, D]` to rows `batch['tracklet']` of sums / counts."""
  outputs = model.apply(variables, pipeline.normalize(batch['clips']), train=False)
  weight = batch['mask'].astype(jnp.float32)
  rows = jnp.where(batch['mask'], batch['tracklet'], 0)
  features = outputs['bn_features'].astype(jnp.float32) * weight[:, None]
  return sums.at[rows].add(features), counts.at[rows].add(weight)


@functools.lru_cache(maxsize=8)
def _accumulate_step(mesh: jax.sharding.Mesh):
  """`_accumulate` jitted for `mesh`: model static, accumulators replicated and donated."""
  replicated = sharding.replicated(mesh)
  return jax.jit(_accumulate, static_argnums=0, donate_argnums=(2, 3), out_shardings=(replicated, replicated),
                 compiler_options=xla_cpu.compiler_options(mesh.devices.flat))


def feature_dim(model: nn.Module, variables: Any, config: ml_collections.ConfigDict) -> int:
  """D, the size of the model's 'bn_features' for `config`'s clip shape (no computation, `eval_shape`)."""
  clips = jax.ShapeDtypeStruct((1, config.seq_len, config.height, config.width, 3), jnp.float32)
  shapes = jax.eval_shape(lambda v, x: model.apply(v, x, train=False), variables, clips)
  return int(shapes['bn_features'].shape[-1])


def extract_features(
    model: nn.Module,
    variables: Any,
    dataset: VideoReIDDataset,
    config: ml_collections.ConfigDict,
    *,
    clip_selection: str,
    mesh: jax.sharding.Mesh,
    indices: Sequence[int] | None = None,
    progress: bool = False,
) -> np.ndarray:
  """Embeds test tracklets: the mean f_bn over each tracklet's clips.

  Args:
    model: a module whose `apply(variables, clips, train=False)` maps float `[B, T, H, W, 3]` (ImageNet-
      normalised) to a dict with 'bn_features' `[B, D]`, e.g. `LSTRL`.
    variables: {'params', 'batch_stats'} of `model` (host or device arrays; replicated here).
    dataset: the dataset index; tracklets come from `dataset.test`.
    config: reads seq_len, height, width, eval_batch_size (global clips per step), num_workers,
      packed_dir.
    clip_selection: 'rrs' (one clip per tracklet) or 'dense' (consecutive T-frame clips, averaged).
    mesh: data-parallel mesh (`lstrl_jax.sharding.make_mesh()`).
    indices: positions in `dataset.test` to embed (default: all), in the order of the returned rows.
    progress: show a tqdm bar of finished batches on process 0, when stderr is a terminal (none in logs).

  Returns:
    float32 `[len(indices), D]` (`[N_test, D]` by default), row r the feature of `dataset.test[indices[r]]`.

  Raises:
    ValueError: eval_batch_size not divisible over the mesh's devices and hosts, or unknown
      clip_selection.
    DatasetError: an unreadable frame or packed data not matching `dataset`.
  """
  sharding.check_divisible(config.eval_batch_size, mesh, 'config.eval_batch_size')
  indices = np.arange(len(dataset.test)) if indices is None else np.asarray(indices, np.int64)
  loader = pipeline.test_loader(dataset, config, clip_selection=clip_selection, indices=indices)
  num_rows = len(pipeline.eval_rows(dataset, config.seq_len, clip_selection, indices)[0])
  replicated = sharding.replicated(mesh)
  variables = jax.device_put(variables, replicated)
  dim = feature_dim(model, variables, config)
  sums = jax.device_put(np.zeros((len(dataset.test), dim), np.float32), replicated)
  counts = jax.device_put(np.zeros((len(dataset.test),), np.float32), replicated)
  step = _accumulate_step(mesh)
  bar = tqdm.tqdm(total=-(-num_rows // config.eval_batch_size), desc=f'embed ({clip_selection})', leave=False,
                  disable=not progress or jax.process_index() != 0 or not sys.stderr.isatty())
  for done, batch in enumerate(loader):
    sharded = sharding.shard_batch(batch, mesh)
    if done and not bar.disable:  # the bar counts finished batches: wait for the previous one (decoded meanwhile)
      counts.block_until_ready()
      bar.update()
    sums, counts = step(model, variables, sums, counts, sharded)
  if not bar.disable:
    counts.block_until_ready()
    bar.update(bar.total - bar.n)
  bar.close()
  sums = np.asarray(jax.device_get(sums.addressable_data(0)))[indices]
  counts = np.asarray(jax.device_get(counts.addressable_data(0)))[indices]
  return sums / np.maximum(counts, 1.0)[:, None]
