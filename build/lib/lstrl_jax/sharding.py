"""Data parallelism over every device JAX sees: one `Mesh` with a `data` axis (DESIGN.md section 2).

Parameters and optimiser state are replicated; batches are sharded along their leading axis. Under `jax.jit`
every BatchNorm statistic is then a mean over the whole global batch (synchronised BN), unlike the paper's
PyTorch code, which used per-GPU statistics. Multi-host runs call `jax.distributed.initialize()` first
(`maybe_initialize_distributed`); each host then loads `global_batch / jax.process_count()` examples.
"""

from __future__ import annotations

import os
from typing import Any

import jax
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec

DATA_AXIS = 'data'


def maybe_initialize_distributed() -> None:
  """Calls `jax.distributed.initialize()` when launched as one process of a multi-host job.

  Detected from `JAX_COORDINATOR_ADDRESS` (host:port of process 0) or from a TPU pod slice, where
  `initialize()` discovers its peers by itself. Under SLURM, Open MPI or Kubernetes JAX also finds the process
  count and index; a job launched by hand sets them in `JAX_NUM_PROCESSES` and `JAX_PROCESS_ID`. A single
  process does nothing.

  Raises:
    ValueError: `JAX_NUM_PROCESSES` or `JAX_PROCESS_ID` is set but is not an integer.
  """
  if not (os.environ.get('JAX_COORDINATOR_ADDRESS') or os.environ.get('TPU_WORKER_HOSTNAMES')):
    return
  counts = {}
  for variable, argument in (('JAX_NUM_PROCESSES', 'num_processes'), ('JAX_PROCESS_ID', 'process_id')):
    value = os.environ.get(variable)
    if value is not None:
      if not value.strip().isdigit():
        raise ValueError(f'{variable}={value!r}: expected a non-negative integer')
      counts[argument] = int(value)
  jax.distributed.initialize(**counts)


def make_mesh() -> Mesh:
  """A 1-D mesh over all devices of all processes, axis name `data`."""
  return Mesh(np.asarray(jax.devices()), (DATA_AXIS,))


def replicated(mesh: Mesh) -> NamedSharding:
  """Sharding that keeps a full copy on every device (parameters, optimiser state)."""
  return NamedSharding(mesh, PartitionSpec())


def batch_sharded(mesh: Mesh) -> NamedSharding:
  """Sharding that splits the leading (batch) axis over the `data` axis."""
  return NamedSharding(mesh, PartitionSpec(DATA_AXIS))


def check_divisible(global_batch: int, mesh: Mesh, what: str = 'batch size') -> None:
  """Raises ValueError unless `global_batch` splits evenly over the mesh's devices and processes.

  Args:
    global_batch: examples per step over all hosts.
    mesh: the data-parallel mesh.
    what: the config key or quantity named in the error message.
  """
  devices = mesh.devices.size
  if global_batch % devices or global_batch % jax.process_count():
    raise ValueError(
        f'{what} {global_batch} does not divide over {devices} devices and {jax.process_count()} '
        'processes; choose a multiple of the device count'
    )


def shard_batch(local_batch: Any, mesh: Mesh) -> Any:
  """Turns this host's part of a batch (a pytree of numpy arrays `[B_local, ...]`) into global arrays.

  Each leaf becomes a `jax.Array` of shape `[B_local * process_count, ...]` sharded along the `data` axis,
  built with `jax.make_array_from_process_local_data`, so the same code serves one device, several local
  devices and several hosts.
  """
  sharding = batch_sharded(mesh)
  return jax.tree.map(lambda x: jax.make_array_from_process_local_data(sharding, np.asarray(x)), local_batch)
