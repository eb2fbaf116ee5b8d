"""The LSTRL train loop: `train_and_evaluate(config, workdir)` (DESIGN.md section 2).

One jitted, pure `train_step(state, batch) -> (state, metrics)` over a 1-D `data` mesh of every device of
every process (`lstrl_jax.sharding`): the `TrainState` is replicated, the batch sharded along its leading
axis, and the state argument donated, so parameters and Adam moments are updated in place. Each host loads
`P*K / process_count` clips (uint8); normalisation to float happens inside the step, on device.

BatchNorm under jit: the model is written for one logical batch, and XLA computes every BatchNorm mean and
variance over the whole *global* batch, inserting the cross-device reductions itself, i.e. synchronised BN.
The paper's PyTorch code (DataParallel) normalised with per-GPU statistics; the difference matters only
when the per-device batch is small, and on one device the two coincide. Results are therefore independent
of the device count up to float summation order.

Precision: `config.model.dtype='bfloat16'` computes the backbone, MAE and BME in bfloat16 with float32
parameters, BatchNorm statistics and Adam moments; the head, the logits and both losses stay float32.
Multi-host: `sharding.maybe_initialize_distributed()` joins the job; every process runs this same loop on
its shard of the data (`pipeline.train_loader` shards by process), and process 0 alone writes logs.

Loop: check what can be checked first (`preflight`), take the workdir (`workdir`: one writer, left as found
on an early failure), resume from `<workdir>/checkpoints` when it holds a step (state, data iterator and
config, see `checkpoint`), else build a fresh state (with ImageNet weights when `config.model.pretrained` is
set). Every `log_every_steps` the step metrics are fetched, their losses checked (`guards.LossWatch`),
averaged and written (TensorBoard, metrics.jsonl, progress bar). A checkpoint is saved, after checking that
every parameter is finite, every `checkpoint_every_epochs`, before every periodic evaluation, at the end, on
SIGTERM or Ctrl-C (or the multi-host preemption notice) and at `config.stop_at_step`; the last two stop the
run, which the same command later resumes. A failed background save raises `checkpoint.CheckpointError` before
the next log; a diverged loss or parameter raises `guards.TrainingDivergedError` without saving.
Evaluation runs every `eval_every_epochs` with `eval_clip_selection` and once at the end with
`final_clip_selection`; the final results go to `<workdir>/results.json` and are returned. A run resumed at a
step due an evaluation runs that evaluation first, so a run stopped there (a stop saves before evaluating) or
killed during the evaluation (the checkpoint saved before it is kept) logs the same evaluations as a straight
one. A SIGTERM that arrives during an evaluation is acted on after it.
"""

from __future__ import annotations

import dataclasses
import functools
import json
import pathlib
import time
from typing import Any, Callable

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
import orbax.checkpoint as ocp
from flax import linen as nn
from jax.sharding import Mesh

from lstrl_jax import sharding
from lstrl_jax import xla_cpu
from lstrl_jax.data import pipeline
from lstrl_jax.data.datasets import load_dataset, reader_options
from lstrl_jax.data.index import VideoReIDDataset
from lstrl_jax.evaluation import evaluator
from lstrl_jax.models import lstrl
from lstrl_jax.train import checkpoint
from lstrl_jax.train import guards
from lstrl_jax.train import losses
from lstrl_jax.train import optim
from lstrl_jax.train import state as state_lib
from lstrl_jax.train import preflight
from lstrl_jax.train import workdir as workdir_lib
from lstrl_jax.train import writers

CLIP_SELECTIONS = ('rrs', 'dense')
StepFn = Callable[[state_lib.TrainState, dict[str, jax.Array]], tuple[state_lib.TrainState, dict[str, jax.Array]]]


def train_step(
    state: state_lib.TrainState,
    batch: dict[str, jax.Array],
    *,
    learning_rate_fn: optax.Schedule,
    label_smoothing: float,
    triplet_margin: float,
) -> tuple[state_lib.TrainState, dict[str, jax.Array]]:
  """One optimiser step on the LSTRL objective: label-smoothed CE on the logits + batch-hard triplet on f.

  Args:
    state: the train state (its `apply_fn` is an LSTRL-like model's `apply`).
    batch: {'clips': uint8 `[B, T, H, W, 3]`, 'pids': int32 `[B]`, ...}, B the global batch.
    learning_rate_fn: the schedule, to report the rate this step used.
    label_smoothing: epsilon of the cross-entropy (paper: 0.1).
    triplet_margin: margin of the batch-hard triplet loss (paper: 0.3).

  Returns:
    (new state, metrics) with float32 scalar metrics 'loss' (= ce + triplet), 'ce', 'triplet', 'accuracy'
    (classifier top-1 on the batch, a fraction) and 'learning_rate'.
  """
  clips = pipeline.normalize(batch['clips'])
  pids = batch['pids']

  def loss_fn(params):
    outputs, updates = state.apply_fn(
        {'params': params, 'batch_stats': state.batch_stats}, clips, train=True, mutable=['batch_stats']
    )
    ce = losses.label_smoothed_cross_entropy(outputs['logits'], pids, label_smoothing)
    triplet = losses.batch_hard_triplet(outputs['features'], pids, triplet_margin)
    accuracy = jnp.mean((jnp.argmax(outputs['logits'], axis=-1) == pids).astype(jnp.float32))
    return ce + triplet, (updates['batch_stats'], {'ce': ce, 'triplet': triplet, 'accuracy': accuracy})

  (loss, (batch_stats, metrics)), grads = jax.value_and_grad(loss_fn, has_aux=True)(state.params)
  metrics = dict(metrics, loss=loss, learning_rate=learning_rate_fn(state.step))
  return state.apply_gradients(grads=grads, batch_stats=batch_stats), metrics


def make_train_step(
    config: ml_collections.ConfigDict, learning_rate_fn: optax.Schedule, mesh: Mesh
) -> StepFn:
  """`train_step` jitted over `mesh`: state replicated and donated, batch sharded, metrics replicated.

  Raises:
    ValueError: the global batch (num_identities * num_instances) does not divide over the devices.
  """
  sharding.check_divisible(
      config.num_identities * config.num_instances, mesh, 'config.num_identities * config.num_instances ='
  )
  step = functools.partial(
      train_step,
      learning_rate_fn=learning_rate_fn,
      label_smoothing=config.label_smoothing,
      triplet_margin=config.triplet_margin,
  )
  replicated = sharding.replicated(mesh)
  return jax.jit(
      step,
      in_shardings=(replicated, sharding.batch_sharded(mesh)),
      out_shardings=(replicated, replicated),
      donate_argnums=0,
      compiler_options=xla_cpu.compiler_options(mesh.devices.flat),
  )


def check_config(config: ml_collections.ConfigDict) -> None:
  """Raises ValueError naming the key when a training/evaluation setting is out of range."""
  problems = [
      (config.num_epochs < 1, 'num_epochs', 'at least 1', config.num_epochs),
      (config.num_identities < 2, 'num_identities', 'at least 2 (the triplet loss needs negatives)',
       config.num_identities),
      (config.num_instances < 1, 'num_instances', 'at least 1', config.num_instances),
      (config.log_every_steps < 1, 'log_every_steps', 'at least 1', config.log_every_steps),
      (config.checkpoint_every_epochs < 1, 'checkpoint_every_epochs', 'at least 1', config.checkpoint_every_epochs),
      (config.eval_every_epochs < 0, 'eval_every_epochs', '0 (off) or more', config.eval_every_epochs),
      (config.stop_at_step < 0, 'stop_at_step', '0 (off) or more', config.stop_at_step),
      (config.eval_clip_selection not in CLIP_SELECTIONS, 'eval_clip_selection', f'one of {CLIP_SELECTIONS}',
       config.eval_clip_selection),
      (config.final_clip_selection not in CLIP_SELECTIONS, 'final_clip_selection', f'one of {CLIP_SELECTIONS}',
       config.final_clip_selection),
  ]
  for bad, key, expected, value in problems:
    if bad:
      raise ValueError(f'config.{key}: expected {expected}, got {value!r}')


@dataclasses.dataclass(frozen=True)
class Run:
  """What `train_loop` reads and never replaces during one run (built by `train_and_evaluate`).

  Attributes:
    config: the run's config (log/checkpoint/eval cadence, stop_at_step, batch size).
    dataset: the dataset index (evaluation).
    model: the network (evaluation).
    mesh: the data-parallel mesh.
    step_fn: the jitted train step (`make_train_step`).
    data_iterator: the training batches; a grain iterator with get_state/set_state.
    manager: the checkpoint manager.
    writer: TensorBoard / metrics.jsonl / progress bar.
    workdir: the locked run directory (`keep()` once the first record is written).
    loss_watch: the divergence check on every step's loss.
    steps_per_epoch: optimiser steps per epoch.
    total_steps: steps of the whole run.
  """

  config: ml_collections.ConfigDict
  dataset: VideoReIDDataset
  model: nn.Module
  mesh: Mesh
  step_fn: StepFn
  data_iterator: Any  # grain.DataLoaderIterator
  manager: ocp.CheckpointManager
  writer: writers.MetricWriter
  workdir: workdir_lib.Workdir
  loss_watch: guards.LossWatch
  steps_per_epoch: int
  total_steps: int


class _Throughput:
  """Training clips per second since the last reading, leaving out compilation and evaluation time."""

  def __init__(self, clips_per_step: int):
    self._clips_per_step = clips_per_step
    self.restart()

  def restart(self) -> None:
    self._start, self._steps = time.time(), 0

  def count(self) -> None:
    self._steps += 1

  def read(self) -> float | None:
    """Clips/s over the steps counted since the last restart or reading (None if none), then restarts."""
    value = self._steps * self._clips_per_step / max(time.time() - self._start, 1e-9) if self._steps else None
    self.restart()
    return value


def _log_train(run: Run, pending: list[dict[str, jax.Array]], first_step: int, throughput: _Throughput) -> None:
  """Fetches the metrics of steps first_step+1.., checks the losses (`guards.LossWatch`), records their means."""
  values = jax.device_get(pending)  # waits for the dispatched steps, so the throughput reading includes them
  clips_per_s = throughput.read()
  run.loss_watch.check([v['loss'] for v in values], first_step, run.manager)
  step = first_step + len(values)
  means = {k: float(np.mean([v[k] for v in values])) for k in values[0] if k != 'learning_rate'}
  scalars = {f'train/{k}': v for k, v in means.items()}
  scalars.update({'train/learning_rate': float(values[-1]['learning_rate']), 'train/epoch': step / run.steps_per_epoch})
  if clips_per_s is not None:
    scalars['train/clips_per_s'] = clips_per_s
  run.writer.write(step, scalars)
  run.workdir.keep()
  run.writer.show(
      epoch=f'{step / run.steps_per_epoch:.2f}',
      loss=f'{means["loss"]:.4f}',
      ce=f'{means["ce"]:.4f}',
      triplet=f'{means["triplet"]:.4f}',
      lr=f'{scalars["train/learning_rate"]:.2e}',
      clips_s='-' if clips_per_s is None else f'{clips_per_s:.1f}',
  )


def _evaluate(run: Run, state: state_lib.TrainState, clip_selection: str, step: int) -> dict[str, Any]:
  """Runs the evaluator on the current weights, records and prints the results; returns them."""
  variables = {'params': state.params, 'batch_stats': state.batch_stats}
  results = evaluator.evaluate(
      run.model, variables, run.dataset, run.config, clip_selection=clip_selection, mesh=run.mesh
  )
  run.writer.write(step, writers.flatten_scalars(results['conventions'], f'eval_{clip_selection}'))
  run.writer.print_line(evaluator.format_results(dict(results, step=step)))
  return results


def train_loop(
    run: Run, state: state_lib.TrainState, step: int, stop_request: guards.StopRequest
) -> tuple[state_lib.TrainState, int, bool]:
  """Trains from `step` to `run.total_steps` or to a stop request.

  Logs, checkpoints and evaluates on the config's cadence (module docstring). A stop request (SIGTERM,
  Ctrl-C, preemption, `config.stop_at_step`) saves a checkpoint at the current step and returns; resuming at
  a step due an evaluation runs it before training on. A background save is checked after every step
  (without waiting) and awaited before the next log, so a failed one is reported before that log.

  Returns:
    (state, step, stopped early).

  Raises:
    guards.TrainingDivergedError: a diverged loss or a NaN/inf parameter; nothing is saved after it.
    checkpoint.CheckpointError: a checkpoint could not be written (the message names it, the cause and the
      last complete checkpoint).
  """
  config = run.config
  pending, pending_from, first_step, saved = [], step, step, None
  throughput = _Throughput(config.num_identities * config.num_instances)
  if _evaluation_due(run, step):
    _evaluate(run, state, config.eval_clip_selection, step)
  while step < run.total_steps:
    state, metrics = run.step_fn(state, sharding.shard_batch(next(run.data_iterator), run.mesh))
    step += 1
    pending.append(metrics)
    run.writer.advance()
    saved = None if checkpoint.check_saved(run.manager, saved) else saved
    if step == first_step + 1:  # the first step of a process includes compilation: time from its end
      jax.block_until_ready(metrics)
      throughput.restart()
    else:
      throughput.count()
    epoch, within_epoch = divmod(step, run.steps_per_epoch)
    epoch_done = within_epoch == 0
    stop = stop_request.requested(step) or step == config.stop_at_step
    last = step == run.total_steps
    if step % config.log_every_steps == 0 or epoch_done or stop or last:
      saved = None if checkpoint.check_saved(run.manager, saved, wait=True) else saved
      _log_train(run, pending, pending_from, throughput)
      pending, pending_from = [], step
    due = _evaluation_due(run, step)
    if stop or last or due or (epoch_done and epoch % config.checkpoint_every_epochs == 0):
      guards.check_params(state.params, step, run.manager)
      checkpoint.save(run.manager, step, state, run.data_iterator, config)
      saved = step
    if stop:
      return state, step, True
    if due:
      _evaluate(run, state, config.eval_clip_selection, step)
      throughput.restart()
  return state, step, False


def _evaluation_due(run: Run, step: int) -> bool:
  """Whether the periodic evaluation falls at `step` (the end of every `eval_every_epochs`-th epoch but the
  last, which the final evaluation covers; step 0 ends no epoch)."""
  epoch, within_epoch = divmod(step, run.steps_per_epoch)
  every = run.config.eval_every_epochs
  return 0 < step < run.total_steps and within_epoch == 0 and bool(every) and epoch % every == 0


def _initial_state(run: Run, tx: optax.GradientTransformation) -> tuple[state_lib.TrainState, int]:
  """Restores the latest checkpoint (state and data position) or builds a fresh replicated state."""
  if run.manager.latest_step() is None:
    # XLA's RngBitGenerator: the hundreds of initialisers compile in a fraction of threefry's time.
    key = jax.random.key(run.config.seed, impl='rbg')
    return state_lib.create_train_state(run.model, run.config, tx, key, run.mesh), 0
  abstract = state_lib.abstract_train_state(run.model, run.config, tx, run.mesh)
  state, step = checkpoint.restore(run.manager, abstract, run.data_iterator)
  run.writer.print_line(f'resumed from {run.manager.directory / str(step)}')
  return state, step


def _to_json(value: Any) -> Any:
  """JSON form of the numpy/jax scalars and arrays in evaluation results."""
  return np.asarray(value).tolist()


def train_and_evaluate(config: ml_collections.ConfigDict, workdir: str | pathlib.Path) -> dict[str, Any]:
  """Trains LSTRL on `config.dataset` in `workdir` (resuming when it holds checkpoints) and evaluates it.

  Args:
    config: a configs/*.py config (every key of configs/default.py).
    workdir: output directory: checkpoints/, tensorboard/, metrics.jsonl, results.json.

  Returns:
    {'step', 'epoch', 'completed'}; when training completed also 'clip_selection' and 'results' (the
    evaluator's dict for the final evaluation, also written to `<workdir>/results.json`).

  Raises:
    DatasetError: the dataset cannot be read. ValueError: a config key out of range or a batch that does
    not divide over the devices. CheckpointError: the workdir's checkpoint does not fit this config.
    TrainingDivergedError: the loss or the parameters became NaN/inf (the last good checkpoint is kept).
  """
  sharding.maybe_initialize_distributed()
  # First of all, so that a Ctrl-C or SIGTERM while loading is a stop request too (acted on after a step).
  with guards.StopRequest() as stop_request:
    return _prepare_and_run(config, workdir, stop_request)


def _prepare_and_run(config: ml_collections.ConfigDict, workdir: str | pathlib.Path,
                     stop_request: guards.StopRequest) -> dict[str, Any]:
  """Checks everything, takes the workdir and runs (`train_and_evaluate`)."""
  check_config(config)
  mesh = sharding.make_mesh()
  dataset = load_dataset(config.dataset, config.data_dir, split=config.split, **reader_options(config))
  model = lstrl.model_from_config(config.model, dataset.num_train_pids)
  steps_per_epoch = pipeline.steps_per_epoch(dataset, config)
  total_steps = config.num_epochs * steps_per_epoch
  learning_rate_fn = optim.learning_rate_schedule(config, steps_per_epoch)
  step_fn = make_train_step(config, learning_rate_fn, mesh)
  tx = optim.make_optimizer(config, steps_per_epoch, lstrl.trainable_mask)
  data_iterator = iter(pipeline.train_loader(dataset, config, seed=config.seed))
  preflight.check_before_training(config, dataset, model, mesh, pathlib.Path(workdir))
  # Everything above validates the config and the data; only now is anything written.
  # Orbax logs a failed background save with tracebacks; check_saved reports it in one line instead.
  with checkpoint.quiet_orbax(), workdir_lib.Workdir(workdir, active=jax.process_index() == 0) as run_dir:
    manager = checkpoint.make_manager(run_dir.path, config.max_checkpoints)
    stop_request.manager = manager
    run = Run(
        config=config,
        dataset=dataset,
        model=model,
        mesh=mesh,
        step_fn=step_fn,
        data_iterator=data_iterator,
        manager=manager,
        writer=writers.MetricWriter(run_dir.path, total_steps,
                                    initial_step=min(manager.latest_step() or 0, total_steps)),
        workdir=run_dir,
        loss_watch=guards.LossWatch(config.max_loss_ratio),
        steps_per_epoch=steps_per_epoch,
        total_steps=total_steps,
    )
    try:
      return _run(run, tx, stop_request)
    finally:
      manager.close()
      run.writer.close()


def _run(run: Run, tx: optax.GradientTransformation, stop_request: guards.StopRequest) -> dict[str, Any]:
  """Trains, waits for the last save, evaluates and writes results.json; the summary of
  `train_and_evaluate`, with 'checkpoint' (the saved step's path) when stopped."""
  config, manager = run.config, run.manager
  if run.workdir.took_over:
    run.writer.print_line(
        f'took over the lock of a process that is gone ({workdir_lib.describe(run.workdir.took_over)})')
  run.writer.print_line(
      f'{run.dataset.name}: {len(run.dataset.train)} training tracklets, {run.dataset.num_train_pids} '
      f'identities; {run.steps_per_epoch} steps/epoch x {config.num_epochs} epochs; global batch '
      f'{config.num_identities * config.num_instances} clips on {run.mesh.devices.size} device(s)'
  )
  state, step = _initial_state(run, tx)
  state, step, stopped = train_loop(run, state, step, stop_request)
  checkpoint.check_saved(manager, step, wait=True)
  summary = {'step': step, 'epoch': step / run.steps_per_epoch, 'completed': not stopped}
  if stopped:
    return dict(summary, checkpoint=str(manager.directory / str(step)))
  try:
    with stop_request.immediately():
      results = _evaluate(run, state, config.final_clip_selection, step)
      summary.update(clip_selection=config.final_clip_selection, results=results)
      if jax.process_index() == 0:
        staging = run.workdir.path / 'results.json.tmp'
        staging.write_text(json.dumps(summary, indent=2, default=_to_json) + '\n')
        staging.replace(run.workdir.path / 'results.json')
  except guards.Interrupted:
    return dict(summary, completed=False, checkpoint=str(manager.directory / str(step)))
  return summary
