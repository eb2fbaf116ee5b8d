"""What `train_and_evaluate` checks before it creates anything in the workdir (issue 13, item 5).

Each check raises the error its module defines, with one line naming the key or file: so a run that cannot
finish fails in seconds, not at its first evaluation or after compiling, and leaves no half-made workdir.
The train batch is checked by `trainer.make_train_step`; this adds the evaluation batch, the pretrained
weight file (readable and matching the backbone, unless the run resumes from a checkpoint) and a sample of
the dataset's frames (openable images).
"""

from __future__ import annotations

import pathlib

import jax
import ml_collections
import numpy as np
from flax import linen as nn
from jax.sharding import Mesh

from lstrl_jax import sharding
from lstrl_jax.data import transforms
from lstrl_jax.data.index import Tracklet
from lstrl_jax.data.index import VideoReIDDataset
from lstrl_jax.models import weights
from lstrl_jax.train import checkpoint
from lstrl_jax.train import state as state_lib

SAMPLE_TRACKLETS = 32  # per split; the first and last frame of each are decoded


def check_before_training(config: ml_collections.ConfigDict, dataset: VideoReIDDataset, model: nn.Module,
                          mesh: Mesh, workdir: pathlib.Path) -> None:
  """Runs every check below.

  Raises:
    ValueError: config.eval_batch_size does not divide over the devices and processes.
    WeightImportError: config.model.pretrained is missing, unreadable or does not match the backbone.
    DatasetError: a sampled frame is missing or not a readable image (the message names it).
  """
  sharding.check_divisible(config.eval_batch_size, mesh, 'config.eval_batch_size')
  if config.model.pretrained and not (workdir / checkpoint.CHECKPOINT_DIR).is_dir():
    check_pretrained(model, config, mesh)
  if not config.packed_dir:
    check_frames(dataset.train, config)
    check_frames(dataset.test, config)


def check_pretrained(model: nn.Module, config: ml_collections.ConfigDict, mesh: Mesh) -> None:
  """Reads config.model.pretrained and matches it against the model's backbone shapes (nothing compiled)."""
  abstract = jax.eval_shape(lambda key: state_lib.init_variables(model, config, key, mesh), jax.random.key(0))
  weights.load_pretrained(abstract, config.model.pretrained)


def check_frames(tracklets: tuple[Tracklet, ...], config: ml_collections.ConfigDict) -> None:
  """Decodes the first and last frame of up to SAMPLE_TRACKLETS tracklets spread over `tracklets`."""
  if not tracklets:
    return
  for index in np.unique(np.linspace(0, len(tracklets) - 1, SAMPLE_TRACKLETS).astype(int)):
    frames = tracklets[index].frames
    for path in {frames[0], frames[-1]}:
      transforms.open_frame(path, path, config.height, config.width)
