"""The fault suite of issue 13: every way a run can be hurt, through real `train.py`/`eval.py` processes.

Each case asserts the exit status (DESIGN.md section 6: 0 done, 1 error, 75 stopped but resumable), that
stderr holds one `error:` line and no traceback (besides the progress bar), and that the last good checkpoint
still restores bitwise (equal to the same step of an undisturbed run) or, for a failure before the first
step, that the workdir is as it was found. The runs use test_checkpoint_resume's tiny config (ResNet-18,
32x16 clips of T=2, 2 steps per epoch, 6 steps) and share one persistent compilation cache; the checks that
fail before training start in parallel. The full-disk case runs on a small tmpfs where it can be mounted
(root), else with a save failure injected at orbax's atomic rename; the read-only cases use a read-only bind
mount (root) or file modes (other users).
"""

import json
import os
import pathlib
import shutil
import signal
import socket
import struct
import subprocess
import sys
import time

import numpy as np
import pytest
from tensorboardX.proto import event_pb2

from lstrl_jax.data import datasets
from lstrl_jax.data import demo
from lstrl_jax.train import checkpoint
from lstrl_jax.train import workdir as workdir_lib
from lstrl_jax.train import writers
from test_checkpoint_resume import REPO, RUN_TRAIN, TINY, leaves

RUN_EVAL = RUN_TRAIN.replace("'train.py'", "'eval.py'")
ALLOWED_TORCH = RUN_TRAIN.replace("sys.modules['torch'] = None\n", '')  # for the pickled .pth case
# Where no small filesystem can be mounted: the rename that completes checkpoint 4 fails in the background as
# it would on a full disk (orbax's atomic-save boundary).
FULL_AT_STEP_4 = RUN_TRAIN.replace('sys.argv = ', """import errno
from orbax.checkpoint._src.path import atomicity
finalize = atomicity.AtomicRenameTemporaryPath.finalize
async def failing(self):
  if self._final_path.name == '4':
    raise OSError(errno.ENOSPC, 'No space left on device', str(self._tmp_path))
  return await finalize(self)
atomicity.AtomicRenameTemporaryPath.finalize = failing
sys.argv = """, 1)


@pytest.fixture(scope='module')
def env(tmp_path_factory):
  """Data (8 persons, 2 steps per epoch), the shared compilation cache, and the subprocess environment."""
  root = tmp_path_factory.mktemp('faults')
  data = demo.generate(root / 'demo', num_persons=8, frames=4, height=32, width=16)
  variables = dict(
      os.environ, JAX_PLATFORMS='cpu', PYTHONUNBUFFERED='1', JAX_COMPILATION_CACHE_DIR=str(root / 'jax_cache'),
      JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS='0', JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES='0')
  return data, variables


def start(env, workdir, *overrides, script=RUN_TRAIN, env_overrides=None, data=None) -> subprocess.Popen:
  """Starts train.py (or `script`) on the tiny config in `workdir`."""
  default_data, variables = env
  args = [sys.executable, '-c', script, *TINY, f'--config.data_dir={data or default_data}', f'--workdir={workdir}',
          *overrides]
  return subprocess.Popen(args, cwd=REPO, env=dict(variables, **(env_overrides or {})), stdout=subprocess.PIPE,
                          stderr=subprocess.PIPE, text=True)


def finish(process: subprocess.Popen, returncode: int) -> tuple[str, str]:
  stdout, stderr = process.communicate(timeout=600)
  assert process.returncode == returncode, (stdout[-2000:], stderr[-3000:])
  assert 'Traceback' not in stderr, stderr[-3000:]
  return stdout, stderr


def error_line(stderr: str) -> str:
  """The one line stderr holds besides the progress bars (which tqdm redraws with carriage returns)."""
  lines = [line.strip() for line in stderr.splitlines()]
  lines = [line for line in lines if line and not line.startswith(('train:', 'embed'))]
  assert len(lines) == 1 and lines[0].startswith('error: '), lines
  return lines[0]


def wait_for_line(process: subprocess.Popen, text: str) -> None:
  """Reads stdout until a line containing `text` (the startup line comes once the signal handlers are in)."""
  for line in process.stdout:
    if text in line:
      return
  raise AssertionError(f'{text!r} never printed; stderr: {process.stderr.read()[-3000:]}')


def assert_step_restores_bitwise(workdir, step, reference):
  """Checkpoint `step` of `workdir` holds exactly the variables of the reference run's checkpoint `step`."""
  got_step, got = leaves(workdir / 'checkpoints' / str(step))
  _, expected = leaves(reference / 'checkpoints' / str(step))
  assert got_step == step and len(got) == len(expected)
  assert all(np.array_equal(a, b) for a, b in zip(got, expected))


def snapshot(path: pathlib.Path):
  """Every file and folder under `path` with its size and modification time (None: `path` is missing)."""
  if not path.exists():
    return None
  return {str(p.relative_to(path)): (p.is_dir(), p.stat().st_size, p.stat().st_mtime_ns) for p in path.rglob('*')}


@pytest.fixture(scope='module')
def reference(env, tmp_path_factory):
  """An undisturbed run of all 6 steps (checkpoints 2, 4, 6). While it runs, a second train.py on the same
  workdir (another learning rate) must be refused at once, naming the holder."""
  workdir = tmp_path_factory.mktemp('reference') / 'run'
  first = start(env, workdir)
  wait_for_line(first, 'device(s)')
  second = start(env, workdir, '--config.learning_rate=0.01')
  _, stderr = finish(second, 1)
  line = error_line(stderr)
  assert f'{workdir}: run directory in use by host {socket.gethostname()}, pid {first.pid}, started 20' in line
  assert first.poll() is None  # refused while the first one still trains
  finish(first, 0)
  records = [json.loads(line) for line in (workdir / 'metrics.jsonl').read_text().splitlines()]
  assert [r['step'] for r in records if 'train/loss' in r] == [1, 2, 3, 4, 5, 6]  # nothing of the second run
  assert not (workdir / '.lock.json').exists()  # the holder record goes with the run
  return workdir


HOLD = """
import sys, time
from lstrl_jax.train import workdir
with workdir.Workdir(sys.argv[1]):
  print('locked', flush=True)
  time.sleep(600)
"""


def test_the_workdir_lock_holds_against_a_second_process_and_is_taken_over_after_kill_9(tmp_path):
  holder = subprocess.Popen([sys.executable, '-c', HOLD, str(tmp_path / 'run')], cwd=REPO, stdout=subprocess.PIPE,
                            text=True)
  wait_for_line(holder, 'locked')
  with pytest.raises(workdir_lib.WorkdirError, match=f'run directory in use by host {socket.gethostname()}, pid '
                                                     f'{holder.pid}, started 20'):
    with workdir_lib.Workdir(tmp_path / 'run'):
      pass
  holder.kill()
  holder.communicate()
  with workdir_lib.Workdir(tmp_path / 'run') as run_dir:
    assert run_dir.took_over['pid'] == holder.pid
    run_dir.keep()
  assert sorted(p.name for p in (tmp_path / 'run').iterdir()) == ['.lock']
  # An early failure removes what the run created: here the workdir itself.
  with pytest.raises(ValueError), workdir_lib.Workdir(tmp_path / 'new' / 'run'):
    raise ValueError
  assert not (tmp_path / 'new').exists()


def test_metrics_are_cut_back_to_the_resumed_step(tmp_path):
  path = tmp_path / 'metrics.jsonl'
  records = [{'step': 1, 'train/loss': 3.0}, {'step': 2, 'train/loss': 2.0}, {'step': 2, 'eval_rrs/mAP': 0.5},
             {'step': 3, 'train/loss': 1.0}]
  path.write_text(''.join(json.dumps(r) + '\n' for r in records) + '{"step": 4, "tra')  # killed mid-line
  assert writers.truncate_records(path, 2) == records[:2]
  assert [json.loads(line) for line in path.read_text().splitlines()] == records[:2]


def test_second_writer_refused(reference):
  assert sorted(int(p.name) for p in (reference / 'checkpoints').iterdir()) == [2, 4, 6]
  assert json.loads((reference / 'results.json').read_text())['completed']


def read_events(directory: pathlib.Path) -> list[list[event_pb2.Event]]:
  """The events of each TensorBoard event file in `directory`, files in creation order (TFRecord framing:
  length u64, its crc u32, the event, its crc u32)."""
  files = []
  for path in sorted(directory.glob('events.out.tfevents.*'), key=lambda p: p.name.split('.')[3:5]):
    data, events, offset = path.read_bytes(), [], 0
    while offset < len(data):
      (length,) = struct.unpack('<Q', data[offset:offset + 8])
      events.append(event_pb2.Event.FromString(data[offset + 12:offset + 12 + length]))
      offset += 12 + length + 4
    files.append(events)
  return files


def test_kill_9_leaves_a_lock_that_is_taken_over_and_logs_hold_each_step_once(env, reference, tmp_path):
  workdir = tmp_path / 'run'
  process = start(env, workdir)
  metrics = workdir / 'metrics.jsonl'
  deadline = time.time() + 300
  while not ((workdir / 'checkpoints' / '2').is_dir() and any(
      json.loads(line)['step'] >= 3 for line in metrics.read_text().splitlines() if line.endswith('}'))):
    assert time.time() < deadline and process.poll() is None
    time.sleep(0.05)
  process.kill()  # kill -9: no handler runs, the lock and its holder record stay behind
  process.communicate()
  assert json.loads((workdir / '.lock.json').read_text())['pid'] == process.pid
  resumed = checkpoint.load_for_eval(workdir)[2]

  stdout, _ = finish(start(env, workdir), 0)
  assert f'took over the lock of a process that is gone (host {socket.gethostname()}, pid {process.pid}' in stdout
  assert f'resumed from {workdir}/checkpoints/{resumed}' in stdout
  assert_step_restores_bitwise(workdir, 6, reference)
  records = [json.loads(line) for line in metrics.read_text().splitlines()]
  assert [r['step'] for r in records if 'train/loss' in r] == [1, 2, 3, 4, 5, 6]
  assert [r['step'] for r in records if 'eval_rrs/cross_camera/R-1' in r] == [4, 6]
  # TensorBoard: the resumed run's event file starts by purging the steps after the checkpoint it resumed.
  files = read_events(workdir / 'tensorboard')
  assert len(files) == 2
  purges = [[e.step for e in events if e.HasField('session_log') and e.session_log.status == e.session_log.START]
            for events in files]
  assert purges == [[0], [resumed]]
  # What TensorBoard shows: the first file's events before the purge step, then the second file's.
  shown = [e for e in files[0] if e.step < resumed] + files[1]
  loss_steps = [e.step for e in shown for v in e.summary.value if v.tag == 'train/loss']
  assert loss_steps == [1, 2, 3, 4, 5, 6]
  assert min(e.step for e in files[1] if e.HasField('summary')) == resumed


@pytest.fixture
def small_disk(tmp_path):
  """(folder, train script): a 200 MB tmpfs, room for one checkpoint (119 MB) of the tiny run, not two; where
  mounting is not allowed (not root), a plain folder and a train.py whose save of step 4 fails."""
  mount = tmp_path / 'small'
  mount.mkdir()
  if subprocess.run(['mount', '-t', 'tmpfs', '-o', 'size=200m', 'tmpfs', str(mount)], capture_output=True).returncode:
    yield mount, FULL_AT_STEP_4
    return
  yield mount, RUN_TRAIN
  subprocess.run(['umount', str(mount)], check=True)


def test_a_full_disk_stops_the_run_at_the_failed_save(env, reference, small_disk):
  workdir = small_disk[0] / 'run'
  _, stderr = finish(start(env, workdir, script=small_disk[1]), 1)
  assert error_line(stderr) == (f'error: checkpoint save failed: {workdir}/checkpoints/4: no space left on device; '
                                f'last complete checkpoint: {workdir}/checkpoints/2')
  records = [json.loads(line) for line in (workdir / 'metrics.jsonl').read_text().splitlines()]
  assert max(r['step'] for r in records) == 4  # reported before the log of the step after the failed save
  assert_step_restores_bitwise(workdir, 2, reference)


@pytest.fixture
def read_only(tmp_path):
  """Makes a folder read-only: a read-only bind mount as root (who ignores file modes), else chmod."""
  mounted = []

  def make(path: pathlib.Path) -> pathlib.Path:
    if os.geteuid() == 0:
      if subprocess.run(['mount', '--bind', str(path), str(path)], capture_output=True).returncode:
        pytest.skip('cannot bind-mount here')
      mounted.append(path)
      subprocess.run(['mount', '-o', 'remount,bind,ro', str(path)], check=True)
    else:
      for folder in [path, *(p for p in path.rglob('*') if p.is_dir())]:
        folder.chmod(0o555)
    return path

  yield make
  for path in mounted:
    subprocess.run(['umount', str(path)], check=True)


def evaluate(env, *args) -> subprocess.Popen:
  """Starts eval.py with `args` on the test data."""
  return subprocess.Popen([sys.executable, '-c', RUN_EVAL, *args, f'--config.data_dir={env[0]}'], cwd=REPO,
                          env=env[1], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def test_read_only_workdirs_are_refused_before_any_work(env, reference, read_only, tmp_path):
  finished = read_only(pathlib.Path(shutil.copytree(reference, tmp_path / 'finished',
                                                    ignore=shutil.ignore_patterns('2', '4'))))
  new_run, rerun = start(env, finished / 'new_run'), start(env, finished)
  pictures = evaluate(env, f'--ckpt={finished}', '--pictures')
  _, stderr = finish(new_run, 1)
  line = error_line(stderr)
  assert line.startswith(f'error: {finished / "new_run"}: run directory not writable: '), line
  assert 'read-only file system' in line or 'permission denied' in line
  stdout, _ = finish(rerun, 0)  # a finished run is only named again: nothing to write
  assert f'{finished}: finished (3 epochs, step 6)' in stdout
  stdout, stderr = finish(pictures, 1)
  assert error_line(stderr).startswith(f'error: {finished}/pictures: pictures folder not writable: ')
  assert 'clip selection' not in stdout  # refused before evaluating
  # Without --pictures the read-only run evaluates (it has nothing to write).
  stdout, _ = finish(evaluate(env, f'--ckpt={finished}'), 0)
  assert 'step 6) | clip selection: rrs' in stdout
  assert_step_restores_bitwise(finished, 6, reference)


def test_ctrl_c_saves_and_exits_75_and_a_second_one_aborts_at_once(env, reference, tmp_path):
  process = start(env, tmp_path / 'run')
  wait_for_line(process, 'device(s)')
  process.send_signal(signal.SIGINT)
  stdout, stderr = finish(process, 75)
  stopped = int(stdout.split('stopped at step ')[1].split(';')[0])
  assert f'saved {tmp_path}/run/checkpoints/{stopped}; run the same command again to resume' in stdout
  assert 'SIGINT: saving a checkpoint after this step' in stderr
  assert checkpoint.load_for_eval(tmp_path / 'run')[2] == stopped
  finish(start(env, tmp_path / 'run'), 0)
  assert_step_restores_bitwise(tmp_path / 'run', 6, reference)

  process = start(env, tmp_path / 'aborted')
  wait_for_line(process, 'device(s)')
  process.send_signal(signal.SIGINT)
  time.sleep(0.2)
  process.send_signal(signal.SIGINT)
  finish(process, -signal.SIGINT)  # killed by the second Ctrl-C, without a traceback


def test_a_diverging_loss_stops_at_the_next_log_naming_the_last_good_checkpoint(env, reference, tmp_path):
  finish(start(env, tmp_path / 'run', '--config.stop_at_step=2'), 75)
  _, stderr = finish(start(env, tmp_path / 'run', '--config.learning_rate=1e6'), 1)
  line = error_line(stderr)
  assert 'at step 4' in line and ('exceeds 10 x its running median' in line or 'training loss is nan' in line)
  assert line.endswith(f'stopped without saving (last good checkpoint: {tmp_path}/run/checkpoints/2); lower '
                       'config.learning_rate or check the data')
  assert checkpoint.load_for_eval(tmp_path / 'run')[2] == 2
  assert_step_restores_bitwise(tmp_path / 'run', 2, reference)


def test_failures_before_the_first_step_leave_the_workdir_as_found(env, reference, tmp_path):
  data = pathlib.Path(shutil.copytree(env[0], tmp_path / 'data'))
  dataset = datasets.load_dataset('ilidsvid', str(data), split=0)
  pathlib.Path(dataset.train[0].frames[0]).write_bytes(b'not a png')
  truncated = tmp_path / 'truncated'
  shutil.copytree(env[0], truncated)
  frame = pathlib.Path(dataset.test[0].frames[-1].replace(str(data), str(truncated)))
  frame.write_bytes(frame.read_bytes()[:40])
  pickled = tmp_path / 'model.pth'
  subprocess.run([sys.executable, '-c', f'import torch; torch.save({{"m": torch.nn.Linear(2, 2)}}, "{pickled}")'],
                 check=True)
  mismatched = tmp_path / 'mismatched'
  shutil.copytree(reference / 'checkpoints' / '2', mismatched / 'checkpoints' / '2')
  (tmp_path / 'empty').mkdir()
  cases = {  # name: (workdir, extra arguments, start() keywords, expected text of the error line)
      'eval_batch': ('new', ['--config.eval_batch_size=3'],
                     dict(env_overrides={'XLA_FLAGS': '--xla_force_host_platform_device_count=2'}),
                     'config.eval_batch_size 3 does not divide over 2 devices'),
      'no_pretrained': ('empty', [f'--config.model.pretrained={tmp_path}/missing.pth'], {},
                        f'{tmp_path}/missing.pth: pretrained weight file not found'),
      'pickled_pretrained': ('new', [f'--config.model.pretrained={pickled}'], dict(script=ALLOWED_TORCH),
                             f'{pickled}: not a weights-only PyTorch state dict'),
      'corrupt_image': ('new', [], dict(data=data), f'{dataset.train[0].frames[0]}: cannot decode image'),
      'truncated_image': ('empty', [], dict(data=truncated), f'{frame}: cannot decode image'),
      'mismatched_checkpoint': ('mismatched', ['--config.model.depth=34'], {}, 'cannot resume from this checkpoint'),
  }
  before = {name: snapshot(tmp_path / workdir) for name, (workdir, *_) in cases.items()}
  runs = {name: start(env, tmp_path / workdir, *args, **kwargs) for name, (workdir, args, kwargs, _) in cases.items()}
  for name, process in runs.items():
    _, stderr = finish(process, 1)
    assert cases[name][3] in error_line(stderr), (name, stderr[-2000:])
    assert 'weights_only' not in stderr and 'still be loaded' not in stderr  # torch's unsafe advice
    assert snapshot(tmp_path / cases[name][0]) == before[name], name
  assert_step_restores_bitwise(mismatched, 2, reference)


def test_the_demo_generator_removes_the_partial_folder_of_a_killed_run(tmp_path):
  out = tmp_path / 'demo'
  process = subprocess.Popen([sys.executable, '-m', 'lstrl_jax.data.demo', f'--out={out}', '--num_persons=400'],
                             cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
  deadline = time.time() + 120
  while not list(tmp_path.glob('.demo.partial-*/i-LIDS-VID/sequences/cam1/person002')):
    assert time.time() < deadline and process.poll() is None
    time.sleep(0.05)
  process.kill()
  process.communicate()
  (partial,) = tmp_path.glob('.demo.partial-*')
  assert partial.name.startswith(f'.demo.partial-{socket.gethostname()}-{process.pid}-')
  alive = tmp_path / f'.demo.partial-{socket.gethostname()}-{os.getpid()}-x'  # a live generator's: kept
  alive.mkdir()
  demo.generate(out, num_persons=4, frames=2, height=32, width=16)
  assert sorted(p.name for p in tmp_path.iterdir()) == sorted([alive.name, 'demo'])
