"""checkpoint.quiet_orbax: which error logs it drops. The saves themselves are tested through real runs in
test_checkpoint_resume.py and test_faults.py."""

import asyncio
import gc
import logging
import sys

import pytest
from etils import epath
from orbax.checkpoint._src.path import atomicity

from lstrl_jax.train import checkpoint


class Records(logging.Handler):
  """Collects (first line of the message, exception type) of the error records that reach the root logger."""

  def __init__(self):
    super().__init__(logging.ERROR)
    self.messages = []

  def emit(self, record):
    self.messages.append((record.getMessage().splitlines()[0], record.exc_info[0]))


@pytest.fixture
def records():
  handler = Records()
  logging.getLogger().addHandler(handler)
  yield handler.messages
  logging.getLogger().removeHandler(handler)


async def orbax_write_into(folder: epath.Path):
  """orbax's own finalize of a save whose temporary folder is missing: it raises FileNotFoundError."""
  await atomicity.AtomicRenameTemporaryPath(folder / 'tmp', folder / 'final').finalize()


async def own_write():
  raise OSError('not orbax')


def abandon(make_coroutine):
  """A failed write in a gather nobody awaits, as orbax leaves the writes beside the one it re-raises; asyncio
  logs "_GatheringFuture exception was never retrieved" when the gather is garbage-collected (here a cycle, so
  at a collection)."""

  async def main():
    pending = asyncio.gather(make_coroutine())
    pending.cycle = pending  # as orbax's are reached through frames and tracebacks: freed by a collection only
    await asyncio.sleep(0.1)

  asyncio.run(main())


def test_an_unretrieved_orbax_write_error_is_dropped_only_inside(records, tmp_path):
  missing = epath.Path(tmp_path) / 'missing'
  gc.disable()  # no automatic collection: only quiet_orbax's own, on exit, can log the gather inside
  try:
    with checkpoint.quiet_orbax():
      abandon(lambda: orbax_write_into(missing))
  finally:
    gc.enable()
  gc.collect()
  assert records == []
  abandon(lambda: orbax_write_into(missing))
  gc.collect()
  assert records == [('_GatheringFuture exception was never retrieved', FileNotFoundError)]


def test_an_unretrieved_error_of_other_code_is_still_logged(records):
  with checkpoint.quiet_orbax():
    abandon(own_write)
  gc.collect()
  assert records == [('_GatheringFuture exception was never retrieved', OSError)]


class FailedSave:
  """A manager whose background save failed as orbax's does on a full disk: the error it re-raises holds, in
  the frames of its traceback, the writes that failed beside it, unawaited."""

  def __init__(self, directory: epath.Path):
    self.directory = directory

  def is_saving_in_progress(self) -> bool:
    return False

  def wait_until_finished(self):
    async def main():
      pending = asyncio.gather(orbax_write_into(self.directory / 'missing'))
      await asyncio.sleep(0.1)
      raise ValueError(f'RESOURCE_EXHAUSTED: {pending}: No space left on device')

    asyncio.run(main())


def test_the_writes_beside_a_failed_save_are_dropped_while_its_error_propagates(records, tmp_path):
  with pytest.raises(checkpoint.CheckpointError, match='4: no space left on device; no complete checkpoint'):
    with checkpoint.quiet_orbax():
      checkpoint.check_saved(FailedSave(epath.Path(tmp_path)), 4)
  gc.collect()
  assert records == []


def test_the_unraisable_hook_is_restored_on_exit():
  before = sys.unraisablehook
  with checkpoint.quiet_orbax():
    assert sys.unraisablehook is not before
  assert sys.unraisablehook is before
