"""What a training run shows and records: a tqdm progress bar, TensorBoard events and metrics.jsonl.

`MetricWriter` writes each record (a step and flat `{'train/loss': 1.2, 'eval_rrs/R-1': 0.41, ...}` scalars)
to TensorBoard event files in the workdir through tensorboardX (no TensorFlow) and appends it as one JSON
line to `<workdir>/metrics.jsonl`. Only process 0 of a multi-host job writes or prints; the others get a
writer that does nothing, so the train loop has no `if process_index == 0` branches.

Each step is recorded once however often a run is killed and resumed (issue 13): nothing is opened before
the first record, and then metrics.jsonl is cut back to what the resumed checkpoint covers (the records of
steps up to it, less the evaluation records of its own step, which the resumed run repeats), and the new
TensorBoard event file starts with a purge at that step (TensorBoard hides the older files' events from it
on; a fresh run purges from step 0, hiding what a failed earlier run left), followed again by the kept
training record of that step.
"""

from __future__ import annotations

import json
import os
import pathlib
from typing import Any, Mapping

import jax
import numpy as np
import tqdm

METRICS = 'metrics.jsonl'


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
    self._workdir, self._initial_step = workdir, initial_step
    self._jsonl = self._tensorboard = None
    if self._active:
      self._bar = tqdm.tqdm(total=total_steps, initial=initial_step, desc='train', unit='step', dynamic_ncols=True,
                            disable=None)  # None: no bar when stderr is not a terminal (logs to a file)

  def _open(self) -> None:
    """Cuts metrics.jsonl back to the resumed step, opens it and a TensorBoard file purged from that step."""
    kept = truncate_records(self._workdir / METRICS, self._initial_step)
    # Imported here: tensorboardX imports torch whenever it is installed (seconds), which only a run that
    # writes events should pay for.
    import tensorboardX  # pylint: disable=g-import-not-at-top

    self._tensorboard = tensorboardX.SummaryWriter(
        str(self._workdir / 'tensorboard'), flush_secs=30, purge_step=self._initial_step)
    for record in kept:
      if record['step'] == self._initial_step:
        for tag, value in record.items():
          if tag != 'step':
            self._tensorboard.add_scalar(tag, value, record['step'])
    self._jsonl = open(self._workdir / METRICS, 'a', encoding='utf-8')

  def write(self, step: int, scalars: Mapping[str, float]) -> None:
    """Records `scalars` at `step` in TensorBoard and as one line of metrics.jsonl."""
    if not self._active:
      return
    if self._jsonl is None:
      self._open()
    for tag, value in scalars.items():
      self._tensorboard.add_scalar(tag, value, step)
    self._tensorboard.flush()  # a kill -9 must not lose steps TensorBoard will not be given again
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
    if self._jsonl is not None:
      self._tensorboard.close()
      self._jsonl.close()


def truncate_records(path: pathlib.Path, step: int) -> list[dict[str, Any]]:
  """Rewrites metrics.jsonl `path` (atomically) without the records a run resumed at `step` writes again.

  Kept: records of earlier steps, and the training (non-evaluation) records of `step`; a torn last line
  (a kill mid-write) is dropped. Returns the kept records; nothing is written when nothing changes.
  """
  if not path.exists():
    return []
  kept, changed = [], False
  for line in path.read_text(encoding='utf-8').splitlines():
    try:
      record = json.loads(line)
    except ValueError:
      changed = True
      continue
    if record['step'] < step or (record['step'] == step and not any(k.startswith('eval') for k in record)):
      kept.append(record)
    else:
      changed = True
  if changed:
    staging = path.with_name(path.name + '.tmp')
    staging.write_text(''.join(json.dumps(r) + '\n' for r in kept), encoding='utf-8')
    os.replace(staging, path)
  return kept
