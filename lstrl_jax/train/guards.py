"""What stops a training run early: a stop request (SIGTERM, Ctrl-C, preemption) and divergence.

A stop request is a clean end: the loop saves a checkpoint and returns, the command exits 75 (DESIGN.md
section 6) and the same command resumes it. A second Ctrl-C aborts at once (the process dies of SIGINT; the
checkpoints on disk are complete, since orbax renames a step into place only when it is whole).
Divergence is an error: the loop raises `TrainingDivergedError` *without* saving, so the newest checkpoint
on disk is the last one whose losses and parameters were all finite. A loss counts as diverged when it is
NaN/inf or above `max_loss_ratio` times the median of the last `LOSS_WINDOW` logged step losses (issue 13:
a learning rate of 1e6 gives finite losses of 1e11 long before anything is NaN).
"""

from __future__ import annotations

import collections
import contextlib
import os
import signal
import sys
import threading
from typing import Any, Iterator, Sequence

import jax
import jax.numpy as jnp
import numpy as np
import orbax.checkpoint as ocp

LOSS_WINDOW = 100  # steps in the running median of the loss


class TrainingDivergedError(RuntimeError):
  """The training loss diverged (NaN/inf, or far above its running median) or a parameter became NaN/inf;
  the bad state was not saved."""


class Interrupted(Exception):
  """A stop request arrived while the run could not save (the final evaluation); its checkpoint is on disk."""


class StopRequest:
  """Turns SIGTERM and Ctrl-C (SIGINT) into a flag the loop polls after each step.

  The previous handlers return on exit. A second SIGINT restores the default handler and re-sends itself, so
  the process ends at once. Within `immediately()` (training done and saved), a request raises `Interrupted`
  at once instead. A single process installs its own handlers. In a multi-host job JAX's preemption service
  already catches SIGTERM, and every process learns of it at the same step through
  `manager.reached_preemption`, so all of them save the same step (`manager` may be set after entering).
  """

  SIGNALS = (signal.SIGTERM, signal.SIGINT)

  def __init__(self, manager: ocp.CheckpointManager | None = None):
    self.manager = manager
    self._requested = False
    self._final = False
    self._previous = {}

  def __enter__(self) -> StopRequest:
    if jax.process_count() == 1 and threading.current_thread() is threading.main_thread():
      self._previous = {signum: signal.signal(signum, self._handle) for signum in self.SIGNALS}
    return self

  def __exit__(self, *exc_info) -> None:
    for signum, previous in self._previous.items():
      signal.signal(signum, previous)

  @contextlib.contextmanager
  def immediately(self) -> Iterator[None]:
    """Within it (nothing left to save), a stop request raises `Interrupted` where the run is."""
    if self._requested:
      raise Interrupted('an earlier stop request')
    self._final = True
    try:
      yield
    finally:
      self._final = False

  def _handle(self, signum, frame) -> None:
    del frame
    if self._final:
      raise Interrupted(signal.Signals(signum).name)
    if self._requested and signum == signal.SIGINT:
      signal.signal(signal.SIGINT, signal.SIG_DFL)
      os.kill(os.getpid(), signal.SIGINT)
      return
    self._requested = True
    print(f'{signal.Signals(signum).name}: saving a checkpoint after this step, then stopping'
          + (' (Ctrl-C again aborts at once)' if signum == signal.SIGINT else ''), file=sys.stderr, flush=True)

  def requested(self, step: int) -> bool:
    """Whether to save and stop after `step` (call once per step on every process)."""
    if jax.process_count() > 1:
      return self.manager.reached_preemption(step)
    return self._requested


def last_good(manager: ocp.CheckpointManager) -> str:
  """'last good checkpoint: <path>' (waiting for a save in progress), or that none was saved."""
  manager.wait_until_finished()
  last = manager.latest_step()
  if last is None:
    return 'no checkpoint was saved'
  return f'last good checkpoint: {manager.directory / str(last)}'


class LossWatch:
  """Checks every step's loss: finite, and at most `max_ratio` times the running median (0: no bound).

  Args:
    max_ratio: `config.max_loss_ratio`.
    window: steps in the running median.
  """

  def __init__(self, max_ratio: float, window: int = LOSS_WINDOW):
    self._max_ratio = max_ratio
    self._history = collections.deque(maxlen=window)

  def check(self, losses: Sequence[float], first_step: int, manager: ocp.CheckpointManager) -> None:
    """Raises TrainingDivergedError at the first loss of steps first_step+1, ... that diverged."""
    for step, loss in enumerate(np.asarray(losses, np.float64), start=first_step + 1):
      if not np.isfinite(loss):
        problem = f'training loss is {loss} at step {step}'
      elif self._max_ratio and self._history and loss > self._max_ratio * np.median(self._history):
        problem = (f'training loss {loss:.4g} at step {step} exceeds {self._max_ratio:g} x its running median '
                   f'{np.median(self._history):.4g} (config.max_loss_ratio)')
      else:
        self._history.append(loss)
        continue
      raise TrainingDivergedError(
          f'{problem}; stopped without saving ({last_good(manager)}); lower config.learning_rate or check '
          'the data'
      )


@jax.jit
def _all_finite(tree: Any) -> jax.Array:
  return jnp.all(jnp.stack([jnp.all(jnp.isfinite(x)) for x in jax.tree.leaves(tree)]))


def check_params(params: Any, step: int, manager: ocp.CheckpointManager) -> None:
  """Raises TrainingDivergedError if a parameter after `step` is NaN or infinite (checked before saving)."""
  if not bool(_all_finite(params)):
    raise TrainingDivergedError(
        f'parameters are not finite after step {step}; stopped without saving ({last_good(manager)}); '
        'lower config.learning_rate'
    )
