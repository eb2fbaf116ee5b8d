"""Where the JAX train step's time goes on the CPU: kernel time per XLA operation kind, from a profiler trace.

  XLA_FLAGS=--xla_cpu_enable_xprof_traceme=true python -m benchmarks.step_profile [--batch 2 --seq_len 4 ...]

Runs the trainer's own jitted step (`benchmarks.model_throughput.jax_train_call`, the full LSTRL, same flags as
that benchmark) twice to compile and warm up, then `--steps` more under `jax.profiler` with a Perfetto trace,
and prints per step: the wall time the thunk executor waited for, and the summed durations of the traced
kernels grouped by HLO instruction name without its numeric suffix (`transpose_copy_fusion.105` ->
`transpose_copy_fusion`), largest first. Kernels that XLA runs asynchronously (Eigen convolutions, some dots)
are traced only for their launch, so the listed sum falls short of the wall time. `--instructions` lists the
largest single instructions instead (their shapes are in the step's optimised HLO). The XLA flag above makes
the CPU runtime emit one trace event per kernel; without it only the step itself is traced.
"""

from __future__ import annotations

import argparse
import collections
import glob
import gzip
import json
import re
import tempfile

import jax

from benchmarks import model_throughput


def kernel_times(trace_dir: str, steps: int) -> collections.Counter:
  """Summed event durations in ms per step, by event name, from the Perfetto trace under `trace_dir`."""
  path = sorted(glob.glob(f'{trace_dir}/**/*.trace.json.gz', recursive=True))[-1]
  with gzip.open(path) as f:
    events = json.load(f)['traceEvents']
  times = collections.Counter()
  for event in events:
    if event.get('ph') == 'X':
      times[event['name']] += event.get('dur', 0) / 1e3 / steps
  return times


def main(argv: list[str] | None = None) -> None:
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument('--steps', type=int, default=2, help='profiled steps after two warm-up steps')
  parser.add_argument('--top', type=int, default=25, help='operation kinds listed')
  parser.add_argument('--instructions', action='store_true', help='list single instructions, not kinds')
  own, rest = parser.parse_known_args(argv)
  args = model_throughput.parse_args(rest)
  clips, pids = model_throughput.example_batch(args)
  call, _ = model_throughput.jax_train_call(model_throughput.flax_model(args), model_throughput.train_config(args),
                                            clips, pids)
  for _ in range(2):
    call().block_until_ready()
  with tempfile.TemporaryDirectory() as trace_dir:
    with jax.profiler.trace(trace_dir, create_perfetto_trace=True):
      for _ in range(own.steps):
        call().block_until_ready()
    times = kernel_times(trace_dir, own.steps)
  frames = args.batch * args.seq_len
  waited = sum(ms for name, ms in times.items() if name.startswith('ThunkExecutor::Execute (wait'))
  kernels = {name: ms for name, ms in times.items() if not name.startswith(('ThunkExecutor', '$', 'Slinky'))}
  kinds = collections.Counter()
  for name, ms in kernels.items():
    kinds[name if own.instructions else re.sub(r'\.\d+$', '', name)] += ms
  print(f'machine: {model_throughput.machine()}; {frames} frames per step, {own.steps} profiled steps')
  print(f'step wall (thunk executor wait): {waited:.1f} ms = {waited / frames:.1f} ms/frame; '
        f'traced kernels: {sum(kernels.values()):.1f} ms')
  for name, ms in kinds.most_common(own.top):
    print(f'{ms:9.1f} ms  {name}')


if __name__ == '__main__':
  main()
