"""A training run directory that one writer at a time holds, checked writable first, left as found on failure.

`Workdir(path)` used as a context manager (`train_and_evaluate` holds it around the whole run):

* **Writable first.** Before anything is created, a probe file is written and removed in the workdir (or in
  its nearest existing parent when it does not exist yet): a read-only filesystem, a missing permission or a
  full disk is one `WorkdirError` line naming the path and the cause.
* **One writer.** `<workdir>/.lock` is held with `filelock.FileLock` (flock(2) on Linux) for the whole run,
  and `<workdir>/.lock.json` names the holder (host, pid, start time, UTC). A second run on the same
  workdir fails at once with one line naming the workdir and the holder.
* **Stale locks.** The kernel releases a flock when its process dies (kill -9, crash, reboot), so a lock left
  by a dead process is simply free: the next run takes it and says whose lock it took over (the `.lock.json`
  left behind). Nothing is ever taken from a live holder, and no pid is compared across hosts (a pid means
  nothing on another host). On NFS the Linux client turns flock into a POSIX lock that the server arbitrates
  between hosts; the lock of a host that crashed is freed when its lease expires (NFSv4: about 90 s). On a
  filesystem without locks filelock falls back to an exclusive-create marker file (`SoftFileLock`).
* **Multi-host jobs.** Only process 0 takes the lock (`active` there); it broadcasts whether it could, so
  every process stops when the workdir is in use. The other processes never create or remove anything here.
* **Left as found.** Until `keep()` is called (the run's first log record was written), an error removes
  what this run created: the workdir itself when it did not exist, else every new top-level entry.

Raises `WorkdirError` (a RuntimeError) with one line; source: issue 13 and DESIGN.md section 6.
"""

from __future__ import annotations

import datetime
import json
import os
import pathlib
import shutil
import socket
import tempfile
from typing import Any

import filelock
import jax
from jax.experimental import multihost_utils
import numpy as np

LOCK = '.lock'
HOLDER = '.lock.json'


class WorkdirError(RuntimeError):
  """The run directory is in use, or cannot be written; the message is one line naming it."""


def _cause(error: OSError) -> str:
  """'read-only file system', 'permission denied', 'no space left on device', ... from an OSError."""
  return (error.strerror or str(error)).lower()


def check_writable(path: pathlib.Path, what: str = 'run directory') -> None:
  """Raises WorkdirError ('<path>: <what> not writable: <cause>') unless files can be created in `path` (or
  in its nearest existing parent, when it does not exist yet)."""
  target = path
  while not target.exists():
    target = target.parent
  if not target.is_dir():
    raise WorkdirError(f'{path}: cannot create the {what}: {target} is not a directory')
  try:
    with tempfile.NamedTemporaryFile(dir=target, prefix='.write-probe-'):
      pass
  except OSError as error:
    raise WorkdirError(f'{path}: {what} not writable: {_cause(error)} ({target})') from error


def describe(holder: dict[str, Any] | None) -> str:
  """'host H, pid P, started T' of a holder record (`.lock.json`)."""
  if not holder:
    return 'a process that left no holder record'
  return f'host {holder.get("host")}, pid {holder.get("pid")}, started {holder.get("started")}'


def _read_holder(path: pathlib.Path) -> dict[str, Any] | None:
  try:
    return json.loads((path / HOLDER).read_text())
  except (OSError, ValueError):
    return None


class Workdir:
  """The run directory `path`, locked and cleaned up on an early failure (module docstring).

  Args:
    path: the directory (created when missing).
    active: whether this process takes the directory (`jax.process_index() == 0`); the others only learn,
      through a broadcast from process 0, whether it could, and then touch nothing here.

  Attributes:
    path: the directory, absolute.
    took_over: the holder record of a dead process whose lock this run took over, else None.
  """

  def __init__(self, path: str | pathlib.Path, *, active: bool = True):
    self.path = pathlib.Path(path).absolute()
    self.took_over: dict[str, Any] | None = None
    self._active = active
    self._lock = filelock.FileLock(str(self.path / LOCK), timeout=0)
    self._created = None  # the first directory this run created (the workdir or a parent), if any
    self._before: set[str] = set()
    self._kept = False

  def __enter__(self) -> Workdir:
    error = None
    if self._active:
      try:
        self._take()
      except WorkdirError as e:
        error = e
    if jax.process_count() > 1:
      taken = bool(multihost_utils.broadcast_one_to_all(np.int32(error is None)))
      if not taken and error is None:
        raise WorkdirError(f'{self.path}: process 0 could not take the run directory (its error says why)')
    if error is not None:
      raise error
    return self

  def _take(self) -> None:
    """Checks, creates and locks the directory, and records this process as the holder."""
    check_writable(self.path)
    missing = self.path
    while not missing.parent.exists():
      missing = missing.parent
    self._created = None if self.path.exists() else missing
    self.path.mkdir(parents=True, exist_ok=True)
    self._before = set(os.listdir(self.path))
    try:
      self._lock.acquire()
    except filelock.Timeout:
      self._undo()
      raise WorkdirError(
          f'{self.path}: run directory in use by {describe(_read_holder(self.path))}; wait for it to end or '
          'choose another --workdir'
      ) from None
    self.took_over = _read_holder(self.path)
    record = dict(host=socket.gethostname(), pid=os.getpid(),
                  started=datetime.datetime.now(datetime.timezone.utc).isoformat(timespec='seconds'))
    staging = self.path / f'{HOLDER}.{os.getpid()}'
    staging.write_text(json.dumps(record) + '\n')
    os.replace(staging, self.path / HOLDER)

  def keep(self) -> None:
    """Marks the run as started: from now on an error leaves what it wrote (checkpoints, logs) in place."""
    self._kept = True

  def __exit__(self, exc_type, exc, traceback) -> None:
    if not self._active:
      return
    if exc_type is not None and not self._kept:
      self._undo()
    (self.path / HOLDER).unlink(missing_ok=True)
    self._lock.release()

  def _undo(self) -> None:
    """Removes what this run created (while still holding the lock)."""
    if self._created is not None:
      shutil.rmtree(self._created, ignore_errors=True)
      return
    for name in set(os.listdir(self.path)) - self._before:
      entry = self.path / name
      if entry.is_dir() and not entry.is_symlink():
        shutil.rmtree(entry, ignore_errors=True)
      else:
        entry.unlink(missing_ok=True)
