"""P x K identity sampler for training, as a grain Sampler (DESIGN.md section 2).

Every global batch holds P identities x K tracklets each, the batch the batch-hard triplet loss needs
(Hermans et al., "In Defense of the Triplet Loss for Person Re-Identification", 2017). One epoch visits every
training identity once, in a random order: num_train_pids // P steps, the remaining identities dropped for that
epoch. An identity with at least K tracklets gives K distinct ones; one with fewer is sampled with
replacement (as the RandomIdentitySampler of AP3D and the LSTRL author code).

Everything is a pure function of (seed, step, slot), which makes resuming trivial and the batches independent
of the host and worker count:

  - identity order of epoch e: a permutation drawn from SeedSequence([seed, 0, e]);
  - the K tracklets of batch position p at `step`: drawn from SeedSequence([seed, 1, step, p]);
  - the clip RNG of global slot s = p * K + k (frame choice and augmentation): SeedSequence([seed, 2, step, s]).

Multi-host: host h of H takes the slots h * B_host .. (h + 1) * B_host - 1 of every global batch
(B_host = P * K / H), so the hosts' batches, concatenated in process order (`jax.make_array_from_process_local_
data`), are exactly the single-host batch.

grain's DataLoader hands record i to worker i % W, and each worker batches its own records and the batches
come back round-robin (worker 0, 1, ..., W - 1, 0, ...). The sampler inverts that layout, so with any worker
count W the n-th batch the loader yields is global step n.
"""

from __future__ import annotations

import sys
from typing import Sequence

import grain
import numpy as np

_PERMUTATION, _INSTANCES, _CLIP = 0, 1, 2


def clip_rng(seed: int, step: int, slot: int) -> np.random.Generator:
  """The explicit RNG of one training clip: frame choice (RRS) and every augmentation draw."""
  return np.random.default_rng([seed, _CLIP, step, slot])


class IdentitySampler:
  """grain Sampler over training tracklets: record i -> (global step, slot) -> tracklet index.

  Attributes:
    num_identities: P.
    num_instances: K.
    seed: base seed (non-negative int).
    shard_index, shard_count: this host's slice of every global batch.
    num_workers: grain worker processes of the DataLoader (0 = in process).
    host_batch: B_host = P * K / shard_count.
  """

  def __init__(
      self,
      pids: Sequence[int],
      *,
      num_identities: int,
      num_instances: int,
      seed: int,
      shard_index: int = 0,
      shard_count: int = 1,
      num_workers: int = 0,
  ):
    """Builds the sampler.

    Args:
      pids: pid of every training tracklet, `[N]` (its position is the tracklet index the sampler returns).
      num_identities, num_instances, seed, shard_index, shard_count, num_workers: see the class attributes.

    Raises:
      ValueError: if P or K is below 1, the seed is negative, P * K does not divide over shard_count,
        shard_index is out of range, or there are fewer training identities than P (the message names the
        config key).
    """
    pids = np.asarray(pids, dtype=np.int64)
    unique = np.unique(pids)
    if num_identities < 1 or num_instances < 1:
      raise ValueError(f'config.num_identities and config.num_instances must be >= 1, got '
                       f'{num_identities} and {num_instances}')
    if seed < 0:
      raise ValueError(f'config.seed must be >= 0, got {seed}')
    if len(unique) < num_identities:
      raise ValueError(f'config.num_identities P={num_identities} exceeds the {len(unique)} training identities')
    global_batch = num_identities * num_instances
    if global_batch % shard_count or not 0 <= shard_index < shard_count:
      raise ValueError(f'batch P*K={global_batch} does not split over {shard_count} hosts (host {shard_index})')
    self.num_identities = num_identities
    self.num_instances = num_instances
    self.seed = seed
    self.shard_index = shard_index
    self.shard_count = shard_count
    self.num_workers = num_workers
    self.host_batch = global_batch // shard_count
    self._unique = unique
    order = np.argsort(pids, kind='stable')
    sorted_pids = pids[order]
    starts = np.searchsorted(sorted_pids, unique)
    self._tracklets_of = np.split(order, starts[1:])
    self._fingerprint = f'{len(pids)} tracklets, {len(unique)} ids, sum(pid*index)={int(pids @ np.arange(len(pids)))}'

  @property
  def steps_per_epoch(self) -> int:
    """num_train_pids // P: an epoch visits every identity once, the remainder dropped."""
    return len(self._unique) // self.num_identities

  def identity(self, step: int, position: int) -> int:
    """Identity (index into the sorted training pids) at batch position p of `step`."""
    epoch, within = divmod(step, self.steps_per_epoch)
    order = np.random.default_rng([self.seed, _PERMUTATION, epoch]).permutation(len(self._unique))
    return int(order[within * self.num_identities + position])

  def instances(self, step: int, position: int) -> np.ndarray:
    """int64 `[K]` tracklet indices of batch position p of `step` (with replacement if fewer than K)."""
    candidates = self._tracklets_of[self.identity(step, position)]
    rng = np.random.default_rng([self.seed, _INSTANCES, step, position])
    return rng.choice(candidates, size=self.num_instances, replace=len(candidates) < self.num_instances)

  def global_batch(self, step: int) -> np.ndarray:
    """Tracklet indices of the whole global batch at `step`: int64 `[P * K]`, slot s = p * K + k."""
    return np.concatenate([self.instances(step, p) for p in range(self.num_identities)])

  def locate(self, index: int) -> tuple[int, int]:
    """(global step, global slot) of DataLoader record `index`, undoing grain's worker round-robin."""
    workers = max(self.num_workers, 1)
    worker, position = index % workers, index // workers
    batch_of_worker, j = divmod(position, self.host_batch)
    return batch_of_worker * workers + worker, self.shard_index * self.host_batch + j

  def __len__(self) -> int:
    return sys.maxsize

  def __getitem__(self, index: int) -> grain.RecordMetadata:
    """RecordMetadata with the tracklet index as record_key and the clip's RNG.

    Raises:
      IndexError: for a negative index.
    """
    if index < 0:
      raise IndexError(f'record index {index} < 0')
    step, slot = self.locate(index)
    position, k = divmod(slot, self.num_instances)
    tracklet = int(self.instances(step, position)[k])
    return grain.RecordMetadata(index=index, record_key=tracklet, rng=clip_rng(self.seed, step, slot))

  def __repr__(self) -> str:
    # grain checks repr(sampler) when restoring an iterator state: it must be stable across processes.
    return (f'IdentitySampler(P={self.num_identities}, K={self.num_instances}, seed={self.seed}, '
            f'shard={self.shard_index}/{self.shard_count}, workers={self.num_workers}, {self._fingerprint})')
