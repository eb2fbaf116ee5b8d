"""The evaluator's scoring wiring, checked against per-query NumPy references (not the functions it calls).

- `score_features(..., rerank=True)` re-ranks: it equals the NumPy transcription of Zhong et al.'s
  `re_ranking` (tests/test_rerank.py) followed by per-query AP/CMC (tests/test_metrics.py), and differs from
  the scores without re-ranking.
`reference_scores` is shared with tests/test_eval_cli.py (the MARS conventions, the printed tables of eval.py).
"""

import numpy as np
import pytest

from lstrl_jax.data.index import Tracklet, VideoReIDDataset
from lstrl_jax.evaluation import evaluator
from tests.test_metrics import reference
from tests.test_rerank import reference_re_ranking


def cosine_distances(a, b):
  """1 - cos, in float64 (DESIGN.md: the default distance)."""
  a = a / np.linalg.norm(a, axis=1, keepdims=True)
  b = b / np.linalg.norm(b, axis=1, keepdims=True)
  return 1.0 - a @ b.T


def reference_scores(features, query, gallery, pids, camids, convention, rerank=False, k1=20, k2=6):
  """(mAP, R-1, R-5, no_match) of one convention, one query at a time (re-ranked with k1, k2, lambda 0.3)."""
  qf, gf = features[query].astype(np.float64), features[gallery].astype(np.float64)
  distances = cosine_distances(qf, gf)
  if rerank:
    distances = reference_re_ranking(distances, cosine_distances(qf, qf), cosine_distances(gf, gf), k1, k2, 0.3)
  ap, cmc, no_match = reference(distances, pids[query], camids[query], pids[gallery], camids[gallery],
                                convention)
  return ap, cmc[0], cmc[min(5, len(gallery)) - 1], no_match


def _assert_scores(got, want):
  ap, r1, r5, no_match = want
  assert got['mAP'] == pytest.approx(ap, abs=1e-5)
  assert got['R-1'] == pytest.approx(r1, abs=1e-9) and got['R-5'] == pytest.approx(r5, abs=1e-9)
  assert got['no_match'] == no_match


def _two_camera_dataset(num_persons=15):
  """A cross-camera test set without images: person i once in camera 0 (query) and once in camera 1."""
  test = [Tracklet((f'p{i}c{c}',), pid=i + 1, camid=c) for c in (0, 1) for i in range(num_persons)]
  return VideoReIDDataset('toy', train=(), test=tuple(test), query=np.arange(num_persons),
                          galleries={'cross_camera': np.arange(num_persons, 2 * num_persons)})


def test_rerank_flag_re_ranks_against_the_reference():
  dataset = _two_camera_dataset()
  pids, camids = evaluator.tracklet_labels(dataset)
  rng = np.random.default_rng(4)
  centres = rng.normal(size=(pids.max() + 1, 8))
  features = (centres[pids] + 0.9 * rng.normal(size=(len(pids), 8))).astype(np.float32)
  query, gallery = dataset.query, dataset.galleries['cross_camera']
  plain = evaluator.score_features(features, dataset, distance='cosine', clip_selection='rrs')
  reranked = evaluator.score_features(features, dataset, distance='cosine', clip_selection='rrs', rerank=True,
                                      rerank_k=(7, 3))  # the 15-tracklet gallery allows k1 <= 7
  assert reranked['rerank'] is True and plain['rerank'] is False
  want_plain = reference_scores(features, query, gallery, pids, camids, 'cross_camera')
  want_reranked = reference_scores(features, query, gallery, pids, camids, 'cross_camera', rerank=True, k1=7, k2=3)
  assert abs(want_plain[0] - want_reranked[0]) > 0.01  # the case tells re-ranked from plain scores apart
  _assert_scores(plain['conventions']['cross_camera'], want_plain)
  _assert_scores(reranked['conventions']['cross_camera'], want_reranked)
