"""Frame selection: which T frames of a tracklet form a clip (DESIGN.md sections 2 and 3).

Pure functions of (num_frames, T[, rng]) returning frame indices; nothing here opens an image.

Restricted Random Sampling (RRS; Li et al., "Diversity Regularized Spatiotemporal Attention for Video-based
Person Re-identification", CVPR 2018) splits a tracklet of n frames into T chunks of (nearly) equal length and
takes one frame from each, so a clip spans the whole tracklet in temporal order. Chunk t is

  [floor(t * n / T), max(floor((t + 1) * n / T), floor(t * n / T) + 1))

(the chunks of `np.array_split` when n >= T). A tracklet shorter than T (n < T) has single-frame chunks
floor(t * n / T): every frame is used, each repeated about T / n times in consecutive slots, indices sorted
(n = 3, T = 8 -> 0 0 0 1 1 1 2 2), so frames still stay in temporal order.

- `rrs_train`: one frame drawn uniformly from each chunk.
- `rrs_test`: the first frame of each chunk (one clip per tracklet).
- `dense_clips`: consecutive T-frame clips covering every frame; the last clip is padded by repeating the
  last frame (the standard test protocol for final numbers; clip features are averaged per tracklet).
"""

from __future__ import annotations

import numpy as np


def _check(num_frames: int, seq_len: int) -> None:
  """Raises ValueError unless both counts are positive."""
  if num_frames < 1:
    raise ValueError(f'num_frames must be >= 1, got {num_frames}')
  if seq_len < 1:
    raise ValueError(f'seq_len (T) must be >= 1, got {seq_len}')


def rrs_chunks(num_frames: int, seq_len: int) -> tuple[np.ndarray, np.ndarray]:
  """Chunk boundaries of Restricted Random Sampling.

  Args:
    num_frames: n, frames in the tracklet (>= 1).
    seq_len: T, frames per clip (>= 1).

  Returns:
    (start, stop): int64 `[T]` each; chunk t holds frames start[t] .. stop[t] - 1 (never empty).

  Raises:
    ValueError: if num_frames or seq_len is below 1.
  """
  _check(num_frames, seq_len)
  t = np.arange(seq_len + 1, dtype=np.int64)
  bounds = (t * num_frames) // seq_len
  start = bounds[:-1]
  return start, np.maximum(bounds[1:], start + 1)


def rrs_train(num_frames: int, seq_len: int, rng: np.random.Generator) -> np.ndarray:
  """Training RRS: one frame drawn uniformly from each of the T chunks.

  Args:
    num_frames: n, frames in the tracklet (>= 1).
    seq_len: T.
    rng: the clip's generator; exactly one `rng.integers` call of size T is made.

  Returns:
    int64 `[T]` frame indices, non-decreasing (strictly increasing when n >= T).

  Raises:
    ValueError: if num_frames or seq_len is below 1.
  """
  start, stop = rrs_chunks(num_frames, seq_len)
  return rng.integers(start, stop)


def rrs_test(num_frames: int, seq_len: int) -> np.ndarray:
  """Test-time RRS: the first frame of each of the T chunks.

  Returns:
    int64 `[T]` frame indices, non-decreasing.

  Raises:
    ValueError: if num_frames or seq_len is below 1.
  """
  return rrs_chunks(num_frames, seq_len)[0]


def dense_clips(num_frames: int, seq_len: int) -> np.ndarray:
  """Consecutive T-frame clips covering every frame, the last padded by repeating the last frame.

  Args:
    num_frames: n, frames in the tracklet (>= 1).
    seq_len: T.

  Returns:
    int64 `[ceil(n / T), T]`; row c holds frames c*T .. c*T + T - 1, clipped to n - 1.

  Raises:
    ValueError: if num_frames or seq_len is below 1.
  """
  _check(num_frames, seq_len)
  num_clips = -(-num_frames // seq_len)
  frames = np.arange(num_clips * seq_len, dtype=np.int64).reshape(num_clips, seq_len)
  return np.minimum(frames, num_frames - 1)
