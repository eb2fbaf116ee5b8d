"""What a training run shows and records: a tqdm progress bar, TensorBoard events and metrics.jsonl.

`MetricWriter` writes each record (a step and flat `{'train/loss': 1.2, 'eval_rrs/R-1': 0.41, ...}` scalars)
to TensorBoard event files in the workdir through tensorboardX (no TensorFlow) and appends it as one JSON
line to `<workdir>/metrics.jsonl`. Only process 0 of a multi-host job writes or prints; the others get a
writer that does nothing, so the train loop has no `if process_index == 0` branches.
"""

from __future__ import annotations

import json
import pathlib
from typing import Any, Mapping

import jax
import numpy as np
import tqdm


def flatten_scalars(results: Mapping[str, Any], prefix: str = '') -> dict[str, float]:
  """Nested dict of numbers (e.g. evaluation results) -> flat {'prefix/a/b': float}; non-scalars dropped."""
  flat = {}
  for key, value in results.items():
    name = f'{prefix}/{key}' if prefix else str(key)
    if isinstance(value, Mapping):
      flat.update(flatten_scalars(value, name))
    elif np.ndim(value) == 0 and np.issubdtype(np.asarray(value).dtype, np.number):
      flat[name] = float(value)
  return flat


class MetricWriter:
  """TensorBoard + metrics.jsonl + progress bar of one run (a no-op on processes other than 0).

  Args:
    workdir: the run's directory; events go to `<workdir>/tensorboard`, records to `<workdir>/metrics.jsonl`.
    total_steps: length of the progress bar.
    initial_step: where the bar starts (the restored step when resuming).
  """

  def __init__(self, workdir: pathlib.Path, total_steps: int, initial_step: int):
    self._active = jax.process_index() == 0
    if not self._active:
      return
    # Imported here: tensorboardX imports torch whenever it is installed (seconds), which only a run that
    # writes events should pay for.
    import tensorboardX  # pylint: disable=g-import-not-at-top

    self._tensorboard = tensorboardX.SummaryWriter(str(workdir / 'tensorboard'), flush_secs=30)
    self._jsonl = open(workdir / 'metrics.jsonl', 'a', encoding='utf-8')
    self._bar = tqdm.tqdm(total=total_steps, initial=initial_step, desc='train', unit='step', dynamic_ncols=True,
                          disable=None)  # None: no bar when stderr is not a terminal (logs to a file)

  def write(self, step: int, scalars: Mapping[str, float]) -> None:
    """Records `scalars` at `step` in TensorBoard and as one line of metrics.jsonl."""
    if not self._active:
      return
    for tag, value in scalars.items():
      self._tensorboard.add_scalar(tag, value, step)
    self._jsonl.write(json.dumps({'step': step, **scalars}) + '\n')
    self._jsonl.flush()

  def advance(self, steps: int = 1) -> None:
    """Moves the progress bar on by `steps`."""
    if self._active:
      self._bar.update(steps)

  def show(self, **fields: Any) -> None:
    """Sets the progress bar's fields (e.g. epoch, loss terms, learning rate, clips/s)."""
    if self._active:
      self._bar.set_postfix(fields, refresh=True)

  def print_line(self, message: str) -> None:
    """Prints one line above the progress bar."""
    if self._active:
      self._bar.write(message)

  def close(self) -> None:
    """Flushes and closes the event file, metrics.jsonl and the progress bar."""
    if not self._active:
      return
    self._bar.close()
    self._tensorboard.close()
    self._jsonl.close()
