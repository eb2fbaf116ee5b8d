"""Evaluation of a model on a dataset's test set under every scoring convention it defines (DESIGN.md §3).

`evaluate` embeds the test tracklets once (`extract`) and scores the query set against each gallery of
`dataset.galleries` ('paper', 'torchreid', 'official' on MARS; 'paper', 'official' on LS-VID; 'cross_camera'
on iLIDS-VID, PRID-2011 and DukeMTMC-VideoReID; README "Scoring conventions") with the pure
ranking metrics (`metrics`), optionally after k-reciprocal re-ranking (`rerank`). `format_results` prints
the table, naming dataset, split, clip selection, distance and convention, as every reported number must.
"""

from __future__ import annotations

import os
import pathlib
import tempfile
from typing import Any, Mapping, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from lstrl_jax import sharding
from lstrl_jax.data.datasets import load_dataset, reader_options
from lstrl_jax.data.index import VideoReIDDataset
from lstrl_jax.evaluation import extract
from lstrl_jax.evaluation import metrics
from lstrl_jax.evaluation import rerank as rerank_lib
from lstrl_jax.evaluation import visualize
from lstrl_jax.models.lstrl import model_from_config
from lstrl_jax.train.checkpoint import CHECKPOINT_DIR, load_for_eval
from lstrl_jax.train.workdir import WorkdirError, check_writable

COLUMNS = ('mAP',) + tuple(f'R-{k}' for k in metrics.CMC_RANKS)
SPLIT_DATASETS = ('ilidsvid', 'prid', 'demo')  # datasets reported per split (mean over 10 splits)
NUM_PICTURE_QUERIES = 6  # queries on a ranked-results sheet
NUM_FIGURE5_CLIPS = 2  # query clips drawn as Fig. 5


class EvaluationError(ValueError):
  """The dataset cannot be evaluated (e.g. an empty query set); the message is one line."""


def tracklet_labels(dataset: VideoReIDDataset) -> tuple[np.ndarray, np.ndarray]:
  """pids and camids of `dataset.test`, int64 `[N_test]` each."""
  pids = np.asarray([t.pid for t in dataset.test], np.int64)
  camids = np.asarray([t.camid for t in dataset.test], np.int64)
  return pids, camids


def check_rerank(dataset: VideoReIDDataset, k1: int, k2: int) -> None:
  """Refuses k-reciprocal re-ranking where a gallery is too small for its neighbourhoods to mean anything.

  Rule (this project's, not the paper's): every gallery must hold at least 2 x k1 tracklets and k2 <= k1. With
  fewer, the k1-reciprocal set of a query covers half the gallery or more, its Jaccard distance stops
  separating tracklets, and re-ranking lowers the scores instead of raising them (the demo's 20-tracklet
  gallery at the paper's k1=20: mAP 76 -> 58, R-1 60 -> 30). The message names the largest k1 that passes.

  Raises:
    EvaluationError: one line naming the dataset, the convention, the gallery size and what would pass.
  """
  if k2 > k1:
    raise EvaluationError(f're-ranking: k2={k2} exceeds k1={k1}; expected k2 <= k1')
  for name, gallery in dataset.galleries.items():
    if len(gallery) < 2 * k1:
      fits = f'pass --rerank_k1={len(gallery) // 2} or less' if len(gallery) >= 2 else 'it cannot be re-ranked'
      raise EvaluationError(
          f'{dataset.name} (split {dataset.split}): re-ranking with k1={k1} needs a gallery of at least {2 * k1} '
          f'tracklets, the {name!r} gallery has {len(gallery)} (the k1-reciprocal neighbourhoods would cover '
          f'most of it); {fits}, or leave out --rerank')


def _rank_one(features, query, gallery, pids, camids, convention, distance, rerank, rerank_k):
  """Scores one convention: features `[N_test, D]`, query / gallery indices into the test set."""
  qf, gf = features[query], features[gallery]
  labels = (pids[query], camids[query], pids[gallery], camids[gallery])
  if not rerank:
    return metrics.evaluate_features(qf, gf, *labels, convention=convention, distance=distance)
  dist = lambda a, b: metrics.distance_matrix(a, b, distance=distance)
  k1, k2 = rerank_k
  reranked = rerank_lib.k_reciprocal_rerank(dist(qf, gf), dist(qf, qf), dist(gf, gf), k1=k1, k2=k2)
  return metrics.evaluate_distances(reranked, *labels, convention=convention)


def score_features(features: np.ndarray, dataset: VideoReIDDataset, *, distance: str, clip_selection: str,
                   rerank: bool = False, conventions: Sequence[str] | None = None,
                   rerank_k: tuple[int, int] = (20, 6)) -> dict[str, Any]:
  """Ranking metrics of test-set features under each convention of `dataset.galleries`.

  Args:
    features: float `[N_test, D]`, row i the feature of `dataset.test[i]`.
    dataset: the dataset index (query and galleries).
    distance: 'cosine' or 'euclidean'.
    clip_selection: how the features were made ('rrs' / 'dense'), recorded in the results.
    rerank: apply k-reciprocal re-ranking (lambda=0.3) before scoring.
    conventions: subset of `dataset.galleries` to score (default: all, in the dataset's order).
    rerank_k: (k1, k2) of re-ranking (paper: 20, 6); checked by `check_rerank`.

  Returns:
    {'dataset', 'split', 'clip_selection', 'distance', 'rerank', 'conventions': {name: the dict of
    `metrics.summarize` (mAP, R-1/5/10/20 as fractions, num_query, num_gallery, num_scored, no_match)}}.

  Raises:
    EvaluationError: empty query set or gallery, features not `[N_test, D]`, an unknown convention, or a
      gallery too small to re-rank (`check_rerank`).
  """
  if rerank:
    check_rerank(dataset, *rerank_k)
  if features.ndim != 2 or features.shape[0] != len(dataset.test):
    raise EvaluationError(f'features of shape {features.shape} do not cover the {len(dataset.test)} test '
                          f'tracklets of {dataset.name}')
  if len(dataset.query) == 0:
    raise EvaluationError(f'{dataset.name} (split {dataset.split}): the query set is empty')
  names = list(dataset.galleries) if conventions is None else list(conventions)
  pids, camids = tracklet_labels(dataset)
  per_convention = {}
  for name in names:
    if name not in dataset.galleries:
      raise EvaluationError(f'{dataset.name} has no gallery for convention {name!r}; it has '
                            f'{sorted(dataset.galleries)}')
    gallery = np.asarray(dataset.galleries[name])
    if len(gallery) == 0:
      raise EvaluationError(f'{dataset.name}: the {name!r} gallery is empty')
    try:
      per_convention[name] = _rank_one(features, np.asarray(dataset.query), gallery, pids, camids, name,
                                       distance, rerank, rerank_k)
    except ValueError as error:
      raise EvaluationError(f'{dataset.name}, convention {name!r}: {error}') from error
  results = {'dataset': dataset.name, 'split': dataset.split, 'clip_selection': clip_selection,
             'distance': distance, 'rerank': bool(rerank), 'conventions': per_convention}
  if rerank:
    results['rerank_k'] = tuple(rerank_k)
  return results


def evaluate(model: nn.Module, variables: Any, dataset: VideoReIDDataset, config: ml_collections.ConfigDict,
             *, clip_selection: str, mesh: jax.sharding.Mesh, rerank: bool = False) -> dict[str, Any]:
  """Embeds `dataset.test` with the model (eval mode, f_bn) and scores it under every convention.

  Args:
    model: e.g. `LSTRL`; variables: its {'params', 'batch_stats'}.
    dataset: the dataset index.
    config: reads seq_len, height, width, eval_batch_size, num_workers, packed_dir and distance.
    clip_selection: 'rrs' or 'dense'.
    mesh: data-parallel mesh.
    rerank: k-reciprocal re-ranking before scoring.

  Returns:
    The dict of `score_features`.

  Raises:
    EvaluationError: see `score_features`. ValueError / DatasetError: see `extract.extract_features`.
  """
  if len(dataset.query) == 0:
    raise EvaluationError(f'{dataset.name} (split {dataset.split}): the query set is empty')
  features = extract.extract_features(model, variables, dataset, config, clip_selection=clip_selection,
                                      mesh=mesh)
  return score_features(features, dataset, distance=config.distance, clip_selection=clip_selection,
                        rerank=rerank)


def mean_over_splits(results: Sequence[dict[str, Any]]) -> dict[str, Any]:
  """Averages the numbers of several `evaluate` results (one per split) convention by convention.

  Returns:
    The same structure with 'split' set to the tuple of splits and every number the mean.

  Raises:
    EvaluationError: results of different datasets, clip selections, distances or conventions.
  """
  first = results[0]
  for other in results[1:]:
    for key in ('dataset', 'clip_selection', 'distance', 'rerank'):
      if other[key] != first[key]:
        raise EvaluationError(f'cannot average splits with different {key}: {first[key]!r} vs {other[key]!r}')
    if list(other['conventions']) != list(first['conventions']):
      raise EvaluationError('cannot average splits scored under different conventions')
  conventions = {
      name: {key: float(np.mean([r['conventions'][name][key] for r in results])) for key in scores}
      for name, scores in first['conventions'].items()
  }
  keys = ('dataset', 'clip_selection', 'distance', 'rerank', 'rerank_k')
  return dict({k: first[k] for k in keys if k in first}, split=tuple(r['split'] for r in results),
              conventions=conventions)


def _title(results: dict[str, Any]) -> str:
  split = results['split']
  if isinstance(split, tuple):
    where = f'mean over {len(split)} splits {",".join(map(str, split))}'
  elif results['dataset'] in SPLIT_DATASETS:
    where = f'split {split}'
  else:
    where = 'test set'
  k1, k2 = results.get('rerank_k', (20, 6))
  rerank = f'k-reciprocal re-ranking (k1={k1}, k2={k2})' if results['rerank'] else 'no re-ranking'
  step = f' step {results["step"]}' if 'step' in results else ''
  return (f'{results["dataset"]} ({where}{step}) | clip selection: {results["clip_selection"]} | distance: '
          f'{results["distance"]} | {rerank}')


def format_results(results: dict[str, Any]) -> str:
  """A text table of `evaluate` / `mean_over_splits` results: one row per convention, numbers in %."""
  header = f'{"convention":<13}' + ''.join(f'{c:>8}' for c in COLUMNS) + f'{"queries":>9}{"gallery":>9}'
  header += f'{"no match":>10}'
  lines = [_title(results), header]
  for name, scores in results['conventions'].items():
    row = f'{name:<13}' + ''.join(f'{100 * scores[c]:8.2f}' for c in COLUMNS)
    counts = (scores['num_query'], scores['num_gallery'], scores['no_match'])
    row += ''.join(f'{value:>{width}.{0 if float(value).is_integer() else 1}f}'
                   for value, width in zip(counts, (9, 9, 10)))
    lines.append(row)
  for name, scores in results['conventions'].items():
    if scores['no_match']:
      rule = 'skipped' if metrics.get_convention(name).skip_no_match else 'counted as AP 0, CMC 0'
      lines.append(f'{name}: {scores["no_match"]:g} queries without a valid match, {rule}')
  return '\n'.join(lines)


def apply_overrides(config: ml_collections.ConfigDict, overrides: Mapping[str, Any]) -> None:
  """Sets dotted keys ('model.depth', 'eval_batch_size') of `config` in place.

  Raises:
    EvaluationError: a key the config does not hold.
  """
  for dotted, value in overrides.items():
    *parents, leaf = dotted.split('.')
    node = config
    for key in parents:
      node = node.get(key) if isinstance(node, ml_collections.ConfigDict) else None
    if not isinstance(node, ml_collections.ConfigDict) or leaf not in node:
      raise EvaluationError(f'--config.{dotted}: the checkpoint config has no such key')
    node[leaf] = value


def check_variables(model: nn.Module, variables: Any, config: ml_collections.ConfigDict, where: str) -> None:
  """Raises EvaluationError unless `variables` have exactly the shapes `model` initialises for `config`.

  The classifier is checked first, so a checkpoint of another dataset (or split protocol) is named as such.
  """
  kernel = variables['params'].get('classifier', {}).get('kernel')
  if kernel is not None and kernel.shape[-1] != model.num_classes:
    raise EvaluationError(f'{where}: the checkpoint classifies {kernel.shape[-1]} identities but dataset '
                          f'{config.dataset!r} has {model.num_classes} training identities')
  clips = jnp.zeros((1, config.seq_len, config.height, config.width, 3), jnp.float32)
  expected = jax.eval_shape(lambda: model.init(jax.random.key(0), clips, train=False))
  expected = {k: expected.get(k, {}) for k in ('params', 'batch_stats')}
  got = {k: variables.get(k, {}) for k in ('params', 'batch_stats')}
  flat_expected = {jax.tree_util.keystr(p): v.shape for p, v in jax.tree_util.tree_leaves_with_path(expected)}
  flat_got = {jax.tree_util.keystr(p): np.shape(v) for p, v in jax.tree_util.tree_leaves_with_path(got)}
  for key in sorted(set(flat_expected) | set(flat_got)):
    if flat_expected.get(key) != flat_got.get(key):
      raise EvaluationError(f'{where}: variable {key} is {flat_got.get(key)} in the checkpoint but '
                            f'{flat_expected.get(key)} for config.model; do the overrides change the model?')


def save_features(path: str | pathlib.Path, features: np.ndarray, dataset: VideoReIDDataset,
                  results: Mapping[str, Any]) -> pathlib.Path:
  """Writes test-set features and labels as .npz, atomically (temporary file, then rename).

  Keys: features float32 `[N_test, D]`, pids / camids int64 `[N_test]`, frame_paths str `[F]` (all frames,
  tracklet after tracklet), frame_offsets int64 `[N_test + 1]` (tracklet i = frame_paths[o[i]:o[i+1]]),
  query int64 `[Q]`, gallery_<convention> int64 `[G]`, and dataset, split, clip_selection, step.
  """
  path = pathlib.Path(path)
  path.parent.mkdir(parents=True, exist_ok=True)
  pids, camids = tracklet_labels(dataset)
  lengths = [len(t.frames) for t in dataset.test]
  arrays = dict(
      features=np.asarray(features, np.float32), pids=pids, camids=camids,
      frame_paths=np.asarray([f for t in dataset.test for f in t.frames], dtype=str),
      frame_offsets=np.concatenate([[0], np.cumsum(lengths)]).astype(np.int64),
      query=np.asarray(dataset.query, np.int64), dataset=np.asarray(dataset.name), split=np.asarray(dataset.split),
      clip_selection=np.asarray(results['clip_selection']), step=np.asarray(results.get('step', -1)),
      **{f'gallery_{name}': np.asarray(g, np.int64) for name, g in dataset.galleries.items()})
  fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f'.{path.name}.', suffix='.tmp')
  try:
    with os.fdopen(fd, 'wb') as f:
      np.savez(f, **arrays)
    os.replace(tmp, path)
  except BaseException:
    os.unlink(tmp)
    raise
  return path


def workdir_of(path: str | pathlib.Path) -> pathlib.Path:
  """The training workdir of a workdir, its checkpoints/ folder or a checkpoint step directory."""
  path = pathlib.Path(path).absolute()
  if (path / CHECKPOINT_DIR).is_dir():
    return path
  return path.parent if path.name == CHECKPOINT_DIR else path.parent.parent


def picture_queries(dataset: VideoReIDDataset, features: np.ndarray, convention: str, distance: str, *,
                    positions: Sequence[int] = (), pids: Sequence[int] = ()) -> tuple[list[int], list[str]]:
  """The queries a ranked-results sheet shows, as positions in `dataset.query`, and a note per row.

  By default the best, median and worst queries by AP under `convention` (NUM_PICTURE_QUERIES rows, two of
  each, ties broken by query order); `positions` (0-based positions in the query set) or `pids` (every query
  tracklet of each pid) pick them instead.

  Raises:
    EvaluationError: a position outside the query set or a pid with no query tracklet.
  """
  query = np.asarray(dataset.query)
  if positions or pids:
    chosen = []
    for position in positions:
      if not 0 <= position < len(query):
        raise EvaluationError(f'--picture_queries: {position} is outside the query set of {dataset.name} '
                              f'(positions 0..{len(query) - 1})')
      chosen.append(int(position))
    query_pids = np.asarray([dataset.test[i].pid for i in query])
    for pid in pids:
      found = np.flatnonzero(query_pids == pid)
      if not len(found):
        raise EvaluationError(f'--picture_pids: pid {pid} has no query tracklet in {dataset.name} '
                              f'(split {dataset.split})')
      chosen += [int(i) for i in found]
    chosen = list(dict.fromkeys(chosen))
    return chosen, ['picked by --picture_queries / --picture_pids'] * len(chosen)
  pids_all, camids = tracklet_labels(dataset)
  gallery = np.asarray(dataset.galleries[convention])
  scores = metrics.scores_from_features(features[query], features[gallery], pids_all[query], camids[query],
                                        pids_all[gallery], camids[gallery], convention=convention,
                                        distance=distance)
  order = np.argsort(-np.asarray(scores['ap']), kind='stable')  # best first
  per_group = NUM_PICTURE_QUERIES // 3
  middle = max(0, len(order) // 2 - per_group // 2)
  groups = (('best', order[:per_group]), ('median', order[middle:middle + per_group]),
            ('worst', order[::-1][:per_group][::-1]))
  chosen, notes = [], []
  for name, members in groups:
    for position in members:
      if int(position) not in chosen:
        chosen.append(int(position))
        notes.append(f'{name} AP of the {len(order)} queries')
  return chosen, notes


def write_pictures(model: nn.Module, variables: Any, dataset: VideoReIDDataset, config: ml_collections.ConfigDict,
                   features: np.ndarray, directory: pathlib.Path, results: Mapping[str, Any], *,
                   positions: Sequence[int] = (), pids: Sequence[int] = ()) -> list[pathlib.Path]:
  """Ranked-results sheets (one per convention) and Fig. 5 for the first and last query shown, into `directory`.

  `results` (of `score_features`, with 'step') name the clip selection and checkpoint step in the titles;
  `positions` / `pids` pick the queries (`picture_queries`).
  """
  clip_selection = results['clip_selection']
  paths, shown = [], []
  for name in dataset.galleries:
    chosen, notes = picture_queries(dataset, features, name, config.distance, positions=positions, pids=pids)
    title = (f'{dataset.name} split {dataset.split} | convention {name} | clip selection {clip_selection} | '
             f'checkpoint step {results.get("step", "?")} | distance {config.distance}, no re-ranking')
    paths.append(visualize.write_ranking_sheet(
        dataset, features, directory / f'ranking_{name}_{clip_selection}.png', convention=name,
        distance=config.distance, query_positions=chosen, config=config, title=title, row_notes=notes))
    shown = shown or chosen
  if config.model.mae_stages or config.model.bme_stages:
    for position in list(dict.fromkeys(shown[:1] + shown[-1:]))[:NUM_FIGURE5_CLIPS]:  # first and last row
      paths += visualize.write_figure5(model, variables, dataset, config, int(dataset.query[position]), directory,
                                       step=results.get('step'))
  return paths


def evaluate_checkpoint(path: str | pathlib.Path, *, overrides: Mapping[str, Any] | None = None,
                        clip_selection: str | None = None, rerank: bool = False,
                        rerank_k: tuple[int, int] = (20, 6), features_path: str | pathlib.Path | None = None,
                        pictures: bool = False, picture_queries: Sequence[int] = (),
                        picture_pids: Sequence[int] = (), progress: bool = False) -> dict[str, Any]:
  """Evaluates a trained checkpoint on the dataset of its config (what `eval.py` runs per checkpoint).

  Args:
    path: a training workdir (latest step) or a checkpoint step directory.
    overrides: dotted config keys to change after loading the checkpoint's config.
    clip_selection: 'rrs' or 'dense'; None uses config.final_clip_selection.
    rerank: k-reciprocal re-ranking; rerank_k: its (k1, k2), checked before embedding (`check_rerank`).
    features_path: also write the features as .npz there (see `save_features`).
    pictures: write ranked-results sheets and Fig. 5 into `<workdir>/pictures/`; picture_queries /
      picture_pids pick their queries (`picture_queries`), else the best, median and worst by AP.
    progress: show a progress bar while embedding.

  Returns:
    The dict of `score_features` plus 'step' and 'checkpoint', and 'pictures' (paths) when drawn.

  Raises:
    CheckpointError: missing or unreadable checkpoint. DatasetError: unreadable dataset.
    EvaluationError: unknown override key, checkpoint not matching the dataset or model, empty query set,
      or the pictures' or features' folder not writable (checked before evaluating: a read-only run is
      evaluated only when its outputs can be written).
    ValueError: other bad config values (e.g. an eval_batch_size not divisible over the devices).
  """
  outputs = [(pathlib.Path(features_path).absolute().parent, 'features folder')] if features_path else []
  outputs += [(workdir_of(path) / 'pictures', 'pictures folder')] if pictures else []
  for folder, what in outputs:
    try:
      check_writable(folder, what)
    except WorkdirError as error:
      raise EvaluationError(f'{error}; nothing was evaluated') from error
  config, variables, step = load_for_eval(path)
  apply_overrides(config, overrides or {})
  clip_selection = clip_selection or config.final_clip_selection
  dataset = load_dataset(config.dataset, config.data_dir, split=config.split, **reader_options(config))
  if len(dataset.query) == 0:
    raise EvaluationError(f'{dataset.name} (split {dataset.split}) at {config.data_dir}: the query set is empty')
  if rerank:
    check_rerank(dataset, *rerank_k)
  model = model_from_config(config.model, dataset.num_train_pids)
  check_variables(model, variables, config, str(path))
  mesh = sharding.make_mesh()
  features = extract.extract_features(model, variables, dataset, config, clip_selection=clip_selection, mesh=mesh,
                                      progress=progress)
  results = score_features(features, dataset, distance=config.distance, clip_selection=clip_selection,
                           rerank=rerank, rerank_k=rerank_k)
  results.update(step=step, checkpoint=str(path))
  if features_path:
    save_features(features_path, features, dataset, results)
  if pictures:
    directory = workdir_of(path) / 'pictures'
    results['pictures'] = [str(p) for p in write_pictures(model, variables, dataset, config, features, directory,
                                                          results, positions=picture_queries, pids=picture_pids)]
  return results
