"""MAC counting from the jaxpr (hand-counted cases) and the summary's figures against the paper's Table 3."""

import re
import subprocess
import sys

import jax
import jax.numpy as jnp
import pytest

from configs import default
from lstrl_jax import summary
from lstrl_jax.models import macs
from lstrl_jax.models.mae import attend


def test_count_macs_hand_counted():
  def fn(x, kernel, grouped, w, q, k):
    y = jax.lax.conv_general_dilated(x, kernel, (2, 2), 'SAME', dimension_numbers=('NHWC', 'HWIO', 'NHWC'))
    z = jax.lax.conv_general_dilated(x, grouped, (1, 1), 'SAME', dimension_numbers=('NHWC', 'HWIO', 'NHWC'),
                                     feature_group_count=2)
    return y.sum() + z.sum() + (x.reshape(2, -1) @ w).sum() + attend(q, k).sum()

  args = [jax.ShapeDtypeStruct(s, jnp.float32) for s in
          [(2, 8, 6, 4), (3, 3, 4, 5), (1, 1, 2, 6), (192, 7), (3, 5, 16), (3, 11, 16)]]
  counts = macs.count_macs(jax.make_jaxpr(fn)(*args))
  assert counts == {
      'conv': 2 * 4 * 3 * 5 * (3 * 3 * 4) + 2 * 8 * 6 * 6 * 2,  # strided 3x3 + grouped 1x1 (2 of 4 inputs)
      'attention': 2 * 3 * 5 * 11 * 16,  # Q Kᵀ and D V
      'other': 2 * 7 * 192,
  }


def test_params_by_module_groups_paths():
  params = {'a': {'x': jnp.zeros((2, 3)), 'y': {'z': jnp.zeros(4)}}, 'b': {'k': jnp.zeros(5)}}
  assert macs.params_by_module(params) == {'a': 10, 'b': 5}
  assert macs.params_by_module(params, depth=2) == {'a/x': 6, 'a/y': 4, 'b/k': 5}


@pytest.mark.parametrize(
    'stages,params,conv_gmacs',
    [
        (dict(mae_stages=(), bme_stages=()), 24_792_128, 4.05),
        (dict(bme_stages=()), 26_433_600, 4.39),
        (dict(), 29_058_112, 4.93),
    ],
)
def test_summary_reproduces_table_3(stages, params, conv_gmacs):
  config = default.get_config()
  config.model.update(stages)
  result = summary.summarize(config, num_classes=625)
  assert result.total_params == params
  assert result.params['backbone/layer4'] == 14_964_736  # torchvision resnet50 layer4
  assert round(result.macs['conv'] / 1e9, 2) == conv_gmacs
  assert result.macs['other'] == 2048 * 625 / 8  # the classifier, once per clip of T=8 frames
  # Attention: Q X1ᵀ and D X1 for THW + hw + T + 1 queries over THW keys of C/4 channels, per stage.
  expected = sum(2 * (8 * hw + hw + 8 + 1) * (8 * hw) * c / 8 for hw, c in ((32 * 16, 128), (16 * 8, 256))
                 if config.model.mae_stages)
  assert result.macs['attention'] == expected


def test_command_line_prints_exact_totals():
  command = [sys.executable, '-m', 'lstrl_jax.summary', '--config', 'configs/default.py', '--num_classes', '625']
  out = subprocess.run(command, capture_output=True, text=True, check=True, timeout=300).stdout
  assert re.search(r'^  total +29,058,112$', out, re.MULTILINE)
  conv_line = next(line for line in out.splitlines() if line.strip().startswith('convolutions'))
  assert conv_line.split()[1] == '4.93' and '4,926,341,120 MACs' in conv_line


def test_command_line_bad_config_fails_with_one_line():
  command = [sys.executable, '-m', 'lstrl_jax.summary', '--config', 'configs/default.py',
             '--config.model.bme_mode=sideways']
  result = subprocess.run(command, capture_output=True, text=True, timeout=300)
  assert result.returncode != 0
  assert result.stderr.strip().splitlines() == [
      "error: model.bme_mode: expected one of ('global_to_local', 'local_to_local'), got 'sideways'"]
