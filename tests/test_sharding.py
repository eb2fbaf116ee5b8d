"""`lstrl_jax.sharding.maybe_initialize_distributed`: when it joins a multi-host job and with what.

The job itself (two train.py processes joined through jax.distributed) is exercised end to end in
tests/test_checkpoint_resume.py; here `jax.distributed.initialize` is replaced by a recorder.
"""

import jax
import pytest

from lstrl_jax import sharding

VARIABLES = ('JAX_COORDINATOR_ADDRESS', 'TPU_WORKER_HOSTNAMES', 'JAX_NUM_PROCESSES', 'JAX_PROCESS_ID')


@pytest.fixture
def calls(monkeypatch):
  """The keyword arguments of every `jax.distributed.initialize` call, with the launch variables cleared."""
  for variable in VARIABLES:
    monkeypatch.delenv(variable, raising=False)
  recorded = []
  monkeypatch.setattr(jax.distributed, 'initialize', lambda **kwargs: recorded.append(kwargs))
  return recorded


def test_a_single_process_does_not_initialize(calls):
  sharding.maybe_initialize_distributed()
  assert calls == []


def test_a_hand_launched_job_passes_its_process_count_and_index(calls, monkeypatch):
  monkeypatch.setenv('JAX_COORDINATOR_ADDRESS', '10.0.0.1:1234')
  monkeypatch.setenv('JAX_NUM_PROCESSES', '4')
  monkeypatch.setenv('JAX_PROCESS_ID', '3')
  sharding.maybe_initialize_distributed()
  assert calls == [{'num_processes': 4, 'process_id': 3}]


def test_a_managed_cluster_leaves_detection_to_jax(calls, monkeypatch):
  monkeypatch.setenv('JAX_COORDINATOR_ADDRESS', '10.0.0.1:1234')  # e.g. under SLURM, which JAX reads itself
  sharding.maybe_initialize_distributed()
  monkeypatch.delenv('JAX_COORDINATOR_ADDRESS')
  monkeypatch.setenv('TPU_WORKER_HOSTNAMES', 'host0,host1')
  sharding.maybe_initialize_distributed()
  assert calls == [{}, {}]


def test_a_malformed_process_index_is_a_one_line_error(calls, monkeypatch):
  monkeypatch.setenv('JAX_COORDINATOR_ADDRESS', '10.0.0.1:1234')
  monkeypatch.setenv('JAX_PROCESS_ID', 'first')
  with pytest.raises(ValueError, match=r"^JAX_PROCESS_ID='first': expected a non-negative integer$"):
    sharding.maybe_initialize_distributed()
  assert calls == []
