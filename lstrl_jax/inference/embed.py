r"""Embeds unlabelled tracklets: `python -m lstrl_jax.embed --ckpt runs/own --tracklets crops/ --out feats.npz`.

Every folder under `--tracklets` that directly holds image files (.png/.jpg/.jpeg) is one tracklet, named by its
path relative to that folder; its frames are taken in natural order of their file names. Each tracklet is
embedded as the evaluator embeds test tracklets (`lstrl_jax.evaluation.extract`, DESIGN.md sections 3 and 5):
frames resized to the config's H x W, clips of T frames, f_bn in eval mode, averaged over the tracklet's clips;
'dense' (default: the config's final_clip_selection) uses every frame in consecutive T-frame clips, 'rrs' one
clip of T chunks' first frames. A tracklet shorter than T frames is handled as in evaluation: 'dense' repeats
its last frame to fill the clip, 'rrs' repeats frames in order (n = 3, T = 8: frames 0 0 0 1 1 1 2 2). Batches
run on every device (`eval_batch_size` clips per step, `--batch_size` to change it); memory is one batch plus
the `[N, D]` sum. Output: the features file of `lstrl_jax.inference.common` (DESIGN.md section 6), written only
when every tracklet is embedded. Errors (no images, an unreadable image, a frame of zero size, an empty folder,
a bad checkpoint) are one `error:` line, exit status 1.
"""

from __future__ import annotations

import pathlib
from typing import Any

import numpy as np

from lstrl_jax import sharding
from lstrl_jax.evaluation import extract
from lstrl_jax.inference import common


def embed_arrays(trained: common.Trained, tracklets: str, *, clip_selection: str | None = None,
                 batch_size: int = 0, progress: bool = False,
                 listing: tuple[list[str], list[tuple[str, ...]]] | None = None) -> dict[str, Any]:
  """Embeds every tracklet folder under `tracklets` with a loaded model; the arrays of the features file.

  Args:
    trained: from `common.load_trained`.
    tracklets: folder of tracklet folders (see the module docstring).
    clip_selection: 'dense' | 'rrs' | None (the config's final_clip_selection).
    batch_size: clips per step over all devices; 0 keeps the config's eval_batch_size.
    progress: show a progress bar.
    listing: `common.list_tracklets(tracklets)` when already made.

  Returns:
    features float32 `[N, D]`, names str `[N]` and the other keys of the features file.

  Raises:
    DatasetError, ValueError: one-line messages (see the module docstring).
  """
  names, frames = listing or common.list_tracklets(tracklets)
  config = trained.config.copy_and_resolve_references()
  config.packed_dir = ''
  if batch_size:
    config.eval_batch_size = batch_size
  clip_selection = clip_selection or config.final_clip_selection
  features = extract.extract_features(trained.model, trained.variables, common.unlabelled_dataset(frames), config,
                                      clip_selection=clip_selection, mesh=sharding.make_mesh(), progress=progress)
  lengths = [len(f) for f in frames]
  return dict(
      features=np.asarray(features, np.float32), names=np.asarray(names, dtype=str),
      frame_paths=np.asarray([p for f in frames for p in f], dtype=str),
      frame_offsets=np.concatenate([[0], np.cumsum(lengths)]).astype(np.int64),
      root=np.asarray(str(pathlib.Path(tracklets).absolute())), clip_selection=np.asarray(clip_selection),
      step=np.asarray(trained.step), fingerprint=np.asarray(common.fingerprint(config)),
      distance=np.asarray(config.distance), seq_len=np.asarray(config.seq_len), height=np.asarray(config.height),
      width=np.asarray(config.width))


def embed(ckpt: str, tracklets: str, out: str, *, clip_selection: str | None = None, batch_size: int = 0,
          progress: bool = False) -> dict[str, Any]:
  """Embeds every tracklet folder under `tracklets` with the checkpoint `ckpt` and writes `out`.

  Args:
    ckpt: training workdir (latest step) or checkpoint step directory.
    tracklets, clip_selection, batch_size, progress: as in `embed_arrays`.
    out: the .npz to write (only once every tracklet is embedded).

  Returns:
    The arrays written.

  Raises:
    CheckpointError, DatasetError, EvaluationError, ValueError: one-line messages.
  """
  listing = common.list_tracklets(tracklets)  # data errors before the checkpoint is read
  arrays = embed_arrays(common.load_trained(ckpt), tracklets, clip_selection=clip_selection, batch_size=batch_size,
                        progress=progress, listing=listing)
  arrays['checkpoint'] = np.asarray(str(ckpt))
  common.write_features(out, arrays)
  return arrays
