"""Forward and train-step milliseconds per frame and peak memory of the full LSTRL, JAX vs PyTorch, in one run.

  python -m benchmarks.model_throughput --batch 2 --seq_len 4 --height 256 --width 128 --dtype float32

Run from the repository root. Each (framework, phase) pair runs in its own subprocess, so the peak resident
memory (VmHWM, see `peak_rss_mib`; it includes the framework's own libraries) belongs to that measurement
alone. Phases, both fed uint8 clips `[B, T, H, W, 3]` normalised inside the timed call:
  forward: eval-mode network (`train=False`), jitted in JAX, `torch.inference_mode()` in PyTorch;
  train:   forward + label-smoothed CE + batch-hard triplet + backward + Adam update. JAX runs the trainer's
           own step (`lstrl_jax.train.trainer.make_train_step`: jitted, state donated); PyTorch the same
           objective and `torch.optim.Adam(weight_decay=5e-4)` on `reference/torch_lstrl.py`.
PyTorch uses channels_last frames and weights; `--dtype bfloat16` means the Flax model's compute dtype and
`torch.autocast('cpu', torch.bfloat16)`. Both models hold the same weights (Flax -> PyTorch transfer).
The reported time is the median over `--repeats` calls after `--warmup` calls (JAX: compile + warm-up). The
two frameworks of a phase run back to back; `--rounds R` repeats all of it R times (framework order alternating)
and reports each round's JAX / PyTorch ratio and their median, which a slow spell of a shared VM moves less than
it moves any single figure.
JAX compiles with the project's `lstrl_jax.xla_cpu.compiler_options()` (on CPU: convolutions on XLA's own kernels,
not YNNPACK); further XLA options come from the environment (`XLA_FLAGS`, which the subprocesses inherit and
the report prints; setting `xla_cpu_experimental_ynn_fusion_type` there overrides the project's choice).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import statistics
import subprocess
import sys
import tempfile
import time

FRAMEWORKS = ('jax', 'torch')
PHASES = ('forward', 'train')
LABEL_SMOOTHING, TRIPLET_MARGIN, LEARNING_RATE, WEIGHT_DECAY = 0.1, 0.3, 3e-4, 5e-4
IMAGENET_MEAN, IMAGENET_STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument('--batch', type=int, default=2, help='clips per step (B)')
  parser.add_argument('--seq_len', type=int, default=4, help='frames per clip (T)')
  parser.add_argument('--height', type=int, default=256)
  parser.add_argument('--width', type=int, default=128)
  parser.add_argument('--dtype', choices=('float32', 'bfloat16'), default='float32')
  parser.add_argument('--depth', type=int, default=50)
  parser.add_argument('--baseline', action='store_true', help='ResNet + BNNeck only (no MAE/BME)')
  parser.add_argument('--num_classes', type=int, default=625, help='classifier outputs (MARS: 625)')
  parser.add_argument('--single_thread', action='store_true',
                      help='one intra-op thread in both frameworks (XLA --xla_cpu_multi_thread_eigen=false, '
                           'torch.set_num_threads(1)): no spin-waiting thread pools on cores shared with others')
  parser.add_argument('--warmup', type=int, default=2)
  parser.add_argument('--repeats', type=int, default=5)
  parser.add_argument('--rounds', type=int, default=1,
                      help='repeat every measurement this many times, the two frameworks of a phase back to back '
                           '(order alternating between rounds); ratios are per round, then their median')
  parser.add_argument('--frameworks', default='jax,torch', help='comma-separated subset of jax,torch')
  parser.add_argument('--phases', default='forward,train', help='comma-separated subset of forward,train')
  parser.add_argument('--child', default='', help=argparse.SUPPRESS)  # 'framework:phase', internal
  parser.add_argument('--weights', default='', help=argparse.SUPPRESS)  # Flax weights for the torch child
  args = parser.parse_args(argv)
  if min(args.batch, args.seq_len, args.repeats, args.warmup, args.rounds) < 1:
    parser.error('--batch, --seq_len, --repeats, --warmup and --rounds must be positive')
  return args


def example_batch(args: argparse.Namespace):
  """Random uint8 clips `[B, T, H, W, 3]` and int32 pids `[B]` (pairs of clips share a pid when B >= 4)."""
  import numpy as np

  rng = np.random.default_rng(0)
  clips = rng.integers(0, 256, (args.batch, args.seq_len, args.height, args.width, 3), dtype=np.uint8)
  pids = (np.arange(args.batch) // (2 if args.batch >= 4 else 1)).astype(np.int32)
  return clips, pids


def time_calls(call, args: argparse.Namespace) -> tuple[float, float]:
  """Median (wall, CPU) seconds of `call()` (which must block until its result exists) after `args.warmup` calls.

  CPU seconds are this process's user + system time over all its threads; on cores shared with other jobs
  they vary less than wall time (which then also counts the time other processes held the cores).
  """
  for _ in range(args.warmup):
    call()
  wall, cpu = [], []
  for _ in range(args.repeats):
    start, start_cpu = time.perf_counter(), time.process_time()
    call()
    wall.append(time.perf_counter() - start)
    cpu.append(time.process_time() - start_cpu)
  return statistics.median(wall), statistics.median(cpu)


def inserted_stages(args: argparse.Namespace) -> tuple[int, ...]:
  """Layers after which MAE and BME are inserted: the paper's (2, 3), or none for `--baseline`."""
  return () if args.baseline else (2, 3)


def flax_model(args: argparse.Namespace):
  """The Flax LSTRL of `args` (compute dtype `args.dtype`, float32 parameters)."""
  from lstrl_jax.models import lstrl

  return lstrl.model_from_config(
      dict(depth=args.depth, last_stride=1, mae_stages=inserted_stages(args), mae_granularities=(True,) * 4,
           bme_stages=inserted_stages(args), bme_mode='global_to_local', bme_bidirectional=True,
           dtype=args.dtype), args.num_classes)


def flax_variables(model, args: argparse.Namespace):
  """float32 variables of `model` from its initialiser (seed 0)."""
  import jax
  import jax.numpy as jnp

  clips = jnp.zeros((1, args.seq_len, args.height, args.width, 3))
  return jax.jit(lambda key: model.init(key, clips, train=False))(jax.random.key(0))


def run_jax(args: argparse.Namespace, phase: str) -> tuple[float, float]:
  """(wall, CPU) seconds per call of the JAX `phase`."""
  import jax

  from lstrl_jax import xla_cpu
  from lstrl_jax.data import pipeline

  model = flax_model(args)
  clips, pids = example_batch(args)
  if phase == 'forward':
    variables = flax_variables(model, args)
    forward = jax.jit(lambda v, x: model.apply(v, pipeline.normalize(x), train=False)['bn_features'],
                      compiler_options=xla_cpu.compiler_options())
    clips = jax.device_put(clips)
    return time_calls(lambda: forward(variables, clips).block_until_ready(), args)
  train_call, _ = jax_train_call(model, train_config(args), clips, pids)
  return time_calls(lambda: train_call().block_until_ready(), args)


def train_config(args: argparse.Namespace):
  """The paper's training config (`configs/default.py`) at `args`' clip size, one clip per identity (P = B)."""
  from configs import default

  config = default.get_config()
  config.seq_len, config.height, config.width = args.seq_len, args.height, args.width
  config.num_identities, config.num_instances = args.batch, 1
  return config


def jax_train_call(model, config, clips, pids) -> tuple:
  """The trainer's own jitted step (`trainer.make_train_step`, state donated) on one fixed batch.

  Args:
    model: the Flax LSTRL; config: its training config (sizes, P x K); clips: uint8 `[B, T, H, W, 3]`;
    pids: int32 `[B]`.

  Returns:
    (call, holder): `call()` runs one step and returns its loss (not blocked on); `holder[0]` is the latest
    TrainState.
  """
  import jax

  from lstrl_jax import sharding
  from lstrl_jax.models import lstrl
  from lstrl_jax.train import optim
  from lstrl_jax.train import state as state_lib
  from lstrl_jax.train import trainer

  mesh = sharding.make_mesh()
  tx = optim.make_optimizer(config, steps_per_epoch=1, trainable_mask=lstrl.trainable_mask)
  holder = [state_lib.create_train_state(model, config, tx, jax.random.key(0), mesh)]
  step = trainer.make_train_step(config, optim.learning_rate_schedule(config, 1), mesh)
  batch = sharding.shard_batch({'clips': clips, 'pids': pids}, mesh)

  def call():
    holder[0], metrics = step(holder[0], batch)
    return metrics['loss']

  return call, holder


def run_torch(args: argparse.Namespace, phase: str) -> tuple[float, float]:
  """(wall, CPU) seconds per call of the PyTorch `phase` (same network and weights as JAX, channels_last)."""
  import contextlib

  import torch
  from torch.nn import functional as F

  from reference import torch_lstrl

  from safetensors.numpy import load_file

  model = torch_lstrl.LSTRL(args.num_classes, args.seq_len, depth=args.depth, mae_stages=inserted_stages(args),
                            bme_stages=inserted_stages(args))
  model = torch_lstrl.load_state_dict_(model, load_file(args.weights)).to(memory_format=torch.channels_last)
  clips, pids = (torch.from_numpy(a) for a in example_batch(args))
  pids = pids.long()
  mean = torch.tensor(IMAGENET_MEAN) * 255.0
  std = torch.tensor(IMAGENET_STD) * 255.0
  autocast = (torch.autocast('cpu', dtype=torch.bfloat16) if args.dtype == 'bfloat16'
              else contextlib.nullcontext())

  def forward():
    # [B, T, H, W, 3] -> [B, T, 3, H, W]; flattening B, T later gives channels_last frames without a copy.
    with autocast:
      return model(((clips.float() - mean) / std).permute(0, 1, 4, 2, 3))

  if phase == 'forward':
    model.eval()
    with torch.inference_mode():
      return time_calls(forward, args)
  model.train()
  optimizer = torch.optim.Adam([p for p in model.parameters() if p.requires_grad], lr=LEARNING_RATE,
                               weight_decay=WEIGHT_DECAY)

  def train_call():
    outputs = forward()
    loss = (F.cross_entropy(outputs['logits'].float(), pids, label_smoothing=LABEL_SMOOTHING)
            + batch_hard_triplet(outputs['features'].float(), pids, TRIPLET_MARGIN))
    optimizer.zero_grad(set_to_none=True)
    loss.backward()
    optimizer.step()

  return time_calls(train_call, args)


def batch_hard_triplet(features, pids, margin: float):
  """Batch-hard triplet loss in PyTorch (Hermans et al. 2017), as `lstrl_jax.train.losses.batch_hard_triplet`."""
  import torch

  squared = (features[:, None] - features[None]).pow(2).sum(-1)
  distances = squared.clamp(min=1e-12).sqrt()
  same = pids[:, None] == pids[None]
  positive = distances.masked_fill(~same, float('-inf')).amax(1)
  negative = distances.masked_fill(same, float('inf')).amin(1)
  return torch.relu(positive - negative + margin).mean()


def save_torch_weights(args: argparse.Namespace, path: str) -> None:
  """Writes the Flax model's initial variables, in PyTorch names and layout, to a .safetensors `path`.

  Done in the parent so that the PyTorch child never imports JAX (its peak memory stays its own).
  """
  from safetensors.numpy import save_file

  from reference import torch_lstrl

  save_file(torch_lstrl.state_dict_from_flax(flax_variables(flax_model(args), args)), path)


def set_single_thread(framework: str) -> None:
  """Gives `framework` one intra-op thread (for JAX this must run before JAX starts)."""
  if framework == 'torch':
    import torch

    torch.set_num_threads(1)
  else:
    os.environ['XLA_FLAGS'] = f'{os.environ.get("XLA_FLAGS", "")} --xla_cpu_multi_thread_eigen=false'.strip()


def child(args: argparse.Namespace) -> None:
  """Measures one (framework, phase) and prints one JSON line."""
  framework, phase = args.child.split(':')
  if args.single_thread:
    set_single_thread(framework)
  wall, cpu = (run_jax if framework == 'jax' else run_torch)(args, phase)
  frames = args.batch * args.seq_len
  print(json.dumps({'framework': framework, 'phase': phase, 'ms_per_frame': 1e3 * wall / frames,
                    'cpu_ms_per_frame': 1e3 * cpu / frames, 'peak_rss_mib': peak_rss_mib()}))


def peak_rss_mib() -> float:
  """Peak resident memory of this process in MiB: VmHWM of /proc/self/status where it exists.

  `ru_maxrss` is only the fallback: Linux carries the pre-exec high-water mark of the forked parent into it,
  so a child of a large parent would report at least the parent's size.
  """
  try:
    with open('/proc/self/status') as f:
      for line in f:
        if line.startswith('VmHWM:'):
          return int(line.split()[1]) / 1024
  except OSError:
    pass
  return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def round_ratios(results: dict, phase: str) -> tuple[float, float]:
  """JAX / PyTorch (wall, CPU) ms per frame of `phase` in one round's `results` {(framework, phase): row}."""
  return tuple(results['jax', phase][key] / results['torch', phase][key]
               for key in ('ms_per_frame', 'cpu_ms_per_frame'))


def median_ratios(rounds: list[dict], phase: str) -> tuple[float, float]:
  """Medians over rounds of each round's JAX / PyTorch (wall, CPU) ratio of `phase` (`round_ratios`).

  A ratio is taken within a round, from the two frameworks' adjacent subprocesses, so that a slow spell of a
  shared machine lands on both sides of it rather than on one framework's whole figure.
  """
  per_round = [round_ratios(results, phase) for results in rounds]
  return tuple(statistics.median(ratios[i] for ratios in per_round) for i in range(2))


def machine() -> str:
  """CPU model, core count and load average, e.g. 'AMD EPYC, 2 cores, load 5.1 4.8 3.9'."""
  model = platform.processor() or platform.machine()
  with open('/proc/cpuinfo') as f:
    names = [line.split(':', 1)[1].strip() for line in f if line.startswith('model name')]
  model = names[0] if names else model
  return f'{model}, {os.cpu_count()} cores, load {" ".join(f"{x:.1f}" for x in os.getloadavg())}'


def main(argv: list[str] | None = None) -> int:
  args = parse_args(argv)
  if args.child:
    child(args)
    return 0
  frameworks = [f for f in args.frameworks.split(',') if f]
  phases = [p for p in args.phases.split(',') if p]
  for flag, chosen, allowed in (('frameworks', frameworks, FRAMEWORKS), ('phases', phases, PHASES)):
    if not chosen or any(c not in allowed for c in chosen):
      print(f'--{flag}: expected a comma-separated subset of {",".join(allowed)}, got {getattr(args, flag)!r}')
      return 2
  print(f'machine: {machine()}; XLA_FLAGS={os.environ.get("XLA_FLAGS", "")!r}')
  name = 'baseline (no MAE/BME)' if args.baseline else 'LSTRL'
  threads = 'one thread' if args.single_thread else 'default threads'
  print(f'{name} ResNet-{args.depth}, B={args.batch} T={args.seq_len} {args.height}x{args.width} {args.dtype}, '
        f'{threads}, median of {args.repeats} after {args.warmup} warm-up calls')
  rounds = []
  with tempfile.TemporaryDirectory() as workdir:
    weights = os.path.join(workdir, 'lstrl.safetensors')
    if 'torch' in frameworks:
      save_torch_weights(args, weights)
    for round_index in range(args.rounds):
      results = {}
      prefix = f'round {round_index + 1}: ' if args.rounds > 1 else ''
      for phase in phases:
        for framework in frameworks[::-1] if round_index % 2 else frameworks:
          command = [sys.executable, '-m', 'benchmarks.model_throughput', *(argv or sys.argv[1:]),
                     '--child', f'{framework}:{phase}', '--weights', weights]
          done = subprocess.run(command, capture_output=True, text=True, check=False)
          if done.returncode:
            print(f'{framework} {phase} failed (exit {done.returncode}): {done.stderr.strip().splitlines()[-1:]}')
            return 1
          results[framework, phase] = row = json.loads(done.stdout.strip().splitlines()[-1])
          print(f'{prefix}{framework:5s} {phase:7s} {row["ms_per_frame"]:8.1f} ms/frame '
                f'(CPU {row["cpu_ms_per_frame"]:7.1f})  peak RSS {row["peak_rss_mib"]:6.0f} MiB')
      rounds.append(results)
  if len(frameworks) == 2:
    for phase in phases:
      if args.rounds > 1:
        spread = ', '.join(f'{round_ratios(results, phase)[0]:.2f}x' for results in rounds)
        print(f'JAX/PyTorch {phase}, wall time by round: {spread}')
        label, ratios = f'median of {args.rounds} rounds, ', median_ratios(rounds, phase)
      else:
        label, ratios = '', round_ratios(rounds[0], phase)
      print(f'JAX/PyTorch {phase}: {label}{ratios[0]:.2f}x wall time, {ratios[1]:.2f}x CPU time')
  print(f'load after: {" ".join(f"{x:.1f}" for x in os.getloadavg())}')
  return 0


if __name__ == '__main__':
  sys.exit(main())
