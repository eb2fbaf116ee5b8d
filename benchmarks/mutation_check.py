r"""Mutation check: does the test suite catch realistic single-line bugs that would spoil a reproduction?

  python -m benchmarks.mutation_check                    # every mutant, each against its targeted tests
  python -m benchmarks.mutation_check --only rrs_dependent_chunks,erasing_swapped_h_w
  python -m benchmarks.mutation_check --full             # every mutant against the whole suite (slow)
  python -m benchmarks.mutation_check --list             # the mutants and their tests, without running

A tool for the maintainers (issue 16), not run by CI. The repository's tracked and untracked-not-ignored files
are copied to a temporary folder (beside a link `shared` -> ../shared, so the tests that read the real data
run); then, one mutant at a time, one line of one file is replaced, the mutant's test selection (or, with
--full, the whole suite, stopping at the first failure) runs in a fresh `python -m pytest`, and the file is
restored. A mutant is *caught* when pytest reports failing tests (exit status 1); *missed* when the tests pass;
*error* for any other status (collection error, timeout). The unmutated selection runs first and must pass.
Prints one row per mutant (caught / missed, the seconds it took, the failing tests) and a Markdown table.
The exit status is 0 when every mutant is caught, 1 otherwise.

Mutants 1-8 are the eight behaviours of issue 16; the others are further single-line bugs across the package.
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import pathlib
import platform
import re
import shutil
import subprocess
import sys
import tempfile
import time

REPO = pathlib.Path(__file__).resolve().parents[1]
SHARED = REPO.parent / 'shared'


@dataclasses.dataclass(frozen=True)
class Mutant:
  """One single-line bug: `old` (text occurring exactly once in `path`) becomes `new`.

  Attributes:
    name: short identifier.
    issue: the issue-16 behaviour it breaks (1-8), or 0 for the others.
    path: file relative to the repository root.
    old, new: the original and the mutated text (one line of code; `old` may carry context to be unique).
    tests: pytest selection that must catch it (files or node ids).
  """

  name: str
  issue: int
  path: str
  old: str
  new: str
  tests: tuple[str, ...]


def _m(name, issue, path, old, new, *tests):
  return Mutant(name, issue, path, old, new, tests)


SAMPLING = 'tests/test_sampling.py'
RECIPE = 'tests/test_recipe.py'
TRANSFORMS = 'tests/test_transforms.py'
DEFAULT = 'configs/default.py'
EVAL_CLI = 'tests/test_eval_cli.py'
MARS_TEST = f'{EVAL_CLI}::test_mars_protocol_conventions_with_imperfect_features'

MUTANTS = (
    # 1. P x K identity order changes every epoch.
    _m('sampler_fixed_identity_order', 1, 'lstrl_jax/data/sampler.py', '[self.seed, _PERMUTATION, epoch]',
       '[self.seed, _PERMUTATION, 0]', SAMPLING),
    # 2. The paper's recipe values.
    _m('recipe_learning_rate', 2, DEFAULT, 'config.learning_rate = 3e-4', 'config.learning_rate = 3.5e-4', RECIPE),
    _m('recipe_weight_decay', 2, DEFAULT, 'config.weight_decay = 5e-4', 'config.weight_decay = 5e-5', RECIPE),
    _m('recipe_label_smoothing', 2, DEFAULT, 'config.label_smoothing = 0.1', 'config.label_smoothing = 0.0', RECIPE),
    _m('recipe_triplet_margin', 2, DEFAULT, 'config.triplet_margin = 0.3', 'config.triplet_margin = 0.5', RECIPE),
    _m('recipe_erasing_area', 2, DEFAULT, 'erasing_area=(0.02, 0.4)', 'erasing_area=(0.02, 0.33)', RECIPE),
    _m('recipe_erasing_aspect', 2, DEFAULT, 'erasing_aspect=(0.3, 3.3)', 'erasing_aspect=(0.3, 1 / 0.3)', RECIPE),
    _m('recipe_erasing_prob', 2, DEFAULT, 'erasing_prob=0.5', 'erasing_prob=0.3', RECIPE),
    _m('recipe_pad', 2, DEFAULT, 'pad=10,', 'pad=8,', RECIPE),
    _m('recipe_warmup', 2, DEFAULT, 'config.warmup_epochs = 10', 'config.warmup_epochs = 5', RECIPE),
    _m('recipe_decay_every', 2, DEFAULT, 'config.decay_every_epochs = 70', 'config.decay_every_epochs = 60', RECIPE),
    _m('recipe_epochs', 2, DEFAULT, 'config.num_epochs = 400', 'config.num_epochs = 300', RECIPE),
    _m('recipe_seq_len', 2, DEFAULT, 'config.seq_len = 8', 'config.seq_len = 4', RECIPE),
    _m('recipe_identities', 2, DEFAULT, 'config.num_identities = 8', 'config.num_identities = 16', RECIPE),
    _m('recipe_instances', 2, DEFAULT, 'config.num_instances = 4', 'config.num_instances = 2', RECIPE),
    _m('recipe_height', 2, DEFAULT, 'config.height = 256', 'config.height = 224', RECIPE),
    _m('recipe_lsvid_overrides_k', 2, 'configs/lsvid.py', "config.dataset = 'lsvid'",
       "config.dataset = 'lsvid'; config.num_instances = 2", RECIPE),
    _m('recipe_from_config_swaps_ranges', 2, 'lstrl_jax/data/transforms.py',
       'tuple(augment.erasing_area), tuple(augment.erasing_aspect)',
       'tuple(augment.erasing_aspect), tuple(augment.erasing_area)', RECIPE),
    # 3. Evaluation embeds f_bn; padding rows are masked.
    _m('extract_embeds_f', 3, 'lstrl_jax/evaluation/extract.py', "features = outputs['bn_features']",
       "features = outputs['features']", 'tests/test_extract.py'),
    _m('extract_padding_features_unmasked', 3, 'lstrl_jax/evaluation/extract.py',
       ".astype(jnp.float32) * weight[:, None]", '.astype(jnp.float32)', 'tests/test_extract.py'),
    _m('extract_padding_counted', 3, 'lstrl_jax/evaluation/extract.py', 'counts.at[rows].add(weight)',
       'counts.at[rows].add(1.0)', 'tests/test_extract.py'),
    # 4. --rerank re-ranks through the evaluator and eval.py.
    _m('rerank_ignored_by_rank_one', 4, 'lstrl_jax/evaluation/evaluator.py', '  if not rerank:\n',
       '  if True:\n', 'tests/test_scoring.py'),
    _m('rerank_dropped_by_evaluate_checkpoint', 4, 'lstrl_jax/evaluation/evaluator.py',
       'clip_selection=clip_selection,\n                           rerank=rerank)',
       'clip_selection=clip_selection,\n                           rerank=False)',
       f'{EVAL_CLI}::test_rerank_flag_through_eval_py'),
    _m('rerank_flag_dropped_by_eval_py', 4, 'eval.py', 'rerank=_RERANK.value', 'rerank=False',
       f'{EVAL_CLI}::test_rerank_flag_through_eval_py'),
    # 5. Batch-hard triplet averages over every anchor.
    _m('triplet_mean_over_active_anchors', 5, 'lstrl_jax/train/losses.py',
       'return jnp.mean(jax.nn.relu(hardest_positive - hardest_negative + margin))',
       'return (lambda l: jnp.sum(l) / jnp.maximum(jnp.sum(l > 0), 1))(jax.nn.relu(hardest_positive - '
       'hardest_negative + margin))', 'tests/test_losses.py'),
    # 6. RRS uniform within each chunk, independent across chunks.
    _m('rrs_dependent_chunks', 6, 'lstrl_jax/data/sampling.py', 'return rng.integers(start, stop)',
       'return start + rng.integers(0, 1 << 30) % (stop - start)', SAMPLING),
    _m('rrs_last_frame_favoured', 6, 'lstrl_jax/data/sampling.py', 'return rng.integers(start, stop)',
       'return np.minimum(rng.integers(start, stop + 1), stop - 1)', SAMPLING),
    # 7. Random erasing orientation, probability, one rectangle for the clip.
    _m('erasing_swapped_h_w', 7, 'lstrl_jax/data/transforms.py',
       'h, w = round(math.sqrt(area * aspect)), round(math.sqrt(area / aspect))',
       'h, w = round(math.sqrt(area / aspect)), round(math.sqrt(area * aspect))', TRANSFORMS),
    _m('erasing_probability_inverted', 7, 'lstrl_jax/data/transforms.py', 'if rng.random() < config.erasing_prob:',
       'if rng.random() > config.erasing_prob:', TRANSFORMS),
    _m('erasing_uses_flip_probability', 7, 'lstrl_jax/data/transforms.py',
       'if rng.random() < config.erasing_prob:', 'if rng.random() < config.flip_prob:', TRANSFORMS),
    _m('erasing_first_frame_only', 7, 'lstrl_jax/data/transforms.py', 'clip[:, y:y + h, x:x + w] = MEAN_PIXEL',
       'clip[0, y:y + h, x:x + w] = MEAN_PIXEL', TRANSFORMS),
    # 8. Scoring conventions told apart.
    _m('official_plain_ap', 8, 'lstrl_jax/evaluation/metrics.py',
       "Convention('official', unlabeled_junk=True, trapezoid_ap=True",
       "Convention('official', unlabeled_junk=True, trapezoid_ap=False", MARS_TEST),
    _m('official_scored_as_paper', 8, 'lstrl_jax/evaluation/evaluator.py',
       'per_convention[name] = _rank_one(features, np.asarray(dataset.query), gallery, pids, camids, name,',
       "per_convention[name] = _rank_one(features, np.asarray(dataset.query), gallery, pids, camids, "
       "name.replace('official', 'paper'),", MARS_TEST),
    _m('split_mean_of_first_split', 8, 'lstrl_jax/evaluation/evaluator.py',
       "[r['conventions'][name][key] for r in results]", "[r['conventions'][name][key] for r in results[:1]]",
       f'{EVAL_CLI}::test_two_splits_table_features_and_pictures'),
    _m('eval_checkpoint_euclidean', 8, 'lstrl_jax/evaluation/evaluator.py',
       '  results = score_features(features, dataset, distance=config.distance,',
       "  results = score_features(features, dataset, distance='euclidean',",
       f'{EVAL_CLI}::test_two_splits_table_features_and_pictures'),
    # Others, across the package.
    _m('cosine_sign', 0, 'lstrl_jax/evaluation/metrics.py', 'return 1.0 - dot', 'return 1.0 + dot',
       'tests/test_metrics.py'),
    _m('junk_other_camera', 0, 'lstrl_jax/evaluation/metrics.py',
       'junk = same_pid & (g_camids[None, :] == q_camids[:, None])',
       'junk = same_pid & (g_camids[None, :] != q_camids[:, None])', 'tests/test_metrics.py'),
    _m('paper_skips_no_match', 0, 'lstrl_jax/evaluation/metrics.py',
       'scored = has_match if rule.skip_no_match else np.ones_like(has_match)', 'scored = has_match',
       'tests/test_metrics.py'),
    _m('labels_camid_from_pid', 0, 'lstrl_jax/evaluation/evaluator.py',
       'camids = np.asarray([t.camid for t in dataset.test], np.int64)',
       'camids = np.asarray([t.pid for t in dataset.test], np.int64)', MARS_TEST),
    _m('warmup_off_by_one', 0, 'lstrl_jax/train/optim.py', '(step + 1).astype(jnp.float32) / warmup',
       'step.astype(jnp.float32) / warmup', 'tests/test_optim.py'),
    _m('adam_without_weight_decay', 0, 'lstrl_jax/train/optim.py', 'optax.add_decayed_weights(config.weight_decay)',
       'optax.add_decayed_weights(0.0)', 'tests/test_optim.py'),
    _m('label_smoothing_halved', 0, 'lstrl_jax/train/losses.py', 'logits.shape[-1], dtype=jnp.float32), smoothing)',
       'logits.shape[-1], dtype=jnp.float32), smoothing / 2)', 'tests/test_losses.py'),
    _m('pairwise_distance_expansion', 0, 'lstrl_jax/train/losses.py', '- 2.0 * (x @ x.T)', '- (x @ x.T)',
       'tests/test_losses.py'),
    _m('rerank_lambda_swapped', 0, 'lstrl_jax/evaluation/rerank.py',
       'return jaccard * (1.0 - lambda_value) + original_dist[:num_query, num_query:] * lambda_value',
       'return jaccard * lambda_value + original_dist[:num_query, num_query:] * (1.0 - lambda_value)',
       'tests/test_rerank.py'),
    _m('rrs_test_last_frame', 0, 'lstrl_jax/data/sampling.py', 'return rrs_chunks(num_frames, seq_len)[0]',
       'return rrs_chunks(num_frames, seq_len)[1] - 1', SAMPLING),
    _m('dense_wraps_around', 0, 'lstrl_jax/data/sampling.py', 'return np.minimum(frames, num_frames - 1)',
       'return frames % num_frames', SAMPLING),
    _m('sampler_always_with_replacement', 0, 'lstrl_jax/data/sampler.py',
       'replace=len(candidates) < self.num_instances)', 'replace=True)', SAMPLING),
    _m('sampler_one_rng_per_batch', 0, 'lstrl_jax/data/sampler.py',
       'np.random.default_rng([seed, _CLIP, step, slot])', 'np.random.default_rng([seed, _CLIP, step, 0])',
       SAMPLING),
    _m('flip_vertical', 0, 'lstrl_jax/data/transforms.py',
       'image.transpose(PIL.Image.FLIP_LEFT_RIGHT)', 'image.transpose(PIL.Image.FLIP_TOP_BOTTOM)', TRANSFORMS),
    _m('crop_offsets_swapped', 0, 'lstrl_jax/data/transforms.py', 'x0, y0 = params.left - pad, params.top - pad',
       'x0, y0 = params.top - pad, params.left - pad', TRANSFORMS),
    _m('normalize_scale', 0, 'lstrl_jax/data/pipeline.py', 'return (clips.astype(jnp.float32) - mean) / std',
       'return (clips.astype(jnp.float32) / 255.0 - mean) / std', 'tests/test_pipeline.py::'
       'test_normalize_matches_the_imagenet_formula'),
    _m('tracklet_feature_sum_not_mean', 0, 'lstrl_jax/evaluation/extract.py',
       'return sums / np.maximum(counts, 1.0)[:, None]', 'return sums', 'tests/test_extract.py'),
    _m('model_test_feature_is_f', 0, 'lstrl_jax/models/lstrl.py',
       "'bn_features': bn_features,", "'bn_features': features,", 'tests/test_lstrl.py'),
)


def _cpu_name() -> str:
  """The CPU model from /proc/cpuinfo, else platform's guess."""
  try:
    text = pathlib.Path('/proc/cpuinfo').read_text()
  except OSError:
    return platform.processor() or platform.machine()
  found = re.search(r'^model name\s*:\s*(.+)$', text, re.MULTILINE)
  return found.group(1).strip() if found else platform.machine()


def _copy_repository(destination: pathlib.Path) -> pathlib.Path:
  """Copies the tracked and untracked-not-ignored files into destination/repo; links destination/shared."""
  files = subprocess.run(['git', 'ls-files', '--cached', '--others', '--exclude-standard', '-z'], cwd=REPO,
                         check=True, capture_output=True).stdout.decode().split('\0')
  root = destination / 'repo'
  for name in filter(None, files):
    source = REPO / name
    if source.is_file():
      target = root / name
      target.parent.mkdir(parents=True, exist_ok=True)
      shutil.copy2(source, target)
  if SHARED.is_dir():
    (destination / 'shared').symlink_to(SHARED)
  return root


def _run_pytest(root: pathlib.Path, selection: list[str], stop_first: bool, timeout: float,
                basetemp: pathlib.Path) -> tuple[int, float, list[str]]:
  """(exit status, seconds, failing test ids) of one `python -m pytest` in `root`."""
  args = [sys.executable, '-m', 'pytest', '-q', '-rf', '-p', 'no:cacheprovider', f'--basetemp={basetemp}']
  args += ['-x'] if stop_first else []
  env = dict(os.environ, JAX_PLATFORMS='cpu', PYTHONPATH=str(root))
  start = time.perf_counter()
  try:
    result = subprocess.run(args + selection, cwd=root, env=env, capture_output=True, text=True, timeout=timeout)
  except subprocess.TimeoutExpired:
    return -1, time.perf_counter() - start, ['timeout']
  failed = re.findall(r'^FAILED (\S+)', result.stdout, re.MULTILINE)
  if result.returncode not in (0, 1):
    failed.append(result.stdout.strip().splitlines()[-1] if result.stdout.strip() else result.stderr[-300:])
  return result.returncode, time.perf_counter() - start, failed


def _short(failed: list[str]) -> str:
  """Failing tests as 'test_name (n cases)', parameters folded."""
  names = [f.split('::')[-1].split('[')[0] for f in failed]
  return ', '.join(n if names.count(n) == 1 else f'{n} ({names.count(n)} cases)' for n in dict.fromkeys(names))


def _apply(root: pathlib.Path, mutant: Mutant) -> str:
  """Writes the mutant into the copy; returns the original text of the file."""
  path = root / mutant.path
  text = path.read_text()
  count = text.count(mutant.old)
  if count != 1:
    raise SystemExit(f'{mutant.name}: {mutant.old!r} occurs {count} times in {mutant.path}; expected once')
  path.write_text(text.replace(mutant.old, mutant.new))
  return text


def main() -> int:
  parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
  parser.add_argument('--full', action='store_true', help='run the whole suite per mutant (stops at 1st failure)')
  parser.add_argument('--only', default='', help='comma-separated mutant names')
  parser.add_argument('--list', action='store_true', help='print the mutants and exit')
  parser.add_argument('--timeout', type=float, default=1800, help='seconds per pytest run')
  args = parser.parse_args()
  names = [n for n in args.only.split(',') if n]
  unknown = set(names) - {m.name for m in MUTANTS}
  if unknown:
    parser.error(f'unknown mutants {sorted(unknown)}')
  mutants = [m for m in MUTANTS if not names or m.name in names]
  if args.list:
    for m in mutants:
      print(f'{m.name:38} issue {m.issue}  {m.path}: {m.old.strip()!r} -> {m.new.strip()!r}  [{" ".join(m.tests)}]')
    return 0
  print(f'{len(mutants)} mutants | CPU {_cpu_name()}, {os.cpu_count()} cores | load {os.getloadavg()[0]:.2f} at '
        'start', flush=True)
  with tempfile.TemporaryDirectory(prefix='lstrl_mutants_') as tmp:
    tmp = pathlib.Path(tmp)
    root = _copy_repository(tmp)
    for m in mutants:  # every mutant's text must be found before anything runs
      (root / m.path).write_text(_apply(root, m))
    selection = lambda m: ['tests'] if args.full else list(m.tests)
    baseline = sorted({t for m in mutants for t in selection(m)})
    status, seconds, failed = _run_pytest(root, baseline, False, args.timeout, tmp / 'pytest')
    print(f'baseline (unmutated, {len(baseline)} selections): exit {status}, {seconds:.0f} s', flush=True)
    if status != 0:
      print(f'the unmutated tests fail: {failed}')
      return 1
    rows = []
    for m in mutants:
      original = _apply(root, m)
      try:
        status, seconds, failed = _run_pytest(root, selection(m), args.full, args.timeout, tmp / 'pytest')
      finally:
        (root / m.path).write_text(original)
      verdict = {0: 'MISSED', 1: 'caught'}.get(status, 'error')
      rows.append((m, verdict, seconds, failed))
      print(f'{m.name:38} {verdict:7} {seconds:6.1f} s  {_short(failed)}', flush=True)
  caught = sum(v == 'caught' for _, v, _, _ in rows)
  total = sum(s for _, _, s, _ in rows)
  print(f'\n{caught} of {len(rows)} mutants caught; {total:.0f} s of test runs; load {os.getloadavg()[0]:.2f} at end')
  print('\n| mutant | issue item | file | verdict | s | failing tests |\n| --- | --- | --- | --- | --- | --- |')
  for m, verdict, seconds, failed in rows:
    print(f'| {m.name} | {m.issue or "other"} | {m.path} | {verdict} | {seconds:.0f} | {_short(failed)} |')
  return 0 if caught == len(rows) else 1


if __name__ == '__main__':
  sys.exit(main())
