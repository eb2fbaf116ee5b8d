"""What stops a training run early: a stop request (SIGTERM, preemption) and divergence (NaN/inf).

A stop request is a clean end: the loop saves a checkpoint and returns, and the same command resumes it.
Divergence is an error: the loop raises `TrainingDivergedError` *without* saving, so the newest checkpoint
on disk is the last one whose losses and parameters were all finite.
"""

from __future__ import annotations

import signal
import threading
from typing import Any, Sequence

import jax
import jax.numpy as jnp
import numpy as np
import orbax.checkpoint as ocp


class TrainingDivergedError(RuntimeError):
  """The training loss or the parameters became NaN or infinite; the bad state was not saved."""


class StopRequest:
  """Turns SIGTERM into a flag the loop polls after each step (the previous handler returns on exit).

  A single process installs its own handler. In a multi-host job JAX's preemption service already catches
  the signal, and every process learns of it at the same step through `manager.reached_preemption`, so all
  of them save the same step.
  """

  def __init__(self, manager: ocp.CheckpointManager):
    self._manager = manager
    self._requested = False
    self._previous = None

  def __enter__(self) -> StopRequest:
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


def _last_good(manager: ocp.CheckpointManager) -> str:
  manager.wait_until_finished()
  last = manager.latest_step()
  if last is None:
    return 'no checkpoint was saved'
  return f'last good checkpoint: {manager.directory / str(last)}'


def check_losses(losses: Sequence[float], first_step: int, manager: ocp.CheckpointManager) -> None:
  """Raises TrainingDivergedError if any loss of steps first_step+1, first_step+2, ... is not finite."""
  finite = np.isfinite(np.asarray(losses, np.float64))
  if not finite.all():
    bad = int(np.argmin(finite))
    raise TrainingDivergedError(
        f'training loss is {losses[bad]} at step {first_step + bad + 1}; stopped without saving '
        f'({_last_good(manager)}); lower config.learning_rate or check the data'
    )


@jax.jit
def _all_finite(tree: Any) -> jax.Array:
  return jnp.all(jnp.stack([jnp.all(jnp.isfinite(x)) for x in jax.tree.leaves(tree)]))


def check_params(params: Any, step: int, manager: ocp.CheckpointManager) -> None:
  """Raises TrainingDivergedError if a parameter after `step` is NaN or infinite (checked before saving)."""
  if not bool(_all_finite(params)):
    raise TrainingDivergedError(
        f'parameters are not finite after step {step}; stopped without saving ({_last_good(manager)}); '
        'lower config.learning_rate'
    )
