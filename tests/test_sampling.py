"""Frame selection (RRS, rrs-test, dense) and the P x K identity sampler, against hand-worked cases."""

import numpy as np
import pytest
import scipy.stats

from lstrl_jax.data import sampling
from lstrl_jax.data.sampler import IdentitySampler, clip_rng


def test_rrs_chunks_hand_worked():
  # n = 10, T = 4: boundaries floor(t * 10 / 4) = 0, 2, 5, 7, 10.
  start, stop = sampling.rrs_chunks(10, 4)
  np.testing.assert_array_equal(start, [0, 2, 5, 7])
  np.testing.assert_array_equal(stop, [2, 5, 7, 10])


@pytest.mark.parametrize('n, t, expected', [
    (10, 4, [0, 2, 5, 7]),
    (8, 8, [0, 1, 2, 3, 4, 5, 6, 7]),
    (3, 8, [0, 0, 0, 1, 1, 1, 2, 2]),  # short tracklet: every frame, repeated in order
    (1, 4, [0, 0, 0, 0]),
    (17, 8, [0, 2, 4, 6, 8, 10, 12, 14]),
])
def test_rrs_test_first_frame_of_each_chunk(n, t, expected):
  np.testing.assert_array_equal(sampling.rrs_test(n, t), expected)


def test_rrs_train_draws_one_frame_per_chunk_and_reaches_every_frame():
  start, stop = sampling.rrs_chunks(10, 4)
  seen = np.zeros(10, bool)
  for seed in range(200):
    idx = sampling.rrs_train(10, 4, np.random.default_rng(seed))
    assert idx.shape == (4,)
    assert ((idx >= start) & (idx < stop)).all()
    assert (np.diff(idx) > 0).all()
    seen[idx] = True
  assert seen.all()


def test_rrs_train_is_a_pure_function_of_the_rng():
  a = sampling.rrs_train(50, 8, np.random.default_rng(7))
  b = sampling.rrs_train(50, 8, np.random.default_rng(7))
  np.testing.assert_array_equal(a, b)


def test_rrs_train_short_tracklet_repeats_frames_in_order():
  for seed in range(5):
    np.testing.assert_array_equal(sampling.rrs_train(3, 8, np.random.default_rng(seed)), [0, 0, 0, 1, 1, 1, 2, 2])


@pytest.mark.parametrize('n, t, expected', [
    (10, 4, [[0, 1, 2, 3], [4, 5, 6, 7], [8, 9, 9, 9]]),
    (8, 4, [[0, 1, 2, 3], [4, 5, 6, 7]]),
    (1, 4, [[0, 0, 0, 0]]),
    (3, 2, [[0, 1], [2, 2]]),
])
def test_dense_clips_cover_every_frame_last_padded(n, t, expected):
  np.testing.assert_array_equal(sampling.dense_clips(n, t), expected)


@pytest.mark.parametrize('fn', [sampling.rrs_test, sampling.dense_clips])
def test_empty_tracklet_is_rejected(fn):
  with pytest.raises(ValueError, match='num_frames'):
    fn(0, 4)


# pid of each tracklet: identity i has counts[i] tracklets (identity 3 has fewer than K = 4).
_COUNTS = [5, 4, 6, 2, 4, 7, 4, 5, 4, 3]
_PIDS = np.repeat(np.arange(len(_COUNTS)), _COUNTS)


def _sampler(**kwargs):
  args = dict(num_identities=3, num_instances=4, seed=11)
  args.update(kwargs)
  return IdentitySampler(np.random.default_rng(0).permutation(_PIDS), **args)


def test_global_batch_is_p_identities_times_k_tracklets():
  sampler = _sampler()
  tracklet_pids = np.random.default_rng(0).permutation(_PIDS)
  for step in range(12):
    batch = sampler.global_batch(step)
    assert batch.shape == (12,)
    per_identity = tracklet_pids[batch].reshape(3, 4)
    assert (per_identity == per_identity[:, :1]).all()
    assert len(set(per_identity[:, 0])) == 3
    for p in range(3):
      if _COUNTS[per_identity[p, 0]] >= 4:
        assert len(set(batch[p * 4:(p + 1) * 4])) == 4  # K distinct tracklets when there are K


def test_epoch_visits_each_identity_once_remainder_dropped():
  sampler = _sampler()
  assert sampler.steps_per_epoch == 3  # 10 identities // P=3
  tracklet_pids = np.random.default_rng(0).permutation(_PIDS)
  for epoch in range(3):
    seen = [tracklet_pids[sampler.global_batch(epoch * 3 + s)][::4] for s in range(3)]
    seen = np.concatenate(seen)
    assert len(seen) == 9 and len(set(seen)) == 9


def test_batches_are_a_pure_function_of_seed_and_step():
  a, b, c = _sampler(), _sampler(), _sampler(seed=12)
  np.testing.assert_array_equal(a.global_batch(5), b.global_batch(5))
  assert any(not np.array_equal(a.global_batch(s), c.global_batch(s)) for s in range(4))
  assert repr(a) == repr(b)


def test_locate_undoes_the_worker_round_robin():
  # W = 2 workers, host batch 3: worker w takes records w, w + 2, ...; its m-th record is slot m % 3 of its
  # (m // 3)-th batch, and batches come back round-robin: worker 0 -> steps 0, 2, ..., worker 1 -> 1, 3, ...
  sampler = _sampler(num_identities=3, num_instances=2, shard_index=1, shard_count=2, num_workers=2)
  assert sampler.host_batch == 3
  got = [sampler.locate(i) for i in range(8)]
  slot = lambda j: 3 + j  # host 1 of 2 holds global slots 3..5
  assert got == [(0, slot(0)), (1, slot(0)), (0, slot(1)), (1, slot(1)), (0, slot(2)), (1, slot(2)),
                 (2, slot(0)), (3, slot(0))]


def test_hosts_take_their_slice_of_every_global_batch():
  whole = _sampler()
  hosts = [_sampler(shard_index=h, shard_count=2) for h in range(2)]
  for step in range(4):
    keys = [hosts[h][step * 6 + j].record_key for h in range(2) for j in range(6)]
    np.testing.assert_array_equal(keys, whole.global_batch(step))


def test_record_carries_the_clip_rng_of_step_and_slot():
  sampler = _sampler(num_workers=2)
  record = sampler[7]  # worker 1, its 4th record: step 1, slot 3
  assert sampler.locate(7) == (1, 3)
  assert record.rng.random() == clip_rng(11, 1, 3).random()


def test_too_few_identities_names_the_config_key():
  with pytest.raises(ValueError, match='num_identities'):
    _sampler(num_identities=11)
  with pytest.raises(ValueError, match='split over 5 hosts'):
    _sampler(shard_count=5)


# Statistical tests: a fixed seed makes each deterministic; the stated false-alarm rate is the chance that a
# correct implementation would fail for a seed drawn at random (the chi-square tail at the threshold).
FALSE_ALARM = 1e-4


def _chi_square_below_threshold(counts, expected):
  """Pearson's statistic of `counts` against `expected`, and whether it is below the FALSE_ALARM quantile."""
  statistic = float(np.sum((counts - expected) ** 2 / expected))
  return statistic, statistic < scipy.stats.chi2.isf(FALSE_ALARM, len(counts) - 1)


def test_rrs_train_is_uniform_within_each_chunk_and_independent_across_chunks():
  # n = 10, T = 4: chunks of 2, 3, 2, 3 frames, so 36 possible clips. RRS (Li et al. 2018) draws one frame
  # uniformly and independently from each chunk: every clip has probability 1/36. One clip per clip RNG, as
  # the training pipeline draws them.
  start, stop = sampling.rrs_chunks(10, 4)
  sizes = stop - start
  draws = np.stack([sampling.rrs_train(10, 4, clip_rng(0, i, 0)) for i in range(7200)])
  cells = np.ravel_multi_index(tuple((draws - start).T), sizes)
  statistic, ok = _chi_square_below_threshold(np.bincount(cells, minlength=36), 7200 / 36)
  assert ok, f'chi-square {statistic:.1f} over 35 degrees of freedom'


def test_rrs_train_long_tracklet_marginals_and_chunk_correlation():
  # n = 83, T = 8: chunks of 10 or 11 frames. Each chunk's offset is uniform; offsets of different chunks are
  # uncorrelated (|r| of independent variables exceeds 4.4 / sqrt(N) with probability ~1e-5).
  num = 4000
  start, stop = sampling.rrs_chunks(83, 8)
  draws = np.stack([sampling.rrs_train(83, 8, clip_rng(1, i, 3)) for i in range(num)])
  offsets = draws - start
  for t in range(8):
    size = int(stop[t] - start[t])
    statistic, ok = _chi_square_below_threshold(np.bincount(offsets[:, t], minlength=size), num / size)
    assert ok, f'chunk {t}: chi-square {statistic:.1f} over {size - 1} degrees of freedom'
  correlation = np.corrcoef(offsets.T)[np.triu_indices(8, 1)]
  assert np.abs(correlation).max() < 4.4 / np.sqrt(num), correlation


def test_identity_order_is_redrawn_every_epoch():
  # 10 identities, P = 3: 3 steps per epoch, one identity left out of each epoch. With a fresh random order
  # every epoch each identity is left out with probability 1/10, independently of the epoch before; a fixed
  # order leaves out the same identity every time (on MARS 625 mod 8 = 1 identity, more elsewhere).
  sampler = _sampler()
  tracklet_pids = np.random.default_rng(0).permutation(_PIDS)
  epochs = 300
  left_out = []
  for epoch in range(epochs):
    seen = {int(p) for s in range(3) for p in tracklet_pids[sampler.global_batch(epoch * 3 + s)]}
    (missing,) = set(range(10)) - seen
    left_out.append(missing)
  left_out = np.array(left_out)
  statistic, ok = _chi_square_below_threshold(np.bincount(left_out, minlength=10), epochs / 10)
  assert ok, f'left-out identities: chi-square {statistic:.1f} over 9 degrees of freedom'
  # Same identity left out in consecutive epochs: Binomial(299, 0.1), mean 29.9, sd 5.2; 55 is +4.8 sd.
  assert np.sum(left_out[1:] == left_out[:-1]) < 55
  # The first batch of consecutive epochs differs (the same 3 identities twice: probability 1/120).
  first = [frozenset(tracklet_pids[sampler.global_batch(epoch * 3)]) for epoch in range(20)]
  assert sum(a == b for a, b in zip(first, first[1:])) <= 2


def test_every_clip_of_every_step_has_its_own_rng():
  # Each clip draws its frames and augmentation from its own stream: the 12 clips of a batch, over 5 steps,
  # start from 60 different 64-bit values (a collision among 60 independent streams: probability ~1e-16).
  sampler = _sampler()
  first = {sampler[i].rng.integers(1 << 63) for i in range(60)}
  assert len(first) == 60
