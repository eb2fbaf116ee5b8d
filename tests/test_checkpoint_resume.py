"""Checkpoints, SIGTERM and exact resume, through `python train.py` on a tiny generated dataset.

Every run is a separate process (as a preempted job would be), training a plain ResNet-18 LSTRL (MAE/BME
off) on 32x16 clips of T=2, P=2 x K=2, 2 steps per epoch. The runs share a persistent compilation cache,
so only the first run of each distinct program compiles.
"""

import json
import os
import pathlib
import shutil
import signal
import socket
import subprocess
import sys

import jax
import numpy as np
import pytest

from lstrl_jax.data import demo
from lstrl_jax.train import checkpoint

REPO = pathlib.Path(__file__).resolve().parents[1]

# tensorboardX imports torch whenever it is installed; torch is a test-only dependency that costs seconds.
RUN_TRAIN = """
import runpy, sys
sys.modules['torch'] = None
sys.argv = ['train.py', *sys.argv[1:]]
runpy.run_path('train.py', run_name='__main__')
"""

TINY = (
    '--config=configs/demo.py',
    '--config.seq_len=2',
    '--config.height=32',
    '--config.width=16',
    '--config.num_identities=2',
    '--config.num_instances=2',
    '--config.num_workers=0',
    '--config.augment.pad=2',
    '--config.model.mae_stages=()',
    '--config.model.bme_stages=()',
    '--config.num_epochs=3',
    '--config.warmup_epochs=1',
    '--config.eval_every_epochs=2',
    '--config.checkpoint_every_epochs=1',
    '--config.log_every_steps=1',
    '--config.final_clip_selection=rrs',
    '--config.eval_batch_size=4',
)


@pytest.fixture(scope='module')
def env(tmp_path_factory):
  """Data (8 persons: 4 training identities, 2 steps per epoch) and the shared compilation cache."""
  root = tmp_path_factory.mktemp('resume')
  data = demo.generate(root / 'demo', num_persons=8, frames=4, height=32, width=16)
  variables = dict(
      os.environ,
      JAX_PLATFORMS='cpu',
      PYTHONUNBUFFERED='1',
      JAX_COMPILATION_CACHE_DIR=str(root / 'jax_cache'),
      JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS='0',
      JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES='0',
  )
  return data, variables


def start(env, workdir, *overrides, stderr=subprocess.PIPE, env_overrides=None) -> subprocess.Popen:
  """Starts train.py on the tiny config (stdout unbuffered, line by line)."""
  data, variables = env
  args = [sys.executable, '-c', RUN_TRAIN, *TINY, f'--config.data_dir={data}', f'--workdir={workdir}', *overrides]
  variables = dict(variables, **(env_overrides or {}))
  return subprocess.Popen(args, cwd=REPO, env=variables, stdout=subprocess.PIPE, stderr=stderr, text=True)


def train(env, workdir, *overrides, returncode=0, env_overrides=None) -> str:
  """Runs train.py to its end (environment `env` updated with `env_overrides`); returns stdout + stderr."""
  process = start(env, workdir, *overrides, env_overrides=env_overrides)
  stdout, stderr = process.communicate(timeout=600)
  assert process.returncode == returncode, stderr[-3000:]
  return stdout + stderr


def leaves(path):
  _, variables, step = checkpoint.load_for_eval(path)
  return step, [np.asarray(leaf) for leaf in jax.tree.leaves(variables)]


def assert_bitwise_same_run(workdir, expected_workdir):
  """Both finished all 6 steps with bitwise equal variables and equal final results."""
  step, variables = leaves(workdir)
  expected_step, expected = leaves(expected_workdir)
  assert step == expected_step == 6
  assert len(variables) == len(expected)
  assert all(np.array_equal(a, b) for a, b in zip(variables, expected))
  assert json.loads((workdir / 'results.json').read_text())['results'] == json.loads(
      (expected_workdir / 'results.json').read_text()
  )['results']


@pytest.fixture(scope='module')
def straight(env, tmp_path_factory):
  """A run of all 6 steps in one process."""
  workdir = tmp_path_factory.mktemp('straight')
  train(env, workdir)
  return workdir


def test_straight_run_writes_results_logs_and_checkpoints(straight):
  assert sorted(int(p.name) for p in (straight / 'checkpoints').iterdir()) == [2, 4, 6]  # every epoch
  records = [json.loads(line) for line in (straight / 'metrics.jsonl').read_text().splitlines()]
  train_records = [r for r in records if 'train/loss' in r]
  assert [r['step'] for r in train_records] == [1, 2, 3, 4, 5, 6]
  for record in train_records:
    assert record['train/loss'] == pytest.approx(record['train/ce'] + record['train/triplet'], rel=1e-5)
  # Throughput leaves out the first step (compilation).
  assert 'train/clips_per_s' not in train_records[0]
  assert all(r['train/clips_per_s'] > 0 for r in train_records[1:])
  assert [r['step'] for r in records if 'eval_rrs/cross_camera/R-1' in r] == [4, 6]
  results = json.loads((straight / 'results.json').read_text())
  assert results['step'] == 6 and results['completed']
  assert 0 <= results['results']['conventions']['cross_camera']['mAP'] <= 1
  assert list((straight / 'tensorboard').glob('events.out.tfevents.*'))
  config, variables, step = checkpoint.load_for_eval(straight)
  assert step == 6 and config.model.mae_stages == () and config.num_epochs == 3
  assert np.array_equal(np.asarray(variables['params']['bnneck']['bias']), np.zeros(512, np.float32))


def test_sigterm_saves_and_the_resumed_run_is_bitwise_identical(env, straight, tmp_path):
  log = tmp_path / 'stderr.txt'
  with open(log, 'w') as stderr:
    process = start(env, tmp_path / 'run', stderr=stderr)
    # The startup line is printed once the SIGTERM handler is in place, before the first step.
    for line in process.stdout:
      if 'device(s)' in line:
        process.send_signal(signal.SIGTERM)
        break
    stdout, _ = process.communicate(timeout=600)
  assert process.returncode == 75, log.read_text()[-3000:]  # stopped, resumable (DESIGN.md section 6)
  stopped = int(stdout.split('stopped at step ')[1].split(';')[0])
  assert 1 <= stopped < 6  # the handler only sets a flag: the step in progress finishes, then it saves
  assert checkpoint.load_for_eval(tmp_path / 'run')[2] == stopped
  assert not (tmp_path / 'run' / 'results.json').exists()

  output = train(env, tmp_path / 'run')
  assert f'resumed from {tmp_path}/run/checkpoints/{stopped}' in output
  assert_bitwise_same_run(tmp_path / 'run', straight)


def test_load_for_eval_errors(straight, tmp_path):
  with pytest.raises(checkpoint.CheckpointError, match='no such checkpoint directory'):
    checkpoint.load_for_eval(tmp_path / 'missing')
  with pytest.raises(checkpoint.CheckpointError, match='no checkpoint found'):
    checkpoint.load_for_eval(tmp_path)
  broken = tmp_path / 'broken' / 'checkpoints'
  shutil.copytree(straight / 'checkpoints' / '6', broken / '6')
  shutil.rmtree(broken / '6' / 'config')
  with pytest.raises(checkpoint.CheckpointError, match='6: unreadable checkpoint: KeyError'):
    checkpoint.load_for_eval(broken.parent)
  for data in (broken / '6' / 'state').glob('ocdbt.process_*'):
    shutil.rmtree(data)
  shutil.rmtree(broken / '6' / 'state' / 'd')
  with pytest.raises(checkpoint.CheckpointError, match='unreadable checkpoint') as error:
    checkpoint.load_for_eval(broken / '6')
  assert '\n' not in str(error.value)
  assert checkpoint.load_for_eval(straight / 'checkpoints' / '4')[2] == 4


def evaluations(workdir) -> list[dict]:
  """The periodic evaluation records of a run's metrics.jsonl: step and every eval_* value."""
  records = [json.loads(line) for line in (workdir / 'metrics.jsonl').read_text().splitlines()]
  return [
      {k: v for k, v in r.items() if k == 'step' or k.startswith('eval_')}
      for r in records
      if 'eval_rrs/cross_camera/R-1' in r
  ]


def test_stop_at_an_evaluation_step_runs_that_evaluation_on_resume(env, straight, tmp_path):
  # Step 4 ends epoch 2, which is due an evaluation: the stop saves before it, the resumed run evaluates first.
  output = train(env, tmp_path / 'run', '--config.stop_at_step=4', returncode=75)
  assert 'stopped at step 4' in output and 'step 4) | clip selection' not in output
  output = train(env, tmp_path / 'run', '--config.stop_at_step=4')
  assert output.index('resumed from') < output.index('step 4) | clip selection')
  assert [r['step'] for r in evaluations(straight)] == [4, 6]
  assert evaluations(tmp_path / 'run') == evaluations(straight)


def test_two_processes_are_bitwise_one_process_on_two_devices(env, tmp_path):
  # A hand-launched 2-host job on this machine: two train.py processes with one CPU device each, joined by
  # jax.distributed (gloo collectives), each loading half of every global batch into one shared workdir. It
  # must compute exactly what one process does on two devices (a sum of two shards is the same either way).
  # (Against the 1-device run the trajectories drift apart within float noise amplified by Adam and
  # batch-hard mining, so that comparison is the one-step test in test_train_step.py.)
  train(env, tmp_path / 'one_process', env_overrides={'XLA_FLAGS': '--xla_force_host_platform_device_count=2'})
  with socket.socket() as probe:
    probe.bind(('127.0.0.1', 0))
    port = probe.getsockname()[1]
  processes = [
      start(env, tmp_path / 'hosts', stderr=subprocess.STDOUT, env_overrides={
          'XLA_FLAGS': '', 'JAX_COORDINATOR_ADDRESS': f'127.0.0.1:{port}', 'JAX_NUM_PROCESSES': '2',
          'JAX_PROCESS_ID': str(process_id)})
      for process_id in (0, 1)
  ]
  outputs = [process.communicate(timeout=600)[0] for process in processes]
  for process, output in zip(processes, outputs):
    assert process.returncode == 0, output[-3000:]
  assert 'on 2 device(s)' in outputs[0] and 'results written to' in outputs[0]
  assert 'results written to' not in outputs[1]  # process 0 alone writes logs and results
  assert_bitwise_same_run(tmp_path / 'hosts', tmp_path / 'one_process')
  assert evaluations(tmp_path / 'hosts') == evaluations(tmp_path / 'one_process')
