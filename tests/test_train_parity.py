"""The JAX trainer against the PyTorch reference training step (reference/torch_train.py), 3 steps on real clips.

`benchmarks/train_parity.py` in its short form: ResNet-18 LSTRL with every variable random (MAE/BME last-BN
scales included), T=2, 64x48, P=2 x K=2 batches from the grain pipeline on ../shared/data/pku2cam, float32,
warm-up over 2 steps and x0.1 from step 2. Step 1 starts from identical variables and inputs, so its loss terms
and the state after it (parameters after Adam with L2 decay and the frozen BNNeck bias; BatchNorm running
statistics with PyTorch's momentum and unbiased variance) must agree to rounding. Later steps drift apart
the way float32 training does in any framework (README "Faithfulness"); they are held to a loose bound.
In float64 on both sides (JAX x64, torch.float64) there is no such drift, and every step is held tight.
"""

import pytest

from benchmarks import train_parity

STEP_1_LOSS_TOLERANCE = 1e-4  # the issue's; measured: loss 2e-6, state 3e-5 (64x48, P4xK2)
STEP_1_STATE_TOLERANCE = 1e-4
LOSS_TOLERANCE = 1e-2
# float64 (T=2, P2xK2, 3 steps) measured: step 1 loss 7e-15, state 3e-13; 3 steps loss 1.2e-11, state 4e-13.
# With MAE's fused float32-softmax attention in the float64 run, step 1 misses FLOAT64_STEP_1_TOLERANCE.
FLOAT64_STEP_1_TOLERANCE, FLOAT64_TOLERANCE = 1e-11, 1e-9


SHORT_RUN = ['--steps', '3', '--seq_len', '2', '--identities', '2', '--instances', '2', '--warmup_steps', '2',
             '--decay_every_steps', '2']


def test_three_steps_match_pytorch(shared_data, capsys):
  result = train_parity.main(SHORT_RUN + ['--dtype', 'float32', '--reference_dtype', 'float32',
                                          '--data_dir', str(shared_data / 'pku2cam')])
  assert result['step_1_difference'] < STEP_1_LOSS_TOLERANCE
  assert result['step_1_state_difference'] < STEP_1_STATE_TOLERANCE
  assert result['max_loss_difference'] < LOSS_TOLERANCE
  groups = {row['group']: row for row in result['groups']}
  assert {'mae2', 'mae3', 'bme2', 'bme3', 'bnneck', 'classifier'} <= set(groups)
  for row in groups.values():  # every group moved, so the comparison is not of untouched weights
    assert row['moved'] > 1e-5, row
  rates = [row['learning_rate'][1] for row in result['losses']]
  assert rates == pytest.approx([5e-5, 1e-4, 1e-5], rel=1e-9)  # warm-up over 2 steps, then x0.1
  assert capsys.readouterr().out.splitlines()[-1].startswith('largest relative loss difference over 3 steps:')


def test_three_steps_match_pytorch_in_float64(shared_data):
  result = train_parity.main(SHORT_RUN + ['--dtype', 'float64', '--reference_dtype', 'float64',
                                          '--data_dir', str(shared_data / 'pku2cam')])
  assert result['step_1_difference'] < FLOAT64_STEP_1_TOLERANCE
  assert result['step_1_state_difference'] < FLOAT64_STEP_1_TOLERANCE
  assert result['max_loss_difference'] < FLOAT64_TOLERANCE
  assert result['max_state_difference'] < FLOAT64_TOLERANCE
  for ours, theirs in (row['learning_rate'] for row in result['losses']):  # the schedule is float64 too
    assert ours == pytest.approx(theirs, rel=1e-15)
  for row in result['groups']:
    assert row['moved'] > 1e-5, row
