"""`benchmarks.model_throughput`: ratios per round and their median (hand-worked), and a tiny two-round run."""

import subprocess
import sys

import pytest

from benchmarks import model_throughput


def _row(wall, cpu):
  return {'ms_per_frame': wall, 'cpu_ms_per_frame': cpu}


def test_median_ratios_take_each_rounds_ratio_then_the_median():
  rounds = [
      {('jax', 'train'): _row(10, 20), ('torch', 'train'): _row(8, 16)},    # 1.25x, 1.25x
      {('jax', 'train'): _row(9, 18), ('torch', 'train'): _row(10, 20)},    # 0.90x, 0.90x
      {('jax', 'train'): _row(12, 30), ('torch', 'train'): _row(10, 20)},   # 1.20x, 1.50x
  ]
  assert model_throughput.round_ratios(rounds[2], 'train') == pytest.approx((1.2, 1.5))
  assert model_throughput.median_ratios(rounds, 'train') == pytest.approx((1.2, 1.25))


def test_rounds_must_be_positive(capsys):
  with pytest.raises(SystemExit):
    model_throughput.parse_args(['--rounds', '0'])
  assert '--rounds must be positive' in capsys.readouterr().err


def test_two_rounds_of_a_tiny_forward_print_each_rounds_ratio_and_the_median():
  done = subprocess.run(
      [sys.executable, '-m', 'benchmarks.model_throughput', '--depth', '18', '--batch', '1', '--seq_len', '2',
       '--height', '32', '--width', '16', '--num_classes', '4', '--phases', 'forward', '--rounds', '2',
       '--repeats', '1', '--warmup', '1'],
      capture_output=True, text=True, check=True, timeout=300)
  lines = done.stdout.splitlines()
  assert [line.split()[:3] for line in lines if line.startswith('round')] == [
      ['round', '1:', 'jax'], ['round', '1:', 'torch'], ['round', '2:', 'torch'], ['round', '2:', 'jax']]
  assert any(line.startswith('JAX/PyTorch forward, wall time by round: ') for line in lines)
  assert any(line.startswith('JAX/PyTorch forward: median of 2 rounds, ') for line in lines)
