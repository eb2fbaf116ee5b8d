"""Checkpoints: orbax `CheckpointManager` under `<workdir>/checkpoints/<step>/`, one step directory holding

  state/   the `TrainState` pytree (params, batch_stats, opt_state, step), OCDBT/tensorstore format
  data/    the grain iterator position, one JSON file per process (`grain.checkpoint.CheckpointHandler`)
  config/  the run's config as JSON (what `load_for_eval` rebuilds the model from)

Orbax writes every step into a temporary directory and renames it when all items are complete, so a crash
mid-save never leaves a half-written step that `latest_step` would pick up. Training resumes from the
latest step with the same data order (exact resume); evaluation reads only `state/{params,batch_stats}`
and `config/`.
"""

from __future__ import annotations

import contextlib
import gc
import json
import logging
import os
import pathlib
import sys
import traceback
from typing import Any, Iterator

import grain
import jax
import ml_collections
import orbax.checkpoint as ocp

from lstrl_jax import cli
from lstrl_jax import sharding

CHECKPOINT_DIR = 'checkpoints'
_ORBAX = f'{os.sep}orbax{os.sep}'  # in the path of orbax's source files
_MAX_MESSAGE = 240  # characters of an underlying error kept in a CheckpointError (tensorstore's are long)


class CheckpointError(Exception):
  """A checkpoint is missing or unreadable; the message is one line naming the path."""


def make_manager(workdir: str | pathlib.Path, max_to_keep: int) -> ocp.CheckpointManager:
  """The training run's checkpoint manager over `<workdir>/checkpoints` (created when missing).

  Saves are asynchronous: arrays are copied to host memory before `save` returns (so the next, donating
  train step cannot corrupt them) and written in a background thread; call `wait_until_finished` before
  exiting.
  """
  options = ocp.CheckpointManagerOptions(max_to_keep=max_to_keep, create=True)
  return ocp.CheckpointManager(pathlib.Path(workdir).absolute() / CHECKPOINT_DIR, options=options)


def save(
    manager: ocp.CheckpointManager,
    step: int,
    state: Any,
    data_iterator: grain.DataLoaderIterator | grain.DatasetIterator,
    config: ml_collections.ConfigDict,
) -> None:
  """Starts saving the train state, the data iterator position and the config as checkpoint `step`.

  The arrays are written in the background; `check_saved(manager, step)` reports the outcome.

  Raises:
    CheckpointError: the save could not start (e.g. the previous one failed, or the directory is read-only).
  """
  try:
    manager.save(
        step,
        args=ocp.args.Composite(
            state=ocp.args.PyTreeSave(state),
            data=grain.checkpoint.CheckpointSave(data_iterator),
            config=ocp.args.JsonSave(json.loads(config.to_json())),
        ),
    )
  except Exception as error:  # orbax and tensorstore raise OSError, ValueError or their own types
    raise _save_failed(manager, step, error) from error


class _DropOrbaxErrors(logging.Filter):
  """Drops error records that come from orbax (with their tracebacks): `check_saved` reports a failed save in one
  line. A record comes from orbax when orbax logged it, or when its exception was raised through orbax's code:
  asyncio's "_GatheringFuture exception was never retrieved", logged when a write that failed beside the one
  orbax re-raised is garbage-collected."""

  def filter(self, record: logging.LogRecord) -> bool:
    if record.levelno < logging.ERROR:
      return True
    origin = traceback.extract_tb(record.exc_info[2]) if record.exc_info else []
    return not any(_ORBAX in path for path in [record.pathname, *(frame.filename for frame in origin)])


@contextlib.contextmanager
def quiet_orbax() -> Iterator[None]:
  """Within it, orbax's error logs (absl and asyncio loggers) are dropped; the errors themselves still raise.

  After a failed save, tensorstore completes the save's other writes on an event loop orbax has closed and
  reports each `RuntimeError: Event loop is closed` through `sys.unraisablehook`: those are dropped too
  (`cli.drop_closed_loop_reports`, the previous hook restored on exit). The failed writes orbax left unawaited
  are collected before it exits (`check_saved` frees those its error held), so asyncio reports them while
  dropped.
  """
  loggers, dropper = [logging.getLogger('absl'), logging.getLogger('asyncio')], _DropOrbaxErrors()
  for logger in loggers:
    logger.addFilter(dropper)
  previous_hook = cli.drop_closed_loop_reports()
  try:
    yield
  finally:
    gc.collect()
    for logger in loggers:
      logger.removeFilter(dropper)
    sys.unraisablehook = previous_hook


def check_saved(manager: ocp.CheckpointManager, step: int | None, *, wait: bool = False) -> bool:
  """Whether the background save of `step` (None: none pending) is done; raises CheckpointError if it failed.

  Without `wait` it returns False at once while the save is still running; with `wait` it blocks until done
  (the loop does the first after every step and the second before every log).
  """
  if step is None:
    return True
  if not wait and manager.is_saving_in_progress():
    return False
  try:
    manager.wait_until_finished()
  except Exception as error:  # whatever the background write raised (tensorstore: ValueError, OSError)
    raise _save_failed(manager, step, error) from error
  return True


def _save_failed(manager: ocp.CheckpointManager, step: int, error: BaseException) -> CheckpointError:
  """The one-line error for a failed save of `step`. The frames of `error`'s traceback (and its causes') hold the
  writes orbax left unawaited beside the one it re-raised; clearing them frees those writes now, so asyncio
  reports them within `quiet_orbax`, not when the error is released after it."""
  cause, seen = error, set()
  while cause is not None and id(cause) not in seen:
    seen.add(id(cause))
    traceback.clear_frames(cause.__traceback__)
    cause = cause.__cause__ or cause.__context__
  return CheckpointError(failed_save_message(manager, step, error))


_CAUSES = {
    'no space left': 'no space left on device',
    'disk quota': 'disk quota exceeded',
    'read-only file system': 'read-only file system',
    'permission denied': 'permission denied',
}


def failed_save_message(manager: ocp.CheckpointManager, step: int, error: BaseException) -> str:
  """One line: the checkpoint that failed, why (no space, read-only, permission, else the error) and the
  last complete checkpoint on disk."""
  text = str(error).lower()
  cause = next((cause for key, cause in _CAUSES.items() if key in text), _one_line(error))
  return (f'checkpoint save failed: {manager.directory / str(step)}: {cause}; '
          f'{last_complete(pathlib.Path(manager.directory))}')


def last_complete(directory: pathlib.Path) -> str:
  """'last complete checkpoint: <directory>/<step>' (the newest finished step on disk), or that none is."""
  steps = _finished_steps(directory)
  return f'last complete checkpoint: {directory / str(steps[-1])}' if steps else 'no complete checkpoint was saved'


def restore(
    manager: ocp.CheckpointManager,
    abstract_state: Any,
    data_iterator: grain.DataLoaderIterator | grain.DatasetIterator,
) -> tuple[Any, int]:
  """Restores the latest checkpoint into the structure/shardings of `abstract_state` and the iterator.

  Args:
    manager: from `make_manager`; must hold at least one step.
    abstract_state: the `TrainState` as `jax.ShapeDtypeStruct`s with shardings (`abstract_train_state`).
    data_iterator: the training iterator; its position is set to the checkpoint's.

  Returns:
    (state, step).

  Raises:
    CheckpointError: the checkpoint does not fit the current model/optimiser or cannot be read.
  """
  step = manager.latest_step()
  try:
    restored = manager.restore(
        step,
        args=ocp.args.Composite(
            state=ocp.args.PyTreeRestore(
                item=abstract_state, restore_args=ocp.checkpoint_utils.construct_restore_args(abstract_state)
            ),
            data=grain.checkpoint.CheckpointRestore(data_iterator),
        ),
    )
  except (ValueError, KeyError, TypeError, OSError) as error:
    raise CheckpointError(
        f'{manager.directory / str(step)}: cannot resume from this checkpoint (does the config match the '
        f'run that wrote it?): {_one_line(error)}'
    ) from error
  return restored['state'], step


def config_from_json(data: dict[str, Any]) -> ml_collections.ConfigDict:
  """A ConfigDict from its JSON form, lists turned back into the tuples the configs use."""

  def tuples(value):
    if isinstance(value, dict):
      return {k: tuples(v) for k, v in value.items()}
    if isinstance(value, list):
      return tuple(tuples(v) for v in value)
    return value

  return ml_collections.ConfigDict(tuples(data))


def load_for_eval(path: str | pathlib.Path) -> tuple[ml_collections.ConfigDict, dict[str, Any], int]:
  """Reads a trained model for evaluation: its config, variables and step.

  Args:
    path: a training workdir (the latest step of `<workdir>/checkpoints` is read), its `checkpoints`
      directory, or one step directory `<workdir>/checkpoints/<step>`.

  Returns:
    (config, variables, step): the config the run was trained with; {'params', 'batch_stats'} as float
    arrays replicated over `lstrl_jax.sharding.make_mesh()`; the training step of the checkpoint.

  Raises:
    CheckpointError: `path` does not exist, holds no checkpoint, or the checkpoint cannot be read.
  """
  step_dir = _step_directory(pathlib.Path(path))
  handler = ocp.CompositeCheckpointHandler(
      state=ocp.PyTreeCheckpointHandler(),
      config=ocp.JsonCheckpointHandler(),
      data=grain.checkpoint.CheckpointHandler(),
  )
  try:
    with ocp.Checkpointer(handler) as checkpointer:
      metadata = checkpointer.metadata(step_dir).item_metadata.get('state')
      tree = getattr(metadata, 'tree', metadata)
      if not tree or 'params' not in tree:
        raise CheckpointError(f'{step_dir}: state/ holds no readable train state (missing metadata)')
      replicated = sharding.replicated(sharding.make_mesh())
      target = {
          name: jax.tree.map(lambda m: jax.ShapeDtypeStruct(m.shape, m.dtype, sharding=replicated), tree[name])
          for name in ('params', 'batch_stats')
      }
      restored = checkpointer.restore(
          step_dir,
          args=ocp.args.Composite(
              state=ocp.args.PyTreeRestore(
                  item=target,
                  restore_args=ocp.checkpoint_utils.construct_restore_args(target),
                  partial_restore=True,
              ),
              config=ocp.args.JsonRestore(),
          ),
      )
  except (ValueError, KeyError, TypeError, OSError) as error:
    raise CheckpointError(f'{step_dir}: unreadable checkpoint: {_one_line(error)}') from error
  return config_from_json(restored['config']), dict(restored['state']), int(step_dir.name)


def _step_directory(path: pathlib.Path) -> pathlib.Path:
  """The step directory `path` names: itself, or the latest finished step of a workdir/checkpoints dir."""
  if not path.is_dir():
    raise CheckpointError(f'{path}: no such checkpoint directory')
  path = path.absolute()
  if path.name.isdigit() and (path / 'state').is_dir():
    return path
  directory = path / CHECKPOINT_DIR if (path / CHECKPOINT_DIR).is_dir() else path
  steps = _finished_steps(directory)
  if not steps:
    raise CheckpointError(
        f'{path}: no checkpoint found (expected a workdir with {CHECKPOINT_DIR}/<step>/ or a step directory)'
    )
  return directory / str(steps[-1])


def _finished_steps(directory: pathlib.Path) -> list[int]:
  """The finished steps in a checkpoints directory, ascending. Unfinished saves live in
  '<step>.orbax-checkpoint-tmp' folders, which the digit test leaves out."""
  if not directory.is_dir():
    return []
  return sorted(int(p.name) for p in directory.iterdir() if p.name.isdigit() and p.is_dir())


def _one_line(error: BaseException) -> str:
  """The error's type and message on one line."""
  message = ' '.join(str(error).split())
  if len(message) > _MAX_MESSAGE:
    message = message[:_MAX_MESSAGE] + '...'
  return f'{type(error).__name__}: {message}'
