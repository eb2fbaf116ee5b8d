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

Loop: resume from `<workdir>/checkpoints` when it holds a step (state, data iterator and config, see
`checkpoint`), else build a fresh state (with ImageNet weights when `config.model.pretrained` is set).
Every `log_every_steps` the step metrics are fetched, checked for non-finite losses, averaged and written
(TensorBoard, metrics.jsonl, progress bar). A checkpoint is saved every `checkpoint_every_epochs`, at the
end, on SIGTERM (or the multi-host preemption notice) and at `config.stop_at_step`; the last two stop the
run, which the same command later resumes. Evaluation runs every `eval_every_epochs` with
`eval_clip_selection` and once at the end with `final_clip_selection`; the final results go to
`<workdir>/results.json` and are returned.
"""

from __future__ import annotations

import functools
import json
import pathlib
import signal
import threading
import time
from typing import Any, Callable

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
import orbax.checkpoint as ocp
from jax.sharding import Mesh

from lstrl_jax import sharding
from lstrl_jax.data import pipeline
from lstrl_jax.data.datasets import load_dataset
from lstrl_jax.evaluation import evaluator
from lstrl_jax.models import lstrl
from lstrl_jax.train import checkpoint
from lstrl_jax.train import losses
from lstrl_jax.train import optim
from lstrl_jax.train import state as state_lib
from lstrl_jax.train import writers

CLIP_SELECTIONS = ('rrs', 'dense')


class NonFiniteLossError(RuntimeError):
  """The training loss became NaN or infinite; the run stopped without saving the bad state."""


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
) -> Callable[[state_lib.TrainState, dict[str, jax.Array]], tuple[state_lib.TrainState, dict[str, jax.Array]]]:
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


class _StopRequest:
  """Turns SIGTERM into a flag the loop polls after each step (restoring the old handler on exit).

  A single process installs its own handler. In a multi-host job JAX's preemption service already catches
  the signal, and every process learns of it at the same step through `manager.reached_preemption`.
  """

  def __init__(self, manager: ocp.CheckpointManager):
    self._manager = manager
    self._requested = False
    self._previous = None

  def __enter__(self) -> _StopRequest:
    if jax.process_count() == 1 and threading.current_thread() is threading.main_thread():
      self._previous = signal.signal(signal.SIGTERM, self._handle)
    return self

  def __exit__(self, *exc_info) -> None:
    if self._previous is not None:
      signal.signal(signal.SIGTERM, self._previous)

  def _handle(self, signum, frame) -> None:
    del signum, frame
    self._requested = True

  def requested(self, step: int) -> bool:
    """Whether to save and stop after `step` (call once per step on every process)."""
    if jax.process_count() > 1:
      return self._manager.reached_preemption(step)
    return self._requested


def _summarise(pending: list[dict[str, jax.Array]], first_step: int, manager, steps_per_epoch: int):
  """Fetches the metrics of steps first_step+1.., raises on a non-finite loss, returns their means."""
  values = jax.device_get(pending)
  loss = np.array([v['loss'] for v in values])
  if not np.all(np.isfinite(loss)):
    bad = int(np.argmin(np.isfinite(loss)))
    manager.wait_until_finished()
    last = manager.latest_step()
    kept = f'last good checkpoint: step {last} in {manager.directory}' if last is not None else 'no checkpoint saved'
    raise NonFiniteLossError(
        f'training loss is {loss[bad]} at step {first_step + bad + 1} (epoch {(first_step + bad) // steps_per_epoch + 1}); '
        f'stopped without saving ({kept}); lower config.learning_rate or check the data'
    )
  summary = {f'train/{k}': float(np.mean([v[k] for v in values])) for k in values[0] if k != 'learning_rate'}
  summary['train/learning_rate'] = float(values[-1]['learning_rate'])
  return summary


def _evaluate(model, state, dataset, config, clip_selection, mesh, writer, step) -> dict[str, Any]:
  """Runs the evaluator on the current weights, records and prints the results; returns them."""
  variables = {'params': state.params, 'batch_stats': state.batch_stats}
  start = time.time()
  results = evaluator.evaluate(model, variables, dataset, config, clip_selection=clip_selection, mesh=mesh)
  scalars = writers.flatten_scalars(results, f'eval_{clip_selection}')
  writer.write(step, scalars)
  shown = ' '.join(f'{k.split("/", 1)[1]}={v:.4g}' for k, v in scalars.items())
  writer.print_line(f'step {step} eval ({clip_selection}, {time.time() - start:.0f} s): {shown}')
  return results


def _to_json(value: Any) -> Any:
  """JSON form of the numpy/jax scalars and arrays in evaluation results."""
  return np.asarray(value).tolist()


def _initial_state(manager, model, config, tx, mesh, data_iterator, writer_line):
  """Restores the latest checkpoint (state and data position) or builds a fresh replicated state."""
  if manager.latest_step() is not None:
    abstract = state_lib.abstract_train_state(model, config, tx, mesh)
    state, step = checkpoint.restore(manager, abstract, data_iterator)
    writer_line(f'resumed from {manager.directory / str(step)}')
    return state, step
  return state_lib.create_train_state(model, config, tx, jax.random.key(config.seed), mesh), 0


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
    NonFiniteLossError: the loss diverged (the last good checkpoint is kept).
  """
  sharding.maybe_initialize_distributed()
  check_config(config)
  workdir = pathlib.Path(workdir)
  workdir.mkdir(parents=True, exist_ok=True)
  mesh = sharding.make_mesh()
  dataset = load_dataset(config.dataset, config.data_dir, split=config.split)
  steps_per_epoch = pipeline.steps_per_epoch(dataset, config)
  total_steps = config.num_epochs * steps_per_epoch
  global_batch = config.num_identities * config.num_instances

  model = lstrl.model_from_config(config.model, dataset.num_train_pids)
  learning_rate_fn = optim.learning_rate_schedule(config, steps_per_epoch)
  tx = optim.make_optimizer(config, steps_per_epoch, lstrl.trainable_mask)
  step_fn = make_train_step(config, learning_rate_fn, mesh)
  data_iterator = iter(pipeline.train_loader(dataset, config, seed=config.seed))
  manager = checkpoint.make_manager(workdir, config.max_checkpoints)
  writer = writers.MetricWriter(workdir, total_steps, initial_step=min(manager.latest_step() or 0, total_steps))
  writer.print_line(
      f'{dataset.name}: {len(dataset.train)} training tracklets, {dataset.num_train_pids} identities; '
      f'{steps_per_epoch} steps/epoch x {config.num_epochs} epochs, global batch {global_batch} clips on '
      f'{mesh.devices.size} device(s)'
  )
  state, step = _initial_state(manager, model, config, tx, mesh, data_iterator, writer.print_line)
  stopped = False
  try:
    with _StopRequest(manager) as stop_request:
      pending, pending_from, tick = [], step, time.time()
      while step < total_steps and not stopped:
        state, metrics = step_fn(state, sharding.shard_batch(next(data_iterator), mesh))
        step += 1
        pending.append(metrics)
        writer.advance()
        epoch_done = step % steps_per_epoch == 0
        stopped = stop_request.requested(step) or step == config.stop_at_step
        if step % config.log_every_steps == 0 or epoch_done or stopped or step == total_steps:
          summary = _summarise(pending, pending_from, manager, steps_per_epoch)
          clips_per_s = len(pending) * global_batch / max(time.time() - tick, 1e-9)
          writer.write(step, {**summary, 'train/epoch': step / steps_per_epoch, 'train/clips_per_s': clips_per_s})
          writer.show(
              epoch=f'{step / steps_per_epoch:.2f}',
              loss=f'{summary["train/loss"]:.4f}',
              ce=f'{summary["train/ce"]:.4f}',
              triplet=f'{summary["train/triplet"]:.4f}',
              lr=f'{summary["train/learning_rate"]:.2e}',
              clips_s=f'{clips_per_s:.1f}',
          )
          pending, pending_from, tick = [], step, time.time()
        epoch = step // steps_per_epoch
        if stopped or step == total_steps or (epoch_done and epoch % config.checkpoint_every_epochs == 0):
          checkpoint.save(manager, step, state, data_iterator, config)
        if epoch_done and config.eval_every_epochs and epoch % config.eval_every_epochs == 0 and step < total_steps:
          _evaluate(model, state, dataset, config, config.eval_clip_selection, mesh, writer, step)
          tick = time.time()
    manager.wait_until_finished()
    summary = {'step': step, 'epoch': step / steps_per_epoch, 'completed': step >= total_steps}
    if stopped:
      writer.print_line(f'stopped at step {step}; saved {manager.directory / str(step)}; run again to resume')
      return summary
    results = _evaluate(model, state, dataset, config, config.final_clip_selection, mesh, writer, step)
    summary.update(clip_selection=config.final_clip_selection, results=results)
    if jax.process_index() == 0:
      (workdir / 'results.json').write_text(json.dumps(summary, indent=2, default=_to_json) + '\n')
    return summary
  finally:
    manager.close()
    writer.close()
