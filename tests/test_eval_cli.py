"""Tests of eval.py (subprocesses on demo data with tiny LSTRL checkpoints) and of the evaluator."""

import dataclasses
import os
import pathlib
import re
import shutil
import subprocess
import sys

import grain
import jax
import jax.numpy as jnp
import numpy as np
from PIL import Image
import pytest

from configs.default import get_config
from lstrl_jax.data import demo
from lstrl_jax.data.datasets import load_dataset
from lstrl_jax.data.index import Tracklet, VideoReIDDataset
from lstrl_jax.evaluation import evaluator, visualize
from lstrl_jax.models.lstrl import model_from_config
from lstrl_jax.train import checkpoint
from tests.test_scoring import reference_scores

REPO = pathlib.Path(__file__).resolve().parents[1]
DEMO_PERSONS = 8  # 4 training and 4 test identities per split
RERANK_PERSONS = 80  # 40 training and 40 test identities: a gallery of 40 = 2 * k1 tracklets


def tiny_config(data_dir, split):
  config = get_config()
  config.dataset, config.data_dir, config.split = 'demo', str(data_dir), split
  config.seq_len, config.height, config.width = 2, 128, 64
  config.eval_batch_size, config.num_workers = 4, 0
  config.model.depth, config.model.mae_stages, config.model.bme_stages = 18, (3,), (3,)
  return config


def write_checkpoint(workdir, config, num_classes, seed=0):
  """A step-7 checkpoint of random tiny-LSTRL variables, written by the trainer's checkpoint module.

  Kernels are He-normal and every BatchNorm the identity (scale 1, bias 0, mean 0, variance 1), so features of
  different tracklets differ by a cosine distance of ~1e-2: far above float32 rounding, so rankings are the
  same in float32 and in a float64 reference (0.1-normal BatchNorm scales gave distances of ~1e-9).
  """
  model = model_from_config(config.model, num_classes)
  clips = jnp.zeros((1, config.seq_len, config.height, config.width, 3))
  shapes = jax.eval_shape(lambda: model.init(jax.random.key(0), clips, train=False))
  rng = np.random.default_rng(seed)

  def fill(path, leaf):
    name = jax.tree_util.keystr(path)
    if 'var' in name:
      return np.ones(leaf.shape, np.float32)
    if 'mean' in name or 'bias' in name:
      return np.zeros(leaf.shape, np.float32)
    if 'scale' in name:
      return np.ones(leaf.shape, np.float32)
    return (np.sqrt(2.0 / np.prod(leaf.shape[:-1])) * rng.normal(size=leaf.shape)).astype(np.float32)

  variables = jax.tree_util.tree_map_with_path(fill, shapes)
  state = {'params': variables['params'], 'batch_stats': variables['batch_stats'], 'step': np.int32(7)}
  manager = checkpoint.make_manager(workdir, max_to_keep=1)
  data = iter(grain.MapDataset.range(4).to_iter_dataset())
  checkpoint.save(manager, 7, state, data, config)
  manager.wait_until_finished()
  manager.close()
  return workdir


def start_eval(*args):
  """Starts eval.py in a subprocess on CPU."""
  code = f'import runpy, sys\nsys.argv = ["eval.py", *{list(args)!r}]\n'
  code += 'runpy.run_path("eval.py", run_name="__main__")'
  env = dict(os.environ, JAX_PLATFORMS='cpu', PYTHONPATH=str(REPO))
  return subprocess.Popen([sys.executable, '-c', code], cwd=REPO, env=env, stdout=subprocess.PIPE,
                          stderr=subprocess.PIPE, text=True)


def assert_one_line_error(result, pattern):
  returncode, _, stderr = result
  assert returncode == 1, stderr[-3000:]
  lines = stderr.strip().splitlines()
  assert len(lines) == 1 and 'Traceback' not in stderr, stderr[-3000:]
  assert lines[0].startswith('error: ') and re.search(pattern, lines[0]), lines[0]


@pytest.fixture(scope='module')
def runs(tmp_path_factory):
  """Demo data, three checkpoints, and every eval.py run of this module, started at once."""
  root = tmp_path_factory.mktemp('eval_cli')
  data = demo.generate(root / 'demo', num_persons=DEMO_PERSONS, frames=5)
  split0, split1 = (write_checkpoint(root / f'split{s}', tiny_config(data, s), DEMO_PERSONS // 2, seed=s)
                    for s in (0, 1))
  other = write_checkpoint(root / 'other', tiny_config(data, 0), num_classes=625)
  # Re-ranking at k1=20 needs a gallery of 2 * k1 = 40 tracklets: 40 test persons, one tracklet per camera.
  rerank_data = demo.generate(root / 'demo_rerank', num_persons=RERANK_PERSONS, frames=3)
  rerank_ckpt = write_checkpoint(root / 'rerank', tiny_config(rerank_data, 0), RERANK_PERSONS // 2, seed=2)
  unreadable = root / 'unreadable'  # split 0's checkpoint without its arrays: tensorstore fails many reads at once
  shutil.copytree(split0, unreadable)
  for arrays in (unreadable / 'checkpoints' / '7' / 'state').glob('[do]*'):  # d/, ocdbt.process_0/
    shutil.rmtree(arrays)
  processes = {
      'rerank_scores': start_eval(f'--ckpt={rerank_ckpt}', '--clip_selection=rrs', '--rerank',
                                  f'--save_features={root / "rerank.npz"}'),
      'full': start_eval(f'--ckpt={split0},{split1 / "checkpoints" / "7"}', '--clip_selection=rrs',
                         f'--save_features={root / "feats.npz"}', '--pictures', '--config.eval_batch_size=2'),
      'missing': start_eval(f'--ckpt={root / "nowhere"}'),
      'other': start_eval(f'--ckpt={other}'),
      'rerank': start_eval(f'--ckpt={split0}', '--rerank'),
      'unreadable': start_eval(f'--ckpt={unreadable}'),
  }
  results = {}
  for name, process in processes.items():
    stdout, stderr = process.communicate(timeout=900)
    results[name] = (process.returncode, stdout, stderr)
  return dict(results, root=root, data=data, rerank_data=rerank_data, workdirs=(split0, split1))


def test_two_splits_table_features_and_pictures(runs):
  returncode, text, stderr = runs['full']
  assert returncode == 0, stderr[-3000:]
  assert 'embed (' not in stderr and '\r' not in stderr + text  # no progress bar when stderr is no terminal
  assert text.count('demo (split 0 step 7)') == 1  # each table printed once
  assert 'demo (split 0 step 7) | clip selection: rrs | distance: cosine | no re-ranking' in text
  assert 'demo (split 1 step 7)' in text and 'demo (mean over 2 splits 0,1)' in text
  rows = re.findall(r'^cross_camera\s+([\d.]+)\s+([\d.]+)\s+([\d.]+)\s+[\d.]+\s+[\d.]+\s+4\s+4\s+0$', text,
                    re.MULTILINE)
  assert len(rows) == 3, text
  want = []
  for split in (0, 1):
    saved = np.load(runs['root'] / f'feats_{split}.npz')
    dataset = load_dataset('demo', runs['data'], split=split)
    assert saved['features'].shape == (8, 512) and saved['features'].dtype == np.float32
    assert (str(saved['dataset']), int(saved['split']), int(saved['step'])) == ('demo', split, 7)
    np.testing.assert_array_equal(saved['pids'], [t.pid for t in dataset.test])
    np.testing.assert_array_equal(saved['query'], dataset.query)
    offsets = saved['frame_offsets']
    assert list(saved['frame_paths'][offsets[3]:offsets[4]]) == list(dataset.test[3].frames)
    # The printed table is the per-query NumPy reference's scores of the saved features.
    want.append(reference_scores(saved['features'], saved['query'], saved['gallery_cross_camera'], saved['pids'],
                                 saved['camids'], 'cross_camera'))
    assert [float(v) for v in rows[split]] == pytest.approx([100 * v for v in want[-1][:3]], abs=0.006)
  assert [float(v) for v in rows[2]] == pytest.approx([50 * (a + b) for a, b in zip(*want)][:3], abs=0.006)
  for workdir in runs['workdirs']:
    pictures = sorted(p.name for p in (workdir / 'pictures').iterdir())
    assert 'ranking_cross_camera_rrs.png' in pictures
    assert len([p for p in pictures if re.fullmatch(r'fig5_t\d+_stage3\.png', p)]) == 2, pictures
    for name in pictures:
      with Image.open(workdir / 'pictures' / name) as image:
        assert np.asarray(image.convert('RGB')).std() > 0
    with Image.open(workdir / 'pictures' / 'ranking_cross_camera_rrs.png') as image:
      row = 128 + 2 * visualize.BORDER + visualize.CAPTION_LINES * visualize.LINE + visualize.GAP
      grid = visualize.GAP + 4 * row  # one row per query (4 test persons: best, median and worst by AP)
      assert grid + 4 * visualize.LINE <= image.size[1] <= grid + 8 * visualize.LINE  # title, rows, legend


def test_missing_checkpoint(runs):
  assert_one_line_error(runs['missing'], 'nowhere')


def test_unreadable_checkpoint_is_one_line_to_the_end(runs):
  # tensorstore reports the reads it completes after orbax closed its event loop, even after the error line
  assert_one_line_error(runs['unreadable'], r'unreadable/checkpoints/7: unreadable checkpoint: .*NOT_FOUND')


def test_checkpoint_of_another_dataset(runs):
  assert_one_line_error(runs['other'], 'classifies 625 identities .* 4 training identities')


def test_rerank_on_a_small_gallery_is_refused_in_one_line(runs):
  assert_one_line_error(runs['rerank'], r"^error: demo \(split 0\): re-ranking with k1=20 needs a gallery of at "
                        r"least 40 tracklets, the 'cross_camera' gallery has 4 .*pass --rerank_k1=2 or less")


def _ranked_toy(num):
  """pid i: a query (cam 0) and a gallery tracklet (cam 1); query i's match ranks i + 1, so AP = 1 / (i + 1)."""
  test = tuple(Tracklet((f'p{i}c{c}.png',), pid=i, camid=c) for c in (0, 1) for i in range(num))
  dataset = VideoReIDDataset('toy', train=(), test=test, query=np.arange(num),
                             galleries={'cross_camera': np.arange(num, 2 * num)})
  query = np.asarray([[2.0] * i + [1.0] + [0.0] * (num - i - 1) for i in range(num)], np.float32)
  return dataset, np.concatenate([query, np.eye(num, dtype=np.float32)])


def test_check_rerank_rule_and_small_k1_reranks():
  dataset, features = _ranked_toy(6)
  with pytest.raises(evaluator.EvaluationError, match='at least 8 tracklets.*has 6 .*--rerank_k1=3 or less'):
    evaluator.score_features(features, dataset, distance='cosine', clip_selection='rrs', rerank=True,
                             rerank_k=(4, 2))
  with pytest.raises(evaluator.EvaluationError, match='k2=4 exceeds k1=3'):
    evaluator.check_rerank(dataset, 3, 4)
  results = evaluator.score_features(features, dataset, distance='cosine', clip_selection='rrs', rerank=True,
                                     rerank_k=(3, 1))
  assert results['rerank_k'] == (3, 1)
  assert 'k-reciprocal re-ranking (k1=3, k2=1)' in evaluator.format_results(results)


def test_picture_queries_best_median_worst_or_picked():
  dataset, features = _ranked_toy(6)
  plain = evaluator.score_features(features, dataset, distance='cosine', clip_selection='rrs')
  assert plain['conventions']['cross_camera']['mAP'] == pytest.approx(np.mean(1 / np.arange(1, 7)))
  chosen, notes = evaluator.picture_queries(dataset, features, 'cross_camera', 'cosine')
  assert chosen == [0, 1, 2, 3, 4, 5]
  assert notes == ['best AP of the 6 queries'] * 2 + ['median AP of the 6 queries'] * 2 + \
      ['worst AP of the 6 queries'] * 2
  chosen, _ = evaluator.picture_queries(dataset, features, 'cross_camera', 'cosine', positions=[5, 1], pids=[3, 1])
  assert chosen == [5, 1, 3]
  with pytest.raises(evaluator.EvaluationError, match='--picture_queries: 6 is outside .*positions 0..5'):
    evaluator.picture_queries(dataset, features, 'cross_camera', 'cosine', positions=[6])
  with pytest.raises(evaluator.EvaluationError, match='--picture_pids: pid 99 has no query tracklet'):
    evaluator.picture_queries(dataset, features, 'cross_camera', 'cosine', pids=[99])


def test_empty_query_set(runs, monkeypatch):
  """The check behind eval.py's one-line error (same `except` branch as test_checkpoint_of_another_dataset)."""
  load = evaluator.load_dataset
  empty = lambda *a, **k: dataclasses.replace(load(*a, **k), query=np.zeros(0, np.int64))
  monkeypatch.setattr(evaluator, 'load_dataset', empty)
  with pytest.raises(evaluator.EvaluationError, match=r'^demo \(split 0\) at .*: the query set is empty$'):
    evaluator.evaluate_checkpoint(runs['workdirs'][0])


def test_unknown_override_key():
  with pytest.raises(evaluator.EvaluationError, match='--config.model.nope'):
    evaluator.apply_overrides(get_config(), {'model.nope': 1})


def test_format_and_mean_over_splits():
  scores = lambda r1, no_match: {'mAP': 0.5, 'R-1': r1, 'R-5': 1.0, 'R-10': 1.0, 'R-20': 1.0, 'num_query': 4,
                                 'num_gallery': 9, 'num_scored': 4 - no_match, 'no_match': no_match}
  results = [{'dataset': 'prid', 'split': s, 'clip_selection': 'dense', 'distance': 'cosine', 'rerank': False,
              'conventions': {'cross_camera': scores(r1, s)}} for s, r1 in ((0, 0.25), (1, 0.75))]
  mean = evaluator.mean_over_splits(results)
  assert mean['split'] == (0, 1) and mean['conventions']['cross_camera']['R-1'] == 0.5
  table = evaluator.format_results(mean)
  assert table.splitlines()[0] == ('prid (mean over 2 splits 0,1) | clip selection: dense | distance: cosine | '
                                   'no re-ranking')
  assert re.search(r'^cross_camera\s+50\.00\s+50\.00\s+100\.00', table, re.MULTILINE)
  assert 'cross_camera: 0.5 queries without a valid match, skipped' in table
  with pytest.raises(evaluator.EvaluationError, match='different distance'):
    evaluator.mean_over_splits([results[0], dict(results[1], distance='euclidean')])


def test_mars_protocol_conventions_with_imperfect_features(shared_data):
  """Real MARS pids/camids, every 10th query; features = identity code + noise, so APs spread over (0, 1) and
  plain and trapezoid AP, and skipping or counting queries without a match, give different numbers."""
  full = load_dataset('mars', shared_data / 'mars')
  dataset = dataclasses.replace(full, query=full.query[::10])
  pids, camids = evaluator.tracklet_labels(dataset)
  rng = np.random.default_rng(0)
  codes = rng.normal(size=(pids.max() + 2, 16))
  features = (codes[pids + 1] + 0.8 * rng.normal(size=(len(pids), 16))).astype(np.float32)
  results = evaluator.score_features(features, dataset, distance='cosine', clip_selection='dense')
  table = results['conventions']
  assert list(table) == ['paper', 'torchreid', 'official']
  assert [table[c]['num_gallery'] for c in table] == [11310, 9330, 12180]
  want = {}
  for name, scores in table.items():
    want[name] = reference_scores(features, dataset.query, dataset.galleries[name], pids, camids, name)
    ap, r1, r5, no_match = want[name]
    assert scores['mAP'] == pytest.approx(ap, abs=1e-5)
    assert (scores['R-1'], scores['R-5']) == pytest.approx((r1, r5), abs=1e-9)
    assert scores['num_query'] == 198 and scores['no_match'] == no_match
    assert scores['num_scored'] == 198 - (no_match if name == 'torchreid' else 0)
  assert table['torchreid']['no_match'] > 0 and table['paper']['no_match'] == 0
  # The case tells the conventions apart: each pair of mAPs differs by far more than the tolerance.
  maps = sorted(v[0] for v in want.values())
  assert 0.2 < maps[0] and maps[-1] < 0.9 and min(np.diff(maps)) > 1e-3
  assert 'mars (test set) | clip selection: dense' in evaluator.format_results(results)


def test_rerank_flag_through_eval_py(runs):
  """eval.py --rerank prints the scores of the saved features after the reference re-ranking (k1=20, k2=6,
  lambda=0.3), which differ here from the scores without it."""
  returncode, text, stderr = runs['rerank_scores']
  assert returncode == 0, stderr[-3000:]
  assert 'demo (split 0 step 7) | clip selection: rrs | distance: cosine | k-reciprocal re-ranking' in text
  row = re.search(r'^cross_camera\s+([\d.]+)\s+([\d.]+)\s+([\d.]+)\s+[\d.]+\s+[\d.]+\s+40\s+40\s+0$', text,
                  re.MULTILINE)
  assert row, text
  saved = np.load(runs['root'] / 'rerank.npz')
  labels = (saved['query'], saved['gallery_cross_camera'], saved['pids'], saved['camids'], 'cross_camera')
  want = reference_scores(saved['features'], *labels, rerank=True)
  plain = reference_scores(saved['features'], *labels)
  assert abs(want[0] - plain[0]) > 0.005  # printed to 0.01 %: the table tells re-ranked from plain apart
  assert [float(v) for v in row.groups()] == pytest.approx([100 * v for v in want[:3]], abs=0.006)
